//! Rebuild triggers: what finished builds used (every FROM image and the
//! final base, a git context's branch or tag), polled for a change.
//!
//! [`Watches`] holds what each ImageBuild wants watched ([`Watches::set`],
//! [`Watches::remove`]) and polls each distinct target once per interval,
//! however many builds watch it: builds share a target when reference,
//! platform, TLS mode and a fingerprint of their credentials are equal
//! ([`schedule::TargetKey`]), so a build never learns a digest its own
//! credentials could not read. A target's interval is its most eager
//! watcher's (at least the floor, 1 minute); polls are jittered and at
//! most a few run at once. A registry answering 429 is left alone for its
//! `Retry-After` (or an exponential backoff), every target on it; other
//! errors back the one target off and are reported in [`Seen::errors`].
//!
//! [`Watches::seen`] is what a build's targets last saw, for the shell to
//! copy into `status.triggers`; when a target's value changes (not on its
//! first sight) every build watching it is sent on the [`Changes`] stream,
//! which `run.rs` feeds to the Controller (`reconcile_on`).

mod poll;
pub mod schedule;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::channel::mpsc;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use self::poll::{Connections, Job, Outcome};
use self::schedule::{Fingerprint, TargetKey};
use crate::api::{
    ImageBuild, ImageBuildStatus, SeenImage, SeenSource, TriggerStatus, redacted_url,
};

/// An ImageBuild, as the Controller names it.
pub type BuildRef = ObjectRef<ImageBuild>;

/// The builds to reconcile because something they watch moved.
pub type Changes = mpsc::UnboundedReceiver<BuildRef>;

/// At most this many polls at once, by default.
pub const DEFAULT_CONCURRENCY: usize = 4;

/// An image a build used: as the Dockerfile names it, and the platform
/// the build resolved it for (`linux/amd64`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageTarget {
    pub reference: String,
    pub platform: String,
}

/// A git context's branch or tag (empty: the remote's HEAD).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct GitTarget {
    pub url: String,
    pub revision: String,
}

impl std::fmt::Debug for GitTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitTarget")
            .field("url", &redacted_url(&self.url))
            .field("revision", &self.revision)
            .finish()
    }
}

/// The credentials a build's watches use, as the shell read them from its
/// Secrets. Never printed: `Debug` says only which are present.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// A `kubernetes.io/dockerconfigjson` Secret's bytes (several merged).
    pub docker_config: Option<Vec<u8>>,
    /// HTTPS basic auth for the git remote: (username, password).
    pub git: Option<(String, String)>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field(
                "docker_config",
                &self.docker_config.as_ref().map(|_| "<redacted>"),
            )
            .field("git", &self.git.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Credentials {
    fn registry_fingerprint(&self) -> Fingerprint {
        match &self.docker_config {
            Some(config) => Fingerprint::of(&[b"dockerconfigjson", config]),
            None => Fingerprint::of(&[]),
        }
    }

    fn git_fingerprint(&self) -> Fingerprint {
        match &self.git {
            Some((user, password)) => {
                Fingerprint::of(&[b"git", user.as_bytes(), password.as_bytes()])
            }
            None => Fingerprint::of(&[]),
        }
    }
}

/// What one build wants watched.
#[derive(Clone, Debug)]
pub struct Watch {
    pub images: Vec<ImageTarget>,
    pub source: Option<GitTarget>,
    /// `spec.triggers.interval` ([`interval`]); raised to the floor.
    pub interval: Duration,
    /// `spec.output.insecure`: plain HTTP or unverified TLS.
    pub insecure: bool,
    pub credentials: Credentials,
}

/// `spec.triggers.interval`: [`schedule::DEFAULT_INTERVAL`] when absent;
/// parsed as `spec.timeout` is. The floor is applied by [`Watches`].
pub fn interval(text: Option<&str>) -> Result<Duration, String> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(schedule::DEFAULT_INTERVAL),
        Some(text) => crate::controller::reconcile::parse_duration(text)
            .map_err(|why| format!("spec.triggers.interval `{text}`: {why}")),
    }
}

impl Watch {
    /// What `ib`'s `spec.triggers` asks to watch, given the images its last
    /// build used (every FROM image and the final base, as named) and the
    /// credentials read from its Secrets: `Ok(None)` when it asks for
    /// nothing (no triggers, or only a git source pinned to a commit).
    pub fn for_build(
        ib: &ImageBuild,
        images: &[String],
        credentials: Credentials,
    ) -> Result<Option<Watch>, String> {
        let Some(triggers) = &ib.spec.triggers else {
            return Ok(None);
        };
        let platform = ib
            .spec
            .platform
            .clone()
            .unwrap_or_else(|| crate::oci::Platform::default().to_string());
        let images: Vec<ImageTarget> = if triggers.images {
            images
                .iter()
                .filter(|r| !r.is_empty() && *r != "scratch")
                .map(|reference| ImageTarget {
                    reference: reference.clone(),
                    platform: platform.clone(),
                })
                .collect()
        } else {
            Vec::new()
        };
        let source = match (&ib.spec.context.git, triggers.source) {
            (Some(git), true) => {
                let revision = git.revision.clone().unwrap_or_default();
                (!crate::git::is_commit_sha(revision.trim())).then(|| GitTarget {
                    url: git.url.clone(),
                    revision,
                })
            }
            _ => None,
        };
        if images.is_empty() && source.is_none() {
            return Ok(None);
        }
        Ok(Some(Watch {
            images,
            source,
            interval: interval(triggers.interval.as_deref())?,
            insecure: ib.spec.output.insecure,
            credentials,
        }))
    }
}

/// What a build's targets last saw: `(image as named, digest, since)`,
/// `(revision, commit, since)` (since: when that value was first seen),
/// and the errors of its targets' last polls.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Seen {
    pub images: Vec<(String, String, Timestamp)>,
    pub source: Option<(String, String, Timestamp)>,
    pub errors: Vec<String>,
}

impl Seen {
    /// As `status.triggers` holds it.
    pub fn to_status(&self) -> TriggerStatus {
        TriggerStatus {
            images: self
                .images
                .iter()
                .map(|(image, digest, when)| SeenImage {
                    image: image.clone(),
                    digest: digest.clone(),
                    seen: Time(*when),
                })
                .collect(),
            source: self
                .source
                .as_ref()
                .map(|(revision, commit, when)| SeenSource {
                    revision: revision.clone(),
                    commit: commit.clone(),
                    seen: Time(*when),
                }),
        }
    }
}

/// `status.buildReason` of a build a moved image started.
pub const BASE_IMAGE_MOVED: &str = "BaseImageMoved";
/// `status.buildReason` of a build a moved branch or tag started.
pub const SOURCE_MOVED: &str = "SourceMoved";

/// Why a finished build should be built again, if what its triggers saw
/// has moved from what it used: an image's digest against
/// `status.resolvedImages`, the branch's commit against
/// `status.source.commit`. Nothing to compare is no move.
pub fn moved(status: &ImageBuildStatus, seen: &Seen) -> Option<&'static str> {
    let image_moved = seen.images.iter().any(|(image, digest, _)| {
        status
            .resolved_images
            .get(image)
            .is_some_and(|used| used != digest)
    });
    if image_moved {
        return Some(BASE_IMAGE_MOVED);
    }
    let built = status.source.as_ref().map(|s| s.commit.as_str());
    match (&seen.source, built) {
        (Some((_, commit, _)), Some(built)) if commit != built => Some(SOURCE_MOVED),
        _ => None,
    }
}

/// The registry of watches and the pollers; cheap to clone.
#[derive(Clone)]
pub struct Watches {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Watches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("Watches")
            .field("builds", &state.builds.len())
            .field("targets", &state.targets.len())
            .finish()
    }
}

struct Inner {
    state: Mutex<State>,
    /// Set, remove: the loop looks at the schedule again.
    wake: Notify,
    changes: mpsc::UnboundedSender<BuildRef>,
    floor: Duration,
    concurrency: usize,
    connections: Connections,
}

#[derive(Default)]
struct State {
    builds: HashMap<BuildRef, Watched>,
    targets: HashMap<TargetKey, Target>,
    /// Registries that answered 429, by host.
    paused: HashMap<String, Pause>,
}

struct Watched {
    interval: Duration,
    /// (what the build calls it, its target)
    targets: Vec<(Label, TargetKey)>,
}

#[derive(Clone, PartialEq, Eq)]
enum Label {
    Image(String),
    Source { url: String, revision: String },
}

struct Target {
    /// The registry host of an image (what a 429 pauses); none for git.
    host: Option<String>,
    watchers: HashSet<BuildRef>,
    interval: Duration,
    next: Instant,
    polling: bool,
    /// (value, when first seen)
    value: Option<(String, Timestamp)>,
    tag_digest: Option<String>,
    failures: u32,
    error: Option<String>,
    docker_config: Option<Arc<Vec<u8>>>,
    account: Option<gix::sec::identity::Account>,
}

struct Pause {
    until: Instant,
    strikes: u32,
}

impl Default for Watches {
    fn default() -> Self {
        Self::new().0
    }
}

impl Watches {
    /// With the real floor ([`schedule::MIN_INTERVAL`]); the stream of builds
    /// to reconcile on a change.
    pub fn new() -> (Self, Changes) {
        Self::with_floor(schedule::MIN_INTERVAL)
    }

    /// With another floor (tests poll every few hundred milliseconds).
    pub fn with_floor(floor: Duration) -> (Self, Changes) {
        Self::with_options(floor, DEFAULT_CONCURRENCY)
    }

    /// With a floor and at most `concurrency` polls at once (at least 1).
    pub fn with_options(floor: Duration, concurrency: usize) -> (Self, Changes) {
        let (sender, receiver) = mpsc::unbounded();
        let inner = Inner {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            changes: sender,
            floor,
            concurrency: concurrency.max(1),
            connections: Connections::default(),
        };
        (
            Watches {
                inner: Arc::new(inner),
            },
            receiver,
        )
    }

    /// What `build` watches from now on (replacing what it watched).
    /// Watching nothing is [`Watches::remove`].
    pub fn set(&self, build: BuildRef, watch: Watch) {
        let interval = schedule::effective_interval(watch.interval, self.inner.floor);
        let mut wanted: Vec<(Label, TargetKey, Target)> = Vec::new();
        let registry_fingerprint = watch.credentials.registry_fingerprint();
        let docker_config = watch.credentials.docker_config.clone().map(Arc::new);
        for image in &watch.images {
            let parsed = crate::oci::registry::parse_reference(&image.reference).ok();
            let reference = parsed
                .as_ref()
                .map_or_else(|| image.reference.clone(), ToString::to_string);
            let platform = image
                .platform
                .parse::<crate::oci::Platform>()
                .map_or_else(|_| image.platform.clone(), |p| p.to_string());
            let key = TargetKey::Image {
                reference,
                platform,
                insecure: watch.insecure,
                credentials: registry_fingerprint,
            };
            let host = parsed.map(|p| p.resolve_registry().to_string());
            let target = Target::new(host, docker_config.clone(), None, interval);
            wanted.push((Label::Image(image.reference.clone()), key, target));
        }
        if let Some(source) = &watch.source {
            let revision = source.revision.trim().to_string();
            let key = TargetKey::Git {
                url: source.url.clone(),
                revision: revision.clone(),
                credentials: watch.credentials.git_fingerprint(),
            };
            let account = watch.credentials.git.clone().map(|(username, password)| {
                gix::sec::identity::Account {
                    username,
                    password,
                    oauth_refresh_token: None,
                }
            });
            let label = Label::Source {
                url: source.url.clone(),
                revision,
            };
            wanted.push((label, key, Target::new(None, None, account, interval)));
        }
        let mut seen_keys = HashSet::new();
        wanted.retain(|(_, key, _)| seen_keys.insert(key.clone()));
        if wanted.is_empty() {
            self.remove(&build);
            return;
        }

        let mut state = self.inner.lock();
        let previous = state.builds.remove(&build);
        for (_, key) in previous.iter().flat_map(|w| &w.targets) {
            if !seen_keys.contains(key) {
                state.detach(key, &build);
            }
        }
        state.builds.insert(
            build.clone(),
            Watched {
                interval,
                targets: wanted
                    .iter()
                    .map(|(label, key, _)| (label.clone(), key.clone()))
                    .collect(),
            },
        );
        for (_, key, fresh) in wanted {
            let target = state.targets.entry(key.clone()).or_insert(fresh);
            target.watchers.insert(build.clone());
            state.refresh_interval(&key);
        }
        drop(state);
        self.inner.wake.notify_one();
    }

    /// `build` watches nothing any more; targets left without watchers
    /// are no longer polled.
    pub fn remove(&self, build: &BuildRef) {
        let mut state = self.inner.lock();
        if let Some(watched) = state.builds.remove(build) {
            for (_, key) in &watched.targets {
                state.detach(key, build);
            }
        }
        drop(state);
        self.inner.wake.notify_one();
    }

    /// Keeps the builds `keep` says still exist (a deleted ImageBuild's
    /// reconcile never comes: a sweep against the informer's store ends
    /// its watch); returns how many went.
    pub fn retain(&self, keep: impl Fn(&BuildRef) -> bool) -> usize {
        let gone: Vec<BuildRef> = self
            .inner
            .lock()
            .builds
            .keys()
            .filter(|b| !keep(b))
            .cloned()
            .collect();
        for build in &gone {
            self.remove(build);
        }
        gone.len()
    }

    /// What `build`'s targets last saw, and their errors.
    pub fn seen(&self, build: &BuildRef) -> Seen {
        let state = self.inner.lock();
        let mut seen = Seen::default();
        let Some(watched) = state.builds.get(build) else {
            return seen;
        };
        for (label, key) in &watched.targets {
            let Some(target) = state.targets.get(key) else {
                continue;
            };
            let (name, value) = match label {
                Label::Image(image) => (format!("image {image}"), &target.value),
                Label::Source { url, revision } => {
                    let revision = if revision.is_empty() {
                        "HEAD"
                    } else {
                        revision
                    };
                    (
                        format!("source {}@{revision}", redacted_url(url)),
                        &target.value,
                    )
                }
            };
            if let Some(error) = &target.error {
                seen.errors.push(format!("{name}: {error}"));
            }
            let Some((value, since)) = value else {
                continue;
            };
            match label {
                Label::Image(image) => seen.images.push((image.clone(), value.clone(), *since)),
                Label::Source { revision, .. } => {
                    seen.source = Some((revision.clone(), value.clone(), *since));
                }
            }
        }
        seen
    }

    /// How many distinct targets are polled (for tests and metrics).
    pub fn target_count(&self) -> usize {
        self.inner.lock().targets.len()
    }

    /// The polling loop, until `shutdown` resolves: starts due polls (at
    /// most the concurrency at once), applies their outcomes, sends the
    /// builds whose targets moved.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut polls: JoinSet<(TargetKey, Outcome)> = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            // Outcomes first: a 429 pauses its registry before anything
            // else on it starts.
            while let Some(done) = polls.try_join_next() {
                self.finish(done);
            }
            let wake_at = self.start_due(&mut polls);
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(done) = polls.join_next(), if !polls.is_empty() => self.finish(done),
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep_until(wake_at) => {}
            }
        }
        polls.abort_all();
    }

    fn finish(&self, done: Result<(TargetKey, Outcome), tokio::task::JoinError>) {
        match done {
            Ok((key, outcome)) => self.apply(&key, outcome),
            Err(error) => tracing::warn!(%error, "a trigger poll panicked"),
        }
    }

    /// Starts the polls that are due; returns when the next one is.
    fn start_due(&self, polls: &mut JoinSet<(TargetKey, Outcome)>) -> Instant {
        let now = Instant::now();
        let mut wake_at = now + Duration::from_secs(3600);
        let mut state = self.inner.lock();
        let mut due: Vec<(Instant, TargetKey)> = state
            .targets
            .iter()
            .filter(|(_, t)| !t.polling)
            .map(|(key, t)| {
                let paused = t
                    .host
                    .as_ref()
                    .and_then(|h| state.paused.get(h))
                    .map(|p| p.until);
                (
                    paused.map_or(t.next, |until| until.max(t.next)),
                    key.clone(),
                )
            })
            .collect();
        due.sort_by_key(|(when, _)| *when);
        for (when, key) in due {
            if when > now {
                wake_at = wake_at.min(when);
                break;
            }
            if polls.len() >= self.inner.concurrency {
                break;
            }
            let Some(target) = state.targets.get_mut(&key) else {
                continue;
            };
            target.polling = true;
            let job = target.job(&key);
            let inner = self.inner.clone();
            polls.spawn(async move {
                let outcome = poll::poll(job, &inner.connections).await;
                (key, outcome)
            });
        }
        wake_at
    }

    fn apply(&self, key: &TargetKey, outcome: Outcome) {
        let now = Instant::now();
        let mut state = self.inner.lock();
        let State {
            targets, paused, ..
        } = &mut *state;
        let Some(target) = targets.get_mut(key) else {
            return; // nobody watches it any more
        };
        target.polling = false;
        match outcome {
            Outcome::Seen { value, tag_digest } => {
                target.failures = 0;
                target.error = None;
                if let Some(host) = &target.host
                    && paused.get(host).is_some_and(|p| p.until <= now)
                {
                    paused.remove(host);
                }
                let moved = target.value.as_ref().is_some_and(|(v, _)| *v != value);
                if moved || target.value.is_none() {
                    target.value = Some((value, Timestamp::now()));
                }
                target.tag_digest = tag_digest;
                if moved {
                    tracing::info!(target = %describe(key), watchers = target.watchers.len(), "trigger moved");
                    for build in &target.watchers {
                        let _ = self.inner.changes.unbounded_send(build.clone());
                    }
                }
                target.next = now + schedule::jittered(target.interval, schedule::random_unit());
            }
            Outcome::RateLimited { error, retry_after } => {
                let host = target.host.clone().unwrap_or_default();
                let pause = paused.entry(host.clone()).or_insert(Pause {
                    until: now,
                    strikes: 0,
                });
                pause.strikes += 1;
                let wait = schedule::rate_limit_pause(retry_after, target.interval, pause.strikes);
                pause.until = pause.until.max(now + wait);
                tracing::warn!(%host, wait_secs = wait.as_secs_f64(), "registry rate limit: pausing its triggers");
                target.error = Some(error);
                target.next = now + schedule::jittered(target.interval, schedule::random_unit());
            }
            Outcome::Failed(error) => {
                target.failures += 1;
                let wait = schedule::backoff(target.interval, target.failures);
                tracing::debug!(target = %describe(key), %error, wait_secs = wait.as_secs(), "trigger poll failed");
                target.error = Some(error);
                target.next = now + wait;
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl State {
    /// `build` no longer watches `key`: the target goes with its last watcher.
    fn detach(&mut self, key: &TargetKey, build: &BuildRef) {
        let Some(target) = self.targets.get_mut(key) else {
            return;
        };
        target.watchers.remove(build);
        if target.watchers.is_empty() {
            self.targets.remove(key);
        } else {
            self.refresh_interval(key);
        }
    }

    /// The target's interval from its watchers; a shorter one brings the
    /// next poll forward.
    fn refresh_interval(&mut self, key: &TargetKey) {
        let Some(target) = self.targets.get_mut(key) else {
            return;
        };
        let Some(interval) = schedule::target_interval(
            target
                .watchers
                .iter()
                .filter_map(|b| self.builds.get(b))
                .map(|w| w.interval),
        ) else {
            return;
        };
        if interval < target.interval && target.value.is_some() {
            let sooner = Instant::now() + interval;
            target.next = target.next.min(sooner);
        }
        target.interval = interval;
    }
}

impl Target {
    fn new(
        host: Option<String>,
        docker_config: Option<Arc<Vec<u8>>>,
        account: Option<gix::sec::identity::Account>,
        interval: Duration,
    ) -> Self {
        Target {
            host,
            watchers: HashSet::new(),
            interval,
            next: Instant::now() + schedule::first_delay(interval, schedule::random_unit()),
            polling: false,
            value: None,
            tag_digest: None,
            failures: 0,
            error: None,
            docker_config,
            account,
        }
    }

    fn job(&self, key: &TargetKey) -> Job {
        match key {
            TargetKey::Image {
                reference,
                platform,
                insecure,
                credentials,
            } => Job::Image {
                reference: reference.clone(),
                platform: platform.clone(),
                insecure: *insecure,
                credentials: *credentials,
                docker_config: self.docker_config.clone(),
                known: self
                    .tag_digest
                    .clone()
                    .zip(self.value.as_ref().map(|(v, _)| v.clone())),
            },
            TargetKey::Git { url, revision, .. } => Job::Git {
                url: url.clone(),
                revision: revision.clone(),
                account: self.account.clone(),
            },
        }
    }
}

/// A target for a log line (no credentials).
fn describe(key: &TargetKey) -> String {
    match key {
        TargetKey::Image {
            reference,
            platform,
            ..
        } => format!("{reference} ({platform})"),
        TargetKey::Git { url, revision, .. } => format!("{}@{revision}", redacted_url(url)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_is_against_what_the_build_used_and_nothing_to_compare_is_none() {
        let when = Timestamp::UNIX_EPOCH;
        let mut status = ImageBuildStatus::default();
        status
            .resolved_images
            .insert("r/busybox:1".into(), "sha256:old".into());
        status.source = Some(crate::api::SourceStatus {
            commit: "c1".into(),
        });
        let seen = |digest: &str, commit: &str| Seen {
            images: vec![("r/busybox:1".into(), digest.into(), when)],
            source: Some(("main".into(), commit.into(), when)),
            errors: Vec::new(),
        };
        assert_eq!(moved(&status, &seen("sha256:old", "c1")), None);
        assert_eq!(
            moved(&status, &seen("sha256:new", "c1")),
            Some(BASE_IMAGE_MOVED)
        );
        assert_eq!(
            moved(&status, &seen("sha256:old", "c2")),
            Some(SOURCE_MOVED)
        );
        // An image the build did not resolve, a build with no commit: no move.
        let other = Seen {
            images: vec![("r/other:1".into(), "sha256:x".into(), when)],
            ..Seen::default()
        };
        assert_eq!(moved(&status, &other), None);
        assert_eq!(
            moved(&ImageBuildStatus::default(), &seen("sha256:new", "c2")),
            None
        );
    }

    fn build(name: &str) -> BuildRef {
        ObjectRef::new(name).within("default")
    }

    fn watch(images: &[&str], credentials: Credentials) -> Watch {
        Watch {
            images: images
                .iter()
                .map(|r| ImageTarget {
                    reference: (*r).to_string(),
                    platform: "linux/amd64".into(),
                })
                .collect(),
            source: None,
            interval: Duration::from_secs(300),
            insecure: false,
            credentials,
        }
    }

    #[test]
    fn equal_targets_are_one_and_credentials_split_them() {
        let (watches, _changes) = Watches::new();
        watches.set(build("a"), watch(&["busybox"], Credentials::default()));
        // The same image spelled out is the same target.
        watches.set(
            build("b"),
            watch(
                &["docker.io/library/busybox:latest"],
                Credentials::default(),
            ),
        );
        assert_eq!(watches.target_count(), 1);
        let secret = Credentials {
            docker_config: Some(b"{\"auths\":{}}".to_vec()),
            git: None,
        };
        watches.set(build("c"), watch(&["busybox"], secret.clone()));
        assert_eq!(watches.target_count(), 2);
        watches.set(build("c"), watch(&["busybox", "golang:1.22"], secret));
        assert_eq!(watches.target_count(), 3);
        watches.remove(&build("c"));
        assert_eq!(watches.target_count(), 1);
        watches.remove(&build("a"));
        assert_eq!(watches.target_count(), 1);
        watches.set(build("b"), watch(&[], Credentials::default()));
        assert_eq!(watches.target_count(), 0);
    }

    #[test]
    fn credentials_never_show_in_debug() {
        let credentials = Credentials {
            docker_config: Some(b"{\"auths\":{\"r\":{\"auth\":\"c2VjcmV0\"}}}".to_vec()),
            git: Some(("bob".into(), "hunter2".into())),
        };
        let mut w = watch(&["busybox"], credentials);
        w.source = Some(GitTarget {
            url: "https://bob:hunter2@example.com/r.git".into(),
            revision: "main".into(),
        });
        let text = format!("{w:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("c2VjcmV0"), "{text}");
        assert!(!text.contains("bob"), "{text}");
    }

    #[test]
    fn the_interval_defaults_to_five_minutes_and_parses_as_timeouts_do() {
        assert_eq!(interval(None), Ok(Duration::from_secs(300)));
        assert_eq!(interval(Some("10m")), Ok(Duration::from_secs(600)));
        assert!(interval(Some("often")).is_err());
        // The floor applies when watching, not when parsing.
        assert_eq!(interval(Some("10s")), Ok(Duration::from_secs(10)));
        let (watches, _changes) = Watches::new();
        let mut w = watch(&["busybox"], Credentials::default());
        w.interval = Duration::from_secs(10);
        watches.set(build("a"), w);
        let state = watches.inner.lock();
        let target = state.targets.values().next().unwrap();
        assert_eq!(target.interval, schedule::MIN_INTERVAL);
    }

    #[test]
    fn a_builds_watch_follows_its_spec() {
        use crate::api::{GitContext, ImageBuildSpec, Triggers};
        let mut ib = ImageBuild::new("app", ImageBuildSpec::default());
        let images = vec!["golang:1.22".to_string(), "scratch".to_string()];
        assert!(
            Watch::for_build(&ib, &images, Credentials::default())
                .unwrap()
                .is_none()
        );
        ib.spec.triggers = Some(Triggers {
            interval: Some("10m".into()),
            images: true,
            source: true,
        });
        ib.spec.platform = Some("linux/arm64".into());
        ib.spec.context.git = Some(GitContext {
            url: "https://example.com/r.git".into(),
            revision: Some("main".into()),
            ..GitContext::default()
        });
        let watch = Watch::for_build(&ib, &images, Credentials::default())
            .unwrap()
            .unwrap();
        assert_eq!(
            watch.images,
            [ImageTarget {
                reference: "golang:1.22".into(),
                platform: "linux/arm64".into()
            }]
        );
        assert_eq!(watch.source.unwrap().revision, "main");
        assert_eq!(watch.interval, Duration::from_secs(600));
        // A commit never moves; no images asked for: nothing to watch.
        ib.spec.context.git.as_mut().unwrap().revision = Some("a".repeat(40));
        ib.spec.triggers.as_mut().unwrap().images = false;
        assert!(
            Watch::for_build(&ib, &images, Credentials::default())
                .unwrap()
                .is_none()
        );
        ib.spec.triggers.as_mut().unwrap().interval = Some("soon".into());
        ib.spec.triggers.as_mut().unwrap().images = true;
        assert!(Watch::for_build(&ib, &images, Credentials::default()).is_err());
    }

    #[test]
    fn a_targets_interval_is_its_most_eager_watchers() {
        let (watches, _changes) = Watches::new();
        let mut slow = watch(&["busybox"], Credentials::default());
        slow.interval = Duration::from_secs(600);
        let mut fast = slow.clone();
        fast.interval = Duration::from_secs(120);
        watches.set(build("slow"), slow);
        watches.set(build("fast"), fast);
        let interval = |w: &Watches| w.inner.lock().targets.values().next().unwrap().interval;
        assert_eq!(interval(&watches), Duration::from_secs(120));
        watches.remove(&build("fast"));
        assert_eq!(interval(&watches), Duration::from_secs(600));
    }
}
