//! The final image from the plan: `stage probe` evaluates the final stage in
//! its real base (busybox in podman, the static helper mounted, the plan in
//! SLIMFORGE_PLAN) and `slimforge assemble --image` follows the recipe with
//! the export archives of the workspace; podman and skopeo check the result.
//! The evaluation rules themselves are tested against a temp-dir root.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use slimforge::contract::{FinalRecipe, LayerOrigin, PLAN_ENV};
use slimforge::plan::{BuildPlan, PlanRequest};
use slimforge::recipe::{AssembleOutput, BaseView, assemble_spec, evaluate, evaluate_scratch};
use support::{
    Format, Registry, container_tool, podman_run_with, push_busybox, run_any, run_ok,
    skopeo_inspect_config,
};

const HELPER: &str = "/.slimforge-bin/slimforge";

fn plan(dockerfile: &str) -> BuildPlan {
    PlanRequest::from_text(dockerfile).unwrap().plan().unwrap()
}

fn plan_with_args(dockerfile: &str, args: &[&str]) -> BuildPlan {
    let mut request = PlanRequest::from_text(dockerfile).unwrap();
    request.add_build_args(args.iter().copied()).unwrap();
    request.plan().unwrap()
}

// ---------------------------------------------------------------- evaluation

/// A merged-/usr base like the harness's busybox: /bin → usr/bin, /tmp
/// 1777, root and nobody, an `app` user.
fn base_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for d in ["usr/bin", "usr/sbin", "etc", "tmp", "srv"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    symlink("usr/bin", root.join("bin")).unwrap();
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1001::/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\nnogroup:x:65534:\nstaff:x:50:\n",
    )
    .unwrap();
    dir
}

fn eval(plan: &BuildPlan, root: &Path, workdir: &str) -> FinalRecipe {
    try_eval(plan, root, workdir).unwrap()
}

fn try_eval(
    plan: &BuildPlan,
    root: &Path,
    workdir: &str,
) -> Result<FinalRecipe, slimforge::recipe::RecipeError> {
    let env = BTreeMap::from([
        (
            "PATH".to_string(),
            "/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        ),
        ("LANG".to_string(), "C".to_string()),
    ]);
    evaluate(
        plan,
        &BaseView {
            root: &root,
            env,
            workdir: PathBuf::from(workdir),
        },
    )
}

const BUILDER: &str = "FROM 127.0.0.1:5000/golang AS builder\nWORKDIR /go\nRUN make\n";

#[test]
fn seed_shape_copies_the_export_into_the_images_workdir() {
    let base = base_root();
    let plan = plan(&format!(
        "{BUILDER}FROM 127.0.0.1:5000/busybox\nCOPY --from=builder /go/app .\nCMD [\"./app\"]\n"
    ));
    let recipe = eval(&plan, base.path(), "/srv");
    assert_eq!(recipe.layers.len(), 1);
    let layer = &recipe.layers[0];
    assert_eq!(layer.line, 5);
    assert_eq!(layer.created_by, "COPY --from=builder /go/app .");
    // `.` is the image's WORKDIR, a directory.
    assert_eq!(layer.destination.as_deref(), Some("/srv"));
    assert!(layer.destination_is_dir);
    assert_eq!(layer.owner.as_deref(), Some("0:0"));
    let LayerOrigin::Exports { exports } = &layer.source else {
        panic!("{:?}", layer.source)
    };
    assert_eq!(exports.len(), 1);
    assert_eq!(exports[0].path, "/go/app");
    assert_eq!(exports[0].id, plan.chains[0].exports[0].id);
    assert_eq!(recipe.config.cmd, Some(vec!["./app".to_string()]));
    assert_eq!(recipe.config.env, None, "no ENV, no env change");
    assert_eq!(recipe.base_directories["/srv"].mode, "0755");
}

#[test]
fn a_destination_through_a_symlinked_dir_lands_in_its_target_with_chown_ids() {
    let base = base_root();
    let plan = plan(&format!(
        "{BUILDER}FROM 127.0.0.1:5000/busybox\nCOPY --chown=nobody --from=builder /go/app /bin/\n\
         COPY --chown=app:staff --chmod=750 --from=builder /go/tool /bin/tool\n\
         COPY --chown=1234 --from=builder /go/x /tmp/x\n"
    ));
    let recipe = eval(&plan, base.path(), "/");
    let [app, tool, x] = &recipe.layers[..] else {
        panic!("{recipe:#?}")
    };
    assert_eq!(app.destination.as_deref(), Some("/usr/bin"));
    assert!(app.destination_is_dir);
    assert_eq!(app.owner.as_deref(), Some("65534:65534"));
    assert_eq!(tool.destination.as_deref(), Some("/usr/bin/tool"));
    assert!(!tool.destination_is_dir);
    assert_eq!(tool.owner.as_deref(), Some("1000:50"));
    assert_eq!(tool.chmod.as_deref(), Some("0750"));
    // A numeric --chown without a group: gid = uid.
    assert_eq!(x.owner.as_deref(), Some("1234:1234"));
    let dirs: Vec<&str> = recipe.base_directories.keys().map(String::as_str).collect();
    assert_eq!(dirs, ["/tmp", "/usr", "/usr/bin"]);
    assert_eq!(recipe.base_directories["/tmp"].mode, "1777");
}

#[test]
fn env_merges_over_the_images_workdir_is_relative_and_user_is_kept_as_written() {
    let base = base_root();
    let plan = plan(
        "FROM 127.0.0.1:5000/busybox\nENV PATH=/opt/bin:$PATH APP_HOME=/srv\n\
         WORKDIR $APP_HOME\nWORKDIR app\nCOPY app.conf conf/\nENV LANG=C.UTF-8 GREETING=\"$LANG here\"\nUSER nobody\n",
    );
    let recipe = eval(&plan, base.path(), "/");
    assert_eq!(
        recipe.config.env,
        Some(vec![
            "PATH=/opt/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            "APP_HOME=/srv".into(),
            "LANG=C.UTF-8".into(),
            // Values see the environment from before their instruction.
            "GREETING=C here".into(),
        ])
    );
    assert_eq!(recipe.config.working_dir.as_deref(), Some("/srv/app"));
    assert_eq!(recipe.config.user.as_deref(), Some("nobody"));
    // /srv/app is new: WORKDIR makes it, root-owned (USER comes later).
    let workdir = &recipe.layers[0];
    assert_eq!(workdir.source, LayerOrigin::Directory);
    assert_eq!(workdir.destination.as_deref(), Some("/srv/app"));
    assert_eq!(workdir.owner.as_deref(), Some("0:0"));
    assert_eq!(recipe.layers.len(), 2, "/srv is the base's: {recipe:#?}");
    let layer = &recipe.layers[1];
    assert_eq!(layer.destination.as_deref(), Some("/srv/app/conf"));
    assert!(layer.destination_is_dir);
    assert_eq!(
        layer.source,
        LayerOrigin::Context {
            paths: vec!["app.conf".into()],
            files: vec![]
        }
    );
}

#[test]
fn args_expand_destinations_and_build_args_win() {
    let base = base_root();
    let dockerfile = "FROM 127.0.0.1:5000/busybox\nARG DIR=/opt/app\nARG MODE=644\n\
                      COPY --chmod=$MODE a b $DIR/\n";
    let recipe = eval(&plan(dockerfile), base.path(), "/");
    assert_eq!(recipe.layers[0].destination.as_deref(), Some("/opt/app"));
    assert_eq!(recipe.layers[0].chmod.as_deref(), Some("0644"));
    let recipe = eval(
        &plan_with_args(dockerfile, &["DIR=/usr/local/lib"]),
        base.path(),
        "/",
    );
    assert_eq!(
        recipe.layers[0].destination.as_deref(),
        Some("/usr/local/lib")
    );
    // ARGs are not the image's ENV.
    assert_eq!(recipe.config.env, None);
}

#[test]
fn an_unknown_chown_user_is_an_error_naming_the_line() {
    let base = base_root();
    let plan = plan(&format!(
        "{BUILDER}FROM 127.0.0.1:5000/busybox\nCOPY --from=builder /go/app /app\n\
         COPY --chown=ghost --from=builder /go/app /app2\n"
    ));
    let err = try_eval(&plan, base.path(), "/").unwrap_err();
    assert_eq!(err.line(), Some(6), "{err}");
    let message = err.to_string();
    assert!(
        message.starts_with("line 6: COPY --chown=ghost"),
        "{message}"
    );
    assert!(message.contains("unknown user `ghost`"), "{message}");
}

#[test]
fn commands_metadata_and_heredocs_follow_docker() {
    let base = base_root();
    let plan = plan(
        "FROM 127.0.0.1:5000/busybox\nARG GREETING=hi\nCMD [\"sh\"]\nSHELL [\"/bin/ash\", \"-eo\", \"pipefail\", \"-c\"]\n\
         ENTRYPOINT run $HOME\nEXPOSE 80 8000-8001/udp\nLABEL \"org.example.v\"=$GREETING\n\
         STOPSIGNAL SIGQUIT\nVOLUME [\"/data\"]\nHEALTHCHECK --interval=5s CMD wget -q localhost\n\
         COPY <<EOF /etc/motd\n$GREETING there\nEOF\n",
    );
    let recipe = eval(&plan, base.path(), "/");
    let config = &recipe.config;
    // Shell form through the current SHELL; the CMD set earlier in the stage stays.
    assert_eq!(
        config.entrypoint,
        Some(vec![
            "/bin/ash".into(),
            "-eo".into(),
            "pipefail".into(),
            "-c".into(),
            "run $HOME".into()
        ])
    );
    assert_eq!(config.cmd, Some(vec!["sh".to_string()]));
    assert_eq!(
        config.exposed_ports,
        Some(vec!["80/tcp".into(), "8000/udp".into(), "8001/udp".into()])
    );
    assert_eq!(config.labels.as_ref().unwrap()["org.example.v"], "hi");
    assert_eq!(config.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(config.volumes, Some(vec!["/data".to_string()]));
    let check = config.healthcheck.as_ref().unwrap();
    assert_eq!(check.test, ["CMD-SHELL", "wget -q localhost"]);
    assert_eq!(check.interval.as_deref(), Some("5s"));
    let LayerOrigin::Inline { files } = &recipe.layers[0].source else {
        panic!("{:?}", recipe.layers[0].source)
    };
    assert_eq!(files[0].content, "hi there\n");
    assert_eq!(recipe.layers[0].destination.as_deref(), Some("/etc/motd"));

    // An ENTRYPOINT alone drops the base's CMD.
    let plan = self::plan("FROM 127.0.0.1:5000/busybox\nENTRYPOINT [\"/app\"]\n");
    let recipe = eval(&plan, base.path(), "/");
    assert_eq!(recipe.config.cmd, None);
    assert_eq!(recipe.config.entrypoint, Some(vec!["/app".to_string()]));
}

#[test]
fn a_runtime_plan_takes_its_config_from_every_stage_and_the_snapshot_as_its_layer() {
    let base = base_root();
    let plan = plan(
        "FROM 127.0.0.1:5000/busybox AS base\nENV A=1\nWORKDIR /srv\nCOPY x /x\n\
         FROM base\nARG B=2\nENV B=$B PATH=/app:$PATH\nRUN touch /made\nUSER nobody\nCMD [\"serve\"]\n",
    );
    let recipe = eval(&plan, base.path(), "/");
    let [layer] = &recipe.layers[..] else {
        panic!("{recipe:#?}")
    };
    assert_eq!(
        layer.source,
        LayerOrigin::Snapshot {
            path: "exports/snapshot.tar".into()
        }
    );
    assert_eq!(
        recipe.config.env,
        Some(vec![
            "A=1".to_string(),
            "B=2".into(),
            "PATH=/app:/usr/sbin:/usr/bin:/sbin:/bin".into()
        ])
    );
    assert_eq!(recipe.config.working_dir.as_deref(), Some("/srv"));
    assert_eq!(recipe.config.user.as_deref(), Some("nobody"));
    assert_eq!(recipe.config.cmd, Some(vec!["serve".to_string()]));
}

#[test]
fn on_scratch_only_numeric_owners_resolve_and_path_is_dockers_default() {
    let dockerfile = |chown: &str| {
        format!(
            "{BUILDER}FROM scratch\nCOPY --chown={chown} --from=builder /go/app /bin/app\nENV PATH=/opt:$PATH\n"
        )
    };
    let work = tempfile::tempdir().unwrap();
    let recipe = evaluate_scratch(&plan(&dockerfile("1000:1000")), work.path()).unwrap();
    // No links in scratch: the destination is as written.
    assert_eq!(recipe.layers[0].destination.as_deref(), Some("/bin/app"));
    assert_eq!(recipe.layers[0].owner.as_deref(), Some("1000:1000"));
    assert!(recipe.base_directories.is_empty());
    assert_eq!(
        recipe.config.env,
        Some(vec![
            "PATH=/opt:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()
        ])
    );
    let err = evaluate_scratch(&plan(&dockerfile("app")), work.path()).unwrap_err();
    assert_eq!(err.line(), Some(5), "{err}");
}

#[test]
fn the_assemble_spec_reads_exports_from_the_workspace_and_names_a_missing_one() {
    let base = base_root();
    let plan = plan(&format!(
        "{BUILDER}FROM 127.0.0.1:5000/busybox\nCOPY --chown=nobody --from=builder /go/app /bin/\n"
    ));
    let recipe = eval(&plan, base.path(), "/");
    let ws = tempfile::tempdir().unwrap();
    let output = AssembleOutput {
        image: "127.0.0.1:5000/app:v1".into(),
        additional_tags: vec!["latest".into()],
        insecure: true,
        ..AssembleOutput::default()
    };
    let err = assemble_spec(&plan, &recipe, ws.path(), None, &output).unwrap_err();
    assert_eq!(err.line(), Some(5), "{err}");
    assert!(err.to_string().contains("export archive"), "{err}");

    std::fs::create_dir(ws.path().join("exports")).unwrap();
    let archive = ws
        .path()
        .join(format!("exports/{}.tar", plan.chains[0].exports[0].id));
    std::fs::write(&archive, b"").unwrap();
    let spec = assemble_spec(&plan, &recipe, ws.path(), None, &output).unwrap();
    assert_eq!(spec.base, "127.0.0.1:5000/busybox");
    assert_eq!(spec.target, "127.0.0.1:5000/app:v1");
    assert_eq!(spec.additional_tags, ["latest"]);
    assert_eq!(spec.work_dir, Some(ws.path().join("tmp")));
    assert_eq!(spec.base_directories["/usr/bin"].mode, "0755");
    let layer = &spec.layers[0];
    assert_eq!(layer.owner.as_deref(), Some("65534:65534"));
    let copy = layer.copy.as_ref().unwrap();
    assert_eq!(copy.archives, [archive]);
    assert_eq!(copy.sources, ["/go/app"]);
    assert_eq!(copy.destination, "/usr/bin");
    assert!(copy.destination_is_dir);
}

// ---------------------------------------------------------------- in containers

/// A build's workspace as the pods share it, and the static helper.
struct Workspace {
    helper: tempfile::TempDir,
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Self {
        let helper = support::static_helper_dir();
        // The assemble pod's user runs the helper too.
        std::fs::set_permissions(helper.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        // Written by root pods, read and written by the non-root assemble pod.
        for sub in ["", "exports", "results", "tmp", "context"] {
            let path = dir.path().join(sub);
            std::fs::create_dir_all(&path).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        Self { helper, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn mounts(&self) -> Vec<String> {
        vec![
            "-v".into(),
            format!("{}:/.slimforge", self.dir.path().display()),
            "-v".into(),
            format!("{}:/.slimforge-bin:ro", self.helper.path().display()),
        ]
    }

    /// Writes the export `id` of `files` (path → (content, mode)) as a
    /// chain pod does, with the real export writer.
    fn export(&self, id: &str, pattern: &str, files: &[(&str, &[u8], u32)]) {
        let root = tempfile::tempdir().unwrap();
        for (path, content, mode) in files {
            let disk = root.path().join(path);
            std::fs::create_dir_all(disk.parent().unwrap()).unwrap();
            std::fs::write(&disk, content).unwrap();
            std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        slimforge::rootfs::copy::write_export(
            root.path(),
            pattern,
            &self.path(&format!("exports/{id}.tar")),
        )
        .unwrap();
    }

    /// `stage probe` in `base`, the plan in SLIMFORGE_PLAN, as the probe pod runs it.
    fn probe(&self, base: &str, plan: &BuildPlan) -> Value {
        let mut options = self.mounts();
        options.push("-e".into());
        options.push(format!(
            "{PLAN_ENV}={}",
            serde_json::to_string(plan).unwrap()
        ));
        let options: Vec<&str> = options.iter().map(String::as_str).collect();
        podman_run_with(
            &options,
            base,
            &[
                HELPER,
                "stage",
                "probe",
                "--result",
                "/.slimforge/results/probe.json",
            ],
        );
        serde_json::from_slice(&std::fs::read(self.path("results/probe.json")).unwrap()).unwrap()
    }

    /// `slimforge assemble --image` on the host, the plan in SLIMFORGE_PLAN.
    fn assemble(&self, plan: &BuildPlan, image: &str) -> Value {
        run_ok(
            Command::new(env!("CARGO_BIN_EXE_slimforge"))
                .env(PLAN_ENV, serde_json::to_string(plan).unwrap())
                .arg("assemble")
                .arg("--workspace")
                .arg(self.dir.path())
                .args(["--image", image, "--insecure", "--result"])
                .arg(self.path("results/assemble.json")),
        );
        self.assemble_result()
    }

    /// `slimforge assemble --image ARGS…` as the assemble pod runs it, in
    /// `image` (any image: the helper is mounted): another uid, a read-only
    /// root without /tmp, only the workspace writable. Returns stdout.
    fn assemble_as_pod(&self, plan: &BuildPlan, image: &str, args: &[&str]) -> String {
        let mut cmd = container_tool("podman");
        cmd.args([
            "run",
            "--rm",
            "--network=host",
            "--pull=always",
            "--tls-verify=false",
            "--read-only",
            "--read-only-tmpfs=false",
            "--user",
            "65532:65532",
            // The operator image carries CA certificates; busybox has none.
            "-v",
            "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro",
            "-e",
        ])
        .arg(format!(
            "{PLAN_ENV}={}",
            serde_json::to_string(plan).unwrap()
        ))
        .args(self.mounts())
        .arg(image)
        .args([
            HELPER,
            "assemble",
            "--workspace",
            "/.slimforge",
            "--insecure",
            "--result",
            "/.slimforge/results/assemble.json",
            "--image",
        ])
        .args(args);
        let out = run_any(&mut cmd);
        assert!(
            out.status.success(),
            "assemble pod failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn assemble_result(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.path("results/assemble.json")).unwrap()).unwrap()
    }
}

/// The final stage's one export: its id.
fn export_id(plan: &BuildPlan) -> String {
    plan.chains[0].exports[0].id.clone()
}

const APP: &str = "#!/bin/sh\necho \"app runs as $(id -u) in $(pwd)\"\n";

#[test]
fn the_seed_shape_probed_in_busybox_assembles_as_a_non_root_pod_and_runs() {
    let registry = Registry::start();
    let busybox = push_busybox(&registry, "busybox", Format::Docker);
    let ws = Workspace::new();
    let plan = plan(&format!(
        "FROM {busybox} AS builder\nWORKDIR /go\nRUN true\n\n\
         FROM {busybox}\nCOPY --from=builder /go/app .\nCMD [\"./app\"]\n"
    ));
    ws.export(
        &export_id(&plan),
        "/go/app",
        &[("go/app", APP.as_bytes(), 0o755)],
    );
    let recipe = ws.probe(&busybox, &plan);
    assert_eq!(recipe["layers"][0]["destination"], "/", "{recipe:#}");

    let target = registry.image("goapp", "v1");
    let stdout = ws.assemble_as_pod(&plan, &busybox, &[&target, "--tag", "latest"]);
    let result = ws.assemble_result();
    let reference = result["reference"].as_str().unwrap();
    assert_eq!(stdout.lines().last(), Some(reference));
    assert_eq!(result["layers"].as_array().unwrap().len(), 1);
    // Its scratch space is gone.
    assert_eq!(std::fs::read_dir(ws.path("tmp")).unwrap().count(), 0);

    let output = podman_run_with(&[], reference, &[]);
    assert_eq!(output, "app runs as 0 in /\n");
    let latest = podman_run_with(&[], &registry.image("goapp", "latest"), &[]);
    assert_eq!(latest, output);
}

#[test]
fn a_copy_into_a_symlinked_dir_keeps_bin_sh_and_chown_names_resolve_in_the_base() {
    let registry = Registry::start();
    let busybox = push_busybox(&registry, "busybox", Format::Docker);
    let ws = Workspace::new();
    let plan = plan(&format!(
        "FROM {busybox} AS builder\nRUN true\n\
         FROM {busybox}\nCOPY --chown=nobody --from=builder /go/app /bin/\nCMD [\"app\"]\n"
    ));
    ws.export(
        &export_id(&plan),
        "/go/app",
        &[("go/app", APP.as_bytes(), 0o755)],
    );
    let recipe = ws.probe(&busybox, &plan);
    assert_eq!(recipe["layers"][0]["destination"], "/usr/bin", "{recipe:#}");
    assert_eq!(recipe["layers"][0]["owner"], "65534:65534");
    let result = ws.assemble(&plan, &registry.image("linked", "v1"));
    let reference = result["reference"].as_str().unwrap();
    let out = podman_run_with(
        &[],
        reference,
        &[
            "/bin/sh",
            "-c",
            "test -L /bin && stat -c '%u:%g %a' /usr/bin/app && app && stat -c %a /tmp",
        ],
    );
    assert_eq!(out, "65534:65534 755\napp runs as 0 in /\n1777\n");
}

#[test]
fn env_workdir_and_user_reach_the_config_and_a_relative_copy_lands_in_workdir() {
    let registry = Registry::start();
    let busybox = push_busybox(&registry, "busybox", Format::Docker);
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path("context/conf")).unwrap();
    std::fs::write(ws.path("context/conf/app.conf"), "x=1\n").unwrap();
    std::fs::write(ws.path("context/conf/secret.key"), "no\n").unwrap();
    std::fs::write(ws.path("context/.dockerignore"), "**/*.key\n").unwrap();
    let plan = plan(&format!(
        "FROM {busybox} AS builder\nRUN true\n\
         FROM {busybox}\nENV PATH=/opt/bin:$PATH\nWORKDIR /srv\n\
         COPY --from=builder /go/bin/ bin/\nCOPY conf etc/\nUSER nobody\n\
         WORKDIR /srv/data\nWORKDIR ..\nCMD [\"hello\"]\n"
    ));
    ws.export(
        &export_id(&plan),
        "/go/bin/",
        &[
            ("go/bin/hello", APP.as_bytes(), 0o755),
            ("go/bin/lib/x", b"x", 0o600),
        ],
    );
    ws.probe(&busybox, &plan);
    // The image's PATH is busybox's; a relative COPY is under the WORKDIR.
    let result = ws.assemble(&plan, &registry.image("env", "v1"));
    let reference = result["reference"].as_str().unwrap();
    let config = skopeo_inspect_config(reference);
    let env = config["config"]["Env"].as_array().unwrap();
    assert_eq!(
        env[0], "PATH=/opt/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "{config:#}"
    );
    assert_eq!(env.len(), 1, "{config:#}");
    assert_eq!(config["config"]["WorkingDir"], "/srv");
    assert_eq!(config["config"]["User"], "nobody");
    let out = podman_run_with(
        &[],
        reference,
        &[
            "/bin/sh",
            "-c",
            "PATH=/srv/bin:$PATH hello && stat -c '%a %u' bin/hello bin/lib/x && ls etc \
             && touch data/mine && stat -c '%a %U' . data data/mine",
        ],
    );
    // A WORKDIR after USER belongs to that user, as with Docker.
    assert_eq!(
        out,
        "app runs as 65534 in /srv\n755 0\n600 0\napp.conf\n755 root\n755 nobody\n644 nobody\n"
    );
}

#[test]
fn a_runtime_plan_assembles_the_snapshot_with_the_chains_config() {
    let registry = Registry::start();
    let busybox = push_busybox(&registry, "busybox", Format::Docker);
    let ws = Workspace::new();
    let plan = plan(&format!(
        "FROM {busybox}\nENV GREETING=hello\nWORKDIR /srv\nRUN echo \"$GREETING from run\" > note\n\
         CMD [\"cat\", \"note\"]\n"
    ));
    std::fs::write(ws.path("plan.json"), serde_json::to_vec(&plan).unwrap()).unwrap();
    let chain = plan.chains[0].id.clone();
    let mut options = ws.mounts();
    options.extend(["--user".to_string(), "0".to_string()]);
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    podman_run_with(
        &options,
        &busybox,
        &[
            HELPER,
            "stage",
            "run",
            "--plan",
            "/.slimforge/plan.json",
            "--chain",
            &chain,
            "--snapshot",
            "/.slimforge/exports/snapshot.tar",
        ],
    );
    let recipe = ws.probe(&busybox, &plan);
    assert_eq!(
        recipe["layers"][0]["source"]["kind"], "snapshot",
        "{recipe:#}"
    );
    let result = ws.assemble(&plan, &registry.image("runtime", "v1"));
    let reference = result["reference"].as_str().unwrap();
    let config = skopeo_inspect_config(reference);
    assert_eq!(config["config"]["WorkingDir"], "/srv", "{config:#}");
    let env = config["config"]["Env"].as_array().unwrap();
    assert!(env.contains(&Value::from("GREETING=hello")), "{config:#}");
    assert!(
        env.iter().any(|e| e.as_str().unwrap().starts_with("PATH=")),
        "{config:#}"
    );
    assert_eq!(podman_run_with(&[], reference, &[]), "hello from run\n");
}

#[test]
fn a_scratch_final_image_needs_no_probe_and_gets_dockers_path() {
    let registry = Registry::start();
    let busybox = push_busybox(&registry, "busybox", Format::Docker);
    let ws = Workspace::new();
    let plan = plan(&format!(
        "FROM {busybox} AS builder\nRUN true\n\
         FROM scratch\nCOPY --chown=1000 --from=builder /go/busybox /bin/\nENV PATH=/opt:$PATH\n\
         ADD files.tar /opt/\n\
         ENTRYPOINT [\"/bin/busybox\"]\nCMD [\"echo\", \"scratch works\"]\n"
    ));
    let busybox_binary = std::fs::read(
        std::env::split_paths(&std::env::var_os("PATH").unwrap())
            .map(|d| d.join("busybox"))
            .find(|p| p.is_file())
            .expect("busybox on PATH"),
    )
    .unwrap();
    ws.export(
        &export_id(&plan),
        "/go/busybox",
        &[("go/busybox", &busybox_binary, 0o755)],
    );
    // ADD extracts a tar from the context.
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(9);
    header.set_mode(0o640);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, "in/x", &b"extracted"[..])
        .unwrap();
    std::fs::write(ws.path("context/files.tar"), tar.into_inner().unwrap()).unwrap();
    // No results/probe.json: scratch is evaluated by the assemble step
    // itself, here as the (non-root) assemble pod.
    ws.assemble_as_pod(&plan, &busybox, &[&registry.image("scratch", "v1")]);
    let result = ws.assemble_result();
    let reference = result["reference"].as_str().unwrap();
    assert!(result.get("base").is_none(), "{result:#}");
    // The same inputs give the same image, whoever assembles it.
    let again = ws.assemble(&plan, &registry.image("scratch", "v2"));
    assert_eq!(again["digest"], result["digest"]);
    assert_eq!(
        podman_run_with(&[], reference, &["cat", "/opt/in/x"]),
        "extracted"
    );
    let config = skopeo_inspect_config(reference);
    assert_eq!(
        config["config"]["Env"],
        serde_json::json!([
            "PATH=/opt:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        ]),
        "{config:#}"
    );
    assert_eq!(podman_run_with(&[], reference, &[]), "scratch works\n");
    let owner = podman_run_with(&[], reference, &["stat", "-c", "%u:%g %a", "/bin/busybox"]);
    assert_eq!(owner, "1000:1000 755\n");
}
