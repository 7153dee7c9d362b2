//! The build's Pod specs keep the promises of the design: no privileged
//! pod, RuntimeDefault seccomp, deadlines, a platform nodeSelector, user
//! code without service-account tokens, and push credentials only in the
//! non-root, read-only assemble pod.

use serde_json::Value;
use slimforge::api::ImageBuild;
use slimforge::controller::Settings;
use slimforge::controller::pods::{
    BuildObjects, UnitKind, restricted_container_security, restricted_pod_security, units,
};
use slimforge::controller::reconcile::validate;

const BUILD: &str = r#"
apiVersion: slimforge.dev/v1alpha1
kind: ImageBuild
metadata: {name: app, namespace: demo, uid: u-1, generation: 3}
spec:
  context: {inline: {"app.go": "package main"}}
  dockerfile: |
    FROM golang AS builder
    COPY app.go .
    RUN go build app.go
    FROM rust AS tool
    RUN echo tool > /tool
    FROM busybox
    COPY --from=builder /go/app /app
    COPY --from=tool /tool /tool
    COPY --from=registry.example/certs:1 /etc/ssl/certs /etc/ssl/certs
    CMD ["/app"]
  platform: linux/arm64
  output: {image: "registry.example/app:v1", pushSecret: regcred}
  podTemplate:
    nodeSelector: {pool: builds}
    serviceAccountName: builder
    imagePullSecrets: [{name: pull}]
  resources: {limits: {memory: 2Gi}}
"#;

fn pods() -> Vec<(UnitKind, Value)> {
    let ib: ImageBuild = serde_yaml::from_str(BUILD).unwrap();
    let settings = Settings::default();
    let plan = validate(&ib, &settings, None).unwrap().plan;
    let objects = BuildObjects {
        ib: &ib,
        plan: Some(&plan),
        settings: &settings,
        generation: 3,
        rebuild: 0,
        deadline_seconds: 900,
        cache: None,
    };
    units(&plan)
        .into_iter()
        .map(|u| {
            let pod = serde_json::to_value(objects.pod(&u, 0, None)).unwrap();
            (u.kind, pod)
        })
        .collect()
}

fn containers(pod: &Value) -> Vec<&Value> {
    let spec = &pod["spec"];
    spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["containers"].as_array().unwrap())
        .collect()
}

#[test]
fn every_pod_has_the_build_wide_settings() {
    let pods = pods();
    let roles: Vec<&str> = pods.iter().map(|(k, _)| k.role()).collect();
    assert_eq!(roles, ["extraction", "chain", "chain", "probe", "assemble"]);
    for (n, (_, pod)) in pods.iter().enumerate() {
        assert_eq!(pod["metadata"]["name"], format!("app-g3-{}", n + 1));
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(spec["activeDeadlineSeconds"], 900);
        assert_eq!(
            spec["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(spec["nodeSelector"]["kubernetes.io/arch"], "arm64");
        assert_eq!(spec["nodeSelector"]["kubernetes.io/os"], "linux");
        assert_eq!(spec["nodeSelector"]["pool"], "builds");
        assert_eq!(spec["imagePullSecrets"][0]["name"], "pull");
        assert_eq!(spec["enableServiceLinks"], false);
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(pod["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(pod["metadata"]["labels"]["slimforge.dev/generation"], "3");
        for container in containers(pod) {
            assert_ne!(container["securityContext"]["privileged"], true);
            assert_eq!(
                container["terminationMessagePolicy"],
                "FallbackToLogsOnError"
            );
        }
    }
}

#[test]
fn push_credentials_reach_only_the_assemble_pod() {
    for (kind, pod) in pods() {
        let text = pod.to_string();
        let has_secret = text.contains("regcred");
        assert_eq!(
            has_secret,
            kind == UnitKind::Assemble,
            "{}: the push Secret appears only in the assemble pod",
            kind.role()
        );
    }
}

#[test]
fn the_assemble_pod_is_restricted() {
    let pods = pods();
    let (_, pod) = pods.iter().find(|(k, _)| *k == UnitKind::Assemble).unwrap();
    assert!(
        pod["spec"]["initContainers"]
            .as_array()
            .is_none_or(std::vec::Vec::is_empty)
    );
    let main = &pod["spec"]["containers"][0]["securityContext"];
    assert_eq!(main["runAsNonRoot"], true);
    assert_ne!(main["runAsUser"], 0);
    assert_eq!(main["readOnlyRootFilesystem"], true);
    assert_eq!(main["allowPrivilegeEscalation"], false);
    assert_eq!(main["capabilities"]["drop"][0], "ALL");
    let command: Vec<&str> = pod["spec"]["containers"][0]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        command
            .windows(2)
            .any(|w| w == ["--image", "registry.example/app:v1"])
    );
    assert!(
        command
            .windows(2)
            .any(|w| w == ["--builder-image", "golang"])
    );
}

#[test]
fn the_assemble_pod_has_the_shared_restricted_security_contexts() {
    let pods = pods();
    let (_, pod) = pods.iter().find(|(k, _)| *k == UnitKind::Assemble).unwrap();
    assert_eq!(
        pod["spec"]["securityContext"],
        serde_json::to_value(restricted_pod_security()).unwrap()
    );
    assert_eq!(
        pod["spec"]["containers"][0]["securityContext"],
        serde_json::to_value(restricted_container_security()).unwrap()
    );
}

#[test]
fn chain_pods_run_the_stage_image_as_root_after_install_and_whoami() {
    let pods = pods();
    let chains: Vec<&Value> = pods
        .iter()
        .filter(|(k, _)| k.role() == "chain")
        .map(|(_, p)| p)
        .collect();
    let pod = chains[0];
    let init: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(init, ["install", "whoami"]);
    assert_eq!(pod["spec"]["initContainers"][1]["image"], "golang");
    assert!(
        pod["spec"]["initContainers"][1]["securityContext"]["runAsUser"].is_null(),
        "whoami runs as the image's own user"
    );
    let main = &pod["spec"]["containers"][0];
    assert_eq!(main["image"], "golang");
    assert_eq!(main["securityContext"]["runAsUser"], 0);
    assert_eq!(main["resources"]["limits"]["memory"], "2Gi");
    let env: Vec<&str> = main["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        env,
        ["SLIMFORGE_PLAN", "SLIMFORGE_CONTEXT"],
        "the builder copies from the context"
    );
    // The second chain copies nothing from the context.
    let env: Vec<&str> = chains[1]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(env, ["SLIMFORGE_PLAN"]);
}
