//! Users and groups of an image, from its /etc/passwd and /etc/group (a
//! missing file is an empty table): what `USER` and `--chown` mean, and the
//! HOME a RUN gets; and who this process is.

use std::path::Path;

use super::resolve::read_table;
use super::tree::Tree;
use super::{FsError, io_err};

/// One `/etc/passwd` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// The image's users and groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Users {
    pub passwd: Vec<PasswdEntry>,
    /// (name, gid)
    pub groups: Vec<(String, u32)>,
}

impl Users {
    /// The tables of the image whose `/` is `root`, found through its links.
    pub fn read(root: &(impl Tree + ?Sized)) -> Result<Self, FsError> {
        Ok(Self::parse(
            &read_table(root, "etc/passwd")?,
            &read_table(root, "etc/group")?,
        ))
    }

    /// As [`Users::read`], an unreadable table being an empty one (the
    /// helper in a build pod: root reads what is there).
    pub fn load(root: &(impl Tree + ?Sized)) -> Self {
        Self::read(root).unwrap_or_else(|e| {
            tracing::debug!(error = %e, "no users read");
            Self::default()
        })
    }

    pub fn parse(passwd: &str, group: &str) -> Self {
        let fields = |text: &str| -> Vec<Vec<String>> {
            text.lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                .map(|l| l.split(':').map(str::to_string).collect())
                .collect()
        };
        let passwd = fields(passwd)
            .into_iter()
            .filter_map(|f| {
                Some(PasswdEntry {
                    name: f.first()?.clone(),
                    uid: f.get(2)?.parse().ok()?,
                    gid: f.get(3)?.parse().ok()?,
                    home: f.get(5).cloned().unwrap_or_default(),
                })
            })
            .collect();
        let groups = fields(group)
            .into_iter()
            .filter_map(|f| Some((f.first()?.clone(), f.get(2)?.parse().ok()?)))
            .collect();
        Self { passwd, groups }
    }

    fn by_name(&self, name: &str) -> Option<&PasswdEntry> {
        self.passwd.iter().find(|e| e.name == name)
    }

    fn by_uid(&self, uid: u32) -> Option<&PasswdEntry> {
        self.passwd.iter().find(|e| e.uid == uid)
    }

    fn group(&self, name: &str) -> Result<u32, String> {
        if let Ok(gid) = name.parse() {
            return Ok(gid);
        }
        self.groups
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, gid)| *gid)
            .ok_or_else(|| format!("unknown group `{name}`: not in the image's /etc/group"))
    }

    /// `USER` as the runtime resolves it: `name` → its uid and primary gid;
    /// a numeric uid takes the primary gid of its passwd entry, else 0;
    /// `:group` by name or number.
    pub fn resolve_user(&self, spec: &str) -> Result<(u32, u32), String> {
        self.resolve(spec, false)
    }

    /// `--chown` with Docker's rules: as [`Users::resolve_user`], but a
    /// numeric user without a group gets gid = uid.
    pub fn resolve_chown(&self, spec: &str) -> Result<(u32, u32), String> {
        self.resolve(spec, true)
    }

    fn resolve(&self, spec: &str, numeric_gid_is_uid: bool) -> Result<(u32, u32), String> {
        let (user, group) = match spec.split_once(':') {
            Some((user, group)) => (user, Some(group)),
            None => (spec, None),
        };
        if user.is_empty() || group.is_some_and(str::is_empty) {
            return Err(format!("`{spec}` is not user, user:group, uid or uid:gid"));
        }
        let (uid, primary) = match user.parse::<u32>() {
            Ok(uid) if numeric_gid_is_uid => (uid, uid),
            Ok(uid) => (uid, self.by_uid(uid).map_or(0, |e| e.gid)),
            Err(_) => {
                let entry = self.by_name(user).ok_or_else(|| {
                    format!("unknown user `{user}`: not in the image's /etc/passwd")
                })?;
                (entry.uid, entry.gid)
            }
        };
        let gid = match group {
            Some(group) => self.group(group)?,
            None => primary,
        };
        Ok((uid, gid))
    }

    /// HOME for a RUN as `uid`, as Docker sets it: the passwd entry's home,
    /// `/` when there is none.
    pub fn home(&self, uid: u32) -> String {
        self.by_uid(uid)
            .map(|e| e.home.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "/".into())
    }
}

/// The effective uid and gid of this process, from `/proc/self/status`.
pub fn current_ids() -> Result<(u32, u32), FsError> {
    let path = Path::new("/proc/self/status");
    let status = std::fs::read_to_string(path).map_err(io_err(path))?;
    parse_status(&status).ok_or_else(|| FsError::Invalid {
        path: path.to_path_buf(),
        what: "no Uid:/Gid: lines".into(),
    })
}

/// `Uid:\treal\teffective\tsaved\tfs` → the effective one; same for Gid.
fn parse_status(status: &str) -> Option<(u32, u32)> {
    let effective = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((effective("Uid:")?, effective("Gid:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Users {
        Users::parse(
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1001::/home/app:/bin/sh\nnohome:x:1002:1002:::\n",
            "root:x:0:\nnogroup:x:65534:\nstaff:x:50:app\n",
        )
    }

    #[test]
    fn user_follows_the_runtimes_rules_and_chown_dockers() {
        let u = users();
        assert_eq!(u.resolve_user("nobody"), Ok((65534, 65534)));
        assert_eq!(u.resolve_user("app:staff"), Ok((1000, 50)));
        assert_eq!(u.resolve_user("1000"), Ok((1000, 1001)));
        assert_eq!(u.resolve_user("4242"), Ok((4242, 0)));
        assert_eq!(u.resolve_user("4242:7"), Ok((4242, 7)));
        assert_eq!(u.resolve_chown("4242"), Ok((4242, 4242)));
        assert_eq!(u.resolve_chown("app"), Ok((1000, 1001)));
        assert!(u.resolve_user("ghost").unwrap_err().contains("ghost"));
        assert!(u.resolve_user("app:ghosts").unwrap_err().contains("ghosts"));
        assert!(u.resolve_user(":1").is_err());
    }

    #[test]
    fn home_comes_from_passwd_or_is_root_dir() {
        let u = users();
        assert_eq!(u.home(0), "/root");
        assert_eq!(u.home(1000), "/home/app");
        assert_eq!(u.home(1002), "/");
        assert_eq!(u.home(4242), "/");
    }

    #[test]
    fn users_follow_dockers_chown_rules_in_a_base() {
        let base = crate::rootfs::resolve::tests::base();
        let users = Users::read(base.path()).unwrap();
        let owner = |u: &str| {
            let (uid, gid) = users.resolve_chown(u).unwrap();
            format!("{uid}:{gid}")
        };
        assert_eq!(owner("nobody"), "65534:65534");
        assert_eq!(owner("app"), "1000:1001");
        assert_eq!(owner("app:staff"), "1000:50");
        assert_eq!(owner("app:0"), "1000:0");
        assert_eq!(owner("1000"), "1000:1000");
        assert_eq!(owner("1000:50"), "1000:50");
        assert_eq!(owner("0:staff"), "0:50");
        assert_eq!(
            users.resolve_chown("ghost"),
            Err("unknown user `ghost`: not in the image's /etc/passwd".into())
        );
        assert!(matches!(users.resolve_chown("app:ghosts"), Err(e) if e.contains("`ghosts`")));
    }

    #[test]
    fn names_in_a_base_without_etc_passwd_are_errors_and_numbers_pass() {
        let dir = tempfile::tempdir().unwrap();
        let users = Users::read(dir.path()).unwrap();
        assert!(users.resolve_chown("root").is_err());
        assert_eq!(users.resolve_chown("10:20"), Ok((10, 20)));
    }

    #[test]
    fn status_gives_the_effective_ids() {
        let status = "Name:\tx\nUmask:\t0022\nUid:\t1000\t65534\t1000\t65534\nGid:\t100\t65533\t100\t65533\n";
        assert_eq!(parse_status(status), Some((65534, 65533)));
        assert_eq!(parse_status("Name:\tx\n"), None);
    }

    #[test]
    fn current_ids_match_the_owner_of_proc_self() {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata("/proc/self").unwrap();
        assert_eq!(current_ids().unwrap(), (meta.uid(), meta.gid()));
    }
}
