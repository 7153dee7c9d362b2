//! A RUN's `--mount`s inside a chain pod, which has no power to mount
//! (baseline Pod Security: no `CAP_SYS_ADMIN`). What backs each mount is a
//! volume of the pod or a scratch copy, and the RUN reaches it through a
//! symlink placed at the target for the RUN's duration:
//! - `type=cache`: `data/` in the id's volume ([`cache_mount`]); a `lock`
//!   file beside it is held shared (`sharing=shared`), exclusive
//!   (`locked`: a second user waits), or tried (`private`: a second user
//!   gets a fresh directory in the workspace, thrown away). `data/` is made
//!   with the mount's `mode`, `uid` and `gid`, and seeded from `from=` when
//!   it is made. After the RUN the volume is kept under its limit
//!   ([`CACHE_LIMITS_ENV`]): the least recently used files go first.
//!   `ro` is not enforced: without a mount there is no read-only view.
//! - `type=bind`: a copy of the context's (`.dockerignore` applied) or the
//!   stage export's `source`, in the workspace's `tmp/`, thrown away after
//!   the RUN: writes are discarded, `rw` or not (without `rw` they are not
//!   refused either).
//! - `type=tmpfs`: an empty directory in the pod's memory volume
//!   ([`MEMORY_MOUNT`]), removed after the RUN.
//! - `type=secret`: the file of that id in [`SECRETS_MOUNT`] copied into
//!   the memory volume with the mount's mode and owner, removed after the
//!   RUN; `env=` puts the value in that variable of the RUN. A secret that
//!   is not there fails the step when `required`, else the mount is
//!   skipped (as BuildKit does). The value is never logged.
//!
//! What was at a target is moved aside to a hidden sibling during the RUN
//! and put back after; where nothing was, an empty directory (an empty
//! file for a file) is left, as BuildKit leaves the mount point, but for
//! secrets, which leave nothing, not even the parents made for them. A symlink is what the RUN sees at
//! the target (`readlink` and `realpath` tell); a RUN that replaces it
//! keeps its own.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::contract::{CACHE_LIMITS_ENV, MEMORY_MOUNT, SECRETS_MOUNT, Workspace, cache_mount};
use crate::dockerfile::instruction::Sharing;
use crate::dockerfile::{DockerIgnore, RunMount};
use crate::plan::{CopySource, PlannedMount};
use crate::rootfs::ScratchDir;
use crate::rootfs::copy::{
    CopyRequest, HardLinks, SourceRoot, Unpack, copy_matches, extract_archive, match_sources,
};

/// A cache is trimmed to this share of its limit once over it.
const TRIM_TO_PERCENT: u64 = 90;

/// Where the pod's mount volumes are (the real root in a pod; a test
/// directory in tests).
pub(super) struct MountPaths {
    /// The filesystem the RUN sees: targets are under it.
    pub(super) root: PathBuf,
    /// A cache id's volume.
    pub(super) cache: fn(&str) -> PathBuf,
    pub(super) secrets: PathBuf,
    pub(super) memory: PathBuf,
    /// Each cache's limit in bytes, by cache id.
    pub(super) limits: BTreeMap<String, u64>,
}

impl MountPaths {
    /// The pod's: `/`, the contract's mount points, the limits from
    /// [`CACHE_LIMITS_ENV`] (`{"<cache id>": bytes}`).
    pub(super) fn pod() -> Self {
        let limits = std::env::var(CACHE_LIMITS_ENV)
            .ok()
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default();
        Self {
            root: PathBuf::from("/"),
            cache: |id| PathBuf::from(cache_mount(id)),
            secrets: PathBuf::from(SECRETS_MOUNT),
            memory: PathBuf::from(MEMORY_MOUNT),
            limits,
        }
    }

    fn on_disk(&self, target: &str) -> PathBuf {
        self.root.join(target.trim_start_matches('/'))
    }
}

/// What a RUN's mounts read from besides the pod's volumes.
pub(super) struct MountSources<'a> {
    pub(super) workspace: &'a Workspace,
    pub(super) context: &'a Path,
    pub(super) ignore: Option<&'a DockerIgnore>,
}

/// The mounts of one RUN, in place until [`Mounted::unmount`].
#[derive(Default)]
pub(super) struct Mounted {
    placed: Vec<Placed>,
    /// Locks held on cache volumes.
    locks: Vec<File>,
    /// Copies and private caches, removed when dropped.
    scratch: Vec<ScratchDir>,
    /// tmpfs directories and secret copies in the memory volume.
    memory: Vec<PathBuf>,
    /// Cache `data/` directories to keep under a limit after the RUN.
    trim: Vec<(PathBuf, u64)>,
    /// Variables the RUN gets (`type=secret,env=`).
    pub(super) env: BTreeMap<String, String>,
}

struct Placed {
    /// The target on disk.
    target: PathBuf,
    backing: PathBuf,
    /// What was at the target, moved aside.
    hidden: Option<PathBuf>,
    /// Parent directories made for the target, deepest last.
    made_parents: Vec<PathBuf>,
    /// Leave an empty directory where nothing was.
    leave_dir: bool,
}

/// Puts every mount of a RUN in place; on error, what was placed is undone.
pub(super) fn mount_all(
    mounts: &[RunMount],
    planned: &[PlannedMount],
    paths: &MountPaths,
    sources: &MountSources<'_>,
) -> Result<Mounted, String> {
    let mut mounted = Mounted::default();
    for (i, mount) in mounts.iter().enumerate() {
        let source = planned.get(i).and_then(|p| p.source.as_ref());
        if let Err(e) = mount_one(mount, source, paths, sources, &mut mounted, i) {
            let _ = mounted.unmount();
            return Err(e);
        }
    }
    Ok(mounted)
}

fn mount_one(
    mount: &RunMount,
    source: Option<&CopySource>,
    paths: &MountPaths,
    sources: &MountSources<'_>,
    mounted: &mut Mounted,
    index: usize,
) -> Result<(), String> {
    let (backing, leave_dir) = match mount {
        RunMount::Cache(cache) => {
            let volume = (paths.cache)(&cache.id);
            if !volume.is_dir() {
                return Err(format!(
                    "cache `{}`: its volume is not mounted at {}",
                    cache.id,
                    volume.display()
                ));
            }
            let lock_path = volume.join("lock");
            let lock = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .map_err(|e| format!("{}: {e}", lock_path.display()))?;
            let exclusive = match cache.sharing {
                Sharing::Shared => lock.lock_shared().map(|()| true),
                Sharing::Locked => lock.lock().map(|()| true),
                Sharing::Private => match lock.try_lock() {
                    Ok(()) => Ok(true),
                    Err(fs::TryLockError::WouldBlock) => Ok(false),
                    Err(fs::TryLockError::Error(e)) => Err(e),
                },
            }
            .map_err(|e| format!("{}: {e}", lock_path.display()))?;
            let data = if exclusive {
                mounted.locks.push(lock);
                let data = volume.join("data");
                if let Some(limit) = paths.limits.get(&cache.id) {
                    mounted.trim.push((data.clone(), *limit));
                }
                data
            } else {
                tracing::info!(cache = %cache.id, "in use: this RUN gets a private, fresh cache (sharing=private)");
                let dir = scratch(sources.workspace)?;
                let data = dir.path().join("data");
                mounted.scratch.push(dir);
                data
            };
            if !data.exists() {
                fs::create_dir(&data).map_err(|e| format!("{}: {e}", data.display()))?;
                if let Some(source) = source {
                    fill(&data, source, cache.source.as_str(), sources, mounted)?;
                }
                std::os::unix::fs::chown(&data, Some(cache.uid), Some(cache.gid))
                    .and_then(|()| {
                        fs::set_permissions(&data, fs::Permissions::from_mode(cache.mode))
                    })
                    .map_err(|e| format!("{}: {e}", data.display()))?;
            }
            (data, true)
        }
        RunMount::Bind(bind) => {
            let dir = scratch(sources.workspace)?;
            let copy = dir.path().join("m");
            mounted.scratch.push(dir);
            match source {
                Some(source) => fill(&copy, source, &bind.source, sources, mounted)?,
                None => copy_from_context(&copy, &bind.source, sources)?,
            }
            (copy, true)
        }
        RunMount::Tmpfs(_) => {
            let dir = paths
                .memory
                .join(format!("tmpfs-{}-{index}", std::process::id()));
            fs::create_dir_all(&dir)
                .and_then(|()| fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            mounted.memory.push(dir.clone());
            (dir, true)
        }
        RunMount::Secret(secret) => {
            let file = paths.secrets.join(&secret.id);
            let value = match fs::read(&file) {
                Ok(value) => value,
                Err(_) if !secret.required => {
                    tracing::info!(secret = %secret.id, "not provided: mount skipped (not required)");
                    return Ok(());
                }
                Err(_) => {
                    return Err(format!(
                        "secret `{}` is required and was not provided (list it in spec.secrets, or give `slimforge build --secret id={},src=FILE`)",
                        secret.id, secret.id
                    ));
                }
            };
            if let Some(name) = &secret.env {
                let text = String::from_utf8(value.clone()).map_err(|_| {
                    format!("secret `{}`: env={name} needs a UTF-8 value", secret.id)
                })?;
                mounted.env.insert(name.clone(), text);
            }
            let Some(_) = &secret.target else {
                return Ok(());
            };
            fs::create_dir_all(&paths.memory)
                .map_err(|e| format!("{}: {e}", paths.memory.display()))?;
            let copy = paths
                .memory
                .join(format!("secret-{}-{index}", std::process::id()));
            mounted.memory.push(copy.clone());
            // Made readable by root alone, then given to its owner and mode.
            File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&copy)
                .and_then(|mut file| std::io::Write::write_all(&mut file, &value))
                .and_then(|()| std::os::unix::fs::chown(&copy, Some(secret.uid), Some(secret.gid)))
                .and_then(|()| fs::set_permissions(&copy, fs::Permissions::from_mode(secret.mode)))
                .map_err(|e| format!("secret `{}`: {e}", secret.id))?;
            (copy, false)
        }
    };
    let Some(target) = mount.target() else {
        return Ok(());
    };
    mounted
        .placed
        .push(place(&paths.on_disk(target), backing, leave_dir)?);
    Ok(())
}

fn scratch(workspace: &Workspace) -> Result<ScratchDir, String> {
    let tmp = workspace.tmp();
    ScratchDir::new_in(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))
}

/// `into` made from `source` in the context, as a one-source COPY does.
fn copy_from_context(into: &Path, source: &str, sources: &MountSources<'_>) -> Result<(), String> {
    let root = SourceRoot {
        dir: sources.context,
        ignore: sources.ignore,
    };
    let rel = source.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    let matches = match_sources(&root, &[rel.to_string()]).map_err(|e| e.to_string())?;
    let request = CopyRequest {
        destination: into.to_path_buf(),
        destination_is_dir: false,
        owner: (0, 0),
        chmod: None,
        extract_archives: false,
    };
    copy_matches(&root, &matches, &request, &mut HardLinks::default())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// `into` made from `source` in the export a stage or image left.
fn fill(
    into: &Path,
    from: &CopySource,
    source: &str,
    sources: &MountSources<'_>,
    mounted: &mut Mounted,
) -> Result<(), String> {
    let (CopySource::Stage { exports, .. } | CopySource::Image { exports, .. }) = from else {
        return Err("a mount's from= names no stage or image".into());
    };
    let Some(export) = exports.first() else {
        return Err("a mount's from= has no export".into());
    };
    let dir = scratch(sources.workspace)?;
    let archive = sources.workspace.export_archive(export);
    extract_archive(&archive, dir.path(), Unpack::Scratch).map_err(|e| e.to_string())?;
    let found = dir.path().join(source.trim_start_matches('/'));
    if !found.exists() {
        return Err(format!("{source}: no such file or directory in from="));
    }
    if into.exists() {
        // A cache being seeded, on its own volume: a copy of the contents.
        let root = SourceRoot {
            dir: &found,
            ignore: None,
        };
        let matches = match_sources(&root, &[".".to_string()]).map_err(|e| e.to_string())?;
        let request = CopyRequest {
            destination: into.to_path_buf(),
            destination_is_dir: true,
            owner: (0, 0),
            chmod: None,
            extract_archives: false,
        };
        copy_matches(&root, &matches, &request, &mut HardLinks::default())
            .map_err(|e| e.to_string())?;
    } else {
        fs::rename(&found, into).map_err(|e| format!("{}: {e}", found.display()))?;
    }
    mounted.scratch.push(dir);
    Ok(())
}

/// `backing` made visible at `target` for the RUN.
fn place(target: &Path, backing: PathBuf, leave_dir: bool) -> Result<Placed, String> {
    let io = |p: &Path, e: std::io::Error| format!("--mount target {}: {e}", p.display());
    let mut made_parents = Vec::new();
    if let Some(parent) = target.parent() {
        let missing: Vec<&Path> = parent.ancestors().take_while(|a| !a.exists()).collect();
        for dir in missing.into_iter().rev() {
            fs::create_dir(dir).map_err(|e| io(dir, e))?;
            made_parents.push(dir.to_path_buf());
        }
    }
    let hidden = match fs::symlink_metadata(target) {
        Ok(_) => {
            let mut name = target.as_os_str().to_owned();
            name.push(format!(".slimforge-hidden-{}", std::process::id()));
            let hidden = PathBuf::from(name);
            fs::rename(target, &hidden).map_err(|e| io(target, e))?;
            Some(hidden)
        }
        Err(_) => None,
    };
    std::os::unix::fs::symlink(&backing, target).map_err(|e| io(target, e))?;
    Ok(Placed {
        target: target.to_path_buf(),
        backing,
        hidden,
        made_parents,
        leave_dir,
    })
}

impl Mounted {
    /// Takes every mount away, restores what the targets held, trims the
    /// caches, releases their locks and removes the copies. Every step is
    /// tried; the first error is returned.
    pub(super) fn unmount(mut self) -> Result<(), String> {
        let mut first_error = None;
        let mut keep = |r: Result<(), String>| {
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        };
        for placed in self.placed.drain(..).rev() {
            keep(unplace(placed));
        }
        for (data, limit) in &self.trim {
            keep(trim_cache(data, *limit).map(|_| ()));
        }
        for path in &self.memory {
            let removed = if path.is_dir() {
                fs::remove_dir_all(path)
            } else {
                fs::remove_file(path)
            };
            if let Err(e) = removed
                && e.kind() != std::io::ErrorKind::NotFound
            {
                keep(Err(format!("{}: {e}", path.display())));
            }
        }
        self.locks.clear();
        self.scratch.clear();
        first_error.map_or(Ok(()), Err)
    }
}

fn unplace(placed: Placed) -> Result<(), String> {
    let io = |p: &Path, e: std::io::Error| format!("--mount target {}: {e}", p.display());
    let target = &placed.target;
    let ours = fs::read_link(target).is_ok_and(|l| l == placed.backing);
    if ours {
        fs::remove_file(target).map_err(|e| io(target, e))?;
    }
    match &placed.hidden {
        Some(hidden) if ours => fs::rename(hidden, target).map_err(|e| io(target, e))?,
        Some(hidden) => {
            // The RUN replaced the mount: its result stays, the old content goes.
            let _ = fs::remove_dir_all(hidden).or_else(|_| fs::remove_file(hidden));
        }
        None if ours && placed.leave_dir => {
            // A file's mount point is an empty file, a directory's an empty directory.
            let (made, mode) = if placed.backing.is_file() {
                (File::create(target).map(|_| ()), 0o644)
            } else {
                (fs::create_dir(target), 0o755)
            };
            made.and_then(|()| fs::set_permissions(target, fs::Permissions::from_mode(mode)))
                .map_err(|e| io(target, e))?;
        }
        None => {}
    }
    if !placed.leave_dir {
        for dir in placed.made_parents.iter().rev() {
            if fs::remove_dir(dir).is_err() {
                break;
            }
        }
    }
    Ok(())
}

/// Keeps `data` under `limit` bytes: when over, the files used least
/// recently (the later of access and modification) go until it is under
/// [`TRIM_TO_PERCENT`] of the limit. Returns the bytes removed.
pub(super) fn trim_cache(data: &Path, limit: u64) -> Result<u64, String> {
    let mut files = Vec::new();
    let mut total = 0u64;
    for entry in walkdir::WalkDir::new(data).follow_links(false) {
        let Ok(entry) = entry else { continue };
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() {
            total += meta.len();
            let used = meta.atime().max(meta.mtime());
            files.push((used, meta.len(), entry.into_path()));
        }
    }
    if total <= limit {
        return Ok(0);
    }
    let goal = limit / 100 * TRIM_TO_PERCENT;
    files.sort();
    let mut removed = 0;
    for (_, size, path) in files {
        if total <= goal {
            break;
        }
        if fs::remove_file(&path).is_ok() {
            total -= size;
            removed += size;
        }
    }
    tracing::info!(cache = %data.display(), removed, kept = total, limit, "cache trimmed to its limit");
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::parse_mount;

    struct Fixture {
        dir: tempfile::TempDir,
        paths: MountPaths,
        workspace: Workspace,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        for d in [
            "root",
            "ws/tmp",
            "memory",
            "secrets",
            "context",
            "cache-volume",
        ] {
            fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let paths = MountPaths {
            root,
            // The tests name a cache by its volume's path.
            cache: |id| PathBuf::from(id),
            secrets: dir.path().join("secrets"),
            memory: dir.path().join("memory"),
            limits: BTreeMap::new(),
        };
        let workspace = Workspace::new(dir.path().join("ws"));
        Fixture {
            dir,
            paths,
            workspace,
        }
    }

    fn mount(f: &Fixture, specs: &[&str]) -> Result<Mounted, String> {
        let mounts: Vec<RunMount> = specs
            .iter()
            .map(|s| {
                let mut m = parse_mount(s).unwrap();
                m.resolve_target(Path::new("/app")).unwrap();
                m
            })
            .collect();
        let context = f.dir.path().join("context");
        let sources = MountSources {
            workspace: &f.workspace,
            context: &context,
            ignore: None,
        };
        mount_all(&mounts, &[], &f.paths, &sources)
    }

    #[test]
    fn a_cache_is_seen_at_its_target_and_the_image_gets_its_own_back() {
        let f = fixture();
        let volume = f.dir.path().join("cache-volume");
        let root = f.paths.root.clone();
        fs::create_dir_all(root.join("app/cache")).unwrap();
        fs::write(root.join("app/cache/image-file"), "image").unwrap();
        let id = volume.display().to_string();
        let m = mount(&f, &[&format!("type=cache,id={id},target=cache,mode=0700")]).unwrap();
        let seen = root.join("app/cache");
        assert!(
            !seen.join("image-file").exists(),
            "the image's files are hidden"
        );
        fs::write(seen.join("kept"), "cached").unwrap();
        m.unmount().unwrap();
        assert_eq!(
            fs::read_to_string(seen.join("image-file")).unwrap(),
            "image"
        );
        assert!(!seen.join("kept").exists(), "the cache is not in the image");
        let data = volume.join("data");
        assert_eq!(fs::read_to_string(data.join("kept")).unwrap(), "cached");
        assert_eq!(fs::metadata(&data).unwrap().mode() & 0o7777, 0o700);
        // A second RUN finds it.
        let m = mount(&f, &[&format!("type=cache,id={id},target=/elsewhere")]).unwrap();
        assert_eq!(
            fs::read_to_string(root.join("elsewhere/kept")).unwrap(),
            "cached"
        );
        m.unmount().unwrap();
        // Where nothing was, an empty directory stays, as BuildKit leaves it.
        assert!(
            fs::read_dir(root.join("elsewhere"))
                .unwrap()
                .next()
                .is_none()
        );
    }

    #[test]
    fn a_bind_from_the_context_discards_writes() {
        let f = fixture();
        let context = f.dir.path().join("context");
        fs::write(context.join("go.mod"), "module x\n").unwrap();
        let m = mount(&f, &["type=bind,source=go.mod,target=go.mod,rw"]).unwrap();
        let seen = f.paths.root.join("app/go.mod");
        assert_eq!(fs::read_to_string(&seen).unwrap(), "module x\n");
        fs::write(&seen, "changed\n").unwrap();
        m.unmount().unwrap();
        assert_eq!(
            fs::read_to_string(context.join("go.mod")).unwrap(),
            "module x\n"
        );
        let left = fs::metadata(&seen).unwrap();
        assert!(
            left.is_file() && left.len() == 0,
            "an empty mount point stays: {seen:?}"
        );
        assert_eq!(
            fs::read_dir(f.workspace.tmp()).unwrap().count(),
            0,
            "copies removed"
        );
    }

    #[test]
    fn a_secret_lives_in_memory_for_the_run_only_and_leaves_nothing() {
        let f = fixture();
        fs::write(f.paths.secrets.join("token"), "s3cr3t").unwrap();
        let m = mount(
            &f,
            &[
                "type=secret,id=token,mode=0440",
                "type=secret,id=token,env=TOKEN,target=/t",
            ],
        )
        .unwrap();
        let seen = f.paths.root.join("run/secrets/token");
        assert_eq!(fs::read_to_string(&seen).unwrap(), "s3cr3t");
        assert_eq!(fs::metadata(&seen).unwrap().mode() & 0o7777, 0o440);
        assert_eq!(m.env.get("TOKEN").map(String::as_str), Some("s3cr3t"));
        m.unmount().unwrap();
        assert!(
            !f.paths.root.join("run").exists(),
            "no mount point, no parents"
        );
        assert!(!f.paths.root.join("t").exists());
        assert_eq!(fs::read_dir(&f.paths.memory).unwrap().count(), 0);
        // Missing: skipped unless required, which names it.
        let m = mount(&f, &["type=secret,id=absent"]).unwrap();
        assert!(!f.paths.root.join("run/secrets/absent").exists());
        m.unmount().unwrap();
        let error = mount(&f, &["type=secret,id=absent,required"])
            .err()
            .unwrap();
        assert!(error.contains("secret `absent` is required"), "{error}");
    }

    #[test]
    fn a_failed_mount_undoes_the_ones_before_it() {
        let f = fixture();
        let error = mount(&f, &["type=tmpfs,target=/t", "type=secret,id=b,required"])
            .err()
            .unwrap();
        assert!(error.contains("`b`"), "{error}");
        assert!(
            f.paths.root.join("t").is_dir(),
            "mount point left as after a RUN"
        );
        assert!(
            fs::symlink_metadata(f.paths.root.join("t"))
                .unwrap()
                .is_dir()
        );
        assert_eq!(fs::read_dir(&f.paths.memory).unwrap().count(), 0);
    }

    #[test]
    fn a_second_user_waits_on_locked_and_gets_a_fresh_cache_on_private() {
        let f = fixture();
        let id = f.dir.path().join("cache-volume").display().to_string();
        let held = mount(
            &f,
            &[&format!("type=cache,id={id},target=/a,sharing=locked")],
        )
        .unwrap();
        fs::write(f.paths.root.join("a/file"), "first").unwrap();
        // A private user while it is held: its own, empty directory.
        let private = mount(
            &f,
            &[&format!("type=cache,id={id},target=/b,sharing=private")],
        )
        .unwrap();
        assert!(!f.paths.root.join("b/file").exists());
        private.unmount().unwrap();
        // A locked user waits until the first is done.
        let (done, waited) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let m = mount(
                &f,
                &[&format!("type=cache,id={id},target=/c,sharing=locked")],
            )
            .unwrap();
            done.send(fs::read_to_string(f.paths.root.join("c/file")).unwrap())
                .unwrap();
            m.unmount().unwrap();
        });
        assert!(
            waited
                .recv_timeout(std::time::Duration::from_millis(300))
                .is_err()
        );
        held.unmount().unwrap();
        assert_eq!(
            waited
                .recv_timeout(std::time::Duration::from_secs(10))
                .unwrap(),
            "first"
        );
        waiter.join().unwrap();
    }

    #[test]
    fn a_cache_over_its_limit_loses_its_oldest_files() {
        let dir = tempfile::tempdir().unwrap();
        for (i, name) in ["old", "mid", "new"].iter().enumerate() {
            let path = dir.path().join(name);
            fs::write(&path, vec![0u8; 1000]).unwrap();
            let when = std::time::SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(1_000_000 * (i as u64 + 1));
            File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_times(fs::FileTimes::new().set_accessed(when).set_modified(when))
                .unwrap();
        }
        assert_eq!(trim_cache(dir.path(), 3000).unwrap(), 0);
        assert_eq!(trim_cache(dir.path(), 2500).unwrap(), 1000);
        assert!(!dir.path().join("old").exists());
        assert!(dir.path().join("new").exists());
    }
}
