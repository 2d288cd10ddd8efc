"""What object storage costs the pipeline's orchestration: N traits on S3 (moto on loopback) against
the same N traits in a local folder, side by side.

Usage: python bench/bench_s3_storage.py [N]   (default 200)

Each phase replays the record operations the Together DAG makes, through the same core functions
(nothing simulated but Together itself, whose calls are not storage): discover (list + copy + validate
+ plan), per trait the upload's file record, the launch's claim under the cap, posted and created job,
the end of the job, the adapter's install, its ledger record, its metrics and the failure record's
clear, then publish (summary + mapping), and finally the rerun's discover with nothing changed.
Storage requests are counted on the boto3 client (one per HTTP call, retries included). Figures only.

The goal (issue 21): a rerun with nothing changed makes O(1) listing requests plus at most 2 reads
per trait, and the S3 run costs at most 1.5x the local one in orchestration time. moto runs in this
process on the same 2 cores, so its S3 figures include the server's own CPU time; AWS adds network
round trips instead (~10-30 ms per request in region).
"""

# ruff: noqa: E402
from __future__ import annotations

import collections
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
N = int(sys.argv[1]) if len(sys.argv) > 1 else 200

import boto3
from moto.server import ThreadedMotoServer

from tests.e2e.shards import write_shards
from tests.support.adapters import write_adapter_dir
from trait_lora.core.adapter import AdapterSpec, install_adapter
from trait_lora.core.adapter.content import install_adapter_to_store
from trait_lora.core.config import TrainingConfig
from trait_lora.core.handoff import runs
from trait_lora.core.handoff.mapping import publish_mapping
from trait_lora.core.handoff.summary import build_summary, write_summary
from trait_lora.core.jobs.claims import Holder
from trait_lora.core.jobs.ledger import Ledger
from trait_lora.core.jobs.plan import plan_traits
from trait_lora.core.storage import opener
from trait_lora.core.storage.local import LocalStore
from trait_lora.core.storage.objects import S3Store
from trait_lora.core.storage.store import encode_json

CFG = TrainingConfig()
SPEC = AdapterSpec.from_config(CFG)
RUN = "manual__bench"


class Counter:
    def __init__(self) -> None:
        self.ops: collections.Counter[str] = collections.Counter()

    def __call__(self, event_name: str, **_: Any) -> None:
        self.ops[event_name.rsplit(".", 1)[-1]] += 1

    def take(self) -> dict[str, int]:
        out = dict(self.ops)
        self.ops.clear()
        return out


def one_run(shards: str, out: str, adapter: Path, counter: Counter | None) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    t = time.perf_counter()
    plans = [p.to_dict() for p in plan_traits(shards, out, CFG)]
    figures["discover_s"] = time.perf_counter() - t
    figures["discover_ops"] = counter.take() if counter else {}
    store = opener.open_location(out)
    ledger = Ledger(store)
    t = time.perf_counter()
    refs = runs.write_trait_plans(store, RUN, plans)
    results = {}
    for n, ref in enumerate(refs):
        plan = runs.load_trait_plan(ref)
        trait, key = plan["trait"], plan["job_key"]
        ledger.update_job(trait, job_key=key, file_id=f"file-{n}", file_sha256=plan["shard_sha256"])
        outcome = ledger.claim_create(trait, job_key=key, cap=10_000, holder=Holder(f"{RUN}/launch/{n}"))
        assert outcome.claim is not None
        ledger.mark_posted(trait, outcome.claim)
        ledger.update_job(trait, claim=outcome.claim, job_key=key, job_id=f"ft-{n}", status="pending")
        ledger.update_job(trait, job_key=key, status="running")
        ledger.record_job_end(trait, job_id=f"ft-{n}", status="completed")
        if isinstance(store, LocalStore):
            _, info = install_adapter(adapter, store.root, trait, SPEC)
            folder = None
        else:
            folder, info = install_adapter_to_store(adapter, store, trait, SPEC)
        ledger.record_planned_adapter(
            plan,
            adapter_sha256=info.sha256,
            job_id=f"ft-{n}",
            backend="together",
            base_model=CFG.base_model,
            adapter_path=folder,
        )
        store.put(
            f"metrics/{trait}.json", encode_json({"job_id": f"ft-{n}", "steps": [{"step": 1, "loss": 1.0}]})
        )
        ledger.update_job(trait, job_key=key, status="completed", downloaded=True)
        runs.clear_failure(store, RUN, trait)
        results[trait] = {
            "trait": trait,
            "action": "trained",
            "job_id": f"ft-{n}",
            "adapter_sha256": info.sha256,
        }
    figures["per_trait_s"] = (time.perf_counter() - t) / len(refs)
    figures["per_trait_ops"] = {k: v / len(refs) for k, v in (counter.take() if counter else {}).items()}
    t = time.perf_counter()
    summary = build_summary(
        run_id=RUN,
        backend="together",
        plans=plans,
        results=results,
        failures=runs.read_failures(store, RUN),
        dry_run=False,
    )
    write_summary(store, summary)
    publish_mapping(store, CFG, failed={}, run_id=RUN)
    figures["publish_s"] = time.perf_counter() - t
    figures["publish_ops"] = counter.take() if counter else {}
    t = time.perf_counter()
    again = plan_traits(shards, out, CFG)
    figures["rerun_discover_s"] = time.perf_counter() - t
    figures["rerun_ops"] = counter.take() if counter else {}
    assert {p.action for p in again} == {"skip"}, {p.action for p in again}
    figures["total_s"] = figures["discover_s"] + figures["per_trait_s"] * len(refs) + figures["publish_s"]
    return figures


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    write_shards(work / "shards", N, salt="-bench-s3")
    adapter = write_adapter_dir(work / "adapter", r=CFG.lora_r)
    local = one_run(str(work / "shards"), str(work / "out"), adapter, None)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    client = boto3.client(
        "s3",
        endpoint_url=f"http://{host}:{port}",
        aws_access_key_id="k",
        aws_secret_access_key="s",
        region_name="us-east-1",
    )
    counter = Counter()
    client.meta.events.register("before-call.s3.*", counter)
    opener.register_opener("s3", lambda loc: S3Store(client, loc.bucket, loc.prefix, location=loc.url))
    client.create_bucket(Bucket="bench")
    for path in sorted((work / "shards").iterdir()):
        client.put_object(Bucket="bench", Key=f"shards/{path.name}", Body=path.read_bytes())
    counter.take()
    s3 = one_run("s3://bench/shards", "s3://bench/out", adapter, counter)
    server.stop()

    print(f"{N} traits; local folder vs S3 (moto on loopback, same process)")
    print(f"{'phase':<28}{'local':>10}{'s3':>10}{'s3/local':>10}")
    for key in ("discover_s", "per_trait_s", "publish_s", "total_s", "rerun_discover_s"):
        a, b = local[key], s3[key]
        print(f"{key:<28}{a:>10.3f}{b:>10.3f}{b / a:>10.2f}")
    for key in ("discover_ops", "publish_ops", "rerun_ops"):
        ops = s3[key]
        print(f"s3 {key:<25} {sum(ops.values())} requests: {ops}")
    ops = s3["per_trait_ops"]
    print(
        f"s3 per_trait_ops            {sum(ops.values()):.1f} requests per trait: "
        + ", ".join(f"{k} {v:.1f}" for k, v in sorted(ops.items()))
    )
    rerun = s3["rerun_ops"]
    lists = rerun.get("ListObjectsV2", 0)
    reads = rerun.get("GetObject", 0) + rerun.get("HeadObject", 0)
    print(
        f"rerun with nothing changed: {lists} listing request(s), {reads / N:.2f} reads per trait "
        f"(goal: O(1) listings, <= 2 reads per trait)"
    )


if __name__ == "__main__":
    main()
