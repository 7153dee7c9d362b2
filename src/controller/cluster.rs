//! The Kubernetes shell: the driver's [`Shell`] on the API server (reads
//! what exists, creates and deletes children), one [`pass`] per reconcile,
//! then the status applied server-side under one field manager, events
//! recorded and metrics observed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::DeserializeGuard;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::driver::{Created, Shell, pass};
use super::pods::{BuildId, UnitIdentity};
use super::reconcile::{Decision, Observed, PodPhase, PodState, Waiting, current_build, finished};
use super::status::{BuildState, Reason, conditions};
use super::{BUILD_LABEL, MANAGED_BY, MANAGED_BY_LABEL, Settings};
use crate::api::{ImageBuild, ImageBuildStatus, Phase};
use crate::cache::lookup::{CacheView, LookupRequest, look_up};
use crate::controller::metrics::Metrics;
use crate::controller::triggers::{
    Credentials, Seen, Watch, Watches, interval as trigger_interval, moved,
};
use crate::oci::registry::RegistryOptions;

/// The field manager of everything the controller writes.
pub const FIELD_MANAGER: &str = "slimforge";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{action} {kind} {name}: {source}")]
    Kube {
        action: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("ImageBuild without a namespace")]
    NoNamespace,
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    /// Builds in flight, for the gauge (namespace/name, never a label).
    pub in_flight: Mutex<BTreeSet<String>>,
    /// Builds whose triggers are registered with [`Context::watches`].
    pub triggered_builds: TriggeredBuilds,
    /// The shortest trigger interval.
    pub trigger_floor: Duration,
    /// The cache's answer for each build in flight, asked for once.
    pub cache_views: CacheViews,
    /// What finished builds watch for a rebuild (their bases, their
    /// branch); polled by [`Watches::run`], started with the controller.
    pub watches: Watches,
}

/// The cache's answers by build (uid, generation and rebuild: a rebuild
/// asks again, and may find new entries). A build that ends drops its
/// own; the map never holds more than `MAX_CACHE_VIEWS`.
pub type CacheViews = Arc<Mutex<BTreeMap<CacheKey, CacheView>>>;

/// A build's key in [`CacheViews`]: the ImageBuild's uid, its generation
/// and which rebuild of it.
pub type CacheKey = (String, i64, u32);

/// Builds in flight whose cache view is kept; past it, the oldest go (and
/// are looked up again if their build is still going).
const MAX_CACHE_VIEWS: usize = 4096;

/// One reconcile of one ImageBuild: one driver pass, then its status,
/// events and metrics.
pub async fn reconcile_build(
    object: Arc<DeserializeGuard<ImageBuild>>,
    context: Arc<Context>,
) -> Result<Action, ClusterError> {
    let ib = match &object.0 {
        Ok(ib) => ib,
        Err(invalid) => return report_malformed(invalid, &context).await,
    };
    let namespace = ib.namespace().ok_or(ClusterError::NoNamespace)?;
    let mut shell = ClusterShell {
        client: context.client.clone(),
        namespace: namespace.clone(),
        cache_views: context.cache_views.clone(),
        watches: context.watches.clone(),
    };
    let mut decision = pass(&mut shell, ib, &context.settings, Timestamp::now()).await?;
    watch_triggers(&context, ib, &mut decision).await?;
    if decision.status.phase.is_some_and(Phase::is_terminal) {
        lock(&context.cache_views).remove(&build_key(ib, decision.build));
    }
    let previous = ib.status.clone().unwrap_or_default();
    if previous != decision.status {
        let api: Api<ImageBuild> = Api::namespaced(context.client.clone(), &namespace);
        patch_status(&api, &ib.name_any(), &decision.status).await?;
    }
    record(&context, ib, &decision).await;
    observe_metrics(&context, ib, &previous, &decision);
    Ok(match decision.requeue_after {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

/// `spec.triggers`: a finished build's images and branch watched (with
/// the credentials of its Secrets, read once per build), what they last
/// saw in `status.triggers`, and a look again at the trigger interval.
async fn watch_triggers(
    context: &Context,
    ib: &ImageBuild,
    decision: &mut Decision,
) -> Result<(), ClusterError> {
    let build = ObjectRef::from_obj(ib);
    let Some(triggers) = &ib.spec.triggers else {
        context.watches.remove(&build);
        lock_registered(&context.triggered_builds).remove(&build);
        return Ok(());
    };
    if !decision.status.phase.is_some_and(Phase::is_terminal) {
        return Ok(());
    }
    let registered =
        lock_registered(&context.triggered_builds).get(&build) == Some(&decision.build);
    if !registered {
        let namespace = ib.namespace().ok_or(ClusterError::NoNamespace)?;
        let credentials = trigger_credentials(&context.client, &namespace, ib).await?;
        let images: Vec<String> = decision.status.resolved_images.keys().cloned().collect();
        match Watch::for_build(ib, &images, credentials) {
            Ok(Some(watch)) => context.watches.set(build.clone(), watch),
            Ok(None) => context.watches.remove(&build),
            Err(error) => tracing::warn!(%error, "spec.triggers"),
        }
        lock_registered(&context.triggered_builds).insert(build.clone(), decision.build);
    }
    let seen = context.watches.seen(&build);
    if seen != Seen::default() {
        decision.status.triggers = Some(seen.to_status());
    }
    if let Ok(every) = trigger_interval(triggers.interval.as_deref()) {
        let every = every.max(context.trigger_floor);
        decision.requeue_after = Some(decision.requeue_after.map_or(every, |r| r.min(every)));
    }
    Ok(())
}

impl Context {
    /// Forgets the trigger registrations of builds `exists` says are gone.
    pub fn forget_triggered(&self, exists: impl Fn(&ObjectRef<ImageBuild>) -> bool) {
        lock_registered(&self.triggered_builds).retain(|build, _| exists(build));
    }
}

/// Builds whose triggers are registered, by the build they watch for.
pub type TriggeredBuilds = Mutex<HashMap<ObjectRef<ImageBuild>, BuildId>>;

fn lock_registered(
    builds: &TriggeredBuilds,
) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<ImageBuild>, BuildId>> {
    builds
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the triggers poll with: the push and pull secrets' registry
/// credentials, the git credentials Secret's username and password.
async fn trigger_credentials(
    client: &Client,
    namespace: &str,
    ib: &ImageBuild,
) -> Result<Credentials, ClusterError> {
    let configs = docker_configs(client, namespace, &ib.spec.registry_secrets()).await?;
    let mut git = None;
    let secret = ib
        .spec
        .context
        .git
        .as_ref()
        .and_then(|g| g.credentials_secret.as_ref());
    if let Some(name) = secret
        && let Some(secret) = get_optional::<Secret>(client, namespace, "Secret", name).await?
    {
        let data = secret.data.unwrap_or_default();
        let field = |key: &str| {
            data.get(key)
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        };
        if let (Some(user), Some(password)) = (field("username"), field("password")) {
            git = Some((user, password));
        }
    }
    Ok(Credentials {
        docker_config: merged_docker_configs(&configs).map(String::into_bytes),
        git,
    })
}

/// The `.dockerconfigjson` of each of the Secrets `names` that has one.
async fn docker_configs(
    client: &Client,
    namespace: &str,
    names: &[String],
) -> Result<Vec<Vec<u8>>, ClusterError> {
    let mut configs = Vec::new();
    for name in names {
        let secret = get_optional::<Secret>(client, namespace, "Secret", name).await?;
        let data = secret.and_then(|s| s.data).unwrap_or_default();
        if let Some(config) = data.get(".dockerconfigjson") {
            configs.push(config.0.clone());
        }
    }
    Ok(configs)
}

/// A malformed object: say so on it (Failed, `InvalidSpec`), never break
/// the watch.
async fn report_malformed(
    invalid: &InvalidObject,
    context: &Context,
) -> Result<Action, ClusterError> {
    let name = invalid.metadata.name.clone().unwrap_or_default();
    let namespace = invalid
        .metadata
        .namespace
        .clone()
        .ok_or(ClusterError::NoNamespace)?;
    let generation = invalid.metadata.generation.unwrap_or(1);
    let status = ImageBuildStatus {
        phase: Some(Phase::Failed),
        observed_generation: Some(generation),
        conditions: conditions(
            &[],
            generation,
            BuildState::Failed,
            Reason::InvalidSpec,
            &format!(
                "the ImageBuild does not match its schema: {}",
                invalid.error
            ),
            Timestamp::now(),
        ),
        ..ImageBuildStatus::default()
    };
    let api: Api<ImageBuild> = Api::namespaced(context.client.clone(), &namespace);
    patch_status(&api, &name, &status).await?;
    Ok(Action::await_change())
}

/// Requeue after an error: a short pause, not a storm.
pub fn error_policy(
    _object: Arc<DeserializeGuard<ImageBuild>>,
    error: &ClusterError,
    _context: Arc<Context>,
) -> Action {
    tracing::warn!(%error, "reconcile failed");
    Action::requeue(Duration::from_secs(15))
}

/// The driver's [`Shell`] on the API server: one namespace's pods and claims.
struct ClusterShell {
    client: Client,
    namespace: String,
    cache_views: CacheViews,
    watches: Watches,
}

/// The key of `ib`'s build `build` in [`CacheViews`].
fn build_key(ib: &ImageBuild, build: BuildId) -> CacheKey {
    (
        ib.uid().unwrap_or_default(),
        build.generation,
        build.rebuild,
    )
}

fn lock(views: &CacheViews) -> std::sync::MutexGuard<'_, BTreeMap<CacheKey, CacheView>> {
    views
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shell for ClusterShell {
    type Error = ClusterError;

    async fn observe(&mut self, ib: &ImageBuild) -> Result<Observed, ClusterError> {
        let mut observed = dereference(&self.client, ib, &self.namespace).await?;
        // A finished build whose triggers saw a move is built again.
        if ib.spec.triggers.is_some() && finished(ib, None) {
            let seen = self.watches.seen(&ObjectRef::from_obj(ib));
            let status = ib.status.clone().unwrap_or_default();
            observed.triggered = moved(&status, &seen).map(str::to_string);
        }
        // The view of the build this pass works on: never an earlier
        // build's, which a rebuild would otherwise inherit.
        let build = current_build(ib, observed.triggered.as_deref());
        observed.cache = lock(&self.cache_views).get(&build_key(ib, build)).cloned();
        Ok(observed)
    }

    async fn create_claim(&mut self, claim: &PersistentVolumeClaim) -> Result<(), ClusterError> {
        create(&self.claims(), "PersistentVolumeClaim", claim).await
    }

    async fn create_cache_claim(
        &mut self,
        claim: &PersistentVolumeClaim,
    ) -> Result<(), ClusterError> {
        create(&self.claims(), "PersistentVolumeClaim", claim).await
    }

    async fn delete_claim(&mut self, name: &str) -> Result<(), ClusterError> {
        delete(&self.claims(), "PersistentVolumeClaim", name).await
    }

    async fn create_pod(&mut self, pod: &Pod) -> Result<Created, ClusterError> {
        match self.pods().create(&PostParams::default(), pod).await {
            Ok(_) => Ok(Created::Done),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Created::Done),
            Err(kube::Error::Api(status))
                if status.code == 403 && status.message.contains("PodSecurity") =>
            {
                Ok(Created::Forbidden(status.message.clone()))
            }
            Err(source) => Err(ClusterError::Kube {
                action: "creating",
                kind: "Pod",
                name: pod.name_any(),
                source,
            }),
        }
    }

    async fn delete_pod(&mut self, name: &str) -> Result<(), ClusterError> {
        delete(&self.pods(), "Pod", name).await
    }

    /// With the credentials of the Secrets the request names (read here,
    /// held in memory for this lookup only, never logged) and the context
    /// ConfigMap.
    async fn look_up(
        &mut self,
        ib: &ImageBuild,
        build: BuildId,
        request: &LookupRequest,
    ) -> Result<CacheView, ClusterError> {
        let configs = docker_configs(&self.client, &self.namespace, &request.secrets).await?;
        let config_map = match &ib.spec.context.config_map {
            Some(context) => {
                get_optional::<ConfigMap>(&self.client, &self.namespace, "ConfigMap", &context.name)
                    .await?
            }
            None => None,
        };
        let options = RegistryOptions {
            insecure: request.insecure,
            auth_json: merged_docker_configs(&configs),
            ..RegistryOptions::default()
        };
        let view = look_up(request, &options, config_map.as_ref()).await;
        let mut views = lock(&self.cache_views);
        while views.len() >= MAX_CACHE_VIEWS {
            views.pop_first();
        }
        views.insert(build_key(ib, build), view.clone());
        Ok(view)
    }
}

/// One dockerconfigjson with the `auths` of all of `configs`, the first
/// one's entry winning for a registry several name; `None` for none.
fn merged_docker_configs(configs: &[Vec<u8>]) -> Option<String> {
    let mut auths = serde_json::Map::new();
    for config in configs {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(config) else {
            continue;
        };
        if let Some(entries) = value.get("auths").and_then(|a| a.as_object()) {
            for (registry, entry) in entries {
                auths
                    .entry(registry.clone())
                    .or_insert_with(|| entry.clone());
            }
        }
    }
    (!auths.is_empty()).then(|| json!({ "auths": auths }).to_string())
}

impl ClusterShell {
    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
}

/// What exists: the build's pods and claims, and whether what it names is there.
pub async fn dereference(
    client: &Client,
    ib: &ImageBuild,
    namespace: &str,
) -> Result<Observed, ClusterError> {
    let name = ib.name_any();
    let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY},{BUILD_LABEL}={name}");
    let list = ListParams::default().labels(&selector);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod_list = pods
        .list(&list)
        .await
        .map_err(|source| ClusterError::Kube {
            action: "listing",
            kind: "Pod",
            name: selector.clone(),
            source,
        })?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let claim_list = claims
        .list(&list)
        .await
        .map_err(|source| ClusterError::Kube {
            action: "listing",
            kind: "PersistentVolumeClaim",
            name: selector.clone(),
            source,
        })?;
    let mut observed = Observed {
        pods: pod_list.items.iter().filter_map(pod_state).collect(),
        claims: claim_list
            .items
            .iter()
            .filter_map(|c| Some((c.name_any(), BuildId::from_labels(c.labels())?)))
            .collect(),
        ..Observed::default()
    };
    // A finished build needs nothing read; a rebuild of it does.
    if finished(ib, observed.triggered.as_deref()) {
        return Ok(observed);
    }
    // Secrets are read when needed, never watched.
    let git_credentials = ib.spec.context.git.as_ref();
    let secrets = [
        (
            "spec.output.pushSecret",
            ib.spec.output.push_secret.as_ref(),
        ),
        (
            "spec.context.git.credentialsSecret",
            git_credentials.and_then(|g| g.credentials_secret.as_ref()),
        ),
    ];
    for (field, name) in secrets {
        let Some(name) = name else { continue };
        if get_optional::<Secret>(client, namespace, "Secret", name)
            .await?
            .is_none()
        {
            observed.missing.push((
                field.into(),
                format!("Secret {name} not found in namespace {namespace}"),
            ));
        }
    }
    // Build secrets: each Secret, and its key (a value never leaves the API).
    for (i, secret) in ib.spec.secrets.iter().enumerate() {
        let reference = &secret.secret_ref;
        let found = get_optional::<Secret>(client, namespace, "Secret", &reference.name).await?;
        let has_key = found.as_ref().is_some_and(|s| {
            s.data
                .as_ref()
                .is_some_and(|d| d.contains_key(&reference.key))
                || s.string_data
                    .as_ref()
                    .is_some_and(|d| d.contains_key(&reference.key))
        });
        let missing = match (found, has_key) {
            (None, _) => Some(format!(
                "Secret {} not found in namespace {namespace} (build secret `{}`)",
                reference.name, secret.id
            )),
            (Some(_), false) => Some(format!(
                "Secret {} has no key `{}` (build secret `{}`)",
                reference.name, reference.key, secret.id
            )),
            (Some(_), true) => None,
        };
        if let Some(what) = missing {
            observed
                .missing
                .push((format!("spec.secrets[{i}].secretRef"), what));
        }
    }
    if let Some(context) = &ib.spec.context.config_map {
        match get_optional::<ConfigMap>(client, namespace, "ConfigMap", &context.name).await? {
            None => observed.missing.push((
                "spec.context.configMap.name".into(),
                format!(
                    "ConfigMap {} not found in namespace {namespace}",
                    context.name
                ),
            )),
            Some(config_map) => {
                if let Some(path) = &ib.spec.dockerfile_path {
                    let key = context.key_for(path);
                    observed.dockerfile_from_context =
                        config_map.data.as_ref().and_then(|d| d.get(&key).cloned());
                }
            }
        }
    }
    Ok(observed)
}

/// The object `name` of kind `K` in `namespace`, `None` when there is none.
async fn get_optional<K>(
    client: &Client,
    namespace: &str,
    kind: &'static str,
    name: &str,
) -> Result<Option<K>, ClusterError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.get_opt(name)
        .await
        .map_err(|source| ClusterError::Kube {
            action: "reading",
            kind,
            name: name.to_string(),
            source,
        })
}

/// A pod as the core sees it.
pub fn pod_state(pod: &Pod) -> Option<PodState> {
    let identity = UnitIdentity::from_metadata(pod.meta())?;
    let status = pod.status.clone().unwrap_or_default();
    let phase = match status.phase.as_deref() {
        Some("Running") => PodPhase::Running,
        Some("Succeeded") => PodPhase::Succeeded,
        Some("Failed") => PodPhase::Failed,
        Some("Pending") | None => PodPhase::Pending,
        Some(_) => PodPhase::Unknown,
    };
    let main = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .map(|c| c.name.clone())
        .unwrap_or_default();
    let statuses: Vec<_> = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .collect();
    let waiting = statuses.iter().find_map(|s| {
        let waiting = s.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.clone()?;
        (reason != "PodInitializing" && reason != "ContainerCreating").then(|| Waiting {
            container: s.name.clone(),
            reason,
            message: waiting.message.clone().unwrap_or_default(),
        })
    });
    let main_status = statuses.iter().find(|s| s.name == main);
    let terminated = main_status
        .and_then(|s| s.state.as_ref())
        .and_then(|s| s.terminated.as_ref());
    // A failed init container ends the pod before its main container.
    let failed_init = status
        .init_container_statuses
        .iter()
        .flatten()
        .find_map(|s| {
            let t = s.state.as_ref()?.terminated.as_ref()?;
            (t.exit_code != 0).then(|| (s.name.clone(), t.clone()))
        });
    let started = terminated
        .and_then(|t| t.started_at.clone())
        .or_else(|| {
            main_status
                .and_then(|s| s.state.as_ref())
                .and_then(|s| s.running.as_ref())
                .and_then(|r| r.started_at.clone())
        })
        .map(|t| t.0);
    let (exit_code, result, finished) = match (terminated, &failed_init) {
        (Some(t), _) => (
            Some(t.exit_code),
            t.message.clone(),
            t.finished_at.clone().map(|f| f.0),
        ),
        (None, Some((container, t))) => (
            Some(t.exit_code),
            Some(format!(
                "init container {container} failed: {}",
                t.message.clone().unwrap_or_default()
            )),
            t.finished_at.clone().map(|f| f.0),
        ),
        (None, None) => (None, None, None),
    };
    Some(PodState {
        name: pod.name_any(),
        generation: identity.generation,
        rebuild: identity.rebuild,
        unit: identity.unit,
        attempt: identity.attempt,
        phase,
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        started,
        finished,
        exit_code,
        result,
        waiting,
        reason: status.reason.clone(),
        deleting: pod.meta().deletion_timestamp.is_some(),
        created: pod.meta().creation_timestamp.clone().map(|t| t.0),
        containers_started: statuses.iter().any(|s| {
            s.state
                .as_ref()
                .is_some_and(|state| state.running.is_some() || state.terminated.is_some())
        }),
        fresh_caches: pod
            .annotations()
            .contains_key(crate::controller::pods::FRESH_CACHES_ANNOTATION),
    })
}

async fn create<K>(api: &Api<K>, kind: &'static str, object: &K) -> Result<(), ClusterError>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(source) => Err(ClusterError::Kube {
            action: "creating",
            kind,
            name: object.meta().name.clone().unwrap_or_default(),
            source,
        }),
    }
}

async fn delete<K>(api: &Api<K>, kind: &'static str, name: &str) -> Result<(), ClusterError>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(ClusterError::Kube {
            action: "deleting",
            kind,
            name: name.to_string(),
            source,
        }),
    }
}

async fn patch_status(
    api: &Api<ImageBuild>,
    name: &str,
    status: &ImageBuildStatus,
) -> Result<(), ClusterError> {
    let patch = json!({
        "apiVersion": "slimforge.dev/v1alpha1",
        "kind": "ImageBuild",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| ClusterError::Kube {
        action: "applying the status of",
        kind: "ImageBuild",
        name: name.to_string(),
        source,
    })?;
    Ok(())
}

async fn record(context: &Context, ib: &ImageBuild, decision: &Decision) {
    let reference = ib.object_ref(&());
    for event in &decision.events {
        let event = Event {
            type_: if event.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: event.reason.to_string(),
            note: Some(event.note.chars().take(1000).collect()),
            action: "Build".into(),
            secondary: None,
        };
        if let Err(error) = context.recorder.publish(&event, &reference).await {
            tracing::debug!(%error, "recording an event failed");
        }
    }
}

fn observe_metrics(
    context: &Context,
    ib: &ImageBuild,
    previous: &ImageBuildStatus,
    decision: &Decision,
) {
    let key = format!("{}/{}", ib.namespace().unwrap_or_default(), ib.name_any());
    let status = &decision.status;
    let terminal = status.phase.is_some_and(Phase::is_terminal);
    // The same build, terminal already (a rebuild that ends in its first
    // pass, found whole in the cache, is another build).
    let was_terminal = previous.phase.is_some_and(Phase::is_terminal)
        && previous.observed_generation == status.observed_generation
        && previous.rebuilds == status.rebuilds;
    if let Ok(mut in_flight) = context.in_flight.lock() {
        if terminal {
            in_flight.remove(&key);
        } else {
            in_flight.insert(key);
        }
        context.metrics.in_flight.set(in_flight.len() as i64);
    }
    if terminal && !was_terminal {
        context.metrics.record_build(status);
    }
}
