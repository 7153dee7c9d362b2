//! One pass of a build, the same in both shells: observe what exists, let
//! the pure core ([`reconcile`]) decide, carry the decision out. The
//! Kubernetes shell ([`super::cluster`]) runs one pass per reconcile and
//! leaves the requeueing to kube-runtime's Controller; the podman shell
//! ([`crate::local`]) runs passes with [`until_terminal`] until the build
//! ends.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};

use super::Settings;
use super::pods::BuildId;
use super::reconcile::{BuildEvent, Decision, Observed, reconcile};
use super::status::Reason;
use crate::api::{ImageBuild, Phase};
use crate::cache::lookup::{CacheView, LookupRequest};

/// How a pod creation went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The pod exists now (made here, or there already).
    Done,
    /// The namespace's Pod Security level refused it: the refusal's message.
    Forbidden(String),
}

/// What a shell does for the driver: read what exists and create or delete
/// the build's children, each in its own world (the API server, podman).
///
/// The futures need not be `Send`: the podman shell's are not. The
/// Kubernetes shell's are, and its caller (kube-runtime's Controller, which
/// requires it) sees that through the concrete type.
#[expect(
    async_fn_in_trait,
    reason = "Send-ness is checked where a concrete shell is driven"
)]
pub trait Shell {
    type Error;

    /// The build's pods and claims, and whatever its spec names that is missing.
    async fn observe(&mut self, ib: &ImageBuild) -> Result<Observed, Self::Error>;

    /// Creates the workspace claim (one that exists already is no error).
    async fn create_claim(&mut self, claim: &PersistentVolumeClaim) -> Result<(), Self::Error>;

    /// Creates a cache volume's claim unless it exists: it belongs to no
    /// build and is never deleted with one.
    async fn create_cache_claim(
        &mut self,
        claim: &PersistentVolumeClaim,
    ) -> Result<(), Self::Error>;

    /// Deletes a claim (one that is gone already is no error).
    async fn delete_claim(&mut self, name: &str) -> Result<(), Self::Error>;

    /// Creates a pod; a refusal by Pod Security is [`Created::Forbidden`],
    /// not an error.
    async fn create_pod(&mut self, pod: &Pod) -> Result<Created, Self::Error>;

    /// Deletes a pod (one that is gone already is no error).
    async fn delete_pod(&mut self, name: &str) -> Result<(), Self::Error>;

    /// Answers the core's cache lookup for `build` (the decision's
    /// [`Decision::build`]). The shell keeps the answer and hands it back
    /// in every later [`Observed::cache`] of the same build, and only of
    /// that build ([`crate::controller::reconcile::current_build`] names
    /// the build a pass works on): a rebuild asks again. A registry that
    /// can't be asked is an answer ([`CacheView::unavailable`]), not an
    /// error.
    async fn look_up(
        &mut self,
        ib: &ImageBuild,
        build: BuildId,
        request: &LookupRequest,
    ) -> Result<CacheView, Self::Error>;

    /// A warning the core gave, for a shell that shows them as they come
    /// ([`until_terminal`] hands each one here; the cluster records events
    /// itself).
    fn warn(&mut self, _event: &BuildEvent) {}
}

/// One observe → reconcile → apply, at `now`; returns the decision carried
/// out, whose status the caller records.
pub async fn pass<S: Shell>(
    shell: &mut S,
    ib: &ImageBuild,
    settings: &Settings,
    now: Timestamp,
) -> Result<Decision, S::Error> {
    let mut observed = shell.observe(ib).await?;
    let mut decision = reconcile(ib, &observed, settings, now);
    if let Some(request) = decision.lookup.take() {
        let view = shell.look_up(ib, decision.build, &request).await?;
        let unavailable = view.error.clone();
        observed.cache = Some(view);
        decision = reconcile(ib, &observed, settings, now);
        // Said once, when the answer comes: the build runs uncached.
        if let Some(error) = unavailable {
            decision.events.push(BuildEvent {
                warning: true,
                reason: Reason::CacheUnavailable,
                note: crate::contract::keep_first_bytes(
                    &format!("the stage cache is not used for this build: {error}"),
                    2048,
                ),
            });
        }
    }
    match apply(shell, &decision).await? {
        Created::Done => Ok(decision),
        Created::Forbidden(message) => {
            Ok(reconsider_forbidden(ib, observed, message, settings, now))
        }
    }
}

/// Carries `decision` out: deletions first (an older generation's pods and
/// claims make room), then the claim, then the pods. Stops at the first pod
/// Pod Security refuses and returns its refusal.
async fn apply<S: Shell>(shell: &mut S, decision: &Decision) -> Result<Created, S::Error> {
    for pod in &decision.delete_pods {
        shell.delete_pod(pod).await?;
    }
    for claim in &decision.delete_claims {
        shell.delete_claim(claim).await?;
    }
    if let Some(claim) = &decision.create_claim {
        shell.create_claim(claim).await?;
    }
    for claim in &decision.cache_claims {
        shell.create_cache_claim(claim).await?;
    }
    for pod in &decision.create_pods {
        let created = shell.create_pod(pod).await?;
        if created != Created::Done {
            return Ok(created);
        }
    }
    Ok(Created::Done)
}

/// The decision once the core knows the namespace refused a pod: the core,
/// not the shell, says what a refusal means for the build.
fn reconsider_forbidden(
    ib: &ImageBuild,
    observed: Observed,
    message: String,
    settings: &Settings,
    now: Timestamp,
) -> Decision {
    let observed = Observed {
        forbidden: Some(message),
        ..observed
    };
    reconcile(ib, &observed, settings, now)
}

/// Passes until the build's phase is terminal, `poll` apart, recording each
/// decision's status on `ib` as the API server would; returns the last
/// decision.
pub async fn until_terminal<S: Shell>(
    shell: &mut S,
    ib: &mut ImageBuild,
    settings: &Settings,
    poll: Duration,
) -> Result<Decision, S::Error> {
    loop {
        let decision = pass(shell, ib, settings, Timestamp::now()).await?;
        for event in decision.events.iter().filter(|e| e.warning) {
            shell.warn(event);
        }
        ib.status = Some(decision.status.clone());
        if decision.status.phase.is_some_and(Phase::is_terminal) {
            return Ok(decision);
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use kube::Resource;

    use super::*;
    use crate::controller::status::{READY, find};

    const BUILD: &str = r#"
apiVersion: slimforge.dev/v1alpha1
kind: ImageBuild
metadata: {name: goapp, namespace: demo, uid: 1234-abcd, generation: 1}
spec:
  context:
    inline: {app.go: "package main\nfunc main() {}\n"}
  dockerfile: |
    FROM golang:1.22 AS builder
    COPY app.go .
    RUN go build app.go

    FROM busybox
    COPY --from=builder /go/app .
  output: {image: "registry.example/team/goapp:v1"}
"#;

    const REFUSAL: &str =
        "pods \"goapp-g1-1\" is forbidden: violates PodSecurity \"restricted:latest\"";

    fn image_build() -> ImageBuild {
        serde_yaml::from_str(BUILD).expect("the fixture parses")
    }

    fn now() -> Timestamp {
        "2026-11-27T10:00:00Z".parse().expect("a timestamp")
    }

    /// A test double of a shell (not of an API server or of podman): it
    /// hands out scripted observations in order, records every call the
    /// driver makes, and refuses pod creations as Pod Security would once
    /// `refuse_pods_from_pass` passes have started.
    #[derive(Default)]
    struct ScriptedShell {
        observations: VecDeque<Observed>,
        calls: Vec<String>,
        passes: usize,
        refuse_pods_from_pass: Option<usize>,
        /// The cache lookup fails with this.
        cache_error: Option<String>,
    }

    impl ScriptedShell {
        fn observing(observations: impl IntoIterator<Item = Observed>) -> Self {
            ScriptedShell {
                observations: observations.into_iter().collect(),
                ..ScriptedShell::default()
            }
        }
    }

    impl Shell for ScriptedShell {
        type Error = String;

        async fn observe(&mut self, _ib: &ImageBuild) -> Result<Observed, String> {
            self.passes += 1;
            self.calls.push("observe".into());
            self.observations
                .pop_front()
                .ok_or_else(|| "observed more often than scripted".to_string())
        }

        async fn create_claim(&mut self, claim: &PersistentVolumeClaim) -> Result<(), String> {
            let name = claim.meta().name.clone().unwrap_or_default();
            self.calls.push(format!("create claim {name}"));
            Ok(())
        }

        async fn create_cache_claim(
            &mut self,
            claim: &PersistentVolumeClaim,
        ) -> Result<(), String> {
            let name = claim.meta().name.clone().unwrap_or_default();
            self.calls.push(format!("create cache claim {name}"));
            Ok(())
        }

        async fn delete_claim(&mut self, name: &str) -> Result<(), String> {
            self.calls.push(format!("delete claim {name}"));
            Ok(())
        }

        async fn create_pod(&mut self, pod: &Pod) -> Result<Created, String> {
            let name = pod.meta().name.clone().unwrap_or_default();
            self.calls.push(format!("create pod {name}"));
            match self.refuse_pods_from_pass {
                Some(pass) if self.passes >= pass => Ok(Created::Forbidden(REFUSAL.into())),
                _ => Ok(Created::Done),
            }
        }

        async fn delete_pod(&mut self, name: &str) -> Result<(), String> {
            self.calls.push(format!("delete pod {name}"));
            Ok(())
        }

        async fn look_up(
            &mut self,
            _ib: &ImageBuild,
            _build: BuildId,
            _request: &LookupRequest,
        ) -> Result<CacheView, String> {
            self.calls.push("look up".into());
            Ok(match &self.cache_error {
                Some(error) => CacheView::unavailable(error.clone()),
                None => CacheView::default(),
            })
        }
    }

    fn named_pod(name: &str) -> Pod {
        let mut pod = Pod::default();
        pod.meta_mut().name = Some(name.into());
        pod
    }

    fn ready(decision: &Decision) -> (String, String) {
        let ready = find(&decision.status.conditions, READY).expect("a Ready condition");
        (ready.reason.clone(), ready.message.clone())
    }

    #[tokio::test]
    async fn a_decisions_deletions_are_carried_out_before_its_creations() {
        let mut claim = PersistentVolumeClaim::default();
        claim.meta_mut().name = Some("app-g2-workspace".into());
        let decision = Decision {
            create_claim: Some(claim),
            create_pods: vec![named_pod("app-g2-1"), named_pod("app-g2-2")],
            delete_pods: vec!["app-g1-1".into()],
            delete_claims: vec!["app-g1-workspace".into()],
            ..Decision::default()
        };
        let mut shell = ScriptedShell::default();
        let created = apply(&mut shell, &decision).await;
        assert_eq!(created, Ok(Created::Done));
        assert_eq!(
            shell.calls,
            [
                "delete pod app-g1-1",
                "delete claim app-g1-workspace",
                "create claim app-g2-workspace",
                "create pod app-g2-1",
                "create pod app-g2-2",
            ]
        );
    }

    #[tokio::test]
    async fn a_cache_that_cannot_be_asked_is_said_once_and_the_build_goes_on() {
        let ib = image_build();
        let mut shell = ScriptedShell::observing([Observed::default()]);
        shell.cache_error = Some("registry.example: connection refused".into());
        let decision = pass(&mut shell, &ib, &Settings::default(), now())
            .await
            .expect("a pass");
        let event = decision
            .events
            .iter()
            .find(|e| e.reason == Reason::CacheUnavailable)
            .expect("a CacheUnavailable event");
        assert!(event.warning);
        assert!(event.note.contains("connection refused"), "{}", event.note);
        assert!(shell.calls.iter().any(|c| c.starts_with("create pod")));
    }

    #[tokio::test]
    async fn a_pass_creates_what_the_core_decides_from_the_observation() {
        let ib = image_build();
        let mut shell = ScriptedShell::observing([Observed::default()]);
        let decision = pass(&mut shell, &ib, &Settings::default(), now())
            .await
            .expect("a pass");
        assert_eq!(shell.calls[0], "observe");
        // The core asks the cache before it starts anything, in the same pass.
        assert_eq!(shell.calls[1], "look up");
        assert_eq!(shell.calls[2], "create claim goapp-g1-workspace");
        assert!(shell.calls[3].starts_with("create pod goapp-g1-"));
        assert!(!decision.status.phase.is_some_and(Phase::is_terminal));
    }

    #[tokio::test]
    async fn a_pod_security_refusal_fails_the_build_with_the_refusals_message() {
        let ib = image_build();
        let mut shell = ScriptedShell {
            refuse_pods_from_pass: Some(1),
            ..ScriptedShell::observing([Observed::default()])
        };
        let decision = pass(&mut shell, &ib, &Settings::default(), now())
            .await
            .expect("a pass");
        assert_eq!(decision.status.phase, Some(Phase::Failed));
        let (reason, message) = ready(&decision);
        assert_eq!(reason, "PodSecurityForbidden");
        assert!(message.ends_with(REFUSAL), "{message}");
        assert!(decision.create_pods.is_empty());
        let creations = shell.calls.iter().filter(|c| c.starts_with("create pod"));
        assert_eq!(creations.count(), 1, "no pod after the refused one");
    }

    #[tokio::test]
    async fn an_error_of_the_shell_ends_the_pass() {
        let ib = image_build();
        let mut shell = ScriptedShell::default();
        let error = pass(&mut shell, &ib, &Settings::default(), now()).await;
        assert_eq!(
            error.map(|_| ()),
            Err("observed more often than scripted".to_string())
        );
        assert_eq!(shell.calls, ["observe"]);
    }

    #[tokio::test]
    async fn the_loop_stops_at_the_first_terminal_decision_and_records_it() {
        let mut ib = image_build();
        // Three observations scripted: a third pass would find one left.
        let mut shell = ScriptedShell {
            refuse_pods_from_pass: Some(2),
            ..ScriptedShell::observing(vec![Observed::default(); 3])
        };
        let decision = until_terminal(&mut shell, &mut ib, &Settings::default(), Duration::ZERO)
            .await
            .expect("the loop ends");
        assert_eq!(shell.passes, 2);
        assert_eq!(shell.observations.len(), 1);
        assert_eq!(decision.status.phase, Some(Phase::Failed));
        assert_eq!(ib.status, Some(decision.status));
    }
}
