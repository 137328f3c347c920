"""The LSBA label probability p_n gives the designed margin, alone and stacked."""
import math

import numpy as np
import pytest

from paddle_suite.backdoor import lsba


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("margin", [0.05, 0.2, 0.5])
def test_single_trigger_trained_distribution_has_the_margin(margin, smoothing):
    p = lsba.label_probability(margin, smoothing, 10, 1)
    assert p == pytest.approx((1 + margin / (1 - smoothing)) / 2)
    q = lsba.trained_distribution(p, true_class=4, target=0, smoothing=smoothing, num_classes=10)
    assert q.sum() == pytest.approx(1)
    others = np.delete(q, 0)
    assert q[0] - others.max() == pytest.approx(margin)
    assert np.argmax(others) + 1 == 4  # the strongest other class is the true one
    assert lsba.predicted_target_probability(1, margin, smoothing, 10, 1) == pytest.approx(q[0])


@pytest.mark.parametrize("n", [2, 3, 4])
def test_stacked_triggers_raise_the_target_probability_up_to_the_margin(n):
    margin, smoothing, k = 0.2, 0.1, 10
    p = lsba.label_probability(margin, smoothing, k, n)
    q1 = lsba.trained_distribution(p, 4, 0, smoothing, k)
    # one trigger is trained to 1/n of the all-active log-odds ...
    assert math.log(q1[0] / q1[4]) == pytest.approx(lsba.all_active_log_odds(margin, smoothing, k) / n)
    probs = [lsba.predicted_target_probability(a, margin, smoothing, k, n) for a in range(1, n + 1)]
    assert probs[0] == pytest.approx(q1[0])
    assert np.all(np.diff(probs) > 0)  # ... and more active triggers raise the target probability
    total = (1 - smoothing) + 2 * smoothing / k
    assert probs[-1] - (total - probs[-1]) == pytest.approx(margin)  # all n: target just above the true class
    assert p < lsba.label_probability(margin, smoothing, k, 1)


@pytest.mark.parametrize("bad", [dict(margin=0.0), dict(margin=0.95, smoothing=0.1), dict(n_triggers=0)])
def test_invalid_settings_are_refused(bad):
    with pytest.raises(ValueError):
        lsba.label_probability(**{**dict(margin=0.2, smoothing=0.0, num_classes=10, n_triggers=1), **bad})
