"""Filtered link-prediction evaluation checked against a slow, obviously-correct reference."""
import numpy as np
import pytest

import paddle_suite  # noqa: F401
import paddle

from paddle_suite.kge.evaluation import (
    FilterIndex,
    evaluate,
    flatten_metrics,
    paired_mrr_difference,
    rank_metrics,
    relation_categories,
    relation_sides,
)


class TableModel(paddle.nn.Layer):
    """Scores read from a fixed table ``S[h, r, t]`` (higher = more plausible)."""

    def __init__(self, table):
        super().__init__()
        self.table = paddle.to_tensor(np.asarray(table, dtype=np.float32))
        self.calls = 0

    def score_tails(self, h, r):
        assert h.dtype == paddle.int64 and r.dtype == paddle.int64
        self.calls += 1
        return self.table[h, r, :]

    def score_heads(self, r, t):
        assert r.dtype == paddle.int64 and t.dtype == paddle.int64
        self.calls += 1
        return self.table[:, r, t].transpose([1, 0])


def reference_ranks(table, triples, known):
    """One query at a time, one candidate at a time: realistic filtered rank."""
    known = {tuple(map(int, k)) for k in known}
    table = np.asarray(table, dtype=np.float32)
    num_entities = table.shape[0]
    head_ranks, tail_ranks = [], []
    for h, r, t in triples:
        for side in ("head", "tail"):
            target = h if side == "head" else t
            target_score = table[h, r, t]
            higher = equal = candidates = 0
            for e in range(num_entities):
                triple = (e, r, t) if side == "head" else (h, r, e)
                if e != target and triple in known:
                    continue
                candidates += 1
                score = table[triple]
                higher += score > target_score
                equal += score == target_score
            if np.isnan(target_score):
                rank = candidates
            else:
                rank = (higher + 1 + higher + equal) / 2.0
            (head_ranks if side == "head" else tail_ranks).append(rank)
    return np.array(head_ranks), np.array(tail_ranks)


def reference_metrics(ranks):
    ranks = np.asarray(ranks, dtype=float)
    out = {"mrr": np.mean(1 / ranks), "mr": np.mean(ranks)}
    for k in (1, 3, 10):
        out[f"hits@{k}"] = np.mean(ranks <= k)
    return out


def random_case(seed, num_entities=13, num_relations=4, num_known=60, num_eval=25, levels=4):
    rng = np.random.default_rng(seed)
    known = np.stack(
        [
            rng.integers(0, num_entities, num_known),
            rng.integers(0, num_relations, num_known),
            rng.integers(0, num_entities, num_known),
        ],
        axis=1,
    )
    evaluation = known[rng.choice(num_known, num_eval, replace=False)]
    # few distinct score levels -> many ties
    table = rng.integers(0, levels, (num_entities, num_relations, num_entities)).astype(np.float32)
    return table, known, evaluation


def assert_metrics_close(got, expected):
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("batch_size", [1, 7, 256])
def test_matches_bruteforce_with_ties(seed, batch_size):
    table, known, triples = random_case(seed)
    head_ref, tail_ref = reference_ranks(table, triples, known)
    result = evaluate(TableModel(table), triples, known, table.shape[0], batch_size=batch_size)
    assert result["count"] == len(triples)
    assert_metrics_close(result, reference_metrics(np.concatenate([head_ref, tail_ref])))
    assert_metrics_close(result["by_side"]["head"], reference_metrics(head_ref))
    assert_metrics_close(result["by_side"]["tail"], reference_metrics(tail_ref))
    assert result["by_side"]["head"]["count"] == len(triples)
    ranks = evaluate(TableModel(table), triples, known, table.shape[0], batch_size=batch_size, return_ranks=True)["ranks"]
    np.testing.assert_array_equal(ranks["head"], head_ref)
    np.testing.assert_array_equal(ranks["tail"], tail_ref)


def test_by_category_matches_bruteforce_on_subsets():
    table, known, triples = random_case(11, num_relations=5, num_eval=40)
    categories = np.array(["1-1", "N-1", "1-N", "N-N", "N-1"])
    head_ref, tail_ref = reference_ranks(table, triples, known)
    result = evaluate(TableModel(table), triples, known, table.shape[0], categories=categories, batch_size=9)
    query_category = categories[triples[:, 1]]
    assert set(result["by_category"]) == set(query_category)
    for category, entry in result["by_category"].items():
        mask = query_category == category
        assert entry["count"] == mask.sum()
        assert_metrics_close(entry, reference_metrics(np.concatenate([head_ref[mask], tail_ref[mask]])))
        assert_metrics_close(entry["by_side"]["head"], reference_metrics(head_ref[mask]))
        assert_metrics_close(entry["by_side"]["tail"], reference_metrics(tail_ref[mask]))
    assert sum(e["count"] for e in result["by_category"].values()) == len(triples)


def test_by_relation_matches_bruteforce_per_relation():
    table, known, triples = random_case(12, num_relations=5, num_eval=40)
    names = np.array(["/film/actor", "_hypernym", "r2", "r3", "r4"])
    head_ref, tail_ref = reference_ranks(table, triples, known)
    result = evaluate(TableModel(table), triples, known, table.shape[0], batch_size=9, relation_names=names)
    assert "by_category" not in result
    assert set(result["by_relation"]) == set(names[np.unique(triples[:, 1])])
    for relation_id, name in enumerate(names):
        mask = triples[:, 1] == relation_id
        if not mask.any():
            continue
        entry = result["by_relation"][name]
        assert entry["count"] == mask.sum()
        assert_metrics_close(entry, reference_metrics(np.concatenate([head_ref[mask], tail_ref[mask]])))
        assert_metrics_close(entry["by_side"]["tail"], reference_metrics(tail_ref[mask]))
    flat = flatten_metrics(result)
    assert flat["relation:_hypernym/head/mrr"] == result["by_relation"]["_hypernym"]["by_side"]["head"]["mrr"]


def test_target_missing_from_known_is_still_ranked():
    # evaluation triples absent from the filter set (e.g. filtering with train only)
    table, known, _ = random_case(3)
    rng = np.random.default_rng(5)
    triples = np.stack([rng.integers(0, 13, 20), rng.integers(0, 4, 20), rng.integers(0, 13, 20)], 1)
    head_ref, tail_ref = reference_ranks(table, triples, known)
    result = evaluate(TableModel(table), triples, known, 13, batch_size=6)
    assert_metrics_close(result, reference_metrics(np.concatenate([head_ref, tail_ref])))


def test_infinite_and_nan_scores():
    table, known, triples = random_case(8)
    table[table == 0] = -np.inf
    table[table == 3] = np.inf
    nan_triple = triples[0]
    table[tuple(nan_triple)] = np.nan  # target of both queries of the first triple
    head_ref, tail_ref = reference_ranks(table, triples, known)
    result = evaluate(TableModel(table), triples, known, 13, batch_size=4)
    assert_metrics_close(result, reference_metrics(np.concatenate([head_ref, tail_ref])))
    assert np.isfinite(result["mr"])


def test_perfect_model_scores_one():
    table, known, triples = random_case(2, levels=1)
    table[:] = 0.0
    table[tuple(known.T)] = 1.0
    result = evaluate(TableModel(table), triples, known, 13)
    for key in ("mrr", "hits@1", "hits@3", "hits@10", "mr"):
        assert result[key] == 1.0


def test_constant_model_gets_middle_rank():
    num_entities = 13
    _, known, triples = random_case(4)
    table = np.full((num_entities, 4, num_entities), 0.5, np.float32)
    result = evaluate(TableModel(table), triples, known, num_entities, batch_size=5)
    known_set = {tuple(k) for k in known.tolist()}
    expected_tail, expected_head = [], []
    for h, r, t in triples.tolist():
        other_tails = len({k[2] for k in known_set if k[:2] == (h, r)} - {t})
        other_heads = len({k[0] for k in known_set if k[1:] == (r, t)} - {h})
        expected_tail.append((num_entities - other_tails + 1) / 2)
        expected_head.append((num_entities - other_heads + 1) / 2)
    assert result["by_side"]["tail"]["mr"] == pytest.approx(np.mean(expected_tail))
    assert result["by_side"]["head"]["mr"] == pytest.approx(np.mean(expected_head))
    assert result["by_side"]["tail"]["mrr"] == pytest.approx(np.mean(1 / np.array(expected_tail)))
    # a constant model is never lucky: far from rank 1
    assert result["hits@1"] == 0.0


def test_filter_index_reuse_and_duplicates():
    table, known, triples = random_case(9)
    doubled = np.concatenate([known, known[:30]])  # duplicate known triples must not be subtracted twice
    index = FilterIndex(doubled, 13)
    a = evaluate(TableModel(table), triples, index, 13)
    b = evaluate(TableModel(table), triples, known, 13)
    assert flatten_metrics(a) == flatten_metrics(b)
    with pytest.raises(ValueError, match="built for 13 entities, evaluate got 14"):
        evaluate(TableModel(table), triples, index, 14)


def test_filter_index_answers():
    known = np.array([[0, 0, 1], [0, 0, 2], [3, 0, 2], [0, 1, 4], [0, 0, 1]])
    index = FilterIndex(known, 5)
    rows, tails = index.answers("tail", np.array([0, 0, 4, 0]), np.array([0, 1, 0, 7]))
    assert sorted(zip(rows.tolist(), tails.tolist())) == [(0, 1), (0, 2), (1, 4)]
    rows, heads = index.answers("head", np.array([2, 1]), np.array([0, 0]))
    assert sorted(zip(rows.tolist(), heads.tolist())) == [(0, 0), (0, 3), (1, 0)]


def test_restores_training_mode_and_uses_no_grad():
    table, known, triples = random_case(1)
    model = TableModel(table)
    model.train()
    evaluate(model, triples, known, 13)
    assert model.training
    assert model.calls == 2  # one batch per side


def test_bad_inputs_fail_clearly():
    table, known, triples = random_case(1)
    model = TableModel(table)
    with pytest.raises(ValueError, match=r"shape \[n, 3\]"):
        evaluate(model, triples[:, :2], known, 13)
    bad = triples.copy()
    bad[2, 2] = 13
    with pytest.raises(ValueError, match=r"triples\[2\] has tail id 13"):
        evaluate(model, bad, known, 13)
    with pytest.raises(ValueError, match=r"expected \[25, 12\]"):
        evaluate(model, np.minimum(triples, 11), np.minimum(known, 11), 12)
    with pytest.raises(ValueError, match="categories has 2 entries"):
        evaluate(model, triples, known, 13, categories=np.array(["1-1", "N-1"]))
    with pytest.raises(ValueError, match="relation_names has 1 entries"):
        evaluate(model, triples, known, 13, relation_names=["r0"])


def test_flatten_metrics_keys():
    table, known, triples = random_case(0)
    categories = np.array(["1-1", "N-1", "N-1", "N-N"])
    flat = flatten_metrics(evaluate(TableModel(table), triples, known, 13, categories=categories, return_ranks=True))
    for key in ("mrr", "mr", "hits@10", "count", "tail/mrr", "head/hits@1", "N-1/mrr", "N-1/count", "N-1/head/mrr"):
        assert key in flat
    assert all(isinstance(v, (int, float)) for v in flat.values())


def test_rank_metrics_values():
    m = rank_metrics([1, 2, 4, 10.5])
    assert m["mrr"] == pytest.approx((1 + 0.5 + 0.25 + 1 / 10.5) / 4)
    assert m["mr"] == pytest.approx(17.5 / 4)
    assert (m["hits@1"], m["hits@3"], m["hits@10"]) == (0.25, 0.5, 0.75)


def test_relation_categories_definition():
    triples = [
        # r0: 1-1 (a bijection)
        (0, 0, 1), (1, 0, 2), (2, 0, 3),
        # r1: 1-N (head 0 has 3 tails; every tail one head)
        (0, 1, 1), (0, 1, 2), (0, 1, 3),
        # r2: N-1 (three heads -> one tail)
        (1, 2, 0), (2, 2, 0), (3, 2, 0),
        # r3: N-N (complete bipartite 2x2)
        (0, 3, 2), (0, 3, 3), (1, 3, 2), (1, 3, 3),
        # r4: tph exactly 1.5 (3 triples / 2 heads), hpt 1 -> 1-N (threshold is inclusive)
        (0, 4, 1), (0, 4, 2), (1, 4, 3),
        # r5: tph 1.4 just below (7 triples, 5 heads) -> 1-1
        (0, 5, 0), (0, 5, 1), (1, 5, 2), (1, 5, 3), (2, 5, 4), (3, 5, 5), (4, 5, 6),
        # duplicates do not count twice
        (1, 2, 0), (1, 2, 0),
    ]
    categories = relation_categories(np.array(triples), 7)
    assert categories.tolist() == ["1-1", "1-N", "N-1", "N-N", "1-N", "1-1", "unseen"]
    many_heads, many_tails, seen = relation_sides(np.array(triples), 7)
    assert many_heads.tolist() == [False, False, True, True, False, False, False]
    assert many_tails.tolist() == [False, True, False, True, True, False, False]
    assert seen.tolist() == [True] * 6 + [False]
    with pytest.raises(ValueError, match="relation id 7"):
        relation_categories(np.array([[0, 7, 1]]), 7)


def test_progress_bar_does_not_change_results(capsys):
    table, known, triples = random_case(12)
    quiet = evaluate(TableModel(table), triples, known, 13, batch_size=8)
    loud = evaluate(TableModel(table), triples, known, 13, batch_size=8, progress=True)
    assert flatten_metrics(quiet) == flatten_metrics(loud)
    assert "evaluate" in capsys.readouterr().err


def test_paired_mrr_difference_and_its_bootstrap_interval():
    same = paired_mrr_difference([[1, 2], [3, 4]], [[1, 2], [3, 4]])
    assert same["difference"] == 0 and same["ci"] == [0, 0] and same["count"] == 2
    shifted = paired_mrr_difference(np.ones((5, 2)), np.full((5, 2), 2.0))  # every query 1 vs 1/2
    assert shifted["difference"] == pytest.approx(0.5) and shifted["ci"] == pytest.approx([0.5, 0.5])
    rng = np.random.default_rng(0)
    wide, narrow = (paired_mrr_difference(rng.integers(1, 20, (n, 2)), rng.integers(1, 20, (n, 2)), seed=1)
                    for n in (50, 5000))
    for d in (wide, narrow):
        assert d["ci"][0] <= d["difference"] <= d["ci"][1]
    assert narrow["ci"][1] - narrow["ci"][0] < 0.5 * (wide["ci"][1] - wide["ci"][0])  # ~ 1 / sqrt(n)
    assert -0.02 < narrow["ci"][0] < 0 < narrow["ci"][1] < 0.02  # same distribution: 0 inside
    with pytest.raises(ValueError, match="same triples"):
        paired_mrr_difference(np.ones((3, 2)), np.ones((4, 2)))
