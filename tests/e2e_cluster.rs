//! slimforge in a REAL Kubernetes: the single-node cluster `scripts/cluster
//! up` runs on this machine (etcd, kube-apiserver with RBAC, Node
//! authorization and Pod Security admission, the controller manager's
//! garbage collector and host-path provisioner, the scheduler, containerd
//! with runc, a kubelet, kube-proxy), with the operator installed by
//! `helm upgrade --install` from `charts/slimforge` (two replicas, leader
//! election, the chart's RBAC). Nothing here is a double: every ImageBuild
//! is applied with kubectl and built by the installed operator's pods, whose
//! images the kubelet pulls from the cluster's registry.
//!
//! `scripts/test` starts the cluster before the tests and stops it after;
//! without a cluster these tests fail, saying to start one.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::cluster::{Cluster, TestNamespace, apply, get_json, ready_condition};
use support::{GitDaemon, git, podman_run_for};

const APP: &str = include_str!("fixtures/seed/app.go");
const BUILD: Duration = Duration::from_secs(600);

/// The seed's Dockerfile on the cluster registry's bases.
fn seed_dockerfile(cluster: &Cluster) -> String {
    let (golang, busybox) = cluster.base_images();
    format!(
        "FROM {golang} AS builder\nCOPY app.go .\nRUN CGO_ENABLED=0 go build app.go\n\nFROM {busybox}\nCOPY --from=builder /go/app .\nCMD [\"./app\"]\n"
    )
}

/// The operator installed (once per run) and a namespace of the test's own
/// at Pod Security level `level`.
fn operator_and_namespace(prefix: &str, level: &str) -> (&'static Cluster, TestNamespace) {
    let cluster = Cluster::get();
    cluster.operator();
    let ns = cluster.namespace(prefix, level);
    (cluster, ns)
}

/// Waits until `ns` holds neither pods nor claims, as `who` should leave it.
fn wait_no_pods_nor_claims(cluster: &Cluster, ns: &TestNamespace, who: &str) {
    cluster.wait(
        &format!("{who} to remove every pod and claim"),
        Duration::from_secs(120),
        || {
            (pods(cluster, ns).is_empty()
                && get_json(cluster, ns, &["persistentvolumeclaims"])["items"]
                    .as_array()
                    .is_some_and(Vec::is_empty))
            .then_some(())
        },
    );
}

fn image_build(cluster: &Cluster, name: &str, spec: Value) -> Value {
    let mut spec = spec;
    let defaults = json!({
        "output": {"image": format!("{}/e2e/{name}:v1", cluster.registry), "insecure": true},
        "timeout": "10m",
        "ttlSecondsAfterFinished": 3600,
    });
    for (key, value) in defaults.as_object().unwrap() {
        if spec.get(key).is_none() {
            spec[key] = value.clone();
        }
    }
    json!({
        "apiVersion": "slimforge.dev/v1alpha1", "kind": "ImageBuild",
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// Applies ImageBuild `name` with `spec` (defaults filled in) in `ns`.
/// Unless the spec says otherwise, its stage cache is the namespace's own:
/// a test sees its pods run however often the tests ran on this registry.
fn apply_build(cluster: &Cluster, ns: &TestNamespace, name: &str, spec: Value) {
    let mut spec = spec;
    if spec.get("cache").is_none() {
        spec["cache"] =
            json!({"repository": format!("{}/e2e/cache-{}", cluster.registry, ns.name)});
    }
    apply(cluster, ns, &image_build(cluster, name, spec));
}

/// Waits until generation `generation` of the ImageBuild is Succeeded or
/// Failed; returns the object.
fn wait_finished(cluster: &Cluster, ns: &TestNamespace, name: &str, generation: i64) -> Value {
    cluster.wait(
        &format!("{name} generation {generation} finished"),
        BUILD,
        || {
            let ib = get_json(cluster, ns, &["imagebuild", name]);
            let status = &ib["status"];
            (status["observedGeneration"] == generation
                && matches!(status["phase"].as_str(), Some("Succeeded" | "Failed")))
            .then_some(ib)
        },
    )
}

/// Waits until rebuild `rebuilds` of generation `generation` of the
/// ImageBuild is Succeeded or Failed; returns the object.
fn wait_rebuilt(
    cluster: &Cluster,
    ns: &TestNamespace,
    name: &str,
    generation: i64,
    rebuilds: u32,
) -> Value {
    cluster.wait(
        &format!("{name} generation {generation} rebuild {rebuilds} finished"),
        BUILD,
        || {
            let ib = get_json(cluster, ns, &["imagebuild", name]);
            let status = &ib["status"];
            (status["observedGeneration"] == generation
                && status["rebuilds"] == rebuilds
                && matches!(status["phase"].as_str(), Some("Succeeded" | "Failed")))
            .then_some(ib)
        },
    )
}

fn pods(cluster: &Cluster, ns: &TestNamespace) -> Vec<Value> {
    get_json(cluster, ns, &["pods"])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The stage `name` of a status, if it has one.
fn stages_named(status: &Value, name: &str) -> Option<Value> {
    status["stages"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
}

fn names(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

#[test]
fn the_crd_is_served_and_the_apiserver_refuses_invalid_imagebuilds() {
    let cluster = Cluster::get();
    // Helm installs the CRD first (by server-side apply, as field manager
    // `helm`); then the upgrade path the README gives: the generated CRD
    // applied server-side over it.
    cluster.operator();
    let crd = std::fs::read_to_string(support::k8s::repo("crds/imagebuilds.slimforge.dev.yaml"))
        .expect("read the CRD");
    let out = cluster.kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=slimforge-test",
            "-f",
            "-",
        ],
        &crd,
    );
    assert!(out.status.success(), "apply the CRD: {out:?}");
    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "crd/imagebuilds.slimforge.dev",
        "--timeout=60s",
    ]);
    let ns = cluster.namespace("crd", "baseline");

    let valid = json!({
        "context": {"inline": {"app.go": "package main"}},
        // What the operator builds of the valid one stays on this cluster.
        "dockerfile": format!("FROM {}\n", cluster.base_images().1),
        "output": {"image": format!("{}/e2e/crd:v1", cluster.registry), "insecure": true},
    });
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut spec = valid.clone();
        edit(&mut spec);
        spec
    };
    let big = "x".repeat(101 * 1024);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "dockerfile and dockerfilePath",
            with(&|s| s["dockerfilePath"] = json!("Dockerfile")),
            "give exactly one of dockerfile and dockerfilePath",
        ),
        (
            "neither dockerfile nor dockerfilePath",
            with(&|s| {
                s.as_object_mut().unwrap().remove("dockerfile");
            }),
            "give exactly one of dockerfile and dockerfilePath",
        ),
        (
            "two contexts",
            with(&|s| s["context"]["git"] = json!({"url": "https://example.com/r.git"})),
            "give exactly one of inline, configMap and git",
        ),
        (
            "no context kind",
            with(&|s| s["context"] = json!({})),
            "give exactly one of inline, configMap and git",
        ),
        (
            "an empty output image",
            with(&|s| s["output"]["image"] = json!("")),
            "output.image is required",
        ),
        (
            "no output",
            with(&|s| {
                s.as_object_mut().unwrap().remove("output");
            }),
            "spec.output: Required value",
        ),
        (
            "no context",
            with(&|s| {
                s.as_object_mut().unwrap().remove("context");
            }),
            "spec.context: Required value",
        ),
        (
            "a git context without url",
            with(&|s| s["context"] = json!({"git": {"revision": "main"}})),
            "spec.context.git.url: Required value",
        ),
        (
            "a configMap context without name",
            with(&|s| s["context"] = json!({"configMap": {}})),
            "spec.context.configMap.name: Required value",
        ),
        (
            "a 101 KiB inline context",
            with(&|s| s["context"]["inline"] = json!({"big.txt": big})),
            "inline context is limited to 64 KiB",
        ),
        (
            "a number for timeout",
            with(&|s| s["timeout"] = json!(30)),
            "spec.timeout: Invalid value: \"integer\"",
        ),
        (
            "an unknown access mode",
            with(&|s| s["workspace"] = json!({"accessModes": ["ReadWriteSometimes"]})),
            "Unsupported value: \"ReadWriteSometimes\"",
        ),
    ];
    let mut wrong = Vec::new();
    for (what, spec, message) in &cases {
        let object = json!({
            "apiVersion": "slimforge.dev/v1alpha1", "kind": "ImageBuild",
            "metadata": {"name": "invalid"}, "spec": spec,
        });
        let out =
            cluster.kubectl_stdin(&["-n", &ns.name, "create", "-f", "-"], &object.to_string());
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        if out.status.success() {
            let _ = cluster.kubectl(&["-n", &ns.name, "delete", "imagebuild", "invalid"]);
            wrong.push(format!("{what}: accepted"));
        } else if !stderr.contains(message) {
            wrong.push(format!("{what}: refused without `{message}`: {stderr}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // And the valid one is accepted, with the printer columns served.
    apply(
        cluster,
        &ns,
        &json!({
            "apiVersion": "slimforge.dev/v1alpha1", "kind": "ImageBuild",
            "metadata": {"name": "valid"}, "spec": valid,
        }),
    );
    let table = cluster.kubectl_ok(&["-n", &ns.name, "get", "ib", "valid"]);
    let header = table.lines().next().unwrap_or_default();
    for column in ["NAME", "PHASE", "IMAGE", "DIGEST", "SIZE", "AGE"] {
        assert!(header.contains(column), "no {column} column: {table}");
    }
}

#[test]
fn helm_installs_the_operator_with_two_replicas_and_one_leads() {
    let cluster = Cluster::get();
    cluster.operator();
    let deployment: Value = serde_json::from_str(&cluster.kubectl_ok(&[
        "-n",
        "slimforge-system",
        "get",
        "deployment",
        "slimforge",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(
        deployment["status"]["availableReplicas"], 2,
        "{}",
        deployment["status"]
    );
    let pods: Value = serde_json::from_str(&cluster.kubectl_ok(&[
        "-n",
        "slimforge-system",
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=slimforge",
        "-o",
        "json",
    ]))
    .unwrap();
    let pod_names = names(pods["items"].as_array().unwrap());
    assert_eq!(pod_names.len(), 2, "{pod_names:?}");
    let holder = cluster.wait("a leader", Duration::from_secs(60), || {
        let lease: Value = serde_json::from_str(&cluster.kubectl_ok(&[
            "-n",
            "slimforge-system",
            "get",
            "lease",
            "slimforge-controller",
            "-o",
            "json",
        ]))
        .ok()?;
        lease["spec"]["holderIdentity"].as_str().map(str::to_string)
    });
    assert!(
        pod_names.contains(&holder),
        "{holder} holds the Lease, not one of {pod_names:?}"
    );
}

#[test]
fn the_seed_builds_runs_and_is_reported_then_rebuilds_on_edit_and_is_collected_on_delete() {
    let (cluster, ns) = operator_and_namespace("seed", "baseline");
    // A cache of this run's own: the first build runs every pod however
    // often the tests ran against this registry.
    let cache = format!("{}/e2e/cache-{}", cluster.registry, ns.name);
    let ib = image_build(
        cluster,
        "goapp",
        json!({
            "context": {"inline": {"app.go": APP}},
            "dockerfile": seed_dockerfile(cluster),
            "cache": {"repository": cache},
        }),
    );
    apply(cluster, &ns, &ib);

    // kstatus, as Flux reads it, while building.
    let building = cluster.wait("the build to start", Duration::from_secs(120), || {
        let object = get_json(cluster, &ns, &["imagebuild", "goapp"]);
        (object["status"]["phase"] == "Running").then_some(object)
    });
    assert_eq!(
        cluster.kstatus(&building).0,
        "InProgress",
        "{}",
        building["status"]
    );

    let out = cluster.kubectl(&[
        "-n",
        &ns.name,
        "wait",
        "--for=condition=Ready",
        "imagebuild/goapp",
        "--timeout=600s",
    ]);
    let done = get_json(cluster, &ns, &["imagebuild", "goapp"]);
    assert!(
        out.status.success(),
        "kubectl wait: {out:?}\n{}",
        done["status"]
    );
    assert_eq!(done["status"]["phase"], "Succeeded");
    assert_eq!(cluster.kstatus(&done).0, "Current", "{}", done["status"]);

    let image = &done["status"]["image"];
    let reference = image["reference"].as_str().expect("status.image.reference");
    assert!(
        reference.starts_with(&format!("{}/e2e/goapp@sha256:", cluster.registry)),
        "{reference}"
    );
    let size = image["sizeBytes"].as_i64().expect("sizeBytes");
    assert!(
        image["builderSizeBytes"].as_i64().unwrap() > 50 * size,
        "{image}"
    );

    // The table a user sees.
    let table = cluster.kubectl_ok(&["-n", &ns.name, "get", "ib", "goapp"]);
    let short = image["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")[..12]
        .to_string();
    assert!(
        table.contains("Succeeded") && table.contains(&short),
        "{table}"
    );
    assert!(table.contains(image["size"].as_str().unwrap()), "{table}");

    // The builder ran in the Go image the kubelet pulled from the registry.
    let (golang, _) = cluster.base_images();
    let golang_repo = golang.rsplit_once(':').unwrap().0;
    let builder = pods(cluster, &ns)
        .into_iter()
        .find(|p| {
            p["spec"]["containers"][0]["image"]
                .as_str()
                .is_some_and(|i| i.starts_with(golang_repo))
        })
        .expect("a pod in the Go image");
    let status = &builder["status"]["containerStatuses"][0];
    assert!(
        status["imageID"]
            .as_str()
            .unwrap_or_default()
            .contains("@sha256:"),
        "{status}"
    );
    assert_eq!(builder["status"]["phase"], "Succeeded");

    // The image runs.
    let printed = podman_run_for(reference, 3.0);
    assert!(printed.contains("user: root id: 0"), "{printed}");

    // A rebuild of the same generation, asked for with the annotation.
    // Nothing changed: the cache has the image, and no pod runs.
    cluster.kubectl_ok(&[
        "-n",
        &ns.name,
        "annotate",
        "ib",
        "goapp",
        "slimforge.dev/rebuild=1",
        "--overwrite",
    ]);
    let rebuilt = wait_rebuilt(cluster, &ns, "goapp", 1, 1);
    let status = &rebuilt["status"];
    assert_eq!(status["phase"], "Succeeded", "{status}");
    assert_eq!(status["buildReason"], "RebuildRequested", "{status}");
    assert_eq!(status["observedRebuild"], "1", "{status}");
    assert_eq!(status["image"]["cached"], true, "{status}");
    assert_eq!(status["image"]["digest"], image["digest"], "{status}");
    let left = names(&pods(cluster, &ns));
    assert!(
        !left.iter().any(|n| n.starts_with("goapp-g1b1-")),
        "no pod for the cached rebuild: {left:?}"
    );

    // An edit is a new generation and a new build; the old pods go first.
    // This one changes no input (a build arg no stage declares): the cache
    // has the image, and the operator finds it there (with the push
    // secret's credentials, in memory) without a single pod.
    let mut edited = ib.clone();
    edited["spec"]["buildArgs"] = json!({"EDITED": "1"});
    apply(cluster, &ns, &edited);
    let rebuilt = wait_finished(cluster, &ns, "goapp", 2);
    let status = &rebuilt["status"];
    assert_eq!(status["phase"], "Succeeded", "{status}");
    assert_eq!(status["image"]["digest"], image["digest"], "{status}");
    assert_eq!(status["image"]["cached"], true, "{status}");
    assert_eq!(status["buildReason"], "SpecChanged", "{status}");
    let stages = status["stages"].as_array().expect("stages");
    assert!(
        !stages.is_empty() && stages.iter().all(|s| s["cached"] == true && s["pod"] == ""),
        "{status}"
    );
    let left = names(&pods(cluster, &ns));
    assert!(
        !left.iter().any(|n| n.starts_with("goapp-g2-")),
        "no pod for the cached build: {left:?}"
    );

    // A change to the final stage only: the builder is taken from the
    // cache, and so is its layer (mounted by the assembly, no restore
    // pod); the image is new and runs.
    let mut final_only = ib.clone();
    final_only["spec"]["dockerfile"] =
        json!(format!("{}LABEL edited=yes\n", seed_dockerfile(cluster)));
    apply(cluster, &ns, &final_only);
    let rebuilt = wait_finished(cluster, &ns, "goapp", 3);
    let status = &rebuilt["status"];
    assert_eq!(status["phase"], "Succeeded", "{status}");
    assert_ne!(status["image"]["digest"], image["digest"], "{status}");
    let stage = |name: &str| {
        stages_named(status, name).unwrap_or_else(|| panic!("no stage {name} in {status}"))
    };
    assert_eq!(stage("builder")["cached"], true, "{status}");
    assert!(stages_named(status, "restore").is_none(), "{status}");
    assert_eq!(stage("assemble")["phase"], "Succeeded", "{status}");
    assert_eq!(
        status["image"]["layers"], image["layers"],
        "the app's layer is the cached blob: {status}"
    );
    let reference = status["image"]["reference"].as_str().unwrap();
    let printed = podman_run_for(reference, 3.0);
    assert!(printed.contains("user: root id: 0"), "{printed}");

    // Deleted: the garbage collector removes every pod and claim it owned.
    cluster.kubectl_ok(&[
        "-n",
        &ns.name,
        "delete",
        "imagebuild",
        "goapp",
        "--wait=true",
    ]);
    wait_no_pods_nor_claims(cluster, &ns, "the garbage collector");
}

#[test]
fn after_the_ttl_pods_and_claim_are_gone_and_the_status_stays() {
    let (cluster, ns) = operator_and_namespace("ttl", "baseline");
    let (_, busybox) = cluster.base_images();
    let ib = image_build(
        cluster,
        "ttl",
        json!({
            "context": {"inline": {"hello.txt": "hello\n"}},
            "dockerfile": format!("FROM {busybox} AS b\nRUN cp /etc/hostname /made\n\nFROM {busybox}\nCOPY --from=b /made /made\nCOPY hello.txt /\n"),
            "ttlSecondsAfterFinished": 5,
        }),
    );
    apply(cluster, &ns, &ib);
    let done = wait_finished(cluster, &ns, "ttl", 1);
    assert_eq!(done["status"]["phase"], "Succeeded", "{}", done["status"]);
    wait_no_pods_nor_claims(cluster, &ns, "the TTL");
    // Still Succeeded, and not built again.
    std::thread::sleep(Duration::from_secs(5));
    let after = get_json(cluster, &ns, &["imagebuild", "ttl"]);
    assert_eq!(after["status"]["phase"], "Succeeded");
    assert_eq!(after["status"]["image"], done["status"]["image"]);
    assert!(pods(cluster, &ns).is_empty());
}

#[test]
fn a_failing_run_names_the_stage_line_exit_code_and_log_tail() {
    let (cluster, ns) = operator_and_namespace("fail", "baseline");
    let (_, busybox) = cluster.base_images();
    let ib = image_build(
        cluster,
        "broken",
        json!({
            "context": {"inline": {"x": "x"}},
            "dockerfile": format!("FROM {busybox} AS build\nRUN echo preparing\nRUN echo the-compiler-said-no >&2; exit 3\n\nFROM {busybox}\nCOPY --from=build /etc/hostname /h\n"),
        }),
    );
    apply(cluster, &ns, &ib);
    let done = wait_finished(cluster, &ns, "broken", 1);
    let ready = ready_condition(&done).expect("a Ready condition");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "StageFailed");
    let message = ready["message"].as_str().unwrap();
    for part in ["build", "line 3", "exit code 3", "the-compiler-said-no"] {
        assert!(message.contains(part), "`{part}` not in: {message}");
    }
    assert_eq!(cluster.kstatus(&done).0, "Failed", "{}", done["status"]);
    // What the message rests on: the real termination message of the pod.
    let failed = pods(cluster, &ns)
        .into_iter()
        .find(|p| p["status"]["phase"] == "Failed")
        .expect("the failed pod");
    let terminated = &failed["status"]["containerStatuses"][0]["state"]["terminated"];
    assert!(
        terminated["message"]
            .as_str()
            .unwrap_or_default()
            .contains("the-compiler-said-no"),
        "{terminated}"
    );
}

#[test]
fn a_base_image_that_does_not_exist_fails_naming_the_from_line() {
    let (cluster, ns) = operator_and_namespace("pull", "baseline");
    let (_, busybox) = cluster.base_images();
    let missing = format!("{}/e2e/no-such-image:v0", cluster.registry);
    let ib = image_build(
        cluster,
        "nobase",
        json!({
            "context": {"inline": {"x": "x"}},
            "dockerfile": format!("FROM {busybox}\n\nFROM {missing} AS build\nRUN true\n\nFROM {busybox}\nCOPY --from=build /etc /e\n"),
        }),
    );
    apply(cluster, &ns, &ib);
    let done = wait_finished(cluster, &ns, "nobase", 1);
    let ready = ready_condition(&done).expect("a Ready condition");
    assert_eq!(ready["reason"], "ImagePullFailed", "{ready}");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("line 3: FROM {missing}")),
        "{message}"
    );
    // Nothing is left pulling forever.
    cluster.wait("the pods to stop", Duration::from_secs(60), || {
        pods(cluster, &ns)
            .iter()
            .all(|p| {
                matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
                    || p["metadata"]["deletionTimestamp"].is_string()
            })
            .then_some(())
    });
}

#[test]
fn configmap_and_git_contexts_build() {
    let (cluster, ns) = operator_and_namespace("contexts", "baseline");
    let dockerfile = seed_dockerfile(cluster);

    apply(
        cluster,
        &ns,
        &json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "goapp-src"},
            "data": {"main": APP},
        }),
    );
    // Push credentials as users give them (the registry here asks for none).
    cluster.kubectl_ok(&[
        "-n",
        &ns.name,
        "create",
        "secret",
        "docker-registry",
        "regcred",
        &format!("--docker-server={}", cluster.registry),
        "--docker-username=builder",
        "--docker-password=not-printed-anywhere",
    ]);
    apply_build(
        cluster,
        &ns,
        "from-configmap",
        json!({
            "context": {"configMap": {"name": "goapp-src", "items": [{"key": "main", "path": "app.go"}]}},
            "dockerfile": dockerfile,
            // A cache of this run's own: the pods run however often the
            // tests ran against this registry.
            "cache": {"repository": format!("{}/e2e/cache-{}", cluster.registry, ns.name)},
            "output": {
                "image": format!("{}/e2e/from-configmap:v1", cluster.registry),
                "insecure": true,
                "pushSecret": "regcred",
            },
        }),
    );

    // A git daemon on the cluster bridge, where pods reach it.
    let repos = tempfile::tempdir().unwrap();
    let work = repos.path().join("work");
    std::fs::create_dir_all(work.join("app")).unwrap();
    std::fs::write(work.join("app/app.go"), APP).unwrap();
    std::fs::write(work.join("app/Dockerfile"), &dockerfile).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["add", "."]);
    git(
        &work,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@e",
            "commit",
            "-q",
            "-m",
            "seed",
        ],
    );
    git(
        repos.path(),
        &["clone", "-q", "--bare", "work", "goapp.git"],
    );
    let host = cluster.registry.split(':').next().unwrap();
    let daemon = GitDaemon::start_on(repos.path(), host);
    apply_build(
        cluster,
        &ns,
        "from-git",
        json!({
            "context": {"git": {"url": format!("git://{host}:{}/goapp.git", daemon.port), "revision": "main", "subPath": "app"}},
            "dockerfilePath": "Dockerfile",
            "cache": {"repository": format!("{}/e2e/cache-git-{}", cluster.registry, ns.name)},
        }),
    );

    for name in ["from-configmap", "from-git"] {
        let done = wait_finished(cluster, &ns, name, 1);
        assert_eq!(
            done["status"]["phase"], "Succeeded",
            "{name}: {}",
            done["status"]
        );
        let reference = done["status"]["image"]["reference"].as_str().unwrap();
        let printed = podman_run_for(reference, 2.5);
        assert!(printed.contains("user: root id: 0"), "{name}: {printed}");
    }
    // The credentials reached the assemble pod and no other.
    let with_secret: Vec<String> = pods(cluster, &ns)
        .into_iter()
        .filter(|p| p.to_string().contains("regcred"))
        .map(|p| {
            p["metadata"]["labels"]["slimforge.dev/role"]
                .as_str()
                .unwrap_or("?")
                .to_string()
        })
        .collect();
    assert!(!with_secret.is_empty());
    assert!(
        with_secret
            .iter()
            .all(|role| role == "assemble" || role == "restore"),
        "{with_secret:?}"
    );
    let git_build = get_json(cluster, &ns, &["imagebuild", "from-git"]);
    let commit = git_build["status"]["source"]["commit"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(commit.len(), 40, "{}", git_build["status"]);
    drop(daemon);
}

#[test]
fn a_restricted_namespace_refuses_the_chain_pod_and_the_status_says_so() {
    let (cluster, ns) = operator_and_namespace("restricted", "restricted");
    apply_build(
        cluster,
        &ns,
        "goapp",
        json!({"context": {"inline": {"app.go": APP}}, "dockerfile": seed_dockerfile(cluster)}),
    );
    let done = wait_finished(cluster, &ns, "goapp", 1);
    let ready = ready_condition(&done).expect("a Ready condition");
    assert_eq!(ready["reason"], "PodSecurityForbidden", "{ready}");
    // The admission plugin's words, not ours.
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("violates PodSecurity \"restricted"),
        "{message}"
    );
    assert!(pods(cluster, &ns).is_empty(), "a pod was admitted");
}

#[test]
fn the_standby_takes_over_a_running_build_without_duplicating_pods() {
    let (cluster, ns) = operator_and_namespace("failover", "baseline");
    let (_, busybox) = cluster.base_images();
    apply_build(
        cluster,
        &ns,
        "slow",
        json!({
            "context": {"inline": {"x": "x"}},
            "dockerfile": format!("FROM {busybox} AS build\nRUN sleep 25 && echo done > /out\n\nFROM {busybox}\nCOPY --from=build /out /out\n"),
        }),
    );
    cluster.wait("the stage to run", Duration::from_secs(120), || {
        pods(cluster, &ns)
            .iter()
            .any(|p| p["status"]["phase"] == "Running")
            .then_some(())
    });
    let lease = || -> Value {
        serde_json::from_str(&cluster.kubectl_ok(&[
            "-n",
            "slimforge-system",
            "get",
            "lease",
            "slimforge-controller",
            "-o",
            "json",
        ]))
        .unwrap()
    };
    let leader = lease()["spec"]["holderIdentity"]
        .as_str()
        .unwrap()
        .to_string();
    cluster.kubectl_ok(&[
        "-n",
        "slimforge-system",
        "delete",
        "pod",
        &leader,
        "--wait=false",
    ]);
    let successor = cluster.wait("another replica to lead", Duration::from_secs(120), || {
        let holder = lease()["spec"]["holderIdentity"]
            .as_str()
            .map(str::to_string)?;
        (holder != leader && !holder.is_empty()).then_some(holder)
    });
    let done = wait_finished(cluster, &ns, "slow", 1);
    assert_eq!(done["status"]["phase"], "Succeeded", "{}", done["status"]);
    let built = names(&pods(cluster, &ns));
    assert!(
        built.iter().all(|n| !n.contains("-r")),
        "a pod was created again after {successor} took over: {built:?}"
    );
    let mut unique = built.clone();
    unique.dedup();
    assert_eq!(unique.len(), built.len());
}

#[test]
fn a_missing_push_secret_is_ready_false_naming_the_field_and_creates_nothing() {
    let (cluster, ns) = operator_and_namespace("secret", "baseline");
    let (_, busybox) = cluster.base_images();
    apply_build(
        cluster,
        &ns,
        "nosecret",
        json!({
            "context": {"inline": {"x": "x"}},
            "dockerfile": format!("FROM {busybox}\nCOPY x /x\n"),
            "output": {
                "image": format!("{}/e2e/nosecret:v1", cluster.registry),
                "insecure": true,
                "pushSecret": "no-such-secret",
            },
        }),
    );
    // Not Failed: the build waits for the Secret (Pending), Stalled, as kstatus
    // wants a condition that needs a person.
    let done = cluster.wait("Ready=False", Duration::from_secs(120), || {
        let ib = get_json(cluster, &ns, &["imagebuild", "nosecret"]);
        (ready_condition(&ib).is_some_and(|c| c["status"] == "False")).then_some(ib)
    });
    assert_eq!(done["status"]["phase"], "Pending", "{}", done["status"]);
    assert_eq!(cluster.kstatus(&done).0, "Failed", "{}", done["status"]);
    let ready = ready_condition(&done).expect("a Ready condition");
    assert_eq!(ready["reason"], "SecretNotFound", "{ready}");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("spec.output.pushSecret") && message.contains("no-such-secret"),
        "{message}"
    );
    assert!(pods(cluster, &ns).is_empty());
    let claims = get_json(cluster, &ns, &["persistentvolumeclaims"]);
    assert_eq!(claims["items"], json!([]), "no claim either");
}

#[test]
fn a_moved_runtime_base_is_rebased_by_one_pod_and_the_image_has_its_files() {
    let (cluster, ns) = operator_and_namespace("trigger", "baseline");
    let (_, busybox) = cluster.base_images();
    let base = format!("{}/e2e/base-{}:1", cluster.registry, ns.name);
    support::push_base_as(busybox, &base, &[]);
    let dockerfile = format!(
        "FROM {busybox} AS builder\nRUN echo built > /out\n\nFROM {base}\nCOPY --from=builder /out /out\nCMD [\"cat\", \"/marker\"]\n"
    );
    apply_build(
        cluster,
        &ns,
        "moved",
        json!({
            "context": {"inline": {}},
            "dockerfile": dockerfile,
            "cache": {"repository": format!("{}/e2e/cache-{}", cluster.registry, ns.name)},
            "triggers": {"images": true, "interval": "2s"},
        }),
    );
    let first = wait_finished(cluster, &ns, "moved", 1);
    let status = &first["status"];
    assert_eq!(status["phase"], "Succeeded", "{status}");
    assert!(status["resolvedImages"][&base].is_string(), "{status}");

    // The base's tag moves to an image with one more file.
    support::push_base_as(busybox, &base, &[("/marker", "the fixed base\n")]);
    let rebuilt = wait_rebuilt(cluster, &ns, "moved", 1, 1);
    let status = &rebuilt["status"];
    assert_eq!(status["phase"], "Succeeded", "{status}");
    assert_eq!(status["buildReason"], "BaseImageMoved", "{status}");
    assert_ne!(
        status["resolvedImages"][&base], first["status"]["resolvedImages"][&base],
        "{status}"
    );
    // A rebase: the cached layers on the new base, by one pod.
    assert_eq!(status["image"]["rebased"], true, "{status}");
    let stages: Vec<&str> = status["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(
        stages,
        ["rebase"],
        "no builder, probe or restore pod: {status}"
    );
    let new_base = status["resolvedImages"][&base].as_str().unwrap();
    assert!(
        status["image"]["base"]
            .as_str()
            .is_some_and(|b| b.ends_with(new_base)),
        "{status}"
    );
    assert_eq!(
        status["image"]["layers"], first["status"]["image"]["layers"],
        "the same own layers"
    );
    assert_eq!(
        status["triggers"]["images"]
            .as_array()
            .and_then(|images| images.iter().find(|i| i["image"] == base.as_str()))
            .map(|i| i["digest"].clone()),
        Some(status["resolvedImages"][&base].clone()),
        "what the trigger saw is in the status: {status}"
    );
    let reference = status["image"]["reference"].as_str().unwrap();
    let printed = support::podman_run(reference, &[]);
    assert_eq!(printed, "the fixed base\n");
}

#[test]
fn a_moved_branch_rebuilds_only_the_chain_whose_files_changed() {
    let (cluster, ns) = operator_and_namespace("branch", "baseline");
    let (_, busybox) = cluster.base_images();
    let dockerfile = format!(
        "FROM {busybox} AS a\nCOPY a.txt /in/\nRUN cp /in/a.txt /a\n\nFROM {busybox} AS b\nCOPY b.txt /in/\nRUN cp /in/b.txt /b\n\nFROM {busybox}\nCOPY --from=a /a /a\nCOPY --from=b /b /b\nCMD [\"cat\", \"/a\", \"/b\"]\n"
    );
    // A git daemon on the cluster bridge, where pods reach it.
    let repos = tempfile::tempdir().unwrap();
    let work = repos.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("Dockerfile"), &dockerfile).unwrap();
    std::fs::write(work.join("a.txt"), "a1\n").unwrap();
    std::fs::write(work.join("b.txt"), "b1\n").unwrap();
    let commit = |message: &str| {
        git(&work, &["add", "."]);
        git(
            &work,
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@e",
                "commit",
                "-q",
                "-m",
                message,
            ],
        );
    };
    git(&work, &["init", "-q", "-b", "main"]);
    commit("one");
    git(repos.path(), &["clone", "-q", "--bare", "work", "app.git"]);
    let host = cluster.registry.split(':').next().unwrap();
    let daemon = GitDaemon::start_on(repos.path(), host);
    apply_build(
        cluster,
        &ns,
        "branch",
        json!({
            "context": {"git": {"url": format!("git://{host}:{}/app.git", daemon.port), "revision": "main"}},
            "dockerfilePath": "Dockerfile",
            "cache": {"repository": format!("{}/e2e/cache-{}", cluster.registry, ns.name)},
            "triggers": {"source": true, "interval": "2s"},
        }),
    );
    let first = wait_finished(cluster, &ns, "branch", 1);
    assert_eq!(first["status"]["phase"], "Succeeded", "{}", first["status"]);

    // b.txt changes on main: the branch moves.
    std::fs::write(work.join("b.txt"), "b2\n").unwrap();
    commit("two");
    git(&work, &["push", "-q", "../app.git", "main"]);
    let rebuilt = wait_rebuilt(cluster, &ns, "branch", 1, 1);
    let status = &rebuilt["status"];
    assert_eq!(status["phase"], "Succeeded", "{status}");
    assert_eq!(status["buildReason"], "SourceMoved", "{status}");
    assert_ne!(
        status["source"]["commit"],
        first["status"]["source"]["commit"]
    );
    assert_eq!(
        status["triggers"]["source"]["commit"], status["source"]["commit"],
        "{status}"
    );
    // Keyed file by file: a's files did not change.
    let a = stages_named(status, "a").expect("stage a");
    let b = stages_named(status, "b").expect("stage b");
    assert_eq!(a["cached"], true, "{status}");
    assert_eq!(b["cached"], false, "{status}");
    let reference = status["image"]["reference"].as_str().unwrap();
    assert_eq!(support::podman_run(reference, &[]), "a1\nb2\n");
    drop(daemon);
}

/// `RUN --mount` in the cluster: a build secret from a Secret reaches only
/// the pod whose RUN mounts it, as a reference, and is found in no log,
/// event or status; a cache mount's claim is made once, outlives the build
/// and is warm for the next; a missing Secret is `Ready=False` naming it.
#[test]
fn run_mounts_take_secrets_by_reference_and_keep_caches_between_builds() {
    let (cluster, ns) = operator_and_namespace("mounts", "baseline");
    let (_, busybox) = cluster.base_images();
    let value = format!("tok-{}", support::unique_name("v"));
    cluster.kubectl_ok(&[
        "-n",
        &ns.name,
        "create",
        "secret",
        "generic",
        "tokens",
        &format!("--from-literal=token={value}"),
    ]);
    let dockerfile = format!(
        "FROM {busybox} AS fetch\n\
         RUN --mount=type=secret,id=token,required sha256sum /run/secrets/token | cut -c1-64 > /hash\n\
         FROM {busybox} AS counted\n\
         ARG RUN_NUMBER\n\
         RUN --mount=type=cache,id=counter,target=/c,sharing=locked echo $RUN_NUMBER >> /c/runs && wc -l < /c/runs > /count\n\
         FROM {busybox}\n\
         COPY --from=fetch /hash /hash\n\
         COPY --from=counted /count /count\n\
         CMD [\"cat\", \"/hash\", \"/count\"]\n"
    );
    let spec = json!({
        "context": {"inline": {}},
        "dockerfile": dockerfile,
        "buildArgs": {"RUN_NUMBER": "1"},
        "secrets": [{"id": "token", "secretRef": {"name": "tokens", "key": "token"}}],
        "cacheVolumes": {"size": "64Mi"},
    });
    apply_build(cluster, &ns, "mounts", spec.clone());
    let done = wait_finished(cluster, &ns, "mounts", 1);
    let status = &done["status"];
    assert_eq!(status["phase"], "Succeeded", "{status}");
    let hash = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(value.as_bytes()))
    };
    let printed = support::podman_run(status["image"]["reference"].as_str().unwrap(), &[]);
    assert_eq!(
        printed.split_whitespace().collect::<Vec<_>>(),
        [hash.as_str(), "1"]
    );

    // The Secret, by reference, in the one pod that mounts it.
    for pod in pods(cluster, &ns) {
        let text = pod.to_string();
        assert!(!text.contains(&value), "a pod spec holds the value: {text}");
        let role = pod["metadata"]["labels"]["slimforge.dev/role"]
            .as_str()
            .unwrap_or_default();
        let stage = pod["metadata"]["annotations"].to_string();
        let mounts_secret = text.contains(r#""name":"tokens""#);
        assert_eq!(
            mounts_secret,
            role == "chain" && stage.contains("fetch"),
            "{role} {stage}"
        );
        let name = pod["metadata"]["name"].as_str().unwrap();
        let logs = cluster.kubectl(&["-n", &ns.name, "logs", name, "--all-containers"]);
        assert!(
            !String::from_utf8_lossy(&logs.stdout).contains(&value),
            "{name}'s log"
        );
    }
    let events = cluster.kubectl_ok(&["-n", &ns.name, "get", "events", "-o", "json"]);
    assert!(!events.contains(&value));
    assert!(!done.to_string().contains(&value));

    // Nor in any file of the workspace (a host path on this machine),
    // compressed or not.
    let workspace = get_json(cluster, &ns, &["pvc", "mounts-g1-workspace"]);
    let volume = workspace["spec"]["volumeName"].as_str().unwrap();
    let pv: Value =
        serde_json::from_str(&cluster.kubectl_ok(&["get", "pv", volume, "-o", "json"])).unwrap();
    let dir = pv["spec"]["hostPath"]["path"].as_str().unwrap();
    let files: Vec<_> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .collect();
    assert!(files.len() > 3, "the workspace's files: {files:?}");
    for file in files {
        let mut bytes = std::fs::read(file.path()).unwrap();
        // Exports and layers are gzip-compressed: read what they hold.
        if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut plain = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut plain)
                .unwrap();
            bytes = plain;
        }
        assert!(
            !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
            "{}",
            file.path().display()
        );
    }

    // The cache's claim: made once, labelled, owned by no build.
    let claim_name = slimforge::contract::cache_volume("counter");
    let claim = get_json(cluster, &ns, &["pvc", &claim_name]);
    assert_eq!(
        claim["metadata"]["labels"]["slimforge.dev/cache"],
        slimforge::contract::cache_hash("counter")
    );
    assert_eq!(
        claim["metadata"]["annotations"]["slimforge.dev/cache-id"],
        "counter"
    );
    assert!(claim["metadata"]["ownerReferences"].is_null(), "{claim}");
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "64Mi");

    // The next build finds what the first left there.
    let mut edited = spec.clone();
    edited["buildArgs"] = json!({"RUN_NUMBER": "2"});
    apply_build(cluster, &ns, "mounts", edited);
    let done = wait_finished(cluster, &ns, "mounts", 2);
    let status = &done["status"];
    assert_eq!(status["phase"], "Succeeded", "{status}");
    let printed = support::podman_run(status["image"]["reference"].as_str().unwrap(), &[]);
    assert_eq!(
        printed.split_whitespace().collect::<Vec<_>>(),
        [hash.as_str(), "2"]
    );

    // The Secret gone: the next build waits for it, naming it.
    cluster.kubectl_ok(&["-n", &ns.name, "delete", "secret", "tokens"]);
    let mut edited = spec;
    edited["buildArgs"] = json!({"RUN_NUMBER": "3"});
    apply_build(cluster, &ns, "mounts", edited);
    let waiting = cluster.wait("Ready=False", Duration::from_secs(120), || {
        let ib = get_json(cluster, &ns, &["imagebuild", "mounts"]);
        (ib["status"]["observedGeneration"] == 3
            && ready_condition(&ib).is_some_and(|c| c["status"] == "False"))
        .then_some(ib)
    });
    let ready = ready_condition(&waiting).unwrap();
    assert_eq!(ready["reason"], "SecretNotFound", "{ready}");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("spec.secrets[0].secretRef") && message.contains("Secret tokens"),
        "{message}"
    );
}
