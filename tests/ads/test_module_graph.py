"""The ads package's import graph has no cycle, and one engine owns the run directory."""
import ast
import importlib
import os
import re

import pytest

ADS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "paddle_suite", "ads")
MODULES = sorted(name[:-3] for name in os.listdir(ADS) if name.endswith(".py") and name != "__init__.py")


def ads_imports(module):
    """The ``paddle_suite.ads`` submodules ``module`` imports anywhere (top level or in a function)."""
    with open(os.path.join(ADS, module + ".py")) as handle:
        tree = ast.parse(handle.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "paddle_suite.ads":  # from paddle_suite.ads import models
                found.update(alias.name for alias in node.names if alias.name in MODULES)
            elif node.module.startswith("paddle_suite.ads."):
                found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[2] for alias in node.names
                         if alias.name.startswith("paddle_suite.ads."))
    return found - {module}


def find_cycle(graph):
    """A list of modules forming a cycle, or None (depth-first search with colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_ads_modules_import_without_a_cycle():
    graph = {module: ads_imports(module) for module in MODULES}
    print({k: sorted(v) for k, v in graph.items()})
    assert find_cycle(graph) is None, find_cycle(graph)
    # the two trainers share common and never import each other
    assert "hierarchical_train" not in graph["fleet_ps"] and "fleet_ps" not in graph["hierarchical_train"]
    assert {"common"} <= graph["fleet_ps"] & graph["hierarchical_train"]
    assert not graph["common"] & {"fleet_ps", "hierarchical_train", "task"}


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
