//! The context pod of a git build: clones the repository into the
//! workspace before any other pod runs.

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec, SecretVolumeSource, Volume};

use super::containers::{container, env_var, read_only_mount, strings, workspace_mount};
use super::objects::BuildObjects;
use super::security::{
    restricted_container_security, restricted_pod_security, workspace_opener_security,
};
use super::units::Unit;
use crate::contract::{
    CONTEXT_RESULT, ContextPlanRequest, GIT_CREDENTIALS_MOUNT, PLAN_REQUEST_ENV, SOURCE_DIR,
    WORKSPACE_MOUNT,
};
use crate::controller::Settings;

impl BuildObjects<'_> {
    /// The context pod of a git build: the operator image clones the
    /// repository into the workspace as a non-root container with no
    /// capabilities; the only pod that sees the git credentials. Its init
    /// container (uid 0, no capabilities either, so `baseline`) first opens
    /// the workspace to that user when the volume's root is the owner's alone
    /// (Kubernetes' host-path provisioner makes it 0750).
    pub(super) fn context_pod(&self, unit: &Unit, attempt: u32, node: Option<&str>) -> Pod {
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
        let clone = Container {
            env: self.plan_request(),
            ..container(
                "clone",
                &settings.helper_image,
                command,
                mounts,
                restricted_container_security(),
            )
        };
        let open = workspace_opener(settings);
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
    /// With the stage cache on, what the clone plans the build with to
    /// digest the files each COPY/ADD reads.
    fn plan_request(&self) -> Option<Vec<EnvVar>> {
        let spec = &self.ib.spec;
        if !spec.cache_enabled() {
            return None;
        }
        let request = ContextPlanRequest {
            dockerfile: spec.dockerfile.clone(),
            build_args: spec.build_args.clone(),
            target: spec.target.clone().filter(|t| !t.is_empty()),
            platform: spec.platform.clone().filter(|p| !p.is_empty()),
        };
        let json = serde_json::to_string(&request).unwrap_or_default();
        Some(vec![env_var(PLAN_REQUEST_ENV, json)])
    }

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
}

/// The init container that opens the workspace to the restricted user of
/// the pod's main container (uid 0, no capabilities): for a pod that may be
/// the build's first on a fresh volume.
pub(super) fn workspace_opener(settings: &Settings) -> Container {
    container(
        "open-workspace",
        &settings.helper_image,
        strings([&settings.helper_path, "stage", "open", WORKSPACE_MOUNT]),
        vec![workspace_mount()],
        workspace_opener_security(),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::controller::Settings;
    use crate::controller::pods::fixtures::{context_pod, git_build};
    use crate::controller::pods::objects::node_affinity;

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
}
