"""Jobs: model limits, price estimates, create/list/retrieve/cancel/events/metrics/checkpoints
(the way a job moves is ``simulation``)."""

from __future__ import annotations

import copy
import math
import re
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.fake_together.common import (
    LLAMA_8B_PARAM_COUNT,
    NANODOLLARS_PER_DOLLAR,
    PRIVATE_JOB_KEYS,
    TERMINAL_STATUSES,
    TRUNCATED_JOB_KEYS,
    _is_int,
    _is_number,
    _now,
    default_model_limits,
)
from tests.fake_together.simulation import JobSimulationMixin
from tests.fake_together.wire import (
    _BadRequest,
    _batch_bounds,
    _check_training_method,
    _check_training_type,
    _json_object,
    _json_reply,
    _Reply,
    _Request,
    _Run,
    _schedule,
)

# What a list entry may leave out: the spec requires only id, status, created_at and updated_at of a
# ``FinetuneResponseTruncated``; SDK 3.1.1 documents the suffix and output names there as well.
LIST_NAME_KEYS = frozenset({"suffix", "model_output_name", "adapter_output_name"})


class JobsMixin(JobSimulationMixin):
    """The job routes of ``FakeTogether`` (state lives on the fake)."""

    # True: list entries carry the suffix and output names (SDK 3.1.1's shape). False: they do not, as
    # the spec allows; a client then learns a job's suffix only by reading the job whole.
    list_shows_names: bool = True

    def add_past_jobs(self, n: int, *, suffixed: bool = True) -> list[str]:
        """Seed ``n`` finished jobs of other work (an account's history), oldest first, an hour apart
        and ending an hour ago; returns their ids. ``suffixed``: each has a suffix of its own (never a
        key tag of ours), else none."""
        start = datetime.now(UTC) - timedelta(hours=n)
        ids = []
        for i in range(n):
            at = (start + timedelta(hours=i)).isoformat().replace("+00:00", "Z")
            suffix = f"past-{i:05d}-{secrets.token_hex(4)}" if suffixed else None
            ids.append(self.add_job(suffix=suffix, status="completed", created_at=at, updated_at=at))
        return ids

    # ----------------------------------------------------------------------------------------------
    # Limits and price
    # ----------------------------------------------------------------------------------------------

    def _limits_for(self, model: str) -> dict[str, Any]:
        if self.known_models is not None and model not in self.known_models:
            raise _BadRequest(f"model {model!r} is not available for fine-tuning", 404)
        return self.model_limits(model)

    def _limits(self, req: _Request) -> _Reply:
        model = req.arg("model_name")
        if not model:
            raise _BadRequest("model_name query parameter is required")
        return _json_reply(200, self._limits_for(model))

    def _price_nanodollars(self, record: dict[str, Any], n_epochs: int) -> int:
        tokens = math.ceil(record["bytes"] / 4) * n_epochs
        return round(tokens * self.price_per_million_tokens / 1e6 * NANODOLLARS_PER_DOLLAR)

    def _estimate_price(self, req: _Request) -> _Reply:
        body = _json_object(req)
        self.estimates.append(copy.deepcopy(body))
        training_file = body.get("training_file")
        if not isinstance(training_file, str) or not training_file:
            raise _BadRequest("training_file is required")
        record = self.files.get(training_file)
        if record is None:
            raise _BadRequest(f"training_file {training_file} not found")
        n_epochs = body.get("n_epochs", 1)
        if not _is_int(n_epochs) or n_epochs < 1:
            raise _BadRequest("n_epochs must be an integer >= 1")
        _check_training_type(body.get("training_type"), None)
        _check_training_method(body.get("training_method"))
        if record["processing_status"] != "COMPLETED":
            self.unvalidated_uses.append((req.path, training_file))
        if record["processing_status"] == "INVALID_FORMAT":
            return _json_reply(
                200, {"estimation_available": False, "unavailable_reason": "train_file_invalid"}
            )
        if record["processing_status"] != "COMPLETED":
            return _json_reply(
                200, {"estimation_available": False, "unavailable_reason": "train_file_not_validated"}
            )
        price = self._price_nanodollars(record, n_epochs) / NANODOLLARS_PER_DOLLAR
        return _json_reply(
            200,
            {  # no "estimation_available": Together's spec has no such field in this answer
                "allowed_to_proceed": price <= self.user_limit,
                "estimated_total_price": price,
                "user_limit": self.user_limit,
                "estimated_train_token_count": math.ceil(record["bytes"] / 4) * n_epochs,
                "estimated_eval_token_count": 0,
            },
        )

    # ----------------------------------------------------------------------------------------------
    # Jobs
    # ----------------------------------------------------------------------------------------------

    def _job(self, job_id: str) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        if job is None:
            raise _BadRequest(f"fine-tune job {job_id} not found", 404)
        return job

    def _view(self, job: dict[str, Any], *, full: bool) -> dict[str, Any]:
        if full:  # the job object's own events list is empty: GET .../events has them
            view = copy.deepcopy({k: v for k, v in job.items() if k not in PRIVATE_JOB_KEYS})
            view["events"] = []
            return view
        return copy.deepcopy({k: v for k, v in job.items() if k in TRUNCATED_JOB_KEYS})

    def _jobs_create(self, req: _Request) -> _Reply:
        body = _json_object(req)
        self._validate_create(body)
        job = self._new_job(body)
        self._creates += 1
        in_flight = sum(1 for j in self.jobs.values() if j["status"] not in TERMINAL_STATUSES)
        self.max_in_flight = max(self.max_in_flight, in_flight)
        if self._drop_creates > 0:
            self._drop_creates -= 1
            return _Reply(action="reset")
        return _json_reply(200, self._view(job, full=False))

    def _validate_create(self, body: dict[str, Any]) -> None:
        """Reject what Together would (or what would be a bug in our client): 400 with the reason."""
        training_file = body.get("training_file")
        if not isinstance(training_file, str) or not training_file:
            raise _BadRequest("training_file is required")
        self._check_usable_file(training_file, "training_file")
        validation_file = body.get("validation_file")
        if validation_file not in (None, ""):
            if not isinstance(validation_file, str):
                raise _BadRequest("validation_file must be a file id")
            self._check_usable_file(validation_file, "validation_file")
        model = body.get("model")
        if model is None and not body.get("from_checkpoint"):
            raise _BadRequest("model (or from_checkpoint) is required")
        if model is not None and (not isinstance(model, str) or not model):
            raise _BadRequest("model must be a non-empty string")
        limits = self._limits_for(model) if model else default_model_limits(str(body["from_checkpoint"]))
        suffix = body.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or len(suffix) > 40):
            raise _BadRequest("suffix must be a string of at most 40 characters")
        n_epochs = body.get("n_epochs")
        if not _is_int(n_epochs) or not 1 <= n_epochs <= limits["max_num_epochs"]:
            raise _BadRequest(f"n_epochs must be an integer in [1, {limits['max_num_epochs']}]")
        lr = body.get("learning_rate")
        if not _is_number(lr) or not limits["min_learning_rate"] <= lr <= limits["max_learning_rate"]:
            raise _BadRequest(
                f"learning_rate must be within [{limits['min_learning_rate']}, {limits['max_learning_rate']}]"
            )
        training_type = body.get("training_type")
        _check_training_type(training_type, limits)
        _check_training_method(body.get("training_method"))
        batch = body.get("batch_size")
        if batch is not None and batch != "max":
            if not _is_int(batch):
                raise _BadRequest("batch_size must be an integer or 'max'")
            bounds = _batch_bounds(training_type, limits)
            if not bounds[0] <= batch <= bounds[1]:
                raise _BadRequest(f"batch_size must be within [{bounds[0]}, {bounds[1]}]")
        scheduler = body.get("lr_scheduler")
        if scheduler is not None and (
            not isinstance(scheduler, dict) or scheduler.get("lr_scheduler_type") not in ("linear", "cosine")
        ):
            raise _BadRequest("lr_scheduler.lr_scheduler_type must be 'linear' or 'cosine'")
        for name, low, high in (
            ("warmup_ratio", 0, 1),
            ("weight_decay", 0, None),
            ("max_grad_norm", 0, None),
        ):
            value = body.get(name)
            if value is not None and (
                not _is_number(value) or value < low or (high is not None and value > high)
            ):
                raise _BadRequest(f"{name} is out of range")
        for name in ("n_checkpoints", "n_evals", "gradient_accumulation_steps", "random_seed"):
            value = body.get(name)
            if value is not None and (not _is_int(value) or value < 0):
                raise _BadRequest(f"{name} must be a non-negative integer")
        seq = body.get("max_seq_length")
        if seq is not None and (
            not _is_int(seq) or not limits["min_max_seq_length"] <= seq <= limits["max_seq_length_sft"]
        ):
            raise _BadRequest(
                f"max_seq_length must be within [{limits['min_max_seq_length']}, "
                f"{limits['max_seq_length_sft']}]"
            )
        for name in ("packing", "early_stopping_enabled"):
            if body.get(name) is not None and not isinstance(body.get(name), bool):
                raise _BadRequest(f"{name} must be a boolean")

    def _check_usable_file(self, file_id: str, what: str) -> None:
        record = self.files.get(file_id)
        if record is None:
            raise _BadRequest(f"{what} {file_id} not found")
        if record["content"] is None:
            raise _BadRequest(f"{what} {file_id} was never uploaded")
        if record["purpose"] != "fine-tune":
            raise _BadRequest(f"{what} {file_id} has purpose {record['purpose']!r}, not 'fine-tune'")
        if record["processing_status"] != "COMPLETED":
            self.unvalidated_uses.append(("/v1/fine-tunes", file_id))
            raise _BadRequest(f"{what} {file_id} is {record['processing_status']}, not a validated dataset")

    def _new_job(
        self, body: dict[str, Any], job_id: str | None = None, settle: bool = True
    ) -> dict[str, Any]:
        """Build and store a job from a create body (already validated, or seeded by ``add_job``).

        ``settle``: apply ``job_polls <= 0`` (finish at once), as a create does.
        """
        job_id = job_id or f"ft-{uuid.uuid4()}"
        now = _now()
        model = body.get("model") or str(body.get("from_checkpoint", "")).split(":")[0]
        limits = default_model_limits(model)
        training_type = body.get("training_type")
        is_lora = not isinstance(training_type, dict) or training_type.get("type") == "Lora"
        batch = body.get("batch_size")
        if batch in (None, "max"):
            batch = _batch_bounds(training_type, limits)[1]
        record = self.files.get(body["training_file"]) or {}
        size = int(record.get("bytes", 0))
        lines = int((record.get("validation_report") or {}).get("nlines", 0))
        n_epochs = int(body.get("n_epochs") or 1)
        steps_per_epoch = max(1, math.ceil(lines / batch)) if lines else 1
        total_steps = max(self.min_total_steps, steps_per_epoch * n_epochs)
        steps_per_epoch = max(1, total_steps // n_epochs)
        suffix = body.get("suffix")
        base = model.split("/")[-1]
        rand = secrets.token_hex(4)
        output_name = f"{self.account}/{base}-{suffix}-{rand}" if suffix else f"{self.account}/{base}-{rand}"
        method = body.get("training_method")
        job: dict[str, Any] = {
            "id": job_id,
            "status": "pending",
            "user_id": self.user_id,
            "owner_address": self.owner_address,
            "created_at": now,
            "updated_at": now,
            "model": model,
            "model_output_name": output_name,
            "adapter_output_name": f"{output_name}-adapter" if is_lora else None,
            "suffix": suffix,
            "training_file": body["training_file"],
            "validation_file": body.get("validation_file"),
            "n_epochs": n_epochs,
            "n_checkpoints": body.get("n_checkpoints"),
            "n_evals": body.get("n_evals"),
            "batch_size": batch,
            "learning_rate": body.get("learning_rate"),
            "lr_scheduler": body.get("lr_scheduler"),
            "warmup_ratio": body.get("warmup_ratio"),
            "max_grad_norm": body.get("max_grad_norm"),
            "weight_decay": body.get("weight_decay"),
            "packing": body.get("packing"),
            "max_seq_length": body.get("max_seq_length"),
            "random_seed": body.get("random_seed"),
            "training_type": training_type,
            "training_method": method,
            "train_on_inputs": method.get("train_on_inputs") if isinstance(method, dict) else None,
            "multimodal_params": body.get("multimodal_params"),
            "from_checkpoint": body.get("from_checkpoint"),
            "from_hf_model": body.get("from_hf_model"),
            "hf_model_revision": body.get("hf_model_revision"),
            "wandb_project_name": body.get("wandb_project_name"),
            "wandb_name": body.get("wandb_name"),
            "wandb_entity": body.get("wandb_entity"),
            "token_count": math.ceil(size / 4) * n_epochs,
            "param_count": LLAMA_8B_PARAM_COUNT,
            "trainingfile_numlines": lines,
            "trainingfile_size": size,
            "total_price": 0,
            "epochs_completed": 0,
            "queue_depth": 0,
            "progress": {"estimate_available": True, "seconds_remaining": 60 * max(self.job_polls, 1)},
            "events": [],
            "request": copy.deepcopy(body),
        }
        keep_none = {"model_output_name", "adapter_output_name"}
        job = {k: v for k, v in job.items() if v is not None or k in keep_none}
        self.jobs[job_id] = job
        run = _Run(
            polls_needed=self.job_polls,
            schedule=_schedule(self.job_polls),
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            full_price=self._price_nanodollars({"bytes": size}, n_epochs),
        )
        self._runs[job_id] = run
        self._event(job, "job_pending", "Fine-tuning request created")
        if settle and self.job_polls <= 0:
            self._finish_by_outcome(job, run)
        return job

    def _jobs_retrieve(self, req: _Request, id: str) -> _Reply:
        self._job(id)
        self._advance(id)
        return _json_reply(200, self._view(self.jobs[id], full=True))

    def _jobs_list(self, req: _Request) -> _Reply:
        entries = [self._view(job, full=False) for job in self.jobs.values()]
        if not self.list_shows_names:
            entries = [{k: v for k, v in e.items() if k not in LIST_NAME_KEYS} for e in entries]
        return _json_reply(200, {"data": entries})

    def _jobs_delete(self, req: _Request, id: str) -> _Reply:
        job = self._job(id)
        if job["status"] not in TERMINAL_STATUSES:
            raise _BadRequest(f"fine-tune job {id} is {job['status']}; cancel it before deleting")
        del self.jobs[id]
        return _json_reply(200, {"message": f"fine-tune job {id} deleted"})

    def _jobs_cancel(self, req: _Request, id: str) -> _Reply:
        job = self._job(id)
        if job["status"] in TERMINAL_STATUSES:
            raise _BadRequest(f"fine-tune job {id} is already {job['status']} and cannot be cancelled")
        if job["status"] != "cancel_requested":
            job["status"] = "cancel_requested"
            job["updated_at"] = _now()
            self._event(job, "cancel_requested", "Cancellation requested by the user")
        return _json_reply(200, self._view(job, full=False))

    def _jobs_events(self, req: _Request, id: str) -> _Reply:
        return _json_reply(200, {"data": copy.deepcopy(self._job(id)["events"])})

    def _jobs_metrics(self, req: _Request, id: str) -> _Reply:
        job = self._job(id)
        run = self._runs[id]
        bounds: dict[str, int] = {}
        for name in ("global_step_from", "global_step_to", "resolution"):
            raw = req.arg(name)
            if raw is not None:
                if not re.fullmatch(r"\d+", raw):
                    raise _BadRequest(f"{name} must be a non-negative integer")
                bounds[name] = int(raw)
        low, high = bounds.get("global_step_from", 0), bounds.get("global_step_to", run.step)
        rows = []
        for step in range(max(1, low), min(run.step, high) + 1):
            rows.append(self._metric_row(job, run, step))
            if step in self._eval_steps(job, run):
                # Evaluations are rows of their own (as HF's Trainer logs them): only eval figures.
                rows.append(
                    {
                        "train/global_step": float(step),
                        self.eval_metric_key: round(0.5 + 1.6 * math.exp(-2.0 * step / run.total_steps), 6),
                    }
                )
        if bounds.get("resolution") and len(rows) > bounds["resolution"]:
            stride = len(rows) / bounds["resolution"]
            rows = [rows[int(i * stride)] for i in range(bounds["resolution"])]
        return _json_reply(200, {"metrics": rows})

    @staticmethod
    def _eval_steps(job: dict[str, Any], run: _Run) -> set[int]:
        """Where a job with a validation file evaluates: ``n_evals`` steps spread evenly, the last one at
        the final step; none without a validation file (Together ignores ``n_evals`` then)."""
        n = int(job.get("n_evals") or 0)
        if not job.get("validation_file") or n <= 0:
            return set()
        total = run.total_steps
        return {max(1, round(total * (i + 1) / n)) for i in range(n)}

    def _metric_row(self, job: dict[str, Any], run: _Run, step: int) -> dict[str, float]:
        fraction = step / run.total_steps
        lr = float(job.get("learning_rate") or 1e-5)
        scheduler = (job.get("lr_scheduler") or {}).get("lr_scheduler_type", "linear")
        lr_now = lr * (0.5 * (1 + math.cos(math.pi * fraction)) if scheduler == "cosine" else 1 - fraction)
        return {
            "train/global_step": float(step),
            "train/epoch": step / run.steps_per_epoch,
            "train/loss": round(0.35 + 1.85 * math.exp(-2.5 * fraction), 6),
            "train/learning_rate": lr_now,
        }

    def _jobs_checkpoints(self, req: _Request, id: str) -> _Reply:
        job = self._job(id)
        if job["status"] != "completed":
            return _json_reply(200, {"data": []})
        step = self._runs[id].total_steps
        data = [
            {
                "checkpoint_type": f"Final (step {step})",
                "created_at": job["updated_at"],
                "path": f"s3://fake-together/{id}/{kind}",
                "step": step,
                "checkpoint": kind,
            }
            for kind in ("adapter", "model")
        ]
        return _json_reply(200, {"data": data})
