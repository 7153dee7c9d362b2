//! What `slimforge build` tells its user while it runs: one line per step
//! and per pod phase change, the time from the build's start in front; at
//! the end, when each pod ran, and how much smaller the image came out.

use std::collections::BTreeMap;
use std::time::Instant;

use jiff::Timestamp;

use crate::api::{ImageBuildStatus, human_size};
use crate::cache::lookup::CacheView;
use crate::controller::reconcile::{PodPhase, PodState};

/// When a pod of the build was created, started and finished.
#[derive(Debug, Clone)]
pub struct PodTiming {
    pub stage: String,
    pub pod: String,
    /// Seconds from the build's start.
    pub created: f64,
    pub started: Option<f64>,
    pub finished: Option<f64>,
}

/// The progress lines of one build, on stderr.
pub(super) struct Progress {
    started: Instant,
    start_time: Timestamp,
    /// The last phase printed per pod.
    shown: BTreeMap<String, PodPhase>,
}

impl Progress {
    /// Progress counted from now.
    pub fn start() -> Self {
        Progress {
            started: Instant::now(),
            start_time: Timestamp::now(),
            shown: BTreeMap::new(),
        }
    }

    /// Seconds since the build's start.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Seconds from the build's start to `t`.
    pub fn seconds_since_start(&self, t: Timestamp) -> f64 {
        t.duration_since(self.start_time).as_secs_f64()
    }

    /// One line, after the seconds since the build's start.
    pub fn line(&self, message: &str) {
        eprintln!("[{:6.1}s] {message}", self.elapsed());
    }

    /// A line for every pod whose phase changed since the last call;
    /// `stage_of` names the stage a pod runs.
    pub fn pod_phases(&mut self, pods: &[PodState], stage_of: impl Fn(&str) -> String) {
        for pod in pods {
            if self.shown.get(&pod.name) == Some(&pod.phase) {
                continue;
            }
            self.shown.insert(pod.name.clone(), pod.phase);
            let stage = stage_of(&pod.name);
            let detail = match (pod.phase, pod.started, pod.finished) {
                (PodPhase::Succeeded | PodPhase::Failed, Some(start), Some(end)) => {
                    let secs = end.duration_since(start).as_secs_f64().max(0.0);
                    format!(" in {secs:.1}s")
                }
                _ => String::new(),
            };
            let phase = format!("{:?}", pod.phase).to_lowercase();
            self.line(&format!("{stage:<14} {phase}{detail} ({})", pod.name));
        }
    }

    /// What the cache had: a line per cached chain, the probe's answer,
    /// the final layers from another base digest, the whole image when it
    /// had that, or why it could not be used.
    pub fn cache(&self, view: &CacheView) {
        if let Some(error) = &view.error {
            self.line(&format!("cache          not used: {error}"));
            return;
        }
        for (id, entry) in &view.hits {
            self.line(&format!("{id:<14} cached ({})", short_key(&entry.key)));
        }
        if let Some(recipe) = &view.recipe {
            self.line(&format!(
                "probe          cached ({})",
                short_key(&recipe.key)
            ));
        }
        if let Some(rebase) = &view.rebase {
            self.line(&format!(
                "layers         cached ({}): built on {}",
                short_key(&rebase.key),
                rebase.base
            ));
        }
        if let Some(image) = &view.image {
            self.line(&format!(
                "image          cached ({}): {}",
                short_key(&image.key),
                image.image.reference
            ));
        }
    }

    /// When each pod's main container ran, from the build's start.
    pub fn timeline(&self, timeline: &[PodTiming]) {
        for pod in timeline {
            if let (Some(start), Some(end)) = (pod.started, pod.finished) {
                self.line(&format!(
                    "{} ran {start:.1}s–{end:.1}s ({})",
                    pod.stage, pod.pod
                ));
            }
        }
    }
}

/// `sha256:0123456789ab…` → `0123456789ab`.
fn short_key(key: &str) -> &str {
    let hex = key.trim_start_matches("sha256:");
    &hex[..hex.len().min(12)]
}

/// The line `slimforge build` prints about the reduction.
pub fn size_summary(status: &ImageBuildStatus) -> Option<String> {
    let image = status.image.as_ref()?;
    let final_size = image.size_bytes.max(0) as u64;
    Some(match image.builder_size_bytes {
        Some(builder) if final_size > 0 => {
            let ratio = builder as f64 / final_size as f64;
            format!(
                "largest builder image {}{} compressed → final image {} compressed ({})",
                image
                    .builder_image
                    .as_deref()
                    .map(|i| format!("{i}: "))
                    .unwrap_or_default(),
                human_size(builder.max(0) as u64),
                human_size(final_size),
                if (0.95..1.05).contains(&ratio) {
                    "about the same size".to_string()
                } else if ratio >= 1.0 {
                    format!("{ratio:.1}× smaller")
                } else {
                    format!("{:.1}× larger", 1.0 / ratio)
                }
            )
        }
        _ => format!("final image {} compressed", human_size(final_size)),
    })
}
