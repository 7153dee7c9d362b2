//! The reconcile core: dereferenced inputs → validate → the desired objects
//! → what to create and delete → the status. Pure: no client, no clock but
//! the `now` it is handed, so every transition is tested with plain values.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;

use super::Settings;
use super::pods::{
    BuildObjects, CONTEXT_UNIT, Unit, UnitKind, build_units, claim_name, context_unit,
};
use super::status::{BuildState, conditions};
use crate::api::{
    ImageBuild, ImageBuildStatus, ImageStatus, MAX_INLINE_CONTEXT_BYTES, Phase, SourceStatus,
    StageStatus, human_size,
};
use crate::contract::{AssembleResult, ChainFailure, CloneResult};
use crate::plan::{BuildPlan, PlanRequest};

/// The largest plan that travels in an environment variable (Linux caps one
/// at 128 KiB).
const MAX_PLAN_BYTES: usize = 100 * 1024;
/// How often to look again while pods run (watches usually come first).
const POLL: Duration = Duration::from_secs(5);
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
}

impl PodState {
    /// A pod just created: pending, nothing known yet.
    pub fn new(name: String, generation: i64, unit: usize, attempt: u32) -> Self {
        PodState {
            name,
            generation,
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
    /// The build's pods, every generation.
    pub pods: Vec<PodState>,
    /// The build's workspace claims: (name, generation).
    pub claims: Vec<(String, i64)>,
    /// References that do not exist: (field, what is missing).
    pub missing: Vec<(String, String)>,
    /// The Dockerfile read from a ConfigMap context (`dockerfilePath`).
    pub dockerfile_from_context: Option<String>,
    /// The API refused a pod because of the namespace's Pod Security level.
    pub forbidden: Option<String>,
}

/// What to do now.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    pub create_claim: Option<PersistentVolumeClaim>,
    pub create_pods: Vec<Pod>,
    pub delete_pods: Vec<String>,
    pub delete_claims: Vec<String>,
    pub status: ImageBuildStatus,
    pub requeue_after: Option<Duration>,
    pub events: Vec<BuildEvent>,
}

/// An event for the ImageBuild (the Kubernetes shell records them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildEvent {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// Why a spec can't be built, for `Ready=False`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub reason: &'static str,
    pub message: String,
}

/// The ImageBuild as validated: its plan and parameters.
#[derive(Debug, Clone)]
pub struct Validated {
    pub plan: BuildPlan,
    pub timeout: Duration,
}

/// Checks the spec and plans the Dockerfile; errors name the field or line.
/// For a git context, `dockerfile_from_context` is the context pod's.
pub fn validate(
    ib: &ImageBuild,
    settings: &Settings,
    dockerfile_from_context: Option<&str>,
) -> Result<Validated, Invalid> {
    let timeout = validate_spec(ib, settings)?;
    let spec = &ib.spec;
    let context = &spec.context;
    let invalid = |message: String| Invalid {
        reason: "InvalidSpec",
        message,
    };
    let dockerfile = match (&spec.dockerfile, &spec.dockerfile_path) {
        (Some(text), None) => text.clone(),
        (None, Some(path)) => {
            let from_inline = context
                .inline
                .as_ref()
                .and_then(|files| files.get(path.trim_start_matches("./")));
            match from_inline.map(String::as_str).or(dockerfile_from_context) {
                Some(text) => text.to_string(),
                None => {
                    return Err(invalid(format!(
                        "spec.dockerfilePath `{path}`: no such file in the context"
                    )));
                }
            }
        }
        _ => {
            return Err(invalid(
                "spec: give exactly one of dockerfile and dockerfilePath".into(),
            ));
        }
    };
    let request = PlanRequest {
        dockerfile,
        build_args: spec.build_args.clone(),
        target: spec.target.clone().filter(|t| !t.is_empty()),
        platform: spec.platform.clone(),
    };
    let plan = request.plan().map_err(|e| Invalid {
        reason: "InvalidDockerfile",
        message: format!("{}: {e}", field_of_plan_error(spec.dockerfile.is_some())),
    })?;
    if let Some(chain) = plan.chains.iter().find(|c| c.image == "scratch") {
        let line = chain.stages.first().map(|s| s.stage.line).unwrap_or(0);
        return Err(Invalid {
            reason: "InvalidDockerfile",
            message: format!(
                "line {line}: stage `{}` is FROM scratch and must run as a pod, which needs an image; copy its files into the final stage instead",
                chain.id
            ),
        });
    }
    let plan_bytes = serde_json::to_vec(&plan).map(|v| v.len()).unwrap_or(0);
    if plan_bytes > MAX_PLAN_BYTES {
        return Err(Invalid {
            reason: "InvalidDockerfile",
            message: format!(
                "the build plan is {plan_bytes} bytes, more than the {MAX_PLAN_BYTES} a pod can be handed"
            ),
        });
    }
    Ok(Validated { plan, timeout })
}

/// Checks everything but the Dockerfile (which a git context provides only
/// after the clone); returns the build's timeout.
pub fn validate_spec(ib: &ImageBuild, settings: &Settings) -> Result<Duration, Invalid> {
    let spec = &ib.spec;
    let invalid = |message: String| Invalid {
        reason: "InvalidSpec",
        message,
    };
    crate::oci::reference::parse(&spec.output.image)
        .map_err(|e| invalid(format!("spec.output.image `{}`: {e}", spec.output.image)))?;
    for (i, tag) in spec.output.additional_tags.iter().enumerate() {
        if !crate::oci::reference::valid_tag(tag) {
            return Err(invalid(format!(
                "spec.output.additionalTags[{i}] `{tag}`: not a valid tag"
            )));
        }
    }
    let timeout = match &spec.timeout {
        None => settings.default_timeout,
        Some(text) => {
            parse_duration(text).map_err(|why| invalid(format!("spec.timeout `{text}`: {why}")))?
        }
    };
    if spec.ttl_seconds_after_finished.is_some_and(|t| t < 0) {
        return Err(invalid(
            "spec.ttlSecondsAfterFinished: must not be negative".into(),
        ));
    }
    if let Some(workspace) = &spec.workspace {
        for (i, mode) in workspace.access_modes.iter().enumerate() {
            if !matches!(
                mode.as_str(),
                "ReadWriteOnce" | "ReadWriteMany" | "ReadWriteOncePod"
            ) {
                return Err(invalid(format!(
                    "spec.workspace.accessModes[{i}] `{mode}`: expected ReadWriteOnce, ReadWriteMany or ReadWriteOncePod"
                )));
            }
        }
    }
    let context = &spec.context;
    let sources = [
        context.inline.is_some(),
        context.config_map.is_some(),
        context.git.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() != 1 {
        return Err(invalid(
            "spec.context: give exactly one of inline, configMap and git".into(),
        ));
    }
    if let Some(files) = &context.inline {
        let size: usize = files.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > MAX_INLINE_CONTEXT_BYTES {
            return Err(invalid(format!(
                "spec.context.inline: {size} bytes, more than the {MAX_INLINE_CONTEXT_BYTES} allowed; use a configMap or git context"
            )));
        }
        for path in files.keys() {
            if !is_relative_path(path) {
                return Err(invalid(format!(
                    "spec.context.inline `{path}`: expected a relative path without `..`"
                )));
            }
        }
    }
    if let Some(config_map) = &context.config_map {
        for (i, item) in config_map.items.iter().enumerate() {
            if !is_relative_path(&item.path) {
                return Err(invalid(format!(
                    "spec.context.configMap.items[{i}].path `{}`: expected a relative path without `..`",
                    item.path
                )));
            }
        }
    }
    if let Some(git) = &context.git {
        let scheme_ok = ["https://", "http://", "git://"]
            .iter()
            .any(|scheme| git.url.starts_with(scheme) && git.url.len() > scheme.len());
        if !scheme_ok {
            return Err(invalid(format!(
                "spec.context.git.url `{}`: expected an https://, http:// or git:// URL (ssh is not supported)",
                crate::api::redacted_url(&git.url)
            )));
        }
        if let Some(sub) = git.sub_path.as_deref().map(|p| p.trim_matches('/'))
            && !sub.is_empty()
            && !is_relative_path(sub)
        {
            return Err(invalid(format!(
                "spec.context.git.subPath `{sub}`: expected a relative path without `..`"
            )));
        }
    }
    if spec.dockerfile.is_some() == spec.dockerfile_path.is_some() {
        return Err(invalid(
            "spec: give exactly one of dockerfile and dockerfilePath".into(),
        ));
    }
    Ok(timeout)
}

fn field_of_plan_error(inline: bool) -> &'static str {
    if inline {
        "spec.dockerfile"
    } else {
        "spec.dockerfilePath"
    }
}

fn is_relative_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path.split('/').all(|part| part != ".." && !part.is_empty())
}

/// `30m`, `1h30m`, `90s`, `2h` (and ISO 8601 `PT30M`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration: SignedDuration = text.trim().parse().map_err(|e: jiff::Error| {
        if e.to_string().contains("overflow") || e.to_string().contains("too big") {
            format!("longer than the most a build may take ({MAX_TIMEOUT_TEXT})")
        } else {
            "expected a duration such as 30m, 1h30m or 90s".to_string()
        }
    })?;
    if duration.is_negative() || duration.is_zero() {
        return Err("must be longer than zero".into());
    }
    let duration: Duration = duration
        .try_into()
        .map_err(|_| "expected a duration such as 30m, 1h30m or 90s".to_string())?;
    if duration > MAX_TIMEOUT {
        return Err(format!(
            "longer than the most a build may take ({MAX_TIMEOUT_TEXT})"
        ));
    }
    Ok(duration)
}

/// The longest `spec.timeout`: a build running a week is stuck, and the
/// deadline must stay far from the clock's limits.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_TIMEOUT_TEXT: &str = "168h, a week";

/// The core: what to do for `ib` given what exists, at `now`.
pub fn reconcile(
    ib: &ImageBuild,
    observed: &Observed,
    settings: &Settings,
    now: Timestamp,
) -> Decision {
    let generation = ib.meta().generation.unwrap_or(1);
    let previous = ib.status.clone().unwrap_or_default();
    let same_generation = previous.observed_generation == Some(generation);
    let mut decision = Decision {
        status: previous.clone(),
        ..Decision::default()
    };

    // A finished build is never rebuilt: only its TTL is left to keep.
    if same_generation && previous.phase.is_some_and(Phase::is_terminal) {
        expire(ib, observed, &previous, now, &mut decision);
        for pod in observed
            .pods
            .iter()
            .filter(|p| !p.phase.is_done() && !p.deleting)
        {
            decision.delete_pods.push(pod.name.clone());
        }
        return decision;
    }

    // Older generations go first; the new build waits until they are gone,
    // so a late push of the old build can't move the tag.
    let mut waiting_for_old = false;
    for pod in observed.pods.iter().filter(|p| p.generation != generation) {
        waiting_for_old = true;
        if !pod.deleting {
            decision.delete_pods.push(pod.name.clone());
        }
    }
    for (claim, claim_generation) in &observed.claims {
        if *claim_generation != generation {
            decision.delete_claims.push(claim.clone());
        }
    }

    let start = match (&previous.start_time, same_generation) {
        (Some(start), true) => start.0,
        _ => now,
    };
    let mut status = ImageBuildStatus {
        observed_generation: Some(generation),
        start_time: Some(Time(start)),
        conditions: previous.conditions.clone(),
        ..ImageBuildStatus::default()
    };
    let fail = |status: &mut ImageBuildStatus, reason: &str, message: String| {
        status.phase = Some(Phase::Failed);
        status.completion_time = Some(Time(now));
        status.conditions = conditions(
            &previous.conditions,
            generation,
            BuildState::Failed,
            reason,
            &truncate(&message),
            now,
        );
    };

    // A git context is cloned first: the plan may need its Dockerfile.
    let context_pod = if ib.spec.context.git.is_some() {
        observed
            .pods
            .iter()
            .filter(|p| p.generation == generation && p.unit == CONTEXT_UNIT)
            .max_by_key(|p| p.attempt)
    } else {
        None
    };
    let cloned = context_pod
        .filter(|p| p.phase == PodPhase::Succeeded)
        .map(clone_outcome);
    if let Some(Ok(outcome)) = &cloned {
        status.source = Some(SourceStatus {
            commit: outcome.commit.clone(),
        });
    }
    let checked = match (ib.spec.context.git.is_some(), cloned) {
        (false, _) => validate(ib, settings, observed.dockerfile_from_context.as_deref()).map(Some),
        (true, None) => validate_spec(ib, settings).map(|_| None),
        (true, Some(Ok(outcome))) => {
            validate(ib, settings, outcome.dockerfile.as_deref()).map(Some)
        }
        (true, Some(Err(message))) => Err(Invalid {
            reason: "ContextFailed",
            message,
        }),
    };
    let validated = match checked {
        Ok(validated) => validated,
        Err(invalid) => {
            fail(&mut status, invalid.reason, invalid.message.clone());
            decision
                .events
                .push(warning(invalid.reason, &invalid.message));
            decision.status = status;
            return decision;
        }
    };
    if let Some(message) = &observed.forbidden {
        let message = format!(
            "the namespace's Pod Security level rejects the build pods (they need `baseline`): {message}"
        );
        fail(&mut status, "PodSecurityForbidden", message.clone());
        decision
            .events
            .push(warning("PodSecurityForbidden", &message));
        decision.status = status;
        return decision;
    }
    if !observed.missing.is_empty() {
        let message = observed
            .missing
            .iter()
            .map(|(field, what)| format!("{field}: {what}"))
            .collect::<Vec<_>>()
            .join("; ");
        let reason = if observed
            .missing
            .iter()
            .any(|(f, _)| f.contains("configMap"))
        {
            "ConfigMapNotFound"
        } else {
            "SecretNotFound"
        };
        status.phase = Some(Phase::Pending);
        status.conditions = conditions(
            &previous.conditions,
            generation,
            BuildState::Failed,
            reason,
            &message,
            now,
        );
        if previous.phase != Some(Phase::Pending) || !same_generation {
            decision.events.push(warning(reason, &message));
        }
        decision.status = status;
        decision.requeue_after = Some(MISSING_RETRY);
        return decision;
    }
    if waiting_for_old {
        status.phase = Some(Phase::Pending);
        status.conditions = conditions(
            &previous.conditions,
            generation,
            BuildState::InProgress,
            "StoppingPreviousBuild",
            "waiting for the previous generation's pods to be deleted",
            now,
        );
        decision.status = status;
        decision.requeue_after = Some(Duration::from_secs(2));
        return decision;
    }

    let (plan, timeout) = match &validated {
        Some(validated) => (Some(&validated.plan), validated.timeout),
        // Only the context pod until the clone is done.
        None => (
            None,
            validate_spec(ib, settings).unwrap_or(settings.default_timeout),
        ),
    };
    let units = match plan {
        Some(plan) => build_units(ib, plan),
        None => vec![context_unit()],
    };
    let deadline = start + SignedDuration::try_from(timeout).unwrap_or(SignedDuration::MAX);
    let objects = BuildObjects {
        ib,
        plan,
        settings,
        generation,
        deadline_seconds: (deadline.duration_since(now).as_secs()).max(1),
    };
    let name = ib.meta().name.clone().unwrap_or_default();

    // The latest attempt of each unit.
    let mut latest: BTreeMap<usize, &PodState> = BTreeMap::new();
    for pod in observed.pods.iter().filter(|p| p.generation == generation) {
        let newer = latest
            .get(&pod.unit)
            .is_none_or(|p| p.attempt < pod.attempt);
        if newer {
            latest.insert(pod.unit, pod);
        }
    }
    status.stages = units
        .iter()
        .filter_map(|u| latest.get(&u.n).map(|p| stage_status(u, p)))
        .collect();

    let failure = if now >= deadline {
        Some((
            "Timeout",
            format!(
                "the build did not finish within {}",
                spec_timeout_text(ib, timeout)
            ),
        ))
    } else {
        units
            .iter()
            .filter_map(|u| latest.get(&u.n).map(|p| (u, *p)))
            .find_map(|(unit, pod)| pod_failure(unit, pod, settings))
    };

    // Evicted or preempted pods are retried, a bounded number of times.
    if failure.is_none() {
        for unit in &units {
            let Some(pod) = latest.get(&unit.n) else {
                continue;
            };
            if pod.phase == PodPhase::Failed && is_disruption(pod) {
                if pod.attempt >= settings.max_pod_retries {
                    continue;
                }
                let node = pin_node(&objects, &latest);
                decision
                    .create_pods
                    .push(objects.pod(unit, pod.attempt + 1, node.as_deref()));
                if !pod.deleting {
                    decision.delete_pods.push(pod.name.clone());
                }
                decision.events.push(warning(
                    "PodRetried",
                    &format!(
                        "pod {} was {}; retrying as attempt {}",
                        pod.name,
                        disruption(pod).unwrap_or("disrupted"),
                        pod.attempt + 1
                    ),
                ));
            }
        }
    }
    // A disruption past the retries is a failure too.
    let failure = failure.or_else(|| {
        units
            .iter()
            .filter_map(|u| latest.get(&u.n).map(|p| (u, *p)))
            .find(|(_, p)| {
                p.phase == PodPhase::Failed
                    && is_disruption(p)
                    && p.attempt >= settings.max_pod_retries
            })
            .map(|(u, p)| {
                (
                    "PodDisrupted",
                    format!(
                        "{}: pod {} was {} {} times",
                        u.name,
                        p.name,
                        disruption(p).unwrap_or("disrupted"),
                        p.attempt + 1
                    ),
                )
            })
    });

    if let Some((reason, message)) = failure {
        for pod in latest.values() {
            if !pod.phase.is_done() && !pod.deleting {
                decision.delete_pods.push(pod.name.clone());
            }
        }
        decision.create_pods.clear();
        fail(&mut status, reason, message.clone());
        decision.events.push(warning(reason, &message));
        decision.status = status;
        decision.requeue_after = ttl_requeue(ib, now, now);
        return decision;
    }

    // The assembly done: the image is there.
    let assemble = units.last().expect("units always end with the assembly");
    if assemble.kind == UnitKind::Assemble
        && let Some(pod) = latest.get(&assemble.n)
        && pod.phase == PodPhase::Succeeded
    {
        match pod
            .result
            .as_deref()
            .map(serde_json::from_str::<AssembleResult>)
        {
            Some(Ok(outcome)) => {
                let short = outcome
                    .digest
                    .trim_start_matches("sha256:")
                    .chars()
                    .take(12)
                    .collect();
                let message = format!(
                    "pushed {} ({})",
                    outcome.reference,
                    human_size(outcome.size_bytes)
                );
                status.image = Some(ImageStatus {
                    reference: outcome.reference,
                    digest: outcome.digest,
                    short_digest: short,
                    size_bytes: outcome.size_bytes as i64,
                    size: human_size(outcome.size_bytes),
                    builder_image: outcome.builder_image,
                    builder_size_bytes: outcome.builder_size_bytes.map(|b| b as i64),
                    layers: outcome.layers.into_iter().map(|l| l.digest).collect(),
                });
                status.phase = Some(Phase::Succeeded);
                status.completion_time = Some(Time(now));
                status.conditions = conditions(
                    &previous.conditions,
                    generation,
                    BuildState::Succeeded,
                    "Succeeded",
                    &message,
                    now,
                );
                decision.events.push(BuildEvent {
                    warning: false,
                    reason: "Succeeded".into(),
                    note: message,
                });
                decision.status = status;
                decision.requeue_after = ttl_requeue(ib, now, now);
                return decision;
            }
            other => {
                let detail = match other {
                    Some(Err(e)) => e.to_string(),
                    _ => "no result".into(),
                };
                let message = format!("assemble pod {}: result unreadable: {detail}", pod.name);
                fail(&mut status, "AssembleFailed", message.clone());
                decision.events.push(warning("AssembleFailed", &message));
                decision.status = status;
                return decision;
            }
        }
    }

    // Start what can start.
    let current_claim = claim_name(&name, generation);
    if !observed.claims.iter().any(|(c, _)| *c == current_claim) {
        decision.create_claim = Some(objects.claim());
    }
    let succeeded = |n: &usize| {
        latest
            .get(n)
            .is_some_and(|p| p.phase == PodPhase::Succeeded)
    };
    let ready: Vec<&Unit> = units
        .iter()
        .filter(|u| !latest.contains_key(&u.n) && u.depends_on.iter().all(succeeded))
        .collect();
    let pinned = objects.pinned();
    let node = pin_node(&objects, &latest);
    let any_pod = !latest.is_empty();
    let to_start: Vec<&Unit> = if !pinned || node.is_some() {
        ready
    } else if any_pod {
        // The first pod isn't scheduled yet; the rest follow it to its node.
        Vec::new()
    } else {
        ready.into_iter().take(1).collect()
    };
    for unit in to_start {
        let pod = objects.pod(unit, 0, node.as_deref());
        decision.events.push(BuildEvent {
            warning: false,
            reason: "PodCreated".into(),
            note: format!(
                "{} {} for {}",
                unit.kind.role(),
                pod.meta().name.clone().unwrap_or_default(),
                unit.name
            ),
        });
        decision.create_pods.push(pod);
    }

    let running = !latest.is_empty() || !decision.create_pods.is_empty();
    status.phase = Some(if running {
        Phase::Running
    } else {
        Phase::Pending
    });
    let done = units.iter().filter(|u| succeeded(&u.n)).count();
    let (reason, message) = match (plan, &ib.spec.context.git) {
        (None, Some(git)) => (
            "Cloning",
            format!(
                "cloning {} at {}",
                crate::api::redacted_url(&git.url),
                git.revision.as_deref().unwrap_or("HEAD")
            ),
        ),
        _ => (
            if running { "Building" } else { "Pending" },
            format!("{done} of {} pods done", units.len()),
        ),
    };
    status.conditions = conditions(
        &previous.conditions,
        generation,
        BuildState::InProgress,
        reason,
        &message,
        now,
    );
    let until_deadline = Duration::try_from(deadline.duration_since(now)).unwrap_or(POLL);
    decision.requeue_after = Some(POLL.min(until_deadline.max(Duration::from_millis(100))));
    decision.status = status;
    decision
}

/// The node every pod of a ReadWriteOnce build runs on: the first scheduled pod's.
fn pin_node(objects: &BuildObjects, latest: &BTreeMap<usize, &PodState>) -> Option<String> {
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
/// its exit code 137 or 143 would fail the build as if its `RUN` had.
fn is_disruption(pod: &PodState) -> bool {
    disruption(pod).is_some()
}

/// What disrupted the pod, as the PodRetried and PodDisrupted messages say it.
fn disruption(pod: &PodState) -> Option<&str> {
    match pod.reason.as_deref() {
        Some(
            reason @ ("Evicted" | "Preempting" | "Shutdown" | "NodeLost" | "Terminated"
            | "NodeShutdown"),
        ) => Some(reason),
        _ if pod.deleting && pod.phase == PodPhase::Failed => Some("deleted"),
        _ => None,
    }
}

const PULL_FAILURES: [&str; 4] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
];

/// The kubelet's own pull rate limit (`registryPullQPS`, 5 a second by
/// default): what it says when many pods pull at once, as ErrImagePull and
/// then inside ImagePullBackOff's message. It retries by itself; the image
/// may well exist.
const KUBELET_PULL_THROTTLED: &str = "pull QPS exceeded";

/// Why this pod fails the build, if it does.
fn pod_failure(unit: &Unit, pod: &PodState, settings: &Settings) -> Option<(&'static str, String)> {
    if let Some(waiting) = &pod.waiting {
        if PULL_FAILURES.contains(&waiting.reason.as_str())
            && !waiting.message.contains(KUBELET_PULL_THROTTLED)
        {
            let helper = waiting.container == "install"
                || matches!(unit.kind, UnitKind::Assemble | UnitKind::Context);
            let what = if helper {
                format!("the helper image {}", settings.helper_image)
            } else {
                match unit.from_line {
                    Some(line) => format!("line {line}: FROM {}", unit.image),
                    None => format!("image {}", unit.image),
                }
            };
            return Some((
                "ImagePullFailed",
                format!(
                    "{what}: cannot be pulled ({}): {}",
                    waiting.reason, waiting.message
                ),
            ));
        }
        if waiting.reason == "CreateContainerConfigError" {
            return Some((
                "PodFailed",
                format!("{}: {}: {}", unit.name, waiting.reason, waiting.message),
            ));
        }
    }
    if pod.phase != PodPhase::Failed || is_disruption(pod) {
        return None;
    }
    if pod.reason.as_deref() == Some("DeadlineExceeded") {
        return Some((
            "Timeout",
            format!(
                "{}: pod {} ran past the build's deadline",
                unit.name, pod.name
            ),
        ));
    }
    let reason = match unit.kind {
        UnitKind::Context => "ContextFailed",
        UnitKind::Assemble => "AssembleFailed",
        UnitKind::Probe => "ProbeFailed",
        _ => "StageFailed",
    };
    Some((reason, failure_message(unit, pod)))
}

/// `stage builder, line 5 (RUN go build app.go): exit code 3` and the log tail.
fn failure_message(unit: &Unit, pod: &PodState) -> String {
    let result = pod.result.as_deref().unwrap_or_default();
    if unit.kind == UnitKind::Context
        && let Ok(CloneResult {
            error: Some(error), ..
        }) = serde_json::from_str::<CloneResult>(result)
    {
        return format!("{} (pod {}): {error}", unit.name, pod.name);
    }
    // A chain's failure, or any pod's `failure_json` (no line, no stage).
    if let Ok(f) = serde_json::from_str::<ChainFailure>(result)
        && (f.line > 0 || f.error.is_some())
    {
        let stage = if f.stage.is_empty() {
            &unit.name
        } else {
            &f.stage
        };
        let mut message = format!("stage {stage}");
        if f.line > 0 {
            message.push_str(&format!(", line {}", f.line));
        }
        if !f.instruction.is_empty() {
            message.push_str(&format!(" ({})", f.instruction));
        }
        match (f.exit_code, f.error) {
            (Some(code), _) => message.push_str(&format!(": exit code {code}")),
            (None, Some(error)) => message.push_str(&format!(": {error}")),
            (None, None) => {}
        }
        if let Some(tail) = f.log_tail.filter(|t| !t.trim().is_empty()) {
            message.push('\n');
            message.push_str(tail.trim_end());
        }
        return message;
    }
    let mut message = format!("{} (pod {})", unit.name, pod.name);
    if let Some(code) = pod.exit_code {
        message.push_str(&format!(": exit code {code}"));
    }
    if !result.trim().is_empty() {
        message.push('\n');
        message.push_str(result.trim_end());
    }
    message
}

fn stage_status(unit: &Unit, pod: &PodState) -> StageStatus {
    StageStatus {
        name: unit.name.clone(),
        pod: pod.name.clone(),
        phase: pod.phase.as_str().into(),
        start_time: pod.started.map(Time),
        completion_time: pod.finished.filter(|_| pod.phase.is_done()).map(Time),
        exit_code: pod.exit_code.filter(|_| pod.phase.is_done()),
        message: pod
            .waiting
            .as_ref()
            .map(|w| format!("{}: {}", w.reason, w.message))
            .or_else(|| pod.reason.clone()),
    }
}

/// What a succeeded context pod reports: the commit and the Dockerfile's text.
struct CloneOutcome {
    commit: String,
    dockerfile: Option<String>,
}

fn clone_outcome(pod: &PodState) -> Result<CloneOutcome, String> {
    let unreadable =
        |detail: String| format!("context pod {}: result unreadable: {detail}", pod.name);
    let result: CloneResult = serde_json::from_str(pod.result.as_deref().unwrap_or_default())
        .map_err(|e| unreadable(e.to_string()))?;
    let commit = result
        .commit
        .clone()
        .filter(|c| c.len() == 40 && c.chars().all(|c| c.is_ascii_hexdigit()))
        .ok_or_else(|| unreadable("no commit".into()))?;
    let dockerfile = result.dockerfile_text().map_err(unreadable)?;
    Ok(CloneOutcome { commit, dockerfile })
}

fn warning(reason: &str, note: &str) -> BuildEvent {
    BuildEvent {
        warning: true,
        reason: reason.into(),
        note: truncate(note),
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
