//! Registry access built on oci-client: references, credentials, tokens,
//! retries, and the two things oci-client does not do for us: a bearer token
//! scoped to several repositories (a cross-repository mount needs pull on the
//! source and push on the target) and a mount the registry declines (202).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::TryStreamExt;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::{Digest, Sha256};

use super::Platform;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST_TYPES: &[&str] = &[
    OCI_MANIFEST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
];

const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference `{reference}`: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("cannot reach registry {registry}: {detail}")]
    Unreachable { registry: String, detail: String },
    #[error("registry {registry} refused the credentials{user}: HTTP 401 Unauthorized")]
    Unauthorized { registry: String, user: String },
    #[error("{what}: {detail}")]
    Request { what: String, detail: String },
    #[error("{reference}: no manifest for platform {platform} (the image has: {available})")]
    NoPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("auth file {path}: {detail}")]
    AuthFile { path: PathBuf, detail: String },
    #[error("CA bundle {path}: {detail}")]
    CaBundle { path: PathBuf, detail: String },
    /// The dockerconfigjson given in memory ([`RegistryOptions::auth_json`]);
    /// the detail never quotes it.
    #[error("registry credentials (dockerconfigjson): {detail}")]
    AuthJson { detail: String },
    #[error("{what}: content does not match its digest (got {actual})")]
    DigestMismatch { what: String, actual: String },
    /// HTTP 429: the registry asks us to slow down, for `retry_after` when
    /// it says (its `Retry-After`). Never retried here: the caller backs off.
    #[error("{what}: the registry is rate limiting (HTTP 429){}", retry_after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default())]
    RateLimited {
        what: String,
        retry_after: Option<Duration>,
    },
}

/// How to reach registries.
#[derive(Clone, Default)]
pub struct RegistryOptions {
    /// Plain HTTP or unverified TLS.
    pub insecure: bool,
    /// Extra trusted CA certificates (PEM).
    pub ca_bundle: Option<PathBuf>,
    /// A dockerconfigjson file; anonymous access when absent (and no
    /// `auth_json`).
    pub auth_file: Option<PathBuf>,
    /// A dockerconfigjson's content (a `kubernetes.io/dockerconfigjson`
    /// Secret's bytes), read exactly as `auth_file` is; used instead of
    /// `auth_file` when both are given. Never logged: `Debug` redacts it.
    pub auth_json: Option<String>,
}

impl std::fmt::Debug for RegistryOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryOptions")
            .field("insecure", &self.insecure)
            .field("ca_bundle", &self.ca_bundle)
            .field("auth_file", &self.auth_file)
            .field("auth_json", &self.auth_json.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Parses a reference the way Docker does: `busybox` is
/// `docker.io/library/busybox:latest`.
pub fn parse_reference(reference: &str) -> Result<Reference, RegistryError> {
    super::reference::parse(reference).map_err(|reason| RegistryError::InvalidReference {
        reference: reference.to_string(),
        reason,
    })
}

/// `registry/repository`, as users write it (docker.io, not index.docker.io).
pub fn repository_name(reference: &Reference) -> String {
    format!("{}/{}", reference.registry(), reference.repository())
}

/// An image manifest pinned by digest, with the exact bytes it was served as.
#[derive(Debug, Clone)]
pub struct PinnedManifest {
    /// The reference by digest.
    pub reference: Reference,
    pub digest: String,
    pub media_type: String,
    pub bytes: bytes::Bytes,
}

/// How a registry asks to be authenticated (its `WWW-Authenticate` on `/v2/`).
enum Challenge {
    None,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

enum Credential {
    Anonymous,
    Password(String, String),
    IdentityToken(String),
}

pub struct Registry {
    oci: Client,
    http: reqwest::Client,
    schemes: HashMap<String, &'static str>,
    challenges: HashMap<String, Challenge>,
    credentials: HashMap<String, Credential>,
    /// Bearer tokens by host and scopes, until shortly before they expire:
    /// a registry polled every minute is not asked for a token each time.
    tokens: std::sync::Mutex<HashMap<String, (String, std::time::Instant)>>,
}

/// A token is used until this long before the expiry its server gave.
const TOKEN_MARGIN: Duration = Duration::from_secs(10);
/// The lifetime of a token whose server gave none (the distribution spec's
/// default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

impl Registry {
    /// Reaches every registry in `references` once: chooses the scheme (plain
    /// HTTP only when insecure), learns how it authenticates and checks the
    /// credentials, so a wrong password fails here with the registry named.
    pub async fn connect(
        options: &RegistryOptions,
        references: &[&Reference],
    ) -> Result<Self, RegistryError> {
        let mut certificates = Vec::new();
        if let Some(path) = &options.ca_bundle {
            let data = std::fs::read(path).map_err(|e| RegistryError::CaBundle {
                path: path.clone(),
                detail: e.to_string(),
            })?;
            certificates.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .danger_accept_invalid_certs(options.insecure);
        for cert in &certificates {
            let cert = reqwest::Certificate::from_pem(&cert.data).map_err(|e| {
                RegistryError::CaBundle {
                    path: options.ca_bundle.clone().unwrap_or_default(),
                    detail: e.to_string(),
                }
            })?;
            http = http.add_root_certificate(cert);
        }
        let http = http.build().map_err(|e| RegistryError::Request {
            what: "HTTP client".into(),
            detail: e.to_string(),
        })?;

        let mut registry = Self {
            oci: Client::default(),
            http,
            schemes: HashMap::new(),
            challenges: HashMap::new(),
            credentials: HashMap::new(),
            tokens: std::sync::Mutex::new(HashMap::new()),
        };
        for reference in references {
            let host = reference.resolve_registry().to_string();
            if registry.schemes.contains_key(&host) {
                continue;
            }
            let credential = load_credential(options, reference)?;
            let (scheme, challenge) = registry.ping(&host, options.insecure).await?;
            registry.schemes.insert(host.clone(), scheme);
            registry.challenges.insert(host.clone(), challenge);
            registry.credentials.insert(host, credential);
        }

        let plain: Vec<String> = registry
            .schemes
            .iter()
            .filter(|(_, scheme)| **scheme == "http")
            .map(|(host, _)| host.clone())
            .collect();
        registry.oci = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain),
            accept_invalid_certificates: options.insecure,
            extra_root_certificates: certificates,
            use_monolithic_push: true,
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(120)),
            user_agent: concat!("slimforge/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        });
        for (host, credential) in &registry.credentials {
            let auth = match credential {
                Credential::Password(user, password) => {
                    RegistryAuth::Basic(user.clone(), password.clone())
                }
                _ => RegistryAuth::Anonymous,
            };
            registry.oci.store_auth_if_needed(host, &auth).await;
        }
        for reference in references {
            registry.check_credentials(reference).await?;
        }
        Ok(registry)
    }

    async fn ping(
        &self,
        host: &str,
        insecure: bool,
    ) -> Result<(&'static str, Challenge), RegistryError> {
        let schemes: &[&'static str] = if insecure {
            &["https", "http"]
        } else {
            &["https"]
        };
        let mut errors = Vec::new();
        for (i, scheme) in schemes.iter().enumerate() {
            let url = format!("{scheme}://{host}/v2/");
            // An insecure registry answering in plain HTTP fails the TLS
            // handshake at once: no point retrying https.
            let fall_back = i + 1 < schemes.len();
            let response = retry(&url, || async {
                match self.http.get(&url).send().await.map_err(Transient::from) {
                    Err(Transient::Retry(detail)) if fall_back => Err(Transient::Fatal(detail)),
                    other => other,
                }
            })
            .await;
            match response {
                Ok(response) => {
                    let challenge = response
                        .headers()
                        .get(reqwest::header::WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .map(parse_challenge)
                        .unwrap_or(Challenge::None);
                    return Ok((scheme, challenge));
                }
                Err(e) => errors.push(e),
            }
        }
        let last_error = errors.join("; then ");
        Err(RegistryError::Unreachable {
            registry: host.to_string(),
            detail: last_error,
        })
    }

    async fn check_credentials(&self, reference: &Reference) -> Result<(), RegistryError> {
        let host = reference.resolve_registry();
        let user = match self.credentials.get(host) {
            Some(Credential::Password(user, _)) => format!(" for user `{user}`"),
            Some(Credential::IdentityToken(_)) => " (identity token)".to_string(),
            _ => String::new(),
        };
        let unauthorized = || RegistryError::Unauthorized {
            registry: host.to_string(),
            user: user.clone(),
        };
        match self.challenges.get(host) {
            Some(Challenge::Basic) => {
                let Some(Credential::Password(name, password)) = self.credentials.get(host) else {
                    return Ok(());
                };
                let url = format!("{}://{host}/v2/", self.scheme(host));
                let response = retry(&url, || async {
                    self.http
                        .get(&url)
                        .basic_auth(name, Some(password))
                        .send()
                        .await
                        .map_err(Transient::from)
                })
                .await
                .map_err(|detail| RegistryError::Unreachable {
                    registry: host.to_string(),
                    detail,
                })?;
                if response.status() == reqwest::StatusCode::UNAUTHORIZED {
                    return Err(unauthorized());
                }
                Ok(())
            }
            Some(Challenge::Bearer { .. }) => {
                let scope = format!("repository:{}:pull", reference.repository());
                self.token(host, &[scope]).await.map(|_| ())
            }
            _ => Ok(()),
        }
    }

    fn scheme(&self, host: &str) -> &'static str {
        self.schemes.get(host).copied().unwrap_or("https")
    }

    /// A bearer token for `scopes` from the registry's token server, or None
    /// when the registry does not use tokens.
    async fn token(&self, host: &str, scopes: &[String]) -> Result<Option<String>, RegistryError> {
        let Some(Challenge::Bearer { realm, service }) = self.challenges.get(host) else {
            return Ok(None);
        };
        let mut query: Vec<(&str, &str)> = scopes.iter().map(|s| ("scope", s.as_str())).collect();
        if let Some(service) = service {
            query.push(("service", service));
        }
        let credential = self.credentials.get(host).unwrap_or(&Credential::Anonymous);
        let joined_scopes = scopes.join(" ");
        let cache_key = format!("{host} {joined_scopes}");
        let now = std::time::Instant::now();
        if let Some((token, until)) = self.cached_tokens().get(&cache_key)
            && *until > now
        {
            return Ok(Some(token.clone()));
        }
        let response = retry(realm, || async {
            let request = match credential {
                Credential::IdentityToken(token) => {
                    let mut form = vec![
                        ("grant_type", "refresh_token"),
                        ("refresh_token", token.as_str()),
                        ("client_id", "slimforge"),
                    ];
                    form.extend(query.iter().filter(|(k, _)| *k != "scope").copied());
                    form.push(("scope", &joined_scopes));
                    self.http.post(realm).form(&form)
                }
                Credential::Password(user, password) => self
                    .http
                    .get(realm)
                    .query(&query)
                    .basic_auth(user, Some(password)),
                Credential::Anonymous => self.http.get(realm).query(&query),
            };
            let response = request.send().await.map_err(Transient::from)?;
            if response.status().is_server_error() {
                return Err(Transient::Retry(format!("HTTP {}", response.status())));
            }
            Ok(response)
        })
        .await
        .map_err(|detail| RegistryError::Unreachable {
            registry: format!("{host} (token server {realm})"),
            detail,
        })?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(RegistryError::Unauthorized {
                registry: host.to_string(),
                user: match credential {
                    Credential::Password(user, _) => format!(" for user `{user}`"),
                    _ => String::new(),
                },
            });
        }
        if !status.is_success() {
            return Err(RegistryError::Request {
                what: format!("token server {realm}"),
                detail: format!("HTTP {status}"),
            });
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let body: TokenResponse = response.json().await.map_err(|e| RegistryError::Request {
            what: format!("token server {realm}"),
            detail: e.to_string(),
        })?;
        let lifetime = body
            .expires_in
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        let token = body
            .token
            .or(body.access_token)
            .ok_or_else(|| RegistryError::Request {
                what: format!("token server {realm}"),
                detail: "answer holds no token".into(),
            })?;
        if let Some(usable) = lifetime.checked_sub(TOKEN_MARGIN) {
            let mut tokens = self.cached_tokens();
            // Expired ones go; the map holds a few scopes per registry.
            tokens.retain(|_, (_, until)| *until > now);
            tokens.insert(cache_key, (token.clone(), now + usable));
        }
        Ok(Some(token))
    }

    fn cached_tokens(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (String, std::time::Instant)>> {
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Prepares pushes to `target`, with pull rights on `mount_sources` (same
    /// registry) in the same token so blobs can be mounted from them.
    pub async fn authorize_push(
        &self,
        target: &Reference,
        mount_sources: &[&Reference],
    ) -> Result<(), RegistryError> {
        let host = target.resolve_registry();
        let mut scopes = vec![format!("repository:{}:pull,push", target.repository())];
        for source in mount_sources {
            if source.resolve_registry() == host && source.repository() != target.repository() {
                scopes.push(format!("repository:{}:pull", source.repository()));
            }
        }
        if let Some(token) = self.token(host, &scopes).await? {
            for op in [RegistryOperation::Push, RegistryOperation::Pull] {
                self.oci
                    .auth(target, &RegistryAuth::Bearer(token.clone()), op)
                    .await
                    .map_err(|e| describe(&format!("authorizing {target}"), e))?;
            }
        }
        Ok(())
    }

    /// Resolves `reference` to one image manifest: a tag with HEAD (rate
    /// limits count GETs), then the manifest by digest; an index resolves
    /// to `platform`'s entry.
    pub async fn resolve(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<PinnedManifest, RegistryError> {
        let what = reference.to_string();
        let digest = match reference.digest() {
            Some(digest) => digest.to_string(),
            None => {
                retry_oci(&what, || {
                    self.oci
                        .fetch_manifest_digest(reference, &RegistryAuth::Anonymous)
                })
                .await?
            }
        };
        let pinned = pin(reference, &digest);
        let (bytes, media_type) = self.manifest_bytes(&pinned).await?;
        if media_type != OCI_INDEX && media_type != DOCKER_MANIFEST_LIST {
            return Ok(PinnedManifest {
                reference: pinned,
                digest,
                media_type,
                bytes,
            });
        }
        let index: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| RegistryError::Request {
                what: what.clone(),
                detail: format!("index is not JSON: {e}"),
            })?;
        let entries = index["manifests"].as_array().cloned().unwrap_or_default();
        let chosen = entries
            .iter()
            .find(|entry| platform.matches(&entry["platform"]))
            .and_then(|entry| entry["digest"].as_str())
            .ok_or_else(|| RegistryError::NoPlatform {
                reference: what.clone(),
                platform: platform.to_string(),
                available: entries
                    .iter()
                    .filter_map(|e| Platform::from_json(&e["platform"]))
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let pinned = pin(reference, chosen);
        let (bytes, media_type) = self.manifest_bytes(&pinned).await?;
        Ok(PinnedManifest {
            reference: pinned,
            digest: chosen.to_string(),
            media_type,
            bytes,
        })
    }

    /// The digest `reference`'s tag points at now, in one `HEAD` of the
    /// manifest (no body: rate limits count GETs): a watcher's cheap poll.
    /// A 429 is [`RegistryError::RateLimited`] with the `Retry-After` it
    /// gave. A reference by digest is its digest, without a request.
    pub async fn tag_digest(&self, reference: &Reference) -> Result<String, RegistryError> {
        if let Some(digest) = reference.digest() {
            return Ok(digest.to_string());
        }
        let host = reference.resolve_registry();
        let what = reference.to_string();
        let url = format!(
            "{}://{host}/v2/{}/manifests/{}",
            self.scheme(host),
            reference.repository(),
            reference.tag().unwrap_or("latest")
        );
        let bearer = self
            .token(
                host,
                &[format!("repository:{}:pull", reference.repository())],
            )
            .await?;
        let response = retry(&what, || async {
            let mut request = self
                .http
                .head(&url)
                .header(reqwest::header::ACCEPT, MANIFEST_TYPES.join(", "));
            if let Some(token) = &bearer {
                request = request.bearer_auth(token);
            } else if let (Some(Challenge::Basic), Some(Credential::Password(user, password))) =
                (self.challenges.get(host), self.credentials.get(host))
            {
                request = request.basic_auth(user, Some(password));
            }
            let response = request.send().await.map_err(Transient::from)?;
            if response.status().is_server_error() {
                return Err(Transient::Retry(format!(
                    "HTTP {} from {url}",
                    response.status()
                )));
            }
            Ok(response)
        })
        .await
        .map_err(|detail| RegistryError::Request {
            what: what.clone(),
            detail,
        })?;
        let status = response.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(RegistryError::RateLimited {
                what,
                retry_after: response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, jiff::Timestamp::now())),
            });
        }
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(RegistryError::Unauthorized {
                registry: host.to_string(),
                user: match self.credentials.get(host) {
                    Some(Credential::Password(user, _)) => format!(" for user `{user}`"),
                    _ => String::new(),
                },
            });
        }
        if !status.is_success() {
            return Err(RegistryError::Request {
                what,
                detail: format!("HTTP {status} from {url}"),
            });
        }
        match response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            Some(digest) => Ok(digest.to_string()),
            // A registry that does not say: the manifest itself, hashed.
            None => {
                retry_oci(&what, || {
                    self.oci
                        .fetch_manifest_digest(reference, &RegistryAuth::Anonymous)
                })
                .await
            }
        }
    }

    async fn manifest_bytes(
        &self,
        reference: &Reference,
    ) -> Result<(bytes::Bytes, String), RegistryError> {
        let what = reference.to_string();
        let (bytes, _) = retry_oci(&what, || {
            self.oci
                .pull_manifest_raw(reference, &RegistryAuth::Anonymous, MANIFEST_TYPES)
        })
        .await?;
        let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["mediaType"].as_str().map(str::to_string))
            .unwrap_or_else(|| OCI_MANIFEST.to_string());
        Ok((bytes, media_type))
    }

    /// A small blob (an image config) into memory, verified against its digest.
    pub async fn blob_bytes(
        &self,
        reference: &Reference,
        digest: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        let what = format!("{}@{digest}", repository_name(reference));
        let data = retry_oci(&what, || async {
            let mut data = Vec::new();
            self.oci.pull_blob(reference, digest, &mut data).await?;
            Ok(data)
        })
        .await?;
        let actual = sha256_digest(&data);
        if actual != digest {
            return Err(RegistryError::DigestMismatch { what, actual });
        }
        Ok(data)
    }

    /// A blob as a stream of its bytes, not verified: the reader checks
    /// the digest of what it read. Only opening the stream is retried.
    pub async fn blob_stream(
        &self,
        reference: &Reference,
        digest: &str,
    ) -> Result<
        impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + Unpin + 'static,
        RegistryError,
    > {
        let what = format!("{}@{digest}", repository_name(reference));
        let sized = retry_oci(&what, || self.oci.pull_blob_stream(reference, digest)).await?;
        Ok(sized.stream)
    }

    /// A bearer token to pull from `reference`'s repository, for registries
    /// that use tokens (oci-client asks for one per repository by itself
    /// only with a password; this also covers identity tokens).
    pub async fn authorize_pull(&self, reference: &Reference) -> Result<(), RegistryError> {
        let host = reference.resolve_registry();
        let scopes = [format!("repository:{}:pull", reference.repository())];
        if let Some(token) = self.token(host, &scopes).await? {
            self.oci
                .auth(
                    reference,
                    &RegistryAuth::Bearer(token),
                    RegistryOperation::Pull,
                )
                .await
                .map_err(|e| describe(&format!("authorizing {reference}"), e))?;
        }
        Ok(())
    }

    /// The manifest `reference` (a tag or a digest) names, its exact bytes
    /// and media type; `Ok(None)` when the registry has no such manifest or
    /// repository (404, `MANIFEST_UNKNOWN`, `NAME_UNKNOWN`).
    pub async fn manifest_if_present(
        &self,
        reference: &Reference,
    ) -> Result<Option<(bytes::Bytes, String)>, RegistryError> {
        let what = reference.to_string();
        let found = retry(&what, || async {
            match self
                .oci
                .pull_manifest_raw(reference, &RegistryAuth::Anonymous, MANIFEST_TYPES)
                .await
            {
                Ok((bytes, _)) => Ok(Some(bytes)),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(Transient::classify(e)),
            }
        })
        .await
        .map_err(|detail| RegistryError::Request {
            what: what.clone(),
            detail,
        })?;
        Ok(found.map(|bytes| {
            let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["mediaType"].as_str().map(str::to_string))
                .unwrap_or_else(|| OCI_MANIFEST.to_string());
            (bytes, media_type)
        }))
    }

    /// [`Registry::blob_bytes`], `Ok(None)` when the repository has no such
    /// blob (404, `BLOB_UNKNOWN`).
    pub async fn blob_bytes_if_present(
        &self,
        reference: &Reference,
        digest: &str,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let what = format!("{}@{digest}", repository_name(reference));
        let data = retry(&what, || async {
            let mut data = Vec::new();
            match self.oci.pull_blob(reference, digest, &mut data).await {
                Ok(()) => Ok(Some(data)),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(Transient::classify(e)),
            }
        })
        .await
        .map_err(|detail| RegistryError::Request {
            what: what.clone(),
            detail,
        })?;
        let Some(data) = data else { return Ok(None) };
        let actual = sha256_digest(&data);
        if actual != digest {
            return Err(RegistryError::DigestMismatch { what, actual });
        }
        Ok(Some(data))
    }

    /// Streams a blob into the file `path`, verified against its digest on
    /// the way, through `<path>.partial` renamed at the end: `path` is
    /// either the whole verified blob or untouched.
    pub async fn download_blob(
        &self,
        reference: &Reference,
        digest: &str,
        path: &Path,
    ) -> Result<(), RegistryError> {
        let what = format!("{}@{digest}", repository_name(reference));
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let result = retry(&what, || async {
            let file = tokio::fs::File::create(&partial)
                .await
                .map_err(|e| Transient::Fatal(format!("{}: {e}", partial.display())))?;
            let mut writer = tokio::io::BufWriter::with_capacity(256 * 1024, file);
            match self.oci.pull_blob(reference, digest, &mut writer).await {
                Ok(()) => Ok(Ok(())),
                Err(OciDistributionError::DigestError(
                    oci_client::errors::DigestError::VerificationError { actual, .. },
                )) => Ok(Err(actual)),
                Err(e) => Err(Transient::classify(e)),
            }
        })
        .await;
        let outcome = match result {
            Ok(Ok(())) => {
                tokio::fs::rename(&partial, path)
                    .await
                    .map_err(|e| RegistryError::Request {
                        what: what.clone(),
                        detail: format!("{}: {e}", path.display()),
                    })
            }
            Ok(Err(actual)) => Err(RegistryError::DigestMismatch {
                what: what.clone(),
                actual,
            }),
            Err(detail) => Err(RegistryError::Request {
                what: what.clone(),
                detail,
            }),
        };
        if outcome.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        outcome
    }

    pub async fn blob_exists(
        &self,
        reference: &Reference,
        digest: &str,
    ) -> Result<bool, RegistryError> {
        let what = format!("{}@{digest}", repository_name(reference));
        retry_oci(&what, || self.oci.blob_exists(reference, digest)).await
    }

    /// Asks the registry to mount `digest` from `source` into `target`'s
    /// repository. `Ok(false)` when it declines (202: it opened an upload
    /// instead), so the caller copies.
    pub async fn mount(
        &self,
        target: &Reference,
        source: &Reference,
        digest: &str,
    ) -> Result<bool, RegistryError> {
        let what = format!("mounting {digest} from {}", repository_name(source));
        let result = retry(&what, || async {
            match self.oci.mount_blob(target, source, digest).await {
                Ok(()) => Ok(true),
                // 202: the registry opened an upload instead of mounting.
                Err(OciDistributionError::SpecViolationError(_)) => Ok(false),
                // No pull right on the source inside the push token: some
                // registries refuse the whole request rather than answer 202.
                Err(
                    OciDistributionError::UnauthorizedError { .. }
                    | OciDistributionError::RegistryError { .. }
                    | OciDistributionError::ServerError {
                        code: 401 | 403 | 404,
                        ..
                    },
                ) => Ok(false),
                Err(e) => Err(Transient::classify(e)),
            }
        })
        .await;
        result.map_err(|detail| RegistryError::Request { what, detail })
    }

    /// Streams a blob from one repository (or registry) to another; nothing
    /// touches the disk and memory holds only what is in flight.
    pub async fn copy_blob(
        &self,
        source: &Reference,
        target: &Reference,
        digest: &str,
        size: u64,
    ) -> Result<(), RegistryError> {
        let what = format!("copying {digest} from {}", repository_name(source));
        retry_oci(&what, || async {
            let stream = self.oci.pull_blob_stream(source, digest).await?;
            let stream = stream.stream.map_err(OciDistributionError::IoError);
            self.oci
                .push_blob_stream(target, stream, digest, Some(size))
                .await
        })
        .await
        .map(|_| ())
    }

    /// Uploads a blob from a file, in one streamed PUT.
    pub async fn push_file(
        &self,
        target: &Reference,
        path: &Path,
        digest: &str,
        size: u64,
    ) -> Result<(), RegistryError> {
        let what = format!("pushing {} to {}", path.display(), repository_name(target));
        retry_oci(&what, || async {
            let file = tokio::fs::File::open(path).await?;
            let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024)
                .map_err(OciDistributionError::IoError);
            self.oci
                .push_blob_stream(target, stream, digest, Some(size))
                .await
        })
        .await
        .map(|_| ())
    }

    pub async fn push_bytes(
        &self,
        target: &Reference,
        data: &[u8],
        digest: &str,
    ) -> Result<(), RegistryError> {
        let what = format!("pushing {digest} to {}", repository_name(target));
        let data = bytes::Bytes::copy_from_slice(data);
        let size = data.len() as u64;
        retry_oci(&what, || {
            let data = data.clone();
            async move {
                let stream = futures::stream::once(async move { Ok(data) });
                self.oci
                    .push_blob_stream(target, stream, digest, Some(size))
                    .await
            }
        })
        .await
        .map(|_| ())
    }

    /// Pushes manifest bytes as they are under `target`'s tag.
    pub async fn push_manifest(
        &self,
        target: &Reference,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<(), RegistryError> {
        let what = format!("pushing manifest {target}");
        let content_type = reqwest::header::HeaderValue::from_str(media_type).map_err(|e| {
            RegistryError::Request {
                what: what.clone(),
                detail: e.to_string(),
            }
        })?;
        let body = bytes::Bytes::copy_from_slice(bytes);
        retry_oci(&what, || {
            self.oci
                .push_manifest_raw(target, body.clone(), content_type.clone())
        })
        .await
        .map(|_| ())
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn pin(reference: &Reference, digest: &str) -> Reference {
    Reference::with_digest(
        reference.registry().to_string(),
        reference.repository().to_string(),
        digest.to_string(),
    )
}

/// The registry has no such manifest, blob or repository.
fn is_not_found(e: &OciDistributionError) -> bool {
    use oci_client::errors::OciErrorCode as C;
    match e {
        OciDistributionError::RegistryError { envelope, .. } => {
            !envelope.errors.is_empty()
                && envelope.errors.iter().all(|e| {
                    matches!(
                        e.code,
                        C::ManifestUnknown
                            | C::BlobUnknown
                            | C::NameUnknown
                            | C::NotFound
                            | C::ManifestBlobUnknown
                    )
                })
        }
        OciDistributionError::ServerError { code: 404, .. } => true,
        OciDistributionError::RequestError(e) => e.status() == Some(reqwest::StatusCode::NOT_FOUND),
        _ => false,
    }
}

fn parse_challenge(header: &str) -> Challenge {
    let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Challenge::Basic;
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Challenge::None;
    }
    let mut realm = None;
    let mut service = None;
    for param in split_params(params) {
        if let Some((key, value)) = param.split_once('=') {
            let value = value.trim().trim_matches('"').to_string();
            match key.trim().to_ascii_lowercase().as_str() {
                "realm" => realm = Some(value),
                "service" => service = Some(value),
                _ => {}
            }
        }
    }
    match realm {
        Some(realm) => Challenge::Bearer { realm, service },
        None => Challenge::None,
    }
}

/// Splits `a="x,y",b=z` on the commas outside quotes.
fn split_params(params: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in params.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&params[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&params[start..]);
    parts
}

fn load_credential(
    options: &RegistryOptions,
    reference: &Reference,
) -> Result<Credential, RegistryError> {
    let server = match reference.registry() {
        "docker.io" | "index.docker.io" => "https://index.docker.io/v1/",
        other => other,
    };
    use docker_credential::{CredentialRetrievalError as E, DockerCredential};
    let found = if let Some(json) = &options.auth_json {
        docker_credential::get_credential_from_reader(json.as_bytes(), server).map_err(
            |e| match e {
                E::NoCredentialConfigured => None,
                e => Some(RegistryError::AuthJson {
                    detail: format!("entry for {server}: {e}"),
                }),
            },
        )
    } else if let Some(path) = &options.auth_file {
        let file = std::fs::File::open(path).map_err(|e| RegistryError::AuthFile {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        docker_credential::get_credential_from_reader(std::io::BufReader::new(file), server)
            .map_err(|e| match e {
                E::NoCredentialConfigured => None,
                e => Some(RegistryError::AuthFile {
                    path: path.clone(),
                    detail: format!("entry for {server}: {e}"),
                }),
            })
    } else {
        return Ok(Credential::Anonymous);
    };
    match found {
        Ok(DockerCredential::UsernamePassword(user, password)) => {
            Ok(Credential::Password(user, password))
        }
        Ok(DockerCredential::IdentityToken(token)) => Ok(Credential::IdentityToken(token)),
        Err(None) => Ok(Credential::Anonymous),
        Err(Some(e)) => Err(e),
    }
}

/// An error worth another attempt, or a final one.
enum Transient {
    Retry(String),
    Fatal(String),
}

impl From<reqwest::Error> for Transient {
    fn from(e: reqwest::Error) -> Self {
        let detail = error_chain(&e);
        // A certificate the client refuses stays refused. rustls's error is
        // buried in hyper's connect error; its text is what surfaces.
        if detail.contains("invalid peer certificate") {
            return Transient::Fatal(detail);
        }
        if e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() {
            Transient::Retry(detail)
        } else {
            Transient::Fatal(detail)
        }
    }
}

impl Transient {
    fn classify(e: OciDistributionError) -> Self {
        match e {
            OciDistributionError::RequestError(e) => e.into(),
            OciDistributionError::ServerError { code, .. } if code >= 500 => {
                Transient::Retry(oci_detail(&e))
            }
            OciDistributionError::IoError(_) => Transient::Retry(oci_detail(&e)),
            e => Transient::Fatal(oci_detail(&e)),
        }
    }
}

fn oci_detail(e: &OciDistributionError) -> String {
    match e {
        OciDistributionError::RequestError(e)
            if matches!(e.status().map(|s| s.as_u16()), Some(401 | 403)) =>
        {
            let status = e.status().unwrap_or_default();
            let url = e
                .url()
                .map(std::string::ToString::to_string)
                .unwrap_or_default();
            format!(
                "the registry refused the request: HTTP {status} from {url} (no credentials for it were given, or they lack the right)"
            )
        }
        OciDistributionError::RequestError(e) => error_chain(e),
        OciDistributionError::UnauthorizedError { url } => {
            format!("HTTP 401 Unauthorized from {url}")
        }
        OciDistributionError::ServerError { code, url, message } => {
            let message = message.trim();
            if message.is_empty() {
                format!("HTTP {code} from {url}")
            } else {
                format!("HTTP {code} from {url}: {message}")
            }
        }
        OciDistributionError::RegistryError { envelope, url } => {
            let errors: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}: {}", e.code, e.message))
                .collect();
            format!("{} (from {url})", errors.join("; "))
        }
        other => error_chain(other),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

fn describe(what: &str, e: OciDistributionError) -> RegistryError {
    RegistryError::Request {
        what: what.to_string(),
        detail: oci_detail(&e),
    }
}

async fn retry_oci<T, F, Fut>(what: &str, op: F) -> Result<T, RegistryError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, OciDistributionError>>,
{
    let limited = std::sync::atomic::AtomicBool::new(false);
    retry(what, || async {
        op().await.map_err(|e| {
            limited.store(is_rate_limited(&e), std::sync::atomic::Ordering::Relaxed);
            Transient::classify(e)
        })
    })
    .await
    .map_err(|detail| {
        if limited.load(std::sync::atomic::Ordering::Relaxed) {
            RegistryError::RateLimited {
                what: what.to_string(),
                retry_after: None,
            }
        } else {
            RegistryError::Request {
                what: what.to_string(),
                detail,
            }
        }
    })
}

/// HTTP 429 (`TOOMANYREQUESTS`), however oci-client reports it.
fn is_rate_limited(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ServerError { code: 429, .. } => true,
        OciDistributionError::RequestError(e) => {
            e.status() == Some(reqwest::StatusCode::TOO_MANY_REQUESTS)
        }
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| e.code == oci_client::errors::OciErrorCode::Toomanyrequests),
        _ => false,
    }
}

/// A `Retry-After` value: seconds, or an HTTP date (then the time left
/// from `now`, zero when past).
pub fn parse_retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let left = now.duration_until(when);
    Some(Duration::try_from(left).unwrap_or(Duration::ZERO))
}

/// Retries connection errors and 5xx with exponential backoff; never 4xx.
async fn retry<T, F, Fut>(what: &str, op: F) -> Result<T, String>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, Transient>>,
{
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        match op().await {
            Ok(value) => return Ok(value),
            Err(Transient::Fatal(detail)) => return Err(detail),
            Err(Transient::Retry(detail)) if attempt == ATTEMPTS => return Err(detail),
            Err(Transient::Retry(detail)) => {
                tracing::debug!(what, attempt, %detail, "retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
    }
    unreachable!("the last attempt returns")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    async fn attempts_until(outcomes: &[Result<(), Transient>]) -> (u32, Result<(), String>) {
        let calls = AtomicU32::new(0);
        let result = retry("test", || async {
            let n = calls.fetch_add(1, Ordering::SeqCst) as usize;
            match &outcomes[n.min(outcomes.len() - 1)] {
                Ok(()) => Ok(()),
                Err(Transient::Retry(d)) => Err(Transient::Retry(d.clone())),
                Err(Transient::Fatal(d)) => Err(Transient::Fatal(d.clone())),
            }
        })
        .await;
        (calls.load(Ordering::SeqCst), result)
    }

    #[tokio::test]
    async fn transient_errors_are_retried_and_others_are_not() {
        let retry_twice = [
            Err(Transient::Retry("503".into())),
            Err(Transient::Retry("503".into())),
            Ok(()),
        ];
        assert_eq!(attempts_until(&retry_twice).await, (3, Ok(())));
        let fatal = [Err(Transient::Fatal("404".into())), Ok(())];
        assert_eq!(attempts_until(&fatal).await, (1, Err("404".into())));
        let always = [Err(Transient::Retry("refused".into()))];
        assert_eq!(
            attempts_until(&always).await,
            (ATTEMPTS, Err("refused".into()))
        );
    }

    #[test]
    fn server_errors_retry_and_client_errors_do_not() {
        let server = |code| OciDistributionError::ServerError {
            code,
            url: "http://r/v2/".into(),
            message: String::new(),
        };
        assert!(matches!(
            Transient::classify(server(503)),
            Transient::Retry(_)
        ));
        assert!(matches!(
            Transient::classify(server(500)),
            Transient::Retry(_)
        ));
        assert!(matches!(
            Transient::classify(server(404)),
            Transient::Fatal(_)
        ));
        assert!(matches!(
            Transient::classify(server(429)),
            Transient::Fatal(_)
        ));
        let unauthorized = OciDistributionError::UnauthorizedError {
            url: "http://r/v2/x".into(),
        };
        match Transient::classify(unauthorized) {
            Transient::Fatal(detail) => assert!(detail.contains("401"), "{detail}"),
            Transient::Retry(_) => panic!("401 retried"),
        }
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let now: jiff::Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after("Wed, 01 Jan 2025 00:01:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after("Tue, 31 Dec 2024 23:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        let limited = OciDistributionError::ServerError {
            code: 429,
            url: "http://r/v2/x/manifests/a".into(),
            message: String::new(),
        };
        assert!(is_rate_limited(&limited));
        assert!(!is_rate_limited(&OciDistributionError::ServerError {
            code: 404,
            url: String::new(),
            message: String::new(),
        }));
    }

    #[test]
    fn challenges_parse_with_quoted_commas() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#,
        );
        match c {
            Challenge::Bearer { realm, service } => {
                assert_eq!(realm, "https://auth.example.com/token");
                assert_eq!(service.as_deref(), Some("registry.example.com"));
            }
            _ => panic!("not a bearer challenge"),
        }
        assert!(matches!(
            parse_challenge(r#"Basic realm="x""#),
            Challenge::Basic
        ));
    }

    #[test]
    fn references_normalise_as_docker_does() {
        let r = parse_reference("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(repository_name(&r), "docker.io/library/busybox");
        let r = parse_reference("127.0.0.1:5000/team/app:v1").unwrap();
        assert_eq!(r.resolve_registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "team/app");
        assert!(parse_reference("Bad Name").is_err());
    }
}
