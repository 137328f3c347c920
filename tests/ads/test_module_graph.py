"""Each ads module imports alone, and the trainers leave the run directory to the engine.

The import graph (no cycle; the trainers share ``common`` and never import each other) is checked
package-wide in ``tests/test_import_graph.py``."""
import importlib
import os
import re

import pytest

ADS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "paddle_suite", "ads")
MODULES = sorted(name[:-3] for name in os.listdir(ADS) if name.endswith(".py") and name != "__init__.py")


@pytest.mark.parametrize("module", ["common", "fleet_ps", "hierarchical_train", "task"])
def test_ads_module_imports_alone(module):
    importlib.import_module(f"paddle_suite.ads.{module}")


@pytest.mark.parametrize("module", ["common", "fleet_ps", "hierarchical_train", "task"])
def test_trainers_use_the_engine_run_directory(module):
    """No second run-directory helper, checkpoint root or metrics writer in the trainers."""
    with open(os.path.join(ADS, module + ".py")) as handle:
        source = handle.read()
    for pattern in (r"def run_directory", r"def checkpoint_root", r"LogWriter", r"metrics\.jsonl\"", r"import pickle"):
        assert not re.search(pattern, source), (module, pattern)
