//! Fixtures shared by the unit tests of the pods' modules: a git build and
//! its context pod before the plan exists.

use k8s_openapi::api::core::v1::Pod;

use super::BuildObjects;
use super::units::context_unit;
use crate::api::ImageBuild;
use crate::controller::Settings;

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

/// An inline-context build of `dockerfile`.
pub(super) fn image_build(dockerfile: &str) -> ImageBuild {
    let mut ib = git_build();
    ib.spec.context = serde_json::from_value(serde_json::json!({"inline": {"a": "a"}}))
        .expect("an inline context");
    ib.spec.dockerfile_path = None;
    ib.spec.dockerfile = Some(dockerfile.to_string());
    ib.spec.platform = None;
    ib
}

pub(super) fn git_build() -> ImageBuild {
    serde_yaml::from_str(GIT_BUILD).expect("the fixture parses")
}

/// The context pod while the repository is cloned: no plan yet.
pub(super) fn context_pod(ib: &ImageBuild, settings: &Settings) -> Pod {
    let objects = BuildObjects {
        ib,
        plan: None,
        settings,
        generation: 2,
        rebuild: 0,
        deadline_seconds: 600,
        cache: None,
    };
    objects.pod(&context_unit(), 1, Some("node-a"))
}
