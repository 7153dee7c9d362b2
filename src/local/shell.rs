//! The driver's [`Shell`] on podman: the build's pods played with `podman
//! kube play` (again from `/` when podman will not create an image's
//! WorkingDir), their states read back from podman and their results from
//! the workspace volume, and everything removed at the end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, EnvVar, PersistentVolumeClaim, Pod};
use kube::{Resource, ResourceExt};
use serde::Deserialize;
use tokio::task::JoinHandle;

use super::LocalError;
use super::podman::{ContainerState, Podman, PodmanError, missing_workdir, pull_failure, tail};
use super::pods::{LocalPodInputs, local_pod, non_root_refusal, uses_host_network};
use super::progress::{PodTiming, Progress};
use crate::api::ImageBuild;
use crate::cache::lookup::{CacheView, LookupRequest, look_up};
use crate::contract::{
    ASSEMBLE_RESULT, CACHE_ID_ANNOTATION, CACHE_LABEL, CONTEXT_RESULT, PROBE_RESULT, chain_result,
};
use crate::controller::driver::{Created, Shell};
use crate::controller::pods::{BuildId, UnitIdentity};
use crate::controller::reconcile::{BuildEvent, Observed, PodPhase, PodState, current_build};
use crate::oci::registry::RegistryOptions;

/// A `kube play` running in the background: podman's output, or its error.
type Play = JoinHandle<Result<String, PodmanError>>;

/// What every pod of the build gets locally, decided before the first one.
#[derive(Debug, Default)]
pub(super) struct PodInputs {
    /// The directory holding `config.json` for the push, if any.
    pub auth_dir: Option<PathBuf>,
    /// The directory holding `username` and `password` for a git context.
    pub git_credentials_dir: Option<PathBuf>,
    /// The directory holding the build secrets, a file per id.
    pub secrets_dir: Option<PathBuf>,
    /// The context ConfigMap from the manifest under its per-build name.
    pub context_config_map: Option<ConfigMap>,
    /// The Dockerfile that ConfigMap holds under `dockerfilePath`.
    pub dockerfile_from_context: Option<String>,
}

/// One pod handed to podman.
struct LocalPod {
    identity: UnitIdentity,
    /// `<pod>-<main container>`.
    main_container: String,
    /// Where in the workspace its main container leaves its result.
    result_file: Option<String>,
    helper_volume: String,
    play: Option<Play>,
    play_error: Option<String>,
    /// Played again from `/` for a WorkingDir podman would not create.
    from_root: bool,
    /// Seconds from the build's start.
    created: f64,
    started: Option<Timestamp>,
    finished: Option<Timestamp>,
    deleted: bool,
}

/// Everything one local build started in podman, and how it is doing.
pub(super) struct PodmanShell {
    podman: Podman,
    /// Where pod files and credentials' copies are written.
    workdir: PathBuf,
    pub progress: Progress,
    /// Held while the build runs: one build of a name at a time.
    lock: Option<std::fs::File>,
    inputs: PodInputs,
    pods: BTreeMap<String, LocalPod>,
    /// The workspace volumes: (name, the build it belongs to).
    claims: Vec<(String, BuildId)>,
    /// Every volume to remove at the end.
    volumes: Vec<String>,
    /// The cache's answer, once asked, and the build it was asked for.
    cache: Option<(BuildId, CacheView)>,
}

impl Shell for PodmanShell {
    type Error = LocalError;

    fn warn(&mut self, event: &BuildEvent) {
        self.progress
            .line(&format!("warning: {}: {}", event.reason, event.note));
    }

    async fn observe(&mut self, ib: &ImageBuild) -> Result<Observed, LocalError> {
        let pods = self.observe_pods().await;
        self.show_phases(&pods);
        // Only the view of the build this pass works on.
        let build = current_build(ib, None);
        let cache = self
            .cache
            .as_ref()
            .filter(|(asked_for, _)| *asked_for == build)
            .map(|(_, view)| view.clone());
        Ok(Observed {
            pods,
            claims: self.claims.clone(),
            dockerfile_from_context: self.inputs.dockerfile_from_context.clone(),
            cache,
            ..Observed::default()
        })
    }

    async fn create_claim(&mut self, claim: &PersistentVolumeClaim) -> Result<(), LocalError> {
        let name = claim.name_any();
        let build = BuildId::from_labels(claim.labels()).unwrap_or(BuildId::first(1));
        self.podman
            .run(&[
                "volume",
                "create",
                "--label",
                "app.kubernetes.io/managed-by=slimforge",
                &name,
            ])
            .await?;
        self.claims.push((name.clone(), build));
        self.volumes.push(name);
        Ok(())
    }

    /// A named volume kept between builds, labelled with its cache id.
    async fn create_cache_claim(
        &mut self,
        claim: &PersistentVolumeClaim,
    ) -> Result<(), LocalError> {
        let name = claim.name_any();
        let label = claim
            .labels()
            .get(CACHE_LABEL)
            .map(|hash| format!("{CACHE_LABEL}={hash}"))
            .unwrap_or_default();
        let id = claim
            .annotations()
            .get(CACHE_ID_ANNOTATION)
            .map(|id| format!("{CACHE_ID_ANNOTATION}={id}"))
            .unwrap_or_default();
        // Kept between builds: made once (podman 4.3 has no `--ignore`).
        if self.podman.run(&["volume", "exists", &name]).await.is_ok() {
            return Ok(());
        }
        let created = self
            .podman
            .run(&[
                "volume",
                "create",
                "--label",
                "app.kubernetes.io/managed-by=slimforge",
                "--label",
                &label,
                "--label",
                &id,
                &name,
            ])
            .await;
        // Another build may have made it meanwhile.
        if let Err(e) = created
            && self.podman.run(&["volume", "exists", &name]).await.is_err()
        {
            return Err(e.into());
        }
        Ok(())
    }

    async fn delete_claim(&mut self, name: &str) -> Result<(), LocalError> {
        self.podman.remove_volume(name).await;
        self.claims.retain(|(c, _)| c != name);
        Ok(())
    }

    async fn create_pod(&mut self, pod: &Pod) -> Result<Created, LocalError> {
        self.play_pod(pod)?;
        Ok(Created::Done)
    }

    async fn delete_pod(&mut self, name: &str) -> Result<(), LocalError> {
        self.remove_pod(name).await;
        Ok(())
    }

    /// With the push credentials' copy, as the assemble pod gets them.
    async fn look_up(
        &mut self,
        _ib: &ImageBuild,
        build: BuildId,
        request: &LookupRequest,
    ) -> Result<CacheView, LocalError> {
        let options = RegistryOptions {
            insecure: request.insecure,
            auth_file: self.inputs.auth_dir.as_ref().map(|d| d.join("config.json")),
            ..RegistryOptions::default()
        };
        let view = look_up(request, &options, self.inputs.context_config_map.as_ref()).await;
        self.progress.cache(&view);
        self.cache = Some((build, view.clone()));
        Ok(view)
    }
}

impl PodmanShell {
    /// The cache's answer, once asked.
    pub fn cache_view(&self) -> Option<&CacheView> {
        self.cache.as_ref().map(|(_, view)| view)
    }

    /// Nothing started yet; pod files go to `workdir`.
    pub fn new(podman: Podman, workdir: PathBuf) -> Self {
        PodmanShell {
            podman,
            workdir,
            progress: Progress::start(),
            lock: None,
            inputs: PodInputs::default(),
            pods: BTreeMap::new(),
            claims: Vec::new(),
            volumes: Vec::new(),
            cache: None,
        }
    }

    pub fn podman(&self) -> &Podman {
        &self.podman
    }

    /// Keeps the build's lock until the shell is dropped (after clean-up).
    pub fn hold(&mut self, lock: std::fs::File) {
        self.lock = Some(lock);
    }

    /// What every pod created from now on gets.
    pub fn set_inputs(&mut self, inputs: PodInputs) {
        self.inputs = inputs;
    }

    /// The pods' last phases, once more, after the build ended.
    pub async fn show_last_phases(&mut self) {
        let pods = self.observe_pods().await;
        self.show_phases(&pods);
    }

    /// When each pod was created, started and finished.
    pub fn timeline(&self) -> Vec<PodTiming> {
        self.pods
            .iter()
            .map(|(name, pod)| PodTiming {
                stage: pod.identity.stage.clone(),
                pod: name.clone(),
                created: pod.created,
                started: pod.started.map(|t| self.progress.seconds_since_start(t)),
                finished: pod.finished.map(|t| self.progress.seconds_since_start(t)),
            })
            .collect()
    }

    /// Removes every pod and volume the build made.
    pub async fn clean_up(&mut self) {
        let names: Vec<String> = self.pods.keys().cloned().collect();
        for name in names {
            self.remove_pod(&name).await;
        }
        for volume in std::mem::take(&mut self.volumes) {
            self.podman.remove_volume(&volume).await;
        }
    }

    fn show_phases(&mut self, pods: &[PodState]) {
        let stages = &self.pods;
        self.progress.pod_phases(pods, |name| {
            stages
                .get(name)
                .map(|p| p.identity.stage.clone())
                .unwrap_or_default()
        });
    }

    /// The cluster's pod changed for podman and played in the background;
    /// a pod podman would run against its `runAsNonRoot` fails instead.
    fn play_pod(&mut self, pod: &Pod) -> Result<(), LocalError> {
        let local = local_pod(pod, &self.local_inputs());
        let name = local.name_any();
        let identity = UnitIdentity::from_metadata(local.meta()).ok_or_else(|| {
            LocalError::Invalid(format!("pod {name}: no unit labels (not a slimforge pod)"))
        })?;
        let main = local
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let mut local_pod = LocalPod {
            result_file: result_file(&identity),
            identity,
            main_container: format!("{name}-{main}"),
            helper_volume: format!("{name}-helper"),
            play: None,
            play_error: None,
            from_root: false,
            created: self.progress.elapsed(),
            started: None,
            finished: None,
            deleted: false,
        };
        if let Some(refusal) = non_root_refusal(&local) {
            local_pod.play_error = Some(refusal);
        } else {
            let file = self.write_pod_file(&local)?;
            local_pod.play = Some(self.play(&file, uses_host_network(&local)));
            tracing::debug!(pod = %name, "kube play");
        }
        self.pods.insert(name, local_pod);
        Ok(())
    }

    fn local_inputs(&self) -> LocalPodInputs<'_> {
        LocalPodInputs {
            auth_dir: self.inputs.auth_dir.as_deref(),
            config_map: self
                .inputs
                .context_config_map
                .as_ref()
                .and_then(|cm| cm.metadata.name.as_deref()),
            git_credentials_dir: self.inputs.git_credentials_dir.as_deref(),
            secrets_dir: self.inputs.secrets_dir.as_deref(),
        }
    }

    /// `<workdir>/<pod>.yaml`: the pod, and the context ConfigMap when the
    /// pod mounts one (its volume then removed at the end).
    fn write_pod_file(&mut self, local: &Pod) -> Result<PathBuf, LocalError> {
        let name = local.name_any();
        let mut yaml = serde_yaml::to_string(local)
            .map_err(|e| LocalError::Io(format!("writing pod {name}: {e}")))?;
        let mounts_config_map = local
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .is_some_and(|v| v.iter().any(|v| v.config_map.is_some()));
        if let Some(config_map) = &self.inputs.context_config_map
            && mounts_config_map
        {
            yaml.push_str("---\n");
            yaml.push_str(&serde_yaml::to_string(config_map).unwrap_or_default());
            let volume = config_map.name_any();
            if !self.volumes.contains(&volume) {
                self.volumes.push(volume);
            }
        }
        let file = self.workdir.join(format!("{name}.yaml"));
        std::fs::write(&file, yaml)
            .map_err(|e| LocalError::Io(format!("writing {}: {e}", file.display())))?;
        Ok(file)
    }

    fn play(&self, file: &Path, host_network: bool) -> Play {
        let podman = self.podman.clone();
        let path = file.display().to_string();
        tokio::spawn(async move { podman.play(&path, host_network).await })
    }

    /// Plays pod `name` again with every container started in `/` and
    /// `$SLIMFORGE_WORKDIR` naming the image's WorkingDir.
    fn replay_from_root(&self, name: &str, dir: &str) -> Result<Play, LocalError> {
        let file = self.workdir.join(format!("{name}.yaml"));
        let io = |e: String| LocalError::Io(format!("{}: {e}", file.display()));
        let text = std::fs::read_to_string(&file).map_err(|e| io(e.to_string()))?;
        let mut yaml = String::new();
        let mut host = false;
        for document in serde_yaml::Deserializer::from_str(&text) {
            let mut value =
                serde_yaml::Value::deserialize(document).map_err(|e| io(e.to_string()))?;
            if value.get("kind").and_then(|k| k.as_str()) == Some("Pod") {
                let mut pod: Pod = serde_yaml::from_value(value).map_err(|e| io(e.to_string()))?;
                host = uses_host_network(&pod);
                start_in_root(&mut pod, dir);
                value = serde_yaml::to_value(&pod).map_err(|e| io(e.to_string()))?;
            }
            if !yaml.is_empty() {
                yaml.push_str("---\n");
            }
            yaml.push_str(&serde_yaml::to_string(&value).map_err(|e| io(e.to_string()))?);
        }
        std::fs::write(&file, yaml).map_err(|e| io(e.to_string()))?;
        tracing::debug!(pod = %name, workdir = %dir, "kube play again from /");
        Ok(self.play(&file, host))
    }

    /// Removes pod `name` and its helper volume (after its play, if running).
    async fn remove_pod(&mut self, name: &str) {
        if let Some(pod) = self.pods.get_mut(name) {
            if let Some(play) = pod.play.take() {
                let _ = play.await;
            }
            pod.deleted = true;
            self.podman.remove_pod(name).await;
            self.podman.remove_volume(&pod.helper_volume).await;
        }
    }

    /// Every live pod as the core sees pods.
    async fn observe_pods(&mut self) -> Vec<PodState> {
        // Each build's workspace, for its pods' results.
        let mut workspaces = BTreeMap::new();
        for (claim, build) in &self.claims {
            if let Ok(path) = self.podman.volume_path(claim).await {
                workspaces.insert(*build, path);
            }
        }
        let live: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, pod)| !pod.deleted)
            .map(|(name, _)| name.clone())
            .collect();
        let mut states = Vec::new();
        for name in live {
            self.collect_play(&name).await;
            let workspace = self
                .pods
                .get(&name)
                .and_then(|p| workspaces.get(&p.identity.build()));
            let Some(state) = self.pod_state(&name, workspace.map(PathBuf::as_path)).await else {
                continue;
            };
            if let Some(pod) = self.pods.get_mut(&name) {
                pod.started = state.started.or(pod.started);
                pod.finished = state.finished.or(pod.finished);
            }
            states.push(state);
        }
        states
    }

    /// Takes in how pod `name`'s `kube play` went, once it has finished.
    /// podman 4.3's kube play will not create an image's missing
    /// WorkingDir, which the kubelet does: such a pod is played again from
    /// `/` (once), the helper told to create it.
    async fn collect_play(&mut self, name: &str) {
        let Some(pod) = self.pods.get_mut(name) else {
            return;
        };
        if !pod
            .play
            .as_ref()
            .is_some_and(tokio::task::JoinHandle::is_finished)
        {
            return;
        }
        let Some(play) = pod.play.take() else {
            return;
        };
        let error = match play.await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        let missing = error.as_deref().and_then(missing_workdir).map(String::from);
        let Some(dir) = missing.filter(|_| !pod.from_root) else {
            pod.play_error = error;
            return;
        };
        pod.from_root = true;
        self.podman.remove_pod(name).await;
        let replayed = self.replay_from_root(name, &dir);
        if let Some(pod) = self.pods.get_mut(name) {
            match replayed {
                Ok(play) => pod.play = Some(play),
                Err(e) => pod.play_error = Some(e.to_string()),
            }
        }
    }

    /// Pod `name` as the core sees pods: from its main container, or from
    /// its failed play; its result from the workspace or its log.
    async fn pod_state(&self, name: &str, workspace: Option<&Path>) -> Option<PodState> {
        let pod = self.pods.get(name)?;
        let identity = &pod.identity;
        let mut state = PodState::of(
            name.to_string(),
            identity.build(),
            identity.unit,
            identity.attempt,
        );
        state.node = Some("localhost".into());
        if pod.play.is_some() {
            return Some(state);
        }
        let container = self
            .podman
            .container_state(&pod.main_container)
            .await
            .ok()
            .flatten();
        // A failed play ends the pod at once, whatever its containers
        // (podman leaves them `created`) say.
        let container = container.filter(|c| {
            pod.play_error.is_none()
                || matches!(c.status.as_str(), "running" | "exited" | "stopped")
        });
        match (&container, &pod.play_error) {
            (Some(c), _) => from_container(&mut state, c),
            (None, Some(error)) => from_play_error(&mut state, error),
            (None, None) => {}
        }
        if matches!(state.phase, PodPhase::Succeeded | PodPhase::Failed) {
            state.result = self
                .result(pod, workspace, container.is_some(), state.result.take())
                .await;
        }
        Some(state)
    }

    /// A finished pod's result: its result file in the workspace, else
    /// what is known already, else its main container's last lines.
    async fn result(
        &self,
        pod: &LocalPod,
        workspace: Option<&Path>,
        has_container: bool,
        known: Option<String>,
    ) -> Option<String> {
        let from_workspace = match (workspace, &pod.result_file) {
            (Some(ws), Some(file)) => std::fs::read_to_string(ws.join(file)).ok(),
            _ => None,
        };
        if from_workspace.is_some() {
            return from_workspace;
        }
        if known.is_none() && has_container {
            return Some(self.podman.logs(&pod.main_container, 20).await);
        }
        known
    }
}

/// The workspace file a pod's main container leaves its result in.
fn result_file(identity: &UnitIdentity) -> Option<String> {
    match identity.role.as_str() {
        "chain" | "runtime" | "extraction" => Some(chain_result(&identity.stage)),
        "probe" => Some(PROBE_RESULT.to_string()),
        "context" => Some(CONTEXT_RESULT.to_string()),
        "assemble" | "rebase" => Some(ASSEMBLE_RESULT.to_string()),
        _ => None,
    }
}

/// The phase and times of a running or ended main container.
fn from_container(state: &mut PodState, container: &ContainerState) {
    match container.status.as_str() {
        "running" => {
            state.phase = PodPhase::Running;
            state.started = container.started;
        }
        "exited" | "stopped" => {
            state.started = container.started;
            state.finished = container.finished;
            state.exit_code = Some(container.exit_code);
            state.phase = if container.started.is_none() || container.exit_code != 0 {
                PodPhase::Failed
            } else {
                PodPhase::Succeeded
            };
        }
        _ => {}
    }
}

/// A pod whose play failed: waiting on its image as the kubelet would
/// report a pull failure, failed with podman's last lines otherwise.
fn from_play_error(state: &mut PodState, error: &str) {
    state.phase = PodPhase::Failed;
    state.finished = Some(Timestamp::now());
    if let Some(waiting) = pull_failure(error) {
        state.phase = PodPhase::Pending;
        state.waiting = Some(waiting);
    } else {
        state.result = Some(tail(error, 20));
    }
}

/// Every container of `pod` started in `/`, told the WorkingDir `dir`.
fn start_in_root(pod: &mut Pod, dir: &str) {
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    let containers = spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut());
    for container in containers {
        container.working_dir = Some("/".into());
        container.env.get_or_insert_default().push(EnvVar {
            name: crate::contract::WORKDIR_ENV.into(),
            value: Some(dir.into()),
            ..EnvVar::default()
        });
    }
}
