//! Our own bearer-token server for Distribution's `auth: token` mode
//! (the Docker token protocol): `GET /token?service=S&scope=A&scope=B`,
//! optionally with Basic credentials, answers
//! `{"token": JWT, "access_token": JWT, "expires_in": 300}`.
//!
//! The JWT is RS256, signed by shelling out to `openssl dgst -sha256 -sign`
//! with a key and self-signed certificate made by the `openssl` CLI at start.
//! Distribution 2.8.2 accepts the certificate in the header's `x5c` chain
//! (checked against `rootcertbundle`; a self-signed leaf that is itself the
//! root is fine). Checked by hand: it equally accepts a libtrust `kid`
//! (base32 of the first 30 bytes of SHA-256 over the key's SPKI DER, in
//! colon-separated groups of 4) instead of `x5c`; an unknown `kid` or a bad
//! signature gets 401. We send `x5c` only: no key-id algorithm to get right.
//!
//! Cross-repository mounts: Distribution 2.8 adds `pull` on the `from`
//! repository to the access a `POST /v2/<target>/blobs/uploads/?mount=&from=`
//! needs, before it looks at the mount at all. A token without pull on the
//! source therefore gets **401** with a Bearer challenge whose scope names
//! `repository:<from>:pull` as well; not 202 Accepted (a declined mount with
//! a normal upload session). See `token_mount_without_pull_on_the_source_is_unauthorized`
//! in tests/infra.rs, and `TokenPolicy::deny_pull_on` to provoke it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use super::http::percent_decode;
use super::run_ok;

pub(crate) const TOKEN_SERVICE: &str = "slimforge-test-registry";
pub(crate) const TOKEN_ISSUER: &str = "slimforge-test-token-server";
const TOKEN_LIFETIME_SECS: u64 = 300;

/// What the token server grants.
///
/// The default grants every action requested on every scope, to anyone.
#[derive(Clone, Debug, Default)]
pub struct TokenPolicy {
    /// When set, a token request must carry exactly these Basic credentials;
    /// anything else is answered 401.
    pub credentials: Option<(String, String)>,
    /// Repositories whose name contains one of these strings never get `pull`
    /// (nor `*`); other actions on them are still granted.
    pub deny_pull: Vec<String>,
    /// Grant only the first scope of a request, as token servers that issue
    /// one repository per token do: a mount's pull on the source is dropped.
    pub single_scope: bool,
}

impl TokenPolicy {
    pub fn grant_all() -> Self {
        Self::default()
    }

    pub fn with_credentials(mut self, user: &str, password: &str) -> Self {
        self.credentials = Some((user.to_string(), password.to_string()));
        self
    }

    pub fn single_scope(mut self) -> Self {
        self.single_scope = true;
        self
    }

    pub fn deny_pull_on(mut self, repository_name_contains: &str) -> Self {
        self.deny_pull.push(repository_name_contains.to_string());
        self
    }

    /// The actions granted on one requested scope (`type:name:a,b`).
    fn grant(&self, scope: &str) -> Option<(String, String, Vec<String>)> {
        let (kind, rest) = scope.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        let no_pull = kind == "repository" && self.deny_pull.iter().any(|d| name.contains(d));
        let actions: Vec<String> = actions
            .split(',')
            .filter(|a| !a.is_empty())
            .filter(|a| !(no_pull && (*a == "pull" || *a == "*")))
            .map(str::to_string)
            .collect();
        Some((kind.to_string(), name.to_string(), actions))
    }
}

/// One request the token server answered.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// The `scope` parameters in order (a space-separated one is split).
    pub scopes: Vec<String>,
    pub service: Option<String>,
    /// The Basic user name presented, if any.
    pub user: Option<String>,
    /// HTTP status of the answer (200, or 401 for bad credentials).
    pub status: u16,
    /// The access granted, as `type:name:actions` (empty actions possible).
    pub granted: Vec<String>,
}

struct Shared {
    policy: Mutex<TokenPolicy>,
    key_pem: PathBuf,
    cert_der_b64: String,
    requests: Mutex<Vec<TokenRequest>>,
    serial: AtomicU64,
}

pub(crate) struct TokenServer {
    addr: String,
    cert_pem: PathBuf,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TokenServer {
    /// Makes a key and certificate in `dir` and starts serving on a free
    /// loopback port.
    pub(crate) fn start(dir: &Path, policy: TokenPolicy) -> Self {
        let key_pem = dir.join("token-key.pem");
        let cert_pem = dir.join("token-cert.pem");
        run_ok(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args(["-subj", "/CN=slimforge-test-token-server", "-keyout"])
                .arg(&key_pem)
                .arg("-out")
                .arg(&cert_pem),
        );
        let der = run_ok(
            Command::new("openssl")
                .args(["x509", "-outform", "DER", "-in"])
                .arg(&cert_pem),
        )
        .stdout;
        let shared = Arc::new(Shared {
            policy: Mutex::new(policy),
            key_pem,
            cert_der_b64: STANDARD.encode(der),
            requests: Mutex::new(Vec::new()),
            serial: AtomicU64::new(0),
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        let addr = listener.local_addr().expect("token addr").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let shared = shared.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("token-server".into())
                .spawn(move || accept_loop(listener, shared, stop))
                .expect("spawn token server")
        };
        TokenServer {
            addr,
            cert_pem,
            shared,
            stop,
            thread: Some(thread),
        }
    }

    pub(crate) fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub(crate) fn cert_pem(&self) -> &Path {
        &self.cert_pem
    }

    pub(crate) fn requests(&self) -> Vec<TokenRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub(crate) fn set_policy(&self, policy: TokenPolicy) {
        *self.shared.policy.lock().unwrap() = policy;
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept().
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        let shared = shared.clone();
        std::thread::spawn(move || {
            let _ = serve(conn, &shared);
        });
    }
}

fn serve(mut conn: TcpStream, shared: &Shared) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 || head.len() > 64 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or("").split_whitespace();
    let method = request_line.next().unwrap_or("");
    let target = request_line.next().unwrap_or("");
    let authorization = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim().to_string());

    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, body) = if method != "GET" || path != "/token" {
        (404, r#"{"errors":[{"code":"NOT_FOUND"}]}"#.to_string())
    } else {
        answer_token(shared, query, authorization.as_deref())
    };
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        _ => "Not Found",
    };
    let mut reply = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 401 {
        reply.push_str("WWW-Authenticate: Basic realm=\"slimforge-test-token-server\"\r\n");
    }
    reply.push_str("\r\n");
    reply.push_str(&body);
    conn.write_all(reply.as_bytes())?;
    conn.flush()
}

fn answer_token(shared: &Shared, query: &str, authorization: Option<&str>) -> (u16, String) {
    let mut scopes = Vec::new();
    let mut service = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "scope" => scopes.extend(
                percent_decode(v)
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            ),
            "service" => service = Some(percent_decode(v)),
            _ => {}
        }
    }
    let presented = authorization.and_then(decode_basic);
    let user = presented.as_ref().map(|(u, _)| u.clone());
    let policy = shared.policy.lock().unwrap().clone();
    let allowed = match &policy.credentials {
        None => true,
        Some(expected) => presented.as_ref() == Some(expected),
    };
    let mut record = TokenRequest {
        scopes: scopes.clone(),
        service: service.clone(),
        user: user.clone(),
        status: 401,
        granted: Vec::new(),
    };
    if !allowed {
        shared.requests.lock().unwrap().push(record);
        return (
            401,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#.to_string(),
        );
    }

    let mut access = Vec::new();
    // A single-repository server answers only the first scope it is asked.
    let asked = if policy.single_scope {
        &scopes[..scopes.len().min(1)]
    } else {
        &scopes[..]
    };
    for scope in asked {
        if let Some((kind, name, actions)) = policy.grant(scope) {
            record
                .granted
                .push(format!("{kind}:{name}:{}", actions.join(",")));
            access.push(serde_json::json!({"type": kind, "name": name, "actions": actions}));
        }
    }
    let token = sign_jwt(
        shared,
        user.as_deref().unwrap_or(""),
        service.as_deref().unwrap_or(TOKEN_SERVICE),
        access,
    );
    record.status = 200;
    shared.requests.lock().unwrap().push(record);
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": TOKEN_LIFETIME_SECS,
    });
    (200, body.to_string())
}

fn decode_basic(header: &str) -> Option<(String, String)> {
    let encoded = header.strip_prefix("Basic ")?.trim();
    let raw = String::from_utf8(STANDARD.decode(encoded).ok()?).ok()?;
    let (u, p) = raw.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn sign_jwt(
    shared: &Shared,
    subject: &str,
    audience: &str,
    access: Vec<serde_json::Value>,
) -> String {
    let now = unix_now();
    let header = serde_json::json!({
        "typ": "JWT",
        "alg": "RS256",
        "x5c": [shared.cert_der_b64],
    });
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER,
        "sub": subject,
        "aud": audience,
        "exp": now + TOKEN_LIFETIME_SECS,
        // Slack for clock reads between us and the registry.
        "nbf": now - 10,
        "iat": now,
        "jti": format!("{}-{}-{now}", std::process::id(), shared.serial.fetch_add(1, Ordering::Relaxed)),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&shared.key_pem)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn openssl dgst");
    child
        .stdin
        .take()
        .expect("openssl stdin")
        .write_all(signing_input.as_bytes())
        .expect("write signing input");
    let out = child.wait_with_output().expect("openssl dgst");
    assert!(
        out.status.success(),
        "openssl dgst -sign failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(out.stdout))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}
