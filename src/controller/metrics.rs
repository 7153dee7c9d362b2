//! Prometheus metrics of the controller: builds by result, build and stage
//! durations, builds in flight. No label comes from an object's name or an
//! error text: cardinality stays fixed.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::{ImageBuildStatus, Phase};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `succeeded` or `failed`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// `chain`, `probe` or `assemble`.
    pub kind: String,
}

pub struct Metrics {
    registry: Registry,
    pub builds: Family<ResultLabels, Counter>,
    pub build_seconds: Histogram,
    pub stage_seconds: Family<StageLabels, Histogram>,
    pub in_flight: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("slimforge");
        let builds = Family::<ResultLabels, Counter>::default();
        // Both results exist from the start, so a rate over them is 0
        // rather than "no data" before the first build finishes.
        for result in ["succeeded", "failed"] {
            drop(builds.get_or_create(&ResultLabels {
                result: result.into(),
            }));
        }
        registry.register("builds", "Finished builds by result", builds.clone());
        // 1 s … ~4.5 h.
        let build_seconds = Histogram::new(exponential_buckets(1.0, 2.0, 15));
        registry.register(
            "build_duration_seconds",
            "Wall time of finished builds",
            build_seconds.clone(),
        );
        let stage_seconds = Family::<StageLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.25, 2.0, 16))
        });
        registry.register(
            "stage_duration_seconds",
            "Run time of the build's pods by kind",
            stage_seconds.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "builds_in_flight",
            "Builds not finished yet",
            in_flight.clone(),
        );
        Metrics {
            registry,
            builds,
            build_seconds,
            stage_seconds,
            in_flight,
        }
    }

    /// Counts a build that just finished, with its pods' durations.
    pub fn record_build(&self, status: &ImageBuildStatus) {
        let result = match status.phase {
            Some(Phase::Succeeded) => "succeeded",
            _ => "failed",
        };
        self.builds
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
        if let (Some(start), Some(end)) = (&status.start_time, &status.completion_time) {
            self.build_seconds
                .observe(end.0.duration_since(start.0).as_secs_f64().max(0.0));
        }
        for stage in &status.stages {
            if let (Some(start), Some(end)) = (&stage.start_time, &stage.completion_time) {
                let kind = match stage.name.as_str() {
                    "probe" | "assemble" => stage.name.clone(),
                    _ => "chain".into(),
                };
                self.stage_seconds
                    .get_or_create(&StageLabels { kind })
                    .observe(end.0.duration_since(start.0).as_secs_f64().max(0.0));
            }
        }
    }

    /// The Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn build_counters_start_at_zero() {
        let text = Metrics::new().encode();
        assert!(
            text.contains("slimforge_builds_total{result=\"succeeded\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("slimforge_builds_total{result=\"failed\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn a_finished_build_is_counted_with_its_durations() {
        let metrics = Metrics::new();
        let t0: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let status = ImageBuildStatus {
            phase: Some(Phase::Succeeded),
            start_time: Some(Time(t0)),
            completion_time: Some(Time(t0 + jiff::SignedDuration::from_secs(12))),
            stages: vec![crate::api::StageStatus {
                name: "builder".into(),
                pod: "goapp-g1-1".into(),
                phase: "Succeeded".into(),
                start_time: Some(Time(t0)),
                completion_time: Some(Time(t0 + jiff::SignedDuration::from_secs(3))),
                ..Default::default()
            }],
            ..Default::default()
        };
        metrics.record_build(&status);
        let text = metrics.encode();
        assert!(
            text.contains("slimforge_builds_total{result=\"succeeded\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("slimforge_build_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("slimforge_stage_duration_seconds_count{kind=\"chain\"} 1"),
            "{text}"
        );
        assert!(!text.contains("goapp"), "no object names in labels");
    }
}
