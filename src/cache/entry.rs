//! Cache entries in a registry: one OCI image manifest per entry, in the
//! cache repository ([`cache_repository`]), tagged by its key
//! ([`entry_tag`]: `chain-<hex>`, `image-<hex>`, `layers-<hex>`,
//! `recipe-<hex>` or `copy-<hex>`).
//!
//! The manifest (`application/vnd.oci.image.manifest.v1+json`,
//! schemaVersion 2):
//! - `config`: the entry itself as JSON ([`ChainEntry`], [`ImageEntry`],
//!   [`LayersEntry`], [`RecipeEntry`] or [`CopyEntry`]), media type
//!   [`CONFIG_MEDIA_TYPE`];
//! - `layers`: a chain's exports, each the gzip tar `stage run` wrote, media
//!   type [`LAYER_MEDIA_TYPE`], annotated [`EXPORT_ANNOTATION`] = the
//!   export's id; or the final image's own layer blobs (a layers or copy
//!   entry), which the registry then keeps. Image and recipe entries have
//!   none: CNCF Distribution (2.8) takes an OCI manifest with an empty
//!   `layers` list and a config media type of its own, and so do
//!   registries that follow the OCI artifact guidance.
//!
//! A lookup costs a manifest GET, a config GET and one HEAD per export. An
//! entry that is absent, is not ours, does not parse, names another key or
//! lost a blob (the registry collected it) is a miss, never a failure; only
//! an unreachable registry or refused credentials are errors.
//!
//! `slimforge cache restore` ([`RestoreSpec`], [`restore`]) downloads the
//! exports of hits into a workspace's `exports/` as `stage run` names them.

use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use oci_client::Reference;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::contract::{AssembleResult, FinalRecipe, export_file_name};
use crate::oci::reference;
use crate::oci::registry::{
    self, OCI_MANIFEST, Registry, RegistryError, RegistryOptions, repository_name,
};

/// The media type of an entry's config: the entry's JSON.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.slimforge.cache.v1+json";
/// The media type of an export's blob: a gzip-compressed tar.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The layer annotation that holds the export's id.
pub const EXPORT_ANNOTATION: &str = "dev.slimforge.export";

/// Blobs pushed, checked or downloaded at once.
const PARALLEL_BLOBS: usize = 4;

/// The cache repository for `output_image`: `configured` when given (a
/// repository, normalised as Docker does, without tag or digest), else
/// `<registry>/<output repository>/cache`
/// (`reg:5000/team/app:v1` → `reg:5000/team/app/cache`).
pub fn cache_repository(output_image: &str, configured: Option<&str>) -> Result<String, String> {
    if let Some(configured) = configured {
        let configured = configured.trim();
        if configured.contains('@') {
            return Err(format!(
                "cache repository `{configured}`: a repository, not a digest reference"
            ));
        }
        let last = configured.rsplit('/').next().unwrap_or(configured);
        if last.contains(':') {
            return Err(format!(
                "cache repository `{configured}`: a repository, without a tag"
            ));
        }
        let parsed = reference::parse(configured)
            .map_err(|e| format!("cache repository `{configured}`: {e}"))?;
        return Ok(repository_name(&parsed));
    }
    let output = reference::parse(output_image)
        .map_err(|e| format!("output image `{output_image}`: {e}"))?;
    let repository = format!("{}/{}/cache", output.registry(), output.repository());
    reference::parse(&repository).map_err(|e| format!("cache repository `{repository}`: {e}"))?;
    Ok(repository)
}

/// What an entry caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A chain's (or an extraction's) result and exports.
    Chain,
    /// The final image's assembly.
    Image,
    /// The final image's own layers and recipe, whatever its base's
    /// digest: what a rebase puts on a new base.
    Layers,
    /// The probe's answer: the final stage's recipe on a base digest.
    Recipe,
    /// One `COPY --from` layer of the final image, made from exports.
    Copy,
}

/// The tag of the entry for `key` (`sha256:<hex>`): `chain-<hex>` or
/// `image-<hex>`, 70 characters, a valid tag.
pub fn entry_tag(kind: EntryKind, key: &str) -> String {
    let hex = key.strip_prefix("sha256:").unwrap_or(key);
    match kind {
        EntryKind::Chain => format!("chain-{hex}"),
        EntryKind::Image => format!("image-{hex}"),
        EntryKind::Layers => format!("layers-{hex}"),
        EntryKind::Recipe => format!("recipe-{hex}"),
        EntryKind::Copy => format!("copy-{hex}"),
    }
}

/// One export in an entry: its id in the plan and its blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedExport {
    pub id: String,
    /// `sha256:<hex>` of the gzip tar.
    pub digest: String,
    pub size: u64,
}

/// A chain's entry: what it reported and its exports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainEntry {
    pub key: String,
    /// The chain's id in the plan that stored it.
    pub chain: String,
    /// The chain's result JSON as it reported it.
    pub result: Value,
    /// In the manifest's layer order.
    pub exports: Vec<CachedExport>,
}

/// The final image's entry: what the assembly pushed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageEntry {
    pub key: String,
    pub image: AssembleResult,
}

/// The final image's own layers, as a rebase puts them on a new base, and
/// what they were made from. Its manifest's layers are the same blobs, so
/// the registry keeps them while the entry is there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayersEntry {
    pub key: String,
    /// The recipe the layers were made from (the probe's, on the old base).
    pub recipe: FinalRecipe,
    /// The old base's `Env`, `WorkingDir` and `User`: the probe's
    /// environment came from them, so a new base must have the same.
    pub base_config: Value,
    /// The base they were made on (`repository@sha256:…`).
    pub base: String,
    /// In the image's order, after the base's.
    pub layers: Vec<CachedLayer>,
}

/// The probe's answer for a recipe key ([`super::key::Keys::recipe`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecipeEntry {
    pub key: String,
    pub recipe: FinalRecipe,
}

/// One `COPY --from` layer of the final image, by its key
/// ([`super::key::layer_key`]); the manifest's one layer is its blob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CopyEntry {
    pub key: String,
    pub layer: CachedLayer,
}

/// One of the final image's own layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedLayer {
    /// `sha256:<hex>` of the gzip tar.
    pub digest: String,
    pub size: u64,
    /// `sha256:<hex>` of the tar.
    pub diff_id: String,
    /// Its history entry.
    pub created_by: String,
}

impl LayersEntry {
    /// The `Env`, `WorkingDir` and `User` of an image config (`config`'s
    /// `config` object), as [`LayersEntry::base_config`] holds them.
    pub fn environment_of(image_config: &Value) -> Value {
        let config = &image_config["config"];
        json!({
            "Env": config["Env"],
            "WorkingDir": config["WorkingDir"],
            "User": config["User"],
        })
    }

    /// The layers as the manifest lists them.
    fn as_exports(&self) -> Vec<CachedExport> {
        self.layers
            .iter()
            .enumerate()
            .map(|(i, layer)| CachedExport {
                id: format!("layer-{i}"),
                digest: layer.digest.clone(),
                size: layer.size,
            })
            .collect()
    }
}

/// Looks the chain entry for `key` up in `repository`; `None` on a miss
/// (see the module's documentation).
pub async fn lookup_chain(
    registry: &Registry,
    repository: &str,
    key: &str,
) -> Result<Option<ChainEntry>, RegistryError> {
    let Some((entry, layers)) =
        fetch_entry::<ChainEntry>(registry, repository, EntryKind::Chain, key).await?
    else {
        return Ok(None);
    };
    if entry.exports != layers {
        tracing::info!(
            repository,
            key,
            "cache entry's exports differ from its layers: a miss"
        );
        return Ok(None);
    }
    Ok(Some(entry))
}

/// Looks the image entry for `key` up in `repository`; `None` on a miss.
pub async fn lookup_image(
    registry: &Registry,
    repository: &str,
    key: &str,
) -> Result<Option<ImageEntry>, RegistryError> {
    Ok(
        fetch_entry::<ImageEntry>(registry, repository, EntryKind::Image, key)
            .await?
            .map(|(entry, _)| entry),
    )
}

/// Looks the copy-layer entry for `key` up in `repository`; `None` on a
/// miss (its blob gone too).
pub async fn lookup_copy(
    registry: &Registry,
    repository: &str,
    key: &str,
) -> Result<Option<CopyEntry>, RegistryError> {
    let Some((entry, layers)) =
        fetch_entry::<CopyEntry>(registry, repository, EntryKind::Copy, key).await?
    else {
        return Ok(None);
    };
    if layers.len() != 1 || layers[0].digest != entry.layer.digest {
        return Ok(None);
    }
    Ok(Some(entry))
}

/// Stores a copy-layer entry, its blob mounted from `image`'s repository
/// (where the assembly pushed it), or copied.
pub async fn store_copy(
    registry: &Registry,
    repository: &str,
    image: &Reference,
    entry: &CopyEntry,
) -> Result<(), RegistryError> {
    let target = entry_reference(repository, EntryKind::Copy, &entry.key)?;
    registry.authorize_push(&target, &[image]).await?;
    put_blob(
        registry,
        image,
        &target,
        &entry.layer.digest,
        entry.layer.size,
    )
    .await?;
    let layers = [CachedExport {
        id: "layer".into(),
        digest: entry.layer.digest.clone(),
        size: entry.layer.size,
    }];
    push_entry(registry, &target, entry, &layers).await
}

/// Puts blob `digest` in `target`'s repository from `source`'s: there
/// already, mounted (same registry), or copied.
pub async fn put_blob(
    registry: &Registry,
    source: &Reference,
    target: &Reference,
    digest: &str,
    size: u64,
) -> Result<(), RegistryError> {
    if registry.blob_exists(target, digest).await? {
        return Ok(());
    }
    if target.resolve_registry() == source.resolve_registry()
        && registry.mount(target, source, digest).await?
    {
        return Ok(());
    }
    registry.copy_blob(source, target, digest, size).await
}

/// Looks the recipe entry for `key` up in `repository`; `None` on a miss.
pub async fn lookup_recipe(
    registry: &Registry,
    repository: &str,
    key: &str,
) -> Result<Option<RecipeEntry>, RegistryError> {
    Ok(
        fetch_entry::<RecipeEntry>(registry, repository, EntryKind::Recipe, key)
            .await?
            .map(|(entry, _)| entry),
    )
}

/// Stores the probe's answer under its recipe key: a config, no layer.
pub async fn store_recipe(
    registry: &Registry,
    repository: &str,
    entry: &RecipeEntry,
) -> Result<(), RegistryError> {
    let target = entry_reference(repository, EntryKind::Recipe, &entry.key)?;
    registry.authorize_push(&target, &[]).await?;
    push_entry(registry, &target, entry, &[]).await
}

/// Looks the layers entry for `key` up in `repository`; `None` on a miss.
pub async fn lookup_layers(
    registry: &Registry,
    repository: &str,
    key: &str,
) -> Result<Option<LayersEntry>, RegistryError> {
    let Some((entry, layers)) =
        fetch_entry::<LayersEntry>(registry, repository, EntryKind::Layers, key).await?
    else {
        return Ok(None);
    };
    if entry.as_exports() != layers {
        tracing::info!(
            repository,
            key,
            "layers entry differs from its manifest: a miss"
        );
        return Ok(None);
    }
    Ok(Some(entry))
}

/// Stores the final image's layers entry: its blobs are put in the cache
/// repository first (mounted from `image`'s repository, where the assembly
/// pushed them, or copied when the registry declines).
pub async fn store_layers(
    registry: &Registry,
    repository: &str,
    image: &Reference,
    entry: &LayersEntry,
) -> Result<(), RegistryError> {
    let target = entry_reference(repository, EntryKind::Layers, &entry.key)?;
    registry.authorize_push(&target, &[image]).await?;
    for layer in &entry.layers {
        put_blob(registry, image, &target, &layer.digest, layer.size).await?;
    }
    push_entry(registry, &target, entry, &entry.as_exports()).await
}

/// Stores a chain's entry: `entry` is its key, chain id and result JSON,
/// `exports` its export ids and their gzip tars. The blobs go first (those
/// the repository has are skipped), then the config, then the manifest
/// under the entry's tag; returns the entry as stored.
pub async fn store_chain(
    registry: &Registry,
    repository: &str,
    entry: (String, String, Value),
    exports: &[(String, PathBuf)],
) -> Result<ChainEntry, RegistryError> {
    let (key, chain, result) = entry;
    let target = entry_reference(repository, EntryKind::Chain, &key)?;
    for (id, _) in exports {
        check_export_id(id).map_err(|detail| RegistryError::Request {
            what: format!("storing chain {chain} in {repository}"),
            detail,
        })?;
    }
    registry.authorize_push(&target, &[]).await?;
    let cached: Vec<CachedExport> = futures::stream::iter(exports.iter().map(Ok))
        .map_ok(|(id, path)| {
            let target = &target;
            async move {
                let (digest, size) =
                    file_digest(path)
                        .await
                        .map_err(|e| RegistryError::Request {
                            what: format!("export {id}"),
                            detail: format!("{}: {e}", path.display()),
                        })?;
                if !registry.blob_exists(target, &digest).await? {
                    registry.push_file(target, path, &digest, size).await?;
                }
                Ok::<_, RegistryError>(CachedExport {
                    id: id.clone(),
                    digest,
                    size,
                })
            }
        })
        .try_buffered(PARALLEL_BLOBS)
        .try_collect()
        .await?;
    let entry = ChainEntry {
        key,
        chain,
        result,
        exports: cached,
    };
    push_entry(registry, &target, &entry, &entry.exports).await?;
    Ok(entry)
}

/// Stores the final image's entry for `key`: `image` is what the assembly
/// pushed. Returns the entry as stored.
pub async fn store_image(
    registry: &Registry,
    repository: &str,
    key: &str,
    image: &AssembleResult,
) -> Result<ImageEntry, RegistryError> {
    let target = entry_reference(repository, EntryKind::Image, key)?;
    registry.authorize_push(&target, &[]).await?;
    let entry = ImageEntry {
        key: key.to_string(),
        image: image.clone(),
    };
    push_entry(registry, &target, &entry, &[]).await?;
    Ok(entry)
}

/// Downloads each of `entry`'s exports from `repository` into `dir` under
/// the name the workspace gives it ([`export_file_name`]), verified against
/// its digest, streamed, and renamed into place only when whole. Returns
/// the files written, in the entry's order.
pub async fn restore_exports(
    registry: &Registry,
    repository: &str,
    entry: &ChainEntry,
    dir: &Path,
) -> Result<Vec<PathBuf>, RestoreError> {
    let export_error = |export: &str, error: String| RestoreError::Export {
        repository: repository.to_string(),
        export: export.to_string(),
        error,
    };
    let registry_error = |error: String| RestoreError::Registry {
        repository: repository.to_string(),
        error,
    };
    let source =
        registry::parse_reference(repository).map_err(|e| registry_error(e.to_string()))?;
    for export in &entry.exports {
        check_export_id(&export.id).map_err(|detail| export_error(&export.id, detail))?;
    }
    registry
        .authorize_pull(&source)
        .await
        .map_err(|e| registry_error(e.to_string()))?;
    futures::stream::iter(entry.exports.iter().map(Ok))
        .map_ok(|export| {
            let source = &source;
            async move {
                let path = dir.join(export_file_name(&export.id));
                registry
                    .download_blob(source, &export.digest, &path)
                    .await
                    .map_err(|e| export_error(&export.id, e.to_string()))?;
                Ok::<_, RestoreError>(path)
            }
        })
        .try_buffered(PARALLEL_BLOBS)
        .try_collect()
        .await
}

/// Why a restore failed; never quotes credentials.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("restore spec: {0}")]
    Spec(String),
    #[error("cache repository {repository}: {error}")]
    Registry { repository: String, error: String },
    #[error("restoring export `{export}` from {repository}: {error}")]
    Export {
        repository: String,
        export: String,
        error: String,
    },
}

/// What `slimforge cache restore` is asked to do (JSON, from `--spec FILE`
/// or [`crate::contract::RESTORE_ENV`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestoreSpec {
    /// The cache repository (`registry/name`).
    pub repository: String,
    #[serde(default)]
    pub insecure: bool,
    /// dockerconfigjson with pull credentials for the cache repository.
    #[serde(default)]
    pub auth: Option<PathBuf>,
    /// Extra trusted CA certificates (PEM).
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// The hits whose exports are restored.
    pub entries: Vec<ChainEntry>,
    /// Where the export archives go: the workspace's `exports/`.
    pub into: PathBuf,
}

impl RestoreSpec {
    /// Reads the spec from `path`, or else from the environment variable
    /// [`crate::contract::RESTORE_ENV`]. Relative paths in a file are taken
    /// from the file's directory.
    pub fn load(path: Option<&Path>) -> Result<Self, RestoreError> {
        let spec_error = |detail: String| RestoreError::Spec(detail);
        let env = crate::contract::RESTORE_ENV;
        let (text, dir) = match path {
            Some(path) => (
                std::fs::read_to_string(path)
                    .map_err(|e| spec_error(format!("{}: {e}", path.display())))?,
                path.parent().map(Path::to_path_buf),
            ),
            None => match std::env::var(env) {
                Ok(text) if !text.trim().is_empty() => (text, None),
                _ => return Err(spec_error(format!("give --spec FILE or set {env}"))),
            },
        };
        let mut spec: Self = serde_json::from_str(&text).map_err(|e| {
            spec_error(match path {
                Some(path) => format!("{}: {e}", path.display()),
                None => format!("{env}: {e}"),
            })
        })?;
        if let Some(dir) = dir {
            let resolve = |p: &mut PathBuf| {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            };
            spec.auth.as_mut().map(resolve);
            spec.ca_bundle.as_mut().map(resolve);
            resolve(&mut spec.into);
        }
        Ok(spec)
    }
}

/// Restores every entry's exports into `spec.into` (created if missing);
/// one line per export written: `<export id> <digest> <file>`.
pub async fn restore(spec: &RestoreSpec) -> Result<Vec<String>, RestoreError> {
    let registry_error = |error: String| RestoreError::Registry {
        repository: spec.repository.clone(),
        error,
    };
    let source =
        registry::parse_reference(&spec.repository).map_err(|e| registry_error(e.to_string()))?;
    // The exports directory is shared (1777) like every pod makes it: this
    // pod may be the first on the workspace, and chains write there next.
    if let Some(workspace) = spec.into.parent()
        && let Err(e) = crate::stage::run::prepare_workspace(workspace)
    {
        tracing::debug!(error = %e, "the workspace is not prepared");
    }
    std::fs::create_dir_all(&spec.into)
        .map_err(|e| RestoreError::Spec(format!("{}: {e}", spec.into.display())))?;
    let options = RegistryOptions {
        insecure: spec.insecure,
        ca_bundle: spec.ca_bundle.clone(),
        auth_file: spec.auth.clone(),
        auth_json: None,
    };
    let registry = Registry::connect(&options, &[&source])
        .await
        .map_err(|e| registry_error(e.to_string()))?;
    let mut lines = Vec::new();
    for entry in &spec.entries {
        let paths = restore_exports(&registry, &spec.repository, entry, &spec.into).await?;
        for (export, path) in entry.exports.iter().zip(paths) {
            lines.push(format!(
                "{} {} {}",
                export.id,
                export.digest,
                path.display()
            ));
        }
    }
    Ok(lines)
}

/// `repository:<entry tag>`, the key checked.
fn entry_reference(
    repository: &str,
    kind: EntryKind,
    key: &str,
) -> Result<Reference, RegistryError> {
    let valid = key.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    if !valid {
        return Err(RegistryError::InvalidReference {
            reference: format!("{repository}:{}", entry_tag(kind, key)),
            reason: format!("cache key `{key}` is not sha256:<64 lower-case hex digits>"),
        });
    }
    registry::parse_reference(&format!("{repository}:{}", entry_tag(kind, key)))
}

/// An export id is a file name in `exports/`: no `/`, not `.` or `..`.
fn check_export_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id == "." || id == ".." || id.contains(['/', '\0']) {
        return Err(format!("export id `{id}` cannot name a file in exports/"));
    }
    Ok(())
}

/// The entry's manifest: `entry` as the config, `layers` as its layers.
fn manifest_bytes(config: &[u8], layers: &[CachedExport]) -> Vec<u8> {
    let layers: Vec<Value> = layers
        .iter()
        .map(|export| {
            json!({
                "mediaType": LAYER_MEDIA_TYPE,
                "digest": export.digest,
                "size": export.size,
                "annotations": {EXPORT_ANNOTATION: export.id},
            })
        })
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": registry::sha256_digest(config),
            "size": config.len(),
        },
        "layers": layers,
    });
    serde_json::to_vec(&manifest).expect("a manifest serializes")
}

/// Pushes `entry`'s config (unless there) and its manifest under `target`.
async fn push_entry<T: Serialize>(
    registry: &Registry,
    target: &Reference,
    entry: &T,
    layers: &[CachedExport],
) -> Result<(), RegistryError> {
    let config = serde_json::to_vec(entry).map_err(|e| RegistryError::Request {
        what: format!("cache entry {target}"),
        detail: e.to_string(),
    })?;
    let config_digest = registry::sha256_digest(&config);
    if !registry.blob_exists(target, &config_digest).await? {
        registry.push_bytes(target, &config, &config_digest).await?;
    }
    let manifest = manifest_bytes(&config, layers);
    registry
        .push_manifest(target, &manifest, OCI_MANIFEST)
        .await
}

/// The entry tagged for `key` and its layers as exports, when it is there,
/// ours, whole and for that key.
async fn fetch_entry<T: DeserializeOwned + Keyed>(
    registry: &Registry,
    repository: &str,
    kind: EntryKind,
    key: &str,
) -> Result<Option<(T, Vec<CachedExport>)>, RegistryError> {
    let reference = entry_reference(repository, kind, key)?;
    let miss = |why: &str| {
        tracing::info!(entry = %reference, why, "cache miss");
        Ok(None)
    };
    registry.authorize_pull(&reference).await?;
    let Some((bytes, media_type)) = registry.manifest_if_present(&reference).await? else {
        return miss("no such tag");
    };
    if media_type != OCI_MANIFEST {
        return miss("not an OCI image manifest");
    }
    let Ok(manifest) = serde_json::from_slice::<Value>(&bytes) else {
        return miss("the manifest is not JSON");
    };
    if manifest["config"]["mediaType"] != CONFIG_MEDIA_TYPE {
        return miss("not a slimforge cache entry");
    }
    let Some(config_digest) = manifest["config"]["digest"].as_str() else {
        return miss("the manifest has no config digest");
    };
    let mut layers = Vec::new();
    for layer in manifest["layers"].as_array().into_iter().flatten() {
        let (Some(id), Some(digest), Some(size)) = (
            layer["annotations"][EXPORT_ANNOTATION].as_str(),
            layer["digest"].as_str(),
            layer["size"].as_u64(),
        ) else {
            return miss("a layer without its export id, digest or size");
        };
        layers.push(CachedExport {
            id: id.to_string(),
            digest: digest.to_string(),
            size,
        });
    }
    let config = match registry
        .blob_bytes_if_present(&reference, config_digest)
        .await
    {
        Ok(Some(config)) => config,
        Ok(None) => return miss("the config blob is gone"),
        Err(RegistryError::DigestMismatch { .. }) => return miss("the config blob is corrupt"),
        Err(e) => return Err(e),
    };
    let Ok(entry) = serde_json::from_slice::<T>(&config) else {
        return miss("the config does not parse");
    };
    if entry.key() != key {
        return miss("the config is for another key");
    }
    // One after the other: a chain exports a few files, and this future
    // must stay Send for the controller (a stream of borrowed layers would
    // not be, as far as the compiler can tell).
    for layer in &layers {
        if !registry.blob_exists(&reference, &layer.digest).await? {
            return miss("an export's blob is gone");
        }
    }
    Ok(Some((entry, layers)))
}

/// An entry's key.
trait Keyed {
    fn key(&self) -> &str;
}

impl Keyed for ChainEntry {
    fn key(&self) -> &str {
        &self.key
    }
}

impl Keyed for CopyEntry {
    fn key(&self) -> &str {
        &self.key
    }
}

impl Keyed for RecipeEntry {
    fn key(&self) -> &str {
        &self.key
    }
}

impl Keyed for LayersEntry {
    fn key(&self) -> &str {
        &self.key
    }
}

impl Keyed for ImageEntry {
    fn key(&self) -> &str {
        &self.key
    }
}

/// `sha256:<hex>` and size of a file, read in pieces on a blocking thread.
async fn file_digest(path: &Path) -> std::io::Result<(String, u64)> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(&path)?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            size += n as u64;
        }
        Ok((format!("sha256:{}", hex::encode(hasher.finalize())), size))
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn the_default_cache_repository_is_under_the_output_repository() {
        assert_eq!(
            cache_repository("reg:5000/team/app:v1", None).unwrap(),
            "reg:5000/team/app/cache"
        );
        assert_eq!(
            cache_repository("reg:5000/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", None)
                .unwrap(),
            "reg:5000/app/cache"
        );
        assert_eq!(
            cache_repository("busybox", None).unwrap(),
            "docker.io/library/busybox/cache"
        );
        assert!(cache_repository("Bad Name", None).is_err());
    }

    #[test]
    fn a_configured_cache_repository_is_a_repository_without_tag_or_digest() {
        assert_eq!(
            cache_repository("reg:5000/team/app:v1", Some("reg:5000/caches/app")).unwrap(),
            "reg:5000/caches/app"
        );
        assert_eq!(
            cache_repository("reg:5000/app:v1", Some("localhost/cache")).unwrap(),
            "localhost/cache"
        );
        let tagged = cache_repository("reg:5000/app:v1", Some("reg:5000/cache:v1")).unwrap_err();
        assert!(tagged.contains("without a tag"), "{tagged}");
        let pinned = cache_repository("reg:5000/app:v1", Some(&format!("reg:5000/cache@{KEY}")))
            .unwrap_err();
        assert!(pinned.contains("digest"), "{pinned}");
        assert!(cache_repository("reg:5000/app:v1", Some("reg:5000/Cache")).is_err());
    }

    #[test]
    fn entry_tags_are_valid_tags_named_by_kind_and_key() {
        let hex = KEY.strip_prefix("sha256:").unwrap();
        let chain = entry_tag(EntryKind::Chain, KEY);
        let image = entry_tag(EntryKind::Image, KEY);
        assert_eq!(chain, format!("chain-{hex}"));
        assert_eq!(image, format!("image-{hex}"));
        for tag in [chain, image] {
            assert!(tag.len() <= 128);
            let reference = reference::parse(&format!("reg:5000/app/cache:{tag}")).unwrap();
            assert_eq!(reference.tag(), Some(tag.as_str()));
        }
    }

    #[test]
    fn keys_that_are_not_sha256_digests_are_refused() {
        for key in [
            "",
            "sha256:abc",
            &KEY.to_uppercase(),
            &KEY.replace("sha256", "sha512"),
        ] {
            assert!(
                entry_reference("reg:5000/app/cache", EntryKind::Chain, key).is_err(),
                "{key}"
            );
        }
        let reference = entry_reference("reg:5000/app/cache", EntryKind::Chain, KEY).unwrap();
        assert_eq!(reference.repository(), "app/cache");
    }

    #[test]
    fn export_ids_must_be_file_names() {
        assert!(check_export_id("builder-1").is_ok());
        for id in ["", ".", "..", "a/b", "../x"] {
            assert!(check_export_id(id).is_err(), "{id}");
        }
    }

    #[test]
    fn the_manifest_lists_exports_as_annotated_gzip_layers() {
        let config = br#"{"key":"k"}"#;
        let exports = [CachedExport {
            id: "b-1".into(),
            digest: KEY.into(),
            size: 7,
        }];
        let manifest: Value = serde_json::from_slice(&manifest_bytes(config, &exports)).unwrap();
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["mediaType"], OCI_MANIFEST);
        assert_eq!(manifest["config"]["mediaType"], CONFIG_MEDIA_TYPE);
        assert_eq!(manifest["config"]["size"], config.len());
        assert_eq!(manifest["layers"][0]["mediaType"], LAYER_MEDIA_TYPE);
        assert_eq!(
            manifest["layers"][0]["annotations"][EXPORT_ANNOTATION],
            "b-1"
        );
        let empty: Value = serde_json::from_slice(&manifest_bytes(config, &[])).unwrap();
        assert_eq!(empty["layers"], json!([]));
    }

    #[test]
    fn entries_are_camel_case_json() {
        let entry = ChainEntry {
            key: KEY.into(),
            chain: "builder".into(),
            result: json!({"status": "succeeded", "exports": ["b-1"]}),
            exports: vec![],
        };
        let value = serde_json::to_value(&entry).unwrap();
        assert_eq!(value["result"]["status"], "succeeded");
        let spec: Result<RestoreSpec, _> = serde_json::from_value(json!({
            "repository": "r/c", "entries": [], "into": "/x", "caBundle": "/ca.pem", "extra": 1
        }));
        assert!(spec.unwrap_err().to_string().contains("extra"));
    }
}
