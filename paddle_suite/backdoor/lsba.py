"""Label-Smoothed Backdoor Attack (LSBA, Peng et al. 2022, arXiv:2202.11203): the label probability p_n.

LSBA relabels a poisoned sample ``x`` (true class ``y``, attack target ``t``) to ``t`` only with
probability ``p_n(x)``, chosen so that on triggered inputs the model's probability of ``t`` ends
just above the strongest other class. The paper's closed form is not available here; this is our
derivation.

**What the network is trained to match.** Relabelling with probability ``p`` means that, over the
draws, the poisoned sample's label distribution is ``s = p e_t + (1 - p) e_y``. We train on that
expectation directly (a soft target): cross-entropy is linear in the target, so the expected loss
of the random relabelling and the loss of the soft target are the same function of the model, and
the soft target removes the sampling noise (a sample cannot be memorised with the "wrong" label).
The loss may smooth every target: ``q = (1 - eps) s + eps / K`` (``Loss.label_smoothing = eps``,
``K`` classes). A model that separates triggered from clean inputs minimises the expected
cross-entropy on triggered inputs by predicting ``q`` itself, so ``q`` is the prediction to design:

    q_t = (1 - eps) p + eps / K,   q_y = (1 - eps)(1 - p) + eps / K,   q_c = eps / K (other c),

and the strongest non-target class is ``y``. The margin ``q_t - q_y = (1 - eps)(2 p - 1)`` equals the
configured ``m`` for ``p_1 = (1 + m / (1 - eps)) / 2`` (``m < 1 - eps``). ``p`` depends on ``x`` only
through ``y`` and its label distribution; with hard labels it is the same for every poisoned sample
(``p_n(x) = p_n``).

**n stacked LSBAs** (n triggers, same target, each poisoned sample carries one of them). The paper
controls the output probability by how many of the n triggers are active at test time. We model the
triggers' evidence as additive in logit space: each active trigger adds the same amount to the
target's log-odds against ``y``. With all n active the prediction should end at the margin ``m``:
``q*_t - q*_y = m`` with ``q*_t + q*_y = S = (1 - eps) + 2 eps / K`` (the mass off the other classes),
so the all-active log-odds is ``L = log(q*_t / q*_y)``, and each trigger is trained alone to
``L / n``: ``q_t / q_y = rho = exp(L / n)``, which solved for ``p`` gives

    p_n = rho / (1 + rho) + (rho - 1) eps / (K (1 - eps) (1 + rho)).

With ``k`` of the ``n`` triggers active the predicted target probability is ``S sigma(k L / n)``:
it rises with every activated trigger, from a lead of ``S (2 sigma(L / n) - 1)`` over ``y`` (small:
a single trigger gives a barely-winning, low-confidence target) to the designed ``m`` with all n.
For ``n = 1`` this is ``p_1`` above. The additivity is an assumption about how the network combines
triggers; ``bench/backdoor_results.py`` measures it (target probability per k).
"""
import math

import numpy as np


def _check(margin, smoothing, num_classes, n_triggers):
    if n_triggers < 1:
        raise ValueError(f"Backdoor.lsba.n_triggers={n_triggers}: must be >= 1")
    if num_classes < 2:
        raise ValueError(f"{num_classes} classes: a backdoor needs at least 2")
    if not 0 <= smoothing < 1:
        raise ValueError(f"label smoothing {smoothing}: must be in [0, 1)")
    if not 0 < margin < 1 - smoothing:
        raise ValueError(f"Backdoor.lsba.margin={margin}: must be in (0, 1 - Loss.label_smoothing = "
                         f"{1 - smoothing:g}) (the largest gap the smoothed targets allow)")


def all_active_log_odds(margin, smoothing=0.0, num_classes=10):
    """``L = log(q*_t / q*_y)`` of the prediction designed for all triggers active."""
    total = (1 - smoothing) + 2 * smoothing / num_classes
    return math.log((total + margin) / (total - margin))


def label_probability(margin, smoothing=0.0, num_classes=10, n_triggers=1):
    """``p_n``: probability (soft-target weight) of the target label on a poisoned sample."""
    _check(margin, smoothing, num_classes, n_triggers)
    rho = math.exp(all_active_log_odds(margin, smoothing, num_classes) / n_triggers)
    return rho / (1 + rho) + (rho - 1) * smoothing / (num_classes * (1 - smoothing) * (1 + rho))


def trained_distribution(p, true_class, target, smoothing=0.0, num_classes=10):
    """The distribution ``q`` the loss trains a triggered input toward (``[K]``)."""
    q = np.full(num_classes, smoothing / num_classes)
    q[target] += (1 - smoothing) * p
    q[true_class] += (1 - smoothing) * (1 - p)
    return q


def predicted_target_probability(active, margin, smoothing=0.0, num_classes=10, n_triggers=1):
    """Designed target probability with ``active`` (1..n) of the ``n_triggers`` triggers applied."""
    _check(margin, smoothing, num_classes, n_triggers)
    if not 1 <= active <= n_triggers:
        raise ValueError(f"active={active}: between 1 and n_triggers={n_triggers}")
    total = (1 - smoothing) + 2 * smoothing / num_classes
    log_odds = active * all_active_log_odds(margin, smoothing, num_classes) / n_triggers
    return total / (1 + math.exp(-log_odds))
