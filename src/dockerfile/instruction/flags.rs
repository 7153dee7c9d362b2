//! An instruction's `--flags`: which it accepts (with a value, or as a
//! boolean), which it knows but refuses, and why.

use std::collections::BTreeMap;

use crate::dockerfile::InstructionError;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum FlagKind {
    Value,
    Bool,
}

/// The flags an instruction accepts, and those it knows but refuses.
pub(super) struct FlagRules {
    pub(super) accepted: &'static [(&'static str, FlagKind)],
    pub(super) refused: &'static [(&'static str, &'static str)],
}

/// For the instructions that take none.
pub(super) const NO_FLAGS: FlagRules = FlagRules {
    accepted: &[],
    refused: &[],
};

enum FlagValue {
    Value(String),
    Bool(bool),
}

/// The flags given, by name.
pub(super) struct Flags(BTreeMap<&'static str, FlagValue>);

impl Flags {
    /// A value flag's value, if given.
    pub(super) fn value(&self, name: &str) -> Option<String> {
        match self.0.get(name) {
            Some(FlagValue::Value(v)) => Some(v.clone()),
            _ => None,
        }
    }

    /// Whether a boolean flag is given and true.
    pub(super) fn is_set(&self, name: &str) -> bool {
        matches!(self.0.get(name), Some(FlagValue::Bool(true)))
    }
}

/// Checks the flag words against the rules: unknown, refused, valueless
/// or repeated flags are errors.
pub(super) fn parse_flags(words: &[String], rules: &FlagRules) -> Result<Flags, InstructionError> {
    let mut flags = BTreeMap::new();
    for word in words {
        let body = word.strip_prefix("--").unwrap_or(word);
        let (name, value) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (body, None),
        };
        if let Some((_, why)) = rules.refused.iter().find(|(n, _)| *n == name) {
            return Err(InstructionError::Unsupported(why.to_string()));
        }
        let Some(&(known, kind)) = rules.accepted.iter().find(|(n, _)| *n == name) else {
            return Err(InstructionError::UnknownFlag {
                flag: name.to_string(),
                accepted: accepted_list(rules),
            });
        };
        let parsed = match (kind, value) {
            (FlagKind::Value, Some(v)) if !v.is_empty() => FlagValue::Value(v.to_string()),
            (FlagKind::Value, _) => {
                return Err(InstructionError::MissingFlagValue {
                    flag: known.to_string(),
                });
            }
            (FlagKind::Bool, None) => FlagValue::Bool(true),
            (FlagKind::Bool, Some(v)) if v.eq_ignore_ascii_case("true") => FlagValue::Bool(true),
            (FlagKind::Bool, Some(v)) if v.eq_ignore_ascii_case("false") => FlagValue::Bool(false),
            (FlagKind::Bool, Some(v)) => {
                return Err(InstructionError::BadFlagValue {
                    flag: known.to_string(),
                    value: v.to_string(),
                    reason: "expected true or false".into(),
                });
            }
        };
        if flags.insert(known, parsed).is_some() {
            return Err(InstructionError::DuplicateFlag {
                flag: known.to_string(),
            });
        }
    }
    Ok(Flags(flags))
}

/// The accepted flags, for an error about an unknown one.
fn accepted_list(rules: &FlagRules) -> String {
    if rules.accepted.is_empty() {
        return "it takes no flags".into();
    }
    let names: Vec<String> = rules
        .accepted
        .iter()
        .map(|(n, _)| format!("--{n}"))
        .collect();
    format!("accepted: {}", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: FlagRules = FlagRules {
        accepted: &[("from", FlagKind::Value), ("link", FlagKind::Bool)],
        refused: &[("parents", "not yet")],
    };

    fn words(flags: &[&str]) -> Vec<String> {
        flags.iter().map(std::string::ToString::to_string).collect()
    }

    #[test]
    fn values_and_booleans_are_read() {
        let flags = parse_flags(&words(&["--from=build", "--link"]), &RULES).unwrap();
        assert_eq!(flags.value("from").as_deref(), Some("build"));
        assert!(flags.is_set("link"));
        let flags = parse_flags(&words(&["--link=FALSE"]), &RULES).unwrap();
        assert!(!flags.is_set("link"));
        assert_eq!(flags.value("from"), None);
    }

    #[test]
    fn an_unknown_flag_lists_the_accepted_ones() {
        let error = parse_flags(&words(&["--form=x"]), &RULES).err();
        assert_eq!(
            error,
            Some(InstructionError::UnknownFlag {
                flag: "form".into(),
                accepted: "accepted: --from, --link".into(),
            })
        );
        let error = parse_flags(&words(&["--x"]), &NO_FLAGS).err();
        assert!(error.is_some_and(|e| e.to_string().contains("it takes no flags")));
    }

    #[test]
    fn a_refused_flag_says_why() {
        let error = parse_flags(&words(&["--parents"]), &RULES).err();
        assert_eq!(error, Some(InstructionError::Unsupported("not yet".into())));
    }
}
