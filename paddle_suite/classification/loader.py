"""Batches of (float32 NCHW images, labels or soft targets) for positions of an epoch.

A batch is a pure function of (seed, epoch, batch position): epoch ``e`` visits the samples in the
order ``np.random.default_rng([seed, e]).permutation(N)`` (or 0..N-1 without shuffling), global
batch ``g`` is the ``g``-th slice of ``batch_size`` samples, its per-sample augmentation is keyed
by (seed, epoch, sample index) and its mixup/cutmix by (seed, epoch, g). With ``world_size`` ranks,
rank ``r`` takes global batches ``r, r + world_size, ...``.

``num_workers > 0`` builds batches in a pool of forked processes (they inherit the dataset, memory
maps included, without copying it), ``prefetch`` batches ahead in order; since every batch is a
pure function of its position, the output is identical for any number of workers, so a run resumed
mid-epoch sees exactly the batches an uninterrupted one would.
"""
import collections
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


def _build_in_worker(epoch, global_batch):
    return _WORKER_LOADER.make_batch(epoch, global_batch)


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
        pool = self._worker_pool()
        pending = collections.deque()
        upcoming = iter(positions)
        for g in upcoming:
            pending.append(pool.apply_async(_build_in_worker, (epoch, g)))
            if len(pending) >= self.prefetch:
                break
        while pending:
            batch = pending.popleft().get()
            for g in upcoming:
                pending.append(pool.apply_async(_build_in_worker, (epoch, g)))
                break
            yield batch

    def __iter__(self):
        return self.batches(0)

    def _worker_pool(self):
        if self._pool is None:
            # fork: workers inherit the dataset (and its memory maps) instead of receiving a pickled copy
            self._pool = multiprocessing.get_context("fork").Pool(
                self.num_workers, initializer=_init_worker, initargs=(self,))
            self._finalizer = weakref.finalize(self, self._pool.terminate)
        return self._pool

    def close(self):
        """Stop the worker processes (a later iteration starts new ones)."""
        if self._pool is not None:
            self._finalizer()
            self._pool = None

    def __getstate__(self):  # a worker's copy has no pool of its own
        state = dict(self.__dict__)
        state["_pool"] = None
        state.pop("_finalizer", None)
        return state
