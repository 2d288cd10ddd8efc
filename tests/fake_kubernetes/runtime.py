"""What a container runtime would take from its image and the kubelet from the API before a start:
images, the environment (``secretKeyRef`` resolved), volumes and the argv.

**Images.** An image is not pulled: a test maps image references (``fnmatch`` patterns, the last
match wins) to an ``Image``: its ENTRYPOINT, CMD, ENV, USER and WORKDIR, or a pull error. As in a
runtime, ``command`` replaces the ENTRYPOINT and ``args`` the CMD (a ``command`` alone drops the
CMD). An image nobody mapped has no entrypoint and PATH of the host.

**Volumes are path mappings, not mounts.** There is no chroot: a container sees the host's file
system. Every argv element and env value that names a ``mountPath`` (the whole value, or after
``=``, ``:`` or ``,``, followed by ``/`` or its end) is rewritten to the host folder behind it:
``emptyDir`` -> a folder in the pod's scratch directory, ``persistentVolumeClaim`` -> the folder the
test gave the claim (``FakeKubernetes.add_pvc``), ``hostPath`` -> itself, ``secret``/``configMap`` ->
files written into the scratch directory. A program that builds paths from a constant inside its
code is not rewritten: give such a mount a ``mountPath`` equal to the real folder (a PVC at the
folder it maps to is the simplest choice, nothing needs rewriting then).
"""

from __future__ import annotations

import base64
import fnmatch
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fake_kubernetes.rules import parse_quantity


class ConfigError(Exception):
    """Container config the kubelet cannot build: waiting reason ``CreateContainerConfigError``."""


class MountError(Exception):
    """A volume that cannot be set up: the container stays ``ContainerCreating``, event FailedMount."""


class Unsupported(Exception):
    """Something this fake does not model: recorded as a bug of the test setup, never silently run."""


@dataclass(frozen=True)
class Image:
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    user: int = 0  # the image's USER: runAsNonRoot refuses 0
    workdir: str | None = None
    pull_error: str | None = None  # set: every pull fails with this message


class Images:
    """The registry a test configures: ``add`` runnable images, ``block`` unpullable ones."""

    def __init__(self) -> None:
        self._rules: list[tuple[str, Image]] = []

    def add(
        self,
        pattern: str,
        *,
        entrypoint: list[str] | tuple[str, ...] = (),
        cmd: list[str] | tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
        user: int = 0,
        workdir: str | None = None,
    ) -> None:
        """``env`` is the image's ENV on top of the host's PATH (a test image that sets PATH wins)."""
        image_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})}
        self._rules.append((pattern, Image(tuple(entrypoint), tuple(cmd), image_env, user, workdir)))

    def block(self, pattern: str, message: str | None = None) -> None:
        """Pulls of matching images fail (``ErrImagePull``, then ``ImagePullBackOff``)."""
        self._rules.append((pattern, Image(pull_error=message or "")))

    def resolve(self, reference: str) -> Image:
        for pattern, image in reversed(self._rules):
            if fnmatch.fnmatchcase(reference, pattern):
                if image.pull_error == "":
                    return Image(pull_error=_not_found(reference))
                return image
        return Image(env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})


def _not_found(reference: str) -> str:
    name = reference if "/" in reference.split(":")[0] else f"docker.io/library/{reference}"
    return (
        f'rpc error: code = NotFound desc = failed to pull and unpack image "{name}": failed to resolve '
        f'reference "{name}": {name}: not found'
    )


# --------------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------------

_EXPANSION = re.compile(r"\$\$|\$\(([^)]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """``$(VAR)`` -> its value when defined (else left as written), ``$$`` -> ``$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _EXPANSION.sub(replace, value)


def _secret_value(
    objects: Mapping[tuple[str, str, str], dict[str, Any]], kind: str, ns: str, ref: dict
) -> str | None:
    resource = "secrets" if kind == "Secret" else "configmaps"
    obj = objects.get((resource, ns, ref["name"]))
    optional = bool(ref.get("optional"))
    if obj is None:
        if optional:
            return None
        raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found')
    data = _data(obj, kind)
    if ref["key"] not in data:
        if optional:
            return None
        raise ConfigError(f"couldn't find key {ref['key']} in {kind} {ns}/{ref['name']}")
    return data[ref["key"]]


def _data(obj: dict[str, Any], kind: str) -> dict[str, str]:
    if kind == "Secret":
        return {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (obj.get("data") or {}).items()}
    return dict(obj.get("data") or {})


def _field_value(pod: dict[str, Any], path: str) -> str:
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"),
        "status.podIP": status.get("podIP"),
    }
    if path in simple:
        return str(simple[path] or "")
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise Unsupported(f"fieldRef {path!r} is not modelled by the fake kubelet")


def _resource_value(container: dict[str, Any], ref: dict[str, Any]) -> str:
    section, _, name = ref["resource"].partition(".")
    amount = ((container.get("resources") or {}).get(section) or {}).get(name)
    if amount is None:
        raise Unsupported(f"resourceFieldRef {ref['resource']!r} without a value is not modelled")
    divisor = parse_quantity(ref.get("divisor") or "1")
    return str(math.ceil(parse_quantity(amount) / divisor))


def container_env(
    pod: dict[str, Any],
    container: dict[str, Any],
    image: Image,
    objects: Mapping[tuple[str, str, str], dict[str, Any]],
    service: tuple[str, int],
) -> dict[str, str]:
    """``kubelet.makeEnvironmentVariables``: image ENV, service links, envFrom, then env in order."""
    namespace = pod["metadata"]["namespace"]
    env = dict(image.env)
    host, port = service
    # The API server's own service: set whatever enableServiceLinks says (in-cluster clients need it).
    env.update(
        {
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": str(port),
            "KUBERNETES_PORT": f"tcp://{host}:{port}",
        }
    )
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        for kind, key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
            ref = source.get(key)
            if not ref:
                continue
            obj = objects.get(("secrets" if kind == "Secret" else "configmaps", namespace, ref["name"]))
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found')
            env.update({prefix + k: v for k, v in _data(obj, kind).items()})
    for item in container.get("env") or []:
        source = item.get("valueFrom")
        if source is None:
            env[item["name"]] = expand(item.get("value") or "", env)
            continue
        value: str | None
        if source.get("secretKeyRef"):
            value = _secret_value(objects, "Secret", namespace, source["secretKeyRef"])
        elif source.get("configMapKeyRef"):
            value = _secret_value(objects, "ConfigMap", namespace, source["configMapKeyRef"])
        elif source.get("fieldRef"):
            value = _field_value(pod, source["fieldRef"]["fieldPath"])
        elif source.get("resourceFieldRef"):
            value = _resource_value(container, source["resourceFieldRef"])
        else:
            raise Unsupported(f"env valueFrom {sorted(source)} is not modelled by the fake kubelet")
        if value is not None:
            env[item["name"]] = value
    env.setdefault("HOSTNAME", pod["metadata"]["name"])
    return env


def argv(container: dict[str, Any], image: Image, env: Mapping[str, str]) -> list[str]:
    """ENTRYPOINT/CMD as overridden by ``command``/``args``, ``$(VAR)`` expanded."""
    command = container.get("command") or []
    args = container.get("args")
    words = [*command, *(args or [])] if command else [*image.entrypoint, *(args or image.cmd)]
    return [expand(word, env) for word in words]


# --------------------------------------------------------------------------------------------------
# Volumes
# --------------------------------------------------------------------------------------------------


def setup_volume(
    volume: dict[str, Any],
    scratch: Path,
    namespace: str,
    objects: Mapping[tuple[str, str, str], dict[str, Any]],
    claims: Mapping[tuple[str, str], Path],
) -> Path:
    """The host folder behind one pod volume (created when the volume type creates one)."""
    name = volume["name"]
    if "emptyDir" in volume:
        folder = scratch / "volumes" / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    if "persistentVolumeClaim" in volume:
        claim = volume["persistentVolumeClaim"]["claimName"]
        if (namespace, claim) not in claims:
            raise MountError(f'persistentvolumeclaim "{claim}" not found')
        return claims[(namespace, claim)]
    if "hostPath" in volume:
        folder = Path(volume["hostPath"]["path"])
        if volume["hostPath"].get("type") in ("DirectoryOrCreate",):
            folder.mkdir(parents=True, exist_ok=True)
        return folder
    for kind, key, ref_key in (("Secret", "secret", "secretName"), ("ConfigMap", "configMap", "name")):
        if key in volume:
            source = volume[key]
            resource = "secrets" if kind == "Secret" else "configmaps"
            obj = objects.get((resource, namespace, source[ref_key]))
            folder = scratch / "volumes" / name
            folder.mkdir(parents=True, exist_ok=True)
            if obj is None:
                if source.get("optional"):
                    return folder
                missing = f'{kind.lower()} "{source[ref_key]}" not found'
                raise MountError(f'MountVolume.SetUp failed for volume "{name}" : {missing}')
            data = _data(obj, kind)
            items = source.get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                (folder / item["path"]).parent.mkdir(parents=True, exist_ok=True)
                (folder / item["path"]).write_text(data.get(item["key"], ""))
            return folder
    raise Unsupported(f"volume {name!r}: type {sorted(set(volume) - {'name'})} is not modelled by the fake")


def translate(value: str, mounts: list[tuple[str, str]]) -> str:
    """Rewrite the mount paths named in ``value`` to their host folders (longest mountPath first)."""
    for mount_path, host in mounts:
        if mount_path == host:
            continue
        pattern = r"(^|(?<=[=:,]))" + re.escape(mount_path.rstrip("/")) + r"(?=/|$|[:,\s])"
        value = re.sub(pattern, lambda _m, host=host: host, value)
    return value
