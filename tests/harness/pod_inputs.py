"""What a pod's containers receive from its spec, resolved as a kubelet resolves it.

Environment variables (`env` with `value` and `valueFrom`, `envFrom`, Kubernetes' `$(VAR)`
expansion), the container's argv, and the files of its volumes (emptyDir, configMap, secret,
downwardAPI, projected with serviceAccountToken). The process kubelet (process_kubelet.py) runs the
containers; this module only reads the pod and the objects it refers to, through `ClusterObjects`.

A reference that cannot be resolved raises PodConfigError naming it: the kubelet keeps the
container waiting and retries, as a real kubelet does.
"""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Protocol

from kubernetes.utils import parse_quantity

DEFAULT_FILE_MODE = 0o644  # the API's default for configMap, secret, downwardAPI and projected volumes
DEFAULT_TOKEN_SECONDS = 3600
# Volume types whose files come from the API: a kubelet mounts them read-only whatever the mount says.
_API_VOLUMES = ("configMap", "secret", "downwardAPI", "projected")


class PodConfigError(Exception):
    """The pod refers to something missing or unsupported; the message names it."""


class ClusterObjects(Protocol):
    """Read access to what a pod may refer to (None: the object does not exist)."""

    def config_map(self, namespace: str, name: str) -> dict | None: ...

    def secret(self, namespace: str, name: str) -> dict | None: ...

    def service_account_token(self, pod: dict, audience: str | None, expiration_seconds: int) -> str:
        """A token for the pod's ServiceAccount, bound to the pod (the TokenRequest API)."""


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    read_only: bool


# -- environment -------------------------------------------------------------------------------

def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: known names are replaced, unknown ones kept, `$$` is `$`."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end < 0:
                    out.append(text[i:])
                    break
                name = text[i + 2:end]
                out.append(env.get(name, text[i:end + 1]))
                i = end + 1
                continue
            out.append(text[i:i + 2])
            i += 2
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def container_env(pod: dict, container: dict, objects: ClusterObjects, base: dict[str, str],
                  allocatable: dict[str, str]) -> dict[str, str]:
    """The container's environment: `base` (what the runtime sets), then envFrom, then env, in order."""
    namespace = pod["metadata"]["namespace"]
    env = dict(base)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            data = _config_map_data(objects, namespace, source["configMapRef"])
        elif "secretRef" in source:
            data = _secret_data(objects, namespace, source["secretRef"])
        else:
            raise PodConfigError(f"container {container['name']!r}: unsupported envFrom source {sorted(source)}")
        for key in sorted(data or {}):
            env[prefix + key] = data[key].decode() if isinstance(data[key], bytes) else data[key]
    for var in container.get("env") or []:
        if "valueFrom" in var:
            value = _value_from(pod, container, var, objects, allocatable)
            if value is None:  # an optional reference to something absent: the variable is not set
                continue
        else:
            value = expand(var.get("value", ""), env)
        env[var["name"]] = value
    return env


def container_argv(container: dict, env: dict[str, str]) -> list[str]:
    """command + args with `$(VAR)` expanded; without a command the image's entrypoint would run."""
    command = container.get("command")
    if not command:
        raise PodConfigError(
            f"container {container['name']!r} has no command: its image's entrypoint would run, and the "
            f"process kubelet pulls no image (image {container.get('image')!r} is never used)")
    return [expand(part, env) for part in [*command, *(container.get("args") or [])]]


def _value_from(pod: dict, container: dict, var: dict, objects: ClusterObjects,
                allocatable: dict[str, str]) -> str | None:
    source = var["valueFrom"]
    namespace = pod["metadata"]["namespace"]
    where = f"container {container['name']!r}, env {var['name']!r}"
    if "fieldRef" in source:
        return field_value(pod, source["fieldRef"]["fieldPath"], where)
    if "resourceFieldRef" in source:
        ref = source["resourceFieldRef"]
        return resource_value(pod, ref.get("containerName") or container["name"], ref, allocatable, where)
    if "configMapKeyRef" in source:
        return _key(_config_map_data(objects, namespace, source["configMapKeyRef"]), source["configMapKeyRef"],
                    f"configmap {source['configMapKeyRef']['name']!r}", where)
    if "secretKeyRef" in source:
        value = _key(_secret_data(objects, namespace, source["secretKeyRef"]), source["secretKeyRef"],
                     f"secret {source['secretKeyRef']['name']!r}", where)
        return None if value is None else value.decode()
    raise PodConfigError(f"{where}: unsupported valueFrom {sorted(source)}")


def _key(data: dict | None, ref: dict, what: str, where: str):  # noqa: ANN202 - str or bytes
    if data is None:
        return None  # optional and absent
    if ref["key"] in data:
        return data[ref["key"]]
    if ref.get("optional"):
        return None
    raise PodConfigError(f"{where}: key {ref['key']!r} not found in {what}")


def _config_map_data(objects: ClusterObjects, namespace: str, ref: dict) -> dict[str, str | bytes] | None:
    obj = objects.config_map(namespace, ref["name"])
    if obj is None:
        if ref.get("optional"):
            return None
        raise PodConfigError(f"configmap {ref['name']!r} not found in namespace {namespace!r}")
    data: dict[str, str | bytes] = dict(obj.get("data") or {})
    data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return data


def _secret_data(objects: ClusterObjects, namespace: str, ref: dict) -> dict[str, bytes] | None:
    # configMapRef/KeyRef and secretVolumeSource name the object differently
    name = ref.get("name") or ref.get("secretName")
    obj = objects.secret(namespace, name)
    if obj is None:
        if ref.get("optional"):
            return None
        raise PodConfigError(f"secret {name!r} not found in namespace {namespace!r}")
    return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}


_SUBSCRIPT = re.compile(r"^(metadata\.(?:labels|annotations))\['(.+)'\]$")


def field_value(pod: dict, path: str, where: str) -> str:
    """A downward API fieldPath's value (env and downwardAPI volumes)."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    if m := _SUBSCRIPT.match(path):
        return (meta.get(m.group(1).split(".")[1]) or {}).get(m.group(2), "")
    if path in ("metadata.labels", "metadata.annotations"):  # whole maps: volumes only
        items = meta.get(path.split(".")[1]) or {}
        return "".join(f"{k}={json.dumps(v)}\n" for k, v in sorted(items.items()))
    simple = {
        "metadata.name": meta.get("name", ""), "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""), "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": status.get("hostIP", ""), "status.podIP": status.get("podIP", ""),
        "status.hostIPs": ",".join(i["ip"] for i in status.get("hostIPs") or []),
        "status.podIPs": ",".join(i["ip"] for i in status.get("podIPs") or []),
    }
    if path not in simple:
        raise PodConfigError(f"{where}: unsupported fieldPath {path!r}")
    return simple[path]


def resource_value(pod: dict, container_name: str, ref: dict, allocatable: dict[str, str], where: str) -> str:
    """A resourceFieldRef's value: rounded up in `divisor` units; an unset limit is the node's allocatable."""
    containers = [*(pod["spec"].get("initContainers") or []), *pod["spec"]["containers"]]
    container = next((c for c in containers if c["name"] == container_name), None)
    if container is None:
        raise PodConfigError(f"{where}: resourceFieldRef names no container {container_name!r}")
    kind, _, resource = ref["resource"].partition(".")
    if kind not in ("limits", "requests") or not resource:
        raise PodConfigError(f"{where}: unsupported resource {ref['resource']!r}")
    quantity = ((container.get("resources") or {}).get(kind) or {}).get(resource)
    if quantity is None:
        quantity = allocatable.get(resource, "0") if kind == "limits" else "0"
    # The API server stores an unset divisor as "0"; a kubelet reads zero as 1.
    divisor = parse_quantity(str(ref.get("divisor") or "1")) or Decimal(1)
    return str(math.ceil(Decimal(parse_quantity(str(quantity))) / Decimal(divisor)))


# -- volumes -----------------------------------------------------------------------------------

def materialise_volumes(pod: dict, pod_dir: Path, objects: ClusterObjects,
                        allocatable: dict[str, str]) -> dict[str, tuple[Path, bool]]:
    """Writes each volume under pod_dir/volumes/<name>; returns name -> (directory, always read-only).

    A volume already written (an earlier try that stopped at a missing object) is kept: emptyDirs
    keep their contents.
    """
    root = pod_dir / "volumes"
    root.mkdir(parents=True, exist_ok=True)
    volumes = {}
    for volume in pod["spec"].get("volumes") or []:
        name = volume["name"]
        kinds = [k for k in volume if k != "name"]
        kind = kinds[0] if len(kinds) == 1 else None
        target = root / name
        volumes[name] = (target, kind in _API_VOLUMES)
        if target.exists():
            continue
        if kind == "emptyDir":
            target.mkdir()
            continue
        if kind not in _API_VOLUMES:
            raise PodConfigError(f"volume {name!r}: {kind or kinds} volumes are not supported by the process kubelet")
        files = _volume_files(pod, volume[kind], kind, objects, allocatable, f"volume {name!r}")
        partial = root / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        for rel, (content, mode) in files.items():
            path = partial / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            path.chmod(mode)
        partial.mkdir(exist_ok=True)
        partial.rename(target)
    return volumes


def _volume_files(pod: dict, source: dict, kind: str, objects: ClusterObjects, allocatable: dict[str, str],
                  where: str) -> dict[str, tuple[bytes, int]]:
    """relative path -> (content, mode) for one API-backed volume source."""
    namespace = pod["metadata"]["namespace"]
    default_mode = source.get("defaultMode", DEFAULT_FILE_MODE)
    if kind == "projected":
        files: dict[str, tuple[bytes, int]] = {}
        for part in source.get("sources") or []:
            (part_kind, part_source), = part.items()
            if part_kind == "serviceAccountToken":
                token = objects.service_account_token(
                    pod, part_source.get("audience"), part_source.get("expirationSeconds", DEFAULT_TOKEN_SECONDS))
                files[part_source["path"]] = (token.encode(), default_mode)
                continue
            if part_kind not in ("configMap", "secret", "downwardAPI"):
                raise PodConfigError(f"{where}: projected source {part_kind!r} is not supported")
            files.update(_volume_files(pod, {"defaultMode": default_mode, **part_source}, part_kind, objects,
                                       allocatable, where))
        return files
    if kind == "downwardAPI":
        files = {}
        for item in source.get("items") or []:
            if "fieldRef" in item:
                value = field_value(pod, item["fieldRef"]["fieldPath"], where)
            else:
                ref = item["resourceFieldRef"]
                value = resource_value(pod, ref["containerName"], ref, allocatable, where)
            files[item["path"]] = (value.encode(), item.get("mode", default_mode))
        return files
    data = (_config_map_data(objects, namespace, source) if kind == "configMap"
            else _secret_data(objects, namespace, source))
    if data is None:  # optional and absent: an empty volume
        return {}
    as_bytes = {k: v if isinstance(v, bytes) else v.encode() for k, v in data.items()}
    items = source.get("items")
    if not items:
        return {k: (v, default_mode) for k, v in as_bytes.items()}
    files = {}
    for item in items:
        if item["key"] not in as_bytes:
            if source.get("optional"):
                continue
            raise PodConfigError(f"{where}: key {item['key']!r} not found in {kind} "
                                 f"{source.get('name') or source.get('secretName')!r}")
        files[item["path"]] = (as_bytes[item["key"]], item.get("mode", default_mode))
    return files


def container_mounts(container: dict, volumes: dict[str, tuple[Path, bool]], env: dict[str, str]) -> list[Mount]:
    """The container's volumeMounts as host sources (subPath and subPathExpr resolved) and targets."""
    mounts = []
    for m in container.get("volumeMounts") or []:
        if m["name"] not in volumes:
            raise PodConfigError(f"container {container['name']!r} mounts volume {m['name']!r}, which the pod lacks")
        source, api_backed = volumes[m["name"]]
        sub = m.get("subPath") or expand(m.get("subPathExpr", ""), env)
        if sub:
            if sub.startswith("/") or ".." in Path(sub).parts:
                raise PodConfigError(f"container {container['name']!r}: subPath {sub!r} leaves the volume")
            source = source / sub
            if not source.exists():
                source.mkdir(parents=True)  # as a kubelet does for a missing subPath
        mounts.append(Mount(source, m["mountPath"], bool(m.get("readOnly")) or api_backed))
    return mounts
