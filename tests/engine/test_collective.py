"""Fleet collective data parallelism on CPU (gloo): two ranks equal one process with twice the batch."""
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import toy_task

from paddle_suite.config import load_config
from paddle_suite.engine import Trainer

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = "Global: {task: toy_regression, epochs: 2, log_every: 2}\nArch: {name: ToyMLP, dropout: 0.0}\nOptimizer: {lr: 0.01}\n"


def launch_two_ranks(tmp_path, config, *extra):
    """Run run_toy_collective.py on 2 gloo ranks with ``config``; returns (config path, output folder,
    the launcher's last output for assertion messages)."""
    path = tmp_path / "toy.yaml"
    path.write_text(config)
    out = tmp_path / "dist"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PADDLE_", "FLAGS_selected"))}
    proc = subprocess.run(
        [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node=2", "--log_dir", str(out / "log"),
         os.path.join(HERE, "run_toy_collective.py"), str(path), str(out), *extra],
        env=env, capture_output=True, text=True, timeout=300,
    )
    return path, out, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.mark.slow
def test_two_ranks_match_single_process_with_double_batch(tmp_path):
    path, out, logs = launch_two_ranks(tmp_path, CONFIG)
    ranks = [out / f"rank{r}.npz" for r in (0, 1)]
    # the launcher's exit status is not trusted: check that both ranks finished
    assert all(r.is_file() for r in ranks), logs
    r0, r1 = (np.load(r) for r in ranks)
    assert int(r0["world"]) == 2 and int(r0["step"]) == 8

    single_cfg = load_config(str(path), [f"Global.output_dir={tmp_path / 'single'}", "DataLoader.batch_size=16"])
    single = Trainer(single_cfg, toy_task.ToyRegression(single_cfg), types.SimpleNamespace(no_progress=True))
    single.train()
    for key, value in single.model.state_dict().items():
        np.testing.assert_array_equal(r0[key], r1[key])  # ranks stay identical
        np.testing.assert_allclose(r0[key], value.numpy(), atol=1e-5, err_msg=key)


@pytest.mark.slow
def test_sigterm_on_one_rank_stops_both_at_the_same_step_with_a_checkpoint(tmp_path):
    """fleetrun forwards Ctrl-C to every rank, a few steps apart at worst: the ranks must agree on the
    step to stop at, or the main rank's next all-reduce fails before it can save."""
    _, out, logs = launch_two_ranks(tmp_path, CONFIG.replace("epochs: 2", "epochs: 50"), "3")
    assert all((out / f"rank{r}.interrupted").is_file() for r in (0, 1)), logs
    checkpoints = sorted(p.name for p in out.glob("*/checkpoints/step_*"))
    assert checkpoints == ["step_00000003"], (checkpoints, logs)
