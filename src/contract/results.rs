//! What each pod leaves in `results/` (and, when it fits, in its
//! termination message): the types both the pods (which write them) and the
//! controller and the local runner (which read them) use.

use std::path::Path;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::oci::layer::LayerDigests;
use crate::rootfs::{FsError, io_err, write_atomically};

/// A result file is the pod's termination message: keep it well under 4 KiB.
pub const MAX_RESULT_BYTES: usize = 3 * 1024;

/// Writes a pod's result (JSON) where the others read it: `path` in the
/// workspace, readable by every uid (the assemble pod runs as another
/// user), and, when it fits in [`MAX_RESULT_BYTES`], the termination
/// message (a cut JSON would be no use there).
pub fn publish_result(path: &Path, json: &[u8]) -> Result<(), FsError> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    write_atomically(path, json)?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
    if json.len() <= MAX_RESULT_BYTES {
        write_termination_message(json);
    }
    Ok(())
}

/// The result of a pod that failed before (or instead of) its work:
/// `{"status": "failed", "error": …}`, the error cut to fit.
pub fn failure_json(error: &str) -> String {
    serde_json::json!({
        "status": "failed",
        "error": keep_first_bytes(error, MAX_RESULT_BYTES - 64),
    })
    .to_string()
}

/// The first at most `n` bytes of `s`, ending on a character boundary.
pub fn keep_first_bytes(s: &str, n: usize) -> String {
    let mut end = n.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Where Kubernetes reads a container's termination message.
const TERMINATION_LOG: &str = "/dev/termination-log";

/// Also hands `bytes` (a result, at most 3 KiB) to Kubernetes as the
/// container's termination message, when there is such a file (podman has none).
pub fn write_termination_message(bytes: &[u8]) {
    if Path::new(TERMINATION_LOG).exists() {
        let _ = std::fs::write(TERMINATION_LOG, bytes);
    }
}

/// The last at most `n` bytes of `s`, starting on a character boundary.
pub fn keep_last_bytes(s: &str, n: usize) -> String {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_string()
}

/// What a chain pod (`stage run`) reports, in [`chain_result`](super::chain_result).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "camelCase")]
pub enum ChainResult {
    Succeeded { exports: Vec<String> },
    Failed(ChainFailure),
}

/// Why a chain failed. Read back, a pod's `{"status": "failed", "error": …}`
/// ([`failure_json`]: it failed before its first step) has no stage, line
/// (0) or instruction (empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainFailure {
    #[serde(default)]
    pub stage: String,
    #[serde(default)]
    pub line: usize,
    /// The instruction's first line as written.
    #[serde(default)]
    pub instruction: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One line: `stage S line N: INSTRUCTION: exit code C` (or the error).
impl std::fmt::Display for ChainFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stage {} line {}: {}: ",
            self.stage, self.line, self.instruction
        )?;
        match (self.exit_code, &self.error) {
            (Some(code), _) => write!(f, "exit code {code}"),
            (None, Some(error)) => f.write_str(error),
            (None, None) => f.write_str("failed"),
        }
    }
}

impl ChainResult {
    /// The JSON, at most [`MAX_RESULT_BYTES`]: the log tail loses its oldest
    /// bytes first, then the error and the instruction are cut (on UTF-8
    /// boundaries).
    pub fn to_json(&self) -> Vec<u8> {
        let json = |r: &ChainResult| serde_json::to_vec(r).expect("a result serializes");
        let mut bytes = json(self);
        let ChainResult::Failed(failure) = self else {
            return bytes;
        };
        let mut failure = failure.clone();
        let fits =
            |f: &ChainFailure| json(&ChainResult::Failed(f.clone())).len() <= MAX_RESULT_BYTES;
        // The most of the log's end, then of the error's start, that fits.
        if let Some(tail) = failure.log_tail.clone() {
            let keep = largest_fitting(tail.len(), |n| {
                let mut f = failure.clone();
                f.log_tail = Some(keep_last_bytes(&tail, n));
                fits(&f)
            });
            failure.log_tail = Some(keep_last_bytes(&tail, keep));
        }
        if let Some(error) = failure.error.clone() {
            let keep = largest_fitting(error.len(), |n| {
                let mut f = failure.clone();
                f.error = Some(keep_first_bytes(&error, n));
                fits(&f)
            });
            failure.error = Some(keep_first_bytes(&error, keep));
        }
        if !fits(&failure) {
            failure.instruction = keep_first_bytes(&failure.instruction, 200);
        }
        bytes = json(&ChainResult::Failed(failure));
        bytes
    }
}

/// The largest `n <= max` with `fits(n)` (0 if none), `fits` being monotone.
fn largest_fitting(max: usize, fits: impl Fn(usize) -> bool) -> usize {
    let (mut low, mut high) = (0, max);
    while low < high {
        let mid = low + (high - low).div_ceil(2);
        if fits(mid) {
            low = mid;
        } else {
            high = mid - 1;
        }
    }
    low
}

/// The context pod's result: `{"commit", "dockerfile"}` or `{"error"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloneResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// base64 of the gzip-compressed Dockerfile text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For the stage cache: what each COPY/ADD of the plan reads, digested
    /// here where the files are (`cache::key::context_digests`). Empty when
    /// the plan failed or the map would not fit in a termination message:
    /// the whole commit then stands for the context.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub context_digests: std::collections::BTreeMap<String, String>,
}

impl CloneResult {
    /// The Dockerfile's text, from its base64 and gzip encoding.
    pub fn dockerfile_text(&self) -> Result<Option<String>, String> {
        let Some(encoded) = &self.dockerfile else {
            return Ok(None);
        };
        let compressed = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| format!("the Dockerfile in the result is not base64: {e}"))?;
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(compressed.as_slice()),
            &mut text,
        )
        .map_err(|e| format!("the Dockerfile in the result is not gzip-compressed text: {e}"))?;
        Ok(Some(text))
    }
}

/// What was pushed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AssembleResult {
    /// `registry/repository@sha256:…`
    pub reference: String,
    pub digest: String,
    /// Compressed size of the image: config and every layer.
    pub size_bytes: u64,
    /// The layers this step added.
    #[serde(default)]
    pub layers: Vec<LayerDigests>,
    /// The base as pinned for the whole assembly (`…@sha256:…`), absent for scratch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// The largest of the builder stages' images, when asked for
    /// (`--builder-image`): the size reduction is measured against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builder_image: Option<String>,
    /// That image's compressed size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builder_size_bytes: Option<u64>,
    /// What could not be stored in the stage cache (the image was pushed
    /// all the same).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_warnings: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(tail: &str) -> ChainResult {
        ChainResult::Failed(ChainFailure {
            stage: "builder".into(),
            line: 7,
            instruction: "RUN make".into(),
            exit_code: Some(2),
            log_tail: Some(tail.into()),
            error: None,
        })
    }

    #[test]
    fn a_result_is_capped_at_3_kib_keeping_the_end_of_the_log() {
        let tail = format!("{}the last line", "é\"\n".repeat(5000));
        let json = failure(&tail).to_json();
        assert!(json.len() <= MAX_RESULT_BYTES, "{}", json.len());
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["status"], "failed");
        assert_eq!(value["line"], 7);
        assert_eq!(value["exitCode"], 2);
        assert!(
            value["logTail"]
                .as_str()
                .unwrap()
                .ends_with("the last line")
        );
        let small = failure("short").to_json();
        let value: serde_json::Value = serde_json::from_slice(&small).unwrap();
        assert_eq!(value["logTail"], "short");
    }

    #[test]
    fn success_lists_the_exports() {
        let json = ChainResult::Succeeded {
            exports: vec!["b-1".into()],
        }
        .to_json();
        assert_eq!(
            String::from_utf8(json).unwrap(),
            r#"{"status":"succeeded","exports":["b-1"]}"#
        );
    }

    #[test]
    fn cutting_respects_utf8() {
        assert_eq!(keep_last_bytes("aéb", 2), "b");
        assert_eq!(keep_first_bytes("aéb", 2), "a");
    }
}
