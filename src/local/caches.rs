//! `slimforge cache list` and `slimforge cache drop`: the podman volumes
//! behind local `RUN --mount=type=cache` mounts (in a cluster they are
//! claims: `kubectl get pvc -l slimforge.dev/cache`).

use std::path::Path;

use super::LocalError;
use super::podman::Podman;
use crate::contract::{CACHE_ID_ANNOTATION, CACHE_LABEL, cache_volume};

/// One cache volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCache {
    /// The id the Dockerfile gives (`id=`, else the target).
    pub id: String,
    pub volume: String,
    /// Bytes of its files.
    pub bytes: u64,
}

/// Every local cache volume, by id.
pub async fn list_caches() -> Result<Vec<LocalCache>, LocalError> {
    let podman = Podman::new();
    let names = podman
        .run(&[
            "volume",
            "ls",
            "--filter",
            &format!("label={CACHE_LABEL}"),
            "--format",
            "{{.Name}}",
        ])
        .await?;
    let mut caches = Vec::new();
    for volume in names.lines().map(str::trim).filter(|n| !n.is_empty()) {
        let label = format!("{{{{index .Labels \"{CACHE_ID_ANNOTATION}\"}}}}");
        let id = podman
            .run(&["volume", "inspect", "--format", &label, volume])
            .await?;
        let path = podman.volume_path(volume).await?;
        caches.push(LocalCache {
            id: id.trim().to_string(),
            volume: volume.to_string(),
            bytes: size_of(&path),
        });
    }
    caches.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(caches)
}

/// Removes the volumes of `ids` (every cache with `all`); returns the
/// volumes removed. A volume a running build uses is refused by podman,
/// and the error says so.
pub async fn drop_caches(ids: &[String], all: bool) -> Result<Vec<String>, LocalError> {
    let podman = Podman::new();
    let known = list_caches().await?;
    let mut volumes = Vec::new();
    if all {
        volumes.extend(known.iter().map(|c| c.volume.clone()));
    }
    for id in ids {
        let volume = cache_volume(id);
        if !known.iter().any(|c| c.volume == volume) {
            return Err(LocalError::Invalid(format!(
                "no local cache `{id}` (slimforge cache list shows them)"
            )));
        }
        volumes.push(volume);
    }
    for volume in &volumes {
        podman.run(&["volume", "rm", volume]).await?;
    }
    Ok(volumes)
}

fn size_of(path: &Path) -> u64 {
    walkdir::WalkDir::new(path)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len())
        .sum()
}
