//! `stage snapshot record` / `diff`: what a RUN in the runtime image
//! changed, as one layer. `record` keeps the metadata of every path;
//! `diff` walks again and writes the added and changed entries, whiteouts
//! for deletions and opaque whiteouts for replaced directories.
//!
//! Mount points are not part of the image (/proc, /sys, /dev, the
//! workspace, the /etc/hosts and /etc/resolv.conf the runtime bind-mounts):
//! the walk skips every one of them but `/`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{FsError, io_err, write_atomically};
use crate::oci::layer::{LayerDigests, LayerOptions, LayerWriter};

/// First line of a state file; bumped when the format changes.
const STATE_HEADER: &str = "slimforge-snapshot v1";

/// What a path looked like: enough to tell that anything about it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryState {
    /// `st_mode`: file type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub ino: u64,
    /// First 16 bytes of the sha256 of the sorted xattrs, 0 when none.
    pub xattrs: u128,
}

impl EntryState {
    fn of(path: &Path, meta: &fs::Metadata) -> Result<Self, FsError> {
        Ok(Self {
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
            ino: meta.ino(),
            xattrs: xattr_hash(path)?,
        })
    }

    fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }
}

// File type bits of `st_mode` (the same on every Linux architecture).
const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;

/// Image paths (relative to the root, no leading `/`) → their state.
pub type Snapshot = BTreeMap<PathBuf, EntryState>;

/// What to walk: a root and the paths under it to leave out.
#[derive(Debug, Clone)]
pub struct SnapshotScope {
    pub root: PathBuf,
    /// Absolute paths on disk that are skipped with everything below them.
    pub excluded: BTreeSet<PathBuf>,
}

impl SnapshotScope {
    /// The whole filesystem of this container but its mount points (but `/`)
    /// and the state file.
    pub fn this_container(state: &Path) -> Result<Self, FsError> {
        let mountinfo = Path::new("/proc/self/mountinfo");
        let text = fs::read(mountinfo).map_err(io_err(mountinfo))?;
        let mut excluded: BTreeSet<PathBuf> = mount_points(&text)
            .into_iter()
            .filter(|p| p != Path::new("/"))
            .collect();
        excluded.insert(absolute(state)?);
        Ok(Self {
            root: PathBuf::from("/"),
            excluded,
        })
    }

    /// Walks the scope without following symlinks.
    pub fn record(&self) -> Result<Snapshot, FsError> {
        let mut snapshot = Snapshot::new();
        let walk = walkdir::WalkDir::new(&self.root)
            .min_depth(1)
            .follow_links(false)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| !self.excluded.contains(e.path()));
        for entry in walk {
            let entry = match entry {
                Ok(entry) => entry,
                // Gone between listing and looking (a temporary file).
                Err(e)
                    if e.io_error()
                        .is_some_and(|e| e.kind() == io::ErrorKind::NotFound) =>
                {
                    continue;
                }
                Err(e) => {
                    let path = e.path().unwrap_or(&self.root).to_path_buf();
                    return Err(FsError::Io {
                        path,
                        source: e.into(),
                    });
                }
            };
            let meta = match fs::symlink_metadata(entry.path()) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(entry.path())(e)),
            };
            let rel = entry
                .path()
                .strip_prefix(&self.root)
                .expect("walkdir yields paths under its root")
                .to_path_buf();
            snapshot.insert(rel, EntryState::of(entry.path(), &meta)?);
        }
        Ok(snapshot)
    }
}

fn absolute(path: &Path) -> Result<PathBuf, FsError> {
    std::path::absolute(path).map_err(io_err(path))
}

/// Mount points (field 5) of `/proc/self/mountinfo`, octal escapes decoded.
pub fn mount_points(mountinfo: &[u8]) -> Vec<PathBuf> {
    mountinfo
        .split(|b| *b == b'\n')
        .filter_map(|line| line.split(|b| *b == b' ').nth(4))
        .map(|field| PathBuf::from(OsString::from_vec(unescape_octal(field))))
        .collect()
}

/// `\040` → space, as the kernel escapes space, tab, newline and `\`.
fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && i + 4 <= field.len()
            && field[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = field[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(value as u8);
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
}

/// Hash of the sorted xattrs (names and values), not following symlinks.
/// SELinux labels belong to the host, as in the layer writer.
fn xattr_hash(path: &Path) -> Result<u128, FsError> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::Unsupported | io::ErrorKind::NotFound
            ) =>
        {
            return Ok(0);
        }
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut names: Vec<OsString> = names
        .filter(|n| n.as_os_str() != "security.selinux")
        .collect();
    if names.is_empty() {
        return Ok(0);
    }
    names.sort();
    let mut hasher = Sha256::new();
    for name in names {
        let value = xattr::get(path, &name)
            .map_err(io_err(path))?
            .unwrap_or_default();
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((value.len() as u64).to_le_bytes());
        hasher.update(&value);
    }
    let digest = hasher.finalize();
    Ok(u128::from_le_bytes(
        digest[..16].try_into().expect("16 bytes"),
    ))
}

/// `stage snapshot record STATE`.
pub fn record(state: &Path) -> Result<usize, FsError> {
    let scope = SnapshotScope::this_container(state)?;
    let snapshot = scope.record()?;
    write_atomically(state, &encode(&snapshot))?;
    settle();
    Ok(snapshot.len())
}

/// Lets the kernel's coarse file clock (one tick: 1–10 ms) move on, so a
/// file rewritten right after the record, at the same size, still gets a
/// different ctime.
pub fn settle() {
    std::thread::sleep(std::time::Duration::from_millis(20));
}

/// `stage snapshot diff STATE --out LAYER`.
pub fn diff(state: &Path, out: &Path) -> Result<LayerDigests, FsError> {
    let before =
        decode(&fs::read(state).map_err(io_err(state))?).map_err(|what| FsError::Invalid {
            path: state.to_path_buf(),
            what,
        })?;
    let mut scope = SnapshotScope::this_container(state)?;
    scope.excluded.insert(absolute(out)?);
    write_diff(&scope, &before, out, LayerOptions::default())
}

/// One thing the layer says about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    /// Hide the lower layers' contents of this directory.
    Opaque,
    /// The entry as it is now.
    Entry,
    /// Delete this path.
    Whiteout,
}

/// What changed between `before` and the scope now, in layer order: parents
/// first, an opaque whiteout ahead of its directory's new contents.
fn changes(before: &Snapshot, after: &Snapshot) -> Vec<(PathBuf, Change)> {
    let replaced: BTreeSet<&Path> = after
        .iter()
        .filter(|(path, now)| {
            before
                .get(*path)
                .is_some_and(|was| was.is_dir() && now.is_dir() && was.ino != now.ino)
        })
        .map(|(path, _)| path.as_path())
        .collect();
    let under_replaced = |path: &Path| path.ancestors().skip(1).any(|a| replaced.contains(a));

    let mut out: BTreeMap<PathBuf, Change> = BTreeMap::new();
    let mut opaque: Vec<PathBuf> = Vec::new();
    for (path, now) in after {
        let changed = before.get(path) != Some(now);
        if changed || under_replaced(path) {
            out.insert(path.clone(), Change::Entry);
        }
        if replaced.contains(path.as_path()) {
            opaque.push(path.clone());
        }
    }
    for path in before.keys().filter(|p| !after.contains_key(*p)) {
        // Only the topmost deleted path: its parent still is a directory
        // (an ancestor replaced or turned into a file hides it anyway).
        let parent = path.parent().unwrap_or(Path::new(""));
        let parent_is_dir =
            parent.as_os_str().is_empty() || after.get(parent).is_some_and(EntryState::is_dir);
        if parent_is_dir && !replaced.contains(parent) && !under_replaced(parent) {
            out.insert(path.clone(), Change::Whiteout);
        }
    }
    // Unchanged parents go in as they are: a runtime would create them 0755 root.
    let parents: Vec<PathBuf> = out
        .keys()
        .chain(opaque.iter())
        .flat_map(|p| p.ancestors().skip(1))
        .filter(|a| !a.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .collect();
    for parent in parents {
        out.entry(parent).or_insert(Change::Entry);
    }
    // Path order is component-wise: parents first, siblings by name. The
    // opaque marker sorts first inside its directory (an empty name).
    let mut ordered: Vec<(Vec<&OsStr>, Change, PathBuf)> = out
        .iter()
        .map(|(path, change)| (path.iter().collect(), *change, path.clone()))
        .collect();
    for dir in &opaque {
        let mut key: Vec<&OsStr> = dir.iter().collect();
        key.push(OsStr::new(""));
        ordered.push((key, Change::Opaque, dir.clone()));
    }
    ordered.sort();
    ordered
        .into_iter()
        .map(|(_, change, path)| (path, change))
        .collect()
}

/// Walks `scope` again and writes what changed since `before` as one layer.
pub fn write_diff(
    scope: &SnapshotScope,
    before: &Snapshot,
    out: &Path,
    options: LayerOptions,
) -> Result<LayerDigests, FsError> {
    let after = scope.record()?;
    let mut writer = LayerWriter::create(out, options)?;
    for (path, change) in changes(before, &after) {
        let image = Path::new("/").join(&path);
        match change {
            Change::Entry => writer.add_as_is(&scope.root.join(&path), &image)?,
            Change::Whiteout => writer.whiteout_at(&image)?,
            Change::Opaque => writer.opaque_whiteout_at(&image)?,
        }
    }
    Ok(writer.finish()?)
}

/// One line per path: `mode uid gid size mtime ctime ino xattrs path`,
/// numbers in decimal, xattrs in hex, the path last with `\` and newline
/// escaped.
fn encode(snapshot: &Snapshot) -> Vec<u8> {
    let mut out = Vec::with_capacity(snapshot.len() * 96);
    out.extend_from_slice(STATE_HEADER.as_bytes());
    out.push(b'\n');
    for (path, s) in snapshot {
        out.extend_from_slice(
            format!(
                "{} {} {} {} {} {} {} {:x} ",
                s.mode, s.uid, s.gid, s.size, s.mtime_ns, s.ctime_ns, s.ino, s.xattrs
            )
            .as_bytes(),
        );
        for b in path.as_os_str().as_bytes() {
            match b {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b => out.push(*b),
            }
        }
        out.push(b'\n');
    }
    out
}

fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
    let mut lines = bytes.split(|b| *b == b'\n');
    if lines.next() != Some(STATE_HEADER.as_bytes()) {
        return Err(format!("not a snapshot state (expected `{STATE_HEADER}`)"));
    }
    let mut snapshot = Snapshot::new();
    for (n, line) in lines.enumerate().filter(|(_, l)| !l.is_empty()) {
        let bad = || format!("line {}: malformed", n + 2);
        let mut fields = line.splitn(9, |b| *b == b' ');
        let mut field = || -> Result<&str, String> {
            std::str::from_utf8(fields.next().ok_or_else(bad)?).map_err(|_| bad())
        };
        let state = EntryState {
            mode: field()?.parse().map_err(|_| bad())?,
            uid: field()?.parse().map_err(|_| bad())?,
            gid: field()?.parse().map_err(|_| bad())?,
            size: field()?.parse().map_err(|_| bad())?,
            mtime_ns: field()?.parse().map_err(|_| bad())?,
            ctime_ns: field()?.parse().map_err(|_| bad())?,
            ino: field()?.parse().map_err(|_| bad())?,
            xattrs: u128::from_str_radix(field()?, 16).map_err(|_| bad())?,
        };
        let path = fields.next().ok_or_else(bad)?;
        snapshot.insert(
            PathBuf::from(OsString::from_vec(unescape_path(path))),
            state,
        );
    }
    Ok(snapshot)
}

fn unescape_path(escaped: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(escaped.len());
    let mut bytes = escaped.iter();
    while let Some(&b) = bytes.next() {
        match (b, bytes.as_slice().first()) {
            (b'\\', Some(b'n')) => {
                out.push(b'\n');
                bytes.next();
            }
            (b'\\', Some(b'\\')) => {
                out.push(b'\\');
                bytes.next();
            }
            (b, _) => out.push(b),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::{PermissionsExt, symlink};

    struct Tree {
        dir: tempfile::TempDir,
        scope: SnapshotScope,
    }

    impl Tree {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("root");
            for d in [
                "etc",
                "tmp",
                "usr/bin",
                "var/lib/gone/deep",
                "srv/data",
                "mnt/volume",
            ] {
                fs::create_dir_all(root.join(d)).unwrap();
            }
            fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
            symlink("usr/bin", root.join("bin")).unwrap();
            fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
            fs::write(root.join("usr/bin/vi"), "vi").unwrap();
            fs::write(root.join("usr/bin/sh"), "sh").unwrap();
            fs::write(root.join("var/lib/gone/deep/f"), "f").unwrap();
            fs::write(root.join("srv/data/old"), "old").unwrap();
            fs::write(root.join("mnt/volume/kept"), "x").unwrap();
            let scope = SnapshotScope {
                excluded: [root.join("mnt/volume")].into(),
                root,
            };
            Self { dir, scope }
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.scope.root.join(rel)
        }

        fn record(&self) -> Snapshot {
            let snapshot = self.scope.record().unwrap();
            settle();
            // Through the state file format, as between the two commands.
            decode(&encode(&snapshot)).unwrap()
        }

        /// (path, type, mode, uid, content or link target) of each entry.
        fn diff(&self, before: &Snapshot) -> Vec<(String, char, u32, String)> {
            let out = self.dir.path().join("layer.tar.gz");
            write_diff(&self.scope, before, &out, LayerOptions { mtime: 7 }).unwrap();
            let gz = flate2::read::GzDecoder::new(fs::File::open(&out).unwrap());
            let mut archive = tar::Archive::new(gz);
            let mut entries = Vec::new();
            for entry in archive.entries().unwrap() {
                let mut entry = entry.unwrap();
                let header = entry.header().clone();
                assert_eq!(header.mtime().unwrap(), 7);
                let path = entry.path().unwrap().display().to_string();
                let kind = match header.entry_type() {
                    tar::EntryType::Directory => 'd',
                    tar::EntryType::Symlink => 'l',
                    tar::EntryType::Link => 'h',
                    _ => 'f',
                };
                let mut content = String::new();
                if let Some(target) = entry.link_name().unwrap() {
                    content = target.display().to_string();
                } else {
                    entry.read_to_string(&mut content).unwrap();
                }
                entries.push((path, kind, header.mode().unwrap(), content));
            }
            entries
        }
    }

    fn paths(entries: &[(String, char, u32, String)]) -> Vec<&str> {
        entries.iter().map(|e| e.0.as_str()).collect()
    }

    #[test]
    fn nothing_changed_gives_an_empty_layer() {
        let tree = Tree::new();
        let before = tree.record();
        assert!(tree.diff(&before).is_empty());
    }

    #[test]
    fn additions_changes_and_their_unchanged_parents_are_written() {
        let tree = Tree::new();
        let before = tree.record();
        fs::write(tree.path("tmp/new"), "new").unwrap();
        fs::set_permissions(tree.path("usr/bin/sh"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::write(tree.path("srv/data/old"), "new").unwrap();
        symlink("/usr/bin/sh", tree.path("usr/bin/ash")).unwrap();
        fs::hard_link(tree.path("tmp/new"), tree.path("tmp/new2")).unwrap();
        fs::write(tree.path("mnt/volume/ignored"), "x").unwrap();
        let entries = tree.diff(&before);
        assert_eq!(
            paths(&entries),
            [
                "srv",
                "srv/data",
                "srv/data/old",
                "tmp",
                "tmp/new",
                "tmp/new2",
                "usr",
                "usr/bin",
                "usr/bin/ash",
                "usr/bin/sh"
            ]
        );
        let find = |p: &str| entries.iter().find(|e| e.0 == p).unwrap().clone();
        // An unchanged parent keeps its mode (a runtime would make it 0755).
        assert_eq!(find("tmp").2, 0o1777);
        assert_eq!(find("usr/bin/sh").2, 0o4755);
        assert_eq!(find("srv/data/old").3, "new");
        assert_eq!(
            find("usr/bin/ash"),
            ("usr/bin/ash".into(), 'l', 0o777, "/usr/bin/sh".into())
        );
        assert_eq!(find("tmp/new2").1, 'h');
        assert_eq!(find("tmp/new2").3, "tmp/new");
    }

    #[test]
    fn deletions_whiteout_only_the_topmost_path() {
        let tree = Tree::new();
        let before = tree.record();
        fs::remove_dir_all(tree.path("var/lib/gone")).unwrap();
        // Through the /bin symlink: the real path is whited out.
        fs::remove_file(tree.path("bin/vi")).unwrap();
        let entries = tree.diff(&before);
        assert_eq!(
            paths(&entries),
            [
                "usr",
                "usr/bin",
                "usr/bin/.wh.vi",
                "var",
                "var/lib",
                "var/lib/.wh.gone"
            ]
        );
    }

    #[test]
    fn a_replaced_directory_is_opaque_with_all_its_new_contents() {
        let tree = Tree::new();
        let before = tree.record();
        // Made before the old one goes, so the inode number can't be reused.
        // (When it is, the deleted children get whiteouts one by one: the
        // same result.)
        fs::create_dir(tree.path("srv/next")).unwrap();
        fs::write(tree.path("srv/next/fresh"), "fresh").unwrap();
        fs::remove_dir_all(tree.path("srv/data")).unwrap();
        fs::rename(tree.path("srv/next"), tree.path("srv/data")).unwrap();
        let entries = tree.diff(&before);
        assert_eq!(
            paths(&entries),
            ["srv", "srv/data", "srv/data/.wh..wh..opq", "srv/data/fresh"]
        );
    }

    #[test]
    fn a_directory_turned_into_a_file_needs_no_whiteouts_below_it() {
        let tree = Tree::new();
        let before = tree.record();
        fs::remove_dir_all(tree.path("var/lib/gone")).unwrap();
        fs::write(tree.path("var/lib/gone"), "now a file").unwrap();
        let entries = tree.diff(&before);
        assert_eq!(paths(&entries), ["var", "var/lib", "var/lib/gone"]);
    }

    #[test]
    fn a_changed_xattr_is_a_change_and_goes_into_the_layer() {
        let tree = Tree::new();
        let file = tree.path("usr/bin/sh");
        if xattr::set(&file, "user.slimforge", b"1").is_err() {
            eprintln!("skipped: no user xattrs on this filesystem");
            return;
        }
        let before = tree.record();
        xattr::set(&file, "user.slimforge", b"2").unwrap();
        assert_ne!(
            before[Path::new("usr/bin/sh")],
            tree.scope.record().unwrap()[Path::new("usr/bin/sh")]
        );
        let out = tree.dir.path().join("layer.tar.gz");
        write_diff(&tree.scope, &before, &out, LayerOptions::default()).unwrap();
        let gz = flate2::read::GzDecoder::new(fs::File::open(&out).unwrap());
        let mut archive = tar::Archive::new(gz);
        let mut found = false;
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap() == Path::new("usr/bin/sh") {
                let pax = entry.pax_extensions().unwrap().expect("PAX records");
                found = pax.map(Result::unwrap).any(|record| {
                    record.key() == Ok("SCHILY.xattr.user.slimforge")
                        && record.value_bytes() == b"2"
                });
            }
        }
        assert!(found, "the xattr is in the layer");
    }

    #[test]
    fn state_round_trips_odd_names() {
        let tree = Tree::new();
        fs::write(tree.path("tmp/a\nb\\c d"), "x").unwrap();
        let snapshot = tree.scope.record().unwrap();
        assert_eq!(decode(&encode(&snapshot)).unwrap(), snapshot);
        assert!(snapshot.contains_key(Path::new("tmp/a\nb\\c d")));
        assert!(!snapshot.keys().any(|p| p.starts_with("mnt/volume")));
        assert!(decode(b"something else\n").is_err());
    }

    #[test]
    fn mount_points_are_read_with_escapes() {
        let info = b"22 1 0:21 / / rw - overlay overlay rw\n\
                     23 22 0:5 / /proc rw - proc proc rw\n\
                     24 22 8:1 /x /etc/hosts rw - ext4 /dev/sda1 rw\n\
                     25 22 8:1 /y /srv/my\\040dir rw - ext4 /dev/sda1 rw\n";
        assert_eq!(
            mount_points(info),
            ["/", "/proc", "/etc/hosts", "/srv/my dir"].map(PathBuf::from)
        );
    }
}
