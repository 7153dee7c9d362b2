//! `slimforge build` end to end: the ImageBuild's pods run by `podman kube
//! play` against a real registry, the images checked by skopeo and podman.
//! Nothing of ours may be left behind: pods, containers, volumes.

mod support;

use std::process::{Command, Output};

use serde_json::Value;
use support::{
    Format, GitDaemon, Registry, git, podman, podman_env, podman_run_for, push_busybox,
    push_golang, skopeo_inspect, skopeo_inspect_raw, static_helper_stripped, unique_name,
};

const SEED_DOCKERFILE: &str = r#"FROM {golang} AS builder
ARG DEBIAN_FRONTEND=noninteractive
COPY app.go .
RUN CGO_ENABLED=0 go build app.go

FROM {busybox}
COPY --from=builder /go/app .
CMD ["./app"]
"#;

/// An ImageBuild manifest: `dockerfile` with its `{golang}`/`{busybox}`
/// filled in, `files` inline, pushed to `image`.
fn manifest(
    name: &str,
    dockerfile: &str,
    files: &[(&str, &str)],
    image: &str,
    reg: &Registry,
) -> String {
    let mut dockerfile = dockerfile.to_string();
    if dockerfile.contains("{golang}") {
        dockerfile = dockerfile.replace("{golang}", &push_golang(reg, "golang"));
    }
    let busybox = push_busybox(reg, "busybox", Format::Docker);
    let dockerfile = dockerfile.replace("{busybox}", &busybox);
    let inline: serde_json::Map<String, Value> = files
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    let ib = serde_json::json!({
        "apiVersion": "slimforge.dev/v1alpha1",
        "kind": "ImageBuild",
        "metadata": {"name": name},
        "spec": {
            "context": {"inline": inline},
            "dockerfile": dockerfile,
            "output": {"image": image, "insecure": true},
            "timeout": "10m",
        },
    });
    serde_yaml::to_string(&ib).unwrap()
}

fn slimforge_build(manifest: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("build.yaml");
    std::fs::write(&file, manifest).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_slimforge"))
        .envs(podman_env())
        .arg("build")
        .arg(&file)
        .arg("--helper-binary")
        .arg(static_helper_stripped())
        .output()
        .expect("run slimforge build");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    output
}

fn last_line(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

/// `podman ps -a`, `podman pod ps` and `podman volume ls` name nothing of `build`.
fn assert_nothing_left(build: &str) {
    for args in [
        &["ps", "-a", "--format", "{{.Names}}"][..],
        &["pod", "ps", "--format", "{{.Name}}"],
        &["volume", "ls", "--format", "{{.Name}}"],
    ] {
        let out = podman(args);
        let listed = String::from_utf8_lossy(&out.stdout);
        assert!(
            !listed.lines().any(|l| l.starts_with(build)),
            "podman {} still lists {build}:\n{listed}",
            args.join(" ")
        );
    }
}

/// The `error:` line of a build that must have failed.
fn error_line(output: &Output) -> String {
    assert!(!output.status.success(), "the build succeeded");
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .find(|l| l.starts_with("error:"))
        .expect("an error line")
        .to_string()
}

/// The `error:` line and the `  | ` lines under it (a failed pod's log
/// tail), of a build that must have failed.
fn error_block(output: &Output) -> Vec<String> {
    error_line(output);
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .skip_while(|l| !l.starts_with("error:"))
        .take_while(|l| l.starts_with("error:") || l.starts_with("  | "))
        .map(str::to_string)
        .collect()
}

/// `slimforge build FILE` started in the background, its output piped.
fn spawn_build(file: &std::path::Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_slimforge"))
        .envs(podman_env())
        .arg("build")
        .arg(file)
        .arg("--helper-binary")
        .arg(static_helper_stripped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run slimforge build")
}

fn compressed_size(reference: &str) -> u64 {
    let manifest = skopeo_inspect_raw(reference);
    let layers: u64 = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();
    layers + manifest["config"]["size"].as_u64().unwrap()
}

#[test]
fn the_seed_builds_end_to_end_runs_and_is_reproducible() {
    let reg = Registry::start();
    let app = std::fs::read_to_string(support::fixtures_dir().join("seed/app.go")).unwrap();
    let name = unique_name("seed");
    let image = reg.image("goapp", "v1");
    let text = manifest(&name, SEED_DOCKERFILE, &[("app.go", &app)], &image, &reg);

    let first = slimforge_build(&text);
    assert!(first.status.success(), "slimforge build failed");
    let reference = last_line(&first);
    let (repo, digest) = reference.split_once("@sha256:").expect("REPO@sha256:<hex>");
    assert_eq!(repo, image.rsplit_once(':').unwrap().0);
    assert_eq!(digest.len(), 64);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(
        stderr.contains("smaller"),
        "the size reduction is shown:\n{stderr}"
    );
    // What a person reads: progress, sizes, errors; no log lines unless
    // SLIMFORGE_LOG asks for them.
    assert!(
        !stderr.contains(" INFO ") && !stderr.contains(" DEBUG "),
        "log lines at the default level:\n{stderr}"
    );

    // Third parties accept it and it runs.
    skopeo_inspect(&reference);
    let out = podman_run_for(&reference, 2.5);
    assert!(out.contains("user: root id: 0"), "{out}");
    // busybox + the app: nothing else.
    let busybox = push_busybox(&reg, "busybox", Format::Docker);
    assert!(
        compressed_size(&reference) <= compressed_size(&busybox) + 1_300_000,
        "final image too big: {} vs busybox {}",
        compressed_size(&reference),
        compressed_size(&busybox)
    );
    assert_nothing_left(&name);

    // Built again without the stage cache (which would hand back the same
    // image without building it): every pod runs, and the digest is the same.
    let uncached = text.replace("timeout: 10m", "timeout: 10m\n  cache:\n    noCache: true");
    assert_ne!(uncached, text);
    let second = slimforge_build(&uncached);
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("builder        succeeded"),
        "the builder ran again"
    );
    assert!(second.status.success());
    assert_eq!(last_line(&second), reference);
    assert_nothing_left(&name);
}

/// `[  4.2s] <stage> ran <start>s–<end>s (<pod>)` lines from the timeline.
fn intervals(stderr: &str) -> Vec<(String, f64, f64)> {
    stderr
        .lines()
        .filter_map(|line| {
            let rest = line.split("] ").nth(1)?;
            let (stage, rest) = rest.split_once(" ran ")?;
            let span = rest.split_whitespace().next()?;
            let (a, b) = span.trim_end_matches('s').split_once("s–")?;
            Some((stage.trim().to_string(), a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

#[test]
fn independent_stages_run_in_parallel() {
    let reg = Registry::start();
    let dockerfile = r#"FROM {busybox} AS one
RUN sleep 3 && echo one > /one.txt

FROM {busybox} AS two
RUN sleep 3 && echo two > /two.txt

FROM {busybox}
COPY --from=one /one.txt /srv/
COPY --from=two /two.txt /srv/
CMD ["cat", "/srv/one.txt", "/srv/two.txt"]
"#;
    let name = unique_name("parallel");
    let image = reg.image("parallel", "v1");
    let started = std::time::Instant::now();
    let out = slimforge_build(&manifest(&name, dockerfile, &[], &image, &reg));
    let wall = started.elapsed().as_secs_f64();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let runs = intervals(&stderr);
    let one = runs
        .iter()
        .find(|r| r.0 == "one")
        .expect("stage one's interval");
    let two = runs
        .iter()
        .find(|r| r.0 == "two")
        .expect("stage two's interval");
    // Run one after the other they would not overlap at all. `kube play`
    // starts the pods one after the other, about a second apart when the
    // machine is busy, so a full 3 s overlap is not to be expected.
    let overlap = one.2.min(two.2) - one.1.max(two.1);
    assert!(
        overlap >= 1.0,
        "the two 3 s stages overlapped {overlap:.1}s (one {one:?}, two {two:?}); build wall time {wall:.1}s"
    );
    let printed = podman_run_for(&last_line(&out), 1.0);
    assert!(
        printed.contains("one") && printed.contains("two"),
        "{printed}"
    );
    assert_nothing_left(&name);
}

#[test]
fn a_final_stage_with_run_becomes_a_runtime_pod() {
    let reg = Registry::start();
    // Debian's busybox-static has no adduser: what `adduser -D -u 10001 app` does.
    let dockerfile = r#"FROM {golang} AS builder
RUN echo built > /built

FROM {busybox}
COPY --from=builder /built /built
RUN echo app:x:10001:10001::/home/app:/bin/sh >> /etc/passwd \
 && echo app:x:10001: >> /etc/group \
 && mkdir -p /home/app && chown 10001:10001 /home/app
USER app
CMD ["id"]
"#;
    let name = unique_name("runtime");
    let image = reg.image("runtime", "v1");
    let out = slimforge_build(&manifest(&name, dockerfile, &[], &image, &reg));
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("runtime") || stderr.contains("(0)"),
        "{stderr}"
    );
    // The reduction is measured against the Go builder, not the busybox
    // the final stage runs on.
    let golang = push_golang(&reg, "golang");
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("largest builder image"))
        .unwrap_or_else(|| panic!("no size summary in:\n{stderr}"));
    assert!(
        summary.starts_with(&format!(
            "largest builder image {golang}: {} compressed → final image ",
            slimforge::api::human_size(compressed_size(&golang))
        )) && summary.ends_with("× smaller)"),
        "{summary}"
    );
    let printed = podman_run_for(&last_line(&out), 1.0);
    assert!(printed.contains("uid=10001(app)"), "{printed}");
    assert_nothing_left(&name);
}

#[test]
fn a_failing_run_names_stage_line_and_code_and_leaves_nothing() {
    let reg = Registry::start();
    let dockerfile = "FROM {busybox} AS builder\nRUN echo compiling\nRUN echo broken >&2; exit 3\n\nFROM {busybox}\nCOPY --from=builder /etc/passwd /x\n";
    let name = unique_name("failing");
    let out = slimforge_build(&manifest(
        &name,
        dockerfile,
        &[],
        &reg.image("failing", "v1"),
        &reg,
    ));
    let error = error_line(&out);
    assert!(error.contains("stage builder"), "{error}");
    assert!(error.contains("line 3"), "{error}");
    assert!(error.contains("exit code 3"), "{error}");
    // The log tail follows, a line each (it once ran into the error line).
    let block = error_block(&out);
    assert!(
        block[1..]
            .iter()
            .any(|l| l.starts_with("  | ") && l.ends_with("broken")),
        "the log tail: {block:?}"
    );
    assert_nothing_left(&name);
}

#[test]
fn a_dockerfile_that_does_not_parse_creates_no_pod() {
    let reg = Registry::start();
    let name = unique_name("unparsable");
    let out = slimforge_build(&manifest(
        &name,
        "FROM {busybox}\nCOPY --frm=x /a /b\n",
        &[],
        &reg.image("unparsable", "v1"),
        &reg,
    ));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 2"), "{stderr}");
    assert!(
        !stderr.contains("publishing the helper"),
        "stopped before anything ran"
    );
    assert_nothing_left(&name);
}

/// As `kubectl apply` does by default: an unknown field, an unserved
/// apiVersion or a value of the wrong type is refused naming the field and
/// the file, before anything runs; `slimforge plan` reads manifests alike.
#[test]
fn a_manifest_with_an_unknown_field_or_version_is_refused_naming_it() {
    // Refused before anything is pulled or pushed: no registry needed.
    let name = unique_name("strict");
    let good = serde_yaml::to_string(&serde_json::json!({
        "apiVersion": "slimforge.dev/v1alpha1",
        "kind": "ImageBuild",
        "metadata": {"name": name},
        "spec": {
            "context": {"inline": {"a": "x"}},
            "dockerfile": "FROM busybox\nCOPY a /a\n",
            "output": {"image": "127.0.0.1:9/strict:v1", "insecure": true},
            "timeout": "10m",
        },
    }))
    .unwrap();
    let cases = [
        (
            "  timeout: 10m\n",
            "  timout: 10m\n",
            "spec.timout: unknown field",
        ),
        (
            "apiVersion: slimforge.dev/v1alpha1",
            "apiVersion: slimforge.dev/v9",
            "apiVersion: `slimforge.dev/v9` is not served: this slimforge serves slimforge.dev/v1alpha1",
        ),
        (
            "    insecure: true\n",
            "    insecure: 'yes'\n",
            "spec.output.insecure: must be of type boolean, not string",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (from, to, want) in cases {
        assert!(good.contains(from), "{from} in {good}");
        let bad = good.replacen(from, to, 1);
        let file = dir.path().join("build.yaml");
        std::fs::write(&file, &bad).unwrap();
        let out = slimforge_build(&bad);
        let line = error_line(&out);
        assert!(
            line.starts_with("error: ")
                && line.contains("build.yaml: ImageBuild is invalid: ")
                && line.contains(want),
            "{to}: {line}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("publishing the helper"),
            "{to}: something ran:\n{stderr}"
        );

        let plan = Command::new(env!("CARGO_BIN_EXE_slimforge"))
            .arg("plan")
            .arg(&file)
            .output()
            .unwrap();
        assert!(!plan.status.success(), "plan accepted {to}");
        let stderr = String::from_utf8_lossy(&plan.stderr);
        assert!(stderr.contains(want), "plan, {to}: {stderr}");
    }

    // Well-formed but wrong: the controller's own check, naming the file.
    let bad = good.replacen("  timeout: 10m\n", "  timeout: soon\n", 1);
    let line = error_line(&slimforge_build(&bad));
    assert!(
        line.contains("build.yaml: InvalidSpec: spec.timeout `soon`: expected a duration"),
        "{line}"
    );
    assert_nothing_left(&name);
}

#[test]
fn a_git_context_is_cloned_on_its_branch_and_built_from_its_subpath() {
    let reg = Registry::start();
    let golang = push_golang(&reg, "golang");
    let busybox = push_busybox(&reg, "busybox", Format::Docker);
    let dockerfile = SEED_DOCKERFILE
        .replace("{golang}", &golang)
        .replace("{busybox}", &busybox);
    let app = std::fs::read_to_string(support::fixtures_dir().join("seed/app.go")).unwrap();

    // The default branch has no app; the `release` branch has it in app/.
    let served = tempfile::tempdir().unwrap();
    let repo = served.path().join("repo");
    std::fs::create_dir_all(repo.join("app")).unwrap();
    std::fs::write(repo.join("README"), "the seed, in app/\n").unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "readme"]);
    git(&repo, &["checkout", "-q", "-b", "release"]);
    std::fs::write(repo.join("app/app.go"), &app).unwrap();
    std::fs::write(repo.join("app/Dockerfile"), &dockerfile).unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "the app"]);
    git(&repo, &["checkout", "-q", "main"]);
    let daemon = GitDaemon::start(served.path());

    let name = unique_name("git");
    let image = reg.image("gitapp", "v1");
    let ib = serde_json::json!({
        "apiVersion": "slimforge.dev/v1alpha1",
        "kind": "ImageBuild",
        "metadata": {"name": name},
        "spec": {
            "context": {"git": {
                "url": format!("git://127.0.0.1:{}/repo", daemon.port),
                "revision": "release",
                "subPath": "app",
            }},
            "dockerfilePath": "Dockerfile",
            "output": {"image": image, "insecure": true},
            "timeout": "10m",
        },
    });
    let out = slimforge_build(&serde_yaml::to_string(&ib).unwrap());
    drop(daemon);
    assert!(out.status.success(), "slimforge build failed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("git clone"),
        "the context pod ran:\n{stderr}"
    );
    let reference = last_line(&out);
    assert!(reference.contains("@sha256:"), "{reference}");
    let printed = podman_run_for(&reference, 2.5);
    assert!(printed.contains("user: root id: 0"), "{printed}");
    assert_nothing_left(&name);
}

/// Stopped by SIGTERM (a CI job cancelled, a terminal closed) in the middle
/// of a stage: it says so, exits non-zero and removes everything it started.
#[test]
fn sigterm_in_the_middle_of_a_stage_removes_everything() {
    let reg = Registry::start();
    let dockerfile = "FROM {busybox} AS builder\nRUN sleep 120\n\nFROM {busybox}\nCOPY --from=builder /etc/passwd /x\n";
    let name = unique_name("sigterm");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("build.yaml");
    std::fs::write(
        &file,
        manifest(&name, dockerfile, &[], &reg.image("sigterm", "v1"), &reg),
    )
    .unwrap();
    let mut child = spawn_build(&file);
    // Until the builder pod's main container (`<pod>-stage`) runs its
    // `sleep` (bounded; the build is killed if it never gets there).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let running = loop {
        let out = podman(&["ps", "--format", "{{.Names}}"]);
        let listed = String::from_utf8_lossy(&out.stdout).into_owned();
        if listed
            .lines()
            .any(|l| l.starts_with(&name) && l.ends_with("-g1-1-stage"))
        {
            break Ok(());
        }
        if child.try_wait().unwrap().is_some() {
            break Err(format!(
                "slimforge build ended before the stage ran: {listed}"
            ));
        }
        if std::time::Instant::now() > deadline {
            break Err(format!("the stage never started: {listed}"));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    if let Err(why) = running {
        // SIGTERM rather than SIGKILL: let it clean up after itself.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let out = child.wait_with_output().unwrap();
        panic!("{why}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 128 + 15, as a shell reports a process SIGTERM ended.
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("interrupted by SIGTERM"), "{stderr}");
    assert_nothing_left(&name);
}

/// A final stage that cannot be evaluated in its base (here `--chown` to a
/// user the base does not have) fails the build naming the line and the
/// user, and leaves nothing behind.
#[test]
fn a_final_stage_naming_an_unknown_user_fails_naming_line_and_user() {
    let reg = Registry::start();
    let dockerfile = "FROM {busybox} AS builder\nRUN echo hi > /hello\n\nFROM {busybox}\nCOPY --chown=nosuchuser --from=builder /hello /hello\n";
    let name = unique_name("chown");
    let out = slimforge_build(&manifest(
        &name,
        dockerfile,
        &[],
        &reg.image("chown", "v1"),
        &reg,
    ));
    let error = error_line(&out);
    assert!(error.contains("nosuchuser"), "{error}");
    assert!(error.contains("line 5"), "{error}");
    assert_nothing_left(&name);
}

/// busybox with its config's WorkingDir set to `workdir`, which its
/// filesystem lacks (as `buildah config` or crane make them), pushed as
/// `repo`.
fn push_busybox_working_in(reg: &Registry, repo: &str, workdir: &str) -> String {
    let busybox = push_busybox(reg, "busybox", Format::Docker);
    let buildah = |args: &[&str]| {
        let out = Command::new("buildah")
            .envs(podman_env())
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "buildah {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let container = buildah(&["from", "--tls-verify=false", &format!("docker://{busybox}")]);
    buildah(&["config", "--workingdir", workdir, &container]);
    let image = reg.image(repo, "v1");
    buildah(&[
        "commit",
        "--tls-verify=false",
        &container,
        &format!("docker://{image}"),
    ]);
    buildah(&["rm", &container]);
    image
}

/// Docker and the kubelet create an image's missing WorkingDir; podman's
/// kube play refuses to start such a container (`workdir "/src" does not
/// exist`), which once left `slimforge build` pending until its timeout.
/// It builds as in a cluster; a kube play failure that cannot be helped
/// (a WorkingDir that is a file) ends the build at once with podman's words.
#[test]
fn an_image_whose_working_dir_is_missing_builds_and_a_play_failure_ends_the_build() {
    let reg = Registry::start();
    let missing = push_busybox_working_in(&reg, "nowd", "/src");
    let name = unique_name("workdir");
    let dockerfile = format!(
        "FROM {missing} AS build\nCOPY a .\nRUN pwd > /built && cat a >> /built\n\nFROM {{busybox}}\nCOPY --from=build /built /built\nCMD [\"cat\", \"/built\"]\n"
    );
    let out = slimforge_build(&manifest(
        &name,
        &dockerfile,
        &[("a", "from a\n")],
        &reg.image("workdir", "v1"),
        &reg,
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = podman_run_for(&last_line(&out), 1.0);
    assert_eq!(printed.trim(), "/src\nfrom a", "{printed}");
    assert_nothing_left(&name);

    let file = push_busybox_working_in(&reg, "filewd", "/bin/busybox");
    let name = unique_name("workdir-file");
    let dockerfile = format!(
        "FROM {file} AS build\nRUN true\n\nFROM {{busybox}}\nCOPY --from=build /bin/busybox /x\n"
    );
    let started = std::time::Instant::now();
    let out = slimforge_build(&manifest(
        &name,
        &dockerfile,
        &[],
        &reg.image("workdir-file", "v1"),
        &reg,
    ));
    // The error line and the podman message under it.
    let line = error_block(&out).join("\n");
    assert!(
        line.contains("StageFailed")
            && line.contains("workdir \"/bin/busybox\" exists on container")
            && line.contains("is not a directory"),
        "{line}"
    );
    // Not the build's 10-minute timeout.
    assert!(
        !line.contains("timed out") && started.elapsed().as_secs() < 300,
        "{line}"
    );
    assert_nothing_left(&name);
}

/// A build killed with SIGKILL cleans nothing; the next run of the same
/// file removes what it left and builds. Two runs of one file started
/// together: one builds, the other is refused naming the running process.
#[test]
fn a_killed_build_is_cleaned_by_the_next_run_and_a_second_run_is_refused() {
    let reg = Registry::start();
    let name = unique_name("killed");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("build.yaml");
    let slow = manifest(
        &name,
        "FROM {busybox}\nRUN sleep 120\n",
        &[],
        &reg.image("killed", "v1"),
        &reg,
    );
    std::fs::write(&file, &slow).unwrap();
    let start = || spawn_build(&file);
    let mut first = start();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let out = podman(&["ps", "--format", "{{.Names}}"]);
        let listed = String::from_utf8_lossy(&out.stdout).into_owned();
        if listed
            .lines()
            .any(|l| l.starts_with(&name) && l.ends_with("-stage"))
        {
            break;
        }
        assert!(
            first.try_wait().unwrap().is_none(),
            "the build ended before its RUN"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the RUN never started: {listed}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // While it runs, a second run of the same file is refused.
    let second = start().wait_with_output().unwrap();
    let refused = error_line(&second);
    assert!(
        refused.contains(&format!(
            "a local build named {name} is running already (process {})",
            first.id()
        )),
        "{refused}"
    );
    first.kill().unwrap(); // SIGKILL: nothing is cleaned
    first.wait().unwrap();

    let quick = slow.replace("RUN sleep 120", "RUN true");
    std::fs::write(&file, &quick).unwrap();
    let (a, b) = (start(), start());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let (built, refused) = if a.status.success() { (a, b) } else { (b, a) };
    let stderr = String::from_utf8_lossy(&built.stderr);
    assert!(built.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "removing what an earlier build of {name} left (its process is gone): pods {name}-g1-"
        )),
        "{stderr}"
    );
    let line = error_line(&refused);
    assert!(
        line.contains(&format!("a local build named {name} is running already")),
        "{line}"
    );
    assert_nothing_left(&name);
}

/// Push credentials reach the registry and are never printed, even at
/// `SLIMFORGE_LOG=trace`: not the password, not its base64 form. A wrong
/// password is refused in words naming the registry and the user (it once
/// read `HTTP status client error (401 Unauthorized)`).
#[test]
fn push_credentials_work_and_are_never_printed_even_at_trace() {
    use base64::Engine as _;
    let bases = Registry::start();
    let busybox = push_busybox(&bases, "busybox", Format::Docker);
    let password = "Pw-7f3a91c4e2-never-printed";
    let private = Registry::start_htpasswd("pusher", password);
    let dir = tempfile::tempdir().unwrap();
    let run = |secret: &str, tag: &str| {
        let name = unique_name("creds");
        let ib = serde_json::json!({
            "apiVersion": "slimforge.dev/v1alpha1",
            "kind": "ImageBuild",
            "metadata": {"name": name},
            "spec": {
                "context": {"inline": {"a": "x"}},
                "dockerfile": format!("FROM {busybox} AS b\nRUN echo built > /b\nFROM {busybox}\nCOPY --from=b /b /b\nCOPY a /a\n"),
                "output": {"image": private.image("creds", tag), "insecure": true},
                "timeout": "10m",
            },
        });
        let file = dir.path().join(format!("{tag}.yaml"));
        std::fs::write(&file, serde_yaml::to_string(&ib).unwrap()).unwrap();
        let auth = dir.path().join(format!("{tag}.json"));
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("pusher:{secret}"));
        std::fs::write(
            &auth,
            serde_json::json!({"auths": {private.addr(): {"auth": encoded}}}).to_string(),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_slimforge"))
            .envs(podman_env())
            .env("SLIMFORGE_LOG", "trace")
            // podman pulls the helper published there with its own login.
            .env("REGISTRY_AUTH_FILE", private.auth_file().unwrap())
            .arg("build")
            .arg(&file)
            .arg("--push-secret")
            .arg(&auth)
            .arg("--helper-binary")
            .arg(static_helper_stripped())
            .output()
            .expect("run slimforge build");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(printed.contains("TRACE"), "not at trace level");
        for secret in [secret.to_string(), encoded] {
            assert!(
                !printed.contains(&secret),
                "printed a credential:\n{printed}"
            );
        }
        assert_nothing_left(&name);
        (out, printed)
    };

    let (out, printed) = run(password, "v1");
    assert!(out.status.success(), "{printed}");
    skopeo_inspect_with_creds(&last_line(&out), "pusher", password);

    let (out, _) = run("Wrong-0c55d1-also-never-printed", "v2");
    let line = error_line(&out);
    assert!(
        line.contains(&format!(
            "registry {} refused the credentials for user `pusher`",
            private.addr()
        )),
        "{line}"
    );
}

fn skopeo_inspect_with_creds(reference: &str, user: &str, password: &str) {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("--creds={user}:{password}"))
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo inspect {reference}: {out:?}");
}
