//! The order to run things in: extractions first, then each chain one
//! wave after the last thing it waits for.

use std::collections::BTreeMap;

use crate::plan::{Chain, Extraction, PlanError};

/// Levels of the dependency graph; a cycle is an error naming both lines.
pub(super) fn waves(
    chains: &[Chain],
    extractions: &[Extraction],
    depends_on: &[Vec<(String, usize)>],
) -> Result<Vec<Vec<String>>, PlanError> {
    let mut level: BTreeMap<String, usize> = BTreeMap::new();
    for extraction in extractions {
        level.insert(extraction.id.clone(), 0);
    }
    let mut remaining: Vec<usize> = (0..chains.len()).collect();
    while !remaining.is_empty() {
        let before = remaining.len();
        remaining.retain(|&c| {
            let deps: Option<Vec<usize>> = depends_on[c]
                .iter()
                .map(|(id, _)| level.get(id).copied())
                .collect();
            match deps {
                Some(deps) => {
                    let wave = deps.iter().map(|d| d + 1).max().unwrap_or(0);
                    level.insert(chains[c].id.clone(), wave);
                    false
                }
                None => true,
            }
        });
        if remaining.len() == before {
            return Err(cycle_error(chains, depends_on, &remaining));
        }
    }
    let count = level.values().max().map_or(0, |m| m + 1);
    let mut waves = vec![Vec::new(); count];
    for extraction in extractions {
        waves[0].push(extraction.id.clone());
    }
    for chain in chains {
        if let Some(wave) = level.get(&chain.id) {
            waves[*wave].push(chain.id.clone());
        }
    }
    Ok(waves)
}

/// The error for chains that wait for each other: two of the cycle, each
/// with the line that makes it wait.
fn cycle_error(
    chains: &[Chain],
    depends_on: &[Vec<(String, usize)>],
    stuck: &[usize],
) -> PlanError {
    // Follow unmet dependencies among the stuck chains until one repeats.
    let index_of = |id: &str| chains.iter().position(|c| c.id == id);
    let mut seen = Vec::new();
    let mut current = stuck[0];
    loop {
        if let Some(position) = seen.iter().position(|(c, _)| *c == current) {
            let cycle = &seen[position..];
            let (first, first_line): (usize, usize) = cycle[0];
            let (second, second_line) = cycle.get(1).copied().unwrap_or(cycle[0]);
            return PlanError::ChainCycle {
                first: chains[first].id.clone(),
                first_line,
                second: chains[second].id.clone(),
                second_line,
            };
        }
        let next = depends_on[current]
            .iter()
            .filter_map(|(id, line)| index_of(id).map(|c| (c, *line)))
            .find(|(c, _)| stuck.contains(c));
        let Some((next, line)) = next else {
            return PlanError::ChainCycle {
                first: chains[current].id.clone(),
                first_line: 0,
                second: chains[current].id.clone(),
                second_line: 0,
            };
        };
        seen.push((current, line));
        current = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::ChainRole;

    fn chain(id: &str) -> Chain {
        Chain {
            id: id.into(),
            image: "alpine".into(),
            platform: "linux/amd64".into(),
            role: ChainRole::Builder,
            stages: Vec::new(),
            depends_on: Vec::new(),
            needs_context: false,
            exports: Vec::new(),
        }
    }

    fn extraction(id: &str) -> Extraction {
        Extraction {
            id: id.into(),
            image: "golang".into(),
            platform: "linux/amd64".into(),
            exports: Vec::new(),
        }
    }

    fn on(id: &str, line: usize) -> (String, usize) {
        (id.into(), line)
    }

    #[test]
    fn each_chain_runs_a_wave_after_what_it_waits_for() {
        let chains = [chain("a"), chain("b"), chain("c")];
        let depends_on = [
            vec![on("extract-1", 2)],
            vec![],
            vec![on("a", 5), on("b", 6)],
        ];
        let waves = waves(&chains, &[extraction("extract-1")], &depends_on).unwrap();
        assert_eq!(waves, [vec!["extract-1", "b"], vec!["a"], vec!["c"]]);
    }

    #[test]
    fn a_cycle_names_two_of_its_chains_and_their_lines() {
        let chains = [chain("x"), chain("y")];
        let depends_on = [vec![on("y", 4)], vec![on("x", 9)]];
        let error = waves(&chains, &[], &depends_on).unwrap_err();
        assert_eq!(
            error,
            PlanError::ChainCycle {
                first: "x".into(),
                first_line: 4,
                second: "y".into(),
                second_line: 9,
            }
        );
    }
}
