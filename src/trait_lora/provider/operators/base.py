"""What every per-trait Together step shares: the incoming record, the hook, the ledger, the config,
failure records, and the trait as the mapped task's label from the moment it starts."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from trait_lora.provider.hooks.together import TogetherHook, is_permanent
from trait_lora.provider.retry import TogetherRetryPolicy

if TYPE_CHECKING:
    from trait_lora.core.config import TrainingConfig
    from trait_lora.core.jobs.ledger import Ledger
    from trait_lora.provider.records import TraitJob

# The ledger, the run records and the trait record are imported where a task uses them: the DAG
# files import these operators, and parsing them must stay cheap (bench/bench_dag_parse.py).

T = TypeVar("T")


class TogetherJobFailed(AirflowFailException):
    """Together ended the job in error / user_error / cancelled: retrying the task cannot fix it."""


def map_index_template(input_field: str) -> str:
    """A label over the mapped, rendered input: Airflow 3.3 renders it before ``execute``, so a deferred
    task shows its trait (not its index) for its whole wait. ``default`` keeps it from ever failing."""
    return "{{ task." + input_field + ".trait | default('') }}"


def setting_or(value: float | None, key: str) -> float:
    """An operator argument, else the deployment setting read now: called in ``execute`` so workers and
    the triggerer use the value deployed when the task runs, not the one the DAG processor parsed."""
    from trait_lora import settings

    return float(value) if value is not None else settings.get_float(key)


def guarded(
    context: Any, output_dir: str, trait: str, step: str, body: Callable[[], T], conn_id: str = ""
) -> T:
    """Run one step; on failure record why (a failed task has no XCom for the fan-in) and re-raise.

    A refusal a retry cannot change fails at once: 401/403 naming the connection to fix (never the
    key), other 4xx with Together's message. What may pass is left to ``TogetherRetryPolicy``.
    ``TaskDeferred`` is a BaseException and passes through untouched.
    """
    try:
        return body()
    except AirflowSkipException:
        raise
    except Exception as exc:
        from trait_lora.core.handoff import runs
        from trait_lora.provider.retry import together_status

        status = together_status(exc)
        if status in (401, 403):
            message = (
                f"{trait}: Together refused the API key of connection {conn_id or 'together_default'!r} "
                f"(HTTP {status}): put a valid Together API key in that connection's password"
            )
            runs.record_failure(output_dir, context["run_id"], trait, step, f"{step}: {message}")
            raise AirflowFailException(message) from None
        runs.record_failure(output_dir, context["run_id"], trait, step, f"{step}: {exc}")
        if is_permanent(exc):
            raise AirflowFailException(f"{trait}: Together refused the request: {exc}") from exc
        raise


class TogetherLineage:
    """OpenLineage for a Together step: each step names what it read and wrote, from the record it
    returned (kept on the operator by ``guard``: the listener runs in the same process, right after)."""

    returned: Any = None
    hook: TogetherHook
    incoming: TraitJob

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        from trait_lora.provider.tracking import lineage

        returned = self.returned
        if not isinstance(returned, dict):
            return None
        inputs, outputs, facet = self.lineage(self.incoming, returned)
        return lineage.operator_lineage(inputs, outputs, {"backend": "together", **facet})

    lineage_step = ""  # upload | launch | wait | download

    def lineage(
        self, incoming: TraitJob, returned: dict[str, Any]
    ) -> tuple[list[tuple[str, str]], list[tuple[str, str]], dict[str, Any]]:
        """(inputs, outputs, run facet fields) of this step: shard -> Together file -> fine-tuning job
        -> adapter, so a lineage graph joins the four steps of a trait end to end."""
        from trait_lora.core.shards.remote import shard_source
        from trait_lora.provider.tracking.lineage import dataset_id

        facet: dict[str, Any] = {"trait": incoming.trait, "job_key": incoming.job_key}
        step = self.lineage_step
        if step == "upload":
            files = [returned.get("file_id"), returned.get("validation_file_id")]
            outputs = [self.together_dataset("files", f) for f in files if f]
            facet.update(file_id=returned.get("file_id"), shard_sha256=incoming.plan.get("shard_sha256"))
            return [dataset_id(shard_source(incoming.plan))], outputs, facet
        job = self.together_dataset("fine-tunes", returned.get("job_id") or incoming.job_id)
        facet["job_id"] = returned.get("job_id") or incoming.job_id
        if step == "launch":
            facet.update(estimated_price_usd=returned.get("estimated_price"), status=returned.get("status"))
            return [self.together_dataset("files", incoming.file_id)], [job], facet
        if step == "wait":
            facet.update(status=returned.get("status"), total_price_usd=returned.get("total_price"))
            return [job], [], facet
        facet.update(
            action=returned.get("action"),
            total_price_usd=returned.get("total_price"),
            adapter_sha256=returned.get("adapter_sha256"),
            adapter_uri=returned.get("adapter_path"),
            final_loss=returned.get("final_loss"),
            eval=returned.get("eval"),
        )
        return [job], [dataset_id(str(returned["adapter_path"]))], facet

    def together_dataset(self, kind: str, ident: Any) -> tuple[str, str]:
        from trait_lora.provider.tracking.lineage import together_id

        return together_id(self.hook.base_url, kind, str(ident))


class TogetherStep(TogetherLineage, BaseOperator):
    """One per-trait step. ``input_field`` names the template field holding the previous step's record.

    ``output_dir`` and ``config`` default to the values ``discover`` put in every trait's record, so the
    mapped group needs no extra wiring; pass them to override.
    """

    ui_color = "#e8f0ff"
    input_field = ""

    def __init__(
        self,
        *,
        output_dir: str | None = None,
        config: dict[str, Any] | None = None,
        together_conn_id: str = TogetherHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("map_index_template", map_index_template(self.input_field))
        kwargs.setdefault("retry_policy", TogetherRetryPolicy())
        super().__init__(**kwargs)
        self.output_dir = output_dir
        self.config = config
        self.together_conn_id = together_conn_id

    @property
    def incoming(self) -> TraitJob:
        from trait_lora.provider.records import TraitJob

        return TraitJob.from_xcom(getattr(self, self.input_field))

    @property
    def out_dir(self) -> str:
        return str(self.output_dir or self.incoming.output_dir)

    @cached_property
    def hook(self) -> TogetherHook:
        return TogetherHook(together_conn_id=self.together_conn_id)

    @property
    def ledger(self) -> Ledger:
        from trait_lora.core.jobs.ledger import Ledger

        return Ledger(self.out_dir)

    @property
    def training_config(self) -> TrainingConfig:
        from trait_lora.core.config import from_mapping

        values = self.config or self.incoming.plan.get("config") or {}
        return from_mapping({**values, "backend": "together"}, source="DAG params")

    def guard(self, context: Any, body: Callable[[], T]) -> T:
        result = guarded(
            context, self.out_dir, self.incoming.trait, self.task_id, body, self.together_conn_id
        )
        self.returned = result
        return result

    def execute(self, context: Any) -> Any:
        job = self.incoming
        return self.guard(context, lambda: self.run_step(context, job))

    def run_step(self, context: Any, job: TraitJob) -> Any:
        raise NotImplementedError
