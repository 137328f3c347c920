"""Hessian spectrum speed: paddle_suite.hessian vs PyHessian (PyTorch), same network, weights and batch.

Both sides run in this one process, one thread each (paddle sets ``OMP_NUM_THREADS=1`` on import;
``torch.set_num_threads(1)`` matches it).

Network and point: a LeNet-5 (conv 5x5 x6 pad 2, ReLU, max-pool 2, conv 5x5 x16, ReLU, max-pool 2,
FC 120, FC 84, FC 10; 61,706 parameters) trained with Adam in paddle on a planted 10-class image
task (28x28 class templates plus noise: no image data set of that shape is on the machines), then
copied into an identical PyTorch LeNet. The Hessian is that of the mean cross-entropy on one fixed
batch of ``--batch`` images (PyHessian's single-batch mode, which keeps the first-backward graph
and reuses it for every product; ours does the same with ``cache_graphs``).

What each side computes:

* ours: ``HVPOperator(make_double_differentiable(model), SoftmaxCrossEntropy(), [batch])``
  (exact double backprop, float32), then ``top_eigenpairs`` (Lanczos with full
  reorthogonalisation, stopping when every top-k eigenvalue error bound ``min(r, r^2 / gap)`` is
  below ``--tol`` relative: the library default), ``hutchinson_trace``, ``slq_density``.
* PyHessian 0.1 (``pip install pyhessian``, unchanged): ``hessian(model, CrossEntropyLoss(),
  data=batch, cuda=False)``, ``.eigenvalues(top_n=1)`` / ``(top_n=10)`` (deflated power iteration,
  its defaults ``maxIter=100, tol=1e-3``), ``.trace()`` (Hutchinson, its adaptive stop),
  ``.density(iter=100, n_v=1)``. PyHessian 0.1 calls ``torch.eig``, which torch 2.x removed; the
  bench supplies it for that call only (``torch.linalg.eigh`` of the symmetric tridiagonal matrix,
  returned in ``torch.eig``'s layout), nothing else is patched.

Accuracy: PyHessian's ``tol=1e-3`` bounds the relative change of the Rayleigh quotient between
iterations, not the error: its top-10 eigenvalues come out about 1e-2 off, and its deflation can
miss an eigenvalue. Our ``--tol`` (1e-3, the library default) bounds the estimated eigenvalue error
itself, and the measured errors (against the reference below) are in ``RESULT`` next to PyHessian's,
so "equal accuracy" is checked, not assumed: ``top10_speedup_vs_pyhessian`` is at our default,
where our errors are below PyHessian's. Each round also times ours with ``--matched-tol`` (2e-2),
whose error bound is of the order of PyHessian's actual errors
(``top10_speedup_vs_pyhessian_matched``).

Equal work: the trace uses as many Hutchinson probes on our side as PyHessian's adaptive
loop used; the density uses the same number of Lanczos steps. Eigenvalue accuracy is measured
against a reference computed untimed: our Lanczos on a float64 copy of the model with tolerance
1e-10. ``RESULT`` gives each side's eigenvalues and the largest relative error of each, so a
speedup bought with accuracy would show.

Threads: one for paddle, torch and numpy's OpenBLAS (``OPENBLAS_NUM_THREADS=1`` is set before numpy
loads; with two OpenBLAS threads their spinning after each Lanczos step slowed our next product).

Timing: CPU time of this process (``time.process_time``; both sides single-threaded, and CPU time is
far less disturbed by other processes on a shared machine than wall time), each task timed end to
end including building the operator / PyHessian object, in ``--rounds`` alternating rounds; the
median is reported. Speedup = PyHessian time / our time (> 1: we are faster). Per-product times of
the two HVPs are reported too, to separate the framework's cost from the algorithms'.

``--quick`` (about 2 minutes): 150 training steps, one round. The full run: 400 steps, 3 rounds,
writes ``bench/results/hessian_speed.json``. Last line: ``RESULT {json}``.

Needs the ``bench`` extra: ``pip install torch==2.13.0 pyhessian`` (checked with PyHessian 0.1).
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# numpy's OpenBLAS would otherwise run 2 threads whose spinning slows the single-threaded HVPs
# between Lanczos steps (both sides do their vector algebra between products)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import paddle_suite  # noqa: E402,F401  (MKL_DEBUG_CPU_TYPE before paddle)
import paddle  # noqa: E402
import paddle.nn as nn  # noqa: E402

from paddle_suite.hessian import (HVPOperator, SoftmaxCrossEntropy, hutchinson_trace,  # noqa: E402
                                  make_double_differentiable, slq_density, top_eigenpairs)
from paddle_suite.io import atomic_write  # noqa: E402

RESULTS_JSON = REPO / "bench" / "results" / "hessian_speed.json"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="150 training steps, one round (about 2 minutes)")
    parser.add_argument("--batch", type=int, default=128, help="images in the Hessian batch")
    parser.add_argument("--train-steps", type=int, default=None, help="Adam steps before measuring (150 quick, 400 full)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (1 quick, 3 full)")
    parser.add_argument("--tol", type=float, default=1e-3, help="our Lanczos residual tolerance (relative)")
    parser.add_argument("--matched-tol", type=float, default=2e-2,
                        help="second top-10 run whose eigenvalue errors are of the order of PyHessian's")
    parser.add_argument("--density-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results (full run)")
    args = parser.parse_args(argv)
    args.train_steps = args.train_steps or (150 if args.quick else 400)
    args.rounds = args.rounds or (1 if args.quick else 3)
    return args


def log(message):
    print(f"[hessian_speed] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- data and models
def planted_images(n, seed):
    """10 smooth random 28x28 templates; an image is its class template plus unit noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((10, 7, 7))
    templates = np.kron(coarse, np.ones((4, 4)))  # 28x28, blocky so convolutions see structure
    labels = rng.integers(0, 10, n)
    images = templates[labels] + rng.standard_normal((n, 28, 28))
    return images[:, None].astype("float32"), labels.astype("int64")


def paddle_lenet():
    return nn.Sequential(
        nn.Conv2D(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2D(2),
        nn.Conv2D(6, 16, 5), nn.ReLU(), nn.MaxPool2D(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def train(model, args):
    images, labels = planted_images(2048, args.seed)
    optimizer = paddle.optimizer.Adam(learning_rate=1e-3, parameters=model.parameters())
    rng = np.random.default_rng(args.seed + 1)
    for step in range(args.train_steps):
        index = rng.integers(0, len(labels), 128)
        loss = paddle.nn.functional.cross_entropy(model(paddle.to_tensor(images[index])),
                                                  paddle.to_tensor(labels[index, None]))
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
    return float(loss)


def torch_lenet_like(model):
    import torch

    torch_model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(400, 120), torch.nn.ReLU(), torch.nn.Linear(120, 84), torch.nn.ReLU(), torch.nn.Linear(84, 10))
    with torch.no_grad():
        for theirs, ours in zip(torch_model, model):
            if isinstance(ours, nn.Conv2D):
                theirs.weight.copy_(torch.tensor(ours.weight.numpy()))
                theirs.bias.copy_(torch.tensor(ours.bias.numpy()))
            elif isinstance(ours, nn.Linear):  # paddle stores [in, out], torch [out, in]
                theirs.weight.copy_(torch.tensor(ours.weight.numpy().T))
                theirs.bias.copy_(torch.tensor(ours.bias.numpy()))
    return torch_model


# ---------------------------------------------------------------------------- the two sides
class Ours:
    def __init__(self, model, batch):
        self.model = make_double_differentiable(model)
        self.batch = batch

    def operator(self):
        return HVPOperator(self.model, SoftmaxCrossEntropy(), [self.batch])

    def top(self, k, tol, seed):
        op = self.operator()
        result = top_eigenpairs(op, op.dim, k, tol=tol, rng=seed)
        return {"eigenvalues": result.eigenvalues.tolist(), "products": op.n_products,
                "converged": bool(result.converged.all())}

    def trace(self, probes, seed):
        op = self.operator()
        estimate = hutchinson_trace(op, op.dim, probes, rng=seed)
        return {"trace": estimate.trace, "ci95": [estimate.ci_low, estimate.ci_high], "products": op.n_products}

    def density(self, steps, seed):
        op = self.operator()
        density = slq_density(op, op.dim, steps, n_runs=1, rng=seed)
        return {"nodes_max": float(density.nodes.max()), "slq_trace": density.trace(op.dim), "products": op.n_products}


class PyHessianSide:
    def __init__(self, torch_model, batch):
        import torch

        torch.set_num_threads(1)
        self.torch = torch
        self.model = torch_model
        self.batch = (torch.tensor(batch[0]), torch.tensor(batch[1]))
        self.products = 0
        module = sys.modules[self._hessian_class().__module__]
        original = module.hessian_vector_product

        def counted(*a, **k):  # count products; the function itself is PyHessian's
            self.products += 1
            return original(*a, **k)

        module.hessian_vector_product = counted
        if not getattr(torch.eig, "_pyhessian_shim", False):  # PyHessian 0.1's density() calls torch.eig,
            def eig(matrix, eigenvectors=True):
                values, vectors = torch.linalg.eigh(matrix)
                return torch.stack([values, torch.zeros_like(values)], dim=1), vectors

            eig._pyhessian_shim = True  # which torch 2 keeps only as a function that raises
            torch.eig = eig

    @staticmethod
    def _hessian_class():
        from pyhessian import hessian

        return hessian

    def operator(self):
        self.products = 0
        # PyHessian's constructor calls loss.backward(create_graph=True) without clearing .grad:
        # leftover gradients would be summed into its gradient (a doubled Hessian)
        self.model.zero_grad(set_to_none=True)
        return self._hessian_class()(self.model, self.torch.nn.CrossEntropyLoss(), data=self.batch, cuda=False)

    def top(self, k, seed):
        self.torch.manual_seed(seed)
        values, _ = self.operator().eigenvalues(top_n=k)
        return {"eigenvalues": [float(v) for v in values], "products": self.products}

    def trace(self, seed):
        self.torch.manual_seed(seed)
        samples = self.operator().trace()
        return {"trace": float(np.mean(samples)), "probes": len(samples), "products": self.products}

    def density(self, steps, seed):
        self.torch.manual_seed(seed)
        nodes, _ = self.operator().density(iter=steps, n_v=1)
        return {"nodes_max": float(np.max(nodes)), "products": self.products}

    def hvp_seconds(self, repeats=10):
        hess = self.operator()
        v = [self.torch.randn_like(p) for p in hess.params]
        self.torch.autograd.grad(hess.gradsH, hess.params, grad_outputs=v, retain_graph=True)  # warm-up
        start = time.process_time()
        for _ in range(repeats):
            self.torch.autograd.grad(hess.gradsH, hess.params, grad_outputs=v, retain_graph=True)
        return (time.process_time() - start) / repeats


def timed(function, *args):
    start, cpu_start = time.perf_counter(), time.process_time()
    out = function(*args)
    out["cpu_s"], out["wall_s"] = time.process_time() - cpu_start, time.perf_counter() - start
    return out


def relative_error(values, reference):
    values, reference = np.asarray(values, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return float(np.max(np.abs(values - reference) / np.abs(reference)))


def main(argv=None):
    args = parse_args(argv)
    load_start = os.getloadavg()
    paddle.seed(args.seed)
    model = paddle_lenet()
    log(f"training LeNet for {args.train_steps} Adam steps")
    train_loss = train(model, args)
    model.eval()
    batch = planted_images(args.batch, args.seed + 2)
    torch_model = torch_lenet_like(model)
    import torch

    gap = float(np.abs(model(paddle.to_tensor(batch[0])).numpy()
                       - torch_model(torch.tensor(batch[0])).detach().numpy()).max())
    log(f"train loss {train_loss:.4f}; paddle vs torch logits max |diff| {gap:.2e}")

    ours, theirs = Ours(model, batch), PyHessianSide(torch_model, batch)
    log("reference: float64 Lanczos, tolerance 1e-10 (untimed)")
    reference_op = HVPOperator(ours.model, SoftmaxCrossEntropy(), [batch], dtype="float64")
    reference = top_eigenpairs(reference_op, reference_op.dim, 10, tol=1e-10, max_steps=300, rng=args.seed)
    reference_top = reference.eigenvalues.tolist()

    op = ours.operator()
    v = np.random.default_rng(0).standard_normal(op.dim)
    op.matvec(v)
    start = time.process_time()
    for _ in range(10):
        op.matvec(v)
    our_hvp = (time.process_time() - start) / 10
    their_hvp = theirs.hvp_seconds()
    log(f"one HVP: ours {our_hvp * 1e3:.1f} ms, PyTorch {their_hvp * 1e3:.1f} ms CPU")

    rounds = []
    for index in range(args.rounds):
        seed = args.seed + index
        record = {}
        record["pyhessian_top1"] = timed(theirs.top, 1, seed)
        record["ours_top1"] = timed(ours.top, 1, args.tol, seed)
        record["pyhessian_top10"] = timed(theirs.top, 10, seed)
        record["ours_top10"] = timed(ours.top, 10, args.tol, seed)
        record["ours_top10_matched"] = timed(ours.top, 10, args.matched_tol, seed)
        record["pyhessian_trace"] = timed(theirs.trace, seed)
        record["ours_trace"] = timed(ours.trace, record["pyhessian_trace"]["probes"], seed)
        record["pyhessian_density"] = timed(theirs.density, args.density_steps, seed)
        record["ours_density"] = timed(ours.density, args.density_steps, seed)
        rounds.append(record)
        log("round {}: top1 {:.2f}s vs {:.2f}s, top10 {:.2f}s vs {:.2f}s, trace {:.2f}s vs {:.2f}s, "
            "density {:.2f}s vs {:.2f}s (ours vs PyHessian, CPU)".format(
                index + 1, *[record[f"{side}_{task}"]["cpu_s"] for task in ("top1", "top10", "trace", "density")
                             for side in ("ours", "pyhessian")]))

    def median(key, field="cpu_s"):
        return statistics.median(r[key][field] for r in rounds)

    last = rounds[-1]
    result = {
        "network": "LeNet-5 (61,706 parameters), planted 28x28 10-class task",
        "batch": args.batch, "train_steps": args.train_steps, "train_loss": train_loss,
        "rounds": args.rounds, "our_tol": args.tol, "quick": args.quick,
        "hvp_ms": {"ours": our_hvp * 1e3, "pytorch": their_hvp * 1e3},
        "reference_top10": reference_top,
    }
    for task in ("top1", "top10", "trace", "density"):
        result[f"{task}_speedup_vs_pyhessian"] = median(f"pyhessian_{task}") / median(f"ours_{task}")
        result[f"{task}_speedup_vs_pyhessian_wall"] = median(f"pyhessian_{task}", "wall_s") / median(f"ours_{task}", "wall_s")
        result[f"{task}_cpu_s"] = {"ours": median(f"ours_{task}"), "pyhessian": median(f"pyhessian_{task}")}
        result[f"{task}_products"] = {"ours": last[f"ours_{task}"]["products"],
                                      "pyhessian": last[f"pyhessian_{task}"]["products"]}
    for task, k in (("top1", 1), ("top10", 10)):
        result[f"{task}_eigenvalues"] = {"ours": last[f"ours_{task}"]["eigenvalues"],
                                         "pyhessian": last[f"pyhessian_{task}"]["eigenvalues"]}
        result[f"{task}_max_rel_error"] = {
            "ours": relative_error(last[f"ours_{task}"]["eigenvalues"], reference_top[:k]),
            "pyhessian": relative_error(sorted(last[f"pyhessian_{task}"]["eigenvalues"], reverse=True), reference_top[:k])}
    result["top10_speedup_vs_pyhessian_matched"] = median("pyhessian_top10") / median("ours_top10_matched")
    result["top10_matched"] = {
        "tol": args.matched_tol, "cpu_s": median("ours_top10_matched"), "products": last["ours_top10_matched"]["products"],
        "eigenvalues": last["ours_top10_matched"]["eigenvalues"],
        "max_rel_error": relative_error(last["ours_top10_matched"]["eigenvalues"], reference_top)}
    result["trace"] = {"ours": last["ours_trace"]["trace"], "ours_ci95": last["ours_trace"]["ci95"],
                       "pyhessian": last["pyhessian_trace"]["trace"], "probes": last["pyhessian_trace"]["probes"]}
    result["density_nodes_max"] = {"ours": last["ours_density"]["nodes_max"],
                                   "pyhessian": last["pyhessian_density"]["nodes_max"]}
    result["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(),
                         "load_average_at_start": load_start, "load_average_at_end": os.getloadavg()}
    if not args.quick and not args.no_save:
        with atomic_write(RESULTS_JSON) as handle:
            json.dump({"result": result, "rounds": rounds}, handle, indent=1)
        log(f"wrote {RESULTS_JSON.relative_to(REPO)}")
    print("RESULT " + json.dumps(result, separators=(",", ":")))


if __name__ == "__main__":
    main()
