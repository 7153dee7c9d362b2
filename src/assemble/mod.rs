//! The assemble step: base (or scratch) + new layers + config changes →
//! an image pushed to a registry. Base layers never pass through here when
//! the registry can mount them, and never touch the disk when it can't.
//!
//! - `spec`: [`AssembleSpec`], what the step is asked to do.
//! - `layers`: the new layers checked and written; `copy_layer`: a COPY/ADD
//!   layer with Docker's rules.
//! - `push`: the base's blobs and the extra tags in the target repository.

mod copy_layer;
mod layers;
mod push;
mod rebase;
mod spec;

pub use self::rebase::rebase;
pub use self::spec::{
    AssembleSpec, CacheChainSpec, CacheExportSpec, CacheImageSpec, CacheLayersSpec, CacheStoreSpec,
    CopyLayerSpec, DirectorySpec, LayerSpec,
};

use std::path::PathBuf;

use futures::TryStreamExt;
use serde_json::{Value, json};

use self::layers::{base_directories, plan_layers, write_layers};
use self::push::{PARALLEL_BLOBS, tag_references, transfer_base_blobs};
use crate::cache::entry::{CachedLayer, LayersEntry};
use crate::contract::{AssembleResult, export_file_name};
use crate::oci::Platform;
use crate::oci::config::{self, AddedLayer, ConfigError};
use crate::oci::layer::{self, LayerDigests, LayerError};
use crate::oci::registry::{
    self, DOCKER_MANIFEST, OCI_MANIFEST, Registry, RegistryError, RegistryOptions,
};

const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error("spec {path}: {detail}")]
    Spec { path: PathBuf, detail: String },
    #[error("spec: {0}")]
    Invalid(String),
    #[error("layers[{index}]: {source}")]
    Layer {
        index: usize,
        #[source]
        source: LayerError,
    },
    #[error("layers[{index}] ({created_by}): {detail}")]
    Copy {
        index: usize,
        created_by: String,
        detail: String,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("base {reference}: {detail}")]
    Base { reference: String, detail: String },
    #[error("{0}")]
    Io(String),
}

/// Runs the whole assembly and pushes the result.
pub async fn assemble(spec: &AssembleSpec) -> Result<AssembleResult, AssembleError> {
    let platform = spec.platform()?;
    let target = registry::parse_reference(&spec.target)?;
    if target.digest().is_some() {
        return Err(AssembleError::Invalid(format!(
            "target `{}` must be a tag, not a digest",
            spec.target
        )));
    }
    let extra_tags = tag_references(&target, &spec.additional_tags)?;
    let base = match spec.base.trim() {
        "scratch" => None,
        other => Some(registry::parse_reference(other)?),
    };
    // Checked whole first: a bad spec fails before any registry is asked.
    plan_layers(spec)?;
    let base_dirs = base_directories(spec)?;
    // The cache repository is read here only on the target's registry (the
    // default, `<output>/cache`): blobs mount from it, and one connection
    // serves both.
    let cache_repository = match &spec.cache {
        Some(cache) => Some(registry::parse_reference(&cache.repository)?)
            .filter(|c| c.resolve_registry() == target.resolve_registry()),
        None => None,
    };

    let options = spec.registry_options();
    let mut references = vec![&target];
    references.extend(base.as_ref());
    references.extend(cache_repository.as_ref());
    let registry = Registry::connect(&options, &references).await?;
    let sources: Vec<&oci_client::Reference> =
        base.iter().chain(cache_repository.as_ref()).collect();
    registry.authorize_push(&target, &sources).await?;

    // `COPY --from` layers the cache has are mounted, not made; the
    // exports of the others are read from the cache if not on disk.
    let copies = match (&spec.cache, &cache_repository) {
        (Some(cache), Some(repository)) => {
            cached_copies(&registry, spec, cache, repository, &target).await?
        }
        _ => vec![None; spec.layers.len()],
    };
    let to_make = AssembleSpec {
        layers: spec
            .layers
            .iter()
            .zip(&copies)
            .filter(|(_, cached)| cached.is_none())
            .map(|(layer, _)| layer.clone())
            .collect(),
        ..spec.clone()
    };
    let plans = plan_layers(&to_make)?;

    let scratch = spec.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&scratch)
        .map_err(|e| AssembleError::Io(format!("{}: {e}", scratch.display())))?;
    let work = tempfile::Builder::new()
        .prefix("slimforge-assemble-")
        .tempdir_in(&scratch)
        .map_err(|e| {
            AssembleError::Io(format!("temporary directory in {}: {e}", scratch.display()))
        })?;
    // New layers are written while the base's blobs move registry-side.
    let layers_written = write_layers(plans, base_dirs, work.path());
    let base_part = pin_base(&registry, base.as_ref(), &platform, &target);
    let (written, base_part) = tokio::join!(layers_written, base_part);
    let written = written?;
    let base_part = base_part?;

    futures::stream::iter(written.iter().map(Ok))
        .try_for_each_concurrent(PARALLEL_BLOBS, |(path, digests, _)| {
            let registry = &registry;
            let target = &target;
            async move {
                if !registry.blob_exists(target, &digests.digest).await? {
                    registry
                        .push_file(target, path, &digests.digest, digests.size)
                        .await?;
                }
                Ok::<_, AssembleError>(())
            }
        })
        .await?;
    let made: Vec<(LayerDigests, String)> = written
        .into_iter()
        .map(|(_, digests, created_by)| (digests, created_by))
        .collect();
    // In the spec's order: each layer cached or made.
    let mut made_iter = made.iter();
    let own: Vec<(LayerDigests, String)> = copies
        .iter()
        .filter_map(|cached| match cached {
            Some(layer) => Some((
                LayerDigests {
                    digest: layer.digest.clone(),
                    size: layer.size,
                    diff_id: layer.diff_id.clone(),
                },
                layer.created_by.clone(),
            )),
            None => made_iter.next().cloned(),
        })
        .collect();
    // The layers made, with their keys: stored after the push.
    let made_keys: Vec<(String, CachedLayer)> = spec
        .layers
        .iter()
        .zip(&copies)
        .zip(&own)
        .filter(|((_, cached), _)| cached.is_none())
        .filter_map(|((layer, _), (digests, created_by))| {
            Some((
                layer.cache_key.clone()?,
                CachedLayer {
                    digest: digests.digest.clone(),
                    size: digests.size,
                    diff_id: digests.diff_id.clone(),
                    created_by: created_by.clone(),
                },
            ))
        })
        .collect();
    let base_environment = LayersEntry::environment_of(&base_part.config);
    let pushed = push_image(
        &registry,
        &target,
        &extra_tags,
        base_part,
        &spec.config,
        &own,
    )
    .await?;
    let mut result = pushed.result(&target, &own);
    if let Some(cache) = &spec.cache {
        let own = OwnLayers {
            created_by: own.into_iter().map(|(_, created_by)| created_by).collect(),
            base_environment,
            copies: made_keys,
        };
        result.cache_warnings =
            store_cache(&registry, &target, &options, cache, &result, &own).await;
    }
    Ok(result)
}

/// The base as this assembly uses it: pinned by digest, its config, its
/// layers (already in the target repository) and its manifest's type.
struct BasePart {
    /// `repository@sha256:…`; `None` for scratch.
    pinned: Option<String>,
    config: Value,
    layers: Vec<Value>,
    media_type: String,
}

/// Pins `base` for `platform`, reads its config, and puts its blobs in
/// `target`'s repository (registry-side where it can). Scratch: an empty
/// config, no layers.
async fn pin_base(
    registry: &Registry,
    base: Option<&oci_client::Reference>,
    platform: &Platform,
    target: &oci_client::Reference,
) -> Result<BasePart, AssembleError> {
    let Some(base) = base else {
        return Ok(BasePart {
            pinned: None,
            config: config::scratch_config(platform),
            layers: Vec::new(),
            media_type: OCI_MANIFEST.to_string(),
        });
    };
    let pinned = registry.resolve(base, platform).await?;
    tracing::info!(base = %base, digest = %pinned.digest, "base pinned");
    let manifest: Value =
        serde_json::from_slice(&pinned.bytes).map_err(|e| AssembleError::Base {
            reference: base.to_string(),
            detail: format!("manifest is not JSON: {e}"),
        })?;
    let config_digest =
        manifest["config"]["digest"]
            .as_str()
            .ok_or_else(|| AssembleError::Base {
                reference: base.to_string(),
                detail: "manifest has no config".into(),
            })?;
    let config_bytes = registry
        .blob_bytes(&pinned.reference, config_digest)
        .await?;
    let config: Value = serde_json::from_slice(&config_bytes).map_err(|e| AssembleError::Base {
        reference: base.to_string(),
        detail: format!("config is not JSON: {e}"),
    })?;
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    transfer_base_blobs(registry, &pinned.reference, target, &layers).await?;
    Ok(BasePart {
        pinned: Some(pinned.reference.to_string()),
        config,
        layers,
        media_type: pinned.media_type,
    })
}

/// What [`push_image`] pushed.
struct Pushed {
    digest: String,
    size_bytes: u64,
    base: Option<String>,
}

impl Pushed {
    fn result(
        &self,
        target: &oci_client::Reference,
        own: &[(LayerDigests, String)],
    ) -> AssembleResult {
        AssembleResult {
            reference: format!("{}@{}", registry::repository_name(target), self.digest),
            digest: self.digest.clone(),
            size_bytes: self.size_bytes,
            layers: own.iter().map(|(digests, _)| digests.clone()).collect(),
            base: self.base.clone(),
            builder_image: None,
            builder_size_bytes: None,
            cache_warnings: Vec::new(),
        }
    }
}

/// The image's config (the base's with `changes` and the `own` layers,
/// each with its history entry) and its manifest (the base's layers, then
/// the own ones, whose blobs are in `target`'s repository already),
/// pushed to `target` and every extra tag.
async fn push_image(
    registry: &Registry,
    target: &oci_client::Reference,
    extra_tags: &[oci_client::Reference],
    base: BasePart,
    changes: &config::ConfigChanges,
    own: &[(LayerDigests, String)],
) -> Result<Pushed, AssembleError> {
    let BasePart {
        pinned,
        config: mut image_config,
        layers: mut manifest_layers,
        media_type,
    } = base;
    let docker = media_type == DOCKER_MANIFEST;
    let (manifest_type, config_type, layer_type) = if docker {
        (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER)
    } else {
        (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER)
    };
    let added: Vec<AddedLayer> = own
        .iter()
        .map(|(digests, created_by)| AddedLayer {
            diff_id: digests.diff_id.clone(),
            created_by: created_by.clone(),
        })
        .collect();
    let created = config::rfc3339(layer::source_date_epoch());
    config::apply(&mut image_config, changes, &added, &created)?;
    let config_bytes = serde_json::to_vec(&image_config)
        .map_err(|e| AssembleError::Io(format!("serialising the config: {e}")))?;
    let config_digest = registry::sha256_digest(&config_bytes);
    if !registry.blob_exists(target, &config_digest).await? {
        registry
            .push_bytes(target, &config_bytes, &config_digest)
            .await?;
    }
    manifest_layers.extend(own.iter().map(|(digests, _)| {
        json!({"mediaType": layer_type, "digest": digests.digest, "size": digests.size})
    }));
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": config_digest, "size": config_bytes.len()},
        "layers": manifest_layers,
    });
    // The digest is of these exact bytes; nothing re-serialises them.
    let manifest_bytes = serde_json::to_vec(&manifest)
        .map_err(|e| AssembleError::Io(format!("serialising the manifest: {e}")))?;
    let digest = registry::sha256_digest(&manifest_bytes);
    for reference in std::iter::once(target).chain(extra_tags) {
        registry
            .push_manifest(reference, &manifest_bytes, manifest_type)
            .await?;
        tracing::info!(reference = %reference, %digest, "pushed");
    }
    let size_bytes = config_bytes.len() as u64
        + manifest_layers
            .iter()
            .map(|l| l["size"].as_u64().unwrap_or_default())
            .sum::<u64>();
    Ok(Pushed {
        digest,
        size_bytes,
        base: pinned,
    })
}

/// What the layers entry needs beyond the result: each new layer's
/// history entry, and the base's environment; and the `COPY --from`
/// layers made, by key.
struct OwnLayers {
    created_by: Vec<String>,
    base_environment: Value,
    copies: Vec<(String, CachedLayer)>,
}

/// For each layer of `spec`, the cached `COPY --from` layer (its blob put
/// in `target`'s repository), or `None`: then its export archives are
/// downloaded from the cache repository where they are not on disk.
async fn cached_copies(
    registry: &Registry,
    spec: &AssembleSpec,
    cache: &CacheStoreSpec,
    repository: &oci_client::Reference,
    target: &oci_client::Reference,
) -> Result<Vec<Option<CachedLayer>>, AssembleError> {
    let mut copies = Vec::with_capacity(spec.layers.len());
    for layer in &spec.layers {
        let hit = match &layer.cache_key {
            Some(key) => crate::cache::entry::lookup_copy(registry, &cache.repository, key)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "stage cache: a layer's lookup failed");
                    None
                }),
            None => None,
        };
        if let Some(hit) = hit {
            crate::cache::entry::put_blob(
                registry,
                repository,
                target,
                &hit.layer.digest,
                hit.layer.size,
            )
            .await?;
            tracing::info!(key = %hit.key, digest = %hit.layer.digest, "layer from the cache");
            copies.push(Some(hit.layer));
            continue;
        }
        for archive in layer.copy.iter().flat_map(|c| &c.archives) {
            if archive.is_file() {
                continue;
            }
            let export = cache
                .restore
                .iter()
                .flat_map(|entry| &entry.exports)
                .find(|e| {
                    Some(std::ffi::OsStr::new(&export_file_name(&e.id))) == archive.file_name()
                });
            let Some(export) = export else {
                return Err(AssembleError::Io(format!(
                    "{}: no such export archive, and the cache has none",
                    archive.display()
                )));
            };
            registry
                .download_blob(repository, &export.digest, archive)
                .await?;
            tracing::info!(export = %export.id, "export read from the cache");
        }
        copies.push(None);
    }
    Ok(copies)
}

/// Stores the chains' entries, then the image's, in the cache repository;
/// returns what failed, each as one warning (logged too): the image is
/// pushed whatever happens here.
async fn store_cache(
    registry: &Registry,
    target: &oci_client::Reference,
    options: &RegistryOptions,
    cache: &CacheStoreSpec,
    result: &AssembleResult,
    own: &OwnLayers,
) -> Vec<String> {
    let mut warnings = Vec::new();
    let mut warn = |warning: String| {
        tracing::warn!(%warning, "stage cache");
        warnings.push(warning);
    };
    let repository = &cache.repository;
    let reference = match registry::parse_reference(repository) {
        Ok(reference) => reference,
        Err(e) => {
            warn(format!("cache repository {repository}: {e}"));
            return warnings;
        }
    };
    // The output's registry is connected already; another is reached now.
    let other;
    let registry = if reference.resolve_registry() == target.resolve_registry() {
        registry
    } else {
        // The layers entry copies blobs from the target's registry.
        match Registry::connect(options, &[&reference, target]).await {
            Ok(connected) => {
                other = connected;
                &other
            }
            Err(e) => {
                warn(format!("cache repository {repository}: {e}"));
                return warnings;
            }
        }
    };
    for chain in &cache.chains {
        let stored = async {
            let text = std::fs::read(&chain.result)
                .map_err(|e| format!("{}: {e}", chain.result.display()))?;
            let reported: Value = serde_json::from_slice(&text)
                .map_err(|e| format!("{}: {e}", chain.result.display()))?;
            let exports: Vec<(String, PathBuf)> = chain
                .exports
                .iter()
                .map(|e| (e.id.clone(), e.path.clone()))
                .collect();
            crate::cache::entry::store_chain(
                registry,
                repository,
                (chain.key.clone(), chain.chain.clone(), reported),
                &exports,
            )
            .await
            .map_err(|e| e.to_string())
        };
        match stored.await {
            Ok(_) => tracing::info!(chain = %chain.chain, key = %chain.key, "chain cached"),
            Err(e) => warn(format!(
                "caching chain {} in {repository}: {e}",
                chain.chain
            )),
        }
    }
    if let Some(image) = &cache.image {
        match crate::cache::entry::store_image(registry, repository, &image.key, result).await {
            Ok(_) => tracing::info!(key = %image.key, "image cached"),
            Err(e) => warn(format!("caching the image in {repository}: {e}")),
        }
    }
    for (key, layer) in &own.copies {
        let entry = crate::cache::entry::CopyEntry {
            key: key.clone(),
            layer: layer.clone(),
        };
        match crate::cache::entry::store_copy(registry, repository, target, &entry).await {
            Ok(()) => tracing::info!(%key, "layer cached"),
            Err(e) => warn(format!("caching a layer in {repository}: {e}")),
        }
    }
    if let Some(recipe) = &cache.recipe {
        let entry = crate::cache::entry::RecipeEntry {
            key: recipe.key.clone(),
            recipe: recipe.recipe.clone(),
        };
        match crate::cache::entry::store_recipe(registry, repository, &entry).await {
            Ok(()) => tracing::info!(key = %recipe.key, "recipe cached"),
            Err(e) => warn(format!("caching the recipe in {repository}: {e}")),
        }
    }
    if let (Some(layers), Some(base)) = (&cache.layers, &result.base) {
        let entry = LayersEntry {
            key: layers.key.clone(),
            recipe: layers.recipe.clone(),
            base_config: own.base_environment.clone(),
            base: base.clone(),
            layers: result
                .layers
                .iter()
                .zip(&own.created_by)
                .map(|(layer, created_by)| CachedLayer {
                    digest: layer.digest.clone(),
                    size: layer.size,
                    diff_id: layer.diff_id.clone(),
                    created_by: created_by.clone(),
                })
                .collect(),
        };
        match crate::cache::entry::store_layers(registry, repository, target, &entry).await {
            Ok(()) => tracing::info!(key = %layers.key, "layers cached"),
            Err(e) => warn(format!("caching the layers in {repository}: {e}")),
        }
    }
    warnings
}

/// The compressed size of `image` for `platform` (config and layers), as its
/// registry says: only the manifest is read.
pub async fn compressed_size(
    image: &str,
    platform: &str,
    options: &RegistryOptions,
) -> Result<u64, AssembleError> {
    let reference = registry::parse_reference(image)?;
    let platform: Platform = platform
        .parse()
        .map_err(|e| AssembleError::Invalid(format!("platform `{platform}`: {e}")))?;
    let registry = Registry::connect(options, &[&reference]).await?;
    let manifest = registry.resolve(&reference, &platform).await?;
    let value: Value =
        serde_json::from_slice(&manifest.bytes).map_err(|e| AssembleError::Base {
            reference: image.to_string(),
            detail: format!("manifest: {e}"),
        })?;
    let size = |v: &Value| v["size"].as_u64().unwrap_or(0);
    Ok(size(&value["config"])
        + value["layers"]
            .as_array()
            .map(|layers| layers.iter().map(size).sum())
            .unwrap_or(0))
}
