//! Conditions in the kstatus shape: `Ready`, with `Reconciling` while a build
//! is under way and `Stalled` when it can't go on without a change. Each
//! carries the generation it describes; `lastTransitionTime` moves only when
//! a condition's status changes.

use std::fmt;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// Why a build's conditions say what they say, and why an event was
/// recorded. The strings are API: users' alerts, `kubectl wait` and GitOps
/// health checks match on them, so a variant's string never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The spec breaks a rule the CRD's schema can't express (a bad image
    /// reference, timeout, path, URL, or not exactly one Dockerfile source).
    InvalidSpec,
    /// The Dockerfile can't be planned, or its plan is too big for a pod.
    InvalidDockerfile,
    /// The context pod (the git clone) failed or reported nothing usable.
    ContextFailed,
    /// The namespace's Pod Security level rejects the build pods.
    PodSecurityForbidden,
    /// A referenced ConfigMap does not exist (checked again every minute).
    ConfigMapNotFound,
    /// A referenced Secret does not exist (checked again every minute).
    SecretNotFound,
    /// A new build (a new generation, a rebuild) waits for the previous
    /// build's pods to go.
    StoppingPreviousBuild,
    /// The build, or one of its pods, ran past the build's deadline.
    Timeout,
    /// Event: a disrupted pod (evicted, preempted, deleted) is recreated.
    PodRetried,
    /// A pod was disrupted more often than the retries allow.
    PodDisrupted,
    /// The image was pushed.
    Succeeded,
    /// The assemble pod failed, or its result could not be read.
    AssembleFailed,
    /// Event: a build pod was created.
    PodCreated,
    /// A git context is being cloned; the plan waits for its Dockerfile.
    Cloning,
    /// Build pods exist and run.
    Building,
    /// No pod of the build exists yet, or the build waits for one.
    Pending,
    /// An image a pod needs (a `FROM` image or the helper) can't be pulled.
    ImagePullFailed,
    /// A pod can't start (`CreateContainerConfigError`).
    PodFailed,
    /// The probe pod, which reads a runtime image's users and files, failed.
    ProbeFailed,
    /// A stage's pod failed: a `RUN` exited non-zero, or a `COPY` broke.
    StageFailed,
    /// Event: the stage cache could not be asked (a base that does not
    /// resolve, a registry that refuses); the build runs uncached.
    CacheUnavailable,
    /// Event: the cached layers of the final image did not fit its base
    /// as it is now (or the rebase pod failed); the build runs as usual.
    RebaseNotApplied,
}

impl Reason {
    /// Every reason, in the order of the enum.
    pub const ALL: [Reason; 22] = [
        Reason::InvalidSpec,
        Reason::InvalidDockerfile,
        Reason::ContextFailed,
        Reason::PodSecurityForbidden,
        Reason::ConfigMapNotFound,
        Reason::SecretNotFound,
        Reason::StoppingPreviousBuild,
        Reason::Timeout,
        Reason::PodRetried,
        Reason::PodDisrupted,
        Reason::Succeeded,
        Reason::AssembleFailed,
        Reason::PodCreated,
        Reason::Cloning,
        Reason::Building,
        Reason::Pending,
        Reason::ImagePullFailed,
        Reason::PodFailed,
        Reason::ProbeFailed,
        Reason::StageFailed,
        Reason::CacheUnavailable,
        Reason::RebaseNotApplied,
    ];

    /// The reason as conditions and events carry it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidSpec => "InvalidSpec",
            Reason::InvalidDockerfile => "InvalidDockerfile",
            Reason::ContextFailed => "ContextFailed",
            Reason::PodSecurityForbidden => "PodSecurityForbidden",
            Reason::ConfigMapNotFound => "ConfigMapNotFound",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::StoppingPreviousBuild => "StoppingPreviousBuild",
            Reason::Timeout => "Timeout",
            Reason::PodRetried => "PodRetried",
            Reason::PodDisrupted => "PodDisrupted",
            Reason::Succeeded => "Succeeded",
            Reason::AssembleFailed => "AssembleFailed",
            Reason::PodCreated => "PodCreated",
            Reason::Cloning => "Cloning",
            Reason::Building => "Building",
            Reason::Pending => "Pending",
            Reason::ImagePullFailed => "ImagePullFailed",
            Reason::PodFailed => "PodFailed",
            Reason::ProbeFailed => "ProbeFailed",
            Reason::StageFailed => "StageFailed",
            Reason::CacheUnavailable => "CacheUnavailable",
            Reason::RebaseNotApplied => "RebaseNotApplied",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lets callers and tests compare with the string a condition carries.
impl PartialEq<str> for Reason {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The condition set for a build state, merged with the previous one.
pub fn conditions(
    previous: &[Condition],
    generation: i64,
    state: BuildState,
    reason: Reason,
    message: &str,
    now: Timestamp,
) -> Vec<Condition> {
    let reason = reason.as_str();
    let (ready, reconciling, stalled) = match state {
        BuildState::InProgress => ("False", "True", "False"),
        BuildState::Succeeded => ("True", "False", "False"),
        BuildState::Failed => ("False", "False", "True"),
    };
    let mut out = vec![merge(
        previous, READY, ready, reason, message, generation, now,
    )];
    // kstatus: the abnormal-true conditions are present only when true.
    if reconciling == "True" {
        out.push(merge(
            previous,
            RECONCILING,
            "True",
            reason,
            message,
            generation,
            now,
        ));
    }
    if stalled == "True" {
        out.push(merge(
            previous, STALLED, "True", reason, message, generation, now,
        ));
    }
    out
}

/// Where a build stands, as the conditions show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildState {
    InProgress,
    Succeeded,
    Failed,
}

fn merge(
    previous: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: i64,
    now: Timestamp,
) -> Condition {
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: Some(generation),
        last_transition_time: since,
    }
}

/// The condition of `type_`, if set.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let t2: Timestamp = "2026-01-01T00:02:00Z".parse().unwrap();
        let first = conditions(&[], 1, BuildState::InProgress, Reason::Building, "a", t0);
        let again = conditions(&first, 1, BuildState::InProgress, Reason::Building, "b", t1);
        assert_eq!(find(&again, READY).unwrap().last_transition_time.0, t0);
        assert_eq!(find(&again, READY).unwrap().message, "b");
        let done = conditions(&again, 1, BuildState::Succeeded, Reason::Succeeded, "", t2);
        assert_eq!(find(&done, READY).unwrap().status, "True");
        assert_eq!(find(&done, READY).unwrap().last_transition_time.0, t2);
        assert!(find(&done, RECONCILING).is_none());
        assert!(find(&done, STALLED).is_none());
        let failed = conditions(&[], 2, BuildState::Failed, Reason::Timeout, "", t2);
        assert_eq!(find(&failed, STALLED).unwrap().observed_generation, Some(2));
    }

    /// The strings are API (alerts and health checks match them): any
    /// change here is a breaking change for users.
    #[test]
    fn every_reason_keeps_its_string() {
        let want = [
            "InvalidSpec",
            "InvalidDockerfile",
            "ContextFailed",
            "PodSecurityForbidden",
            "ConfigMapNotFound",
            "SecretNotFound",
            "StoppingPreviousBuild",
            "Timeout",
            "PodRetried",
            "PodDisrupted",
            "Succeeded",
            "AssembleFailed",
            "PodCreated",
            "Cloning",
            "Building",
            "Pending",
            "ImagePullFailed",
            "PodFailed",
            "ProbeFailed",
            "StageFailed",
            "CacheUnavailable",
            "RebaseNotApplied",
        ];
        let got: Vec<String> = Reason::ALL.iter().map(Reason::to_string).collect();
        assert_eq!(got, want);
        for reason in Reason::ALL {
            assert_eq!(format!("{reason:?}"), reason.as_str());
            assert!(reason == reason.as_str());
        }
    }
}
