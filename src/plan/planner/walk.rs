//! Every stage's instructions walked in order, with the variables the
//! Dockerfile defines: what each step needs (its COPY source, its ARGs),
//! the stage's first RUN, and its errors, which count only if the stage
//! turns out to be needed.

use std::collections::{BTreeMap, BTreeSet};

use super::bases::Base;
use super::scope::{Binding, Scope};
use super::sources::Origin;
use super::{Planner, from_error, instruction_error};
use crate::dockerfile::{
    ArgDeclaration, DockerfileError, Instruction, InstructionError, KeyValue, RunMount, Stage,
    Statement,
};
use crate::plan::ArgBinding;

/// What the walk learnt of one instruction.
#[derive(Debug, Clone, Default)]
pub(super) struct StepFacts {
    /// Where a COPY/ADD takes its files.
    pub(super) origin: Option<Origin>,
    /// An ARG's bindings, in order.
    pub(super) args: Vec<ArgBinding>,
    /// A RUN's `--mount`s, expanded, each with the stage or image its
    /// `from=` reads.
    pub(super) mounts: Vec<(RunMount, Option<Origin>)>,
}

/// What the walk learnt of one stage.
#[derive(Debug, Clone)]
pub(super) struct StageFacts {
    pub(super) base: Result<Base, DockerfileError>,
    /// One per instruction of the stage.
    pub(super) steps: Vec<StepFacts>,
    /// Errors found while walking; they matter only if the stage is needed.
    pub(super) errors: Vec<DockerfileError>,
    pub(super) first_run: Option<usize>,
    /// The variables after the last instruction: a child stage starts there.
    pub(super) end: Scope,
    pub(super) declared_args: BTreeSet<String>,
}

impl Planner<'_> {
    /// Walks every stage in order; a stage's facts may use its parent's.
    pub(super) fn analyse_stages(&mut self) -> Vec<StageFacts> {
        let file = self.file;
        let mut facts: Vec<StageFacts> = Vec::with_capacity(file.stages.len());
        for stage in &file.stages {
            self.current_stage = Some(stage.index);
            let base = self.resolve_base(stage);
            let (start, start_error) = self.start_scope(stage, &base, &facts);
            let mut stage_facts = self.walk(stage, base, start);
            stage_facts.errors.splice(0..0, start_error);
            facts.push(stage_facts);
        }
        self.current_stage = None;
        facts
    }

    /// The variables a stage starts with: its parent stage's (ARGs
    /// excepted, paid for from the budget), scratch's PATH, or an image's
    /// environment, unknown until run time.
    fn start_scope(
        &self,
        stage: &Stage,
        base: &Result<Base, DockerfileError>,
        facts: &[StageFacts],
    ) -> (Scope, Option<DockerfileError>) {
        match base {
            Ok(Base::Stage(parent)) => {
                let parent = &facts[*parent].end;
                let weight = parent.weight();
                match self
                    .budget
                    .charge(weight, " (each stage copies its parent's)")
                {
                    Ok(()) => (
                        Scope {
                            args: BTreeMap::new(),
                            ..parent.clone()
                        },
                        None,
                    ),
                    Err(error) => {
                        let error = from_error(
                            stage,
                            InstructionError::Expand {
                                what: "the parent stage's variables".into(),
                                error,
                            },
                        );
                        let poisoned = Scope {
                            poisoned: true,
                            ..Scope::default()
                        };
                        (poisoned, Some(error))
                    }
                }
            }
            Ok(Base::Image { reference, .. }) if reference == "scratch" => {
                let path = Binding::Set(crate::dockerfile::eval::DEFAULT_PATH.into());
                let scope = Scope {
                    env: BTreeMap::from([("PATH".into(), path)]),
                    ..Scope::default()
                };
                (scope, None)
            }
            _ => {
                let scope = Scope {
                    image_env_unknown: true,
                    ..Scope::default()
                };
                (scope, None)
            }
        }
    }

    /// Walks a stage's instructions with what the Dockerfile defines.
    fn walk(
        &mut self,
        stage: &Stage,
        base: Result<Base, DockerfileError>,
        start: Scope,
    ) -> StageFacts {
        let mut facts = StageFacts {
            base,
            steps: Vec::with_capacity(stage.instructions.len()),
            errors: Vec::new(),
            first_run: None,
            end: start,
            declared_args: BTreeSet::new(),
        };
        for statement in &stage.instructions {
            let step = self.walk_step(stage, statement, &mut facts);
            facts.steps.push(step);
        }
        facts
    }

    /// One instruction: `facts.end` is the scope before it, and after.
    fn walk_step(
        &mut self,
        stage: &Stage,
        statement: &Statement,
        facts: &mut StageFacts,
    ) -> StepFacts {
        let mut step = StepFacts::default();
        match &statement.instruction {
            Instruction::Arg(declarations) => {
                step.args = self.walk_arg(statement, declarations, facts);
            }
            Instruction::Env(pairs) => self.walk_env(statement, pairs, facts),
            Instruction::Run(run) => {
                facts.first_run.get_or_insert(statement.line);
                for spec in &run.mounts {
                    match self.resolve_mount(stage, statement, spec, &facts.end) {
                        Ok(mount) => step.mounts.push(mount),
                        Err(error) => facts.errors.push(error),
                    }
                }
            }
            Instruction::Copy(copy) | Instruction::Add(copy) => {
                match self.resolve_copy(stage, statement, copy, &facts.end) {
                    Ok(origin) => step.origin = Some(origin),
                    Err(error) => facts.errors.push(error),
                }
            }
            _ => {}
        }
        step
    }

    /// A stage's ARG: each name declared, bound, and visible from here on.
    fn walk_arg(
        &self,
        statement: &Statement,
        declarations: &[ArgDeclaration],
        facts: &mut StageFacts,
    ) -> Vec<ArgBinding> {
        let mut args = Vec::new();
        for declaration in declarations {
            facts.declared_args.insert(declaration.name.clone());
            let name = &declaration.name;
            match self.stage_arg(&facts.end, name, declaration.default.as_deref()) {
                Ok((binding, arg)) => {
                    facts.end.args.insert(name.clone(), binding);
                    args.push(arg);
                }
                Err(error) => facts.errors.push(instruction_error(
                    statement,
                    InstructionError::Expand {
                        what: format!("ARG {name}"),
                        error,
                    },
                )),
            }
        }
        args
    }

    /// ENV: every pair sees the scope before the instruction. A key known
    /// only at run time poisons the scope: any name may have been set.
    fn walk_env(&self, statement: &Statement, pairs: &[KeyValue], facts: &mut StageFacts) {
        let scope = &facts.end;
        let expanded: Vec<_> = pairs
            .iter()
            .map(|pair| {
                (
                    scope.expand(&pair.key, self.escape, &self.budget),
                    scope.expand(&pair.value, self.escape, &self.budget),
                )
            })
            .collect();
        for (pair, expanded) in pairs.iter().zip(expanded) {
            match expanded {
                (Ok(Ok(key)), Ok(value)) => {
                    let binding = match value {
                        Ok(value) => Binding::Set(value),
                        Err(_) => Binding::Unknown,
                    };
                    facts.end.env.insert(key, binding);
                }
                (Ok(Err(_)), Ok(_)) => facts.end.poisoned = true,
                (Err(error), _) | (_, Err(error)) => {
                    facts.errors.push(instruction_error(
                        statement,
                        InstructionError::Expand {
                            what: format!("ENV {}", pair.key),
                            error,
                        },
                    ));
                }
            }
        }
    }
}
