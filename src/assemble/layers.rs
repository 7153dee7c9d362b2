//! The new layers: each [`LayerSpec`](super::LayerSpec) checked into a plan
//! (owners and modes parsed), then written one file each on blocking threads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::AssembleError;
use super::copy_layer::write_copy_layer;
use super::spec::{AssembleSpec, CopyLayerSpec};
use crate::oci::layer::{
    self, BaseDirectory, LayerDigests, LayerOptions, LayerSource, LayerWriter,
};

/// A layer spec checked and made ready to write.
pub(super) enum LayerPlan {
    Files(LayerSource),
    Tar(PathBuf),
    Copy(CopyPlan),
}

/// A COPY layer checked: owner and mode parsed.
pub(super) struct CopyPlan {
    pub(super) spec: CopyLayerSpec,
    pub(super) owner: (u64, u64),
    pub(super) chmod: Option<u32>,
}

pub(super) fn plan_layers(spec: &AssembleSpec) -> Result<Vec<(LayerPlan, String)>, AssembleError> {
    let invalid =
        |index: usize, detail: String| AssembleError::Invalid(format!("layers[{index}]: {detail}"));
    spec.layers
        .iter()
        .enumerate()
        .map(|(index, l)| {
            let owner = l
                .owner
                .as_deref()
                .map(|o| {
                    parse_owner(o).ok_or_else(|| {
                        invalid(index, format!("owner `{o}` is not numeric uid:gid"))
                    })
                })
                .transpose()?;
            let chmod = l
                .chmod
                .as_deref()
                .map(|m| {
                    parse_mode(m)
                        .ok_or_else(|| invalid(index, format!("chmod `{m}` is not an octal mode")))
                })
                .transpose()?;
            let plan = match (&l.source, &l.tar, &l.copy) {
                (Some(source), None, None) => {
                    let destination = l
                        .destination
                        .clone()
                        .ok_or_else(|| invalid(index, "`source` needs a `destination`".into()))?;
                    if !source.exists() && source.symlink_metadata().is_err() {
                        return Err(invalid(
                            index,
                            format!("source {} does not exist", source.display()),
                        ));
                    }
                    LayerPlan::Files(LayerSource {
                        source: source.clone(),
                        destination,
                        owner,
                        chmod,
                    })
                }
                (None, Some(tar), None) => {
                    if l.destination.is_some() || l.owner.is_some() || l.chmod.is_some() {
                        return Err(invalid(
                            index,
                            "`tar` is taken as is: no destination, owner or chmod".into(),
                        ));
                    }
                    LayerPlan::Tar(tar.clone())
                }
                (None, None, Some(copy)) => {
                    if l.destination.is_some() {
                        return Err(invalid(index, "`copy` has its own `destination`".into()));
                    }
                    check_copy(copy).map_err(|detail| invalid(index, format!("copy: {detail}")))?;
                    LayerPlan::Copy(CopyPlan {
                        spec: copy.clone(),
                        owner: owner.unwrap_or((0, 0)),
                        chmod,
                    })
                }
                _ => {
                    return Err(invalid(
                        index,
                        "give exactly one of `source`, `tar` or `copy`".into(),
                    ));
                }
            };
            let created_by = l.created_by.clone().unwrap_or_else(|| match &plan {
                LayerPlan::Files(s) => format!("COPY {} {}", s.source.display(), s.destination),
                LayerPlan::Tar(t) => format!("ADD {}", t.display()),
                LayerPlan::Copy(c) => {
                    format!("COPY {} {}", c.spec.sources.join(" "), c.spec.destination)
                }
            });
            Ok((plan, created_by))
        })
        .collect()
}

fn check_copy(copy: &CopyLayerSpec) -> Result<(), String> {
    if !copy.destination.starts_with('/') {
        return Err(format!(
            "destination `{}` must be absolute",
            copy.destination
        ));
    }
    match (&copy.root, copy.archives.is_empty()) {
        (Some(_), false) => Err("give `root` or `archives`, not both".into()),
        (None, true) if !copy.sources.is_empty() => {
            Err("`sources` need a `root` or `archives`".into())
        }
        (None, false) if copy.archives.len() != copy.sources.len() => {
            Err("`archives` and `sources` pair up: one source per archive".into())
        }
        _ if copy.sources.is_empty() && copy.files.is_empty() && !copy.destination_is_dir => {
            Err("nothing to copy: no `sources`, no `files`, and no directory to make".into())
        }
        _ => Ok(()),
    }
}

fn parse_mode(mode: &str) -> Option<u32> {
    u32::from_str_radix(mode, 8).ok().filter(|m| *m <= 0o7777)
}

pub(super) fn base_directories(
    spec: &AssembleSpec,
) -> Result<BTreeMap<String, BaseDirectory>, AssembleError> {
    spec.base_directories
        .iter()
        .map(|(path, dir)| {
            let invalid =
                |what: &str| AssembleError::Invalid(format!("baseDirectories[{path}]: {what}"));
            let mode = parse_mode(&dir.mode).ok_or_else(|| invalid("mode is not octal"))?;
            let (uid, gid) = match &dir.owner {
                Some(owner) => parse_owner(owner).ok_or_else(|| invalid("owner is not uid:gid"))?,
                None => (0, 0),
            };
            Ok((path.clone(), BaseDirectory { mode, uid, gid }))
        })
        .collect()
}

fn parse_owner(owner: &str) -> Option<(u64, u64)> {
    let (uid, gid) = owner.split_once(':').unwrap_or((owner, owner));
    Some((uid.parse().ok()?, gid.parse().ok()?))
}

/// Writes the new layers into `dir`, one file each, on blocking threads.
pub(super) async fn write_layers(
    plans: Vec<(LayerPlan, String)>,
    base_dirs: BTreeMap<String, BaseDirectory>,
    dir: &Path,
) -> Result<Vec<(PathBuf, LayerDigests, String)>, AssembleError> {
    let options = LayerOptions::default();
    let mut written = Vec::new();
    // Directories COPY layers created, for the layers after them.
    let mut made: BTreeMap<String, BaseDirectory> = BTreeMap::new();
    for (index, (plan, created_by)) in plans.into_iter().enumerate() {
        let out = dir.join(format!("layer-{index}.tar.gz"));
        let path = out.clone();
        let base_dirs = base_dirs.clone();
        let work = dir.to_path_buf();
        let what = created_by.clone();
        let (digests, made_now) = tokio::task::spawn_blocking(move || match plan {
            LayerPlan::Files(source) => {
                let mut writer = LayerWriter::create(&path, options)
                    .map_err(|source| AssembleError::Layer { index, source })?
                    .with_base_directories(&base_dirs);
                writer
                    .add(&source)
                    .and_then(|()| writer.finish())
                    .map(|d| (d, made))
                    .map_err(|source| AssembleError::Layer { index, source })
            }
            LayerPlan::Tar(tar) => layer::layer_from_tar(&tar, &path)
                .map(|d| (d, made))
                .map_err(|source| AssembleError::Layer { index, source }),
            LayerPlan::Copy(copy) => {
                let mut made = made;
                write_copy_layer(&copy, &base_dirs, &mut made, &work, &path, options)
                    .map(|d| (d, made))
                    .map_err(|detail| AssembleError::Copy {
                        index,
                        created_by: what,
                        detail,
                    })
            }
        })
        .await
        .map_err(|e| AssembleError::Io(format!("layer writer stopped: {e}")))??;
        made = made_now;
        tracing::info!(layer = index, digest = %digests.digest, size = digests.size, "layer written");
        written.push((out, digests, created_by));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assemble::spec::tests::spec;

    #[test]
    fn layer_needs_exactly_one_kind() {
        let both =
            spec("base: scratch\ntarget: r/x\nlayers: [{source: a, tar: b, destination: /a}]");
        let err = plan_layers(&both).err().unwrap();
        assert!(err.to_string().contains("layers[0]"), "{err}");
        let bad_owner =
            spec("base: scratch\ntarget: r/x\nlayers: [{source: /, destination: /a, owner: root}]");
        let err = plan_layers(&bad_owner).err().unwrap();
        assert!(err.to_string().contains("owner `root`"), "{err}");
    }

    #[test]
    fn copy_layers_pair_archives_with_sources_and_need_something_to_copy() {
        let layers = spec(
            "base: scratch\ntarget: r/x\nworkDir: ws/tmp\nlayers:\n\
             - copy: {archives: [a.tar], sources: [/go/app], destination: /usr/bin, destinationIsDir: true}\n  owner: '65534:65534'\n\
             - copy: {destination: /srv, destinationIsDir: true}\n",
        );
        let plans = plan_layers(&layers).unwrap();
        let LayerPlan::Copy(copy) = &plans[0].0 else {
            panic!("a copy layer")
        };
        assert_eq!(copy.owner, (65534, 65534));
        assert_eq!(plans[0].1, "COPY /go/app /usr/bin");
        for (bad, expected) in [
            (
                "{archives: [a.tar, b.tar], sources: [/a], destination: /x}",
                "pair up",
            ),
            (
                "{sources: [/a], destination: /x}",
                "need a `root` or `archives`",
            ),
            (
                "{root: ctx, archives: [a.tar], sources: [/a], destination: /x}",
                "not both",
            ),
            ("{destination: /x}", "nothing to copy"),
            (
                "{root: ctx, sources: [a], destination: x}",
                "must be absolute",
            ),
        ] {
            let spec = spec(&format!(
                "base: scratch\ntarget: r/x\nlayers: [{{copy: {bad}}}]"
            ));
            let err = plan_layers(&spec).err().unwrap().to_string();
            assert!(
                err.contains("layers[0]: copy:") && err.contains(expected),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn owner_parses_uid_and_optional_gid() {
        assert_eq!(parse_owner("1000:100"), Some((1000, 100)));
        assert_eq!(parse_owner("1000"), Some((1000, 1000)));
        assert_eq!(parse_owner("app"), None);
    }
}
