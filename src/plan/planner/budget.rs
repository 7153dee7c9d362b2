//! The bound on what planning may spend on variables: a hostile
//! Dockerfile can make values grow with every ARG, ENV and stage.

use std::cell::Cell;

use crate::dockerfile::expand::{ExpandError, expand_word};

/// What planning one Dockerfile may spend on variables, in bytes: every
/// expanded value, and every stage's copy of its parent's variables.
/// Real Dockerfiles use kilobytes; this bounds what a hostile one can make
/// the controller hold.
pub const MAX_EXPANSION_BYTES: usize = 16 * 1024 * 1024;

/// The bytes spent so far against [`MAX_EXPANSION_BYTES`].
#[derive(Default)]
pub(super) struct Budget {
    spent: Cell<usize>,
}

impl Budget {
    /// Adds `bytes` to what is spent; over the limit, the error carries
    /// `note` to say what was being paid for.
    pub(super) fn charge(&self, bytes: usize, note: &'static str) -> Result<(), ExpandError> {
        let spent = self.spent.get().saturating_add(bytes);
        self.spent.set(spent);
        if spent > MAX_EXPANSION_BYTES {
            return Err(ExpandError::OverBudget {
                limit: MAX_EXPANSION_BYTES,
                note,
            });
        }
        Ok(())
    }

    /// Expands with `lookup`, charging the result.
    pub(super) fn expand(
        &self,
        word: &str,
        escape: char,
        lookup: &mut dyn FnMut(&str) -> Option<String>,
    ) -> Result<String, ExpandError> {
        let value = expand_word(word, escape, lookup)?;
        self.charge(value.len(), "")?;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_add_up_to_the_limit_and_no_further() {
        let budget = Budget::default();
        assert_eq!(budget.charge(MAX_EXPANSION_BYTES - 1, ""), Ok(()));
        assert_eq!(budget.charge(1, ""), Ok(()));
        assert_eq!(
            budget.charge(1, " (a note)"),
            Err(ExpandError::OverBudget {
                limit: MAX_EXPANSION_BYTES,
                note: " (a note)",
            })
        );
    }

    #[test]
    fn an_expansion_is_charged_its_value() {
        let budget = Budget::default();
        let value = budget
            .expand("$A$A", '\\', &mut |_| Some("xyz".into()))
            .unwrap();
        assert_eq!(value, "xyzxyz");
        assert_eq!(budget.spent.get(), 6);
    }
}
