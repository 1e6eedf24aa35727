"""The package's shape: one ``lanewatch`` namespace, an import graph without cycles that follows the data
flow, and commands that import only what they use."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("edge", "drivers", "kernels", "models")
HEAVY = ("numba", "onnxruntime", "pydicom", "SpecUtils", "PIL", "sklearn", "matplotlib")
"""Modules a light command must not import: each costs a large share of a second or more at start."""


def _modules() -> dict[str, Path]:
    """Every module of the installed namespace, by dotted name, from the source folders."""
    out = {}
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(("lanewatch", *parts))] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[str]:
    """The lanewatch modules ``name`` imports anywhere in its file (functions and TYPE_CHECKING included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name and target.count(".") >= 2:
                yield target


GRAPH = {name: sorted(set(_imports(name, path))) for name, path in MODULES.items()}


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_every_package_folder_is_installed() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert folders == listed, "pyproject.toml [tool.setuptools] packages must list every package folder"


def test_no_import_cycles_between_modules() -> None:
    assert _cycles(GRAPH) == []


def test_no_import_cycles_between_edge_subpackages() -> None:
    """Seen from edge/'s sub-packages (bus, lane, xray, decisions, model, ops, commands), the flow is one way."""

    def part(module: str) -> str:
        return ".".join(module.split(".")[:3])

    graph: dict[str, set[str]] = {}
    for name, targets in GRAPH.items():
        if name.startswith("lanewatch.edge."):
            graph.setdefault(part(name), set()).update(
                part(t) for t in targets if t.startswith("lanewatch.edge.") and part(t) != part(name)
            )
    assert _cycles({k: sorted(v) for k, v in graph.items()}) == []


def _importers(prefix: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        if name.startswith(prefix)
        for target in targets
        if target.startswith(forbidden)
    ]


def test_service_core_imports_no_driver_simulator_trainer_or_command() -> None:
    entry = ("lanewatch.edge.commands", "lanewatch.edge.__main__")
    core = [name for name in GRAPH if name.startswith("lanewatch.edge") and not name.startswith(entry)]
    bad = [
        f"{name} -> {target}"
        for name in core
        for target in GRAPH[name]
        if target.startswith(("lanewatch.drivers", "lanewatch.edge.commands"))
        or (target.startswith("lanewatch.models") and target != "lanewatch.models")
    ]
    assert bad == []


def test_kernels_import_nothing_of_ours_but_kernels() -> None:
    assert [n for n in _importers("lanewatch.kernels", ("lanewatch.",)) if "-> lanewatch.kernels" not in n] == []


def test_drivers_import_only_the_bus_contract_and_configuration() -> None:
    allowed = ("lanewatch.edge.bus", "lanewatch.edge.config", "lanewatch.edge.ops.metrics", "lanewatch.drivers")
    bad = [n for n in _importers("lanewatch.drivers", ("lanewatch.",)) if not n.split(" -> ")[1].startswith(allowed)]
    sims = [n for n in bad if n.startswith("lanewatch.drivers.sim")]
    # Simulators model the physics of a lane; they may share the imaging physics of the kernels.
    assert [n for n in bad if n not in sims] == []
    assert [n for n in sims if not n.split(" -> ")[1].startswith("lanewatch.kernels")] == []


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["status", "--help"],
        ["alerts", "--help"],
        ["keys", "list", "--dir", "."],
        ["keys", "--help"],
        ["schema", "decision"],
        ["schema", "config"],
    ],
    ids=lambda a: " ".join(a),
)
def test_light_commands_import_nothing_heavy(argv: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "lanewatch.edge", *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert imported, "python -X importtime printed nothing"
    assert sorted(imported & set(HEAVY)) == []
