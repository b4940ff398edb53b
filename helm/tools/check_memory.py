#!/usr/bin/env python3
"""Checks that each policy container's memory limit holds what its settings let it take:
the KV cache budget (IG_KV_CACHE_MB) + the prefix cache (IG_PREFIX_CACHE_MB) + the weights
and the runtime (--weights-mb). Unset variables take the server's defaults, given on the
command line by the caller (tests/tests/deploy_memory.rs reads them from the code).

    check_memory.py --default-kv-mb N --default-prefix-mb N --weights-mb N FILE...

FILE: a kustomize manifest (containers with IG_ variables) or the chart's values.yaml
(roles of kind policy). Prints one line per policy container; exit 1 when one does not fit.
"""
import argparse
import sys

import yaml

UNITS = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}


def mebibytes(quantity):
    q = str(quantity)
    for unit, factor in UNITS.items():
        if q.endswith(unit):
            return float(q[: -len(unit)]) * factor
    return float(q) / (1 << 20)  # plain bytes


def containers_of_manifest(docs):
    for doc in docs:
        spec = (((doc or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
        for c in spec.get("containers") or []:
            env = {e["name"]: e.get("value") for e in c.get("env") or [] if "name" in e}
            if "IG_MODEL" in env:  # the policy server
                limit = ((c.get("resources") or {}).get("limits") or {}).get("memory")
                yield f"{doc['metadata']['name']}/{c['name']}", env, limit


def containers_of_values(values):
    for role in values.get("roles") or []:
        if role.get("kind") == "policy":
            limit = ((role.get("resources") or {}).get("limits") or {}).get("memory")
            yield f"roles[{role.get('name')}]", role.get("env") or {}, limit


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--default-kv-mb", type=float, required=True)
    ap.add_argument("--default-prefix-mb", type=float, required=True)
    ap.add_argument("--weights-mb", type=float, required=True)
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    failed = checked = 0
    for path in args.files:
        with open(path) as f:
            docs = list(yaml.safe_load_all(f))
        if len(docs) == 1 and isinstance(docs[0], dict) and "roles" in docs[0]:
            found = containers_of_values(docs[0])
        else:
            found = containers_of_manifest(docs)
        for name, env, limit in found:
            checked += 1
            kv = float(env.get("IG_KV_CACHE_MB") or args.default_kv_mb)
            prefix = float(env.get("IG_PREFIX_CACHE_MB") or args.default_prefix_mb)
            need = kv + prefix + args.weights_mb
            if limit is None:
                print(f"FAIL {path}: {name}: no memory limit (needs {need:.0f} MiB)")
                failed += 1
                continue
            have = mebibytes(limit)
            ok = need <= have
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {path}: {name}: KV {kv:.0f} + prefix cache {prefix:.0f} + weights and runtime {args.weights_mb:.0f} = {need:.0f} MiB, limit {have:.0f} MiB")
    if checked == 0:
        print("no policy container found", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
