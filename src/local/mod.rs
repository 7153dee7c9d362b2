//! `slimforge build FILE`: the local shell around the reconcile core. The
//! same ImageBuild, the same decisions and the same Pod specs as in a
//! cluster, run by `podman kube play` (with the changes listed in
//! [`pods::LOCAL_DIFFERENCES`]); the pods' states are read back from podman
//! and their results from the workspace volume. The driver loop is the
//! controller's ([`crate::controller::driver`]); this module reads as the
//! steps of a local build, each done by one of its parts: the manifest
//! (`manifest`), credentials (`credentials`), the lock (`lock`), the helper
//! image (`helper`), the pods in podman (`shell`) and what the user is told
//! (`progress`).

mod caches;
mod credentials;
mod helper;
mod lock;
mod manifest;
pub mod podman;
pub mod pods;
mod progress;
mod shell;

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::ResourceExt;

pub use self::caches::{LocalCache, drop_caches, list_caches};
pub use self::credentials::{LocalSecret, SecretSource};
use self::manifest::Manifest;
use self::podman::{Podman, PodmanError};
use self::pods::local_config_map;
use self::shell::{PodInputs, PodmanShell};
use crate::api::{ImageBuild, ImageBuildStatus, Phase};
use crate::controller::Settings;
use crate::controller::driver::{Shell as _, until_terminal};
use crate::controller::reconcile::reconcile;
use crate::controller::reconcile::{Invalid, Validated, validate, validate_spec};
use crate::controller::status::{READY, find};

pub use self::helper::is_static_executable;
pub use self::progress::{PodTiming, size_summary};

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
    /// Build secrets (`--secret id=ID,src=FILE`): the values of
    /// `spec.secrets`, whose Secrets are not read locally, and of any other
    /// id a RUN mounts.
    pub secrets: Vec<LocalSecret>,
}

/// How the build ended.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub status: ImageBuildStatus,
    /// Per pod: stage name, pod, seconds from the build's start to its start and end.
    pub timeline: Vec<PodTiming>,
}

/// Builds the manifest's ImageBuild with podman; cleans up whatever happens.
pub async fn build(options: &BuildOptions) -> Result<BuildReport, LocalError> {
    let mut manifest = Manifest::load(&options.manifest)?;
    add_local_secrets(&mut manifest.image_build, options);
    let workdir = tempfile::Builder::new()
        .prefix("slimforge-build-")
        .tempdir()
        .map_err(|e| LocalError::Io(format!("creating a work directory: {e}")))?;
    let mut shell = PodmanShell::new(Podman::new(), workdir.path().to_path_buf());
    // Interrupted (Ctrl-C or SIGTERM) or not, what was started is removed.
    let outcome = tokio::select! {
        outcome = run(&mut shell, &manifest, options, workdir.path()) => outcome,
        signal = crate::shutdown_signal() => Err(LocalError::Interrupted { signal }),
    };
    shell.clean_up().await;
    outcome
}

/// The steps of a local build: check the input, take the build's lock,
/// prepare credentials and the helper image, then drive the build to its
/// end and report it.
async fn run(
    shell: &mut PodmanShell,
    manifest: &Manifest,
    options: &BuildOptions,
    workdir: &Path,
) -> Result<BuildReport, LocalError> {
    let mut ib = manifest.image_build.clone();
    // Bad input ends here, before anything is published or started.
    let validated = validate_manifest(manifest)?;
    let git_credentials_dir = check_references(manifest, options, workdir)?;
    let (auth, auth_dir) = push_credentials(&mut ib, options, workdir)?;
    // In memory until this function returns: the build is over by then.
    let secrets_dir = (!options.secrets.is_empty())
        .then(|| credentials::secrets_dir(&options.secrets))
        .transpose()?;
    shell.set_inputs(PodInputs {
        auth_dir,
        git_credentials_dir,
        secrets_dir: secrets_dir.as_ref().map(|d| d.path().to_path_buf()),
        context_config_map: manifest
            .context_config_map()
            .map(|cm| local_config_map(cm, &format!("{}-g1-context", ib.name_any()))),
        dockerfile_from_context: manifest.dockerfile_from_config_map(),
    });
    // An image the cache has whole needs no lock, no helper and no pod.
    if let Some(status) = cached_image(shell, &ib).await? {
        return outcome(status, Vec::new());
    }
    let lock = lock::lock_build(shell.podman(), &ib.name_any(), &shell.progress).await?;
    shell.hold(lock);
    let settings = Settings {
        helper_image: helper_image(
            shell,
            &ib,
            validated.as_ref(),
            options,
            auth.as_deref(),
            workdir,
        )
        .await?,
        ..Settings::default()
    };
    announce(shell, &ib, validated.as_ref());
    let decision = until_terminal(shell, &mut ib, &settings, POLL).await?;
    shell.show_last_phases().await;
    let timeline = shell.timeline();
    shell.progress.timeline(&timeline);
    outcome(decision.status, timeline)
}

/// The status of a build whose whole image the stage cache has, where the
/// output's tags point already: the core's first pass, asked before
/// anything is started (the shell keeps the cache's answer for the build
/// proper when it is not that).
async fn cached_image(
    shell: &mut PodmanShell,
    ib: &ImageBuild,
) -> Result<Option<ImageBuildStatus>, LocalError> {
    let settings = Settings::default();
    let now = jiff::Timestamp::now();
    let mut observed = shell.observe(ib).await?;
    let first = reconcile(ib, &observed, &settings, now);
    let Some(request) = first.lookup else {
        return Ok(None);
    };
    observed.cache = Some(shell.look_up(ib, first.build, &request).await?);
    let decision = reconcile(ib, &observed, &settings, now);
    let done = decision.status.phase == Some(Phase::Succeeded)
        && decision.create_pods.is_empty()
        && decision.status.image.as_ref().is_some_and(|i| i.cached);
    Ok(done.then_some(decision.status))
}

/// The push credentials (`--push-secret`, else the usual auth file) and
/// their private copy's directory for the assemble pod. They go to it as a
/// `spec.output.pushSecret` would in a cluster, named in the spec or not.
fn push_credentials(
    ib: &mut ImageBuild,
    options: &BuildOptions,
    workdir: &Path,
) -> Result<(Option<PathBuf>, Option<PathBuf>), LocalError> {
    let Some(auth) = credentials::auth_file(options.push_secret.as_deref())? else {
        return Ok((None, None));
    };
    let auth_dir = credentials::private_auth_dir(workdir, &auth)?;
    ib.spec
        .output
        .push_secret
        .get_or_insert_with(|| "local-push-credentials".into());
    Ok((Some(auth), Some(auth_dir)))
}

/// The spec checked and its Dockerfile planned; `None` for a git context,
/// whose Dockerfile is checked once it is cloned.
fn validate_manifest(manifest: &Manifest) -> Result<Option<Validated>, LocalError> {
    let ib = &manifest.image_build;
    let refused = |invalid: Invalid| {
        LocalError::Invalid(format!(
            "{}: {}: {}",
            manifest.path.display(),
            invalid.reason,
            invalid.message
        ))
    };
    if ib.spec.context.git.is_some() {
        validate_spec(ib, &Settings::default()).map_err(refused)?;
        return Ok(None);
    }
    let dockerfile = manifest.dockerfile_from_config_map();
    validate(ib, &Settings::default(), dockerfile.as_deref())
        .map(Some)
        .map_err(refused)
}

/// What the spec names must be at hand: a ConfigMap context in the
/// manifest, git credentials given with `--git-credentials` (returns their
/// private copy). Every missing one is named at once.
fn check_references(
    manifest: &Manifest,
    options: &BuildOptions,
    workdir: &Path,
) -> Result<Option<PathBuf>, LocalError> {
    let ib = &manifest.image_build;
    let mut missing = Vec::new();
    if let Some(cm) = &ib.spec.context.config_map
        && !manifest.config_maps.contains_key(&cm.name)
    {
        missing.push(format!(
            "spec.context.configMap.name: ConfigMap {} is not in {}",
            cm.name,
            manifest.path.display()
        ));
    }
    let needs_git_credentials = ib
        .spec
        .context
        .git
        .as_ref()
        .is_some_and(|g| g.credentials_secret.is_some());
    let git_credentials = match (&options.git_credentials, needs_git_credentials) {
        (Some(dir), true) => Some(credentials::private_git_credentials(workdir, dir)?),
        (None, true) => {
            missing.push(
                "spec.context.git.credentialsSecret: give its username and password with --git-credentials DIR".to_string(),
            );
            None
        }
        (_, false) => None,
    };
    for (i, secret) in ib.spec.secrets.iter().enumerate() {
        if !options.secrets.iter().any(|s| s.id == secret.id) {
            missing.push(format!(
                "spec.secrets[{i}]: Secrets are not read locally: give build secret `{}` with --secret id={},src=FILE",
                secret.id, secret.id
            ));
        }
    }
    if !missing.is_empty() {
        return Err(LocalError::Invalid(missing.join("; ")));
    }
    Ok(git_credentials)
}

/// Each `--secret` id becomes an entry of `spec.secrets` (whose Secret is
/// never read locally).
fn add_local_secrets(ib: &mut ImageBuild, options: &BuildOptions) {
    for secret in &options.secrets {
        if !ib.spec.secrets.iter().any(|s| s.id == secret.id) {
            ib.spec.secrets.push(crate::api::BuildSecret {
                id: secret.id.clone(),
                secret_ref: crate::api::SecretKeyRef {
                    name: "slimforge-build".into(),
                    key: secret.id.clone(),
                },
            });
        }
    }
}

/// `--helper-image`, else this binary published next to the output image
/// for the build's platform.
async fn helper_image(
    shell: &PodmanShell,
    ib: &ImageBuild,
    validated: Option<&Validated>,
    options: &BuildOptions,
    auth: Option<&Path>,
    workdir: &Path,
) -> Result<String, LocalError> {
    if let Some(image) = &options.helper_image {
        return Ok(image.clone());
    }
    let platform = match validated {
        Some(validated) => validated.plan.platform.clone(),
        None => ib
            .spec
            .platform
            .clone()
            .unwrap_or_else(|| "linux/amd64".into()),
    };
    shell.progress.line("publishing the helper image");
    helper::publish_helper(
        options.helper_binary.as_deref(),
        &ib.spec.output.image,
        &platform,
        ib.spec.output.insecure,
        auth,
        workdir,
    )
    .await
}

/// The line that says what is built: the image and its pods, or the
/// repository cloned first.
fn announce(shell: &PodmanShell, ib: &ImageBuild, validated: Option<&Validated>) {
    let image = &ib.spec.output.image;
    let view = shell.cache_view().filter(|v| v.error.is_none());
    let line = match validated {
        Some(_) if view.is_some_and(|v| v.rebase.is_some() && v.image.is_none()) => {
            format!("building {image} (a rebase of the cached layers: 1 pod)")
        }
        Some(validated) => {
            let all = crate::controller::pods::units(&validated.plan).len();
            // What the cache has runs no pod; a restore pod may come.
            let cached = view.map_or(0, |v| v.hits.len() + usize::from(v.recipe.is_some()));
            if cached == 0 {
                format!("building {image} ({all} pods)")
            } else {
                format!("building {image} (of {all} pods, {cached} from the cache)")
            }
        }
        None => format!(
            "building {image} from {} (cloned first)",
            crate::api::redacted_url(
                &ib.spec
                    .context
                    .git
                    .as_ref()
                    .map(|g| g.url.clone())
                    .unwrap_or_default()
            )
        ),
    };
    shell.progress.line(&line);
}

/// The report of a build that succeeded; the Ready condition's reason and
/// message as the error of one that did not.
fn outcome(status: ImageBuildStatus, timeline: Vec<PodTiming>) -> Result<BuildReport, LocalError> {
    if status.phase == Some(Phase::Succeeded) {
        return Ok(BuildReport { status, timeline });
    }
    let (reason, message) = find(&status.conditions, READY)
        .map(|c| (c.reason.clone(), c.message.clone()))
        .unwrap_or_else(|| ("Failed".into(), "the build failed".into()));
    Err(LocalError::Failed { reason, message })
}
