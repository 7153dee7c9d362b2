//! The Kubernetes tools from PyPI, driven through tests/support/k8s.py with
//! the venv's Python (scripts/install-deps makes `<cache>/venv`, pinned in
//! tests/requirements.txt): Helm 4's engine, kubectl's kustomize and the
//! Kubernetes OpenAPI schemas.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

/// The Kubernetes release whose schemas the objects must satisfy.
pub const KUBE_VERSION: &str = "1.37.0";
pub const NAMESPACE: &str = "slimforge-system";

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs `tests/support/k8s.py COMMAND ARGS…` with the venv's Python.
pub fn k8s_tool(args: &[&str], stdin: Option<&Value>) -> Value {
    let python = super::cache_dir().join("venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-deps",
        python.display()
    );
    let input = stdin
        .map(std::string::ToString::to_string)
        .unwrap_or_default();
    let out = super::run_with_stdin(
        Command::new(&python)
            .arg(repo("tests/support/k8s.py"))
            .args(args),
        &input,
    );
    assert!(
        out.status.success(),
        "k8s.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("k8s.py prints JSON")
}

pub struct Rendered {
    pub objects: Vec<Value>,
    pub crds: Vec<Value>,
    pub notes: String,
}

/// The chart rendered by Helm's engine as `helm install sf … -n
/// slimforge-system` would, after checking `values` against
/// values.schema.json; `Err` is Helm's message.
pub fn render(values: &Value) -> Result<Rendered, String> {
    let chart = repo("charts/slimforge");
    let out = k8s_tool(
        &[
            "render",
            chart.to_str().unwrap(),
            "sf",
            NAMESPACE,
            &values.to_string(),
        ],
        None,
    );
    if let Some(error) = out["error"].as_str() {
        return Err(error.to_string());
    }
    Ok(Rendered {
        objects: out["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["object"].clone())
            .collect(),
        crds: out["crds"].as_array().unwrap().clone(),
        notes: out["notes"].as_str().unwrap_or_default().to_string(),
    })
}

pub fn kustomize() -> Vec<Value> {
    let base = repo("deploy/base");
    k8s_tool(&["kustomize", base.to_str().unwrap()], None)["objects"]
        .as_array()
        .unwrap()
        .clone()
}

/// Each object checked against its kind's OpenAPI schema (strict: unknown
/// fields are errors). Returns (kind/name, error) for every failure.
pub fn schema_errors(objects: &[Value]) -> Vec<(String, String)> {
    let results = k8s_tool(&["validate", KUBE_VERSION], Some(&json!(objects)));
    results
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !r["error"].is_null())
        .map(|r| {
            (
                format!("{}/{}", r["kind"].as_str().unwrap(), r["name"]),
                r["error"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}
