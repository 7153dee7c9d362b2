//! `stage clone`: the context pod of a git build. Clones the repository
//! (shallow where the server allows), checks out the revision, leaves the
//! checkout readable by every user (later pods run as the image's user) and
//! reports the commit and, when asked, the Dockerfile: planning happens only
//! once it is known.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::num::NonZeroU32;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use base64::Engine as _;

use super::io_err;
use crate::cache::context::ContextIndex;
use crate::contract::{
    CloneResult, ContextPlanRequest, MAX_RESULT_BYTES, keep_first_bytes, publish_result,
};
use crate::plan::PlanRequest;
use crate::rootfs::FsError;
use crate::rootfs::remove_tree;

#[derive(Debug, thiserror::Error)]
pub enum CloneError {
    #[error("{0}")]
    Invalid(String),
    #[error("cloning {url} at {revision}: {detail}")]
    Git {
        url: String,
        revision: String,
        detail: String,
    },
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// What `stage clone` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct CloneOptions {
    pub url: String,
    /// A branch, a tag, a full ref name or a full commit SHA (default: the remote's HEAD).
    pub revision: Option<String>,
    pub dest: PathBuf,
    /// The context inside the checkout; `dockerfile` is read relative to it.
    pub sub_path: Option<String>,
    /// A directory with `username` and `password` files (HTTPS basic auth).
    pub credentials: Option<PathBuf>,
    pub dockerfile: Option<String>,
    /// Plan the build on the checkout and digest what each COPY/ADD reads.
    pub plan_request: Option<ContextPlanRequest>,
}

/// Clones, and writes the result (success or error) to `result` and the
/// termination message. Returns the commit.
pub fn clone_with_result(options: &CloneOptions, result: &Path) -> Result<String, CloneError> {
    let outcome = clone(options);
    let json = match &outcome {
        Ok(r) => serde_json::to_string(r),
        Err(e) => serde_json::to_string(&CloneResult {
            error: Some(keep_first_bytes(&e.to_string(), MAX_RESULT_BYTES - 64)),
            ..CloneResult::default()
        }),
    }
    .unwrap_or_default();
    publish_result(result, json.as_bytes())?;
    outcome.map(|r| r.commit.unwrap_or_default())
}

/// Clones `options.url` into `options.dest` and checks the revision out.
pub fn clone(options: &CloneOptions) -> Result<CloneResult, CloneError> {
    let url = crate::api::redacted_url(&options.url);
    let revision = options.revision.clone().filter(|r| !r.trim().is_empty());
    let shown_revision = revision.clone().unwrap_or_else(|| "HEAD".into());
    let git_error = |detail: String| CloneError::Git {
        url: url.clone(),
        revision: shown_revision.clone(),
        detail,
    };
    crate::git::check_url(&options.url).map_err(git_error)?;
    let account = match &options.credentials {
        Some(dir) => Some(read_credentials(dir)?),
        None => None,
    };
    let secrets: Vec<String> = account
        .iter()
        .map(|a| a.password.clone())
        .filter(|p| !p.is_empty())
        .collect();
    let scrub = |text: String| {
        let mut text = text.replace(&options.url, &url);
        for secret in &secrets {
            text = text.replace(secret.as_str(), "***");
        }
        text
    };

    let is_sha = revision.as_deref().is_some_and(crate::git::is_commit_sha);
    // What to ask the remote for, in order: a name may be a branch or a tag.
    let wanted = crate::git::wanted_refs(revision.as_deref());
    if let Some(parent) = options.dest.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| CloneError::from(io_err(parent)(e)))?;
    }
    let mut errors = Vec::new();
    let mut commit = None;
    'attempts: for want in &wanted {
        // A commit may not be fetchable shallowly from every server.
        let depths: &[bool] = if is_sha { &[true, false] } else { &[true] };
        for &shallow in depths {
            if options.dest.exists() {
                remove_tree(&options.dest)
                    .map_err(|e| CloneError::from(io_err(&options.dest)(e)))?;
            }
            match fetch_and_checkout(
                &options.url,
                &options.dest,
                want.as_deref(),
                shallow,
                account.clone(),
            ) {
                Ok(id) => {
                    commit = Some(id);
                    break 'attempts;
                }
                Err(e) => errors.push(match want {
                    Some(w) => format!("{w}: {}", scrub(e)),
                    None => scrub(e),
                }),
            }
        }
    }
    let Some(commit) = commit else {
        errors.dedup();
        return Err(git_error(errors.join("; ")));
    };
    tracing::info!(url = %url, revision = %shown_revision, commit = %commit, "checked out");

    // The context is the checkout without the repository, as Docker's git contexts are.
    let git_dir = options.dest.join(".git");
    remove_tree(&git_dir).map_err(|e| CloneError::from(io_err(&git_dir)(e)))?;
    open_to_everyone(&options.dest)?;

    let context = match options.sub_path.as_deref().map(|p| p.trim_matches('/')) {
        Some(sub) if !sub.is_empty() => {
            if sub.split('/').any(|part| part == "..") {
                return Err(CloneError::Invalid(format!(
                    "subPath `{sub}`: must not contain `..`"
                )));
            }
            let dir = options.dest.join(sub);
            if !dir.is_dir() {
                return Err(git_error(format!(
                    "subPath `{sub}`: no such directory at commit {commit}"
                )));
            }
            dir
        }
        _ => options.dest.clone(),
    };
    let mut dockerfile_text = options
        .plan_request
        .as_ref()
        .and_then(|r| r.dockerfile.clone());
    let dockerfile = match &options.dockerfile {
        None => None,
        Some(path) => {
            let file = context.join(path.trim_start_matches("./"));
            let text = std::fs::read(&file).map_err(|e| {
                git_error(format!(
                    "the Dockerfile `{path}` cannot be read at commit {commit}: {e}"
                ))
            })?;
            dockerfile_text = Some(String::from_utf8_lossy(&text).into_owned());
            let encoded = compress(&text);
            if encoded.len() + 128 > MAX_RESULT_BYTES {
                return Err(git_error(format!(
                    "the Dockerfile `{path}` is too large for a termination message ({} bytes, {} compressed; at most about {} fit): give it inline in spec.dockerfile",
                    text.len(),
                    encoded.len(),
                    MAX_RESULT_BYTES - 128
                )));
            }
            Some(encoded)
        }
    };
    let mut result = CloneResult {
        commit: Some(commit),
        dockerfile,
        error: None,
        context_digests: BTreeMap::new(),
    };
    if let (Some(request), Some(text)) = (&options.plan_request, dockerfile_text) {
        result.context_digests = context_digests(request, text, &context);
        let size = serde_json::to_vec(&result)
            .map(|j| j.len())
            .unwrap_or(usize::MAX);
        if size > MAX_RESULT_BYTES {
            tracing::info!(
                size,
                "the context digests do not fit in the result: the commit stands for the context"
            );
            result.context_digests.clear();
        }
    }
    Ok(result)
}

/// What each COPY/ADD of the planned build reads in `context`, digested
/// for the stage cache; empty when the Dockerfile does not plan (the
/// controller says why, when it plans it) or the context can't be read.
fn context_digests(
    request: &ContextPlanRequest,
    dockerfile: String,
    context: &Path,
) -> BTreeMap<String, String> {
    let plan = PlanRequest {
        dockerfile,
        build_args: request.build_args.clone(),
        target: request.target.clone(),
        platform: request.platform.clone(),
    }
    .plan();
    let digests = plan.ok().and_then(|plan| {
        let index = ContextIndex::from_dir(context).ok()?;
        crate::cache::key::context_digests(&plan, &index).ok()
    });
    digests.unwrap_or_default()
}

fn fetch_and_checkout(
    url: &str,
    dest: &Path,
    want: Option<&str>,
    shallow: bool,
    account: Option<gix::sec::identity::Account>,
) -> Result<String, String> {
    let interrupt = AtomicBool::new(false);
    let text = |e: gix::Error| crate::git::error_text(&e);
    // Isolated: no system or user git configuration, no git binary asked.
    let mut prepare = gix::clone::PrepareFetch::new(
        url,
        dest,
        gix::create::Kind::WithWorktree,
        gix::create::Options::default(),
        gix::open::Options::isolated(),
    )
    .map_err(text)?;
    if shallow {
        prepare = prepare.with_shallow(gix::remote::fetch::Shallow::DepthAtRemote(NonZeroU32::MIN));
    }
    if let Some(want) = want {
        prepare = prepare.with_revision(Some(want)).map_err(text)?;
    }
    if let Some(account) = account {
        prepare = prepare.configure_connection(move |connection| {
            connection.set_credentials(crate::git::authenticate(account.clone()));
            Ok(())
        });
    }
    let (mut checkout, _) = prepare
        .fetch_then_checkout(gix::progress::Discard, &interrupt)
        .map_err(text)?;
    let (repo, _) = checkout
        .main_worktree(gix::progress::Discard, &interrupt)
        .map_err(text)?;
    let commit = repo
        .head_commit()
        .map_err(|e| format!("reading the checked-out commit: {e}"))?;
    Ok(commit.id().to_string())
}

/// `username` and `password` from a mounted Secret.
fn read_credentials(dir: &Path) -> Result<gix::sec::identity::Account, CloneError> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .ok()
            .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
    };
    match (read("username"), read("password")) {
        (Some(username), Some(password)) => Ok(gix::sec::identity::Account {
            username,
            password,
            oauth_refresh_token: None,
        }),
        _ if dir.join("ssh-privatekey").exists() => Err(CloneError::Invalid(format!(
            "{}: ssh keys are not supported yet; give `username` and `password` for an https:// URL",
            dir.display()
        ))),
        _ => Err(CloneError::Invalid(format!(
            "{}: expected the files `username` and `password`",
            dir.display()
        ))),
    }
}

/// Read (and search) permission for everyone on the whole checkout.
fn open_to_everyone(root: &Path) -> Result<(), FsError> {
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry = entry.map_err(|e| FsError::Invalid {
            path: root.to_path_buf(),
            what: e.to_string(),
        })?;
        let file_type = entry.file_type();
        if file_type.is_symlink() {
            continue;
        }
        let meta = entry.metadata().map_err(|e| FsError::Invalid {
            path: entry.path().to_path_buf(),
            what: e.to_string(),
        })?;
        let mode = meta.permissions().mode();
        let wanted = if file_type.is_dir() || mode & 0o100 != 0 {
            mode | 0o755
        } else {
            mode | 0o644
        };
        if wanted != mode {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(wanted))
                .map_err(io_err(entry.path()))?;
        }
    }
    Ok(())
}

/// base64 of the gzip-compressed text.
fn compress(text: &[u8]) -> String {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let _ = encoder.write_all(text);
    let compressed = encoder.finish().unwrap_or_default();
    base64::engine::general_purpose::STANDARD.encode(compressed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compressed_dockerfile_comes_back_as_it_was() {
        let text = "FROM busybox\nCOPY app.go .\n";
        let result = CloneResult {
            commit: Some("a".repeat(40)),
            dockerfile: Some(compress(text.as_bytes())),
            ..CloneResult::default()
        };
        assert_eq!(result.dockerfile_text().unwrap().as_deref(), Some(text));
    }
}
