//! The final image's recipe: the final stage evaluated where the base's
//! filesystem and environment are (the probe pod; an empty root for
//! scratch), because the assemble pod that follows it has neither.
//!
//! Workspace files (`/.slimforge/` in every pod):
//! - `results/probe.json`: the [`FinalRecipe`] the probe wrote;
//! - `exports/<export-id>.tar`: the archives a layer's `exports` name;
//! - `exports/snapshot.tar`: the runtime pod's snapshot layer;
//! - `context/`: the build context (`--context` overrides);
//! - `tmp/`: the assemble pod's scratch space (removed after each layer);
//! - `results/assemble.json`: the assemble result (the controller's `--result`).
//!
//! Rules (Docker's): ARG values come from the plan's bindings; ENV expands
//! with the environment before it and merges by key; WORKDIR is taken
//! relative to the previous one; a COPY/ADD destination is made absolute
//! against WORKDIR, is a directory when written with a trailing `/` (or
//! `.`, `..`), for several sources or when it is a directory in the base,
//! and lands where the base's symlinks lead; `--chown` names come from the
//! base's /etc/passwd and /etc/group; shell-form CMD/ENTRYPOINT run through
//! the current SHELL; ENTRYPOINT clears a CMD not set in the same stage.
//! A WORKDIR the base lacks is a layer of its own: the directory, 0755,
//! owned by the USER set before it (root when none: the base's own USER is
//! not known here). Not done: SHELL is not recorded in the config.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::assemble::{AssembleSpec, CopyLayerSpec, DirectorySpec, LayerSpec};
use crate::contract::{
    ExportSource, FinalRecipe, InlineFile, LayerOrigin, PROBE_RESULT, RecipeLayer, SNAPSHOT_LAYER,
};
use crate::dockerfile::{
    CommandForm, CopyArgs, Healthcheck as HealthcheckInstruction, Instruction,
};
use crate::dockerfile::{expand_heredoc, expand_word};
use crate::oci::config::{ConfigChanges, Healthcheck};
use crate::plan::{BuildPlan, CopySource, FinalImage, PlanLoadError, Step};
use crate::rootfs::FsError;
use crate::rootfs::resolve::{
    BaseDirectoryEntry, add_directories, is_dir, resolve, resolve_destination,
};
use crate::rootfs::users::Users;
use crate::stage::run::DEFAULT_PATH;

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
#[derive(Debug, Clone)]
pub struct BaseView<'a> {
    /// The base's `/` on disk.
    pub root: &'a Path,
    /// The image's ENV.
    pub env: BTreeMap<String, String>,
    /// The image's WORKDIR (`/` when it has none).
    pub workdir: PathBuf,
}

/// Evaluates the plan's final image in the filesystem this process runs in:
/// `/`, its environment (minus what runtimes inject) and its cwd.
pub fn evaluate_here(plan: &BuildPlan) -> Result<FinalRecipe, RecipeError> {
    let root = Path::new("/");
    let workdir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let env = image_environment(std::env::vars_os(), root);
    evaluate(plan, &BaseView { root, env, workdir })
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
            root: empty.path(),
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
    root: &Path,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = vars
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
    if env.get("HOME").is_some_and(|home| *home == users.home(uid)) {
        env.remove("HOME");
    }
    env
}

/// Evaluates the plan's final image against `base`.
pub fn evaluate(plan: &BuildPlan, base: &BaseView) -> Result<FinalRecipe, RecipeError> {
    let mut evaluation = Evaluation::new(plan, base);
    match &plan.final_image {
        FinalImage::Assemble(assemble) => {
            evaluation.stage(&assemble.steps, false)?;
        }
        FinalImage::Runtime(runtime) => {
            let chain = plan.chain(&runtime.chain).ok_or_else(|| {
                RecipeError::InvalidPlan(format!(
                    "the final image's chain `{}` is not in the plan",
                    runtime.chain
                ))
            })?;
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
    Ok(evaluation.finish())
}

struct Evaluation<'a> {
    plan: &'a BuildPlan,
    root: &'a Path,
    env: BTreeMap<String, String>,
    /// The current stage's ARGs with a value.
    args: BTreeMap<String, String>,
    workdir: PathBuf,
    shell: Vec<String>,
    users: Option<Users>,
    /// ENV set by the Dockerfile, in the order first set.
    env_changes: Vec<(String, String)>,
    config: ConfigChanges,
    layers: Vec<RecipeLayer>,
    base_directories: BTreeMap<String, BaseDirectoryEntry>,
}

impl<'a> Evaluation<'a> {
    fn new(plan: &'a BuildPlan, base: &BaseView<'a>) -> Self {
        Self {
            plan,
            root: base.root,
            env: base.env.clone(),
            args: BTreeMap::new(),
            workdir: base.workdir.clone(),
            shell: vec!["/bin/sh".into(), "-c".into()],
            users: None,
            env_changes: Vec::new(),
            config: ConfigChanges::default(),
            layers: Vec::new(),
            base_directories: BTreeMap::new(),
        }
    }

    fn finish(mut self) -> FinalRecipe {
        if !self.env_changes.is_empty() {
            self.config.env = Some(
                self.env_changes
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect(),
            );
        }
        FinalRecipe {
            layers: self.layers,
            config: self.config,
            base_directories: self.base_directories,
        }
    }

    /// One stage's steps; `config_only` skips COPY/ADD (a snapshot has the files).
    fn stage(&mut self, steps: &[Step], config_only: bool) -> Result<(), RecipeError> {
        self.args.clear();
        let mut cmd_set = false;
        for step in steps {
            self.step(step, config_only, &mut cmd_set)
                .map_err(|message| RecipeError::Step {
                    line: step.line,
                    instruction: step.text.lines().next().unwrap_or_default().to_string(),
                    message,
                })?;
        }
        Ok(())
    }

    fn lookup(&self, name: &str) -> Option<String> {
        self.env.get(name).or_else(|| self.args.get(name)).cloned()
    }

    fn expand(&self, word: &str) -> Result<String, String> {
        expand_word(word, self.plan.escape, &mut |name| self.lookup(name))
            .map_err(|e| format!("`{word}`: {e}"))
    }

    fn users(&mut self) -> Result<&Users, String> {
        if self.users.is_none() {
            self.users = Some(Users::read(self.root).map_err(|e| e.to_string())?);
        }
        Ok(self.users.get_or_insert_with(Users::default))
    }

    fn command(&self, form: &CommandForm) -> Vec<String> {
        match form {
            CommandForm::Exec(words) => words.clone(),
            CommandForm::Shell(line) => {
                let mut argv = self.shell.clone();
                argv.push(line.clone());
                argv
            }
        }
    }

    fn step(&mut self, step: &Step, config_only: bool, cmd_set: &mut bool) -> Result<(), String> {
        match &step.instruction {
            Instruction::Arg(_) => {
                for binding in &step.args {
                    let value = binding.value(|word| self.expand(word))?;
                    match value {
                        Some(value) => self.args.insert(binding.name.clone(), value),
                        None => self.args.remove(&binding.name),
                    };
                }
            }
            Instruction::Env(pairs) => {
                // Every value sees the environment from before the instruction.
                let values = pairs
                    .iter()
                    .map(|pair| self.expand(&pair.value))
                    .collect::<Result<Vec<_>, _>>()?;
                for (pair, value) in pairs.iter().zip(values) {
                    self.env.insert(pair.key.clone(), value.clone());
                    match self.env_changes.iter_mut().find(|(k, _)| *k == pair.key) {
                        Some(existing) => existing.1 = value,
                        None => self.env_changes.push((pair.key.clone(), value)),
                    }
                }
            }
            Instruction::Workdir(word) => {
                let dir = normalize(&self.workdir.join(self.expand(word)?));
                let resolved = resolve(self.root, &dir, true).map_err(|e| e.to_string())?;
                add_directories(self.root, &resolved, &mut self.base_directories)
                    .map_err(|e| e.to_string())?;
                self.config.working_dir = Some(dir.display().to_string());
                self.workdir = dir;
                let destination = resolved.display().to_string();
                let exists = is_dir(self.root, &resolved)
                    || self.layers.iter().any(|l| {
                        l.destination_is_dir && l.destination.as_deref() == Some(&destination)
                    });
                if !config_only && !exists {
                    // Docker creates it, owned by the USER set so far.
                    let owner = match self.config.user.clone() {
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
                }
            }
            Instruction::User(word) => self.config.user = Some(self.expand(word)?),
            Instruction::Shell(shell) => self.shell = shell.clone(),
            Instruction::Cmd(form) => {
                self.config.cmd = Some(self.command(form));
                *cmd_set = true;
            }
            Instruction::Entrypoint(form) => {
                self.config.entrypoint = Some(self.command(form));
                // Docker: a new ENTRYPOINT drops a CMD this stage did not set.
                if !*cmd_set {
                    self.config.cmd = None;
                }
            }
            Instruction::Expose(ports) => {
                let mut expanded = Vec::new();
                for port in ports {
                    expanded.extend(expose_ports(&self.expand(port)?)?);
                }
                let list = self.config.exposed_ports.get_or_insert_with(Vec::new);
                for port in expanded {
                    if !list.contains(&port) {
                        list.push(port);
                    }
                }
            }
            Instruction::Label(pairs) => {
                let mut labels = Vec::new();
                for pair in pairs {
                    labels.push((self.expand(&pair.key)?, self.expand(&pair.value)?));
                }
                self.config
                    .labels
                    .get_or_insert_with(BTreeMap::new)
                    .extend(labels);
            }
            Instruction::Maintainer(name) => {
                self.config
                    .labels
                    .get_or_insert_with(BTreeMap::new)
                    .insert("maintainer".into(), name.clone());
            }
            Instruction::StopSignal(word) => self.config.stop_signal = Some(self.expand(word)?),
            Instruction::Volume(paths) => {
                let mut expanded = Vec::new();
                for path in paths {
                    expanded.push(self.expand(path)?);
                }
                let list = self.config.volumes.get_or_insert_with(Vec::new);
                for path in expanded {
                    if !list.contains(&path) {
                        list.push(path);
                    }
                }
            }
            Instruction::Healthcheck(check) => {
                self.config.healthcheck = Some(match check {
                    HealthcheckInstruction::None => Healthcheck {
                        test: vec!["NONE".into()],
                        ..Healthcheck::default()
                    },
                    HealthcheckInstruction::Check(args) => Healthcheck {
                        test: match &args.command {
                            CommandForm::Exec(words) => {
                                let mut test = vec!["CMD".to_string()];
                                test.extend(words.iter().cloned());
                                test
                            }
                            CommandForm::Shell(line) => vec!["CMD-SHELL".into(), line.clone()],
                        },
                        interval: args.interval.clone(),
                        timeout: args.timeout.clone(),
                        start_period: args.start_period.clone(),
                        start_interval: args.start_interval.clone(),
                        retries: args.retries,
                    },
                });
            }
            Instruction::Copy(args) | Instruction::Add(args) => {
                if !config_only {
                    let add = matches!(step.instruction, Instruction::Add(_));
                    let layer = self.copy(step, args, add)?;
                    self.layers.push(layer);
                }
            }
            // A runtime chain's RUNs are in its snapshot; an assembled final
            // stage has none (the planner makes it a runtime chain).
            Instruction::Run(_) | Instruction::From(_) => {}
        }
        Ok(())
    }

    fn copy(&mut self, step: &Step, args: &CopyArgs, add: bool) -> Result<RecipeLayer, String> {
        let written = self.expand(&args.destination)?;
        let several = args.sources.len() + args.heredocs.len() > 1;
        let written_as_dir = crate::dockerfile::instruction::written_as_directory(&written);
        let absolute = normalize(&self.workdir.join(&written));
        let mut as_text = absolute.display().to_string();
        if (written_as_dir || several) && as_text != "/" {
            as_text.push('/');
        }
        let resolved = resolve_destination(self.root, &as_text).map_err(|e| e.to_string())?;
        let destination_is_dir = written_as_dir || several || is_dir(self.root, &resolved);
        add_directories(self.root, &resolved, &mut self.base_directories)
            .map_err(|e| e.to_string())?;
        let owner = match &args.chown {
            Some(word) => {
                let spec = self.expand(word)?;
                let (uid, gid) = self
                    .users()?
                    .resolve_chown(&spec)
                    .map_err(|e| format!("--chown={spec}: {e}"))?;
                format!("{uid}:{gid}")
            }
            None => "0:0".into(),
        };
        let chmod = match &args.chmod {
            Some(word) => {
                let mode = self.expand(word)?;
                let bits = u32::from_str_radix(&mode, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| format!("--chmod={mode}: not an octal mode"))?;
                Some(format!("{bits:04o}"))
            }
            None => None,
        };
        let mut files = Vec::new();
        for heredoc in &args.heredocs {
            let content = if heredoc.expand {
                expand_heredoc(&heredoc.content, self.plan.escape, &mut |n| self.lookup(n))
                    .map_err(|e| format!("<<{}: {e}", heredoc.name))?
            } else {
                heredoc.content.clone()
            };
            files.push(InlineFile {
                name: heredoc.name.clone(),
                content,
            });
        }
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
                paths: args
                    .sources
                    .iter()
                    .map(|s| self.expand(s))
                    .collect::<Result<_, _>>()?,
                files,
            },
        };
        let extract = add && matches!(source, LayerOrigin::Context { .. });
        Ok(RecipeLayer {
            line: step.line,
            created_by: one_line(&step.text),
            source,
            destination: Some(resolved.display().to_string()),
            destination_is_dir,
            owner: Some(owner),
            chmod,
            extract,
        })
    }
}

/// EXPOSE words as the config wants them: `80/tcp`, ranges spelled out.
fn expose_ports(spec: &str) -> Result<Vec<String>, String> {
    let (range, protocol) = match spec.split_once('/') {
        Some((range, protocol)) => (range, protocol.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    let bad = || format!("EXPOSE `{spec}`: not PORT[/tcp|udp|sctp] or a range such as 8000-8010");
    if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
        return Err(bad());
    }
    let (low, high) = range.split_once('-').unwrap_or((range, range));
    let (low, high): (u16, u16) = (
        low.parse().map_err(|_| bad())?,
        high.parse().map_err(|_| bad())?,
    );
    if low > high {
        return Err(bad());
    }
    Ok((low..=high).map(|p| format!("{p}/{protocol}")).collect())
}

/// `.` and `..` resolved lexically (`..` stops at `/`).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
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

/// The base of the plan's final image (an image reference or `scratch`) and its platform.
pub fn final_base(plan: &BuildPlan) -> Result<(String, String), RecipeError> {
    match &plan.final_image {
        FinalImage::Assemble(assemble) => Ok((assemble.base.clone(), assemble.platform.clone())),
        FinalImage::Runtime(runtime) => {
            let chain = plan.chain(&runtime.chain).ok_or_else(|| {
                RecipeError::InvalidPlan(format!(
                    "the final image's chain `{}` is not in the plan",
                    runtime.chain
                ))
            })?;
            Ok((runtime.base.clone(), chain.platform.clone()))
        }
    }
}

/// The recipe for the assemble pod: the probe's answer in the workspace,
/// or, on `scratch` (no probe pod), evaluated here against nothing.
pub fn load_recipe(plan: &BuildPlan, workspace: &Path) -> Result<FinalRecipe, RecipeError> {
    let (base, _) = final_base(plan)?;
    if base.trim() == "scratch" {
        return evaluate_scratch(plan, &workspace.join("tmp"));
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
    let (base, platform) = final_base(plan)?;
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
                            if !archive.is_file() {
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expose_spells_out_ranges_and_protocols() {
        assert_eq!(expose_ports("80").unwrap(), ["80/tcp"]);
        assert_eq!(expose_ports("53/UDP").unwrap(), ["53/udp"]);
        assert_eq!(
            expose_ports("8000-8002/tcp").unwrap(),
            ["8000/tcp", "8001/tcp", "8002/tcp"]
        );
        assert!(expose_ports("http").is_err());
        assert!(expose_ports("9-1").is_err());
    }

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
}
