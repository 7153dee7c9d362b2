//! The reconcile core, a pipeline of steps ([`reconcile`]): dereference the
//! inputs → validate → plan the desired objects → decide what to create and
//! delete → the status. Pure: no client, no clock but
//! the `now` it is handed, so every transition is tested with plain values.
//!
//! [`validate`](mod@validate) checks a spec and plans its Dockerfile;
//! `dereference` and `decide` are the steps of one pass; `pod_results`
//! reads what the pods report.

mod cache;
mod decide;
mod dereference;
mod pod_results;
pub mod validate;

pub use super::pods::{BuildId, FRESH_CACHES_ANNOTATION};
pub use validate::{
    Invalid, MAX_TIMEOUT, Validated, parse_duration, plan_spec, validate, validate_spec,
};

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::Resource;

use super::pods::{BuildObjects, Unit};
use super::status::Reason;
use super::{REBUILD_ANNOTATION, Settings};
use crate::api::{ImageBuild, ImageBuildStatus, Phase};
use crate::cache::lookup::{CacheView, LookupRequest};
use crate::plan::BuildPlan;

/// The largest plan that travels in an environment variable (Linux caps one
/// at 128 KiB).
const MAX_PLAN_BYTES: usize = 100 * 1024;
/// How often to look again while pods run (watches usually come first).
const POLL: Duration = Duration::from_secs(5);
/// How long a chain pod may wait for its cache volumes (no container
/// started) before it is made again with empty ones.
pub const CACHE_WAIT: Duration = Duration::from_secs(180);
/// How often to look again for a missing Secret or ConfigMap.
const MISSING_RETRY: Duration = Duration::from_secs(60);
/// Characters of a failure message kept in the status.
const MAX_MESSAGE: usize = 2048;

/// A pod's phase, as Kubernetes reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl PodPhase {
    fn as_str(self) -> &'static str {
        match self {
            PodPhase::Pending => "Pending",
            PodPhase::Running => "Running",
            PodPhase::Succeeded => "Succeeded",
            PodPhase::Failed => "Failed",
            PodPhase::Unknown => "Unknown",
        }
    }

    fn is_done(self) -> bool {
        matches!(self, PodPhase::Succeeded | PodPhase::Failed)
    }
}

/// What exists of one of the build's pods.
#[derive(Debug, Clone, PartialEq)]
pub struct PodState {
    pub name: String,
    pub generation: i64,
    /// Which rebuild of the generation ([`BuildId::rebuild`]).
    pub rebuild: u32,
    pub unit: usize,
    pub attempt: u32,
    pub phase: PodPhase,
    /// The node it was scheduled on.
    pub node: Option<String>,
    pub started: Option<Timestamp>,
    pub finished: Option<Timestamp>,
    /// The main container's exit code.
    pub exit_code: Option<i32>,
    /// The main container's result: its termination message, or the
    /// workspace's result file.
    pub result: Option<String>,
    /// A container waiting for a reason worth reporting (`ErrImagePull`).
    pub waiting: Option<Waiting>,
    /// The pod's own reason: `Evicted`, `Preempting`, `DeadlineExceeded`.
    pub reason: Option<String>,
    /// It has a deletion timestamp.
    pub deleting: bool,
    /// When the API server made it (`None`: not known, as locally).
    pub created: Option<Timestamp>,
    /// Some container of it (an init container too) has started: its
    /// volumes were attached and mounted.
    pub containers_started: bool,
    /// Its cache volumes were replaced by empty ones ([`FRESH_CACHES_ANNOTATION`]).
    pub fresh_caches: bool,
}

impl PodState {
    /// A pod of the generation's first build just created: pending,
    /// nothing known yet.
    pub fn new(name: String, generation: i64, unit: usize, attempt: u32) -> Self {
        PodState::of(name, BuildId::first(generation), unit, attempt)
    }

    /// A pod of `build` just created: pending, nothing known yet.
    pub fn of(name: String, build: BuildId, unit: usize, attempt: u32) -> Self {
        PodState {
            name,
            generation: build.generation,
            rebuild: build.rebuild,
            unit,
            attempt,
            phase: PodPhase::Pending,
            node: None,
            started: None,
            finished: None,
            exit_code: None,
            result: None,
            waiting: None,
            reason: None,
            deleting: false,
            created: None,
            containers_started: false,
            fresh_caches: false,
        }
    }

    /// The build the pod belongs to.
    pub fn build(&self) -> BuildId {
        BuildId {
            generation: self.generation,
            rebuild: self.rebuild,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    pub container: String,
    pub reason: String,
    pub message: String,
}

/// Everything the core is told about the world.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The build's pods, every generation and rebuild.
    pub pods: Vec<PodState>,
    /// The build's workspace claims: (name, the build it belongs to).
    pub claims: Vec<(String, BuildId)>,
    /// References that do not exist: (field, what is missing).
    pub missing: Vec<(String, String)>,
    /// The Dockerfile read from a ConfigMap context (`dockerfilePath`).
    pub dockerfile_from_context: Option<String>,
    /// The API refused a pod because of the namespace's Pod Security level.
    pub forbidden: Option<String>,
    /// The cache's answer to the decision's [`Decision::lookup`], for
    /// the build [`current_build`] names: never an earlier build's (a
    /// rebuild asks again, and may find new entries).
    pub cache: Option<CacheView>,
    /// What a trigger saw move (`BaseImageMoved`, `SourceMoved`): a new
    /// build of the same generation with that `status.buildReason`, once
    /// the build the status describes has finished (a running build is
    /// never interrupted). The shell reports it until such a build has
    /// started.
    pub triggered: Option<String>,
}

/// What to do now.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    pub create_claim: Option<PersistentVolumeClaim>,
    /// Cache volumes the pods to create mount: made when missing, never
    /// owned by the build, never deleted with it.
    pub cache_claims: Vec<PersistentVolumeClaim>,
    pub create_pods: Vec<Pod>,
    pub delete_pods: Vec<String>,
    pub delete_claims: Vec<String>,
    pub status: ImageBuildStatus,
    pub requeue_after: Option<Duration>,
    pub events: Vec<BuildEvent>,
    /// Ask the cache, then decide again with its answer in
    /// [`Observed::cache`]; nothing else in this decision is to be done.
    pub lookup: Option<LookupRequest>,
    /// The build this decision is about (the one the lookup is for).
    pub build: BuildId,
}

/// `status.buildReason` of a build the `slimforge.dev/rebuild` annotation
/// asked for.
pub const BUILD_REASON_REBUILD: &str = "RebuildRequested";

/// The [`REBUILD_ANNOTATION`]'s value on `ib`.
fn rebuild_annotation(ib: &ImageBuild) -> Option<&str> {
    ib.meta()
        .annotations
        .as_ref()?
        .get(REBUILD_ANNOTATION)
        .map(String::as_str)
}

/// Why a new build of the generation the status describes starts now, if
/// one does: its `status.buildReason`.
///
/// - Only once the build the status describes is terminal (Succeeded or
///   Failed): a running build is never interrupted, the request waits and
///   the first pass after it ends starts the new build.
/// - A [`REBUILD_ANNOTATION`] value other than `status.observedRebuild`
///   asks for it (`RebuildRequested`); an absent annotation asks nothing.
/// - Otherwise what a trigger saw move ([`Observed::triggered`]).
/// - Never for a new generation: its first build is the new build, and
///   records the annotation's value (so an annotation present at creation,
///   or set in the same change as the spec, starts no extra build).
pub fn rebuild_reason(ib: &ImageBuild, triggered: Option<&str>) -> Option<String> {
    let status = ib.status.as_ref()?;
    let generation = ib.meta().generation.unwrap_or(1);
    if status.observed_generation != Some(generation)
        || !status.phase.is_some_and(Phase::is_terminal)
    {
        return None;
    }
    match rebuild_annotation(ib) {
        Some(value) if status.observed_rebuild.as_deref() != Some(value) => {
            Some(BUILD_REASON_REBUILD.to_string())
        }
        _ => triggered.map(str::to_string),
    }
}

/// The build a pass over `ib` works on: a new generation's first build
/// (rebuild 0: a new generation resets the count), the build the status
/// describes, or the next rebuild of its generation when
/// [`rebuild_reason`] says one starts.
pub fn current_build(ib: &ImageBuild, triggered: Option<&str>) -> BuildId {
    let generation = ib.meta().generation.unwrap_or(1);
    let status = ib.status.clone().unwrap_or_default();
    if status.observed_generation != Some(generation) {
        return BuildId::first(generation);
    }
    let rebuild = status.rebuilds.unwrap_or(0);
    BuildId {
        generation,
        rebuild: match rebuild_reason(ib, triggered) {
            Some(_) => rebuild + 1,
            None => rebuild,
        },
    }
}

/// The build the status describes has finished and no new one is asked
/// for: a pass only keeps its TTL.
pub fn finished(ib: &ImageBuild, triggered: Option<&str>) -> bool {
    ib.status.as_ref().is_some_and(|s| {
        s.phase.is_some_and(Phase::is_terminal)
            && s.observed_generation == Some(ib.meta().generation.unwrap_or(1))
    }) && rebuild_reason(ib, triggered).is_none()
}

/// An event for the ImageBuild (the Kubernetes shell records them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildEvent {
    pub warning: bool,
    pub reason: Reason,
    pub note: String,
}

/// The core: what to do for `ib` given what exists, at `now`.
///
/// A pipeline (its steps are listed in `Pass::steps`): a finished build
/// only keeps its TTL, unless a rebuild is asked for ([`rebuild_reason`]);
/// otherwise older builds (generations, or rebuilds of this one) go, the context is
/// dereferenced (a git context's clone read), the spec validated once,
/// missing references waited for, the pods planned, then decided (fail,
/// succeed or start what can start) and the progress written in the status.
/// A step that ends the reconcile has made the whole decision.
pub fn reconcile(
    ib: &ImageBuild,
    observed: &Observed,
    settings: &Settings,
    now: Timestamp,
) -> Decision {
    let pass = Pass::new(ib, observed, settings, now);
    let mut decision = Decision::default();
    // Whether a step ended the reconcile early or all ran, the decision is made.
    let _ = pass.steps(&mut decision);
    decision
}

/// One reconcile of one ImageBuild: its inputs, and what every step needs
/// to know of the status it had.
struct Pass<'a> {
    ib: &'a ImageBuild,
    observed: &'a Observed,
    settings: &'a Settings,
    now: Timestamp,
    generation: i64,
    /// The build this pass works on ([`current_build`]).
    build: BuildId,
    previous: ImageBuildStatus,
    /// The status describes this build already (its generation, and no
    /// rebuild starts now).
    same_build: bool,
    /// A new build of the status's generation starts now, for this
    /// reason ([`rebuild_reason`]).
    rebuild_reason: Option<String>,
    /// When this build started (now, if it hasn't yet).
    start: Timestamp,
}

impl<'a> Pass<'a> {
    fn new(
        ib: &'a ImageBuild,
        observed: &'a Observed,
        settings: &'a Settings,
        now: Timestamp,
    ) -> Self {
        let generation = ib.meta().generation.unwrap_or(1);
        let previous = ib.status.clone().unwrap_or_default();
        let triggered = observed.triggered.as_deref();
        let rebuild_reason = rebuild_reason(ib, triggered);
        let build = current_build(ib, triggered);
        let same_build =
            previous.observed_generation == Some(generation) && rebuild_reason.is_none();
        let start = match (&previous.start_time, same_build) {
            (Some(start), true) => start.0,
            _ => now,
        };
        Pass {
            ib,
            observed,
            settings,
            now,
            generation,
            build,
            previous,
            same_build,
            rebuild_reason,
            start,
        }
    }

    /// dereference → validate → plan → decide → status, each step either
    /// going on or ending the reconcile with its decision made.
    fn steps(&self, decision: &mut Decision) -> ControlFlow<()> {
        decision.build = self.build;
        self.keep_finished_build(decision)?;
        let old_build_left = self.retire_previous_builds(decision);
        decision.status = self.fresh_status();
        // dereference
        let dockerfile = self.dereference(&mut decision.status);
        // validate
        let inputs = self.validate(dockerfile, decision)?;
        self.refuse_if_forbidden(decision)?;
        self.wait_for_missing_references(decision)?;
        self.wait_for_previous_build(old_build_left, decision)?;
        let cache = self.consult_cache(&inputs, decision)?;
        // plan
        let planned = self.plan(&inputs, cache, &mut decision.status);
        self.end_when_image_cached(cache, &planned, decision)?;
        // decide
        let failure = self.retry_or_find_failure(&planned, decision);
        self.end_on_failure(failure, &planned, decision)?;
        self.end_when_assembled(&planned, decision)?;
        self.end_when_rebased(&planned, decision)?;
        self.say_why_no_rebase(&planned, decision);
        self.start_ready_pods(&planned, decision);
        // status
        self.report_progress(&planned, decision);
        ControlFlow::Continue(())
    }
}

/// Where the Dockerfile stands once the context is dereferenced.
enum Dockerfile {
    /// Known now: the spec's, or the file read from the ConfigMap or the
    /// clone (`None`: the context has no such file).
    Known(Option<String>),
    /// A git context not cloned yet: the plan waits for it.
    Cloning,
    /// The clone failed, or what it reported can't be read.
    CloneFailed(String),
}

/// What the validate step hands on.
struct Inputs {
    timeout: Duration,
    /// `None` only while a git context is cloned.
    plan: Option<BuildPlan>,
}

/// The plan step's result: the build's pods as planned, and the latest
/// attempt of each that exists.
struct Planned<'a> {
    units: Vec<Unit>,
    /// Units the cache had, done without a pod: their keys.
    cached: BTreeMap<usize, String>,
    /// Where a rebase stands (the units are the rebase's while it runs).
    rebase: cache::Rebase,
    objects: BuildObjects<'a>,
    latest: BTreeMap<usize, &'a PodState>,
    deadline: Timestamp,
    timeout: Duration,
}

impl Planned<'_> {
    fn succeeded(&self, unit: &usize) -> bool {
        self.cached.contains_key(unit)
            || self
                .latest
                .get(unit)
                .is_some_and(|p| p.phase == PodPhase::Succeeded)
    }

    /// Each unit with a pod, and its latest pod.
    fn with_pods(&self) -> impl Iterator<Item = (&Unit, &PodState)> {
        self.units
            .iter()
            .filter_map(|u| self.latest.get(&u.n).map(|p| (u, *p)))
    }
}

/// The node every pod of a ReadWriteOnce build runs on: the first scheduled pod's.
fn pin_node(objects: &BuildObjects<'_>, latest: &BTreeMap<usize, &PodState>) -> Option<String> {
    if !objects.pinned() {
        return None;
    }
    latest.values().find_map(|p| p.node.clone())
}

/// Pods and claims of a finished build go after `ttlSecondsAfterFinished`.
fn expire(
    ib: &ImageBuild,
    observed: &Observed,
    status: &ImageBuildStatus,
    now: Timestamp,
    decision: &mut Decision,
) {
    let Some(ttl) = ib.spec.ttl_seconds_after_finished else {
        return;
    };
    let finished = status.completion_time.as_ref().map(|t| t.0).unwrap_or(now);
    let expires = finished + SignedDuration::from_secs(ttl);
    if now >= expires {
        for pod in observed.pods.iter().filter(|p| !p.deleting) {
            decision.delete_pods.push(pod.name.clone());
        }
        for (claim, _) in &observed.claims {
            decision.delete_claims.push(claim.clone());
        }
    } else if !observed.pods.is_empty() || !observed.claims.is_empty() {
        decision.requeue_after = ttl_requeue(ib, finished, now);
    }
}

fn ttl_requeue(ib: &ImageBuild, finished: Timestamp, now: Timestamp) -> Option<Duration> {
    let ttl = ib.spec.ttl_seconds_after_finished?;
    let expires = finished + SignedDuration::from_secs(ttl);
    Duration::try_from(expires.duration_since(now))
        .ok()
        .map(|d| d.max(Duration::from_secs(1)))
}

fn spec_timeout_text(ib: &ImageBuild, timeout: Duration) -> String {
    ib.spec
        .timeout
        .clone()
        .unwrap_or_else(|| format!("{}s", timeout.as_secs()))
}

/// Node pressure, preemption, a deletion and the like: not the build's
/// fault. The controller deletes a running pod of its build only when the
/// build ends, so a pod that failed while being deleted was deleted by
/// someone else (by hand, a drain): the kubelet killed it, and without this
/// A warning event; its note cut to [`MAX_MESSAGE`].
fn warning(reason: Reason, note: &str) -> BuildEvent {
    BuildEvent {
        warning: true,
        reason,
        note: truncate(note),
    }
}

/// A normal event.
fn notice(reason: Reason, note: String) -> BuildEvent {
    BuildEvent {
        warning: false,
        reason,
        note,
    }
}

/// At most [`MAX_MESSAGE`] bytes, cut on a character boundary, keeping the start.
fn truncate(text: &str) -> String {
    if text.len() <= MAX_MESSAGE {
        return text.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_build(context: &str, dockerfile: &str) -> ImageBuild {
        serde_yaml::from_str(&format!(
            "apiVersion: slimforge.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: app, namespace: ns, generation: 1}}\n\
             spec: {{context: {context}, {dockerfile}, output: {{image: 'r.example/app:1'}}, timeout: 5m}}\n"
        ))
        .expect("a valid test manifest")
    }

    fn inputs(ib: &ImageBuild, dockerfile: Dockerfile) -> Result<Inputs, Invalid> {
        let observed = Observed::default();
        let settings = Settings::default();
        Pass::new(ib, &observed, &settings, Timestamp::UNIX_EPOCH).inputs(dockerfile)
    }

    #[test]
    fn validate_is_validate_spec_then_plan_spec() {
        let ib = image_build("{inline: {}}", "dockerfile: 'FROM busybox'");
        let settings = Settings::default();
        let whole = validate(&ib, &settings, None).expect("valid");
        let timeout = validate_spec(&ib, &settings).expect("valid spec");
        let halves = plan_spec(&ib, timeout, None).expect("plannable");
        assert_eq!((whole.plan, whole.timeout), (halves.plan, halves.timeout));
        assert_eq!(timeout, Duration::from_secs(300));
    }

    #[test]
    fn a_dockerfile_path_is_read_from_the_context_handed_over() {
        let ib = image_build(
            "{configMap: {name: src}}",
            "dockerfilePath: build/Dockerfile",
        );
        let text = "FROM busybox\nRUN true";
        let from_context = plan_spec(&ib, Duration::from_secs(1), Some(text)).expect("plan");
        let inline = image_build("{inline: {}}", "dockerfile: 'FROM busybox\n\n  RUN true'");
        let inline = plan_spec(&inline, Duration::from_secs(1), None).expect("plan");
        assert_eq!(from_context.plan, inline.plan);
        let missing = plan_spec(&ib, Duration::from_secs(1), None).unwrap_err();
        assert_eq!(missing.reason, Reason::InvalidSpec);
        assert_eq!(
            missing.message,
            "spec.dockerfilePath `build/Dockerfile`: no such file in the context"
        );
    }

    #[test]
    fn while_cloning_only_the_spec_is_checked() {
        let ib = image_build(
            "{git: {url: 'https://git.example/app'}}",
            "dockerfilePath: Dockerfile",
        );
        let inputs = inputs(&ib, Dockerfile::Cloning)
            .map_err(|i| i.message)
            .unwrap();
        assert!(inputs.plan.is_none());
        assert_eq!(inputs.timeout, Duration::from_secs(300));
    }

    #[test]
    fn a_failed_clone_fails_before_the_spec_is_looked_at() {
        let ib = image_build(
            "{git: {url: 'ssh://git.example/app'}}",
            "dockerfilePath: Dockerfile",
        );
        let invalid = inputs(&ib, Dockerfile::CloneFailed("no such repository".into()))
            .err()
            .expect("the clone's failure");
        assert_eq!(invalid.reason, Reason::ContextFailed);
        assert_eq!(invalid.message, "no such repository");
        let invalid = inputs(&ib, Dockerfile::Cloning).err().expect("the ssh URL");
        assert_eq!(invalid.reason, Reason::InvalidSpec);
    }

    #[test]
    fn a_known_dockerfile_is_planned() {
        let ib = image_build("{inline: {}}", "dockerfile: 'FROM busybox'");
        let inputs = inputs(&ib, Dockerfile::Known(None))
            .map_err(|i| i.message)
            .unwrap();
        assert!(inputs.plan.is_some());
        let ib = image_build("{inline: {}}", "dockerfile: 'FROM scratch\\nRUN true'");
        let invalid = self::inputs(&ib, Dockerfile::Known(None))
            .err()
            .expect("scratch");
        assert_eq!(invalid.reason, Reason::InvalidDockerfile);
    }
}
