//! `stage run --chain ID [--plan PLAN] [--workspace /.slimforge]
//! [--whoami FILE] [--snapshot LAYER]`: the main container of a chain pod
//! (uid 0, in the chain's own image) applies the chain's stages in
//! Dockerfile order and exports what later stages copy.
//!
//! Inputs: the plan from `--plan`, else the plan's JSON in `$SLIMFORGE_PLAN`
//! ([`BuildPlan::load`]); the build context from `$SLIMFORGE_CONTEXT`
//! (inline files, a ConfigMap volume or a directory: see
//! [`super::context`]), else `<workspace>/context/`; its `.dockerignore`,
//! when there is one, hides paths from COPY/ADD; the image user's `uid:gid`
//! from `--whoami` (default `<workspace>/whoami`), as `stage whoami` wrote
//! it in the init container (the image's own USER); missing → 0:0.
//!
//! Workspace (`--workspace`, default `/.slimforge`). `exports/`, `results/`
//! and `tmp/` are created 1777 when missing (pods of other users write
//! there); one that exists is made 1777 if the filesystem allows and left
//! as it is otherwise. Nothing written there needs root's power over files
//! (on NFS with root_squash root is `nobody` there): nothing is chowned,
//! what is read back (exports, results) is 0644.
//! - `exports/<export-id>.tar`: exports of chains and extractions, read by
//!   `COPY --from` and written here at the end of each stage that has some.
//!   An export is a gzip-compressed tar (named `.tar`: readers sniff the
//!   magic, as [`crate::oci::layer::layer_from_tar`] does) holding every
//!   match of the export's path and everything below it, named by the
//!   matched path without its leading `/` (`go/app`, `go/bin/tool`), no
//!   parent entries; numeric owners, modes (setuid included), xattrs,
//!   symlinks and hard links kept; mtimes are `SOURCE_DATE_EPOCH` (0);
//!   file mode 0644 so a non-root reader can open it;
//! - `results/<chain-id>.json` (`/` in the id as `_`):
//!   `{"status":"succeeded","exports":[…]}` or
//!   `{"status":"failed","stage","line","instruction",…}` with `exitCode`
//!   and `logTail` for a failed RUN, `error` for anything else (only
//!   `error` when the chain could not start: plan unreadable, no such
//!   chain, context unusable (a bad path, a missing ConfigMap key), bad
//!   `.dockerignore`); at most 3 KiB (the termination message);
//! - `tmp/`: scratch space, all of it removed when done with, success or
//!   failure: the materialised context (`context-<chain>`, the id made a
//!   safe name), exports unpacked for one COPY (modes only, owned by this
//!   process), a `#!` heredoc script of a RUN, a runtime chain's snapshot
//!   state (`snapshot-<chain>`).
//!
//! Rules applied: the Dockerfile's are [`crate::dockerfile::eval`]'s (the
//! same evaluator as the final image's recipe); here, on the real
//! filesystem (Docker's, unless said otherwise):
//! - the image's ENV is this process's, less the pods' own variables
//!   ([`crate::contract::POD_ENV`]); its WORKDIR is this process's cwd (or
//!   `$SLIMFORGE_WORKDIR`);
//! - the directories a WORKDIR creates are 0755 and owned by the current
//!   RUN user (as BuildKit does: `USER app` then `WORKDIR /app` gives app a
//!   place to write); existing ones are left alone;
//! - COPY/ADD sources are relative to the context (or the export's root),
//!   never leave it, may be globs; a directory source copies its contents;
//!   more than one thing to copy (every glob match of every source, and
//!   heredocs, counted together) needs a destination written as a
//!   directory, even one that exists: ending in `/`, or `.`/`..` (BuildKit
//!   reads a bare `.` as `./`; the classic builder did not), else the step
//!   fails with Docker's "When using COPY with more than one source file,
//!   the destination must be a directory and end with a /"; one source
//!   onto an existing directory goes into it; files are root-owned unless
//!   `--chown` (names from the image's /etc/passwd and /etc/group), modes
//!   kept unless `--chmod`, a directory's mode set once its contents are
//!   in; missing parents are created root-owned 0755; hard links between
//!   the files one instruction copies are kept (BuildKit's behaviour);
//!   ADD extracts a local tar, plain or compressed with gzip, bzip2 or xz,
//!   told by its bytes, never its name (owners as archived); a file that
//!   does not decompress to a tar header is copied as it is;
//! - RUN runs as the Dockerfile's USER (name or `uid[:gid]` through
//!   /etc/passwd, a uid not found there gets gid 0), else the whoami user,
//!   with no supplementary groups (std drops them when it switches user as
//!   root), with the evaluator's environment and HOME from /etc/passwd
//!   (`/` when none) unless the image or an ENV set HOME; non-UTF-8
//!   variables are dropped; every step is announced on stderr as `[stage
//!   LINE] instruction`, a RUN's output follows line by line with the same
//!   prefix, the last 40 lines are kept for the failure report; output of
//!   processes a RUN leaves in the background is not waited for beyond 2 s
//!   (and, the helper being PID 1 in the pod, such orphans are not reaped);
//! - a `#!` RUN heredoc is written as a script file in `tmp/` and run.
//!
//! Not done yet: ADD of zstd-compressed tars (Docker extracts them; here
//! they are copied as files), `--chown` on ADD-extracted archives (archive
//! owners kept), xattrs of COPY sources (not copied), non-UTF-8 names in
//! COPY sources, source mtimes; an excluded directory that `.dockerignore`
//! exceptions make walked is created even when nothing below it is kept.

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use super::context::{BuildContext, Materialised};
use super::mounts::{MountPaths, MountSources, mount_all};
use super::{StageError, io_err};
use crate::contract::{
    ChainFailure, ChainResult, POD_ENV, SHARED_DIRS, WORKDIR_ENV, Workspace, failure_json,
    publish_result,
};
use crate::dockerfile::DockerIgnore;
use crate::dockerfile::eval::{CopyPlan, Effect, Evaluator, RunCommand, RunPlan, image_env};
use crate::plan::{BuildPlan, Chain, ChainStage, CopySource, Step};
use crate::rootfs::ScratchDir;
use crate::rootfs::copy::{
    CopyRequest, HardLinks, Match, SourceRoot, Unpack, copy_matches, extract_archive,
    match_sources, write_export,
};
use crate::rootfs::users::Users;

/// How long the output of a finished RUN may still come (from processes
/// it left in the background).
const OUTPUT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
/// Lines of RUN output kept for a failure report.
const LOG_TAIL_LINES: usize = 40;

/// What `stage run` reads: the plan, the chain to run, the workspace.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The plan file; `None`: the plan's JSON in `$SLIMFORGE_PLAN`.
    pub plan: Option<PathBuf>,
    pub chain: String,
    pub workspace: PathBuf,
    /// The image user's `uid:gid` as `stage whoami` wrote it; `None`:
    /// `<workspace>/whoami`.
    pub whoami: Option<PathBuf>,
    /// The context's JSON (`$SLIMFORGE_CONTEXT`, see `stage::context`);
    /// `None`: `<workspace>/context`.
    pub context: Option<String>,
    /// A runtime chain: record the filesystem first and, on success, write
    /// what the chain changed as one layer here (see `rootfs::snapshot`).
    pub snapshot: Option<PathBuf>,
}

/// Runs the chain; the result is also written to `results/<chain>.json`.
/// `Err` only when the chain could not start (plan or context unusable) or
/// the result could not be written; the result file says why too.
pub fn run(options: &RunOptions) -> Result<ChainResult, StageError> {
    prepare_workspace(&options.workspace)?;
    let workspace = Workspace::new(&options.workspace);
    let path = workspace.chain_result(&options.chain);
    // Scratch space: 1777 even on a root-squashed volume.
    let state = workspace.scratch("snapshot", &options.chain);
    let recorded = match &options.snapshot {
        Some(_) => crate::rootfs::snapshot::record(&state).map(|_| ()),
        None => Ok(()),
    };
    let result = recorded
        .map_err(StageError::from)
        .and_then(|()| run_chain(options));
    let layer = match (&options.snapshot, &result) {
        (Some(layer), Ok(ChainResult::Succeeded { .. })) => Some(layer),
        _ => None,
    };
    let diffed = layer.map(|layer| crate::rootfs::snapshot::diff(&state, layer));
    if options.snapshot.is_some() {
        let _ = fs::remove_file(&state);
    }
    let result = match result {
        Ok(result) => result,
        Err(e) => {
            // The chain never started: the reason still goes in the result.
            publish_result(&path, failure_json(&e.to_string()).as_bytes())?;
            return Err(e);
        }
    };
    if let (Some(layer), Some(digests)) = (layer, diffed) {
        let digests = digests?;
        let _ = fs::set_permissions(layer, fs::Permissions::from_mode(0o644));
        tracing::info!(digest = %digests.digest, size = digests.size, "snapshot layer written");
    }
    publish_result(&path, &result.to_json())?;
    Ok(result)
}

/// Creates the workspace's shared directories, 1777, without ever needing
/// root's power over files: on NFS with root_squash root is `nobody` there.
/// Nothing is chowned; a directory that is there already is made 1777 when
/// the filesystem lets this process, and left as it is otherwise.
pub fn prepare_workspace(workspace: &Path) -> Result<(), StageError> {
    fs::create_dir_all(workspace).map_err(io_err(workspace))?;
    open_workspace(workspace)?;
    for name in SHARED_DIRS {
        let dir = workspace.join(name);
        match fs::create_dir(&dir) {
            Ok(()) => fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777))
                .map_err(io_err(&dir))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {
                let mode = fs::metadata(&dir).map_err(io_err(&dir))?.mode() & 0o7777;
                if mode != 0o1777
                    && let Err(e) = fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777))
                {
                    tracing::debug!(dir = %dir.display(), mode = format!("{mode:o}"), error = %e, "left as it is");
                }
            }
            Err(e) => return Err(io_err(&dir)(e).into()),
        }
    }
    Ok(())
}

/// Opens the workspace itself to every user (1777) unless they can write
/// there already: some provisioners (Kubernetes' own host-path one) make a
/// volume 0750 and root-owned, where volumes without `fsGroup` support keep
/// the restricted pods (uid 65532) out. Only the volume's owner can, and it
/// needs no capability; anyone else, or a filesystem that refuses, leaves it
/// as it is.
pub fn open_workspace(workspace: &Path) -> Result<(), StageError> {
    let mode = fs::metadata(workspace).map_err(io_err(workspace))?.mode() & 0o7777;
    if mode & 0o003 != 0o003
        && let Err(e) = fs::set_permissions(workspace, fs::Permissions::from_mode(0o1777))
    {
        tracing::debug!(dir = %workspace.display(), mode = format!("{mode:o}"), error = %e, "left as it is");
    }
    Ok(())
}

fn run_chain(options: &RunOptions) -> Result<ChainResult, StageError> {
    let plan = BuildPlan::load(options.plan.as_deref())?;
    let chain = plan
        .chain(&options.chain)
        .ok_or_else(|| crate::rootfs::FsError::Invalid {
            path: options
                .plan
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("${}", crate::contract::PLAN_ENV))),
            what: format!("no chain `{}` in the plan", options.chain),
        })?
        .clone();
    let workspace = Workspace::new(&options.workspace);
    let context = match options.context.as_deref() {
        Some(json) => BuildContext::parse(json)?.materialise(&workspace.tmp(), &options.chain)?,
        None => Materialised::existing(workspace.context()),
    };
    let whoami = options.whoami.clone().unwrap_or_else(|| workspace.whoami());
    let result = Runner::new(&plan, &options.workspace, context.path(), &whoami)?.run_chain(&chain);
    // The materialised context goes now, whatever the outcome.
    drop(context);
    Ok(match result {
        Ok(exports) => ChainResult::Succeeded { exports },
        Err(failure) => ChainResult::Failed(*failure),
    })
}

struct Runner {
    workspace: Workspace,
    /// The build context's directory.
    context: PathBuf,
    users: Users,
    ignore: Option<DockerIgnore>,
    /// The Dockerfile's rules, applied step by step.
    rules: Evaluator,
    /// uid:gid for RUN.
    user: (u32, u32),
    /// Where RUN `--mount`s find their volumes.
    mounts: MountPaths,
}

type StepResult<T> = Result<T, Box<ChainFailure>>;

impl Runner {
    fn new(
        plan: &BuildPlan,
        workspace: &Path,
        context: &Path,
        whoami: &Path,
    ) -> Result<Self, StageError> {
        let ignore_path = context.join(".dockerignore");
        let ignore =
            match fs::read_to_string(&ignore_path) {
                Ok(text) => Some(DockerIgnore::parse(&text).map_err(|e| {
                    crate::rootfs::FsError::Invalid {
                        path: ignore_path.clone(),
                        what: e.to_string(),
                    }
                })?),
                Err(_) => None,
            };
        let whoami = fs::read_to_string(whoami).unwrap_or_default();
        let user = whoami
            .trim()
            .split_once(':')
            .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
            .unwrap_or((0, 0));
        // The image's WorkingDir, where the runtime started us; `slimforge
        // build` names it instead when podman refused to create it (as the
        // kubelet does).
        let workdir = match std::env::var_os(WORKDIR_ENV) {
            Some(dir) => {
                let dir = PathBuf::from(dir);
                fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                dir
            }
            None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
        };
        let users = Users::load(Path::new("/"));
        // The image's ENV: this process's (uid 0), but for the pod's plumbing.
        let env: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| !POD_ENV.contains(&k.as_str()))
            .collect();
        let env = image_env(env, &users.home(0));
        Ok(Self {
            workspace: Workspace::new(workspace),
            context: context.to_path_buf(),
            users,
            ignore,
            rules: Evaluator::new(plan.escape, env, workdir),
            user,
            mounts: MountPaths::pod(),
        })
    }

    fn run_chain(&mut self, chain: &Chain) -> StepResult<Vec<String>> {
        let mut written = Vec::new();
        for stage in &chain.stages {
            self.rules.start_stage();
            for step in &stage.steps {
                let first_line = step.text.lines().next().unwrap_or_default();
                eprintln!("[{} {}] {first_line}", stage.stage.id(), step.line);
                self.step(stage, step)
                    .map_err(|error| self.failure(stage, step, Some(error)))?;
            }
            let id = stage.stage.id();
            for export in chain
                .exports
                .iter()
                .filter(|e| e.stage.as_deref() == Some(id.as_str()))
            {
                let dir = self.workspace.exports();
                let out = self.workspace.export_archive(&export.id);
                let done = fs::create_dir_all(&dir)
                    .map_err(io_err(&dir))
                    .and_then(|()| write_export(Path::new("/"), &export.path, &out));
                match done {
                    Ok(entries) => {
                        tracing::info!(export = %export.id, path = %export.path, entries, "exported");
                        written.push(export.id.clone());
                    }
                    Err(e) => {
                        return Err(Box::new(ChainFailure {
                            stage: id.clone(),
                            line: export
                                .consumers
                                .first()
                                .map_or(stage.stage.line, |c| c.line),
                            instruction: format!(
                                "export {} for {}",
                                export.path,
                                consumers(export)
                            ),
                            exit_code: None,
                            log_tail: None,
                            error: Some(e.to_string()),
                        }));
                    }
                }
            }
        }
        Ok(written)
    }

    fn failure(
        &self,
        stage: &ChainStage,
        step: &Step,
        error: Option<StepError>,
    ) -> Box<ChainFailure> {
        let instruction = step.text.lines().next().unwrap_or_default().to_string();
        let mut failure = ChainFailure {
            stage: stage.stage.id(),
            line: step.line,
            instruction,
            exit_code: None,
            log_tail: None,
            error: None,
        };
        match error {
            Some(StepError::Exit { code, tail }) => {
                failure.exit_code = Some(code);
                failure.log_tail = Some(tail);
            }
            Some(StepError::Other(message)) => failure.error = Some(message),
            None => {}
        }
        Box::new(failure)
    }

    fn step(&mut self, stage: &ChainStage, step: &Step) -> Result<(), StepError> {
        let effect = self
            .rules
            .apply(&step.instruction, &step.args)
            .map_err(StepError::Other)?;
        match effect {
            Effect::Workdir(dir) => create_owned(&dir, self.user)?,
            Effect::User(spec) => {
                self.user = self
                    .users
                    .resolve_user(&spec)
                    .map_err(|e| StepError::Other(format!("USER {spec}: {e}")))?;
            }
            Effect::Copy(copy) => self.copy(copy, step.source.as_ref())?,
            Effect::Run(run) => {
                self.run(stage, step, run)?;
                // A RUN may add users (adduser): later USER and --chown see them.
                self.users = Users::load(Path::new("/"));
            }
            // ARG, ENV, SHELL and metadata: the evaluator's state only.
            Effect::None => {}
        }
        Ok(())
    }

    fn copy(&mut self, copy: CopyPlan, source: Option<&CopySource>) -> Result<(), StepError> {
        let owner = match &copy.chown {
            Some(spec) => self
                .users
                .resolve_chown(spec)
                .map_err(|e| StepError::Other(format!("--chown={spec}: {e}")))?,
            None => (0, 0),
        };
        let request = CopyRequest {
            destination: copy.destination.clone(),
            destination_is_dir: copy.written_as_dir,
            owner,
            chmod: copy.chmod,
            extract_archives: copy.add,
        };
        // Every root (the context, or one unpacked export per path) with
        // its matches: Docker counts them all before copying anything.
        let mut staged = Vec::new();
        let mut roots: Vec<(PathBuf, Option<&DockerIgnore>, Vec<Match>)> = Vec::new();
        match source {
            Some(CopySource::Stage { paths, exports, .. })
            | Some(CopySource::Image { paths, exports, .. }) => {
                for (path, export) in paths.iter().zip(exports) {
                    let archive = self.workspace.export_archive(export);
                    let tmp = self.workspace.tmp();
                    let staging = ScratchDir::new_in(&tmp).map_err(|e| other(&tmp, e))?;
                    extract_archive(&archive, staging.path(), Unpack::Scratch)
                        .map_err(|e| StepError::Other(e.to_string()))?;
                    let root = SourceRoot {
                        dir: staging.path(),
                        ignore: None,
                    };
                    let matches = match_sources(&root, std::slice::from_ref(path))
                        .map_err(|e| StepError::Other(e.to_string()))?;
                    roots.push((staging.path().to_path_buf(), None, matches));
                    staged.push(staging);
                }
            }
            Some(CopySource::Inline) => {}
            Some(CopySource::Context) | None => {
                if !copy.sources.is_empty() {
                    let root = SourceRoot {
                        dir: &self.context,
                        ignore: self.ignore.as_ref(),
                    };
                    let matches = match_sources(&root, &copy.sources)
                        .map_err(|e| StepError::Other(e.to_string()))?;
                    roots.push((self.context.clone(), self.ignore.as_ref(), matches));
                }
            }
        }
        let names: Vec<&str> = copy
            .files
            .iter()
            .map(|(name, _)| name.as_str())
            .chain(
                roots
                    .iter()
                    .flat_map(|(_, _, m)| m.iter().map(|m| m.rel.as_str())),
            )
            .collect();
        request
            .check_source_count(&names)
            .map_err(|e| StepError::Other(e.to_string()))?;
        for (name, content) in &copy.files {
            write_heredoc(name, content, &request)?;
        }
        let mut links = HardLinks::default();
        for (dir, ignore, matches) in &roots {
            let root = SourceRoot {
                dir,
                ignore: *ignore,
            };
            copy_matches(&root, matches, &request, &mut links)
                .map_err(|e| StepError::Other(e.to_string()))?;
        }
        // The unpacked exports go now.
        drop(staged);
        Ok(())
    }

    /// The argv of a RUN, and a script file to remove afterwards.
    fn argv(&self, command: RunCommand) -> Result<(Vec<String>, Option<PathBuf>), StepError> {
        match command {
            RunCommand::Argv(argv) => Ok((argv, None)),
            RunCommand::Script(script) => {
                let tmp = self.workspace.tmp();
                fs::create_dir_all(&tmp).map_err(|e| other(&tmp, e))?;
                let path = tmp.join(format!("run-{}", std::process::id()));
                fs::write(&path, script).map_err(|e| other(&path, e))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                    .map_err(|e| other(&path, e))?;
                Ok((vec![path.display().to_string()], Some(path)))
            }
        }
    }

    fn run(&mut self, stage: &ChainStage, step: &Step, run: RunPlan) -> Result<(), StepError> {
        let sources = MountSources {
            workspace: &self.workspace,
            context: &self.context,
            ignore: self.ignore.as_ref(),
        };
        let mounted = mount_all(&run.mounts, &step.mounts, &self.mounts, &sources)
            .map_err(StepError::Other)?;
        let mut env = run.env;
        if run.needs_home {
            env.insert("HOME".into(), self.users.home(self.user.0));
        }
        env.extend(mounted.env.clone());
        let result = self.spawn(stage, step, run.command, &env);
        let unmounted = mounted.unmount().map_err(StepError::Other);
        result.and(unmounted)
    }

    fn spawn(
        &self,
        stage: &ChainStage,
        step: &Step,
        command: RunCommand,
        env: &BTreeMap<String, String>,
    ) -> Result<(), StepError> {
        let (argv, script) = self.argv(command)?;
        let Some((program, rest)) = argv.split_first() else {
            return Err(StepError::Other("empty command".into()));
        };
        let prefix = format!("[{} {}]", stage.stage.id(), step.line);
        let (reader, writer) = std::io::pipe().map_err(|e| StepError::Other(e.to_string()))?;
        let child = {
            let mut command = Command::new(program);
            command
                .args(rest)
                .env_clear()
                .envs(env)
                .current_dir(self.rules.workdir())
                .uid(self.user.0)
                .gid(self.user.1)
                .stdin(Stdio::null())
                .stdout(
                    writer
                        .try_clone()
                        .map_err(|e| StepError::Other(e.to_string()))?,
                )
                .stderr(writer);
            command.spawn()
        };
        let mut child =
            child.map_err(|e| StepError::Other(format!("cannot start {program}: {e}")))?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let _lines = {
            let tail = Arc::clone(&tail);
            let prefix = prefix.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(reader);
                let mut buf = Vec::new();
                while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    eprintln!("{prefix} {line}");
                    let mut tail = tail.lock().expect("log tail lock");
                    if tail.len() == LOG_TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                    buf.clear();
                }
                let _ = done.send(());
            })
        };
        let status = child.wait().map_err(|e| StepError::Other(e.to_string()));
        // A background process the command left behind may hold the pipe
        // open forever: its output is not waited for past a grace period.
        if finished.recv_timeout(OUTPUT_GRACE).is_err() {
            eprintln!("{prefix} (output of background processes no longer shown)");
        }
        if let Some(script) = script {
            let _ = fs::remove_file(script);
        }
        let status = status?;
        if status.success() {
            return Ok(());
        }
        let code = status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(1);
        let tail = tail.lock().expect("log tail lock");
        let tail: Vec<String> = tail.iter().cloned().collect();
        Err(StepError::Exit {
            code,
            tail: tail.join("\n"),
        })
    }
}

fn consumers(export: &crate::plan::Export) -> String {
    let list: Vec<String> = export
        .consumers
        .iter()
        .map(|c| format!("stage {} line {}", c.stage, c.line))
        .collect();
    list.join(", ")
}

/// A COPY heredoc: the file named by its delimiter (in the destination
/// when that is a directory), as `request` says.
fn write_heredoc(name: &str, content: &str, request: &CopyRequest) -> Result<(), StepError> {
    let destination = &request.destination;
    let target = if request.destination_is_dir || destination.is_dir() {
        destination.join(name)
    } else {
        destination.to_path_buf()
    };
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(|e| other(parent, e))?;
    }
    fs::write(&target, content).map_err(|e| other(&target, e))?;
    let (uid, gid) = request.owner;
    std::os::unix::fs::lchown(&target, Some(uid), Some(gid)).map_err(|e| other(&target, e))?;
    let mode = request.chmod.unwrap_or(0o644);
    fs::set_permissions(&target, fs::Permissions::from_mode(mode)).map_err(|e| other(&target, e))
}

/// Why a step failed.
#[derive(Debug)]
enum StepError {
    Exit { code: i32, tail: String },
    Other(String),
}

fn other(path: &Path, e: std::io::Error) -> StepError {
    StepError::Other(format!("{}: {e}", path.display()))
}

/// Creates `dir` and its missing parents, 0755, the ones created owned by `owner`.
fn create_owned(dir: &Path, owner: (u32, u32)) -> Result<(), StepError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_owned(parent, owner)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(other(dir, e)),
    }
    std::os::unix::fs::lchown(dir, Some(owner.0), Some(owner.1)).map_err(|e| other(dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(|e| other(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_opens_a_closed_workspace_and_leaves_an_open_one_alone() {
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
        let dir = tempfile::tempdir().unwrap();
        // As Kubernetes' host-path provisioner makes a claim's directory.
        let closed = dir.path().join("closed");
        fs::create_dir(&closed).unwrap();
        fs::set_permissions(&closed, fs::Permissions::from_mode(0o750)).unwrap();
        open_workspace(&closed).unwrap();
        assert_eq!(mode(&closed), 0o1777);
        // As local-path provisioners make it: writable by all already.
        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        open_workspace(&open).unwrap();
        assert_eq!(mode(&open), 0o777);
        // A missing workspace is an error naming it.
        let missing = dir.path().join("missing");
        let error = open_workspace(&missing).unwrap_err().to_string();
        assert!(error.contains("missing"), "{error}");
    }

    #[test]
    fn a_chain_that_cannot_start_still_leaves_a_result() {
        let ws = tempfile::tempdir().unwrap();
        let plan = crate::plan::PlanRequest {
            dockerfile: "FROM busybox AS b\nRUN true\nFROM scratch\nCOPY --from=b /x /x\n".into(),
            ..Default::default()
        }
        .plan()
        .unwrap();
        let plan_path = ws.path().join("plan.json");
        fs::write(&plan_path, serde_json::to_vec(&plan).unwrap()).unwrap();
        let options = RunOptions {
            plan: Some(plan_path),
            chain: "nope".into(),
            workspace: ws.path().to_path_buf(),
            ..RunOptions::default()
        };
        let err = run(&options).unwrap_err();
        assert!(err.to_string().contains("no chain `nope`"), "{err}");
        let result: serde_json::Value =
            serde_json::from_slice(&fs::read(ws.path().join("results/nope.json")).unwrap())
                .unwrap();
        assert_eq!(result["status"], "failed");
        assert!(result["error"].as_str().unwrap().contains("no chain"));
    }
}
