//! The helper image a local build's pods use when none is given: this
//! slimforge binary (static, so it runs in scratch) published next to the
//! output image, tagged by content so an unchanged binary is published once.

use std::path::{Path, PathBuf};

use super::LocalError;
use crate::controller::ASSEMBLE_UID;

/// Where Debian (and the operator image) keep the CA certificates.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Publishes a static slimforge binary as the helper image (scratch + the
/// binary at `/slimforge`) next to the output image; returns it by digest.
pub(super) async fn publish_helper(
    binary: Option<&Path>,
    output: &str,
    platform: &str,
    insecure: bool,
    auth: Option<&Path>,
    workdir: &Path,
) -> Result<String, LocalError> {
    let binary = static_binary(binary)?;
    let output = crate::oci::reference::parse(output).map_err(LocalError::Helper)?;
    // Tagged by content: an image published before is used as it is.
    let target = format!(
        "{}/slimforge/helper:{}-{}",
        output.registry(),
        env!("CARGO_PKG_VERSION"),
        &content_digest(&binary)[..12]
    );
    let options = crate::oci::registry::RegistryOptions {
        insecure,
        ca_bundle: None,
        auth_file: auth.map(Path::to_path_buf),
        auth_json: None,
    };
    if let Ok(existing) = existing_image(&target, platform, &options).await {
        return Ok(existing);
    }
    let spec = serde_json::json!({
        "base": "scratch",
        "platform": platform,
        "layers": helper_layers(&binary),
        "config": {"entrypoint": ["/slimforge"], "user": ASSEMBLE_UID.to_string()},
        "target": target,
        "insecure": insecure,
        "auth": auth,
    });
    assemble_helper(&spec, workdir).await
}

/// `binary` (this executable when `None`), if it is static.
fn static_binary(binary: Option<&Path>) -> Result<PathBuf, LocalError> {
    let binary = match binary {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()
            .map_err(|e| LocalError::Helper(format!("finding this executable: {e}")))?,
    };
    if !is_static_executable(&binary) {
        return Err(LocalError::Helper(format!(
            "{} is dynamically linked and cannot run in a scratch image; give --helper-image, or --helper-binary with a static (x86_64-unknown-linux-musl) build",
            binary.display()
        )));
    }
    Ok(binary)
}

/// The SHA-256 of the binary and the host's CA certificates, in hex.
fn content_digest(binary: &Path) -> String {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    for file in [binary, Path::new(CA_BUNDLE)] {
        if let Ok(bytes) = std::fs::read(file) {
            hasher.update(&bytes);
        }
    }
    hex::encode(hasher.finalize())
}

/// The binary at `/slimforge`, and the host's CA certificates when it has
/// them (the registry client needs them even for plain HTTP).
fn helper_layers(binary: &Path) -> Vec<serde_json::Value> {
    let mut layers = vec![serde_json::json!({
        "source": binary, "destination": "/slimforge", "chmod": "0755",
        "createdBy": "slimforge helper",
    })];
    if Path::new(CA_BUNDLE).is_file() {
        layers.push(serde_json::json!({
            "source": CA_BUNDLE, "destination": CA_BUNDLE, "chmod": "0644",
            "createdBy": "CA certificates of the host",
        }));
    }
    layers
}

/// Assembles and pushes the image `spec` describes (written to the work
/// directory, as the assemble pod reads its spec); returns its reference.
async fn assemble_helper(spec: &serde_json::Value, workdir: &Path) -> Result<String, LocalError> {
    let path = workdir.join("helper-image.json");
    std::fs::write(&path, spec.to_string())
        .map_err(|e| LocalError::Io(format!("writing {}: {e}", path.display())))?;
    let spec = crate::assemble::AssembleSpec::load(&path)
        .map_err(|e| LocalError::Helper(e.to_string()))?;
    let result = crate::assemble::assemble(&spec)
        .await
        .map_err(|e| LocalError::Helper(format!("publishing the helper image: {e}")))?;
    Ok(result.reference)
}

/// `image` by digest, if the registry has it.
async fn existing_image(
    image: &str,
    platform: &str,
    options: &crate::oci::registry::RegistryOptions,
) -> Result<String, LocalError> {
    let fail = |e: String| LocalError::Helper(e);
    let reference =
        crate::oci::registry::parse_reference(image).map_err(|e| fail(e.to_string()))?;
    let platform = platform
        .parse::<crate::oci::Platform>()
        .map_err(|e| fail(e.to_string()))?;
    let registry = crate::oci::registry::Registry::connect(options, &[&reference])
        .await
        .map_err(|e| fail(e.to_string()))?;
    let pinned = registry
        .resolve(&reference, &platform)
        .await
        .map_err(|e| fail(e.to_string()))?;
    Ok(format!(
        "{}@{}",
        crate::oci::registry::repository_name(&reference),
        pinned.digest
    ))
}

/// An ELF executable with no program interpreter: it needs no libc from the image.
pub fn is_static_executable(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap_or_default()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        bytes
            .get(at..at + 4)
            .map(|t| u32::from_le_bytes(t.try_into().unwrap_or_default()) != PT_INTERP)
            .unwrap_or(false)
    })
}
