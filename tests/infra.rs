//! The test harness itself, against real parts: registries (plain, htpasswd,
//! token), skopeo, podman, the base images and the seed program.

mod support;

use support::{
    BusyboxLayout, Format, Registry, TokenPolicy, basic_auth, http_get, http_request, podman,
    podman_run, podman_run_for_with, push_busybox, push_busybox_with, push_golang, seed_app,
    skopeo_inspect, skopeo_inspect_config, skopeo_inspect_raw,
};

#[test]
fn plain_registry_serves_a_pushed_docker_busybox() {
    let reg = Registry::start();
    let image = push_busybox(&reg, "base/busybox", Format::Docker);
    assert_eq!(image, format!("{}/base/busybox:latest", reg.addr()));

    let manifest = skopeo_inspect_raw(&image);
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1);
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    let size = layers[0]["size"].as_u64().unwrap();
    assert!((500_000..3_000_000).contains(&size), "layer size {size}");

    let inspect = skopeo_inspect(&image);
    assert_eq!(inspect["Os"], "linux");
    let config = skopeo_inspect_config(&image);
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["sh"]));
    let env = config["config"]["Env"].to_string();
    assert!(env.contains("PATH=/usr/local/sbin:"), "{env}");

    let requests = reg.requests();
    assert!(
        requests
            .iter()
            .any(|r| r == "PUT /v2/base/busybox/manifests/latest"),
        "access log: {requests:?}"
    );
}

#[test]
fn plain_registry_serves_an_oci_busybox() {
    let reg = Registry::start();
    let image = push_busybox(&reg, "busybox", Format::Oci);
    let manifest = skopeo_inspect_raw(&image);
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
}

#[test]
fn busybox_base_has_merged_usr_and_its_users() {
    let reg = Registry::start();
    let image = push_busybox(&reg, "busybox", Format::Docker);
    assert_eq!(podman_run(&image, &["echo", "hi"]), "hi\n");
    let out = podman_run(
        &image,
        &[
            "sh",
            "-c",
            "readlink /bin; readlink /sbin; stat -c %a /tmp; id -un; \
             cut -d: -f1 /etc/passwd | tr '\\n' ' '; echo; cut -d: -f1 /etc/group | tr '\\n' ' '; echo",
        ],
    );
    assert_eq!(
        out,
        "usr/bin\nusr/sbin\n1777\nroot\nroot nobody \nroot nogroup \n"
    );
    // `id -un` for uid 65534 resolves through the image's /etc/passwd.
    let out = support::podman_run_with(&["--user", "65534:65534"], &image, &["id"]);
    assert_eq!(
        out,
        "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)\n"
    );
}

#[test]
fn busybox_split_layout_has_a_real_bin_dir() {
    let reg = Registry::start();
    let image = push_busybox_with(&reg, "busybox", Format::Oci, BusyboxLayout::SplitBin);
    let out = podman_run(
        &image,
        &[
            "sh",
            "-c",
            "test -d /bin && ! test -L /bin && readlink /bin/ls",
        ],
    );
    assert_eq!(out, "busybox\n");
}

#[test]
fn htpasswd_registry_rejects_anonymous_and_accepts_its_user() {
    let reg = Registry::start_htpasswd("alice", "s3cret");
    let v2 = format!("{}/v2/", reg.url());
    let anonymous = http_get(&v2, None).unwrap();
    assert_eq!(anonymous.status, 401);
    assert!(
        anonymous
            .header("www-authenticate")
            .unwrap_or("")
            .starts_with("Basic"),
        "{:?}",
        anonymous.headers
    );
    let wrong = http_get(&v2, Some(&basic_auth("alice", "nope"))).unwrap();
    assert_eq!(wrong.status, 401);
    let right = http_get(&v2, Some(&basic_auth("alice", "s3cret"))).unwrap();
    assert_eq!(right.status, 200);

    // The helpers pick the registry's credentials up by themselves.
    let image = push_busybox(&reg, "busybox", Format::Docker);
    assert_eq!(skopeo_inspect_raw(&image)["schemaVersion"], 2);
    assert_eq!(podman_run(&image, &["echo", "ok"]), "ok\n");
}

#[test]
fn token_registry_push_goes_through_the_token_flow() {
    let reg = Registry::start_token_auth(TokenPolicy::grant_all().with_credentials("bob", "pw"));
    let challenge = http_get(&format!("{}/v2/", reg.url()), None).unwrap();
    assert_eq!(challenge.status, 401);
    let www = challenge
        .header("www-authenticate")
        .unwrap_or("")
        .to_string();
    assert!(
        www.starts_with("Bearer realm=")
            && www.contains(&reg.token_realm().unwrap())
            && www.contains("service="),
        "{www}"
    );

    let image = push_busybox(&reg, "team/busybox", Format::Docker);
    let manifest = skopeo_inspect_raw(&image);
    assert_eq!(manifest["schemaVersion"], 2);

    let details = reg.token_request_details();
    assert!(
        details
            .iter()
            .any(|r| r.status == 200 && r.user.as_deref() == Some("bob")),
        "{details:?}"
    );
    let scopes = reg.token_requests();
    assert!(
        scopes
            .iter()
            .flatten()
            .any(|s| s == "repository:team/busybox:pull,push"),
        "{scopes:?}"
    );

    // Without credentials the token server refuses.
    let no_creds = http_get(
        &format!(
            "{}?service=x&scope=repository:team/busybox:pull",
            reg.token_realm().unwrap()
        ),
        None,
    )
    .unwrap();
    assert_eq!(no_creds.status, 401);
}

/// Distribution 2.8 asks for `pull` on the `from` repository before it even
/// looks at a cross-repository mount: a token without it gets
/// 401 Unauthorized with a Bearer challenge naming both repositories' scopes,
/// not a 202 Accepted upload session (a declined mount).
#[test]
fn token_mount_without_pull_on_the_source_is_unauthorized() {
    let reg = Registry::start_token_auth(TokenPolicy::grant_all());
    let source = push_busybox(&reg, "private/base", Format::Docker);
    let digest = skopeo_inspect_raw(&source)["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let mount_url = format!(
        "{}/v2/app/blobs/uploads/?mount={digest}&from=private/base",
        reg.url()
    );

    reg.set_token_policy(TokenPolicy::grant_all().deny_pull_on("private"));
    let token = reg.bearer_token(&["repository:app:pull,push", "repository:private/base:pull"]);
    let last = reg.token_request_details().pop().unwrap();
    assert_eq!(
        last.granted,
        ["repository:app:pull,push", "repository:private/base:"]
    );
    let bearer = format!("Bearer {token}");
    let refused = http_request("POST", &mount_url, &[("Authorization", &bearer)], b"").unwrap();
    assert_eq!(refused.status, 401, "{}", refused.text());
    let www = refused.header("www-authenticate").unwrap_or("").to_string();
    assert!(
        www.contains("repository:private/base:pull"),
        "challenge: {www}"
    );

    // With pull on the source the same request mounts the blob.
    reg.set_token_policy(TokenPolicy::grant_all());
    let token = reg.bearer_token(&["repository:app:pull,push", "repository:private/base:pull"]);
    let bearer = format!("Bearer {token}");
    let mounted = http_request("POST", &mount_url, &[("Authorization", &bearer)], b"").unwrap();
    assert_eq!(mounted.status, 201, "{}", mounted.text());
    assert_eq!(
        mounted.header("docker-content-digest"),
        Some(digest.as_str())
    );
}

#[test]
fn seed_app_prints_its_user_every_second_in_busybox() {
    let reg = Registry::start();
    let image = push_busybox(&reg, "busybox", Format::Docker);
    let app = seed_app();
    let volume = format!("{}:/app:ro", app.display());
    let out = podman_run_for_with(&["-v", &volume], &image, &["/app"], 2.5);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() >= 2, "{out:?}");
    assert!(lines.iter().all(|l| *l == "user: root id: 0"), "{out:?}");

    let left = podman(&["ps", "--all", "--format", "{{.Names}}"]);
    let names = String::from_utf8_lossy(&left.stdout);
    assert!(
        !names.contains(&format!("slimforge-test-{}-", std::process::id())),
        "containers left: {names}"
    );
}

/// Slow the first time on a machine (debootstrap, ~2 min); then a copy.
#[test]
fn golang_base_runs_go() {
    let reg = Registry::start();
    let image = push_golang(&reg, "golang");
    let config = skopeo_inspect_config(&image);
    assert_eq!(config["config"]["WorkingDir"], "/go");
    let out = podman_run(&image, &["sh", "-c", "pwd; go version; echo $GOPATH"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "/go");
    assert!(lines[1].starts_with("go version go1."), "{out}");
    assert_eq!(lines[2], "/go");
}
