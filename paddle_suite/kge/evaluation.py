"""Filtered link-prediction evaluation and relation categories for knowledge-graph embeddings.

Protocol (Bordes et al. 2013, "filtered" setting). Every evaluation triple ``(h, r, t)`` gives
two ranking queries: the *tail* query ``(h, r, ?)`` ranks ``t`` against all entities and the
*head* query ``(?, r, t)`` ranks ``h``. Candidates that form a known true triple (in
``known_triples``, normally train + valid + test) are removed from the ranking, except the
target itself.

Choices the papers leave open, stated here:

* Ties are ranked *realistically* (Berrendorf et al. 2020, as in PyKEEN): with ``g`` the number
  of remaining candidates scoring strictly higher than the target and ``e`` the number scoring
  exactly equal (target included), the optimistic rank is ``g + 1``, the pessimistic rank
  ``g + e`` and the reported rank their mean ``g + (e + 1) / 2``. A model giving every entity the
  same score therefore gets rank ``(n + 1) / 2`` on ``n`` candidates, never rank 1.
* MRR is the mean of ``1 / rank`` and Hits@k the fraction of queries with ``rank <= k``, both with
  that realistic (possibly half-integer) rank; MR is the mean rank. Overall metrics average over
  all ``2 * count`` queries (head and tail queries weigh equally).
* A NaN target score gets the worst rank (the number of candidates), so a diverged model cannot
  look good; NaN scores of other candidates never count as higher than the target.
* ``count`` is the number of evaluation *triples* (each contributes one head and one tail query).

Implementation: scores come in ``[B, N]`` blocks from the model's ``ranking_scorer()`` when it has
one (TransE-L1 and RotatE on CPU: fused numba kernels over a packed entity table, equal bit for bit
to ``score_tails``/``score_heads``, ``kernels.py``), else from ``model.score_tails(h, r)`` and
``model.score_heads(r, t)``. For each block the raw counts ``g`` and ``e`` over all ``N``
entities are counted in one pass (``kernels.rank_counts``); the known true answers of the block's
queries are then looked up in a CSR index (``FilterIndex``, built once with numpy), their scores
gathered and their contribution to ``g`` and ``e`` subtracted with a ``bincount``. This is
equivalent to masking those entries by scatter, but only touches the few filtered entries
instead of writing (or copying) the ``[B, N]`` block, and it stays exact when scores are ``-inf``.
"""
import numpy as np

import paddle_suite  # noqa: F401  (sets MKL_DEBUG_CPU_TYPE before paddle is imported)
import paddle

from paddle_suite.kge import kernels

METRIC_KEYS = ("mrr", "mr", "hits@1", "hits@3", "hits@10")
HITS_AT = (1, 3, 10)
CATEGORIES = ("1-1", "1-N", "N-1", "N-N")
#: category of a relation that has no training triple (its tph/hpt are undefined)
UNSEEN = "unseen"
CATEGORY_THRESHOLD = 1.5


def _as_triples(triples, name, num_entities=None, num_relations=None):
    """Validate an integer ``[n, 3]`` array of (head, relation, tail) ids."""
    array = np.asarray(triples)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"{name} must have shape [n, 3] (head, relation, tail ids), got {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer ids, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if array.size:
        if array.min() < 0:
            raise ValueError(f"{name} holds a negative id ({array.min()})")
        for column, label, limit in ((0, "head", num_entities), (2, "tail", num_entities), (1, "relation", num_relations)):
            if limit is not None and array[:, column].max() >= limit:
                row = int(np.argmax(array[:, column] >= limit))
                raise ValueError(
                    f"{name}[{row}] has {label} id {array[row, column]} but there are only {limit} "
                    f"{'entities' if label != 'relation' else 'relations'} (ids 0..{limit - 1})"
                )
    return array


def relation_tph_hpt(train_triples, num_relations):
    """Tails per head and heads per tail of each relation over the *distinct* training triples.

    ``tph_r`` = number of triples of ``r`` / number of distinct heads of ``r`` (= the mean, over the
    distinct pairs ``(h, r)``, of the number of tails ``t`` with ``(h, r, t)``); ``hpt_r`` = number
    of triples of ``r`` / number of distinct tails of ``r``. Returns float arrays ``(tph, hpt)``
    indexed by relation id, 0 for a relation without training triples.
    """
    triples = np.unique(_as_triples(train_triples, "train_triples", num_relations=num_relations), axis=0)
    per_relation = np.bincount(triples[:, 1], minlength=num_relations)
    distinct_heads = np.bincount(np.unique(triples[:, :2], axis=0)[:, 1], minlength=num_relations)
    distinct_tails = np.bincount(np.unique(triples[:, 1:], axis=0)[:, 0], minlength=num_relations)
    seen = per_relation > 0
    tph = np.divide(per_relation, distinct_heads, out=np.zeros(num_relations), where=seen)
    hpt = np.divide(per_relation, distinct_tails, out=np.zeros(num_relations), where=seen)
    return tph, hpt


def relation_sides(train_triples, num_relations):
    """Which relations have many heads per tail and many tails per head in training.

    Returns boolean arrays ``(many_heads, many_tails, seen)`` indexed by relation id:
    ``hpt >= 1.5``, ``tph >= 1.5`` (``relation_tph_hpt``) and "has a training triple".
    """
    tph, hpt = relation_tph_hpt(train_triples, num_relations)
    return hpt >= CATEGORY_THRESHOLD, tph >= CATEGORY_THRESHOLD, tph > 0  # a seen relation has tph >= 1


def relation_categories(train_triples, num_relations):
    """Category of each relation: "1-1", "1-N", "N-1" or "N-N" (Bordes et al. 2013; Wang et al. 2014).

    With ``relation_sides``' ``tph`` and ``hpt``: ``tph < 1.5 and hpt < 1.5`` -> "1-1";
    ``tph >= 1.5 and hpt < 1.5`` -> "1-N"; ``tph < 1.5 and hpt >= 1.5`` -> "N-1"; otherwise "N-N".
    A relation with no training triple gets "unseen". Returns a numpy array of strings indexed by
    relation id.
    """
    return categories_of_sides(*relation_sides(train_triples, num_relations))


def categories_of_sides(many_heads, many_tails, seen):
    """``relation_categories`` from ``relation_sides``' arrays (when the sides are already at hand)."""
    # index = 2 * many_heads + many_tails: 0 -> 1-1, 1 -> 1-N, 2 -> N-1, 3 -> N-N
    categories = np.array(CATEGORIES, dtype=object)[many_heads * 2 + many_tails]
    categories[~seen] = UNSEEN
    return categories.astype(str)


class FilterIndex:
    """CSR index of the known true answers: ``(h, r) -> tails`` and ``(r, t) -> heads``.

    Build it once per set of known triples and pass it to ``evaluate`` in place of the triples
    to avoid rebuilding it at each evaluation.
    """

    def __init__(self, known_triples, num_entities):
        known = np.unique(_as_triples(known_triples, "known_triples", num_entities=num_entities), axis=0)
        self.num_entities = int(num_entities)
        self.num_relations = int(known[:, 1].max()) + 1 if len(known) else 0
        heads, relations, tails = known[:, 0], known[:, 1], known[:, 2]
        # tail side: key (h, r) -> tails; head side: key (r, t) -> heads
        self._tail = self._build(self._key(heads, relations), tails)
        self._head = self._build(self._key(tails, relations), heads)

    def _key(self, entity, relation):
        # relation ids beyond the known ones cannot match a known key; map them past the range
        return entity.astype(np.int64) * (self.num_relations + 1) + np.minimum(relation, self.num_relations)

    @staticmethod
    def _build(keys, answers):
        order = np.argsort(keys, kind="stable")
        keys, answers = keys[order], answers[order]
        unique_keys, starts, counts = np.unique(keys, return_index=True, return_counts=True)
        return unique_keys, starts, counts, answers

    def answers(self, side, entity, relation):
        """Known answers of a batch of queries, as flat ``(row, answer)`` arrays.

        ``side="tail"``: queries ``(entity, relation, ?)``; ``side="head"``: ``(?, relation, entity)``.
        """
        if side not in ("head", "tail"):
            raise ValueError(f"side must be 'head' or 'tail', got {side!r}")
        unique_keys, starts, counts, answers = self._tail if side == "tail" else self._head
        keys = self._key(np.asarray(entity, dtype=np.int64), np.asarray(relation, dtype=np.int64))
        if len(unique_keys) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        slot = np.minimum(np.searchsorted(unique_keys, keys), len(unique_keys) - 1)
        found = unique_keys[slot] == keys
        n = np.where(found, counts[slot], 0)
        first = starts[slot]
        rows = np.repeat(np.arange(len(keys)), n)
        # position inside each query's run: global position minus the run's start in the output
        offsets = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        return rows, answers[np.repeat(first, n) + offsets]


def _rank_block(scores, targets, filter_rows, filter_cols):
    """Realistic filtered ranks of ``targets`` in a numpy ``[B, N]`` score block (float64 [B]).

    ``g`` and ``e`` over all ``N`` entities come from one pass over the block
    (``kernels.rank_counts``: both comparisons per element); the filtered entries' share is then
    subtracted (module doc).
    """
    batch, num_entities = scores.shape
    target_scores, greater, equal = kernels.rank_counts(scores, targets)

    # The target itself stays a candidate: only the other known answers are filtered out.
    keep = filter_cols != targets[filter_rows]
    filter_rows, filter_cols = filter_rows[keep], filter_cols[keep]
    known_scores = scores[filter_rows, filter_cols]
    row_target = target_scores[filter_rows]
    greater = greater - np.bincount(filter_rows[known_scores > row_target], minlength=batch)
    equal = equal - np.bincount(filter_rows[known_scores == row_target], minlength=batch)

    rank = greater + (equal + 1) / 2.0
    nan_target = np.isnan(target_scores)
    candidates = num_entities - np.bincount(filter_rows, minlength=batch)
    rank[nan_target] = candidates[nan_target]
    return rank


def _check_block(scores, method, batch, num_entities):
    if not isinstance(scores, paddle.Tensor):
        raise TypeError(f"model.{method} must return a paddle.Tensor, got {type(scores).__name__}")
    if list(scores.shape) != [batch, num_entities]:
        raise ValueError(
            f"model.{method} returned shape {list(scores.shape)}; expected [{batch}, {num_entities}] "
            "(one score per entity for each query; num_entities must match the model)"
        )


def _score_block(model, scorer, side, entity, relation, num_entities):
    """numpy ``[B, N]`` scores of one block of queries (the model's fast scorer when it has one)."""
    if scorer is not None:
        return scorer(side, entity, relation)
    entity, relation = paddle.to_tensor(entity), paddle.to_tensor(relation)
    method = "score_tails" if side == "tail" else "score_heads"
    scores = model.score_tails(entity, relation) if side == "tail" else model.score_heads(relation, entity)
    _check_block(scores, method, len(entity), num_entities)
    return scores.numpy()


def compute_ranks(model, triples, filter_index, num_entities, batch_size=256, progress=False, num_threads=1):
    """Filtered realistic ranks of every triple: returns ``(head_ranks, tail_ranks)``, float64 ``[n]``.

    ``num_threads``: threads of the scoring and ranking kernels (``kernels.threads``).
    """
    n = len(triples)
    ranks = {"head": np.empty(n), "tail": np.empty(n)}
    starts = range(0, n, batch_size)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=2 * n, desc="evaluate", unit="query", leave=False)
    was_training = model.training
    model.eval()
    try:
        with paddle.no_grad(), kernels.threads(num_threads):
            make_scorer = getattr(model, "ranking_scorer", None)
            scorer = make_scorer() if make_scorer is not None else None
            for side, query_entity, target in (("tail", 0, 2), ("head", 2, 0)):
                for start in starts:
                    chunk = triples[start : start + batch_size]
                    scores = _score_block(model, scorer, side, chunk[:, query_entity], chunk[:, 1], num_entities)
                    rows, cols = filter_index.answers(side, chunk[:, query_entity], chunk[:, 1])
                    ranks[side][start : start + len(chunk)] = _rank_block(scores, chunk[:, target], rows, cols)
                    if bar is not None:
                        bar.update(len(chunk))
    finally:
        if was_training:
            model.train()
        if bar is not None:
            bar.close()
    return ranks["head"], ranks["tail"]


def rank_metrics(ranks):
    """MRR, MR and Hits@1/3/10 of an array of (realistic) ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        return {key: float("nan") for key in METRIC_KEYS}
    metrics = {"mrr": float(np.mean(1.0 / ranks)), "mr": float(np.mean(ranks))}
    for k in HITS_AT:
        metrics[f"hits@{k}"] = float(np.mean(ranks <= k))
    return metrics


def _summary(head_ranks, tail_ranks):
    """Metrics over both sides with ``count`` (triples) and ``by_side`` (head / tail metrics)."""
    count = int(len(head_ranks))
    summary = rank_metrics(np.concatenate([head_ranks, tail_ranks]))
    summary["count"] = count
    summary["by_side"] = {
        "head": {**rank_metrics(head_ranks), "count": count},
        "tail": {**rank_metrics(tail_ranks), "count": count},
    }
    return summary


def _group_summaries(head_ranks, tail_ranks, labels, order=None):
    """``{label: summary with by_side}`` for each label present in ``labels`` (one per triple)."""
    groups = {}
    for label in sorted(set(labels.tolist()), key=order):
        mask = labels == label
        groups[label] = _summary(head_ranks[mask], tail_ranks[mask])
    return groups


def _per_relation(values, name, triples):
    """Per-relation array (categories or names) checked against the triples' relation ids."""
    values = np.asarray(values).astype(str)
    if len(triples) and triples[:, 1].max() >= len(values):
        raise ValueError(f"{name} has {len(values)} entries but triples use relation id {triples[:, 1].max()}")
    return values[triples[:, 1]]


def evaluate(model, triples, known_triples, num_entities, categories=None, batch_size=256, progress=False,
             relation_names=None, return_ranks=False, num_threads=1):
    """Filtered link prediction on both sides (see the module docstring for the protocol).

    ``model`` has ``score_tails(h, r) -> [B, N]`` and ``score_heads(r, t) -> [B, N]`` (int64 paddle
    tensors in, higher = more plausible). ``known_triples``: ``[m, 3]`` ids of all true triples
    used for filtering (or a prebuilt ``FilterIndex``). ``categories``: per-relation category
    strings (``relation_categories``) to add ``by_category``; ``relation_names`` (indexed by
    relation id) to add ``by_relation``.

    Returns ``{"mrr", "mr", "hits@1", "hits@3", "hits@10", "count",
    "by_side": {"head": {...}, "tail": {...}}, "by_category": {cat: {..., "count", "by_side"}},
    "by_relation": {name: {..., "count", "by_side"}}}``; the groups only list categories and
    relations present among ``triples``. ``num_threads``: threads of the scoring/ranking kernels
    (1 = as paddle on CPU). ``return_ranks`` adds ``"ranks": {"head": [n], "tail": [n]}``,
    each triple's two realistic ranks in the order of ``triples`` (for paired comparisons,
    ``paired_mrr_difference``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    triples = _as_triples(triples, "triples", num_entities=num_entities)
    if isinstance(known_triples, FilterIndex):
        filter_index = known_triples
        if filter_index.num_entities != num_entities:
            raise ValueError(
                f"FilterIndex was built for {filter_index.num_entities} entities, evaluate got {num_entities}"
            )
    else:
        filter_index = FilterIndex(known_triples, num_entities)

    head_ranks, tail_ranks = compute_ranks(model, triples, filter_index, num_entities, batch_size, progress,
                                           num_threads)
    result = _summary(head_ranks, tail_ranks)
    if categories is not None:
        query_category = _per_relation(categories, "categories", triples)
        result["by_category"] = _group_summaries(head_ranks, tail_ranks, query_category, _category_order)
    if relation_names is not None:
        query_relation = _per_relation(relation_names, "relation_names", triples)
        result["by_relation"] = _group_summaries(head_ranks, tail_ranks, query_relation)
    if return_ranks:
        result["ranks"] = {"head": head_ranks, "tail": tail_ranks}
    return result


def paired_mrr_difference(ranks_a, ranks_b, resamples=2000, level=0.95, seed=0, chunk=100):
    """MRR of model A minus MRR of model B on the same triples, with a paired bootstrap interval.

    ``ranks_a``/``ranks_b``: ``[n, 2]`` realistic (head, tail) ranks of the same ``n`` triples in the
    same order. The difference is over both sides (as the overall MRR). The interval resamples
    *triples* with replacement (a triple's two queries stay together, as do the two models' ranks
    of it) and takes the percentile interval of ``resamples`` resampled differences. It measures
    the test set's sampling noise for these two trained models, not the spread over training seeds.
    Returns ``{"difference", "ci", "count"}``.
    """
    a, b = np.asarray(ranks_a, np.float64), np.asarray(ranks_b, np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"ranks must both be [n, 2] (head, tail) arrays of the same triples, got {a.shape} and {b.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    per_triple = (1.0 / a - 1.0 / b).mean(axis=1)
    n = len(per_triple)
    if n == 0:
        return {"difference": float("nan"), "ci": [float("nan"), float("nan")], "count": 0}
    rng = np.random.default_rng(seed)
    means = np.concatenate([per_triple[rng.integers(0, n, (min(chunk, resamples - start), n))].mean(axis=1)
                            for start in range(0, resamples, chunk)])
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"difference": float(per_triple.mean()), "ci": [float(low), float(high)], "count": int(n)}


def _category_order(category):
    order = CATEGORIES + (UNSEEN,)
    return (order.index(category) if category in order else len(order), category)


def flatten_metrics(result, prefix=""):
    """Flatten an ``evaluate`` result for logging: ``mrr``, ``tail/mrr``, ``N-1/mrr``, ``N-1/head/mrr``,
    ``relation:<name>/mrr``..."""
    flat = {}
    group_prefix = {"by_side": "", "by_category": "", "by_relation": "relation:"}
    for key, value in result.items():
        if key == "ranks":  # per-triple arrays, not metrics
            continue
        if key in group_prefix:
            for group, metrics in value.items():
                flat.update(flatten_metrics(metrics, f"{prefix}{group_prefix[key]}{group}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
