"""The package's import graph: no cycle between modules, capabilities never import each other,
and one engine owns run directories, checkpoints and metrics writers.

Edges come from every ``import`` in a module's source (top level or inside a function), so a
lazy import that would close a cycle counts too. A package's ``__init__`` is left out as a
target: importing ``paddle_suite.ads.models`` loads ``paddle_suite/ads/__init__`` first anyway,
and that file only re-exports.
"""
import ast
import os
import re

import pytest

from paddle_suite.registry import CAPABILITIES

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "paddle_suite")
SHARED_KITS = {"classification"}


def modules():
    """``{dotted name: path}`` of every module of the package (``__init__`` files included)."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), os.path.dirname(PACKAGE))[:-3]
                dotted = rel.replace(os.sep, ".")
                found[dotted[: -len(".__init__")] if dotted.endswith(".__init__") else dotted] = os.path.join(folder, name)
    return found


def imports_of(path, known):
    """The package modules a source file imports (``from pkg import mod`` resolves to ``pkg.mod``)."""
    with open(path) as handle:
        tree = ast.parse(handle.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("paddle_suite"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("paddle_suite"))
    return {m for m in found if m in known}


def find_cycle(graph):
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


@pytest.fixture(scope="module")
def graph():
    known = modules()
    packages = {m for m, p in known.items() if p.endswith("__init__.py")}
    return {m: imports_of(p, known) - packages - {m} for m, p in known.items() if m not in packages}


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package(graph):
    assert find_cycle(graph) is None, find_cycle(graph)


def test_ads_trainers_share_common_and_never_import_each_other(graph):
    fleet, hierarchical, common = (graph[f"paddle_suite.ads.{m}"] for m in ("fleet_ps", "hierarchical_train", "common"))
    assert "paddle_suite.ads.hierarchical_train" not in fleet and "paddle_suite.ads.fleet_ps" not in hierarchical
    assert "paddle_suite.ads.common" in fleet & hierarchical
    assert not common & {"paddle_suite.ads.fleet_ps", "paddle_suite.ads.hierarchical_train", "paddle_suite.ads.task"}


def test_capabilities_import_only_the_core_and_shared_kits(graph):
    capabilities = {c.split(".")[1] for c in CAPABILITIES} - SHARED_KITS
    for module, targets in graph.items():
        parts = module.split(".")
        if len(parts) < 3 or parts[1] not in capabilities:
            continue
        foreign = {t for t in targets if t.split(".")[1] in capabilities and t.split(".")[1] != parts[1]}
        assert not foreign, f"{module} imports another capability: {sorted(foreign)}"


def test_core_does_not_import_capabilities(graph):
    capabilities = {c.split(".")[1] for c in CAPABILITIES}
    core = [m for m in graph if m.count(".") == 1 or m.startswith("paddle_suite.engine.")]
    for module in core:
        foreign = {t for t in graph[module] if t.split(".")[1] in capabilities}
        assert not foreign, f"core module {module} imports a capability: {sorted(foreign)}"


def test_one_owner_for_run_directories_checkpoints_and_metrics():
    owners = {"engine"}
    patterns = (r"def run_directory\b", r"def checkpoint_root\b", r"\bLogWriter\(", r"class MetricsLog\b")
    for module, path in modules().items():
        if module.count(".") and module.split(".")[1] in owners:
            continue
        with open(path) as handle:
            source = handle.read()
        for pattern in patterns:
            assert not re.search(pattern, source), f"{path}: {pattern} belongs to paddle_suite.engine"
