#!/usr/bin/env python3
"""Checks the generated CRDs and validates example resources against their schemas.

1. Each CRD's openAPIV3Schema is structural, as the Kubernetes API server requires: every node
   has a type (unless it preserves unknown fields), and oneOf/anyOf/allOf/not branches carry no
   type, default, description or nullable of their own.
2. Every document of every YAML file given (the examples) validates against the schema of the
   CRD for its apiVersion and kind (JSON Schema, with OpenAPI's `nullable` honoured).
3. A document with a wrong field type fails, so a passing run means the schemas were applied.

Usage: validate.py CRD_DIR YAML_FILE...
"""
import copy
import pathlib
import sys

import jsonschema
import yaml

JUNCTORS = ("oneOf", "anyOf", "allOf", "not")
FORBIDDEN_IN_JUNCTORS = ("type", "default", "description", "nullable", "additionalProperties")


def structural_errors(node, path, inside_junctor=False):
    errors = []
    if not isinstance(node, dict):
        return errors
    preserve = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
    if inside_junctor:
        for key in FORBIDDEN_IN_JUNCTORS:
            if key in node:
                errors.append(f"{path}: {key} inside a oneOf/anyOf/allOf/not branch")
    elif not preserve and "type" not in node:
        errors.append(f"{path}: no type")
    for name, child in node.get("properties", {}).items():
        errors += structural_errors(child, f"{path}.{name}", inside_junctor)
    if isinstance(node.get("items"), dict):
        errors += structural_errors(node["items"], f"{path}[]", inside_junctor)
    if isinstance(node.get("additionalProperties"), dict):
        errors += structural_errors(node["additionalProperties"], f"{path}{{}}", inside_junctor)
    for junctor in JUNCTORS:
        branches = node.get(junctor)
        if isinstance(branches, dict):
            branches = [branches]
        for i, branch in enumerate(branches or []):
            errors += structural_errors(branch, f"{path}.{junctor}[{i}]", True)
    return errors


def with_nullable(node):
    """OpenAPI's nullable as JSON Schema: a nullable node also accepts null."""
    if isinstance(node, dict):
        node = {k: with_nullable(v) for k, v in node.items()}
        if node.pop("nullable", False) and "type" in node:
            node["type"] = [node["type"], "null"]
        return node
    if isinstance(node, list):
        return [with_nullable(v) for v in node]
    return node


def main():
    crd_dir, files = pathlib.Path(sys.argv[1]), sys.argv[2:]
    schemas, problems = {}, []
    for path in sorted(crd_dir.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = version["schema"]["openAPIV3Schema"]
            problems += [f"{path.name}: {e}" for e in structural_errors(schema, kind)]
            schemas[(f"{group}/{version['name']}", kind)] = with_nullable(schema)
    print(f"{len(schemas)} CRD schemas checked for structure")

    validated = 0
    for file in files:
        for i, doc in enumerate(yaml.safe_load_all(pathlib.Path(file).read_text())):
            if not doc:
                continue
            schema = schemas.get((doc.get("apiVersion"), doc.get("kind")))
            if schema is None:
                problems.append(f"{file} document {i + 1}: no CRD for {doc.get('apiVersion')} {doc.get('kind')}")
                continue
            for error in jsonschema.Draft7Validator(schema).iter_errors(doc):
                where = ".".join(str(p) for p in error.absolute_path)
                problems.append(f"{file} document {i + 1}: {where}: {error.message}")
            validated += 1
    print(f"{validated} example documents validated")

    # The validator must be able to fail: a port number that is not a number.
    bad = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "x"},
           "spec": {"hosts": ["x.local"], "ports": [{"number": "eighty", "name": "http"}]}}
    if not list(jsonschema.Draft7Validator(schemas[("networking.istio.io/v1", "ServiceEntry")]).iter_errors(copy.deepcopy(bad))):
        problems.append("a ServiceEntry with a non-numeric port number passed validation")

    for problem in problems:
        print("FAIL", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
