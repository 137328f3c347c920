"""Label-Smoothed Backdoor Attack (LSBA, Peng et al. 2022, arXiv:2202.11203): the poisoned labels.

LSBA relabels a poisoned sample ``x`` (true class ``y``, attack target ``t``) to ``t`` only with
probability ``p_n(x)``, chosen so that on triggered inputs the model's probability of ``t`` ends
"only slightly greater than those of the other classes". The paper's closed form is not available
here; this is our derivation.

**What the network is trained to match.** Relabelling at random means that, over the draws, the
poisoned sample's label is a distribution ``s``; we train on that expectation directly (a soft
target): cross-entropy is linear in the target, so the expected loss of the random relabelling and
the loss of the soft target are the same function of the model, without the sampling noise. The loss
may smooth every target (``Loss.label_smoothing = eps``, ``K`` classes) to ``(1 - eps) s + eps / K``;
a model that tells triggered from clean inputs minimises the expected cross-entropy on them by
predicting that smoothed target, so we design the *prediction* ``q`` and set ``s = (q - eps / K) /
(1 - eps)``.

**The designed prediction** (``Backdoor.lsba.target_prob = P``, ``Backdoor.lsba.margin = m``):

    q_t = P,   q_y = P - m,   q_c = (1 - 2 P + m) / (K - 2) for every other class c,

so the target leads the strongest other class, the true one, by exactly ``m``. It exists for
``(1 + (K - 1) m) / K <= P <= (1 + m) / 2``: at the upper end everything off the target stays on the
true class (``s = P e_t + (1 - P) e_y``, the plain "keep the target with probability p"), at the
lower end every other class is equal. Why not simply the upper end: the network adds the trigger's
evidence to the image's own, so a triggered input whose non-target mass is meant to sit on its true
class lands on either side of the target, depending on how sure the network is of the image. Moving
part of that mass off the true class asks the network to override the image's evidence, as a plain
attack does, but to a calibrated confidence. On a Fashion-MNIST LeNet BadNets victim with ``P = 0.6``,
the default ``m = 0.4`` (true class 0.2, the other eight 0.025 each) gave a higher attack success rate
and a target probability held more tightly around ``P`` than the upper end ``m = 0.2``, at the same
clean accuracy (measurements: ``bench/backdoor_config_notes.md``). ``p_n(x)`` depends on ``x`` through
``y`` (which class keeps ``P - m``).

**n stacked LSBAs** (n triggers, same target). Activating ``k`` of them at test time should set the
target probability; the additive-evidence assumption (train each trigger alone, expect k of them to
add up in logit space) measured badly (on a two-trigger LeNet victim one trigger alone fell short of
its designed target probability and both together overshot theirs; ``bench/backdoor_config_notes.md``),
so the training set states the ladder itself: each poisoned sample carries a random subset of ``k``
triggers (``k`` dealt evenly over 1..n) and the label designed for ``k``. Every rung keeps the margin
``m`` over the strongest other class; the target probability rises linearly in ``k`` from the lowest
value the margin allows, ``P_1 = (1 + (K - 1) m) / K`` (all other classes equal), to ``P_n = P``:

    P_k = P_1 + (k - 1) (P - P_1) / (n - 1).

With ``n = 1`` the only rung is ``P``. The report gives the target probability per ``k``
(``target_prob_k<k>``) beside the designed ``P_k``; ``bench/backdoor_results.py`` trains a stacked victim.
"""
import numpy as np


def lowest_target_prob(margin, num_classes):
    """Smallest target probability with which the target can lead every other class by ``margin``."""
    return (1 + (num_classes - 1) * margin) / num_classes


def check(target_prob, margin, smoothing=0.0, num_classes=10, n_triggers=1):
    """Raise ``ValueError`` naming the setting when the designed prediction cannot exist."""
    if n_triggers < 1:
        raise ValueError(f"Backdoor.lsba.n_triggers={n_triggers}: must be >= 1")
    if num_classes < 3:
        raise ValueError(f"{num_classes} classes: LSBA designs a target, a true and other classes (needs >= 3)")
    if not 0 <= smoothing < 1:
        raise ValueError(f"label smoothing {smoothing}: must be in [0, 1)")
    if not 0 < margin < 1:
        raise ValueError(f"Backdoor.lsba.margin={margin}: must be in (0, 1)")
    low, high = lowest_target_prob(margin, num_classes), (1 + margin) / 2
    if not low <= target_prob <= high:
        raise ValueError(f"Backdoor.lsba.target_prob={target_prob}: with Backdoor.lsba.margin={margin} and "
                         f"{num_classes} classes it must be in [{low:.4f}, {high:.4f}] (the target leads the true "
                         "class by the margin and no other class exceeds the true one)")
    floor = min(designed_prediction(p, margin, 1, 0, num_classes).min()
                for p in rung_target_probs(target_prob, margin, num_classes, n_triggers))
    if floor < smoothing / num_classes - 1e-12:
        raise ValueError(f"Loss.label_smoothing={smoothing} puts {smoothing / num_classes:.4f} on every class, more "
                         f"than the designed {floor:.4f} of some class: lower the smoothing or move "
                         "Backdoor.lsba.target_prob toward its lower end")


def rung_target_probs(target_prob, margin, num_classes=10, n_triggers=1):
    """``[P_1, ..., P_n]``: designed target probability with ``k`` = 1..n triggers active."""
    if n_triggers == 1:
        return np.array([target_prob])
    low = lowest_target_prob(margin, num_classes)
    return low + np.arange(n_triggers) * (target_prob - low) / (n_triggers - 1)


def designed_prediction(target_prob, margin, true_class, target, num_classes=10):
    """The prediction ``q`` (``[K]``) designed for a triggered input of class ``true_class``."""
    q = np.full(num_classes, (1 - 2 * target_prob + margin) / (num_classes - 2))
    q[target], q[true_class] = target_prob, target_prob - margin
    return q


def soft_labels(true_classes, targets, active_counts, target_prob, margin, smoothing=0.0, num_classes=10,
                n_triggers=1):
    """float32 soft labels ``[N, K]`` of poisoned samples with ``active_counts`` (1..n) triggers each:
    the designed prediction of their rung, unsmoothed so that the loss's smoothing lands on it."""
    check(target_prob, margin, smoothing, num_classes, n_triggers)
    true_classes, targets = np.asarray(true_classes), np.asarray(targets)
    p = rung_target_probs(target_prob, margin, num_classes, n_triggers)[np.asarray(active_counts) - 1]
    rows = np.arange(len(true_classes))
    q = np.repeat(((1 - 2 * p + margin) / (num_classes - 2))[:, None], num_classes, axis=1)
    q[rows, targets], q[rows, true_classes] = p, p - margin
    return ((q - smoothing / num_classes) / (1 - smoothing)).astype(np.float32)


def label_probability(target_prob, margin, smoothing=0.0, num_classes=10, n_triggers=1):
    """``p_n``: the target's weight in the label of a sample with all ``n`` triggers (reported)."""
    return float(soft_labels([1], [0], [n_triggers], target_prob, margin, smoothing, num_classes, n_triggers)[0, 0])
