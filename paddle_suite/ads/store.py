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
trains: MEM takes the pass's rows, and the dirty rows it evicts (committed values of earlier
passes, copied out) and the rows that did not fit in MEM go to the SSD table on a writer thread
(until they land, loads read them from in-flight buffers; whichever call reads MEM first runs
a still pending MEM update itself; the next commit, a checkpoint, ``read_rows`` and ``close``
wait for all of it). Records of a pass above ``last_pass`` are ignored and dropped when
reopening, so a crash before (2) leaves the previous pass, and after ``commit_pass`` returns a
crash loses nothing of the pass: every row of (3) is in a
committed redo record. The redo log is what lets MEM stay write-back: on reopening,
log records are replayed in pass order into the SSD table (a row's value in the SSD table is
always one it had at some commit no later than the last log record containing it, so replaying
in order ends at the latest committed value; replaying twice is harmless). When a commit takes
the log over ``log_cap_mb``, its oldest passes' records are dropped, just enough of them
(``checkpoint(upto=q)``): first the dirty MEM rows last committed by a pass <= q are written to
the SSD table (MEM records that pass per row, ``dirty_pass``); rows committed again later stay
dirty, their value in the newer records that remain, so a key's latest value is always in the
last remaining record containing it or else in the SSD table. Dropping only the oldest passes
means hot rows, committed again by every pass, are not rewritten at every such commit.
``checkpoint()`` (e.g. at ``close``) drops all records.
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

Feature admission and shrink
----------------------------
Fleet's ``CtrCommonAccessor`` rules, with a pass where Fleet has a day. Off by default
(``admit_threshold=0``, ``shrink_every_passes=0``): then no counter is kept, every key gets a row
and nothing is removed, exactly as without these settings. Otherwise the store *counts*:

* **Counters**, per key, in their own LMDB table (``counts``: show, click, ``seen`` = the last
  pass the key was in, an admitted flag; 17 bytes, kept also for keys without a row). The trainer
  reports a pass's examples with ``ws.count(keys, labels)`` (or ``ws.count_positions``): a key's
  show grows by 1 per example containing it, its click by the example's label. Counters decay by
  ``show_click_decay_rate`` per pass, lazily: a record seen at pass q is worth ``r^(p-q)`` of itself
  at pass p, so no pass rewrites the table. ``unseen passes`` = p - seen. Score (Fleet's
  ``ShowClickScore``): ``nonclk_coeff * (show - click) + click_coeff * click`` (defaults 1, 1: the
  show count; Fleet's defaults are 0.1 and 1).
* **Admission** (Fleet's ``embedx_threshold`` / ``CountFilterEntry``): a key without a stored row
  is *pending* while its score is below ``admit_threshold``. A pending key is in the pass's working
  set (``ws.admitted`` False) with the shared default row: a zero embedding, optimizer state
  ``pending_state`` (default ``state_init``). Its row is never stored: whatever the trainer does
  to it in HBM is dropped at the commit, and it starts every pass from the default row again. So
  in the forward pass it contributes a zero embedding; with the row-wise Adagrad of
  ``hierarchical_train`` (step ``lr * g * sqrt(g0 / (g0 + G))``), ``pending_state=inf`` makes its
  step exactly 0, so it stays zero within the pass too. Its counters are kept. The commit whose
  counts lift its score to the threshold admits it: the stored row is its deterministic initial
  row (the same as an unthrottled key's first row), trained from the next pass on. Decisions are
  per pass: at a load from the counters of the passes committed before, at a commit from them
  plus the pass's counts.
* **Shrink** (Fleet's ``Shrink``), in the commit of every pass p with
  ``(p + 1) % shrink_every_passes == 0``, or of any pass with ``commit_pass(..., shrink=True)``: a
  key whose score, decayed to p, is below ``delete_threshold`` or that is unseen for more than
  ``delete_after_unseen_passes`` passes loses its row (MEM, SSD table) and its counters, so it
  is a new key if it comes back. This scans the whole counts table (as Fleet's shrink walks its
  table): only keys seen since counting was on are candidates.
* **Crash consistency**: the pass's counters and the deleted keys are redo records of the pass
  (kinds in the record key), written with its rows before the commit point, so a crash before it
  drops them with the pass. After the commit point the counters and deletions are applied to the
  tables synchronously (loads read them); a crash in between replays them on reopening
  (replaying sets values and deletes keys, so twice is harmless). A pass's row records and its
  deletions concern disjoint keys, so their order does not matter. Open working sets are patched
  like rows: counters and admissions of the pass, and deleted keys back to a new key's state.
* **Stats**: totals ``admitted_rows``, ``evicted_rows`` (rows removed by shrinks),
  ``dropped_counters`` (pending keys removed), ``shrinks``, ``counter_rows``; and the last
  committed pass's ``pass_admitted``, ``pass_pending`` (its keys still without a row),
  ``pass_evicted``, ``pass_dropped``.

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
import itertools
import json
import os
import struct
import sys
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from paddle_suite.ads.data import splitmix64

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_LOG_CHUNK_BYTES = 16 << 20
_IO_BATCH = 1 << 16  # keys per LMDB getmulti/putmulti call: bounds the per-key Python objects alive at once
_TXN_ROWS = 1 << 13  # rows per write transaction: bounds LMDB's in-memory dirty pages (see _put_rows)
_FORMAT_VERSION = 2  # 2: float32 Box-Muller init (values differ from 1)
# per-key admission counters (the ``counts`` table): decayed show and click as of pass ``seen``
COUNT_DTYPE = np.dtype([("show", "<f4"), ("click", "<f4"), ("seen", "<i8"), ("admitted", "u1")])
# redo-log record kinds, in the top two bits of a record's chunk number
_ROWS_RECORD, _COUNTS_RECORD, _DELETES_RECORD = 0, 1, 2


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


def background_pool(name, nice):
    """A one-thread pool for the store's background work (prefetch, SSD writes, MEM updates), its
    thread ``nice`` steps below the caller's priority (Linux). With as many cores as busy threads,
    training then keeps its core and this work takes the idle time: it only waits when a load or a
    commit is late (pass bench: bench/ctr_speed_history.md)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=_lower_priority,
                              initargs=(check_background_nice(nice),))


def check_background_nice(nice):
    if not 0 <= int(nice) <= 19:
        raise ValueError(f"background_nice must be in [0, 19] (steps below the training thread), got {nice}")
    return int(nice)


def _lower_priority(nice):
    if nice and sys.platform.startswith("linux"):  # elsewhere PRIO_PROCESS would renice a process, not a thread
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))


def sorted_unique(values):
    """Sorted distinct values. (``np.unique`` takes ~2 s per million uint64 in numpy 2.4: it hashes
    first; sorting then dropping repeats is ~100x faster.)"""
    values = np.asarray(values).ravel()
    if values.size < 2:
        return np.sort(values)
    if (values[1:] > values[:-1]).all():  # already sorted and distinct (a pass's keys): no sort
        return values.copy()  # (a new array, as np.sort gives)
    values = np.sort(values)
    return values[np.concatenate([[True], values[1:] != values[:-1]])]


def sorted_member(keys, sorted_keys):
    """``np.isin(keys, sorted_keys)`` for a sorted distinct ``sorted_keys``: one ``searchsorted``
    (``np.isin`` sorts both arrays again: ~75 ms per working set of 620k keys)."""
    if not sorted_keys.size:
        return np.zeros(keys.shape, dtype=bool)
    at = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
    return sorted_keys[at] == keys


def unique_inverse(values, dtype=np.int64):
    """``(distinct, inverse)`` of a 1-D array: sorted distinct values and, for every value, its
    position among them (``distinct[inverse] == values``; ``dtype``: the positions' integer type,
    np.int32 halves the ranks and positions, the ranking's peak beside a pass's training, when
    there are fewer than 2^31 values). Sort-based, like ``sorted_unique``: one
    argsort, no hashing. The stable argsort (numpy: timsort for 64-bit keys) is ~2x cheaper in CPU than the default
    introsort on a pass's keys, which repeat (0.25 vs 0.51 s for 2.6M keys, 620k distinct, of
    ``bench/ctr_speed.py``'s data; equal on 2.6M keys with 1.5M distinct)."""
    values = np.asarray(values).ravel()
    if values.size == 0:
        return values.copy(), np.zeros(0, dtype=dtype)
    if values.size >= np.iinfo(dtype).max:
        raise ValueError(f"{values.size} values do not fit positions of type {np.dtype(dtype).name}")
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    first = np.empty(values.size, dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    distinct = ordered[first]
    del ordered  # before the ranks are built: a pass's ranking runs beside training and a commit
    ranks = np.cumsum(first, dtype=dtype)
    del first
    ranks -= 1
    inverse = np.empty(values.size, dtype=dtype)
    inverse[order] = ranks
    return distinct, inverse


def _record_bytes_per_key(values):
    """Bytes a redo record holds per key: the key, then its values (``values`` [n, ...]: a row, a
    counter record; None for deleted keys)."""
    return 8 + (0 if values is None else values.itemsize * int(np.prod(values.shape[1:])))


def logged_bytes(keys, values):
    """Size of the redo records ``_append_log`` writes for ``keys`` and their ``values``."""
    return keys.size * _record_bytes_per_key(values)


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
        # set only by a store that counts (admission or shrink on; see the module docstring):
        self.admitted = None  # bool [n]: the key has a trainable row (else: the default row)
        self.base_counts = None  # COUNT_DTYPE [n]: the key's counters as of base_pass
        self.pass_show = None  # float32 [n]: this pass's shows and clicks (``count``)
        self.pass_click = None
        self.counted = False

    def __len__(self):
        return self.keys.size

    def _start_counting(self, admitted, base_counts):
        self.admitted = admitted
        self.base_counts = base_counts
        self.pass_show = np.zeros(self.keys.size, dtype=np.float32)
        self.pass_click = np.zeros(self.keys.size, dtype=np.float32)

    def count(self, keys, labels):
        """Count this pass's examples for admission and shrink: ``keys`` [n_examples, slots] (uint64),
        ``labels`` [n_examples] in [0, 1]. See ``count_positions``."""
        if self.pass_show is None:  # the store does not count: skip the indexing
            return
        keys = np.asarray(keys)
        return self.count_positions(self.index(keys.reshape(len(keys), -1)), labels)

    def count_positions(self, positions, labels):
        """Like ``count`` with each key given by its row in this working set (``index(keys)``, or the
        trainer's own ranks when the set holds exactly its pass's keys). A key's show grows by 1 per
        example it appears in (once, whatever its slots), its click by the example's label. May be
        called once per batch or once per pass; a no-op when the store does not count."""
        if self.pass_show is None:
            return
        positions = np.asarray(positions)
        labels = np.asarray(labels, dtype=np.float32).ravel()
        if positions.dtype.kind not in "iu":
            raise TypeError(f"positions must be integer rows of this working set, got dtype {positions.dtype}")
        positions = positions.reshape(labels.size, -1) if positions.size else positions.reshape(labels.size, 0)
        if positions.size and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"positions must be in [0, {len(self)}), got [{positions.min()}, {positions.max()}]")
        if labels.size and not (np.isfinite(labels).all() and labels.min() >= 0 and labels.max() <= 1):
            raise ValueError(f"labels must be click indicators in [0, 1], got [{labels.min()}, {labels.max()}]")
        ordered = np.sort(positions, axis=1)
        first = np.ones(ordered.shape, dtype=bool)  # a key's first position in its example
        np.not_equal(ordered[:, 1:], ordered[:, :-1], out=first[:, 1:])
        rows = ordered[first]
        self.pass_show += np.bincount(rows, minlength=len(self)).astype(np.float32)
        clicks = np.broadcast_to(labels[:, None], ordered.shape)[first]
        self.pass_click += np.bincount(rows, weights=clicks, minlength=len(self)).astype(np.float32)
        self.counted = True

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
        # the pass whose commit last wrote the row, while that value is not in the SSD table (else -1):
        # its only copies are MEM and that pass's redo records (see ``HierarchicalStore.checkpoint``)
        self.dirty_pass = np.full(capacity, -1, dtype=np.int32)
        self.size = 0
        self.index_keys = np.zeros(0, dtype=np.uint64)  # sorted keys of used slots
        self.index_slot = np.zeros(0, dtype=np.int64)

    @staticmethod
    def bytes_per_row(row_dim):
        # rows + key + score + tick + dirty_pass + index (key + slot)
        return 4 * row_dim + 8 + 4 + 8 + 4 + 8 + 8

    def lookup(self, keys):
        """(slot, hit) for sorted or unsorted uint64 ``keys``."""
        if self.size == 0:
            return np.zeros(keys.size, dtype=np.int64), np.zeros(keys.size, dtype=bool)
        pos = np.searchsorted(self.index_keys, keys)
        np.minimum(pos, self.size - 1, out=pos)
        hit = self.index_keys[pos] == keys
        # the slots overwrite the positions (element by element: safe in place; mode="clip" takes
        # no buffer): no second array of the keys' size beside the callers' working sets
        return np.take(self.index_slot, pos, out=pos, mode="clip"), hit

    def effective_score(self, slots, now):
        age = (now - self.tick[slots]).astype(np.float32)
        np.power(np.float32(self.decay), age, out=age)  # in place: the update's temporaries are its peak
        age *= self.score[slots]
        return age

    def touch(self, slots, now):
        self.score[slots] = self.effective_score(slots, now) + 1.0
        self.tick[slots] = now

    def plan_room(self, count, protected, now):
        """Slots to place ``count`` new rows: free ones first, then LFU victims (not ``protected``)."""
        free = min(count, self.capacity - self.size)
        free_slots = np.arange(self.size, self.size + free)
        candidates = np.ones(self.size, dtype=bool)
        candidates[protected] = False
        candidates = np.flatnonzero(candidates)
        need = min(count - free, candidates.size)
        if need <= 0:
            return free_slots, np.zeros(0, dtype=np.int64)
        if need == candidates.size:  # every unprotected row goes: nothing to rank
            return free_slots, candidates
        # ranked among the candidates only: argpartition over the protected rows' infinite scores and
        # many tied ones took ~100 ms per pass of 620k keys (bench/ctr_speed.py)
        score = self.effective_score(candidates, now)
        return free_slots, candidates[np.argpartition(score, need - 1)[:need]]

    def dirty_slots(self, upto=None):
        """Used slots holding rows not yet in the SSD table (those last committed by a pass <= ``upto``)."""
        dirty_pass = self.dirty_pass[: self.size]
        return np.flatnonzero((dirty_pass >= 0) if upto is None else ((dirty_pass >= 0) & (dirty_pass <= upto)))

    def place(self, slots, keys, rows, take, now, dirty_pass):
        """Put ``rows[take]`` (keys ``keys[take]``) into ``slots`` (free ones or victims), then
        rebuild the sorted index. Copies go in chunks: no temporary of all the placed rows."""
        for start in range(0, slots.size, _IO_BATCH):
            part, src = slots[start:start + _IO_BATCH], take[start:start + _IO_BATCH]
            self.keys[part] = keys[src]
            self.rows[part] = rows[src]
        old_size = self.size
        self.size = max(self.size, int(slots.max()) + 1) if slots.size else self.size
        self.score[slots] = 1.0
        self.tick[slots] = now
        self.dirty_pass[slots] = dirty_pass
        self._reindex(old_size, slots, keys[take])

    def _reindex(self, old_size, slots, new_keys):
        """The sorted index after ``slots`` got ``new_keys``: when those are sorted (a commit's keys
        are), the old index without the replaced slots merged with them (searchsorted + insert),
        else a sort of all keys (~35 ms per 600k rows, on a commit's critical path)."""
        if new_keys.size > 1 and not (new_keys[1:] > new_keys[:-1]).all():
            self.index_slot = np.argsort(self.keys[: self.size])  # distinct keys; every slot below size is used
            self.index_keys = self.keys[self.index_slot]
            return
        kept = np.ones(old_size, dtype=bool)
        kept[slots[slots < old_size]] = False
        kept = kept[self.index_slot]
        kept_keys, kept_slots = self.index_keys[kept], self.index_slot[kept]
        del kept
        # the merged index is built in new arrays, so the old one goes first; and not by np.insert,
        # which takes three more index-sized temporaries (argsort, arange, a copy of the positions)
        self.index_keys = self.index_slot = None
        at = np.searchsorted(kept_keys, new_keys)
        at += np.arange(new_keys.size)  # the new keys' positions in the merged index
        from_kept = np.ones(kept_keys.size + new_keys.size, dtype=bool)
        from_kept[at] = False
        self.index_keys = np.empty(from_kept.size, dtype=np.uint64)
        self.index_keys[at] = new_keys
        self.index_keys[from_kept] = kept_keys
        self.index_slot = np.empty(from_kept.size, dtype=np.int64)
        self.index_slot[at] = slots
        self.index_slot[from_kept] = kept_slots

    def remove(self, keys):
        """Drop the cached rows of ``keys`` (a shrink); the last used slots move into the holes, so
        only as many rows are copied as are removed. Returns how many were cached."""
        slots, hit = self.lookup(keys)
        gone = slots[hit]
        if not gone.size:
            return 0
        remaining = self.size - gone.size
        keep = np.ones(self.size, dtype=bool)
        keep[gone] = False
        holes = gone[gone < remaining]
        movers = np.flatnonzero(keep[remaining:]) + remaining
        for column in (self.keys, self.rows, self.score, self.tick, self.dirty_pass):
            column[holes] = column[movers]
        self.size = remaining
        self.index_slot = np.argsort(self.keys[: self.size])
        self.index_keys = self.keys[self.index_slot]
        return int(gone.size)

    def nbytes(self):
        return self.size * self.bytes_per_row(self.rows.shape[1])


class HierarchicalStore:
    """HBM / MEM / SSD parameter rows with pass-level commits (see the module docstring)."""

    def __init__(self, path, dim, state_dim=0, mem_cap_mb=256, init_std=0.01, seed=0, state_init=0.0,
                 lfu_decay=0.5, log_cap_mb=None, map_size_gb=1024, defer_prepared=False, admit_threshold=0.0,
                 nonclk_coeff=1.0, click_coeff=1.0, show_click_decay_rate=0.98, delete_threshold=0.0,
                 delete_after_unseen_passes=None, shrink_every_passes=0, pending_state=None, background_nice=10):
        import lmdb

        if dim <= 0 or state_dim < 0:
            raise ValueError(f"dim must be > 0 and state_dim >= 0, got dim={dim}, state_dim={state_dim}")
        self.background_nice = check_background_nice(background_nice)
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
        # metasync=False: one fsync per transaction, not two (see _delete_records)
        self.env = lmdb.open(self.path, map_size=int(map_size_gb * 2 ** 30), max_dbs=4, readahead=False,
                             max_readers=64, metasync=False)
        self.rows_db = self.env.open_db(b"rows")
        self.log_db = self.env.open_db(b"log")
        self.meta_db = self.env.open_db(b"meta")
        self.counts_db = self.env.open_db(b"counts")
        self._check_config()
        self._set_admission(admit_threshold, nonclk_coeff, click_coeff, show_click_decay_rate, delete_threshold,
                            delete_after_unseen_passes, shrink_every_passes, pending_state)
        self.mem = _MemCache(capacity, self.row_dim, lfu_decay)
        return_freed_memory()  # fixes glibc's mmap threshold before the first working set
        self._lock = threading.RLock()
        self._executor = background_pool("store-prefetch", self.background_nice)
        self._writer = background_pool("store-writeback", self.background_nice)
        self._writing = []  # futures of the last commit's SSD-table writes (see _finish)
        self._in_flight = None  # [(sorted keys, rows, take)] being written by it: read before the SSD table
        self._pending_apply = None  # the last commit's MEM update, until someone runs it (see _finish)
        # the last MEM update found no open working set to write its victims ahead for: the next
        # load does it for its own set (see _write_ahead_victims)
        self._write_ahead_due = False
        self._committing = None  # a wait=False commit's redo records and commit point being written
        self._failure = None  # an error of a background step: the store refuses further work
        self._open_sets = weakref.WeakSet()
        self._previous_keys = np.zeros(0, dtype=np.uint64)
        self._clock = 0
        self._counts = {"hbm": 0, "mem": 0, "ssd": 0, "new": 0}
        self._counters = {"evictions": 0, "writebacks": 0, "written_ahead": 0, "checkpoints": 0, "checkpoint_rows": 0,
                          "load_s": 0.0, "commit_s": 0.0,
                          "write_s": 0.0, "loads": 0, "commits": 0, "shrinks": 0,
                          # admission / shrink: totals, and the last committed pass's ("pass_")
                          "admitted_rows": 0, "evicted_rows": 0, "dropped_counters": 0, "pass_admitted": 0,
                          "pass_pending": 0, "pass_evicted": 0, "pass_dropped": 0}
        self._prepared_plan = None  # (committed working set, admission plan) between prepare and finish
        self.prepared_pass = None
        self.last_pass = self._read_meta(b"last_pass", -1)
        self._log_pass_bytes = self._recover(defer_prepared)  # {pass: bytes of its redo records}
        with self.env.begin(db=self.rows_db) as txn:
            self._ssd_has_rows = txn.stat(self.rows_db)["entries"] > 0  # else loads skip the SSD reads

    def _set_admission(self, admit_threshold, nonclk_coeff, click_coeff, decay, delete_threshold,
                       delete_after_unseen_passes, shrink_every_passes, pending_state):
        settings = {"admit_threshold": admit_threshold, "show_click_decay_rate": decay,
                    "shrink_every_passes": shrink_every_passes, "delete_after_unseen_passes": delete_after_unseen_passes}
        problems = []
        if not admit_threshold >= 0:
            problems.append("admit_threshold must be >= 0 (0 admits every key)")
        if not 0 < decay <= 1:
            problems.append("show_click_decay_rate must be in (0, 1]")
        if int(shrink_every_passes) != shrink_every_passes or shrink_every_passes < 0:
            problems.append("shrink_every_passes must be an integer >= 0 (0: no scheduled shrink)")
        if delete_after_unseen_passes is not None and not delete_after_unseen_passes >= 0:
            problems.append("delete_after_unseen_passes must be >= 0, or None for no unseen rule")
        if shrink_every_passes and delete_threshold <= 0 and delete_after_unseen_passes is None:
            problems.append("a scheduled shrink needs delete_threshold > 0 or delete_after_unseen_passes")
        if problems:
            self.env.close()
            self.env = None
            raise ValueError(f"store at {self.path}: {'; '.join(problems)} (got {settings})")
        self.admit_threshold, self.delete_threshold = float(admit_threshold), float(delete_threshold)
        self.nonclk_coeff, self.click_coeff = float(nonclk_coeff), float(click_coeff)
        self.show_click_decay_rate = float(decay)
        self.delete_after_unseen_passes = delete_after_unseen_passes
        self.shrink_every_passes = int(shrink_every_passes)
        self.counting = self.admit_threshold > 0 or self.shrink_every_passes > 0
        self.default_row = np.zeros(self.row_dim, dtype=np.float32)  # what a pending key looks up
        self.default_row[self.dim:] = self.state_init if pending_state is None else pending_state

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
        """(kind, keys, values, size in bytes) of a redo record: rows [n, row_dim] float32, counters
        (COUNT_DTYPE [n]) or deleted keys (values None)."""
        with self.env.begin(db=self.log_db) as txn:
            blob = txn.get(raw_key)
        kind = struct.unpack(">qI", raw_key)[1] >> 30
        per_key = 8 + {_ROWS_RECORD: self.row_bytes, _COUNTS_RECORD: COUNT_DTYPE.itemsize, _DELETES_RECORD: 0}[kind]
        count = len(blob) // per_key
        keys = np.frombuffer(blob, dtype="<u8", count=count).astype(np.uint64)
        if kind == _ROWS_RECORD:
            values = np.frombuffer(blob, dtype="<f4", offset=8 * count).reshape(count, self.row_dim)
        elif kind == _COUNTS_RECORD:
            values = np.frombuffer(blob, dtype=COUNT_DTYPE, offset=8 * count)
        else:
            values = None
        return kind, keys, values, len(blob)

    def _replay(self, raw_key):
        """Apply one redo record to the SSD tables (idempotent: it sets values, deletes keys)."""
        kind, keys, values, _ = self._read_record(raw_key)
        if kind == _ROWS_RECORD:
            self._put_rows(keys, values)
        elif kind == _COUNTS_RECORD:
            self._put_counts(keys, values)
        else:
            self._delete_keys(keys)

    def _delete_records(self, raw_keys, meta=None):
        """Delete log records (and set ``meta`` {name: value or None}) in one small transaction,
        durable on return when it sets ``meta`` (commit points, prepared markers).

        The environment is opened with ``metasync=False`` (LMDB's MDB_NOMETASYNC): a commit
        flushes its data pages but not its meta page, which the next transaction's flush (or an
        explicit ``sync``) makes durable. LMDB keeps its integrity either way; a system crash can
        only undo the last transaction. So every write is durable once the next one commits: the
        redo records and the SSD-table rows before the commit point or record deletion after them;
        the transactions whose durability is promised on return (the commit point, the prepared
        marker) are synced explicitly here; a lost record deletion only means a replay. Half the
        fsyncs of the SSD-table writes (~3.4 ms each on the bench's disk, two per transaction)."""
        with self.env.begin(write=True) as txn:
            for raw_key in raw_keys:
                txn.delete(raw_key, db=self.log_db)
            for name, value in (meta or {}).items():
                if value is None:
                    txn.delete(name, db=self.meta_db)
                else:
                    txn.put(name, json.dumps(value).encode(), db=self.meta_db)
        if meta:
            self.env.sync(True)

    def _recover(self, defer_prepared):
        """Replay committed log records into the SSD table, one record per transaction (replaying is
        idempotent, so a crash here just replays again); keep a completely prepared pass if
        ``defer_prepared``, drop partial or undecided records."""
        index = self._log_index()
        marker = self._read_meta(b"prepared", None)
        for pass_id, raw_key in index:
            if pass_id <= self.last_pass:
                self._replay(raw_key)
        keep = marker if (defer_prepared and marker is not None and marker > self.last_pass) else None
        self._delete_records([k for p, k in index if p != keep], meta={b"prepared": keep})
        if keep is None:
            return {}
        self.prepared_pass = keep
        return {keep: sum(self._read_record(k)[3] for p, k in index if p == keep)}

    def resolve_prepared(self, commit):
        """Roll a prepared (logged, not finished) pass forward (``commit=True``) or drop it."""
        with self._lock:
            self._settle()
            if self.prepared_pass is None:
                return
            records = [k for p, k in self._log_index() if p == self.prepared_pass]
            if commit:
                for raw_key in records:
                    self._replay(raw_key)
            self._delete_records(records, meta={b"prepared": None, **(
                {b"last_pass": self.prepared_pass} if commit else {})})
            if commit:
                self.last_pass = self.prepared_pass
            self.prepared_pass = None
            self._prepared_plan = None
            self._log_pass_bytes = {}

    # ------------------------------------------------------------------ SSD access
    def _put_rows(self, keys, rows, take=None):
        """Write ``rows[take]`` under ``keys[take]`` (all when ``take`` is None) to the SSD table, in
        transactions of ``_TXN_ROWS`` rows. Sorted keys spread over a large table touch about one
        4 KiB leaf page each, and LMDB keeps a transaction's dirty pages in RAM until it commits,
        so this bounds that memory (~32 MiB; these writes run beside training). LMDB also keeps
        freed single pages for reuse until the environment closes, so the largest transaction's
        pages stay resident: 2^14 rows a transaction held ~64 MiB for the whole run, the 1M-row
        bench then peaked ~15 MB over its allowance at 20 ms sampling; twice the transactions cost
        one more fsync per 2^13 rows, on the writer thread. ``take`` avoids copying the rows to write.

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
        for at, values in self._lookup(self.rows_db, keys):
            found[at] = True
            rows[positions[at]] = np.frombuffer(values, dtype="<f4").reshape(-1, self.row_dim)
        return found

    def _lookup(self, db, keys):
        """Yield ``(indices into the sorted unique keys, their joined value bytes)`` for the keys of
        ``db`` that exist, ``_IO_BATCH`` keys at a time (one read transaction)."""
        with self.env.begin(db=db) as txn:
            cursor = txn.cursor()
            for start in range(0, keys.size, _IO_BATCH):
                pairs = cursor.getmulti(keys[start:start + _IO_BATCH].astype(">u8").view("V8").tolist())
                if pairs:
                    got_keys = np.frombuffer(b"".join(k for k, _ in pairs), dtype=">u8").astype(np.uint64)
                    yield np.searchsorted(keys, got_keys), b"".join(v for _, v in pairs)

    def _put_counts(self, keys, counts):
        """Write counter records (COUNT_DTYPE) of ``keys`` to the counts table, bounded transactions."""
        order = np.argsort(keys, kind="stable")
        for start in range(0, order.size, _TXN_ROWS):
            part = order[start:start + _TXN_ROWS]
            key_bytes = keys[part].astype(">u8").view("V8").tolist()
            values = np.ascontiguousarray(counts[part]).view(f"V{COUNT_DTYPE.itemsize}").tolist()
            with self.env.begin(write=True, db=self.counts_db) as txn:
                txn.cursor().putmulti(zip(key_bytes, values))

    def _get_counts(self, keys):
        """Counter records of sorted unique ``keys``; never counted keys get zeros and ``seen`` -1."""
        counts = np.zeros(keys.size, dtype=COUNT_DTYPE)
        counts["seen"] = -1
        for at, values in self._lookup(self.counts_db, keys):
            counts[at] = np.frombuffer(values, COUNT_DTYPE)
        return counts

    def _scan_counts(self):
        """Every counter record, in chunks of ``_IO_BATCH``: yields (sorted keys, COUNT_DTYPE values)."""
        with self.env.begin(db=self.counts_db) as txn:
            pairs = txn.cursor().iternext(keys=True, values=True)
            while True:
                chunk = list(itertools.islice(pairs, _IO_BATCH))
                if not chunk:
                    return
                yield (np.frombuffer(b"".join(k for k, _ in chunk), dtype=">u8").astype(np.uint64),
                       np.frombuffer(b"".join(v for _, v in chunk), dtype=COUNT_DTYPE))

    def _delete_keys(self, keys):
        """Remove ``keys`` from MEM, the SSD table and the counts table (a shrink), bounded transactions.
        Deleting a key that is not there is a no-op, so replaying a shrink is harmless."""
        self.mem.remove(keys)
        raw = np.sort(keys).astype(">u8").view("V8").tolist()
        for start in range(0, len(raw), _TXN_ROWS):
            with self.env.begin(write=True) as txn:
                for key in raw[start:start + _TXN_ROWS]:
                    txn.delete(key, db=self.rows_db)
                    txn.delete(key, db=self.counts_db)

    def _read_in_flight(self, keys, rows, positions):
        """Rows of sorted ``keys`` that the last commit is still writing to the SSD table (the dirty
        MEM victims and the rows that did not fit in MEM: disjoint keys) into ``rows[positions]``;
        the found mask."""
        found = np.zeros(keys.size, dtype=bool)
        in_flight = self._in_flight  # (one read: the writer thread clears it when done)
        for flight_keys, flight_rows, take in in_flight or ():
            if not flight_keys.size:
                continue
            at = np.minimum(np.searchsorted(flight_keys, keys), flight_keys.size - 1)
            hit = np.flatnonzero(flight_keys[at] == keys)
            rows[positions[hit]] = flight_rows[take[at[hit]]]
            found[hit] = True
        return found

    def _run_pending_apply(self, wait_commit=True):
        """Run the last commit's MEM update now if no background thread has yet (callers hold
        ``_lock``): whoever reads MEM first does it, so no read sees MEM without the commit. A
        deferred commit (``commit_pass(wait=False)``) is waited for first (except by the
        background update itself, ``wait_commit=False``: it may run beside the redo-log writes)."""
        committing = self._committing
        if committing is not None and wait_commit:
            self._committing = None
            try:
                committing.result()
            except BaseException as exc:
                self._failure = exc
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
                self._run_pending_apply(wait_commit=False)

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

    def _append_log(self, pass_id, keys, rows, kind=_ROWS_RECORD):
        """Write the pass's redo records of one kind (rows float32 [n, row_dim], counters COUNT_DTYPE
        [n], or deleted keys: ``rows`` None), one transaction per chunk. They take effect only when
        a later transaction sets ``last_pass`` (or the ``prepared`` marker) to ``pass_id``."""
        per_key = _record_bytes_per_key(rows)
        per_chunk = max(1, _LOG_CHUNK_BYTES // per_key)
        # every chunk is laid out in one reused buffer (LMDB copies it at put): no bytes copies of
        # the keys, the rows and their concatenation; this runs beside the MEM update and training
        buffer = np.empty(min(keys.size, per_chunk) * per_key, dtype=np.uint8)
        values_dtype = None if rows is None else np.dtype("<f4") if kind == _ROWS_RECORD else COUNT_DTYPE
        for chunk, start in enumerate(range(0, max(keys.size, 1 if kind == _ROWS_RECORD else 0), per_chunk)):
            count = keys[start:start + per_chunk].size
            blob = buffer[:count * per_key]
            blob[:8 * count].view("<u8")[:] = keys[start:start + count]
            if rows is not None:
                blob[8 * count:].view(values_dtype).reshape(rows[start:start + count].shape)[:] = rows[start:start + count]
            with self.env.begin(write=True, db=self.log_db) as txn:
                txn.put(struct.pack(">qI", pass_id, kind << 30 | chunk), memoryview(blob))
        return logged_bytes(keys, rows)

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
            in_previous = sorted_member(unique, self._previous_keys)
            slots, hit = self.mem.lookup(unique)
            rows[hit] = self.mem.rows[slots[hit]]
            self.mem.touch(slots[hit], self._clock)
            del slots  # index arrays of the working set's size go as soon as they are used: this load
            miss = np.flatnonzero(~hit)  # runs beside training, a commit and the next pass's ranking
            found = self._read_in_flight(unique[miss], rows, miss)
            if self._ssd_has_rows:
                unread = miss[~found]
                found[~found] = self._get_rows(unique[unread], rows, unread)
                del unread
            ssd = np.zeros(unique.size, dtype=bool)
            ssd[miss[found]] = True
            fresh = miss[~found]
            del miss, found
            counts = self._get_counts(unique) if self.counting else None
            admitted = self._fill_fresh(unique, rows, fresh, counts)
            if not count:
                return self._open(unique, rows, started, admitted, counts)
            self._counts["hbm"] += int(in_previous.sum())
            self._counts["mem"] += int((hit & ~in_previous).sum())
            self._counts["ssd"] += int((ssd & ~in_previous).sum())
            new = np.zeros(unique.size, dtype=bool)
            new[fresh] = True
            self._counts["new"] += int((new & ~in_previous).sum())
            self._previous_keys = unique
            return self._open(unique, rows, started, admitted, counts)

    def _fill_fresh(self, keys, rows, fresh, counts=None):
        """Rows of keys that have no stored row (``rows[fresh]``, ``keys`` sorted): their initial
        row, or the default row while their score is below ``admit_threshold`` (pending). Returns
        the admitted mask over all keys when the store counts (else None). ``counts``: the
        counter records of ``keys`` if already read."""
        pending = np.zeros(fresh.size, dtype=bool)
        if self.admit_threshold > 0 and fresh.size:
            counts = self._get_counts(keys[fresh]) if counts is None else counts[fresh]
            pending = self._score(*self._decayed(counts, self.last_pass)) < self.admit_threshold
            rows[fresh[pending]] = self.default_row
        admit = fresh[~pending]
        for start in range(0, admit.size, _IO_BATCH):  # chunks: no working-set-sized temporaries
            part = admit[start:start + _IO_BATCH]
            rows[part] = init_rows(keys[part], self.dim, self.state_dim, self.init_std, self.seed, self.state_init)
        if not self.counting:
            return None
        admitted = np.ones(keys.size, dtype=bool)
        admitted[fresh[pending]] = False
        return admitted

    def _score(self, show, click):
        """Fleet's CtrCommonAccessor show-click score."""
        return self.nonclk_coeff * (show - click) + self.click_coeff * click

    def _decayed(self, counts, at_pass):
        """(show, click) of counter records decayed to pass ``at_pass`` (zeros for never counted)."""
        seen = counts["seen"]
        factor = np.where(seen >= 0, self.show_click_decay_rate ** np.maximum(at_pass - seen, 0).astype(np.float64),
                          0.0).astype(np.float32)
        return counts["show"] * factor, counts["click"] * factor

    def _open(self, unique, rows, started, admitted=None, counts=None):
        ws = WorkingSet(unique, rows, self.dim, self.last_pass)
        if self.counting:
            ws._start_counting(admitted, counts)
        self._open_sets.add(ws)
        if self._write_ahead_due:  # the last MEM update ran with no open set (e.g. this load ran it)
            self._write_ahead_victims()
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

    def commit_pass(self, ws, pass_id, shrink=None, wait=True):
        """Write the pass's updated rows back; durable when this returns (``wait=False``: see below).

        Order: the last commit's background work is waited for; redo records of the pass; the
        commit point, one small transaction setting ``last_pass``; the open working sets are
        patched. MEM's update and the SSD-table writes follow in the background (``_finish``).
        Each step is a bounded LMDB transaction, so a pass of any size commits without a huge
        transaction. A store that counts also logs the pass's counters and, when a shrink is due
        (``shrink_every_passes``; ``shrink=True`` forces one, ``False`` skips it), the deleted
        keys, before the commit point (see the module docstring).

        ``wait=False`` (a store that keeps no counters; otherwise the same as ``wait=True``): the
        open working sets are patched with the pass's rows, then this returns and the writer thread
        writes the redo records and the commit point (``_durable_commit``) while the caller trains
        the next pass. Until that is done ``last_pass`` is the previous pass, and every call that
        reads the store's rows or commits (loads, ``read_rows``, ``commit_pass``, ``checkpoint``,
        ``close``) first waits for it, so none reads rows without the pass. The pass is durable once
        one of them (or ``flush``) returns; a crash before that leaves the previous pass, as a
        crash before the commit point does. The caller must not change ``ws.rows`` afterwards."""
        with self._lock:
            self._ensure_open()
            with self._timed("commit_s"):
                self._settle()  # one commit's writes in flight at a time; LMDB has one writer anyway
                self._check_commit(ws, pass_id)  # after a deferred commit of the previous pass is done
                if not wait and not self.counting:
                    self._check_finite(ws)
                    self._open_sets.discard(ws)
                    patch_open_sets(self._open_sets, ws, pass_id)
                    self._log_pass_bytes[pass_id] = logged_bytes(ws.keys, ws.rows)  # what it will log
                    self._committing = self._writer.submit(self._durable_commit, ws, pass_id)
                    # MEM's update runs beside the log writes: no read sees MEM before the commit
                    # point (every read waits for it), and the update's SSD-table writes are queued
                    # on the writer thread behind it; its victims' values are durable already
                    self._pending_apply = lambda: self._apply_commit(ws, pass_id)
                    self._executor.submit(self._background_apply)
                    return
                committed, plan = self._log_pass(ws, pass_id, shrink)
                self._finish(ws, committed, plan, pass_id, {})
        return_freed_memory()

    def flush(self):
        """Wait until the last commit is durable (and its background MEM update and writes done)."""
        with self._lock:
            self._ensure_open()
            self._settle()

    def _durable_commit(self, ws, pass_id):
        """A ``wait=False`` commit's redo records and commit point (the writer thread; it takes no
        lock: every reader waits for it in ``_run_pending_apply``)."""
        with self._timed("commit_s"):
            self._append_log(pass_id, ws.keys, ws.rows)
            self._delete_records([], meta={b"last_pass": pass_id})  # the commit point
            self.last_pass = pass_id
        return_freed_memory()

    def prepare_pass(self, ws, pass_id, shrink=None):
        """Phase 1 of a multi-shard commit: durably log the pass and mark it prepared, unapplied."""
        with self._lock:
            self._check_commit(ws, pass_id)
            if self.prepared_pass is not None:
                raise RuntimeError(f"pass {self.prepared_pass} is already prepared in {self.path}")
            self._settle()
            self._prepared_plan = self._log_pass(ws, pass_id, shrink)
            self._delete_records([], meta={b"prepared": pass_id})
            self.prepared_pass = pass_id

    def finish_pass(self, ws, pass_id):
        """Phase 2 of a multi-shard commit: apply the prepared pass (MEM, evictions, last_pass)."""
        with self._lock:
            if self.prepared_pass != pass_id or self._prepared_plan is None:
                raise RuntimeError(f"pass {pass_id} was not prepared in {self.path} (prepared: {self.prepared_pass})")
            with self._timed("commit_s"):
                self._settle()
                committed, plan = self._prepared_plan
                self._prepared_plan = None
                self._finish(ws, committed, plan, pass_id, {b"prepared": None})
        return_freed_memory()

    def _log_pass(self, ws, pass_id, shrink):
        """Redo records of the pass: its rows (only admitted, not deleted keys when the store counts),
        then its counters and deleted keys. Returns (the committed working set, admission plan)."""
        if shrink and not self.counting:
            raise ValueError(f"store at {self.path} keeps no counters to shrink by: set admit_threshold > 0 or "
                             "shrink_every_passes > 0 (with delete_threshold / delete_after_unseen_passes)")
        committed, plan = (ws, None) if not self.counting else self._plan_admission(ws, pass_id, shrink)
        self._check_finite(committed)
        logged = self._append_log(pass_id, committed.keys, committed.rows)
        if plan is not None:
            logged += self._append_log(pass_id, plan["count_keys"], plan["counts"], _COUNTS_RECORD)
            logged += self._append_log(pass_id, plan["deleted"], None, _DELETES_RECORD)
        self._log_pass_bytes[pass_id] = logged
        return committed, plan

    def _finish(self, ws, committed, plan, pass_id, meta):
        """The commit point, then the rest in the background while the next pass trains.

        After the commit point, a counting store writes the pass's counters to the counts table and
        deletes the shrunk keys from MEM and the SSD tables (synchronously: loads and the next
        shrink read them; a crash in between replays the committed records), and the open working
        sets are patched. The MEM update (``_apply_commit``) runs in the prefetch thread, or in
        whichever call reads MEM first (``_run_pending_apply``): it copies the dirty MEM victims
        (committed values of earlier passes) out of MEM, updates MEM, and queues the victims and the
        rows that did not fit in MEM on the writer thread for the SSD table. Every one of those rows
        is in a committed redo record, so they may land after the commit point (a crash before they
        land replays the log); until they land, loads read them from ``_in_flight``. (Victims are not
        written synchronously before MEM reuses their slots: the next pass's prefetch, queued
        behind, would wait for those SSD writes.) When the overflow rows are most of
        the working set its rows are used without a copy: they must not change after the commit."""
        self._delete_records([], meta={**meta, b"last_pass": pass_id})  # the commit point
        if b"prepared" in meta:
            self.prepared_pass = None
        self.last_pass = pass_id
        self._open_sets.discard(ws)
        if plan is not None:
            self._put_counts(plan["count_keys"], plan["counts"])
            if plan["deleted"].size:
                with self._timed("write_s"):
                    self._delete_keys(plan["deleted"])
            for name in ("admitted", "pending", "evicted", "dropped"):
                self._counters[f"pass_{name}"] = plan[name]
            self._counters["admitted_rows"] += plan["admitted"]
            self._counters["evicted_rows"] += plan["evicted"]
            self._counters["dropped_counters"] += plan["dropped"]
            self._counters["shrinks"] += int(plan["shrunk"])
        patch_open_sets(self._open_sets, committed, pass_id)
        if plan is not None:
            for other in self._open_sets:
                self._patch_counts(other, plan)
        self._pending_apply = lambda: self._apply_commit(committed, pass_id)
        self._executor.submit(self._background_apply)

    # ------------------------------------------------------------------ admission and shrink
    def _plan_admission(self, ws, pass_id, shrink):
        """The pass's new counters, which keys get a row, and (when a shrink is due) which keys go.

        Returns (committed working set, plan): ``committed`` holds the rows to store, the rows of
        admitted keys that are not deleted (a key admitted by this pass starts from its initial
        row); the plan has the counter records to write (``count_keys``, ``counts``), the
        ``deleted`` keys and the pass's statistics."""
        if len(ws) and not ws.counted and (self.admit_threshold > 0 or self.delete_threshold > 0):
            raise ValueError(f"store at {self.path} admits or shrinks by show/click score, but no example was "
                             "counted into this working set: call ws.count(keys, labels) (or count_positions) "
                             "for the pass's examples before commit_pass")
        show, click = self._decayed(ws.base_counts, pass_id)
        counts = np.empty(len(ws), dtype=COUNT_DTYPE)
        counts["show"] = show + ws.pass_show
        counts["click"] = click + ws.pass_click
        counts["seen"] = pass_id
        admitted = ws.admitted | (self._score(counts["show"], counts["click"]) >= self.admit_threshold)
        counts["admitted"] = admitted
        due = self.shrink_every_passes > 0 and (pass_id + 1) % self.shrink_every_passes == 0
        shrunk = due if shrink is None else bool(shrink)
        keep = np.ones(len(ws), dtype=bool)
        deleted, evicted = np.zeros(0, dtype=np.uint64), 0
        if shrunk:
            keep = ~self._doomed(counts, pass_id)
            deleted, evicted = self._doomed_stored(ws.keys, pass_id)
            deleted = np.sort(np.concatenate([deleted, ws.keys[~keep]]))
            evicted += int((admitted & ~keep).sum())
        newly = np.flatnonzero(admitted & keep & ~ws.admitted)
        ws.rows[newly] = init_rows(ws.keys[newly], self.dim, self.state_dim, self.init_std, self.seed,
                                   self.state_init)
        take = admitted & keep
        committed = ws
        if not take.all():
            committed = WorkingSet(ws.keys[take], ws.rows[take], self.dim, ws.base_pass)
        plan = {"count_keys": ws.keys[keep], "counts": counts[keep], "deleted": deleted, "shrunk": shrunk,
                "admitted": int(newly.size), "pending": int((keep & ~admitted).sum()), "evicted": evicted,
                "dropped": int(deleted.size) - evicted}
        return committed, plan

    def _doomed(self, counts, pass_id):
        """Fleet's shrink rule on counter records decayed to ``pass_id``: score below
        ``delete_threshold``, or unseen for more than ``delete_after_unseen_passes`` passes."""
        doomed = self._score(*self._decayed(counts, pass_id)) < self.delete_threshold
        if self.delete_after_unseen_passes is not None:
            doomed |= (pass_id - counts["seen"]) > self.delete_after_unseen_passes
        return doomed

    def _doomed_stored(self, exclude, pass_id):
        """(sorted keys, how many had a row) of stored counter records the shrink rule removes, for
        keys not in sorted ``exclude`` (this pass's keys, whose new counters decide). One scan of
        the counts table, like Fleet's shrink over the whole table."""
        doomed_keys, evicted = [], 0
        for keys, counts in self._scan_counts():
            doomed = self._doomed(counts, pass_id)
            if exclude.size:
                at = np.minimum(np.searchsorted(exclude, keys), exclude.size - 1)
                doomed &= exclude[at] != keys
            doomed_keys.append(keys[doomed])
            evicted += int(counts["admitted"][doomed].sum())
        return (np.concatenate(doomed_keys) if doomed_keys else np.zeros(0, dtype=np.uint64)), evicted

    def _patch_counts(self, other, plan):
        """Bring an open working set's counters and admission up to a commit: the pass's counters
        (and rows admitted by it: their rows came with ``patch_open_sets``), and deleted keys back to
        a never-seen key's state (initial or default row, no counters)."""
        if other.base_counts is None or not len(other):
            return
        for keys, deleted in ((plan["count_keys"], False), (plan["deleted"], True)):
            if not keys.size:
                continue
            at = np.minimum(np.searchsorted(keys, other.keys), keys.size - 1)
            hit = np.flatnonzero(keys[at] == other.keys)
            if not deleted:
                other.base_counts[hit] = plan["counts"][at[hit]]
                other.admitted[hit] = plan["counts"]["admitted"][at[hit]].astype(bool)
                continue
            other.base_counts[hit] = np.zeros(1, dtype=COUNT_DTYPE)
            other.base_counts["seen"][hit] = -1
            other.admitted[hit] = self.admit_threshold <= 0
            other.rows[hit] = self.default_row
            if self.admit_threshold <= 0:
                other.rows[hit] = init_rows(other.keys[hit], self.dim, self.state_dim, self.init_std, self.seed,
                                            self.state_init)

    def _apply_commit(self, ws, pass_id):
        """A commit's MEM update, then the write-ahead of the next commit's victims. (Two calls, so
        the update's plan and temporaries are freed before the write-ahead allocates its own; then
        the freed heap goes back to the OS: this runs beside training, after the commit's trim.)"""
        self._update_mem(ws, pass_id)
        self._write_ahead_victims()
        return_freed_memory()

    def _update_mem(self, ws, pass_id):
        plan = self._plan_finish(ws)
        # dirty victims: a copy (sorted by key) goes to the writer thread, so MEM can reuse their slots now
        # (in key order by the MEM index: no sort)
        is_writeback = np.zeros(self.mem.size, dtype=bool)
        is_writeback[plan["writeback"]] = True
        writeback = self.mem.index_slot[is_writeback[self.mem.index_slot]]
        victims = (self.mem.keys[writeback], self.mem.rows[writeback], np.arange(writeback.size))
        overflow = plan["overflow"]  # ascending positions of sorted keys: sorted
        keys, rows, take = ws.keys, ws.rows, overflow
        if 2 * overflow.size < len(ws):  # a copy of the few, so the working set's memory can go now
            keys, rows, take = ws.keys[overflow], ws.rows[overflow], np.arange(overflow.size)
        self._in_flight = [victims, (keys[take], rows, take)]
        self._writing.append(self._writer.submit(self._write_back, victims, (keys, rows, take)))
        self._apply_finish(ws, plan, pass_id)

    def _write_ahead_victims(self):
        """Write to the SSD table, now, the dirty MEM rows that the commit of the open working sets
        is expected to evict, so that commit has (nearly) no dirty victim to copy and write.

        Called after a commit's MEM update (in the background, while the next pass trains on its
        working set, which is open): the victims are planned as that pass's commit would plan them
        from MEM as it is now (``plan_room``: room for the open sets' keys MEM lacks, their own rows
        protected). Their values are committed ones (durable in the redo log), so writing them
        early is safe at any time; their dirty marks go now, and they are written from the MEM
        arrays without a copy (nothing changes MEM rows before the next commit, which waits for
        these writes, ``_settle``). A prediction that misses (a later load raised a row's score)
        only leaves some victims dirty for that commit to write, as before. On the bench's passes
        this takes the previous pass's rows' writes (~0.3 s a pass) out of the commit's tail.

        When the update finds no open set (a load held up behind the commit runs the update itself,
        before its own set exists; or loads and commits alternate), the next load that opens a set
        does this for it (``_write_ahead_due``). Without that, the next commit copied every dirty
        victim for the writer thread: ~2M rows, 163 MB at the peak of the 1M-row bench run."""
        open_sets = [ws for ws in self._open_sets if len(ws)]
        self._write_ahead_due = not open_sets
        if not open_sets:
            return
        keys = open_sets[0].keys if len(open_sets) == 1 else sorted_unique(np.concatenate([w.keys for w in open_sets]))
        slots, hit = self.mem.lookup(keys)
        protected = sorted_unique(slots[hit])
        del slots  # before plan_room's own temporaries
        _, victims = self.mem.plan_room(int(keys.size - hit.sum()), protected, self._clock)
        dirty = victims[self.mem.dirty_pass[victims] >= 0]
        if not dirty.size:
            return
        self.mem.dirty_pass[dirty] = -1
        self._counters["written_ahead"] += int(dirty.size)
        self._writing.append(self._writer.submit(self._write_mem_rows, dirty))

    def _write_mem_rows(self, slots):
        with self._timed("write_s"):
            self._put_rows(self.mem.keys, self.mem.rows, slots)

    def _write_back(self, *parts):
        """Write ``(keys, rows, take)`` parts to the SSD table (the writer thread)."""
        with self._timed("write_s"):
            for keys, rows, take in parts:
                self._put_rows(keys, rows, take)
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

    @staticmethod
    def _check_finite(ws):
        """Refuse to store non-finite rows (pending keys' rows are not stored: they are not checked)."""
        if not np.isfinite(ws.rows).all():
            bad = ws.keys[~np.isfinite(ws.rows).all(axis=1)]
            raise FloatingPointError(f"{bad.size} row(s) are not finite (e.g. key {int(bad[0])}); refusing to commit")

    def _plan_finish(self, ws):
        """Decide MEM placement and victims (before MEM or the disk changes)."""
        slots, hit = self.mem.lookup(ws.keys)
        hit_slots = slots[hit]
        del slots  # before plan_room's own temporaries
        new = np.flatnonzero(~hit)
        free_slots, victims = self.mem.plan_room(new.size, sorted_unique(hit_slots), self._clock)
        target = np.concatenate([free_slots, victims]).astype(np.int64, copy=False)
        placed = new[: target.size]
        overflow = new[target.size:]  # more new rows than MEM can hold: straight to SSD
        return {"hit_slots": hit_slots, "hit": np.flatnonzero(hit), "target": target, "placed": placed,
                "overflow": overflow, "victims": int(victims.size),
                "writeback": victims[self.mem.dirty_pass[victims] >= 0]}

    def _apply_finish(self, ws, plan, pass_id):
        """Update MEM with the committed rows; drop the oldest redo records when the log is over its cap."""
        mem = self.mem
        mem.rows[plan["hit_slots"]] = ws.rows[plan["hit"]]
        mem.dirty_pass[plan["hit_slots"]] = pass_id
        mem.place(plan["target"], ws.keys, ws.rows, plan["placed"], self._clock, dirty_pass=pass_id)
        self._counters["evictions"] += plan["victims"]
        self._counters["writebacks"] += int(plan["writeback"].size)
        self._counters["commits"] += 1
        if self._log_bytes > self.log_cap_bytes:
            self.checkpoint(wait=False, upto=self._truncation_point())

    def checkpoint(self, wait=True, upto=None):
        """Drop the redo records of passes <= ``upto`` (default: all, ``last_pass``), first writing
        to the SSD table the dirty MEM rows whose latest value is only in those records.

        A dirty MEM row last committed by a pass above ``upto`` keeps its value in that pass's
        records, which stay, so it is not written (the commits that take the log over
        ``log_cap_mb`` drop only the oldest passes, ``_truncation_point``: hot rows that every pass
        commits again are not rewritten at each of them). Every other row's latest value is already
        in the SSD table or queued for it on the writer thread, ahead of these writes.
        ``wait=False`` (such a commit): the writes are queued on the writer thread behind the
        commit's own and run while the next pass trains. The rows are written from the MEM arrays
        without a copy: nothing changes MEM before the next commit, which waits for them. Their
        dirty marks go now; the records go only after they landed, so a crash in between replays
        them."""
        with self._lock:
            self._ensure_open()
            if wait:
                self._settle()
            if self.prepared_pass is not None:
                return  # the prepared record must survive until the pass is resolved
            upto = self.last_pass if upto is None else min(int(upto), self.last_pass)
            dirty = self.mem.dirty_slots(upto)
            self.mem.dirty_pass[dirty] = -1
            for pass_id in [p for p in self._log_pass_bytes if p <= upto]:
                del self._log_pass_bytes[pass_id]
            self._counters["checkpoints"] += 1
            self._counters["checkpoint_rows"] += int(dirty.size)
            self._writing.append(self._writer.submit(self._write_checkpoint, dirty, upto))
            if wait:
                self._settle()

    def _truncation_point(self):
        """The newest pass whose redo records go to bring the log back under ``log_cap_mb``: the
        oldest passes go first (all of them when the last pass alone is over the cap)."""
        remaining, upto = self._log_bytes, self.last_pass
        for pass_id in sorted(self._log_pass_bytes):
            if remaining <= self.log_cap_bytes:
                break
            upto = pass_id
            remaining -= self._log_pass_bytes[pass_id]
        return upto

    @property
    def _log_bytes(self):
        return sum(list(self._log_pass_bytes.values()))

    def _write_checkpoint(self, dirty, upto):
        with self._timed("write_s"):
            self._put_rows(self.mem.keys, self.mem.rows, dirty)
            self._delete_records([k for p, k in self._log_index() if p <= upto])

    # ------------------------------------------------------------------ inspection
    def read_rows(self, keys):
        """Current committed rows of ``keys`` (MEM, else SSD, else initial), without side effects."""
        keys = _as_keys(keys)
        unique = sorted_unique(keys)
        with self._lock:
            self._ensure_open()
            self._settle()
            rows = np.empty((unique.size, self.row_dim), dtype=np.float32)
            slots, hit = self.mem.lookup(unique)
            rows[hit] = self.mem.rows[slots[hit]]
            miss = np.flatnonzero(~hit)
            found = self._get_rows(unique[miss], rows, miss)
            self._fill_fresh(unique, rows, miss[~found])  # initial rows, or the default row of pending keys
        return rows[np.searchsorted(unique, keys)]

    def stats(self):
        """Hit rates, tier sizes and timings. Cheap, so it waits for nothing, not even the store's
        lock (a background MEM update holds it for a while): MEM and SSD-table counts may not yet
        include the last commit's background update (``read_rows`` or ``checkpoint`` first to
        settle), and taken beside a load or an update they are a snapshot of numbers that move."""
        self._ensure_open()
        counts = dict(self._counts)
        total = max(sum(counts.values()), 1)
        with self.env.begin(db=self.rows_db) as txn:
            ssd_rows = txn.stat(self.rows_db)["entries"]
            counter_rows = txn.stat(self.counts_db)["entries"]
        return {
            "hit_rate": {k: v / total for k, v in counts.items()},
            "key_counts": counts,
            "mem_rows": self.mem.size, "mem_cap_rows": self.mem.capacity,
            "mem_bytes": self.mem.nbytes(), "mem_cap_bytes": self.mem.capacity * self.mem_bytes_per_row,
            "mem_dirty_rows": int(self.mem.dirty_slots().size),
            "ssd_rows": ssd_rows, "counter_rows": counter_rows, "log_bytes": self._log_bytes, "last_pass": self.last_pass,
            "process": process_memory_mb(), **dict(self._counters),
        }

    def _ensure_open(self):
        if self.env is None:
            raise RuntimeError(f"store at {self.path} is closed")

    def close(self):
        """Wait for prefetches, checkpoint dirty rows, close LMDB. Idempotent."""
        if self.env is None:
            return
        with self._lock:
            self._run_pending_apply()  # a deferred commit queues its MEM update on the executor
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
_MMAP_THRESHOLD = 16 << 20  # see return_freed_memory


def return_freed_memory():
    """Give freed heap memory back to the OS (glibc; a no-op elsewhere).

    A pass allocates and frees several working-set-sized arrays, from two threads (prefetch). glibc
    raises its mmap threshold after such frees (up to 32 MiB), so later large arrays come from the
    heap arenas and their pages stay resident after ``free``: the RSS creeps to several times the
    live data. Fixing the threshold at ``_MMAP_THRESHOLD`` (16 MiB) keeps arrays of working-set
    size (tens of MiB) in their own mappings (unmapped on free), and ``malloc_trim`` releases the
    arenas' free pages; the store calls this once per pass. The per-chunk temporaries of loads,
    initialisation and writes (``_IO_BATCH`` keys: a few MiB each) stay below it, so they reuse heap
    memory: at a 1 MiB threshold each was a fresh mapping whose pages the kernel zeroes on first
    touch (measured: 15% of the store's CPU time over 6 passes of ``bench/ctr_speed.py`` data,
    6.5-6.9 s -> 5.4-5.8 s)."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.mallopt(-3, _MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
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
        """Copy the (trained) assembled rows, and the pass's counts, back into the per-shard sets."""
        for i, part in enumerate(self.parts):
            mine = self.shard_ids == i
            part.rows[:] = self.rows[mine]
            if self.pass_show is not None:
                part.pass_show[:], part.pass_click[:] = self.pass_show[mine], self.pass_click[mine]
                part.counted = self.counted

    def gather_parts(self):
        """Re-assemble rows, admission and counters from the per-shard sets (after their shards
        patched them at a commit)."""
        for i, part in enumerate(self.parts):
            mine = self.shard_ids == i
            self.rows[mine] = part.rows
            self.admitted[mine] = part.admitted
            self.base_counts[mine] = part.base_counts


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
        self._executor = background_pool("sharded-prefetch", self.shards[0].background_nice)
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
            if self.shards[0].counting:
                ws._start_counting(np.empty(unique.size, dtype=bool), np.empty(unique.size, dtype=COUNT_DTYPE))
                ws.gather_parts()
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

    def commit_pass(self, ws, pass_id, shrink=None, wait=True):
        """The two-phase commit over the shards; durable when this returns (``wait`` is accepted
        for the single store's API and ignored)."""
        with self._lock:
            if ws not in self._open_sets:
                raise ValueError("this working set was not loaded from this store, or was already committed")
            if ws.base_pass != self.last_pass:
                raise ValueError(f"stale working set: it reflects pass {ws.base_pass}, "
                                 f"the store is at {self.last_pass}")
            ws.sync_parts()
            for shard, part in zip(self.shards, ws.parts):
                shard.prepare_pass(part, pass_id, shrink=shrink)
            for shard, part in zip(self.shards, ws.parts):
                shard.finish_pass(part, pass_id)
            self._open_sets.discard(ws)
            if self.shards[0].counting:  # each shard patched its parts (admission may drop rows)
                for other in self._open_sets:
                    other.gather_parts()
                    other.base_pass = pass_id
            else:
                patch_open_sets(self._open_sets, ws, pass_id)

    def flush(self):
        for shard in self.shards:
            shard.flush()

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
