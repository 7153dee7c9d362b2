//! The stage cache: builds skip what has not changed.
//!
//! Every chain (and extraction) gets a key, a SHA-256 over everything that
//! determines its exports (`key`): the stage image by digest, the platform,
//! its instructions with their ARG values, the context files it reads
//! (`context`), the keys of the chains it copies from, and [`FORMAT`]. The
//! final image gets a key over the same for its stage and base.
//!
//! An entry (`entry`) is an OCI manifest in the cache repository
//! (`<output repository>/cache` unless the spec names one), tagged
//! `chain-<key>` or `image-<key>`: its config is what the chain reported,
//! its layers are the chain's exports (gzip tars already), so that a hit
//! costs a manifest GET and blob HEADs, and a restore or an assembly mounts
//! or reads the blobs where they are. An entry whose blobs the registry has
//! collected is a miss, never a failure.

pub mod context;
pub mod entry;
pub mod key;
pub mod lookup;

use crate::assemble::{CacheChainSpec, CacheExportSpec, CacheImageSpec, CacheStoreSpec};
use crate::contract::{CacheStore, Workspace};
use crate::plan::BuildPlan;

/// The version of everything a key covers that is not in its inputs: the
/// helper's export format, the key's own layout. Bumped, every key changes.
pub const FORMAT: &str = "slimforge-cache/1";

/// What the assembly stores, from the controller's [`CacheStore`] and the
/// plan: each unit's result and export archives where the workspace has
/// them, and the image's key.
pub fn store_spec(store: &CacheStore, plan: &BuildPlan, workspace: &Workspace) -> CacheStoreSpec {
    let chains = store
        .units
        .iter()
        .map(|(id, key)| {
            let exports = match (plan.chain(id), plan.extraction(id)) {
                (Some(chain), _) => chain.exports.as_slice(),
                (None, Some(extraction)) => extraction.exports.as_slice(),
                (None, None) => &[],
            };
            CacheChainSpec {
                key: key.clone(),
                chain: id.clone(),
                result: workspace.chain_result(id),
                exports: exports
                    .iter()
                    .map(|export| CacheExportSpec {
                        id: export.id.clone(),
                        path: workspace.export_archive(&export.id),
                    })
                    .collect(),
            }
        })
        .collect();
    CacheStoreSpec {
        repository: store.repository.clone(),
        chains,
        image: store.image.clone().map(|key| CacheImageSpec { key }),
    }
}
