"""Detector building blocks on inputs whose answer is known."""
import numpy as np
import pytest

from paddle_suite.backdoor import detectors


def test_roc_auc_matches_pair_counting_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.3
    scores = rng.integers(0, 8, 300).astype(float) + labels  # ties on purpose
    pos, neg = scores[labels], scores[~labels]
    pairs = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
    assert detectors.roc_auc(labels, scores) == pytest.approx(pairs)
    assert np.isnan(detectors.roc_auc(np.ones(3), [1, 2, 3]))


def test_mad_anomaly_index_flags_the_small_outlier():
    norms = np.array([100.0, 104, 96, 101, 99, 103, 97, 20])
    index = detectors.mad_anomaly_index(norms)
    assert np.argmax(index) == 7 and index[7] > 2 and np.all(index[:7] < 2)


def test_strip_separates_an_input_that_ignores_overlays():
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 200, size=(50, 8, 8, 1), dtype=np.int64).astype(np.uint8)

    def predict(images):  # a "backdoored" classifier: a bright top-left pixel (> 100) forces class 0
        flat = images.reshape(len(images), -1).astype(float)
        logits = np.stack([flat[:, :4].mean(1) / 8, flat[:, 4:8].mean(1) / 8, flat[:, 8:12].mean(1) / 8], 1)
        logits[images[:, 0, 0, 0] > 100, 0] += 50
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    clean = pool[:20]
    triggered = clean.copy()
    triggered[:, 0, 0, 0] = 255
    pool[:, 0, 0, 0] = 0  # a superimposed trigger pixel averages to 128 (still on), a clean one to <= 100
    auroc, h_clean, h_trig = detectors.strip_auroc(predict, clean, triggered, pool, n_overlays=8)
    assert auroc > 0.95 and h_trig.mean() < h_clean.mean()


def test_spectral_signature_finds_a_small_shifted_cluster():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((500, 16))
    poisoned = np.zeros(500, bool)
    poisoned[:40] = True
    features[poisoned] += 4 * np.eye(16)[3]
    result = detectors.spectral_signature(features, poisoned)
    assert result["auroc"] > 0.95 and result["recall"] > 0.9


def run_schedule(schedule, epochs):
    """Feed ``(success, reg)`` per epoch; returns the cost after each epoch ([epochs, K])."""
    costs = []
    for success, reg in epochs:
        schedule.update(success, reg)
        costs.append(schedule.cost.copy())
    return np.array(costs)


def test_cost_schedule_starts_raises_and_lowers_the_cost_per_class():
    schedule = detectors.CostSchedule(2, init_cost=1e-3, patience=3, multiplier=2.0, threshold=0.99)
    # class 0 succeeds for 9 epochs then fails for 3; class 1 never succeeds
    epochs = [([1.0, 0.5], [10.0, 5.0])] * 9 + [([0.5, 0.5], [10.0, 5.0])] * 3
    costs = run_schedule(schedule, epochs)
    assert np.all(costs[:2, 0] == 0) and costs[2, 0] == 1e-3  # set after `patience` successful epochs
    # the epoch that sets the cost already counts towards the next raise (as in the authors' loop)
    assert costs[3, 0] == 1e-3 and costs[4, 0] == 2e-3 and costs[6, 0] == 2e-3 and costs[7, 0] == 4e-3
    assert costs[11, 0] == pytest.approx(4e-3 / 2 ** 1.5)  # / 2^1.5 after 3 failures
    assert np.all(costs[:, 1] == 0)  # a class that never works keeps cost 0
    assert not np.isfinite(schedule.best_reg[1])


def test_cost_schedule_keeps_the_smallest_successful_mask_and_stops_early():
    schedule = detectors.CostSchedule(1, patience=1, early_stop_patience=4)
    regs = [50.0, 40.0, 8.0, 30.0, 20.0, 20.0, 20.0, 20.0, 20.0, 20.0]
    success = [1.0, 1.0, 0.5, 1.0, 1.0, 0.5, 1.0, 0.5, 1.0, 0.5]  # reg 8.0 failed: not a trigger
    improved = [bool(schedule.update([s], [r])[0]) for s, r in zip(success, regs)]
    assert schedule.best_reg[0] == 20.0
    assert improved[:5] == [True, True, False, True, True] and not any(improved[5:])
    # the cost went up and down; then the best stayed at 20 for 4 more epochs: stop after the 9th epoch
    assert schedule.up_flag[0] and schedule.down_flag[0] and schedule.stopped[0] and schedule.epochs[0] == 9
    frozen = schedule.cost.copy()
    schedule.update([1.0], [1.0])
    assert schedule.best_reg[0] == 20.0 and schedule.cost[0] == frozen[0] and schedule.epochs[0] == 9


class PlantedBackdoor:
    """A fixed classifier of 12 x 12 grey images: class c scores 8 x the mean of its own 2-row band;
    class 0 also gets a bonus that is small on clean images (all pixels below 0.8) and large once the
    bottom-right pixel is bright: a one-pixel backdoor, while every other class needs a band painted
    over several pixels."""

    def __init__(self, num_classes=5):
        import paddle

        self.num_classes = num_classes
        self.bands = paddle.to_tensor(np.repeat(np.eye(num_classes, 6, dtype=np.float32), 2, axis=1))  # [K, 12]

    def __call__(self, x):  # x [N, 1, 12, 12] in [0, 1]
        import paddle
        import paddle.nn.functional as F

        rows = x[:, 0].mean(axis=2)  # [N, 12]
        scores = 8 * paddle.matmul(rows, self.bands, transpose_y=True)  # [N, K]
        trigger = 4 * F.softplus(10 * (x[:, 0, 11, 11] - 0.8))  # ~0.1 on clean pixels, 8.5 at 1.0
        return scores + paddle.concat([trigger[:, None], paddle.zeros([len(x), self.num_classes - 1])], axis=1)

    def parameters(self):
        return []

    def eval(self):
        return self


def test_neural_cleanse_finds_the_one_pixel_trigger_of_a_planted_backdoor():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 205, size=(400, 12, 12, 1)).astype(np.uint8)  # below 0.8 x 255
    model = PlantedBackdoor()
    result = detectors.neural_cleanse(model, images, [0.0], [1.0], 5, max_epochs=80, epoch_steps=5, batch_size=32,
                                      seed=0)
    l1, index = np.array(result["mask_l1"]), np.array(result["anomaly_index"])
    assert all(result["reached"]) and min(result["flip_rate"]) > 0.9
    assert l1[0] < 2 and np.all(l1[1:] > 4)  # about one pixel vs a painted band
    assert index[0] > 2 and np.all(index[1:] < 2)
