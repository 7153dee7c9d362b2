//! The objects of one build generation, built from the ImageBuild and its
//! plan: the workspace claim and the pods of the data flow in
//! docs/architecture.md. Pure: the same inputs give the same objects, byte
//! for byte.
//!
//! - `units`: what pods a build has ([`Unit`], [`UnitKind`])
//!   and the identity each carries ([`UnitIdentity`]).
//! - `objects`: [`BuildObjects`], the claim and each unit's pod (metadata,
//!   placement, volumes).
//! - `containers`: the containers of the chain, extraction, probe and
//!   assembly pods, and their volumes and mounts.
//! - `context_pod`: the git build's context pod, which clones the repository.
//! - `mounts`: the volumes of RUN `--mount`s (caches, secrets, memory) and
//!   the cache claims.
//! - `security`: the restricted and stage security contexts.

mod cache;
mod containers;
mod context_pod;
#[cfg(test)]
mod fixtures;
mod mounts;
mod objects;
mod security;
mod units;

pub use self::containers::builder_images;
pub use self::mounts::{DEFAULT_CACHE_VOLUME_SIZE, FRESH_CACHES_ANNOTATION};
pub use self::objects::{BuildObjects, DEFAULT_WORKSPACE_SIZE, claim_name, pod_name};
pub use self::security::{restricted_container_security, restricted_pod_security};
pub use self::units::{
    BuildId, CONTEXT_STAGE, CONTEXT_UNIT, REBASE_UNIT, Unit, UnitIdentity, UnitKind, build_units,
    context_unit, rebase_unit, rebase_units, units,
};
