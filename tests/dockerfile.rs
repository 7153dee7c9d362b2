//! The Dockerfile parser on a corpus of realistic multi-stage Dockerfiles,
//! its errors (each names its line), and a property test: no input panics it.

use std::path::Path;

use proptest::prelude::*;
use slimforge::dockerfile::{
    self, CommandForm, Dockerfile, DockerfileError, Healthcheck, Instruction, KeyValue, expand_word,
};

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dockerfiles")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn parse_fixture(name: &str) -> Dockerfile {
    dockerfile::parse(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn keywords(file: &Dockerfile, stage: usize) -> Vec<&'static str> {
    file.stages[stage]
        .instructions
        .iter()
        .map(|s| s.instruction.keyword())
        .collect()
}

/// (stage name or "", FROM image as written, FROM line, instruction names)
type StageShape = (&'static str, &'static str, usize, &'static [&'static str]);

#[test]
fn corpus_parses_into_the_stages_docker_sees() {
    let corpus: &[(&str, usize, &[StageShape])] = &[
        (
            "seed.Dockerfile",
            0,
            &[
                ("builder", "ubuntu", 1, &["ARG", "RUN", "COPY", "RUN"]),
                ("", "alpine", 7, &["COPY", "CMD"]),
            ],
        ),
        (
            "go.Dockerfile",
            0,
            &[
                (
                    "build",
                    "golang:1.22-alpine",
                    3,
                    &["ARG", "ARG", "WORKDIR", "COPY", "RUN", "COPY", "RUN"],
                ),
                (
                    "",
                    "gcr.io/distroless/static-debian12:nonroot",
                    13,
                    &["COPY", "USER", "EXPOSE", "ENTRYPOINT"],
                ),
            ],
        ),
        (
            "rust.Dockerfile",
            0,
            &[
                (
                    "build",
                    "rust:1.79-slim-bookworm",
                    1,
                    &["WORKDIR", "COPY", "RUN", "COPY", "RUN"],
                ),
                (
                    "",
                    "debian:bookworm-slim",
                    12,
                    &["RUN", "COPY", "ENV", "CMD"],
                ),
            ],
        ),
        (
            "node.Dockerfile",
            0,
            &[
                ("deps", "node:20-alpine", 1, &["WORKDIR", "COPY", "RUN"]),
                (
                    "build",
                    "node:20-alpine",
                    6,
                    &["WORKDIR", "COPY", "RUN", "COPY", "RUN"],
                ),
                (
                    "",
                    "node:20-alpine",
                    13,
                    &[
                        "WORKDIR",
                        "ENV",
                        "COPY",
                        "COPY",
                        "COPY",
                        "USER",
                        "EXPOSE",
                        "HEALTHCHECK",
                        "CMD",
                    ],
                ),
            ],
        ),
        (
            "maven.Dockerfile",
            0,
            &[
                (
                    "build",
                    "maven:3.9-eclipse-temurin-21",
                    1,
                    &["WORKDIR", "COPY", "RUN", "COPY", "RUN"],
                ),
                (
                    "",
                    "eclipse-temurin:21-jre-alpine",
                    8,
                    &["LABEL", "WORKDIR", "COPY", "EXPOSE", "ENTRYPOINT"],
                ),
            ],
        ),
        (
            "python.Dockerfile",
            0,
            &[
                (
                    "wheels",
                    "python:3.12-slim",
                    1,
                    &["RUN", "WORKDIR", "COPY", "RUN"],
                ),
                (
                    "",
                    "python:3.12-slim",
                    7,
                    &["ENV", "COPY", "RUN", "WORKDIR", "COPY", "USER", "CMD"],
                ),
            ],
        ),
        (
            "arg-before-from.Dockerfile",
            3,
            &[
                (
                    "build",
                    "golang:${GO_VERSION}-alpine",
                    5,
                    &["ARG", "ARG", "WORKDIR", "COPY", "RUN"],
                ),
                (
                    "",
                    "${RUNTIME}",
                    13,
                    &["ARG", "LABEL", "COPY", "ENTRYPOINT"],
                ),
            ],
        ),
        (
            "target.Dockerfile",
            0,
            &[
                (
                    "base",
                    "golang:1.22",
                    1,
                    &["WORKDIR", "COPY", "RUN", "COPY"],
                ),
                ("test", "base", 7, &["RUN"]),
                ("build", "base", 10, &["RUN"]),
                ("release", "scratch", 13, &["COPY", "ENTRYPOINT"]),
            ],
        ),
        (
            "three-builders.Dockerfile",
            0,
            &[
                ("backend", "golang:1.22", 1, &["WORKDIR", "COPY", "RUN"]),
                ("frontend", "node:20", 6, &["WORKDIR", "COPY", "RUN"]),
                ("bundle", "alpine:3.19", 11, &["RUN", "COPY", "COPY", "RUN"]),
                ("", "nginx:1.27-alpine", 17, &["COPY", "COPY", "EXPOSE"]),
            ],
        ),
        (
            "heredoc.Dockerfile",
            0,
            &[
                ("build", "debian:bookworm", 1, &["RUN", "COPY", "RUN"]),
                ("", "scratch", 16, &["COPY", "COPY", "ENTRYPOINT"]),
            ],
        ),
        (
            "fork.Dockerfile",
            0,
            &[
                ("base", "python:3.12", 1, &["WORKDIR", "COPY", "RUN"]),
                ("lint", "base", 6, &["RUN"]),
                ("build", "base", 9, &["RUN"]),
                ("", "python:3.12-slim", 12, &["COPY", "COPY", "CMD"]),
            ],
        ),
        (
            "escape.Dockerfile",
            1,
            &[
                (
                    "build",
                    "mcr.microsoft.com/windows/servercore:ltsc2022",
                    4,
                    &["ARG", "WORKDIR", "RUN"],
                ),
                (
                    "",
                    "mcr.microsoft.com/windows/nanoserver:ltsc2022",
                    10,
                    &["ARG", "COPY", "COPY", "CMD"],
                ),
            ],
        ),
    ];
    for (name, global_args, stages) in corpus {
        let file = parse_fixture(name);
        assert_eq!(file.global_args.len(), *global_args, "{name}: global ARGs");
        assert_eq!(file.stages.len(), stages.len(), "{name}: stages");
        for (i, (stage_name, image, line, expected)) in stages.iter().enumerate() {
            let stage = &file.stages[i];
            assert_eq!(stage.name().unwrap_or(""), *stage_name, "{name} stage {i}");
            assert_eq!(stage.from.image, *image, "{name} stage {i}");
            assert_eq!(stage.line, *line, "{name} stage {i}");
            assert_eq!(keywords(&file, i), *expected, "{name} stage {i}");
        }
    }
}

#[test]
fn seed_instructions_keep_their_words_and_lines() {
    let file = parse_fixture("seed.Dockerfile");
    let builder = &file.stages[0].instructions;
    let Instruction::Arg(args) = &builder[0].instruction else {
        panic!("not an ARG");
    };
    assert_eq!(args[0].name, "DEBIAN_FRONTEND");
    assert_eq!(args[0].default.as_deref(), Some("noninteractive"));
    assert_eq!(
        builder[1].instruction,
        Instruction::Run(dockerfile::RunArgs {
            command: CommandForm::Shell("apt-get update && apt-get install -y golang-go".into()),
            heredocs: vec![],
            mounts: vec![],
        })
    );
    let last = &file.stages[1].instructions;
    let Instruction::Copy(copy) = &last[0].instruction else {
        panic!("not a COPY");
    };
    assert_eq!(copy.from.as_deref(), Some("builder"));
    assert_eq!(
        (copy.sources.as_slice(), copy.destination.as_str()),
        (&["/app".to_string()][..], ".")
    );
    assert_eq!(
        (last[0].line, last[0].text.as_str()),
        (8, "COPY --from=builder /app .")
    );
    assert_eq!(
        last[1].instruction,
        Instruction::Cmd(CommandForm::Exec(vec!["./app".into()]))
    );
}

#[test]
fn continuations_join_lines_and_keep_the_first_line_number() {
    let file = parse_fixture("go.Dockerfile");
    let build = &file.stages[0];
    assert_eq!(build.from.platform.as_deref(), Some("$BUILDPLATFORM"));
    let run = &build.instructions[6];
    assert_eq!((run.line, run.end_line), (10, 11));
    assert_eq!(
        run.instruction,
        Instruction::Run(dockerfile::RunArgs {
            command: CommandForm::Shell(
                "CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH     go build -trimpath -ldflags=\"-s -w\" -o /out/server ./cmd/server".into()
            ),
            heredocs: vec![],
            mounts: vec![],
        })
    );
    let maven = parse_fixture("maven.Dockerfile");
    assert_eq!(
        maven.stages[1].instructions[0].instruction,
        Instruction::Label(vec![
            KeyValue {
                key: "org.opencontainers.image.title".into(),
                value: "\"orders\"".into()
            },
            KeyValue {
                key: "org.opencontainers.image.vendor".into(),
                value: "\"Example\"".into()
            },
        ])
    );
}

#[test]
fn heredocs_carry_their_bodies() {
    let file = parse_fixture("heredoc.Dockerfile");
    let build = &file.stages[0].instructions;
    let Instruction::Run(run) = &build[0].instruction else {
        panic!("not a RUN");
    };
    assert_eq!(run.command, CommandForm::Shell("<<EOF".into()));
    assert_eq!(
        run.heredocs[0].content,
        "set -e\napt-get update\napt-get install -y --no-install-recommends gcc libc6-dev\n"
    );
    let Instruction::Copy(copy) = &build[1].instruction else {
        panic!("not a COPY");
    };
    assert!(copy.sources.is_empty());
    assert_eq!(copy.destination, "/src/hello.c");
    // `#include` inside a heredoc is content, not a comment.
    assert!(copy.heredocs[0].content.starts_with("#include <stdio.h>\n"));
    let Instruction::Run(script) = &build[2].instruction else {
        panic!("not a RUN");
    };
    let heredoc = &script.heredocs[0];
    assert!(heredoc.chomp && !heredoc.expand);
    assert_eq!(
        heredoc.content,
        "echo \"building for $TARGETARCH\"\ngcc -static -O2 -o /out/hello /src/hello.c\n"
    );
    assert_eq!(file.stages[1].line, 16);
    let Instruction::Copy(files) = &file.stages[1].instructions[1].instruction else {
        panic!("not a COPY");
    };
    let names: Vec<(&str, bool)> = files
        .heredocs
        .iter()
        .map(|h| (h.name.as_str(), h.expand))
        .collect();
    assert_eq!(names, [("EOF", true), ("RAW", false)]);
    assert_eq!(file.stages[1].instructions[2].line, 23);
}

#[test]
fn the_escape_directive_changes_continuations_and_escapes() {
    let file = parse_fixture("escape.Dockerfile");
    assert_eq!(file.escape, '`');
    let run = &file.stages[0].instructions[2];
    assert_eq!(
        run.instruction,
        Instruction::Run(dockerfile::RunArgs {
            command: CommandForm::Shell("echo one     two".into()),
            heredocs: vec![],
            mounts: vec![],
        })
    );
    let got = expand_word("C:\\app\\`$literal", file.escape, &mut |_| None);
    assert_eq!(got.as_deref(), Ok("C:\\app\\$literal"));
}

#[test]
fn accepted_forms() {
    let text = r#"# syntax=docker/dockerfile:1.7
arg BASE=alpine
from ${BASE} As Final
env LEGACY value with  spaces
ENV A=1 B="two words" C='$A'
label "com.example.name"="demo"
MAINTAINER someone <someone@example.com>
WORKDIR /srv
USER app:app
STOPSIGNAL SIGINT
EXPOSE 80 443/tcp 8000-8010/udp
VOLUME ["/data", "/cache"]
VOLUME /a /b
SHELL ["/bin/ash", "-eo", "pipefail", "-c"]
HEALTHCHECK NONE
HEALTHCHECK --interval=1m30s --timeout=5s --start-period=10s --start-interval=1s --retries=2 CMD wget -q -O- localhost
ADD --chown=1:1 --chmod=0644 --link files.tar.gz /opt/
COPY ["with space.txt", "b.txt", "/dst/"]
COPY --link=false --chmod=755 run.sh /usr/local/bin/
RUN ["/bin/ash", "-c", "echo hi"]
ENTRYPOINT /entry.sh
CMD
"#;
    let file = dockerfile::parse(text).unwrap();
    assert_eq!(file.syntax.as_deref(), Some("docker/dockerfile:1.7"));
    let stage = &file.stages[0];
    assert_eq!(stage.name(), Some("final"));
    let ins: Vec<&Instruction> = stage.instructions.iter().map(|s| &s.instruction).collect();
    assert_eq!(
        ins[0],
        &Instruction::Env(vec![KeyValue {
            key: "LEGACY".into(),
            value: "value with  spaces".into()
        }])
    );
    let Instruction::Env(pairs) = ins[1] else {
        panic!("not ENV")
    };
    assert_eq!(pairs.len(), 3);
    assert_eq!(pairs[1].value, "\"two words\"");
    assert_eq!(
        ins[3],
        &Instruction::Maintainer("someone <someone@example.com>".into())
    );
    assert_eq!(
        ins[7],
        &Instruction::Expose(vec!["80".into(), "443/tcp".into(), "8000-8010/udp".into()])
    );
    assert_eq!(
        ins[8],
        &Instruction::Volume(vec!["/data".into(), "/cache".into()])
    );
    assert_eq!(ins[9], &Instruction::Volume(vec!["/a".into(), "/b".into()]));
    assert_eq!(ins[11], &Instruction::Healthcheck(Healthcheck::None));
    let Instruction::Healthcheck(Healthcheck::Check(check)) = ins[12] else {
        panic!("not a check")
    };
    assert_eq!(check.start_interval.as_deref(), Some("1s"));
    assert_eq!(check.retries, Some(2));
    let Instruction::Add(add) = ins[13] else {
        panic!("not ADD")
    };
    assert!(add.link);
    assert_eq!(
        (add.chown.as_deref(), add.chmod.as_deref()),
        (Some("1:1"), Some("0644"))
    );
    let Instruction::Copy(copy) = ins[14] else {
        panic!("not COPY")
    };
    assert_eq!(copy.sources, ["with space.txt", "b.txt"]);
    let Instruction::Copy(copy) = ins[15] else {
        panic!("not COPY")
    };
    assert!(!copy.link);
    assert_eq!(
        ins[16],
        &Instruction::Run(dockerfile::RunArgs {
            command: CommandForm::Exec(vec!["/bin/ash".into(), "-c".into(), "echo hi".into()]),
            heredocs: vec![],
            mounts: vec![],
        })
    );
    assert_eq!(
        ins[17],
        &Instruction::Entrypoint(CommandForm::Shell("/entry.sh".into()))
    );
    assert_eq!(
        ins[18],
        &Instruction::Cmd(CommandForm::Shell(String::new()))
    );
}

#[test]
fn every_error_names_its_line() {
    // (Dockerfile, line, instruction, what the message says)
    let cases: &[(&str, usize, &str, &str)] = &[
        (
            "FROM a\nFROM b\nCOPY --from=7 /x /y\n",
            3,
            "COPY",
            "no stage 7 comes before this one",
        ),
        (
            "FROM a\nCOPY --from=0 /x /y\n",
            2,
            "COPY",
            "this is the first stage",
        ),
        (
            "RUN echo hi\nFROM a\n",
            1,
            "RUN",
            "only ARG may come before the first FROM",
        ),
        ("FROM a\n\nFOO bar\n", 3, "FOO", "unknown instruction"),
        ("FROM a\nCOPPY a b\n", 2, "COPPY", "did you mean COPY?"),
        (
            "FROM a\nCOPY --form=b x y\n",
            2,
            "COPY",
            "unknown flag --form",
        ),
        (
            "FROM a\nCOPY --chown x y\n",
            2,
            "COPY",
            "--chown needs a value",
        ),
        (
            "FROM a\nCOPY --link=perhaps x y\n",
            2,
            "COPY",
            "expected true or false",
        ),
        (
            "FROM a\nCOPY --from=b --from=c x y\n",
            2,
            "COPY",
            "given twice",
        ),
        ("FROM a\nCOPY --chmod=rwx x y\n", 2, "COPY", "octal mode"),
        ("FROM a\nENV --x=1 A=1\n", 2, "ENV", "unknown flag --x"),
        (
            "FROM a\nRUN --mount=type=ssh \\\n  git clone git@example.com:x\n",
            2,
            "RUN",
            "type=ssh is not supported",
        ),
        (
            "FROM a\nRUN --mount=type=cache,target=/x,colour=red true\n",
            2,
            "RUN",
            "unknown key `colour` for type=cache",
        ),
        (
            "FROM a\nRUN --network=none true\n",
            2,
            "RUN",
            "RUN --network is not supported",
        ),
        (
            "FROM a\nONBUILD RUN make\n",
            2,
            "ONBUILD",
            "ONBUILD is not supported",
        ),
        (
            "FROM a\nADD https://example.com/x.tgz /x/\n",
            2,
            "ADD",
            "remote sources",
        ),
        (
            "FROM a\nADD git@github.com:o/r.git /src\n",
            2,
            "ADD",
            "remote sources",
        ),
        (
            "FROM a\nADD --checksum=sha256:00 https://x/y /y\n",
            2,
            "ADD",
            "--checksum",
        ),
        ("FROM\n", 1, "FROM", "missing base image"),
        ("FROM a b\n", 1, "FROM", "expected FROM"),
        ("FROM a AS 1st\n", 1, "FROM", "invalid stage name"),
        (
            "FROM a AS b\nRUN x\nFROM c AS B\n",
            3,
            "FROM",
            "already used on line 1",
        ),
        (
            "FROM a\nCOPY a b c\n",
            2,
            "COPY",
            "must be a directory: end it with `/`",
        ),
        (
            "FROM a\nCOPY a\n",
            2,
            "COPY",
            "at least one source and a destination",
        ),
        ("FROM a\nSHELL /bin/bash -c\n", 2, "SHELL", "JSON form"),
        (
            "FROM a\nHEALTHCHECK --interval=5 CMD true\n",
            2,
            "HEALTHCHECK",
            "duration",
        ),
        (
            "FROM a\nHEALTHCHECK CURL x\n",
            2,
            "HEALTHCHECK",
            "use CMD or NONE",
        ),
        ("FROM a\nRUN <<EOF\necho hi\n", 2, "RUN", "never terminated"),
        ("FROM a\nEXPOSE http\n", 2, "EXPOSE", "is not PORT"),
        ("FROM a\nENV ONLYKEY\n", 2, "ENV", "has no value"),
        ("FROM a\nWORKDIR\n", 2, "WORKDIR", "missing argument"),
        ("FROM a\nRUN\n", 2, "RUN", "missing command"),
        (
            "FROM a\nCOPY <<EOF <<EOF\nx\nEOF\nx\nEOF\n",
            2,
            "COPY",
            "heredoc cannot be the destination",
        ),
    ];
    for (text, line, instruction, says) in cases {
        let err = dockerfile::parse(text).expect_err(text);
        assert_eq!(err.line(), Some(*line), "{text:?}: {err}");
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("line {line}: {instruction}: ")),
            "{text:?}: {message}"
        );
        assert!(message.contains(says), "{text:?}: {message}");
    }
}

#[test]
fn whole_file_errors() {
    assert_eq!(dockerfile::parse(""), Err(DockerfileError::Empty));
    assert_eq!(
        dockerfile::parse("# only\n\n  \n"),
        Err(DockerfileError::Empty)
    );
    assert_eq!(dockerfile::parse("ARG A=1\n"), Err(DockerfileError::NoFrom));
    let err = dockerfile::parse("# escape=x\nFROM a\n").unwrap_err();
    assert_eq!(err.line(), Some(1));
    assert!(err.to_string().contains("escape"), "{err}");
}

/// Lines from Dockerfile fragments, flags, variables, quotes, heredoc
/// markers and continuations: a soup the parser must survive.
fn soup_line() -> impl Strategy<Value = String> {
    let keyword = prop::sample::select(vec![
        "FROM",
        "from",
        "ARG",
        "ENV",
        "LABEL",
        "COPY",
        "ADD",
        "RUN",
        "CMD",
        "ENTRYPOINT",
        "WORKDIR",
        "USER",
        "EXPOSE",
        "VOLUME",
        "SHELL",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "ONBUILD",
        "MAINTAINER",
        "BOGUS",
        "#",
        "# escape=`",
        "",
        "AS",
        "EOF",
    ]);
    let word = prop::sample::select(vec![
        "a",
        "b",
        "AS",
        "as",
        "x",
        "scratch",
        "alpine:3.19",
        "--from=a",
        "--from=0",
        "--from=9",
        "--from=$X",
        "--chown=1:1",
        "--chmod=755",
        "--link",
        "--platform=$BUILDPLATFORM",
        "--mount=x",
        "$X",
        "${X}",
        "${X:-a}",
        "${X:+b}",
        "${",
        "}",
        "'",
        "\"",
        "\\",
        "`",
        "<<EOF",
        "<<-'EOF'",
        "[\"a\"]",
        "[",
        "]",
        "A=1",
        "=",
        "/dst/",
        ".",
        "*",
        "NONE",
        "CMD",
        "--interval=5s",
        "\t",
        "é",
        "\u{feff}",
        "0",
        "-",
        "--",
        "http://x",
    ]);
    (keyword, prop::collection::vec(word, 0..6))
        .prop_map(|(keyword, words)| format!("{keyword} {}", words.join(" ")))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic_the_parser(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let _ = dockerfile::parse_bytes(&bytes);
    }

    #[test]
    fn random_text_never_panics_the_parser(text in "\\PC{0,400}") {
        let _ = dockerfile::parse(&text);
    }

    #[test]
    fn instruction_soups_never_panic_the_parser(lines in prop::collection::vec(soup_line(), 0..30)) {
        let text = lines.join("\n");
        if let Err(e) = dockerfile::parse(&text) {
            // Errors about an instruction always carry a line inside the file.
            if let Some(line) = e.line() {
                prop_assert!(line >= 1 && line <= lines.len().max(1), "{e}");
            }
        }
    }

    #[test]
    fn expansion_never_panics(word in "[a-z$\\{\\}:+\\-?'\"\\\\ /]{0,40}") {
        let _ = expand_word(&word, '\\', &mut |name| (name.len() % 2 == 0).then(|| name.to_string()));
    }
}
