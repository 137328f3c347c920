"""Triggers are deterministic and shape-preserving; poisoning has the configured count and labels."""
import numpy as np
import pytest

from paddle_suite.backdoor import lsba, poison
from paddle_suite.backdoor.triggers import ATTACKS, apply_stack, make_trigger


def batch(shape=(6, 32, 32, 3), seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.int64).astype(np.uint8)


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("shape", [(6, 32, 32, 3), (4, 28, 28, 1)])
def test_trigger_deterministic_shape_preserving_and_visible(attack, shape):
    images = batch(shape)
    before = images.copy()
    first = make_trigger(attack)(images)
    second = make_trigger(attack)(images)  # a fresh object: nothing depends on state
    assert first.dtype == np.uint8 and first.shape == images.shape
    assert np.array_equal(first, second)
    assert np.array_equal(images, before), "the input batch must not be modified"
    assert np.abs(first.astype(int) - images).mean() > 0.5, "the trigger must change the image"
    # per-sample: triggering a sub-batch gives the same rows as triggering the whole batch
    assert np.array_equal(make_trigger(attack)(images[2:4]), first[2:4])


@pytest.mark.parametrize("attack", ATTACKS)
def test_stacked_variants_differ(attack):
    images = batch()
    a, b = make_trigger(attack, index=0)(images), make_trigger(attack, index=1)(images)
    assert not np.array_equal(a, b)
    both = apply_stack([make_trigger(attack, index=0), make_trigger(attack, index=1)], images)
    assert both.shape == images.shape and not np.array_equal(both, a)


def test_badnets_patch_is_exactly_the_configured_square():
    images = np.zeros((2, 10, 10, 3), np.uint8)
    out = make_trigger("badnets", {"patch_size": 3, "patch_margin": 1})(images)
    mask = np.zeros((10, 10), bool)
    mask[6:9, 6:9] = True
    assert not out[:, ~mask].any()
    assert np.array_equal(out[0, 6:9, 6:9, 0], [[255, 0, 255], [0, 255, 0], [255, 0, 255]])


def test_unknown_trigger_key_is_refused():
    with pytest.raises(ValueError, match="alpha"):
        make_trigger("badnets", {"alpha": 0.3})


def labels_of(n=1000, classes=10, seed=1):
    return np.random.default_rng(seed).integers(0, classes, n)


@pytest.mark.parametrize("mode", poison.MODES)
def test_exact_poison_count_seeded_and_eligible(mode):
    labels = labels_of()
    idx, active = poison.select_poison(labels, 0.1, 3, mode, False, 2, seed=5)
    assert len(idx) == 100 and len(np.unique(idx)) == 100 and np.all(np.diff(idx) > 0)
    assert active.shape == (100, 2) and np.bincount(active.sum(axis=1)).tolist() == [0, 50, 50]
    again, _ = poison.select_poison(labels, 0.1, 3, mode, False, 2, seed=5)
    other, _ = poison.select_poison(labels, 0.1, 3, mode, False, 2, seed=6)
    assert np.array_equal(idx, again) and not np.array_equal(idx, other)
    if mode == "all_to_one":
        assert np.all(labels[idx] != 3)


def test_clean_label_poisons_only_target_class_and_too_many_is_an_error():
    labels = labels_of()
    idx, _ = poison.select_poison(labels, 0.05, 3, "all_to_one", True, 1, seed=0)
    assert len(idx) == 50 and np.all(labels[idx] == 3)
    with pytest.raises(ValueError, match="lower Backdoor.poison_rate"):
        poison.select_poison(labels, 0.5, 3, "all_to_one", True, 1, seed=0)


@pytest.mark.parametrize("mode", poison.MODES)
def test_label_distribution_plain_and_lsba(mode):
    labels = labels_of()
    idx, _ = poison.select_poison(labels, 0.1, 3, mode, False, 1, seed=0)
    targets = poison.target_labels(labels, 3, mode, 10)
    hard = poison.poisoned_labels(labels, idx, targets, 10)
    changed = np.flatnonzero(hard != labels)
    assert np.array_equal(changed, idx) and np.all(hard[idx] == targets[idx])
    expected = np.bincount(labels, minlength=10) - np.bincount(labels[idx], minlength=10) \
        + np.bincount(targets[idx], minlength=10)
    assert np.array_equal(np.bincount(hard, minlength=10), expected)
    rows = lsba.soft_labels(labels[idx], targets[idx], np.ones(len(idx), int), 0.7, 0.4)
    soft = poison.poisoned_labels(labels, idx, targets, 10, rows)
    assert soft.shape == (1000, 10) and np.allclose(soft.sum(axis=1), 1)
    clean = np.setdiff1d(np.arange(1000), idx)
    assert np.array_equal(soft[clean].argmax(axis=1), labels[clean]) and np.all(soft[clean].max(axis=1) == 1)
    assert np.allclose(soft[idx, targets[idx]], 0.7) and np.allclose(soft[idx, labels[idx]], 0.3)
    assert np.allclose(soft.sum(axis=0), expected - 0.3 * np.bincount(targets[idx], minlength=10)
                       + 0.3 * np.bincount(labels[idx], minlength=10))


def test_stacked_poisoning_deals_every_rung_with_random_subsets():
    labels = labels_of(3000)
    idx, active = poison.select_poison(labels, 0.1, 3, "all_to_one", False, 3, seed=2)
    count = active.sum(axis=1)
    assert np.bincount(count).tolist() == [0, 100, 100, 100]
    for k in (1, 2):  # every trigger appears on the partial rungs, not always the first ones
        assert np.all(active[count == k].sum(axis=0) > 10)
    again, active_again = poison.select_poison(labels, 0.1, 3, "all_to_one", False, 3, seed=2)
    assert np.array_equal(idx, again) and np.array_equal(active, active_again)
