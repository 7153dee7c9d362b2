//! The Dockerfile's rules as a stage's instructions are applied in order:
//! ARG and ENV scoping and expansion, WORKDIR, USER, SHELL, COPY/ADD
//! destinations, RUN's command and environment, and the image config the
//! metadata instructions make. One evaluator, two users: the chain pods
//! (`stage run`, which then does what each step says on the real
//! filesystem) and the final image's recipe (which records it as layers and
//! config for the assemble pod). Neither re-implements a rule; each keeps
//! only its side effects.
//!
//! Rules (Docker's):
//! - the environment starts as the image's ENV; ENV words expand with the
//!   environment from before the instruction and merge by key; ARG values
//!   (bound by the planner, see [`ArgBinding`]) are visible to expansion
//!   and to RUN, an ENV of the same name winning; ARGs are per stage, ENV,
//!   WORKDIR, USER and SHELL carry over to the next stage of a chain;
//! - HOME is the image's only when its ENV sets it: a HOME the runtime put
//!   in the process's environment (the user's passwd home) is not, so it is
//!   neither expanded nor recorded, and RUN gets the RUN user's passwd home;
//! - WORKDIR is expanded and taken relative to the previous one (`.` and
//!   `..` resolved lexically, `..` stopping at `/`);
//! - a COPY/ADD destination is expanded and made absolute against WORKDIR;
//!   it is a directory when written with a trailing `/` (or as `.`, `..`)
//!   or when there are several sources; `--chown` is expanded (its names
//!   are the image's, resolved by the caller), `--chmod` is an octal mode
//!   up to 7777; heredoc bodies are expanded unless their delimiter was
//!   quoted;
//! - shell-form RUN, CMD and ENTRYPOINT run through the current SHELL
//!   (`/bin/sh -c` until one is set); a RUN that is one heredoc runs its
//!   body (as a script file when it starts with `#!`); otherwise the line,
//!   the bodies and their terminators go to the shell together;
//! - RUN's environment: ARGs, then ENV over them, PATH defaulted
//!   ([`DEFAULT_PATH`]) when unset;
//! - ENTRYPOINT drops a CMD not set in the same stage; EXPOSE, LABEL and
//!   VOLUME accumulate.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::instruction::{RunMount, parse_mount, written_as_directory};
use super::lexer::heredoc_marker;
use super::{
    CommandForm, CopyArgs, Healthcheck as HealthcheckInstruction, Heredoc, Instruction, RunArgs,
    expand_heredoc, expand_word,
};
use crate::oci::config::{ConfigChanges, Healthcheck};

/// PATH when the image's environment has none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How a stage's ARG gets its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArgBinding {
    pub name: String,
    pub from: ArgOrigin,
    /// `buildArg`/`global`: the value; `default`: the word to expand when
    /// the ARG is reached; `unset`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl ArgBinding {
    /// The value the ARG takes when it is reached (`None`: unset), a
    /// default word expanded with `expand`.
    pub fn value<E>(
        &self,
        expand: impl FnOnce(&str) -> Result<String, E>,
    ) -> Result<Option<String>, E> {
        Ok(match self.from {
            ArgOrigin::BuildArg | ArgOrigin::Global => self.value.clone(),
            ArgOrigin::Default => match &self.value {
                Some(word) => Some(expand(word)?),
                None => None,
            },
            ArgOrigin::Unset => None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ArgOrigin {
    BuildArg,
    Global,
    Default,
    Unset,
}

/// The image's ENV from a process's environment (the image's, as a runtime
/// started it): a HOME equal to `runtime_home`, the one runtimes set from
/// /etc/passwd when the image has none, is not the image's.
pub fn image_env(
    mut env: BTreeMap<String, String>,
    runtime_home: &str,
) -> BTreeMap<String, String> {
    if env.get("HOME").is_some_and(|home| home == runtime_home) {
        env.remove("HOME");
    }
    env
}

/// What an instruction asks of the caller, its words expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Nothing beyond the evaluator's own state (ARG, ENV, SHELL, the
    /// metadata instructions, FROM).
    None,
    /// The working directory is now this (absolute); the caller makes it.
    Workdir(PathBuf),
    /// RUN and later WORKDIRs are now this user (`name`, `uid`, `uid:gid`…),
    /// resolved against the image's /etc/passwd by the caller.
    User(String),
    Copy(CopyPlan),
    Run(RunPlan),
}

/// A COPY or ADD, expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyPlan {
    pub add: bool,
    /// Absolute, `.` and `..` resolved; the image's symlinks not followed.
    pub destination: PathBuf,
    /// Written as a directory (`dir/`, `.`, `..`).
    pub written_as_dir: bool,
    /// More than one source or heredoc: the destination is a directory.
    pub several: bool,
    /// The context paths (globs allowed) for a COPY without `--from`.
    pub sources: Vec<String>,
    /// Heredocs, as files named by their delimiter.
    pub files: Vec<(String, String)>,
    /// `--chown`, expanded, not resolved.
    pub chown: Option<String>,
    /// `--chmod`, at most 0o7777.
    pub chmod: Option<u32>,
}

impl CopyPlan {
    /// The destination is a directory whatever the image holds there.
    pub fn is_dir(&self) -> bool {
        self.written_as_dir || self.several
    }
}

/// A RUN, ready to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPlan {
    pub command: RunCommand,
    /// ARGs and ENV, PATH defaulted; HOME only when the image sets it.
    pub env: BTreeMap<String, String>,
    /// No HOME in `env`: the caller sets the RUN user's passwd home.
    pub needs_home: bool,
    /// `--mount`s, expanded, targets absolute.
    pub mounts: Vec<RunMount>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunCommand {
    Argv(Vec<String>),
    /// A heredoc starting with `#!`: written to a file and run as such.
    Script(String),
}

/// A stage's state while its instructions are applied.
#[derive(Debug, Clone)]
pub struct Evaluator {
    escape: char,
    env: BTreeMap<String, String>,
    /// Names ENV set, in the order first set: the config's Env.
    env_set: Vec<String>,
    /// The image's ENV has HOME (not the runtime's).
    image_home: bool,
    /// The current stage's ARGs with a value.
    args: BTreeMap<String, String>,
    workdir: PathBuf,
    shell: Vec<String>,
    /// The config the metadata instructions made, over the base's.
    config: ConfigChanges,
    /// CMD was set in the current stage (ENTRYPOINT keeps it).
    cmd_set: bool,
}

impl Evaluator {
    /// Starts on an image: its ENV (see [`image_env`]) and working directory.
    pub fn new(escape: char, env: BTreeMap<String, String>, workdir: PathBuf) -> Self {
        Self {
            escape,
            image_home: env.contains_key("HOME"),
            env,
            env_set: Vec::new(),
            args: BTreeMap::new(),
            workdir,
            shell: vec!["/bin/sh".into(), "-c".into()],
            config: ConfigChanges::default(),
            cmd_set: false,
        }
    }

    /// A new stage of the same chain: its ARGs start empty.
    pub fn start_stage(&mut self) {
        self.args.clear();
        self.cmd_set = false;
    }

    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// The last USER set, as written (expanded).
    pub fn user(&self) -> Option<&str> {
        self.config.user.as_deref()
    }

    /// The config the stages so far make, over the base's: their ENV in the
    /// order first set, USER, WORKDIR and the metadata instructions.
    pub fn config(&self) -> ConfigChanges {
        let mut config = self.config.clone();
        if !self.env_set.is_empty() {
            config.env = Some(
                self.env_set
                    .iter()
                    .map(|k| format!("{k}={}", self.env.get(k).map_or("", String::as_str)))
                    .collect(),
            );
        }
        config
    }

    fn lookup(&self, name: &str) -> Option<String> {
        self.env.get(name).or_else(|| self.args.get(name)).cloned()
    }

    /// `word` with `$VAR`/`${VAR…}` substituted from ENV, then ARGs.
    pub fn expand(&self, word: &str) -> Result<String, String> {
        expand_word(word, self.escape, &mut |name| self.lookup(name))
            .map_err(|e| format!("`{word}`: {e}"))
    }

    fn heredoc_body(&self, heredoc: &Heredoc) -> Result<String, String> {
        if !heredoc.expand {
            return Ok(heredoc.content.clone());
        }
        expand_heredoc(&heredoc.content, self.escape, &mut |n| self.lookup(n))
            .map_err(|e| format!("<<{}: {e}", heredoc.name))
    }

    /// Applies one instruction (`args`: an ARG's bindings from the plan).
    pub fn apply(
        &mut self,
        instruction: &Instruction,
        args: &[ArgBinding],
    ) -> Result<Effect, String> {
        match instruction {
            Instruction::Arg(_) => self.arg(args)?,
            Instruction::Env(pairs) => {
                // Every value sees the environment from before the instruction.
                let values = pairs
                    .iter()
                    .map(|pair| self.expand(&pair.value))
                    .collect::<Result<Vec<_>, _>>()?;
                for (pair, value) in pairs.iter().zip(values) {
                    self.env.insert(pair.key.clone(), value);
                    if !self.env_set.contains(&pair.key) {
                        self.env_set.push(pair.key.clone());
                    }
                    if pair.key == "HOME" {
                        self.image_home = true;
                    }
                }
            }
            Instruction::Workdir(word) => {
                let dir = normalize(&self.workdir.join(self.expand(word)?));
                self.config.working_dir = Some(dir.display().to_string());
                self.workdir = dir.clone();
                return Ok(Effect::Workdir(dir));
            }
            Instruction::User(word) => {
                let user = self.expand(word)?;
                self.config.user = Some(user.clone());
                return Ok(Effect::User(user));
            }
            Instruction::Shell(shell) => self.shell = shell.clone(),
            Instruction::Copy(copy) => return Ok(Effect::Copy(self.copy(copy, false)?)),
            Instruction::Add(copy) => return Ok(Effect::Copy(self.copy(copy, true)?)),
            Instruction::Run(run) => return Ok(Effect::Run(self.run(run)?)),
            Instruction::Cmd(form) => {
                self.config.cmd = Some(self.command(form));
                self.cmd_set = true;
            }
            Instruction::Entrypoint(form) => {
                self.config.entrypoint = Some(self.command(form));
                if !self.cmd_set {
                    self.config.cmd = None;
                }
            }
            Instruction::Expose(ports) => {
                let mut expanded = Vec::new();
                for port in ports {
                    expanded.extend(expose_ports(&self.expand(port)?)?);
                }
                add_missing(
                    self.config.exposed_ports.get_or_insert_with(Vec::new),
                    expanded,
                );
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
                let expanded = paths
                    .iter()
                    .map(|p| self.expand(p))
                    .collect::<Result<Vec<_>, _>>()?;
                add_missing(self.config.volumes.get_or_insert_with(Vec::new), expanded);
            }
            Instruction::Healthcheck(check) => {
                self.config.healthcheck = Some(healthcheck(check));
            }
            Instruction::From(_) => {}
        }
        Ok(Effect::None)
    }

    fn arg(&mut self, bindings: &[ArgBinding]) -> Result<(), String> {
        for binding in bindings {
            match binding.value(|word| self.expand(word))? {
                Some(value) => self.args.insert(binding.name.clone(), value),
                None => self.args.remove(&binding.name),
            };
        }
        Ok(())
    }

    fn copy(&self, args: &CopyArgs, add: bool) -> Result<CopyPlan, String> {
        let written = self.expand(&args.destination)?;
        let chown = args.chown.as_deref().map(|w| self.expand(w)).transpose()?;
        let chmod = match &args.chmod {
            Some(word) => {
                let mode = self.expand(word)?;
                let bits = u32::from_str_radix(&mode, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| format!("--chmod={mode}: not an octal mode"))?;
                Some(bits)
            }
            None => None,
        };
        let files = args
            .heredocs
            .iter()
            .map(|h| Ok((h.name.clone(), self.heredoc_body(h)?)))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(CopyPlan {
            add,
            destination: normalize(&self.workdir.join(&written)),
            written_as_dir: written_as_directory(&written),
            several: args.sources.len() + args.heredocs.len() > 1,
            sources: args
                .sources
                .iter()
                .map(|s| self.expand(s))
                .collect::<Result<_, _>>()?,
            files,
            chown,
            chmod,
        })
    }

    fn command(&self, form: &CommandForm) -> Vec<String> {
        match form {
            CommandForm::Exec(words) => words.clone(),
            CommandForm::Shell(line) => self.through_shell(line.clone()),
        }
    }

    fn through_shell(&self, script: String) -> Vec<String> {
        let mut argv = self.shell.clone();
        argv.push(script);
        argv
    }

    fn run(&self, args: &RunArgs) -> Result<RunPlan, String> {
        let command = match &args.command {
            CommandForm::Exec(words) => RunCommand::Argv(words.clone()),
            CommandForm::Shell(line) => {
                let single = args.heredocs.len() == 1
                    && heredoc_marker(line.trim(), self.escape)
                        .is_some_and(|m| m.name == args.heredocs[0].name);
                if single {
                    let script = self.heredoc_body(&args.heredocs[0])?;
                    if script.starts_with("#!") {
                        RunCommand::Script(script)
                    } else {
                        RunCommand::Argv(self.through_shell(script))
                    }
                } else {
                    let mut script = line.clone();
                    for h in &args.heredocs {
                        script.push('\n');
                        script.push_str(&self.heredoc_body(h)?);
                        script.push_str(&h.name);
                    }
                    RunCommand::Argv(self.through_shell(script))
                }
            }
        };
        let mut env = self.args.clone();
        env.extend(self.env.clone());
        env.entry("PATH".into())
            .or_insert_with(|| DEFAULT_PATH.into());
        let mounts = args
            .mounts
            .iter()
            .map(|spec| self.mount(spec))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RunPlan {
            command,
            env,
            needs_home: !self.image_home,
            mounts,
        })
    }

    /// One `--mount` value, expanded and checked, its target absolute.
    pub fn mount(&self, spec: &str) -> Result<RunMount, String> {
        let expanded = self.expand(spec)?;
        let mut mount = parse_mount(&expanded).map_err(|e| format!("--mount={expanded}: {e}"))?;
        mount
            .resolve_target(&self.workdir)
            .map_err(|e| format!("--mount={expanded}: {e}"))?;
        Ok(mount)
    }
}

fn add_missing(list: &mut Vec<String>, items: Vec<String>) {
    for item in items {
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

fn healthcheck(check: &HealthcheckInstruction) -> Healthcheck {
    match check {
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

/// `.` and `..` resolved lexically (`..` stops at `/`); always absolute.
pub fn normalize(path: &Path) -> PathBuf {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{FinalImage, PlanRequest};

    /// Every effect of the steps the plan runs for its final image (a
    /// runtime chain's stages, or the assembled final stage), in order,
    /// from an image with `env` and WORKDIR `/`.
    fn evaluate(dockerfile: &str, env: &[(&str, &str)]) -> (Evaluator, Vec<Effect>) {
        let plan = PlanRequest {
            dockerfile: dockerfile.into(),
            ..Default::default()
        }
        .plan()
        .unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let mut rules = Evaluator::new(plan.escape, env.collect(), "/".into());
        let stages: Vec<&[crate::plan::Step]> = match &plan.final_image {
            FinalImage::Assemble(assemble) => vec![&assemble.steps],
            FinalImage::Runtime(runtime) => plan
                .chain(&runtime.chain)
                .unwrap()
                .stages
                .iter()
                .map(|s| s.steps.as_slice())
                .collect(),
        };
        let mut effects = Vec::new();
        for steps in stages {
            rules.start_stage();
            for step in steps {
                let effect = rules.apply(&step.instruction, &step.args);
                effects.push(effect.unwrap_or_else(|e| panic!("line {}: {e}", step.line)));
            }
        }
        (rules, effects)
    }

    fn runs(effects: &[Effect]) -> Vec<&RunPlan> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Run(run) => Some(run),
                _ => None,
            })
            .collect()
    }

    fn copies(effects: &[Effect]) -> Vec<&CopyPlan> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Copy(copy) => Some(copy),
                _ => None,
            })
            .collect()
    }

    fn argv(run: &RunPlan) -> Vec<&str> {
        match &run.command {
            RunCommand::Argv(argv) => argv.iter().map(String::as_str).collect(),
            RunCommand::Script(script) => vec!["script:", script.as_str()],
        }
    }

    /// The cases the chain pods and the final image's recipe both rely on:
    /// each is one Dockerfile, what RUN, COPY and the config see after it.
    #[test]
    fn env_and_arg_follow_dockers_scoping() {
        let (rules, effects) = evaluate(
            "FROM busybox\nARG V=arg\nENV A=1 B=x$A V=env\nENV C=${A}2\nRUN echo\n",
            &[("PATH", "/bin")],
        );
        let run = runs(&effects)[0];
        // B sees the environment from before its ENV; ENV wins over ARG.
        assert_eq!(run.env["B"], "x");
        assert_eq!(run.env["C"], "12");
        assert_eq!(run.env["V"], "env");
        assert_eq!(run.env["PATH"], "/bin");
        assert_eq!(rules.config().env.unwrap(), ["A=1", "B=x", "V=env", "C=12"]);
        // PATH defaults to Docker's when the image has none.
        let (_, effects) = evaluate("FROM busybox\nRUN true\n", &[]);
        assert_eq!(runs(&effects)[0].env["PATH"], DEFAULT_PATH);
    }

    #[test]
    fn args_are_per_stage_and_env_workdir_user_shell_carry_over() {
        let (rules, effects) = evaluate(
            "FROM busybox AS base\nARG V=1\nENV E=e\nWORKDIR /w\nUSER app\n\
             SHELL [\"/bin/bash\", \"-c\"]\nRUN echo\n\
             FROM base\nRUN echo $V\n",
            &[],
        );
        let runs = runs(&effects);
        assert_eq!(runs[0].env.get("V").map(String::as_str), Some("1"));
        assert_eq!(runs[1].env.get("V"), None);
        assert_eq!(runs[1].env["E"], "e");
        assert_eq!(argv(runs[1]), ["/bin/bash", "-c", "echo $V"]);
        assert_eq!(rules.workdir(), Path::new("/w"));
        assert_eq!(rules.user(), Some("app"));
    }

    #[test]
    fn workdir_is_relative_to_the_last_and_resolved_lexically() {
        let (rules, effects) = evaluate(
            "FROM busybox\nENV D=srv\nWORKDIR /$D\nWORKDIR app/../lib/.\nWORKDIR ../../..\nWORKDIR x\nRUN true\n",
            &[],
        );
        let dirs: Vec<_> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Workdir(d) => Some(d.display().to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(dirs, ["/srv", "/srv/lib", "/", "/x"]);
        assert_eq!(rules.config().working_dir.as_deref(), Some("/x"));
    }

    #[test]
    fn copy_destinations_owners_and_modes() {
        let (_, effects) = evaluate(
            "FROM busybox\nWORKDIR /w\nARG OWNER=app:staff\nCOPY a b ./\nCOPY a dest\nCOPY a sub/\n\
             COPY --chown=$OWNER --chmod=640 a /abs\nCOPY a .\nCOPY <<EOF /f\n$OWNER\nEOF\n",
            &[],
        );
        let copies = copies(&effects);
        let shape = |c: &CopyPlan| {
            (
                c.destination.display().to_string(),
                c.written_as_dir,
                c.several,
            )
        };
        assert_eq!(shape(copies[0]), ("/w".into(), true, true));
        assert_eq!(shape(copies[1]), ("/w/dest".into(), false, false));
        assert_eq!(shape(copies[2]), ("/w/sub".into(), true, false));
        assert_eq!(shape(copies[3]), ("/abs".into(), false, false));
        assert_eq!(copies[3].chown.as_deref(), Some("app:staff"));
        assert_eq!(copies[3].chmod, Some(0o640));
        assert_eq!(copies[0].sources, ["a", "b"]);
        assert!(copies[4].is_dir());
        assert_eq!(
            copies[5].files,
            [("EOF".to_string(), "app:staff\n".to_string())]
        );
    }

    #[test]
    fn a_bad_chmod_is_an_error_naming_it() {
        let plan = PlanRequest {
            dockerfile: "FROM busybox\nARG M=17777\nCOPY --chmod=$M a /a\n".into(),
            ..Default::default()
        }
        .plan()
        .unwrap();
        let FinalImage::Assemble(assemble) = &plan.final_image else {
            panic!("no RUN: assembled");
        };
        let mut rules = Evaluator::new('\\', BTreeMap::new(), "/".into());
        let mut errors = assemble
            .steps
            .iter()
            .filter_map(|step| rules.apply(&step.instruction, &step.args).err());
        assert_eq!(errors.next().unwrap(), "--chmod=17777: not an octal mode");
    }

    #[test]
    fn home_is_the_images_only_when_its_env_sets_it() {
        // The runtime's HOME (root's passwd home) is not the image's.
        let env = image_env(BTreeMap::from([("HOME".into(), "/root".into())]), "/root");
        assert!(env.is_empty());
        let (_, effects) = evaluate("FROM busybox\nENV X=[$HOME]\nRUN true\n", &[]);
        assert_eq!(runs(&effects)[0].env["X"], "[]");
        assert!(runs(&effects)[0].needs_home);
        // The image's own HOME, or one ENV sets, is kept and given to RUN.
        let env = image_env(BTreeMap::from([("HOME".into(), "/data".into())]), "/root");
        let (_, effects) = evaluate(
            "FROM busybox\nENV X=[$HOME]\nRUN true\n",
            &[("HOME", "/data")],
        );
        assert_eq!(runs(&effects)[0].env["X"], "[/data]");
        assert!(!runs(&effects)[0].needs_home);
        assert_eq!(env["HOME"], "/data");
        let (_, effects) = evaluate("FROM busybox\nENV HOME=/h\nRUN true\n", &[]);
        assert_eq!(runs(&effects)[0].env["HOME"], "/h");
        assert!(!runs(&effects)[0].needs_home);
    }

    #[test]
    fn run_heredocs_go_through_the_shell_or_run_as_scripts() {
        let (_, effects) = evaluate(
            "FROM busybox\nENV W=world\nRUN <<EOF\necho $W\nEOF\nRUN <<'EOF'\n#!/bin/sh\necho $W\nEOF\n\
             RUN cat <<A && cat <<B\na\nA\nb\nB\n",
            &[],
        );
        let runs = runs(&effects);
        assert_eq!(argv(runs[0]), ["/bin/sh", "-c", "echo world\n"]);
        assert_eq!(argv(runs[1]), ["script:", "#!/bin/sh\necho $W\n"]);
        assert_eq!(
            argv(runs[2]),
            ["/bin/sh", "-c", "cat <<A && cat <<B\na\nA\nb\nB"]
        );
    }

    #[test]
    fn cmd_and_entrypoint_use_the_shell_and_entrypoint_drops_an_older_cmd() {
        let (rules, _) = evaluate(
            "FROM busybox AS base\nCMD [\"old\"]\nFROM base\nSHELL [\"/bin/ash\", \"-c\"]\n\
             ENTRYPOINT run $X\nEXPOSE 80 8000-8001/udp 80\nLABEL a=b\nVOLUME /v /v\nRUN true\n",
            &[],
        );
        let config = rules.config();
        assert_eq!(config.entrypoint.unwrap(), ["/bin/ash", "-c", "run $X"]);
        assert_eq!(config.cmd, None);
        assert_eq!(
            config.exposed_ports.unwrap(),
            ["80/tcp", "8000/udp", "8001/udp"]
        );
        assert_eq!(config.volumes.unwrap(), ["/v"]);
        let (rules, _) = evaluate("FROM busybox\nCMD [\"c\"]\nENTRYPOINT [\"e\"]\n", &[]);
        assert_eq!(rules.config().cmd.unwrap(), ["c"]);
    }

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
    fn paths_normalize_lexically() {
        assert_eq!(normalize(Path::new("/go/./a/../b")), Path::new("/go/b"));
        assert_eq!(normalize(Path::new("/../..")), Path::new("/"));
    }
}
