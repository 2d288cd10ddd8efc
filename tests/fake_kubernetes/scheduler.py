"""The default scheduler's filters and its ``FailedScheduling`` message, for the nodes a test set up.

Filters run per node in the scheduler's order and a node drops out at its first failing plugin:
NodeUnschedulable, TaintToleration (``NoSchedule`` and ``NoExecute`` taints), NodeAffinity
(``nodeSelector`` and required node affinity), NodeResourcesFit (requests of the pods bound there and
not finished, against ``status.allocatable``; extended resources such as ``nvidia.com/gpu`` the same
way). The message is the one a 1.34+ scheduler writes (DRA on by default), e.g.
``0/2 nodes are available: 1 Insufficient nvidia.com/gpu, 1 node(s) had untolerated taint(s). no new
claims to deallocate, preemption: 0/2 nodes are available: 1 No preemption victims found for incoming
pod, 1 Preemption is not helpful for scheduling.``
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tests.fake_kubernetes.defaults import pod_requests
from tests.fake_kubernetes.rules import parse_quantity

UNRESOLVABLE = "Preemption is not helpful for scheduling"
NO_VICTIMS = "No preemption victims found for incoming pod"


@dataclass(frozen=True)
class Placement:
    node: str | None
    message: str = ""  # the scheduler's message when ``node`` is None


def tolerates(toleration: dict[str, Any], taint: dict[str, Any]) -> bool:
    """``Toleration.ToleratesTaint``: effect, key (empty with Exists = every key), then the operator."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    if key and key != taint.get("key"):
        return False
    if (toleration.get("operator") or "Equal") == "Exists":
        return True
    return (toleration.get("value") or "") == (taint.get("value") or "")


def _affinity_matches(spec: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in (spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if not required:
        return True
    return any(_term_matches(term, labels) for term in required.get("nodeSelectorTerms") or [])


def _term_matches(term: dict[str, Any], labels: dict[str, str]) -> bool:
    for expr in term.get("matchExpressions") or []:
        key, operator, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
        if operator in ("Gt", "Lt"):
            try:
                have, want = int(labels.get(key, "")), int(values[0])
            except ValueError:
                return False
            if (operator == "Gt" and not have > want) or (operator == "Lt" and not have < want):
                return False
    return True


def node_reasons(
    pod: dict[str, Any], node: dict[str, Any], bound: list[dict[str, Any]]
) -> tuple[list[str], bool]:
    """Why ``pod`` does not fit ``node`` (empty: it fits), and whether preemption could help."""
    spec = pod["spec"]
    if node["spec"].get("unschedulable"):
        return ["node(s) were unschedulable"], False
    tolerations = spec.get("tolerations") or []
    for taint in node["spec"].get("taints") or []:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not any(tolerates(t, taint) for t in tolerations):
            return ["node(s) had untolerated taint(s)"], False
    if not _affinity_matches(spec, node["metadata"].get("labels") or {}):
        return ["node(s) didn't match Pod's node affinity/selector"], False
    allocatable = node["status"].get("allocatable") or {}
    used: Counter[str] = Counter()
    for other in bound:
        for name, amount in pod_requests(other["spec"]).items():
            used[name] += amount
    reasons = []
    if len(bound) + 1 > int(parse_quantity(allocatable.get("pods", "110"))):
        reasons.append("Too many pods")
    for name, amount in sorted(pod_requests(spec).items()):
        if amount == 0:
            continue
        have = parse_quantity(allocatable[name]) if name in allocatable else Decimal(0)
        if used[name] + amount > have:
            reasons.append(f"Insufficient {name}")
    return reasons, True


def place(
    pod: dict[str, Any], nodes: list[dict[str, Any]], pods: list[dict[str, Any]], claims: set[str]
) -> Placement:
    """Pick the least loaded node that passes every filter, or explain why none does."""
    namespace = pod["metadata"]["namespace"]
    for volume in pod["spec"].get("volumes") or []:
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if claim and (namespace, claim) not in claims:
            count = len(nodes)
            return Placement(
                None,
                f'0/{count} nodes are available: persistentvolumeclaim "{claim}" not found. '
                f"preemption: 0/{count} nodes are available: {count} {UNRESOLVABLE}.",
            )
    if not nodes:
        return Placement(None, "no nodes available to schedule pods")
    histogram: Counter[str] = Counter()
    preemption: Counter[str] = Counter()
    fitting: list[tuple[int, str]] = []
    for node in nodes:
        name = node["metadata"]["name"]
        bound = [
            p
            for p in pods
            if p["spec"].get("nodeName") == name and p["status"].get("phase") not in ("Succeeded", "Failed")
        ]
        reasons, resolvable = node_reasons(pod, node, bound)
        if not reasons:
            fitting.append((len(bound), name))
            continue
        histogram.update(reasons)
        preemption[NO_VICTIMS if resolvable else UNRESOLVABLE] += 1
    if fitting:
        return Placement(min(fitting)[1])
    count = len(nodes)
    # Go sorts the formatted strings ("1 Insufficient cpu" < "2 node(s) ..."), counts included.
    found = ", ".join(sorted(f"{n} {reason}" for reason, n in histogram.items()))
    victims = ", ".join(sorted(f"{n} {reason}" for reason, n in preemption.items()))
    return Placement(
        None,
        f"0/{count} nodes are available: {found}. no new claims to deallocate, "
        f"preemption: 0/{count} nodes are available: {victims}.",
    )
