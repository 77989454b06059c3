#!/usr/bin/env python3
"""Lint and render charts/kitsune with the real Helm engine (PyPI helm-python-sdk, which
binds Helm's Go SDK; no helm binary is needed). tests/harness/install.sh installs it into
.harness/venv.

  .harness/venv/bin/python charts/render.py > manifests/install.yaml   # regenerate
  .harness/venv/bin/python charts/render.py -f my-values.yaml          # render other values
  .harness/venv/bin/python charts/render.py -f my-values.yaml --lint   # lint report (JSON)

Rendering prints one YAML stream in Helm's install order, like `helm template`.
--lint prints the lint report and exits 1 on any error, or on values the schema refuses.
"""

import argparse
import json
import pathlib
import re
import sys

try:
    from helm_python import chart as helm
    from helm_python.errors import HelmError
except ImportError:
    sys.exit(
        "charts/render.py: helm-python-sdk is not installed; run tests/harness/install.sh "
        "(or pip install helm-python-sdk==0.2.2) and use .harness/venv/bin/python"
    )

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_CHART = HERE / "kitsune"
DEFAULT_NAME = "kitsune"
DEFAULT_NAMESPACE = "kitsune-system"

# Helm's install order (pkg/release/util/kind_sorter.go), for the kinds this chart has;
# anything else goes last, as in Helm.
INSTALL_ORDER = [
    "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
    "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap",
    "StorageClass", "PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition",
    "ClusterRole", "ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList", "Role",
    "RoleList", "RoleBinding", "RoleBindingList", "Service", "DaemonSet", "Pod",
    "ReplicationController", "ReplicaSet", "Deployment", "HorizontalPodAutoscaler",
    "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress", "APIService",
]
KIND = re.compile(r"^kind:\s*(\S+)\s*$", re.MULTILINE)
SEPARATOR = re.compile(r"^---[ \t]*$", re.MULTILINE)


def load_values(files):
    values = {}
    for f in files:
        merged = helm.values_from_yaml(pathlib.Path(f).read_text())
        values = deep_merge(values, merged)
    return values


def deep_merge(base, over):
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def documents(rendered):
    """(order, source, text) of every non-empty YAML document, in install order."""
    docs = []
    for source in sorted(rendered):
        if not source.endswith((".yaml", ".yml")):
            continue  # NOTES.txt, helpers
        for i, text in enumerate(SEPARATOR.split(rendered[source])):
            # Only the ends are trimmed: blank lines inside block scalars are content.
            body = text.strip()
            if not [l for l in body.splitlines() if not l.lstrip().startswith("#")]:
                continue
            m = KIND.search(body)
            kind = m.group(1) if m else ""
            rank = INSTALL_ORDER.index(kind) if kind in INSTALL_ORDER else len(INSTALL_ORDER)
            docs.append((rank, source, i, body))
    docs.sort(key=lambda d: (d[0], d[1], d[2]))
    return docs


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-f", "--values", action="append", default=[], help="values YAML file (repeatable)")
    p.add_argument("--chart", default=str(DEFAULT_CHART))
    p.add_argument("--name", default=DEFAULT_NAME, help="release name")
    p.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="release namespace")
    p.add_argument("--lint", action="store_true", help="print the lint report instead")
    a = p.parse_args()

    values = load_values(a.values)
    if a.lint:
        report = helm.lint(a.chart, values, namespace=a.namespace, strict=False)
        print(json.dumps(report, indent=2, sort_keys=True))
        errors = [m for m in report.get("messages", []) if m.get("severity", 0) >= 3]
        return 1 if errors or report.get("errors") else 0

    with helm.Chart.load(a.chart) as c:
        c.validate_schema(values)
        rendered = c.render(values, name=a.name, namespace=a.namespace, is_install=True)
    out = sys.stdout
    out.write(
        "# Rendered from charts/kitsune by charts/render.py "
        f"(release {a.name!r}, namespace {a.namespace!r}"
        + (f", values {', '.join(a.values)}" if a.values else ", default values")
        + "). Do not edit; regenerate with:\n"
        "#   .harness/venv/bin/python charts/render.py > manifests/install.yaml\n"
    )
    for _, source, _, body in documents(rendered):
        out.write(f"---\n# Source: {source}\n{body}\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except HelmError as e:
        sys.exit(f"charts/render.py: {type(e).__name__}: {e}")
