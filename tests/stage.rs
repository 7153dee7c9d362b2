//! `slimforge stage …`, the helper inside build pods, run as pods run it:
//! the static musl binary mounted at /.slimforge/bin in real containers
//! (busybox, scratch), the workspace at /.slimforge/ws.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use support::{Format, Registry, podman_run_with, push_busybox, static_helper};

const HELPER: &str = "/.slimforge/bin/slimforge";
const WS: &str = "/.slimforge/ws";

/// A directory holding only the static helper, for `-v DIR:/.slimforge/bin:ro`,
/// and a workspace anyone in a container may write to.
struct Mounts {
    helper: tempfile::TempDir,
    workspace: tempfile::TempDir,
}

impl Mounts {
    fn new() -> Self {
        let helper = support::static_helper_dir();
        let workspace = tempfile::tempdir().unwrap();
        std::fs::set_permissions(workspace.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        Self { helper, workspace }
    }

    /// `podman run` options mounting both.
    fn options(&self) -> Vec<String> {
        vec![
            "-v".into(),
            format!("{}:/.slimforge/bin:ro", self.helper.path().display()),
            "-v".into(),
            format!("{}:{WS}", self.workspace.path().display()),
        ]
    }

    fn ws(&self, name: &str) -> PathBuf {
        self.workspace.path().join(name)
    }

    fn run(&self, image: &str, args: &[&str]) -> String {
        let options = self.options();
        let options: Vec<&str> = options.iter().map(String::as_str).collect();
        podman_run_with(&options, image, args)
    }
}

/// Paths (no leading `/`) of every entry in a gzip-compressed layer.
fn layer_paths(layer: &Path) -> Vec<String> {
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(layer).unwrap());
    tar::Archive::new(gz)
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

#[test]
fn install_in_a_scratch_image_copies_a_helper_that_runs() {
    let registry = Registry::start();
    let operator = support::assemble_spec(&json!({
        "base": "scratch",
        "layers": [{"source": static_helper(), "destination": "/slimforge"}],
        "target": registry.image("operator", "v1"),
        "insecure": true,
    }));
    let mounts = Mounts::new();
    mounts.run(&operator, &["/slimforge", "stage", "install", WS]);

    let installed = mounts.ws("slimforge");
    assert_eq!(
        std::fs::metadata(&installed).unwrap().mode() & 0o7777,
        0o755
    );
    // The copy runs from the volume, in the same shell-less image.
    let workspace = mounts.workspace.path().display().to_string();
    let version = podman_run_with(
        &["-v", &format!("{workspace}:/.slimforge/bin:ro")],
        &operator,
        &[HELPER, "--version"],
    );
    assert_eq!(
        version.trim(),
        format!("slimforge {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn whoami_records_the_images_user_or_root() {
    let registry = Registry::start();
    let busybox = push_busybox(&registry, "busybox", Format::Docker);
    let nobody = support::assemble_spec(&json!({
        "base": busybox,
        "config": {"user": "65534"},
        "target": registry.image("nobody", "v1"),
        "insecure": true,
    }));
    let mounts = Mounts::new();
    mounts.run(
        &nobody,
        &[HELPER, "stage", "whoami", &format!("{WS}/nobody")],
    );
    mounts.run(
        &busybox,
        &[HELPER, "stage", "whoami", &format!("{WS}/root")],
    );
    assert_eq!(
        std::fs::read_to_string(mounts.ws("nobody")).unwrap(),
        "65534:65534"
    );
    assert_eq!(std::fs::read_to_string(mounts.ws("root")).unwrap(), "0:0");
}

#[test]
fn probe_in_busybox_resolves_links_directories_and_users() {
    let registry = Registry::start();
    let busybox = push_busybox(&registry, "busybox", Format::Docker);
    let mounts = Mounts::new();
    let plan = slimforge::plan::PlanRequest::from_text(&format!(
        "FROM {busybox} AS builder\nRUN true\n\
         FROM {busybox}\nCOPY --from=builder /app /bin/app\n\
         COPY --chown=nobody --from=builder /app /tmp/f\n\
         COPY --chown=root:nogroup --from=builder /app /usr/local/bin/x\n\
         WORKDIR /srv\n"
    ))
    .unwrap()
    .plan()
    .unwrap();
    std::fs::write(mounts.ws("plan.json"), serde_json::to_vec(&plan).unwrap()).unwrap();
    mounts.run(
        &busybox,
        &[
            HELPER,
            "stage",
            "probe",
            "--plan",
            &format!("{WS}/plan.json"),
            "--result",
            &format!("{WS}/result.json"),
        ],
    );
    let result: Value =
        serde_json::from_slice(&std::fs::read(mounts.ws("result.json")).unwrap()).unwrap();
    let layers = &result["layers"];
    assert_eq!(layers[0]["destination"], "/usr/bin/app", "{result:#}");
    assert_eq!(layers[0]["owner"], "0:0");
    assert_eq!(layers[1]["destination"], "/tmp/f");
    assert_eq!(layers[1]["owner"], "65534:65534");
    assert_eq!(layers[2]["destination"], "/usr/local/bin/x");
    assert_eq!(layers[2]["owner"], "0:65534");
    assert_eq!(result["config"]["workingDir"], "/srv");
    let dirs = &result["baseDirectories"];
    assert_eq!(
        dirs["/tmp"],
        json!({"mode": "1777", "owner": "0:0"}),
        "{result:#}"
    );
    assert_eq!(dirs["/usr/bin"]["mode"], "0755");
    assert!(
        dirs.get("/bin").is_none(),
        "a symlink is no directory: {result:#}"
    );

    // An unknown --chown user fails the probe, naming the line.
    let plan = slimforge::plan::PlanRequest::from_text(&format!(
        "FROM {busybox} AS builder\nRUN true\nFROM {busybox}\nCOPY --chown=ghost --from=builder /app /app\n"
    ))
    .unwrap()
    .plan()
    .unwrap();
    std::fs::write(mounts.ws("ghost.json"), serde_json::to_vec(&plan).unwrap()).unwrap();
    let options = mounts.options();
    let mut cmd = support::container_tool("podman");
    cmd.args(["run", "--rm", "--network=none", "--tls-verify=false"])
        .args(&options)
        .arg(&busybox)
        .args([HELPER, "stage", "probe", "--plan"])
        .arg(format!("{WS}/ghost.json"))
        .args(["--result", &format!("{WS}/ghost-result.json")]);
    let out = support::run_any(&mut cmd);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 4: COPY --chown=ghost") && stderr.contains("unknown user `ghost`"),
        "{stderr}"
    );

    // The answer is the assemble spec's input as is: files at the resolved
    // destinations keep /bin a symlink and /tmp 1777.
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("app"), "#!/bin/sh\necho app runs\n").unwrap();
    std::fs::set_permissions(
        files.path().join("app"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let image = support::assemble_spec(&json!({
        "base": busybox,
        "baseDirectories": dirs,
        "layers": [
            {"source": files.path().join("app"), "destination": layers[0]["destination"]},
            {"source": files.path().join("app"), "destination": layers[1]["destination"]},
        ],
        "target": registry.image("probed", "v1"),
        "insecure": true,
    }));
    let out = podman_run_with(
        &[],
        &image,
        &[
            "sh",
            "-c",
            "app && stat -c %a /tmp && test -L /bin && echo ok",
        ],
    );
    assert_eq!(out, "app runs\n1777\nok\n");
}

#[test]
fn snapshot_of_a_run_in_busybox_assembles_onto_the_base() {
    let registry = Registry::start();
    let busybox = push_busybox(&registry, "busybox", Format::Docker);
    let mounts = Mounts::new();
    // Debian's busybox-static has no adduser: what `adduser -D -u 10001 app`
    // does, by hand.
    let adduser = "echo app:x:10001:10001::/home/app:/bin/sh >> /etc/passwd \
                   && echo app:x:10001: >> /etc/group \
                   && mkdir -p /home/app && chown 10001:10001 /home/app && chmod 2750 /home/app";
    let script = format!(
        "{HELPER} stage snapshot record {WS}/state \
         && {adduser} && rm /bin/vi \
         && {HELPER} stage snapshot diff {WS}/state --out {WS}/layer.tar.gz"
    );
    mounts.run(&busybox, &["sh", "-c", &script]);

    let layer = mounts.ws("layer.tar.gz");
    let paths = layer_paths(&layer);
    for kept_out in [
        "proc",
        "sys",
        "dev",
        "etc/hosts",
        "etc/resolv.conf",
        "etc/hostname",
        ".slimforge",
    ] {
        assert!(
            !paths
                .iter()
                .any(|p| p == kept_out || p.starts_with(&format!("{kept_out}/"))),
            "{kept_out} in the layer: {paths:#?}"
        );
    }
    for expected in ["etc/passwd", "etc/group", "home/app", "usr/bin/.wh.vi"] {
        assert!(
            paths.iter().any(|p| p == expected),
            "{expected} missing: {paths:#?}"
        );
    }

    let image = support::assemble_spec(&json!({
        "base": busybox,
        "layers": [{"tar": layer, "createdBy": "RUN adduser -D -u 10001 app && rm /bin/vi"}],
        "target": registry.image("snapshot", "v1"),
        "insecure": true,
    }));
    let out = podman_run_with(
        &[],
        &image,
        &[
            "sh",
            "-c",
            "id app && test ! -e /bin/vi && test -L /bin && stat -c %a /tmp && stat -c '%a %u:%g' /home/app \
             && /bin/sh -c 'echo sh works'",
        ],
    );
    assert!(out.starts_with("uid=10001(app) gid=10001(app)"), "{out}");
    // The unchanged /tmp keeps its 1777; the new home its owner and setgid.
    assert!(
        out.ends_with("\n1777\n2750 10001:10001\nsh works\n"),
        "{out}"
    );
}
