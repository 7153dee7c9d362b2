//! The credentials a local build hands its pods: the push auth file (found
//! where docker and podman keep it) and git credentials, each as a private
//! copy only the pods' non-root uid can read; build secrets, in memory,
//! for the chain pods (root) that mount them.

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

/// A build secret given to `slimforge build`, as buildx takes one:
/// `id=ID,src=FILE` (also `source=`, or `type=file`), or `id=ID,env=VAR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSecret {
    pub id: String,
    pub source: SecretSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

impl std::str::FromStr for LocalSecret {
    type Err = String;

    /// As buildx reads `--secret`: `id=…` with `src=`/`source=` or `env=`;
    /// a lone `id` takes the variable of that name.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut id = None;
        let mut source = None;
        for field in text.split(',') {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| format!("`{field}`: expected KEY=VALUE"))?;
            match key {
                "id" => id = Some(value.to_string()),
                "src" | "source" => source = Some(SecretSource::File(PathBuf::from(value))),
                "env" => source = Some(SecretSource::Env(value.to_string())),
                "type" if value == "file" || value == "env" => {}
                _ => return Err(format!("`{field}`: expected id=, src= or env=")),
            }
        }
        let id = id
            .filter(|i| !i.is_empty() && !i.contains('/'))
            .ok_or("expected id=ID (a name without `/`)")?;
        let source = source.unwrap_or_else(|| SecretSource::Env(id.clone()));
        Ok(LocalSecret { id, source })
    }
}

/// The prefix of a build's secrets directory; the owning process's id
/// follows, then `-` and a random part.
const SECRETS_PREFIX: &str = "slimforge-secrets-";

/// The build secrets, each a file named by its id, in a directory only
/// root reads: in memory (`/dev/shm`) where there is one. Removed when the
/// returned directory is dropped; one a killed build left (its process is
/// gone) is removed first.
pub(super) fn secrets_dir(secrets: &[LocalSecret]) -> Result<tempfile::TempDir, LocalError> {
    let io = |what: String| move |e: std::io::Error| LocalError::Io(format!("{what}: {e}"));
    let shm = Path::new("/dev/shm");
    let parent = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    remove_orphaned_secrets(&parent);
    let prefix = format!("{SECRETS_PREFIX}{}-", std::process::id());
    let dir = tempfile::Builder::new()
        .prefix(&prefix)
        .tempdir_in(&parent)
        .map_err(io("a directory for the build secrets".into()))?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
        .map_err(io(dir.path().display().to_string()))?;
    for secret in secrets {
        let value = match &secret.source {
            SecretSource::File(path) => std::fs::read(path).map_err(|e| {
                LocalError::Invalid(format!(
                    "--secret id={}: {}: {e}",
                    secret.id,
                    path.display()
                ))
            })?,
            SecretSource::Env(name) => std::env::var_os(name)
                .ok_or_else(|| {
                    LocalError::Invalid(format!(
                        "--secret id={}: the variable {name} is not set",
                        secret.id
                    ))
                })?
                .into_encoded_bytes(),
        };
        let file = dir.path().join(&secret.id);
        std::fs::write(&file, value)
            .and_then(|()| std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o400)))
            .map_err(io(format!("build secret {}", secret.id)))?;
    }
    Ok(dir)
}

/// Removes the secrets directories under `parent` whose process is gone
/// (a build killed before it could remove its own).
fn remove_orphaned_secrets(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SECRETS_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_builds_secrets_are_removed_and_a_running_ones_kept() {
        let parent = tempfile::tempdir().unwrap();
        // Above the kernel's largest pid: no such process.
        let orphan = parent.path().join(format!("{SECRETS_PREFIX}4194305-abc"));
        let running = parent
            .path()
            .join(format!("{SECRETS_PREFIX}{}-abc", std::process::id()));
        let other = parent.path().join("slimforge-secrets-notapid");
        for dir in [&orphan, &running, &other] {
            std::fs::create_dir(dir).unwrap();
            std::fs::write(dir.join("token"), "value").unwrap();
        }
        remove_orphaned_secrets(parent.path());
        assert!(!orphan.exists());
        assert!(running.join("token").exists() && other.exists());
    }

    #[test]
    fn secrets_are_read_as_buildx_reads_them() {
        let file: LocalSecret = "id=npm,src=/tmp/token".parse().unwrap();
        assert_eq!(file.source, SecretSource::File("/tmp/token".into()));
        let env: LocalSecret = "id=token,env=TOKEN".parse().unwrap();
        assert_eq!(env.source, SecretSource::Env("TOKEN".into()));
        let bare: LocalSecret = "id=TOKEN".parse().unwrap();
        assert_eq!(bare.source, SecretSource::Env("TOKEN".into()));
        assert!(
            "src=/x"
                .parse::<LocalSecret>()
                .unwrap_err()
                .contains("id=ID")
        );
        assert!("id=a,colour=red".parse::<LocalSecret>().is_err());
    }
}
