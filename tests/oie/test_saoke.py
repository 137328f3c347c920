"""SAOKE notation: exact round trip (property-based), strict errors with positions, JSON field layout."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paddle_suite.oie.saoke import (MISSING, Collection, Fact, FactKind, Placeholder, SaokeSyntaxError,
                                    fact_from_record, fact_to_record, field_string, parse_fact, parse_facts,
                                    parse_field, serialize_fact, serialize_facts)

# Texts drawn from an alphabet rich in the characters the notation treats specially.
ALPHABET = "ab 李白_XYZ@=0123\\(),[]|，。"
texts = st.text(alphabet=ALPHABET, min_size=1, max_size=8)
placeholders = st.builds(Placeholder, st.sampled_from(["X", "Y", "Z", "X2", "Y10"]))
collections_ = st.builds(Collection, st.lists(st.one_of(texts, placeholders), min_size=1, max_size=3).map(tuple))
values = st.one_of(texts, placeholders, collections_)
args = st.one_of(values, st.just(MISSING))
facts = st.builds(Fact, args, st.one_of(args, st.sampled_from(["ISA", "DESC", "BIRTH"])),
                  st.lists(args, min_size=1, max_size=3).map(tuple),
                  time=st.none() | values, place=st.none() | values, qualifier=st.none() | values)


@settings(max_examples=300, deadline=None)
@given(st.lists(facts, max_size=3))
def test_serialize_then_parse_gives_the_same_facts_and_text(fact_list):
    text = serialize_facts(fact_list)
    parsed = parse_facts(text)
    assert parsed == fact_list
    assert serialize_facts(parsed) == text


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="(), _X[]|@\\ab", max_size=24))
def test_any_accepted_text_round_trips_and_anything_else_fails_cleanly(text):
    try:
        parsed = parse_facts(text)
    except SaokeSyntaxError as err:
        assert 0 <= err.position <= len(text) and err.expected
        return
    assert serialize_facts(parsed) == text


def test_paper_style_examples():
    concept, missing, description = parse_facts("(萨克斯, ISA, 乐器) (_, 位于, 北京) (X, DESC, [美丽|富饶])")
    assert concept == Fact("萨克斯", "ISA", ("乐器",)) and concept.kind is FactKind.CONCEPT
    assert missing.subject is MISSING and missing.kind is FactKind.RELATION
    assert description.subject == Placeholder("X") and description.kind is FactKind.DESCRIPTION
    assert description.objects == (Collection(("美丽", "富饶")),)
    assert parse_fact("(李白, BIRTH, 701年)").kind is FactKind.ATTRIBUTE
    timed = parse_fact("(李白, 出生于, 碎叶城, @TIME=701年, @PLACE=[西域|X])")
    assert timed.time == "701年" and timed.place == Collection(("西域", Placeholder("X")))


@pytest.mark.parametrize("text, position, expected", [
    ("(a, b)", 5, "another argument"),
    ("(a,b, c)", 2, "', '"),
    ("(a, b, c", 8, "')'"),
    ("a, b, c)", 0, "'('"),
    ("(a, , c)", 4, "an argument"),
    ("(a, b, c)(d, e, f)", 9, "' ' between facts"),
    ("(a, b, \\q)", 7, "canonical text"),
    ("(a, b, c, @TIME=_)", 16, "a value"),
    ("(a, b, c, @PLACE=x, @TIME=y)", 20, "in this order"),
    ("(a, b, c, @WHEN=x)", 10, "@TIME="),
    ("(a, b, c, @TIME=x, d)", 19, "keyed arguments come last"),
    ("(a, b, [c|d)", 11, "']'"),
    ("(a, b, c) ", 10, "'('"),
])
def test_malformed_facts_fail_with_position_and_expectation(text, position, expected):
    with pytest.raises(SaokeSyntaxError) as info:
        parse_facts(text)
    assert info.value.position == position
    assert expected in info.value.expected
    assert f"position {position}" in str(info.value)


def test_reserved_words_as_texts_are_escaped():
    fact = Fact("_", "X", ("@home", "a,b"))
    assert serialize_fact(fact) == "(\\_, \\X, \\@home, a\\,b)"
    assert parse_fact(serialize_fact(fact)) == fact


def test_facts_reject_bad_arguments():
    with pytest.raises(ValueError, match="at least one object"):
        Fact("a", "b", ())
    with pytest.raises(ValueError, match="non-empty"):
        Fact("", "b", ("c",))
    with pytest.raises(ValueError):
        Placeholder("W")


def test_json_field_layout_round_trips():
    record = {"subject": "李白", "predicate": "ISA", "object": ["[诗人|剑客]", "X"], "time": "_",
              "place": "唐朝", "qualifier": "_"}
    fact = fact_from_record(record)
    assert fact.objects == (Collection(("诗人", "剑客")), Placeholder("X")) and fact.place == "唐朝"
    assert fact.time is None
    assert fact_to_record(fact) == record
    for raw in ["_", "X", "[a|b]", "a(b)", "[a]", "[]", "[a|]", "a|b"]:
        assert field_string(parse_field(raw)) == raw
    with pytest.raises(ValueError, match="unknown fact keys"):
        fact_from_record({"subject": "a", "predicate": "b", "object": ["c"], "where": "d"})
    with pytest.raises(ValueError, match="non-empty list"):
        fact_from_record({"subject": "a", "predicate": "b", "object": []})
