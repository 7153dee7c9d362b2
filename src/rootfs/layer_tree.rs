//! An image's filesystem made from its layers' tar streams alone, without
//! unpacking them: every entry's header, with the OCI/Docker whiteouts
//! applied, and the content of the only files the recipe's evaluation reads
//! (the `passwd` and `group` tables). A [`Tree`] the recipe can be evaluated
//! against when the base is in a registry, not on disk.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{self, Read};
use std::ops::Bound;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::FsError;
use super::tree::{Node, NodeKind, Tree};

/// The most entries a tree holds, `/` included.
pub const MAX_ENTRIES: usize = 1_000_000;
/// The most bytes of names, link targets and file contents a tree holds.
pub const MAX_KEPT_BYTES: usize = 256 << 20;
/// The largest `passwd` or `group` file whose content is kept.
pub const MAX_TABLE_SIZE: u64 = 1 << 20;
/// The longest path or link target accepted (Linux's PATH_MAX).
const MAX_NAME: usize = 4096;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// AUFS's own files (`.wh..wh.plnk`, `.wh..wh.aufs`): never part of the image.
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";

/// An image's filesystem from its layers: build it with
/// [`LayerTree::default`] and [`LayerTree::apply_layer`] for each layer,
/// bottom first.
#[derive(Debug, Clone)]
pub struct LayerTree {
    /// By absolute image path; `/` is always a directory.
    entries: BTreeMap<PathBuf, Entry>,
    /// How many layers were applied.
    layers: usize,
    /// Bytes of names, link targets and contents held (see [`MAX_KEPT_BYTES`]).
    kept: usize,
    /// [`MAX_ENTRIES`]; lower in tests.
    max_entries: usize,
}

#[derive(Debug, Clone)]
struct Entry {
    node: Node,
    content: Content,
    /// The layer (from 1) that put it there; 0 for the implicit `/`.
    layer: usize,
}

#[derive(Debug, Clone)]
enum Content {
    /// A `passwd` or `group` table, shared by its hard links.
    Kept(Arc<[u8]>),
    /// A regular file whose content was not kept.
    NotKept,
    /// A directory, a symlink, a device, a FIFO.
    NotAFile,
}

impl Default for LayerTree {
    fn default() -> Self {
        let root = Entry {
            node: implied_directory(),
            content: Content::NotAFile,
            layer: 0,
        };
        let path = PathBuf::from("/");
        Self {
            kept: kept_size(&path, &root),
            entries: BTreeMap::from([(path, root)]),
            layers: 0,
            max_entries: MAX_ENTRIES,
        }
    }
}

impl LayerTree {
    /// Applies the next layer (bottom first) from its uncompressed tar
    /// stream, read to its end. On an error the tree is left half-updated:
    /// it is to be dropped.
    pub fn apply_layer(&mut self, tar: impl Read) -> Result<(), FsError> {
        self.layers += 1;
        let layer = self.layers;
        let archive_error = |source| FsError::Archive { layer, source };
        let mut archive = tar::Archive::new(tar);
        for entry in archive.entries().map_err(archive_error)? {
            let mut entry = entry.map_err(archive_error)?;
            self.add(&mut entry, layer)?;
        }
        // What follows the end-of-archive marker (its padding).
        io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(archive_error)?;
        Ok(())
    }

    /// One entry of layer `layer`.
    fn add<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, layer: usize) -> Result<(), FsError> {
        let raw = entry.path_bytes().into_owned();
        let as_written = Path::new(OsStr::from_bytes(&raw)).to_path_buf();
        let invalid = |what: String| FsError::Invalid {
            path: as_written.clone(),
            what: format!("layer {layer}: {what}"),
        };
        if raw.len() > MAX_NAME {
            return Err(invalid(format!("a path longer than {MAX_NAME} bytes")));
        }
        let path = image_path(&as_written).map_err(invalid)?;
        let entry_type = entry.header().entry_type();
        if entry_type.is_pax_global_extensions() {
            return Ok(());
        }
        let parent = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        // Nothing under an AUFS metadata directory (`/.wh..wh.plnk/…`) is the image's.
        if parent.components().any(|c| is_whiteout(c.as_os_str())) {
            return Ok(());
        }
        if let Some(name) = path.file_name().filter(|name| is_whiteout(name)) {
            self.ensure_directories(&parent, layer)?;
            let name = name.as_bytes();
            if name == OPAQUE_WHITEOUT.as_bytes() {
                self.hide_lower(&parent, false, layer)?;
            } else if !name.starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
                let hidden = &name[WHITEOUT_PREFIX.len()..];
                if matches!(hidden, b"" | b"." | b"..") {
                    return Err(invalid("a whiteout that names no entry".into()));
                }
                self.hide_lower(&parent.join(OsStr::from_bytes(hidden)), true, layer)?;
            }
            return Ok(());
        }

        let header = entry.header();
        let mode = header
            .mode()
            .map_err(|e| invalid(format!("its mode: {e}")))?
            & 0o7777;
        let (mut uid, mut gid) = (header.uid().ok(), header.gid().ok());
        let pax_error = |e: io::Error| invalid(format!("its PAX extensions: {e}"));
        if let Some(extensions) = entry.pax_extensions().map_err(pax_error)? {
            for extension in extensions {
                let extension = extension.map_err(pax_error)?;
                let value = extension.value().ok().and_then(|v| v.parse().ok());
                match extension.key() {
                    Ok("uid") => uid = value,
                    Ok("gid") => gid = value,
                    _ => {}
                }
            }
        }
        let id = |value: Option<u64>, what: &str| {
            value
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| invalid(format!("its {what} is not a 32-bit number")))
        };
        let (uid, gid) = (id(uid, "uid")?, id(gid, "gid")?);
        let link = entry.link_name_bytes().unwrap_or_default().into_owned();
        if link.len() > MAX_NAME {
            return Err(invalid(format!(
                "a link target longer than {MAX_NAME} bytes"
            )));
        }
        let link = Path::new(OsStr::from_bytes(&link));

        let is_regular = entry_type.is_file() || entry_type.is_contiguous();
        let (kind, content) = if entry_type.is_dir() || (is_regular && raw.ends_with(b"/")) {
            (NodeKind::Directory, Content::NotAFile)
        } else if entry_type.is_symlink() {
            (NodeKind::Symlink(link.to_path_buf()), Content::NotAFile)
        } else if entry_type.is_hard_link() {
            let target =
                image_path(link).map_err(|what| invalid(format!("its link target: {what}")))?;
            let content = match self.entries.get(&target).map(|e| &e.content) {
                Some(Content::Kept(bytes)) => Content::Kept(Arc::clone(bytes)),
                _ => Content::NotKept,
            };
            (NodeKind::File, content)
        } else if is_regular && is_table(&path) && entry.size() <= MAX_TABLE_SIZE {
            let mut bytes = Vec::new();
            Read::take(&mut *entry, MAX_TABLE_SIZE)
                .read_to_end(&mut bytes)
                .map_err(|source| FsError::Archive { layer, source })?;
            (NodeKind::File, Content::Kept(bytes.into()))
        } else if is_regular || entry_type.is_gnu_sparse() {
            (NodeKind::File, Content::NotKept)
        } else {
            (NodeKind::File, Content::NotAFile)
        };
        let entry = Entry {
            node: Node {
                kind,
                mode,
                uid,
                gid,
            },
            content,
            layer,
        };
        if path == Path::new("/") {
            if !entry.node.is_dir() {
                return Err(invalid("the root is not a directory".into()));
            }
            return self.put(path, entry);
        }
        self.ensure_directories(&parent, layer)?;
        self.put(path, entry)
    }

    /// Makes `dir` and its ancestors directories: the missing ones, and
    /// those that are something else, become directories 0755 owned by root.
    fn ensure_directories(&mut self, dir: &Path, layer: usize) -> Result<(), FsError> {
        let missing: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|d| !self.entries.get(*d).is_some_and(|e| e.node.is_dir()))
            .map(Path::to_path_buf)
            .collect();
        for dir in missing.into_iter().rev() {
            let entry = Entry {
                node: implied_directory(),
                content: Content::NotAFile,
                layer,
            };
            self.put(dir, entry)?;
        }
        Ok(())
    }

    /// Puts `entry` at `path`: a directory over a directory keeps what is
    /// in it; anything else over a directory removes it.
    fn put(&mut self, path: PathBuf, entry: Entry) -> Result<(), FsError> {
        let layer = entry.layer;
        let replaced = match self.entries.get(&path) {
            Some(old) if old.node.is_dir() && !entry.node.is_dir() => {
                self.remove_below(&path, |_| true);
                true
            }
            Some(_) => true,
            None => false,
        };
        let cap = |what: String| FsError::Invalid {
            path: path.clone(),
            what: format!("layer {layer}: {what}"),
        };
        if !replaced && self.entries.len() >= self.max_entries {
            return Err(cap(format!("more than {} entries", self.max_entries)));
        }
        let old = self
            .entries
            .get(&path)
            .map_or(0, |old| kept_size(&path, old));
        let kept = self.kept.saturating_sub(old) + kept_size(&path, &entry);
        if kept > MAX_KEPT_BYTES {
            return Err(cap(format!(
                "more than {} MiB of names, link targets and tables",
                MAX_KEPT_BYTES >> 20
            )));
        }
        self.kept = kept;
        self.entries.insert(path, entry);
        Ok(())
    }

    /// A whiteout: removes what lower layers have at `path` (itself only
    /// when `itself`) and below it. What this layer put there stays, with
    /// its parents.
    fn hide_lower(&mut self, path: &Path, itself: bool, layer: usize) -> Result<(), FsError> {
        if itself && self.entries.get(path).is_some_and(|e| e.layer < layer) {
            self.remove(path);
        }
        let kept = self.remove_below(path, |e| e.layer < layer);
        for path in kept {
            if let Some(parent) = path.parent() {
                self.ensure_directories(parent, layer)?;
            }
        }
        Ok(())
    }

    /// Removes the entries below `path` that `hidden` picks; returns the
    /// paths of those it left.
    fn remove_below(&mut self, path: &Path, hidden: impl Fn(&Entry) -> bool) -> Vec<PathBuf> {
        let (mut gone, mut left) = (Vec::new(), Vec::new());
        for (below, entry) in self
            .entries
            .range::<Path, _>((Bound::Excluded(path), Bound::Unbounded))
            .take_while(|(below, _)| below.starts_with(path))
        {
            if hidden(entry) {
                gone.push(below.clone());
            } else {
                left.push(below.clone());
            }
        }
        for below in gone {
            self.remove(&below);
        }
        left
    }

    fn remove(&mut self, path: &Path) {
        if let Some(entry) = self.entries.remove(path) {
            self.kept = self.kept.saturating_sub(kept_size(path, &entry));
        }
    }

    /// The entry at `path`, when every parent is a directory.
    fn lookup(&self, path: &Path) -> Result<Option<&Entry>, FsError> {
        let key = image_path(path).map_err(|what| FsError::Invalid {
            path: path.to_path_buf(),
            what,
        })?;
        let parents_are_directories = key
            .ancestors()
            .skip(1)
            .all(|dir| self.entries.get(dir).is_some_and(|e| e.node.is_dir()));
        Ok(self.entries.get(&key).filter(|_| parents_are_directories))
    }
}

impl Tree for LayerTree {
    fn entry(&self, path: &Path) -> Result<Option<Node>, FsError> {
        Ok(self.lookup(path)?.map(|entry| entry.node.clone()))
    }

    fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, FsError> {
        let Some(entry) = self.lookup(path)? else {
            return Ok(None);
        };
        let what = match &entry.content {
            Content::Kept(bytes) => return Ok(Some(bytes.to_vec())),
            Content::NotKept => format!(
                "its content was not kept (only `passwd` and `group` files of up to {} MiB are)",
                MAX_TABLE_SIZE >> 20
            ),
            Content::NotAFile => "not a regular file".into(),
        };
        Err(FsError::Invalid {
            path: path.to_path_buf(),
            what,
        })
    }
}

/// A tar path as an absolute image path: `./`, `/`, `.` and trailing `/`
/// dropped; a `..` component is refused.
fn image_path(path: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => return Err("a `..` component is not allowed".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

fn is_whiteout(name: &OsStr) -> bool {
    name.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes())
}

/// Whether the recipe's evaluation may read the file at `path`.
fn is_table(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|name| name == "passwd" || name == "group")
}

/// A parent a layer implies without listing it.
fn implied_directory() -> Node {
    Node {
        kind: NodeKind::Directory,
        mode: 0o755,
        uid: 0,
        gid: 0,
    }
}

fn kept_size(path: &Path, entry: &Entry) -> usize {
    let target = match &entry.node.kind {
        NodeKind::Symlink(target) => target.as_os_str().len(),
        NodeKind::Directory | NodeKind::File => 0,
    };
    let content = match &entry.content {
        Content::Kept(bytes) => bytes.len(),
        Content::NotKept | Content::NotAFile => 0,
    };
    path.as_os_str().len() + target + content
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::rootfs::resolve::{read_table, resolve};
    use crate::rootfs::users::Users;

    /// A layer's tar stream, its entries' names written as given (`./`,
    /// `/`, `..` included).
    pub(crate) struct TarLayer(tar::Builder<Vec<u8>>);

    impl TarLayer {
        pub(crate) fn new() -> Self {
            Self(tar::Builder::new(Vec::new()))
        }

        fn entry(
            mut self,
            name: &str,
            kind: tar::EntryType,
            mode: u32,
            (uid, gid): (u32, u32),
            link: Option<&str>,
            data: &[u8],
        ) -> Self {
            let mut header = tar::Header::new_gnu();
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_uid(uid.into());
            header.set_gid(gid.into());
            header.set_size(data.len() as u64);
            header.set_mtime(0);
            if let Some(link) = link {
                header.set_link_name(link).unwrap();
            }
            header.set_cksum();
            self.0.append(&header, data).unwrap();
            self
        }

        pub(crate) fn dir(self, name: &str, mode: u32, owner: (u32, u32)) -> Self {
            self.entry(name, tar::EntryType::Directory, mode, owner, None, b"")
        }

        pub(crate) fn file(self, name: &str, owner: (u32, u32), data: &[u8]) -> Self {
            self.entry(name, tar::EntryType::Regular, 0o644, owner, None, data)
        }

        pub(crate) fn symlink(self, name: &str, target: &str, owner: (u32, u32)) -> Self {
            let kind = tar::EntryType::Symlink;
            self.entry(name, kind, 0o777, owner, Some(target), b"")
        }

        pub(crate) fn hard_link(self, name: &str, target: &str) -> Self {
            let kind = tar::EntryType::Link;
            self.entry(name, kind, 0o600, (7, 8), Some(target), b"")
        }

        pub(crate) fn finish(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    const ROOT: (u32, u32) = (0, 0);

    fn tree(layers: Vec<TarLayer>) -> LayerTree {
        let mut tree = LayerTree::default();
        for layer in layers {
            tree.apply_layer(&layer.finish()[..]).unwrap();
        }
        tree
    }

    fn paths(tree: &LayerTree) -> Vec<String> {
        tree.entries
            .keys()
            .map(|path| path.display().to_string())
            .collect()
    }

    fn node(tree: &LayerTree, path: &str) -> Option<Node> {
        tree.entry(Path::new(path)).unwrap()
    }

    fn dir(mode: u32, (uid, gid): (u32, u32)) -> Option<Node> {
        Some(Node {
            kind: NodeKind::Directory,
            mode,
            uid,
            gid,
        })
    }

    #[test]
    fn parents_a_layer_implies_are_root_directories_unless_a_lower_layer_has_them() {
        let tree = tree(vec![
            TarLayer::new()
                .dir("./", 0o700, ROOT)
                .dir("srv/", 0o1750, (5, 6)),
            TarLayer::new()
                .file("usr/bin/env", (1, 2), b"#!")
                .file("/srv/www/index.html", ROOT, b"")
                .file("./srv/app", ROOT, b""),
        ]);
        assert_eq!(node(&tree, "/"), dir(0o700, ROOT));
        assert_eq!(node(&tree, "/usr"), dir(0o755, ROOT));
        assert_eq!(node(&tree, "/usr/bin"), dir(0o755, ROOT));
        assert_eq!(node(&tree, "/srv"), dir(0o1750, (5, 6)));
        assert_eq!(node(&tree, "/srv/www"), dir(0o755, ROOT));
        assert_eq!(
            node(&tree, "/usr/bin/env"),
            Some(Node {
                kind: NodeKind::File,
                mode: 0o644,
                uid: 1,
                gid: 2
            })
        );
        assert_eq!(
            paths(&tree),
            [
                "/",
                "/srv",
                "/srv/app",
                "/srv/www",
                "/srv/www/index.html",
                "/usr",
                "/usr/bin",
                "/usr/bin/env"
            ]
        );
        assert_eq!(node(&tree, "/usr/bin/env/x"), None);
        assert_eq!(node(&tree, "/missing"), None);
    }

    #[test]
    fn an_upper_layer_replaces_what_is_below() {
        let tree = tree(vec![
            TarLayer::new()
                .file("opt", ROOT, b"")
                .dir("data/", 0o755, ROOT)
                .file("data/a", ROOT, b"")
                .dir("keep/", 0o755, ROOT)
                .file("keep/old", ROOT, b""),
            TarLayer::new()
                // A file becomes a directory, a directory a symlink.
                .dir("opt/", 0o750, (3, 3))
                .file("opt/x", ROOT, b"")
                .symlink("data", "/keep", ROOT)
                // A directory over a directory keeps what is in it.
                .dir("keep", 0o700, (4, 4))
                .file("keep/new", ROOT, b""),
        ]);
        assert_eq!(node(&tree, "/opt"), dir(0o750, (3, 3)));
        assert!(node(&tree, "/opt/x").is_some());
        assert_eq!(
            node(&tree, "/data").map(|n| n.kind),
            Some(NodeKind::Symlink("/keep".into()))
        );
        assert_eq!(node(&tree, "/data/a"), None);
        assert_eq!(node(&tree, "/keep"), dir(0o700, (4, 4)));
        assert_eq!(
            paths(&tree),
            [
                "/",
                "/data",
                "/keep",
                "/keep/new",
                "/keep/old",
                "/opt",
                "/opt/x"
            ]
        );
        // resolve follows the absolute target inside the tree.
        let resolved = resolve(&tree, Path::new("/data/new"), true).unwrap();
        assert_eq!(resolved, Path::new("/keep/new"));
    }

    #[test]
    fn a_whiteout_deletes_a_lower_subtree_and_never_appears() {
        let lower = || {
            TarLayer::new()
                .file("a/b/c", ROOT, b"")
                .file("a/b/d/e", ROOT, b"")
                .file("a/bb", ROOT, b"")
                .file("a/e", ROOT, b"")
        };
        let whiteout = |layer: TarLayer| layer.file("a/.wh.b", ROOT, b"");
        let added = |layer: TarLayer| layer.file("a/b/new", ROOT, b"");
        let gone = ["/", "/a", "/a/bb", "/a/e"];
        // What the whiteout's own layer adds stays, its parent a new directory.
        let new = ["/", "/a", "/a/b", "/a/b/new", "/a/bb", "/a/e"];
        for (upper, expected) in [
            (whiteout(TarLayer::new()), &gone[..]),
            (added(whiteout(TarLayer::new())), &new[..]),
            (whiteout(added(TarLayer::new())), &new[..]),
        ] {
            let tree = tree(vec![lower(), upper]);
            assert_eq!(paths(&tree), expected);
            assert_eq!(node(&tree, "/a/.wh.b"), None);
            if expected == new {
                assert_eq!(node(&tree, "/a/b"), dir(0o755, ROOT));
            }
        }
        // AUFS's metadata is no part of the image.
        let tree = tree(vec![
            TarLayer::new()
                .file(".wh..wh.plnk/12.34", ROOT, b"")
                .file("x/.wh..wh.aufs", ROOT, b""),
        ]);
        assert_eq!(paths(&tree), ["/", "/x"]);
    }

    #[test]
    fn an_opaque_directory_hides_the_lower_layers_children_only() {
        let lower = || {
            TarLayer::new()
                .dir("d/", 0o700, (9, 9))
                .file("d/old", ROOT, b"")
                .file("d/sub/x", ROOT, b"")
                .file("keep/y", ROOT, b"")
        };
        let opaque = |layer: TarLayer| layer.file("d/.wh..wh..opq", ROOT, b"");
        let first = |layer: TarLayer| layer.file("d/new1", ROOT, b"");
        let second = |layer: TarLayer| layer.file("d/new2", ROOT, b"").file("d/sub/z", ROOT, b"");
        for upper in [
            opaque(first(second(TarLayer::new()))),
            first(opaque(second(TarLayer::new()))),
            second(first(opaque(TarLayer::new()))),
        ] {
            let tree = tree(vec![lower(), upper]);
            assert_eq!(
                paths(&tree),
                [
                    "/", "/d", "/d/new1", "/d/new2", "/d/sub", "/d/sub/z", "/keep", "/keep/y"
                ]
            );
            // The directory itself stays as it was.
            assert_eq!(node(&tree, "/d"), dir(0o700, (9, 9)));
            assert_eq!(node(&tree, "/d/sub"), dir(0o755, ROOT));
        }
    }

    #[test]
    fn symlinks_keep_their_targets_as_written() {
        let tree = tree(vec![
            TarLayer::new()
                .dir("usr/bin/", 0o755, ROOT)
                .dir("usr/sbin/", 0o755, ROOT)
                .symlink("bin", "usr/bin", ROOT)
                .symlink("sbin", "/usr/sbin", ROOT)
                .symlink("up", "../../usr", ROOT),
        ]);
        let target = |path: &str| match node(&tree, path).map(|n| n.kind) {
            Some(NodeKind::Symlink(target)) => target.display().to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(target("/bin"), "usr/bin");
        assert_eq!(target("/sbin"), "/usr/sbin");
        assert_eq!(target("/up"), "../../usr");
        let resolved = |path: &str| resolve(&tree, Path::new(path), true).unwrap();
        assert_eq!(resolved("/sbin/init"), Path::new("/usr/sbin/init"));
        assert_eq!(resolved("/up/bin/env"), Path::new("/usr/bin/env"));
        assert_eq!(resolved("/bin/env"), Path::new("/usr/bin/env"));
        let err = tree.read(Path::new("/bin")).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_dot_dot_component_rejects_the_layer() {
        for layer in [
            TarLayer::new().file("a/../etc/passwd", ROOT, b"x"),
            TarLayer::new().file("../x", ROOT, b""),
            TarLayer::new().hard_link("etc/passwd", "../../etc/shadow"),
        ] {
            let err = LayerTree::default()
                .apply_layer(&layer.finish()[..])
                .unwrap_err();
            let message = err.to_string();
            assert!(
                message.contains("layer 1") && message.contains("`..`"),
                "{message}"
            );
        }
        let err = LayerTree::default()
            .apply_layer(&TarLayer::new().file("a/../b", ROOT, b"").finish()[..])
            .unwrap_err();
        assert!(err.to_string().starts_with("a/../b: "), "{err}");
        // A path asked of the tree is refused the same way.
        assert!(LayerTree::default().entry(Path::new("/a/../b")).is_err());
    }

    #[test]
    fn passwd_and_group_are_kept_and_nothing_else() {
        let passwd = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
        let tree = tree(vec![
            TarLayer::new()
                .file("./etc/passwd", ROOT, b"old:x:1:1::/:/bin/sh\n")
                .file("usr/lib/group", ROOT, b"root:x:0:\nstaff:x:50:app\n")
                .file("etc/hostname", ROOT, b"box\n")
                .file("big/passwd", ROOT, &vec![b'x'; MAX_TABLE_SIZE as usize + 1]),
            TarLayer::new()
                .file("etc/passwd", ROOT, passwd)
                .symlink("etc/group", "../usr/lib/group", ROOT)
                .hard_link("etc/passwd.link", "etc/passwd")
                .hard_link("etc/hostname.link", "etc/hostname"),
        ]);
        assert_eq!(
            tree.read(Path::new("/etc/passwd")).unwrap(),
            Some(passwd.to_vec())
        );
        // A hard link shares what its target has.
        assert_eq!(
            tree.read(Path::new("/etc/passwd.link")).unwrap(),
            Some(passwd.to_vec())
        );
        assert_eq!(
            node(&tree, "/etc/passwd.link"),
            Some(Node {
                kind: NodeKind::File,
                mode: 0o600,
                uid: 7,
                gid: 8
            })
        );
        assert_eq!(
            read_table(&tree, "etc/group").unwrap(),
            "root:x:0:\nstaff:x:50:app\n"
        );
        let users = Users::read(&tree).unwrap();
        assert_eq!(users.resolve_chown("app:staff"), Ok((1000, 50)));
        for path in ["/etc/hostname", "/etc/hostname.link", "/big/passwd"] {
            let err = tree.read(Path::new(path)).unwrap_err();
            assert!(err.to_string().contains("not kept"), "{err}");
        }
        assert_eq!(tree.read(Path::new("/etc/missing")).unwrap(), None);
        assert_eq!(tree.read(Path::new("/etc/passwd/x")).unwrap(), None);
        let err = tree.read(Path::new("/etc")).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn the_stream_is_read_to_its_end() {
        let mut bytes = TarLayer::new().file("a", ROOT, b"x").finish();
        // Archives are padded to whole records.
        bytes.resize(10240, 0);
        let mut stream = io::Cursor::new(&bytes);
        LayerTree::default().apply_layer(&mut stream).unwrap();
        assert_eq!(stream.position(), 10240);
        // A truncated stream is an error.
        let err = LayerTree::default().apply_layer(&bytes[..700]).unwrap_err();
        assert!(matches!(err, FsError::Archive { layer: 1, .. }), "{err}");
    }

    #[test]
    fn hostile_layers_are_bounded() {
        let mut tree = LayerTree {
            max_entries: 4,
            ..LayerTree::default()
        };
        let layer = TarLayer::new()
            .file("a/b/c", ROOT, b"")
            .file("a/d", ROOT, b"");
        let err = tree.apply_layer(&layer.finish()[..]).unwrap_err();
        assert!(err.to_string().contains("more than 4 entries"), "{err}");
        // Replacing an entry is no new one.
        let mut tree = LayerTree {
            max_entries: 3,
            ..LayerTree::default()
        };
        let layer = TarLayer::new()
            .file("a/b", ROOT, b"")
            .file("a/b", ROOT, b"");
        tree.apply_layer(&layer.finish()[..]).unwrap();

        let mut long = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(0);
        let name = "d/".repeat(MAX_NAME / 2 + 1);
        long.append_data(&mut header, &name, &b""[..]).unwrap();
        let err = LayerTree::default()
            .apply_layer(&long.into_inner().unwrap()[..])
            .unwrap_err();
        assert!(err.to_string().contains("longer than 4096"), "{err}");
    }
}
