"""Logician vs its ablations and a plain attention seq2seq, on spansaoke and OIE2016.

    python bench/oie_results.py                 # 10 runs, two at a time: bench/results/oie_results.json, bench/oie_results.md
    python bench/oie_results.py --jobs 1        # one at a time
    python bench/oie_results.py --quick         # a few steps on subsets (< 5 minutes); writes nothing under bench/
    python bench/oie_results.py --datasets spansaoke --variants logician no_coverage no_gate --seeds 7 13
                                                # more seeds for some rows; the other rows are kept

Each (data set, variant) trains ``configs/logician_<data>[_<variant>].yaml`` through
``tools/train.py`` (a subprocess; ``Global.test_split: test``), keeps the best checkpoint by
validation fact F1 and decodes the whole test split with it: fact precision / recall / F1 at the
configs' similarity threshold (0.85), exact-fact F1 and exact match (plus the OIE2016 lexical
match on OIE2016). Variants (Arch switches of ``Logician``): ``logician`` (copy, coverage,
dependency gate), ``no_copy``, ``no_coverage``, ``no_gate``, ``seq2seq`` (none of the three); on
OIE2016 also ``link_grammar``: Logician with the gate on the link grammar parser's arcs instead of
the sentence adjacency (``DataLoader.parser: link_grammar``; no parser here reads Chinese);
``learned_path``: Logician whose dependency path moves attention by learnt weights of the signed graph
distance (``Arch.path: learned``) instead of to the neighbours in equal parts.

Budget (``BUDGET``): every run gets the same number of steps on a data set, overriding the
configs' ``Global.max_steps``. Chosen from measured training speed so that the 10 runs fit in
about two hours on a 2-core machine two at a time (the measurement and the arithmetic are in the
markdown this script writes, from ``SPEED_NOTE``).

Seeds (``--seeds``; default: the configs' ``Global.seed``): each row is the mean over the seeds it
has been trained with, and shows them. The results file accumulates: a run of this script replaces
the (data set, variant, seed) runs it trains and keeps the others from ``--results`` (each keeps the
command and date that produced it), unless their settings differ from today's budget, in which case
they are dropped as stale. So ``--datasets`` / ``--variants`` / ``--seeds`` add rows or seeds
without retraining the rest.

Runs live in ``output/bench_oie/<run name>`` and resume from their checkpoints; a finished run
leaves ``bench_result.json`` there and is not trained again with the same settings, so an
interrupted benchmark continues where it stopped when rerun. Results and the table are written
atomically once every run is done.
"""
import argparse
import concurrent.futures
import datetime
import functools
import json
import os
import platform
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from paddle_suite.config import load_config  # noqa: E402
from paddle_suite.engine.run import read_json, write_json  # noqa: E402
from paddle_suite.io import atomic_write  # noqa: E402

DATASETS = {"spansaoke": "saoke", "oie2016": "oie2016"}  # results key -> config name part
VARIANTS = ("logician", "no_copy", "no_coverage", "no_gate", "seq2seq", "link_grammar", "learned_path")
ENGLISH_ONLY = ("link_grammar",)  # the parser reads English
GATE_READINGS = ("link_grammar", "learned_path")  # other readings of the gate: compared with no_gate
DESCRIPTION = {
    "logician": "copy + coverage + dependency gate",
    "no_copy": "words generated from the vocabulary",
    "no_coverage": "no coverage (attention feature and loss)",
    "no_gate": "no gated dependency attention",
    "seq2seq": "plain attention seq2seq (none of the three)",
    "link_grammar": "Logician, the gate on link grammar arcs",
    "learned_path": "Logician, the gate's path learnt over signed graph distances",
}
# steps per run and validation interval; see SPEED_NOTE
BUDGET = {"spansaoke": {"max_steps": 1500, "eval_every": 500}, "oie2016": {"max_steps": 1200, "eval_every": 300}}
QUICK = {"max_steps": 12, "eval_every": 6}
QUICK_OVERRIDES = ["DataLoader.train_subset=96", "DataLoader.valid_subset=16", "DataLoader.test_subset=32",
                   "Metric.max_decode_len=40"]
SPEED_NOTE = """Budget, from speeds measured on 2026-12-04 on the shared 2-core machine while other jobs ran
(load average 4 to 7), one process at a time: training spansaoke at 1.52 steps/s (Logician) and
1.78 (seq2seq) over 20 steps after a warm-up step; a 300-step run of `configs/logician_saoke.yaml`
trained at 1.7 steps/s, decoded its 200 validation sentences in 7 s and 512 test sentences in 23 s
(so the 4,440 test sentences take about 3.5 min); OIE2016 at 2.90 steps/s with copy and 0.74
without (the softmax over the 10k-word vocabulary at up to 150 target steps). OIE2016 gets 1,200
steps (about 11 epochs; about 7 min with copy, 27 min without). spansaoke was first run one fact per
line; read as it is now, the facts of a sentence gathered into one example (1.85 facts, 34 target
actions a sentence instead of 18.7), a step costs about 1.8 times as much, so it gets 1,500 steps
(about 24 epochs of its 1,960 training sentences; about 20 min a run at the rate above divided by 1.8)."""


METRICS = ("precision", "recall", "f1", "exact_f1", "exact_match", "repeated", "gate",
           "lexical/precision", "lexical/recall", "lexical/f1")


def variants_of(dataset):
    return [v for v in VARIANTS if dataset == "oie2016" or v not in ENGLISH_ONLY]


def config_path(dataset, variant):
    suffix = "" if variant == "logician" else f"_{variant}"
    return os.path.join(ROOT, "configs", f"logician_{DATASETS[dataset]}{suffix}.yaml")


@functools.lru_cache(maxsize=None)
def config_seed(dataset, variant):
    return load_config(config_path(dataset, variant))["Global"]["seed"]


def run_name(dataset, variant, seed):
    base = f"oie_{dataset}_{variant}"
    return base if seed == config_seed(dataset, variant) else f"{base}_seed{seed}"


# Spelled out so that runs trained before targets listed a sentence's facts in sentence order
# (2026-12-05; they had the data file's order) do not count as done and their rows are dropped as stale.
FACT_ORDER_SETTING = "DataLoader.fact_order=sentence"


def settings_of(dataset, variant, seed, args):
    budget = QUICK if args.quick else BUDGET[dataset]
    overrides = [f"Global.max_steps={budget['max_steps']}", f"Global.eval_every={budget['eval_every']}",
                 f"Global.save_every={budget['eval_every']}", "Global.test_split=test", FACT_ORDER_SETTING]
    # the configs' own seed is not spelled out, so runs made before --seeds existed still count
    overrides += [] if seed == config_seed(dataset, variant) else [f"Global.seed={seed}"]
    return overrides + (QUICK_OVERRIDES if args.quick else [])


def command(dataset, variant, seed, args):
    return [sys.executable, os.path.join(ROOT, "tools", "train.py"), "-c", config_path(dataset, variant),
            "--no-progress", "-o", f"Global.output_dir={args.output}", "-o",
            f"Global.run_name={run_name(dataset, variant, seed)}"] + [
        item for override in settings_of(dataset, variant, seed, args) for item in ("-o", override)]


def train_one(dataset, variant, seed, args):
    """Train (or resume) one run and decode test; returns its result, kept in ``bench_result.json``."""
    name = run_name(dataset, variant, seed)
    directory = os.path.join(args.output, name)
    done_file = os.path.join(directory, "bench_result.json")
    settings = settings_of(dataset, variant, seed, args)
    done = read_json(done_file)
    if done is not None and done.get("settings") == settings:
        return done
    if done is not None and FACT_ORDER_SETTING not in done.get("settings", []):
        # resuming would continue (or, at max_steps, just re-test) a model trained on other targets
        raise RuntimeError(f"{directory} was trained on targets in the data file's fact order; use another "
                           "--output (or remove the run) to train it again")
    os.makedirs(args.output, exist_ok=True)
    log_path = os.path.join(args.output, name + ".log")
    started = time.perf_counter()
    with open(log_path, "a") as log:
        process = subprocess.run(command(dataset, variant, seed, args), stdout=subprocess.PIPE, stderr=log,
                                 text=True, env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT)
    if process.returncode != 0:
        raise RuntimeError(f"{dataset}/{variant}/seed {seed} failed (exit {process.returncode}); see {log_path}")
    trained = json.loads(process.stdout.strip().splitlines()[-1])
    test = trained["test"]
    result = {
        "precision": test["precision"], "recall": test["recall"], "f1": test["f1"],
        "exact_f1": test["exact_f1"], "exact_match": test["exact_match"], "repeated": test["repeated"],
        "predicted": test["predicted"], "gold": test["gold"], "matched": test["matched"],
        **{k: v for k, v in test.items() if k.startswith("lexical/") or k == "gate"},
        "valid_f1": trained["best"], "steps": trained["step"],
        "train_hours": None if trained["train_seconds"] is None else trained["train_seconds"] / 3600,
        "wall_hours_this_session": (time.perf_counter() - started) / 3600,
        "settings": settings,
    }
    write_json(done_file, result)
    return result


def previous_runs(path, dataset, variant):
    """{seed: run} of an existing results file's row; a file written before seeds were kept is its configs' seed."""
    old = read_json(path) or {}
    row = (old.get(dataset) or {}).get(variant)
    if row is None:
        return {}
    if "seeds" in row:
        return {int(seed): run for seed, run in row["seeds"].items()}
    return {config_seed(dataset, variant): dict(row, command=old.get("command"), date=old.get("date"))}


def row_of(runs):
    """The mean of each metric over the seeds, their spread, and the runs themselves."""
    row = {k: sum(r[k] for r in runs.values()) / len(runs) for k in METRICS if all(k in r for r in runs.values())}
    f1s = [r["f1"] for r in runs.values()]
    hours = [r["train_hours"] for r in runs.values() if r.get("train_hours")]
    row.update({"f1_min": min(f1s), "f1_max": max(f1s), "steps": max(r["steps"] for r in runs.values()),
                "train_hours": sum(hours) / len(hours) if hours else None,
                "seeds": {str(seed): runs[seed] for seed in sorted(runs)}})
    return row


def seed_mean_cell(row, metric):
    """The row's mean of ``metric``; when only some of its seeds measured it (runs scored before the
    metric existed), their values and seeds; blank when none did."""
    if metric in row:
        return f"{row[metric]:.3f}"
    measured = {seed: run[metric] for seed, run in row["seeds"].items() if metric in run}
    if not measured:
        return ""
    return " / ".join(f"{v:.3f}" for v in measured.values()) + f" (seed {', '.join(measured)} only)"


def visible(rows, variant):
    """An ablation: every seed below every Logician seed. Another reading of the gate (link_grammar,
    learned_path): every seed above every no_gate seed (the gate's contribution under that reading)."""
    if variant == "logician":
        return ""
    if variant in GATE_READINGS:
        return "yes, over no_gate" if rows[variant]["f1_min"] > rows["no_gate"]["f1_max"] else "no, vs no_gate"
    return "yes" if rows[variant]["f1_max"] < rows["logician"]["f1_min"] else "no"


def markdown(results, args):
    lines = ["# Logician vs its ablations and a plain attention seq2seq", "",
             f"Written by `bench/oie_results.py`; last invocation `{results['command']}` on {results['date']} "
             f"({results['machine']}). Each row is the mean over the seeds in its `seeds` column; the command "
             "and date of each seed's run are in `bench/results/oie_results.json`.", "",
             "Each run trains through `tools/train.py` with the config named in the row, keeps the best checkpoint "
             "by validation fact F1, and decodes the whole test split with it (beam 4, grammar-constrained). "
             "Scores: a predicted fact matches a gold fact when their SAOKE serialisations have similarity >= 0.85 "
             "(maximum one-to-one matching per sentence; `paddle_suite/oie/metrics.py`); exact F1 at similarity 1.0; "
             "exact match = share of sentences whose facts equal the gold ones; repeated = share of predicted facts "
             "similar to an earlier one of the same sentence (what coverage should prevent); gate = the dependency "
             "gate's mean weight on content attention over the test targets, teacher-forced (1 = the dependency "
             "path unused; blank without a gate). Both were measured from 2026-12-06 on: a row whose older runs "
             "lack them shows the seeds that have them, or nothing. A mechanism's contribution counts as visible when every seed of its "
             "ablation scores a lower F1 than every seed of Logician; for the other readings of the gate, "
             "`link_grammar` (Logician whose gate follows the link grammar parser's arcs instead of the sentence "
             "adjacency, English only) and `learned_path` (the path moves attention by learnt weights of the signed "
             "graph distance, `Arch.path: learned`), when every seed of it scores a higher F1 than every seed of "
             "`no_gate`.", "",
             "spansaoke: one example per sentence with all its facts (the release has one line per fact), "
             "trained on the 2,360 sentences of `dev_4373.txt` minus 400 held out for validation, tested on the "
             "2,384 of `test_4440.txt` (the span release has no training split). OIE2016: `train.oie` / `dev.oie` / `test.oie`; "
             "the lexical columns are the benchmark's lexical match at one operating point.", ""]
    for dataset in DATASETS:
        rows = results[dataset]
        budget = QUICK if args.quick else BUDGET[dataset]
        lines += [f"## {dataset} ({budget['max_steps']} steps per run)", ""]
        lexical = dataset == "oie2016"
        header = ("| variant | what | seeds | precision | recall | F1 | F1 per seed | F1 vs logician | visible | "
                  "exact F1 | exact match | repeated | gate |")
        header += " lexical P | lexical R | lexical F1 |" if lexical else ""
        header += " steps | train h | steps/s |"
        lines += [header, "|" + "---|" * (header.count("|") - 1)]
        base = rows["logician"]["f1"]
        for variant in variants_of(dataset):
            r = rows[variant]
            cells = [f"`{os.path.basename(config_path(dataset, variant))}`", DESCRIPTION[variant],
                     ", ".join(r["seeds"]), f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}",
                     " / ".join(f"{run['f1']:.3f}" for run in r["seeds"].values()),
                     "" if variant == "logician" else f"{r['f1'] - base:+.3f}",
                     visible(rows, variant),
                     f"{r['exact_f1']:.3f}", f"{r['exact_match']:.3f}",
                     seed_mean_cell(r, "repeated"), seed_mean_cell(r, "gate")]
            if lexical:
                cells += [f"{r['lexical/precision']:.3f}", f"{r['lexical/recall']:.3f}", f"{r['lexical/f1']:.3f}"]
            hours = r["train_hours"]
            cells += [str(r["steps"]), "" if hours is None else f"{hours:.2f}",
                      "" if not hours else f"{r['steps'] / (hours * 3600):.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Budget", "", results["budget_note"], ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="12 steps on subsets (< 5 minutes); writes nothing under bench/")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at the same time")
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: the configs' Global.seed")
    parser.add_argument("--output", default=None, help="run directories (default output/bench_oie[_quick])")
    parser.add_argument("--results", default=os.path.join(ROOT, "bench", "results", "oie_results.json"))
    parser.add_argument("--markdown", default=os.path.join(ROOT, "bench", "oie_results.md"))
    args = parser.parse_args(argv)
    args.output = os.path.abspath(args.output or os.path.join(ROOT, "output", "bench_oie_quick" if args.quick else "bench_oie"))
    jobs = [(d, v, seed) for d in args.datasets for v in args.variants if v in variants_of(d)
            for seed in (args.seeds or [config_seed(d, v)])]
    invocation = "python " + " ".join(shlex.quote(a) for a in ["bench/oie_results.py", *(argv or sys.argv[1:])])
    today = datetime.date.today().isoformat()
    trained = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(train_one, d, v, seed, args): (d, v, seed) for d, v, seed in jobs}
        for future in concurrent.futures.as_completed(futures):
            d, v, seed = futures[future]
            trained[d, v, seed] = dict(future.result(), command=invocation, date=today)
            print(f"{d}/{v}/seed {seed}: F1 {trained[d, v, seed]['f1']:.3f}", file=sys.stderr, flush=True)
    results = {d: {} for d in DATASETS}
    for d in DATASETS:
        for v in variants_of(d):
            runs = {} if args.quick else previous_runs(args.results, d, v)
            # a kept run must have been trained with today's budget
            runs = {seed: run for seed, run in runs.items() if run.get("settings") == settings_of(d, v, seed, args)}
            runs.update({seed: run for (dd, vv, seed), run in trained.items() if (dd, vv) == (d, v)})
            if not runs and args.quick:
                continue
            if not runs:
                raise SystemExit(f"no up-to-date run for {d}/{v}: run bench/oie_results.py --datasets {d} --variants {v}")
            results[d][v] = row_of(runs)
    train_hours = sum(run["train_hours"] or 0.0 for run in trained.values())
    results.update({
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
        "date": today, "command": invocation,
        "budget": {d: (QUICK if args.quick else BUDGET[d]) for d in DATASETS},
        "budget_note": SPEED_NOTE + f"\n\nLast invocation: {train_hours:.2f} h of training (validations "
                       f"included) over its {len(jobs)} runs, {args.jobs} at a time.",
    })
    summary = {d: {v: {k: row[k] for k in ("precision", "recall", "f1")} for v, row in results[d].items()}
               for d in DATASETS}
    if not args.quick:
        write_json(args.results, results)
        with atomic_write(args.markdown) as handle:
            handle.write(markdown(results, args))
    print("RESULT " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
