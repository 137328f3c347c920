"""The command-line tools end to end on a small real dataset (nations, from ../shared/data)."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "spacee_umls.yaml")


def run_tool(tool, *args, timeout=600):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", tool), "-c", CONFIG, "--no-progress", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )


def common(tmp_path, *extra):
    flags = [f"Global.output_dir={tmp_path}", "Global.run_name=cli", "DataLoader.dataset=nations",
             "Global.log_every=5", *extra]
    return [arg for flag in flags for arg in ("-o", flag)]


@pytest.mark.slow
def test_train_resume_eval_export(tmp_path, shared_data):
    first = run_tool("train.py", *common(tmp_path, "Global.max_steps=12", "Global.eval_every=6"))
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads(first.stdout.strip().splitlines()[-1])
    assert result["step"] == 12 and 0 < result["best"] <= 1

    # a longer budget resumes from step 12 instead of starting over
    second = run_tool("train.py", *common(tmp_path, "Global.max_steps=18", "Global.eval_every=6"))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stderr and "step_00000012" in second.stderr
    assert json.loads(second.stdout.strip().splitlines()[-1])["step"] == 18

    evaluated = run_tool("eval.py", *common(tmp_path), "--split", "test")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads(evaluated.stdout[evaluated.stdout.index("{"):])
    assert report["checkpoint"].endswith("best") and 0 < report["metrics"]["mrr"] <= 1
    assert 1 <= report["metrics"]["mr"] <= 14  # nations has 14 entities

    exported = run_tool("export.py", *common(tmp_path))
    assert exported.returncode == 0, exported.stderr[-3000:]
    prefix = tmp_path / "cli" / "inference" / "model"
    assert (tmp_path / "cli" / "inference" / "entities.txt").is_file()
    from paddle.inference import Config, create_predictor

    predictor = create_predictor(Config(f"{prefix}.pdmodel", f"{prefix}.pdiparams"))
    triples = np.array([[0, 1, 2], [3, 4, 5], [6, 0, 7]], dtype="int64")
    for name, column in zip(predictor.get_input_names(), triples.T):
        predictor.get_input_handle(name).copy_from_cpu(np.ascontiguousarray(column))
    predictor.run()
    scores = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
    assert scores.shape[0] == 3 and np.isfinite(scores).all()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_writes_checkpoint_and_rerun_resumes(tmp_path, shared_data, signum):
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train.py"), "-c", CONFIG, "--no-progress",
           *common(tmp_path, "Global.max_steps=100000", "Global.eval_every=0")]
    # a shell's background jobs inherit SIGINT as ignored; a terminal's foreground job does not
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        for line in proc.stderr:  # wait until training really runs (a logged step), then press Ctrl-C
            if " loss " in line or time.monotonic() > deadline:
                break
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted at step" in err
    checkpoints = os.listdir(tmp_path / "cli" / "checkpoints")
    assert len(checkpoints) == 1
    stopped_at = int(checkpoints[0].split("_")[1])
    assert stopped_at > 0

    resumed = run_tool("train.py", *common(tmp_path, f"Global.max_steps={stopped_at + 5}"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"step_{stopped_at:08d}" in resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["step"] == stopped_at + 5


def test_config_error_exits_2_naming_key_and_file(tmp_path):
    proc = run_tool("train.py", "-o", "Global.epoch=3", "-o", f"Global.output_dir={tmp_path}")
    assert proc.returncode == 2
    assert "Global.epoch: unknown key. Did you mean 'Global.epochs'" in proc.stderr


def test_missing_dataset_exits_2_with_paths_tried(tmp_path):
    proc = run_tool("train.py", "-o", "DataLoader.dataset=YAGO3-10", "-o", f"Global.output_dir={tmp_path}")
    assert proc.returncode == 2
    assert "YAGO3-10" in proc.stderr and "Tried" in proc.stderr
