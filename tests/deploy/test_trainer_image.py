"""The trainer image installs what the trainer imports, at the versions the tests ran.

No Docker engine here, so the image is read, not built: its ``pip install`` list (Dockerfile.trainer)
against every third-party module the trainer can import, found by reading with ``ast`` each module
``python -m trait_lora.train`` can reach (imports inside functions count: S3, a Hub model and 4-bit
quantization are imported only in their mode), and against constraints.txt / requirements.txt.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
import sys
from importlib import metadata
from pathlib import Path

from tests.support.airflow import REPO

SRC = REPO / "src"
ENTRY = ("trait_lora.train.__main__", "trait_lora.train.cli")
# What each mode brings in beyond plain training on a volume, and why the image must carry it.
MODES = {
    "train (a shard on the PVC)": {"torch", "transformers", "peft", "accelerate", "safetensors"},
    "shards and adapters on s3://": {"boto3"},
    "a base model from the Hub (transformers downloads through it)": {"huggingface-hub"},
    'quantization "4bit"': {"bitsandbytes"},
}


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(text: str) -> dict[str, str]:
    """``name==version`` lines (comments and options ignored), by normalised name."""
    found = {}
    for line in text.splitlines():
        match = re.match(r"^\s*([A-Za-z0-9_.-]+)==([^\s;#]+)", line)
        if match:
            found[normalised(match[1])] = match[2]
    return found


def image_installs() -> dict[str, str]:
    """The ``pip install`` arguments of Dockerfile.trainer's RUN lines (continuations joined), as pins;
    ``.`` (the project itself) and options are not packages."""
    text = (REPO / "Dockerfile.trainer").read_text().replace("\\\n", " ")
    installs: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("RUN "):
            continue
        for command in line[4:].split("&&"):
            words = shlex.split(command)
            if words[:2] != ["pip", "install"]:
                continue
            args = iter(words[2:])
            for word in args:
                if word in ("-c", "--constraint", "-r"):
                    next(args)
                elif not word.startswith("-") and word != ".":
                    name, _, version = word.partition("==")
                    installs[normalised(name)] = version
    return installs


def module_path(module: str) -> Path | None:
    base = SRC.joinpath(*module.split("."))
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def trainer_imports() -> dict[str, str]:
    """Third-party top-level module -> the first of our modules that imports it, over every module
    reachable from the trainer's entry point (packages' ``__init__`` included)."""
    seen: set[str] = set()
    found: dict[str, str] = {}
    todo = list(ENTRY)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        path = module_path(module)
        if path is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            for name in names:
                top = name.split(".")[0]
                if top == "trait_lora":
                    todo += [name] if module_path(name) else []
                elif top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, module)
    return found


def distribution(module: str) -> str:
    """The distribution that provides an import name: the one of that name when it is installed (all
    the trainer's are), else the owner of the module's files (``yaml`` -> PyYAML; a full scan, ~2 s);
    one not installed here at all (bitsandbytes: GPU only) by its own name."""
    try:
        return normalised(metadata.distribution(module).metadata["Name"])
    except metadata.PackageNotFoundError:
        if importlib.util.find_spec(module) is None:
            return normalised(module)
        return normalised(metadata.packages_distributions()[module][0])


def test_the_image_installs_every_package_the_trainer_imports_in_every_mode():
    imports = {distribution(m): where for m, where in trainer_imports().items()}
    # the walk itself: it must see the imports each mode makes only inside a function
    assert {"torch", "transformers", "peft", "boto3", "bitsandbytes"} <= set(imports), imports
    installs = image_installs()
    missing = {name: where for name, where in imports.items() if name not in installs}
    assert missing == {}, f"Dockerfile.trainer does not install what these modules import: {missing}"
    for mode, needed in MODES.items():
        assert needed <= set(installs), f"{mode}: the image lacks {sorted(needed - set(installs))}"


def test_the_image_pins_the_versions_the_tests_ran():
    tested = pins((REPO / "constraints.txt").read_text())
    tested["torch"] = pins((REPO / "requirements.txt").read_text())["torch"]  # a CPU build here
    installs = image_installs()
    assert all(installs.values()), f"pin every package: {installs}"
    differ = {n: (v, tested.get(n)) for n, v in installs.items() if tested.get(n) != v}
    assert differ == {}, f"image pin vs constraints.txt/requirements.txt: {differ}"
    assert "-c constraints.txt" in (REPO / "Dockerfile.trainer").read_text()  # their dependencies too


def test_the_image_runs_as_the_user_the_pod_expects():
    from trait_lora import settings

    text = (REPO / "Dockerfile.trainer").read_text()
    uid = settings.BY_KEY["k8s_run_as_user"].default
    gid = settings.BY_KEY["k8s_run_as_group"].default
    assert f"useradd --uid {uid} --gid {gid}" in text and f"\nUSER {uid}:{gid}\n" in text
