//! The Pod specs `slimforge build` hands to podman differ from the
//! cluster's by exactly the documented list, and nothing else.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;
use slimforge::api::ImageBuild;
use slimforge::controller::Settings;
use slimforge::controller::pods::{BuildObjects, units};
use slimforge::controller::reconcile::validate;
use slimforge::local::pods::{LOCAL_DIFFERENCES, LocalPodInputs, local_pod};

const BUILD: &str = r#"
apiVersion: slimforge.dev/v1alpha1
kind: ImageBuild
metadata: {name: goapp, namespace: demo, uid: u-1, generation: 1}
spec:
  context:
    configMap: {name: goapp-src, items: [{key: app.go, path: src/app.go}]}
  dockerfile: |
    FROM golang AS builder
    COPY src/app.go .
    RUN go build app.go
    FROM busybox
    COPY --from=builder /go/app /usr/local/bin/app
    CMD ["app"]
  output: {image: "127.0.0.1:5000/goapp:v1", pushSecret: regcred, insecure: true}
"#;

/// Every JSON path where two values differ; list items of named objects
/// are addressed by name (`volumes[helper]`), others by `*`.
fn differences(a: &Value, b: &Value, path: &str, out: &mut BTreeSet<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for key in keys {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                differences(
                    x.get(key).unwrap_or(&Value::Null),
                    y.get(key).unwrap_or(&Value::Null),
                    &child,
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (p, q) in x.iter().zip(y) {
                let name = p["name"].as_str().map(str::to_string);
                let child = match name {
                    Some(name) if path.ends_with("volumes") || path.ends_with("volumeMounts") => {
                        format!("{path}[{name}]")
                    }
                    _ => format!("{path}[*]"),
                };
                if p != q {
                    // A whole named item replaced counts as that item.
                    if p["name"] == q["name"] && p.get("secret").is_some() {
                        out.insert(child);
                        continue;
                    }
                    differences(p, q, &child, out);
                }
            }
        }
        _ if a != b => {
            out.insert(path.to_string());
        }
        _ => {}
    }
}

#[test]
fn local_pods_differ_from_the_cluster_by_exactly_the_listed_changes() {
    let ib: ImageBuild = serde_yaml::from_str(BUILD).unwrap();
    let settings = Settings::default();
    let validated = validate(&ib, &settings, None).unwrap();
    let objects = BuildObjects {
        ib: &ib,
        plan: &validated.plan,
        settings: &settings,
        generation: 1,
        deadline_seconds: 1800,
    };
    let inputs = LocalPodInputs {
        auth_dir: Some(Path::new("/tmp/auth")),
        config_map: Some("goapp-g1-context"),
    };
    let listed: BTreeSet<String> = LOCAL_DIFFERENCES
        .iter()
        .map(|d| d.path.to_string())
        .collect();
    let mut seen = BTreeSet::new();
    for unit in units(&validated.plan) {
        let cluster = objects.pod(&unit, 0, Some("node-a"));
        let local = local_pod(&cluster, &inputs);
        let mut diff = BTreeSet::new();
        differences(
            &serde_json::to_value(&cluster).unwrap(),
            &serde_json::to_value(&local).unwrap(),
            "",
            &mut diff,
        );
        for path in &diff {
            assert!(
                listed.contains(path),
                "{} differs locally at {path}, which LOCAL_DIFFERENCES does not list",
                unit.name
            );
        }
        seen.extend(diff);
    }
    assert_eq!(seen, listed, "every listed difference is real");
}
