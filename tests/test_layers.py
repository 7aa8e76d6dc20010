"""The package's layers, checked from the source: who may import whom, and no import cycle.

The rules: the core is pure (no adapter, runtime, Prefect, simulator, CLI, mock cloud or cloud
SDK); the runtime does not know Prefect; the adapters do not know the runtime or the Prefect
layer. A layer rule sees *every* import in a file, at module level, in a
function body or under ``if TYPE_CHECKING:``: a function-local import of Prefect still makes
the core need Prefect when that function runs, and a type-only one still couples the layers.

Cycles are checked over the imports that run when a module is imported: module level,
including ``try:``/``if`` blocks there, but not ``if TYPE_CHECKING:`` blocks and not function
bodies. A function-local import runs after both modules are loaded, so it cannot make an
import-time cycle; where it crosses a layer the rules above catch it.

A second test imports every core module in a fresh interpreter in which Prefect and the cloud
SDKs cannot be imported, and places a task on the shipped catalog.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "prefect_cloudsched"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

#: Third-party packages the core must run without (Prefect, the cloud SDKs, Dask, the ledger's
#: database layer).
SDKS = ("prefect", "boto3", "botocore", "google.cloud", "google.api_core", "google.auth")
CORE_FORBIDDEN = (
    *(f"{PACKAGE}.{layer}" for layer in ("runtime", "adapters", "prefect", "simulate", "cli")),
    f"{PACKAGE}.testing",
    *SDKS,
    "distributed",
    "sqlalchemy",
)
#: (importing layer, what it may not import).
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (f"{PACKAGE}.core", CORE_FORBIDDEN),
    (f"{PACKAGE}.runtime", (f"{PACKAGE}.prefect", "prefect")),
    (f"{PACKAGE}.adapters", (f"{PACKAGE}.runtime", f"{PACKAGE}.prefect")),
)


@dataclass(frozen=True, slots=True)
class Import:
    """One imported module name, where it stands, and whether it runs at import time."""

    target: str
    line: int
    at_import_time: bool


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, modules: set[str]) -> list[Import]:
    """Every module a file imports; ``from pkg import sub`` counts as ``pkg.sub`` when it is one."""
    module = module_name(path)
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, at_import_time: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(a.name, node.lineno, at_import_time) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(node, module, is_package)
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.append(Import(sub if sub in modules else source, node.lineno, at_import_time))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            for child in ast.iter_child_nodes(node):
                visit(child, False)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, False)
            for child in node.orelse:
                visit(child, at_import_time)
        else:
            for child in ast.iter_child_nodes(node):
                visit(child, at_import_time)

    visit(ast.parse(path.read_text(), filename=str(path)), True)
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def source_files() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def layer_violations(files: dict[str, Path]) -> list[str]:
    """``module:line imports target`` for every import a rule forbids."""
    modules = set(files)
    found = []
    for module, path in files.items():
        for layer, forbidden in RULES:
            if not _within(module, layer):
                continue
            for imp in imports_of(path, modules):
                if any(_within(imp.target, f) for f in forbidden):
                    found.append(f"{path.relative_to(ROOT.parent)}:{imp.line} imports {imp.target}")
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the package modules it imports at import time."""
    modules = set(files)
    return {
        module: {
            imp.target
            for imp in imports_of(path, modules)
            if imp.at_import_time and imp.target in modules and imp.target != module
        }
        for module, path in files.items()
    }


# ----------------------------------------------------------------------------- the checker
def _write(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    written = {}
    for name, text in files.items():
        path = tmp_path / Path(*name.split("."))
        path = path / "__init__.py" if name.count(".") < 2 else path.with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        written[name] = path
    return written


def test_the_checker_sees_local_type_only_and_relative_imports(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path / PACKAGE)
    files = _write(
        tmp_path,
        {
            f"{PACKAGE}.core": "",
            f"{PACKAGE}.core.a": """
                from typing import TYPE_CHECKING
                from . import b
                if TYPE_CHECKING:
                    from prefect_cloudsched.runtime import session
                def late():
                    import boto3
                """,
            f"{PACKAGE}.core.b": "from prefect_cloudsched.core import a\n",
            f"{PACKAGE}.core.c": "def f():\n    from prefect_cloudsched.core import a\n",
            f"{PACKAGE}.runtime": "",
            f"{PACKAGE}.runtime.session": "import prefect\n",
        },
    )
    assert sorted(layer_violations(files)) == [
        "prefect_cloudsched/core/a.py:5 imports prefect_cloudsched.runtime.session",
        "prefect_cloudsched/core/a.py:7 imports boto3",
        "prefect_cloudsched/runtime/session.py:1 imports prefect",
    ]
    # a ↔ b is a cycle; c's function-local import of a is not.
    assert import_cycles(import_graph(files)) == [[f"{PACKAGE}.core.a", f"{PACKAGE}.core.b"]]


# ----------------------------------------------------------------------------- the package
def test_no_layer_imports_a_layer_above_it():
    violations = layer_violations(source_files())
    assert not violations, "imports that cross a layer upwards:\n" + "\n".join(violations)


def test_no_import_cycle():
    cycles = import_cycles(import_graph(source_files()))
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


_WITHOUT_PREFECT = """
import importlib, pkgutil, sys

BLOCKED = {blocked!r}

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ModuleNotFoundError(f"{{name}} is blocked for this test", name=name)
        return None

sys.meta_path.insert(0, Blocker())
import prefect_cloudsched.core as core

names = [m.name for m in pkgutil.walk_packages(core.__path__, "prefect_cloudsched.core.")]
for name in names:
    importlib.import_module(name)

from datetime import timedelta
from prefect_cloudsched.core.catalog import load_catalog
from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.core.policy import decide

decision = decide(TaskNeeds(gpus=1, est_runtime=timedelta(hours=1)), load_catalog())
leaked = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED))
print(len(names), decision.offer.gpu_count, decision.tag, leaked)
"""


def test_the_core_imports_and_decides_with_prefect_and_the_sdks_unimportable():
    blocked = (*SDKS, "distributed", "sqlalchemy")
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_PREFECT.format(blocked=blocked)],
        capture_output=True,
        text=True,
        cwd=ROOT.parent,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    count, gpus, tag, leaked = result.stdout.split(maxsplit=3)
    assert int(count) >= 15  # every core module was imported, not an empty walk
    assert int(gpus) >= 1
    assert tag.startswith("cloudsched:")
    assert leaked.strip() == "[]"


@pytest.mark.parametrize("blocked", ["prefect", "boto3"])
def test_the_blocker_really_blocks(blocked):
    """The subprocess test would pass vacuously if the blocker let the import through."""
    script = _WITHOUT_PREFECT.split("import prefect_cloudsched.core")[0].format(blocked=(blocked,))
    result = subprocess.run(
        [sys.executable, "-c", script + f"import {blocked}\n"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "is blocked for this test" in result.stderr
