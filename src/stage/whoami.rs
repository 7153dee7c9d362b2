//! `stage whoami FILE`: records the `uid:gid` the runtime chose for the
//! image's USER (run without runAsUser, the kubelet resolves it).

use std::path::Path;

use super::StageError;
use crate::rootfs::users::current_ids;
use crate::rootfs::write_atomically;

/// Writes `uid:gid` (effective ids) to `file`.
pub fn whoami(file: &Path) -> Result<(u32, u32), StageError> {
    let (uid, gid) = current_ids()?;
    write_atomically(file, format!("{uid}:{gid}").as_bytes())?;
    Ok((uid, gid))
}
