"""Sparse learning-rate sweep behind the ``PS.sparse_lr`` defaults of the ads configs.

The two modes apply different sparse rules, so their learning rates are not interchangeable:

* ``async`` (``configs/ctr_dnn_ps.yaml``): Fleet's ``SparseAdaGradSGDRule`` on the servers, pushed
  by the workers' ``Executor.run`` feed path (1 server + 1 worker on loopback, our launcher);
* ``hierarchical`` (``configs/ctr_hierarchical.yaml``): our row-wise Adagrad on the gradient of
  the batch's summed loss (``hierarchical_train.PassStep``), one process.

Data: the generator (``CtrSpec``: 26 slots, vocabulary ``--vocab``, Zipf 1.1, planted model), the
first ``--rows`` rows trained in passes of ``--pass-size``, the next ``--test-rows`` held out. Each
run is scored on the held-out rows (exported body + the run's sparse rows); the generator's Bayes
AUC of those rows is the ceiling. The last line is ``RESULT {json}`` with ``best`` per mode.

    python bench/ctr_sparse_lr.py            # ~10 minutes on 2 cores
    python bench/ctr_sparse_lr.py --quick    # two values per mode, < 5 minutes
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ctr_results import fleet_test_auc  # noqa: E402  (scores a Fleet run from its checkpoint)

GRIDS = {"async": [0.1, 0.3, 1.0, 3.0, 10.0], "hierarchical": [0.01, 0.03, 0.1, 0.3, 1.0]}
QUICK_GRIDS = {"async": [0.3, 3.0], "hierarchical": [0.03, 0.3]}


def make_data(workdir, rows, test_rows, vocab):
    from paddle_suite.ads.generator import CtrSpec, generate

    meta = generate(CtrSpec(rows + test_rows, vocab=vocab, zipf=1.1, seed=21, weight_std=1.0),
                    os.path.join(workdir, "all.txt"), progress=False)
    with open(os.path.join(workdir, "all.txt")) as src, open(os.path.join(workdir, "train.txt"), "w") as train, \
            open(os.path.join(workdir, "test.txt"), "w") as test:
        for i, line in enumerate(src):
            (train if i < rows else test).write(line)
    return meta


def overrides(workdir, name, pass_size):
    return [f"Global.output_dir={workdir}/runs", f"Global.run_name={name}", "Global.resume=none",
            f"DataLoader.train_files=[{workdir}/train.txt]", f"DataLoader.test_files=[{workdir}/test.txt]",
            f"DataLoader.pass_size={pass_size}"]


def run_async(workdir, lr, pass_size, passes):
    name = f"async_{lr}"
    ov = overrides(workdir, name, pass_size) + ["PS.mode=async", "PS.server_num=1", "PS.worker_num=1",
                                                f"PS.sparse_lr={lr}", f"PS.save_every_passes={passes}"]
    command = [sys.executable, "-m", "paddle_suite.ads.launcher", "--server_num", "1", "--worker_num", "1",
               "--log_dir", f"{workdir}/runs/{name}/logs", "-c", str(REPO / "configs" / "ctr_dnn_ps.yaml"),
               *[x for o in ov for x in ("-o", o)]]
    done = subprocess.run(command, cwd=str(REPO), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"async run with sparse_lr={lr} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return fleet_test_auc(ov, f"{workdir}/runs/{name}", f"{workdir}/test.txt")["auc"]


def run_hierarchical(workdir, lr, pass_size):
    from paddle_suite.ads.hierarchical_train import HierarchicalTrainer
    from paddle_suite.ads.task import evaluate_run
    from paddle_suite.config import load_config

    config = load_config(str(REPO / "configs" / "ctr_hierarchical.yaml"),
                         overrides(workdir, f"hierarchical_{lr}", pass_size) + [f"PS.sparse_lr={lr}"])
    HierarchicalTrainer(config).train()
    return evaluate_run(config)["auc"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=None, help="training rows (200k; 60k quick)")
    parser.add_argument("--test-rows", type=int, default=20000)
    parser.add_argument("--vocab", type=float, default=2e5)
    parser.add_argument("--pass-size", type=int, default=None, help="examples per pass (50k; 20k quick)")
    args = parser.parse_args(argv)
    rows = args.rows or (60_000 if args.quick else 200_000)
    pass_size = args.pass_size or (20_000 if args.quick else 50_000)
    grids = QUICK_GRIDS if args.quick else GRIDS
    workdir = tempfile.mkdtemp(prefix="ctr_sparse_lr_")
    try:
        meta = make_data(workdir, rows, args.test_rows, args.vocab)
        print(f"data: {rows} train rows, Bayes AUC of all rows {meta['bayes_auc']:.4f}", flush=True)
        aucs = {"async": {}, "hierarchical": {}}
        for lr in grids["hierarchical"]:
            aucs["hierarchical"][lr] = run_hierarchical(workdir, lr, pass_size)
            print(f"hierarchical sparse_lr={lr}: test AUC {aucs['hierarchical'][lr]:.4f}", flush=True)
        for lr in grids["async"]:
            aucs["async"][lr] = run_async(workdir, lr, pass_size, -(-rows // pass_size))
            print(f"async        sparse_lr={lr}: test AUC {aucs['async'][lr]:.4f}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = {"rows": rows, "pass_size": pass_size, "bayes_auc_all_rows": meta["bayes_auc"],
              "test_auc": {m: {str(k): v for k, v in a.items()} for m, a in aucs.items()},
              "best": {m: max(a, key=a.get) for m, a in aucs.items()},
              "command": " ".join(["python bench/ctr_sparse_lr.py", *(argv if argv is not None else sys.argv[1:])])}
    print("RESULT " + json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
