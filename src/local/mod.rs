//! `slimforge build FILE`: the local shell around the reconcile core. The
//! same ImageBuild, the same decisions and the same Pod specs as in a
//! cluster, run by `podman kube play` (with the changes listed in
//! [`pods::LOCAL_DIFFERENCES`]); the pods' states are read back from podman
//! and their results from the workspace volume.

pub mod podman;
pub mod pods;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, EnvVar, Pod};
use kube::Resource;
use serde::Deserialize;
use tokio::task::JoinHandle;

use self::podman::{Podman, PodmanError};
use self::pods::{LocalPodInputs, local_config_map, local_pod, uses_host_network};
use crate::api::{ImageBuild, ImageBuildStatus, Phase, human_size};
use crate::contract::{ASSEMBLE_RESULT, CONTEXT_RESULT, PROBE_RESULT, chain_result};
use crate::controller::BUILD_LABEL;
use crate::controller::reconcile::{
    Invalid, Observed, PodPhase, PodState, Waiting, validate, validate_spec,
};
use crate::controller::status::{READY, find};
use crate::controller::{
    ASSEMBLE_UID, ATTEMPT_LABEL, GENERATION_LABEL, ROLE_LABEL, STAGE_ANNOTATION, Settings,
    UNIT_LABEL, reconcile,
};

/// Where Debian (and the operator image) keep the CA certificates.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// How often podman is asked how the pods are doing.
const POLL: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{path}: {detail}")]
    Manifest { path: PathBuf, detail: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Helper(String),
    #[error(transparent)]
    Podman(#[from] PodmanError),
    #[error("{0}")]
    Io(String),
    #[error("interrupted by {}; the build's pods and volumes were removed", if *signal == crate::SIGTERM { "SIGTERM" } else { "SIGINT" })]
    Interrupted { signal: i32 },
    /// The build ran and failed: the Ready condition's reason and message.
    #[error("build failed ({reason}): {message}")]
    Failed { reason: String, message: String },
}

/// What `slimforge build` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The ImageBuild manifest (YAML; ConfigMaps it names may sit beside it).
    pub manifest: PathBuf,
    /// The operator image the pods use; published from `helper_binary` when absent.
    pub helper_image: Option<String>,
    /// A static slimforge binary to publish as the helper image (default: this one).
    pub helper_binary: Option<PathBuf>,
    /// dockerconfigjson for the push (default: the usual docker/podman auth file).
    pub push_secret: Option<PathBuf>,
    /// A directory with `username` and `password` for a git context's
    /// `credentialsSecret` (the Secret itself is not read locally).
    pub git_credentials: Option<PathBuf>,
}

/// How the build ended.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub status: ImageBuildStatus,
    /// Per pod: stage name, pod, seconds from the build's start to its start and end.
    pub timeline: Vec<PodTiming>,
}

#[derive(Debug, Clone)]
pub struct PodTiming {
    pub stage: String,
    pub pod: String,
    pub created: f64,
    pub started: Option<f64>,
    pub finished: Option<f64>,
}

/// Builds the manifest's ImageBuild with podman; cleans up whatever happens.
pub async fn build(options: &BuildOptions) -> Result<BuildReport, LocalError> {
    let manifest = Manifest::load(&options.manifest)?;
    let ib = manifest.image_build.clone();
    let podman = Podman::new();
    let workdir = tempfile::Builder::new()
        .prefix("slimforge-build-")
        .tempdir()
        .map_err(|e| LocalError::Io(format!("creating a work directory: {e}")))?;
    let mut runner = Runner {
        podman,
        lock: None,
        ib,
        manifest,
        workdir: workdir.path().to_path_buf(),
        pods: BTreeMap::new(),
        claims: Vec::new(),
        volumes: Vec::new(),
        started: Instant::now(),
        start_time: Timestamp::now(),
        shown: BTreeMap::new(),
    };
    // Interrupted (Ctrl-C or SIGTERM) or not, what was started is removed.
    let outcome = tokio::select! {
        outcome = runner.run(options) => outcome,
        signal = crate::shutdown_signal() => Err(LocalError::Interrupted { signal }),
    };
    runner.clean_up().await;
    outcome
}

/// The ImageBuild and the ConfigMaps beside it in one file.
#[derive(Debug, Clone)]
struct Manifest {
    path: PathBuf,
    image_build: ImageBuild,
    config_maps: BTreeMap<String, ConfigMap>,
}

impl Manifest {
    fn load(path: &Path) -> Result<Self, LocalError> {
        let error = |detail: String| LocalError::Manifest {
            path: path.to_path_buf(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        let mut image_build = None;
        let mut config_maps = BTreeMap::new();
        for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value = serde_yaml::Value::deserialize(document)
                .map_err(|e| error(format!("document {}: {e}", index + 1)))?;
            let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
            match kind {
                "ImageBuild" if image_build.is_none() => {
                    let ib = crate::schema::parse_image_build(value)
                        .map_err(|e| error(e.to_string()))?;
                    image_build = Some(ib);
                }
                "ConfigMap" => {
                    let cm: ConfigMap = serde_yaml::from_value(value)
                        .map_err(|e| error(format!("ConfigMap: {e}")))?;
                    config_maps.insert(cm.metadata.name.clone().unwrap_or_default(), cm);
                }
                _ => {}
            }
        }
        let mut ib = image_build.ok_or_else(|| error("no ImageBuild in the file".into()))?;
        let meta = ib.meta_mut();
        if meta.name.as_deref().is_none_or(str::is_empty) {
            return Err(error("ImageBuild: metadata.name is required".into()));
        }
        meta.namespace.get_or_insert_with(|| "default".into());
        meta.uid.get_or_insert_with(|| "local".into());
        meta.generation.get_or_insert(1);
        ib.status = None;
        // podman pulls with its own auth file; pull Secrets are cluster-side.
        if let Some(template) = ib.spec.pod_template.as_mut()
            && !template.image_pull_secrets.is_empty()
        {
            tracing::warn!(
                "podTemplate.imagePullSecrets: not used locally (podman's own credentials pull the images)"
            );
            template.image_pull_secrets.clear();
        }
        Ok(Manifest {
            path: path.to_path_buf(),
            image_build: ib,
            config_maps,
        })
    }
}

struct LocalPod {
    unit: usize,
    attempt: u32,
    generation: i64,
    stage: String,
    /// `<pod>-<main container>`.
    main_container: String,
    result_file: Option<String>,
    helper_volume: String,
    play: Option<JoinHandle<Result<String, PodmanError>>>,
    play_error: Option<String>,
    /// Played again from `/` for a WorkingDir podman would not create.
    from_root: bool,
    created: f64,
    started: Option<Timestamp>,
    finished: Option<Timestamp>,
    deleted: bool,
}

struct Runner {
    podman: Podman,
    /// Held while the build runs: one build of a name at a time.
    lock: Option<std::fs::File>,
    ib: ImageBuild,
    manifest: Manifest,
    workdir: PathBuf,
    pods: BTreeMap<String, LocalPod>,
    claims: Vec<(String, i64)>,
    volumes: Vec<String>,
    started: Instant,
    start_time: Timestamp,
    /// The last phase printed per pod.
    shown: BTreeMap<String, PodPhase>,
}

impl Runner {
    async fn run(&mut self, options: &BuildOptions) -> Result<BuildReport, LocalError> {
        let name = self.ib.meta().name.clone().unwrap_or_default();
        let config_map_name = format!("{name}-g1-context");
        let dockerfile_from_context = self.dockerfile_from_config_map();
        // Bad input ends here, before anything is published or started (a
        // git context's Dockerfile is checked once it is cloned).
        let path = self.manifest.path.display().to_string();
        let refused = |invalid: Invalid| {
            LocalError::Invalid(format!("{path}: {}: {}", invalid.reason, invalid.message))
        };
        let git = self.ib.spec.context.git.clone();
        let validated = match &git {
            Some(_) => {
                validate_spec(&self.ib, &Settings::default()).map_err(refused)?;
                None
            }
            None => Some(
                validate(
                    &self.ib,
                    &Settings::default(),
                    dockerfile_from_context.as_deref(),
                )
                .map_err(refused)?,
            ),
        };
        let platform = match &validated {
            Some(validated) => validated.plan.platform.clone(),
            None => self
                .ib
                .spec
                .platform
                .clone()
                .unwrap_or_else(|| "linux/amd64".into()),
        };
        let mut missing = Vec::new();
        if let Some(cm) = &self.ib.spec.context.config_map
            && !self.manifest.config_maps.contains_key(&cm.name)
        {
            missing.push(format!(
                "spec.context.configMap.name: ConfigMap {} is not in {}",
                cm.name,
                self.manifest.path.display()
            ));
        }
        let git_credentials = match (&git, &options.git_credentials) {
            (Some(g), Some(dir)) if g.credentials_secret.is_some() => {
                Some(self.private_git_credentials(dir)?)
            }
            (Some(g), None) if g.credentials_secret.is_some() => {
                missing.push(
                    "spec.context.git.credentialsSecret: give its username and password with --git-credentials DIR".to_string(),
                );
                None
            }
            _ => None,
        };
        if !missing.is_empty() {
            return Err(LocalError::Invalid(missing.join("; ")));
        }
        self.lock = Some(self.lock_build(&name).await?);

        let auth = self.auth_file(options)?;
        let auth_dir = match &auth {
            Some(file) => Some(self.private_auth_dir(file)?),
            None => None,
        };
        // The push credentials found here go to the assemble pod, as a
        // spec.output.pushSecret would in a cluster, named or not.
        if auth.is_some() && self.ib.spec.output.push_secret.is_none() {
            self.ib.spec.output.push_secret = Some("local-push-credentials".into());
        }
        let helper_image = match &options.helper_image {
            Some(image) => image.clone(),
            None => {
                self.progress("publishing the helper image");
                publish_helper(
                    options.helper_binary.as_deref(),
                    &self.ib.spec.output.image,
                    &platform,
                    self.ib.spec.output.insecure,
                    auth.as_deref(),
                    &self.workdir,
                )
                .await?
            }
        };
        let settings = Settings {
            helper_image,
            ..Settings::default()
        };
        match &validated {
            Some(validated) => self.progress(&format!(
                "building {} ({} pods)",
                self.ib.spec.output.image,
                crate::controller::pods::units(&validated.plan).len()
            )),
            None => self.progress(&format!(
                "building {} from {} (cloned first)",
                self.ib.spec.output.image,
                crate::api::redacted_url(&git.as_ref().map(|g| g.url.clone()).unwrap_or_default())
            )),
        }

        loop {
            let observed = Observed {
                pods: self.observe().await,
                claims: self.claims.clone(),
                dockerfile_from_context: dockerfile_from_context.clone(),
                ..Observed::default()
            };
            self.show_progress(&observed.pods);
            let decision = reconcile(&self.ib, &observed, &settings, Timestamp::now());
            if let Some(claim) = &decision.create_claim {
                let claim_name = claim.meta().name.clone().unwrap_or_default();
                self.podman
                    .run(&[
                        "volume",
                        "create",
                        "--label",
                        "app.kubernetes.io/managed-by=slimforge",
                        &claim_name,
                    ])
                    .await?;
                self.claims.push((claim_name.clone(), 1));
                self.volumes.push(claim_name);
            }
            for pod in &decision.delete_pods {
                self.delete_pod(pod).await;
            }
            for claim in &decision.delete_claims {
                self.podman.remove_volume(claim).await;
                self.claims.retain(|(c, _)| c != claim);
            }
            let inputs = LocalPodInputs {
                auth_dir: auth_dir.as_deref(),
                config_map: self
                    .ib
                    .spec
                    .context
                    .config_map
                    .as_ref()
                    .map(|_| config_map_name.as_str()),
                git_credentials_dir: git_credentials.as_deref(),
            };
            for pod in &decision.create_pods {
                self.create_pod(pod, &inputs)?;
            }
            self.ib.status = Some(decision.status.clone());
            let phase = decision.status.phase;
            if phase.is_some_and(Phase::is_terminal) {
                let pods = self.observe().await;
                self.show_progress(&pods);
                let report = self.finish(decision.status);
                self.show_timeline();
                return report;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn finish(&self, status: ImageBuildStatus) -> Result<BuildReport, LocalError> {
        let timeline = self
            .pods
            .iter()
            .map(|(name, pod)| PodTiming {
                stage: pod.stage.clone(),
                pod: name.clone(),
                created: pod.created,
                started: pod.started.map(|t| self.seconds_since_start(t)),
                finished: pod.finished.map(|t| self.seconds_since_start(t)),
            })
            .collect();
        if status.phase == Some(Phase::Succeeded) {
            return Ok(BuildReport { status, timeline });
        }
        let (reason, message) = find(&status.conditions, READY)
            .map(|c| (c.reason.clone(), c.message.clone()))
            .unwrap_or_else(|| ("Failed".into(), "the build failed".into()));
        Err(LocalError::Failed { reason, message })
    }

    /// When each pod's main container ran, from the build's start.
    fn show_timeline(&self) {
        for (name, pod) in &self.pods {
            if let (Some(start), Some(end)) = (pod.started, pod.finished) {
                self.progress(&format!(
                    "{} ran {:.1}s–{:.1}s ({name})",
                    pod.stage,
                    self.seconds_since_start(start),
                    self.seconds_since_start(end)
                ));
            }
        }
    }

    fn seconds_since_start(&self, t: Timestamp) -> f64 {
        t.duration_since(self.start_time).as_secs_f64()
    }

    fn dockerfile_from_config_map(&self) -> Option<String> {
        let path = self.ib.spec.dockerfile_path.as_deref()?;
        let cm = self.ib.spec.context.config_map.as_ref()?;
        let config_map = self.manifest.config_maps.get(&cm.name)?;
        config_map.data.as_ref()?.get(&cm.key_for(path)).cloned()
    }

    /// The push credentials: `--push-secret`, else the usual auth files.
    fn auth_file(&self, options: &BuildOptions) -> Result<Option<PathBuf>, LocalError> {
        if let Some(file) = &options.push_secret {
            if !file.is_file() {
                return Err(LocalError::Invalid(format!(
                    "--push-secret {}: no such file",
                    file.display()
                )));
            }
            return Ok(Some(file.clone()));
        }
        let mut candidates = Vec::new();
        if let Some(file) = std::env::var_os("REGISTRY_AUTH_FILE") {
            candidates.push(PathBuf::from(file));
        }
        if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
            candidates.push(PathBuf::from(dir).join("containers/auth.json"));
        }
        candidates.push(PathBuf::from(format!(
            "/run/containers/{}/auth.json",
            effective_uid()
        )));
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
            candidates.push(PathBuf::from(dir).join("config.json"));
        }
        if let Some(home) = std::env::var_os("HOME") {
            candidates.push(PathBuf::from(home).join(".docker/config.json"));
        }
        Ok(candidates.into_iter().find(|c| c.is_file()))
    }

    /// A copy of the auth file only the assemble pod's uid can read.
    fn private_auth_dir(&self, file: &Path) -> Result<PathBuf, LocalError> {
        let io = |e: std::io::Error| LocalError::Io(format!("preparing the push credentials: {e}"));
        let dir = self.workdir.join("auth");
        std::fs::create_dir(&dir).map_err(io)?;
        let copy = dir.join("config.json");
        std::fs::copy(file, &copy).map_err(io)?;
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o400)).map_err(io)?;
        let uid = ASSEMBLE_UID as u32;
        std::os::unix::fs::chown(&copy, Some(uid), Some(uid)).map_err(io)?;
        std::fs::set_permissions(&self.workdir, std::fs::Permissions::from_mode(0o711))
            .map_err(io)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).map_err(io)?;
        Ok(dir)
    }

    /// A copy of the git credentials only the context pod's uid can read.
    fn private_git_credentials(&self, source: &Path) -> Result<PathBuf, LocalError> {
        let io = |e: std::io::Error| {
            LocalError::Io(format!(
                "preparing the git credentials from {}: {e}",
                source.display()
            ))
        };
        let dir = self.workdir.join("git-credentials");
        std::fs::create_dir(&dir).map_err(io)?;
        let uid = ASSEMBLE_UID as u32;
        for name in ["username", "password"] {
            let copy = dir.join(name);
            std::fs::copy(source.join(name), &copy).map_err(io)?;
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o400)).map_err(io)?;
            std::os::unix::fs::chown(&copy, Some(uid), Some(uid)).map_err(io)?;
        }
        std::fs::set_permissions(&self.workdir, std::fs::Permissions::from_mode(0o711))
            .map_err(io)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).map_err(io)?;
        Ok(dir)
    }

    fn create_pod(&mut self, pod: &Pod, inputs: &LocalPodInputs) -> Result<(), LocalError> {
        let local = local_pod(pod, inputs);
        let meta = local.meta();
        let name = meta.name.clone().unwrap_or_default();
        let labels = meta.labels.clone().unwrap_or_default();
        let label = |key: &str| labels.get(key).cloned().unwrap_or_default();
        let spec = local.spec.clone().unwrap_or_default();
        let main = spec
            .containers
            .first()
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let stage = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(STAGE_ANNOTATION).cloned())
            .unwrap_or_default();
        let role = label(ROLE_LABEL);
        let result_file = match role.as_str() {
            "chain" | "runtime" | "extraction" => Some(chain_result(&stage)),
            "probe" => Some(PROBE_RESULT.to_string()),
            "context" => Some(CONTEXT_RESULT.to_string()),
            "assemble" => Some(ASSEMBLE_RESULT.to_string()),
            _ => None,
        };
        let mut local_pod = LocalPod {
            unit: label(UNIT_LABEL).parse().unwrap_or(0),
            attempt: label(ATTEMPT_LABEL).parse().unwrap_or(0),
            generation: label(GENERATION_LABEL).parse().unwrap_or(1),
            stage,
            main_container: format!("{name}-{main}"),
            result_file,
            helper_volume: format!("{name}-helper"),
            play: None,
            play_error: None,
            from_root: false,
            created: self.started.elapsed().as_secs_f64(),
            started: None,
            finished: None,
            deleted: false,
        };
        // podman ignores runAsNonRoot: the runner checks it.
        if let Some(refusal) = non_root_refusal(&local) {
            local_pod.play_error = Some(refusal);
            self.pods.insert(name, local_pod);
            return Ok(());
        }
        let mut yaml = serde_yaml::to_string(&local)
            .map_err(|e| LocalError::Io(format!("writing pod {name}: {e}")))?;
        if let (Some(cm), Some(local_name)) = (&self.ib.spec.context.config_map, inputs.config_map)
            && spec
                .volumes
                .as_ref()
                .is_some_and(|v| v.iter().any(|v| v.config_map.is_some()))
            && let Some(config_map) = self.manifest.config_maps.get(&cm.name)
        {
            let config_map = local_config_map(config_map, local_name);
            yaml.push_str("---\n");
            yaml.push_str(&serde_yaml::to_string(&config_map).unwrap_or_default());
            if !self.volumes.iter().any(|v| v == local_name) {
                self.volumes.push(local_name.to_string());
            }
        }
        let file = self.workdir.join(format!("{name}.yaml"));
        let mut out = std::fs::File::create(&file)
            .map_err(|e| LocalError::Io(format!("writing {}: {e}", file.display())))?;
        out.write_all(yaml.as_bytes())
            .map_err(|e| LocalError::Io(format!("writing {}: {e}", file.display())))?;
        let podman = self.podman.clone();
        let host = uses_host_network(&local);
        let path = file.display().to_string();
        local_pod.play = Some(tokio::spawn(async move { podman.play(&path, host).await }));
        tracing::debug!(pod = %name, "kube play");
        self.pods.insert(name, local_pod);
        Ok(())
    }

    /// Takes the build's lock in podman's run root, so that a second build
    /// of the same name is refused, however close behind. Without an owner
    /// (its process was killed), what an earlier build left is removed.
    async fn lock_build(&mut self, name: &str) -> Result<std::fs::File, LocalError> {
        let run_root = self
            .podman
            .run(&["info", "--format", "{{.Store.RunRoot}}"])
            .await?;
        let dir = Path::new(run_root.trim()).join("slimforge-builds");
        let path = dir.join(format!("{name}.lock"));
        let io = |e: std::io::Error| LocalError::Io(format!("{}: {e}", path.display()));
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        if let Err(e) = file.try_lock() {
            let owner = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(match e {
                std::fs::TryLockError::WouldBlock => LocalError::Invalid(format!(
                    "a local build named {name} is running already (process {}); wait for it, or stop it with Ctrl-C or `kill {}`",
                    owner.trim(),
                    owner.trim()
                )),
                std::fs::TryLockError::Error(e) => io(e),
            });
        }
        let (pods, volumes) = self.left_behind(name).await?;
        if !pods.is_empty() || !volumes.is_empty() {
            self.progress(&format!(
                "removing what an earlier build of {name} left (its process is gone): pods {}; volumes {}",
                pods.join(", "),
                volumes.join(", ")
            ));
            for pod in &pods {
                self.podman.remove_pod(pod).await;
            }
            for volume in &volumes {
                self.podman.remove_volume(volume).await;
            }
        }
        file.set_len(0).map_err(io)?;
        file.write_all(std::process::id().to_string().as_bytes())
            .map_err(io)?;
        Ok(file)
    }

    /// The pods and volumes of build `name` that exist now.
    async fn left_behind(&self, name: &str) -> Result<(Vec<String>, Vec<String>), LocalError> {
        let label = format!("label={BUILD_LABEL}={name}");
        let pods = self
            .podman
            .run(&["pod", "ps", "--filter", &label, "--format", "{{.Name}}"])
            .await?;
        let volumes = self
            .podman
            .run(&["volume", "ls", "--format", "{{.Name}}"])
            .await?;
        Ok((
            pods.lines().map(str::to_string).collect(),
            volumes
                .lines()
                .filter(|v| is_build_volume(name, v))
                .map(str::to_string)
                .collect(),
        ))
    }

    /// Plays pod `name` again with every container started in `/` and
    /// `$SLIMFORGE_WORKDIR` naming the image's WorkingDir.
    fn replay_from_root(
        &self,
        name: &str,
        dir: &str,
    ) -> Result<JoinHandle<Result<String, PodmanError>>, LocalError> {
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
                if let Some(spec) = pod.spec.as_mut() {
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
                value = serde_yaml::to_value(&pod).map_err(|e| io(e.to_string()))?;
            }
            if !yaml.is_empty() {
                yaml.push_str("---\n");
            }
            yaml.push_str(&serde_yaml::to_string(&value).map_err(|e| io(e.to_string()))?);
        }
        std::fs::write(&file, yaml).map_err(|e| io(e.to_string()))?;
        tracing::debug!(pod = %name, workdir = %dir, "kube play again from /");
        let podman = self.podman.clone();
        let path = file.display().to_string();
        Ok(tokio::spawn(async move { podman.play(&path, host).await }))
    }

    async fn delete_pod(&mut self, name: &str) {
        if let Some(pod) = self.pods.get_mut(name) {
            if let Some(play) = pod.play.take() {
                let _ = play.await;
            }
            pod.deleted = true;
            self.podman.remove_pod(name).await;
            let volume = pod.helper_volume.clone();
            self.podman.remove_volume(&volume).await;
        }
    }

    /// Every live pod as the core sees pods.
    async fn observe(&mut self) -> Vec<PodState> {
        let workspace = match self.claims.first() {
            Some((claim, _)) => self.podman.volume_path(claim).await.ok(),
            None => None,
        };
        let mut states = Vec::new();
        let names: Vec<String> = self.pods.keys().cloned().collect();
        for name in names {
            let Some(pod) = self.pods.get_mut(&name) else {
                continue;
            };
            if pod.deleted {
                continue;
            }
            if pod.play.as_ref().is_some_and(|p| p.is_finished())
                && let Some(play) = pod.play.take()
            {
                let error = match play.await {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(dir) = error.as_deref().and_then(missing_workdir)
                    && !pod.from_root
                {
                    // podman 4.3's kube play will not create an image's
                    // missing WorkingDir, which the kubelet does: play the
                    // pod again from `/`, the helper told to create it.
                    pod.from_root = true;
                    let dir = dir.to_string();
                    self.podman.remove_pod(&name).await;
                    match self.replay_from_root(&name, &dir) {
                        Ok(play) => {
                            if let Some(pod) = self.pods.get_mut(&name) {
                                pod.play = Some(play);
                            }
                        }
                        Err(e) => {
                            if let Some(pod) = self.pods.get_mut(&name) {
                                pod.play_error = Some(e.to_string());
                            }
                        }
                    }
                } else {
                    pod.play_error = error;
                }
            }
            let Some(pod) = self.pods.get_mut(&name) else {
                continue;
            };
            let mut state = PodState::new(name.clone(), pod.generation, pod.unit, pod.attempt);
            state.node = Some("localhost".into());
            let playing = pod.play.is_some();
            let main = pod.main_container.clone();
            let result_file = pod.result_file.clone();
            let play_error = pod.play_error.clone();
            let container = if playing {
                None
            } else {
                self.podman.container_state(&main).await.ok().flatten()
            };
            // A failed play ends the pod at once, whatever its containers
            // (podman leaves them `created`) say.
            let container = container.filter(|c| {
                play_error.is_none()
                    || matches!(c.status.as_str(), "running" | "exited" | "stopped")
            });
            match (&container, &play_error) {
                (_, _) if playing => {}
                (Some(c), _) if c.status == "running" => {
                    state.phase = PodPhase::Running;
                    state.started = c.started;
                }
                (Some(c), _) if matches!(c.status.as_str(), "exited" | "stopped") => {
                    state.started = c.started;
                    state.finished = c.finished;
                    state.exit_code = Some(c.exit_code);
                    state.phase = if c.started.is_none() || c.exit_code != 0 {
                        PodPhase::Failed
                    } else {
                        PodPhase::Succeeded
                    };
                }
                (None, Some(error)) => {
                    state.phase = PodPhase::Failed;
                    state.finished = Some(Timestamp::now());
                    if let Some(waiting) = pull_failure(error) {
                        state.phase = PodPhase::Pending;
                        state.waiting = Some(waiting);
                    } else {
                        state.result = Some(tail(error, 20));
                    }
                }
                _ => {}
            }
            if state.phase == PodPhase::Succeeded || state.phase == PodPhase::Failed {
                let from_workspace = match (&workspace, &result_file) {
                    (Some(ws), Some(file)) => std::fs::read_to_string(ws.join(file)).ok(),
                    _ => None,
                };
                if from_workspace.is_some() {
                    state.result = from_workspace;
                } else if state.result.is_none() && container.is_some() {
                    state.result = Some(self.podman.logs(&main, 20).await);
                }
            }
            if let Some(pod) = self.pods.get_mut(&name) {
                pod.started = state.started.or(pod.started);
                pod.finished = state.finished.or(pod.finished);
            }
            states.push(state);
        }
        states
    }

    fn show_progress(&mut self, pods: &[PodState]) {
        for pod in pods {
            if self.shown.get(&pod.name) == Some(&pod.phase) {
                continue;
            }
            self.shown.insert(pod.name.clone(), pod.phase);
            let stage = self
                .pods
                .get(&pod.name)
                .map(|p| p.stage.clone())
                .unwrap_or_default();
            let detail = match (pod.phase, pod.started, pod.finished) {
                (PodPhase::Succeeded | PodPhase::Failed, Some(start), Some(end)) => {
                    let secs = end.duration_since(start).as_secs_f64().max(0.0);
                    format!(" in {secs:.1}s")
                }
                _ => String::new(),
            };
            let phase = format!("{:?}", pod.phase).to_lowercase();
            self.progress(&format!("{stage:<14} {phase}{detail} ({})", pod.name));
        }
    }

    fn progress(&self, message: &str) {
        eprintln!("[{:6.1}s] {message}", self.started.elapsed().as_secs_f64());
    }

    async fn clean_up(&mut self) {
        let names: Vec<String> = self.pods.keys().cloned().collect();
        for name in names {
            self.delete_pod(&name).await;
        }
        for volume in std::mem::take(&mut self.volumes) {
            self.podman.remove_volume(&volume).await;
        }
    }
}

/// Whether volume `volume` is one a build of `build` makes:
/// `<build>-g<N>-workspace`, `<build>-g<N>-context` or
/// `<build>-g<N>-<unit>[-r<attempt>]-helper`.
fn is_build_volume(build: &str, volume: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let Some(rest) = volume
        .strip_prefix(build)
        .and_then(|r| r.strip_prefix("-g"))
    else {
        return false;
    };
    let Some((generation, rest)) = rest.split_once('-') else {
        return false;
    };
    if !digits(generation) {
        return false;
    }
    if rest == "workspace" || rest == "context" {
        return true;
    }
    let Some(pod) = rest.strip_suffix("-helper") else {
        return false;
    };
    match pod.split_once("-r") {
        Some((unit, attempt)) => digits(unit) && digits(attempt),
        None => digits(pod),
    }
}

/// The directory of podman's `workdir "/src" does not exist on container …`.
fn missing_workdir(error: &str) -> Option<&str> {
    let (_, rest) = error.split_once("workdir \"")?;
    let (dir, rest) = rest.split_once('"')?;
    rest.starts_with(" does not exist").then_some(dir)
}

/// A kube play failure that is a pull failure, as the kubelet would report it.
fn pull_failure(error: &str) -> Option<Waiting> {
    let lower = error.to_lowercase();
    let pull = [
        "initializing source",
        "pulling image",
        "manifest unknown",
        "reading manifest",
        "invalid reference format",
        "repository name must",
    ]
    .iter()
    .any(|needle| lower.contains(needle));
    if !pull {
        return None;
    }
    let reason =
        if lower.contains("invalid reference format") || lower.contains("repository name must") {
            "InvalidImageName"
        } else {
            "ErrImagePull"
        };
    Some(Waiting {
        container: String::new(),
        reason: reason.into(),
        message: tail(error, 3),
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// podman ignores `runAsNonRoot`; a pod that asks for it must name a non-root uid.
fn non_root_refusal(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let pod_security = spec.security_context.clone().unwrap_or_default();
    for container in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        let security = container.security_context.clone().unwrap_or_default();
        let non_root = security.run_as_non_root.or(pod_security.run_as_non_root);
        let uid = security.run_as_user.or(pod_security.run_as_user);
        if non_root == Some(true) && uid.is_none_or(|u| u == 0) {
            return Some(format!(
                "container {} has runAsNonRoot but no non-root runAsUser",
                container.name
            ));
        }
    }
    None
}

fn effective_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(0)
}

/// Publishes a static slimforge binary as the helper image (scratch + the
/// binary at `/slimforge`) next to the output image; returns it by digest.
async fn publish_helper(
    binary: Option<&Path>,
    output: &str,
    platform: &str,
    insecure: bool,
    auth: Option<&Path>,
    workdir: &Path,
) -> Result<String, LocalError> {
    let binary = match binary {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()
            .map_err(|e| LocalError::Helper(format!("finding this executable: {e}")))?,
    };
    if !is_static_executable(&binary) {
        return Err(LocalError::Helper(format!(
            "{} is dynamically linked and cannot run in a scratch image; give --helper-image, or --helper-binary with a static (x86_64-unknown-linux-musl) build",
            binary.display()
        )));
    }
    let output = crate::oci::reference::parse(output).map_err(LocalError::Helper)?;
    // Tagged by content: an image published before is used as it is.
    let digest = {
        use sha2::Digest as _;
        let mut hasher = sha2::Sha256::new();
        for file in [binary.as_path(), Path::new(CA_BUNDLE)] {
            if let Ok(bytes) = std::fs::read(file) {
                hasher.update(&bytes);
            }
        }
        hex::encode(hasher.finalize())
    };
    let target = format!(
        "{}/slimforge/helper:{}-{}",
        output.registry(),
        env!("CARGO_PKG_VERSION"),
        &digest[..12]
    );
    let options = crate::oci::registry::RegistryOptions {
        insecure,
        ca_bundle: None,
        auth_file: auth.map(Path::to_path_buf),
    };
    if let Ok(existing) = existing_image(&target, platform, &options).await {
        return Ok(existing);
    }
    let mut layers = vec![serde_json::json!({
        "source": binary, "destination": "/slimforge", "chmod": "0755",
        "createdBy": "slimforge helper",
    })];
    // The registry client needs CA certificates even for plain HTTP.
    if Path::new(CA_BUNDLE).is_file() {
        layers.push(serde_json::json!({
            "source": CA_BUNDLE, "destination": CA_BUNDLE, "chmod": "0644",
            "createdBy": "CA certificates of the host",
        }));
    }
    let spec = serde_json::json!({
        "base": "scratch",
        "platform": platform,
        "layers": layers,
        "config": {"entrypoint": ["/slimforge"], "user": ASSEMBLE_UID.to_string()},
        "target": target,
        "insecure": insecure,
        "auth": auth,
    });
    let path = workdir.join("helper-image.json");
    std::fs::write(&path, spec.to_string())
        .map_err(|e| LocalError::Io(format!("writing {}: {e}", path.display())))?;
    let spec = crate::assemble::AssembleSpec::load(&path)
        .map_err(|e| LocalError::Helper(e.to_string()))?;
    let result = crate::assemble::assemble(&spec)
        .await
        .map_err(|e| LocalError::Helper(format!("publishing the helper image: {e}")))?;
    Ok(result.reference)
}

/// `image` by digest, if the registry has it.
async fn existing_image(
    image: &str,
    platform: &str,
    options: &crate::oci::registry::RegistryOptions,
) -> Result<String, LocalError> {
    let fail = |e: String| LocalError::Helper(e);
    let reference =
        crate::oci::registry::parse_reference(image).map_err(|e| fail(e.to_string()))?;
    let platform = platform
        .parse::<crate::oci::Platform>()
        .map_err(|e| fail(e.to_string()))?;
    let registry = crate::oci::registry::Registry::connect(options, &[&reference])
        .await
        .map_err(|e| fail(e.to_string()))?;
    let pinned = registry
        .resolve(&reference, &platform)
        .await
        .map_err(|e| fail(e.to_string()))?;
    Ok(format!(
        "{}@{}",
        crate::oci::registry::repository_name(&reference),
        pinned.digest
    ))
}

/// An ELF executable with no program interpreter: it needs no libc from the image.
pub fn is_static_executable(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap_or_default()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        bytes
            .get(at..at + 4)
            .map(|t| u32::from_le_bytes(t.try_into().unwrap_or_default()) != PT_INTERP)
            .unwrap_or(false)
    })
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
