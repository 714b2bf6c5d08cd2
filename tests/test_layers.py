"""The package's layers import one way, and no imports form a circle.

The layers and the modules in each are the table in docs/ARCHITECTURE.md ("Layers and allowed
imports"); this test reads the table from there, so the document and the code cannot drift apart.
A module may import modules of its own layer or below. Imports inside ``if TYPE_CHECKING:`` count
for the direction (a type is a dependency too) but not for circles (they never run).
"""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "diffgen"


def module_names() -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its own name)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = module_names()


def imports_of(name: str, path: Path) -> list[tuple[str, bool]]:
    """(imported diffgen module, whether the import runs) for each import in the module's source;
    ``from pkg import sub`` is an import of the submodule where there is one."""
    tree = ast.parse(path.read_text())
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        runs = id(node) not in type_only
        if isinstance(node, ast.Import):
            out += [(alias.name, runs) for alias in node.names if alias.name.split(".")[0] == "diffgen"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base.split(".")[0] != "diffgen":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub if sub in MODULES else base, runs))
    return out


def layer_table() -> list[tuple[str, list[str]]]:
    """(layer, module patterns), lowest layer first, from docs/ARCHITECTURE.md."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    section = text.split("## Layers and allowed imports", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 2 and re.match(r"^\d+ ", cells[0]):
            rows.append((cells[0], re.findall(r"`([^`]+)`", cells[1])))
    return rows


def layer_of(name: str, table: list[tuple[str, list[str]]]) -> int:
    found = [i for i, (_, patterns) in enumerate(table) if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    assert len(found) == 1, f"{name} belongs to {len(found)} layers of docs/ARCHITECTURE.md's table"
    return found[0]


def test_the_table_names_the_layers_in_order():
    table = layer_table()
    assert len(table) >= 5
    assert [int(layer.split()[0]) for layer, _ in table] == list(range(len(table)))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_module_imports_only_its_own_layer_and_below(name):
    table = layer_table()
    mine = layer_of(name, table)
    upward = [f"{target} ({table[layer_of(target, table)][0]})" for target, _ in imports_of(name, MODULES[name])
              if target in MODULES and layer_of(target, table) > mine]
    assert not upward, f"{name} ({table[mine][0]}) imports up: {', '.join(upward)}"


def test_no_imports_form_a_circle():
    graph = {name: sorted({t for t, runs in imports_of(name, path) if runs and t in MODULES and t != name})
             for name, path in MODULES.items()}
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [node, nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The test would fail on the mistake it exists for: an engine module importing training."""
    table = layer_table()
    path = tmp_path / "bad.py"
    path.write_text("from diffgen.training import grounding\n")
    targets = [t for t, _ in imports_of("diffgen.engine.bad", path)]
    assert targets == ["diffgen.training.grounding"]
    assert layer_of("diffgen.training.grounding", table) > layer_of("diffgen.engine.unet", table)
