//! Filesystem rules the build pods share: an image's filesystem as a
//! [`Tree`] (a directory on disk, or the image's layers: [`LayerTree`]);
//! paths inside it with its symlinks followed ([`resolve`]), the image's users and groups
//! ([`users`]), Docker's COPY/ADD ([`copy`]) and the runtime chain's
//! snapshot ([`snapshot`]). Below both the helper's commands
//! ([`crate::stage`]) and the assembler ([`crate::assemble`]); it knows
//! nothing of plans, pods or registries.

pub mod copy;
pub mod layer_tree;
pub mod resolve;
pub mod snapshot;
pub mod tree;
pub mod users;

pub use layer_tree::LayerTree;
pub use tree::{Node, NodeKind, Tree};

use std::io;
use std::path::{Path, PathBuf};

use crate::oci::layer::LayerError;

/// Why a filesystem operation failed, naming the path.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
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
    /// A layer's tar stream could not be read (layers count from 1, bottom first).
    #[error("reading layer {layer}: {source}")]
    Archive {
        layer: usize,
        #[source]
        source: io::Error,
    },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FsError + '_ {
    move |source| FsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` through a temporary sibling and a rename, so a
/// reader never sees half a file.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
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
