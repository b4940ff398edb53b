#!/usr/bin/env python3
"""Checks rendered manifests (Helm renders, kustomize builds) for what ties the orchestrator to
the roles, which neither the chart's schema nor the Kubernetes schema can see:

- every ConfigMap key `registry.toml` parses as the registry ig-orchestrator reads
  (orchestrator/src/registry.rs: [[policy]], [[scorer]], [[critic]] entries with name,
  endpoints, default, description, for scorers role = "cost" | "reward", for critics
  objective = "augmented" | "reward" | "lagrangian"; unknown keys are errors; names unique per
  role; at most one default per role, and for critics per objective);
- every registry endpoint names a Service of the same rendered set, on one of its ports;
- a Deployment that runs ig-orchestrator mounts a registry ConfigMap and points IG_REGISTRY at
  `registry.toml` there;
- in every Deployment, the IG_LISTEN port, the `grpc` containerPort and the gRPC probes' port
  agree.

Usage: check_registry.py RENDERED.yaml...   (exit status 1 when a check fails)
"""

from __future__ import annotations

import os
import sys
import tomllib
from urllib.parse import urlsplit

import yaml

ENTRY_KEYS = {"name", "endpoints", "default", "description", "role", "objective"}
OBJECTIVES = ("augmented", "reward", "lagrangian")


def registry_problems(text: str) -> list[str]:
    """What the orchestrator would refuse in a registry file (mirrors registry.rs's parse)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return [f"not TOML: {e}"]
    problems = []
    unknown = set(doc) - {"policy", "scorer", "critic"}
    if unknown:
        problems.append(f"unknown sections: {', '.join(sorted(unknown))}")
    seen, defaults = set(), {}
    for section in ("policy", "scorer", "critic"):
        entries = doc.get(section, [])
        if not isinstance(entries, list):
            problems.append(f"{section}: must be an array of tables ([[{section}]])")
            continue
        for i, e in enumerate(entries):
            at = f"{section}[{i}]"
            extra = set(e) - ENTRY_KEYS
            if extra:
                problems.append(f"{at}: unknown keys {', '.join(sorted(extra))}")
            role = e.get("role")
            if section == "scorer":
                if role not in ("cost", "reward"):
                    problems.append(f'{at}.role: a scorer\'s role must be "cost" or "reward", got {role!r}')
            elif role not in (None, section):
                problems.append(f"{at}.role: only scorers take a role")
            role = role if section == "scorer" else section
            objective = e.get("objective")
            if section == "critic":
                if objective not in OBJECTIVES:
                    problems.append(f"{at}.objective: a critic needs one of {', '.join(OBJECTIVES)}, got {objective!r}")
            elif objective is not None:
                problems.append(f"{at}.objective: only critics take an objective")
            name = e.get("name")
            if not isinstance(name, str) or not name.strip():
                problems.append(f"{at}.name: must be a non-empty string")
            elif (role, name) in seen:
                problems.append(f"{at}.name: another {role} model is named {name!r}")
            seen.add((role, name))
            if not isinstance(e.get("default", False), bool):
                problems.append(f"{at}.default: must be true or false")
            elif e.get("default"):
                group = f"{objective} critic" if section == "critic" else role
                defaults.setdefault(group, []).append(name)
            if not isinstance(e.get("description", ""), str):
                problems.append(f"{at}.description: must be a string")
            endpoints = e.get("endpoints")
            if not isinstance(endpoints, list) or not endpoints:
                problems.append(f"{at}.endpoints: at least one endpoint is required")
                continue
            for j, ep in enumerate(endpoints):
                u = urlsplit(ep) if isinstance(ep, str) else None
                if u is not None and u.scheme == "https":
                    # As the orchestrator: refused rather than dialled in cleartext.
                    problems.append(f"{at}.endpoints[{j}]: {ep!r}: TLS to roles is not supported yet; use an http:// endpoint")
                elif u is None or u.scheme != "http" or not u.hostname:
                    problems.append(f"{at}.endpoints[{j}]: {ep!r} is not an http:// URL")
    for role, names in defaults.items():
        if len(names) > 1:
            problems.append(f"{role} models {', '.join(names)} are all marked default; mark one")
    return problems


def endpoints(text: str):
    doc = tomllib.loads(text)
    for section in ("policy", "scorer", "critic"):
        for e in doc.get(section, []):
            for ep in e.get("endpoints", []):
                yield e.get("name"), ep


def env_value(container: dict, name: str):
    for e in container.get("env") or []:
        if e.get("name") == name:
            return e.get("value")
    return None


def check_file(path: str) -> list[str]:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]
    problems = []
    services = {}
    for d in docs:
        if d.get("kind") == "Service":
            ports = {p.get("port") for p in d["spec"].get("ports", [])}
            services[d["metadata"]["name"]] = (d["metadata"].get("namespace"), ports)
    registries = {}
    for d in docs:
        if d.get("kind") == "ConfigMap" and "registry.toml" in (d.get("data") or {}):
            name = d["metadata"]["name"]
            text = d["data"]["registry.toml"]
            registries[name] = text
            found = registry_problems(text)
            problems += [f"ConfigMap {name}, registry.toml: {p}" for p in found]
            if found:
                continue
            for model, ep in endpoints(text):
                u = urlsplit(ep)
                labels = u.hostname.split(".")
                svc = services.get(labels[0])
                if svc is None:
                    problems.append(f"ConfigMap {name}: {model!r} endpoint {ep}: no Service {labels[0]} is rendered")
                    continue
                if len(labels) > 1 and svc[0] and labels[1] != svc[0]:
                    problems.append(f"ConfigMap {name}: {model!r} endpoint {ep}: Service {labels[0]} is in namespace {svc[0]}")
                if (u.port or (443 if u.scheme == "https" else 80)) not in svc[1]:
                    problems.append(f"ConfigMap {name}: {model!r} endpoint {ep}: Service {labels[0]} has ports {sorted(svc[1])}")
    for d in docs:
        if d.get("kind") != "Deployment":
            continue
        name = d["metadata"]["name"]
        spec = d["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for c in spec.get("containers", []):
            grpc = [p["containerPort"] for p in c.get("ports") or [] if p.get("name") == "grpc"]
            listen = env_value(c, "IG_LISTEN")
            if grpc and listen and not listen.endswith(f":{grpc[0]}"):
                problems.append(f"Deployment {name}: IG_LISTEN={listen} but the grpc containerPort is {grpc[0]}")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = ((c.get(probe) or {}).get("grpc") or {}).get("port")
                if grpc and port is not None and port != grpc[0]:
                    problems.append(f"Deployment {name}: {probe} checks port {port}, the grpc containerPort is {grpc[0]}")
            mounted = False
            for m in c.get("volumeMounts") or []:
                cm = (volumes.get(m["name"]) or {}).get("configMap", {}).get("name")
                if cm in registries:
                    mounted = True
                    want = os.path.join(m["mountPath"], "registry.toml")
                    if env_value(c, "IG_REGISTRY") != want:
                        problems.append(f"Deployment {name}: mounts registry {cm} at {m['mountPath']} but IG_REGISTRY is {env_value(c, 'IG_REGISTRY')!r}, not {want!r}")
            if (c.get("command") or [None])[0] == "ig-orchestrator" and not mounted:
                problems.append(f"Deployment {name}: runs ig-orchestrator without a registry.toml ConfigMap mounted")
    return problems


def main() -> int:
    failed = False
    checked = 0
    for path in sys.argv[1:]:
        problems = check_file(path)
        checked += 1
        for p in problems:
            print(f"{os.path.basename(path)}: {p}")
        failed |= bool(problems)
    print(f"check_registry.py: {checked} rendered sets, {'problems found' if failed else 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
