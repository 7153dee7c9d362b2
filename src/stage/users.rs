//! Users and groups of the image the helper runs in, from its own
//! /etc/passwd and /etc/group (a missing file is an empty table): what
//! `USER` and `--chown` mean, and the HOME a RUN gets.

use std::fs;
use std::io;
use std::path::Path;

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
    /// Reads `root/etc/passwd` and `root/etc/group`.
    pub fn load(root: &Path) -> Self {
        Self::parse(
            &read(&root.join("etc/passwd")),
            &read(&root.join("etc/group")),
        )
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

fn read(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(_) => String::new(),
    }
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
}
