//! The helper that runs inside build pods (`slimforge stage …`). Build pods
//! run arbitrary images, often without a shell, libc or coreutils, so this
//! is part of the static binary and uses nothing but the filesystem.

pub mod clone;
pub mod context;
pub mod copy;
pub mod install;
pub mod probe;
pub mod run;
pub mod snapshot;
pub mod users;
pub mod whoami;

use std::io;
use std::path::{Path, PathBuf};

use crate::oci::layer::LayerError;

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("writing the layer: {0}")]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Context(#[from] context::ContextError),
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanLoadError),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StageError + '_ {
    move |source| StageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A result file is the pod's termination message: keep it well under 4 KiB.
pub const MAX_RESULT_BYTES: usize = 3 * 1024;

/// Writes a pod's result (JSON) where the others read it: `path` in the
/// workspace, readable by every uid (the assemble pod runs as another
/// user), and, when it fits in [`MAX_RESULT_BYTES`], the termination
/// message (a cut JSON would be no use there).
pub(crate) fn publish_result(path: &Path, json: &[u8]) -> Result<(), StageError> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    write_atomically(path, json)?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
    if json.len() <= MAX_RESULT_BYTES {
        write_termination_message(json);
    }
    Ok(())
}

/// The result of a pod that failed before (or instead of) its work:
/// `{"status": "failed", "error": …}`, the error cut to fit.
pub(crate) fn failure_json(error: &str) -> String {
    serde_json::json!({
        "status": "failed",
        "error": keep_first_bytes(error, MAX_RESULT_BYTES - 64),
    })
    .to_string()
}

/// The first at most `n` bytes of `s`, ending on a character boundary.
pub(crate) fn keep_first_bytes(s: &str, n: usize) -> String {
    let mut end = n.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Where Kubernetes reads a container's termination message.
const TERMINATION_LOG: &str = "/dev/termination-log";

/// Also hands `bytes` (a result, at most 3 KiB) to Kubernetes as the
/// container's termination message, when there is such a file (podman has none).
pub fn write_termination_message(bytes: &[u8]) {
    if Path::new(TERMINATION_LOG).exists() {
        let _ = std::fs::write(TERMINATION_LOG, bytes);
    }
}

/// Writes `bytes` to `path` through a temporary sibling and a rename, so a
/// reader never sees half a file.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StageError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Removes a tree this process wrote. Directories in it may have been
/// unpacked without write permission (0555), which only root's
/// CAP_DAC_OVERRIDE ignores, and root may have none on the workspace (NFS
/// with root_squash): they are made writable first when that is the trouble.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            for entry in walkdir::WalkDir::new(path).follow_links(false) {
                let Ok(entry) = entry else { continue };
                if entry.file_type().is_dir()
                    && let Ok(meta) = entry.metadata()
                {
                    let mode = meta.permissions().mode() | 0o700;
                    let _ = std::fs::set_permissions(
                        entry.path(),
                        std::fs::Permissions::from_mode(mode),
                    );
                }
            }
            std::fs::remove_dir_all(path)
        }
        other => other,
    }
}

/// A directory of the workspace's scratch space, removed (with
/// [`remove_tree`]) on drop.
pub(crate) struct ScratchDir(PathBuf);

impl ScratchDir {
    pub(crate) fn new_in(parent: &Path) -> io::Result<Self> {
        Ok(Self(
            tempfile::Builder::new()
                .prefix("copy-")
                .tempdir_in(parent)?
                .keep(),
        ))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %e, "scratch directory not removed");
        }
    }
}

/// `<prefix>-<chain>` with the chain id made a safe file name: characters
/// other than ASCII letters, digits, `-`, `_` and `.` become `_`, and a
/// short hash of the id then keeps changed names apart.
pub(crate) fn scratch_name(prefix: &str, chain: &str) -> String {
    let safe: String = chain
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if safe == chain && !chain.is_empty() {
        return format!("{prefix}-{chain}");
    }
    use sha2::Digest as _;
    let hash = hex::encode(sha2::Sha256::digest(chain.as_bytes()));
    format!("{prefix}-{safe}-{}", &hash[..8])
}
