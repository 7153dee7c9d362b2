//! podman, buildah and skopeo behind a private configuration (nothing under
//! /etc is touched), set up as LOCAL-TOOLCHAIN.md describes for this machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::registry::auth_file_for;
use super::{describe, lock_file, run_any, run_ok, target_dir, unique_name};

/// `target/slimforge-test/containers`: configuration files, storage and
/// runtime state shared by every test process.
pub fn containers_dir() -> PathBuf {
    target_dir().join("slimforge-test/containers")
}

/// The variables that point podman/buildah/skopeo at our configuration:
/// CONTAINERS_CONF, CONTAINERS_STORAGE_CONF, CONTAINERS_REGISTRIES_CONF and
/// BUILDAH_ISOLATION=chroot. The files are written once (idempotently, under
/// a lock, so parallel test processes agree).
pub fn podman_env() -> Vec<(String, String)> {
    static ENV: OnceLock<Vec<(String, String)>> = OnceLock::new();
    ENV.get_or_init(|| write_config(&containers_dir())).clone()
}

fn write_config(dir: &Path) -> Vec<(String, String)> {
    std::fs::create_dir_all(dir).expect("create containers dir");
    let _guard = lock_file(&dir.join("setup.lock"));

    // runroot and tmp_dir hold state that must not outlive a reboot (podman
    // expects them on tmpfs; here /run is on disk too): start them afresh
    // whenever the boot id changes. They live under /run with a short name:
    // with a runroot longer than 50 characters podman 4.3 + conmon lose the
    // container's exit and every `podman run` hangs 20 s ("Exceeded conmon
    // timeout waiting for container to exit").
    let run = runtime_dir(dir);
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let boot_file = dir.join("boot_id");
    if std::fs::read_to_string(&boot_file).unwrap_or_default() != boot_id {
        let _ = std::fs::remove_dir_all(&run);
        std::fs::write(&boot_file, &boot_id).expect("write boot_id");
    }
    std::fs::create_dir_all(run.join("tmp")).expect("create runroot");

    let storage = format!(
        "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
        dir.join("storage").display(),
        run.join("storage").display()
    );
    // Prefix "127.0.0.1" matches "127.0.0.1:<any port>" in podman 4.3
    // (c/image treats `host` as a prefix of `host:port`), so registries on
    // random loopback ports are all insecure (plain HTTP) without rewriting
    // this file per registry. The helpers also pass --tls-verify=false.
    let registries = "unqualified-search-registries = []\n\n\
                      [[registry]]\nlocation = \"127.0.0.1\"\ninsecure = true\n\n\
                      [[registry]]\nlocation = \"localhost\"\ninsecure = true\n";
    // This machine's hard limits are lower than podman's root defaults, and
    // crun refuses its hybrid cgroups.
    let nofile = hard_nofile_limit();
    let containers = format!(
        "[containers]\nnetns = \"none\"\n\
         default_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc=32768:32768\"]\n\n\
         [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
         events_logfile_path = \"{}\"\nruntime = \"runc\"\ntmp_dir = \"{}\"\n",
        dir.join("events.log").display(),
        run.join("tmp").display()
    );
    let files = [
        ("storage.conf", storage),
        ("registries.conf", registries.to_string()),
        ("containers.conf", containers),
    ];
    let mut changed = false;
    for (name, content) in &files {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(content.as_str()) {
            std::fs::write(&path, content).expect("write containers config");
            changed = true;
        }
    }
    let env = vec![
        path_var("CONTAINERS_CONF", &dir.join("containers.conf")),
        path_var("CONTAINERS_STORAGE_CONF", &dir.join("storage.conf")),
        path_var("CONTAINERS_REGISTRIES_CONF", &dir.join("registries.conf")),
        ("BUILDAH_ISOLATION".to_string(), "chroot".to_string()),
    ];
    // podman records runroot and tmp_dir in its database and keeps using
    // the recorded ones over a changed config; start over when ours changes.
    if changed && dir.join("storage/libpod").exists() {
        run_ok(
            Command::new("podman")
                .envs(env.iter().cloned())
                .args(["system", "reset", "--force"]),
        );
    }
    env
}

/// `/run/slimforge-test/<hash of dir>`: one per storage, short.
fn runtime_dir(dir: &Path) -> PathBuf {
    use sha2::Digest as _;
    let hash = hex::encode(sha2::Sha256::digest(dir.display().to_string()));
    let run = PathBuf::from(format!("/run/slimforge-test/{}", &hash[..12]));
    assert!(run.join("storage").as_os_str().len() <= 50);
    run
}

fn path_var(name: &str, path: &Path) -> (String, String) {
    (name.to_string(), path.display().to_string())
}

fn hard_nofile_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(4).map(str::to_string))
        })
        .and_then(|hard| hard.parse().ok())
        .unwrap_or(1024)
}

/// A command for `program` (podman, buildah, skopeo) with our configuration.
pub fn container_tool(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.envs(podman_env());
    cmd
}

/// `podman ARGS…` with our configuration, whatever its exit status.
pub fn podman(args: &[&str]) -> Output {
    run_any(container_tool("podman").args(args))
}

/// `skopeo ARGS…` with our configuration, whatever its exit status.
pub fn skopeo(args: &[&str]) -> Output {
    run_any(container_tool("skopeo").args(args))
}

/// Options that make podman pull a loopback registry's image: plain HTTP,
/// and the registry's credentials when it has some.
fn pull_options(image: &str) -> Vec<String> {
    let mut opts = vec!["--tls-verify=false".to_string()];
    if let Some(auth) = auth_file_for(image) {
        opts.push(format!("--authfile={}", auth.display()));
    }
    opts
}

/// `podman run --rm --network=none --pull=always IMAGE ARGS…`; returns stdout
/// and panics with stderr if the run fails.
pub fn podman_run(image: &str, args: &[&str]) -> String {
    podman_run_with(&[], image, args)
}

/// [`podman_run`] with extra `podman run` options (before the image), e.g.
/// `&["--user", "65534"]`.
pub fn podman_run_with(options: &[&str], image: &str, args: &[&str]) -> String {
    let out_dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = container_tool("podman");
    cmd.args(["run", "--rm", "--network=none", "--pull=always"])
        .args(pull_options(image))
        .args(options)
        .arg(image)
        .args(args);
    let (status, stdout, stderr) = run_to_files(&mut cmd, out_dir.path());
    if !status.success() {
        panic!(
            "{} failed ({status}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            describe(&cmd)
        );
    }
    stdout
}

/// Runs a long-running image (e.g. the seed app, which prints forever) for
/// `seconds`, then kills it and returns what it printed. The image is pulled
/// first so the pull doesn't eat into the time. Panics if the container
/// fails on its own before then; leaves no container behind.
pub fn podman_run_for(image: &str, seconds: f64) -> String {
    podman_run_for_with(&[], image, &[], seconds)
}

/// [`podman_run_for`] with `podman run` options (before the image) and a
/// command (after it).
pub fn podman_run_for_with(options: &[&str], image: &str, args: &[&str], seconds: f64) -> String {
    run_ok(
        container_tool("podman")
            .args(["pull", "--quiet"])
            .args(pull_options(image))
            .arg(image),
    );
    let name = unique_name("slimforge-test");
    let out_dir = tempfile::tempdir().expect("temp dir");
    let stdout_path = out_dir.path().join("stdout");
    let stderr_path = out_dir.path().join("stderr");
    let mut cmd = container_tool("podman");
    cmd.args(["run", "--rm", "--network=none", "--pull=never", "--name"])
        .arg(&name)
        .args(options)
        .arg(image)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"));
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start podman ({e})"));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let early_exit = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => break None,
        }
    };
    if early_exit.is_none() {
        podman(&["stop", "--ignore", "--time", "0", &name]);
    }
    let _ = child.wait();
    podman(&["rm", "--force", "--ignore", &name]);
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    if let Some(status) = early_exit.filter(|s| !s.success()) {
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        panic!(
            "{} exited early ({status}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            describe(&cmd)
        );
    }
    stdout
}

/// Runs to completion with stdout and stderr sent to files, not pipes
/// (podman's stdout misbehaves on pipes closed early).
fn run_to_files(cmd: &mut Command, dir: &Path) -> (std::process::ExitStatus, String, String) {
    let stdout_path = dir.join("stdout");
    let stderr_path = dir.join("stderr");
    let status = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .status()
        .unwrap_or_else(|e| panic!("cannot start {} ({e})", describe(cmd)));
    (
        status,
        std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    )
}

/// `skopeo inspect` of an image: a registry reference (`127.0.0.1:PORT/x:t`,
/// `docker://` optional) or any skopeo transport (`oci:DIR:tag`, `dir:DIR`).
pub fn skopeo_inspect(reference: &str) -> serde_json::Value {
    json(&skopeo_inspect_bytes(reference, &[]))
}

/// The manifest exactly as stored (`skopeo inspect --raw`), parsed.
pub fn skopeo_inspect_raw(reference: &str) -> serde_json::Value {
    json(&skopeo_manifest_bytes(reference))
}

/// The manifest's exact bytes (hash them to get the manifest digest).
pub fn skopeo_manifest_bytes(reference: &str) -> Vec<u8> {
    skopeo_inspect_bytes(reference, &["--raw"])
}

/// The image configuration (`skopeo inspect --config`).
pub fn skopeo_inspect_config(reference: &str) -> serde_json::Value {
    json(&skopeo_inspect_bytes(reference, &["--config"]))
}

fn skopeo_inspect_bytes(reference: &str, flags: &[&str]) -> Vec<u8> {
    let (transport_ref, is_registry) = transport_reference(reference);
    let mut cmd = container_tool("skopeo");
    cmd.arg("inspect").args(flags);
    if is_registry {
        // skopeo 1.9 ignores CONTAINERS_REGISTRIES_CONF's insecure flag.
        cmd.arg("--tls-verify=false");
        if let Some(auth) = auth_file_for(&transport_ref) {
            cmd.arg("--authfile").arg(auth);
        }
    }
    cmd.arg(&transport_ref);
    run_ok(&mut cmd).stdout
}

/// Copies an image between any two skopeo references (registry references
/// as for [`skopeo_inspect`]), as stored (no recompression).
pub fn skopeo_copy(from: &str, to: &str) {
    let (src, src_registry) = transport_reference(from);
    let (dst, dst_registry) = transport_reference(to);
    let mut cmd = container_tool("skopeo");
    cmd.args(["copy", "--quiet"]);
    if src_registry {
        cmd.arg("--src-tls-verify=false");
        if let Some(auth) = auth_file_for(&src) {
            cmd.arg("--src-authfile").arg(auth);
        }
    }
    if dst_registry {
        cmd.arg("--dest-tls-verify=false");
        if let Some(auth) = auth_file_for(&dst) {
            cmd.arg("--dest-authfile").arg(auth);
        }
    }
    run_ok(cmd.arg(&src).arg(&dst));
}

/// `docker://` is added to a bare registry reference; the flag says whether
/// the result is a registry reference.
fn transport_reference(reference: &str) -> (String, bool) {
    const TRANSPORTS: [&str; 6] = [
        "oci:",
        "dir:",
        "oci-archive:",
        "docker-archive:",
        "containers-storage:",
        "docker-daemon:",
    ];
    if reference.starts_with("docker://") {
        (reference.to_string(), true)
    } else if TRANSPORTS.iter().any(|t| reference.starts_with(t)) {
        (reference.to_string(), false)
    } else {
        (format!("docker://{reference}"), true)
    }
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "skopeo printed no JSON ({e}): {}",
            String::from_utf8_lossy(bytes)
        )
    })
}
