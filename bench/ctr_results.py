"""The ads capability's results bench (issue 4): the hierarchical HBM / MEM / SSD store on generated
data with a table of >= 5x10^7 keys and a MEM tier capped far below the table, plus the same data
through plain Fleet PS (async, ``MemorySparseTable``) and a single-process local baseline.

Data (``paddle_suite.ads.generator``, written to ``--data-dir``, outside the repository): one file
of ``rows + test_rows`` rows from one ``CtrSpec`` (same planted model), split by line into
``train.txt`` (the first ``rows``) and ``test.txt`` (the rest). Slot layout, chosen so that one pass
over a few million rows creates >= 5e7 distinct keys while the label still depends on learnable
features: ``--hot-slots`` slots with a 10^5 vocabulary and Zipf 1.05 (most of the planted signal),
the other slots id-like (vocabulary 2^32, Zipf ``--id-zipf`` < 1: most of their values are seen once,
which is what makes the table huge); planted weights decay as rank^-1, so the rare ids carry
almost no signal and a model that sees them once can still approach the Bayes AUC. The Bayes AUC
reported is that of the true probabilities on the *test* rows (recomputed from the generator's
deterministic chunks; the train+test file's own value is in ``data.bayes_auc_all_rows``).

Runs (each a child process, one pass over ``train.txt``, scored on ``test.txt``):

* ``hierarchical``: ``tools/train.py -c configs/ctr_hierarchical.yaml`` (the ``ctr`` task's
  ``HierarchicalTrainer``: LMDB SSD tier, MEM tier capped at ``--mem-cap-mb``, pass working sets),
  then the task's ``evaluate`` (exported body + store lookup). ``keys`` = rows of the store's SSD
  table after training (every key the run created; the store checkpoints MEM on close).
* ``plain_fleet_ps``: ``python -m paddle_suite.ads.launcher`` with ``--fleet-servers`` servers +
  ``--fleet-workers`` workers on loopback (default: the config's ``PS.server_num`` / ``PS.worker_num``,
  2 and 2), ``configs/ctr_dnn_ps.yaml`` (async, ``MemorySparseTable``, Adagrad rule), one
  checkpoint at the end; its sparse shards are filtered to the test keys (``fleet_ps.write_delta``)
  and scored with the exported body (``SparseShards`` gives zeros for keys never trained).
* ``single_process``: the same config without a launcher (``PS.mode=local``: static program,
  ``PS.local_vocab`` rows, keys folded modulo the vocabulary), then the task's ``evaluate``.

Streams (``--streams``, both by default; each its own data folder, ``<data-dir>`` and
``<data-dir>_temporal``):

* ``stationary``: the layout above, i.i.d. draws: with 2^32-value id slots nearly every key of a
  pass is new (the generator counts ~93% never-seen keys per pass at the full size), so its tier
  hit rates say nothing about caching. Runs ``--runs`` (all three by default).
* ``temporal``: the same spec plus the generator's temporal reuse (``generator`` docstring): in
  every slot a share ``--hot-fraction`` (0.6) of the values comes from a hot set of
  ``--hot-set-size`` (5,000) ranks, of which ``--drift-per-pass`` (0.1) are replaced from one pass to the
  next (``pass_rows`` = the trainer's pass size), the rest from the same Zipf tails. Our choice of
  numbers: a hot set that lives ~10 passes and takes most of the traffic, as live campaigns and
  items do in ad logs; it is stated, not fitted to a real log. Runs ``--temporal-runs``
  (``hierarchical`` by default: the hit rates are the point).

The generator also counts, per pass of the file, the share of distinct keys seen in the previous
pass and never seen before (``data.key_reuse``), printed beside the store's hit rates.

Provenance: every row carries the bench command that produced it, its training command and the
date (``provenance``); rows kept from an earlier invocation (same stream, data and settings: the
runs not named in ``--runs``) keep theirs. Runs at fewer than 2,600,000 rows are labelled
"reduced size" in the markdown.

Memory: every process of a run is sampled every ``--sample-s`` seconds from ``/proc/<pid>/status``
(``VmHWM`` = peak resident set, ``RssAnon``/``RssFile``). ``ru_maxrss_mb`` (``wait4``) is only a
cross-check: Linux carries the forking bench process's own peak into it across ``exec``, so after
the first run it can exceed the child's real peak. ``peak_rss_mb`` is the trainer's ``VmHWM`` (anonymous + file-backed);
LMDB reads the SSD tier through a memory map, so file pages it touched are counted there although
the kernel can drop them at will: the cap is therefore checked against ``peak_rss_anon_mb`` (the
largest sampled anonymous RSS), and both are reported.

``rss_overhead_mb`` (stated before the run), by what is alive at the pipeline's peak (found by
sampling weak references to every ``WorkingSet`` and ``PassData`` and the running store steps
every 20 ms over the 1M-row stationary run; the peak falls while pass i trains, pass i-1's
MEM update runs beside its redo-log writes and pass i+2's keys are ranked): the measured RSS of a
process that imported paddle and built the model and optimiser (``baseline_mb``) + parsed data: two
passes x (8 + 52 + 208 bytes a row, held twice while a pass is assembled, + 8 bytes per key for the
local index), which holds the three ``PassData`` alive (training, next, being read: 98 MB at 1e5
rows a pass; raw keys dropped once ranked) + three working sets' worth (8 + 4 * 2 * dim bytes per
distinct key, at most ``pass_size * 26`` keys a pass): (1) the training set (on a CPU device the HBM
tensor shares its rows); (2) the previous pass's committed set until its commit is done, then the
next pass's prefetched set, never both: the store's one prefetch thread runs the MEM update before
the next load, and a load waits for the redo records (never more than two sets were alive;
``test_a_committed_working_set_is_released_once_its_commit_is_done``); (3) the commit's temporaries:
the MEM update's plan and index merge (about 44 bytes a key of the working set) beside what the
writer thread runs, one at a time: a redo-log chunk (16 MiB buffer + LMDB's copy) or an SSD-table transaction (at most ``store._TXN_ROWS`` dirty 4 KiB pages, 32 MiB,
which LMDB keeps for reuse). Not itemised: the ranking of a pass's keys (``PassData._rank``, about
20 bytes a key slot: int64 order, int32 ranks and positions, ``store.unique_inverse``) and paddle's run-time buffers; they fit in the slack of
``baseline_mb`` being an RSS (~130 MB of it are file-backed library pages, not anonymous).
``within_cap`` = peak_rss_anon_mb <= mem_cap_mb + rss_overhead_mb.
(The first full run, before the store's memory fixes, peaked at 2,879 MB anonymous: a dygraph
tape chained to the HBM tensor by every in-place sparse update, LMDB transactions of 2^18 rows,
and glibc keeping freed working-set arrays resident; see ``store.return_freed_memory``.)

``examples_per_s`` = training examples / wall time of the training command (process start, data
reading, store I/O and the final export included); ``train_examples_per_s`` = examples / time inside
the training loop as the run's own per-pass metrics report it.

    python bench/ctr_results.py --quick                       # < 5 minutes (both streams), prints RESULT {json}
    python bench/ctr_results.py --data-dir /tmp/ctr_bench     # the full run: writes
        bench/results/ctr_results.json and bench/ctr_results.md (atomically, after every run)
    python bench/ctr_results.py --data-dir /tmp/ctr_bench --runs plain_fleet_ps
        # re-runs one side on the same data; the other sides' results are kept from the file
    python bench/ctr_results.py --rows 5e5 --streams temporal --temporal-runs hierarchical,plain_fleet_ps
"""
import argparse
import datetime
import glob
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

import numpy as np  # noqa: E402

from paddle_suite.engine.run import read_metrics  # noqa: E402

RESULTS_JSON = REPO / "bench" / "results" / "ctr_results.json"
RESULTS_MD = REPO / "bench" / "ctr_results.md"
HIER_CONFIG = REPO / "configs" / "ctr_hierarchical.yaml"
PS_CONFIG = REPO / "configs" / "ctr_dnn_ps.yaml"
NUM_SLOTS = 26
PARSED_ROW_BYTES = 8 + 13 * 4 + NUM_SLOTS * 8


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small data, < 5 minutes, writes no results files")
    p.add_argument("--write", action="store_true", help="with --quick: still write the results files")
    p.add_argument("--data-dir", default=None, help="scratch folder for data and runs (default /tmp/ctr_bench[_quick])")
    p.add_argument("--rows", type=lambda v: int(float(v)), default=None, help="training rows (2.6e6 full, 1.5e5 quick)")
    p.add_argument("--test-rows", type=lambda v: int(float(v)), default=None, help="held-out rows (1e5 full, 2e4 quick)")
    p.add_argument("--hot-slots", type=int, default=4, help="slots with a 10^5 vocabulary (the signal)")
    p.add_argument("--id-zipf", type=float, default=0.75, help="Zipf exponent of the id-like slots")
    p.add_argument("--mem-cap-mb", type=float, default=None, help="hierarchical MEM cap (256 full, 16 quick)")
    p.add_argument("--pass-size", type=int, default=None, help="examples per pass (100000 full, 25000 quick)")
    p.add_argument("--fleet-servers", type=int, default=None, help="Fleet PS servers (default: PS.server_num of the config)")
    p.add_argument("--fleet-workers", type=int, default=None, help="Fleet PS workers (default: PS.worker_num of the config)")
    p.add_argument("--streams", default="stationary,temporal", help="comma-separated: stationary, temporal")
    p.add_argument("--runs", default="hierarchical,single_process,plain_fleet_ps",
                   help="comma-separated subset, on the stationary stream")
    p.add_argument("--temporal-runs", default="hierarchical", help="comma-separated subset, on the temporal stream")
    p.add_argument("--hot-fraction", type=float, default=0.6, help="temporal stream: share of values from the hot sets")
    p.add_argument("--hot-set-size", type=int, default=5000, help="temporal stream: hot-set members per slot")
    p.add_argument("--drift-per-pass", type=float, default=0.1, help="temporal stream: hot-set share replaced per pass")
    p.add_argument("--sample-s", type=float, default=0.5, help="memory sampling period")
    p.add_argument("--min-keys", type=float, default=5e7, help="full run: fail if the table has fewer keys")
    p.add_argument("--keep-data", action="store_true", help="keep the generated data and stores")
    p.add_argument("--render", action="store_true", help="only rewrite bench/ctr_results.md from the results JSON")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------ data
def data_spec(rows, hot_slots, id_zipf, reuse=None):
    """The generator's spec; ``reuse``: the temporal stream's ``hot_fraction``, ``hot_set_size``,
    ``drift_per_pass`` and ``pass_rows`` (None: the stationary stream)."""
    from paddle_suite.ads.generator import CtrSpec

    vocab = [10 ** 5] * hot_slots + [2 ** 32] * (NUM_SLOTS - hot_slots)
    zipf = [1.05] * hot_slots + [id_zipf] * (NUM_SLOTS - hot_slots)
    weight_std = [0.8] * hot_slots + [1.0] * (NUM_SLOTS - hot_slots)
    return CtrSpec(rows, "criteo_tsv", vocab, zipf, seed=7, ctr=0.25, weight_std=weight_std, weight_rank_decay=1.0,
                   dense_weight_std=0.3, **(reuse or {}))


def make_data(data_dir, rows, test_rows, hot_slots, id_zipf, reuse=None, chunk_rows=50_000):
    """Generate train.txt / test.txt (reused when the meta matches); returns the data description."""
    from paddle_suite.ads.generator import generate, sample_chunk
    from paddle_suite.ads.common import roc_auc

    if rows % chunk_rows:
        raise ValueError(f"--rows must be a multiple of {chunk_rows} (the generator's chunk) so the test rows "
                         f"are whole chunks, got {rows}")
    os.makedirs(data_dir, exist_ok=True)
    spec = data_spec(rows + test_rows, hot_slots, id_zipf, reuse)
    all_path = os.path.join(data_dir, "all.txt")
    train, test = os.path.join(data_dir, "train.txt"), os.path.join(data_dir, "test.txt")
    desc_path = os.path.join(data_dir, "data.json")
    if os.path.exists(desc_path):
        with open(desc_path) as handle:
            desc = json.load(handle)
        if (desc.get("spec") == spec.as_dict() and desc.get("train_rows") == rows and os.path.exists(test)
                and "key_reuse" in desc):
            print(f"data: reusing {data_dir}", flush=True)
            return desc
    started = time.time()
    meta = generate(spec, all_path, chunk_rows=chunk_rows, progress=False, track_reuse=True)
    # split by line: the first `rows` lines train, the rest test (same planted model)
    with open(all_path, "rb") as src, open(train + ".tmp", "wb") as dst_train:
        for _ in range(rows):
            dst_train.write(src.readline())
        with open(test + ".tmp", "wb") as dst_test:
            shutil.copyfileobj(src, dst_test)
    os.replace(train + ".tmp", train)
    os.replace(test + ".tmp", test)
    os.remove(all_path)
    # Bayes AUC of the test rows: their chunks are deterministic per start
    logits, labels = [], []
    for start in range(rows, rows + test_rows, chunk_rows):
        chunk = sample_chunk(spec, start, min(chunk_rows, rows + test_rows - start))
        logits.append(chunk["logit"])
        labels.append(chunk["labels"])
    labels = np.concatenate(labels)
    desc = {
        "spec": spec.as_dict(), "train_rows": rows, "test_rows": test_rows,
        "train_file": train, "test_file": test,
        "train_bytes": os.path.getsize(train), "test_bytes": os.path.getsize(test),
        "distinct_keys_all_rows": meta["distinct_keys"], "distinct_keys_exact": meta["distinct_keys_exact"],
        "bayes_auc_test": roc_auc(labels, np.concatenate(logits)), "bayes_auc_all_rows": meta["bayes_auc"],
        "ctr": meta["ctr"], "generate_s": round(time.time() - started, 1),
        "key_reuse": {k: meta["reuse"][k] for k in ("mean_seen_previous_pass", "mean_new")},
    }
    with open(desc_path, "w") as handle:
        json.dump(desc, handle, indent=1)
    print(f"data: {rows:,} train + {test_rows:,} test rows, ~{meta['distinct_keys']:,} distinct keys (train+test), "
          f"Bayes AUC test {desc['bayes_auc_test']:.4f} ({desc['generate_s']:.0f} s)", flush=True)
    return desc


# ------------------------------------------------------------------------------------------ processes
def _status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                key = line.split(":", 1)[0]
                if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                    out[key] = int(line.split()[1]) / 1024
    except OSError:
        return None
    return out


def _session_pids(sid):
    pids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # fields after the comm: state ppid pgrp session
            pids.append(int(stat.split("/")[2]))
    return pids


def _role(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            env = dict(item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item)
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmd = handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    if "paddle_suite.ads.launcher" in cmd:
        return "launcher"
    role = env.get(b"TRAINING_ROLE", b"").decode()
    if role == "PSERVER":  # servers by their position in the endpoint list (server0, server1, ...)
        port = env.get(b"PADDLE_PORT", b"").decode()
        ports = [e.rsplit(":", 1)[-1] for e in env.get(b"PADDLE_PSERVERS_IP_PORT_LIST", b"").decode().split(",")]
        return f"server{ports.index(port)}" if port in ports else "server"
    if role == "TRAINER":
        return f"worker{env.get(b'PADDLE_TRAINER_ID', b'0').decode()}"
    return "trainer" if "python" in cmd else None


def run_measured(command, log_path, sample_s, env=None):
    """Run ``command`` in its own session; sample every process of the session's memory.

    Returns (exit code, wall seconds, {role: {peak_rss_mb, peak_rss_anon_mb, peak_rss_file_mb}}, ru_maxrss_mb)."""
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    full_env.update(env or {})
    started = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=str(REPO), env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        peaks, roles = {}, {}
        status = None
        while status is None:
            for pid in _session_pids(proc.pid):
                if pid not in roles:
                    roles[pid] = _role(pid)
                s = _status(pid)
                if s is None or roles[pid] is None:
                    continue
                p = peaks.setdefault(roles[pid], {"peak_rss_mb": 0.0, "peak_rss_anon_mb": 0.0, "peak_rss_file_mb": 0.0})
                p["peak_rss_mb"] = max(p["peak_rss_mb"], s.get("VmHWM", 0.0))
                p["peak_rss_anon_mb"] = max(p["peak_rss_anon_mb"], s.get("RssAnon", 0.0))
                p["peak_rss_file_mb"] = max(p["peak_rss_file_mb"], s.get("RssFile", 0.0))
            pid, code, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                status = os.waitstatus_to_exitcode(code)
                proc.returncode = status
                break
            time.sleep(sample_s)
    return status, time.time() - started, peaks, usage.ru_maxrss / 1024


def baseline_rss_mb(data_dir):
    """RSS of a process that imported paddle and built the CTR body + optimiser (dygraph, as the
    hierarchical trainer does)."""
    code = (
        "import json, paddle_suite, paddle\n"
        "from paddle_suite.config import load_config\n"
        "from paddle_suite.ads.hierarchical_train import HierarchicalTrainer\n"
        f"t = HierarchicalTrainer(load_config({str(HIER_CONFIG)!r}, []))\n"
        "t.build_model()\n"
        "from paddle_suite.ads.store import process_memory_mb\n"
        "print('MEM ' + json.dumps(process_memory_mb()))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), env=env, capture_output=True, text=True, check=True)
    mem = json.loads([line for line in out.stdout.splitlines() if line.startswith("MEM ")][-1][4:])
    return mem["rss_mb"]


def overhead_mb(baseline, pass_size, sparse_dim):
    """Stated RSS allowance above the MEM cap (see the module docstring)."""
    pass_bytes = pass_size * (2 * PARSED_ROW_BYTES + 8 * NUM_SLOTS)
    ws_bytes = pass_size * NUM_SLOTS * (8 + 4 * 2 * sparse_dim)
    return baseline + (2 * pass_bytes + 3 * ws_bytes) / 2 ** 20


# ------------------------------------------------------------------------------------------ runs
def _overrides(run_dir, name, desc, pass_size, extra):
    base = [f"Global.output_dir={run_dir}", f"Global.run_name={name}", "Global.resume=none",
            f"DataLoader.train_files={desc['train_file']}", f"DataLoader.test_files={desc['test_file']}",
            f"DataLoader.pass_size={pass_size}"]
    return base + list(extra)


def _o(overrides):
    return [x for o in overrides for x in ("-o", o)]


def _train_speed(metrics):
    examples = sum(m["examples"] for m in metrics)
    seconds = sum(m["examples"] / m["examples_per_s"] for m in metrics if m["examples_per_s"] > 0)
    return examples, (examples / seconds if seconds else float("nan"))


def _evaluate(config_path, overrides):
    """The ctr task's evaluate (exported body + the run's sparse rows), in this process."""
    import paddle_suite  # noqa: F401
    from paddle_suite.config import load_config
    from paddle_suite.ads.task import evaluate_run

    return evaluate_run(load_config(str(config_path), overrides))


def _fail(name, code, log_path):
    with open(log_path, errors="replace") as handle:
        lines = [line for line in handle if not line.startswith(("I1", "W1", "I0", "W0"))]
    raise RuntimeError(f"{name} run failed with status {code}; last lines of {log_path}:\n{''.join(lines[-30:])}")


def provenance(bench_command, command):
    """Where a row comes from: the bench command that produced it, the training command it ran
    (paths and overrides as run), and when."""
    return {"command": bench_command, "train_command": " ".join(os.path.basename(c) if c == sys.executable else c
                                                                  for c in command),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def run_hierarchical(args, desc, run_dir, pass_size, mem_cap_mb):
    name = "hierarchical"
    shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)
    overrides = _overrides(run_dir, name, desc, pass_size, [f"Store.mem_cap_mb={mem_cap_mb}"])
    command = [sys.executable, "tools/train.py", "-c", str(HIER_CONFIG), "--no-progress", *_o(overrides)]
    log_path = os.path.join(run_dir, f"{name}.log")
    code, wall, peaks, ru_max = run_measured(command, log_path, args.sample_s)
    if code != 0:
        _fail(name, code, log_path)
    run_path = os.path.join(run_dir, name)
    metrics = read_metrics(run_path)
    examples, train_speed = _train_speed(metrics)
    evaluation = _evaluate(HIER_CONFIG, overrides)
    from paddle_suite.config import load_config
    from paddle_suite.ads.hierarchical_train import open_store

    with open_store(load_config(str(HIER_CONFIG), overrides), 9) as store:  # the run's settings (seed, dims)
        stats = store.stats()
    last = metrics[-1]
    disk = sum(os.path.getsize(f) for f in glob.glob(os.path.join(run_path, "store", "*")))
    trainer = peaks.get("trainer", {})
    return {
        "keys": int(stats["ssd_rows"]), "passes": len(metrics), "examples": examples,
        "mem_cap_mb": mem_cap_mb,
        "hit_rate": {k: last[f"hit_{k}"] for k in ("hbm", "mem", "ssd", "new")},
        "mem_tier_mb_end": last["mem_mb"], "max_working_set_rows": max(m["working_set_rows"] for m in metrics),
        "ssd_table_rows": int(stats["ssd_rows"]), "ssd_disk_mb": disk / 2 ** 20,
        "row_bytes": 4 * 18, "table_mb": stats["ssd_rows"] * 4 * 18 / 2 ** 20,
        "peak_rss_mb": trainer.get("peak_rss_mb", ru_max), "peak_rss_anon_mb": trainer.get("peak_rss_anon_mb"),
        "peak_rss_file_mb": trainer.get("peak_rss_file_mb"), "ru_maxrss_mb": ru_max,
        "examples_per_s": examples / wall, "train_examples_per_s": train_speed, "wall_s": wall,
        "auc": evaluation["auc"], "logloss": evaluation["logloss"], "test_examples": evaluation["examples"],
        "progressive_train_auc_last_pass": last["auc"], "log": log_path,
        "provenance": provenance(args.bench_command, command),
    }


def run_single(args, desc, run_dir, pass_size, n_passes):
    name = "single_process"
    shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)
    overrides = _overrides(run_dir, name, desc, pass_size, ["PS.mode=local", f"PS.save_every_passes={n_passes}"])
    command = [sys.executable, "tools/train.py", "-c", str(PS_CONFIG), "--no-progress", *_o(overrides)]
    log_path = os.path.join(run_dir, f"{name}.log")
    code, wall, peaks, ru_max = run_measured(command, log_path, args.sample_s)
    if code != 0:
        _fail(name, code, log_path)
    metrics = read_metrics(os.path.join(run_dir, name))
    examples, train_speed = _train_speed(metrics)
    evaluation = _evaluate(PS_CONFIG, overrides)
    trainer = peaks.get("trainer", {})
    return {
        "mode": "local (static program, Adam lazy_mode, keys modulo PS.local_vocab)",
        "table_rows": 1 << 20, "passes": len(metrics), "examples": examples,
        "peak_rss_mb": trainer.get("peak_rss_mb", ru_max), "peak_rss_anon_mb": trainer.get("peak_rss_anon_mb"),
        "ru_maxrss_mb": ru_max,
        "examples_per_s": examples / wall, "train_examples_per_s": train_speed, "wall_s": wall,
        "auc": evaluation["auc"], "logloss": evaluation["logloss"], "log": log_path,
        "provenance": provenance(args.bench_command, command),
    }


def fleet_test_auc(config_overrides, run_path, test_file):
    """Score the test rows with the job's export and its final sparse shards, keeping only the
    test keys' rows (the full dump of a 5e7-key table is too large to parse whole)."""
    from paddle_suite.ads.data import CtrFileReader
    from paddle_suite.ads.common import ExportedBody, roc_auc
    from paddle_suite.ads.fleet_ps import SparseShards, latest_checkpoint, write_delta

    meta = latest_checkpoint(os.path.join(run_path, "checkpoints"))
    if meta is None or meta["kind"] != "base" or len(meta["chain"]) != 1:
        raise RuntimeError(f"expected one base checkpoint in {run_path}/checkpoints, got {meta}")
    test = CtrFileReader(test_file).read_all()
    root = os.path.join(run_path, "checkpoints")
    filtered_root = os.path.join(run_path, "test_rows")
    shutil.rmtree(filtered_root, ignore_errors=True)
    os.makedirs(filtered_root)
    write_delta(os.path.join(root, meta["chain"][0]), os.path.join(filtered_root, meta["chain"][0]),
                np.unique(test.sparse))
    shards = SparseShards(filtered_root, meta)
    emb, found = shards.lookup(test.sparse)
    prob = ExportedBody(os.path.join(run_path, "inference"))(emb, test.dense)
    labels = test.labels
    eps = 1e-7
    clipped = np.clip(prob, eps, 1 - eps)
    return {"auc": roc_auc(labels, prob), "logloss": float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))),
            "test_keys_found": float(found.mean())}


def run_fleet(args, desc, run_dir, pass_size, n_passes):
    name = "plain_fleet_ps"
    run_path = os.path.join(run_dir, name)
    shutil.rmtree(run_path, ignore_errors=True)
    overrides = _overrides(run_dir, name, desc, pass_size, [
        "PS.mode=async", f"PS.server_num={args.fleet_servers}", f"PS.worker_num={args.fleet_workers}",
        f"PS.save_every_passes={n_passes}"])
    command = [sys.executable, "-m", "paddle_suite.ads.launcher", "--server_num", str(args.fleet_servers), "--worker_num",
               str(args.fleet_workers), "--log_dir", os.path.join(run_path, "logs"), "-c", str(PS_CONFIG),
               *_o(overrides)]
    log_path = os.path.join(run_dir, f"{name}.log")
    code, wall, peaks, ru_max = run_measured(command, log_path, args.sample_s)
    if code != 0:
        _fail(name, code, log_path)
    metrics = read_metrics(run_path)
    examples, train_speed = _train_speed(metrics)
    started = time.time()
    evaluation = fleet_test_auc(overrides, run_path, desc["test_file"])
    ckpt = glob.glob(os.path.join(run_path, "checkpoints", "pass-*", "000", "part-*"))
    return {
        "mode": f"async Fleet PS, MemorySparseTable + SparseAccessor (Adagrad rule), {args.fleet_servers} server(s) + "
                f"{args.fleet_workers} worker(s) on loopback, Executor.run feeds, dense parameters pulled before "
                "every batch (fleet_ps.dense_puller)",
        "servers": args.fleet_servers, "workers": args.fleet_workers,
        "passes": len(metrics), "examples": examples,
        "peak_rss_mb": {role: p["peak_rss_mb"] for role, p in peaks.items()},
        "peak_rss_anon_mb": {role: p["peak_rss_anon_mb"] for role, p in peaks.items()},
        "server_peak_rss_mb": max((p["peak_rss_mb"] for role, p in peaks.items() if role.startswith("server")),
                                  default=None),
        "examples_per_s": examples / wall, "train_examples_per_s": train_speed, "wall_s": wall,
        "auc": evaluation["auc"], "logloss": evaluation["logloss"], "test_keys_found": evaluation["test_keys_found"],
        "checkpoint_sparse_mb": sum(os.path.getsize(f) for f in ckpt) / 2 ** 20, "eval_s": time.time() - started,
        "progressive_train_auc_last_pass": metrics[-1]["auc"] if metrics else None, "log": log_path,
        "provenance": provenance(args.bench_command, command),
    }


# ------------------------------------------------------------------------------------------ report
FULL_ROWS = 2_600_000
STREAM_TITLES = {"stationary": "stationary stream (i.i.d. Zipf draws: the generator's default)",
                 "temporal": "temporal-reuse stream (drifting per-slot hot sets)"}
RUN_NAMES = {"hierarchical": "hierarchical", "plain_fleet_ps": "plain Fleet PS", "single_process": "single process"}


def _table_cells(run, r):
    """The cells that differ between the runs' table rows: run name, table keys, peak RSS MB (anon)."""
    if run == "hierarchical":
        return (f"hierarchical (MEM cap {r['mem_cap_mb']:.0f} MB)", f"{r['keys']:,}",
                f"{r['peak_rss_mb']:.0f} ({r['peak_rss_anon_mb']:.0f})")
    if run == "plain_fleet_ps":  # one peak per process of the job (servers, workers)
        rss = ", ".join(f"{k} {v:.0f}" for k, v in r["peak_rss_mb"].items() if k != "launcher")
        anon = ", ".join(f"{v:.0f}" for k, v in r["peak_rss_anon_mb"].items() if k != "launcher")
        return (f"plain Fleet PS (async, MemorySparseTable, {r.get('servers', 1)} servers x {r.get('workers', 1)} "
                "workers)", "(all, in server RAM)", f"{rss} ({anon})")
    return (f"single process (local, {r['table_rows']:,}-row folded table)", f"{r['table_rows']:,}",
            f"{r['peak_rss_mb']:.0f} ({r['peak_rss_anon_mb']:.0f})")


def stream_section(name, h):
    d = h["data"]
    g = d["generator"]
    lines = [f"## {STREAM_TITLES[name]}", ""]
    if d["train_rows"] != FULL_ROWS:
        lines += [f"**Reduced size**: {d['train_rows']:,} training rows (the full run is {FULL_ROWS:,}); "
                  "speeds and memory at this size are not those of the full run.", ""]
    lines += [
        f"Status: {h['status']}. Data: `paddle_suite.ads.generator` (planted logistic model, power-law keys), "
        f"{d['train_rows']:,} training rows ({d['passes']} passes of {d['pass_size'] // 512} batches of 512) and {d['test_rows']:,} "
        f"held-out rows; {d['hot_slots']} slots with a 10^5 vocabulary (Zipf 1.05), {NUM_SLOTS - d['hot_slots']} "
        f"id-like slots (vocabulary 2^32, Zipf {d['id_zipf']})"
        + (f"; temporal reuse: hot_fraction {g['hot_fraction']}, hot_set_size {g['hot_set_size']:,} per slot, "
           f"drift_per_pass {g['drift_per_pass']}, pass_rows {g['pass_rows']:,}" if g.get("hot_fraction") else "")
        + f". Bayes-optimal test AUC **{h['bayes_auc']:.4f}**."
        + (f" Machine: {h['machine']}; load average (1 min) {h['load_average_start'][0]:.1f} at the start, "
           f"{h['load_average_end'][0]:.1f} at the end (shared with other jobs)." if h.get("load_average_end") else ""),
        "",
        "| run | table keys | peak RSS MB (anon) | examples/s (end to end) | examples/s (training loop) | test AUC | AUC - Bayes |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    hier = h.get("hierarchical") or {}
    rows = [run for run in RUN_NAMES if (h.get(run) or {}).get("auc") is not None]
    for run in rows:
        r = h[run]
        name, keys, rss = _table_cells(run, r)
        lines.append(f"| {name} | {keys} | {rss} | {r['examples_per_s']:,.0f} | {r['train_examples_per_s']:,.0f} | "
                     f"{r['auc']:.4f} | {r['auc'] - h['bayes_auc']:+.4f} |")
    lines += ["", "Provenance (the bench command that produced each row; its training command is in the JSON's "
              "`provenance.train_command`):", ""]
    for run in rows:
        prov = h[run].get("provenance")
        lines.append(f"- {RUN_NAMES[run]}: `{prov['command']}` ({prov['date']})" if prov else
                     f"- {RUN_NAMES[run]}: no provenance recorded")
    if hier.get("auc") is not None:
        hr = h["hit_rate"]
        lines += [
            "",
            f"Hierarchical store: {h['keys']:,} keys x {h['row_bytes']} bytes = {h['table_mb']:,.0f} MB of rows "
            f"({h['ssd_disk_mb']:,.0f} MB LMDB on disk) against a MEM cap of {h['mem_cap_mb']:.0f} MB; "
            f"working sets up to {h['max_working_set_rows']:,} rows. Hit rates (fractions of the distinct keys "
            f"requested by working-set loads): HBM {hr['hbm']:.3f}, MEM {hr['mem']:.3f}, SSD {hr['ssd']:.3f}, "
            f"new (never seen, initialised) {hr['new']:.3f}.",
            "",
            f"Memory: peak RSS {h['peak_rss_mb']:.0f} MB of which anonymous {h['peak_rss_anon_mb']:.0f} MB "
            f"(file-backed LMDB map pages, reclaimable, peak {h['peak_rss_file_mb']:.0f} MB). Allowed: MEM cap "
            f"{h['mem_cap_mb']:.0f} MB + overhead {h['rss_overhead_mb']:.0f} MB (process with paddle + model "
            f"{h['overhead']['baseline_mb']:.0f} MB, two passes of parsed data and three working sets' worth: the "
            f"training one, the committed one until its commit is done and then the prefetched one, the commit's "
            f"temporaries) = {h['mem_cap_mb'] + h['rss_overhead_mb']:.0f} MB: "
            f"within cap **{h['within_cap']}**.",
        ]
    lines.append("")
    return lines


def hit_rate_section(streams):
    names = [n for n in ("stationary", "temporal") if (streams.get(n) or {}).get("hit_rate")]
    if not names:
        return []
    lines = ["## Hit rates per stream (hierarchical store)", "",
             "Fractions of the distinct keys requested by working-set loads, over all passes; the last two rows are "
             "the generator's own count over every pass of the file after the first (train and test rows).", "",
             "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for tier, label in (("hbm", "HBM (kept from the previous pass)"), ("mem", "MEM"), ("ssd", "SSD"),
                        ("new", "new (never seen, initialised)")):
        lines.append(f"| {label} | " + " | ".join(f"{streams[n]['hit_rate'][tier]:.3f}" for n in names) + " |")
    reuse = [streams[n]["data"].get("key_reuse") or {} for n in names]
    lines.append("| generator: keys seen in the previous pass | " +
                 " | ".join(f"{r['mean_seen_previous_pass']:.3f}" if r.get("mean_seen_previous_pass") is not None
                            else "-" for r in reuse) + " |")
    lines.append("| generator: keys never seen before | " +
                 " | ".join(f"{r['mean_new']:.3f}" if r.get("mean_new") is not None else "-" for r in reuse) + " |")
    sizes = ", ".join(f"{n}: {streams[n]['data']['train_rows']:,} rows, MEM cap {streams[n]['mem_cap_mb']:.0f} MB"
                      for n in names)
    return lines + ["", f"({sizes}.)", ""]


def markdown(streams):
    lines = ["# CTR results: hierarchical HBM / MEM / SSD store vs plain Fleet PS vs one process", "",
             "Written by `bench/ctr_results.py` from `bench/results/ctr_results.json` (never by hand); "
             "definitions in the script's docstring. Each row names the command that produced it.", ""]
    lines += hit_rate_section(streams)
    for name in ("stationary", "temporal"):
        if streams.get(name):
            lines += stream_section(name, streams[name])
    stationary = streams.get("stationary") or {}
    if (stationary.get("plain_fleet_ps") or {}).get("auc") is not None:
        lines += ["Plain Fleet PS: each worker pulls the servers' dense parameters before every batch "
                  "(`fleet_ps.dense_puller`); paddle 2.6.2's async runtime never does this for `Executor.run` "
                  "feeds, and without it the worker's MLP stays at its initialisation.", ""]
    lines += ["The id-like slots carry almost no planted signal (weights decay as rank^-1 and their heads are "
              "rare), so folding their keys into the single process's bounded table costs little AUC on this data: "
              "the comparison shows scale and correctness, not an accuracy gain from the large table.", ""]
    return "\n".join(lines)


HIER_TOP_KEYS = ("keys", "peak_rss_mb", "hit_rate", "examples_per_s", "auc", "peak_rss_anon_mb", "peak_rss_file_mb",
                 "train_examples_per_s", "table_mb", "row_bytes", "ssd_disk_mb", "max_working_set_rows", "within_cap",
                 "mem_cap_mb", "rss_overhead_mb", "overhead")


def read_results():
    """The results file as ``{stream: result}`` (a file of the older one-stream layout reads as empty)."""
    if not RESULTS_JSON.exists():
        return {}
    with open(RESULTS_JSON) as handle:
        stored = json.load(handle)
    return {k: v for k, v in stored.items() if k in STREAM_TITLES}


def keep_other_runs(result, stream, runs):
    """Fill in, from the results file (same stream, data and settings), the runs this invocation
    does not run; each keeps its own provenance."""
    previous = read_results().get(stream)
    if previous is None or previous.get("data") != json.loads(json.dumps(result["data"], default=float)) \
            or previous.get("mem_cap_mb") != result["mem_cap_mb"]:
        return
    for run in ("hierarchical", "single_process", "plain_fleet_ps"):
        if run not in runs and previous.get(run):
            result[run] = previous[run]
            if run == "hierarchical":
                result.update({k: previous[k] for k in HIER_TOP_KEYS if k in previous})


def write_results(result, stream, runs):
    from paddle_suite.io import atomic_write

    keep_other_runs(result, stream, runs)
    streams = read_results()
    streams[stream] = json.loads(json.dumps(result, default=float))
    os.makedirs(RESULTS_JSON.parent, exist_ok=True)
    with atomic_write(str(RESULTS_JSON), "w") as handle:
        json.dump(streams, handle, indent=1)
    with atomic_write(str(RESULTS_MD), "w") as handle:
        handle.write(markdown(streams))


def run_stream(args, stream, runs, quick):
    """One stream's data and runs; its result (written to the results files after every run when
    ``args.write``)."""
    rows = args.rows or (150_000 if quick else FULL_ROWS)
    test_rows = args.test_rows or (20_000 if quick else 100_000)
    mem_cap_mb = args.mem_cap_mb or (16.0 if quick else 256.0)
    pass_size = args.pass_size or (25_000 if quick else 100_000)
    base_dir = args.data_dir or ("/tmp/ctr_bench_quick" if quick else "/tmp/ctr_bench")
    data_dir = base_dir if stream == "stationary" else base_dir.rstrip("/") + "_temporal"
    if os.path.realpath(data_dir).startswith(str(REPO) + os.sep):
        sys.exit(f"--data-dir {data_dir} is inside the repository; use a scratch folder such as /tmp/ctr_bench")
    batch = 512  # configs' DataLoader.batch_size: a pass is pass_size // batch whole batches
    reuse = None
    if stream == "temporal":  # the hot sets drift at the trainer's pass boundaries
        reuse = {"hot_fraction": args.hot_fraction, "hot_set_size": args.hot_set_size,
                 "drift_per_pass": args.drift_per_pass, "pass_rows": pass_size // batch * batch}
    desc = make_data(data_dir, rows, test_rows, args.hot_slots, args.id_zipf, reuse)
    n_passes = -(-(-(-rows // batch)) // max(1, pass_size // batch))
    run_dir = os.path.join(data_dir, "runs")
    os.makedirs(run_dir, exist_ok=True)
    baseline = baseline_rss_mb(data_dir)
    overhead = overhead_mb(baseline, pass_size, 9)
    result = {
        "stream": stream, "keys": None, "mem_cap_mb": mem_cap_mb, "rss_overhead_mb": overhead,
        "overhead": {"baseline_mb": baseline, "definition": "RSS after importing paddle and building the model + "
                     "optimiser, + 2 passes of parsed examples (2 x 268 B + 208 B index per row) + 3 working sets' worth "
                     "(training; committed until its commit is done, then prefetched; the commit's temporaries: MEM "
                     "update, redo-log chunk or SSD-table transaction; pass_size x 26 keys x (8 + 72) B); checked "
                     "against the anonymous peak RSS"},
        "peak_rss_mb": None, "hit_rate": None, "examples_per_s": None, "auc": None,
        "bayes_auc": desc["bayes_auc_test"],
        "data": {**{k: desc[k] for k in ("train_rows", "test_rows", "distinct_keys_all_rows", "bayes_auc_test",
                                         "bayes_auc_all_rows", "ctr", "train_bytes", "key_reuse")},
                 "hot_slots": args.hot_slots, "id_zipf": args.id_zipf, "generator": desc["spec"],
                 "pass_size": pass_size, "passes": n_passes},
        "plain_fleet_ps": None, "single_process": None, "status": "running",
        "machine": f"{platform.machine()} {os.cpu_count()} cpu(s), {platform.processor() or platform.node()}",
        "load_average_start": list(os.getloadavg()),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": args.bench_command,
    }
    print(f"[{stream}] overhead allowance {overhead:.0f} MB (baseline process {baseline:.0f} MB)", flush=True)
    for run in runs:
        t0 = time.time()
        if run == "hierarchical":
            h = run_hierarchical(args, desc, run_dir, pass_size, mem_cap_mb)
            result["hierarchical"] = h
            result.update({k: h[k] for k in HIER_TOP_KEYS if k in h})
            result["within_cap"] = bool(h["peak_rss_anon_mb"] <= mem_cap_mb + overhead)
            if stream == "stationary" and rows == FULL_ROWS and h["keys"] < args.min_keys:
                result["status"] = f"table too small: {h['keys']} keys < {args.min_keys:.0f}"
        elif run == "single_process":
            result["single_process"] = run_single(args, desc, run_dir, pass_size, n_passes)
        elif run == "plain_fleet_ps":
            result["plain_fleet_ps"] = run_fleet(args, desc, run_dir, pass_size, n_passes)
        else:
            raise SystemExit(f"unknown run '{run}' (hierarchical, single_process, plain_fleet_ps)")
        summary = result.get("hierarchical") if run == "hierarchical" else result[run]
        print(f"[{stream}] {run}: AUC {summary['auc']:.4f} (Bayes {result['bayes_auc']:.4f}), "
              f"{summary['examples_per_s']:,.0f} examples/s end to end, {time.time() - t0:.0f} s", flush=True)
        if args.write:
            write_results(result, stream, runs)
    if result["status"] == "running":
        result["status"] = "complete"
    result["load_average_end"] = list(os.getloadavg())
    if args.write:
        write_results(result, stream, runs)
    if not args.keep_data and quick:
        shutil.rmtree(data_dir, ignore_errors=True)
    return result


def main(argv=None):
    args = parse_args(argv)
    if args.render:
        from paddle_suite.io import atomic_write

        with atomic_write(str(RESULTS_MD), "w") as handle:
            handle.write(markdown(read_results()))
        return read_results()
    import yaml

    with open(PS_CONFIG) as handle:
        ps = yaml.safe_load(handle)["PS"]
    args.fleet_servers = args.fleet_servers or int(ps["server_num"])
    args.fleet_workers = args.fleet_workers or int(ps["worker_num"])
    args.write = args.write or not args.quick
    args.bench_command = " ".join([os.path.basename(sys.executable), "bench/ctr_results.py",
                                   *(argv if argv is not None else sys.argv[1:])])
    started = time.time()
    streams = [s.strip() for s in args.streams.split(",") if s.strip()]
    unknown = set(streams) - set(STREAM_TITLES)
    if unknown:
        raise SystemExit(f"--streams: unknown {sorted(unknown)} (stationary, temporal)")
    results = {}
    for stream in streams:
        runs = [r.strip() for r in (args.runs if stream == "stationary" else args.temporal_runs).split(",") if r.strip()]
        results[stream] = run_stream(args, stream, runs, args.quick)
    summary = {"streams": results, "total_s": time.time() - started, "command": args.bench_command}
    print("RESULT " + json.dumps(summary, default=float), flush=True)
    return summary


if __name__ == "__main__":
    main()
