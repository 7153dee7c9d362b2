//! The operator: a pure reconcile core ([`reconcile`](mod@reconcile)) that decides, from an
//! ImageBuild and what exists, which objects to create or delete and what
//! the status says; pure builders for those objects ([`pods`]); one pass of
//! observe → reconcile → apply ([`driver`]); and the shells that carry the
//! decisions out (Kubernetes in [`cluster`], and the local podman runner in
//! [`crate::local`]).

pub mod cluster;
pub mod driver;
pub mod metrics;
pub mod pods;
pub mod rbac;
pub mod reconcile;
pub mod run;
pub mod status;
pub mod triggers;

use std::time::Duration;

pub use reconcile::{BuildId, Decision, Observed, PodPhase, PodState, reconcile};

/// Every child carries it: the controller watches only its own pods.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "slimforge";
/// The ImageBuild a child belongs to.
pub const BUILD_LABEL: &str = "slimforge.dev/build";
/// The generation of the ImageBuild a child was made for.
pub const GENERATION_LABEL: &str = "slimforge.dev/generation";
/// What a pod does: `context`, `chain`, `extraction`, `probe`, `runtime`, `assemble`.
pub const ROLE_LABEL: &str = "slimforge.dev/role";
/// The pod's place in the build (`n` of `<ib>-g<generation>-<n>`).
pub const UNIT_LABEL: &str = "slimforge.dev/unit";
/// Which attempt of that unit (after an eviction).
pub const ATTEMPT_LABEL: &str = "slimforge.dev/attempt";
/// The stage (chain id) a pod runs: stage names are not label values.
pub const STAGE_ANNOTATION: &str = "slimforge.dev/stage";
/// On an ImageBuild: a value other than the one `status.observedRebuild`
/// answered asks for a new build of the same generation (`kubectl annotate
/// ib NAME slimforge.dev/rebuild=$(date +%s) --overwrite`). It never
/// interrupts a running build: the rebuild starts once that one has
/// finished. Present when the resource is created, or changed together
/// with the spec, it starts no extra build: the new generation's build
/// answers it.
pub const REBUILD_ANNOTATION: &str = "slimforge.dev/rebuild";
/// On a rebuild's pods and claim: which rebuild of the generation (`k` of
/// `<ib>-g<generation>b<k>-<n>`); absent on a generation's first build.
pub const REBUILD_LABEL: &str = "slimforge.dev/rebuild";

/// The uid the assemble pod runs as (non-root, no name needed).
pub const ASSEMBLE_UID: i64 = 65532;

/// What the controller is configured with (not per build).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The operator image: it provides the helper and runs the assembly.
    pub helper_image: String,
    /// The slimforge binary inside that image.
    pub helper_path: String,
    /// Evicted or preempted pods are recreated this many times.
    pub max_pod_retries: u32,
    /// A build's deadline when the spec gives none.
    pub default_timeout: Duration,
    /// Cache volumes' size when the spec gives none (`--cache-volume-size`).
    pub cache_volume_size: String,
    /// Cache volumes' StorageClass when the spec gives none; `None`: the
    /// cluster's default.
    pub cache_volume_class: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            helper_image: format!("ghcr.io/slimforge/slimforge:{}", env!("CARGO_PKG_VERSION")),
            helper_path: "/slimforge".into(),
            max_pod_retries: 2,
            default_timeout: Duration::from_secs(30 * 60),
            cache_volume_size: pods::DEFAULT_CACHE_VOLUME_SIZE.into(),
            cache_volume_class: None,
        }
    }
}
