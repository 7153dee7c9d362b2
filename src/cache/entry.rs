//! STUB (replaced by the cache-entry branch).
use serde::{Deserialize, Serialize};
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedExport {
    pub id: String,
    pub digest: String,
    pub size: u64,
}
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainEntry {
    pub key: String,
    pub chain: String,
    pub result: serde_json::Value,
    pub exports: Vec<CachedExport>,
}
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageEntry {
    pub key: String,
    pub image: crate::contract::AssembleResult,
}
