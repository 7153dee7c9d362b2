//! One logical line → one typed instruction. Words are kept as written
//! (quotes, `$VAR`): expansion happens later, with the environment of the
//! stage it runs in.
//!
//! The typed instructions live here: they are what plans carry to the
//! pods. `parse` reads each instruction's arguments, with `flags`
//! checking its `--flags`; `values` holds the rules for single values
//! (durations, ports, modes, stage names) that other layers share.

mod flags;
mod mount;
mod parse;
mod values;

use serde::{Deserialize, Serialize};

use super::lexer::Heredoc;

pub use mount::{BindMount, CacheMount, RunMount, SecretMount, Sharing, TmpfsMount, parse_mount};
pub use parse::parse_instruction;
pub use values::{
    is_remote, valid_duration, valid_octal_mode, valid_stage_name, written_as_directory,
};

/// A Dockerfile instruction with its arguments as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Instruction {
    From(FromArgs),
    Arg(Vec<ArgDeclaration>),
    Env(Vec<KeyValue>),
    Label(Vec<KeyValue>),
    /// Deprecated; applied as the label `maintainer` (the value is not expanded).
    Maintainer(String),
    Workdir(String),
    Copy(CopyArgs),
    /// Local files only; local tar archives are extracted.
    Add(CopyArgs),
    Run(RunArgs),
    Cmd(CommandForm),
    Entrypoint(CommandForm),
    /// Always the JSON form.
    Shell(Vec<String>),
    User(String),
    Expose(Vec<String>),
    StopSignal(String),
    Healthcheck(Healthcheck),
    Volume(Vec<String>),
}

impl Instruction {
    /// The instruction's name as Docker writes it.
    pub fn keyword(&self) -> &'static str {
        match self {
            Self::From(_) => "FROM",
            Self::Arg(_) => "ARG",
            Self::Env(_) => "ENV",
            Self::Label(_) => "LABEL",
            Self::Maintainer(_) => "MAINTAINER",
            Self::Workdir(_) => "WORKDIR",
            Self::Copy(_) => "COPY",
            Self::Add(_) => "ADD",
            Self::Run(_) => "RUN",
            Self::Cmd(_) => "CMD",
            Self::Entrypoint(_) => "ENTRYPOINT",
            Self::Shell(_) => "SHELL",
            Self::User(_) => "USER",
            Self::Expose(_) => "EXPOSE",
            Self::StopSignal(_) => "STOPSIGNAL",
            Self::Healthcheck(_) => "HEALTHCHECK",
            Self::Volume(_) => "VOLUME",
        }
    }
}

impl Instruction {
    /// Whether Docker expands variables in this instruction's words (ADD
    /// COPY ENV EXPOSE FROM LABEL STOPSIGNAL USER VOLUME WORKDIR, and ARG
    /// defaults). RUN, CMD, ENTRYPOINT, SHELL and HEALTHCHECK are left to
    /// the shell; MAINTAINER is taken as written.
    pub fn expands_words(&self) -> bool {
        !matches!(
            self,
            Self::Run(_)
                | Self::Cmd(_)
                | Self::Entrypoint(_)
                | Self::Shell(_)
                | Self::Healthcheck(_)
                | Self::Maintainer(_)
        )
    }
}

/// Every instruction name Docker knows, ONBUILD included (refused).
pub const KEYWORDS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FromArgs {
    /// The image (or earlier stage) as written, before expansion.
    pub image: String,
    /// `--platform` as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// `AS name`, lowercased as Docker does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArgDeclaration {
    pub name: String,
    /// The default as written (expanded when the ARG is reached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// `KEY=value` of ENV and LABEL, both as written (both are expanded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// COPY and ADD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CopyArgs {
    /// Source paths as written (globs allowed); heredoc sources are in `heredocs`.
    pub sources: Vec<String>,
    /// Inline sources (`COPY <<EOF /file`), each a file named after its
    /// delimiter; bodies with `expand` go through `expand_heredoc` first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heredocs: Vec<Heredoc>,
    pub destination: String,
    /// `--from` as written: a stage name, a stage index or an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chown: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chmod: Option<String>,
    /// `--link`: accepted; every copy is a layer of its own here anyway.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub link: bool,
}

/// A command in the exec (JSON) form or the shell form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CommandForm {
    Exec(Vec<String>),
    Shell(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunArgs {
    /// The command as written on the instruction's line (`<<EOF`,
    /// `python3 <<EOF`). As in Docker: a command that is a single heredoc
    /// runs its body as the script (a body starting with `#!` as a file of
    /// its own); otherwise the line, each body and its terminator go to the
    /// shell together, which feeds the heredocs itself.
    pub command: CommandForm,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heredocs: Vec<Heredoc>,
    /// `--mount` values as written, in order ([`parse_mount`] reads them
    /// once expanded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disables the base's check.
    None,
    Check(HealthcheckArgs),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthcheckArgs {
    pub command: CommandForm,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}
