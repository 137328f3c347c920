"""Token-mixing operations of the spatial-shift and circulant MLPs, on channels-last tensors.

All ops take ``[B, H, W, C]`` (NHWC) feature maps: the channel-mixing layers are then plain
``F.linear`` calls on the last axis, with no transposes between them.

``spatial_shift`` (S²-MLP, S²-MLPv2): the channels are split into equal groups and group ``k``
is moved one position in ``directions[k]``:

* ``"right"``: ``out[i, j] = x[i, j - 1]``     ``"left"``: ``out[i, j] = x[i, j + 1]``
* ``"down"``:  ``out[i, j] = x[i - 1, j]``     ``"up"``:   ``out[i, j] = x[i + 1, j]``
* ``"none"``:  ``out[i, j] = x[i, j]``

The position that has no source (column 0 for ``"right"``, ...) is filled according to
``padding``: ``"zero"`` (default, as the issue asks), ``"replicate"`` (the border keeps its own
value, which is what the in-place assignment ``x[:, 1:] = x[:, :-1]`` in the papers' pseudo-code
does) or ``"circular"`` (wrap-around, i.e. ``paddle.roll``). Two implementations, both
whole-tensor (one copy per run of consecutive groups with the same direction, no per-pixel loops):

* paddle (static graphs, export, GPU, non-zero padding): one ``F.pad`` of the whole tensor by one
  pixel, one slice per run, one concat; exact gradients through pad/slice/concat.
* numpy (CPU dygraph with zero padding, the training default): a ``PyLayer`` whose forward
  copies each run into a fresh array (read through DLPack, returned with ``zero_copy``) and whose
  backward applies the adjoint, i.e. the opposite shift of the output gradient, also zero-filled.
  Why: in paddle 2.6.2 slices are strided views and ``concat`` of such views takes a slow generic
  path: shifting a ``[128, 16, 16, 384]`` map took 262 ms (pad 31 ms, concat 239 ms), the numpy
  copies 44 ms, PyTorch's pad/slice/cat 72 ms (one thread, process CPU time, this machine).

``circulant_token_mixing`` (CCS token mixing): the channels are split into ``G`` groups; group
``g`` is mixed along the height axis by the circulant matrix ``C(k_h[g])`` (``H x H``,
``C[i, m] = k_h[g, (i - m) mod H]``) and along the width axis by ``C(k_w[g])`` (``W x W``), and
the two results are added::

    out[b, :, :, c] = C(k_h[g]) @ x[b, :, :, c]  +  x[b, :, :, c] @ C(k_w[g])^T

i.e. a 2-D circular convolution with the cross-shaped kernel ``k_h[g] (x) delta + delta (x)
k_w[g]``. It is translation-equivariant (for circular shifts) and needs ``H + W`` parameters per
group. Both axes run in one FFT pair: ``irfft2(rfft2(x) * (fft(k_h)[:, None] + rfft(k_w)[None, :]))``,
``O(HW log(HW))`` per channel instead of ``O(HW (H + W))`` for the explicit matrices.

Also here, for the same CPU-speed reason as the numpy shift: ``weighted_part_sum`` (S²-MLPv2's
split-attention fusion), ``layer_norm`` and ``gelu`` (vectorised C kernels, ``native.py``), each with the plain paddle formulation as the fallback and as the reference in
``tests/vision/test_ops.py``.
"""
import numpy as np

import paddle_suite  # noqa: F401  (sets MKL_DEBUG_CPU_TYPE before paddle is imported)
import paddle
import paddle.nn.functional as F
from paddle.autograd import PyLayer

from paddle_suite.vision import native

#: (row offset, column offset) of the source pixel in the 1-pixel padded map, per direction
_SOURCE = {"right": (1, 0), "left": (1, 2), "down": (0, 1), "up": (2, 1), "none": (1, 1)}
_PAD_MODES = {"zero": "constant", "replicate": "replicate", "circular": "circular"}

#: the group orders used by the papers: S²-MLP's shift, and S²-MLPv2's second (transposed) shift
S2MLP_DIRECTIONS = ("right", "left", "down", "up")
S2MLPV2_SECOND_DIRECTIONS = ("down", "up", "right", "left")


def check_shift_args(channels, directions, padding):
    """Raise a clear error for shift settings that cannot work (checked once, at build time)."""
    unknown = [d for d in directions if d not in _SOURCE]
    if unknown:
        raise ValueError(f"spatial shift: unknown direction {unknown[0]!r}; use one of {', '.join(_SOURCE)}")
    if padding not in _PAD_MODES:
        raise ValueError(f"spatial shift: padding {padding!r} is not one of {', '.join(_PAD_MODES)}")
    if channels % len(directions):
        raise ValueError(
            f"spatial shift: {channels} channels cannot be split into {len(directions)} equal groups; "
            f"use a channel count divisible by {len(directions)}"
        )


#: content displacement (rows, columns) of each direction: "right" moves x[i, j] to out[i, j + 1]
_DISPLACEMENT = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0), "none": (0, 0)}


def _runs(directions, channels):
    """``(direction, start, stop)`` channel ranges of consecutive groups with the same direction."""
    group = channels // len(directions)
    runs, start = [], 0
    for k, direction in enumerate(directions):
        if k + 1 < len(directions) and directions[k + 1] == direction:
            continue
        runs.append((direction, start, (k + 1) * group))
        start = (k + 1) * group
    return runs


def _numpy_path(*tensors):
    """Whether the numpy kernels apply: CPU dygraph, contiguous float32/float64 tensors."""
    return paddle.in_dynamic_mode() and all(
        t.place.is_cpu_place() and t.is_contiguous() and t.dtype in (paddle.float32, paddle.float64) for t in tensors
    )


@paddle.jit.not_to_static  # plain Python over static settings: trace as is
def spatial_shift(x, directions=S2MLP_DIRECTIONS, padding="zero"):
    """Shift equal channel groups of ``x`` (``[B, H, W, C]``) by one pixel each; see the module doc."""
    if padding == "zero" and _numpy_path(x):
        return _NumpyShift.apply(x, tuple(directions))
    return paddle_spatial_shift(x, directions, padding)


@paddle.jit.not_to_static
def paddle_spatial_shift(x, directions=S2MLP_DIRECTIONS, padding="zero"):
    """The pad + slice + concat implementation (any padding, any device, static graphs)."""
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    padded = F.pad(x, [1, 1, 1, 1], mode=_PAD_MODES[padding], data_format="NHWC")
    pieces = []
    for direction, start, stop in _runs(directions, channels):
        row, col = _SOURCE[direction]
        pieces.append(padded[:, row : row + height, col : col + width, start:stop])
    return pieces[0] if len(pieces) == 1 else paddle.concat(pieces, axis=-1)


class _DLPackView:
    """Lets ``np.from_dlpack`` read a paddle CPU tensor without copying it (read-only view)."""

    def __init__(self, tensor):
        self.capsule = paddle.utils.dlpack.to_dlpack(tensor)

    def __dlpack__(self, stream=None, **kwargs):
        return self.capsule

    def __dlpack_device__(self):
        return (1, 0)  # kDLCPU, device 0


def _numpy_shift(source, directions, sign):
    """Zero-filled shift of a ``[B, H, W, C]`` array; ``sign=-1`` applies the adjoint (opposite) shift."""
    height, width, channels = source.shape[1:]
    out = np.empty_like(source)
    for direction, start, stop in _runs(directions, channels):
        dy, dx = (sign * d for d in _DISPLACEMENT[direction])
        dst_rows, src_rows = slice(max(dy, 0), height + min(dy, 0)), slice(max(-dy, 0), height + min(-dy, 0))
        dst_cols, src_cols = slice(max(dx, 0), width + min(dx, 0)), slice(max(-dx, 0), width + min(-dx, 0))
        out[:, dst_rows, dst_cols, start:stop] = source[:, src_rows, src_cols, start:stop]
        if dy:
            out[:, 0 if dy > 0 else height - 1, :, start:stop] = 0
        if dx:
            out[:, :, 0 if dx > 0 else width - 1, start:stop] = 0
    return out


class _NumpyShift(PyLayer):
    @staticmethod
    def forward(ctx, x, directions):
        ctx.directions = directions
        out = _numpy_shift(np.from_dlpack(_DLPackView(x)), directions, 1)
        return paddle.Tensor(out, place=x.place, zero_copy=True)

    @staticmethod
    def backward(ctx, grad):
        source = np.from_dlpack(_DLPackView(grad if grad.is_contiguous() else grad.contiguous()))
        return paddle.Tensor(_numpy_shift(source, ctx.directions, -1), place=grad.place, zero_copy=True)


@paddle.jit.not_to_static
def weighted_part_sum(parts, weights):
    """``out[b, n, c] = sum_k parts[b, n, k, c] * weights[b, k, c]`` (S²-MLPv2's split-attention fusion).

    CPU dygraph runs it in numpy (``einsum`` forward and weight gradient): paddle 2.6.2's broadcast
    multiply + sum took 64 ms on ``[128, 256, 3, 64]`` parts, numpy 5 ms (PyTorch 16 ms).
    """
    if _numpy_path(parts, weights):
        return _NumpyWeightedPartSum.apply(parts, weights)
    return (parts * weights.unsqueeze(1)).sum(axis=2)


class _NumpyWeightedPartSum(PyLayer):
    @staticmethod
    def forward(ctx, parts, weights):
        ctx.save_for_backward(parts, weights)
        out = np.einsum("bnkc,bkc->bnc", np.from_dlpack(_DLPackView(parts)), np.from_dlpack(_DLPackView(weights)))
        return paddle.Tensor(np.ascontiguousarray(out), place=parts.place, zero_copy=True)

    @staticmethod
    def backward(ctx, grad):
        parts, weights = ctx.saved_tensor()
        parts_np, weights_np = np.from_dlpack(_DLPackView(parts)), np.from_dlpack(_DLPackView(weights))
        grad_np = np.from_dlpack(_DLPackView(grad if grad.is_contiguous() else grad.contiguous()))
        grad_parts = grad_np[:, :, None, :] * weights_np[:, None]
        grad_weights = np.einsum("bnkc,bnc->bkc", parts_np, grad_np)
        return (
            paddle.Tensor(grad_parts, place=grad.place, zero_copy=True),
            paddle.Tensor(np.ascontiguousarray(grad_weights), place=grad.place, zero_copy=True),
        )


@paddle.jit.not_to_static
def layer_norm(x, weight, bias, epsilon):
    """LayerNorm over the last axis; the compiled kernels of ``native.py`` on CPU dygraph float32,
    ``F.layer_norm`` elsewhere (paddle's: 28 ms forward + backward on ``[3136, 384]`` against
    PyTorch's 2.7 ms, one thread; see ``native.py``)."""
    if x.dtype == paddle.float32 and _numpy_path(x, weight, bias) and native.library() is not None:
        return _NativeLayerNorm.apply(x, weight, bias, float(epsilon))
    return F.layer_norm(x, x.shape[-1:], weight, bias, epsilon)


class _NativeLayerNorm(PyLayer):
    @staticmethod
    def forward(ctx, x, weight, bias, epsilon):
        rows = np.from_dlpack(_DLPackView(x)).reshape(-1, x.shape[-1])
        out = np.empty_like(rows)
        mean, rstd = np.empty(rows.shape[0], np.float32), np.empty(rows.shape[0], np.float32)
        w, b = np.from_dlpack(_DLPackView(weight)), np.from_dlpack(_DLPackView(bias))
        native.library().layer_norm_forward(rows.ctypes.data, w.ctypes.data, b.ctypes.data, epsilon, out.ctypes.data,
                                            mean.ctypes.data, rstd.ctypes.data, *rows.shape)
        ctx.save_for_backward(x, weight)
        ctx.mean, ctx.rstd = mean, rstd
        return paddle.Tensor(out.reshape(x.shape), place=x.place, zero_copy=True)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensor()
        rows = np.from_dlpack(_DLPackView(x)).reshape(-1, x.shape[-1])
        grad_y = np.from_dlpack(_DLPackView(grad if grad.is_contiguous() else grad.contiguous())).reshape(rows.shape)
        grad_x = np.empty_like(rows)
        grad_weight, grad_bias = np.empty(rows.shape[1], np.float32), np.empty(rows.shape[1], np.float32)
        native.library().layer_norm_backward(
            rows.ctypes.data, np.from_dlpack(_DLPackView(weight)).ctypes.data, ctx.mean.ctypes.data,
            ctx.rstd.ctypes.data, grad_y.ctypes.data, grad_x.ctypes.data, grad_weight.ctypes.data,
            grad_bias.ctypes.data, *rows.shape)
        wrap = lambda a: paddle.Tensor(a, place=grad.place, zero_copy=True)  # noqa: E731
        return wrap(grad_x.reshape(grad.shape)), wrap(grad_weight), wrap(grad_bias)


@paddle.jit.not_to_static
def gelu(x):
    """Exact (erf) GELU; the compiled kernel of ``native.py`` on CPU dygraph float32, else ``F.gelu``."""
    if x.dtype == paddle.float32 and _numpy_path(x) and native.library() is not None:
        return _NativeGelu.apply(x)
    return F.gelu(x)


class _NativeGelu(PyLayer):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        source = np.from_dlpack(_DLPackView(x))
        out = np.empty_like(source)
        native.library().gelu_forward(source.ctypes.data, out.ctypes.data, source.size)
        return paddle.Tensor(out, place=x.place, zero_copy=True)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensor()
        source = np.from_dlpack(_DLPackView(x))
        grad_y = np.from_dlpack(_DLPackView(grad if grad.is_contiguous() else grad.contiguous()))
        grad_x = np.empty_like(source)
        native.library().gelu_backward(source.ctypes.data, grad_y.ctypes.data, grad_x.ctypes.data, source.size)
        return paddle.Tensor(grad_x, place=grad.place, zero_copy=True)


@paddle.jit.not_to_static
def circulant_token_mixing(x, kernel_h, kernel_w):
    """CCS token mixing of ``x`` ``[B, H, W, C]`` with ``kernel_h`` ``[G, H]``, ``kernel_w`` ``[G, W]``.

    Channel ``c`` belongs to group ``c // (C // G)``. Returns a real tensor shaped like ``x``.
    """
    batch, height, width, channels = x.shape
    groups = kernel_h.shape[0]
    spectrum = paddle.fft.rfft2(x, axes=(1, 2))  # [B, H, W//2+1, C] complex
    response = paddle.fft.fft(kernel_h.astype(spectrum.dtype), axis=-1).unsqueeze(2) + paddle.fft.rfft(
        kernel_w, axis=-1
    ).unsqueeze(1)  # [G, H, W//2+1]
    response = response.transpose([1, 2, 0]).unsqueeze(-1)  # [H, W//2+1, G, 1]
    spectrum = spectrum.reshape([-1, height, width // 2 + 1, groups, channels // groups]) * response
    spectrum = spectrum.reshape([-1, height, width // 2 + 1, channels])
    return paddle.fft.irfft2(spectrum, s=(height, width), axes=(1, 2))


def circulant_matrix(kernel):
    """The explicit ``[..., N, N]`` circulant matrices ``C[i, m] = kernel[(i - m) mod N]`` (for tests)."""
    n = kernel.shape[-1]
    index = (paddle.arange(n).unsqueeze(1) - paddle.arange(n).unsqueeze(0)) % n
    return paddle.index_select(kernel, index.flatten(), axis=-1).reshape(list(kernel.shape[:-1]) + [n, n])
