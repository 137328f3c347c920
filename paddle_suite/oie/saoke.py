"""SAOKE facts: data model, strict parser and exact serializer.

SAOKE (Symbol Aided Open Knowledge Expression; Sun et al., "Logician", arXiv:1904.12535 and
arXiv:2003.05622) writes every piece of knowledge in a sentence as a fact
``(subject, predicate, object1, object2, ...)`` of one of four kinds:

- **Relation**: a verbal or prepositional relation, ``(李白, 出生于, 碎叶城)``;
- **Attribute**: an entity's attribute value; the symbol predicates ``BIRTH`` and ``DEATH``
  mark birth and death information, ``(李白, BIRTH, 701年)``;
- **Description**: an adjective-like description, predicate ``DESC``, ``(李白, DESC, 浪漫主义)``;
- **Concept**: hypernymy, predicate ``ISA``, ``(萨克斯, ISA, 乐器)``.

The original specification is not available here. What is grounded: the abstracts above; the
public ``SAOKE_DATA.json`` layout as read by third-party loaders on GitHub (one JSON object a
line, ``{"natural": sentence, "logic": [{"subject", "predicate", "object": [...], "time",
"place", "qualifier"}, ...]}``, ``"_"`` for a missing element, collections written ``[a|b]``
inside a field). Where the notation was open we chose, and say so below.

Grammar (EBNF) of the text notation implemented here; every string it accepts is in the one
canonical form, so ``serialize(parse(s)) == s`` for every accepted ``s``::

    facts       = [ fact , { " " , fact } ] ;
    fact        = "(" , arg , ", " , arg , ", " , arg , { ", " , arg } ,
                  [ ", @TIME=" , value ] , [ ", @PLACE=" , value ] , [ ", @QUAL=" , value ] , ")" ;
    arg         = missing | value ;
    value       = placeholder | collection | text ;
    missing     = "_" ;
    placeholder = ( "X" | "Y" | "Z" ) , { digit } ;
    collection  = "[" , item , { "|" , item } , "]" ;
    item        = placeholder | text ;
    text        = lead , { char } ;
    lead        = char | "\\@" | "\\_" | "\\" placeholder ;   (see the escape rules)
    char        = ? any character except \\ ( ) , [ ] | ? | "\\" , special ;
    special     = "\\" | "(" | ")" | "," | "[" | "]" | "|" ;

Escape rules (so any string can be a text and still round-trip exactly): the seven special
characters are always written with a backslash; a text that starts with ``@`` is written with
``\\@``; a text that is exactly ``_`` or a placeholder name is written ``\\_`` / ``\\X``. Any other
escape is an error (it would not round-trip).

Choices where SAOKE is open:

- Missing arguments are ``_`` (as in the released data). Placeholders ``X``, ``Y``, ``Z`` (with an
  optional number) stand for an entity or fact introduced by another fact of the same sentence,
  as in the paper's examples; they are kept as symbols, not resolved.
- ``[a|b|c]`` is one argument holding a collection (or alternatives: the notation does not
  distinguish them, neither do we).
- Time, place and qualifier (separate fields in the JSON layout) are written as trailing keyed
  arguments ``@TIME=``, ``@PLACE=``, ``@QUAL=`` in this order, each at most once.
- A fact has a subject, a predicate and at least one object.
- Separators are exactly ``", "`` inside a fact and one space between facts: a lenient reader
  could not promise the exact round trip.
- Kinds are read from the predicate: ``ISA`` -> Concept, ``DESC`` -> Description, ``BIRTH`` /
  ``DEATH`` -> Attribute, anything else -> Relation. A noun attribute such as
  ``(李白, 字, 太白)`` looks like a relation in the notation and is reported as one.
"""
import dataclasses
import enum
import re
from typing import Optional, Tuple, Union

SPECIALS = frozenset("\\(),[]|")
PLACEHOLDER_RE = re.compile(r"[XYZ][0-9]*\Z")
MODIFIERS = (("time", "@TIME="), ("place", "@PLACE="), ("qualifier", "@QUAL="))


class FactKind(enum.Enum):
    RELATION = "relation"
    ATTRIBUTE = "attribute"
    DESCRIPTION = "description"
    CONCEPT = "concept"


KIND_OF_PREDICATE = {
    "ISA": FactKind.CONCEPT,
    "DESC": FactKind.DESCRIPTION,
    "BIRTH": FactKind.ATTRIBUTE,
    "DEATH": FactKind.ATTRIBUTE,
}
# Symbols of the notation that the Logician decoder emits as keywords (never copied).
SYMBOL_PREDICATES = ("ISA", "DESC", "BIRTH", "DEATH", "IN")


class _MissingType:
    """The ``_`` symbol: an argument the sentence leaves unsaid."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self):
        return "MISSING"

    def __reduce__(self):
        return (_MissingType, ())


MISSING = _MissingType()


@dataclasses.dataclass(frozen=True)
class Placeholder:
    """A reference (``X``, ``Y``, ``Z``, ``X2`` ...) to an entity or fact of another fact."""

    name: str

    def __post_init__(self):
        if not PLACEHOLDER_RE.match(self.name):
            raise ValueError(f"placeholder name must match [XYZ][0-9]*, got {self.name!r}")


@dataclasses.dataclass(frozen=True)
class Collection:
    """``[a|b|c]``: several texts or placeholders in one argument position."""

    items: Tuple[Union[str, Placeholder], ...]

    def __post_init__(self):
        if not self.items:
            raise ValueError("a collection needs at least one item")
        for item in self.items:
            if not (isinstance(item, Placeholder) or (isinstance(item, str) and item)):
                raise ValueError(f"collection items are non-empty texts or placeholders, got {item!r}")


Value = Union[str, Placeholder, Collection]
Arg = Union[Value, _MissingType]


def _check_arg(arg, allow_missing=True):
    if arg is MISSING and allow_missing:
        return
    if isinstance(arg, (Placeholder, Collection)):
        return
    if isinstance(arg, str) and arg:
        return
    raise ValueError(f"not a SAOKE argument: {arg!r} (texts are non-empty strings; use MISSING for '_')")


@dataclasses.dataclass(frozen=True)
class Fact:
    subject: Arg
    predicate: Arg
    objects: Tuple[Arg, ...]
    time: Optional[Value] = None
    place: Optional[Value] = None
    qualifier: Optional[Value] = None

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(self.objects))
        if not self.objects:
            raise ValueError("a SAOKE fact needs at least one object")
        for arg in (self.subject, self.predicate, *self.objects):
            _check_arg(arg)
        for field, _ in MODIFIERS:
            value = getattr(self, field)
            if value is not None:
                _check_arg(value, allow_missing=False)

    @property
    def kind(self):
        return KIND_OF_PREDICATE.get(self.predicate, FactKind.RELATION) if isinstance(
            self.predicate, str) else FactKind.RELATION

    def __str__(self):
        return serialize_fact(self)


class SaokeSyntaxError(ValueError):
    """A malformed fact: ``position`` is the 0-based character offset, ``expected`` what would parse."""

    def __init__(self, text, position, expected):
        self.text = text
        self.position = position
        self.expected = expected
        found = repr(text[position]) if position < len(text) else "end of text"
        start = max(0, position - 20)
        context = text[start:position] + "^" + text[position:position + 20]
        super().__init__(f"position {position}: expected {expected}, found {found} (at ...{context}...)")


# ----------------------------------------------------------------------------- serializer

def serialize_text(text):
    if text == "_" or PLACEHOLDER_RE.match(text):
        return "\\" + text
    body = "".join("\\" + ch if ch in SPECIALS else ch for ch in text)
    return "\\" + body if body.startswith("@") else body


def serialize_arg(arg, text=serialize_text):
    """An argument in the notation; ``text`` writes its plain-text leaves (escaped by default)."""
    if arg is MISSING:
        return "_"
    if isinstance(arg, Placeholder):
        return arg.name
    if isinstance(arg, Collection):
        return "[" + "|".join(serialize_arg(item, text) for item in arg.items) + "]"
    return text(arg)


def serialize_fact(fact):
    parts = [serialize_arg(a) for a in (fact.subject, fact.predicate, *fact.objects)]
    for field, marker in MODIFIERS:
        value = getattr(fact, field)
        if value is not None:
            parts.append(marker + serialize_arg(value))
    return "(" + ", ".join(parts) + ")"


def serialize_facts(facts):
    return " ".join(serialize_fact(f) for f in facts)


# ----------------------------------------------------------------------------- parser

_ARG_END = frozenset(",)|]")


class _Parser:
    def __init__(self, text):
        self.text = text
        self.pos = 0

    def error(self, expected, position=None):
        raise SaokeSyntaxError(self.text, self.pos if position is None else position, expected)

    def peek(self):
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, literal, what=None):
        if not self.text.startswith(literal, self.pos):
            self.error(what or repr(literal))
        self.pos += len(literal)

    def facts(self):
        facts = []
        if not self.text:
            return facts
        facts.append(self.fact())
        while self.pos < len(self.text):
            self.expect(" ", "' ' between facts or end of text")
            facts.append(self.fact())
        return facts

    def fact(self):
        self.expect("(", "'(' opening a fact")
        args = [self.arg()]
        modifiers = {}
        while True:
            if self.peek() == ")":
                if len(args) < 3:
                    self.error("', ' and another argument (a fact has a subject, a predicate and an object)")
                self.pos += 1
                break
            self.expect(", ", "', ' or ')'" if len(args) >= 3 else "', '")
            if self.peek() == "@":
                if len(args) < 3:
                    self.error("a subject, predicate and object before @TIME/@PLACE/@QUAL")
                self.modifier(modifiers)
            elif modifiers:
                self.error("another @-argument or ')' (keyed arguments come last)")
            else:
                args.append(self.arg())
        return Fact(args[0], args[1], tuple(args[2:]), **modifiers)

    def modifier(self, modifiers):
        start = self.pos
        for index, (field, marker) in enumerate(MODIFIERS):
            if self.text.startswith(marker, self.pos):
                later = [f for f, _ in MODIFIERS[index:]]
                if any(f in modifiers for f in later):
                    self.error("@TIME, @PLACE, @QUAL at most once each and in this order", start)
                self.pos += len(marker)
                value = self.arg()
                if value is MISSING:
                    self.error("a value (leave a keyed argument out rather than writing '_')", start + len(marker))
                modifiers[field] = value
                return
        self.error("one of @TIME=, @PLACE=, @QUAL= (write '\\@' for a text starting with '@')")

    def arg(self, in_collection=False):
        start = self.pos
        ch = self.peek()
        if ch == "[" and not in_collection:
            self.pos += 1
            items = [self.arg(in_collection=True)]
            while self.peek() == "|":
                self.pos += 1
                items.append(self.arg(in_collection=True))
            self.expect("]", "'|' or ']' closing the collection")
            return Collection(tuple(items))
        token_end = self._scan_raw_token()
        raw = self.text[start:token_end]
        if raw == "":
            self.error("an argument (text, '_', a placeholder or '[...]')")
        if raw == "_" and not in_collection:
            self.pos = token_end
            return MISSING
        if PLACEHOLDER_RE.match(raw):
            self.pos = token_end
            return Placeholder(raw)
        return self.text_value(start, token_end)

    def _scan_raw_token(self):
        """End of the text run starting here (escapes skipped, specials stop it)."""
        i = self.pos
        while i < len(self.text):
            ch = self.text[i]
            if ch == "\\":
                i += 2
                continue
            if ch in SPECIALS:
                break
            i += 1
        return min(i, len(self.text))

    def text_value(self, start, end):
        chars = []
        i = start
        while i < end:
            ch = self.text[i]
            if ch == "\\":
                if i + 1 >= len(self.text):
                    self.error("a character after '\\'", i + 1)
                chars.append(self.text[i + 1])
                i += 2
            else:
                chars.append(ch)
                i += 1
        value = "".join(chars)
        canonical = serialize_text(value)
        if canonical != self.text[start:end]:
            # Report the first character where the written form departs from the canonical one.
            offset = next((k for k, (a, b) in enumerate(zip(canonical, self.text[start:end])) if a != b),
                          min(len(canonical), end - start))
            self.error(f"canonical text {canonical!r} (escape only \\ ( ) , [ ] |, a leading @, "
                       "and texts equal to '_' or a placeholder)", start + offset)
        self.pos = end
        return value


def parse_fact(text):
    """One fact; the whole string must be that fact."""
    parser = _Parser(text)
    fact = parser.fact()
    if parser.pos != len(text):
        parser.error("end of text after the fact")
    return fact


def parse_facts(text):
    """A space-separated sequence of facts (the empty string is no facts)."""
    return _Parser(text).facts()


# ----------------------------------------------------------------------------- JSON field layout

def parse_field(raw):
    """One field of the released JSON layout, where texts are not escaped.

    ``"_"`` is missing, a placeholder name is a placeholder, ``"[a|b]"`` (every item non-empty) a
    collection; anything else is the text itself.
    """
    if not isinstance(raw, str):
        raise TypeError(f"a SAOKE field is a string, got {type(raw).__name__}: {raw!r}")
    if raw == "_":
        return MISSING
    if PLACEHOLDER_RE.match(raw):
        return Placeholder(raw)
    if len(raw) >= 3 and raw[0] == "[" and raw[-1] == "]":
        items = raw[1:-1].split("|")
        if all(items) and not any(ch in "[]" for item in items for ch in item):
            return Collection(tuple(Placeholder(i) if PLACEHOLDER_RE.match(i) else i for i in items))
    if raw == "":
        raise ValueError("empty field (write '_' for a missing element)")
    return raw


def field_string(arg):
    """Inverse of :func:`parse_field` (the JSON layout's fields carry their text unescaped)."""
    return serialize_arg(arg, text=str)


def fact_from_record(record):
    """A fact from one ``logic`` entry of the JSON layout (a dict, or a string in our notation)."""
    if isinstance(record, str):
        return parse_fact(record)
    if not isinstance(record, dict):
        raise TypeError(f"a fact is a dict or a string, got {type(record).__name__}")
    unknown = set(record) - {"subject", "predicate", "object", "time", "place", "qualifier"}
    if unknown:
        raise ValueError(f"unknown fact keys {sorted(unknown)} (known: subject, predicate, object, time, place, "
                         "qualifier)")
    for key in ("subject", "predicate", "object"):
        if key not in record:
            raise ValueError(f"fact without '{key}'")
    objects = record["object"]
    if isinstance(objects, str):
        objects = [objects]
    if not isinstance(objects, list) or not objects:
        raise ValueError(f"'object' must be a non-empty list of strings, got {record['object']!r}")
    modifiers = {}
    for field in ("time", "place", "qualifier"):
        value = parse_field(record.get(field, "_"))
        if value is not MISSING:
            modifiers[field] = value
    return Fact(parse_field(record["subject"]), parse_field(record["predicate"]),
                tuple(parse_field(o) for o in objects), **modifiers)


def fact_to_record(fact):
    return {
        "subject": field_string(fact.subject),
        "predicate": field_string(fact.predicate),
        "object": [field_string(o) for o in fact.objects],
        "time": field_string(fact.time) if fact.time is not None else "_",
        "place": field_string(fact.place) if fact.place is not None else "_",
        "qualifier": field_string(fact.qualifier) if fact.qualifier is not None else "_",
    }
