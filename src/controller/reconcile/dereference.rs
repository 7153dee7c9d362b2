//! The pass's first steps: keep a finished build, retire older builds
//! (generations, or rebuilds of this one), dereference the context,
//! validate once, wait for what is missing, plan the pods.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::time::Duration;

use jiff::SignedDuration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::cache::{Rebase, cached_stage_status, take_cached};
use super::pod_results::{CloneOutcome, clone_outcome, stage_status};
use super::validate::{Invalid, plan_spec, validate_spec};
use super::{
    Decision, Dockerfile, Inputs, MISSING_RETRY, Pass, Planned, PodPhase, PodState, expire,
    rebuild_annotation, warning,
};
use crate::api::{ImageBuildStatus, Phase, SourceStatus, StageStatus};
use crate::cache::lookup::CacheView;
use crate::controller::pods::{
    BuildObjects, CONTEXT_UNIT, REBASE_UNIT, Unit, UnitKind, build_units, context_unit,
    rebase_unit, rebase_units,
};
use crate::controller::status::{BuildState, Reason};

/// `status.buildReason` of a resource's first build.
const BUILD_REASON_FIRST: &str = "FirstBuild";
/// `status.buildReason` of a build for a changed spec.
const BUILD_REASON_SPEC: &str = "SpecChanged";

impl<'a> Pass<'a> {
    /// A finished build is not built again: only its TTL is left to keep,
    /// unless a new build of its generation is asked for (the
    /// `slimforge.dev/rebuild` annotation, a trigger): that one starts now,
    /// as a new build ([`super::rebuild_reason`]), and the finished build's
    /// TTL no longer applies.
    pub(super) fn keep_finished_build(&self, decision: &mut Decision) -> ControlFlow<()> {
        if !self.same_build || !self.previous.phase.is_some_and(Phase::is_terminal) {
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

    /// Older builds go first (an older generation's, or an earlier
    /// rebuild of this one: every pod and claim not of [`Pass::build`]);
    /// the new build waits until their pods are gone, so a late push of
    /// the old build can't move the tag. Returns whether any of their pods
    /// is left.
    pub(super) fn retire_previous_builds(&self, decision: &mut Decision) -> bool {
        let mut old_build_left = false;
        for pod in self
            .observed
            .pods
            .iter()
            .filter(|p| p.build() != self.build)
        {
            old_build_left = true;
            if !pod.deleting {
                decision.delete_pods.push(pod.name.clone());
            }
        }
        for (claim, build) in &self.observed.claims {
            if *build != self.build {
                decision.delete_claims.push(claim.clone());
            }
        }
        old_build_left
    }

    /// This build's status before the steps fill it in: what the build
    /// had so far is the steps' to find again, a new build (a new
    /// generation, a rebuild) starts from nothing but its conditions
    /// (start time now, no stages, no image until it succeeds).
    pub(super) fn fresh_status(&self) -> ImageBuildStatus {
        let build_reason = match (
            self.same_build,
            &self.rebuild_reason,
            self.previous.observed_generation,
        ) {
            (true, _, _) => self.previous.build_reason.clone(),
            (false, Some(reason), _) => Some(reason.clone()),
            (false, None, None) => Some(BUILD_REASON_FIRST.to_string()),
            (false, None, Some(_)) => Some(BUILD_REASON_SPEC.to_string()),
        };
        // A new build answers the annotation's value as it is now.
        let observed_rebuild = if self.same_build {
            self.previous.observed_rebuild.clone()
        } else {
            rebuild_annotation(self.ib).map(str::to_string)
        };
        ImageBuildStatus {
            observed_generation: Some(self.generation),
            rebuilds: (self.build.rebuild > 0).then_some(self.build.rebuild),
            observed_rebuild,
            start_time: Some(Time(self.start)),
            conditions: self.previous.conditions.clone(),
            build_reason,
            triggers: self.previous.triggers.clone(),
            ..ImageBuildStatus::default()
        }
    }

    /// Where the Dockerfile comes from: a git context is cloned first (its
    /// commit goes in the status), the others were read by the shell.
    pub(super) fn dereference(&self, status: &mut ImageBuildStatus) -> Dockerfile {
        if self.ib.spec.context.git.is_none() {
            return Dockerfile::Known(self.observed.dockerfile_from_context.clone());
        }
        match self.succeeded_context_pod().map(clone_outcome) {
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

    /// The git context pod of this build, once it has succeeded.
    fn succeeded_context_pod(&self) -> Option<&'a PodState> {
        self.observed
            .pods
            .iter()
            .filter(|p| p.build() == self.build && p.unit == CONTEXT_UNIT)
            .max_by_key(|p| p.attempt)
            .filter(|p| p.phase == PodPhase::Succeeded)
    }

    /// What the succeeded context pod reported, if it can be read.
    pub(super) fn clone_outcome(&self) -> Option<CloneOutcome> {
        self.succeeded_context_pod()
            .and_then(|pod| clone_outcome(pod).ok())
    }

    /// The spec checked once, and the Dockerfile planned if it is known; an
    /// invalid build fails here.
    pub(super) fn validate(
        &self,
        dockerfile: Dockerfile,
        decision: &mut Decision,
    ) -> ControlFlow<(), Inputs> {
        match self.inputs(dockerfile) {
            Ok(inputs) => ControlFlow::Continue(inputs),
            Err(invalid) => {
                self.fail(decision, invalid.reason, &invalid.message);
                ControlFlow::Break(())
            }
        }
    }

    pub(super) fn inputs(&self, dockerfile: Dockerfile) -> Result<Inputs, Invalid> {
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
    pub(super) fn refuse_if_forbidden(&self, decision: &mut Decision) -> ControlFlow<()> {
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
    pub(super) fn wait_for_missing_references(&self, decision: &mut Decision) -> ControlFlow<()> {
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
        if self.previous.phase != Some(Phase::Pending) || !self.same_build {
            decision.events.push(warning(reason, &message));
        }
        decision.requeue_after = Some(MISSING_RETRY);
        ControlFlow::Break(())
    }

    /// The previous build's pods (an older generation's, or an earlier
    /// rebuild's) are still going.
    pub(super) fn wait_for_previous_build(
        &self,
        old_build_left: bool,
        decision: &mut Decision,
    ) -> ControlFlow<()> {
        if !old_build_left {
            return ControlFlow::Continue(());
        }
        let message = if self.build.rebuild > 0 {
            "waiting for the previous build's pods to be deleted"
        } else {
            "waiting for the previous generation's pods to be deleted"
        };
        decision.status.phase = Some(Phase::Pending);
        decision.status.conditions = self.conditions(
            BuildState::InProgress,
            Reason::StoppingPreviousBuild,
            message,
        );
        decision.requeue_after = Some(Duration::from_secs(2));
        ControlFlow::Break(())
    }

    /// The pods the build needs (only the context pod until the clone is
    /// done), the deadline, and what exists of each pod, in the status.
    pub(super) fn plan<'p>(
        &'p self,
        inputs: &'p Inputs,
        cache: Option<&'p CacheView>,
        status: &mut ImageBuildStatus,
    ) -> Planned<'p> {
        let plan = inputs.plan.as_ref();
        let latest = self.latest_attempts();
        let rebase = match (plan, cache) {
            (Some(_), Some(view)) => Rebase::of(view, &latest),
            _ => Rebase::No,
        };
        let mut units = match plan {
            Some(_) if rebase.runs() => rebase_units(self.ib),
            Some(plan) => build_units(self.ib, plan),
            None => vec![context_unit()],
        };
        let cached = match cache {
            Some(view) if !rebase.runs() => {
                take_cached(&mut units, view, &latest, &self.ib.spec.output.image)
            }
            _ => BTreeMap::new(),
        };
        let deadline =
            self.start + SignedDuration::try_from(inputs.timeout).unwrap_or(SignedDuration::MAX);
        let objects = BuildObjects {
            ib: self.ib,
            plan,
            settings: self.settings,
            generation: self.generation,
            rebuild: self.build.rebuild,
            deadline_seconds: (deadline.duration_since(self.now).as_secs()).max(1),
            cache,
        };
        let planned = Planned {
            units,
            cached,
            rebase,
            objects,
            latest,
            deadline,
            timeout: inputs.timeout,
        };
        let key = |unit: &Unit| match &unit.kind {
            UnitKind::Chain { id, .. } | UnitKind::Extraction { id } => {
                cache.and_then(|c| c.key(id))
            }
            _ => None,
        };
        status.stages = planned
            .units
            .iter()
            .filter_map(
                |unit| match (planned.cached.get(&unit.n), planned.latest.get(&unit.n)) {
                    (Some(k), _) => Some(cached_stage_status(unit, k)),
                    (None, Some(pod)) => Some(stage_status(unit, pod, key(unit))),
                    (None, None) => None,
                },
            )
            .collect();
        // A rebase that fell back: its pod, and why, stay in the status.
        if let (Rebase::FellBack(why), Some(pod)) =
            (&planned.rebase, planned.latest.get(&REBASE_UNIT))
        {
            let stage = StageStatus {
                message: Some(why.clone()),
                ..stage_status(&rebase_unit(), pod, None)
            };
            status.stages.insert(0, stage);
        }
        planned
    }

    /// The latest attempt of each unit of this build.
    pub(super) fn latest_attempts(&self) -> BTreeMap<usize, &'a PodState> {
        let mut latest: BTreeMap<usize, &PodState> = BTreeMap::new();
        for pod in self
            .observed
            .pods
            .iter()
            .filter(|p| p.build() == self.build)
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
}
