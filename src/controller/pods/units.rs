//! What pods a build has: its units in a fixed order, the git context pod
//! ahead of them, and the identity each pod carries in its labels.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::ImageBuild;
use crate::controller::{
    ATTEMPT_LABEL, GENERATION_LABEL, REBUILD_LABEL, ROLE_LABEL, STAGE_ANNOTATION, UNIT_LABEL,
};
use crate::plan::{BuildPlan, FinalImage};

/// The context pod's name in `status.stages`.
pub const CONTEXT_STAGE: &str = "git clone";
/// The context pod's unit number: it comes before every other pod.
pub const CONTEXT_UNIT: usize = 0;
/// The rebase pod's unit number: past any plan's units (a plan has at most
/// [`crate::dockerfile::MAX_STAGES`] chains and one extraction per
/// instruction), so a build that falls back from a rebase numbers its own
/// pods as usual.
pub const REBASE_UNIT: usize = 99_999;
const _: () =
    assert!(REBASE_UNIT > crate::dockerfile::MAX_STAGES + crate::dockerfile::MAX_INSTRUCTIONS + 3);

/// One pod of the build, before it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// `n` in the pod name `<ib>-g<generation>-<n>`: 0 for a git build's
    /// context pod, then 1, 2, …
    pub n: usize,
    pub kind: UnitKind,
    /// The units whose results this one needs.
    pub depends_on: Vec<usize>,
    /// The name in `status.stages`: the chain's stage, `probe`, `assemble`.
    pub name: String,
    /// The image its main container runs.
    pub image: String,
    /// The Dockerfile line of the FROM that named `image`, for pull errors.
    pub from_line: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitKind {
    /// Clones a git context; every other pod waits for it.
    Context,
    /// A chain of stages; the runtime chain writes a snapshot too.
    Chain { id: String, runtime: bool },
    /// `COPY --from=<image>`: files taken out of an image.
    Extraction { id: String },
    /// Resolves the final stage against its base.
    Probe,
    /// Builds and pushes the final image.
    Assemble,
    /// Puts the exports of cached chains and extractions back on the
    /// workspace, from the cache repository, for the units that copy them.
    Restore { ids: Vec<String> },
    /// Puts the final image's cached layers on its base's current digest
    /// (the assemble pod, told to rebase).
    Rebase,
}

impl UnitKind {
    pub fn role(&self) -> &'static str {
        match self {
            UnitKind::Context => "context",
            UnitKind::Chain { runtime: false, .. } => "chain",
            UnitKind::Chain { runtime: true, .. } => "runtime",
            UnitKind::Extraction { .. } => "extraction",
            UnitKind::Probe => "probe",
            UnitKind::Assemble => "assemble",
            UnitKind::Restore { .. } => "restore",
            UnitKind::Rebase => "rebase",
        }
    }

    /// Runs the user's commands (or at least the user's image).
    pub fn runs_user_code(&self) -> bool {
        matches!(self, UnitKind::Chain { .. } | UnitKind::Extraction { .. })
    }
}

/// The build's pods in a fixed order: chains and extractions by wave, then
/// the probe (when the final image has a base to probe), then the assembly.
pub fn units(plan: &BuildPlan) -> Vec<Unit> {
    let mut units: Vec<Unit> = Vec::new();
    let mut index_of: BTreeMap<String, usize> = BTreeMap::new();
    for id in plan.waves.iter().flatten() {
        let n = units.len() + 1;
        let unit = if let Some(chain) = plan.chain(id) {
            let runtime = matches!(&plan.final_image, FinalImage::Runtime(r) if r.chain == *id);
            Unit {
                n,
                kind: UnitKind::Chain {
                    id: id.clone(),
                    runtime,
                },
                depends_on: chain
                    .depends_on
                    .iter()
                    .filter_map(|d| index_of.get(d).copied())
                    .collect(),
                name: id.clone(),
                image: chain.image.clone(),
                from_line: chain.stages.first().map(|s| s.stage.line),
            }
        } else if let Some(extraction) = plan.extraction(id) {
            let line = extraction
                .exports
                .first()
                .and_then(|e| e.consumers.first())
                .map(|c| c.line);
            Unit {
                n,
                kind: UnitKind::Extraction { id: id.clone() },
                depends_on: Vec::new(),
                name: format!("extract {}", extraction.image),
                image: extraction.image.clone(),
                from_line: line,
            }
        } else {
            continue;
        };
        index_of.insert(id.clone(), n);
        units.push(unit);
    }
    let (base, line) = plan.final_base();
    let base = base.to_string();
    if base != "scratch" {
        units.push(Unit {
            n: units.len() + 1,
            kind: UnitKind::Probe,
            depends_on: Vec::new(),
            name: "probe".into(),
            image: base,
            from_line: Some(line),
        });
    }
    let all = units.iter().map(|u| u.n).collect();
    units.push(Unit {
        n: units.len() + 1,
        kind: UnitKind::Assemble,
        depends_on: all,
        name: "assemble".into(),
        image: String::new(),
        from_line: None,
    });
    units
}

/// A rebase's pods: the rebase pod, after the context pod for a git
/// context (the clone says which commit the cached layers are checked
/// against).
pub fn rebase_units(ib: &ImageBuild) -> Vec<Unit> {
    if ib.spec.context.git.is_none() {
        return vec![rebase_unit()];
    }
    let rebase = Unit {
        depends_on: vec![CONTEXT_UNIT],
        ..rebase_unit()
    };
    vec![context_unit(), rebase]
}

/// The rebase pod's unit, depending on nothing.
pub fn rebase_unit() -> Unit {
    Unit {
        n: REBASE_UNIT,
        kind: UnitKind::Rebase,
        depends_on: Vec::new(),
        name: "rebase".into(),
        image: String::new(),
        from_line: None,
    }
}

/// The context pod of a git build.
pub fn context_unit() -> Unit {
    Unit {
        n: CONTEXT_UNIT,
        kind: UnitKind::Context,
        depends_on: Vec::new(),
        name: CONTEXT_STAGE.into(),
        image: String::new(),
        from_line: None,
    }
}

/// The build's pods: [`units`], after the context pod when the context is
/// a git repository (every other pod then waits for it).
pub fn build_units(ib: &ImageBuild, plan: &BuildPlan) -> Vec<Unit> {
    let mut units = units(plan);
    if ib.spec.context.git.is_some() {
        for unit in &mut units {
            unit.depends_on.insert(0, CONTEXT_UNIT);
        }
        units.insert(0, context_unit());
    }
    units
}

/// Which build of an ImageBuild: its generation, and how many rebuilds of
/// that generation came before it (0 for the generation's first build,
/// `status.rebuilds` otherwise). Pods and claims carry it in their names
/// and labels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BuildId {
    pub generation: i64,
    pub rebuild: u32,
}

impl BuildId {
    /// The generation's first build.
    pub fn first(generation: i64) -> Self {
        BuildId {
            generation,
            rebuild: 0,
        }
    }

    /// `g<generation>`, and `b<rebuild>` after it for a rebuild: the part
    /// of a pod's or claim's name that says which build it belongs to.
    pub fn name_part(&self) -> String {
        if self.rebuild == 0 {
            format!("g{}", self.generation)
        } else {
            format!("g{}b{}", self.generation, self.rebuild)
        }
    }

    /// The generation label, and the rebuild label for a rebuild.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels =
            BTreeMap::from([(GENERATION_LABEL.to_string(), self.generation.to_string())]);
        if self.rebuild > 0 {
            labels.insert(REBUILD_LABEL.to_string(), self.rebuild.to_string());
        }
        labels
    }

    /// The build written on an object, `None` when its generation label is
    /// missing or malformed; a missing rebuild label is the generation's
    /// first build (as every object made before rebuilds existed).
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Option<Self> {
        let generation = labels.get(GENERATION_LABEL)?.parse().ok()?;
        let rebuild = match labels.get(REBUILD_LABEL) {
            Some(k) => k.parse().ok()?,
            None => 0,
        };
        Some(BuildId {
            generation,
            rebuild,
        })
    }
}

/// Who a pod is within its build: written onto the pod by
/// [`BuildObjects::pod`] and read back by both shells (the Kubernetes one
/// from the API, the local one from the pod it hands to podman), so that
/// the labels' names and formats live in one place.
///
/// [`BuildObjects::pod`]: super::BuildObjects::pod
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitIdentity {
    /// The ImageBuild generation the pod was made for.
    pub generation: i64,
    /// Which rebuild of that generation ([`BuildId::rebuild`]).
    pub rebuild: u32,
    /// [`Unit::n`].
    pub unit: usize,
    /// Which attempt of the unit (0 first, more after an eviction).
    pub attempt: u32,
    /// [`UnitKind::role`].
    pub role: String,
    /// [`Unit::name`]: the stage it runs (an annotation: stage names are
    /// not label values).
    pub stage: String,
}

impl UnitIdentity {
    /// The identity of `unit`'s pod for `build`, attempt `attempt`.
    pub fn of(unit: &Unit, build: BuildId, attempt: u32) -> Self {
        UnitIdentity {
            generation: build.generation,
            rebuild: build.rebuild,
            unit: unit.n,
            attempt,
            role: unit.kind.role().to_string(),
            stage: unit.name.clone(),
        }
    }

    /// The build this pod belongs to.
    pub fn build(&self) -> BuildId {
        BuildId {
            generation: self.generation,
            rebuild: self.rebuild,
        }
    }

    /// The generation (and rebuild, for a rebuild), role, unit and attempt
    /// labels.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.build().labels();
        labels.extend([
            (ROLE_LABEL.to_string(), self.role.clone()),
            (UNIT_LABEL.to_string(), self.unit.to_string()),
            (ATTEMPT_LABEL.to_string(), self.attempt.to_string()),
        ]);
        labels
    }

    /// The stage annotation.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(STAGE_ANNOTATION.to_string(), self.stage.clone())])
    }

    /// The identity written on a pod, `None` when its generation, rebuild
    /// or unit label is missing or malformed (not a pod of ours). A missing
    /// rebuild is the generation's first build, a missing attempt the
    /// first, a missing role or stage empty.
    pub fn from_metadata(meta: &ObjectMeta) -> Option<Self> {
        let labels = meta.labels.as_ref()?;
        let build = BuildId::from_labels(labels)?;
        let unit = labels.get(UNIT_LABEL)?.parse().ok()?;
        let attempt = labels
            .get(ATTEMPT_LABEL)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        let role = labels.get(ROLE_LABEL).cloned().unwrap_or_default();
        let stage = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(STAGE_ANNOTATION))
            .cloned()
            .unwrap_or_default();
        Some(UnitIdentity {
            generation: build.generation,
            rebuild: build.rebuild,
            unit,
            attempt,
            role,
            stage,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_without_generation_or_unit_has_no_identity_and_attempt_defaults_to_zero() {
        let identity = UnitIdentity::of(&context_unit(), BuildId::first(3), 0);
        let mut labels = identity.labels();
        labels.remove(ATTEMPT_LABEL);
        let meta = |labels: BTreeMap<String, String>| ObjectMeta {
            labels: Some(labels),
            ..ObjectMeta::default()
        };
        let read = UnitIdentity::from_metadata(&meta(labels.clone())).expect("identity");
        assert_eq!((read.generation, read.unit, read.attempt), (3, 0, 0));
        assert_eq!(read.stage, "");
        for required in [GENERATION_LABEL, UNIT_LABEL] {
            let mut partial = labels.clone();
            partial.remove(required);
            assert_eq!(UnitIdentity::from_metadata(&meta(partial)), None);
        }
        labels.insert(UNIT_LABEL.into(), "one".into());
        assert_eq!(UnitIdentity::from_metadata(&meta(labels)), None);
        assert_eq!(UnitIdentity::from_metadata(&ObjectMeta::default()), None);
    }

    #[test]
    fn a_rebuilds_identity_round_trips_and_no_rebuild_label_reads_as_the_first_build() {
        let build = BuildId {
            generation: 4,
            rebuild: 2,
        };
        let identity = UnitIdentity::of(&context_unit(), build, 1);
        let labels = identity.labels();
        assert_eq!(labels[REBUILD_LABEL], "2");
        let meta = ObjectMeta {
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        };
        let read = UnitIdentity::from_metadata(&meta).expect("identity");
        assert_eq!(read.build(), build);
        assert_eq!((read.unit, read.attempt), (0, 1));
        assert_eq!(build.name_part(), "g4b2");

        // The first build of a generation carries no rebuild label (pods
        // made before rebuilds existed read the same).
        let first = UnitIdentity::of(&context_unit(), BuildId::first(4), 0).labels();
        assert!(!first.contains_key(REBUILD_LABEL));
        assert_eq!(BuildId::first(4).name_part(), "g4");
        let mut unlabelled = labels.clone();
        unlabelled.remove(REBUILD_LABEL);
        assert_eq!(BuildId::from_labels(&unlabelled), Some(BuildId::first(4)));
        let mut malformed = labels;
        malformed.insert(REBUILD_LABEL.into(), "two".into());
        assert_eq!(BuildId::from_labels(&malformed), None);
    }
}
