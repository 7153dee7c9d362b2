//! A rebase: the final image's own layers, cached from a build on another
//! digest of its base, put on the base's current digest without building
//! anything. The layers are what the recipe made of the old base; they fit
//! the new one when the final stage, evaluated again against the new
//! base's layers (read as a stream, headers only, see
//! [`crate::rootfs::LayerTree`]), gives the same recipe, and the base's
//! `Env`, `WorkingDir` and `User` (the probe's environment) are the same.
//! When they do not, the outcome says why and the build runs as usual.
//!
//! Registry work: the base's manifest and config, its layers streamed
//! once, the own layers mounted from the cache repository, a config and a
//! manifest pushed.

use std::io::{self, Read};

use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::push::tag_references;
use super::{AssembleError, AssembleSpec, pin_base, push_image};
use crate::cache::entry::{self, LayersEntry};
use crate::contract::{FinalRecipe, RebaseOutcome};
use crate::oci::layer::LayerDigests;
use crate::oci::registry::{self, Registry};
use crate::plan::BuildPlan;
use crate::recipe::{BaseView, evaluate};
use crate::rootfs::LayerTree;

/// Rebases `entry`'s layers onto `spec.base` as it is now, and pushes the
/// image to `spec.target` (and its tags); stores its image entry when
/// `spec.cache` says so. `cache_repository` holds the entry's blobs.
pub async fn rebase(
    spec: &AssembleSpec,
    plan: &BuildPlan,
    entry: &LayersEntry,
    cache_repository: &str,
) -> Result<RebaseOutcome, AssembleError> {
    let platform = spec.platform()?;
    let target = registry::parse_reference(&spec.target)?;
    let extra_tags = tag_references(&target, &spec.additional_tags)?;
    let base = registry::parse_reference(spec.base.trim())?;
    let cache = registry::parse_reference(cache_repository)?;
    let Some(environment) = &entry.recipe.base_environment else {
        return Ok(refused(
            "the cached recipe does not say which environment it was made in",
        ));
    };
    let options = spec.registry_options();
    let registry = Registry::connect(&options, &[&target, &base, &cache]).await?;
    registry.authorize_push(&target, &[&base, &cache]).await?;

    let base_part = pin_base(&registry, Some(&base), &platform, &target).await?;
    if LayersEntry::environment_of(&base_part.config) != entry.base_config {
        return Ok(refused(&format!(
            "the base's Env, WorkingDir or User changed (was {}, is {})",
            entry.base_config,
            LayersEntry::environment_of(&base_part.config)
        )));
    }
    let pinned = base_part.pinned.clone().unwrap_or_default();
    let pinned_reference = registry::parse_reference(&pinned)?;
    let mut tree = LayerTree::default();
    for layer in &base_part.layers {
        let digest = layer["digest"].as_str().unwrap_or_default().to_string();
        let media_type = layer["mediaType"].as_str().unwrap_or_default().to_string();
        let Some(gzip) = compression(&media_type) else {
            return Ok(refused(&format!(
                "base layer {digest} is {media_type}, which a rebase does not read"
            )));
        };
        let stream = registry.blob_stream(&pinned_reference, &digest).await?;
        tree = tokio::task::spawn_blocking(move || {
            read_layer(
                tree,
                SyncIoBridge::new(StreamReader::new(stream)),
                gzip,
                &digest,
            )
        })
        .await
        .map_err(|e| AssembleError::Io(format!("reading the base's layers: {e}")))??;
    }
    let view = BaseView {
        root: &tree,
        env: environment.env.clone(),
        workdir: environment.workdir.clone().into(),
    };
    let recipe = match evaluate(plan, &view) {
        Ok(recipe) => recipe,
        Err(e) => {
            return Ok(refused(&format!("the final stage on the new base: {e}")));
        }
    };
    if let Some(difference) = difference(&entry.recipe, &recipe) {
        return Ok(refused(&difference));
    }

    // The own layers go from the cache repository to the target's.
    for layer in &entry.layers {
        entry::put_blob(&registry, &cache, &target, &layer.digest, layer.size).await?;
    }
    let own: Vec<(LayerDigests, String)> = entry
        .layers
        .iter()
        .map(|layer| {
            (
                LayerDigests {
                    digest: layer.digest.clone(),
                    size: layer.size,
                    diff_id: layer.diff_id.clone(),
                },
                layer.created_by.clone(),
            )
        })
        .collect();
    let pushed = push_image(
        &registry,
        &target,
        &extra_tags,
        base_part,
        &entry.recipe.config,
        &own,
    )
    .await?;
    tracing::info!(from = %entry.base, onto = %pinned, digest = %pushed.digest, "rebased");
    let mut result = pushed.result(&target, &own);
    if let Some(image) = spec.cache.as_ref().and_then(|c| c.image.as_ref())
        && let Err(e) = entry::store_image(&registry, cache_repository, &image.key, &result).await
    {
        let warning = format!("caching the image in {cache_repository}: {e}");
        tracing::warn!(%warning, "stage cache");
        result.cache_warnings.push(warning);
    }
    Ok(RebaseOutcome::Rebased(result))
}

fn refused(why: &str) -> RebaseOutcome {
    tracing::info!(why, "no rebase");
    RebaseOutcome::Refused(why.to_string())
}

/// Whether a layer of `media_type` is gzip (`Some(true)`) or a plain tar
/// (`Some(false)`); `None` for what is not read here (zstd, foreign).
fn compression(media_type: &str) -> Option<bool> {
    if media_type.contains("foreign") || media_type.contains("nondistributable") {
        return None;
    }
    if media_type.ends_with("gzip") {
        Some(true)
    } else if media_type.ends_with(".tar") || media_type.ends_with("rootfs.diff.tar") {
        Some(false)
    } else {
        None
    }
}

/// Reads one base layer into `tree`, checking the blob's digest.
fn read_layer(
    mut tree: LayerTree,
    blob: impl Read,
    gzip: bool,
    digest: &str,
) -> Result<LayerTree, AssembleError> {
    let fail = |detail: String| AssembleError::Base {
        reference: digest.to_string(),
        detail,
    };
    let mut hashing = Hashing {
        inner: blob,
        hasher: Sha256::new(),
    };
    if gzip {
        let mut tar = GzDecoder::new(&mut hashing);
        tree.apply_layer(&mut tar)
            .map_err(|e| fail(e.to_string()))?;
        io::copy(&mut tar, &mut io::sink()).map_err(|e| fail(e.to_string()))?;
    } else {
        tree.apply_layer(&mut hashing)
            .map_err(|e| fail(e.to_string()))?;
    }
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| fail(e.to_string()))?;
    let actual = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
    if actual != digest {
        return Err(fail(format!("the blob's digest is {actual}")));
    }
    Ok(tree)
}

/// A reader that digests what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// What differs between the cached recipe and the one the new base gives,
/// in a sentence; `None` when the assembly would make the same of both.
fn difference(cached: &FinalRecipe, now: &FinalRecipe) -> Option<String> {
    if cached.same_image(now) {
        return None;
    }
    let layers = cached.layers.iter().zip(&now.layers);
    if let Some((was, is)) = layers.clone().find(|(was, is)| was != is) {
        return Some(format!(
            "line {}: {} resolves differently on the new base ({} → {})",
            was.line,
            was.created_by,
            summary(was),
            summary(is)
        ));
    }
    if cached.layers.len() != now.layers.len() {
        return Some(format!(
            "the final stage makes {} layers on the new base, not {}",
            now.layers.len(),
            cached.layers.len()
        ));
    }
    if cached.config != now.config {
        return Some("the image config differs on the new base".into());
    }
    let dirs = |r: &FinalRecipe| {
        r.base_directories
            .iter()
            .map(|(path, dir)| format!("{path} {} {}", dir.mode, dir.owner))
            .collect::<Vec<_>>()
    };
    let (was, is) = (dirs(cached), dirs(now));
    let changed = was
        .iter()
        .filter(|d| !is.contains(d))
        .chain(is.iter().filter(|d| !was.contains(d)))
        .cloned()
        .collect::<Vec<_>>();
    Some(format!(
        "the base's directories along the destinations changed: {}",
        changed.join(", ")
    ))
}

fn summary(layer: &crate::contract::RecipeLayer) -> String {
    format!(
        "{}{} owned by {}",
        layer.destination.as_deref().unwrap_or("?"),
        if layer.destination_is_dir { "/" } else { "" },
        layer.owner.as_deref().unwrap_or("?")
    )
}
