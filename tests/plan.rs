//! The planner on the Dockerfile corpus (chains, dependsOn, exports, waves,
//! final classification, expanded values), its errors (each names its
//! line), a property test (no input panics it; plans are consistent), and
//! the `slimforge plan` command itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use proptest::prelude::*;
use slimforge::dockerfile::{Instruction, KeyValue, expand_word};
use slimforge::plan::{
    ArgOrigin, BuildPlan, ChainRole, CopySource, FinalImage, PlanError, PlanRequest,
    plan_dockerfile,
};

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dockerfiles")
        .join(name)
}

fn fixture(name: &str) -> String {
    let path = fixture_path(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn plan_with(
    text: &str,
    args: &[(&str, &str)],
    target: Option<&str>,
) -> Result<BuildPlan, PlanError> {
    let args: BTreeMap<String, String> = args
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    plan_dockerfile(text, &args, target, None)
}

fn plan(text: &str) -> BuildPlan {
    plan_with(text, &[], None).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// What a chain must be: id, root image, stage ids, dependsOn, export paths.
struct ChainShape {
    id: &'static str,
    image: &'static str,
    stages: &'static [&'static str],
    depends_on: &'static [&'static str],
    exports: &'static [&'static str],
}

const fn chain(
    id: &'static str,
    image: &'static str,
    stages: &'static [&'static str],
    depends_on: &'static [&'static str],
    exports: &'static [&'static str],
) -> ChainShape {
    ChainShape {
        id,
        image,
        stages,
        depends_on,
        exports,
    }
}

enum FinalShape {
    Assemble {
        base: &'static str,
    },
    Runtime {
        chain: &'static str,
        base: &'static str,
    },
}

struct Case {
    file: &'static str,
    args: &'static [(&'static str, &'static str)],
    target: Option<&'static str>,
    chains: Vec<ChainShape>,
    waves: &'static [&'static [&'static str]],
    final_image: FinalShape,
}

#[test]
fn corpus_plans_follow_dockers_semantics() {
    use FinalShape::*;
    let cases = [
        Case {
            file: "seed.Dockerfile",
            args: &[],
            target: None,
            chains: vec![chain("builder", "ubuntu", &["builder"], &[], &["/app"])],
            waves: &[&["builder"]],
            final_image: Assemble { base: "alpine" },
        },
        Case {
            file: "seed.Dockerfile",
            args: &[],
            target: Some("builder"),
            chains: vec![chain("builder", "ubuntu", &["builder"], &[], &[])],
            waves: &[&["builder"]],
            final_image: Runtime {
                chain: "builder",
                base: "ubuntu",
            },
        },
        Case {
            file: "go.Dockerfile",
            args: &[],
            target: None,
            chains: vec![chain(
                "build",
                "golang:1.22-alpine",
                &["build"],
                &[],
                &["/out/server"],
            )],
            waves: &[&["build"]],
            final_image: Assemble {
                base: "gcr.io/distroless/static-debian12:nonroot",
            },
        },
        Case {
            file: "rust.Dockerfile",
            args: &[],
            target: None,
            chains: vec![
                chain(
                    "build",
                    "rust:1.79-slim-bookworm",
                    &["build"],
                    &[],
                    &["/app/target/release/hello"],
                ),
                chain("1", "debian:bookworm-slim", &["1"], &["build"], &[]),
            ],
            waves: &[&["build"], &["1"]],
            final_image: Runtime {
                chain: "1",
                base: "debian:bookworm-slim",
            },
        },
        Case {
            file: "node.Dockerfile",
            args: &[],
            target: None,
            chains: vec![
                chain(
                    "deps",
                    "node:20-alpine",
                    &["deps"],
                    &[],
                    &["/app/node_modules"],
                ),
                chain("build", "node:20-alpine", &["build"], &[], &["/app/dist"]),
            ],
            waves: &[&["deps", "build"]],
            final_image: Assemble {
                base: "node:20-alpine",
            },
        },
        Case {
            file: "maven.Dockerfile",
            args: &[],
            target: None,
            chains: vec![chain(
                "build",
                "maven:3.9-eclipse-temurin-21",
                &["build"],
                &[],
                &["/build/target/*.jar"],
            )],
            waves: &[&["build"]],
            final_image: Assemble {
                base: "eclipse-temurin:21-jre-alpine",
            },
        },
        Case {
            file: "python.Dockerfile",
            args: &[],
            target: None,
            chains: vec![
                chain("wheels", "python:3.12-slim", &["wheels"], &[], &["/wheels"]),
                chain("1", "python:3.12-slim", &["1"], &["wheels"], &[]),
            ],
            waves: &[&["wheels"], &["1"]],
            final_image: Runtime {
                chain: "1",
                base: "python:3.12-slim",
            },
        },
        Case {
            file: "arg-before-from.Dockerfile",
            args: &[],
            target: None,
            chains: vec![chain(
                "build",
                "golang:1.22-alpine",
                &["build"],
                &[],
                &["/out/server"],
            )],
            waves: &[&["build"]],
            final_image: Assemble {
                base: "alpine:3.19",
            },
        },
        Case {
            file: "arg-before-from.Dockerfile",
            args: &[
                ("GO_VERSION", "1.21"),
                ("RUNTIME", "debian:12-slim"),
                ("APP", "worker"),
            ],
            target: None,
            chains: vec![chain(
                "build",
                "golang:1.21-alpine",
                &["build"],
                &[],
                &["/out/worker"],
            )],
            waves: &[&["build"]],
            final_image: Assemble {
                base: "debian:12-slim",
            },
        },
        Case {
            file: "target.Dockerfile",
            args: &[],
            target: None,
            chains: vec![chain(
                "build",
                "golang:1.22",
                &["base", "build"],
                &[],
                &["/out/app"],
            )],
            waves: &[&["build"]],
            final_image: Assemble { base: "scratch" },
        },
        Case {
            file: "target.Dockerfile",
            args: &[],
            target: Some("test"),
            chains: vec![chain("test", "golang:1.22", &["base", "test"], &[], &[])],
            waves: &[&["test"]],
            final_image: Runtime {
                chain: "test",
                base: "golang:1.22",
            },
        },
        Case {
            file: "target.Dockerfile",
            args: &[],
            target: Some("base"),
            chains: vec![chain("base", "golang:1.22", &["base"], &[], &[])],
            waves: &[&["base"]],
            final_image: Runtime {
                chain: "base",
                base: "golang:1.22",
            },
        },
        Case {
            file: "three-builders.Dockerfile",
            args: &[],
            target: None,
            chains: vec![
                chain("backend", "golang:1.22", &["backend"], &[], &["/out/api"]),
                chain("frontend", "node:20", &["frontend"], &[], &["/web/dist"]),
                chain(
                    "bundle",
                    "alpine:3.19",
                    &["bundle"],
                    &["frontend", "backend"],
                    &["/bundle/www", "/bundle/api"],
                ),
            ],
            waves: &[&["backend", "frontend"], &["bundle"]],
            final_image: Assemble {
                base: "nginx:1.27-alpine",
            },
        },
        Case {
            file: "heredoc.Dockerfile",
            args: &[],
            target: None,
            chains: vec![chain(
                "build",
                "debian:bookworm",
                &["build"],
                &[],
                &["/out/hello"],
            )],
            waves: &[&["build"]],
            final_image: Assemble { base: "scratch" },
        },
        Case {
            file: "fork.Dockerfile",
            args: &[],
            target: None,
            chains: vec![
                chain("lint", "python:3.12", &["base", "lint"], &[], &["/reports"]),
                chain("build", "python:3.12", &["base", "build"], &[], &["/dist"]),
            ],
            waves: &[&["lint", "build"]],
            final_image: Assemble {
                base: "python:3.12-slim",
            },
        },
        Case {
            file: "escape.Dockerfile",
            args: &[],
            target: None,
            chains: vec![chain(
                "build",
                "mcr.microsoft.com/windows/servercore:ltsc2022",
                &["build"],
                &[],
                &["C:\\app\\out.exe", "C:\\app\\$literal"],
            )],
            waves: &[&["build"]],
            final_image: Assemble {
                base: "mcr.microsoft.com/windows/nanoserver:ltsc2022",
            },
        },
    ];
    for case in cases {
        let label = format!(
            "{} (target {:?}, args {:?})",
            case.file, case.target, case.args
        );
        let plan = plan_with(&fixture(case.file), case.args, case.target)
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let ids: Vec<&str> = plan.chains.iter().map(|c| c.id.as_str()).collect();
        let want: Vec<&str> = case.chains.iter().map(|c| c.id).collect();
        assert_eq!(ids, want, "{label}: chains");
        for (got, want) in plan.chains.iter().zip(case.chains) {
            let stages: Vec<String> = got.stages.iter().map(|s| s.stage.id()).collect();
            let exports: Vec<&str> = got.exports.iter().map(|e| e.path.as_str()).collect();
            assert_eq!(got.image, want.image, "{label}: chain {} image", got.id);
            assert_eq!(stages, want.stages, "{label}: chain {} stages", got.id);
            assert_eq!(
                got.depends_on, want.depends_on,
                "{label}: chain {} dependsOn",
                got.id
            );
            assert_eq!(exports, want.exports, "{label}: chain {} exports", got.id);
        }
        let waves: Vec<Vec<&str>> = plan
            .waves
            .iter()
            .map(|w| w.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(waves, case.waves, "{label}: waves");
        match (&plan.final_image, case.final_image) {
            (FinalImage::Assemble(got), Assemble { base }) => {
                assert_eq!(got.base, base, "{label}: final base");
                assert!(
                    plan.chains.iter().all(|c| c.role == ChainRole::Builder),
                    "{label}"
                );
            }
            (FinalImage::Runtime(got), Runtime { chain, base }) => {
                assert_eq!(
                    (got.chain.as_str(), got.base.as_str()),
                    (chain, base),
                    "{label}"
                );
                let runtime: Vec<&str> = plan
                    .chains
                    .iter()
                    .filter(|c| c.role == ChainRole::Runtime)
                    .map(|c| c.id.as_str())
                    .collect();
                assert_eq!(runtime, [chain], "{label}: runtime chain");
            }
            (got, _) => panic!("{label}: final image is {got:?}"),
        }
        assert!(plan.extractions.is_empty(), "{label}: extractions");
        let json = serde_json::to_string(&plan).unwrap();
        let back: BuildPlan = serde_json::from_str(&json).unwrap();
        assert_eq!(back, plan, "{label}: JSON round trip");
    }
}

#[test]
fn seed_plan_in_detail() {
    let plan = plan(&fixture("seed.Dockerfile"));
    let builder = &plan.chains[0];
    assert!(builder.needs_context);
    let export = &builder.exports[0];
    assert_eq!(
        (
            export.id.as_str(),
            export.stage.as_deref(),
            export.path.as_str()
        ),
        ("builder-1", Some("builder"), "/app")
    );
    assert_eq!(
        (export.consumers[0].stage.as_str(), export.consumers[0].line),
        ("1", 8)
    );
    let arg = &builder.stages[0].steps[0].args[0];
    assert_eq!(
        (arg.name.as_str(), arg.from, arg.value.as_deref()),
        (
            "DEBIAN_FRONTEND",
            ArgOrigin::Default,
            Some("noninteractive")
        )
    );
    let FinalImage::Assemble(assemble) = &plan.final_image else {
        panic!("not assembled");
    };
    assert_eq!((assemble.stage.index, assemble.stage.line), (1, 7));
    let copy = &assemble.steps[0];
    assert_eq!(
        (copy.line, copy.text.as_str()),
        (8, "COPY --from=builder /app .")
    );
    assert_eq!(
        copy.source,
        Some(CopySource::Stage {
            chain: "builder".into(),
            stage: "builder".into(),
            paths: vec!["/app".into()],
            exports: vec!["builder-1".into()],
        })
    );
    assert_eq!(assemble.steps[1].line, 9);
    assert!(matches!(assemble.steps[1].instruction, Instruction::Cmd(_)));
}

#[test]
fn stages_the_target_does_not_need_are_dropped() {
    let plan = plan(&fixture("target.Dockerfile"));
    let all: Vec<String> = plan
        .chains
        .iter()
        .flat_map(|c| c.stages.iter().map(|s| s.stage.id()))
        .collect();
    assert!(!all.contains(&"test".to_string()), "{all:?}");
    let err = plan_with(&fixture("target.Dockerfile"), &[], Some("tset")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown target stage `tset` (stages: base, test, build, release)"
    );
    // Targets are matched without regard to case, as stage names are.
    assert!(plan_with(&fixture("target.Dockerfile"), &[], Some("TEST")).is_ok());
}

#[test]
fn a_fork_is_replayed_in_each_chain_and_says_so() {
    let plan = plan(&fixture("fork.Dockerfile"));
    assert_eq!(plan.chains[0].stages[0].replayed_in, ["build"]);
    assert_eq!(plan.chains[1].stages[0].replayed_in, ["lint"]);
    assert!(
        plan.chains
            .iter()
            .all(|c| c.stages[1].replayed_in.is_empty())
    );
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.line == Some(1) && w.message.contains("runs again in each")),
        "{:?}",
        plan.warnings
    );
}

#[test]
fn a_final_stage_built_from_a_stage_is_a_runtime_chain() {
    let text = "FROM golang:1.22 AS base\nRUN go install example.com/tool@latest\n\nFROM base AS build\nRUN go build -o /out/app .\n\nFROM base\nCOPY --from=build /out/app /usr/local/bin/app\nCMD [\"app\"]\n";
    let plan = plan(text);
    let ids: Vec<&str> = plan.chains.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["build", "2"]);
    let runtime = plan.chain("2").unwrap();
    assert_eq!(runtime.role, ChainRole::Runtime);
    assert_eq!(runtime.depends_on, ["build"]);
    assert_eq!(runtime.stages[0].replayed_in, ["build"]);
    let FinalImage::Runtime(final_image) = &plan.final_image else {
        panic!("not runtime");
    };
    assert_eq!(final_image.base, "golang:1.22");
    assert!(
        final_image.reason.contains("FROM stage base"),
        "{}",
        final_image.reason
    );
    assert_eq!(
        plan.waves,
        [vec!["build".to_string()], vec!["2".to_string()]]
    );
}

#[test]
fn copying_from_an_ancestor_stays_in_the_chain() {
    let text = "FROM alpine:3.19 AS base\nRUN echo v1 > /etc/version\nFROM base AS next\nRUN echo v2 > /etc/version\nCOPY --from=base /etc/version /etc/version.orig\nFROM scratch\nCOPY --from=next /etc /etc\n";
    let plan = plan(text);
    let next = plan.chain("next").unwrap();
    assert!(next.depends_on.is_empty());
    let paths: Vec<(Option<&str>, &str)> = next
        .exports
        .iter()
        .map(|e| (e.stage.as_deref(), e.path.as_str()))
        .collect();
    assert_eq!(
        paths,
        [(Some("base"), "/etc/version"), (Some("next"), "/etc")]
    );
}

#[test]
fn copy_from_an_image_becomes_an_extraction() {
    let text = "FROM alpine:3.19\nCOPY --from=busybox:1.36 /bin/busybox /bin/\nCOPY --from=busybox:1.36 /etc/passwd /bin/busybox /x/\nCOPY --from=docker.io/library/golang:1.22 /usr/local/go /usr/local/go\n";
    let plan = plan(text);
    assert!(plan.chains.is_empty());
    let images: Vec<(&str, &str)> = plan
        .extractions
        .iter()
        .map(|e| (e.id.as_str(), e.image.as_str()))
        .collect();
    assert_eq!(
        images,
        [
            ("extract-1", "busybox:1.36"),
            ("extract-2", "docker.io/library/golang:1.22")
        ]
    );
    let busybox: Vec<(&str, usize)> = plan.extractions[0]
        .exports
        .iter()
        .map(|e| (e.path.as_str(), e.consumers.len()))
        .collect();
    assert_eq!(busybox, [("/bin/busybox", 2), ("/etc/passwd", 1)]);
    assert_eq!(
        plan.waves,
        [vec!["extract-1".to_string(), "extract-2".to_string()]]
    );
    let FinalImage::Assemble(assemble) = &plan.final_image else {
        panic!("not assembled");
    };
    assert!(matches!(
        &assemble.steps[0].source,
        Some(CopySource::Image { extraction, .. }) if extraction == "extract-1"
    ));
}

#[test]
fn a_near_miss_of_a_stage_name_is_an_image_with_a_hint() {
    let text = "FROM golang:1.22 AS builder\nRUN go build -o /app .\nFROM alpine\nCOPY --from=biulder /app /app\n";
    let plan = plan(text);
    assert_eq!(plan.extractions[0].image, "biulder");
    assert!(plan.chains.is_empty(), "the stage is not needed");
    let hint = plan
        .warnings
        .iter()
        .find(|w| w.message.contains("stage builder"))
        .expect("a hint");
    assert_eq!(hint.line, Some(4));
    // Short names: one edit at most.
    let plan = plan_with(
        "FROM a AS app\nFROM b\nCOPY --from=apq /x /x\nCOPY --from=xyz /y /y\n",
        &[],
        None,
    )
    .unwrap();
    let hints: Vec<usize> = plan.warnings.iter().filter_map(|w| w.line).collect();
    assert_eq!(hints, [3]);
}

#[test]
fn stage_references_by_index_and_by_expanded_name() {
    let text = "ARG SRC=builder\nFROM alpine AS builder\nRUN touch /a\nFROM alpine\nARG SRC\nARG N=0\nCOPY --from=0 /a /a\nCOPY --from=${SRC} /b /b\nCOPY --from=$N /c /c\n";
    let plan = plan(text);
    let paths: Vec<&str> = plan.chains[0]
        .exports
        .iter()
        .map(|e| e.path.as_str())
        .collect();
    assert_eq!(paths, ["/a", "/b", "/c"]);
    let err = plan_with("FROM a\nFROM b\nARG N=5\nCOPY --from=$N /c /c\n", &[], None).unwrap_err();
    assert_eq!(err.line(), Some(4));
    assert!(err.to_string().contains("no stage 5"), "{err}");
}

#[test]
fn planner_errors_name_their_line() {
    let cases: &[(&str, usize, &str)] = &[
        (
            "FROM alpine AS app\nCOPY --from=app /x /y\n",
            2,
            "cannot copy from itself",
        ),
        (
            "FROM alpine AS first\nCOPY --from=later /x /y\nFROM alpine AS later\nCOPY --from=first /a /a\n",
            2,
            "defined later, on line 3",
        ),
        (
            "FROM alpine\nCOPY --from=scratch /x /y\n",
            2,
            "scratch is empty",
        ),
        (
            "FROM a AS b\nFROM alpine\nCOPY --from=$WHERE /x /y\n",
            3,
            "known only at run time",
        ),
        (
            "FROM a AS b\nFROM alpine\nCOPY --from=b $HOME/x /y\n",
            3,
            "$HOME",
        ),
        (
            "ARG APP=x\nFROM a AS b\nFROM alpine\nCOPY --from=b /out/$APP /y\n",
            4,
            "declare `ARG APP` in this stage",
        ),
        (
            "FROM a AS b\nFROM alpine\nENV P=$PATH\nCOPY --from=b $P /y\n",
            4,
            "$P",
        ),
        (
            "ARG IMAGE\nFROM $IMAGE\n",
            2,
            "base image `$IMAGE` is empty",
        ),
        ("FROM Alpine\n", 1, "lower-case"),
        (
            "FROM alpine\nCOPY --from=Bad:Ref /x /y\n",
            2,
            "invalid image reference",
        ),
        (
            "FROM a AS b\nFROM alpine\nCOPY --from=b /x${UNCLOSED /y\n",
            3,
            "missing `}`",
        ),
        (
            "FROM alpine\nARG D=/dst\nCOPY a b $D\n",
            3,
            "must be a directory: end it with `/`",
        ),
        (
            "FROM alpine\nARG U=https://example.com/x\nADD $U /x\n",
            3,
            "remote sources",
        ),
        ("FROM --platform=linux/$NOPE alpine\n", 1, "--platform"),
        (
            "FROM a AS x\nFROM a AS y\nFROM x AS c\nCOPY --from=y /1 /1\nFROM y AS d\nCOPY --from=x /2 /2\nFROM scratch\nCOPY --from=c /c /c\nCOPY --from=d /d /d\n",
            4,
            "each need the other's files",
        ),
    ];
    for (text, line, says) in cases {
        let err = plan_with(text, &[], None).expect_err(text);
        assert_eq!(err.line(), Some(*line), "{text:?}: {err}");
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("line {line}: "))
                || matches!(err, PlanError::ChainCycle { .. }),
            "{message}"
        );
        assert!(message.contains(says), "{text:?}: {message}");
    }
}

#[test]
fn stages_the_target_does_not_need_neither_fail_nor_warn() {
    let text = "FROM alpine AS unused\nCOPY --from=$ANYTHING /x /y\nCOPY --from=unusd /x /y\nFROM alpine\nCMD [\"sh\"]\n";
    let plan = plan_with(text, &[], None).unwrap();
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    assert!(plan.extractions.is_empty());
}

#[test]
fn automatic_platform_args() {
    let text = "FROM --platform=$BUILDPLATFORM golang:1.22 AS build\nARG TARGETARCH\nRUN go build -o /out/app-$TARGETARCH\nFROM alpine\nARG TARGETARCH\nARG TARGETVARIANT\nCOPY --from=build /out/app-${TARGETARCH}${TARGETVARIANT} /app\n";
    let args = BTreeMap::new();
    let plan = plan_dockerfile(text, &args, None, Some("linux/arm/v7")).unwrap();
    assert_eq!(plan.platform, "linux/arm/v7");
    for (name, value) in [
        ("TARGETPLATFORM", "linux/arm/v7"),
        ("TARGETOS", "linux"),
        ("TARGETARCH", "arm"),
        ("TARGETVARIANT", "v7"),
        ("BUILDPLATFORM", "linux/arm/v7"),
        ("BUILDOS", "linux"),
        ("BUILDARCH", "arm"),
    ] {
        assert_eq!(plan.global_args[name].as_deref(), Some(value), "{name}");
    }
    assert_eq!(plan.chains[0].platform, "linux/arm/v7");
    assert_eq!(plan.chains[0].exports[0].path, "/out/app-armv7");
    let arg = &plan.chains[0].stages[0].steps[0].args[0];
    assert_eq!(
        (arg.from, arg.value.as_deref()),
        (ArgOrigin::Global, Some("arm"))
    );
    // Default platform.
    let plan = plan_with(text, &[], None).unwrap();
    assert_eq!(plan.chains[0].exports[0].path, "/out/app-amd64");
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    let err = plan_dockerfile(text, &args, None, Some("linux")).unwrap_err();
    assert!(matches!(err, PlanError::Platform { .. }), "{err}");
}

#[test]
fn arg_scoping_and_build_args() {
    let text = fixture("arg-before-from.Dockerfile");
    let plan = plan_with(&text, &[("APP", "worker"), ("UNUSED", "1")], None).unwrap();
    let build = &plan.chains[0].stages[0];
    let app = &build.steps[0].args[0];
    assert_eq!(
        (app.from, app.value.as_deref()),
        (ArgOrigin::BuildArg, Some("worker"))
    );
    let go = &build.steps[1].args[0];
    assert_eq!(
        (go.from, go.value.as_deref()),
        (ArgOrigin::Global, Some("1.22"))
    );
    assert_eq!(plan.global_args["RUNTIME"].as_deref(), Some("alpine:3.19"));
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.message.contains("build arg UNUSED is not declared")),
        "{:?}",
        plan.warnings
    );
    // A stage ARG without a default and no global of that name is unset.
    let plan = self::plan(
        "FROM scratch AS s\nARG NOTHING\nCOPY a /a\nFROM scratch\nCOPY --from=s /x${NOTHING} /y\n",
    );
    assert_eq!(plan.chains[0].exports[0].path, "/x");
    assert_eq!(
        plan.chains[0].stages[0].steps[0].args[0].from,
        ArgOrigin::Unset
    );
}

#[test]
fn env_values_expand_as_docker_does() {
    // ENV sees the values from before its own line; ENV wins over ARG.
    let text = "FROM a AS b\nFROM scratch\nENV A=/one\nENV A=/two B=$A\nARG X=/arg\nENV X=/env\nCOPY --from=b $B ${X} '$A' /dst/\n";
    let plan = plan(text);
    let paths: Vec<&str> = plan.chains[0]
        .exports
        .iter()
        .map(|e| e.path.as_str())
        .collect();
    assert_eq!(paths, ["/one", "/env", "$A"]);
    // ENV PATH=/x:$PATH stays representable; the helper expands it with the image's env.
    let plan = self::plan("FROM alpine AS b\nENV PATH=/opt/bin:$PATH\nRUN make\nFROM b\n");
    let env = &plan.chains[0].stages[0].steps[0].instruction;
    assert_eq!(
        env,
        &Instruction::Env(vec![KeyValue {
            key: "PATH".into(),
            value: "/opt/bin:$PATH".into()
        }])
    );
    let expanded = expand_word("/opt/bin:$PATH", plan.escape, &mut |name| {
        (name == "PATH").then(|| "/usr/bin:/bin".to_string())
    });
    assert_eq!(expanded.as_deref(), Ok("/opt/bin:/usr/bin:/bin"));
}

#[test]
fn assemble_steps_keep_dockerfile_order() {
    let plan = plan(&fixture("node.Dockerfile"));
    let FinalImage::Assemble(assemble) = &plan.final_image else {
        panic!("not assembled");
    };
    let steps: Vec<(usize, &str)> = assemble
        .steps
        .iter()
        .map(|s| (s.line, s.instruction.keyword()))
        .collect();
    assert_eq!(
        steps,
        [
            (14, "WORKDIR"),
            (15, "ENV"),
            (16, "COPY"),
            (17, "COPY"),
            (18, "COPY"),
            (19, "USER"),
            (20, "EXPOSE"),
            (21, "HEALTHCHECK"),
            (22, "CMD"),
        ]
    );
    let Instruction::Copy(copy) = &assemble.steps[2].instruction else {
        panic!("not a COPY");
    };
    assert_eq!(copy.chown.as_deref(), Some("node:node"));
    assert_eq!(assemble.steps[4].source, Some(CopySource::Context));
    let heredoc = plan_with(&fixture("heredoc.Dockerfile"), &[], None).unwrap();
    let FinalImage::Assemble(assemble) = &heredoc.final_image else {
        panic!("not assembled");
    };
    assert_eq!(assemble.steps[1].source, Some(CopySource::Inline));
}

#[test]
fn a_manifest_plans_like_its_dockerfile() {
    let manifest = format!(
        "apiVersion: slimforge.dev/v1alpha1\nkind: ImageBuild\nmetadata:\n  name: goapp\nspec:\n  context: {{inline: {{}}}}\n  output: {{image: r.example/goapp:1}}\n  buildArgs:\n    GO_VERSION: \"1.21\"\n  target: build\n  dockerfile: |\n{}",
        fixture("arg-before-from.Dockerfile")
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    );
    let request = PlanRequest::from_text(&manifest).unwrap();
    let plan = request.plan().unwrap();
    assert_eq!(plan.chains[0].image, "golang:1.21-alpine");
    assert!(matches!(plan.final_image, FinalImage::Runtime(_)));
}

/// A Dockerfile soup: stages with names from a small pool so references
/// hit, miss, come early and come late.
fn soup() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        prop::sample::select(vec![
            "a",
            "b",
            "c",
            "alpine",
            "scratch",
            "$IMG",
            "${IMG:-x}",
            "a:1"
        ])
        .prop_flat_map(|image| {
            prop::sample::select(vec!["", " AS a", " AS b", " AS c", " AS d", " as B"])
                .prop_map(move |name| format!("FROM {image}{name}"))
        }),
        (
            prop::sample::select(vec![
                "a", "b", "c", "d", "0", "1", "2", "7", "$S", "busybox", "bb"
            ]),
            prop::sample::select(vec!["/x", "/y/*", "$P", "${P:-/z}", "'$Q'", "rel"]),
            prop::sample::select(vec!["/d/", "/d", ".", "$D"]),
        )
            .prop_map(|(from, src, dst)| format!("COPY --from={from} {src} {dst}")),
        prop::sample::select(vec![
            "RUN make",
            "ARG S=a",
            "ARG S",
            "ARG IMG=b",
            "ARG P=/p",
            "ENV P=/e",
            "ENV S=b",
            "ENV D=/d/",
            "WORKDIR /w",
            "COPY . .",
            "COPY <<EOF /f\nhi\nEOF",
            "CMD [\"x\"]",
            "USER 1",
            "ADD x.tar /",
            "LABEL a=b",
            "# comment",
            "",
        ])
        .prop_map(str::to_string),
    ];
    prop::collection::vec(line, 0..24).prop_map(|lines| lines.join("\n"))
}

fn check_consistency(plan: &BuildPlan) -> Result<(), TestCaseError> {
    let mut ids: BTreeSet<&str> = BTreeSet::new();
    for chain in &plan.chains {
        prop_assert!(ids.insert(chain.id.as_str()), "duplicate id {}", chain.id);
    }
    for extraction in &plan.extractions {
        prop_assert!(
            ids.insert(extraction.id.as_str()),
            "duplicate id {}",
            extraction.id
        );
    }
    let in_waves: Vec<&str> = plan.waves.iter().flatten().map(String::as_str).collect();
    prop_assert_eq!(in_waves.len(), ids.len());
    let wave_of = |id: &str| plan.waves.iter().position(|w| w.iter().any(|x| x == id));
    for chain in &plan.chains {
        for dep in &chain.depends_on {
            prop_assert!(dep != &chain.id, "{} depends on itself", chain.id);
            prop_assert!(ids.contains(dep.as_str()));
            prop_assert!(
                wave_of(dep) < wave_of(&chain.id),
                "{} before {}",
                dep,
                chain.id
            );
        }
        for export in &chain.exports {
            prop_assert!(!export.consumers.is_empty());
        }
    }
    let runtime = plan
        .chains
        .iter()
        .filter(|c| c.role == ChainRole::Runtime)
        .count();
    match &plan.final_image {
        FinalImage::Runtime(r) => {
            prop_assert_eq!(runtime, 1);
            prop_assert!(plan.chain(&r.chain).is_some());
        }
        FinalImage::Assemble(_) => prop_assert_eq!(runtime, 0),
    }
    let json = serde_json::to_string(plan).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: BuildPlan =
        serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, plan);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(768))]

    #[test]
    fn instruction_soups_never_panic_the_planner(
        text in soup(),
        target in prop::option::of(prop::sample::select(vec!["a", "b", "c", "d", "zz"])),
        platform in prop::option::of(prop::sample::select(vec!["linux/arm64", "linux/arm/v7", "bad"])),
        img in prop::option::of(prop::sample::select(vec!["a", "", "Bad"])),
    ) {
        let mut args = BTreeMap::new();
        if let Some(img) = img {
            args.insert("IMG".to_string(), img.to_string());
        }
        if let Ok(plan) = plan_dockerfile(&text, &args, target, platform) {
            check_consistency(&plan)?;
        }
    }

    #[test]
    fn random_bytes_never_panic_the_planner(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = plan_dockerfile(&text, &BTreeMap::new(), None, None);
    }
}

fn slimforge(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_slimforge"))
        .args(args)
        .env("SLIMFORGE_LOG", "warn")
        .output()
        .expect("run slimforge")
}

#[test]
fn plan_command_prints_chains_and_parallel_waves() {
    let path = fixture_path("three-builders.Dockerfile");
    let out = slimforge(&["plan", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "chain backend [builder] on golang:1.22",
        "chain frontend [builder] on node:20",
        "chain bundle [builder] on alpine:3.19",
        "depends on: frontend, backend",
        "/out/api (end of stage backend) → stage bundle line 14",
        "1. backend, frontend   (parallel)",
        "2. bundle",
        "3. assemble",
        "Final image: assembled on nginx:1.27-alpine",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
}

#[test]
fn plan_command_json_parses_back_as_a_build_plan() {
    let path = fixture_path("seed.Dockerfile");
    let out = slimforge(&["plan", path.to_str().unwrap(), "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: BuildPlan = serde_json::from_slice(&out.stdout).expect("a BuildPlan");
    assert_eq!(plan, self::plan(&fixture("seed.Dockerfile")));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["finalImage"]["kind"], "assemble");
    assert_eq!(value["chains"][0]["exports"][0]["path"], "/app");
}

#[test]
fn plan_command_takes_build_args_target_and_platform() {
    let path = fixture_path("arg-before-from.Dockerfile");
    let out = slimforge(&[
        "plan",
        path.to_str().unwrap(),
        "--build-arg",
        "GO_VERSION=1.21",
        "--build-arg",
        "APP=worker",
        "--platform",
        "linux/arm64",
        "--target",
        "build",
        "--output",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: BuildPlan = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan.platform, "linux/arm64");
    assert_eq!(plan.chains[0].image, "golang:1.21-alpine");
    assert_eq!(plan.target.name.as_deref(), Some("build"));
}

#[test]
fn plan_command_reads_an_image_build_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("goapp.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: slimforge.dev/v1alpha1\nkind: ImageBuild\nmetadata: {name: goapp}\nspec:\n  context:\n    inline: {app.go: \"package main\"}\n  output: {image: r.example/goapp:1}\n  dockerfile: |\n    FROM ubuntu AS builder\n    COPY app.go .\n    RUN go build app.go\n    FROM alpine\n    COPY --from=builder /app .\n  buildArgs: {UNUSED: '1'}\n",
    )
    .unwrap();
    let out = slimforge(&["plan", manifest.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("chain builder [builder] on ubuntu"), "{text}");
    assert!(text.contains("build arg UNUSED is not declared"), "{text}");

    let by_path = dir.path().join("bypath.yaml");
    std::fs::write(
        &by_path,
        "apiVersion: slimforge.dev/v1alpha1\nkind: ImageBuild\nspec:\n  context: {git: {url: 'https://git.example/x'}}\n  output: {image: r.example/goapp:1}\n  dockerfilePath: Dockerfile\n",
    )
    .unwrap();
    let out = slimforge(&["plan", by_path.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("needs the build context"), "{stderr}");
}

#[test]
fn plan_command_errors_exit_non_zero_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        (
            "FROM golang AS builder\nRUN go build -o /app .\nFROM alpine\nCOPY --from=7 /app /app\n",
            "error: line 4: COPY: --from=7: no stage 7 comes before this one (only stage 0 does)",
        ),
        (
            "RUN true\nFROM alpine\n",
            "error: line 1: RUN: only ARG may come before the first FROM",
        ),
        (
            "FROM alpine\nFETCH x\n",
            "error: line 2: FETCH: unknown instruction",
        ),
        (
            "FROM alpine\nCOPY --owner=1 a b\n",
            "error: line 2: COPY: unknown flag --owner",
        ),
        (
            "FROM alpine\nONBUILD RUN x\n",
            "error: line 2: ONBUILD: ONBUILD is not supported",
        ),
        (
            "FROM alpine\nRUN --mount=type=ssh git clone x\n",
            "error: line 2: RUN: --mount=type=ssh: type=ssh is not supported",
        ),
        (
            "FROM alpine\nADD http://example.com/a.tgz /\n",
            "error: line 2: ADD: ADD http://example.com/a.tgz: remote sources",
        ),
        ("FROM\n", "error: line 1: FROM: missing base image"),
        ("", "error: the Dockerfile is empty"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("Dockerfile.{i}"));
        std::fs::write(&path, text).unwrap();
        let out = slimforge(&["plan", path.to_str().unwrap()]);
        assert!(!out.status.success(), "{text:?} succeeded");
        assert!(out.stdout.is_empty(), "{text:?}: stdout not empty");
        let stderr = String::from_utf8(out.stderr).unwrap();
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{text:?}: {stderr}");
        assert!(lines[0].starts_with(want), "{text:?}: {stderr}");
    }
    let target = fixture_path("target.Dockerfile");
    let out = slimforge(&["plan", target.to_str().unwrap(), "--target", "nope"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr.trim(),
        "error: unknown target stage `nope` (stages: base, test, build, release)"
    );
}

/// BuildKit's reading, which users write today: `.` and `..` (alone or as
/// the last component) name directories, so several sources may go there
/// without a trailing `/`; the same holds when an ARG expands to `.`.
#[test]
fn several_sources_onto_dot_are_copied_into_the_directory() {
    for destination in [".", "..", "./sub/.", "$D"] {
        let text = format!(
            "FROM golang:1.22 AS build\nARG D=.\nWORKDIR /src\nCOPY go.mod go.sum {destination}\nRUN go build ./...\n\nFROM busybox\nCOPY --from=build /src/app /app\n"
        );
        plan(&text);
    }
}

/// Hostile Dockerfiles end in an error naming the line, within bounds,
/// in `slimforge plan` and in the controller's validation alike (a
/// doubling `ENV A1=${A0}${A0}` … `A32` once took gigabytes and aborted).
#[test]
fn hostile_dockerfiles_are_refused_naming_the_line() {
    let doubling = |keyword: &str, before_from: bool| {
        let mut lines = vec![format!("{keyword} A0=xx")];
        lines.extend((1..=32).map(|i| format!("{keyword} A{i}=${{A{}}}${{A{}}}", i - 1, i - 1)));
        let body = lines.join("\n");
        if before_from {
            format!("{body}\nFROM busybox\nRUN true\n")
        } else {
            format!("FROM busybox\n{body}\nRUN true\n")
        }
    };
    let big = "x".repeat(100_000);
    let wide = format!(
        "FROM busybox\nENV B={big}\n{}\nRUN true\n",
        (0..400)
            .map(|i| format!("ENV C{i}=${{B}}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Each stage copies its parent's variables: 120 stages of 2.4 MB.
    let chained = format!(
        "FROM busybox AS s0\nENV B0={}\n{}\n{}\nRUN true\n",
        "y".repeat(60_000),
        (1..40)
            .map(|i| format!("ENV B{i}=${{B{}}}", i - 1))
            .collect::<Vec<_>>()
            .join("\n"),
        (1..120)
            .map(|i| format!("FROM s{} AS s{i}", i - 1))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let stages = (0..200)
        .map(|i| format!("FROM busybox AS s{i}\n"))
        .collect::<String>();
    let instructions = format!("FROM busybox\n{}", "RUN true\n".repeat(20_000));
    let huge = format!("FROM busybox\n# {}\nRUN true\n", "z".repeat(2 << 20));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "ENV doubling",
            doubling("ENV", false),
            "error: line 19: ENV: ENV A17: the variables in `${A16}${A16}` expand to more than 131072 bytes",
        ),
        (
            "ARG doubling",
            doubling("ARG", false),
            "error: line 19: ARG: ARG A17: the variables in `${A16}${A16}` expand to more than 131072 bytes",
        ),
        (
            "global ARG doubling",
            doubling("ARG", true),
            "error: line 18: ARG: ARG A17: the variables in `${A16}${A16}` expand to more than 131072 bytes",
        ),
        ("wide", wide, "ENV: ENV C16"),
        ("chained", chained, "FROM: "),
        (
            "stages",
            stages,
            "error: line 129: FROM: more than 128 stages in one Dockerfile",
        ),
        (
            "instructions",
            instructions,
            "error: line 10001: RUN: more than 10000 instructions in one Dockerfile",
        ),
        (
            "huge",
            huge,
            "error: the Dockerfile is 2097177 bytes; at most 1048576 (1 MiB) are accepted",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (what, text, want) in &cases {
        let path = dir.path().join(what.replace(' ', "-"));
        std::fs::write(&path, text).unwrap();
        let out = slimforge(&["plan", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(want),
            "{what}: want `{want}` in {stderr}"
        );
        if matches!(*what, "wide" | "chained") {
            assert!(
                stderr.contains("variables expand to more than 16777216 bytes in all"),
                "{what}: {stderr}"
            );
        }

        let mut ib: slimforge::api::ImageBuild = serde_yaml::from_str(
            "apiVersion: slimforge.dev/v1alpha1\nkind: ImageBuild\nmetadata: {name: x, namespace: y}\n\
             spec: {context: {inline: {}}, output: {image: 'r.example/x:1'}}\n",
        )
        .unwrap();
        ib.spec.dockerfile = Some(text.clone());
        let settings = slimforge::controller::Settings::default();
        let Err(invalid) = slimforge::controller::reconcile::validate(&ib, &settings, None) else {
            panic!("{what}: the controller accepted it");
        };
        assert_eq!(invalid.reason, "InvalidDockerfile", "{what}");
        let message = want.trim_start_matches("error: ");
        assert!(
            invalid.message.contains(message),
            "{what}: want `{message}` in {}",
            invalid.message
        );
    }
}

/// `slimforge plan … | head` and `slimforge plan - < Dockerfile`, as
/// other Unix tools behave: a reader that goes away ends the output
/// quietly (it once panicked, exit 101), and `-` is standard input.
#[test]
fn plan_reads_stdin_and_stops_quietly_when_the_reader_goes() {
    use std::io::Write;
    use std::process::Stdio;
    let path = fixture_path("three-builders.Dockerfile");
    let mut child = Command::new(env!("CARGO_BIN_EXE_slimforge"))
        .args(["plan", "-o", "json"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before anything is written
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_slimforge"))
        .args(["plan", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(fixture("three-builders.Dockerfile").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("chain bundle [builder] on alpine:3.19"),
        "{text}"
    );
    assert!(text.contains("the probe pod runs in wave 1 too"), "{text}");
}
