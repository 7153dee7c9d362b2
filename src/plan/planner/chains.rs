//! The needed stages grouped into chains, one pod each: a chain is a path
//! from a root stage (built on an image) down to a stage nothing else in
//! a chain builds on. The final image is assembled without a pod, unless
//! the target runs something (a RUN, or a stage base): then its chain is
//! the runtime chain.

use super::Planner;
use super::bases::Base;
use super::exports::Exports;
use super::walk::StageFacts;
use crate::dockerfile::RunMount;
use crate::plan::{
    AssemblePlan, Chain, ChainRole, ChainStage, CopySource, FinalImage, RuntimePlan,
};

/// How the needed stages fall into chains.
pub(super) struct Layout {
    /// Per stage: whether it runs in a chain pod.
    in_chain: Vec<bool>,
    /// Per chain: its stages, root first.
    pub(super) paths: Vec<Vec<usize>>,
    /// Per chain: its id, that of its last stage.
    pub(super) ids: Vec<String>,
}

impl Layout {
    /// The chains that run a stage (several when chains share an ancestor).
    fn chains_of(&self, stage: usize) -> Vec<usize> {
        (0..self.paths.len())
            .filter(|c| self.paths[*c].contains(&stage))
            .collect()
    }

    /// The chain that exports a stage's files to `consumer` (a chain, or
    /// `None`: the assembly): the consumer itself if it runs the stage,
    /// else the first chain that does.
    pub(super) fn producer(&self, stage: usize, consumer: Option<usize>) -> usize {
        match consumer {
            Some(c) if self.paths[c].contains(&stage) => c,
            _ => self
                .paths
                .iter()
                .position(|path| path.contains(&stage))
                .unwrap_or(0),
        }
    }
}

/// What a stage builds on as `(image, platform)`: a stage base (which has
/// no image of its own) gives `scratch` on the build's platform.
fn image_of(facts: &StageFacts, build_platform: &str) -> (String, String) {
    match &facts.base {
        Ok(Base::Image {
            reference,
            platform,
        }) => (reference.clone(), platform.clone()),
        _ => ("scratch".to_string(), build_platform.to_string()),
    }
}

impl Planner<'_> {
    /// Why the final image needs a pod, if it does: it builds on a stage,
    /// or it has a RUN.
    pub(super) fn runtime_reason(&self, target: usize, facts: &[StageFacts]) -> Option<String> {
        match (&facts[target].base, facts[target].first_run) {
            (Ok(Base::Stage(parent)), _) => Some(format!(
                "it builds FROM stage {} (line {})",
                self.file.stages[*parent].id(),
                self.file.stages[target].line
            )),
            (_, Some(line)) => Some(format!("it has RUN (line {line})")),
            _ => None,
        }
    }

    /// The chains: every needed stage but an assembled target runs in one;
    /// each stage no other in a chain builds on ends one.
    pub(super) fn chain_layout(
        &self,
        target: usize,
        needed: &[bool],
        facts: &[StageFacts],
        target_runs: bool,
    ) -> Layout {
        let parent = |index: usize| match &facts[index].base {
            Ok(Base::Stage(parent)) => Some(*parent),
            _ => None,
        };
        let in_chain: Vec<bool> = (0..needed.len())
            .map(|i| needed[i] && (i != target || target_runs))
            .collect();
        let mut has_child = vec![false; needed.len()];
        for (index, _) in in_chain.iter().enumerate().filter(|(_, c)| **c) {
            if let Some(parent) = parent(index) {
                has_child[parent] = true;
            }
        }
        let mut paths: Vec<Vec<usize>> = Vec::new();
        for leaf in (0..needed.len()).filter(|i| in_chain[*i] && !has_child[*i]) {
            let mut path = vec![leaf];
            let mut current = leaf;
            while let Some(p) = parent(current) {
                path.push(p);
                current = p;
            }
            path.reverse();
            paths.push(path);
        }
        let ids = paths
            .iter()
            .map(|path| self.file.stages[*path.last().unwrap_or(&0)].id())
            .collect();
        Layout {
            in_chain,
            paths,
            ids,
        }
    }

    /// A stage shared by chains runs once in each: say so, since its steps
    /// had better give the same files every time.
    pub(super) fn warn_shared_stages(&mut self, layout: &Layout) {
        for index in (0..layout.in_chain.len()).filter(|i| layout.in_chain[*i]) {
            let chains = layout.chains_of(index);
            if chains.len() > 1 {
                let names: Vec<&str> = chains.iter().map(|c| layout.ids[*c].as_str()).collect();
                self.warn(
                    Some(self.file.stages[index].line),
                    format!(
                        "stage {} is shared by chains {}: it runs again in each of them (its steps should give the same files each time)",
                        self.file.stages[index].id(),
                        names.join(", ")
                    ),
                );
            }
        }
    }

    /// Every chain with its stages and steps; exports and dependencies are
    /// gathered in `exports` and attached later, once the assembly has
    /// added its own.
    pub(super) fn chains(
        &mut self,
        layout: &Layout,
        target: usize,
        facts: &[StageFacts],
        target_runs: bool,
        exports: &mut Exports,
    ) -> Vec<Chain> {
        let mut chains = Vec::with_capacity(layout.paths.len());
        for (c, path) in layout.paths.iter().enumerate() {
            let (image, platform) = image_of(&facts[path[0]], &self.platform);
            let stages: Vec<ChainStage> = path
                .iter()
                .map(|&index| self.chain_stage(index, c, layout, &facts[index], exports))
                .collect();
            let needs_context = stages.iter().flat_map(|s| &s.steps).any(|s| {
                matches!(s.source, Some(CopySource::Context))
                    || s.mounts
                        .iter()
                        .any(|m| matches!(&m.mount, RunMount::Bind(b) if b.from.is_none()))
            });
            let is_runtime = target_runs && path.last() == Some(&target);
            chains.push(Chain {
                id: layout.ids[c].clone(),
                image,
                platform,
                role: if is_runtime {
                    ChainRole::Runtime
                } else {
                    ChainRole::Builder
                },
                stages,
                depends_on: Vec::new(),
                needs_context,
                exports: Vec::new(),
            });
        }
        chains
    }

    /// One stage as chain `chain` runs it.
    fn chain_stage(
        &mut self,
        index: usize,
        chain: usize,
        layout: &Layout,
        facts: &StageFacts,
        exports: &mut Exports,
    ) -> ChainStage {
        let file = self.file;
        let stage = &file.stages[index];
        let steps = self.steps(stage, facts, Some(chain), layout, exports);
        ChainStage {
            stage: self.stage_ref(index),
            from: stage.text.clone(),
            replayed_in: layout
                .chains_of(index)
                .into_iter()
                .filter(|other| *other != chain)
                .map(|other| layout.ids[other].clone())
                .collect(),
            steps,
        }
    }

    /// The final image: the runtime chain's, or assembled from the
    /// target's base and steps.
    pub(super) fn final_image(
        &mut self,
        target: usize,
        facts: &[StageFacts],
        runtime_reason: Option<String>,
        chains: &[Chain],
        layout: &Layout,
        exports: &mut Exports,
    ) -> FinalImage {
        if let Some(reason) = runtime_reason {
            let (chain, base) = chains
                .iter()
                .find(|c| c.role == ChainRole::Runtime)
                .map(|c| (c.id.clone(), c.image.clone()))
                .unwrap_or_default();
            return FinalImage::Runtime(RuntimePlan {
                stage: self.stage_ref(target),
                chain,
                base,
                reason,
            });
        }
        let (base, platform) = image_of(&facts[target], &self.platform);
        let file = self.file;
        let target_stage = &file.stages[target];
        let steps = self.steps(target_stage, &facts[target], None, layout, exports);
        FinalImage::Assemble(AssemblePlan {
            stage: self.stage_ref(target),
            from: target_stage.text.clone(),
            base,
            platform,
            steps,
        })
    }
}
