//! Image config edits, done on the JSON so fields we don't model survive.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::Platform;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config.env: `{0}` is not KEY=value")]
    Env(String),
    #[error("config.healthcheck.{field}: `{value}` is not a duration such as 30s or 1m30s")]
    Duration { field: &'static str, value: String },
    #[error("config.exposedPorts: `{0}` is not PORT or PORT/tcp|udp|sctp")]
    Port(String),
    #[error("base image config is not a JSON object")]
    NotAnObject,
}

/// Changes to the runtime config. Absent keeps the base's value; an empty
/// list is a value of its own (`entrypoint: []` clears the entrypoint).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigChanges {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Merged by key into the base's Env.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", ...]` or `["CMD-SHELL", "..."]`.
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

/// One added layer as the config records it.
#[derive(Debug, Clone)]
pub struct AddedLayer {
    pub diff_id: String,
    pub created_by: String,
}

/// The config of an empty image (`FROM scratch`), with Docker's default PATH.
pub fn scratch_config(platform: &Platform) -> Value {
    let mut config = json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [],
    });
    if let Some(variant) = &platform.variant {
        config["variant"] = json!(variant);
    }
    config
}

/// RFC 3339 of a Unix time; a fixed time keeps digests reproducible.
pub fn rfc3339(seconds: u64) -> String {
    jiff::Timestamp::from_second(seconds as i64)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_string()
}

/// Applies `changes` and the added layers to a base image config.
pub fn apply(
    image: &mut Value,
    changes: &ConfigChanges,
    layers: &[AddedLayer],
    created: &str,
) -> Result<(), ConfigError> {
    let image = image.as_object_mut().ok_or(ConfigError::NotAnObject)?;
    let config = object(image, "config");

    if let Some(env) = &changes.env {
        let list = array(config, "Env");
        for entry in env {
            let key = match entry.split_once('=') {
                Some((key, _)) if !key.is_empty() => key,
                _ => return Err(ConfigError::Env(entry.clone())),
            };
            let prefix = format!("{key}=");
            match list.iter_mut().find(|v| {
                v.as_str()
                    .is_some_and(|s| s.starts_with(&prefix) || s == key)
            }) {
                Some(existing) => *existing = json!(entry),
                None => list.push(json!(entry)),
            }
        }
    }
    if let Some(entrypoint) = &changes.entrypoint {
        config.insert("Entrypoint".into(), json!(entrypoint));
        // Docker: a new entrypoint drops the inherited cmd.
        if changes.cmd.is_none() {
            config.remove("Cmd");
        }
    }
    if let Some(cmd) = &changes.cmd {
        config.insert("Cmd".into(), json!(cmd));
    }
    for (key, value) in [
        ("User", &changes.user),
        ("WorkingDir", &changes.working_dir),
        ("StopSignal", &changes.stop_signal),
    ] {
        if let Some(value) = value {
            config.insert(key.into(), json!(value));
        }
    }
    if let Some(ports) = &changes.exposed_ports {
        let map = object(config, "ExposedPorts");
        for port in ports {
            map.insert(normalize_port(port)?, json!({}));
        }
    }
    if let Some(volumes) = &changes.volumes {
        let map = object(config, "Volumes");
        for volume in volumes {
            map.insert(volume.clone(), json!({}));
        }
    }
    if let Some(labels) = &changes.labels {
        let map = object(config, "Labels");
        for (key, value) in labels {
            map.insert(key.clone(), json!(value));
        }
    }
    if let Some(check) = &changes.healthcheck {
        let mut value = Map::new();
        value.insert("Test".into(), json!(check.test));
        for (key, field, duration) in [
            ("Interval", "interval", &check.interval),
            ("Timeout", "timeout", &check.timeout),
            ("StartPeriod", "startPeriod", &check.start_period),
            ("StartInterval", "startInterval", &check.start_interval),
        ] {
            if let Some(text) = duration {
                let nanos = parse_duration(text).ok_or_else(|| ConfigError::Duration {
                    field,
                    value: text.clone(),
                })?;
                value.insert(key.into(), json!(nanos));
            }
        }
        if let Some(retries) = check.retries {
            value.insert("Retries".into(), json!(retries));
        }
        config.insert("Healthcheck".into(), Value::Object(value));
    }

    let rootfs = object(image, "rootfs");
    rootfs.entry("type").or_insert_with(|| json!("layers"));
    let diff_ids = array(rootfs, "diff_ids");
    diff_ids.extend(layers.iter().map(|l| json!(l.diff_id)));
    let history = array(image, "history");
    history.extend(
        layers.iter().map(
            |l| json!({"created": created, "created_by": l.created_by, "comment": "slimforge"}),
        ),
    );
    image.insert("created".into(), json!(created));
    Ok(())
}

/// The object at `key`, created (or replacing a null) when missing.
fn object<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = map.entry(key).or_insert_with(|| json!({}));
    if !slot.is_object() {
        *slot = json!({});
    }
    slot.as_object_mut().expect("just made an object")
}

fn array<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let slot = map.entry(key).or_insert_with(|| json!([]));
    if !slot.is_array() {
        *slot = json!([]);
    }
    slot.as_array_mut().expect("just made an array")
}

fn normalize_port(port: &str) -> Result<String, ConfigError> {
    let (number, protocol) = port.split_once('/').unwrap_or((port, "tcp"));
    let protocol = protocol.to_ascii_lowercase();
    if number.parse::<u16>().is_err() || !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
        return Err(ConfigError::Port(port.to_string()));
    }
    Ok(format!("{number}/{protocol}"))
}

/// Go-style durations (`1m30s`, `500ms`) in nanoseconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(0);
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale: f64 = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add((number * scale).round() as u64)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/bin:/bin", "LANG=C"],
                "Cmd": ["sh"],
                "Labels": {"base": "yes"},
            },
            "rootfs": {"type": "layers", "diff_ids": ["sha256:aa"]},
            "history": [{"created_by": "base"}],
            "unknown_field": {"kept": true},
        })
    }

    #[test]
    fn env_merges_by_key_and_keeps_path() {
        let mut image = base();
        let changes = ConfigChanges {
            env: Some(vec!["LANG=C.UTF-8".into(), "APP=1".into()]),
            ..Default::default()
        };
        apply(&mut image, &changes, &[], "1970-01-01T00:00:00Z").unwrap();
        assert_eq!(
            image["config"]["Env"],
            json!(["PATH=/usr/bin:/bin", "LANG=C.UTF-8", "APP=1"])
        );
        assert_eq!(image["unknown_field"], json!({"kept": true}));
    }

    #[test]
    fn entrypoint_clears_inherited_cmd_unless_given() {
        let mut image = base();
        let changes = ConfigChanges {
            entrypoint: Some(vec!["/app".into()]),
            ..Default::default()
        };
        apply(&mut image, &changes, &[], "t").unwrap();
        assert!(image["config"].get("Cmd").is_none());

        let mut image = base();
        let changes = ConfigChanges {
            entrypoint: Some(vec!["/app".into()]),
            cmd: Some(vec!["--help".into()]),
            ..Default::default()
        };
        apply(&mut image, &changes, &[], "t").unwrap();
        assert_eq!(image["config"]["Cmd"], json!(["--help"]));
    }

    #[test]
    fn empty_list_differs_from_absent() {
        let mut image = base();
        let changes = ConfigChanges {
            cmd: Some(vec![]),
            ..Default::default()
        };
        apply(&mut image, &changes, &[], "t").unwrap();
        assert_eq!(image["config"]["Cmd"], json!([]));

        let mut image = base();
        apply(&mut image, &ConfigChanges::default(), &[], "t").unwrap();
        assert_eq!(image["config"]["Cmd"], json!(["sh"]));
    }

    #[test]
    fn layers_add_diff_ids_and_history() {
        let mut image = base();
        let layers = [AddedLayer {
            diff_id: "sha256:bb".into(),
            created_by: "COPY app /app".into(),
        }];
        apply(
            &mut image,
            &ConfigChanges::default(),
            &layers,
            "1970-01-01T00:00:00Z",
        )
        .unwrap();
        assert_eq!(
            image["rootfs"]["diff_ids"],
            json!(["sha256:aa", "sha256:bb"])
        );
        assert_eq!(image["history"].as_array().unwrap().len(), 2);
        assert_eq!(
            image["history"][1]["created"],
            json!("1970-01-01T00:00:00Z")
        );
        assert_eq!(image["created"], json!("1970-01-01T00:00:00Z"));
    }

    #[test]
    fn metadata_fields_merge() {
        let mut image = base();
        let changes = ConfigChanges {
            exposed_ports: Some(vec!["8080".into(), "53/udp".into()]),
            labels: Some([("app".to_string(), "x".to_string())].into()),
            volumes: Some(vec!["/data".into()]),
            healthcheck: Some(Healthcheck {
                test: vec!["CMD".into(), "/app".into()],
                interval: Some("1m30s".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        apply(&mut image, &changes, &[], "t").unwrap();
        let config = &image["config"];
        assert_eq!(
            config["ExposedPorts"],
            json!({"8080/tcp": {}, "53/udp": {}})
        );
        assert_eq!(config["Labels"], json!({"base": "yes", "app": "x"}));
        assert_eq!(config["Volumes"], json!({"/data": {}}));
        assert_eq!(config["Healthcheck"]["Interval"], json!(90_000_000_000u64));
    }

    #[test]
    fn bad_values_name_the_field() {
        let mut image = base();
        let changes = ConfigChanges {
            env: Some(vec!["NOVALUE".into()]),
            ..Default::default()
        };
        let err = apply(&mut image, &changes, &[], "t").unwrap_err();
        assert!(err.to_string().contains("config.env"), "{err}");
        assert_eq!(parse_duration("500ms"), Some(500_000_000));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
