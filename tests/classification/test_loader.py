import numpy as np

from paddle_suite.classification import transforms as T
from paddle_suite.classification.loader import BatchLoader


def cifar_loader(dataset, num_workers, batch_size=64):
    transform = T.Compose([T.RandomCropPad(4), T.HorizontalFlip(0.5), T.RandAugment(2, 9),
                           T.Normalize([0.49, 0.48, 0.45], [0.25, 0.24, 0.26]), T.RandomErasing(0.25)])
    mixer = T.BatchMixer(10, mixup_alpha=0.2, cutmix_alpha=1.0, label_smoothing=0.1)
    return BatchLoader(dataset, transform, batch_size, seed=5, num_workers=num_workers, mixer=mixer)


def take(iterator, n):
    return [batch for _, batch in zip(range(n), iterator)]


def test_batches_are_identical_for_0_and_2_workers(cifar10):
    serial, parallel = cifar_loader(cifar10["train"], 0), cifar_loader(cifar10["train"], 2)
    try:
        for epoch, start in ((0, 0), (3, 17)):
            a = take(serial.batches(epoch, start), 4)
            b = take(parallel.batches(epoch, start), 4)
            for (xa, ya), (xb, yb) in zip(a, b):
                assert xa.shape == (64, 3, 32, 32) and xa.dtype == np.float32 and ya.shape == (64, 10)
                np.testing.assert_array_equal(xa, xb)
                np.testing.assert_array_equal(ya, yb)
        # a resumed epoch (start = 2) continues with exactly the batches of the uninterrupted one
        whole = take(parallel.batches(1), 4)
        resumed = take(parallel.batches(1, start=2), 2)
        np.testing.assert_array_equal(whole[2][0], resumed[0][0])
        np.testing.assert_array_equal(whole[3][1], resumed[1][1])
        assert not np.array_equal(whole[0][0], whole[1][0])
    finally:
        parallel.close()


def test_epoch_order_and_ranks_partition_the_data(fashion_mnist):
    loader = BatchLoader(fashion_mnist["test"], T.Compose([T.Normalize([0.5], [0.5])]), 100, seed=1)
    assert loader.steps_per_epoch() == 100 and loader.steps_per_epoch(world_size=3) == 33
    seen = np.concatenate([loader.batch_indices(0, g) for g in range(100)])
    assert sorted(seen) == list(range(10_000))
    assert not np.array_equal(loader.order(0), loader.order(1))
    rank_batches = [[y for _, y in loader.batches(0, 0, rank, 2)] for rank in (0, 1)]
    np.testing.assert_array_equal(rank_batches[1][3], fashion_mnist["test"].labels[loader.batch_indices(0, 7)])


def test_eval_loader_keeps_the_last_partial_batch(mnist):
    loader = BatchLoader(mnist["valid"], T.Compose([T.Normalize([0.13], [0.31])]), 3000, seed=0,
                         shuffle=False, drop_last=False)
    labels = np.concatenate([y for _, y in loader.batches(0)])
    np.testing.assert_array_equal(labels, mnist["valid"].labels)


class GrowingTransform:
    """Output size grows with the epoch, so later batches exceed the shared slots sized by the first."""

    def __call__(self, images, seed, epoch, indices):
        side = 4 + 4 * epoch
        return np.broadcast_to(indices[:, None, None, None].astype(np.float32), (len(indices), 1, side, side)).copy()


def test_batches_larger_than_the_slots_still_arrive(fashion_mnist):
    loader = BatchLoader(fashion_mnist["test"], GrowingTransform(), 16, seed=0, num_workers=2)
    try:
        small = take(loader.batches(0), 3)
        large = take(loader.batches(2), 3)
        assert small[0][0].shape == (16, 1, 4, 4) and large[2][0].shape == (16, 1, 12, 12)
        for epoch, got in ((0, small), (2, large)):
            for g, (x, y) in enumerate(got):
                np.testing.assert_array_equal(x[:, 0, 0, 0], loader.batch_indices(epoch, g))
                np.testing.assert_array_equal(y, fashion_mnist["test"].labels[loader.batch_indices(epoch, g)])
    finally:
        loader.close()


def test_closing_with_an_unfinished_epoch_does_not_hang(fashion_mnist):
    loader = BatchLoader(fashion_mnist["test"], GrowingTransform(), 16, seed=0, num_workers=2)
    unfinished = loader.batches(0)
    next(unfinished)
    next(unfinished)  # batches of this epoch are now being built in the workers
    loader.close()
    unfinished.close()  # must not wait for batches of the stopped workers
    x, _ = next(loader.batches(1))  # and the loader starts new workers
    np.testing.assert_array_equal(x[:, 0, 0, 0], loader.batch_indices(1, 0))
    loader.close()
