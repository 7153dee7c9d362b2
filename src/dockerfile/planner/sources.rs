//! Where each COPY/ADD takes its files: the context, its own heredocs, an
//! earlier stage, or an image (checked against the image-reference grammar).

use super::scope::Scope;
use super::{Planner, instruction_error};
use crate::dockerfile::instruction::{is_remote, written_as_directory};
use crate::dockerfile::{
    CopyArgs, DockerfileError, Instruction, InstructionError, Stage, Statement, stages_before,
};

/// Where a COPY/ADD takes its files, as resolved.
#[derive(Debug, Clone)]
pub(super) enum Origin {
    Context,
    Inline,
    Stage {
        index: usize,
        paths: Vec<String>,
    },
    Image {
        reference: String,
        paths: Vec<String>,
    },
}

impl Planner<'_> {
    /// A COPY/ADD's source: without `--from`, the context (or its heredocs);
    /// with it, the stage or image it names, and the paths, expanded.
    pub(super) fn resolve_copy(
        &mut self,
        stage: &Stage,
        statement: &Statement,
        copy: &CopyArgs,
        scope: &Scope,
    ) -> Result<Origin, DockerfileError> {
        self.check_expanded_words(statement, copy, scope)?;
        let Some(from_word) = &copy.from else {
            return Ok(if copy.sources.is_empty() {
                Origin::Inline
            } else {
                Origin::Context
            });
        };
        let from = self.expand_needed(statement, scope, "--from", from_word)?;
        if from.is_empty() {
            return Err(instruction_error(
                statement,
                InstructionError::Empty {
                    what: "--from".into(),
                    word: from_word.clone(),
                },
            ));
        }
        let paths = copy
            .sources
            .iter()
            .map(|source| self.expand_needed(statement, scope, "source path", source))
            .collect::<Result<Vec<_>, _>>()?;
        self.copy_from(stage, statement, from, paths)
    }

    /// What the parser could not check before expansion: several sources
    /// need a directory destination, and ADD's sources must not be remote.
    /// Words known only at run time are left to the helper.
    fn check_expanded_words(
        &self,
        statement: &Statement,
        copy: &CopyArgs,
        scope: &Scope,
    ) -> Result<(), DockerfileError> {
        let count = copy.sources.len() + copy.heredocs.len();
        if count > 1
            && copy.destination.contains('$')
            && let Ok(Ok(destination)) = scope.expand(&copy.destination, self.escape, &self.budget)
            && !written_as_directory(&destination)
        {
            return Err(instruction_error(
                statement,
                InstructionError::TrailingSlash { destination },
            ));
        }
        if !matches!(statement.instruction, Instruction::Add(_)) {
            return Ok(());
        }
        for source in copy.sources.iter().filter(|s| s.contains('$')) {
            if let Ok(Ok(value)) = scope.expand(source, self.escape, &self.budget)
                && is_remote(&value)
            {
                return Err(instruction_error(
                    statement,
                    InstructionError::Unsupported(format!(
                        "ADD {value}: remote sources (URLs, git) are not supported; download in a RUN step or COPY the file from the context"
                    )),
                ));
            }
        }
        Ok(())
    }

    /// `--from=` once expanded: a stage index, an earlier stage's name, or
    /// else an image reference.
    fn copy_from(
        &mut self,
        stage: &Stage,
        statement: &Statement,
        from: String,
        paths: Vec<String>,
    ) -> Result<Origin, DockerfileError> {
        if from.chars().all(|c| c.is_ascii_digit()) {
            return match from.parse::<usize>() {
                Ok(index) if index < stage.index => Ok(Origin::Stage { index, paths }),
                _ => Err(instruction_error(
                    statement,
                    InstructionError::StageIndex {
                        index: from,
                        available: stages_before(stage.index),
                    },
                )),
            };
        }
        let copy_from_error = |reason: String| {
            instruction_error(
                statement,
                InstructionError::CopyFrom {
                    name: from.clone(),
                    reason,
                },
            )
        };
        let lower = from.to_ascii_lowercase();
        if let Some(source) = self
            .file
            .stages
            .iter()
            .find(|s| s.name() == Some(lower.as_str()))
        {
            if source.index < stage.index {
                return Ok(Origin::Stage {
                    index: source.index,
                    paths,
                });
            }
            if source.index == stage.index {
                return Err(copy_from_error(
                    "a stage cannot copy from itself (write the image's full reference to mean an image)".into(),
                ));
            }
            return Err(copy_from_error(format!(
                "stage {lower} is defined later, on line {}: copy from an earlier stage (or write the image's full reference to mean an image)",
                source.line
            )));
        }
        if from == "scratch" {
            return Err(copy_from_error(
                "scratch is empty: there is nothing to copy".into(),
            ));
        }
        check_reference(&from).map_err(|reason| {
            instruction_error(
                statement,
                InstructionError::Reference {
                    reference: from.clone(),
                    reason,
                },
            )
        })?;
        self.hint_near_stage(stage.index, &from, statement.line, "COPY --from");
        Ok(Origin::Image {
            reference: from,
            paths,
        })
    }
}

/// Docker's image reference grammar, enough to catch what a pull would
/// reject: `[host[:port]/]path[:tag][@algo:hex]`, the path lower-case.
pub(super) fn check_reference(reference: &str) -> Result<(), String> {
    if reference.is_empty() {
        return Err("it is empty".into());
    }
    if reference.chars().any(char::is_whitespace) {
        return Err("it contains whitespace".into());
    }
    let (name_tag, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    if let Some(digest) = digest {
        let valid = digest.split_once(':').is_some_and(|(algorithm, hex)| {
            !algorithm.is_empty()
                && algorithm
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+._-".contains(c))
                && hex.len() >= 32
                && hex.chars().all(|c| c.is_ascii_hexdigit())
        });
        if !valid {
            return Err(format!(
                "`{digest}` is not a digest such as sha256:<64 hex digits>"
            ));
        }
    }
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(tag) = tag {
        let valid = !tag.is_empty()
            && tag.len() <= 128
            && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !valid {
            return Err(format!("`{tag}` is not a valid tag"));
        }
    }
    let mut components: Vec<&str> = name.split('/').collect();
    let first = components[0];
    let is_host = components.len() > 1
        && (first.contains('.')
            || first.contains(':')
            || first == "localhost"
            || first.chars().any(|c| c.is_ascii_uppercase()));
    if is_host {
        let valid = first
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
        if !valid {
            return Err(format!("`{first}` is not a registry host"));
        }
        components.remove(0);
    }
    for component in components {
        if component.chars().any(|c| c.is_ascii_uppercase()) {
            return Err("repository names must be lower-case".into());
        }
        let valid = !component.is_empty()
            && component.starts_with(|c: char| c.is_ascii_alphanumeric())
            && component.ends_with(|c: char| c.is_ascii_alphanumeric())
            && component
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
        if !valid {
            return Err(format!(
                "`{component}` is not a valid repository path component"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        for ok in [
            "alpine",
            "alpine:3.19",
            "golang:1.22-alpine",
            "gcr.io/distroless/static:nonroot",
            "localhost:5000/team/app:v1",
            "registry.example.com/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "docker.io/library/ubuntu",
        ] {
            assert_eq!(check_reference(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "Alpine",
            "alpine:",
            "a b",
            "alpine:-x",
            "-alpine",
            "a@sha256:xyz",
            "a//b",
        ] {
            assert!(check_reference(bad).is_err(), "{bad}");
        }
    }
}
