"""Sparse vs dense entity-table gradients for the KGE configs (the numbers in ``configs/kge_base.yaml``).

For each config, three variants train the same batches through ``KGETask.train_step`` + the
optimiser step: ``Arch.sparse=true`` with Adam ``lazy_mode`` (the default), sparse without
lazy_mode (exact Adam), and dense gradients. Reported: the median milliseconds per step over
``--steps`` steps after ``--warmup``, and the loss after the steps. lazy_mode changes the update
of rows absent from a batch, so its loss may differ slightly. Sparse (non-lazy) and dense differ
in the first steps only: paddle 2.6.2's Adam kernel for sparse gradients applies the bias
correction of step t+1 at step t (its first update of a row is 0.744x the dense one for the
default betas: lr * sqrt(1 - b2^2) / (1 - b1^2) * m / sqrt(v); measured on a 10 x 3 embedding), and
the two converge once 1 - b1^t ~ 1, after a few dozen steps.

    python bench/kge_sparse_vs_dense.py                       # spacee_fb15k237 and spacee_wn18rr
    python bench/kge_sparse_vs_dense.py --quick               # spacee_umls, a few steps
    python bench/kge_sparse_vs_dense.py -c configs/rotate_fb15k237.yaml -o Arch.dim=500

The last line is ``RESULT {json}``: per config, ``ms_per_step`` per variant and
``speedup_sparse_lazy_vs_dense``.
"""
import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import paddle_suite  # noqa: E402,F401
import paddle  # noqa: E402

from paddle_suite.config import load_config  # noqa: E402
from paddle_suite.engine.optim import build_optimizer  # noqa: E402
from paddle_suite.registry import TASKS  # noqa: E402

VARIANTS = {
    "sparse_lazy": ["Arch.sparse=true", "Optimizer.lazy_mode=true"],
    "sparse": ["Arch.sparse=true", "Optimizer.lazy_mode=false"],
    "dense": ["Arch.sparse=false", "Optimizer.lazy_mode=false"],
}


def time_variant(config_path, overrides, steps, warmup):
    config = load_config(config_path, overrides)
    task = TASKS.get("kge")(config)
    paddle.seed(int(config["Global"]["seed"]))
    model = task.build_model()
    optimizer, _ = build_optimizer(config["Optimizer"], model.parameters(), steps + warmup)
    times, loss = [], None
    for step, batch in zip(range(steps + warmup), task.train_batches(0)):
        started = time.perf_counter()
        loss, _ = task.train_step(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        value = float(loss)  # synchronises, so the step is fully timed
        if step >= warmup:
            times.append(time.perf_counter() - started)
    return {"ms_per_step": 1000 * statistics.median(times), "final_loss": value}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", action="append", default=None, help="KGE config(s) to time")
    parser.add_argument("-o", "--override", action="append", default=[], help="override for every variant")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (30; 5 quick)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    configs = args.config or ([os.path.join(ROOT, "configs", "spacee_umls.yaml")] if args.quick else
                              [os.path.join(ROOT, "configs", f"spacee_{d}.yaml") for d in ("fb15k237", "wn18rr")])
    steps = args.steps or (5 if args.quick else 30)
    paddle.disable_static()
    result = {}
    for path in configs:
        name = os.path.splitext(os.path.basename(path))[0]
        per = {v: time_variant(path, [*o, *args.override], steps, args.warmup) for v, o in VARIANTS.items()}
        for variant, r in per.items():
            print(f"{name:18s} {variant:12s} {r['ms_per_step']:8.1f} ms/step  loss {r['final_loss']:.5f}", flush=True)
        result[name] = {"ms_per_step": {v: r["ms_per_step"] for v, r in per.items()},
                        "final_loss": {v: r["final_loss"] for v, r in per.items()},
                        "speedup_sparse_lazy_vs_dense": per["dense"]["ms_per_step"] / per["sparse_lazy"]["ms_per_step"]}
    result["command"] = " ".join(["python bench/kge_sparse_vs_dense.py", *(argv if argv is not None else sys.argv[1:])])
    result["threads"] = paddle.get_flags(["FLAGS_paddle_num_threads"])["FLAGS_paddle_num_threads"]
    print("RESULT " + json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
