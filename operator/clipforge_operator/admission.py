"""The spec a started job is pinned to: the `<job>-config` ConfigMap the operator made, checked by hash.

The ConfigMap holds the manifest the pipeline runs (mounted into every attempt's head pod) and the
spec every retry's RayJob is built from. Anyone who may edit ConfigMaps in the namespace could change
it after the job was admitted, and a deleted one would be made again from the job's current spec.
So the operator records, when it makes the ConfigMap, a hash of everything in it that a started job
may not change (status.admittedSpecHash), and reads the ConfigMap back only while it still has that
hash. The fields a started job may change (update_rules.UPDATE_RULES: worker-group bounds, retries,
deadlines) are left out of the hash: the operator patches them into the ConfigMap itself, and every
RayJob takes them from the job's spec, never from the ConfigMap.

The hash is recorded in status, not in per-revision immutable ConfigMaps: the head pods of every
attempt mount the one ConfigMap by its name, and a scaling change patches it in place. The hash is
integrity, not authority: each RayJob is still built only from a spec the policy admits at that
moment (reconcile.py), so a status writer who presets the hash gets no more than the policy allows.

Nothing here talks to Kubernetes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import yaml
from pydantic import ValidationError

from clipforge.spec import VideoCurationJobSpec
from clipforge_operator.builders import JOB_FILE
from clipforge_operator.update_rules import UPDATE_RULES, Update, field_values

PIN_STATUS_FIELD = "admittedSpecHash"
_CHANGEABLE = (Update.rescale, Update.operator)  # patched by the operator or taken from the job's spec
MAX_PROBLEMS = 3


class SpecNotAdmitted(Exception):
    """The spec in or for the job's ConfigMap is not the one the job was admitted with: the job fails."""

    reason = "AdmittedSpecChanged"


class ConfigMapInvalid(SpecNotAdmitted):
    """The job's ConfigMap holds no manifest the operator can read (it never writes one like that)."""

    reason = "InvalidConfigMap"


def read_document(configmap: Mapping) -> tuple[dict, VideoCurationJobSpec]:
    """The manifest in a ConfigMap built by builders.build_configmap, and its spec; ConfigMapInvalid
    (naming the ConfigMap and what is wrong) for anything else."""
    name = (configmap.get("metadata") or {}).get("name", "")
    text = (configmap.get("data") or {}).get(JOB_FILE)
    if not isinstance(text, str):
        raise ConfigMapInvalid(f"ConfigMap {name} has no {JOB_FILE}")
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigMapInvalid(f"ConfigMap {name}: {JOB_FILE} is not YAML: {exc}".splitlines()[0]) from None
    if not isinstance(document, dict) or not isinstance(document.get("spec"), dict):
        raise ConfigMapInvalid(f"ConfigMap {name}: {JOB_FILE} is not a job manifest with a spec")
    try:
        spec = VideoCurationJobSpec.model_validate(document["spec"])
    except ValidationError as exc:
        problems = [f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        more = f" and {len(problems) - MAX_PROBLEMS} more" if len(problems) > MAX_PROBLEMS else ""
        raise ConfigMapInvalid(f"ConfigMap {name}: {JOB_FILE} is not a valid job:"
                               f" {'; '.join(problems[:MAX_PROBLEMS])}{more}") from None
    return document, spec


def spec_from_configmap(configmap: Mapping) -> VideoCurationJobSpec:
    """The spec a ConfigMap built by builders.build_configmap carries (the spec the job was admitted with)."""
    return read_document(configmap)[1]


def spec_hash(configmap: Mapping) -> str:
    """SHA-256 of what a started job may not change in its ConfigMap: the manifest but for the fields
    UPDATE_RULES lets change, and every other key of the ConfigMap (each a file beside the manifest)."""
    document, spec = read_document(configmap)
    fixed = {path: value for path, value in field_values(spec).items() if UPDATE_RULES.get(path) not in _CHANGEABLE}
    data = configmap.get("data") or {}
    pinned = {
        "manifest": {**{k: v for k, v in document.items() if k != "spec"}, "spec": fixed},
        "files": {k: v for k, v in data.items() if k != JOB_FILE},
        "binaryFiles": dict(configmap.get("binaryData") or {}),
    }
    return hashlib.sha256(json.dumps(pinned, sort_keys=True, default=str).encode()).hexdigest()


def admitted_configmap(configmap: Mapping | None, pinned: str | None,
                       fresh: Mapping) -> tuple[VideoCurationJobSpec | None, str | None]:
    """The spec a job's ConfigMap holds (None: there is none) and its hash, if it is the one the job was
    admitted with: its hash is `pinned` (status.admittedSpecHash) or, unrecorded (a crash between the
    ConfigMap's create and the status write), that of `fresh`, the ConfigMap the operator would make now
    from the job's spec. A ConfigMap that is gone is fine while `fresh` still has the pinned hash.
    SpecNotAdmitted (or ConfigMapInvalid) otherwise, naming the ConfigMap."""
    name = fresh["metadata"]["name"]
    if configmap is None:
        if pinned and spec_hash(fresh) != pinned:
            raise SpecNotAdmitted(f"ConfigMap {name}, which held the spec the job was admitted with, is gone, and the"
                                  " job's spec is no longer that one: nothing is built from it")
        return None, pinned
    _, accepted = read_document(configmap)
    found = spec_hash(configmap)
    if found != (pinned or spec_hash(fresh)):
        raise SpecNotAdmitted(f"ConfigMap {name} was changed after the job was admitted: it no longer holds the"
                              " spec the job started with, and nothing is built from it")
    return accepted, found
