"""Backdoor detectors: STRIP (input level), Neural Cleanse (model level), spectral signatures (data level).

* **STRIP** (Gao et al. 2019): an input is superimposed (pixel average, ``0.5 x + 0.5 o``) on
  ``n_overlays`` clean images drawn from a held-out pool; a backdoored input keeps predicting the
  target whatever it is mixed with, so its mean prediction entropy is low. We score every test
  input by minus that entropy and report the AUROC of separating triggered from clean inputs
  (1.0 = STRIP finds every triggered input, 0.5 = no better than chance).
* **Neural Cleanse** (Wang et al. 2019), as in the authors' release (``visualizer.py``,
  ``mad_outlier_detection.py``): for every class ``c`` a mask ``m`` (``H x W``) and a pattern ``P``
  (``C x H x W``), tanh-parametrised in [0, 1] and started at random, are optimised with Adam so
  that ``(1 - m) x + m P`` is classified as ``c`` on clean images, with loss ``CE + cost |m|_1``. The
  cost follows NC's schedule (``CostSchedule``: 0 until the trigger works, then ``init_cost``,
  raised while the attack succeeds on >= 99% of the images, lowered when it does not, early stop);
  the class's norm is that of its smallest mask that reached 99%. So the norms measure "how small a
  trigger flips 99% of the images to ``c``", comparable across classes and victims (with a fixed L1
  weight instead, the masks flip 100% of the images and their size is set by the weight as much as
  by the model). The anomaly index of ``c`` is
  ``(median - |m_c|) / (1.4826 MAD)`` over the classes' norms; only classes below the median can
  be flagged (index > 2). The classes are optimised side by side in one batch (summed losses, so
  each sees only its own gradient); the budget (epochs, batches per epoch) is smaller than the
  authors' 1000 x 31 batches.
* **Spectral signatures** (Tran et al. 2018): penultimate-layer features (the input of the model's
  last ``nn.Linear``) of the samples the defender sees labelled as the target class (the clean
  target-class samples and every poisoned one), centred; the score is the squared projection on
  their top singular vector. We report the AUROC of that score for poisoned vs clean samples and
  the recall of removing the ``1.5 x poisoned count`` top-scored samples (the paper's rule).
AUROC is computed in numpy (ranks with ties averaged), so no scipy/sklearn import is needed here.
"""
import numpy as np

import paddle_suite  # noqa: F401  (sets MKL_DEBUG_CPU_TYPE before paddle loads)
import paddle
import paddle.nn.functional as F


def roc_auc(labels, scores):
    """Exact ROC AUC of ``scores`` for boolean ``labels`` (ties get half credit); NaN with one class."""
    labels = np.asarray(labels, dtype=bool).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each distinct value
    ranks = average_rank[inverse]
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def entropy(probs):
    return -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=-1)


def strip_entropies(predict, images, pool, n_overlays=16, seed=0, chunk=1024):
    """Mean prediction entropy of each uint8 image superimposed on ``n_overlays`` pool images."""
    rng = np.random.default_rng([int(seed), 0x57819])
    overlay_ids = rng.integers(0, len(pool), size=(len(images), n_overlays))
    per_chunk = max(1, chunk // n_overlays)
    out = np.empty(len(images))
    for start in range(0, len(images), per_chunk):
        block = images[start:start + per_chunk].astype(np.uint16)
        overlays = pool[overlay_ids[start:start + per_chunk]].astype(np.uint16)  # [b, n, H, W, C]
        mixed = ((block[:, None] + overlays + 1) // 2).astype(np.uint8)
        probs = predict(mixed.reshape(-1, *images.shape[1:]))
        out[start:start + len(block)] = entropy(probs).reshape(len(block), n_overlays).mean(axis=1)
    return out


def strip_auroc(predict, clean, triggered, pool, n_overlays=16, seed=0):
    """``(auroc, clean entropies, triggered entropies)``; triggered inputs are the positives."""
    h_clean = strip_entropies(predict, clean, pool, n_overlays, seed)
    h_trig = strip_entropies(predict, triggered, pool, n_overlays, seed + 1)
    labels = np.r_[np.zeros(len(h_clean), bool), np.ones(len(h_trig), bool)]
    return roc_auc(labels, -np.r_[h_clean, h_trig]), h_clean, h_trig


class CostSchedule:
    """Neural Cleanse's per-class cost control (Wang et al. 2019, ``visualizer.py`` of the authors'
    release), vectorised over the classes: one call per epoch with each class's attack success and
    mean mask L1 over that epoch.

    * the cost starts at 0; after ``patience`` epochs at success >= ``threshold`` it is set to
      ``init_cost`` (counters and flags reset);
    * then ``patience`` epochs in a row at/above the threshold multiply it by ``multiplier``,
      ``patience`` epochs below divide it by ``multiplier ** 1.5``;
    * the best mask of a class is the one of the epoch with the smallest mean L1 among the epochs
      at/above the threshold (``update`` returns which classes improved: snapshot them);
    * a class stops once its cost went both up and down and its best L1 did not improve (by the
      factor ``early_stop_threshold``) for ``early_stop_patience`` epochs. Stopped classes keep
      their state.
    """

    def __init__(self, num_classes, init_cost=1e-3, patience=5, multiplier=2.0, threshold=0.99,
                 early_stop_patience=25, early_stop_threshold=1.0):
        self.init_cost, self.patience, self.multiplier, self.threshold = init_cost, patience, multiplier, threshold
        self.early_stop_patience, self.early_stop_threshold = early_stop_patience, early_stop_threshold
        k = num_classes
        self.cost = np.zeros(k)
        self.best_reg = np.full(k, np.inf)
        self.early_best = np.full(k, np.inf)
        self.set_counter, self.up_counter, self.down_counter, self.early_counter = (np.zeros(k, int) for _ in range(4))
        self.up_flag, self.down_flag, self.stopped = (np.zeros(k, bool) for _ in range(3))
        self.epochs = np.zeros(k, int)

    def update(self, success, reg):
        """Advance the live classes by one epoch; returns the bool mask of classes whose best improved."""
        live = ~self.stopped
        success, reg = np.asarray(success, float), np.asarray(reg, float)
        ok = success >= self.threshold
        improved = live & ok & (reg < self.best_reg)
        self.best_reg[improved] = reg[improved]
        self.epochs[live] += 1

        found = live & np.isfinite(self.best_reg)
        stale = self.best_reg >= self.early_stop_threshold * self.early_best
        self.early_counter[found] = np.where(stale[found], self.early_counter[found] + 1, 0)
        self.early_best[live] = np.minimum(self.best_reg[live], self.early_best[live])
        self.stopped |= live & self.up_flag & self.down_flag & (self.early_counter >= self.early_stop_patience)
        # the authors' loop checks early stop before adjusting the cost: a class stopping now keeps its cost
        live = ~self.stopped

        waiting = live & (self.cost == 0) & ok
        self.set_counter[live] = np.where(waiting[live], self.set_counter[live] + 1, 0)
        start = live & (self.set_counter >= self.patience)
        self.cost[start] = self.init_cost
        for state in (self.up_counter, self.down_counter, self.up_flag, self.down_flag):
            state[start] = 0

        self.up_counter[live] = np.where(ok[live], self.up_counter[live] + 1, 0)
        self.down_counter[live] = np.where(ok[live], 0, self.down_counter[live] + 1)
        up = live & (self.up_counter >= self.patience)
        down = live & ~up & (self.down_counter >= self.patience)
        self.cost[up] *= self.multiplier
        self.cost[down] /= self.multiplier ** 1.5
        self.up_counter[up], self.down_counter[down] = 0, 0
        self.up_flag |= up
        self.down_flag |= down
        return improved


def mad_anomaly_index(norms):
    """``(median - norm) / (1.4826 MAD)`` per class: positive = smaller mask than typical.

    NC's anomaly index is ``|norm - median| / (1.4826 MAD)`` and only classes *below* the median can
    be flagged (a large mask is no sign of a backdoor); keeping the sign keeps that rule in the value:
    a class is flagged when its index is above 2.
    """
    norms = np.asarray(norms, dtype=np.float64)
    median = np.median(norms)
    mad = 1.4826 * np.median(np.abs(norms - median))
    return (median - norms) / max(mad, 1e-12)


_TANH_EPS = 1e-7  # the authors' K.epsilon(): keeps arctanh of the [0, 1] initial values finite


def _to_tanh(values):
    return np.arctanh((np.asarray(values, np.float64) - 0.5) * (2 - _TANH_EPS)).astype(np.float32)


def _from_tanh(param):
    return paddle.tanh(param) / (2 - _TANH_EPS) + 0.5


def neural_cleanse(model, images, mean, std, num_classes, max_epochs=100, epoch_steps=10, batch_size=32, lr=0.1,
                   init_cost=1e-3, patience=5, success_threshold=0.99, check_images=256, seed=0):
    """Reverse-engineer the smallest trigger of every class on clean uint8 NHWC ``images``.

    Per class ``c`` a mask ``m`` (``H x W``) and pattern ``P`` (``C x H x W``), both ``tanh(w)/2 + 0.5``
    of free parameters started uniformly at random, are optimised with Adam (``lr``, betas 0.5/0.9)
    so that ``(1 - m) x + m P`` is classified as ``c``: loss ``CE + cost_c |m|_1``, with ``cost_c``
    driven by ``CostSchedule`` (starts at 0, ``init_cost`` once the trigger works, then up/down
    around ``success_threshold``). An epoch is ``epoch_steps`` batches of ``batch_size`` images; a
    class stops early per the schedule or after ``max_epochs``. The classes are optimised side by
    side in one batch (their losses are summed, so each class's parameters see only their own
    gradient, as if optimised alone). A class's reported mask is its best one: smallest epoch-mean
    L1 among epochs at/above ``success_threshold`` (its last mask if none reached it: ``reached``).

    The authors ran up to 1000 epochs of 31 batches of 32 (``NB_SAMPLE = 1000``) with patience 5 and
    multiplier 2, early stop after 25 stale epochs; ``max_epochs``/``epoch_steps`` shrink that budget
    for CPU runs (``Backdoor.detectors.nc_*``).

    Returns ``{"mask_l1", "anomaly_index", "flip_rate", "reached", "epochs", "cost"}``, lists of ``K``
    (flip_rate: share of ``check_images`` fresh images classified as the class under its reported trigger).
    """
    n, h, w, c = images.shape
    rng = np.random.default_rng([int(seed), 0x4C])
    mean_t = paddle.to_tensor(np.asarray(mean, np.float32).reshape(1, c, 1, 1))
    std_t = paddle.to_tensor(np.asarray(std, np.float32).reshape(1, c, 1, 1))

    def parameter(initial):
        return paddle.create_parameter(list(initial.shape), "float32",
                                       default_initializer=paddle.nn.initializer.Assign(initial))

    mask_param = parameter(_to_tanh(rng.random((num_classes, 1, h, w))))
    pattern_param = parameter(_to_tanh(rng.random((num_classes, c, h, w))))
    optimizer = paddle.optimizer.Adam(lr, beta1=0.5, beta2=0.9, parameters=[mask_param, pattern_param])
    schedule = CostSchedule(num_classes, init_cost, patience, threshold=success_threshold,
                            early_stop_patience=5 * patience)

    def logits_of(batch, mask, pattern):  # batch uint8 [b, H, W, C]; mask [K, 1, H, W]; pattern [K, C, H, W]
        x = paddle.to_tensor(batch.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
        adv = (1 - mask[:, None]) * x[None] + (mask * pattern)[:, None]  # [K, b, C, H, W]
        return model((adv.reshape([-1, c, h, w]) - mean_t) / std_t).reshape([num_classes, len(batch), -1])

    labels = paddle.to_tensor(np.repeat(np.arange(num_classes), batch_size).reshape(num_classes, batch_size, 1))
    frozen = [p for p in model.parameters() if not p.stop_gradient]
    for p in frozen:
        p.stop_gradient = True
    model.eval()
    best_mask = np.zeros((num_classes, 1, h, w), np.float32)
    best_pattern = np.zeros((num_classes, c, h, w), np.float32)
    try:
        for _ in range(max_epochs):
            hits, l1 = np.zeros(num_classes), np.zeros(num_classes)
            for _ in range(epoch_steps):
                mask, pattern = _from_tanh(mask_param), _from_tanh(pattern_param)
                logits = logits_of(images[rng.integers(0, n, size=batch_size)], mask, pattern)
                norms = mask.sum(axis=[1, 2, 3])  # the mask is in [0, 1]: its sum is its L1 norm
                ce = F.cross_entropy(logits, labels, reduction="none").mean(axis=[1, 2])
                cost = paddle.to_tensor(schedule.cost.astype(np.float32))
                (ce + cost * norms).sum().backward()
                optimizer.step()
                optimizer.clear_grad()
                hits += (logits.argmax(axis=-1) == labels[..., 0]).astype("float32").mean(axis=1).numpy()
                l1 += norms.numpy()
            improved = schedule.update(hits / epoch_steps, l1 / epoch_steps)
            # snapshot the epoch's final mask of the classes that improved (as the authors do)
            best_mask[improved] = _from_tanh(mask_param).numpy()[improved]
            best_pattern[improved] = _from_tanh(pattern_param).numpy()[improved]
            if schedule.stopped.all():
                break
        reached = np.isfinite(schedule.best_reg)
        best_mask[~reached] = _from_tanh(mask_param).numpy()[~reached]
        best_pattern[~reached] = _from_tanh(pattern_param).numpy()[~reached]
        with paddle.no_grad():
            check = images[rng.integers(0, n, size=check_images)]
            logits = logits_of(check, paddle.to_tensor(best_mask), paddle.to_tensor(best_pattern))
            flip_rate = (logits.argmax(axis=-1).numpy() == np.arange(num_classes)[:, None]).mean(axis=1)
    finally:
        for p in frozen:
            p.stop_gradient = False
    norms = best_mask.reshape(num_classes, -1).sum(axis=1).astype(np.float64)
    return {"mask_l1": norms.tolist(), "anomaly_index": mad_anomaly_index(norms).tolist(),
            "flip_rate": flip_rate.tolist(), "reached": reached.tolist(), "epochs": schedule.epochs.tolist(),
            "cost": schedule.cost.tolist()}


def penultimate_features(model, batches):
    """Inputs of the model's last ``nn.Linear`` for float NCHW ``batches`` (numpy ``[N, D]``)."""
    last = [layer for layer in model.sublayers() if isinstance(layer, paddle.nn.Linear)]
    if not last:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer: spectral signatures need its input features")
    captured = []
    hook = last[-1].register_forward_pre_hook(lambda layer, inputs: captured.append(inputs[0].numpy()))
    try:
        with paddle.no_grad():
            for images in batches:
                model(paddle.to_tensor(images))
    finally:
        hook.remove()
    return np.concatenate(captured).reshape(sum(len(x) for x in captured), -1)


def spectral_signature(features, is_poisoned, removal_factor=1.5):
    """``{"auroc", "recall"}`` of the top-singular-vector outlier score over one class's features."""
    features = np.asarray(features, dtype=np.float64)
    centred = features - features.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    scores = (centred @ vt[0]) ** 2
    is_poisoned = np.asarray(is_poisoned, dtype=bool)
    removed = np.argsort(-scores)[:int(round(removal_factor * is_poisoned.sum()))]
    recall = float(is_poisoned[removed].sum() / max(is_poisoned.sum(), 1))
    return {"auroc": roc_auc(is_poisoned, scores), "recall": recall}
