//! The `ImageBuild` resource (`slimforge.dev/v1alpha1`, short name `ib`):
//! what a user asks for and what the controller reports.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{LocalObjectReference, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// Bytes of inline context, file names included. `kubectl apply` keeps a
/// copy of the whole object in an annotation (256 KiB at most), and the
/// files reach the pods in one environment variable (128 KiB at most).
pub const MAX_INLINE_CONTEXT_BYTES: usize = 64 * 1024;

/// A multi-stage build: context, Dockerfile, where the image goes.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "slimforge.dev",
    version = "v1alpha1",
    kind = "ImageBuild",
    plural = "imagebuilds",
    shortname = "ib",
    namespaced,
    status = "ImageBuildStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.output.image"}"#,
    printcolumn = r#"{"name":"Digest","type":"string","jsonPath":".status.image.shortDigest"}"#,
    printcolumn = r#"{"name":"Size","type":"string","jsonPath":".status.image.size"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(
    cel,
    validation = Rule::new("has(self.dockerfile) != has(self.dockerfilePath)").message("give exactly one of dockerfile and dockerfilePath")
)]
#[serde(rename_all = "camelCase")]
pub struct ImageBuildSpec {
    pub context: BuildContext,
    /// The Dockerfile's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    /// The Dockerfile's path in the context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile_path: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub build_args: BTreeMap<String, String>,
    /// Stop at this stage (default: the last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `os/arch[/variant]`, default `linux/amd64`: every pod runs on such a node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    pub output: Output,
    /// The whole build's deadline, e.g. `30m`, `1h30m`, `90s` (default 30m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Pods and workspace go this long after the build ends; the status stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<i64>,
    /// For the chain pods (where the user's RUN commands run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<Workspace>,
    /// The stage cache (on unless `enabled: false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSpec>,
    /// Rebuild when what the last build used has moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggers: Option<Triggers>,
    /// Build secrets for `RUN --mount=type=secret,id=…`: each id's value
    /// is a key of a Secret in the build's namespace. Only the pod whose
    /// RUN asks for an id gets it, and only that RUN sees it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("maxItems" = 64))]
    pub secrets: Vec<BuildSecret>,
    /// The volumes behind `RUN --mount=type=cache`: one claim per cache id
    /// and namespace (`slimforge-cache-…`, labelled `slimforge.dev/cache`),
    /// shared by the namespace's builds and kept after them. These settings
    /// apply when a claim is made; the size is also the limit the cache is
    /// trimmed to (least recently used files first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_volumes: Option<CacheVolumes>,
}

/// One build secret: `id` as the Dockerfile names it, its value from a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BuildSecret {
    pub id: String,
    pub secret_ref: SecretKeyRef,
}

/// A key of a Secret in the build's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// How cache volumes are made (defaults: the operator's, 5Gi, the
/// cluster's default class, ReadWriteOnce).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CacheVolumes {
    /// A quantity such as `5Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("items" = {
        "type": "string",
        "enum": ["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"]
    }))]
    pub access_modes: Vec<String>,
}

/// Bytes of a Kubernetes quantity (`5Gi`, `500M`, `1073741824`); `None`
/// for anything else (fractions, `m`, exponents).
pub fn quantity_bytes(text: &str) -> Option<u64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let multiplier: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(multiplier)
}

/// What the operator watches for a build that has finished: a moved base
/// or a moved branch starts a new build of the same generation (never
/// interrupting one that runs).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Triggers {
    /// How often to look, e.g. `5m` (the default; at least `1m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Every `FROM` image and the final image's base: a tag that resolves
    /// to a new digest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub images: bool,
    /// A git context's branch or tag: a new commit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub source: bool,
}

/// The stage cache: chains whose inputs a registry entry already has are
/// not run again; a build whose every input is unchanged starts no pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CacheSpec {
    /// Look entries up and write them (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Where entries go: a repository on the output image's registry
    /// (default `<output repository>/cache`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Run every chain as if nothing were cached, as `docker build
    /// --no-cache` does; the fresh entries are written all the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_cache: bool,
}

impl ImageBuildSpec {
    /// The cache is used unless the spec turns it off.
    pub fn cache_enabled(&self) -> bool {
        self.cache.as_ref().and_then(|c| c.enabled).unwrap_or(true)
    }

    /// The Secrets whose registry credentials the operator reads for the
    /// cache and the triggers: the push secret, then the pull secrets.
    pub fn registry_secrets(&self) -> Vec<String> {
        let pull = self.pod_template.iter().flat_map(|t| &t.image_pull_secrets);
        self.output
            .push_secret
            .iter()
            .cloned()
            .chain(pull.map(|s| s.name.clone()))
            .collect()
    }
}

/// Where the build context comes from: exactly one of these.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    cel,
    validation = Rule::new("[has(self.inline), has(self.configMap), has(self.git)].filter(x, x).size() == 1").message("give exactly one of inline, configMap and git")
)]
#[serde(rename_all = "camelCase")]
pub struct BuildContext {
    /// File path → content, for small contexts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("self.map(k, size(k) + size(self[k])).sum() <= 65536").message("inline context is limited to 64 KiB; use a configMap or git context")
    )]
    pub inline: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitContext>,
}

/// A ConfigMap in the build's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapContext {
    pub name: String,
    /// Which keys, at which paths (default: every key, named after it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<ConfigMapItem>,
}

impl ConfigMapContext {
    /// The key that holds the context file at `path` (an item's key, or
    /// the path itself when no item maps it).
    pub fn key_for(&self, path: &str) -> String {
        let path = path.trim_start_matches("./");
        self.items
            .iter()
            .find(|i| i.path == path)
            .map(|i| i.key.clone())
            .unwrap_or_else(|| path.to_string())
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapItem {
    pub key: String,
    /// Relative path in the context; may contain `/`.
    pub path: String,
    /// File mode as Kubernetes writes it (decimal of the octal mode: 493 = 0755).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<i32>,
}

/// A git repository, cloned by the build's first pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GitContext {
    pub url: String,
    /// Branch, tag or commit (default: the remote's HEAD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The context is this directory of the checkout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
    /// A Secret with `username`/`password` (HTTPS) or `ssh-privatekey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

/// The URL without a user or password in it.
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Output {
    /// Where the image is pushed: `registry/repository:tag`.
    #[x_kube(validation = Rule::new("self != ''").message("output.image is required"))]
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_tags: Vec<String>,
    /// A `kubernetes.io/dockerconfigjson` Secret in the build's namespace;
    /// only the assemble pod sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_secret: Option<String>,
    /// Plain HTTP or unverified TLS to the registries.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

/// What the build's pods inherit.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplate {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// For the assemble pod (user code never gets a service-account token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Pull secrets for the stage and base images; also read for the builder image's size.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
}

/// The shared volume the build's pods hand files over on.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Workspace {
    /// Default `2Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Default `[ReadWriteOnce]`: every pod then runs on the first pod's node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("items" = {
        "type": "string",
        "enum": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]
    }))]
    pub access_modes: Vec<String>,
}

/// What the controller knows of the build.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageBuildStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Why this build ran: `FirstBuild`, `SpecChanged`, `RebuildRequested`,
    /// `BaseImageMoved`, `SourceMoved`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_reason: Option<String>,
    /// What the triggers last saw, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggers: Option<TriggerStatus>,
    /// Every FROM image and the final base, as the Dockerfile names them,
    /// by the digest this build resolved them to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resolved_images: BTreeMap<String, String>,
    /// How many rebuilds of this generation came before this build
    /// (absent for the generation's first build): with
    /// `observedGeneration`, the build's identity. A new generation starts
    /// again from none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuilds: Option<u32>,
    /// The `slimforge.dev/rebuild` annotation's value this build answered
    /// (recorded when a build starts): another value asks for a rebuild
    /// once this build has finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_rebuild: Option<String>,
}

/// What the triggers saw last.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TriggerStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<SeenImage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SeenSource>,
}

/// An image as the triggers last resolved it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SeenImage {
    /// As the Dockerfile names it.
    pub image: String,
    pub digest: String,
    pub seen: Time,
}

/// A git branch or tag as the triggers last resolved it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SeenSource {
    pub revision: String,
    pub commit: String,
    pub seen: Time,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

/// One pod of the build: a stage chain, the probe, the runtime or the assembly.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    /// The chain's stage (`builder`), or `probe`, `assemble`.
    pub name: String,
    pub pod: String,
    /// Pending, Running, Succeeded or Failed.
    pub phase: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Taken from the cache: no pod ran (`pod` is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached: Option<bool>,
    /// The stage's cache key (`sha256:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
}

/// The pushed image.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatus {
    /// `registry/repository@sha256:…`
    pub reference: String,
    pub digest: String,
    /// The first 12 hex digits of the digest, for `kubectl get`.
    pub short_digest: String,
    /// Compressed: config and layers.
    pub size_bytes: i64,
    /// The same in a person's units (`2.3 MB`), for `kubectl get`.
    pub size: String,
    /// The largest image a builder stage ran in (a final stage that runs
    /// commands is not a builder): what the image would weigh built in one
    /// stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builder_image: Option<String>,
    /// That image's compressed size: the reduction is this against
    /// `sizeBytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builder_size_bytes: Option<i64>,
    /// The layers this build added, by digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<String>,
    /// The base the image was assembled on, by digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Every input equal to an earlier build's: the image is that build's,
    /// found in the cache, and no pod ran.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
    /// The base moved and nothing else did: the layers of an earlier build
    /// were put on the new base (`base`), and only the rebase pod ran.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rebased: bool,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// The git commit built.
    pub commit: String,
}

/// The CRD as YAML, as `slimforge crd` prints it and `crds/` holds it.
pub fn crd_yaml() -> String {
    let mut crd = serde_json::to_value(ImageBuild::crd()).unwrap_or_default();
    strip_schema_noise(&mut crd);
    let yaml = serde_yaml::to_string(&crd).unwrap_or_default();
    format!("# Generated by `slimforge crd`; do not edit.\n{yaml}")
}

/// Formats that Kubernetes does not know (`int32`, `uint32`, …) make the API
/// server log a warning for every CRD; drop them.
fn strip_schema_noise(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if map
                .get("format")
                .and_then(|f| f.as_str())
                .is_some_and(|f| f.starts_with("uint") || f == "double")
            {
                map.remove("format");
            }
            map.values_mut().for_each(strip_schema_noise);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_schema_noise),
        _ => {}
    }
}

/// Bytes for a person: `2.3 MB` (decimal units, as registries and Docker show them).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if value < 10.0 {
        format!("{value:.2} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_a_url_are_not_shown() {
        assert_eq!(
            redacted_url("https://bob:secret@example.com/r.git"),
            "https://***@example.com/r.git"
        );
        assert_eq!(redacted_url("git://host:9418/repo"), "git://host:9418/repo");
    }

    #[test]
    fn sizes_read_as_docker_shows_them() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(2_260_000), "2.26 MB");
        assert_eq!(human_size(186_000_000), "186.0 MB");
    }
}
