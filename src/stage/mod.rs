//! The helper that runs inside build pods (`slimforge stage …`). Build pods
//! run arbitrary images, often without a shell, libc or coreutils, so this
//! is part of the static binary and uses nothing but the filesystem.

pub mod clone;
pub mod context;
pub mod install;
mod mounts;
pub mod probe;
pub mod run;
pub mod whoami;

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

use crate::rootfs::FsError;
pub(crate) use crate::rootfs::io_err;
