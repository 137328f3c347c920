"""Fact-level scores for SAOKE-style output and the OIE2016 lexical-match scorer.

SAOKE fact scores (as SAOKE evaluations do: a predicted fact counts as correct when it is
similar enough to a gold fact, each gold fact credited at most once):

- similarity of two facts = ``difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()`` (the
  gestalt pattern matching of Ratcliff/Obershelp) of their canonical serialisations;
  ``autojunk`` is off so long facts are not scored through difflib's popularity heuristic;
- a pair may match when its similarity is >= ``threshold`` (configurable; 0.85 by default, our
  choice: the paper's value is not available here);
- the pairs credited form a **maximum** one-to-one matching (augmenting paths, Kuhn's algorithm)
  of each sentence's predicted and gold facts over the allowed pairs. A greedy pass by
  similarity can pair a prediction with the one gold fact another prediction needed and so
  under-count; the maximum matching never does. Duplicate predictions therefore count once.
- precision = matched / predicted, recall = matched / gold, summed over sentences (micro);
  ``exact_match`` = the share of sentences whose predicted facts equal the gold ones as
  multisets; ``exact_f1`` = F1 at threshold 1.0.
- ``repeated`` = the share of predicted facts similar (>= ``threshold``) to an earlier predicted
  fact of the same sentence: the repetition Logician's coverage mechanism is meant to prevent,
  which the matching above forgives in recall and charges only to precision.

OIE2016 lexical match (Stanovsky & Dagan 2016, the benchmark's ``lexicalMatch``): a tuple's
words are the space-split words of ``predicate arg0 arg1 ...``; a predicted tuple matches a gold
one when (number of equal (gold word, predicted word) pairs) / (number of gold words) > 0.5.
As in the benchmark the pair count is not clipped (a word repeated on both sides counts
more than once) and a long prediction is not penalised. Matching is one-to-one and greedy in
the benchmark's order: each gold tuple takes the first still unused prediction that matches.

Scoring a file of predictions against a gold file (``tools/oie_score.py``): sentences are paired
as the OIE2016 benchmark pairs them, by a key with spaces and ASCII punctuation removed and the Penn
Treebank bracket escapes (``-LRB-`` ...) undone (:func:`sentence_key`); a gold sentence without
predictions has none, predictions for sentences outside the gold file are left out (and counted).
"""
import collections
import difflib
import re
import string

from paddle_suite.oie.saoke import MISSING, Collection, Placeholder, serialize_fact

DEFAULT_THRESHOLD = 0.85
LEXICAL_THRESHOLD = 0.5


def fact_similarity(a, b):
    return difflib.SequenceMatcher(None, serialize_fact(a), serialize_fact(b), autojunk=False).ratio()


def maximum_matching(n_left, n_right, allowed):
    """Size-maximal one-to-one matching; ``allowed[i]`` lists the right nodes left node i may take.

    Returns ``match_of_right`` (right index -> left index or -1).
    """
    match_of_right = [-1] * n_right

    def augment(i, seen):
        for j in allowed[i]:
            if j in seen:
                continue
            seen.add(j)
            if match_of_right[j] == -1 or augment(match_of_right[j], seen):
                match_of_right[j] = i
                return True
        return False

    for i in range(n_left):
        augment(i, set())
    return match_of_right


def _prf(matched, predicted, gold):
    precision = matched / predicted if predicted else 0.0
    recall = matched / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _matched_count(predicted, gold, threshold):
    allowed = [[j for j, g in enumerate(gold) if fact_similarity(p, g) >= threshold] for p in predicted]
    return sum(1 for i in maximum_matching(len(predicted), len(gold), allowed) if i != -1)


def _repeated_count(predicted, threshold):
    return sum(any(fact_similarity(p, earlier) >= threshold for earlier in predicted[:i])
               for i, p in enumerate(predicted))


def fact_scores(predictions, references, threshold=DEFAULT_THRESHOLD):
    """P/R/F1 over sentences. ``predictions`` and ``references``: one list of Facts per sentence."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predicted sentences for {len(references)} gold ones")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    totals = collections.Counter()
    for predicted, gold in zip(predictions, references):
        totals["predicted"] += len(predicted)
        totals["gold"] += len(gold)
        totals["matched"] += _matched_count(predicted, gold, threshold)
        totals["exact_matched"] += _matched_count(predicted, gold, 1.0)
        totals["repeated"] += _repeated_count(predicted, threshold)
        totals["exact_sentences"] += collections.Counter(map(serialize_fact, predicted)) == collections.Counter(
            map(serialize_fact, gold))
    precision, recall, f1 = _prf(totals["matched"], totals["predicted"], totals["gold"])
    _, _, exact_f1 = _prf(totals["exact_matched"], totals["predicted"], totals["gold"])
    return {
        "precision": precision, "recall": recall, "f1": f1, "exact_f1": exact_f1,
        "exact_match": totals["exact_sentences"] / len(references) if references else 0.0,
        "repeated": totals["repeated"] / totals["predicted"] if totals["predicted"] else 0.0,
        "predicted": totals["predicted"], "gold": totals["gold"], "matched": totals["matched"],
    }


# ----------------------------------------------------------------------------- OIE2016 lexical match

def _arg_words(arg):
    if arg is MISSING:
        return []
    if isinstance(arg, Placeholder):
        return [arg.name]
    if isinstance(arg, Collection):
        return [w for item in arg.items for w in _arg_words(item)]
    return arg.split(" ")


def tuple_words(fact):
    """The benchmark's bag of words: predicate first, then the arguments in order."""
    words = _arg_words(fact.predicate) + _arg_words(fact.subject)
    for obj in fact.objects:
        words += _arg_words(obj)
    return [w for w in words if w]


def lexical_match(predicted, gold, threshold=LEXICAL_THRESHOLD):
    gold_words, predicted_words = tuple_words(gold), tuple_words(predicted)
    if not gold_words:
        return False
    counts = collections.Counter(predicted_words)
    pairs = sum(counts[w] for w in gold_words)
    return pairs / len(gold_words) > threshold


def lexical_scores(predictions, references, threshold=LEXICAL_THRESHOLD):
    """OIE2016 precision/recall/F1 with the benchmark's lexical match (one operating point)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predicted sentences for {len(references)} gold ones")
    matched = predicted_total = gold_total = 0
    for predicted, gold in zip(predictions, references):
        predicted_total += len(predicted)
        gold_total += len(gold)
        used = set()
        for g in gold:
            for index, p in enumerate(predicted):
                if index not in used and lexical_match(p, g, threshold):
                    used.add(index)
                    matched += 1
                    break
    precision, recall, f1 = _prf(matched, predicted_total, gold_total)
    return {"precision": precision, "recall": recall, "f1": f1,
            "predicted": predicted_total, "gold": gold_total, "matched": matched}


# ----------------------------------------------------------------------------- pairing files by sentence

PTB_ESCAPES = (("(", "-LRB-"), (")", "-RRB-"), ("[", "-LSB-"), ("]", "-RSB-"), ("{", "-LCB-"), ("}", "-RCB-"))
_ASCII_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def sentence_key(sentence):
    """The OIE2016 benchmark's sentence key: no spaces, PTB bracket escapes undone, no ASCII punctuation."""
    key = sentence.replace(" ", "")
    for bracket, escape in PTB_ESCAPES:
        key = key.replace(escape, bracket)
    return _ASCII_PUNCTUATION.sub("", key)


def pair_by_sentence(gold_examples, predicted_examples):
    """(predicted facts per gold sentence, gold facts per gold sentence, predicted sentences not in gold).

    Both arguments are lists of objects with ``sentence`` and ``facts`` (``readers.Example``); facts
    predicted for the same sentence on several lines are pooled.
    """
    predicted = collections.defaultdict(list)
    for example in predicted_examples:
        predicted[sentence_key(example.sentence)].extend(example.facts)
    gold_keys = [sentence_key(e.sentence) for e in gold_examples]
    unpaired = len(set(predicted) - set(gold_keys))
    return [list(predicted.get(k, [])) for k in gold_keys], [e.facts for e in gold_examples], unpaired
