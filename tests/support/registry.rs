//! A real CNCF Distribution registry (Debian `docker-registry`, 2.8) on a
//! free loopback port, with its own storage, log and (optionally) auth.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::http::{basic_auth, http_get, percent_encode};
use super::token::{TOKEN_ISSUER, TOKEN_SERVICE, TokenPolicy, TokenRequest, TokenServer};
use super::{run_ok, target_dir};

/// Registries with credentials, by `host:port`, and the docker-style auth
/// file that holds them, so `skopeo_*`/`podman_*` helpers authenticate
/// without being told.
static AUTH_FILES: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());

/// The auth file of the running registry that `reference` points at.
pub(crate) fn auth_file_for(reference: &str) -> Option<PathBuf> {
    let rest = reference.strip_prefix("docker://").unwrap_or(reference);
    let host = rest.split('/').next()?;
    AUTH_FILES.lock().unwrap().get(host).cloned()
}

enum Auth {
    None,
    /// No auth, served over TLS with a certificate from a test CA.
    Tls,
    Htpasswd {
        user: String,
        password: String,
    },
    Token(TokenPolicy),
}

/// A running registry; killed and its storage removed on drop.
pub struct Registry {
    addr: String,
    child: Child,
    dir: tempfile::TempDir,
    credentials: Option<(String, String)>,
    token: Option<TokenServer>,
}

impl Registry {
    /// No authentication.
    pub fn start() -> Self {
        Self::launch(Auth::None)
    }

    /// HTTP Basic with one bcrypt htpasswd entry; anonymous requests get 401.
    pub fn start_htpasswd(user: &str, password: &str) -> Self {
        Self::launch(Auth::Htpasswd {
            user: user.to_string(),
            password: password.to_string(),
        })
    }

    /// Distribution's `auth: token` mode, backed by our own token server
    /// (see `token.rs`) granting what `policy` says.
    pub fn start_token_auth(policy: TokenPolicy) -> Self {
        Self::launch(Auth::Token(policy))
    }

    /// No authentication, HTTPS only, with a certificate for 127.0.0.1 signed
    /// by a CA of its own ([`Registry::ca_pem`]).
    pub fn start_tls() -> Self {
        Self::launch(Auth::Tls)
    }

    /// The CA that signed a TLS registry's certificate.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT/repo:tag`
    pub fn image(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.addr)
    }

    /// Everything the registry printed so far: its structured log and one
    /// Apache combined-format access-log line per HTTP request, e.g.
    /// `127.0.0.1 - - [..] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"`.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The `"METHOD /path"` of every access-log line, in order.
    pub fn requests(&self) -> Vec<String> {
        self.access_log()
            .lines()
            .filter(|l| l.starts_with("127.0.0.1 - "))
            .filter_map(|l| l.split('"').nth(1))
            .map(|r| r.trim_end_matches(" HTTP/1.1").to_string())
            .collect()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The filesystem driver's root directory.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The user and password this registry (or its token server) wants.
    pub fn credentials(&self) -> Option<(String, String)> {
        self.credentials.clone()
    }

    /// A directory with a docker `config.json` holding this registry's
    /// credentials (for `DOCKER_CONFIG`); `None` without credentials.
    pub fn docker_config_dir(&self) -> Option<PathBuf> {
        self.credentials
            .as_ref()
            .map(|_| self.dir.path().join("docker-config"))
    }

    /// That `config.json` itself (what `--authfile` takes).
    pub fn auth_file(&self) -> Option<PathBuf> {
        self.docker_config_dir().map(|d| d.join("config.json"))
    }

    /// The scopes of every request the token server answered, in order.
    pub fn token_requests(&self) -> Vec<Vec<String>> {
        self.token_request_details()
            .into_iter()
            .map(|r| r.scopes)
            .collect()
    }

    /// Every request the token server answered, with user, status and grant.
    pub fn token_request_details(&self) -> Vec<TokenRequest> {
        self.token
            .as_ref()
            .map(TokenServer::requests)
            .unwrap_or_default()
    }

    /// Changes what the token server grants from now on (tokens already
    /// issued keep their grants). Credentials for the helpers stay as they
    /// were at start. Panics unless token auth.
    pub fn set_token_policy(&self, policy: TokenPolicy) {
        self.token
            .as_ref()
            .expect("not a token-auth registry")
            .set_policy(policy);
    }

    /// The token server's `/token` URL (the realm), for token registries.
    pub fn token_realm(&self) -> Option<String> {
        self.token.as_ref().map(TokenServer::realm)
    }

    /// Asks the token server for a token covering `scopes`
    /// (e.g. `repository:app:pull,push`), with this registry's credentials,
    /// as a client would; for hand-made requests. Panics unless token auth.
    pub fn bearer_token(&self, scopes: &[&str]) -> String {
        let realm = self.token_realm().expect("not a token-auth registry");
        let mut url = format!("{realm}?service={}", percent_encode(TOKEN_SERVICE));
        for s in scopes {
            url.push_str("&scope=");
            url.push_str(&percent_encode(s));
        }
        let auth = self.credentials.as_ref().map(|(u, p)| basic_auth(u, p));
        let reply = http_get(&url, auth.as_deref()).expect("token request");
        assert_eq!(reply.status, 200, "token server: {}", reply.text());
        reply.json()["token"]
            .as_str()
            .expect("token in reply")
            .to_string()
    }

    fn launch(auth: Auth) -> Self {
        let tmp_root = target_dir().join("tmp");
        std::fs::create_dir_all(&tmp_root).expect("create target/tmp");
        let dir = tempfile::Builder::new()
            .prefix("registry-")
            .tempdir_in(&tmp_root)
            .expect("registry temp dir");
        std::fs::create_dir_all(dir.path().join("storage")).expect("storage dir");

        let tls = matches!(auth, Auth::Tls);
        let (auth_yaml, credentials, token) = match auth {
            Auth::None => (String::new(), None, None),
            Auth::Tls => (make_tls_certificates(dir.path()), None, None),
            Auth::Htpasswd { user, password } => {
                let entry = run_ok(Command::new("htpasswd").args(["-Bbn", &user, &password]));
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, entry.stdout).expect("write htpasswd");
                let yaml = format!(
                    "auth:\n  htpasswd:\n    realm: slimforge-test\n    path: {}\n",
                    path.display()
                );
                (yaml, Some((user, password)), None)
            }
            Auth::Token(policy) => {
                let credentials = policy.credentials.clone();
                let server = TokenServer::start(dir.path(), policy);
                let yaml = format!(
                    "auth:\n  token:\n    realm: {}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                    server.realm(),
                    server.cert_pem().display()
                );
                (yaml, credentials, Some(server))
            }
        };

        let mut last_log = String::new();
        for _ in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let config = dir.path().join("config.yml");
            std::fs::write(&config, config_yaml(dir.path(), &addr, &auth_yaml))
                .expect("write registry config");
            let log_path = dir.path().join("registry.log");
            let log = File::create(&log_path).expect("create registry log");
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start docker-registry ({e}); run scripts/install-deps")
                });
            if wait_until_up(&mut child, &addr, &log_path, tls) {
                let registry = Registry {
                    addr,
                    child,
                    dir,
                    credentials,
                    token,
                };
                registry.register_credentials();
                return registry;
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if !last_log.contains("address already in use") {
                break;
            }
        }
        panic!("docker-registry did not come up:\n{last_log}");
    }

    fn register_credentials(&self) {
        let (Some((user, password)), Some(dir)) = (&self.credentials, self.docker_config_dir())
        else {
            return;
        };
        std::fs::create_dir_all(&dir).expect("docker-config dir");
        let encoded = basic_auth(user, password)
            .trim_start_matches("Basic ")
            .to_string();
        let config = serde_json::json!({"auths": {self.addr.clone(): {"auth": encoded}}});
        let file = dir.join("config.json");
        std::fs::write(&file, config.to_string()).expect("write docker config.json");
        AUTH_FILES.lock().unwrap().insert(self.addr.clone(), file);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        AUTH_FILES.lock().unwrap().remove(&self.addr);
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The token server stops and the temp dir is removed by their own Drop.
    }
}

fn config_yaml(dir: &Path, addr: &str, auth_yaml: &str) -> String {
    // `accesslog` is on by default in 2.8; spelled out because tests read it.
    format!(
        "version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: {addr}
  secret: slimforge-test-secret
{auth_yaml}",
        storage = dir.join("storage").display()
    )
}

/// Waits for our child to log that it listens (so an answer cannot come
/// from another process that won the port) and `GET /v2/` to answer 200
/// (or 401 under auth).
fn wait_until_up(child: &mut Child, addr: &str, log_path: &Path, tls: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    let url = format!("http://{addr}/v2/");
    let listening = format!("listening on {addr}");
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let log = std::fs::read_to_string(log_path).unwrap_or_default();
        if log.contains(&listening)
            && let Ok(reply) = http_get(&url, None)
        {
            // Over plain HTTP a TLS listener answers 400.
            return matches!(reply.status, 200 | 401) || (tls && reply.status == 400);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A port that was free a moment ago (the caller retries on a clash).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

/// A CA and a server certificate for 127.0.0.1 in `dir`; returns the
/// registry's `http.tls` configuration.
fn make_tls_certificates(dir: &Path) -> String {
    let path = |name: &str| dir.join(name).display().to_string();
    run_ok(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=slimforge-test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        &path("ca.key"),
        "-out",
        &path("ca.pem"),
    ]));
    run_ok(Command::new("openssl").args([
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &path("server.key"),
        "-out",
        &path("server.csr"),
    ]));
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    .expect("write server.ext");
    run_ok(Command::new("openssl").args([
        "x509",
        "-req",
        "-in",
        &path("server.csr"),
        "-CA",
        &path("ca.pem"),
        "-CAkey",
        &path("ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &path("server.ext"),
        "-out",
        &path("server.pem"),
    ]));
    format!(
        "  tls:\n    certificate: {}\n    key: {}\n",
        path("server.pem"),
        path("server.key")
    )
}
