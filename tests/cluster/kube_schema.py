"""Validate Kubernetes manifests against the CRDs in ``cluster/crds/`` without an API server.

A CRD's ``openAPIV3Schema`` is almost JSON Schema; what differs is translated here:

- ``x-kubernetes-int-or-string``: an integer or a string (newer CRDs also spell it as ``anyOf``).
- ``nullable: true``: null is allowed besides the type.
- Unknown fields: the API server *prunes* them silently (a misspelled ``entrypiont`` just vanishes),
  so here an object with ``properties`` and neither ``additionalProperties`` nor
  ``x-kubernetes-preserve-unknown-fields`` refuses extra keys: a typo fails the test instead.
- ``x-kubernetes-embedded-resource``: the object may carry ``apiVersion``, ``kind`` and ``metadata``.
- ``metadata`` (``type: object`` in every CRD) is checked as the API server does: a name of at
  most 253 characters of lowercase letters, digits, ``-`` and ``.``.
- ``x-kubernetes-validations`` (CEL rules) are not evaluated; ``format`` (``int32``, ``int64``) is
  informative for jsonschema. Both are left to the API server.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRDS = Path(__file__).resolve().parents[2] / "cluster" / "crds"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": DNS_SUBDOMAIN},
        "namespace": {"type": "string", "maxLength": 63, "pattern": DNS_SUBDOMAIN},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}


def to_json_schema(node: Any) -> Any:
    """A CRD's structural schema as strict JSON Schema (see the module docstring)."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: to_json_schema(value) for key, value in node.items() if key != "description"}
    if isinstance(node.get("properties"), dict):  # a field may be called "description": keep every name
        out["properties"] = {name: to_json_schema(value) for name, value in node["properties"].items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    preserve = out.pop("x-kubernetes-preserve-unknown-fields", False)
    embedded = out.pop("x-kubernetes-embedded-resource", False)
    if embedded:
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    for key in [k for k in out if k.startswith("x-kubernetes-")]:
        del out[key]
    return out


@functools.cache
def crd_schema(group: str, kind: str, version: str) -> dict[str, Any]:
    """The JSON Schema of ``kind`` in ``group/version``, from the CRD file that defines it."""
    for file in sorted(CRDS.glob(f"{group}_*.yaml")):
        crd = yaml.load(file.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1 MB files
        if crd["spec"]["names"]["kind"] != kind:
            continue
        for served in crd["spec"]["versions"]:
            if served["name"] == version and served["served"]:
                schema = to_json_schema(served["schema"]["openAPIV3Schema"])
                schema["properties"]["metadata"] = METADATA
                schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
                return schema  # type: ignore[no-any-return]
        raise AssertionError(f"{file.name} serves no version {version}")
    raise AssertionError(f"no CRD for {kind} in group {group} under {CRDS}")


def errors(manifest: dict[str, Any]) -> list[str]:
    """Every error, as ``path: message``, so a failing test shows them all."""
    group, _, version = manifest["apiVersion"].partition("/")
    schema = crd_schema(group, manifest["kind"], version)
    found = jsonschema.Draft7Validator(schema).iter_errors(manifest)
    return sorted(f"{'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}" for e in found)
