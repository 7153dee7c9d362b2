//! STUB (replaced by the cache-key branch).
use std::collections::BTreeMap;
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Keys {
    pub units: BTreeMap<String, String>,
    pub image: String,
}
