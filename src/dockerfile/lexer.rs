//! From text to logical lines: parser directives at the very top, comments,
//! line continuations (with comment and blank lines inside them, as
//! BuildKit allows) and heredoc bodies.

use serde::{Deserialize, Serialize};

use super::expand::unquote;
use super::words::split_words;
use super::{DockerfileError, InstructionError};

/// The parser directives (`# escape=`, `# syntax=`, `# check=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    pub escape: char,
    pub syntax: Option<String>,
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Self {
            escape: '\\',
            syntax: None,
            check: None,
        }
    }
}

/// A here-document: `<<EOF`, `<<-EOF` (leading tabs stripped), `<<"EOF"`
/// (quoted: the body is not expanded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heredoc {
    /// The delimiter, quotes removed; also the file name of a COPY source.
    pub name: String,
    /// The body, one `\n` after every line, tabs already stripped for `<<-`.
    pub content: String,
    /// Written `<<-`.
    pub chomp: bool,
    /// The delimiter was unquoted: variables in the body expand.
    pub expand: bool,
    /// A file descriptor prefix such as `3<<EOF`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<u32>,
}

/// One instruction as the lexer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalLine {
    /// First line (1-based).
    pub line: usize,
    /// Last line, heredoc terminators included.
    pub end_line: usize,
    /// The instruction's lines as written (heredoc bodies left out).
    pub text: String,
    /// Continuations joined, comment lines inside dropped, leading blanks trimmed.
    pub content: String,
    pub heredocs: Vec<Heredoc>,
}

/// Recognises a heredoc marker word (`<<EOF`, `<<-'EOF'`, `3<<EOF`); the
/// word is as split with its quotes kept.
pub fn heredoc_marker(word: &str, escape: char) -> Option<Heredoc> {
    let digits = word.chars().take_while(char::is_ascii_digit).count();
    let after = word[digits..].strip_prefix("<<")?;
    let (chomp, rest) = match after.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, after),
    };
    if rest.is_empty() || rest.contains('<') {
        return None;
    }
    let name = unquote(rest, escape).ok()?;
    if name.is_empty() || name.chars().any(char::is_whitespace) {
        return None;
    }
    let quotes = |s: &str| s.chars().filter(|c| *c == '\'' || *c == '"').count();
    Some(Heredoc {
        expand: quotes(&name) == quotes(rest),
        name,
        content: String::new(),
        chomp,
        fd: word[..digits].parse().ok(),
    })
}

/// Reads the directives at the top; returns them and the index of the first
/// line that is not one.
fn directives(lines: &[&str]) -> Result<(Directives, usize), DockerfileError> {
    let mut found = Directives::default();
    let mut seen: Vec<String> = Vec::new();
    for (i, raw) in lines.iter().enumerate() {
        let Some((key, value)) = directive(raw) else {
            return Ok((found, i));
        };
        let directive_error = |message: String| DockerfileError::Directive {
            line: i + 1,
            name: key.clone(),
            message,
        };
        match key.as_str() {
            "escape" | "syntax" | "check" => {}
            // An unknown directive is a comment, and ends the directives.
            _ => return Ok((found, i)),
        }
        if seen.contains(&key) {
            return Err(directive_error("given twice".into()));
        }
        seen.push(key.clone());
        match key.as_str() {
            "escape" => {
                found.escape = match value.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    other => {
                        return Err(directive_error(format!(
                            "`{other}` is not an escape character: use \\ or `"
                        )));
                    }
                }
            }
            "syntax" => found.syntax = Some(value),
            _ => found.check = Some(value),
        }
    }
    Ok((found, lines.len()))
}

/// `# key=value` with a key of letters and digits.
fn directive(line: &str) -> Option<(String, String)> {
    let body = line.strip_prefix('#')?.trim_start();
    let key_len = body
        .char_indices()
        .find(|(_, c)| !c.is_ascii_alphanumeric())
        .map_or(body.len(), |(i, _)| i);
    let key = &body[..key_len];
    if !key.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let value = body[key_len..].trim_start().strip_prefix('=')?.trim();
    if value.is_empty() {
        return None;
    }
    Some((key.to_ascii_lowercase(), value.to_string()))
}

/// Strips a trailing escape character (and blanks after it): `true` when
/// the line continues.
fn continuation(line: &str, escape: char) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    match trimmed.strip_suffix(escape) {
        Some(rest) => (rest, true),
        None => (line, false),
    }
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// Splits a Dockerfile into its directives and logical lines.
pub fn lex(text: &str) -> Result<(Directives, Vec<LogicalLine>), DockerfileError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let (directives, mut i) = directives(&lines)?;
    let escape = directives.escape;
    let mut out = Vec::new();
    while i < lines.len() {
        let first = lines[i].trim_start();
        if first.is_empty() || is_comment(first) {
            i += 1;
            continue;
        }
        let start = i;
        let (part, mut continues) = continuation(first, escape);
        let mut content = part.to_string();
        i += 1;
        while continues && i < lines.len() {
            let raw = lines[i];
            i += 1;
            if is_comment(raw) || raw.trim().is_empty() {
                continue;
            }
            let (part, more) = continuation(raw, escape);
            content.push_str(part);
            continues = more;
        }
        let text = lines[start..i].join("\n");
        let content = content.trim().to_string();
        if content.is_empty() {
            continue;
        }
        let keyword = content
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let mut heredocs = Vec::new();
        if matches!(keyword.as_str(), "RUN" | "COPY" | "ADD") && content.contains("<<") {
            for word in split_words(&content, escape) {
                let Some(mut heredoc) = heredoc_marker(&word, escape) else {
                    continue;
                };
                let mut terminated = false;
                while i < lines.len() {
                    let raw = lines[i];
                    i += 1;
                    let body_line = if heredoc.chomp {
                        raw.trim_start_matches('\t')
                    } else {
                        raw
                    };
                    if body_line == heredoc.name {
                        terminated = true;
                        break;
                    }
                    heredoc.content.push_str(body_line);
                    heredoc.content.push('\n');
                }
                if !terminated {
                    return Err(DockerfileError::Instruction {
                        line: start + 1,
                        instruction: keyword,
                        error: Box::new(InstructionError::UnterminatedHeredoc {
                            name: heredoc.name,
                        }),
                    });
                }
                heredocs.push(heredoc);
            }
        }
        out.push(LogicalLine {
            line: start + 1,
            end_line: i.max(start + 1),
            text,
            content,
            heredocs,
        });
    }
    Ok((directives, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuations_skip_comments_and_blank_lines() {
        let (_, lines) = lex("RUN a \\\n  # note\n\n  && b \\  \n  && c\nCMD x\n").unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].content, "RUN a   && b   && c");
        assert_eq!((lines[0].line, lines[0].end_line), (1, 5));
        assert_eq!(lines[1].line, 6);
    }

    #[test]
    fn directives_only_count_at_the_very_top() {
        let (d, _) = lex("# syntax=docker/dockerfile:1\n#escape = `\nFROM x").unwrap();
        assert_eq!(d.escape, '`');
        assert_eq!(d.syntax.as_deref(), Some("docker/dockerfile:1"));
        let (d, _) = lex("# hello\n# escape=`\nFROM x").unwrap();
        assert_eq!(d.escape, '\\');
        let (d, _) = lex("\n# escape=`\nFROM x").unwrap();
        assert_eq!(d.escape, '\\');
        let (d, _) = lex("# unknown=1\n# escape=`\nFROM x").unwrap();
        assert_eq!(d.escape, '\\');
        assert!(lex("# escape=x\nFROM x").is_err());
        assert!(lex("# escape=`\n# escape=`\nFROM x").is_err());
    }

    #[test]
    fn heredoc_bodies_are_read_after_the_instruction() {
        let text =
            "RUN <<EOF\n# not a comment\necho $A\nEOF\nCOPY <<-\"A\" <<B /d/\n\tx\n\tA\ny\nB\n";
        let (_, lines) = lex(text).unwrap();
        assert_eq!(lines.len(), 2);
        let run = &lines[0].heredocs[0];
        assert_eq!(run.content, "# not a comment\necho $A\n");
        assert!(run.expand && !run.chomp);
        assert_eq!((lines[0].line, lines[0].end_line), (1, 4));
        let copy = &lines[1].heredocs;
        assert_eq!(
            (copy[0].name.as_str(), copy[0].content.as_str()),
            ("A", "x\n")
        );
        assert!(copy[0].chomp && !copy[0].expand);
        assert_eq!(
            (copy[1].name.as_str(), copy[1].content.as_str()),
            ("B", "y\n")
        );
        assert_eq!(lines[1].line, 5);
    }

    #[test]
    fn an_unterminated_heredoc_names_its_line() {
        let err = lex("FROM x\nRUN <<EOF\necho\n").unwrap_err();
        assert_eq!(err.line(), Some(2));
    }

    #[test]
    fn heredocs_only_in_run_copy_add() {
        let (_, lines) = lex("CMD cat <<EOF\nFROM y\n").unwrap();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].heredocs.is_empty());
    }
}
