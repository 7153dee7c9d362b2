//! `RUN --mount` end to end with `slimforge build`: the pods run by `podman
//! kube play` against a real registry; caches are podman volumes, read
//! back with podman; images are read back with skopeo and podman run.

mod support;

use std::io::Read as _;
use std::process::{Command, Output};

use serde_json::{Value, json};
use support::{
    Format, Registry, podman, podman_env, podman_run, push_busybox, push_golang,
    static_helper_stripped, unique_name,
};

/// An ImageBuild with an inline context; `{golang}` and `{busybox}` in
/// the Dockerfile name the test's base images. `extra` is merged into the spec.
fn manifest(
    reg: &Registry,
    name: &str,
    dockerfile: &str,
    files: &[(&str, &str)],
    extra: Value,
) -> String {
    let mut dockerfile = dockerfile.to_string();
    if dockerfile.contains("{golang}") {
        dockerfile = dockerfile.replace("{golang}", &push_golang(reg, "golang"));
    }
    let dockerfile = dockerfile.replace("{busybox}", &push_busybox(reg, "busybox", Format::Docker));
    let inline: serde_json::Map<String, Value> = files
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    let mut spec = json!({
        "context": {"inline": inline},
        "dockerfile": dockerfile,
        "output": {"image": reg.image(name, "v1"), "insecure": true},
        "timeout": "10m",
        // Every RUN runs: what the stage cache would skip is what is tested.
        "cache": {"noCache": true},
    });
    if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), extra) {
        spec.extend(extra);
    }
    let ib = json!({
        "apiVersion": "slimforge.dev/v1alpha1",
        "kind": "ImageBuild",
        "metadata": {"name": name},
        "spec": spec,
    });
    serde_yaml::to_string(&ib).unwrap()
}

fn slimforge_build(manifest: &str, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("build.yaml");
    std::fs::write(&file, manifest).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_slimforge"))
        .envs(podman_env())
        .arg("build")
        .arg(&file)
        .arg("--helper-binary")
        .arg(static_helper_stripped())
        .args(args)
        .output()
        .expect("run slimforge build");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    output
}

fn pushed(output: &Output) -> String {
    assert!(output.status.success(), "the build failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

/// The files of a podman volume, by path relative to it.
fn volume_dir(name: &str) -> std::path::PathBuf {
    let out = podman(&["volume", "inspect", "--format", "{{.Mountpoint}}", name]);
    assert!(out.status.success(), "no volume {name}");
    std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Every byte of the image as pushed, each layer decompressed; with
/// `layers_only`, the layers alone (the config's history quotes the
/// Dockerfile).
fn image_bytes(reference: &str, layers_only: bool) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = support::skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{reference}"),
        &format!("dir:{}", dir.path().display()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        if bytes.starts_with(&[0x1f, 0x8b]) {
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_end(&mut all)
                .unwrap();
        } else if !layers_only {
            all.extend(bytes);
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

const APP: &str = "package main\n\nimport (\n\t\"encoding/json\"\n\t\"fmt\"\n)\n\nfunc main() {\n\tb, _ := json.Marshal(map[string]string{\"status\": \"OK\"})\n\tfmt.Println(string(b))\n}\n";

/// The Go builder with its compiler cache on a cache mount, built twice:
/// the second RUN compiles only the main package (the cache is warm, and
/// kept on the volume), the image is the same, and holds none of it.
#[test]
fn a_go_build_cache_is_warm_the_second_time_and_never_in_the_image() {
    let reg = Registry::start();
    let name = unique_name("gocache");
    // The cache id is the test's own: parallel tests share podman's volumes.
    let id = unique_name("go-build");
    let dockerfile = format!(
        r#"FROM {{golang}} AS builder
COPY app.go .
RUN --mount=type=cache,id={id},target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -x -trimpath -o /out/app app.go 2> /tmp/log \
 && {{ grep -c '/compile ' /tmp/log || true; }} >> /root/.cache/go-build/compiles-seen

FROM {{busybox}}
COPY --from=builder /out/app /app
CMD ["/app"]
"#
    );
    let ib = manifest(&reg, &name, &dockerfile, &[("app.go", APP)], json!({}));
    let first = pushed(&slimforge_build(&ib, &[]));
    let volume = volume_dir(&slimforge::contract::cache_volume(&id));
    let data = volume.join("data");
    assert!(
        std::fs::read_dir(&data).unwrap().count() > 10,
        "the compiler's cache is kept on the volume"
    );
    let second = pushed(&slimforge_build(&ib, &[]));
    let counts: Vec<usize> = std::fs::read_to_string(data.join("compiles-seen"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert!(
        counts[0] >= 10 && counts[1] <= 2,
        "cold: {} compilations, warm: {} (only the main package)",
        counts[0],
        counts[1]
    );
    let digest = |r: &str| r.rsplit_once('@').map(|(_, d)| d.to_string());
    assert_eq!(digest(&first), digest(&second), "the same image");
    assert!(!contains(&image_bytes(&second, true), "compiles-seen"));
    assert_eq!(podman_run(&second, &[]).trim(), r#"{"status":"OK"}"#);

    // Listed with its size, then dropped.
    let listed = slimforge_cache(&["list"]);
    let line = listed
        .lines()
        .find(|l| l.starts_with(&format!("{id}\t")))
        .unwrap_or_else(|| panic!("{id} not listed:\n{listed}"));
    assert!(line.contains(" MB\t") || line.contains(" kB\t"), "{line}");
    slimforge_cache(&["drop", &id]);
    assert!(!slimforge_cache(&["list"]).contains(&id));
    assert!(
        !podman(&["volume", "exists", &slimforge::contract::cache_volume(&id)])
            .status
            .success()
    );
}

/// `slimforge cache ARGS`, which must succeed; its stdout.
fn slimforge_cache(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_slimforge"))
        .envs(podman_env())
        .arg("cache")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A final stage that runs with a cache mount: the snapshot holds the
/// empty mount point, not the cache's files, and the image's own files
/// at the target come back after the RUN. A tmpfs is empty after its RUN.
#[test]
fn a_runtime_stage_cache_mount_leaves_only_its_mount_point() {
    let reg = Registry::start();
    let name = unique_name("runtimecache");
    let id = unique_name("runtime-cache");
    let dockerfile = format!(
        r#"FROM {{busybox}}
RUN mkdir -p /var/cache/app && echo image > /var/cache/app/own
RUN --mount=type=cache,id={id},target=/var/cache/app \
    test ! -e /var/cache/app/own && echo cached > /var/cache/app/in-cache
RUN --mount=type=cache,id={id},target=/seen cat /seen/in-cache > /copied
RUN --mount=type=tmpfs,target=/scratch,size=1m \
    echo x > /scratch/f && test "$(stat -L -c %a /scratch)" = 1777
RUN test -d /scratch && test -z "$(ls -A /scratch)"
CMD ["sh", "-c", "ls -A /var/cache/app; cat /copied"]
"#
    );
    let ib = manifest(&reg, &name, &dockerfile, &[], json!({}));
    let image = pushed(&slimforge_build(&ib, &[]));
    let printed = podman_run(&image, &[]);
    assert_eq!(
        printed.split_whitespace().collect::<Vec<_>>(),
        ["own", "cached"]
    );
    assert!(!contains(&image_bytes(&image, true), "in-cache"));
}

/// A build secret from `--secret`: the RUN reads it (its hash proves it),
/// as a file and as a variable, and it is found nowhere after.
#[test]
fn a_secret_reaches_its_run_and_nothing_else() {
    let reg = Registry::start();
    let name = unique_name("secret");
    let value = format!("tok-{}", unique_name("v"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, &value).unwrap();
    let dockerfile = r#"FROM {busybox} AS builder
RUN --mount=type=secret,id=token,required cat /run/secrets/token > /dev/null \
 && sha256sum /run/secrets/token | cut -c1-64 > /hash \
 && test ! -e /run/secrets/other
RUN --mount=type=secret,id=token,env=TOKEN,target=/etc/token,mode=0444,uid=1 \
    test "$TOKEN" = "$(cat /etc/token)" && stat -L -c %a:%u /etc/token > /mode
RUN test ! -e /run/secrets/token && test ! -e /etc/token && test ! -e /run/secrets

FROM {busybox}
COPY --from=builder /hash /mode /
RUN --mount=type=secret,id=token cat /run/secrets/token | wc -c > /length
CMD ["cat", "/hash", "/mode", "/length"]
"#;
    let ib = manifest(&reg, &name, dockerfile, &[], json!({}));
    let out = slimforge_build(
        &ib,
        &["--secret", &format!("id=token,src={}", file.display())],
    );
    let image = pushed(&out);
    let printed = podman_run(&image, &[]);
    let hash = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(value.as_bytes()))
    };
    assert_eq!(
        printed.split_whitespace().collect::<Vec<_>>(),
        [hash.as_str(), "444:1", &value.len().to_string()]
    );
    assert!(
        !contains(&image_bytes(&image, false), &value),
        "the secret is in the image"
    );
    let logs = [out.stdout.as_slice(), out.stderr.as_slice()].concat();
    assert!(
        !contains(&logs, &value),
        "the secret is in the build's output"
    );
    // Without it, the build stops before any pod: the required mount's
    // line and id are named.
    let out = slimforge_build(&ib, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SecretNotFound: line 2")
            && stderr.contains("--mount=type=secret,id=token is required"),
        "{stderr}"
    );
}

/// Binds from the context and from a stage (a path, or its whole root
/// without the pod's mount points): visible in the RUN, writes discarded,
/// nothing left in the stage but the empty mount point. A cache seeded
/// from a stage when it is made, and kept as the next RUN left it.
#[test]
fn binds_show_files_during_the_run_only() {
    let reg = Registry::start();
    let name = unique_name("bind");
    let seeded = unique_name("seeded");
    let dockerfile = r#"FROM {busybox} AS deps
RUN mkdir /deps && echo from-stage > /deps/x

FROM {busybox} AS builder
WORKDIR /src
RUN --mount=type=bind,source=go.mod,target=go.mod,rw \
    cat go.mod > /seen-context && echo changed >> go.mod
RUN --mount=type=bind,from=deps,source=/deps,target=/mnt/deps \
    cat /mnt/deps/x > /seen-stage
RUN --mount=type=bind,from=deps,target=/mnt/root \
    test -f /mnt/root/deps/x -a -x /mnt/root/bin/sh \
 && test ! -e /mnt/root/.slimforge/exports -a ! -e /mnt/root/proc/self
RUN --mount=type=cache,id=SEEDED,target=/c,from=deps,source=/deps \
    cat /c/x > /seen-seed && echo used > /c/used
RUN --mount=type=cache,id=SEEDED,target=/c,from=deps,source=/deps \
    test -f /c/used && cmp /c/x /seen-seed
RUN test ! -s /src/go.mod && test -z "$(ls -A /mnt/deps)" \
 && cat /seen-context /seen-stage /seen-seed > /seen

FROM {busybox}
COPY --from=builder /seen /seen
CMD ["cat", "/seen"]
"#;
    let dockerfile = dockerfile.replace("SEEDED", &seeded);
    let ib = manifest(
        &reg,
        &name,
        &dockerfile,
        &[("go.mod", "module example.com/app\n")],
        json!({}),
    );
    let image = pushed(&slimforge_build(&ib, &[]));
    assert_eq!(
        podman_run(&image, &[]).lines().collect::<Vec<_>>(),
        ["module example.com/app", "from-stage", "from-stage"]
    );
}

/// Two builds at once on one `sharing=locked` cache: each writes its name,
/// waits, and finds its own name still there.
#[test]
fn a_locked_cache_serialises_two_concurrent_builds() {
    let reg = Registry::start();
    let id = unique_name("locked");
    let dockerfile = format!(
        r#"FROM {{busybox}} AS builder
ARG WHO
RUN --mount=type=cache,id={id},target=/c,sharing=locked \
    echo $WHO > /c/owner && sleep 3 && test "$(cat /c/owner)" = "$WHO" \
 && echo $WHO >> /c/done

FROM {{busybox}}
COPY --from=builder /etc/passwd /p
"#
    );
    let builds: Vec<_> = ["one", "two"]
        .iter()
        .map(|who| {
            let name = unique_name(&format!("locked-{who}"));
            let ib = manifest(
                &reg,
                &name,
                &dockerfile,
                &[],
                json!({"buildArgs": {"WHO": who}}),
            );
            std::thread::spawn(move || slimforge_build(&ib, &[]))
        })
        .collect();
    for build in builds {
        let out = build.join().unwrap();
        assert!(out.status.success(), "a build lost its file to the other");
    }
    let done = std::fs::read_to_string(
        volume_dir(&slimforge::contract::cache_volume(&id)).join("data/done"),
    )
    .unwrap();
    let mut done: Vec<&str> = done.lines().collect();
    done.sort();
    assert_eq!(done, ["one", "two"]);
}
