"""The checks the API server makes in code, not in its OpenAPI schema: names, labels, quantities.

Each message is the API server's own wording (``k8s.io/apimachinery/pkg/util/validation`` and
``pkg/apis/core/validation``), because tests and users match on it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = DNS1123_LABEL + r"(\." + DNS1123_LABEL + r")*"
QUALIFIED_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
LABEL_VALUE = r"(" + QUALIFIED_NAME + r")?"

_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
    "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
    f"validation is '{DNS1123_LABEL}')"
)
_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    f"validation is '{DNS1123_SUBDOMAIN}')"
)
_QUALIFIED_MSG = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation "
    f"is '{QUALIFIED_NAME}')"
)
_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
    f"'12345', regex used for validation is '{LABEL_VALUE}')"
)
_ENV_NAME_MSG = (
    "a valid environment variable name must consist only of printable ASCII characters other than '='"
)

# Go's resource.Quantity grammar as its parser reports it (a decode error: HTTP 400, not 422).
QUANTITY_REGEX = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
_QUANTITY = re.compile(
    r"^([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$"
)
_SUFFIX = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
STANDARD_CONTAINER_RESOURCES = {"cpu", "memory", "ephemeral-storage"}

_CAUSE_REASON = {
    "Invalid": "FieldValueInvalid",
    "Required": "FieldValueRequired",
    "NotSupported": "FieldValueNotSupported",
    "Duplicate": "FieldValueDuplicate",
    "Forbidden": "FieldValueForbidden",
    "TooLong": "FieldValueTooLong",
    "NotFound": "FieldValueNotFound",
}


def go_quote(value: object) -> str:
    """A value as ``field.Error`` prints it: strings quoted (``%q``), numbers bare, the rest as JSON."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, sort_keys=True)


@dataclass(frozen=True)
class FieldError:
    """One ``field.Error``: it becomes one ``details.causes[]`` entry of a 422."""

    kind: str  # Invalid | Required | NotSupported | Duplicate | Forbidden | TooLong | NotFound
    field: str
    value: object = None
    detail: str = ""

    @property
    def body(self) -> str:
        """What ``field.Error.ErrorBody()`` prints (the cause's ``message``)."""
        if self.kind == "Invalid":
            text = f"Invalid value: {go_quote(self.value)}"
        elif self.kind == "Required":
            text = "Required value"
        elif self.kind == "NotSupported":
            text = f"Unsupported value: {go_quote(self.value)}"
        elif self.kind == "Duplicate":
            text = f"Duplicate value: {go_quote(self.value)}"
        elif self.kind == "NotFound":
            text = f"Not found: {go_quote(self.value)}"
        elif self.kind == "TooLong":
            text = "Too long"
        else:
            text = "Forbidden"
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return f"{self.field}: {self.body}"

    def cause(self) -> dict[str, str]:
        return {"reason": _CAUSE_REASON[self.kind], "message": self.body, "field": self.field}


def not_supported(field: str, value: object, allowed: list[str]) -> FieldError:
    supported = ", ".join(go_quote(a) for a in allowed)
    return FieldError("NotSupported", field, value, f"supported values: {supported}")


# --------------------------------------------------------------------------------------------------
# Names and labels (apimachinery/pkg/util/validation)
# --------------------------------------------------------------------------------------------------


def dns1123_label(value: str) -> list[str]:
    errors = []
    if len(value) > 63:
        errors.append("must be no more than 63 characters")
    if not re.fullmatch(DNS1123_LABEL, value):
        errors.append(_LABEL_MSG)
    return errors


def dns1123_subdomain(value: str) -> list[str]:
    errors = []
    if len(value) > 253:
        errors.append("must be no more than 253 characters")
    if not re.fullmatch(DNS1123_SUBDOMAIN, value):
        errors.append(_SUBDOMAIN_MSG)
    return errors


def qualified_name(value: str) -> list[str]:
    """A label or annotation key: ``[prefix/]name``, the prefix a DNS subdomain, the name 63 at most."""
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            return ["prefix part must be non-empty"]
        errors = [f"prefix part {m}" for m in dns1123_subdomain(prefix)]
        if errors:
            return errors
    else:
        return [
            "a qualified name " + _QUALIFIED_MSG + " with an optional DNS subdomain prefix and '/' "
            "(e.g. 'example.com/MyName')"
        ]
    if not name:
        return ["name part must be non-empty"]
    errors = []
    if len(name) > 63:
        errors.append("name part must be no more than 63 characters")
    if not re.fullmatch(QUALIFIED_NAME, name):
        errors.append("name part " + _QUALIFIED_MSG)
    return errors


def label_value(value: str) -> list[str]:
    errors = []
    if len(value) > 63:
        errors.append("must be no more than 63 characters")
    if not re.fullmatch(LABEL_VALUE, value):
        errors.append(_VALUE_MSG)
    return errors


def env_var_name(value: str) -> list[str]:
    """Since 1.34 (RelaxedEnvironmentVariableValidation, on by default): printable ASCII but '='."""
    if not value:
        return []
    if any(not (32 <= ord(c) <= 126) or c == "=" for c in value):
        return [_ENV_NAME_MSG]
    return []


def name_errors(field: str, name: object, check: str = "subdomain") -> list[FieldError]:
    if not isinstance(name, str):
        return []
    rule = dns1123_subdomain if check == "subdomain" else dns1123_label
    return [FieldError("Invalid", field, name, m) for m in rule(name)]


def label_errors(field: str, labels: object) -> list[FieldError]:
    """``ValidateLabels``: each key a qualified name, each value a label value (63 characters)."""
    if not isinstance(labels, dict):
        return []
    errors = []
    for key, value in labels.items():
        errors += [FieldError("Invalid", field, key, m) for m in qualified_name(key)]
        if isinstance(value, str):
            errors += [FieldError("Invalid", field, value, m) for m in label_value(value)]
    return errors


def annotation_errors(field: str, annotations: object) -> list[FieldError]:
    if not isinstance(annotations, dict):
        return []
    errors = []
    size = 0
    for key, value in annotations.items():
        errors += [FieldError("Invalid", field, key.lower(), m) for m in qualified_name(key.lower())]
        size += len(key) + len(value or "")
    if size > 256 * 1024:
        errors.append(FieldError("TooLong", field, None, "must have at most 262144 bytes"))
    return errors


# --------------------------------------------------------------------------------------------------
# Quantities (apimachinery/pkg/api/resource)
# --------------------------------------------------------------------------------------------------


class QuantityError(ValueError):
    """A quantity Go cannot parse: the API server answers 400 (the body does not decode)."""


def parse_quantity(value: object) -> Decimal:
    """``"1.5Gi"``, ``"500m"``, ``2`` -> the amount in base units (cores, bytes, devices)."""
    if isinstance(value, bool) or value is None:
        raise QuantityError(f"quantities must match the regular expression '{QUANTITY_REGEX}'")
    if isinstance(value, int | float):
        return Decimal(str(value))
    match = _QUANTITY.match(str(value))
    if not match:
        raise QuantityError(f"quantities must match the regular expression '{QUANTITY_REGEX}'")
    number, suffix = match.group(1), match.group(2) or ""
    try:
        amount = Decimal(number)
    except InvalidOperation as exc:  # "1.2.3"
        raise QuantityError(f"quantities must match the regular expression '{QUANTITY_REGEX}'") from exc
    if suffix[:1] in ("e", "E"):
        return amount * Decimal(10) ** int(suffix[1:])
    return amount * _SUFFIX[suffix]


def is_extended_resource(name: str) -> bool:
    """Not overcommittable: a name with a domain outside ``kubernetes.io`` (``nvidia.com/gpu``)."""
    if "/" not in name:
        return name.startswith("hugepages-")
    domain = name.split("/", 1)[0]
    return not (domain == "kubernetes.io" or domain.endswith(".kubernetes.io"))


def resource_errors(field: str, resources: object) -> list[FieldError]:
    """``ValidateResourceRequirements``: names, non-negative amounts, requests against limits."""
    if not isinstance(resources, dict):
        return []
    limits = resources.get("limits") or {}
    requests = resources.get("requests") or {}
    errors: list[FieldError] = []
    for section, values in (("limits", limits), ("requests", requests)):
        for name, raw in values.items():
            path = f"{field}.{section}[{name}]"
            if (
                "/" not in name
                and name not in STANDARD_CONTAINER_RESOURCES
                and not name.startswith("hugepages-")
            ):
                errors.append(FieldError("Invalid", path, name, "must be a standard resource for containers"))
            elif "/" in name and qualified_name(name):
                errors.append(
                    FieldError("Invalid", path, name, "doesn't follow extended resource name standard")
                )
            amount = parse_quantity(raw)
            if amount < 0:
                errors.append(FieldError("Invalid", path, str(raw), "must be greater than or equal to 0"))
            if is_extended_resource(name) and amount != amount.to_integral_value():
                errors.append(FieldError("Invalid", path, str(raw), "must be an integer"))
    for name, raw in requests.items():
        amount = parse_quantity(raw)
        if name in limits:
            limit = parse_quantity(limits[name])
            if is_extended_resource(name) and amount != limit:
                errors.append(
                    FieldError(
                        "Invalid",
                        f"{field}.requests",
                        str(raw),
                        f"must be equal to {name} limit of {limits[name]}",
                    )
                )
            elif amount > limit:
                errors.append(
                    FieldError(
                        "Invalid",
                        f"{field}.requests",
                        str(raw),
                        f"must be less than or equal to {name} limit of {limits[name]}",
                    )
                )
        elif is_extended_resource(name):
            errors.append(
                FieldError(
                    "Required", f"{field}.limits", None, "Limit must be set for non overcommitable resources"
                )
            )
    return errors
