//! The cache keys of a plan: one per chain and extraction, one for the
//! final image. A key is a SHA-256 over everything that decides what the
//! unit produces, and over nothing else: what only moves lines (a comment,
//! a blank line) or what the unit never sees (a build arg it does not
//! declare, a context file it does not copy) leaves it as it was.
//!
//! Every input is fed to the hash as a length-prefixed field, and every
//! list with its count first, so no two different inputs give the same
//! bytes. A unit that copies from another takes that unit's key, not its
//! id: the id names files, the key says what they are.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use super::FORMAT;
use super::context::ContextIndex;
use crate::dockerfile::instruction::BindMount;
use crate::dockerfile::instruction::is_remote;
use crate::dockerfile::{Instruction, RunMount, expand_word};
use crate::plan::{
    AssemblePlan, BuildPlan, Chain, ChainRole, CopySource, Export, Extraction, FinalImage, Step,
};

/// The base of an empty root: no image, so no digest.
const SCRATCH: &str = "scratch";

/// What the build context is, where keys are computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextIdentity<'a> {
    /// No context: a step that reads one cannot be keyed.
    None,
    /// Its files: a step's key covers the ones its sources may read.
    Index(&'a ContextIndex),
    /// A context whose files are not known here (a git context not yet
    /// cloned): the string (`git <commit> <subPath>`) stands for all of
    /// it, in the key of every step that reads it.
    Opaque(String),
    /// What each COPY/ADD reads, digested where the files are (the git
    /// context pod, by [`context_digests`]): [`reads_id`] of the step's
    /// source words → [`ContextIndex::digest_for`] of them. The same key
    /// as [`ContextIdentity::Index`] over the same files.
    Digests(&'a BTreeMap<String, String>),
}

/// The id of a COPY/ADD's source words in [`ContextIdentity::Digests`]:
/// short, as the map travels in a termination message.
pub fn reads_id(words: &[String]) -> String {
    let mut h = Hasher::default();
    h.list(words);
    let digest = h.finish();
    digest.trim_start_matches("sha256:")[..16].to_string()
}

/// For every COPY/ADD of `plan` that reads the context: [`reads_id`] of
/// its source words → the digest of what they read in `index`. Computed
/// where the files are, for [`ContextIdentity::Digests`].
pub fn context_digests(
    plan: &BuildPlan,
    index: &ContextIndex,
) -> Result<BTreeMap<String, String>, KeyError> {
    let chain_steps = plan
        .chains
        .iter()
        .flat_map(|c| c.stages.iter().flat_map(|s| s.steps.iter()));
    let final_steps = match &plan.final_image {
        FinalImage::Assemble(a) => a.steps.as_slice(),
        FinalImage::Runtime(_) => &[],
    };
    let mut digests = BTreeMap::new();
    for step in chain_steps.chain(final_steps) {
        if matches!(step.source, Some(CopySource::Context)) {
            let (_, words) = source_words(step, plan.escape)?;
            digests.insert(reads_id(&words), index.digest_for(&words));
        }
        for mount in &step.mounts {
            if let (RunMount::Bind(bind), None) = (&mount.mount, &mount.source) {
                let words = bind_words(bind);
                digests.insert(reads_id(&words), index.digest_for(&words));
            }
        }
    }
    Ok(digests)
}

/// What a bind mount of the context reads, as a COPY source would name it.
fn bind_words(bind: &BindMount) -> Vec<String> {
    let source = bind.source.trim_start_matches('/');
    vec![if source.is_empty() { "." } else { source }.to_string()]
}

/// A COPY/ADD's keyword and its source words as the helper will read them
/// (`$` words as written: `digest_for` takes the whole context for them).
fn source_words(step: &Step, escape: char) -> Result<(&'static str, Vec<String>), KeyError> {
    let (keyword, sources, add) = match &step.instruction {
        Instruction::Copy(args) => ("COPY", args.sources.as_slice(), false),
        Instruction::Add(args) => ("ADD", args.sources.as_slice(), true),
        // Not a copy, yet it reads the context: all of it.
        other => (other.keyword(), &[][..], false),
    };
    if add && let Some(source) = sources.iter().find(|s| is_remote(s)) {
        // The parser refuses these; a plan from elsewhere may not.
        return Err(KeyError::RemoteSource {
            line: step.line,
            url: source.clone(),
        });
    }
    let mut words: Vec<String> = sources
        .iter()
        .map(|word| {
            if word.contains('$') {
                // Expanded in the pod with values not known here:
                // `digest_for` takes the whole context for it.
                return word.clone();
            }
            // No variable: the expansion (quotes, escapes) is the
            // helper's whatever the environment.
            expand_word(word, escape, &mut |_| None).unwrap_or_else(|_| ".".to_string())
        })
        .collect();
    if add && let Some(source) = words.iter().find(|s| is_remote(s)) {
        return Err(KeyError::RemoteSource {
            line: step.line,
            url: source.clone(),
        });
    }
    if words.is_empty() {
        words.push(".".to_string());
    }
    Ok((keyword, words))
}

/// Everything keys are computed from.
#[derive(Debug, Clone)]
pub struct KeyInputs<'a> {
    pub plan: &'a BuildPlan,
    /// Image as the plan writes it (`Chain::image`, `Extraction::image`,
    /// the final base) → its manifest digest (`sha256:…`) for the plan's
    /// platform. A tag moves; the digest is what the unit runs on.
    pub digests: &'a BTreeMap<String, String>,
    pub context: ContextIdentity<'a>,
}

/// The keys of one plan, each `sha256:<hex>`.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// Chain or extraction id → its key.
    pub units: BTreeMap<String, String>,
    /// The final image's.
    pub image: String,
    /// The final image's layers and recipe: everything in [`Keys::image`]
    /// but the base's digest, so a base that moved under its tag finds
    /// them (a rebase). `None` when the final image is a runtime chain's
    /// snapshot (its files were made on the base) or has no base.
    pub layers: Option<String>,
    /// The probe's answer (the final stage's recipe): the base's digest and
    /// the final stage's steps, and not what its COPYs read (the recipe
    /// names files, it does not hold them). `None` as for `layers`.
    pub recipe: Option<String>,
}

/// Why a key could not be computed honestly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no digest for image `{image}`")]
    MissingDigest { image: String },
    #[error("line {line}: {keyword} reads the build context, but the build has none")]
    NoContext { line: usize, keyword: &'static str },
    #[error("line {line}: ADD {url}: a remote source's content is not known, so it is not cached")]
    RemoteSource { line: usize, url: String },
    #[error("`{unit}` copies from `{dependency}`, which is not in the plan")]
    UnknownUnit { unit: String, dependency: String },
    #[error("chain `{0}` copies from itself through other chains")]
    Cycle(String),
}

/// The keys of every chain, extraction and of the final image.
pub fn keys(inputs: &KeyInputs<'_>) -> Result<Keys, KeyError> {
    keys_with_format(inputs, FORMAT)
}

/// [`keys`] under another [`FORMAT`] (the tests show it is in every key).
fn keys_with_format(inputs: &KeyInputs<'_>, format: &str) -> Result<Keys, KeyError> {
    let mut keyer = Keyer {
        inputs,
        format,
        units: BTreeMap::new(),
        visiting: BTreeSet::new(),
    };
    let plan = inputs.plan;
    // Waves are an order in which every dependency comes first; units a
    // wave leaves out are keyed too (a dependency is keyed when first met).
    for id in plan.waves.iter().flatten() {
        keyer.unit(id, "the plan's waves")?;
    }
    let rest = plan.chains.iter().map(|c| &c.id);
    for id in rest.chain(plan.extractions.iter().map(|e| &e.id)) {
        keyer.unit(id, id)?;
    }
    let image = keyer.image(true)?;
    let (layers, recipe) = match &plan.final_image {
        FinalImage::Assemble(a) if a.base != SCRATCH => {
            (Some(keyer.image(false)?), Some(keyer.recipe(a)?))
        }
        _ => (None, None),
    };
    Ok(Keys {
        units: keyer.units,
        image,
        layers,
        recipe,
    })
}

struct Keyer<'a, 'i> {
    inputs: &'a KeyInputs<'i>,
    format: &'a str,
    units: BTreeMap<String, String>,
    /// Chains being keyed: met again, the plan has a cycle.
    visiting: BTreeSet<String>,
}

impl Keyer<'_, '_> {
    /// The key of chain or extraction `id`, which `by` copies from.
    fn unit(&mut self, id: &str, by: &str) -> Result<String, KeyError> {
        if let Some(key) = self.units.get(id) {
            return Ok(key.clone());
        }
        let plan = self.inputs.plan;
        let key = if let Some(chain) = plan.chain(id) {
            if !self.visiting.insert(id.to_string()) {
                return Err(KeyError::Cycle(id.to_string()));
            }
            let key = self.chain(chain);
            self.visiting.remove(id);
            key?
        } else if let Some(extraction) = plan.extraction(id) {
            self.extraction(extraction)?
        } else {
            return Err(KeyError::UnknownUnit {
                unit: by.to_string(),
                dependency: id.to_string(),
            });
        };
        self.units.insert(id.to_string(), key.clone());
        Ok(key)
    }

    /// What every key starts with: the format, the kind of unit, and the
    /// platform the build is for (`TARGETPLATFORM` and friends, and which
    /// image of an index runs).
    fn start(&self, kind: &str) -> Hasher {
        let mut h = Hasher::default();
        h.str(self.format);
        h.str(kind);
        h.str(&self.inputs.plan.platform);
        h
    }

    /// A chain: its root image by digest, its platform (`FROM
    /// --platform`), its role (a runtime chain is snapshotted, a builder
    /// exports), the escape character (how the helper reads its words),
    /// each stage's name and steps, and what it exports.
    fn chain(&mut self, chain: &Chain) -> Result<String, KeyError> {
        let mut h = self.start("chain");
        h.str(&chain.platform);
        h.str(&self.digest(&chain.image)?);
        h.str(match chain.role {
            ChainRole::Builder => "builder",
            ChainRole::Runtime => "runtime",
        });
        h.str(&self.inputs.plan.escape.to_string());
        h.count(chain.stages.len());
        for stage in &chain.stages {
            h.opt(stage.stage.name.as_deref());
            self.steps(&mut h, Some(&chain.id), &stage.steps)?;
        }
        exports(&mut h, &chain.exports, true);
        Ok(h.finish())
    }

    /// An extraction: the image by digest and the paths it exports.
    fn extraction(&mut self, extraction: &Extraction) -> Result<String, KeyError> {
        let mut h = self.start("extraction");
        h.str(&extraction.platform);
        h.str(&self.digest(&extraction.image)?);
        exports(&mut h, &extraction.exports, false);
        Ok(h.finish())
    }

    /// The final image: its base by digest (the base's name instead,
    /// without `with_base`: the layers' key), the target's name, and either
    /// the assembled stage (its steps, as a chain's) or the runtime
    /// chain's key and the stage it ends with.
    fn image(&mut self, with_base: bool) -> Result<String, KeyError> {
        let plan = self.inputs.plan;
        let (base, _) = plan.final_base();
        let mut h = if with_base {
            let mut h = self.start("image");
            h.str(&self.digest(base)?);
            h
        } else {
            let mut h = self.start("layers");
            h.str(base);
            h
        };
        h.opt(plan.target.name.as_deref());
        match &plan.final_image {
            FinalImage::Assemble(a) => {
                h.str("assemble");
                h.str(&a.platform);
                h.str(&plan.escape.to_string());
                h.opt(a.stage.name.as_deref());
                self.steps(&mut h, None, &a.steps)?;
            }
            FinalImage::Runtime(r) => {
                h.str("runtime");
                h.str(&self.unit(&r.chain, "the final image")?);
                h.opt(r.stage.name.as_deref());
            }
        }
        Ok(h.finish())
    }

    /// The final stage's recipe, as the probe makes it on the base: the
    /// base by digest, the target's name, the stage's steps as parsed with
    /// their ARG bindings, and for each COPY/ADD where its files come from
    /// by name (the unit, its paths and exports), never what they hold.
    fn recipe(&mut self, stage: &AssemblePlan) -> Result<String, KeyError> {
        let plan = self.inputs.plan;
        let mut h = self.start("recipe");
        h.str(&self.digest(&stage.base)?);
        h.opt(plan.target.name.as_deref());
        h.str(&stage.platform);
        h.str(&plan.escape.to_string());
        h.opt(stage.stage.name.as_deref());
        h.count(stage.steps.len());
        for step in &stage.steps {
            h.json(&step.instruction);
            h.json(&step.args);
            match &step.source {
                None => h.str("none"),
                Some(CopySource::Inline) => h.str("inline"),
                Some(CopySource::Context) => h.str("context"),
                Some(CopySource::Stage {
                    chain,
                    stage,
                    paths,
                    exports,
                }) => {
                    h.str("stage");
                    h.str(chain);
                    h.str(stage);
                    h.list(paths);
                    h.list(exports);
                }
                Some(CopySource::Image {
                    extraction,
                    image: _,
                    paths,
                    exports,
                }) => {
                    h.str("image");
                    h.str(extraction);
                    h.list(paths);
                    h.list(exports);
                }
            }
        }
        Ok(h.finish())
    }

    /// Steps of a stage run by chain `own` (`None`: the assembly): each
    /// instruction as parsed (no line numbers in it, so moving it changes
    /// nothing), its ARG bindings (how build args reach a key: only the
    /// ARGs the stage declares are there), what its COPY/ADD reads, and
    /// what its RUN `--mount`s read: bound context files, a stage's or an
    /// image's. Never a cache's content nor a secret's value (Docker's
    /// keys leave them out too).
    fn steps(&mut self, h: &mut Hasher, own: Option<&str>, steps: &[Step]) -> Result<(), KeyError> {
        h.count(steps.len());
        for step in steps {
            h.json(&step.instruction);
            h.json(&step.args);
            match &step.source {
                None => h.str("none"),
                Some(source) => {
                    let words = source_words(step, self.inputs.plan.escape)?.1;
                    self.source(h, own, step, source, words)?;
                }
            }
            h.count(step.mounts.len());
            for mount in &step.mounts {
                match (&mount.mount, &mount.source) {
                    (_, Some(source)) => self.source(h, own, step, source, Vec::new())?,
                    (RunMount::Bind(bind), None) => {
                        self.source(h, own, step, &CopySource::Context, bind_words(bind))?;
                    }
                    (_, None) => h.str("none"),
                }
            }
        }
        Ok(())
    }

    /// What one COPY/ADD source (or a mount's) reads: `words`, for the
    /// context.
    fn source(
        &mut self,
        h: &mut Hasher,
        own: Option<&str>,
        step: &Step,
        source: &CopySource,
        words: Vec<String>,
    ) -> Result<(), KeyError> {
        match source {
            CopySource::Inline => h.str("inline"),
            CopySource::Context => {
                h.str("context");
                self.context(h, step, words)?;
            }
            CopySource::Stage {
                chain,
                stage,
                paths,
                exports: _,
            } => {
                if own == Some(chain.as_str()) {
                    // An earlier stage of this chain: its steps are in
                    // this key already.
                    h.str("own stage");
                } else {
                    h.str("stage");
                    let by = own.unwrap_or("the final image");
                    h.str(&self.unit(chain, by)?);
                }
                h.str(stage);
                h.list(paths);
            }
            CopySource::Image {
                extraction,
                image: _,
                paths,
                exports: _,
            } => {
                h.str("image");
                let by = own.unwrap_or("the final image");
                h.str(&self.unit(extraction, by)?);
                h.list(paths);
            }
        }
        Ok(())
    }

    /// The context files a COPY/ADD (or a bind mount) may read, `words`:
    /// their digest, or the opaque context's identity.
    fn context(&self, h: &mut Hasher, step: &Step, words: Vec<String>) -> Result<(), KeyError> {
        let keyword = step.instruction.keyword();
        match &self.inputs.context {
            ContextIdentity::None => {
                return Err(KeyError::NoContext {
                    line: step.line,
                    keyword,
                });
            }
            ContextIdentity::Index(index) => {
                h.str("files");
                h.str(&index.digest_for(&words));
            }
            ContextIdentity::Opaque(identity) => {
                h.str("opaque");
                h.str(identity);
            }
            ContextIdentity::Digests(digests) => {
                let Some(digest) = digests.get(&reads_id(&words)) else {
                    return Err(KeyError::NoContext {
                        line: step.line,
                        keyword,
                    });
                };
                h.str("files");
                h.str(digest);
            }
        }
        Ok(())
    }

    /// An image's digest, or `scratch` for none.
    fn digest(&self, image: &str) -> Result<String, KeyError> {
        if image == SCRATCH {
            return Ok(SCRATCH.to_string());
        }
        self.inputs
            .digests
            .get(image)
            .cloned()
            .ok_or_else(|| KeyError::MissingDigest {
                image: image.to_string(),
            })
    }
}

/// The key of one layer of the final image made from exports only: the
/// recipe's `layer` as the probe gave it (destination through the base's
/// links, owner, mode, sources), the base's directories the layer's parents
/// take their modes from, the layers' timestamp (`SOURCE_DATE_EPOCH`), and
/// the key of the unit behind each export it reads. The same key, the same
/// layer blob: the assembly mounts it instead of making it.
pub fn layer_key(
    layer: &crate::contract::RecipeLayer,
    base_directories: &BTreeMap<String, crate::rootfs::resolve::BaseDirectoryEntry>,
    source_date_epoch: u64,
    exports: &[(&str, &str)],
) -> String {
    let mut h = Hasher::default();
    h.str(FORMAT);
    h.str("layer");
    h.json(layer);
    h.json(base_directories);
    h.str(&source_date_epoch.to_string());
    h.count(exports.len());
    for (id, unit_key) in exports {
        h.str(id);
        h.str(unit_key);
    }
    h.finish()
}

/// What a unit hands on: each export's id (what consumers and the cache
/// entry's layers are named by), the stage it is taken at, its path.
fn exports(h: &mut Hasher, exports: &[Export], with_stage: bool) {
    h.count(exports.len());
    for export in exports {
        h.str(&export.id);
        if with_stage {
            h.opt(export.stage.as_deref());
        }
        h.str(&export.path);
    }
}

/// SHA-256 over length-prefixed fields.
#[derive(Default)]
struct Hasher(Sha256);

impl Hasher {
    fn bytes(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    fn str(&mut self, text: &str) {
        self.bytes(text.as_bytes());
    }

    fn count(&mut self, n: usize) {
        self.bytes(&(n as u64).to_le_bytes());
    }

    fn opt(&mut self, text: Option<&str>) {
        match text {
            Some(text) => {
                self.bytes(b"some");
                self.str(text);
            }
            None => self.bytes(b"none"),
        }
    }

    fn list(&mut self, items: &[String]) {
        self.count(items.len());
        for item in items {
            self.str(item);
        }
    }

    /// Plan types as their JSON (serde's field order is fixed).
    fn json(&mut self, value: &impl serde::Serialize) {
        let text = serde_json::to_string(value).expect("plan types serialise");
        self.str(&text);
    }

    fn finish(self) -> String {
        format!("sha256:{}", hex::encode(self.0.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::context::INLINE_FILE_MODE;
    use crate::plan::PlanRequest;

    const DOCKERFILE: &str = "\
FROM golang:1.22 AS a
ARG VERSION=1
ENV MODE=release
COPY a.txt conf/ /src/
RUN cat /src/a.txt > /out-a

FROM alpine:3.19 AS b
COPY src/ /src/
RUN ls /src > /out-b

FROM alpine:3.19 AS c
COPY --from=a /out-a /in
RUN wc -c /in > /out-c

FROM busybox
ARG FINAL=x
COPY --from=a /out-a /a
COPY --from=b /out-b /b
COPY --from=c /out-c /c
";

    /// One build's inputs, as plain values a variation edits.
    #[derive(Clone)]
    struct Case {
        dockerfile: String,
        build_args: BTreeMap<String, String>,
        platform: Option<String>,
        digests: BTreeMap<String, String>,
        files: BTreeMap<String, String>,
        format: &'static str,
    }

    fn base() -> Case {
        let pairs = |list: &[(&str, &str)]| -> BTreeMap<String, String> {
            list.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        Case {
            dockerfile: DOCKERFILE.into(),
            build_args: BTreeMap::new(),
            platform: None,
            digests: pairs(&[
                ("golang:1.22", "sha256:aaaa"),
                ("alpine:3.19", "sha256:bbbb"),
                ("busybox", "sha256:cccc"),
            ]),
            files: pairs(&[
                (".dockerignore", "# build noise\n*.log\n"),
                ("a.txt", "for a"),
                ("conf/app.ini", "x=1"),
                ("conf/local.ini", "y=2"),
                ("src/main.go", "package main"),
                ("other.txt", "read by nobody"),
                ("build.log", "ignored"),
            ]),
            format: FORMAT,
        }
    }

    fn compute(case: &Case) -> Keys {
        let plan = PlanRequest {
            dockerfile: case.dockerfile.clone(),
            build_args: case.build_args.clone(),
            platform: case.platform.clone(),
            ..PlanRequest::default()
        }
        .plan()
        .unwrap();
        let index = ContextIndex::from_entries(
            case.files
                .iter()
                .map(|(path, text)| (path.clone(), INLINE_FILE_MODE, text.as_bytes())),
        )
        .unwrap();
        let inputs = KeyInputs {
            plan: &plan,
            digests: &case.digests,
            context: ContextIdentity::Index(&index),
        };
        keys_with_format(&inputs, case.format).unwrap()
    }

    /// Which of A, B, C, the image and its layers a variation must change.
    struct Changes {
        a: bool,
        b: bool,
        c: bool,
        image: bool,
        /// The layers' key: the image's without its base digest.
        layers: bool,
        /// The probe's: the base and the final stage's steps.
        recipe: bool,
    }

    const NOTHING: Changes = Changes {
        a: false,
        b: false,
        c: false,
        image: false,
        layers: false,
        recipe: false,
    };
    const EVERYTHING: Changes = Changes {
        a: true,
        b: true,
        c: true,
        image: true,
        layers: true,
        recipe: true,
    };
    /// A and all that copies from it.
    const A: Changes = Changes {
        a: true,
        b: false,
        c: true,
        image: true,
        layers: true,
        recipe: false,
    };

    fn set(map: &mut BTreeMap<String, String>, key: &str, value: &str) {
        map.insert(key.into(), value.into());
    }

    #[test]
    fn the_base_case_is_what_the_table_assumes() {
        let case = base();
        let keys = compute(&case);
        let units: Vec<&str> = keys.units.keys().map(String::as_str).collect();
        assert_eq!(units, ["a", "b", "c"]);
        let layers = keys
            .layers
            .as_ref()
            .expect("an assembled final image has layers");
        assert_ne!(layers, &keys.image);
        for key in keys.units.values().chain([&keys.image, layers]) {
            assert!(key.starts_with("sha256:") && key.len() == 71, "{key}");
        }
        assert_eq!(compute(&case), keys, "keys are deterministic");
        let distinct: BTreeSet<&String> = keys.units.values().collect();
        assert_eq!(distinct.len(), 3);
    }

    #[test]
    fn each_key_changes_with_what_it_depends_on_and_nothing_else() {
        type Variation = fn(&mut Case);
        let table: &[(&str, Variation, Changes)] = &[
            (
                "digest of A's base",
                |c| set(&mut c.digests, "golang:1.22", "sha256:dddd"),
                A,
            ),
            (
                "platform",
                |c| c.platform = Some("linux/arm64".into()),
                EVERYTHING,
            ),
            (
                "ENV value in A",
                |c| c.dockerfile = c.dockerfile.replace("MODE=release", "MODE=debug"),
                A,
            ),
            (
                "RUN text in A",
                |c| c.dockerfile = c.dockerfile.replace("> /out-a", ">> /out-a"),
                A,
            ),
            (
                "build arg declared in A",
                |c| set(&mut c.build_args, "VERSION", "2"),
                A,
            ),
            (
                "build arg declared only in the final stage",
                |c| set(&mut c.build_args, "FINAL", "y"),
                Changes {
                    image: true,
                    layers: true,
                    recipe: true,
                    ..NOTHING
                },
            ),
            (
                "build arg declared nowhere",
                |c| set(&mut c.build_args, "NOBODY", "1"),
                NOTHING,
            ),
            (
                "context file A reads",
                |c| set(&mut c.files, "a.txt", "for a, changed"),
                A,
            ),
            (
                "context file in a directory A reads",
                |c| set(&mut c.files, "conf/new.ini", "z=3"),
                A,
            ),
            (
                "context file B reads",
                |c| set(&mut c.files, "src/main.go", "package main // changed"),
                Changes {
                    b: true,
                    image: true,
                    layers: true,
                    ..NOTHING
                },
            ),
            (
                "context file read by nobody",
                |c| set(&mut c.files, "other.txt", "still nobody's"),
                NOTHING,
            ),
            (
                "ignored context file",
                |c| set(&mut c.files, "build.log", "more noise"),
                NOTHING,
            ),
            (
                ".dockerignore excludes a file A copies",
                |c| set(&mut c.files, ".dockerignore", "*.log\nconf/local.ini\n"),
                A,
            ),
            (
                ".dockerignore comment",
                |c| set(&mut c.files, ".dockerignore", "# other words\n*.log\n"),
                NOTHING,
            ),
            (
                "blank line and comment at the top",
                |c| c.dockerfile = format!("\n# a comment\n\n{}", c.dockerfile),
                NOTHING,
            ),
            (
                "comment inside A",
                |c| c.dockerfile = c.dockerfile.replace("ENV MODE", "# why\nENV MODE"),
                NOTHING,
            ),
            (
                "digest of the final base",
                |c| set(&mut c.digests, "busybox", "sha256:eeee"),
                Changes {
                    image: true,
                    recipe: true,
                    ..NOTHING
                },
            ),
            (
                "path copied from A into C",
                |c| c.dockerfile = c.dockerfile.replace("/out-a /in", "/out-a /in2"),
                Changes {
                    c: true,
                    image: true,
                    layers: true,
                    ..NOTHING
                },
            ),
            (
                "destination of a COPY in the final stage",
                |c| c.dockerfile = c.dockerfile.replace("/out-c /c", "/out-c /srv/c"),
                Changes {
                    image: true,
                    layers: true,
                    recipe: true,
                    ..NOTHING
                },
            ),
            ("format", |c| c.format = "slimforge-cache/test", EVERYTHING),
        ];
        let before = compute(&base());
        let mut failures = Vec::new();
        for (name, vary, want) in table {
            let mut case = base();
            vary(&mut case);
            let after = compute(&case);
            let changed = |unit: &str| before.units[unit] != after.units[unit];
            let got = [
                changed("a"),
                changed("b"),
                changed("c"),
                before.image != after.image,
                before.layers != after.layers,
                before.recipe != after.recipe,
            ];
            let wanted = [want.a, want.b, want.c, want.image, want.layers, want.recipe];
            if got != wanted {
                failures.push(format!(
                    "{name}: changed [a, b, c, image, layers, recipe] = {got:?}, want {wanted:?}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// A plan of `dockerfile` with the base case's digests and `context`.
    fn keys_of(dockerfile: &str, context: ContextIdentity<'_>) -> Result<Keys, KeyError> {
        let plan = PlanRequest {
            dockerfile: dockerfile.into(),
            ..PlanRequest::default()
        }
        .plan()
        .unwrap();
        keys(&KeyInputs {
            plan: &plan,
            digests: &base().digests,
            context,
        })
    }

    fn index(files: &[(&str, &str)]) -> ContextIndex {
        ContextIndex::from_entries(
            files
                .iter()
                .map(|(path, text)| (path.to_string(), INLINE_FILE_MODE, text.as_bytes())),
        )
        .unwrap()
    }

    #[test]
    fn digests_made_where_the_files_are_key_as_the_files_do() {
        let plan = PlanRequest {
            dockerfile: DOCKERFILE.into(),
            ..PlanRequest::default()
        }
        .plan()
        .unwrap();
        let files = base().files;
        let pairs: Vec<(&str, &str)> = files
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let context = index(&pairs);
        let digests = context_digests(&plan, &context).unwrap();
        // One per distinct COPY that reads the context: a's and b's.
        assert_eq!(digests.len(), 2, "{digests:?}");
        let by_index = keys_of(DOCKERFILE, ContextIdentity::Index(&context)).unwrap();
        let by_digests = keys_of(DOCKERFILE, ContextIdentity::Digests(&digests)).unwrap();
        assert_eq!(by_index, by_digests);

        // A file a reads changes: only a (and c, which copies from a) move.
        let mut changed: Vec<(&str, &str)> = pairs.clone();
        changed.retain(|(k, _)| *k != "a.txt");
        changed.push(("a.txt", "changed"));
        let digests = context_digests(&plan, &index(&changed)).unwrap();
        let after = keys_of(DOCKERFILE, ContextIdentity::Digests(&digests)).unwrap();
        assert_ne!(after.units["a"], by_index.units["a"]);
        assert_eq!(after.units["b"], by_index.units["b"]);

        // A COPY the digests do not cover can't be keyed.
        let err = keys_of(DOCKERFILE, ContextIdentity::Digests(&BTreeMap::new())).unwrap_err();
        assert!(matches!(err, KeyError::NoContext { .. }), "{err}");
    }

    #[test]
    fn run_mounts_key_what_they_read_and_never_a_cache_or_a_secret() {
        let mut case = base();
        case.dockerfile = case.dockerfile.replace(
            "RUN ls /src > /out-b",
            "RUN --mount=type=bind,source=other.txt,target=/o --mount=type=cache,target=/c \\\n  --mount=type=secret,id=t ls /src > /out-b",
        );
        let before = compute(&case);
        // A bound context file is read: b moves (and the image), a and c not.
        let mut changed = case.clone();
        set(&mut changed.files, "other.txt", "changed");
        let after = compute(&changed);
        assert_ne!(after.units["b"], before.units["b"]);
        assert_ne!(after.image, before.image);
        assert_eq!(after.units["a"], before.units["a"]);
        assert_eq!(after.units["c"], before.units["c"]);
        // Where the files are (a git context), the digests key alike.
        let plan = PlanRequest {
            dockerfile: case.dockerfile.clone(),
            ..PlanRequest::default()
        }
        .plan()
        .unwrap();
        let pairs: Vec<(&str, &str)> = case
            .files
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let digests = context_digests(&plan, &index(&pairs)).unwrap();
        assert_eq!(
            digests.len(),
            3,
            "a's COPY, b's COPY, b's bind: {digests:?}"
        );
        assert_eq!(
            keys_of(&case.dockerfile, ContextIdentity::Digests(&digests)).unwrap(),
            keys_of(&case.dockerfile, ContextIdentity::Index(&index(&pairs))).unwrap()
        );

        // A bind from stage a: b now moves with a.
        let mut from_a = base();
        from_a.dockerfile = from_a.dockerfile.replace(
            "RUN ls /src > /out-b",
            "RUN --mount=type=bind,from=a,source=/out-a,target=/x ls /src > /out-b",
        );
        let before = compute(&from_a);
        let mut changed = from_a.clone();
        changed.dockerfile = changed.dockerfile.replace("> /out-a", ">> /out-a");
        let after = compute(&changed);
        assert_ne!(after.units["b"], before.units["b"]);
    }

    #[test]
    fn an_image_without_a_digest_is_named() {
        let err = keys_of(
            "FROM debian:12 AS d\nRUN true\nFROM busybox\nCOPY --from=d /x /x\n",
            ContextIdentity::None,
        )
        .unwrap_err();
        assert_eq!(
            err,
            KeyError::MissingDigest {
                image: "debian:12".into()
            }
        );
        assert!(err.to_string().contains("debian:12"));
        // `scratch` needs none.
        keys_of("FROM scratch\nENV A=1\n", ContextIdentity::None).unwrap();
    }

    #[test]
    fn reading_a_context_that_is_not_there_is_an_error() {
        let err = keys_of("FROM busybox\nCOPY a /a\n", ContextIdentity::None).unwrap_err();
        assert_eq!(
            err,
            KeyError::NoContext {
                line: 2,
                keyword: "COPY"
            }
        );
    }

    #[test]
    fn an_opaque_context_is_in_every_key_that_reads_it() {
        let dockerfile = "FROM alpine:3.19 AS a\nCOPY x /x\nRUN true\nFROM alpine:3.19 AS b\nRUN true\nFROM busybox\nCOPY --from=a /x /x\nCOPY --from=b /etc /etc\n";
        let one = keys_of(dockerfile, ContextIdentity::Opaque("git abc sub".into())).unwrap();
        let two = keys_of(dockerfile, ContextIdentity::Opaque("git def sub".into())).unwrap();
        assert_ne!(one.units["a"], two.units["a"]);
        assert_eq!(one.units["b"], two.units["b"]);
        assert_ne!(one.image, two.image);
    }

    #[test]
    fn source_words_are_matched_as_the_helper_expands_them() {
        let before = index(&[("a.txt", "1"), ("other", "1")]);
        let after = index(&[("a.txt", "2"), ("other", "1")]);
        let quoted = "FROM busybox\nCOPY \"a.txt\" /f\n";
        let image = |context| {
            keys_of(quoted, ContextIdentity::Index(context))
                .unwrap()
                .image
        };
        assert_ne!(image(&before), image(&after));
        // A variable's value is not known here: every file counts.
        let variable = "FROM busybox\nARG NAME=other\nCOPY ${NAME} /f\n";
        let image = |context| {
            keys_of(variable, ContextIdentity::Index(context))
                .unwrap()
                .image
        };
        assert_ne!(image(&before), image(&after));
    }

    #[test]
    fn remote_adds_are_refused_by_the_parser_and_not_keyed() {
        let refused = PlanRequest {
            dockerfile: "FROM busybox\nADD https://example.com/x.tar /x\n".into(),
            ..PlanRequest::default()
        }
        .plan();
        assert!(refused.is_err());
        // A plan from elsewhere that has one anyway.
        let mut plan = PlanRequest {
            dockerfile: "FROM busybox\nADD x.tar /x\n".into(),
            ..PlanRequest::default()
        }
        .plan()
        .unwrap();
        let FinalImage::Assemble(assemble) = &mut plan.final_image else {
            panic!("an assembly: {plan:?}");
        };
        let Instruction::Add(args) = &mut assemble.steps[0].instruction else {
            panic!("an ADD: {:?}", assemble.steps[0]);
        };
        args.sources = vec!["https://example.com/x.tar".into()];
        let context = index(&[("x.tar", "")]);
        let err = keys(&KeyInputs {
            plan: &plan,
            digests: &base().digests,
            context: ContextIdentity::Index(&context),
        })
        .unwrap_err();
        assert_eq!(
            err,
            KeyError::RemoteSource {
                line: 2,
                url: "https://example.com/x.tar".into()
            }
        );
    }

    #[test]
    fn extractions_and_runtime_chains_are_keyed() {
        let dockerfile = "FROM alpine:3.19\nCOPY --from=golang:1.22 /usr/local/go/bin/go /bin/go\nRUN go version\n";
        let mut digests = base().digests;
        let compute = |digests: &BTreeMap<String, String>| {
            let plan = PlanRequest {
                dockerfile: dockerfile.into(),
                ..PlanRequest::default()
            }
            .plan()
            .unwrap();
            assert!(matches!(plan.final_image, FinalImage::Runtime(_)));
            keys(&KeyInputs {
                plan: &plan,
                digests,
                context: ContextIdentity::None,
            })
            .unwrap()
        };
        let before = compute(&digests);
        assert_eq!(before.units.len(), 2, "{:?}", before.units);
        assert_eq!(
            before.layers, None,
            "a snapshot is made on its base: no rebase"
        );
        assert_eq!(before.recipe, None, "nor a probe");
        digests.insert("golang:1.22".into(), "sha256:ffff".into());
        let after = compute(&digests);
        for (id, key) in &before.units {
            assert_ne!(key, &after.units[id], "{id}");
        }
        assert_ne!(before.image, after.image);
    }
}
