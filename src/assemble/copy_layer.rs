//! One COPY/ADD layer onto an image that is not on this disk: the sources
//! matched and copied with Docker's rules into a staging tree, then written
//! with the layer's owner.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::layers::CopyPlan;
use crate::dockerfile::DockerIgnore;
use crate::oci::layer::{BaseDirectory, LayerDigests, LayerOptions, LayerSource, LayerWriter};
use crate::rootfs::copy::{CopyRequest, SourceRoot, copy as copy_files, is_archive, match_source};

/// Writes one COPY layer: the sources are first copied with Docker's rules
/// into a staging tree under `work` (exports unpacked there first, modes
/// kept, owned by this user), then written from there with the spec's
/// owner. `made` holds directories earlier layers of this image created.
pub(super) fn write_copy_layer(
    copy: &CopyPlan,
    base_dirs: &BTreeMap<String, BaseDirectory>,
    made: &mut BTreeMap<String, BaseDirectory>,
    work: &Path,
    out: &Path,
    options: LayerOptions,
) -> Result<LayerDigests, String> {
    let spec = &copy.spec;
    let me = crate::rootfs::users::current_ids().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(work).map_err(|e| format!("{}: {e}", work.display()))?;
    let staging = tempfile::Builder::new()
        .prefix("copy-")
        .tempdir_in(work)
        .map_err(|e| format!("{}: {e}", work.display()))?;
    let destination = Path::new(&spec.destination);
    let staged = staging
        .path()
        .join("out")
        .join(destination.strip_prefix("/").unwrap_or(destination));

    // The sources, each under the root it is matched in.
    let ignore = match &spec.root {
        Some(root) => read_dockerignore(root)?,
        None => None,
    };
    let mut sources: Vec<(PathBuf, String)> = Vec::new();
    for (i, archive) in spec.archives.iter().enumerate() {
        let dir = staging.path().join(format!("export-{i}"));
        unpack_unowned(archive, &dir, me.0 == 0)?;
        sources.push((dir, spec.sources[i].clone()));
    }
    if let Some(root) = &spec.root {
        sources.extend(spec.sources.iter().map(|s| (root.clone(), s.clone())));
    }
    let mut matched = spec.files.len();
    for (root, source) in &sources {
        let found = match_source(
            root,
            source,
            ignore.as_ref().filter(|_| spec.root.as_ref() == Some(root)),
        )
        .map_err(|e| e.to_string())?;
        if found.is_empty() {
            return Err(format!(
                "{source}: no such file or directory in the {}",
                if spec.root.as_ref() == Some(root) {
                    "build context (or excluded by .dockerignore)"
                } else {
                    "export"
                }
            ));
        }
        matched += found.len();
    }
    let destination_is_dir =
        spec.destination_is_dir || matched > 1 || made.contains_key(&spec.destination);
    // copy.rs creates missing parents root-owned, which only root may do:
    // the staged ones exist beforehand (0755, as it makes them).
    let premade = if destination_is_dir {
        staged.clone()
    } else {
        staged
            .parent()
            .map_or_else(|| staged.clone(), Path::to_path_buf)
    };
    make_dirs(&staging.path().join("out"), &premade).map_err(|e| e.to_string())?;
    for (root, source) in &sources {
        let from_context = spec.root.as_ref() == Some(root);
        let source_root = SourceRoot {
            dir: root,
            ignore: ignore.as_ref().filter(|_| from_context),
        };
        let request = CopyRequest {
            destination: staged.clone(),
            destination_is_dir,
            owner: me,
            chmod: copy.chmod,
            extract_archives: false,
        };
        if !(spec.extract && from_context) {
            copy_files(&source_root, std::slice::from_ref(source), &request)
                .map_err(|e| e.to_string())?;
            continue;
        }
        // ADD: copy.rs extracts keeping the archive's owners, which only
        // root may do; here owners come from the layer anyway.
        for found in match_source(root, source, source_root.ignore).map_err(|e| e.to_string())? {
            let archive =
                found.disk.is_file() && is_archive(&found.disk).map_err(|e| e.to_string())?;
            if archive {
                make_dirs(&staging.path().join("out"), &staged)?;
                unpack_unowned(&found.disk, &staged, me.0 == 0)?;
            } else {
                copy_files(&source_root, &[format!("/{}", found.rel)], &request)
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    for file in &spec.files {
        let target = if destination_is_dir || staged.is_dir() {
            staged.join(&file.name)
        } else {
            staged.clone()
        };
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&target, &file.content).map_err(|e| format!("{}: {e}", target.display()))?;
        std::fs::set_permissions(
            &target,
            std::fs::Permissions::from_mode(copy.chmod.unwrap_or(0o644)),
        )
        .map_err(|e| format!("{}: {e}", target.display()))?;
    }

    // The layer: what landed at the destination, with the base's parents
    // and those earlier layers made.
    let mut parents = base_dirs.clone();
    parents.extend(made.iter().map(|(k, v)| (k.clone(), *v)));
    let staged_meta =
        std::fs::metadata(&staged).map_err(|e| format!("{}: {e}", staged.display()))?;
    if staged_meta.is_dir() && spec.destination != "/" {
        let created = BaseDirectory {
            mode: staged_meta.mode() & 0o7777,
            uid: copy.owner.0,
            gid: copy.owner.1,
        };
        let entry = *parents.entry(spec.destination.clone()).or_insert(created);
        made.insert(spec.destination.clone(), entry);
    }
    let mut writer = LayerWriter::create(out, options)
        .map_err(|e| e.to_string())?
        .with_base_directories(&parents);
    writer
        .add(&LayerSource {
            source: staged,
            destination: spec.destination.clone(),
            owner: Some(copy.owner),
            chmod: None,
        })
        .map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())
}

/// Creates `dir` and its missing parents below `top`, 0755.
fn make_dirs(top: &Path, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for made in dir.ancestors().take_while(|d| d.starts_with(top)) {
        std::fs::set_permissions(made, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", made.display()))?;
    }
    Ok(())
}

fn read_dockerignore(root: &Path) -> Result<Option<DockerIgnore>, String> {
    let path = root.join(".dockerignore");
    match std::fs::read_to_string(&path) {
        Ok(text) => DockerIgnore::parse(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Unpacks an export archive as any user: modes kept, owners left to the
/// layer; xattrs only as root (an unprivileged user may not set `security.*`).
fn unpack_unowned(archive: &Path, dest: &Path, xattrs: bool) -> Result<(), String> {
    let failed = |e: std::io::Error| format!("{}: {e}", archive.display());
    std::fs::create_dir_all(dest).map_err(failed)?;
    let mut file = std::fs::File::open(archive).map_err(failed)?;
    let mut magic = [0u8; 2];
    let n = std::io::Read::read(&mut file, &mut magic).map_err(failed)?;
    let file = std::fs::File::open(archive).map_err(failed)?;
    let reader: Box<dyn std::io::Read> = if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut tar = tar::Archive::new(reader);
    tar.set_preserve_permissions(true);
    tar.set_preserve_ownerships(false);
    tar.set_unpack_xattrs(xattrs);
    tar.set_overwrite(true);
    tar.unpack(dest).map_err(failed)
}
