"""``tools/hessian.py -c CONFIG [-o ...] [--run DIR] [--no-train]``: the Hessian spectrum of a trained (or initial) model.

1. The run: ``--run DIR`` opens any classification run of the suite (its saved ``config.yaml``
   gives the model and data; the ``Hessian`` section comes from ``CONFIG``); otherwise the run of
   ``CONFIG`` itself (``Global.output_dir/Global.run_name``).
2. The checkpoint (``Hessian.checkpoint``): ``best``, ``latest``, a path, or ``init``. When the run
   of ``CONFIG`` has no checkpoint at all it is trained first through the engine (``Trainer``), unless
   ``--no-train``; a run that has checkpoints is used as it is (finish it with ``tools/train.py``).
   ``init`` never trains.
3. The spectrum (``spectrum_report``) on the task's fixed training subset, with a progress bar over
   Hessian-vector products, written atomically to ``<run>/hessian/<checkpoint name>/``
   (``spectrum.json``, ``eigenvalues.csv``, ``rank_spectrum.png``, ``density.png``, ``summary.md``).
4. VisualDL and ``metrics.jsonl`` of the run, through ``MetricsSink``: ``hessian/<name>/eigenvalue``
   by rank (step = rank) and ``hessian/<name>/{slope_ls, slope_mle, ks, ...}`` at the checkpoint's
   training step.

The last stdout line is a JSON summary (output directory, slopes, KS distance, verdict, and when it
trained: the best valid metrics and the test metrics of the best checkpoint). Errors in
the config or the run directory exit with status 2 and a message naming the key or path.
No scipy is imported (docs/platform.md: scipy after paddle can crash).
"""
import argparse
import copy
import json
import logging
import os
import re

import paddle_suite  # noqa: F401  (sets MKL_DEBUG_CPU_TYPE before paddle loads)
from paddle_suite.config import ConfigError, load_config
from paddle_suite.engine.run import Run, RunError, load_run

log = logging.getLogger("paddle_suite")

HESSIAN_DIR = "hessian"
CLASSIFICATION_TASKS = ("classification", "hessian")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Hessian spectrum (top-k, trace, density, power-law fit) of a "
                                                 "classification model of the suite.")
    parser.add_argument("-c", "--config", required=True, help="YAML config with a Hessian section "
                        "(e.g. configs/hessian_lenet_fmnist.yaml)")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="Section.key=value",
                        help="override a config value (repeatable), e.g. -o Hessian.top_k=50")
    parser.add_argument("--run", default=None, help="an existing run directory (or a checkpoint in it): its model "
                        "and data, this config's Hessian section")
    parser.add_argument("--no-train", action="store_true", help="never train; fail when the checkpoint is missing")
    parser.add_argument("--no-progress", action="store_true", help="log lines instead of progress bars")
    return parser.parse_args(argv)


def open_run(args):
    """``(config, run)``: the config the task is built from and the run directory it belongs to."""
    config = load_config(args.config, args.override)
    if args.run is None:
        return config, Run(config)
    found = load_run(args.run)
    saved = found.config or {}
    task = (saved.get("Global") or {}).get("task")
    if task not in CLASSIFICATION_TASKS:
        raise ConfigError(f"--run {args.run}: a '{task}' run; Hessian spectra need a classification run "
                          f"(Global.task one of {', '.join(CLASSIFICATION_TASKS)})")
    merged = copy.deepcopy(saved)
    merged["Global"]["task"] = "hessian"
    merged["Hessian"] = config["Hessian"]
    merged["_source"] = config["_source"]
    merged["Global"]["progress"] = config["Global"]["progress"]
    return merged, Run(merged, found.dir)


def checkpoint_name(spec, path, run):
    """The folder name under ``<run>/hessian/`` and the training step of the checkpoint."""
    if spec == "init":
        return "init", 0
    if spec == "best":
        best = run.best_metrics() or {}
        return "best", int(best.get("step") or 0)
    name = os.path.basename(os.path.normpath(path))
    if name.endswith(".pdparams"):
        name = os.path.basename(os.path.dirname(path))
    match = re.match(r"^step_(\d+)$", name)
    return name, int(match.group(1)) if match else 0


def load_model(task, config, run, args):
    """``(model, spec, checkpoint path or None, training summary or None)``, training the run first when it
    has no checkpoint."""
    import paddle

    from paddle_suite.engine import Trainer, restore_model

    spec = config["Hessian"]["checkpoint"]
    if spec == "init":
        paddle.seed(config["Global"]["seed"])
        model = task.build_model()
        model.eval()
        return model, spec, None, None
    nothing_yet = run.latest_checkpoint() is None and not os.path.isdir(run.best_dir)
    if spec in ("best", "latest") and nothing_yet:
        if args.no_train or args.run is not None:
            raise RunError(f"{run.dir} has no checkpoint: train it (tools/train.py -c {args.config}), run without "
                           "--no-train, or set -o Hessian.checkpoint=init")
        log.info("no checkpoint in %s: training first", run.dir)
        trained = Trainer(config, task, args).train()
    else:
        trained = None
    path = run.resolve_checkpoint(spec)
    return restore_model(task, path), spec, path, trained


def exactness_error(model, batches):
    """Relative error of one exact product against float64 finite differences on a few images."""
    from .hvp import hvp_relative_error
    from .layers import make_double_differentiable
    from .losses import SoftmaxCrossEntropy
    from .task import EXACT_CHECK_SAMPLES

    images, labels = batches[0]
    sample = [(images[:EXACT_CHECK_SAMPLES], labels[:EXACT_CHECK_SAMPLES])]
    return hvp_relative_error(make_double_differentiable(model), SoftmaxCrossEntropy(), sample, n_vectors=1)


def log_spectrum(run, name, step, report):
    sink = run.metrics()
    try:
        prefix = f"hessian/{name}"
        for rank, value in enumerate(report["eigenvalues"], 1):
            sink.log(prefix, {"eigenvalue": value}, step=rank)
        fit = report["power_law"]
        headline = {"slope_ls": fit["slope_ls"], "slope_mle": fit["slope_mle"], "ks": fit["ks_mle"],
                    "ks_pvalue": fit["ks_pvalue"], "lr_exponential_z": fit["lr_exponential_z"], "r2_ls": fit["r2_ls"],
                    "is_power_law": float(fit["is_power_law"]), "lambda_max": report["eigenvalues"][0]}
        if report.get("trace"):
            headline["trace"] = report["trace"]["estimate"]
        sink.log(prefix, headline, step=step)
        sink.flush()
    finally:
        sink.close()


def compute(args):
    from tqdm import tqdm

    from .report import spectrum_report
    from .task import EXACT_CHECK_TOLERANCE, HessianTask, twice_differentiable_view

    config, run = open_run(args)
    task = HessianTask(config)
    try:
        settings = config["Hessian"]
        batches = task.hessian_batches()  # before training: a subset larger than the data fails at once
        model, spec, path, trained = load_model(task, config, run, args)
    finally:
        task.close()
    method = settings["method"]
    if method in ("exact", "ggn"):
        model = twice_differentiable_view(model)
    context = {"run_dir": run.dir, "checkpoint": path or "init (untrained, Global.seed "
               f"{config['Global']['seed']})", "model": config["Arch"]["name"],
               "data": f"{config['DataLoader']['dataset']} train, {len(batches)} x {settings['batch_size']} images "
                       f"(subset_seed {settings['subset_seed']}, no augmentation)"}
    if method == "exact" and settings["check_exact"]:
        error = exactness_error(model, batches)
        context["exact_check_relative_error"] = error
        if error > EXACT_CHECK_TOLERANCE:
            raise ConfigError(f"Hessian.method=exact: the model's double backprop is off by {error:.2g} (relative, "
                              f"vs float64 finite differences; tolerance {EXACT_CHECK_TOLERANCE:g}): some op has a wrong "
                              "double grad in paddle 2.6.2. Use -o Hessian.method=fd64")
    name, step = checkpoint_name(spec, path, run)
    out_dir = run.path(HESSIAN_DIR, name)
    k = settings["top_k"]
    max_steps = settings["lanczos"]["max_iter"] or None
    upper = (max_steps or 3 * k + 60) + settings["trace"]["products"] \
        + settings["density"]["steps"] * settings["density"]["probes"]
    show = config["Global"]["progress"] and not args.no_progress
    with tqdm(total=upper, desc=f"Hessian-vector products ({name})", disable=not show, unit="HVP") as bar:
        report = spectrum_report(
            model, batches, out_dir, method=method, top_k=k, tol=settings["lanczos"]["tol"], max_steps=max_steps,
            trace_products=settings["trace"]["products"], density_steps=settings["density"]["steps"],
            density_runs=settings["density"]["probes"],
            dtype=settings["dtype"] if method != "fd64" else None, seed=settings["seed"],
            skip_top=settings["power_law"]["skip_top"], p_threshold=settings["power_law"]["p_threshold"],
            n_bootstrap=settings["power_law"]["bootstrap"],
            progress=bar, context=context, summary=True,
            cache_graphs={"auto": None, "always": True, "never": False}[settings["keep_graphs"]],
            title=f"{config['Arch']['name']} / {config['DataLoader']['dataset']} ({name})")
    log_spectrum(run, name, step, report)
    fit = report["power_law"]
    log.info("Hessian %s: slope LS %.4f, MLE %.4f, KS %.4f (bootstrap p %.3f): %s; written to %s", name,
             fit["slope_ls"], fit["slope_mle"], fit["ks_mle"], fit["ks_pvalue"],
             "power law" if fit["is_power_law"] else "not a power law", out_dir)
    return {"out_dir": out_dir, "checkpoint": name, "top_k": len(report["eigenvalues"]),
            "lambda_max": report["eigenvalues"][0], "slope_ls": fit["slope_ls"], "slope_mle": fit["slope_mle"],
            "ks": fit["ks_mle"], "ks_pvalue": fit["ks_pvalue"], "is_power_law": fit["is_power_law"],
            "hessian_vector_products": report["hessian_vector_products"], "seconds": report["seconds"],
            "training": None if trained is None else {k: trained.get(k) for k in ("step", "best_metrics", "test")}}


def main(argv=None):
    from paddle_suite.cli import run_reporting

    args = parse_args(argv)
    result = run_reporting(lambda: compute(args))
    print(json.dumps(result))
    return result
