"""Does a trained LeNet's Hessian have a power-law top spectrum, and the same network at initialisation not?

Xie et al. (2022, arXiv:2201.13011) report that the top Hessian eigenvalues of trained networks
follow ``lambda_k ~ lambda_1 k^(-s)`` (small KS distance to the fitted power law), and that
randomly initialised networks do not. This bench checks it on real data with ``tools/hessian.py``:
for LeNet-5 on Fashion-MNIST and on MNIST, it trains the network (``--epochs``, through the engine),
then measures the top-k spectrum of the best checkpoint (``trained``) and of the same network at
initialisation (``init``: ``Hessian.checkpoint=init``, same seed, never trained), on the same fixed
``--batches x 128`` training images, exact Hessian-vector products, Lanczos to eigenvalue error
bounds of 1e-3 (relative).

Verdict: the Clauset-Shalizi-Newman goodness-of-fit test (parametric-bootstrap p-value of the KS
distance; power law when p >= 0.1), as documented in ``paddle_suite/hessian/powerlaw.py``, with the
likelihood ratio against an exponential beside it. ``--top-k`` is 300 by default: the paper fits the
top few thousand eigenvalues, and the test's power grows with k (at k = 100 the first version's
asymptotic KS test passed both trained and initial networks); 300 is what the 2-core machine measures
in the time box (up to 960 Lanczos steps per spectrum). The same fit is also reported on the top 50,
100 and 200 of each spectrum (``by_k``), so the dependence on k is visible.

Each tool call is a subprocess (so this process never imports paddle, and each measurement starts
clean). Outputs (written atomically; the full run only):

* ``bench/results/hessian_results.json``: ``{"fmnist_lenet": {"trained": {"slope":.., "ks":..,
  "top_k":.., ...}, "init": {...}}, "mnist_lenet": {...}, "machine":.., "date":.., "command":..}``
  (``slope`` is the least-squares log-log slope, the paper's; ``slope_mle`` and the KS threshold too);
* ``bench/results/hessian/``: per model and state the rank-spectrum PNG, and one figure with both
  spectra per data set;
* ``bench/hessian_results.md``: the table and the figures.

``--render`` rewrites the markdown and the two-spectra figures from the JSON. ``--quick`` (a few minutes): 60 training steps, top-20, one batch, no trace or density, nothing
written outside ``bench/results/tmp``. Both print ``RESULT {json}`` last.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from paddle_suite.io import atomic_directory, atomic_write  # noqa: E402  (no paddle import)

RESULTS_JSON = REPO / "bench" / "results" / "hessian_results.json"
RESULTS_MD = REPO / "bench" / "hessian_results.md"
FIGURES = REPO / "bench" / "results" / "hessian"
WORK = REPO / "bench" / "results" / "tmp" / "hessian_results"
MODELS = {"fmnist_lenet": "configs/hessian_lenet_fmnist.yaml", "mnist_lenet": "configs/hessian_lenet_mnist.yaml"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small and fast; writes nothing outside bench/results/tmp")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (full run)")
    parser.add_argument("--top-k", type=int, default=300)
    parser.add_argument("--batches", type=int, default=2, help="batches of 128 training images")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--render", action="store_true", help="rewrite the markdown from the results JSON only")
    return parser.parse_args(argv)


def tool_overrides(args, run_root):
    common = [f"Global.output_dir={run_root}", f"Hessian.top_k={args.top_k}", f"Hessian.num_batches={args.batches}"]
    if args.quick:
        return common + ["Global.max_steps=60", "Global.eval_every=60", "Global.test_split=null", "Hessian.trace.products=0",
                         "Hessian.density.steps=0"]
    return common + [f"Global.epochs={args.epochs}"]


def run_tool(config, overrides, extra=()):
    """Run tools/hessian.py; return its JSON summary line and the wall seconds."""
    command = [sys.executable, "tools/hessian.py", "-c", config, "--no-progress", *extra]
    for item in overrides:
        command += ["-o", item]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), time.perf_counter() - started, " ".join(command[1:])


def measure(args, key, run_root):
    config = MODELS[key]
    overrides = tool_overrides(args, run_root)
    trained, trained_s, command = run_tool(config, overrides)
    init, init_s, _ = run_tool(config, overrides + ["Hessian.checkpoint=init"], ["--no-train"])
    entry = {"command": command}
    for state, summary, seconds in (("trained", trained, trained_s), ("init", init, init_s)):
        spectrum = json.loads((Path(summary["out_dir"]) / "spectrum.json").read_text())
        fit = spectrum["power_law"]
        entry[state] = {
            "slope": fit["slope_ls"], "r2": fit["r2_ls"], "slope_mle": fit["slope_mle"], "ks": fit["ks_mle"],
            "ks_ls": fit["ks_ls"], "ks_pvalue": fit["ks_pvalue"], "p_threshold": fit["p_threshold"],
            "lr_exponential": fit["lr_exponential"], "lr_exponential_z": fit["lr_exponential_z"],
            "lr_exponential_pvalue": fit["lr_exponential_pvalue"], "is_power_law": fit["is_power_law"],
            "by_k": fits_by_k(spectrum["eigenvalues"], spectrum["settings"]["seed"]),
            "top_k": fit["k"], "lambda_max": spectrum["eigenvalues"][0], "lambda_k": spectrum["eigenvalues"][-1],
            "all_converged": spectrum["all_converged"], "trace": (spectrum.get("trace") or {}).get("estimate"),
            **bound_summary(spectrum),
            "hessian_vector_products": spectrum["hessian_vector_products"], "spectrum_seconds": spectrum["seconds"],
            "wall_seconds_with_training": seconds, "exact_check_relative_error": spectrum.get("exact_check_relative_error"),
            "eigenvalues": spectrum["eigenvalues"], "out_dir": summary["out_dir"],
        }
    training = trained["training"] or {}
    entry["trained"]["training"] = {"steps": training.get("step"), "valid_metrics": training.get("best_metrics"),
                                    "test_metrics": training.get("test")}
    return entry


def bound_summary(spectrum):
    """The largest relative eigenvalue error bound and the ranks whose bound is above the Lanczos tolerance."""
    relative = [bound / abs(value) for value, bound in zip(spectrum["eigenvalues"], spectrum["error_bounds"])]
    tol = spectrum["settings"]["tol"]
    return {"max_relative_error_bound": max(relative),
            "unconverged_ranks": [rank for rank, bound in enumerate(relative, 1) if bound > tol]}


def fits_by_k(eigenvalues, seed):
    """The power-law fit on the top 50, 100, 200 (those below the measured k) of one spectrum."""
    from paddle_suite.hessian.powerlaw import fit_power_law  # imports paddle: after the tool subprocesses

    fits = {}
    for k in (50, 100, 200):
        if k < len(eigenvalues):
            fit = fit_power_law(eigenvalues[:k], seed=seed)
            fits[str(k)] = {"slope": fit.slope_ls, "r2": fit.r2_ls, "ks": fit.ks_mle, "ks_pvalue": fit.ks_pvalue,
                            "lr_exponential_z": fit.lr_exponential_z, "is_power_law": fit.is_power_law}
    return fits


def both_spectra_figure(key, entry, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, axis = plt.subplots(figsize=(5, 4))
    try:
        for state, style in (("trained", "o"), ("init", "s")):
            values = np.asarray(entry[state]["eigenvalues"])
            values = np.sort(values[values > 0])[::-1]
            ranks = np.arange(1, len(values) + 1)
            (points,) = axis.loglog(ranks, values, style, markersize=3,
                                    label=f"{state}: s = {entry[state]['slope']:.2f}, KS {entry[state]['ks']:.3f}, "
                                          f"p {entry[state]['ks_pvalue']:.2f}")
            line = ranks ** -entry[state]["slope"]  # the LS line: its intercept is the mean log residual
            axis.loglog(ranks, line * np.exp(np.mean(np.log(values) - np.log(line))), "-", linewidth=1,
                        color=points.get_color())
        axis.set_xlabel("rank k")
        axis.set_ylabel("eigenvalue")
        axis.set_title(f"{key}: top-{entry['trained']['top_k']} Hessian eigenvalues "
                       f"(power law when bootstrap p >= {entry['trained']['p_threshold']:g})", fontsize=9)
        axis.legend(fontsize=8)
        with atomic_write(path, "wb") as handle:
            figure.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(figure)


def _verdict(row):
    return "**power law**" if row["is_power_law"] else "not a power law"


def markdown(result, args):
    lines = [
        "# Power-law Hessian spectra of LeNet on real data (Xie et al. 2022)", "",
        f"`{result['command']}` ({result['date']}, {result['machine']['cpus']} cores, load average "
        f"{result['machine']['load_average_at_start'][0]:.1f} at start, "
        f"{max(result['machine']['load_average_at_end']):.1f} at most at the end (the machine was shared): "
        f"{result['wall_seconds'] / 60:.1f} min wall).", "",
        f"LeNet-5 (61,706 parameters) trained {args.epochs} epochs with the `lenet_fmnist.yaml` recipe (Adam, cosine, "
        "crop/flip augmentation; no flips for MNIST), best checkpoint by valid top-1; `init` is the same network at "
        "its initialisation (same seed, never trained). Hessian of the mean cross-entropy on the same fixed "
        f"{args.batches} x 128 training images (no augmentation), exact Hessian-vector products (checked against "
        "float64 finite differences before each run), top-k by Lanczos to eigenvalue error bounds of 1e-3 |lambda|. "
        "Slope: least squares in log-log (the paper's fit); MLE slope, KS distance, its bootstrap p-value and the "
        "likelihood ratio against an exponential as in `paddle_suite/hessian/powerlaw.py`. **Verdict: power law when "
        "the bootstrap p >= 0.1** (Clauset, Shalizi & Newman 2009's rule, not chosen on these data). The LR column is "
        "the normalised log-likelihood ratio power law vs exponential (> 0 favours the power law) and its p-value.", "",
        "| model | state | valid / test top-1 | lambda_1 | lambda_k | slope (LS) | R^2 | slope (MLE) | KS | p (bootstrap) "
        "| LR vs exp. z (p) | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key in args.models:
        for state in ("trained", "init"):
            row = result[key][state]
            training = row.get("training", {})
            accuracy = "-"
            if training:
                valid = (training.get("valid_metrics") or {}).get("top1")
                test = (training.get("test_metrics") or {}).get("top1")
                accuracy = f"{valid:.3f} / {test:.3f}" if valid is not None and test is not None else f"{valid}"
            lines.append(f"| {key} | {state} | {accuracy} | {row['lambda_max']:.4g} | {row['lambda_k']:.4g} | "
                         f"{row['slope']:.3f} | {row['r2']:.3f} | {row['slope_mle']:.3f} | {row['ks']:.3f} | "
                         f"{row['ks_pvalue']:.3f} | {row['lr_exponential_z']:+.2f} ({row['lr_exponential_pvalue']:.2g}) "
                         f"| {_verdict(row)} |")
    sizes = sorted({int(k) for key in args.models for state in ("trained", "init") for k in result[key][state]["by_k"]})
    if sizes:
        lines += ["", "The same fit on the top 50 / 100 / 200 of each spectrum (slope LS; KS; bootstrap p; verdict):", "",
                  "| model | state | " + " | ".join(f"top-{k}" for k in sizes) + f" | top-{args.top_k} |",
                  "| --- | --- | " + " | ".join("---" for _ in sizes) + " | --- |"]
        for key in args.models:
            for state in ("trained", "init"):
                row = result[key][state]
                cells = [row["by_k"][str(k)] for k in sizes] + [row]
                lines.append(f"| {key} | {state} | " + " | ".join(
                    f"{cell['slope']:.2f}; {cell['ks']:.3f}; p {cell['ks_pvalue']:.2f}; "
                    f"{'PL' if cell['is_power_law'] else 'not'}" for cell in cells) + " |")
    lines += ["", "What the numbers say (generated from them):", ""]
    for key in args.models:
        trained, init = result[key]["trained"], result[key]["init"]
        separated = trained["is_power_law"] and not init["is_power_law"]
        lines.append(
            f"- {key}: trained {_verdict(trained).strip('*')} (p {trained['ks_pvalue']:.3f}), init "
            f"{_verdict(init).strip('*')} (p {init['ks_pvalue']:.3f}): the paper's contrast "
            + ("**is reproduced** by the verdict" if separated else "is **not** reproduced by the verdict")
            + f". LS slope {trained['slope']:.2f} trained vs {init['slope']:.2f} at init "
            f"(MLE {trained['slope_mle']:.2f} vs {init['slope_mle']:.2f}); lambda_1 / lambda_k "
            f"{trained['lambda_max'] / trained['lambda_k']:.0f} vs {init['lambda_max'] / init['lambda_k']:.0f}; "
            f"LR vs exponential z {trained['lr_exponential_z']:+.2f} vs {init['lr_exponential_z']:+.2f}.")
    slopes = {state: [result[key][state]["slope"] for key in args.models] for state in ("trained", "init")}
    every = all(result[k]["trained"]["is_power_law"] and not result[k]["init"]["is_power_law"] for k in args.models)
    lines += ["", f"Reading: at top-{args.top_k} the goodness-of-fit verdict (threshold from CSN, not tuned) "
              f"{'separates' if every else 'does not separate'} trained from initial networks on every data set here; "
              f"the log-log slope {'does' if min(slopes['trained']) > max(slopes['init']) else 'does not either'} "
              f"(trained {min(slopes['trained']):.2f}-{max(slopes['trained']):.2f}, init "
              f"{min(slopes['init']):.2f}-{max(slopes['init']):.2f}). One training seed, one image subset per data set.", ""]
    sizes_all = sizes + [args.top_k]

    def cell(key, state, k):
        return result[key][state] if k == args.top_k else result[key][state]["by_k"][str(k)]

    separating = [k for k in sizes_all if all(cell(key, "trained", k)["is_power_law"]
                                              and not cell(key, "init", k)["is_power_law"] for key in args.models)]
    lr_separates = all(result[key]["trained"]["lr_exponential_pvalue"] < 0.05 <= result[key]["init"]["lr_exponential_pvalue"]
                       for key in args.models)
    closest = min((abs(cell(key, state, args.top_k)["ks_pvalue"] - 0.1), key, state)
                  for key in args.models for state in ("trained", "init"))
    lines += [f"Over k: the verdict separates the two states on every data set at top-"
              f"{', '.join(str(k) for k in separating) or 'none'} of {', '.join(str(k) for k in sizes_all)}; "
              f"the p-value nearest the threshold at top-{args.top_k} is {closest[1]} {closest[2]} "
              f"(p {cell(closest[1], closest[2], args.top_k)['ks_pvalue']:.3f}). The likelihood ratio against an "
              f"exponential {'favours the power law at the 5% level for every trained spectrum and for no initial one' if lr_separates else 'does not split the states at the 5% level'} "
              f"at top-{args.top_k}.",
              "", "Lanczos (products include the trace's and the density's; tolerance 1e-3 on the relative eigenvalue "
              "error bound, at most 3k + 60 steps): " + "; ".join(
                  f"{key} {state} {result[key][state]['hessian_vector_products']} products, "
                  + ("all converged" if not result[key][state]["unconverged_ranks"] else
                     f"ranks {', '.join(map(str, result[key][state]['unconverged_ranks']))} not converged "
                     f"(largest bound {result[key][state]['max_relative_error_bound']:.1g})")
                  for key in args.models for state in ("trained", "init")) + "."]
    lines += ["", "Figures (both spectra per data set, and each run's own rank plot with its fits):", ""]
    for key in args.models:
        lines.append(f"![{key}](results/hessian/{key}_spectra.png)")
    lines.append("")
    for key in args.models:
        lines.append(f"- {key}: " + ", ".join(f"[{state}](results/hessian/{key}_{state}_rank_spectrum.png)"
                                              for state in ("trained", "init")))
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    if args.render:  # the markdown again from the results JSON (no measurement)
        result = json.loads(RESULTS_JSON.read_text())
        for name, value in result.get("settings", {}).items():
            setattr(args, name, value)
        with atomic_write(RESULTS_MD) as handle:
            handle.write(markdown(result, args))
        for key in args.models:
            both_spectra_figure(key, result[key], FIGURES / f"{key}_spectra.png")
        return
    if args.quick:
        args.top_k, args.batches = min(args.top_k, 20), 1
    run_root = WORK / ("quick" if args.quick else "full")
    if run_root.exists():
        shutil.rmtree(run_root)  # fresh runs: an old checkpoint would be reused instead of training
    started = time.perf_counter()
    load_start = os.getloadavg()
    result = {}
    for key in args.models:
        result[key] = measure(args, key, run_root)
        print(f"{key}: trained slope {result[key]['trained']['slope']:.3f} KS {result[key]['trained']['ks']:.3f}; "
              f"init slope {result[key]['init']['slope']:.3f} KS {result[key]['init']['ks']:.3f}", flush=True)
    result["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                         "load_average_at_start": load_start, "load_average_at_end": os.getloadavg()}
    result["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    result["command"] = "python bench/hessian_results.py" + (" --quick" if args.quick else "") + \
        ("" if args.quick else f" --epochs {args.epochs} --top-k {args.top_k} --batches {args.batches}")
    result["wall_seconds"] = time.perf_counter() - started
    result["settings"] = {"epochs": args.epochs, "top_k": args.top_k, "batches": args.batches, "models": args.models}
    if not args.quick:
        with atomic_directory(FIGURES) as figures:
            for key in args.models:
                for state in ("trained", "init"):
                    shutil.copy(Path(result[key][state]["out_dir"]) / "rank_spectrum.png",
                                Path(figures) / f"{key}_{state}_rank_spectrum.png")
                both_spectra_figure(key, result[key], Path(figures) / f"{key}_spectra.png")
        for key in args.models:
            for state in ("trained", "init"):
                result[key][state]["out_dir"] = os.path.relpath(result[key][state]["out_dir"], REPO)
        with atomic_write(RESULTS_JSON) as handle:
            json.dump(result, handle, indent=1)
        with atomic_write(RESULTS_MD) as handle:
            handle.write(markdown(result, args))
    headline = {key: {state: {k: result[key][state][k] for k in ("slope", "slope_mle", "ks", "ks_pvalue",
                                                                 "is_power_law", "top_k")}
                      for state in ("trained", "init")} for key in args.models}
    print("RESULT " + json.dumps({**headline, "machine": result["machine"], "date": result["date"],
                                  "command": result["command"]}))


if __name__ == "__main__":
    main()
