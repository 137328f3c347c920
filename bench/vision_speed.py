"""Throughput of our S²-MLP / S²-MLPv2 against a PyTorch twin, and CIFAR training throughput.

Part 1 (``RESULT``): ``s2mlp_deep`` and ``s2mlpv2_small`` at 224x224, ours
(``paddle_suite.vision``) vs the PyTorch twin in ``bench/torch_s2mlp.py`` (same architecture, same
layout, same weights: copied from ours, and the logits are checked to agree before any timing),
in this one process:

* inference: images/s of ``model(x)`` in eval mode without autograd, batch 32;
* training: images/s of one step (forward, cross-entropy, backward, AdamW step, clear grads),
  batch 16, train mode (stochastic depth 0.1 on both sides, the variants' default).

Both run single-threaded: paddle sets ``OMP_NUM_THREADS=1`` on import, ``torch.set_num_threads(1)``
matches it, and ``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` are 1 for numpy (our CPU shift and
split-attention kernels). Rounds alternate (ours, torch, ours, ...) so load from other processes
hits both alike; each side's median round is reported. Time is the CPU time of this process
(``time.process_time``): on a shared machine it is far less disturbed than wall time, and with one
thread per side it equals wall time on an idle one; wall-clock rates are reported too.
``*_ratio_vs_torch`` = ours / PyTorch images per CPU-second (> 1: we are faster).

Part 2 (``CIFAR_THROUGHPUT``): training images/s of the CIFAR variants (batch 128, 32x32, 10
classes, synthetic inputs: speed does not depend on pixel values), and the number of epochs of
the 50,000 CIFAR-10 training images that fit a budget (``--budget-hours``, default 3) when the
four headline runs share the machine's two cores, two at a time (each run gets half the budget on
one core). An epoch's time adds evaluation of 10,000 test images at a third of a training step
per image (a forward pass of the backward's cost split); 10% of the budget is kept for
checkpoints and start-up.

MKL: the paddle wheel's MKL reads ``MKL_DEBUG_CPU_TYPE``; ``paddle_suite`` sets it to 5 unless the
user set it, which helps AMD CPUs but forces AVX2 code on Intel AVX-512 CPUs (paddle GEMMs 1.6x
slower here). On an Intel machine run with ``MKL_DEBUG_CPU_TYPE=`` (empty: MKL's own dispatch);
the value used is recorded in the output.

``--quick`` (a few minutes on an idle machine): one timed round of one batch per side. The full
run does three rounds of two batches. Results go to ``bench/results/vision_speed[_quick][_TAG].json``.
PyTorch is the ``bench`` extra: ``pip install torch==2.13.0`` (CPU build).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402

import paddle_suite  # noqa: E402,F401  (MKL_DEBUG_CPU_TYPE before paddle)
import paddle  # noqa: E402
import paddle.nn.functional as F  # noqa: E402
import torch  # noqa: E402

import torch_s2mlp  # noqa: E402
from paddle_suite.io import atomic_write  # noqa: E402
from paddle_suite.registry import ARCHS  # noqa: E402
from paddle_suite.vision import models  # noqa: E402

SPEED_MODELS = ("s2mlp_deep", "s2mlpv2_small")
CIFAR_TRAIN_IMAGES, CIFAR_TEST_IMAGES = 50_000, 10_000


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(fn, iters):
    """(cpu seconds, wall seconds) of ``iters`` calls."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(iters):
        fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def paddle_train_step(model, optimizer, images, labels):
    def step():
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        return float(loss)

    return step


def torch_train_step(model, optimizer, images, labels):
    def step():
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def check_oracle(ours, twin, rng):
    """Both models in eval mode give the same logits on the same images (else the timing is moot)."""
    ours.eval()
    twin.eval()
    images = rng.standard_normal((2, 3, 224, 224)).astype("float32")
    with paddle.no_grad():
        want = ours(paddle.to_tensor(images)).numpy()
    with torch.no_grad():
        got = twin(torch.from_numpy(images)).numpy()
    diff = float(np.abs(want - got).max())
    if diff > 1e-3 * max(1.0, float(np.abs(want).max())):
        raise RuntimeError(f"PyTorch twin disagrees with ours: max |logit difference| {diff}")
    return diff


def alternate(sides, rounds, iters, batch):
    """Median images/s (CPU and wall) per side over alternating rounds, after one warm-up call each."""
    for fn in sides.values():
        fn()
    samples = {name: [] for name in sides}
    for _ in range(rounds):
        for name, fn in sides.items():
            samples[name].append(timed(fn, iters))
    return {
        name: {
            "images_per_cpu_s": batch * iters / statistics.median(cpu for cpu, _ in runs),
            "images_per_wall_s": batch * iters / statistics.median(wall for _, wall in runs),
        }
        for name, runs in samples.items()
    }


def compare(name, rounds, iters, infer_batch, train_batch, rng):
    ours = ARCHS.get(name)()
    twin = torch_s2mlp.load_from_paddle(torch_s2mlp.TWINS[name](drop_path_rate=0.1), ours)
    oracle = check_oracle(ours, twin, rng)

    images = rng.standard_normal((infer_batch, 3, 224, 224)).astype("float32")
    p_images, t_images = paddle.to_tensor(images), torch.from_numpy(images)

    def ours_infer():
        with paddle.no_grad():
            ours(p_images).numpy()

    def twin_infer():
        with torch.no_grad():
            twin(t_images).numpy()

    infer = alternate({"ours": ours_infer, "torch": twin_infer}, rounds, iters, infer_batch)

    ours.train()
    twin.train()
    images = rng.standard_normal((train_batch, 3, 224, 224)).astype("float32")
    labels = rng.integers(0, 1000, train_batch)
    p_opt = paddle.optimizer.AdamW(1e-3, parameters=ours.parameters(), weight_decay=0.05)
    t_opt = torch.optim.AdamW(twin.parameters(), lr=1e-3, weight_decay=0.05)
    train = alternate(
        {
            "ours": paddle_train_step(ours, p_opt, paddle.to_tensor(images), paddle.to_tensor(labels)),
            "torch": torch_train_step(twin, t_opt, torch.from_numpy(images), torch.from_numpy(labels)),
        },
        rounds,
        iters,
        train_batch,
    )
    return {
        "infer_ratio_vs_torch": infer["ours"]["images_per_cpu_s"] / infer["torch"]["images_per_cpu_s"],
        "train_ratio_vs_torch": train["ours"]["images_per_cpu_s"] / train["torch"]["images_per_cpu_s"],
        "infer_ratio_vs_torch_wall": infer["ours"]["images_per_wall_s"] / infer["torch"]["images_per_wall_s"],
        "train_ratio_vs_torch_wall": train["ours"]["images_per_wall_s"] / train["torch"]["images_per_wall_s"],
        "infer": infer,
        "train": train,
        "oracle_max_abs_logit_diff": oracle,
    }


def cifar_throughput(steps, batch, budget_hours, rng):
    images = paddle.to_tensor(rng.standard_normal((batch, 3, 32, 32)).astype("float32"))
    labels = paddle.to_tensor(rng.integers(0, 10, batch))
    per_run_seconds = 0.9 * budget_hours * 3600 / 2  # four runs, two at a time on two cores
    out = {}
    for name in models.CIFAR_VARIANTS:
        model = ARCHS.get(name)()
        model.train()
        optimizer = paddle.optimizer.AdamW(1e-3, parameters=model.parameters(), weight_decay=0.05)
        step = paddle_train_step(model, optimizer, images, labels)
        step()
        cpu, wall = timed(step, steps)
        rate = batch * steps / cpu
        epoch_seconds = CIFAR_TRAIN_IMAGES / rate + CIFAR_TEST_IMAGES / (3 * rate)
        out[name] = {
            "params": sum(int(np.prod(p.shape)) for p in model.parameters()),
            "train_images_per_cpu_s": rate,
            "train_images_per_wall_s": batch * steps / wall,
            "epoch_cpu_minutes": epoch_seconds / 60,
            "epochs_in_budget": int(per_run_seconds // epoch_seconds),
        }
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one timed round of one batch per side")
    parser.add_argument("--models", default=",".join(SPEED_MODELS))
    parser.add_argument("--no-cifar", action="store_true", help="skip the CIFAR throughput part")
    parser.add_argument("--budget-hours", type=float, default=3.0)
    parser.add_argument("--tag", default="", help="suffix of the results file name (e.g. mkl5)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    paddle.seed(0)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    rounds, iters, cifar_steps = (1, 1, 2) if args.quick else (3, 2, 5)

    setup = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "paddle": paddle.__version__,
        "torch": torch.__version__,
        "threads": {"paddle_omp": os.environ.get("OMP_NUM_THREADS"), "torch": torch.get_num_threads()},
        "MKL_DEBUG_CPU_TYPE": os.environ.get("MKL_DEBUG_CPU_TYPE"),
        "command": "python bench/vision_speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "rounds": rounds,
        "iters_per_round": iters,
    }
    result = {}
    for name in args.models.split(","):
        result[name] = compare(name, rounds, iters, 32, 16, rng)
        print(f"{name}: {json.dumps(result[name])}", flush=True)
    cifar = None if args.no_cifar else cifar_throughput(cifar_steps, 128, args.budget_hours, rng)
    stem = "vision_speed_quick" if args.quick else "vision_speed"
    path = REPO / "bench" / "results" / (stem + (f"_{args.tag}" if args.tag else "") + ".json")
    with atomic_write(path) as handle:
        handle.write(json.dumps({"setup": setup, "speed": result, "cifar_train": cifar}, indent=2) + "\n")
    if cifar is not None:
        print("CIFAR_THROUGHPUT " + json.dumps(cifar), flush=True)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
