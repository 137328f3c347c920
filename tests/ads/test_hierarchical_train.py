"""Pass-based training on the hierarchical store: learning, commit protocol, crash and resume."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import paddle_suite  # noqa: F401

from .planted import planted_split

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "ctr_hierarchical.yaml")


def _planted(tmp_path, rows, test_rows=8000, vocab=50000):
    return planted_split(tmp_path, rows, test_rows, vocab, seed=5)


def _overrides(tmp_path, train, test, out, extra=()):
    return [f"DataLoader.train_files=[{train}]", f"DataLoader.test_files=[{test}]", f"Global.output_dir={out}",
            "DataLoader.pass_size=8192", "Arch.emb_dim=8", "Arch.hidden_sizes=[64,32]", "Store.mem_cap_mb=2",
            *extra]


def _config(overrides):
    from paddle_suite.config import load_config

    return load_config(CONFIG, overrides)


@pytest.mark.parametrize("shards", [1, 2])
def test_pass_training_learns_and_evaluates(tmp_path, shards):
    """shards=2: the key-hash sharded store (what S servers would own), in one process."""
    from paddle_suite.ads.fleet_ps import evaluate_run
    from paddle_suite.ads.hierarchical_train import HierarchicalTrainer

    train, test, meta = _planted(tmp_path, rows=4 * 8192)
    config = _config(_overrides(tmp_path, train, test, tmp_path / "out", [f"Store.num_shards={shards}"]))
    last = HierarchicalTrainer(config).train()
    assert last["pass"] == 3 and last["examples"] == 8192
    run_dir = tmp_path / "out" / "ctr_hierarchical"
    passes = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert [p["pass"] for p in passes] == [0, 1, 2, 3]
    assert passes[-1]["loss"] < passes[0]["loss"]
    # the MEM tier was capped at 2 MiB, well below the table: rows went through the SSD tier
    assert passes[-1]["mem_mb"] <= 2.0 and passes[-1]["hit_ssd"] > 0
    result = evaluate_run(config)  # exported body + rows read back from the store
    assert result["examples"] == 8000
    assert 0.75 < result["auc"] < meta["bayes_auc"] + 0.02, (result, meta["bayes_auc"])
    # commit protocol bookkeeping: dense checkpoints exist only for committed passes
    dense = sorted(os.listdir(run_dir / "dense"))
    assert dense == ["pass-00002.pdparams", "pass-00003.pdparams"]


def test_hbm_table_updates_the_working_set_in_place():
    """On CPU the HBM tensor is the working set's memory: no second copy, and the in-place sparse
    update lands in ``ws.rows`` without a read-back."""
    import paddle

    from paddle_suite.ads.hierarchical_train import SparseAdagrad, hbm_table, table_shares_rows

    rows = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    before = rows.copy()
    table = hbm_table(rows)
    assert table_shares_rows(table, rows)
    index = paddle.to_tensor(np.array([3, 7]))
    grad = paddle.ones([2, 2])
    SparseAdagrad(lr=0.1, initial_g2sum=3.0, dim=2).apply(table, index, paddle.gather(table, index), grad)
    changed = np.flatnonzero((rows != before).any(axis=1))
    assert changed.tolist() == [3, 7]
    np.testing.assert_allclose(rows[3, 2:], before[3, 2:] + 1.0, rtol=1e-6)  # accumulators: += g^2
    np.testing.assert_allclose(rows[3, :2], before[3, :2] - 0.1 * np.sqrt(3.0 / (3.0 + rows[3, 2:])), rtol=1e-5)
    view = np.zeros((8, 6), np.float32)[:, :4]
    assert not table_shares_rows(hbm_table(view), view)  # a strided view is copied (and read back)


def _final_state(run_dir, config_overrides):
    """Every stored row of the run (keys of the training data) and the dense parameters."""
    import paddle

    from paddle_suite.ads.data import read_ctr
    from paddle_suite.ads.hierarchical_train import open_store

    config = _config(config_overrides)
    batch, _ = read_ctr(config["DataLoader"]["train_files"][0])
    keys = np.unique(batch.sparse)
    store = open_store(config, 8)
    try:
        rows = store.read_rows(keys)
        last = store.last_pass
    finally:
        store.close()
    dense = paddle.load(os.path.join(run_dir, "dense", f"pass-{last:05d}.pdparams"))["model"]
    return last, rows, {k: np.asarray(v) for k, v in dense.items()}


@pytest.mark.slow
def test_kill_9_mid_pass_then_resume_matches_uninterrupted_run(tmp_path):
    train, test, _ = _planted(tmp_path, rows=8 * 8192)
    train_py = os.path.join(ROOT, "tools", "train.py")

    def run(out, wait=True):
        cmd = [sys.executable, train_py, "-c", CONFIG, "--no-progress"]
        cmd += [x for o in _overrides(tmp_path, train, test, out) for x in ("-o", o)]
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    reference = run(tmp_path / "ref")
    out_ref, _ = reference.communicate(timeout=120)
    assert reference.returncode == 0, out_ref[-3000:]

    crashed_dir = tmp_path / "crash" / "ctr_hierarchical"
    victim = run(tmp_path / "crash")
    deadline = time.time() + 90
    while time.time() < deadline:  # kill -9 once pass 1 is committed, i.e. while pass 2 runs
        metrics = crashed_dir / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    assert victim.returncode == -signal.SIGKILL

    from paddle_suite.ads.hierarchical_train import open_store

    store = open_store(_config(_overrides(tmp_path, train, test, tmp_path / "crash")), 8)
    killed_at = store.last_pass
    store.close()
    print(f"killed after pass {killed_at}")
    assert 1 <= killed_at < 7, "the kill must land before the last pass"

    resumed = run(tmp_path / "crash")
    out, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, out[-3000:]
    assert f"resuming after pass {killed_at}" in out
    passes = [json.loads(line)["pass"] for line in open(crashed_dir / "metrics.jsonl")]
    # passes up to killed_at were logged once; the interrupted pass was redone
    assert passes[: killed_at + 1] == list(range(killed_at + 1)) and passes[-1] == 7
    assert sorted(set(passes)) == list(range(8))

    last_ref, rows_ref, dense_ref = _final_state(tmp_path / "ref" / "ctr_hierarchical",
                                                 _overrides(tmp_path, train, test, tmp_path / "ref"))
    last, rows, dense = _final_state(crashed_dir, _overrides(tmp_path, train, test, tmp_path / "crash"))
    assert last == last_ref == 7
    # deterministic training: the resumed run ends exactly where the uninterrupted one does
    np.testing.assert_allclose(rows, rows_ref, rtol=0, atol=1e-6)
    assert dense.keys() == dense_ref.keys()
    for name in dense:
        np.testing.assert_allclose(dense[name], dense_ref[name], rtol=0, atol=1e-6, err_msg=name)
