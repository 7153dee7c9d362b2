//! The credentials a local build hands its pods: the push auth file (found
//! where docker and podman keep it) and git credentials, each as a private
//! copy only the pods' non-root uid can read.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::LocalError;
use crate::controller::ASSEMBLE_UID;

/// The push credentials: `--push-secret`, else the usual auth files.
pub(super) fn auth_file(push_secret: Option<&Path>) -> Result<Option<PathBuf>, LocalError> {
    if let Some(file) = push_secret {
        if !file.is_file() {
            return Err(LocalError::Invalid(format!(
                "--push-secret {}: no such file",
                file.display()
            )));
        }
        return Ok(Some(file.to_path_buf()));
    }
    Ok(auth_file_candidates().into_iter().find(|c| c.is_file()))
}

/// Where podman, then docker, keep their auth file, in the order they look.
fn auth_file_candidates() -> Vec<PathBuf> {
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
    candidates
}

/// A copy of the auth file only the assemble pod's uid can read, as
/// `<workdir>/auth/config.json`; returns its directory.
pub(super) fn private_auth_dir(workdir: &Path, file: &Path) -> Result<PathBuf, LocalError> {
    let io = |e: std::io::Error| LocalError::Io(format!("preparing the push credentials: {e}"));
    let dir = workdir.join("auth");
    std::fs::create_dir(&dir).map_err(io)?;
    private_copy(file, &dir.join("config.json")).map_err(io)?;
    open_to_the_pods(workdir, &dir).map_err(io)?;
    Ok(dir)
}

/// A copy of the git credentials (`username` and `password` in `source`)
/// only the context pod's uid can read; returns its directory.
pub(super) fn private_git_credentials(
    workdir: &Path,
    source: &Path,
) -> Result<PathBuf, LocalError> {
    let io = |e: std::io::Error| {
        LocalError::Io(format!(
            "preparing the git credentials from {}: {e}",
            source.display()
        ))
    };
    let dir = workdir.join("git-credentials");
    std::fs::create_dir(&dir).map_err(io)?;
    for name in ["username", "password"] {
        private_copy(&source.join(name), &dir.join(name)).map_err(io)?;
    }
    open_to_the_pods(workdir, &dir).map_err(io)?;
    Ok(dir)
}

/// `source` copied to `copy`, read-only for the pods' uid and no one else.
fn private_copy(source: &Path, copy: &Path) -> std::io::Result<()> {
    std::fs::copy(source, copy)?;
    std::fs::set_permissions(copy, std::fs::Permissions::from_mode(0o400))?;
    let uid = ASSEMBLE_UID as u32;
    std::os::unix::fs::chown(copy, Some(uid), Some(uid))
}

/// The work directory and `dir` in it traversable (not listable) by the pods.
fn open_to_the_pods(workdir: &Path, dir: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(workdir, std::fs::Permissions::from_mode(0o711))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
}

/// The uid this process runs as.
fn effective_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(0)
}
