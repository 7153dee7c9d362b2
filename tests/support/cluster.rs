//! The real single-node cluster `scripts/cluster up` runs on this machine
//! (`scripts/test` starts it before the tests and stops it after): its
//! kubeconfig, its registry, its kubectl and Helm, namespaces of our own,
//! the base images pushed where the kubelet pulls them, and the operator
//! installed by the Helm chart, once per test run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::images::{push_busybox_at, push_golang_at};
use super::k8s::repo;
use super::{
    BusyboxLayout, Format, lock_file, run_any, run_ok, run_with_stdin, static_helper_stripped,
    unique_name,
};

/// The running cluster, as `scripts/cluster env` describes it.
pub struct Cluster {
    pub kubeconfig: PathBuf,
    /// `host:port` of the registry, as containerd and pods both reach it
    /// (plain HTTP).
    pub registry: String,
    /// kubectl, helm, kstatus and the cluster's other binaries.
    pub bin: PathBuf,
}

impl Cluster {
    /// The cluster; panics, saying how to start one, when none is up.
    pub fn get() -> &'static Cluster {
        static CLUSTER: OnceLock<Cluster> = OnceLock::new();
        CLUSTER.get_or_init(|| {
            let out = run_any(Command::new(repo("scripts/cluster")).arg("env"));
            assert!(
                out.status.success(),
                "no cluster is up: these tests need `scripts/cluster up` (scripts/test runs it): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let env = String::from_utf8(out.stdout).expect("UTF-8 env");
            let value = |name: &str| {
                env.lines()
                    .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                    .unwrap_or_else(|| panic!("scripts/cluster env printed no {name}:\n{env}"))
                    .to_string()
            };
            let path = value("PATH");
            let bin = path.split(':').next().expect("the cluster's bin dir");
            Cluster {
                kubeconfig: PathBuf::from(value("KUBECONFIG")),
                registry: value("SLIMFORGE_REGISTRY"),
                bin: PathBuf::from(bin),
            }
        })
    }

    /// The cluster's state directory (`scripts/cluster`'s), where the
    /// kubeconfig, the audit log and the tests' markers live.
    pub fn state_dir(&self) -> &Path {
        self.kubeconfig
            .parent()
            .expect("the kubeconfig's directory")
    }

    /// `kubectl ARGS` (the cluster's own build, its version), whatever the
    /// exit status.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        run_any(&mut self.kubectl_command(args))
    }

    /// `kubectl ARGS`, panicking with its output unless it succeeds; stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        String::from_utf8(run_ok(&mut self.kubectl_command(args)).stdout).expect("UTF-8 stdout")
    }

    fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        cmd
    }

    /// `kubectl ARGS` with `stdin` as its standard input.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        run_with_stdin(&mut self.kubectl_command(args), stdin)
    }

    /// What cli-utils' kstatus (as Flux and kpt run it) makes of one object
    /// given as JSON: `(status, message)`, e.g. `("Current", "…")`.
    pub fn kstatus(&self, object: &serde_json::Value) -> (String, String) {
        let out = run_with_stdin(
            &mut Command::new(self.bin.join("kstatus")),
            &object.to_string(),
        );
        assert!(
            out.status.success(),
            "kstatus: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8(out.stdout).expect("UTF-8");
        let (status, message) = line.trim_end().split_once('\t').expect("status\tmessage");
        (status.to_string(), message.to_string())
    }

    /// A namespace of this test's own at Pod Security level `enforce`,
    /// deleted on drop.
    pub fn namespace(&'static self, prefix: &str, enforce: &str) -> TestNamespace {
        let name = unique_name(prefix);
        let manifest = serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {
                "pod-security.kubernetes.io/enforce": enforce,
                "slimforge.dev/test": "true",
            }},
        });
        let out = self.kubectl_stdin(&["create", "-f", "-"], &manifest.to_string());
        assert!(out.status.success(), "create namespace {name}: {out:?}");
        TestNamespace {
            name,
            cluster: self,
        }
    }

    /// The Go builder and the busybox runtime base in the cluster's
    /// registry: `(golang, busybox)` references, pushed once per cluster
    /// under a lock every test process shares (Distribution refuses the
    /// manifest of an image whose blobs another client is uploading).
    pub fn base_images(&self) -> &'static (String, String) {
        static IMAGES: OnceLock<(String, String)> = OnceLock::new();
        IMAGES.get_or_init(|| {
            let golang = format!("{}/e2e/golang:latest", self.registry);
            let busybox = format!("{}/e2e/busybox:latest", self.registry);
            let state = self.state_dir();
            let _guard = lock_file(&state.join("bases.lock"));
            let marker = state.join("bases.pushed");
            if !marker.exists() {
                assert_eq!(push_golang_at(&self.registry, "e2e/golang"), golang);
                let pushed = push_busybox_at(
                    &self.registry,
                    "e2e/busybox",
                    Format::Oci,
                    BusyboxLayout::MergedUsr,
                );
                assert_eq!(pushed, busybox);
                std::fs::write(&marker, "").expect("write the bases marker");
            }
            (golang, busybox)
        })
    }

    /// The operator, installed by `scripts/cluster install` (the top-level
    /// Dockerfile, pushed to the registry, `helm upgrade --install` with two
    /// replicas) from the tests' static build; once per build of it, under
    /// a lock that every test process shares.
    pub fn operator(&self) {
        static DONE: OnceLock<()> = OnceLock::new();
        DONE.get_or_init(|| {
            let binary = static_helper_stripped();
            let state = self.state_dir();
            let _guard = lock_file(&state.join("operator.lock"));
            let meta = std::fs::metadata(&binary).expect("the static build");
            let stamp = format!("{} {:?}", meta.len(), meta.modified().expect("mtime"));
            let marker = state.join("operator.installed");
            if std::fs::read_to_string(&marker).ok().as_deref() == Some(stamp.as_str()) {
                return;
            }
            run_ok(
                Command::new(repo("scripts/cluster"))
                    .arg("install")
                    .env("SLIMFORGE_OPERATOR_BINARY", &binary),
            );
            std::fs::write(&marker, stamp).expect("write the install marker");
        });
    }

    /// After `helm uninstall`: the next [`Cluster::operator`] installs again.
    pub fn forget_operator(&self) {
        let state = self.state_dir();
        let _ = std::fs::remove_file(state.join("operator.installed"));
    }

    /// Polls `check` every half second until it returns `Some`, or panics
    /// after `timeout` saying what was awaited.
    pub fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check() {
                return value;
            }
            assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// A namespace deleted (without waiting) when dropped.
pub struct TestNamespace {
    pub name: String,
    cluster: &'static Cluster,
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = self
            .cluster
            .kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// `kubectl apply` of one object in `ns`; it must succeed.
pub fn apply(cluster: &Cluster, ns: &TestNamespace, object: &Value) {
    let out = cluster.kubectl_stdin(&["-n", &ns.name, "apply", "-f", "-"], &object.to_string());
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kubectl get WHAT -o json` in `ns`.
pub fn get_json(cluster: &Cluster, ns: &TestNamespace, what: &[&str]) -> Value {
    let mut args = vec!["-n", ns.name.as_str(), "get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&cluster.kubectl_ok(&args)).expect("kubectl printed JSON")
}

/// An ImageBuild's `Ready` condition.
pub fn ready_condition(ib: &Value) -> Option<&Value> {
    ib["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
}
