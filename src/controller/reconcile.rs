//! The reconcile core, a pipeline of steps ([`reconcile`]): dereference the
//! inputs → validate → plan the desired objects → decide what to create and
//! delete → the status. Pure: no client, no clock but
//! the `now` it is handed, so every transition is tested with plain values.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Resource;

use super::Settings;
use super::pods::{
    BuildObjects, CONTEXT_UNIT, Unit, UnitKind, build_units, claim_name, context_unit,
};
use super::status::{BuildState, Reason, conditions};
use crate::api::{
    ImageBuild, ImageBuildSpec, ImageBuildStatus, ImageStatus, MAX_INLINE_CONTEXT_BYTES, Phase,
    SourceStatus, StageStatus, human_size,
};
use crate::contract::{AssembleResult, ChainFailure, CloneResult};
use crate::plan::{BuildPlan, PlanRequest};
use crate::schema::{DockerfileSource, dockerfile_source};

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
    pub reason: Reason,
    pub note: String,
}

/// Why a spec can't be built, for `Ready=False`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub reason: Reason,
    pub message: String,
}

impl Invalid {
    /// A rule of the spec broken (`InvalidSpec`).
    fn spec(message: String) -> Self {
        Invalid {
            reason: Reason::InvalidSpec,
            message,
        }
    }

    /// A Dockerfile that can't be planned or run (`InvalidDockerfile`).
    fn dockerfile(message: String) -> Self {
        Invalid {
            reason: Reason::InvalidDockerfile,
            message,
        }
    }
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
    plan_spec(ib, timeout, dockerfile_from_context)
}

/// The second half of [`validate`]: plans the Dockerfile of a spec that
/// [`validate_spec`] passed (`timeout` is what it returned), for callers
/// that learn the Dockerfile only later (a git context's, from the clone).
pub fn plan_spec(
    ib: &ImageBuild,
    timeout: Duration,
    dockerfile_from_context: Option<&str>,
) -> Result<Validated, Invalid> {
    let spec = &ib.spec;
    let request = PlanRequest {
        dockerfile: dockerfile_text(spec, dockerfile_from_context)?,
        build_args: spec.build_args.clone(),
        target: spec.target.clone().filter(|t| !t.is_empty()),
        platform: spec.platform.clone(),
    };
    let plan = request.plan().map_err(|e| {
        Invalid::dockerfile(format!(
            "{}: {e}",
            field_of_plan_error(spec.dockerfile.is_some())
        ))
    })?;
    check_plan_runs_in_pods(&plan)?;
    Ok(Validated { plan, timeout })
}

/// The Dockerfile's text: the spec's own, or the file `dockerfilePath`
/// names in the inline context or else in `from_context` (a ConfigMap's or
/// the clone's).
fn dockerfile_text(spec: &ImageBuildSpec, from_context: Option<&str>) -> Result<String, Invalid> {
    let source = dockerfile_source(spec).map_err(|e| Invalid::spec(format!("spec: {e}")))?;
    let path = match source {
        DockerfileSource::Inline(text) => return Ok(text.to_string()),
        DockerfileSource::Path(path) => path,
    };
    let from_inline = spec
        .context
        .inline
        .as_ref()
        .and_then(|files| files.get(path.trim_start_matches("./")));
    from_inline
        .map(String::as_str)
        .or(from_context)
        .map(str::to_string)
        .ok_or_else(|| {
            Invalid::spec(format!(
                "spec.dockerfilePath `{path}`: no such file in the context"
            ))
        })
}

/// A plan a pod can run: no `FROM scratch` chain (a pod needs an image),
/// and small enough for the environment variable that carries it.
fn check_plan_runs_in_pods(plan: &BuildPlan) -> Result<(), Invalid> {
    if let Some(chain) = plan.chains.iter().find(|c| c.image == "scratch") {
        let line = chain.stages.first().map(|s| s.stage.line).unwrap_or(0);
        return Err(Invalid::dockerfile(format!(
            "line {line}: stage `{}` is FROM scratch and must run as a pod, which needs an image; copy its files into the final stage instead",
            chain.id
        )));
    }
    let plan_bytes = serde_json::to_vec(plan).map(|v| v.len()).unwrap_or(0);
    if plan_bytes > MAX_PLAN_BYTES {
        return Err(Invalid::dockerfile(format!(
            "the build plan is {plan_bytes} bytes, more than the {MAX_PLAN_BYTES} a pod can be handed"
        )));
    }
    Ok(())
}

/// Checks everything but the Dockerfile (which a git context provides only
/// after the clone); returns the build's timeout.
pub fn validate_spec(ib: &ImageBuild, settings: &Settings) -> Result<Duration, Invalid> {
    let spec = &ib.spec;
    let invalid = |message: String| Invalid {
        reason: Reason::InvalidSpec,
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
    dockerfile_source(spec).map_err(|e| invalid(format!("spec: {e}")))?;
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
///
/// A pipeline (its steps are listed in `Pass::steps`): a finished build
/// only keeps its TTL; otherwise older generations go, the context is
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
    previous: ImageBuildStatus,
    /// The status describes this generation already.
    same_generation: bool,
    /// When this generation's build started (now, if it hasn't yet).
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
        let same_generation = previous.observed_generation == Some(generation);
        let start = match (&previous.start_time, same_generation) {
            (Some(start), true) => start.0,
            _ => now,
        };
        Pass {
            ib,
            observed,
            settings,
            now,
            generation,
            previous,
            same_generation,
            start,
        }
    }

    /// dereference → validate → plan → decide → status, each step either
    /// going on or ending the reconcile with its decision made.
    fn steps(&self, decision: &mut Decision) -> ControlFlow<()> {
        self.keep_finished_build(decision)?;
        let old_generation_left = self.retire_old_generations(decision);
        decision.status = self.fresh_status();
        // dereference
        let dockerfile = self.dereference(&mut decision.status);
        // validate
        let inputs = self.validate(dockerfile, decision)?;
        self.refuse_if_forbidden(decision)?;
        self.wait_for_missing_references(decision)?;
        self.wait_for_old_generation(old_generation_left, decision)?;
        // plan
        let planned = self.plan(&inputs, &mut decision.status);
        // decide
        let failure = self.retry_or_find_failure(&planned, decision);
        self.end_on_failure(failure, &planned, decision)?;
        self.end_when_assembled(&planned, decision)?;
        self.start_ready_pods(&planned, decision);
        // status
        self.report_progress(&planned, decision);
        ControlFlow::Continue(())
    }

    /// A finished build is never rebuilt: only its TTL is left to keep.
    fn keep_finished_build(&self, decision: &mut Decision) -> ControlFlow<()> {
        if !self.same_generation || !self.previous.phase.is_some_and(Phase::is_terminal) {
            return ControlFlow::Continue(());
        }
        decision.status = self.previous.clone();
        expire(self.ib, self.observed, &self.previous, self.now, decision);
        for pod in self
            .observed
            .pods
            .iter()
            .filter(|p| !p.phase.is_done() && !p.deleting)
        {
            decision.delete_pods.push(pod.name.clone());
        }
        ControlFlow::Break(())
    }

    /// Older generations go first; the new build waits until their pods are
    /// gone, so a late push of the old build can't move the tag. Returns
    /// whether any of their pods is left.
    fn retire_old_generations(&self, decision: &mut Decision) -> bool {
        let mut old_generation_left = false;
        for pod in self
            .observed
            .pods
            .iter()
            .filter(|p| p.generation != self.generation)
        {
            old_generation_left = true;
            if !pod.deleting {
                decision.delete_pods.push(pod.name.clone());
            }
        }
        for (claim, claim_generation) in &self.observed.claims {
            if *claim_generation != self.generation {
                decision.delete_claims.push(claim.clone());
            }
        }
        old_generation_left
    }

    /// This generation's status before the steps fill it in.
    fn fresh_status(&self) -> ImageBuildStatus {
        ImageBuildStatus {
            observed_generation: Some(self.generation),
            start_time: Some(Time(self.start)),
            conditions: self.previous.conditions.clone(),
            ..ImageBuildStatus::default()
        }
    }

    /// Where the Dockerfile comes from: a git context is cloned first (its
    /// commit goes in the status), the others were read by the shell.
    fn dereference(&self, status: &mut ImageBuildStatus) -> Dockerfile {
        if self.ib.spec.context.git.is_none() {
            return Dockerfile::Known(self.observed.dockerfile_from_context.clone());
        }
        let context_pod = self
            .observed
            .pods
            .iter()
            .filter(|p| p.generation == self.generation && p.unit == CONTEXT_UNIT)
            .max_by_key(|p| p.attempt)
            .filter(|p| p.phase == PodPhase::Succeeded);
        match context_pod.map(clone_outcome) {
            None => Dockerfile::Cloning,
            Some(Err(message)) => Dockerfile::CloneFailed(message),
            Some(Ok(outcome)) => {
                status.source = Some(SourceStatus {
                    commit: outcome.commit,
                });
                Dockerfile::Known(outcome.dockerfile)
            }
        }
    }

    /// The spec checked once, and the Dockerfile planned if it is known; an
    /// invalid build fails here.
    fn validate(&self, dockerfile: Dockerfile, decision: &mut Decision) -> ControlFlow<(), Inputs> {
        match self.inputs(dockerfile) {
            Ok(inputs) => ControlFlow::Continue(inputs),
            Err(invalid) => {
                self.fail(decision, invalid.reason, &invalid.message);
                ControlFlow::Break(())
            }
        }
    }

    fn inputs(&self, dockerfile: Dockerfile) -> Result<Inputs, Invalid> {
        let dockerfile = match dockerfile {
            Dockerfile::CloneFailed(message) => {
                return Err(Invalid {
                    reason: Reason::ContextFailed,
                    message,
                });
            }
            Dockerfile::Cloning => None,
            Dockerfile::Known(text) => Some(text),
        };
        let timeout = validate_spec(self.ib, self.settings)?;
        let plan = match dockerfile {
            None => None,
            Some(text) => Some(plan_spec(self.ib, timeout, text.as_deref())?.plan),
        };
        Ok(Inputs { timeout, plan })
    }

    /// The namespace's Pod Security level rejected a pod: the build can't
    /// go on until someone changes the namespace.
    fn refuse_if_forbidden(&self, decision: &mut Decision) -> ControlFlow<()> {
        let Some(message) = &self.observed.forbidden else {
            return ControlFlow::Continue(());
        };
        let message = format!(
            "the namespace's Pod Security level rejects the build pods (they need `baseline`): {message}"
        );
        self.fail(decision, Reason::PodSecurityForbidden, &message);
        ControlFlow::Break(())
    }

    /// A Secret or ConfigMap the build needs is missing: pending, looked
    /// for again every [`MISSING_RETRY`], reported once.
    fn wait_for_missing_references(&self, decision: &mut Decision) -> ControlFlow<()> {
        let missing = &self.observed.missing;
        if missing.is_empty() {
            return ControlFlow::Continue(());
        }
        let message = missing
            .iter()
            .map(|(field, what)| format!("{field}: {what}"))
            .collect::<Vec<_>>()
            .join("; ");
        let reason = if missing.iter().any(|(f, _)| f.contains("configMap")) {
            Reason::ConfigMapNotFound
        } else {
            Reason::SecretNotFound
        };
        decision.status.phase = Some(Phase::Pending);
        decision.status.conditions = self.conditions(BuildState::Failed, reason, &message);
        if self.previous.phase != Some(Phase::Pending) || !self.same_generation {
            decision.events.push(warning(reason, &message));
        }
        decision.requeue_after = Some(MISSING_RETRY);
        ControlFlow::Break(())
    }

    /// The previous generation's pods are still going.
    fn wait_for_old_generation(
        &self,
        old_generation_left: bool,
        decision: &mut Decision,
    ) -> ControlFlow<()> {
        if !old_generation_left {
            return ControlFlow::Continue(());
        }
        decision.status.phase = Some(Phase::Pending);
        decision.status.conditions = self.conditions(
            BuildState::InProgress,
            Reason::StoppingPreviousBuild,
            "waiting for the previous generation's pods to be deleted",
        );
        decision.requeue_after = Some(Duration::from_secs(2));
        ControlFlow::Break(())
    }

    /// The pods the build needs (only the context pod until the clone is
    /// done), the deadline, and what exists of each pod, in the status.
    fn plan<'p>(&'p self, inputs: &'p Inputs, status: &mut ImageBuildStatus) -> Planned<'p> {
        let plan = inputs.plan.as_ref();
        let units = match plan {
            Some(plan) => build_units(self.ib, plan),
            None => vec![context_unit()],
        };
        let deadline =
            self.start + SignedDuration::try_from(inputs.timeout).unwrap_or(SignedDuration::MAX);
        let objects = BuildObjects {
            ib: self.ib,
            plan,
            settings: self.settings,
            generation: self.generation,
            deadline_seconds: (deadline.duration_since(self.now).as_secs()).max(1),
        };
        let planned = Planned {
            units,
            objects,
            latest: self.latest_attempts(),
            deadline,
            timeout: inputs.timeout,
        };
        status.stages = planned
            .with_pods()
            .map(|(unit, pod)| stage_status(unit, pod))
            .collect();
        planned
    }

    /// The latest attempt of each unit of this generation.
    fn latest_attempts(&self) -> BTreeMap<usize, &'a PodState> {
        let mut latest: BTreeMap<usize, &PodState> = BTreeMap::new();
        for pod in self
            .observed
            .pods
            .iter()
            .filter(|p| p.generation == self.generation)
        {
            let newer = latest
                .get(&pod.unit)
                .is_none_or(|p| p.attempt < pod.attempt);
            if newer {
                latest.insert(pod.unit, pod);
            }
        }
        latest
    }

    /// Why the build fails, if it does: the deadline passed or a pod
    /// failed. If not, evicted or preempted pods are retried, a bounded
    /// number of times, and a disruption past the retries is the failure.
    fn retry_or_find_failure(
        &self,
        planned: &Planned<'_>,
        decision: &mut Decision,
    ) -> Option<(Reason, String)> {
        if self.now >= planned.deadline {
            return Some((
                Reason::Timeout,
                format!(
                    "the build did not finish within {}",
                    spec_timeout_text(self.ib, planned.timeout)
                ),
            ));
        }
        let failed = planned
            .with_pods()
            .find_map(|(unit, pod)| pod_failure(unit, pod, self.settings));
        if failed.is_some() {
            return failed;
        }
        self.retry_disrupted_pods(planned, decision);
        self.disrupted_past_retries(planned)
    }

    /// A new attempt for each disrupted pod that has retries left.
    fn retry_disrupted_pods(&self, planned: &Planned<'_>, decision: &mut Decision) {
        for (unit, pod) in planned.with_pods() {
            if pod.phase != PodPhase::Failed
                || !is_disruption(pod)
                || pod.attempt >= self.settings.max_pod_retries
            {
                continue;
            }
            let node = pin_node(&planned.objects, &planned.latest);
            decision
                .create_pods
                .push(planned.objects.pod(unit, pod.attempt + 1, node.as_deref()));
            if !pod.deleting {
                decision.delete_pods.push(pod.name.clone());
            }
            decision.events.push(warning(
                Reason::PodRetried,
                &format!(
                    "pod {} was {}; retrying as attempt {}",
                    pod.name,
                    disruption(pod).unwrap_or("disrupted"),
                    pod.attempt + 1
                ),
            ));
        }
    }

    fn disrupted_past_retries(&self, planned: &Planned<'_>) -> Option<(Reason, String)> {
        let (unit, pod) = planned.with_pods().find(|(_, p)| {
            p.phase == PodPhase::Failed
                && is_disruption(p)
                && p.attempt >= self.settings.max_pod_retries
        })?;
        Some((
            Reason::PodDisrupted,
            format!(
                "{}: pod {} was {} {} times",
                unit.name,
                pod.name,
                disruption(pod).unwrap_or("disrupted"),
                pod.attempt + 1
            ),
        ))
    }

    /// A failed build stops its running pods and starts none.
    fn end_on_failure(
        &self,
        failure: Option<(Reason, String)>,
        planned: &Planned<'_>,
        decision: &mut Decision,
    ) -> ControlFlow<()> {
        let Some((reason, message)) = failure else {
            return ControlFlow::Continue(());
        };
        for pod in planned.latest.values() {
            if !pod.phase.is_done() && !pod.deleting {
                decision.delete_pods.push(pod.name.clone());
            }
        }
        decision.create_pods.clear();
        self.fail(decision, reason, &message);
        decision.requeue_after = ttl_requeue(self.ib, self.now, self.now);
        ControlFlow::Break(())
    }

    /// The assembly done: the image is there, or its report is unreadable.
    fn end_when_assembled(
        &self,
        planned: &Planned<'_>,
        decision: &mut Decision,
    ) -> ControlFlow<()> {
        let assembled = planned
            .units
            .last()
            .filter(|unit| unit.kind == UnitKind::Assemble)
            .and_then(|unit| planned.latest.get(&unit.n))
            .filter(|pod| pod.phase == PodPhase::Succeeded);
        let Some(pod) = assembled else {
            return ControlFlow::Continue(());
        };
        match pod
            .result
            .as_deref()
            .map(serde_json::from_str::<AssembleResult>)
        {
            Some(Ok(outcome)) => self.succeed(outcome, decision),
            other => {
                let detail = match other {
                    Some(Err(e)) => e.to_string(),
                    _ => "no result".into(),
                };
                let message = format!("assemble pod {}: result unreadable: {detail}", pod.name);
                self.fail(decision, Reason::AssembleFailed, &message);
            }
        }
        ControlFlow::Break(())
    }

    fn succeed(&self, outcome: AssembleResult, decision: &mut Decision) {
        let message = format!(
            "pushed {} ({})",
            outcome.reference,
            human_size(outcome.size_bytes)
        );
        let status = &mut decision.status;
        status.image = Some(image_status(outcome));
        status.phase = Some(Phase::Succeeded);
        status.completion_time = Some(Time(self.now));
        status.conditions = self.conditions(BuildState::Succeeded, Reason::Succeeded, &message);
        decision.events.push(notice(Reason::Succeeded, message));
        decision.requeue_after = ttl_requeue(self.ib, self.now, self.now);
    }

    /// The workspace claim, and a pod for each unit whose dependencies are
    /// done. A ReadWriteOnce build starts one pod until it is scheduled;
    /// the rest follow it to its node.
    fn start_ready_pods(&self, planned: &Planned<'_>, decision: &mut Decision) {
        let name = self.ib.meta().name.clone().unwrap_or_default();
        let current_claim = claim_name(&name, self.generation);
        if !self
            .observed
            .claims
            .iter()
            .any(|(c, _)| *c == current_claim)
        {
            decision.create_claim = Some(planned.objects.claim());
        }
        let ready: Vec<&Unit> = planned
            .units
            .iter()
            .filter(|u| {
                !planned.latest.contains_key(&u.n)
                    && u.depends_on.iter().all(|n| planned.succeeded(n))
            })
            .collect();
        let node = pin_node(&planned.objects, &planned.latest);
        let to_start: Vec<&Unit> = if !planned.objects.pinned() || node.is_some() {
            ready
        } else if !planned.latest.is_empty() {
            // The first pod isn't scheduled yet; the rest follow it to its node.
            Vec::new()
        } else {
            ready.into_iter().take(1).collect()
        };
        for unit in to_start {
            let pod = planned.objects.pod(unit, 0, node.as_deref());
            decision.events.push(notice(
                Reason::PodCreated,
                format!(
                    "{} {} for {}",
                    unit.kind.role(),
                    pod.meta().name.clone().unwrap_or_default(),
                    unit.name
                ),
            ));
            decision.create_pods.push(pod);
        }
    }

    /// A build under way: pending or running, how far it got, and when to
    /// look again (soon, and no later than the deadline).
    fn report_progress(&self, planned: &Planned<'_>, decision: &mut Decision) {
        let running = !planned.latest.is_empty() || !decision.create_pods.is_empty();
        decision.status.phase = Some(if running {
            Phase::Running
        } else {
            Phase::Pending
        });
        let done = planned
            .units
            .iter()
            .filter(|u| planned.succeeded(&u.n))
            .count();
        let (reason, message) = match (planned.objects.plan, &self.ib.spec.context.git) {
            (None, Some(git)) => (
                Reason::Cloning,
                format!(
                    "cloning {} at {}",
                    crate::api::redacted_url(&git.url),
                    git.revision.as_deref().unwrap_or("HEAD")
                ),
            ),
            _ => (
                if running {
                    Reason::Building
                } else {
                    Reason::Pending
                },
                format!("{done} of {} pods done", planned.units.len()),
            ),
        };
        decision.status.conditions = self.conditions(BuildState::InProgress, reason, &message);
        let until_deadline =
            Duration::try_from(planned.deadline.duration_since(self.now)).unwrap_or(POLL);
        decision.requeue_after = Some(POLL.min(until_deadline.max(Duration::from_millis(100))));
    }

    /// The build failed: its status says why (the message cut to
    /// [`MAX_MESSAGE`]), and a warning event says it too.
    fn fail(&self, decision: &mut Decision, reason: Reason, message: &str) {
        let status = &mut decision.status;
        status.phase = Some(Phase::Failed);
        status.completion_time = Some(Time(self.now));
        status.conditions = self.conditions(BuildState::Failed, reason, &truncate(message));
        decision.events.push(warning(reason, message));
    }

    /// The condition set for `state`, merged with the previous status's.
    fn conditions(&self, state: BuildState, reason: Reason, message: &str) -> Vec<Condition> {
        conditions(
            &self.previous.conditions,
            self.generation,
            state,
            reason,
            message,
            self.now,
        )
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
    objects: BuildObjects<'a>,
    latest: BTreeMap<usize, &'a PodState>,
    deadline: Timestamp,
    timeout: Duration,
}

impl Planned<'_> {
    fn succeeded(&self, unit: &usize) -> bool {
        self.latest
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

/// The status's image from what the assemble pod reports.
fn image_status(outcome: AssembleResult) -> ImageStatus {
    let short_digest = outcome
        .digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect();
    ImageStatus {
        short_digest,
        size_bytes: outcome.size_bytes as i64,
        size: human_size(outcome.size_bytes),
        builder_image: outcome.builder_image,
        builder_size_bytes: outcome.builder_size_bytes.map(|b| b as i64),
        layers: outcome.layers.into_iter().map(|l| l.digest).collect(),
        reference: outcome.reference,
        digest: outcome.digest,
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
fn pod_failure(unit: &Unit, pod: &PodState, settings: &Settings) -> Option<(Reason, String)> {
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
                Reason::ImagePullFailed,
                format!(
                    "{what}: cannot be pulled ({}): {}",
                    waiting.reason, waiting.message
                ),
            ));
        }
        if waiting.reason == "CreateContainerConfigError" {
            return Some((
                Reason::PodFailed,
                format!("{}: {}: {}", unit.name, waiting.reason, waiting.message),
            ));
        }
    }
    if pod.phase != PodPhase::Failed || is_disruption(pod) {
        return None;
    }
    if pod.reason.as_deref() == Some("DeadlineExceeded") {
        return Some((
            Reason::Timeout,
            format!(
                "{}: pod {} ran past the build's deadline",
                unit.name, pod.name
            ),
        ));
    }
    let reason = match unit.kind {
        UnitKind::Context => Reason::ContextFailed,
        UnitKind::Assemble => Reason::AssembleFailed,
        UnitKind::Probe => Reason::ProbeFailed,
        _ => Reason::StageFailed,
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
