//! The cache's part in the pods: the restore pod, which puts cached
//! exports back on the workspace, and what the assembly is told to store.
//! Both talk to the registry with the push secret, as the assembly does,
//! and run no user command.

use k8s_openapi::api::core::v1::{Container, EnvVar, Volume};

use super::containers::{
    container, docker_config_volume, env_var, read_only_mount, strings, workspace_mount,
};
use super::objects::BuildObjects;
use super::security::restricted_container_security;
use std::path::PathBuf;

use crate::cache::entry::RestoreSpec;
use crate::cache::lookup::CacheView;
use crate::contract::{
    AUTH_MOUNT, CACHE_STORE_ENV, CacheStore, EXPORTS_DIR, REBASE_ENV, RECIPE_ENV, RESTORE_ENV,
    RebaseRequest, WORKSPACE_MOUNT, Workspace,
};
use crate::plan::{BuildPlan, ChainRole};

impl BuildObjects<'_> {
    /// The assembly's [`CACHE_STORE_ENV`]: the keys of the chains and
    /// extractions that ran (their exports are on the workspace) and the
    /// image's. `None` when the cache is off or could not be reached.
    pub(super) fn cache_store(&self, plan: &BuildPlan) -> Option<EnvVar> {
        let view = self.cache.filter(|v| v.error.is_none())?;
        let units = ran(plan, view)
            .into_iter()
            .filter_map(|id| view.key(&id).map(|key| (id, key.to_string())))
            .collect();
        let store = CacheStore {
            repository: view.repository.clone(),
            units,
            image: Some(view.keys.image.clone()).filter(|k| !k.is_empty()),
            layers: view.keys.layers.clone(),
            // The probe ran: its answer is stored.
            recipe: view.keys.recipe.clone().filter(|_| view.recipe.is_none()),
            keys: view.keys.units.clone(),
            hits: view.hits.values().cloned().collect(),
        };
        let json = serde_json::to_string(&store).unwrap_or_default();
        Some(env_var(CACHE_STORE_ENV, json))
    }

    /// The assembly's [`RECIPE_ENV`]: the probe's answer the cache had
    /// (there was no probe pod).
    pub(super) fn cached_recipe(&self) -> Option<EnvVar> {
        let recipe = &self.cache?.recipe.as_ref()?.recipe;
        Some(env_var(
            RECIPE_ENV,
            serde_json::to_string(recipe).unwrap_or_default(),
        ))
    }

    /// The rebase pod's [`REBASE_ENV`] (the layers entry the lookup found)
    /// and [`CACHE_STORE_ENV`] (the image's key only: the layers entry is
    /// there already). Empty without a layers entry.
    pub(super) fn rebase_env(&self) -> Vec<EnvVar> {
        let Some((view, entry)) = self.cache.and_then(|v| Some((v, v.rebase.clone()?))) else {
            return Vec::new();
        };
        let request = RebaseRequest {
            repository: view.repository.clone(),
            entry,
        };
        let store = CacheStore {
            repository: view.repository.clone(),
            image: Some(view.keys.image.clone()),
            ..CacheStore::default()
        };
        vec![
            env_var(
                REBASE_ENV,
                serde_json::to_string(&request).unwrap_or_default(),
            ),
            env_var(
                CACHE_STORE_ENV,
                serde_json::to_string(&store).unwrap_or_default(),
            ),
        ]
    }

    /// The restore pod's container: `cache restore` of the entries of `ids`
    /// into the workspace, restricted, with the push secret.
    pub(super) fn restore_container(&self, ids: &[String]) -> (Container, Vec<Volume>) {
        let output = &self.ib.spec.output;
        let entries = self
            .cache
            .map(|view| {
                ids.iter()
                    .filter_map(|id| view.hits.get(id).cloned())
                    .collect()
            })
            .unwrap_or_default();
        let mut mounts = vec![workspace_mount()];
        let mut volumes = Vec::new();
        let auth = output.push_secret.as_ref().map(|secret| {
            volumes.push(docker_config_volume("push-secret", secret));
            mounts.push(read_only_mount("push-secret", AUTH_MOUNT));
            PathBuf::from(format!("{AUTH_MOUNT}/config.json"))
        });
        let spec = RestoreSpec {
            repository: self.cache.map(|v| v.repository.clone()).unwrap_or_default(),
            insecure: output.insecure,
            auth,
            ca_bundle: None,
            entries,
            into: Workspace::new(WORKSPACE_MOUNT).join(EXPORTS_DIR),
        };
        let command = strings([&self.settings.helper_path, "cache", "restore"]);
        let container = Container {
            env: Some(vec![env_var(
                RESTORE_ENV,
                serde_json::to_string(&spec).unwrap_or_default(),
            )]),
            ..container(
                "restore",
                &self.settings.helper_image,
                command,
                mounts,
                restricted_container_security(),
            )
        };
        (container, volumes)
    }
}

/// The builder chains and extractions that run in this build (the cache
/// did not have them).
fn ran(plan: &BuildPlan, view: &CacheView) -> Vec<String> {
    let chains = plan
        .chains
        .iter()
        .filter(|c| c.role == ChainRole::Builder)
        .map(|c| c.id.clone());
    let extractions = plan.extractions.iter().map(|e| e.id.clone());
    chains
        .chain(extractions)
        .filter(|id| !view.hits.contains_key(id))
        .collect()
}
