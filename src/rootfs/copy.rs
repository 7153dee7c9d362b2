//! COPY/ADD inside a chain pod: sources matched (globs, `.dockerignore`)
//! under a source root on disk (the context, or an unpacked export), copied
//! to a destination in the container's own filesystem with Docker's rules;
//! and the export archives chains hand to each other.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Component, Path, PathBuf};

use super::{FsError, io_err};
use crate::dockerfile::DockerIgnore;
use crate::oci::layer::{LayerOptions, LayerWriter};

/// Where the files come from.
pub struct SourceRoot<'a> {
    /// A directory on disk whose `/` the sources are relative to.
    pub dir: &'a Path,
    /// Paths it leaves out (the context's `.dockerignore`).
    pub ignore: Option<&'a DockerIgnore>,
}

/// What one COPY/ADD does once its words are expanded.
pub struct CopyRequest {
    /// Absolute, in the container.
    pub destination: PathBuf,
    /// The destination was written as a directory (`/`, `.`).
    pub destination_is_dir: bool,
    pub owner: (u32, u32),
    pub chmod: Option<u32>,
    /// ADD: local tar archives (plain, gzip, bzip2, xz) are extracted.
    pub extract_archives: bool,
}

impl CopyRequest {
    fn instruction(&self) -> &'static str {
        if self.extract_archives { "ADD" } else { "COPY" }
    }

    /// Docker's rule for `sources` things to copy (matches of every source,
    /// heredocs included): more than one needs a destination written as a
    /// directory, even one that exists.
    pub fn check_source_count(&self, sources: &[&str]) -> Result<(), FsError> {
        if sources.len() <= 1 || self.destination_is_dir {
            return Ok(());
        }
        const SHOWN: usize = 5;
        let mut names = sources[..sources.len().min(SHOWN)].join(", ");
        if sources.len() > SHOWN {
            names.push_str(", …");
        }
        Err(FsError::Invalid {
            path: self.destination.clone(),
            what: format!(
                "When using {} with more than one source file, the destination must be a directory and end with a / ({} sources: {names})",
                self.instruction(),
                sources.len()
            ),
        })
    }
}

/// The files one COPY/ADD has copied, by the source's (device, inode): a
/// file's second name is linked to the first copy, so hard links between
/// copied files stay hard links (as BuildKit keeps them).
#[derive(Debug, Default)]
pub struct HardLinks(HashMap<(u64, u64), PathBuf>);

impl HardLinks {
    fn key(meta: &fs::Metadata) -> Option<(u64, u64)> {
        (meta.is_file() && meta.nlink() > 1).then(|| (meta.dev(), meta.ino()))
    }
}

/// One matched source: where it is on disk and its path under the root.
#[derive(Debug, Clone)]
pub struct Match {
    pub disk: PathBuf,
    /// Relative to the root, `/`-separated, as matched (no leading `/`).
    pub rel: String,
}

/// Every match of every source under `root`; a source without any is an error.
pub fn match_sources(root: &SourceRoot<'_>, sources: &[String]) -> Result<Vec<Match>, FsError> {
    let mut matches = Vec::new();
    for source in sources {
        let found = match_source(root.dir, source, root.ignore)?;
        if found.is_empty() {
            return Err(FsError::Invalid {
                path: PathBuf::from(source),
                what: "no such file or directory in the source (or excluded by .dockerignore)"
                    .into(),
            });
        }
        matches.extend(found);
    }
    Ok(matches)
}

/// Copies matches from `root` as `request` says (its source count checked
/// already), linking files to their hard links' copies in `links`; returns
/// how many entries were written.
pub fn copy_matches(
    root: &SourceRoot<'_>,
    matches: &[Match],
    request: &CopyRequest,
    links: &mut HardLinks,
) -> Result<usize, FsError> {
    let dest_is_dir =
        request.destination_is_dir || fs::metadata(&request.destination).is_ok_and(|m| m.is_dir());
    let mut written = 0;
    for found in matches {
        let meta = fs::metadata(&found.disk).map_err(io_err(&found.disk))?;
        if meta.is_dir() {
            ensure_dir(&request.destination, request.owner, request.chmod)?;
            written += copy_tree(root, found, &request.destination, request, links)?;
        } else if request.extract_archives && is_archive(&found.disk)? {
            ensure_dir(&request.destination, (0, 0), None)?;
            extract_archive(&found.disk, &request.destination, Unpack::AsArchived)?;
            written += 1;
        } else {
            let target = if dest_is_dir {
                ensure_dir(&request.destination, (0, 0), None)?;
                let name = Path::new(&found.rel)
                    .file_name()
                    .map(PathBuf::from)
                    .unwrap_or_default();
                request.destination.join(name)
            } else {
                if let Some(parent) = request.destination.parent() {
                    ensure_dir(parent, (0, 0), None)?;
                }
                request.destination.clone()
            };
            copy_entry(&found.disk, &meta, &target, request, links)?;
            written += 1;
        }
    }
    Ok(written)
}

/// One COPY/ADD of `sources` from one root: matched, counted, copied.
pub fn copy(
    root: &SourceRoot<'_>,
    sources: &[String],
    request: &CopyRequest,
) -> Result<usize, FsError> {
    let matches = match_sources(root, sources)?;
    let names: Vec<&str> = matches.iter().map(|m| m.rel.as_str()).collect();
    request.check_source_count(&names)?;
    copy_matches(root, &matches, request, &mut HardLinks::default())
}

/// The paths under `root` that `source` names: itself, or every match of
/// its glob (`*`, `?`, `[…]` per component), sorted, excluded ones left out.
pub fn match_source(
    root: &Path,
    source: &str,
    ignore: Option<&DockerIgnore>,
) -> Result<Vec<Match>, FsError> {
    let clean = source_parts(source);
    let excluded = |rel: &str| ignore.is_some_and(|i| i.is_excluded(rel));
    let mut current = vec![Match {
        disk: root.to_path_buf(),
        rel: String::new(),
    }];
    for part in &clean {
        let mut next = Vec::new();
        for m in current {
            if has_glob(part) {
                let Ok(entries) = fs::read_dir(scoped(root, &m.rel)?) else {
                    continue;
                };
                let mut names: Vec<String> = entries
                    .filter_map(std::result::Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| part_matches(part, n))
                    .collect();
                names.sort();
                for name in names {
                    next.push(child(&m, &name));
                }
            } else {
                let literal = unescape(part);
                next.push(child(&m, &literal));
            }
        }
        current = next;
    }
    let mut found = Vec::new();
    for mut m in current {
        // Links are followed as if the root were `/`: nothing outside it is read.
        m.disk = scoped(root, &m.rel)?;
        found.push(m);
    }
    let found = found
        .into_iter()
        .filter(|m| fs::symlink_metadata(&m.disk).is_ok())
        .filter(|m| m.rel.is_empty() || !excluded(&m.rel) || is_dir_with_exceptions(m, ignore))
        .collect();
    Ok(found)
}

/// A source's path components as COPY walks them: `.`, `/` and empty
/// components dropped, `..` resolved without leaving the root (so `.`,
/// `./`, `/` and `..` are no components: the whole root).
pub fn source_parts(source: &str) -> Vec<String> {
    let mut clean: Vec<String> = Vec::new();
    for component in Path::new(source).components() {
        match component {
            Component::Normal(p) => clean.push(p.to_string_lossy().into_owned()),
            Component::ParentDir => {
                clean.pop();
            }
            _ => {}
        }
    }
    clean
}

/// Whether one component of a source (from [`source_parts`]) names the
/// directory entry `name`: a glob with [`glob_match`], else literally
/// (its `\` escapes removed).
pub fn part_matches(part: &str, name: &str) -> bool {
    if has_glob(part) {
        glob_match(part, name)
    } else {
        unescape(part) == name
    }
}

/// Where `rel` is on disk under `root`, its symlinks resolved inside `root`.
fn scoped(root: &Path, rel: &str) -> Result<PathBuf, FsError> {
    let inside = super::resolve::resolve(root, &Path::new("/").join(rel), true)?;
    Ok(root.join(inside.strip_prefix("/").unwrap_or(&inside)))
}

fn is_dir_with_exceptions(m: &Match, ignore: Option<&DockerIgnore>) -> bool {
    ignore.is_some_and(DockerIgnore::has_exceptions) && m.disk.is_dir()
}

fn child(parent: &Match, name: &str) -> Match {
    Match {
        disk: parent.disk.join(name),
        rel: if parent.rel.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", parent.rel)
        },
    }
}

fn has_glob(part: &str) -> bool {
    part.contains(['*', '?', '['])
}

fn unescape(part: &str) -> String {
    let mut out = String::new();
    let mut chars = part.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Go's `filepath.Match` for one path component: `*`, `?`, `[a-z]`,
/// `[^…]`/`[!…]`, `\` escapes.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    glob_at(&p, &n)
}

fn glob_at(p: &[char], n: &[char]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some('*') => (0..=n.len()).any(|i| glob_at(&p[1..], &n[i..])),
        Some('?') => !n.is_empty() && glob_at(&p[1..], &n[1..]),
        Some('[') => {
            let Some(c) = n.first() else { return false };
            let mut i = 1;
            let negated = matches!(p.get(1), Some('^' | '!'));
            if negated {
                i += 1;
            }
            let mut matched = false;
            let mut first = true;
            while i < p.len() && (p[i] != ']' || first) {
                first = false;
                let mut low = p[i];
                if low == '\\' && i + 1 < p.len() {
                    i += 1;
                    low = p[i];
                }
                let mut high = low;
                if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|c| *c != ']') {
                    high = p[i + 2];
                    i += 2;
                }
                if low <= *c && *c <= high {
                    matched = true;
                }
                i += 1;
            }
            if i >= p.len() {
                return false; // no closing `]`: a bad pattern matches nothing
            }
            matched != negated && glob_at(&p[i + 1..], &n[1..])
        }
        Some('\\') if p.len() > 1 => n.first() == Some(&p[1]) && glob_at(&p[2..], &n[1..]),
        Some(c) => n.first() == Some(c) && glob_at(&p[1..], &n[1..]),
    }
}

/// Creates `dir` and missing parents; the ones it creates get `owner`
/// (0755, or `chmod`); existing ones are left alone.
fn ensure_dir(dir: &Path, owner: (u32, u32), chmod: Option<u32>) -> Result<(), FsError> {
    if fs::metadata(dir).is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        ensure_dir(parent, (0, 0), None)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(io_err(dir)(e)),
    }
    lchown(dir, Some(owner.0), Some(owner.1)).map_err(io_err(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(chmod.unwrap_or(0o755)))
        .map_err(io_err(dir))
}

/// The contents of the matched directory into `dest`, `.dockerignore` applied.
fn copy_tree(
    root: &SourceRoot<'_>,
    found: &Match,
    dest: &Path,
    request: &CopyRequest,
    links: &mut HardLinks,
) -> Result<usize, FsError> {
    let mut written = 0;
    let walk = walkdir::WalkDir::new(&found.disk)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name();
    let mut skipped: Vec<PathBuf> = Vec::new();
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    for entry in walk {
        let entry = entry.map_err(|e| FsError::Io {
            path: found.disk.clone(),
            source: e.into(),
        })?;
        let rel = entry
            .path()
            .strip_prefix(&found.disk)
            .expect("walkdir yields paths under its root");
        if skipped.iter().any(|s| rel.starts_with(s)) {
            continue;
        }
        let context_rel = if found.rel.is_empty() {
            rel.display().to_string()
        } else {
            format!("{}/{}", found.rel, rel.display())
        };
        let meta = fs::symlink_metadata(entry.path()).map_err(io_err(entry.path()))?;
        if let Some(ignore) = root.ignore
            && ignore.is_excluded(&context_rel)
        {
            // An excluded directory is walked only when an exception may
            // let something below it back in.
            if !(meta.is_dir() && ignore.has_exceptions()) {
                if meta.is_dir() {
                    skipped.push(rel.to_path_buf());
                }
                continue;
            }
        }
        let target = dest.join(rel);
        if let Some(mode) = copy_entry(entry.path(), &meta, &target, request, links)? {
            dir_modes.push((target, mode));
        }
        written += 1;
    }
    // Directory modes last, deepest first: a read-only directory (0555)
    // still takes its contents without root's CAP_DAC_OVERRIDE.
    for (dir, mode) in dir_modes.iter().rev() {
        fs::set_permissions(dir, fs::Permissions::from_mode(*mode)).map_err(io_err(dir))?;
    }
    Ok(written)
}

/// One file, directory or symlink; owner from the request, mode kept (or
/// `--chmod`). A directory's mode is returned for the caller to set once
/// its contents are in.
fn copy_entry(
    disk: &Path,
    meta: &fs::Metadata,
    target: &Path,
    request: &CopyRequest,
    links: &mut HardLinks,
) -> Result<Option<u32>, FsError> {
    if let Some(parent) = target.parent() {
        ensure_dir(parent, (0, 0), None)?;
    }
    let existing = fs::symlink_metadata(target).ok();
    let file_type = meta.file_type();
    if file_type.is_dir() {
        if existing.as_ref().is_some_and(|m| !m.is_dir()) {
            fs::remove_file(target).map_err(io_err(target))?;
        }
        if !existing.as_ref().is_some_and(fs::Metadata::is_dir) {
            fs::create_dir(target).map_err(io_err(target))?;
        }
    } else {
        if let Some(existing) = &existing {
            if existing.is_dir() {
                return Err(FsError::Invalid {
                    path: target.to_path_buf(),
                    what: "cannot replace a directory with a file".into(),
                });
            }
            fs::remove_file(target).map_err(io_err(target))?;
        }
        let key = HardLinks::key(meta);
        if file_type.is_symlink() {
            let link = fs::read_link(disk).map_err(io_err(disk))?;
            symlink(&link, target).map_err(io_err(target))?;
        } else if let Some(first) = key.and_then(|k| links.0.get(&k))
            && fs::hard_link(first, target).is_ok()
        {
            // The first copy has this request's owner and mode already.
            return Ok(None);
        } else {
            fs::copy(disk, target).map_err(io_err(target))?;
            if let Some(key) = key {
                links.0.entry(key).or_insert_with(|| target.to_path_buf());
            }
        }
    }
    // chown first: it clears setuid/setgid, which the chmod puts back.
    lchown(target, Some(request.owner.0), Some(request.owner.1)).map_err(io_err(target))?;
    let mode = request.chmod.unwrap_or(meta.mode() & 0o7777);
    if file_type.is_dir() {
        return Ok(Some(mode));
    }
    if !file_type.is_symlink() {
        fs::set_permissions(target, fs::Permissions::from_mode(mode)).map_err(io_err(target))?;
    }
    Ok(None)
}

/// How an archive is compressed, told by its first bytes (never its name),
/// as Docker's ADD tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
}

impl Compression {
    fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b, 0x08]) {
            Compression::Gzip
        } else if head.starts_with(b"BZh") {
            Compression::Bzip2
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Compression::Xz
        } else {
            Compression::None
        }
    }
}

/// The bytes of `path`, decompressed as its first bytes say.
fn decompressed(path: &Path) -> Result<Box<dyn Read>, FsError> {
    let mut file = fs::File::open(path).map_err(io_err(path))?;
    let mut head = [0u8; 6];
    let n = read_up_to(&mut file, &mut head).map_err(io_err(path))?;
    let file = fs::File::open(path).map_err(io_err(path))?;
    Ok(match Compression::sniff(&head[..n]) {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(file)),
        // Concatenated streams (pbzip2, pixz) are one archive.
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(file)),
        Compression::Xz => Box::new(lzma_rust2::XzReader::new(io::BufReader::new(file), true)),
    })
}

/// Reads until `buf` is full or the input ends; how much was read.
fn read_up_to(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(read) => n += read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A tar archive, plain or compressed with gzip, bzip2 or xz: Docker's
/// test is that its (decompressed) start reads as a tar header. Anything
/// else, a compressed file that is not a tar included, is copied as it is.
pub fn is_archive(path: &Path) -> Result<bool, FsError> {
    let mut reader = decompressed(path)?;
    let mut block = [0u8; 512];
    // A stream that does not decompress is not an archive.
    let Ok(n) = read_up_to(&mut reader, &mut block) else {
        return Ok(false);
    };
    Ok(n == block.len() && is_tar_header(&block))
}

/// A tar header block: its checksum field (octal) matches the sum of its
/// bytes with that field as spaces, unsigned or (old tars) signed.
fn is_tar_header(block: &[u8; 512]) -> bool {
    let field = &block[148..156];
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(b))
        .collect();
    let Ok(digits) = std::str::from_utf8(&digits) else {
        return false;
    };
    let Ok(expected) = i64::from_str_radix(digits, 8) else {
        return false;
    };
    let mut unsigned = 0i64;
    let mut signed = 0i64;
    for (i, byte) in block.iter().enumerate() {
        let byte = if (148..156).contains(&i) { b' ' } else { *byte };
        unsigned += i64::from(byte);
        signed += i64::from(byte as i8);
    }
    expected == unsigned || expected == signed
}

/// How [`extract_archive`] treats what it unpacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpack {
    /// Into the container (ADD): owners, modes and xattrs as archived.
    AsArchived,
    /// Into the workspace's scratch space (an export for COPY --from, which
    /// takes neither owners nor xattrs): modes only, every file this
    /// process's. On NFS with root_squash root may not chown there.
    Scratch,
}

/// Unpacks a tar, plain or compressed with gzip, bzip2 or xz, into `dest`.
pub fn extract_archive(path: &Path, dest: &Path, unpack: Unpack) -> Result<(), FsError> {
    let mut archive = tar::Archive::new(decompressed(path)?);
    let as_archived = unpack == Unpack::AsArchived;
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(as_archived);
    archive.set_unpack_xattrs(as_archived);
    archive.set_overwrite(true);
    archive.unpack(dest).map_err(|e| FsError::Invalid {
        path: path.to_path_buf(),
        what: error_chain(&e),
    })
}

/// An error and its causes on one line (the tar crate hides the cause).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Writes the export archive `out` of `pattern` (absolute, or relative to
/// `/`; may be a glob) read under `root`: every match and everything below
/// it but, under `/`, the mount points below a match, named by its matched
/// path without the leading `/` (`go/app`), with owners, modes, xattrs,
/// symlinks and hard links; gzip-compressed; mode 0644.
pub fn write_export(root: &Path, pattern: &str, out: &Path) -> Result<usize, FsError> {
    let matches = match_source(root, pattern, None)?;
    if matches.is_empty() {
        return Err(FsError::Invalid {
            path: PathBuf::from(pattern),
            what: "nothing to export: no such file or directory".into(),
        });
    }
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut writer = LayerWriter::create(&tmp, LayerOptions::default())?;
    let mut entries = 0;
    // Below a match, the pod's mount points (the workspace, the helper,
    // RUN mounts' volumes, /proc) are not the stage's files.
    let mount_points: std::collections::BTreeSet<PathBuf> = if root == Path::new("/") {
        fs::read("/proc/self/mountinfo")
            .map(|text| crate::rootfs::snapshot::mount_points(&text))
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p != Path::new("/"))
            .collect()
    } else {
        Default::default()
    };
    for found in matches {
        let name = Path::new("/").join(&found.rel);
        // The match itself is followed when it is a symlink (as COPY does).
        let disk = fs::canonicalize(&found.disk).map_err(io_err(&found.disk))?;
        // The root itself has no name in an archive: its contents do.
        if name != Path::new("/") {
            writer.add_as_is(&disk, &name)?;
            entries += 1;
        }
        if fs::symlink_metadata(&disk).is_ok_and(|m| m.is_dir()) {
            for entry in walkdir::WalkDir::new(&disk)
                .min_depth(1)
                .follow_links(false)
                .sort_by_file_name()
                .into_iter()
                .filter_entry(|e| !mount_points.contains(e.path()))
            {
                let entry = entry.map_err(|e| FsError::Io {
                    path: disk.clone(),
                    source: e.into(),
                })?;
                let rel = entry
                    .path()
                    .strip_prefix(&disk)
                    .expect("walkdir yields paths under its root");
                writer.add_as_is(entry.path(), &name.join(rel))?;
                entries += 1;
            }
        }
    }
    writer.finish()?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).map_err(io_err(&tmp))?;
    fs::rename(&tmp, out).map_err(io_err(out))?;
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_follow_filepath_match() {
        for (p, n) in [
            ("*.go", "app.go"),
            ("a?c", "abc"),
            ("[a-c]x", "bx"),
            ("[^a-c]x", "dx"),
            ("[!a]", "b"),
            ("\\*", "*"),
            ("*", ""),
        ] {
            assert!(glob_match(p, n), "{p} {n}");
        }
        for (p, n) in [
            ("*.go", "app.rs"),
            ("a?c", "ac"),
            ("[a-c]x", "dx"),
            ("[a", "a"),
        ] {
            assert!(!glob_match(p, n), "{p} {n}");
        }
    }

    /// Runs one COPY of `sources` to `dest` (under `out`) as the current user.
    fn copy_to(
        context: &Path,
        ignore: Option<&DockerIgnore>,
        sources: &[&str],
        dest: &Path,
        dir: bool,
        chmod: Option<u32>,
        add: bool,
    ) -> usize {
        try_copy_to(context, ignore, sources, dest, dir, chmod, add).unwrap()
    }

    fn try_copy_to(
        context: &Path,
        ignore: Option<&DockerIgnore>,
        sources: &[&str],
        dest: &Path,
        dir: bool,
        chmod: Option<u32>,
        add: bool,
    ) -> Result<usize, FsError> {
        let owner = crate::rootfs::users::current_ids().unwrap();
        let root = SourceRoot {
            dir: context,
            ignore,
        };
        let sources: Vec<String> = sources
            .iter()
            .map(std::string::ToString::to_string)
            .collect();
        copy(
            &root,
            &sources,
            &CopyRequest {
                destination: dest.to_path_buf(),
                destination_is_dir: dir,
                owner,
                chmod,
                extract_archives: add,
            },
        )
    }

    #[test]
    fn copies_follow_dockers_rules() {
        let dir = tempfile::tempdir().unwrap();
        let context = dir.path().join("context");
        let out = dir.path().join("out");
        fs::create_dir_all(context.join("conf/sub")).unwrap();
        fs::create_dir_all(&out).unwrap();
        fs::write(context.join("conf/a.conf"), "a").unwrap();
        fs::write(context.join("conf/skip.bak"), "x").unwrap();
        fs::write(context.join("conf/sub/keep.bak"), "k").unwrap();
        fs::write(context.join("run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(context.join("run.sh"), fs::Permissions::from_mode(0o750)).unwrap();
        symlink("a.conf", context.join("conf/link")).unwrap();
        let ignore = DockerIgnore::parse("**/*.bak\n!conf/sub/keep.bak\n").unwrap();

        // A directory copies its contents; ignored files stay out, exceptions come back.
        copy_to(
            &context,
            Some(&ignore),
            &["conf"],
            &out.join("etc"),
            false,
            None,
            false,
        );
        assert_eq!(fs::read_to_string(out.join("etc/a.conf")).unwrap(), "a");
        assert!(!out.join("etc/skip.bak").exists());
        assert_eq!(
            fs::read_to_string(out.join("etc/sub/keep.bak")).unwrap(),
            "k"
        );
        assert_eq!(
            fs::read_link(out.join("etc/link")).unwrap(),
            Path::new("a.conf")
        );
        // A file to a new name keeps its mode; into a directory keeps its name.
        copy_to(
            &context,
            None,
            &["run.sh"],
            &out.join("bin/start"),
            false,
            None,
            false,
        );
        let mode = fs::metadata(out.join("bin/start")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o750);
        copy_to(
            &context,
            None,
            &["/run.sh"],
            &out.join("bin"),
            false,
            Some(0o700),
            false,
        );
        let mode = fs::metadata(out.join("bin/run.sh")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        // Several matches need a destination written as a directory, even
        // an existing one; a single glob match does not.
        for dest in [out.join("many"), out.join("bin")] {
            let err = try_copy_to(&context, None, &["conf/*"], &dest, false, None, false)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("When using COPY with more than one source file, the destination must be a directory and end with a / (4 sources: conf/a.conf, conf/link, conf/skip.bak, conf/sub)"),
                "{err}"
            );
        }
        assert!(!out.join("many").exists());
        copy_to(
            &context,
            None,
            &["conf/*.conf"],
            &out.join("one.conf"),
            false,
            None,
            false,
        );
        assert!(out.join("one.conf").is_file());
        copy_to(
            &context,
            None,
            &["conf/*.conf", "run.sh"],
            &out.join("many"),
            true,
            None,
            false,
        );
        assert!(out.join("many/a.conf").is_file() && out.join("many/run.sh").is_file());

        // ADD extracts a tar; COPY copies it as a file.
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o600);
        let (uid, gid) = crate::rootfs::users::current_ids().unwrap();
        header.set_uid(uid.into());
        header.set_gid(gid.into());
        header.set_cksum();
        builder
            .append_data(&mut header, "in/x", &b"xx"[..])
            .unwrap();
        fs::write(context.join("t.tar"), builder.into_inner().unwrap()).unwrap();
        copy_to(
            &context,
            None,
            &["t.tar"],
            &out.join("add"),
            true,
            None,
            true,
        );
        assert_eq!(fs::read_to_string(out.join("add/in/x")).unwrap(), "xx");
        copy_to(
            &context,
            None,
            &["t.tar"],
            &out.join("copy"),
            true,
            None,
            false,
        );
        assert!(out.join("copy/t.tar").is_file());
    }

    #[test]
    fn add_extracts_bzip2_and_xz_tars_made_by_system_tar_whatever_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("pkg/bin")).unwrap();
        fs::write(tree.join("pkg/bin/tool"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(tree.join("pkg/bin/tool"), fs::Permissions::from_mode(0o750)).unwrap();
        let context = dir.path().join("context");
        fs::create_dir(&context).unwrap();
        for (flag, name) in [("-cjf", "bundle.bin"), ("-cJf", "bundle.tar.gz")] {
            let status = std::process::Command::new("tar")
                .arg(flag)
                .arg(context.join(name))
                .arg("-C")
                .arg(&tree)
                .arg("pkg")
                .status()
                .unwrap();
            assert!(status.success());
        }
        // Compressed, but not a tar: copied as a file.
        fs::write(context.join("notes"), "plain text\n").unwrap();
        let status = std::process::Command::new("bzip2")
            .arg(context.join("notes"))
            .status()
            .unwrap();
        assert!(status.success());
        fs::rename(context.join("notes.bz2"), context.join("notes.bz2.bz2")).unwrap();
        fs::write(context.join("notes.bz2"), "BZh not really\n").unwrap();

        let out = dir.path().join("out");
        for name in ["bundle.bin", "bundle.tar.gz"] {
            let dest = out.join(name.replace('.', "-"));
            copy_to(&context, None, &[name], &dest, true, None, true);
            let tool = dest.join("pkg/bin/tool");
            assert_eq!(fs::read_to_string(&tool).unwrap(), "#!/bin/sh\n", "{name}");
            assert_eq!(
                fs::metadata(&tool).unwrap().mode() & 0o7777,
                0o750,
                "{name}"
            );
            assert!(!dest.join(name).exists(), "{name}");
        }
        copy_to(
            &context,
            None,
            &["notes.bz2", "notes.bz2.bz2"],
            &out.join("notes"),
            true,
            None,
            true,
        );
        assert_eq!(
            fs::read_to_string(out.join("notes/notes.bz2")).unwrap(),
            "BZh not really\n"
        );
        assert!(out.join("notes/notes.bz2.bz2").is_file());
    }

    #[test]
    fn hard_links_between_copied_files_stay_hard_links() {
        let dir = tempfile::tempdir().unwrap();
        let context = dir.path().join("context");
        fs::create_dir_all(context.join("d/sub")).unwrap();
        fs::write(context.join("d/a"), "a").unwrap();
        fs::hard_link(context.join("d/a"), context.join("d/sub/b")).unwrap();
        fs::hard_link(context.join("d/a"), context.join("top")).unwrap();
        fs::write(context.join("d/c"), "c").unwrap();
        let out = dir.path().join("out");
        copy_to(&context, None, &["d", "top"], &out, true, None, false);
        let ino = |p: &str| fs::metadata(out.join(p)).unwrap().ino();
        assert_eq!(ino("a"), ino("sub/b"));
        assert_eq!(ino("a"), ino("top"));
        assert_ne!(ino("a"), ino("c"));
        assert_eq!(fs::metadata(out.join("a")).unwrap().nlink(), 3);
        // Not linked to the source itself.
        assert_ne!(ino("a"), fs::metadata(context.join("d/a")).unwrap().ino());
    }

    #[test]
    fn sources_match_literally_by_glob_and_stay_in_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("src/sub")).unwrap();
        fs::write(root.join("src/a.go"), "a").unwrap();
        fs::write(root.join("src/b.go"), "b").unwrap();
        fs::write(root.join("src/c.txt"), "c").unwrap();
        let rels = |source: &str, ignore: Option<&DockerIgnore>| -> Vec<String> {
            match_source(root, source, ignore)
                .unwrap()
                .into_iter()
                .map(|m| m.rel)
                .collect()
        };
        assert_eq!(rels("src/*.go", None), ["src/a.go", "src/b.go"]);
        assert_eq!(rels("/src/c.txt", None), ["src/c.txt"]);
        assert_eq!(rels("../../src/c.txt", None), ["src/c.txt"]);
        assert_eq!(rels("src/", None), ["src"]);
        assert!(rels("nope", None).is_empty());
        std::os::unix::fs::symlink("/src", root.join("link")).unwrap();
        std::os::unix::fs::symlink("../../../src/a.go", root.join("up")).unwrap();
        let found = match_source(root, "link/c.txt", None).unwrap();
        assert_eq!(found[0].disk, root.join("src/c.txt"));
        let found = match_source(root, "up", None).unwrap();
        assert_eq!(
            (found[0].rel.as_str(), &found[0].disk),
            ("up", &root.join("src/a.go"))
        );
        let ignore = DockerIgnore::parse("*/b.go\n").unwrap();
        assert_eq!(rels("src/*.go", Some(&ignore)), ["src/a.go"]);
    }
}
