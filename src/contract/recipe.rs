//! The probe pod's answer: the final image's recipe, as the probe found it
//! in the base, which the assemble pod turns into layers and a config.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::oci::config::ConfigChanges;
use crate::rootfs::resolve::BaseDirectoryEntry;

/// What the final image is made of, as the probe found it in the base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FinalRecipe {
    /// One per COPY/ADD (or the snapshot), in Dockerfile order.
    pub layers: Vec<RecipeLayer>,
    pub config: ConfigChanges,
    /// The base's directories along every destination and WORKDIR: the
    /// assemble spec's `baseDirectories`.
    #[serde(default)]
    pub base_directories: BTreeMap<String, BaseDirectoryEntry>,
    /// The base's environment the evaluation used: a rebase evaluates
    /// the final stage again, against the new base's layers, with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_environment: Option<BaseEnvironment>,
}

impl FinalRecipe {
    /// The same layers, config and base directories: what the assembly
    /// makes of the two is the same.
    pub fn same_image(&self, other: &FinalRecipe) -> bool {
        self.layers == other.layers
            && self.config == other.config
            && self.base_directories == other.base_directories
    }
}

/// What the final stage's evaluation took from the base besides its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BaseEnvironment {
    /// The image's ENV as the probe's process had it.
    pub env: BTreeMap<String, String>,
    /// The image's WORKDIR.
    pub workdir: String,
}

/// One new layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecipeLayer {
    pub line: usize,
    /// The history entry: the instruction as written, on one line.
    pub created_by: String,
    pub source: LayerOrigin,
    /// Absolute, the base's symlinks resolved (none for a snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(default)]
    pub destination_is_dir: bool,
    /// Numeric `uid:gid` of every entry (none for a snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Octal `--chmod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chmod: Option<String>,
    /// ADD: local tar archives from the context are extracted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub extract: bool,
}

/// Where a layer's files come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum LayerOrigin {
    /// Paths (expanded, globs allowed) in the build context, and heredocs.
    Context {
        paths: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        files: Vec<InlineFile>,
    },
    /// Another stage's or an image's files: each path inside its export archive.
    Exports { exports: Vec<ExportSource> },
    /// Heredocs only, their bodies expanded.
    Inline { files: Vec<InlineFile> },
    /// A WORKDIR the base lacks: the directory alone, owned by the USER.
    Directory,
    /// A ready layer (the runtime pod's snapshot), relative to the workspace.
    Snapshot { path: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportSource {
    /// The export id: the archive is `exports/<id>.tar`.
    pub id: String,
    /// The source path as the planner expanded it (may be a glob).
    pub path: String,
}

/// A file given inline: a heredoc, named by its delimiter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InlineFile {
    pub name: String,
    pub content: String,
}
