//! Base images made from Debian packages (no Docker Hub here), built once
//! into the cache dir as `dir:` image copies (manifest, config and gzip
//! layers stored as they will be pushed) and copied into a registry per test
//! without recompression; and the seed program.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::podman::{container_tool, skopeo_copy};
use super::registry::Registry;
use super::{cache_dir, describe, fixtures_dir, lock_file, run_ok};

/// Bump to rebuild cached images after changing how they are made.
const CACHE_VERSION: &str = "v1";

/// Manifest and layer media types of a pushed image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Docker image manifest v2 schema 2 (`application/vnd.docker.…`).
    Docker,
    /// OCI image manifest (`application/vnd.oci.image.…`).
    Oci,
}

impl Format {
    fn buildah_name(self) -> &'static str {
        match self {
            Format::Docker => "docker",
            Format::Oci => "oci",
        }
    }
}

/// Where busybox and its applets live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusyboxLayout {
    /// Merged /usr, as modern bases: `/usr/bin/busybox` and applet links in
    /// `/usr/bin` and `/usr/sbin`, with `/bin -> usr/bin`, `/sbin -> usr/sbin`.
    MergedUsr,
    /// Classic: real `/bin`, `/sbin`, `/usr/bin`, `/usr/sbin` dirs,
    /// `/bin/busybox`, applets where `busybox --list-full` puts them.
    SplitBin,
}

impl BusyboxLayout {
    fn name(self) -> &'static str {
        match self {
            BusyboxLayout::MergedUsr => "merged",
            BusyboxLayout::SplitBin => "split",
        }
    }
}

const BUSYBOX_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const GOLANG_PATH: &str =
    "PATH=/usr/local/go/bin:/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Pushes the busybox base (merged-/usr layout: `/bin` is a symlink) as
/// `REGISTRY/repo:latest` and returns that reference.
pub fn push_busybox(reg: &Registry, repo: &str, format: Format) -> String {
    push_busybox_with(reg, repo, format, BusyboxLayout::MergedUsr)
}

/// [`push_busybox`] with a chosen layout.
///
/// The image: busybox from Debian's busybox-static and its applet symlinks,
/// `/etc/passwd` (root, nobody), `/etc/group` (root, nogroup), `/tmp` 1777,
/// `/root` 0700; config `PATH`, `Cmd ["sh"]`, created at the Unix epoch.
/// One layer of about 1.1 MB.
pub fn push_busybox_with(
    reg: &Registry,
    repo: &str,
    format: Format,
    layout: BusyboxLayout,
) -> String {
    push_busybox_at(&reg.addr(), repo, format, layout)
}

/// [`push_busybox_with`] to the registry at `host:port` (plain HTTP).
pub fn push_busybox_at(
    registry: &str,
    repo: &str,
    format: Format,
    layout: BusyboxLayout,
) -> String {
    let name = format!(
        "busybox-{CACHE_VERSION}-{}-{}",
        layout.name(),
        format.buildah_name()
    );
    let cached = cached_image(&name, |dest| build_busybox(dest, format, layout));
    push_cached(&cached, registry, repo)
}

/// Pushes the Go builder base as `REGISTRY/repo:latest` and returns that
/// reference: Debian bookworm minbase with golang-go and ca-certificates
/// (~600 MB unpacked, ~190 MB compressed, one OCI layer), `WORKDIR /go`,
/// `GOPATH=/go`, a PATH where `go` (/usr/bin/go) resolves, `Cmd ["bash"]`.
///
/// The first build on a machine runs debootstrap (needs Debian's mirror,
/// `$SLIMFORGE_DEBIAN_MIRROR` or deb.debian.org) and takes about two
/// minutes; later pushes copy the cached compressed layer as is.
pub fn push_golang(reg: &Registry, repo: &str) -> String {
    push_golang_at(&reg.addr(), repo)
}

/// [`push_golang`] to the registry at `host:port` (plain HTTP).
pub fn push_golang_at(registry: &str, repo: &str) -> String {
    let name = format!("golang-{CACHE_VERSION}");
    let cached = cached_image(&name, build_golang);
    push_cached(&cached, registry, repo)
}

/// The seed program (`tests/fixtures/seed/app.go`, from the seed article),
/// built static with the host's Go (`CGO_ENABLED=0 go build`), cached by
/// source hash. It prints `user: <name> id: <uid>` once a second, forever.
pub fn seed_app() -> PathBuf {
    use sha2::Digest as _;
    let source = fixtures_dir().join("seed/app.go");
    let code = std::fs::read(&source).expect("read tests/fixtures/seed/app.go");
    let hash = hex::encode(sha2::Sha256::digest(&code));
    let dir = cache_dir().join(format!("seed-app-{}", &hash[..16]));
    let binary = dir.join("app");
    if binary.exists() {
        return binary;
    }
    let _guard = lock_file(&cache_dir().join("seed-app.lock"));
    if binary.exists() {
        return binary;
    }
    std::fs::create_dir_all(&dir).expect("create seed cache dir");
    let partial = dir.join("app.partial");
    run_ok(
        Command::new("go")
            .args(["build", "-trimpath", "-o"])
            .arg(&partial)
            .arg("app.go")
            .current_dir(source.parent().expect("seed dir"))
            .env("CGO_ENABLED", "0")
            .env("GO111MODULE", "off")
            .env("GOCACHE", cache_dir().join("go-build"))
            .env("GOPATH", cache_dir().join("gopath")),
    );
    std::fs::rename(&partial, &binary).expect("publish seed binary");
    binary
}

fn push_cached(cached: &Path, registry: &str, repo: &str) -> String {
    let reference = format!("{registry}/{repo}:latest");
    skopeo_copy(&format!("dir:{}", cached.display()), &reference);
    reference
}

/// The cache entry `name` (a `dir:` image), built by `build` into a scratch
/// path first if missing. A lock keeps parallel test processes from
/// building the same thing twice.
fn cached_image(name: &str, build: impl FnOnce(&Path)) -> PathBuf {
    let cache = cache_dir();
    let done = cache.join(name);
    if done.join("manifest.json").exists() {
        return done;
    }
    let _guard = lock_file(&cache.join(format!("{name}.lock")));
    if done.join("manifest.json").exists() {
        return done;
    }
    let partial = cache.join(format!("{name}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    build(&partial);
    let _ = std::fs::remove_dir_all(&done);
    std::fs::rename(&partial, &done).expect("publish cached image");
    done
}

/// A buildah working container, removed on drop.
struct WorkingContainer(String);

impl WorkingContainer {
    fn from_scratch() -> Self {
        let out = run_ok(container_tool("buildah").args(["from", "scratch"]));
        WorkingContainer(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn buildah(&self, args: &[&str]) {
        let mut cmd = container_tool("buildah");
        cmd.args(args).arg(&self.0);
        run_ok(&mut cmd);
    }

    fn copy_rootfs(&self, rootfs: &Path) {
        let mut cmd = container_tool("buildah");
        cmd.args(["copy", "--quiet"])
            .arg(&self.0)
            .arg(format!("{}/", rootfs.display()))
            .arg("/");
        run_ok(&mut cmd);
    }

    /// Commits with gzip layers into a `dir:` image at `dest`.
    fn commit(&self, format: Format, extra: &[&str], dest: &Path) {
        let mut cmd = container_tool("buildah");
        cmd.args([
            "commit",
            "--quiet",
            "--disable-compression=false",
            "--format",
        ])
        .arg(format.buildah_name())
        .args(extra)
        .arg(&self.0)
        .arg(format!("dir:{}", dest.display()));
        run_ok(&mut cmd);
    }
}

impl Drop for WorkingContainer {
    fn drop(&mut self) {
        let _ = container_tool("buildah")
            .args(["rm", &self.0])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn build_busybox(dest: &Path, format: Format, layout: BusyboxLayout) {
    let scratch = tempfile::tempdir_in(cache_dir()).expect("busybox scratch dir");
    let rootfs = scratch.path().join("rootfs");
    make_busybox_rootfs(&rootfs, layout);
    let ctr = WorkingContainer::from_scratch();
    ctr.copy_rootfs(&rootfs);
    ctr.buildah(&["config", "--env", BUSYBOX_PATH, "--cmd", r#"["sh"]"#]);
    ctr.commit(format, &["--timestamp", "0"], dest);
}

fn make_busybox_rootfs(root: &Path, layout: BusyboxLayout) {
    let busybox = which("busybox");
    let list = run_ok(Command::new(&busybox).arg("--list-full")).stdout;
    let list = String::from_utf8(list).expect("busybox --list-full");

    for d in ["etc", "tmp", "root", "usr/bin", "usr/sbin"] {
        std::fs::create_dir_all(root.join(d)).expect("create rootfs dir");
    }
    let bin_dir = match layout {
        BusyboxLayout::MergedUsr => {
            symlink("usr/bin", root.join("bin")).expect("bin symlink");
            symlink("usr/sbin", root.join("sbin")).expect("sbin symlink");
            "usr/bin"
        }
        BusyboxLayout::SplitBin => {
            std::fs::create_dir_all(root.join("bin")).expect("bin");
            std::fs::create_dir_all(root.join("sbin")).expect("sbin");
            "bin"
        }
    };
    let binary = root.join(bin_dir).join("busybox");
    std::fs::copy(&busybox, &binary).expect("copy busybox");
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    for applet in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (dir, name) = applet.rsplit_once('/').unwrap_or(("bin", applet));
        if name == "busybox" {
            continue;
        }
        let dir = match (layout, dir) {
            (BusyboxLayout::MergedUsr, "bin" | "usr/bin") => "usr/bin",
            (BusyboxLayout::MergedUsr, _) => "usr/sbin",
            (BusyboxLayout::SplitBin, d) => d,
        };
        let link = root.join(dir).join(name);
        if link.symlink_metadata().is_ok() {
            continue;
        }
        // A relative link from wherever the applet sits to the one binary.
        let target = if dir == bin_dir {
            "busybox".to_string()
        } else {
            format!("{}{bin_dir}/busybox", "../".repeat(dir.split('/').count()))
        };
        symlink(target, &link).expect("applet symlink");
    }

    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .expect("passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").expect("group");
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .expect("chmod tmp");
    std::fs::set_permissions(root.join("root"), std::fs::Permissions::from_mode(0o700))
        .expect("chmod root");
}

fn build_golang(dest: &Path) {
    let scratch = tempfile::tempdir_in(cache_dir()).expect("golang scratch dir");
    let rootfs = scratch.path().join("rootfs");
    let mirror = std::env::var("SLIMFORGE_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".to_string());
    let result = std::panic::catch_unwind(|| {
        run_ok(
            Command::new("debootstrap")
                .args([
                    "--variant=minbase",
                    "--include=golang-go,ca-certificates",
                    "bookworm",
                ])
                .arg(&rootfs)
                .arg(&mirror),
        );
        run_ok(
            Command::new("chroot")
                .arg(&rootfs)
                .args(["apt-get", "clean"]),
        );
        std::fs::create_dir_all(rootfs.join("go")).expect("create /go");
        assert!(
            rootfs.join("usr/bin/go").exists(),
            "debootstrap gave no /usr/bin/go"
        );
        let ctr = WorkingContainer::from_scratch();
        ctr.copy_rootfs(&rootfs);
        ctr.buildah(&[
            "config",
            "--workingdir",
            "/go",
            "--env",
            "GOPATH=/go",
            "--env",
            GOLANG_PATH,
            "--cmd",
            r#"["bash"]"#,
        ]);
        ctr.commit(Format::Oci, &[], dest);
    });
    // debootstrap mounts /proc and /sys in the target; never delete through
    // a mount left behind by a failed run.
    unmount_below(&rootfs);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn unmount_below(dir: &Path) {
    let prefix = dir.display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    // Deepest first.
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let mut cmd = Command::new("umount");
        cmd.args(["--lazy", p]);
        let status = cmd.status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "{} failed: cannot safely remove {prefix}",
            describe(&cmd)
        );
    }
}

fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} not found on PATH; run scripts/install-deps"))
}

/// Pushes `base` again as `target` (plain HTTP) with one more layer that
/// writes each `(path, text)` (0644): a new image under the same tag, as a
/// base's security fix is. Made by `slimforge assemble --spec`.
pub fn push_base_as(base: &str, target: &str, files: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let mut layers = Vec::new();
    for (i, (path, text)) in files.iter().enumerate() {
        let name = format!("file-{i}");
        std::fs::write(dir.path().join(&name), text).unwrap();
        layers.push(serde_json::json!({"source": name, "destination": path, "chmod": "0644"}));
    }
    let spec = serde_json::json!({
        "base": base, "layers": layers, "target": target, "insecure": true,
    });
    let file = dir.path().join("spec.json");
    std::fs::write(&file, spec.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_slimforge"))
        .args(["assemble", "--spec"])
        .arg(&file)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}
