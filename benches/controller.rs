//! The controller's footprint, for the Helm chart's resource defaults:
//! `slimforge controller` (release build, cluster-wide, no leader
//! election) against the recording fake API server of the tests
//! (tests/support/fake_api.rs; no real API server runs on this machine)
//! holding N namespaces, each with three ImageBuilds: two new ones (inline
//! and ConfigMap context) and one finished long ago whose TTL has expired
//! (its pod and claim are to be deleted).
//!
//! Measured per N: the time from start until every new build has its
//! workspace claim, its first pod and a `Running` status, and until every
//! expired build's leftovers are gone; the requests that took; and the
//! process's peak resident memory (VmHWM) and its resident memory once idle.
//!
//! Run with `cargo bench --bench controller` (default N = 10 100 1000), or
//! `cargo bench --bench controller -- 50 500`. The markdown report goes to
//! stdout and to `target/bench-results/controller.md`; progress to stderr.

#[path = "../tests/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::fake_api::{Fake, fake_with, start_api_server, write_kubeconfig};

/// Never wait longer than this for one size.
const PATIENCE: Duration = Duration::from_secs(300);

struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A field of /proc/PID/status, in kB.
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Whether the controller has done everything it can in this world (one
/// pass over it, so the fake API is not held up).
fn settled(fake: &Fake, namespaces: &[String]) -> bool {
    use std::collections::BTreeSet;
    let world = fake.world();
    let mut running = BTreeSet::new();
    let mut with_pods = BTreeSet::new();
    let mut leftovers = 0;
    for ((_, resource, ns, name), object) in &world.objects {
        match resource.as_str() {
            "imagebuilds" if object["status"]["phase"] == "Running" => {
                running.insert((ns.as_str(), name.as_str()));
            }
            "pods" => {
                if let Some(build) = object["metadata"]["labels"]["slimforge.dev/build"].as_str() {
                    if build == "goapp-old" {
                        leftovers += 1;
                    }
                    with_pods.insert((ns.as_str(), build));
                }
            }
            "persistentvolumeclaims" if name.starts_with("goapp-old-") => leftovers += 1,
            _ => {}
        }
    }
    leftovers == 0
        && namespaces.iter().all(|ns| {
            ["goapp", "goapp-cm"].iter().all(|build| {
                running.contains(&(ns.as_str(), *build))
                    && with_pods.contains(&(ns.as_str(), *build))
            })
        })
}

struct Row {
    namespaces: usize,
    builds: usize,
    settled: Duration,
    requests: usize,
    peak_kb: u64,
    idle_kb: u64,
}

fn measure(runtime: &tokio::runtime::Runtime, count: usize) -> Row {
    let namespaces: Vec<String> = (0..count).map(|i| format!("team-{i:04}")).collect();
    let names: Vec<&str> = namespaces.iter().map(String::as_str).collect();
    let fake = fake_with(&names);
    let api = runtime.block_on(start_api_server(fake.clone()));
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = write_kubeconfig(dir.path(), api);

    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_slimforge"))
        .args([
            "controller",
            "--helper-image",
            "example.invalid/slimforge:bench",
        ])
        .args(["--metrics-address", "127.0.0.1:0"])
        .env("KUBECONFIG", &kubeconfig)
        .env("SLIMFORGE_LOG", "warn")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("WATCH_NAMESPACE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start slimforge controller");
    let pid = child.id();
    let controller = Controller(child);
    while !settled(&fake, &namespaces) {
        assert!(
            started.elapsed() < PATIENCE,
            "{count} namespaces not settled within {PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let settled_after = started.elapsed();
    let requests = fake.world().requests.len();
    // Idle: every watch open, nothing left to do.
    std::thread::sleep(Duration::from_secs(3));
    let peak_kb = status_kb(pid, "VmHWM:").expect("VmHWM");
    let idle_kb = status_kb(pid, "VmRSS:").expect("VmRSS");
    drop(controller);
    Row {
        namespaces: count,
        builds: count * 3,
        settled: settled_after,
        requests,
        peak_kb,
        idle_kb,
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10, 100, 1000]
    } else {
        sizes
    };
    let runtime = tokio::runtime::Runtime::new().expect("a runtime for the fake API server");
    let mut report = String::from(
        "| namespaces | ImageBuilds | all handled after | API requests | peak RSS | idle RSS |\n\
         |---|---|---|---|---|---|\n",
    );
    for count in sizes {
        eprintln!("controller: {count} namespaces");
        let row = measure(&runtime, count);
        let _ = writeln!(
            report,
            "| {} | {} | {:.2} s | {} | {:.1} MB | {:.1} MB |",
            row.namespaces,
            row.builds,
            row.settled.as_secs_f64(),
            row.requests,
            row.peak_kb as f64 / 1024.0,
            row.idle_kb as f64 / 1024.0
        );
    }
    print!("{report}");
    let dir = support::target_dir().join("bench-results");
    std::fs::create_dir_all(&dir).expect("create target/bench-results");
    std::fs::write(dir.join("controller.md"), &report).expect("write the report");
}
