//! Reproducible layer tarballs: files on disk → a gzip-compressed tar whose
//! compressed digest, size and uncompressed diffID come out of one pass.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use super::gzip::ParallelGzip;

/// Whiteout prefix of the OCI layer format: `.wh.name` deletes `name`.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Marks a directory whose lower-layer contents are hidden.
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: file names starting with `.wh.` are reserved for whiteouts in image layers")]
    ReservedName { path: PathBuf },
    #[error("destination `{0}` must be an absolute path inside the image without `..`")]
    InvalidDestination(String),
    #[error("{path}: {what}")]
    Unsupported { path: PathBuf, what: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LayerError + '_ {
    move |source| LayerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Digests of a finished layer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerDigests {
    /// sha256 of the compressed blob, `sha256:<hex>`.
    pub digest: String,
    /// Size of the compressed blob in bytes.
    pub size: u64,
    /// sha256 of the uncompressed tar, `sha256:<hex>`.
    #[serde(rename = "diffID")]
    pub diff_id: String,
}

/// What goes into a layer from the local disk.
#[derive(Debug, Clone, Default)]
pub struct LayerSource {
    /// A file, directory or symlink on disk; a symlink given here is followed.
    pub source: PathBuf,
    /// Absolute path in the image. A trailing `/` puts a file source inside it.
    pub destination: String,
    /// Numeric owner of every entry; default 0:0.
    pub owner: Option<(u64, u64)>,
    /// Mode bits (including setuid/setgid/sticky) for every entry; default: kept.
    pub chmod: Option<u32>,
}

/// A directory as it is in the base image (reported by the probe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct BaseDirectory {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
}

/// Fixed knobs that make a layer reproducible.
#[derive(Debug, Clone, Copy)]
pub struct LayerOptions {
    /// mtime of every entry (SOURCE_DATE_EPOCH).
    pub mtime: u64,
}

impl Default for LayerOptions {
    fn default() -> Self {
        Self {
            mtime: source_date_epoch(),
        }
    }
}

/// `SOURCE_DATE_EPOCH` from the environment, 0 when unset or unparsable.
pub fn source_date_epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Counts and hashes bytes on their way to `inner`.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    pub(crate) fn finish(self) -> (W, String, u64) {
        (
            self.inner,
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.count,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

type Sink = HashingWriter<ParallelGzip<HashingWriter<BufWriter<File>>>>;

/// Writes one layer to a file. Entries are added in the order of the calls;
/// within a directory they are sorted by name.
pub struct LayerWriter {
    path: PathBuf,
    tar: tar::Builder<Sink>,
    options: LayerOptions,
    /// First layer path of each (dev, inode) with more than one link.
    hard_links: HashMap<(u64, u64), PathBuf>,
    /// The base's directories, by image path without the leading `/`.
    base_directories: BTreeMap<PathBuf, BaseDirectory>,
    /// Base directories already written as parents.
    parents_written: HashSet<PathBuf>,
}

impl LayerWriter {
    pub fn create(path: &Path, options: LayerOptions) -> Result<Self, LayerError> {
        let file = File::create(path).map_err(io_err(path))?;
        let compressed = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
        let tar = tar::Builder::new(HashingWriter::new(ParallelGzip::new(compressed)));
        Ok(Self {
            path: path.to_path_buf(),
            tar,
            options,
            hard_links: HashMap::new(),
            base_directories: BTreeMap::new(),
            parents_written: HashSet::new(),
        })
    }

    /// Directories of the base (absolute paths, as the probe reports them).
    /// A destination's parents found here are written with the base's mode
    /// and owner: runtimes that unpack a layer into an empty directory
    /// (containers/storage, Docker's overlay2) create missing parents as 0755
    /// root and that upper directory then hides the base's (/tmp's 1777).
    /// Parents not found here get no entry at all.
    pub fn with_base_directories(mut self, dirs: &BTreeMap<String, BaseDirectory>) -> Self {
        self.base_directories = dirs
            .iter()
            .filter_map(|(path, meta)| Some((image_path(path).ok()?, *meta)))
            .filter(|(path, _)| !path.as_os_str().is_empty())
            .collect();
        self
    }

    /// Writes the base's own entries for `dest`'s ancestors (and `dest`
    /// itself when `including_self`), outermost first.
    fn write_parents(&mut self, dest: &Path, including_self: bool) -> Result<(), LayerError> {
        let mut chain: Vec<PathBuf> = dest.ancestors().skip(1).map(Path::to_path_buf).collect();
        chain.reverse();
        if including_self {
            chain.push(dest.to_path_buf());
        }
        for dir in chain {
            let Some(meta) = self.base_directories.get(&dir).copied() else {
                continue;
            };
            if !self.parents_written.insert(dir.clone()) {
                continue;
            }
            let mut header = Header::new_gnu();
            header.set_entry_type(EntryType::Directory);
            header.set_mode(meta.mode & 0o7777);
            header.set_uid(meta.uid);
            header.set_gid(meta.gid);
            header.set_mtime(self.options.mtime);
            header.set_size(0);
            self.tar
                .append_data(&mut header, &dir, io::empty())
                .map_err(io_err(&dir))?;
        }
        Ok(())
    }

    /// Adds a file or a directory tree at its destination. Only the entries the
    /// source itself holds are written: the destination's parents are left to
    /// the base (a `bin/` entry would hide a base whose `/bin` is a symlink).
    pub fn add(&mut self, src: &LayerSource) -> Result<(), LayerError> {
        let meta = fs::metadata(&src.source).map_err(io_err(&src.source))?;
        let mut dest = image_path(&src.destination)?;
        if meta.is_dir() {
            self.write_parents(&dest, true)?;
            let mut entries: Vec<_> = walkdir::WalkDir::new(&src.source)
                .min_depth(1)
                .follow_links(false)
                .sort_by_file_name()
                .into_iter()
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    let path = e.path().unwrap_or(&src.source).to_path_buf();
                    LayerError::Io {
                        path,
                        source: e.into(),
                    }
                })?;
            // walkdir sorts siblings; keep that depth-first order.
            for entry in entries.drain(..) {
                let rel = entry
                    .path()
                    .strip_prefix(&src.source)
                    .expect("walkdir yields paths under its root");
                let meta = entry.metadata().map_err(|e| LayerError::Io {
                    path: entry.path().to_path_buf(),
                    source: e.into(),
                })?;
                self.append(entry.path(), &meta, &dest.join(rel), src)?;
            }
            Ok(())
        } else {
            if src.destination.ends_with('/') || dest.as_os_str().is_empty() {
                let name = src
                    .source
                    .file_name()
                    .ok_or_else(|| LayerError::InvalidDestination(src.destination.clone()))?;
                dest.push(name);
            }
            self.write_parents(&dest, false)?;
            self.append(&src.source, &meta, &dest, src)
        }
    }

    fn append(
        &mut self,
        disk: &Path,
        meta: &fs::Metadata,
        dest: &Path,
        src: &LayerSource,
    ) -> Result<(), LayerError> {
        if let Some(name) = dest.file_name().and_then(|n| n.to_str())
            && name.starts_with(WHITEOUT_PREFIX)
        {
            return Err(LayerError::ReservedName {
                path: disk.to_path_buf(),
            });
        }
        let ft = meta.file_type();
        let mut header = Header::new_gnu();
        let (uid, gid) = src.owner.unwrap_or((0, 0));
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(self.options.mtime);
        header.set_mode(src.chmod.unwrap_or(meta.mode() & 0o7777));
        header.set_size(0);
        self.append_xattrs(disk)?;
        let err = io_err(disk);
        if ft.is_symlink() {
            let target = fs::read_link(disk).map_err(io_err(disk))?;
            header.set_entry_type(EntryType::Symlink);
            header.set_mode(0o777);
            self.tar.append_link(&mut header, dest, target).map_err(err)
        } else if ft.is_dir() {
            header.set_entry_type(EntryType::Directory);
            self.tar
                .append_data(&mut header, dest, io::empty())
                .map_err(err)
        } else if ft.is_file() {
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1 {
                if let Some(first) = self.hard_links.get(&key) {
                    header.set_entry_type(EntryType::Link);
                    let first = first.clone();
                    return self.tar.append_link(&mut header, dest, first).map_err(err);
                }
                self.hard_links.insert(key, dest.to_path_buf());
            }
            header.set_entry_type(EntryType::Regular);
            header.set_size(meta.len());
            let file = File::open(disk).map_err(io_err(disk))?;
            // A file that changes size mid-read would corrupt the archive.
            let mut reader = file.take(meta.len());
            self.tar
                .append_data(&mut header, dest, &mut reader)
                .map_err(err)?;
            if reader.limit() != 0 {
                return Err(LayerError::Unsupported {
                    path: disk.to_path_buf(),
                    what: "file shrank while it was being read".into(),
                });
            }
            Ok(())
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            header.set_entry_type(if ft.is_char_device() {
                EntryType::Char
            } else if ft.is_block_device() {
                EntryType::Block
            } else {
                EntryType::Fifo
            });
            let rdev = meta.rdev();
            let (major, minor) = (libc_major(rdev), libc_minor(rdev));
            header.set_device_major(major).map_err(io_err(disk))?;
            header.set_device_minor(minor).map_err(io_err(disk))?;
            self.tar
                .append_data(&mut header, dest, io::empty())
                .map_err(err)
        } else {
            tracing::debug!(path = %disk.display(), "skipping socket");
            Ok(())
        }
    }

    /// Extended attributes (e.g. `security.capability`) as PAX records ahead
    /// of the entry. SELinux labels belong to the host, not the image.
    fn append_xattrs(&mut self, disk: &Path) -> Result<(), LayerError> {
        let names = match xattr::list(disk) {
            Ok(names) => names,
            Err(e) if e.kind() == io::ErrorKind::Unsupported => return Ok(()),
            Err(e) => return Err(io_err(disk)(e)),
        };
        let mut records = Vec::new();
        for name in names {
            let Some(name) = name.to_str() else { continue };
            if name == "security.selinux" {
                continue;
            }
            if let Some(value) = xattr::get(disk, name).map_err(io_err(disk))? {
                records.push((format!("SCHILY.xattr.{name}"), value));
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        records.sort();
        self.tar
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .map_err(io_err(disk))
    }

    /// Adds one entry exactly as it is on disk (not followed if a symlink, a
    /// directory without its contents): type, mode with setuid/setgid/sticky,
    /// numeric owner, xattrs, symlink target, hard links to entries already
    /// in this layer. `destination` is absolute in the image. For snapshots,
    /// where the caller chooses (and orders) every entry, parents included.
    pub fn add_as_is(&mut self, disk: &Path, destination: &Path) -> Result<(), LayerError> {
        let meta = fs::symlink_metadata(disk).map_err(io_err(disk))?;
        let dest = image_path_of(destination)?;
        let src = LayerSource {
            source: disk.to_path_buf(),
            destination: destination.display().to_string(),
            owner: Some((u64::from(meta.uid()), u64::from(meta.gid()))),
            chmod: None,
        };
        self.append(disk, &meta, &dest, &src)
    }

    /// Deletes `path` (absolute, in the image) from the layers below.
    pub fn whiteout(&mut self, path: &str) -> Result<(), LayerError> {
        self.whiteout_at(Path::new(path))
    }

    /// [`LayerWriter::whiteout`] for a path that need not be UTF-8.
    pub fn whiteout_at(&mut self, path: &Path) -> Result<(), LayerError> {
        let path = image_path_of(path)?;
        let name = path
            .file_name()
            .ok_or_else(|| LayerError::InvalidDestination(path.display().to_string()))?;
        let mut marker = std::ffi::OsString::from(WHITEOUT_PREFIX);
        marker.push(name);
        self.marker(&path.with_file_name(marker))
    }

    /// Hides everything the layers below hold in directory `dir`.
    pub fn opaque_whiteout(&mut self, dir: &str) -> Result<(), LayerError> {
        self.opaque_whiteout_at(Path::new(dir))
    }

    /// [`LayerWriter::opaque_whiteout`] for a path that need not be UTF-8.
    pub fn opaque_whiteout_at(&mut self, dir: &Path) -> Result<(), LayerError> {
        let dir = image_path_of(dir)?;
        self.marker(&dir.join(OPAQUE_WHITEOUT))
    }

    fn marker(&mut self, path: &Path) -> Result<(), LayerError> {
        self.write_parents(path, false)?;
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(self.options.mtime);
        header.set_size(0);
        self.tar
            .append_data(&mut header, path, io::empty())
            .map_err(io_err(path))
    }

    /// Ends the archive, flushes the file and returns the layer's digests.
    pub fn finish(self) -> Result<LayerDigests, LayerError> {
        let path = self.path;
        let uncompressed = self.tar.into_inner().map_err(io_err(&path))?;
        let (gzip, diff_id, _) = uncompressed.finish();
        let compressed = gzip.finish().map_err(io_err(&path))?;
        let (mut file, digest, size) = compressed.finish();
        file.flush().map_err(io_err(&path))?;
        Ok(LayerDigests {
            digest,
            size,
            diff_id,
        })
    }
}

/// A ready tar taken as is: compressed unless it already is gzip, with the
/// same digests as a written layer.
pub fn layer_from_tar(tar_path: &Path, out: &Path) -> Result<LayerDigests, LayerError> {
    let mut input = File::open(tar_path).map_err(io_err(tar_path))?;
    let mut magic = [0u8; 2];
    let n = input.read(&mut magic).map_err(io_err(tar_path))?;
    let mut input = File::open(tar_path).map_err(io_err(tar_path))?;
    if n == 2 && magic == [0x1f, 0x8b] {
        // Already compressed: hash the blob as it is, and its content for the diffID.
        let mut diff = HashingWriter::new(io::sink());
        io::copy(
            &mut flate2::read::MultiGzDecoder::new(File::open(tar_path).map_err(io_err(tar_path))?),
            &mut diff,
        )
        .map_err(io_err(tar_path))?;
        let file = File::create(out).map_err(io_err(out))?;
        let mut blob = HashingWriter::new(BufWriter::new(file));
        io::copy(&mut input, &mut blob).map_err(io_err(tar_path))?;
        let (mut file, digest, size) = blob.finish();
        file.flush().map_err(io_err(out))?;
        let (_, diff_id, _) = diff.finish();
        return Ok(LayerDigests {
            digest,
            size,
            diff_id,
        });
    }
    let file = File::create(out).map_err(io_err(out))?;
    let compressed = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    let mut uncompressed = HashingWriter::new(ParallelGzip::new(compressed));
    io::copy(&mut input, &mut uncompressed).map_err(io_err(tar_path))?;
    let (gzip, diff_id, _) = uncompressed.finish();
    let (mut file, digest, size) = gzip.finish().map_err(io_err(out))?.finish();
    file.flush().map_err(io_err(out))?;
    Ok(LayerDigests {
        digest,
        size,
        diff_id,
    })
}

/// `/usr/local/bin/app` → `usr/local/bin/app`; refuses relative paths and `..`.
fn image_path(destination: &str) -> Result<PathBuf, LayerError> {
    image_path_of(Path::new(destination))
}

/// [`image_path`] for a path that need not be UTF-8.
fn image_path_of(destination: &Path) -> Result<PathBuf, LayerError> {
    let invalid = || LayerError::InvalidDestination(destination.display().to_string());
    if !destination.has_root() {
        return Err(invalid());
    }
    let mut out = PathBuf::new();
    for component in destination.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            Component::ParentDir | Component::Prefix(_) => return Err(invalid()),
        }
    }
    Ok(out)
}

// glibc's and musl's encoding of dev_t.
fn libc_major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)) as u32
}

fn libc_minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)) as u32
}
