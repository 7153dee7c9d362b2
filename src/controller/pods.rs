//! The objects of one build generation, built from the ImageBuild and its
//! plan: the workspace claim and the pods of DESIGN.md's data flow. Pure:
//! the same inputs give the same objects, byte for byte.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::Resource;
use serde_json::{Value, json};

use super::{
    ASSEMBLE_UID, ATTEMPT_LABEL, AUTH_MOUNT, BUILD_LABEL, CONTEXT_ENV, CONTEXT_MOUNT,
    GENERATION_LABEL, GIT_CREDENTIALS_MOUNT, HELPER_MOUNT, MANAGED_BY, MANAGED_BY_LABEL,
    ROLE_LABEL, STAGE_ANNOTATION, Settings, UNIT_LABEL, WORKSPACE_MOUNT,
};
use crate::api::ImageBuild;
use crate::plan::{BuildPlan, CopySource, FinalImage, PLAN_ENV};

/// Where the pull secrets are mounted in the assemble pod (one directory each).
pub const PULL_AUTH_MOUNT: &str = "/.slimforge-pull";
/// Default workspace size.
pub const DEFAULT_WORKSPACE_SIZE: &str = "2Gi";
/// The runtime pod's snapshot layer, on the workspace.
pub const SNAPSHOT_EXPORT: &str = "exports/snapshot.tar";
/// The probe's answer, on the workspace.
pub const PROBE_RESULT: &str = "results/probe.json";
/// The assembly's answer, on the workspace.
pub const ASSEMBLE_RESULT: &str = "results/assemble.json";
/// The context pod's answer (commit, Dockerfile), on the workspace.
pub const CONTEXT_RESULT: &str = "results/context.json";
/// Where the context pod checks a git context out, in the workspace.
pub const SOURCE_DIR: &str = "source";
/// The context pod's name in `status.stages`.
pub const CONTEXT_STAGE: &str = "git clone";
/// The context pod's unit number: it comes before every other pod.
pub const CONTEXT_UNIT: usize = 0;

/// One pod of the build, before it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// `n` in the pod name `<ib>-g<generation>-<n>`: 0 for a git build's
    /// context pod, then 1, 2, …
    pub n: usize,
    pub kind: UnitKind,
    /// The units whose results this one needs.
    pub depends_on: Vec<usize>,
    /// The name in `status.stages`: the chain's stage, `probe`, `assemble`.
    pub name: String,
    /// The image its main container runs.
    pub image: String,
    /// The Dockerfile line of the FROM that named `image`, for pull errors.
    pub from_line: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitKind {
    /// Clones a git context; every other pod waits for it.
    Context,
    /// A chain of stages; the runtime chain writes a snapshot too.
    Chain { id: String, runtime: bool },
    /// `COPY --from=<image>`: files taken out of an image.
    Extraction { id: String },
    /// Resolves the final stage against its base.
    Probe,
    /// Builds and pushes the final image.
    Assemble,
}

impl UnitKind {
    pub fn role(&self) -> &'static str {
        match self {
            UnitKind::Context => "context",
            UnitKind::Chain { runtime: false, .. } => "chain",
            UnitKind::Chain { runtime: true, .. } => "runtime",
            UnitKind::Extraction { .. } => "extraction",
            UnitKind::Probe => "probe",
            UnitKind::Assemble => "assemble",
        }
    }

    /// Runs the user's commands (or at least the user's image).
    pub fn runs_user_code(&self) -> bool {
        matches!(self, UnitKind::Chain { .. } | UnitKind::Extraction { .. })
    }
}

/// The build's pods in a fixed order: chains and extractions by wave, then
/// the probe (when the final image has a base to probe), then the assembly.
pub fn units(plan: &BuildPlan) -> Vec<Unit> {
    let mut units: Vec<Unit> = Vec::new();
    let mut index_of: BTreeMap<String, usize> = BTreeMap::new();
    for id in plan.waves.iter().flatten() {
        let n = units.len() + 1;
        let unit = if let Some(chain) = plan.chain(id) {
            let runtime = matches!(&plan.final_image, FinalImage::Runtime(r) if r.chain == *id);
            Unit {
                n,
                kind: UnitKind::Chain {
                    id: id.clone(),
                    runtime,
                },
                depends_on: chain
                    .depends_on
                    .iter()
                    .filter_map(|d| index_of.get(d).copied())
                    .collect(),
                name: id.clone(),
                image: chain.image.clone(),
                from_line: chain.stages.first().map(|s| s.stage.line),
            }
        } else if let Some(extraction) = plan.extraction(id) {
            let line = extraction
                .exports
                .first()
                .and_then(|e| e.consumers.first())
                .map(|c| c.line);
            Unit {
                n,
                kind: UnitKind::Extraction { id: id.clone() },
                depends_on: Vec::new(),
                name: format!("extract {}", extraction.image),
                image: extraction.image.clone(),
                from_line: line,
            }
        } else {
            continue;
        };
        index_of.insert(id.clone(), n);
        units.push(unit);
    }
    let (base, line) = plan.final_base();
    let base = base.to_string();
    if base != "scratch" {
        units.push(Unit {
            n: units.len() + 1,
            kind: UnitKind::Probe,
            depends_on: Vec::new(),
            name: "probe".into(),
            image: base,
            from_line: Some(line),
        });
    }
    let all = units.iter().map(|u| u.n).collect();
    units.push(Unit {
        n: units.len() + 1,
        kind: UnitKind::Assemble,
        depends_on: all,
        name: "assemble".into(),
        image: String::new(),
        from_line: None,
    });
    units
}

/// The context pod of a git build.
pub fn context_unit() -> Unit {
    Unit {
        n: CONTEXT_UNIT,
        kind: UnitKind::Context,
        depends_on: Vec::new(),
        name: CONTEXT_STAGE.into(),
        image: String::new(),
        from_line: None,
    }
}

/// The build's pods: [`units`], after the context pod when the context is
/// a git repository (every other pod then waits for it).
pub fn build_units(ib: &ImageBuild, plan: &BuildPlan) -> Vec<Unit> {
    let mut units = units(plan);
    if ib.spec.context.git.is_some() {
        for unit in &mut units {
            unit.depends_on.insert(0, CONTEXT_UNIT);
        }
        units.insert(0, context_unit());
    }
    units
}

/// `<ib>-g<generation>-<n>`, and `-r<attempt>` for a retried pod.
pub fn pod_name(build: &str, generation: i64, n: usize, attempt: u32) -> String {
    if attempt == 0 {
        format!("{build}-g{generation}-{n}")
    } else {
        format!("{build}-g{generation}-{n}-r{attempt}")
    }
}

/// The workspace claim of a generation.
pub fn claim_name(build: &str, generation: i64) -> String {
    format!("{build}-g{generation}-workspace")
}

/// What every builder needs about the ImageBuild.
pub struct BuildObjects<'a> {
    pub ib: &'a ImageBuild,
    /// `None` only while a git context is cloned: the plan needs its Dockerfile.
    pub plan: Option<&'a BuildPlan>,
    pub settings: &'a Settings,
    pub generation: i64,
    /// Seconds for `activeDeadlineSeconds`.
    pub deadline_seconds: i64,
}

impl BuildObjects<'_> {
    fn name(&self) -> String {
        self.ib.meta().name.clone().unwrap_or_default()
    }

    fn metadata(&self, name: &str, labels: Value, annotations: Value) -> Value {
        let ib = self.ib.meta();
        json!({
            "name": name,
            "namespace": ib.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": "slimforge.dev/v1alpha1",
                "kind": "ImageBuild",
                "name": ib.name,
                "uid": ib.uid,
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        })
    }

    fn labels(&self, role: &str) -> Value {
        json!({
            MANAGED_BY_LABEL: MANAGED_BY,
            BUILD_LABEL: self.name(),
            GENERATION_LABEL: self.generation.to_string(),
            ROLE_LABEL: role,
        })
    }

    pub fn claim(&self) -> PersistentVolumeClaim {
        let workspace = self.ib.spec.workspace.clone().unwrap_or_default();
        let access_modes = if workspace.access_modes.is_empty() {
            vec!["ReadWriteOnce".to_string()]
        } else {
            workspace.access_modes
        };
        let mut spec = json!({
            "accessModes": access_modes,
            "resources": {"requests": {"storage": workspace.size.as_deref().unwrap_or(DEFAULT_WORKSPACE_SIZE)}},
        });
        if let Some(class) = workspace.storage_class_name {
            spec["storageClassName"] = json!(class);
        }
        let claim = json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": self.metadata(&claim_name(&self.name(), self.generation), self.labels("workspace"), json!({})),
            "spec": spec,
        });
        serde_json::from_value(claim).expect("a claim built from typed values")
    }

    /// Whether every pod must run on one node (the workspace is ReadWriteOnce).
    pub fn pinned(&self) -> bool {
        let modes = self
            .ib
            .spec
            .workspace
            .as_ref()
            .map(|w| w.access_modes.clone())
            .unwrap_or_default();
        !modes.iter().any(|m| m == "ReadWriteMany")
    }

    /// The pod of `unit`, pinned to `node` when given. Every unit but the
    /// context pod needs the plan.
    pub fn pod(&self, unit: &Unit, attempt: u32, node: Option<&str>) -> Pod {
        let plan = match (self.plan, &unit.kind) {
            (_, UnitKind::Context) | (None, _) => return self.context_pod(unit, attempt, node),
            (Some(plan), _) => plan,
        };
        let settings = self.settings;
        let name = pod_name(&self.name(), self.generation, unit.n, attempt);
        let mut labels = self.labels(unit.kind.role());
        labels[UNIT_LABEL] = json!(unit.n.to_string());
        labels[ATTEMPT_LABEL] = json!(attempt.to_string());
        let annotations = json!({STAGE_ANNOTATION: unit.name});
        let helper = format!("{HELPER_MOUNT}/slimforge");
        let plan_json = serde_json::to_string(plan).unwrap_or_default();
        let template = self.ib.spec.pod_template.clone().unwrap_or_default();

        let mut volumes = vec![json!({
            "name": "workspace",
            "persistentVolumeClaim": {"claimName": claim_name(&self.name(), self.generation)},
        })];
        let workspace_mount = json!({"name": "workspace", "mountPath": WORKSPACE_MOUNT});
        let helper_mount = json!({"name": "helper", "mountPath": HELPER_MOUNT});
        let mut env = vec![json!({"name": PLAN_ENV, "value": plan_json})];
        let needs_context = match &unit.kind {
            UnitKind::Chain { id, .. } => plan.chain(id).is_some_and(|c| c.needs_context),
            UnitKind::Assemble => final_copies_context(plan),
            _ => false,
        };
        let mut context_mounts = Vec::new();
        if needs_context && let Some((source, volume)) = self.context_source() {
            env.push(json!({"name": CONTEXT_ENV, "value": source}));
            if let Some(volume) = volume {
                volumes.push(volume);
                context_mounts
                    .push(json!({"name": "context", "mountPath": CONTEXT_MOUNT, "readOnly": true}));
            }
        }

        let install = json!({
            "name": "install",
            "image": settings.helper_image,
            "command": [settings.helper_path, "stage", "install", HELPER_MOUNT],
            "volumeMounts": [helper_mount],
            "securityContext": {
                "runAsUser": 0,
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]},
            },
            "terminationMessagePolicy": "FallbackToLogsOnError",
        });
        // Root in the stage image, with its default capabilities (the
        // `baseline` level): it creates root-owned files and switches users.
        let root = json!({"runAsUser": 0, "runAsGroup": 0, "privileged": false});
        let mut main_mounts = vec![workspace_mount.clone()];
        let (init, main) = match &unit.kind {
            UnitKind::Chain { id, runtime } => {
                let whoami = json!({
                    "name": "whoami",
                    "image": unit.image,
                    "command": [helper, "stage", "whoami", format!("{HELPER_MOUNT}/whoami")],
                    "volumeMounts": [helper_mount],
                    "securityContext": {"allowPrivilegeEscalation": false},
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                });
                let mut command = vec![
                    json!(helper),
                    json!("stage"),
                    json!("run"),
                    json!("--chain"),
                    json!(id),
                    json!("--whoami"),
                    json!(format!("{HELPER_MOUNT}/whoami")),
                ];
                if *runtime {
                    command.push(json!("--snapshot"));
                    command.push(json!(format!("{WORKSPACE_MOUNT}/{SNAPSHOT_EXPORT}")));
                }
                main_mounts.push(helper_mount.clone());
                main_mounts.extend(context_mounts);
                let mut container = json!({
                    "name": "stage",
                    "image": unit.image,
                    "command": command,
                    "env": env,
                    "volumeMounts": main_mounts,
                    "securityContext": root,
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                });
                if let Some(resources) = &self.ib.spec.resources {
                    container["resources"] = json!(resources);
                }
                (vec![install, whoami], container)
            }
            UnitKind::Extraction { id } => {
                main_mounts.push(helper_mount.clone());
                let container = json!({
                    "name": "stage",
                    "image": unit.image,
                    "command": [helper, "stage", "run", "--chain", id],
                    "env": env,
                    "volumeMounts": main_mounts,
                    "securityContext": root,
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                });
                (vec![install], container)
            }
            UnitKind::Probe => {
                main_mounts.push(helper_mount.clone());
                let container = json!({
                    "name": "probe",
                    "image": unit.image,
                    "command": [
                        helper, "stage", "probe",
                        "--workspace", WORKSPACE_MOUNT,
                        "--result", format!("{WORKSPACE_MOUNT}/{PROBE_RESULT}"),
                    ],
                    "env": env,
                    "volumeMounts": main_mounts,
                    "securityContext": {
                        "runAsUser": 0,
                        "allowPrivilegeEscalation": false,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                });
                (vec![install], container)
            }
            UnitKind::Context => return self.context_pod(unit, attempt, node),
            UnitKind::Assemble => {
                let output = &self.ib.spec.output;
                let mut command = vec![
                    json!(settings.helper_path),
                    json!("assemble"),
                    json!("--workspace"),
                    json!(WORKSPACE_MOUNT),
                    json!("--image"),
                    json!(output.image),
                    json!("--result"),
                    json!(format!("{WORKSPACE_MOUNT}/{ASSEMBLE_RESULT}")),
                ];
                for tag in &output.additional_tags {
                    command.push(json!("--tag"));
                    command.push(json!(tag));
                }
                if output.insecure {
                    command.push(json!("--insecure"));
                }
                let builders = builder_images(plan);
                for builder in &builders {
                    command.push(json!("--builder-image"));
                    command.push(json!(builder));
                }
                if !builders.is_empty() {
                    // Their sizes are read with the pull secrets, as the kubelet pulled them.
                    for (i, pull) in template.image_pull_secrets.iter().enumerate() {
                        let name = format!("pull-secret-{i}");
                        let dir = format!("{PULL_AUTH_MOUNT}/{i}");
                        command.push(json!("--builder-auth"));
                        command.push(json!(format!("{dir}/config.json")));
                        volumes.push(json!({
                            "name": name,
                            "secret": {
                                "secretName": pull.name,
                                "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                            },
                        }));
                        main_mounts.push(json!({"name": name, "mountPath": dir, "readOnly": true}));
                    }
                }
                if let Some(secret) = &output.push_secret {
                    command.push(json!("--auth"));
                    command.push(json!(format!("{AUTH_MOUNT}/config.json")));
                    volumes.push(json!({
                        "name": "push-secret",
                        "secret": {
                            "secretName": secret,
                            "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                        },
                    }));
                    main_mounts.push(
                        json!({"name": "push-secret", "mountPath": AUTH_MOUNT, "readOnly": true}),
                    );
                }
                main_mounts.extend(context_mounts);
                let container = json!({
                    "name": "assemble",
                    "image": settings.helper_image,
                    "command": command,
                    "env": env,
                    "volumeMounts": main_mounts,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": ASSEMBLE_UID,
                        "runAsGroup": ASSEMBLE_UID,
                        "readOnlyRootFilesystem": true,
                        "allowPrivilegeEscalation": false,
                        "capabilities": {"drop": ["ALL"]},
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                });
                (Vec::new(), container)
            }
        };
        if !matches!(unit.kind, UnitKind::Assemble) {
            volumes.push(json!({"name": "helper", "emptyDir": {}}));
        }

        let mut security = json!({"seccompProfile": {"type": "RuntimeDefault"}});
        if matches!(unit.kind, UnitKind::Assemble) {
            security["runAsNonRoot"] = json!(true);
            security["runAsUser"] = json!(ASSEMBLE_UID);
            security["fsGroup"] = json!(ASSEMBLE_UID);
        }
        let mut spec = json!({
            "restartPolicy": "Never",
            "activeDeadlineSeconds": self.deadline_seconds,
            "securityContext": security,
            "initContainers": init,
            "containers": [main],
            "volumes": volumes,
            "enableServiceLinks": false,
        });
        if unit.kind.runs_user_code() || !matches!(unit.kind, UnitKind::Assemble) {
            spec["automountServiceAccountToken"] = json!(false);
        } else if let Some(account) = &template.service_account_name {
            spec["serviceAccountName"] = json!(account);
        }
        if matches!(unit.kind, UnitKind::Assemble) {
            // The assembly talks to registries only.
            spec["automountServiceAccountToken"] = json!(false);
        }
        self.place(&mut spec, &plan.platform, node);
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": self.metadata(&name, labels, annotations),
            "spec": spec,
        });
        serde_json::from_value(pod).expect("a pod built from typed values")
    }

    /// Node selector (platform and template), tolerations, pull secrets and
    /// the pin to `node`.
    fn place(&self, spec: &mut Value, platform: &str, node: Option<&str>) {
        let template = self.ib.spec.pod_template.clone().unwrap_or_default();
        let mut node_selector: BTreeMap<String, String> = template.node_selector.clone();
        let (os, arch) = os_arch(platform);
        node_selector.insert("kubernetes.io/os".into(), os);
        node_selector.insert("kubernetes.io/arch".into(), arch);
        spec["nodeSelector"] = json!(node_selector);
        if !template.tolerations.is_empty() {
            spec["tolerations"] = json!(template.tolerations);
        }
        if !template.image_pull_secrets.is_empty() {
            spec["imagePullSecrets"] = json!(template.image_pull_secrets);
        }
        if let Some(node) = node {
            spec["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{
                    "key": "kubernetes.io/hostname", "operator": "In", "values": [node],
                }]}],
            }}});
        }
    }

    /// The context pod of a git build: the operator image clones the
    /// repository into the workspace as a non-root container with no
    /// capabilities; the only pod that sees the git credentials. Its init
    /// container (uid 0, no capabilities either, so `baseline`) first opens
    /// the workspace to that user when the volume's root is the owner's alone
    /// (Kubernetes' host-path provisioner makes it 0750).
    fn context_pod(&self, unit: &Unit, attempt: u32, node: Option<&str>) -> Pod {
        let settings = self.settings;
        let name = pod_name(&self.name(), self.generation, unit.n, attempt);
        let mut labels = self.labels(unit.kind.role());
        labels[UNIT_LABEL] = json!(unit.n.to_string());
        labels[ATTEMPT_LABEL] = json!(attempt.to_string());
        let annotations = json!({STAGE_ANNOTATION: unit.name});
        let git = self.ib.spec.context.git.clone().unwrap_or_default();
        let mut command = vec![
            json!(settings.helper_path),
            json!("stage"),
            json!("clone"),
            json!("--url"),
            json!(git.url),
        ];
        if let Some(revision) = git.revision.as_deref().filter(|r| !r.is_empty()) {
            command.push(json!("--revision"));
            command.push(json!(revision));
        }
        command.extend([
            json!("--dest"),
            json!(format!("{WORKSPACE_MOUNT}/{SOURCE_DIR}")),
            json!("--workspace"),
            json!(WORKSPACE_MOUNT),
            json!("--result"),
            json!(format!("{WORKSPACE_MOUNT}/{CONTEXT_RESULT}")),
        ]);
        if let Some(sub) = git.sub_path.as_deref().map(|p| p.trim_matches('/'))
            && !sub.is_empty()
        {
            command.push(json!("--sub-path"));
            command.push(json!(sub));
        }
        if self.ib.spec.dockerfile.is_none()
            && let Some(path) = &self.ib.spec.dockerfile_path
        {
            command.push(json!("--dockerfile"));
            command.push(json!(path));
        }
        let mut volumes = vec![json!({
            "name": "workspace",
            "persistentVolumeClaim": {"claimName": claim_name(&self.name(), self.generation)},
        })];
        let mut mounts = vec![json!({"name": "workspace", "mountPath": WORKSPACE_MOUNT})];
        if let Some(secret) = &git.credentials_secret {
            command.push(json!("--credentials"));
            command.push(json!(GIT_CREDENTIALS_MOUNT));
            volumes.push(json!({"name": "git-credentials", "secret": {"secretName": secret}}));
            mounts.push(json!({"name": "git-credentials", "mountPath": GIT_CREDENTIALS_MOUNT, "readOnly": true}));
        }
        let container = json!({
            "name": "clone",
            "image": settings.helper_image,
            "command": command,
            "volumeMounts": mounts,
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": ASSEMBLE_UID,
                "runAsGroup": ASSEMBLE_UID,
                "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "terminationMessagePolicy": "FallbackToLogsOnError",
        });
        let mut spec = json!({
            "restartPolicy": "Never",
            "activeDeadlineSeconds": self.deadline_seconds,
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": ASSEMBLE_UID,
                "fsGroup": ASSEMBLE_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "initContainers": [{
                "name": "open-workspace",
                "image": settings.helper_image,
                "command": [settings.helper_path, "stage", "open", WORKSPACE_MOUNT],
                "volumeMounts": [{"name": "workspace", "mountPath": WORKSPACE_MOUNT}],
                "securityContext": {
                    "runAsNonRoot": false,
                    "runAsUser": 0,
                    "runAsGroup": 0,
                    "readOnlyRootFilesystem": true,
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                },
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }],
            "containers": [container],
            "volumes": volumes,
            "enableServiceLinks": false,
            "automountServiceAccountToken": false,
        });
        let platform = self
            .plan
            .map(|p| p.platform.clone())
            .or_else(|| self.ib.spec.platform.clone())
            .unwrap_or_else(|| "linux/amd64".into());
        self.place(&mut spec, &platform, node);
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": self.metadata(&name, labels, annotations),
            "spec": spec,
        });
        serde_json::from_value(pod).expect("a pod built from typed values")
    }

    /// The helper's context source (JSON) and the volume it needs, if any.
    fn context_source(&self) -> Option<(String, Option<Value>)> {
        let context = &self.ib.spec.context;
        if let Some(files) = &context.inline {
            return Some((json!({"inline": files}).to_string(), None));
        }
        if let Some(config_map) = &context.config_map {
            let items: Vec<Value> = config_map
                .items
                .iter()
                .map(|item| {
                    let mut value = json!({"key": item.key, "path": item.path});
                    if let Some(mode) = item.mode {
                        value["mode"] = json!(mode);
                    }
                    value
                })
                .collect();
            let source = json!({"configMap": {"dir": CONTEXT_MOUNT, "items": items}});
            // The whole ConfigMap, keys as file names: the helper places them.
            let volume = json!({"name": "context", "configMap": {"name": config_map.name}});
            return Some((source.to_string(), Some(volume)));
        }
        if let Some(git) = &context.git {
            let dir = match git.sub_path.as_deref().map(|p| p.trim_matches('/')) {
                Some(sub) if !sub.is_empty() => format!("{WORKSPACE_MOUNT}/{SOURCE_DIR}/{sub}"),
                _ => format!("{WORKSPACE_MOUNT}/{SOURCE_DIR}"),
            };
            return Some((json!({"dir": dir}).to_string(), None));
        }
        None
    }
}

/// Some COPY/ADD of the final stage reads the context.
fn final_copies_context(plan: &BuildPlan) -> bool {
    match &plan.final_image {
        FinalImage::Assemble(a) => a
            .steps
            .iter()
            .any(|s| matches!(s.source, Some(CopySource::Context))),
        FinalImage::Runtime(_) => false,
    }
}

/// The images the builder chains run in, each once: the assembly measures
/// them and reports the largest as what the build would weigh without
/// slimforge. A final stage that runs commands is not a builder, nor is an
/// image only copied from.
pub fn builder_images(plan: &BuildPlan) -> Vec<String> {
    let runtime = match &plan.final_image {
        FinalImage::Runtime(r) => Some(r.chain.as_str()),
        FinalImage::Assemble(_) => None,
    };
    let mut images: Vec<String> = Vec::new();
    for chain in &plan.chains {
        if Some(chain.id.as_str()) != runtime
            && chain.image != "scratch"
            && !images.contains(&chain.image)
        {
            images.push(chain.image.clone());
        }
    }
    images
}

/// `linux/arm64/v8` → (`linux`, `arm64`).
fn os_arch(platform: &str) -> (String, String) {
    let mut parts = platform.split('/');
    let os = parts.next().filter(|s| !s.is_empty()).unwrap_or("linux");
    let arch = parts.next().filter(|s| !s.is_empty()).unwrap_or("amd64");
    (os.to_string(), arch.to_string())
}
