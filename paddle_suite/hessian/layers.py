"""Twice-differentiable replacements for layers whose double grad is wrong or missing in paddle 2.6.2.

* ``nn.Conv2D``: paddle's conv2d second-order gradients are silently wrong (0.4-1.0 relative error,
  PLATFORM.md). ``UnfoldConv2D`` computes the same convolution as im2col + a 2-D ``matmul``. The
  im2col is ``sliding_windows`` (slices, pads, reshapes, concat), not ``F.unfold``: unfold has no
  double grad once its input depends on the parameters (any layer after the first). It shares the original layer's ``weight`` and ``bias`` parameters, so
  the parameter order and names do not change.
* ``nn.MaxPool2D``: no double grad. ``UnfoldMaxPool2D`` picks each window's maximum with a one-hot
  mask of the argmax (a constant) times the windows. Max pooling is piecewise linear, so
  this has the same value, gradient and (zero) second derivative wherever the maximum is unique.
* ``nn.Flatten``: paddle's flatten op has no double grad; ``ReshapeFlatten`` does the same with ``reshape``.
* ``nn.AvgPool2D``: written as the mean of the windows, so no separate double grad is relied on.

``make_double_differentiable(model)`` returns a deep copy of ``model`` with those layers swapped
(the original is untouched) and refuses models holding layers that have no exact twice-differentiable
form here (``DOUBLE_GRAD_UNSUPPORTED``); for those use ``HVPOperator(method="fd64")``. Only
sub-layers can be swapped: a model calling ``F.conv2d`` or ``F.max_pool2d`` in its ``forward``
cannot be fixed this way (check it with ``hvp.hvp_relative_error``).
Supported settings: NCHW, zero padding given as numbers, groups = 1 for convolutions, no padding
and ``ceil_mode=False`` for pooling; anything else raises naming the layer and setting.
"""
import copy

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

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
    """``[N, C, kh*kw, Ho, Wo]`` windows of ``x`` built from plain slices, pads and reshapes only.

    ``F.unfold``, strided slices, ``stack`` and ``gather`` have no double grad in paddle 2.6.2;
    slice, pad, reshape and concat do (each checked against finite differences). A stride ``s``
    is taken by slicing ``s * Ho`` rows, reshaping to ``[Ho, s]`` and keeping column 0.
    The Python loop runs over the ``kh * kw`` kernel offsets, not over data.
    """
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    out_h = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    # pad to hold the furthest slice start + s * Ho (rows beyond the last window are dropped by the stride)
    extra_h = max(0, dh * (kh - 1) + sh * out_h - (h + 2 * ph))
    extra_w = max(0, dw * (kw - 1) + sw * out_w - (w + 2 * pw))
    if ph or pw or extra_h or extra_w:
        x = F.pad(x, [pw, pw + extra_w, ph, ph + extra_h])
    windows = []
    for i in range(kh):
        for j in range(kw):
            part = x[:, :, i * dh:i * dh + sh * out_h, j * dw:j * dw + sw * out_w]
            if sh > 1 or sw > 1:
                part = part.reshape([n, c, out_h, sh, out_w, sw])[:, :, :, 0:1, :, 0:1]
            windows.append(part.reshape([n, c, 1, out_h, out_w]))
    return paddle.concat(windows, axis=2), (out_h, out_w)


class UnfoldConv2D(nn.Layer):
    """``nn.Conv2D`` as sliding windows + one 2-D ``matmul`` (exact double grad), sharing the conv's parameters.

    The product is deliberately 2-D: paddle 2.6.2's broadcasting ``matmul`` (2-D weight times 4-D
    windows) gives wrong second derivatives, like conv2d.
    """

    def __init__(self, conv, name="Conv2D"):
        super().__init__()
        if conv._groups != 1 or conv._data_format != "NCHW" or conv._padding_mode != "zeros":
            raise ValueError(f"{name}: groups={conv._groups}, data_format={conv._data_format}, "
                             f"padding_mode={conv._padding_mode} unsupported for exact Hessians "
                             "(need 1, NCHW, zeros); use HVPOperator(method='fd64')")
        self.kernel_size = list(conv._kernel_size)
        self.stride = _pair(conv._stride, "stride", name)
        self.dilation = _pair(conv._dilation, "dilation", name)
        self.padding = _pair(conv._padding, "padding", name)
        self.weight = conv.weight
        self.bias = conv.bias

    def forward(self, x):
        n = x.shape[0]
        windows, (out_h, out_w) = sliding_windows(x, self.kernel_size, self.stride, self.padding, self.dilation)
        k = windows.shape[1] * windows.shape[2]  # Cin * kh * kw, in the weight's (Cin, kh, kw) order
        rows = windows.reshape([n, k, out_h * out_w]).transpose([0, 2, 1]).reshape([-1, k])
        out = paddle.matmul(rows, self.weight.reshape([self.weight.shape[0], k]), transpose_y=True)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape([n, out_h, out_w, -1]).transpose([0, 3, 1, 2])


class _UnfoldPool2D(nn.Layer):
    def __init__(self, pool, name):
        super().__init__()
        if pool.padding not in (0, [0, 0], (0, 0)) or pool.ceil_mode or pool.data_format != "NCHW":
            raise ValueError(f"{name}: padding={pool.padding}, ceil_mode={pool.ceil_mode}, "
                             f"data_format={pool.data_format} unsupported for exact Hessians "
                             "(need 0, False, NCHW); use HVPOperator(method='fd64')")
        self.kernel_size = _pair(pool.ksize, "kernel_size", name)
        self.stride = _pair(pool.stride if pool.stride is not None else pool.ksize, "stride", name)


class UnfoldMaxPool2D(_UnfoldPool2D):
    """``nn.MaxPool2D`` as (windows) x (one-hot argmax mask): exact where the max is unique."""

    def forward(self, x):
        windows, _ = sliding_windows(x, self.kernel_size, self.stride)  # [N, C, kk, Ho, Wo]
        mask = F.one_hot(windows.detach().argmax(axis=2), windows.shape[2]).astype(windows.dtype)
        return (windows * mask.transpose([0, 1, 4, 2, 3])).sum(axis=2)


class UnfoldAvgPool2D(_UnfoldPool2D):
    """``nn.AvgPool2D`` (no padding) as the mean of the windows."""

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


_REPLACEMENTS = ((nn.Conv2D, UnfoldConv2D), (nn.MaxPool2D, UnfoldMaxPool2D), (nn.AvgPool2D, UnfoldAvgPool2D),
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
    """Deep copy of ``model`` with Conv2D / MaxPool2D / AvgPool2D / Flatten swapped for their unfold forms.

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
