//! What a chain reads from the build context: the context as an index of
//! its entries (after its `.dockerignore`), and a digest of the entries a
//! COPY/ADD's sources may read, matched as [`crate::rootfs::copy`] matches
//! them in the pod.
//!
//! An entry is what a copy of it keeps: a file's mode bits and content, a
//! symlink's target, a directory's mode. Owners and mtimes are not kept by
//! COPY (files are root-owned unless `--chown`, mtimes are not copied), so
//! they are not in the index.
//!
//! When in doubt an entry is included: too much costs a cache miss, too
//! little would reuse a chain built from other files.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::dockerfile::DockerIgnore;
use crate::rootfs::copy::{part_matches, source_parts};

/// The context's own ignore file, at its root.
const IGNORE_FILE: &str = ".dockerignore";
/// Mode of a file of an inline context.
pub const INLINE_FILE_MODE: u32 = 0o644;
/// Mode of the directories a materialised context creates for its files
/// (as `stage::context` does).
const IMPLIED_DIR_MODE: u32 = 0o755;

/// One context entry, as a copy of it would keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Permission bits (`0o7777` at most) and the SHA-256 of the content, hex.
    File { mode: u32, sha256: String },
    /// The link's target as written: COPY keeps links as links.
    Symlink { target: String },
    /// Permission bits: a copied directory gets them.
    Dir { mode: u32 },
    /// A socket, fifo or device: nothing COPY can take, but it is there.
    Other { mode: u32 },
}

/// The build context after its `.dockerignore`: relative `/`-separated
/// paths (no leading `./` or `/`) → entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContextIndex {
    entries: BTreeMap<String, Entry>,
}

impl ContextIndex {
    /// An inline (mode [`INLINE_FILE_MODE`]) or ConfigMap context from its
    /// files: `(path, mode, content)`. The directories the paths imply are
    /// added with the mode a materialised context gives them. Fails when
    /// the context's `.dockerignore` does not parse (the chain would fail).
    pub fn from_entries<'a>(
        files: impl IntoIterator<Item = (String, u32, &'a [u8])>,
    ) -> io::Result<Self> {
        let mut entries = BTreeMap::new();
        let mut ignore_text = None;
        for (path, mode, bytes) in files {
            let path = clean(&path);
            if path.is_empty() {
                continue;
            }
            if path == IGNORE_FILE {
                // As the helper reads it: text that is not UTF-8 is no ignore file.
                ignore_text = std::str::from_utf8(bytes).ok().map(str::to_string);
            }
            let mut parent = path.as_str();
            while let Some((dir, _)) = parent.rsplit_once('/') {
                entries.entry(dir.to_string()).or_insert(Entry::Dir {
                    mode: IMPLIED_DIR_MODE,
                });
                parent = dir;
            }
            entries.insert(
                path,
                Entry::File {
                    mode: mode & 0o7777,
                    sha256: hex::encode(Sha256::digest(bytes)),
                },
            );
        }
        let ignore = parse_ignore(ignore_text.as_deref())?;
        Ok(Self::filtered(entries, ignore.as_ref()))
    }

    /// A context directory (a git checkout), walked without following
    /// symlinks. Fails when it cannot be read or its `.dockerignore` does
    /// not parse.
    pub fn from_dir(dir: &Path) -> io::Result<Self> {
        // The helper reads the ignore file as text, links followed; one it
        // cannot read as text is none.
        let ignore_text = fs::read_to_string(dir.join(IGNORE_FILE)).ok();
        let ignore = parse_ignore(ignore_text.as_deref())?;
        let mut entries = BTreeMap::new();
        let walk = walkdir::WalkDir::new(dir)
            .min_depth(1)
            .follow_links(false)
            .sort_by_file_name();
        let skip_excluded_dirs = ignore.as_ref().is_some_and(|i| !i.has_exceptions());
        let mut walk = walk.into_iter();
        while let Some(entry) = walk.next() {
            let entry = entry.map_err(io::Error::from)?;
            let rel = entry
                .path()
                .strip_prefix(dir)
                .map_err(|e| io::Error::other(e.to_string()))?;
            let Some(rel) = rel.to_str() else {
                // COPY does not take non-UTF-8 names; still, such a file
                // is context content: refuse rather than leave it out.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("context path {}: not UTF-8", rel.display()),
                ));
            };
            let meta = entry.path().symlink_metadata()?;
            let file_type = meta.file_type();
            if file_type.is_dir()
                && skip_excluded_dirs
                && ignore.as_ref().is_some_and(|i| i.is_excluded(rel))
            {
                walk.skip_current_dir();
                continue;
            }
            let mode = meta.permissions().mode() & 0o7777;
            let value = if file_type.is_symlink() {
                let target = fs::read_link(entry.path())?;
                Entry::Symlink {
                    target: target.to_string_lossy().into_owned(),
                }
            } else if file_type.is_dir() {
                Entry::Dir { mode }
            } else if file_type.is_file() {
                Entry::File {
                    mode,
                    sha256: hex::encode(Sha256::digest(fs::read(entry.path())?)),
                }
            } else {
                Entry::Other { mode }
            };
            entries.insert(rel.to_string(), value);
        }
        Ok(Self::filtered(entries, ignore.as_ref()))
    }

    /// `entries` less what `ignore` excludes; an excluded directory stays
    /// when exceptions may let something below it back in (COPY walks it
    /// and creates it then).
    fn filtered(entries: BTreeMap<String, Entry>, ignore: Option<&DockerIgnore>) -> Self {
        let Some(ignore) = ignore else {
            return Self { entries };
        };
        let entries = entries
            .into_iter()
            .filter(|(path, entry)| {
                !ignore.is_excluded(path)
                    || (ignore.has_exceptions() && matches!(entry, Entry::Dir { .. }))
            })
            .collect();
        Self { entries }
    }

    /// The entries, by path.
    pub fn entries(&self) -> &BTreeMap<String, Entry> {
        &self.entries
    }

    /// `sha256:<hex>` over every entry a COPY/ADD with these sources may
    /// read: an entry whose path, or one of whose ancestor directories, a
    /// source matches. `sources` are the words as the helper matches them
    /// (expanded); one that still holds `$`, or names the whole context
    /// (`.`, `/`), takes every entry, as does a source whose walk passes
    /// through or ends at a symlink (the pod follows links inside the
    /// context, to entries the pattern does not name).
    pub fn digest_for(&self, sources: &[String]) -> String {
        let mut whole = false;
        let mut patterns: Vec<Vec<String>> = Vec::new();
        for source in sources {
            let parts = source_parts(source);
            if source.contains('$') || parts.is_empty() || self.through_symlink(&parts) {
                whole = true;
                break;
            }
            patterns.push(parts);
        }
        let mut hasher = Sha256::new();
        let mut count: u64 = 0;
        let mut body = Vec::new();
        for (path, entry) in &self.entries {
            let components: Vec<&str> = path.split('/').collect();
            if whole || patterns.iter().any(|p| prefix_matches(p, &components)) {
                count += 1;
                encode_entry(&mut body, path, entry);
            }
        }
        hasher.update(count.to_le_bytes());
        hasher.update(&body);
        format!("sha256:{}", hex::encode(hasher.finalize()))
    }

    /// Whether matching `parts` meets a symlink on the way (or at the end).
    fn through_symlink(&self, parts: &[String]) -> bool {
        self.entries.iter().any(|(path, entry)| {
            if !matches!(entry, Entry::Symlink { .. }) {
                return false;
            }
            let components: Vec<&str> = path.split('/').collect();
            components.len() <= parts.len()
                && components
                    .iter()
                    .zip(parts)
                    .all(|(name, part)| part_matches(part, name))
        })
    }
}

/// The pattern's components match the path's first components: the path
/// is a match or below one.
fn prefix_matches(pattern: &[String], components: &[&str]) -> bool {
    pattern.len() <= components.len()
        && pattern
            .iter()
            .zip(components)
            .all(|(part, name)| part_matches(part, name))
}

/// Fields length-prefixed, so that no two different lists of entries feed
/// the hash the same bytes.
fn encode_entry(out: &mut Vec<u8>, path: &str, entry: &Entry) {
    let mut field = |bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(bytes);
    };
    field(path.as_bytes());
    match entry {
        Entry::File { mode, sha256 } => {
            field(b"file");
            field(&mode.to_le_bytes());
            field(sha256.as_bytes());
        }
        Entry::Symlink { target } => {
            field(b"symlink");
            field(target.as_bytes());
        }
        Entry::Dir { mode } => {
            field(b"dir");
            field(&mode.to_le_bytes());
        }
        Entry::Other { mode } => {
            field(b"other");
            field(&mode.to_le_bytes());
        }
    }
}

/// A context path without `./`, `/` or empty components.
fn clean(path: &str) -> String {
    path.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect::<Vec<_>>()
        .join("/")
}

fn parse_ignore(text: Option<&str>) -> io::Result<Option<DockerIgnore>> {
    text.map(|t| DockerIgnore::parse(t).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)))
        .transpose()
}
