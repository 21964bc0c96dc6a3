"""Generates the VideoCurationJob CustomResourceDefinition from the pydantic models.

`python -m clipforge_operator.crd > crds/videocurationjobs.yaml` (or `clipforge-crd`) writes it;
the chart carries a copy in charts/clipforge-operator/files/, which its templates/crd.yaml installs
and upgrades (Helm never upgrades a CRD under a chart's crds/). Tests regenerate and compare.

Kubernetes wants a *structural* OpenAPI v3 schema, which is narrower than the JSON Schema
pydantic emits: no `$ref` (everything inline), `nullable: true` instead of `anyOf [X, null]`,
draft-4 style boolean `exclusiveMinimum`, no `title`, and a description on every field so that
`kubectl explain videocurationjob.spec...` documents the manifest.
"""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Any

import yaml
from pydantic import BaseModel

from clipforge.spec import API_GROUP, API_VERSION, KIND, PLURAL, VideoCurationJobSpec, VideoCurationJobStatus

SHORT_NAMES = ["vcj"]
CRD_NAME = f"{PLURAL}.{API_GROUP}"
GENERATE_COMMAND = "python -m clipforge_operator.crd > crds/videocurationjobs.yaml"
HEADER = (
    "# Generated from clipforge.spec by `python -m clipforge_operator.crd`; do not edit by hand.\n"
    "# A copy lives in charts/clipforge-operator/files/ (tests keep the two identical).\n"
)

# Keys of pydantic's JSON Schema that a structural schema keeps as they are.
_KEPT = {
    "type", "description", "enum", "format", "pattern", "minimum", "maximum", "minLength", "maxLength",
    "minItems", "maxItems", "uniqueItems", "multipleOf", "required", "default", "nullable",
    "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
    "oneOf",  # of `required` lists only (one of two fields): value validation, allowed in structural schemas
}
# Keys dropped on purpose: documentation-only or not allowed in structural schemas.
_DROPPED = {"title", "examples", "discriminator"}


class SchemaError(ValueError):
    """The models use a construct the CRD cannot express; the message names the field."""


def _is_null(node: dict) -> bool:
    return node.get("type") == "null"


def _convert(node: dict, defs: dict, where: str) -> dict:
    node = dict(node)
    out: dict[str, Any] = {}

    # $ref (pydantic puts description/default beside it) and single-item allOf: inline the target.
    target = None
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
    elif "allOf" in node and len(node["allOf"]) == 1:
        target = node.pop("allOf")[0]
    if target is not None:
        out.update(_convert(target, defs, where))

    if "anyOf" in node:
        options = node.pop("anyOf")
        non_null = [o for o in options if not _is_null(o)]
        if len(non_null) < len(options):
            out["nullable"] = True
        if len(non_null) == 1:
            inner = _convert(non_null[0], defs, where)
            inner.pop("nullable", None)
            out.update(inner)
        elif node.get("x-kubernetes-int-or-string"):
            out["anyOf"] = [{"type": o["type"]} for o in non_null]
        else:
            raise SchemaError(f"{where}: a union of several types cannot be expressed in a structural schema")

    if "const" in node:
        out["enum"] = [node.pop("const")]

    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node:
            out[limit] = node.pop(bound)
            out[bound] = True

    if "properties" in node:
        out["type"] = "object"
        out["properties"] = {
            name: _convert(prop, defs, f"{where}.{name}") for name, prop in node.pop("properties").items()
        }
        for name, prop in out["properties"].items():
            if not prop.get("description"):
                raise SchemaError(f"{where}.{name}: every field needs a description (kubectl explain shows it)")
        extra = node.pop("additionalProperties", None)
        if isinstance(extra, dict):
            raise SchemaError(f"{where}: properties and additionalProperties together are not structural")
    elif isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = _convert(node.pop("additionalProperties"), defs, f"{where}.*")
    node.pop("additionalProperties", None)  # `false`: Kubernetes prunes (and kubectl rejects) unknown fields

    if "items" in node:
        out["items"] = _convert(node.pop("items"), defs, f"{where}[]")

    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key not in _KEPT:
            raise SchemaError(f"{where}: JSON Schema keyword {key!r} has no place in a structural schema")
        if key == "default" and value is None:
            continue  # null defaults mean "unset": leave the field out
        if key == "required" and not value:
            continue
        out[key] = copy.deepcopy(value)

    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return {k: out[k] for k in sorted(out, key=_key_rank)}


# The order keys appear in the generated YAML: what a reader wants first, nested schemas last.
_ORDER = [
    "type", "description", "nullable", "format", "enum", "default", "minimum", "exclusiveMinimum", "maximum",
    "exclusiveMaximum", "multipleOf", "minLength", "maxLength", "pattern", "minItems", "maxItems", "uniqueItems",
    "x-kubernetes-int-or-string", "anyOf", "x-kubernetes-preserve-unknown-fields", "required", "oneOf", "items",
    "additionalProperties", "properties",
]


def _key_rank(key: str) -> int:
    return _ORDER.index(key) if key in _ORDER else len(_ORDER)


def structural_schema(model: type[BaseModel], description: str) -> dict:
    """The model's JSON Schema (by alias) as a Kubernetes structural schema."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema = _convert(raw, defs, model.__name__)
    schema["description"] = description
    return schema


def openapi_schema() -> dict:
    return {
        "type": "object",
        "description": "A video curation job: raw videos in, a training-ready clip dataset out.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion: clipforge.dev/v1alpha1."},
            "kind": {"type": "string", "description": "Kind: VideoCurationJob."},
            "metadata": {"type": "object"},
            "spec": structural_schema(
                VideoCurationJobSpec, "What to curate, how, and on what Ray cluster (set by the user)."
            ),
            "status": structural_schema(VideoCurationJobStatus, "Observed state (written by the operator)."),
        },
    }


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Job phase."},
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "description": "Why the job is in its phase."},
    {"name": "Done", "type": "integer", "jsonPath": ".status.progress.videosDone", "description": "Videos done."},
    {"name": "Total", "type": "integer", "jsonPath": ".status.progress.videosTotal", "description": "Videos in the job."},
    {"name": "Clips", "type": "integer", "jsonPath": ".status.progress.clipsPassed", "description": "Clips written."},
    {"name": "Failed", "type": "integer", "jsonPath": ".status.progress.videosFailed",
     "description": "Videos that failed.", "priority": 1},
    {"name": "Retries", "type": "integer", "jsonPath": ".status.retries", "description": "Retries so far.",
     "priority": 1},
    {"name": "RayJob", "type": "string", "jsonPath": ".status.rayJobName", "description": "Current RayJob.",
     "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd() -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        # Kept when the chart's release is uninstalled: deleting the CRD would delete every job.
        "metadata": {"name": CRD_NAME, "labels": {"app.kubernetes.io/part-of": "clipforge"},
                     "annotations": {"helm.sh/resource-policy": "keep"}},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": SHORT_NAMES,
                "categories": ["clipforge"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


def render() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=120, allow_unicode=True)


def to_jsonschema(schema: dict) -> dict:
    """A Kubernetes structural schema as plain draft-4 JSON Schema, for offline validation.

    Kubernetes' `nullable: true` becomes a null type (or a null enum member / anyOf branch).
    """
    node = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if "properties" in node:
        node["properties"] = {k: to_jsonschema(v) for k, v in node["properties"].items()}
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = to_jsonschema(node["additionalProperties"])
    elif "properties" in node and not schema.get("x-kubernetes-preserve-unknown-fields"):
        node["additionalProperties"] = False  # what kubectl's strict field validation enforces
    if "items" in node:
        node["items"] = to_jsonschema(node["items"])
    if node.pop("nullable", False):
        if "anyOf" in node:
            node["anyOf"] = [*node["anyOf"], {"type": "null"}]
        elif "type" in node:
            node["type"] = [node["type"], "null"]
        if "enum" in node:
            node["enum"] = [*node["enum"], None]
    return node


def validator():
    """A jsonschema validator for whole VideoCurationJob manifests, built from the CRD schema."""
    import jsonschema

    schema = to_jsonschema(openapi_schema())
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft4Validator(schema)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipforge-crd", description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", action="append", default=[],
                        help="write to this file (repeatable); default: stdout")
    parser.add_argument("--check", action="append", default=[],
                        help="exit 1 if this file differs from what would be generated (repeatable)")
    args = parser.parse_args(argv)
    text = render()
    stale = []
    for path in args.check:
        try:
            with open(path, encoding="utf-8") as fh:
                if fh.read() != text:
                    stale.append(path)
        except FileNotFoundError:
            stale.append(path)
    if stale:
        print(f"out of date: {', '.join(stale)}; regenerate with: {GENERATE_COMMAND}", file=sys.stderr)
        return 1
    for path in args.output:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    if not args.output and not args.check:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
