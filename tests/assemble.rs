//! `slimforge assemble` against real registries (CNCF Distribution), with
//! skopeo and podman as independent verifiers of every image it pushes.

mod support;

use std::process::{Command, Output};

use serde_json::{Value, json};
use support::{
    Format, Registry, TokenPolicy, podman_run, podman_run_for, push_busybox, push_golang, seed_app,
    skopeo_inspect, skopeo_inspect_raw,
};

struct Run {
    output: Output,
    result: Option<Value>,
    _dir: tempfile::TempDir,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    fn ok(&self) -> &Value {
        assert!(
            self.output.status.success(),
            "assemble failed:\n{}",
            self.stderr()
        );
        self.result.as_ref().expect("a result file")
    }
    fn failed(&self) -> String {
        assert!(!self.output.status.success(), "assemble should fail");
        assert!(self.result.is_none(), "no result on failure");
        self.stderr()
    }
}

/// Writes `spec` as YAML next to nothing else and runs the binary on it.
fn assemble(spec: &Value) -> Run {
    assemble_with(spec, &[])
}

/// [`assemble`] with more command-line arguments.
fn assemble_with(spec: &Value, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("spec.yaml");
    std::fs::write(&spec_path, serde_yaml::to_string(spec).unwrap()).unwrap();
    let result_path = dir.path().join("result.json");
    let output = Command::new(env!("CARGO_BIN_EXE_slimforge"))
        .arg("assemble")
        .arg("--spec")
        .arg(&spec_path)
        .arg("--result")
        .arg(&result_path)
        .args(args)
        .output()
        .unwrap();
    let result = std::fs::read(&result_path)
        .ok()
        .map(|bytes| serde_json::from_slice(&bytes).unwrap());
    Run {
        output,
        result,
        _dir: dir,
    }
}

fn seed_spec(base: &str, target: &str) -> Value {
    json!({
        "base": base,
        "layers": [{"source": seed_app(), "destination": "/app"}],
        "config": {"cmd": ["/app"]},
        "target": target,
        "insecure": true,
    })
}

/// The hex part of each layer digest in a manifest (query strings in the
/// access log carry `sha256%3A…`, paths `sha256:…`: the hex matches both).
fn layer_digests(reference: &str) -> Vec<String> {
    skopeo_inspect_raw(reference)["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:")
                .to_string()
        })
        .collect()
}

#[test]
fn seed_final_stage_runs_as_root_and_as_nobody() {
    let registry = Registry::start();
    let base = push_busybox(&registry, "busybox", Format::Docker);
    let mut spec = seed_spec(&base, &registry.image("goapp", "v1"));
    spec["additionalTags"] = json!(["latest"]);
    let run = assemble(&spec);
    let result = run.ok();
    let reference = result["reference"].as_str().unwrap();
    // The last stdout line is the pushed reference by digest.
    assert_eq!(run.stdout().lines().last(), Some(reference));
    assert!(reference.starts_with(&format!("{}/goapp@sha256:", registry.addr())));

    let inspected = skopeo_inspect(reference);
    assert_eq!(inspected["Digest"], result["digest"]);
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 2);
    // The extra tag names the same manifest.
    let latest = skopeo_inspect(&registry.image("goapp", "latest"));
    assert_eq!(latest["Digest"], result["digest"]);
    // The base's tag was resolved with HEAD; GETs went by digest only.
    let requests = registry.requests();
    assert!(
        requests.contains(&"HEAD /v2/busybox/manifests/latest".to_string()),
        "{requests:#?}"
    );
    assert!(
        !requests.contains(&"GET /v2/busybox/manifests/latest".to_string()),
        "{requests:#?}"
    );
    let printed = podman_run_for(reference, 2.5);
    assert!(printed.contains("user: root id: 0"), "{printed}");

    let mut spec = seed_spec(&base, &registry.image("goapp", "nobody"));
    spec["config"]["user"] = json!("65534");
    let run = assemble(&spec);
    let printed = podman_run_for(run.ok()["reference"].as_str().unwrap(), 2.5);
    assert!(printed.contains("user: nobody id: 65534"), "{printed}");
}

#[test]
fn same_spec_gives_the_same_digest_and_a_changed_file_a_new_one() {
    let registry = Registry::start();
    let base = push_busybox(&registry, "busybox", Format::Oci);
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("message"), "hello").unwrap();
    let spec = json!({
        "base": base,
        "layers": [{"source": files.path().join("message"), "destination": "/etc/message"}],
        "config": {"cmd": ["cat", "/etc/message"]},
        "target": registry.image("repro", "v1"),
        "insecure": true,
    });
    let first = assemble(&spec).ok()["digest"].clone();
    let before = registry.requests().len();
    let second = assemble(&spec).ok()["digest"].clone();
    assert_eq!(first, second);
    // Nothing is uploaded twice: the second run finds every blob in place.
    let uploads: Vec<String> = registry.requests()[before..]
        .iter()
        .filter(|r| r.contains("/blobs/uploads/"))
        .cloned()
        .collect();
    assert!(uploads.is_empty(), "{uploads:#?}");
    std::fs::write(files.path().join("message"), "hello!").unwrap();
    let changed = assemble(&spec);
    assert_ne!(first, changed.ok()["digest"]);
    let printed = podman_run(changed.ok()["reference"].as_str().unwrap(), &[]);
    assert_eq!(printed, "hello!");
}

#[test]
fn a_600_mb_base_is_never_downloaded() {
    let registry = Registry::start();
    let base = push_golang(&registry, "golang");
    let base_layers = layer_digests(&base);
    let before = registry.requests().len();
    let run = assemble(&seed_spec(&base, &registry.image("team/goapp", "v1")));
    let result = run.ok().clone();
    let during: Vec<String> = registry.requests()[before..].to_vec();
    let reads: Vec<&String> = during
        .iter()
        .filter(|r| r.starts_with("GET ") && base_layers.iter().any(|d| r.contains(d.as_str())))
        .collect();
    assert!(reads.is_empty(), "base layers were read: {reads:?}");
    // They reached the target repository by mount.
    for digest in &base_layers {
        assert!(
            during
                .iter()
                .any(|r| r.starts_with("POST /v2/team/goapp/blobs/uploads/")
                    && r.contains(digest.as_str())),
            "no mount of {digest}: {during:#?}"
        );
    }
    let reference = result["reference"].as_str().unwrap();
    assert_eq!(
        &layer_digests(reference)[..base_layers.len()],
        &base_layers[..]
    );
    let printed = podman_run_for(reference, 2.5);
    assert!(printed.contains("user: root id: 0"), "{printed}");
}

#[test]
fn scratch_base_runs_a_static_binary() {
    let registry = Registry::start();
    // Debian's busybox-static: a static binary that needs nothing else.
    let spec = json!({
        "base": "scratch",
        "layers": [{"source": "/bin/busybox", "destination": "/bin/busybox"}],
        "config": {"entrypoint": ["/bin/busybox", "echo"], "cmd": ["static-ok"]},
        "target": registry.image("static", "v1"),
        "insecure": true,
    });
    let run = assemble(&spec);
    let reference = run.ok()["reference"].as_str().unwrap().to_string();
    let raw = skopeo_inspect_raw(&reference);
    assert_eq!(
        raw["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(raw["layers"].as_array().unwrap().len(), 1);
    assert_eq!(podman_run(&reference, &[]).trim(), "static-ok");
}

#[test]
fn layers_respect_the_bases_symlinks_tmp_and_path() {
    let registry = Registry::start();
    let base = push_busybox(&registry, "busybox", Format::Docker);
    let files = tempfile::tempdir().unwrap();
    std::fs::write(
        files.path().join("hello"),
        "#!/bin/sh\necho hello from $0\n",
    )
    .unwrap();
    std::fs::write(files.path().join("scratchpad"), "x").unwrap();
    let spec = json!({
        "base": base,
        "layers": [
            {"source": files.path().join("hello"), "destination": "/usr/local/bin/hello", "chmod": "0755"},
            {"source": files.path().join("scratchpad"), "destination": "/tmp/scratchpad"},
        ],
        "config": {"env": ["APP_MODE=slim"]},
        "target": registry.image("layout", "v1"),
        "insecure": true,
        // What the probe reports of the base (it runs in the base image).
        "baseDirectories": {"/tmp": {"mode": "1777", "owner": "0:0"}, "/usr": {"mode": "0755"}},
    });
    let run = assemble(&spec);
    let reference = run.ok()["reference"].as_str().unwrap().to_string();
    let printed = podman_run(
        &reference,
        &[
            "/bin/sh",
            "-c",
            "hello; stat -c %a /tmp; ls /bin/sh >/dev/null && echo sh-ok; echo \"$PATH|$APP_MODE\"",
        ],
    );
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines[0], "hello from /usr/local/bin/hello");
    assert_eq!(lines[1], "1777");
    assert_eq!(lines[2], "sh-ok");
    assert_eq!(
        lines[3],
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin|slim"
    );
}

#[test]
fn layer_media_types_follow_the_base() {
    let registry = Registry::start();
    for (format, manifest, layer) in [
        (
            Format::Oci,
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        (
            Format::Docker,
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        ),
    ] {
        let base = push_busybox(
            &registry,
            &format!("base-{format:?}").to_lowercase(),
            format,
        );
        let run = assemble(&seed_spec(
            &base,
            &registry.image("typed", &format!("{format:?}").to_lowercase()),
        ));
        let raw = skopeo_inspect_raw(run.ok()["reference"].as_str().unwrap());
        assert_eq!(raw["mediaType"], manifest);
        for l in raw["layers"].as_array().unwrap() {
            assert_eq!(l["mediaType"], layer, "{format:?}");
        }
    }
}

#[test]
fn token_registry_mounts_across_repositories_with_one_token() {
    let registry = Registry::start_token_auth(
        TokenPolicy::grant_all().with_credentials("ci", "s3cret-token-pw"),
    );
    let base = push_busybox(&registry, "library/busybox", Format::Docker);
    let base_layers = layer_digests(&base);
    let before = registry.requests().len();
    let mut spec = seed_spec(&base, &registry.image("team/goapp", "v1"));
    spec["auth"] = json!(registry.auth_file().unwrap());
    let run = assemble(&spec);
    let reference = run.ok()["reference"].as_str().unwrap().to_string();

    let scopes = registry.token_requests();
    assert!(
        scopes.iter().any(
            |s| s.contains(&"repository:team/goapp:pull,push".to_string())
                && s.contains(&"repository:library/busybox:pull".to_string())
        ),
        "no token asked for push on the target and pull on the source: {scopes:?}"
    );
    let during = registry.requests()[before..].to_vec();
    assert!(
        during
            .iter()
            .any(|r| r.starts_with("POST /v2/team/goapp/blobs/uploads/?") && r.contains("mount=")),
        "{during:#?}"
    );
    let reads: Vec<&String> = during
        .iter()
        .filter(|r| r.starts_with("GET ") && base_layers.iter().any(|d| r.contains(d.as_str())))
        .collect();
    assert!(reads.is_empty(), "base layers passed through: {reads:?}");
    assert!(!run.stderr().contains("s3cret-token-pw"));
    let inspected = support::skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        "ci:s3cret-token-pw",
        &format!("docker://{reference}"),
    ]);
    assert!(inspected.status.success(), "{inspected:?}");
}

#[test]
fn base_on_another_registry_is_streamed_across() {
    let source = Registry::start();
    let target = Registry::start();
    let base = push_busybox(&source, "busybox", Format::Docker);
    let base_layers = layer_digests(&base);
    let run = assemble(&seed_spec(&base, &target.image("copied", "v1")));
    let reference = run.ok()["reference"].as_str().unwrap().to_string();
    // Each base layer read once from the source and written once to the target.
    for digest in &base_layers {
        let reads = source
            .requests()
            .iter()
            .filter(|r| r.starts_with("GET ") && r.contains(digest.as_str()))
            .count();
        assert_eq!(reads, 1, "{digest} read {reads} times");
        assert!(
            target
                .requests()
                .iter()
                .any(|r| r.starts_with("PUT ") && r.contains(digest.as_str()))
        );
    }
    let printed = podman_run_for(&reference, 2.5);
    assert!(printed.contains("user: root id: 0"), "{printed}");
}

#[test]
fn a_refused_mount_falls_back_to_copying() {
    // This token server grants one scope per token, so the push token never
    // carries pull on the base's repository and Distribution refuses the mount.
    let registry = Registry::start_token_auth(TokenPolicy::grant_all().single_scope());
    let base = push_busybox(&registry, "library/busybox", Format::Docker);
    let base_layers = layer_digests(&base);
    let before = registry.requests().len();
    let run = assemble(&seed_spec(&base, &registry.image("team/goapp", "v1")));
    let reference = run.ok()["reference"].as_str().unwrap().to_string();
    let during = registry.requests()[before..].to_vec();
    for digest in &base_layers {
        // Tried to mount, then read from the base and written to the target.
        assert!(
            during
                .iter()
                .any(|r| r.starts_with("POST /v2/team/goapp/blobs/uploads/?")
                    && r.contains(digest.as_str()))
        );
        assert!(during.iter().any(
            |r| r.starts_with("GET /v2/library/busybox/blobs/") && r.contains(digest.as_str())
        ));
        assert!(
            during
                .iter()
                .any(|r| r.starts_with("PUT /v2/team/goapp/blobs/uploads/")
                    && r.contains(digest.as_str()))
        );
    }
    let printed = podman_run_for(&reference, 2.5);
    assert!(printed.contains("user: root id: 0"), "{printed}");
}

#[test]
fn tls_registry_is_verified_against_the_extra_ca_bundle() {
    let registry = Registry::start_tls();
    let base = push_busybox(&registry, "busybox", Format::Docker);
    let mut spec = seed_spec(&base, &registry.image("tls", "v1"));
    spec["insecure"] = json!(false);
    // An unknown CA is refused...
    let line = one_line_error(&assemble(&spec).failed());
    assert!(
        line.contains(&registry.addr()) && line.to_lowercase().contains("certificate"),
        "{line}"
    );
    // ...trusted once given...
    spec["caBundle"] = json!(registry.ca_pem());
    let reference = assemble(&spec).ok()["reference"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        skopeo_inspect(&reference)["Layers"]
            .as_array()
            .unwrap()
            .len()
            == 2
    );
    // ...and skipped only when asked: `insecure` is unverified TLS here, not plain HTTP.
    let mut spec = seed_spec(&base, &registry.image("tls", "v2"));
    spec["insecure"] = json!(true);
    assemble(&spec).ok();
    assert!(!registry.requests().is_empty());
}

#[test]
fn htpasswd_registry_takes_the_right_password_and_names_a_wrong_one() {
    let registry = Registry::start_htpasswd("builder", "correct-horse");
    let base = push_busybox(&registry, "busybox", Format::Docker);
    let mut spec = seed_spec(&base, &registry.image("private", "v1"));
    spec["auth"] = json!(registry.auth_file().unwrap());
    assemble(&spec).ok();

    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("config.json");
    let auth = base64_encode(b"builder:battery-staple-wrong");
    std::fs::write(
        &wrong,
        json!({"auths": {registry.addr(): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    spec["auth"] = json!(wrong);
    let run = assemble(&spec);
    let stderr = run.failed();
    assert!(stderr.contains(&registry.addr()), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    for secret in ["battery-staple-wrong", &auth] {
        assert!(!stderr.contains(secret) && !run.stdout().contains(secret));
    }
}

/// The base on one registry (anonymous), the image pushed to another
/// that wants a password.
#[test]
fn the_base_from_an_open_registry_the_push_to_a_private_one() {
    let open = Registry::start();
    let base = push_busybox(&open, "busybox", Format::Docker);
    let registry = Registry::start_htpasswd("builder", "correct-horse");
    let mut spec = seed_spec(&base, &registry.image("private", "v1"));
    spec["auth"] = json!(registry.auth_file().unwrap());
    spec["insecure"] = json!(true);
    assemble(&spec).ok();
}

#[test]
fn entries_with_only_username_and_password_are_read() {
    let registry = Registry::start_htpasswd("builder", "correct-horse");
    let base = push_busybox(&registry, "busybox", Format::Docker);
    let dir = tempfile::tempdir().unwrap();
    let auth_file = dir.path().join("config.json");
    std::fs::write(
        &auth_file,
        json!({"auths": {format!("http://{}", registry.addr()): {"username": "builder", "password": "correct-horse"}}})
            .to_string(),
    )
    .unwrap();
    let mut spec = seed_spec(&base, &registry.image("private", "v2"));
    spec["auth"] = json!(auth_file);
    assemble(&spec).ok();
}

#[test]
fn multi_platform_base_resolves_to_the_requested_platform() {
    let registry = Registry::start();
    let amd64 = push_busybox(&registry, "multi", Format::Oci);
    let amd64_digest = skopeo_inspect(&amd64)["Digest"]
        .as_str()
        .unwrap()
        .to_string();
    // A second image stands in for arm64.
    let other = assemble(&json!({
        "base": "scratch", "platform": "linux/arm64",
        "layers": [{"source": seed_app(), "destination": "/app"}],
        "target": registry.image("multi", "arm64"), "insecure": true,
    }));
    let other_digest = other.ok()["digest"].as_str().unwrap().to_string();
    let manifest_size = |r: &str| support::skopeo_manifest_bytes(r).len();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": other_digest,
             "size": manifest_size(&registry.image("multi", "arm64")), "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd64_digest,
             "size": manifest_size(&amd64), "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    });
    let put = support::http_request(
        "PUT",
        &format!("{}/v2/multi/manifests/index", registry.url()),
        &[("Content-Type", "application/vnd.oci.image.index.v1+json")],
        index.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(put.status, 201, "{}", put.text());
    let base = registry.image("multi", "index");

    for (platform, expected) in [
        ("linux/amd64", &amd64_digest),
        ("linux/arm64", &other_digest),
    ] {
        let mut spec = seed_spec(&base, &registry.image("resolved", "x"));
        spec["platform"] = json!(platform);
        let run = assemble(&spec);
        let pinned = run.ok()["base"].as_str().unwrap().to_string();
        assert!(pinned.ends_with(expected.as_str()), "{platform}: {pinned}");
    }
    let mut spec = seed_spec(&base, &registry.image("resolved", "x"));
    spec["platform"] = json!("linux/s390x");
    let stderr = assemble(&spec).failed();
    assert!(
        stderr.contains("linux/s390x") && stderr.contains("linux/arm64"),
        "{stderr}"
    );
}

fn base64_encode(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn one_line_error(stderr: &str) -> String {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{stderr}");
    errors[0].to_string()
}

#[test]
fn bad_input_fails_with_one_clear_line() {
    let registry = Registry::start();
    let base = push_busybox(&registry, "busybox", Format::Docker);
    let target = registry.image("bad", "v1");

    let missing_tag = registry.image("busybox", "no-such-tag");
    let line = one_line_error(&assemble(&seed_spec(&missing_tag, &target)).failed());
    assert!(
        line.contains(&missing_tag) && line.to_lowercase().contains("manifest unknown"),
        "{line}"
    );

    let line = one_line_error(&assemble(&seed_spec(&base, "127.0.0.1:1/nowhere:v1")).failed());
    assert!(line.contains("cannot reach registry 127.0.0.1:1"), "{line}");

    let mut spec = seed_spec(&base, &target);
    spec["layers"][0]["source"] = json!("/no/such/file");
    let line = one_line_error(&assemble(&spec).failed());
    assert!(
        line.contains("layers[0]") && line.contains("/no/such/file"),
        "{line}"
    );

    let line = one_line_error(&assemble(&seed_spec(&base, "127.0.0.1:5000/Bad Name:v1")).failed());
    assert!(
        line.contains("invalid image reference `127.0.0.1:5000/Bad Name:v1`"),
        "{line}"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".wh.x"), "").unwrap();
    let mut spec = seed_spec(&base, &target);
    spec["layers"][0] = json!({"source": dir.path().join(".wh.x"), "destination": "/etc/"});
    let line = one_line_error(&assemble(&spec).failed());
    assert!(
        line.contains(".wh.x") && line.contains("reserved"),
        "{line}"
    );

    let line =
        one_line_error(&assemble(&json!({"base": base, "target": target, "layer": []})).failed());
    assert!(line.contains("unknown field `layer`"), "{line}");
}

#[test]
fn builder_size_is_read_with_the_pull_credentials() {
    let registry = Registry::start();
    let private = Registry::start_htpasswd("puller", "pull-secret");
    let builder = push_busybox(&private, "builder", Format::Docker);
    let base = push_busybox(&registry, "busybox", Format::Docker);
    let spec = seed_spec(&base, &registry.image("goapp", "v1"));
    let manifest = {
        let out = std::process::Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg("--creds=puller:pull-secret")
            .arg(format!("docker://{builder}"))
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let expected: u64 = manifest["config"]["size"].as_u64().unwrap()
        + manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["size"].as_u64().unwrap())
            .sum::<u64>();

    // Without credentials for its registry: the image is pushed, the size is unknown.
    let run = assemble_with(&spec, &["--builder-image", &builder]);
    let anonymous = run.ok();
    assert!(anonymous["builderSizeBytes"].is_null(), "{anonymous}");

    // A wrong file first, then the pull secret: the size comes from the manifest.
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.json");
    std::fs::write(&wrong, json!({"auths": {}}).to_string()).unwrap();
    let pull = private.auth_file().unwrap();
    let run = assemble_with(
        &spec,
        &[
            "--builder-image",
            &builder,
            "--builder-auth",
            wrong.to_str().unwrap(),
            "--builder-auth",
            pull.to_str().unwrap(),
        ],
    );
    let result = run.ok();
    assert_eq!(result["builderSizeBytes"], expected, "{result}");
}
