"""Module structure: every module imports, no import cycles, readers of results never load
the sweep runner, the results store loads nothing heavy, and no module is over ~500 lines."""

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
    return sorted(m.name for m in pkgutil.walk_packages(harness.__path__, "harness."))


def module_file(name: str) -> Path:
    base = REPO.joinpath(*name.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def top_level_imports(name: str) -> set[str]:
    """harness modules ``name`` imports when it is loaded (not inside functions, not TYPE_CHECKING)."""
    tree = ast.parse(module_file(name).read_text())
    known = set(modules())
    out = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in known:
                out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
    return out - {name}


def test_every_module_imports():
    for name in modules():
        importlib.import_module(name)


def test_no_import_cycles():
    graph = {name: top_level_imports(name) for name in modules()}
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
