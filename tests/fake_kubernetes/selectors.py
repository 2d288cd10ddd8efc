"""Label and field selectors as the API server parses them (``labels.Parse``, ``fields.ParseSelector``).

The cncf.kubernetes provider finds a task's pod with a selector such as
``dag_id=d,kubernetes_pod_operator=True,run_id=r,task_id=t,already_checked!=True,!airflow-worker``
and a pod's events with ``involvedObject.name=<pod>``: both grammars are needed in full.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.fake_kubernetes.rules import label_value, qualified_name


class SelectorError(ValueError):
    """An unparseable selector or an unsupported field: the API server answers 400 BadRequest."""


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # = != in notin exists !
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "exists":
            return present
        if self.operator == "!":
            return not present
        if self.operator in ("=", "in"):
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values  # != and notin match absent keys


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


_SET = re.compile(r"^\s*(\S+)\s+(in|notin)\s+\((.*)\)\s*$")
_BINARY = re.compile(r"^\s*([^=!\s]+)\s*(==|=|!=)\s*(\S*)\s*$")


def parse_labels(text: str | None) -> list[Requirement]:
    if not text or not text.strip():
        return []
    requirements = []
    for raw in _split_top_level(text):
        part = raw.strip()
        if not part:
            raise SelectorError(f"unable to parse requirement: found '', expected: identifier in {text!r}")
        if match := _SET.match(part):
            key, operator = match.group(1), match.group(2)
            values = tuple(v.strip() for v in match.group(3).split(",") if v.strip())
        elif match := _BINARY.match(part):
            key, operator, values = match.group(1), match.group(2), (match.group(3),)
            operator = "=" if operator == "==" else operator
        elif part.startswith("!"):
            key, operator, values = part[1:].strip(), "!", ()
        else:
            key, operator, values = part, "exists", ()
        problems = qualified_name(key)
        for value in values:
            problems += label_value(value)
        if problems:
            raise SelectorError(f"unable to parse requirement: {'; '.join(problems)}")
        requirements.append(Requirement(key, operator, values))
    return requirements


def labels_match(requirements: list[Requirement], obj: dict[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(r.matches(labels) for r in requirements)


# Field selectors: the fields each resource's registry offers (pkg/registry/core/*/strategy.go).
_META = {"metadata.name": ("metadata", "name"), "metadata.namespace": ("metadata", "namespace")}
FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "pods": {
        **_META,
        "spec.nodeName": ("spec", "nodeName"),
        "spec.restartPolicy": ("spec", "restartPolicy"),
        "spec.schedulerName": ("spec", "schedulerName"),
        "spec.serviceAccountName": ("spec", "serviceAccountName"),
        "spec.hostNetwork": ("spec", "hostNetwork"),
        "status.phase": ("status", "phase"),
        "status.podIP": ("status", "podIP"),
        "status.nominatedNodeName": ("status", "nominatedNodeName"),
    },
    "events": {
        **_META,
        "involvedObject.kind": ("involvedObject", "kind"),
        "involvedObject.namespace": ("involvedObject", "namespace"),
        "involvedObject.name": ("involvedObject", "name"),
        "involvedObject.uid": ("involvedObject", "uid"),
        "involvedObject.apiVersion": ("involvedObject", "apiVersion"),
        "involvedObject.resourceVersion": ("involvedObject", "resourceVersion"),
        "involvedObject.fieldPath": ("involvedObject", "fieldPath"),
        "reason": ("reason",),
        "reportingComponent": ("reportingComponent",),
        "source": ("source", "component"),
        "type": ("type",),
    },
    "secrets": {**_META, "type": ("type",)},
    "configmaps": dict(_META),
    "persistentvolumeclaims": dict(_META),
    "nodes": {**_META, "spec.unschedulable": ("spec", "unschedulable")},
    "namespaces": {**_META, "status.phase": ("status", "phase")},
}


def parse_fields(text: str | None, resource: str) -> Callable[[dict[str, Any]], bool]:
    """A predicate for ``fieldSelector``; an unknown field is refused, as the API server does."""
    if not text or not text.strip():
        return lambda _obj: True
    known = FIELDS.get(resource, _META)
    tests: list[tuple[tuple[str, ...], bool, str]] = []
    for part in text.split(","):
        match = re.match(r"^\s*([^=!]+?)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not match:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{part}'")
        name, operator, value = match.groups()
        if name not in known:
            raise SelectorError(f"field label not supported: {name}")
        tests.append((known[name], operator != "!=", value))

    def matches(obj: dict[str, Any]) -> bool:
        for path, equal, value in tests:
            node: Any = obj
            for step in path:
                node = node.get(step) if isinstance(node, dict) else None
            text_value = "" if node is None else (str(node).lower() if isinstance(node, bool) else str(node))
            if (text_value == value) != equal:
                return False
        return True

    return matches
