"""HVP methods against Hessians built column by column and against independent finite differences."""
import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import pytest

from paddle_suite.hessian.hvp import HVPOperator, hvp_relative_error
from paddle_suite.hessian.layers import DoubleGradConv2D, make_double_differentiable
from paddle_suite.hessian.losses import MeanSquaredError, SoftmaxCrossEntropy

from .nets import (classification_batch, finite_difference_hessian, native_cross_entropy, tiny_cnn,
                   tiny_mlp)

CE = SoftmaxCrossEntropy()


def relative(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_cross_entropy_matches_paddle_value_and_gradient():
    logits = paddle.to_tensor(np.random.default_rng(0).standard_normal((6, 4)) * 3)
    logits.stop_gradient = False
    labels = np.array([0, 3, 1, 1, 2, 0])
    ours, = paddle.grad(CE(logits, labels), [logits])
    theirs, = paddle.grad(native_cross_entropy(logits, labels), [logits])
    assert abs(float(CE(logits, labels)) - float(native_cross_entropy(logits, labels))) < 1e-12
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-12)


def test_exact_mlp_hessian_matches_finite_differences():
    model = tiny_mlp()
    x, y = classification_batch([5], 7)
    exact = HVPOperator(model, CE, [(x, y)], method="exact", dtype="float64").dense()
    reference = finite_difference_hessian(model, native_cross_entropy, x, y)
    assert exact.shape == (75, 75)
    assert np.abs(exact - exact.T).max() < 1e-12
    assert relative(exact, reference) < 1e-7


def test_exact_cnn_via_unfold_layers_matches_native_finite_differences():
    model = tiny_cnn()
    x, y = classification_batch([1, 8, 8], 6)
    swapped = make_double_differentiable(model)
    np.testing.assert_allclose(swapped(paddle.to_tensor(x)).numpy(), model(paddle.to_tensor(x)).numpy(), atol=1e-5)
    exact = HVPOperator(swapped, CE, [(x, y)], method="exact", dtype="float64").dense()
    reference = finite_difference_hessian(model, native_cross_entropy, x, y)  # native conv2d + max-pool
    assert relative(exact, reference) < 1e-6


def test_fd64_method_matches_exact_hessian_on_native_cnn():
    model = tiny_cnn(seed=1)
    x, y = classification_batch([1, 8, 8], 6, seed=1)
    exact = HVPOperator(make_double_differentiable(model), CE, [(x, y)], dtype="float64").dense()
    fd64 = HVPOperator(model, native_cross_entropy, [(x, y)], method="fd64").dense()
    assert relative(fd64, exact) < 1e-6


def test_batches_are_weighted_by_size_and_caching_changes_nothing():
    model = tiny_mlp(seed=2)
    x, y = classification_batch([5], 10, seed=2)
    whole = HVPOperator(model, CE, [(x, y)], dtype="float64")
    split = [(x[:3], y[:3]), (x[3:], y[3:])]  # unequal sizes: a plain mean of batch Hessians would differ
    uncached = HVPOperator(model, CE, split, dtype="float64", cache_graphs=False)
    cached = HVPOperator(model, CE, split, dtype="float64", cache_graphs=True)
    v = np.random.default_rng(0).standard_normal(whole.dim)
    reference = whole.matvec(v)
    assert relative(uncached.matvec(v), reference) < 1e-12
    assert relative(cached.matvec(v), reference) < 1e-12
    assert relative(cached.matvec(v), reference) < 1e-12  # the kept graphs serve a second product
    assert cached.n_products == 2 and cached.n_samples == 10


def test_products_leave_paddles_kernel_flag_as_they_found_it():
    """Products run with strided-view kernels off (speed); the caller's setting must come back."""
    model = tiny_mlp(seed=2)
    x, y = classification_batch([5], 10, seed=2)
    op = HVPOperator(model, CE, [(x, y)])
    flag = "FLAGS_use_stride_kernel"
    before = paddle.get_flags([flag])[flag]
    for setting in (True, False):
        paddle.set_flags({flag: setting})
        op.matvec(np.ones(op.dim))
        assert paddle.get_flags([flag])[flag] is setting
    paddle.set_flags({flag: before})


def test_ggn_equals_hessian_for_a_linear_model_and_is_psd_otherwise():
    x, y = classification_batch([5], 8, seed=3)
    paddle.seed(3)
    linear = nn.Linear(5, 3)
    hessian = HVPOperator(linear, CE, [(x, y)], dtype="float64").dense()
    ggn = HVPOperator(linear, CE, [(x, y)], method="ggn", dtype="float64").dense()
    assert relative(ggn, hessian) < 1e-12  # cross-entropy of a linear model: H = J^T H_out J exactly
    mlp_ggn = HVPOperator(tiny_mlp(seed=3), CE, [(x, y)], method="ggn", dtype="float64").dense()
    eigenvalues = np.linalg.eigvalsh(mlp_ggn)
    assert eigenvalues.min() > -1e-10 * eigenvalues.max()


def test_mse_loss_exact_matches_finite_differences():
    model = tiny_mlp(seed=4, classes=2)
    x, _ = classification_batch([5], 6, seed=4)
    targets = np.random.default_rng(4).standard_normal((6, 2))
    exact = HVPOperator(model, MeanSquaredError(), [(x, targets)], dtype="float64").dense()
    reference = finite_difference_hessian(
        model, lambda out, t: F.mse_loss(out, paddle.to_tensor(t)), x, targets)
    assert relative(exact, reference) < 1e-7


def test_exact_refuses_layers_with_wrong_double_grad():
    x, y = classification_batch([1, 8, 8], 4)
    with pytest.raises(ValueError, match="make_double_differentiable"):
        HVPOperator(tiny_cnn(), CE, [(x, y)], method="exact")
    with pytest.raises(ValueError, match="fd64"):
        make_double_differentiable(nn.Sequential(nn.Linear(4, 4), nn.GELU()))
    with pytest.raises(ValueError, match="method="):
        HVPOperator(tiny_mlp(), CE, [(x, y)], method="lbfgs")


def test_relative_error_check_catches_functional_conv2d():
    """F.conv2d inside forward cannot be swapped; its double grad is wrong and the check says so."""

    class FunctionalConv(nn.Layer):
        def __init__(self):
            super().__init__()
            self.kernel = self.create_parameter([2, 1, 3, 3])
            self.head = nn.Linear(2 * 6 * 6, 3)

        def forward(self, x):
            return self.head(paddle.tanh(F.conv2d(x, self.kernel)).reshape([x.shape[0], -1]))

    paddle.seed(5)
    x, y = classification_batch([1, 8, 8], 4, seed=5)
    assert hvp_relative_error(FunctionalConv(), CE, [(x, y)], n_vectors=1) > 0.05
    assert hvp_relative_error(make_double_differentiable(tiny_cnn()), CE, [(x, y)], n_vectors=1) < 1e-6


@pytest.mark.parametrize("data_input", [True, False])  # the two weight-gradient paths
def test_double_grad_conv_hessian_for_strides_padding_dilation(data_input):
    paddle.seed(6)
    x, y = classification_batch([2, 9, 7], 4, seed=6)
    for kwargs in ({"stride": 2, "padding": 1}, {"dilation": 2}, {"stride": [2, 1], "padding": [0, 2]}):
        conv = nn.Conv2D(2, 2, [3, 2], **kwargs)
        out = conv(paddle.to_tensor(x))
        head = nn.Linear(int(np.prod(out.shape[1:])), 3)
        prefix = [] if data_input else [nn.Tanh()]  # a layer before the conv makes its input need a gradient
        model = nn.Sequential(*prefix, conv, nn.Tanh(), nn.Flatten(), head)
        swapped = make_double_differentiable(model)
        assert isinstance(swapped[len(prefix)], DoubleGradConv2D)
        np.testing.assert_allclose(swapped(paddle.to_tensor(x)).numpy(), model(paddle.to_tensor(x)).numpy(), atol=1e-5)
        if not data_input:  # first-order gradients of the input, weight and bias equal paddle's conv2d's
            leaf = paddle.to_tensor(x)
            leaf.stop_gradient = False
            mine = swapped[1]
            weights = paddle.to_tensor(np.random.default_rng(0).standard_normal(out.shape).astype("float32"))
            theirs = paddle.grad((conv(leaf) * weights).sum(), [leaf, conv.weight, conv.bias])
            ours = paddle.grad((mine(leaf) * weights).sum(), [leaf, mine.weight, mine.bias])
            for a, b in zip(ours, theirs):
                np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4)
        exact = HVPOperator(swapped, CE, [(x, y)], dtype="float64").dense()
        reference = finite_difference_hessian(model, native_cross_entropy, x, y)
        assert relative(exact, reference) < 1e-6, kwargs


def test_flat_vector_order_is_parameter_order():
    model = tiny_mlp()
    op = HVPOperator(model, CE, [classification_batch([5], 3)])
    names = [name for name, _ in model.named_parameters()]
    assert op.param_names == names
    flat = op.flat_params()
    assert np.array_equal(op.unflatten(flat)["0.weight"], model[0].weight.numpy().astype(np.float64))
    with pytest.raises(ValueError, match="shape"):
        op.matvec(np.zeros(op.dim + 1))


def test_odd_sizes_average_pooling_and_frozen_parameters():
    """Max-pool leaving a row uncovered, overlapping average pooling, and a frozen conv bias."""
    paddle.seed(9)
    model = nn.Sequential(nn.Conv2D(1, 2, 3), nn.Tanh(), nn.MaxPool2D(2), nn.AvgPool2D(2, stride=1),
                          nn.Flatten(), nn.Linear(8, 3))  # 9x9 -> 7x7 -> 3x3 -> 2x2
    x, y = classification_batch([1, 9, 9], 5, seed=9)
    swapped = make_double_differentiable(model)
    np.testing.assert_allclose(swapped(paddle.to_tensor(x)).numpy(), model(paddle.to_tensor(x)).numpy(), atol=1e-5)
    reference = finite_difference_hessian(model, native_cross_entropy, x, y)
    full = HVPOperator(swapped, CE, [(x, y)], dtype="float64").dense()
    assert relative(full, reference) < 1e-6
    swapped[0].bias.stop_gradient = True  # frozen: left out of the flat vector
    frozen = HVPOperator(swapped, CE, [(x, y)], dtype="float64")
    assert "0.bias" not in frozen.param_names and frozen.dim == full.shape[0] - 2
    keep = np.r_[0:18, 20:full.shape[0]]  # 0.weight is 18 entries, 0.bias the next 2
    assert relative(frozen.dense(), full[np.ix_(keep, keep)]) < 1e-12
