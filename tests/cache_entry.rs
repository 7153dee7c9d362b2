//! Cache entries in a real CNCF Distribution registry: stored, looked up,
//! missed when a blob is gone, restored byte for byte (by the library and by
//! `slimforge cache restore`), with credentials given as bytes, and stored
//! by an assembly. skopeo reads the manifests as a third party.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use sha2::Digest as _;
use slimforge::cache::entry::{
    self, CONFIG_MEDIA_TYPE, ChainEntry, EXPORT_ANNOTATION, EntryKind, LAYER_MEDIA_TYPE,
};
use slimforge::oci::registry::{
    Registry as Client, RegistryError, RegistryOptions, parse_reference,
};
use support::{Registry, http_request, skopeo_inspect_raw};

fn key(seed: &str) -> String {
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(seed.as_bytes()))
    )
}

fn hex_of(key: &str) -> &str {
    key.strip_prefix("sha256:").unwrap()
}

fn sha256_file(path: &Path) -> String {
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
    )
}

/// A gzip tar with one file of `size` bytes of `seed`-dependent content.
fn export_tar(dir: &Path, name: &str, seed: u8, size: usize) -> PathBuf {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).unwrap();
    let gzip = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gzip);
    let data: Vec<u8> = (0..size)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(u32::from(seed)) as u8
        })
        .collect();
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, format!("out/{name}.bin"), data.as_slice())
        .unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    path
}

async fn connect(registry: &Registry, options: RegistryOptions) -> Result<Client, RegistryError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let reference = parse_reference(&registry.image("app", "v1")).unwrap();
    Client::connect(&options, &[&reference]).await
}

fn insecure() -> RegistryOptions {
    RegistryOptions {
        insecure: true,
        ..Default::default()
    }
}

/// A chain entry with two exports stored in `repository`.
struct Stored {
    entry: ChainEntry,
    files: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

async fn store_two_exports(client: &Client, repository: &str, key: &str) -> Stored {
    let dir = tempfile::tempdir().unwrap();
    let files = vec![
        export_tar(dir.path(), "builder-1.tar", 3, 3 << 20),
        export_tar(dir.path(), "builder-2.tar", 5, 4096),
    ];
    let result = json!({"status": "succeeded", "exports": ["builder-1", "builder-2"]});
    let exports = vec![
        ("builder-1".to_string(), files[0].clone()),
        ("builder-2".to_string(), files[1].clone()),
    ];
    let entry = entry::store_chain(
        client,
        repository,
        (key.to_string(), "builder".to_string(), result),
        &exports,
    )
    .await
    .unwrap();
    Stored {
        entry,
        files,
        _dir: dir,
    }
}

#[tokio::test]
async fn a_stored_chain_entry_is_a_hit_with_its_exports_and_result() {
    let registry = Registry::start();
    let client = connect(&registry, insecure()).await.unwrap();
    let repository = format!("{}/app/cache", registry.addr());
    let key = key("hit");
    let stored = store_two_exports(&client, &repository, &key).await;

    let hit = entry::lookup_chain(&client, &repository, &key)
        .await
        .unwrap()
        .expect("a hit");
    assert_eq!(hit, stored.entry);
    assert_eq!(hit.key, key);
    assert_eq!(hit.chain, "builder");
    assert_eq!(
        hit.result,
        json!({"status": "succeeded", "exports": ["builder-1", "builder-2"]})
    );
    let ids: Vec<&str> = hit.exports.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["builder-1", "builder-2"]);
    for (export, file) in hit.exports.iter().zip(&stored.files) {
        assert_eq!(export.digest, sha256_file(file));
        assert_eq!(export.size, std::fs::metadata(file).unwrap().len());
    }

    // A third party reads the manifest under its tag.
    let tag = format!("{repository}:chain-{}", hex_of(&key));
    assert_eq!(
        tag,
        format!("{repository}:{}", entry::entry_tag(EntryKind::Chain, &key))
    );
    let manifest = skopeo_inspect_raw(&tag);
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(manifest["config"]["mediaType"], CONFIG_MEDIA_TYPE);
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for (layer, export) in layers.iter().zip(&hit.exports) {
        assert_eq!(layer["mediaType"], LAYER_MEDIA_TYPE);
        assert_eq!(layer["digest"], export.digest.as_str());
        assert_eq!(layer["size"], export.size);
        assert_eq!(layer["annotations"][EXPORT_ANNOTATION], export.id.as_str());
    }

    // Stored again: the blobs are there already, only checked.
    let before = registry.requests().len();
    store_two_exports(&client, &repository, &key).await;
    let uploads = registry.requests()[before..]
        .iter()
        .filter(|r| r.starts_with("POST ") || r.starts_with("PUT ") && r.contains("/blobs/"))
        .count();
    // Same content, same gzip bytes: nothing is uploaded, config included.
    assert_eq!(uploads, 0, "{:?}", &registry.requests()[before..]);
}

#[tokio::test]
async fn an_absent_key_is_a_miss() {
    let registry = Registry::start();
    let client = connect(&registry, insecure()).await.unwrap();
    // A repository that does not exist yet (NAME_UNKNOWN) ...
    let repository = format!("{}/app/cache", registry.addr());
    assert_eq!(
        entry::lookup_chain(&client, &repository, &key("absent"))
            .await
            .unwrap(),
        None
    );
    // ... and one that does, without that tag (MANIFEST_UNKNOWN).
    store_two_exports(&client, &repository, &key("present")).await;
    assert_eq!(
        entry::lookup_chain(&client, &repository, &key("absent"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        entry::lookup_image(&client, &repository, &key("present"))
            .await
            .unwrap(),
        None,
        "a chain entry's key is no image entry"
    );
}

#[tokio::test]
async fn an_entry_whose_export_blob_was_deleted_is_a_miss() {
    let registry = Registry::start();
    let client = connect(&registry, insecure()).await.unwrap();
    let repository = format!("{}/app/cache", registry.addr());
    let key = key("collected");
    let stored = store_two_exports(&client, &repository, &key).await;
    assert!(
        entry::lookup_chain(&client, &repository, &key)
            .await
            .unwrap()
            .is_some()
    );

    let digest = &stored.entry.exports[1].digest;
    let url = format!("{}/v2/app/cache/blobs/{digest}", registry.url());
    let deleted = http_request("DELETE", &url, &[], b"").unwrap();
    assert_eq!(deleted.status, 202, "{}", deleted.text());
    assert_eq!(http_request("HEAD", &url, &[], b"").unwrap().status, 404);

    assert_eq!(
        entry::lookup_chain(&client, &repository, &key)
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn restored_exports_are_the_stored_bytes_and_a_corrupt_blob_is_refused() {
    let registry = Registry::start();
    let client = connect(&registry, insecure()).await.unwrap();
    let repository = format!("{}/app/cache", registry.addr());
    let key = key("restore");
    let stored = store_two_exports(&client, &repository, &key).await;
    let hit = entry::lookup_chain(&client, &repository, &key)
        .await
        .unwrap()
        .unwrap();

    let into = tempfile::tempdir().unwrap();
    let written = entry::restore_exports(&client, &repository, &hit, into.path())
        .await
        .unwrap();
    assert_eq!(
        written,
        [
            into.path().join("builder-1.tar"),
            into.path().join("builder-2.tar")
        ]
    );
    for (file, original) in written.iter().zip(&stored.files) {
        assert!(
            std::fs::read(file).unwrap() == std::fs::read(original).unwrap(),
            "{} differs",
            file.display()
        );
    }
    // Nothing else is left behind (no partial files).
    assert_eq!(std::fs::read_dir(into.path()).unwrap().count(), 2);

    // The registry serves other bytes under the digest: refused, nothing written.
    let digest = hex_of(&hit.exports[1].digest).to_string();
    let data = registry
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&digest[..2])
        .join(&digest)
        .join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let error = entry::restore_exports(&client, &repository, &hit, fresh.path())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("builder-2"), "{error}");
    assert!(error.contains(&repository), "{error}");
    assert!(error.contains("does not match its digest"), "{error}");
    assert!(!fresh.path().join("builder-2.tar").exists());
    assert!(!fresh.path().join("builder-2.tar.partial").exists());
}

#[tokio::test]
async fn an_image_entry_round_trips() {
    let registry = Registry::start();
    let client = connect(&registry, insecure()).await.unwrap();
    let repository = format!("{}/app/cache", registry.addr());
    let key = key("image");
    let image: slimforge::contract::AssembleResult = serde_json::from_value(json!({
        "reference": format!("{}/app@sha256:{}", registry.addr(), "1".repeat(64)),
        "digest": format!("sha256:{}", "1".repeat(64)),
        "sizeBytes": 1234,
        "layers": [{"digest": format!("sha256:{}", "2".repeat(64)), "size": 99, "diffID": format!("sha256:{}", "3".repeat(64))}],
        "base": format!("{}/busybox@sha256:{}", registry.addr(), "4".repeat(64)),
    }))
    .unwrap();
    let stored = entry::store_image(&client, &repository, &key, &image)
        .await
        .unwrap();
    let hit = entry::lookup_image(&client, &repository, &key)
        .await
        .unwrap()
        .expect("a hit");
    assert_eq!(hit, stored);
    assert_eq!(hit.image, image);
    assert_eq!(
        entry::lookup_chain(&client, &repository, &key)
            .await
            .unwrap(),
        None
    );
    // Distribution took an OCI manifest without layers.
    let manifest = skopeo_inspect_raw(&format!(
        "{repository}:{}",
        entry::entry_tag(EntryKind::Image, &key)
    ));
    assert_eq!(manifest["layers"], json!([]));
    assert_eq!(manifest["config"]["mediaType"], CONFIG_MEDIA_TYPE);
}

fn slimforge(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_slimforge"));
    command.args(args).env_remove("SLIMFORGE_RESTORE");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

#[tokio::test]
async fn cache_restore_downloads_every_export_into_the_directory() {
    let registry = Registry::start();
    let client = connect(&registry, insecure()).await.unwrap();
    let repository = format!("{}/app/cache", registry.addr());
    let first = store_two_exports(&client, &repository, &key("cli-1")).await;
    let dir = tempfile::tempdir().unwrap();
    let single = export_tar(dir.path(), "tools.tar", 9, 10_000);
    let second = entry::store_chain(
        &client,
        &repository,
        (
            key("cli-2"),
            "tools".into(),
            json!({"status": "succeeded", "exports": ["tools-1"]}),
        ),
        &[("tools-1".to_string(), single.clone())],
    )
    .await
    .unwrap();

    let spec = json!({
        "repository": repository,
        "insecure": true,
        "entries": [first.entry, second],
        "into": "exports",
    });
    std::fs::write(dir.path().join("restore.json"), spec.to_string()).unwrap();
    let spec_path = dir.path().join("restore.json");
    let output = slimforge(
        &["cache", "restore", "--spec", spec_path.to_str().unwrap()],
        &[],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    let exports = dir.path().join("exports");
    for (name, original) in [
        ("builder-1.tar", &first.files[0]),
        ("builder-2.tar", &first.files[1]),
        ("tools-1.tar", &single),
    ] {
        let restored = exports.join(name);
        assert!(stdout.contains(&restored.display().to_string()), "{stdout}");
        assert!(std::fs::read(&restored).unwrap() == std::fs::read(original).unwrap());
    }

    // The same from the environment, into an absolute directory.
    let elsewhere = tempfile::tempdir().unwrap();
    let mut spec = spec;
    spec["into"] = json!(elsewhere.path());
    let output = slimforge(
        &["cache", "restore"],
        &[("SLIMFORGE_RESTORE", &spec.to_string())],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(elsewhere.path().join("tools-1.tar").is_file());

    // An export the repository lost: non-zero, naming repository and export.
    let mut lost = spec.clone();
    lost["entries"][1]["exports"][0]["digest"] = json!(key("never stored"));
    let output = slimforge(
        &["cache", "restore"],
        &[("SLIMFORGE_RESTORE", &lost.to_string())],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("tools-1"), "{stderr}");
    assert!(stderr.contains(&repository), "{stderr}");

    // Neither a spec nor the variable.
    let output = slimforge(&["cache", "restore"], &[]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("SLIMFORGE_RESTORE"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn credentials_given_as_bytes_reach_a_private_registry() {
    let registry = Registry::start_htpasswd("alice", "s3cret-pw");
    let auth = std::fs::read_to_string(registry.auth_file().unwrap()).unwrap();
    let with_bytes = RegistryOptions {
        insecure: true,
        auth_json: Some(auth),
        ..Default::default()
    };
    assert!(
        !format!("{with_bytes:?}").contains("auths"),
        "{with_bytes:?}"
    );
    let client = connect(&registry, with_bytes).await.unwrap();
    let repository = format!("{}/app/cache", registry.addr());
    let key = key("private");
    let stored = store_two_exports(&client, &repository, &key).await;
    let hit = entry::lookup_chain(&client, &repository, &key)
        .await
        .unwrap();
    assert_eq!(hit, Some(stored.entry.clone()));
    let into = tempfile::tempdir().unwrap();
    entry::restore_exports(&client, &repository, &stored.entry, into.path())
        .await
        .unwrap();
    assert!(into.path().join("builder-2.tar").is_file());

    // A wrong password as bytes: refused, naming the user, never the password.
    let wrong =
        json!({"auths": {registry.addr(): {"username": "alice", "password": "not-the-pw"}}});
    let error = connect(
        &registry,
        RegistryOptions {
            insecure: true,
            auth_json: Some(wrong.to_string()),
            ..Default::default()
        },
    )
    .await
    .err()
    .expect("refused");
    let text = error.to_string();
    assert!(
        matches!(error, RegistryError::Unauthorized { .. }),
        "{text}"
    );
    assert!(
        text.contains("alice") && !text.contains("not-the-pw"),
        "{text}"
    );

    // Bytes that are not a dockerconfigjson: an error that does not quote them.
    let error = connect(
        &registry,
        RegistryOptions {
            insecure: true,
            auth_json: Some("{not json s3cret-pw".into()),
            ..Default::default()
        },
    )
    .await
    .err()
    .expect("refused");
    let text = error.to_string();
    assert!(!text.contains("s3cret-pw"), "{text}");

    // Without credentials a lookup is an error, not a miss.
    let anonymous = connect(&registry, insecure()).await.unwrap();
    assert!(
        entry::lookup_chain(&anonymous, &repository, &key)
            .await
            .is_err()
    );
}

/// Runs `slimforge assemble --spec` on `spec` (written into `dir`, so its
/// relative paths are taken from there); the result JSON when it succeeded.
fn assemble_in(dir: &Path, spec: &serde_json::Value) -> Result<serde_json::Value, String> {
    let spec_path = dir.join("spec.yaml");
    std::fs::write(&spec_path, serde_yaml::to_string(spec).unwrap()).unwrap();
    let result = dir.join("result.json");
    let output = Command::new(env!("CARGO_BIN_EXE_slimforge"))
        .args(["assemble", "--spec"])
        .arg(&spec_path)
        .arg("--result")
        .arg(&result)
        .output()
        .unwrap();
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&std::fs::read(result).unwrap()).unwrap())
}

/// A workspace with one chain's result and export, and a file for the image.
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("results")).unwrap();
    std::fs::create_dir_all(dir.path().join("exports")).unwrap();
    std::fs::write(
        dir.path().join("results/builder.json"),
        r#"{"status":"succeeded","exports":["builder-1"]}"#,
    )
    .unwrap();
    export_tar(&dir.path().join("exports"), "builder-1.tar", 7, 50_000);
    std::fs::write(dir.path().join("hello.txt"), "hello\n").unwrap();
    dir
}

fn cached_assembly(target: &str, repository: &str, chain_key: &str, image_key: &str) -> Value {
    json!({
        "base": "scratch",
        "layers": [{"source": "hello.txt", "destination": "/hello.txt"}],
        "target": target,
        "insecure": true,
        "cache": {
            "repository": repository,
            "chains": [{
                "key": chain_key,
                "chain": "builder",
                "result": "results/builder.json",
                "exports": [{"id": "builder-1", "path": "exports/builder-1.tar"}],
            }],
            "image": {"key": image_key},
        },
    })
}

#[tokio::test]
async fn an_assembly_stores_its_chains_and_its_image_in_the_cache() {
    let registry = Registry::start();
    let dir = workspace();
    let repository = format!("{}/app/cache", registry.addr());
    let (chain_key, image_key) = (key("assembly chain"), key("assembly image"));
    let spec = cached_assembly(
        &registry.image("app", "v1"),
        &repository,
        &chain_key,
        &image_key,
    );
    let result = assemble_in(dir.path(), &spec).unwrap();
    assert!(result.get("cacheWarnings").is_none(), "{result}");

    let client = connect(&registry, insecure()).await.unwrap();
    let chain = entry::lookup_chain(&client, &repository, &chain_key)
        .await
        .unwrap()
        .expect("the chain is cached");
    assert_eq!(chain.chain, "builder");
    assert_eq!(
        chain.result,
        json!({"status": "succeeded", "exports": ["builder-1"]})
    );
    assert_eq!(chain.exports.len(), 1);
    assert_eq!(
        chain.exports[0].digest,
        sha256_file(&dir.path().join("exports/builder-1.tar"))
    );
    let image = entry::lookup_image(&client, &repository, &image_key)
        .await
        .unwrap()
        .expect("the image is cached");
    assert_eq!(image.image.reference, result["reference"].as_str().unwrap());
    assert_eq!(image.image.digest, result["digest"].as_str().unwrap());
    assert!(image.image.cache_warnings.is_empty());
}

#[tokio::test]
async fn an_assembly_whose_cache_cannot_be_written_succeeds_with_warnings() {
    let registry = Registry::start();
    let dir = workspace();
    let (chain_key, image_key) = (key("warn chain"), key("warn image"));

    // Nothing listens on the cache's registry.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unreachable = format!("{}/app/cache", closed.local_addr().unwrap());
    drop(closed);
    let target = registry.image("app", "v1");
    let spec = cached_assembly(&target, &unreachable, &chain_key, &image_key);
    let result = assemble_in(dir.path(), &spec).unwrap();
    let warnings = result["cacheWarnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].as_str().unwrap().contains(&unreachable),
        "{warnings:?}"
    );
    // The image was pushed all the same.
    let pushed = skopeo_inspect_raw(result["reference"].as_str().unwrap());
    assert_eq!(pushed["layers"].as_array().unwrap().len(), 1);

    // A registry that refuses the push (no credentials for it) and a chain
    // whose result file is missing: one warning each, the image pushed.
    let private = Registry::start_htpasswd("carol", "pw");
    let refusing = format!("{}/app/cache", private.addr());
    let mut spec = cached_assembly(&target, &refusing, &chain_key, &image_key);
    spec["cache"]["chains"]
        .as_array_mut()
        .unwrap()
        .push(json!({"key": key("lost"), "chain": "lost", "result": "results/lost.json"}));
    let result = assemble_in(dir.path(), &spec).unwrap();
    let warnings: Vec<&str> = result["cacheWarnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(warnings[0].contains("chain builder"), "{warnings:?}");
    assert!(warnings[1].contains("chain lost") && warnings[1].contains("lost.json"));
    assert!(warnings[2].contains("the image"), "{warnings:?}");
    assert!(
        warnings.iter().all(|w| w.contains(&refusing)),
        "{warnings:?}"
    );
    let client = connect(&registry, insecure()).await.unwrap();
    assert_eq!(
        entry::lookup_chain(
            &client,
            &format!("{}/app/cache", registry.addr()),
            &chain_key
        )
        .await
        .unwrap(),
        None
    );
}
