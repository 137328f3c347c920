"""Top-k accuracy (registered in ``METRICS`` as ``topk_accuracy``) and a whole-split evaluation.

A sample counts as correct at ``k`` when fewer than ``k`` classes score strictly higher than its
true class (ties with the true class are resolved in its favour, which only matters for exactly
equal logits).
"""
import numpy as np

from paddle_suite.registry import METRICS


def topk_correct(logits, labels, ks):
    """Number of samples correct at each ``k`` (numpy, vectorised): ``{k: int}``."""
    logits = np.asarray(logits)
    labels = np.asarray(labels, dtype=np.int64)
    true_score = logits[np.arange(len(labels)), labels]
    rank = (logits > true_score[:, None]).sum(axis=1)  # classes scoring above the true one
    return {k: int((rank < k).sum()) for k in ks}


@METRICS.register("topk_accuracy")
def topk_accuracy(logits, labels, ks=(1, 5)):
    """``{"top1": fraction, "top5": ...}`` over a batch of logits ``[B, K]`` and int labels ``[B]``."""
    counts = topk_correct(logits, labels, ks)
    return {f"top{k}": counts[k] / max(len(labels), 1) for k in ks}


def evaluate_classifier(model, batches, ks=(1, 5)):
    """Top-k accuracies and mean cross-entropy of ``model`` over ``(images, labels)`` numpy batches.

    Runs without gradients; per batch only the counts leave the device-side logits' numpy copy.
    """
    import paddle
    import paddle.nn.functional as F

    correct = {k: 0 for k in ks}
    loss_sum, count = 0.0, 0
    with paddle.no_grad():
        for images, labels in batches:
            logits = model(paddle.to_tensor(images))
            label_tensor = paddle.to_tensor(labels)
            loss_sum += float(F.cross_entropy(logits, label_tensor, reduction="sum"))
            for k, n in topk_correct(logits.numpy(), labels, ks).items():
                correct[k] += n
            count += len(labels)
    if count == 0:
        raise ValueError("evaluation split is empty")
    metrics = {f"top{k}": correct[k] / count for k in ks}
    metrics["loss"] = loss_sum / count
    return metrics
