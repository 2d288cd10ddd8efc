"""The layout is a map: inside the core each package imports only those below it, and no module of
``src/`` or ``tests/`` imports itself back through another (lazy imports inside functions count too).

Read with ``ast``, so a new module or package is covered without touching this test. The test helpers
are held to the same map because a circle there breaks the same way (an import order that works only
by luck) and hides which piece of a fake is the foundation.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
TESTS = ROOT / "tests"
# A helper module under tests/ (not a test_*.py) longer than this has grown past one reader's sitting.
HELPER_MAX_LINES = 800
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


def module_name(path: Path, base: Path = SRC) -> str:
    """``src/trait_lora/x.py`` -> ``trait_lora.x``; ``tests/fake_together/jobs.py`` (base: the repo root)
    -> ``tests.fake_together.jobs``."""
    parts = list(path.relative_to(base).with_suffix("").parts)
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


@cache  # parsed once for all the tests here (read it, do not change it)
def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in SRC.rglob("*.py")}
    paths |= {module_name(p, ROOT): p for p in TESTS.rglob("*.py")}
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


# The packages of trait_lora, lowest first (docs/architecture.md): each imports only its own rank and
# those below it, so the trainer never pulls in Airflow code and the local runner never the provider.
LAYER_RANKS = {
    "core": 0,
    "settings_table": 1,
    "settings": 1,
    "models": 1,
    "train": 2,
    "local": 3,
    "provider": 4,
    "embedded": 5,
    "cli": 5,
}


def layer_rank(module: str) -> int | None:
    parts = module.split(".")
    return LAYER_RANKS.get(parts[1]) if parts[0] == "trait_lora" and len(parts) > 1 else None


def test_trait_lora_packages_import_only_their_layer_and_those_below():
    packages = {p.name.removesuffix(".py") for p in (SRC / "trait_lora").iterdir()}
    assert packages - {"__init__", "__pycache__", "py.typed"} == set(LAYER_RANKS), "rank the new package"
    upward = [
        f"{m} -> {d}"
        for m, deps in graph().items()
        for d in deps
        if (rm := layer_rank(m)) is not None and (rd := layer_rank(d)) is not None and rd > rm
    ]
    assert upward == [], "imports running back up the layers:\n" + "\n".join(sorted(upward))


def circles_in(edges: dict[str, set[str]]) -> list[list[str]]:
    """Each circle found by a depth-first walk, as the path that closes it (``a -> b -> a``)."""
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
    return circles


def test_no_import_circle_anywhere_in_src_or_tests():
    circles = circles_in(graph())
    assert circles == [], "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_no_test_helper_module_is_too_long():
    long = [
        f"{p.relative_to(ROOT)}: {n} lines"
        for p in sorted(TESTS.rglob("*.py"))
        if not p.name.startswith("test_") and (n := len(p.read_text().splitlines())) > HELPER_MAX_LINES
    ]
    assert long == [], f"split these helpers (over {HELPER_MAX_LINES} lines):\n" + "\n".join(long)


def test_the_checks_can_fail():
    assert core_rank("trait_lora.core.jobs.ledger") > core_rank("trait_lora.core.storage.atomic")
    assert core_rank("trait_lora.provider.retry") is None
    assert layer_rank("trait_lora.local.backend") < layer_rank("trait_lora.provider.pod_tasks")
    assert layer_rank("trait_lora.train.cli") < layer_rank("trait_lora.local.backend")
    edges = graph()
    assert "trait_lora.core.shards.scan" in edges["trait_lora.core.shards.validation_child"]
    assert "tests.fake_together.wire" in edges["tests.fake_together.server"]  # tests/ is walked too
    assert circles_in({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
