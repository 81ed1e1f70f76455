"""Module structure: every module imports; the import graph, with imports inside functions and
type-only ones counted, has no cycle and no upward import (layer rules); readers of results never
load the sweep runner; the results store loads nothing heavy; no module is over ~500 lines."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import harness

REPO = Path(__file__).resolve().parents[1]
RUNNER = ("harness.sweep.run", "harness.sweep.local", "harness.sweep.ray_runner")
MAX_LINES = 500


def modules() -> list[str]:
    """The harness's modules and the baselines (the models import the harness's lower layers)."""
    return sorted(m.name for m in pkgutil.walk_packages(harness.__path__, "harness.")) + \
        sorted(f"baselines.{p.stem}" for p in (REPO / "baselines").glob("*.py") if p.stem != "__init__")


def module_file(name: str) -> Path:
    base = REPO.joinpath(*name.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def imports(name: str) -> set[str]:
    """Every harness (or baselines) module ``name`` imports anywhere: at the top, inside
    functions and under TYPE_CHECKING alike (a deferred import is still a dependency)."""
    tree = ast.parse(module_file(name).read_text())
    known = set(modules())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in known:
                out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
    return out - {name}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """The house's layer rules, as "importer -> imported" lines that break them."""
    def under(name, *prefixes):
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    low = ("harness.nn", "harness.schedules", "harness.sampling", "harness.memory", "harness.models",
           "harness.unmasking")
    above_low = ("harness.sweep", "harness.report", "harness.cli", "harness.train", "harness.checkpoints.released",
                 "harness.rescore", "harness.compare", "harness.export", "harness.lm_eval_adapter",
                 "harness.bench_likelihood", "harness.metrics", "harness.evaluators", "harness.checkpoints",
                 "harness.checkpoint")
    readers = ("harness.report", "harness.compare", "harness.export", "harness.rescore")
    runner_or_importer = RUNNER + ("harness.sweep.point", "harness.checkpoints.released")
    bad = []
    for name, deps in graph.items():
        for dep in sorted(deps):
            if (under(name, *low, "harness.data") and under(dep, *above_low)) \
                    or (under(name, "harness.metrics") and under(dep, "harness.sweep")) \
                    or (under(name, *readers) and dep in runner_or_importer):
                bad.append(f"{name} -> {dep}")
    return bad


def test_every_module_imports():
    for name in modules():
        importlib.import_module(name)


def test_no_upward_imports():
    """nn/, schedules, sampling, memory, the models and data/ import nothing above them; metrics/ does
    not import the sweep; readers of results import neither the runner nor the importer."""
    graph = {name: imports(name) for name in modules()}
    assert not layer_violations(graph), layer_violations(graph)
    # the rules can fail: a reader importing the runner is caught
    assert layer_violations({"harness.report.x": {"harness.sweep.point"}}) == ["harness.report.x -> harness.sweep.point"]


def test_no_import_cycles():
    graph = {name: imports(name) for name in modules()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name, path):
        state[name] = 1
        for dep in sorted(graph.get(name, ())):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep] if dep in path else [name, dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, path + [dep])
        state[name] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])
    # the check sees imports at all: report's writer imports its plots
    assert "harness.report.plots" in graph["harness.report.write"]


def loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_readers_do_not_load_the_runner():
    loaded = loaded_after("import harness.report, harness.compare, harness.rescore")
    assert "harness.results_store" in loaded
    assert not loaded & set(RUNNER), sorted(loaded & set(RUNNER))
    # the runner itself loads them, so the check above can fail
    assert set(RUNNER[:2]) <= loaded_after("from harness.sweep import run_sweep")


def test_results_store_has_no_heavy_imports():
    loaded = loaded_after("import harness.results_store; from harness.sweep import read_points, latest_rows")
    assert not loaded & {"torch", "pandas", "matplotlib", "pydantic", "yaml"}


def test_no_module_over_the_limit():
    long = {name: n for name in modules() if (n := len(module_file(name).read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}; split them"
