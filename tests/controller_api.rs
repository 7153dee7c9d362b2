//! `slimforge controller`, the real binary, against a RECORDING FAKE
//! Kubernetes API server (tests/support/fake_api.rs; the API server is the
//! only test double this project permits: none can run on this machine).
//! It records every request as the RBAC access it needs: (apiGroup,
//! resource[/subresource], verb). The record is then held against
//! `slimforge::controller::rbac`: every request must be granted (one that is
//! not would be Forbidden in a real cluster), and every granted verb must
//! have been used, but for a short list of explained exceptions.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use slimforge::controller::rbac;
use support::fake_api::{Access, Fake, Recorded, fake_with, start_api_server, write_kubeconfig};

/// How long anything may take to show up.
const PATIENCE: Duration = Duration::from_secs(30);

// ---- the controller process -------------------------------------------

/// The running `slimforge controller`; killed however the test ends.
struct ControllerProcess {
    child: Child,
    metrics: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ControllerProcess {
    fn start(api: SocketAddr, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let kubeconfig = write_kubeconfig(dir.path(), api);
        let metrics = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            probe.local_addr().expect("its address")
        };
        let log = std::fs::File::create(dir.path().join("stderr")).expect("the log file");
        let child = Command::new(env!("CARGO_BIN_EXE_slimforge"))
            .arg("controller")
            .args(["--helper-image", "example.invalid/slimforge:test"])
            .args(["--metrics-address", &metrics.to_string()])
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .env("SLIMFORGE_LOG", "info")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env_remove("WATCH_NAMESPACE")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .env_remove("SLIMFORGE_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start slimforge controller");
        ControllerProcess {
            child,
            metrics,
            dir,
        }
    }

    /// SIGTERM, as the kubelet sends it, then a bounded wait for the exit.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running {PATIENCE:?} after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// Fails the test, with the log, when the controller has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the controller exited ({status}):\n{}", self.log());
        }
    }

    /// Waits (bounded) until `check` holds; `Err` says what it saw last.
    async fn eventually(&mut self, what: &str, mut check: impl AsyncFnMut() -> Result<(), String>) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.assert_running();
            let seen = match check().await {
                Ok(()) => return,
                Err(seen) => seen,
            };
            assert!(
                Instant::now() < deadline,
                "not within {PATIENCE:?}: {what}\nlast seen: {seen}\ncontroller log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The holder of the `slimforge-controller` Lease in slimforge-system.
fn lease_holder(fake: &Fake) -> Option<String> {
    fake.object(
        "coordination.k8s.io",
        "leases",
        "slimforge-system",
        "slimforge-controller",
    )?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_string)
}

/// GET over plain HTTP/1.1: (status, content type, body).
async fn http_get(address: SocketAddr, path: &str) -> Option<(u16, String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let content_type = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    Some((status, content_type, body.to_string()))
}

// ---- RBAC --------------------------------------------------------------

/// What the rules grant, verb by verb.
fn granted() -> BTreeSet<Access> {
    rbac::granted()
        .map(|(group, resource, verb)| Access::new(group, resource, verb))
        .collect()
}

/// Every request was allowed by the rules; none of them is a wildcard.
fn assert_every_request_is_granted(requests: &[Recorded]) {
    for rule in rbac::rules() {
        let fields = rule
            .api_groups
            .iter()
            .flatten()
            .chain(rule.resources.iter().flatten())
            .chain(&rule.verbs);
        for field in fields {
            assert!(!field.contains('*'), "a wildcard in {rule:?}");
        }
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
    }
    let forbidden: Vec<String> = requests
        .iter()
        .filter(|r| !rbac::grants(&r.access.group, &r.access.resource, &r.access.verb))
        .map(|r| format!("{} {}?{} needs {:?}", r.method, r.path, r.query, r.access))
        .collect();
    assert!(
        forbidden.is_empty(),
        "requests a real cluster would forbid:\n{}",
        forbidden.join("\n")
    );
}

fn observed(requests: &[Recorded]) -> BTreeSet<Access> {
    requests.iter().map(|r| r.access.clone()).collect()
}

fn pods_of(fake: &Fake, namespace: &str, build: &str) -> usize {
    fake.labelled("pods", namespace, "slimforge.dev/build", build)
        .len()
}

fn claims_of(fake: &Fake, namespace: &str, build: &str) -> usize {
    fake.labelled(
        "persistentvolumeclaims",
        namespace,
        "slimforge.dev/build",
        build,
    )
    .len()
}

/// The namespace's new builds started (workspace, first pod, status
/// patched), and the expired build's leftovers are gone.
fn namespace_done(fake: &Fake, namespace: &str) -> Result<(), String> {
    let phase = |name: &str| {
        fake.object("slimforge.dev", "imagebuilds", namespace, name)
            .map(|b| b["status"]["phase"].clone())
    };
    let done = pods_of(fake, namespace, "goapp") >= 1
        && claims_of(fake, namespace, "goapp") == 1
        && pods_of(fake, namespace, "goapp-cm") >= 1
        && claims_of(fake, namespace, "goapp-cm") == 1
        && phase("goapp") == Some(json!("Running"))
        && phase("goapp-cm") == Some(json!("Running"))
        && pods_of(fake, namespace, "goapp-old") == 0
        && claims_of(fake, namespace, "goapp-old") == 0
        && fake.saw(
            "POST",
            &format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events"),
        );
    if done {
        return Ok(());
    }
    let world = fake.world();
    let names: Vec<String> = world
        .objects
        .keys()
        .filter(|(_, _, ns, _)| ns == namespace)
        .map(|(_, resource, _, name)| format!("{resource}/{name}"))
        .collect();
    Err(format!("objects in {namespace}: {names:?}"))
}

/// The status code of GET `path`, 200 or an error naming it.
async fn answers_ok(address: SocketAddr, path: &str) -> Result<(), String> {
    match http_get(address, path).await {
        Some((200, _, _)) => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

// ---- the tests ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_leads_builds_and_asks_only_for_what_rbac_grants() {
    let fake = fake_with(&["demo", "elsewhere"]);
    let api = start_api_server(fake.clone()).await;
    let mut controller = ControllerProcess::start(
        api,
        &[
            "--leader-election",
            "--lease-namespace",
            "slimforge-system",
            "--namespace",
            "demo",
            "--log-format",
            "json",
        ],
    );
    let metrics = controller.metrics;

    controller
        .eventually("/healthz answers 200", async || {
            answers_ok(metrics, "/healthz").await
        })
        .await;
    controller
        .eventually("/readyz answers 200", async || {
            answers_ok(metrics, "/readyz").await
        })
        .await;
    let own = format!("slimforge-{}", controller.child.id());
    controller
        .eventually("the Lease in slimforge-system is held", async || {
            lease_holder(&fake)
                .filter(|h| *h == own)
                .map(|_| ())
                .ok_or(format!("{:?}", lease_holder(&fake)))
        })
        .await;
    controller
        .eventually(
            "the builds in demo start, the expired one is cleaned up",
            async || namespace_done(&fake, "demo"),
        )
        .await;
    // The build counters are there from the start, at 0: no build has
    // finished under this process.
    controller
        .eventually("/metrics serves OpenMetrics text", async || {
            let answer = http_get(metrics, "/metrics").await;
            match &answer {
                Some((200, content_type, body))
                    if content_type.starts_with("application/openmetrics-text")
                        && body.contains("\nslimforge_builds_in_flight 2\n")
                        && body.contains("\nslimforge_builds_total{result=\"failed\"} 0\n")
                        && body.contains("# TYPE slimforge_builds_in_flight gauge")
                        && body.contains("# TYPE slimforge_build_duration_seconds histogram")
                        && body.ends_with("# EOF\n") =>
                {
                    Ok(())
                }
                _ => Err(format!("{answer:?}")),
            }
        })
        .await;
    let log = controller.log();
    drop(controller);

    let requests = fake.requests();
    eprintln!("observed: {:#?}", observed(&requests));
    assert_every_request_is_granted(&requests);
    // Nothing outside the watched namespace, and nothing cluster-wide but
    // what leader election needs in its own namespace.
    for request in &requests {
        let allowed = ["/namespaces/demo/", "/namespaces/slimforge-system/leases"];
        assert!(
            allowed.iter().any(|a| request.path.contains(a)),
            "{} {} is outside the namespaces given",
            request.method,
            request.path
        );
    }
    assert_eq!(pods_of(&fake, "elsewhere", "goapp"), 0);
    let status_patch = requests
        .iter()
        .find(|r| r.path == "/apis/slimforge.dev/v1alpha1/namespaces/demo/imagebuilds/goapp/status")
        .expect("the status was patched");
    assert!(
        status_patch.query.contains("fieldManager=slimforge")
            && status_patch.query.contains("force=true"),
        "server-side apply under our field manager: {}",
        status_patch.query
    );

    // Every granted verb is used, but for these, which this run can't show:
    let exceptions = BTreeSet::from([
        // Never sent by the controller: the API server checks it on the owner
        // when a pod or claim it creates has blockOwnerDeletion (OpenShift).
        Access::new("slimforge.dev", "imagebuilds/finalizers", "update"),
        // kube's Recorder patches an event only when the same one repeats.
        Access::new("events.k8s.io", "events", "patch"),
    ]);
    let unused: BTreeSet<Access> = granted()
        .difference(&observed(&requests))
        .cloned()
        .collect();
    assert_eq!(
        unused,
        exceptions,
        "granted but not used (observed: {:#?})",
        observed(&requests)
    );

    // --log-format json: one JSON object a line.
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let entry: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            entry["level"].is_string() && entry["fields"].is_object(),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_namespace_the_controller_watches_the_whole_cluster() {
    let fake = fake_with(&["demo", "team-b"]);
    let api = start_api_server(fake.clone()).await;
    let mut controller = ControllerProcess::start(api, &[]);
    controller
        .eventually("the builds of both namespaces start", async || {
            namespace_done(&fake, "demo").and(namespace_done(&fake, "team-b"))
        })
        .await;
    drop(controller);

    let requests = fake.requests();
    assert_every_request_is_granted(&requests);
    for path in [
        "/apis/slimforge.dev/v1alpha1/imagebuilds",
        "/api/v1/pods",
        "/api/v1/persistentvolumeclaims",
    ] {
        let verbs: BTreeSet<&str> = requests
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.access.verb.as_str())
            .collect();
        assert_eq!(verbs, BTreeSet::from(["list", "watch"]), "{path}");
    }
    assert!(
        !requests.iter().any(|r| r.path.contains("/leases")),
        "no Lease without --leader-election"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_list_runs_one_controller_per_namespace() {
    let fake = fake_with(&["demo", "team-b", "elsewhere"]);
    let api = start_api_server(fake.clone()).await;
    let mut controller = ControllerProcess::start(api, &["--namespace", " demo,team-b,"]);
    controller
        .eventually("the builds of demo and team-b start", async || {
            namespace_done(&fake, "demo").and(namespace_done(&fake, "team-b"))
        })
        .await;
    drop(controller);

    let requests = fake.requests();
    assert_every_request_is_granted(&requests);
    for request in &requests {
        assert!(
            request.path.contains("/namespaces/demo/")
                || request.path.contains("/namespaces/team-b/"),
            "{} {} is outside the namespaces given",
            request.method,
            request.path
        );
    }
    for namespace in ["demo", "team-b"] {
        let watched: BTreeSet<&str> = requests
            .iter()
            .filter(|r| {
                r.access.verb == "watch" && r.path.contains(&format!("/namespaces/{namespace}/"))
            })
            .map(|r| r.access.resource.as_str())
            .collect();
        assert_eq!(
            watched,
            BTreeSet::from(["imagebuilds", "persistentvolumeclaims", "pods"]),
            "{namespace}"
        );
    }
    assert_eq!(pods_of(&fake, "elsewhere", "goapp"), 0);
    assert_eq!(pods_of(&fake, "elsewhere", "goapp-old"), 1);
}

/// Two replicas: the standby is ready (a rollout must not wait for it to
/// lead) but builds nothing, stops at once on SIGTERM, and the leader gives
/// the Lease up when it stops, so a standby takes over without waiting for
/// the Lease to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_replica_is_ready_and_the_leader_releases_the_lease_on_sigterm() {
    let fake = fake_with(&["demo"]);
    let api = start_api_server(fake.clone()).await;
    let args = [
        "--leader-election",
        "--lease-namespace",
        "slimforge-system",
        "--namespace",
        "demo",
    ];
    let mut leader = ControllerProcess::start(api, &args);
    let leader_id = format!("slimforge-{}", leader.child.id());
    leader
        .eventually("the first replica leads", async || {
            match lease_holder(&fake) {
                Some(h) if h == leader_id => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    leader
        .eventually("the leader starts the builds", async || {
            namespace_done(&fake, "demo")
        })
        .await;

    let mut standby = ControllerProcess::start(api, &args);
    let standby_metrics = standby.metrics;
    standby
        .eventually("the standby answers /readyz", async || {
            answers_ok(standby_metrics, "/readyz").await
        })
        .await;
    assert_eq!(lease_holder(&fake).as_deref(), Some(leader_id.as_str()));
    let status = standby.terminate();
    assert!(status.success(), "{status}:\n{}", standby.log());
    assert!(
        standby.log().contains("stopped before leading"),
        "{}",
        standby.log()
    );

    let status = leader.terminate();
    assert!(status.success(), "{status}:\n{}", leader.log());
    assert_eq!(
        lease_holder(&fake),
        None,
        "the Lease is released: {:?}",
        fake.object(
            "coordination.k8s.io",
            "leases",
            "slimforge-system",
            "slimforge-controller"
        )
    );
}
