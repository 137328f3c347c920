"""Knowledge-graph triples in the standard ``{train,valid,test}.txt`` layout.

Each line is ``head<TAB>relation<TAB>tail``. CRLF line endings and spaces around fields are
tolerated; blank lines carry no triple and are skipped; any other line that does not split
into exactly three non-empty tab-separated fields raises ``ValueError`` naming the file, the
line number and what was wrong.

Vocabulary order: when the folder has RotatE's ``entities.dict`` / ``relations.dict``
(``id<TAB>name`` lines) those ids are used; otherwise ids are given in order of first
appearance in train, then valid, then test. Every entity of every split is in the vocabulary
(the standard protocol ranks against all entities, e.g. WN18RR's 40,943), so an entity that only
occurs in valid/test has an embedding that training never updates.

Unseen evaluation triples (an entity or relation of a valid/test triple never occurs in train,
as in WN18RR) are always counted and reported (``KGDataset.unseen_report``); the config's
``unseen="keep"`` (standard, comparable to published numbers) keeps them in the split and
``"drop"`` removes them from valid/test.
"""
import os
from pathlib import Path

import numpy as np

from paddle_suite.data import find_dataset

SPLITS = ("train", "valid", "test")

# Where the datasets that are not shipped with the shared data folder are published.
_PUBLISHED = {
    "FB15k": "the FB15k archive of Bordes et al. 2013 (https://everest.hds.utc.fr/doku.php?id=en:transe), "
    "also in data/FB15k of https://github.com/DeepGraphLearning/KnowledgeGraphEmbedding",
    "YAGO3-10": "data/YAGO3-10 of https://github.com/DeepGraphLearning/KnowledgeGraphEmbedding "
    "(or the ConvE repository, https://github.com/TimDettmers/ConvE)",
    "FB15k-237": "FB15k-237.tar.gz of https://github.com/TimDettmers/ConvE",
    "WN18RR": "WN18RR.tar.gz of https://github.com/TimDettmers/ConvE",
    "WN18": "data/wn18 of https://github.com/DeepGraphLearning/KnowledgeGraphEmbedding",
}


def read_triples(path):
    """Read one split file into a list of ``(head, relation, tail)`` string tuples."""
    path = Path(path)
    triples = []
    with open(path, "r", encoding="utf-8", newline=None) as handle:  # newline=None folds CRLF
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = [field.strip(" \r") for field in line.rstrip(" \r").split("\t")]
            if len(fields) != 3:
                raise ValueError(
                    f"{path}:{number}: expected 3 tab-separated fields (head<TAB>relation<TAB>tail), "
                    f"found {len(fields)}: {line[:200]!r}"
                )
            empty = [name for name, field in zip(("head", "relation", "tail"), fields) if not field]
            if empty:
                raise ValueError(f"{path}:{number}: empty {' and '.join(empty)} field: {line[:200]!r}")
            triples.append(tuple(fields))
    return triples


def read_dict(path):
    """Read RotatE's ``id<TAB>name`` dictionary; ids must be exactly 0..n-1 (any order)."""
    path = Path(path)
    names = {}
    with open(path, "r", encoding="utf-8", newline=None) as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.rstrip(" ").split("\t")
            if len(fields) != 2 or not fields[0].strip().isdigit() or not fields[1].strip():
                raise ValueError(f"{path}:{number}: expected 'id<TAB>name' with an integer id, got {line[:200]!r}")
            index, name = int(fields[0]), fields[1].strip()
            if index in names:
                raise ValueError(f"{path}:{number}: id {index} appears twice")
            names[index] = name
    if sorted(names) != list(range(len(names))):
        missing = sorted(set(range(len(names))) - set(names))[:5]
        raise ValueError(f"{path}: ids must be 0..{len(names) - 1} without gaps; missing e.g. {missing}")
    ordered = [names[i] for i in range(len(names))]
    if len(set(ordered)) != len(ordered):
        raise ValueError(f"{path}: a name appears under two ids")
    return ordered


def _entity_vocabulary(split_triples):
    """Entity names in order of first appearance (head before tail) over the splits, train first."""
    index = {}
    for triples in split_triples:
        for head, _, tail in triples:
            index.setdefault(head, len(index))
            index.setdefault(tail, len(index))
    return list(index)


def _relation_vocabulary(split_triples):
    index = {}
    for triples in split_triples:
        for _, relation, _ in triples:
            index.setdefault(relation, len(index))
    return list(index)


def _encode(triples, entity_ids, relation_ids, path):
    try:
        return np.array(
            [(entity_ids[h], relation_ids[r], entity_ids[t]) for h, r, t in triples], dtype=np.int64
        ).reshape(-1, 3)
    except KeyError as err:
        raise ValueError(
            f"{path}: name {err.args[0]!r} is not in the folder's entities.dict/relations.dict"
        ) from None


class KGDataset:
    """Integer triples of one knowledge graph with its vocabularies.

    Attributes: ``name``, ``path``, ``entities`` / ``relations`` (list of names, index = id),
    ``train`` / ``valid`` / ``test`` (``np.int64 [n, 3]``: head, relation, tail),
    ``unseen`` (split -> boolean mask over the split as read, True where the triple has an
    entity or relation absent from train), ``unseen_policy`` ("keep" or "drop").
    """

    def __init__(self, name, path, entities, relations, splits, unseen_policy="keep"):
        if unseen_policy not in ("keep", "drop"):
            raise ValueError(f"unseen policy must be 'keep' or 'drop', got {unseen_policy!r}")
        self.name = name
        self.path = Path(path) if path is not None else None
        self.entities = list(entities)
        self.relations = list(relations)
        self.unseen_policy = unseen_policy
        self.train = np.asarray(splits["train"], dtype=np.int64).reshape(-1, 3)
        self.unseen = {}
        seen_entities = np.zeros(len(self.entities), bool)
        seen_entities[self.train[:, [0, 2]].ravel()] = True
        seen_relations = np.zeros(len(self.relations), bool)
        seen_relations[self.train[:, 1]] = True
        for split in ("valid", "test"):
            triples = np.asarray(splits.get(split, np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
            mask = ~(seen_entities[triples[:, 0]] & seen_entities[triples[:, 2]] & seen_relations[triples[:, 1]])
            self.unseen[split] = mask
            setattr(self, split, triples[~mask] if unseen_policy == "drop" else triples)

    @property
    def num_entities(self):
        return len(self.entities)

    @property
    def num_relations(self):
        return len(self.relations)

    def all_triples(self):
        """Train + valid + test: the known triples of the filtered ranking protocol."""
        return np.concatenate([self.train, self.valid, self.test], axis=0)

    def unseen_report(self):
        """One line per split that has triples with entities/relations never seen in train."""
        lines = []
        for split, mask in self.unseen.items():
            count = int(mask.sum())
            if count:
                action = "dropped" if self.unseen_policy == "drop" else "kept (set DataLoader.unseen_eval_triples: drop to remove them)"
                lines.append(
                    f"{self.name} {split}: {count} of {len(mask)} triples have an entity or relation "
                    f"that never occurs in train; {action}"
                )
        return lines

    def summary(self):
        return (
            f"{self.name}: {self.num_entities} entities, {self.num_relations} relations, "
            f"train/valid/test {len(self.train)}/{len(self.valid)}/{len(self.test)}"
        )


def load_kg(path, name=None, unseen_policy="keep"):
    """Read a dataset folder holding ``train.txt``, ``valid.txt``, ``test.txt``."""
    path = Path(path)
    name = name or path.name
    raw = {}
    for split in SPLITS:
        file = path / f"{split}.txt"
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing: a KG dataset folder needs train.txt, valid.txt and test.txt")
        raw[split] = read_triples(file)
    if not raw["train"]:
        raise ValueError(f"{path / 'train.txt'} holds no triples")
    ordered = [raw[s] for s in SPLITS]
    entity_dict, relation_dict = path / "entities.dict", path / "relations.dict"
    entities = read_dict(entity_dict) if entity_dict.is_file() else _entity_vocabulary(ordered)
    relations = read_dict(relation_dict) if relation_dict.is_file() else _relation_vocabulary(ordered)
    entity_ids = {e: i for i, e in enumerate(entities)}
    relation_ids = {r: i for i, r in enumerate(relations)}
    splits = {s: _encode(raw[s], entity_ids, relation_ids, path / f"{s}.txt") for s in SPLITS}
    return KGDataset(name, path, entities, relations, splits, unseen_policy)


def dataset_location(name, data_path=None, data_root=None):
    """Folder of dataset ``name`` (e.g. "FB15k-237"), or ``DatasetNotFound`` saying where to put it."""
    explicit = data_path
    if explicit is None and data_root:
        explicit = os.path.join(data_root, "kg", name)
    published = _PUBLISHED.get(name, "the dataset's publisher")
    how_to_get = (
        f"Put {name}'s train.txt, valid.txt and test.txt (tab-separated head, relation, tail) in "
        f"$PADDLE_SUITE_DATA/kg/{name}/ (e.g. $PADDLE_SUITE_DATA/kg/{name}/train.txt) or set "
        f"DataLoader.data_path to their folder. {name} is published in {published}."
    )
    return find_dataset(f"kg/{name}", explicit=explicit, required=("train.txt", "valid.txt", "test.txt"), how_to_get=how_to_get)


def load_dataset(name, data_path=None, data_root=None, unseen_policy="keep"):
    """Find and read dataset ``name``; see ``dataset_location`` for the search order."""
    return load_kg(dataset_location(name, data_path, data_root), name=name, unseen_policy=unseen_policy)
