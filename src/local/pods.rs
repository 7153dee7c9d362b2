//! What a pod spec becomes for `podman kube play`: the cluster's spec with
//! exactly the changes in [`LOCAL_DIFFERENCES`], each forced by something
//! podman 4.3 does differently (see LOCAL-TOOLCHAIN in the design notes).

use std::path::Path;

use k8s_openapi::api::core::v1::{ConfigMap, HostPathVolumeSource, Pod, PodSpec, Volume};

use crate::contract::{AUTH_MOUNT, GIT_CREDENTIALS_MOUNT, SECRETS_MOUNT};

/// One way a local pod differs from the cluster's, and why.
pub struct LocalDifference {
    /// The JSON path that differs (`*` stands for a list index or a name).
    pub path: &'static str,
    pub why: &'static str,
}

/// Every difference between the Pod specs the controller creates and the
/// ones `slimforge build` hands to podman.
pub const LOCAL_DIFFERENCES: &[LocalDifference] = &[
    LocalDifference {
        path: "spec.hostNetwork",
        why: "the assemble pod pushes to a registry on loopback, the restore pod reads the cache there, and the context pod clones from a git server there: host network (all others run with --network none)",
    },
    LocalDifference {
        path: "spec.volumes[push-secret]",
        why: "podman's Secret volumes crash or arrive base64-encoded: the push credentials come from a host path, readable only by the assemble pod's uid",
    },
    LocalDifference {
        path: "spec.volumes[git-credentials]",
        why: "podman's Secret volumes crash or arrive base64-encoded: the git credentials come from a host path (`slimforge build --git-credentials DIR`), readable only by the context pod's uid",
    },
    LocalDifference {
        path: "spec.volumes[build-secrets]",
        why: "podman's Secret volumes crash or arrive base64-encoded: the build secrets (`slimforge build --secret`) come from a host directory in memory (/dev/shm), a file per id, readable by root only",
    },
    LocalDifference {
        path: "spec.volumes[memory].name",
        why: "podman shares an emptyDir between every pod that names it alike: the name is made unique per pod",
    },
    LocalDifference {
        path: "spec.containers[*].volumeMounts[memory].name",
        why: "follows the emptyDir's unique name",
    },
    LocalDifference {
        path: "spec.volumes[helper].name",
        why: "podman shares an emptyDir between every pod that names it alike: the name is made unique per pod",
    },
    LocalDifference {
        path: "spec.initContainers[*].volumeMounts[helper].name",
        why: "follows the emptyDir's unique name",
    },
    LocalDifference {
        path: "spec.containers[*].volumeMounts[helper].name",
        why: "follows the emptyDir's unique name",
    },
    LocalDifference {
        path: "spec.volumes[context].configMap.name",
        why: "the ConfigMap comes from the manifest file and podman keeps its volume by name: a per-build name",
    },
];

/// What the local shell decided for one build.
pub struct LocalPodInputs<'a> {
    /// The directory holding `config.json` for the push, if any.
    pub auth_dir: Option<&'a Path>,
    /// The per-build name of the context ConfigMap, if any.
    pub config_map: Option<&'a str>,
    /// The directory holding `username` and `password` for a git context, if any.
    pub git_credentials_dir: Option<&'a Path>,
    /// The directory holding the build secrets, if any.
    pub secrets_dir: Option<&'a Path>,
}

/// The cluster's pod, changed for podman as [`LOCAL_DIFFERENCES`] lists.
pub fn local_pod(pod: &Pod, inputs: &LocalPodInputs<'_>) -> Pod {
    let mut local = pod.clone();
    let name = local.metadata.name.as_deref().unwrap_or_default();
    let helper_volume = format!("{name}-helper");
    let memory_volume = format!("{name}-memory");
    let Some(spec) = local.spec.as_mut() else {
        return local;
    };
    if is_assemble(spec) || is_context(spec) || is_restore(spec) {
        spec.host_network = Some(true);
    }
    for volume in spec.volumes.iter_mut().flatten() {
        localise_volume(volume, &helper_volume, inputs);
        if volume.name == "memory" {
            volume.name.clone_from(&memory_volume);
        }
    }
    let containers = spec.init_containers.iter_mut().flatten();
    for container in containers.chain(spec.containers.iter_mut()) {
        for mount in container.volume_mounts.iter_mut().flatten() {
            if mount.name == "helper" {
                mount.name.clone_from(&helper_volume);
            } else if mount.name == "memory" {
                mount.name.clone_from(&memory_volume);
            }
        }
    }
    local
}

/// One volume of the cluster's pod as podman gets it: the helper's
/// emptyDir under `helper_volume`, Secrets from host paths, the context
/// ConfigMap under its per-build name.
fn localise_volume(volume: &mut Volume, helper_volume: &str, inputs: &LocalPodInputs<'_>) {
    match volume.name.as_str() {
        "helper" => volume.name = helper_volume.to_string(),
        "push-secret" => *volume = host_directory("push-secret", inputs.auth_dir, AUTH_MOUNT),
        "git-credentials" => {
            *volume = host_directory(
                "git-credentials",
                inputs.git_credentials_dir,
                GIT_CREDENTIALS_MOUNT,
            );
        }
        "build-secrets" => {
            *volume = host_directory("build-secrets", inputs.secrets_dir, SECRETS_MOUNT);
        }
        "context" => {
            if let (Some(name), Some(config_map)) = (inputs.config_map, volume.config_map.as_mut())
            {
                config_map.name = name.to_string();
            }
        }
        _ => {}
    }
}

/// The volume `name` as the host directory `dir` (`fallback` without one).
fn host_directory(name: &str, dir: Option<&Path>, fallback: &str) -> Volume {
    let path = dir
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| fallback.to_string());
    Volume {
        name: name.to_string(),
        host_path: Some(HostPathVolumeSource {
            path,
            type_: Some("Directory".into()),
        }),
        ..Default::default()
    }
}

/// The pod runs with the host's network.
pub fn uses_host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

fn is_assemble(spec: &PodSpec) -> bool {
    main_container_is(spec, "assemble")
}

fn is_restore(spec: &PodSpec) -> bool {
    main_container_is(spec, "restore")
}

fn is_context(spec: &PodSpec) -> bool {
    main_container_is(spec, "clone")
}

fn main_container_is(spec: &PodSpec, name: &str) -> bool {
    spec.containers.first().is_some_and(|c| c.name == name)
}

/// The user's ConfigMap under its per-build name, for the same `kube play`.
pub fn local_config_map(config_map: &ConfigMap, name: &str) -> ConfigMap {
    let mut local = config_map.clone();
    local.metadata.name = Some(name.to_string());
    local.metadata.namespace = None;
    local.metadata.resource_version = None;
    local.metadata.uid = None;
    local
}

/// podman ignores `runAsNonRoot`; a pod that asks for it must name a non-root uid.
pub fn non_root_refusal(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let pod_security = spec.security_context.clone().unwrap_or_default();
    for container in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        let security = container.security_context.clone().unwrap_or_default();
        let non_root = security.run_as_non_root.or(pod_security.run_as_non_root);
        let uid = security.run_as_user.or(pod_security.run_as_user);
        if non_root == Some(true) && uid.is_none_or(|u| u == 0) {
            return Some(format!(
                "container {} has runAsNonRoot but no non-root runAsUser",
                container.name
            ));
        }
    }
    None
}
