//! The helper that runs inside build pods (`slimforge stage …`). Build pods
//! run arbitrary images, often without a shell, libc or coreutils, so this
//! is part of the static binary and uses nothing but the filesystem.

pub mod clone;
pub mod context;
pub mod install;
pub mod probe;
pub mod run;
pub mod whoami;

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Context(#[from] context::ContextError),
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanLoadError),
}

impl From<crate::oci::layer::LayerError> for StageError {
    fn from(e: crate::oci::layer::LayerError) -> Self {
        Self::Fs(e.into())
    }
}

pub(crate) use crate::rootfs::io_err;
use crate::rootfs::{FsError, write_atomically};

/// A result file is the pod's termination message: keep it well under 4 KiB.
pub const MAX_RESULT_BYTES: usize = 3 * 1024;

/// Writes a pod's result (JSON) where the others read it: `path` in the
/// workspace, readable by every uid (the assemble pod runs as another
/// user), and, when it fits in [`MAX_RESULT_BYTES`], the termination
/// message (a cut JSON would be no use there).
pub(crate) fn publish_result(path: &Path, json: &[u8]) -> Result<(), FsError> {
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
