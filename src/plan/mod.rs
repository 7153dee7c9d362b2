//! The BuildPlan: what every later step (controller, in-pod helper, local
//! runner) reads. Plain data, executor-neutral: chains of stages that run as
//! one pod each, the files each chain exports for later ones, extraction
//! steps for `COPY --from=<image>`, and the recipe of the final image.
//!
//! Words are kept as written (`ENV PATH=/x:$PATH`): the helper expands them
//! with [`crate::dockerfile::expand_word`] and the image's real environment.
//! What the planner had to know itself (base images, `--from`, the source
//! paths of copies between stages) is expanded here; a value that depended
//! on the image's environment is an error naming its line.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::api::ImageBuildSpec;
use crate::contract::PLAN_ENV;
pub use crate::dockerfile::eval::{ArgBinding, ArgOrigin};
use crate::dockerfile::{DockerfileError, Instruction, RunMount};
use crate::schema::{DockerfileSource, DockerfileSourceError, dockerfile_source};

pub mod planner;

pub use planner::build_plan;

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Dockerfile(#[from] DockerfileError),
    #[error("unknown target stage `{target}` (stages: {stages})")]
    UnknownTarget { target: String, stages: String },
    #[error("platform `{platform}`: {reason}")]
    Platform { platform: String, reason: String },
    #[error("--build-arg `{0}`: expected NAME=value")]
    BuildArg(String),
    #[error(
        "chains {first} and {second} each need the other's files (lines {first_line} and {second_line}); slimforge runs a chain after the chains it copies from"
    )]
    ChainCycle {
        first: String,
        first_line: usize,
        second: String,
        second_line: usize,
    },
    #[error("{0}")]
    Manifest(String),
}

impl PlanError {
    /// The Dockerfile line the error is about, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Dockerfile(e) => e.line(),
            Self::ChainCycle { first_line, .. } => Some(*first_line),
            _ => None,
        }
    }
}

/// What to plan: a Dockerfile and the build's parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanRequest {
    pub dockerfile: String,
    pub build_args: BTreeMap<String, String>,
    /// Stage name to stop at; `None` = the last stage.
    pub target: Option<String>,
    /// `os/arch[/variant]`; `None` = linux/amd64.
    pub platform: Option<String>,
}

impl PlanRequest {
    /// A request from a file's text: an ImageBuild manifest
    /// (`kind: ImageBuild` with an inline `spec.dockerfile`), or else a
    /// Dockerfile.
    pub fn from_text(text: &str) -> Result<Self, PlanError> {
        match image_build(text) {
            Some(document) => {
                let ib = crate::schema::parse_image_build(document)
                    .map_err(|e| PlanError::Manifest(e.to_string()))?;
                Self::from_image_build_spec(&ib.spec)
            }
            None => Ok(Self {
                dockerfile: text.to_string(),
                ..Self::default()
            }),
        }
    }

    /// The request an ImageBuild makes; its Dockerfile must be inline, as
    /// there is no context to read a `dockerfilePath` from.
    fn from_image_build_spec(spec: &ImageBuildSpec) -> Result<Self, PlanError> {
        let dockerfile = match dockerfile_source(spec) {
            Ok(DockerfileSource::Inline(text)) => text.to_string(),
            Ok(DockerfileSource::Path(path)) => {
                return Err(PlanError::Manifest(format!(
                    "ImageBuild spec.dockerfilePath ({path}) needs the build context; `slimforge plan` takes an inline spec.dockerfile, or the Dockerfile itself"
                )));
            }
            Err(DockerfileSourceError::Neither) => {
                return Err(PlanError::Manifest(
                    "ImageBuild has neither spec.dockerfile nor spec.dockerfilePath".into(),
                ));
            }
            Err(both @ DockerfileSourceError::Both) => {
                return Err(PlanError::Manifest(format!("ImageBuild spec: {both}")));
            }
        };
        let non_empty = |text: &Option<String>| text.clone().filter(|t| !t.is_empty());
        Ok(Self {
            dockerfile,
            build_args: spec.build_args.clone(),
            target: non_empty(&spec.target),
            platform: non_empty(&spec.platform),
        })
    }

    /// Adds `NAME=value` build args (they win over the manifest's).
    pub fn add_build_args<'a>(
        &mut self,
        args: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), PlanError> {
        for arg in args {
            let Some((name, value)) = arg.split_once('=').filter(|(n, _)| !n.is_empty()) else {
                return Err(PlanError::BuildArg(arg.to_string()));
            };
            self.build_args.insert(name.to_string(), value.to_string());
        }
        Ok(())
    }

    pub fn plan(&self) -> Result<BuildPlan, PlanError> {
        build_plan(self)
    }
}

/// The first YAML document that is an ImageBuild.
fn image_build(text: &str) -> Option<serde_yaml::Value> {
    for document in serde_yaml::Deserializer::from_str(text) {
        let Ok(value) = serde_yaml::Value::deserialize(document) else {
            return None;
        };
        let is_image_build = value.get("kind").and_then(|k| k.as_str()) == Some("ImageBuild")
            && value
                .get("apiVersion")
                .and_then(|v| v.as_str())
                .is_some_and(|v| v.starts_with("slimforge.dev/"));
        if is_image_build {
            return Some(value);
        }
    }
    None
}

/// Stages, chains and the final image of one build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildPlan {
    /// `os/arch[/variant]` the image is built for; every pod runs on it.
    pub platform: String,
    /// The Dockerfile's escape character: expansion needs it.
    pub escape: char,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syntax: Option<String>,
    /// Build args as given.
    #[serde(default)]
    pub build_args: BTreeMap<String, String>,
    /// The global scope: ARGs before the first FROM with their values
    /// (`None`: declared without one), and the automatic platform args.
    /// A stage's bare `ARG NAME` takes its value from here.
    #[serde(default)]
    pub global_args: BTreeMap<String, Option<String>>,
    /// The stage the build stops at.
    pub target: StageRef,
    /// One pod each, in the chain's root image.
    pub chains: Vec<Chain>,
    /// One small pod each, in an image named by `COPY --from=<image>`.
    #[serde(default)]
    pub extractions: Vec<Extraction>,
    /// Chain and extraction ids by when they can start: each wave runs in
    /// parallel once the waves before it are done. Assembly comes last.
    pub waves: Vec<Vec<String>>,
    pub final_image: FinalImage,
    #[serde(default)]
    pub warnings: Vec<Warning>,
}

/// A stage: its index, its name if it has one, its FROM line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageRef {
    pub index: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub line: usize,
}

impl Chain {
    /// Every RUN `--mount` of the chain, in order.
    pub fn mounts(&self) -> impl Iterator<Item = &RunMount> {
        self.stages
            .iter()
            .flat_map(|s| &s.steps)
            .flat_map(|s| &s.mounts)
            .map(|m| &m.mount)
    }

    /// The cache ids its RUNs mount, sorted, once each.
    pub fn cache_ids(&self) -> Vec<String> {
        let ids: std::collections::BTreeSet<&str> = self
            .mounts()
            .filter_map(|m| match m {
                RunMount::Cache(c) => Some(c.id.as_str()),
                _ => None,
            })
            .collect();
        ids.into_iter().map(str::to_string).collect()
    }

    /// The secret ids its RUNs mount, sorted, once each.
    pub fn secret_ids(&self) -> Vec<String> {
        let ids: std::collections::BTreeSet<&str> = self
            .mounts()
            .filter_map(|m| match m {
                RunMount::Secret(s) => Some(s.id.as_str()),
                _ => None,
            })
            .collect();
        ids.into_iter().map(str::to_string).collect()
    }

    /// Some RUN mounts a tmpfs or a secret: the pod has a memory volume.
    pub fn needs_memory(&self) -> bool {
        self.mounts()
            .any(|m| matches!(m, RunMount::Tmpfs(_) | RunMount::Secret(_)))
    }
}

impl StageRef {
    /// The name, or the index for an unnamed stage (as `--from=N` names it).
    pub fn id(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.index.to_string())
    }
}

/// Stages that build on each other (`FROM builder AS test`): one pod, in
/// the first stage's base image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Chain {
    /// Unique in the plan: the id of the chain's last stage.
    pub id: String,
    /// The root image, expanded (`scratch` for an empty root).
    pub image: String,
    pub platform: String,
    pub role: ChainRole,
    pub stages: Vec<ChainStage>,
    /// Chains and extractions whose exports this chain copies.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Some COPY/ADD reads the build context.
    pub needs_context: bool,
    /// Exactly what later stages copy from this chain.
    #[serde(default)]
    pub exports: Vec<Export>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ChainRole {
    /// Runs, exports, and is thrown away.
    Builder,
    /// The final image: its root image plus a snapshot of every change.
    Runtime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainStage {
    #[serde(flatten)]
    pub stage: StageRef,
    /// The FROM instruction as written.
    pub from: String,
    /// Other chains that also run this stage: a shared stage is replayed in
    /// each chain built on it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replayed_in: Vec<String>,
    pub steps: Vec<Step>,
}

/// One instruction, as written, with what the planner resolved for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub line: usize,
    /// The instruction's lines as written.
    pub text: String,
    pub instruction: Instruction,
    /// COPY/ADD: where the files come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<CopySource>,
    /// ARG: where each value comes from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<ArgBinding>,
    /// RUN: its `--mount`s as the planner expanded them, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<PlannedMount>,
}

/// A RUN's `--mount`, expanded with the Dockerfile's variables (its
/// target is made absolute in the pod, against the WORKDIR there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedMount {
    pub mount: RunMount,
    /// `from=` a stage or an image: the export holding its `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<CopySource>,
}

/// Where a COPY or ADD takes its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum CopySource {
    /// The build context.
    Context,
    /// Only heredocs: nothing to fetch.
    Inline,
    /// Another stage's files: the exports of `chain` taken at the end of
    /// `stage` (the consumer's own chain when the stage is its ancestor).
    Stage {
        chain: String,
        stage: String,
        /// The source paths, expanded, in order.
        paths: Vec<String>,
        /// The export ids, one per path.
        exports: Vec<String>,
    },
    /// An image that is not a stage, through an extraction step.
    Image {
        extraction: String,
        image: String,
        paths: Vec<String>,
        exports: Vec<String>,
    },
}

/// Files a chain or extraction hands to later stages, as one archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Export {
    /// Unique in the plan; names the archive on the workspace.
    pub id: String,
    /// Taken at the end of this stage (chains only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// The source path as written, expanded (may be a glob; relative paths
    /// are from `/`).
    pub path: String,
    pub consumers: Vec<Consumer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Consumer {
    pub stage: String,
    pub line: usize,
}

/// `COPY --from=<image>`: a pod in that image exporting the paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Extraction {
    pub id: String,
    pub image: String,
    pub platform: String,
    pub exports: Vec<Export>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum FinalImage {
    /// Layers and config changes on a base, without running anything.
    Assemble(AssemblePlan),
    /// The chain's root image plus a snapshot of all its changes.
    Runtime(RuntimePlan),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssemblePlan {
    pub stage: StageRef,
    /// The FROM instruction as written.
    pub from: String,
    /// The base image, expanded, or `scratch`.
    pub base: String,
    pub platform: String,
    /// In Dockerfile order: COPY/ADD are layers, WORKDIR may create a
    /// directory, ARG feeds later expansions, the rest edit the config.
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimePlan {
    pub stage: StageRef,
    /// The runtime chain.
    pub chain: String,
    /// Its root image: the snapshot is taken against it.
    pub base: String,
    /// Why a pod must run (`RUN on line 5`, `FROM builder`).
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Warning {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    pub message: String,
}

/// A plan that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PlanLoadError {
    #[error("reading plan {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("plan {path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("no plan: give --plan FILE or set {PLAN_ENV}")]
    Missing,
}

impl BuildPlan {
    /// The final image's base and the line of its FROM.
    pub fn final_base(&self) -> (&str, usize) {
        match &self.final_image {
            FinalImage::Assemble(a) => (&a.base, a.stage.line),
            FinalImage::Runtime(r) => (&r.base, r.stage.line),
        }
    }

    /// The plan from `path`, or else (no path) from the `SLIMFORGE_PLAN`
    /// environment variable.
    pub fn load(path: Option<&std::path::Path>) -> Result<Self, PlanLoadError> {
        let (origin, bytes) = match path {
            Some(path) => (
                path.display().to_string(),
                std::fs::read(path).map_err(|source| PlanLoadError::Read {
                    path: path.display().to_string(),
                    source,
                })?,
            ),
            None => (
                format!("${PLAN_ENV}"),
                std::env::var_os(PLAN_ENV)
                    .ok_or(PlanLoadError::Missing)?
                    .into_encoded_bytes(),
            ),
        };
        serde_json::from_slice(&bytes).map_err(|source| PlanLoadError::Parse {
            path: origin,
            source,
        })
    }

    pub fn chain(&self, id: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.id == id)
    }

    pub fn extraction(&self, id: &str) -> Option<&Extraction> {
        self.extractions.iter().find(|e| e.id == id)
    }

    /// The plan for a person: chains, what they export, what runs in
    /// parallel, and what the final image is made of.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = self.write_text(&mut out);
        out
    }

    fn write_text(&self, out: &mut String) -> std::fmt::Result {
        writeln!(
            out,
            "Build plan for {} — target stage {} (line {})",
            self.platform,
            self.target.id(),
            self.target.line
        )?;
        writeln!(out)?;
        if self.chains.is_empty() {
            writeln!(out, "Chains: none (nothing runs before assembly)")?;
        } else {
            writeln!(out, "Chains (one pod each, in the chain's base image):")?;
        }
        for chain in &self.chains {
            let role = match chain.role {
                ChainRole::Builder => "builder",
                ChainRole::Runtime => "runtime, snapshotted for the final image",
            };
            writeln!(out, "  chain {} [{role}] on {}", chain.id, chain.image)?;
            let stages: Vec<String> = chain
                .stages
                .iter()
                .map(|s| {
                    let mut text = format!("{} (line {})", s.stage.id(), s.stage.line);
                    if !s.replayed_in.is_empty() {
                        let _ = write!(text, " — also replayed in {}", s.replayed_in.join(", "));
                    }
                    text
                })
                .collect();
            writeln!(out, "    stages:     {}", stages.join(" → "))?;
            if !chain.depends_on.is_empty() {
                writeln!(out, "    depends on: {}", chain.depends_on.join(", "))?;
            }
            write_exports(out, &chain.exports)?;
        }
        if !self.extractions.is_empty() {
            writeln!(out)?;
            writeln!(
                out,
                "Extractions (COPY --from an image that is not a stage):"
            )?;
            for extraction in &self.extractions {
                writeln!(out, "  {} from image {}", extraction.id, extraction.image)?;
                write_exports(out, &extraction.exports)?;
            }
        }
        writeln!(out)?;
        writeln!(out, "Waves (everything in a wave runs in parallel):")?;
        for (i, wave) in self.waves.iter().enumerate() {
            let note = if wave.len() > 1 { "   (parallel)" } else { "" };
            writeln!(out, "  {}. {}{note}", i + 1, wave.join(", "))?;
        }
        let (base, _) = self.final_base();
        if base != "scratch" {
            writeln!(
                out,
                "  (the probe pod runs in wave 1 too: it reads the users and environment of the final base {base})"
            )?;
        }
        match &self.final_image {
            FinalImage::Assemble(_) => writeln!(out, "  {}. assemble", self.waves.len() + 1)?,
            FinalImage::Runtime(runtime) => writeln!(
                out,
                "  {}. assemble (base + the snapshot of chain {})",
                self.waves.len() + 1,
                runtime.chain
            )?,
        }
        writeln!(out)?;
        match &self.final_image {
            FinalImage::Assemble(assemble) => {
                writeln!(
                    out,
                    "Final image: assembled on {} (stage {}, line {}), nothing runs",
                    assemble.base,
                    assemble.stage.id(),
                    assemble.stage.line
                )?;
                for step in &assemble.steps {
                    let what = match (&step.instruction, &step.source) {
                        (Instruction::Copy(_) | Instruction::Add(_), Some(source)) => {
                            format!("layer  {}", source_text(source))
                        }
                        (Instruction::Arg(_), _) => "arg   ".to_string(),
                        (Instruction::Workdir(_), _) => "workdir".to_string(),
                        _ => "config".to_string(),
                    };
                    writeln!(
                        out,
                        "  line {:<4} {what}: {}",
                        step.line,
                        one_line(&step.text)
                    )?;
                }
            }
            FinalImage::Runtime(runtime) => writeln!(
                out,
                "Final image: {} + one snapshot layer of chain {} (stage {}, line {}): {}",
                runtime.base,
                runtime.chain,
                runtime.stage.id(),
                runtime.stage.line,
                runtime.reason
            )?,
        }
        if !self.warnings.is_empty() {
            writeln!(out)?;
            writeln!(out, "Warnings:")?;
            for warning in &self.warnings {
                match warning.line {
                    Some(line) => writeln!(out, "  line {line}: {}", warning.message)?,
                    None => writeln!(out, "  {}", warning.message)?,
                }
            }
        }
        Ok(())
    }
}

fn write_exports(out: &mut String, exports: &[Export]) -> std::fmt::Result {
    if exports.is_empty() {
        return writeln!(out, "    exports:    nothing");
    }
    writeln!(out, "    exports:")?;
    for export in exports {
        let consumers: Vec<String> = export
            .consumers
            .iter()
            .map(|c| format!("stage {} line {}", c.stage, c.line))
            .collect();
        let at = export
            .stage
            .as_ref()
            .map(|s| format!(" (end of stage {s})"))
            .unwrap_or_default();
        writeln!(out, "      {}{at} → {}", export.path, consumers.join(", "))?;
    }
    Ok(())
}

fn source_text(source: &CopySource) -> String {
    match source {
        CopySource::Context => "from the context".into(),
        CopySource::Inline => "inline (heredoc)".into(),
        CopySource::Stage { chain, stage, .. } => format!("from stage {stage} (chain {chain})"),
        CopySource::Image {
            extraction, image, ..
        } => format!("from image {image} ({extraction})"),
    }
}

fn one_line(text: &str) -> String {
    let joined: Vec<&str> = text.lines().map(str::trim).collect();
    let line = joined.join(" ");
    if line.chars().count() > 100 {
        let cut: String = line.chars().take(97).collect();
        format!("{cut}...")
    } else {
        line
    }
}

/// Parses a Dockerfile and plans it in one go.
pub fn plan_dockerfile(
    text: &str,
    build_args: &BTreeMap<String, String>,
    target: Option<&str>,
    platform: Option<&str>,
) -> Result<BuildPlan, PlanError> {
    let request = PlanRequest {
        dockerfile: text.to_string(),
        build_args: build_args.clone(),
        target: target.map(str::to_string),
        platform: platform.map(str::to_string),
    };
    build_plan(&request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_is_read_for_its_dockerfile_and_parameters() {
        let manifest = "apiVersion: slimforge.dev/v1alpha1\nkind: ImageBuild\nmetadata: {name: x}\nspec:\n  context: {inline: {}}\n  output: {image: r.example/x:1}\n  dockerfile: |\n    FROM alpine\n  buildArgs: {GO_VERSION: '1.22', DEBUG: 'true'}\n  target: ''\n  platform: linux/arm64\n";
        let request = PlanRequest::from_text(manifest).unwrap();
        assert_eq!(request.dockerfile, "FROM alpine\n");
        assert_eq!(request.build_args["GO_VERSION"], "1.22");
        assert_eq!(request.build_args["DEBUG"], "true");
        assert_eq!(request.target, None);
        assert_eq!(request.platform.as_deref(), Some("linux/arm64"));
    }

    #[test]
    fn a_dockerfile_path_needs_the_context() {
        let manifest = "apiVersion: slimforge.dev/v1alpha1\nkind: ImageBuild\nspec:\n  context: {git: {url: 'https://git.example/x'}}\n  output: {image: r.example/x:1}\n  dockerfilePath: build/Dockerfile\n";
        let err = PlanRequest::from_text(manifest).unwrap_err();
        assert!(err.to_string().contains("needs the build context"), "{err}");
    }

    /// The CRD's rule, as the controller and the local build apply it
    /// (`slimforge plan` once took the inline text and ignored the path).
    #[test]
    fn a_manifest_gives_exactly_one_dockerfile() {
        let manifest = "apiVersion: slimforge.dev/v1alpha1\nkind: ImageBuild\nspec:\n  context: {inline: {}}\n  output: {image: r.example/x:1}\n";
        let neither = PlanRequest::from_text(manifest).unwrap_err().to_string();
        assert_eq!(
            neither,
            "ImageBuild has neither spec.dockerfile nor spec.dockerfilePath"
        );
        let both = format!("{manifest}  dockerfile: FROM alpine\n  dockerfilePath: Dockerfile\n");
        let both = PlanRequest::from_text(&both).unwrap_err().to_string();
        assert_eq!(
            both,
            "ImageBuild spec: give exactly one of dockerfile and dockerfilePath"
        );
    }

    /// As the API server reads them: `GO_VERSION: 1.22` is a number, which
    /// spec.buildArgs does not take.
    #[test]
    fn a_manifest_is_read_strictly() {
        let manifest = "apiVersion: slimforge.dev/v1alpha1\nkind: ImageBuild\nspec:\n  context: {inline: {}}\n  output: {image: r.example/x:1}\n  dockerfile: FROM alpine\n  buildArgs: {GO_VERSION: 1.22}\n  taget: x\n";
        let err = PlanRequest::from_text(manifest).unwrap_err().to_string();
        assert_eq!(
            err,
            "ImageBuild is invalid: spec.buildArgs.GO_VERSION: must be of type string, not number; spec.taget: unknown field"
        );
    }

    #[test]
    fn a_dockerfile_is_not_a_manifest() {
        let request = PlanRequest::from_text("FROM alpine:3.19\nkind: ImageBuild\n").unwrap();
        assert!(request.dockerfile.starts_with("FROM"));
    }

    #[test]
    fn build_args_need_a_name() {
        let mut request = PlanRequest::default();
        assert!(request.add_build_args(["A=1", "B="]).is_ok());
        assert_eq!(request.build_args["B"], "");
        assert!(request.add_build_args(["=1"]).is_err());
        assert!(request.add_build_args(["A"]).is_err());
    }
}
