import subprocess
import sys
from pathlib import Path

import pytest

from paddle_suite.data import shared_data_dir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_umls_checkpoint(tmp_path_factory):
    """Newest checkpoint of a 3-step SpaceE run on UMLS, trained once through tools/train.py."""
    if shared_data_dir() is None or not (shared_data_dir() / "kg" / "umls").is_dir():
        pytest.skip("needs ../shared/data/kg/umls (the shared data folder beside the checkout)")
    out = tmp_path_factory.mktemp("run")
    command = [sys.executable, str(REPO / "tools" / "train.py"), "-c", str(REPO / "configs" / "spacee_umls.yaml"),
               "-o", "Global.max_steps=3", "-o", f"Global.output_dir={out}", "-o", "Global.run_name=tiny",
               "-o", "Global.save_every=3", "--no-progress"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoints = sorted((out / "tiny" / "checkpoints").iterdir())
    assert checkpoints, "training wrote no checkpoint"
    return checkpoints[-1]
