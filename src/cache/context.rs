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

#[cfg(test)]
mod tests {
    use super::*;

    fn index(files: &[(&str, &str)]) -> ContextIndex {
        ContextIndex::from_entries(
            files
                .iter()
                .map(|(path, text)| (path.to_string(), INLINE_FILE_MODE, text.as_bytes())),
        )
        .unwrap()
    }

    fn base() -> ContextIndex {
        index(&[
            (".dockerignore", "*.log\n"),
            ("main.go", "package main"),
            ("util.go", "package main // util"),
            ("README.md", "read me"),
            ("debug.log", "noise"),
            ("src/app/main.go", "package app"),
            ("src/lib.rs", "fn lib() {}"),
            ("docs/guide.md", "guide"),
        ])
    }

    fn digest(index: &ContextIndex, sources: &[&str]) -> String {
        let sources: Vec<String> = sources.iter().map(ToString::to_string).collect();
        index.digest_for(&sources)
    }

    /// The digest of `sources` before and after `path` is changed.
    fn sees_change(sources: &[&str], path: &str) -> bool {
        let before = base();
        let mut after = before.clone();
        after.entries.insert(
            path.to_string(),
            Entry::File {
                mode: 0o644,
                sha256: "changed".into(),
            },
        );
        digest(&before, sources) != digest(&after, sources)
    }

    #[test]
    fn ignored_files_are_not_indexed_and_directories_are_implied() {
        let index = base();
        assert!(!index.entries().contains_key("debug.log"));
        assert!(index.entries().contains_key(".dockerignore"));
        assert_eq!(index.entries()["src"], Entry::Dir { mode: 0o755 });
        assert_eq!(index.entries()["src/app"], Entry::Dir { mode: 0o755 });
        assert!(matches!(
            index.entries()["main.go"],
            Entry::File { mode: 0o644, .. }
        ));
        let written = ContextIndex::from_entries([
            ("./a/b".to_string(), 0o644, &b"x"[..]),
            ("/c".to_string(), 0o644, &b"y"[..]),
        ])
        .unwrap();
        let keys: Vec<&str> = written.entries().keys().map(String::as_str).collect();
        assert_eq!(keys, ["a", "a/b", "c"]);
    }

    #[test]
    fn a_bad_dockerignore_is_an_error() {
        let bad = ContextIndex::from_entries([(".dockerignore".to_string(), 0o644, &b"!\n"[..])]);
        assert_eq!(bad.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn the_whole_context_for_dot_and_slash() {
        for source in [".", "./", "/", ".."] {
            assert!(sees_change(&[source], "README.md"), "{source}");
            assert!(sees_change(&[source], "src/app/main.go"), "{source}");
        }
        assert_eq!(digest(&base(), &["."]), digest(&base(), &["/"]));
    }

    #[test]
    fn a_directory_source_takes_what_is_below_it() {
        assert!(sees_change(&["src"], "src/app/main.go"));
        assert!(sees_change(&["src/"], "src/lib.rs"));
        assert!(sees_change(&["./src/app/"], "src/app/new.go"));
        assert!(!sees_change(&["src"], "main.go"));
        assert!(!sees_change(&["src/app"], "src/lib.rs"));
        assert!(!sees_change(&["src"], "srcx"));
    }

    #[test]
    fn a_glob_matches_one_component() {
        assert!(sees_change(&["*.go"], "main.go"));
        assert!(sees_change(&["*.go"], "util.go"));
        assert!(!sees_change(&["*.go"], "src/app/main.go"));
        assert!(!sees_change(&["*.go"], "README.md"));
        assert!(sees_change(&["src/*/main.go"], "src/app/main.go"));
        assert!(sees_change(&["[mu]*.go"], "util.go"));
        assert!(!sees_change(&["m?in.go"], "util.go"));
    }

    #[test]
    fn a_file_below_a_matching_directory_is_read() {
        // `s*` matches the directory `src`: COPY takes all of it.
        assert!(sees_change(&["s*"], "src/app/main.go"));
        assert!(sees_change(&["src/a*"], "src/app/deep/file"));
        assert!(!sees_change(&["d*"], "src/app/main.go"));
    }

    #[test]
    fn a_variable_takes_the_whole_context() {
        assert!(sees_change(&["$SRC"], "docs/guide.md"));
        assert!(sees_change(&["main.go", "${DIR}/x"], "README.md"));
        assert!(!sees_change(&["main.go"], "README.md"));
    }

    #[test]
    fn a_symlink_on_the_way_takes_the_whole_context() {
        let mut index = base();
        index.entries.insert(
            "lib".into(),
            Entry::Symlink {
                target: "src".into(),
            },
        );
        let mut changed = index.clone();
        changed.entries.insert(
            "src/lib.rs".into(),
            Entry::File {
                mode: 0o644,
                sha256: "changed".into(),
            },
        );
        for source in ["lib/lib.rs", "lib", "l*/*.rs"] {
            assert_ne!(
                digest(&index, &[source]),
                digest(&changed, &[source]),
                "{source}"
            );
        }
        assert_eq!(digest(&index, &["docs"]), digest(&changed, &["docs"]));
    }

    #[test]
    fn modes_and_symlink_targets_count() {
        let a = ContextIndex::from_entries([("run.sh".to_string(), 0o644, &b"x"[..])]).unwrap();
        let b = ContextIndex::from_entries([("run.sh".to_string(), 0o755, &b"x"[..])]).unwrap();
        assert_ne!(digest(&a, &["run.sh"]), digest(&b, &["run.sh"]));
        let link = |target: &str| {
            let mut index = a.clone();
            index.entries.insert(
                "bin".into(),
                Entry::Symlink {
                    target: target.into(),
                },
            );
            digest(&index, &["."])
        };
        assert_ne!(link("run.sh"), link("other.sh"));
    }

    #[test]
    fn dockerignore_exceptions_keep_the_directories_they_walk() {
        let index = index(&[
            (".dockerignore", "docs\n!docs/keep.md\n"),
            ("docs/keep.md", "kept"),
            ("docs/drop.md", "dropped"),
        ]);
        assert!(index.entries().contains_key("docs"));
        assert!(index.entries().contains_key("docs/keep.md"));
        assert!(!index.entries().contains_key("docs/drop.md"));
    }

    #[test]
    fn from_dir_equals_from_entries() {
        let files: &[(&str, u32, &str)] = &[
            (".dockerignore", 0o644, "*.log\n# comment\n"),
            ("main.go", 0o644, "package main"),
            ("run.sh", 0o755, "#!/bin/sh\n"),
            ("debug.log", 0o644, "noise"),
            ("src/app/main.go", 0o644, "package app"),
            ("src/app/trace.log", 0o644, "noise"),
            ("src/lib.rs", 0o600, "fn lib() {}"),
        ];
        let dir = tempfile::tempdir().unwrap();
        for (path, mode, text) in files {
            let path = dir.path().join(path);
            let parent = path.parent().unwrap();
            fs::create_dir_all(parent).unwrap();
            fs::write(&path, text).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
        }
        for sub in ["src", "src/app"] {
            fs::set_permissions(dir.path().join(sub), fs::Permissions::from_mode(0o755)).unwrap();
        }
        let walked = ContextIndex::from_dir(dir.path()).unwrap();
        let listed = ContextIndex::from_entries(
            files
                .iter()
                .map(|(path, mode, text)| (path.to_string(), *mode, text.as_bytes())),
        )
        .unwrap();
        assert_eq!(walked, listed);
        // `*.log` is for the root only, as in Docker.
        assert!(!walked.entries().contains_key("debug.log"));
        assert!(walked.entries().contains_key("src/app/trace.log"));
        assert_eq!(digest(&walked, &["."]), digest(&listed, &["."]));

        std::os::unix::fs::symlink("src/lib.rs", dir.path().join("link")).unwrap();
        let walked = ContextIndex::from_dir(dir.path()).unwrap();
        assert_eq!(
            walked.entries()["link"],
            Entry::Symlink {
                target: "src/lib.rs".into()
            }
        );
    }
}
