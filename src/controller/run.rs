//! `slimforge controller`: the kube-runtime Controller around the core (one
//! per watched namespace, or one for the whole cluster), behind a Lease when
//! leader election is on, with `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::Client;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};

use super::cluster::{Context, error_policy, reconcile_build};
use super::metrics::Metrics;
use super::triggers::{BuildRef, Changes, Watches};
use super::{MANAGED_BY, MANAGED_BY_LABEL, Settings};
use crate::api::ImageBuild;

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    pub settings: Settings,
    /// Watch only these namespaces (empty: every namespace).
    pub namespaces: Vec<String>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_address: SocketAddr,
    /// Run only while holding this Lease (name, namespace).
    pub leader_election: Option<(String, String)>,
    /// At most this many builds reconciled at once (per watched namespace
    /// list entry); 0: no limit.
    pub concurrency: u16,
    /// The shortest trigger interval (`spec.triggers.interval` below it is
    /// raised to it).
    pub trigger_floor: Duration,
}

/// The namespaces of `--namespace` / `WATCH_NAMESPACE`: comma-separated,
/// blanks and repeats ignored; none means every namespace.
pub fn parse_namespaces(text: &str) -> Vec<String> {
    let mut namespaces: Vec<String> = Vec::new();
    for namespace in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !namespaces.iter().any(|n| n == namespace) {
            namespaces.push(namespace.to_string());
        }
    }
    namespaces
}

/// Runs until a shutdown signal (or the loss of the Lease), with the
/// in-cluster config or KUBECONFIG.
pub async fn run(options: ControllerOptions) -> anyhow::Result<()> {
    run_with(Client::try_default().await?, options).await
}

/// [`run`] with a client of the caller's.
pub async fn run_with(client: Client, options: ControllerOptions) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    tokio::spawn(serve(
        options.metrics_address,
        metrics.clone(),
        ready.clone(),
    ));

    let mut leadership = None;
    if let Some((lease, namespace)) = &options.leader_election {
        let identity = std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("slimforge-{}", std::process::id()));
        let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), lease)
            .with_namespace(namespace)
            .with_identity(identity)
            .build()
            .await?;
        let (mut channel, task) = manager.watch().await;
        // A standby replica is ready too: it serves /metrics, and a
        // rollout of several replicas must not wait for it to lead.
        ready.store(true, Ordering::Relaxed);
        tracing::info!(%lease, %namespace, "waiting for the leader lease");
        tokio::select! {
            waited = async {
                while !*channel.borrow_and_update() {
                    channel.changed().await?;
                }
                anyhow::Ok(())
            } => waited?,
            _ = crate::shutdown_signal() => {
                tracing::info!("stopped before leading");
                return Ok(());
            }
        }
        tracing::info!("leading");
        leadership = Some((channel, task));
    }

    let reporter = Reporter {
        controller: "slimforge".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    // The trigger pollers run with the controller (a standby polls
    // nothing: it starts here, after the Lease).
    let (watches, changes) = Watches::with_floor(options.trigger_floor);
    let pollers = tokio::spawn(watches.clone().run(async {
        crate::shutdown_signal().await;
    }));
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        settings: options.settings,
        metrics,
        in_flight: Default::default(),
        cache_views: Default::default(),
        triggered_builds: Default::default(),
        trigger_floor: options.trigger_floor,
        watches,
    });
    // One Controller per namespace (each with its own watches, which a
    // namespaced Role allows), sharing the context: one recorder, one set of metrics.
    let concurrency = options.concurrency;
    let scopes: Vec<Option<String>> = if options.namespaces.is_empty() {
        vec![None]
    } else {
        options.namespaces.into_iter().map(Some).collect()
    };
    let mut triggers = route_changes(changes, &scopes).into_iter();
    let controllers = futures::future::join_all(scopes.into_iter().map(|namespace| {
        let triggered = triggers.next().unwrap_or_else(|| mpsc::unbounded().1);
        controller(
            client.clone(),
            namespace,
            concurrency,
            context.clone(),
            triggered,
        )
    }));
    ready.store(true, Ordering::Relaxed);
    match leadership {
        Some((mut channel, task)) => {
            let lost = tokio::select! {
                _ = controllers => false,
                _ = async {
                    while *channel.borrow_and_update() {
                        if channel.changed().await.is_err() { break; }
                    }
                } => true,
            };
            // Closing the channel makes the lease task release the Lease,
            // so a standby takes over at once instead of after its expiry.
            drop(channel);
            let _ = task.await;
            if lost {
                anyhow::bail!("lost the leader lease");
            }
        }
        None => {
            controllers.await;
        }
    }
    pollers.abort();
    tracing::info!("controller stopped");
    Ok(())
}

/// One stream of moved builds per Controller (`scopes` in order): a build
/// goes to its namespace's, or to the all-namespaces one.
fn route_changes(changes: Changes, scopes: &[Option<String>]) -> Vec<Changes> {
    if scopes.len() == 1 {
        return vec![changes];
    }
    let (senders, receivers): (Vec<_>, Vec<_>) = scopes.iter().map(|_| mpsc::unbounded()).unzip();
    let scopes = scopes.to_vec();
    tokio::spawn(changes.for_each(move |build: BuildRef| {
        let scope = scopes
            .iter()
            .position(|s| s.as_deref() == build.namespace.as_deref())
            .or_else(|| scopes.iter().position(Option::is_none));
        if let Some(i) = scope {
            let _ = senders[i].unbounded_send(build);
        }
        futures::future::ready(())
    }));
    receivers
}

/// The Controller for one namespace (`None`: every namespace), until a
/// shutdown signal.
fn controller(
    client: Client,
    namespace: Option<String>,
    concurrency: u16,
    context: Arc<Context>,
    triggered: Changes,
) -> impl Future<Output = ()> {
    let (builds, pods, claims) = match &namespace {
        Some(ns) => (
            Api::<DeserializeGuard<ImageBuild>>::namespaced(client.clone(), ns),
            Api::<Pod>::namespaced(client.clone(), ns),
            Api::<PersistentVolumeClaim>::namespaced(client, ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client),
        ),
    };
    tracing::info!(
        namespace = namespace.as_deref().unwrap_or("*"),
        "watching ImageBuilds"
    );
    let ours = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let controller = Controller::new(builds, watcher::Config::default());
    let sweep = sweep_deleted(controller.store(), namespace, context.clone());
    let run = controller
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .owns(pods, ours.clone())
        .owns(claims, ours)
        // A moved base or branch (the trigger pollers) reconciles the build.
        .reconcile_on(triggered.map(|build| {
            let name = ObjectRef::<DeserializeGuard<ImageBuild>>::new(&build.name);
            match &build.namespace {
                Some(namespace) => name.within(namespace),
                None => name,
            }
        }))
        .shutdown_on_signal()
        .run(reconcile_build, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile");
            }
        });
    async move {
        tokio::select! {
            _ = run => {}
            _ = sweep => {}
        }
    }
}

/// How often the watches of deleted ImageBuilds are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Ends the trigger watches of ImageBuilds that are gone: a deleted build
/// is never reconciled again, so only its absence from the informer's
/// `store` says so. Builds of another scope (`namespace`) are left alone.
async fn sweep_deleted(
    store: kube::runtime::reflector::Store<DeserializeGuard<ImageBuild>>,
    namespace: Option<String>,
    context: Arc<Context>,
) {
    if store.wait_until_ready().await.is_err() {
        return;
    }
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let exists = |build: &BuildRef| {
            let in_scope = namespace.is_none() || build.namespace == namespace;
            let name = ObjectRef::<DeserializeGuard<ImageBuild>>::new(&build.name);
            let name = match &build.namespace {
                Some(ns) => name.within(ns),
                None => name,
            };
            !in_scope || store.get(&name).is_some()
        };
        let gone = context.watches.retain(exists);
        context.forget_triggered(exists);
        if gone > 0 {
            tracing::info!(gone, "trigger watches of deleted ImageBuilds ended");
        }
    }
}

async fn serve(address: SocketAddr, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) {
    use axum::http::StatusCode;
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::Relaxed);
                async move {
                    if ready {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting")
                    }
                }
            }),
        );
    match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "metrics server stopped");
            }
        }
        Err(error) => tracing::error!(%error, %address, "cannot serve metrics"),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_namespaces;

    #[test]
    fn namespaces_are_a_comma_separated_list_and_empty_means_all() {
        assert_eq!(parse_namespaces("demo"), ["demo"]);
        assert_eq!(
            parse_namespaces(" demo, team-a ,,demo,team-b"),
            ["demo", "team-a", "team-b"]
        );
        assert!(parse_namespaces("").is_empty());
        assert!(parse_namespaces(" , ").is_empty());
    }
}
