//! `slimforge stage clone` against a real git server (`git daemon` on
//! loopback): revisions, the result it reports, what it leaves on disk.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use slimforge::contract::CloneResult;
use support::{GitDaemon, git};

/// A repository `repo` with `main` (app/Dockerfile) and `release` (one
/// more file, tagged `v1`, an executable script); returns the commits.
fn make_repo(base: &Path) -> (String, String) {
    let repo = base.join("repo");
    std::fs::create_dir_all(repo.join("app")).unwrap();
    std::fs::write(repo.join("app/Dockerfile"), "FROM busybox\nCOPY . /src\n").unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "main"]);
    git(&repo, &["checkout", "-q", "-b", "release"]);
    std::fs::write(repo.join("app/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        repo.join("app/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "release"]);
    git(&repo, &["tag", "v1"]);
    git(&repo, &["checkout", "-q", "main"]);
    let rev = |name: &str| {
        let out = Command::new("git")
            .current_dir(&repo)
            .args(["rev-parse", name])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    (rev("main"), rev("release"))
}

/// Runs `stage clone` with a umask of 077; returns its output and result.
fn clone(url: &str, extra: &[&str], dir: &Path) -> (Output, Value) {
    let result = dir.join("ws/results/context.json");
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("umask 077; exec \"$@\"")
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_slimforge"))
        .args(["stage", "clone", "--url", url, "--dest"])
        .arg(dir.join("ws/source"))
        .arg("--workspace")
        .arg(dir.join("ws"))
        .arg("--result")
        .arg(&result)
        .args(extra);
    let output = command.output().expect("run slimforge stage clone");
    let text = std::fs::read_to_string(&result).expect("a result in every case");
    assert!(text.len() <= 3 * 1024, "{} bytes", text.len());
    (output, serde_json::from_str(&text).unwrap())
}

#[test]
fn branches_tags_commits_and_the_remote_head_are_checked_out() {
    let served = tempfile::tempdir().unwrap();
    let (main, release) = make_repo(served.path());
    let daemon = GitDaemon::start(served.path());
    let url = format!("git://127.0.0.1:{}/repo", daemon.port);
    for (revision, commit, has_script) in [
        (None, &main, false),
        (Some("release"), &release, true),
        (Some("v1"), &release, true),
        (Some("refs/heads/main"), &main, false),
        (Some(release.as_str()), &release, true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut extra = vec!["--sub-path", "app", "--dockerfile", "Dockerfile"];
        if let Some(revision) = revision {
            extra.extend(["--revision", revision]);
        }
        let (output, result) = clone(&url, &extra, dir.path());
        assert!(
            output.status.success(),
            "{revision:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(result["commit"], commit.as_str(), "{revision:?}");
        let result: CloneResult = serde_json::from_value(result).unwrap();
        assert_eq!(
            result.dockerfile_text().unwrap().as_deref(),
            Some("FROM busybox\nCOPY . /src\n")
        );
        let source = dir.path().join("ws/source");
        assert!(!source.join(".git").exists(), "the context has no .git");
        assert_eq!(
            source.join("app/run.sh").exists(),
            has_script,
            "{revision:?}"
        );
        // Readable by every user despite the umask; executables stay executable.
        let mode = |p: &str| {
            std::fs::metadata(source.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("app"), 0o755);
        assert_eq!(mode("app/Dockerfile") & 0o444, 0o444);
        if has_script {
            assert_eq!(mode("app/run.sh") & 0o555, 0o555);
        }
        // The workspace's shared directories were made first.
        let results = dir.path().join("ws/results");
        assert_eq!(
            std::fs::metadata(results).unwrap().permissions().mode() & 0o7777,
            0o1777
        );
    }
}

#[test]
fn an_unknown_revision_is_an_error_naming_url_and_revision() {
    let served = tempfile::tempdir().unwrap();
    make_repo(served.path());
    let daemon = GitDaemon::start(served.path());
    let url = format!("git://127.0.0.1:{}/repo", daemon.port);
    let dir = tempfile::tempdir().unwrap();
    let (output, result) = clone(&url, &["--revision", "nope"], dir.path());
    assert!(!output.status.success());
    let error = result["error"].as_str().expect("an error");
    assert!(error.contains(&url), "{error}");
    assert!(error.contains("nope"), "{error}");
    assert!(result.get("commit").is_none());
}

#[test]
fn a_dockerfile_too_large_for_a_termination_message_is_refused() {
    let served = tempfile::tempdir().unwrap();
    make_repo(served.path());
    let repo = served.path().join("repo");
    // Hardly compressible: hex digits of a simple generator.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut text = String::from("FROM busybox\n");
    for _ in 0..800 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        text.push_str(&format!("ENV K{x:016x}={:016x}\n", x.rotate_left(32)));
    }
    std::fs::write(repo.join("app/Dockerfile"), text).unwrap();
    git(&repo, &["commit", "-q", "-a", "-m", "big"]);
    let daemon = GitDaemon::start(served.path());
    let url = format!("git://127.0.0.1:{}/repo", daemon.port);
    let dir = tempfile::tempdir().unwrap();
    let (output, result) = clone(
        &url,
        &["--sub-path", "app", "--dockerfile", "Dockerfile"],
        dir.path(),
    );
    assert!(!output.status.success());
    let error = result["error"].as_str().expect("an error");
    assert!(
        error.contains("too large for a termination message"),
        "{error}"
    );
}

#[test]
fn credentials_never_appear_in_the_result_or_the_log() {
    let served = tempfile::tempdir().unwrap();
    make_repo(served.path());
    let daemon = GitDaemon::start(served.path());
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(credentials.join("username"), "bob\n").unwrap();
    std::fs::write(credentials.join("password"), "s3cr3t-pw\n").unwrap();
    let url = format!("git://bob:s3cr3t-pw@127.0.0.1:{}/missing", daemon.port);
    let credentials = credentials.display().to_string();
    let (output, result) = clone(&url, &["--credentials", &credentials], dir.path());
    assert!(!output.status.success());
    let error = result["error"].as_str().expect("an error");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!error.contains("s3cr3t-pw"), "{error}");
    assert!(!stderr.contains("s3cr3t-pw"), "{stderr}");
    assert!(error.contains("***@127.0.0.1"), "{error}");
}

#[test]
fn ssh_keys_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(credentials.join("ssh-privatekey"), "KEY").unwrap();
    let credentials = credentials.display().to_string();
    let (output, result) = clone(
        "https://git.invalid/repo.git",
        &["--credentials", &credentials],
        dir.path(),
    );
    assert!(!output.status.success());
    let error = result["error"].as_str().expect("an error");
    assert!(error.contains("ssh keys are not supported"), "{error}");
}

/// `stage clone` with `SLIMFORGE_PLAN_REQUEST`: the build planned on the
/// checkout, what each COPY reads digested for the stage cache.
fn clone_planned(url: &str, revision: &str, request: &Value, dir: &Path) -> CloneResult {
    let result = dir.join("ws/results/context.json");
    let output = Command::new(env!("CARGO_BIN_EXE_slimforge"))
        .env("SLIMFORGE_PLAN_REQUEST", request.to_string())
        .args(["stage", "clone", "--url", url, "--revision", revision])
        .arg("--dest")
        .arg(dir.join("ws/source"))
        .arg("--result")
        .arg(&result)
        .output()
        .expect("run slimforge stage clone");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap()
}

#[test]
fn the_files_each_copy_reads_are_digested_in_the_clone() {
    let served = tempfile::tempdir().unwrap();
    let repo = served.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("a.txt"), "a1").unwrap();
    std::fs::write(repo.join("b.txt"), "b1").unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    let daemon = GitDaemon::start(served.path());
    let url = format!("git://127.0.0.1:{}/repo", daemon.port);
    let dockerfile = "FROM busybox AS a\nCOPY a.txt /\nRUN true\nFROM busybox AS b\nCOPY b.txt /\nRUN true\nFROM busybox\nCOPY --from=a /a.txt /\nCOPY --from=b /b.txt /\n";
    let request = serde_json::json!({"dockerfile": dockerfile});

    let dir = tempfile::tempdir().unwrap();
    let first = clone_planned(&url, "main", &request, dir.path());
    assert_eq!(first.context_digests.len(), 2, "{first:?}");

    // b.txt changes: a's digest stays, b's moves.
    std::fs::write(repo.join("b.txt"), "b2").unwrap();
    git(&repo, &["commit", "-q", "-am", "two"]);
    let dir = tempfile::tempdir().unwrap();
    let second = clone_planned(&url, "main", &request, dir.path());
    assert_ne!(second.commit, first.commit);
    let same: Vec<_> = first
        .context_digests
        .iter()
        .filter(|(k, v)| second.context_digests.get(*k) == Some(v))
        .collect();
    assert_eq!(same.len(), 1, "{first:?}\n{second:?}");

    // A Dockerfile that does not plan: no digests, the clone succeeds.
    let bad = serde_json::json!({"dockerfile": "FROM busybox\nNOT_AN_INSTRUCTION x\n"});
    let dir = tempfile::tempdir().unwrap();
    let result = clone_planned(&url, "main", &bad, dir.path());
    assert!(result.context_digests.is_empty());
    assert!(result.commit.is_some());
}
