//! The stage cache: builds skip what has not changed.
//!
//! Every chain (and extraction) gets a key, a SHA-256 over everything that
//! determines its exports (`key`): the stage image by digest, the platform,
//! its instructions with their ARG values, the context files it reads
//! (`context`), the keys of the chains it copies from, and [`FORMAT`]. The
//! final image gets a key over the same for its stage and base; its own
//! layers one without the base's digest (a rebase puts them on a moved
//! base), the probe's answer one over the base and the final stage's steps,
//! and each final `COPY --from` layer one over the probe's layer and the
//! keys of the units it reads (`key::layer_key`).
//!
//! An entry (`entry`) is an OCI manifest in the cache repository
//! (`<output repository>/cache` unless the spec names one), tagged
//! `chain-`, `image-`, `layers-`, `recipe-` or `copy-<key>`: its config is
//! what the unit reported, its layers are the chain's exports (gzip tars
//! already) or the image's layer blobs, so that a hit costs a manifest GET
//! and blob HEADs, and a restore or an assembly mounts or reads the blobs
//! where they are. An entry whose blobs the registry has collected is a
//! miss, never a failure.

pub mod context;
pub mod entry;
pub mod key;
pub mod lookup;

/// The version of everything a key covers that is not in its inputs: the
/// helper's export format, the key's own layout. Bumped, every key changes.
pub const FORMAT: &str = "slimforge-cache/1";
