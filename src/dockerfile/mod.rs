//! The Dockerfile frontend: text → stages of typed instructions, each with
//! its line numbers and original text; variable expansion with Docker's
//! rules; the evaluator that applies a stage's instructions in order
//! ([`eval`]: what the chain pods and the final image's recipe share); the
//! `.dockerignore` matcher. The planner ([`crate::plan`]) builds on it.

pub mod dockerignore;
pub mod eval;
pub mod expand;
pub mod instruction;
pub mod lexer;
pub mod words;

use std::collections::BTreeMap;

pub use dockerignore::DockerIgnore;
pub use expand::{ExpandError, expand_heredoc, expand_word};
pub use instruction::{
    ArgDeclaration, CommandForm, CopyArgs, FromArgs, Healthcheck, HealthcheckArgs, Instruction,
    KeyValue, RunArgs, RunMount, parse_mount,
};
pub use lexer::Heredoc;

/// The largest Dockerfile accepted, in bytes. An ImageBuild (the whole
/// object) holds at most about 1.5 MiB in etcd; a file from a context is
/// held to the same measure.
pub const MAX_DOCKERFILE_BYTES: usize = 1024 * 1024;
/// The most stages a Dockerfile may have: every needed one may become a
/// pod.
pub const MAX_STAGES: usize = 128;
/// The most instructions a Dockerfile may have, all stages together.
pub const MAX_INSTRUCTIONS: usize = 10_000;

/// What is wrong with a Dockerfile; every variant about an instruction
/// names its line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerfileError {
    #[error("the Dockerfile is empty: it has no instructions")]
    Empty,
    #[error("the Dockerfile has no FROM instruction")]
    NoFrom,
    #[error("the Dockerfile is {bytes} bytes; at most {MAX_DOCKERFILE_BYTES} (1 MiB) are accepted")]
    TooLarge { bytes: usize },
    #[error("line {line}: the Dockerfile is not valid UTF-8")]
    NotUtf8 { line: usize },
    #[error("line {line}: # {name}= directive: {message}")]
    Directive {
        line: usize,
        name: String,
        message: String,
    },
    #[error("line {line}: {instruction}: {error}")]
    Instruction {
        line: usize,
        /// The instruction's name, upper-case (`COPY`).
        instruction: String,
        error: Box<InstructionError>,
    },
}

impl DockerfileError {
    /// The line the error is about, if it is about one.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Empty | Self::NoFrom | Self::TooLarge { .. } => None,
            Self::NotUtf8 { line }
            | Self::Directive { line, .. }
            | Self::Instruction { line, .. } => Some(*line),
        }
    }
}

/// What is wrong with one instruction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstructionError {
    #[error("unknown instruction{}", suggestion.as_ref().map(|s| format!(" (did you mean {s}?)")).unwrap_or_default())]
    Unknown { suggestion: Option<String> },
    #[error("only ARG may come before the first FROM")]
    BeforeFrom,
    #[error("unknown flag --{flag} ({accepted})")]
    UnknownFlag { flag: String, accepted: String },
    #[error("flag --{flag} needs a value: --{flag}=VALUE")]
    MissingFlagValue { flag: String },
    #[error("flag --{flag} is given twice")]
    DuplicateFlag { flag: String },
    #[error("--{flag}={value}: {reason}")]
    BadFlagValue {
        flag: String,
        value: String,
        reason: String,
    },
    /// Valid Docker that slimforge refuses, with the reason.
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Syntax(String),
    #[error("heredoc {name} is never terminated: no line `{name}` follows")]
    UnterminatedHeredoc { name: String },
    #[error(
        "invalid stage name `{name}`: it must start with a letter and hold only letters, digits, `-`, `_` and `.`"
    )]
    StageName { name: String },
    #[error("stage name `{name}` is already used on line {first_line}")]
    DuplicateStage { name: String, first_line: usize },
    #[error("--from={index}: no stage {index} comes before this one ({available})")]
    StageIndex { index: String, available: String },
    #[error(
        "with several sources the destination must be a directory: end it with `/` (got `{destination}`)"
    )]
    TrailingSlash { destination: String },
    #[error("{what}: {error}")]
    Expand { what: String, error: ExpandError },
    #[error(
        "{what} `{word}` depends on {names}, known only at run time (from the image's environment){hint}"
    )]
    RunTimeValue {
        what: String,
        word: String,
        names: String,
        hint: String,
    },
    #[error("{what} `{word}` is empty once expanded")]
    Empty { what: String, word: String },
    #[error("invalid image reference `{reference}`: {reason}")]
    Reference { reference: String, reason: String },
    #[error("--from={name}: {reason}")]
    CopyFrom { name: String, reason: String },
    #[error("more than {limit} {what} in one Dockerfile")]
    TooMany { what: &'static str, limit: usize },
}

/// One instruction as it appears in the Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// First line (1-based).
    pub line: usize,
    pub end_line: usize,
    /// The instruction's lines as written (heredoc bodies are in the instruction).
    pub text: String,
    pub instruction: Instruction,
}

/// A build stage: a FROM and the instructions up to the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub index: usize,
    /// The FROM line.
    pub line: usize,
    /// The FROM instruction as written.
    pub text: String,
    pub from: FromArgs,
    pub instructions: Vec<Statement>,
}

impl Stage {
    pub fn name(&self) -> Option<&str> {
        self.from.name.as_deref()
    }

    /// How plans and messages name the stage: its name, or its index.
    pub fn id(&self) -> String {
        self.from
            .name
            .clone()
            .unwrap_or_else(|| self.index.to_string())
    }
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// `# escape=` (default `\`): expansion needs it too.
    pub escape: char,
    pub syntax: Option<String>,
    /// ARG instructions before the first FROM.
    pub global_args: Vec<Statement>,
    pub stages: Vec<Stage>,
}

impl Dockerfile {
    /// The stage of that name (case-insensitive).
    pub fn stage_named(&self, name: &str) -> Option<&Stage> {
        let name = name.to_ascii_lowercase();
        self.stages.iter().find(|s| s.name() == Some(name.as_str()))
    }
}

/// Parses a Dockerfile from bytes (a UTF-8 byte-order mark is skipped).
pub fn parse_bytes(bytes: &[u8]) -> Result<Dockerfile, DockerfileError> {
    if bytes.len() > MAX_DOCKERFILE_BYTES {
        return Err(DockerfileError::TooLarge { bytes: bytes.len() });
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => parse(text),
        Err(e) => {
            let line = 1 + bytes[..e.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count();
            Err(DockerfileError::NotUtf8 { line })
        }
    }
}

/// Parses a Dockerfile. The first error, by line, is returned.
pub fn parse(text: &str) -> Result<Dockerfile, DockerfileError> {
    if text.len() > MAX_DOCKERFILE_BYTES {
        return Err(DockerfileError::TooLarge { bytes: text.len() });
    }
    let (directives, lines) = lexer::lex(text)?;
    let escape = directives.escape;
    let mut global_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let any_instruction = !lines.is_empty();
    for (count, line) in lines.into_iter().enumerate() {
        let (word, rest) = match line.content.split_once(char::is_whitespace) {
            Some((word, rest)) => (word, rest),
            None => (line.content.as_str(), ""),
        };
        let keyword = word.to_ascii_uppercase();
        let fail = |error: InstructionError| DockerfileError::Instruction {
            line: line.line,
            instruction: keyword.clone(),
            error: Box::new(error),
        };
        if count == MAX_INSTRUCTIONS {
            return Err(fail(InstructionError::TooMany {
                what: "instructions",
                limit: MAX_INSTRUCTIONS,
            }));
        }
        let instruction =
            instruction::parse_instruction(&keyword, rest, &line.heredocs, escape).map_err(fail)?;
        let statement = Statement {
            line: line.line,
            end_line: line.end_line,
            text: line.text,
            instruction,
        };
        if let Instruction::From(from) = &statement.instruction {
            if let Some(name) = &from.name {
                if let Some(first_line) = names.get(name) {
                    return Err(fail(InstructionError::DuplicateStage {
                        name: name.clone(),
                        first_line: *first_line,
                    }));
                }
                names.insert(name.clone(), statement.line);
            }
            if stages.len() == MAX_STAGES {
                return Err(fail(InstructionError::TooMany {
                    what: "stages",
                    limit: MAX_STAGES,
                }));
            }
            stages.push(Stage {
                index: stages.len(),
                line: statement.line,
                text: statement.text,
                from: from.clone(),
                instructions: Vec::new(),
            });
            continue;
        }
        let Some(stage) = stages.last_mut() else {
            if matches!(statement.instruction, Instruction::Arg(_)) {
                global_args.push(statement);
                continue;
            }
            return Err(fail(InstructionError::BeforeFrom));
        };
        if let Instruction::Copy(copy) = &statement.instruction
            && let Some(from) = &copy.from
            && from.chars().all(|c| c.is_ascii_digit())
        {
            let index_ok = from.parse::<usize>().is_ok_and(|i| i < stage.index);
            if !index_ok {
                return Err(fail(InstructionError::StageIndex {
                    index: from.clone(),
                    available: stages_before(stage.index),
                }));
            }
        }
        stage.instructions.push(statement);
    }
    if stages.is_empty() {
        return Err(if any_instruction {
            DockerfileError::NoFrom
        } else {
            DockerfileError::Empty
        });
    }
    Ok(Dockerfile {
        escape,
        syntax: directives.syntax,
        global_args,
        stages,
    })
}

/// Which stages come before stage `index`, for a `--from=N` that names
/// none of them.
pub(crate) fn stages_before(index: usize) -> String {
    match index {
        0 => "this is the first stage".into(),
        1 => "only stage 0 does".into(),
        n => format!("stages 0 to {} do", n - 1),
    }
}

/// Whether `a` is at most `limit` edits from `b` (a swap of neighbours
/// counts as one); long strings are ruled out by length alone.
pub fn within_edits(a: &str, b: &str, limit: usize) -> bool {
    let (la, lb) = (a.chars().count(), b.chars().count());
    la.abs_diff(lb) <= limit && edit_distance(a, b) <= limit
}

/// Edit distance where swapping two neighbours counts as one edit.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_swaps_as_one() {
        assert_eq!(edit_distance("builder", "builder"), 0);
        assert_eq!(edit_distance("builder", "biulder"), 1);
        assert_eq!(edit_distance("builder", "buildr"), 1);
        assert_eq!(edit_distance("build", "bulid"), 1);
        assert_eq!(edit_distance("abc", ""), 3);
    }

    #[test]
    fn stages_group_their_instructions() {
        let file =
            parse("ARG V=1\nFROM a:$V AS One\nRUN x\nfrom b\ncopy --from=one /x /y\n").unwrap();
        assert_eq!(file.global_args.len(), 1);
        assert_eq!(file.stages.len(), 2);
        assert_eq!(file.stages[0].name(), Some("one"));
        assert_eq!(file.stages[1].id(), "1");
        assert_eq!(file.stages[1].instructions[0].line, 5);
        assert!(file.stage_named("ONE").is_some());
    }

    #[test]
    fn errors_name_their_line() {
        let cases = [
            ("FROM a\nCOPY --from=1 /x /y\n", 2),
            ("ENV A=1\nFROM a\n", 1),
            ("FROM a\n\nFOO bar\n", 3),
            ("FROM a AS x\nFROM b AS X\n", 2),
            ("FROM a\nFROM b AS 1x\n", 2),
        ];
        for (text, line) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.line(), Some(line), "{text}: {err}");
        }
        assert_eq!(parse("# just a comment\n\n"), Err(DockerfileError::Empty));
        assert_eq!(parse("ARG A=1\n"), Err(DockerfileError::NoFrom));
        assert_eq!(parse_bytes(b"FROM a\n\xff\n").unwrap_err().line(), Some(2));
    }
}
