//! The contract between the controller (or `slimforge build`) and the build
//! pods: where things are mounted, which environment variables carry what,
//! the shared workspace's layout, and the results each pod leaves there.
//! Both sides use these names and types; nothing else spells them.
//!
//! Workspace (a volume mounted at [`WORKSPACE_MOUNT`] in every pod):
//! - `context/`: the build context when [`CONTEXT_ENV`] gives none (the
//!   helper's default);
//! - [`SOURCE_DIR`]`/`: a git context's checkout (the context pod's);
//! - `whoami`: the image user's `uid:gid`, written by a chain pod's init
//!   container (`stage whoami`);
//! - `exports/<export-id>.tar` ([`export_archive`]): what later stages copy
//!   from a chain or an image; [`SNAPSHOT_LAYER`]: the runtime pod's layer;
//! - `results/`: one JSON file per pod, also its termination message when it
//!   fits in [`MAX_RESULT_BYTES`]: [`chain_result`] ([`ChainResult`]),
//!   [`PROBE_RESULT`] ([`FinalRecipe`]), [`CONTEXT_RESULT`]
//!   ([`CloneResult`]), [`ASSEMBLE_RESULT`] ([`AssembleResult`]); a pod that
//!   failed before its work writes [`failure_json`];
//! - `tmp/`: scratch space ([`scratch_name`]), removed when done with.
//!
//! `exports/`, `results/` and `tmp/` are 1777: pods run as different users.

mod recipe;
mod results;

use std::path::{Path, PathBuf};

pub use recipe::{
    BaseEnvironment, ExportSource, FinalRecipe, InlineFile, LayerOrigin, RecipeLayer,
};
pub use results::{
    AssembleResult, ChainFailure, ChainResult, CloneResult, MAX_RESULT_BYTES, failure_json,
    keep_first_bytes, keep_last_bytes, publish_result, write_termination_message,
};

/// Where the shared workspace is mounted in every pod.
pub const WORKSPACE_MOUNT: &str = "/.slimforge";
/// Where the helper is copied to in pods that run a stage image.
pub const HELPER_MOUNT: &str = "/.slimforge-bin";
/// Where a ConfigMap context is mounted.
pub const CONTEXT_MOUNT: &str = "/.slimforge-src";
/// Where the push credentials are mounted in the assemble pod.
pub const AUTH_MOUNT: &str = "/.slimforge-auth";
/// Where the pull secrets are mounted in the assemble pod (one directory each).
pub const PULL_AUTH_MOUNT: &str = "/.slimforge-pull";
/// Where the git credentials Secret is mounted in the context pod.
pub const GIT_CREDENTIALS_MOUNT: &str = "/.slimforge-git";
/// Where a chain pod mounts the cache volume of one `--mount=type=cache`
/// id: this prefix and the volume's name ([`cache_volume`]).
pub const CACHE_MOUNT_PREFIX: &str = "/.slimforge-cache-";
/// Where a chain pod mounts the build secrets its RUNs ask for, one file
/// per secret id.
pub const SECRETS_MOUNT: &str = "/.slimforge-secrets";
/// A chain pod's memory-backed scratch: tmpfs mounts and secret copies.
pub const MEMORY_MOUNT: &str = "/.slimforge-memory";
/// `{"<volume>": bytes}`: the size each cache volume is kept under.
pub const CACHE_LIMITS_ENV: &str = "SLIMFORGE_CACHE_LIMITS";
/// The label every cache volume carries, its value [`cache_volume`]'s hash.
pub const CACHE_LABEL: &str = "slimforge.dev/cache";
/// The annotation holding a cache volume's id as written.
pub const CACHE_ID_ANNOTATION: &str = "slimforge.dev/cache-id";

/// The volume (PVC, or podman volume) of a cache id in a namespace:
/// `slimforge-cache-` then the id made a name (letters, digits and `-`,
/// at most 30 characters) and a hash of the whole id.
pub fn cache_volume(id: &str) -> String {
    let mut slug = String::new();
    for c in id.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug: String = slug.chars().take(30).collect();
    let slug = slug.trim_end_matches('-');
    let hash = cache_hash(id);
    if slug.is_empty() {
        format!("slimforge-cache-{hash}")
    } else {
        format!("slimforge-cache-{slug}-{hash}")
    }
}

/// Ten hex digits of the id's SHA-256: its volume's label value.
pub fn cache_hash(id: &str) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(id.as_bytes())[..5])
}

/// Where a chain pod mounts the volume of cache `id`.
pub fn cache_mount(id: &str) -> String {
    format!("{CACHE_MOUNT_PREFIX}{}", cache_hash(id))
}

/// The build plan's JSON, in every pod that evaluates the Dockerfile.
pub const PLAN_ENV: &str = "SLIMFORGE_PLAN";
/// The build context's source (JSON, see [`crate::stage::context`]).
pub const CONTEXT_ENV: &str = "SLIMFORGE_CONTEXT";
/// The image's WorkingDir, for a chain started elsewhere because its
/// runtime would not create a missing one (podman's `kube play`).
pub const WORKDIR_ENV: &str = "SLIMFORGE_WORKDIR";
/// What the assemble pod writes to the cache after its push
/// ([`CacheStore`], JSON).
pub const CACHE_STORE_ENV: &str = "SLIMFORGE_CACHE_STORE";
/// What the git context pod keys its files for ([`ContextPlanRequest`], JSON).
pub const PLAN_REQUEST_ENV: &str = "SLIMFORGE_PLAN_REQUEST";
/// The `slimforge cache restore` spec's JSON, when no `--spec` file is given.
pub const RESTORE_ENV: &str = "SLIMFORGE_RESTORE";
/// What the assemble pod rebases ([`RebaseRequest`], JSON): set, it puts
/// cached layers on the base instead of assembling the workspace's.
pub const REBASE_ENV: &str = "SLIMFORGE_REBASE";
/// The final stage's recipe ([`FinalRecipe`], JSON) the stage cache had:
/// the assembly takes it instead of the probe's result, and no probe ran.
pub const RECIPE_ENV: &str = "SLIMFORGE_RECIPE";
/// The variables above: the pods' plumbing, never part of a RUN's or the
/// image's environment.
pub const POD_ENV: [&str; 9] = [
    PLAN_ENV,
    CONTEXT_ENV,
    WORKDIR_ENV,
    CACHE_STORE_ENV,
    PLAN_REQUEST_ENV,
    RESTORE_ENV,
    REBASE_ENV,
    RECIPE_ENV,
    CACHE_LIMITS_ENV,
];

/// The build context, in the workspace.
pub const CONTEXT_DIR: &str = "context";
/// Where the context pod checks a git context out, in the workspace.
pub const SOURCE_DIR: &str = "source";
/// The image user's `uid:gid`, in the workspace.
pub const WHOAMI: &str = "whoami";
/// Exports, in the workspace.
pub const EXPORTS_DIR: &str = "exports";
/// Results, in the workspace.
pub const RESULTS_DIR: &str = "results";
/// Scratch space, in the workspace.
pub const TMP_DIR: &str = "tmp";
/// The workspace directories pods of different users write in (1777).
pub const SHARED_DIRS: [&str; 3] = [EXPORTS_DIR, RESULTS_DIR, TMP_DIR];
/// The runtime pod's snapshot layer, in the workspace.
pub const SNAPSHOT_LAYER: &str = "exports/snapshot.tar";
/// The probe's answer ([`FinalRecipe`]), in the workspace.
pub const PROBE_RESULT: &str = "results/probe.json";
/// The assembly's answer ([`AssembleResult`]), in the workspace.
pub const ASSEMBLE_RESULT: &str = "results/assemble.json";
/// The context pod's answer ([`CloneResult`]), in the workspace.
pub const CONTEXT_RESULT: &str = "results/context.json";

/// A chain's (or an extraction's) result file, in the workspace:
/// `results/<chain-id>.json`, a `/` in the id written `_`.
pub fn chain_result(chain: &str) -> String {
    format!("{RESULTS_DIR}/{}.json", chain.replace('/', "_"))
}

/// An export's archive, in the workspace: `exports/<export-id>.tar`.
pub fn export_archive(id: &str) -> String {
    format!("{EXPORTS_DIR}/{}", export_file_name(id))
}

/// An export's archive's file name in [`EXPORTS_DIR`]: `<export-id>.tar`.
pub fn export_file_name(id: &str) -> String {
    format!("{id}.tar")
}

/// The workspace as one pod sees it: its files by their role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace(PathBuf);

impl Workspace {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self(root.into())
    }

    pub fn root(&self) -> &Path {
        &self.0
    }

    /// `relative` (one of this module's names) in this workspace.
    pub fn join(&self, relative: &str) -> PathBuf {
        self.0.join(relative)
    }

    pub fn context(&self) -> PathBuf {
        self.join(CONTEXT_DIR)
    }

    pub fn exports(&self) -> PathBuf {
        self.join(EXPORTS_DIR)
    }

    pub fn tmp(&self) -> PathBuf {
        self.join(TMP_DIR)
    }

    pub fn whoami(&self) -> PathBuf {
        self.join(WHOAMI)
    }

    pub fn export_archive(&self, id: &str) -> PathBuf {
        self.join(&export_archive(id))
    }

    pub fn chain_result(&self, chain: &str) -> PathBuf {
        self.join(&chain_result(chain))
    }

    /// A scratch directory or file in `tmp/` for `chain` ([`scratch_name`]).
    pub fn scratch(&self, prefix: &str, chain: &str) -> PathBuf {
        self.tmp().join(scratch_name(prefix, chain))
    }
}

/// `<prefix>-<chain>` with the chain id made a safe file name: characters
/// other than ASCII letters, digits, `-`, `_` and `.` become `_`, and a
/// short hash of the id then keeps changed names apart.
pub fn scratch_name(prefix: &str, chain: &str) -> String {
    let safe: String = chain
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if safe == chain && !chain.is_empty() {
        return format!("{prefix}-{chain}");
    }
    use sha2::Digest as _;
    let hash = hex::encode(sha2::Sha256::digest(chain.as_bytes()));
    format!("{prefix}-{safe}-{}", &hash[..8])
}

/// The entries the assemble pod writes once the image is pushed: one per
/// chain or extraction that ran (its exports and result are in the
/// workspace), and the image's.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheStore {
    /// `registry/repository`.
    pub repository: String,
    /// Chain or extraction id → key.
    #[serde(default)]
    pub units: std::collections::BTreeMap<String, String>,
    /// The image's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The image's layers key (its own layers and recipe, for a rebase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<String>,
    /// The recipe key, when the probe ran: its answer is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<String>,
    /// Every chain's and extraction's key: the final stage's `COPY --from`
    /// layers are cached under keys made of them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub keys: std::collections::BTreeMap<String, String>,
    /// The entries of the units the cache had: the assembly reads their
    /// exports from the cache repository itself when it must make a layer
    /// of them (no restore pod runs for the assembly).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hits: Vec<crate::cache::entry::ChainEntry>,
}

/// A rebase: the cache repository and the layers entry the lookup found.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RebaseRequest {
    /// `registry/repository`.
    pub repository: String,
    pub entry: crate::cache::entry::LayersEntry,
}

/// The rebase pod's result: the image, or why the cached layers do not
/// fit the base as it is now (the build then runs as usual).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RebaseOutcome {
    Rebased(AssembleResult),
    Refused(String),
}

/// What the git context pod plans the build with, once it has the
/// checkout, to digest the files each COPY/ADD reads
/// ([`CloneResult::context_digests`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContextPlanRequest {
    /// The spec's inline Dockerfile (else the clone reads `dockerfilePath`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    #[serde(default)]
    pub build_args: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}
