"""Negative sampling for KGE training: uniform or Bernoulli corruption, shared chunked negatives.

A batch of positive triples is split by the side to corrupt: each triple corrupts its head with
probability ``p_r`` of its relation and its tail otherwise. ``mode="uniform"``: ``p_r = 1/2``
(in expectation the same as RotatE's alternating head-batch / tail-batch steps);
``mode="bernoulli"`` (Wang et al. 2014): ``p_r = tph_r / (tph_r + hpt_r)``, so the side with
many answers (which would give false negatives) is corrupted less often.

Within each side group, consecutive chunks of ``chunk_size`` triples share ``num_negatives``
entities drawn uniformly from all entities (DGL-KE / PGL-KE "chunked" negatives: one
``[C, K]`` id array for the group instead of ``[B, K]``, scored with one batched matrix product
per chunk). ``chunk_size=1`` gives every triple its own negatives.

``filter_known=True`` marks negatives that form a known (training) triple; they are kept in
the id array (shared chunks cannot drop them) and excluded from the loss through the returned
``valid`` mask. All randomness comes from the ``np.random.Generator`` passed to ``sample``.
"""
from dataclasses import dataclass

import numpy as np

from paddle_suite.kge.evaluation import relation_tph_hpt

SIDES = ("head", "tail")


@dataclass
class NegativeGroup:
    """Positives that corrupt the same side, with their chunked negatives."""

    side: str
    rows: np.ndarray  # positions of these triples in the batch
    triples: np.ndarray  # [b, 3] int64
    negatives: np.ndarray  # [ceil(b / chunk_size), K] int64 entity ids
    valid: np.ndarray  # [b, K] bool: False where the corrupted triple is a known positive


def triple_keys(heads, relations, tails, num_entities, num_relations):
    """One int64 key per triple (exact for up to ~2e6 entities with 1e3 relations)."""
    return (heads.astype(np.int64) * num_relations + relations) * num_entities + tails


class NegativeSampler:
    def __init__(self, train_triples, num_entities, num_relations, num_negatives, chunk_size=1,
                 mode="uniform", filter_known=False):
        if mode not in ("uniform", "bernoulli"):
            raise ValueError(f"DataLoader.sampler must be 'uniform' or 'bernoulli', got {mode!r}")
        if num_negatives < 1 or chunk_size < 1:
            raise ValueError(f"num_negatives and neg_chunk_size must be >= 1, got {num_negatives}, {chunk_size}")
        if float(num_entities) ** 2 * num_relations >= 2**63:
            raise ValueError("too many entities/relations for int64 triple keys")
        train = np.asarray(train_triples, dtype=np.int64).reshape(-1, 3)
        self.num_entities, self.num_relations = int(num_entities), int(num_relations)
        self.num_negatives, self.chunk_size = int(num_negatives), int(chunk_size)
        self.mode, self.filter_known = mode, bool(filter_known)
        if mode == "bernoulli":
            tph, hpt = relation_tph_hpt(train, num_relations)
            total = tph + hpt
            self.head_probability = np.divide(tph, total, out=np.full(num_relations, 0.5), where=total > 0)
        else:
            self.head_probability = np.full(num_relations, 0.5)
        self.known_keys = np.unique(triple_keys(*train.T, self.num_entities, self.num_relations)) if filter_known else None

    def sample(self, triples, rng):
        """Split ``triples`` ``[B, 3]`` into head/tail groups with negatives; returns ``[NegativeGroup]``."""
        triples = np.asarray(triples, dtype=np.int64).reshape(-1, 3)
        corrupt_head = rng.random(len(triples)) < self.head_probability[triples[:, 1]]
        groups = []
        for side, selected in (("head", corrupt_head), ("tail", ~corrupt_head)):
            rows = np.flatnonzero(selected)
            if len(rows) == 0:
                continue
            chunks = -(-len(rows) // self.chunk_size)
            negatives = rng.integers(0, self.num_entities, size=(chunks, self.num_negatives), dtype=np.int64)
            group_triples = triples[rows]
            groups.append(NegativeGroup(side, rows, group_triples, negatives, self._valid(group_triples, negatives, side)))
        return groups

    def _valid(self, triples, negatives, side):
        per_row = np.repeat(negatives, self.chunk_size, axis=0)[: len(triples)]  # [b, K]
        if not self.filter_known:
            return np.ones(per_row.shape, dtype=bool)
        h, r, t = (triples[:, i : i + 1] for i in range(3))
        keys = triple_keys(per_row, r, t, self.num_entities, self.num_relations) if side == "head" else \
            triple_keys(h, r, per_row, self.num_entities, self.num_relations)
        slot = np.minimum(np.searchsorted(self.known_keys, keys), len(self.known_keys) - 1)
        return self.known_keys[slot] != keys
