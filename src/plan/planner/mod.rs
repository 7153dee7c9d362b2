//! The stage graph → BuildPlan: which stages the target needs, how they
//! group into chains (one pod each), what each chain exports, which images
//! need an extraction step, and whether the final image can be assembled
//! or needs a runtime pod.
//!
//! `Planner::plan` runs the stages of work in order, one module each:
//!
//! 1. `scope`: the global ARGs (and the automatic platform ones), the
//!    variables each stage sees, all paid for from one `budget`;
//! 2. `walk`: every stage's instructions, with `bases` resolving its
//!    FROM and `sources` each COPY/ADD's `--from`; errors are kept per
//!    stage, since only the needed stages' count;
//! 3. `targets`: the target stage, the stages it needs, unused build args;
//! 4. `chains`: the needed stages grouped into chains (one pod each) and
//!    the final image (assembled, or a runtime chain); `steps` resolves
//!    each step's source, and `exports` gathers what each chain and image
//!    extraction hands on;
//! 5. `waves`: the chains and extractions in dependency order.

mod bases;
mod budget;
mod chains;
mod exports;
mod scope;
mod sources;
mod steps;
mod targets;
mod walk;
mod waves;

use std::collections::{BTreeMap, BTreeSet};

use crate::dockerfile::{Dockerfile, DockerfileError, InstructionError, Stage, Statement};
use crate::oci::Platform;
use crate::plan::{BuildPlan, PlanError, PlanRequest, StageRef, Warning};
use budget::Budget;
use exports::Exports;
use walk::StageFacts;

pub use budget::MAX_EXPANSION_BYTES;

/// Parses the request's Dockerfile and plans the build.
pub fn build_plan(request: &PlanRequest) -> Result<BuildPlan, PlanError> {
    let file = crate::dockerfile::parse(&request.dockerfile)?;
    plan_parsed(&file, request)
}

/// Plans an already parsed Dockerfile with the request's parameters (its
/// `dockerfile` text is not read again).
pub fn plan_parsed(file: &Dockerfile, request: &PlanRequest) -> Result<BuildPlan, PlanError> {
    let platform_text = request.platform.as_deref().unwrap_or("linux/amd64");
    let platform = parse_platform(platform_text).map_err(|reason| PlanError::Platform {
        platform: platform_text.to_string(),
        reason,
    })?;
    Planner::new(file, request, platform).plan()
}

/// Parses a platform (`linux/arm64/v8`), with the architecture aliases
/// Docker accepts (`x86_64`, `aarch64`) normalised.
fn parse_platform(text: &str) -> Result<Platform, String> {
    let mut platform: Platform = text.to_ascii_lowercase().parse()?;
    platform.architecture = match platform.architecture.as_str() {
        "x86_64" => "amd64".into(),
        "aarch64" => "arm64".into(),
        other => other.to_string(),
    };
    Ok(platform)
}

/// One planning run: the Dockerfile, the request, and what is learnt on
/// the way (global ARGs, warnings, the expansion budget spent).
struct Planner<'a> {
    file: &'a Dockerfile,
    request: &'a PlanRequest,
    platform: String,
    escape: char,
    /// ARGs of the global scope and the automatic platform args.
    globals: BTreeMap<String, Option<String>>,
    automatic: BTreeSet<String>,
    declared_globals: BTreeSet<String>,
    /// With the stage they are about: only the needed stages' are kept.
    warnings: Vec<(Option<usize>, Warning)>,
    current_stage: Option<usize>,
    budget: Budget,
}

/// An error about one instruction, naming its line and keyword.
fn instruction_error(statement: &Statement, error: InstructionError) -> DockerfileError {
    DockerfileError::Instruction {
        line: statement.line,
        instruction: statement.instruction.keyword().to_string(),
        error: Box::new(error),
    }
}

/// An error about a stage's FROM line.
fn from_error(stage: &Stage, error: InstructionError) -> DockerfileError {
    DockerfileError::Instruction {
        line: stage.line,
        instruction: "FROM".into(),
        error: Box::new(error),
    }
}

impl<'a> Planner<'a> {
    fn new(file: &'a Dockerfile, request: &'a PlanRequest, platform: Platform) -> Self {
        let variant = platform.variant.clone().unwrap_or_default();
        let text = platform.to_string();
        let mut globals = BTreeMap::new();
        // Builder pods run on the node's architecture: BUILD* = TARGET*.
        for prefix in ["TARGET", "BUILD"] {
            globals.insert(format!("{prefix}PLATFORM"), Some(text.clone()));
            globals.insert(format!("{prefix}OS"), Some(platform.os.clone()));
            globals.insert(format!("{prefix}ARCH"), Some(platform.architecture.clone()));
            globals.insert(format!("{prefix}VARIANT"), Some(variant.clone()));
        }
        let automatic = globals.keys().cloned().collect();
        Self {
            file,
            request,
            platform: text,
            escape: file.escape,
            globals,
            automatic,
            declared_globals: BTreeSet::new(),
            warnings: Vec::new(),
            current_stage: None,
            budget: Budget::default(),
        }
    }

    /// Records a warning about the stage being walked (kept only if that
    /// stage is needed); the same warning twice is kept once.
    fn warn(&mut self, line: Option<usize>, message: String) {
        let warning = (self.current_stage, Warning { line, message });
        if !self.warnings.contains(&warning) {
            self.warnings.push(warning);
        }
    }

    /// The pipeline: see the module's documentation.
    fn plan(mut self) -> Result<BuildPlan, PlanError> {
        self.warn_of_other_frontends();
        self.global_scope()?;
        let facts = self.analyse_stages();
        let target = self.target()?;
        let needed = self.needed_stages(target, &facts)?;
        self.check_build_args(&needed, &facts);
        self.build(target, &needed, &facts)
    }

    /// A `# syntax=` other than Docker's own names a frontend slimforge
    /// does not run.
    fn warn_of_other_frontends(&mut self) {
        let Some(syntax) = &self.file.syntax else {
            return;
        };
        let name = syntax.split([':', '@']).next().unwrap_or_default();
        let docker = ["docker/dockerfile", "docker.io/docker/dockerfile"];
        if !docker.contains(&name) {
            self.warn(
                None,
                format!(
                    "# syntax={syntax}: slimforge parses the Dockerfile itself; this frontend is not used"
                ),
            );
        }
    }

    /// The needed stages as chains, the final image, and the order to run
    /// them in.
    fn build(
        mut self,
        target: usize,
        needed: &[bool],
        facts: &[StageFacts],
    ) -> Result<BuildPlan, PlanError> {
        let runtime_reason = self.runtime_reason(target, facts);
        let target_runs = runtime_reason.is_some();
        let layout = self.chain_layout(target, needed, facts, target_runs);
        self.warn_shared_stages(&layout);
        let mut exports = Exports::new(layout.ids.clone());
        let mut chains = self.chains(&layout, target, facts, target_runs, &mut exports);
        let final_image = self.final_image(
            target,
            facts,
            runtime_reason,
            &chains,
            &layout,
            &mut exports,
        );
        exports.attach_to(&mut chains);
        let extractions = exports.extractions(&self.platform);
        let waves = waves::waves(&chains, &extractions, &exports.depends_on)?;
        Ok(BuildPlan {
            platform: self.platform.clone(),
            escape: self.escape,
            syntax: self.file.syntax.clone(),
            build_args: self.request.build_args.clone(),
            global_args: self.globals.clone(),
            target: self.stage_ref(target),
            chains,
            extractions,
            waves,
            final_image,
            warnings: self.needed_warnings(needed),
        })
    }

    /// The warnings about the needed stages (and the whole file), by line.
    fn needed_warnings(&self, needed: &[bool]) -> Vec<Warning> {
        let mut warnings: Vec<Warning> = self
            .warnings
            .iter()
            .filter(|(stage, _)| stage.is_none_or(|s| needed[s]))
            .map(|(_, w)| w.clone())
            .collect();
        warnings.dedup();
        warnings.sort_by_key(|w| w.line.unwrap_or(0));
        warnings
    }

    /// How the plan names a stage.
    fn stage_ref(&self, index: usize) -> StageRef {
        let stage = &self.file.stages[index];
        StageRef {
            index,
            name: stage.from.name.clone(),
            line: stage.line,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_aliases_are_normalised() {
        assert_eq!(
            parse_platform("linux/x86_64").unwrap().to_string(),
            "linux/amd64"
        );
        assert_eq!(
            parse_platform("Linux/arm64/v8").unwrap().to_string(),
            "linux/arm64/v8"
        );
        assert!(parse_platform("linux").is_err());
    }
}
