//! The objects of one build generation, built from the ImageBuild and its
//! plan: the workspace claim and the pods of the data flow in
//! docs/architecture.md. Pure: the same inputs give the same objects, byte
//! for byte.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar,
    KeyToPath, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod,
    PodSecurityContext, PodSpec, SeccompProfile, SecretVolumeSource, SecurityContext, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use serde_json::{Value, json};

use super::{
    ASSEMBLE_UID, ATTEMPT_LABEL, BUILD_LABEL, GENERATION_LABEL, MANAGED_BY, MANAGED_BY_LABEL,
    ROLE_LABEL, STAGE_ANNOTATION, Settings, UNIT_LABEL,
};
use crate::api::ImageBuild;
use crate::contract::{
    ASSEMBLE_RESULT, AUTH_MOUNT, CONTEXT_ENV, CONTEXT_MOUNT, CONTEXT_RESULT, GIT_CREDENTIALS_MOUNT,
    HELPER_MOUNT, PLAN_ENV, PROBE_RESULT, PULL_AUTH_MOUNT, SNAPSHOT_LAYER, SOURCE_DIR,
    WORKSPACE_MOUNT,
};
use crate::plan::{BuildPlan, CopySource, FinalImage};

/// Default workspace size.
pub const DEFAULT_WORKSPACE_SIZE: &str = "2Gi";
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

/// Who a pod is within its build: written onto the pod by
/// [`BuildObjects::pod`] and read back by both shells (the Kubernetes one
/// from the API, the local one from the pod it hands to podman), so that
/// the labels' names and formats live in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitIdentity {
    /// The ImageBuild generation the pod was made for.
    pub generation: i64,
    /// [`Unit::n`].
    pub unit: usize,
    /// Which attempt of the unit (0 first, more after an eviction).
    pub attempt: u32,
    /// [`UnitKind::role`].
    pub role: String,
    /// [`Unit::name`]: the stage it runs (an annotation: stage names are
    /// not label values).
    pub stage: String,
}

impl UnitIdentity {
    /// The identity of `unit`'s pod for `generation`, attempt `attempt`.
    pub fn of(unit: &Unit, generation: i64, attempt: u32) -> Self {
        UnitIdentity {
            generation,
            unit: unit.n,
            attempt,
            role: unit.kind.role().to_string(),
            stage: unit.name.clone(),
        }
    }

    /// The generation, role, unit and attempt labels.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (GENERATION_LABEL.to_string(), self.generation.to_string()),
            (ROLE_LABEL.to_string(), self.role.clone()),
            (UNIT_LABEL.to_string(), self.unit.to_string()),
            (ATTEMPT_LABEL.to_string(), self.attempt.to_string()),
        ])
    }

    /// The stage annotation.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(STAGE_ANNOTATION.to_string(), self.stage.clone())])
    }

    /// The identity written on a pod, `None` when its generation or unit
    /// label is missing or malformed (not a pod of ours). A missing attempt
    /// is the first, a missing role or stage empty.
    pub fn from_metadata(meta: &ObjectMeta) -> Option<Self> {
        let labels = meta.labels.as_ref()?;
        let generation = labels.get(GENERATION_LABEL)?.parse().ok()?;
        let unit = labels.get(UNIT_LABEL)?.parse().ok()?;
        let attempt = labels
            .get(ATTEMPT_LABEL)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        let role = labels.get(ROLE_LABEL).cloned().unwrap_or_default();
        let stage = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(STAGE_ANNOTATION))
            .cloned()
            .unwrap_or_default();
        Some(UnitIdentity {
            generation,
            unit,
            attempt,
            role,
            stage,
        })
    }
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

    /// Name, namespace, labels, annotations and the controller reference
    /// to the ImageBuild (which deletes the object with the build).
    fn metadata(
        &self,
        name: String,
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
    ) -> ObjectMeta {
        let ib = self.ib.meta();
        ObjectMeta {
            name: Some(name),
            namespace: ib.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: ImageBuild::api_version(&()).into_owned(),
                kind: ImageBuild::kind(&()).into_owned(),
                name: ib.name.clone().unwrap_or_default(),
                uid: ib.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        }
    }

    fn labels(&self, role: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
            (BUILD_LABEL.to_string(), self.name()),
            (GENERATION_LABEL.to_string(), self.generation.to_string()),
            (ROLE_LABEL.to_string(), role.to_string()),
        ])
    }

    /// The metadata of `unit`'s pod: its [`UnitIdentity`] as labels and
    /// annotations.
    fn pod_metadata(&self, unit: &Unit, attempt: u32) -> ObjectMeta {
        let identity = UnitIdentity::of(unit, self.generation, attempt);
        let mut labels = self.labels(unit.kind.role());
        labels.extend(identity.labels());
        let name = pod_name(&self.name(), self.generation, unit.n, attempt);
        self.metadata(name, labels, identity.annotations())
    }

    /// The generation's workspace claim: the spec's size, class and access
    /// modes, `ReadWriteOnce` and [`DEFAULT_WORKSPACE_SIZE`] when unset.
    pub fn claim(&self) -> PersistentVolumeClaim {
        let workspace = self.ib.spec.workspace.clone().unwrap_or_default();
        let access_modes = if workspace.access_modes.is_empty() {
            vec!["ReadWriteOnce".to_string()]
        } else {
            workspace.access_modes
        };
        let size = workspace
            .size
            .unwrap_or_else(|| DEFAULT_WORKSPACE_SIZE.to_string());
        let name = claim_name(&self.name(), self.generation);
        PersistentVolumeClaim {
            metadata: self.metadata(name, self.labels("workspace"), BTreeMap::new()),
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(access_modes),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".to_string(), Quantity(size))])),
                    ..Default::default()
                }),
                storage_class_name: workspace.storage_class_name,
                ..Default::default()
            }),
            ..Default::default()
        }
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
        let plan_json = serde_json::to_string(plan).unwrap_or_default();
        let mut env = vec![env_var(PLAN_ENV, plan_json)];
        let mut volumes = vec![self.workspace_volume()];
        let mut context_mounts = Vec::new();
        if needs_context(&unit.kind, plan)
            && let Some((source, volume)) = self.context_source()
        {
            env.push(env_var(CONTEXT_ENV, source));
            if let Some(volume) = volume {
                volumes.push(volume);
                context_mounts.push(read_only_mount("context", CONTEXT_MOUNT));
            }
        }
        let assemble = matches!(unit.kind, UnitKind::Assemble);
        let (init, main) = match &unit.kind {
            UnitKind::Chain { id, runtime } => {
                self.chain_containers(unit, id, *runtime, env, context_mounts)
            }
            UnitKind::Extraction { id } => self.extraction_containers(unit, id, env),
            UnitKind::Probe => self.probe_containers(unit, env),
            UnitKind::Context => return self.context_pod(unit, attempt, node),
            UnitKind::Assemble => {
                let (container, secrets) = self.assemble_container(plan, env, context_mounts);
                volumes.extend(secrets);
                (Vec::new(), container)
            }
        };
        if !assemble {
            volumes.push(helper_volume());
        }
        let (security, service_account_name) = if assemble {
            // The assembly talks to registries only: the account serves
            // image pull secrets, its token stays out.
            let template = self.ib.spec.pod_template.as_ref();
            let account = template.and_then(|t| t.service_account_name.clone());
            (restricted_pod_security(), account)
        } else {
            (runtime_default_pod_security(), None)
        };
        let spec = PodSpec {
            security_context: Some(security),
            service_account_name,
            init_containers: Some(init),
            containers: vec![main],
            volumes: Some(volumes),
            ..self.pod_spec(&plan.platform, node)
        };
        Pod {
            metadata: self.pod_metadata(unit, attempt),
            spec: Some(spec),
            ..Default::default()
        }
    }

    /// A chain's pod: the helper copied in, `whoami` as the image's own
    /// user, then the chain's stages as root with the image's default
    /// capabilities (the `baseline` level: they create root-owned files and
    /// switch users). The runtime chain writes the snapshot too.
    fn chain_containers(
        &self,
        unit: &Unit,
        id: &str,
        runtime: bool,
        env: Vec<EnvVar>,
        context_mounts: Vec<VolumeMount>,
    ) -> (Vec<Container>, Container) {
        let helper = copied_helper();
        let whoami_file = format!("{HELPER_MOUNT}/whoami");
        let whoami = container(
            "whoami",
            &unit.image,
            strings([&helper, "stage", "whoami", &whoami_file]),
            vec![helper_mount()],
            SecurityContext {
                allow_privilege_escalation: Some(false),
                ..Default::default()
            },
        );
        let mut command = strings([
            &helper,
            "stage",
            "run",
            "--chain",
            id,
            "--whoami",
            &whoami_file,
        ]);
        if runtime {
            let snapshot = format!("{WORKSPACE_MOUNT}/{SNAPSHOT_LAYER}");
            command.extend(strings(["--snapshot", &snapshot]));
        }
        let mut mounts = vec![workspace_mount(), helper_mount()];
        mounts.extend(context_mounts);
        let stage = Container {
            env: Some(env),
            resources: self.ib.spec.resources.clone(),
            ..container("stage", &unit.image, command, mounts, stage_root_security())
        };
        (vec![install_container(self.settings), whoami], stage)
    }

    /// An extraction's pod: the helper copied in, then run in the image as
    /// root to take the files out.
    fn extraction_containers(
        &self,
        unit: &Unit,
        id: &str,
        env: Vec<EnvVar>,
    ) -> (Vec<Container>, Container) {
        let helper = copied_helper();
        let stage = Container {
            env: Some(env),
            ..container(
                "stage",
                &unit.image,
                strings([&helper, "stage", "run", "--chain", id]),
                vec![workspace_mount(), helper_mount()],
                stage_root_security(),
            )
        };
        (vec![install_container(self.settings)], stage)
    }

    /// The probe's pod: the helper copied into the final stage's base, run
    /// there as root without capabilities to read the image's files.
    fn probe_containers(&self, unit: &Unit, env: Vec<EnvVar>) -> (Vec<Container>, Container) {
        let helper = copied_helper();
        let result = format!("{WORKSPACE_MOUNT}/{PROBE_RESULT}");
        let probe = Container {
            env: Some(env),
            ..container(
                "probe",
                &unit.image,
                strings([
                    &helper,
                    "stage",
                    "probe",
                    "--workspace",
                    WORKSPACE_MOUNT,
                    "--result",
                    &result,
                ]),
                vec![workspace_mount(), helper_mount()],
                root_without_capabilities(),
            )
        };
        (vec![install_container(self.settings)], probe)
    }

    /// The assembly's container, restricted, and the Secret volumes it
    /// mounts: the pull secrets when it measures builder images, the push
    /// secret when there is one.
    fn assemble_container(
        &self,
        plan: &BuildPlan,
        env: Vec<EnvVar>,
        context_mounts: Vec<VolumeMount>,
    ) -> (Container, Vec<Volume>) {
        let settings = self.settings;
        let output = &self.ib.spec.output;
        let result = format!("{WORKSPACE_MOUNT}/{ASSEMBLE_RESULT}");
        let mut command = strings([
            &settings.helper_path,
            "assemble",
            "--workspace",
            WORKSPACE_MOUNT,
            "--image",
            &output.image,
            "--result",
            &result,
        ]);
        for tag in &output.additional_tags {
            command.extend(strings(["--tag", tag]));
        }
        if output.insecure {
            command.push("--insecure".into());
        }
        let mut volumes = Vec::new();
        let mut mounts = vec![workspace_mount()];
        let builders = builder_images(plan);
        for builder in &builders {
            command.extend(strings(["--builder-image", builder]));
        }
        if !builders.is_empty() {
            // Their sizes are read with the pull secrets, as the kubelet pulled them.
            let template = self.ib.spec.pod_template.clone().unwrap_or_default();
            for (i, pull) in template.image_pull_secrets.iter().enumerate() {
                let name = format!("pull-secret-{i}");
                let dir = format!("{PULL_AUTH_MOUNT}/{i}");
                command.extend(strings(["--builder-auth", &format!("{dir}/config.json")]));
                volumes.push(docker_config_volume(&name, &pull.name));
                mounts.push(read_only_mount(&name, &dir));
            }
        }
        if let Some(secret) = &output.push_secret {
            command.extend(strings(["--auth", &format!("{AUTH_MOUNT}/config.json")]));
            volumes.push(docker_config_volume("push-secret", secret));
            mounts.push(read_only_mount("push-secret", AUTH_MOUNT));
        }
        mounts.extend(context_mounts);
        let container = Container {
            env: Some(env),
            ..container(
                "assemble",
                &settings.helper_image,
                command,
                mounts,
                restricted_container_security(),
            )
        };
        (container, volumes)
    }

    /// What every pod shares: never restarted, the deadline, no service
    /// links nor account token, and its placement: node selector (platform
    /// and template), tolerations, pull secrets and the pin to `node`.
    fn pod_spec(&self, platform: &str, node: Option<&str>) -> PodSpec {
        let template = self.ib.spec.pod_template.clone().unwrap_or_default();
        let mut node_selector = template.node_selector;
        let (os, arch) = os_arch(platform);
        node_selector.insert("kubernetes.io/os".into(), os);
        node_selector.insert("kubernetes.io/arch".into(), arch);
        PodSpec {
            restart_policy: Some("Never".into()),
            active_deadline_seconds: Some(self.deadline_seconds),
            enable_service_links: Some(false),
            automount_service_account_token: Some(false),
            node_selector: Some(node_selector),
            tolerations: Some(template.tolerations).filter(|t| !t.is_empty()),
            image_pull_secrets: Some(template.image_pull_secrets).filter(|s| !s.is_empty()),
            affinity: node.map(node_affinity),
            ..Default::default()
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
        let mut command = self.clone_command();
        let mut volumes = vec![self.workspace_volume()];
        let mut mounts = vec![workspace_mount()];
        let git = self.ib.spec.context.git.as_ref();
        if let Some(secret) = git.and_then(|g| g.credentials_secret.as_ref()) {
            command.extend(strings(["--credentials", GIT_CREDENTIALS_MOUNT]));
            volumes.push(Volume {
                name: "git-credentials".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            });
            mounts.push(read_only_mount("git-credentials", GIT_CREDENTIALS_MOUNT));
        }
        let clone = container(
            "clone",
            &settings.helper_image,
            command,
            mounts,
            restricted_container_security(),
        );
        let open = container(
            "open-workspace",
            &settings.helper_image,
            strings([&settings.helper_path, "stage", "open", WORKSPACE_MOUNT]),
            vec![workspace_mount()],
            workspace_opener_security(),
        );
        let platform = self
            .plan
            .map(|p| p.platform.clone())
            .or_else(|| self.ib.spec.platform.clone())
            .unwrap_or_else(|| "linux/amd64".into());
        let spec = PodSpec {
            security_context: Some(restricted_pod_security()),
            init_containers: Some(vec![open]),
            containers: vec![clone],
            volumes: Some(volumes),
            ..self.pod_spec(&platform, node)
        };
        Pod {
            metadata: self.pod_metadata(unit, attempt),
            spec: Some(spec),
            ..Default::default()
        }
    }

    /// The helper's `stage clone` command line, without the credentials.
    fn clone_command(&self) -> Vec<String> {
        let git = self.ib.spec.context.git.clone().unwrap_or_default();
        let mut command = strings([
            &self.settings.helper_path,
            "stage",
            "clone",
            "--url",
            &git.url,
        ]);
        if let Some(revision) = git.revision.as_deref().filter(|r| !r.is_empty()) {
            command.extend(strings(["--revision", revision]));
        }
        command.extend(strings([
            "--dest",
            &format!("{WORKSPACE_MOUNT}/{SOURCE_DIR}"),
            "--workspace",
            WORKSPACE_MOUNT,
            "--result",
            &format!("{WORKSPACE_MOUNT}/{CONTEXT_RESULT}"),
        ]));
        if let Some(sub) = git.sub_path.as_deref().map(|p| p.trim_matches('/'))
            && !sub.is_empty()
        {
            command.extend(strings(["--sub-path", sub]));
        }
        if self.ib.spec.dockerfile.is_none()
            && let Some(path) = &self.ib.spec.dockerfile_path
        {
            command.extend(strings(["--dockerfile", path]));
        }
        command
    }

    /// The generation's workspace claim as the volume `workspace`.
    fn workspace_volume(&self) -> Volume {
        Volume {
            name: "workspace".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&self.name(), self.generation),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The helper's context source (JSON) and the volume it needs, if any.
    fn context_source(&self) -> Option<(String, Option<Volume>)> {
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
            let volume = Volume {
                name: "context".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: config_map.name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            };
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

/// The container security context of the pods that meet `restricted` (the
/// assembly, the git clone): non-root as [`ASSEMBLE_UID`], a read-only root
/// filesystem, no privilege escalation, no capabilities, RuntimeDefault
/// seccomp.
pub fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(ASSEMBLE_UID),
        run_as_group: Some(ASSEMBLE_UID),
        read_only_root_filesystem: Some(true),
        seccomp_profile: Some(runtime_default()),
        ..no_escalation_no_capabilities()
    }
}

/// The pod security context of the pods that meet `restricted`: non-root as
/// [`ASSEMBLE_UID`], which also owns the volumes, RuntimeDefault seccomp.
pub fn restricted_pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(ASSEMBLE_UID),
        fs_group: Some(ASSEMBLE_UID),
        ..runtime_default_pod_security()
    }
}

/// The pod security context of the pods that run stage images: only the
/// RuntimeDefault seccomp profile, the images choose their users.
fn runtime_default_pod_security() -> PodSecurityContext {
    PodSecurityContext {
        seccomp_profile: Some(runtime_default()),
        ..Default::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..Default::default()
    }
}

/// No privilege escalation and every capability dropped.
fn no_escalation_no_capabilities() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// uid 0 without capabilities: copies the helper, probes the final base.
fn root_without_capabilities() -> SecurityContext {
    SecurityContext {
        run_as_user: Some(0),
        ..no_escalation_no_capabilities()
    }
}

/// The context pod's workspace opener: root (the pod says non-root), group
/// 0, no capabilities, a read-only root filesystem.
fn workspace_opener_security() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(false),
        run_as_group: Some(0),
        read_only_root_filesystem: Some(true),
        ..root_without_capabilities()
    }
}

/// Root in the stage image, with its default capabilities (the `baseline`
/// level): it creates root-owned files and switches users.
fn stage_root_security() -> SecurityContext {
    SecurityContext {
        run_as_user: Some(0),
        run_as_group: Some(0),
        privileged: Some(false),
        ..Default::default()
    }
}

/// A container of ours: its logs stand in for an empty termination message.
fn container(
    name: &str,
    image: &str,
    command: Vec<String>,
    volume_mounts: Vec<VolumeMount>,
    security: SecurityContext,
) -> Container {
    Container {
        name: name.to_string(),
        image: Some(image.to_string()),
        command: Some(command),
        volume_mounts: Some(volume_mounts),
        security_context: Some(security),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// The init container that copies the helper out of the operator image into
/// the `helper` volume, for a stage image to run it.
fn install_container(settings: &Settings) -> Container {
    container(
        "install",
        &settings.helper_image,
        strings([&settings.helper_path, "stage", "install", HELPER_MOUNT]),
        vec![helper_mount()],
        root_without_capabilities(),
    )
}

/// The helper's path once [`install_container`] copied it.
fn copied_helper() -> String {
    format!("{HELPER_MOUNT}/slimforge")
}

/// The `helper` volume the helper is copied into.
fn helper_volume() -> Volume {
    Volume {
        name: "helper".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

/// A Secret of type `kubernetes.io/dockerconfigjson` as `config.json`.
fn docker_config_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_string()),
            items: Some(vec![KeyToPath {
                key: ".dockerconfigjson".into(),
                path: "config.json".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn workspace_mount() -> VolumeMount {
    mount("workspace", WORKSPACE_MOUNT)
}

fn helper_mount() -> VolumeMount {
    mount("helper", HELPER_MOUNT)
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        ..Default::default()
    }
}

fn read_only_mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        read_only: Some(true),
        ..mount(name, path)
    }
}

fn env_var(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value),
        ..Default::default()
    }
}

/// Requires the node named `node`.
fn node_affinity(node: &str) -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: "kubernetes.io/hostname".into(),
                        operator: "In".into(),
                        values: Some(vec![node.to_string()]),
                    }]),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn strings<const N: usize>(items: [&str; N]) -> Vec<String> {
    items.into_iter().map(str::to_string).collect()
}

/// The unit's main container reads the build context: a chain that copies
/// from it, or an assembly whose final stage does.
fn needs_context(kind: &UnitKind, plan: &BuildPlan) -> bool {
    match kind {
        UnitKind::Chain { id, .. } => plan.chain(id).is_some_and(|c| c.needs_context),
        UnitKind::Assemble => final_copies_context(plan),
        _ => false,
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

#[cfg(test)]
mod tests {
    use super::*;

    const GIT_BUILD: &str = r#"
apiVersion: slimforge.dev/v1alpha1
kind: ImageBuild
metadata: {name: app, namespace: demo, uid: u-1, generation: 2}
spec:
  context:
    git: {url: "https://git.example/app.git", subPath: /app/, credentialsSecret: git-creds}
  dockerfilePath: Dockerfile
  platform: linux/arm64/v8
  output: {image: "registry.example/app:v1"}
"#;

    fn git_build() -> ImageBuild {
        serde_yaml::from_str(GIT_BUILD).expect("the fixture parses")
    }

    /// The context pod while the repository is cloned: no plan yet.
    fn context_pod(ib: &ImageBuild, settings: &Settings) -> Pod {
        let objects = BuildObjects {
            ib,
            plan: None,
            settings,
            generation: 2,
            deadline_seconds: 600,
        };
        objects.pod(&context_unit(), 1, Some("node-a"))
    }

    #[test]
    fn the_restricted_container_context_is_non_root_read_only_and_without_capabilities() {
        let value = serde_json::to_value(restricted_container_security()).unwrap();
        assert_eq!(
            value,
            json!({
                "runAsNonRoot": true,
                "runAsUser": ASSEMBLE_UID,
                "runAsGroup": ASSEMBLE_UID,
                "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            })
        );
    }

    #[test]
    fn the_restricted_pod_context_is_non_root_with_runtime_default_seccomp() {
        let value = serde_json::to_value(restricted_pod_security()).unwrap();
        assert_eq!(
            value,
            json!({
                "runAsNonRoot": true,
                "runAsUser": ASSEMBLE_UID,
                "fsGroup": ASSEMBLE_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            })
        );
        let stage = serde_json::to_value(runtime_default_pod_security()).unwrap();
        assert_eq!(stage, json!({"seccompProfile": {"type": "RuntimeDefault"}}));
    }

    #[test]
    fn the_context_pod_is_restricted_but_for_the_workspace_opener() {
        let settings = Settings::default();
        let pod = context_pod(&git_build(), &settings);
        let spec = pod.spec.expect("a pod spec");
        assert_eq!(spec.security_context, Some(restricted_pod_security()));
        assert_eq!(spec.containers.len(), 1);
        let clone = &spec.containers[0];
        assert_eq!(clone.name, "clone");
        assert_eq!(
            clone.security_context,
            Some(restricted_container_security())
        );
        let init = spec.init_containers.expect("the workspace opener");
        let opener = serde_json::to_value(&init[0].security_context).unwrap();
        assert_eq!(
            opener,
            json!({
                "runAsNonRoot": false,
                "runAsUser": 0,
                "runAsGroup": 0,
                "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]},
            })
        );
    }

    #[test]
    fn the_context_pod_mounts_the_credentials_and_names_the_sub_path() {
        let settings = Settings::default();
        let pod = context_pod(&git_build(), &settings);
        assert_eq!(pod.metadata.name.as_deref(), Some("app-g2-0-r1"));
        let spec = pod.spec.expect("a pod spec");
        let command = spec.containers[0].command.clone().unwrap_or_default();
        assert!(command.windows(2).any(|w| w == ["--sub-path", "app"]));
        assert!(
            command
                .windows(2)
                .any(|w| w == ["--dockerfile", "Dockerfile"])
        );
        assert!(
            command
                .windows(2)
                .any(|w| w == ["--credentials", GIT_CREDENTIALS_MOUNT])
        );
        let volumes: Vec<&str> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volumes, ["workspace", "git-credentials"]);
        let mounts = spec.containers[0].volume_mounts.clone().unwrap_or_default();
        assert_eq!(
            mounts[1],
            read_only_mount("git-credentials", GIT_CREDENTIALS_MOUNT)
        );
        let selector = spec.node_selector.unwrap_or_default();
        assert_eq!(selector["kubernetes.io/arch"], "arm64");
        assert_eq!(spec.affinity, Some(node_affinity("node-a")));
        assert_eq!(spec.automount_service_account_token, Some(false));
    }

    #[test]
    fn the_claim_defaults_to_one_node_and_the_default_size() {
        let ib = git_build();
        let settings = Settings::default();
        let objects = BuildObjects {
            ib: &ib,
            plan: None,
            settings: &settings,
            generation: 2,
            deadline_seconds: 600,
        };
        assert!(objects.pinned());
        let claim = serde_json::to_value(objects.claim()).unwrap();
        assert_eq!(claim["metadata"]["name"], "app-g2-workspace");
        assert_eq!(
            claim["metadata"]["labels"]["slimforge.dev/role"],
            "workspace"
        );
        assert_eq!(
            claim["metadata"]["ownerReferences"][0],
            json!({
                "apiVersion": "slimforge.dev/v1alpha1",
                "kind": "ImageBuild",
                "name": "app",
                "uid": "u-1",
                "controller": true,
                "blockOwnerDeletion": true,
            })
        );
        assert_eq!(
            claim["spec"],
            json!({
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": DEFAULT_WORKSPACE_SIZE}},
            })
        );
    }

    #[test]
    fn the_install_container_copies_the_helper_as_root_without_capabilities() {
        let settings = Settings::default();
        let install = install_container(&settings);
        assert_eq!(
            install.command,
            Some(strings([
                &settings.helper_path,
                "stage",
                "install",
                HELPER_MOUNT
            ]))
        );
        assert_eq!(install.volume_mounts, Some(vec![helper_mount()]));
        assert_eq!(install.security_context, Some(root_without_capabilities()));
        assert_eq!(
            install.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
    }

    #[test]
    fn os_arch_reads_the_platform_with_linux_amd64_defaults() {
        assert_eq!(os_arch("linux/arm64/v8"), ("linux".into(), "arm64".into()));
        assert_eq!(os_arch(""), ("linux".into(), "amd64".into()));
        assert_eq!(os_arch("windows"), ("windows".into(), "amd64".into()));
    }

    #[test]
    fn a_pods_unit_identity_reads_back_from_its_metadata() {
        let ib = git_build();
        let pod = context_pod(&ib, &Settings::default());
        let identity = UnitIdentity::from_metadata(&pod.metadata).expect("our pod");
        assert_eq!(identity, UnitIdentity::of(&context_unit(), 2, 1));
        assert_eq!(identity.role, "context");
        assert_eq!(identity.stage, CONTEXT_STAGE);
    }

    #[test]
    fn a_pod_without_generation_or_unit_has_no_identity_and_attempt_defaults_to_zero() {
        let identity = UnitIdentity::of(&context_unit(), 3, 0);
        let mut labels = identity.labels();
        labels.remove(ATTEMPT_LABEL);
        let meta = |labels: BTreeMap<String, String>| ObjectMeta {
            labels: Some(labels),
            ..ObjectMeta::default()
        };
        let read = UnitIdentity::from_metadata(&meta(labels.clone())).expect("identity");
        assert_eq!((read.generation, read.unit, read.attempt), (3, 0, 0));
        assert_eq!(read.stage, "");
        for required in [GENERATION_LABEL, UNIT_LABEL] {
            let mut partial = labels.clone();
            partial.remove(required);
            assert_eq!(UnitIdentity::from_metadata(&meta(partial)), None);
        }
        labels.insert(UNIT_LABEL.into(), "one".into());
        assert_eq!(UnitIdentity::from_metadata(&meta(labels)), None);
        assert_eq!(UnitIdentity::from_metadata(&ObjectMeta::default()), None);
    }
}
