//! The spec's rules and the Dockerfile's plan: what makes an ImageBuild
//! buildable, each error naming the field or line.

use std::time::Duration;

use jiff::SignedDuration;

use super::MAX_PLAN_BYTES;
use crate::api::{ImageBuild, ImageBuildSpec, MAX_INLINE_CONTEXT_BYTES};
use crate::controller::Settings;
use crate::controller::status::Reason;
use crate::dockerfile::RunMount;
use crate::plan::{BuildPlan, PlanRequest};
use crate::schema::{DockerfileSource, dockerfile_source};

/// Why a spec can't be built, for `Ready=False`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub reason: Reason,
    pub message: String,
}

impl Invalid {
    /// A rule of the spec broken (`InvalidSpec`).
    fn spec(message: String) -> Self {
        Invalid {
            reason: Reason::InvalidSpec,
            message,
        }
    }

    /// A Dockerfile that can't be planned or run (`InvalidDockerfile`).
    fn dockerfile(message: String) -> Self {
        Invalid {
            reason: Reason::InvalidDockerfile,
            message,
        }
    }
}

/// The ImageBuild as validated: its plan and parameters.
#[derive(Debug, Clone)]
pub struct Validated {
    pub plan: BuildPlan,
    pub timeout: Duration,
}

/// Checks the spec and plans the Dockerfile; errors name the field or line.
/// For a git context, `dockerfile_from_context` is the context pod's.
pub fn validate(
    ib: &ImageBuild,
    settings: &Settings,
    dockerfile_from_context: Option<&str>,
) -> Result<Validated, Invalid> {
    let timeout = validate_spec(ib, settings)?;
    plan_spec(ib, timeout, dockerfile_from_context)
}

/// The second half of [`validate`]: plans the Dockerfile of a spec that
/// [`validate_spec`] passed (`timeout` is what it returned), for callers
/// that learn the Dockerfile only later (a git context's, from the clone).
pub fn plan_spec(
    ib: &ImageBuild,
    timeout: Duration,
    dockerfile_from_context: Option<&str>,
) -> Result<Validated, Invalid> {
    let spec = &ib.spec;
    let request = PlanRequest {
        dockerfile: dockerfile_text(spec, dockerfile_from_context)?,
        build_args: spec.build_args.clone(),
        target: spec.target.clone().filter(|t| !t.is_empty()),
        platform: spec.platform.clone(),
    };
    let plan = request.plan().map_err(|e| {
        Invalid::dockerfile(format!(
            "{}: {e}",
            field_of_plan_error(spec.dockerfile.is_some())
        ))
    })?;
    check_plan_runs_in_pods(&plan)?;
    check_run_mounts(spec, &plan)?;
    Ok(Validated { plan, timeout })
}

/// The Dockerfile's text: the spec's own, or the file `dockerfilePath`
/// names in the inline context or else in `from_context` (a ConfigMap's or
/// the clone's).
fn dockerfile_text(spec: &ImageBuildSpec, from_context: Option<&str>) -> Result<String, Invalid> {
    let source = dockerfile_source(spec).map_err(|e| Invalid::spec(format!("spec: {e}")))?;
    let path = match source {
        DockerfileSource::Inline(text) => return Ok(text.to_string()),
        DockerfileSource::Path(path) => path,
    };
    let from_inline = spec
        .context
        .inline
        .as_ref()
        .and_then(|files| files.get(path.trim_start_matches("./")));
    from_inline
        .map(String::as_str)
        .or(from_context)
        .map(str::to_string)
        .ok_or_else(|| {
            Invalid::spec(format!(
                "spec.dockerfilePath `{path}`: no such file in the context"
            ))
        })
}

/// A plan a pod can run: no `FROM scratch` chain (a pod needs an image),
/// and small enough for the environment variable that carries it.
fn check_plan_runs_in_pods(plan: &BuildPlan) -> Result<(), Invalid> {
    if let Some(chain) = plan.chains.iter().find(|c| c.image == "scratch") {
        let line = chain.stages.first().map(|s| s.stage.line).unwrap_or(0);
        return Err(Invalid::dockerfile(format!(
            "line {line}: stage `{}` is FROM scratch and must run as a pod, which needs an image; copy its files into the final stage instead",
            chain.id
        )));
    }
    let plan_bytes = serde_json::to_vec(plan).map(|v| v.len()).unwrap_or(0);
    if plan_bytes > MAX_PLAN_BYTES {
        return Err(Invalid::dockerfile(format!(
            "the build plan is {plan_bytes} bytes, more than the {MAX_PLAN_BYTES} a pod can be handed"
        )));
    }
    Ok(())
}

/// The most entries of `spec.secrets`.
pub const MAX_BUILD_SECRETS: usize = 64;

/// The most cache ids one build mounts: each is a claim in the namespace,
/// and a Dockerfile must not be able to make hundreds.
pub const MAX_CACHE_IDS: usize = 16;

/// Every secret a RUN mounts with `required` is in `spec.secrets` (one
/// that is not required and not there is skipped, as BuildKit does), and
/// the build mounts at most [`MAX_CACHE_IDS`] caches.
fn check_run_mounts(spec: &ImageBuildSpec, plan: &BuildPlan) -> Result<(), Invalid> {
    let steps = plan
        .chains
        .iter()
        .flat_map(|c| &c.stages)
        .flat_map(|s| &s.steps);
    let mut caches = std::collections::BTreeSet::new();
    for step in steps {
        for planned in &step.mounts {
            if let RunMount::Cache(cache) = &planned.mount
                && caches.insert(cache.id.as_str())
                && caches.len() > MAX_CACHE_IDS
            {
                return Err(Invalid::dockerfile(format!(
                    "line {}: RUN --mount=type=cache,id={}: more than {MAX_CACHE_IDS} cache ids in one build",
                    step.line, cache.id
                )));
            }
            if let RunMount::Secret(secret) = &planned.mount
                && secret.required
                && !spec.secrets.iter().any(|s| s.id == secret.id)
            {
                return Err(Invalid {
                    reason: Reason::SecretNotFound,
                    message: format!(
                        "line {}: RUN --mount=type=secret,id={} is required and spec.secrets has no id {}: add {{id: {}, secretRef: {{name: SECRET, key: KEY}}}}",
                        step.line, secret.id, secret.id, secret.id
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Checks everything but the Dockerfile (which a git context provides only
/// after the clone); returns the build's timeout.
pub fn validate_spec(ib: &ImageBuild, settings: &Settings) -> Result<Duration, Invalid> {
    let spec = &ib.spec;
    let invalid = |message: String| Invalid {
        reason: Reason::InvalidSpec,
        message,
    };
    crate::oci::reference::parse(&spec.output.image)
        .map_err(|e| invalid(format!("spec.output.image `{}`: {e}", spec.output.image)))?;
    for (i, tag) in spec.output.additional_tags.iter().enumerate() {
        if !crate::oci::reference::valid_tag(tag) {
            return Err(invalid(format!(
                "spec.output.additionalTags[{i}] `{tag}`: not a valid tag"
            )));
        }
    }
    let timeout = match &spec.timeout {
        None => settings.default_timeout,
        Some(text) => {
            parse_duration(text).map_err(|why| invalid(format!("spec.timeout `{text}`: {why}")))?
        }
    };
    if spec.ttl_seconds_after_finished.is_some_and(|t| t < 0) {
        return Err(invalid(
            "spec.ttlSecondsAfterFinished: must not be negative".into(),
        ));
    }
    if let Some(workspace) = &spec.workspace {
        check_access_modes("spec.workspace.accessModes", &workspace.access_modes)
            .map_err(invalid)?;
    }
    if spec.secrets.len() > MAX_BUILD_SECRETS {
        return Err(invalid(format!(
            "spec.secrets: {} entries, more than the {MAX_BUILD_SECRETS} allowed",
            spec.secrets.len()
        )));
    }
    for (i, secret) in spec.secrets.iter().enumerate() {
        if secret.id.is_empty() || secret.id.contains('/') || secret.id == "." || secret.id == ".."
        {
            return Err(invalid(format!(
                "spec.secrets[{i}].id `{}`: expected a name without `/`",
                secret.id
            )));
        }
        if spec.secrets[..i].iter().any(|s| s.id == secret.id) {
            return Err(invalid(format!(
                "spec.secrets[{i}].id `{}`: given twice",
                secret.id
            )));
        }
    }
    if let Some(volumes) = &spec.cache_volumes {
        if let Some(size) = &volumes.size
            && crate::api::quantity_bytes(size).is_none_or(|b| b == 0)
        {
            return Err(invalid(format!(
                "spec.cacheVolumes.size `{size}`: expected a quantity such as 5Gi or 500M"
            )));
        }
        check_access_modes("spec.cacheVolumes.accessModes", &volumes.access_modes)
            .map_err(invalid)?;
    }
    let context = &spec.context;
    let sources = [
        context.inline.is_some(),
        context.config_map.is_some(),
        context.git.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() != 1 {
        return Err(invalid(
            "spec.context: give exactly one of inline, configMap and git".into(),
        ));
    }
    if let Some(files) = &context.inline {
        let size: usize = files.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > MAX_INLINE_CONTEXT_BYTES {
            return Err(invalid(format!(
                "spec.context.inline: {size} bytes, more than the {MAX_INLINE_CONTEXT_BYTES} allowed; use a configMap or git context"
            )));
        }
        for path in files.keys() {
            if !is_relative_path(path) {
                return Err(invalid(format!(
                    "spec.context.inline `{path}`: expected a relative path without `..`"
                )));
            }
        }
    }
    if let Some(config_map) = &context.config_map {
        for (i, item) in config_map.items.iter().enumerate() {
            if !is_relative_path(&item.path) {
                return Err(invalid(format!(
                    "spec.context.configMap.items[{i}].path `{}`: expected a relative path without `..`",
                    item.path
                )));
            }
        }
    }
    if let Some(git) = &context.git {
        let scheme_ok = ["https://", "http://", "git://"]
            .iter()
            .any(|scheme| git.url.starts_with(scheme) && git.url.len() > scheme.len());
        if !scheme_ok {
            return Err(invalid(format!(
                "spec.context.git.url `{}`: expected an https://, http:// or git:// URL (ssh is not supported)",
                crate::api::redacted_url(&git.url)
            )));
        }
        if let Some(sub) = git.sub_path.as_deref().map(|p| p.trim_matches('/'))
            && !sub.is_empty()
            && !is_relative_path(sub)
        {
            return Err(invalid(format!(
                "spec.context.git.subPath `{sub}`: expected a relative path without `..`"
            )));
        }
    }
    dockerfile_source(spec).map_err(|e| invalid(format!("spec: {e}")))?;
    Ok(timeout)
}

/// Each of `modes` is one a claim may ask for.
fn check_access_modes(field: &str, modes: &[String]) -> Result<(), String> {
    for (i, mode) in modes.iter().enumerate() {
        if !matches!(
            mode.as_str(),
            "ReadWriteOnce" | "ReadWriteMany" | "ReadWriteOncePod"
        ) {
            return Err(format!(
                "{field}[{i}] `{mode}`: expected ReadWriteOnce, ReadWriteMany or ReadWriteOncePod"
            ));
        }
    }
    Ok(())
}

fn field_of_plan_error(inline: bool) -> &'static str {
    if inline {
        "spec.dockerfile"
    } else {
        "spec.dockerfilePath"
    }
}

fn is_relative_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path.split('/').all(|part| part != ".." && !part.is_empty())
}

/// `30m`, `1h30m`, `90s`, `2h` (and ISO 8601 `PT30M`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration: SignedDuration = text.trim().parse().map_err(|e: jiff::Error| {
        if e.to_string().contains("overflow") || e.to_string().contains("too big") {
            format!("longer than the most a build may take ({MAX_TIMEOUT_TEXT})")
        } else {
            "expected a duration such as 30m, 1h30m or 90s".to_string()
        }
    })?;
    if duration.is_negative() || duration.is_zero() {
        return Err("must be longer than zero".into());
    }
    let duration: Duration = duration
        .try_into()
        .map_err(|_| "expected a duration such as 30m, 1h30m or 90s".to_string())?;
    if duration > MAX_TIMEOUT {
        return Err(format!(
            "longer than the most a build may take ({MAX_TIMEOUT_TEXT})"
        ));
    }
    Ok(duration)
}

/// The longest `spec.timeout`: a build running a week is stuck, and the
/// deadline must stay far from the clock's limits.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_TIMEOUT_TEXT: &str = "168h, a week";
