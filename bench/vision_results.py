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
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from paddle_suite.io import atomic_write  # noqa: E402

CONFIGS = ("s2mlpv2_cifar10_long", "s2mlpv2_cifar10", "s2mlp_cifar10", "ccsmlp_cifar10", "mixer_cifar10")
BUDGET_HOURS = 3.0
CIFAR10_TRAIN_IMAGES = 50000
QUICK_STEPS, QUICK_SUBSET, QUICK_VALID = 4, 512, 0.02  # quick: 1,000 valid images, the full test set
RESULT_FILE = "vision_result.json"

# Why these configs: the rates below were measured on 2026-12-06 (2-core AMD EPYC, other jobs stopped),
# 60-80 training steps of tools/train.py on CIFAR-10 after start-up, as logged (images/s of all ranks).
PLAN = """\
## Plan

The four CIFAR-10 configs train one shared recipe (`configs/vision_cifar10_base.yaml`) on the
`*_cifar_lite` variants (`paddle_suite/vision/models.py`): one two-stage pyramid for all four
families (4x4 patches -> 8x8 tokens at dim 96, a 2x2 merge -> 4x4 tokens at dim 192), each with its
own block, 1.57M-1.61M parameters. (The `*_cifar` variants, with S²-MLPv2's first stage on a 16x16
grid, train at 60 images/s: 30 epochs would take 10+ hours.)

Each run has the whole machine: `--nproc 2` trains it data-parallel on 2 ranks (Fleet collective,
gloo) with 64 images a rank, the recipe's global batch of 128. Measured rates, all ranks together:

| variant | 2 ranks, images/s | one process, images/s | seconds an epoch (2 ranks) |
|---|---|---|---|
| s2mlpv2_cifar_lite | 365-397 | 241-251 | 113-123 |
| s2mlp_cifar_lite | 340-380 | | 118-132 |
| ccsmlp_cifar_lite | 243-277 | | 162-185 |
| mixer_cifar_lite | 282-308 | | 146-160 |

An epoch is 45,000 training images, plus a validation of the 5,000 held-out ones (about 10 s).
Two ranks give 1.6x one process. The comparison (same recipe, same epochs) gets **50 epochs**:
at the slowest rate, CCS-MLP needs 2.7 hours, inside the 3-hour budget.
`s2mlpv2_cifar10_long` is the S²-MLPv2 config with the budget to itself: **75 epochs**, 2.6-2.8
hours at its rates. The 30-epoch, one-core runs of the first recipe are in
`bench/vision_results_30epochs.md` (top-1 0.76-0.80).

    python bench/vision_results.py --nproc 2 --configs s2mlpv2_cifar10_long   # then the other four
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
    # the engine logs the images of all ranks (rank 0 counts its batch times the world size)
    rates = sorted(r["samples_per_s"] for r in read_metrics(str(run_dir), "train") if "samples_per_s" in r)
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


def config_epochs(config):
    from paddle_suite.config import load_config

    return load_config(str(ROOT / "configs" / f"{config}.yaml"))["Global"]["epochs"]


def is_current(row):
    """A finished row counts only if it trained the epochs its config names today."""
    return row.get("quick") or round(row["epochs"]) == config_epochs(row["config"])


def committed_rows(path):
    """Finished headline rows of an earlier results file, by config.

    Runs of a 3-hour budget outlive a session whose machine is not kept, so a row finished (and
    committed) in one session is carried into the next session's table instead of being lost
    with its run directory. Quick rows are never carried, nor rows of another epoch count than
    the config's (a recipe changed since)."""
    if not path.exists():
        return {}
    rows = [r for r in json.loads(path.read_text()).get("table", [])
            if not r.get("quick") and r.get("test_top1") is not None and r["config"] in CONFIGS]
    for row in rows:
        if not is_current(row):
            print(f"{row['config']}: the committed row trained {row['epochs']:g} epochs, the config now "
                  f"{config_epochs(row['config'])}: left out", flush=True)
    return {r["config"]: r for r in rows if is_current(r)}


def run_dir_of(config, args):
    ranks = getattr(args, "nproc", 1)
    return Path(args.output_dir).resolve() / (config if ranks == 1 else f"{config}_{ranks}ranks")


def collect(args, train, earlier=None):
    """Train the unfinished configs of ``train``, then tabulate every finished one. Tabulating after all
    training lets two invocations on the same output dir (one per core) each see the other's finished run."""
    for config in train:
        result_path = run_dir_of(config, args) / RESULT_FILE
        if not result_path.exists():
            train_config(config, args)
        elif not is_current(json.loads(result_path.read_text())):
            raise SystemExit(f"{result_path.parent} finished another epoch count than configs/{config}.yaml "
                             "names now; move that folder away to train the config again")
    rows, earlier = [], earlier or {}
    for config in CONFIGS:
        result_path = run_dir_of(config, args) / RESULT_FILE
        row = json.loads(result_path.read_text()) if result_path.exists() else None
        if row is not None and is_current(row):
            rows.append(row)
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


COMPARED = ("s2mlpv2_cifar10", "s2mlp_cifar10", "ccsmlp_cifar10", "mixer_cifar10")
TEST_IMAGES = 10_000  # the CIFAR-10 test set


def gap_noise(top1_a, top1_b, images=TEST_IMAGES):
    """Standard error of the difference of two test accuracies from the sampling of ``images`` test
    images alone (binomial, as if independent); the variation between training seeds comes on top and
    is not measured here (one run a config)."""
    return math.sqrt((top1_a * (1 - top1_a) + top1_b * (1 - top1_b)) / images)


def comparison_lines(rows):
    """The paper's claim on equal terms: S²-MLPv2 against the other three families at one epoch count.
    S²-MLPv2 beats a rival only when it leads by more than two standard errors (:func:`gap_noise`);
    a smaller lead is reported as within noise."""
    by_config = {r["config"]: r for r in rows}
    if not all(c in by_config for c in COMPARED) or len({by_config[c]["epochs"] for c in COMPARED}) != 1:
        return []
    v2 = by_config["s2mlpv2_cifar10"]
    others = [by_config[c] for c in COMPARED[1:]]
    gaps = [(r, v2["test_top1"] - r["test_top1"], gap_noise(v2["test_top1"], r["test_top1"])) for r in others]
    verdict = "beats" if all(gap > 2 * noise for _, gap, noise in gaps) else "does not clearly beat"
    listed = ", ".join(f"{r['config']} {r['test_top1']:.4f} ({gap:+.4f}, {gap / noise:+.1f} SE)" for r, gap, noise in gaps)
    return ["", f"Same recipe and epochs ({v2['epochs']:g}): s2mlpv2_cifar10 {v2['test_top1']:.4f} {verdict} {listed}; "
                f"SE = standard error of a difference of two accuracies on {TEST_IMAGES:,} test images, test-set "
                "sampling only (one training seed a config); beating means a lead of more than 2 SE over each."]


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
    lines += comparison_lines(summary["table"])
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
