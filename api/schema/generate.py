#!/usr/bin/env python3
"""Writes api/schema/published.json: the structure of the `spec` of every kind Isthmus claims,
taken from the CRDs Istio and Maistra publish (field names, types, enums, maps and lists; no
descriptions). The validator uses it to tell a field of Istio's or Maistra's API that Isthmus
does not implement ("not supported by Isthmus") from a field no API has ("unknown field"), and
the field-coverage test walks every field in it.

Usage (regenerate when a newer Istio or Maistra API is to be covered):

    python3 api/schema/generate.py \
        --istio ISTIO_API/kubernetes/customresourcedefinitions.gen.yaml --istio-ref REF \
        --maistra MAISTRA_API/manifests --maistra-ref REF > api/schema/published.json
"""
import argparse
import json
import pathlib
import sys

import yaml

ISTIO_KINDS = {
    "networking.istio.io": ["ServiceEntry", "WorkloadEntry", "VirtualService", "DestinationRule", "Gateway"],
    "security.istio.io": ["PeerAuthentication", "AuthorizationPolicy", "RequestAuthentication"],
}
MAISTRA_KINDS = {
    "federation.maistra.io": ["ServiceMeshPeer", "ExportedServiceSet", "ImportedServiceSet"],
}
KEPT = ("type", "enum", "format", "x-kubernetes-int-or-string", "minimum", "maximum", "required")


def prune(node):
    """The schema without prose: what a value generator and a field lookup need."""
    out = {k: node[k] for k in KEPT if k in node}
    # Istio's durations are strings checked by a CEL rule: mark them, values must parse.
    if any("duration(self)" in r.get("rule", "") for r in node.get("x-kubernetes-validations", [])):
        out["duration"] = True
    if "properties" in node:
        out["properties"] = {name: prune(child) for name, child in sorted(node["properties"].items())}
    if "items" in node:
        out["items"] = prune(node["items"])
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        out["additionalProperties"] = prune(extra)
    elif extra is True or node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = {}
    return out


def spec_schemas(documents, wanted, version):
    found = {}
    for doc in documents:
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        group = doc["spec"]["group"]
        kind = doc["spec"]["names"]["kind"]
        if kind not in wanted.get(group, []):
            continue
        for v in doc["spec"]["versions"]:
            if v["name"] == version:
                spec = v["schema"]["openAPIV3Schema"]["properties"]["spec"]
                found[f"{group}/{kind}"] = prune(spec)
    return found


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--istio", required=True)
    parser.add_argument("--istio-ref", required=True)
    parser.add_argument("--maistra", required=True, help="maistra/api's manifests directory")
    parser.add_argument("--maistra-ref", required=True)
    args = parser.parse_args()

    kinds = spec_schemas(yaml.safe_load_all(open(args.istio)), ISTIO_KINDS, "v1")
    for path in sorted(pathlib.Path(args.maistra).glob("federation.maistra.io_*.yaml")):
        kinds.update(spec_schemas(yaml.safe_load_all(open(path)), MAISTRA_KINDS, "v1"))
    expected = {f"{g}/{k}" for g, ks in {**ISTIO_KINDS, **MAISTRA_KINDS}.items() for k in ks}
    missing = expected - kinds.keys()
    if missing:
        sys.exit(f"not found in the CRDs: {sorted(missing)}")
    json.dump(
        {
            "sources": {
                "istio": f"github.com/istio/api {args.istio_ref} kubernetes/customresourcedefinitions.gen.yaml (v1)",
                "maistra": f"github.com/maistra/api {args.maistra_ref} manifests/federation.maistra.io_*.yaml (v1)",
            },
            "kinds": dict(sorted(kinds.items())),
        },
        sys.stdout,
        indent=1,
        sort_keys=False,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
