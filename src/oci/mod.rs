//! The image engine: reproducible layers, registry access, image configs.

pub mod config;
pub mod gzip;
pub mod layer;
pub mod reference;
pub mod registry;

use std::fmt;
use std::str::FromStr;

/// An OS/architecture pair such as `linux/amd64` or `linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Default for Platform {
    fn default() -> Self {
        Self {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

impl FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let valid =
            |p: &&str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        match parts.as_slice() {
            [os, arch] if valid(os) && valid(arch) => Ok(Self {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, variant] if valid(os) && valid(arch) && valid(variant) => Ok(Self {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(variant.to_string()),
            }),
            _ => Err(format!(
                "invalid platform `{s}`: expected os/arch or os/arch/variant, e.g. linux/amd64"
            )),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// The platform of an index entry (`{"os", "architecture", "variant"}`).
    pub fn from_json(value: &serde_json::Value) -> Option<Self> {
        Some(Self {
            os: value["os"].as_str()?.to_string(),
            architecture: value["architecture"].as_str()?.to_string(),
            variant: value["variant"].as_str().map(str::to_string),
        })
    }

    /// Whether an index entry's platform serves this one. Without a variant
    /// asked for, any variant matches; arm64's `v8` is its default.
    pub fn matches(&self, value: &serde_json::Value) -> bool {
        let Some(other) = Self::from_json(value) else {
            return false;
        };
        let normal = |p: &Platform| match (p.architecture.as_str(), p.variant.as_deref()) {
            ("arm64", Some("v8")) => None,
            (_, variant) => variant.map(str::to_string),
        };
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || normal(self) == normal(&other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn platform_parses_and_matches_index_entries() {
        let amd64: Platform = "linux/amd64".parse().unwrap();
        assert!(amd64.matches(&json!({"os": "linux", "architecture": "amd64"})));
        assert!(!amd64.matches(&json!({"os": "linux", "architecture": "arm64"})));
        let arm: Platform = "linux/arm64/v8".parse().unwrap();
        assert!(arm.matches(&json!({"os": "linux", "architecture": "arm64"})));
        assert!(!arm.matches(&json!({"os": "linux", "architecture": "arm", "variant": "v7"})));
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux/amd64/v1/x".parse::<Platform>().is_err());
        assert_eq!(arm.to_string(), "linux/arm64/v8");
    }
}
