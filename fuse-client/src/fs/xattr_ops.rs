//! Extended attributes on the mount (the names and values are in xattr.rs): reading and
//! setting a node's Chubby metadata through user.chubby.*.

use super::*;

use chubby_protocol::{AttrChange, InstanceNumber};

impl Shared {
    pub(super) async fn getxattr(
        &self,
        ino: u64,
        name: &OsStr,
        pid: u32,
    ) -> Result<Vec<u8>, Errno> {
        let no_data = Errno::NO_XATTR;
        let Some(n) = name.to_str().and_then(xattr::Name::parse) else {
            return Err(no_data);
        };
        let path = self.path(ino)?;
        match n {
            xattr::Name::LockDelay => {
                let key = self.instance_of(ino)?;
                return guard(&self.lock_delay)
                    .get(&key)
                    .map(|ms| ms.to_string().into_bytes())
                    .ok_or(no_data);
            }
            xattr::Name::Sequencer => {
                let key = self.instance_of(ino)?;
                return guard(&self.locks)
                    .sequencer(key, pid)
                    .map(|s| s.to_token().into_bytes())
                    .ok_or(no_data);
            }
            _ => {}
        }
        let cur = self.session().await?;
        let stat = if n == xattr::Name::LockGeneration {
            // Lock state is never cached (crate::cache): ask the master.
            let want = self.instance_of(ino)?;
            match cur.client.stat_fresh(&path).await.map_err(|e| ce(&e))? {
                Some(s) if s.instance.0 == want => s,
                _ => return Err(Errno::ENOENT),
            }
        } else {
            self.stat_of(&cur.client, ino, &path).await?.0
        };
        if n == xattr::Name::Ephemeral && stat.ephemeral_children {
            return Ok(b"1".to_vec());
        }
        xattr::value(n, &stat)
            .map(String::into_bytes)
            .ok_or(no_data)
    }

    pub(super) async fn listxattr(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let path = self.path(ino)?;
        let cur = self.session().await?;
        let (stat, _) = self.stat_of(&cur.client, ino, &path).await?;
        let key = stat.instance.0;
        let has_seq = guard(&self.locks).sequencer(key, 0).is_some();
        let mut names = xattr::names(stat.kind, has_seq);
        if !guard(&self.lock_delay).contains_key(&key) {
            names.retain(|n| *n != xattr::Name::LockDelay);
        }
        let mut out = Vec::new();
        for n in names {
            out.extend_from_slice(n.full().as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    pub(super) async fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8]) -> Result<(), Errno> {
        let Some(n) = name.to_str().and_then(xattr::Name::parse) else {
            return Err(Errno::from_i32(libc::ENOTSUP));
        };
        let path = self.path(ino)?;
        let cur = self.session().await?;
        let (stat, _) = self.stat_of(&cur.client, ino, &path).await?;
        match n {
            xattr::Name::AclRead | xattr::Name::AclWrite | xattr::Name::AclChange => {
                let v = std::str::from_utf8(value)
                    .map_err(|_| einval())?
                    .trim()
                    .to_owned();
                let mut acl = stat.acl.clone();
                match n {
                    xattr::Name::AclRead => acl.read = v,
                    xattr::Name::AclWrite => acl.write = v,
                    _ => acl.change_acl = v,
                }
                cur.client
                    .set_acl(&path, acl, None)
                    .await
                    .map_err(|e| ce(&e))?;
                Ok(())
            }
            xattr::Name::LockDelay if stat.kind == NodeKind::File => {
                let ms = xattr::parse_lock_delay(value).map_err(|e| {
                    warn!(path, error = %e, "bad user.chubby.lock_delay");
                    einval()
                })?;
                guard(&self.lock_delay).insert(stat.instance.0, ms);
                Ok(())
            }
            xattr::Name::Ephemeral if stat.kind == NodeKind::Directory => {
                let on = xattr::parse_flag(value).map_err(|_| einval())?;
                self.set_ephemeral_children(&cur.client, &path, stat.instance, on)
                    .await
            }
            _ => Err(eperm()),
        }
    }

    pub(super) async fn removexattr(&self, ino: u64, name: &OsStr) -> Result<(), Errno> {
        let Some(n) = name.to_str().and_then(xattr::Name::parse) else {
            return Err(Errno::NO_XATTR);
        };
        let path = self.path(ino)?;
        match n {
            xattr::Name::LockDelay => guard(&self.lock_delay)
                .remove(&self.instance_of(ino)?)
                .map(|_| ())
                .ok_or(Errno::NO_XATTR),
            xattr::Name::Ephemeral => {
                let cur = self.session().await?;
                let (stat, _) = self.stat_of(&cur.client, ino, &path).await?;
                if !stat.ephemeral_children {
                    return Err(Errno::NO_XATTR);
                }
                self.set_ephemeral_children(&cur.client, &path, stat.instance, false)
                    .await
            }
            _ => Err(eperm()),
        }
    }

    /// Sets or clears a directory's replicated ephemeral-children marker.
    pub(super) async fn set_ephemeral_children(
        &self,
        client: &Client,
        path: &str,
        instance: InstanceNumber,
        on: bool,
    ) -> Result<(), Errno> {
        let change = AttrChange {
            ephemeral_children: Some(on),
            ..AttrChange::default()
        };
        client
            .set_attr(path, Some(instance), change)
            .await
            .map_err(|e| ce(&e))?;
        info!(path, on, "ephemeral-children marker set");
        Ok(())
    }
}
