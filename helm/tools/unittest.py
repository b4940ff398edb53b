#!/usr/bin/env python3
"""Runs helm-unittest suites (`<chart>/tests/*_test.yaml`) without the helm binary.

A fallback for machines where the `helm` binary and its helm-unittest plugin cannot be installed:
it renders with Helm's own Go engine through the `helm-python-sdk` wheel (`helm_python`, Helm
v4 built as a C library) and interprets the subset of helm-unittest's suite format that this
chart's tests use. Where `helm unittest` is available, prefer it: it is the reference, and
check.sh runs it first.

Supported: suite and test `templates`/`template`, `release`, `set`, `values`; test and assert
`documentIndex` and `documentSelector` (path, value); asserts `equal`, `notEqual`, `exists`,
`notExists`, `isNull`, `isNotNull`, `isKind`, `hasDocuments`, `contains`, `notContains`,
`matchRegex`, `notMatchRegex`, `isSubset`, `lengthEqual`, `failedTemplate` (errorMessage,
errorPattern), `notFailedTemplate`, each with `not: true`. Anything else fails the test loudly.

Usage: unittest.py CHART_DIR    (exit status 1 when a test fails)
"""

from __future__ import annotations

import copy
import glob
import os
import re
import sys

import yaml

try:
    import helm_python as helm
except ImportError:  # check.sh tests for this before calling us
    sys.exit("unittest.py: the helm_python module (pip install helm-python-sdk) is required")

# helm-unittest's defaults when a suite names no release.
DEFAULT_RELEASE = {"name": "RELEASE-NAME", "namespace": "NAMESPACE"}


class Failure(Exception):
    """An assertion that did not hold, or a suite the runner cannot interpret."""


# --- values -------------------------------------------------------------------------------

def deep_merge(dst: dict, src: dict) -> dict:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            deep_merge(dst[key], value)
        else:
            dst[key] = copy.deepcopy(value)
    return dst


_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]|\[\"([^\"]*)\"\]|\['([^']*)'\]|\.")


def parse_path(path: str) -> list:
    """`a.b[0]["c.d"]` -> ["a", "b", 0, "c.d"]."""
    parts, pos = [], 0
    while pos < len(path):
        m = _SEGMENT.match(path, pos)
        if not m or m.end() == pos:
            raise Failure(f"cannot parse path {path!r} at {path[pos:]!r}")
        name, idx, dq, sq = m.groups()
        if name is not None:
            parts.append(name)
        elif idx is not None:
            parts.append(int(idx))
        elif dq is not None or sq is not None:
            parts.append(dq if dq is not None else sq)
        pos = m.end()
    return parts


def set_path(values: dict, path: str, value) -> None:
    parts = parse_path(path)
    node = values
    for part, nxt in zip(parts, parts[1:]):
        if isinstance(part, int):
            raise Failure(f"set {path!r}: list indexes replace the whole list in Helm; use a values file")
        node = node.setdefault(part, [] if isinstance(nxt, int) else {})
    if isinstance(parts[-1], int):
        raise Failure(f"set {path!r}: list indexes are not supported; use a values file")
    node[parts[-1]] = copy.deepcopy(value)


def get_path(doc, path: str):
    """Returns (found, value)."""
    node = doc
    for part in parse_path(path):
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return False, None
            node = node[part]
        else:
            if not isinstance(node, dict) or part not in node:
                return False, None
            node = node[part]
    return True, node


# --- rendering ------------------------------------------------------------------------------

def render(chart, values: dict, release: dict):
    """Returns ({template path: [docs]}, None) or (None, error message)."""
    try:
        manifests = chart.render(values, name=release["name"], namespace=release["namespace"])
    except helm.HelmError as err:
        return None, str(err)
    out = {}
    for path, text in manifests.items():
        rel = path.split("/", 1)[1] if "/" in path else path  # drop "<chart>/"
        docs = [d for d in yaml.safe_load_all(text) if d is not None] if rel.endswith((".yaml", ".yml")) else []
        out[rel] = docs
    return out, None


def norm_template(name: str) -> str:
    return name if name.startswith("templates/") else f"templates/{name}"


# --- assertions -----------------------------------------------------------------------------

def is_subset(content, value) -> bool:
    if isinstance(content, dict):
        return isinstance(value, dict) and all(k in value and is_subset(v, value[k]) for k, v in content.items())
    return content == value


def check(kind: str, spec: dict, docs: list, error: str | None) -> None:
    """Raises Failure unless the assertion holds on every selected document."""
    if kind == "failedTemplate":
        if error is None:
            raise Failure("expected the render to fail, it succeeded")
        if "errorMessage" in spec and spec["errorMessage"] not in error:
            raise Failure(f"error {error!r} does not contain {spec['errorMessage']!r}")
        if "errorPattern" in spec and not re.search(spec["errorPattern"], error):
            raise Failure(f"error {error!r} does not match /{spec['errorPattern']}/")
        return
    if error is not None:
        raise Failure(f"render failed: {error}")
    if kind == "notFailedTemplate":
        return
    if kind == "hasDocuments":
        if len(docs) != spec["count"]:
            raise Failure(f"expected {spec['count']} documents, got {len(docs)}")
        return
    if not docs:
        raise Failure("no document to assert on")
    for i, doc in enumerate(docs):
        where = f"document {i} ({doc.get('kind')}/{(doc.get('metadata') or {}).get('name')})"
        if kind == "isKind":
            if doc.get("kind") != spec["of"]:
                raise Failure(f"{where}: kind is {doc.get('kind')!r}, expected {spec['of']!r}")
            continue
        path = spec.get("path")
        found, value = get_path(doc, path)
        if kind == "exists":
            if not found:
                raise Failure(f"{where}: {path} does not exist")
        elif kind == "notExists":
            if found:
                raise Failure(f"{where}: {path} exists: {value!r}")
        elif kind == "isNull":
            if found and value is not None:
                raise Failure(f"{where}: {path} is {value!r}, expected null")
        elif kind == "isNotNull":
            if not found or value is None:
                raise Failure(f"{where}: {path} is null")
        elif kind in ("equal", "notEqual"):
            same = found and value == spec["value"]
            if kind == "equal" and not same:
                raise Failure(f"{where}: {path} is {value!r}, expected {spec['value']!r}")
            if kind == "notEqual" and same:
                raise Failure(f"{where}: {path} equals {value!r}")
        elif kind in ("matchRegex", "notMatchRegex"):
            if not found or not isinstance(value, str):
                raise Failure(f"{where}: {path} is not a string: {value!r}")
            hit = re.search(spec["pattern"], value) is not None
            if hit != (kind == "matchRegex"):
                raise Failure(f"{where}: {path} = {value!r} {'does not match' if not hit else 'matches'} /{spec['pattern']}/")
        elif kind in ("contains", "notContains"):
            if not found or not isinstance(value, list):
                raise Failure(f"{where}: {path} is not a list: {value!r}")
            match = (lambda item: is_subset(spec["content"], item)) if spec.get("any") else (lambda item: item == spec["content"])
            hits = sum(1 for item in value if match(item))
            if kind == "contains":
                want = spec.get("count")
                if hits == 0 or (want is not None and hits != want):
                    raise Failure(f"{where}: {path} has {hits} of {spec['content']!r}: {value!r}")
            elif hits:
                raise Failure(f"{where}: {path} contains {spec['content']!r}")
        elif kind == "isSubset":
            if not found or not is_subset(spec["content"], value):
                raise Failure(f"{where}: {path} = {value!r} does not include {spec['content']!r}")
        elif kind == "lengthEqual":
            if not found or len(value) != spec["count"]:
                raise Failure(f"{where}: {path} has length {len(value) if found else None}, expected {spec['count']}")
        else:
            raise Failure(f"assertion {kind!r} is not supported by this runner")


def select(docs: list, index, selector) -> list:
    if selector:
        chosen = [d for d in docs if get_path(d, selector["path"]) == (True, selector["value"])]
        if not chosen:
            raise Failure(f"documentSelector {selector} matched no document")
        if len(chosen) > 1 and not selector.get("matchMany"):
            raise Failure(f"documentSelector {selector} matched {len(chosen)} documents")
        return chosen
    if index is not None:
        if index >= len(docs):
            raise Failure(f"documentIndex {index} out of range ({len(docs)} documents)")
        return [docs[index]]
    return docs


# --- suites ---------------------------------------------------------------------------------

def run_suite(chart, chart_dir: str, suite_path: str) -> tuple[int, int]:
    with open(suite_path) as f:
        suite = yaml.safe_load(f)
    base_dir = os.path.dirname(suite_path)
    passed = failed = 0
    print(f"suite {suite.get('suite', suite_path)} ({os.path.relpath(suite_path, chart_dir)})")
    for test in suite.get("tests", []):
        try:
            release = dict(DEFAULT_RELEASE, **suite.get("release", {}), **test.get("release", {}))
            values: dict = {}
            for vf in list(suite.get("values", [])) + list(test.get("values", [])):
                with open(os.path.join(base_dir, vf)) as f:
                    deep_merge(values, yaml.safe_load(f) or {})
            for key, value in {**suite.get("set", {}), **test.get("set", {})}.items():
                set_path(values, key, value)
            rendered, error = render(chart, values, release)
            default_templates = test.get("templates") or ([test["template"]] if "template" in test else suite.get("templates", []))
            for assertion in test["asserts"]:
                spec_keys = [k for k in assertion if k not in ("not", "template", "documentIndex", "documentSelector")]
                if len(spec_keys) != 1:
                    raise Failure(f"cannot read assertion {assertion}")
                kind = spec_keys[0]
                spec = assertion[kind] or {}
                negate = bool(assertion.get("not"))
                templates = [assertion["template"]] if "template" in assertion else default_templates
                if kind in ("failedTemplate", "notFailedTemplate") or error is not None:
                    targets = [[]]
                else:
                    targets = []
                    for t in templates:
                        name = norm_template(t)
                        if name not in rendered:
                            raise Failure(f"template {name} was not rendered")
                        docs = rendered[name]
                        if kind != "hasDocuments":
                            docs = select(docs,
                                          assertion.get("documentIndex", test.get("documentIndex")),
                                          assertion.get("documentSelector", test.get("documentSelector")))
                        targets.append(docs)
                for docs in targets:
                    try:
                        check(kind, spec, docs, error)
                        held = True
                    except Failure:
                        if not negate:
                            raise
                        held = False
                    if negate and held:
                        raise Failure(f"{kind} {spec} held, expected it not to")
            passed += 1
            print(f"  PASS  {test['it']}")
        except Failure as err:
            failed += 1
            print(f"  FAIL  {test['it']}\n        {err}")
    return passed, failed


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    chart_dir = sys.argv[1]
    suites = sorted(glob.glob(os.path.join(chart_dir, "tests", "*_test.yaml")))
    if not suites:
        print(f"no suites under {chart_dir}/tests")
        return 1
    passed = failed = 0
    with helm.Chart.load(chart_dir) as chart:
        for suite in suites:
            p, f = run_suite(chart, chart_dir, suite)
            passed += p
            failed += f
    print(f"helm-unittest suites (helm_python runner): {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
