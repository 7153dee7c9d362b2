//! The reconcile core with plain values: an ImageBuild, a world of pods
//! that the test moves along by hand, and the decisions the core takes.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use slimforge::api::{ImageBuild, Phase};
use slimforge::cache::entry::{
    CachedExport, CachedLayer, ChainEntry, ImageEntry, LayersEntry, RecipeEntry,
};
use slimforge::cache::lookup::{CacheView, ContextRef};
use slimforge::contract::{CACHE_STORE_ENV, REBASE_ENV, RECIPE_ENV, RebaseRequest};
use slimforge::controller::pods::{BuildId, REBASE_UNIT};
use slimforge::controller::reconcile::{
    CACHE_WAIT, Decision, FRESH_CACHES_ANNOTATION, Observed, PodPhase, PodState, Waiting,
    current_build,
};
use slimforge::controller::status::{READY, RECONCILING, STALLED, find};
use slimforge::controller::{
    ATTEMPT_LABEL, REBUILD_ANNOTATION, REBUILD_LABEL, Settings, UNIT_LABEL, reconcile,
};

const SEED: &str = r#"
apiVersion: slimforge.dev/v1alpha1
kind: ImageBuild
metadata: {name: goapp, namespace: demo, uid: 1234-abcd, generation: 1}
spec:
  context:
    inline: {app.go: "package main\nfunc main() {}\n"}
  dockerfile: |
    FROM golang:1.22 AS builder
    WORKDIR /go
    COPY app.go .
    RUN CGO_ENABLED=0 go build app.go

    FROM busybox
    COPY --from=builder /go/app .
    CMD ["./app"]
  output: {image: "registry.example/team/goapp:v1", pushSecret: regcred}
  timeout: 10m
  ttlSecondsAfterFinished: 600
"#;

fn image_build(yaml: &str) -> ImageBuild {
    serde_yaml::from_str(yaml).expect("ImageBuild YAML")
}

struct World {
    ib: ImageBuild,
    pods: Vec<PodState>,
    claims: Vec<(String, BuildId)>,
    missing: Vec<(String, String)>,
    /// What the shell's triggers report.
    triggered: Option<String>,
    now: Timestamp,
    settings: Settings,
    created: Vec<String>,
    /// What the cache answers (nothing cached, unless a test says).
    cache: CacheView,
    /// The cache's answer as the shell kept it, once asked, and the build
    /// it was asked for.
    asked: Option<(BuildId, CacheView)>,
    /// How many times the cache was asked.
    lookups: usize,
}

impl World {
    fn new(ib: ImageBuild) -> Self {
        World {
            ib,
            pods: Vec::new(),
            claims: Vec::new(),
            missing: Vec::new(),
            triggered: None,
            now: "2026-11-27T10:00:00Z".parse().unwrap(),
            settings: Settings {
                helper_image: "registry.example/slimforge:test".into(),
                ..Settings::default()
            },
            created: Vec::new(),
            cache: CacheView::default(),
            asked: None,
            lookups: 0,
        }
    }

    /// What the shell sees, the cache view only for the build the pass
    /// works on (as both shells keep it).
    fn observed(&self) -> Observed {
        let build = current_build(&self.ib, self.triggered.as_deref());
        Observed {
            pods: self.pods.clone(),
            claims: self.claims.clone(),
            missing: self.missing.clone(),
            cache: self
                .asked
                .as_ref()
                .filter(|(asked_for, _)| *asked_for == build)
                .map(|(_, view)| view.clone()),
            triggered: self.triggered.clone(),
            ..Observed::default()
        }
    }

    /// One reconcile, its decision carried out: pods created start Pending
    /// on node-a, deleted ones vanish, the status is written.
    fn step(&mut self) -> Decision {
        let mut decision = reconcile(&self.ib, &self.observed(), &self.settings, self.now);
        if decision.lookup.take().is_some() {
            // The shell's part: answer, keep the answer, decide again.
            self.asked = Some((decision.build, self.cache.clone()));
            self.lookups += 1;
            decision = reconcile(&self.ib, &self.observed(), &self.settings, self.now);
        }
        if let Some(claim) = &decision.create_claim {
            let build = BuildId::from_labels(claim.meta().labels.as_ref().unwrap()).unwrap();
            self.claims
                .push((claim.meta().name.clone().unwrap(), build));
        }
        for pod in &decision.create_pods {
            self.created.push(pod.meta().name.clone().unwrap());
            self.pods.push(new_pod(pod));
        }
        self.pods
            .retain(|p| !decision.delete_pods.contains(&p.name));
        self.claims
            .retain(|(c, _)| !decision.delete_claims.contains(c));
        self.ib.status = Some(decision.status.clone());
        decision
    }

    fn pod_mut(&mut self, unit: usize) -> &mut PodState {
        self.pods
            .iter_mut()
            .filter(|p| p.unit == unit)
            .max_by_key(|p| (p.generation, p.rebuild, p.attempt))
            .expect("a pod for that unit")
    }

    fn finish(&mut self, unit: usize, phase: PodPhase, result: &str) {
        let now = self.now;
        let pod = self.pod_mut(unit);
        pod.phase = phase;
        pod.started = Some(now);
        pod.finished = Some(now);
        pod.exit_code = Some(if phase == PodPhase::Succeeded { 0 } else { 1 });
        pod.result = Some(result.to_string());
    }

    fn phase(&self) -> Phase {
        self.ib.status.as_ref().unwrap().phase.unwrap()
    }

    fn ready(&self) -> (String, String, String) {
        let c = find(&self.ib.status.as_ref().unwrap().conditions, READY).unwrap();
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    fn units_of_live_pods(&self) -> Vec<usize> {
        let mut units: Vec<usize> = self.pods.iter().map(|p| p.unit).collect();
        units.sort();
        units
    }
}

fn label(meta: &kube::core::ObjectMeta, key: &str) -> String {
    meta.labels.as_ref().unwrap()[key].clone()
}

fn new_pod(pod: &Pod) -> PodState {
    let meta = pod.meta();
    let mut state = PodState::of(
        meta.name.clone().unwrap(),
        BuildId::from_labels(meta.labels.as_ref().unwrap()).unwrap(),
        label(meta, UNIT_LABEL).parse().unwrap(),
        label(meta, ATTEMPT_LABEL).parse().unwrap(),
    );
    state.node = Some("node-a".into());
    // As the cluster shell reads it from the pod.
    state.fresh_caches = meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(FRESH_CACHES_ANNOTATION));
    state
}

const ASSEMBLED: &str = r#"{"reference":"registry.example/team/goapp@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","digest":"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","sizeBytes":2260000,"builderSizeBytes":186000000,"layers":[{"digest":"sha256:aa","size":1,"diffID":"sha256:bb"}]}"#;

/// Units of the seed: 1 builder chain, 2 probe, 3 assemble.
#[test]
fn seed_goes_pending_running_succeeded() {
    let mut world = World::new(image_build(SEED));
    let first = world.step();
    assert!(
        first.create_claim.is_some(),
        "the workspace claim comes first"
    );
    // ReadWriteOnce: only the first pod until it has a node.
    assert_eq!(first.create_pods.len(), 1);
    assert_eq!(world.created, ["goapp-g1-1"]);
    assert_eq!(world.phase(), Phase::Running);
    assert_eq!(world.ready().0, "False");
    assert!(find(&world.ib.status.as_ref().unwrap().conditions, RECONCILING).is_some());

    // Scheduled on node-a: the probe starts, pinned to that node; the
    // assembly waits for both.
    let second = world.step();
    assert_eq!(world.created, ["goapp-g1-1", "goapp-g1-2"]);
    let probe = &second.create_pods[0];
    let affinity = serde_json::to_value(&probe.spec.as_ref().unwrap().affinity).unwrap();
    assert_eq!(
        affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchExpressions"][0]["values"][0],
        "node-a"
    );
    // Nothing new while they run; no duplicates on a second look.
    assert!(world.step().create_pods.is_empty());
    world.finish(
        1,
        PodPhase::Succeeded,
        r#"{"status":"succeeded","exports":["builder-0"]}"#,
    );
    assert!(
        world.step().create_pods.is_empty(),
        "the probe is still running"
    );
    world.finish(2, PodPhase::Succeeded, "{}");
    world.step();
    assert_eq!(world.created.last().unwrap(), "goapp-g1-3");
    world.finish(3, PodPhase::Succeeded, ASSEMBLED);
    let done = world.step();
    assert_eq!(world.phase(), Phase::Succeeded);
    let status = world.ib.status.clone().unwrap();
    let image = status.image.unwrap();
    assert_eq!(image.short_digest, "0123456789ab");
    assert_eq!(image.size_bytes, 2_260_000);
    assert_eq!(image.builder_size_bytes, Some(186_000_000));
    assert_eq!(world.ready().0, "True");
    assert!(status.completion_time.is_some());
    assert_eq!(status.stages.len(), 3);
    assert!(done.events.iter().any(|e| e.reason == "Succeeded"));
    assert!(find(&status.conditions, RECONCILING).is_none());
}

#[test]
fn a_restart_in_the_middle_creates_no_duplicates() {
    let mut world = World::new(image_build(SEED));
    world.step();
    world.step();
    // The controller restarts: same inputs, same world; nothing to create.
    let again = reconcile(&world.ib, &world.observed(), &world.settings, world.now);
    assert!(again.create_pods.is_empty());
    assert!(again.create_claim.is_none());
    assert!(again.delete_pods.is_empty());
    // And a fresh controller with no status at all sees the pods too.
    let mut fresh = world.ib.clone();
    fresh.status = None;
    let cold = reconcile(&fresh, &world.observed(), &world.settings, world.now);
    assert!(cold.create_pods.is_empty(), "{:?}", cold.create_pods.len());
}

#[test]
fn a_failing_stage_fails_the_build_with_line_code_and_log() {
    let mut world = World::new(image_build(SEED));
    world.step();
    world.step();
    world.finish(
        1,
        PodPhase::Failed,
        r#"{"status":"failed","stage":"builder","line":4,"instruction":"RUN CGO_ENABLED=0 go build app.go","exitCode":3,"logTail":"app.go:1: syntax error\n"}"#,
    );
    let decision = world.step();
    assert_eq!(world.phase(), Phase::Failed);
    let (status, reason, message) = world.ready();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "StageFailed"));
    assert!(message.contains("stage builder, line 4"), "{message}");
    assert!(message.contains("exit code 3"), "{message}");
    assert!(message.contains("syntax error"), "{message}");
    // The probe still running is stopped; nothing else starts.
    assert!(decision.delete_pods.contains(&"goapp-g1-2".to_string()));
    assert!(decision.create_pods.is_empty());
    assert!(find(&world.ib.status.as_ref().unwrap().conditions, STALLED).is_some());
    // Terminal: never rebuilt, even when its pods are gone.
    world.pods.clear();
    let later = world.step();
    assert!(later.create_pods.is_empty());
    assert_eq!(world.phase(), Phase::Failed);
}

#[test]
fn an_unpullable_base_fails_naming_the_from_line() {
    let mut world = World::new(image_build(SEED));
    world.step();
    world.pod_mut(1).waiting = Some(Waiting {
        container: "whoami".into(),
        reason: "ImagePullBackOff".into(),
        message: "Back-off pulling image \"golang:1.22\"".into(),
    });
    world.step();
    assert_eq!(world.phase(), Phase::Failed);
    let (_, reason, message) = world.ready();
    assert_eq!(reason, "ImagePullFailed");
    assert!(message.starts_with("line 1: FROM golang:1.22"), "{message}");
}

#[test]
fn the_kubelets_pull_rate_limit_is_waited_out_not_a_failure() {
    let mut world = World::new(image_build(SEED));
    world.step();
    // Many pods at once on one node: the kubelet refuses pulls past its QPS,
    // then backs off and pulls again by itself.
    for (reason, message) in [
        ("ErrImagePull", "pull QPS exceeded"),
        (
            "ImagePullBackOff",
            "Back-off pulling image \"golang:1.22\": ErrImagePull: pull QPS exceeded",
        ),
    ] {
        world.pod_mut(1).waiting = Some(Waiting {
            container: "whoami".into(),
            reason: reason.into(),
            message: message.into(),
        });
        world.step();
        assert_eq!(world.phase(), Phase::Running, "{reason}: {message}");
    }
    // A pull that fails for a reason of the image's still fails the build.
    world.pod_mut(1).waiting = Some(Waiting {
        container: "whoami".into(),
        reason: "ErrImagePull".into(),
        message: "failed to pull and unpack image \"golang:1.22\": not found".into(),
    });
    world.step();
    assert_eq!(world.phase(), Phase::Failed);
    assert_eq!(world.ready().1, "ImagePullFailed");
}

#[test]
fn timeout_fails_the_build_and_stops_its_pods() {
    let mut world = World::new(image_build(SEED));
    world.step();
    world.step();
    world.now += SignedDuration::from_mins(11);
    let decision = world.step();
    assert_eq!(world.phase(), Phase::Failed);
    assert_eq!(world.ready().1, "Timeout");
    assert!(world.ready().2.contains("10m"));
    assert_eq!(decision.delete_pods.len(), 2);
}

#[test]
fn deadline_seconds_count_down_from_the_start() {
    let mut world = World::new(image_build(SEED));
    world.step();
    world.now += SignedDuration::from_mins(4);
    let decision = world.step();
    let spec = decision.create_pods[0].spec.clone().unwrap();
    assert_eq!(spec.active_deadline_seconds, Some(6 * 60));
}

#[test]
fn ttl_removes_pods_and_workspace_but_keeps_the_status() {
    let mut world = World::new(image_build(SEED));
    world.step();
    world.step();
    world.finish(1, PodPhase::Succeeded, "{}");
    world.finish(2, PodPhase::Succeeded, "{}");
    world.step();
    world.finish(3, PodPhase::Succeeded, ASSEMBLED);
    let done = world.step();
    assert_eq!(
        done.requeue_after,
        Some(std::time::Duration::from_secs(600))
    );
    world.now += SignedDuration::from_mins(5);
    let early = world.step();
    assert!(early.delete_pods.is_empty());
    world.now += SignedDuration::from_mins(6);
    let expired = world.step();
    assert_eq!(expired.delete_pods.len(), 3);
    assert_eq!(expired.delete_claims, ["goapp-g1-workspace"]);
    assert!(world.pods.is_empty() && world.claims.is_empty());
    assert_eq!(world.phase(), Phase::Succeeded);
    // Nothing comes back.
    let after = world.step();
    assert!(after.create_pods.is_empty() && after.create_claim.is_none());
    assert!(world.ib.status.as_ref().unwrap().image.is_some());
}

#[test]
fn a_new_generation_deletes_the_old_build_before_starting() {
    let mut world = World::new(image_build(SEED));
    world.step();
    world.step();
    world.finish(1, PodPhase::Succeeded, "{}");
    world.finish(2, PodPhase::Succeeded, "{}");
    world.step(); // the old assembly is running now
    assert!(world.pods.iter().any(|p| p.unit == 3));
    world.ib.meta_mut().generation = Some(2);
    let decision = reconcile(&world.ib, &world.observed(), &world.settings, world.now);
    assert_eq!(decision.delete_pods.len(), 3, "every old pod goes");
    assert!(
        decision.create_pods.is_empty(),
        "the new build waits until the old assembly is gone"
    );
    assert_eq!(decision.delete_claims, ["goapp-g1-workspace"]);
    assert_eq!(decision.status.observed_generation, Some(2));
    // Deletion in progress: still waiting.
    for pod in &mut world.pods {
        pod.deleting = true;
    }
    let waiting = world.step();
    assert!(waiting.create_pods.is_empty());
    assert_eq!(world.ready().1, "StoppingPreviousBuild");
    world.pods.clear();
    let started = world.step();
    assert_eq!(
        started.create_pods[0].meta().name.as_deref(),
        Some("goapp-g2-1")
    );
    assert!(started.create_claim.is_some());
}

#[test]
fn a_terminal_build_of_the_same_generation_is_a_no_op() {
    let mut world = World::new(image_build(SEED));
    world.step();
    world.step();
    world.finish(1, PodPhase::Succeeded, "{}");
    world.finish(2, PodPhase::Succeeded, "{}");
    world.step();
    world.finish(3, PodPhase::Succeeded, ASSEMBLED);
    world.step();
    let before = world.ib.status.clone();
    let again = world.step();
    assert!(again.create_pods.is_empty() && again.delete_pods.is_empty());
    assert_eq!(
        world.ib.status, before,
        "re-applied unchanged: nothing moves"
    );
}

#[test]
fn a_missing_secret_creates_nothing_and_retries_slowly() {
    let mut world = World::new(image_build(SEED));
    world.missing = vec![(
        "spec.output.pushSecret".into(),
        "Secret regcred not found".into(),
    )];
    let decision = world.step();
    assert!(decision.create_pods.is_empty() && decision.create_claim.is_none());
    assert_eq!(world.phase(), Phase::Pending);
    let (status, reason, message) = world.ready();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SecretNotFound")
    );
    assert!(message.contains("spec.output.pushSecret"));
    assert!(decision.requeue_after.unwrap() >= std::time::Duration::from_secs(30));
    // The Secret appears: the build starts.
    world.missing.clear();
    assert_eq!(world.step().create_pods.len(), 1);
}

#[test]
fn a_dockerfile_that_does_not_parse_creates_nothing_and_names_the_line() {
    let yaml = SEED.replace("RUN CGO_ENABLED", "RUNN CGO_ENABLED");
    let mut world = World::new(image_build(&yaml));
    let decision = world.step();
    assert!(decision.create_pods.is_empty() && decision.create_claim.is_none());
    assert_eq!(world.phase(), Phase::Failed);
    let (_, reason, message) = world.ready();
    assert_eq!(reason, "InvalidDockerfile");
    assert!(message.contains("line 4"), "{message}");
    assert_eq!(decision.requeue_after, None, "no retry storm");
}

#[test]
fn an_invalid_field_is_named() {
    let yaml = SEED.replace("timeout: 10m", "timeout: soon");
    let mut world = World::new(image_build(&yaml));
    world.step();
    let (_, reason, message) = world.ready();
    assert_eq!(reason, "InvalidSpec");
    assert!(message.starts_with("spec.timeout `soon`"), "{message}");

    // Each wrong duration says what is wrong with it.
    for (timeout, why) in [
        ("soon", "expected a duration such as 30m, 1h30m or 90s"),
        ("0s", "must be longer than zero"),
        ("-5m", "must be longer than zero"),
        (
            "200h",
            "longer than the most a build may take (168h, a week)",
        ),
        (
            "99999999999999999999h",
            "longer than the most a build may take (168h, a week)",
        ),
    ] {
        let yaml = SEED.replace("timeout: 10m", &format!("timeout: '{timeout}'"));
        let mut world = World::new(image_build(&yaml));
        world.step();
        let (_, reason, message) = world.ready();
        assert_eq!(reason, "InvalidSpec");
        assert_eq!(message, format!("spec.timeout `{timeout}`: {why}"));
    }
}

#[test]
fn an_evicted_pod_is_retried_a_bounded_number_of_times() {
    let mut world = World::new(image_build(SEED));
    world.step();
    world.step();
    for attempt in 1..=2 {
        let pod = world.pod_mut(1);
        pod.phase = PodPhase::Failed;
        pod.reason = Some("Evicted".into());
        let decision = world.step();
        assert_eq!(
            decision.create_pods[0].meta().name.as_deref(),
            Some(format!("goapp-g1-1-r{attempt}").as_str())
        );
        assert_eq!(world.phase(), Phase::Running);
    }
    let pod = world.pod_mut(1);
    pod.phase = PodPhase::Failed;
    pod.reason = Some("Evicted".into());
    world.step();
    assert_eq!(world.phase(), Phase::Failed);
    assert_eq!(world.ready().1, "PodDisrupted");
}

#[test]
fn a_stage_pod_deleted_by_someone_else_is_retried_not_failed() {
    let mut world = World::new(image_build(SEED));
    world.step();
    world.step();
    // `kubectl delete pod` mid-RUN: the kubelet kills it, 143 (SIGTERM) or
    // 137 (SIGKILL after the grace period), and marks it Failed before the
    // object goes.
    let pod = world.pod_mut(1);
    pod.phase = PodPhase::Failed;
    pod.exit_code = Some(137);
    pod.deleting = true;
    let decision = world.step();
    assert_eq!(
        decision.create_pods[0].meta().name.as_deref(),
        Some("goapp-g1-1-r1")
    );
    assert_eq!(world.phase(), Phase::Running);
    let retried = decision
        .events
        .iter()
        .find(|e| e.reason == "PodRetried")
        .expect("a PodRetried event");
    assert!(
        retried.note.contains("goapp-g1-1 was deleted"),
        "{}",
        retried.note
    );
    // A failed pod nobody deleted still fails the build.
    let pod = world.pod_mut(1);
    pod.phase = PodPhase::Failed;
    pod.exit_code = Some(1);
    world.step();
    assert_eq!(world.phase(), Phase::Failed);
    assert_eq!(world.ready().1, "StageFailed");
}

#[test]
fn pod_security_rejection_is_reported() {
    let mut world = World::new(image_build(SEED));
    let observed = Observed {
        forbidden: Some(
            "pods \"goapp-g1-1\" is forbidden: violates PodSecurity \"restricted:latest\"".into(),
        ),
        ..world.observed()
    };
    let decision = reconcile(&world.ib, &observed, &world.settings, world.now);
    world.ib.status = Some(decision.status);
    assert_eq!(world.ready().1, "PodSecurityForbidden");
    assert!(decision.create_pods.is_empty());
}

#[test]
fn read_write_many_starts_independent_pods_together() {
    let yaml = SEED.replace(
        "  timeout: 10m",
        "  timeout: 10m\n  workspace: {accessModes: [ReadWriteMany]}",
    );
    let mut world = World::new(image_build(&yaml));
    let decision = world.step();
    assert_eq!(
        world.units_of_live_pods(),
        [1, 2],
        "the chain and the probe"
    );
    assert!(
        decision
            .create_pods
            .iter()
            .all(|p| p.spec.as_ref().unwrap().affinity.is_none())
    );
}

const GIT: &str = r#"
apiVersion: slimforge.dev/v1alpha1
kind: ImageBuild
metadata: {name: goapp, namespace: demo, uid: 1234-abcd, generation: 1}
spec:
  context:
    git: {url: "https://git.example/team/goapp.git", revision: release, subPath: app, credentialsSecret: git-creds}
  dockerfilePath: Dockerfile
  output: {image: "registry.example/team/goapp:v1", pushSecret: regcred}
  timeout: 10m
"#;

const GIT_DOCKERFILE: &str = "FROM golang:1.22 AS builder\nWORKDIR /go\nCOPY app.go .\nRUN CGO_ENABLED=0 go build app.go\n\nFROM busybox\nCOPY --from=builder /go/app .\nCMD [\"./app\"]\n";

const COMMIT: &str = "95dc5401c9de136fc5fb209658a35eb02ff812d6";

/// The context pod's result: the commit and the Dockerfile, gzip and base64.
fn clone_result(dockerfile: &str) -> String {
    use base64::Engine as _;
    use std::io::Write as _;
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gzip.write_all(dockerfile.as_bytes()).unwrap();
    let encoded = base64::engine::general_purpose::STANDARD.encode(gzip.finish().unwrap());
    serde_json::json!({"commit": COMMIT, "dockerfile": encoded}).to_string()
}

fn pod_json(pod: &Pod) -> serde_json::Value {
    serde_json::to_value(pod).unwrap()
}

#[test]
fn a_git_build_starts_with_only_the_context_pod() {
    let mut world = World::new(image_build(GIT));
    let decision = world.step();
    assert!(decision.create_claim.is_some());
    assert_eq!(world.created, ["goapp-g1-0"]);
    assert_eq!(world.phase(), Phase::Running);
    let (_, reason, message) = world.ready();
    assert_eq!(reason, "Cloning");
    assert!(
        message.contains("https://git.example/team/goapp.git"),
        "{message}"
    );

    let pod = pod_json(&decision.create_pods[0]);
    assert_eq!(pod["metadata"]["labels"]["slimforge.dev/role"], "context");
    assert_eq!(pod["metadata"]["labels"]["slimforge.dev/unit"], "0");
    let spec = &pod["spec"];
    assert_eq!(spec["automountServiceAccountToken"], false);
    let container = &spec["containers"][0];
    assert_eq!(container["image"], "registry.example/slimforge:test");
    let command: Vec<&str> = container["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for pair in [
        ["--url", "https://git.example/team/goapp.git"],
        ["--revision", "release"],
        ["--dest", "/.slimforge/source"],
        ["--sub-path", "app"],
        ["--dockerfile", "Dockerfile"],
        ["--credentials", "/.slimforge-git"],
    ] {
        assert!(
            command.windows(2).any(|w| w == pair),
            "{pair:?} in {command:?}"
        );
    }
    let security = &container["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["runAsUser"], 65532);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"][0], "ALL");
    assert_eq!(spec["volumes"][1]["secret"]["secretName"], "git-creds");

    // Nothing else starts while it runs.
    world.pod_mut(0).phase = PodPhase::Running;
    let decision = world.step();
    assert!(decision.create_pods.is_empty());
    assert_eq!(world.units_of_live_pods(), [0]);
}

#[test]
fn after_the_clone_the_chains_start_with_the_dockerfile_it_returned() {
    let mut world = World::new(image_build(GIT));
    world.step();
    world.finish(0, PodPhase::Succeeded, &clone_result(GIT_DOCKERFILE));
    let decision = world.step();
    // The builder chain and the probe, pinned to the context pod's node.
    assert_eq!(world.created, ["goapp-g1-0", "goapp-g1-1", "goapp-g1-2"]);
    assert_eq!(
        world
            .ib
            .status
            .as_ref()
            .unwrap()
            .source
            .as_ref()
            .unwrap()
            .commit,
        COMMIT
    );
    let chain = pod_json(&decision.create_pods[0]);
    assert_eq!(chain["spec"]["containers"][0]["image"], "golang:1.22");
    let env = chain["spec"]["containers"][0]["env"].as_array().unwrap();
    let context = env
        .iter()
        .find(|e| e["name"] == "SLIMFORGE_CONTEXT")
        .expect("the chain copies from the context");
    assert_eq!(context["value"], r#"{"dir":"/.slimforge/source/app"}"#);
    assert!(
        !chain.to_string().contains("git-creds"),
        "only the context pod sees the git credentials"
    );
    assert!(
        chain["spec"]["affinity"].to_string().contains("node-a"),
        "pinned to the context pod's node"
    );

    world.finish(1, PodPhase::Succeeded, "{}");
    world.finish(2, PodPhase::Succeeded, "{}");
    world.step();
    assert_eq!(world.created.last().unwrap(), "goapp-g1-3");
    world.finish(3, PodPhase::Succeeded, ASSEMBLED);
    world.step();
    assert_eq!(world.phase(), Phase::Succeeded);
    let status = world.ib.status.as_ref().unwrap();
    assert_eq!(status.source.as_ref().unwrap().commit, COMMIT);
    let stages: Vec<&str> = status.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(stages, ["git clone", "builder", "probe", "assemble"]);
}

#[test]
fn a_failed_clone_fails_the_build_with_its_error() {
    let mut world = World::new(image_build(GIT));
    world.step();
    world.finish(
        0,
        PodPhase::Failed,
        r#"{"error":"cloning https://git.example/team/goapp.git at release: refs/heads/release: not found"}"#,
    );
    let decision = world.step();
    assert!(decision.create_pods.is_empty());
    assert_eq!(world.phase(), Phase::Failed);
    let (status, reason, message) = world.ready();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ContextFailed")
    );
    assert!(
        message.contains("at release: refs/heads/release: not found"),
        "{message}"
    );
    assert!(world.ib.status.as_ref().unwrap().source.is_none());
}

#[test]
fn a_dockerfile_from_git_that_does_not_parse_is_reported_with_the_commit() {
    let mut world = World::new(image_build(GIT));
    world.step();
    world.finish(
        0,
        PodPhase::Succeeded,
        &clone_result("FROM busybox\nBOGUS x\n"),
    );
    let decision = world.step();
    assert!(decision.create_pods.is_empty());
    assert_eq!(world.phase(), Phase::Failed);
    let (_, reason, message) = world.ready();
    assert_eq!(reason, "InvalidDockerfile");
    assert!(message.contains("spec.dockerfilePath"), "{message}");
    assert_eq!(
        world
            .ib
            .status
            .as_ref()
            .unwrap()
            .source
            .as_ref()
            .unwrap()
            .commit,
        COMMIT
    );
}

#[test]
fn an_inline_dockerfile_works_with_a_git_context() {
    let yaml = GIT.replace(
        "  dockerfilePath: Dockerfile\n",
        "  dockerfile: |\n    FROM busybox\n    COPY app.go /app.go\n",
    );
    let mut world = World::new(image_build(&yaml));
    let decision = world.step();
    let command =
        pod_json(&decision.create_pods[0])["spec"]["containers"][0]["command"].to_string();
    assert!(!command.contains("--dockerfile"), "{command}");
    world.finish(
        0,
        PodPhase::Succeeded,
        &format!(r#"{{"commit":"{COMMIT}"}}"#),
    );
    world.step();
    // No chains: the probe of busybox, then the assembly.
    assert_eq!(world.created, ["goapp-g1-0", "goapp-g1-1"]);
}

#[test]
fn an_ssh_git_url_is_refused_before_anything_starts() {
    let yaml = GIT.replace(
        "https://git.example/team/goapp.git",
        "git@git.example:team/goapp.git",
    );
    let mut world = World::new(image_build(&yaml));
    let decision = world.step();
    assert!(decision.create_pods.is_empty());
    let (_, reason, message) = world.ready();
    assert_eq!(reason, "InvalidSpec");
    assert!(message.contains("spec.context.git.url"), "{message}");
}

/// Argo CD's health for an ImageBuild: the Lua script users install from
/// deploy/argocd/argocd-cm.yaml, run by Lua 5.1 (Argo CD's dialect) over
/// the object as the core left it. Returns (status, message).
fn argocd_health(ib: &ImageBuild) -> (String, String) {
    let cm: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/argocd/argocd-cm.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    let script = cm["data"]["resource.customizations.health.slimforge.dev_ImageBuild"]
        .as_str()
        .expect("the health key");
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    assert!(
        readme.contains(&format!("```lua\n{script}```")),
        "README's Lua differs from deploy/argocd/argocd-cm.yaml"
    );
    let object = lua_value(&serde_json::to_value(ib).unwrap());
    let program = format!(
        "obj = {object}\nlocal hs = (function()\n{script}\nend)()\nio.write(hs.status, '\\n', hs.message or '')"
    );
    let out = std::process::Command::new("lua5.1")
        .args(["-e", &program])
        .output()
        .expect("lua5.1 (scripts/install-deps installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.split_once('\n').unwrap();
    (status.to_string(), message.to_string())
}

/// A JSON value as a Lua table constructor (arrays 1-based, like Argo CD's
/// conversion).
fn lua_value(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua_value).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("[{k:?}] = {}", lua_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[test]
fn argocd_health_follows_the_build() {
    let mut world = World::new(image_build(SEED));
    assert_eq!(argocd_health(&world.ib).0, "Progressing", "no status yet");
    world.step();
    assert_eq!(argocd_health(&world.ib).0, "Progressing");
    world.step();
    world.finish(1, PodPhase::Succeeded, "{}");
    world.finish(2, PodPhase::Succeeded, "{}");
    world.step();
    world.finish(3, PodPhase::Succeeded, ASSEMBLED);
    world.step();
    let (status, message) = argocd_health(&world.ib);
    assert_eq!(status, "Healthy");
    assert!(message.contains("sha256:0123456789ab"), "{message}");

    // Edited: the controller has not seen generation 2 yet.
    world.ib.meta_mut().generation = Some(2);
    assert_eq!(argocd_health(&world.ib).0, "Progressing");

    // A failed stage and a missing Secret both need a person: Degraded,
    // with the Ready message.
    let mut failed = World::new(image_build(
        &SEED.replace("RUN CGO_ENABLED", "RUNN CGO_ENABLED"),
    ));
    failed.step();
    let (status, message) = argocd_health(&failed.ib);
    assert_eq!(status, "Degraded");
    assert!(message.contains("line 4"), "{message}");
    let mut stalled = World::new(image_build(SEED));
    stalled.missing = vec![(
        "spec.output.pushSecret".into(),
        "Secret regcred not found".into(),
    )];
    stalled.step();
    let (status, message) = argocd_health(&stalled.ib);
    assert_eq!(status, "Degraded");
    assert!(message.contains("spec.output.pushSecret"), "{message}");
}

/// The cache's answer for the seed: the keys of its one chain and of the
/// image, and entries for those `hit`.
fn seed_cache(chain_hit: bool, image_hit: bool) -> CacheView {
    let chain_key = format!("sha256:{}", "c".repeat(64));
    let image_key = format!("sha256:{}", "i".repeat(64));
    let mut view = CacheView {
        repository: "registry.example/team/goapp/cache".into(),
        ..CacheView::default()
    };
    view.keys.units.insert("builder".into(), chain_key.clone());
    view.keys.image = image_key.clone();
    if chain_hit {
        view.hits.insert(
            "builder".into(),
            ChainEntry {
                key: chain_key,
                chain: "builder".into(),
                result: serde_json::json!({"status": "succeeded", "exports": ["builder-0"]}),
                exports: vec![CachedExport {
                    id: "builder-0".into(),
                    digest: format!("sha256:{}", "e".repeat(64)),
                    size: 1234,
                }],
            },
        );
    }
    if image_hit {
        view.image = Some(ImageEntry {
            key: image_key,
            image: serde_json::from_str(ASSEMBLED).unwrap(),
        });
    }
    view
}

fn env_of(pod: &Pod, name: &str) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .flat_map(|c| c.env.iter().flatten())
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

#[test]
fn the_cache_is_asked_once_before_any_pod_and_not_when_it_is_off() {
    let mut world = World::new(image_build(SEED));
    let first = reconcile(&world.ib, &world.observed(), &world.settings, world.now);
    let request = first
        .lookup
        .as_ref()
        .expect("the core asks the cache first");
    assert!(first.create_pods.is_empty() && first.create_claim.is_none());
    assert_eq!(request.output, "registry.example/team/goapp:v1");
    assert_eq!(request.secrets, ["regcred"]);
    world.step();
    world.step();
    assert!(
        reconcile(&world.ib, &world.observed(), &world.settings, world.now)
            .lookup
            .is_none(),
        "asked once"
    );
    let mut off = World::new(image_build(&SEED.replace(
        "  timeout: 10m",
        "  cache: {enabled: false}\n  timeout: 10m",
    )));
    let decision = reconcile(&off.ib, &off.observed(), &off.settings, off.now);
    assert!(decision.lookup.is_none());
    assert_eq!(decision.create_pods.len(), 1);
    off.step();
    assert_eq!(off.created, ["goapp-g1-1"]);
}

#[test]
fn an_image_the_cache_has_succeeds_without_a_pod() {
    let mut world = World::new(image_build(SEED));
    world.cache = seed_cache(true, true);
    let decision = world.step();
    assert!(decision.create_pods.is_empty());
    assert!(decision.create_claim.is_none());
    assert_eq!(world.phase(), Phase::Succeeded);
    let status = world.ib.status.clone().unwrap();
    let image = status.image.unwrap();
    assert!(image.cached);
    assert!(image.digest.starts_with("sha256:0123456789ab"));
    assert!(
        world.ready().2.contains("no pod ran"),
        "{}",
        world.ready().2
    );
    assert!(world.created.is_empty());
}

#[test]
fn a_cached_chain_runs_no_pod_and_the_assembly_reads_it_from_the_cache() {
    let mut world = World::new(image_build(SEED));
    world.cache = seed_cache(true, false);
    world.step();
    // Wave one: the probe alone; no chain pod, no restore pod (the
    // assembly is the builder's only reader, and reads the cache itself).
    world.step();
    assert_eq!(world.created, ["goapp-g1-2"], "{:?}", world.created);
    let status = world.ib.status.clone().unwrap();
    let builder = status.stages.iter().find(|s| s.name == "builder").unwrap();
    assert_eq!(builder.cached, Some(true));
    assert_eq!(builder.pod, "");
    assert_eq!(builder.phase, "Succeeded");
    world.finish(2, PodPhase::Succeeded, "{}");
    let decision = world.step();
    let assemble = decision.create_pods.first().expect("the assembly");
    // It stores the image's entry, not the chain the cache had, and gets
    // the chain's entry and every key (for its COPY --from layers).
    let store: serde_json::Value =
        serde_json::from_str(&env_of(assemble, CACHE_STORE_ENV).unwrap()).unwrap();
    assert_eq!(store["units"], serde_json::json!({}));
    assert_eq!(store["image"], format!("sha256:{}", "i".repeat(64)));
    assert_eq!(store["repository"], "registry.example/team/goapp/cache");
    assert_eq!(
        store["keys"]["builder"],
        format!("sha256:{}", "c".repeat(64))
    );
    assert_eq!(store["hits"][0]["chain"], "builder");
    assert_eq!(store["hits"][0]["exports"][0]["id"], "builder-0");
}

#[test]
fn a_cache_on_another_registry_is_restored_for_the_assembly() {
    let mut world = World::new(image_build(SEED));
    world.cache = seed_cache(true, false);
    world.cache.repository = "cache.example/goapp-cache".into();
    for _ in 0..3 {
        world.step();
    }
    let status = world.ib.status.clone().unwrap();
    let names: Vec<&str> = status.stages.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"restore"), "{names:?}");
}

#[test]
fn a_chain_that_copies_a_cached_one_waits_for_the_restore_pod() {
    let mut world = World::new(image_build(&SEED.replace(
        "FROM busybox\n",
        "FROM golang:1.22 AS tester\n    COPY --from=builder /go/app /app\n    RUN /app --version > /ok\n\n    FROM busybox\n    COPY --from=tester /ok /ok\n",
    )));
    world.cache = seed_cache(true, false);
    for _ in 0..3 {
        world.step();
    }
    let status = world.ib.status.clone().unwrap();
    let names: Vec<&str> = status.stages.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"restore"), "{names:?}");
    assert!(!names.contains(&"tester"), "the tester waits: {names:?}");
}

#[test]
fn a_cached_recipe_runs_no_probe_and_goes_to_the_assembly() {
    let mut world = World::new(image_build(SEED));
    world.cache = seed_cache(false, false);
    let recipe: slimforge::contract::FinalRecipe =
        serde_json::from_value(serde_json::json!({"layers": [], "config": {"cmd": ["./app"]}}))
            .unwrap();
    world.cache.recipe = Some(RecipeEntry {
        key: format!("sha256:{}", "r".repeat(64)),
        recipe: recipe.clone(),
    });
    world.step();
    world.step();
    assert_eq!(world.created, ["goapp-g1-1"], "the builder only, no probe");
    let status = world.ib.status.clone().unwrap();
    let probe = status.stages.iter().find(|s| s.name == "probe").unwrap();
    assert_eq!(probe.cached, Some(true));
    assert_eq!(probe.pod, "");
    world.finish(1, PodPhase::Succeeded, r#"{"status":"succeeded"}"#);
    let decision = world.step();
    let assemble = decision.create_pods.first().expect("the assembly");
    let given: slimforge::contract::FinalRecipe =
        serde_json::from_str(&env_of(assemble, RECIPE_ENV).expect("the cached recipe")).unwrap();
    assert_eq!(given, recipe);
    let store: serde_json::Value =
        serde_json::from_str(&env_of(assemble, CACHE_STORE_ENV).unwrap()).unwrap();
    assert_eq!(store["recipe"], serde_json::Value::Null, "stored already");
}

#[test]
fn a_chain_that_ran_is_stored_by_the_assembly() {
    let mut world = World::new(image_build(SEED));
    world.cache = seed_cache(false, false);
    world.step();
    world.step();
    world.finish(1, PodPhase::Succeeded, r#"{"status":"succeeded"}"#);
    world.finish(2, PodPhase::Succeeded, "{}");
    let decision = world.step();
    let store: serde_json::Value =
        serde_json::from_str(&env_of(&decision.create_pods[0], CACHE_STORE_ENV).unwrap()).unwrap();
    assert_eq!(
        store["units"]["builder"],
        format!("sha256:{}", "c".repeat(64))
    );
    let status = world.ib.status.clone().unwrap();
    let builder = status.stages.iter().find(|s| s.name == "builder").unwrap();
    assert_eq!(builder.cached, Some(false));
}

/// Runs the seed's build from the pass that creates its first pod to its
/// success: the chain and the probe, then the assembly.
fn build_seed(world: &mut World) {
    world.step();
    world.step();
    world.finish(1, PodPhase::Succeeded, r#"{"status":"succeeded"}"#);
    world.finish(2, PodPhase::Succeeded, "{}");
    world.step();
    world.finish(3, PodPhase::Succeeded, ASSEMBLED);
    world.step();
    assert_eq!(world.phase(), Phase::Succeeded, "{:?}", world.ready());
}

fn annotate(world: &mut World, value: &str) {
    world
        .ib
        .meta_mut()
        .annotations
        .get_or_insert_default()
        .insert(REBUILD_ANNOTATION.into(), value.into());
}

fn status(world: &World) -> slimforge::api::ImageBuildStatus {
    world.ib.status.clone().unwrap()
}

/// A few more passes over a finished build change nothing.
fn assert_settled(world: &mut World) {
    let before = world.ib.status.clone();
    for _ in 0..3 {
        let again = world.step();
        assert!(again.create_pods.is_empty(), "{:?}", world.created);
        assert!(again.delete_pods.is_empty() && again.create_claim.is_none());
    }
    assert_eq!(world.ib.status, before);
}

#[test]
fn a_new_rebuild_annotation_rebuilds_a_finished_build_after_retiring_it() {
    let mut world = World::new(image_build(SEED));
    build_seed(&mut world);
    assert_eq!(world.lookups, 1);
    world.now += SignedDuration::from_mins(1);

    annotate(&mut world, "1700000000");
    let retire = world.step();
    let mut deleted = retire.delete_pods.clone();
    deleted.sort();
    assert_eq!(deleted, ["goapp-g1-1", "goapp-g1-2", "goapp-g1-3"]);
    assert_eq!(retire.delete_claims, ["goapp-g1-workspace"]);
    assert!(
        retire.create_pods.is_empty() && retire.create_claim.is_none(),
        "the new build waits until the old pods are gone"
    );
    let fresh = status(&world);
    assert_eq!(world.phase(), Phase::Pending);
    assert_eq!(world.ready().1, "StoppingPreviousBuild");
    assert_eq!(fresh.build_reason.as_deref(), Some("RebuildRequested"));
    assert_eq!(fresh.rebuilds, Some(1));
    assert_eq!(fresh.observed_rebuild.as_deref(), Some("1700000000"));
    assert_eq!(fresh.observed_generation, Some(1));
    // A new build: started now, nothing of the old one's but its conditions.
    assert_eq!(fresh.start_time.map(|t| t.0), Some(world.now));
    assert!(fresh.completion_time.is_none() && fresh.image.is_none());
    assert!(fresh.stages.is_empty());

    let started = world.step();
    assert_eq!(world.lookups, 2, "a rebuild asks the cache again");
    let pod = &started.create_pods[0];
    assert_eq!(pod.meta().name.as_deref(), Some("goapp-g1b1-1"));
    assert_eq!(label(pod.meta(), REBUILD_LABEL), "1");
    let claim = started.create_claim.as_ref().expect("the rebuild's claim");
    assert_eq!(claim.meta().name.as_deref(), Some("goapp-g1b1-workspace"));
    assert_eq!(label(claim.meta(), REBUILD_LABEL), "1");
    assert_eq!(world.phase(), Phase::Running);

    // The rest of the rebuild, as the first build went.
    world.step();
    world.finish(1, PodPhase::Succeeded, r#"{"status":"succeeded"}"#);
    world.finish(2, PodPhase::Succeeded, "{}");
    world.step();
    world.finish(3, PodPhase::Succeeded, ASSEMBLED);
    world.step();
    assert_eq!(world.phase(), Phase::Succeeded);
    assert_eq!(
        &world.created[3..],
        ["goapp-g1b1-1", "goapp-g1b1-2", "goapp-g1b1-3"]
    );
    let done = status(&world);
    assert_eq!(done.rebuilds, Some(1));
    assert_eq!(done.build_reason.as_deref(), Some("RebuildRequested"));
    assert!(done.image.is_some() && done.completion_time.is_some());
    assert_settled(&mut world);

    // Another value: the next rebuild.
    annotate(&mut world, "1700000001");
    let retire = world.step();
    assert_eq!(retire.delete_claims, ["goapp-g1b1-workspace"]);
    assert_eq!(retire.delete_pods.len(), 3);
    assert!(
        retire
            .delete_pods
            .iter()
            .all(|p| p.starts_with("goapp-g1b1-"))
    );
    build_seed(&mut world);
    assert_eq!(world.created.last().unwrap(), "goapp-g1b2-3");
    let done = status(&world);
    assert_eq!(done.rebuilds, Some(2));
    assert_eq!(done.observed_rebuild.as_deref(), Some("1700000001"));
    assert_settled(&mut world);
}

#[test]
fn a_rebuild_asked_for_while_the_build_runs_waits_for_it_to_finish() {
    let mut world = World::new(image_build(SEED));
    world.step();
    world.step();
    annotate(&mut world, "1");
    world.finish(1, PodPhase::Succeeded, r#"{"status":"succeeded"}"#);
    for _ in 0..2 {
        let running = world.step();
        assert!(running.delete_pods.is_empty(), "never interrupted");
        assert!(running.delete_claims.is_empty());
    }
    world.finish(2, PodPhase::Succeeded, "{}");
    world.step();
    world.finish(3, PodPhase::Succeeded, ASSEMBLED);
    world.step();
    assert_eq!(world.phase(), Phase::Succeeded);
    assert_eq!(world.created, ["goapp-g1-1", "goapp-g1-2", "goapp-g1-3"]);
    let first = status(&world);
    assert_eq!(first.build_reason.as_deref(), Some("FirstBuild"));
    assert_eq!(first.observed_rebuild, None, "the build answered no value");
    assert_eq!(first.rebuilds, None);

    // Finished: the next pass starts the rebuild.
    let retire = world.step();
    assert_eq!(retire.delete_pods.len(), 3);
    assert_eq!(
        status(&world).build_reason.as_deref(),
        Some("RebuildRequested")
    );
    build_seed(&mut world);
    assert_eq!(world.created.last().unwrap(), "goapp-g1b1-3");
    assert_settled(&mut world);
}

#[test]
fn a_failed_build_is_rebuilt_when_asked() {
    let mut world = World::new(image_build(SEED));
    world.step();
    world.step();
    world.finish(1, PodPhase::Failed, r#"{"status":"failed","exitCode":1}"#);
    world.step();
    assert_eq!(world.phase(), Phase::Failed);
    assert_settled(&mut world);
    annotate(&mut world, "again");
    world.step();
    build_seed(&mut world);
    assert_eq!(world.created.last().unwrap(), "goapp-g1b1-3");
    assert_eq!(status(&world).rebuilds, Some(1));
}

#[test]
fn an_annotation_present_at_creation_starts_one_build() {
    let annotated = SEED.replace(
        "generation: 1}",
        "generation: 1, annotations: {slimforge.dev/rebuild: 'seed'}}",
    );
    let mut world = World::new(image_build(&annotated));
    build_seed(&mut world);
    assert_settled(&mut world);
    assert_eq!(world.created, ["goapp-g1-1", "goapp-g1-2", "goapp-g1-3"]);
    let done = status(&world);
    assert_eq!(done.observed_rebuild.as_deref(), Some("seed"));
    assert_eq!(done.build_reason.as_deref(), Some("FirstBuild"));
    assert_eq!(done.rebuilds, None);
}

#[test]
fn a_trigger_rebuilds_a_finished_build_and_waits_for_a_running_one() {
    let mut world = World::new(image_build(SEED));
    world.step();
    world.step();
    world.triggered = Some("BaseImageMoved".into());
    world.finish(1, PodPhase::Succeeded, r#"{"status":"succeeded"}"#);
    world.finish(2, PodPhase::Succeeded, "{}");
    let running = world.step();
    assert!(running.delete_pods.is_empty());
    world.finish(3, PodPhase::Succeeded, ASSEMBLED);
    world.step();
    assert_eq!(world.phase(), Phase::Succeeded);
    assert_eq!(world.created, ["goapp-g1-1", "goapp-g1-2", "goapp-g1-3"]);
    assert_eq!(status(&world).build_reason.as_deref(), Some("FirstBuild"));

    // Finished: the trigger's rebuild, with its reason.
    let retire = world.step();
    assert_eq!(retire.delete_pods.len(), 3);
    let fresh = status(&world);
    assert_eq!(fresh.build_reason.as_deref(), Some("BaseImageMoved"));
    assert_eq!(fresh.rebuilds, Some(1));
    assert_eq!(fresh.observed_rebuild, None);
    // The shell stops reporting it once the build it asked for started.
    world.triggered = None;
    build_seed(&mut world);
    assert_eq!(world.created.last().unwrap(), "goapp-g1b1-3");
    assert_eq!(
        status(&world).build_reason.as_deref(),
        Some("BaseImageMoved")
    );
    assert_settled(&mut world);
}

#[test]
fn a_spec_edit_after_rebuilds_builds_the_new_generation_from_rebuild_zero() {
    let mut world = World::new(image_build(SEED));
    build_seed(&mut world);
    annotate(&mut world, "1");
    world.step();
    build_seed(&mut world);
    assert_eq!(status(&world).rebuilds, Some(1));

    // The spec and the annotation change together: one build, the new
    // generation's, which answers the new value.
    world.ib.meta_mut().generation = Some(2);
    annotate(&mut world, "2");
    let retire = world.step();
    assert_eq!(retire.delete_claims, ["goapp-g1b1-workspace"]);
    assert!(
        retire
            .delete_pods
            .iter()
            .all(|p| p.starts_with("goapp-g1b1-"))
    );
    let fresh = status(&world);
    assert_eq!(fresh.observed_generation, Some(2));
    assert_eq!(fresh.rebuilds, None, "a new generation resets the count");
    assert_eq!(fresh.build_reason.as_deref(), Some("SpecChanged"));
    assert_eq!(fresh.observed_rebuild.as_deref(), Some("2"));
    let started = world.step();
    let pod = &started.create_pods[0];
    assert_eq!(pod.meta().name.as_deref(), Some("goapp-g2-1"));
    assert!(
        !pod.meta()
            .labels
            .as_ref()
            .unwrap()
            .contains_key(REBUILD_LABEL)
    );
    assert_eq!(
        started.create_claim.unwrap().meta().name.as_deref(),
        Some("goapp-g2-workspace")
    );
    world.step();
    world.finish(1, PodPhase::Succeeded, r#"{"status":"succeeded"}"#);
    world.finish(2, PodPhase::Succeeded, "{}");
    world.step();
    world.finish(3, PodPhase::Succeeded, ASSEMBLED);
    world.step();
    assert_eq!(world.phase(), Phase::Succeeded);
    assert_settled(&mut world);
    assert_eq!(world.created.last().unwrap(), "goapp-g2-3");
}

#[test]
fn a_rebuild_asks_the_cache_again_and_may_find_the_whole_image() {
    let mut world = World::new(image_build(SEED));
    build_seed(&mut world);
    // What the first build stored: the rebuild finds it, no pod runs.
    world.cache = seed_cache(true, true);
    annotate(&mut world, "1");
    world.step(); // the first build's pods go
    let decision = world.step();
    assert_eq!(world.lookups, 2);
    assert!(decision.create_pods.is_empty() && decision.create_claim.is_none());
    assert_eq!(world.phase(), Phase::Succeeded);
    let done = status(&world);
    assert_eq!(done.rebuilds, Some(1));
    assert_eq!(done.build_reason.as_deref(), Some("RebuildRequested"));
    assert!(done.image.unwrap().cached);
    assert!(!world.created.iter().any(|p| p.starts_with("goapp-g1b1-")));
    assert_settled(&mut world);
}

#[test]
fn a_git_build_the_cache_has_runs_only_its_clone_and_keys_with_its_digests() {
    let mut world = World::new(image_build(GIT));
    world.cache = seed_cache(true, true);
    world.step();
    assert_eq!(world.created, ["goapp-g1-0"]);
    let mut result: serde_json::Value =
        serde_json::from_str(&clone_result(GIT_DOCKERFILE)).unwrap();
    result["contextDigests"] =
        serde_json::json!({"0123456789abcdef": format!("sha256:{}", "d".repeat(64))});
    world.finish(0, PodPhase::Succeeded, &result.to_string());
    // The lookup the core asks for carries what the clone digested.
    let request = reconcile(&world.ib, &world.observed(), &world.settings, world.now)
        .lookup
        .expect("a lookup once the clone is done");
    match &request.context {
        ContextRef::Digests(digests) => assert_eq!(digests.len(), 1),
        other => panic!("{other:?}"),
    }
    let decision = world.step();
    assert!(decision.create_pods.is_empty(), "{:?}", world.created);
    assert_eq!(world.phase(), Phase::Succeeded);
    assert!(world.ib.status.clone().unwrap().image.unwrap().cached);
    assert_eq!(world.created, ["goapp-g1-0"]);
}

/// The seed's cache when its base moved: the builder's entry, and the
/// final image's layers from a build on the base's earlier digest.
fn moved_base_cache() -> CacheView {
    let mut view = seed_cache(true, false);
    let recipe: slimforge::contract::FinalRecipe = serde_json::from_value(serde_json::json!({
        "layers": [],
        "config": {},
        "baseEnvironment": {"env": {"PATH": "/bin"}, "workdir": "/"}
    }))
    .unwrap();
    view.keys.layers = Some(format!("sha256:{}", "l".repeat(64)));
    view.rebase = Some(LayersEntry {
        key: format!("sha256:{}", "l".repeat(64)),
        recipe,
        base_config: serde_json::json!({"Env": ["PATH=/bin"], "WorkingDir": "", "User": ""}),
        base: "registry.example/busybox@sha256:old".into(),
        layers: vec![CachedLayer {
            digest: format!("sha256:{}", "a".repeat(64)),
            size: 100,
            diff_id: format!("sha256:{}", "b".repeat(64)),
            created_by: "COPY --from=builder /app /app".into(),
        }],
    });
    view
}

#[test]
fn a_moved_base_is_rebased_by_one_restricted_pod() {
    let mut world = World::new(image_build(SEED));
    world.cache = moved_base_cache();
    let decision = world.step();
    assert_eq!(world.created, ["goapp-g1-99999"], "only the rebase pod");
    let pod = &decision.create_pods[0];
    let labels = pod.meta().labels.clone().unwrap_or_default();
    assert_eq!(labels["slimforge.dev/role"], "rebase");
    let security = pod.spec.as_ref().unwrap().security_context.clone().unwrap();
    assert_eq!(security.run_as_non_root, Some(true));
    let request: RebaseRequest =
        serde_json::from_str(&env_of(pod, REBASE_ENV).expect("the rebase request")).unwrap();
    assert_eq!(request.entry, world.cache.rebase.clone().unwrap());
    assert_eq!(request.repository, "registry.example/team/goapp/cache");
    let store: serde_json::Value =
        serde_json::from_str(&env_of(pod, CACHE_STORE_ENV).unwrap()).unwrap();
    assert_eq!(store["image"], format!("sha256:{}", "i".repeat(64)));
    assert_eq!(store["units"], serde_json::json!({}));
    assert!(
        world.step().create_pods.is_empty(),
        "it waits for the rebase"
    );

    let image: serde_json::Value = serde_json::from_str(ASSEMBLED).unwrap();
    let outcome = serde_json::json!({"rebased": image}).to_string();
    world.finish(REBASE_UNIT, PodPhase::Succeeded, &outcome);
    let done = world.step();
    assert_eq!(world.phase(), Phase::Succeeded);
    assert!(done.create_pods.is_empty());
    let status = world.ib.status.clone().unwrap();
    let image = status.image.unwrap();
    assert!(image.rebased && !image.cached);
    assert!(image.digest.starts_with("sha256:0123456789ab"));
    let stages: Vec<&str> = status.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(stages, ["rebase"]);
    assert!(
        world.ready().2.contains("rebased onto"),
        "{}",
        world.ready().2
    );
    assert_eq!(world.created.len(), 1);
}

#[test]
fn a_rebase_that_does_not_fit_falls_back_to_the_build_and_says_why() {
    for (phase, result, why) in [
        (
            PodPhase::Succeeded,
            r#"{"refused": "line 9: COPY resolves differently on the new base"}"#,
            "line 9: COPY resolves differently",
        ),
        (PodPhase::Failed, "registry down", "the rebase failed"),
    ] {
        let mut world = World::new(image_build(SEED));
        world.cache = moved_base_cache();
        world.step();
        world.step();
        world.finish(REBASE_UNIT, phase, result);
        let decision = world.step();
        assert_ne!(world.phase(), Phase::Failed, "{why}");
        let said: Vec<_> = decision
            .events
            .iter()
            .filter(|e| e.reason == "RebaseNotApplied")
            .collect();
        assert_eq!(said.len(), 1, "{:?}", decision.events);
        assert!(
            said[0].warning && said[0].note.contains(why),
            "{}",
            said[0].note
        );
        // The build as usual: the probe (the cached builder is read by the
        // assembly itself).
        let roles: Vec<String> = decision
            .create_pods
            .iter()
            .map(|p| p.meta().labels.clone().unwrap_or_default()["slimforge.dev/role"].clone())
            .collect();
        assert_eq!(roles, ["probe"], "{why}");
        let status = world.ib.status.clone().unwrap();
        let rebase = &status.stages[0];
        assert_eq!(rebase.name, "rebase");
        assert!(rebase.message.as_deref().unwrap_or_default().contains(why));
        let again = world.step();
        assert!(
            again.events.iter().all(|e| e.reason != "RebaseNotApplied"),
            "said once"
        );
    }
}

/// A ReadWriteOnce build starts one pod until it is scheduled: the one that
/// mounts a cache volume goes first, so the scheduler puts the build where
/// that (perhaps node-bound) volume can be; its claim is made just before,
/// and no other pod's creation asks for it again.
#[test]
fn the_pod_that_mounts_a_cache_starts_first_and_its_claim_before_it() {
    let yaml = SEED.replace(
        "    FROM golang:1.22 AS builder\n",
        "    FROM busybox AS plain\n    RUN echo plain > /plain\n\n    FROM golang:1.22 AS builder\n",
    )
    .replace(
        "    RUN CGO_ENABLED=0 go build app.go\n",
        "    RUN --mount=type=cache,target=/root/.cache/go-build CGO_ENABLED=0 go build app.go\n",
    )
    .replace(
        "    COPY --from=builder /go/app .\n",
        "    COPY --from=builder /go/app .\n    COPY --from=plain /plain /plain\n",
    );
    let mut world = World::new(image_build(&yaml));
    let first = world.step();
    assert_eq!(first.create_pods.len(), 1);
    let pod = serde_json::to_string(&first.create_pods[0]).unwrap();
    let claim = slimforge::contract::cache_volume("/root/.cache/go-build");
    assert!(pod.contains(&claim), "the cache's pod first: {pod}");
    let claims: Vec<_> = first
        .cache_claims
        .iter()
        .map(|c| c.meta().name.clone().unwrap())
        .collect();
    assert_eq!(claims, [claim]);
    let second = world.step();
    assert!(!second.create_pods.is_empty());
    assert!(
        second.cache_claims.is_empty(),
        "the plain chain and the probe mount no cache"
    );
}

/// What RUN mounts ask of the spec: a required secret it lists, a bounded
/// number of cache claims, well-formed secret entries and cache sizes.
/// Each refusal names the line or the field and starts no pod.
#[test]
fn run_mount_inputs_are_checked_before_any_pod() {
    let with_run = |run: &str, extra: &str| {
        SEED.replace(
            "    RUN CGO_ENABLED=0 go build app.go\n",
            &format!("    {run}\n"),
        )
        .replace("  timeout: 10m\n", &format!("  timeout: 10m\n{extra}"))
    };
    let caches: String = (0..17)
        .map(|i| format!("--mount=type=cache,id=c{i},target=/c{i} "))
        .collect();
    let many_secrets: String = (0..65)
        .map(|i| format!("    - {{id: s{i}, secretRef: {{name: s, key: k}}}}\n"))
        .collect();
    for (yaml, reason, needle) in [
        (
            with_run("RUN --mount=type=secret,id=npm,required npm ci", ""),
            "SecretNotFound",
            "line 4: RUN --mount=type=secret,id=npm is required and spec.secrets has no id npm",
        ),
        (
            with_run(&format!("RUN {caches}true"), ""),
            "InvalidDockerfile",
            "line 4: RUN --mount=type=cache,id=c16: more than 16 cache ids in one build",
        ),
        (
            with_run(
                "RUN true",
                "  secrets:\n    - {id: a/b, secretRef: {name: s, key: k}}\n",
            ),
            "InvalidSpec",
            "spec.secrets[0].id `a/b`: expected a name without `/`",
        ),
        (
            with_run("RUN true", &format!("  secrets:\n{many_secrets}")),
            "InvalidSpec",
            "spec.secrets: 65 entries, more than the 64 allowed",
        ),
        (
            with_run("RUN true", "  cacheVolumes: {size: lots}\n"),
            "InvalidSpec",
            "spec.cacheVolumes.size `lots`: expected a quantity such as 5Gi or 500M",
        ),
    ] {
        let mut world = World::new(image_build(&yaml));
        let decision = world.step();
        let (status, got, message) = world.ready();
        assert_eq!(
            (status.as_str(), got.as_str()),
            ("False", reason),
            "{message}"
        );
        assert!(message.contains(needle), "{message}");
        assert!(decision.create_pods.is_empty() && decision.cache_claims.is_empty());
    }
    // A secret neither required nor listed is skipped: the build goes on.
    let mut world = World::new(image_build(&with_run(
        "RUN --mount=type=secret,id=optional cat /run/secrets/optional || true",
        "",
    )));
    assert_eq!(world.step().create_pods.len(), 1);
}

/// A chain pod that waits for its cache volumes (a ReadWriteOnce claim
/// attached to another node, or held by a build that waits for this one)
/// and starts no container within CACHE_WAIT is made again with empty
/// caches, and stays so when it is retried; a pod that started is left.
#[test]
fn a_pod_kept_waiting_for_its_caches_is_made_again_with_empty_ones() {
    let yaml = SEED.replace(
        "    RUN CGO_ENABLED=0 go build app.go\n",
        "    RUN --mount=type=cache,target=/root/.cache/go-build CGO_ENABLED=0 go build app.go\n",
    );
    let wait = SignedDuration::try_from(CACHE_WAIT).unwrap();
    let claim = slimforge::contract::cache_volume("/root/.cache/go-build");
    let mut world = World::new(image_build(&yaml));
    world.step();
    let created = world.now;
    world.pod_mut(1).created = Some(created);
    // Just under the wait: nothing.
    world.now = created + wait - SignedDuration::from_secs(5);
    let decision = world.step();
    assert!(
        decision.delete_pods.is_empty(),
        "{:?}",
        decision.delete_pods
    );
    // Past it, with no container started: attempt 1, with empty caches.
    world.now = created + wait + SignedDuration::from_secs(5);
    let decision = world.step();
    assert_eq!(decision.delete_pods, ["goapp-g1-1"]);
    let retried = decision
        .create_pods
        .iter()
        .find(|p| p.meta().name.as_deref() == Some("goapp-g1-1-r1"))
        .expect("attempt 1 of the builder");
    let json = serde_json::to_string(retried).unwrap();
    assert!(!json.contains(&claim), "no claim: {json}");
    assert!(json.contains(FRESH_CACHES_ANNOTATION), "{json}");
    let volume = serde_json::to_value(&retried.spec.as_ref().unwrap().volumes).unwrap();
    let cache = volume
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str().is_some_and(|n| n.starts_with("cache-")))
        .unwrap();
    assert_eq!(cache["emptyDir"], serde_json::json!({}), "{cache}");
    assert!(
        decision
            .events
            .iter()
            .any(|e| e.warning && e.note.contains("with empty caches")),
        "{:?}",
        decision.events
    );
    // Evicted later: still empty caches, never the claim again.
    let pod = world.pod_mut(1);
    assert!(pod.fresh_caches);
    pod.phase = PodPhase::Failed;
    pod.reason = Some("Evicted".into());
    let decision = world.step();
    let again = serde_json::to_string(&decision.create_pods).unwrap();
    assert!(
        again.contains("goapp-g1-1-r2") && !again.contains(&claim),
        "{again}"
    );

    // A pod whose containers started has its volumes: it is never replaced.
    let mut world = World::new(image_build(&yaml));
    world.step();
    let pod = world.pod_mut(1);
    pod.created = Some(created);
    pod.containers_started = true;
    world.now = created + wait + wait;
    assert!(world.step().delete_pods.is_empty());
}
