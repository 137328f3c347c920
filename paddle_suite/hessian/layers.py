"""Layers with exact second derivatives on paddle 2.6.2, to swap in for ones whose double grad is wrong or missing.

The trick (the same as ``losses.SoftmaxCrossEntropy``): a ``paddle.autograd.PyLayer`` whose
forward is paddle's own kernel and whose backward is written with ops that have correct
*first-order* gradients. An HVP differentiates the recorded backward once more, which then only
uses first-order gradient kernels; paddle's broken or missing double-grad kernels are never called.

* ``nn.Conv2D`` -> ``DoubleGradConv2D``: paddle's conv2d second-order gradients are silently wrong
  (0.4-1.0 relative error, PLATFORM.md). Backward: ``conv2d_transpose`` for the input gradient; for
  the weight gradient, a matmul of the upstream gradient with the im2col of the input when the input
  needs no gradient (the data at the first layer; the im2col is computed once in the forward), else
  a conv2d correlating input and upstream gradient. Per LeNet product (batch 128, one thread, the
  products run without strided-view kernels: ``hvp.py``): 35 ms; 375 ms with the slice-based im2col
  we tried first; with views on, 63 ms, and 71 ms with the weight gradient as a PyLayer of its own
  (im2col + matmul forward, conv backward); without views, a weight-gradient PyLayer with conv
  forward and conv / conv-transpose backward gained nothing (38.7 vs 38.4 ms). An im2col with
  ``F.unfold`` on a parameter-dependent input needs ``unfold_grad``'s gradient (13 ms a call
  without views, 80 ms with). A batched per-sample matmul for the first layer's weight gradient
  (no transposes) was slower than the one large matmul (77 vs 61 ms a product, views on).
* ``nn.MaxPool2D`` (stride = kernel) -> ``DoubleGradMaxPool2D``: no double grad in paddle.
  Backward: upstream gradient spread over each window (two matmuls with 0/1 matrices; an
  ``expand`` cost 3 ms more a product) times the argmax mask.
* ``nn.AvgPool2D`` -> ``UnfoldAvgPool2D``: the mean of windows built from slices/reshapes.
* ``nn.Flatten`` -> ``ReshapeFlatten``: paddle's flatten op has no double grad; ``reshape`` does.

``make_double_differentiable(model)`` returns a deep copy of ``model`` with those layers swapped
(the original is untouched; parameter names and order unchanged) and refuses models holding layers
that have no exact form here (``DOUBLE_GRAD_UNSUPPORTED``); for those use
``HVPOperator(method="fd64")``. Only sub-layers can be swapped: a model calling ``F.conv2d`` or
``F.max_pool2d`` in its ``forward`` cannot be fixed this way (``hvp.hvp_relative_error`` detects it).
The swapped layers answer gradients with respect to all their inputs at once (``loss.backward()``,
or ``paddle.grad`` over all parameters, as ``HVPOperator`` does): a ``paddle.grad`` asking for a subset
of the leaves raises inside paddle's PyLayer ("should return None at 1 position").
Supported settings: NCHW, zero padding given as numbers, groups = 1 for convolutions; pooling
without padding or ``ceil_mode``. Anything else raises naming the layer and the setting.
"""
import copy

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.autograd import PyLayer

# Layers with no (or a wrong) double grad in paddle 2.6.2 and no replacement here.
DOUBLE_GRAD_UNSUPPORTED = (
    nn.GELU, nn.Swish, nn.Mish, nn.Softmax, nn.LogSoftmax, nn.LayerNorm, nn.CrossEntropyLoss,
    nn.Conv1D, nn.Conv3D, nn.Conv1DTranspose, nn.Conv2DTranspose, nn.Conv3DTranspose,
    nn.MaxPool1D, nn.MaxPool3D, nn.AdaptiveMaxPool2D, nn.Upsample,
)


def _pair(value, what, layer_name):
    if isinstance(value, int):
        return [value, value]
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return list(value)
    raise ValueError(f"{layer_name}: {what}={value!r} is not supported for exact Hessians "
                     f"(need an int or two ints); use HVPOperator(method='fd64')")


def sliding_windows(x, kernel_size, stride, padding=(0, 0), dilation=(1, 1)):
    """``[N, C, kh*kw, Ho, Wo]`` windows of ``x``, built only from ops with correct double grads.

    ``F.unfold``, strided slices, ``stack`` and ``gather`` have no double grad in paddle 2.6.2;
    slice, pad, reshape, transpose and concat do (each checked against finite differences). So:

    * input that needs no gradient (the data, at the first layer): ``F.unfold`` (only its first
      derivative is ever taken, and with respect to nothing upstream);
    * non-overlapping windows (stride = kernel, no dilation, the usual pooling): one
      reshape + transpose, no slices;
    * otherwise one plain slice per kernel offset (the Python loop runs over the ``kh * kw``
      offsets, not over data); a stride ``s`` is taken by slicing ``s * Ho`` rows, reshaping to
      ``[Ho, s]`` and keeping column 0.
    """
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    out_h = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if x.stop_gradient:
        cols = F.unfold(x, [kh, kw], [sh, sw], [ph, pw], [dh, dw])
        return cols.reshape([n, c, kh * kw, out_h, out_w]), (out_h, out_w)
    if ph or pw:
        x = F.pad(x, [pw, pw, ph, ph])
    if [sh, sw] == [kh, kw] and [dh, dw] == [1, 1]:
        if x.shape[2] != out_h * kh or x.shape[3] != out_w * kw:
            x = x[:, :, :out_h * kh, :out_w * kw]
        x = x.reshape([n, c, out_h, kh, out_w, kw]).transpose([0, 1, 3, 5, 2, 4])
        return x.reshape([n, c, kh * kw, out_h, out_w]), (out_h, out_w)
    # pad to hold the furthest slice start + s * Ho (rows beyond the last window are dropped by the stride)
    extra_h = max(0, dh * (kh - 1) + sh * out_h - x.shape[2])
    extra_w = max(0, dw * (kw - 1) + sw * out_w - x.shape[3])
    if extra_h or extra_w:
        x = F.pad(x, [0, extra_w, 0, extra_h])
    windows = []
    for i in range(kh):
        for j in range(kw):
            part = x[:, :, i * dh:i * dh + sh * out_h, j * dw:j * dw + sw * out_w]
            if sh > 1 or sw > 1:
                part = part.reshape([n, c, out_h, sh, out_w, sw])[:, :, :, 0:1, :, 0:1]
            windows.append(part.reshape([n, c, 1, out_h, out_w]))
    return paddle.concat(windows, axis=2), (out_h, out_w)


class _Conv2DFunction(PyLayer):
    """conv2d whose backward is written with first-order-differentiable ops (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):
        out = F.conv2d(x, weight, bias, stride=stride, padding=padding, dilation=dilation)
        kernel = weight.shape[2:]
        # data input (no gradient needed): keep its im2col, the weight gradient is then one matmul
        cols = None
        if x.stop_gradient:
            cols = F.unfold(x, kernel, stride, padding, dilation)  # [N, Cin*kh*kw, L]
            cols = cols.transpose([0, 2, 1]).reshape([-1, cols.shape[1]])  # [N*L, K]
        ctx.save_for_backward(x, weight, cols)
        # paddle requires None for inputs that need no gradient (frozen parameters, data)
        ctx.config = (stride, padding, dilation, bias is not None)
        ctx.needs = (not x.stop_gradient, not weight.stop_gradient, bias is not None and not bias.stop_gradient)
        return out

    @staticmethod
    def backward(ctx, upstream):
        x, weight, cols = ctx.saved_tensor()
        stride, padding, dilation, has_bias = ctx.config
        c_out, kh, kw = weight.shape[0], weight.shape[2], weight.shape[3]
        grad_x = grad_w = grad_b = None
        if ctx.needs[0]:
            grad_x = F.conv2d_transpose(upstream, weight, stride=stride, padding=padding, dilation=dilation,
                                        output_size=list(x.shape[2:]))
        if not ctx.needs[1]:
            pass
        elif cols is not None:
            rows = upstream.reshape([upstream.shape[0], c_out, -1]).transpose([1, 0, 2]).reshape([c_out, -1])
            grad_w = paddle.matmul(rows, cols).reshape(weight.shape)
        else:  # correlate the input with the upstream gradient: a conv with roles of stride and dilation swapped
            grad_w = F.conv2d(x.transpose([1, 0, 2, 3]), upstream.transpose([1, 0, 2, 3]),
                              stride=dilation, padding=padding, dilation=stride)
            grad_w = grad_w[:, :, :kh, :kw].transpose([1, 0, 2, 3])
        if ctx.needs[2]:
            grad_b = upstream.sum(axis=[0, 2, 3])
        return (grad_x, grad_w, grad_b) if has_bias else (grad_x, grad_w)


class DoubleGradConv2D(nn.Layer):
    """``nn.Conv2D`` with exact second derivatives, sharing the conv's ``weight`` and ``bias``.

    Forward is paddle's conv2d; backward is ``conv2d_transpose`` (input gradient) and a matmul
    with the input's im2col or a conv2d (weight gradient), so differentiating it again uses only
    first-order gradient kernels, which are right.
    """

    def __init__(self, conv, name="Conv2D"):
        super().__init__()
        if conv._groups != 1 or conv._data_format != "NCHW" or conv._padding_mode != "zeros":
            raise ValueError(f"{name}: groups={conv._groups}, data_format={conv._data_format}, "
                             f"padding_mode={conv._padding_mode} unsupported for exact Hessians "
                             "(need 1, NCHW, zeros); use HVPOperator(method='fd64')")
        self.stride = _pair(conv._stride, "stride", name)
        self.dilation = _pair(conv._dilation, "dilation", name)
        self.padding = _pair(conv._padding, "padding", name)
        self.weight = conv.weight
        self.bias = conv.bias

    def forward(self, x):
        return _Conv2DFunction.apply(x, self.weight, self.bias, self.stride, self.padding, self.dilation)


def _spread_matrix(out_size, kernel, size, dtype):
    """``[size, out_size]`` 0/1 matrix copying each pooled row (column) to the ``kernel`` rows of its window."""
    spread = np.zeros((size, out_size))
    rows = np.arange(out_size * kernel)
    spread[rows, rows // kernel] = 1.0
    return paddle.to_tensor(spread).astype(dtype)


class _MaxPool2DFunction(PyLayer):
    """Non-overlapping max-pool whose backward is (nearest upsampling of the gradient) x (argmax mask).

    The upsampling is two matmuls with 0/1 matrices (rows, then columns) rather than an
    ``expand``: an HVP differentiates it once more, and matmul's gradient (a matmul) is about 3x
    cheaper on the CPU than ``expand``'s (a reduction); rows and columns no window covers get zero
    rows in the matrices, hence no gradient.
    """

    @staticmethod
    def forward(ctx, x, kernel):
        n, c, h, w = x.shape
        kh, kw = kernel
        out_h, out_w = h // kh, w // kw
        windows = x[:, :, :out_h * kh, :out_w * kw].reshape([n, c, out_h, kh, out_w, kw])
        windows = windows.transpose([0, 1, 2, 4, 3, 5]).reshape([n, c, out_h, out_w, kh * kw])
        mask = F.one_hot(windows.argmax(axis=-1), kh * kw).astype(x.dtype)
        mask = mask.reshape([n, c, out_h, out_w, kh, kw]).transpose([0, 1, 2, 4, 3, 5])
        mask = mask.reshape([n, c, out_h * kh, out_w * kw])
        if [out_h * kh, out_w * kw] != [h, w]:  # rows/columns no window covers get no gradient
            mask = F.pad(mask, [0, w - out_w * kw, 0, h - out_h * kh])
        ctx.save_for_backward(mask, _spread_matrix(out_h, kh, h, x.dtype), _spread_matrix(out_w, kw, w, x.dtype).T)
        return F.max_pool2d(x, kernel, kernel)

    @staticmethod
    def backward(ctx, upstream):
        mask, spread_rows, spread_columns = ctx.saved_tensor()
        return paddle.matmul(spread_rows, paddle.matmul(upstream, spread_columns)) * mask


class DoubleGradMaxPool2D(nn.Layer):
    """``nn.MaxPool2D`` with stride = kernel (the usual pooling) and exact second derivatives.

    Max-pooling is piecewise linear, so where each window's maximum is unique its second
    derivative is zero and its gradient routes the upstream gradient to the argmax; the backward
    does exactly that with an expand and a multiply (double grads correct).
    """

    def __init__(self, pool, name="MaxPool2D"):
        super().__init__()
        self.kernel_size = _pair(pool.ksize, "kernel_size", name)
        stride = _pair(pool.stride if pool.stride is not None else pool.ksize, "stride", name)
        if stride != self.kernel_size or pool.padding not in (0, [0, 0], (0, 0)) or pool.ceil_mode \
                or pool.data_format != "NCHW":
            raise ValueError(f"{name}: stride={stride}, kernel_size={self.kernel_size}, padding={pool.padding}, "
                             f"ceil_mode={pool.ceil_mode}, data_format={pool.data_format} unsupported for exact "
                             "Hessians (need stride = kernel, padding 0, ceil_mode False, NCHW); "
                             "use HVPOperator(method='fd64')")

    def forward(self, x):
        return _MaxPool2DFunction.apply(x, self.kernel_size)


class UnfoldAvgPool2D(nn.Layer):
    """``nn.AvgPool2D`` (no padding) as the mean of the windows."""

    def __init__(self, pool, name="AvgPool2D"):
        super().__init__()
        if pool.padding not in (0, [0, 0], (0, 0)) or pool.ceil_mode or pool.data_format != "NCHW":
            raise ValueError(f"{name}: padding={pool.padding}, ceil_mode={pool.ceil_mode}, "
                             f"data_format={pool.data_format} unsupported for exact Hessians "
                             "(need 0, False, NCHW); use HVPOperator(method='fd64')")
        self.kernel_size = _pair(pool.ksize, "kernel_size", name)
        self.stride = _pair(pool.stride if pool.stride is not None else pool.ksize, "stride", name)

    def forward(self, x):
        windows, _ = sliding_windows(x, self.kernel_size, self.stride)
        return windows.mean(axis=2)


class ReshapeFlatten(nn.Layer):
    """``nn.Flatten`` as a ``reshape`` (the flatten op has no double grad)."""

    def __init__(self, flatten, name="Flatten"):
        super().__init__()
        self.start_axis, self.stop_axis = flatten.start_axis, flatten.stop_axis

    def forward(self, x):
        rank = len(x.shape)
        start, stop = self.start_axis % rank, self.stop_axis % rank
        merged = int(np.prod(x.shape[start:stop + 1]))
        return x.reshape(list(x.shape[:start]) + [merged] + list(x.shape[stop + 1:]))


_REPLACEMENTS = ((nn.Conv2D, DoubleGradConv2D), (nn.MaxPool2D, DoubleGradMaxPool2D), (nn.AvgPool2D, UnfoldAvgPool2D),
                 (nn.Flatten, ReshapeFlatten))


def unsupported_layers(model):
    """Names and types of sub-layers with no exact twice-differentiable form (after swapping)."""
    return [(name or type(model).__name__, type(layer).__name__)
            for name, layer in model.named_sublayers(include_self=True)
            if isinstance(layer, DOUBLE_GRAD_UNSUPPORTED) or type(layer) in tuple(original for original, _ in _REPLACEMENTS)]


def _swap_in_place(layer, prefix=""):
    for child_name, child in list(layer.named_children()):
        full_name = f"{prefix}{child_name}"
        for original, replacement in _REPLACEMENTS:
            if type(child) is original:
                setattr(layer, child_name, replacement(child, name=full_name))
                break
        else:
            _swap_in_place(child, full_name + ".")


def make_double_differentiable(model):
    """Deep copy of ``model`` with Conv2D / MaxPool2D / AvgPool2D / Flatten swapped for their twice-differentiable forms.

    The copy has the same parameter names and order as ``model`` (the swapped layers hold the
    copied conv parameters). Raises ``ValueError`` naming every layer that stays unsupported.
    """
    swapped = copy.deepcopy(model)
    _swap_in_place(swapped)
    bad = unsupported_layers(swapped)
    if bad:
        listed = ", ".join(f"{name} ({kind})" for name, kind in bad)
        raise ValueError(f"no exact double grad in paddle 2.6.2 for: {listed}. "
                         "Use HVPOperator(method='fd64') for this model.")
    return swapped
