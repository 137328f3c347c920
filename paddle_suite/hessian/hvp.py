"""Hessian-vector (and Gauss-Newton-vector) products of a ``paddle.nn.Layer``'s loss, as a numpy operator.

``HVPOperator(model, loss_fn, batches, method=...)`` is the linear map ``v -> H v`` on the flat
parameter vector, with ``matvec(v: float64 [P]) -> float64 [P]``, ``dim`` (= P) and
``n_products`` (full-operator products so far). Everything downstream (Lanczos, trace, density)
sees only this map.

The Hessian is that of the data loss ``L = sum_b n_b L_b / sum_b n_b`` over the given batches,
``L_b = loss_fn(model(inputs_b), labels_b)`` a batch *mean* and ``n_b`` the batch size, so one
batch gives the mini-batch Hessian and all batches of a data set its full-data Hessian. The model
is put in ``eval()`` mode (dropout off, batch norm on running statistics: the Hessian of one fixed
function, as PyHessian does).

Flattening order (fixed): the trainable parameters (``stop_gradient=False``) in
``model.parameters()`` order, each flattened row-major (C order), concatenated. ``param_names``
lists them; ``unflatten`` cuts a vector back into named arrays.

Methods:

* ``"exact"``: double backprop, ``H v = d/dtheta <grad L, v>``. Needs every op of the model and
  loss to have a correct double grad in paddle 2.6.2: pass a model through
  ``layers.make_double_differentiable`` (conv2d, max-pool, flatten swapped for exact forms) and use
  ``losses.SoftmaxCrossEntropy`` rather than ``F.cross_entropy``. Refuses models holding known-bad
  layers. ``dtype="float64"`` runs it on a float64 copy of the model.
* ``"ggn"``: Gauss-Newton ``J^T H_out J v`` (equal to the Fisher for softmax cross-entropy). ``J v``
  by the double-backward trick (differentiate ``J^T u`` with respect to a dummy ``u``),
  ``H_out`` in closed form (``loss_fn.output_hvp``), ``J^T`` by one backward. Positive semidefinite.
* ``"fd64"``: central differences of gradients in float64 on a float64 copy of the model,
  ``H v ~ (g(theta + h v) - g(theta - h v)) / (2 h)``. Needs first-order gradients only, so it works
  for any model (native conv2d, max-pool, ``F.cross_entropy``). Step: ``h = eps^(1/3) (1 +
  ||theta||_inf) / ||v||_2`` with ``eps`` float64's machine epsilon; this balances the truncation
  error ``O(h^2 ||d^3 L||)`` against the rounding error ``O(eps ||g|| / h)`` (Nocedal & Wright, 8.1),
  giving about ``eps^(2/3) ~ 4e-11`` relative error on a well-scaled problem; the tests check it
  against exact Hessians. Costs two gradients per batch and product.

Speed: products run with paddle's strided-view kernels off (``FLAGS_use_stride_kernel``, restored
after each product). With them on, ``transpose`` / ``reshape`` return views and the first-order
gradient nodes that an HVP walks copy them back element by element: a LeNet product at batch 128
took 61 ms with views, 38 ms without (one thread, same values; 35 ms with the matmul max-pool
of ``layers.py``).

Graph reuse: for ``exact`` and ``ggn`` the per-batch graphs (forward + first backward) can be kept
and reused by every product (``cache_graphs``; default on for a single batch, as PyHessian does,
off for several batches to bound memory).
"""
import contextlib
import copy

import numpy as np
import paddle

from . import layers as _layers

METHODS = ("exact", "ggn", "fd64")


def _as_tensor(value, dtype=None):
    tensor = value if isinstance(value, paddle.Tensor) else paddle.to_tensor(np.asarray(value))
    if dtype is not None and tensor.dtype in (paddle.float16, paddle.float32, paddle.float64):
        tensor = tensor.astype(dtype)
    return tensor


def _batch_size(labels):
    return int(labels.shape[0])


@contextlib.contextmanager
def _contiguous_kernels():
    """Strided-view kernels off for the duration (see "Speed" in the module docstring)."""
    flag = "FLAGS_use_stride_kernel"
    previous = paddle.get_flags([flag])[flag]
    paddle.set_flags({flag: False})
    try:
        yield
    finally:
        paddle.set_flags({flag: previous})


class HVPOperator:
    """``v -> H v`` for the loss of ``model`` on ``batches`` (see the module docstring).

    Args:
        model: a ``paddle.nn.Layer``.
        loss_fn: ``loss_fn(outputs, labels) -> scalar batch mean``; for ``ggn`` it must have
            ``output_hvp`` (``losses.SoftmaxCrossEntropy``, ``losses.MeanSquaredError``).
        batches: a sequence (or re-iterable) of ``(inputs, labels)``, numpy arrays or tensors.
        method: ``"exact"``, ``"ggn"`` or ``"fd64"``.
        dtype: ``None`` keeps the model's dtype; ``"float64"`` works on a float64 copy
            (``fd64`` always does).
        cache_graphs: keep per-batch graphs between products (``None``: only for one batch).
    """

    def __init__(self, model, loss_fn, batches, method="exact", dtype=None, cache_graphs=None):
        if method not in METHODS:
            raise ValueError(f"HVPOperator: method={method!r}; choose one of {', '.join(METHODS)}")
        if method in ("exact", "ggn"):
            bad = _layers.unsupported_layers(model)
            if bad:
                listed = ", ".join(f"{name} ({kind})" for name, kind in bad)
                raise ValueError(
                    f"HVPOperator(method={method!r}): no correct double grad in paddle 2.6.2 for {listed}. "
                    "Pass the model through paddle_suite.hessian.layers.make_double_differentiable, "
                    "or use method='fd64'.")
        if method == "ggn" and not hasattr(loss_fn, "output_hvp"):
            raise ValueError("HVPOperator(method='ggn') needs a loss with output_hvp(outputs, labels, w): "
                             "use losses.SoftmaxCrossEntropy or losses.MeanSquaredError")
        self.method = method
        self.loss_fn = loss_fn
        if method == "fd64":
            dtype = "float64"
        if dtype is not None:
            model = copy.deepcopy(model)
            model.to(dtype=dtype)
        self.model = model
        self.model.eval()
        self.params, self.param_names = [], []
        for name, param in model.named_parameters():
            if not param.stop_gradient:
                self.params.append(param)
                self.param_names.append(name)
        if not self.params:
            raise ValueError("HVPOperator: the model has no trainable parameters")
        self.shapes = [list(p.shape) for p in self.params]
        self.sizes = [int(np.prod(s)) if s else 1 for s in self.shapes]
        self.offsets = np.cumsum([0] + self.sizes)
        self.dim = int(self.offsets[-1])
        self.dtype = self.params[0].dtype

        if iter(batches) is batches:  # a one-shot iterator: keep it, products pass over it many times
            batches = list(batches)
        self.batches = batches
        first = next(iter(batches), None)
        if first is None:
            raise ValueError("HVPOperator: no batches given")
        self.cache_graphs = (len(batches) == 1 if hasattr(batches, "__len__") else False) \
            if cache_graphs is None else bool(cache_graphs)
        self._graphs = None
        self.n_products = 0
        self.n_samples = None

    # ----- flat vector <-> parameter tensors
    def flat_params(self):
        """The current parameters as one float64 vector in the documented order."""
        return np.concatenate([p.numpy().astype(np.float64).ravel() for p in self.params])

    def unflatten(self, vector):
        """Named arrays (parameter shapes) from a flat vector."""
        vector = np.asarray(vector)
        return {name: vector[a:b].reshape(shape) for name, a, b, shape
                in zip(self.param_names, self.offsets[:-1], self.offsets[1:], self.shapes)}

    def _split(self, vector):
        return [paddle.to_tensor(vector[a:b].reshape(shape), dtype=self.dtype)
                for a, b, shape in zip(self.offsets[:-1], self.offsets[1:], self.shapes)]

    def _flatten(self, tensors):
        return np.concatenate([
            np.zeros(size) if t is None else t.numpy().astype(np.float64).ravel()
            for t, size in zip(tensors, self.sizes)])

    # ----- per-batch pieces
    def _inputs(self, batch):
        inputs, labels = batch
        return _as_tensor(inputs, self.dtype), _as_tensor(labels)

    def _build_graph(self, batch):
        inputs, labels = self._inputs(batch)
        outputs = self.model(inputs)
        if self.method == "exact":
            loss = self.loss_fn(outputs, labels)
            grads = paddle.grad(loss, self.params, create_graph=True, allow_unused=True)
            return {"grads": grads, "n": _batch_size(labels)}
        # ggn: J^T u with a dummy u, kept differentiable in u for the J v trick
        dummy = paddle.zeros_like(outputs)
        dummy.stop_gradient = False
        jt_dummy = paddle.grad(outputs, self.params, grad_outputs=dummy, create_graph=True, allow_unused=True)
        return {"outputs": outputs, "labels": labels, "dummy": dummy, "jt_dummy": jt_dummy,
                "n": _batch_size(labels)}

    def _graph_product(self, graph, v_parts, keep):
        if self.method == "exact":
            used = [(g, v) for g, v in zip(graph["grads"], v_parts) if g is not None]
            parts = paddle.grad([g for g, _ in used], self.params, grad_outputs=[v for _, v in used],
                                retain_graph=keep, allow_unused=True)
            return parts
        used = [(g, v) for g, v in zip(graph["jt_dummy"], v_parts) if g is not None]
        (jv,) = paddle.grad([g for g, _ in used], [graph["dummy"]], grad_outputs=[v for _, v in used],
                            retain_graph=True)
        w = self.loss_fn.output_hvp(graph["outputs"], graph["labels"], jv.detach())
        return paddle.grad(graph["outputs"], self.params, grad_outputs=w, retain_graph=keep, allow_unused=True)

    def _gradient(self, batch):
        inputs, labels = self._inputs(batch)
        loss = self.loss_fn(self.model(inputs), labels)
        return self._flatten(paddle.grad(loss, self.params, allow_unused=True))

    def _set_params(self, vector):
        for param, value in zip(self.params, self._split(vector)):
            param.set_value(value)

    # ----- the operator
    def matvec(self, v):
        """``H v`` (or ``G v``) for a float64 vector of length ``dim``; returns float64."""
        v = np.asarray(v, dtype=np.float64)
        if v.shape != (self.dim,):
            raise ValueError(f"HVPOperator.matvec: expected a vector of shape ({self.dim},), got {v.shape}")
        self.n_products += 1
        with _contiguous_kernels():
            return self._fd_product(v) if self.method == "fd64" else self._graph_matvec(v)

    def _graph_matvec(self, v):
        v_parts = self._split(v)
        total, count = np.zeros(self.dim), 0
        if self.cache_graphs and self._graphs is None:
            self._graphs = [self._build_graph(batch) for batch in self.batches]
        graphs = self._graphs if self.cache_graphs else (self._build_graph(b) for b in self.batches)
        for graph in graphs:
            total += graph["n"] * self._flatten(self._graph_product(graph, v_parts, keep=self.cache_graphs))
            count += graph["n"]
        self.n_samples = count
        return total / count

    def fd_step(self, v):
        """The central-difference step for direction ``v`` (see the module docstring)."""
        theta_inf = max(float(np.abs(p.numpy()).max()) for p in self.params)
        return np.finfo(np.float64).eps ** (1 / 3) * (1.0 + theta_inf) / float(np.linalg.norm(v))

    def _fd_product(self, v):
        norm = float(np.linalg.norm(v))
        if norm == 0.0:
            return np.zeros(self.dim)
        theta = self.flat_params()
        step = self.fd_step(v)
        total, count = np.zeros(self.dim), 0
        try:
            for batch in self.batches:
                n = _batch_size(batch[1])
                self._set_params(theta + step * v)
                plus = self._gradient(batch)
                self._set_params(theta - step * v)
                minus = self._gradient(batch)
                total += n * (plus - minus) / (2 * step)
                count += n
        finally:
            self._set_params(theta)
        self.n_samples = count
        return total / count

    def __call__(self, v):
        return self.matvec(v)

    def dense(self):
        """The full ``dim x dim`` matrix, column by column (``dim`` products: small models only)."""
        eye = np.eye(self.dim)
        return np.stack([self.matvec(eye[:, i]) for i in range(self.dim)], axis=1)


def hvp_relative_error(model, loss_fn, batches, n_vectors=3, seed=0):
    """Largest ``||H_exact v - H_fd64 v|| / ||H_fd64 v||`` over random unit vectors.

    A check that a model's double backprop is right before trusting ``method="exact"``: a model
    calling ``F.conv2d`` in its forward (not swappable) shows errors of order 1 here.
    """
    exact = HVPOperator(model, loss_fn, batches, method="exact", dtype="float64")
    fd64 = HVPOperator(model, loss_fn, batches, method="fd64")
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(n_vectors):
        v = rng.standard_normal(exact.dim)
        v /= np.linalg.norm(v)
        reference = fd64.matvec(v)
        worst = max(worst, float(np.linalg.norm(exact.matvec(v) - reference) / max(np.linalg.norm(reference), 1e-300)))
    return worst
