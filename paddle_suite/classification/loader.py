"""Batches of (float32 NCHW images, labels or soft targets) for positions of an epoch.

A batch is a pure function of (seed, epoch, batch position): epoch ``e`` visits the samples in the
order ``np.random.default_rng([seed, e]).permutation(N)`` (or 0..N-1 without shuffling), global
batch ``g`` is the ``g``-th slice of ``batch_size`` samples, its per-sample augmentation is keyed
by (seed, epoch, sample index) and its mixup/cutmix by (seed, epoch, g). With ``world_size`` ranks,
rank ``r`` takes global batches ``r, r + world_size, ...``.

``num_workers > 0`` builds batches in a pool of forked processes (they inherit the dataset, memory
maps included, without copying it), ``prefetch`` batches ahead in order. Workers write each batch
into one of ``prefetch`` shared-memory slots and send back only its shapes (pickling a 1.5 MB
float batch through a pipe cost more than building it with light augmentation); the training
process copies it out and frees the slot. Since every batch is a pure function of its position,
the output is identical for any number of workers, so a run resumed mid-epoch sees exactly the
batches an uninterrupted one would.
"""
import collections
import mmap
import multiprocessing
import signal
import weakref

import numpy as np

_WORKER_LOADER = None  # the BatchLoader a pool worker serves (set by the pool initializer)


def _init_worker(loader):
    global _WORKER_LOADER
    _WORKER_LOADER = loader
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the training process
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the trainer's checkpoint-on-SIGTERM handler, if forked under it


def _build_in_worker(epoch, global_batch, slot):
    arrays = _WORKER_LOADER.make_batch(epoch, global_batch)
    buffer = _WORKER_LOADER._slots[slot]
    if sum(a.nbytes for a in arrays) > len(buffer):  # larger than the first batch: send it through the pipe
        return arrays
    layout, offset = [], 0
    for array in arrays:
        buffer[offset:offset + array.nbytes] = memoryview(np.ascontiguousarray(array)).cast("B")
        layout.append((array.shape, array.dtype.str, offset))
        offset += array.nbytes
    return layout


def _shut_down(pool, pending):
    """Stop the workers; their unfinished batches will never arrive, so nobody may wait for them."""
    pool.terminate()
    pending.clear()


def _read_slot(buffer, layout):
    return tuple(np.frombuffer(buffer, dtype, int(np.prod(shape)), offset).reshape(shape).copy()
                 for shape, dtype, offset in layout)


class BatchLoader:
    """Deterministic batches of ``dataset`` through ``transform`` (and an optional ``mixer``).

    ``transform(images, seed, epoch, indices)`` must return float32 NCHW; ``mixer`` (a
    ``transforms.BatchMixer``) turns int64 labels into float32 soft targets.
    """

    def __init__(self, dataset, transform, batch_size, seed, shuffle=True, drop_last=True, num_workers=0,
                 prefetch=None, mixer=None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.dataset, self.transform, self.mixer = dataset, transform, mixer
        self.batch_size, self.seed, self.shuffle, self.drop_last = batch_size, int(seed), shuffle, drop_last
        self.num_workers = num_workers
        self.prefetch = prefetch or 2 * max(num_workers, 1)
        self._pool = None
        self._slots = []
        self._pending = collections.deque()  # (async result, slot) of batches being built, in order
        self._orders = {}

    # ------------------------------------------------------------------ positions
    def num_batches(self):
        """Global batches in an epoch."""
        full, rest = divmod(len(self.dataset), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def steps_per_epoch(self, world_size=1):
        return self.num_batches() // world_size if self.drop_last else -(-self.num_batches() // world_size)

    def order(self, epoch):
        if not self.shuffle:
            return np.arange(len(self.dataset))
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, int(epoch)]).permutation(len(self.dataset))}
        return self._orders[epoch]

    def batch_indices(self, epoch, global_batch):
        return self.order(epoch)[global_batch * self.batch_size:(global_batch + 1) * self.batch_size]

    def make_batch(self, epoch, global_batch):
        """``(images float32 NCHW, labels int64 [B] or soft targets float32 [B, K])`` of one batch."""
        indices = self.batch_indices(epoch, global_batch)
        images = self.transform(self.dataset.load(indices), self.seed, epoch, indices)
        labels = self.dataset.labels[indices]
        if self.mixer is not None and self.mixer.active:
            return self.mixer(images, labels, self.seed, epoch, global_batch)
        return images, labels

    # ------------------------------------------------------------------ iteration
    def batches(self, epoch, start=0, rank=0, world_size=1):
        """Yield this rank's batches of ``epoch`` from position ``start`` on."""
        total = self.num_batches()
        positions = [p * world_size + rank for p in range(start, self.steps_per_epoch(world_size))]
        positions = [g if g < total else g % total for g in positions]  # uneven tail: wrap to the epoch start
        if self.num_workers == 0:
            for g in positions:
                yield self.make_batch(epoch, g)
            return
        if self._pool is None:  # the first batch, built here, sizes the shared slots the workers inherit
            first = self.make_batch(epoch, positions[0]) if positions else None
            if first is None:
                return
            self._start_workers(sum(a.nbytes for a in first))
            positions = positions[1:]
            yield first
        self._drain()
        pending, free = self._pending, list(range(self.prefetch))
        upcoming = iter(positions)

        def submit():
            for g in upcoming:
                slot = free.pop()
                pending.append((self._pool.apply_async(_build_in_worker, (epoch, g, slot)), slot))
                return

        try:
            for _ in range(self.prefetch):
                submit()
            while pending:
                result, slot = pending.popleft()
                done = result.get()
                batch = done if isinstance(done, tuple) else _read_slot(self._slots[slot], done)
                free.append(slot)
                submit()
                yield batch
        finally:
            self._drain()

    def _drain(self):
        """Wait for batches still being built (an epoch left early): their slots are reused next."""
        while self._pending:
            self._pending.popleft()[0].wait()

    def __iter__(self):
        return self.batches(0)

    def _start_workers(self, slot_bytes):
        # anonymous shared maps made before the fork are shared with the workers
        self._slots = [mmap.mmap(-1, slot_bytes) for _ in range(self.prefetch)]
        # fork: workers inherit the dataset (and its memory maps) instead of receiving a pickled copy
        self._pool = multiprocessing.get_context("fork").Pool(
            self.num_workers, initializer=_init_worker, initargs=(self,))
        self._finalizer = weakref.finalize(self, _shut_down, self._pool, self._pending)

    def close(self):
        """Stop the worker processes (a later iteration starts new ones)."""
        if self._pool is not None:
            self._finalizer()
            self._pool = None
            self._slots = []

    def __getstate__(self):  # a worker's copy has no pool of its own
        state = dict(self.__dict__)
        state["_pool"], state["_slots"], state["_pending"] = None, [], collections.deque()
        state.pop("_finalizer", None)
        return state
