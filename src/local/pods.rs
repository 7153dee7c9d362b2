//! What a pod spec becomes for `podman kube play`: the cluster's spec with
//! exactly the changes in [`LOCAL_DIFFERENCES`], each forced by something
//! podman 4.3 does differently (see LOCAL-TOOLCHAIN in the design notes).

use std::path::Path;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use serde_json::{Value, json};

use crate::controller::{AUTH_MOUNT, GIT_CREDENTIALS_MOUNT};

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
        why: "the assemble pod pushes to a registry on loopback and the context pod clones from a git server there: host network (all others run with --network none)",
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
}

/// The cluster's pod, changed for podman as [`LOCAL_DIFFERENCES`] lists.
pub fn local_pod(pod: &Pod, inputs: &LocalPodInputs) -> Pod {
    let mut value = serde_json::to_value(pod).unwrap_or_default();
    let name = value["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let helper_volume = format!("{name}-helper");
    let spec = &mut value["spec"];
    if is_assemble(spec) || is_context(spec) {
        spec["hostNetwork"] = json!(true);
    }
    if let Some(volumes) = spec["volumes"].as_array_mut() {
        for volume in volumes.iter_mut() {
            match volume["name"].as_str() {
                Some("helper") => volume["name"] = json!(helper_volume),
                Some("push-secret") => {
                    let path = inputs
                        .auth_dir
                        .map(|d| d.display().to_string())
                        .unwrap_or_else(|| AUTH_MOUNT.to_string());
                    *volume = json!({
                        "name": "push-secret",
                        "hostPath": {"path": path, "type": "Directory"},
                    });
                }
                Some("git-credentials") => {
                    let path = inputs
                        .git_credentials_dir
                        .map(|d| d.display().to_string())
                        .unwrap_or_else(|| GIT_CREDENTIALS_MOUNT.to_string());
                    *volume = json!({
                        "name": "git-credentials",
                        "hostPath": {"path": path, "type": "Directory"},
                    });
                }
                Some("context") => {
                    if let Some(config_map) = inputs.config_map {
                        volume["configMap"]["name"] = json!(config_map);
                    }
                }
                _ => {}
            }
        }
    }
    for list in ["initContainers", "containers"] {
        if let Some(containers) = spec[list].as_array_mut() {
            for container in containers {
                if let Some(mounts) = container["volumeMounts"].as_array_mut() {
                    for mount in mounts {
                        if mount["name"] == "helper" {
                            mount["name"] = json!(helper_volume);
                        }
                    }
                }
            }
        }
    }
    serde_json::from_value(value).unwrap_or_else(|_| pod.clone())
}

/// The pod runs with the host's network.
pub fn uses_host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

fn is_assemble(spec: &Value) -> bool {
    spec["containers"][0]["name"] == "assemble"
}

fn is_context(spec: &Value) -> bool {
    spec["containers"][0]["name"] == "clone"
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
