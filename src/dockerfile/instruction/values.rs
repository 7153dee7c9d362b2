//! Rules for single values in instructions, shared with the layers that
//! apply them (the recipe, the helper's COPY).

/// Docker's rule for stage names: a letter, then letters, digits, `-_.`.
pub fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

/// A URL or git reference, which ADD would fetch.
pub fn is_remote(source: &str) -> bool {
    let lower = source.to_ascii_lowercase();
    ["http://", "https://", "git://", "git@", "ssh://"]
        .iter()
        .any(|p| lower.starts_with(p))
}

/// A `--chmod` mode: one to four octal digits.
pub fn valid_octal_mode(mode: &str) -> bool {
    (1..=4).contains(&mode.len()) && mode.chars().all(|c| ('0'..='7').contains(&c))
}

pub(super) fn valid_port(spec: &str) -> bool {
    let (range, protocol) = match spec.split_once('/') {
        Some((range, protocol)) => (range, Some(protocol.to_ascii_lowercase())),
        None => (spec, None),
    };
    let number =
        |s: &str| !s.is_empty() && s.len() <= 5 && s.parse::<u32>().is_ok_and(|n| n <= 65535);
    let range_ok = match range.split_once('-') {
        Some((low, high)) => number(low) && number(high),
        None => number(range),
    };
    range_ok && protocol.is_none_or(|p| matches!(p.as_str(), "tcp" | "udp" | "sctp"))
}

/// A Go duration: `0`, or numbers with units ns us µs ms s m h (`1m30s`).
pub fn valid_duration(text: &str) -> bool {
    if text == "0" {
        return true;
    }
    let mut rest = text;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return false;
        }
        rest = &rest[number_len..];
        let Some(unit) = ["ns", "us", "µs", "ms", "s", "m", "h"]
            .iter()
            .find(|u| rest.starts_with(*u))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
    }
    true
}

/// Whether a COPY/ADD destination, as written, names a directory: a
/// trailing `/`, or `.`/`..` (alone or as the last component). BuildKit
/// reads `COPY a b .` so; the classic builder wanted the `/`.
pub fn written_as_directory(destination: &str) -> bool {
    destination.ends_with('/')
        || destination == "."
        || destination == ".."
        || destination.ends_with("/.")
        || destination.ends_with("/..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        for ok in ["0", "30s", "1m30s", "500ms", "1.5h", "10us"] {
            assert!(valid_duration(ok), "{ok}");
        }
        for bad in ["", "30", "s", "1x", "-1s", "1..2s"] {
            assert!(!valid_duration(bad), "{bad}");
        }
    }

    #[test]
    fn ports() {
        for ok in ["80", "80/tcp", "53/UDP", "8000-8010/tcp", "65535"] {
            assert!(valid_port(ok), "{ok}");
        }
        for bad in ["", "http", "80/xyz", "70000", "1-", "0.0.0.0:80"] {
            assert!(!valid_port(bad), "{bad}");
        }
    }
}
