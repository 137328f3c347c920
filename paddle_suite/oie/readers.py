"""Readers for SAOKE JSON lines, the SAOKE-derived span data and English OIE benchmarks.

Every reader returns :class:`Example` objects (a sentence and its SAOKE facts) and fails on a
malformed line with ``file:line``, what was wrong and how to fix it; nothing is skipped silently.

- SAOKE JSON lines (``SAOKE_DATA.json``): ``{"natural": sentence, "logic": [fact, ...]}``, a fact
  being a dict with ``subject``, ``predicate``, ``object`` (a list), optional ``time``, ``place``,
  ``qualifier`` (``"_"`` when absent), as released; a fact written as a string in our notation
  (:mod:`paddle_suite.oie.saoke`) is accepted too. :func:`write_saoke_jsonl` writes the dict form.
- spansaoke (``oie/spansaoke/*.txt``): ``{"sentence": ..., "label": "O B-E1 I-E1 ..."}``, one
  character-level BIO tag per character for one (E1, R, E2) fact. A role tagged in several
  spans (16 of the 10,813 lines: e.g. an E1 interrupted by the R tag) is the concatenation of
  its spans in sentence order, since the tags say exactly those characters belong to it; a role
  with no span (2 lines of ``COER_test_2000.txt``) is the missing symbol ``_``. The release has one
  line per fact, and a sentence with several facts appears on several (not adjacent) lines: 1,117 of
  the 2,360 sentences of ``dev_4373.txt``. The reader gathers them into one :class:`Example` per
  sentence (first appearance order, a fact repeated on identical lines kept once), since Logician
  extracts all the facts of a sentence at once; read line by line, the same sentence would carry
  contradictory one-fact targets and a held-out split would share sentences with training.
- OIE2016 and other English benchmarks of tab-separated tuples, one tuple a line, the tuples of a
  sentence grouped by its exact text, in one of two layouts (:data:`OIE_LAYOUTS`):
  ``oie2016`` (Stanovsky & Dagan 2016): ``sentence  predicate-head  predicate  arg0  arg1 ...``;
  ``carb`` (CaRB and other benchmarks without the head column): ``sentence  relation  arg0  arg1 ...``.
  The layout is not guessed (the OIE2016 head is not always a word of its predicate, so no check
  tells the two apart): a file read in the wrong layout is misread or fails on its short lines.
  A tuple becomes the SAOKE fact ``(arg0, predicate, arg1, ...)``; a tuple with only ``arg0``
  becomes ``(arg0, predicate, _)``, since a SAOKE fact always has an object.
- Predictions as written by ``tools/oie_predict.py --json``: ``{"sentence": ..., "facts": ["(..)", ...]}``
  one a line, facts in SAOKE notation (:func:`read_predictions_jsonl`).

SAOKE JSON lines may carry dependency arcs for Logician's gated dependency attention: an optional
``"heads"`` list, one head index per character of ``natural`` (the tokens Logician uses for
Chinese), ``-1`` for the root, as written by any dependency parser run beforehand.
"""
import dataclasses
import json
from pathlib import Path
from typing import List, Optional, Tuple

from paddle_suite.data import DataError, find_dataset
from paddle_suite.io import atomic_write
from paddle_suite.oie.saoke import (MISSING, Fact, SaokeSyntaxError, fact_from_record, fact_to_record,
                                    parse_fact)

SPAN_ROLES = ("E1", "R", "E2")
SPANSAOKE_FILES = {"dev": "dev_4373.txt", "test": "test_4440.txt", "coer_test": "COER_test_2000.txt"}
OIE2016_SPLITS = ("train", "dev", "test")
# layout name -> number of columns before the first argument (sentence, [predicate head,] predicate)
OIE_LAYOUTS = {"oie2016": 3, "carb": 2}


class OieDataError(DataError):
    """A malformed line of an OIE data file (the CLI prints it as one line and exits with status 2)."""


@dataclasses.dataclass
class Example:
    sentence: str
    facts: List[Fact]
    # spansaoke only: per fact, for each role (E1, R, E2), the (start, end) character spans it was read from.
    spans: Optional[List[Tuple[Tuple[Tuple[int, int], ...], ...]]] = None
    source: str = ""  # "file:line" of the (first) line it came from
    # Dependency heads per token (-1 = root) when a parser was run; Logician's graph: auto uses them.
    heads: Optional[List[int]] = None


def _fail(path, line_no, message):
    raise OieDataError(f"{path}:{line_no}: {message}")


def _json_lines(path):
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                _fail(path, line_no, "empty line (every line must be one JSON object; remove blank lines)")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                _fail(path, line_no, f"not valid JSON ({err.msg} at column {err.colno})")
            if not isinstance(record, dict):
                _fail(path, line_no, f"expected a JSON object, got {type(record).__name__}")
            yield line_no, record


# ----------------------------------------------------------------------------- SAOKE JSON lines

def read_saoke_jsonl(path):
    path = Path(path)
    examples = []
    for line_no, record in _json_lines(path):
        for key in ("natural", "logic"):
            if key not in record:
                _fail(path, line_no, f"missing key '{key}' (a SAOKE line is {{\"natural\": ..., \"logic\": [...]}})")
        if not isinstance(record["natural"], str):
            _fail(path, line_no, "'natural' must be the sentence as a string")
        if not isinstance(record["logic"], list):
            _fail(path, line_no, "'logic' must be a list of facts")
        facts = []
        for index, item in enumerate(record["logic"]):
            try:
                facts.append(fact_from_record(item))
            except SaokeSyntaxError as err:
                _fail(path, line_no, f"logic[{index}]: {err}")
            except (TypeError, ValueError) as err:
                _fail(path, line_no, f"logic[{index}]: {err}")
        heads = _heads_of(record, path, line_no)
        examples.append(Example(record["natural"], facts, source=f"{path}:{line_no}", heads=heads))
    return examples


def _heads_of(record, path, line_no):
    """The optional ``heads`` of a SAOKE line: one int per character of ``natural``, -1 to its length - 1."""
    if "heads" not in record:
        return None
    heads, length = record["heads"], len(record["natural"])
    if not isinstance(heads, list) or not all(isinstance(h, int) and not isinstance(h, bool) for h in heads):
        _fail(path, line_no, "'heads' must be a list of integers (one dependency head per character, -1 = root)")
    if len(heads) != length:
        _fail(path, line_no, f"'heads' has {len(heads)} entries for a sentence of {length} characters "
                             "(one head per character)")
    bad = next((i for i, h in enumerate(heads) if not -1 <= h < length or h == i), None)
    if bad is not None:
        _fail(path, line_no, f"heads[{bad}] = {heads[bad]}: a head is another character's index "
                             f"(0..{length - 1}) or -1 for the root")
    return heads


def write_saoke_jsonl(path, examples):
    with atomic_write(path, encoding="utf-8") as handle:
        for example in examples:
            record = {"natural": example.sentence, "logic": [fact_to_record(f) for f in example.facts]}
            if example.heads is not None:
                record["heads"] = list(example.heads)
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_predictions_jsonl(path):
    """Predicted facts per sentence from ``tools/oie_predict.py --json`` output (facts in SAOKE notation)."""
    path = Path(path)
    examples = []
    for line_no, record in _json_lines(path):
        if not isinstance(record.get("sentence"), str) or not isinstance(record.get("facts"), list):
            _fail(path, line_no, "expected {\"sentence\": str, \"facts\": [\"(subject, predicate, object)\", ...]} "
                                 "(the output of tools/oie_predict.py --json)")
        facts = []
        for index, text in enumerate(record["facts"]):
            if not isinstance(text, str):
                _fail(path, line_no, f"facts[{index}] must be a fact in SAOKE notation (a string)")
            try:
                facts.append(parse_fact(text))
            except SaokeSyntaxError as err:
                _fail(path, line_no, f"facts[{index}]: {err}")
        examples.append(Example(record["sentence"], facts, source=f"{path}:{line_no}"))
    return examples


# ----------------------------------------------------------------------------- spansaoke

def decode_bio(tags, roles=SPAN_ROLES):
    """Spans per role from BIO tags; raises ValueError naming the first bad tag position."""
    spans = {role: [] for role in roles}
    current, start = None, 0
    for i, tag in enumerate(list(tags) + ["O"]):
        if tag == "O" or tag.startswith("B-"):
            if current is not None:
                spans[current].append((start, i))
                current = None
            if tag.startswith("B-"):
                role = tag[2:]
                if role not in spans:
                    raise ValueError(f"tag {i} is {tag!r}: unknown role (known: {', '.join(roles)})")
                current, start = role, i
        elif tag.startswith("I-"):
            if current != tag[2:]:
                before = tags[i - 1] if i else "the sentence start"
                raise ValueError(f"tag {i} is {tag!r} after {before!r}: an I- tag must continue a B-/I- of the same role")
        else:
            raise ValueError(f"tag {i} is {tag!r}: expected O, B-<role> or I-<role>")
    return spans


def read_spansaoke(path):
    path = Path(path)
    by_sentence = {}  # sentence -> Example (dicts keep the first-appearance order)
    for line_no, record in _json_lines(path):
        if not isinstance(record.get("sentence"), str) or not isinstance(record.get("label"), str):
            _fail(path, line_no, "expected {\"sentence\": str, \"label\": \"space-separated BIO tags\"}")
        sentence, tags = record["sentence"], record["label"].split(" ")
        if len(tags) != len(sentence):
            _fail(path, line_no, f"{len(tags)} tags for a sentence of {len(sentence)} characters (one tag a character)")
        try:
            spans = decode_bio(tags)
        except ValueError as err:
            _fail(path, line_no, str(err))
        args = ["".join(sentence[a:b] for a, b in spans[role]) or MISSING for role in SPAN_ROLES]
        fact, fact_spans = Fact(args[0], args[1], (args[2],)), tuple(tuple(spans[r]) for r in SPAN_ROLES)
        example = by_sentence.get(sentence)
        if example is None:
            by_sentence[sentence] = Example(sentence, [fact], spans=[fact_spans], source=f"{path}:{line_no}")
        elif fact not in example.facts:
            example.facts.append(fact)
            example.spans.append(fact_spans)
    return list(by_sentence.values())


def spansaoke_split(name, data_path=None):
    if name not in SPANSAOKE_FILES:
        raise KeyError(f"unknown spansaoke split {name!r} (known: {', '.join(SPANSAOKE_FILES)})")
    folder = find_dataset("oie/spansaoke", data_path, required=(SPANSAOKE_FILES[name],))
    return read_spansaoke(folder / SPANSAOKE_FILES[name])


# ----------------------------------------------------------------------------- OIE2016 layout

def read_oie_benchmark(path, layout="oie2016"):
    """Sentences (in order of first appearance) with their tuples from a tab-separated tuple file.

    ``layout``: ``oie2016`` (sentence, predicate head, predicate, arguments) or ``carb`` (sentence,
    relation, arguments); see the module docstring.
    """
    if layout not in OIE_LAYOUTS:
        raise ValueError(f"unknown OIE tuple layout {layout!r} (known: {', '.join(OIE_LAYOUTS)})")
    path = Path(path)
    leading = OIE_LAYOUTS[layout]
    columns = "sentence, predicate head, predicate" if layout == "oie2016" else "sentence, relation"
    by_sentence = {}
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            line = line.rstrip("\r\n")
            fields = line.split("\t")
            if len(fields) < leading + 1:
                hint = (" (a file without the predicate-head column? read it with layout 'carb')"
                        if layout == "oie2016" and len(fields) == 3 else "")
                _fail(path, line_no, f"{len(fields)} tab-separated fields; the {layout} layout has {columns} "
                                     f"and at least one argument{hint}")
            empty = [i for i, f in enumerate(fields) if not f.strip()]
            if empty:
                _fail(path, line_no, f"field {empty[0] + 1} is empty")
            sentence, predicate, args = fields[0], fields[leading - 1], fields[leading:]
            objects = tuple(args[1:]) or (MISSING,)
            fact = Fact(args[0], predicate, objects)
            if sentence in by_sentence:
                by_sentence[sentence].facts.append(fact)
            else:
                by_sentence[sentence] = Example(sentence, [fact], source=f"{path}:{line_no}")
    return list(by_sentence.values())


def oie2016_split(split, data_path=None):
    if split not in OIE2016_SPLITS:
        raise KeyError(f"unknown OIE2016 split {split!r} (known: {', '.join(OIE2016_SPLITS)})")
    folder = find_dataset("oie/oie2016/oie_corpus", data_path, required=(f"{split}.oie",))
    return read_oie_benchmark(folder / f"{split}.oie")
