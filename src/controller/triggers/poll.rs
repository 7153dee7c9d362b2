//! One poll of one target: an image's tag (one `HEAD`, and the manifest
//! only when the tag moved) or a git ref (the remote's advertised refs).
//! Registry connections are kept per registry and credentials.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gix::sec::identity::Account;
use oci_client::Reference;

use super::schedule::Fingerprint;
use crate::oci::Platform;
use crate::oci::registry::{Registry, RegistryError, RegistryOptions, parse_reference};

/// A git poll that takes longer is abandoned (its thread finishes alone).
const GIT_TIMEOUT: Duration = Duration::from_secs(60);

/// What a poll needs, copied out of the shared state when it starts.
pub enum Job {
    Image {
        reference: String,
        platform: String,
        insecure: bool,
        credentials: Fingerprint,
        docker_config: Option<Arc<Vec<u8>>>,
        /// The tag's digest and the platform's manifest digest it gave
        /// last time: an unchanged tag needs no manifest read.
        known: Option<(String, String)>,
    },
    Git {
        url: String,
        revision: String,
        account: Option<Account>,
    },
}

/// What a poll found.
pub enum Outcome {
    /// The value (an image's platform manifest digest, a commit), and for
    /// an image the tag's own digest.
    Seen {
        value: String,
        tag_digest: Option<String>,
    },
    /// HTTP 429, with the registry's `Retry-After` if it gave one.
    RateLimited {
        error: String,
        retry_after: Option<Duration>,
    },
    Failed(String),
}

/// Connections by (registry host, insecure, credentials).
pub type Connections = tokio::sync::Mutex<HashMap<(String, bool, Fingerprint), Arc<Registry>>>;

pub async fn poll(job: Job, connections: &Connections) -> Outcome {
    match job {
        Job::Image {
            reference,
            platform,
            insecure,
            credentials,
            docker_config,
            known,
        } => {
            let result = poll_image(
                &reference,
                &platform,
                insecure,
                credentials,
                docker_config.as_deref(),
                known,
                connections,
            )
            .await;
            match result {
                Ok((tag_digest, value)) => Outcome::Seen {
                    value,
                    tag_digest: Some(tag_digest),
                },
                Err(e @ RegistryError::RateLimited { retry_after, .. }) => Outcome::RateLimited {
                    error: e.to_string(),
                    retry_after,
                },
                Err(e) => Outcome::Failed(e.to_string()),
            }
        }
        Job::Git {
            url,
            revision,
            account,
        } => {
            let secret = account.as_ref().map(|a| a.password.clone());
            let shown = crate::api::redacted_url(&url);
            let task = tokio::task::spawn_blocking(move || {
                let revision = (!revision.is_empty()).then_some(revision.as_str());
                crate::git::remote_commit(&url, revision, account).map_err(|e| {
                    let mut e = e.replace(&url, &crate::api::redacted_url(&url));
                    if let Some(secret) = secret.filter(|s| !s.is_empty()) {
                        e = e.replace(&secret, "***");
                    }
                    e
                })
            });
            match tokio::time::timeout(GIT_TIMEOUT, task).await {
                Ok(Ok(Ok((_, commit)))) => Outcome::Seen {
                    value: commit,
                    tag_digest: None,
                },
                Ok(Ok(Err(e))) => Outcome::Failed(format!("{shown}: {e}")),
                Ok(Err(e)) => Outcome::Failed(format!("{shown}: {e}")),
                Err(_) => {
                    Outcome::Failed(format!("{shown}: no answer in {}s", GIT_TIMEOUT.as_secs()))
                }
            }
        }
    }
}

/// (the tag's digest, the platform's manifest digest).
async fn poll_image(
    reference: &str,
    platform: &str,
    insecure: bool,
    credentials: Fingerprint,
    docker_config: Option<&Vec<u8>>,
    known: Option<(String, String)>,
    connections: &Connections,
) -> Result<(String, String), RegistryError> {
    let parsed = parse_reference(reference)?;
    let platform_parsed: Platform =
        platform
            .parse()
            .map_err(|e: String| RegistryError::Request {
                what: reference.to_string(),
                detail: format!("platform `{platform}`: {e}"),
            })?;
    let key = (parsed.resolve_registry().to_string(), insecure, credentials);
    let registry = connection(&key, &parsed, insecure, docker_config, connections).await?;
    let outcome = async {
        let tag_digest = registry.tag_digest(&parsed).await?;
        if let Some((known_tag, known_value)) = known
            && known_tag == tag_digest
        {
            return Ok((tag_digest, known_value));
        }
        let pinned = Reference::with_digest(
            parsed.registry().to_string(),
            parsed.repository().to_string(),
            tag_digest.clone(),
        );
        let manifest = registry.resolve(&pinned, &platform_parsed).await?;
        Ok((tag_digest, manifest.digest))
    }
    .await;
    if let Err(e) = &outcome
        && !matches!(e, RegistryError::RateLimited { .. })
    {
        // The next poll connects afresh (it asks the registry how to
        // authenticate again, and checks the credentials); a registry
        // that limits us is not asked more than needed.
        connections.lock().await.remove(&key);
    }
    outcome
}

async fn connection(
    key: &(String, bool, Fingerprint),
    reference: &Reference,
    insecure: bool,
    docker_config: Option<&Vec<u8>>,
    connections: &Connections,
) -> Result<Arc<Registry>, RegistryError> {
    if let Some(registry) = connections.lock().await.get(key) {
        return Ok(registry.clone());
    }
    let auth_json = match docker_config {
        Some(bytes) => {
            Some(
                String::from_utf8(bytes.clone()).map_err(|_| RegistryError::AuthJson {
                    detail: "not UTF-8".into(),
                })?,
            )
        }
        None => None,
    };
    let options = RegistryOptions {
        insecure,
        auth_json,
        ..RegistryOptions::default()
    };
    let registry = Arc::new(Registry::connect(&options, &[reference]).await?);
    connections
        .lock()
        .await
        .insert(key.clone(), registry.clone());
    Ok(registry)
}
