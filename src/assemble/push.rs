//! The target repository's side: its extra tags as references, and the
//! base's layers brought into it (already there, mounted, or copied).

use futures::TryStreamExt;
use oci_client::Reference;
use serde_json::Value;

use super::AssembleError;
use crate::oci::registry::{self, Registry};

/// Base blobs transferred at once.
pub(super) const PARALLEL_BLOBS: usize = 4;

/// The target's extra tags as references in the same repository.
pub(super) fn tag_references(
    target: &Reference,
    tags: &[String],
) -> Result<Vec<Reference>, AssembleError> {
    tags.iter()
        .map(|tag| {
            registry::parse_reference(&format!("{}:{tag}", registry::repository_name(target)))
                .map_err(|_| {
                    AssembleError::Invalid(format!("additionalTags: `{tag}` is not a valid tag"))
                })
        })
        .collect()
}

/// Base layers into the target repository: already there, mounted from the
/// base's repository on the same registry, or streamed across.
pub(super) async fn transfer_base_blobs(
    registry: &Registry,
    base: &Reference,
    target: &Reference,
    layers: &[Value],
) -> Result<(), AssembleError> {
    let same_registry = base.resolve_registry() == target.resolve_registry();
    let same_repository = same_registry && base.repository() == target.repository();
    futures::stream::iter(layers.iter().map(Ok))
        .try_for_each_concurrent(PARALLEL_BLOBS, |layer| async move {
            let digest = layer["digest"].as_str().unwrap_or_default();
            let size = layer["size"].as_u64().unwrap_or_default();
            let media_type = layer["mediaType"].as_str().unwrap_or_default();
            // Foreign layers live outside the registry and are never pushed.
            if media_type.contains("foreign") || media_type.contains("nondistributable") {
                return Ok(());
            }
            if same_repository || registry.blob_exists(target, digest).await? {
                tracing::debug!(%digest, "base layer already in the target repository");
                return Ok(());
            }
            if same_registry && registry.mount(target, base, digest).await? {
                tracing::debug!(%digest, "base layer mounted");
                return Ok(());
            }
            tracing::info!(%digest, size, "copying base layer");
            registry.copy_blob(base, target, digest, size).await?;
            Ok::<_, AssembleError>(())
        })
        .await
}
