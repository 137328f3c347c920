"""The HBM / MEM / SSD hierarchical parameter store (Zhao et al. 2020, arXiv:2003.05622).

A *row* is one sparse feature's parameters: ``dim`` embedding values followed by ``state_dim``
optimizer values (e.g. Adagrad accumulators), float32, so optimizer state travels with the row
through every tier. Rows are addressed by uint64 feature keys (``paddle_suite.ads.data``).

Tiers
-----
* **SSD**: every row that was ever committed, in an LMDB database on disk (the ``lmdb`` PyPI
  package: an embedded, memory-mapped, copy-on-write B+tree with ACID transactions; chosen over
  RocksDB because its Python binding installs as a small wheel everywhere, and one LMDB write
  transaction gives the atomic "rows + pass id" commit that crash consistency needs). Keys are
  stored big-endian so LMDB's order is numeric order and the sorted batches we read and write
  walk the tree sequentially. Rows never committed are not stored: they are initialised
  deterministically from ``(seed, key)`` (counter-based hashing + Box-Muller, ``init_std``
  normal embeddings, optimizer state = ``state_init``), so values never depend on placement.
* **MEM**: a bounded in-RAM cache of rows, at most ``mem_cap_mb`` MiB including its index and
  bookkeeping (``mem_bytes_per_row`` bytes a row). Policy: **LFU with exponential aging**:
  each cached row has a score that decays by ``lfu_decay`` per working-set request and gains 1
  each time a working set uses the row; when room is needed, the lowest-scoring rows are
  evicted (one vectorised ``argpartition`` per commit; the rows being committed are never
  victims). Under the power-law key frequencies of ads data this keeps the hot head resident.
  It is a **write-back** cache: committed rows are written to MEM and marked dirty; a dirty
  row reaches the SSD tables when evicted or at a checkpoint.
* **HBM**: the working set of one pass: the sorted distinct keys of the pass and one dense
  float32 array ``rows`` [n, dim + state_dim] (numpy here; the trainer moves it to its device
  and indexes it densely with ``ws.index(keys)``).

Pass workflow: ``ws = store.load_working_set(pass_keys)`` (SSD -> MEM -> HBM), train on
``ws.rows``, ``store.commit_pass(ws, pass_id)``. ``store.prefetch(next_keys)`` loads the next
working set in a background thread while the current pass trains.

Durability and crash consistency
--------------------------------
``commit_pass`` writes, in bounded LMDB transactions (each commits atomically and fsyncs): (1) a
redo-log record of the whole pass (all keys and rows of the working set, as sequential 16 MiB
blobs); (2) the commit point: one small transaction setting ``last_pass``; then it patches the
open working sets and returns. (3) The rest runs in background threads while the next pass
trains: the dirty rows evicted from MEM (committed values of earlier passes) are written to the
SSD table, MEM takes the pass's rows, and the rows that did not fit in MEM go to the SSD table
(until they land, loads read them from an in-flight buffer; whichever call reads MEM first runs
a still pending MEM update itself; the next commit, a checkpoint, ``read_rows`` and ``close``
wait for all of it). Records of a pass above ``last_pass`` are ignored and dropped when
reopening, so a crash before (2) leaves the previous pass, and after ``commit_pass`` returns a
crash loses nothing of the pass: every row of (3) is in a
committed redo record. The redo log is what lets MEM stay write-back: on reopening,
log records are replayed in pass order into the SSD table (a row's value in the SSD table is
always one it had at some commit no later than the last log record containing it, so replaying
in order ends at the latest committed value; replaying twice is harmless). When the log exceeds
``log_cap_mb``, a checkpoint writes all dirty MEM rows to the SSD table and then drops the log.
No transaction holds more than ``_TXN_ROWS`` rows, so LMDB's dirty pages (kept in RAM until a
transaction commits) stay small whatever the pass size.

Prefetch rule: a working set reflects every pass committed before it was loaded
(``ws.base_pass``). Every working set that is loaded and not yet committed is *open*; when a
pass commits, the committed rows of keys that an open working set also holds are copied into
it (its ``base_pass`` advances). So the prefetched set for pass i+1 sees pass i's updates for
overlapping keys, whether the prefetch read before or after the commit. Consequently training
on a working set must start only after the previous pass was committed (the patch overwrites
overlapping rows); ``commit_pass`` refuses a working set whose ``base_pass`` is not
``last_pass``. ``store.discard(ws)`` closes a working set that will not be committed (eval).

Hit rates (``stats()``) are fractions of the distinct keys requested by working-set loads,
counted in this order: ``hbm`` = key was in the previous working set (already on the device in
the paper's design; here it is still read from MEM/SSD and patched), ``mem`` = found in the MEM
cache, ``ssd`` = read from the SSD table, ``new`` = never committed, initialised.

Across Fleet servers and workers
--------------------------------
The key space is sharded by ``shard_of(keys, num_shards)`` (a splitmix64 hash of the key, so
shards are balanced whatever the key structure). Each parameter server owns one shard: its own
MEM cache and SSD database (``HierarchicalStore`` at ``<path>/shard-<i>-of-<S>``). A worker
collects the distinct keys of its next pass, asks each server for its shard's rows, and holds
the assembled working set as its HBM table; at the end of the pass it sends the updated rows
back to the owning servers. ``ShardedStore`` is that protocol in one process (used for tests
and single-machine runs). A pass commits on all shards with a two-phase commit: every shard
first durably logs the pass and then marks it *prepared* (``prepare_pass``), then each applies
it (``finish_pass``, whose commit point also clears the mark). On reopening, a pass that every shard prepared or finished is rolled
forward everywhere, otherwise the prepared records are dropped, so all shards are at the same
pass.

Throughput: ``python -m paddle_suite.ads.store --keys 1e6 --mem-cap-mb 20`` (see ``benchmark``).
"""
import contextlib
import ctypes
import json
import os
import struct
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from paddle_suite.ads.data import splitmix64

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_LOG_CHUNK_BYTES = 16 << 20
_IO_BATCH = 1 << 16  # keys per LMDB getmulti/putmulti call: bounds the per-key Python objects alive at once
_TXN_ROWS = 1 << 14  # rows per write transaction: bounds LMDB's in-memory dirty pages (see _put_rows)
_FORMAT_VERSION = 2  # 2: float32 Box-Muller init (values differ from 1)


def shard_of(keys, num_shards):
    """Owning shard (int64 in [0, num_shards)) of each uint64 key."""
    keys = np.asarray(keys).astype(np.uint64, copy=False)
    return (splitmix64(keys ^ np.uint64(0x5BD1E9955BD1E995)) % np.uint64(num_shards)).astype(np.int64)


def init_rows(keys, dim, state_dim, init_std, seed, state_init=0.0):
    """Deterministic initial rows for ``keys``: N(0, init_std^2) embeddings, constant state.

    Works in chunks of ``_IO_BATCH`` keys, so the float64 temporaries stay small whatever the count."""
    keys = np.asarray(keys, dtype=np.uint64)
    out = np.empty((keys.size, dim + state_dim), dtype=np.float32)
    for start in range(0, keys.size, _IO_BATCH):
        _init_chunk(keys[start:start + _IO_BATCH], dim, init_std, seed, out[start:start + _IO_BATCH])
    out[:, dim:] = state_init
    return out


def _init_chunk(keys, dim, init_std, seed, out):
    # one 64-bit hash per pair of normals: its top and bottom 24 bits are the two uniforms of a
    # Box-Muller draw, in float32 (tails to 5.8 sigma; 3x faster than float64 from two hashes)
    pairs = (dim + 1) // 2
    with np.errstate(over="ignore"):
        base = splitmix64(keys ^ splitmix64(np.uint64(seed) + _GOLDEN))
        h = splitmix64(base[:, None] + np.arange(1, pairs + 1, dtype=np.uint64)[None, :] * _GOLDEN)
    u1 = ((h >> np.uint64(40)).astype(np.float32) + np.float32(1)) * np.float32(2.0 ** -24)  # (0, 1]
    angle = (h & np.uint64(0xFFFFFF)).astype(np.float32) * np.float32(2 * np.pi * 2.0 ** -24)
    radius = np.float32(init_std) * np.sqrt(np.float32(-2) * np.log(u1))
    normals = np.empty((keys.size, 2 * pairs), dtype=np.float32)
    np.multiply(radius, np.cos(angle), out=normals[:, 0::2])
    np.multiply(radius, np.sin(angle), out=normals[:, 1::2])
    out[:, :dim] = normals[:, :dim]


def sorted_unique(values):
    """Sorted distinct values. (``np.unique`` takes ~2 s per million uint64 in numpy 2.4: it hashes
    first; sorting then dropping repeats is ~100x faster.)"""
    values = np.sort(np.asarray(values).ravel())
    if values.size < 2:
        return values
    return values[np.concatenate([[True], values[1:] != values[:-1]])]


def unique_inverse(values):
    """``(distinct, inverse)`` of a 1-D array: sorted distinct values and, for every value, its
    position among them (``distinct[inverse] == values``). Sort-based, like ``sorted_unique``: one
    argsort, no hashing."""
    values = np.asarray(values).ravel()
    if values.size == 0:
        return values.copy(), np.zeros(0, dtype=np.int64)
    order = np.argsort(values)
    ordered = values[order]
    first = np.empty(values.size, dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    inverse = np.empty(values.size, dtype=np.int64)
    inverse[order] = np.cumsum(first) - 1
    return ordered[first], inverse


def _as_keys(keys):
    keys = np.asarray(keys)
    if keys.dtype.kind not in "iu":
        raise TypeError(f"keys must be an integer array (uint64 feature keys), got dtype {keys.dtype}")
    return keys.astype(np.uint64, copy=False).ravel()


class WorkingSet:
    """The HBM tier of one pass: sorted unique ``keys`` and their ``rows`` [n, dim + state_dim]."""

    def __init__(self, keys, rows, dim, base_pass):
        self.keys = keys
        self.rows = rows
        self.dim = dim
        self.base_pass = base_pass  # last committed pass these rows reflect

    def __len__(self):
        return self.keys.size

    @property
    def embeddings(self):
        return self.rows[:, : self.dim]

    @property
    def state(self):
        return self.rows[:, self.dim:]

    def index(self, keys):
        """Positions (int64, same shape as ``keys``) of keys in this working set.

        The queries are ranked among their distinct values (``unique_inverse``); when those are
        exactly this set's keys (a pass indexing its own working set) the rank is the position.
        (``searchsorted`` of millions of random queries is ~8x slower: a cache miss per step.)"""
        query = np.asarray(keys)
        distinct, positions = unique_inverse(query.astype(np.uint64, copy=False).ravel())
        if not np.array_equal(distinct, self.keys):
            pos = np.searchsorted(self.keys, distinct)
            pos_clipped = np.minimum(pos, max(self.keys.size - 1, 0))
            found = (pos < self.keys.size) & (self.keys[pos_clipped] == distinct) if self.keys.size else pos < 0
            if not found.all():
                missing = distinct[~found]
                raise KeyError(f"{missing.size} key(s) are not in this working set, e.g. {int(missing[0])}; "
                               "load the pass's working set from all of the pass's keys")
            positions = pos[positions]
        return positions.reshape(query.shape)


class _MemCache:
    """Fixed-capacity row cache with a sorted key index and LFU-with-aging scores (vectorised)."""

    def __init__(self, capacity, row_dim, decay):
        self.capacity = capacity
        self.decay = decay
        self.keys = np.zeros(capacity, dtype=np.uint64)
        self.rows = np.zeros((capacity, row_dim), dtype=np.float32)
        self.score = np.zeros(capacity, dtype=np.float32)
        self.tick = np.zeros(capacity, dtype=np.int64)
        self.dirty = np.zeros(capacity, dtype=bool)
        self.size = 0
        self.index_keys = np.zeros(0, dtype=np.uint64)  # sorted keys of used slots
        self.index_slot = np.zeros(0, dtype=np.int64)

    @staticmethod
    def bytes_per_row(row_dim):
        # rows + key + score + tick + dirty + index (key + slot)
        return 4 * row_dim + 8 + 4 + 8 + 1 + 8 + 8

    def lookup(self, keys):
        """(slot, hit) for sorted or unsorted uint64 ``keys``."""
        if self.size == 0:
            return np.zeros(keys.size, dtype=np.int64), np.zeros(keys.size, dtype=bool)
        pos = np.searchsorted(self.index_keys, keys)
        pos = np.minimum(pos, self.size - 1)
        hit = self.index_keys[pos] == keys
        return self.index_slot[pos], hit

    def effective_score(self, slots, now):
        return self.score[slots] * np.float32(self.decay) ** (now - self.tick[slots]).astype(np.float32)

    def touch(self, slots, now):
        self.score[slots] = self.effective_score(slots, now) + 1.0
        self.tick[slots] = now

    def plan_room(self, count, protected, now):
        """Slots to place ``count`` new rows: free ones first, then LFU victims (not ``protected``)."""
        free = min(count, self.capacity - self.size)
        free_slots = np.arange(self.size, self.size + free)
        need = min(count - free, self.size - protected.size)
        if need <= 0:
            return free_slots, np.zeros(0, dtype=np.int64)
        score = self.effective_score(np.arange(self.size), now)
        score[protected] = np.inf
        victims = np.argpartition(score, need - 1)[:need] if need < self.size else np.arange(self.size)
        return free_slots, victims[np.isfinite(score[victims])]

    def place(self, slots, keys, rows, take, now, dirty):
        """Put ``rows[take]`` (keys ``keys[take]``) into ``slots`` (free ones or victims), then
        rebuild the sorted index. Copies go in chunks: no temporary of all the placed rows."""
        for start in range(0, slots.size, _IO_BATCH):
            part, src = slots[start:start + _IO_BATCH], take[start:start + _IO_BATCH]
            self.keys[part] = keys[src]
            self.rows[part] = rows[src]
        self.size = max(self.size, int(slots.max()) + 1) if slots.size else self.size
        self.score[slots] = 1.0
        self.tick[slots] = now
        self.dirty[slots] = dirty
        self.index_slot = np.argsort(self.keys[: self.size])  # distinct keys: any sort; every slot below size is used
        self.index_keys = self.keys[self.index_slot]

    def nbytes(self):
        return self.size * self.bytes_per_row(self.rows.shape[1])


class HierarchicalStore:
    """HBM / MEM / SSD parameter rows with pass-level commits (see the module docstring)."""

    def __init__(self, path, dim, state_dim=0, mem_cap_mb=256, init_std=0.01, seed=0, state_init=0.0,
                 lfu_decay=0.5, log_cap_mb=None, map_size_gb=1024, defer_prepared=False):
        import lmdb

        if dim <= 0 or state_dim < 0:
            raise ValueError(f"dim must be > 0 and state_dim >= 0, got dim={dim}, state_dim={state_dim}")
        self.path = os.fspath(path)
        self.dim, self.state_dim = int(dim), int(state_dim)
        self.row_dim = self.dim + self.state_dim
        self.row_bytes = 4 * self.row_dim
        self.init_std, self.seed, self.state_init = float(init_std), int(seed), float(state_init)
        self.mem_cap_mb = float(mem_cap_mb)
        self.mem_bytes_per_row = _MemCache.bytes_per_row(self.row_dim)
        capacity = int(self.mem_cap_mb * 2 ** 20) // self.mem_bytes_per_row
        self.log_cap_bytes = int((log_cap_mb if log_cap_mb is not None else max(self.mem_cap_mb, 64)) * 2 ** 20)
        os.makedirs(self.path, exist_ok=True)
        self.env = lmdb.open(self.path, map_size=int(map_size_gb * 2 ** 30), max_dbs=4, readahead=False,
                             max_readers=64)
        self.rows_db = self.env.open_db(b"rows")
        self.log_db = self.env.open_db(b"log")
        self.meta_db = self.env.open_db(b"meta")
        self._check_config()
        self.mem = _MemCache(capacity, self.row_dim, lfu_decay)
        return_freed_memory()  # fixes glibc's mmap threshold before the first working set
        self._lock = threading.RLock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-prefetch")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writeback")
        self._writing = []  # futures of the last commit's SSD-table writes (see _finish)
        self._in_flight = None  # (sorted keys, rows, take) being written by it: read before the SSD table
        self._pending_apply = None  # the last commit's MEM update, until someone runs it (see _finish)
        self._failure = None  # an error of a background step: the store refuses further work
        self._open_sets = weakref.WeakSet()
        self._previous_keys = np.zeros(0, dtype=np.uint64)
        self._clock = 0
        self._counts = {"hbm": 0, "mem": 0, "ssd": 0, "new": 0}
        self._counters = {"evictions": 0, "writebacks": 0, "checkpoints": 0, "load_s": 0.0, "commit_s": 0.0,
                          "write_s": 0.0, "loads": 0, "commits": 0}
        self.prepared_pass = None
        self.last_pass = self._read_meta(b"last_pass", -1)
        self._log_bytes = self._recover(defer_prepared)
        with self.env.begin(db=self.rows_db) as txn:
            self._ssd_has_rows = txn.stat(self.rows_db)["entries"] > 0  # else loads skip the SSD reads

    # ------------------------------------------------------------------ opening / recovery
    def _config(self):
        return {"dim": self.dim, "state_dim": self.state_dim, "init_std": self.init_std, "seed": self.seed,
                "state_init": self.state_init, "format_version": _FORMAT_VERSION}

    def _check_config(self):
        with self.env.begin(write=True, db=self.meta_db) as txn:
            stored = txn.get(b"config")
            if stored is None:
                txn.put(b"config", json.dumps(self._config()).encode())
                return
        stored = json.loads(stored)
        if stored != self._config():
            self.env.close()
            self.env = None
            diff = {k: (stored.get(k), v) for k, v in self._config().items() if stored.get(k) != v}
            raise ValueError(f"store at {self.path} was created with different settings (stored, requested): "
                             f"{diff}; open it with the stored settings or use a new path")

    def _read_meta(self, name, default):
        with self.env.begin(db=self.meta_db) as txn:
            value = txn.get(name)
        return default if value is None else json.loads(value)

    def _log_index(self):
        """[(pass_id, raw record key)] of the redo log in (pass, chunk) order."""
        with self.env.begin(db=self.log_db) as txn:
            return [(struct.unpack(">qI", k)[0], k) for k in txn.cursor().iternext(keys=True, values=False)]

    def _read_record(self, raw_key):
        with self.env.begin(db=self.log_db) as txn:
            blob = txn.get(raw_key)
        count = len(blob) // (8 + self.row_bytes)
        keys = np.frombuffer(blob, dtype="<u8", count=count).astype(np.uint64)
        rows = np.frombuffer(blob, dtype="<f4", offset=8 * count).reshape(count, self.row_dim)
        return keys, rows

    def _delete_records(self, raw_keys, meta=None):
        """Delete log records (and set ``meta`` {name: value or None}) in one small transaction."""
        with self.env.begin(write=True) as txn:
            for raw_key in raw_keys:
                txn.delete(raw_key, db=self.log_db)
            for name, value in (meta or {}).items():
                if value is None:
                    txn.delete(name, db=self.meta_db)
                else:
                    txn.put(name, json.dumps(value).encode(), db=self.meta_db)

    def _recover(self, defer_prepared):
        """Replay committed log records into the SSD table, one record per transaction (replaying is
        idempotent, so a crash here just replays again); keep a completely prepared pass if
        ``defer_prepared``, drop partial or undecided records."""
        index = self._log_index()
        marker = self._read_meta(b"prepared", None)
        for pass_id, raw_key in index:
            if pass_id <= self.last_pass:
                self._put_rows(*self._read_record(raw_key))
        keep = marker if (defer_prepared and marker is not None and marker > self.last_pass) else None
        self._delete_records([k for p, k in index if p != keep], meta={b"prepared": keep})
        if keep is None:
            return 0
        self.prepared_pass = keep
        return sum(self._read_record(k)[0].size for p, k in index if p == keep) * (8 + self.row_bytes)

    def resolve_prepared(self, commit):
        """Roll a prepared (logged, not finished) pass forward (``commit=True``) or drop it."""
        with self._lock:
            self._settle()
            if self.prepared_pass is None:
                return
            records = [k for p, k in self._log_index() if p == self.prepared_pass]
            if commit:
                for raw_key in records:
                    self._put_rows(*self._read_record(raw_key))
            self._delete_records(records, meta={b"prepared": None, **(
                {b"last_pass": self.prepared_pass} if commit else {})})
            if commit:
                self.last_pass = self.prepared_pass
            self.prepared_pass = None
            self._log_bytes = 0

    # ------------------------------------------------------------------ SSD access
    def _put_rows(self, keys, rows, take=None):
        """Write ``rows[take]`` under ``keys[take]`` (all when ``take`` is None) to the SSD table, in
        transactions of ``_TXN_ROWS`` rows. Sorted keys spread over a large table touch about one
        4 KiB leaf page each, and LMDB keeps a transaction's dirty pages in RAM until it commits,
        so this bounds that memory (~64 MiB; these writes run beside training). ``take`` avoids
        copying the rows to write.

        Only values that are already durable (committed, or in the redo log) are written here, so
        a crash between these transactions leaves a state that recovery completes."""
        take = np.arange(keys.size) if take is None else np.asarray(take, dtype=np.int64)
        if take.size == 0:
            return
        self._ssd_has_rows = True
        order = take[np.argsort(keys[take], kind="stable")]
        for txn_start in range(0, order.size, _TXN_ROWS):
            with self.env.begin(write=True, db=self.rows_db) as txn:
                cursor = txn.cursor()
                for start in range(txn_start, min(txn_start + _TXN_ROWS, order.size), _IO_BATCH):
                    part = order[start:min(start + _IO_BATCH, txn_start + _TXN_ROWS, order.size)]
                    key_bytes = keys[part].astype(">u8").view("V8").tolist()
                    row_bytes = np.ascontiguousarray(rows[part], dtype="<f4").view(f"V{self.row_bytes}").ravel()
                    cursor.putmulti(zip(key_bytes, row_bytes.tolist()))

    def _get_rows(self, keys, rows, positions):
        """Read the SSD rows of sorted unique ``keys`` into ``rows[positions]``; returns the found mask.
        Batches of ``_IO_BATCH`` keys go straight into ``rows``: no copy of all the found rows."""
        found = np.zeros(keys.size, dtype=bool)
        with self.env.begin(db=self.rows_db) as txn:
            cursor = txn.cursor()
            for start in range(0, keys.size, _IO_BATCH):
                pairs = cursor.getmulti(keys[start:start + _IO_BATCH].astype(">u8").view("V8").tolist())
                if not pairs:
                    continue
                got_keys = np.frombuffer(b"".join(k for k, _ in pairs), dtype=">u8").astype(np.uint64)
                at = np.searchsorted(keys, got_keys)
                found[at] = True
                rows[positions[at]] = np.frombuffer(b"".join(v for _, v in pairs), dtype="<f4").reshape(-1, self.row_dim)
        return found

    def _read_in_flight(self, keys, rows, positions):
        """Rows of sorted ``keys`` that the last commit is still writing to the SSD table (the rows
        that did not fit in MEM) into ``rows[positions]``; the found mask."""
        found = np.zeros(keys.size, dtype=bool)
        in_flight = self._in_flight  # (one read: the writer thread clears it when done)
        if in_flight is None or not in_flight[0].size:
            return found
        flight_keys, flight_rows, take = in_flight
        at = np.minimum(np.searchsorted(flight_keys, keys), flight_keys.size - 1)
        hit = np.flatnonzero(flight_keys[at] == keys)
        rows[positions[hit]] = flight_rows[take[at[hit]]]
        found[hit] = True
        return found

    def _run_pending_apply(self):
        """Run the last commit's MEM update now if no background thread has yet (callers hold
        ``_lock``): whoever reads MEM first does it, so no read sees MEM without the commit."""
        if self._failure is not None:
            raise RuntimeError(f"a background step of the store at {self.path} failed; reopen the store "
                               "(recovery replays the committed redo log)") from self._failure
        apply, self._pending_apply = self._pending_apply, None
        if apply is not None:
            try:
                apply()
            except BaseException as exc:
                self._failure = exc
                raise

    def _background_apply(self):
        with self._lock:
            if self.env is not None:
                self._run_pending_apply()

    @contextlib.contextmanager
    def _timed(self, counter):
        """Add the block's wall time to ``stats()[counter]``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self._counters[counter] += time.perf_counter() - started

    def _settle(self):
        """Apply the last commit to MEM and wait for its SSD-table writes (callers hold ``_lock``);
        re-raises their error."""
        self._run_pending_apply()
        writing, self._writing = self._writing, []
        try:
            for future in writing:
                future.result()
        except BaseException as exc:
            self._failure = exc
            raise
        self._in_flight = None

    def _append_log(self, pass_id, keys, rows):
        """Write the pass's redo records, one transaction per chunk. They take effect only when a
        later transaction sets ``last_pass`` (or the ``prepared`` marker) to ``pass_id``."""
        per_chunk = max(1, _LOG_CHUNK_BYTES // (8 + self.row_bytes))
        for chunk, start in enumerate(range(0, max(keys.size, 1), per_chunk)):
            part_keys = keys[start:start + per_chunk].astype("<u8")
            part_rows = np.ascontiguousarray(rows[start:start + per_chunk], dtype="<f4")
            with self.env.begin(write=True, db=self.log_db) as txn:
                txn.put(struct.pack(">qI", pass_id, chunk), part_keys.tobytes() + part_rows.tobytes())
        return keys.size * (8 + self.row_bytes)

    # ------------------------------------------------------------------ working sets
    def load_working_set(self, keys, count=True):
        """SSD -> MEM -> HBM: a :class:`WorkingSet` of the distinct ``keys`` (any order, duplicates ok).
        ``count=False`` leaves hit-rate statistics alone (a shard server's merge of the workers' rows)."""
        unique = sorted_unique(_as_keys(keys))
        with self._lock:
            self._ensure_open()
            self._run_pending_apply()
            started = time.perf_counter()
            self._clock += 1
            rows = np.empty((unique.size, self.row_dim), dtype=np.float32)
            in_previous = np.isin(unique, self._previous_keys, assume_unique=True)
            slots, hit = self.mem.lookup(unique)
            rows[hit] = self.mem.rows[slots[hit]]
            self.mem.touch(slots[hit], self._clock)
            miss = np.flatnonzero(~hit)
            found = self._read_in_flight(unique[miss], rows, miss)
            if self._ssd_has_rows:
                found[~found] = self._get_rows(unique[miss[~found]], rows, miss[~found])
            fresh = miss[~found]
            for start in range(0, fresh.size, _IO_BATCH):  # chunks: no working-set-sized temporaries
                part = fresh[start:start + _IO_BATCH]
                rows[part] = init_rows(unique[part], self.dim, self.state_dim, self.init_std, self.seed,
                                       self.state_init)
            if not count:
                return self._open(unique, rows, started)
            self._counts["hbm"] += int(in_previous.sum())
            self._counts["mem"] += int((hit & ~in_previous).sum())
            ssd = np.zeros(unique.size, dtype=bool)
            ssd[miss[found]] = True
            self._counts["ssd"] += int((ssd & ~in_previous).sum())
            new = np.zeros(unique.size, dtype=bool)
            new[fresh] = True
            self._counts["new"] += int((new & ~in_previous).sum())
            self._previous_keys = unique
            return self._open(unique, rows, started)

    def _open(self, unique, rows, started):
        ws = WorkingSet(unique, rows, self.dim, self.last_pass)
        self._open_sets.add(ws)
        self._counters["load_s"] += time.perf_counter() - started
        self._counters["loads"] += 1
        return ws

    def prefetch(self, keys):
        """Load a working set in a background thread; ``.result()`` gives the :class:`WorkingSet`."""
        keys = _as_keys(keys).copy()
        return self._executor.submit(self.load_working_set, keys)

    def discard(self, ws):
        """Close a working set that will not be committed (e.g. evaluation)."""
        with self._lock:
            self._open_sets.discard(ws)

    def commit_pass(self, ws, pass_id):
        """Write the pass's updated rows back; durable when this returns.

        Order: the last commit's background work is waited for; redo records of the pass; the
        commit point, one small transaction setting ``last_pass``; the open working sets are
        patched. MEM's update and the SSD-table writes follow in the background (``_finish``).
        Each step is a bounded LMDB transaction, so a pass of any size commits without a huge
        transaction."""
        with self._lock:
            self._check_commit(ws, pass_id)
            with self._timed("commit_s"):
                self._settle()  # one commit's writes in flight at a time; LMDB has one writer anyway
                self._log_bytes += self._append_log(pass_id, ws.keys, ws.rows)
                self._finish(ws, pass_id, {})
        return_freed_memory()

    def prepare_pass(self, ws, pass_id):
        """Phase 1 of a multi-shard commit: durably log the pass and mark it prepared, unapplied."""
        with self._lock:
            self._check_commit(ws, pass_id)
            if self.prepared_pass is not None:
                raise RuntimeError(f"pass {self.prepared_pass} is already prepared in {self.path}")
            self._settle()
            self._log_bytes += self._append_log(pass_id, ws.keys, ws.rows)
            self._delete_records([], meta={b"prepared": pass_id})
            self.prepared_pass = pass_id

    def finish_pass(self, ws, pass_id):
        """Phase 2 of a multi-shard commit: apply the prepared pass (MEM, evictions, last_pass)."""
        with self._lock:
            if self.prepared_pass != pass_id:
                raise RuntimeError(f"pass {pass_id} was not prepared in {self.path} (prepared: {self.prepared_pass})")
            with self._timed("commit_s"):
                self._settle()
                self._finish(ws, pass_id, {b"prepared": None})
        return_freed_memory()

    def _finish(self, ws, pass_id, meta):
        """The commit point, then the rest in the background while the next pass trains.

        After the commit point only the open working sets are patched here. The MEM update
        (``_apply_commit``) runs in the prefetch thread, or in whichever call reads MEM first
        (``_run_pending_apply``): it writes the dirty MEM victims (committed values of earlier
        passes) to the SSD table, updates MEM, and queues the rows that did not fit in MEM on the
        writer thread. Every one of those rows is in a committed redo record, so they may land
        after the commit point (a crash before they land replays the log); until they land, loads
        read them from ``_in_flight``. When they are most of the working set its rows are used
        without a copy: they must not change after the commit."""
        self._delete_records([], meta={**meta, b"last_pass": pass_id})  # the commit point
        if b"prepared" in meta:
            self.prepared_pass = None
        self.last_pass = pass_id
        self._open_sets.discard(ws)
        patch_open_sets(self._open_sets, ws, pass_id)
        self._pending_apply = lambda: self._apply_commit(ws)
        self._executor.submit(self._background_apply)

    def _apply_commit(self, ws):
        plan = self._plan_finish(ws)
        # dirty victims go to the SSD table before MEM reuses their slots (no copy of them)
        with self._timed("write_s"):
            self._put_rows(self.mem.keys, self.mem.rows, plan["writeback"])
        overflow = plan["overflow"]  # ascending positions of sorted keys: sorted
        keys, rows, take = ws.keys, ws.rows, overflow
        if 2 * overflow.size < len(ws):  # a copy of the few, so the working set's memory can go now
            keys, rows, take = ws.keys[overflow], ws.rows[overflow], np.arange(overflow.size)
        self._in_flight = (keys[take], rows, take)
        self._writing.append(self._writer.submit(self._write_overflow, keys, rows, take))
        self._apply_finish(ws, plan)

    def _write_overflow(self, keys, rows, overflow):
        with self._timed("write_s"):
            self._put_rows(keys, rows, overflow)
        self._in_flight = None  # committed: readers find them in the SSD table (and ws.rows may go)

    def _check_commit(self, ws, pass_id):
        self._ensure_open()
        if ws not in self._open_sets:
            raise ValueError("this working set was not loaded from this store, or was already committed/discarded")
        if pass_id <= self.last_pass:
            raise ValueError(f"pass_id {pass_id} must be greater than the last committed pass {self.last_pass}")
        if ws.base_pass != self.last_pass:
            raise ValueError(f"stale working set: it reflects pass {ws.base_pass}, the store is at {self.last_pass}")
        if ws.rows.shape != (ws.keys.size, self.row_dim) or ws.rows.dtype != np.float32:
            raise ValueError(f"working set rows must be float32 [{ws.keys.size}, {self.row_dim}], "
                             f"got {ws.rows.dtype} {ws.rows.shape}")
        if not np.isfinite(ws.rows).all():
            bad = ws.keys[~np.isfinite(ws.rows).all(axis=1)]
            raise FloatingPointError(f"{bad.size} row(s) are not finite (e.g. key {int(bad[0])}); refusing to commit")

    def _plan_finish(self, ws):
        """Decide MEM placement and victims (before MEM or the disk changes)."""
        slots, hit = self.mem.lookup(ws.keys)
        new = np.flatnonzero(~hit)
        free_slots, victims = self.mem.plan_room(new.size, sorted_unique(slots[hit]), self._clock)
        target = np.concatenate([free_slots, victims]).astype(np.int64)
        placed = new[: target.size]
        overflow = new[target.size:]  # more new rows than MEM can hold: straight to SSD
        return {"hit_slots": slots[hit], "hit": np.flatnonzero(hit), "target": target, "placed": placed,
                "overflow": overflow, "victims": victims, "writeback": victims[self.mem.dirty[victims]]}

    def _apply_finish(self, ws, plan):
        """Update MEM with the committed rows; checkpoint when the log is over its cap."""
        mem = self.mem
        mem.rows[plan["hit_slots"]] = ws.rows[plan["hit"]]
        mem.dirty[plan["hit_slots"]] = True
        mem.place(plan["target"], ws.keys, ws.rows, plan["placed"], self._clock, dirty=True)
        self._counters["evictions"] += int(plan["victims"].size)
        self._counters["writebacks"] += int(plan["writeback"].size)
        self._counters["commits"] += 1
        if self._log_bytes > self.log_cap_bytes:
            self.checkpoint(wait=False)

    def checkpoint(self, wait=True):
        """Write every dirty MEM row to the SSD table, then drop the redo log.

        ``wait=False`` (a commit that took the log over ``log_cap_mb``): the writes are queued on
        the writer thread behind the commit's own and run while the next pass trains. The rows are
        written from the MEM arrays without a copy: nothing changes MEM before the next commit,
        which waits for them. Their dirty marks go now; the log goes only after they landed, so a
        crash in between replays it."""
        with self._lock:
            self._ensure_open()
            if wait:
                self._settle()
            if self.prepared_pass is not None:
                return  # the prepared record must survive until the pass is resolved
            dirty = np.flatnonzero(self.mem.dirty[: self.mem.size])
            self.mem.dirty[dirty] = False
            self._log_bytes = 0
            self._counters["checkpoints"] += 1
            self._writing.append(self._writer.submit(self._write_checkpoint, dirty, self.last_pass))
            if wait:
                self._settle()

    def _write_checkpoint(self, dirty, last_pass):
        with self._timed("write_s"):
            self._put_rows(self.mem.keys, self.mem.rows, dirty)
            self._delete_records([k for p, k in self._log_index() if p <= last_pass])

    # ------------------------------------------------------------------ inspection
    def read_rows(self, keys):
        """Current committed rows of ``keys`` (MEM, else SSD, else initial), without side effects."""
        keys = _as_keys(keys)
        unique = sorted_unique(keys)
        with self._lock:
            self._ensure_open()
            self._settle()
            rows = init_rows(unique, self.dim, self.state_dim, self.init_std, self.seed, self.state_init)
            slots, hit = self.mem.lookup(unique)
            rows[hit] = self.mem.rows[slots[hit]]
            miss = np.flatnonzero(~hit)
            self._get_rows(unique[miss], rows, miss)
        return rows[np.searchsorted(unique, keys)]

    def stats(self):
        """Hit rates, tier sizes and timings. Cheap, so it waits for nothing: MEM and SSD-table
        counts may not yet include the last commit's background update (``read_rows`` or
        ``checkpoint`` first to settle)."""
        with self._lock:
            total = max(sum(self._counts.values()), 1)
            with self.env.begin(db=self.rows_db) as txn:
                ssd_rows = txn.stat(self.rows_db)["entries"]
            return {
                "hit_rate": {k: v / total for k, v in self._counts.items()},
                "key_counts": dict(self._counts),
                "mem_rows": self.mem.size, "mem_cap_rows": self.mem.capacity,
                "mem_bytes": self.mem.nbytes(), "mem_cap_bytes": self.mem.capacity * self.mem_bytes_per_row,
                "mem_dirty_rows": int(self.mem.dirty[: self.mem.size].sum()),
                "ssd_rows": ssd_rows, "log_bytes": self._log_bytes, "last_pass": self.last_pass,
                "process": process_memory_mb(), **self._counters,
            }

    def _ensure_open(self):
        if self.env is None:
            raise RuntimeError(f"store at {self.path} is closed")

    def close(self):
        """Wait for prefetches, checkpoint dirty rows, close LMDB. Idempotent."""
        if self.env is None:
            return
        self._executor.shutdown(wait=True)
        with self._lock:
            self._settle()
            if self.prepared_pass is None:
                self.checkpoint()
            self._writer.shutdown(wait=True)
            self.env.close()
            self.env = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def process_memory_mb():
    """This process's resident memory in MiB from /proc (Linux): rss, anonymous part, file-backed
    part (LMDB's memory-mapped pages are file-backed: reclaimable page cache) and peak rss."""
    fields = {"VmRSS": "rss_mb", "RssAnon": "rss_anon_mb", "RssFile": "rss_file_mb", "VmHWM": "peak_rss_mb"}
    out = {}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                name = line.split(":", 1)[0]
                if name in fields:
                    out[fields[name]] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


_LIBC = None  # glibc, loaded on first use (False where it is not there)


def return_freed_memory():
    """Give freed heap memory back to the OS (glibc; a no-op elsewhere).

    A pass allocates and frees several working-set-sized arrays, from two threads (prefetch). glibc
    raises its mmap threshold after such frees (up to 32 MiB), so later large arrays come from the
    heap arenas and their pages stay resident after ``free``: the RSS creeps to several times the
    live data. Fixing the threshold at 1 MiB keeps large arrays in their own mappings (unmapped on
    free), and ``malloc_trim`` releases the arenas' free pages; the store calls this once per pass."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
        except OSError:
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def patch_open_sets(open_sets, committed, pass_id):
    """Copy ``committed``'s rows into every open working set sharing keys; advance their base_pass."""
    for other in list(open_sets):
        if other is committed:
            continue
        if not committed.keys.size or not other.keys.size:
            other.base_pass = pass_id
            continue
        # both key arrays are sorted and distinct: one searchsorted (intersect1d sorts both again)
        at = np.minimum(np.searchsorted(committed.keys, other.keys), committed.keys.size - 1)
        theirs = np.flatnonzero(committed.keys[at] == other.keys)
        other.rows[theirs] = committed.rows[at[theirs]]
        other.base_pass = pass_id


class ShardedWorkingSet(WorkingSet):
    """A working set assembled from per-shard working sets (``parts[i]`` holds shard i's keys)."""

    def __init__(self, keys, rows, dim, base_pass, shard_ids, parts):
        super().__init__(keys, rows, dim, base_pass)
        self.shard_ids = shard_ids
        self.parts = parts

    def sync_parts(self):
        """Copy the (trained) assembled rows back into the per-shard working sets."""
        for i, part in enumerate(self.parts):
            part.rows[:] = self.rows[self.shard_ids == i]


class ShardedStore:
    """``num_shards`` :class:`HierarchicalStore` shards by ``shard_of`` key hash, same API.

    Each shard gets ``mem_cap_mb / num_shards``. Commits are two-phase across shards (see the
    module docstring), so a crash between shards is resolved to one pass when reopening.
    """

    def __init__(self, path, num_shards, dim, state_dim=0, mem_cap_mb=256, **kwargs):
        self.path = os.fspath(path)
        self.num_shards = int(num_shards)
        self.dim = dim
        self.shards = [
            HierarchicalStore(os.path.join(self.path, f"shard-{i}-of-{self.num_shards}"), dim, state_dim,
                              mem_cap_mb=mem_cap_mb / self.num_shards, defer_prepared=True, **kwargs)
            for i in range(self.num_shards)
        ]
        self._resolve_prepared()
        self._lock = threading.RLock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sharded-prefetch")
        self._open_sets = weakref.WeakSet()

    def _resolve_prepared(self):
        """Roll forward a pass every shard prepared or finished; otherwise drop prepared records."""
        candidates = [s.prepared_pass for s in self.shards if s.prepared_pass is not None]
        top = max([s.last_pass for s in self.shards] + candidates)
        forward = all(s.last_pass == top or s.prepared_pass == top for s in self.shards)
        for shard in self.shards:
            shard.resolve_prepared(commit=forward and shard.prepared_pass == top)
        passes = {s.last_pass for s in self.shards}
        if len(passes) != 1:
            raise RuntimeError(f"shards of {self.path} are at different passes {sorted(passes)} and no "
                               "prepared record reconciles them: the store is damaged")

    @property
    def last_pass(self):
        return self.shards[0].last_pass

    def load_working_set(self, keys):
        unique = sorted_unique(_as_keys(keys))
        shard_ids = shard_of(unique, self.num_shards)
        with self._lock:
            parts = [shard.load_working_set(unique[shard_ids == i]) for i, shard in enumerate(self.shards)]
            rows = np.empty((unique.size, self.shards[0].row_dim), dtype=np.float32)
            for i, part in enumerate(parts):
                rows[shard_ids == i] = part.rows
            ws = ShardedWorkingSet(unique, rows, self.dim, self.last_pass, shard_ids, parts)
            self._open_sets.add(ws)
            return ws

    def prefetch(self, keys):
        keys = _as_keys(keys).copy()
        return self._executor.submit(self.load_working_set, keys)

    def discard(self, ws):
        with self._lock:
            self._open_sets.discard(ws)
            for shard, part in zip(self.shards, ws.parts):
                shard.discard(part)

    def commit_pass(self, ws, pass_id):
        with self._lock:
            if ws not in self._open_sets:
                raise ValueError("this working set was not loaded from this store, or was already committed")
            if ws.base_pass != self.last_pass:
                raise ValueError(f"stale working set: it reflects pass {ws.base_pass}, "
                                 f"the store is at {self.last_pass}")
            ws.sync_parts()
            for shard, part in zip(self.shards, ws.parts):
                shard.prepare_pass(part, pass_id)
            for shard, part in zip(self.shards, ws.parts):
                shard.finish_pass(part, pass_id)
            self._open_sets.discard(ws)
            patch_open_sets(self._open_sets, ws, pass_id)

    def read_rows(self, keys):
        keys = _as_keys(keys)
        shard_ids = shard_of(keys, self.num_shards)
        rows = np.empty((keys.size, self.shards[0].row_dim), dtype=np.float32)
        for i, shard in enumerate(self.shards):
            rows[shard_ids == i] = shard.read_rows(keys[shard_ids == i])
        return rows

    def stats(self):
        per_shard = [s.stats() for s in self.shards]
        counts = {k: sum(p["key_counts"][k] for p in per_shard) for k in per_shard[0]["key_counts"]}
        total = max(sum(counts.values()), 1)
        summed = {k: sum(p[k] for p in per_shard) for k in per_shard[0] if isinstance(per_shard[0][k], (int, float))}
        summed.update(hit_rate={k: v / total for k, v in counts.items()}, key_counts=counts,
                      last_pass=self.last_pass, shards=per_shard)
        return summed

    def checkpoint(self):
        for shard in self.shards:
            shard.checkpoint()

    def close(self):
        self._executor.shutdown(wait=True)
        for shard in self.shards:
            shard.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def benchmark(keys=10 ** 6, mem_cap_mb=20.0, dim=8, state_dim=1, passes=3, zipf=1.05, path=None, seed=0):
    """Load/commit throughput: pass 0 creates a ``keys``-row table, then Zipf-drawn passes, then a
    full-table pass (mostly SSD); returns a list of per-pass result dicts (and prints them). A
    commit is timed until its background work is done too (``durable_s``: until it returned)."""
    import shutil
    import tempfile

    root = path or tempfile.mkdtemp(prefix="store-bench-")
    rng = np.random.default_rng(seed)
    universe = rng.integers(0, 2 ** 63, keys, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    draws = [universe] + [universe[np.minimum(rng.zipf(zipf, 2 * keys), keys) - 1] for _ in range(passes)]
    draws.append(universe)
    results = []
    try:
        store = HierarchicalStore(root, dim, state_dim, mem_cap_mb=mem_cap_mb, seed=seed)
        print(f"table {keys:,} rows of {dim}+{state_dim} floats; MEM cap {mem_cap_mb} MiB = "
              f"{store.mem.capacity:,} rows ({store.mem.capacity / keys:.0%} of the table)")
        for pass_id, draw in enumerate(draws):
            started = time.perf_counter()
            ws = store.load_working_set(draw)
            load_s = time.perf_counter() - started
            ws.rows += np.float32(0.01)
            started = time.perf_counter()
            store.commit_pass(ws, pass_id)
            durable_s = time.perf_counter() - started
            with store._lock:
                store._settle()  # and the background MEM update / write-back, so nothing is hidden
            commit_s = time.perf_counter() - started
            row = {"pass": pass_id, "keys": len(ws), "load_keys_per_s": len(ws) / load_s,
                   "commit_keys_per_s": len(ws) / commit_s, "load_s": load_s, "commit_s": commit_s,
                   "durable_s": durable_s}
            results.append(row)
            print(f"pass {pass_id}: {len(ws):>9,} keys  load {row['load_keys_per_s']:>11,.0f} keys/s ({load_s:.2f} s)"
                  f"  commit {row['commit_keys_per_s']:>11,.0f} keys/s ({commit_s:.2f} s, durable after "
                  f"{durable_s:.2f} s)")
        stats = store.stats()
        print("hit rates", {k: round(v, 4) for k, v in stats["hit_rate"].items()},
              f"evictions {stats['evictions']:,} writebacks {stats['writebacks']:,} "
              f"checkpoints {stats['checkpoints']}; process memory {stats['process']}")
        store.close()
    finally:
        if path is None:
            shutil.rmtree(root, ignore_errors=True)
    return results


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description="Benchmark the hierarchical store's load/commit throughput")
    parser.add_argument("--keys", type=lambda v: int(float(v)), default=10 ** 6)
    parser.add_argument("--mem-cap-mb", type=float, default=20.0)
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--state-dim", type=int, default=1)
    parser.add_argument("--passes", type=int, default=3, help="Zipf-drawn passes between the two full passes")
    parser.add_argument("--path", default=None, help="store directory (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    benchmark(args.keys, args.mem_cap_mb, args.dim, args.state_dim, args.passes, path=args.path)


if __name__ == "__main__":
    main()
