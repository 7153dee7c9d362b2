//! Each instruction's arguments, as written, into its typed form.

use std::collections::BTreeMap;

use super::flags::{FlagKind, FlagRules, NO_FLAGS, parse_flags};
use super::values::{
    is_remote, valid_duration, valid_octal_mode, valid_port, valid_stage_name, written_as_directory,
};
use super::{
    ArgDeclaration, CommandForm, CopyArgs, FromArgs, Healthcheck, HealthcheckArgs, Instruction,
    KEYWORDS, KeyValue, RunArgs,
};
use crate::dockerfile::InstructionError;
use crate::dockerfile::lexer::{Heredoc, heredoc_marker};
use crate::dockerfile::words::{json_array, json_or_fields, split_flags, split_words};

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
        .filter(|k| crate::dockerfile::within_edits(word, k, 2))
        .min_by_key(|k| crate::dockerfile::edit_distance(word, k))
        .map(std::string::ToString::to_string)
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

fn parse_run(
    flag_words: &[String],
    rest: &str,
    heredocs: &[Heredoc],
) -> Result<Instruction, InstructionError> {
    // `--mount` may be given many times; the other flags once.
    let (mount_words, flag_words): (Vec<String>, Vec<String>) = flag_words
        .iter()
        .cloned()
        .partition(|w| w == "--mount" || w.starts_with("--mount="));
    let mut mounts = Vec::with_capacity(mount_words.len());
    for word in mount_words {
        let spec = match word.strip_prefix("--mount=") {
            Some(spec) if !spec.is_empty() => spec.to_string(),
            _ => {
                return Err(InstructionError::MissingFlagValue {
                    flag: "mount".into(),
                });
            }
        };
        if !spec.contains('$') {
            super::mount::parse_mount(&spec).map_err(|reason| InstructionError::BadFlagValue {
                flag: "mount".into(),
                value: spec.clone(),
                reason,
            })?;
        }
        mounts.push(spec);
    }
    parse_flags(
        &flag_words,
        &FlagRules {
            accepted: &[],
            refused: &[
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
    Ok(Instruction::Run(RunArgs {
        command,
        heredocs,
        mounts,
    }))
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
        let Ok(Instruction::Run(run)) =
            parse("RUN --mount=type=cache,target=/x --mount=type=secret,id=t,target=$T true")
        else {
            panic!("two mounts parse")
        };
        assert_eq!(
            run.mounts,
            ["type=cache,target=/x", "type=secret,id=t,target=$T"]
        );
        assert!(matches!(
            parse("RUN --mount=type=ssh true"),
            Err(InstructionError::BadFlagValue { .. })
        ));
        assert!(matches!(
            parse("RUN --mount true"),
            Err(InstructionError::MissingFlagValue { .. })
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
