"""Train the CIFAR-10 configs of the vision backbones and tabulate test top-1 against the budget.

    python bench/vision_results.py                 # headline runs (hours each; rerun to resume)
    python bench/vision_results.py --quick         # a few steps each (< 5 min), marked quick
    python bench/vision_results.py --report-only   # tabulate the finished runs, train nothing
    python bench/vision_results.py --configs s2mlpv2_cifar10 ccsmlp_cifar10   # a subset (two shells: two cores)
    python bench/vision_results.py --configs s2mlpv2_cifar10 --nproc 2         # one run on both cores (Fleet)

Each config trains through ``tools/train.py`` in a subprocess, in ``<output-dir>/<config name>``.
Rerunning continues an interrupted run from its newest checkpoint (``Global.resume: auto``) and
skips a finished one (its ``vision_result.json``, written after the run's test evaluation). Per
config: test top-1/top-5 of the best (valid top-1) checkpoint, parameters, epochs, wall hours
(``train_seconds``: training and its validations, summed over resumed sessions) and training
images/s (median of the logged ``train/samples_per_s``). Headline output:
``bench/results/vision_results.json`` and ``bench/vision_results.md``; ``--quick`` writes
``bench/results/vision_results_quick.json`` only and prints ``RESULT {json}``.

A finished headline row is also kept in ``bench/results/vision_results.json`` (with ``finished_at``
and ``command``): a later session, on a machine without the run directories, tabulates it beside its
own runs, so the four configs can be trained in different sessions and committed one by one.

Budget: each headline run must fit ``BUDGET_HOURS`` of training; ``within_budget`` says whether it did.
The hours are CPU time of rank 0 and its loader worker: the wall time on an idle machine where each
rank has a core of its own, and unchanged when the run shared the cores or was paused.

``--nproc N`` trains a run data-parallel through ``python -m paddle.distributed.launch`` (Fleet
collective, gloo on CPU): N ranks of ``DataLoader.batch_size / N`` images, so the global batch and
the recipe stay the config's. Its run folder is ``<config>_<N>ranks`` (a run never resumes with
another batch split). The launcher exits 0 when a rank crashed, so a run counts as finished only
when rank 0 printed its result.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from paddle_suite.io import atomic_write  # noqa: E402

CONFIGS = ("s2mlpv2_cifar10", "s2mlp_cifar10", "ccsmlp_cifar10", "mixer_cifar10")
BUDGET_HOURS = 3.0
CIFAR10_TRAIN_IMAGES = 50000
QUICK_STEPS, QUICK_SUBSET, QUICK_VALID = 4, 512, 0.02  # quick: 1,000 valid images, the full test set
RESULT_FILE = "vision_result.json"

# Why these configs (the measurement behind them: 2026-12-04, 2-core Intel Xeon shared with other
# jobs, load average 3-17; training steps of batch 128 with AdamW on random images, CPU-time rates).
PLAN = """\
## Plan

Two runs share the 2-core machine, so each gets one core (`DataLoader.num_workers: 1`) and
at most 3 hours. `python tools/train.py -c configs/s2mlpv2_cifar10.yaml -o Global.max_steps=30`
with the first CIFAR variant (`s2mlpv2_cifar`: patch 2, a 16x16-token first stage) ran at
38 images/s wall (60 images/s CPU time): 30 epochs would take 10+ hours. The configs therefore use
the `*_cifar_lite` variants (`paddle_suite/vision/models.py`): one two-stage pyramid for all four
families (4x4 patches -> 8x8 tokens at dim 96, a 2x2 merge -> 4x4 tokens at dim 192), each with its
own block, 1.57M-1.61M parameters. Training rates measured the same way (CPU time, images/s):
s2mlpv2_cifar_lite 172-206, s2mlp_cifar_lite 187, ccsmlp_cifar_lite 139, mixer_cifar_lite 137.
The loader's augmentation costs 11.5 ms of CPU per batch of 128 (2% of a step;
`python -m paddle_suite.classification.throughput -c configs/s2mlpv2_cifar10.yaml --workers 0`);
the per-epoch validation on 5,000 images took ~25 s wall under load (~0.2 h over 30 epochs).

| config | epochs | batch | steps | img/s (CPU) | training hours | + validation |
|---|---|---|---|---|---|---|
| s2mlpv2_cifar10 | 30 | 128 | 10,530 | 172-206 | 1.8-2.2 | ~0.2 |
| s2mlp_cifar10 | 30 | 128 | 10,530 | 187 | 2.0 | ~0.2 |
| ccsmlp_cifar10 / mixer_cifar10 | 30 | 128 | 10,530 | 137-139 | 2.7 | ~0.2 (tight) |

These are one-core rates; with the machine oversubscribed (the `--quick` runs logged 46-96 images/s
wall at load average 6-17) a run takes longer. Run two at a time on an otherwise idle machine
(`python bench/vision_results.py --configs s2mlpv2_cifar10 ccsmlp_cifar10` and, in a second shell,
`--configs s2mlp_cifar10 mixer_cifar10`; each pairs a fast and a slow run), and stop/resume (rerun the
same command) rather than share the cores further.

All four train the same 30 epochs with the same recipe (`configs/vision_cifar10_base.yaml`).
A 300-step probe of the S²-MLPv2 config (`-o Global.max_steps=300 -o Optimizer.schedule.warmup_steps=50`,
cosine over those 300 steps, 0.85 epoch) reached valid top-1 0.325 at 83-126 images/s wall (load
average ~7). The 85% goal is not yet verified: a 1.6M-parameter MLP in 30 epochs is at the edge of
what such models reach on CIFAR-10; the table below says what happened.
"""


def config_batch_size(config):
    from paddle_suite.config import load_config

    return load_config(str(ROOT / "configs" / f"{config}.yaml"))["DataLoader"]["batch_size"]


def rank_batch_size(config, nproc):
    """Each rank's batch: the config's (global) batch split over ``nproc`` ranks."""
    batch = config_batch_size(config)
    if batch % nproc:
        raise SystemExit(f"--nproc {nproc}: configs/{config}.yaml has DataLoader.batch_size {batch}, which does not "
                         f"split evenly over {nproc} ranks; choose a divisor of {batch}")
    return batch // nproc


def train_overrides(config, args):
    overrides = [f"Global.output_dir={args.output_dir}", f"Global.run_name={run_dir_of(config, args).name}"]
    if args.nproc > 1:
        overrides.append(f"DataLoader.batch_size={rank_batch_size(config, args.nproc)}")
    if args.quick:
        overrides += [f"Global.max_steps={QUICK_STEPS}", f"DataLoader.train_subset={QUICK_SUBSET}",
                      f"DataLoader.valid_size={QUICK_VALID}",
                      "Global.save_every=0", "Global.log_every=1"]
    return overrides


def run_training(config, args):
    """Train (or resume, or only test) one config; the last JSON line of tools/train.py's stdout."""
    launcher = [] if args.nproc == 1 else [
        "-m", "paddle.distributed.launch", "--nproc_per_node", str(args.nproc),
        "--log_dir", str(run_dir_of(config, args) / "launch_logs")]
    command = [sys.executable, *launcher, str(ROOT / "tools" / "train.py"),
               "-c", str(ROOT / "configs" / f"{config}.yaml"), "--no-progress"]
    for override in train_overrides(config, args):
        command += ["-o", override]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    print(f"[{time.strftime('%H:%M:%S')}] {' '.join(command[1:])}", flush=True)
    done = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        logs = "" if args.nproc == 1 else f" (each rank's log: {run_dir_of(config, args) / 'launch_logs'}/workerlog.N)"
        raise SystemExit(f"{config}: tools/train.py exited with status {done.returncode} without its result; its "
                         f"log is above{logs}. Rerun this script to resume from the run's newest checkpoint.")
    return json.loads(lines[-1])


def parameter_count(arch):
    import paddle_suite.vision  # noqa: F401  (registers the backbones; imports paddle)
    from paddle_suite.config import build_arch

    model = build_arch({"Arch": arch})
    return int(sum(p.size for p in model.parameters()))


def summarise(config, train_result, run_dir, quick, ranks=1):
    """The table row of a finished run, from tools/train.py's result and the run directory."""
    from paddle_suite.engine.run import read_metrics

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    loader = saved["DataLoader"]
    train_images = CIFAR10_TRAIN_IMAGES - int(round(loader["valid_size"] * CIFAR10_TRAIN_IMAGES))
    if loader["train_subset"]:
        train_images = min(train_images, loader["train_subset"])
    batch = loader["batch_size"] * ranks  # the global batch; the saved config holds one rank's
    steps_per_epoch = train_images // batch
    # rank 0 logs its own images/s; the ranks run in step, so the run's rate is that times the ranks
    rates = sorted(r["samples_per_s"] * ranks for r in read_metrics(str(run_dir), "train") if "samples_per_s" in r)
    # the budget is counted in CPU time of rank 0 and its loader worker: the run's wall time on an idle
    # machine with a core per rank, unchanged when the run shared the cores with other work or was paused
    seconds, wall = train_result.get("train_cpu_seconds"), train_result["train_seconds"]
    hours = None if seconds is None else seconds / 3600
    arch = {k: v for k, v in saved["Arch"].items() if k not in ("num_classes", "in_channels", "image_size")}
    return {
        "config": config, "arch": saved["Arch"]["name"], "quick": quick,
        "test_top1": train_result["test"]["top1"], "test_top5": train_result["test"].get("top5"),
        "valid_top1": train_result["best"], "params": parameter_count(arch),
        "steps": train_result["step"], "epochs": round(train_result["step"] / steps_per_epoch, 2),
        "batch_size": batch, "ranks": ranks, "hours": None if hours is None else round(hours, 4),
        "wall_hours": None if wall is None else round(wall / 3600, 4),
        "images_per_s": round(rates[len(rates) // 2], 1) if rates else None,
        "within_budget": None if hours is None else hours <= BUDGET_HOURS,
        "run_dir": str(run_dir),
    }


def committed_rows(path):
    """Finished headline rows of an earlier results file, by config.

    Runs of a 3-hour budget outlive a session whose machine is not kept, so a row finished (and
    committed) in one session is carried into the next session's table instead of being lost
    with its run directory. Quick rows are never carried."""
    if not path.exists():
        return {}
    return {r["config"]: r for r in json.loads(path.read_text()).get("table", [])
            if not r.get("quick") and r.get("test_top1") is not None}


def run_dir_of(config, args):
    ranks = getattr(args, "nproc", 1)
    return Path(args.output_dir).resolve() / (config if ranks == 1 else f"{config}_{ranks}ranks")


def collect(args, train, earlier=None):
    """Train the unfinished configs of ``train``, then tabulate every finished one. Tabulating after all
    training lets two invocations on the same output dir (one per core) each see the other's finished run."""
    for config in train:
        if not (run_dir_of(config, args) / RESULT_FILE).exists():
            train_config(config, args)
    rows, earlier = [], earlier or {}
    for config in CONFIGS:
        result_path = run_dir_of(config, args) / RESULT_FILE
        if result_path.exists():
            rows.append(json.loads(result_path.read_text()))
            print(f"{config}: finished, {result_path}", flush=True)
        elif config in earlier:
            rows.append(earlier[config])
            print(f"{config}: finished in an earlier session ({earlier[config].get('finished_at', 'date unknown')})",
                  flush=True)
    return rows


def train_config(config, args):
    run_dir = run_dir_of(config, args)
    row = summarise(config, run_training(config, args), run_dir, args.quick, args.nproc)
    row["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    row["command"] = " ".join(["python", "bench/vision_results.py"] + sys.argv[1:])
    with atomic_write(run_dir / RESULT_FILE) as handle:
        json.dump(row, handle, indent=1)


def headline(rows, quick):
    finished = [r for r in rows if r["test_top1"] is not None]
    best = max(finished, key=lambda r: r["test_top1"]) if finished else None
    return {
        "quick": quick, "budget_hours": BUDGET_HOURS, "configs": list(CONFIGS),
        "finished": [r["config"] for r in rows],
        "best_config": best and best["config"],
        "best_cifar10_top1": best and best["test_top1"],
        "best_train_hours": best and best["hours"],
        "table": rows,
    }


def markdown(summary):
    lines = [
        "# Vision backbones on CIFAR-10: test top-1 within a 3-hour budget",
        "",
        "Generated by `python bench/vision_results.py` (do not edit by hand); the plan behind the configs is",
        "below. Test top-1 is that of the best checkpoint by held-out valid top-1 (5,000 of the 50,000",
        "training images), on the 10,000 test images.",
        "",
        PLAN,
        "## Results",
        "",
        f"Budget per run: {BUDGET_HOURS:g} hours of training, counted as CPU time of the run (rank 0 when it ran on "
        "several ranks) and its loader worker (`train_cpu_seconds`, with the per-epoch validations): the wall time "
        "of the run on an idle machine with a core per rank. Wall hours are longer when runs shared the cores. "
        "Batch is the global batch, split over the ranks; img/s counts all ranks.",
        "",
        "| config | arch | params | epochs | batch | ranks | CPU hours | wall hours | train img/s | test top-1 | test top-5 | in budget |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["table"]:
        hours = "unknown" if r["hours"] is None else f"{r['hours']:.2f}"
        wall = "unknown" if r.get("wall_hours") is None else f"{r['wall_hours']:.2f}"
        top5 = "" if r["test_top5"] is None else f"{r['test_top5']:.4f}"
        lines.append(f"| {r['config']} | {r['arch']} | {r['params'] / 1e6:.2f}M | {r['epochs']:g} | {r['batch_size']} "
                     f"| {r.get('ranks', 1)} | {hours} | {wall} | {r['images_per_s']} | {r['test_top1']:.4f} | {top5} | {r['within_budget']} |")
    missing = [c for c in summary["configs"] if c not in summary["finished"]]
    if missing:
        lines += ["", f"Not finished yet: {', '.join(missing)} (rerun the command to continue them)."]
    if summary["best_config"]:
        lines += ["", f"Best: `{summary['best_config']}`, test top-1 {summary['best_cifar10_top1']:.4f} "
                  f"after {summary['best_train_hours']} hours of training."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} steps on {QUICK_SUBSET} images each, "
                        f"{QUICK_VALID:g} of train as valid")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS),
                        help="train only these (all finished ones are still tabulated); default: all four")
    parser.add_argument("--report-only", action="store_true", help="tabulate finished runs, train nothing")
    parser.add_argument("--nproc", type=int, default=1,
                        help="ranks of one run (Fleet collective, one core each; the global batch is the config's)")
    parser.add_argument("--output-dir", default=None,
                        help="where the runs live (default output/vision_results, or output/vision_results_quick)")
    args = parser.parse_args(argv)
    args.output_dir = args.output_dir or str(ROOT / "output" / ("vision_results_quick" if args.quick else "vision_results"))
    if args.nproc < 1:
        parser.error(f"--nproc must be at least 1, got {args.nproc}")
    unknown = sorted(set(args.configs) - set(CONFIGS))
    if unknown:
        parser.error(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    results = ROOT / "bench" / "results"
    earlier = {} if args.quick else committed_rows(results / "vision_results.json")
    summary = headline(collect(args, train=() if args.report_only else args.configs, earlier=earlier), args.quick)
    if args.quick:
        with atomic_write(results / "vision_results_quick.json") as handle:
            json.dump(summary, handle, indent=1)
    else:
        with atomic_write(results / "vision_results.json") as handle:
            json.dump(summary, handle, indent=1)
        with atomic_write(ROOT / "bench" / "vision_results.md") as handle:
            handle.write(markdown(summary))
    print("RESULT " + json.dumps({k: v for k, v in summary.items() if k != "table"}))


if __name__ == "__main__":
    main()
