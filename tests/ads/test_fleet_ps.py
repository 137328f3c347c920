"""Fleet parameter-server training (async, geo), checkpoints, sparse lookup and our launcher."""
import glob
import gzip
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import paddle_suite  # noqa: F401

from paddle_suite.ads.fleet_ps import SparseShards, write_delta

from .planted import planted_split

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "ctr_dnn_ps.yaml")


def _planted(tmp_path, rows, test_rows=8000, vocab=50000):
    return planted_split(tmp_path, rows, test_rows, vocab, seed=3)


def _processes_with(marker):
    """PIDs of live processes whose command line contains ``marker``."""
    found = []
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(cmdline, "rb") as handle:
                text = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in text:
            found.append(int(cmdline.split("/")[2]))
    return found


def _launcher(args, **kwargs):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "paddle_suite.ads.launcher", *args], cwd=kwargs.pop("cwd", ROOT),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


ROLE_SCRIPT = r'''
import os, subprocess, sys, time
marker, crash = sys.argv[1], sys.argv[2]
if os.environ["TRAINING_ROLE"] == "PSERVER":
    # a grandchild, like gloo's HTTP store or a dataset pipe: must die with the group
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", marker])
    time.sleep(600)
if crash == "crash" and os.environ["PADDLE_TRAINER_ID"] == "1":
    time.sleep(1)
    raise RuntimeError("worker one failed on purpose " + marker)
time.sleep(600 if crash == "hang" else 1)
'''


def _wait_gone(marker, timeout=10):
    deadline = time.time() + timeout
    while _processes_with(marker) and time.time() < deadline:
        time.sleep(0.2)
    return _processes_with(marker)


def _launch_roles(tmp_path, name, servers, behaviour):
    """Start our launcher on ROLE_SCRIPT (1-2 servers, 2 workers); return the process and its marker."""
    script = tmp_path / "role.py"
    script.write_text(ROLE_SCRIPT)
    marker = f"ads-launch-test-{os.getpid()}-{name}"
    proc = _launcher(["--server_num", str(servers), "--worker_num", "2", "--log_dir", str(tmp_path / "logs"),
                      str(script), marker, behaviour])
    return proc, marker


def test_launcher_fails_on_crashing_worker_and_leaves_no_orphans(tmp_path):
    proc, marker = _launch_roles(tmp_path, "crash", servers=2, behaviour="crash")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "worker 1 exited with status 1" in err
    assert "worker one failed on purpose" in err  # the failing role's own error is shown
    assert _wait_gone(marker) == []


def test_launcher_success_stops_servers(tmp_path):
    proc, marker = _launch_roles(tmp_path, "ok", servers=1, behaviour="ok")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "all 2 workers finished" in out
    assert _wait_gone(marker) == []


def test_launcher_sigterm_kills_the_whole_group(tmp_path):
    proc, marker = _launch_roles(tmp_path, "term", servers=1, behaviour="hang")
    deadline = time.time() + 30
    while len(_processes_with(marker)) < 4 and time.time() < deadline:  # 3 roles + the grandchild
        time.sleep(0.2)
    assert len(_processes_with(marker)) >= 4
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "killed process group" in err
    assert _wait_gone(marker) == []


def _shard_line(key, values):
    header = [0, 0, 0.1, 1, 0]  # slot, unseen_days, delta_score, show, click
    return " ".join(str(x) for x in [key, *header, *values])


def _adagrad_row(emb):  # embed_w, embed_g2sum, embedx (dim-1), embedx_g2sum
    return [emb[0], 0.5, *emb[1:], 0.25]


def test_delta_filter_and_sparse_chain_lookup(tmp_path):
    rng = np.random.default_rng(0)
    base_keys = np.array([3, 2**63 + 5, 11, 42, 7], dtype=np.uint64)
    base_rows = rng.normal(size=(5, 3)).astype(np.float32).round(4)
    full = tmp_path / "full"
    (full / "000").mkdir(parents=True)
    (full / "001").mkdir()
    (full / "001" / "part-000.gz").write_bytes(gzip.compress(b"dense\n"))
    lines = [_shard_line(int(k), _adagrad_row(r)) for k, r in zip(base_keys, base_rows)]
    (full / "000" / "part-000-00000.gz").write_bytes(gzip.compress(("\n".join(lines[:3]) + "\n").encode()))
    (full / "000" / "part-000-00001").write_text("\n".join(lines[3:]) + "\n")  # Fleet also writes plain text
    root = tmp_path / "checkpoints"
    base = root / "pass-00000"
    os.makedirs(base)
    os.rename(full, base / "full")
    for item in os.listdir(base / "full"):
        os.rename(base / "full" / item, base / item)
    # delta: a dump where keys 2**63+5 and 42 changed, filtered to the touched keys
    dump = tmp_path / "dump"
    (dump / "000").mkdir(parents=True)
    (dump / "001").mkdir()
    (dump / "001" / "part-000.gz").write_bytes(gzip.compress(b"dense2\n"))
    changed = base_rows.copy()
    changed[[1, 3]] += 1.0
    dump_lines = [_shard_line(int(k), _adagrad_row(r)) for k, r in zip(base_keys, changed)]
    (dump / "000" / "part-000-00000.gz").write_bytes(gzip.compress(("\n".join(dump_lines) + "\n").encode()))
    delta = root / "pass-00001"
    write_delta(str(dump), str(delta), np.array([42, 2**63 + 5, 999], dtype=np.uint64))
    kept = gzip.decompress((delta / "000" / "part-000-00000.gz").read_bytes()).decode().split()
    assert len(gzip.decompress((delta / "000" / "part-000-00000.gz").read_bytes()).splitlines()) == 2
    assert str(2**63 + 5) in kept and "42" in kept and "3" not in kept[::10]
    assert gzip.decompress((delta / "001" / "part-000.gz").read_bytes()) == b"dense2\n"
    meta = {"pass": 1, "kind": "delta", "chain": ["pass-00000", "pass-00001"], "mode": "async",
            "sparse_dim": 3, "sparse_optimizer": "adagrad"}
    table = SparseShards(str(root), meta)
    assert len(table) == 5
    query = np.array([[42, 3], [2**63 + 5, 12345]], dtype=np.uint64)
    rows, found = table.lookup(query)
    assert rows.shape == (2, 2, 3)
    np.testing.assert_allclose(rows[0, 0], changed[3], atol=1e-6)  # from the delta
    np.testing.assert_allclose(rows[0, 1], base_rows[0], atol=1e-6)  # from the base
    np.testing.assert_allclose(rows[1, 0], changed[1], atol=1e-6)  # key >= 2^63 survives the round trip
    assert found.tolist() == [[True, True], [True, False]] and not rows[1, 1].any()


def test_local_mode_resumes_after_restart(tmp_path, capsys):
    """Without a Fleet role the async config runs locally; a new process continues after the last pass."""
    from paddle_suite.ads.fleet_ps import PSTrainer, latest_checkpoint
    from paddle_suite.config import load_config
    from paddle_suite.engine.run import Run

    train, _, _ = _planted(tmp_path, rows=3 * 8192, vocab=3000)
    overrides = [f"DataLoader.train_files=[{train}]", f"Global.output_dir={tmp_path / 'out'}",
                 "DataLoader.pass_size=8192", "PS.local_vocab=100003", "Arch.emb_dim=8", "Arch.hidden_sizes=[32]"]
    first = PSTrainer(load_config(CONFIG, overrides + ["PS.max_passes=2"]))
    assert first.mode == "local"
    first.run()
    run = Run(first.config)
    run_dir = run.dir
    assert latest_checkpoint(run.checkpoints_dir)["pass"] == 1
    capsys.readouterr()
    PSTrainer(load_config(CONFIG, overrides)).run()
    assert "resumed from pass-00001 (pass 1)" in capsys.readouterr().out
    passes = _metrics(run_dir)
    assert [m["pass"] for m in passes] == [0, 1, 2]
    # the restored model keeps its quality: pass 2 starts from the trained tables, not from scratch
    assert passes[2]["auc"] > passes[0]["auc"] + 0.1, passes
    assert latest_checkpoint(run.checkpoints_dir)["kind"] == "full"
    # re-export from the newest local checkpoint
    from paddle_suite.ads.task import export_run

    exported = export_run(load_config(CONFIG, overrides), str(tmp_path / "reexport"))
    assert os.path.isfile(os.path.join(exported, "body.pdmodel"))
    assert os.path.isfile(os.path.join(exported, "arch.json"))


def _metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle]


@pytest.mark.slow
def test_async_two_servers_two_workers_learn_checkpoint_and_resume(tmp_path):
    from paddle_suite.ads.task import evaluate_run
    from paddle_suite.config import load_config

    train, test, meta = _planted(tmp_path, rows=3 * 12288)
    overrides = [f"DataLoader.train_files=[{train}]", f"DataLoader.test_files=[{test}]",
                 f"Global.output_dir={tmp_path / 'out'}", "DataLoader.pass_size=12288", "PS.base_every=2",
                 "Arch.emb_dim=8", "Arch.hidden_sizes=[64,32]", "Optimizer.lr=0.003"]
    run_dir = str(tmp_path / "out" / "ctr_dnn_ps")
    args = ["-c", CONFIG, "--server_num", "2", "--worker_num", "2", "--log_dir", str(tmp_path / "logs")]
    first = _launcher(args + [x for o in overrides + ["PS.max_passes=2"] for x in ("-o", o)])
    _, err = first.communicate(timeout=150)
    assert first.returncode == 0, err
    roots = os.path.join(run_dir, "checkpoints")
    chain = json.load(open(os.path.join(roots, "latest.json")))
    assert chain["chain"] == ["pass-00000", "pass-00001"] and chain["kind"] == "delta"
    base_rows = SparseShards(roots, json.load(open(os.path.join(roots, "pass-00000", "meta.json"))))
    delta_only = glob.glob(os.path.join(roots, "pass-00001", "000", "part-*"))
    delta_keys = sum(len(gzip.decompress(open(f, "rb").read()).splitlines()) for f in delta_only)
    assert 0 < delta_keys < len(base_rows) + delta_keys  # a delta holds only the touched rows
    before = SparseShards(roots, chain)

    # every process is gone; a new job resumes from the chain (base + delta) and trains pass 2
    second = _launcher(args + [x for o in overrides + ["PS.max_passes=3"] for x in ("-o", o)])
    _, err = second.communicate(timeout=150)
    assert second.returncode == 0, err
    assert "resumed from pass-00001 (pass 1)" in open(tmp_path / "logs" / "workerlog.0").read()
    passes = _metrics(run_dir)
    assert [m["pass"] for m in passes] == [0, 1, 2]
    assert passes[-1]["auc"] > 0.65, passes  # global AUC over both workers, planted data
    after_meta = json.load(open(os.path.join(roots, "latest.json")))
    assert after_meta["kind"] == "base" and after_meta["chain"] == ["pass-00002"]
    after = SparseShards(roots, after_meta)
    # rows not trained in pass 2 were restored on the servers from base + delta, exactly
    trained = np.unique(np.concatenate([np.load(f) for f in glob.glob(os.path.join(roots, "pass-00002", "touched.w*.npy"))]))
    untouched = np.setdiff1d(before.keys, trained)
    assert untouched.size > 100
    rows_before, _ = before.lookup(untouched)
    rows_after, found = after.lookup(untouched)
    assert found.all()
    np.testing.assert_allclose(rows_after, rows_before, atol=1e-5)
    changed_in_delta = untouched[np.any(before.lookup(untouched)[0] != base_rows.lookup(untouched)[0], axis=1)]
    assert changed_in_delta.size > 0  # some of them come from the delta, not the base

    result = evaluate_run(load_config(CONFIG, overrides))  # exported dense body + sparse shards
    assert result["examples"] == 8000 and result["auc"] > 0.65, result


@pytest.mark.slow
def test_geo_under_fleetrun_two_servers_two_workers_learns(tmp_path):
    """The issue's command line: fleetrun --server_num=2 --worker_num=2 tools/train.py -c CONFIG.

    fleetrun exits 0 even when workers crash, so success is read from the workers' own logs.
    """
    train, test, meta = _planted(tmp_path, rows=2 * 16384)
    overrides = [f"DataLoader.train_files=[{train}]", f"Global.output_dir={tmp_path / 'out'}",
                 "DataLoader.pass_size=16384", "PS.mode=geo", "PS.local_vocab=100003",
                 "Arch.emb_dim=8", "Arch.hidden_sizes=[64,32]"]
    fleetrun = os.path.join(os.path.dirname(sys.executable), "fleetrun")
    logs = tmp_path / "logs"
    proc = subprocess.run([fleetrun, "--server_num=2", "--worker_num=2", f"--log_dir={logs}",
                           os.path.join(ROOT, "tools", "train.py"), "-c", CONFIG, "--no-progress",
                           *[x for o in overrides for x in ("-o", o)]],
                          cwd=tmp_path, capture_output=True, text=True, timeout=150)  # gloo's http.log lands in cwd
    worker_logs = [open(logs / f"workerlog.{i}").read() for i in range(2)]
    assert proc.returncode == 0 and all("Traceback" not in log for log in worker_logs), worker_logs[0][-3000:]
    passes = _metrics(str(tmp_path / "out" / "ctr_dnn_ps"))
    assert [m["pass"] for m in passes] == [0, 1]
    assert passes[-1]["examples"] == 16384  # both workers' examples: gloo all_reduce works under fleetrun
    assert passes[-1]["auc"] > 0.6, passes
    latest = json.load(open(tmp_path / "out" / "ctr_dnn_ps" / "checkpoints" / "latest.json"))
    assert latest["kind"] == "full" and latest["mode"] == "geo"


@pytest.mark.slow
def test_async_with_inmemory_dataset_and_generator_pipe(tmp_path):
    """DataLoader.reader=dataset: Fleet's InMemoryDataset fed by the data module's generator."""
    train, _, _ = _planted(tmp_path, rows=4 * 6144, vocab=3000)
    lines = open(train).readlines()
    parts = []
    for i in range(4):  # 2 passes x 2 workers, one file each
        part = tmp_path / f"part-{i}.txt"
        part.write_text("".join(lines[i * 6144:(i + 1) * 6144]))
        parts.append(str(part))
    overrides = [f"DataLoader.train_files=[{','.join(parts)}]", f"Global.output_dir={tmp_path / 'out'}",
                 "DataLoader.reader=dataset", "DataLoader.files_per_pass=1", "Optimizer.lr=0.003", "PS.sparse_lr=30",
                 "Arch.emb_dim=8", "Arch.hidden_sizes=[64,32]"]
    proc = _launcher(["-c", CONFIG, "--server_num", "1", "--worker_num", "2", "--log_dir", str(tmp_path / "logs"),
                      *[x for o in overrides for x in ("-o", o)]])
    _, err = proc.communicate(timeout=150)
    assert proc.returncode == 0, err
    passes = _metrics(str(tmp_path / "out" / "ctr_dnn_ps"))
    assert [m["pass"] for m in passes] == [0, 1]
    assert [m["examples"] for m in passes] == [2 * 6144, 2 * 6144]  # every row once, both workers
    assert passes[-1]["auc"] > passes[0]["auc"] and passes[-1]["auc"] > 0.6, passes
    latest = json.load(open(tmp_path / "out" / "ctr_dnn_ps" / "checkpoints" / "latest.json"))
    assert latest["kind"] == "base"  # keys are not seen by Python in this mode: no deltas
