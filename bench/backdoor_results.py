"""Plain vs LSBA victims for BadNets and Blend on CIFAR-10 and Fashion-MNIST: the results contract.

    python bench/backdoor_results.py                 # full victims (configs as shipped; hours)
    python bench/backdoor_results.py --quick         # Fashion-MNIST only, 300 steps per victim

Each victim is one training run (``tools/train.py -c configs/lsba_<attack>_<dataset>.yaml``, the LSBA
one with ``-o Backdoor.lsba.enabled=true``) in its own process; the run writes
``<run>/report/backdoor_report.json`` (CA, ASR, target probability, STRIP AUROC, Neural Cleanse
anomaly index of the target, spectral-signature AUROC, training hours) and this script gathers the
pairs into ``bench/results/backdoor_results.json`` (the contract:
``{dataset: {attack: {"plain": {...}, "lsba": {...}}}, "machine", "date", "command"}``) and
``bench/backdoor_results.md``. ``--quick`` writes ``*_quick.json`` / ``*_quick.md`` instead, marked
``"quick": true``: numbers of victims far too short to meet the accuracy goals.
Runs are resumed when their output exists (``Global.resume: auto``), so an interrupted bench continues.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from paddle_suite.io import atomic_write  # noqa: E402  (paddle_suite.io does not import paddle)

DATASETS = {"cifar10": "cifar10", "fashion_mnist": "fmnist"}
ATTACKS = ("badnets", "blend")
VICTIMS = {"plain": [], "lsba": ["Backdoor.lsba.enabled=true"]}
QUICK = ["Global.max_steps=300", "Global.eval_every=300", "Global.save_every=300",
         "Backdoor.detectors.nc_steps=100", "Backdoor.detectors.strip_samples=300"]
FIELDS = {"ca": "ca", "asr": "asr", "target_prob": "target_prob", "strip_auroc": "strip_auroc",
          "nc_anomaly": "nc_anomaly", "spectral_auroc": "spectral_auroc", "target_margin": "target_margin",
          "train_hours": "train_hours", "p_n": "p_n"}


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    return f"{cpu}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start"


def train_victim(dataset, attack, victim, output_dir, extra):
    config = os.path.join(ROOT, "configs", f"lsba_{attack}_{DATASETS[dataset]}.yaml")
    run_name = f"{attack}_{DATASETS[dataset]}_{victim}"
    overrides = [f"Global.output_dir={output_dir}", f"Global.run_name={run_name}", *VICTIMS[victim], *extra]
    command = [sys.executable, os.path.join(ROOT, "tools", "train.py"), "-c", config, "--no-progress"]
    for item in overrides:
        command += ["-o", item]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    with open(os.path.join(output_dir, run_name, "report", "backdoor_report.json")) as handle:
        report = json.load(handle)
    return {key: report.get(source) for key, source in FIELDS.items()}


def markdown(results, quick):
    lines = ["# Backdoor victims: plain attack vs its LSBA version", ""]
    if quick:
        lines += ["**Quick run**: victims trained for 300 steps only; far from the accuracy goals "
                  "(CIFAR-10 >= 80%, Fashion-MNIST >= 90%). They show the pipeline, not the paper's claim.", ""]
    lines += [f"Machine: {results['machine']}. Date: {results['date']}. Command: `{results['command']}`.", "",
              "CA: clean test accuracy. ASR: triggered test images of other classes classified as the target. "
              "Target prob: mean target probability on them. STRIP AUROC: triggered vs clean inputs by STRIP's "
              "entropy (0.5 = undetectable). NC anomaly: Neural Cleanse anomaly index of the target class "
              "(> 2 = flagged). Spectral AUROC: poisoned vs clean training samples of the target class.", "",
              "| dataset | attack | victim | CA | ASR | target prob | margin | STRIP AUROC | NC anomaly | "
              "spectral AUROC | hours |", "|---" * 11 + "|"]
    for dataset in DATASETS:
        for attack, pair in results.get(dataset, {}).items():
            for victim, row in pair.items():
                name = f"LSBA (p_n={row['p_n']:.3f})" if victim == "lsba" else "plain"
                cells = [f"{row[k]:.3f}" if isinstance(row.get(k), (int, float)) else "-"
                         for k in ("ca", "asr", "target_prob", "target_margin", "strip_auroc", "nc_anomaly",
                                   "spectral_auroc", "train_hours")]
                lines.append(f"| {dataset} | {attack} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Fashion-MNIST only, 300 steps per victim")
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=None)
    parser.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "output", "backdoor_bench"))
    args = parser.parse_args()
    datasets = args.datasets or (["fashion_mnist"] if args.quick else list(DATASETS))
    output_dir = args.output_dir + ("_quick" if args.quick else "")
    results = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "command": " ".join(["python", "bench/backdoor_results.py", *sys.argv[1:]]), "quick": args.quick}
    for dataset in datasets:
        results[dataset] = {attack: {victim: train_victim(dataset, attack, victim, output_dir,
                                                          QUICK if args.quick else [])
                                     for victim in VICTIMS}
                            for attack in args.attacks}
    suffix = "_quick" if args.quick else ""
    with atomic_write(os.path.join(ROOT, "bench", "results", f"backdoor_results{suffix}.json")) as handle:
        json.dump(results, handle, indent=1)
    with atomic_write(os.path.join(ROOT, "bench", f"backdoor_results{suffix}.md")) as handle:
        handle.write(markdown(results, args.quick))
    print(markdown(results, args.quick))


if __name__ == "__main__":
    main()
