//! The cache step: ask the shell for the build's [`CacheView`] once a plan
//! exists, then take from it what is cached. A chain or extraction the
//! cache has and that has no pod yet is done without one; a restore pod
//! puts its exports back on the workspace for whatever still runs and
//! copies them. When the cache has the whole image, and the output's tags
//! point at it already, the build succeeds without any pod.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use super::pod_results::image_status;
use super::{Decision, Inputs, Pass, Planned, PodPhase, PodState};
use crate::api::{ImageBuildStatus, Phase, StageStatus, human_size};
use crate::cache::lookup::{CacheView, ContextRef, LookupRequest};
use crate::contract::{AssembleResult, RebaseOutcome};
use crate::controller::pods::{CONTEXT_UNIT, REBASE_UNIT, Unit, UnitKind, rebase_unit};
use crate::controller::status::Reason;

impl Pass<'_> {
    /// The view the shell found, or a request for one (the shell answers
    /// it and runs the pass again). `None`: the cache is off, or there is
    /// no plan yet.
    pub(super) fn consult_cache(
        &self,
        inputs: &Inputs,
        decision: &mut Decision,
    ) -> ControlFlow<(), Option<&CacheView>> {
        let Some(plan) = &inputs.plan else {
            return ControlFlow::Continue(None);
        };
        let cache = self.ib.spec.cache_enabled();
        // Image triggers compare with the digests the build used: asked
        // for even with the cache off (then only the images are resolved).
        let triggers = self.ib.spec.triggers.as_ref().is_some_and(|t| t.images);
        if !cache && !triggers {
            return ControlFlow::Continue(None);
        }
        if let Some(view) = &self.observed.cache {
            decision.status.resolved_images = view.digests.clone();
            return ControlFlow::Continue(Some(view).filter(|_| cache));
        }
        let mut request = self.lookup_request(plan, &decision.status);
        request.no_cache |= !cache;
        decision.lookup = Some(request);
        decision.status.phase = Some(Phase::Pending);
        ControlFlow::Break(())
    }

    fn lookup_request(
        &self,
        plan: &crate::plan::BuildPlan,
        status: &ImageBuildStatus,
    ) -> LookupRequest {
        let spec = &self.ib.spec;
        let context = &spec.context;
        let context = if let Some(files) = &context.inline {
            ContextRef::Inline(files.clone())
        } else if let Some(config_map) = &context.config_map {
            ContextRef::ConfigMap(config_map.clone())
        } else if let Some(git) = &context.git {
            match self
                .clone_outcome()
                .filter(|o| !o.context_digests.is_empty())
            {
                Some(outcome) => ContextRef::Digests(outcome.context_digests),
                // The files' digests did not come back: the commit stands
                // for all of them.
                None => {
                    let commit = status.source.as_ref().map(|s| s.commit.as_str());
                    ContextRef::Opaque(format!(
                        "git {} {}",
                        commit.unwrap_or_default(),
                        git.sub_path.as_deref().unwrap_or_default()
                    ))
                }
            }
        } else {
            ContextRef::None
        };
        let cache = spec.cache.clone().unwrap_or_default();
        LookupRequest {
            plan: plan.clone(),
            context,
            output: spec.output.image.clone(),
            additional_tags: spec.output.additional_tags.clone(),
            repository: cache.repository,
            insecure: spec.output.insecure,
            secrets: spec.registry_secrets(),
            no_cache: cache.no_cache,
        }
    }

    /// The whole image is cached and already where the output says: the
    /// build is done, and no pod ran.
    pub(super) fn end_when_image_cached(
        &self,
        view: Option<&CacheView>,
        planned: &Planned<'_>,
        decision: &mut Decision,
    ) -> ControlFlow<()> {
        let Some(entry) = view.and_then(|v| v.image.as_ref()) else {
            return ControlFlow::Continue(());
        };
        // A git context's clone is the one pod such a build has run.
        if planned.latest.keys().any(|n| *n != CONTEXT_UNIT) {
            return ControlFlow::Continue(());
        }
        let message = format!(
            "every input is unchanged: {} ({}) is the cached image, and no pod ran",
            entry.image.reference,
            human_size(entry.image.size_bytes)
        );
        let image = crate::api::ImageStatus {
            cached: true,
            ..image_status(entry.image.clone())
        };
        self.succeed_with(image, message, decision);
        ControlFlow::Break(())
    }

    /// The rebase pod put the cached layers on the new base: done.
    pub(super) fn end_when_rebased(
        &self,
        planned: &Planned<'_>,
        decision: &mut Decision,
    ) -> ControlFlow<()> {
        let Rebase::Rebased(image) = &planned.rebase else {
            return ControlFlow::Continue(());
        };
        let message = format!(
            "rebased onto {}: pushed {} ({}); no stage ran",
            image.base.as_deref().unwrap_or("the base"),
            image.reference,
            human_size(image.size_bytes)
        );
        // The builders did not run: their size is the last build's.
        let previous = self.previous.image.clone().unwrap_or_default();
        let image = crate::api::ImageStatus {
            rebased: true,
            builder_image: previous.builder_image,
            builder_size_bytes: previous.builder_size_bytes,
            ..image_status(image.clone())
        };
        self.succeed_with(image, message, decision);
        ControlFlow::Break(())
    }

    /// A rebase that fell back says why, once: as the build's own pods
    /// start.
    pub(super) fn say_why_no_rebase(&self, planned: &Planned<'_>, decision: &mut Decision) {
        let Rebase::FellBack(why) = &planned.rebase else {
            return;
        };
        let started = planned
            .latest
            .keys()
            .any(|n| *n != CONTEXT_UNIT && *n != REBASE_UNIT);
        if !started {
            decision.events.push(super::warning(
                Reason::RebaseNotApplied,
                &format!("the cached layers were not rebased, so the build runs: {why}"),
            ));
        }
    }
}

/// Where a rebase stands: the cache has the final image's layers from
/// another digest of its base (and not the image itself).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Rebase {
    /// Nothing to rebase: the build runs as usual.
    No,
    /// The rebase pod is to start, or runs: the build's only pod (after a
    /// git context's clone).
    Runs,
    /// Done: the image.
    Rebased(AssembleResult),
    /// The layers did not fit the base as it is now, or the pod failed:
    /// the build runs as usual, and says why.
    FellBack(String),
}

impl Rebase {
    /// What the rebase pod of `latest` (if any) says about `view`'s entry.
    pub(super) fn of(view: &CacheView, latest: &BTreeMap<usize, &PodState>) -> Self {
        if view.rebase.is_none() || view.image.is_some() {
            return Rebase::No;
        }
        let Some(pod) = latest.get(&REBASE_UNIT) else {
            return Rebase::Runs;
        };
        match pod.phase {
            PodPhase::Succeeded => {
                match pod
                    .result
                    .as_deref()
                    .map(serde_json::from_str::<RebaseOutcome>)
                {
                    Some(Ok(RebaseOutcome::Rebased(image))) => Rebase::Rebased(image),
                    Some(Ok(RebaseOutcome::Refused(why))) => Rebase::FellBack(why),
                    _ => Rebase::FellBack(format!(
                        "the rebase pod {}'s result is unreadable",
                        pod.name
                    )),
                }
            }
            PodPhase::Failed => Rebase::FellBack(format!(
                "the rebase failed: {}",
                super::pod_results::failure_message(&rebase_unit(), pod)
            )),
            _ => Rebase::Runs,
        }
    }

    /// The rebase pod is the build.
    pub(super) fn runs(&self) -> bool {
        matches!(self, Rebase::Runs | Rebase::Rebased(_))
    }
}

/// Marks the units the cache has (and that have no pod) as cached, the
/// probe too when the cache has its answer, and adds the restore pod when
/// a unit that still runs copies from a cached one: a chain, or the
/// assembly when the cache repository is not on the `output` image's
/// registry (on it, the assembly reads the cache itself). Returns the
/// cached units' numbers and keys.
pub(super) fn take_cached(
    units: &mut Vec<Unit>,
    view: &CacheView,
    latest: &BTreeMap<usize, &PodState>,
    output: &str,
) -> BTreeMap<usize, String> {
    // The assembly reads the cache itself when it is on the output's
    // registry (the default): then only chains need a restore pod.
    let host = |image: &str| {
        crate::oci::registry::parse_reference(image)
            .map(|r| r.resolve_registry().to_string())
            .ok()
    };
    let assembly_reads_cache =
        host(&view.repository).is_some() && host(&view.repository) == host(output);
    let restores_for = |unit: &Unit| unit.kind != UnitKind::Assemble || !assembly_reads_cache;
    let mut cached = BTreeMap::new();
    // The probe's answer: the assembly takes it from the cache.
    if let Some(entry) = &view.recipe {
        for unit in units.iter().filter(|u| u.kind == UnitKind::Probe) {
            if !latest.contains_key(&unit.n) {
                cached.insert(unit.n, entry.key.clone());
            }
        }
    }
    for unit in units.iter() {
        let (UnitKind::Chain { id, runtime: false } | UnitKind::Extraction { id }) = &unit.kind
        else {
            continue;
        };
        if let (Some(entry), false) = (view.hits.get(id), latest.contains_key(&unit.n)) {
            cached.insert(unit.n, entry.key.clone());
        }
    }
    let restored: Vec<String> = units
        .iter()
        .filter(|u| !cached.contains_key(&u.n) && restores_for(u))
        .flat_map(|u| u.depends_on.iter())
        .filter(|n| cached.contains_key(n))
        .filter_map(|n| units.iter().find(|u| u.n == *n))
        .filter_map(|u| match &u.kind {
            UnitKind::Chain { id, .. } | UnitKind::Extraction { id } => Some(id.clone()),
            _ => None,
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if restored.is_empty() {
        return cached;
    }
    let n = units.iter().map(|u| u.n).max().unwrap_or(0) + 1;
    for unit in units
        .iter_mut()
        .filter(|u| !cached.contains_key(&u.n) && restores_for(u))
    {
        if unit.depends_on.iter().any(|d| cached.contains_key(d)) {
            unit.depends_on.retain(|d| !cached.contains_key(d));
            unit.depends_on.push(n);
        }
    }
    let restore = Unit {
        n,
        kind: UnitKind::Restore { ids: restored },
        depends_on: Vec::new(),
        name: "restore".into(),
        image: String::new(),
        from_line: None,
    };
    // Before the assembly, which stays last.
    let at = units.len().saturating_sub(1);
    units.insert(at, restore);
    cached
}

/// A unit the cache had: done, with no pod.
pub(super) fn cached_stage_status(unit: &Unit, key: &str) -> StageStatus {
    StageStatus {
        name: unit.name.clone(),
        pod: String::new(),
        phase: "Succeeded".into(),
        cached: Some(true),
        cache_key: Some(key.to_string()),
        ..StageStatus::default()
    }
}
