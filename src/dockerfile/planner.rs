//! The stage graph → BuildPlan: which stages the target needs, how they
//! group into chains (one pod each), what each chain exports, which images
//! need an extraction step, and whether the final image can be assembled
//! or needs a runtime pod.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};

use super::expand::{ExpandError, expand_word};
use super::instruction::{Instruction, is_remote, written_as_directory};
use super::{
    Dockerfile, DockerfileError, InstructionError, Stage, Statement, edit_distance, within_edits,
};
use crate::oci::Platform;
use crate::plan::{
    ArgBinding, ArgOrigin, AssemblePlan, BuildPlan, Chain, ChainRole, ChainStage, Consumer,
    CopySource, Export, Extraction, FinalImage, PlanError, PlanRequest, RuntimePlan, StageRef,
    Step, Warning,
};

/// What planning one Dockerfile may spend on variables, in bytes: every
/// expanded value, and every stage's copy of its parent's variables.
/// Real Dockerfiles use kilobytes; this bounds what a hostile one can make
/// the controller hold.
pub const MAX_EXPANSION_BYTES: usize = 16 * 1024 * 1024;

/// What one variable costs beyond its bytes when a stage copies a scope.
const ENTRY_BYTES: usize = 64;

/// The bytes spent so far against [`MAX_EXPANSION_BYTES`].
#[derive(Default)]
struct Budget {
    spent: Cell<usize>,
}

impl Budget {
    fn charge(&self, bytes: usize, note: &'static str) -> Result<(), ExpandError> {
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
    fn expand(
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

/// Docker's PATH for an image without one (scratch).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Build args Docker passes to RUN without an ARG.
const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Parses the request's Dockerfile and plans the build.
pub fn build_plan(request: &PlanRequest) -> Result<BuildPlan, PlanError> {
    let file = super::parse(&request.dockerfile)?;
    plan_parsed(&file, request)
}

/// Plans an already parsed Dockerfile with the request's parameters (its
/// `dockerfile` text is not read again).
pub fn plan_parsed(file: &Dockerfile, request: &PlanRequest) -> Result<BuildPlan, PlanError> {
    let platform_text = request.platform.as_deref().unwrap_or("linux/amd64");
    let platform = parse_platform(platform_text).map_err(|reason| PlanError::Platform {
        platform: platform_text.to_string(),
        reason,
    })?;
    Planner::new(file, request, platform).plan()
}

fn parse_platform(text: &str) -> Result<Platform, String> {
    let mut platform: Platform = text.to_ascii_lowercase().parse()?;
    platform.architecture = match platform.architecture.as_str() {
        "x86_64" => "amd64".into(),
        "aarch64" => "arm64".into(),
        other => other.to_string(),
    };
    Ok(platform)
}

/// What the planner knows of a variable.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Binding {
    Set(String),
    Unset,
    /// Depends on the image's environment.
    Unknown,
}

/// The variables visible at one point of a stage, as far as the
/// Dockerfile and the build args tell.
#[derive(Debug, Clone, Default)]
struct Scope {
    env: BTreeMap<String, Binding>,
    args: BTreeMap<String, Binding>,
    /// Names not set here may come from the base image's ENV.
    image_env_unknown: bool,
    /// An ENV set a name that could not be known: nothing can be trusted.
    poisoned: bool,
}

impl Scope {
    fn get(&self, name: &str) -> Binding {
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
    fn expand(
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
    fn weight(&self) -> usize {
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

#[derive(Debug, Clone, PartialEq, Eq)]
enum Base {
    Image { reference: String, platform: String },
    Stage(usize),
}

/// Where a COPY/ADD takes its files, as resolved.
#[derive(Debug, Clone)]
enum Origin {
    Context,
    Inline,
    Stage {
        index: usize,
        paths: Vec<String>,
    },
    Image {
        reference: String,
        paths: Vec<String>,
    },
}

#[derive(Debug, Clone, Default)]
struct StepFacts {
    origin: Option<Origin>,
    args: Vec<ArgBinding>,
}

#[derive(Debug, Clone)]
struct StageFacts {
    base: Result<Base, DockerfileError>,
    /// One per instruction of the stage.
    steps: Vec<StepFacts>,
    /// Errors found while walking; they matter only if the stage is needed.
    errors: Vec<DockerfileError>,
    first_run: Option<usize>,
    end: Scope,
    declared_args: BTreeSet<String>,
}

struct Planner<'a> {
    file: &'a Dockerfile,
    request: &'a PlanRequest,
    platform: String,
    escape: char,
    /// ARGs of the global scope and the automatic platform args.
    globals: BTreeMap<String, Option<String>>,
    automatic: BTreeSet<String>,
    declared_globals: BTreeSet<String>,
    /// With the stage they are about: only the needed stages' are kept.
    warnings: Vec<(Option<usize>, Warning)>,
    current_stage: Option<usize>,
    budget: Budget,
}

fn instruction_error(statement: &Statement, error: InstructionError) -> DockerfileError {
    DockerfileError::Instruction {
        line: statement.line,
        instruction: statement.instruction.keyword().to_string(),
        error: Box::new(error),
    }
}

fn from_error(stage: &Stage, error: InstructionError) -> DockerfileError {
    DockerfileError::Instruction {
        line: stage.line,
        instruction: "FROM".into(),
        error: Box::new(error),
    }
}

impl<'a> Planner<'a> {
    fn new(file: &'a Dockerfile, request: &'a PlanRequest, platform: Platform) -> Self {
        let variant = platform.variant.clone().unwrap_or_default();
        let text = platform.to_string();
        let mut globals = BTreeMap::new();
        // Builder pods run on the node's architecture: BUILD* = TARGET*.
        for prefix in ["TARGET", "BUILD"] {
            globals.insert(format!("{prefix}PLATFORM"), Some(text.clone()));
            globals.insert(format!("{prefix}OS"), Some(platform.os.clone()));
            globals.insert(format!("{prefix}ARCH"), Some(platform.architecture.clone()));
            globals.insert(format!("{prefix}VARIANT"), Some(variant.clone()));
        }
        let automatic = globals.keys().cloned().collect();
        Self {
            file,
            request,
            platform: text,
            escape: file.escape,
            globals,
            automatic,
            declared_globals: BTreeSet::new(),
            warnings: Vec::new(),
            current_stage: None,
            budget: Budget::default(),
        }
    }

    fn warn(&mut self, line: Option<usize>, message: String) {
        let warning = (self.current_stage, Warning { line, message });
        if !self.warnings.contains(&warning) {
            self.warnings.push(warning);
        }
    }

    fn plan(mut self) -> Result<BuildPlan, PlanError> {
        if let Some(syntax) = &self.file.syntax {
            let name = syntax.split([':', '@']).next().unwrap_or_default();
            let docker = ["docker/dockerfile", "docker.io/docker/dockerfile"];
            if !docker.contains(&name) {
                self.warn(
                    None,
                    format!(
                        "# syntax={syntax}: slimforge parses the Dockerfile itself; this frontend is not used"
                    ),
                );
            }
        }
        self.global_scope()?;
        let facts = self.analyse_stages();
        let target = self.target()?;
        let needed = self.needed_stages(target, &facts)?;
        self.check_build_args(&needed, &facts);
        self.build(target, &needed, &facts)
    }

    /// The ARGs before the first FROM, in order; each default sees the
    /// ones before it and the automatic platform args.
    fn global_scope(&mut self) -> Result<(), PlanError> {
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

    fn analyse_stages(&mut self) -> Vec<StageFacts> {
        let file = self.file;
        let mut facts: Vec<StageFacts> = Vec::with_capacity(file.stages.len());
        for stage in &file.stages {
            self.current_stage = Some(stage.index);
            let base = self.resolve_base(stage);
            let mut start_error = None;
            let start = match &base {
                Ok(Base::Stage(parent)) => {
                    let parent = &facts[*parent].end;
                    let weight = parent.weight();
                    match self
                        .budget
                        .charge(weight, " (each stage copies its parent's)")
                    {
                        Ok(()) => Scope {
                            args: BTreeMap::new(),
                            ..parent.clone()
                        },
                        Err(error) => {
                            start_error = Some(from_error(
                                stage,
                                InstructionError::Expand {
                                    what: "the parent stage's variables".into(),
                                    error,
                                },
                            ));
                            Scope {
                                poisoned: true,
                                ..Scope::default()
                            }
                        }
                    }
                }
                Ok(Base::Image { reference, .. }) if reference == "scratch" => Scope {
                    env: BTreeMap::from([("PATH".into(), Binding::Set(DEFAULT_PATH.into()))]),
                    ..Scope::default()
                },
                _ => Scope {
                    image_env_unknown: true,
                    ..Scope::default()
                },
            };
            let mut stage_facts = self.walk(stage, base, start);
            stage_facts.errors.splice(0..0, start_error);
            facts.push(stage_facts);
        }
        self.current_stage = None;
        facts
    }

    /// FROM: expanded with the global scope only; an earlier stage's name
    /// makes it that stage, anything else is an image.
    fn resolve_base(&mut self, stage: &Stage) -> Result<Base, DockerfileError> {
        let globals = &self.globals;
        let mut undefined = Vec::new();
        let mut lookup = |name: &str| match globals.get(name) {
            Some(value) => value.clone(),
            None => {
                undefined.push(name.to_string());
                None
            }
        };
        let image = self
            .budget
            .expand(&stage.from.image, self.escape, &mut lookup)
            .map_err(|error| {
                from_error(
                    stage,
                    InstructionError::Expand {
                        what: "image".into(),
                        error,
                    },
                )
            })?;
        let platform = match &stage.from.platform {
            Some(word) => Some(self.budget.expand(word, self.escape, &mut lookup).map_err(
                |error| {
                    from_error(
                        stage,
                        InstructionError::Expand {
                            what: "--platform".into(),
                            error,
                        },
                    )
                },
            )?),
            None => None,
        };
        for name in undefined {
            self.warn(
                Some(stage.line),
                format!(
                    "FROM uses ${name}, which no ARG before the first FROM declares: it expands to nothing"
                ),
            );
        }
        if image.is_empty() {
            return Err(from_error(
                stage,
                InstructionError::Empty {
                    what: "base image".into(),
                    word: stage.from.image.clone(),
                },
            ));
        }
        let lower = image.to_ascii_lowercase();
        if let Some(parent) = self.file.stages[..stage.index]
            .iter()
            .find(|s| s.name() == Some(lower.as_str()))
        {
            if let Some(platform) = &stage.from.platform {
                self.warn(
                    Some(stage.line),
                    format!(
                        "--platform={platform} is ignored: the stage builds on stage {}",
                        parent.id()
                    ),
                );
            }
            return Ok(Base::Stage(parent.index));
        }
        self.hint_near_stage(stage.index, &image, stage.line, "FROM");
        check_reference(&image).map_err(|reason| {
            from_error(
                stage,
                InstructionError::Reference {
                    reference: image.clone(),
                    reason,
                },
            )
        })?;
        let platform = match platform {
            Some(text) => {
                let parsed = parse_platform(&text).map_err(|reason| {
                    from_error(
                        stage,
                        InstructionError::BadFlagValue {
                            flag: "platform".into(),
                            value: text.clone(),
                            reason,
                        },
                    )
                })?;
                let parsed = parsed.to_string();
                if parsed != self.platform {
                    self.warn(
                        Some(stage.line),
                        format!(
                            "FROM --platform={parsed} differs from the build's platform {}: this stage's pod runs on a {parsed} node",
                            self.platform
                        ),
                    );
                }
                parsed
            }
            None => self.platform.clone(),
        };
        Ok(Base::Image {
            reference: image,
            platform,
        })
    }

    /// A name that is not an earlier stage is an image, as in Docker; if it
    /// looks like a stage's name, say so.
    fn hint_near_stage(&mut self, current: usize, name: &str, line: usize, what: &str) {
        let lower = name.to_ascii_lowercase();
        let mut hints = Vec::new();
        for stage in &self.file.stages {
            let Some(stage_name) = stage.name() else {
                continue;
            };
            let limit = if stage_name.chars().count() >= 6 {
                2
            } else {
                1
            };
            if !within_edits(&lower, stage_name, limit) {
                continue;
            }
            let distance = edit_distance(&lower, stage_name);
            if distance == 0 && stage.index > current {
                hints.push(format!(
                    "{what} {name}: stage {stage_name} is defined later (line {}), so this is the image {name}",
                    stage.line
                ));
            } else if distance > 0 {
                hints.push(format!(
                    "{what} {name} is taken as an image, but stage {stage_name} (line {}) has a similar name: a typo?",
                    stage.line
                ));
            }
        }
        for hint in hints {
            self.warn(Some(line), hint);
        }
    }

    /// Walks a stage's instructions with what the Dockerfile defines.
    fn walk(
        &mut self,
        stage: &Stage,
        base: Result<Base, DockerfileError>,
        start: Scope,
    ) -> StageFacts {
        let mut scope = start;
        let mut steps = Vec::with_capacity(stage.instructions.len());
        let mut errors = Vec::new();
        let mut first_run = None;
        let mut declared_args = BTreeSet::new();
        for statement in &stage.instructions {
            let mut step = StepFacts::default();
            match &statement.instruction {
                Instruction::Arg(declarations) => {
                    for declaration in declarations {
                        declared_args.insert(declaration.name.clone());
                        match self.stage_arg(
                            &scope,
                            &declaration.name,
                            declaration.default.as_deref(),
                        ) {
                            Ok((binding, arg)) => {
                                scope.args.insert(declaration.name.clone(), binding);
                                step.args.push(arg);
                            }
                            Err(error) => errors.push(instruction_error(
                                statement,
                                InstructionError::Expand {
                                    what: format!("ARG {}", declaration.name),
                                    error,
                                },
                            )),
                        }
                    }
                }
                Instruction::Env(pairs) => {
                    // Every pair sees the scope before the instruction.
                    let expanded: Vec<_> = pairs
                        .iter()
                        .map(|pair| {
                            (
                                scope.expand(&pair.key, self.escape, &self.budget),
                                scope.expand(&pair.value, self.escape, &self.budget),
                            )
                        })
                        .collect();
                    for (pair, expanded) in pairs.iter().zip(expanded) {
                        match expanded {
                            (Ok(Ok(key)), Ok(value)) => {
                                let binding = match value {
                                    Ok(value) => Binding::Set(value),
                                    Err(_) => Binding::Unknown,
                                };
                                scope.env.insert(key, binding);
                            }
                            (Ok(Err(_)), Ok(_)) => scope.poisoned = true,
                            (Err(error), _) | (_, Err(error)) => {
                                errors.push(instruction_error(
                                    statement,
                                    InstructionError::Expand {
                                        what: format!("ENV {}", pair.key),
                                        error,
                                    },
                                ));
                            }
                        }
                    }
                }
                Instruction::Run(_) => {
                    first_run.get_or_insert(statement.line);
                }
                Instruction::Copy(copy) | Instruction::Add(copy) => {
                    match self.resolve_copy(stage, statement, copy, &scope) {
                        Ok(origin) => step.origin = Some(origin),
                        Err(error) => errors.push(error),
                    }
                }
                _ => {}
            }
            steps.push(step);
        }
        StageFacts {
            base,
            steps,
            errors,
            first_run,
            end: scope,
            declared_args,
        }
    }

    /// A stage's ARG: a build arg wins, then the default, then the global
    /// value of the same name (a bare redeclaration), else unset.
    fn stage_arg(
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

    fn expand_needed(
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

    fn resolve_copy(
        &mut self,
        stage: &Stage,
        statement: &Statement,
        copy: &super::CopyArgs,
        scope: &Scope,
    ) -> Result<Origin, DockerfileError> {
        let is_add = matches!(statement.instruction, Instruction::Add(_));
        let count = copy.sources.len() + copy.heredocs.len();
        if count > 1
            && copy.destination.contains('$')
            && let Ok(Ok(destination)) = scope.expand(&copy.destination, self.escape, &self.budget)
            && !written_as_directory(&destination)
        {
            return Err(instruction_error(
                statement,
                InstructionError::TrailingSlash { destination },
            ));
        }
        if is_add {
            for source in copy.sources.iter().filter(|s| s.contains('$')) {
                if let Ok(Ok(value)) = scope.expand(source, self.escape, &self.budget)
                    && is_remote(&value)
                {
                    return Err(instruction_error(
                        statement,
                        InstructionError::Unsupported(format!(
                            "ADD {value}: remote sources (URLs, git) are not supported; download in a RUN step or COPY the file from the context"
                        )),
                    ));
                }
            }
        }
        let Some(from_word) = &copy.from else {
            return Ok(if copy.sources.is_empty() {
                Origin::Inline
            } else {
                Origin::Context
            });
        };
        let from = self.expand_needed(statement, scope, "--from", from_word)?;
        let copy_from_error = |reason: String| {
            instruction_error(
                statement,
                InstructionError::CopyFrom {
                    name: from.clone(),
                    reason,
                },
            )
        };
        if from.is_empty() {
            return Err(instruction_error(
                statement,
                InstructionError::Empty {
                    what: "--from".into(),
                    word: from_word.clone(),
                },
            ));
        }
        let paths = copy
            .sources
            .iter()
            .map(|source| self.expand_needed(statement, scope, "source path", source))
            .collect::<Result<Vec<_>, _>>()?;
        if from.chars().all(|c| c.is_ascii_digit()) {
            return match from.parse::<usize>() {
                Ok(index) if index < stage.index => Ok(Origin::Stage { index, paths }),
                _ => Err(instruction_error(
                    statement,
                    InstructionError::StageIndex {
                        index: from.clone(),
                        available: match stage.index {
                            0 => "this is the first stage".into(),
                            1 => "only stage 0 does".into(),
                            n => format!("stages 0 to {} do", n - 1),
                        },
                    },
                )),
            };
        }
        let lower = from.to_ascii_lowercase();
        if let Some(source) = self
            .file
            .stages
            .iter()
            .find(|s| s.name() == Some(lower.as_str()))
        {
            if source.index < stage.index {
                return Ok(Origin::Stage {
                    index: source.index,
                    paths,
                });
            }
            if source.index == stage.index {
                return Err(copy_from_error(
                    "a stage cannot copy from itself (write the image's full reference to mean an image)".into(),
                ));
            }
            return Err(copy_from_error(format!(
                "stage {lower} is defined later, on line {}: copy from an earlier stage (or write the image's full reference to mean an image)",
                source.line
            )));
        }
        if from == "scratch" {
            return Err(copy_from_error(
                "scratch is empty: there is nothing to copy".into(),
            ));
        }
        check_reference(&from).map_err(|reason| {
            instruction_error(
                statement,
                InstructionError::Reference {
                    reference: from.clone(),
                    reason,
                },
            )
        })?;
        self.hint_near_stage(stage.index, &from, statement.line, "COPY --from");
        Ok(Origin::Image {
            reference: from,
            paths,
        })
    }

    fn target(&self) -> Result<usize, PlanError> {
        let last = self.file.stages.len() - 1;
        let Some(target) = &self.request.target else {
            return Ok(last);
        };
        match self.file.stage_named(target) {
            Some(stage) => Ok(stage.index),
            None => {
                let names: Vec<&str> = self.file.stages.iter().filter_map(Stage::name).collect();
                Err(PlanError::UnknownTarget {
                    target: target.clone(),
                    stages: if names.is_empty() {
                        "none has a name".into()
                    } else {
                        names.join(", ")
                    },
                })
            }
        }
    }

    /// The target and, transitively, the stages it builds on or copies from.
    /// The first error (by line) of a needed stage fails the plan.
    fn needed_stages(&self, target: usize, facts: &[StageFacts]) -> Result<Vec<bool>, PlanError> {
        let mut needed = vec![false; facts.len()];
        needed[target] = true;
        let mut errors: Vec<DockerfileError> = Vec::new();
        for index in (0..=target).rev() {
            if !needed[index] {
                continue;
            }
            let stage = &facts[index];
            match &stage.base {
                Ok(Base::Stage(parent)) => needed[*parent] = true,
                Ok(Base::Image { .. }) => {}
                Err(error) => errors.push(error.clone()),
            }
            errors.extend(stage.errors.iter().cloned());
            for step in &stage.steps {
                if let Some(Origin::Stage { index, .. }) = &step.origin {
                    needed[*index] = true;
                }
            }
        }
        match errors.into_iter().min_by_key(|e| e.line().unwrap_or(0)) {
            Some(error) => Err(error.into()),
            None => Ok(needed),
        }
    }

    fn check_build_args(&mut self, needed: &[bool], facts: &[StageFacts]) {
        let mut declared: BTreeSet<&str> =
            self.declared_globals.iter().map(String::as_str).collect();
        for (stage, facts) in facts.iter().enumerate() {
            if needed[stage] {
                declared.extend(facts.declared_args.iter().map(String::as_str));
            }
        }
        let unused: Vec<String> = self
            .request
            .build_args
            .keys()
            .filter(|name| {
                !declared.contains(name.as_str())
                    && !self.automatic.contains(*name)
                    && !PROXY_ARGS.contains(&name.as_str())
            })
            .cloned()
            .collect();
        for name in unused {
            self.warn(
                None,
                format!(
                    "build arg {name} is not declared by an ARG of the stages built: it is not used"
                ),
            );
        }
    }

    fn stage_ref(&self, index: usize) -> StageRef {
        let stage = &self.file.stages[index];
        StageRef {
            index,
            name: stage.from.name.clone(),
            line: stage.line,
        }
    }

    fn build(
        mut self,
        target: usize,
        needed: &[bool],
        facts: &[StageFacts],
    ) -> Result<BuildPlan, PlanError> {
        let parent = |index: usize| match &facts[index].base {
            Ok(Base::Stage(parent)) => Some(*parent),
            _ => None,
        };
        let file = self.file;
        let target_stage = &file.stages[target];
        let runtime_reason = match (&facts[target].base, facts[target].first_run) {
            (Ok(Base::Stage(parent)), _) => Some(format!(
                "it builds FROM stage {} (line {})",
                self.file.stages[*parent].id(),
                target_stage.line
            )),
            (_, Some(line)) => Some(format!("it has RUN (line {line})")),
            _ => None,
        };
        // Stages that run in chain pods.
        let in_chain: Vec<bool> = (0..needed.len())
            .map(|i| needed[i] && (i != target || runtime_reason.is_some()))
            .collect();
        let mut has_child = vec![false; needed.len()];
        for (index, _) in in_chain.iter().enumerate().filter(|(_, c)| **c) {
            if let Some(parent) = parent(index) {
                has_child[parent] = true;
            }
        }
        let mut paths: Vec<Vec<usize>> = Vec::new();
        for leaf in (0..needed.len()).filter(|i| in_chain[*i] && !has_child[*i]) {
            let mut path = vec![leaf];
            let mut current = leaf;
            while let Some(p) = parent(current) {
                path.push(p);
                current = p;
            }
            path.reverse();
            paths.push(path);
        }
        let chain_ids: Vec<String> = paths
            .iter()
            .map(|path| self.file.stages[*path.last().unwrap_or(&0)].id())
            .collect();
        let chains_of = |stage: usize| -> Vec<usize> {
            (0..paths.len())
                .filter(|c| paths[*c].contains(&stage))
                .collect()
        };
        for index in (0..needed.len()).filter(|i| in_chain[*i]) {
            let chains = chains_of(index);
            if chains.len() > 1 {
                let names: Vec<&str> = chains.iter().map(|c| chain_ids[*c].as_str()).collect();
                self.warn(
                    Some(self.file.stages[index].line),
                    format!(
                        "stage {} is shared by chains {}: it runs again in each of them (its steps should give the same files each time)",
                        self.file.stages[index].id(),
                        names.join(", ")
                    ),
                );
            }
        }

        let mut exports = Exports::new(chain_ids.clone());
        let mut chains = Vec::new();
        for (c, path) in paths.iter().enumerate() {
            let root = path[0];
            let (image, platform) = match &facts[root].base {
                Ok(Base::Image {
                    reference,
                    platform,
                }) => (reference.clone(), platform.clone()),
                _ => ("scratch".to_string(), self.platform.clone()),
            };
            let mut stages = Vec::new();
            let mut needs_context = false;
            for &index in path {
                let stage = &file.stages[index];
                let steps = self.steps(stage, &facts[index], Some(c), path, &paths, &mut exports);
                needs_context |= steps
                    .iter()
                    .any(|s| matches!(s.source, Some(CopySource::Context)));
                stages.push(ChainStage {
                    stage: self.stage_ref(index),
                    from: stage.text.clone(),
                    replayed_in: chains_of(index)
                        .into_iter()
                        .filter(|other| *other != c)
                        .map(|other| chain_ids[other].clone())
                        .collect(),
                    steps,
                });
            }
            let is_runtime = runtime_reason.is_some() && path.last() == Some(&target);
            chains.push(Chain {
                id: chain_ids[c].clone(),
                image,
                platform,
                role: if is_runtime {
                    ChainRole::Runtime
                } else {
                    ChainRole::Builder
                },
                stages,
                depends_on: Vec::new(),
                needs_context,
                exports: Vec::new(),
            });
        }
        let final_image = match &runtime_reason {
            Some(reason) => {
                let chain = chains
                    .iter()
                    .find(|c| c.role == ChainRole::Runtime)
                    .map(|c| (c.id.clone(), c.image.clone()))
                    .unwrap_or_default();
                FinalImage::Runtime(RuntimePlan {
                    stage: self.stage_ref(target),
                    chain: chain.0,
                    base: chain.1,
                    reason: reason.clone(),
                })
            }
            None => {
                let (base, platform) = match &facts[target].base {
                    Ok(Base::Image {
                        reference,
                        platform,
                    }) => (reference.clone(), platform.clone()),
                    _ => ("scratch".to_string(), self.platform.clone()),
                };
                let steps = self.steps(
                    target_stage,
                    &facts[target],
                    None,
                    &[],
                    &paths,
                    &mut exports,
                );
                FinalImage::Assemble(AssemblePlan {
                    stage: self.stage_ref(target),
                    from: target_stage.text.clone(),
                    base,
                    platform,
                    steps,
                })
            }
        };
        for (c, chain) in chains.iter_mut().enumerate() {
            chain.exports = exports.chain_exports[c].clone();
            chain.depends_on = exports.depends_on[c]
                .iter()
                .map(|(id, _)| id.clone())
                .collect();
        }
        let extractions: Vec<Extraction> = exports
            .extractions
            .iter()
            .map(|(id, image, exports)| Extraction {
                id: id.clone(),
                image: image.clone(),
                platform: self.platform.clone(),
                exports: exports.clone(),
            })
            .collect();
        let waves = waves(&chains, &extractions, &exports.depends_on)?;
        let mut warnings: Vec<Warning> = self
            .warnings
            .iter()
            .filter(|(stage, _)| stage.is_none_or(|s| needed[s]))
            .map(|(_, w)| w.clone())
            .collect();
        warnings.dedup();
        warnings.sort_by_key(|w| w.line.unwrap_or(0));
        Ok(BuildPlan {
            platform: self.platform.clone(),
            escape: self.escape,
            syntax: self.file.syntax.clone(),
            build_args: self.request.build_args.clone(),
            global_args: self.globals.clone(),
            target: self.stage_ref(target),
            chains,
            extractions,
            waves,
            final_image,
            warnings,
        })
    }

    /// A stage's steps with their sources resolved; `chain` is the chain
    /// running it (`None`: the assembly), `path` that chain's stages.
    fn steps(
        &mut self,
        stage: &Stage,
        facts: &StageFacts,
        chain: Option<usize>,
        path: &[usize],
        paths: &[Vec<usize>],
        exports: &mut Exports,
    ) -> Vec<Step> {
        let consumer_id = stage.id();
        let mut steps = Vec::with_capacity(stage.instructions.len());
        for (statement, step_facts) in stage.instructions.iter().zip(&facts.steps) {
            if let Instruction::Maintainer(_) = statement.instruction {
                self.warn(
                    Some(statement.line),
                    "MAINTAINER is deprecated: it is applied as LABEL maintainer=…".into(),
                );
            }
            let consumer = Consumer {
                stage: consumer_id.clone(),
                line: statement.line,
            };
            let source = step_facts.origin.as_ref().map(|origin| match origin {
                Origin::Context => CopySource::Context,
                Origin::Inline => CopySource::Inline,
                Origin::Stage {
                    index,
                    paths: sources,
                } => {
                    let producer = if path.contains(index) {
                        chain.unwrap_or(0)
                    } else {
                        (0..paths.len())
                            .find(|c| paths[*c].contains(index))
                            .unwrap_or(0)
                    };
                    let stage_id = self.file.stages[*index].id();
                    let ids = sources
                        .iter()
                        .map(|p| exports.add_chain_export(producer, &stage_id, p, &consumer))
                        .collect();
                    if let Some(c) = chain
                        && c != producer
                    {
                        exports.depend(c, exports.chain_ids[producer].clone(), statement.line);
                    }
                    CopySource::Stage {
                        chain: exports.chain_ids.get(producer).cloned().unwrap_or_default(),
                        stage: stage_id,
                        paths: sources.clone(),
                        exports: ids,
                    }
                }
                Origin::Image {
                    reference,
                    paths: sources,
                } => {
                    let (extraction, ids) = exports.add_image_export(reference, sources, &consumer);
                    if let Some(c) = chain {
                        exports.depend(c, extraction.clone(), statement.line);
                    }
                    CopySource::Image {
                        extraction,
                        image: reference.clone(),
                        paths: sources.clone(),
                        exports: ids,
                    }
                }
            });
            steps.push(Step {
                line: statement.line,
                text: statement.text.clone(),
                instruction: statement.instruction.clone(),
                source,
                args: step_facts.args.clone(),
            });
        }
        steps
    }
}

/// Export lists being gathered, per chain and per extraction image.
struct Exports {
    chain_ids: Vec<String>,
    chain_exports: Vec<Vec<Export>>,
    /// Per chain: (chain or extraction id, first line that needs it).
    depends_on: Vec<Vec<(String, usize)>>,
    /// (id, image, exports)
    extractions: Vec<(String, String, Vec<Export>)>,
}

impl Exports {
    fn new(chain_ids: Vec<String>) -> Self {
        let n = chain_ids.len();
        Self {
            chain_ids,
            chain_exports: vec![Vec::new(); n],
            depends_on: vec![Vec::new(); n],
            extractions: Vec::new(),
        }
    }

    fn depend(&mut self, chain: usize, on: String, line: usize) {
        if !self.depends_on[chain].iter().any(|(id, _)| *id == on) {
            self.depends_on[chain].push((on, line));
        }
    }

    fn add_chain_export(
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

    fn add_image_export(
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

/// Levels of the dependency graph; a cycle is an error naming both lines.
fn waves(
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

/// Docker's image reference grammar, enough to catch what a pull would
/// reject: `[host[:port]/]path[:tag][@algo:hex]`, the path lower-case.
pub fn check_reference(reference: &str) -> Result<(), String> {
    if reference.is_empty() {
        return Err("it is empty".into());
    }
    if reference.chars().any(char::is_whitespace) {
        return Err("it contains whitespace".into());
    }
    let (name_tag, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    if let Some(digest) = digest {
        let valid = digest.split_once(':').is_some_and(|(algorithm, hex)| {
            !algorithm.is_empty()
                && algorithm
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+._-".contains(c))
                && hex.len() >= 32
                && hex.chars().all(|c| c.is_ascii_hexdigit())
        });
        if !valid {
            return Err(format!(
                "`{digest}` is not a digest such as sha256:<64 hex digits>"
            ));
        }
    }
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(tag) = tag {
        let valid = !tag.is_empty()
            && tag.len() <= 128
            && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !valid {
            return Err(format!("`{tag}` is not a valid tag"));
        }
    }
    let mut components: Vec<&str> = name.split('/').collect();
    let first = components[0];
    let is_host = components.len() > 1
        && (first.contains('.')
            || first.contains(':')
            || first == "localhost"
            || first.chars().any(|c| c.is_ascii_uppercase()));
    if is_host {
        let valid = first
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
        if !valid {
            return Err(format!("`{first}` is not a registry host"));
        }
        components.remove(0);
    }
    for component in components {
        if component.chars().any(|c| c.is_ascii_uppercase()) {
            return Err("repository names must be lower-case".into());
        }
        let valid = !component.is_empty()
            && component.starts_with(|c: char| c.is_ascii_alphanumeric())
            && component.ends_with(|c: char| c.is_ascii_alphanumeric())
            && component
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
        if !valid {
            return Err(format!(
                "`{component}` is not a valid repository path component"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        for ok in [
            "alpine",
            "alpine:3.19",
            "golang:1.22-alpine",
            "gcr.io/distroless/static:nonroot",
            "localhost:5000/team/app:v1",
            "registry.example.com/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "docker.io/library/ubuntu",
        ] {
            assert_eq!(check_reference(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "Alpine",
            "alpine:",
            "a b",
            "alpine:-x",
            "-alpine",
            "a@sha256:xyz",
            "a//b",
        ] {
            assert!(check_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn platform_aliases_are_normalised() {
        assert_eq!(
            parse_platform("linux/x86_64").unwrap().to_string(),
            "linux/amd64"
        );
        assert_eq!(
            parse_platform("Linux/arm64/v8").unwrap().to_string(),
            "linux/arm64/v8"
        );
        assert!(parse_platform("linux").is_err());
    }
}
