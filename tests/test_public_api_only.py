"""``src/`` uses only the public API of the libraries it builds on.

Private modules (``airflow.sdk.definitions._internal...``, ``together._models``) and private names
change without notice in any release; an upgrade must not break us for using them. Every import in
``src/`` (and every module name handed to ``importlib.import_module`` as a string literal) is read
with ``ast``, so a new one is covered without touching this test.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
OURS = "trait_lora"


def _imports(tree: ast.AST) -> list[tuple[int, str, str | None]]:
    """(line, module, imported name or None) for every import and import_module("...") literal."""
    found: list[tuple[int, str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            value = node.value
            if value.startswith(("airflow.", "together.")) and " " not in value and "/" not in value:
                found.append((node.lineno, value, None))
    return found


def _private(module: str, name: str | None) -> bool:
    parts = module.split(".")
    if parts[0] in (OURS, "__future__"):
        return False
    return any(p.startswith("_") for p in parts[1:]) or bool(name and name.startswith("_"))


def test_src_imports_no_private_module_or_name_of_another_package():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 40  # the walk found the package
    offenders = [
        f"{path.relative_to(SRC)}:{line}: {module}{'.' + name if name else ''}"
        for path in files
        for line, module, name in _imports(ast.parse(path.read_text(), str(path)))
        if _private(module, name)
    ]
    assert offenders == [], "private imports (use the public API):\n" + "\n".join(offenders)


def test_the_check_would_catch_the_import_it_replaced():
    code = (
        "from airflow.sdk.definitions._internal.contextmanager import DagContext\nimport together._models\n"
    )
    modules = [(m, n) for _, m, n in _imports(ast.parse(code))]
    assert all(_private(m, n) for m, n in modules) and len(modules) == 2
    assert not _private("airflow.sdk", "DAG") and not _private("trait_lora._x", None)
