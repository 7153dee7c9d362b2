//! Which stages are built: the target, the stages it needs (whose errors
//! fail the plan), and the build args none of them declares.

use std::collections::BTreeSet;

use super::Planner;
use super::bases::Base;
use super::sources::Origin;
use super::walk::StageFacts;
use crate::dockerfile::{DockerfileError, Stage};
use crate::plan::PlanError;

/// Build args Docker passes to RUN without an ARG.
const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

impl Planner<'_> {
    /// The stage to build: the request's target, by name, or the last.
    pub(super) fn target(&self) -> Result<usize, PlanError> {
        let last = self.file.stages.len() - 1;
        let Some(target) = &self.request.target else {
            return Ok(last);
        };
        match self.file.stage_named(target) {
            Some(stage) => Ok(stage.index),
            None => {
                let names: Vec<&str> = self.file.stages.iter().filter_map(Stage::name).collect();
                Err(PlanError::UnknownTarget {
                    target: target.clone(),
                    stages: if names.is_empty() {
                        "none has a name".into()
                    } else {
                        names.join(", ")
                    },
                })
            }
        }
    }

    /// The target and, transitively, the stages it builds on or copies from.
    /// The first error (by line) of a needed stage fails the plan.
    pub(super) fn needed_stages(
        &self,
        target: usize,
        facts: &[StageFacts],
    ) -> Result<Vec<bool>, PlanError> {
        let mut needed = vec![false; facts.len()];
        needed[target] = true;
        let mut errors: Vec<DockerfileError> = Vec::new();
        for index in (0..=target).rev() {
            if !needed[index] {
                continue;
            }
            let stage = &facts[index];
            match &stage.base {
                Ok(Base::Stage(parent)) => needed[*parent] = true,
                Ok(Base::Image { .. }) => {}
                Err(error) => errors.push(error.clone()),
            }
            errors.extend(stage.errors.iter().cloned());
            let mount_origins = stage.steps.iter().flat_map(|s| s.mounts.iter());
            let origins = stage
                .steps
                .iter()
                .filter_map(|s| s.origin.as_ref())
                .chain(mount_origins.filter_map(|(_, origin)| origin.as_ref()));
            for origin in origins {
                if let Origin::Stage { index, .. } = origin {
                    needed[*index] = true;
                }
            }
        }
        match errors.into_iter().min_by_key(|e| e.line().unwrap_or(0)) {
            Some(error) => Err(error.into()),
            None => Ok(needed),
        }
    }

    /// Warns of build args no needed stage declares (the automatic platform
    /// args and the proxy args excepted): likely a typo.
    pub(super) fn check_build_args(&mut self, needed: &[bool], facts: &[StageFacts]) {
        let mut declared: BTreeSet<&str> =
            self.declared_globals.iter().map(String::as_str).collect();
        for (stage, facts) in facts.iter().enumerate() {
            if needed[stage] {
                declared.extend(facts.declared_args.iter().map(String::as_str));
            }
        }
        let unused: Vec<String> = self
            .request
            .build_args
            .keys()
            .filter(|name| {
                !declared.contains(name.as_str())
                    && !self.automatic.contains(*name)
                    && !PROXY_ARGS.contains(&name.as_str())
            })
            .cloned()
            .collect();
        for name in unused {
            self.warn(
                None,
                format!(
                    "build arg {name} is not declared by an ARG of the stages built: it is not used"
                ),
            );
        }
    }
}
