"""The layout is a map: inside the core each package imports only those below it, and no module of
``src/`` imports itself back through another (lazy imports inside functions count too).

Read with ``ast``, so a new module or package is covered without touching this test.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
# Lowest first: a package may import its own modules and those of the packages before it.
CORE_RANKS = {
    "config": 0,
    "errors": 0,
    "hashing": 0,
    "storage": 1,
    "shards": 2,
    "adapter": 3,
    "jobs": 4,
    "handoff": 5,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every module of ours that ``path`` imports (``from pkg import mod`` resolved to the module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules
            found |= subs or {node.module}
    return found


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in SRC.rglob("*.py")}
    modules = set(paths)
    edges = {name: imports_of(path, modules) - {name} for name, path in paths.items()}
    for name in edges:  # importing a package's __init__ is not importing its modules: ignore parents
        edges[name] = {d for d in edges[name] if not name.startswith(d + ".")}
    return edges


def core_rank(module: str) -> int | None:
    parts = module.split(".")
    if parts[:2] != ["trait_lora", "core"] or len(parts) < 3:
        return None
    return CORE_RANKS.get(parts[2])


def test_every_core_package_has_a_rank():
    packages = {p.name.removesuffix(".py") for p in (SRC / "trait_lora" / "core").iterdir()}
    packages -= {"__init__", "__pycache__", "schemas"}
    assert packages == set(CORE_RANKS), "give the new core package a place in CORE_RANKS"


def test_core_packages_import_only_what_lies_below_them():
    upward = [
        f"{m} -> {d}"
        for m, deps in graph().items()
        for d in deps
        if (rm := core_rank(m)) is not None and (rd := core_rank(d)) is not None and rd > rm
    ]
    assert upward == [], "imports running back up the core:\n" + "\n".join(sorted(upward))


def test_no_import_circle_anywhere_in_src():
    edges = graph()
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                circles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert circles == [], "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_the_checks_can_fail():
    assert core_rank("trait_lora.core.jobs.ledger") > core_rank("trait_lora.core.storage.atomic")
    assert core_rank("trait_lora.provider.retry") is None
    edges = graph()
    assert "trait_lora.core.shards.scan" in edges["trait_lora.core.shards.validation_child"]
