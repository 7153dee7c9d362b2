//! `stage probe`: runs in the final image's base, with no user code, and
//! evaluates the final stage there ([`crate::recipe`]), because only there
//! is it known where destinations really land (`/bin/app` → `/usr/bin/app`
//! when `/bin -> usr/bin`), which of the base's directories lie along the
//! way (so new layers keep /tmp's 1777), and what `--chown` names mean in
//! the base's own /etc/passwd and /etc/group. The lookups themselves are here.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::users::Users;
use super::{StageError, io_err};
use crate::plan::BuildPlan;
use crate::recipe::{FinalRecipe, RecipeError};

/// Linux gives up after 40 links in one lookup (ELOOP); so do we.
const MAX_SYMLINKS: usize = 40;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbeRequest {
    /// Absolute destinations of COPY/ADD; a trailing `/` names a directory.
    #[serde(default)]
    pub destinations: Vec<String>,
    /// `--chown` values: `user`, `user:group`, numeric ids or a mix.
    #[serde(default)]
    pub users: Vec<String>,
    /// The final WORKDIR, if any.
    #[serde(default)]
    pub workdir: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeResult {
    /// Each requested destination → its path in the base with the symlinks
    /// of its existing parents resolved.
    pub destinations: BTreeMap<String, String>,
    /// The base's directories along the resolved destinations (and the
    /// workdir): the assemble spec's `baseDirectories`, as is.
    pub base_directories: BTreeMap<String, BaseDirectoryEntry>,
    /// Each requested `--chown` value → numeric `uid:gid`, or why not.
    pub users: BTreeMap<String, UserResolution>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
}

/// One directory in the assemble spec's `baseDirectories` shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseDirectoryEntry {
    /// Octal, with setuid/setgid/sticky: `1777`.
    pub mode: String,
    /// Numeric `uid:gid`.
    pub owner: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UserResolution {
    /// Numeric `uid:gid`.
    Owner(String),
    Error(String),
}

/// `stage probe`: evaluates the plan's final image where this process runs
/// (its `/`, environment and cwd are the base's) and writes the
/// [`FinalRecipe`] as JSON to `result`.
/// A failure is a result too: `{"status": "failed", "error": …}` naming
/// the line, so the build's status says what is wrong.
pub fn probe_plan(plan: Option<&Path>, result: &Path) -> Result<FinalRecipe, RecipeError> {
    let recipe = BuildPlan::load(plan)
        .map_err(RecipeError::from)
        .and_then(|plan| crate::recipe::evaluate_here(&plan));
    match recipe {
        Ok(recipe) => {
            let json = serde_json::to_vec_pretty(&recipe).map_err(|e| StageError::Invalid {
                path: result.to_path_buf(),
                what: e.to_string(),
            })?;
            super::publish_result(result, &json)?;
            Ok(recipe)
        }
        Err(e) => {
            super::publish_result(result, super::failure_json(&e.to_string()).as_bytes())?;
            Err(e)
        }
    }
}

/// Answers `request` about the filesystem whose `/` is `root`: the lookups
/// the recipe is made of, for a list of paths and users.
pub fn probe(root: &Path, request: &ProbeRequest) -> Result<ProbeResult, StageError> {
    let mut result = ProbeResult::default();
    for destination in &request.destinations {
        let resolved = resolve_destination(root, destination)?;
        add_directories(root, &resolved, &mut result.base_directories)?;
        result
            .destinations
            .insert(destination.clone(), resolved.display().to_string());
    }
    if let Some(workdir) = &request.workdir {
        // WORKDIR creates the directory through every link, the last one too.
        let resolved = resolve(root, Path::new(workdir), true)?;
        add_directories(root, &resolved, &mut result.base_directories)?;
        result.workdir = Some(resolved.display().to_string());
    }
    if !request.users.is_empty() {
        let users = Users::parse(
            &read_table(root, "etc/passwd")?,
            &read_table(root, "etc/group")?,
        );
        for user in &request.users {
            let resolution = match users.resolve_chown(user) {
                Ok((uid, gid)) => UserResolution::Owner(format!("{uid}:{gid}")),
                Err(e) => UserResolution::Error(e),
            };
            result.users.insert(user.clone(), resolution);
        }
    }
    Ok(result)
}

/// A COPY destination: its parents resolved; its last component too when it
/// names a directory (trailing `/`) or is an existing directory (or a link to one).
pub(crate) fn resolve_destination(root: &Path, destination: &str) -> Result<PathBuf, StageError> {
    let path = Path::new(destination);
    if !path.has_root() {
        return Err(StageError::Invalid {
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
pub fn resolve(root: &Path, path: &Path, follow_last: bool) -> Result<PathBuf, StageError> {
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
        let on_disk = disk_path(root, &resolved).join(&part);
        let meta = match fs::symlink_metadata(&on_disk) {
            Ok(meta) => meta,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                resolved.push(part);
                continue;
            }
            Err(e) => return Err(io_err(&on_disk)(e)),
        };
        if meta.file_type().is_symlink() && (follow_last || !is_last) {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(StageError::Invalid {
                    path: path.to_path_buf(),
                    what: "too many levels of symbolic links".into(),
                });
            }
            let target = fs::read_link(&on_disk).map_err(io_err(&on_disk))?;
            if target.has_root() {
                resolved.clear();
            }
            let mut target = components(&target);
            target.reverse();
            pending.extend(target);
            continue;
        }
        resolved.push(part);
    }
    let mut out = PathBuf::from("/");
    out.extend(resolved);
    Ok(out)
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

fn disk_path(root: &Path, parts: &[OsString]) -> PathBuf {
    let mut path = root.to_path_buf();
    path.extend(parts);
    path
}

fn in_root(root: &Path, image_path: &Path) -> PathBuf {
    root.join(image_path.strip_prefix("/").unwrap_or(image_path))
}

pub(crate) fn is_dir(root: &Path, image_path: &Path) -> bool {
    fs::symlink_metadata(in_root(root, image_path)).is_ok_and(|m| m.is_dir())
}

/// The existing directories among `resolved` and its ancestors (not `/`).
pub(crate) fn add_directories(
    root: &Path,
    resolved: &Path,
    out: &mut BTreeMap<String, BaseDirectoryEntry>,
) -> Result<(), StageError> {
    for dir in resolved.ancestors() {
        if dir == Path::new("/") {
            break;
        }
        let on_disk = in_root(root, dir);
        let meta = match fs::symlink_metadata(&on_disk) {
            Ok(meta) if meta.is_dir() => meta,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                continue;
            }
            Err(e) => return Err(io_err(&on_disk)(e)),
        };
        out.insert(
            dir.display().to_string(),
            BaseDirectoryEntry {
                mode: format!("{:04o}", meta.mode() & 0o7777),
                owner: format!("{}:{}", meta.uid(), meta.gid()),
            },
        );
    }
    Ok(())
}

/// The text of /etc/passwd or /etc/group, found through the base's links; a
/// missing file is empty (scratch-like bases).
pub(crate) fn read_table(root: &Path, file: &str) -> Result<String, StageError> {
    let path = resolve(root, &Path::new("/").join(file), true)?;
    let on_disk = in_root(root, &path);
    match fs::read(&on_disk) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(String::new())
        }
        Err(e) => Err(io_err(&on_disk)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    /// A merged-/usr base: /bin → usr/bin, /sbin → /usr/sbin, /tmp 1777.
    fn base() -> tempfile::TempDir {
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

    fn request(destinations: &[&str], users: &[&str], workdir: Option<&str>) -> ProbeRequest {
        ProbeRequest {
            destinations: destinations.iter().map(|s| s.to_string()).collect(),
            users: users.iter().map(|s| s.to_string()).collect(),
            workdir: workdir.map(str::to_string),
        }
    }

    #[test]
    fn destinations_resolve_through_relative_absolute_and_chained_links() {
        let base = base();
        let result = probe(
            base.path(),
            &request(
                &[
                    "/bin/app",
                    "/sbin/init",
                    "/opt/srv/x",
                    "/data/up/bin/tool",
                    "/usr/local/bin/x",
                    "/new/dir/f",
                    "/bin/",
                ],
                &[],
                None,
            ),
        )
        .unwrap();
        let d = &result.destinations;
        assert_eq!(d["/bin/app"], "/usr/bin/app");
        assert_eq!(d["/sbin/init"], "/usr/sbin/init");
        assert_eq!(d["/opt/srv/x"], "/data/srv/x");
        // `..` never climbs above the root.
        assert_eq!(d["/data/up/bin/tool"], "/usr/bin/tool");
        assert_eq!(d["/usr/local/bin/x"], "/usr/local/bin/x");
        assert_eq!(d["/new/dir/f"], "/new/dir/f");
        assert_eq!(d["/bin/"], "/usr/bin");
    }

    #[test]
    fn a_symlink_loop_is_an_error() {
        let base = base();
        let err = probe(base.path(), &request(&["/loop1/x"], &[], None)).unwrap_err();
        assert!(err.to_string().contains("too many levels"), "{err}");
    }

    #[test]
    fn base_directories_are_the_existing_parents_in_the_assemble_shape() {
        let base = base();
        let result = probe(
            base.path(),
            &request(&["/tmp/f", "/bin/app"], &[], Some("/opt/srv")),
        )
        .unwrap();
        let uid = fs::metadata(base.path()).unwrap().uid();
        let gid = fs::metadata(base.path()).unwrap().gid();
        let json = serde_json::to_value(&result.base_directories).unwrap();
        assert_eq!(json["/tmp"]["mode"], "1777");
        assert_eq!(json["/tmp"]["owner"], format!("{uid}:{gid}"));
        assert_eq!(json["/usr/bin"]["mode"], "0755");
        let keys: Vec<_> = result.base_directories.keys().cloned().collect();
        assert_eq!(keys, ["/data", "/data/srv", "/tmp", "/usr", "/usr/bin"]);
        assert_eq!(result.workdir.as_deref(), Some("/data/srv"));
        // Directly usable as the spec's field.
        let spec: BTreeMap<String, crate::assemble::DirectorySpec> =
            serde_json::from_value(json).unwrap();
        assert_eq!(spec["/tmp"].mode, "1777");
    }

    #[test]
    fn users_follow_dockers_chown_rules() {
        let base = base();
        let users = [
            "nobody",
            "app",
            "app:staff",
            "app:0",
            "1000",
            "1000:50",
            "0:staff",
            "ghost",
            "app:ghosts",
        ];
        let result = probe(base.path(), &request(&[], &users, None)).unwrap();
        let owner = |u: &str| match &result.users[u] {
            UserResolution::Owner(o) => o.clone(),
            UserResolution::Error(e) => panic!("{u}: {e}"),
        };
        assert_eq!(owner("nobody"), "65534:65534");
        assert_eq!(owner("app"), "1000:1001");
        assert_eq!(owner("app:staff"), "1000:50");
        assert_eq!(owner("app:0"), "1000:0");
        assert_eq!(owner("1000"), "1000:1000");
        assert_eq!(owner("1000:50"), "1000:50");
        assert_eq!(owner("0:staff"), "0:50");
        assert_eq!(
            result.users["ghost"],
            UserResolution::Error("unknown user `ghost`: not in the image's /etc/passwd".into())
        );
        assert!(
            matches!(&result.users["app:ghosts"], UserResolution::Error(e) if e.contains("`ghosts`"))
        );
        let json = serde_json::to_value(&result).unwrap();
        assert_eq!(
            json["users"]["nobody"],
            serde_json::json!({"owner": "65534:65534"})
        );
    }

    #[test]
    fn names_in_a_base_without_etc_passwd_are_errors_and_numbers_pass() {
        let dir = tempfile::tempdir().unwrap();
        let result = probe(dir.path(), &request(&[], &["root", "10:20"], None)).unwrap();
        assert!(matches!(&result.users["root"], UserResolution::Error(_)));
        assert_eq!(result.users["10:20"], UserResolution::Owner("10:20".into()));
    }
}
