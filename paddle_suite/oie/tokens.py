"""Tokens for Logician: source vocabulary, the keyword vocabulary, target encoding and the fact grammar.

Tokenisation: characters for Chinese (every character, spaces included, so ``"".join`` restores
the text), space-separated words for English (the OIE2016 sentences are tokenised already).

Vocabulary: a small own class rather than ``paddlenlp.data.Vocab``. Importing ``paddlenlp.data``
loads the whole of paddlenlp (taskflow, datasets, scikit-learn and scipy *after* paddle: the
import-order crash in docs/platform.md) and took 4 s more than ``import paddle`` here; what we need
is a token -> id map with counts, ``<pad>``/``<unk>`` and a minimum frequency.

Output side (restricted copy): every target token is either one of the :data:`KEYWORDS` (the
SAOKE symbols and the fact punctuation) or a copy of a source position. A text token that does
not occur in the sentence cannot be copied and becomes ``<unk>`` (counted by
:func:`encode_target`, so data preparation can report how much of the target is unreachable).
Decoder input ids: keyword ``k`` -> ``k``; a copied word -> ``len(KEYWORDS) + word id``.
Training targets list a sentence's facts left to right by default (:func:`sentence_order`).

Target grammar (one token a step, :class:`FactGrammar`), mirroring :mod:`paddle_suite.oie.saoke`::

    output   = { fact } "<eos>"
    fact     = "(" arg "," arg "," arg { "," arg } { "," marker value } ")"
    marker   = "@TIME" | "@PLACE" | "@QUAL"            (in this order, each at most once)
    arg      = "_" | value
    value    = placeholder | symbol | "[" item { "|" item } "]" | word { word }
    item     = placeholder | word { word }
    symbol   = "ISA" | "DESC" | "BIRTH" | "DEATH" | "IN"
    word     = copied source token | "<unk>"
"""
import collections
import dataclasses

from paddle_suite.oie.saoke import (MISSING, MODIFIERS, SYMBOL_PREDICATES, Collection, Fact, Placeholder)

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
OPEN, SEP, CLOSE, MISS, LBRACK, BAR, RBRACK = "(", ",", ")", "_", "[", "|", "]"
MARKERS = ("@TIME", "@PLACE", "@QUAL")
PLACEHOLDERS = ("X", "Y", "Z")
KEYWORDS = (PAD, BOS, EOS, UNK, OPEN, SEP, CLOSE, MISS, LBRACK, BAR, RBRACK, *MARKERS, *SYMBOL_PREDICATES,
            *PLACEHOLDERS)
KEYWORD_ID = {k: i for i, k in enumerate(KEYWORDS)}
NUM_KEYWORDS = len(KEYWORDS)
MARKER_FIELD = dict(zip(MARKERS, (field for field, _ in MODIFIERS)))
LANGUAGES = ("zh", "en")


def tokenize(text, language):
    if language == "zh":
        return list(text)
    if language == "en":
        return text.split()
    raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")


def detokenize(tokens, language):
    return ("" if language == "zh" else " ").join(tokens)


class Vocab:
    """Source-word vocabulary: id 0 is ``<pad>``, id 1 ``<unk>``, then words by falling frequency."""

    def __init__(self, words):
        self.itos = [PAD, UNK, *words]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("duplicate words in the vocabulary")

    @classmethod
    def build(cls, token_lists, min_freq=1, max_size=None):
        counts = collections.Counter(t for tokens in token_lists for t in tokens)
        words = sorted((w for w, c in counts.items() if c >= min_freq and w not in (PAD, UNK)),
                       key=lambda w: (-counts[w], w))
        return cls(words[:max_size] if max_size else words)

    def __len__(self):
        return len(self.itos)

    def ids(self, tokens):
        return [self.stoi.get(t, 1) for t in tokens]

    def to_dict(self):
        return {"itos": self.itos}

    @classmethod
    def from_dict(cls, state):
        itos = state["itos"]
        if itos[:2] != [PAD, UNK]:
            raise ValueError("not a saved Vocab: it must start with <pad>, <unk>")
        return cls(itos[2:])


FACT_ORDERS = ("sentence", "as_read")


def _first_index(tokens, part):
    """First position where the token list ``part`` starts in ``tokens`` (its first token alone if
    it never occurs whole), or ``len(tokens)`` when not even that occurs."""
    if not part:
        return len(tokens)
    starts = [i for i, token in enumerate(tokens) if token == part[0]]
    whole = [i for i in starts if tokens[i:i + len(part)] == part]
    return (whole or starts or [len(tokens)])[0]


def _text_positions(arg, src_tokens, language):
    """Sentence positions of the texts in an argument (none for ``_``, placeholders and symbols)."""
    if isinstance(arg, Collection):
        return [p for item in arg.items for p in _text_positions(item, src_tokens, language)]
    if isinstance(arg, str) and arg not in SYMBOL_PREDICATES:
        return [_first_index(src_tokens, tokenize(arg, language))]
    return []


def sentence_order(facts, src_tokens, language):
    """``facts`` in the order they are said in the sentence: by the leftmost position of any of their
    texts, then the predicate's position, then the arguments' (a stable sort: exact ties keep their order).

    Why: the released files list a sentence's facts in no particular order (the spansaoke release
    has them on scattered lines), so a decoder trained on that order cannot tell which fact comes
    next nor whether one is left: its P(<eos>) after a fact came out nearly the same whether more
    followed or not, and it decoded one fact a sentence. Left to right, the next fact is the one its
    attention reaches next. Modifiers (time, place, qualifier) do not take part in the order.
    """
    end = len(src_tokens)

    def key(fact):
        per_arg = [min(_text_positions(arg, src_tokens, language), default=end)
                   for arg in (fact.predicate, fact.subject, *fact.objects)]
        return (min(per_arg), *per_arg)

    return sorted(facts, key=key)


# Actions: ("kw", keyword id) or ("copy", source position).

@dataclasses.dataclass
class EncodedTarget:
    actions: list
    unreachable: int  # text tokens that are not in the sentence (encoded as <unk>)


def encode_target(facts, src_tokens, language):
    """The action sequence (ending in ``<eos>``) that spells ``facts`` by keywords and copies.

    A token that occurs at several source positions is copied from its first occurrence; the
    loss credits every position holding the same token (see :func:`copy_targets`).
    """
    first_position = {}
    for i, token in enumerate(src_tokens):
        first_position.setdefault(token, i)
    actions = []
    unreachable = 0

    def kw(name):
        actions.append(("kw", KEYWORD_ID[name]))

    def words(text):
        nonlocal unreachable
        tokens = tokenize(text, language)
        if not tokens:  # a text of spaces only (English): nothing to copy
            unreachable += 1
            kw(UNK)
        for token in tokens:
            if token in first_position:
                actions.append(("copy", first_position[token]))
            else:
                unreachable += 1
                kw(UNK)

    def value(arg, in_collection=False):
        if isinstance(arg, Placeholder):
            kw(arg.name if arg.name in PLACEHOLDERS else UNK)
        elif isinstance(arg, Collection) and not in_collection:
            kw(LBRACK)
            for index, item in enumerate(arg.items):
                if index:
                    kw(BAR)
                value(item, in_collection=True)
            kw(RBRACK)
        elif not in_collection and arg in SYMBOL_PREDICATES:
            kw(arg)
        else:
            words(arg)

    for fact in facts:
        kw(OPEN)
        for index, arg in enumerate((fact.subject, fact.predicate, *fact.objects)):
            if index:
                kw(SEP)
            if arg is MISSING:
                kw(MISS)
            else:
                value(arg)
        for marker, field in MARKER_FIELD.items():
            if getattr(fact, field) is not None:
                kw(SEP)
                kw(marker)
                value(getattr(fact, field))
        kw(CLOSE)
    kw(EOS)
    return EncodedTarget(actions, unreachable)


@dataclasses.dataclass(frozen=True)
class GrammarState:
    phase: str = "fact"      # fact | sep | marker_value | text | atom | item | item_text | item_end | done
    n_args: int = 0          # positional arguments completed in the current fact
    next_marker: int = 0     # index into MARKERS of the first marker still allowed (> 0: markers only)
    in_marker: bool = False  # the argument being read is a marker's value


class FactGrammar:
    """Which actions may follow a prefix, so beam search only builds well-formed facts."""

    _VALUE_START = [KEYWORD_ID[k] for k in (*PLACEHOLDERS, *SYMBOL_PREDICATES, LBRACK, UNK)]
    _ITEM_START = [KEYWORD_ID[k] for k in (*PLACEHOLDERS, UNK)]

    def allowed(self, state):
        """(keyword ids allowed, whether copying is allowed) after a prefix in ``state``."""
        phase = state.phase
        if phase == "fact":
            return [KEYWORD_ID[OPEN], KEYWORD_ID[EOS]], False
        if phase == "sep":  # start of an argument: after "(" or ","
            markers = [KEYWORD_ID[m] for m in MARKERS[state.next_marker:]] if state.n_args >= 3 else []
            if state.next_marker > 0:  # keyed arguments come last
                return markers, False
            return self._VALUE_START + [KEYWORD_ID[MISS]] + markers, True
        if phase == "marker_value":
            return list(self._VALUE_START), True
        if phase in ("text", "atom"):
            keywords = []
            if not (state.in_marker and state.next_marker >= len(MARKERS)):
                keywords.append(KEYWORD_ID[SEP])
            if state.in_marker or state.n_args + 1 >= 3:
                keywords.append(KEYWORD_ID[CLOSE])
            if phase == "text":
                keywords.append(KEYWORD_ID[UNK])
            return keywords, phase == "text"
        if phase == "item":
            return list(self._ITEM_START), True
        if phase == "item_text":
            return [KEYWORD_ID[BAR], KEYWORD_ID[RBRACK], KEYWORD_ID[UNK]], True
        if phase == "item_end":
            return [KEYWORD_ID[BAR], KEYWORD_ID[RBRACK]], False
        return [], False  # done

    def advance(self, state, action):
        kind, value = action
        keywords, copy_ok = self.allowed(state)
        if (kind == "copy" and not copy_ok) or (kind == "kw" and value not in keywords):
            name = "copy" if kind == "copy" else KEYWORDS[value]
            raise ValueError(f"{name!r} cannot follow in phase {state.phase!r}")
        word = kind == "copy" or KEYWORDS[value] == UNK
        token = None if kind == "copy" else KEYWORDS[value]
        replace = dataclasses.replace
        phase = state.phase
        if phase == "fact":
            return replace(state, phase="done") if token == EOS else GrammarState(phase="sep")
        if phase in ("sep", "marker_value"):
            if token in MARKERS:
                return replace(state, phase="marker_value", in_marker=True, next_marker=MARKERS.index(token) + 1)
            if word:
                return replace(state, phase="text")
            return replace(state, phase="item" if token == LBRACK else "atom")
        if phase in ("text", "atom"):
            if word:
                return replace(state, phase="text")
            if token == CLOSE:
                return GrammarState(phase="fact")
            n_args = state.n_args if state.in_marker else state.n_args + 1
            return replace(state, phase="sep", n_args=n_args, in_marker=False)
        if phase == "item":
            return replace(state, phase="item_text" if word else "item_end")
        if phase in ("item_text", "item_end"):
            if word:
                return replace(state, phase="item_text")
            return replace(state, phase="item" if token == BAR else "atom")
        raise ValueError("no action may follow <eos>")


def decode_actions(actions, src_tokens, language, stop_at_incomplete=True):
    """Facts spelled by an action sequence (as produced under :class:`FactGrammar`).

    A trailing fact left open (decoding hit its length limit) is dropped when
    ``stop_at_incomplete``; otherwise it is an error.
    """
    grammar = FactGrammar()
    state = GrammarState()
    facts = []
    args, modifiers, current, words, items = [], {}, None, [], None
    marker_field = None

    def flush_words():
        nonlocal words
        text = detokenize(words, language)
        words = []
        return text or UNK

    def close_value(value):
        nonlocal marker_field
        if marker_field:
            modifiers[marker_field] = value
            marker_field = None
        else:
            args.append(value)

    for action in actions:
        prev = state
        state = grammar.advance(state, action)
        kind, value = action
        token = None if kind == "copy" else KEYWORDS[value]
        if prev.phase == "fact":
            if token == EOS:
                break
            args, modifiers, words, items, current = [], {}, [], None, None
            continue
        if kind == "copy" or token == UNK:
            words.append(src_tokens[value] if kind == "copy" else UNK)
            continue
        if token in MARKERS:
            marker_field = MARKER_FIELD[token]
            continue
        if token == LBRACK:
            items = []
            continue
        if token in PLACEHOLDERS:
            current = Placeholder(token)
        elif token == MISS:
            current = MISSING
        elif token in SYMBOL_PREDICATES:
            current = token
        if items is not None and token in (BAR, RBRACK):
            items.append(flush_words() if words else current)
            current = None
            if token == RBRACK:
                current, items = Collection(tuple(items)), None
            continue
        if token in (SEP, CLOSE):
            close_value(flush_words() if words else current)
            current = None
            if token == CLOSE:
                facts.append(Fact(args[0], args[1], tuple(args[2:]), **modifiers))
    else:
        if state.phase not in ("fact", "done") and not stop_at_incomplete:
            raise ValueError("the action sequence ends inside a fact")
    return facts
