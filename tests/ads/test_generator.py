"""Synthetic CTR generator: Zipf statistics, Bayes AUC, reproducibility, readable in every format."""
import hashlib
import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from paddle_suite.ads import data as ctr
from paddle_suite.ads import generator as gen

ZIPF = [1.2, 0.8] + [1.05] * 24
VOCAB = [50_000, 200_000] + [5_000] * 24


def small_spec(rows=60_000, fmt="criteo_tsv", seed=3, **kw):
    return gen.CtrSpec(rows, fmt, vocab=VOCAB, zipf=ZIPF, seed=seed, **kw)


def fitted_exponent(keys, lo=5, hi=200):
    """Zipf exponent from the slope of log frequency against log frequency-rank."""
    _, counts = np.unique(keys, return_counts=True)
    counts = np.sort(counts)[::-1][lo - 1:hi]
    ranks = np.arange(lo, lo + counts.size)
    return -np.polyfit(np.log(ranks), np.log(counts), 1)[0]


@pytest.fixture(scope="module")
def tsv_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "train.txt"
    meta = gen.generate(small_spec(200_000), path, chunk_rows=50_000, progress=False)
    return path, meta


def test_zipf_exponents_recovered_from_file_counts(tsv_file):
    path, _ = tsv_file
    batch, _ = ctr.read_ctr(path)
    assert len(batch) == 200_000
    for slot in (0, 1, 2):
        assert fitted_exponent(batch.sparse[:, slot]) == pytest.approx(ZIPF[slot], abs=0.06), slot


def test_zipf_sampler_frequencies():
    ranks = gen.zipf_ranks(np.random.default_rng(0).random(2_000_000), 10 ** 9, 1.1)
    assert ranks.min() >= 1 and ranks.max() <= 10 ** 9
    counts = np.bincount(ranks[ranks <= 64].astype(np.int64), minlength=65)[1:]
    # P(r) ~ r^-a away from the first ranks: the ratio of ranks 10 and 40 is 4^1.1
    assert counts[9] / counts[39] == pytest.approx(4 ** 1.1, rel=0.05)


def test_meta_and_bayes_auc(tsv_file):
    path, meta = tsv_file
    on_disk = json.loads((path.parent / (path.name + ".meta.json")).read_text())
    assert on_disk == meta
    assert meta["rows"] == 200_000 and meta["slots"] == 26 and meta["zipf"] == ZIPF and meta["vocab"] == VOCAB
    assert meta["seed"] == 3 and meta["format"] == "criteo_tsv"
    assert 0.7 < meta["bayes_auc"] < 0.95
    assert abs(meta["bayes_auc"] - meta["bayes_auc_expected"]) < 0.01
    assert meta["ctr"] == pytest.approx(0.25, abs=0.01)
    # the histogram AUC equals sklearn's on the true probabilities of the same rows
    spec = small_spec(200_000)
    chunks = [gen.sample_chunk(spec, start, 50_000) for start in range(0, 200_000, 50_000)]
    labels = np.concatenate([c["labels"] for c in chunks])
    logits = np.concatenate([c["logit"] for c in chunks])
    assert meta["bayes_auc"] == pytest.approx(roc_auc_score(labels, logits), abs=1e-5)
    batch, _ = ctr.read_ctr(path)
    assert np.array_equal(batch.labels, labels)
    # distinct keys: exact for these vocabularies, checked against the file
    assert meta["distinct_keys_exact"]
    assert meta["distinct_keys"] == sum(np.unique(batch.sparse[:, s]).size for s in range(26))


def test_reproducible_with_seed(tmp_path):
    digests, aucs = [], []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        meta = gen.generate(small_spec(20_000, seed=seed), tmp_path / name, progress=False)
        digests.append(hashlib.md5((tmp_path / name).read_bytes()).hexdigest())
        aucs.append(meta["bayes_auc"])
    assert digests[0] == digests[1] and aucs[0] == aucs[1]
    assert digests[0] != digests[2]


@pytest.mark.parametrize("fmt, name", [("criteo_tsv", "d.txt"), ("criteo_csv", "d.csv"), ("slot", "d.gz")])
def test_every_format_reads_back(tmp_path, fmt, name):
    spec = small_spec(5_000, fmt=fmt, cat_missing=0.1)
    meta = gen.generate(spec, tmp_path / name, chunk_rows=2_000, progress=False)
    batch, reader = ctr.read_ctr(tmp_path / name)
    assert reader.fmt == fmt and len(batch) == 5_000 and reader.num_skipped == 0
    assert meta["distinct_keys"] == sum(np.unique(batch.sparse[:, s]).size for s in range(26))  # with missing
    chunks = [gen.sample_chunk(spec, start, min(2_000, 5_000 - start)) for start in range(0, 5_000, 2_000)]
    labels = np.concatenate([c["labels"] for c in chunks])
    ranks = np.concatenate([c["ranks"] for c in chunks])
    dense = np.concatenate([c["dense"] for c in chunks])
    assert np.array_equal(batch.labels, labels)
    np.testing.assert_allclose(batch.dense, dense, atol=1e-6 if fmt == "slot" else 1e-5, rtol=1e-6)
    for slot in (0, 7, 25):  # same rank <-> same key, and the key is the hash of the written value
        pairs = np.unique(np.stack([batch.sparse[:, slot], ranks[:, slot]]), axis=1).shape[1]
        assert pairs == np.unique(batch.sparse[:, slot]).size == np.unique(ranks[:, slot]).size
        ids = gen.scramble32(ranks[:3, slot], slot)
        if fmt == "slot":
            text = [str(int(v)) if r else "0" for v, r in zip(ids, ranks[:3, slot])]
        else:
            text = [f"{int(v):08x}" if r else "" for v, r in zip(ids, ranks[:3, slot])]
        assert np.array_equal(batch.sparse[:3, slot], ctr.hash_strings(text, slot))


def test_scramble_is_bijective_and_hll_counts():
    ranks = np.arange(1 << 20, dtype=np.uint64)
    assert np.unique(gen.scramble32(ranks, 4)).size == ranks.size
    counter = gen._DistinctCounter([1 << 30])
    assert not counter.exact[0]
    values = np.random.default_rng(0).integers(1, 1 << 30, 400_000).astype(np.uint64)
    counter.add(0, values)
    counter.add(0, values[:1000])  # repeats do not count
    assert counter.counts()[0] == pytest.approx(np.unique(values).size, rel=0.02)


def test_cli_prints_bayes_auc(tmp_path, capsys):
    meta = gen.main(["--out", str(tmp_path / "x.txt"), "--rows", "3e3", "--vocab", "1e3", "--zipf", "1.3",
                     "--format", "slot", "--no-progress"])
    out = capsys.readouterr().out
    assert f"Bayes-optimal AUC {meta['bayes_auc']:.5f}" in out
    assert meta["vocab"] == [1000] * 26 and meta["zipf"] == [1.3] * 26
    with pytest.raises(ValueError, match="26"):
        gen.CtrSpec(10, vocab=[5, 6])


def test_bias_solved_without_scipy():
    """The click rate is calibrated by bisection (no scipy: it can crash when loaded after paddle)."""
    assert gen.solve_increasing(lambda x: x ** 3, 8.0, -30.0, 30.0) == pytest.approx(2.0, abs=1e-9)
    with pytest.raises(ValueError, match="no solution"):
        gen.solve_increasing(lambda x: x, 40.0, -30.0, 30.0)
    spec = small_spec(10, ctr=0.1)
    pilot = gen.sample_chunk(spec, 0, 50_000, rng=np.random.default_rng([3, 2]))  # the calibration sample
    assert np.mean(1 / (1 + np.exp(-pilot["logit"]))) == pytest.approx(0.1, abs=1e-9)


def temporal_spec(hot_fraction, drift, rows=100_000, pass_rows=20_000):
    # id-like long tail (large vocabulary, Zipf < 1): without the hot set few keys recur
    return gen.CtrSpec(rows, vocab=10 ** 6, zipf=0.75, seed=4, cat_missing=0.02, hot_fraction=hot_fraction,
                       hot_set_size=3_000, drift_per_pass=drift, pass_rows=pass_rows)


def test_hot_set_drifts_by_the_given_share():
    spec = temporal_spec(0.5, 0.15)
    positions = np.arange(spec.hot_size(0))
    members = np.stack([gen.hot_ranks(spec, 0, p, positions) for p in range(8)])
    changed = (members[1:] != members[:-1]).mean(axis=1)
    # each position changes at a rate of d per pass: the share per pass is d up to sampling noise of u_j
    assert changed.mean() == pytest.approx(0.15, abs=0.01)
    assert np.all(np.abs(changed - 0.15) < 0.03)
    assert members.min() >= 1 and members.max() <= 10 ** 6
    assert np.array_equal(gen.hot_ranks(temporal_spec(0.5, 0.0), 3, 0, positions),
                          gen.hot_ranks(temporal_spec(0.5, 0.0), 3, 9, positions))  # no drift: a fixed hot set
    full = temporal_spec(0.5, 1.0)  # drift 1: every member replaced every pass
    assert (gen.hot_ranks(full, 0, 0, positions) != gen.hot_ranks(full, 0, 1, positions)).all()


@pytest.mark.parametrize("hot_fraction, drift", [(0.0, 0.1), (0.6, 0.1), (0.6, 0.5), (0.9, 0.0)])
def test_measured_pass_reuse_matches_the_model(hot_fraction, drift):
    """Share of a pass's key occurrences that occurred in the previous pass, measured on the
    generated rows, against the value the parameters imply (``expected_reuse``)."""
    spec = temporal_spec(hot_fraction, drift)
    chunk = gen.sample_chunk(spec, 0, spec.rows)
    for slot in (0, 11):
        ranks = chunk["ranks"][:, slot].reshape(-1, spec.pass_rows)
        measured = [np.isin(ranks[p], ranks[p - 1]).mean() for p in range(1, len(ranks))]
        expected = [gen.expected_reuse(spec, slot, p) for p in range(1, len(ranks))]
        np.testing.assert_allclose(measured, expected, atol=0.01)
    # the model's point: the hot set, not the tail, makes keys recur
    if hot_fraction == 0:
        assert max(expected) < 0.25
    else:
        assert min(expected) > hot_fraction * (1 - drift) * 0.9


def test_track_reuse_in_meta_and_stationary_stream_unchanged(tmp_path):
    stationary = gen.generate(temporal_spec(0.0, 0.1, rows=40_000), tmp_path / "a.txt", progress=False,
                              track_reuse=True)
    hot = gen.generate(temporal_spec(0.8, 0.1, rows=40_000), tmp_path / "b.txt", progress=False, track_reuse=True)
    assert [p["pass"] for p in hot["reuse"]["reuse_per_pass"]] == [0, 1]
    assert hot["reuse"]["mean_seen_previous_pass"] > stationary["reuse"]["mean_seen_previous_pass"] + 0.3
    assert hot["reuse"]["mean_new"] < stationary["reuse"]["mean_new"] - 0.3
    assert hot["hot_fraction"] == 0.8 and hot["drift_per_pass"] == 0.1 and hot["pass_rows"] == 20_000
    # hot_fraction 0 draws nothing extra: the rows are those of a spec without temporal parameters
    plain = gen.CtrSpec(40_000, vocab=10 ** 6, zipf=0.75, seed=4, cat_missing=0.02)
    gen.generate(plain, tmp_path / "c.txt", progress=False)
    assert (tmp_path / "a.txt").read_bytes() == (tmp_path / "c.txt").read_bytes()
