"""Plain vs LSBA victims for BadNets and Blend on CIFAR-10 and Fashion-MNIST: the results contract.

    python bench/backdoor_results.py --datasets fashion_mnist --output-dir /work/runs/backdoor_bench
    python bench/backdoor_results.py --datasets cifar10 --output-dir /work/runs/backdoor_bench   # ~7 CPU h
    python bench/backdoor_results.py --quick         # Fashion-MNIST only, 300 steps per victim

Each victim is one training run (``tools/train.py -c configs/lsba_<attack>_<dataset>.yaml``, the LSBA
one with ``-o Backdoor.lsba.enabled=true``) in its own process; the run writes
``<run>/report/backdoor_report.json`` (CA, ASR, target probability, STRIP AUROC, Neural Cleanse
anomaly index of the target, spectral-signature AUROC, wall and CPU training hours) and this script
gathers the pairs into ``bench/results/backdoor_results.json`` (the contract:
``{dataset: {attack: {"plain": {...}, "lsba": {...}}}, "machine", "date", "command"}``) and
``bench/backdoor_results.md``. Neural Cleanse runs once per ``Backdoor.detectors.nc_seeds`` entry (the
configs' list, or ``--nc-seeds``): one run's anomaly index moves by 0.3-0.5 with its seed, so the table
gives the mean +- standard deviation over the runs, and a section lists every victim's reversed-trigger
mask L1 per class (mean over the runs) and the target's index per run. The hand-written analysis in
``bench/backdoor_results_notes.md`` (if present) is appended to the markdown. Fashion-MNIST also trains a stacked LSBA victim (BadNets, 2 triggers)
and records its target probability per number of active triggers against the design
(``bench/results/backdoor_stacking.json``, a section of the markdown).

Resumable and additive: a victim whose report exists is read, not retrained (delete its run folder
to retrain it); an interrupted run continues from its checkpoint (``Global.resume: auto``); the JSON
is rewritten after every victim and keeps the datasets and attacks this invocation does not run
(``provenance`` says which machine, date and command produced each dataset). ``--quick`` writes
``*_quick.json`` / ``*_quick.md`` instead, marked ``"quick": true``: numbers of victims far too short
to meet the accuracy goals.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from paddle_suite.io import atomic_write  # noqa: E402  (paddle_suite.io does not import paddle)

DATASETS = {"cifar10": "cifar10", "fashion_mnist": "fmnist"}
ATTACKS = ("badnets", "blend")
VICTIMS = {"plain": [], "lsba": ["Backdoor.lsba.enabled=true"]}
# the stacked victim: BadNets patches in two corners, each poisoned sample carrying one or both
STACKED = {"attack": "badnets", "n": 2, "overrides": ["Backdoor.lsba.enabled=true", "Backdoor.lsba.n_triggers=2"]}
QUICK = ["Global.max_steps=300", "Global.eval_every=300", "Global.save_every=300",
         "Backdoor.detectors.nc_epochs=30", "Backdoor.detectors.nc_seeds=[1]", "Backdoor.detectors.strip_samples=300"]
FIELDS = ("ca", "asr", "target_prob", "strip_auroc", "nc_anomaly", "spectral_auroc", "target_margin", "train_hours",
          "train_cpu_hours", "p_n", "margin", "designed_target_prob", "target_prob_quantiles", "nc_anomaly_std",
          "nc_anomaly_seeds", "nc_flagged_share", "nc_target_l1", "nc_median_l1")
COLUMNS = ("ca", "asr", "target_prob", "target_margin", "strip_auroc", "nc_anomaly", "spectral_auroc", "train_hours",
           "train_cpu_hours")


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    return f"{cpu}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start"


def train_victim(config_name, run_name, output_dir, overrides):
    """``(report, trained)``: the report of one victim run, training it first unless its report exists."""
    report_path = os.path.join(output_dir, run_name, "report", "backdoor_report.json")
    trained = not os.path.exists(report_path)
    if trained:
        command = [sys.executable, os.path.join(ROOT, "tools", "train.py"), "-c",
                   os.path.join(ROOT, "configs", config_name), "--no-progress"]
        for item in [f"Global.output_dir={output_dir}", f"Global.run_name={run_name}", *overrides]:
            command += ["-o", item]
        print("+", " ".join(command), flush=True)
        subprocess.run(command, check=True, cwd=ROOT)
    else:
        print(f"= {report_path} exists: reused", flush=True)
    with open(report_path) as handle:
        return json.load(handle), trained


def load(path):
    if os.path.exists(path):
        with open(path) as handle:
            return json.load(handle)
    return {}


def save(path, payload):
    with atomic_write(path) as handle:
        json.dump(payload, handle, indent=1)


def cell(value):
    return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def markdown(results, stacking, quick):
    lines = ["# Backdoor victims: plain attack vs its LSBA version", ""]
    if quick:
        lines += ["**Quick run**: victims trained for 300 steps only; far from the accuracy goals "
                  "(CIFAR-10 >= 80%, Fashion-MNIST >= 90%). They show the pipeline, not the paper's claim.", ""]
    for dataset, origin in results.get("provenance", {}).items():
        lines.append(f"- {dataset}: {origin['machine']}; {origin['date']}; `{origin['command']}`")
    lines += ["", "CA: clean test accuracy. ASR: triggered test images of other classes classified as the target. "
              "Target prob: mean target probability on them; margin: its mean lead over the strongest other class. "
              "STRIP AUROC: triggered vs clean inputs scored by STRIP's low entropy (1 = STRIP flags them all, "
              "0.5 = chance). Well below 0.5 means the triggered inputs have *higher* entropy than clean ones: "
              "STRIP as published passes them, but a test on high entropy would separate them with AUROC "
              "1 minus the figure. NC anomaly: Neural Cleanse anomaly "
              "index of the target class (> 2 = flagged; below 0 = the target's mask is larger than the median "
              "class's), mean +- standard deviation over the NC runs (their number in brackets). Spectral AUROC: poisoned vs clean training samples of "
              "the target class. Hours: wall-clock training time on the shared machine; CPU hours: CPU time of the "
              "training process and its loader workers (what one idle core would take; the budget is 1.5).", "",
              "| dataset | attack | victim | CA | ASR | target prob | margin | STRIP AUROC | NC anomaly | "
              "spectral AUROC | hours | CPU hours |", "|---" * 12 + "|"]
    for dataset in DATASETS:
        for attack, pair in results.get(dataset, {}).items():
            for victim, row in pair.items():
                name = "plain"
                if victim == "lsba":
                    designed = (row.get("designed_target_prob") or {}).get("1")
                    name = f"LSBA (designed {cell(designed)}, margin {cell(row.get('margin'))})"
                cells = [nc_cell(row) if k == "nc_anomaly" else cell(row.get(k)) for k in COLUMNS]
                lines.append(f"| {dataset} | {attack} | {name} | " + " | ".join(cells) + " |")
    lines += nc_section(results)
    if stacking:
        lines += ["", "## Stacked LSBA: target probability per number of active triggers", "",
                  "| dataset | attack | active triggers | designed target prob | measured target prob | ASR |",
                  "|---|---|---|---|---|---|"]
        for dataset, entry in stacking.items():
            for k, designed in entry["designed_target_prob"].items():
                measured, asr = entry["target_prob_by_active"][k], entry["asr_by_active"][k]
                lines.append(f"| {dataset} | {entry['attack']} | {k} of {entry['n']} | {designed:.3f} | "
                             f"{measured:.3f} | {asr:.3f} |")
    return "\n".join(lines) + "\n"


def nc_cell(row):
    """``mean +- std (runs)`` of the target's NC anomaly index."""
    runs = row.get("nc_anomaly_seeds") or []
    if row.get("nc_anomaly_std") is None:
        return cell(row.get("nc_anomaly"))
    return f"{row['nc_anomaly']:.2f} +- {row['nc_anomaly_std']:.2f} ({len(runs)})"


def nc_mask_l1(report):
    """Mean reversed-trigger mask L1 per class over a report's Neural Cleanse runs (or None)."""
    runs = report.get("neural_cleanse")
    if not isinstance(runs, list) or not runs:
        return None
    return [float(x) for x in np.mean([r["mask_l1"] for r in runs], axis=0)]


def nc_section(results):
    """Per victim: the target's index per NC run, how often NC flags it, and every class's mask L1."""
    rows = [(dataset, attack, victim, row) for dataset in DATASETS for attack, pair in results.get(dataset, {}).items()
            for victim, row in pair.items() if row.get("nc_mask_l1")]
    if not rows:
        return []
    k = len(rows[0][3]["nc_mask_l1"])
    lines = ["", "## Neural Cleanse per class", "",
             "Reversed-trigger mask L1 (the mask summed over the pixels) per class, mean over the NC runs; the target is "
             "class 0. Target/median: the target's mask over the median class's. Index per run: the target's "
             "anomaly index in each run (seeds in the JSON); flagged: share of runs with index > 2.", "",
             "| dataset | attack | victim | index per run | flagged | target/median | "
             + " | ".join(f"L1 class {c}" for c in range(k)) + " |", "|---" * (6 + k) + "|"]
    for dataset, attack, victim, row in rows:
        per_run = ", ".join(f"{x:.2f}" for x in row.get("nc_anomaly_seeds") or [])
        ratio = row["nc_target_l1"] / row["nc_median_l1"] if row.get("nc_median_l1") else None
        lines.append(f"| {dataset} | {attack} | {victim} | {per_run} | {cell(row.get('nc_flagged_share'))} | "
                     f"{cell(ratio)} | " + " | ".join(f"{x:.1f}" for x in row["nc_mask_l1"]) + " |")
    return lines


def stacked_entry(report, n):
    by_k = {str(k): (report[f"target_prob_k{k}"], report[f"asr_k{k}"]) for k in range(1, n)}
    by_k[str(n)] = (report["target_prob"], report["asr"])
    return {"attack": report["attack"], "n": n, "ca": report["ca"], "designed_target_prob":
            report["designed_target_prob"], "target_prob_by_active": {k: v[0] for k, v in by_k.items()},
            "asr_by_active": {k: v[1] for k, v in by_k.items()}, "train_cpu_hours": report["train_cpu_hours"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Fashion-MNIST only, 300 steps per victim")
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=None)
    parser.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "output", "backdoor_bench"))
    parser.add_argument("--nc-seeds", type=int, nargs="+", default=None,
                        help="Neural Cleanse runs per victim (default: the configs' Backdoor.detectors.nc_seeds)")
    args = parser.parse_args()
    datasets = args.datasets or (["fashion_mnist"] if args.quick else list(DATASETS))
    output_dir = args.output_dir + ("_quick" if args.quick else "")
    suffix = "_quick" if args.quick else ""
    results_path = os.path.join(ROOT, "bench", "results", f"backdoor_results{suffix}.json")
    stacking_path = os.path.join(ROOT, "bench", "results", f"backdoor_stacking{suffix}.json")
    results, stacking = load(results_path), load(stacking_path)
    origin = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": " ".join(["python", "bench/backdoor_results.py", *sys.argv[1:]])}
    results["quick"] = args.quick
    extra = QUICK if args.quick else []
    if args.nc_seeds:
        extra = [*extra, f"Backdoor.detectors.nc_seeds=[{', '.join(map(str, args.nc_seeds))}]"]

    def record(dataset, trained):  # provenance names the invocation that trained a dataset's victims
        if trained or dataset not in results.setdefault("provenance", {}):
            results.update(origin)
            results["provenance"][dataset] = origin

    for dataset in datasets:
        for attack in args.attacks:
            for victim, overrides in VICTIMS.items():
                report, trained = train_victim(f"lsba_{attack}_{DATASETS[dataset]}.yaml",
                                               f"{attack}_{DATASETS[dataset]}_{victim}", output_dir,
                                               [*overrides, *extra])
                record(dataset, trained)
                row = {k: report.get(k) for k in FIELDS}
                row["nc_mask_l1"] = nc_mask_l1(report)
                results.setdefault(dataset, {}).setdefault(attack, {})[victim] = row
                save(results_path, results)
        if dataset == "fashion_mnist" and STACKED["attack"] in args.attacks:
            report, trained = train_victim(f"lsba_{STACKED['attack']}_{DATASETS[dataset]}.yaml",
                                           f"{STACKED['attack']}_{DATASETS[dataset]}_lsba_n{STACKED['n']}",
                                           output_dir, [*STACKED["overrides"], *extra])
            record(dataset, trained)
            stacking[dataset] = stacked_entry(report, STACKED["n"])
            save(stacking_path, stacking)
    text = markdown(results, stacking, args.quick)
    notes = os.path.join(ROOT, "bench", "backdoor_results_notes.md")
    if not args.quick and os.path.exists(notes):
        with open(notes) as handle:
            text += "\n" + handle.read()
    with atomic_write(os.path.join(ROOT, "bench", f"backdoor_results{suffix}.md")) as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
