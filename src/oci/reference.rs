//! Image references parsed and normalised as Docker does (`busybox` is
//! `docker.io/library/busybox:latest`). oci-spec's own parser compiles a
//! large Unicode regex on first use (about 100 ms and 13 MB, a third of an
//! assembly's run time); these rules are short, so they live here and build
//! oci-spec's `Reference` directly.
//!
//! This is slimforge's one image-reference grammar: the planner checks
//! FROM and `COPY --from` images with it, the controller the output image
//! and its tags, the registry client and the local driver what they push
//! and pull.

use oci_client::Reference;

const DOCKER_HUB: &str = "docker.io";
const MAX_NAME: usize = 255;

/// Parses and normalises a reference; `Err` says why it is not valid.
pub fn parse(reference: &str) -> Result<Reference, String> {
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (reference, None),
    };
    // A `:` after the last `/` starts the tag; an earlier one is a port.
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if name.is_empty() {
        return Err("no repository name".into());
    }
    let (domain, path) = match name.split_once('/') {
        Some((first, path))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first, path.to_string())
        }
        _ => (DOCKER_HUB, name.to_string()),
    };
    let domain = if domain == "index.docker.io" {
        DOCKER_HUB
    } else {
        domain
    };
    let path = if domain == DOCKER_HUB && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    if !valid_domain(domain) {
        return Err(format!("invalid registry `{domain}`"));
    }
    if let Some(bad) = path.split('/').find(|c| !valid_component(c)) {
        return Err(component_error(bad));
    }
    if domain.len() + 1 + path.len() > MAX_NAME {
        return Err(format!("repository name longer than {MAX_NAME} characters"));
    }
    if let Some(tag) = tag
        && !valid_tag(tag)
    {
        return Err(format!("invalid tag `{tag}`"));
    }
    if let Some(digest) = digest
        && !valid_digest(digest)
    {
        return Err(format!("invalid digest `{digest}`"));
    }
    let (domain, tag, digest) = (
        domain.to_string(),
        tag.map(str::to_string),
        digest.map(str::to_string),
    );
    Ok(match (tag, digest) {
        (Some(tag), Some(digest)) => Reference::with_tag_and_digest(domain, path, tag, digest),
        (None, Some(digest)) => Reference::with_digest(domain, path, digest),
        (tag, None) => Reference::with_tag(domain, path, tag.unwrap_or_else(|| "latest".into())),
    })
}

/// Why a repository name component is invalid; upper case, the common
/// slip, is named as such.
fn component_error(component: &str) -> String {
    let rule = if component.chars().any(|c| c.is_ascii_uppercase()) {
        "repository names must be lower-case"
    } else {
        "lowercase letters, digits and . _ __ - separators only"
    };
    format!("invalid repository name component `{component}`: {rule}")
}

/// `host`, `host:port`, `[ipv6]:port`.
fn valid_domain(domain: &str) -> bool {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, port)) => {
                if v6.is_empty() || !v6.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
                    return false;
                }
                (
                    None,
                    port.strip_prefix(':')
                        .map(Some)
                        .unwrap_or(if port.is_empty() { None } else { return false }),
                )
            }
            None => return false,
        }
    } else {
        match domain.rsplit_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(domain), None),
        }
    };
    let host_ok = host.is_none_or(|h| {
        !h.is_empty()
            && h.split('.').all(|label| {
                !label.is_empty()
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    });
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.chars().all(|c| c.is_ascii_digit()));
    host_ok && port_ok
}

/// `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
fn valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-')) {
            return false;
        }
    }
    true
}

/// Whether `tag` is a valid tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = tag.chars();
    chars.next().is_some_and(word)
        && tag.len() <= 128
        && chars.all(|c| word(c) || c == '.' || c == '-')
}

/// `algorithm:hex`, with sha256 and sha512 lengths checked.
fn valid_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let algorithm_ok = !algorithm.is_empty()
        && algorithm.split(['+', '.', '_', '-']).all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        });
    let hex_ok = hex.len() >= 32 && hex.chars().all(|c| c.is_ascii_hexdigit());
    let length_ok = match algorithm {
        "sha256" => hex.len() == 64,
        "sha512" => hex.len() == 128,
        _ => true,
    };
    algorithm_ok && hex_ok && length_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// oci-spec's regex parser is the oracle: same verdict, same fields.
    #[test]
    fn agrees_with_the_regex_parser() {
        let cases = [
            "busybox".to_string(),
            "busybox:1.36".into(),
            "library/busybox".into(),
            "docker.io/busybox".into(),
            "index.docker.io/library/busybox:latest".into(),
            "team/app".into(),
            "ghcr.io/owner/app:v1.2.3".into(),
            "127.0.0.1:5000/goapp:v1".into(),
            "localhost/app".into(),
            "localhost:5000/a/b/c".into(),
            "registry.example.com:443/x__y/z-w.v:tag_1".into(),
            format!("127.0.0.1:5000/app@{DIGEST}"),
            format!("app:v1@{DIGEST}"),
            "Bad Name".into(),
            "app:".into(),
            "app:-tag".into(),
            "a//b".into(),
            "-a/b".into(),
            "a_/b".into(),
            "app@sha256:short".into(),
            ":tag".into(),
            "".into(),
            "a..b/c".into(),
            "127.0.0.1:5000/Bad Name:v1".into(),
            format!("x/{}", "t".repeat(300)),
        ];
        for case in cases {
            let ours = parse(&case);
            let theirs = case.parse::<Reference>();
            match (&ours, &theirs) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(
                        (a.registry(), a.repository(), a.tag(), a.digest()),
                        (b.registry(), b.repository(), b.tag(), b.digest()),
                        "{case}"
                    );
                    assert_eq!(a.to_string(), b.to_string(), "{case}");
                }
                (Err(_), Err(_)) => {}
                _ => panic!("`{case}`: ours {ours:?}, regex {theirs:?}"),
            }
        }
        // Docker refuses upper case in repository names; oci-spec lets it pass.
        assert!(parse("UPPER/case").is_err());
        assert!(parse("127.0.0.1:5000/Team/app").is_err());
    }

    /// The references Dockerfiles name (FROM, COPY --from).
    #[test]
    fn dockerfile_images() {
        for ok in [
            "alpine",
            "alpine:3.19",
            "golang:1.22-alpine",
            "gcr.io/distroless/static:nonroot",
            "localhost:5000/team/app:v1",
            "registry.example.com/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "docker.io/library/ubuntu",
            "scratch",
        ] {
            assert!(parse(ok).is_ok(), "{ok}");
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
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn upper_case_is_named_as_the_fault() {
        let reason = parse("Alpine").unwrap_err();
        assert!(reason.contains("`Alpine`"), "{reason}");
        assert!(reason.contains("must be lower-case"), "{reason}");
        let reason = parse("a_/b").unwrap_err();
        assert!(reason.contains("separators only"), "{reason}");
    }

    #[test]
    fn tags() {
        for ok in ["v1", "1.36", "_x", "latest", "a-b.c_d", &"t".repeat(128)] {
            assert!(valid_tag(ok), "{ok}");
        }
        for bad in ["", ".v1", "-v1", "a b", "a/b", "a:b", &"t".repeat(129)] {
            assert!(!valid_tag(bad), "{bad}");
        }
    }
}
