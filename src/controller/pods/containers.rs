//! The containers of each role's pod (chain, extraction, probe, assembly)
//! and the volumes and mounts they share.

use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, KeyToPath, SecretVolumeSource, SecurityContext,
    Volume, VolumeMount,
};

use super::objects::BuildObjects;
use super::security::{
    restricted_container_security, root_without_capabilities, stage_root_security,
};
use super::units::Unit;
use crate::contract::{
    ASSEMBLE_RESULT, AUTH_MOUNT, HELPER_MOUNT, PROBE_RESULT, PULL_AUTH_MOUNT, SNAPSHOT_LAYER,
    WORKSPACE_MOUNT,
};
use crate::controller::Settings;
use crate::plan::{BuildPlan, FinalImage};

impl BuildObjects<'_> {
    /// A chain's pod: the helper copied in, `whoami` as the image's own
    /// user, then the chain's stages as root with the image's default
    /// capabilities (the `baseline` level: they create root-owned files and
    /// switch users). The runtime chain writes the snapshot too.
    pub(super) fn chain_containers(
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
    pub(super) fn extraction_containers(
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
    pub(super) fn probe_containers(
        &self,
        unit: &Unit,
        env: Vec<EnvVar>,
    ) -> (Vec<Container>, Container) {
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
    pub(super) fn assemble_container(
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
}

/// A container of ours: its logs stand in for an empty termination message.
pub(super) fn container(
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
pub(super) fn install_container(settings: &Settings) -> Container {
    container(
        "install",
        &settings.helper_image,
        strings([&settings.helper_path, "stage", "install", HELPER_MOUNT]),
        vec![helper_mount()],
        root_without_capabilities(),
    )
}

/// The helper's path once [`install_container`] copied it.
pub(super) fn copied_helper() -> String {
    format!("{HELPER_MOUNT}/slimforge")
}

/// The `helper` volume the helper is copied into.
pub(super) fn helper_volume() -> Volume {
    Volume {
        name: "helper".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

/// A Secret of type `kubernetes.io/dockerconfigjson` as `config.json`.
pub(super) fn docker_config_volume(name: &str, secret: &str) -> Volume {
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

pub(super) fn workspace_mount() -> VolumeMount {
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

pub(super) fn read_only_mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        read_only: Some(true),
        ..mount(name, path)
    }
}

pub(super) fn env_var(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value),
        ..Default::default()
    }
}

pub(super) fn strings<const N: usize>(items: [&str; N]) -> Vec<String> {
    items.into_iter().map(str::to_string).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
