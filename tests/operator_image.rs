//! The operator's own image, from the top-level `Dockerfile`, built the way a
//! machine that cannot pull the Rust image builds it: the `BINARY=host`
//! variant with buildah (chroot isolation, the tests' private storage and
//! configuration), fed the static musl helper and the host's CA bundle. Then
//! run with podman and taken apart with skopeo and umoci.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use support::fake_api::{fake_with, start_api_server, write_kubeconfig};
use support::{
    container_tool, describe, http_get, run_any, run_ok, skopeo_copy, skopeo_inspect_config,
};

const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Where the build variant's base would come from if buildah looked at it:
/// nothing listens on port 9, so any attempt to pull fails at once.
const UNPULLABLE_RUST_IMAGE: &str = "127.0.0.1:9/never/rust:pulled";

/// The built image, removed (with anything still using it) on drop.
struct BuiltImage {
    reference: String,
}

impl Drop for BuiltImage {
    fn drop(&mut self) {
        let _ = container_tool("podman")
            .args(["rmi", "--force", &self.reference])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// What a `podman run` printed and how it ended.
struct RunOutput {
    success: bool,
    stdout: String,
    stderr: String,
}

/// `podman run --rm --network=none --pull=never OPTIONS IMAGE ARGS`, output
/// through files (podman's stdout misbehaves on pipes).
fn podman_run(options: &[&str], image: &str, args: &[&str]) -> RunOutput {
    let dir = tempfile::tempdir().expect("temp dir");
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let mut cmd = container_tool("podman");
    cmd.args(["run", "--rm", "--network=none", "--pull=never"])
        .args(options)
        .arg(image)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"));
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot start {} ({e})", describe(&cmd)));
    RunOutput {
        success: status.success(),
        stdout: std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    }
}

fn podman_run_ok(options: &[&str], image: &str, args: &[&str]) -> String {
    let out = podman_run(options, image, args);
    assert!(
        out.success,
        "podman run {options:?} {image} {args:?} failed:\n--- stdout\n{}\n--- stderr\n{}",
        out.stdout, out.stderr
    );
    out.stdout
}

/// The context the Dockerfile's host variant expects: `slimforge` and
/// `ca-certificates.crt`, nothing else.
fn host_context(binary: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(support::target_dir()).expect("context dir");
    let dest = dir.path().join("slimforge");
    std::fs::copy(binary, &dest).expect("copy the static binary");
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::copy(HOST_CA_BUNDLE, dir.path().join("ca-certificates.crt"))
        .expect("copy the host's CA bundle (package ca-certificates)");
    dir
}

/// `buildah bud` of the top-level Dockerfile, host variant, for amd64.
/// Returns the image and buildah's output.
fn build_host_variant(context: &Path) -> (BuiltImage, String) {
    let dockerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile");
    let reference = format!(
        "localhost/{}:test",
        support::unique_name("slimforge-operator")
    );
    let mut cmd = container_tool("buildah");
    cmd.args([
        "bud",
        "--isolation",
        "chroot",
        "--platform",
        "linux/amd64",
        "--build-arg",
        "BINARY=host",
        "--build-arg",
    ])
    .arg(format!("RUST_IMAGE={UNPULLABLE_RUST_IMAGE}"))
    .arg("-f")
    .arg(&dockerfile)
    .args(["-t", &reference])
    .arg(context);
    let out = run_any(&mut cmd);
    let image = BuiltImage { reference };
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{} failed ({}):\n{log}",
        describe(&cmd),
        out.status
    );
    (image, log)
}

/// The image IDs buildah reported committing (`--> 0123abcd…`), in order.
fn committed_ids(log: &str) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for line in log.lines() {
        if let Some(id) = line.trim().strip_prefix("--> ")
            && !id.is_empty()
            && id.chars().all(|c| c.is_ascii_hexdigit())
            && !ids.iter().any(|seen| seen == id)
        {
            ids.push(id.to_string());
        }
    }
    ids
}

fn image_exists(id: &str) -> bool {
    run_any(container_tool("podman").args(["image", "exists", id]))
        .status
        .success()
}

/// Every entry under `root` as `relative path → (kind, mode, uid, gid)`.
fn tree(root: &Path) -> BTreeMap<String, (char, u32, u32, u32)> {
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .into_iter()
        .map(|entry| {
            let entry = entry.expect("walk the unpacked rootfs");
            let meta = entry.path().symlink_metadata().expect("lstat");
            let kind = if meta.is_dir() {
                'd'
            } else if meta.is_file() {
                'f'
            } else if meta.file_type().is_symlink() {
                'l'
            } else {
                '?'
            };
            let rel = entry
                .path()
                .strip_prefix(root)
                .expect("below the root")
                .to_string_lossy()
                .into_owned();
            (rel, (kind, meta.mode() & 0o7777, meta.uid(), meta.gid()))
        })
        .collect()
}

#[test]
fn operator_image_from_a_host_binary_is_scratch_with_the_binary_and_ca_bundle_only() {
    let binary: PathBuf = support::static_helper_stripped();
    let context = host_context(&binary);
    let (image, log) = build_host_variant(context.path());

    // --- The build variant was never looked at: had buildah touched its stage
    // it would have tried to pull from a port where nothing listens.
    assert!(
        !log.contains("binary-build") && !log.contains(UNPULLABLE_RUST_IMAGE),
        "buildah went through the Rust build stage:\n{log}"
    );
    // buildah 1.28 leaves the intermediate stage image (and a working
    // container holding it) behind when a stage is a bare FROM; the
    // Dockerfile avoids that. Check, and clean up if it came back.
    let ids = committed_ids(&log);
    let final_id = ids.last().cloned().expect("buildah reported no image ID");
    let leftovers: Vec<&String> = ids[..ids.len() - 1]
        .iter()
        .filter(|id| image_exists(id))
        .collect();
    for id in &leftovers {
        let _ = run_any(container_tool("podman").args(["rmi", "--force", id]));
    }
    assert!(
        leftovers.is_empty(),
        "intermediate images left in storage: {leftovers:?}\n{log}"
    );
    let inspected = run_ok(container_tool("podman").args([
        "image",
        "inspect",
        "--format",
        "{{.Id}}",
        &image.reference,
    ]));
    assert!(
        String::from_utf8_lossy(&inspected.stdout)
            .trim()
            .starts_with(&final_id),
        "{} is not the image buildah reported last ({final_id})",
        image.reference
    );

    // --- It runs, and is the binary we put in.
    let version = podman_run_ok(&[], &image.reference, &["--version"]);
    assert_eq!(
        version.trim(),
        format!("slimforge {}", env!("CARGO_PKG_VERSION"))
    );

    // --- It runs the controller the way the chart deploys it.
    runs_the_controller_as_the_chart_deploys_it(&image.reference);

    // --- As 65532:65532, not root. `stage whoami` writes the effective ids
    // the kernel gave the process; the host sees who owns the file.
    let out = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let volume = format!("{}:/out", out.path().display());
    podman_run_ok(
        &["-v", &volume],
        &image.reference,
        &["stage", "whoami", "/out/default"],
    );
    let written = out.path().join("default");
    assert_eq!(
        std::fs::read_to_string(&written).expect("whoami wrote its file"),
        "65532:65532"
    );
    let meta = std::fs::metadata(&written).expect("stat");
    assert_eq!((meta.uid(), meta.gid()), (65532, 65532));
    // The same probe tells root apart when asked to run as root...
    podman_run_ok(
        &["-v", &volume, "--user", "0:0"],
        &image.reference,
        &["stage", "whoami", "/out/root"],
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("root")).expect("whoami as root"),
        "0:0"
    );
    // ...and without root's privileges the image's own root-owned / is not
    // writable.
    let denied = podman_run(&[], &image.reference, &["stage", "whoami", "/id"]);
    assert!(
        !denied.success && denied.stderr.contains("Permission denied"),
        "the default user could write to /:\n--- stdout\n{}\n--- stderr\n{}",
        denied.stdout,
        denied.stderr
    );

    // --- The image as stored, read without podman: skopeo copies it to an
    // OCI layout, umoci unpacks that.
    let export = tempfile::tempdir_in(support::target_dir()).expect("export dir");
    let layout = export.path().join("oci");
    let oci_ref = format!("oci:{}:image", layout.display());
    skopeo_copy(&format!("containers-storage:{}", image.reference), &oci_ref);

    let config = skopeo_inspect_config(&oci_ref);
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");
    let process = &config["config"];
    assert_eq!(process["User"], "65532:65532", "config: {process:#}");
    assert_eq!(
        process["Entrypoint"],
        serde_json::json!(["/slimforge"]),
        "config: {process:#}"
    );
    assert!(
        process.get("Cmd").is_none_or(serde_json::Value::is_null),
        "no Cmd expected: {process:#}"
    );
    let labels = &process["Labels"];
    assert_eq!(labels["org.opencontainers.image.title"], "slimforge");
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");

    let bundle = export.path().join("bundle");
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:image", layout.display()))
            .arg(&bundle),
    );
    let rootfs = bundle.join("rootfs");
    let entries = tree(&rootfs);
    let summary: Vec<(String, char)> = entries
        .iter()
        .map(|(path, (kind, ..))| (path.clone(), *kind))
        .collect();
    let expected: Vec<(String, char)> = [
        ("etc", 'd'),
        ("etc/ssl", 'd'),
        ("etc/ssl/certs", 'd'),
        ("etc/ssl/certs/ca-certificates.crt", 'f'),
        ("slimforge", 'f'),
    ]
    .iter()
    .map(|(p, k)| (p.to_string(), *k))
    .collect();
    assert_eq!(summary, expected, "image filesystem: {entries:#?}");
    for (path, (_, mode, uid, gid)) in &entries {
        assert_eq!((*uid, *gid), (0, 0), "{path} is not owned by root");
        assert_eq!(mode & 0o022, 0, "{path} is writable by others ({mode:o})");
    }
    let (_, binary_mode, ..) = entries["slimforge"];
    assert_eq!(binary_mode, 0o755, "/slimforge mode {binary_mode:o}");
    assert!(
        std::fs::read(rootfs.join("slimforge")).expect("read /slimforge")
            == std::fs::read(&binary).expect("read the helper"),
        "/slimforge differs from the binary in the context"
    );
    assert_eq!(
        std::fs::read(rootfs.join("etc/ssl/certs/ca-certificates.crt")).expect("read the bundle"),
        std::fs::read(HOST_CA_BUNDLE).expect("read the host bundle"),
    );
}

/// A container of ours, removed however the test ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = container_tool("podman")
            .args(["rm", "--force", "--time", "0", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Polls `check` for up to 30 s; panics with `what` and the container's log.
fn eventually(what: &str, container: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !check() {
        if std::time::Instant::now() > deadline {
            let logs = run_any(container_tool("podman").args(["logs", container]));
            panic!(
                "not within 30 s: {what}\n{}{}",
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The image run with the Deployment the chart renders by default: its
/// args and env, its pod and container securityContext (read-only root,
/// no capabilities, no new privileges, the image's non-root USER), against the recording fake
/// API server (the one test double; a kubeconfig stands in for the
/// ServiceAccount token). It must take the Lease, start the builds, answer
/// /healthz and /readyz, log JSON, and on SIGTERM (`podman stop`) exit 0
/// and give the Lease back.
fn runs_the_controller_as_the_chart_deploys_it(image: &str) {
    let chart = support::k8s::render(&json!({})).expect("render the chart");
    let deployment = chart
        .objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("the chart's Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    // What the podman options below stand for.
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    // No runAsUser (OpenShift assigns its own): the image's USER applies,
    // and runAsNonRoot holds because it is numeric and not 0.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(pod["securityContext"].get("runAsUser").is_none());

    let runtime = tokio::runtime::Runtime::new().expect("a runtime for the fake API server");
    let fake = fake_with(&["demo"]);
    let api = runtime.block_on(start_api_server(fake.clone()));
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let kubeconfig = write_kubeconfig(dir.path(), api);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();

    // The chart's args, but the metrics address: the container shares the
    // host's network here, so a free loopback port stands in for 8080.
    let mut args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let metrics = args
        .iter_mut()
        .find(|a| a.starts_with("--metrics-address="))
        .expect("the chart sets --metrics-address");
    assert_eq!(metrics, "--metrics-address=0.0.0.0:8080");
    *metrics = format!("--metrics-address=127.0.0.1:{port}");
    let pod_name = "slimforge-5d9c7b-x2k4q";
    let mut env = vec!["KUBECONFIG=/var/run/slimforge/kubeconfig".to_string()];
    for variable in container["env"].as_array().unwrap() {
        let name = variable["name"].as_str().unwrap();
        let value = match variable["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.name") => pod_name.to_string(),
            Some("metadata.namespace") => support::k8s::NAMESPACE.to_string(),
            Some(other) => panic!("env {name} from {other}"),
            None => variable["value"].as_str().unwrap().to_string(),
        };
        env.push(format!("{name}={value}"));
    }

    let name = support::unique_name("operator");
    let mut run = container_tool("podman");
    run.args(["run", "--detach", "--name", &name, "--pull=never"])
        .args(["--network", "host", "--read-only", "--cap-drop", "all"])
        .args(["--security-opt", "no-new-privileges"])
        .arg("--volume")
        .arg(format!(
            "{}:/var/run/slimforge/kubeconfig:ro",
            kubeconfig.display()
        ));
    for variable in &env {
        run.args(["--env", variable]);
    }
    run.arg(image).args(&args);
    run_ok(&mut run);
    let running = Container(name.clone());

    let lease_holder = || -> Option<String> {
        fake.object(
            "coordination.k8s.io",
            "leases",
            support::k8s::NAMESPACE,
            "slimforge-controller",
        )?["spec"]["holderIdentity"]
            .as_str()
            .map(str::to_string)
    };
    eventually("it holds the Lease as its pod", &name, || {
        lease_holder().as_deref() == Some(pod_name)
    });
    eventually("it starts the seed's first pod in demo", &name, || {
        !fake
            .labelled("pods", "demo", "slimforge.dev/build", "goapp")
            .is_empty()
    });
    for path in ["/healthz", "/readyz"] {
        let url = format!("http://127.0.0.1:{port}{path}");
        eventually(&format!("{path} answers 200"), &name, || {
            http_get(&url, None).is_ok_and(|r| r.status == 200)
        });
    }

    run_ok(container_tool("podman").args(["stop", "--time", "20", &name]));
    let state = run_ok(container_tool("podman").args([
        "inspect",
        "--format",
        "{{.State.ExitCode}}",
        &name,
    ]));
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "0");
    assert_eq!(lease_holder(), None, "the Lease is given back on SIGTERM");
    let logs = run_ok(container_tool("podman").args(["logs", &name]));
    let logs =
        String::from_utf8_lossy(&logs.stderr).into_owned() + &String::from_utf8_lossy(&logs.stdout);
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log at all");
    for line in lines {
        let entry: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("logFormat json, but ({e}): {line}"));
        assert!(entry["level"].is_string(), "{line}");
    }
    drop(running);
}
