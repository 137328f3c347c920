import numpy as np
import paddle
import pytest

from paddle_suite.classification.metrics import evaluate_classifier, topk_accuracy, topk_correct
from paddle_suite.registry import LOSSES, METRICS

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(64, 10)).astype(np.float32) * 3
LABELS = RNG.integers(0, 10, 64)


def numpy_ce(logits, targets):
    logits = logits.astype(np.float64)
    log_probs = logits - logits.max(1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
    return float(-(targets * log_probs).sum(1).mean())


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_label_smoothed_cross_entropy_matches_numpy(smoothing):
    loss = LOSSES.get("cross_entropy")(label_smoothing=smoothing)
    got = float(loss(paddle.to_tensor(LOGITS), paddle.to_tensor(LABELS)))
    targets = np.full((64, 10), smoothing / 10)
    targets[np.arange(64), LABELS] += 1 - smoothing
    assert got == pytest.approx(numpy_ce(LOGITS, targets), rel=1e-5)
    if smoothing == 0.0:  # and paddle's own cross-entropy
        assert got == pytest.approx(float(paddle.nn.functional.cross_entropy(
            paddle.to_tensor(LOGITS), paddle.to_tensor(LABELS))), rel=1e-5)


def test_soft_target_cross_entropy_matches_numpy():
    soft = RNG.dirichlet(np.ones(10), size=64).astype(np.float32)
    loss = LOSSES.get("soft_target_cross_entropy")()
    got = float(loss(paddle.to_tensor(LOGITS), paddle.to_tensor(soft)))
    assert got == pytest.approx(numpy_ce(LOGITS, soft), rel=1e-5)


def test_topk_matches_an_argsort_reference():
    ranking = np.argsort(-LOGITS, axis=1)
    for k in (1, 3, 5, 10):
        expected = np.mean([LABELS[i] in ranking[i, :k] for i in range(64)])
        assert topk_accuracy(LOGITS, LABELS, ks=(k,))[f"top{k}"] == pytest.approx(expected)
    assert METRICS.get("topk_accuracy") is topk_accuracy
    assert topk_correct(LOGITS, LABELS, (10,))[10] == 64


def test_evaluate_classifier_over_batches_matches_numpy():
    paddle.seed(0)
    model = paddle.nn.Linear(5, 10)
    x = RNG.normal(size=(70, 5)).astype(np.float32)
    y = RNG.integers(0, 10, 70)
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 70, 32)]  # a partial last batch
    metrics = evaluate_classifier(model, batches, ks=(1, 5))
    logits = x @ model.weight.numpy() + model.bias.numpy()
    expected = topk_accuracy(logits, y, ks=(1, 5))
    assert metrics["top1"] == pytest.approx(expected["top1"]) and metrics["top5"] == pytest.approx(expected["top5"])
    assert metrics["loss"] == pytest.approx(numpy_ce(logits, np.eye(10)[y]), rel=1e-5)
