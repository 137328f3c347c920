"""The hierarchical store with S=2 shard servers and W=2 workers on loopback (store_service):
delta merge key by key, learning under our PS launcher, kill -9 of the whole job and resume."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import paddle_suite  # noqa: F401

from paddle_suite.ads.launcher import PSJob, _group_alive, free_ports

from .planted import planted_split

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "ctr_hierarchical.yaml")
PASSES = 6
PASS_SIZE = 8192
KEY = b"test-secret-0123456789"  # the store refuses keys under 16 bytes


def _planted(tmp_path, rows, test_rows=8000, vocab=50000):
    return planted_split(tmp_path, rows, test_rows, vocab, seed=5)


def _overrides(train, test, out):
    return [f"DataLoader.train_files=[{train}]", f"DataLoader.test_files=[{test}]", f"Global.output_dir={out}",
            f"DataLoader.pass_size={PASS_SIZE}", "Arch.emb_dim=8", "Arch.hidden_sizes=[64,32]", "Store.mem_cap_mb=2"]


def _config(overrides):
    from paddle_suite.config import load_config

    return load_config(CONFIG, overrides)


# ------------------------------------------------------------------------------ delta merge
def _start_servers(path, endpoints, workers, dim, state_dim, seed):
    env = dict(os.environ, PADDLE_SUITE_STORE_AUTHKEY=KEY.decode())
    procs = []
    for shard, endpoint in enumerate(endpoints):
        code = ("from paddle_suite.ads.store_service import ShardServer, parse_endpoint;"
                f"ShardServer({str(path)!r}, {shard}, {len(endpoints)}, {workers}, {dim}, {state_dim}, mem_cap_mb=1.0,"
                f" init_std=0.1, seed={seed}).serve(parse_endpoint({endpoint!r}), {KEY!r})")
        procs.append(subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    return procs


def _in_threads(fn, workers):
    results, errors = [None] * workers, []

    def run(w):
        try:
            results[w] = fn(w)
        except Exception as error:  # re-raised below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    if errors:
        raise errors[0]
    return results


def _join(servers):
    """Wait for shard servers that stop by themselves; each must exit 0."""
    for proc in servers:
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out


def _kill(servers):
    for proc in servers:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_two_workers_updates_of_one_key_are_both_applied(tmp_path):
    """Tiny table, 2 server processes, 2 workers: every key's committed row is its initial row plus
    the sum of the deltas of the workers that trained it; the dense state is the workers' mean."""
    from paddle_suite.ads.store import init_rows, shard_of
    from paddle_suite.ads.store_service import RemoteStore

    dim, state_dim, seed = 3, 3, 7
    endpoints = [f"127.0.0.1:{p}" for p in free_ports(2)]
    servers = _start_servers(tmp_path / "store", endpoints, 2, dim, state_dim, seed)
    keys = np.arange(1, 41, dtype=np.uint64) * np.uint64(1000003)
    assert set(shard_of(keys, 2)) == {0, 1}
    mine = [keys[:30], keys[10:]]  # keys[10:30] are trained by both workers
    rng = np.random.default_rng(0)
    deltas = [[rng.normal(size=(m.size, dim + state_dim)).astype(np.float32) for m in mine] for _ in range(2)]
    expected = init_rows(keys, dim, state_dim, 0.1, seed)
    averages = []
    try:
        stores = _in_threads(lambda w: RemoteStore(endpoints, w, 2, dim, authkey=KEY), 2)

        def work(w):
            store = stores[w]
            ws = store.load_working_set(mine[w][::-1])  # any order in, sorted working set out
            assert np.array_equal(ws.keys, mine[w])
            np.testing.assert_array_equal(ws.rows, init_rows(mine[w], dim, state_dim, 0.1, seed))
            following = store.prefetch(mine[w])  # opened before pass 0 commits: must see its merge
            ws.rows += deltas[0][w]
            averages.append(store.commit_pass(ws, 0, dense={"model": {"w": np.full(4, float(w), np.float32)},
                                                            "optimizer": {}}))
            ws = following.result()
            ws.rows += deltas[1][w]
            store.commit_pass(ws, 1, dense={"model": {"w": np.full(4, 2.0 * w, np.float32)}, "optimizer": {}})
            return ws

        _in_threads(work, 2)
        for step in range(2):
            for w in range(2):
                np.add.at(expected, np.searchsorted(keys, mine[w]), deltas[step][w])
        got = stores[0].read_rows(keys)
        for key, row, want in zip(keys, got, expected):  # key by key
            np.testing.assert_allclose(row, want, rtol=0, atol=1e-5, err_msg=f"key {int(key)}")
        for average in averages:
            np.testing.assert_array_equal(average["model"]["w"], np.full(4, 0.5, np.float32))
        assert stores[1].pull_dense(1)["model"]["w"].tolist() == [1.0] * 4
        for store in stores:
            store.close()
        _join(servers)  # servers stop by themselves once both workers are done
    finally:
        _kill(servers)
    # offline, the same shards open as the in-process sharded store with the same rows
    from paddle_suite.ads.store import ShardedStore

    with ShardedStore(tmp_path / "store", 2, dim, state_dim, mem_cap_mb=1.0, init_std=0.1, seed=seed) as store:
        assert store.last_pass == 1
        np.testing.assert_allclose(store.read_rows(keys), expected, rtol=0, atol=1e-5)


def test_restart_after_a_crash_inside_the_two_phase_commit(tmp_path):
    """kill -9 of both servers (1) with pass 1 prepared on shard 0 only: rolled back everywhere,
    its dense file dropped; (2) then, redone, prepared on both and finished on shard 0 only:
    rolled forward everywhere."""
    from paddle_suite.ads.store import init_rows
    from paddle_suite.ads.store_service import RemoteStore

    dim, state_dim, seed = 2, 2, 3
    keys = np.arange(1, 31, dtype=np.uint64) * np.uint64(7919)
    deltas = [np.full((keys.size, dim + state_dim), v, np.float32) for v in (1.0, 10.0)]
    endpoints = [f"127.0.0.1:{p}" for p in free_ports(2)]
    servers = _start_servers(tmp_path / "store", endpoints, 1, dim, state_dim, seed)

    def check(store, expected_pass):
        assert store.last_pass == expected_pass
        expected = init_rows(keys, dim, state_dim, 0.1, seed) + sum(deltas[: expected_pass + 1])
        for key, row, want in zip(keys, store.read_rows(keys), expected):
            np.testing.assert_allclose(row, want, rtol=0, atol=1e-5, err_msg=f"key {int(key)}")
        assert store.pull_dense(expected_pass)["model"]["w"].tolist() == [float(expected_pass)] * 2
        assert sorted(os.listdir(tmp_path / "store" / "dense")) == [f"pass-{p:05d}.npz" for p in range(expected_pass + 1)]

    def interrupted_pass_1(store, finish_one):
        ws = store.load_working_set(keys)
        ws.rows += deltas[1]
        for shard in range(2):  # commit_pass's steps, stopped part-way
            part = ws.shard_ids == shard
            store._call(shard, "push", pass_id=1, worker=0, keys=ws.keys[part], delta=deltas[1][part],
                        dense={"model": {"w": np.ones(2, np.float32)}, "optimizer": {}} if shard == 0 else None)
        store._call(0, "prepare", pass_id=1)
        if finish_one:
            store._call(1, "prepare", pass_id=1)
            store._call(0, "finish", pass_id=1)
        for proc in servers:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        return _start_servers(tmp_path / "store", endpoints, 1, dim, state_dim, seed)

    try:
        store = RemoteStore(endpoints, 0, 1, dim, authkey=KEY)
        ws = store.load_working_set(keys)
        ws.rows += deltas[0]
        store.commit_pass(ws, 0, dense={"model": {"w": np.zeros(2, np.float32)}, "optimizer": {}})
        servers = interrupted_pass_1(store, finish_one=False)
        store = RemoteStore(endpoints, 0, 1, dim, authkey=KEY)
        check(store, 0)
        servers = interrupted_pass_1(store, finish_one=True)
        store = RemoteStore(endpoints, 0, 1, dim, authkey=KEY)
        check(store, 1)
        store.close()
        _join(servers)
    finally:
        _kill(servers)


# ------------------------------------------------------------------------------ whole jobs
def _job(train, test, out, log_dir):
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train.py"), "-c", CONFIG, "--no-progress"]
    cmd += [x for o in _overrides(train, test, out) for x in ("-o", o)]
    return PSJob(cmd, 2, 2, str(log_dir), poll_seconds=0.2)


def _run_job(job):
    job.start()
    code, message = job.wait()
    assert code == 0, message
    assert not _group_alive(job.pgid), "processes of the job outlived it"


def _final_state(out, train, test):
    from paddle_suite.ads.data import read_ctr
    from paddle_suite.ads.hierarchical_train import open_store, store_path
    from paddle_suite.ads.store_service import load_dense

    config = _config(_overrides(train, test, out))
    batch, _ = read_ctr(train)
    keys = np.unique(batch.sparse)
    store = open_store(config, 8)  # layout.json: the 2 shard directories, as a ShardedStore
    try:
        assert store.num_shards == 2
        rows, last = store.read_rows(keys), store.last_pass
        passes = {shard.last_pass for shard in store.shards}
    finally:
        store.close()
    dense_dir = os.path.join(store_path(config), "dense")
    dense = load_dense(os.path.join(dense_dir, f"pass-{last:05d}.npz"))["model"]
    return last, passes, rows, dense, sorted(os.listdir(dense_dir))


@pytest.mark.slow
def test_two_servers_two_workers_learn_and_resume_after_kill_9(tmp_path):
    from paddle_suite.ads.hierarchical_train import HierarchicalTrainer
    from paddle_suite.ads.task import evaluate_run

    train, test, meta = _planted(tmp_path, rows=PASSES * PASS_SIZE)

    # 1. the S=2/W=2 job learns, about as well as one process on the same data
    _run_job(_job(train, test, tmp_path / "ref", tmp_path / "ref_logs"))
    ref_run = tmp_path / "ref" / "ctr_hierarchical"
    records = [json.loads(line) for line in open(ref_run / "metrics.jsonl")]
    assert [r["pass"] for r in records] == list(range(PASSES))
    # worker 0 logs metrics over both workers' batches (each trained half of every pass)
    assert [(r["examples"], r["workers_in_metrics"]) for r in records] == [(PASS_SIZE, 2)] * PASSES
    assert records[-1]["auc"] > 0.75 and not os.listdir(ref_run / "pass_scores")
    dist = evaluate_run(_config(_overrides(train, test, tmp_path / "ref")))
    single_config = _config(_overrides(train, test, tmp_path / "single"))
    HierarchicalTrainer(single_config).train()
    single = evaluate_run(single_config)
    print(f"test AUC: 2x2 {dist['auc']:.4f}, 1 process {single['auc']:.4f}, Bayes {meta['bayes_auc']:.4f}")
    assert dist["examples"] == 8000
    assert dist["auc"] > 0.8 and dist["auc"] > single["auc"] - 0.05, (dist, single)

    # 2. kill -9 of every process once pass 0 is committed, then the same job again resumes
    crash_run = tmp_path / "crash" / "ctr_hierarchical"
    job = _job(train, test, tmp_path / "crash", tmp_path / "crash_logs")
    job.start()
    deadline = time.time() + 90
    metrics = crash_run / "metrics.jsonl"
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 1):
        assert all(p.poll() is None for _, p, _ in job.procs), "a role died before the kill"
        time.sleep(0.02)
    os.killpg(job.pgid, signal.SIGKILL)
    for _, proc, handle in job.procs:
        assert proc.wait(timeout=30) == -signal.SIGKILL
        handle.close()
    assert not _group_alive(job.pgid)
    logged = len(metrics.read_text().splitlines())

    _run_job(_job(train, test, tmp_path / "crash", tmp_path / "resume_logs"))
    resumed = [line for line in open(tmp_path / "resume_logs" / "workerlog.0") if "resuming after pass" in line]
    assert len(resumed) == 1, "the restarted job did not resume"
    killed_at = int(resumed[0].split("resuming after pass ")[1].split()[0])
    print(f"killed with {logged} passes logged; resumed after pass {killed_at}")
    # a pass is logged after its commit: at most the interrupted pass was lost
    assert logged - 1 <= killed_at < PASSES - 1
    assert "resuming after pass" in (tmp_path / "resume_logs" / "workerlog.1").read_text()
    logged_passes = [json.loads(line)["pass"] for line in open(crash_run / "metrics.jsonl")]
    assert sorted(set(logged_passes)) == list(range(PASSES)) and logged_passes[-1] == PASSES - 1

    # all tiers consistent: both shards at the last pass, dense state of that pass, and the same
    # rows and dense parameters as the uninterrupted job (training and merging are deterministic)
    last_ref, shards_ref, rows_ref, dense_ref, files_ref = _final_state(tmp_path / "ref", train, test)
    last, shards, rows, dense, files = _final_state(tmp_path / "crash", train, test)
    assert last == last_ref == PASSES - 1 and shards == shards_ref == {PASSES - 1}
    assert files == files_ref == [f"pass-{PASSES - 2:05d}.npz", f"pass-{PASSES - 1:05d}.npz"]
    np.testing.assert_allclose(rows, rows_ref, rtol=0, atol=1e-5)
    assert dense.keys() == dense_ref.keys()
    for name in dense:
        np.testing.assert_allclose(dense[name], dense_ref[name], rtol=0, atol=1e-5, err_msg=name)
