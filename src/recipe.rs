//! The final image's recipe: the final stage evaluated where the base's
//! filesystem and environment are (the probe pod; an empty root for
//! scratch), because the assemble pod that follows it has neither; and the
//! assemble spec made from it. The workspace files it reads and writes are
//! [`crate::contract`]'s.
//!
//! The Dockerfile's rules are [`crate::dockerfile::eval`]'s. What is done
//! here with their results: a COPY/ADD destination lands where the base's
//! symlinks lead, and is a directory too when the base has one there;
//! `--chown` names come from the base's /etc/passwd and /etc/group; a
//! WORKDIR the base lacks is a layer of its own: the directory, 0755, owned
//! by the USER set before it (root when none: the base's own USER is not
//! known here). Not done: SHELL is not recorded in the config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::assemble::{
    AssembleSpec, CacheChainSpec, CacheExportSpec, CacheImageSpec, CacheLayersSpec, CacheStoreSpec,
    CopyLayerSpec, DirectorySpec, LayerSpec,
};
use crate::contract::{
    BaseEnvironment, CacheStore, ExportSource, FinalRecipe, InlineFile, LayerOrigin, PROBE_RESULT,
    RECIPE_ENV, RecipeLayer, SNAPSHOT_LAYER, Workspace,
};
use crate::dockerfile::eval::{CopyPlan, DEFAULT_PATH, Effect, Evaluator, image_env};
use crate::plan::{BuildPlan, Chain, CopySource, FinalImage, PlanLoadError, RuntimePlan, Step};
use crate::rootfs::FsError;
use crate::rootfs::resolve::{
    BaseDirectoryEntry, add_directories, is_dir, resolve, resolve_destination,
};
use crate::rootfs::tree::Tree;
use crate::rootfs::users::Users;

/// Variables the runtime or the kubelet put in the probe's environment that
/// are not the image's ENV (HOME is judged on its own).
const INJECTED_VARIABLES: &[&str] = &[
    "HOSTNAME",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "KUBERNETES_SERVICE_PORT_HTTPS",
    "KUBERNETES_PORT",
];

/// Why no recipe (or no assemble spec) could be made.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("line {line}: {instruction}: {message}")]
    Step {
        line: usize,
        /// The instruction's first line as written.
        instruction: String,
        message: String,
    },
    #[error(transparent)]
    Plan(#[from] PlanLoadError),
    #[error("plan: {0}")]
    InvalidPlan(String),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

impl RecipeError {
    /// The Dockerfile line the error is about, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Step { line, .. } => Some(*line),
            _ => None,
        }
    }
}

/// The base as the evaluation sees it.
#[derive(Clone)]
pub struct BaseView<'a> {
    /// The base's filesystem: its `/` on disk (`&path`), or its layers.
    pub root: &'a dyn Tree,
    /// The image's ENV.
    pub env: BTreeMap<String, String>,
    /// The image's WORKDIR (`/` when it has none).
    pub workdir: PathBuf,
}

impl std::fmt::Debug for BaseView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BaseView")
            .field("env", &self.env)
            .field("workdir", &self.workdir)
            .finish_non_exhaustive()
    }
}

/// Evaluates the plan's final image in the filesystem this process runs in:
/// `/`, its environment (minus what runtimes inject) and its cwd.
pub fn evaluate_here(plan: &BuildPlan) -> Result<FinalRecipe, RecipeError> {
    let root = Path::new("/");
    let workdir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let env = image_environment(std::env::vars_os(), root);
    evaluate(
        plan,
        &BaseView {
            root: &root,
            env,
            workdir,
        },
    )
}

/// Evaluates a final image on `scratch`: nothing in the base, only
/// numeric `--chown`, Docker's default PATH. Its empty root is made in
/// `work` (the assemble pod may write nowhere else).
pub fn evaluate_scratch(plan: &BuildPlan, work: &Path) -> Result<FinalRecipe, RecipeError> {
    let io = |e: std::io::Error| RecipeError::File {
        path: work.to_path_buf(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(work).map_err(io)?;
    let empty = tempfile::Builder::new()
        .prefix("scratch-")
        .tempdir_in(work)
        .map_err(io)?;
    let env = BTreeMap::from([("PATH".to_string(), DEFAULT_PATH.to_string())]);
    evaluate(
        plan,
        &BaseView {
            root: &empty.path(),
            env,
            workdir: PathBuf::from("/"),
        },
    )
}

/// The image's ENV from a process environment: non-UTF-8 variables, ours
/// and the runtime's dropped; HOME too when it is what the runtime sets for
/// this user (the passwd home) rather than the image's own.
pub fn image_environment(
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    root: &(impl Tree + ?Sized),
) -> BTreeMap<String, String> {
    let env: BTreeMap<String, String> = vars
        .into_iter()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| {
            !INJECTED_VARIABLES.contains(&k.as_str())
                && !crate::contract::POD_ENV.contains(&k.as_str())
                && !k.starts_with("KUBERNETES_PORT_")
        })
        .collect();
    let uid = crate::rootfs::users::current_ids().map_or(0, |(uid, _)| uid);
    let users = Users::read(root).unwrap_or_default();
    image_env(env, &users.home(uid))
}

/// Evaluates the plan's final image against `base`.
pub fn evaluate(plan: &BuildPlan, base: &BaseView<'_>) -> Result<FinalRecipe, RecipeError> {
    let mut evaluation = Evaluation::new(plan, base);
    match &plan.final_image {
        FinalImage::Assemble(assemble) => {
            evaluation.stage(&assemble.steps, false)?;
        }
        FinalImage::Runtime(runtime) => {
            let chain = runtime_chain(plan, runtime)?;
            // Files come from the snapshot; the stages give the config.
            for stage in &chain.stages {
                evaluation.stage(&stage.steps, true)?;
            }
            evaluation.layers.push(RecipeLayer {
                line: runtime.stage.line,
                created_by: format!(
                    "slimforge snapshot of stage {}: {}",
                    runtime.stage.id(),
                    runtime.reason
                ),
                source: LayerOrigin::Snapshot {
                    path: SNAPSHOT_LAYER.into(),
                },
                destination: None,
                destination_is_dir: false,
                owner: None,
                chmod: None,
                extract: false,
            });
        }
    }
    let mut recipe = evaluation.finish();
    recipe.base_environment = Some(BaseEnvironment {
        env: base.env.clone(),
        workdir: base.workdir.display().to_string(),
    });
    Ok(recipe)
}

struct Evaluation<'a> {
    root: &'a dyn Tree,
    rules: Evaluator,
    users: Option<Users>,
    layers: Vec<RecipeLayer>,
    base_directories: BTreeMap<String, BaseDirectoryEntry>,
}

impl<'a> Evaluation<'a> {
    fn new(plan: &'a BuildPlan, base: &BaseView<'a>) -> Self {
        Self {
            root: base.root,
            rules: Evaluator::new(plan.escape, base.env.clone(), base.workdir.clone()),
            users: None,
            layers: Vec::new(),
            base_directories: BTreeMap::new(),
        }
    }

    fn finish(self) -> FinalRecipe {
        FinalRecipe {
            layers: self.layers,
            config: self.rules.config(),
            base_directories: self.base_directories,
            base_environment: None,
        }
    }

    /// One stage's steps; `config_only` skips COPY/ADD (a snapshot has the files).
    fn stage(&mut self, steps: &[Step], config_only: bool) -> Result<(), RecipeError> {
        self.rules.start_stage();
        for step in steps {
            self.step(step, config_only)
                .map_err(|message| RecipeError::Step {
                    line: step.line,
                    instruction: step.text.lines().next().unwrap_or_default().to_string(),
                    message,
                })?;
        }
        Ok(())
    }

    fn users(&mut self) -> Result<&Users, String> {
        if self.users.is_none() {
            self.users = Some(Users::read(self.root).map_err(|e| e.to_string())?);
        }
        Ok(self.users.get_or_insert_with(Users::default))
    }

    fn step(&mut self, step: &Step, config_only: bool) -> Result<(), String> {
        match self.rules.apply(&step.instruction, &step.args)? {
            Effect::Workdir(dir) => self.workdir(step, &dir, config_only)?,
            Effect::Copy(copy) if !config_only => {
                let layer = self.copy(step, copy)?;
                self.layers.push(layer);
            }
            // A runtime chain's RUNs are in its snapshot; an assembled final
            // stage has none (the planner makes it a runtime chain).
            Effect::Copy(_) | Effect::Run(_) | Effect::User(_) | Effect::None => {}
        }
        Ok(())
    }

    /// A WORKDIR: the base's directories along it; the directory itself, a
    /// layer of its own, when neither the base nor a COPY made it.
    fn workdir(&mut self, step: &Step, dir: &Path, config_only: bool) -> Result<(), String> {
        let resolved = resolve(self.root, dir, true).map_err(|e| e.to_string())?;
        add_directories(self.root, &resolved, &mut self.base_directories)
            .map_err(|e| e.to_string())?;
        let destination = resolved.display().to_string();
        let exists = is_dir(self.root, &resolved)
            || self
                .layers
                .iter()
                .any(|l| l.destination_is_dir && l.destination.as_deref() == Some(&destination));
        if config_only || exists {
            return Ok(());
        }
        // Docker creates it, owned by the USER set so far.
        let owner = match self.rules.user().map(str::to_string) {
            Some(user) => {
                let (uid, gid) = self
                    .users()?
                    .resolve_user(&user)
                    .map_err(|e| format!("USER {user}: {e}"))?;
                format!("{uid}:{gid}")
            }
            None => "0:0".into(),
        };
        self.layers.push(RecipeLayer {
            line: step.line,
            created_by: one_line(&step.text),
            source: LayerOrigin::Directory,
            destination: Some(destination),
            destination_is_dir: true,
            owner: Some(owner),
            chmod: None,
            extract: false,
        });
        Ok(())
    }

    fn copy(&mut self, step: &Step, copy: CopyPlan) -> Result<RecipeLayer, String> {
        let mut as_text = copy.destination.display().to_string();
        if copy.is_dir() && as_text != "/" {
            as_text.push('/');
        }
        let resolved = resolve_destination(self.root, &as_text).map_err(|e| e.to_string())?;
        let destination_is_dir = copy.is_dir() || is_dir(self.root, &resolved);
        add_directories(self.root, &resolved, &mut self.base_directories)
            .map_err(|e| e.to_string())?;
        let owner = match &copy.chown {
            Some(spec) => {
                let (uid, gid) = self
                    .users()?
                    .resolve_chown(spec)
                    .map_err(|e| format!("--chown={spec}: {e}"))?;
                format!("{uid}:{gid}")
            }
            None => "0:0".into(),
        };
        let files = copy
            .files
            .into_iter()
            .map(|(name, content)| InlineFile { name, content })
            .collect();
        let source = match &step.source {
            Some(CopySource::Stage { paths, exports, .. })
            | Some(CopySource::Image { paths, exports, .. }) => {
                if paths.len() != exports.len() {
                    return Err("the plan gives a different number of paths and exports".into());
                }
                LayerOrigin::Exports {
                    exports: exports
                        .iter()
                        .zip(paths)
                        .map(|(id, path)| ExportSource {
                            id: id.clone(),
                            path: path.clone(),
                        })
                        .collect(),
                }
            }
            Some(CopySource::Inline) => LayerOrigin::Inline { files },
            Some(CopySource::Context) | None => LayerOrigin::Context {
                paths: copy.sources,
                files,
            },
        };
        let extract = copy.add && matches!(source, LayerOrigin::Context { .. });
        Ok(RecipeLayer {
            line: step.line,
            created_by: one_line(&step.text),
            source,
            destination: Some(resolved.display().to_string()),
            destination_is_dir,
            owner: Some(owner),
            chmod: copy.chmod.map(|bits| format!("{bits:04o}")),
            extract,
        })
    }
}

fn one_line(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines.join(" ")
}

/// Where the assembled image goes and how the registries are reached.
#[derive(Debug, Clone, Default)]
pub struct AssembleOutput {
    pub image: String,
    pub additional_tags: Vec<String>,
    pub insecure: bool,
    pub auth: Option<PathBuf>,
    pub ca_bundle: Option<PathBuf>,
}

/// The chain a runtime final image is the snapshot of.
fn runtime_chain<'p>(plan: &'p BuildPlan, runtime: &RuntimePlan) -> Result<&'p Chain, RecipeError> {
    plan.chain(&runtime.chain).ok_or_else(|| {
        RecipeError::InvalidPlan(format!(
            "the final image's chain `{}` is not in the plan",
            runtime.chain
        ))
    })
}

/// The base of the plan's final image (an image reference or `scratch`) and its platform.
pub fn final_base(plan: &BuildPlan) -> Result<(String, String), RecipeError> {
    match &plan.final_image {
        FinalImage::Assemble(assemble) => Ok((assemble.base.clone(), assemble.platform.clone())),
        FinalImage::Runtime(runtime) => {
            let chain = runtime_chain(plan, runtime)?;
            Ok((runtime.base.clone(), chain.platform.clone()))
        }
    }
}

/// The recipe for the assemble pod: the stage cache's (given in
/// [`RECIPE_ENV`]), the probe's answer in the workspace, or, on `scratch`
/// (no probe pod), evaluated here against nothing.
pub fn load_recipe(plan: &BuildPlan, workspace: &Path) -> Result<FinalRecipe, RecipeError> {
    let (base, _) = final_base(plan)?;
    if base.trim() == "scratch" {
        return evaluate_scratch(plan, &workspace.join("tmp"));
    }
    if let Ok(json) = std::env::var(RECIPE_ENV) {
        return serde_json::from_str(&json).map_err(|e| RecipeError::File {
            path: PathBuf::from(format!("${RECIPE_ENV}")),
            message: e.to_string(),
        });
    }
    let path = workspace.join(PROBE_RESULT);
    let bytes = std::fs::read(&path).map_err(|e| RecipeError::File {
        path: path.clone(),
        message: format!("{e} (the probe's result)"),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| RecipeError::File {
        path,
        message: e.to_string(),
    })
}

/// The assemble spec of a recipe: the final base pinned by assembly, one
/// layer per recipe layer read from the workspace (exports, snapshot) or
/// the context (`<workspace>/context` unless given), scratch space in
/// `<workspace>/tmp`.
pub fn assemble_spec(
    plan: &BuildPlan,
    recipe: &FinalRecipe,
    workspace: &Path,
    context: Option<&Path>,
    output: &AssembleOutput,
) -> Result<AssembleSpec, RecipeError> {
    spec_of(plan, recipe, workspace, context, output, None)
}

/// [`assemble_spec`] with the stage cache: what the assembly stores
/// ([`cache_store_spec`]), each `COPY --from` layer's key
/// ([`crate::cache::key::layer_key`]), and the exports of cached units,
/// which the assembly reads from the cache repository when it must make
/// a layer of them (their archives are not on the workspace).
pub fn assemble_spec_cached(
    plan: &BuildPlan,
    recipe: &FinalRecipe,
    workspace: &Path,
    context: Option<&Path>,
    output: &AssembleOutput,
    store: &CacheStore,
) -> Result<AssembleSpec, RecipeError> {
    let mut spec = spec_of(plan, recipe, workspace, context, output, Some(store))?;
    let epoch = crate::oci::layer::source_date_epoch();
    for (layer, recipe_layer) in spec.layers.iter_mut().zip(&recipe.layers) {
        let LayerOrigin::Exports { exports } = &recipe_layer.source else {
            continue;
        };
        let keyed: Option<Vec<(&str, &str)>> = exports
            .iter()
            .map(|export| {
                let unit = unit_of_export(plan, &export.id)?;
                Some((export.id.as_str(), store.keys.get(unit)?.as_str()))
            })
            .collect();
        layer.cache_key = keyed.map(|exports| {
            crate::cache::key::layer_key(recipe_layer, &recipe.base_directories, epoch, &exports)
        });
    }
    let mut cache = cache_store_spec(store, plan, recipe, &Workspace::new(workspace));
    cache.restore = store.hits.clone();
    spec.cache = Some(cache);
    Ok(spec)
}

/// The chain or extraction that exports `id`.
fn unit_of_export<'p>(plan: &'p BuildPlan, id: &str) -> Option<&'p str> {
    let chain = plan
        .chains
        .iter()
        .find(|c| c.exports.iter().any(|e| e.id == id))
        .map(|c| c.id.as_str());
    chain.or_else(|| {
        plan.extractions
            .iter()
            .find(|e| e.exports.iter().any(|x| x.id == id))
            .map(|e| e.id.as_str())
    })
}

fn spec_of(
    plan: &BuildPlan,
    recipe: &FinalRecipe,
    workspace: &Path,
    context: Option<&Path>,
    output: &AssembleOutput,
    store: Option<&CacheStore>,
) -> Result<AssembleSpec, RecipeError> {
    let (base, platform) = final_base(plan)?;
    // Exports the cache repository has: their archives need not be here.
    let restorable: std::collections::BTreeSet<&str> = store
        .into_iter()
        .flat_map(|s| &s.hits)
        .flat_map(|entry| &entry.exports)
        .map(|export| export.id.as_str())
        .collect();
    let context = context.map_or_else(|| workspace.join("context"), Path::to_path_buf);
    let mut layers = Vec::with_capacity(recipe.layers.len());
    for layer in &recipe.layers {
        let missing = |path: &Path, what: &str| RecipeError::Step {
            line: layer.line,
            instruction: layer.created_by.clone(),
            message: format!("{what} {} is missing", path.display()),
        };
        let destination = || {
            layer.destination.clone().ok_or_else(|| RecipeError::Step {
                line: layer.line,
                instruction: layer.created_by.clone(),
                message: "the recipe gives no destination".into(),
            })
        };
        let mut copy = CopyLayerSpec::default();
        let spec = match &layer.source {
            LayerOrigin::Snapshot { path } => {
                let tar = workspace.join(path);
                if !tar.is_file() {
                    return Err(missing(&tar, "the snapshot layer"));
                }
                LayerSpec {
                    tar: Some(tar),
                    created_by: Some(layer.created_by.clone()),
                    ..LayerSpec::default()
                }
            }
            origin => {
                match origin {
                    LayerOrigin::Exports { exports } => {
                        for export in exports {
                            let archive =
                                workspace.join("exports").join(format!("{}.tar", export.id));
                            if !archive.is_file() && !restorable.contains(export.id.as_str()) {
                                return Err(missing(&archive, "the export archive"));
                            }
                            copy.archives.push(archive);
                            copy.sources.push(export.path.clone());
                        }
                    }
                    LayerOrigin::Context { paths, files } => {
                        if !paths.is_empty() {
                            if !context.is_dir() {
                                return Err(missing(&context, "the build context"));
                            }
                            copy.root = Some(context.clone());
                            copy.sources = paths.clone();
                        }
                        copy.files = files.clone();
                    }
                    LayerOrigin::Inline { files } => copy.files = files.clone(),
                    LayerOrigin::Directory | LayerOrigin::Snapshot { .. } => {}
                }
                copy.destination = destination()?;
                copy.destination_is_dir = layer.destination_is_dir;
                copy.extract = layer.extract;
                LayerSpec {
                    copy: Some(copy),
                    owner: layer.owner.clone(),
                    chmod: layer.chmod.clone(),
                    created_by: Some(layer.created_by.clone()),
                    ..LayerSpec::default()
                }
            }
        };
        layers.push(spec);
    }
    Ok(AssembleSpec {
        base,
        platform: Some(platform),
        layers,
        config: recipe.config.clone(),
        target: output.image.clone(),
        additional_tags: output.additional_tags.clone(),
        insecure: output.insecure,
        auth: output.auth.clone(),
        ca_bundle: output.ca_bundle.clone(),
        base_directories: recipe
            .base_directories
            .iter()
            .map(|(path, dir)| {
                (
                    path.clone(),
                    DirectorySpec {
                        mode: dir.mode.clone(),
                        owner: Some(dir.owner.clone()),
                    },
                )
            })
            .collect(),
        work_dir: Some(workspace.join("tmp")),
        cache: None,
    })
}

/// What the assembly stores, from the controller's [`CacheStore`] and the
/// plan: each unit's result and export archives where the workspace has
/// them, the image's key, and the layers' with the `recipe` they are made
/// from (not for a snapshot: its files were made on the base).
pub fn cache_store_spec(
    store: &CacheStore,
    plan: &BuildPlan,
    recipe: &FinalRecipe,
    workspace: &Workspace,
) -> CacheStoreSpec {
    let chains = store
        .units
        .iter()
        .map(|(id, key)| {
            let exports = match (plan.chain(id), plan.extraction(id)) {
                (Some(chain), _) => chain.exports.as_slice(),
                (None, Some(extraction)) => extraction.exports.as_slice(),
                (None, None) => &[],
            };
            CacheChainSpec {
                key: key.clone(),
                chain: id.clone(),
                result: workspace.chain_result(id),
                exports: exports
                    .iter()
                    .map(|export| CacheExportSpec {
                        id: export.id.clone(),
                        path: workspace.export_archive(&export.id),
                    })
                    .collect(),
            }
        })
        .collect();
    CacheStoreSpec {
        repository: store.repository.clone(),
        chains,
        image: store.image.clone().map(|key| CacheImageSpec { key }),
        restore: Vec::new(),
        layers: store
            .layers
            .clone()
            .filter(|_| matches!(plan.final_image, FinalImage::Assemble(_)))
            .map(|key| CacheLayersSpec {
                key,
                recipe: recipe.clone(),
            }),
        recipe: store.recipe.clone().map(|key| CacheLayersSpec {
            key,
            recipe: recipe.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtimes_variables_are_not_the_images() {
        let root = tempfile::tempdir().unwrap();
        let vars = [
            ("PATH", "/bin"),
            ("HOSTNAME", "pod"),
            (crate::contract::PLAN_ENV, "{}"),
            ("KUBERNETES_PORT_443_TCP", "tcp://x"),
            ("APP", "1"),
        ]
        .map(|(k, v)| (k.into(), v.into()));
        let env = image_environment(vars, root.path());
        assert_eq!(
            env.into_iter().collect::<Vec<_>>(),
            [("APP".into(), "1".into()), ("PATH".into(), "/bin".into())]
        );
    }

    /// The base of [`the_recipe_from_layers_is_the_recipe_from_disk`] in two
    /// layers: directories owned by `me` but /srv (1000:50, 1750), a
    /// merged /usr with a relative and an absolute link, /etc/group
    /// through a link, a user and a group by name.
    fn base_layers(me: (u32, u32)) -> Vec<Vec<u8>> {
        use crate::rootfs::layer_tree::tests::TarLayer;
        let lower = TarLayer::new()
            .dir("./", 0o755, me)
            .dir("usr/", 0o755, me)
            .dir("usr/bin/", 0o755, me)
            .dir("usr/lib/", 0o755, me)
            .dir("etc/", 0o755, me)
            .dir("home/", 0o755, me)
            .dir("srv/", 0o1750, (1000, 50))
            .dir("tmp/", 0o1777, me)
            .symlink("bin", "usr/bin", me)
            .symlink("opt", "/srv", me)
            .file("usr/bin/sh", me, b"#!")
            .file("etc/passwd", me, b"root:x:0:0:root:/root:/bin/sh\n")
            .file("usr/lib/group", me, b"root:x:0:\nstaff:x:50:app\n")
            .symlink("etc/group", "../usr/lib/group", me);
        let upper = TarLayer::new().file(
            "etc/passwd",
            me,
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        );
        vec![lower.finish(), upper.finish()]
    }

    #[test]
    fn the_recipe_from_layers_is_the_recipe_from_disk() {
        let me = crate::rootfs::users::current_ids().unwrap();
        let layers = base_layers(me);
        let disk = tempfile::tempdir().unwrap();
        let mut tree = crate::rootfs::LayerTree::default();
        for layer in &layers {
            let mut archive = tar::Archive::new(&layer[..]);
            archive.set_preserve_permissions(true);
            archive.unpack(disk.path()).unwrap();
            tree.apply_layer(&layer[..]).unwrap();
        }
        let plan = crate::plan::PlanRequest::from_text(
            "FROM 127.0.0.1:5000/golang AS builder\nWORKDIR /go\nRUN make\n\
             FROM 127.0.0.1:5000/busybox\n\
             COPY --chown=app:staff --from=builder /go/app /bin/\n\
             COPY --chown=app --from=builder /go/tool /opt/tools/\n\
             COPY --from=builder /go/sh /bin/sh\n\
             WORKDIR /srv\n\
             WORKDIR /srv/new\n\
             USER app\n\
             WORKDIR /home/app/work\n\
             COPY --chown=app:staff app.conf ./\n\
             COPY --chmod=640 --chown=1234 app.conf /etc/app.conf\n\
             CMD [\"app\"]\n",
        )
        .unwrap()
        .plan()
        .unwrap();
        let eval = |root: &dyn Tree| {
            let env = BTreeMap::from([("PATH".to_string(), DEFAULT_PATH.to_string())]);
            let workdir = PathBuf::from("/");
            evaluate(&plan, &BaseView { root, env, workdir }).unwrap()
        };
        let from_layers = eval(&tree);
        let mut from_disk = eval(&disk.path());

        let owner = |recipe: &FinalRecipe| -> Vec<(Option<String>, Option<String>)> {
            let layers = recipe.layers.iter();
            layers
                .map(|l| (l.destination.clone(), l.owner.clone()))
                .collect()
        };
        let some = |text: &str| Some(text.to_string());
        assert_eq!(
            owner(&from_layers),
            [
                (some("/usr/bin"), some("1000:50")),
                (some("/srv/tools"), some("1000:1001")),
                (some("/usr/bin/sh"), some("0:0")),
                (some("/srv/new"), some("0:0")),
                (some("/home/app/work"), some("1000:1001")),
                (some("/home/app/work"), some("1000:50")),
                (some("/etc/app.conf"), some("1234:1234")),
            ]
        );
        let directories = &from_layers.base_directories;
        let keys: Vec<&str> = directories.keys().map(String::as_str).collect();
        assert_eq!(keys, ["/etc", "/home", "/srv", "/usr", "/usr/bin"]);
        assert_eq!(directories["/srv"].mode, "1750");
        assert_eq!(directories["/srv"].owner, "1000:50");
        assert_eq!(directories["/usr"].owner, format!("{}:{}", me.0, me.1));
        // Unpacked by this process, /srv is not 1000:50 on disk.
        let srv = from_disk.base_directories.get_mut("/srv").unwrap();
        assert_eq!(srv.mode, "1750");
        srv.owner = "1000:50".into();
        assert_eq!(from_layers, from_disk);
    }
}
