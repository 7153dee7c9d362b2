//! `RUN --mount=…`: Docker's mount options (as BuildKit documents them),
//! parsed from one flag value. The parser checks what it can before
//! expansion; a value holding `$` is checked again once expanded.
//!
//! The value is comma-separated `key=value` fields (a field may be quoted
//! with `"` to hold a comma); `type` defaults to `bind`; a boolean key may
//! stand alone (`ro`, `rw`, `required`). `type=ssh` is refused: agent
//! forwarding into a cluster is a design of its own.

use serde::{Deserialize, Serialize};

/// The longest accepted tmpfs `size` (Kubernetes quantities go further,
/// but a memory-backed mount larger than this is a mistake).
const MAX_TMPFS: u64 = 64 << 30;

/// One `--mount`, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum RunMount {
    Bind(BindMount),
    Cache(CacheMount),
    Tmpfs(TmpfsMount),
    Secret(SecretMount),
}

/// Files of the context or of a stage, visible during the RUN; writes are
/// discarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BindMount {
    pub target: String,
    /// A stage (name or index) or an image; `None`: the build context.
    pub from: Option<String>,
    /// The path in `from` (default: its root).
    pub source: String,
    /// Writable during the RUN (the writes still go nowhere).
    pub rw: bool,
}

/// A directory kept between builds, shared by the builds that name its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheMount {
    /// Default: the target.
    pub id: String,
    pub target: String,
    pub sharing: Sharing,
    /// The cache directory's mode, owner and group when it is made.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// A stage (or image) whose `source` seeds an empty cache.
    pub from: Option<String>,
    pub source: String,
    pub read_only: bool,
}

/// How concurrent users of one cache id share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Sharing {
    /// Everyone at once.
    Shared,
    /// A second user waits for the first.
    Locked,
    /// A second user gets a fresh, throw-away directory.
    Private,
}

/// A memory-backed directory, empty at each RUN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TmpfsMount {
    pub target: String,
    /// Bytes.
    pub size: Option<u64>,
}

/// A build secret: a file (and/or a variable) during the RUN only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretMount {
    pub id: String,
    /// The file; `None` when only `env` is asked for.
    pub target: Option<String>,
    /// A variable that holds the value during the RUN.
    pub env: Option<String>,
    /// Missing is an error (else the RUN runs without it).
    pub required: bool,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl RunMount {
    /// The path the RUN sees it at (`None`: a secret given as a variable only).
    pub fn target(&self) -> Option<&str> {
        match self {
            Self::Bind(m) => Some(&m.target),
            Self::Cache(m) => Some(&m.target),
            Self::Tmpfs(m) => Some(&m.target),
            Self::Secret(m) => m.target.as_deref(),
        }
    }

    /// The stage or image it reads from (`from=`).
    pub fn from(&self) -> Option<&str> {
        match self {
            Self::Bind(m) => m.from.as_deref(),
            Self::Cache(m) => m.from.as_deref(),
            Self::Tmpfs(_) | Self::Secret(_) => None,
        }
    }

    /// The path in `from` (`source=`), when it reads one.
    pub fn source(&self) -> Option<&str> {
        match self {
            Self::Bind(m) => Some(&m.source),
            Self::Cache(m) if m.from.is_some() => Some(&m.source),
            _ => None,
        }
    }

    fn set_target(&mut self, target: String) {
        match self {
            Self::Bind(m) => m.target = target,
            Self::Cache(m) => m.target = target,
            Self::Tmpfs(m) => m.target = target,
            Self::Secret(m) => m.target = Some(target),
        }
    }

    /// Relative targets made absolute against `workdir` (as BuildKit does),
    /// `.` and `..` resolved. A cache's default id stays the target as
    /// written (BuildKit's too), so it is known before the workdir is.
    pub fn resolve_target(&mut self, workdir: &std::path::Path) -> Result<(), String> {
        let Some(target) = self.target() else {
            return Ok(());
        };
        let absolute = normalise(&workdir.join(target));
        if absolute == "/" {
            return Err(format!(
                "--mount target `{target}` is the root: mount under it"
            ));
        }
        self.set_target(absolute);
        Ok(())
    }
}

fn normalise(path: &std::path::Path) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.to_str().unwrap_or_default().split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The fields of a `--mount` value: commas split them except inside `"`.
fn fields(spec: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    for c in spec.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    if quoted {
        return Err("a `\"` is not closed".into());
    }
    fields.push(field);
    Ok(fields.into_iter().filter(|f| !f.is_empty()).collect())
}

/// The keys each type takes (aliases included), for the error about another.
const BIND_KEYS: &[&str] = &[
    "target",
    "dst",
    "destination",
    "from",
    "source",
    "src",
    "rw",
    "readwrite",
    "ro",
    "readonly",
];
const CACHE_KEYS: &[&str] = &[
    "id",
    "target",
    "dst",
    "destination",
    "sharing",
    "mode",
    "uid",
    "gid",
    "from",
    "source",
    "src",
    "ro",
    "readonly",
    "rw",
    "readwrite",
];
const TMPFS_KEYS: &[&str] = &["target", "dst", "destination", "size"];
const SECRET_KEYS: &[&str] = &[
    "id",
    "target",
    "dst",
    "destination",
    "env",
    "required",
    "mode",
    "uid",
    "gid",
];

/// Parses one `--mount` value (expanded, or free of `$`).
pub fn parse_mount(spec: &str) -> Result<RunMount, String> {
    let fields = fields(spec)?;
    let mut kind = "bind".to_string();
    let mut pairs: Vec<(String, Option<String>)> = Vec::new();
    for field in fields {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.to_string())),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        if key == "type" {
            kind = value.unwrap_or_default().to_ascii_lowercase();
        } else {
            if pairs.iter().any(|(k, _)| *k == key) {
                return Err(format!("`{key}` is given twice"));
            }
            pairs.push((key, value));
        }
    }
    let keys = match kind.as_str() {
        "bind" => BIND_KEYS,
        "cache" => CACHE_KEYS,
        "tmpfs" => TMPFS_KEYS,
        "secret" => SECRET_KEYS,
        "ssh" => {
            return Err(
                "type=ssh is not supported: SSH agent forwarding into build pods is not offered; use type=secret with a deploy key or token"
                    .into(),
            );
        }
        other => {
            return Err(format!(
                "unknown mount type `{other}` (expected bind, cache, tmpfs or secret)"
            ));
        }
    };
    let mut options = Options::default();
    for (key, value) in pairs {
        if !keys.contains(&key.as_str()) {
            return Err(format!(
                "unknown key `{key}` for type={kind} (accepted: {})",
                keys.join(", ")
            ));
        }
        options.set(&key, value)?;
    }
    options.build(&kind)
}

#[derive(Default)]
struct Options {
    target: Option<String>,
    source: Option<String>,
    from: Option<String>,
    id: Option<String>,
    env: Option<String>,
    sharing: Option<Sharing>,
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    rw: Option<bool>,
    required: Option<bool>,
}

impl Options {
    fn set(&mut self, key: &str, value: Option<String>) -> Result<(), String> {
        let text = |value: Option<String>| match value {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(format!("`{key}` needs a value: {key}=VALUE")),
        };
        let flag = |value: Option<String>| match value.as_deref().map(str::to_ascii_lowercase) {
            None => Ok(true),
            Some(v) if v == "true" => Ok(true),
            Some(v) if v == "false" => Ok(false),
            Some(v) => Err(format!("{key}={v}: expected true or false")),
        };
        let number = |value: Option<String>| {
            let v = text(value)?;
            v.parse::<u32>()
                .map_err(|_| format!("{key}={v}: expected a number"))
        };
        match key {
            "target" | "dst" | "destination" => self.target = Some(text(value)?),
            "source" | "src" => self.source = Some(text(value)?),
            "from" => self.from = Some(text(value)?),
            "id" => self.id = Some(text(value)?),
            "env" => {
                let v = text(value)?;
                if v.contains('=') || v.chars().any(char::is_whitespace) {
                    return Err(format!("env={v}: not a variable name"));
                }
                self.env = Some(v);
            }
            "sharing" => {
                let v = text(value)?;
                self.sharing = Some(match v.to_ascii_lowercase().as_str() {
                    "shared" => Sharing::Shared,
                    "locked" => Sharing::Locked,
                    "private" => Sharing::Private,
                    _ => {
                        return Err(format!("sharing={v}: expected shared, locked or private"));
                    }
                });
            }
            "mode" => {
                let v = text(value)?;
                self.mode = Some(
                    u32::from_str_radix(&v, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| format!("mode={v}: expected an octal mode such as 0755"))?,
                );
            }
            "uid" => self.uid = Some(number(value)?),
            "gid" => self.gid = Some(number(value)?),
            "size" => {
                let v = text(value)?;
                self.size = Some(parse_size(&v).filter(|s| *s <= MAX_TMPFS).ok_or_else(|| {
                    format!("size={v}: expected bytes, or a number with k, m or g, up to 64g")
                })?);
            }
            "rw" | "readwrite" => self.rw = Some(flag(value)?),
            "ro" | "readonly" => self.rw = Some(!flag(value)?),
            "required" => self.required = Some(flag(value)?),
            _ => unreachable!("keys are checked against the type's list"),
        }
        Ok(())
    }

    fn build(self, kind: &str) -> Result<RunMount, String> {
        if let Some(target) = &self.target
            && target.starts_with('/')
            && normalise(std::path::Path::new(target)) == "/"
        {
            return Err(format!("target `{target}` is the root: mount under it"));
        }
        let needs_target = || {
            self.target
                .clone()
                .ok_or_else(|| format!("type={kind} needs target=PATH"))
        };
        Ok(match kind {
            "bind" => RunMount::Bind(BindMount {
                target: needs_target()?,
                from: self.from.clone(),
                source: self.source.clone().unwrap_or_else(|| "/".into()),
                rw: self.rw.unwrap_or(false),
            }),
            "cache" => {
                let target = needs_target()?;
                RunMount::Cache(CacheMount {
                    id: self.id.clone().unwrap_or_else(|| target.clone()),
                    target,
                    sharing: self.sharing.unwrap_or(Sharing::Shared),
                    mode: self.mode.unwrap_or(0o755),
                    uid: self.uid.unwrap_or(0),
                    gid: self.gid.unwrap_or(0),
                    from: self.from.clone(),
                    source: self.source.clone().unwrap_or_else(|| "/".into()),
                    read_only: self.rw == Some(false),
                })
            }
            "tmpfs" => RunMount::Tmpfs(TmpfsMount {
                target: needs_target()?,
                size: self.size,
            }),
            _ => {
                let id = match (&self.id, &self.target) {
                    (Some(id), _) => id.clone(),
                    (None, Some(target)) => target
                        .rsplit('/')
                        .find(|s| !s.is_empty())
                        .unwrap_or_default()
                        .to_string(),
                    (None, None) => {
                        return Err("type=secret needs id=NAME (or a target to name it)".into());
                    }
                };
                if id.is_empty() {
                    return Err("type=secret needs id=NAME".into());
                }
                let target = match (&self.target, &self.env) {
                    (Some(t), _) => Some(t.clone()),
                    (None, Some(_)) => None,
                    (None, None) => Some(format!("/run/secrets/{id}")),
                };
                RunMount::Secret(SecretMount {
                    id,
                    target,
                    env: self.env.clone(),
                    required: self.required.unwrap_or(false),
                    mode: self.mode.unwrap_or(0o400),
                    uid: self.uid.unwrap_or(0),
                    gid: self.gid.unwrap_or(0),
                })
            }
        })
    }
}

/// Bytes, or a number with a `k`, `m` or `g` suffix (binary, as tmpfs reads it).
fn parse_size(text: &str) -> Option<u64> {
    let lower = text.to_ascii_lowercase();
    let lower = lower.strip_suffix('b').unwrap_or(&lower);
    let (digits, shift) = match lower.chars().last()? {
        'k' => (&lower[..lower.len() - 1], 10),
        'm' => (&lower[..lower.len() - 1], 20),
        'g' => (&lower[..lower.len() - 1], 30),
        _ => (lower, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_mount_takes_buildkit_defaults() {
        let RunMount::Cache(m) = parse_mount("type=cache,target=/root/.cache/go-build").unwrap()
        else {
            panic!("not a cache")
        };
        assert_eq!(m.id, "/root/.cache/go-build");
        assert_eq!(m.sharing, Sharing::Shared);
        assert_eq!((m.mode, m.uid, m.gid), (0o755, 0, 0));
        assert!(!m.read_only);
        let RunMount::Cache(m) = parse_mount(
            "type=cache,id=go,dst=/c,sharing=locked,mode=0700,uid=1000,gid=1000,from=builder,source=/seed,ro",
        )
        .unwrap() else {
            panic!("not a cache")
        };
        assert_eq!(
            (m.id.as_str(), m.sharing, m.mode, m.uid, m.read_only),
            ("go", Sharing::Locked, 0o700, 1000, true)
        );
        assert_eq!(m.from.as_deref(), Some("builder"));
    }

    #[test]
    fn a_secret_is_named_by_its_id_or_target() {
        let RunMount::Secret(s) = parse_mount("type=secret,id=token").unwrap() else {
            panic!()
        };
        assert_eq!(s.target.as_deref(), Some("/run/secrets/token"));
        assert_eq!((s.mode, s.required), (0o400, false));
        let RunMount::Secret(s) = parse_mount("type=secret,target=/root/.netrc,required").unwrap()
        else {
            panic!()
        };
        assert_eq!((s.id.as_str(), s.required), (".netrc", true));
        let RunMount::Secret(s) = parse_mount("type=secret,id=npm,env=NPM_TOKEN").unwrap() else {
            panic!()
        };
        assert_eq!((s.target, s.env.as_deref()), (None, Some("NPM_TOKEN")));
    }

    #[test]
    fn bind_is_the_default_type_and_tmpfs_takes_a_size() {
        let RunMount::Bind(b) = parse_mount("target=go.mod,source=go.mod").unwrap() else {
            panic!()
        };
        assert_eq!((b.from, b.rw), (None, false));
        let RunMount::Bind(b) = parse_mount("type=bind,from=deps,target=/src,rw").unwrap() else {
            panic!()
        };
        assert_eq!((b.source.as_str(), b.rw), ("/", true));
        assert_eq!(
            parse_mount("type=tmpfs,target=/t,size=64m").unwrap(),
            RunMount::Tmpfs(TmpfsMount {
                target: "/t".into(),
                size: Some(64 << 20)
            })
        );
        assert_eq!(
            parse_mount("\"type=bind\",\"target=/a,b\"")
                .unwrap()
                .target(),
            Some("/a,b")
        );
    }

    #[test]
    fn every_refusal_says_why() {
        for (spec, needle) in [
            ("type=ssh", "type=ssh is not supported"),
            (
                "type=cache,target=/x,colour=red",
                "unknown key `colour` for type=cache",
            ),
            ("type=volume,target=/x", "unknown mount type `volume`"),
            ("type=cache", "needs target=PATH"),
            (
                "type=cache,target=/x,sharing=sometimes",
                "sharing=sometimes",
            ),
            ("type=cache,target=/x,mode=999", "mode=999"),
            ("type=cache,target=/x,uid=me", "uid=me"),
            ("type=tmpfs,target=/x,size=lots", "size=lots"),
            ("type=secret", "needs id=NAME"),
            ("type=bind,target=/x,target=/y", "`target` is given twice"),
            (
                "type=secret,id=a,size=1",
                "unknown key `size` for type=secret",
            ),
            ("type=bind,target=\"/x", "not closed"),
            ("type=cache,target=/", "is the root"),
            ("type=tmpfs,target=/tmp/..", "is the root"),
        ] {
            let error = parse_mount(spec).unwrap_err();
            assert!(error.contains(needle), "{spec}: {error}");
        }
    }

    #[test]
    fn targets_resolve_against_the_workdir_and_never_to_the_root() {
        let mut m = parse_mount("type=bind,source=go.mod,target=go.mod").unwrap();
        m.resolve_target(std::path::Path::new("/src/app")).unwrap();
        assert_eq!(m.target(), Some("/src/app/go.mod"));
        let mut c = parse_mount("type=cache,target=../cache").unwrap();
        c.resolve_target(std::path::Path::new("/src/app")).unwrap();
        let RunMount::Cache(c) = c else { panic!() };
        assert_eq!(
            (c.id.as_str(), c.target.as_str()),
            ("../cache", "/src/cache")
        );
        for root in ["..", "."] {
            let mut m = parse_mount(&format!("type=tmpfs,target={root}")).unwrap();
            let error = m.resolve_target(std::path::Path::new("/")).unwrap_err();
            assert!(error.contains("is the root"), "{root}: {error}");
        }
    }
}
