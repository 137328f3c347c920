"""Scoring interface of every KGE model: all-entity and chunked-negative paths agree with score()."""
import inspect

import numpy as np
import pytest

import paddle_suite  # noqa: F401
import paddle

from paddle_suite.kge import models
from paddle_suite.registry import ARCHS

N, R = 13, 4


def with_random_offsets(model, seed=0):
    """SpaceE with ``translation``: offsets start at zero, which would hide sign errors; randomise them."""
    table = model.relation_embedding.weight.numpy()
    table[:, model.map_width :] = np.random.default_rng(seed).normal(0.0, 0.5, table[:, model.map_width :].shape)
    model.relation_embedding.weight.set_value(table)
    return model


VARIANTS = {
    "SpaceE-fro": lambda **kw: models.SpaceE(N, R, 3, 4, 5.0, **kw),
    "SpaceE-head-only": lambda **kw: models.SpaceE(N, R, 3, 4, 5.0, head_only=True, **kw),
    "SpaceE-l1": lambda **kw: models.SpaceE(N, R, 3, 4, 5.0, norm="l1", **kw),
    "SpaceE-uniform": lambda **kw: models.SpaceE(N, R, 3, 4, 5.0, relation_init="uniform", **kw),
    "SpaceE-sphere": lambda **kw: models.SpaceE(N, R, 3, 4, 5.0, relation_init="orthogonal", entity_radius=2.0, **kw),
    "SpaceE-sphere-l1": lambda **kw: models.SpaceE(N, R, 3, 4, 5.0, norm="l1", entity_radius=2.0, **kw),
    "SpaceE-translation": lambda **kw: with_random_offsets(models.SpaceE(N, R, 3, 4, 5.0, translation=True, **kw)),
    "SpaceE-translation-head-only-sphere": lambda **kw: with_random_offsets(
        models.SpaceE(N, R, 3, 4, 5.0, head_only=True, entity_radius=2.0, translation=True, **kw)),
    "SpaceE-translation-l1": lambda **kw: with_random_offsets(
        models.SpaceE(N, R, 3, 4, 5.0, norm="l1", translation=True, **kw)),
    "TransE-l1": lambda **kw: models.TransE(N, R, 8, 6.0, **kw),
    "TransE-l2": lambda **kw: models.TransE(N, R, 8, 6.0, p_norm=2, **kw),
    "RotatE": lambda **kw: models.RotatE(N, R, 8, 6.0, **kw),
    "DistMult": lambda **kw: models.DistMult(N, R, 8, 6.0, **kw),
    "ComplEx": lambda **kw: models.ComplEx(N, R, 8, 6.0, **kw),
}
H = np.array([0, 3, 5, 7, 12])
REL = np.array([0, 1, 2, 3, 1])
T = np.array([4, 4, 1, 2, 0])


def one_by_one(model, heads, relations, tails):
    return model.score(np.asarray(heads), np.asarray(relations), np.asarray(tails)).numpy()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_all_entity_scores_match_score(name):
    paddle.seed(1)
    model = VARIANTS[name]()
    with paddle.no_grad():
        tails = model.score_tails(H, REL).numpy()
        heads = model.score_heads(REL, T).numpy()
        every = np.arange(N)
        for b in range(len(H)):
            np.testing.assert_allclose(tails[b], one_by_one(model, np.full(N, H[b]), np.full(N, REL[b]), every), atol=2e-5)
            np.testing.assert_allclose(heads[b], one_by_one(model, every, np.full(N, REL[b]), np.full(N, T[b])), atol=2e-5)
    assert tails.shape == (len(H), N)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_chunked_negatives_match_score(name):
    paddle.seed(2)
    model = VARIANTS[name]()
    neg = np.array([[1, 2, 3], [4, 5, 6]])  # 5 rows in 2 chunks: sizes 3 and 2 (padded internally)
    chunk = np.array([0, 0, 0, 1, 1])
    with paddle.no_grad():
        tail = model.score_negatives(H, REL, T, neg, "tail").numpy()
        head = model.score_negatives(H, REL, T, neg, "head").numpy()
        for b in range(len(H)):
            np.testing.assert_allclose(tail[b], one_by_one(model, np.full(3, H[b]), np.full(3, REL[b]), neg[chunk[b]]), atol=2e-5)
            np.testing.assert_allclose(head[b], one_by_one(model, neg[chunk[b]], np.full(3, REL[b]), np.full(3, T[b])), atol=2e-5)


def test_training_forward_groups_sides_and_backpropagates():
    paddle.seed(3)
    model = models.SpaceE(N, R, 3, 4, 5.0, spectral_weight=0.1, n3_weight=0.01)
    head_neg, tail_neg = np.array([[1, 2]]), np.array([[3, 4], [5, 6]])
    pos, neg, penalty = model(paddle.to_tensor(H), paddle.to_tensor(REL), paddle.to_tensor(T), paddle.to_tensor(head_neg), paddle.to_tensor(tail_neg), 2)
    assert pos.shape == [5] and neg.shape == [5, 2]
    with paddle.no_grad():
        expected_head = model.score_negatives(H[:2], REL[:2], T[:2], head_neg, "head").numpy()
        expected_tail = model.score_negatives(H[2:], REL[2:], T[2:], tail_neg, "tail").numpy()
    np.testing.assert_allclose(neg.numpy(), np.concatenate([expected_head, expected_tail]), atol=1e-6)
    (pos.sum() - neg.sum() + penalty).backward()
    for param in (model.entity_embedding.weight, model.relation_embedding.weight):
        assert param.grad is not None and np.isfinite(np.asarray(param.grad)).all()
    assert float(model(paddle.to_tensor(H), paddle.to_tensor(REL), paddle.to_tensor(T)).sum()) == pytest.approx(float(pos.sum()), rel=1e-6)


def test_spacee_singular_map_merges_heads_in_its_null_space():
    paddle.seed(4)
    model = models.SpaceE(3, 1, 2, 2, 4.0, head_only=True)
    singular = np.array([[1.0, 0.0], [0.0, 0.0]], dtype="float32")  # kills the second row of E_h
    model.relation_embedding.weight.set_value(singular.reshape(1, 4))
    table = model.entity_embedding.weight.numpy()
    table[1] = table[0]
    table[1, 2:] += 5.0  # head 1 differs from head 0 only in the null space
    model.entity_embedding.weight.set_value(table)
    scores = model.score_tails(np.array([0, 1]), np.array([0, 0])).numpy()
    np.testing.assert_allclose(scores[0], scores[1], atol=1e-5)
    assert model.relation_matrices().shape == (1, 1, 2, 2)


def test_spacee_distance_is_frobenius_or_l1_of_mapped_difference():
    paddle.seed(5)
    for norm in ("fro", "l1"):
        model = models.SpaceE(2, 1, 2, 3, 7.0, norm=norm)
        maps = model.relation_matrices()[0]
        ents = model.entity_embedding.weight.numpy().reshape(2, 2, 3)
        diff = maps[0] @ ents[0] - maps[1] @ ents[1]
        distance = np.sqrt((diff**2).sum()) if norm == "fro" else np.abs(diff).sum()
        assert float(model.score(np.array([0]), np.array([0]), np.array([1]))[0]) == pytest.approx(7.0 - distance, abs=1e-5)


def test_spacee_translation_adds_an_offset_to_the_mapped_head():
    paddle.seed(5)
    for head_only in (False, True):
        model = with_random_offsets(models.SpaceE(2, 1, 2, 3, 7.0, head_only=head_only, translation=True))
        maps = model.relation_matrices()[0]
        offset = model.relation_embedding.weight.numpy()[0, model.map_width :].reshape(2, 3)
        assert np.abs(offset).max() > 0.1
        ents = model.entity_embedding.weight.numpy().reshape(2, 2, 3)
        tail = ents[1] if head_only else maps[1] @ ents[1]
        distance = np.sqrt(((maps[0] @ ents[0] + offset - tail) ** 2).sum())
        assert float(model.score(np.array([0]), np.array([0]), np.array([1]))[0]) == pytest.approx(7.0 - distance, abs=1e-5)
    # offsets start at zero: a fresh model scores as the linear one given the same maps and entities
    linear = models.SpaceE(N, R, 3, 4, 5.0, relation_init="uniform")
    affine = models.SpaceE(N, R, 3, 4, 5.0, relation_init="uniform", translation=True)
    assert not affine.relation_embedding.weight.numpy()[:, affine.map_width :].any()
    affine.entity_embedding.weight.set_value(linear.entity_embedding.weight.numpy())
    table = affine.relation_embedding.weight.numpy()
    table[:, : affine.map_width] = linear.relation_embedding.weight.numpy()
    affine.relation_embedding.weight.set_value(table)
    np.testing.assert_allclose(affine.score_tails(H, REL).numpy(), linear.score_tails(H, REL).numpy(), atol=1e-5)


def test_rotate_relations_are_unit_rotations():
    paddle.seed(6)
    model = models.RotatE(2, 1, 4, 6.0)
    head = model.entity_embedding.weight.numpy()[0]
    z = head[:4] + 1j * head[4:]
    phase = model.relation_embedding.weight.numpy()[0] / (model.embedding_range / np.pi)
    rotated = z * np.exp(1j * phase)
    # scoring the head against itself rotated: distance is sum |z r - z|, moduli preserved
    np.testing.assert_allclose(np.abs(rotated), np.abs(z), rtol=1e-6)
    expected = 6.0 - np.abs(rotated - z).sum()
    assert float(model.score(np.array([0]), np.array([0]), np.array([0]))[0]) == pytest.approx(expected, abs=1e-4)


def test_registered_factories_and_bad_choices():
    from_data = dict(num_entities=5, num_relations=2, relation_sides=(np.zeros(2, bool), np.ones(2, bool)))
    for name in ("SpaceE", "TransE", "RotatE", "DistMult", "ComplEx"):
        factory = ARCHS.get(name)
        accepted = inspect.signature(factory).parameters  # as build_arch passes the data's values
        model = factory(**{k: v for k, v in from_data.items() if k in accepted})
        assert isinstance(model, models.KGEModel)
        assert model.score_tails(np.array([0]), np.array([1])).shape == [1, 5]
    with pytest.raises(ValueError, match="Arch.norm"):
        models.SpaceE(5, 2, 2, 2, 1.0, norm="l2")
    with pytest.raises(ValueError, match="Arch.p_norm"):
        models.TransE(5, 2, 4, 1.0, p_norm=3)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_chunked_negative_gradients_match_score(name):
    """The fast expansions must give the same gradients as the direct formula."""
    paddle.seed(7)
    fast, direct = VARIANTS[name](sparse=False), VARIANTS[name](sparse=False)  # dense grads compare row by row
    direct.set_state_dict(fast.state_dict())
    neg = np.array([[1, 2, 3], [4, 5, 6]])
    per_row = neg[[0, 0, 0, 1, 1]]
    weights = np.linspace(0.5, 1.5, 15).reshape(5, 3).astype("float32")
    (fast.score_negatives(H, REL, T, neg, "head") * paddle.to_tensor(weights)).sum().backward()
    direct_scores = direct.score(per_row.ravel(), np.repeat(REL, 3), np.repeat(T, 3)).reshape([5, 3])
    (direct_scores * paddle.to_tensor(weights)).sum().backward()
    for a, b in zip(fast.parameters(), direct.parameters()):
        np.testing.assert_allclose(np.asarray(a.grad), np.asarray(b.grad), atol=2e-4, rtol=1e-3)


def _distance_grads(fn, inputs, weights):
    leaves = [paddle.to_tensor(x, stop_gradient=False) for x in inputs]
    out = fn(*leaves)
    (out * paddle.to_tensor(weights)).sum().backward()
    return out.numpy(), [leaf.grad.numpy() for leaf in leaves]


def _plain_l1(q, c):
    return (q.unsqueeze(2) - c.unsqueeze(1)).abs().sum(-1)


def _plain_moduli(q_re, q_im, c):
    width = q_re.shape[-1]
    d_re, d_im = q_re.unsqueeze(2) - c[..., :width].unsqueeze(1), q_im.unsqueeze(2) - c[..., width:].unsqueeze(1)
    return paddle.sqrt(d_re * d_re + d_im * d_im + models.EPS).sum(-1)


@pytest.mark.parametrize("batch", [1, 3])
def test_numpy_distance_pylayers_match_paddle_formulation(batch):
    """The CPU numpy kernels (PyLayers) give the plain paddle formulas' values and gradients."""
    rng = np.random.default_rng(batch)
    groups, k, dim = 2, 5, 6
    weights = rng.uniform(0.5, 1.5, (groups, batch, k)).astype("float32")
    l1_inputs = [rng.normal(size=(groups, batch, dim)).astype("float32"), rng.normal(size=(groups, k, dim)).astype("float32")]
    mod_inputs = [rng.normal(size=(groups, batch, dim)).astype("float32") for _ in range(2)]
    mod_inputs.append(rng.normal(size=(groups, k, 2 * dim)).astype("float32"))
    def l1_kernel(q, c):
        return models._L1Distance.apply(q, *models._all_rows(c))

    def modulus_kernel(q_re, q_im, c):
        return models._ModulusDistance.apply(q_re, q_im, *models._all_rows(c))

    for fast, plain, inputs in ((l1_kernel, _plain_l1, l1_inputs), (modulus_kernel, _plain_moduli, mod_inputs)):
        fast_out, fast_grads = _distance_grads(fast, inputs, weights)
        plain_out, plain_grads = _distance_grads(plain, inputs, weights)
        np.testing.assert_allclose(fast_out, plain_out, rtol=1e-5, atol=1e-5)
        for a, b in zip(fast_grads, plain_grads):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["TransE-l1", "RotatE", "SpaceE-l1"])
def test_all_entity_scores_identical_when_chunked(name, monkeypatch):
    """The no-grad all-entity paths give the same scores in one piece and in small candidate chunks."""
    paddle.seed(3)
    model = VARIANTS[name]()
    with paddle.no_grad():
        whole = model.score_tails(H, REL).numpy(), model.score_heads(REL, T).numpy()
        monkeypatch.setattr(models, "CANDIDATE_BUDGET", 17)
        chunked = model.score_tails(H, REL).numpy(), model.score_heads(REL, T).numpy()
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", ["TransE-l1", "RotatE"])
def test_paddle_only_path_matches_numpy_kernels(name, monkeypatch):
    """The paddle formulation (used for GPU tensors) gives the numpy kernels' scores and gradients."""
    paddle.seed(5)
    numpy_model, paddle_model = VARIANTS[name](sparse=False), VARIANTS[name](sparse=False)
    paddle_model.set_state_dict(numpy_model.state_dict())
    neg = np.array([[1, 2, 3], [4, 5, 6]])
    results = []
    for model, use_numpy in ((numpy_model, True), (paddle_model, False)):
        monkeypatch.setattr(models, "_numpy_kernels", lambda *tensors, flag=use_numpy: flag)
        model.score_negatives(H, REL, T, neg, "tail").sum().backward()
        with paddle.no_grad():
            tails = model.score_tails(H, REL).numpy()
        results.append((tails, [np.asarray(p.grad) for p in model.parameters()]))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_numpy_distance_pylayers_skip_inputs_without_gradient():
    """Inputs with stop_gradient get no gradient (paddle requires None for them) and the rest still do."""
    q, c = paddle.rand([2, 3, 4]), paddle.rand([2, 5, 4])
    c.stop_gradient = False
    models._L1Distance.apply(q, *models._all_rows(c)).sum().backward()
    expected = -np.sign(q.numpy()[:, :, None] - c.numpy()[:, None]).sum(1)
    np.testing.assert_allclose(c.grad.numpy(), expected)
    assert q.grad is None and c.grad.shape == [2, 5, 4]
    q_re = paddle.rand([2, 3, 4])
    q_re.stop_gradient = False
    models._ModulusDistance.apply(q_re, paddle.rand([2, 3, 4]), *models._all_rows(paddle.rand([2, 5, 8]))).sum().backward()
    assert q_re.grad.shape == [2, 3, 4]


def test_spacee_orthogonal_penalty_is_zero_on_orthogonal_maps_and_grows_off_them():
    model = models.SpaceE(4, 2, 3, 2, 4.0, orthogonal_weight=2.0)
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    scaled = np.diag([1.0, 1.0, 0.0])  # singular: R^T R - I = diag(0, 0, -1)
    maps = np.stack([np.stack([rotation, np.eye(3)]), np.stack([scaled, rotation])]).astype("float32")
    model.relation_embedding.weight.set_value(maps.reshape(2, -1))
    h, t = np.array([0, 1]), np.array([2, 3])
    zero = float(model.regularization(h, np.array([0, 0]), t))
    penalty = float(model.regularization(h, np.array([1, 1]), t))
    assert zero == pytest.approx(0.0, abs=1e-5)
    # mean over the batch's 4 maps (two rows x head/tail): one map with ||.||_F^2 = 1, over k = 3
    assert penalty == pytest.approx(2.0 * (1.0 + 0.0) / 2 / 3, rel=1e-5)


def penalties(maps):
    """``||R^T R - I||_F^2 / k`` of each map, numpy."""
    k = maps.shape[-1]
    return (((np.swapaxes(maps, -1, -2) @ maps - np.eye(k)) ** 2).sum((-2, -1))) / k


def test_spacee_many_side_orthogonal_weight_weighs_each_side_by_the_relation_sides():
    paddle.seed(3)
    # relation 0: 1-N (many tails), 1: N-1 (many heads), 2: N-N, 3: 1-1
    sides = (np.array([False, True, True, False]), np.array([True, False, True, False]))
    model = models.SpaceE(6, 4, 3, 2, 4.0, relation_init="uniform", orthogonal_weight=2.0,
                          many_side_orthogonal_weight=0.5, relation_sides=sides)
    each = penalties(model.relation_matrices())  # [relation, (head, tail)]
    weights = np.array([[2.0, 0.5], [0.5, 2.0], [0.5, 0.5], [2.0, 2.0]])
    r = np.array([0, 1, 2, 3, 0])
    got = float(model.regularization(np.zeros(5, np.int64), r, np.ones(5, np.int64)))
    assert got == pytest.approx((weights[r] * each[r]).mean(), rel=1e-5)

    head_only = models.SpaceE(6, 4, 3, 2, 4.0, relation_init="uniform", head_only=True, orthogonal_weight=2.0,
                              many_side_orthogonal_weight=0.5, relation_sides=sides)
    each = penalties(head_only.relation_matrices())[:, 0]
    got = float(head_only.regularization(np.zeros(5, np.int64), r, np.ones(5, np.int64)))
    assert got == pytest.approx((weights[r, 0] * each[r]).mean(), rel=1e-5)  # many heads: its one map


def test_spacee_many_side_orthogonal_weight_errors():
    with pytest.raises(ValueError, match="relation sides"):
        models.SpaceE(6, 4, 3, 2, 4.0, orthogonal_weight=1.0, many_side_orthogonal_weight=0.5)
    with pytest.raises(ValueError, match="length 4"):
        models.SpaceE(6, 4, 3, 2, 4.0, many_side_orthogonal_weight=0.5, relation_sides=(np.zeros(3), np.zeros(3)))
    with pytest.raises(ValueError, match="many_side_orthogonal_weight"):
        models.SpaceE(6, 4, 3, 2, 4.0, many_side_orthogonal_weight=-1.0, relation_sides=(np.zeros(4), np.zeros(4)))


def test_spacee_orthogonal_init_gives_orthogonal_maps_and_zero_penalty():
    paddle.seed(5)
    model = models.SpaceE(4, 3, 5, 2, 4.0, relation_init="orthogonal", orthogonal_weight=1.0)
    maps = model.relation_matrices().reshape(-1, 5, 5)
    np.testing.assert_allclose(np.swapaxes(maps, 1, 2) @ maps, np.broadcast_to(np.eye(5), maps.shape), atol=1e-5)
    assert not np.allclose(maps[0], maps[1])  # a different random map per relation and side
    assert float(model.regularization(np.array([0, 1, 2]), np.array([0, 1, 2]), np.array([3, 3, 3]))) < 1e-5


def test_spacee_entity_init_bound():
    paddle.seed(6)
    default = np.abs(models.SpaceE(500, 2, 4, 5, 8.0).entity_embedding.weight.numpy()).max()
    wide = np.abs(models.SpaceE(500, 2, 4, 5, 8.0, entity_init_bound=0.3).entity_embedding.weight.numpy()).max()
    assert 0.9 * 0.5 < default <= 0.5  # (gamma + 2) / (k * m)
    assert 0.9 * 0.3 < wide <= 0.3
    with pytest.raises(ValueError, match="entity_init_bound"):
        models.SpaceE(5, 2, 4, 5, 8.0, entity_init_bound=0.0)


def test_spacee_entity_radius_puts_every_entity_on_one_sphere():
    paddle.seed(7)
    model = models.SpaceE(N, R, 3, 4, 5.0, relation_init="orthogonal", entity_radius=2.0)
    with paddle.no_grad():
        before = model.score_tails(H, REL).numpy()
        model.entity_embedding.weight.set_value(model.entity_embedding.weight.numpy() * 7.0)
        after = model.score_tails(H, REL).numpy()
        # orthogonal maps of radius-2 matrices: every distance is at most 2 + 2
        assert before.min() >= 5.0 - 4.0 - 1e-4
    np.testing.assert_allclose(after, before, atol=2e-5)  # only the direction of an entity matters
    with pytest.raises(ValueError, match="entity_radius"):
        models.SpaceE(N, R, 3, 4, 5.0, entity_radius=-1.0)
