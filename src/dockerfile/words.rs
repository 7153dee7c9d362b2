//! Splitting an instruction's arguments into flags and words, the way
//! Docker's parser does before any expansion.

/// Leading `--flag[=value]` words and the rest of the line. Quotes and
/// backslashes inside a flag are resolved (`--chown="1000:1000"`); `--`
/// alone ends the flags.
pub fn split_flags(line: &str) -> (Vec<String>, &str) {
    let mut flags = Vec::new();
    let mut rest = line.trim_start();
    loop {
        if !rest.starts_with("--") {
            return (flags, rest);
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        let mut chars = rest.char_indices();
        let mut end = rest.len();
        while let Some((i, c)) = chars.next() {
            match quote {
                None if c.is_whitespace() => {
                    end = i;
                    break;
                }
                None if c == '\'' || c == '"' => quote = Some(c),
                Some(q) if c == q => quote = None,
                _ if c == '\\' => {
                    if let Some((_, next)) = chars.next() {
                        word.push(next);
                    }
                }
                _ => word.push(c),
            }
        }
        rest = rest[end..].trim_start();
        if word == "--" {
            return (flags, rest);
        }
        flags.push(word);
    }
}

/// Whitespace-separated words where quoted parts (and escaped characters)
/// stay inside one word, quotes and escapes kept for the expansion step:
/// `A="x y" B=1` is two words.
pub fn split_words(line: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            None => {
                in_word = true;
                if c == '\'' || c == '"' {
                    quote = Some(c);
                    word.push(c);
                } else if c == escape {
                    if let Some(next) = chars.next() {
                        word.push(c);
                        word.push(next);
                    }
                } else {
                    word.push(c);
                }
            }
            Some(q) => {
                if c == q {
                    quote = None;
                    word.push(c);
                } else if c == escape && q != '\'' {
                    word.push(c);
                    if let Some(next) = chars.next() {
                        word.push(next);
                    }
                } else {
                    word.push(c);
                }
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The JSON (exec) form: an array of strings, or `None` when the text is
/// not one (then it is the shell form).
pub fn json_array(text: &str) -> Option<Vec<String>> {
    let text = text.trim();
    if !text.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(text).ok()
}

/// JSON array, or else whitespace-separated words (COPY, ADD, VOLUME).
pub fn json_or_fields(text: &str) -> (Vec<String>, bool) {
    match json_array(text) {
        Some(words) => (words, true),
        None => (text.split_whitespace().map(str::to_string).collect(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_stop_at_the_first_other_word() {
        let (flags, rest) = split_flags("--from=build --chown=\"1 0\"  /a /b --x");
        assert_eq!(flags, ["--from=build", "--chown=1 0"]);
        assert_eq!(rest, "/a /b --x");
        let (flags, rest) = split_flags("-- --weird /dst");
        assert!(flags.is_empty());
        assert_eq!(rest, "--weird /dst");
        let (flags, rest) = split_flags("--link");
        assert_eq!(flags, ["--link"]);
        assert_eq!(rest, "");
    }

    #[test]
    fn quoted_words_stay_together() {
        assert_eq!(
            split_words(r#"A="x y" B='1 2' C=a\ b  D"#, '\\'),
            [r#"A="x y""#, "B='1 2'", r"C=a\ b", "D"]
        );
        assert_eq!(split_words("  ", '\\'), Vec::<String>::new());
        assert_eq!(split_words("a`  b", '`'), ["a` ", "b"]);
    }

    #[test]
    fn json_form_needs_an_array_of_strings() {
        assert_eq!(
            json_array(r#" ["a", "b c"] "#),
            Some(vec!["a".into(), "b c".into()])
        );
        assert_eq!(json_array("[1]"), None);
        assert_eq!(json_array("[a]"), None);
        assert_eq!(json_array("echo [a]"), None);
        assert_eq!(json_array("[]"), Some(vec![]));
    }
}
