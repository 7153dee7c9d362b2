//! The whole path in a REAL cluster: kind with its local-registry recipe,
//! the controller running in this test process against it. Runs only when
//! `SLIMFORGE_E2E_KUBECONFIG` is set (see .github/workflows/e2e.yaml, which
//! creates the cluster); skipped otherwise — this machine has no Kubernetes.
//!
//! Also needed: `SLIMFORGE_E2E_REGISTRY` (the registry as pods and the
//! kubelet both name it, e.g. `kind-registry:5000`, holding `golang:e2e`
//! and `busybox:e2e`) and `SLIMFORGE_E2E_HELPER_IMAGE` (the operator image).
//! With `SLIMFORGE_E2E_INSTALLED` set, no controller runs here: the one the
//! Helm chart installed in the cluster does the work, under its RBAC.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;
use slimforge::api::{ImageBuild, Phase};
use slimforge::controller::Settings;
use slimforge::controller::run::{ControllerOptions, run_with};

const APP: &str = include_str!("fixtures/seed/app.go");

async fn wait_for(api: &Api<ImageBuild>, name: &str, generation: i64) -> ImageBuild {
    for _ in 0..300 {
        let ib = api.get(name).await.expect("get the ImageBuild");
        if let Some(status) = &ib.status
            && status.observed_generation == Some(generation)
            && status.phase.is_some_and(Phase::is_terminal)
        {
            return ib;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    panic!("{name} did not finish generation {generation} in 10 minutes");
}

#[tokio::test]
async fn the_seed_builds_in_a_real_cluster() {
    let Ok(kubeconfig) = std::env::var("SLIMFORGE_E2E_KUBECONFIG") else {
        eprintln!("skipped: SLIMFORGE_E2E_KUBECONFIG is not set (needs a real cluster)");
        return;
    };
    let registry = std::env::var("SLIMFORGE_E2E_REGISTRY").expect("SLIMFORGE_E2E_REGISTRY");
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&kubeconfig).expect("read the kubeconfig"),
        &KubeConfigOptions::default(),
    )
    .await
    .expect("kubeconfig");
    let client = Client::try_from(config).expect("client");

    let namespace = format!("slimforge-e2e-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": namespace,
                "labels": {"pod-security.kubernetes.io/enforce": "baseline"}}}))
            .unwrap(),
        )
        .await
        .expect("create the namespace");

    let controller = match std::env::var_os("SLIMFORGE_E2E_INSTALLED") {
        Some(_) => None,
        None => Some(tokio::spawn(run_with(
            client.clone(),
            ControllerOptions {
                settings: Settings {
                    helper_image: std::env::var("SLIMFORGE_E2E_HELPER_IMAGE")
                        .expect("SLIMFORGE_E2E_HELPER_IMAGE"),
                    ..Settings::default()
                },
                namespaces: vec![namespace.clone()],
                metrics_address: "127.0.0.1:0".parse().unwrap(),
                leader_election: None,
                concurrency: 16,
            },
        ))),
    };

    let dockerfile = format!(
        "FROM {registry}/golang:e2e AS builder\nCOPY app.go .\nRUN CGO_ENABLED=0 go build app.go\n\nFROM {registry}/busybox:e2e\nCOPY --from=builder /go/app .\nCMD [\"./app\"]\n"
    );
    let api: Api<ImageBuild> = Api::namespaced(client.clone(), &namespace);
    let ib = json!({
        "apiVersion": "slimforge.dev/v1alpha1", "kind": "ImageBuild",
        "metadata": {"name": "goapp"},
        "spec": {
            "context": {"inline": {"app.go": APP}},
            "dockerfile": dockerfile,
            "output": {"image": format!("{registry}/goapp:e2e"), "insecure": true},
            "timeout": "8m",
            "ttlSecondsAfterFinished": 60,
        },
    });
    let params = PatchParams::apply("slimforge-e2e");
    api.patch("goapp", &params, &Patch::Apply(&ib))
        .await
        .expect("apply the ImageBuild");
    let done = wait_for(&api, "goapp", 1).await;
    let status = done.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
    let image = status.image.expect("status.image");
    assert!(image.reference.contains("@sha256:"));
    assert!(image.builder_size_bytes.unwrap_or(0) > image.size_bytes);

    // Re-applied unchanged: no rebuild. Edited: a new generation, built.
    api.patch("goapp", &params, &Patch::Apply(&ib))
        .await
        .unwrap();
    assert_eq!(api.get("goapp").await.unwrap().metadata.generation, Some(1));
    let mut edited = ib.clone();
    edited["spec"]["buildArgs"] = json!({"EDITED": "1"});
    api.patch("goapp", &params, &Patch::Apply(&edited))
        .await
        .unwrap();
    let rebuilt = wait_for(&api, "goapp", 2).await;
    assert_eq!(rebuilt.status.unwrap().phase, Some(Phase::Succeeded));

    if let Some(controller) = controller {
        controller.abort();
    }
    let _ = namespaces
        .delete(&namespace, &DeleteParams::default())
        .await;
}
