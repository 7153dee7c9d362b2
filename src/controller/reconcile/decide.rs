//! The pass's last steps: fail, retry, succeed or start what can start,
//! and write the progress in the status.

use std::ops::ControlFlow;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Resource;

use super::pod_results::{disruption, image_status, is_disruption, pod_failure};
use super::{
    CACHE_WAIT, Decision, POLL, Pass, Planned, PodPhase, notice, pin_node, spec_timeout_text,
    truncate, ttl_requeue, warning,
};
use crate::api::{Phase, human_size};
use crate::contract::AssembleResult;
use crate::controller::pods::{Unit, UnitKind, claim_name};
use crate::controller::status::{BuildState, Reason, conditions};

impl Pass<'_> {
    /// Why the build fails, if it does: the deadline passed or a pod
    /// failed. If not, evicted or preempted pods are retried, a bounded
    /// number of times, and a disruption past the retries is the failure.
    pub(super) fn retry_or_find_failure(
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
        self.drop_unreachable_caches(planned, decision);
        self.disrupted_past_retries(planned)
    }

    /// A chain pod that has waited [`CACHE_WAIT`] without starting a
    /// container (its ReadWriteOnce cache claims are attached to another
    /// node, bound to one it cannot run on, or held by a build that waits
    /// for this one's) is made again with empty caches: the build goes on
    /// without them rather than wait, perhaps for ever.
    pub(super) fn drop_unreachable_caches(&self, planned: &Planned<'_>, decision: &mut Decision) {
        for (unit, pod) in planned.with_pods() {
            let mounts_caches = !planned.objects.unit_cache_ids(unit).is_empty();
            let waited = pod.created.is_some_and(|created| {
                self.now.duration_since(created)
                    > jiff::SignedDuration::try_from(CACHE_WAIT).unwrap_or_default()
            });
            if !mounts_caches
                || pod.fresh_caches
                || pod.phase != PodPhase::Pending
                || pod.containers_started
                || pod.deleting
                || !waited
            {
                continue;
            }
            let node = pin_node(&planned.objects, &planned.latest);
            decision.create_pods.push(planned.objects.pod_with_caches(
                unit,
                pod.attempt + 1,
                node.as_deref(),
                true,
            ));
            decision.delete_pods.push(pod.name.clone());
            decision.events.push(warning(
                Reason::PodRetried,
                &format!(
                    "pod {} waited {}s for its cache volumes without starting; retrying as attempt {} with empty caches (nothing it caches is kept)",
                    pod.name,
                    CACHE_WAIT.as_secs(),
                    pod.attempt + 1
                ),
            ));
        }
    }

    /// A new attempt for each disrupted pod that has retries left.
    pub(super) fn retry_disrupted_pods(&self, planned: &Planned<'_>, decision: &mut Decision) {
        for (unit, pod) in planned.with_pods() {
            if pod.phase != PodPhase::Failed
                || !is_disruption(pod)
                || pod.attempt >= self.settings.max_pod_retries
            {
                continue;
            }
            let node = pin_node(&planned.objects, &planned.latest);
            decision.create_pods.push(planned.objects.pod_with_caches(
                unit,
                pod.attempt + 1,
                node.as_deref(),
                pod.fresh_caches,
            ));
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

    pub(super) fn disrupted_past_retries(&self, planned: &Planned<'_>) -> Option<(Reason, String)> {
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
    pub(super) fn end_on_failure(
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
    pub(super) fn end_when_assembled(
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

    pub(super) fn succeed(&self, outcome: AssembleResult, decision: &mut Decision) {
        let message = format!(
            "pushed {} ({})",
            outcome.reference,
            human_size(outcome.size_bytes)
        );
        self.succeed_with(image_status(outcome), message, decision);
    }

    /// The build succeeded with `image`: the status, the event saying
    /// `message`, and the TTL's requeue.
    pub(super) fn succeed_with(
        &self,
        image: crate::api::ImageStatus,
        message: String,
        decision: &mut Decision,
    ) {
        let status = &mut decision.status;
        status.image = Some(image);
        status.phase = Some(Phase::Succeeded);
        status.completion_time = Some(Time(self.now));
        status.conditions = self.conditions(BuildState::Succeeded, Reason::Succeeded, &message);
        decision.events.push(notice(Reason::Succeeded, message));
        decision.requeue_after = ttl_requeue(self.ib, self.now, self.now);
    }

    /// The workspace claim, and a pod for each unit whose dependencies are
    /// done. A ReadWriteOnce build starts one pod until it is scheduled;
    /// the rest follow it to its node.
    pub(super) fn start_ready_pods(&self, planned: &Planned<'_>, decision: &mut Decision) {
        let name = self.ib.meta().name.clone().unwrap_or_default();
        let current_claim = claim_name(&name, self.build);
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
                    && !planned.cached.contains_key(&u.n)
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
            // The first pod decides the node. One that mounts cache volumes
            // goes first: the scheduler puts it where those volumes can be
            // (a node-bound volume's node), and the build follows it there.
            let mounts_caches = |u: &&&Unit| !planned.objects.unit_cache_ids(u).is_empty();
            let first = ready.iter().find(mounts_caches).or(ready.first()).copied();
            first.into_iter().collect()
        };
        for unit in to_start {
            for claim in planned
                .objects
                .cache_claims(&planned.objects.unit_cache_ids(unit))
            {
                if !decision.cache_claims.contains(&claim) {
                    decision.cache_claims.push(claim);
                }
            }
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
    pub(super) fn report_progress(&self, planned: &Planned<'_>, decision: &mut Decision) {
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
    pub(super) fn fail(&self, decision: &mut Decision, reason: Reason, message: &str) {
        let status = &mut decision.status;
        status.phase = Some(Phase::Failed);
        status.completion_time = Some(Time(self.now));
        status.conditions = self.conditions(BuildState::Failed, reason, &truncate(message));
        decision.events.push(warning(reason, message));
    }

    /// The condition set for `state`, merged with the previous status's.
    pub(super) fn conditions(
        &self,
        state: BuildState,
        reason: Reason,
        message: &str,
    ) -> Vec<Condition> {
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
