//! `stage whoami FILE`: records the `uid:gid` the runtime chose for the
//! image's USER (run without runAsUser, the kubelet resolves it).

use std::path::Path;

use super::{StageError, io_err, write_atomically};

/// The effective uid and gid of this process, from `/proc/self/status`.
pub fn current_ids() -> Result<(u32, u32), StageError> {
    let path = Path::new("/proc/self/status");
    let status = std::fs::read_to_string(path).map_err(io_err(path))?;
    parse_status(&status).ok_or_else(|| StageError::Invalid {
        path: path.to_path_buf(),
        what: "no Uid:/Gid: lines".into(),
    })
}

/// Writes `uid:gid` (effective ids) to `file`.
pub fn whoami(file: &Path) -> Result<(u32, u32), StageError> {
    let (uid, gid) = current_ids()?;
    write_atomically(file, format!("{uid}:{gid}").as_bytes())?;
    Ok((uid, gid))
}

/// `Uid:\treal\teffective\tsaved\tfs` → the effective one; same for Gid.
fn parse_status(status: &str) -> Option<(u32, u32)> {
    let effective = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((effective("Uid:")?, effective("Gid:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_gives_the_effective_ids() {
        let status = "Name:\tx\nUmask:\t0022\nUid:\t1000\t65534\t1000\t65534\nGid:\t100\t65533\t100\t65533\n";
        assert_eq!(parse_status(status), Some((65534, 65533)));
        assert_eq!(parse_status("Name:\tx\n"), None);
    }

    #[test]
    fn current_ids_match_the_owner_of_proc_self() {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata("/proc/self").unwrap();
        assert_eq!(current_ids().unwrap(), (meta.uid(), meta.gid()));
    }
}
