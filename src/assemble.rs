//! The assemble step: base (or scratch) + new layers + config changes →
//! an image pushed to a registry. Base layers never pass through here when
//! the registry can mount them, and never touch the disk when it can't.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use oci_client::Reference;
use serde::Deserialize;
use serde_json::{Value, json};

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::contract::{AssembleResult, InlineFile};
use crate::dockerfile::DockerIgnore;
use crate::oci::Platform;
use crate::oci::config::{self, AddedLayer, ConfigChanges, ConfigError};
use crate::oci::layer::{
    self, BaseDirectory, LayerDigests, LayerError, LayerOptions, LayerSource, LayerWriter,
};
use crate::oci::registry::{
    self, DOCKER_MANIFEST, OCI_MANIFEST, Registry, RegistryError, RegistryOptions,
};
use crate::rootfs::copy::{CopyRequest, SourceRoot, copy as copy_files, is_archive, match_source};

const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Base blobs transferred at once.
const PARALLEL_BLOBS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error("spec {path}: {detail}")]
    Spec { path: PathBuf, detail: String },
    #[error("spec: {0}")]
    Invalid(String),
    #[error("layers[{index}]: {source}")]
    Layer {
        index: usize,
        #[source]
        source: LayerError,
    },
    #[error("layers[{index}] ({created_by}): {detail}")]
    Copy {
        index: usize,
        created_by: String,
        detail: String,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("base {reference}: {detail}")]
    Base { reference: String, detail: String },
    #[error("{0}")]
    Io(String),
}

/// What the assemble step is asked to do (YAML or JSON).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AssembleSpec {
    /// Base image reference, or `scratch`.
    pub base: String,
    /// For a multi-platform base; also the platform of a scratch image.
    pub platform: Option<String>,
    #[serde(default)]
    pub layers: Vec<LayerSpec>,
    #[serde(default)]
    pub config: ConfigChanges,
    pub target: String,
    #[serde(default)]
    pub additional_tags: Vec<String>,
    #[serde(default)]
    pub insecure: bool,
    /// dockerconfigjson for every registry involved.
    pub auth: Option<PathBuf>,
    /// Extra trusted CA certificates (PEM).
    pub ca_bundle: Option<PathBuf>,
    /// The base's directories as the probe found them (`/tmp: {mode: "1777"}`):
    /// parents of new files that are listed here keep the base's mode and owner.
    #[serde(default)]
    pub base_directories: BTreeMap<String, DirectorySpec>,
    /// Scratch space for layers and unpacked exports (the assemble pod's
    /// root filesystem is read-only); default: the system's temp directory.
    pub work_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectorySpec {
    /// Octal mode, e.g. `1777`.
    pub mode: String,
    /// Numeric `uid:gid`, default `0:0`.
    pub owner: Option<String>,
}

/// One layer: files from disk at a destination, a ready tar, or a COPY.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LayerSpec {
    pub source: Option<PathBuf>,
    pub destination: Option<String>,
    /// Numeric `uid:gid`.
    pub owner: Option<String>,
    /// Octal mode, e.g. `0755`.
    pub chmod: Option<String>,
    /// A tar (plain or gzip), taken as is: e.g. a snapshot diff with whiteouts.
    pub tar: Option<PathBuf>,
    /// The history entry, e.g. the Dockerfile instruction.
    pub created_by: Option<String>,
    /// A Dockerfile COPY/ADD with Docker's rules; `owner` and `chmod` apply.
    pub copy: Option<CopyLayerSpec>,
}

/// COPY/ADD onto an image that is not on this disk: sources matched (globs,
/// `.dockerignore`) in a directory or inside export archives, copied with
/// Docker's rules (a directory copies its contents, a file into a directory
/// keeps its name, several sources need a directory), modes kept unless
/// `chmod`, owners `owner` (default 0:0), no parents but the base's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CopyLayerSpec {
    /// The directory `sources` are relative to (the build context); its
    /// `.dockerignore` applies.
    pub root: Option<PathBuf>,
    /// Export archives (gzip tars named by matched path, see
    /// `stage::run`): `sources[i]` is matched inside `archives[i]`.
    #[serde(default)]
    pub archives: Vec<PathBuf>,
    #[serde(default)]
    pub sources: Vec<String>,
    /// Inline files (heredocs), mode 0644 unless `chmod`.
    #[serde(default)]
    pub files: Vec<InlineFile>,
    /// Absolute in the image, symlinks of the base already resolved.
    pub destination: String,
    /// Written as a directory (trailing `/`, several sources) or one in the
    /// base. With nothing to copy, the layer is that directory alone (WORKDIR).
    #[serde(default)]
    pub destination_is_dir: bool,
    /// ADD: local tar archives from `root` are extracted.
    #[serde(default)]
    pub extract: bool,
}

impl AssembleSpec {
    /// Reads a spec; relative paths in it are taken from the spec's directory.
    pub fn load(path: &Path) -> Result<Self, AssembleError> {
        let spec_error = |detail: String| AssembleError::Spec {
            path: path.to_path_buf(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| spec_error(e.to_string()))?;
        // YAML is a superset of JSON: one parser for both.
        let mut spec: Self = serde_yaml::from_str(&text).map_err(|e| spec_error(e.to_string()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        for layer in &mut spec.layers {
            layer.source.as_mut().map(resolve);
            layer.tar.as_mut().map(resolve);
            if let Some(copy) = &mut layer.copy {
                copy.root.as_mut().map(resolve);
                copy.archives.iter_mut().for_each(resolve);
            }
        }
        spec.work_dir.as_mut().map(resolve);
        spec.auth.as_mut().map(resolve);
        spec.ca_bundle.as_mut().map(resolve);
        Ok(spec)
    }
}

/// A layer spec checked and made ready to write.
enum LayerPlan {
    Files(LayerSource),
    Tar(PathBuf),
    Copy(CopyPlan),
}

/// A COPY layer checked: owner and mode parsed.
struct CopyPlan {
    spec: CopyLayerSpec,
    owner: (u64, u64),
    chmod: Option<u32>,
}

fn plan_layers(spec: &AssembleSpec) -> Result<Vec<(LayerPlan, String)>, AssembleError> {
    let invalid =
        |index: usize, detail: String| AssembleError::Invalid(format!("layers[{index}]: {detail}"));
    spec.layers
        .iter()
        .enumerate()
        .map(|(index, l)| {
            let owner = l
                .owner
                .as_deref()
                .map(|o| {
                    parse_owner(o).ok_or_else(|| {
                        invalid(index, format!("owner `{o}` is not numeric uid:gid"))
                    })
                })
                .transpose()?;
            let chmod = l
                .chmod
                .as_deref()
                .map(|m| {
                    parse_mode(m)
                        .ok_or_else(|| invalid(index, format!("chmod `{m}` is not an octal mode")))
                })
                .transpose()?;
            let plan = match (&l.source, &l.tar, &l.copy) {
                (Some(source), None, None) => {
                    let destination = l
                        .destination
                        .clone()
                        .ok_or_else(|| invalid(index, "`source` needs a `destination`".into()))?;
                    if !source.exists() && source.symlink_metadata().is_err() {
                        return Err(invalid(
                            index,
                            format!("source {} does not exist", source.display()),
                        ));
                    }
                    LayerPlan::Files(LayerSource {
                        source: source.clone(),
                        destination,
                        owner,
                        chmod,
                    })
                }
                (None, Some(tar), None) => {
                    if l.destination.is_some() || l.owner.is_some() || l.chmod.is_some() {
                        return Err(invalid(
                            index,
                            "`tar` is taken as is: no destination, owner or chmod".into(),
                        ));
                    }
                    LayerPlan::Tar(tar.clone())
                }
                (None, None, Some(copy)) => {
                    if l.destination.is_some() {
                        return Err(invalid(index, "`copy` has its own `destination`".into()));
                    }
                    check_copy(copy).map_err(|detail| invalid(index, format!("copy: {detail}")))?;
                    LayerPlan::Copy(CopyPlan {
                        spec: copy.clone(),
                        owner: owner.unwrap_or((0, 0)),
                        chmod,
                    })
                }
                _ => {
                    return Err(invalid(
                        index,
                        "give exactly one of `source`, `tar` or `copy`".into(),
                    ));
                }
            };
            let created_by = l.created_by.clone().unwrap_or_else(|| match &plan {
                LayerPlan::Files(s) => format!("COPY {} {}", s.source.display(), s.destination),
                LayerPlan::Tar(t) => format!("ADD {}", t.display()),
                LayerPlan::Copy(c) => {
                    format!("COPY {} {}", c.spec.sources.join(" "), c.spec.destination)
                }
            });
            Ok((plan, created_by))
        })
        .collect()
}

fn check_copy(copy: &CopyLayerSpec) -> Result<(), String> {
    if !copy.destination.starts_with('/') {
        return Err(format!(
            "destination `{}` must be absolute",
            copy.destination
        ));
    }
    match (&copy.root, copy.archives.is_empty()) {
        (Some(_), false) => Err("give `root` or `archives`, not both".into()),
        (None, true) if !copy.sources.is_empty() => {
            Err("`sources` need a `root` or `archives`".into())
        }
        (None, false) if copy.archives.len() != copy.sources.len() => {
            Err("`archives` and `sources` pair up: one source per archive".into())
        }
        _ if copy.sources.is_empty() && copy.files.is_empty() && !copy.destination_is_dir => {
            Err("nothing to copy: no `sources`, no `files`, and no directory to make".into())
        }
        _ => Ok(()),
    }
}

/// Writes one COPY layer: the sources are first copied with Docker's rules
/// into a staging tree under `work` (exports unpacked there first, modes
/// kept, owned by this user), then written from there with the spec's
/// owner. `made` holds directories earlier layers of this image created.
fn write_copy_layer(
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

fn parse_mode(mode: &str) -> Option<u32> {
    u32::from_str_radix(mode, 8).ok().filter(|m| *m <= 0o7777)
}

fn base_directories(spec: &AssembleSpec) -> Result<BTreeMap<String, BaseDirectory>, AssembleError> {
    spec.base_directories
        .iter()
        .map(|(path, dir)| {
            let invalid =
                |what: &str| AssembleError::Invalid(format!("baseDirectories[{path}]: {what}"));
            let mode = parse_mode(&dir.mode).ok_or_else(|| invalid("mode is not octal"))?;
            let (uid, gid) = match &dir.owner {
                Some(owner) => parse_owner(owner).ok_or_else(|| invalid("owner is not uid:gid"))?,
                None => (0, 0),
            };
            Ok((path.clone(), BaseDirectory { mode, uid, gid }))
        })
        .collect()
}

fn parse_owner(owner: &str) -> Option<(u64, u64)> {
    let (uid, gid) = owner.split_once(':').unwrap_or((owner, owner));
    Some((uid.parse().ok()?, gid.parse().ok()?))
}

/// The target's extra tags as references in the same repository.
fn tag_references(target: &Reference, tags: &[String]) -> Result<Vec<Reference>, AssembleError> {
    tags.iter()
        .map(|tag| {
            registry::parse_reference(&format!("{}:{tag}", registry::repository_name(target)))
                .map_err(|_| {
                    AssembleError::Invalid(format!("additionalTags: `{tag}` is not a valid tag"))
                })
        })
        .collect()
}

/// Writes the new layers into `dir`, one file each, on blocking threads.
async fn write_layers(
    plans: Vec<(LayerPlan, String)>,
    base_dirs: BTreeMap<String, BaseDirectory>,
    dir: &Path,
) -> Result<Vec<(PathBuf, LayerDigests, String)>, AssembleError> {
    let options = LayerOptions::default();
    let mut written = Vec::new();
    // Directories COPY layers created, for the layers after them.
    let mut made: BTreeMap<String, BaseDirectory> = BTreeMap::new();
    for (index, (plan, created_by)) in plans.into_iter().enumerate() {
        let out = dir.join(format!("layer-{index}.tar.gz"));
        let path = out.clone();
        let base_dirs = base_dirs.clone();
        let work = dir.to_path_buf();
        let what = created_by.clone();
        let (digests, made_now) = tokio::task::spawn_blocking(move || match plan {
            LayerPlan::Files(source) => {
                let mut writer = LayerWriter::create(&path, options)
                    .map_err(|source| AssembleError::Layer { index, source })?
                    .with_base_directories(&base_dirs);
                writer
                    .add(&source)
                    .and_then(|()| writer.finish())
                    .map(|d| (d, made))
                    .map_err(|source| AssembleError::Layer { index, source })
            }
            LayerPlan::Tar(tar) => layer::layer_from_tar(&tar, &path)
                .map(|d| (d, made))
                .map_err(|source| AssembleError::Layer { index, source }),
            LayerPlan::Copy(copy) => {
                let mut made = made;
                write_copy_layer(&copy, &base_dirs, &mut made, &work, &path, options)
                    .map(|d| (d, made))
                    .map_err(|detail| AssembleError::Copy {
                        index,
                        created_by: what,
                        detail,
                    })
            }
        })
        .await
        .map_err(|e| AssembleError::Io(format!("layer writer stopped: {e}")))??;
        made = made_now;
        tracing::info!(layer = index, digest = %digests.digest, size = digests.size, "layer written");
        written.push((out, digests, created_by));
    }
    Ok(written)
}

/// Base layers into the target repository: already there, mounted from the
/// base's repository on the same registry, or streamed across.
async fn transfer_base_blobs(
    registry: &Registry,
    base: &Reference,
    target: &Reference,
    layers: &[Value],
) -> Result<(), AssembleError> {
    let same_registry = base.resolve_registry() == target.resolve_registry();
    let same_repository = same_registry && base.repository() == target.repository();
    futures::stream::iter(layers.iter().map(Ok))
        .try_for_each_concurrent(PARALLEL_BLOBS, |layer| async move {
            let digest = layer["digest"].as_str().unwrap_or_default();
            let size = layer["size"].as_u64().unwrap_or_default();
            let media_type = layer["mediaType"].as_str().unwrap_or_default();
            // Foreign layers live outside the registry and are never pushed.
            if media_type.contains("foreign") || media_type.contains("nondistributable") {
                return Ok(());
            }
            if same_repository || registry.blob_exists(target, digest).await? {
                tracing::debug!(%digest, "base layer already in the target repository");
                return Ok(());
            }
            if same_registry && registry.mount(target, base, digest).await? {
                tracing::debug!(%digest, "base layer mounted");
                return Ok(());
            }
            tracing::info!(%digest, size, "copying base layer");
            registry.copy_blob(base, target, digest, size).await?;
            Ok::<_, AssembleError>(())
        })
        .await
}

/// Runs the whole assembly and pushes the result.
pub async fn assemble(spec: &AssembleSpec) -> Result<AssembleResult, AssembleError> {
    let platform: Platform = match &spec.platform {
        Some(p) => p
            .parse()
            .map_err(|detail| AssembleError::Invalid(format!("platform: {detail}")))?,
        None => Platform::default(),
    };
    let target = registry::parse_reference(&spec.target)?;
    if target.digest().is_some() {
        return Err(AssembleError::Invalid(format!(
            "target `{}` must be a tag, not a digest",
            spec.target
        )));
    }
    let extra_tags = tag_references(&target, &spec.additional_tags)?;
    let base = match spec.base.trim() {
        "scratch" => None,
        other => Some(registry::parse_reference(other)?),
    };
    let plans = plan_layers(spec)?;
    let base_dirs = base_directories(spec)?;

    let options = RegistryOptions {
        insecure: spec.insecure,
        ca_bundle: spec.ca_bundle.clone(),
        auth_file: spec.auth.clone(),
    };
    let mut references = vec![&target];
    references.extend(base.as_ref());
    let registry = Registry::connect(&options, &references).await?;
    registry
        .authorize_push(&target, &base.iter().collect::<Vec<_>>())
        .await?;

    let scratch = spec.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&scratch)
        .map_err(|e| AssembleError::Io(format!("{}: {e}", scratch.display())))?;
    let work = tempfile::Builder::new()
        .prefix("slimforge-assemble-")
        .tempdir_in(&scratch)
        .map_err(|e| {
            AssembleError::Io(format!("temporary directory in {}: {e}", scratch.display()))
        })?;
    // New layers are written while the base's blobs move registry-side.
    let layers_written = write_layers(plans, base_dirs, work.path());

    let base_part = async {
        let Some(base) = &base else {
            return Ok::<_, AssembleError>((
                None,
                config::scratch_config(&platform),
                Vec::new(),
                OCI_MANIFEST.to_string(),
            ));
        };
        let pinned = registry.resolve(base, &platform).await?;
        tracing::info!(base = %base, digest = %pinned.digest, "base pinned");
        let manifest: Value =
            serde_json::from_slice(&pinned.bytes).map_err(|e| AssembleError::Base {
                reference: base.to_string(),
                detail: format!("manifest is not JSON: {e}"),
            })?;
        let config_digest =
            manifest["config"]["digest"]
                .as_str()
                .ok_or_else(|| AssembleError::Base {
                    reference: base.to_string(),
                    detail: "manifest has no config".into(),
                })?;
        let config_bytes = registry
            .blob_bytes(&pinned.reference, config_digest)
            .await?;
        let config: Value =
            serde_json::from_slice(&config_bytes).map_err(|e| AssembleError::Base {
                reference: base.to_string(),
                detail: format!("config is not JSON: {e}"),
            })?;
        let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
        transfer_base_blobs(&registry, &pinned.reference, &target, &layers).await?;
        Ok((
            Some(pinned.reference.to_string()),
            config,
            layers,
            pinned.media_type,
        ))
    };
    let (written, base_part) = tokio::join!(layers_written, base_part);
    let written = written?;
    let (base_pinned, mut image_config, mut manifest_layers, base_media_type) = base_part?;

    let docker = base_media_type == DOCKER_MANIFEST;
    let (manifest_type, config_type, layer_type) = if docker {
        (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER)
    } else {
        (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER)
    };

    let added: Vec<AddedLayer> = written
        .iter()
        .map(|(_, digests, created_by)| AddedLayer {
            diff_id: digests.diff_id.clone(),
            created_by: created_by.clone(),
        })
        .collect();
    let created = config::rfc3339(layer::source_date_epoch());
    config::apply(&mut image_config, &spec.config, &added, &created)?;
    let config_bytes = serde_json::to_vec(&image_config)
        .map_err(|e| AssembleError::Io(format!("serialising the config: {e}")))?;
    let config_digest = registry::sha256_digest(&config_bytes);

    // The config depends on the layers' diffIDs, not on their upload: all go at once.
    let push_layers = futures::stream::iter(written.iter().map(Ok)).try_for_each_concurrent(
        PARALLEL_BLOBS,
        |(path, digests, _)| {
            let registry = &registry;
            let target = &target;
            async move {
                if !registry.blob_exists(target, &digests.digest).await? {
                    registry
                        .push_file(target, path, &digests.digest, digests.size)
                        .await?;
                }
                Ok::<_, AssembleError>(())
            }
        },
    );
    let push_config = async {
        if !registry.blob_exists(&target, &config_digest).await? {
            registry
                .push_bytes(&target, &config_bytes, &config_digest)
                .await?;
        }
        Ok::<_, AssembleError>(())
    };
    futures::try_join!(push_layers, push_config)?;

    manifest_layers.extend(written.iter().map(|(_, digests, _)| {
        json!({"mediaType": layer_type, "digest": digests.digest, "size": digests.size})
    }));
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": config_digest, "size": config_bytes.len()},
        "layers": manifest_layers,
    });
    // The digest is of these exact bytes; nothing re-serialises them.
    let manifest_bytes = serde_json::to_vec(&manifest)
        .map_err(|e| AssembleError::Io(format!("serialising the manifest: {e}")))?;
    let digest = registry::sha256_digest(&manifest_bytes);
    for reference in std::iter::once(&target).chain(&extra_tags) {
        registry
            .push_manifest(reference, &manifest_bytes, manifest_type)
            .await?;
        tracing::info!(reference = %reference, %digest, "pushed");
    }

    let size_bytes = config_bytes.len() as u64
        + manifest_layers
            .iter()
            .map(|l| l["size"].as_u64().unwrap_or_default())
            .sum::<u64>();
    Ok(AssembleResult {
        reference: format!("{}@{digest}", registry::repository_name(&target)),
        digest,
        size_bytes,
        layers: written.into_iter().map(|(_, d, _)| d).collect(),
        base: base_pinned,
        builder_image: None,
        builder_size_bytes: None,
    })
}

/// The compressed size of `image` for `platform` (config and layers), as its
/// registry says: only the manifest is read.
pub async fn compressed_size(
    image: &str,
    platform: &str,
    options: &RegistryOptions,
) -> Result<u64, AssembleError> {
    let reference = registry::parse_reference(image)?;
    let platform: Platform = platform
        .parse()
        .map_err(|e| AssembleError::Invalid(format!("platform `{platform}`: {e}")))?;
    let registry = Registry::connect(options, &[&reference]).await?;
    let manifest = registry.resolve(&reference, &platform).await?;
    let value: Value =
        serde_json::from_slice(&manifest.bytes).map_err(|e| AssembleError::Base {
            reference: image.to_string(),
            detail: format!("manifest: {e}"),
        })?;
    let size = |v: &Value| v["size"].as_u64().unwrap_or(0);
    Ok(size(&value["config"])
        + value["layers"]
            .as_array()
            .map(|layers| layers.iter().map(size).sum())
            .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> AssembleSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn spec_reads_the_documented_fields() {
        let spec = spec(
            r#"
base: 127.0.0.1:5000/busybox:latest
platform: linux/amd64
layers:
  - source: out/app
    destination: /app
    owner: "0:0"
    chmod: "0755"
  - tar: snapshot.tar
config:
  entrypoint: ["/app"]
  cmd: ["--help"]
  env: ["KEY=value"]
  user: "65532"
  workingDir: /
  exposedPorts: ["8080/tcp"]
  labels: {org.opencontainers.image.source: "https://example.com/repo"}
  stopSignal: SIGTERM
  volumes: ["/data"]
  healthcheck: {test: ["CMD", "/app", "--health"]}
target: 127.0.0.1:5000/goapp:v1
additionalTags: [latest]
insecure: true
auth: /path/to/config.json
"#,
        );
        assert_eq!(spec.layers.len(), 2);
        assert_eq!(spec.config.user.as_deref(), Some("65532"));
        assert_eq!(spec.additional_tags, ["latest"]);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_yaml::from_str::<AssembleSpec>("base: scratch\ntarget: x/y\nbse: 1\n")
            .unwrap_err();
        assert!(err.to_string().contains("bse"), "{err}");
    }

    #[test]
    fn layer_needs_exactly_one_kind() {
        let both =
            spec("base: scratch\ntarget: r/x\nlayers: [{source: a, tar: b, destination: /a}]");
        let err = plan_layers(&both).err().unwrap();
        assert!(err.to_string().contains("layers[0]"), "{err}");
        let bad_owner =
            spec("base: scratch\ntarget: r/x\nlayers: [{source: /, destination: /a, owner: root}]");
        let err = plan_layers(&bad_owner).err().unwrap();
        assert!(err.to_string().contains("owner `root`"), "{err}");
    }

    #[test]
    fn copy_layers_pair_archives_with_sources_and_need_something_to_copy() {
        let layers = spec(
            "base: scratch\ntarget: r/x\nworkDir: ws/tmp\nlayers:\n\
             - copy: {archives: [a.tar], sources: [/go/app], destination: /usr/bin, destinationIsDir: true}\n  owner: '65534:65534'\n\
             - copy: {destination: /srv, destinationIsDir: true}\n",
        );
        let plans = plan_layers(&layers).unwrap();
        let LayerPlan::Copy(copy) = &plans[0].0 else {
            panic!("a copy layer")
        };
        assert_eq!(copy.owner, (65534, 65534));
        assert_eq!(plans[0].1, "COPY /go/app /usr/bin");
        for (bad, expected) in [
            (
                "{archives: [a.tar, b.tar], sources: [/a], destination: /x}",
                "pair up",
            ),
            (
                "{sources: [/a], destination: /x}",
                "need a `root` or `archives`",
            ),
            (
                "{root: ctx, archives: [a.tar], sources: [/a], destination: /x}",
                "not both",
            ),
            ("{destination: /x}", "nothing to copy"),
            (
                "{root: ctx, sources: [a], destination: x}",
                "must be absolute",
            ),
        ] {
            let spec = spec(&format!(
                "base: scratch\ntarget: r/x\nlayers: [{{copy: {bad}}}]"
            ));
            let err = plan_layers(&spec).err().unwrap().to_string();
            assert!(
                err.contains("layers[0]: copy:") && err.contains(expected),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn owner_parses_uid_and_optional_gid() {
        assert_eq!(parse_owner("1000:100"), Some((1000, 100)));
        assert_eq!(parse_owner("1000"), Some((1000, 1000)));
        assert_eq!(parse_owner("app"), None);
    }
}
