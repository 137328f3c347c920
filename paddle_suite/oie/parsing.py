"""Syntactic arcs for Logician's gated dependency attention, from CMU's link grammar parser (English).

No dependency parser with a bundled model installs offline here: spaCy, Stanza, DDParser, LTP and
SuPar fetch their models at run time. The link grammar parser ships its English dictionary in
Debian (``apt-get install python3-link-grammar link-grammar-dictionaries-en``), so it is the parser
``DataLoader.parser: link_grammar`` runs. Its linkage is a set of labelled, undirected links between
words (subject-verb, verb-object, determiner-noun, preposition-object ...); they are not a
dependency tree, but they link the same head-dependent pairs in most cases, and the gate only needs
which words are syntactically related: ``model.dependency_arcs`` makes every arc symmetric anyway.

Reading of a linkage as Logician's ``heads`` (one head index per whitespace token, -1 for none):

- the parser gets the sentence as its whitespace tokens joined by single spaces (the tokens
  Logician sees); a token it splits (``don't`` -> ``do`` ``n't``) is the token holding the piece's
  first character, and links inside one token or to the walls are dropped;
- the heads are a breadth-first spanning tree of the resulting token graph, rooted at the token
  the LEFT-WALL links to (else the component's first token): a tree keeps ``heads`` a valid
  parse, and the few links that close a cycle are left out;
- the parser first looks for a linkage of every word; only if there is none does it skip words
  (null words): a token left unlinked has head -1 and only its self loop;
- a sentence the parser cannot link within ``parse_seconds`` gets no heads (``None``): under
  ``Arch.graph: auto`` it falls back to the adjacency of the sentence, and the count is logged.

Parsing is slow (a quarter of a second a sentence on one core, more for long ones), so it runs in
worker processes and each file's heads are cached as JSON under ``<cache>/oie_link_grammar/``
(:func:`paddle_suite.data.cache_root`), keyed by the sentences, the settings and the parser version.
"""
import concurrent.futures
import functools
import hashlib
import json
import logging
import os
import sys
from collections import deque

from tqdm import tqdm

from paddle_suite.config import ConfigError
from paddle_suite.data import cache_root
from paddle_suite.io import atomic_write

log = logging.getLogger(__name__)

PARSERS = ("none", "link_grammar")
HEADS_SCHEME = 2  # bump when the reading of a linkage changes: it keys the cache
DEBIAN_DIST_PACKAGES = "/usr/lib/python3/dist-packages"
INSTALL_HINT = ("DataLoader.parser: link_grammar needs CMU's link grammar parser and its Python bindings: "
                "apt-get install python3-link-grammar link-grammar-dictionaries-en (Debian's bindings are built "
                "for CPython 3.11), or set DataLoader.parser: none")


def import_link_grammar():
    """The ``linkgrammar`` module, from this interpreter's path or Debian's ``python3-link-grammar``."""
    try:
        import linkgrammar
        return linkgrammar
    except ImportError:
        pass
    if sys.version_info[:2] == (3, 11) and os.path.isdir(os.path.join(DEBIAN_DIST_PACKAGES, "linkgrammar")):
        # only for this import: the rest of Debian's packages must not shadow the environment's own
        sys.path.append(DEBIAN_DIST_PACKAGES)
        try:
            import linkgrammar
            return linkgrammar
        except ImportError as err:
            raise ConfigError(f"{INSTALL_HINT} ({err})") from None
        finally:
            sys.path.remove(DEBIAN_DIST_PACKAGES)
    raise ConfigError(INSTALL_HINT)


def heads_from_links(num_tokens, links, wall_links=()):
    """Heads of a breadth-first spanning tree over undirected token ``links`` (pairs of indices).

    ``wall_links``: tokens the LEFT-WALL links to; the first one in a component roots it.
    """
    neighbours = [[] for _ in range(num_tokens)]
    for a, b in links:
        if a != b:
            neighbours[a].append(b)
            neighbours[b].append(a)
    heads = [-1] * num_tokens
    seen = [False] * num_tokens
    roots = [t for t in wall_links if 0 <= t < num_tokens] + list(range(num_tokens))
    for root in roots:
        if seen[root]:
            continue
        seen[root] = True
        queue = deque([root])
        while queue:
            node = queue.popleft()
            for other in sorted(neighbours[node]):
                if not seen[other]:
                    seen[other] = True
                    heads[other] = node
                    queue.append(other)
    return heads


def _token_of_char(tokens):
    """Character offset in ``" ".join(tokens)`` -> token index."""
    owner = []
    for index, token in enumerate(tokens):
        owner += [index] * (len(token) + 1)  # the token and the space after it
    return owner


class LinkGrammarParser:
    """One parser (dictionary and options); :meth:`heads` of a tokenised sentence."""

    def __init__(self, parse_seconds=2, language="en"):
        self.lg = import_link_grammar()
        self.dictionary = self.lg.Dictionary(language)
        # A linkage of every word first; only when there is none, one that skips words (null words).
        # 100 linkages a pass: the parser ranks them (post-processing violations last, then cost), and
        # with fewer it samples, and the sample is often one it then rejects (measured: 42 of 60 OIE2016
        # dev sentences unlinked at 1, 24 at 100).
        self.passes = [self.lg.ParseOptions(min_null_count=low, max_null_count=high, linkage_limit=100,
                                            max_parse_time=int(parse_seconds), verbosity=0)
                       for low, high in ((0, 0), (1, 250))]

    def linkage(self, text):
        """The parser's best linkage of ``text``: with no null words if there is one; None if none in time."""
        for options in self.passes:
            try:
                linkage = next(iter(self.lg.Sentence(text, self.dictionary, options).parse()), None)
            except self.lg.LG_TimerExhausted:
                return None
            if linkage is not None:
                return linkage
        return None

    def heads(self, tokens):
        """Heads per token, or None when the parser finds no linkage in time."""
        if not tokens:
            return []
        linkage = self.linkage(" ".join(tokens))
        if linkage is None:
            return None
        owner = _token_of_char(tokens)
        words = [linkage.word(w) for w in range(linkage.num_of_words())]
        word_token = {w: owner[min(linkage.word_char_start(w), len(owner) - 1)]
                      for w, word in enumerate(words) if word not in ("LEFT-WALL", "RIGHT-WALL")}
        links, wall_links = [], []
        clg = self.lg.clinkgrammar
        for index in range(linkage.num_of_links()):
            left = clg.linkage_get_link_lword(linkage._obj, index)
            right = clg.linkage_get_link_rword(linkage._obj, index)
            if words[left] == "LEFT-WALL" and right in word_token:
                wall_links.append(word_token[right])
            elif left in word_token and right in word_token:
                links.append((word_token[left], word_token[right]))
        return heads_from_links(len(tokens), links, wall_links)


_WORKER_PARSER = None


def _init_worker(parse_seconds):
    global _WORKER_PARSER
    _WORKER_PARSER = LinkGrammarParser(parse_seconds)


def _parse_in_worker(tokens):
    return _WORKER_PARSER.heads(tokens)


def cache_key(token_lists, parse_seconds, version):
    digest = hashlib.sha256(json.dumps([version, parse_seconds, token_lists], ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()[:32]


def parse_heads(token_lists, parse_seconds=2, workers=None, cache_dir=None, description="link grammar"):
    """Heads (or None) for every tokenised sentence, from the cache or parsed in ``workers`` processes."""
    version = f"{import_link_grammar().clinkgrammar.linkgrammar_get_version()}/heads-{HEADS_SCHEME}"
    path = cache_root(cache_dir) / "oie_link_grammar" / f"{cache_key(token_lists, parse_seconds, version)}.json"
    if path.is_file():
        with open(path, encoding="utf-8") as handle:
            cached = json.load(handle)
        if len(cached["heads"]) == len(token_lists):
            return cached["heads"]
    workers = max(1, min(workers or os.cpu_count() or 1, len(token_lists)))
    progress = functools.partial(tqdm, total=len(token_lists), desc=description, unit="sentence", mininterval=5,
                                 disable=None)
    if workers == 1:
        parser = LinkGrammarParser(parse_seconds)
        heads = [parser.heads(tokens) for tokens in progress(token_lists)]
    else:
        with concurrent.futures.ProcessPoolExecutor(workers, initializer=_init_worker,
                                                    initargs=(parse_seconds,)) as pool:
            heads = list(progress(pool.map(_parse_in_worker, token_lists, chunksize=8)))
    with atomic_write(path, encoding="utf-8") as handle:
        json.dump({"parser": version, "parse_seconds": parse_seconds, "heads": heads}, handle)
    return heads
