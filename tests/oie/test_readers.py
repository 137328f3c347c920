"""Readers: real-file counts from the data README, BIO decoding and its errors, SAOKE JSON lines."""
import json

import pytest

from paddle_suite.oie.readers import (OIE2016_SPLITS, Example, OieDataError, decode_bio, oie2016_split,
                                      read_predictions_jsonl,
                                      read_oie_benchmark, read_saoke_jsonl, read_spansaoke, spansaoke_split,
                                      write_saoke_jsonl)
from paddle_suite.oie.saoke import MISSING, Fact, parse_facts


# lines, distinct sentences, distinct facts (identical lines: 3, 2 and 254)
@pytest.mark.parametrize("split, lines, sentences, facts", [("dev", 4373, 2360, 4370), ("test", 4440, 2384, 4438),
                                                            ("coer_test", 2000, 1698, 1746)])
def test_spansaoke_gathers_the_facts_of_a_sentence(shared_data, split, lines, sentences, facts):
    examples = spansaoke_split(split, shared_data / "oie" / "spansaoke")
    assert len(examples) == sentences and len({e.sentence for e in examples}) == sentences
    assert sum(len(e.facts) for e in examples) == facts
    for example in examples:
        assert len(example.spans) == len(example.facts) == len(set(example.facts))
        for fact, fact_spans in zip(example.facts, example.spans):
            for arg, spans in zip((fact.subject, fact.predicate, fact.objects[0]), fact_spans):
                expected = "".join(example.sentence[a:b] for a, b in spans)
                assert arg == (expected or MISSING)


def test_spansaoke_merges_lines_of_one_sentence_in_file_order(tmp_path):
    path = tmp_path / "spans.txt"
    lines = [{"sentence": "abcd", "label": "B-E1 B-R B-E2 O"}, {"sentence": "xyz", "label": "B-E1 B-R B-E2"},
             {"sentence": "abcd", "label": "O B-E1 B-R B-E2"}, {"sentence": "abcd", "label": "B-E1 B-R B-E2 O"}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    first, second = read_spansaoke(path)
    assert first.facts == [Fact("a", "b", ("c",)), Fact("b", "c", ("d",))] and first.source == f"{path}:1"
    assert first.spans == [(((0, 1),), ((1, 2),), ((2, 3),)), (((1, 2),), ((2, 3),), ((3, 4),))]
    assert second.sentence == "xyz" and second.facts == [Fact("x", "y", ("z",))]


def test_spansaoke_discontinuous_and_missing_roles(shared_data):
    coer = spansaoke_split("coer_test", shared_data / "oie" / "spansaoke")
    pairs = [(fact, spans) for e in coer for fact, spans in zip(e.facts, e.spans)]
    assert sum(fact.subject is MISSING for fact, _ in pairs) == 2
    two_part_subject = [(fact, spans) for fact, spans in pairs if len(spans[0]) == 2]
    assert two_part_subject and all(len(fact.subject) == sum(b - a for a, b in spans[0])
                                    for fact, spans in two_part_subject)


@pytest.mark.parametrize("split, tuples, sentences", [("train", 5078, 1759), ("dev", 1673, 582),
                                                      ("test", 1730, 603)])
def test_oie2016_counts_match_the_data_readme(shared_data, split, tuples, sentences):
    examples = oie2016_split(split, shared_data / "oie" / "oie2016" / "oie_corpus")
    assert len(examples) == sentences
    assert sum(len(e.facts) for e in examples) == tuples


def test_generic_reader_reads_the_other_oie2016_files(shared_data):
    corpus = shared_data / "oie" / "oie2016" / "oie_corpus"
    assert sum(len(e.facts) for e in read_oie_benchmark(corpus / "all.oie")) == 5078 + 1673 + 1730
    for path in sorted(corpus.glob("*/*.oie")):  # newswire/ and wiki/ subsets
        examples = read_oie_benchmark(path)
        assert examples and all(e.facts for e in examples)


def test_oie_benchmark_reader_converts_tuples(tmp_path):
    path = tmp_path / "mine.oie"
    path.write_text("John works for Google .\tworks\tworks for\tJohn\tGoogle\n"
                    "John works for Google .\tworks\tworks\tJohn\n"
                    "Mary sings .\tsings\tsings\tMary\n", encoding="utf-8")
    first, second = read_oie_benchmark(path)
    assert first.facts == [Fact("John", "works for", ("Google",)), Fact("John", "works", (MISSING,))]
    assert second.sentence == "Mary sings ." and len(second.facts) == 1
    bad = tmp_path / "bad.oie"
    bad.write_text("A sentence .\tpred\tpred\n", encoding="utf-8")
    with pytest.raises(OieDataError, match=r"bad.oie:1: 3 tab-separated fields"):
        read_oie_benchmark(bad)


@pytest.mark.parametrize("label, message", [
    ("O I-E1 O", "tag 1 is 'I-E1' after 'O'"),
    ("B-E1 I-R O", "tag 1 is 'I-R' after 'B-E1'"),
    ("B-E3 O O", "unknown role"),
    ("O X O", "expected O, B-<role> or I-<role>"),
    ("O O", "2 tags for a sentence of 3 characters"),
])
def test_malformed_bio_names_file_line_and_tag(tmp_path, label, message):
    path = tmp_path / "spans.txt"
    good = json.dumps({"sentence": "abc", "label": "B-E1 B-R B-E2"})
    bad = json.dumps({"sentence": "abc", "label": label})
    path.write_text(good + "\n" + bad + "\n", encoding="utf-8")
    with pytest.raises(OieDataError) as info:
        read_spansaoke(path)
    assert str(info.value).startswith(f"{path}:2: ") and message in str(info.value)


def test_decode_bio_joins_nothing_itself():
    spans = decode_bio("B-E1 I-E1 B-R B-E1 O B-E2".split())
    assert spans == {"E1": [(0, 2), (3, 4)], "R": [(2, 3)], "E2": [(5, 6)]}


def test_saoke_jsonl_write_then_read(tmp_path):
    examples = [Example("李白出生于碎叶城。", parse_facts("(李白, 出生于, 碎叶城, @TIME=701年) (李白, ISA, [诗人|X])")),
                Example("没有事实。", [])]
    path = tmp_path / "saoke.json"
    write_saoke_jsonl(path, examples)
    back = read_saoke_jsonl(path)
    assert [(e.sentence, e.facts) for e in back] == [(e.sentence, e.facts) for e in examples]
    record = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert record["logic"][1] == {"subject": "李白", "predicate": "ISA", "object": ["[诗人|X]"], "time": "_",
                                  "place": "_", "qualifier": "_"}


def test_saoke_jsonl_accepts_facts_in_notation_and_reports_errors(tmp_path):
    path = tmp_path / "saoke.json"
    lines = [{"natural": "s", "logic": ["(a, b, c)"]}, {"natural": "t", "logic": ["(a, b)"]}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    with pytest.raises(OieDataError, match=r"saoke.json:2: logic\[0\]: position 5"):
        read_saoke_jsonl(path)
    path.write_text(json.dumps({"natural": "s"}) + "\n", encoding="utf-8")
    with pytest.raises(OieDataError, match="saoke.json:1: missing key 'logic'"):
        read_saoke_jsonl(path)
    path.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(OieDataError, match="saoke.json:1: not valid JSON"):
        read_saoke_jsonl(path)


def test_unknown_split_names_the_known_ones():
    with pytest.raises(KeyError, match="train, dev, test"):
        oie2016_split("valid")
    assert OIE2016_SPLITS == ("train", "dev", "test")


def drop_head_column(source, target):
    """An OIE2016 file rewritten in the CaRB layout (sentence, relation, arguments)."""
    lines = source.read_text(encoding="utf-8").splitlines()
    target.write_text("".join("\t".join(line.split("\t")[:1] + line.split("\t")[2:]) + "\n" for line in lines),
                      encoding="utf-8")
    return target


def test_carb_layout_reads_the_same_tuples_without_the_head_column(shared_data, tmp_path):
    gold = shared_data / "oie" / "oie2016" / "oie_corpus" / "test.oie"
    carb = drop_head_column(gold, tmp_path / "test_carb.tsv")
    with_head, without_head = read_oie_benchmark(gold), read_oie_benchmark(carb, layout="carb")
    assert [(e.sentence, e.facts) for e in without_head] == [(e.sentence, e.facts) for e in with_head]
    assert sum(len(e.facts) for e in without_head) == 1730
    # Read in the wrong layout, the first line with a single argument stops it, with the fix named.
    with pytest.raises(OieDataError, match=r"test_carb.tsv:\d+: 3 tab-separated fields.*layout 'carb'"):
        read_oie_benchmark(carb)
    with pytest.raises(ValueError, match="unknown OIE tuple layout 'clausie'.*oie2016, carb"):
        read_oie_benchmark(gold, layout="clausie")


def test_carb_layout_converts_tuples(tmp_path):
    path = tmp_path / "carb.tsv"
    path.write_text("John works for Google .\tworks for\tJohn\tGoogle\tin 2010\nMary sings .\tsings\tMary\n",
                    encoding="utf-8")
    first, second = read_oie_benchmark(path, layout="carb")
    assert first.facts == [Fact("John", "works for", ("Google", "in 2010"))]
    assert second.facts == [Fact("Mary", "sings", (MISSING,))]
    path.write_text("A sentence .\tpred\n", encoding="utf-8")
    with pytest.raises(OieDataError, match=r"carb.tsv:1: 2 tab-separated fields; the carb layout has sentence, "
                                           "relation and at least one argument"):
        read_oie_benchmark(path, layout="carb")


def test_saoke_jsonl_carries_dependency_heads(tmp_path):
    path = tmp_path / "saoke.json"
    examples = [Example("萨克斯是乐器", parse_facts("(萨克斯, ISA, 乐器)"), heads=[2, 0, -1, 5, 5, 3]),
                Example("没有", [])]
    write_saoke_jsonl(path, examples)
    back = read_saoke_jsonl(path)
    assert back[0].heads == [2, 0, -1, 5, 5, 3] and back[1].heads is None


@pytest.mark.parametrize("heads, message", [
    ([0, -1], "2 entries for a sentence of 3 characters"),
    ([1, -1, 3], r"heads\[2\] = 3: a head is another character's index \(0..2\)"),
    ([0, -1, 1], r"heads\[0\] = 0"),
    ("0 1 2", "must be a list of integers"),
    ([1, -1, True], "must be a list of integers"),
])
def test_malformed_dependency_heads_name_file_and_line(tmp_path, heads, message):
    path = tmp_path / "saoke.json"
    lines = [{"natural": "甲乙丙", "logic": ["(甲, 乙, 丙)"]},
             {"natural": "甲乙丙", "logic": [], "heads": heads}]
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n", encoding="utf-8")
    with pytest.raises(OieDataError, match=f"saoke.json:2: .*{message}"):
        read_saoke_jsonl(path)


def test_prediction_lines_are_parsed_strictly(tmp_path):
    path = tmp_path / "pred.jsonl"
    path.write_text(json.dumps({"sentence": "s", "facts": ["(a, b, c)", "(a, ISA, [b|X])"]}) + "\n"
                    + json.dumps({"sentence": "t", "facts": []}) + "\n", encoding="utf-8")
    first, second = read_predictions_jsonl(path)
    assert first.facts == parse_facts("(a, b, c) (a, ISA, [b|X])") and second.facts == []
    path.write_text(json.dumps({"sentence": "s", "facts": ["(a, b)"]}) + "\n", encoding="utf-8")
    with pytest.raises(OieDataError, match=r"pred.jsonl:1: facts\[0\]: position 5: expected"):
        read_predictions_jsonl(path)
    path.write_text(json.dumps({"sentence": "s", "logic": []}) + "\n", encoding="utf-8")
    with pytest.raises(OieDataError, match="pred.jsonl:1: expected .*tools/oie_predict.py --json"):
        read_predictions_jsonl(path)
