#!/usr/bin/env python3
"""Validate rendered Kubernetes manifests against one Kubernetes version's schemas, strictly.

  validate_manifests.py VERSION FILE...

Every object of every file (multi-document YAML, as `kubectl kustomize` prints it) must match the
schema of its kind and apiVersion in kubernetes-validate's strict schemas (unknown fields are errors).
An object whose schema is unknown (a misspelt apiVersion, a CRD), or any warning raised while
validating, fails the run too: the command-line tool only prints WARN for those and exits 0.
Needs kubernetes-validate (and PyYAML, its dependency).
"""
import sys
import warnings

import kubernetes_validate
import yaml


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    version, files = argv[1], argv[2:]
    warnings.simplefilter("error")
    failures, count = [], 0
    for path in files:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            count += 1
            what = f"{path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')} ({doc.get('apiVersion')})"
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                where = ".".join(str(p) for p in e.path) or "(top level)"
                failures.append(f"{what}: {where}: {e.message}")
            except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
                failures.append(f"{what}: {e.message}")
            except Warning as w:
                failures.append(f"{what}: warning: {w}")
    for line in failures:
        print(f"error: {line}", file=sys.stderr)
    if failures:
        sys.exit(f"{len(failures)} of {count} objects failed validation against Kubernetes {version}")
    print(f"{count} objects valid against Kubernetes {version} (strict)", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv)
