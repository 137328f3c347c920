"""Feature admission and shrink in the hierarchical store: rows saved and the test AUC, one process.

    python bench/ctr_admission.py --rows 5e5 --test-rows 5e4 --out /tmp/ctr_admission

Generates planted synthetic data (``paddle_suite.ads.generator``: 26 Zipf slots, vocabulary 1e6
per slot, so most tail keys occur once), trains ``configs/ctr_hierarchical.yaml`` pass by pass
once per store setting, and reports the rows stored (MEM + SSD), the counter records, the store's
disk size, the admitted / evicted counts and the test AUC against the generator's Bayes AUC.

Each variant is the config's ``Store`` admission / shrink keys (``-o Store.admit_threshold=...``).
"""
import argparse
import json
import os
import shutil
import time

import numpy as np

import paddle_suite  # noqa: F401
import paddle_suite.ads.hierarchical_train as ht
from paddle_suite.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHRINK = dict(show_click_decay_rate=0.98, delete_threshold=0.5, delete_after_unseen_passes=2, shrink_every_passes=3)
VARIANTS = {  # name -> the config's Store admission / shrink keys
    "off (default)": {},
    "admit 2 shows, shrink": dict(admit_threshold=2.0, **SHRINK),
    "admit 4 shows, shrink": dict(admit_threshold=4.0, **SHRINK),
}


class StatsTrainer(ht.HierarchicalTrainer):
    """The trainer, keeping the store's final statistics (admitted / evicted totals)."""

    def train_passes(self, store, pass_batches, metrics_log=None):
        last = super().train_passes(store, pass_batches, metrics_log)
        store.read_rows(np.zeros(0, np.uint64))  # waits for the last commit's background work
        self.final_stats = store.stats()
        return last


def generate(out, rows, test_rows, seed):
    from paddle_suite.ads.generator import CtrSpec, generate as write

    os.makedirs(out, exist_ok=True)
    train, test = os.path.join(out, "train.txt"), os.path.join(out, "test.txt")
    meta = write(CtrSpec(rows + test_rows, vocab=10 ** 6, zipf=1.1, seed=seed), os.path.join(out, "all.txt"),
                 progress=False)
    with open(os.path.join(out, "all.txt")) as source, open(train, "w") as tr, open(test, "w") as te:
        for i, line in enumerate(source):
            (tr if i < rows else te).write(line)
    os.remove(os.path.join(out, "all.txt"))
    return train, test, meta


def directory_mb(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files) / 2 ** 20


def run_variant(name, settings, train, test, out, pass_size):
    from paddle_suite.ads.task import evaluate_run
    from paddle_suite.ads.store import HierarchicalStore

    run_out = os.path.join(out, "runs", "_".join(name.split()[:2]))
    shutil.rmtree(run_out, ignore_errors=True)  # each variant trains from scratch (a finished store would resume)
    config = load_config(os.path.join(ROOT, "configs", "ctr_hierarchical.yaml"), [
        f"DataLoader.train_files=[{train}]", f"DataLoader.test_files=[{test}]", f"Global.output_dir={run_out}",
        f"DataLoader.pass_size={pass_size}", "Store.mem_cap_mb=16",
        *[f"Store.{key}={value}" for key, value in settings.items()]])
    started = time.time()
    trainer = StatsTrainer(config)
    last = trainer.train()
    train_s = time.time() - started
    result = evaluate_run(config)
    kwargs = ht.store_settings(config, trainer.sparse_dim)
    path = ht.store_path(config)
    with HierarchicalStore(path, **kwargs) as store:  # closed: every row is in the SSD table now
        closed = store.stats()
    stats = trainer.final_stats
    return {"variant": name, "settings": settings,
            "rows": closed["ssd_rows"], "counter_rows": closed["counter_rows"], "store_mb": directory_mb(path),
            "admitted_rows": stats["admitted_rows"], "evicted_rows": stats["evicted_rows"],
            "dropped_counters": stats["dropped_counters"], "last_pass_pending": stats["pass_pending"],
            "train_auc_last_pass": last["auc"], "test_auc": result["auc"], "test_logloss": result.get("logloss"),
            "train_s": train_s}


def markdown(results, args, meta, command):
    base = results[0]
    lines = ["# Feature admission and shrink (hierarchical store, one process)", "",
             f"{args.rows:,} training rows in passes of {args.pass_size:,}, {args.test_rows:,} test rows; "
             f"Bayes AUC {meta['bayes_auc']:.4f}. Command: `{command}`.", "",
             "| store setting | rows stored | vs off | counter records | store MB | admitted | evicted | test AUC | train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['variant']} | {r['rows']:,} | {r['rows'] / base['rows']:.1%} | {r['counter_rows']:,} | "
                     f"{r['store_mb']:.1f} | {r['admitted_rows']:,} | {r['evicted_rows']:,} | {r['test_auc']:.4f} | "
                     f"{r['train_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main():
    import datetime
    import platform
    import sys

    from paddle_suite.engine.run import write_json
    from paddle_suite.io import atomic_write

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=lambda v: int(float(v)), default=500_000)
    parser.add_argument("--test-rows", type=lambda v: int(float(v)), default=50_000)
    parser.add_argument("--pass-size", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default="/tmp/ctr_admission", help="scratch folder for data and runs")
    parser.add_argument("--quick", action="store_true", help="100k rows (< 5 minutes), writes no results files")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.test_rows, args.pass_size = 100_000, 20_000, 20_000
    train, test, meta = generate(os.path.join(args.out, "data"), args.rows, args.test_rows, args.seed)
    results = [run_variant(name, settings, train, test, args.out, args.pass_size) for name, settings in VARIANTS.items()]
    command = "python " + " ".join(sys.argv)
    table = markdown(results, args, meta, command)
    print(table)
    if not args.quick:
        write_json(os.path.join(ROOT, "bench", "results", "ctr_admission.json"),
                   {"machine": platform.processor() or platform.machine(), "date": datetime.date.today().isoformat(),
                    "command": command, "bayes_auc": meta["bayes_auc"], "results": results})
        with atomic_write(os.path.join(ROOT, "bench", "ctr_admission.md")) as handle:
            handle.write(table)
    summary = {r["variant"]: {"rows": r["rows"], "test_auc": r["test_auc"]} for r in results}
    print("RESULT " + json.dumps(summary))


if __name__ == "__main__":
    main()
