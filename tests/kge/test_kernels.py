"""The fused kernels reproduce the numpy formulation they replaced bit for bit (scores, gradients, ranks)."""
import numpy as np
import pytest

import paddle_suite  # noqa: F401
import paddle

from paddle_suite.kge import evaluation, kernels, models

EPS = models.EPS


# -------------------------------------------------------------- the replaced numpy formulation
def numpy_l1(q, c):
    """``sum_d |q - c|`` as the models computed it before the kernels: broadcast, abs, float32 sum."""
    diff = q[:, :, None] - c[:, None]
    return np.abs(diff).sum(-1)


def numpy_moduli(q_re, q_im, c):
    width = q_re.shape[-1]
    d_re, d_im = q_re[:, :, None] - c[:, None, :, :width], q_im[:, :, None] - c[:, None, :, width:]
    mod = d_re * d_re
    mod += d_im * d_im
    mod += EPS
    mod = np.sqrt(mod)
    return mod.sum(-1), d_re / mod, d_im / mod


def numpy_broadcast_grads(local, grad):
    """The previous PyLayer backward: gradients of ``sum grad * f(q - c)`` from ``f'(d)`` ``[G, B, K, D]``."""
    if local.shape[1] == 1:
        grad_c = local[:, 0] * np.negative(grad[:, 0, :, None])
        grad_q = grad_c.sum(1, keepdims=True)
        return np.negative(grad_q), grad_c
    weighted = local * grad[..., None]
    return weighted.sum(2), np.negative(weighted.sum(1))


def _inputs(rng, groups, batch, num, width, complex_=False):
    q = rng.normal(size=(groups, batch, width)).astype(np.float32)
    q_im = rng.normal(size=(groups, batch, width)).astype(np.float32)
    c = rng.normal(size=(groups, num, 2 * width if complex_ else width)).astype(np.float32)
    grad = rng.uniform(-1, 1, (groups, batch, num)).astype(np.float32)
    return q, q_im, c, grad


# widths around numpy's pairwise block (8-wide unroll, 128-element leaves, halving above)
WIDTHS = [1, 7, 8, 13, 128, 129, 200, 300, 1000]


@pytest.mark.parametrize("width", WIDTHS)
def test_all_entity_scores_equal_numpy_bit_for_bit(width):
    rng = np.random.default_rng(width)
    num = kernels.LANES * 2 + 5  # a partial last block
    q, q_im, c, _ = _inputs(rng, 1, 9, num, width, complex_=True)
    c_re, c_im = c[0, :, :width], c[0, :, width:]
    expected = np.float32(9.0) - numpy_l1(q, c[:, :, :width])[0]
    np.testing.assert_array_equal(kernels.l1_scores(q[0], kernels.pack_table(c_re), 9.0, num), expected)
    expected = np.float32(9.0) - numpy_moduli(q, q_im, c)[0][0]
    got = kernels.modulus_scores(q[0], q_im[0], kernels.pack_table(c_re), kernels.pack_table(c_im), 9.0, num)
    np.testing.assert_array_equal(got, expected)


def _distinct(c):
    """``c`` ``[G, K, D]`` drawn with repeats as (distinct rows, index): the training layout."""
    flat = c.reshape(-1, c.shape[-1])
    rows, index = np.unique(flat, axis=0, return_inverse=True)
    return rows, index.reshape(c.shape[:2])


def _merge_rows(grad_c, index, num_rows):
    """Per-draw candidate gradients summed per distinct row in draw order (what the optimizer merged)."""
    merged = np.zeros((num_rows, grad_c.shape[-1]), np.float32)
    for position, row in enumerate(index.ravel()):
        merged[row] += grad_c.reshape(-1, grad_c.shape[-1])[position]
    return merged


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("width", [5, 200])
def test_training_kernels_equal_numpy(batch, width):
    """Forward and ``d/dq`` bit for bit; ``d/dc`` per distinct row equals the merged per-draw gradient."""
    rng = np.random.default_rng(batch * width)
    q, _, c, grad = _inputs(rng, 4, batch, 11, width)
    c = c[:, rng.integers(0, 11, 11)]  # repeated candidates, as uniform negatives draw them
    rows, index = _distinct(c)
    diff = q[:, :, None] - c[:, None]
    np.testing.assert_array_equal(kernels.l1_forward(q, rows, index), numpy_l1(q, c))
    grad_q, grad_rows = kernels.l1_backward(q, rows, index, grad)
    want_q, want_c = numpy_broadcast_grads(np.sign(diff), grad)
    np.testing.assert_array_equal(grad_q, want_q)
    np.testing.assert_allclose(grad_rows, _merge_rows(want_c, index, len(rows)), rtol=1e-5, atol=1e-6)

    q_re, q_im, c, grad = _inputs(rng, 4, batch, 11, width, complex_=True)
    c = c[:, rng.integers(0, 11, 11)]
    rows, index = _distinct(c)
    out, unit_re, unit_im = numpy_moduli(q_re, q_im, c)
    np.testing.assert_array_equal(kernels.modulus_forward(q_re, q_im, rows, index), out)
    (grad_re, grad_c_re), (grad_im, grad_c_im) = (numpy_broadcast_grads(u, grad) for u in (unit_re, unit_im))
    got_re, got_im, got_rows = kernels.modulus_backward(q_re, q_im, rows, index, grad)
    np.testing.assert_array_equal(got_re, grad_re)
    np.testing.assert_array_equal(got_im, grad_im)
    want_rows = _merge_rows(np.concatenate([grad_c_re, grad_c_im], axis=-1), index, len(rows))
    np.testing.assert_allclose(got_rows, want_rows, rtol=1e-5, atol=1e-6)


def test_rank_counts_match_numpy_with_ties_inf_and_nan():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, (6, 50)).astype(np.float32)  # few levels: many ties
    scores[1, 3] = np.inf
    scores[2, :5] = -np.inf
    scores[3, 7] = np.nan
    targets = np.array([0, 3, 1, 7, 10, 49])
    target_scores, greater, equal = kernels.rank_counts(scores, targets)
    want = scores[np.arange(6), targets]
    np.testing.assert_array_equal(target_scores, want)
    np.testing.assert_array_equal(greater, (scores > want[:, None]).sum(1))
    np.testing.assert_array_equal(equal, (scores == want[:, None]).sum(1))


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_do_not_change_results(threads):
    rng = np.random.default_rng(1)
    q, c = rng.normal(size=(5, 40)).astype(np.float32), rng.normal(size=(300, 40)).astype(np.float32)
    packed = kernels.pack_table(c)
    one = kernels.l1_scores(q, packed, 9.0, 300)
    with kernels.threads(threads):
        np.testing.assert_array_equal(kernels.l1_scores(q, packed, 9.0, 300), one)
    with pytest.raises(ValueError, match="num_threads must be >= 1"):
        kernels.set_threads(0)


# -------------------------------------------------------------- evaluation: fast scorer vs score_tails
def _tied_model(name):
    """A model whose entity table has exact duplicate rows, so distinct candidates tie exactly."""
    paddle.seed(11)
    model = models.TransE(50, 4, 24, 6.0) if name == "TransE" else models.RotatE(50, 4, 12, 6.0)
    table = model.entity_embedding.weight.numpy().copy()
    table[25:45] = table[5:25]  # 20 entities duplicated: tied scores
    model.entity_embedding.weight.set_value(table)
    return model


@pytest.mark.parametrize("name", ["TransE", "RotatE"])
def test_fast_scorer_gives_the_ranks_of_score_tails_bit_for_bit(name, monkeypatch):
    model = _tied_model(name)
    rng = np.random.default_rng(2)
    triples = np.stack([rng.integers(0, 50, 40), rng.integers(0, 4, 40), rng.integers(0, 50, 40)], axis=1)
    known = np.concatenate([triples, np.stack([rng.integers(0, 50, 80), rng.integers(0, 4, 80),
                                               rng.integers(0, 50, 80)], axis=1)])
    scorer = model.ranking_scorer()
    assert scorer is not None
    with paddle.no_grad():
        for side, method in (("tail", model.score_tails), ("head", None)):
            entity, relation = triples[:, 0 if side == "tail" else 2], triples[:, 1]
            slow = (model.score_tails(paddle.to_tensor(entity), paddle.to_tensor(relation)) if side == "tail"
                    else model.score_heads(paddle.to_tensor(relation), paddle.to_tensor(entity))).numpy()
            np.testing.assert_array_equal(scorer(side, entity, relation), slow)
    fast = evaluation.evaluate(model, triples, known, 50, batch_size=7, return_ranks=True, num_threads=2)
    monkeypatch.setattr(type(model), "ranking_scorer", lambda self: None)
    slow = evaluation.evaluate(model, triples, known, 50, batch_size=7, return_ranks=True)
    for side in ("head", "tail"):
        np.testing.assert_array_equal(fast["ranks"][side], slow["ranks"][side])
    # the duplicated entities do produce ties (otherwise this test could not see a tie mistake)
    assert any((r % 1 == 0.5).any() for r in fast["ranks"].values())
