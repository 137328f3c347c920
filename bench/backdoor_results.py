"""Plain vs LSBA victims for BadNets and Blend on CIFAR-10 and Fashion-MNIST: the results contract.

    python bench/backdoor_results.py --datasets fashion_mnist --output-dir /work/runs/backdoor_bench
    python bench/backdoor_results.py --datasets cifar10 --output-dir /work/runs/backdoor_bench   # ~5.5 CPU h
    python bench/backdoor_results.py --quick         # Fashion-MNIST only, 300 steps per victim
    python bench/backdoor_results.py --datasets fashion_mnist --seeds 42 1 2 --output-dir /work/runs/backdoor_bench
                                                     # 3 victims per arm (42 = the configs' Global.seed, reused)

Each victim is one training run (``tools/train.py -c configs/lsba_<attack>_<dataset>.yaml``, the LSBA
one with ``-o Backdoor.lsba.enabled=true``) in its own process; the run writes
``<run>/report/backdoor_report.json`` (CA, ASR, target probability, STRIP AUROC, Neural Cleanse
anomaly index of the target, spectral-signature AUROC, wall and CPU training hours) and this script
gathers the pairs into ``bench/results/backdoor_results.json`` (the contract:
``{dataset: {attack: {"plain": {...}, "lsba": {...}}}, "machine", "date", "command"}``) and
``bench/backdoor_results.md``. Neural Cleanse runs once per ``Backdoor.detectors.nc_seeds`` entry (the
configs' list, or ``--nc-seeds``): one run's anomaly index moves by 0.3-0.5 with its seed, so a victim's
index is the mean +- standard deviation over its runs, and a section lists every arm's reversed-trigger
mask L1 per class (mean over the runs) and the target's index per run.

Victims (``--seeds``, training seeds as ``Global.seed``; default: the configs' seed): one victim's NC index
also moves with its training noise, which the NC runs do not sample, so each arm can be trained with several
seeds. ``Backdoor.seed`` (which samples are poisoned) stays the configs', so the plain and LSBA victims of
one seed share initialisation, batch order and poisoned samples: only the labels of the poisoned samples
differ, and the markdown gives LSBA minus plain seed by seed. A victim of the configs' seed keeps the run
folder ``<attack>_<data>_<arm>`` (runs made before ``--seeds`` count as that seed); another seed's folder
ends in ``_seed<S>``. The stacked victim is trained with the configs' seed only (its question is the design,
not plain vs LSBA).

Each arm's row (``{dataset: {attack: {arm: row}}}``) keeps the contract's keys as the **mean over its
victims** and adds, per victim, ``victim_seeds`` (the order of every list below), ``<key>_victims`` and
``<key>_victims_std`` (standard deviation over the victims, ddof=1; None for one victim) for CA, ASR, target
probability and margin, STRIP AUROC, NC anomaly and spectral AUROC, and ``victims`` (``{seed: that
victim's fields, with the command and date that recorded it}``). The +- figures, and what they are over:
``nc_anomaly_victims_std`` is over victims (training noise plus detector noise); ``nc_anomaly_std`` stays
over NC runs (detector noise): the root-mean-square of each victim's standard deviation over its NC runs,
so for one victim it is that victim's; ``nc_anomaly_seeds`` lists every NC run's index, victim after victim
(``victims[seed]["nc_anomaly_seeds"]`` per victim) and ``nc_flagged_share`` is the share of them above 2;
``nc_mask_l1`` / ``nc_target_l1`` / ``nc_median_l1`` and ``target_prob_quantiles`` are means over the victims.
The hand-written analysis in ``bench/backdoor_results_notes.md`` (if present) is appended to the markdown.
Fashion-MNIST also trains a stacked LSBA victim (BadNets, 2 triggers) and records its target probability per
number of active triggers against the design (``bench/results/backdoor_stacking.json``, a section of the
markdown).

Resumable and additive: a victim whose report exists is read, not retrained (delete its run folder
to retrain it); an interrupted run continues from its checkpoint (``Global.resume: auto``); the JSON
is rewritten after every victim and keeps the datasets, attacks and victim seeds this invocation does not
run (``provenance`` says which machine, date and command last trained victims of each dataset; each
victim keeps the command and date of the invocation that trained it, or first recorded it). ``--quick``
writes ``*_quick.json`` / ``*_quick.md`` instead, marked ``"quick": true``: numbers of victims far too short
to meet the accuracy goals. ``--results`` / ``--markdown`` write elsewhere (the stacking JSON goes next to
``--results``).
"""
import argparse
import functools
import json
import os
import platform
import shlex
import subprocess
import sys
import time

import numpy as np
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from paddle_suite.io import atomic_write  # noqa: E402  (paddle_suite.io does not import paddle)

DATASETS = {"cifar10": "cifar10", "fashion_mnist": "fmnist"}
ATTACKS = ("badnets", "blend")
ARMS = {"plain": [], "lsba": ["Backdoor.lsba.enabled=true"]}
# the stacked victim: BadNets patches in two corners, each poisoned sample carrying one or both
STACKED = {"attack": "badnets", "n": 2, "overrides": ["Backdoor.lsba.enabled=true", "Backdoor.lsba.n_triggers=2"]}
QUICK = ["Global.max_steps=300", "Global.eval_every=300", "Global.save_every=300",
         "Backdoor.detectors.nc_epochs=30", "Backdoor.detectors.nc_seeds=[1]", "Backdoor.detectors.strip_samples=300"]
FIELDS = ("ca", "asr", "target_prob", "strip_auroc", "nc_anomaly", "spectral_auroc", "target_margin", "train_hours",
          "train_cpu_hours", "p_n", "margin", "designed_target_prob", "target_prob_quantiles", "nc_anomaly_std",
          "nc_anomaly_seeds", "nc_flagged_share", "nc_target_l1", "nc_median_l1")
# listed per victim (``<key>_victims``) with their spread over the victims; the row holds their mean
VICTIM_STATS = ("ca", "asr", "target_prob", "target_margin", "strip_auroc", "nc_anomaly", "spectral_auroc")
MEAN_ONLY = ("train_hours", "train_cpu_hours", "nc_target_l1", "nc_median_l1")
DESIGN = ("p_n", "margin", "designed_target_prob")  # the arm's label design, the same for all its victims
PROVENANCE = ("machine", "date", "command")
COLUMNS = ("ca", "asr", "target_prob", "target_margin", "strip_auroc", "nc_anomaly", "spectral_auroc", "train_hours",
           "train_cpu_hours")


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    return f"{cpu}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start"


def config_name(attack, dataset):
    return f"lsba_{attack}_{DATASETS[dataset]}.yaml"


@functools.lru_cache(maxsize=None)
def config_seed(config):
    """``Global.seed`` of ``configs/<config>`` after its ``_BASE_`` chain: the default victim seed."""
    from paddle_suite.config import load_config  # imports paddle (the task registry): only when needed
    return load_config(os.path.join(ROOT, "configs", config))["Global"]["seed"]


def run_name(attack, dataset, arm, seed):
    """A victim's run folder; the configs' seed keeps the name its runs had before ``--seeds``."""
    base = f"{attack}_{DATASETS[dataset]}_{arm}"
    return base if seed == config_seed(config_name(attack, dataset)) else f"{base}_seed{seed}"


def seed_overrides(config, seed):
    # the configs' own seed is not spelled out, so its runs from before --seeds resume with the same overrides
    return [] if seed == config_seed(config) else [f"Global.seed={seed}"]


def run_training(command):
    """One victim's ``tools/train.py`` process (its own process: paddle state does not leak between victims)."""
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def check_run_seed(run_dir, seed):
    """Refuse a run folder whose saved config has another ``Global.seed`` (e.g. a folder renamed by hand)."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(path):
        return
    with open(path) as handle:
        saved = ((yaml.safe_load(handle) or {}).get("Global") or {}).get("seed")
    if saved is not None and saved != seed:
        raise SystemExit(f"{path}: Global.seed is {saved}, but this folder is the victim of seed {seed}; "
                         "move the folder aside")


def train_victim(config, run, output_dir, overrides, seed):
    """``(report, trained)``: the report of one victim run, training it first unless its report exists."""
    run_dir = os.path.join(output_dir, run)
    report_path = os.path.join(run_dir, "report", "backdoor_report.json")
    trained = not os.path.exists(report_path)
    if trained:
        command = [sys.executable, os.path.join(ROOT, "tools", "train.py"), "-c",
                   os.path.join(ROOT, "configs", config), "--no-progress"]
        for item in [f"Global.output_dir={output_dir}", f"Global.run_name={run}", *overrides]:
            command += ["-o", item]
        run_training(command)
    else:
        print(f"= {report_path} exists: reused", flush=True)
    check_run_seed(run_dir, seed)
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


# ---------------------------------------------------------------------------------------- victims -> rows
def victim_row(report, seed):
    """The fields of one victim's report that the results keep."""
    row = {k: report.get(k) for k in FIELDS}
    runs = report.get("neural_cleanse")
    row.update(seed=seed, nc_mask_l1=nc_mask_l1(report),
               nc_seeds=[r.get("seed") for r in runs] if isinstance(runs, list) else None)
    return row


def mean_of(values):
    """Mean of the values present (a victim whose report lacks a detector does not count), or None."""
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def std_of(values):
    values = [v for v in values if v is not None]
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def arm_row(victims):
    """An arm's row from ``{seed: victim}``: the contract keys as means over the victims, each victim's
    values and their spread (``<key>_victims``, ``<key>_victims_std``), and the victims themselves."""
    seeds = sorted(victims)
    runs = [victims[s] for s in seeds]
    row = {k: mean_of([r.get(k) for r in runs]) for k in (*VICTIM_STATS, *MEAN_ONLY)}
    row.update({k: runs[0].get(k) for k in DESIGN})
    quantiles = [r.get("target_prob_quantiles") for r in runs]
    row["target_prob_quantiles"] = ({q: float(np.mean([x[q] for x in quantiles])) for q in quantiles[0]}
                                    if all(quantiles) else None)
    # detector noise: RMS of each victim's std over its NC runs (one victim: its own std)
    nc_stds = [r["nc_anomaly_std"] for r in runs if r.get("nc_anomaly_std") is not None]
    row["nc_anomaly_std"] = float(np.sqrt(np.mean(np.square(nc_stds)))) if nc_stds else None
    nc_runs = [x for r in runs for x in r.get("nc_anomaly_seeds") or []]
    row["nc_anomaly_seeds"] = nc_runs
    row["nc_flagged_share"] = float(np.mean(np.asarray(nc_runs) > 2)) if nc_runs else None
    masks = [r["nc_mask_l1"] for r in runs if r.get("nc_mask_l1")]
    row["nc_mask_l1"] = [float(x) for x in np.mean(masks, axis=0)] if masks else None
    row["victim_seeds"] = seeds
    for k in VICTIM_STATS:
        values = [r.get(k) for r in runs]
        row[f"{k}_victims"], row[f"{k}_victims_std"] = values, std_of(values)
    row["victims"] = {str(s): victims[s] for s in seeds}
    return row


def stored_victims(row, seed, origin):
    """``{seed: victim}`` of a stored row; a row written before ``--seeds`` is one victim of the configs'
    ``seed``, recorded by ``origin`` (its dataset's provenance)."""
    if not row:
        return {}
    if "victims" in row:
        return {int(s): v for s, v in row["victims"].items()}
    return {seed: {**{k: row.get(k) for k in FIELDS}, "seed": seed, "nc_mask_l1": row.get("nc_mask_l1"),
                   "nc_seeds": None, **{k: origin[k] for k in PROVENANCE if k in origin}}}


def upgrade(results):
    """Rows written before ``--seeds`` become rows of one victim, so every row reads the same."""
    for dataset in DATASETS:
        origin = results.get("provenance", {}).get(dataset, {})
        for attack, pair in results.get(dataset, {}).items():
            for arm, row in pair.items():
                if "victims" not in row:
                    pair[arm] = arm_row(stored_victims(row, config_seed(config_name(attack, dataset)), origin))
    return results


# ---------------------------------------------------------------------------------------- markdown
def cell(value):
    return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def arm_rows(results):
    """``(dataset, attack, arm, row)`` in table order."""
    return [(dataset, attack, arm, row) for dataset in DATASETS for attack, pair in results.get(dataset, {}).items()
            for arm, row in pair.items()]


def markdown(results, stacking, quick):
    lines = ["# Backdoor victims: plain attack vs its LSBA version", ""]
    if quick:
        lines += ["**Quick run**: victims trained for 300 steps only; far from the accuracy goals "
                  "(CIFAR-10 >= 80%, Fashion-MNIST >= 90%). They show the pipeline, not the paper's claim.", ""]
    for dataset, origin in results.get("provenance", {}).items():
        lines.append(f"- {dataset}: {origin['machine']}; {origin['date']}; `{origin['command']}`")
    lines += ["", "Each row is the mean over its victims: one training run each, with the training seeds "
              "(`Global.seed`) listed; the per-victim values are in the section below. "
              "CA: clean test accuracy. ASR: triggered test images of other classes classified as the target. "
              "Target prob: mean target probability on them; margin: its mean lead over the strongest other class. "
              "STRIP AUROC: triggered vs clean inputs scored by STRIP's low entropy (1 = STRIP flags them all, "
              "0.5 = chance). Well below 0.5 means the triggered inputs have *higher* entropy than clean ones: "
              "STRIP as published passes them, but a test on high entropy would separate them with AUROC "
              "1 minus the figure. NC anomaly: Neural Cleanse anomaly "
              "index of the target class (> 2 = flagged; below 0 = the target's mask is larger than the median "
              "class's), mean +- standard deviation over the victims when a row has several (\"n victims\"), "
              "otherwise over the NC runs of its one victim (\"n NC runs\"). Spectral AUROC: poisoned vs clean "
              "training samples of the target class. Hours: wall-clock training time on the shared machine; CPU "
              "hours: CPU time of the training process and its loader workers (what one idle core would take; the "
              "budget is 1.5).", "",
              *table_head("dataset", "attack", "victim", "victims (training seeds)", "CA", "ASR", "target prob",
                          "margin", "STRIP AUROC", "NC anomaly", "spectral AUROC", "hours", "CPU hours")]
    for dataset, attack, arm, row in arm_rows(results):
        name = "plain"
        if arm == "lsba":
            designed = (row.get("designed_target_prob") or {}).get("1")
            name = f"LSBA (designed {cell(designed)}, margin {cell(row.get('margin'))})"
        seeds = row.get("victim_seeds") or []
        cells = [nc_cell(row) if k == "nc_anomaly" else cell(row.get(k)) for k in COLUMNS]
        lines.append(f"| {dataset} | {attack} | {name} | {len(seeds)} ({', '.join(map(str, seeds))}) | "
                     + " | ".join(cells) + " |")
    lines += victims_section(results) + paired_section(results) + nc_section(results)
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


def table_head(*columns):
    """A markdown table's header and separator lines."""
    return ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]


def nc_cell(row):
    """``mean +- std (over what)`` of the target's NC anomaly index, for an arm's row or one victim."""
    victims = len(row.get("victim_seeds") or [])
    if victims > 1 and row.get("nc_anomaly_victims_std") is not None:
        return f"{row['nc_anomaly']:.2f} +- {row['nc_anomaly_victims_std']:.2f} ({victims} victims)"
    if row.get("nc_anomaly_std") is None:
        return cell(row.get("nc_anomaly"))
    return f"{row['nc_anomaly']:.2f} +- {row['nc_anomaly_std']:.2f} ({len(row.get('nc_anomaly_seeds') or [])} NC runs)"


def victims_section(results):
    """One line per victim: the headline numbers of each training seed."""
    lines = ["", "## Per victim (training seed)", "",
             "NC anomaly: mean +- standard deviation over that victim's NC runs. Recorded: the date of the "
             "invocation that trained (or first recorded) the victim; its command is in the JSON.", "",
             *table_head("dataset", "attack", "victim", "training seed", "CA", "ASR", "target prob", "STRIP AUROC",
                         "NC anomaly", "spectral AUROC", "CPU hours", "recorded")]
    for dataset, attack, arm, row in arm_rows(results):
        for seed, victim in row.get("victims", {}).items():
            cells = [cell(victim.get(k)) for k in ("ca", "asr", "target_prob", "strip_auroc")]
            cells += [nc_cell(victim), cell(victim.get("spectral_auroc")), cell(victim.get("train_cpu_hours")),
                      victim.get("date") or "-"]
            lines.append(f"| {dataset} | {attack} | {arm} | {seed} | " + " | ".join(cells) + " |")
    return lines


def paired_section(results):
    """LSBA minus plain per training seed: the two victims of a seed differ only in the poisoned labels."""
    lines = ["", "## LSBA minus plain, victim by victim", "",
             "The plain and LSBA victims of one training seed share initialisation, batch order and poisoned "
             "samples; negative = LSBA lower (the issue's goal for both detectors). Lower: in how many seeds.", "",
             *table_head("dataset", "attack", "training seeds", "NC anomaly per seed", "mean", "lower",
                         "STRIP AUROC per seed", "mean", "lower")]
    rows = 0
    for dataset in DATASETS:
        for attack, pair in results.get(dataset, {}).items():
            plain, lsba = (pair.get(arm, {}).get("victims", {}) for arm in ("plain", "lsba"))
            seeds = sorted(set(plain) & set(lsba), key=int)
            if not seeds:
                continue
            cells = []
            for k in ("nc_anomaly", "strip_auroc"):
                diffs = [lsba[s][k] - plain[s][k] for s in seeds if lsba[s].get(k) is not None
                         and plain[s].get(k) is not None]
                cells += [", ".join(f"{d:+.2f}" for d in diffs) or "-", f"{np.mean(diffs):+.2f}" if diffs else "-",
                          f"{sum(d < 0 for d in diffs)} of {len(diffs)}"]
            lines.append(f"| {dataset} | {attack} | {', '.join(seeds)} | " + " | ".join(cells) + " |")
            rows += 1
    return lines if rows else []


def nc_mask_l1(report):
    """Mean reversed-trigger mask L1 per class over a report's Neural Cleanse runs (or None)."""
    runs = report.get("neural_cleanse")
    if not isinstance(runs, list) or not runs:
        return None
    return [float(x) for x in np.mean([r["mask_l1"] for r in runs], axis=0)]


def nc_section(results):
    """Per arm: the target's index per NC run, how often NC flags it, and every class's mask L1."""
    rows = [(dataset, attack, arm, row) for dataset, attack, arm, row in arm_rows(results) if row.get("nc_mask_l1")]
    if not rows:
        return []
    k = len(rows[0][3]["nc_mask_l1"])
    lines = ["", "## Neural Cleanse per class", "",
             "Reversed-trigger mask L1 (the mask summed over the pixels) per class, mean over the victims and their "
             "NC runs; the target is class 0. Target/median: the target's mask over the median class's. Index per "
             "run: the target's anomaly index in each NC run (NC seeds in the JSON), victims separated by \" / \" "
             "in training-seed order; flagged: share of all runs with index > 2.", "",
             *table_head("dataset", "attack", "victim", "index per run", "flagged", "target/median",
                         *(f"L1 class {c}" for c in range(k)))]
    for dataset, attack, arm, row in rows:
        per_run = " / ".join(", ".join(f"{x:.2f}" for x in victim.get("nc_anomaly_seeds") or [])
                             for victim in row.get("victims", {}).values())
        ratio = row["nc_target_l1"] / row["nc_median_l1"] if row.get("nc_median_l1") else None
        lines.append(f"| {dataset} | {attack} | {arm} | {per_run} | {cell(row.get('nc_flagged_share'))} | "
                     f"{cell(ratio)} | " + " | ".join(f"{x:.1f}" for x in row["nc_mask_l1"]) + " |")
    return lines


def stacked_entry(report, n):
    by_k = {str(k): (report[f"target_prob_k{k}"], report[f"asr_k{k}"]) for k in range(1, n)}
    by_k[str(n)] = (report["target_prob"], report["asr"])
    return {"attack": report["attack"], "n": n, "ca": report["ca"], "designed_target_prob":
            report["designed_target_prob"], "target_prob_by_active": {k: v[0] for k, v in by_k.items()},
            "asr_by_active": {k: v[1] for k, v in by_k.items()}, "train_cpu_hours": report["train_cpu_hours"]}


# ---------------------------------------------------------------------------------------- main
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Fashion-MNIST only, 300 steps per victim")
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=None)
    parser.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="victim training seeds (Global.seed), one victim per arm each (default: the configs')")
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "output", "backdoor_bench"))
    parser.add_argument("--nc-seeds", type=int, nargs="+", default=None,
                        help="Neural Cleanse runs per victim (default: the configs' Backdoor.detectors.nc_seeds)")
    parser.add_argument("--results", default=None, help="results JSON (default bench/results/backdoor_results"
                        "[_quick].json); the stacking JSON is written next to it")
    parser.add_argument("--markdown", default=None, help="default bench/backdoor_results[_quick].md")
    args = parser.parse_args(argv)
    datasets = args.datasets or (["fashion_mnist"] if args.quick else list(DATASETS))
    output_dir = args.output_dir + ("_quick" if args.quick else "")
    suffix = "_quick" if args.quick else ""
    results_path = args.results or os.path.join(ROOT, "bench", "results", f"backdoor_results{suffix}.json")
    stacking_path = os.path.join(os.path.dirname(os.path.abspath(results_path)), f"backdoor_stacking{suffix}.json")
    results, stacking = upgrade(load(results_path)), load(stacking_path)
    origin = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": " ".join(["python", "bench/backdoor_results.py", *map(shlex.quote, argv)])}
    results["quick"] = args.quick
    extra = QUICK if args.quick else []
    if args.nc_seeds:
        extra = [*extra, f"Backdoor.detectors.nc_seeds=[{', '.join(map(str, args.nc_seeds))}]"]

    def record(dataset, trained):  # provenance names the invocation that last trained a dataset's victims
        provenance = results.setdefault("provenance", {})  # before the test: `trained or ...` may skip it
        if trained or dataset not in provenance:
            results.update(origin)
            provenance[dataset] = origin

    for dataset in datasets:
        for attack in args.attacks:
            config = config_name(attack, dataset)
            pair = results.setdefault(dataset, {}).setdefault(attack, {})
            for arm, overrides in ARMS.items():
                victims = stored_victims(pair.get(arm), config_seed(config), {})
                for seed in args.seeds or [config_seed(config)]:
                    report, trained = train_victim(config, run_name(attack, dataset, arm, seed), output_dir,
                                                   [*overrides, *seed_overrides(config, seed), *extra], seed)
                    record(dataset, trained)
                    kept = victims.get(seed, {})
                    # a victim read again keeps the invocation that trained (or first recorded) it
                    stamp = origin if trained or "command" not in kept else {k: kept.get(k) for k in PROVENANCE}
                    victims[seed] = {**victim_row(report, seed), **stamp}
                    pair[arm] = arm_row(victims)
                    save(results_path, results)
        if dataset == "fashion_mnist" and STACKED["attack"] in args.attacks:
            config = config_name(STACKED["attack"], dataset)
            report, trained = train_victim(config, f"{STACKED['attack']}_{DATASETS[dataset]}_lsba_n{STACKED['n']}",
                                           output_dir, [*STACKED["overrides"], *extra], config_seed(config))
            record(dataset, trained)
            stacking[dataset] = stacked_entry(report, STACKED["n"])
            save(stacking_path, stacking)
    text = markdown(results, stacking, args.quick)
    notes = os.path.join(ROOT, "bench", "backdoor_results_notes.md")
    if not args.quick and os.path.exists(notes):
        with open(notes) as handle:
            text += "\n" + handle.read()
    with atomic_write(args.markdown or os.path.join(ROOT, "bench", f"backdoor_results{suffix}.md")) as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
