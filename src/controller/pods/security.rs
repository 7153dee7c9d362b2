//! The security contexts of the build's pods: the `restricted` ones of the
//! assembly and the git clone, and those of the stage images (`baseline`).

use k8s_openapi::api::core::v1::{
    Capabilities, PodSecurityContext, SeccompProfile, SecurityContext,
};

use crate::controller::ASSEMBLE_UID;

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
pub(super) fn runtime_default_pod_security() -> PodSecurityContext {
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
pub(super) fn root_without_capabilities() -> SecurityContext {
    SecurityContext {
        run_as_user: Some(0),
        ..no_escalation_no_capabilities()
    }
}

/// The context pod's workspace opener: root (the pod says non-root), group
/// 0, no capabilities, a read-only root filesystem.
pub(super) fn workspace_opener_security() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(false),
        run_as_group: Some(0),
        read_only_root_filesystem: Some(true),
        ..root_without_capabilities()
    }
}

/// Root in the stage image, with its default capabilities (the `baseline`
/// level): it creates root-owned files and switches users.
pub(super) fn stage_root_security() -> SecurityContext {
    SecurityContext {
        run_as_user: Some(0),
        run_as_group: Some(0),
        privileged: Some(false),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
}
