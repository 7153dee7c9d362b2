//! What the assemble step is asked to do: [`AssembleSpec`] and its layers and
//! directories, as read (YAML or JSON) by [`AssembleSpec::load`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::AssembleError;
use crate::contract::InlineFile;
use crate::oci::config::ConfigChanges;

/// What the assemble step is asked to do (YAML or JSON).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AssembleSpec {
    /// Base image reference, or `scratch`.
    pub base: String,
    /// For a multi-platform base; also the platform of a scratch image.
    pub platform: Option<String>,
    #[serde(default)]
    pub layers: Vec<LayerSpec>,
    #[serde(default)]
    pub config: ConfigChanges,
    pub target: String,
    #[serde(default)]
    pub additional_tags: Vec<String>,
    #[serde(default)]
    pub insecure: bool,
    /// dockerconfigjson for every registry involved.
    pub auth: Option<PathBuf>,
    /// Extra trusted CA certificates (PEM).
    pub ca_bundle: Option<PathBuf>,
    /// The base's directories as the probe found them (`/tmp: {mode: "1777"}`):
    /// parents of new files that are listed here keep the base's mode and owner.
    #[serde(default)]
    pub base_directories: BTreeMap<String, DirectorySpec>,
    /// Scratch space for layers and unpacked exports (the assemble pod's
    /// root filesystem is read-only); default: the system's temp directory.
    pub work_dir: Option<PathBuf>,
    /// Entries to store in the stage cache once the image is pushed; a
    /// failure to store is a warning in the result, not a failed assembly.
    pub cache: Option<CacheStoreSpec>,
}

/// What the assembly stores in the stage cache (see [`crate::cache::entry`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheStoreSpec {
    /// The cache repository (`registry/name`, no tag).
    pub repository: String,
    /// The chains that ran in this build, each stored under its key.
    #[serde(default)]
    pub chains: Vec<CacheChainSpec>,
    /// The final image, stored under its key with what the assembly pushed.
    pub image: Option<CacheImageSpec>,
    /// The final image's own layers and the recipe they were made from,
    /// stored under its layers key (for a rebase).
    #[serde(default)]
    pub layers: Option<CacheLayersSpec>,
    /// The probe's answer, stored under the recipe key.
    #[serde(default)]
    pub recipe: Option<CacheLayersSpec>,
    /// Entries whose exports a layer reads when its archive is not on
    /// disk: downloaded from the cache repository first.
    #[serde(default)]
    pub restore: Vec<crate::cache::entry::ChainEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheLayersSpec {
    /// `sha256:<hex>`.
    pub key: String,
    /// The recipe the assembly's layers were made from.
    pub recipe: crate::contract::FinalRecipe,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheChainSpec {
    /// `sha256:<hex>`.
    pub key: String,
    /// The chain's id in the plan.
    pub chain: String,
    /// The chain's result JSON file (`results/<chain>.json`).
    pub result: PathBuf,
    #[serde(default)]
    pub exports: Vec<CacheExportSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheExportSpec {
    /// The export's id in the plan.
    pub id: String,
    /// Its gzip tar (`exports/<id>.tar`).
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheImageSpec {
    /// `sha256:<hex>`.
    pub key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectorySpec {
    /// Octal mode, e.g. `1777`.
    pub mode: String,
    /// Numeric `uid:gid`, default `0:0`.
    pub owner: Option<String>,
}

/// One layer: files from disk at a destination, a ready tar, or a COPY.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LayerSpec {
    pub source: Option<PathBuf>,
    pub destination: Option<String>,
    /// Numeric `uid:gid`.
    pub owner: Option<String>,
    /// Octal mode, e.g. `0755`.
    pub chmod: Option<String>,
    /// A tar (plain or gzip), taken as is: e.g. a snapshot diff with whiteouts.
    pub tar: Option<PathBuf>,
    /// The history entry, e.g. the Dockerfile instruction.
    pub created_by: Option<String>,
    /// A Dockerfile COPY/ADD with Docker's rules; `owner` and `chmod` apply.
    pub copy: Option<CopyLayerSpec>,
    /// The layer's key in the stage cache (`cache` gives the repository):
    /// a layer cached under it is mounted, not made; one made is stored.
    #[serde(default)]
    pub cache_key: Option<String>,
}

/// COPY/ADD onto an image that is not on this disk: sources matched (globs,
/// `.dockerignore`) in a directory or inside export archives, copied with
/// Docker's rules (a directory copies its contents, a file into a directory
/// keeps its name, several sources need a directory), modes kept unless
/// `chmod`, owners `owner` (default 0:0), no parents but the base's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CopyLayerSpec {
    /// The directory `sources` are relative to (the build context); its
    /// `.dockerignore` applies.
    pub root: Option<PathBuf>,
    /// Export archives (gzip tars named by matched path, see
    /// `stage::run`): `sources[i]` is matched inside `archives[i]`.
    #[serde(default)]
    pub archives: Vec<PathBuf>,
    #[serde(default)]
    pub sources: Vec<String>,
    /// Inline files (heredocs), mode 0644 unless `chmod`.
    #[serde(default)]
    pub files: Vec<InlineFile>,
    /// Absolute in the image, symlinks of the base already resolved.
    pub destination: String,
    /// Written as a directory (trailing `/`, several sources) or one in the
    /// base. With nothing to copy, the layer is that directory alone (WORKDIR).
    #[serde(default)]
    pub destination_is_dir: bool,
    /// ADD: local tar archives from `root` are extracted.
    #[serde(default)]
    pub extract: bool,
}

impl AssembleSpec {
    /// The platform to pin the base for (linux/amd64 when not given).
    pub fn platform(&self) -> Result<crate::oci::Platform, AssembleError> {
        match &self.platform {
            Some(p) => p
                .parse()
                .map_err(|detail| AssembleError::Invalid(format!("platform: {detail}"))),
            None => Ok(crate::oci::Platform::default()),
        }
    }

    /// How the registries are reached.
    pub fn registry_options(&self) -> crate::oci::registry::RegistryOptions {
        crate::oci::registry::RegistryOptions {
            insecure: self.insecure,
            ca_bundle: self.ca_bundle.clone(),
            auth_file: self.auth.clone(),
            auth_json: None,
        }
    }

    /// Reads a spec; relative paths in it are taken from the spec's directory.
    pub fn load(path: &Path) -> Result<Self, AssembleError> {
        let spec_error = |detail: String| AssembleError::Spec {
            path: path.to_path_buf(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| spec_error(e.to_string()))?;
        // YAML is a superset of JSON: one parser for both.
        let mut spec: Self = serde_yaml::from_str(&text).map_err(|e| spec_error(e.to_string()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        for layer in &mut spec.layers {
            layer.source.as_mut().map(resolve);
            layer.tar.as_mut().map(resolve);
            if let Some(copy) = &mut layer.copy {
                copy.root.as_mut().map(resolve);
                copy.archives.iter_mut().for_each(resolve);
            }
        }
        if let Some(cache) = &mut spec.cache {
            for chain in &mut cache.chains {
                resolve(&mut chain.result);
                chain.exports.iter_mut().for_each(|e| resolve(&mut e.path));
            }
        }
        spec.work_dir.as_mut().map(resolve);
        spec.auth.as_mut().map(resolve);
        spec.ca_bundle.as_mut().map(resolve);
        Ok(spec)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A spec from YAML (the assemble tests' fixtures).
    pub(in crate::assemble) fn spec(yaml: &str) -> AssembleSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn spec_reads_the_documented_fields() {
        let spec = spec(
            r#"
base: 127.0.0.1:5000/busybox:latest
platform: linux/amd64
layers:
  - source: out/app
    destination: /app
    owner: "0:0"
    chmod: "0755"
  - tar: snapshot.tar
config:
  entrypoint: ["/app"]
  cmd: ["--help"]
  env: ["KEY=value"]
  user: "65532"
  workingDir: /
  exposedPorts: ["8080/tcp"]
  labels: {org.opencontainers.image.source: "https://example.com/repo"}
  stopSignal: SIGTERM
  volumes: ["/data"]
  healthcheck: {test: ["CMD", "/app", "--health"]}
target: 127.0.0.1:5000/goapp:v1
additionalTags: [latest]
insecure: true
auth: /path/to/config.json
"#,
        );
        assert_eq!(spec.layers.len(), 2);
        assert_eq!(spec.config.user.as_deref(), Some("65532"));
        assert_eq!(spec.additional_tags, ["latest"]);
    }

    #[test]
    fn a_cache_section_is_read_and_its_paths_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spec.yaml");
        std::fs::write(
            &path,
            r#"
base: scratch
target: 127.0.0.1:5000/app:v1
cache:
  repository: 127.0.0.1:5000/app/cache
  chains:
    - key: sha256:0000000000000000000000000000000000000000000000000000000000000000
      chain: builder
      result: results/builder.json
      exports: [{id: builder-1, path: exports/builder-1.tar}, {id: abs, path: /x.tar}]
  image: {key: "sha256:1111111111111111111111111111111111111111111111111111111111111111"}
"#,
        )
        .unwrap();
        let spec = AssembleSpec::load(&path).unwrap();
        let cache = spec.cache.unwrap();
        assert_eq!(cache.repository, "127.0.0.1:5000/app/cache");
        let chain = &cache.chains[0];
        assert_eq!(chain.result, dir.path().join("results/builder.json"));
        assert_eq!(
            chain.exports[0].path,
            dir.path().join("exports/builder-1.tar")
        );
        assert_eq!(chain.exports[1].path, Path::new("/x.tar"));
        assert!(cache.image.unwrap().key.ends_with("1111"));
        let err = serde_yaml::from_str::<AssembleSpec>(
            "base: scratch\ntarget: x/y\ncache: {repository: r/c, chians: []}\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("chians"), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_yaml::from_str::<AssembleSpec>("base: scratch\ntarget: x/y\nbse: 1\n")
            .unwrap_err();
        assert!(err.to_string().contains("bse"), "{err}");
    }
}
