#!/usr/bin/env python3
"""Checks rendered manifests (Helm renders, kustomize builds) for what ties the orchestrator to
the roles, which neither the chart's schema nor the Kubernetes schema can see:

- every ConfigMap key `registry.toml` parses as the registry ig-orchestrator reads
  (orchestrator/src/registry.rs: [[policy]], [[scorer]], [[critic]] entries with name,
  endpoints, default, description, for scorers role = "cost" | "reward", for critics
  objective = "augmented" | "reward" | "lagrangian"; unknown keys are errors; names unique per
  role; at most one default per role, and for critics per objective);
- every registry endpoint names a Service of the same rendered set, on one of its ports;
- `https://` endpoints only in a registry whose orchestrator verifies the roles (IG_TLS_CA, a
  file of a mounted Secret), and then no `http://` endpoint (it would be dialled in cleartext);
- a Deployment that runs ig-orchestrator mounts a registry ConfigMap and points IG_REGISTRY at
  `registry.toml` there;
- in every Deployment, the IG_LISTEN port, the `grpc` containerPort and the probes' port agree;
  a container serving TLS (IG_TLS_CERT) has no `grpc:` probe of its TLS port, which the kubelet
  sends in plaintext, only of its plaintext health port (IG_HEALTH_LISTEN, containerPort
  `health`); the TLS and token files (IG_TLS_*, IG_AUTH_TOKENS_FILE) lie in mounted Secrets,
  and the certificate and key variables come in pairs;
- NetworkPolicies that select a role's pods admit the orchestrator's pods on its gRPC port;
- every namespaced object of a rendered set is in one namespace (a component's object without
  one would land in another namespace than the registry's relative names resolve in).

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


def registry_problems(text: str, tls: bool = False) -> list[str]:
    """What the orchestrator would refuse in a registry file (mirrors registry.rs's parse).
    `tls`: the orchestrators that read it verify the roles' certificates (IG_TLS_CA)."""
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
                if u is None or u.scheme not in ("http", "https") or not u.hostname:
                    problems.append(f"{at}.endpoints[{j}]: {ep!r} is not an http:// or https:// URL")
                elif u.scheme == "https" and not tls:
                    # As the orchestrator: refused rather than dialled without verification.
                    problems.append(f"{at}.endpoints[{j}]: {ep!r}: https:// needs the orchestrator to verify the roles "
                                    "(IG_TLS_CA, a CA file from a mounted Secret); none that mounts this registry does")
                elif u.scheme == "http" and tls:
                    problems.append(f"{at}.endpoints[{j}]: {ep!r}: the orchestrator is set up for TLS (IG_TLS_CA) but this "
                                    "endpoint would be dialled in cleartext; use https://")
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


# Variables naming files the roles read: TLS material and the orchestrator's tokens.
FILE_VARS = ("IG_TLS_CERT", "IG_TLS_KEY", "IG_TLS_CLIENT_CA", "IG_TLS_CA", "IG_TLS_CLIENT_CERT",
             "IG_TLS_CLIENT_KEY", "IG_AUTH_TOKENS_FILE")
PAIRS = (("IG_TLS_CERT", "IG_TLS_KEY"), ("IG_TLS_CLIENT_CERT", "IG_TLS_CLIENT_KEY"))
# Kinds without a namespace (none of them is rendered today but a Namespace).
CLUSTER_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "ClusterIssuer", "CustomResourceDefinition",
                 "PriorityClass", "RuntimeClass", "StorageClass", "PersistentVolume"}


def secret_file(container: dict, volumes: dict, file: str):
    """Why `file` is not a file of a Secret mounted into `container`, or None when it is."""
    for m in container.get("volumeMounts") or []:
        mount = m["mountPath"].rstrip("/")
        if not file.startswith(mount + "/"):
            continue
        rel = file[len(mount) + 1:]
        if m.get("subPath"):
            return f"{file} is under a subPath mount ({m['name']}), which the kubelet never updates"
        v = volumes.get(m["name"]) or {}
        if "secret" in v:
            items = v["secret"].get("items")
            if items is not None and rel not in {i.get("path") for i in items}:
                return f"{file}: Secret volume {m['name']} maps no key to {rel}"
            return None
        if "projected" in v and any("secret" in s for s in v["projected"].get("sources") or []):
            return None
        return f"{file} is in volume {m['name']}, which is not a Secret"
    return f"{file} is in no mounted volume"


def selects(selector: dict | None, labels: dict) -> bool:
    """Whether a label selector (matchLabels, matchExpressions) selects these labels."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def admits(policy: dict, peer_labels: dict, port: int, port_name: str) -> bool:
    """Whether a NetworkPolicy admits a pod with `peer_labels` of the same namespace on a port
    (given by number and name). Peers by ipBlock, or by a namespaceSelector other than `{}`,
    cannot be judged from a render and admit nothing here."""
    for rule in policy["spec"].get("ingress") or []:
        ports = rule.get("ports")
        if ports and not any(p.get("port") in (port, port_name, None) for p in ports):
            continue
        peers = rule.get("from")
        if not peers:
            return True
        for peer in peers:
            if "ipBlock" in peer:
                continue
            if "namespaceSelector" in peer and peer["namespaceSelector"] not in ({}, None):
                continue
            if selects(peer.get("podSelector"), peer_labels):
                return True
    return False


def check_file(path: str) -> list[str]:
    with open(path) as f:
        docs = [d for d in yaml.load_all(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if isinstance(d, dict)]
    problems = []
    namespaces = {}
    for d in docs:
        if d.get("kind") not in CLUSTER_KINDS:
            namespaces.setdefault(d["metadata"].get("namespace"), []).append(f"{d.get('kind')} {d['metadata']['name']}")
    if len(namespaces) > 1:
        where = "; ".join(f"{ns or '(none)'}: {', '.join(objs[:3])}{', ...' if len(objs) > 3 else ''}"
                          for ns, objs in sorted(namespaces.items(), key=lambda kv: kv[0] or ""))
        problems.append(f"objects in {len(namespaces)} namespaces ({where}); set one namespace for all of them")
    deployments = [d for d in docs if d.get("kind") == "Deployment"]
    # Per registry ConfigMap: the containers that mount it, and whether each verifies the roles.
    registry_tls = {}
    for d in deployments:
        spec = d["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for c in spec.get("containers", []):
            for m in c.get("volumeMounts") or []:
                cm = (volumes.get(m["name"]) or {}).get("configMap", {}).get("name")
                if cm is not None:
                    ca = env_value(c, "IG_TLS_CA")
                    registry_tls.setdefault(cm, []).append(bool(ca) and secret_file(c, volumes, ca) is None)
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
            tls = registry_tls.get(name, [])
            if tls and any(tls) and not all(tls):
                problems.append(f"ConfigMap {name}: some orchestrators that mount it verify the roles (IG_TLS_CA), some do not")
            found = registry_problems(text, tls=bool(tls) and all(tls))
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
            health = [p["containerPort"] for p in c.get("ports") or [] if p.get("name") == "health"]
            health_listen = env_value(c, "IG_HEALTH_LISTEN")
            if health_listen and not (health and health_listen.endswith(f":{health[0]}")):
                problems.append(f"Deployment {name}: IG_HEALTH_LISTEN={health_listen} but no containerPort named health has its port")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                p = c.get(probe) or {}
                port = (p.get("grpc") or p.get("tcpSocket") or {}).get("port")
                if "grpc" in p and env_value(c, "IG_TLS_CERT"):
                    # The kubelet sends grpc: probes in plaintext: under TLS only the plaintext
                    # health port (IG_HEALTH_LISTEN) can answer them.
                    if not (health_listen and health and port in (health[0], "health")):
                        problems.append(f"Deployment {name}: {probe} is a grpc: probe of port {port}, which the kubelet sends in "
                                        "plaintext, but the container serves TLS (IG_TLS_CERT); probe its plaintext health port "
                                        "(IG_HEALTH_LISTEN, containerPort health) or use tcpSocket")
                elif grpc and port is not None and port not in (grpc[0], "grpc"):
                    problems.append(f"Deployment {name}: {probe} checks port {port}, the grpc containerPort is {grpc[0]}")
            for var in FILE_VARS:
                file = env_value(c, var)
                if file:
                    why = secret_file(c, volumes, file)
                    if why:
                        problems.append(f"Deployment {name}: {var}: {why}")
            for a, b in PAIRS:
                if bool(env_value(c, a)) != bool(env_value(c, b)):
                    problems.append(f"Deployment {name}: {a} and {b} go together; only one is set")
            if env_value(c, "IG_TLS_CLIENT_CA") and not env_value(c, "IG_TLS_CERT"):
                problems.append(f"Deployment {name}: IG_TLS_CLIENT_CA (mTLS) without IG_TLS_CERT (TLS)")
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
    problems += network_policy_problems(docs, registries)
    return problems


def network_policy_problems(docs: list, registries: dict) -> list[str]:
    """Each role a registry names must admit, through every NetworkPolicy that selects its pods,
    the pods of the orchestrators that mount that registry, on the role's gRPC port."""
    policies = [d for d in docs if d.get("kind") == "NetworkPolicy"]
    if not policies:
        return []
    problems = []
    deployments = [d for d in docs if d.get("kind") == "Deployment"]
    services = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "Service"}
    for reg_name, text in registries.items():
        clients = []
        for d in deployments:
            spec = d["spec"]["template"]["spec"]
            cms = {v["name"]: v["configMap"].get("name") for v in spec.get("volumes") or [] if "configMap" in v}
            if any(cms.get(m["name"]) == reg_name for c in spec.get("containers", []) for m in c.get("volumeMounts") or []):
                clients.append((d["metadata"]["name"], d["spec"]["template"]["metadata"].get("labels") or {}))
        for model, ep in endpoints(text):
            svc = services.get(urlsplit(ep).hostname.split(".")[0])
            if svc is None or not svc["spec"].get("selector"):
                continue
            for d in deployments:
                pod_labels = d["spec"]["template"]["metadata"].get("labels") or {}
                if not all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items()):
                    continue
                container = d["spec"]["template"]["spec"]["containers"][0]
                grpc = [p["containerPort"] for p in container.get("ports") or [] if p.get("name") == "grpc"]
                port = grpc[0] if grpc else urlsplit(ep).port
                selecting = [p for p in policies if selects(p["spec"].get("podSelector"), pod_labels)
                             and "Ingress" in (p["spec"].get("policyTypes") or ["Ingress"])]
                for client, client_labels in clients:
                    if selecting and not any(admits(p, client_labels, port, "grpc") for p in selecting):
                        names = ", ".join(p["metadata"]["name"] for p in selecting)
                        problems.append(f"NetworkPolicy {names}: selects the pods of Deployment {d['metadata']['name']} "
                                        f"({model!r} in {reg_name}) but admits none of {client}'s pods on port {port}")
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
