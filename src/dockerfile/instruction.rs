//! One logical line → one typed instruction. Words are kept as written
//! (quotes, `$VAR`): expansion happens later, with the environment of the
//! stage it runs in.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::InstructionError;
use super::lexer::{Heredoc, heredoc_marker};
use super::words::{json_array, json_or_fields, split_flags, split_words};

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

#[derive(Clone, Copy, PartialEq, Eq)]
enum FlagKind {
    Value,
    Bool,
}

/// The flags an instruction accepts, and those it knows but refuses.
struct FlagRules {
    accepted: &'static [(&'static str, FlagKind)],
    refused: &'static [(&'static str, &'static str)],
}

const NO_FLAGS: FlagRules = FlagRules {
    accepted: &[],
    refused: &[],
};

enum FlagValue {
    Value(String),
    Bool(bool),
}

struct Flags(BTreeMap<&'static str, FlagValue>);

impl Flags {
    fn value(&self, name: &str) -> Option<String> {
        match self.0.get(name) {
            Some(FlagValue::Value(v)) => Some(v.clone()),
            _ => None,
        }
    }

    fn is_set(&self, name: &str) -> bool {
        matches!(self.0.get(name), Some(FlagValue::Bool(true)))
    }
}

fn parse_flags(words: &[String], rules: &FlagRules) -> Result<Flags, InstructionError> {
    let mut flags = BTreeMap::new();
    for word in words {
        let body = word.strip_prefix("--").unwrap_or(word);
        let (name, value) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (body, None),
        };
        if let Some((_, why)) = rules.refused.iter().find(|(n, _)| *n == name) {
            return Err(InstructionError::Unsupported(why.to_string()));
        }
        let Some(&(known, kind)) = rules.accepted.iter().find(|(n, _)| *n == name) else {
            return Err(InstructionError::UnknownFlag {
                flag: name.to_string(),
                accepted: accepted_list(rules),
            });
        };
        let parsed = match (kind, value) {
            (FlagKind::Value, Some(v)) if !v.is_empty() => FlagValue::Value(v.to_string()),
            (FlagKind::Value, _) => {
                return Err(InstructionError::MissingFlagValue {
                    flag: known.to_string(),
                });
            }
            (FlagKind::Bool, None) => FlagValue::Bool(true),
            (FlagKind::Bool, Some(v)) if v.eq_ignore_ascii_case("true") => FlagValue::Bool(true),
            (FlagKind::Bool, Some(v)) if v.eq_ignore_ascii_case("false") => FlagValue::Bool(false),
            (FlagKind::Bool, Some(v)) => {
                return Err(InstructionError::BadFlagValue {
                    flag: known.to_string(),
                    value: v.to_string(),
                    reason: "expected true or false".into(),
                });
            }
        };
        if flags.insert(known, parsed).is_some() {
            return Err(InstructionError::DuplicateFlag {
                flag: known.to_string(),
            });
        }
    }
    Ok(Flags(flags))
}

fn accepted_list(rules: &FlagRules) -> String {
    if rules.accepted.is_empty() {
        return "it takes no flags".into();
    }
    let names: Vec<String> = rules
        .accepted
        .iter()
        .map(|(n, _)| format!("--{n}"))
        .collect();
    format!("accepted: {}", names.join(", "))
}

fn syntax(message: impl Into<String>) -> InstructionError {
    InstructionError::Syntax(message.into())
}

/// Parses one instruction: `keyword` is already upper-case, `rest` is what
/// follows it, `heredocs` the bodies the lexer read for it.
pub fn parse_instruction(
    keyword: &str,
    rest: &str,
    heredocs: &[Heredoc],
    escape: char,
) -> Result<Instruction, InstructionError> {
    let (flag_words, rest) = split_flags(rest);
    let rest = rest.trim();
    let no_flags = || parse_flags(&flag_words, &NO_FLAGS);
    match keyword {
        "FROM" => parse_from(&flag_words, rest),
        "ARG" => {
            no_flags()?;
            parse_arg(rest, escape)
        }
        "ENV" => {
            no_flags()?;
            Ok(Instruction::Env(key_values(rest, escape, "ENV")?))
        }
        "LABEL" => {
            no_flags()?;
            Ok(Instruction::Label(key_values(rest, escape, "LABEL")?))
        }
        "MAINTAINER" => {
            no_flags()?;
            Ok(Instruction::Maintainer(one_string(rest, "MAINTAINER NAME")?))
        }
        "WORKDIR" => {
            no_flags()?;
            Ok(Instruction::Workdir(one_string(rest, "WORKDIR /path")?))
        }
        "USER" => {
            no_flags()?;
            Ok(Instruction::User(one_string(rest, "USER name[:group]")?))
        }
        "STOPSIGNAL" => {
            no_flags()?;
            let signal = one_string(rest, "STOPSIGNAL SIGNAL")?;
            if signal.split_whitespace().count() != 1 {
                return Err(syntax("STOPSIGNAL takes one signal, e.g. SIGTERM"));
            }
            Ok(Instruction::StopSignal(signal))
        }
        "COPY" | "ADD" => parse_copy(keyword, &flag_words, rest, heredocs, escape),
        "RUN" => parse_run(&flag_words, rest, heredocs),
        "CMD" => {
            no_flags()?;
            Ok(Instruction::Cmd(command_form(rest)))
        }
        "ENTRYPOINT" => {
            no_flags()?;
            Ok(Instruction::Entrypoint(command_form(rest)))
        }
        "SHELL" => {
            no_flags()?;
            match json_array(rest) {
                Some(shell) if !shell.is_empty() => Ok(Instruction::Shell(shell)),
                _ => Err(syntax(
                    "SHELL needs the JSON form, e.g. SHELL [\"/bin/bash\", \"-c\"]",
                )),
            }
        }
        "EXPOSE" => {
            no_flags()?;
            parse_expose(rest)
        }
        "VOLUME" => {
            no_flags()?;
            let (paths, _) = json_or_fields(rest);
            if paths.is_empty() || paths.iter().any(|p| p.trim().is_empty()) {
                return Err(syntax("VOLUME needs one or more non-empty paths"));
            }
            Ok(Instruction::Volume(paths))
        }
        "HEALTHCHECK" => parse_healthcheck(&flag_words, rest),
        "ONBUILD" => Err(InstructionError::Unsupported(
            "ONBUILD is not supported: slimforge does not record build triggers in the images it builds"
                .into(),
        )),
        _ => Err(InstructionError::Unknown {
            suggestion: suggest_keyword(keyword),
        }),
    }
}

fn suggest_keyword(word: &str) -> Option<String> {
    KEYWORDS
        .iter()
        .filter(|k| super::within_edits(word, k, 2))
        .min_by_key(|k| super::edit_distance(word, k))
        .map(|k| k.to_string())
}

fn one_string(rest: &str, usage: &str) -> Result<String, InstructionError> {
    if rest.is_empty() {
        return Err(syntax(format!("missing argument: {usage}")));
    }
    Ok(rest.to_string())
}

fn command_form(rest: &str) -> CommandForm {
    match json_array(rest) {
        Some(words) => CommandForm::Exec(words),
        None => CommandForm::Shell(rest.to_string()),
    }
}

fn parse_from(flag_words: &[String], rest: &str) -> Result<Instruction, InstructionError> {
    let flags = parse_flags(
        flag_words,
        &FlagRules {
            accepted: &[("platform", FlagKind::Value)],
            refused: &[],
        },
    )?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    let (image, name) = match words.as_slice() {
        [] => return Err(syntax("missing base image: FROM IMAGE [AS NAME]")),
        [image] => (image, None),
        [image, as_, name] if as_.eq_ignore_ascii_case("as") => {
            let name = name.to_ascii_lowercase();
            if !valid_stage_name(&name) {
                return Err(InstructionError::StageName { name });
            }
            (image, Some(name))
        }
        _ => {
            return Err(syntax(format!(
                "expected FROM [--platform=…] IMAGE [AS NAME], got `{rest}`"
            )));
        }
    };
    Ok(Instruction::From(FromArgs {
        image: image.to_string(),
        platform: flags.value("platform"),
        name,
    }))
}

/// Docker's rule for stage names: a letter, then letters, digits, `-_.`.
pub fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

fn parse_arg(rest: &str, escape: char) -> Result<Instruction, InstructionError> {
    let words = split_words(rest, escape);
    if words.is_empty() {
        return Err(syntax("missing name: ARG NAME[=default]"));
    }
    let mut args = Vec::new();
    for word in words {
        let (name, default) = match word.split_once('=') {
            Some((name, value)) => (name.to_string(), Some(value.to_string())),
            None => (word, None),
        };
        if name.is_empty() {
            return Err(syntax("ARG with an empty name"));
        }
        args.push(ArgDeclaration { name, default });
    }
    Ok(Instruction::Arg(args))
}

/// `KEY=value …`, or the legacy `KEY value with spaces`.
fn key_values(rest: &str, escape: char, keyword: &str) -> Result<Vec<KeyValue>, InstructionError> {
    let words = split_words(rest, escape);
    let Some(first) = words.first() else {
        return Err(syntax(format!("missing arguments: {keyword} KEY=value")));
    };
    if !first.contains('=') {
        let Some((key, value)) = rest.split_once(char::is_whitespace) else {
            return Err(syntax(format!(
                "`{rest}` has no value: {keyword} KEY=value (or the legacy {keyword} KEY value)"
            )));
        };
        return Ok(vec![KeyValue {
            key: key.to_string(),
            value: value.trim_start().to_string(),
        }]);
    }
    words
        .into_iter()
        .map(|word| match word.split_once('=') {
            Some(("", _)) => Err(syntax(format!("`{word}` has an empty name"))),
            Some((key, value)) => Ok(KeyValue {
                key: key.to_string(),
                value: value.to_string(),
            }),
            None => Err(syntax(format!(
                "`{word}` is not KEY=value (mix of {keyword} forms?)"
            ))),
        })
        .collect()
}

fn parse_copy(
    keyword: &str,
    flag_words: &[String],
    rest: &str,
    heredocs: &[Heredoc],
    escape: char,
) -> Result<Instruction, InstructionError> {
    let is_copy = keyword == "COPY";
    let rules = if is_copy {
        FlagRules {
            accepted: &[
                ("from", FlagKind::Value),
                ("chown", FlagKind::Value),
                ("chmod", FlagKind::Value),
                ("link", FlagKind::Bool),
            ],
            refused: &[
                ("parents", "COPY --parents is not supported yet"),
                ("exclude", "COPY --exclude is not supported yet"),
            ],
        }
    } else {
        FlagRules {
            accepted: &[
                ("chown", FlagKind::Value),
                ("chmod", FlagKind::Value),
                ("link", FlagKind::Bool),
            ],
            refused: &[
                (
                    "checksum",
                    "ADD --checksum applies to remote sources, which slimforge does not fetch",
                ),
                (
                    "keep-git-dir",
                    "ADD --keep-git-dir applies to git sources, which slimforge does not fetch",
                ),
                ("exclude", "ADD --exclude is not supported yet"),
                ("unpack", "ADD --unpack is not supported yet"),
                (
                    "from",
                    "ADD has no --from: use COPY --from (ADD takes local files only)",
                ),
            ],
        }
    };
    let flags = parse_flags(flag_words, &rules)?;
    let (words, json) = json_or_fields(rest);
    if words.len() < 2 {
        return Err(syntax(format!(
            "{keyword} needs at least one source and a destination"
        )));
    }
    let (destination, source_words) = words.split_last().unwrap_or((&words[0], &[]));
    let marker = |word: &str| {
        if json {
            None
        } else {
            heredoc_marker(word, escape)
        }
    };
    if marker(destination).is_some() {
        return Err(syntax("a heredoc cannot be the destination"));
    }
    let mut sources = Vec::new();
    let mut inline = Vec::new();
    for word in source_words {
        match marker(word) {
            Some(m) => match heredocs.iter().find(|h| h.name == m.name) {
                Some(h) => inline.push(h.clone()),
                None => return Err(syntax(format!("no body for heredoc `{}`", m.name))),
            },
            None => sources.push(word.clone()),
        }
    }
    if !is_copy && let Some(remote) = sources.iter().find(|s| is_remote(s)) {
        return Err(InstructionError::Unsupported(format!(
            "ADD {remote}: remote sources (URLs, git) are not supported; download in a RUN step or COPY the file from the context"
        )));
    }
    if sources.len() + inline.len() > 1
        && !written_as_directory(destination)
        && !destination.contains('$')
    {
        return Err(InstructionError::TrailingSlash {
            destination: destination.clone(),
        });
    }
    let chmod = flags.value("chmod");
    if let Some(mode) = &chmod
        && !mode.contains('$')
        && !valid_octal_mode(mode)
    {
        return Err(InstructionError::BadFlagValue {
            flag: "chmod".into(),
            value: mode.clone(),
            reason: "expected an octal mode such as 755 or 0644".into(),
        });
    }
    let args = CopyArgs {
        sources,
        heredocs: inline,
        destination: destination.clone(),
        from: flags.value("from"),
        chown: flags.value("chown"),
        chmod,
        link: flags.is_set("link"),
    };
    Ok(if is_copy {
        Instruction::Copy(args)
    } else {
        Instruction::Add(args)
    })
}

/// A URL or git reference, which ADD would fetch.
pub fn is_remote(source: &str) -> bool {
    let lower = source.to_ascii_lowercase();
    ["http://", "https://", "git://", "git@", "ssh://"]
        .iter()
        .any(|p| lower.starts_with(p))
}

pub fn valid_octal_mode(mode: &str) -> bool {
    (1..=4).contains(&mode.len()) && mode.chars().all(|c| ('0'..='7').contains(&c))
}

fn parse_run(
    flag_words: &[String],
    rest: &str,
    heredocs: &[Heredoc],
) -> Result<Instruction, InstructionError> {
    parse_flags(
        flag_words,
        &FlagRules {
            accepted: &[],
            refused: &[
                (
                    "mount",
                    "RUN --mount is not supported yet: COPY what the step needs instead",
                ),
                ("network", "RUN --network is not supported"),
                ("security", "RUN --security is not supported"),
                ("device", "RUN --device is not supported"),
            ],
        },
    )?;
    let command = command_form(rest);
    let empty = match &command {
        CommandForm::Exec(words) => words.is_empty(),
        CommandForm::Shell(line) => line.is_empty(),
    };
    if empty {
        return Err(syntax(
            "missing command: RUN COMMAND or RUN [\"executable\", …]",
        ));
    }
    let heredocs = match &command {
        CommandForm::Exec(_) => Vec::new(),
        CommandForm::Shell(_) => heredocs.to_vec(),
    };
    Ok(Instruction::Run(RunArgs { command, heredocs }))
}

fn parse_expose(rest: &str) -> Result<Instruction, InstructionError> {
    let ports: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
    if ports.is_empty() {
        return Err(syntax("missing port: EXPOSE PORT[/PROTOCOL] …"));
    }
    for port in ports.iter().filter(|p| !p.contains('$')) {
        if !valid_port(port) {
            return Err(syntax(format!(
                "`{port}` is not PORT, PORT/tcp, PORT/udp, PORT/sctp or a range such as 8000-8010"
            )));
        }
    }
    Ok(Instruction::Expose(ports))
}

fn valid_port(spec: &str) -> bool {
    let (range, protocol) = match spec.split_once('/') {
        Some((range, protocol)) => (range, Some(protocol.to_ascii_lowercase())),
        None => (spec, None),
    };
    let number =
        |s: &str| !s.is_empty() && s.len() <= 5 && s.parse::<u32>().is_ok_and(|n| n <= 65535);
    let range_ok = match range.split_once('-') {
        Some((low, high)) => number(low) && number(high),
        None => number(range),
    };
    range_ok && protocol.is_none_or(|p| matches!(p.as_str(), "tcp" | "udp" | "sctp"))
}

fn parse_healthcheck(flag_words: &[String], rest: &str) -> Result<Instruction, InstructionError> {
    let flags = parse_flags(
        flag_words,
        &FlagRules {
            accepted: &[
                ("interval", FlagKind::Value),
                ("timeout", FlagKind::Value),
                ("start-period", FlagKind::Value),
                ("start-interval", FlagKind::Value),
                ("retries", FlagKind::Value),
            ],
            refused: &[],
        },
    )?;
    let (kind, command) = match rest.split_once(char::is_whitespace) {
        Some((kind, command)) => (kind, command.trim()),
        None => (rest, ""),
    };
    match kind.to_ascii_uppercase().as_str() {
        "NONE" if command.is_empty() => Ok(Instruction::Healthcheck(Healthcheck::None)),
        "NONE" => Err(syntax("HEALTHCHECK NONE takes no arguments")),
        "CMD" => {
            let command = command_form(command);
            let empty = match &command {
                CommandForm::Exec(words) => words.is_empty(),
                CommandForm::Shell(line) => line.is_empty(),
            };
            if empty {
                return Err(syntax("missing command after HEALTHCHECK CMD"));
            }
            let mut durations = BTreeMap::new();
            for name in ["interval", "timeout", "start-period", "start-interval"] {
                if let Some(value) = flags.value(name) {
                    if !valid_duration(&value) {
                        return Err(InstructionError::BadFlagValue {
                            flag: name.into(),
                            value,
                            reason: "expected a duration such as 30s, 1m30s or 500ms".into(),
                        });
                    }
                    durations.insert(name, value);
                }
            }
            let retries = match flags.value("retries") {
                Some(value) => {
                    Some(
                        value
                            .parse::<u32>()
                            .map_err(|_| InstructionError::BadFlagValue {
                                flag: "retries".into(),
                                value: value.clone(),
                                reason: "expected a whole number, 0 or more".into(),
                            })?,
                    )
                }
                None => None,
            };
            Ok(Instruction::Healthcheck(Healthcheck::Check(
                HealthcheckArgs {
                    command,
                    interval: durations.remove("interval"),
                    timeout: durations.remove("timeout"),
                    start_period: durations.remove("start-period"),
                    start_interval: durations.remove("start-interval"),
                    retries,
                },
            )))
        }
        "" => Err(syntax(
            "missing arguments: HEALTHCHECK [OPTIONS] CMD command, or HEALTHCHECK NONE",
        )),
        other => Err(syntax(format!(
            "unknown HEALTHCHECK type `{other}` (use CMD or NONE)"
        ))),
    }
}

/// A Go duration: `0`, or numbers with units ns us µs ms s m h (`1m30s`).
pub fn valid_duration(text: &str) -> bool {
    if text == "0" {
        return true;
    }
    let mut rest = text;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return false;
        }
        rest = &rest[number_len..];
        let Some(unit) = ["ns", "us", "µs", "ms", "s", "m", "h"]
            .iter()
            .find(|u| rest.starts_with(*u))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
    }
    true
}

/// Whether a COPY/ADD destination, as written, names a directory: a
/// trailing `/`, or `.`/`..` (alone or as the last component). BuildKit
/// reads `COPY a b .` so; the classic builder wanted the `/`.
pub fn written_as_directory(destination: &str) -> bool {
    destination.ends_with('/')
        || destination == "."
        || destination == ".."
        || destination.ends_with("/.")
        || destination.ends_with("/..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Instruction, InstructionError> {
        let (keyword, rest) = line.split_once(' ').unwrap_or((line, ""));
        parse_instruction(&keyword.to_ascii_uppercase(), rest, &[], '\\')
    }

    #[test]
    fn env_has_two_forms() {
        assert_eq!(
            parse("ENV A=1 B=\"x y\"").unwrap(),
            Instruction::Env(vec![
                KeyValue {
                    key: "A".into(),
                    value: "1".into()
                },
                KeyValue {
                    key: "B".into(),
                    value: "\"x y\"".into()
                },
            ])
        );
        assert_eq!(
            parse("ENV PATH /x:$PATH  and more").unwrap(),
            Instruction::Env(vec![KeyValue {
                key: "PATH".into(),
                value: "/x:$PATH  and more".into()
            }])
        );
        assert!(parse("ENV A").is_err());
        assert!(parse("ENV A=1 B").is_err());
        assert!(parse("ENV =1").is_err());
    }

    #[test]
    fn only_dockers_list_of_instructions_expands() {
        let expands = |line: &str| parse(line).unwrap().expands_words();
        for line in [
            "COPY a b",
            "ADD a b",
            "ENV A=1",
            "WORKDIR /a",
            "USER u",
            "EXPOSE 80",
            "LABEL a=b",
            "VOLUME /v",
            "STOPSIGNAL 9",
            "ARG A",
        ] {
            assert!(expands(line), "{line}");
        }
        for line in [
            "RUN x",
            "CMD x",
            "ENTRYPOINT x",
            "SHELL [\"sh\"]",
            "HEALTHCHECK NONE",
            "MAINTAINER me",
        ] {
            assert!(!expands(line), "{line}");
        }
    }

    #[test]
    fn go_durations() {
        for ok in ["0", "30s", "1m30s", "500ms", "1.5h", "10us"] {
            assert!(valid_duration(ok), "{ok}");
        }
        for bad in ["", "30", "s", "1x", "-1s", "1..2s"] {
            assert!(!valid_duration(bad), "{bad}");
        }
    }

    #[test]
    fn ports() {
        for ok in ["80", "80/tcp", "53/UDP", "8000-8010/tcp", "65535"] {
            assert!(valid_port(ok), "{ok}");
        }
        for bad in ["", "http", "80/xyz", "70000", "1-", "0.0.0.0:80"] {
            assert!(!valid_port(bad), "{bad}");
        }
    }

    #[test]
    fn flags_are_checked() {
        assert!(matches!(
            parse("COPY --form=a b c"),
            Err(InstructionError::UnknownFlag { .. })
        ));
        assert!(matches!(
            parse("COPY --from a b"),
            Err(InstructionError::MissingFlagValue { .. })
        ));
        assert!(matches!(
            parse("COPY --link=maybe a b"),
            Err(InstructionError::BadFlagValue { .. })
        ));
        assert!(matches!(
            parse("COPY --chown=1 --chown=2 a b"),
            Err(InstructionError::DuplicateFlag { .. })
        ));
        assert!(matches!(
            parse("RUN --mount=type=cache,target=/x true"),
            Err(InstructionError::Unsupported(_))
        ));
        assert!(matches!(
            parse("WORKDIR --x /a"),
            Err(InstructionError::UnknownFlag { .. })
        ));
    }

    #[test]
    fn healthcheck_forms() {
        assert_eq!(
            parse("HEALTHCHECK NONE").unwrap(),
            Instruction::Healthcheck(Healthcheck::None)
        );
        let Instruction::Healthcheck(Healthcheck::Check(check)) =
            parse("HEALTHCHECK --interval=5s --retries=3 CMD [\"/bin/check\"]").unwrap()
        else {
            panic!("not a check");
        };
        assert_eq!(check.command, CommandForm::Exec(vec!["/bin/check".into()]));
        assert_eq!(
            (check.interval.as_deref(), check.retries),
            (Some("5s"), Some(3))
        );
        assert!(parse("HEALTHCHECK NONE x").is_err());
        assert!(parse("HEALTHCHECK CURL x").is_err());
        assert!(parse("HEALTHCHECK CMD").is_err());
        assert!(parse("HEALTHCHECK --interval=5 CMD x").is_err());
        assert!(parse("HEALTHCHECK --retries=-1 CMD x").is_err());
    }
}
