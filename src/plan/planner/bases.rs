//! Each stage's base, from its FROM line: an earlier stage, or an image
//! (checked against the image-reference grammar) on a platform.

use super::sources::check_image;
use super::{Planner, from_error, parse_platform};
use crate::dockerfile::{DockerfileError, InstructionError, Stage, edit_distance, within_edits};

/// What a stage builds on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Base {
    /// An image, as written once expanded, and the platform to pull.
    Image { reference: String, platform: String },
    /// An earlier stage, by index.
    Stage(usize),
}

impl Planner<'_> {
    /// FROM: expanded with the global scope only; an earlier stage's name
    /// makes it that stage, anything else is an image.
    pub(super) fn resolve_base(&mut self, stage: &Stage) -> Result<Base, DockerfileError> {
        let (image, platform) = self.expand_from(stage)?;
        if image.is_empty() {
            return Err(from_error(
                stage,
                InstructionError::Empty {
                    what: "base image".into(),
                    word: stage.from.image.clone(),
                },
            ));
        }
        let lower = image.to_ascii_lowercase();
        if let Some(parent) = self.file.stages[..stage.index]
            .iter()
            .find(|s| s.name() == Some(lower.as_str()))
        {
            if let Some(platform) = &stage.from.platform {
                self.warn(
                    Some(stage.line),
                    format!(
                        "--platform={platform} is ignored: the stage builds on stage {}",
                        parent.id()
                    ),
                );
            }
            return Ok(Base::Stage(parent.index));
        }
        self.hint_near_stage(stage.index, &image, stage.line, "FROM");
        check_image(&image).map_err(|error| from_error(stage, error))?;
        let platform = self.base_platform(stage, platform)?;
        Ok(Base::Image {
            reference: image,
            platform,
        })
    }

    /// FROM's image and `--platform`, expanded with the global ARGs; a name
    /// no global ARG declares expands to nothing, with a warning.
    fn expand_from(&mut self, stage: &Stage) -> Result<(String, Option<String>), DockerfileError> {
        let globals = &self.globals;
        let mut undefined = Vec::new();
        let mut lookup = |name: &str| match globals.get(name) {
            Some(value) => value.clone(),
            None => {
                undefined.push(name.to_string());
                None
            }
        };
        let expand_error = |what: &str| {
            let what = what.to_string();
            move |error| from_error(stage, InstructionError::Expand { what, error })
        };
        let image = self
            .budget
            .expand(&stage.from.image, self.escape, &mut lookup)
            .map_err(expand_error("image"))?;
        let platform = match &stage.from.platform {
            Some(word) => Some(
                self.budget
                    .expand(word, self.escape, &mut lookup)
                    .map_err(expand_error("--platform"))?,
            ),
            None => None,
        };
        for name in undefined {
            self.warn(
                Some(stage.line),
                format!(
                    "FROM uses ${name}, which no ARG before the first FROM declares: it expands to nothing"
                ),
            );
        }
        Ok((image, platform))
    }

    /// The platform an image stage's pod runs on: its `--platform`, if
    /// given (a warning if it is not the build's), else the build's.
    fn base_platform(
        &mut self,
        stage: &Stage,
        platform: Option<String>,
    ) -> Result<String, DockerfileError> {
        let Some(text) = platform else {
            return Ok(self.platform.clone());
        };
        let parsed = parse_platform(&text).map_err(|reason| {
            from_error(
                stage,
                InstructionError::BadFlagValue {
                    flag: "platform".into(),
                    value: text.clone(),
                    reason,
                },
            )
        })?;
        let parsed = parsed.to_string();
        if parsed != self.platform {
            self.warn(
                Some(stage.line),
                format!(
                    "FROM --platform={parsed} differs from the build's platform {}: this stage's pod runs on a {parsed} node",
                    self.platform
                ),
            );
        }
        Ok(parsed)
    }

    /// A name that is not an earlier stage is an image, as in Docker; if it
    /// looks like a stage's name, say so.
    pub(super) fn hint_near_stage(&mut self, current: usize, name: &str, line: usize, what: &str) {
        let lower = name.to_ascii_lowercase();
        let mut hints = Vec::new();
        for stage in &self.file.stages {
            let Some(stage_name) = stage.name() else {
                continue;
            };
            let limit = if stage_name.chars().count() >= 6 {
                2
            } else {
                1
            };
            if !within_edits(&lower, stage_name, limit) {
                continue;
            }
            let distance = edit_distance(&lower, stage_name);
            if distance == 0 && stage.index > current {
                hints.push(format!(
                    "{what} {name}: stage {stage_name} is defined later (line {}), so this is the image {name}",
                    stage.line
                ));
            } else if distance > 0 {
                hints.push(format!(
                    "{what} {name} is taken as an image, but stage {stage_name} (line {}) has a similar name: a typo?",
                    stage.line
                ));
            }
        }
        for hint in hints {
            self.warn(Some(line), hint);
        }
    }
}
