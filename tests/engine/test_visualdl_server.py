"""A run's VisualDL logs are served by the `visualdl` command a user would start."""
import json
import shutil
import socket
import subprocess
import time
import types
import urllib.request

import pytest
import toy_task

from paddle_suite.config import load_config
from paddle_suite.engine import Trainer


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("visualdl") is None, reason="the visualdl command is not installed")
def test_visualdl_serves_training_scalars(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text("Global: {task: toy_regression, epochs: 2, log_every: 2}\nArch: {name: ToyMLP}\n")
    config = load_config(str(path), [f"Global.output_dir={tmp_path}"])
    Trainer(config, toy_task.ToyRegression(config), types.SimpleNamespace(no_progress=True)).train()
    port = free_port()
    server = subprocess.Popen(
        ["visualdl", "--logdir", str(tmp_path / "toy" / "vdl"), "--host", "127.0.0.1", "--port", str(port),
         "--language", "en"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        tags = None
        for _ in range(60):  # up to ~30 s for the server to come up
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/app/api/tags", timeout=2) as response:
                    tags = json.load(response)["data"]
                break
            except OSError:
                time.sleep(0.5)
        assert tags is not None, "visualdl did not answer"
        names = {key.rsplit("/", 1)[-1].replace("%", "/") for key, kind in tags.items() if kind == "scalar"}
        assert {"train/loss", "train/lr", "train/samples_per_s", "valid/mse"} <= names
    finally:
        server.terminate()
        server.wait(timeout=10)
