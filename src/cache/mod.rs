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

/// The version of everything a key covers that is not in its inputs: the
/// helper's export format, the key's own layout. Bumped, every key changes.
pub const FORMAT: &str = "slimforge-cache/1";
