"""The import structure: layers import one way, no cycles, no hidden imports, GPU-side code free of SimPy/Altair.

Read from the source (ast), not from what happens to be imported, so a new
arrow that runs back up fails here before anyone has to find it in review.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vocab", "profiles", "workloads", "sim", "real_runs", "reports", "tools", "cli")

# What each top-level folder may import (besides itself). README's ARCHITECTURE section draws the same.
ALLOWED = {
    "vocab": set(),
    "profiles": {"vocab"},
    "workloads": {"vocab"},
    "sim": {"vocab", "profiles", "workloads"},
    "real_runs": {"vocab", "profiles", "workloads"},
    "reports": {"vocab"},
    "tools": {"vocab", "profiles", "workloads", "sim", "real_runs", "reports"},
    "cli": {"vocab", "profiles", "workloads", "sim", "real_runs", "reports", "tools"},
}
# Imports allowed inside functions: optional heavy dependencies, and real_runs (which needs torch) from above it.
OPTIONAL_HEAVY = ("torch", "triton", "numba.cuda", "altair", "vl_convert", "pynvml", "cupy", "kvikio", "ray")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_files():
    for pkg in PACKAGES:
        yield from sorted((ROOT / pkg).rglob("*.py"))


def _imports(path: Path):
    """(imported module, at top level?, line) for every import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from a.b import c` names module a.b.c if there is one, else a name in a.b (resolved below).
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            yield name, id(node) in top, node.lineno


def _resolve(name: str, modules: set[str]) -> str | None:
    """The project module an import name refers to (from a.b import c may name module a.b.c or a name in a.b)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


MODULES = {_module_name(p): p for p in _project_files()}


def _graph() -> dict[str, set[str]]:
    graph = {}
    for mod, path in MODULES.items():
        graph[mod] = {t for name, top, _ in _imports(path) if top and (t := _resolve(name, set(MODULES))) and t != mod}
    return graph


def test_layers_import_one_way():
    wrong = []
    for mod, path in MODULES.items():
        here = mod.split(".")[0]
        for name, _, line in _imports(path):
            target = _resolve(name, set(MODULES))
            if target is None:
                continue
            there = target.split(".")[0]
            if there != here and there not in ALLOWED[here]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert wrong == [], "imports that run against the layers:\n" + "\n".join(wrong)


def test_no_import_cycle_among_files():
    graph = _graph()
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, trail: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle.extend(trail[trail.index(nxt):] + [node, nxt] if nxt in trail else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, trail + [node]):
                return True
        state[node] = 2
        return False

    for mod in sorted(graph):
        if state.get(mod) is None and visit(mod, []):
            break
    assert cycle == [], " -> ".join(cycle)


def test_imports_inside_functions_are_only_for_optional_heavy_dependencies():
    hidden = []
    for mod, path in MODULES.items():
        for name, top, line in _imports(path):
            if top or name.startswith(OPTIONAL_HEAVY) or name.split(".")[0] in ("real_runs", "__future__"):
                continue
            hidden.append(f"{path.relative_to(ROOT)}:{line} imports {name} inside a function")
    assert hidden == [], "\n".join(hidden)


def test_nothing_imports_the_cli():
    users = [f"{mod} -> {t}" for mod, targets in _graph().items() if not mod.startswith("cli")
             for t in targets if t.startswith("cli")]
    assert users == []


@pytest.mark.parametrize("module", ["real_runs.__main__", "real_runs.runner", "real_runs.bench", "tools.calibrate.__main__",
                                    "tools.calibrate.probe"])
def test_gpu_side_code_imports_neither_simpy_nor_altair(module):
    # The GPU image has neither; these modules run there (real_runs/gpu_session.sh).
    code = (f"import sys, {module}; bad = [m for m in ('simpy', 'altair', 'vl_convert') if m in sys.modules]; "
            "print(','.join(bad)); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"{module} pulls in {done.stdout.strip()} {done.stderr[-500:]}"


def test_the_simulator_never_imports_torch():
    code = ("import sys, cli.simulate, tools.sweep, tools.compare; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
