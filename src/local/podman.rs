//! The podman commands the local shell needs, and what their output means.

use std::path::PathBuf;
use std::process::Stdio;

use jiff::Timestamp;
use serde::Deserialize;
use tokio::process::Command;

use crate::controller::reconcile::Waiting;

#[derive(Debug, thiserror::Error)]
pub enum PodmanError {
    #[error("running podman {args}: {source}")]
    Spawn {
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("podman {args}: {stderr}")]
    Failed { args: String, stderr: String },
}

/// The `podman` program (with whatever CONTAINERS_* configuration the
/// environment holds).
#[derive(Debug, Clone)]
pub struct Podman {
    pub program: PathBuf,
}

/// A container's state, from `podman inspect`.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerState {
    /// `created`, `running`, `exited`, …
    pub status: String,
    pub exit_code: i32,
    pub started: Option<Timestamp>,
    pub finished: Option<Timestamp>,
}

impl Podman {
    pub fn new() -> Self {
        Podman {
            program: std::env::var_os("SLIMFORGE_PODMAN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("podman")),
        }
    }

    /// Runs podman; `Ok(stdout)` on success, the stderr in the error otherwise.
    pub async fn run(&self, args: &[&str]) -> Result<String, PodmanError> {
        let output = Command::new(&self.program)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| PodmanError::Spawn {
                args: args.join(" "),
                source,
            })?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(PodmanError::Failed {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            })
        }
    }

    /// `podman kube play` of one YAML file (a pod, maybe with its ConfigMap).
    pub async fn play(&self, file: &str, host_network: bool) -> Result<String, PodmanError> {
        let mut args = vec!["kube", "play", "--quiet"];
        if !host_network {
            args.extend(["--network", "none"]);
        }
        args.push(file);
        self.run(&args).await
    }

    /// The state of a container, `None` when it does not exist.
    pub async fn container_state(&self, name: &str) -> Result<Option<ContainerState>, PodmanError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Inspect {
            state: State,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct State {
            status: String,
            exit_code: i32,
            started_at: Option<String>,
            finished_at: Option<String>,
        }
        let out = match self
            .run(&["container", "inspect", "--format", "json", name])
            .await
        {
            Ok(out) => out,
            Err(PodmanError::Failed { stderr, .. }) if stderr.contains("no such") => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let parsed: Vec<Inspect> = serde_json::from_str(&out).map_err(|e| PodmanError::Failed {
            args: format!("container inspect {name}"),
            stderr: e.to_string(),
        })?;
        Ok(parsed.into_iter().next().map(|i| ContainerState {
            status: i.state.status,
            exit_code: i.state.exit_code,
            started: i.state.started_at.as_deref().and_then(parse_time),
            finished: i.state.finished_at.as_deref().and_then(parse_time),
        }))
    }

    /// The host directory behind a named volume.
    pub async fn volume_path(&self, name: &str) -> Result<PathBuf, PodmanError> {
        let out = self
            .run(&["volume", "inspect", "--format", "{{.Mountpoint}}", name])
            .await?;
        Ok(PathBuf::from(out.trim()))
    }

    /// Removes a pod and its containers, if it exists.
    pub async fn remove_pod(&self, name: &str) {
        let _ = self
            .run(&["pod", "rm", "--force", "--ignore", "--time", "0", name])
            .await;
    }

    /// Removes a volume, if it exists.
    pub async fn remove_volume(&self, name: &str) {
        let _ = self.run(&["volume", "rm", "--force", name]).await;
    }

    /// The last lines a container wrote.
    pub async fn logs(&self, name: &str, lines: usize) -> String {
        let lines = lines.to_string();
        match Command::new(&self.program)
            .args(["logs", "--tail", &lines, name])
            .stdin(Stdio::null())
            .output()
            .await
        {
            Ok(out) => {
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                text
            }
            Err(_) => String::new(),
        }
    }
}

impl Default for Podman {
    fn default() -> Self {
        Podman::new()
    }
}

/// podman prints `2026-11-27 22:13:08.548037323 +0000 UTC`; zero means never.
fn parse_time(text: &str) -> Option<Timestamp> {
    let text = text.trim();
    if text.is_empty() || text.starts_with("0001-01-01") {
        return None;
    }
    if let Ok(t) = text.parse::<Timestamp>() {
        return Some(t);
    }
    // `date time offset zone`: keep the first three words, ISO-shaped.
    let mut words = text.split_whitespace();
    let (date, time, offset) = (words.next()?, words.next()?, words.next()?);
    let offset = if offset.len() == 5 {
        format!("{}:{}", &offset[..3], &offset[3..])
    } else {
        offset.to_string()
    };
    format!("{date}T{time}{offset}").parse().ok()
}

/// The directory of podman's `workdir "/src" does not exist on container …`.
pub fn missing_workdir(error: &str) -> Option<&str> {
    let (_, rest) = error.split_once("workdir \"")?;
    let (dir, rest) = rest.split_once('"')?;
    rest.starts_with(" does not exist").then_some(dir)
}

/// A kube play failure that is a pull failure, as the kubelet would report it.
pub fn pull_failure(error: &str) -> Option<Waiting> {
    let lower = error.to_lowercase();
    let pull = [
        "initializing source",
        "pulling image",
        "manifest unknown",
        "reading manifest",
        "invalid reference format",
        "repository name must",
    ]
    .iter()
    .any(|needle| lower.contains(needle));
    if !pull {
        return None;
    }
    let reason =
        if lower.contains("invalid reference format") || lower.contains("repository name must") {
            "InvalidImageName"
        } else {
            "ErrImagePull"
        };
    Some(Waiting {
        container: String::new(),
        reason: reason.into(),
        message: tail(error, 3),
    })
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_times_parse() {
        let t = parse_time("2026-11-27 22:13:08.548037323 +0000 UTC").unwrap();
        assert_eq!(t.to_string(), "2026-11-27T22:13:08.548037323Z");
        assert_eq!(parse_time("0001-01-01 00:00:00 +0000 UTC"), None);
        assert!(parse_time("2026-11-27T22:13:08Z").is_some());
    }

    #[test]
    fn a_missing_working_dir_is_read_from_podmans_error() {
        let error = "Error: workdir \"/src\" does not exist on container abc";
        assert_eq!(missing_workdir(error), Some("/src"));
        assert_eq!(missing_workdir("workdir \"/src\" is fine"), None);
        assert_eq!(missing_workdir("no such image"), None);
    }

    #[test]
    fn a_play_failure_that_is_a_pull_failure_waits_as_the_kubelet_would() {
        let pull = pull_failure("a\nb\nError: initializing source docker://x: manifest unknown");
        let pull = pull.expect("a pull failure");
        assert_eq!(pull.reason, "ErrImagePull");
        assert_eq!(
            pull.message,
            "a\nb\nError: initializing source docker://x: manifest unknown"
        );
        let name = pull_failure("invalid reference format").expect("a pull failure");
        assert_eq!(name.reason, "InvalidImageName");
        assert_eq!(pull_failure("the container exited"), None);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("1\n2\n3", 2), "2\n3");
        assert_eq!(tail("1", 5), "1");
    }
}
