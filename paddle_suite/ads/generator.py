"""Synthetic CTR data at any scale: power-law feature frequencies and a planted logistic model.

Writes the formats ``paddle_suite.ads.data`` reads (``criteo_tsv``, ``criteo_csv``, ``slot``;
``.gz`` paths are gzip-compressed), streaming fixed-size chunks (constant memory, no per-row
Python loops), atomically, plus a sidecar ``<file>.meta.json`` with the Bayes-optimal AUC.

Model (all randomness from ``seed``; nothing is materialised per vocabulary entry):

* Categorical slot s (26 of them) takes ranks r in 1..V_s with P(r) proportional to
  ``r^-a_s`` (Zipf, per-slot exponent ``a_s`` and vocabulary ``V_s``), sampled by inverting the
  CDF of the continuous power law on [1/2, V_s + 1/2] and rounding, so
  P(r) = integral over [r - 1/2, r + 1/2] of x^-a, which is r^-a within 1.2% for r >= 3 (11% at
  r = 1 for a = 1.1). With probability ``cat_missing`` a value is missing (rank 0). The written
  value is a bijective 32-bit scramble of (slot, rank): 8 hex digits in Criteo formats, decimal
  in the slot format, so V_s <= 2^32 and 26 * 2^32 distinct keys are possible.
* Planted logit = bias + sum_s w_s(r_s) + sum_j v_j * t(x_j): ``w_s(r)`` is a normal number
  drawn from a hash of (seed, s, r) -- computed lazily, so the vocabulary need not exist --
  with standard deviation ``weight_std * r^-weight_rank_decay`` (rare features have small
  effects, so a model that sees each key only a few times can still approach the Bayes AUC;
  0 makes all keys equally important). x_j are 13 count-like integers, ``floor(exp(N(mu_j,
  sigma_j)))``, missing with probability ``dense_missing``; t is the readers' signed log1p
  (missing -> 0); the slot format writes t(x) with 6 decimals and the model uses that value.
  ``bias`` is solved on a pilot sample so the click rate is ``ctr``.
* label ~ Bernoulli(sigmoid(logit)).

Temporal reuse (``hot_fraction > 0``; 0, the default, is the stationary stream above). Real ad
logs reuse keys from pass to pass through a drifting hot set (live campaigns, trending items)
that i.i.d. Zipf draws over a huge vocabulary do not have: with 2^32-value id slots nearly every
key of a pass is new, so cache hit rates measured on such a stream say nothing about caching.
Rows are grouped into passes of ``pass_rows`` consecutive rows (set it to the trainer's
pass: ``DataLoader.pass_size``, a multiple of ``DataLoader.batch_size``, since the trainer's
pass is whole batches). In pass p each categorical value is, with probability
``hot_fraction``, drawn uniformly from slot s's hot set H_s(p) of ``hot_set_size`` ranks
(at most V_s), otherwise from the Zipf long tail as above. Hot-set position j holds rank
``1 + hash(seed, s, j, g) mod V_s`` in generation ``g = floor(p * drift_per_pass + u_j)``, with
u_j a hashed uniform in [0, 1): from one pass to the next a fraction ``drift_per_pass`` of the
positions (exactly, in expectation over j) gets a fresh rank and the rest carry over, so a
member survives 1/drift_per_pass passes on average. Hot ranks are uniform over the vocabulary
(mostly tail ranks: new campaigns, not the all-time head), nothing is materialised per pass,
and the planted weight stays a function of the rank (a hot rank keeps its small tail weight:
the hot set changes which keys recur, not the label model). With ``n = pass_rows`` draws per
slot and pass, K = hot_set_size, h = hot_fraction, d = drift_per_pass and tail probabilities
q_r, the expected share of a pass's key occurrences that also occurred in the previous pass is
``h (1 - d) (1 - (1 - h/K)^n) + (1 - h) sum_r q_r (1 - (1 - (1 - h) q_r)^n)`` plus small
hot/tail overlap terms (``expected_reuse`` computes all of it; tested against the data).
``generate(..., track_reuse=True)`` (CLI ``--track-reuse``) measures per pass the share of
distinct keys seen in the previous pass and never seen before (the store's "new" rate).

The Bayes-optimal AUC is the AUC of the true probabilities on the written rows: ``bayes_auc``
from a 2^18-bin histogram of the logit over [-20, 20] per label (ties within a bin count half; error < 1e-4),
and ``bayes_auc_expected`` (its expectation over the label noise). ``distinct_keys`` per slot is
exact (bitmap) for V_s <= 2^24 and a HyperLogLog estimate (2^16 registers, ~0.4% error) above.
"""
import gzip
import json
import math
import os
import time

import numpy as np

from paddle_suite.ads import data as ctrdata
from paddle_suite.ads.data import NUM_DENSE, NUM_SPARSE, splitmix64

_U = np.uint64
_LOGIT_RANGE = 20.0
_AUC_BINS = 1 << 18
_EXACT_DISTINCT_MAX = 1 << 24
_HLL_BITS = 16


def _per_slot(value, name, cast):
    values = [cast(v) for v in (value if isinstance(value, (list, tuple, np.ndarray)) else [value] * NUM_SPARSE)]
    if len(values) != NUM_SPARSE:
        raise ValueError(f"{name}: give one value or {NUM_SPARSE} (one per slot), got {len(values)}")
    return values


class CtrSpec:
    """Parameters of the synthetic data (see the module docstring)."""

    def __init__(self, rows, fmt="criteo_tsv", vocab=10 ** 6, zipf=1.1, seed=0, ctr=0.25, weight_std=0.5,
                 weight_rank_decay=0.5, dense_weight_std=0.3, cat_missing=0.0, dense_missing=0.2,
                 hot_fraction=0.0, hot_set_size=10_000, drift_per_pass=0.1, pass_rows=100_000):
        if fmt not in ctrdata.FORMATS:
            raise ValueError(f"unknown format '{fmt}'; choose one of {ctrdata.FORMATS}")
        self.rows, self.fmt, self.seed = int(rows), fmt, int(seed)
        self.vocab = _per_slot(vocab, "vocab", lambda v: int(float(v)))
        self.zipf = _per_slot(zipf, "zipf", float)
        self.weight_std = _per_slot(weight_std, "weight_std", float)
        if any(v < 1 or v > 2 ** 32 for v in self.vocab):
            raise ValueError(f"vocab sizes must be in [1, 2^32] (8 hex digits), got {self.vocab}")
        if any(a <= 0 for a in self.zipf):
            raise ValueError(f"zipf exponents must be > 0, got {self.zipf}")
        if not 0 < ctr < 1:
            raise ValueError(f"ctr must be in (0, 1), got {ctr}")
        self.ctr, self.weight_rank_decay = float(ctr), float(weight_rank_decay)
        self.dense_weight_std = float(dense_weight_std)
        self.cat_missing, self.dense_missing = float(cat_missing), float(dense_missing)
        if not 0 <= hot_fraction <= 1:
            raise ValueError(f"hot_fraction must be in [0, 1], got {hot_fraction}")
        if not 0 <= drift_per_pass <= 1:
            raise ValueError(f"drift_per_pass must be in [0, 1], got {drift_per_pass}")
        if int(hot_set_size) < 1 or int(pass_rows) < 1:
            raise ValueError(f"hot_set_size and pass_rows must be >= 1, got {hot_set_size} and {pass_rows}")
        self.hot_fraction, self.drift_per_pass = float(hot_fraction), float(drift_per_pass)
        self.hot_set_size, self.pass_rows = int(hot_set_size), int(pass_rows)
        dense_rng = np.random.default_rng([self.seed, 1])
        self.dense_mu = dense_rng.uniform(0.0, 4.0, NUM_DENSE)
        self.dense_sigma = dense_rng.uniform(0.5, 2.0, NUM_DENSE)
        self.dense_weights = dense_rng.normal(0.0, self.dense_weight_std, NUM_DENSE) / self.dense_sigma
        self.bias = 0.0
        self.bias = self._calibrate_bias()

    def as_dict(self):
        return {"rows": self.rows, "format": self.fmt, "seed": self.seed, "slots": NUM_SPARSE,
                "dense_features": NUM_DENSE, "vocab": self.vocab, "zipf": self.zipf, "ctr_target": self.ctr,
                "weight_std": self.weight_std, "weight_rank_decay": self.weight_rank_decay,
                "dense_weight_std": self.dense_weight_std, "cat_missing": self.cat_missing,
                "dense_missing": self.dense_missing, "hot_fraction": self.hot_fraction,
                "hot_set_size": self.hot_set_size, "drift_per_pass": self.drift_per_pass,
                "pass_rows": self.pass_rows, "bias": self.bias}

    def hot_size(self, slot):
        """Members of ``slot``'s hot set (``hot_set_size``, at most the vocabulary)."""
        return min(self.hot_set_size, self.vocab[slot])

    def _calibrate_bias(self):
        logits = sample_chunk(self, 0, 50000, rng=np.random.default_rng([self.seed, 2]))["logit"]
        return solve_increasing(lambda b: float(np.mean(_sigmoid(logits + b))), self.ctr, -30.0, 30.0)


def solve_increasing(f, target, lo, hi, tol=1e-12):
    """``x`` in [lo, hi] with ``f(x) = target`` for increasing ``f``, by bisection.

    (Not scipy's brentq: scipy's compiled modules can crash when loaded after paddle, see
    PLATFORM.md, and the generator is imported by entry points that load paddle first.)
    """
    f_lo, f_hi = f(lo), f(hi)
    if not f_lo <= target <= f_hi:
        raise ValueError(f"no solution in [{lo}, {hi}]: f goes from {f_lo} to {f_hi}, target {target}")
    while hi - lo > tol * max(1.0, abs(lo)):
        mid = 0.5 * (lo + hi)
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def zipf_ranks(uniform, vocab, exponent):
    """Ranks in 1..vocab with P(r) ~ r^-exponent, by inverse CDF of the continuous power law."""
    lo, hi = 0.5, vocab + 0.5
    if abs(exponent - 1.0) < 1e-9:
        x = lo * (hi / lo) ** uniform
    else:
        e = 1.0 - exponent
        x = (lo ** e + uniform * (hi ** e - lo ** e)) ** (1.0 / e)
    return np.clip(np.floor(x + 0.5), 1, vocab).astype(np.uint64)


def scramble32(ranks, slot):
    """Bijective map of (slot, rank) to a 32-bit value id (hot ranks get unrelated ids)."""
    mask = _U(0xFFFFFFFF)
    with np.errstate(over="ignore"):
        x = (np.asarray(ranks, dtype=np.uint64) + _U(0x9E3779B9) * _U(slot + 1)) & mask
        x ^= x >> _U(16)
        x = (x * _U(0x7FEB352D)) & mask
        x ^= x >> _U(15)
        x = (x * _U(0x846CA68B)) & mask
        x ^= x >> _U(16)
    return x


def hashed_normal(keys):
    """A standard normal number per uint64 key (counter-based Box-Muller), vectorised."""
    with np.errstate(over="ignore"):
        h1 = splitmix64(keys)
        h2 = splitmix64(h1 ^ _U(0xD1B54A32D192ED03))
    u1 = ((h1 >> _U(11)).astype(np.float64) + 1.0) * 2.0 ** -53
    u2 = (h2 >> _U(11)).astype(np.float64) * 2.0 ** -53
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def slot_weights(spec, slot, ranks):
    """Planted weight of each rank in ``slot`` (rank 0 = missing), from a hash of (seed, slot, rank)."""
    with np.errstate(over="ignore"):
        salt = splitmix64(_U(spec.seed) * _U(0x100000001B3) + _U(slot + 1))
        keys = ranks.astype(np.uint64) ^ salt
    scale = spec.weight_std[slot] * np.maximum(ranks, 1).astype(np.float64) ** -spec.weight_rank_decay
    return scale * hashed_normal(keys)


def _hot_salt(spec, slot):
    with np.errstate(over="ignore"):
        return splitmix64(_U(spec.seed) * _U(0x9E3779B97F4A7C15) + _U(0xC2B2AE3D27D4EB4F) + _U(slot + 1))


def hot_ranks(spec, slot, pass_ids, positions):
    """Rank held by hot-set ``positions`` of ``slot`` in passes ``pass_ids`` (arrays, broadcast)."""
    salt = _hot_salt(spec, slot)
    positions = np.asarray(positions, dtype=np.uint64)
    phase = (splitmix64(positions ^ salt) >> _U(11)).astype(np.float64) * 2.0 ** -53  # u_j in [0, 1)
    generation = np.floor(np.asarray(pass_ids, dtype=np.float64) * spec.drift_per_pass + phase).astype(np.uint64)
    with np.errstate(over="ignore"):
        member = splitmix64(splitmix64(positions ^ salt) ^ (generation * _U(0xD6E8FEB86659FD93)))
    return member % _U(spec.vocab[slot]) + _U(1)


def dense_transform(raw, missing):
    return np.where(missing, 0.0, np.log1p(raw.astype(np.float64)))


def sample_chunk(spec, start, count, rng=None):
    """Rows ``start .. start+count`` of the data (deterministic per chunk start): a dict of arrays."""
    rng = rng if rng is not None else np.random.default_rng([spec.seed, 3, start])
    ranks = np.empty((count, NUM_SPARSE), dtype=np.uint64)
    logit = np.full(count, spec.bias)
    row_pass = (start + np.arange(count)) // spec.pass_rows
    for s in range(NUM_SPARSE):
        ranks[:, s] = zipf_ranks(rng.random(count), spec.vocab[s], spec.zipf[s])
        if spec.hot_fraction > 0:  # (extra draws only here: the stationary stream stays as it was)
            hot = np.flatnonzero(rng.random(count) < spec.hot_fraction)
            positions = rng.integers(0, spec.hot_size(s), hot.size)
            ranks[hot, s] = hot_ranks(spec, s, row_pass[hot], positions)
        if spec.cat_missing > 0:
            ranks[rng.random(count) < spec.cat_missing, s] = 0
        logit += slot_weights(spec, s, ranks[:, s])
    raw = np.floor(np.exp(rng.normal(spec.dense_mu, spec.dense_sigma, (count, NUM_DENSE)))).astype(np.int64)
    missing = rng.random((count, NUM_DENSE)) < spec.dense_missing
    dense = dense_transform(raw, missing)
    if spec.fmt == "slot":
        dense = np.round(dense, 6)  # the model sees exactly what the file says
    logit += dense @ spec.dense_weights
    labels = (rng.random(count) < _sigmoid(logit)).astype(np.int64)
    return {"ranks": ranks, "raw_dense": raw, "dense_missing": missing, "dense": dense, "logit": logit,
            "labels": labels}


def zipf_probabilities(vocab, exponent):
    """P(rank = r) for r in 1..vocab of :func:`zipf_ranks` (exact: the continuous law's mass of [r - 1/2, r + 1/2])."""
    edges = np.arange(vocab + 1, dtype=np.float64) + 0.5
    lo, hi = 0.5, vocab + 0.5
    if abs(exponent - 1.0) < 1e-9:
        cdf = np.log(edges / lo) / math.log(hi / lo)
    else:
        e = 1.0 - exponent
        cdf = (edges ** e - lo ** e) / (hi ** e - lo ** e)
    return np.diff(cdf)


def expected_reuse(spec, slot, pass_id):
    """Expected share of pass ``pass_id``'s key occurrences in ``slot`` that also occur in pass
    ``pass_id - 1`` (the missing value counts as one key), given the two passes' hot sets.

    Rows are independent, so a key with per-row probability w is absent from a pass of n rows
    with probability (1 - w)^n. Enumerates the vocabulary: for vocabularies up to ~10^7.
    """
    vocab, n, c, h = spec.vocab[slot], spec.pass_rows, spec.cat_missing, spec.hot_fraction
    if vocab > 10 ** 7:
        raise ValueError(f"expected_reuse enumerates the vocabulary; slot {slot} has {vocab:,} values")
    tail = zipf_probabilities(vocab, spec.zipf[slot])

    def per_row(p):  # probability that a row of pass p draws rank r (r = 1..vocab), given a value
        members = hot_ranks(spec, slot, p, np.arange(spec.hot_size(slot))).astype(np.int64)
        hot = np.bincount(members - 1, minlength=vocab) / members.size
        return (1 - h) * tail + h * hot

    now, before = per_row(pass_id), per_row(pass_id - 1)
    present_before = 1 - (1 - (1 - c) * before) ** n
    return float(c * (1 - (1 - c) ** n) + (1 - c) * np.sum(now * present_before))


def format_chunk(spec, chunk):
    """The chunk's lines in ``spec.fmt`` as bytes (vectorised text assembly)."""
    n = chunk["labels"].size
    ids = [scramble32(chunk["ranks"][:, s], s) for s in range(NUM_SPARSE)]
    if spec.fmt == "slot":
        fields = [[ctrdata.constant_field("click:", n), ctrdata.decimal_field(chunk["labels"])]]
        prefix = ctrdata.constant_field("dense_feature:", n)
        fields += [[prefix] + ctrdata.fixed_field(chunk["dense"][:, j]) for j in range(NUM_DENSE)]
        for s in range(NUM_SPARSE):
            value = np.where(chunk["ranks"][:, s] == 0, _U(0), ids[s])
            fields.append([ctrdata.constant_field(f"{s + 1}:", n), ctrdata.decimal_field(value)])
        return ctrdata.assemble_lines(fields, ord(" "))
    fields = [ctrdata.decimal_field(chunk["labels"])]
    fields += [ctrdata.decimal_field(chunk["raw_dense"][:, j], missing=chunk["dense_missing"][:, j])
               for j in range(NUM_DENSE)]
    fields += [hex_field(ids[s], missing=chunk["ranks"][:, s] == 0) for s in range(NUM_SPARSE)]
    return ctrdata.assemble_lines(fields, ord("\t") if spec.fmt == "criteo_tsv" else ord(","))


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def hex_field(values, missing=None):
    """8 lowercase hex digits of uint32 values, as Criteo writes categorical features."""
    shifts = np.arange(28, -1, -4, dtype=np.uint64)
    chars = _HEX[((values[:, None] >> shifts[None, :]) & _U(15)).astype(np.int64)]
    lengths = np.full(values.size, 8, dtype=np.int64)
    if missing is not None:
        lengths[missing] = 0
    return chars, lengths


class _AucHistogram:
    """Streaming AUC of the true probability: label-wise histograms of the logit."""

    def __init__(self):
        self.pos = np.zeros(_AUC_BINS)
        self.neg = np.zeros(_AUC_BINS)
        self.expected_pos = np.zeros(_AUC_BINS)
        self.expected_neg = np.zeros(_AUC_BINS)

    def add(self, logit, labels):
        scaled = (np.clip(logit, -_LOGIT_RANGE, _LOGIT_RANGE) + _LOGIT_RANGE) / (2 * _LOGIT_RANGE)
        bins = np.minimum((scaled * _AUC_BINS).astype(np.int64), _AUC_BINS - 1)
        p = _sigmoid(logit)
        self.pos += np.bincount(bins, weights=labels, minlength=_AUC_BINS)
        self.neg += np.bincount(bins, weights=1 - labels, minlength=_AUC_BINS)
        self.expected_pos += np.bincount(bins, weights=p, minlength=_AUC_BINS)
        self.expected_neg += np.bincount(bins, weights=1 - p, minlength=_AUC_BINS)

    @staticmethod
    def _auc(pos, neg):
        below = np.cumsum(neg) - neg
        total = pos.sum() * neg.sum()
        return float(np.sum(pos * (below + 0.5 * neg)) / total) if total > 0 else float("nan")

    def auc(self):
        return self._auc(self.pos, self.neg)

    def expected_auc(self):
        return self._auc(self.expected_pos, self.expected_neg)


class _DistinctCounter:
    """Distinct ranks per slot: exact bitmap for small vocabularies, HyperLogLog above."""

    def __init__(self, vocab):
        self.exact = [v <= _EXACT_DISTINCT_MAX for v in vocab]
        self.state = [np.zeros((v + 1 + 7) // 8, dtype=np.uint8) if ex else np.zeros(1 << _HLL_BITS, dtype=np.uint8)
                      for v, ex in zip(vocab, self.exact)]

    def add(self, slot, ranks):
        if self.exact[slot]:
            r = ranks.astype(np.int64)
            np.bitwise_or.at(self.state[slot], r >> 3, (1 << (r & 7)).astype(np.uint8))
            return
        h = splitmix64(ranks ^ _U(0xA0761D6478BD642F))
        index = (h >> _U(64 - _HLL_BITS)).astype(np.int64)
        rest = (h << _U(_HLL_BITS)) | _U(1 << (_HLL_BITS - 1))  # sentinel bounds the zero run
        rho = (64 - np.floor(np.log2(rest.astype(np.float64))).astype(np.int64)).clip(1, 64 - _HLL_BITS + 1)
        np.maximum.at(self.state[slot], index, rho.astype(np.uint8))

    def counts(self):
        """Distinct values per slot (rank 0, "missing", is one value: the readers key it per slot)."""
        out = []
        for exact, state in zip(self.exact, self.state):
            if exact:
                n = int(np.unpackbits(state).sum())
            else:
                m = state.size
                estimate = 0.7213 / (1 + 1.079 / m) * m * m / np.sum(2.0 ** -state.astype(np.float64))
                zeros = int(np.count_nonzero(state == 0))
                if estimate <= 2.5 * m and zeros:
                    estimate = m * math.log(m / zeros)
                n = int(round(estimate))
            out.append(n)
        return out


def _sorted_unique(values):
    """Sorted distinct values (numpy 2's hash-based np.unique is ~10x slower on uint64 keys)."""
    values = np.sort(values)
    return values[np.concatenate(([True], values[1:] != values[:-1]))] if values.size else values


class _ReuseTracker:
    """Per pass of ``spec.pass_rows`` rows: distinct keys, the share seen in the previous pass and
    the share never seen before (a key = (slot, rank); the missing value is one key per slot).
    Keeps every key seen so far: for streams whose distinct keys fit in memory."""

    def __init__(self, pass_rows):
        self.pass_rows = pass_rows
        self.pending, self.pending_rows = [], 0
        self.previous = np.zeros(0, np.uint64)
        self.seen = np.zeros(0, np.uint64)
        self.passes = []

    def add(self, ranks):
        while len(ranks):
            take = min(len(ranks), self.pass_rows - self.pending_rows)
            keys = ranks[:take] | (np.arange(NUM_SPARSE, dtype=np.uint64) << _U(33))[None, :]
            self.pending.append(keys.ravel())
            self.pending_rows += take
            ranks = ranks[take:]
            if self.pending_rows == self.pass_rows:
                self.close_pass()

    def close_pass(self):
        if not self.pending_rows:
            return
        keys = _sorted_unique(np.concatenate(self.pending))
        self.pending, self.pending_rows = [], 0
        entry = {"pass": len(self.passes), "distinct_keys": int(keys.size)}
        if self.passes:
            entry["seen_previous_pass"] = float(np.isin(keys, self.previous, assume_unique=True).mean())
            entry["new"] = float(1.0 - np.isin(keys, self.seen, assume_unique=True).mean())
        self.passes.append(entry)
        self.previous, self.seen = keys, _sorted_unique(np.concatenate([self.seen, keys]))

    def summary(self):
        later = self.passes[1:]
        return {"reuse_per_pass": self.passes,
                "mean_seen_previous_pass": float(np.mean([p["seen_previous_pass"] for p in later])) if later else None,
                "mean_new": float(np.mean([p["new"] for p in later])) if later else None}


def generate(spec, path, chunk_rows=50_000, progress=True, track_reuse=False):
    """Write ``spec.rows`` rows to ``path`` and ``path + '.meta.json'``; return the meta dict.

    ``track_reuse``: add per-pass key reuse (:class:`_ReuseTracker`) to the meta as ``reuse``."""
    from tqdm import tqdm

    from paddle_suite.io import atomic_write

    path = os.fspath(path)
    started = time.time()
    auc = _AucHistogram()
    distinct = _DistinctCounter(spec.vocab)
    clicks = 0
    reuse = _ReuseTracker(spec.pass_rows) if track_reuse else None
    with atomic_write(path, "wb") as raw_handle:
        handle = gzip.GzipFile(fileobj=raw_handle, mode="wb", compresslevel=3) if path.endswith(".gz") else raw_handle
        if spec.fmt == "criteo_csv":
            handle.write((ctrdata.CSV_HEADER + "\n").encode())
        bar = tqdm(total=spec.rows, unit="row", unit_scale=True, disable=not progress, desc=os.path.basename(path))
        with bar:
            for start in range(0, spec.rows, chunk_rows):
                chunk = sample_chunk(spec, start, min(chunk_rows, spec.rows - start))
                handle.write(format_chunk(spec, chunk))
                auc.add(chunk["logit"], chunk["labels"])
                for s in range(NUM_SPARSE):
                    distinct.add(s, chunk["ranks"][:, s])
                clicks += int(chunk["labels"].sum())
                if reuse is not None:
                    reuse.add(chunk["ranks"])
                bar.update(chunk["labels"].size)
        if handle is not raw_handle:
            handle.close()
    seconds = time.time() - started
    per_slot = distinct.counts()
    meta = dict(spec.as_dict(), file=os.path.basename(path), bayes_auc=auc.auc(),
                bayes_auc_expected=auc.expected_auc(), ctr=clicks / max(spec.rows, 1),
                distinct_keys=int(sum(per_slot)), distinct_keys_per_slot=per_slot,
                distinct_keys_exact=all(distinct.exact), seconds=round(seconds, 3),
                rows_per_s=round(spec.rows / max(seconds, 1e-9), 1))
    if reuse is not None:
        reuse.close_pass()
        meta["reuse"] = reuse.summary()
    with atomic_write(path + ".meta.json", "w") as handle:
        json.dump(meta, handle, indent=1)
    return meta


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description="Write synthetic Criteo-format CTR data with a planted model "
                                                 "(prints the Bayes-optimal AUC; writes <out>.meta.json)")
    parser.add_argument("--out", required=True, help="output file (.gz to compress)")
    parser.add_argument("--rows", type=lambda v: int(float(v)), required=True, help="e.g. 1e7")
    parser.add_argument("--format", default="criteo_tsv", choices=ctrdata.FORMATS)
    parser.add_argument("--vocab", default="1e6", help="vocabulary size per slot: one value or 26 comma-separated")
    parser.add_argument("--zipf", default="1.1", help="Zipf exponent per slot: one value or 26 comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ctr", type=float, default=0.25, help="target click rate")
    parser.add_argument("--weight-std", default="0.5", help="planted weight std per slot (one or 26 values)")
    parser.add_argument("--weight-rank-decay", type=float, default=0.5, help="weight std ~ rank^-decay")
    parser.add_argument("--dense-weight-std", type=float, default=0.3)
    parser.add_argument("--cat-missing", type=float, default=0.0, help="probability a categorical value is missing")
    parser.add_argument("--dense-missing", type=float, default=0.2, help="probability a dense value is missing")
    parser.add_argument("--hot-fraction", type=float, default=0.0,
                        help="temporal reuse: share of values drawn from a per-slot hot set that drifts from pass "
                             "to pass (0 = i.i.d. Zipf stream; see paddle_suite/ads/generator.py)")
    parser.add_argument("--hot-set-size", type=lambda v: int(float(v)), default=10_000,
                        help="hot-set members per slot (at most the vocabulary)")
    parser.add_argument("--drift-per-pass", type=float, default=0.1,
                        help="share of hot-set members replaced from one pass to the next")
    parser.add_argument("--pass-rows", type=lambda v: int(float(v)), default=100_000,
                        help="rows per pass for the hot set's drift: the trainer's DataLoader.pass_size, "
                             "a multiple of DataLoader.batch_size")
    parser.add_argument("--track-reuse", action="store_true",
                        help="measure per-pass key reuse and never-seen keys (meta 'reuse'; keeps all keys in RAM)")
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    def listed(text):
        parts = text.split(",")
        return parts if len(parts) > 1 else parts[0]

    spec = CtrSpec(args.rows, args.format, listed(args.vocab), listed(args.zipf), args.seed, args.ctr,
                   listed(args.weight_std), args.weight_rank_decay, args.dense_weight_std, args.cat_missing,
                   args.dense_missing, args.hot_fraction, args.hot_set_size, args.drift_per_pass, args.pass_rows)
    meta = generate(spec, args.out, args.chunk_rows, progress=not args.no_progress, track_reuse=args.track_reuse)
    print(f"wrote {meta['rows']:,} rows to {args.out} ({meta['rows_per_s']:,.0f} rows/s); "
          f"distinct keys {meta['distinct_keys']:,}; ctr {meta['ctr']:.4f}; "
          f"Bayes-optimal AUC {meta['bayes_auc']:.5f} (expected {meta['bayes_auc_expected']:.5f})")
    if "reuse" in meta and meta["reuse"]["mean_new"] is not None:
        print(f"per pass of {spec.pass_rows:,} rows (mean over passes 1..): distinct keys seen in the previous pass "
              f"{meta['reuse']['mean_seen_previous_pass']:.3f}, never seen before {meta['reuse']['mean_new']:.3f}")
    return meta


if __name__ == "__main__":
    main()
