"""Negative sampling: determinism, chunk sharing, Bernoulli side choice, filtering of known positives."""
import numpy as np
import pytest

from paddle_suite.kge.evaluation import relation_tph_hpt
from paddle_suite.kge.sampling import NegativeSampler


def star_graph():
    # relation 0: head 0 -> 10 tails (1-N); relation 1: 10 heads -> tail 0 (N-1)
    one_to_many = [(0, 0, t) for t in range(1, 11)]
    many_to_one = [(h, 1, 0) for h in range(1, 11)]
    return np.array(one_to_many + many_to_one, dtype=np.int64)


def test_same_generator_seed_same_negatives_and_shapes():
    train = star_graph()
    sampler = NegativeSampler(train, 11, 2, num_negatives=5, chunk_size=3)
    first = sampler.sample(train, np.random.default_rng([1, 2, 3]))
    again = sampler.sample(train, np.random.default_rng([1, 2, 3]))
    other = sampler.sample(train, np.random.default_rng([1, 2, 4]))
    for a, b in zip(first, again):
        assert a.side == b.side
        np.testing.assert_array_equal(a.negatives, b.negatives)
    assert any(not np.array_equal(a.negatives, b.negatives) for a, b in zip(first, other))
    assert sum(len(g.rows) for g in first) == len(train)
    np.testing.assert_array_equal(np.sort(np.concatenate([g.rows for g in first])), np.arange(len(train)))
    for group in first:
        assert group.negatives.shape == (-(-len(group.rows) // 3), 5)
        assert group.negatives.min() >= 0 and group.negatives.max() < 11
        np.testing.assert_array_equal(group.triples, train[group.rows])


def test_bernoulli_corrupts_the_side_with_fewer_answers():
    train = star_graph()
    tph, hpt = relation_tph_hpt(train, 2)
    np.testing.assert_allclose(tph, [10.0, 1.0])
    np.testing.assert_allclose(hpt, [1.0, 10.0])
    sampler = NegativeSampler(train, 11, 2, 1, mode="bernoulli")
    np.testing.assert_allclose(sampler.head_probability, [10 / 11, 1 / 11])
    batch = np.repeat(train, 200, axis=0)
    groups = {g.side: g for g in sampler.sample(batch, np.random.default_rng(0))}
    head_share = np.bincount(groups["head"].triples[:, 1], minlength=2) / 2000
    assert head_share[0] == pytest.approx(10 / 11, abs=0.03) and head_share[1] == pytest.approx(1 / 11, abs=0.03)
    uniform = NegativeSampler(train, 11, 2, 1, mode="uniform")
    groups = {g.side: g for g in uniform.sample(batch, np.random.default_rng(0))}
    assert len(groups["head"].rows) / len(batch) == pytest.approx(0.5, abs=0.03)


def test_negatives_are_uniform_over_entities():
    sampler = NegativeSampler(star_graph(), 11, 2, num_negatives=2000, chunk_size=20)
    counts = np.bincount(np.concatenate([g.negatives.ravel() for g in sampler.sample(star_graph(), np.random.default_rng(5))]), minlength=11)
    assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean()


def test_filtering_marks_exactly_the_known_positives():
    train = star_graph()
    sampler = NegativeSampler(train, 11, 2, num_negatives=11, chunk_size=4, filter_known=True)
    known = {tuple(t) for t in train.tolist()}
    for group in sampler.sample(train, np.random.default_rng(7)):
        per_row = np.repeat(group.negatives, 4, axis=0)[: len(group.rows)]
        for (h, r, t), negs, valid in zip(group.triples, per_row, group.valid):
            corrupted = [(n, r, t) if group.side == "head" else (h, r, n) for n in negs]
            np.testing.assert_array_equal(valid, [c not in known for c in corrupted])
    plain = NegativeSampler(train, 11, 2, num_negatives=11)
    assert all(g.valid.all() for g in plain.sample(train, np.random.default_rng(7)))


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="sampler"):
        NegativeSampler(star_graph(), 11, 2, 4, mode="zipf")
    with pytest.raises(ValueError, match="num_negatives"):
        NegativeSampler(star_graph(), 11, 2, 0)
