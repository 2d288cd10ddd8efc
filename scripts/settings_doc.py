"""Rewrite the settings table in docs/operations.md from trait_lora.settings_table (one source).

Run after adding or changing a setting: ``.venv/bin/python scripts/settings_doc.py``;
tests/test_settings.py fails while the table and the code disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
HEADER = "| key (`[trait_lora]`) | type | default | read at | meaning |"
READ_AT = {"parse": "parse", "run": "task run", "init": "airflow-init"}


def rows() -> list[str]:
    from trait_lora.settings_table import SETTINGS

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    return [
        f"| `{s.key}` | {s.kind} | {f'`{s.default}`' if s.default else '(empty)'} | {READ_AT[s.read_at]} | "
        f"{cell(s.description)} |"
        for s in SETTINGS
    ]


def table() -> str:
    return "\n".join([HEADER, "| --- | --- | --- | --- | --- |", *rows()])


def rewrite(text: str) -> str:
    start = text.index(HEADER)
    end = start
    lines = text[start:].split("\n")
    n = 0
    while n < len(lines) and lines[n].startswith("|"):
        end += len(lines[n]) + 1
        n += 1
    return text[:start] + table() + "\n" + text[end:]


if __name__ == "__main__":
    sys.path.insert(0, str(DOC.parent.parent / "src"))
    DOC.write_text(rewrite(DOC.read_text()))
    print(f"{DOC}: {len(rows())} settings")
