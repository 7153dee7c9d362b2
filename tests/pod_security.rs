//! Our pods against the Pod Security Standards, as `support::pss` reads
//! them: the assemble pod meets `restricted`, and so does the git context pod
//! but for the init container that opens the workspace (uid 0, no
//! capabilities); every pod that runs the stage images (chains, the runtime
//! chain, extractions, the probe) meets `baseline`. First, the checker itself: each single change to a
//! restricted pod is caught by the control and at the level it belongs to.

mod support;

use std::collections::BTreeSet;

use serde_json::{Value, json};
use slimforge::api::ImageBuild;
use slimforge::cache::entry::{ChainEntry, LayersEntry};
use slimforge::cache::lookup::CacheView;
use slimforge::controller::Settings;
use slimforge::controller::pods::{BuildObjects, Unit, UnitKind, build_units, rebase_unit};
use slimforge::controller::reconcile::validate;
use support::pss::{Control, Level, assert_meets, check_pod};

// ---------------------------------------------------------------------------
// The checker.

/// A small pod that meets `restricted`: one init container, one container.
fn restricted_pod() -> Value {
    let hardened = json!({
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
    });
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "ok", "annotations": {"note": "x"}},
        "spec": {
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "initContainers": [{
                "name": "init",
                "image": "busybox",
                "securityContext": hardened,
            }],
            "containers": [{
                "name": "main",
                "image": "busybox",
                "ports": [{"containerPort": 8080}],
                "securityContext": hardened,
            }],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
        },
    })
}

type Found = BTreeSet<(String, String)>;

fn found(level: Level, pod: &Value) -> Found {
    check_pod(level, pod)
        .into_iter()
        .map(|v| {
            assert!(
                v.level() <= level,
                "a {level} check reported a control above it: {v}"
            );
            (v.control.name().to_string(), v.path)
        })
        .collect()
}

fn set(items: &[(Control, &str)]) -> Found {
    items
        .iter()
        .map(|(c, p)| (c.name().to_string(), p.to_string()))
        .collect()
}

/// Applies `mutate` to [`restricted_pod`] and checks exactly `baseline` (the
/// violations at that level) and `restricted_only` (the further ones at
/// `restricted`) come out.
fn case(
    name: &str,
    mutate: impl FnOnce(&mut Value),
    baseline: &[(Control, &str)],
    restricted_only: &[(Control, &str)],
) {
    let mut pod = restricted_pod();
    mutate(&mut pod);
    let expected_baseline = set(baseline);
    let mut expected_restricted = expected_baseline.clone();
    expected_restricted.extend(set(restricted_only));
    assert_eq!(
        found(Level::Baseline, &pod),
        expected_baseline,
        "{name}: baseline"
    );
    assert_eq!(
        found(Level::Restricted, &pod),
        expected_restricted,
        "{name}: restricted"
    );
    for (control, _) in baseline {
        assert_eq!(control.level(), Level::Baseline, "{name}");
    }
    for (control, _) in restricted_only {
        assert_eq!(control.level(), Level::Restricted, "{name}");
    }
}

#[test]
fn the_unchanged_pod_meets_restricted() {
    let pod = restricted_pod();
    assert_meets(Level::Restricted, &pod, "the minimal pod");
    assert_meets(Level::Baseline, &pod, "the minimal pod");
}

#[test]
fn a_privileged_container_fails_baseline() {
    case(
        "privileged",
        |p| p["spec"]["containers"][0]["securityContext"]["privileged"] = json!(true),
        &[(
            Control::PrivilegedContainers,
            "spec.containers[0].securityContext.privileged",
        )],
        &[],
    );
}

#[test]
fn a_privileged_ephemeral_container_fails_baseline() {
    case(
        "privileged ephemeral container",
        |p| {
            p["spec"]["ephemeralContainers"] = json!([{
                "name": "debug",
                "image": "busybox",
                "securityContext": {
                    "privileged": true,
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                },
            }]);
        },
        &[(
            Control::PrivilegedContainers,
            "spec.ephemeralContainers[0].securityContext.privileged",
        )],
        &[],
    );
}

#[test]
fn a_host_path_volume_fails_baseline() {
    case(
        "hostPath",
        |p| {
            p["spec"]["volumes"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "host", "hostPath": {"path": "/"}}));
        },
        &[(Control::HostPathVolumes, "spec.volumes[1].hostPath")],
        &[(Control::VolumeTypes, "spec.volumes[1].hostPath")],
    );
}

#[test]
fn a_volume_type_outside_the_list_fails_restricted_only() {
    case(
        "nfs",
        |p| {
            p["spec"]["volumes"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "share", "nfs": {"server": "nas", "path": "/x"}}));
        },
        &[],
        &[(Control::VolumeTypes, "spec.volumes[1].nfs")],
    );
    // Every listed type is allowed.
    let mut pod = restricted_pod();
    pod["spec"]["volumes"] = json!([
        {"name": "a", "configMap": {"name": "c"}},
        {"name": "b", "csi": {"driver": "d"}},
        {"name": "c", "downwardAPI": {}},
        {"name": "d", "emptyDir": {}},
        {"name": "e", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
        {"name": "f", "persistentVolumeClaim": {"claimName": "w"}},
        {"name": "g", "projected": {"sources": []}},
        {"name": "h", "secret": {"secretName": "s"}},
        {"name": "i"},
    ]);
    assert_meets(Level::Restricted, &pod, "every allowed volume type");
}

#[test]
fn host_namespaces_fail_baseline() {
    case(
        "hostNetwork",
        |p| p["spec"]["hostNetwork"] = json!(true),
        &[(Control::HostNamespaces, "spec.hostNetwork")],
        &[],
    );
    case(
        "hostPID and hostIPC",
        |p| {
            p["spec"]["hostPID"] = json!(true);
            p["spec"]["hostIPC"] = json!(true);
        },
        &[
            (Control::HostNamespaces, "spec.hostPID"),
            (Control::HostNamespaces, "spec.hostIPC"),
        ],
        &[],
    );
    let mut pod = restricted_pod();
    pod["spec"]["hostNetwork"] = json!(false);
    assert_meets(Level::Restricted, &pod, "hostNetwork: false");
}

#[test]
fn adding_sys_admin_fails_baseline() {
    case(
        "SYS_ADMIN",
        |p| {
            p["spec"]["initContainers"][0]["securityContext"]["capabilities"]["add"] =
                json!(["SYS_ADMIN"]);
        },
        &[(
            Control::Capabilities,
            "spec.initContainers[0].securityContext.capabilities.add[0]",
        )],
        &[(
            Control::CapabilitiesRestricted,
            "spec.initContainers[0].securityContext.capabilities.add[0]",
        )],
    );
}

#[test]
fn a_default_capability_passes_baseline_but_only_net_bind_service_passes_restricted() {
    case(
        "CHOWN",
        |p| p["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = json!(["CHOWN"]),
        &[],
        &[(
            Control::CapabilitiesRestricted,
            "spec.containers[0].securityContext.capabilities.add[0]",
        )],
    );
    let mut pod = restricted_pod();
    pod["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] =
        json!(["NET_BIND_SERVICE"]);
    assert_meets(Level::Restricted, &pod, "NET_BIND_SERVICE");
}

#[test]
fn a_missing_drop_all_fails_restricted_only() {
    case(
        "no capabilities",
        |p| {
            p["spec"]["containers"][0]["securityContext"]
                .as_object_mut()
                .unwrap()
                .remove("capabilities");
        },
        &[],
        &[(
            Control::CapabilitiesRestricted,
            "spec.containers[0].securityContext.capabilities.drop",
        )],
    );
    case(
        "dropping some",
        |p| {
            p["spec"]["containers"][0]["securityContext"]["capabilities"]["drop"] =
                json!(["NET_RAW"]);
        },
        &[],
        &[(
            Control::CapabilitiesRestricted,
            "spec.containers[0].securityContext.capabilities.drop",
        )],
    );
}

#[test]
fn unconfined_seccomp_fails_baseline_at_either_level() {
    case(
        "pod Unconfined",
        |p| p["spec"]["securityContext"]["seccompProfile"]["type"] = json!("Unconfined"),
        &[(Control::Seccomp, "spec.securityContext.seccompProfile.type")],
        &[],
    );
    case(
        "container Unconfined",
        |p| {
            p["spec"]["containers"][0]["securityContext"]["seccompProfile"] =
                json!({"type": "Unconfined"});
        },
        &[(
            Control::Seccomp,
            "spec.containers[0].securityContext.seccompProfile.type",
        )],
        &[],
    );
}

#[test]
fn seccomp_must_be_set_for_restricted_at_the_pod_or_in_every_container() {
    let no_pod_profile = |p: &mut Value| {
        p["spec"]["securityContext"]
            .as_object_mut()
            .unwrap()
            .remove("seccompProfile");
    };
    case(
        "no profile",
        no_pod_profile,
        &[],
        &[
            (
                Control::SeccompRequired,
                "spec.initContainers[0].securityContext.seccompProfile.type",
            ),
            (
                Control::SeccompRequired,
                "spec.containers[0].securityContext.seccompProfile.type",
            ),
        ],
    );
    case(
        "profile in one container only",
        |p| {
            no_pod_profile(p);
            p["spec"]["containers"][0]["securityContext"]["seccompProfile"] =
                json!({"type": "Localhost", "localhostProfile": "x.json"});
        },
        &[],
        &[(
            Control::SeccompRequired,
            "spec.initContainers[0].securityContext.seccompProfile.type",
        )],
    );
    let mut pod = restricted_pod();
    no_pod_profile(&mut pod);
    for list in ["initContainers", "containers"] {
        pod["spec"][list][0]["securityContext"]["seccompProfile"] =
            json!({"type": "RuntimeDefault"});
    }
    assert_meets(Level::Restricted, &pod, "seccomp in every container");
}

#[test]
fn run_as_user_zero_fails_restricted_only() {
    case(
        "runAsUser 0",
        |p| p["spec"]["containers"][0]["securityContext"]["runAsUser"] = json!(0),
        &[],
        &[(
            Control::RunningAsNonRootUser,
            "spec.containers[0].securityContext.runAsUser",
        )],
    );
    case(
        "pod runAsUser 0",
        |p| p["spec"]["securityContext"]["runAsUser"] = json!(0),
        &[],
        &[(
            Control::RunningAsNonRootUser,
            "spec.securityContext.runAsUser",
        )],
    );
}

#[test]
fn run_as_non_root_is_needed_at_the_pod_or_in_every_container() {
    let no_pod_flag = |p: &mut Value| {
        p["spec"]["securityContext"]
            .as_object_mut()
            .unwrap()
            .remove("runAsNonRoot");
    };
    case(
        "no runAsNonRoot",
        no_pod_flag,
        &[],
        &[
            (
                Control::RunningAsNonRoot,
                "spec.initContainers[0].securityContext.runAsNonRoot",
            ),
            (
                Control::RunningAsNonRoot,
                "spec.containers[0].securityContext.runAsNonRoot",
            ),
        ],
    );
    case(
        "a container says false",
        |p| p["spec"]["initContainers"][0]["securityContext"]["runAsNonRoot"] = json!(false),
        &[],
        &[(
            Control::RunningAsNonRoot,
            "spec.initContainers[0].securityContext.runAsNonRoot",
        )],
    );
    case(
        "the pod says false",
        |p| {
            p["spec"]["securityContext"]["runAsNonRoot"] = json!(false);
            for list in ["initContainers", "containers"] {
                p["spec"][list][0]["securityContext"]["runAsNonRoot"] = json!(true);
            }
        },
        &[],
        &[(
            Control::RunningAsNonRoot,
            "spec.securityContext.runAsNonRoot",
        )],
    );
    let mut pod = restricted_pod();
    no_pod_flag(&mut pod);
    for list in ["initContainers", "containers"] {
        pod["spec"][list][0]["securityContext"]["runAsNonRoot"] = json!(true);
    }
    assert_meets(Level::Restricted, &pod, "runAsNonRoot in every container");
}

#[test]
fn a_missing_allow_privilege_escalation_fails_restricted_only() {
    case(
        "allowPrivilegeEscalation missing",
        |p| {
            p["spec"]["initContainers"][0]["securityContext"]
                .as_object_mut()
                .unwrap()
                .remove("allowPrivilegeEscalation");
        },
        &[],
        &[(
            Control::PrivilegeEscalation,
            "spec.initContainers[0].securityContext.allowPrivilegeEscalation",
        )],
    );
    case(
        "allowPrivilegeEscalation true",
        |p| p["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = json!(true),
        &[],
        &[(
            Control::PrivilegeEscalation,
            "spec.containers[0].securityContext.allowPrivilegeEscalation",
        )],
    );
}

#[test]
fn an_unsafe_sysctl_fails_baseline() {
    case(
        "kernel.msgmax",
        |p| {
            p["spec"]["securityContext"]["sysctls"] = json!([
                {"name": "net.ipv4.tcp_syncookies", "value": "1"},
                {"name": "kernel.msgmax", "value": "65536"},
            ]);
        },
        &[(Control::Sysctls, "spec.securityContext.sysctls[1].name")],
        &[],
    );
}

#[test]
fn an_unmasked_proc_mount_fails_baseline() {
    case(
        "procMount Unmasked",
        |p| p["spec"]["containers"][0]["securityContext"]["procMount"] = json!("Unmasked"),
        &[(
            Control::ProcMount,
            "spec.containers[0].securityContext.procMount",
        )],
        &[],
    );
    let mut pod = restricted_pod();
    pod["spec"]["containers"][0]["securityContext"]["procMount"] = json!("Default");
    assert_meets(Level::Restricted, &pod, "procMount Default");
}

#[test]
fn a_host_port_fails_baseline() {
    case(
        "hostPort",
        |p| p["spec"]["containers"][0]["ports"][0]["hostPort"] = json!(8080),
        &[(Control::HostPorts, "spec.containers[0].ports[0].hostPort")],
        &[],
    );
    let mut pod = restricted_pod();
    pod["spec"]["containers"][0]["ports"][0]["hostPort"] = json!(0);
    assert_meets(Level::Restricted, &pod, "hostPort 0");
}

#[test]
fn host_process_fails_baseline() {
    case(
        "hostProcess",
        |p| {
            p["spec"]["securityContext"]["windowsOptions"] = json!({"hostProcess": true});
            p["spec"]["containers"][0]["securityContext"]["windowsOptions"] =
                json!({"hostProcess": true});
        },
        &[
            (
                Control::HostProcess,
                "spec.securityContext.windowsOptions.hostProcess",
            ),
            (
                Control::HostProcess,
                "spec.containers[0].securityContext.windowsOptions.hostProcess",
            ),
        ],
        &[],
    );
}

#[test]
fn apparmor_unconfined_fails_baseline_as_field_or_annotation() {
    case(
        "appArmorProfile Unconfined",
        |p| {
            p["spec"]["securityContext"]["appArmorProfile"] = json!({"type": "Unconfined"});
            p["spec"]["initContainers"][0]["securityContext"]["appArmorProfile"] =
                json!({"type": "Unconfined"});
        },
        &[
            (
                Control::AppArmor,
                "spec.securityContext.appArmorProfile.type",
            ),
            (
                Control::AppArmor,
                "spec.initContainers[0].securityContext.appArmorProfile.type",
            ),
        ],
        &[],
    );
    case(
        "AppArmor annotation unconfined",
        |p| {
            p["metadata"]["annotations"]["container.apparmor.security.beta.kubernetes.io/main"] =
                json!("unconfined");
        },
        &[(
            Control::AppArmor,
            "metadata.annotations[\"container.apparmor.security.beta.kubernetes.io/main\"]",
        )],
        &[],
    );
    let mut pod = restricted_pod();
    pod["metadata"]["annotations"]["container.apparmor.security.beta.kubernetes.io/main"] =
        json!("localhost/my-profile");
    pod["metadata"]["annotations"]["container.apparmor.security.beta.kubernetes.io/init"] =
        json!("runtime/default");
    pod["spec"]["containers"][0]["securityContext"]["appArmorProfile"] =
        json!({"type": "Localhost", "localhostProfile": "my-profile"});
    pod["spec"]["securityContext"]["appArmorProfile"] = json!({"type": "RuntimeDefault"});
    assert_meets(Level::Restricted, &pod, "allowed AppArmor profiles");
}

#[test]
fn custom_selinux_options_fail_baseline() {
    case(
        "SELinux spc_t, user, role",
        |p| {
            p["spec"]["securityContext"]["seLinuxOptions"] = json!({"type": "spc_t"});
            p["spec"]["containers"][0]["securityContext"]["seLinuxOptions"] =
                json!({"user": "system_u", "role": "system_r", "level": "s0:c1,c2"});
        },
        &[
            (Control::SeLinux, "spec.securityContext.seLinuxOptions.type"),
            (
                Control::SeLinux,
                "spec.containers[0].securityContext.seLinuxOptions.user",
            ),
            (
                Control::SeLinux,
                "spec.containers[0].securityContext.seLinuxOptions.role",
            ),
        ],
        &[],
    );
    let mut pod = restricted_pod();
    pod["spec"]["securityContext"]["seLinuxOptions"] =
        json!({"type": "container_init_t", "level": "s0:c1,c2", "user": ""});
    assert_meets(Level::Restricted, &pod, "an allowed SELinux type and level");
}

#[test]
fn a_probe_or_hook_aimed_at_a_host_fails_baseline() {
    case(
        "probe and hook hosts",
        |p| {
            let main = &mut p["spec"]["containers"][0];
            main["livenessProbe"] = json!({"httpGet": {"host": "10.0.0.1", "port": 80}});
            main["lifecycle"] = json!({"preStop": {"tcpSocket": {"host": "node", "port": 22}}});
            main["readinessProbe"] = json!({"httpGet": {"host": "", "port": 80}});
        },
        &[
            (
                Control::HostProbes,
                "spec.containers[0].livenessProbe.httpGet.host",
            ),
            (
                Control::HostProbes,
                "spec.containers[0].lifecycle.preStop.tcpSocket.host",
            ),
        ],
        &[],
    );
}

#[test]
fn windows_pods_are_waived_the_linux_only_restricted_controls() {
    let mut pod = restricted_pod();
    pod["spec"]["os"] = json!({"name": "windows"});
    pod["spec"]["securityContext"] = json!({"runAsNonRoot": true});
    for list in ["initContainers", "containers"] {
        pod["spec"][list][0]["securityContext"] = json!({});
    }
    assert_meets(Level::Restricted, &pod, "a Windows pod");
}

#[test]
fn check_reads_a_pod_template_spec_and_its_annotations() {
    // As a chart's Deployment gives it: the template's spec and annotations.
    let template = restricted_pod();
    let spec = &template["spec"];
    let annotations = json!({"container.apparmor.security.beta.kubernetes.io/main": "unconfined"});
    let violations = support::pss::check(Level::Restricted, spec, Some(&annotations));
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].control, Control::AppArmor);
    assert!(support::pss::check(Level::Restricted, spec, None).is_empty());
}

// ---------------------------------------------------------------------------
// Our pods.

/// Two builder chains, an image extraction, a probe and an assembly; an
/// inline context and pull secrets (secret volumes in the assemble pod).
const STAGES: &str = r#"
apiVersion: slimforge.dev/v1alpha1
kind: ImageBuild
metadata: {name: app, namespace: demo, uid: u-1, generation: 3}
spec:
  context: {inline: {"app.go": "package main", "config.yaml": "a: 1"}}
  dockerfile: |
    FROM golang AS builder
    COPY app.go .
    RUN go build app.go
    FROM rust AS tool
    RUN echo tool > /tool
    FROM busybox
    COPY --from=builder /go/app /app
    COPY --from=tool /tool /tool
    COPY --from=registry.example/certs:1 /etc/ssl/certs /etc/ssl/certs
    COPY config.yaml /etc/app/config.yaml
    CMD ["/app"]
  platform: linux/arm64
  output: {image: "registry.example/app:v1", pushSecret: regcred, additionalTags: [latest]}
  podTemplate:
    nodeSelector: {pool: builds}
    serviceAccountName: builder
    imagePullSecrets: [{name: pull}]
    tolerations: [{key: builds, operator: Exists, effect: NoSchedule}]
  resources: {limits: {memory: 2Gi}}
"#;

/// A final stage with RUN: the runtime chain; a ConfigMap context (a
/// configMap volume in the pods that read it); RUN mounts (a cache claim,
/// a projected build secret, a memory volume).
const RUNTIME: &str = r#"
apiVersion: slimforge.dev/v1alpha1
kind: ImageBuild
metadata: {name: rt, namespace: demo, uid: u-2, generation: 1}
spec:
  context:
    configMap: {name: rt-src, items: [{key: app.go, path: src/app.go, mode: 493}]}
  dockerfile: |
    FROM golang:1.22 AS build
    COPY src/app.go .
    RUN --mount=type=cache,target=/root/.cache/go-build --mount=type=secret,id=token \
        go build -o /out/app app.go
    FROM debian:12-slim
    COPY --from=build /out/app /usr/local/bin/app
    COPY src/app.go /src/app.go
    RUN --mount=type=tmpfs,target=/scratch chmod 0755 /usr/local/bin/app && useradd app
    USER app
    CMD ["app"]
  secrets: [{id: token, secretRef: {name: tokens, key: token}}]
  output: {image: "registry.example/rt:v1", pushSecret: regcred}
"#;

/// An assembly that reads a ConfigMap context (a configMap volume in the
/// restricted assemble pod).
const CONFIG_MAP: &str = r#"
apiVersion: slimforge.dev/v1alpha1
kind: ImageBuild
metadata: {name: conf, namespace: demo, uid: u-4, generation: 5}
spec:
  context:
    configMap: {name: conf-src}
  dockerfile: |
    FROM busybox
    COPY app.conf /etc/app.conf
  output: {image: "registry.example/conf:v1"}
"#;

/// A git context with credentials: the context pod comes first.
const GIT: &str = r#"
apiVersion: slimforge.dev/v1alpha1
kind: ImageBuild
metadata: {name: goapp, namespace: demo, uid: u-3, generation: 2}
spec:
  context:
    git: {url: "https://git.example/team/goapp.git", revision: release, subPath: app, credentialsSecret: git-creds}
  dockerfilePath: Dockerfile
  output: {image: "registry.example/team/goapp:v1", pushSecret: regcred}
  podTemplate:
    imagePullSecrets: [{name: pull}]
"#;

const GIT_DOCKERFILE: &str = "FROM golang:1.22 AS builder\nWORKDIR /go\nCOPY app.go .\nRUN CGO_ENABLED=0 go build app.go\n\nFROM busybox\nCOPY --from=builder /go/app .\nCOPY app.go /src/app.go\nCMD [\"./app\"]\n";

/// Every pod of `yaml`'s build, first attempts and a retry pinned to a node.
fn build_pods(yaml: &str, dockerfile_from_context: Option<&str>) -> Vec<(UnitKind, Value)> {
    let ib: ImageBuild = serde_yaml::from_str(yaml).unwrap();
    let settings = Settings::default();
    let plan = validate(&ib, &settings, dockerfile_from_context)
        .unwrap()
        .plan;
    let objects = BuildObjects {
        ib: &ib,
        plan: Some(&plan),
        settings: &settings,
        generation: ib.metadata.generation.unwrap_or(1),
        rebuild: 0,
        deadline_seconds: 900,
        cache: None,
    };
    let mut pods = Vec::new();
    for unit in build_units(&ib, &plan) {
        for (attempt, node) in [(0, None), (1, Some("node-a"))] {
            let pod = serde_json::to_value(objects.pod(&unit, attempt, node)).unwrap();
            pods.push((unit.kind.clone(), pod));
        }
    }
    pods
}

fn all_pods() -> Vec<(UnitKind, Value)> {
    let mut pods = build_pods(STAGES, None);
    pods.extend(build_pods(RUNTIME, None));
    pods.extend(build_pods(CONFIG_MAP, None));
    pods.extend(build_pods(GIT, Some(GIT_DOCKERFILE)));
    pods.extend(restore_pods(GIT, GIT_DOCKERFILE));
    pods.extend(rebase_pods(GIT, GIT_DOCKERFILE));
    pods
}

/// The restore pod of `yaml`'s build, as when the cache has its first
/// chain: first attempt and a retry pinned to a node.
fn restore_pods(yaml: &str, dockerfile: &str) -> Vec<(UnitKind, Value)> {
    cached_build_pods(yaml, dockerfile, |plan, view| {
        let chain = plan.chains[0].id.clone();
        view.hits.insert(
            chain.clone(),
            ChainEntry {
                key: format!("sha256:{}", "c".repeat(64)),
                chain: chain.clone(),
                result: json!({"status": "succeeded"}),
                exports: Vec::new(),
            },
        );
        Unit {
            n: 9,
            kind: UnitKind::Restore { ids: vec![chain] },
            depends_on: Vec::new(),
            name: "restore".into(),
            image: String::new(),
            from_line: None,
        }
    })
}

/// The rebase pod of `yaml`'s build, as when the cache has the final
/// image's layers from another digest of its base.
fn rebase_pods(yaml: &str, dockerfile: &str) -> Vec<(UnitKind, Value)> {
    cached_build_pods(yaml, dockerfile, |_, view| {
        view.rebase = Some(LayersEntry {
            key: format!("sha256:{}", "l".repeat(64)),
            recipe: serde_json::from_value(json!({"layers": [], "config": {}})).unwrap(),
            base_config: json!({}),
            base: "registry.example/busybox@sha256:old".into(),
            layers: Vec::new(),
        });
        rebase_unit()
    })
}

/// The pod of the unit `cached` returns, for `yaml`'s build with the cache
/// answer it fills in: first attempt and a retry pinned to a node.
fn cached_build_pods(
    yaml: &str,
    dockerfile: &str,
    cached: impl FnOnce(&slimforge::plan::BuildPlan, &mut CacheView) -> Unit,
) -> Vec<(UnitKind, Value)> {
    let ib: ImageBuild = serde_yaml::from_str(yaml).unwrap();
    let settings = Settings::default();
    let plan = validate(&ib, &settings, Some(dockerfile)).unwrap().plan;
    let mut view = CacheView {
        repository: "registry.example/team/goapp/cache".into(),
        ..CacheView::default()
    };
    let unit = cached(&plan, &mut view);
    let objects = BuildObjects {
        ib: &ib,
        plan: Some(&plan),
        settings: &settings,
        generation: 1,
        rebuild: 0,
        deadline_seconds: 900,
        cache: Some(&view),
    };
    [(0, None), (1, Some("node-a"))]
        .into_iter()
        .map(|(attempt, node)| {
            let pod = serde_json::to_value(objects.pod(&unit, attempt, node)).unwrap();
            (unit.kind.clone(), pod)
        })
        .collect()
}

/// The level each kind of pod must meet, and the kind's name for coverage.
/// No wildcard arm: a new kind must be placed here to compile.
fn required(kind: &UnitKind) -> (Level, &'static str) {
    match kind {
        // The operator's own image, as a fixed non-root user.
        UnitKind::Assemble => (Level::Restricted, "assemble"),
        // The assembly, told to put cached layers on the base.
        UnitKind::Rebase => (Level::Restricted, "rebase"),
        // The same, talking to the cache repository only; it may be the
        // first pod on the volume, so it has the context pod's opener.
        UnitKind::Restore { .. } => (Level::Baseline, "restore"),
        // The same, after an init container that opens the workspace as its
        // owner, root, with no capability (see the test below).
        UnitKind::Context => (Level::Baseline, "context"),
        // These run the stage image (and the user's RUN commands) as the
        // image's user or as root: root-owned files, user switches and the
        // default capabilities are part of building an image, so
        // `restricted` (runAsNonRoot, drop ALL) cannot hold for them;
        // `baseline` must.
        UnitKind::Chain { runtime: false, .. } => (Level::Baseline, "chain"),
        UnitKind::Chain { runtime: true, .. } => (Level::Baseline, "runtime"),
        UnitKind::Extraction { .. } => (Level::Baseline, "extraction"),
        UnitKind::Probe => (Level::Baseline, "probe"),
    }
}

/// Every kind [`required`] names; the fixtures must produce each.
const EVERY_KIND: [&str; 8] = [
    "context",
    "assemble",
    "rebase",
    "restore",
    "chain",
    "runtime",
    "extraction",
    "probe",
];

#[test]
fn the_fixtures_cover_every_kind_of_pod() {
    let covered: BTreeSet<&str> = all_pods().iter().map(|(k, _)| required(k).1).collect();
    let every: BTreeSet<&str> = EVERY_KIND.into_iter().collect();
    assert_eq!(covered, every);
}

#[test]
fn every_pod_meets_the_level_its_kind_requires() {
    for (kind, pod) in all_pods() {
        let (level, name) = required(&kind);
        let what = format!("the {name} pod {}", pod["metadata"]["name"]);
        assert_meets(level, &pod, &what);
    }
}

#[test]
fn the_assemble_context_and_restore_pods_meet_restricted_but_for_the_workspace_opener() {
    let pods = all_pods();
    let mut restricted: Vec<Value> = pods
        .iter()
        .filter(|(k, _)| {
            matches!(
                k,
                UnitKind::Assemble | UnitKind::Context | UnitKind::Restore { .. }
            )
        })
        .map(|(_, p)| p.clone())
        .collect();
    // An assembly per build, the git build's context pod and a restore
    // pod, each twice.
    assert_eq!(restricted.len(), 12);
    for pod in &mut restricted {
        let init = pod["spec"]["initContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if init.is_empty() {
            continue;
        }
        // The context and restore pods: one init container runs `stage open` as root
        // with every capability dropped, and nothing else runs as root.
        assert_eq!(init.len(), 1, "{pod}");
        assert_eq!(
            init[0]["command"].as_array().unwrap()[1..3],
            [json!("stage"), json!("open")]
        );
        let security = &init[0]["securityContext"];
        assert_eq!(security["runAsUser"], 0);
        assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(security["allowPrivilegeEscalation"], false);
        assert!(security["capabilities"]["add"].is_null());
        assert!(
            init[0]["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["name"] == "workspace")
        );
        pod["spec"]
            .as_object_mut()
            .unwrap()
            .remove("initContainers");
    }
    let volume_types: BTreeSet<&str> = restricted
        .iter()
        .flat_map(|p| p["spec"]["volumes"].as_array().unwrap())
        .flat_map(|v| v.as_object().unwrap().keys())
        .map(String::as_str)
        .filter(|k| *k != "name")
        .collect();
    assert_eq!(
        volume_types,
        BTreeSet::from(["configMap", "persistentVolumeClaim", "secret"]),
        "the fixtures reach every kind of volume these pods mount"
    );
    for pod in &restricted {
        assert_meets(Level::Restricted, pod, &pod["metadata"]["name"].to_string());
    }
}

#[test]
fn every_pod_meets_baseline() {
    for (kind, pod) in all_pods() {
        let what = format!("the {} pod {}", kind.role(), pod["metadata"]["name"]);
        assert_meets(Level::Baseline, &pod, &what);
    }
}
