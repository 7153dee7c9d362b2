//! Test harness shared by the integration tests (`mod support;` in each
//! `tests/*.rs`): real registries (plain, htpasswd, bearer token), podman and
//! skopeo behind a private configuration, and base images made from Debian
//! packages. Everything is blocking and thread-based, so it works from both
//! `#[test]` and `#[tokio::test]`.
//!
//! Tools it needs: see `scripts/install-deps`.
#![allow(dead_code)]
// Re-exports below are used by some test binaries and not others.
#![allow(unused_imports)]

pub mod cluster;
pub mod fake_api;
mod git;
mod http;
mod images;
pub mod k8s;
mod podman;
mod proxy;
pub mod pss;
mod registry;
mod token;

pub use git::{GitDaemon, git};
pub use http::{HttpReply, basic_auth, http_get, http_request, percent_decode, percent_encode};
pub use images::{
    BusyboxLayout, Format, push_base_as, push_busybox, push_busybox_at, push_busybox_with,
    push_golang, push_golang_at, seed_app,
};
pub use podman::{
    container_tool, containers_dir, podman, podman_env, podman_run, podman_run_for,
    podman_run_for_with, podman_run_with, skopeo, skopeo_copy, skopeo_inspect,
    skopeo_inspect_config, skopeo_inspect_raw, skopeo_manifest_bytes,
};
pub use proxy::{CountingProxy, Seen as ProxiedRequest};
pub use registry::Registry;
pub use token::{TokenPolicy, TokenRequest};

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The cargo target directory this test binary was built into.
pub fn target_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target>/tmp` and follows CARGO_TARGET_DIR.
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR has a parent")
        .to_path_buf()
}

/// Where built base images and the seed binary are kept between runs:
/// `$SLIMFORGE_CACHE`, else `target/slimforge-cache`.
pub fn cache_dir() -> PathBuf {
    let dir = match std::env::var_os("SLIMFORGE_CACHE") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => target_dir().join("slimforge-cache"),
    };
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// The project's own fixtures (`tests/fixtures`).
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// An exclusive lock on `path` (created if missing), shared across test
/// processes; released when the returned file is dropped.
pub fn lock_file(path: &Path) -> File {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create lock dir");
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open lock {}: {e}", path.display()));
    file.lock()
        .unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
    file
}

/// Runs a command to completion, panicking with its output if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run_any(cmd);
    if !out.status.success() {
        panic!(
            "{} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Runs a command to completion whatever its exit status; panics only if it
/// cannot be started.
pub fn run_any(cmd: &mut Command) -> Output {
    cmd.stdin(std::process::Stdio::null());
    cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot start {} ({e}); run scripts/install-deps",
            describe(cmd)
        )
    })
}

/// Runs a command with `stdin` as its standard input, whatever its exit
/// status; panics only if it cannot be started.
pub fn run_with_stdin(cmd: &mut Command, stdin: &str) -> Output {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", describe(cmd)));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// A name unique across the tests running now on this machine.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The helper as build pods run it: `slimforge` built for
/// x86_64-unknown-linux-musl (static, runs in busybox and scratch images),
/// built once per test process and under a lock across processes, into the
/// normal target directory. Needs `rustup target add
/// x86_64-unknown-linux-musl` and musl-tools (scripts/install-deps).
pub fn static_helper() -> PathBuf {
    static HELPER: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    HELPER
        .get_or_init(|| {
            const TARGET: &str = "x86_64-unknown-linux-musl";
            let target = target_dir();
            let _guard = lock_file(&target.join("slimforge-test/static-helper.lock"));
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = Command::new("nice");
            // What `cargo test` sets for this test process would leak into the
            // build scripts' rerun-if-env-changed checks (ring watches
            // CARGO_MANIFEST_DIR) and rebuild half the tree every time.
            for (name, _) in std::env::vars_os() {
                let name = name.to_string_lossy();
                if name.starts_with("CARGO_PKG_")
                    || name.starts_with("CARGO_BIN_EXE_")
                    || [
                        "CARGO_MANIFEST_DIR",
                        "CARGO_MANIFEST_PATH",
                        "CARGO_MANIFEST_LINKS",
                        "CARGO_CRATE_NAME",
                        "CARGO_PRIMARY_PACKAGE",
                        "CARGO_TARGET_TMPDIR",
                        "OUT_DIR",
                    ]
                    .contains(&name.as_ref())
                {
                    build.env_remove(name.as_ref());
                }
            }
            run_ok(
                build
                    .args(["-n", "19"])
                    .arg(cargo)
                    .args(["build", "--quiet", "--target", TARGET, "--bin", "slimforge"])
                    .arg("--manifest-path")
                    .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
                    .arg("--target-dir")
                    .arg(&target),
            );
            let binary = target.join(TARGET).join("debug/slimforge");
            assert!(binary.is_file(), "{} was not built", binary.display());
            binary
        })
        .clone()
}

/// Runs `slimforge assemble` (the host build) on `spec`, written as YAML;
/// returns the pushed reference (its last stdout line). Panics on failure.
pub fn assemble_spec(spec: &serde_json::Value) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let spec_path = dir.path().join("spec.yaml");
    std::fs::write(
        &spec_path,
        serde_yaml::to_string(spec).expect("spec as YAML"),
    )
    .expect("write spec");
    let output = run_ok(
        Command::new(env!("CARGO_BIN_EXE_slimforge"))
            .arg("assemble")
            .arg("--spec")
            .arg(&spec_path),
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8 stdout")
        .lines()
        .last()
        .expect("the pushed reference")
        .to_string()
}

/// A directory holding only the static helper as `slimforge`, to mount
/// read-only into containers. A link, not a copy (100+ MB debug binary); a
/// rebuild replaces the built file, not this inode.
pub fn static_helper_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(target_dir()).expect("helper dir");
    let binary = static_helper();
    if std::fs::hard_link(&binary, dir.path().join("slimforge")).is_err() {
        std::fs::copy(&binary, dir.path().join("slimforge")).expect("copy the helper");
    }
    dir
}

/// [`static_helper`] without its debug symbols (22 MB instead of 140): what
/// `slimforge build --helper-binary` publishes as the helper image.
pub fn static_helper_stripped() -> PathBuf {
    static STRIPPED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    STRIPPED
        .get_or_init(|| {
            let binary = static_helper();
            let target = target_dir();
            let _guard = lock_file(&target.join("slimforge-test/static-helper-stripped.lock"));
            let stripped = target.join("slimforge-test/slimforge-stripped");
            let fresh = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            if fresh(&stripped) < fresh(&binary) || !stripped.exists() {
                let tmp = stripped.with_extension("tmp");
                std::fs::copy(&binary, &tmp).expect("copy the helper");
                run_ok(Command::new("strip").arg(&tmp));
                std::fs::rename(&tmp, &stripped).expect("place the stripped helper");
            }
            stripped
        })
        .clone()
}
