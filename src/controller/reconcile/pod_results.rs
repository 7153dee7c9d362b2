//! What the pods report: their phases and waiting reasons, their result
//! files (the [`crate::contract`] types), read into status and messages.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{PodPhase, PodState};
use crate::api::{ImageStatus, StageStatus, human_size};
use crate::contract::{AssembleResult, ChainFailure, CloneResult};
use crate::controller::Settings;
use crate::controller::pods::{Unit, UnitKind};
use crate::controller::status::Reason;

/// The status's image from what the assemble pod reports.
pub(super) fn image_status(outcome: AssembleResult) -> ImageStatus {
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
        base: outcome.base,
        cached: false,
        rebased: false,
        reference: outcome.reference,
        digest: outcome.digest,
    }
}

/// its exit code 137 or 143 would fail the build as if its `RUN` had.
pub(super) fn is_disruption(pod: &PodState) -> bool {
    disruption(pod).is_some()
}

/// What disrupted the pod, as the PodRetried and PodDisrupted messages say it.
pub(super) fn disruption(pod: &PodState) -> Option<&str> {
    match pod.reason.as_deref() {
        Some(
            reason @ ("Evicted" | "Preempting" | "Shutdown" | "NodeLost" | "Terminated"
            | "NodeShutdown"),
        ) => Some(reason),
        _ if pod.deleting && pod.phase == PodPhase::Failed => Some("deleted"),
        _ => None,
    }
}

pub(super) const PULL_FAILURES: [&str; 4] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
];

/// The kubelet's own pull rate limit (`registryPullQPS`, 5 a second by
/// default): what it says when many pods pull at once, as ErrImagePull and
/// then inside ImagePullBackOff's message. It retries by itself; the image
/// may well exist.
pub(super) const KUBELET_PULL_THROTTLED: &str = "pull QPS exceeded";

/// Why this pod fails the build, if it does.
pub(super) fn pod_failure(
    unit: &Unit,
    pod: &PodState,
    settings: &Settings,
) -> Option<(Reason, String)> {
    if let Some(waiting) = &pod.waiting {
        if PULL_FAILURES.contains(&waiting.reason.as_str())
            && !waiting.message.contains(KUBELET_PULL_THROTTLED)
        {
            let helper = waiting.container == "install"
                || matches!(
                    unit.kind,
                    UnitKind::Assemble | UnitKind::Context | UnitKind::Rebase
                );
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
        UnitKind::Assemble | UnitKind::Rebase => Reason::AssembleFailed,
        UnitKind::Probe => Reason::ProbeFailed,
        _ => Reason::StageFailed,
    };
    Some((reason, failure_message(unit, pod)))
}

/// `stage builder, line 5 (RUN go build app.go): exit code 3` and the log tail.
pub(super) fn failure_message(unit: &Unit, pod: &PodState) -> String {
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

pub(super) fn stage_status(unit: &Unit, pod: &PodState, key: Option<&str>) -> StageStatus {
    StageStatus {
        cached: key.map(|_| false),
        cache_key: key.map(str::to_string),
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
pub(super) struct CloneOutcome {
    pub(super) commit: String,
    pub(super) dockerfile: Option<String>,
    /// What each COPY/ADD reads, digested in the pod (for the cache keys).
    pub(super) context_digests: BTreeMap<String, String>,
}

pub(super) fn clone_outcome(pod: &PodState) -> Result<CloneOutcome, String> {
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
    Ok(CloneOutcome {
        commit,
        dockerfile,
        context_digests: result.context_digests,
    })
}
