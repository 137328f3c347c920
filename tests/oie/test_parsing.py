"""Link grammar arcs for Logician's gated attention: the linkage-to-heads reading, the parser on real
sentences, the cache, and the task attaching the heads (``DataLoader.parser: link_grammar``)."""
import numpy as np
import pytest

from paddle_suite.config import ConfigError, load_config
from paddle_suite.oie import parsing
from paddle_suite.oie.parsing import _token_of_char, heads_from_links, parse_heads
from paddle_suite.oie.task import OIETask
from .test_task import write_config


@pytest.fixture(scope="module")
def link_grammar():
    try:
        return parsing.import_link_grammar()
    except ConfigError as err:
        pytest.skip(f"the link grammar parser is not installed: {err}")


def edges(heads):
    return {frozenset((child, head)) for child, head in enumerate(heads) if head >= 0}


def is_forest(heads):
    for start in range(len(heads)):
        seen, node = set(), start
        while node >= 0:
            if node in seen:
                return False
            seen.add(node)
            node = heads[node]
    return True


def test_heads_are_a_spanning_tree_rooted_where_the_wall_links():
    links = [(0, 1), (1, 2), (2, 0), (2, 3)]  # a cycle 0-1-2 and a branch; token 4 unlinked
    heads = heads_from_links(5, links, wall_links=[2])
    assert heads[2] == -1 and heads[4] == -1 and is_forest(heads)
    assert edges(heads) <= {frozenset(link) for link in links} and len(edges(heads)) == 3  # one link closes the cycle
    assert heads_from_links(3, [(0, 1), (1, 1)]) == [-1, 0, -1]  # no wall link: the first token roots; self links drop


def test_character_offsets_map_to_the_whitespace_token():
    owner = _token_of_char(["I", "don't", "go"])
    assert owner[0] == 0 and owner[2:7] == [1] * 5 and owner[8] == 2  # "n't" (offset 5) is inside "don't"


def test_the_parser_links_subject_verb_and_determiner_noun(link_grammar):
    tokens = "The cat sat on the mat .".split()
    heads = parsing.LinkGrammarParser().heads(tokens)
    assert len(heads) == len(tokens) and is_forest(heads)
    found = edges(heads)
    for pair in ((0, 1), (1, 2), (4, 5)):  # The-cat, cat-sat, the-mat
        assert frozenset(pair) in found, (pair, heads)
    contracted = "I don't think it rains .".split()  # the parser splits don't into do + n't
    heads = parsing.LinkGrammarParser().heads(contracted)
    assert len(heads) == 6 and is_forest(heads) and sum(h == -1 for h in heads) <= 2


def test_parse_heads_caches_and_workers_agree(link_grammar, tmp_path, monkeypatch):
    sentences = [s.split() for s in ("Paris is the capital of France .", "John , a lawyer , lives in Paris .",
                                     "She gave him a book .")]
    one = parse_heads(sentences, workers=1, cache_dir=tmp_path / "a")
    assert parse_heads(sentences, workers=2, cache_dir=tmp_path / "b") == one
    assert all(h is not None and len(h) == len(s) for h, s in zip(one, sentences))

    def no_parsing(*args, **kwargs):
        raise AssertionError("parsed again instead of reading the cache")

    monkeypatch.setattr(parsing, "LinkGrammarParser", no_parsing)
    assert parse_heads(sentences, workers=1, cache_dir=tmp_path / "a") == one
    with pytest.raises(AssertionError, match="parsed again"):  # other settings, another cache entry
        parse_heads(sentences, parse_seconds=3, workers=1, cache_dir=tmp_path / "a")


def write_oie_files(folder, sentences):
    folder.mkdir()
    for split in ("train", "dev", "test"):
        lines = [f"{s}\t{s.split()[2]}\t{s.split()[2]}\t{s.split()[0]}\t{' '.join(s.split()[3:-1])}"
                 for s in sentences]
        (folder / f"{split}.oie").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_the_task_attaches_parsed_heads_and_the_graph_follows_them(link_grammar, tmp_path, monkeypatch):
    from paddle_suite.oie.model import sentence_distances

    monkeypatch.setenv("PADDLE_SUITE_CACHE", str(tmp_path / "cache"))
    sentences = ["The old man sat on the bench .", "Big dogs chased the red ball .", "My sister reads long books ."]
    write_oie_files(tmp_path / "data", sentences)
    overrides = ["DataLoader.dataset=oie_tsv", f"DataLoader.data_path={tmp_path / 'data'}", "DataLoader.train_subset=0",
                 "DataLoader.parser=link_grammar", "DataLoader.parse_workers=1"]
    task = OIETask(load_config(write_config(tmp_path, base="logician_oie2016.yaml"), overrides))
    train = task.splits()["train"]
    assert all(e.heads is not None and len(e.heads) == len(e.sentence.split()) for e in train)
    batch = next(task.train_batches(0))
    first = task.train_examples()[0][task.epoch_batches(0)[0][0]]
    length = len(first.sentence.split())
    parsed = sentence_distances(length, first.heads)
    np.testing.assert_array_equal(batch["distance"].numpy()[0][:length, :length], parsed)
    assert parsed.tolist() != sentence_distances(length).tolist()
    (tmp_path / "cache").rename(tmp_path / "cache_parsed")
    for graph in ("adjacency", "none"):  # graphs that ignore arcs: nothing to parse
        task = OIETask(load_config(write_config(tmp_path, base="logician_oie2016.yaml"), overrides + [f"Arch.graph={graph}"]))
        assert all(e.heads is None for e in task.splits()["train"]) and not (tmp_path / "cache").exists()


def test_link_grammar_refuses_chinese(tmp_path):
    with pytest.raises(ConfigError, match="link_grammar parses English.*DataLoader.parser: none"):
        OIETask(load_config(write_config(tmp_path), ["DataLoader.parser=link_grammar"]))
    with pytest.raises(ConfigError, match="DataLoader.parser"):
        load_config(write_config(tmp_path), ["DataLoader.parser=stanza"])
