//! The stage cache end to end: `slimforge build` (pods run by `podman kube
//! play`) against a real registry, built again with less and less changed.
//! What ran is read from the build's progress lines (a pod's phases name
//! the pod, `<build>-g1-<n>`); what came out is checked with skopeo and
//! podman.

mod support;

use std::process::{Command, Output};

use serde_json::{Value, json};
use support::{
    Format, Registry, http_request, podman_env, podman_run, push_busybox, push_golang,
    skopeo_inspect_config, skopeo_inspect_raw, static_helper_stripped, unique_name,
};

/// Two independent builder chains, each reading its own context file, and
/// a final stage with a build arg of its own.
const TWO_CHAINS: &str = r#"FROM {busybox} AS a
COPY a.txt /in/
RUN mkdir /out && cp /in/a.txt /out/a && echo built-a >> /out/a

FROM {busybox} AS b
COPY b.txt /in/
RUN mkdir /out && cp /in/b.txt /out/b && echo built-b >> /out/b

FROM {busybox}
ARG GREETING=hello
COPY --from=a /out/a /a
COPY --from=b /out/b /b
LABEL greeting=$GREETING
CMD ["cat", "/a", "/b"]
"#;

fn manifest(
    name: &str,
    dockerfile: &str,
    files: &[(&str, &str)],
    build_args: Value,
    image: &str,
) -> String {
    let inline: serde_json::Map<String, Value> = files
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    let ib = json!({
        "apiVersion": "slimforge.dev/v1alpha1",
        "kind": "ImageBuild",
        "metadata": {"name": name},
        "spec": {
            "context": {"inline": inline},
            "dockerfile": dockerfile,
            "buildArgs": build_args,
            "output": {"image": image, "insecure": true},
            "timeout": "10m",
        },
    });
    serde_yaml::to_string(&ib).unwrap()
}

/// One build: what it printed, and the stages whose pods it started.
struct Build {
    output: Output,
    /// `(stage, pod)` of every pod phase line.
    pods: Vec<(String, String)>,
}

impl Build {
    fn reference(&self) -> String {
        assert!(
            self.output.status.success(),
            "slimforge build failed:\n{}",
            self.stderr()
        );
        String::from_utf8_lossy(&self.output.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_string()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// The stages that ran a pod, each once, sorted.
    fn stages_run(&self) -> Vec<String> {
        let mut stages: Vec<String> = self.pods.iter().map(|(s, _)| s.clone()).collect();
        stages.sort();
        stages.dedup();
        stages
    }

    /// The stages the progress says were cached.
    fn cached(&self) -> Vec<String> {
        let mut stages: Vec<String> = self
            .stderr()
            .lines()
            .filter_map(|line| {
                let rest = line.split("] ").nth(1)?;
                let (stage, rest) = rest.split_once(char::is_whitespace)?;
                rest.trim_start()
                    .starts_with("cached (")
                    .then(|| stage.to_string())
            })
            .collect();
        stages.sort();
        stages
    }
}

fn build(name: &str, manifest: &str) -> Build {
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
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    eprintln!("{stderr}");
    let prefix = format!("({name}-g");
    let pods = stderr
        .lines()
        .filter_map(|line| {
            let rest = line.split("] ").nth(1)?;
            let at = rest.find(&prefix)?;
            let stage = rest.split_whitespace().next()?.to_string();
            let pod = rest[at + 1..].trim_end_matches(')').to_string();
            Some((stage, pod))
        })
        .collect();
    Build { output, pods }
}

fn two_chains(reg: &Registry) -> String {
    TWO_CHAINS.replace("{busybox}", &push_busybox(reg, "busybox", Format::Docker))
}

#[test]
fn an_unchanged_build_starts_no_pod_and_yields_the_same_digest() {
    let reg = Registry::start();
    let name = unique_name("cache-seed");
    let image = reg.image("goapp", "v1");
    let app = std::fs::read_to_string(support::fixtures_dir().join("seed/app.go")).unwrap();
    let dockerfile = format!(
        "FROM {} AS builder\nCOPY app.go .\nRUN CGO_ENABLED=0 go build app.go\n\nFROM {}\nCOPY --from=builder /go/app .\nCMD [\"./app\"]\n",
        push_golang(&reg, "golang"),
        push_busybox(&reg, "busybox", Format::Docker)
    );
    let text = manifest(&name, &dockerfile, &[("app.go", &app)], json!({}), &image);

    let first = build(&name, &text);
    let reference = first.reference();
    assert!(first.cached().is_empty(), "{:?}", first.cached());
    assert!(
        first.stages_run().contains(&"builder".to_string()),
        "{:?}",
        first.stages_run()
    );

    let second = build(&name, &text);
    assert_eq!(second.reference(), reference, "the same image");
    assert!(second.pods.is_empty(), "pods started: {:?}", second.pods);
    assert_eq!(second.cached(), ["builder", "image"]);

    // Reproducible without the cache too: everything runs again and the
    // digest is the same.
    let clean = text.replace("timeout: 10m", "timeout: 10m\n  cache:\n    noCache: true");
    assert_ne!(clean, text);
    let third = build(&name, &clean);
    assert_eq!(third.reference(), reference);
    assert!(third.cached().is_empty());
    assert!(third.stages_run().contains(&"builder".to_string()));
}

#[test]
fn only_the_chain_whose_context_file_changed_runs() {
    let reg = Registry::start();
    let name = unique_name("cache-two");
    let image = reg.image("two", "v1");
    let dockerfile = two_chains(&reg);
    let first = build(
        &name,
        &manifest(
            &name,
            &dockerfile,
            &[("a.txt", "a1"), ("b.txt", "b1")],
            json!({}),
            &image,
        ),
    );
    let first_image = first.reference();
    assert_eq!(
        podman_run(&first_image, &[]),
        "a1built-a\nb1built-b\n",
        "the first image"
    );

    let second = build(
        &name,
        &manifest(
            &name,
            &dockerfile,
            &[("a.txt", "a1"), ("b.txt", "b2")],
            json!({}),
            &image,
        ),
    );
    let second_image = second.reference();
    assert_ne!(second_image, first_image);
    // The final stage and its base did not change: the probe's answer is
    // the cache's too.
    assert_eq!(second.cached(), ["a", "probe"], "{}", second.stderr());
    let run = second.stages_run();
    assert!(run.contains(&"b".to_string()), "{run:?}");
    assert!(!run.contains(&"a".to_string()), "{run:?}");
    assert!(!run.contains(&"probe".to_string()), "{run:?}");
    // a's export is read by the assembly alone, and its layer is cached:
    // mounted as it was, so no restore pod either.
    assert!(!run.contains(&"restore".to_string()), "{run:?}");
    assert!(
        second.stderr().contains("of 4 pods, 2 from the cache"),
        "{}",
        second.stderr()
    );
    assert_eq!(podman_run(&second_image, &[]), "a1built-a\nb2built-b\n");
    let layers = |reference: &str| skopeo_inspect_raw(reference)["layers"].clone();
    let (before, after) = (layers(&first_image), layers(&second_image));
    let n = before.as_array().unwrap().len();
    assert_eq!(after[n - 2], before[n - 2], "a's layer is the cached blob");
    assert_ne!(after[n - 1], before[n - 1], "b's layer is new");

    // a's layer moves elsewhere: its chain is still cached, the layer is
    // not, and the assembly reads a's export from the cache itself.
    let moved = dockerfile
        .replace("COPY --from=a /out/a /a", "COPY --from=a /out/a /srv/a")
        .replace("\"cat\", \"/a\"", "\"cat\", \"/srv/a\"");
    assert_ne!(moved, dockerfile);
    let third = build(
        &name,
        &manifest(
            &name,
            &moved,
            &[("a.txt", "a1"), ("b.txt", "b2")],
            json!({}),
            &image,
        ),
    );
    let third_image = third.reference();
    assert_eq!(
        third.stages_run(),
        ["assemble", "probe"],
        "{}",
        third.stderr()
    );
    assert_eq!(podman_run(&third_image, &[]), "a1built-a\nb2built-b\n");
}

#[test]
fn a_build_arg_of_the_final_stage_runs_no_chain_and_lost_blobs_are_a_miss() {
    let reg = Registry::start();
    let name = unique_name("cache-arg");
    let image = reg.image("arg", "v1");
    let dockerfile = two_chains(&reg);
    let files = [("a.txt", "a1"), ("b.txt", "b1")];
    let first = build(
        &name,
        &manifest(
            &name,
            &dockerfile,
            &files,
            json!({"GREETING": "one"}),
            &image,
        ),
    );
    first.reference();

    let second = build(
        &name,
        &manifest(
            &name,
            &dockerfile,
            &files,
            json!({"GREETING": "two"}),
            &image,
        ),
    );
    let reference = second.reference();
    assert_eq!(second.cached(), ["a", "b"], "{}", second.stderr());
    let run = second.stages_run();
    assert!(
        !run.contains(&"a".to_string()) && !run.contains(&"b".to_string()),
        "{run:?}"
    );
    let config = skopeo_inspect_config(&reference);
    assert_eq!(config["config"]["Labels"]["greeting"], "two");
    assert_eq!(podman_run(&reference, &[]), "a1built-a\nb1built-b\n");

    // The registry lost chain b's export: a miss, b runs again, the build
    // succeeds.
    // `<output repository>/cache`, on the output's registry.
    let cache_repository = "arg/cache";
    let entries = cache_entries(&reg, cache_repository);
    let b = entries
        .iter()
        .find(|(_, chain, _)| chain == "b")
        .expect("b's entry");
    for digest in &b.2 {
        let url = format!("{}/v2/{cache_repository}/blobs/{digest}", reg.url());
        let deleted = http_request("DELETE", &url, &[], b"").unwrap();
        assert_eq!(deleted.status, 202, "{}", deleted.text());
    }
    let third = build(
        &name,
        &manifest(
            &name,
            &dockerfile,
            &files,
            json!({"GREETING": "three"}),
            &image,
        ),
    );
    let reference = third.reference();
    assert_eq!(third.cached(), ["a"], "{}", third.stderr());
    assert!(third.stages_run().contains(&"b".to_string()));
    assert_eq!(podman_run(&reference, &[]), "a1built-a\nb1built-b\n");
}

/// The chain entries of a cache repository: (tag, chain, export digests),
/// read with skopeo and the registry's API.
fn cache_entries(reg: &Registry, repository: &str) -> Vec<(String, String, Vec<String>)> {
    let url = format!("{}/v2/{repository}/tags/list", reg.url());
    let tags: Value =
        serde_json::from_str(&http_request("GET", &url, &[], b"").unwrap().text()).expect("tags");
    let mut entries = Vec::new();
    for tag in tags["tags"].as_array().unwrap() {
        let tag = tag.as_str().unwrap();
        if !tag.starts_with("chain-") {
            continue;
        }
        let manifest = skopeo_inspect_raw(&format!("{}/{repository}:{tag}", reg.addr()));
        let config_digest = manifest["config"]["digest"].as_str().unwrap();
        let url = format!("{}/v2/{repository}/blobs/{config_digest}", reg.url());
        let config: Value =
            serde_json::from_str(&http_request("GET", &url, &[], b"").unwrap().text()).unwrap();
        let digests = manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect();
        entries.push((
            tag.to_string(),
            config["chain"].as_str().unwrap().to_string(),
            digests,
        ));
    }
    entries
}

/// The seed's shape on a base of its own tag: a builder, and a final stage
/// that copies its output, owned by a named user of the base.
const ON_OWN_BASE: &str = r#"FROM {busybox} AS builder
RUN mkdir /out && echo built > /out/app

FROM {base}
COPY --from=builder --chown=nobody:nogroup /out/app /srv/app
WORKDIR /srv
CMD ["sh", "-c", "cat /srv/app /marker; stat -c %u /srv/app"]
"#;

#[test]
fn a_moved_base_is_rebased_and_falls_back_when_its_users_changed() {
    let reg = Registry::start();
    let name = unique_name("cache-rebase");
    let image = reg.image("rebase", "v1");
    let busybox = push_busybox(&reg, "busybox", Format::Docker);
    let base = format!("{}/base:1", reg.addr());
    support::push_base_as(&busybox, &base, &[("/marker", "first base\n")]);
    let dockerfile = ON_OWN_BASE
        .replace("{busybox}", &busybox)
        .replace("{base}", &base);
    let text = manifest(&name, &dockerfile, &[], json!({}), &image);
    let first = build(&name, &text);
    let first_image = first.reference();
    assert_eq!(podman_run(&first_image, &[]), "built\nfirst base\n65534\n");

    // The base's tag moves (a fix in the base): the cached layers go on
    // the new base in one pod; no builder, probe or restore pod.
    support::push_base_as(&busybox, &base, &[("/marker", "fixed base\n")]);
    let second = build(&name, &text);
    let second_image = second.reference();
    assert_eq!(second.stages_run(), ["rebase"], "{}", second.stderr());
    assert!(
        second
            .stderr()
            .contains("(a rebase of the cached layers: 1 pod)")
    );
    assert_eq!(podman_run(&second_image, &[]), "built\nfixed base\n65534\n");
    let layers = |reference: &str| -> Vec<Value> {
        skopeo_inspect_raw(reference)["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].clone())
            .collect()
    };
    let (before, after) = (layers(&first_image), layers(&second_image));
    let base_layers = layers(&base).len();
    assert_eq!(after.len(), before.len());
    assert_eq!(
        after[base_layers..],
        before[base_layers..],
        "the same own layers"
    );
    assert_eq!(
        after[..base_layers],
        layers(&base)[..],
        "the new base's layers"
    );
    // Built from scratch on the new base, the image is the same.
    let clean = text.replace("timeout: 10m", "timeout: 10m\n  cache:\n    noCache: true");
    assert_eq!(build(&name, &clean).reference(), second_image);

    // Now `nobody` has another uid in the new base: the layers' owner would
    // be wrong, so no rebase; the build runs (the builder from the cache)
    // and says why.
    let passwd =
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:4242:65534:nobody:/nonexistent:/bin/false\n";
    support::push_base_as(
        &busybox,
        &base,
        &[("/marker", "third base\n"), ("/etc/passwd", passwd)],
    );
    let third = build(&name, &text);
    let third_image = third.reference();
    let run = third.stages_run();
    assert!(run.contains(&"rebase".to_string()), "{run:?}");
    assert!(run.contains(&"probe".to_string()), "{run:?}");
    assert!(!run.contains(&"builder".to_string()), "{run:?}");
    assert!(
        third.stderr().contains("/srv/app"),
        "the reason names the COPY: {}",
        third.stderr()
    );
    assert_eq!(podman_run(&third_image, &[]), "built\nthird base\n4242\n");
}
