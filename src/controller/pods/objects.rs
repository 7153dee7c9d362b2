//! The build's objects as k8s-openapi types: the workspace claim and each
//! unit's pod (metadata, placement, volumes), named after the ImageBuild and
//! owned by it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ConfigMapVolumeSource, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSpec, Volume, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use serde_json::{Value, json};

use super::containers::{env_var, helper_volume, read_only_mount};
use super::context_pod::workspace_opener;
use super::security::{restricted_pod_security, runtime_default_pod_security};
use super::units::{BuildId, Unit, UnitIdentity, UnitKind};
use crate::api::ImageBuild;
use crate::cache::lookup::CacheView;
use crate::contract::{CONTEXT_ENV, CONTEXT_MOUNT, PLAN_ENV, SOURCE_DIR, WORKSPACE_MOUNT};
use crate::controller::{BUILD_LABEL, MANAGED_BY, MANAGED_BY_LABEL, ROLE_LABEL, Settings};
use crate::plan::{BuildPlan, CopySource, FinalImage};

/// Default workspace size.
pub const DEFAULT_WORKSPACE_SIZE: &str = "2Gi";

/// `<ib>-g<generation>-<n>` (`<ib>-g<generation>b<k>-<n>` for rebuild
/// `k` of the generation), and `-r<attempt>` for a retried pod.
pub fn pod_name(ib: &str, build: BuildId, n: usize, attempt: u32) -> String {
    let build = build.name_part();
    if attempt == 0 {
        format!("{ib}-{build}-{n}")
    } else {
        format!("{ib}-{build}-{n}-r{attempt}")
    }
}

/// The workspace claim of a build: `<ib>-g<generation>-workspace`
/// (`<ib>-g<generation>b<k>-workspace` for rebuild `k`).
pub fn claim_name(ib: &str, build: BuildId) -> String {
    format!("{ib}-{}-workspace", build.name_part())
}

/// What every builder needs about the ImageBuild.
pub struct BuildObjects<'a> {
    pub ib: &'a ImageBuild,
    /// `None` only while a git context is cloned: the plan needs its Dockerfile.
    pub plan: Option<&'a BuildPlan>,
    pub settings: &'a Settings,
    pub generation: i64,
    /// Which rebuild of the generation ([`BuildId::rebuild`]; 0 for its
    /// first build).
    pub rebuild: u32,
    /// Seconds for `activeDeadlineSeconds`.
    pub deadline_seconds: i64,
    /// The cache's answer: what the restore pod restores, what the
    /// assembly stores.
    pub cache: Option<&'a CacheView>,
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

    /// The build these objects belong to.
    pub fn build(&self) -> BuildId {
        BuildId {
            generation: self.generation,
            rebuild: self.rebuild,
        }
    }

    fn labels(&self, role: &str) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([
            (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
            (BUILD_LABEL.to_string(), self.name()),
            (ROLE_LABEL.to_string(), role.to_string()),
        ]);
        labels.extend(self.build().labels());
        labels
    }

    /// The metadata of `unit`'s pod: its [`UnitIdentity`] as labels and
    /// annotations.
    pub(super) fn pod_metadata(&self, unit: &Unit, attempt: u32) -> ObjectMeta {
        let identity = UnitIdentity::of(unit, self.build(), attempt);
        let mut labels = self.labels(unit.kind.role());
        labels.extend(identity.labels());
        let name = pod_name(&self.name(), self.build(), unit.n, attempt);
        self.metadata(name, labels, identity.annotations())
    }

    /// The build's workspace claim: the spec's size, class and access
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
        let name = claim_name(&self.name(), self.build());
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
        let assemble = matches!(
            unit.kind,
            UnitKind::Assemble | UnitKind::Restore { .. } | UnitKind::Rebase
        );
        let (init, main) = match &unit.kind {
            UnitKind::Chain { id, runtime } => {
                let (init, mut main) =
                    self.chain_containers(unit, id, *runtime, env, context_mounts);
                if let Some(chain) = plan.chain(id) {
                    let run_mounts = self.run_mount_volumes(chain);
                    volumes.extend(run_mounts.volumes);
                    main.volume_mounts
                        .get_or_insert_with(Vec::new)
                        .extend(run_mounts.mounts);
                    main.env.get_or_insert_with(Vec::new).extend(run_mounts.env);
                }
                (init, main)
            }
            UnitKind::Extraction { id } => self.extraction_containers(unit, id, env),
            UnitKind::Probe => self.probe_containers(unit, env),
            UnitKind::Context => return self.context_pod(unit, attempt, node),
            UnitKind::Assemble => {
                env.extend(self.cache_store(plan));
                env.extend(self.cached_recipe());
                let (container, secrets) = self.assemble_container(plan, env, context_mounts);
                volumes.extend(secrets);
                (Vec::new(), container)
            }
            UnitKind::Rebase => {
                env.extend(self.rebase_env());
                let (container, secrets) = self.assemble_container(plan, env, Vec::new());
                volumes.extend(secrets);
                (Vec::new(), container)
            }
            UnitKind::Restore { ids } => {
                // It may be the first pod on the volume: opened first, as
                // the context pod's is.
                let (container, secrets) = self.restore_container(ids);
                volumes.extend(secrets);
                (vec![workspace_opener(self.settings)], container)
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

    /// What every pod shares: never restarted, the deadline, no service
    /// links nor account token, and its placement: node selector (platform
    /// and template), tolerations, pull secrets and the pin to `node`.
    pub(super) fn pod_spec(&self, platform: &str, node: Option<&str>) -> PodSpec {
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

    /// The build's workspace claim as the volume `workspace`.
    pub(super) fn workspace_volume(&self) -> Volume {
        Volume {
            name: "workspace".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&self.name(), self.build()),
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

/// Requires the node named `node`.
pub(super) fn node_affinity(node: &str) -> Affinity {
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

/// `linux/arm64/v8` → (`linux`, `arm64`).
fn os_arch(platform: &str) -> (String, String) {
    let mut parts = platform.split('/');
    let os = parts.next().filter(|s| !s.is_empty()).unwrap_or("linux");
    let arch = parts.next().filter(|s| !s.is_empty()).unwrap_or("amd64");
    (os.to_string(), arch.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::controller::pods::CONTEXT_STAGE;
    use crate::controller::pods::fixtures::{context_pod, git_build};
    use crate::controller::pods::units::context_unit;

    #[test]
    fn the_claim_defaults_to_one_node_and_the_default_size() {
        let ib = git_build();
        let settings = Settings::default();
        let objects = BuildObjects {
            ib: &ib,
            plan: None,
            settings: &settings,
            generation: 2,
            rebuild: 0,
            deadline_seconds: 600,
            cache: None,
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
    fn a_rebuilds_names_say_which_rebuild_and_the_first_builds_are_unchanged() {
        let first = BuildId::first(3);
        assert_eq!(pod_name("app", first, 2, 0), "app-g3-2");
        assert_eq!(pod_name("app", first, 2, 1), "app-g3-2-r1");
        assert_eq!(claim_name("app", first), "app-g3-workspace");
        let second = BuildId {
            generation: 3,
            rebuild: 2,
        };
        assert_eq!(pod_name("app", second, 2, 0), "app-g3b2-2");
        assert_eq!(pod_name("app", second, 2, 1), "app-g3b2-2-r1");
        assert_eq!(claim_name("app", second), "app-g3b2-workspace");

        let ib = git_build();
        let settings = Settings::default();
        let objects = BuildObjects {
            ib: &ib,
            plan: None,
            settings: &settings,
            generation: 3,
            rebuild: 2,
            deadline_seconds: 600,
            cache: None,
        };
        let claim = objects.claim();
        assert_eq!(claim.metadata.name.as_deref(), Some("app-g3b2-workspace"));
        let labels = claim.metadata.labels.unwrap_or_default();
        assert_eq!(labels[crate::controller::REBUILD_LABEL], "2");
        let pod = objects.pod(&context_unit(), 0, None);
        assert_eq!(pod.metadata.name.as_deref(), Some("app-g3b2-0"));
        let identity = UnitIdentity::from_metadata(&pod.metadata).expect("our pod");
        assert_eq!(identity.build(), second);
        let volumes = pod.spec.and_then(|s| s.volumes).unwrap_or_default();
        let workspace = volumes
            .iter()
            .find_map(|v| v.persistent_volume_claim.as_ref())
            .expect("the workspace volume");
        assert_eq!(workspace.claim_name, "app-g3b2-workspace");
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
        assert_eq!(
            identity,
            UnitIdentity::of(&context_unit(), BuildId::first(2), 1)
        );
        assert_eq!(identity.role, "context");
        assert_eq!(identity.stage, CONTEXT_STAGE);
    }
}
