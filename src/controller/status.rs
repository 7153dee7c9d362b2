//! Conditions in the kstatus shape: `Ready`, with `Reconciling` while a build
//! is under way and `Stalled` when it can't go on without a change. Each
//! carries the generation it describes; `lastTransitionTime` moves only when
//! a condition's status changes.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// The condition set for a build state, merged with the previous one.
pub fn conditions(
    previous: &[Condition],
    generation: i64,
    state: BuildState,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> Vec<Condition> {
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
        let first = conditions(&[], 1, BuildState::InProgress, "Building", "a", t0);
        let again = conditions(&first, 1, BuildState::InProgress, "Building", "b", t1);
        assert_eq!(find(&again, READY).unwrap().last_transition_time.0, t0);
        assert_eq!(find(&again, READY).unwrap().message, "b");
        let done = conditions(&again, 1, BuildState::Succeeded, "Succeeded", "", t2);
        assert_eq!(find(&done, READY).unwrap().status, "True");
        assert_eq!(find(&done, READY).unwrap().last_transition_time.0, t2);
        assert!(find(&done, RECONCILING).is_none());
        assert!(find(&done, STALLED).is_none());
        let failed = conditions(&[], 2, BuildState::Failed, "Timeout", "", t2);
        assert_eq!(find(&failed, STALLED).unwrap().observed_generation, Some(2));
    }
}
