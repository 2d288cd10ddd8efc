"""``GET .../pods/{name}/log``: what the API server answers itself and what it proxies from the kubelet.

Options as ``PodLogOptions`` has them: ``container`` (required when the pod has several), ``follow``
(stream new lines until the container ends), ``previous`` (the instance before the last restart),
``timestamps`` (each line prefixed by its RFC 3339 time with nanoseconds, as the kubelet writes it),
``sinceSeconds`` / ``sinceTime`` (one of them), ``tailLines``, ``limitBytes``. A container that has
not started yet is a 400 with the kubelet's reason, as on a real cluster.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from tests.fake_kubernetes.kubelet import ContainerRun, Kubelet
from tests.fake_kubernetes.rules import FieldError
from tests.fake_kubernetes.store import Store
from tests.fake_kubernetes.wire import ApiError, Reply, Request, bad_request


def _stamp(moment: float) -> str:
    whole = datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{round(moment % 1 * 1e9) % 1_000_000_000:09d}Z"


def _int_option(request: Request, name: str) -> int | None:
    raw = request.arg(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise bad_request(f"strconv.ParseInt: parsing {raw!r}: invalid syntax") from exc


def _options(request: Request) -> dict[str, Any]:
    since, tail, limit = (
        _int_option(request, "sinceSeconds"),
        _int_option(request, "tailLines"),
        _int_option(request, "limitBytes"),
    )
    since_time = request.arg("sinceTime")
    errors = []
    if since is not None and since < 1:
        errors.append(FieldError("Invalid", "sinceSeconds", since, "must be greater than 0"))
    if since is not None and since_time:
        errors.append(
            FieldError("Forbidden", "", None, "at most one of `sinceTime` or `sinceSeconds` may be specified")
        )
    if tail is not None and tail < 0:
        errors.append(FieldError("Invalid", "tailLines", tail, "must be greater than or equal to 0"))
    if limit is not None and limit < 1:
        errors.append(FieldError("Invalid", "limitBytes", limit, "must be greater than 0"))
    if errors:
        text = "; ".join(str(e) for e in errors)
        raise ApiError(
            422,
            "Invalid",
            f'PodLogOptions "" is invalid: {text}',
            {"kind": "PodLogOptions", "causes": [e.cause() for e in errors]},
        )
    cutoff = None
    if since is not None:
        cutoff = time.time() - since
    elif since_time:
        try:
            cutoff = datetime.fromisoformat(since_time.replace("Z", "+00:00")).timestamp()
        except ValueError as exc:
            raise bad_request(f"parsing time {since_time!r} as RFC3339: cannot parse") from exc
    return {"cutoff": cutoff, "tail": tail, "limit": limit, "timestamps": request.flag("timestamps")}


def _pick(pod: dict[str, Any], wanted: str | None) -> str:
    name = pod["metadata"]["name"]
    mains = [c["name"] for c in pod["spec"].get("containers") or []]
    inits = [c["name"] for c in pod["spec"].get("initContainers") or []]
    if not wanted:
        if len(mains) == 1:
            return mains[0]
        message = f"a container name must be specified for pod {name}, choose one of: [{' '.join(mains)}]"
        if inits:
            message += f" or one of the init containers: [{' '.join(inits)}]"
        raise bad_request(message)
    if wanted not in mains + inits:
        raise bad_request(f"container {wanted} is not valid for pod {name}")
    return wanted


def pod_log(store: Store, kubelet: Kubelet, pod: dict[str, Any], request: Request) -> Reply:
    options = _options(request)
    name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
    container_name = _pick(pod, request.arg("container"))
    run = kubelet.runs.get(uid)
    if not pod["spec"].get("nodeName") or run is None:
        raise bad_request(f"pod {name} does not have a host assigned")
    c = run.container(container_name)
    assert c is not None
    if request.flag("previous"):
        if c.previous is None:
            raise bad_request(f'previous terminated container "{container_name}" in pod "{name}" not found')
        return _body(c.previous, options)
    if c.state == "waiting" and not c.last_state:
        reason = c.reason
        if reason in ("ErrImagePull", "ImagePullBackOff"):
            reason = "trying and failing to pull image"
        raise bad_request(f'container "{container_name}" in pod "{name}" is waiting to start: {reason}')
    if c.state == "waiting":  # crash-looping: the last instance's output
        return _body(c.previous or [], options)
    if c.state == "terminated" and not c.container_id:
        raise bad_request(f'container "{container_name}" in pod "{name}" is terminated')
    if not request.flag("follow") or c.log_closed:
        return _body(c.lines, options)
    return Reply(200, headers={"Content-Type": "text/plain"}, stream=_follow(store, kubelet, uid, c, options))


def _select(lines: list[tuple[float, bytes]], options: dict[str, Any]) -> list[tuple[float, bytes]]:
    if options["cutoff"] is not None:
        lines = [entry for entry in lines if entry[0] >= options["cutoff"]]
    if options["tail"] is not None:
        lines = lines[-options["tail"] :] if options["tail"] else []
    return lines


def _format(entry: tuple[float, bytes], timestamps: bool) -> bytes:
    return (_stamp(entry[0]).encode() + b" " + entry[1]) if timestamps else entry[1]


def _body(lines: list[tuple[float, bytes]], options: dict[str, Any]) -> Reply:
    body = b"".join(_format(entry, options["timestamps"]) for entry in _select(lines, options))
    if options["limit"] is not None:
        body = body[: options["limit"]]
    return Reply(200, body, {"Content-Type": "text/plain"})


def _follow(
    store: Store, kubelet: Kubelet, uid: str, c: ContainerRun, options: dict[str, Any]
) -> Iterator[bytes]:
    """Every line so far, then each new one as it is written, until the container's output ends."""
    lines = c.lines  # this instance: a restart starts a new list
    with store.lock:
        start = len(lines) - len(_select(lines, options))
    sent, position = 0, start
    limit = options["limit"]
    while True:
        with store.lock:
            ended = lambda: c.lines is not lines or c.log_closed or uid not in kubelet.runs or store.closed  # noqa: E731
            if position >= len(lines) and not ended():
                store.changed.wait(0.5)
            batch = lines[position:]
            position += len(batch)
            finished = ended() and position >= len(lines)
        for entry in batch:
            chunk = _format(entry, options["timestamps"])
            if limit is not None:
                chunk = chunk[: max(limit - sent, 0)]
            if chunk:
                sent += len(chunk)
                yield chunk
            if limit is not None and sent >= limit:
                return
        if finished:
            return
        if not batch:
            yield b""  # lets the server notice a client that went away
