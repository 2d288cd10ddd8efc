"""What the API server checks before it stores an object: the schema, then its validation code.

Order as in the API server: the body must decode (wrong JSON types, unparseable quantities: HTTP 400),
unknown fields are dropped with a ``Warning`` header (or refused with 400 under
``fieldValidation=Strict``), defaults are applied, then the validation code runs (HTTP 422 ``Invalid``
with one ``details.causes[]`` entry per problem). The schema is Kubernetes' own OpenAPI schema as the
``kubernetes-validate`` package ships it; the rules the schema leaves to code are in ``rules.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
from referencing import Registry, Resource

from tests.fake_kubernetes.rules import (
    FieldError,
    QuantityError,
    annotation_errors,
    dns1123_label,
    dns1123_subdomain,
    env_var_name,
    label_errors,
    label_value,
    name_errors,
    not_supported,
    parse_quantity,
    qualified_name,
    resource_errors,
)

KUBERNETES_VERSION = "1.37.0"
_SCHEMAS = (
    Path(kubernetes_validate.__file__).parent
    / "kubernetes-json-schema"
    / f"v{KUBERNETES_VERSION}-local-strict"
)
_JSON_TYPES = {str: "string", bool: "bool", int: "number", float: "number", list: "array", dict: "object"}
_MAX_INT32 = 2**31 - 1


class DecodeError(Exception):
    """The body cannot become the Go object: the API server answers 400 BadRequest."""


@dataclass
class SchemaResult:
    """Schema problems sorted the way the API server treats them."""

    unknown: list[str] = field(default_factory=list)  # "spec.foo": dropped (Warn) or 400 (Strict)
    errors: list[FieldError] = field(default_factory=list)  # 422


@cache
def _validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((_SCHEMAS / f"{kind.lower()}-v1.json").read_text())
    definitions = json.loads((_SCHEMAS / "_definitions.json").read_text())
    registry = Resource.from_contents(schema) @ Registry()
    registry = Resource.from_contents(definitions) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


def path_of(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def check_schema(obj: dict[str, Any]) -> SchemaResult:
    """Validate against the strict schema of ``obj["kind"]``; raise ``DecodeError`` for type errors."""
    result = SchemaResult()
    kind = obj["kind"]
    for error in sorted(_validator(kind).iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        where = path_of(error.absolute_path)
        if error.validator == "additionalProperties":
            known = set(error.schema.get("properties") or {})
            for extra in sorted(set(error.instance) - known):
                result.unknown.append(f"{where}.{extra}" if where else extra)
        elif error.validator in ("type", "oneOf", "anyOf"):
            got = _JSON_TYPES.get(type(error.instance), "null")
            raise DecodeError(
                f'{kind} in version "v1" cannot be handled as a {kind}: json: cannot unmarshal {got} '
                f"into Go struct field {kind}.{where} of type {_go_type(error.schema)}"
            )
        elif error.validator == "required":
            for missing in error.validator_value:
                if isinstance(error.instance, dict) and missing not in error.instance:
                    result.errors.append(FieldError("Required", f"{where}.{missing}" if where else missing))
        elif error.validator == "enum":
            result.errors.append(not_supported(where, error.instance, list(error.validator_value)))
        else:
            result.errors.append(FieldError("Invalid", where, error.instance, error.message))
    return result


def _go_type(schema: dict[str, Any]) -> str:
    types = schema.get("type")
    if isinstance(types, list):
        types = next((t for t in types if t != "null"), "object")
    return {
        "string": "string",
        "integer": "int64",
        "boolean": "bool",
        "array": "[]",
        "number": "float64",
    }.get(str(types), "object")


def drop_unknown(obj: Any, unknown: list[str]) -> None:
    """What ``fieldValidation=Warn`` (the default) does: the unknown fields are not stored."""
    for dotted in unknown:
        parts: list[str | int] = []
        for token in dotted.replace("]", "").split("."):
            name, *indexes = token.split("[")
            parts.append(name)
            parts += [int(i) for i in indexes]
        node = obj
        for part in parts[:-1]:
            node = node[part]
        node.pop(parts[-1], None)


def check_quantities(pod: dict[str, Any]) -> None:
    """Quantities are parsed while decoding: a bad one is a 400, before any validation."""
    spec = pod.get("spec") or {}
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        resources = container.get("resources") or {}
        for section in ("limits", "requests"):
            for raw in (resources.get(section) or {}).values():
                try:
                    parse_quantity(raw)
                except QuantityError as exc:
                    raise DecodeError(f'Pod in version "v1" cannot be handled as a Pod: {exc}') from exc
    for volume in spec.get("volumes") or []:
        limit = (volume.get("emptyDir") or {}).get("sizeLimit")
        if limit is not None:
            try:
                parse_quantity(limit)
            except QuantityError as exc:
                raise DecodeError(f'Pod in version "v1" cannot be handled as a Pod: {exc}') from exc


# --------------------------------------------------------------------------------------------------
# Validation code (pkg/apis/core/validation)
# --------------------------------------------------------------------------------------------------


def metadata_errors(meta: dict[str, Any], *, name_check: str = "subdomain") -> list[FieldError]:
    errors: list[FieldError] = []
    name, generate = meta.get("name"), meta.get("generateName")
    if not name and not generate:
        errors.append(FieldError("Required", "metadata.name", None, "name or generateName is required"))
    if name:
        errors += name_errors("metadata.name", name, name_check)
    if generate and not name:
        errors += name_errors("metadata.generateName", generate.rstrip("-") or "a", name_check)
    errors += label_errors("metadata.labels", meta.get("labels"))
    errors += annotation_errors("metadata.annotations", meta.get("annotations"))
    return errors


def pod_errors(pod: dict[str, Any]) -> list[FieldError]:
    """``ValidatePodCreate`` for the fields a pod of this project (or a user's) is likely to carry."""
    spec = pod.get("spec") or {}
    errors = metadata_errors(pod.get("metadata") or {})
    volumes = spec.get("volumes") or []
    errors += _volume_errors(volumes)
    volume_names = {v.get("name") for v in volumes}
    containers = spec.get("containers") or []
    if not containers:
        errors.append(FieldError("Required", "spec.containers"))
    seen: set[str] = set()
    for group in ("initContainers", "containers"):
        for i, container in enumerate(spec.get(group) or []):
            errors += _container_errors(f"spec.{group}[{i}]", container, volume_names, seen)
    errors += _enum("spec.restartPolicy", spec.get("restartPolicy"), ["Always", "OnFailure", "Never"])
    errors += _enum(
        "spec.dnsPolicy",
        spec.get("dnsPolicy"),
        ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
    )
    deadline = spec.get("activeDeadlineSeconds")
    if deadline is not None and not 1 <= deadline <= _MAX_INT32:
        errors.append(
            FieldError(
                "Invalid",
                "spec.activeDeadlineSeconds",
                deadline,
                f"must be between 1 and {_MAX_INT32}, inclusive",
            )
        )
    errors += label_errors("spec.nodeSelector", spec.get("nodeSelector"))
    for key in ("serviceAccountName", "nodeName", "priorityClassName"):
        if spec.get(key):
            errors += name_errors(f"spec.{key}", spec[key])
    for key in ("hostname", "subdomain"):
        if spec.get(key):
            errors += name_errors(f"spec.{key}", spec[key], "label")
    for i, toleration in enumerate(spec.get("tolerations") or []):
        errors += toleration_errors(f"spec.tolerations[{i}]", toleration)
    errors += _affinity_errors(spec.get("affinity") or {})
    errors += _security_errors("spec.securityContext", spec.get("securityContext") or {})
    return errors


def _enum(path: str, value: object, allowed: list[str]) -> list[FieldError]:
    if value is None:
        return []
    if value == "":
        return [FieldError("Required", path)]
    return [] if value in allowed else [not_supported(path, value, allowed)]


def _unique_label_name(path: str, name: str, seen: set[str]) -> list[FieldError]:
    """A container's or volume's name: required, a DNS-1123 label, unique among its kind (``seen``)."""
    if not name:
        return [FieldError("Required", path)]
    errors = [FieldError("Invalid", path, name, m) for m in dns1123_label(name)]
    if name in seen:
        errors.append(FieldError("Duplicate", path, name))
    seen.add(name)
    return errors


def _container_errors(
    path: str, container: dict[str, Any], volume_names: set, seen: set[str]
) -> list[FieldError]:
    errors: list[FieldError] = []
    errors += _unique_label_name(f"{path}.name", container.get("name") or "", seen)
    if not container.get("image"):
        errors.append(FieldError("Required", f"{path}.image"))
    errors += _enum(
        f"{path}.imagePullPolicy", container.get("imagePullPolicy"), ["Always", "IfNotPresent", "Never"]
    )
    errors += _enum(
        f"{path}.terminationMessagePolicy",
        container.get("terminationMessagePolicy"),
        ["File", "FallbackToLogsOnError"],
    )
    for j, env in enumerate(container.get("env") or []):
        errors += _env_errors(f"{path}.env[{j}]", env)
    for j, source in enumerate(container.get("envFrom") or []):
        refs = [k for k in ("configMapRef", "secretRef") if source.get(k) is not None]
        if len(refs) != 1:
            errors.append(
                FieldError(
                    "Invalid",
                    f"{path}.envFrom[{j}]",
                    "",
                    "must specify one of: `configMapRef` or `secretRef`",
                )
            )
        for ref in refs:
            errors += _ref_name(f"{path}.envFrom[{j}].{ref}.name", source[ref].get("name"))
    mount_paths: set[str] = set()
    for j, mount in enumerate(container.get("volumeMounts") or []):
        mpath = f"{path}.volumeMounts[{j}]"
        if not mount.get("name"):
            errors.append(FieldError("Required", f"{mpath}.name"))
        elif mount["name"] not in volume_names:
            errors.append(FieldError("NotFound", f"{mpath}.name", mount["name"]))
        target = mount.get("mountPath") or ""
        if not target:
            errors.append(FieldError("Required", f"{mpath}.mountPath"))
        elif target in mount_paths:
            errors.append(FieldError("Invalid", f"{mpath}.mountPath", target, "must be unique"))
        mount_paths.add(target)
    for j, port in enumerate(container.get("ports") or []):
        number = port.get("containerPort")
        if not isinstance(number, int) or not 1 <= number <= 65535:
            errors.append(
                FieldError(
                    "Invalid",
                    f"{path}.ports[{j}].containerPort",
                    number,
                    "must be between 1 and 65535, inclusive",
                )
            )
    errors += resource_errors(f"{path}.resources", container.get("resources"))
    errors += _security_errors(f"{path}.securityContext", container.get("securityContext") or {})
    return errors


def _env_errors(path: str, env: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    name = env.get("name") or ""
    if not name:
        errors.append(FieldError("Required", f"{path}.name"))
    errors += [FieldError("Invalid", f"{path}.name", name, m) for m in env_var_name(name)]
    source = env.get("valueFrom")
    if source is None:
        return errors
    if env.get("value"):
        errors.append(
            FieldError("Invalid", f"{path}.valueFrom", "", "may not be specified when `value` is not empty")
        )
    kinds = [
        k
        for k in ("fieldRef", "resourceFieldRef", "configMapKeyRef", "secretKeyRef", "fileKeyRef")
        if source.get(k)
    ]
    if len(kinds) != 1:
        detail = "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`"
        if len(kinds) > 1:
            detail = "may not have more than one field specified at a time"
        errors.append(FieldError("Invalid", f"{path}.valueFrom", "", detail))
    for ref in ("secretKeyRef", "configMapKeyRef"):
        if source.get(ref):
            errors += _ref_name(f"{path}.valueFrom.{ref}.name", source[ref].get("name"))
            if not source[ref].get("key"):
                errors.append(FieldError("Required", f"{path}.valueFrom.{ref}.key"))
    if source.get("fieldRef") and not source["fieldRef"].get("fieldPath"):
        errors.append(FieldError("Required", f"{path}.valueFrom.fieldRef.fieldPath"))
    return errors


def _ref_name(path: str, name: object) -> list[FieldError]:
    if not name:
        return [FieldError("Required", path)]
    return [FieldError("Invalid", path, name, m) for m in dns1123_subdomain(str(name))]


def _volume_errors(volumes: list[dict[str, Any]]) -> list[FieldError]:
    errors: list[FieldError] = []
    names: set[str] = set()
    for i, volume in enumerate(volumes):
        path = f"spec.volumes[{i}]"
        errors += _unique_label_name(f"{path}.name", volume.get("name") or "", names)
        sources = [k for k, v in volume.items() if k != "name" and v is not None]
        if not sources:
            errors.append(FieldError("Required", path, None, "must specify a volume type"))
        elif len(sources) > 1:
            errors.append(
                FieldError(
                    "Forbidden", f"{path}.{sources[1]}", None, "may not specify more than 1 volume type"
                )
            )
        claim = volume.get("persistentVolumeClaim")
        if claim is not None and not claim.get("claimName"):
            errors.append(FieldError("Required", f"{path}.persistentVolumeClaim.claimName"))
        limit = (volume.get("emptyDir") or {}).get("sizeLimit")
        if limit is not None and parse_quantity(limit) < 0:
            errors.append(
                FieldError(
                    "Invalid", f"{path}.emptyDir.sizeLimit", str(limit), "must be greater than or equal to 0"
                )
            )
        secret = volume.get("secret")
        if secret is not None:
            errors += _ref_name(f"{path}.secret.secretName", secret.get("secretName"))
    return errors


def toleration_errors(path: str, toleration: dict[str, Any]) -> list[FieldError]:
    """``ValidateTolerations``: ``tolerationSeconds`` only with ``effect: NoExecute``, as the API says."""
    errors: list[FieldError] = []
    key, operator = toleration.get("key") or "", toleration.get("operator") or ""
    value, effect = toleration.get("value") or "", toleration.get("effect") or ""
    if key:
        errors += [FieldError("Invalid", f"{path}.key", key, m) for m in qualified_name(key)]
    if not key and operator != "Exists":
        errors.append(
            FieldError(
                "Invalid",
                f"{path}.operator",
                operator,
                'operator must be Exists when `key` is empty, which means "match all values and all keys"',
            )
        )
    if toleration.get("tolerationSeconds") is not None and effect != "NoExecute":
        errors.append(
            FieldError(
                "Invalid",
                f"{path}.effect",
                effect,
                "effect must be 'NoExecute' when `tolerationSeconds` is set",
            )
        )
    if operator in ("Equal", ""):
        messages = label_value(value)
        if messages:
            errors.append(FieldError("Invalid", f"{path}.operator", value, ";".join(messages)))
    elif operator == "Exists":
        if value:
            errors.append(
                FieldError(
                    "Invalid",
                    f"{path}.operator",
                    toleration,
                    "value must be empty when `operator` is 'Exists'",
                )
            )
    else:
        errors.append(not_supported(f"{path}.operator", operator, ["Equal", "Exists"]))
    if effect:
        errors += _enum(f"{path}.effect", effect, ["NoSchedule", "PreferNoSchedule", "NoExecute"])
    return errors


def _affinity_errors(affinity: dict[str, Any]) -> list[FieldError]:
    required = (affinity.get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    if required is None:
        return []
    path = "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        return [
            FieldError(
                "Required", f"{path}.nodeSelectorTerms", None, "must have at least one node selector term"
            )
        ]
    errors: list[FieldError] = []
    for i, term in enumerate(terms):
        for j, expr in enumerate(term.get("matchExpressions") or []):
            epath = f"{path}.nodeSelectorTerms[{i}].matchExpressions[{j}]"
            operator, values = expr.get("operator"), expr.get("values") or []
            errors += [
                FieldError("Invalid", f"{epath}.key", expr.get("key"), m)
                for m in qualified_name(expr.get("key") or "")
            ]
            if operator in ("In", "NotIn") and not values:
                errors.append(
                    FieldError(
                        "Required",
                        f"{epath}.values",
                        None,
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    )
                )
            elif operator in ("Exists", "DoesNotExist") and values:
                errors.append(
                    FieldError(
                        "Forbidden",
                        f"{epath}.values",
                        None,
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    )
                )
            elif operator in ("Gt", "Lt") and len(values) != 1:
                errors.append(
                    FieldError(
                        "Required",
                        f"{epath}.values",
                        None,
                        "must be specified single value when `operator` is 'Lt' or 'Gt'",
                    )
                )
            elif operator not in ("In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"):
                errors.append(
                    not_supported(
                        f"{epath}.operator", operator, ["DoesNotExist", "Exists", "Gt", "In", "Lt", "NotIn"]
                    )
                )
    return errors


def _security_errors(path: str, context: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    for key in ("runAsUser", "runAsGroup", "fsGroup"):
        value = context.get(key)
        if value is not None and not 0 <= value <= _MAX_INT32:
            errors.append(
                FieldError(
                    "Invalid", f"{path}.{key}", value, f"must be between 0 and {_MAX_INT32}, inclusive"
                )
            )
    return errors


def secret_errors(secret: dict[str, Any]) -> list[FieldError]:
    errors = metadata_errors(secret.get("metadata") or {})
    for section in ("data", "stringData"):
        for key in secret.get(section) or {}:
            if not key or any(not (c.isalnum() or c in "-._") for c in key):
                errors.append(
                    FieldError(
                        "Invalid",
                        f"{section}[{key}]",
                        key,
                        "a valid config key must consist of alphanumeric characters, '-', '_' or '.' "
                        "(e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is "
                        "'[-._a-zA-Z0-9]+')",
                    )
                )
    return errors
