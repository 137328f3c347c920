"""Losses against direct numpy formulas; RotatE's subsampling weights against its dict-based counting."""
import numpy as np
import pytest

import paddle_suite  # noqa: F401
import paddle

from paddle_suite.kge import losses


def log_sigmoid(x):
    return -np.logaddexp(0, -x)


def softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


RNG = np.random.default_rng(0)
POS = RNG.normal(size=4).astype("float32")
NEG = RNG.normal(size=(4, 6)).astype("float32")
WEIGHTS = RNG.uniform(0.1, 1.0, 4).astype("float32")


@pytest.mark.parametrize("alpha", [0.0, 0.5, 2.0])
def test_self_adversarial_matches_formula(alpha):
    loss = losses.self_adversarial_loss(paddle.to_tensor(POS), paddle.to_tensor(NEG), alpha, paddle.to_tensor(WEIGHTS))
    w = softmax(alpha * NEG) if alpha > 0 else np.full(NEG.shape, 1 / 6)
    positive = (WEIGHTS * -log_sigmoid(POS)).sum() / WEIGHTS.sum()
    negative = (WEIGHTS * -(w * log_sigmoid(-NEG)).sum(1)).sum() / WEIGHTS.sum()
    assert float(loss) == pytest.approx((positive + negative) / 2, rel=1e-5)


def test_adversarial_weights_are_detached():
    neg = paddle.to_tensor(NEG, stop_gradient=False)
    losses.self_adversarial_loss(paddle.to_tensor(POS), neg, 1.0).backward()
    w = softmax(NEG)
    # d/ds of -w log sigmoid(-s) with w constant is w * sigmoid(s); averaged over 4 rows, halved
    expected = w * (1 / (1 + np.exp(-NEG))) / 4 / 2
    np.testing.assert_allclose(neg.grad.numpy(), expected, rtol=1e-5)


def test_masked_negatives_do_not_count():
    valid = np.ones(NEG.shape, bool)
    valid[0, :3] = False
    valid[1, :] = False  # a row with no valid negative keeps only its positive term
    loss = losses.self_adversarial_loss(paddle.to_tensor(POS), paddle.to_tensor(NEG), 1.0, None, valid)
    rows = []
    for row, keep in zip(NEG, valid):
        if keep.any():
            w = softmax(row[keep][None])[0]
            rows.append(-(w * log_sigmoid(-row[keep])).sum())
        else:
            rows.append(0.0)
    expected = ((-log_sigmoid(POS)).mean() + np.mean(rows)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_margin_ranking_matches_formula():
    loss = losses.margin_ranking_loss(paddle.to_tensor(POS), paddle.to_tensor(NEG), 1.5)
    expected = np.maximum(0, 1.5 - POS[:, None] + NEG).mean()
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_subsampling_weights_match_rotate_counting():
    triples = np.array([[0, 0, 1], [0, 0, 2], [3, 0, 1], [0, 1, 1], [0, 0, 1]])
    count = {}
    for h, r, t in triples.tolist():  # RotatE's TrainDataset.count_frequency with start=4
        count[(h, r)] = count.get((h, r), 4) + 1
        count[(t, -r - 1)] = count.get((t, -r - 1), 4) + 1
    expected = [1 / np.sqrt(count[(h, r)] + count[(t, -r - 1)]) for h, r, t in triples.tolist()]
    np.testing.assert_allclose(losses.subsampling_weights(triples), expected, rtol=1e-6)


def test_embedding_regularization():
    x = RNG.normal(size=(3, 5)).astype("float32")
    y = RNG.normal(size=(3, 2)).astype("float32")
    value = losses.embedding_regularization([paddle.to_tensor(x), paddle.to_tensor(y)], 0.1, p=3)
    expected = 0.1 * ((np.abs(x) ** 3).sum(1).mean() + (np.abs(y) ** 3).sum(1).mean())
    assert float(value) == pytest.approx(expected, rel=1e-5)


def test_losses_are_selected_by_name_from_the_registry():
    from paddle_suite.registry import LOSSES

    pos, neg = paddle.to_tensor(RNG.normal(size=5).astype("float32")), paddle.to_tensor(RNG.normal(size=(5, 3)).astype("float32"))
    adversarial = LOSSES.get("self_adversarial")({"adversarial_temperature": 0.5, "margin": 9.0})
    margin = LOSSES.get("margin")({"adversarial_temperature": 0.5, "margin": 2.0})
    assert float(adversarial(pos, neg)) == float(losses.self_adversarial_loss(pos, neg, 0.5))
    assert float(margin(pos, neg)) == float(losses.margin_ranking_loss(pos, neg, 2.0))
    with pytest.raises(KeyError, match="Did you mean 'margin'"):
        LOSSES.get("margn")
