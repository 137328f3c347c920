"""The documented ads commands run as a user runs them: separate processes, exit codes, files.

``python tools/gen_ctr_data.py`` then ``python tools/train.py -c configs/ctr_dnn_ps.yaml`` (one
local process) and ``python tools/eval.py``; bad inputs (empty file, header-only CSV, a malformed
line) must exit non-zero naming the file, and leave no checkpoint behind.
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "ctr_dnn_ps.yaml")

pytestmark = pytest.mark.slow


def _run(args, timeout=240):
    env = dict(os.environ, PYTHONPATH=ROOT)  # this checkout, as `python tools/...` from its root
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _train(tmp_path, train_file, test_file, extra=()):
    return _run(["tools/train.py", "-c", CONFIG, "--no-progress",
                 "-o", f"DataLoader.train_files=[{train_file}]", "-o", f"DataLoader.test_files=[{test_file}]",
                 "-o", f"Global.output_dir={tmp_path / 'out'}", "-o", "PS.mode=local", "-o", "PS.local_vocab=20011",
                 "-o", "DataLoader.pass_size=2048", "-o", "Arch.hidden_sizes=[32,16]", "-o", "Optimizer.lr=0.01",
                 *extra])


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    # -X importtime lists every module the command loads (on stderr), in load order
    result = _run(["-X", "importtime", "tools/gen_ctr_data.py", "--out", str(out / "all.txt"), "--rows", "7e3",
                   "--vocab", "2e3", "--weight-std", "1.0", "--seed", "3", "--no-progress"])
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (out / "all.txt").read_text().splitlines(keepends=True)
    (out / "train.txt").write_text("".join(lines[:6144]))
    (out / "test.txt").write_text("".join(lines[6144:]))
    return out, result


def test_generator_loads_paddle_but_not_scipy(generated):
    """scipy loaded after paddle can crash (PLATFORM.md); the generator's entry point loads paddle
    (through the package's task registration), so it must not need scipy at all."""
    modules = [line.split("|")[-1].strip() for line in generated[1].stderr.splitlines() if "|" in line]
    assert "paddle" in modules
    assert not [m for m in modules if m.split(".")[0] == "scipy"]


def test_generator_then_train_then_eval(tmp_path, generated):
    data, gen = generated
    meta = json.loads((data / "all.txt.meta.json").read_text())
    assert meta["rows"] == 7000 and f"Bayes-optimal AUC {meta['bayes_auc']:.5f}" in gen.stdout
    trained = _train(tmp_path, data / "train.txt", data / "test.txt")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads(trained.stdout.strip().splitlines()[-1])["pass"] == 2
    run_dir = tmp_path / "out" / "ctr_dnn_ps"
    assert [json.loads(x)["pass"] for x in open(run_dir / "metrics.jsonl")] == [0, 1, 2]
    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["pass"] == 2
    assert (run_dir / "inference").is_dir()
    evaluated = _run(["tools/eval.py", "-c", CONFIG, "-o", f"DataLoader.test_files=[{data / 'test.txt'}]",
                      "-o", f"Global.output_dir={tmp_path / 'out'}", "-o", "PS.mode=local",
                      "-o", "PS.local_vocab=20011", "-o", "Arch.hidden_sizes=[32,16]"])
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    result = json.loads(evaluated.stdout[evaluated.stdout.index("{"):])
    assert result["examples"] == 856 and 0.6 < result["auc"] < meta["bayes_auc"] + 0.05, result


@pytest.mark.parametrize("case", ["empty", "header_only", "malformed"])
def test_bad_training_file_exits_non_zero_naming_it(tmp_path, generated, case):
    data, _ = generated
    good = (data / "train.txt").read_text().splitlines(keepends=True)
    if case == "empty":
        bad, expected = tmp_path / "empty.txt", "empty.txt is empty"
        bad.write_text("")
    elif case == "header_only":
        from paddle_suite.ads.data import CSV_HEADER

        bad, expected = tmp_path / "header.csv", "no examples in " + str(tmp_path / "header.csv")
        bad.write_text(CSV_HEADER + "\n")
    else:
        bad, expected = tmp_path / "bad.txt", str(tmp_path / "bad.txt") + ":6: label must be 0 or 1, got '7'"
        bad.write_text("".join(good[:5] + ["7" + good[5][1:]] + good[6:50]))
    result = _train(tmp_path, bad, data / "test.txt")
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "out" / "ctr_dnn_ps" / "checkpoints" / "latest.json").exists()
    if case == "malformed":  # the documented way out: skip (and count) malformed lines
        skipped = _train(tmp_path, bad, data / "test.txt", ["-o", "DataLoader.skip_malformed=true"])
        assert skipped.returncode == 0, skipped.stderr[-3000:]
        assert "skipped 1 malformed line(s)" in skipped.stderr
