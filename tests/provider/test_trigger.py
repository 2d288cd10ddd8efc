"""TogetherFineTuneTrigger: serialization, validation, and ``run()``/``on_kill()`` against the fake.

Driven with the real ``AsyncTogether`` over HTTP; the connection comes from ``AIRFLOW_CONN_...`` as it
would in a triggerer.
"""

from __future__ import annotations

import importlib
import time

import pytest

from tests.provider.helpers import conn_json
from trait_lora.provider.triggers.together import CLASSPATH, TogetherFineTuneTrigger, describe_event

pytestmark = pytest.mark.anyio


async def collect(trigger: TogetherFineTuneTrigger) -> list[dict]:
    return [event.payload async for event in trigger.run()]


def trigger_for(job_id: str, **kwargs) -> TogetherFineTuneTrigger:
    return TogetherFineTuneTrigger(job_id=job_id, trait="joy_plus", poll_interval=0.001, **kwargs)


async def test_serialize_round_trips_through_the_classpath():
    original = TogetherFineTuneTrigger(
        job_id="ft-123",
        trait="joy_plus",
        together_conn_id="together_prod",
        poll_interval=7.5,
        deadline=1_900_000_000.0,
        max_transient_errors=3,
        last_status="running",
    )
    classpath, kwargs = original.serialize()
    assert classpath == CLASSPATH
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert kwargs == {
        "job_id": "ft-123",
        "trait": "joy_plus",
        "together_conn_id": "together_prod",
        "poll_interval": 7.5,
        "deadline": 1_900_000_000.0,
        "max_transient_errors": 3,
        "last_status": "running",
        "cancel_on_kill": True,
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"job_id": ""}, "job_id"),
        ({"job_id": None}, "job_id"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"poll_interval": -1}, "poll_interval"),
        ({"max_transient_errors": -1}, "max_transient_errors"),
    ],
)
async def test_constructor_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TogetherFineTuneTrigger(**{"job_id": "ft-1", "trait": "joy_plus", **kwargs})


async def test_run_yields_completed_for_a_job_that_finishes(together_conn):
    together_conn.job_polls = 5
    job_id = together_conn.add_job(suffix="joy-plus-0123456789abcdef")
    events = await collect(trigger_for(job_id))
    assert len(events) == 1
    assert events[0]["status"] == "completed"
    assert events[0]["job_id"] == job_id
    assert events[0]["trait"] == "joy_plus"
    assert events[0]["outcome"] == "ended"
    assert events[0]["total_price_usd"] == together_conn.jobs[job_id]["total_price"] / 1e9
    assert together_conn.jobs[job_id]["status"] == "completed"


@pytest.mark.parametrize("status", ["error", "user_error", "cancelled"])
async def test_run_yields_the_failure_with_togethers_message(together_conn, status):
    together_conn.set_outcome("joy-plus", status, "Bad data at line 7")
    job_id = together_conn.add_job(suffix="joy-plus-0123456789abcdef")
    events = await collect(trigger_for(job_id))
    assert [e["status"] for e in events] == [status]
    assert "Bad data at line 7" in events[0]["message"]


async def test_transient_errors_within_the_bound_are_ridden_out(fake_together, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_TOGETHER_DEFAULT", conn_json(fake_together, extra={"max_retries": 0}))
    job_id = fake_together.add_job(suffix="joy-plus-0123456789abcdef")
    fake_together.fail_next("GET", rf"/v1/fine-tunes/{job_id}$", 503, times=3)
    events = await collect(trigger_for(job_id, max_transient_errors=3))
    assert [e["status"] for e in events] == ["completed"]


async def test_transient_errors_beyond_the_bound_yield_poll_error_without_cancelling(
    fake_together, monkeypatch
):
    monkeypatch.setenv("AIRFLOW_CONN_TOGETHER_DEFAULT", conn_json(fake_together, extra={"max_retries": 0}))
    job_id = fake_together.add_job(suffix="joy-plus-0123456789abcdef")
    fake_together.fail_next("GET", rf"/v1/fine-tunes/{job_id}$", 503, times=100)
    events = await collect(trigger_for(job_id, max_transient_errors=3))
    assert [e["outcome"] for e in events] == ["poll_error"]
    assert "not cancelled" in events[0]["message"]
    assert fake_together.count("GET", rf"/v1/fine-tunes/{job_id}$") == 4  # 1 + 3 tolerated
    assert fake_together.count("POST", r"/cancel$") == 0


async def test_a_past_deadline_yields_timeout_and_leaves_the_job_running(together_conn):
    together_conn.job_polls = 50
    job_id = together_conn.add_job(suffix="joy-plus-0123456789abcdef", status="running")
    events = await collect(trigger_for(job_id, deadline=time.time() - 1, last_status="running"))
    assert [e["outcome"] for e in events] == ["timeout"]
    assert "NOT cancelled" in events[0]["message"]
    assert together_conn.count("POST", r"/cancel$") == 0
    assert together_conn.jobs[job_id]["status"] == "running"


async def test_each_job_event_is_logged_exactly_once(together_conn, capfd):
    """The triggerer's log shows every Together event once, however many polls returned it."""
    together_conn.job_polls = 8
    job_id = together_conn.add_job(suffix="joy-plus-0123456789abcdef")
    events = await collect(trigger_for(job_id))
    assert events[0]["status"] == "completed"
    log = capfd.readouterr().out  # Airflow routes task/trigger logging through structlog to stdout
    job_events = together_conn.events(job_id)
    assert len(job_events) > 8  # the job went through every stage, over 8 polls
    assert together_conn.count("GET", rf"/v1/fine-tunes/{job_id}$") == 8
    for event in job_events:
        line = f"joy_plus [{job_id}] {describe_event(event)}"
        assert log.count(line + " ") == 1, (line, log)
    # Status changes are announced once each too, however many polls saw the same status.
    assert log.count(f"joy_plus: job {job_id} is running ") == 1
    assert log.count(f"joy_plus: job {job_id} is completed ") == 1


async def test_on_kill_cancels_a_running_job(together_conn):
    together_conn.job_polls = 50
    job_id = together_conn.add_job(suffix="joy-plus-0123456789abcdef", status="running")
    await trigger_for(job_id).on_kill()
    assert together_conn.count("POST", rf"/v1/fine-tunes/{job_id}/cancel$") == 1
    assert together_conn.jobs[job_id]["status"] in ("cancel_requested", "cancelled")


async def test_on_kill_leaves_a_completed_job_alone(together_conn):
    job_id = together_conn.add_job(suffix="joy-plus-0123456789abcdef", status="completed")
    await trigger_for(job_id).on_kill()
    assert together_conn.count("POST", r"/cancel$") == 0
    assert together_conn.jobs[job_id]["status"] == "completed"


async def test_on_kill_leaves_the_job_alone_when_cancel_on_kill_is_off(together_conn):
    together_conn.job_polls = 50
    job_id = together_conn.add_job(suffix="joy-plus-0123456789abcdef", status="running")
    await trigger_for(job_id, cancel_on_kill=False).on_kill()
    assert together_conn.count("POST", r"/cancel$") == 0
    assert together_conn.jobs[job_id]["status"] == "running"


async def test_a_status_nobody_listed_is_polled_until_together_reports_an_end(together_conn, capfd):
    together_conn.job_polls = 4
    job_id = together_conn.add_job(suffix="joy-plus-0123456789abcdef", status="evaluating")
    events = await collect(trigger_for(job_id, last_status="evaluating"))
    assert [(e["outcome"], e["status"]) for e in events] == [("ended", "completed")]
    assert together_conn.count("GET", rf"/v1/fine-tunes/{job_id}$") == 4


async def test_cancel_requested_ends_the_wait_as_a_failure(together_conn):
    together_conn.job_polls = 50
    job_id = together_conn.add_job(suffix="joy-plus-0123456789abcdef", status="cancel_requested")
    events = await collect(trigger_for(job_id))
    assert [(e["outcome"], e["status"]) for e in events] in (
        [("ended", "cancel_requested")],
        [("ended", "cancelled")],
    )


@pytest.mark.parametrize(
    ("level", "kind"), [("Error", "JOB_ERROR"), ("error", "job_error"), ("info", "JOB_USER_ERROR")]
)
async def test_error_events_are_read_whatever_their_case(level, kind):
    from trait_lora.provider.hooks.together import first_error_message

    events = [
        {"level": "info", "type": "job_start", "message": "started"},
        {"level": level, "type": kind, "message": "Bad data at line 7"},
    ]
    assert first_error_message(events) == "Bad data at line 7"
    assert first_error_message([]) is None
