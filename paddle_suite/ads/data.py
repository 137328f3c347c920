"""Readers for Criteo-style CTR data, 64-bit feature hashing, and the Fleet data generator.

Formats (all have 40 fields a line: 1 label, 13 dense, 26 categorical):

* ``criteo_tsv``: raw Criteo Kaggle / Terabyte, tab-separated, no header.
* ``criteo_csv``: the same columns comma-separated with the header ``label,I1..I13,C1..C26``
  (as in ``shared/data/ctr/criteo_kaggle_sample.csv``). An empty field means missing.
* ``slot``: PaddleRec's preprocessed slot text, space-separated:
  ``click:0 dense_feature:x`` (13 times, already normalised) then ``1:id ... 26:id``.

Parsed data is a :class:`CtrBatch` of numpy arrays: ``labels`` (n,) int64 in {0, 1},
``dense`` (n, 13) float32, ``sparse`` (n, 26) uint64 feature keys.

Choices made here (the paper and the data leave them open):

* Feature hashing: key = avalanche(FNV-1a-64 over the raw bytes of the field, started from a
  state salted by (hash_seed, slot)). So equal strings in different slots get different keys and
  keys spread over the whole 64-bit space (``store.shard_of`` relies on that). Hashing is
  vectorised over all fields of a block; the loop runs over byte positions (8 for Criteo hex).
  A missing categorical field is the empty string: a per-slot "missing" key that the model
  can learn, rather than a dropped feature. The slot format's ids are hashed the same way
  (from their decimal text), so both formats feed the same 64-bit key space.
* Dense normalisation for raw Criteo integers (``dense_transform="log1p"``, the default):
  ``sign(x) * log1p(|x|)``; missing -> 0. (Criteo's I2 has small negative values, hence the
  sign.) ``"none"`` keeps raw values (missing -> 0). Slot-format dense values are already
  normalised by PaddleRec and are returned unchanged.
* Slot-format lines may end in spaces (stripped); TSV/CSV lines are taken as they are (a
  trailing separator is an empty last field).
* Integer columns accept any finite decimal number (the Kaggle CSV writes ``260.0``).
* Malformed lines (wrong field count, bad label, unparsable or non-finite number, wrong slot
  name, empty slot id, blank line) raise :class:`CtrDataError` naming ``file:line`` and the
  reason, or are counted and skipped with ``skip_malformed=True`` (``reader.num_skipped``,
  ``reader.skipped_examples`` and a logged warning report them; :class:`CtrFilesReader` keeps
  the count per file). A file with no lines ("FILE is empty") or no example (only a CSV
  header, or every line skipped: "no examples in FILE") is an error too: a run never trains on
  nothing and reports success.

``CtrSlotDataGenerator`` is a ``paddle.distributed.fleet.MultiSlotDataGenerator`` for Fleet's
``InMemoryDataset`` / ``QueueDataset`` (``dataset.set_pipe_command("python -m
paddle_suite.ads.data --pipe")``). Its slot order, which ``dataset.set_use_var`` must follow, is
:data:`USE_VAR_SLOTS`: ``click`` (int64, shape [-1, 1]), ``dense_feature`` (float32, [-1, 13]),
``C1`` .. ``C26`` (int64, [-1, 1], lod_level=1). Keys are written as unsigned 64-bit decimals
(the data feed parses them with strtoull); a numpy uint64 key array is fed to an int64
variable as ``keys.view(np.int64)``, which keeps the bit pattern the parameter server sees.

Pipe errors. Paddle 2.6.2's dataset runs the pipe command per file as ``bash -c 'set -o
pipefail; ( CMD ) < "FILE"'`` (``( zcat ) < "FILE" | CMD`` for ``.gz``), ignores its exit status
and loads nothing from a failed file. So the pipe names its input itself: ``--source FILE`` if
given, else the file behind its stdin (``/proc/self/fd/0``), else the ``< "FILE"`` of the
parent shell's command line (the ``.gz`` case), else ``<stdin>``. A malformed line exits 1 with
``error: FILE:LINE: reason`` on stderr, and with ``--status-dir DIR`` every run of the pipe
writes ``DIR/pipe-<pid>.json`` (source, rows, skipped lines, error): :func:`collect_pipe_status`
reads them after ``load_into_memory`` and raises the first error, or a file with no record,
so the trainer can fail the job (and log the skipped counts) instead of training on nothing.
"""
import gzip
import logging
import math
import os
import re
import sys
from typing import NamedTuple

import numpy as np

from paddle_suite.data import DataError

log = logging.getLogger(__name__)

NUM_DENSE = 13
NUM_SPARSE = 26
NUM_FIELDS = 1 + NUM_DENSE + NUM_SPARSE
CSV_HEADER = ",".join(["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)])
SLOT_NAMES = ["click"] + ["dense_feature"] * NUM_DENSE + [str(i) for i in range(1, 27)]
USE_VAR_SLOTS = ["click", "dense_feature"] + [f"C{i}" for i in range(1, 27)]
FORMATS = ("criteo_tsv", "criteo_csv", "slot")
_SEPARATOR = {"criteo_tsv": ord("\t"), "criteo_csv": ord(","), "slot": ord(" ")}
_MAX_NUMBER_CHARS = 40
_KEEP_EXAMPLES = 20

_U = np.uint64
_FNV_OFFSET = _U(0xCBF29CE484222325)
_FNV_PRIME = _U(0x100000001B3)


class CtrDataError(DataError):
    """Bad CTR data: the message names the file (and line) and says what is wrong and how to fix it."""


def _no_examples(path, skipped, skipped_examples, fmt):
    if skipped:
        return CtrDataError(f"no examples in {path}: all {skipped} line(s) are malformed, e.g. "
                            f"{skipped_examples[0]}. Fix the file (format {fmt}) or remove it from the file list.")
    what = "it has only the CSV header" if fmt == "criteo_csv" else "it has no data lines"
    return CtrDataError(f"no examples in {path}: {what}. Point the file list at data files "
                        "(tools/gen_ctr_data.py writes some).")


def _empty_file(path):
    return CtrDataError(f"{path} is empty (no lines): point the file list at a CTR data file "
                        "(tools/gen_ctr_data.py writes some) or remove this one.")


class CtrBatch(NamedTuple):
    labels: np.ndarray  # (n,) int64
    dense: np.ndarray  # (n, 13) float32
    sparse: np.ndarray  # (n, 26) uint64

    def __len__(self):
        return len(self.labels)


def concat_batches(batches):
    batches = list(batches)
    if not batches:
        return _empty_batch()
    return CtrBatch(*(np.concatenate(parts) for parts in zip(*batches)))


def _empty_batch():
    return CtrBatch(
        np.zeros(0, np.int64), np.zeros((0, NUM_DENSE), np.float32), np.zeros((0, NUM_SPARSE), np.uint64)
    )


# ---------------------------------------------------------------------------------------- hashing
def splitmix64(x):
    """The splitmix64 finaliser: a bijective avalanche mix of uint64 values (vectorised)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _U(0x9E3779B97F4A7C15)
        z = (z ^ (z >> _U(30))) * _U(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U(27))) * _U(0x94D049BB133111EB)
        return z ^ (z >> _U(31))


def slot_salts(num_slots, hash_seed=0):
    """Per-slot FNV start states, salted by the seed so different seeds give unrelated keys."""
    slots = np.arange(num_slots, dtype=np.uint64)
    return _FNV_OFFSET ^ splitmix64(splitmix64(np.uint64(hash_seed)) ^ (slots + _U(1)))


def hash_spans(buf, starts, lengths, salts):
    """64-bit keys of the byte spans ``buf[starts[i] : starts[i] + lengths[i]]``.

    ``salts`` (broadcastable to ``starts``) is the FNV start state, e.g. per slot. Vectorised over
    spans; the Python loop runs over byte positions only, shrinking to the spans still active.
    """
    shape = np.shape(starts)
    starts = np.asarray(starts, dtype=np.int64).ravel()
    lengths = np.broadcast_to(np.asarray(lengths, dtype=np.int64), shape).ravel()
    state = np.broadcast_to(np.asarray(salts, dtype=np.uint64), shape).astype(np.uint64).ravel()
    active = np.arange(starts.size)
    position = 0
    with np.errstate(over="ignore"):
        while active.size:
            keep = lengths[active] > position
            if not keep.all():
                active = active[keep]
                if not active.size:
                    break
            if active.size == starts.size:  # all spans still going: no gather/scatter needed
                state ^= buf[starts + position].astype(np.uint64)
                state *= _FNV_PRIME
            else:
                byte = buf[starts[active] + position].astype(np.uint64)
                state[active] = (state[active] ^ byte) * _FNV_PRIME
            position += 1
    return splitmix64(state)


def hash_strings(strings, slot, hash_seed=0):
    """Keys of Python strings in one slot (0-based), as the readers compute them: for tests/tools."""
    data = [s.encode() if isinstance(s, str) else bytes(s) for s in strings]
    buf = np.frombuffer(b"".join(data) + b"\0", dtype=np.uint8)
    lengths = np.array([len(d) for d in data], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return hash_spans(buf, starts, lengths, slot_salts(NUM_SPARSE, hash_seed)[slot])


_SLOT_NAME_LENGTHS = np.array([len(name) for name in SLOT_NAMES])
_SLOT_NAME_GROUPS = [
    (length, cols, np.array([list(SLOT_NAMES[c].encode()) for c in cols], dtype=np.uint8))
    for length in sorted(set(_SLOT_NAME_LENGTHS.tolist()))
    for cols in [np.flatnonzero(_SLOT_NAME_LENGTHS == length)]
]


# ---------------------------------------------------------------------------------------- parsing
def detect_format(path, first_line=None):
    """Guess the format from the first line; raise if it is none of :data:`FORMATS`."""
    if first_line is None:
        with _open_binary(path) as handle:
            first_line = handle.readline()
    line = first_line.decode("utf-8", "replace").rstrip("\r\n")
    if line.startswith("click:"):
        return "slot"
    if line.startswith("label,"):
        return "criteo_csv"
    if line.count("\t") == NUM_FIELDS - 1:
        return "criteo_tsv"
    raise CtrDataError(
        f"{path}:1: cannot tell the CTR format: expected a Criteo TSV line ({NUM_FIELDS} tab-separated "
        f"fields), the CSV header '{CSV_HEADER[:30]}...', or a slot line starting 'click:'; "
        f"got {line[:80]!r}. Pass fmt= one of {FORMATS} if the file is right."
    )


def _open_binary(path):
    path = os.fspath(path)
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _line_spans(buf):
    """Start/end (exclusive, without CR) of each newline-terminated line of ``buf``."""
    ends = np.flatnonzero(buf == 10)
    starts = np.empty_like(ends)
    starts[:1] = 0
    starts[1:] = ends[:-1] + 1
    has_cr = np.zeros(ends.shape, dtype=bool)
    nonempty = ends > starts
    has_cr[nonempty] = buf[ends[nonempty] - 1] == 13
    return starts, ends - has_cr


def _parse_numbers(buf, starts, lengths):
    """float64 values of decimal spans (length >= 1); returns (values, ok mask)."""
    width = int(lengths.max()) if lengths.size else 1
    chars = np.zeros((starts.size, width), dtype=np.uint8)
    cols = np.arange(width)
    mask = cols[None, :] < lengths[:, None]
    chars[mask] = buf[(starts[:, None] + cols[None, :])[mask]]
    strings = chars.view(f"S{width}").ravel()
    try:
        values = strings.astype(np.float64)
        ok = np.isfinite(values)
    except ValueError:  # error path only: find which spans fail
        values = np.full(strings.size, np.nan)
        for i, text in enumerate(strings):
            try:
                values[i] = float(text)
            except ValueError:
                pass
        ok = np.isfinite(values)
    return values, ok


class _BlockParser:
    """Vectorised parser of a block of complete lines in one format."""

    def __init__(self, fmt, hash_seed=0, dense_transform="log1p"):
        if fmt not in FORMATS:
            raise ValueError(f"unknown CTR format '{fmt}'; choose one of {FORMATS}")
        if dense_transform not in ("log1p", "none"):
            raise ValueError(f"unknown dense_transform '{dense_transform}'; choose 'log1p' or 'none'")
        self.fmt = fmt
        self.sep = _SEPARATOR[fmt]
        self.salts = slot_salts(NUM_SPARSE, hash_seed)
        self.dense_transform = dense_transform

    def parse(self, buf):
        """Parse ``buf`` (uint8, ending with a newline). Returns (batch, bad_line_idx, reasons)."""
        line_start, line_end = _line_spans(buf)
        if self.fmt == "slot":  # trailing blanks are harmless here (in TSV/CSV they are empty fields)
            for _ in range(8):
                blank_end = (line_end > line_start) & (buf[np.maximum(line_end - 1, 0)] == 32)
                if not blank_end.any():
                    break
                line_end = line_end - blank_end
        n = line_start.size
        reasons = np.zeros(n, dtype=np.int8)  # index into _REASONS, 0 = fine
        detail = {}
        seps = np.flatnonzero(buf == self.sep)
        first = np.searchsorted(seps, line_start)
        count = np.searchsorted(seps, line_end) - first
        blank = line_end == line_start
        reasons[count != NUM_FIELDS - 1] = 1
        reasons[blank] = 2
        detail["count"] = count + 1
        good = np.flatnonzero(reasons == 0)
        field_sep = seps[first[good, None] + np.arange(NUM_FIELDS - 1)[None, :]]
        starts = np.concatenate([line_start[good, None], field_sep + 1], axis=1)
        ends = np.concatenate([field_sep, line_end[good, None]], axis=1)
        if self.fmt == "slot":
            starts, bad_name, empty_value = self._strip_slot_names(buf, starts, ends)
            reasons[good[bad_name.any(axis=1)]] = 3
            reasons[good[empty_value.any(axis=1) & ~bad_name.any(axis=1)]] = 7
        lengths = ends - starts

        label_ok = (lengths[:, 0] == 1) & np.isin(buf[starts[:, 0]], (48, 49))
        labels = buf[starts[:, 0]].astype(np.int64) - 48
        _set_reason(reasons, good, ~label_ok, 4)

        dstart, dlen = starts[:, 1:14], lengths[:, 1:14]
        present = dlen > 0
        too_long = dlen > _MAX_NUMBER_CHARS
        _set_reason(reasons, good, too_long.any(axis=1), 5)
        take = present & ~too_long
        values = np.zeros(dstart.shape, dtype=np.float64)
        if take.any():
            parsed, ok = _parse_numbers(buf, dstart[take], dlen[take])
            bad = np.zeros(dstart.shape, dtype=bool)
            bad[take] = ~ok
            values[take] = np.where(ok, parsed, 0.0)
            _set_reason(reasons, good, bad.any(axis=1), 6)
        if self.fmt == "slot":
            _set_reason(reasons, good, (~present).any(axis=1), 7)
        elif self.dense_transform == "log1p":
            values = np.sign(values) * np.log1p(np.abs(values))

        sparse = hash_spans(buf, starts[:, 14:], lengths[:, 14:], self.salts[None, :]).reshape(-1, NUM_SPARSE)

        keep = reasons[good] == 0
        batch = CtrBatch(labels[keep], values[keep].astype(np.float32), sparse[keep])
        bad_idx = np.flatnonzero(reasons)
        detail.update(buf=buf, good=good, starts=starts, lengths=lengths)
        messages = [self._reason(reasons[i], detail, i) for i in bad_idx[:_KEEP_EXAMPLES]]
        return batch, bad_idx, messages

    def _strip_slot_names(self, buf, starts, ends):
        """Check each ``name:value`` token's name; return value starts and problem masks."""
        colons = np.flatnonzero(buf == 58)
        if colons.size == 0:
            return starts, np.ones(starts.shape, dtype=bool), np.zeros(starts.shape, dtype=bool)
        at = np.minimum(np.searchsorted(colons, starts), colons.size - 1)
        colon = colons[at]
        has_colon = (colon >= starts) & (colon < ends)
        name_len = np.where(has_colon, colon - starts, 0)
        bad_name = ~has_colon | (name_len != _SLOT_NAME_LENGTHS[None, :])
        for length, cols, expected in _SLOT_NAME_GROUPS:  # compare bytes, columns grouped by name length
            at = np.minimum(starts[:, cols, None] + np.arange(length), buf.size - 1)
            bad_name[:, cols] |= (buf[at] != expected[None, :, :]).any(axis=2)
        value_start = np.where(has_colon, colon + 1, ends)
        empty_value = (value_start >= ends) & ~bad_name
        return value_start, bad_name, empty_value

    def _reason(self, code, detail, line_idx):
        if code == 1:
            found = detail["count"][line_idx]
            name = {"criteo_tsv": "tab", "criteo_csv": "comma", "slot": "space"}[self.fmt]
            return f"expected {NUM_FIELDS} {name}-separated fields, found {found}"
        if code in (4, 6):  # name the offending field and its text
            row = int(np.searchsorted(detail["good"], line_idx))
            texts = [
                detail["buf"][s:s + n].tobytes().decode("utf-8", "replace")
                for s, n in zip(detail["starts"][row], detail["lengths"][row])
            ]
            if code == 4:
                return f"{_REASONS[4]}, got {texts[0]!r}"
            for j, text in enumerate(texts[1:14]):
                if text and not _is_finite_number(text):
                    column = f"I{j + 1}" if self.fmt != "slot" else f"dense_feature #{j + 1}"
                    return f"{column} = {text!r}: {_REASONS[6]}"
        return _REASONS[code]


def _is_finite_number(text):
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


_REASONS = {
    2: "blank line",
    3: "slot names must be click, dense_feature x13, 1..26 in that order (token without 'name:' or wrong name)",
    4: "label must be 0 or 1",
    5: f"a dense value is longer than {_MAX_NUMBER_CHARS} characters",
    6: "not a finite number",
    7: "empty value in a slot-format token",
}


def _set_reason(reasons, good, mask, code):
    """Mark lines ``good[mask]`` with ``code`` unless they already have an earlier reason."""
    idx = good[mask]
    reasons[idx[reasons[idx] == 0]] = code


# ---------------------------------------------------------------------------------------- readers
class CtrFileReader:
    """Stream a CTR file (optionally .gz) as :class:`CtrBatch` blocks, vectorised per block.

    >>> reader = CtrFileReader("train.txt")            # format detected from the first line
    >>> for batch in reader.batches(4096): ...
    >>> reader.num_rows, reader.num_skipped
    """

    def __init__(self, path, fmt="auto", skip_malformed=False, hash_seed=0, dense_transform="log1p",
                 block_bytes=8 << 20):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"CTR data file not found: {self.path}")
        with _open_binary(self.path) as handle:
            first_line = handle.readline()
        if not first_line:
            raise _empty_file(self.path)
        self.fmt = detect_format(self.path, first_line) if fmt == "auto" else fmt
        self.parser = _BlockParser(self.fmt, hash_seed, dense_transform)
        self.skip_malformed = skip_malformed
        self.block_bytes = int(block_bytes)
        self.num_rows = 0
        self.num_skipped = 0
        self.skipped_examples = []  # "file:line: reason" of the first skipped lines

    def __iter__(self):
        self.num_rows = self.num_skipped = 0
        self.skipped_examples = []
        with _open_binary(self.path) as handle:
            lines_before = 0
            if self.fmt == "criteo_csv":
                header = handle.readline()
                lines_before = 1
                if header.decode("utf-8", "replace").rstrip("\r\n") != CSV_HEADER:
                    raise CtrDataError(
                        f"{self.path}:1: expected the CSV header '{CSV_HEADER}', got "
                        f"{header[:120]!r}; raw Criteo without header is tab-separated (fmt='criteo_tsv')"
                    )
            for block in _read_blocks(handle, self.block_bytes):
                batch, bad_idx, messages = self.parser.parse(block)
                if bad_idx.size:
                    self._handle_bad(lines_before, bad_idx, messages)
                lines_before += int(np.count_nonzero(block == 10))
                self.num_rows += len(batch)
                if len(batch):
                    yield batch
        if self.num_skipped:
            log.warning("%s: skipped %d malformed line(s), e.g. %s", self.path, self.num_skipped,
                        self.skipped_examples[0])
        if self.num_rows == 0:
            raise _no_examples(self.path, self.num_skipped, self.skipped_examples, self.fmt)

    def _handle_bad(self, lines_before, bad_idx, messages):
        where = [f"{self.path}:{lines_before + i + 1}: {m}" for i, m in zip(bad_idx, messages)]
        if not self.skip_malformed:
            raise CtrDataError(
                f"{where[0]} (format {self.fmt}). Fix or remove the line, or set skip_malformed=True "
                f"(DataLoader.skip_malformed) to count and skip malformed lines."
            )
        self.num_skipped += int(bad_idx.size)
        self.skipped_examples.extend(where[: _KEEP_EXAMPLES - len(self.skipped_examples)])

    def batches(self, batch_size, drop_last=False):
        """Fixed-size batches (the last one smaller unless ``drop_last``)."""
        pending, have = [], 0
        for block in self:
            pending.append(block)
            have += len(block)
            if have >= batch_size:
                merged = concat_batches(pending)
                cut = (have // batch_size) * batch_size
                for i in range(0, cut, batch_size):
                    yield CtrBatch(*(a[i:i + batch_size] for a in merged))
                rest = CtrBatch(*(a[cut:] for a in merged))
                pending, have = ([rest], len(rest)) if len(rest) else ([], 0)
        if have and not drop_last:
            yield concat_batches(pending)

    def read_all(self):
        return concat_batches(self)


class CtrFilesReader:
    """Several CTR files in order, as one stream of per-file fixed-size batches, with the
    malformed lines skipped per file (``skip_malformed=True``) counted for the trainer's metrics.

    >>> stream = CtrFilesReader(files, skip_malformed=True)
    >>> for batch in stream.batches(512): ...
    >>> stream.num_skipped, stream.skipped_per_file      # {path: lines skipped}, files read so far
    """

    def __init__(self, paths, fmt="auto", skip_malformed=False, hash_seed=0, dense_transform="log1p"):
        self.paths = [os.fspath(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
        self.options = dict(fmt=fmt, skip_malformed=skip_malformed, hash_seed=hash_seed,
                            dense_transform=dense_transform)
        self.skipped_per_file = {}
        self.num_rows = 0

    @property
    def num_skipped(self):
        return sum(self.skipped_per_file.values())

    def batches(self, batch_size, drop_last=False):
        for path in self.paths:
            reader = CtrFileReader(path, **self.options)
            before = 0
            try:
                for batch in reader.batches(batch_size, drop_last):
                    self.num_rows += len(batch)
                    self.skipped_per_file[path] = self.skipped_per_file.get(path, 0) + reader.num_skipped - before
                    before = reader.num_skipped
                    yield batch
            finally:
                self.skipped_per_file[path] = self.skipped_per_file.get(path, 0) + reader.num_skipped - before


def _read_blocks(handle, block_bytes):
    """Yield uint8 arrays of complete lines (a missing final newline is added)."""
    carry = b""
    while True:
        chunk = handle.read(block_bytes)
        if not chunk:
            break
        data = carry + chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = data
            continue
        carry = data[cut + 1:]
        yield np.frombuffer(data[:cut + 1], dtype=np.uint8)
    if carry:
        yield np.frombuffer(carry + b"\n", dtype=np.uint8)


def read_ctr(path, fmt="auto", skip_malformed=False, hash_seed=0, dense_transform="log1p"):
    """Read a whole file into one :class:`CtrBatch`; returns (batch, reader) for the counts."""
    reader = CtrFileReader(path, fmt, skip_malformed, hash_seed, dense_transform)
    return reader.read_all(), reader


# ---------------------------------------------------------------------------------------- Fleet feed
# Text output, vectorised. A text *field* is (chars (n, W) uint8, lengths (n,)): row i's text is the
# last lengths[i] bytes of chars[i] (right-aligned, so digits need no per-row shifting). A list of
# fields is glued together without separator. ``assemble_lines`` lays all fields side by side and
# compacts the valid bytes with one boolean index (row-major order = text order).
def constant_field(text, n):
    raw = np.frombuffer(text.encode(), dtype=np.uint8)
    return np.broadcast_to(raw, (n, raw.size)), np.full(n, raw.size, dtype=np.int64)


def decimal_field(values, missing=None):
    """Decimal text of non-negative integers (uint64/int64); ``missing`` rows become empty."""
    values = np.asarray(values).astype(np.uint64)
    n = values.size
    digits = np.ones(n, dtype=np.int64)
    for exponent in range(1, 20):  # count digits without float log10 (exact for all uint64)
        more = values >= np.uint64(10 ** exponent)
        if not more.any():
            break
        digits += more
    width = int(digits.max()) if n else 1
    chars = np.empty((n, width), dtype=np.uint8)
    rest = values.copy()
    ten = np.uint64(10)
    for col in range(width - 1, -1, -1):
        chars[:, col] = (rest % ten).astype(np.uint8) + 48
        rest //= ten
    if missing is not None:
        digits = np.where(missing, 0, digits)
    return chars, digits


def fixed_field(values, decimals=6):
    """Fixed-point text (``-12.345678``) of finite floats, as a glued list of fields."""
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    scaled = np.rint(np.abs(values) * 10.0 ** decimals).astype(np.uint64)
    scale = np.uint64(10 ** decimals)
    frac_chars, _ = decimal_field(scaled % scale + scale)  # leading '1' keeps the zeros
    negative = (values < 0) & (scaled > 0)
    sign = (np.full((n, 1), ord("-"), dtype=np.uint8), negative.astype(np.int64))
    return [sign, decimal_field(scaled // scale), constant_field(".", n),
            (frac_chars, np.full(n, decimals, dtype=np.int64))]


def _flatten_fields(fields, sep_code, out):
    """Append (chars, valid mask) blocks for ``fields`` to ``out``; lists are glued."""
    for i, field in enumerate(fields):
        if isinstance(field, list):
            _flatten_fields(field, None, out)
        else:
            chars, lengths = field
            width = chars.shape[1]
            out.append((chars, np.arange(width)[None, :] >= (width - lengths)[:, None]))
        if sep_code is not None and i < len(fields) - 1:
            out.append(("sep", None))


def assemble_lines(fields, sep):
    """Bytes of lines made of ``fields`` joined by the byte ``sep`` (a list entry is glued text)."""
    blocks = []
    _flatten_fields(fields, sep, blocks)
    n = next(b[0].shape[0] for b in blocks if not isinstance(b[0], str))
    blocks.append(("newline", None))
    chars, masks = [], []
    for block, mask in blocks:
        if isinstance(block, str):
            chars.append(np.full((n, 1), sep if block == "sep" else 10, dtype=np.uint8))
            masks.append(np.ones((n, 1), dtype=bool))
        else:
            chars.append(block)
            masks.append(mask)
    return np.concatenate(chars, axis=1)[np.concatenate(masks, axis=1)].tobytes()


def format_multislot(batch):
    """MultiSlot text lines (``1 label 13 d1..d13 1 key1 .. 1 key26``) for a batch, as bytes."""
    n = len(batch)
    if n == 0:
        return b""
    one = constant_field("1", n)
    fields = [one, decimal_field(batch.labels), constant_field(str(NUM_DENSE), n)]
    fields += [fixed_field(batch.dense[:, j], decimals=8) for j in range(NUM_DENSE)]
    for j in range(NUM_SPARSE):
        fields += [one, decimal_field(batch.sparse[:, j])]
    return assemble_lines(fields, ord(" "))


_GENERATOR_CLASS = None


def _generator_class():
    """Build the ``MultiSlotDataGenerator`` subclass on first use (reading data must not need paddle)."""
    global _GENERATOR_CLASS
    if _GENERATOR_CLASS is not None:
        return _GENERATOR_CLASS
    import paddle_suite  # noqa: F401  (MKL flag before paddle)
    from paddle.distributed import fleet

    class CtrSlotDataGenerator(fleet.MultiSlotDataGenerator):
        """Feeds Fleet's InMemoryDataset from Criteo TSV/CSV or slot text (slot order USE_VAR_SLOTS).

        ``generate_sample`` follows Paddle's per-line contract; ``run_from_stdin`` (what the
        dataset's pipe command runs) parses whole blocks vectorised and writes the same text.
        """

        def __init__(self, fmt="auto", hash_seed=0, dense_transform="log1p", skip_malformed=False, source=None):
            super().__init__()
            self.fmt, self.hash_seed, self.dense_transform = fmt, hash_seed, dense_transform
            self.skip_malformed = skip_malformed
            self.source = source or "<stdin>"  # the file name in error messages
            self.parser = None
            self.skipped = 0
            self.skipped_examples = []
            self.rows = 0
            self.line_no = 0

        def _parser_for(self, first_line):
            if self.parser is None:
                self.fmt = detect_format(self.source, first_line) if self.fmt == "auto" else self.fmt
                self.parser = _BlockParser(self.fmt, self.hash_seed, self.dense_transform)
            return self.parser

        def _check(self, bad_idx, messages, lines_before):
            if bad_idx.size:
                where = f"{self.source}:{lines_before + bad_idx[0] + 1}: {messages[0]}"
                if not self.skip_malformed:
                    raise CtrDataError(f"{where} (format {self.fmt}). Fix or remove the line, or set "
                                       "DataLoader.skip_malformed=true to count and skip malformed lines.")
                self.skipped += int(bad_idx.size)
                if not self.skipped_examples:
                    self.skipped_examples.append(where)

        def generate_sample(self, line):
            def sample_iter():
                self.line_no += 1
                raw = line.encode() if isinstance(line, str) else line
                parser = self._parser_for(raw)
                if self.fmt == "criteo_csv" and raw.startswith(b"label,"):
                    return
                body = raw if raw.endswith(b"\n") else raw + b"\n"
                batch, bad_idx, messages = parser.parse(np.frombuffer(body, dtype=np.uint8))
                self._check(bad_idx, messages, self.line_no - 1)
                if len(batch):
                    yield [("click", [int(batch.labels[0])]),
                           ("dense_feature", [float(v) for v in batch.dense[0]])] + [
                        (f"C{j + 1}", [int(k)]) for j, k in enumerate(batch.sparse[0])]

            return sample_iter

        def run_from_stdin(self):
            """Parse stdin block by block and write MultiSlot text; raise :class:`CtrDataError`
            on a malformed line (unless skipping), an empty input or one without examples."""
            stream = sys.stdin.buffer
            first = stream.readline()
            if not first:
                raise _empty_file(self.source)
            parser = self._parser_for(first)
            lines_before = 0
            if self.fmt == "criteo_csv":
                lines_before = 1
                if first.decode("utf-8", "replace").rstrip("\r\n") != CSV_HEADER:
                    raise CtrDataError(f"{self.source}:1: expected the CSV header '{CSV_HEADER}', got {first[:120]!r}")
                first = b""
            out = sys.stdout.buffer
            for block in _read_blocks(_Prepend(first, stream), 4 << 20):
                batch, bad_idx, messages = parser.parse(block)
                self._check(bad_idx, messages, lines_before)
                lines_before += int(np.count_nonzero(block == 10))
                self.rows += len(batch)
                out.write(format_multislot(batch))
            out.flush()
            if self.skipped:
                sys.stderr.write(f"{self.source}: skipped {self.skipped} malformed line(s), "
                                 f"e.g. {self.skipped_examples[0]}\n")
            if self.rows == 0:
                raise _no_examples(self.source, self.skipped, self.skipped_examples, self.fmt)

    _GENERATOR_CLASS = CtrSlotDataGenerator
    return CtrSlotDataGenerator


def make_data_generator(fmt="auto", hash_seed=0, dense_transform="log1p", skip_malformed=False, source=None):
    """A :class:`CtrSlotDataGenerator` (``fleet.MultiSlotDataGenerator`` subclass) instance."""
    return _generator_class()(fmt, hash_seed, dense_transform, skip_malformed, source)


_PADDLE_PIPE_INPUT = re.compile(r'\) < "([^"]+)"')


def stdin_source():
    """The file the pipe command reads, as Paddle's dataset runs it (see the module docstring)."""
    try:
        target = os.readlink("/proc/self/fd/0")
        if os.path.isfile(target):
            return target
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as handle:
            parent = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:  # not Linux, or no /proc
        return "<stdin>"
    found = _PADDLE_PIPE_INPUT.search(parent)
    return found.group(1) if found else "<stdin>"


def _write_pipe_status(status_dir, record):
    import json

    from paddle_suite.io import atomic_write

    os.makedirs(status_dir, exist_ok=True)
    with atomic_write(os.path.join(status_dir, f"pipe-{os.getpid()}.json"), "w") as handle:
        json.dump(record, handle)


def collect_pipe_status(status_dir, files=(), remove=True):
    """Read the records the pipe command wrote with ``--status-dir`` (one per file it ran on).

    Raises :class:`CtrDataError` with the first failed file's message, or naming a file of
    ``files`` with no record (its pipe died before reporting: see the worker log). Returns
    ``{"rows": n, "skipped": k, "skipped_per_file": {source: k}}``; ``remove`` deletes the
    records, so the directory can be reused for the next pass.
    """
    import glob
    import json

    paths = sorted(glob.glob(os.path.join(status_dir, "pipe-*.json")))
    records = []
    for path in paths:
        with open(path) as handle:
            records.append(json.load(handle))
    if remove:
        for path in paths:
            os.remove(path)
    errors = [r["error"] for r in records if r.get("error")]
    if errors:
        raise CtrDataError(errors[0] + (f" ({len(errors) - 1} more file(s) failed)" if len(errors) > 1 else ""))
    reported = {os.path.realpath(r["source"]) for r in records}
    missing = [f for f in files if os.path.realpath(f) not in reported]
    if missing:
        raise CtrDataError(f"{missing[0]}: the dataset pipe command wrote no status for this file (it died before "
                           "reading it through): see the worker's stderr")
    return {"rows": sum(r["rows"] for r in records), "skipped": sum(r["skipped"] for r in records),
            "skipped_per_file": {r["source"]: r["skipped"] for r in records}}


def run_pipe(args):
    """``--pipe``: stdin -> MultiSlot text; on bad data one ``error:`` line on stderr and exit 1."""
    source = args.source or stdin_source()
    generator = make_data_generator(args.fmt, args.hash_seed, args.dense_transform, args.skip_malformed, source)
    record = {"source": source, "rows": 0, "skipped": 0, "error": None}
    try:
        generator.run_from_stdin()
    except CtrDataError as err:
        record["error"] = str(err)
        sys.stderr.write(f"error: {err}\n")
    record.update(rows=generator.rows, skipped=generator.skipped)
    if args.status_dir:
        _write_pipe_status(args.status_dir, record)
    if record["error"]:
        sys.exit(1)


def __getattr__(name):  # ``data.CtrSlotDataGenerator`` without importing paddle for plain reading
    if name == "CtrSlotDataGenerator":
        return _generator_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Prepend:
    """A binary stream whose ``read`` returns ``head`` before the rest of ``stream``."""

    def __init__(self, head, stream):
        self.head, self.stream = head, stream

    def read(self, size):
        head, self.head = self.head, b""
        return head + self.stream.read(max(size - len(head), 1))


def check_files(paths, fmt="auto", skip_malformed=False, hash_seed=0):
    """Read whole files; print rows, skipped lines, click rate and reader throughput (rows/s)."""
    import time

    for path in paths:
        reader = CtrFileReader(path, fmt, skip_malformed, hash_seed)
        started, clicks = time.perf_counter(), 0
        for batch in reader:
            clicks += int(batch.labels.sum())
        seconds = time.perf_counter() - started
        print(f"{path}: format {reader.fmt}, {reader.num_rows:,} rows, {reader.num_skipped:,} skipped, "
              f"ctr {clicks / max(reader.num_rows, 1):.4f}; {seconds:.2f} s = "
              f"{reader.num_rows / max(seconds, 1e-9):,.0f} rows/s")


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description="CTR data tools: --pipe is Fleet's dataset pipe command; "
                                                 "--check FILE.. validates files and measures reader speed")
    parser.add_argument("--pipe", action="store_true", help="stdin (any CTR format) -> MultiSlot text on stdout")
    parser.add_argument("--check", nargs="+", metavar="FILE", help="read files, report counts and rows/s")
    parser.add_argument("--fmt", default="auto", choices=("auto",) + FORMATS)
    parser.add_argument("--hash-seed", type=int, default=0)
    parser.add_argument("--dense-transform", default="log1p", choices=("log1p", "none"))
    parser.add_argument("--skip-malformed", action="store_true")
    parser.add_argument("--source", default=None,
                        help="--pipe: the input's file name for messages (default: found from stdin / the dataset)")
    parser.add_argument("--status-dir", default=None,
                        help="--pipe: write pipe-<pid>.json (source, rows, skipped, error) here for the trainer")
    args = parser.parse_args(argv)
    if args.check:
        try:
            check_files(args.check, args.fmt, args.skip_malformed, args.hash_seed)
        except CtrDataError as err:
            sys.exit(f"error: {err}")
    elif args.pipe:
        run_pipe(args)
    else:
        parser.error("nothing to do: pass --pipe or --check FILE")


if __name__ == "__main__":
    main()
