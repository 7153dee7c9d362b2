//! The layer writer against real files, read back by the tar crate and by
//! GNU tar as an independent reader.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

use slimforge::oci::layer::{LayerOptions, LayerSource, LayerWriter, layer_from_tar};

struct Entry {
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    link: Option<String>,
    xattrs: BTreeMap<String, Vec<u8>>,
    data: Vec<u8>,
}

fn read_layer(path: &Path) -> Vec<(String, Entry)> {
    let file = fs::File::open(path).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut xattrs = BTreeMap::new();
        if let Some(pax) = entry.pax_extensions().unwrap() {
            for ext in pax {
                let ext = ext.unwrap();
                if let Some(name) = ext.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.insert(name.to_string(), ext.value_bytes().to_vec());
                }
            }
        }
        let header = entry.header().clone();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let link = entry
            .link_name()
            .unwrap()
            .map(|l| l.to_string_lossy().into_owned());
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.push((
            path,
            Entry {
                kind: header.entry_type(),
                mode: header.mode().unwrap(),
                uid: header.uid().unwrap(),
                gid: header.gid().unwrap(),
                mtime: header.mtime().unwrap(),
                link,
                xattrs,
                data,
            },
        ));
    }
    out
}

fn write(
    sources: &[LayerSource],
    mtime: u64,
) -> (tempfile::TempDir, slimforge::oci::layer::LayerDigests) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("layer.tar.gz");
    let mut writer = LayerWriter::create(&out, LayerOptions { mtime }).unwrap();
    for source in sources {
        writer.add(source).unwrap();
    }
    let digests = writer.finish().unwrap();
    (dir, digests)
}

fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src");
    fs::create_dir_all(root.join("zdir/sub")).unwrap();
    fs::write(root.join("b.txt"), "bee").unwrap();
    fs::write(root.join("a.txt"), "aye").unwrap();
    fs::write(root.join("zdir/sub/deep"), "deep").unwrap();
    fs::write(root.join("setuid"), "s").unwrap();
    fs::set_permissions(root.join("setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(root.join("zdir"), fs::Permissions::from_mode(0o1777)).unwrap();
    symlink("a.txt", root.join("link")).unwrap();
    fs::hard_link(root.join("b.txt"), root.join("hard")).unwrap();
    dir
}

#[test]
fn directory_tree_keeps_types_modes_links_and_sorts_entries() {
    let src = tree();
    let (dir, digests) = write(
        &[LayerSource {
            source: src.path().join("src"),
            destination: "/opt/app".into(),
            ..Default::default()
        }],
        0,
    );
    let entries = read_layer(&dir.path().join("layer.tar.gz"));
    let names: Vec<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
    // Sorted, and no entry for /opt or /opt/app: the layer did not create them.
    assert_eq!(
        names,
        [
            "opt/app/a.txt",
            "opt/app/b.txt",
            "opt/app/hard",
            "opt/app/link",
            "opt/app/setuid",
            "opt/app/zdir",
            "opt/app/zdir/sub",
            "opt/app/zdir/sub/deep",
        ]
    );
    let get = |name: &str| &entries.iter().find(|(p, _)| p == name).unwrap().1;
    assert_eq!(get("opt/app/setuid").mode, 0o4755);
    assert_eq!(get("opt/app/zdir").mode, 0o1777);
    assert_eq!(get("opt/app/zdir").kind, tar::EntryType::Directory);
    assert_eq!(get("opt/app/link").kind, tar::EntryType::Symlink);
    assert_eq!(get("opt/app/link").link.as_deref(), Some("a.txt"));
    // The second name of a hard-linked file is a link to the first.
    assert_eq!(get("opt/app/hard").kind, tar::EntryType::Link);
    assert_eq!(get("opt/app/hard").link.as_deref(), Some("opt/app/b.txt"));
    assert_eq!(get("opt/app/b.txt").data, b"bee");
    for (_, entry) in &entries {
        assert_eq!((entry.uid, entry.gid, entry.mtime), (0, 0, 0));
    }
    assert!(digests.digest.starts_with("sha256:") && digests.diff_id != digests.digest);
}

#[test]
fn owner_chmod_and_mtime_are_applied() {
    let src = tree();
    let (dir, _) = write(
        &[LayerSource {
            source: src.path().join("src/a.txt"),
            destination: "/usr/local/bin/".into(),
            owner: Some((1000, 2000)),
            chmod: Some(0o2750),
        }],
        1_700_000_000,
    );
    let entries = read_layer(&dir.path().join("layer.tar.gz"));
    assert_eq!(entries.len(), 1, "only the file, never its parents");
    let (path, entry) = &entries[0];
    assert_eq!(path, "usr/local/bin/a.txt");
    assert_eq!((entry.uid, entry.gid), (1000, 2000));
    assert_eq!(entry.mode, 0o2750);
    assert_eq!(entry.mtime, 1_700_000_000);
}

#[test]
fn same_input_same_digests_and_a_change_changes_them() {
    let src = tree();
    let source = LayerSource {
        source: src.path().join("src"),
        destination: "/app".into(),
        ..Default::default()
    };
    let (_d1, first) = write(std::slice::from_ref(&source), 0);
    // Timestamps on disk must not matter.
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(src.path().join("src/a.txt"), "aye").unwrap();
    let (_d2, second) = write(std::slice::from_ref(&source), 0);
    assert_eq!(first, second);
    fs::write(src.path().join("src/a.txt"), "nay").unwrap();
    let (_d3, third) = write(&[source], 0);
    assert_ne!(first.digest, third.digest);
    assert_ne!(first.diff_id, third.diff_id);
}

#[test]
fn digests_match_the_bytes_on_disk() {
    let src = tree();
    let (dir, digests) = write(
        &[LayerSource {
            source: src.path().join("src"),
            destination: "/app".into(),
            ..Default::default()
        }],
        0,
    );
    let compressed = fs::read(dir.path().join("layer.tar.gz")).unwrap();
    assert_eq!(digests.size, compressed.len() as u64);
    assert_eq!(
        digests.digest,
        slimforge::oci::registry::sha256_digest(&compressed)
    );
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_end(&mut tar)
        .unwrap();
    assert_eq!(
        digests.diff_id,
        slimforge::oci::registry::sha256_digest(&tar)
    );
}

#[test]
fn xattrs_are_kept() {
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("ping");
    fs::write(&file, "x").unwrap();
    // A v2 file capability: cap_net_bind_service permitted.
    let mut cap = Vec::new();
    for word in [0x0200_0001u32, 1 << 10, 0, 0, 0] {
        cap.extend_from_slice(&word.to_le_bytes());
    }
    xattr::set(&file, "security.capability", &cap).unwrap();
    xattr::set(&file, "user.origin", b"slimforge").unwrap();
    let (dir, _) = write(
        &[LayerSource {
            source: file,
            destination: "/bin/ping".into(),
            ..Default::default()
        }],
        0,
    );
    let entries = read_layer(&dir.path().join("layer.tar.gz"));
    let xattrs = &entries[0].1.xattrs;
    assert_eq!(xattrs.get("security.capability"), Some(&cap));
    assert_eq!(
        xattrs.get("user.origin").map(Vec::as_slice),
        Some(&b"slimforge"[..])
    );
}

#[test]
fn long_and_non_ascii_names_survive_gnu_tar() {
    let src = tempfile::tempdir().unwrap();
    let long_dir = "d".repeat(120);
    let long_name = format!("{}-{}", "n".repeat(150), "é");
    fs::create_dir_all(src.path().join("t").join(&long_dir)).unwrap();
    fs::write(
        src.path().join("t").join(&long_dir).join(&long_name),
        "long",
    )
    .unwrap();
    fs::write(src.path().join("t/naïve-файл-名前.txt"), "utf8").unwrap();
    symlink(
        format!("{long_dir}/{long_name}"),
        src.path().join("t/long-link"),
    )
    .unwrap();
    let (dir, _) = write(
        &[LayerSource {
            source: src.path().join("t"),
            destination: "/data".into(),
            ..Default::default()
        }],
        0,
    );
    let out = tempfile::tempdir().unwrap();
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(dir.path().join("layer.tar.gz"))
        .arg("-C")
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success());
    let extracted = out.path().join("data").join(&long_dir).join(&long_name);
    assert_eq!(fs::read_to_string(&extracted).unwrap(), "long");
    assert_eq!(
        fs::read_to_string(out.path().join("data/naïve-файл-名前.txt")).unwrap(),
        "utf8"
    );
    assert_eq!(
        fs::read_to_string(out.path().join("data/long-link")).unwrap(),
        "long"
    );
}

#[test]
fn user_files_named_like_whiteouts_are_refused() {
    let src = tempfile::tempdir().unwrap();
    fs::create_dir(src.path().join("d")).unwrap();
    fs::write(src.path().join("d/.wh.x"), "").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut writer =
        LayerWriter::create(&dir.path().join("l.tar.gz"), LayerOptions { mtime: 0 }).unwrap();
    let err = writer
        .add(&LayerSource {
            source: src.path().join("d"),
            destination: "/d".into(),
            ..Default::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains(".wh.x"), "{err}");
}

#[test]
fn whiteouts_are_written_on_purpose() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("l.tar.gz");
    let mut writer = LayerWriter::create(&out, LayerOptions { mtime: 0 }).unwrap();
    writer.whiteout("/bin/vi").unwrap();
    writer.opaque_whiteout("/var/cache").unwrap();
    writer.finish().unwrap();
    let names: Vec<String> = read_layer(&out).into_iter().map(|(p, _)| p).collect();
    assert_eq!(names, ["bin/.wh.vi", "var/cache/.wh..wh..opq"]);
}

#[test]
fn relative_or_escaping_destinations_are_refused() {
    let src = tree();
    let dir = tempfile::tempdir().unwrap();
    for destination in ["app", "/app/../../etc/passwd"] {
        let mut writer =
            LayerWriter::create(&dir.path().join("l.tar.gz"), LayerOptions { mtime: 0 }).unwrap();
        let err = writer
            .add(&LayerSource {
                source: src.path().join("src/a.txt"),
                destination: destination.into(),
                ..Default::default()
            })
            .unwrap_err();
        assert!(err.to_string().contains(destination), "{err}");
    }
}

#[test]
fn ready_tars_are_taken_as_is() {
    let src = tree();
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("snapshot.tar");
    let status = Command::new("tar")
        .arg("-cf")
        .arg(&plain)
        .arg("-C")
        .arg(src.path().join("src"))
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let from_plain = layer_from_tar(&plain, &dir.path().join("a.tar.gz")).unwrap();
    assert_eq!(
        from_plain.diff_id,
        slimforge::oci::registry::sha256_digest(&fs::read(&plain).unwrap())
    );
    // A tar that is already gzip keeps its bytes and its diffID.
    let gz = dir.path().join("snapshot.tar.gz");
    let status = Command::new("gzip")
        .arg("-k")
        .arg("-n")
        .arg(&plain)
        .status()
        .unwrap();
    assert!(status.success());
    let from_gz = layer_from_tar(&gz, &dir.path().join("b.tar.gz")).unwrap();
    assert_eq!(from_gz.diff_id, from_plain.diff_id);
    assert_eq!(
        from_gz.digest,
        slimforge::oci::registry::sha256_digest(&fs::read(&gz).unwrap())
    );
}

#[test]
fn parents_known_in_the_base_keep_its_mode_and_owner() {
    use slimforge::oci::layer::BaseDirectory;
    let src = tree();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("l.tar.gz");
    let base = [
        (
            "/tmp".to_string(),
            BaseDirectory {
                mode: 0o1777,
                uid: 0,
                gid: 0,
            },
        ),
        (
            "/srv".to_string(),
            BaseDirectory {
                mode: 0o750,
                uid: 0,
                gid: 33,
            },
        ),
    ]
    .into();
    let mut writer = LayerWriter::create(&out, LayerOptions { mtime: 0 })
        .unwrap()
        .with_base_directories(&base);
    for destination in ["/tmp/a", "/tmp/b", "/srv/www/index", "/opt/x"] {
        writer
            .add(&LayerSource {
                source: src.path().join("src/a.txt"),
                destination: destination.into(),
                ..Default::default()
            })
            .unwrap();
    }
    writer.finish().unwrap();
    let entries = read_layer(&out);
    let summary: Vec<(String, u32, u64)> = entries
        .iter()
        .map(|(p, e)| (p.clone(), e.mode, e.gid))
        .collect();
    // /tmp once, before its files; /srv/www and /opt are not in the base: no entry.
    assert_eq!(
        summary,
        [
            ("tmp".to_string(), 0o1777, 0),
            ("tmp/a".to_string(), 0o644, 0),
            ("tmp/b".to_string(), 0o644, 0),
            ("srv".to_string(), 0o750, 33),
            ("srv/www/index".to_string(), 0o644, 0),
            ("opt/x".to_string(), 0o644, 0),
        ]
    );
}
