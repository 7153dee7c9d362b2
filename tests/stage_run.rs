//! `slimforge stage run` in real containers, as a chain pod runs it: the
//! workspace at /.slimforge, the static helper read-only at /.slimforge-bin,
//! uid 0, no network; the plan made by the library from an inline Dockerfile.

mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use serde_json::{Value, json};
use slimforge::plan::{BuildPlan, PlanRequest};
use support::{
    Format, Registry, container_tool, fixtures_dir, podman_run_for_with, podman_run_with,
    push_busybox, push_golang, run_any, static_helper,
};

const HELPER: &str = "/.slimforge-bin/slimforge";

/// A workspace (context/, plan.json, exports/, results/) and a directory
/// holding only the static helper.
struct Workspace {
    helper: tempfile::TempDir,
    dir: tempfile::TempDir,
}

/// What one `stage run` did.
struct Outcome {
    success: bool,
    stderr: String,
    result: Value,
}

impl Workspace {
    fn new() -> Self {
        let helper = support::static_helper_dir();
        let dir = tempfile::tempdir().unwrap();
        // `stage whoami` writes here as the image's user.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::create_dir(dir.path().join("context")).unwrap();
        Self { helper, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Adds a file to the build context.
    fn context_file(&self, name: &str, content: &[u8]) {
        let path = self.path("context").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    /// Plans `dockerfile` and writes the plan as `plan.json`.
    fn plan(&self, dockerfile: &str) -> BuildPlan {
        let request = PlanRequest {
            dockerfile: dockerfile.to_string(),
            ..PlanRequest::default()
        };
        let plan = request.plan().unwrap();
        std::fs::write(self.path("plan.json"), serde_json::to_vec(&plan).unwrap()).unwrap();
        plan
    }

    fn mounts(&self) -> Vec<String> {
        vec![
            "-v".into(),
            format!("{}:/.slimforge", self.dir.path().display()),
            "-v".into(),
            format!("{}:/.slimforge-bin:ro", self.helper.path().display()),
        ]
    }

    /// `stage whoami` in `image` as the image's own user, as the init container does.
    fn whoami(&self, image: &str) {
        let mounts = self.mounts();
        let mounts: Vec<&str> = mounts.iter().map(String::as_str).collect();
        podman_run_with(
            &mounts,
            image,
            &[HELPER, "stage", "whoami", "/.slimforge/whoami"],
        );
    }

    /// `stage run` of `chain` in `image` as uid 0.
    fn run(&self, image: &str, chain: &str) -> Outcome {
        self.run_with(image, chain, &[])
    }

    /// [`Workspace::run`] with more `stage run` arguments.
    fn run_with(&self, image: &str, chain: &str, extra: &[&str]) -> Outcome {
        self.run_as(
            image,
            chain,
            &RunOptions {
                args: extra.iter().map(std::string::ToString::to_string).collect(),
                ..RunOptions::default()
            },
        )
    }

    /// `stage run` of `chain` in `image`, as `options` say.
    fn run_as(&self, image: &str, chain: &str, options: &RunOptions) -> Outcome {
        let mut cmd = container_tool("podman");
        cmd.args([
            "run",
            "--rm",
            "--network=none",
            "--pull=always",
            "--tls-verify=false",
            "--user",
            "0",
        ])
        .args(self.mounts())
        .args(&options.podman);
        for (name, value) in &options.env {
            cmd.arg("--env").arg(format!("{name}={value}"));
        }
        cmd.arg(image)
            .args([HELPER, "stage", "run", "--chain", chain]);
        if !options.plan_from_env {
            cmd.args(["--plan", "/.slimforge/plan.json"]);
        }
        cmd.args(&options.args);
        let output = run_any(&mut cmd);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let result_path = self.path(&format!("results/{chain}.json"));
        let bytes = std::fs::read(&result_path)
            .unwrap_or_else(|e| panic!("{}: {e}\n--- stderr\n{stderr}", result_path.display()));
        assert!(bytes.len() <= 3 * 1024, "result of {} bytes", bytes.len());
        Outcome {
            success: output.status.success(),
            stderr,
            result: serde_json::from_slice(&bytes).unwrap(),
        }
    }

    /// [`Workspace::run_as`], which must succeed.
    fn run_ok_as(&self, image: &str, chain: &str, options: &RunOptions) -> Outcome {
        let outcome = self.run_as(image, chain, options);
        assert!(
            outcome.success,
            "stage run failed: {:#}\n--- stderr\n{}",
            outcome.result, outcome.stderr
        );
        assert_eq!(
            outcome.result["status"], "succeeded",
            "{:#}",
            outcome.result
        );
        outcome
    }

    /// Names in the workspace's `tmp/` (scratch space the helper must clean).
    fn scratch_left(&self) -> Vec<String> {
        std::fs::read_dir(self.path("tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn run_ok(&self, image: &str, chain: &str) -> Outcome {
        self.run_ok_with(image, chain, &[])
    }

    fn run_ok_with(&self, image: &str, chain: &str, extra: &[&str]) -> Outcome {
        self.run_ok_as(
            image,
            chain,
            &RunOptions {
                args: extra.iter().map(std::string::ToString::to_string).collect(),
                ..RunOptions::default()
            },
        )
    }

    /// The entries of an export: path → (mode, uid, gid, content).
    fn export(&self, id: &str) -> BTreeMap<String, Entry> {
        let path = self.path(&format!("exports/{id}.tar"));
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644, "{id}.tar mode");
        let gz = flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap());
        let mut archive = tar::Archive::new(gz);
        let mut entries = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let header = entry.header().clone();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            entries.insert(
                entry.path().unwrap().display().to_string(),
                Entry {
                    mode: header.mode().unwrap() & 0o7777,
                    uid: header.uid().unwrap(),
                    gid: header.gid().unwrap(),
                    content,
                },
            );
        }
        entries
    }
}

/// How a `stage run` container is started beyond the usual.
#[derive(Default)]
struct RunOptions {
    /// More `podman run` options (mounts, capabilities).
    podman: Vec<String>,
    /// Environment of the helper (`SLIMFORGE_CONTEXT`, `SLIMFORGE_PLAN`).
    env: Vec<(String, String)>,
    /// More `stage run` arguments.
    args: Vec<String>,
    /// No `--plan`: the plan comes from `SLIMFORGE_PLAN` in `env`.
    plan_from_env: bool,
}

impl RunOptions {
    /// The build context given as `SLIMFORGE_CONTEXT`.
    fn context(context: &Value) -> Self {
        Self {
            env: vec![("SLIMFORGE_CONTEXT".into(), context.to_string())],
            ..Self::default()
        }
    }
}

#[derive(Debug)]
struct Entry {
    mode: u32,
    uid: u64,
    gid: u64,
    content: Vec<u8>,
}

impl Entry {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.content).into_owned()
    }
}

#[test]
fn the_seed_builds_in_the_go_image_and_its_export_runs_in_busybox() {
    let registry = Registry::start();
    let golang = push_golang(&registry, "golang");
    let busybox = push_busybox(&registry, "busybox", Format::Docker);
    let ws = Workspace::new();
    ws.context_file(
        "app.go",
        &std::fs::read(fixtures_dir().join("seed/app.go")).unwrap(),
    );
    let plan = ws.plan(&format!(
        "FROM {golang} AS builder\nCOPY app.go .\nRUN CGO_ENABLED=0 go build app.go\n\
         FROM {busybox}\nCOPY --from=builder /go/app /app\n"
    ));
    assert_eq!(plan.chains.len(), 1);
    let export = plan.chains[0].exports[0].id.clone();
    let outcome = ws.run_ok(&golang, "builder");
    assert_eq!(outcome.result["exports"], json!([export]));
    assert!(
        outcome
            .stderr
            .contains("[builder 3] RUN CGO_ENABLED=0 go build app.go"),
        "{}",
        outcome.stderr
    );

    let entries = ws.export(&export);
    assert_eq!(entries.keys().collect::<Vec<_>>(), ["go/app"]);
    let app = &entries["go/app"];
    assert_eq!((app.mode, app.uid, app.gid), (0o755, 0, 0));
    // A static binary: it runs in busybox.
    let bin = tempfile::tempdir().unwrap();
    std::fs::write(bin.path().join("app"), &app.content).unwrap();
    std::fs::set_permissions(
        bin.path().join("app"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let mount = format!("{}:/x:ro", bin.path().display());
    let out = podman_run_for_with(&["-v", &mount], &busybox, &["/x/app"], 3.0);
    assert!(out.starts_with("user: root id: 0\n"), "{out}");
}

#[test]
fn a_failing_run_reports_stage_line_exit_code_and_the_end_of_its_output() {
    let registry = Registry::start();
    let busybox = push_busybox(&registry, "busybox", Format::Docker);
    let ws = Workspace::new();
    ws.plan(&format!(
        "FROM {busybox} AS broken\n\
         RUN for i in $(seq 1 300); do echo \"line $i: ééé\"; done; echo to stderr >&2; exit 3\n\
         RUN echo never\n\
         FROM {busybox}\nCOPY --from=broken /etc/passwd /x\n"
    ));
    let outcome = ws.run(&busybox, "broken");
    assert!(!outcome.success);
    let result = &outcome.result;
    assert_eq!(result["status"], "failed", "{result:#}");
    assert_eq!(result["stage"], "broken");
    assert_eq!(result["line"], 2);
    assert_eq!(result["exitCode"], 3);
    assert!(
        result["instruction"]
            .as_str()
            .unwrap()
            .starts_with("RUN for i in"),
        "{result:#}"
    );
    let tail = result["logTail"].as_str().unwrap();
    assert!(tail.ends_with("line 300: ééé\nto stderr"), "{tail}");
    assert!(!tail.contains("line 200:"), "{tail}");
    assert!(outcome.stderr.contains("[broken 2] line 1: ééé"));
    assert!(!outcome.stderr.contains("never"));
    assert!(
        outcome.stderr.contains("stage broken line 2: RUN for i in"),
        "{}",
        outcome.stderr
    );
    assert_eq!(std::fs::read_dir(ws.path("exports")).unwrap().count(), 0);

    // Not only RUN: a missing source names its line too.
    ws.plan(&format!(
        "FROM {busybox} AS nocopy\nENV A=1\nCOPY missing.txt /x\n\
         FROM {busybox}\nCOPY --from=nocopy /x /x\n"
    ));
    let outcome = ws.run(&busybox, "nocopy");
    assert!(!outcome.success);
    let result = &outcome.result;
    assert_eq!(
        (&result["stage"], &result["line"], &result["instruction"]),
        (&json!("nocopy"), &json!(3), &json!("COPY missing.txt /x")),
        "{result:#}"
    );
    let error = result["error"].as_str().unwrap();
    assert!(error.contains("missing.txt"), "{error}");
    assert!(result.get("exitCode").is_none());
}

#[test]
fn user_switches_later_runs_while_copies_stay_root_owned_and_exports_feed_other_chains() {
    let registry = Registry::start();
    let busybox = push_busybox(&registry, "busybox", Format::Docker);
    let ws = Workspace::new();
    ws.context_file("f", b"from the context\n");
    ws.context_file("conf/a.conf", b"a\n");
    let plan = ws.plan(&format!(
        "FROM {busybox} AS b\n\
         RUN mkdir -m 777 /out\n\
         COPY f /out/f\n\
         USER nobody\n\
         WORKDIR /w/x\n\
         RUN id -u > /out/uid && echo \"$HOME\" > /out/home && touch mine \
         && stat -c %u /w /w/x > /out/wd && id -G > /out/groups\n\
         FROM {busybox} AS c\n\
         ARG N=world\n\
         ENV G=\"hello $N\" P=/srv\n\
         WORKDIR $P\n\
         WORKDIR sub\n\
         COPY --from=b /out/ /got/\n\
         COPY --chown=nobody --chmod=600 conf/ conf/\n\
         RUN echo \"$G $N $(pwd) $HOME $(id -u)\" > /got/env\n\
         FROM {busybox}\n\
         COPY --from=c /got /got\n\
         COPY --from=c /srv/sub/conf /conf\n"
    ));
    let ids = |chain: &str| -> Vec<String> {
        plan.chain(chain)
            .unwrap()
            .exports
            .iter()
            .map(|e| e.id.clone())
            .collect()
    };
    let b = ws.run_ok(&busybox, "b");
    assert_eq!(b.result["exports"], json!(ids("b")));
    let out = ws.export(&ids("b")[0]);
    assert_eq!(out["out/uid"].text(), "65534\n");
    assert_eq!((out["out/uid"].uid, out["out/uid"].gid), (65534, 65534));
    assert_eq!(out["out/home"].text(), "/nonexistent\n");
    // WORKDIR creates what it must for the current user, as BuildKit does.
    assert_eq!(out["out/wd"].text(), "65534\n65534\n");
    // No supplementary groups left from root.
    assert_eq!(out["out/groups"].text(), "65534\n");
    assert_eq!((out["out/f"].uid, out["out/f"].gid), (0, 0));
    assert_eq!(out["out/f"].mode, 0o644);
    assert_eq!(out["out"].mode, 0o777);

    ws.run_ok(&busybox, "c");
    let c = ids("c");
    let got = ws.export(&c[0]);
    // COPY --from: the directory's contents, root-owned, modes kept.
    assert_eq!(got["got/uid"].text(), "65534\n");
    assert_eq!((got["got/uid"].uid, got["got/f"].uid), (0, 0));
    assert_eq!(
        got["got/env"].text(),
        "hello world world /srv/sub /root 0\n"
    );
    let conf = ws.export(&c[1]);
    let a = &conf["srv/sub/conf/a.conf"];
    assert_eq!((a.mode, a.uid, a.gid), (0o600, 65534, 65534));
}

#[test]
fn runs_as_the_images_own_user_recorded_by_whoami_in_its_env_and_workdir() {
    let registry = Registry::start();
    let busybox = push_busybox(&registry, "busybox", Format::Docker);
    let nobody = support::assemble_spec(&json!({
        "base": busybox,
        "config": {
            "user": "65534",
            "env": ["PATH=/usr/bin:/bin", "HOME=/data/home", "GREETING=hi"],
            "workingDir": "/tmp",
        },
        "target": registry.image("nobody", "v1"),
        "insecure": true,
    }));
    let ws = Workspace::new();
    ws.plan(&format!(
        "FROM {nobody}\n\
         RUN id -u > /tmp/uid && id -u && echo \"$HOME $GREETING $(pwd)\" > /tmp/env\n\
         FROM {busybox}\nCOPY --from=0 /tmp/uid /tmp/env /x/\n"
    ));
    ws.whoami(&nobody);
    assert_eq!(
        std::fs::read_to_string(ws.path("whoami")).unwrap(),
        "65534:65534"
    );
    let outcome = ws.run_ok(&nobody, "0");
    assert!(
        outcome.stderr.contains("[0 2] 65534\n"),
        "{}",
        outcome.stderr
    );
    let export = ws.export("0-1");
    assert_eq!(export["tmp/uid"].text(), "65534\n");
    assert_eq!(export["tmp/uid"].uid, 65534);
    // The image's own ENV (HOME included) and WORKDIR.
    assert_eq!(ws.export("0-2")["tmp/env"].text(), "/data/home hi /tmp\n");
}

#[test]
fn a_chain_of_copies_runs_in_an_image_without_a_shell() {
    let registry = Registry::start();
    let scratch = support::assemble_spec(&json!({
        "base": "scratch",
        "layers": [{"source": static_helper(), "destination": "/slimforge"}],
        "target": registry.image("helper-only", "v1"),
        "insecure": true,
    }));
    let ws = Workspace::new();
    ws.context_file("conf/a.conf", b"a\n");
    ws.context_file("conf/b.conf", b"b\n");
    ws.context_file("conf/old.bak", b"ignored\n");
    ws.context_file("secret", b"s3cret\n");
    ws.context_file("data.tar", &tar_of(&[("inner/x.txt", b"x\n")]));
    ws.context_file(".dockerignore", b"**/*.bak\n");
    ws.plan(&format!(
        "FROM {scratch} AS files\n\
         COPY conf/ /etc/app/\n\
         COPY --chown=1000:1000 --chmod=640 secret /etc/app/\n\
         ADD data.tar /data/\n\
         COPY <<EOF /etc/app/inline.txt\n\
         inline\n\
         EOF\n\
         FROM {scratch}\n\
         COPY --from=files /etc/app /app\n\
         COPY --from=files /data /data\n"
    ));
    let outcome = ws.run_ok(&scratch, "files");
    assert_eq!(outcome.result["exports"], json!(["files-1", "files-2"]));
    let app = ws.export("files-1");
    let names: Vec<&String> = app.keys().collect();
    assert_eq!(
        names,
        [
            "etc/app",
            "etc/app/a.conf",
            "etc/app/b.conf",
            "etc/app/inline.txt",
            "etc/app/secret"
        ]
    );
    let secret = &app["etc/app/secret"];
    assert_eq!((secret.mode, secret.uid, secret.gid), (0o640, 1000, 1000));
    assert_eq!(app["etc/app/a.conf"].uid, 0);
    assert_eq!(app["etc/app/inline.txt"].text(), "inline\n");
    let data = ws.export("files-2");
    assert_eq!(data["data/inner/x.txt"].text(), "x\n");
}

/// A plain tar of `(path, content)` files, 0644.
fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        builder.append_data(&mut header, path, *content).unwrap();
    }
    builder.into_inner().unwrap()
}

#[test]
fn later_stages_of_a_chain_copy_from_earlier_ones_as_they_were_and_heredocs_run() {
    let registry = Registry::start();
    let busybox = push_busybox(&registry, "busybox", Format::Docker);
    let ws = Workspace::new();
    let plan = ws.plan(&format!(
        "FROM {busybox} AS a\n\
         RUN echo one > /one\n\
         FROM a AS d\n\
         ARG N=v\n\
         RUN echo two > /one\n\
         COPY --from=a /one /from-a\n\
         RUN <<EOF\n\
         echo plain $N > /h1\n\
         EOF\n\
         RUN <<EOF\n\
         #!/bin/sh\n\
         echo script > /h2\n\
         EOF\n\
         RUN cat <<A > /h3 && cat <<'B' >> /h3\n\
         x $N\n\
         A\n\
         y $N\n\
         B\n\
         FROM {busybox}\n\
         COPY --from=d /from-a /h1 /h2 /h3 /x/\n"
    ));
    assert_eq!(plan.chains.len(), 1);
    let outcome = ws.run_ok(&busybox, "d");
    let exports: Vec<String> = plan.chains[0]
        .exports
        .iter()
        .map(|e| e.id.clone())
        .collect();
    assert_eq!(outcome.result["exports"], json!(exports));
    let text = |id: &str, path: &str| ws.export(id)[path].text();
    let by_path = |path: &str| {
        let export = plan.chains[0]
            .exports
            .iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("no export of {path}"));
        export.id.clone()
    };
    assert_eq!(text(&by_path("/one"), "one"), "one\n");
    assert_eq!(text(&by_path("/from-a"), "from-a"), "one\n");
    assert_eq!(text(&by_path("/h1"), "h1"), "plain v\n");
    assert_eq!(text(&by_path("/h2"), "h2"), "script\n");
    assert_eq!(text(&by_path("/h3"), "h3"), "x v\ny $N\n");
}

#[test]
fn exports_keep_setuid_hard_links_symlinks_and_owners_and_a_background_process_does_not_hang() {
    let registry = Registry::start();
    let busybox = push_busybox(&registry, "busybox", Format::Docker);
    let ws = Workspace::new();
    ws.plan(&format!(
        "FROM {busybox} AS e\n\
         RUN mkdir -p /e/sub && echo x > /e/f && chmod 4755 /e/f && ln /e/f /e/hard \
         && ln -s f /e/link && chown 12:34 /e/sub\n\
         RUN (sleep 30; echo late) &\n\
         FROM {busybox}\n\
         COPY --from=e /e /e\n"
    ));
    let started = std::time::Instant::now();
    ws.run_ok(&busybox, "e");
    assert!(
        started.elapsed().as_secs() < 25,
        "waited for the background process"
    );
    let path = ws.path("exports/e-1.tar");
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap());
    let mut archive = tar::Archive::new(gz);
    let mut seen = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let header = entry.header();
        let link = entry
            .link_name()
            .unwrap()
            .map(|l| l.display().to_string())
            .unwrap_or_default();
        seen.insert(
            entry.path().unwrap().display().to_string(),
            (
                header.entry_type(),
                header.mode().unwrap() & 0o7777,
                header.uid().unwrap(),
                header.gid().unwrap(),
                link,
            ),
        );
    }
    use tar::EntryType::{Directory, Link, Regular, Symlink};
    assert_eq!(seen["e"].0, Directory);
    assert_eq!(seen["e/f"], (Regular, 0o4755, 0, 0, String::new()));
    assert_eq!(seen["e/hard"].0, Link, "{seen:?}");
    assert_eq!(seen["e/hard"].4, "e/f");
    assert_eq!(seen["e/link"].0, Symlink);
    assert_eq!(seen["e/link"].4, "f");
    assert_eq!((seen["e/sub"].2, seen["e/sub"].3), (12, 34));
}

#[test]
fn a_runtime_chain_is_snapshotted_and_assembles_onto_its_root_image() {
    let registry = Registry::start();
    let base = push_busybox(&registry, "busybox", Format::Docker);
    let ws = Workspace::new();
    // Debian's busybox-static has no adduser: the same changes by hand.
    let plan = ws.plan(&format!(
        "FROM {base}\nRUN echo 'app:x:10001:10001::/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:10001:' >> /etc/group && mkdir -p /home/app && chown 10001:10001 /home/app && rm /bin/vi\nUSER app\n"
    ));
    let chain = match &plan.final_image {
        slimforge::plan::FinalImage::Runtime(runtime) => runtime.chain.clone(),
        other => panic!("not a runtime image: {other:?}"),
    };
    ws.whoami(&base);
    ws.run_ok_with(&base, &chain, &["--snapshot", "/.slimforge/final.tar.gz"]);
    let layer = ws.path("final.tar.gz");
    let image = support::assemble_spec(&json!({
        "base": base,
        "layers": [{"tar": layer}],
        "config": {"user": "app"},
        "target": registry.image("runtime", "v1"),
        "insecure": true,
    }));
    let printed = podman_run_with(
        &[],
        &image,
        &[
            "sh",
            "-c",
            "id -u; id -un; test ! -e /bin/vi && echo vi-gone; stat -c %u /home/app; stat -c %a /tmp",
        ],
    );
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(
        lines,
        ["10001", "app", "vi-gone", "10001", "1777"],
        "{printed}"
    );
}

/// The layout the kubelet gives a ConfigMap volume: each key a symlink
/// `key -> ..data/key`, `..data` a symlink to a timestamped directory.
fn config_map_volume(keys: &[(&str, &str)]) -> tempfile::TempDir {
    let volume = tempfile::tempdir().unwrap();
    let stamp = "..2026_11_27_21_59_20.1234567890";
    std::fs::create_dir(volume.path().join(stamp)).unwrap();
    for (key, content) in keys {
        std::fs::write(volume.path().join(stamp).join(key), content).unwrap();
        std::os::unix::fs::symlink(format!("..data/{key}"), volume.path().join(key)).unwrap();
    }
    std::os::unix::fs::symlink(stamp, volume.path().join("..data")).unwrap();
    volume
}

#[test]
fn an_inline_context_with_nested_paths_is_copied_and_removed_and_the_plan_comes_from_the_env() {
    let registry = Registry::start();
    let busybox = push_busybox(&registry, "busybox", Format::Docker);
    let ws = Workspace::new();
    let plan = ws.plan(&format!(
        "FROM {busybox} AS b\n\
         COPY . /src/\n\
         RUN id -u > /tmp/uid && (env | grep ^SLIMFORGE_ || true) > /tmp/plumbing\n\
         FROM {busybox}\n\
         COPY --from=b /src /src\n\
         COPY --from=b /tmp/uid /uid\n\
         COPY --from=b /tmp/plumbing /plumbing\n"
    ));
    // A whoami file in a place of its own (each chain pod has one).
    std::fs::create_dir(ws.path("helper")).unwrap();
    std::fs::write(ws.path("helper/whoami"), "65534:65534").unwrap();
    let mut options = RunOptions::context(&json!({"inline": {
        "cmd/x/main.go": "package main\n",
        "top.txt": "top\n",
        "notes.bak": "left out\n",
        ".dockerignore": "*.bak\n",
    }}));
    options.env.push((
        "SLIMFORGE_PLAN".into(),
        serde_json::to_string(&plan).unwrap(),
    ));
    options.plan_from_env = true;
    options.args = vec!["--whoami".into(), "/.slimforge/helper/whoami".into()];
    std::fs::remove_file(ws.path("plan.json")).unwrap();
    ws.run_ok_as(&busybox, "b", &options);

    let src = ws.export("b-1");
    assert_eq!(
        src.keys().collect::<Vec<_>>(),
        [
            "src",
            "src/.dockerignore",
            "src/cmd",
            "src/cmd/x",
            "src/cmd/x/main.go",
            "src/top.txt"
        ]
    );
    let main = &src["src/cmd/x/main.go"];
    assert_eq!(
        (main.mode, main.uid, main.text()),
        (0o644, 0, "package main\n".into())
    );
    assert_eq!(src["src/cmd/x"].mode, 0o755);
    assert_eq!(ws.export("b-2")["tmp/uid"].text(), "65534\n");
    // The pod's own variables (the plan, the context) are not the image's:
    // RUN does not see them.
    assert_eq!(ws.export("b-3")["tmp/plumbing"].text(), "");
    // The materialised context is gone; the shared directories are 1777.
    assert_eq!(ws.scratch_left(), Vec::<String>::new());
    for dir in ["exports", "results", "tmp"] {
        let mode = std::fs::metadata(ws.path(dir))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o1777, "{dir}");
    }
}

#[test]
fn a_config_map_volume_gives_its_keys_at_item_paths_and_modes() {
    let registry = Registry::start();
    let busybox = push_busybox(&registry, "busybox", Format::Docker);
    let ws = Workspace::new();
    let volume = config_map_volume(&[
        ("run.sh", "#!/bin/sh\necho ran from the configmap\n"),
        ("app.go", "package main\n"),
    ]);
    let mount = vec![
        "-v".to_string(),
        format!("{}:/.slimforge-src:ro", volume.path().display()),
    ];
    ws.plan(&format!(
        "FROM {busybox} AS b\n\
         COPY . /ctx/\n\
         RUN /ctx/bin/tools/run.sh > /ran\n\
         FROM {busybox} AS all\n\
         COPY . /all/\n\
         FROM {busybox}\n\
         COPY --from=b /ctx /ctx\n\
         COPY --from=b /ran /ran\n\
         COPY --from=all /all /all\n"
    ));
    // Items: keys remapped to nested paths, one executable.
    let mut options = RunOptions::context(&json!({"configMap": {
        "dir": "/.slimforge-src",
        "items": [
            {"key": "run.sh", "path": "bin/tools/run.sh", "mode": 0o755},
            {"key": "app.go", "path": "src/app.go"},
        ],
    }}));
    options.podman = mount.clone();
    ws.run_ok_as(&busybox, "b", &options);
    let ctx = ws.export("b-1");
    assert_eq!(
        ctx.keys().collect::<Vec<_>>(),
        [
            "ctx",
            "ctx/bin",
            "ctx/bin/tools",
            "ctx/bin/tools/run.sh",
            "ctx/src",
            "ctx/src/app.go"
        ]
    );
    assert_eq!(ctx["ctx/bin/tools/run.sh"].mode, 0o755);
    assert_eq!(ctx["ctx/src/app.go"].mode, 0o644);
    assert_eq!(ws.export("b-2")["ran"].text(), "ran from the configmap\n");

    // No items: every key under its own name, 0644, none of the kubelet's entries.
    let mut options = RunOptions::context(&json!({"configMap": {"dir": "/.slimforge-src"}}));
    options.podman = mount;
    ws.run_ok_as(&busybox, "all", &options);
    let all = ws.export("all-1");
    assert_eq!(
        all.keys().collect::<Vec<_>>(),
        ["all", "all/app.go", "all/run.sh"]
    );
    assert_eq!(all["all/run.sh"].mode, 0o644);
    assert_eq!(
        all["all/run.sh"].text(),
        "#!/bin/sh\necho ran from the configmap\n"
    );
    assert_eq!(ws.scratch_left(), Vec::<String>::new());
}

#[test]
fn a_config_map_item_naming_a_missing_key_fails_the_chain_naming_the_key() {
    let registry = Registry::start();
    let busybox = push_busybox(&registry, "busybox", Format::Docker);
    let ws = Workspace::new();
    let volume = config_map_volume(&[("app.go", "package main\n")]);
    ws.plan(&format!(
        "FROM {busybox} AS b\nCOPY . /ctx/\nFROM {busybox}\nCOPY --from=b /ctx /ctx\n"
    ));
    let mut options = RunOptions::context(&json!({"configMap": {
        "dir": "/.slimforge-src",
        "items": [{"key": "app.go", "path": "app.go"}, {"key": "main.go", "path": "cmd/main.go"}],
    }}));
    options.podman = vec![
        "-v".into(),
        format!("{}:/.slimforge-src:ro", volume.path().display()),
    ];
    let outcome = ws.run_as(&busybox, "b", &options);
    assert!(!outcome.success);
    assert_eq!(outcome.result["status"], "failed", "{:#}", outcome.result);
    let error = outcome.result["error"].as_str().unwrap();
    assert!(
        error.contains("configMap /.slimforge-src: no key `main.go`"),
        "{error}"
    );
    assert!(
        outcome.stderr.contains("no key `main.go`"),
        "{}",
        outcome.stderr
    );
    assert_eq!(ws.scratch_left(), Vec::<String>::new());
}

/// Owner 65534 for everything under `path`, as files written by pods on a
/// root-squashed NFS export are (the test runs as root on the host).
fn chown_tree_to_nobody(path: &std::path::Path) {
    for entry in walkdir::WalkDir::new(path) {
        let entry = entry.unwrap();
        std::os::unix::fs::lchown(entry.path(), Some(65534), Some(65534)).unwrap();
    }
}

/// NFS with root_squash, approximated: the helper runs as uid 0 but
/// without CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER,
/// on a workspace owned by 65534 (mode 0777), so root has no power over
/// files it does not own, as a squashed root has none on the server.
/// What it does not cover: under a real root_squash the files the pod
/// creates belong to nobody, not root, and the server decides alone (here
/// root still owns what it creates); NFS's own behaviour (attribute
/// caching, xattrs the server lacks, silly renames) is not exercised; and
/// the capabilities are gone in the whole container, not only on the
/// workspace, so the chain's RUN is kept trivial and it writes under /tmp
/// (the base's `/` is 0555: root without CAP_DAC_OVERRIDE cannot add to it).
#[test]
fn a_root_squashed_workspace_needs_no_power_over_files_the_helper_does_not_own() {
    let registry = Registry::start();
    let busybox = push_busybox(&registry, "busybox", Format::Docker);
    let ws = Workspace::new();
    let plan = ws.plan(&format!(
        "FROM {busybox} AS a\n\
         RUN mkdir -p /d/ro && echo owned > /d/f && chown 1000:1000 /d/f \
         && echo x > /d/ro/x && chmod 555 /d/ro\n\
         FROM {busybox} AS b\n\
         COPY --from=a /d /tmp/d\n\
         COPY ctx.txt /tmp/ctx.txt\n\
         RUN echo hi > /tmp/out\n\
         FROM {busybox}\n\
         COPY --from=b /tmp/d /tmp/ctx.txt /tmp/out /x/\n"
    ));
    // Chain a with the usual capabilities: its RUN chowns.
    ws.run_ok(&busybox, "a");
    // Now everything is nobody's, as a squashed pod would have left it,
    // and results/ is a directory the helper did not make and may not chmod.
    chown_tree_to_nobody(ws.dir.path());
    std::fs::set_permissions(ws.path("results"), std::fs::Permissions::from_mode(0o777)).unwrap();

    let mut options = RunOptions::context(&json!({"inline": {"ctx.txt": "from the context\n"}}));
    for cap in ["CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER"] {
        options.podman.push(format!("--cap-drop=CAP_{cap}"));
    }
    ws.run_ok_as(&busybox, "b", &options);
    // Scratch space (the materialised context, the unpacked export with its
    // read-only directory) is gone.
    assert_eq!(ws.scratch_left(), Vec::<String>::new());

    // A reader that is neither root nor the writer reads every export.
    let id_of = |path: &str| {
        let chain = plan.chain("b").unwrap();
        chain
            .exports
            .iter()
            .find(|e| e.path == path)
            .unwrap()
            .id
            .clone()
    };
    let export_of = |path: &str| format!("/.slimforge/exports/{}.tar", id_of(path));
    let mounts = ws.mounts();
    let mounts: Vec<&str> = mounts.iter().map(String::as_str).collect();
    let script = format!(
        "gunzip -c {out} | tar -xOf - tmp/out; gunzip -c {ctx} | tar -xOf - tmp/ctx.txt; \
         gunzip -c {d} | tar -tf - | sort; cat /.slimforge/results/b.json",
        out = export_of("/tmp/out"),
        ctx = export_of("/tmp/ctx.txt"),
        d = export_of("/tmp/d"),
    );
    let mut options = vec!["--user", "65534:65534"];
    options.extend(mounts);
    let read = podman_run_with(&options, &busybox, &["sh", "-c", &script]);
    let lines: Vec<&str> = read.lines().collect();
    assert_eq!(
        lines[..7],
        [
            "hi",
            "from the context",
            "tmp/d",
            "tmp/d/f",
            "tmp/d/ro",
            "tmp/d/ro/x",
            r#"{"status":"succeeded","exports":["b-1","b-2","b-3"]}"#
        ],
        "{read}"
    );
    let d = ws.export(&id_of("/tmp/d"));
    // COPY --from gives root-owned files, the read-only directory kept.
    assert_eq!(
        (d["tmp/d/f"].uid, d["tmp/d/f"].text()),
        (0, "owned\n".into())
    );
    assert_eq!(d["tmp/d/ro"].mode, 0o555);
}

/// `tar FLAG` of `files` (path, content) into a file; the system's tar.
fn system_tar(flag: &str, files: &[(&str, &str)]) -> Vec<u8> {
    let tree = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let path = tree.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("archive");
    let names: Vec<&str> = files.iter().map(|(p, _)| *p).collect();
    support::run_ok(
        std::process::Command::new("tar")
            .arg(flag)
            .arg(&archive)
            .arg("-C")
            .arg(tree.path())
            .args(names),
    );
    std::fs::read(archive).unwrap()
}

#[test]
fn add_extracts_bzip2_and_xz_tars_told_by_their_bytes_not_their_names() {
    let registry = Registry::start();
    let busybox = push_busybox(&registry, "busybox", Format::Docker);
    let ws = Workspace::new();
    ws.context_file("tools.data", &system_tar("-cjf", &[("bin/bz", "bzip2\n")]));
    ws.context_file("more.zip", &system_tar("-cJf", &[("bin/xz", "xz\n")]));
    ws.context_file("plain.bz2", b"BZh but no archive\n");
    ws.plan(&format!(
        "FROM {busybox} AS b\n\
         ADD tools.data more.zip plain.bz2 /opt/\n\
         FROM {busybox}\n\
         COPY --from=b /opt /opt\n"
    ));
    ws.run_ok(&busybox, "b");
    let opt = ws.export("b-1");
    assert_eq!(
        opt.keys().collect::<Vec<_>>(),
        [
            "opt",
            "opt/bin",
            "opt/bin/bz",
            "opt/bin/xz",
            "opt/plain.bz2"
        ]
    );
    assert_eq!(opt["opt/bin/bz"].text(), "bzip2\n");
    assert_eq!(opt["opt/bin/xz"].text(), "xz\n");
    assert_eq!(opt["opt/plain.bz2"].text(), "BZh but no archive\n");
}

#[test]
fn several_sources_need_a_destination_ending_in_a_slash_while_one_goes_into_an_existing_dir() {
    let registry = Registry::start();
    let busybox = push_busybox(&registry, "busybox", Format::Docker);
    let ws = Workspace::new();
    ws.context_file("a.txt", b"a\n");
    ws.context_file("b.txt", b"b\n");
    ws.context_file("only.md", b"md\n");
    ws.plan(&format!(
        "FROM {busybox} AS ok\n\
         RUN mkdir /existing\n\
         COPY a.txt /existing\n\
         COPY *.md /single-match.md\n\
         COPY a.txt b.txt /both/\n\
         WORKDIR /w\n\
         COPY *.txt .\n\
         FROM {busybox} AS glob\n\
         RUN mkdir /existing\n\
         COPY *.txt /existing\n\
         FROM {busybox} AS two\n\
         ADD *.txt /target\n\
         FROM {busybox}\n\
         COPY --from=ok /existing /single-match.md /both /w /ok/\n\
         COPY --from=glob /existing /glob\n\
         COPY --from=two /target /two\n"
    ));
    ws.run_ok(&busybox, "ok");
    let exported: Vec<String> = (1..=4)
        .flat_map(|i| ws.export(&format!("ok-{i}")).into_keys())
        .collect();
    assert_eq!(
        exported,
        [
            "existing",
            "existing/a.txt",
            "single-match.md",
            "both",
            "both/a.txt",
            "both/b.txt",
            "w",
            "w/a.txt",
            "w/b.txt"
        ]
    );

    // A glob with two matches onto a directory that exists, written without `/`.
    let glob = ws.run(&busybox, "glob");
    assert!(!glob.success);
    let result = &glob.result;
    assert_eq!(
        (&result["stage"], &result["line"], &result["instruction"]),
        (&json!("glob"), &json!(10), &json!("COPY *.txt /existing")),
        "{result:#}"
    );
    assert_eq!(
        result["error"],
        "/existing: When using COPY with more than one source file, the destination must be \
         a directory and end with a / (2 sources: a.txt, b.txt)"
    );
    // (Sources written out are counted by the planner already.) ADD says ADD.
    let two = ws.run(&busybox, "two");
    assert!(!two.success);
    assert_eq!(two.result["line"], 12, "{:#}", two.result);
    let error = two.result["error"].as_str().unwrap();
    assert!(
        error.contains("When using ADD with more than one source file"),
        "{error}"
    );
}

#[test]
fn copy_keeps_hard_links_from_the_context_and_from_exports() {
    let registry = Registry::start();
    let busybox = push_busybox(&registry, "busybox", Format::Docker);
    let ws = Workspace::new();
    ws.context_file("l/one", b"linked\n");
    std::fs::hard_link(ws.path("context/l/one"), ws.path("context/l/two")).unwrap();
    ws.context_file("l/alone", b"alone\n");
    ws.plan(&format!(
        "FROM {busybox} AS a\n\
         RUN mkdir /d && echo x > /d/a && ln /d/a /d/b && echo y > /d/c\n\
         FROM {busybox} AS b\n\
         COPY --from=a /d /fromexport\n\
         COPY l/ /fromctx/\n\
         RUN cd / && stat -c '%n %h %i' fromexport/a fromexport/b fromexport/c \
         fromctx/one fromctx/two fromctx/alone > /tmp/links\n\
         FROM {busybox}\n\
         COPY --from=b /tmp/links /links\n"
    ));
    ws.run_ok(&busybox, "a");
    ws.run_ok(&busybox, "b");
    let text = ws.export("b-1")["tmp/links"].text();
    let stat: BTreeMap<&str, (u64, u64)> = text
        .lines()
        .map(|line| {
            let parts: Vec<&str> = line.split(' ').collect();
            (
                parts[0],
                (parts[1].parse().unwrap(), parts[2].parse().unwrap()),
            )
        })
        .collect();
    assert_eq!(stat["fromexport/a"].0, 2, "{text}");
    assert_eq!(stat["fromexport/a"], stat["fromexport/b"], "{text}");
    assert_eq!(stat["fromexport/c"].0, 1, "{text}");
    assert_eq!(stat["fromctx/one"].0, 2, "{text}");
    assert_eq!(stat["fromctx/one"], stat["fromctx/two"], "{text}");
    assert_eq!(stat["fromctx/alone"].0, 1, "{text}");
}
