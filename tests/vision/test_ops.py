"""Spatial shift and CCS circulant mixing against naive references (values and gradients)."""
import numpy as np
import pytest

import paddle_suite  # noqa: F401
import paddle

from paddle_suite.vision import native
from paddle_suite.vision.ops import (
    S2MLP_DIRECTIONS,
    S2MLPV2_SECOND_DIRECTIONS,
    check_shift_args,
    circulant_matrix,
    circulant_token_mixing,
    gelu,
    layer_norm,
    paddle_spatial_shift,
    spatial_shift,
    weighted_part_sum,
)

STEP = {"right": (0, -1), "left": (0, 1), "down": (-1, 0), "up": (1, 0), "none": (0, 0)}


def naive_shift(x, directions, padding):
    """Per-pixel reference: out[b, i, j, c] = x[b, i + di, j + dj, c], border by ``padding``."""
    batch, height, width, channels = x.shape
    group = channels // len(directions)
    rows = []
    for i in range(height):
        row = []
        for j in range(width):
            pixel = []
            for k, direction in enumerate(directions):
                di, dj = STEP[direction]
                src_i, src_j = i + di, j + dj
                chans = slice(k * group, (k + 1) * group)
                if padding == "circular":
                    src_i, src_j = src_i % height, src_j % width
                elif padding == "replicate":
                    src_i, src_j = min(max(src_i, 0), height - 1), min(max(src_j, 0), width - 1)
                if 0 <= src_i < height and 0 <= src_j < width:
                    pixel.append(x[:, src_i, src_j, chans])
                else:
                    pixel.append(paddle.zeros([batch, group], dtype=x.dtype))
            row.append(paddle.concat(pixel, axis=-1))
        rows.append(paddle.stack(row, axis=1))
    return paddle.stack(rows, axis=1)


def _values_and_grad(fn, x_np, weight_np):
    x = paddle.to_tensor(x_np, stop_gradient=False)
    out = fn(x)
    (out * paddle.to_tensor(weight_np)).sum().backward()
    return out.numpy(), x.grad.numpy()


@pytest.mark.parametrize("padding", ["zero", "replicate", "circular"])
@pytest.mark.parametrize(
    "directions",
    [S2MLP_DIRECTIONS, S2MLPV2_SECOND_DIRECTIONS, S2MLP_DIRECTIONS + S2MLPV2_SECOND_DIRECTIONS + ("none",) * 4],
    ids=["s2mlp", "v2-second", "v2-fused"],
)
@pytest.mark.parametrize("shift", [spatial_shift, paddle_spatial_shift], ids=["auto", "paddle"])
def test_shift_matches_per_pixel_reference(shift, directions, padding):
    # "auto" runs the numpy kernel for zero padding on CPU dygraph, the paddle ops otherwise
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 5, 2 * len(directions))).astype("float32")
    weight = rng.standard_normal(x.shape).astype("float32")  # a generic upstream gradient
    out, grad = _values_and_grad(lambda t: shift(t, directions, padding), x, weight)
    ref_out, ref_grad = _values_and_grad(lambda t: naive_shift(t, directions, padding), x, weight)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(grad, ref_grad)


@pytest.mark.parametrize("shift", [spatial_shift, paddle_spatial_shift], ids=["auto", "paddle"])
def test_zero_shift_moves_content_and_zeroes_the_border(shift):
    x = paddle.arange(1, 1 + 3 * 3 * 4, dtype="float32").reshape([1, 3, 3, 4])
    out = shift(x).numpy()[0]
    xn = x.numpy()[0]
    np.testing.assert_array_equal(out[:, 1:, 0], xn[:, :-1, 0])  # right
    np.testing.assert_array_equal(out[:, 0, 0], 0)
    np.testing.assert_array_equal(out[:, :-1, 1], xn[:, 1:, 1])  # left
    np.testing.assert_array_equal(out[1:, :, 2], xn[:-1, :, 2])  # down
    np.testing.assert_array_equal(out[:-1, :, 3], xn[1:, :, 3])  # up
    np.testing.assert_array_equal(out[-1, :, 3], 0)


def test_shift_rejects_bad_settings():
    with pytest.raises(ValueError, match="divisible by 4"):
        check_shift_args(6, S2MLP_DIRECTIONS, "zero")
    with pytest.raises(ValueError, match="padding 'reflect'"):
        check_shift_args(8, S2MLP_DIRECTIONS, "reflect")
    with pytest.raises(ValueError, match="unknown direction 'diag'"):
        check_shift_args(8, ("diag",), "zero")


def explicit_circulant_mixing(x, kernel_h, kernel_w):
    """Dense reference: per-group H x H and W x W circulant matrices applied with einsum."""
    batch, height, width, channels = x.shape
    groups = kernel_h.shape[0]
    xg = x.reshape([batch, height, width, groups, channels // groups])
    mix_h = paddle.einsum("gim,bmjgc->bijgc", circulant_matrix(kernel_h), xg)
    mix_w = paddle.einsum("gjm,bimgc->bijgc", circulant_matrix(kernel_w), xg)
    return (mix_h + mix_w).reshape([batch, height, width, channels])


def test_circulant_matrix_layout():
    kernel = paddle.to_tensor([[1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(circulant_matrix(kernel).numpy()[0], [[1, 3, 2], [2, 1, 3], [3, 2, 1]])


@pytest.mark.parametrize("shape,groups", [((2, 5, 6, 8), 4), ((1, 7, 7, 6), 6), ((2, 4, 3, 4), 1)])
def test_ccs_fft_matches_explicit_circulant(shape, groups):
    rng = np.random.default_rng(1)
    x_np = rng.standard_normal(shape)
    kh_np = rng.standard_normal((groups, shape[1]))
    kw_np = rng.standard_normal((groups, shape[2]))
    weight = paddle.to_tensor(rng.standard_normal(shape))

    def run(fn):
        x, kh, kw = (paddle.to_tensor(a, stop_gradient=False) for a in (x_np, kh_np, kw_np))
        out = fn(x, kh, kw)
        (out * weight).sum().backward()
        return [out.numpy(), x.grad.numpy(), kh.grad.numpy(), kw.grad.numpy()]

    for got, want in zip(run(circulant_token_mixing), run(explicit_circulant_mixing)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_ccs_is_translation_equivariant():
    rng = np.random.default_rng(2)
    x = paddle.to_tensor(rng.standard_normal((2, 6, 5, 4)))
    kh, kw = paddle.to_tensor(rng.standard_normal((2, 6))), paddle.to_tensor(rng.standard_normal((2, 5)))
    out = circulant_token_mixing(x, kh, kw)
    for shift in [(1, 0), (0, 2), (3, 4)]:
        moved = circulant_token_mixing(paddle.roll(x, shift, axis=(1, 2)), kh, kw)
        np.testing.assert_allclose(moved.numpy(), paddle.roll(out, shift, axis=(1, 2)).numpy(), atol=1e-10)
    # and a channel-specific op: channels in different groups see different kernels
    single = paddle.zeros([1, 6, 5, 4], dtype="float64")
    single[0, 0, 0, :] = 1.0
    response = circulant_token_mixing(single, kh, kw).numpy()[0]
    assert not np.allclose(response[..., 0], response[..., 2])
    np.testing.assert_allclose(response[..., 0], response[..., 1], atol=1e-12)


def test_weighted_part_sum_matches_broadcast_reference():
    rng = np.random.default_rng(3)
    parts_np = rng.standard_normal((2, 6, 3, 5)).astype("float32")
    weights_np = rng.random((2, 3, 5)).astype("float32")
    upstream = paddle.to_tensor(rng.standard_normal((2, 6, 5)).astype("float32"))

    def run(fn):
        parts, weights = (paddle.to_tensor(a, stop_gradient=False) for a in (parts_np, weights_np))
        out = fn(parts, weights)
        (out * upstream).sum().backward()
        return out.numpy(), parts.grad.numpy(), weights.grad.numpy()

    reference = run(lambda p, w: (p * w.unsqueeze(1)).sum(axis=2))
    for got, want in zip(run(weighted_part_sum), reference):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_layer_norm_matches_paddle():
    import paddle.nn.functional as F

    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal(shape).astype("float32") for shape in ((3, 4, 5, 16), (16,), (16,))]
    upstream = paddle.to_tensor(rng.standard_normal((3, 4, 5, 16)).astype("float32"))

    def run(fn):
        x, weight, bias = (paddle.to_tensor(a, stop_gradient=False) for a in arrays)
        out = fn(x, weight, bias, 1e-6)
        (out * upstream).sum().backward()
        return out.numpy(), x.grad.numpy(), weight.grad.numpy(), bias.grad.numpy()

    reference = run(lambda x, w, b, eps: F.layer_norm(x, x.shape[-1:], w, b, eps))
    for got, want in zip(run(layer_norm), reference):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(native.library() is None, reason="native kernels unavailable here (see the log)")
def test_native_gelu_matches_paddle_values_and_gradients():
    import paddle.nn.functional as F

    rng = np.random.default_rng(5)
    # a size that is not a multiple of the vector width, values far into both tails, and exact zeros
    values = np.concatenate([rng.standard_normal(4099) * 3, [0.0, -0.0, 12.0, -12.0, 40.0, -40.0]])
    values = values.astype("float32").reshape(1, -1)
    upstream = paddle.to_tensor(rng.standard_normal(values.shape).astype("float32"))

    def run(fn):
        x = paddle.to_tensor(values, stop_gradient=False)
        out = fn(x)
        (out * upstream).sum().backward()
        return out.numpy(), x.grad.numpy()

    got, want = run(gelu), run(F.gelu)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-6)
    nan = run(lambda x: gelu(x * float("nan")))[0]
    assert np.isnan(nan).all()  # non-finite activations stay visible to the divergence guard


def test_gelu_falls_back_to_paddle_without_the_native_library(monkeypatch):
    import paddle.nn.functional as F

    monkeypatch.setenv("PADDLE_SUITE_NATIVE", "0")
    native.library.cache_clear()
    try:
        x = paddle.to_tensor(np.linspace(-4, 4, 33, dtype="float32"))
        np.testing.assert_array_equal(gelu(x).numpy(), F.gelu(x).numpy())
        assert native.library() is None
    finally:
        native.library.cache_clear()
