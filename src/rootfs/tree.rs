//! An image's filesystem as the recipe's evaluation reads it: what is at an
//! absolute image path, and a regular file's bytes. A directory on disk
//! standing for `/` is one ([`Path`]); an image's layers read from their
//! tarballs are another ([`super::LayerTree`]).

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{FsError, io_err};

/// What an image's filesystem answers, by absolute image path (`/etc/passwd`).
pub trait Tree {
    /// What is at `path`, a last symlink not followed; `None` when nothing
    /// is there, a parent not being a directory included.
    fn entry(&self, path: &Path) -> Result<Option<Node>, FsError>;

    /// The bytes of the regular file at `path`, a symlink not followed;
    /// `None` when nothing is there. Anything else there is an error.
    fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, FsError>;
}

/// One entry of a [`Tree`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: NodeKind,
    /// The permission bits with setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// What kind of entry a [`Node`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    Directory,
    /// A symbolic link, with its target as written.
    Symlink(PathBuf),
    /// Anything else: a regular file, a device, a FIFO, a socket.
    File,
}

impl Node {
    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == NodeKind::Directory
    }
}

/// A directory on disk standing for the image's `/`.
impl Tree for Path {
    fn entry(&self, path: &Path) -> Result<Option<Node>, FsError> {
        let on_disk = on_disk(self, path);
        let Some(meta) = symlink_metadata(&on_disk)? else {
            return Ok(None);
        };
        let kind = if meta.is_dir() {
            NodeKind::Directory
        } else if meta.file_type().is_symlink() {
            NodeKind::Symlink(fs::read_link(&on_disk).map_err(io_err(&on_disk))?)
        } else {
            NodeKind::File
        };
        Ok(Some(Node {
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        }))
    }

    fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, FsError> {
        let on_disk = on_disk(self, path);
        let Some(meta) = symlink_metadata(&on_disk)? else {
            return Ok(None);
        };
        if !meta.is_file() {
            return Err(FsError::Invalid {
                path: on_disk,
                what: "not a regular file".into(),
            });
        }
        match fs::read(&on_disk) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(io_err(&on_disk)(e)),
        }
    }
}

/// A tree borrowed is the tree (so `&&Path` is a `&dyn Tree`).
impl<T: Tree + ?Sized> Tree for &T {
    fn entry(&self, path: &Path) -> Result<Option<Node>, FsError> {
        (**self).entry(path)
    }

    fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, FsError> {
        (**self).read(path)
    }
}

/// Where the image path `path` is under the directory `root`.
fn on_disk(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// `path`'s own metadata; `None` when it or a parent is missing, or a
/// parent is not a directory.
fn symlink_metadata(path: &Path) -> Result<Option<fs::Metadata>, FsError> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    #[test]
    fn a_directory_on_disk_answers_for_its_entries() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::set_permissions(root.join("usr/bin"), fs::Permissions::from_mode(0o1750)).unwrap();
        symlink("usr/bin", root.join("bin")).unwrap();
        symlink("/nowhere", root.join("dangling")).unwrap();
        fs::write(root.join("file"), "text").unwrap();
        let meta = fs::metadata(root).unwrap();
        let node = |kind, mode| Node {
            kind,
            mode,
            uid: meta.uid(),
            gid: meta.gid(),
        };

        let entry = |path: &str| root.entry(Path::new(path)).unwrap();
        assert_eq!(entry("/usr/bin"), Some(node(NodeKind::Directory, 0o1750)));
        let Some(Node {
            kind: NodeKind::Symlink(target),
            ..
        }) = entry("/bin")
        else {
            panic!("{:?}", entry("/bin"))
        };
        assert_eq!(target, Path::new("usr/bin"));
        assert_eq!(
            entry("/dangling").map(|n| n.kind),
            Some(NodeKind::Symlink("/nowhere".into()))
        );
        assert_eq!(entry("/file").map(|n| n.kind), Some(NodeKind::File));
        assert_eq!(entry("/missing"), None);
        assert_eq!(entry("/missing/below"), None);
        // A parent that is a file.
        assert_eq!(entry("/file/below"), None);
        // Relative paths are image paths too.
        assert_eq!(entry("file").map(|n| n.kind), Some(NodeKind::File));

        assert_eq!(
            root.read(Path::new("/file")).unwrap(),
            Some(b"text".to_vec())
        );
        assert_eq!(root.read(Path::new("/missing")).unwrap(), None);
        assert_eq!(root.read(Path::new("/file/below")).unwrap(), None);
        let err = root.read(Path::new("/usr")).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        // A link is not followed.
        symlink("file", root.join("link")).unwrap();
        assert!(root.read(Path::new("/link")).is_err());

        // Through a `&dyn Tree`.
        let tree: &dyn Tree = &root;
        assert_eq!(
            tree.entry(Path::new("/file")).unwrap().map(|n| n.kind),
            Some(NodeKind::File)
        );
    }
}
