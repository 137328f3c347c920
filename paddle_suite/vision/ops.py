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
does) or ``"circular"`` (wrap-around, i.e. ``paddle.roll``). Implementation: one ``F.pad`` of the
whole tensor by one pixel, one slice per run of consecutive groups with the same direction, one
concat: whole-tensor ops only, exact gradients (pad/slice/concat), no per-pixel Python loops.

``circulant_token_mixing`` (CCS token mixing): the channels are split into ``G`` groups; group
``g`` is mixed along the height axis by the circulant matrix ``C(k_h[g])`` (``H x H``,
``C[i, m] = k_h[g, (i - m) mod H]``) and along the width axis by ``C(k_w[g])`` (``W x W``), and
the two results are added::

    out[b, :, :, c] = C(k_h[g]) @ x[b, :, :, c]  +  x[b, :, :, c] @ C(k_w[g])^T

i.e. a 2-D circular convolution with the cross-shaped kernel ``k_h[g] (x) delta + delta (x)
k_w[g]``. It is translation-equivariant (for circular shifts) and needs ``H + W`` parameters per
group. Both axes run in one FFT pair: ``irfft2(rfft2(x) * (fft(k_h)[:, None] + rfft(k_w)[None, :]))``,
``O(HW log(HW))`` per channel instead of ``O(HW (H + W))`` for the explicit matrices.
"""
import paddle
import paddle.nn.functional as F

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


@paddle.jit.not_to_static  # plain Python over static settings: trace as is
def spatial_shift(x, directions=S2MLP_DIRECTIONS, padding="zero"):
    """Shift equal channel groups of ``x`` (``[B, H, W, C]``) by one pixel each; see the module doc."""
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    group = channels // len(directions)
    padded = F.pad(x, [1, 1, 1, 1], mode=_PAD_MODES[padding], data_format="NHWC")
    pieces = []
    start = 0
    for k, direction in enumerate(directions):
        # one slice per run of equal directions (S²-MLPv2's identity third is a single slice)
        if k + 1 < len(directions) and directions[k + 1] == direction:
            continue
        stop = (k + 1) * group
        row, col = _SOURCE[direction]
        pieces.append(padded[:, row : row + height, col : col + width, start:stop])
        start = stop
    return pieces[0] if len(pieces) == 1 else paddle.concat(pieces, axis=-1)


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
