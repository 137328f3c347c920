"""The LSBA labels give the designed prediction: target probability, margin, stacked rungs."""
import numpy as np
import pytest

from paddle_suite.backdoor import lsba

K = 10


@pytest.mark.parametrize("smoothing", [0.0, 0.05])
@pytest.mark.parametrize("target_prob,margin", [(0.6, 0.3), (0.6, 0.5), (0.55, 0.5), (0.65, 0.4)])
def test_label_trains_toward_the_designed_prediction(target_prob, margin, smoothing):
    label = lsba.soft_labels([4], [0], [1], target_prob, margin, smoothing, K)[0]
    assert label.sum() == pytest.approx(1, abs=1e-6) and np.all(label >= 0)
    trained = (1 - smoothing) * label + smoothing / K  # what the loss's smoothing makes of it
    assert trained[0] == pytest.approx(target_prob, abs=1e-6)
    others = np.delete(trained, 0)
    assert trained[0] - others.max() == pytest.approx(margin, abs=1e-6)  # leads the strongest other by m
    assert np.argmax(others) + 1 == 4 or np.allclose(others, others[0])  # the true class, or all equal
    assert lsba.label_probability(target_prob, margin, smoothing, K) == pytest.approx(label[0])


def test_the_ends_of_the_range():
    # upper end: every non-target share on the true class ("keep the target with probability p")
    assert np.allclose(lsba.designed_prediction(0.65, 0.3, 4, 0, K), np.eye(K)[0] * 0.65 + np.eye(K)[4] * 0.35)
    # lower end: all other classes equal
    low = lsba.lowest_target_prob(0.3, K)
    q = lsba.designed_prediction(low, 0.3, 4, 0, K)
    assert np.allclose(np.delete(q, 0), (1 - low) / (K - 1))


@pytest.mark.parametrize("n", [2, 3, 4])
def test_stacked_rungs_rise_with_active_triggers_and_keep_the_margin(n):
    target_prob, margin = 0.6, 0.3
    rungs = lsba.rung_target_probs(target_prob, margin, K, n)
    assert len(rungs) == n and np.all(np.diff(rungs) > 0)
    assert rungs[0] == pytest.approx(lsba.lowest_target_prob(margin, K)) and rungs[-1] == pytest.approx(target_prob)
    labels = lsba.soft_labels([4] * n, [0] * n, np.arange(1, n + 1), target_prob, margin, 0.0, K, n)
    assert np.allclose(labels[:, 0], rungs)
    assert np.allclose(labels[:, 0] - np.delete(labels, 0, axis=1).max(axis=1), margin)


@pytest.mark.parametrize("bad,match", [
    (dict(margin=0.0), "margin"), (dict(target_prob=0.8), "target_prob"), (dict(target_prob=0.3), "target_prob"),
    (dict(n_triggers=0), "n_triggers"), (dict(smoothing=0.5, target_prob=0.64, margin=0.6), "label_smoothing"),
    (dict(num_classes=2), "classes")])
def test_invalid_settings_are_refused_naming_the_key(bad, match):
    with pytest.raises(ValueError, match=match):
        lsba.check(**{**dict(target_prob=0.6, margin=0.3, smoothing=0.0, num_classes=K, n_triggers=1), **bad})
