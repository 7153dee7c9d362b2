//! `stage install DIR`: the helper copies itself into a shared volume (the
//! operator image is scratch-based: its init container has no `cp`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{StageError, io_err};

/// The name of the copy in the volume.
pub const HELPER_NAME: &str = "slimforge";

/// Copies the running executable to `dir/slimforge`, mode 0755, and opens
/// `dir` to every user (mode 1777): the next init container runs as the
/// image's own user and writes its `whoami` there, and podman's emptyDir
/// starts 0755 (Kubernetes' starts 0777). Returns the copy's path.
pub fn install(dir: &Path) -> Result<PathBuf, StageError> {
    let installed = install_from(Path::new("/proc/self/exe"), dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o1777)).map_err(io_err(dir))?;
    Ok(installed)
}

/// Copies `exe` to `dir/slimforge`, mode 0755, replacing an older copy whole.
pub fn install_from(exe: &Path, dir: &Path) -> Result<PathBuf, StageError> {
    let target = dir.join(HELPER_NAME);
    let tmp = dir.join(format!(".{HELPER_NAME}.tmp"));
    fs::copy(exe, &tmp).map_err(io_err(exe))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).map_err(io_err(&tmp))?;
    fs::rename(&tmp, &target).map_err(io_err(&target))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn install_copies_the_file_executable_and_replaces_an_old_copy() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("exe");
        fs::write(&exe, b"new").unwrap();
        let volume = dir.path().join("volume");
        fs::create_dir(&volume).unwrap();
        fs::write(volume.join("slimforge"), b"old").unwrap();
        let installed = install_from(&exe, &volume).unwrap();
        assert_eq!(installed, volume.join("slimforge"));
        assert_eq!(fs::read(&installed).unwrap(), b"new");
        assert_eq!(fs::metadata(&installed).unwrap().mode() & 0o7777, 0o755);
        assert_eq!(fs::read_dir(&volume).unwrap().count(), 1);
    }
}
