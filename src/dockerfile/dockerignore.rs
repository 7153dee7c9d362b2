//! `.dockerignore` with Docker's rules: one pattern a line, `#` comments at
//! the start of a line, `!` exceptions, the last matching pattern wins,
//! patterns are cleaned (`./a/` → `a`, a leading `/` dropped), `*` and `?`
//! stop at `/`, `**` spans directories, and a pattern that matches a
//! directory matches everything under it.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerIgnoreError {
    #[error(".dockerignore line {line}: `!` without a pattern")]
    EmptyException { line: usize },
    #[error(".dockerignore line {line}: `{pattern}`: {reason}")]
    Pattern {
        line: usize,
        pattern: String,
        reason: &'static str,
    },
}

/// The patterns of a `.dockerignore`, ready to match context paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    exception: bool,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Char(char),
    /// `*`: any run of characters but `/`.
    Star,
    /// `?`: one character but `/`.
    Any,
    /// `**/` (or `**` inside a name): any number of whole directories.
    Dirs,
    /// `**` at the end: anything.
    Rest,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl DockerIgnore {
    pub fn parse(text: &str) -> Result<Self, DockerIgnoreError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            if raw.starts_with('#') {
                continue;
            }
            let mut pattern = raw.trim();
            if pattern.is_empty() {
                continue;
            }
            let exception = pattern.starts_with('!');
            if exception {
                pattern = pattern[1..].trim();
                if pattern.is_empty() {
                    return Err(DockerIgnoreError::EmptyException { line });
                }
            }
            let mut cleaned = clean_path(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            let tokens = compile(&cleaned).map_err(|reason| DockerIgnoreError::Pattern {
                line,
                pattern: pattern.to_string(),
                reason,
            })?;
            patterns.push(Pattern { exception, tokens });
        }
        Ok(Self { patterns })
    }

    /// Whether a context path (`/`-separated, relative to the context root)
    /// is left out of the build context.
    pub fn is_excluded(&self, path: &str) -> bool {
        let path = clean_path(path);
        let path = path.trim_start_matches('/');
        if path.is_empty() || path == "." {
            return false;
        }
        let chars: Vec<char> = path.chars().collect();
        // The path itself and each of its parent directories.
        let mut candidates = vec![chars.len()];
        candidates.extend(
            chars
                .iter()
                .enumerate()
                .filter(|(_, c)| **c == '/')
                .map(|(i, _)| i),
        );
        let mut excluded = false;
        for pattern in &self.patterns {
            if candidates
                .iter()
                .any(|end| matches(&pattern.tokens, &chars[..*end]))
            {
                excluded = !pattern.exception;
            }
        }
        excluded
    }

    /// Whether any pattern is an exception (then an excluded directory
    /// must still be walked: something below it may be let back in).
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exception)
    }
}

/// Go's `path.Clean`: one `/` between names, no `.`, `..` resolved, no
/// trailing `/`, `.` for nothing.
fn clean_path(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

fn compile(pattern: &str) -> Result<Vec<Token>, &'static str> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                tokens.push(if i >= chars.len() {
                    Token::Rest
                } else {
                    Token::Dirs
                });
                continue;
            }
            '*' => tokens.push(Token::Star),
            '?' => tokens.push(Token::Any),
            '\\' => {
                i += 1;
                tokens.push(Token::Char(chars.get(i).copied().unwrap_or('\\')));
            }
            '[' => {
                let (class, next) = compile_class(&chars, i + 1)?;
                tokens.push(class);
                i = next;
                continue;
            }
            c => tokens.push(Token::Char(c)),
        }
        i += 1;
    }
    Ok(tokens)
}

/// `[abc]`, `[a-z]`, `[^0-9]`; returns the token and the index after `]`.
fn compile_class(chars: &[char], mut i: usize) -> Result<(Token, usize), &'static str> {
    let negated = matches!(chars.get(i), Some('^'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let Some(&c) = chars.get(i) else {
            return Err("unterminated character class `[`");
        };
        if c == ']' && !first {
            return Ok((Token::Class { negated, ranges }, i + 1));
        }
        first = false;
        let low = if c == '\\' {
            i += 1;
            *chars.get(i).ok_or("unterminated character class `[`")?
        } else {
            c
        };
        i += 1;
        if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|c| *c != ']') {
            let mut high = chars[i + 1];
            i += 2;
            if high == '\\' {
                high = *chars.get(i).ok_or("unterminated character class `[`")?;
                i += 1;
            }
            if high < low {
                return Err("character range out of order");
            }
            ranges.push((low, high));
        } else {
            ranges.push((low, low));
        }
    }
}

/// Whole-string match, dynamic programming over (token, character).
fn matches(tokens: &[Token], path: &[char]) -> bool {
    // reach[j]: the tokens so far can consume exactly path[..j].
    let mut reach = vec![false; path.len() + 1];
    reach[0] = true;
    for token in tokens {
        let mut next = vec![false; path.len() + 1];
        for j in 0..=path.len() {
            if !reach[j] {
                continue;
            }
            match token {
                Token::Char(c) => {
                    if path.get(j) == Some(c) {
                        next[j + 1] = true;
                    }
                }
                Token::Any => {
                    if path.get(j).is_some_and(|c| *c != '/') {
                        next[j + 1] = true;
                    }
                }
                Token::Class { negated, ranges } => {
                    if let Some(c) = path.get(j).filter(|c| **c != '/') {
                        let inside = ranges.iter().any(|(lo, hi)| (lo..=hi).contains(&c));
                        if inside != *negated {
                            next[j + 1] = true;
                        }
                    }
                }
                Token::Star => {
                    next[j] = true;
                    let mut k = j;
                    while k < path.len() && path[k] != '/' {
                        k += 1;
                        next[k] = true;
                    }
                }
                Token::Dirs => {
                    // Nothing, or anything that ends with a `/`.
                    next[j] = true;
                    for k in j..path.len() {
                        if path[k] == '/' {
                            next[k + 1] = true;
                        }
                    }
                }
                Token::Rest => {
                    for slot in next.iter_mut().skip(j) {
                        *slot = true;
                    }
                }
            }
        }
        reach = next;
    }
    reach[path.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignore(text: &str) -> DockerIgnore {
        DockerIgnore::parse(text).unwrap()
    }

    #[test]
    fn patterns_follow_dockers_rules() {
        let cases: &[(&str, &str, bool)] = &[
            ("*.md", "README.md", true),
            ("*.md", "docs/README.md", false),
            ("**/*.md", "docs/README.md", true),
            ("**/*.md", "README.md", true),
            ("target", "target/debug/x", true),
            ("/target", "target", true),
            ("./target/", "target/x", true),
            ("docs/**", "docs/a/b", true),
            ("docs/**", "docsx", false),
            ("a/**/b", "a/b", true),
            ("a/**/b", "a/x/y/b", true),
            ("?.txt", "a.txt", true),
            ("?.txt", "ab.txt", false),
            ("[a-c].txt", "b.txt", true),
            ("[^a-c].txt", "b.txt", false),
            ("**", "anything/at/all", true),
            ("\\*.md", "*.md", true),
            ("\\*.md", "a.md", false),
            ("temp?", "temp/x", false),
            ("*/temp*", "somedir/temporary.txt", true),
            ("*/*/temp*", "somedir/subdir/temporary.txt", true),
        ];
        for (pattern, path, want) in cases {
            assert_eq!(
                ignore(pattern).is_excluded(path),
                *want,
                "{pattern} vs {path}"
            );
        }
    }

    #[test]
    fn the_last_match_wins_and_exceptions_let_files_back() {
        let rules = ignore("# comment\n*.md\n!README.md\n\n  docs  \n!docs/keep.txt\n");
        assert!(rules.is_excluded("CHANGES.md"));
        assert!(!rules.is_excluded("README.md"));
        assert!(rules.is_excluded("docs/a.txt"));
        assert!(!rules.is_excluded("docs/keep.txt"));
        assert!(!rules.is_excluded("src/main.rs"));
        assert!(rules.has_exceptions());
        let rules = ignore("!README.md\n*.md\n");
        assert!(rules.is_excluded("README.md"));
    }

    #[test]
    fn a_comment_must_start_the_line() {
        let rules = ignore(" #x\n");
        assert!(rules.is_excluded("#x"));
    }

    #[test]
    fn malformed_patterns_are_errors() {
        assert!(matches!(
            DockerIgnore::parse("ok\n!\n"),
            Err(DockerIgnoreError::EmptyException { line: 2 })
        ));
        assert!(matches!(
            DockerIgnore::parse("[abc\n"),
            Err(DockerIgnoreError::Pattern { line: 1, .. })
        ));
    }

    #[test]
    fn paths_are_cleaned() {
        assert_eq!(clean_path("./a//b/../c/"), "a/c");
        assert_eq!(clean_path("/../a"), "/a");
        assert_eq!(clean_path("./"), ".");
        assert!(ignore("a/c").is_excluded("./a/b/../c"));
    }
}
