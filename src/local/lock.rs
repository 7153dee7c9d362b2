//! One local build of a name at a time: a lock file in podman's run root,
//! held while the build runs. Taking it over from a killed build removes
//! what that build left behind.

use std::io::Write as _;
use std::path::Path;

use super::LocalError;
use super::podman::Podman;
use super::progress::Progress;
use crate::controller::BUILD_LABEL;

/// Takes the lock of build `name`, so that a second build of the same name
/// is refused, however close behind. Without an owner (its process was
/// killed), what an earlier build left is removed. The lock lasts as long
/// as the returned file is open.
pub(super) async fn lock_build(
    podman: &Podman,
    name: &str,
    progress: &Progress,
) -> Result<std::fs::File, LocalError> {
    let run_root = podman
        .run(&["info", "--format", "{{.Store.RunRoot}}"])
        .await?;
    let dir = Path::new(run_root.trim()).join("slimforge-builds");
    let path = dir.join(format!("{name}.lock"));
    let io = |e: std::io::Error| LocalError::Io(format!("{}: {e}", path.display()));
    std::fs::create_dir_all(&dir).map_err(io)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io)?;
    if let Err(e) = file.try_lock() {
        let owner = std::fs::read_to_string(&path).unwrap_or_default();
        return Err(match e {
            std::fs::TryLockError::WouldBlock => LocalError::Invalid(format!(
                "a local build named {name} is running already (process {}); wait for it, or stop it with Ctrl-C or `kill {}`",
                owner.trim(),
                owner.trim()
            )),
            std::fs::TryLockError::Error(e) => io(e),
        });
    }
    remove_left_behind(podman, name, progress).await?;
    file.set_len(0).map_err(io)?;
    file.write_all(std::process::id().to_string().as_bytes())
        .map_err(io)?;
    Ok(file)
}

/// Removes the pods and volumes an earlier build of `name` left, saying so.
async fn remove_left_behind(
    podman: &Podman,
    name: &str,
    progress: &Progress,
) -> Result<(), LocalError> {
    let (pods, volumes) = left_behind(podman, name).await?;
    if pods.is_empty() && volumes.is_empty() {
        return Ok(());
    }
    progress.line(&format!(
        "removing what an earlier build of {name} left (its process is gone): pods {}; volumes {}",
        pods.join(", "),
        volumes.join(", ")
    ));
    for pod in &pods {
        podman.remove_pod(pod).await;
    }
    for volume in &volumes {
        podman.remove_volume(volume).await;
    }
    Ok(())
}

/// The pods and volumes of build `name` that exist now.
async fn left_behind(
    podman: &Podman,
    name: &str,
) -> Result<(Vec<String>, Vec<String>), LocalError> {
    let label = format!("label={BUILD_LABEL}={name}");
    let pods = podman
        .run(&["pod", "ps", "--filter", &label, "--format", "{{.Name}}"])
        .await?;
    let volumes = podman
        .run(&["volume", "ls", "--format", "{{.Name}}"])
        .await?;
    Ok((
        pods.lines().map(str::to_string).collect(),
        volumes
            .lines()
            .filter(|v| is_build_volume(name, v))
            .map(str::to_string)
            .collect(),
    ))
}

/// Whether volume `volume` is one a build of `build` makes:
/// `<build>-g<N>-workspace`, `<build>-g<N>-context` or
/// `<build>-g<N>-<unit>[-r<attempt>]-helper`.
fn is_build_volume(build: &str, volume: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let Some(rest) = volume
        .strip_prefix(build)
        .and_then(|r| r.strip_prefix("-g"))
    else {
        return false;
    };
    let Some((generation, rest)) = rest.split_once('-') else {
        return false;
    };
    if !digits(generation) {
        return false;
    }
    if rest == "workspace" || rest == "context" {
        return true;
    }
    let Some(pod) = rest.strip_suffix("-helper") else {
        return false;
    };
    match pod.split_once("-r") {
        Some((unit, attempt)) => digits(unit) && digits(attempt),
        None => digits(pod),
    }
}

#[cfg(test)]
mod tests {
    use super::is_build_volume;

    #[test]
    fn only_the_volumes_a_build_makes_are_its_own() {
        for volume in [
            "app-g1-workspace",
            "app-g12-context",
            "app-g1-3-helper",
            "app-g1-3-r2-helper",
        ] {
            assert!(is_build_volume("app", volume), "{volume}");
        }
        for volume in [
            "app-g1-other",
            "app-gx-workspace",
            "app-g1-3",
            "app-g1-x-helper",
            "app-g1-3-rx-helper",
            "app2-g1-workspace",
            "other-g1-workspace",
        ] {
            assert!(!is_build_volume("app", volume), "{volume}");
        }
    }
}
