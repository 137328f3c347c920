"""Knowledge-graph embedding models: SpaceE and the baselines TransE, RotatE, DistMult, ComplEx.

Every model is a ``KGEModel`` (a ``paddle.nn.Layer``) with one entity table and one relation
table and the same scoring interface (higher score = more plausible triple):

* ``score(h, r, t) -> [B]`` for id tensors of shape ``[B]``;
* ``score_tails(h, r) -> [B, num_entities]`` and ``score_heads(r, t) -> [B, num_entities]``,
  vectorised over all entities (used by the filtered evaluation, under ``paddle.no_grad()``);
* ``score_negatives(h, r, t, neg, side) -> [B, K]``: shared (chunked) negatives as in DGL-KE /
  PGL-KE. ``neg`` is ``[C, K]``; row ``b`` of the batch belongs to chunk ``b // ceil(B / C)`` and is
  scored against that chunk's ``K`` entities, which replace its head (``side="head"``) or tail
  (``side="tail"``). A chunk size of 1 gives every triple its own negatives.

All three reduce to ``score_candidates(anchor, rel, cand, side)``: ``[G, B, D]`` anchor entity
embeddings with their relations against ``[G, K, D]`` candidate entities, giving ``[G, B, K]``.
Models override it with matrix-product expansions where the score allows (bilinear models,
squared Euclidean/Frobenius distances); otherwise the generic broadcast path runs in entity
chunks bounded by ``CANDIDATE_BUDGET`` elements.

Distances use ``sqrt(x + EPS)`` for L2/Frobenius norms and moduli: the gradient of ``sqrt`` at 0 is
infinite, and the constant ``EPS`` shifts every score equally (ranking unchanged).

Speed (CPU, measured on FB15k-237, 1024 positives x 256 negatives, dim 200):

* Under autograd the broadcast paths do not chunk the candidates: the backward of every
  ``cand[:, lo:hi]`` slice writes a full-size zeroed gradient (a third of a TransE step).
* TransE's L1 distance and RotatE's sum of moduli run in fused numba kernels (``kernels.py``) for
  CPU tensors in dynamic mode, inside a ``paddle.autograd.PyLayer`` when training: the forward
  stores nothing (the backward recomputes ``sign(d)`` resp. ``d / |d|``), inputs are read through
  zero-copy DLPack views (``Tensor.numpy()`` copies) and the candidate gradient is written straight
  into the tensor handed back to autograd. ``score_negatives`` gives these models the batch's
  *distinct* negative entities plus an index (``score_candidate_rows``) instead of a ``[C, K, D]``
  gather, so the entity table's sparse gradient has one row per entity rather than one per draw
  (the optimizer used to merge 262k rows per FB15k-237 step). Scores and the query gradient equal the
  former numpy formulation bit for bit; the candidate rows' gradient equals it up to the order of
  the per-entity sum (``tests/kge/test_kernels.py``). Evaluation uses ``ranking_scorer``: the same
  kernels over a packed copy of the entity table, bit-identical to ``score_tails``/``score_heads``.
  Measured on FB15k-237 (1024 positives x 256 negatives, dim 200, one thread): TransE 5,141 and
  RotatE 2,370 positives per CPU-second, 8.5x and 10.0x PyKEEN on the same work
  (``bench/kge_speed.md``, with where a step's time goes). GPU tensors and static graphs keep the
  paddle formulation (the kernels are never used for them).
"""
import ctypes
import math

import numpy as np

import paddle_suite  # noqa: F401  (sets MKL_DEBUG_CPU_TYPE before paddle is imported)
import paddle
import paddle.nn as nn
from paddle.autograd import PyLayer

from paddle_suite.kge import kernels
from paddle_suite.kge.losses import embedding_regularization
from paddle_suite.registry import ARCHS

#: largest intermediate tensor (elements) of the broadcast scoring path
CANDIDATE_BUDGET = 1 << 24
EPS = 1e-12


def _uniform_table(rows, width, bound, sparse):
    return nn.Embedding(
        rows,
        width,
        sparse=sparse,
        weight_attr=paddle.ParamAttr(initializer=nn.initializer.Uniform(-bound, bound)),
    )


def _ids(x):
    """Entity/relation ids as an int64 tensor (numpy/lists converted; tensors and static variables kept)."""
    if isinstance(x, (np.ndarray, list, tuple, int, np.integer)):
        return paddle.to_tensor(np.asarray(x, dtype=np.int64))
    return x if x.dtype == paddle.int64 else x.astype("int64")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"Arch.{name}: {value!r} is not one of {', '.join(map(str, choices))}")


def _pairwise_sq_l2(q, c):
    """``||q_b - c_k||^2`` for ``q`` ``[G, B, D]`` and ``c`` ``[G, K, D]`` -> ``[G, B, K]`` (one bmm)."""
    cross = paddle.matmul(q, c, transpose_y=True)
    sq = (q * q).sum(-1, keepdim=True) + (c * c).sum(-1).unsqueeze(1) - 2.0 * cross
    return paddle.clip(sq, min=0.0)


def _chunks(total, per_item):
    """Split ``range(total)`` into slices whose size times ``per_item`` stays under the budget."""
    step = max(1, CANDIDATE_BUDGET // max(1, per_item))
    return [(start, min(total, start + step)) for start in range(0, total, step)]


def _candidate_slices(total, per_item):
    """Candidate chunks for a broadcast path: one piece under autograd (see module doc), else budgeted."""
    return [(0, total)] if paddle.is_grad_enabled() else _chunks(total, per_item)


def _numpy_kernels(*tensors):
    """True when the numpy distance kernels may run: dynamic mode and every tensor on the CPU."""
    return paddle.in_dynamic_mode() and all(x.place.is_cpu_place() for x in tensors)


def _grad_tensors(wanted, *grads):
    """PyLayer backward outputs: a tensor per input that needs a gradient, None for the others."""
    return tuple((g if isinstance(g, paddle.Tensor) else paddle.to_tensor(g)) if w else None
                 for w, g in zip(wanted, grads))


class _DLPackCapsule:
    """numpy.from_dlpack wants an object with ``__dlpack__``; paddle 2.6 hands out bare capsules."""

    def __init__(self, capsule):
        self.capsule = capsule

    def __dlpack__(self, stream=None, **kwargs):
        return self.capsule

    def __dlpack_device__(self):
        return (1, 0)  # kDLCPU


def _view(tensor):
    """Read-only numpy view of a CPU tensor's memory (``Tensor.numpy()`` copies: 0.5 s for 420 MB)."""
    return np.from_dlpack(_DLPackCapsule(paddle.utils.dlpack.to_dlpack(tensor)))


def _empty_like(array):
    """A new float32 CPU tensor of ``array``'s shape and a writable numpy view of its memory.

    The kernels write the large candidate gradient straight into the tensor the optimizer
    receives (``paddle.to_tensor`` of a numpy array would copy it). Keep the tensor alive as long
    as the view is used.
    """
    tensor = paddle.empty(list(array.shape), dtype="float32")
    size = int(np.prod(array.shape))
    buffer = (ctypes.c_float * size).from_address(tensor.data_ptr()) if size else np.empty(0, np.float32)
    return tensor, np.ctypeslib.as_array(buffer).reshape(array.shape)


def _all_rows(c):
    """``c`` ``[G, K, D]`` as kernel candidates: rows ``[G * K, D]`` and the index ``[G, K]`` of each."""
    groups, num, width = c.shape
    return c.reshape([groups * num, width]), np.arange(groups * num, dtype=np.int64).reshape(groups, num)


class _L1Distance(PyLayer):
    """``sum_d |q[g, b, d] - rows[index[g, k], d]|`` -> ``[G, B, K]`` for ``q`` ``[G, B, D]`` (CPU kernels)."""

    @staticmethod
    def forward(ctx, q, rows, index):
        ctx.inputs, ctx.index = (q, rows), index  # the tensors own the memory the views read in backward
        ctx.wanted = [not x.stop_gradient for x in (q, rows)]
        return paddle.to_tensor(kernels.l1_forward(_view(q), _view(rows), index))

    @staticmethod
    def backward(ctx, grad):
        q, rows = ctx.inputs
        rows_view = _view(rows)
        grad_rows, grad_rows_view = _empty_like(rows_view)
        grad_q, _ = kernels.l1_backward(_view(q), rows_view, ctx.index, grad.numpy(), grad_rows_view)
        return _grad_tensors(ctx.wanted, grad_q, grad_rows)


class _ModulusDistance(PyLayer):
    """``sum_d sqrt(|q - c|^2 + EPS)`` over complex entries -> ``[G, B, K]`` (CPU kernels).

    ``q`` is given as real and imaginary parts ``[G, B, D]``; candidate ``k`` of group ``g`` is
    ``rows[index[g, k]]``, stored ``[re | im]`` as in the entity table (no paddle slices of it).
    """

    @staticmethod
    def forward(ctx, q_re, q_im, rows, index):
        ctx.inputs, ctx.index = (q_re, q_im, rows), index
        ctx.wanted = [not x.stop_gradient for x in (q_re, q_im, rows)]
        return paddle.to_tensor(kernels.modulus_forward(_view(q_re), _view(q_im), _view(rows), index))

    @staticmethod
    def backward(ctx, grad):
        q_re, q_im, rows = ctx.inputs
        rows_view = _view(rows)
        grad_rows, grad_rows_view = _empty_like(rows_view)
        grad_re, grad_im, _ = kernels.modulus_backward(_view(q_re), _view(q_im), rows_view, ctx.index, grad.numpy(),
                                                       grad_rows_view)
        return _grad_tensors(ctx.wanted, grad_re, grad_im, grad_rows)


def _l1_distance(q, rows, index):
    """``_L1Distance`` under autograd, the bare forward kernel without it."""
    if paddle.is_grad_enabled():
        return _L1Distance.apply(q, rows, index)
    return paddle.to_tensor(kernels.l1_forward(_view(q), _view(rows), index))


def _modulus_distance(q_re, q_im, rows, index):
    if paddle.is_grad_enabled():
        return _ModulusDistance.apply(q_re, q_im, rows, index)
    return paddle.to_tensor(kernels.modulus_forward(_view(q_re), _view(q_im), _view(rows), index))


class KGEModel(nn.Layer):
    """Base class: entity/relation tables and the shared scoring interface (see module doc).

    Subclasses implement ``score_embeddings(h, r, t)`` (broadcasting over leading dimensions,
    reducing the last) and may override ``score_candidates`` with a faster exact expansion.
    """

    def __init__(self, num_entities, num_relations, entity_width, relation_width, init_bound, sparse=True):
        super().__init__()
        self.num_entities = int(num_entities)
        self.num_relations = int(num_relations)
        self.entity_width = int(entity_width)
        self.relation_width = int(relation_width)
        self.entity_embedding = _uniform_table(self.num_entities, self.entity_width, init_bound, sparse)
        # relations stay dense: their table is small and most rows occur in every batch, and sparse
        # Adam updates of such a table overflowed Adam's second moment to inf in our runs
        self.relation_embedding = _uniform_table(self.num_relations, self.relation_width, init_bound, False)
        self.set_embedding_regularization(0.0)

    def set_embedding_regularization(self, weight, p=3):
        """``Loss.regularization`` / ``regularization_p``: ``weight * mean |x|^p`` over the batch's
        head, relation and tail embeddings (``losses.embedding_regularization``); 0 = off."""
        self.embedding_weight, self.embedding_p = float(weight), int(p)

    # ------------------------------------------------------------------ to implement
    def score_embeddings(self, h, r, t):
        raise NotImplementedError

    # ------------------------------------------------------------------ interface
    def forward(self, h, r, t, head_negatives=None, tail_negatives=None, num_head_rows=0, self_negatives=False):
        """Inference/export: ``score(h, r, t)``.

        Training (negatives given; one call per step so that a data-parallel wrapper sees every
        gradient): rows ``[:num_head_rows]`` corrupt their head with ``head_negatives`` and the
        rest their tail with ``tail_negatives`` (``[C, K]`` chunked ids each). With
        ``self_negatives`` each row also gets its anchor as the corrupted entity, ``(t, r, t)``
        for a head row and ``(h, r, h)`` for a tail row, as one more column. Returns
        ``(positive [B], negative [B, K (+1)], penalty scalar or None)``.
        """
        if head_negatives is None and tail_negatives is None:
            return self.score(h, r, t)
        h, r, t = _ids(h), _ids(r), _ids(t)
        split = int(num_head_rows)
        negative = []
        if split > 0:
            negative.append(self.score_negatives(h[:split], r[:split], t[:split], head_negatives, "head"))
        if split < h.shape[0]:
            negative.append(self.score_negatives(h[split:], r[split:], t[split:], tail_negatives, "tail"))
        negative = negative[0] if len(negative) == 1 else paddle.concat(negative, axis=0)
        if self_negatives:
            anchor = paddle.concat([t[:split], h[split:]])
            negative = paddle.concat([negative, self.score(anchor, r, anchor).unsqueeze(1)], axis=1)
        return self.score(h, r, t), negative, self.regularization(h, r, t)

    def score(self, h, r, t):
        h, r, t = _ids(h), _ids(r), _ids(t)
        return self.score_embeddings(self.entity_embedding(h), self.relation_embedding(r), self.entity_embedding(t))

    def score_candidates(self, anchor, rel, cand, side):
        """Generic path: broadcast ``score_embeddings`` over ``[G, B, Kc]`` in candidate chunks."""
        groups, batch, width = anchor.shape
        a, rr = anchor.unsqueeze(2), rel.unsqueeze(2)
        blocks = []
        for lo, hi in _candidate_slices(cand.shape[1], groups * batch * max(width, rel.shape[-1])):
            c = (cand if hi - lo == cand.shape[1] else cand[:, lo:hi]).unsqueeze(1)
            blocks.append(self.score_embeddings(a, rr, c) if side == "tail" else self.score_embeddings(c, rr, a))
        return blocks[0] if len(blocks) == 1 else paddle.concat(blocks, axis=2)

    def score_tails(self, h, r):
        """Scores of ``(h, r, e)`` for every entity ``e``: ``[B, num_entities]``."""
        anchor = self.entity_embedding(_ids(h)).unsqueeze(0)
        rel = self.relation_embedding(_ids(r)).unsqueeze(0)
        return self.score_candidates(anchor, rel, self.entity_embedding.weight.unsqueeze(0), "tail")[0]

    def score_heads(self, r, t):
        """Scores of ``(e, r, t)`` for every entity ``e``: ``[B, num_entities]``."""
        anchor = self.entity_embedding(_ids(t)).unsqueeze(0)
        rel = self.relation_embedding(_ids(r)).unsqueeze(0)
        return self.score_candidates(anchor, rel, self.entity_embedding.weight.unsqueeze(0), "head")[0]

    def has_row_kernels(self):
        """True when ``score_candidate_rows`` (candidates as distinct rows + index, CPU kernels) exists."""
        return False

    def score_candidate_rows(self, anchor, rel, rows, index, side):
        """``score_candidates`` with candidate ``k`` of group ``g`` given as ``rows[index[g, k]]``."""
        raise NotImplementedError

    def ranking_scorer(self):
        """A fast scorer of all entities for the filtered evaluation, or None (use ``score_tails``/``score_heads``).

        When given, ``scorer(side, entity, relation)`` returns numpy ``[B, num_entities]`` scores equal
        bit for bit to ``score_tails(entity, relation)`` (``side="tail"``) or
        ``score_heads(relation, entity)`` (``side="head"``); it may hold a packed copy of the entity
        table, so build it after the last parameter update (``evaluation.compute_ranks`` does, per call).
        """
        return None

    def score_negatives(self, h, r, t, neg, side):
        """Scores ``[B, K]`` of the batch with its head or tail replaced by its chunk's negatives."""
        if side not in ("head", "tail"):
            raise ValueError(f"side must be 'head' or 'tail', got {side!r}")
        anchor_ids = _ids(h if side == "tail" else t)
        rel_ids, neg = _ids(r), _ids(neg)
        if neg.ndim != 2:
            raise ValueError(f"neg must be [num_chunks, negatives_per_chunk], got shape {neg.shape}")
        batch, (chunks, k) = anchor_ids.shape[0], neg.shape
        chunk_size = -(-batch // chunks)
        if chunk_size * (chunks - 1) >= batch:
            raise ValueError(f"{chunks} negative chunks for a batch of {batch}: some chunks would be empty")
        pad = chunk_size * chunks - batch
        if pad:  # repeat the last row; its scores are cut off below
            anchor_ids = paddle.concat([anchor_ids, anchor_ids[-1:].expand([pad])])
            rel_ids = paddle.concat([rel_ids, rel_ids[-1:].expand([pad])])
        anchor = self.entity_embedding(anchor_ids).reshape([chunks, chunk_size, self.entity_width])
        rel = self.relation_embedding(rel_ids).reshape([chunks, chunk_size, self.relation_width])
        if self.has_row_kernels() and _numpy_kernels(anchor):
            # each distinct negative entity looked up once: no [C, K, D] gather, and its gradient has
            # one row per entity instead of one per draw (kernels.py)
            distinct, index = np.unique(neg.numpy(), return_inverse=True)
            rows = self.entity_embedding(paddle.to_tensor(distinct))
            scores = self.score_candidate_rows(anchor, rel, rows, index.reshape(chunks, k), side)
        else:
            scores = self.score_candidates(anchor, rel, self.entity_embedding(neg), side)
        return scores.reshape([chunks * chunk_size, k])[:batch]

    def regularization(self, h, r, t):
        """The batch's whole penalty (a scalar tensor), or None: the one place regularisers are applied."""
        terms = self.penalty_terms(_ids(h), _ids(r), _ids(t))
        return paddle.add_n(terms) if terms else None

    def penalty_terms(self, h, r, t):
        """Scalar penalty tensors of a batch; subclasses add theirs before these."""
        if self.embedding_weight <= 0:
            return []
        embeddings = [self.entity_embedding(h), self.relation_embedding(r), self.entity_embedding(t)]
        return [embedding_regularization(embeddings, self.embedding_weight, self.embedding_p)]


# ============================================================================ SpaceE
class SpaceE(KGEModel):
    """SpaceE (Yu et al. 2022, arXiv:2204.10245): relations as (possibly singular) linear maps.

    Reading implemented here (the paper's full text was not available; this follows its abstract):

    * entity ``e`` is a matrix ``E_e`` of shape ``k x m`` (embedding size ``k*m``, stored flat, row-major);
    * relation ``r`` is a pair of ``k x k`` matrices ``R_r^head``, ``R_r^tail`` acting on the left,
      or a single ``R_r`` with ``head_only=True``;
    * distance ``d_r(h, t) = || R_r^head E_h - R_r^tail E_t ||`` with the Frobenius norm (``norm="fro"``)
      or the entry-wise L1 norm (``norm="l1"``); with ``head_only``: ``|| R_r E_h - E_t ||``;
    * score ``gamma - d_r(h, t)``.

    Relation matrices are unconstrained, so a relation may be singular: many heads that differ only
    in the null space of ``R_r^head`` map to the same point, which is how SpaceE models N-1
    (non-injective) relations. Optional penalties (config): ``spectral_weight`` times the mean over
    the batch of ``sigma_max(R)^2`` (keeps maps from growing to cheat the margin), ``n3_weight``
    times the N3 norm (Lacroix et al. 2018, mean over the batch of the summed cubed absolute
    values) of the batch's entity matrices, and ``orthogonal_weight`` times the mean over the
    batch's maps of ``||R^T R - I||_F^2 / k``, a soft pull toward orthogonal maps.
    ``many_side_orthogonal_weight`` (optional) sets that pull for the maps on a relation's "many"
    side instead: the tail map of a 1-N relation, the head map of an N-1 relation, both maps of an
    N-N one (sides from the training triples, ``relation_sides``: 1.5 heads per tail / tails per
    head). Why: those are the maps that must collapse many entities to one point, while the map on
    the "one" side must keep its entities apart (stay injective), so one weight for both asks the
    two for opposite things. It needs the training triples' sides (``relation_sides`` argument);
    null gives every map ``orthogonal_weight``.

    Why the orthogonal pull exists: unpenalised, every map collapses to rank 1-4 within a few
    thousand steps. Each relation then reads its own low-dimensional view of the entity matrices,
    nothing learned for one relation transfers to another, and the model memorises (training
    triples rank first, test ones like random guesses). A soft penalty keeps the maps well
    conditioned unless the data pays for a singular direction.

    ``entity_radius`` (optional) scores every entity matrix scaled to that Frobenius norm: only its
    direction is learned. Why: with (near-)orthogonal maps, distances preserve entity norms, and
    rarely trained entities keep their small initial norm, which puts them near the origin and so
    close to every mapped query (they become the top answers to everything). On one sphere no
    entity is close to everything. The relation maps stay free (singular allowed): only entities
    are normalised.
    On the sphere the raw row's length sets the step size: an Adam step moves every entry by about
    ``lr``, which turns a row of length ``|x|`` by about ``lr * sqrt(k*m) / |x|`` radians. RotatE's
    default initial range ``(gamma + 2) / (k*m)`` gives rows of length ~0.1 at ``k*m = 1000``, so the
    first steps turn entities almost at random; ``entity_init_bound`` 0.03 gives rows of length ~0.55.

    ``translation`` (optional, our addition to the reading above) makes the maps affine: a
    per-relation ``k x m`` offset ``B_r``, initialised to zero, is added to the mapped head,
    ``d = || R_r^head E_h + B_r - R_r^tail E_t ||`` (``|| R_r E_h + B_r - E_t ||`` with ``head_only``).
    The abstract calls SpaceE "translation distance based" but names only the linear maps; an
    offset lets a relation shift its image as TransE does, and with ``B_r = 0`` every pattern above
    is still reachable. Relation rows store the maps' entries, then ``B_r`` row-major.
    The measurements behind these options are in ``bench/kge_config_notes.md``.

    Initialisation: entity entries uniform in ``+-entity_init_bound``, by default
    ``(gamma + 2) / (k*m)`` as in RotatE's embedding range; relation maps
    ``I + U(-init_noise, init_noise)`` (``relation_init="identity"``) so that training starts from a
    plain distance between entity matrices, fully uniform in ``+-1/sqrt(k)``
    (``relation_init="uniform"``), or random orthogonal (``relation_init="orthogonal"``).

    Scoring all entities (Frobenius): ``||A - R C||_F^2 = |A|^2 + <R^T R, C C^T> - 2 <R^T A, C>`` for
    a fixed mapped anchor ``A`` and candidate matrices ``C``, i.e. two matrix products against the
    candidates' flattened matrices and Gram matrices. The L1 norm has no such expansion and runs in
    candidate chunks.
    """

    def __init__(self, num_entities, num_relations, k, m, gamma, norm="fro", head_only=False,
                 relation_init="identity", init_noise=0.1, spectral_weight=0.0, n3_weight=0.0,
                 orthogonal_weight=0.0, entity_init_bound=None, entity_radius=None, translation=False,
                 many_side_orthogonal_weight=None, relation_sides=None, sparse=True):
        _check_choice("norm", norm, ("fro", "l1"))
        _check_choice("relation_init", relation_init, ("identity", "uniform", "orthogonal"))
        if k < 1 or m < 1:
            raise ValueError(f"Arch.k and Arch.m must be positive, got k={k}, m={m}")
        self.k, self.m, self.gamma = int(k), int(m), float(gamma)
        self.norm, self.head_only = norm, bool(head_only)
        self.maps = 1 if head_only else 2
        if entity_init_bound is None:
            entity_init_bound = (gamma + 2.0) / (k * m)
        elif not entity_init_bound > 0:
            raise ValueError(f"Arch.entity_init_bound must be positive or null, got {entity_init_bound}")
        self.translation = bool(translation)
        self.map_width = self.maps * k * k
        super().__init__(num_entities, num_relations, k * m, self.map_width + (k * m if self.translation else 0),
                         float(entity_init_bound), sparse)
        self.spectral_weight, self.n3_weight = float(spectral_weight), float(n3_weight)
        self.orthogonal_weight = float(orthogonal_weight)
        self.map_weights = self._orthogonal_weights(num_relations, many_side_orthogonal_weight, relation_sides)
        if entity_radius is not None and not entity_radius > 0:
            raise ValueError(f"Arch.entity_radius must be positive or null, got {entity_radius}")
        self.entity_radius = None if entity_radius is None else float(entity_radius)
        rng = np.random.default_rng(int(paddle.randint(0, 2**31 - 1, [1]).item()))  # follows paddle.seed
        if relation_init == "identity":
            init = np.eye(k)[None, None] + rng.uniform(-init_noise, init_noise, (num_relations, self.maps, k, k))
        elif relation_init == "uniform":
            bound = 1.0 / math.sqrt(k)
            init = rng.uniform(-bound, bound, (num_relations, self.maps, k, k))
        else:  # Haar-random orthogonal maps: Q of a Gaussian's QR, columns signed by diag(R)
            q, r = np.linalg.qr(rng.normal(size=(num_relations, self.maps, k, k)))
            init = q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[..., None, :]
        init = init.reshape(num_relations, -1)
        if self.translation:
            init = np.concatenate([init, np.zeros((num_relations, k * m))], axis=1)
        self.relation_embedding.weight.set_value(init.astype("float32"))

    # --- helpers
    def _orthogonal_weights(self, num_relations, many_side_weight, relation_sides):
        """``[num_relations, maps]`` weights of the orthogonal pull, or None when all are equal."""
        if many_side_weight is None:
            return None
        if not many_side_weight >= 0:
            raise ValueError(f"Arch.many_side_orthogonal_weight must be >= 0 or null, got {many_side_weight}")
        if relation_sides is None:
            raise ValueError("Arch.many_side_orthogonal_weight needs the training triples' relation sides; "
                             "build SpaceE through the kge task, or pass relation_sides=(many_heads, many_tails)")
        many_heads, many_tails = (np.asarray(x, dtype=bool) for x in relation_sides)
        if many_heads.shape != (num_relations,) or many_tails.shape != (num_relations,):
            raise ValueError(f"relation_sides must be two boolean arrays of length {num_relations}, "
                             f"got shapes {many_heads.shape} and {many_tails.shape}")
        many = np.stack([many_heads, many_tails], axis=1)[:, : self.maps]  # head_only: the head map only
        weights = np.where(many, float(many_side_weight), self.orthogonal_weight).astype("float32")
        return paddle.to_tensor(weights)

    def _on_sphere(self, x):
        """Flat entity rows scaled to Frobenius norm ``entity_radius`` (unchanged when it is null)."""
        if self.entity_radius is None:
            return x
        return x * (self.entity_radius / paddle.sqrt((x * x).sum(-1, keepdim=True) + EPS))

    def _entity_matrix(self, x):
        return x.reshape([*x.shape[:-1], self.k, self.m])

    def _maps(self, r):
        """``(R^head, R^tail or None)`` as ``[..., k, k]`` from flat relation rows."""
        mats = r[..., : self.map_width].reshape([*r.shape[:-1], self.maps, self.k, self.k])
        if self.head_only:
            return mats[..., 0, :, :], None
        return mats[..., 0, :, :], mats[..., 1, :, :]

    def _offset(self, r):
        """``B_r`` as ``[..., k, m]`` from flat relation rows (``translation`` only)."""
        return self._entity_matrix(r[..., self.map_width :])

    def _distance(self, diff):
        if self.norm == "fro":
            return paddle.sqrt((diff * diff).sum([-2, -1]) + EPS)
        return diff.abs().sum([-2, -1])

    def score_embeddings(self, h, r, t):
        h, t = self._on_sphere(h), self._on_sphere(t)
        r_head, r_tail = self._maps(r)
        mapped_head = paddle.matmul(r_head, self._entity_matrix(h))
        if self.translation:
            mapped_head = mapped_head + self._offset(r)
        mapped_tail = self._entity_matrix(t) if r_tail is None else paddle.matmul(r_tail, self._entity_matrix(t))
        return self.gamma - self._distance(mapped_head - mapped_tail)

    def score_candidates(self, anchor, rel, cand, side):
        anchor, cand = self._on_sphere(anchor), self._on_sphere(cand)
        if self.norm != "fro":
            return super().score_candidates(anchor, rel, cand, side)
        r_head, r_tail = self._maps(rel)
        anchor_map, cand_map = (r_head, r_tail) if side == "tail" else (r_tail, r_head)
        a = self._entity_matrix(anchor)
        fixed = a if anchor_map is None else paddle.matmul(anchor_map, a)  # [G, B, k, m]
        if self.translation:  # ||R_h E_h + B - R_t E_t||: B joins the fixed side with its sign
            fixed = fixed + self._offset(rel) if side == "tail" else fixed - self._offset(rel)
        groups, batch = fixed.shape[0], fixed.shape[1]
        if cand_map is None:
            sq = _pairwise_sq_l2(fixed.reshape([groups, batch, -1]), cand)
        else:
            c = self._entity_matrix(cand)  # [G, K, k, m]
            gram = paddle.matmul(c, c, transpose_y=True).reshape([groups, cand.shape[1], -1])  # C C^T
            metric = paddle.matmul(cand_map, cand_map, transpose_x=True).reshape([groups, batch, -1])  # R^T R
            pulled = paddle.matmul(cand_map, fixed, transpose_x=True).reshape([groups, batch, -1])  # R^T A
            sq = (
                (fixed * fixed).sum([-2, -1]).unsqueeze(-1)
                + paddle.matmul(metric, gram, transpose_y=True)
                - 2.0 * paddle.matmul(pulled, cand, transpose_y=True)
            )
            sq = paddle.clip(sq, min=0.0)
        return self.gamma - paddle.sqrt(sq + EPS)

    def penalty_terms(self, h, r, t):
        terms = []
        orthogonal = self.orthogonal_weight > 0 or self.map_weights is not None
        if self.spectral_weight > 0 or orthogonal:
            maps = self._maps(self.relation_embedding(_ids(r)))
            mats = paddle.concat([x for x in maps if x is not None], axis=0)
        if self.spectral_weight > 0:
            top = paddle.linalg.svd(mats, full_matrices=False)[1][:, 0]
            terms.append(self.spectral_weight * (top * top).mean())
        if orthogonal:
            gram = paddle.matmul(mats, mats, transpose_x=True) - paddle.eye(self.k)
            penalty = (gram * gram).sum([-2, -1]) / self.k  # [maps * batch], head maps first
            if self.map_weights is None:
                terms.append(self.orthogonal_weight * penalty.mean())
            else:  # per relation and side, in the order of ``mats``
                weights = paddle.gather(self.map_weights, _ids(r)).transpose([1, 0]).reshape([-1])
                terms.append((weights * penalty).mean())
        if self.n3_weight > 0:
            ents = self.entity_embedding(paddle.concat([_ids(h), _ids(t)]))
            terms.append(self.n3_weight * (ents.abs() ** 3).sum(-1).mean())
        return terms + super().penalty_terms(h, r, t)

    def relation_matrices(self):
        """Learned maps as numpy ``[num_relations, maps, k, k]`` (maps: head[, tail])."""
        maps = self.relation_embedding.weight.numpy()[:, : self.map_width]
        return maps.reshape(self.num_relations, self.maps, self.k, self.k)


# ============================================================================ baselines
class TransE(KGEModel):
    """TransE (Bordes et al. 2013): score ``gamma - ||h + r - t||_p``, RotatE's init range ``(gamma+2)/dim``."""

    def __init__(self, num_entities, num_relations, dim, gamma, p_norm=1, sparse=True):
        _check_choice("p_norm", p_norm, (1, 2))
        self.dim, self.gamma, self.p_norm = int(dim), float(gamma), int(p_norm)
        super().__init__(num_entities, num_relations, dim, dim, (gamma + 2.0) / dim, sparse)

    def _norm(self, x):
        return x.abs().sum(-1) if self.p_norm == 1 else paddle.sqrt((x * x).sum(-1) + EPS)

    def score_embeddings(self, h, r, t):
        return self.gamma - self._norm(h + r - t)

    def ranking_scorer(self):
        if self.p_norm != 1 or not _numpy_kernels(self.entity_embedding.weight):
            return None
        packed = kernels.pack_table(self.entity_embedding.weight.numpy())

        def score(side, entity, relation):
            anchor, rel = self.entity_embedding(_ids(entity)), self.relation_embedding(_ids(relation))
            query = anchor + rel if side == "tail" else anchor - rel
            return kernels.l1_scores(query.numpy(), packed, self.gamma, self.num_entities)

        return score

    def has_row_kernels(self):
        return self.p_norm == 1

    def score_candidate_rows(self, anchor, rel, rows, index, side):
        query = anchor + rel if side == "tail" else anchor - rel
        return self.gamma - _l1_distance(query, rows, index)

    def score_candidates(self, anchor, rel, cand, side):
        query = anchor + rel if side == "tail" else anchor - rel  # h + r ~ t  /  t - r ~ h
        if self.p_norm == 2:
            return self.gamma - paddle.sqrt(_pairwise_sq_l2(query, cand) + EPS)
        if _numpy_kernels(query, cand):
            return self.gamma - _l1_distance(query, *_all_rows(cand))
        groups, batch, width = query.shape
        blocks = [
            self.gamma - (query.unsqueeze(2) - (cand if hi - lo == cand.shape[1] else cand[:, lo:hi]).unsqueeze(1))
            .abs().sum(-1)
            for lo, hi in _candidate_slices(cand.shape[1], groups * batch * width)
        ]
        return blocks[0] if len(blocks) == 1 else paddle.concat(blocks, axis=2)


class RotatE(KGEModel):
    """RotatE (Sun et al. 2019): ``gamma - sum_i |h_i r_i - t_i|`` with ``|r_i| = 1``.

    Entities are ``dim`` complex numbers stored as ``[re | im]`` (RotatE's ``-de``: width ``2*dim``);
    a relation is ``dim`` phases ``theta = x / (range / pi)`` with ``x`` uniform in ``+-range``,
    ``range = (gamma + 2) / dim`` as in the reference implementation. The head query uses
    ``|h r - t| = |h - t conj(r)|`` (``|r| = 1``).
    """

    def __init__(self, num_entities, num_relations, dim, gamma, sparse=True):
        self.dim, self.gamma = int(dim), float(gamma)
        self.embedding_range = (gamma + 2.0) / dim
        super().__init__(num_entities, num_relations, 2 * dim, dim, self.embedding_range, sparse)

    def _rotation(self, r):
        phase = r / (self.embedding_range / math.pi)
        return paddle.cos(phase), paddle.sin(phase)

    def _split(self, x):
        return x[..., : self.dim], x[..., self.dim :]

    def _modulus_sum(self, re, im):
        return paddle.sqrt(re * re + im * im + EPS).sum(-1)

    def score_embeddings(self, h, r, t):
        (h_re, h_im), (t_re, t_im), (c, s) = self._split(h), self._split(t), self._rotation(r)
        return self.gamma - self._modulus_sum(h_re * c - h_im * s - t_re, h_re * s + h_im * c - t_im)

    def _queries(self, anchor, rel, side):
        """The rotated anchor ``(re, im)``: ``h r`` (tail side) or ``t conj(r)`` (head side)."""
        (a_re, a_im), (c, s) = self._split(anchor), self._rotation(rel)
        if side == "head":
            s = -s  # rotate the tail back: t * conj(r)
        return a_re * c - a_im * s, a_re * s + a_im * c

    def ranking_scorer(self):
        table = self.entity_embedding.weight
        if not _numpy_kernels(table):
            return None
        packed_re, packed_im = (kernels.pack_table(part) for part in self._split(table.numpy()))

        def score(side, entity, relation):
            anchor, rel = self.entity_embedding(_ids(entity)), self.relation_embedding(_ids(relation))
            q_re, q_im = self._queries(anchor, rel, side)
            return kernels.modulus_scores(q_re.numpy(), q_im.numpy(), packed_re, packed_im, self.gamma,
                                          self.num_entities)

        return score

    def has_row_kernels(self):
        return True

    def score_candidate_rows(self, anchor, rel, rows, index, side):
        q_re, q_im = self._queries(anchor, rel, side)
        return self.gamma - _modulus_distance(q_re, q_im, rows, index)

    def score_candidates(self, anchor, rel, cand, side):
        q_re, q_im = self._queries(anchor, rel, side)
        if _numpy_kernels(q_re, q_im, cand):
            return self.gamma - _modulus_distance(q_re, q_im, *_all_rows(cand))
        # GPU/static: complex64 subtract + abs are fused kernels, ~25% faster than the real-valued
        # formula forward+backward, and abs' gradient is 0 (not NaN) at 0
        query = paddle.complex(q_re, q_im).unsqueeze(2)
        groups, batch = anchor.shape[0], anchor.shape[1]
        blocks = []
        for lo, hi in _candidate_slices(cand.shape[1], 3 * groups * batch * self.dim):
            k_re, k_im = self._split(cand if hi - lo == cand.shape[1] else cand[:, lo:hi])
            blocks.append(self.gamma - paddle.abs(query - paddle.complex(k_re, k_im).unsqueeze(1)).sum(-1))
        return blocks[0] if len(blocks) == 1 else paddle.concat(blocks, axis=2)


class DistMult(KGEModel):
    """DistMult (Yang et al. 2015): score ``<h, r, t>``; init uniform in ``+-(gamma+2)/dim`` as RotatE's code."""

    def __init__(self, num_entities, num_relations, dim, gamma, sparse=True):
        self.dim = int(dim)
        super().__init__(num_entities, num_relations, dim, dim, (gamma + 2.0) / dim, sparse)

    def score_embeddings(self, h, r, t):
        return (h * r * t).sum(-1)

    def score_candidates(self, anchor, rel, cand, side):
        return paddle.matmul(anchor * rel, cand, transpose_y=True)


class ComplEx(KGEModel):
    """ComplEx (Trouillon et al. 2016): ``Re(<h, r, conj(t)>)``; entities and relations ``[re | im]``."""

    def __init__(self, num_entities, num_relations, dim, gamma, sparse=True):
        self.dim = int(dim)
        super().__init__(num_entities, num_relations, 2 * dim, 2 * dim, (gamma + 2.0) / dim, sparse)

    def _split(self, x):
        return x[..., : self.dim], x[..., self.dim :]

    def score_embeddings(self, h, r, t):
        (h_re, h_im), (r_re, r_im), (t_re, t_im) = self._split(h), self._split(r), self._split(t)
        return ((h_re * r_re - h_im * r_im) * t_re + (h_re * r_im + h_im * r_re) * t_im).sum(-1)

    def score_candidates(self, anchor, rel, cand, side):
        (a_re, a_im), (r_re, r_im) = self._split(anchor), self._split(rel)
        if side == "tail":  # (h r) . conj(t)
            query = paddle.concat([a_re * r_re - a_im * r_im, a_re * r_im + a_im * r_re], axis=-1)
        else:  # h . (r conj(t)), real part
            query = paddle.concat([r_re * a_re + r_im * a_im, r_re * a_im - r_im * a_re], axis=-1)
        return paddle.matmul(query, cand, transpose_y=True)


# ============================================================================ registry
@ARCHS.register("SpaceE")
def spacee(num_entities, num_relations, relation_sides, k=20, m=50, gamma=12.0, norm="fro", head_only=False,
           relation_init="identity", init_noise=0.1, spectral_weight=0.0, n3_weight=0.0, orthogonal_weight=0.0,
           entity_init_bound=None, entity_radius=None, translation=False, many_side_orthogonal_weight=None,
           sparse=True):
    return SpaceE(num_entities, num_relations, k, m, gamma, norm=norm, head_only=head_only,
                  relation_init=relation_init, init_noise=init_noise, spectral_weight=spectral_weight,
                  n3_weight=n3_weight, orthogonal_weight=orthogonal_weight, entity_init_bound=entity_init_bound,
                  entity_radius=entity_radius, translation=translation,
                  many_side_orthogonal_weight=many_side_orthogonal_weight, relation_sides=relation_sides,
                  sparse=sparse)


@ARCHS.register("TransE")
def transe(num_entities, num_relations, dim=1000, gamma=9.0, p_norm=1, sparse=True):
    return TransE(num_entities, num_relations, dim, gamma, p_norm, sparse)


@ARCHS.register("RotatE")
def rotate(num_entities, num_relations, dim=1000, gamma=9.0, sparse=True):
    return RotatE(num_entities, num_relations, dim, gamma, sparse)


@ARCHS.register("DistMult")
def distmult(num_entities, num_relations, dim=1000, gamma=200.0, sparse=True):
    return DistMult(num_entities, num_relations, dim, gamma, sparse)


@ARCHS.register("ComplEx")
def complex_(num_entities, num_relations, dim=1000, gamma=200.0, sparse=True):
    return ComplEx(num_entities, num_relations, dim, gamma, sparse)
