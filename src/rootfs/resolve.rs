//! Paths inside an image's root (a [`Tree`]: a directory on disk standing
//! for `/`, or the image's layers), with the image's symlinks followed as the
//! kernel would follow them there; the base's directories along them; its
//! /etc tables.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::FsError;
use super::tree::{NodeKind, Tree};

/// Linux gives up after 40 links in one lookup (ELOOP); so do we.
const MAX_SYMLINKS: usize = 40;

/// One directory of the base, in the assemble spec's `baseDirectories` shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseDirectoryEntry {
    /// Octal, with setuid/setgid/sticky: `1777`.
    pub mode: String,
    /// Numeric `uid:gid`.
    pub owner: String,
}

/// A COPY destination: its parents resolved; its last component too when it
/// names a directory (trailing `/`) or is an existing directory (or a link to one).
pub fn resolve_destination(
    root: &(impl Tree + ?Sized),
    destination: &str,
) -> Result<PathBuf, FsError> {
    let path = Path::new(destination);
    if !path.has_root() {
        return Err(FsError::Invalid {
            path: path.to_path_buf(),
            what: "a destination must be absolute".into(),
        });
    }
    if destination.ends_with('/') {
        return resolve(root, path, true);
    }
    let full = resolve(root, path, true)?;
    if is_dir(root, &full) {
        return Ok(full);
    }
    resolve(root, path, false)
}

/// `path` inside `root` with symlinks followed as the kernel would with
/// `root` as its `/` (absolute targets restart at `root`, `..` stops there).
/// Components that don't exist are kept as written; the last one is
/// followed only when `follow_last`.
pub fn resolve(
    root: &(impl Tree + ?Sized),
    path: &Path,
    follow_last: bool,
) -> Result<PathBuf, FsError> {
    let mut pending: Vec<OsString> = components(path);
    pending.reverse();
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let is_last = pending.is_empty();
        let mut here = image_path(&resolved);
        here.push(&part);
        let target = match root.entry(&here)? {
            Some(node) => match node.kind {
                NodeKind::Symlink(target) if follow_last || !is_last => target,
                _ => {
                    resolved.push(part);
                    continue;
                }
            },
            None => {
                resolved.push(part);
                continue;
            }
        };
        links += 1;
        if links > MAX_SYMLINKS {
            return Err(FsError::Invalid {
                path: path.to_path_buf(),
                what: "too many levels of symbolic links".into(),
            });
        }
        if target.has_root() {
            resolved.clear();
        }
        let mut target = components(&target);
        target.reverse();
        pending.extend(target);
    }
    Ok(image_path(&resolved))
}

/// The normal and `..` components of a path (`/` and `.` dropped).
fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(part) => Some(part.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// The absolute image path of resolved components.
fn image_path(parts: &[OsString]) -> PathBuf {
    let mut path = PathBuf::from("/");
    path.extend(parts);
    path
}

/// Whether `image_path` is a directory (not a link to one); unreadable is no.
pub fn is_dir(root: &(impl Tree + ?Sized), image_path: &Path) -> bool {
    root.entry(image_path)
        .is_ok_and(|node| node.is_some_and(|node| node.is_dir()))
}

/// The existing directories among `resolved` and its ancestors (not `/`).
pub fn add_directories(
    root: &(impl Tree + ?Sized),
    resolved: &Path,
    out: &mut BTreeMap<String, BaseDirectoryEntry>,
) -> Result<(), FsError> {
    for dir in resolved.ancestors() {
        if dir == Path::new("/") {
            break;
        }
        let Some(node) = root.entry(dir)?.filter(super::tree::Node::is_dir) else {
            continue;
        };
        out.insert(
            dir.display().to_string(),
            BaseDirectoryEntry {
                mode: format!("{:04o}", node.mode),
                owner: format!("{}:{}", node.uid, node.gid),
            },
        );
    }
    Ok(())
}

/// The text of /etc/passwd or /etc/group, found through the base's links; a
/// missing file is empty (scratch-like bases).
pub fn read_table(root: &(impl Tree + ?Sized), file: &str) -> Result<String, FsError> {
    let path = resolve(root, &Path::new("/").join(file), true)?;
    Ok(root
        .read(&path)?
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    /// A merged-/usr base: /bin → usr/bin, /sbin → /usr/sbin, /tmp 1777.
    pub(crate) fn base() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in [
            "usr/bin",
            "usr/sbin",
            "usr/local/bin",
            "etc",
            "tmp",
            "data/srv",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        symlink("usr/bin", root.join("bin")).unwrap();
        symlink("/usr/sbin", root.join("sbin")).unwrap();
        // A chain: /opt → /o1 → data, and a link escaping upwards.
        symlink("o1", root.join("opt")).unwrap();
        symlink("./data/../data", root.join("o1")).unwrap();
        symlink("../../../../usr", root.join("data/up")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            root.join("etc/group"),
            "root:x:0:\nnogroup:x:65534:\nstaff:x:50:app\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn destinations_resolve_through_relative_absolute_and_chained_links() {
        let base = base();
        let d = |destination: &str| {
            resolve_destination(base.path(), destination)
                .unwrap()
                .display()
                .to_string()
        };
        assert_eq!(d("/bin/app"), "/usr/bin/app");
        assert_eq!(d("/sbin/init"), "/usr/sbin/init");
        assert_eq!(d("/opt/srv/x"), "/data/srv/x");
        // `..` never climbs above the root.
        assert_eq!(d("/data/up/bin/tool"), "/usr/bin/tool");
        assert_eq!(d("/usr/local/bin/x"), "/usr/local/bin/x");
        assert_eq!(d("/new/dir/f"), "/new/dir/f");
        assert_eq!(d("/bin/"), "/usr/bin");
    }

    #[test]
    fn a_symlink_loop_is_an_error() {
        let base = base();
        let err = resolve_destination(base.path(), "/loop1/x").unwrap_err();
        assert!(err.to_string().contains("too many levels"), "{err}");
    }

    #[test]
    fn base_directories_are_the_existing_parents_in_the_assemble_shape() {
        let base = base();
        let mut directories = BTreeMap::new();
        for destination in ["/tmp/f", "/bin/app"] {
            let resolved = resolve_destination(base.path(), destination).unwrap();
            add_directories(base.path(), &resolved, &mut directories).unwrap();
        }
        // WORKDIR creates the directory through every link, the last one too.
        let workdir = resolve(base.path(), Path::new("/opt/srv"), true).unwrap();
        add_directories(base.path(), &workdir, &mut directories).unwrap();
        let uid = fs::metadata(base.path()).unwrap().uid();
        let gid = fs::metadata(base.path()).unwrap().gid();
        let json = serde_json::to_value(&directories).unwrap();
        assert_eq!(json["/tmp"]["mode"], "1777");
        assert_eq!(json["/tmp"]["owner"], format!("{uid}:{gid}"));
        assert_eq!(json["/usr/bin"]["mode"], "0755");
        let keys: Vec<_> = directories.keys().cloned().collect();
        assert_eq!(keys, ["/data", "/data/srv", "/tmp", "/usr", "/usr/bin"]);
        assert_eq!(workdir, Path::new("/data/srv"));
        // Directly usable as the spec's field.
        let spec: BTreeMap<String, crate::assemble::DirectorySpec> =
            serde_json::from_value(json).unwrap();
        assert_eq!(spec["/tmp"].mode, "1777");
    }
}
