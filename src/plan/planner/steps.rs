//! A stage's instructions as plan steps: each COPY/ADD's source resolved
//! to the chain or extraction that exports its files.

use super::Planner;
use super::chains::Layout;
use super::exports::Exports;
use super::sources::Origin;
use super::walk::{StageFacts, StepFacts};
use crate::dockerfile::{Instruction, Stage, Statement};
use crate::plan::{Consumer, CopySource, PlannedMount, Step};

impl Planner<'_> {
    /// A stage's steps with their sources resolved; `chain` is the chain
    /// running it (`None`: the assembly).
    pub(super) fn steps(
        &mut self,
        stage: &Stage,
        facts: &StageFacts,
        chain: Option<usize>,
        layout: &Layout,
        exports: &mut Exports,
    ) -> Vec<Step> {
        let consumer_id = stage.id();
        let mut steps = Vec::with_capacity(stage.instructions.len());
        for (statement, step_facts) in stage.instructions.iter().zip(&facts.steps) {
            if let Instruction::Maintainer(_) = statement.instruction {
                self.warn(
                    Some(statement.line),
                    "MAINTAINER is deprecated: it is applied as LABEL maintainer=…".into(),
                );
            }
            let consumer = Consumer {
                stage: consumer_id.clone(),
                line: statement.line,
            };
            let source = step_facts.origin.as_ref().map(|origin| {
                self.step_source(statement, origin, &consumer, chain, layout, exports)
            });
            let mounts = step_facts
                .mounts
                .iter()
                .map(|(mount, origin)| PlannedMount {
                    mount: mount.clone(),
                    source: origin.as_ref().map(|origin| {
                        self.step_source(statement, origin, &consumer, chain, layout, exports)
                    }),
                })
                .collect();
            let mut step = step(statement, step_facts, source);
            step.mounts = mounts;
            steps.push(step);
        }
        steps
    }

    /// Where a step's files come from in the plan: a chain's or an
    /// extraction's exports, recorded for `consumer`; the chain running
    /// the step then waits for it.
    fn step_source(
        &self,
        statement: &Statement,
        origin: &Origin,
        consumer: &Consumer,
        chain: Option<usize>,
        layout: &Layout,
        exports: &mut Exports,
    ) -> CopySource {
        match origin {
            Origin::Context => CopySource::Context,
            Origin::Inline => CopySource::Inline,
            Origin::Stage {
                index,
                paths: sources,
            } => {
                let producer = layout.producer(*index, chain);
                let stage_id = self.file.stages[*index].id();
                let ids = sources
                    .iter()
                    .map(|p| exports.add_chain_export(producer, &stage_id, p, consumer))
                    .collect();
                if let Some(c) = chain
                    && c != producer
                {
                    exports.depend(c, exports.chain_ids[producer].clone(), statement.line);
                }
                CopySource::Stage {
                    chain: exports.chain_ids.get(producer).cloned().unwrap_or_default(),
                    stage: stage_id,
                    paths: sources.clone(),
                    exports: ids,
                }
            }
            Origin::Image {
                reference,
                paths: sources,
            } => {
                let (extraction, ids) = exports.add_image_export(reference, sources, consumer);
                if let Some(c) = chain {
                    exports.depend(c, extraction.clone(), statement.line);
                }
                CopySource::Image {
                    extraction,
                    image: reference.clone(),
                    paths: sources.clone(),
                    exports: ids,
                }
            }
        }
    }
}

/// One plan step: the instruction as written, its source and ARGs.
fn step(statement: &Statement, facts: &StepFacts, source: Option<CopySource>) -> Step {
    Step {
        line: statement.line,
        text: statement.text.clone(),
        instruction: statement.instruction.clone(),
        source,
        args: facts.args.clone(),
        mounts: Vec::new(),
    }
}
