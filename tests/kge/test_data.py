"""Reader of the train/valid/test.txt layout: quirks tolerated, errors located, vocabularies, unseen triples."""
import numpy as np
import pytest

from paddle_suite.data import DatasetNotFound
from paddle_suite.kge.data import dataset_location, load_dataset, load_kg, read_triples


def write_dataset(folder, train, valid="", test="", newline="\n"):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"{name}.txt").write_bytes(text.replace("\n", newline).encode("utf-8"))
    return folder


def test_crlf_trailing_spaces_and_vocabulary_order(tmp_path):
    folder = write_dataset(
        tmp_path / "toy",
        "b\tlikes\ta \nc\tlikes\tb\n\n",
        "a\tknows\tc\n",
        "d\tlikes\ta\n",
        newline="\r\n",
    )
    data = load_kg(folder)
    assert data.entities == ["b", "a", "c", "d"]  # first appearance, train first
    assert data.relations == ["likes", "knows"]
    np.testing.assert_array_equal(data.train, [[0, 0, 1], [2, 0, 0]])
    assert data.train.dtype == np.int64 and data.valid.shape == (1, 3)
    # "knows" never occurs in train, "d" neither: both evaluation triples are unseen and kept
    assert data.unseen["valid"].tolist() == [True] and data.unseen["test"].tolist() == [True]
    assert len(data.test) == 1 and any("test: 1 of 1" in line for line in data.unseen_report())


def test_drop_unseen_evaluation_triples(tmp_path):
    folder = write_dataset(tmp_path / "toy", "a\tr\tb\nb\tr\tc\n", "a\tr\tc\n", "a\tr\tz\nc\tr\ta\n")
    data = load_kg(folder, unseen_policy="drop")
    np.testing.assert_array_equal(data.test, [[data.entities.index("c"), 0, 0]])
    assert data.unseen["test"].tolist() == [True, False]
    assert "z" in data.entities  # still a ranking candidate, as in the published protocol
    assert "dropped" in data.unseen_report()[0]


@pytest.mark.parametrize(
    "line, message",
    [
        ("a\tr\n", "expected 3 tab-separated fields"),
        ("a\tr\tb\tc\n", "found 4"),
        ("a r b\n", "found 1"),
        ("a\t\tb\n", "empty relation"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "train.txt"
    path.write_text("x\tr\ty\n" + line)
    with pytest.raises(ValueError) as err:
        read_triples(path)
    assert f"{path}:2:" in str(err.value) and message in str(err.value)


def test_rotate_dictionaries_define_ids(tmp_path):
    folder = write_dataset(tmp_path / "c", "a\tr\tb\n", "b\tr\ta\n", "a\tr\tb\n")
    (folder / "entities.dict").write_text("1\ta\n0\tb\n2\tunused\n")
    (folder / "relations.dict").write_text("0\tr\n")
    data = load_kg(folder)
    assert data.entities == ["b", "a", "unused"]
    np.testing.assert_array_equal(data.train, [[1, 0, 0]])
    (folder / "entities.dict").write_text("0\ta\n")
    with pytest.raises(ValueError, match="'b' is not in the folder's entities.dict"):
        load_kg(folder)


def test_missing_dataset_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PADDLE_SUITE_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotFound) as err:
        dataset_location("YAGO3-10")
    text = str(err.value)
    assert "YAGO3-10/train.txt" in text and "KnowledgeGraphEmbedding" in text
    write_dataset(tmp_path / "kg" / "YAGO3-10", "a\tr\tb\n", "a\tr\tb\n", "a\tr\tb\n")
    assert load_dataset("YAGO3-10").num_entities == 2


def test_explicit_path_is_authoritative(tmp_path):
    with pytest.raises(DatasetNotFound, match=str(tmp_path / "nowhere")):
        dataset_location("FB15k", data_path=str(tmp_path / "nowhere"))


def test_real_fb15k237_and_wn18rr(shared_data):
    fb = load_kg(shared_data / "kg" / "FB15k-237")  # CRLF endings
    assert (fb.num_entities, fb.num_relations) == (14541, 237)
    assert (len(fb.train), len(fb.valid), len(fb.test)) == (272115, 17535, 20466)
    wn = load_kg(shared_data / "kg" / "WN18RR", unseen_policy="drop")
    assert wn.num_entities == 40943 and wn.num_relations == 11
    assert 0 < wn.unseen["test"].sum() == 3134 - len(wn.test)
    seen = np.zeros(wn.num_entities, bool)
    seen[wn.train[:, [0, 2]].ravel()] = True
    assert seen[wn.test[:, [0, 2]]].all()
