//! What the core asks a shell to find out before a build starts pods, and
//! the answer: every unit's key and the entries the cache has for them.
//!
//! The core stays pure: it hands out a [`LookupRequest`] when it has a plan
//! and no [`CacheView`] yet; the shell resolves the images by digest, reads
//! the context, computes the keys and asks the registry, then passes the
//! core the view. A view is asked for once per build: the shells keep it.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ConfigMap;
use oci_client::Reference;

use super::context::ContextIndex;
use super::entry::{self, ChainEntry, ImageEntry, LayersEntry, RecipeEntry};
use super::key::{self, ContextIdentity, KeyInputs, Keys};
use crate::api::ConfigMapContext;
use crate::oci::Platform;
use crate::oci::registry::{self, Registry, RegistryOptions};
use crate::plan::{BuildPlan, FinalImage};

/// What to look up for one build.
#[derive(Debug, Clone, PartialEq)]
pub struct LookupRequest {
    pub plan: BuildPlan,
    pub context: ContextRef,
    /// The output image: its repository names the default cache repository,
    /// and its tag is checked against a cached image.
    pub output: String,
    pub additional_tags: Vec<String>,
    /// `spec.cache.repository`.
    pub repository: Option<String>,
    pub insecure: bool,
    /// Secrets whose dockerconfigjson the lookup reads with: the push
    /// secret (the cache repository) and the pull secrets (the bases).
    pub secrets: Vec<String>,
    /// Keys only: every chain runs (`spec.cache.noCache`).
    pub no_cache: bool,
}

/// The build context as far as the keys need it.
#[derive(Debug, Clone, PartialEq)]
pub enum ContextRef {
    /// No COPY reads a context.
    None,
    Inline(BTreeMap<String, String>),
    /// Read by the shell (the ConfigMap in the build's namespace).
    ConfigMap(ConfigMapContext),
    /// Stands for the whole context, e.g. `git <commit> <subPath>`.
    Opaque(String),
    /// What each COPY/ADD reads, digested where the files are (the git
    /// context pod): see [`ContextIdentity::Digests`].
    Digests(BTreeMap<String, String>),
}

/// The cache's answer for one build.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CacheView {
    /// The cache repository (`registry/repository`).
    pub repository: String,
    /// Every FROM image and the final base (as the plan names them) →
    /// the digest this build resolved it to.
    pub digests: BTreeMap<String, String>,
    pub keys: Keys,
    /// Chains and extractions the cache has, by id (empty with `noCache`).
    pub hits: BTreeMap<String, ChainEntry>,
    /// The image the cache has for these inputs, when every output tag
    /// already points at it: nothing is left to do.
    pub image: Option<ImageEntry>,
    /// When the image is not cached: its own layers and recipe from a
    /// build on another digest of the same base, which a rebase puts on
    /// this one.
    pub rebase: Option<LayersEntry>,
    /// When the image is not cached: the probe's answer for this base and
    /// final stage (the build then runs no probe pod).
    pub recipe: Option<RecipeEntry>,
    /// Why the cache could not be used: the build runs as if it were empty.
    pub error: Option<String>,
}

impl CacheView {
    /// A view that caches nothing, and says why.
    pub fn unavailable(error: String) -> Self {
        CacheView {
            error: Some(error),
            ..CacheView::default()
        }
    }

    /// The key of a chain or extraction.
    pub fn key(&self, id: &str) -> Option<&str> {
        self.keys.units.get(id).map(String::as_str)
    }
}

/// Answers `request`: resolves every image by digest, computes the keys,
/// and asks the cache repository for them. Anything that goes wrong makes
/// the view [`CacheView::unavailable`]: the build then runs uncached (a
/// missing base, say, fails where the pod pulls it, naming its line).
pub async fn look_up(
    request: &LookupRequest,
    options: &RegistryOptions,
    config_map: Option<&ConfigMap>,
) -> CacheView {
    match try_look_up(request, options, config_map).await {
        Ok(view) => view,
        Err(error) => CacheView::unavailable(error),
    }
}

async fn try_look_up(
    request: &LookupRequest,
    options: &RegistryOptions,
    config_map: Option<&ConfigMap>,
) -> Result<CacheView, String> {
    let plan = &request.plan;
    let repository = entry::cache_repository(&request.output, request.repository.as_deref())?;
    let platform: Platform = plan
        .platform
        .parse()
        .map_err(|e| format!("platform: {e}"))?;
    let images: BTreeSet<String> = plan
        .chains
        .iter()
        .map(|c| c.image.as_str())
        .chain(plan.extractions.iter().map(|e| e.image.as_str()))
        .chain([plan.final_base().0])
        .filter(|image| *image != "scratch")
        .map(str::to_string)
        .collect();
    let mut references: Vec<(String, Reference)> = Vec::new();
    for image in images {
        let reference = parse(&image)?;
        references.push((image, reference));
    }
    let cache = parse(&repository)?;
    let outputs = output_references(&request.output, &request.additional_tags)?;
    let mut everything: Vec<&Reference> = Vec::new();
    for (_, reference) in &references {
        everything.push(reference);
    }
    everything.push(&cache);
    let registry = Registry::connect(options, &everything)
        .await
        .map_err(|e| e.to_string())?;
    let mut digests = BTreeMap::new();
    for (image, reference) in references {
        let pinned = registry
            .resolve(&reference, &platform)
            .await
            .map_err(|e| e.to_string())?;
        digests.insert(image, pinned.digest);
    }
    let index;
    let context = match &request.context {
        ContextRef::None => ContextIdentity::None,
        ContextRef::Opaque(identity) => ContextIdentity::Opaque(identity.clone()),
        ContextRef::Digests(digests) => ContextIdentity::Digests(digests),
        ContextRef::Inline(files) => {
            index = ContextIndex::from_entries(
                files
                    .iter()
                    .map(|(path, text)| (path.clone(), 0o644, text.as_bytes())),
            )
            .map_err(|e| format!("the inline context: {e}"))?;
            ContextIdentity::Index(&index)
        }
        ContextRef::ConfigMap(context) => {
            let config_map = config_map.ok_or("the context ConfigMap was not read")?;
            index = config_map_index(context, config_map)?;
            ContextIdentity::Index(&index)
        }
    };
    let keys = key::keys(&KeyInputs {
        plan,
        digests: &digests,
        context,
    })
    .map_err(|e| e.to_string())?;
    let mut view = CacheView {
        repository,
        digests: digests.clone(),
        keys,
        ..CacheView::default()
    };
    if request.no_cache {
        return Ok(view);
    }
    let runtime = match &plan.final_image {
        FinalImage::Runtime(r) => Some(r.chain.as_str()),
        FinalImage::Assemble(_) => None,
    };
    for (id, key) in &view.keys.units {
        if Some(id.as_str()) == runtime {
            continue;
        }
        let found = entry::lookup_chain(&registry, &view.repository, key)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(found) = found {
            view.hits.insert(id.clone(), found);
        }
    }
    let image = entry::lookup_image(&registry, &view.repository, &view.keys.image)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(image) = image {
        let mut everywhere = true;
        for output in &outputs {
            let current = registry.resolve(output, &platform).await;
            everywhere &= current.is_ok_and(|m| m.digest == image.image.digest);
        }
        if everywhere {
            view.image = Some(image);
        }
    }
    if let (None, Some(key)) = (&view.image, &view.keys.layers) {
        view.rebase = entry::lookup_layers(&registry, &view.repository, key)
            .await
            .map_err(|e| e.to_string())?;
    }
    if let (None, Some(key)) = (&view.image, &view.keys.recipe) {
        view.recipe = entry::lookup_recipe(&registry, &view.repository, key)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(view)
}

fn parse(image: &str) -> Result<Reference, String> {
    registry::parse_reference(image).map_err(|e| e.to_string())
}

/// The output image and its additional tags (a bare tag is in the output's
/// repository).
fn output_references(output: &str, tags: &[String]) -> Result<Vec<Reference>, String> {
    let first = registry::parse_reference(output).map_err(|e| e.to_string())?;
    let mut references = vec![first.clone()];
    for tag in tags {
        let text = if tag.contains(['/', ':']) {
            tag.clone()
        } else {
            format!("{}:{tag}", registry::repository_name(&first))
        };
        references.push(registry::parse_reference(&text).map_err(|e| e.to_string())?);
    }
    Ok(references)
}

/// The context a ConfigMap holds: its items at their paths and modes, or
/// every key under its own name.
fn config_map_index(
    context: &ConfigMapContext,
    config_map: &ConfigMap,
) -> Result<ContextIndex, String> {
    let mut files: BTreeMap<String, (u32, Vec<u8>)> = BTreeMap::new();
    let data = config_map.data.clone().unwrap_or_default();
    let binary = config_map.binary_data.clone().unwrap_or_default();
    let value = |key: &str| {
        data.get(key)
            .map(|text| text.as_bytes().to_vec())
            .or_else(|| binary.get(key).map(|bytes| bytes.0.clone()))
    };
    if context.items.is_empty() {
        for key in data.keys().chain(binary.keys()) {
            if let Some(bytes) = value(key) {
                files.insert(key.clone(), (0o644, bytes));
            }
        }
    } else {
        for item in &context.items {
            if let Some(bytes) = value(&item.key) {
                let mode = item.mode.map(|m| m as u32).unwrap_or(0o644);
                files.insert(item.path.clone(), (mode, bytes));
            }
        }
    }
    ContextIndex::from_entries(
        files
            .iter()
            .map(|(path, (mode, bytes))| (path.clone(), *mode, bytes.as_slice())),
    )
    .map_err(|e| format!("the context ConfigMap: {e}"))
}
