"""Fact-level P/R/F1 with one-to-one gestalt matching, exact match, and the OIE2016 lexical match."""
import pytest

from paddle_suite.oie.metrics import (fact_scores, fact_similarity, lexical_match, lexical_scores,
                                      maximum_matching, tuple_words)
from paddle_suite.oie.saoke import Fact, parse_facts


def test_identical_output_scores_one_and_empty_output_zero():
    gold = [parse_facts("(李白, 出生于, 碎叶城) (李白, ISA, 诗人)"), parse_facts("(萨克斯, ISA, 乐器)")]
    perfect = fact_scores(gold, gold)
    assert perfect["precision"] == perfect["recall"] == perfect["f1"] == perfect["exact_f1"] == 1.0
    assert perfect["exact_match"] == 1.0
    nothing = fact_scores([[], []], gold)
    assert nothing["precision"] == nothing["recall"] == nothing["f1"] == 0.0 and nothing["gold"] == 3


def test_threshold_decides_near_misses():
    gold = [parse_facts("(中华人民共和国, 首都, 北京市)")]
    near = [parse_facts("(中华人民共和国, 首都, 北京)")]
    similarity = fact_similarity(near[0][0], gold[0][0])
    assert 0.85 < similarity < 1.0
    assert fact_scores(near, gold, threshold=0.85)["f1"] == 1.0
    strict = fact_scores(near, gold, threshold=similarity + 1e-6)
    assert strict["f1"] == 0.0 and strict["exact_match"] == 0.0 and strict["exact_f1"] == 0.0


def test_each_gold_fact_is_credited_once():
    gold = [parse_facts("(a, b, c)")]
    assert fact_scores([parse_facts("(a, b, c) (a, b, c)")], gold)["precision"] == 0.5


def test_repeated_counts_predictions_similar_to_an_earlier_one_of_the_same_sentence():
    gold = [parse_facts("(中华人民共和国, 首都, 北京市)"), parse_facts("(a, b, c)")]
    predicted = [parse_facts("(中华人民共和国, 首都, 北京市) (中华人民共和国, 首都, 北京) (x, y, z)"),
                 parse_facts("(中华人民共和国, 首都, 北京市)")]  # same fact, another sentence: not a repeat
    assert fact_scores(predicted, gold)["repeated"] == 1 / 4
    assert fact_scores(predicted, gold, threshold=1.0)["repeated"] == 0.0
    assert fact_scores([[], []], gold)["repeated"] == 0.0


def test_maximum_matching_beats_greedy_choice():
    # Prediction 0 may take gold 0 or 1, prediction 1 only gold 0: greedy 0->0 would leave 1 unmatched.
    assert maximum_matching(2, 2, [[0, 1], [0]]) == [1, 0]
    assert sum(i != -1 for i in maximum_matching(3, 2, [[0], [0], [1]])) == 2


def test_scores_are_micro_averaged_over_sentences():
    gold = [parse_facts("(a, b, c) (d, e, f)"), parse_facts("(g, h, i)")]
    predicted = [parse_facts("(a, b, c)"), parse_facts("(g, h, i) (x, y, z)")]
    scores = fact_scores(predicted, gold, threshold=1.0)
    assert scores["matched"] == 2 and scores["precision"] == 2 / 3 and scores["recall"] == 2 / 3
    assert scores["exact_match"] == 0.0
    with pytest.raises(ValueError, match="2 predicted sentences for 1"):
        fact_scores(predicted, gold[:1])


def test_lexical_match_follows_the_benchmark_rule():
    gold = Fact("the company", "acquired", ("a small firm",))
    assert tuple_words(gold) == ["acquired", "the", "company", "a", "small", "firm"]
    # 4 of 6 gold words covered: 0.67 > 0.5.
    assert lexical_match(Fact("the company", "acquired", ("firm",)), gold)
    # 3 of 6: exactly 0.5 is not enough.
    assert not lexical_match(Fact("company", "acquired", ("x",)), Fact("the company", "acquired", ("a firm",)))
    # Long predictions are not penalised.
    assert lexical_match(Fact("the company that grew", "acquired yesterday", ("a small firm in Ohio",)), gold)


def test_lexical_scores_one_to_one_in_gold_order():
    gold = [[Fact("A", "saw", ("B",)), Fact("A", "saw", ("C",))]]
    predicted = [[Fact("A", "saw", ("B",))]]
    scores = lexical_scores(predicted, gold)
    assert scores["matched"] == 1 and scores["precision"] == 1.0 and scores["recall"] == 0.5


def test_sentences_pair_by_the_benchmark_key():
    from paddle_suite.oie.metrics import pair_by_sentence, sentence_key
    from paddle_suite.oie.readers import Example

    assert sentence_key("He said -LRB- loudly -RRB- , `` no . ''") == "Hesaidloudlyno"
    assert sentence_key("He said (loudly), no.") == "Hesaidloudlyno"
    gold = [Example("A saw B .", parse_facts("(A, saw, B)")), Example("C ran .", parse_facts("(C, ran, _)"))]
    predicted = [Example("A saw B.", parse_facts("(A, saw, B)")), Example("Unknown .", parse_facts("(x, y, z)")),
                 Example("A saw B .", parse_facts("(A, saw, C)"))]
    predictions, references, unpaired = pair_by_sentence(gold, predicted)
    assert predictions == [parse_facts("(A, saw, B) (A, saw, C)"), []]  # pooled; none for "C ran ."
    assert references == [e.facts for e in gold] and unpaired == 1
    scores = fact_scores(predictions, references, threshold=1.0)
    assert (scores["matched"], scores["predicted"], scores["gold"]) == (1, 2, 2)
