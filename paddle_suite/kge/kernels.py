"""Fused CPU kernels (numba) for the distance scores of TransE (L1) and RotatE (sum of moduli).

Neither score is a matrix product: ``sum_d |q_d - c_d|`` and ``sum_d |q_d - c_d|`` over complex
``d`` need every (query, candidate, dimension) element, so the limit is elementwise throughput,
not a GEMM. These kernels compute each element once, in registers / L1, instead of the numpy
broadcast they replace (a ``[B, K, D]`` temporary per operation, several passes over memory).

Bit-for-bit: every kernel reproduces the float32 arithmetic of the numpy formulation it replaces,
in the same order, so scores, ranks and the query gradients are unchanged (the candidates' gradient
differs only in the order of one sum, last point):

* an element is ``|q - c|`` (TransE) or ``sqrt(d_re * d_re + d_im * d_im + EPS)`` (RotatE), each
  operation rounded to float32 (no FMA contraction: numba does not enable it without fastmath);
* the sum over the ``D`` dimensions follows numpy's float32 ``add.reduce`` of a contiguous row:
  ``0 + pairwise(row)``, where ``pairwise`` keeps eight interleaved accumulators for a run of at most
  128 elements, combines them as ``((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))``, adds the
  remainder one by one, and splits longer runs in two halves at a multiple of eight
  (numpy/_core/src/umath/loops_utils.h.src, ``pairwise_sum``);
* training gradients: ``d/dq`` sums over the candidates in index order, as numpy's reduction over a
  non-contiguous axis does; ``d/dc`` is summed per *distinct* candidate entity inside the kernel
  (in batch order) instead of one gradient row per draw that the optimizer then merges, so it
  equals the previous gradient up to the order of that sum.

Evaluation scores all entities for a block of queries: the entity table is packed once per
evaluation as ``[N / LANES, D, LANES]`` so that the innermost loop runs over ``LANES`` entities
(SIMD across entities; the eight accumulators of each lane are the eight rows of a small L1-resident
scratch), and the block loop is a ``prange`` (``num_threads`` threads). Training kernels take the
batch's distinct candidate rows and an index (see ``l1_forward``) and vectorise over ``D``; their
backward is sequential (the per-entity scatter must not race), the forward a ``prange``.
Each loop skeleton is written once for both distances: a ``modulus`` flag picks the element
(``_lane_element``, ``_row_element``, ``_row_element_grad``, inlined into the loops).
Threads: ``set_threads(n)`` or ``with threads(n):`` (numba's pool; one thread by default, as paddle).
"""
import contextlib

import numba
import numpy as np

#: entities per packed block (SIMD lanes x unroll); 64 measured fastest of 16/32/64 for D=200
LANES = 64
#: the ``EPS`` of ``models.py`` as the float32 that numpy adds to a float32 array
EPS32 = np.float32(1e-12)
_MAX_DEPTH = 64  # partial sums on a pairwise stack: at most the split depth + 1 (D < 2^60)

# error_model="numpy": a float division by zero gives inf/nan as in numpy instead of a Python
# exception; the exception's check is a branch per element that stopped LLVM vectorising the loops
_JIT = dict(nogil=True, cache=True, error_model="numpy")


_threads = 1


def set_threads(num_threads):
    """Threads of the parallel kernels (``prange``) from now on; capped at numba's pool (the cores)."""
    global _threads
    num_threads = int(num_threads)
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    _threads = min(num_threads, numba.config.NUMBA_NUM_THREADS)


@contextlib.contextmanager
def threads(num_threads):
    """``set_threads`` for the duration of a block (restores the previous setting)."""
    previous = _threads
    set_threads(num_threads)
    try:
        yield
    finally:
        set_threads(previous)


def _run(kernel, *args):
    numba.set_num_threads(_threads)  # thread-local in numba: set for the calling thread each time
    return kernel(*args)


def pairwise_plan(width):
    """numpy's pairwise summation of ``width`` elements as a postfix program, ``int64 [steps, 3]``.

    Row ``(0, start, n)`` pushes the leaf sum of elements ``start:start+n`` (``n <= 128``); row
    ``(1, 0, 0)`` pops two partial sums and pushes ``left + right``. (The kernels evaluate it with a
    small stack instead of recursing: numba's cache cannot hold recursive functions.)
    """
    plan = []

    def visit(start, n):
        if n <= 128:
            plan.append((0, start, n))
            return
        half = n // 2
        half -= half % 8
        visit(start, half)
        visit(start + half, n - half)
        plan.append((1, 0, 0))

    visit(0, int(width))
    return np.array(plan, dtype=np.int64)


# ============================================================================ packed (evaluation)
def pack_table(table):
    """``[N, D]`` float32 -> ``[ceil(N / LANES), D, LANES]`` (zero-padded entities past ``N``)."""
    table = np.asarray(table, dtype=np.float32)
    rows, width = table.shape
    blocks = -(-rows // LANES)
    padded = np.zeros((blocks * LANES, width), np.float32)
    padded[:rows] = table
    return np.ascontiguousarray(padded.reshape(blocks, LANES, width).transpose(0, 2, 1))


@numba.njit(inline="always", **_JIT)
def _modulus(d_re, d_im):
    """``sqrt(d_re^2 + d_im^2 + EPS)``, each operation in the order of the numpy formulation (module doc)."""
    mod = d_re * d_re
    mod = mod + d_im * d_im
    return np.sqrt(mod + EPS32)


@numba.njit(inline="always", **_JIT)
def _lane_element(q_re, q_im, c_re, c_im, d, k, modulus):
    """Element ``d`` of lane ``k``: ``|q - c|`` or the complex modulus (see module doc)."""
    if modulus:
        return _modulus(q_re[d] - c_re[d, k], q_im[d] - c_im[d, k])
    return abs(q_re[d] - c_re[d, k])


@numba.njit(**_JIT)
def _lane_leaf(q_re, q_im, c_re, c_im, start, n, out, acc, modulus):
    """numpy's pairwise leaf (``n <= 128``) of elements ``start:start+n`` for every lane into ``out``."""
    lanes = out.shape[0]
    if n < 8:
        for k in range(lanes):
            out[k] = np.float32(-0.0)
        for d in range(start, start + n):
            for k in range(lanes):
                out[k] += _lane_element(q_re, q_im, c_re, c_im, d, k, modulus)
        return
    for j in range(8):
        row = acc[j]
        for k in range(lanes):
            row[k] = _lane_element(q_re, q_im, c_re, c_im, start + j, k, modulus)
    full = start + n - n % 8
    for i in range(start + 8, full, 8):
        for j in range(8):
            row = acc[j]
            for k in range(lanes):
                row[k] += _lane_element(q_re, q_im, c_re, c_im, i + j, k, modulus)
    a0, a1, a2, a3, a4, a5, a6, a7 = acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7]
    for k in range(lanes):
        out[k] = ((a0[k] + a1[k]) + (a2[k] + a3[k])) + ((a4[k] + a5[k]) + (a6[k] + a7[k]))
    for d in range(full, start + n):
        for k in range(lanes):
            out[k] += _lane_element(q_re, q_im, c_re, c_im, d, k, modulus)


@numba.njit(inline="always", **_JIT)
def _lane_pairwise(q_re, q_im, c_re, c_im, plan, stack, acc, modulus):
    """All lanes' pairwise sums (``pairwise_plan``) into ``stack[0]``."""
    top = 0
    for step in range(plan.shape[0]):
        if plan[step, 0] == 0:
            _lane_leaf(q_re, q_im, c_re, c_im, plan[step, 1], plan[step, 2], stack[top], acc, modulus)
            top += 1
        else:
            left, right = stack[top - 2], stack[top - 1]
            for k in range(left.shape[0]):
                left[k] += right[k]
            top -= 1
    return stack[0]


@numba.njit(parallel=True, **_JIT)
def _score_all(q_re, q_im, packed_re, packed_im, gamma, num_entities, out, plan, modulus):
    """``out[b, e] = gamma - distance(q_b, entity e)`` for every entity (packed tables)."""
    batch = q_re.shape[0]
    lanes = packed_re.shape[2]
    for block in numba.prange(packed_re.shape[0]):
        acc = np.empty((8, lanes), np.float32)
        stack = np.empty((_MAX_DEPTH, lanes), np.float32)
        c_re, c_im = packed_re[block], packed_im[block]
        first = block * lanes
        count = min(lanes, num_entities - first)
        for b in range(batch):
            total = _lane_pairwise(q_re[b], q_im[b], c_re, c_im, plan, stack, acc, modulus)
            for k in range(count):
                out[b, first + k] = gamma - (np.float32(0.0) + total[k])


def l1_scores(query, packed, gamma, num_entities):
    """``gamma - sum_d |query_b - e|`` for every entity: ``[B, N]`` float32 (TransE, L1)."""
    query = np.ascontiguousarray(query, dtype=np.float32)
    out = np.empty((len(query), num_entities), np.float32)
    _run(_score_all, query, query, packed, packed, np.float32(gamma), num_entities, out,
         pairwise_plan(query.shape[1]), False)
    return out


def modulus_scores(query_re, query_im, packed_re, packed_im, gamma, num_entities):
    """``gamma - sum_d sqrt(|query_b - e|^2 + EPS)`` over complex dims for every entity (RotatE)."""
    query_re = np.ascontiguousarray(query_re, dtype=np.float32)
    query_im = np.ascontiguousarray(query_im, dtype=np.float32)
    out = np.empty((len(query_re), num_entities), np.float32)
    _run(_score_all, query_re, query_im, packed_re, packed_im, np.float32(gamma), num_entities, out,
         pairwise_plan(query_re.shape[1]), True)
    return out


# ============================================================================ ranking
@numba.njit(parallel=True, **_JIT)
def _rank_counts(scores, targets):
    """Per row: target score, count of scores ``>`` it and ``==`` it (one pass over the block).

    ``scores`` ``[B, N]`` float32, ``targets`` ``[B]`` int64; NaN compares false both ways, as numpy.
    """
    batch, num = scores.shape
    greater = np.zeros(batch, np.int64)
    equal = np.zeros(batch, np.int64)
    target_scores = np.empty(batch, scores.dtype)
    for b in numba.prange(batch):
        row = scores[b]
        target = row[targets[b]]
        g = 0
        e = 0
        for k in range(num):
            g += row[k] > target
            e += row[k] == target
        greater[b], equal[b], target_scores[b] = g, e, target
    return target_scores, greater, equal


# ============================================================================ training
@numba.njit(inline="always", **_JIT)
def _pairwise_leaf(values, start, n):
    if n < 8:
        res = np.float32(-0.0)
        for i in range(start, start + n):
            res += values[i]
        return res
    r0, r1, r2, r3 = values[start], values[start + 1], values[start + 2], values[start + 3]
    r4, r5, r6, r7 = values[start + 4], values[start + 5], values[start + 6], values[start + 7]
    full = start + n - n % 8
    for i in range(start + 8, full, 8):
        r0 += values[i]
        r1 += values[i + 1]
        r2 += values[i + 2]
        r3 += values[i + 3]
        r4 += values[i + 4]
        r5 += values[i + 5]
        r6 += values[i + 6]
        r7 += values[i + 7]
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for i in range(full, start + n):
        res += values[i]
    return res


@numba.njit(inline="always", **_JIT)
def _row_sum(values, plan, stack):
    """numpy's float32 ``values.sum()`` of a contiguous row (``pairwise_plan``; ``stack`` scratch)."""
    top = 0
    for step in range(plan.shape[0]):
        if plan[step, 0] == 0:
            stack[top] = _pairwise_leaf(values, plan[step, 1], plan[step, 2])
            top += 1
        else:
            stack[top - 2] += stack[top - 1]
            top -= 1
    return np.float32(0.0) + stack[0]


@numba.njit(inline="always", **_JIT)
def _row_element(q_re, q_im, c, g, b, d, width, modulus):
    """Element ``d`` of query ``(g, b)`` against row ``c``: ``|q - c|``, or the complex modulus with ``c``
    as ``[re | im]`` (the imaginary half is read only then: an L1 row has no second half)."""
    if modulus:
        return _modulus(q_re[g, b, d] - c[d], q_im[g, b, d] - c[width + d])
    return abs(q_re[g, b, d] - c[d])


@numba.njit(parallel=True, **_JIT)
def _distance_forward(q_re, q_im, rows, index, plan, modulus):
    """``out[g, b, k] = sum_d element(q[g, b, d], rows[index[g, k]])`` (``_row_element``; L1: ``q_im`` unused)."""
    groups, batch, width = q_re.shape
    num = index.shape[1]
    out = np.empty((groups, batch, num), np.float32)
    for g in numba.prange(groups):
        values = np.empty(width, np.float32)
        stack = np.empty(_MAX_DEPTH, np.float32)
        for b in range(batch):
            for k in range(num):
                c = rows[index[g, k]]
                for d in range(width):
                    values[d] = _row_element(q_re, q_im, c, g, b, d, width, modulus)
                out[g, b, k] = _row_sum(values, plan, stack)
    return out


@numba.njit(inline="always", **_JIT)
def _row_element_grad(q_re, q_im, c, g, b, d, width, weight, terms, modulus):
    """``weight * d element / d q`` at ``d`` into ``terms[:, d]``: ``sign(q - c)`` (L1: ``terms[0]`` only)
    or ``(d_re, d_im) / modulus`` (``_row_element``)."""
    if modulus:
        d_re = q_re[g, b, d] - c[d]
        d_im = q_im[g, b, d] - c[width + d]
        mod = _modulus(d_re, d_im)
        terms[0, d] = (d_re / mod) * weight
        terms[1, d] = (d_im / mod) * weight
    else:
        diff = q_re[g, b, d] - c[d]
        terms[0, d] = np.float32((diff > 0) - (diff < 0)) * weight


@numba.njit(**_JIT)
def _distance_backward(q_re, q_im, rows, index, grad, grad_rows, modulus):
    """Gradients of ``sum grad * _distance_forward``: returns ``d/dq`` as ``[parts, G, B, D]`` (parts: re, and
    im for the modulus); ``d/drows`` is added into ``grad_rows`` (``[re | im]`` halves).

    The element's derivative is recomputed. Sequential: candidates repeat across groups, so the
    scatter into ``grad_rows`` must not race.
    """
    groups, batch, width = q_re.shape
    num = index.shape[1]
    parts = 2 if modulus else 1
    grad_q = np.zeros((parts, groups, batch, width), np.float32)
    terms = np.empty((parts, width), np.float32)  # one candidate's terms first: that loop vectorises
    for g in range(groups):
        for b in range(batch):
            for k in range(num):
                weight = grad[g, b, k]
                c = rows[index[g, k]]
                for d in range(width):
                    _row_element_grad(q_re, q_im, c, g, b, d, width, weight, terms, modulus)
                target = grad_rows[index[g, k]]
                for part in range(parts):
                    accumulate = grad_q[part, g, b]
                    offset = part * width
                    for d in range(width):
                        accumulate[d] += terms[part, d]
                        target[offset + d] -= terms[part, d]
    return grad_q


def rank_counts(scores, targets):
    """``(target scores [B], #scores > target [B], #scores == target [B])`` of a ``[B, N]`` block."""
    return _run(_rank_counts, scores, np.asarray(targets, dtype=np.int64))


# Candidates are given as ``rows`` ``[U, D]`` (``[U, 2D]`` complex) and ``index`` ``[G, K]``: candidate ``k``
# of group ``g`` is ``rows[index[g, k]]``. Training passes each distinct negative entity once
# (``rows`` = the batch's unique negatives), so neither the forward gathers ``[G, K, D]`` nor the
# backward writes a gradient row per draw: it sums into one row per distinct entity.
def _grad_rows(rows, grad_rows):
    if grad_rows is None:
        return np.zeros(rows.shape, np.float32)
    grad_rows[...] = 0.0
    return grad_rows


def l1_forward(q, rows, index):
    return _run(_distance_forward, q, q, rows, index, pairwise_plan(q.shape[-1]), False)


def l1_backward(q, rows, index, grad, grad_rows=None):
    """``(d/dq, d/drows)``; ``grad_rows`` (``rows``' shape, float32) receives ``d/drows`` when given."""
    grad_rows = _grad_rows(rows, grad_rows)
    return _run(_distance_backward, q, q, rows, index, grad, grad_rows, False)[0], grad_rows


def modulus_forward(q_re, q_im, rows, index):
    return _run(_distance_forward, q_re, q_im, rows, index, pairwise_plan(q_re.shape[-1]), True)


def modulus_backward(q_re, q_im, rows, index, grad, grad_rows=None):
    """``(d/dq_re, d/dq_im, d/drows)``; ``grad_rows`` receives ``d/drows`` when given."""
    grad_rows = _grad_rows(rows, grad_rows)
    grad_re, grad_im = _run(_distance_backward, q_re, q_im, rows, index, grad, grad_rows, True)
    return grad_re, grad_im, grad_rows


def matmul_flops_per_second(repeats=5, rows=4096, inner=512):
    """Float32 FLOP/s of a paddle GEMM ``[rows, inner] x [inner, inner]`` (oneDNN/MKL), best of ``repeats``.

    The machine limit the benchmarks compare against: ``flops / matmul_flops_per_second()`` is the
    time a matmul of the same FLOPs takes in the calling process's thread setting.
    """
    import time

    import paddle

    a, b = paddle.rand([rows, inner]), paddle.rand([inner, inner])
    paddle.matmul(a, b).numpy()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        paddle.matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2.0 * rows * inner * inner / best
