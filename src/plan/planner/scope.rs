//! The variables a stage sees: the global ARGs before the first FROM,
//! each stage's ARG and ENV, and what is only known at run time (the base
//! image's environment).

use std::collections::BTreeMap;

use super::budget::Budget;
use super::{Planner, instruction_error};
use crate::dockerfile::expand::ExpandError;
use crate::dockerfile::{DockerfileError, Instruction, InstructionError, Statement};
use crate::plan::{ArgBinding, ArgOrigin, PlanError};

/// What one variable costs beyond its bytes when a stage copies a scope.
const ENTRY_BYTES: usize = 64;

/// What the planner knows of a variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Binding {
    Set(String),
    Unset,
    /// Depends on the image's environment.
    Unknown,
}

/// The variables visible at one point of a stage, as far as the
/// Dockerfile and the build args tell.
#[derive(Debug, Clone, Default)]
pub(super) struct Scope {
    pub(super) env: BTreeMap<String, Binding>,
    pub(super) args: BTreeMap<String, Binding>,
    /// Names not set here may come from the base image's ENV.
    pub(super) image_env_unknown: bool,
    /// An ENV set a name that could not be known: nothing can be trusted.
    pub(super) poisoned: bool,
}

impl Scope {
    /// What is known of `name` here.
    pub(super) fn get(&self, name: &str) -> Binding {
        if self.poisoned {
            return Binding::Unknown;
        }
        // ENV wins over ARG, as in Docker. The planner assumes the base
        // image's ENV does not shadow an ARG the Dockerfile declares; the
        // helper re-expands with the real environment and can check.
        if let Some(binding) = self.env.get(name).or_else(|| self.args.get(name)) {
            return binding.clone();
        }
        if self.image_env_unknown {
            Binding::Unknown
        } else {
            Binding::Unset
        }
    }

    /// Expands a word; `Err(names)` when it needs names only known at run time.
    pub(super) fn expand(
        &self,
        word: &str,
        escape: char,
        budget: &Budget,
    ) -> Result<Result<String, Vec<String>>, ExpandError> {
        let mut unknown = Vec::new();
        let value = budget.expand(word, escape, &mut |name| match self.get(name) {
            Binding::Set(v) => Some(v),
            Binding::Unset => None,
            Binding::Unknown => {
                if !unknown.iter().any(|n| n == name) {
                    unknown.push(name.to_string());
                }
                None
            }
        })?;
        Ok(if unknown.is_empty() {
            Ok(value)
        } else {
            Err(unknown)
        })
    }

    /// What copying this scope costs against the budget.
    pub(super) fn weight(&self) -> usize {
        let entry = |(name, binding): (&String, &Binding)| {
            ENTRY_BYTES
                + name.len()
                + match binding {
                    Binding::Set(value) => value.len(),
                    _ => 0,
                }
        };
        self.env.iter().chain(&self.args).map(entry).sum()
    }
}

impl Planner<'_> {
    /// The ARGs before the first FROM, in order; each default sees the
    /// ones before it and the automatic platform args.
    pub(super) fn global_scope(&mut self) -> Result<(), PlanError> {
        for statement in &self.file.global_args {
            let Instruction::Arg(declarations) = &statement.instruction else {
                continue;
            };
            for declaration in declarations {
                self.declared_globals.insert(declaration.name.clone());
                let value = if let Some(value) = self.request.build_args.get(&declaration.name) {
                    Some(value.clone())
                } else if let Some(default) = &declaration.default {
                    let globals = &self.globals;
                    let value = self
                        .budget
                        .expand(default, self.escape, &mut |name| {
                            globals.get(name).cloned().flatten()
                        })
                        .map_err(|error| {
                            instruction_error(
                                statement,
                                InstructionError::Expand {
                                    what: format!("ARG {}", declaration.name),
                                    error,
                                },
                            )
                        })?;
                    Some(value)
                } else {
                    // A bare `ARG TARGETARCH` keeps the automatic value.
                    self.globals.get(&declaration.name).cloned().flatten()
                };
                self.globals.insert(declaration.name.clone(), value);
            }
        }
        Ok(())
    }

    /// A stage's ARG: a build arg wins, then the default, then the global
    /// value of the same name (a bare redeclaration), else unset.
    pub(super) fn stage_arg(
        &self,
        scope: &Scope,
        name: &str,
        default: Option<&str>,
    ) -> Result<(Binding, ArgBinding), ExpandError> {
        let binding = |from, value: Option<String>| ArgBinding {
            name: name.to_string(),
            from,
            value,
        };
        if let Some(value) = self.request.build_args.get(name) {
            return Ok((
                Binding::Set(value.clone()),
                binding(ArgOrigin::BuildArg, Some(value.clone())),
            ));
        }
        if let Some(default) = default {
            let known = match scope.expand(default, self.escape, &self.budget)? {
                Ok(value) => Binding::Set(value),
                Err(_) => Binding::Unknown,
            };
            return Ok((
                known,
                binding(ArgOrigin::Default, Some(default.to_string())),
            ));
        }
        if let Some(value) = self.globals.get(name) {
            let known = match value {
                Some(v) => Binding::Set(v.clone()),
                None => Binding::Unset,
            };
            return Ok((known, binding(ArgOrigin::Global, value.clone())));
        }
        Ok((Binding::Unset, binding(ArgOrigin::Unset, None)))
    }

    /// Expands a word whose value the plan needs now (a `--from`, a
    /// source path): a name known only at run time is an error that says
    /// how to declare it.
    pub(super) fn expand_needed(
        &self,
        statement: &Statement,
        scope: &Scope,
        what: &str,
        word: &str,
    ) -> Result<String, DockerfileError> {
        match scope.expand(word, self.escape, &self.budget) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(names)) => {
                let globals: Vec<&String> = names
                    .iter()
                    .filter(|n| self.globals.contains_key(*n))
                    .collect();
                let hint = match globals.first() {
                    Some(name) => format!(
                        "; ARG {name} before the first FROM is visible only in FROM lines: declare `ARG {name}` in this stage"
                    ),
                    None => "; define it with ARG or ENV in the Dockerfile".into(),
                };
                Err(instruction_error(
                    statement,
                    InstructionError::RunTimeValue {
                        what: what.to_string(),
                        word: word.to_string(),
                        names: names
                            .iter()
                            .map(|n| format!("${n}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        hint,
                    },
                ))
            }
            Err(error) => Err(instruction_error(
                statement,
                InstructionError::Expand {
                    what: what.to_string(),
                    error,
                },
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(value: &str) -> Binding {
        Binding::Set(value.into())
    }

    #[test]
    fn env_wins_over_arg_and_the_image_may_define_the_rest() {
        let mut scope = Scope {
            env: BTreeMap::from([("A".into(), set("env"))]),
            args: BTreeMap::from([("A".into(), set("arg")), ("B".into(), set("b"))]),
            ..Scope::default()
        };
        assert_eq!(scope.get("A"), set("env"));
        assert_eq!(scope.get("B"), set("b"));
        assert_eq!(scope.get("C"), Binding::Unset);
        scope.image_env_unknown = true;
        assert_eq!(scope.get("C"), Binding::Unknown);
        scope.poisoned = true;
        assert_eq!(scope.get("A"), Binding::Unknown);
    }

    #[test]
    fn expansion_names_what_only_the_run_time_knows() {
        let scope = Scope {
            args: BTreeMap::from([("A".into(), set("a")), ("U".into(), Binding::Unknown)]),
            ..Scope::default()
        };
        let budget = Budget::default();
        assert_eq!(scope.expand("$A-$B", '\\', &budget), Ok(Ok("a-".into())));
        assert_eq!(
            scope.expand("$U/$U/$A", '\\', &budget),
            Ok(Err(vec!["U".to_string()]))
        );
    }

    #[test]
    fn weight_counts_every_name_and_known_value() {
        let scope = Scope {
            env: BTreeMap::from([("PATH".into(), set("/bin"))]),
            args: BTreeMap::from([("X".into(), Binding::Unknown)]),
            ..Scope::default()
        };
        assert_eq!(scope.weight(), (ENTRY_BYTES + 4 + 4) + (ENTRY_BYTES + 1));
    }
}
