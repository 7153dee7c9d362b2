//! Where each COPY/ADD takes its files: the context, its own heredocs, an
//! earlier stage, or an image (checked against the image-reference grammar).

use super::scope::Scope;
use super::{Planner, instruction_error};
use crate::dockerfile::instruction::{is_remote, written_as_directory};
use crate::dockerfile::{
    CopyArgs, DockerfileError, Instruction, InstructionError, RunMount, Stage, Statement,
    parse_mount, stages_before,
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

    /// A RUN's `--mount`, expanded with the Dockerfile's variables (one
    /// known only at run time is an error, as for `COPY --from`), with the
    /// stage or image its `from=` names.
    pub(super) fn resolve_mount(
        &mut self,
        stage: &Stage,
        statement: &Statement,
        spec: &str,
        scope: &Scope,
    ) -> Result<(RunMount, Option<Origin>), DockerfileError> {
        let expanded = self.expand_needed(statement, scope, "--mount", spec)?;
        let mount = parse_mount(&expanded).map_err(|reason| {
            instruction_error(
                statement,
                InstructionError::BadFlagValue {
                    flag: "mount".into(),
                    value: expanded.clone(),
                    reason,
                },
            )
        })?;
        let origin = match (mount.from(), mount.source()) {
            (Some(from), Some(source)) => Some(self.copy_from(
                stage,
                statement,
                from.to_string(),
                vec![source.to_string()],
            )?),
            _ => None,
        };
        Ok((mount, origin))
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
        check_image(&from).map_err(|error| instruction_error(statement, error))?;
        self.hint_near_stage(stage.index, &from, statement.line, "COPY --from");
        Ok(Origin::Image {
            reference: from,
            paths,
        })
    }
}

/// Checks an image a Dockerfile names against the one image-reference
/// grammar, [`crate::oci::reference`]; the plan keeps it as written (the
/// helper and the registry normalise it when they pull).
pub(super) fn check_image(reference: &str) -> Result<(), InstructionError> {
    match crate::oci::reference::parse(reference) {
        Ok(_) => Ok(()),
        Err(reason) => Err(InstructionError::Reference {
            reference: reference.to_string(),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_image_names_itself_and_the_reason() {
        assert_eq!(check_image("alpine:3.19"), Ok(()));
        let error = check_image("Alpine").unwrap_err().to_string();
        assert!(
            error.starts_with("invalid image reference `Alpine`: "),
            "{error}"
        );
        assert!(error.contains("lower-case"), "{error}");
    }
}
