"""Tiny networks and an independent finite-difference Hessian for the tests."""
import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F


def tiny_mlp(seed=0, inputs=5, hidden=8, classes=3):
    paddle.seed(seed)
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, classes))


def tiny_cnn(seed=0):
    """conv (stride 2, padding 1) -> tanh -> conv (padding 1) -> relu -> max-pool -> flatten -> linear: 85 parameters."""
    paddle.seed(seed)
    return nn.Sequential(nn.Conv2D(1, 2, 3, stride=2, padding=1), nn.Tanh(), nn.Conv2D(2, 2, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2D(2), nn.Flatten(), nn.Linear(8, 3))


def classification_batch(shape, n, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n,) + tuple(shape)).astype("float32"), rng.integers(0, classes, n)


def native_cross_entropy(logits, labels):
    return F.cross_entropy(logits, paddle.to_tensor(labels).reshape([-1, 1]))


def finite_difference_hessian(model, loss_fn, inputs, labels, step=1e-5):
    """Central differences of paddle's first-order gradients on a float64 copy, column by column.

    Independent of paddle_suite.hessian: only first-order autograd (exact for every op) and numpy.
    """
    import copy

    model = copy.deepcopy(model)
    model.to(dtype="float64")
    model.eval()
    params = [p for p in model.parameters() if not p.stop_gradient]
    theta = np.concatenate([p.numpy().ravel() for p in params])
    sizes = np.cumsum([0] + [int(np.prod(p.shape)) for p in params])
    x = paddle.to_tensor(np.asarray(inputs, dtype="float64"))

    def gradient(vector):
        for p, a, b in zip(params, sizes[:-1], sizes[1:]):
            p.set_value(vector[a:b].reshape(p.shape))
        grads = paddle.grad(loss_fn(model(x), labels), params)
        return np.concatenate([g.numpy().ravel() for g in grads])

    eye = np.eye(theta.size)
    columns = [(gradient(theta + step * e) - gradient(theta - step * e)) / (2 * step) for e in eye]
    return np.stack(columns, axis=1)
