//! Variable substitution with Docker's rules, for the instructions Docker
//! expands itself (ADD COPY ENV EXPOSE FROM LABEL STOPSIGNAL USER VOLUME
//! WORKDIR, ARG defaults). RUN, CMD, ENTRYPOINT and SHELL are left to the
//! shell. The planner and the in-pod helper share this code: the planner
//! with what the Dockerfile defines, the helper with the image's real env.

/// Why a word could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    #[error("missing `}}` in `{word}`")]
    MissingBrace { word: String },
    #[error("bad substitution in `{word}`")]
    BadSubstitution { word: String },
    #[error("unsupported modifier `{modifier}` in `{word}` (supported: :- - :+ + :? ?)")]
    UnsupportedModifier { modifier: char, word: String },
    #[error("unterminated {quote} quote in `{word}`")]
    UnterminatedQuote { quote: &'static str, word: String },
    #[error("${{{name}}}: {message}")]
    Required { name: String, message: String },
    #[error("substitutions nested more than {MAX_DEPTH} deep in `{word}`")]
    TooDeep { word: String },
    #[error(
        "the variables in `{word}` expand to more than {MAX_WORD_BYTES} bytes (128 KiB, the most one environment string can hold on Linux)"
    )]
    TooLong { word: String },
    #[error("the Dockerfile's variables expand to more than {limit} bytes in all{note}")]
    OverBudget { limit: usize, note: &'static str },
}

/// The longest value one word may expand to: Linux refuses a longer
/// environment string or argument (MAX_ARG_STRLEN), so no build could use
/// it, and doubling `ENV A1=${A0}${A0}` stops here, not at the heap's end.
pub const MAX_WORD_BYTES: usize = 128 * 1024;

/// A word as an error shows it: long ones are cut.
fn shown(word: &str) -> String {
    const SHOWN: usize = 80;
    match word.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}…", &word[..end]),
        None => word.to_string(),
    }
}

/// `${A:-${B:-…}}` nesting allowed; deeper input is refused, not recursed.
pub const MAX_DEPTH: usize = 64;

/// Expands one word as Docker does for instructions: `$VAR`, `${VAR}`,
/// `${VAR:-x}`, `${VAR-x}`, `${VAR:+x}`, `${VAR+x}`, `${VAR:?msg}`,
/// `${VAR?msg}`; quotes are removed, nothing expands inside single quotes,
/// the escape character makes the next character literal. Words are not
/// split: `$A` with `A="x y"` stays one word. `lookup` answers `None` for an
/// unset variable (which expands to nothing).
pub fn expand_word(
    word: &str,
    escape: char,
    lookup: &mut dyn FnMut(&str) -> Option<String>,
) -> Result<String, ExpandError> {
    let mut lexer = Lexer::new(word, escape, Mode::Word, lookup);
    lexer.until(None)
}

/// Expands a heredoc body whose delimiter was not quoted, as a shell does:
/// quotes are plain text, `$VAR` and `${…}` expand, the escape character
/// protects only `$`, itself and a newline.
pub fn expand_heredoc(
    body: &str,
    escape: char,
    lookup: &mut dyn FnMut(&str) -> Option<String>,
) -> Result<String, ExpandError> {
    let mut lexer = Lexer::new(body, escape, Mode::Heredoc, lookup);
    lexer.until(None)
}

/// Removes quotes and escapes from a word without expanding anything, as
/// Docker does for a heredoc delimiter (`<<"EOF"` names `EOF`).
pub fn unquote(word: &str, escape: char) -> Result<String, ExpandError> {
    let mut keep = |name: &str| Some(format!("${name}"));
    let mut lexer = Lexer::new(word, escape, Mode::Word, &mut keep);
    lexer.literal_dollar = true;
    lexer.until(None)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Word,
    Heredoc,
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    mode: Mode,
    lookup: &'a mut dyn FnMut(&str) -> Option<String>,
    /// `$` is plain text (for `unquote`).
    literal_dollar: bool,
    word: &'a str,
    depth: usize,
    /// Bytes added by substitutions so far.
    expanded: usize,
}

impl<'a> Lexer<'a> {
    fn new(
        word: &'a str,
        escape: char,
        mode: Mode,
        lookup: &'a mut dyn FnMut(&str) -> Option<String>,
    ) -> Self {
        Self {
            chars: word.chars().collect(),
            pos: 0,
            escape,
            mode,
            lookup,
            literal_dollar: false,
            word,
            depth: 0,
            expanded: 0,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// Reads up to `stop` (consumed) or the end. With a `stop`, reaching the
    /// end is a missing `}`.
    fn until(&mut self, stop: Option<char>) -> Result<String, ExpandError> {
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return match stop {
                    Some(_) => Err(ExpandError::MissingBrace {
                        word: shown(self.word),
                    }),
                    None => Ok(out),
                };
            };
            if Some(c) == stop {
                self.pos += 1;
                return Ok(out);
            }
            match c {
                c if c == self.escape => {
                    self.pos += 1;
                    match self.mode {
                        Mode::Word => {
                            if let Some(next) = self.next() {
                                out.push(next);
                            }
                        }
                        Mode::Heredoc => match self.peek() {
                            Some('$') | Some('\n') => {
                                let next = self.next().unwrap_or_default();
                                if next != '\n' {
                                    out.push(next);
                                }
                            }
                            Some(next) if next == self.escape => {
                                self.pos += 1;
                                out.push(next);
                            }
                            _ => out.push(c),
                        },
                    }
                }
                '\'' if self.mode == Mode::Word => {
                    self.pos += 1;
                    self.single_quoted(&mut out)?;
                }
                '"' if self.mode == Mode::Word => {
                    self.pos += 1;
                    self.double_quoted(&mut out)?;
                }
                '$' if !self.literal_dollar => {
                    let value = self.dollar()?;
                    self.append(&mut out, &value)?;
                }
                c => {
                    self.pos += 1;
                    out.push(c);
                }
            }
        }
    }

    /// Adds an expanded value: all those of one word or heredoc stay within
    /// [`MAX_WORD_BYTES`] (its literal text is the Dockerfile's, already
    /// bounded).
    fn append(&mut self, out: &mut String, value: &str) -> Result<(), ExpandError> {
        self.expanded += value.len();
        if self.expanded > MAX_WORD_BYTES {
            return Err(ExpandError::TooLong {
                word: shown(self.word),
            });
        }
        out.push_str(value);
        Ok(())
    }

    fn single_quoted(&mut self, out: &mut String) -> Result<(), ExpandError> {
        loop {
            match self.next() {
                Some('\'') => return Ok(()),
                Some(c) => out.push(c),
                None => {
                    return Err(ExpandError::UnterminatedQuote {
                        quote: "single",
                        word: shown(self.word),
                    });
                }
            }
        }
    }

    fn double_quoted(&mut self, out: &mut String) -> Result<(), ExpandError> {
        loop {
            match self.peek() {
                None => {
                    return Err(ExpandError::UnterminatedQuote {
                        quote: "double",
                        word: shown(self.word),
                    });
                }
                Some('"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some('$') if !self.literal_dollar => {
                    let value = self.dollar()?;
                    self.append(out, &value)?;
                }
                Some(c) if c == self.escape => {
                    self.pos += 1;
                    match self.peek() {
                        // Only these can be escaped inside double quotes.
                        Some(next) if next == '"' || next == '$' || next == self.escape => {
                            self.pos += 1;
                            out.push(next);
                        }
                        None => {}
                        Some(_) => out.push(c),
                    }
                }
                Some(c) => {
                    self.pos += 1;
                    out.push(c);
                }
            }
        }
    }

    /// A name after `$`: digits (a positional parameter), one special
    /// character, or letters, digits and `_`.
    fn name(&mut self) -> String {
        let mut name = String::new();
        match self.peek() {
            Some(c) if c.is_ascii_digit() => {
                while let Some(c) = self.peek().filter(char::is_ascii_digit) {
                    self.pos += 1;
                    name.push(c);
                }
            }
            Some(c) if "@*#?-$!0".contains(c) => {
                self.pos += 1;
                name.push(c);
            }
            _ => {
                while let Some(c) = self.peek().filter(|c| c.is_alphanumeric() || *c == '_') {
                    self.pos += 1;
                    name.push(c);
                }
            }
        }
        name
    }

    fn dollar(&mut self) -> Result<String, ExpandError> {
        if self.depth >= MAX_DEPTH {
            return Err(ExpandError::TooDeep {
                word: shown(self.word),
            });
        }
        self.depth += 1;
        let value = self.dollar_inner();
        self.depth -= 1;
        value
    }

    fn dollar_inner(&mut self) -> Result<String, ExpandError> {
        self.pos += 1; // `$`
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok((self.lookup)(&name).unwrap_or_default());
        }
        self.pos += 1; // `{`
        match self.peek() {
            None => {
                return Err(ExpandError::MissingBrace {
                    word: shown(self.word),
                });
            }
            Some('{' | '}' | ':') => {
                return Err(ExpandError::BadSubstitution {
                    word: shown(self.word),
                });
            }
            _ => {}
        }
        let name = self.name();
        if name.is_empty() {
            return Err(ExpandError::BadSubstitution {
                word: shown(self.word),
            });
        }
        let Some(c) = self.next() else {
            return Err(ExpandError::MissingBrace {
                word: shown(self.word),
            });
        };
        match c {
            '}' => Ok((self.lookup)(&name).unwrap_or_default()),
            ':' => {
                let Some(modifier) = self.next() else {
                    return Err(ExpandError::MissingBrace {
                        word: shown(self.word),
                    });
                };
                if !matches!(modifier, '-' | '+' | '?') {
                    return Err(ExpandError::UnsupportedModifier {
                        modifier,
                        word: shown(self.word),
                    });
                }
                let alternative = self.until(Some('}'))?;
                let value = (self.lookup)(&name);
                let non_empty = value.as_deref().is_some_and(|v| !v.is_empty());
                match modifier {
                    '-' if non_empty => Ok(value.unwrap_or_default()),
                    '-' => Ok(alternative),
                    '+' if non_empty => Ok(alternative),
                    '+' => Ok(String::new()),
                    _ => match value {
                        Some(v) if !v.is_empty() => Ok(v),
                        Some(_) => Err(required(name, alternative, "is not allowed to be empty")),
                        None => Err(required(name, alternative, "is not allowed to be unset")),
                    },
                }
            }
            '-' | '+' | '?' => {
                let alternative = self.until(Some('}'))?;
                let value = (self.lookup)(&name);
                match (c, value) {
                    ('-', Some(v)) => Ok(v),
                    ('-', None) => Ok(alternative),
                    ('+', Some(_)) => Ok(alternative),
                    ('+', None) => Ok(String::new()),
                    (_, Some(v)) => Ok(v),
                    (_, None) => Err(required(name, alternative, "is not allowed to be unset")),
                }
            }
            modifier => Err(ExpandError::UnsupportedModifier {
                modifier,
                word: shown(self.word),
            }),
        }
    }
}

fn required(name: String, message: String, default: &str) -> ExpandError {
    ExpandError::Required {
        name,
        message: if message.is_empty() {
            default.to_string()
        } else {
            message
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn expand_with(word: &str, vars: &[(&str, &str)]) -> Result<String, ExpandError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        expand_word(word, '\\', &mut |name| vars.get(name).cloned())
    }

    #[test]
    fn substitution_follows_docker_rules() {
        let vars = [("A", "x"), ("EMPTY", ""), ("SP", "a b")];
        let cases = [
            ("$A", "x"),
            ("${A}", "x"),
            ("pre${A}post", "prexpost"),
            ("$A/bin", "x/bin"),
            ("$UNSET", ""),
            ("${UNSET:-d}", "d"),
            ("${EMPTY:-d}", "d"),
            ("${EMPTY-d}", ""),
            ("${UNSET-d}", "d"),
            ("${A:-d}", "x"),
            ("${A:+y}", "y"),
            ("${EMPTY:+y}", ""),
            ("${EMPTY+y}", "y"),
            ("${UNSET+y}", ""),
            ("${UNSET:-${A}}", "x"),
            ("\\$A", "$A"),
            ("'$A'", "$A"),
            ("\"$A\"", "x"),
            ("\"\\$A\"", "$A"),
            ("\"a\\b\"", "a\\b"),
            ("$SP", "a b"),
            ("\"hello world\"", "hello world"),
            ("a\\ b", "a b"),
            ("$", "$"),
            ("$/", "$/"),
            ("100%", "100%"),
            ("${A:-'q r'}", "x"),
            ("${UNSET:-'q r'}", "q r"),
            ("trailing\\", "trailing"),
        ];
        for (word, want) in cases {
            assert_eq!(expand_with(word, &vars).as_deref(), Ok(want), "{word}");
        }
    }

    #[test]
    fn backtick_escape_replaces_backslash() {
        let got = expand_word("C:\\dir `$A", '`', &mut |_| Some("x".into()));
        assert_eq!(got.as_deref(), Ok("C:\\dir $A"));
    }

    #[test]
    fn malformed_substitutions_are_errors() {
        for word in [
            "${A", "${}", "${:-x}", "${A:-x", "'open", "\"open", "${A#x}",
        ] {
            assert!(expand_with(word, &[]).is_err(), "{word}");
        }
        assert_eq!(
            expand_with("${A:?need A}", &[]),
            Err(ExpandError::Required {
                name: "A".into(),
                message: "need A".into()
            })
        );
        assert_eq!(expand_with("${A?}", &[("A", "")]).as_deref(), Ok(""));
        let deep = format!("{}x{}", "${A:-".repeat(10_000), "}".repeat(10_000));
        assert!(matches!(
            expand_with(&deep, &[]),
            Err(ExpandError::TooDeep { .. })
        ));
    }

    #[test]
    fn heredoc_bodies_keep_quotes_and_expand_variables() {
        let got = expand_heredoc("echo '$A' \"$B\" \\$C\n", '\\', &mut |n| {
            Some(n.to_lowercase())
        });
        assert_eq!(got.as_deref(), Ok("echo 'a' \"b\" $C\n"));
    }

    #[test]
    fn unquote_removes_quotes_without_expanding() {
        assert_eq!(unquote("\"EOF\"", '\\').as_deref(), Ok("EOF"));
        assert_eq!(unquote("'$X'", '\\').as_deref(), Ok("$X"));
        assert_eq!(unquote("$X", '\\').as_deref(), Ok("$X"));
    }
}
