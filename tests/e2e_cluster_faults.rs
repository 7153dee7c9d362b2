//! Faults on the REAL single-node cluster of `scripts/cluster`, each while a
//! build of the installed operator runs: the registry stopped (during a
//! stage, during the assembly's push), a stage pod deleted by hand, the
//! kubelet and containerd restarted, kube-apiserver restarted, the
//! ImageBuild deleted; and ten builds applied at once.
//!
//! These tests stop parts of the cluster every other cluster test needs:
//! `scripts/test` runs this binary in a pass of its own, one test at a time,
//! after `e2e_cluster` and before `e2e_cluster_after` (whose audit of the
//! operator's requests covers these runs too). A stopped component is
//! started again however a test ends.

mod support;

use std::process::Command;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};
use support::cluster::{Cluster, TestNamespace, apply, get_json, ready_condition};
use support::k8s::repo;
use support::{http_request, run_any, run_ok};

/// Every build here is small: this bounds a hang, not a duration.
const FINISH: Duration = Duration::from_secs(300);
/// How long a stage runs, so that a fault lands inside it.
const STAGE_SECONDS: u32 = 20;

fn operator_and_namespace(prefix: &str) -> (&'static Cluster, TestNamespace) {
    let cluster = Cluster::get();
    cluster.operator();
    let ns = cluster.namespace(prefix, "baseline");
    (cluster, ns)
}

/// A two-stage busybox build whose builder stage runs `run`.
fn build_with(cluster: &Cluster, name: &str, run: &str) -> Value {
    let (_, busybox) = cluster.base_images();
    json!({
        "apiVersion": "slimforge.dev/v1alpha1", "kind": "ImageBuild",
        "metadata": {"name": name},
        "spec": {
            "context": {"inline": {"hello.txt": "hello\n"}},
            "dockerfile": format!("FROM {busybox} AS build\nRUN {run}\n\nFROM {busybox}\nCOPY --from=build /out /out\nCOPY hello.txt /\n"),
            "output": {"image": format!("{}/faults/{name}:v1", cluster.registry), "insecure": true},
            // A stage cache of this run's own: the pods these tests disrupt
            // run however often the tests ran on this registry.
            "cache": {"repository": format!("{}/faults/cache-{}", cluster.registry, run_id())},
            "timeout": "10m",
            "ttlSecondsAfterFinished": 3600,
        },
    })
}

/// This test process's own name, for its cache repository.
fn run_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| support::unique_name("run"))
}

/// A build whose builder stage sleeps [`STAGE_SECONDS`].
fn slow_build(cluster: &Cluster, name: &str) -> Value {
    build_with(
        cluster,
        name,
        &format!("sleep {STAGE_SECONDS} && echo done > /out"),
    )
}

/// `get_json`, or `None` while kube-apiserver does not answer.
fn try_get_json(cluster: &Cluster, ns: &TestNamespace, what: &[&str]) -> Option<Value> {
    let mut args = vec!["-n", ns.name.as_str(), "get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", "json", "--request-timeout=5s"]);
    let out = cluster.kubectl(&args);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

fn items(list: Option<Value>) -> Option<Vec<Value>> {
    list?["items"].as_array().cloned()
}

/// Waits until the ImageBuild is Succeeded or Failed; returns it.
fn wait_finished(cluster: &Cluster, ns: &TestNamespace, name: &str) -> Value {
    let mut last = Value::Null;
    let what = format!("{name} to finish (Succeeded or Failed)");
    let deadline = std::time::Instant::now() + FINISH;
    loop {
        if let Some(ib) = try_get_json(cluster, ns, &["imagebuild", name]) {
            if matches!(ib["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) {
                return ib;
            }
            last = ib["status"].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {FINISH:?}; the build hangs with status {last}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The pods of role `role` (`chain`, `assemble`, …) in `ns`.
fn pods_of_role(cluster: &Cluster, ns: &TestNamespace, role: &str) -> Option<Vec<Value>> {
    items(try_get_json(
        cluster,
        ns,
        &["pods", "-l", &format!("slimforge.dev/role={role}")],
    ))
}

/// Waits until a pod of role `role` runs; its name.
fn wait_running(cluster: &Cluster, ns: &TestNamespace, role: &str) -> String {
    cluster.wait(
        &format!("a {role} pod to run"),
        Duration::from_secs(180),
        || {
            pods_of_role(cluster, ns, role)?
                .iter()
                .find(|p| p["status"]["phase"] == "Running")
                .and_then(|p| p["metadata"]["name"].as_str().map(str::to_string))
        },
    )
}

/// Whether the registry serves the manifest `reference` (`host/repo@digest`).
fn registry_has(cluster: &Cluster, reference: &str) -> bool {
    let rest = reference
        .strip_prefix(&format!("{}/", cluster.registry))
        .unwrap_or_else(|| panic!("{reference} is not in {}", cluster.registry));
    let (repository, digest) = rest.split_once('@').expect("a digest reference");
    let url = format!(
        "http://{}/v2/{repository}/manifests/{digest}",
        cluster.registry
    );
    let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
    http_request("HEAD", &url, &[("Accept", accept)], b"").is_ok_and(|r| r.status == 200)
}

/// A Succeeded build: its image is in the registry, at the digest reported.
fn assert_pushed(cluster: &Cluster, done: &Value) {
    assert_eq!(done["status"]["phase"], "Succeeded", "{}", done["status"]);
    let ready = ready_condition(done).expect("a Ready condition");
    assert_eq!(ready["status"], "True", "{ready}");
    let reference = done["status"]["image"]["reference"]
        .as_str()
        .unwrap_or_else(|| panic!("Succeeded without status.image: {}", done["status"]));
    assert!(
        registry_has(cluster, reference),
        "reported Succeeded with {reference}, which the registry does not hold"
    );
}

/// Waits until `ns` holds neither pods nor claims.
fn wait_nothing_left(cluster: &Cluster, ns: &TestNamespace, after: &str) {
    let mut left = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let pods = items(try_get_json(cluster, ns, &["pods"]));
        let claims = items(try_get_json(cluster, ns, &["persistentvolumeclaims"]));
        if let (Some(pods), Some(claims)) = (pods, claims) {
            if pods.is_empty() && claims.is_empty() {
                return;
            }
            left = pods
                .iter()
                .chain(&claims)
                .map(|o| format!("{} {}", o["kind"], o["metadata"]["name"]))
                .collect();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{after}: still left after 180 s: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// No pod of the build is left running or waiting.
fn assert_no_pod_active(cluster: &Cluster, ns: &TestNamespace) {
    cluster.wait(
        "every pod to stop after the failure",
        Duration::from_secs(120),
        || {
            items(try_get_json(cluster, ns, &["pods"]))?
                .iter()
                .all(|p| {
                    matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
                        || p["metadata"]["deletionTimestamp"].is_string()
                })
                .then_some(())
        },
    );
}

/// `scripts/cluster ARGS`, panicking with its output unless it succeeds.
fn cluster_script(args: &[&str]) {
    run_ok(Command::new(repo("scripts/cluster")).args(args));
}

/// A component `scripts/cluster stop` stopped; started again when dropped,
/// so a failing test leaves the next one a whole cluster.
struct Stopped(&'static str);

impl Stopped {
    fn stop(name: &'static str) -> Stopped {
        cluster_script(&["stop", name]);
        Stopped(name)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // Refused (and harmless) when it runs already.
        let out = run_any(Command::new(repo("scripts/cluster")).args(["start", self.0]));
        if !std::thread::panicking() {
            assert!(
                out.status.success(),
                "start {} again: {}",
                self.0,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn the_registry_stopped_during_a_stage_fails_the_build_naming_the_registry() {
    let (cluster, ns) = operator_and_namespace("f-regstage");
    apply(cluster, &ns, &slow_build(cluster, "regstage"));
    wait_running(cluster, &ns, "chain");
    let registry = Stopped::stop("registry");

    let done = wait_finished(cluster, &ns, "regstage");
    // Up again before the assertions, as for any later test.
    drop(registry);
    eprintln!("registry stopped during a stage: {}", done["status"]);
    assert_eq!(done["status"]["phase"], "Failed", "{}", done["status"]);
    assert!(done["status"]["image"].is_null(), "{}", done["status"]);
    let ready = ready_condition(&done).expect("a Ready condition");
    assert_eq!(ready["status"], "False", "{ready}");
    let reason = ready["reason"].as_str().unwrap_or_default();
    assert!(
        ["AssembleFailed", "ImagePullFailed"].contains(&reason),
        "{ready}"
    );
    let message = ready["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&cluster.registry),
        "the message names no registry: {message}"
    );
    assert_eq!(cluster.kstatus(&done).0, "Failed", "{}", done["status"]);
    assert_no_pod_active(cluster, &ns);
}

#[test]
fn the_registry_stopped_during_the_assemblys_push_fails_the_build_naming_the_registry() {
    let (cluster, ns) = operator_and_namespace("f-regpush");
    // 150 MB of noise to compress and push: the assembly runs for seconds.
    apply(
        cluster,
        &ns,
        &build_with(cluster, "regpush", "head -c 150000000 /dev/urandom > /out"),
    );
    let assemble = wait_running(cluster, &ns, "assemble");
    let registry = Stopped::stop("registry");
    let phase = get_json(cluster, &ns, &["pod", &assemble])["status"]["phase"].clone();
    assert_eq!(
        phase, "Running",
        "the assembly ended before the registry stopped: the fault missed it"
    );

    let done = wait_finished(cluster, &ns, "regpush");
    drop(registry);
    eprintln!("registry stopped during the assembly: {}", done["status"]);
    // The pod may have pushed its last byte as the registry went: then the
    // image must be there. Otherwise the build failed, saying why.
    if done["status"]["phase"] == "Succeeded" {
        assert_pushed(cluster, &done);
        return;
    }
    assert_eq!(done["status"]["phase"], "Failed", "{}", done["status"]);
    assert!(done["status"]["image"].is_null(), "{}", done["status"]);
    let ready = ready_condition(&done).expect("a Ready condition");
    assert_eq!(ready["status"], "False", "{ready}");
    assert_eq!(ready["reason"], "AssembleFailed", "{ready}");
    let message = ready["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&cluster.registry),
        "the message names no registry: {message}"
    );
    assert_no_pod_active(cluster, &ns);
}

#[test]
fn a_stage_pod_deleted_by_hand_is_retried_and_the_build_succeeds() {
    let (cluster, ns) = operator_and_namespace("f-podgone");
    apply(cluster, &ns, &slow_build(cluster, "podgone"));
    let stage = wait_running(cluster, &ns, "chain");
    let uid = get_json(cluster, &ns, &["pod", &stage])["metadata"]["uid"].clone();
    // A one-second grace period: the stage's shell ignores SIGTERM, and with
    // the default 30 s its `sleep` would end before the kill.
    cluster.kubectl_ok(&[
        "-n",
        &ns.name,
        "delete",
        "pod",
        &stage,
        "--grace-period=1",
        "--wait=false",
    ]);

    let done = wait_finished(cluster, &ns, "podgone");
    assert_pushed(cluster, &done);
    // The stage ran again, in another pod: `-r1` when the controller saw the
    // killed pod Failed, the same name when it saw it only gone.
    let stages = done["status"]["stages"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let rerun = stages
        .iter()
        .find(|s| s["name"] == "build")
        .and_then(|s| s["pod"].as_str())
        .unwrap_or_else(|| panic!("no status for stage build: {stages:?}"))
        .to_string();
    let pod = get_json(cluster, &ns, &["pod", &rerun]);
    assert_ne!(
        pod["metadata"]["uid"], uid,
        "stage build's pod {rerun} is the one deleted"
    );
    assert_eq!(pod["status"]["phase"], "Succeeded", "{}", pod["status"]);
}

#[test]
fn the_kubelet_and_containerd_restarted_mid_stage_the_build_succeeds() {
    let (cluster, ns) = operator_and_namespace("f-node");
    apply(cluster, &ns, &slow_build(cluster, "node"));
    let stage = wait_running(cluster, &ns, "chain");
    cluster_script(&["restart", "kubelet", "containerd"]);
    // The stage was not over when the node came back.
    let pod = get_json(cluster, &ns, &["pod", &stage]);
    assert_eq!(pod["status"]["phase"], "Running", "{}", pod["status"]);

    let done = wait_finished(cluster, &ns, "node");
    assert_pushed(cluster, &done);
}

#[test]
fn kube_apiserver_restarted_mid_stage_the_controller_reconnects_and_the_build_succeeds() {
    let (cluster, ns) = operator_and_namespace("f-api");
    apply(cluster, &ns, &slow_build(cluster, "api"));
    wait_running(cluster, &ns, "chain");
    cluster_script(&["restart", "kube-apiserver"]);
    let back = Timestamp::now();

    let done = wait_finished(cluster, &ns, "api");
    assert_pushed(cluster, &done);
    // Finished after the restart: the controller saw the stage end and made
    // the assembly over new connections (to the second Kubernetes keeps).
    let finished: Timestamp = done["status"]["completionTime"]
        .as_str()
        .expect("status.completionTime")
        .parse()
        .expect("an RFC 3339 time");
    assert!(
        finished.as_second() >= back.as_second() - 1,
        "finished at {finished}, before kube-apiserver was back at {back}"
    );
}

#[test]
fn an_imagebuild_deleted_mid_stage_leaves_no_pod_and_no_claim() {
    let (cluster, ns) = operator_and_namespace("f-delete");
    apply(cluster, &ns, &slow_build(cluster, "delete"));
    wait_running(cluster, &ns, "chain");
    let claims = get_json(cluster, &ns, &["persistentvolumeclaims"]);
    assert_eq!(
        claims["items"].as_array().map(Vec::len),
        Some(1),
        "the build's workspace claim"
    );
    cluster.kubectl_ok(&[
        "-n",
        &ns.name,
        "delete",
        "imagebuild",
        "delete",
        "--wait=true",
    ]);
    wait_nothing_left(cluster, &ns, "the ImageBuild deleted mid-stage");
}

#[test]
fn ten_builds_at_once_all_succeed_and_their_ttl_leaves_nothing() {
    const BUILDS: usize = 10;
    let (cluster, ns) = operator_and_namespace("f-load");
    let names: Vec<String> = (0..BUILDS).map(|i| format!("load-{i}")).collect();
    let manifests: Vec<String> = names
        .iter()
        .map(|name| {
            let mut ib = build_with(cluster, name, &format!("echo {name} > /out"));
            ib["spec"]["ttlSecondsAfterFinished"] = json!(5);
            ib.to_string()
        })
        .collect();
    // One kubectl apply for all of them: they arrive at once.
    apply_all(cluster, &ns, &manifests.join("\n"));

    let mut failed = Vec::new();
    for name in &names {
        let done = wait_finished(cluster, &ns, name);
        if done["status"]["phase"] != "Succeeded" {
            failed.push(format!("{name}: {}", done["status"]));
            continue;
        }
        assert_pushed(cluster, &done);
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    wait_nothing_left(cluster, &ns, "the builds' TTL");
}

/// `kubectl apply` of several objects (JSON documents one after another).
fn apply_all(cluster: &Cluster, ns: &TestNamespace, documents: &str) {
    let out = cluster.kubectl_stdin(&["-n", &ns.name, "apply", "-f", "-"], documents);
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
