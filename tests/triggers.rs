//! Rebuild triggers against a real CNCF Distribution registry and a real
//! `git daemon`: one poll per target however many builds watch it, a new
//! digest or commit notifies every watcher once, credentials split
//! targets, a 429 silences the registry for its Retry-After, removed
//! watches stop polling. Intervals are a few hundred milliseconds
//! (`Watches::with_floor`).

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::runtime::reflector::ObjectRef;
use serde_json::json;
use slimforge::controller::triggers::{
    BuildRef, Changes, Credentials, GitTarget, ImageTarget, Seen, Watch, Watches,
};
use slimforge::oci::registry::{
    OCI_MANIFEST, Registry as Client, RegistryOptions, parse_reference, sha256_digest,
};
use support::{CountingProxy, GitDaemon, Registry, TokenPolicy, basic_auth, git};

const INTERVAL: Duration = Duration::from_millis(200);

fn build(name: &str) -> BuildRef {
    ObjectRef::new(name).within("triggers")
}

fn image_watch(images: &[&str], credentials: Credentials) -> Watch {
    Watch {
        images: images
            .iter()
            .map(|reference| ImageTarget {
                reference: (*reference).to_string(),
                platform: "linux/amd64".into(),
            })
            .collect(),
        source: None,
        interval: INTERVAL,
        insecure: true,
        credentials,
    }
}

/// A dockerconfigjson for `registry` with this user and password.
fn docker_config(registry: &str, user: &str, password: &str) -> Vec<u8> {
    let auth = basic_auth(user, password)
        .trim_start_matches("Basic ")
        .to_string();
    json!({"auths": {registry: {"auth": auth}}})
        .to_string()
        .into_bytes()
}

/// Pushes a one-layer image whose content depends on `seed` as
/// `reference` (`host:port/repo:tag`); returns its manifest digest.
async fn push_image(reference: &str, seed: &str, credentials: Option<(&str, &str)>) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let target = parse_reference(reference).unwrap();
    let options = RegistryOptions {
        insecure: true,
        auth_json: credentials.map(|(user, password)| {
            String::from_utf8(docker_config(target.registry(), user, password)).unwrap()
        }),
        ..Default::default()
    };
    let client = Client::connect(&options, &[&target]).await.unwrap();
    client.authorize_push(&target, &[]).await.unwrap();
    let layer = format!("layer of {seed}").into_bytes();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": [format!("SEED={seed}")]},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&layer)]},
    })
    .to_string()
    .into_bytes();
    for blob in [&layer, &config] {
        client
            .push_bytes(&target, blob, &sha256_digest(blob))
            .await
            .unwrap();
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256_digest(&config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": sha256_digest(&layer),
            "size": layer.len(),
        }],
    })
    .to_string()
    .into_bytes();
    client
        .push_manifest(&target, &manifest, OCI_MANIFEST)
        .await
        .unwrap();
    sha256_digest(&manifest)
}

/// Starts the polling loop; dropping the guard stops it.
struct Running(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            let _ = stop.send(());
        }
    }
}

fn start(watches: &Watches) -> Running {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(watches.clone().run(async {
        let _ = stopped.await;
    }));
    Running(Some(stop))
}

/// Waits (at most `limit`) until `check` holds for `build`'s [`Seen`].
async fn wait_for(
    watches: &Watches,
    build: &BuildRef,
    limit: Duration,
    check: impl Fn(&Seen) -> bool,
) -> Seen {
    let deadline = Instant::now() + limit;
    loop {
        let seen = watches.seen(build);
        if check(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{build}: still not as expected after {limit:?}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn digest_of(seen: &Seen) -> Option<&str> {
    seen.images.first().map(|(_, digest, _)| digest.as_str())
}

/// Every build sent on `changes` within `limit` after the first, counted.
async fn notified(
    changes: &mut Changes,
    expected: usize,
    limit: Duration,
) -> HashMap<BuildRef, usize> {
    let mut counts: HashMap<BuildRef, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + limit;
    while let Ok(Some(build)) = tokio::time::timeout_at(deadline, changes.next()).await {
        *counts.entry(build).or_default() += 1;
        if counts.values().sum::<usize>() >= expected {
            // Anything more would be a duplicate: wait a few intervals for it.
            let settle = tokio::time::Instant::now() + INTERVAL * 5;
            while let Ok(Some(build)) = tokio::time::timeout_at(settle, changes.next()).await {
                *counts.entry(build).or_default() += 1;
            }
            break;
        }
    }
    counts
}

/// `HEAD`/`GET` of `repo`'s manifests in the registry's access log.
fn manifest_requests(registry: &Registry, repo: &str) -> (usize, usize) {
    let prefix = format!("/v2/{repo}/manifests/");
    let requests = registry.requests();
    let count = |method: &str| {
        requests
            .iter()
            .filter(|r| r.starts_with(&format!("{method} {prefix}")))
            .count()
    };
    (count("HEAD"), count("GET"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_builds_on_one_base_cost_one_request_per_interval_and_all_hear_of_a_move() {
    let registry = Registry::start();
    let image = registry.image("base", "latest");
    let first = push_image(&image, "one", None).await;
    let (watches, mut changes) = Watches::with_floor(INTERVAL);
    let builds: Vec<BuildRef> = (0..500).map(|i| build(&format!("app-{i}"))).collect();
    for b in &builds {
        watches.set(
            b.clone(),
            image_watch(&[image.as_str()], Credentials::default()),
        );
    }
    assert_eq!(watches.target_count(), 1);
    let _running = start(&watches);
    for b in [&builds[0], &builds[499]] {
        let seen = wait_for(&watches, b, Duration::from_secs(10), |s| {
            digest_of(s) == Some(first.as_str())
        })
        .await;
        assert_eq!(seen.images[0].0, image, "named as the build named it");
        assert!(seen.errors.is_empty(), "{:?}", seen.errors);
    }

    // Steady state: one HEAD of the tag per interval (plus up to a tenth
    // of jitter), no manifest GET while the tag does not move.
    let window = Duration::from_secs(3);
    let (heads_before, gets_before) = manifest_requests(&registry, "base");
    tokio::time::sleep(window).await;
    let (heads_after, gets_after) = manifest_requests(&registry, "base");
    let heads = heads_after - heads_before;
    let intervals = window.as_secs_f64() / INTERVAL.as_secs_f64();
    println!(
        "trigger polling cost: 500 ImageBuilds on one base, interval {INTERVAL:?}: \
         {heads} manifest requests in {window:?} ({:.2} per interval; \
         {:.0} per minute at this interval, 1 per minute at the 1m floor); naive: {}",
        heads as f64 / intervals,
        heads as f64 * 60.0 / window.as_secs_f64(),
        500.0 * intervals
    );
    assert!(
        heads <= intervals as usize + 1,
        "{heads} HEADs in {intervals} intervals for 500 builds"
    );
    assert!(
        heads >= (intervals * 0.6) as usize,
        "polling stalled: {heads}"
    );
    assert_eq!(gets_after, gets_before, "an unchanged tag needs no GET");
    assert!(
        notified(&mut changes, 1, INTERVAL * 2).await.is_empty(),
        "nothing moved yet"
    );

    // The tag moves: every watcher hears it once, and sees the new digest.
    let second = push_image(&image, "two", None).await;
    assert_ne!(first, second);
    let counts = notified(&mut changes, 500, Duration::from_secs(10)).await;
    assert_eq!(counts.len(), 500, "every build notified");
    assert!(counts.values().all(|n| *n == 1), "once each: {counts:?}");
    for b in &builds {
        let seen = watches.seen(b);
        assert_eq!(digest_of(&seen), Some(second.as_str()), "{b}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn different_credentials_are_different_targets_and_wrong_ones_never_see_a_digest() {
    let registry = Registry::start_htpasswd("alice", "s3cret");
    let image = registry.image("private", "v1");
    let digest = push_image(&image, "private", Some(("alice", "s3cret"))).await;
    let (watches, _changes) = Watches::with_floor(INTERVAL);
    let right = Credentials {
        docker_config: Some(docker_config(&registry.addr(), "alice", "s3cret")),
        git: None,
    };
    let wrong = Credentials {
        docker_config: Some(docker_config(&registry.addr(), "alice", "guessed")),
        git: None,
    };
    watches.set(
        build("right"),
        image_watch(&[image.as_str()], right.clone()),
    );
    watches.set(build("again"), image_watch(&[image.as_str()], right));
    watches.set(
        build("wrong"),
        image_watch(&[image.as_str()], wrong.clone()),
    );
    watches.set(
        build("none"),
        image_watch(&[image.as_str()], Credentials::default()),
    );
    assert_eq!(
        watches.target_count(),
        3,
        "right (shared), wrong, anonymous"
    );
    let _running = start(&watches);

    for name in ["right", "again"] {
        wait_for(&watches, &build(name), Duration::from_secs(10), |s| {
            digest_of(s) == Some(digest.as_str())
        })
        .await;
    }
    for name in ["wrong", "none"] {
        let seen = wait_for(&watches, &build(name), Duration::from_secs(10), |s| {
            !s.errors.is_empty()
        })
        .await;
        assert!(seen.errors[0].contains("401"), "{name}: {:?}", seen.errors);
        assert!(!seen.errors[0].contains("guessed"), "{:?}", seen.errors);
    }
    // A few intervals later, still nothing for them.
    tokio::time::sleep(INTERVAL * 5).await;
    for name in ["wrong", "none"] {
        let seen = watches.seen(&build(name));
        assert!(seen.images.is_empty(), "{name} saw {seen:?}");
        assert!(!seen.errors.is_empty());
    }
    assert!(!format!("{wrong:?}").contains("guessed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_silences_the_registry_until_its_retry_after_then_polling_resumes() {
    let registry = Registry::start();
    let proxy = CountingProxy::start(&registry.addr());
    push_image(&registry.image("one", "v1"), "one", None).await;
    push_image(&registry.image("two", "v1"), "two", None).await;
    let images = [
        format!("{}/one:v1", proxy.addr()),
        format!("{}/two:v1", proxy.addr()),
    ];
    let (watches, _changes) = Watches::with_floor(INTERVAL);
    let b = build("limited");
    watches.set(
        b.clone(),
        image_watch(&[&images[0], &images[1]], Credentials::default()),
    );
    let _running = start(&watches);
    wait_for(&watches, &b, Duration::from_secs(10), |s| {
        s.images.len() == 2
    })
    .await;

    let retry_after = Duration::from_secs(2);
    proxy.rate_limit(Duration::from_secs(3), retry_after);
    let seen = wait_for(&watches, &b, Duration::from_secs(10), |s| {
        !s.errors.is_empty()
    })
    .await;
    assert!(
        seen.errors.iter().any(|e| e.contains("429")),
        "{:?}",
        seen.errors
    );
    assert_eq!(seen.images.len(), 2, "what was seen stays");
    // Past the window and one more Retry-After, polling is back.
    wait_for(&watches, &b, Duration::from_secs(15), |s| {
        s.errors.is_empty()
    })
    .await;

    let log = proxy.requests();
    let t0 = log[0].received;
    for r in &log {
        eprintln!(
            "{:>8.3} {:>8.3} {} {}",
            r.received.duration_since(t0).as_secs_f64(),
            r.at.duration_since(t0).as_secs_f64(),
            r.status,
            r.request
        );
    }
    let limited: Vec<_> = log.iter().filter(|r| r.status == 429).collect();
    assert!(!limited.is_empty());
    for answer in &limited {
        // No request to the registry (either repository) starts within
        // the Retry-After of a 429 answer; one already on its way when the
        // answer left (a few ms) may still arrive.
        let next = log
            .iter()
            .filter(|r| r.received > answer.at + Duration::from_millis(20))
            .map(|r| r.received)
            .min();
        if let Some(next) = next {
            assert!(
                next.duration_since(answer.at) >= retry_after,
                "a request {:?} after a 429 with Retry-After: 2",
                next.duration_since(answer.at)
            );
        }
    }
    let resumed = log
        .iter()
        .filter(|r| r.status == 200 && r.at > limited.last().unwrap().at)
        .count();
    assert!(resumed > 0, "polling resumed: {log:?}");
    println!(
        "429 test: {} answers 429, then {} requests after the last one",
        limited.len(),
        resumed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_moved_branch_notifies_its_watchers_with_the_new_commit() {
    let served = tempfile::tempdir().unwrap();
    let repo = served.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("Dockerfile"), "FROM busybox\n").unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    git(&repo, &["tag", "-a", "v1", "-m", "v1"]);
    let rev = |name: &str| {
        let out = std::process::Command::new("git")
            .current_dir(&repo)
            .args(["rev-parse", name])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let first = rev("main");
    let daemon = GitDaemon::start(served.path());
    let url = format!("git://127.0.0.1:{}/repo", daemon.port);

    let (watches, mut changes) = Watches::with_floor(INTERVAL);
    let watch = |revision: &str| Watch {
        images: Vec::new(),
        source: Some(GitTarget {
            url: url.clone(),
            revision: revision.into(),
        }),
        interval: INTERVAL,
        insecure: false,
        credentials: Credentials::default(),
    };
    watches.set(build("branch"), watch("main"));
    watches.set(build("head"), watch(""));
    watches.set(build("tag"), watch("v1"));
    watches.set(build("branch-too"), watch("main"));
    assert_eq!(watches.target_count(), 3);
    let _running = start(&watches);
    for name in ["branch", "head", "tag", "branch-too"] {
        let seen = wait_for(&watches, &build(name), Duration::from_secs(10), |s| {
            s.source.is_some()
        })
        .await;
        let (_, commit, _) = seen.source.unwrap();
        assert_eq!(
            commit, first,
            "{name}: an annotated tag is peeled to its commit"
        );
    }

    std::fs::write(repo.join("Dockerfile"), "FROM busybox\nRUN true\n").unwrap();
    git(&repo, &["commit", "-q", "-a", "-m", "two"]);
    let second = rev("main");
    let counts = notified(&mut changes, 3, Duration::from_secs(10)).await;
    let mut moved: Vec<String> = counts.keys().map(|b| b.name.clone()).collect();
    moved.sort();
    assert_eq!(moved, ["branch", "branch-too", "head"], "not the tag");
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    let (revision, commit, _) = watches.seen(&build("branch")).source.unwrap();
    assert_eq!(
        (revision.as_str(), commit.as_str()),
        ("main", second.as_str())
    );
    assert_eq!(watches.seen(&build("tag")).source.unwrap().1, first);

    // An unknown branch is an error, recorded.
    watches.set(build("gone"), watch("no-such-branch"));
    let seen = wait_for(&watches, &build("gone"), Duration::from_secs(10), |s| {
        !s.errors.is_empty()
    })
    .await;
    assert!(
        seen.errors[0].contains("no-such-branch"),
        "{:?}",
        seen.errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removed_watches_stop_their_polls() {
    let registry = Registry::start();
    let image = registry.image("gone", "v1");
    push_image(&image, "gone", None).await;
    let (watches, _changes) = Watches::with_floor(INTERVAL);
    watches.set(
        build("a"),
        image_watch(&[image.as_str()], Credentials::default()),
    );
    watches.set(
        build("b"),
        image_watch(&[image.as_str()], Credentials::default()),
    );
    let _running = start(&watches);
    wait_for(&watches, &build("a"), Duration::from_secs(10), |s| {
        !s.images.is_empty()
    })
    .await;

    watches.remove(&build("a"));
    assert_eq!(watches.target_count(), 1, "b still watches it");
    assert_eq!(watches.seen(&build("a")), Seen::default());
    let (before, _) = manifest_requests(&registry, "gone");
    tokio::time::sleep(INTERVAL * 4).await;
    let (after, _) = manifest_requests(&registry, "gone");
    assert!(after > before, "still polled for b");

    watches.remove(&build("b"));
    assert_eq!(watches.target_count(), 0);
    // A poll already on its way may land; then nothing.
    tokio::time::sleep(INTERVAL).await;
    let (settled, _) = manifest_requests(&registry, "gone");
    tokio::time::sleep(INTERVAL * 5).await;
    assert_eq!(
        manifest_requests(&registry, "gone").0,
        settled,
        "no watcher, no poll"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sweep_ends_the_watches_of_builds_that_are_gone() {
    let registry = Registry::start();
    let image = registry.image("swept", "v1");
    push_image(&image, "swept", None).await;
    let (watches, _changes) = Watches::with_floor(INTERVAL);
    for name in ["kept", "deleted"] {
        watches.set(
            build(name),
            image_watch(&[image.as_str()], Credentials::default()),
        );
    }
    let _running = start(&watches);
    wait_for(&watches, &build("kept"), Duration::from_secs(10), |s| {
        !s.images.is_empty()
    })
    .await;
    // What the operator's sweep does with the informer's store: only
    // `kept` is still there.
    let gone = watches.retain(|b| b.name == "kept");
    assert_eq!(gone, 1);
    assert_eq!(watches.seen(&build("deleted")), Seen::default());
    assert_ne!(watches.seen(&build("kept")), Seen::default());
    assert_eq!(watches.target_count(), 1);
    assert_eq!(watches.retain(|_| false), 1);
    assert_eq!(watches.target_count(), 0, "no watcher, no target");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn polls_of_a_token_registry_reuse_their_token_until_it_expires() {
    let registry = Registry::start_token_auth(TokenPolicy::grant_all());
    let image = registry.image("tokens", "v1");
    push_image(&image, "tokens", None).await;
    let (watches, _changes) = Watches::with_floor(INTERVAL);
    watches.set(
        build("a"),
        image_watch(&[image.as_str()], Credentials::default()),
    );
    let before = registry.token_requests().len();
    let (polls_before, _) = manifest_requests(&registry, "tokens");
    let _running = start(&watches);
    tokio::time::sleep(INTERVAL * 10).await;
    let (polls_after, _) = manifest_requests(&registry, "tokens");
    let tokens = registry.token_requests().len() - before;
    assert!(polls_after - polls_before >= 5, "it polled");
    // A connection's check and its first poll may each ask; later polls
    // take the token they have (it lives 300 s).
    assert!(
        tokens <= 2,
        "{tokens} token requests for {} polls",
        polls_after - polls_before
    );
}
