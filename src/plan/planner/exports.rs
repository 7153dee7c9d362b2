//! What each chain, and each image extraction, hands on to others: the
//! files, who uses them, and which chain waits for which.

use crate::plan::{Chain, Consumer, Export, Extraction};

/// Export lists being gathered, per chain and per extraction image.
pub(super) struct Exports {
    pub(super) chain_ids: Vec<String>,
    pub(super) chain_exports: Vec<Vec<Export>>,
    /// Per chain: (chain or extraction id, first line that needs it).
    pub(super) depends_on: Vec<Vec<(String, usize)>>,
    /// (id, image, exports)
    pub(super) extractions: Vec<(String, String, Vec<Export>)>,
}

impl Exports {
    /// Empty lists for the chains of these ids.
    pub(super) fn new(chain_ids: Vec<String>) -> Self {
        let n = chain_ids.len();
        Self {
            chain_ids,
            chain_exports: vec![Vec::new(); n],
            depends_on: vec![Vec::new(); n],
            extractions: Vec::new(),
        }
    }

    /// Records that `chain` needs `on` (a chain or an extraction), first
    /// on `line`.
    pub(super) fn depend(&mut self, chain: usize, on: String, line: usize) {
        if !self.depends_on[chain].iter().any(|(id, _)| *id == on) {
            self.depends_on[chain].push((on, line));
        }
    }

    /// A file a chain hands on from one of its stages; returns its id.
    pub(super) fn add_chain_export(
        &mut self,
        chain: usize,
        stage: &str,
        path: &str,
        consumer: &Consumer,
    ) -> String {
        let owner = self.chain_ids.get(chain).cloned().unwrap_or_default();
        let Some(list) = self.chain_exports.get_mut(chain) else {
            return String::new();
        };
        add_export(list, &owner, Some(stage), path, consumer)
    }

    /// Files an extraction takes out of an image (one extraction per
    /// image); returns the extraction's id and the files' ids.
    pub(super) fn add_image_export(
        &mut self,
        image: &str,
        paths: &[String],
        consumer: &Consumer,
    ) -> (String, Vec<String>) {
        let position = match self.extractions.iter().position(|(_, i, _)| i == image) {
            Some(position) => position,
            None => {
                let mut n = self.extractions.len() + 1;
                let id = loop {
                    let id = format!("extract-{n}");
                    if !self.chain_ids.contains(&id) {
                        break id;
                    }
                    n += 1;
                };
                self.extractions.push((id, image.to_string(), Vec::new()));
                self.extractions.len() - 1
            }
        };
        let (id, _, list) = &mut self.extractions[position];
        let ids = paths
            .iter()
            .map(|p| add_export(list, id, None, p, consumer))
            .collect();
        (id.clone(), ids)
    }
}

impl Exports {
    /// Gives each chain what it exports and what it waits for.
    pub(super) fn attach_to(&self, chains: &mut [Chain]) {
        for (c, chain) in chains.iter_mut().enumerate() {
            chain.exports = self.chain_exports[c].clone();
            chain.depends_on = self.depends_on[c]
                .iter()
                .map(|(id, _)| id.clone())
                .collect();
        }
    }

    /// The image extractions, pulled for the build's platform.
    pub(super) fn extractions(&self, platform: &str) -> Vec<Extraction> {
        self.extractions
            .iter()
            .map(|(id, image, exports)| Extraction {
                id: id.clone(),
                image: image.clone(),
                platform: platform.to_string(),
                exports: exports.clone(),
            })
            .collect()
    }
}

/// Adds an export to a list, or a consumer to the export of the same
/// path and stage; returns the export's id.
fn add_export(
    list: &mut Vec<Export>,
    owner: &str,
    stage: Option<&str>,
    path: &str,
    consumer: &Consumer,
) -> String {
    if let Some(existing) = list
        .iter_mut()
        .find(|e| e.path == path && e.stage.as_deref() == stage)
    {
        if !existing.consumers.contains(consumer) {
            existing.consumers.push(consumer.clone());
        }
        return existing.id.clone();
    }
    let id = format!("{owner}-{}", list.len() + 1);
    list.push(Export {
        id: id.clone(),
        stage: stage.map(str::to_string),
        path: path.to_string(),
        consumers: vec![consumer.clone()],
    });
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(stage: &str, line: usize) -> Consumer {
        Consumer {
            stage: stage.into(),
            line,
        }
    }

    #[test]
    fn one_export_per_path_with_every_consumer() {
        let mut exports = Exports::new(vec!["build".into(), "extract-1".into()]);
        let first = exports.add_chain_export(0, "build", "/out/app", &consumer("final", 3));
        let again = exports.add_chain_export(0, "build", "/out/app", &consumer("final", 4));
        let other = exports.add_chain_export(0, "build", "/out/lib", &consumer("final", 5));
        assert_eq!((first.as_str(), again.as_str()), ("build-1", "build-1"));
        assert_eq!(other, "build-2");
        assert_eq!(exports.chain_exports[0][0].consumers.len(), 2);
    }

    #[test]
    fn extractions_are_per_image_and_avoid_chain_ids() {
        let mut exports = Exports::new(vec!["extract-1".into()]);
        let paths = ["/a".to_string()];
        let (id, ids) = exports.add_image_export("alpine", &paths, &consumer("x", 2));
        assert_eq!(
            (id.as_str(), ids),
            ("extract-2", vec!["extract-2-1".into()])
        );
        let (same, _) = exports.add_image_export("alpine", &paths, &consumer("x", 3));
        assert_eq!(same, id);
        assert_eq!(exports.extractions.len(), 1);
    }

    #[test]
    fn a_dependency_is_kept_once_with_its_first_line() {
        let mut exports = Exports::new(vec!["a".into(), "b".into()]);
        exports.depend(1, "a".into(), 7);
        exports.depend(1, "a".into(), 9);
        assert_eq!(exports.depends_on[1], vec![("a".to_string(), 7)]);
    }
}
