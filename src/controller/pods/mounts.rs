//! What a chain's `RUN --mount`s need of its pod (see `stage::mounts` for
//! how the helper uses them): a volume per cache id, claimed once per
//! namespace and kept; the build secrets its RUNs name, in one projected
//! volume; a memory volume for tmpfs mounts and secret copies. Only the
//! chain that mounts a secret gets it, as Secret references, never values.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EmptyDirVolumeSource, EnvVar, KeyToPath, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, ProjectedVolumeSource, SecretProjection, Volume,
    VolumeMount, VolumeProjection, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;

use super::containers::env_var;
use super::objects::BuildObjects;
use crate::api::quantity_bytes;
use crate::contract::{
    CACHE_ID_ANNOTATION, CACHE_LABEL, CACHE_LIMITS_ENV, MEMORY_MOUNT, SECRETS_MOUNT, cache_hash,
    cache_mount, cache_volume,
};
use crate::controller::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::dockerfile::RunMount;
use crate::plan::Chain;

/// On a chain pod whose cache volumes are empty directories: its claims
/// could not be attached in time ([`crate::controller::reconcile::CACHE_WAIT`]).
pub const FRESH_CACHES_ANNOTATION: &str = "slimforge.dev/fresh-caches";

/// Cache volumes' size when neither the spec nor the operator says.
pub const DEFAULT_CACHE_VOLUME_SIZE: &str = "5Gi";
/// Room in the memory volume for secret copies, beside the tmpfs sizes.
const SECRETS_ROOM: u64 = 16 << 20;

/// A chain pod's mount volumes, the stage container's mounts of them, and
/// the caches' limits for the helper.
#[derive(Default)]
pub(super) struct RunMountVolumes {
    pub(super) volumes: Vec<Volume>,
    pub(super) mounts: Vec<VolumeMount>,
    pub(super) env: Vec<EnvVar>,
}

impl BuildObjects<'_> {
    /// The size, class and access modes of cache volumes: the spec's, else
    /// the operator's.
    fn cache_volume_settings(&self) -> (String, Option<String>, Vec<String>) {
        let spec = self.ib.spec.cache_volumes.clone().unwrap_or_default();
        let size = spec
            .size
            .unwrap_or_else(|| self.settings.cache_volume_size.clone());
        let class = spec
            .storage_class_name
            .or_else(|| self.settings.cache_volume_class.clone());
        let modes = if spec.access_modes.is_empty() {
            vec!["ReadWriteOnce".to_string()]
        } else {
            spec.access_modes
        };
        (size, class, modes)
    }

    /// The cache ids `unit`'s pod mounts (none but a chain's).
    pub fn unit_cache_ids(&self, unit: &super::Unit) -> Vec<String> {
        match (&unit.kind, self.plan) {
            (super::UnitKind::Chain { id, .. }, Some(plan)) => {
                plan.chain(id).map(Chain::cache_ids).unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }

    /// The claims of cache `ids`: made when missing, never owned by a
    /// build (they outlive it), never changed.
    pub fn cache_claims(&self, ids: &[String]) -> Vec<PersistentVolumeClaim> {
        let (size, class, modes) = self.cache_volume_settings();
        ids.iter()
            .map(|id| PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(cache_volume(id)),
                    namespace: self.ib.meta().namespace.clone(),
                    labels: Some(BTreeMap::from([
                        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                        (CACHE_LABEL.to_string(), cache_hash(id)),
                    ])),
                    annotations: Some(BTreeMap::from([(
                        CACHE_ID_ANNOTATION.to_string(),
                        id.clone(),
                    )])),
                    ..Default::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(modes.clone()),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_string(),
                            Quantity(size.clone()),
                        )])),
                        ..Default::default()
                    }),
                    storage_class_name: class.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect()
    }

    /// `unit`'s pod, with its cache volumes as empty directories when
    /// `fresh_caches` (the claims could not be reached): the RUNs start
    /// with empty caches, and nothing they leave is kept.
    pub fn pod_with_caches(
        &self,
        unit: &super::Unit,
        attempt: u32,
        node: Option<&str>,
        fresh_caches: bool,
    ) -> k8s_openapi::api::core::v1::Pod {
        let mut pod = self.pod(unit, attempt, node);
        if !fresh_caches {
            return pod;
        }
        pod.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(FRESH_CACHES_ANNOTATION.into(), "true".into());
        let volumes = pod
            .spec
            .iter_mut()
            .flat_map(|s| s.volumes.iter_mut().flatten());
        for volume in volumes.filter(|v| v.name.starts_with("cache-")) {
            *volume = Volume {
                name: volume.name.clone(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            };
        }
        pod
    }

    /// What `chain`'s RUN `--mount`s need of its pod.
    pub(super) fn run_mount_volumes(&self, chain: &Chain) -> RunMountVolumes {
        let mut out = RunMountVolumes::default();
        let caches = chain.cache_ids();
        let (size, _, _) = self.cache_volume_settings();
        let mut limits = BTreeMap::new();
        for id in &caches {
            let name = format!("cache-{}", cache_hash(id));
            out.volumes.push(Volume {
                name: name.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: cache_volume(id),
                    read_only: None,
                }),
                ..Default::default()
            });
            out.mounts.push(VolumeMount {
                name,
                mount_path: cache_mount(id),
                ..Default::default()
            });
            if let Some(bytes) = quantity_bytes(&size) {
                limits.insert(id.clone(), bytes);
            }
        }
        if !limits.is_empty() {
            out.env.push(env_var(
                CACHE_LIMITS_ENV,
                serde_json::to_string(&limits).unwrap_or_default(),
            ));
        }
        let secrets: Vec<SecretProjection> = chain
            .secret_ids()
            .iter()
            .filter_map(|id| self.ib.spec.secrets.iter().find(|s| &s.id == id))
            .map(|secret| SecretProjection {
                name: secret.secret_ref.name.clone(),
                items: Some(vec![KeyToPath {
                    key: secret.secret_ref.key.clone(),
                    path: secret.id.clone(),
                    mode: Some(0o400),
                    ..Default::default()
                }]),
                optional: None,
            })
            .collect();
        if !secrets.is_empty() {
            out.volumes.push(Volume {
                name: "build-secrets".into(),
                projected: Some(ProjectedVolumeSource {
                    default_mode: Some(0o400),
                    sources: Some(
                        secrets
                            .into_iter()
                            .map(|secret| VolumeProjection {
                                secret: Some(secret),
                                ..Default::default()
                            })
                            .collect(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            });
            out.mounts.push(VolumeMount {
                name: "build-secrets".into(),
                mount_path: SECRETS_MOUNT.into(),
                read_only: Some(true),
                ..Default::default()
            });
        }
        if chain.needs_memory() {
            out.volumes.push(Volume {
                name: "memory".into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".into()),
                    size_limit: memory_limit(chain).map(|b| Quantity(b.to_string())),
                    ..Default::default()
                }),
                ..Default::default()
            });
            out.mounts.push(VolumeMount {
                name: "memory".into(),
                mount_path: MEMORY_MOUNT.into(),
                ..Default::default()
            });
        }
        out
    }
}

/// The memory volume's limit: every tmpfs size and room for secrets;
/// `None` (the pod's memory) when a tmpfs gives no size.
fn memory_limit(chain: &Chain) -> Option<u64> {
    let mut total = SECRETS_ROOM;
    for mount in chain.mounts() {
        if let RunMount::Tmpfs(tmpfs) = mount {
            total = total.checked_add(tmpfs.size?)?;
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BuildSecret, SecretKeyRef};
    use crate::controller::Settings;
    use crate::controller::pods::fixtures::image_build;

    #[test]
    fn only_the_chain_that_mounts_a_secret_gets_it_by_reference() {
        let mut ib = image_build(
            "FROM busybox AS a\nRUN --mount=type=secret,id=token,required cat /run/secrets/token\nFROM busybox AS b\nRUN --mount=type=cache,target=/c --mount=type=tmpfs,target=/t,size=1m true\nFROM scratch\nCOPY --from=a /etc/passwd /a\nCOPY --from=b /etc/passwd /b\n",
        );
        ib.spec.secrets = vec![BuildSecret {
            id: "token".into(),
            secret_ref: SecretKeyRef {
                name: "npm".into(),
                key: "value".into(),
            },
        }];
        let plan =
            crate::controller::reconcile::plan_spec(&ib, std::time::Duration::from_secs(60), None)
                .unwrap()
                .plan;
        let settings = Settings::default();
        let objects = BuildObjects {
            ib: &ib,
            plan: Some(&plan),
            settings: &settings,
            generation: 1,
            rebuild: 0,
            deadline_seconds: 60,
            cache: None,
        };
        let a = objects.run_mount_volumes(plan.chain("a").unwrap());
        let json = serde_json::to_string(&a.volumes).unwrap();
        assert!(json.contains(r#""name":"npm""#), "{json}");
        assert!(json.contains(r#""key":"value""#), "{json}");
        assert!(a.mounts.iter().any(|m| m.mount_path == SECRETS_MOUNT));
        let b = objects.run_mount_volumes(plan.chain("b").unwrap());
        let json = serde_json::to_string(&b.volumes).unwrap();
        assert!(!json.contains("npm"), "{json}");
        assert!(json.contains(&cache_volume("/c")), "{json}");
        let memory = b.volumes.iter().find(|v| v.name == "memory").unwrap();
        let limit = memory.empty_dir.as_ref().unwrap().size_limit.clone();
        assert_eq!(
            limit,
            Some(Quantity(((1 << 20) + SECRETS_ROOM).to_string()))
        );
        let ids: Vec<String> = plan.chains.iter().flat_map(Chain::cache_ids).collect();
        let claims = objects.cache_claims(&ids);
        assert_eq!(claims.len(), 1);
        assert!(
            claims[0].metadata.owner_references.is_none(),
            "kept after the build"
        );
        let claim = serde_json::to_string(&claims[0]).unwrap();
        assert!(claim.contains(DEFAULT_CACHE_VOLUME_SIZE), "{claim}");
    }
}
