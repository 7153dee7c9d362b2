//! The build context of a chain pod, as `$SLIMFORGE_CONTEXT` describes it
//! (JSON, externally tagged, camelCase):
//!
//! - `{"inline": {"app.go": "package main…", "cmd/x/main.go": "…"}}`: files
//!   at relative `/`-separated paths, 0644, parents 0755;
//! - `{"configMap": {"dir": "/.slimforge-src", "items": [{"key": "app.go",
//!   "path": "src/app.go", "mode": 493}]}}`: a ConfigMap volume mounted at
//!   `dir`. Without items every key is a file of its own name, 0644; with
//!   items only those keys, at `path`, with `mode` as Kubernetes writes it
//!   (the decimal value of the octal mode: 420 is 0644; default 0644).
//!   The kubelet's own entries (`..data`, `..2026_11_27_…`) are skipped;
//! - `{"dir": "/.slimforge/source/app"}`: a directory already there (a git
//!   checkout), used as it is.
//!
//! Inline and ConfigMap contexts are written under the workspace's `tmp/`
//! by [`BuildContext::materialise`] and removed when the returned
//! [`Materialised`] is dropped.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::contract::CONTEXT_ENV;
/// Mode of a file without one (inline files, ConfigMap keys without items).
const FILE_MODE: u32 = 0o644;
/// Mode of the directories a materialised context needs.
const DIR_MODE: u32 = 0o755;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BuildContext {
    /// Relative `/`-separated path → content.
    Inline(BTreeMap<String, String>),
    ConfigMap(ConfigMapContext),
    /// A directory already in the pod, used as it is.
    Dir(PathBuf),
}

/// A ConfigMap volume and which of its keys make the context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigMapContext {
    /// Where the volume is mounted.
    pub dir: PathBuf,
    /// Empty: every key, as a file of its own name, 0644.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
}

/// Kubernetes' `KeyToPath`: one key, where it goes, its mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyToPath {
    pub key: String,
    /// Relative, `/`-separated.
    pub path: String,
    /// Permission bits as an integer (420 = 0644); 0644 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("${CONTEXT_ENV}: {0}")]
    Parse(#[source] serde_json::Error),
    #[error("context path `{path}`: {why}")]
    BadPath { path: String, why: &'static str },
    #[error("configMap {dir}: key `{key}`: {why}")]
    BadKey {
        dir: PathBuf,
        key: String,
        why: String,
    },
    #[error("configMap {dir}: no key `{key}`")]
    MissingKey { dir: PathBuf, key: String },
    #[error("context directory {0}: not a directory")]
    NotADirectory(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ContextError + '_ {
    move |source| ContextError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The context directory of a chain; a materialised one is removed on drop.
#[derive(Debug)]
pub struct Materialised {
    dir: PathBuf,
    owned: bool,
}

impl Materialised {
    /// A directory that is there already and stays.
    pub fn existing(dir: PathBuf) -> Self {
        Self { dir, owned: false }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Materialised {
    fn drop(&mut self) {
        if self.owned
            && let Err(e) = crate::rootfs::remove_tree(&self.dir)
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "context not removed");
        }
    }
}

impl BuildContext {
    pub fn parse(json: &str) -> Result<Self, ContextError> {
        serde_json::from_str(json).map_err(ContextError::Parse)
    }

    /// The context directory for `chain`: inline and ConfigMap contexts are
    /// written to `scratch/context-<chain>/` (a name made safe), a `dir`
    /// context is checked and used as it is.
    pub fn materialise(&self, scratch: &Path, chain: &str) -> Result<Materialised, ContextError> {
        if let BuildContext::Dir(dir) = self {
            if !dir.is_dir() {
                return Err(ContextError::NotADirectory(dir.clone()));
            }
            return Ok(Materialised::existing(dir.clone()));
        }
        let dir = scratch.join(scratch_name(chain));
        // A pod that ran before (a retry) may have left one behind.
        if fs::symlink_metadata(&dir).is_ok() {
            crate::rootfs::remove_tree(&dir).map_err(io_err(&dir))?;
        }
        create_dir(&dir)?;
        // From here on the directory goes away whatever happens.
        let materialised = Materialised { dir, owned: true };
        let root = materialised.dir.clone();
        match self {
            BuildContext::Inline(files) => {
                for (path, content) in files {
                    let rel = checked_path(path)?;
                    write_file(&root, &rel, content.as_bytes(), FILE_MODE)?;
                }
            }
            BuildContext::ConfigMap(config_map) => config_map.write_into(&root)?,
            BuildContext::Dir(_) => unreachable!("handled above"),
        }
        Ok(materialised)
    }
}

impl ConfigMapContext {
    fn write_into(&self, root: &Path) -> Result<(), ContextError> {
        if !self.dir.is_dir() {
            return Err(ContextError::NotADirectory(self.dir.clone()));
        }
        if self.items.is_empty() {
            let mut names = Vec::new();
            for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
                let name = entry.map_err(io_err(&self.dir))?.file_name();
                // `..data` and the timestamped directory it points to.
                if !name.as_encoded_bytes().starts_with(b"..") {
                    names.push(name);
                }
            }
            names.sort();
            for name in names {
                copy_key_tree(&self.dir.join(&name), &root.join(&name))?;
            }
            return Ok(());
        }
        for item in &self.items {
            let key_error = |why: String| ContextError::BadKey {
                dir: self.dir.clone(),
                key: item.key.clone(),
                why,
            };
            if item.key.is_empty()
                || item.key.contains('/')
                || item.key.starts_with("..")
                || item.key == "."
            {
                return Err(key_error("not a ConfigMap key".into()));
            }
            let mode = item.mode.unwrap_or(FILE_MODE);
            if mode > 0o777 {
                return Err(key_error(format!(
                    "mode {mode} is not between 0 and 511 (0777): Kubernetes gives the octal mode as a decimal integer, 420 for 0644"
                )));
            }
            let rel = checked_path(&item.path)?;
            let source = self.dir.join(&item.key);
            let content = match fs::read(&source) {
                Ok(content) => content,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(ContextError::MissingKey {
                        dir: self.dir.clone(),
                        key: item.key.clone(),
                    });
                }
                Err(e) => return Err(io_err(&source)(e)),
            };
            write_file(root, &rel, &content, mode)?;
        }
        Ok(())
    }
}

/// A key of a volume without items: a file (through the kubelet's
/// symlinks), or a directory when the volume was mounted with its own items.
fn copy_key_tree(source: &Path, target: &Path) -> Result<(), ContextError> {
    let meta = fs::metadata(source).map_err(io_err(source))?;
    if meta.is_dir() {
        create_dir(target)?;
        let mut entries = Vec::new();
        for entry in fs::read_dir(source).map_err(io_err(source))? {
            entries.push(entry.map_err(io_err(source))?.file_name());
        }
        entries.sort();
        for name in entries {
            copy_key_tree(&source.join(&name), &target.join(&name))?;
        }
    } else if meta.is_file() {
        let content = fs::read(source).map_err(io_err(source))?;
        create_file(target, &content, FILE_MODE)?;
    }
    Ok(())
}

/// `path` split into its names, when it is relative, `/`-separated, and
/// every name is a real one (no empty name, `.` or `..`).
fn checked_path(path: &str) -> Result<Vec<&str>, ContextError> {
    let bad = |why| ContextError::BadPath {
        path: path.to_string(),
        why,
    };
    if path.is_empty() {
        return Err(bad("empty"));
    }
    if path.starts_with('/') {
        return Err(bad("absolute: context paths are relative"));
    }
    if path.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    let names: Vec<&str> = path.split('/').collect();
    for name in &names {
        match *name {
            "" => return Err(bad("empty name (`//` or a trailing `/`)")),
            "." => return Err(bad("`.` is not a file name")),
            ".." => return Err(bad("`..` would leave the context")),
            _ => {}
        }
    }
    Ok(names)
}

/// Writes `root/<names…>` with `mode`, creating missing parents (0755).
fn write_file(root: &Path, names: &[&str], content: &[u8], mode: u32) -> Result<(), ContextError> {
    let Some((file, parents)) = names.split_last() else {
        return Ok(());
    };
    let mut dir = root.to_path_buf();
    for name in parents {
        dir.push(name);
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(ContextError::BadPath {
                    path: names.join("/"),
                    why: "a parent is a file given in the same context",
                });
            }
            Err(_) => create_dir(&dir)?,
        }
    }
    create_file(&dir.join(file), content, mode)
}

/// A new directory, 0755 whatever the umask.
fn create_dir(dir: &Path) -> Result<(), ContextError> {
    fs::create_dir(dir).map_err(io_err(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE)).map_err(io_err(dir))
}

/// A new file (never one written already: two paths naming one file is an
/// error), `mode` whatever the umask.
fn create_file(path: &Path, content: &[u8], mode: u32) -> Result<(), ContextError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(content).map_err(io_err(path))?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err(path))
}

/// `context-<chain>`, see [`crate::contract::scratch_name`].
fn scratch_name(chain: &str) -> String {
    crate::contract::scratch_name("context", chain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, symlink};

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn the_json_shapes_parse() {
        let inline = BuildContext::parse(r#"{"inline": {"a/b.go": "x"}}"#).unwrap();
        assert_eq!(
            inline,
            BuildContext::Inline([("a/b.go".to_string(), "x".to_string())].into())
        );
        let config_map = BuildContext::parse(
            r#"{"configMap": {"dir": "/src", "items": [{"key": "k", "path": "p/q", "mode": 493}]}}"#,
        )
        .unwrap();
        assert_eq!(
            config_map,
            BuildContext::ConfigMap(ConfigMapContext {
                dir: "/src".into(),
                items: vec![KeyToPath {
                    key: "k".into(),
                    path: "p/q".into(),
                    mode: Some(0o755),
                }],
            })
        );
        assert_eq!(
            BuildContext::parse(r#"{"dir": "/x"}"#).unwrap(),
            BuildContext::Dir("/x".into())
        );
        let err = BuildContext::parse(r#"{"git": {}}"#).unwrap_err();
        assert!(err.to_string().contains("unknown variant `git`"), "{err}");
        let err = BuildContext::parse(r#"{"configMap": {"dir": "/x", "item": []}}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `item`"), "{err}");
    }

    #[test]
    fn inline_files_get_their_paths_and_modes_and_go_away_on_drop() {
        let ws = tempfile::tempdir().unwrap();
        let context = BuildContext::Inline(
            [
                ("app.go".to_string(), "package main\n".to_string()),
                ("cmd/x/main.go".to_string(), "x".to_string()),
            ]
            .into(),
        );
        let dir = context.materialise(ws.path(), "builder").unwrap();
        let root = dir.path().to_path_buf();
        assert_eq!(root, ws.path().join("context-builder"));
        assert_eq!(fs::read_to_string(root.join("cmd/x/main.go")).unwrap(), "x");
        assert_eq!(mode(&root.join("app.go")), 0o644);
        assert_eq!(mode(&root.join("cmd/x/main.go")), 0o644);
        assert_eq!(mode(&root.join("cmd")), 0o755);
        assert_eq!(mode(&root.join("cmd/x")), 0o755);
        drop(dir);
        assert!(!root.exists());
    }

    #[test]
    fn bad_inline_paths_are_named_and_leave_nothing_behind() {
        let ws = tempfile::tempdir().unwrap();
        for path in ["/etc/passwd", "../x", "a/../../x", "a//b", "a/", "", "./a"] {
            let context = BuildContext::Inline(
                [
                    ("ok".to_string(), String::new()),
                    (path.to_string(), String::new()),
                ]
                .into(),
            );
            let err = context.materialise(ws.path(), "c").unwrap_err();
            assert!(
                err.to_string().contains(&format!("`{path}`")),
                "{path}: {err}"
            );
            assert_eq!(fs::read_dir(ws.path()).unwrap().count(), 0, "{path}");
        }
        // A file and a directory of the same name.
        let context = BuildContext::Inline(
            [
                ("a".to_string(), String::new()),
                ("a/b".to_string(), String::new()),
            ]
            .into(),
        );
        let err = context.materialise(ws.path(), "c").unwrap_err();
        assert!(err.to_string().contains("`a/b`"), "{err}");
    }

    /// The layout the kubelet makes for a ConfigMap volume.
    fn config_map_volume(keys: &[(&str, &str)]) -> tempfile::TempDir {
        let volume = tempfile::tempdir().unwrap();
        let stamp = "..2026_11_27_21_00_00.123456789";
        fs::create_dir(volume.path().join(stamp)).unwrap();
        for (key, content) in keys {
            fs::write(volume.path().join(stamp).join(key), content).unwrap();
            symlink(format!("..data/{key}"), volume.path().join(key)).unwrap();
        }
        symlink(stamp, volume.path().join("..data")).unwrap();
        volume
    }

    #[test]
    fn a_config_map_without_items_gives_every_key_and_nothing_of_the_kubelets() {
        let volume = config_map_volume(&[("app.go", "a"), ("go.mod", "m")]);
        let ws = tempfile::tempdir().unwrap();
        let context = BuildContext::ConfigMap(ConfigMapContext {
            dir: volume.path().to_path_buf(),
            items: vec![],
        });
        let dir = context.materialise(ws.path(), "b").unwrap();
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["app.go", "go.mod"]);
        let app = dir.path().join("app.go");
        assert!(fs::symlink_metadata(&app).unwrap().is_file());
        assert_eq!(mode(&app), 0o644);
        assert_eq!(fs::read_to_string(app).unwrap(), "a");
    }

    #[test]
    fn config_map_items_pick_keys_paths_and_modes() {
        let volume = config_map_volume(&[("run.sh", "#!/bin/sh\n"), ("app.go", "a")]);
        let ws = tempfile::tempdir().unwrap();
        let context = BuildContext::parse(&format!(
            r#"{{"configMap": {{"dir": "{}", "items": [
                {{"key": "run.sh", "path": "bin/tools/run.sh", "mode": 493}},
                {{"key": "app.go", "path": "src/app.go"}}]}}}}"#,
            volume.path().display()
        ))
        .unwrap();
        let dir = context.materialise(ws.path(), "b").unwrap();
        assert_eq!(mode(&dir.path().join("bin/tools/run.sh")), 0o755);
        assert_eq!(mode(&dir.path().join("src/app.go")), 0o644);
        assert!(!dir.path().join("run.sh").exists());

        let missing = BuildContext::ConfigMap(ConfigMapContext {
            dir: volume.path().to_path_buf(),
            items: vec![KeyToPath {
                key: "main.go".into(),
                path: "main.go".into(),
                mode: None,
            }],
        });
        let err = missing.materialise(ws.path(), "c").unwrap_err();
        assert!(err.to_string().contains("no key `main.go`"), "{err}");
        for (key, path, mode, named) in [
            ("..data", "x", None, "`..data`"),
            ("run.sh", "/x", None, "`/x`"),
            ("run.sh", "x", Some(644), "mode 644"),
        ] {
            let bad = BuildContext::ConfigMap(ConfigMapContext {
                dir: volume.path().to_path_buf(),
                items: vec![KeyToPath {
                    key: key.into(),
                    path: path.into(),
                    mode,
                }],
            });
            let err = bad.materialise(ws.path(), "c").unwrap_err();
            assert!(err.to_string().contains(named), "{err}");
        }
        assert!(!ws.path().join("context-c").exists());
    }

    #[test]
    fn a_dir_context_is_used_as_it_is_and_kept() {
        let src = tempfile::tempdir().unwrap();
        let ws = tempfile::tempdir().unwrap();
        let context = BuildContext::Dir(src.path().to_path_buf());
        drop(context.materialise(ws.path(), "b").unwrap());
        assert!(src.path().is_dir());
        let gone = BuildContext::Dir(src.path().join("nope"));
        let err = gone.materialise(ws.path(), "b").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn chain_ids_make_safe_directory_names() {
        assert_eq!(scratch_name("builder"), "context-builder");
        assert_eq!(scratch_name("0"), "context-0");
        let odd = scratch_name("a/b c");
        assert!(odd.starts_with("context-a_b_c-"), "{odd}");
        assert_ne!(odd, scratch_name("a_b_c"));
        assert!(!scratch_name("../x").contains('/'));
        assert!(scratch_name(&"x".repeat(500)).len() < 100);
    }
}
