#!/usr/bin/env python3
"""Checks rendered manifests (Helm renders, kustomize builds) for what Kubernetes' schemas cannot
see, set by set (one file is one set: what one `helm template` or `kubectl kustomize` printed):

namespace      every namespaced object is in the set's intended namespace, and cluster-scoped
               objects carry none. The intended namespace is the file's `namespace=` directive
               (`-`: no object may carry one, as in k8s/base), else that of the set's one
               Namespace object (an overlay's, which enforces Pod Security).
references     what objects name exists in the set: HPA targets (with a CPU request, for a CPU
               utilisation target), PDB, Service, NetworkPolicy, ServiceMonitor and workload
               selectors select pods (or Services) of the set, a Service's named targetPorts are
               ports of its pods, ConfigMaps (and their keys), Secrets, ServiceAccounts,
               PersistentVolumeClaims and cert-manager issuers a pod or Certificate uses. A
               Secret is also there when a cert-manager Certificate of the set writes it. What
               users create themselves is listed in external-refs.yaml (--external).
images         every container image has a tag or digest, none is `latest`, and one repository has
               one tag throughout a set (a component's image tagged apart from the base's).
resources      every container (init containers too) requests CPU and memory and has a memory
               limit no lower than its request; CPU limits are not required (the roles are
               CPU-bound: a CPU limit only throttles them). With a `cpu-budget=N` directive, the
               set's pods (each Deployment's replicas, or its HPA's minReplicas) request at most N
               CPUs in all.
pod-security   every pod template meets the "restricted" Pod Security Standard (baseline and
               restricted controls, the strictest version from 1.27 on), and every Namespace of
               the set enforces it.

Directives: a file may start with a comment line `# ig-check: key=value ...` (check.sh writes
one into every rendered set; the fixtures carry theirs): `set=NAME`, `namespace=NS|-`,
`cpu-budget=CPUS`.

Usage: check_manifests.py --check CHECK[,CHECK...]|all [--external FILE] RENDERED.yaml...
       (exit status 1 when a check finds a problem)
       check_manifests.py --kube-versions CHART_DIR SCHEMA_DIR
       (prints the oldest and newest Kubernetes versions the chart's kubeVersion admits and
       kubernetes-validate has strict schemas for)
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import sys

import yaml

from check_registry import selects  # the one label-selector matcher of the tools

CHECKS = ("namespace", "references", "images", "resources", "pod-security")

# Kinds without a namespace (of those a deployment of this kind could render).
CLUSTER_KINDS = {
    "Namespace", "Node", "PersistentVolume", "StorageClass", "CSIDriver", "PriorityClass",
    "RuntimeClass", "IngressClass", "ClusterRole", "ClusterRoleBinding", "ClusterIssuer",
    "CustomResourceDefinition", "APIService", "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
}
# Workloads and where their pod template is.
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod",
             "ReplicationController"}


# --- reading -------------------------------------------------------------------------------

def directives(path: str) -> dict:
    with open(path) as f:
        for line in f:
            m = re.match(r"#\s*ig-check:\s*(.*)$", line.strip())
            if m:
                return dict(kv.split("=", 1) for kv in m.group(1).split() if "=" in kv)
            if line.strip() and not line.startswith("#"):
                break
    return {}


# libyaml's loader where PyYAML has it (its wheels do): several times faster.
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load(path: str) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.load_all(f, Loader=Loader) if isinstance(d, dict) and d.get("kind")]


def ident(d: dict) -> str:
    return f"{d['kind']} {d.get('metadata', {}).get('name')}"


def ns_of(d: dict):
    return (d.get("metadata") or {}).get("namespace")


def pod_template(d: dict):
    """(metadata, spec) of the pods a workload makes, or None."""
    kind = d.get("kind")
    if kind == "Pod":
        return d.get("metadata") or {}, d.get("spec") or {}
    if kind == "CronJob":
        t = (((d.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
    elif kind in WORKLOADS:
        t = (d.get("spec") or {}).get("template") or {}
    else:
        return None
    return t.get("metadata") or {}, t.get("spec") or {}


def containers(spec: dict):
    """(kind of container, container) of a pod spec: init, ephemeral and regular containers."""
    for field, what in (("initContainers", "init container"), ("containers", "container"),
                        ("ephemeralContainers", "ephemeral container")):
        for c in spec.get(field) or []:
            yield what, c


def pods(docs):
    """(workload, pod labels, pod spec) of every workload of the set."""
    for d in docs:
        t = pod_template(d)
        if t is not None:
            yield d, t[0].get("labels") or {}, t[1]


def cpu(quantity) -> float:
    q = str(quantity)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def quantity_bytes(quantity) -> float:
    q = str(quantity)
    for unit in ("Ki", "Mi", "Gi", "Ti", "k", "M", "G", "T"):
        if q.endswith(unit):
            return float(q[: -len(unit)]) * UNITS[unit]
    return float(q)


# --- namespace ---------------------------------------------------------------------------------

def check_namespace(docs, opts):
    problems = []
    namespaces = [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"]
    want = opts.get("namespace")
    if want is None:
        if len(namespaces) != 1:
            return [f"cannot tell the intended namespace: no namespace= directive and {len(namespaces)} "
                    "Namespace objects in the set"]
        want = namespaces[0]
    want = None if want == "-" else want
    for d in docs:
        ns = ns_of(d)
        if d["kind"] in CLUSTER_KINDS:
            if ns:
                problems.append(f"{ident(d)}: cluster-scoped, but carries namespace {ns}")
        elif ns != want:
            where = f"namespace {ns}" if ns else "no namespace (it would land in the current one)"
            problems.append(f"{ident(d)}: {where}, not {want or 'none'}")
    if want and namespaces and want not in namespaces:
        problems.append(f"the set's Namespace objects ({', '.join(namespaces)}) are not its objects' namespace {want}")
    return problems


# --- references --------------------------------------------------------------------------------

def load_external(path: str | None) -> list[dict]:
    if not path:
        return []
    with open(path) as f:
        entries = yaml.safe_load(f) or []
    for e in entries:
        if not {"kind", "name", "why"} <= set(e):
            raise SystemExit(f"{path}: every entry needs kind, name and why: {e}")
    return entries


def external(entries, kind: str, name: str) -> bool:
    return any(e["kind"] == kind and fnmatch.fnmatchcase(name, e["name"]) for e in entries)


def check_references(docs, opts, ext):
    problems = []
    by = {}
    for d in docs:
        by.setdefault((d["kind"], ns_of(d)), {})[d["metadata"]["name"]] = d
    workloads = list(pods(docs))

    def have(kind, ns, name):
        return name in by.get((kind, ns), {})

    def pods_selected(ns, selector):
        return [w for w, labels, _ in workloads if ns_of(w) == ns and selects(selector, labels)]

    # Secrets the set creates: Secret objects and cert-manager Certificates' secretName (with the
    # keys cert-manager writes).
    secrets = {}
    for d in docs:
        if d["kind"] == "Secret":
            secrets[(ns_of(d), d["metadata"]["name"])] = set(d.get("data") or {}) | set(d.get("stringData") or {})
        elif d["kind"] == "Certificate" and d.get("apiVersion", "").startswith("cert-manager.io/"):
            name = (d.get("spec") or {}).get("secretName")
            if name:
                secrets[(ns_of(d), name)] = {"tls.crt", "tls.key", "ca.crt"}

    def need_configmap(at, ns, name, keys=(), optional=False):
        if optional:
            return
        cm = by.get(("ConfigMap", ns), {}).get(name)
        if cm is None:
            if not external(ext, "ConfigMap", name):
                problems.append(f"{at}: ConfigMap {name} is not in the set (nor in the external list)")
            return
        data = set(cm.get("data") or {}) | set(cm.get("binaryData") or {})
        for k in keys:
            if k not in data:
                problems.append(f"{at}: ConfigMap {name} has no key {k}")

    def need_secret(at, ns, name, keys=(), optional=False):
        if optional:
            return
        if (ns, name) in secrets:
            for k in keys:
                if secrets[(ns, name)] and k not in secrets[(ns, name)]:
                    problems.append(f"{at}: Secret {name} has no key {k}")
        elif not external(ext, "Secret", name):
            problems.append(f"{at}: Secret {name} is neither in the set, nor written by one of its "
                            "Certificates, nor in the external list")

    for w, labels, spec in workloads:
        ns, at = ns_of(w), ident(w)
        if w["kind"] not in ("Pod", "CronJob"):
            sel = (w.get("spec") or {}).get("selector")
            if w["kind"] != "Job" and not sel:
                problems.append(f"{at}: no selector")
            elif sel and not selects(sel, labels):
                problems.append(f"{at}: its selector does not select its own pod template's labels")
        sa = spec.get("serviceAccountName") or spec.get("serviceAccount")
        if sa and sa != "default" and not have("ServiceAccount", ns, sa) and not external(ext, "ServiceAccount", sa):
            problems.append(f"{at}: ServiceAccount {sa} is not in the set (nor in the external list)")
        for s in spec.get("imagePullSecrets") or []:
            need_secret(at, ns, s.get("name"))
        for v in spec.get("volumes") or []:
            vat = f"{at}, volume {v.get('name')}"
            if "configMap" in v:
                c = v["configMap"]
                need_configmap(vat, ns, c.get("name"), [i["key"] for i in c.get("items") or []], c.get("optional", False))
            if "secret" in v:
                s = v["secret"]
                need_secret(vat, ns, s.get("secretName"), [i["key"] for i in s.get("items") or []], s.get("optional", False))
            for src in (v.get("projected") or {}).get("sources") or []:
                if "configMap" in src:
                    c = src["configMap"]
                    need_configmap(vat, ns, c.get("name"), [i["key"] for i in c.get("items") or []], c.get("optional", False))
                if "secret" in src:
                    s = src["secret"]
                    need_secret(vat, ns, s.get("name"), [i["key"] for i in s.get("items") or []], s.get("optional", False))
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"].get("claimName")
                if not have("PersistentVolumeClaim", ns, claim) and not external(ext, "PersistentVolumeClaim", claim):
                    problems.append(f"{vat}: PersistentVolumeClaim {claim} is not in the set (nor in the external list)")
        volume_names = {v.get("name") for v in spec.get("volumes") or []}
        for what, c in containers(spec):
            cat = f"{at}, {what} {c.get('name')}"
            for e in c.get("env") or []:
                ref = e.get("valueFrom") or {}
                if "configMapKeyRef" in ref:
                    r = ref["configMapKeyRef"]
                    need_configmap(cat, ns, r.get("name"), [r.get("key")], r.get("optional", False))
                if "secretKeyRef" in ref:
                    r = ref["secretKeyRef"]
                    need_secret(cat, ns, r.get("name"), [r.get("key")], r.get("optional", False))
            for e in c.get("envFrom") or []:
                if "configMapRef" in e:
                    need_configmap(cat, ns, e["configMapRef"].get("name"), (), e["configMapRef"].get("optional", False))
                if "secretRef" in e:
                    need_secret(cat, ns, e["secretRef"].get("name"), (), e["secretRef"].get("optional", False))
            for m in c.get("volumeMounts") or []:
                if m.get("name") not in volume_names:
                    problems.append(f"{cat}: mounts volume {m.get('name')}, which the pod does not have")

    for d in docs:
        ns, at, spec = ns_of(d), ident(d), d.get("spec") or {}
        kind = d["kind"]
        if kind == "HorizontalPodAutoscaler":
            ref = spec.get("scaleTargetRef") or {}
            target = by.get((ref.get("kind"), ns), {}).get(ref.get("name"))
            if target is None:
                problems.append(f"{at}: its target {ref.get('kind')} {ref.get('name')} is not in the set")
                continue
            if ref.get("apiVersion") and ref["apiVersion"] != target.get("apiVersion"):
                problems.append(f"{at}: targets {ref['apiVersion']} {ref.get('kind')}, the set has {target.get('apiVersion')}")
            if "replicas" in (target.get("spec") or {}):
                problems.append(f"{at}: its target {ident(target)} sets spec.replicas, which every apply "
                                "resets under the autoscaler")
            if spec.get("minReplicas", 1) > spec.get("maxReplicas", 0):
                problems.append(f"{at}: minReplicas {spec.get('minReplicas')} > maxReplicas {spec.get('maxReplicas')}")
            for metric in spec.get("metrics") or []:
                res = metric.get("resource") or {}
                if metric.get("type") == "Resource" and (res.get("target") or {}).get("type") == "Utilization":
                    t = pod_template(target)
                    for what, c in containers(t[1] if t else {}):
                        if what == "container" and not ((c.get("resources") or {}).get("requests") or {}).get(res.get("name")):
                            problems.append(f"{at}: scales on {res.get('name')} utilisation, but {ident(target)}'s "
                                            f"container {c.get('name')} requests no {res.get('name')}")
        elif kind == "PodDisruptionBudget":
            if not pods_selected(ns, spec.get("selector")):
                problems.append(f"{at}: its selector selects no pod of the set")
            if str(spec.get("maxUnavailable")) in ("0", "0%") or str(spec.get("minAvailable")) == "100%":
                problems.append(f"{at}: allows no disruption, so a node drain never finishes")
        elif kind == "Service":
            sel = spec.get("selector")
            if sel is None:
                continue  # endpoints managed by hand or ExternalName
            selected = pods_selected(ns, {"matchLabels": sel})
            if not selected:
                problems.append(f"{at}: its selector {sel} selects no pod of the set")
                continue
            for p in spec.get("ports") or []:
                tp = p.get("targetPort")
                if isinstance(tp, str):
                    for w in selected:
                        names = {port.get("name") for _, c in containers(pod_template(w)[1])
                                 for port in c.get("ports") or []}
                        if tp not in names:
                            problems.append(f"{at}: targetPort {tp} is no port of {ident(w)}'s containers")
        elif kind == "NetworkPolicy":
            if not pods_selected(ns, spec.get("podSelector")):
                problems.append(f"{at}: its podSelector selects no pod of the set")
        elif kind == "ServiceMonitor":
            services = [s for s in by.get(("Service", ns), {}).values()
                        if selects(spec.get("selector"), (s.get("metadata") or {}).get("labels") or {})]
            if not services:
                problems.append(f"{at}: its selector selects no Service of the set")
            for e in spec.get("endpoints") or []:
                if e.get("port") and not any(e["port"] in {p.get("name") for p in s["spec"].get("ports") or []} for s in services):
                    problems.append(f"{at}: endpoint port {e['port']} is a port of none of the Services it selects")
        elif kind == "Certificate" and d.get("apiVersion", "").startswith("cert-manager.io/"):
            ref = spec.get("issuerRef") or {}
            ikind = ref.get("kind", "Issuer")
            found = have(ikind, ns if ikind == "Issuer" else None, ref.get("name"))
            if not found and not external(ext, ikind, ref.get("name")):
                problems.append(f"{at}: its issuer {ikind} {ref.get('name')} is not in the set (nor in the external list)")
        elif kind == "Issuer" and "ca" in spec:
            need_secret(at, ns, spec["ca"].get("secretName"), ["tls.crt", "tls.key"])
    return problems


# --- images ------------------------------------------------------------------------------------

def check_images(docs, opts):
    problems = []
    tags = {}  # repository -> {tag: [where]}
    for w, _, spec in pods(docs):
        for what, c in containers(spec):
            image = c.get("image") or ""
            at = f"{ident(w)}, {what} {c.get('name')}"
            last = image.rsplit("/", 1)[-1]
            if not image:
                problems.append(f"{at}: no image")
            elif "@" in last:
                if not re.search(r"@sha256:[0-9a-f]{64}$", image):
                    problems.append(f"{at}: image {image}: malformed digest")
            elif ":" not in last:
                problems.append(f"{at}: image {image} has no tag (it would pull :latest)")
            elif last.endswith(":latest"):
                problems.append(f"{at}: image {image} is tagged latest")
            else:
                repo, tag = image.rsplit(":", 1)
                tags.setdefault(repo, {}).setdefault(tag, []).append(at)
    for repo, by_tag in tags.items():
        if len(by_tag) > 1:
            problems.append(f"image {repo} has {len(by_tag)} tags in one set: "
                            + "; ".join(f"{t} ({', '.join(w[:2])}{', ...' if len(w) > 2 else ''})" for t, w in sorted(by_tag.items())))
    return problems


# --- resources ---------------------------------------------------------------------------------

def replicas_of(d, hpas):
    if d["kind"] in ("DaemonSet", "Pod", "Job", "CronJob"):
        return 1
    hpa = hpas.get((ns_of(d), d["kind"], d["metadata"]["name"]))
    if hpa is not None:
        return (hpa.get("spec") or {}).get("minReplicas", 1)
    return (d.get("spec") or {}).get("replicas", 1)


def check_resources(docs, opts):
    problems = []
    hpas = {}
    for d in docs:
        if d["kind"] == "HorizontalPodAutoscaler":
            ref = (d.get("spec") or {}).get("scaleTargetRef") or {}
            hpas[(ns_of(d), ref.get("kind"), ref.get("name"))] = d
    total = 0.0
    lines = []
    for w, _, spec in pods(docs):
        init_cpu, main_cpu = 0.0, 0.0
        for what, c in containers(spec):
            at = f"{ident(w)}, {what} {c.get('name')}"
            res = c.get("resources") or {}
            req, lim = res.get("requests") or {}, res.get("limits") or {}
            if what == "ephemeral container":
                continue  # the API refuses resources on them
            missing = [f"requests.{r}" for r in ("cpu", "memory") if r not in req] + \
                      [f"limits.{r}" for r in ("memory",) if r not in lim]
            if missing:
                problems.append(f"{at}: no {', '.join(missing)}")
            for r in set(req) & set(lim):
                try:
                    low, high = (cpu(req[r]), cpu(lim[r])) if r == "cpu" else (quantity_bytes(req[r]), quantity_bytes(lim[r]))
                except ValueError:
                    continue
                if low > high:
                    problems.append(f"{at}: requests.{r} {req[r]} is above limits.{r} {lim[r]}")
            for r in lim:
                if "/" in r and r in req and str(req[r]) != str(lim[r]):
                    problems.append(f"{at}: extended resource {r}: request {req[r]} and limit {lim[r]} differ")
            c_cpu = cpu(req["cpu"]) if "cpu" in req else 0.0
            if what == "init container" and not c.get("restartPolicy"):
                init_cpu = max(init_cpu, c_cpu)
            else:
                main_cpu += c_cpu
        pod_cpu = max(init_cpu, main_cpu)
        n = replicas_of(w, hpas)
        total += n * pod_cpu
        lines.append(f"{w['metadata']['name']} {n}x{pod_cpu:g}")
    budget = opts.get("cpu-budget")
    if budget is not None and total > float(budget) + 1e-9:
        problems.append(f"the pods request {total:g} CPUs in all ({', '.join(lines)}), over the set's budget of {budget}")
    return problems


# --- pod security: "restricted" ----------------------------------------------------------------

# Allowed values and sets as of Kubernetes 1.27, the oldest the chart supports (later versions
# only allow more).
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def pss_problems(meta: dict, spec: dict) -> list[str]:
    p = []
    psc = spec.get("securityContext") or {}
    annotations = meta.get("annotations") or {}
    # baseline
    for f in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(f):
            p.append(f"{f}: true (host namespaces)")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        p.append("securityContext.windowsOptions.hostProcess: true")
    for s in psc.get("sysctls") or []:
        if s.get("name") not in SAFE_SYSCTLS:
            p.append(f"sysctl {s.get('name')} is not in the safe set")
    for k, v in annotations.items():
        if k.startswith("container.apparmor.security.beta.kubernetes.io/") and v != "runtime/default" and not v.startswith("localhost/"):
            p.append(f"annotation {k}: {v} (AppArmor must be runtime/default or localhost/*)")
    for where, sc in [("pod", psc)] + [(f"{w} {c.get('name')}", c.get("securityContext") or {}) for w, c in containers(spec)]:
        aa = (sc.get("appArmorProfile") or {}).get("type")
        if aa not in (None, "RuntimeDefault", "Localhost"):
            p.append(f"{where}: appArmorProfile {aa}")
        se = sc.get("seLinuxOptions") or {}
        if se.get("type", "") not in SELINUX_TYPES or se.get("user") or se.get("role"):
            p.append(f"{where}: seLinuxOptions {se} (only the container types; no user or role)")
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            p.append(f"{where}: seccompProfile Unconfined")
        if sc.get("runAsUser") == 0:
            p.append(f"{where}: runAsUser 0")
    for v in spec.get("volumes") or []:
        kinds = set(v) - {"name"}
        if "hostPath" in kinds:
            p.append(f"volume {v.get('name')}: hostPath")
        elif not kinds <= RESTRICTED_VOLUMES:
            p.append(f"volume {v.get('name')}: type {', '.join(sorted(kinds - RESTRICTED_VOLUMES))} is not allowed")
    pod_non_root = psc.get("runAsNonRoot") is True
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type") in ("RuntimeDefault", "Localhost")
    for what, c in containers(spec):
        at = f"{what} {c.get('name')}"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            p.append(f"{at}: privileged")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            p.append(f"{at}: windowsOptions.hostProcess")
        if sc.get("procMount") not in (None, "Default"):
            p.append(f"{at}: procMount {sc.get('procMount')}")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                p.append(f"{at}: hostPort {port['hostPort']}")
        # restricted
        if sc.get("allowPrivilegeEscalation") is not False:
            p.append(f"{at}: allowPrivilegeEscalation is not false")
        if sc.get("runAsNonRoot") is False or not (pod_non_root or sc.get("runAsNonRoot") is True):
            p.append(f"{at}: runAsNonRoot is not true (on the pod or the container)")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if not (seccomp in ("RuntimeDefault", "Localhost") or (seccomp is None and pod_seccomp)):
            p.append(f"{at}: no seccompProfile RuntimeDefault or Localhost (on the pod or the container)")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            p.append(f"{at}: capabilities.drop does not hold ALL")
        added = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            p.append(f"{at}: capabilities.add {', '.join(sorted(added))} (only NET_BIND_SERVICE)")
    return p


def check_pod_security(docs, opts):
    problems = []
    for d in docs:
        if d["kind"] == "Namespace":
            labels = (d.get("metadata") or {}).get("labels") or {}
            if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
                problems.append(f"{ident(d)}: does not enforce the restricted Pod Security Standard "
                                "(label pod-security.kubernetes.io/enforce: restricted)")
        t = pod_template(d)
        if t is not None:
            problems += [f"{ident(d)}: {p}" for p in pss_problems(*t)]
    return problems


# --- kube versions -------------------------------------------------------------------------------

def version_key(v: str):
    return tuple(int(x) for x in re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", v).groups(default="0"))


def admits(constraint: str, v: tuple) -> bool:
    for term in re.split(r"[\s,]+", constraint.strip()):
        m = re.match(r"(>=|<=|>|<|=)?v?(\d+(?:\.\d+){0,2})(?:-[0-9A-Za-z.]+)?$", term)
        if not m:
            raise SystemExit(f"kubeVersion: cannot read {term!r} (this checker reads >=, >, <=, <, = terms)")
        op, bound = m.group(1) or "=", version_key(m.group(2))
        ok = {">=": v >= bound, ">": v > bound, "<=": v <= bound, "<": v < bound, "=": v == bound}[op]
        if not ok:
            return False
    return True


def kube_versions(chart: str, schemas: str) -> str:
    with open(os.path.join(chart, "Chart.yaml")) as f:
        constraint = (yaml.safe_load(f) or {}).get("kubeVersion")
    if not constraint:
        raise SystemExit(f"{chart}/Chart.yaml: no kubeVersion; the versions to test come from it")
    found = sorted({version_key(m.group(1)) for n in os.listdir(schemas)
                    if (m := re.match(r"v(\d+\.\d+\.\d+)-local-strict$", n))})
    ok = [v for v in found if admits(constraint, v)]
    if not ok:
        raise SystemExit(f"kubeVersion {constraint!r} admits none of the schema versions {found}")
    return " ".join(".".join(map(str, v)) for v in (ok[0], ok[-1]))


# --- main --------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", help="checks to run, comma-separated, or all")
    ap.add_argument("--external", help="external-refs.yaml: objects users create themselves")
    ap.add_argument("--kube-versions", nargs=2, metavar=("CHART", "SCHEMAS"))
    ap.add_argument("files", nargs="*")
    args = ap.parse_args()
    if args.kube_versions:
        print(kube_versions(*args.kube_versions))
        return 0
    checks = CHECKS if args.check in (None, "all") else args.check.split(",")
    unknown = set(checks) - set(CHECKS)
    if unknown or not args.files:
        ap.error(f"unknown checks {', '.join(sorted(unknown))}" if unknown else "no files given")
    ext = load_external(args.external)
    failed = False
    for path in args.files:
        opts = directives(path)
        docs = load(path)
        name = opts.get("set", os.path.basename(path))
        for check in checks:
            fn = {"namespace": check_namespace, "references": lambda d, o: check_references(d, o, ext),
                  "images": check_images, "resources": check_resources, "pod-security": check_pod_security}[check]
            for p in fn(docs, opts):
                print(f"{name}: [{check}] {p}")
                failed = True
    print(f"check_manifests.py {','.join(checks)}: {len(args.files)} sets, {'problems found' if failed else 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
