"""The training pod as ``trait_lora_kubernetes`` holds it while its file is parsed: a small operator
that becomes the provider's ``KubernetesPodOperator`` (``pod_operator.TrainingPodOperator``) when its
task runs.

Why two classes: the provider's operator module imports the ``kubernetes`` and ``kubernetes_asyncio``
clients (about a second), and a DAG file is parsed by the DAG processor and again by the worker of
every task of the DAG (``discover``, each ``pod_spec`` and ``install``...), which have no use for them.
``TrainingPod`` carries the same arguments and the same scheduling fields (pool, retries,
``max_active_tis_per_dagrun``...), so the scheduler and the UI see what will run; its
``prepare_for_execution`` (the task runner's step before it renders templates and executes, in a
worker and in ``dag.test()`` alike) builds the real operator from those arguments, in its place in the
DAG, the way Airflow turns a mapped placeholder into the operator it runs (``MappedOperator.unmap``).
From then on the provider's own lifecycle runs unchanged: create or re-attach, defer, resume in
``trigger_reentry``, logs, cleanup, ``on_kill``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from trait_lora.provider.kubernetes import BASE_FIXED, MAP_INDEX_TEMPLATE, OPERATOR_FIXED, UI_COLOR


class TrainingPod(BaseOperator):
    """One trait's (or one group's) GPU pod, until its task runs; see the module docstring.

    Takes ``TrainingPodOperator``'s arguments: ``name``, ``arguments``, ``labels``, ``annotations``
    (from the ``pod_spec`` task), optionally ``image``, ``namespace``, ``run_record``, and any
    ``BaseOperator`` argument."""

    template_fields: Sequence[str] = ("name", "arguments", "labels", "annotations", "run_record")
    ui_color = UI_COLOR

    def __init__(
        self,
        *,
        name: Any,
        arguments: Any,
        labels: Any,
        annotations: Any = None,
        image: str | None = None,
        namespace: str | None = None,
        run_record: Any = None,
        **kwargs: Any,
    ) -> None:
        fixed = sorted(set(kwargs) & set(OPERATOR_FIXED))
        if fixed:  # refused here, at parse time, not by every run when the operator is built
            raise TypeError(
                f"TrainingPod sets {', '.join(fixed)} itself (a deferrable pod whose trainer writes "
                "result.json beside its adapter): leave them out"
            )
        kwargs.setdefault("map_index_template", MAP_INDEX_TEMPLATE)
        super().__init__(**{**kwargs, **BASE_FIXED})
        self.name = name
        self.arguments = arguments
        self.labels = labels
        self.annotations = annotations if annotations is not None else {}
        self.run_record = run_record
        # What the operator is built from, as given (after the DAG's and the group's default_args);
        # its place in the DAG (id, DAG, group, dates) is this task's, read when it is built.
        placed = ("task_id", "dag", "task_group", "start_date", "end_date")
        self.pod_kwargs = {key: value for key, value in kwargs.items() if key not in placed}
        self.pod_kwargs.update(
            name=name,
            arguments=arguments,
            labels=labels,
            annotations=self.annotations,
            run_record=run_record,
            image=image,
            namespace=namespace,
        )

    def prepare_for_execution(self) -> Any:
        from trait_lora.provider.pod_operator import TrainingPodOperator

        pod = TrainingPodOperator(
            **self.pod_kwargs,
            task_id=self.task_id,
            dag=self.get_dag(),
            task_group=self.task_group,
            start_date=self.start_date,  # the DAG's, which adding a task to a DAG would give it
            end_date=self.end_date,
            # in this task's place: the id keeps its group prefix, and the DAG, the group and the
            # other tasks' relations stay as they are (Airflow's flag for an unmapped operator)
            _airflow_from_mapped=True,
        )
        pod.upstream_task_ids = self.upstream_task_ids
        pod.downstream_task_ids = self.downstream_task_ids
        return pod.prepare_for_execution()
