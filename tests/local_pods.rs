//! The Pod specs `slimforge build` hands to podman differ from the
//! cluster's by exactly the documented list, and nothing else.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;
use slimforge::api::ImageBuild;
use slimforge::controller::Settings;
use slimforge::controller::pods::{BuildObjects, UnitKind, build_units};
use slimforge::controller::reconcile::validate;
use slimforge::local::pods::{LOCAL_DIFFERENCES, LocalPodInputs, local_pod, uses_host_network};

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

/// A git context: the context pod comes first and sees the git credentials.
const GIT_BUILD: &str = r#"
apiVersion: slimforge.dev/v1alpha1
kind: ImageBuild
metadata: {name: goapp, namespace: demo, uid: u-1, generation: 1}
spec:
  context:
    git: {url: "git://127.0.0.1:9418/repo", revision: release, subPath: app, credentialsSecret: git-creds}
  dockerfile: |
    FROM golang AS builder
    COPY app.go .
    RUN go build app.go
    FROM busybox
    COPY --from=builder /go/app /usr/local/bin/app
    CMD ["app"]
  output: {image: "127.0.0.1:5000/goapp:v1", insecure: true}
"#;

/// RUN mounts: a build secret from `--secret` and a memory volume.
const MOUNTS_BUILD: &str = r#"
apiVersion: slimforge.dev/v1alpha1
kind: ImageBuild
metadata: {name: goapp, namespace: demo, uid: u-1, generation: 1}
spec:
  context:
    inline: {app.go: "package main"}
  dockerfile: |
    FROM golang AS builder
    COPY app.go .
    RUN --mount=type=secret,id=token,required --mount=type=cache,target=/root/.cache/go-build go build app.go
    FROM busybox
    COPY --from=builder /go/app /usr/local/bin/app
  secrets: [{id: token, secretRef: {name: tokens, key: token}}]
  output: {image: "127.0.0.1:5000/goapp:v1", insecure: true}
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
                    if p["name"] == q["name"]
                        && (p.get("secret").is_some() || p.get("projected").is_some())
                    {
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
    let listed: BTreeSet<String> = LOCAL_DIFFERENCES
        .iter()
        .map(|d| d.path.to_string())
        .collect();
    let mut seen = BTreeSet::new();
    for manifest in [BUILD, GIT_BUILD, MOUNTS_BUILD] {
        seen.extend(local_differences(manifest, &listed));
    }
    assert_eq!(seen, listed, "every listed difference is real");
}

#[test]
fn the_context_pod_runs_with_the_host_network_and_the_chains_without() {
    let ib: ImageBuild = serde_yaml::from_str(GIT_BUILD).unwrap();
    let settings = Settings::default();
    let validated = validate(&ib, &settings, None).unwrap();
    let objects = BuildObjects {
        ib: &ib,
        plan: Some(&validated.plan),
        settings: &settings,
        generation: 1,
        rebuild: 0,
        deadline_seconds: 1800,
        cache: None,
    };
    let inputs = LocalPodInputs {
        auth_dir: None,
        config_map: None,
        git_credentials_dir: Some(Path::new("/tmp/git-credentials")),
        secrets_dir: Some(Path::new("/dev/shm/slimforge-secrets-x")),
    };
    for unit in build_units(&ib, &validated.plan) {
        let local = local_pod(&objects.pod(&unit, 0, None), &inputs);
        let host = uses_host_network(&local);
        match unit.kind {
            UnitKind::Context | UnitKind::Assemble => assert!(host, "{}", unit.name),
            _ => assert!(!host, "{}", unit.name),
        }
        let volumes = serde_json::to_value(&local.spec.unwrap().volumes).unwrap();
        let credentials = volumes
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "git-credentials");
        match unit.kind {
            UnitKind::Context => assert_eq!(
                credentials.unwrap()["hostPath"]["path"],
                "/tmp/git-credentials"
            ),
            _ => assert!(
                credentials.is_none(),
                "{} sees the git credentials",
                unit.name
            ),
        }
    }
}

/// Where the local pods of `manifest` differ from the cluster's; each path must be listed.
fn local_differences(manifest: &str, listed: &BTreeSet<String>) -> BTreeSet<String> {
    let ib: ImageBuild = serde_yaml::from_str(manifest).unwrap();
    let settings = Settings::default();
    let validated = validate(&ib, &settings, None).unwrap();
    let objects = BuildObjects {
        ib: &ib,
        plan: Some(&validated.plan),
        settings: &settings,
        generation: 1,
        rebuild: 0,
        deadline_seconds: 1800,
        cache: None,
    };
    let inputs = LocalPodInputs {
        auth_dir: Some(Path::new("/tmp/auth")),
        config_map: Some("goapp-g1-context"),
        git_credentials_dir: Some(Path::new("/tmp/git-credentials")),
        secrets_dir: Some(Path::new("/dev/shm/slimforge-secrets-x")),
    };
    let mut seen = BTreeSet::new();
    for unit in build_units(&ib, &validated.plan) {
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
    seen
}
