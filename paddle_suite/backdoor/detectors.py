"""Backdoor detectors: STRIP (input level), Neural Cleanse (model level), spectral signatures (data level).

* **STRIP** (Gao et al. 2019): an input is superimposed (pixel average, ``0.5 x + 0.5 o``) on
  ``n_overlays`` clean images drawn from a held-out pool; a backdoored input keeps predicting the
  target whatever it is mixed with, so its mean prediction entropy is low. We score every test
  input by minus that entropy and report the AUROC of separating triggered from clean inputs
  (1.0 = STRIP finds every triggered input, 0.5 = no better than chance).
* **Neural Cleanse** (Wang et al. 2019): for every class ``c`` a mask ``m`` (``H x W``, sigmoid of a
  free parameter) and a pattern ``P`` (``C x H x W``, sigmoid) are optimised with Adam so that
  ``(1 - m) x + m P`` is classified as ``c`` on clean images, with an L1 penalty ``lam |m|_1``. All
  classes are optimised together as one batch. A backdoor target needs an unusually small mask;
  the anomaly index of class ``c`` is ``(median - |m_c|) / (1.4826 MAD)`` over the classes'
  mask norms (NC flags a class above 2). We use a fixed ``lam`` (``Backdoor.detectors.nc_lambda``)
  instead of NC's adaptive schedule, so the norms of all classes come from the same objective.
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


def mad_anomaly_index(norms):
    """``(median - norm) / (1.4826 MAD)`` per class (positive = smaller mask than typical)."""
    norms = np.asarray(norms, dtype=np.float64)
    median = np.median(norms)
    mad = 1.4826 * np.median(np.abs(norms - median))
    return (median - norms) / max(mad, 1e-12)


def neural_cleanse(model, images, mean, std, num_classes, steps=300, lr=0.1, lam=1e-3, batch_size=32, seed=0):
    """Reverse-engineer one trigger per class on clean uint8 ``images``.

    Returns ``{"mask_l1": [K], "anomaly_index": [K], "flip_rate": [K]}`` (flip_rate: share of a
    fresh batch classified as the class once its trigger is applied).
    """
    n, h, w, c = images.shape
    rng = np.random.default_rng([int(seed), 0x4C])
    mean_t = paddle.to_tensor(np.asarray(mean, np.float32).reshape(1, c, 1, 1))
    std_t = paddle.to_tensor(np.asarray(std, np.float32).reshape(1, c, 1, 1))
    mask_param = paddle.create_parameter([num_classes, 1, h, w], "float32",
                                         default_initializer=paddle.nn.initializer.Constant(-3.0))
    pattern_param = paddle.create_parameter([num_classes, c, h, w], "float32",
                                            default_initializer=paddle.nn.initializer.Constant(0.0))
    optimizer = paddle.optimizer.Adam(lr, parameters=[mask_param, pattern_param])
    labels = paddle.to_tensor(np.repeat(np.arange(num_classes), batch_size))
    for p in model.parameters():
        p.stop_gradient = True

    def stamped(batch):
        x = paddle.to_tensor(batch.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)  # [b, C, H, W]
        mask, pattern = F.sigmoid(mask_param), F.sigmoid(pattern_param)  # [K, 1, H, W], [K, C, H, W]
        adv = (1 - mask[:, None]) * x[None] + (mask * pattern)[:, None]  # [K, b, C, H, W]
        return model(((adv.reshape([-1, c, h, w])) - mean_t) / std_t), mask

    model.eval()
    for _ in range(steps):
        batch = images[rng.integers(0, n, size=batch_size)]
        logits, mask = stamped(batch)
        loss = F.cross_entropy(logits, labels) + lam * mask.abs().sum(axis=[1, 2, 3]).mean()
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
    with paddle.no_grad():
        logits, mask = stamped(images[rng.integers(0, n, size=batch_size)])
        hits = (logits.argmax(axis=1) == labels).astype("float32").reshape([num_classes, batch_size]).mean(axis=1)
        norms = mask.abs().sum(axis=[1, 2, 3]).numpy()
    for p in model.parameters():
        p.stop_gradient = False
    return {"mask_l1": norms.tolist(), "anomaly_index": mad_anomaly_index(norms).tolist(),
            "flip_rate": hits.numpy().tolist()}


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
