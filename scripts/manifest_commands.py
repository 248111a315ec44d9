#!/usr/bin/env python3
"""What the Kubernetes manifests run, as JSON, for tests/it/deploy.rs.

  manifest_commands.py [KUSTOMIZATION...]    (default: deploy/k8s/base and every overlay)

Renders each kustomization with `kubectl kustomize` ($DISTILL_KUBECTL, default kubectl), parses the
YAML with PyYAML and prints one JSON object:
  containers: one per container of every Deployment, Job, StatefulSet, DaemonSet and Pod: its
              kustomization, workload kind and name, pod labels, image, command, args, env (name ->
              value, with ConfigMap envFrom keys and configMapKeyRef values resolved; null for values
              from Secrets or the downward API), ports (name, containerPort) and probes (which, type,
              port, path);
  services:   name, selector and ports (name, port, targetPort) of every Service;
  external_metrics: the External metric names of every HorizontalPodAutoscaler.
"""
import json
import os
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = ["deploy/k8s/base", "deploy/k8s/overlays/local", "deploy/k8s/overlays/gpu"]
WORKLOADS = {"Deployment", "Job", "StatefulSet", "DaemonSet", "Pod", "CronJob"}


def render(kustomization):
    kubectl = os.environ.get("DISTILL_KUBECTL", "kubectl")
    out = subprocess.run([kubectl, "kustomize", os.path.join(ROOT, kustomization)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"kubectl kustomize {kustomization} failed: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def pod_spec(obj):
    kind = obj["kind"]
    if kind == "Pod":
        return obj.get("metadata", {}), obj["spec"]
    if kind == "CronJob":
        tpl = obj["spec"]["jobTemplate"]["spec"]["template"]
    else:
        tpl = obj["spec"]["template"]
    return tpl.get("metadata", {}), tpl["spec"]


def container_env(c, configmaps):
    env = {}
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            data = configmaps.get(src["configMapRef"]["name"])
            if data is None:
                sys.exit(f"container {c['name']}: envFrom names ConfigMap {src['configMapRef']['name']}, "
                         "which the kustomization does not define")
            prefix = src.get("prefix", "")
            env.update({prefix + k: v for k, v in data.items()})
        elif "secretRef" in src:
            # Secret keys are not known from the manifests; mark the source only.
            env[f"<secret {src['secretRef']['name']}>"] = None
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "configMapKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["configMapKeyRef"]
            env[e["name"]] = configmaps.get(ref["name"], {}).get(ref["key"])
        else:
            env[e["name"]] = None
    return env


def probes(c):
    out = []
    for which in ("livenessProbe", "readinessProbe", "startupProbe"):
        p = c.get(which)
        if not p:
            continue
        for kind in ("grpc", "httpGet", "tcpSocket", "exec"):
            if kind in p:
                spec = p[kind]
                out.append({"which": which.removesuffix("Probe"), "type": kind,
                            "port": spec.get("port"), "path": spec.get("path")})
    return out


def main(kustomizations):
    result = {"containers": [], "services": [], "external_metrics": []}
    for k in kustomizations:
        objs = render(k)
        configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in objs if o["kind"] == "ConfigMap"}
        for o in objs:
            name = o["metadata"]["name"]
            if o["kind"] in WORKLOADS:
                meta, spec = pod_spec(o)
                for c in spec.get("initContainers", []) + spec.get("containers", []):
                    result["containers"].append({
                        "kustomization": k, "kind": o["kind"], "workload": name,
                        "labels": meta.get("labels", {}), "container": c["name"],
                        "image": c.get("image"), "command": c.get("command", []),
                        "args": [str(a) for a in c.get("args", [])],
                        "env": container_env(c, configmaps),
                        "ports": [{"name": p.get("name"), "containerPort": p["containerPort"]}
                                  for p in c.get("ports", [])],
                        "probes": probes(c),
                    })
            elif o["kind"] == "Service":
                result["services"].append({
                    "kustomization": k, "name": name, "selector": o["spec"].get("selector", {}),
                    "ports": [{"name": p.get("name"), "port": p["port"],
                               "targetPort": p.get("targetPort", p["port"])} for p in o["spec"]["ports"]],
                })
            elif o["kind"] == "HorizontalPodAutoscaler":
                for m in o["spec"].get("metrics", []):
                    if m["type"] == "External":
                        result["external_metrics"].append(m["external"]["metric"]["name"])
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT)
