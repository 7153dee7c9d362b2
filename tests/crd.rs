//! The ImageBuild CRD: the committed YAML is what the code generates, and
//! its CEL rules say what they mean (evaluated with kube's client-side CEL,
//! the same rules the API server runs).

use std::process::Command;

use serde_json::json;
use slimforge::api::{BuildContext, ImageBuildSpec, crd_yaml};

#[test]
fn committed_crd_matches_slimforge_crd() {
    let committed = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("crds/imagebuilds.slimforge.dev.yaml"),
    )
    .expect("crds/imagebuilds.slimforge.dev.yaml");
    let printed = Command::new(env!("CARGO_BIN_EXE_slimforge"))
        .arg("crd")
        .output()
        .expect("slimforge crd");
    assert!(printed.status.success());
    let printed = String::from_utf8(printed.stdout).unwrap();
    assert_eq!(printed, crd_yaml());
    assert!(
        committed == printed,
        "crds/ is stale: run `slimforge crd > crds/imagebuilds.slimforge.dev.yaml`"
    );
    // The Helm chart and the kustomize base ship their own copies (neither
    // may reach outside its directory).
    for copy in [
        "charts/slimforge/crds/imagebuilds.slimforge.dev.yaml",
        "deploy/base/imagebuilds.slimforge.dev.yaml",
    ] {
        let text =
            std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(copy))
                .unwrap_or_else(|e| panic!("{copy}: {e}"));
        assert!(
            text == printed,
            "{copy} is stale: run `slimforge crd > {copy}`"
        );
    }
}

#[test]
fn crd_has_short_name_printer_columns_and_status() {
    let crd: serde_yaml::Value = serde_yaml::from_str(&crd_yaml()).unwrap();
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "ib");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Phase", "Image", "Digest", "Size", "Age"]);
    assert!(version["subresources"]["status"].is_mapping());
    // Kubernetes warns about formats it does not know.
    assert!(!crd_yaml().contains("format: uint"));
}

#[test]
fn inline_context_is_capped_at_64_kib_by_cel() {
    let small = json!({"inline": {"app.go": "package main\n"}});
    assert!(BuildContext::validate_cel(&small, None).is_ok());
    let near = json!({"inline": {"a.txt": "x".repeat(30_000), "b.txt": "y".repeat(30_000)}});
    assert!(
        BuildContext::validate_cel(&near, None).is_ok(),
        "60 kB is allowed"
    );
    let big = json!({"inline": {"a.txt": "x".repeat(40_000), "b.txt": "y".repeat(30_000)}});
    let errors = BuildContext::validate_cel(&big, None).expect_err("70 kB of inline context");
    assert!(format!("{errors:?}").contains("64 KiB"), "{errors:?}");
}

#[test]
fn context_needs_exactly_one_source() {
    let none = json!({});
    assert!(BuildContext::validate_cel(&none, None).is_err());
    let two = json!({"inline": {"a": "b"}, "configMap": {"name": "src"}});
    let errors = BuildContext::validate_cel(&two, None).expect_err("two sources");
    assert!(
        format!("{errors:?}").contains("exactly one of inline"),
        "{errors:?}"
    );
}

#[test]
fn dockerfile_is_inline_or_a_path_not_both() {
    let base = |extra: serde_json::Value| {
        let mut spec = json!({"context": {"inline": {"a": "b"}}, "output": {"image": "r/x:1"}});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        spec
    };
    assert!(ImageBuildSpec::validate_cel(&base(json!({"dockerfile": "FROM x"})), None).is_ok());
    assert!(
        ImageBuildSpec::validate_cel(&base(json!({"dockerfilePath": "Dockerfile"})), None).is_ok()
    );
    assert!(ImageBuildSpec::validate_cel(&base(json!({})), None).is_err());
    assert!(
        ImageBuildSpec::validate_cel(
            &base(json!({"dockerfile": "FROM x", "dockerfilePath": "Dockerfile"})),
            None
        )
        .is_err()
    );
}
