//! Reaching a git remote with gix, as both the context pod (`stage clone`)
//! and the controller's source trigger do: which URLs, which refs a
//! revision names, credentials, error text, and a remote's refs listed
//! without cloning (the handshake and `ls-refs`).

use gix::credentials::helper::Action;
use gix::credentials::protocol::Outcome;
use gix::sec::identity::Account;

/// Only https://, http:// and git:// (no ssh, no local paths).
pub fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("ssh://") || !url.contains("://") {
        return Err("only https://, http:// and git:// URLs are supported (not ssh)".into());
    }
    Ok(())
}

/// A full commit SHA (nothing to watch: it never moves).
pub fn is_commit_sha(revision: &str) -> bool {
    revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit())
}

/// The refs to ask the remote for, in order: a name may be a branch or a
/// tag; `None` is the remote's HEAD.
pub fn wanted_refs(revision: Option<&str>) -> Vec<Option<String>> {
    match revision.map(str::trim).filter(|r| !r.is_empty()) {
        None => vec![None],
        Some(r) if is_commit_sha(r) || r == "HEAD" || r.starts_with("refs/") => {
            vec![Some(r.to_string())]
        }
        Some(r) => vec![
            Some(format!("refs/heads/{r}")),
            Some(format!("refs/tags/{r}")),
        ],
    }
}

/// The credential callback gix calls when the remote asks (HTTP 401):
/// always `account`.
pub fn authenticate(
    account: Account,
) -> impl FnMut(Action) -> gix::Result<Option<Outcome>> + Clone {
    move |action| match action {
        Action::Get(context) => Ok(Some(Outcome {
            identity: account.clone(),
            next: context.into(),
        })),
        _ => Ok(None),
    }
}

/// Every cause, outermost first: the top message alone says too little.
pub fn error_text(e: &gix::Error) -> String {
    let mut causes: Vec<String> = Vec::new();
    for cause in e.iter_errors().map(std::string::ToString::to_string) {
        if !causes.contains(&cause) {
            causes.push(cause);
        }
    }
    if causes.is_empty() {
        e.to_string()
    } else {
        causes.join(": ")
    }
}

/// The commit `revision` (a branch, a tag, a full ref name; `None`: HEAD)
/// points at on the remote, with the ref that matched, from the refs the
/// server advertises: no clone, no repository. An annotated tag is peeled
/// to its commit. Blocking: run it off the async workers. Error texts
/// never hold the URL's password (the caller redacts the URL itself).
pub fn remote_commit(
    url: &str,
    revision: Option<&str>,
    account: Option<Account>,
) -> Result<(String, String), String> {
    use gix::protocol::handshake::Ref;
    use gix::protocol::transport::client::blocking_io::connect::{Options, connect};

    check_url(url)?;
    let wanted = wanted_refs(revision);
    if let [Some(sha)] = wanted.as_slice()
        && is_commit_sha(sha)
    {
        return Ok((sha.clone(), sha.clone()));
    }
    let mut transport = connect(url, Options::default()).map_err(|e| error_text(&e))?;
    let auth = match account {
        Some(account) => Box::new(authenticate(account)) as gix::protocol::AuthenticateFn<'_>,
        None => Box::new(|_| Ok(None)),
    };
    let mut progress = gix::progress::Discard;
    let mut handshake = gix::protocol::handshake(
        &mut transport,
        gix::protocol::transport::Service::UploadPack,
        auth,
        Vec::new(),
        &mut progress,
    )
    .map_err(|e| error_text(&e))?;
    let refs = match handshake.refs.take() {
        Some(refs) => refs,
        None => {
            let mut prefixes = gix::protocol::ls_refs::RefPrefixes::new();
            prefixes.extend(wanted.iter().map(|w| w.as_deref().unwrap_or("HEAD").into()));
            gix::protocol::LsRefsCommand::new(
                Some(prefixes),
                &handshake.capabilities,
                (
                    "agent",
                    Some(concat!("slimforge/", env!("CARGO_PKG_VERSION")).into()),
                ),
            )
            .invoke_blocking(&mut transport, &mut progress, false)
            .map_err(|e| error_text(&e))?
        }
    };
    // Ending the conversation politely; a failure here changes nothing.
    drop(transport);
    let find = |name: &str| {
        refs.iter().find_map(|r| match r {
            Ref::Direct {
                full_ref_name,
                object,
            }
            | Ref::Peeled {
                full_ref_name,
                object,
                ..
            }
            | Ref::Symbolic {
                full_ref_name,
                object,
                ..
            } if full_ref_name == name => Some(object.to_string()),
            _ => None,
        })
    };
    for want in &wanted {
        let name = want.as_deref().unwrap_or("HEAD");
        if let Some(commit) = find(name) {
            return Ok((name.to_string(), commit));
        }
    }
    let names: Vec<&str> = wanted
        .iter()
        .map(|w| w.as_deref().unwrap_or("HEAD"))
        .collect();
    Err(format!("the remote has no {}", names.join(" nor ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_a_branch_or_a_tag_and_a_full_name_is_itself() {
        assert_eq!(wanted_refs(None), [None]);
        assert_eq!(wanted_refs(Some(" ")), [None]);
        assert_eq!(
            wanted_refs(Some("main")),
            [
                Some("refs/heads/main".to_string()),
                Some("refs/tags/main".to_string())
            ]
        );
        assert_eq!(
            wanted_refs(Some("refs/tags/v1")),
            [Some("refs/tags/v1".to_string())]
        );
        assert!(check_url("ssh://host/r.git").is_err());
        assert!(check_url("host:r.git").is_err());
        assert!(check_url("git://host/r.git").is_ok());
    }
}
