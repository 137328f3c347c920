"""KGE training losses: self-adversarial negative sampling, margin ranking, weights, regularisation.

``Loss.name`` selects a loss from the ``LOSSES`` registry: ``self_adversarial`` or ``margin``, each
built from the ``Loss`` section and called as ``loss(positive, negative, weights, valid)``.

* ``self_adversarial_loss`` (Sun et al. 2019, RotatE eq. 5-6): ``-log sigmoid(s+)`` for a positive
  and ``-sum_j w_j log sigmoid(-s_j)`` over its negatives, ``w = softmax(alpha * s_neg)`` detached
  from the graph (``alpha`` = ``temperature``; ``temperature=0`` gives uniform weights, the plain
  negative-sampling loss). As in RotatE's code, the loss is the mean of the positive and negative
  parts, each a (subsampling-)weighted mean over the batch.
* ``margin_ranking_loss``: ``mean_j max(0, margin - s+ + s_j)`` per positive, weighted over the batch.
* ``subsampling_weights`` (RotatE's word2vec-style weights): ``1 / sqrt(#(h, r) + #(r, t))`` over
  the training triples with each count starting at 4, to down-weight frequent patterns.
* ``embedding_regularization``: ``weight * mean over rows of sum |x|^p`` of the batch's embeddings
  (p=3 is N3 / RotatE's ComplEx regulariser); computed on the batch rather than RotatE's whole
  tables so that sparse updates stay sparse. Every regulariser (this one, from
  ``Loss.regularization``, and SpaceE's map penalties) is applied in one place, the model's
  ``regularization`` (``kge/models.py``), whose sum the model's forward returns beside the scores.

``valid`` masks (from the sampler's filtering) exclude known positives drawn as negatives: they get
zero weight, and a row whose negatives are all excluded contributes only its positive term.
"""
import numpy as np

import paddle_suite  # noqa: F401
import paddle
import paddle.nn.functional as F

from paddle_suite.registry import LOSSES


def _weighted_mean(values, weights):
    if weights is None:
        return values.mean()
    return (weights * values).sum() / weights.sum()


def _negative_weights(neg, valid, temperature):
    """Per-negative weights summing to 1 over the valid negatives of each row (0 if none)."""
    mask = None
    if valid is not None:
        mask = (valid if isinstance(valid, paddle.Tensor) else paddle.to_tensor(np.asarray(valid))).astype(neg.dtype)
    if temperature > 0:
        logits = neg.detach() * temperature
        if mask is not None:
            logits = logits - (1.0 - mask) * 1e9
        weights = F.softmax(logits, axis=1)
    else:
        weights = paddle.ones_like(neg)
    if mask is not None:
        weights = weights * mask
    return weights / paddle.clip(weights.sum(axis=1, keepdim=True), min=1e-12)


def self_adversarial_loss(pos, neg, temperature=1.0, weights=None, valid=None):
    """``pos`` ``[B]``, ``neg`` ``[B, K]`` scores (higher = more plausible); returns a scalar."""
    w = _negative_weights(neg, valid, temperature)
    positive = -F.log_sigmoid(pos)
    negative = -(w * F.log_sigmoid(-neg)).sum(axis=1)
    return (_weighted_mean(positive, weights) + _weighted_mean(negative, weights)) / 2.0


def margin_ranking_loss(pos, neg, margin=1.0, weights=None, valid=None):
    w = _negative_weights(neg, valid, 0.0)
    per_row = (w * F.relu(margin - pos.unsqueeze(1) + neg)).sum(axis=1)
    return _weighted_mean(per_row, weights)


def subsampling_weights(triples, start=4):
    """RotatE's frequency-based weights, ``np.float32 [n]`` for ``triples`` ``[n, 3]``."""
    triples = np.asarray(triples, dtype=np.int64).reshape(-1, 3)

    def counts(pairs):
        _, inverse, count = np.unique(pairs, axis=0, return_inverse=True, return_counts=True)
        return count[inverse.ravel()]

    total = counts(triples[:, :2]) + counts(triples[:, 1:]) + 2 * start
    return (1.0 / np.sqrt(total)).astype(np.float32)


def embedding_regularization(embeddings, weight, p=3):
    """``weight * sum_tensors mean_rows sum_cols |x|^p``; ``embeddings`` is a list of ``[n, d]`` tensors."""
    return weight * paddle.add_n([(x.abs() ** p).sum(-1).mean() for x in embeddings])


@LOSSES.register("self_adversarial")
class SelfAdversarialLoss:
    """``Loss.adversarial_temperature`` is the alpha of the negatives' weights (0 = uniform)."""

    def __init__(self, loss_cfg):
        self.temperature = loss_cfg["adversarial_temperature"]

    def __call__(self, positive, negative, weights=None, valid=None):
        return self_adversarial_loss(positive, negative, self.temperature, weights, valid)


@LOSSES.register("margin")
class MarginLoss:
    """``Loss.margin`` is the margin between a positive's score and each negative's."""

    def __init__(self, loss_cfg):
        self.margin = loss_cfg["margin"]

    def __call__(self, positive, negative, weights=None, valid=None):
        return margin_ranking_loss(positive, negative, self.margin, weights, valid)
