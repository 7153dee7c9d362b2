//! The file `slimforge build` is given: one ImageBuild, and the ConfigMaps
//! its context may name, as a cluster would hold them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Resource;
use serde::Deserialize;

use super::LocalError;
use crate::api::ImageBuild;

/// The ImageBuild and the ConfigMaps beside it in one file.
#[derive(Debug, Clone)]
pub(super) struct Manifest {
    pub path: PathBuf,
    pub image_build: ImageBuild,
    pub config_maps: BTreeMap<String, ConfigMap>,
}

impl Manifest {
    /// Reads `path`: the first ImageBuild (checked against the schema, with
    /// the metadata a cluster would add) and every ConfigMap.
    pub fn load(path: &Path) -> Result<Self, LocalError> {
        let error = |detail: String| LocalError::Manifest {
            path: path.to_path_buf(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        let mut image_build = None;
        let mut config_maps = BTreeMap::new();
        for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value = serde_yaml::Value::deserialize(document)
                .map_err(|e| error(format!("document {}: {e}", index + 1)))?;
            let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
            match kind {
                "ImageBuild" if image_build.is_none() => {
                    let ib = crate::schema::parse_image_build(value)
                        .map_err(|e| error(e.to_string()))?;
                    image_build = Some(ib);
                }
                "ConfigMap" => {
                    let cm: ConfigMap = serde_yaml::from_value(value)
                        .map_err(|e| error(format!("ConfigMap: {e}")))?;
                    config_maps.insert(cm.metadata.name.clone().unwrap_or_default(), cm);
                }
                _ => {}
            }
        }
        let ib = image_build.ok_or_else(|| error("no ImageBuild in the file".into()))?;
        Ok(Manifest {
            path: path.to_path_buf(),
            image_build: as_in_a_cluster(ib).map_err(error)?,
            config_maps,
        })
    }

    /// The ConfigMap the context names, if it is in the file.
    pub fn context_config_map(&self) -> Option<&ConfigMap> {
        let cm = self.image_build.spec.context.config_map.as_ref()?;
        self.config_maps.get(&cm.name)
    }

    /// The Dockerfile the ConfigMap context holds under `dockerfilePath`.
    pub fn dockerfile_from_config_map(&self) -> Option<String> {
        let ib = &self.image_build;
        let path = ib.spec.dockerfile_path.as_deref()?;
        let cm = ib.spec.context.config_map.as_ref()?;
        let config_map = self.config_maps.get(&cm.name)?;
        config_map.data.as_ref()?.get(&cm.key_for(path)).cloned()
    }
}

/// The ImageBuild as the API server would hand it over: named, with a
/// namespace, uid and generation, no status; and without what only a
/// cluster uses.
fn as_in_a_cluster(mut ib: ImageBuild) -> Result<ImageBuild, String> {
    let meta = ib.meta_mut();
    if meta.name.as_deref().is_none_or(str::is_empty) {
        return Err("ImageBuild: metadata.name is required".into());
    }
    meta.namespace.get_or_insert_with(|| "default".into());
    meta.uid.get_or_insert_with(|| "local".into());
    meta.generation.get_or_insert(1);
    ib.status = None;
    // podman pulls with its own auth file; pull Secrets are cluster-side.
    if let Some(template) = ib.spec.pod_template.as_mut()
        && !template.image_pull_secrets.is_empty()
    {
        tracing::warn!(
            "podTemplate.imagePullSecrets: not used locally (podman's own credentials pull the images)"
        );
        template.image_pull_secrets.clear();
    }
    Ok(ib)
}
