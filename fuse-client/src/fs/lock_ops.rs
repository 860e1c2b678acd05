//! flock(2) and fcntl locks on the mount as cell-wide Chubby locks: the per-owner gates,
//! taking and releasing, and what a lost session does to its holders (the lock table itself
//! is in locks.rs, fencing in fence.rs).

use super::*;

use super::locks::{SIGNAL_POLL, WHOLE_FILE_END};
use chubby_protocol::{InstanceNumber, LockMode};

impl Shared {
    /// The mode of a lock on the file of `ino` held by another client of the cell that
    /// conflicts with `mode` (`F_GETLK`), if any.
    pub(super) async fn remote_conflict(
        &self,
        ino: u64,
        mode: LockMode,
    ) -> Result<Option<LockMode>, Errno> {
        let path = self.path(ino)?;
        let cur = self.session().await?;
        let (held, holders) = cur.client.lock_holders(&path).await.map_err(|e| ce(&e))?;
        let mine = cur.client.session();
        let others = holders.iter().any(|(session, _)| *session != mine);
        Ok(held.filter(|h| others && (mode == LockMode::Exclusive || *h == LockMode::Exclusive)))
    }

    /// The gate of `owner`'s lock on `instance` (see `lock_gates`).
    pub(super) fn lock_gate(&self, instance: u64, owner: u64) -> Gate {
        Arc::clone(
            guard(&self.lock_gates)
                .entry((instance, owner))
                .or_default(),
        )
    }

    /// Forgets every gate nobody uses and no lock needs any more (after a session's locks
    /// were lost together).
    pub(super) fn prune_lock_gates(&self) {
        // Gates before locks, as in `lock_gate_done`.
        let mut gates = guard(&self.lock_gates);
        let locks = guard(&self.locks);
        gates.retain(|(instance, owner), g| {
            Arc::strong_count(g) > 1 || locks.holds(*instance, *owner)
        });
    }

    /// Forgets a gate nobody uses and no lock needs any more.
    pub(super) fn lock_gate_done(&self, instance: u64, owner: u64, gate: Gate) {
        drop(gate);
        let mut gates = guard(&self.lock_gates);
        if gates
            .get(&(instance, owner))
            .is_some_and(|g| Arc::strong_count(g) == 1)
            && !guard(&self.locks).holds(instance, owner)
        {
            gates.remove(&(instance, owner));
        }
    }

    /// Releases `owner`'s lock on the file of `ino`. A wait in progress (another process
    /// of the same open file description is blocked taking the lock) goes on, unless
    /// `cancel`: the description or the process is closing the file.
    pub(super) async fn unlock(&self, ino: u64, owner: u64, cancel: bool) {
        let Ok(instance) = self.instance_of(ino) else {
            return;
        };
        self.unlock_instance(instance, owner, cancel).await;
    }

    /// [`Shared::unlock`] of the file `instance`.
    ///
    /// Never waits for the owner's gate: an unlock by one process of a description while
    /// another converts its lock (and waits for the new mode) is served at once, as on a
    /// local file system. The entry is removed only if it is still the one seen (a
    /// conversion may have replaced it: the unlock then came first).
    pub(super) async fn unlock_instance(&self, instance: u64, owner: u64, cancel: bool) {
        let (handle, state) = {
            let locks = guard(&self.locks);
            match locks.get(instance, owner) {
                Some(l) => (l.handle, l.state.clone()),
                None => return,
            }
        };
        match state {
            // Nothing is held yet: the wait goes on (another process of the description
            // is taking the lock), unless the file is being closed.
            LockState::Waiting if !cancel => {}
            LockState::Waiting | LockState::Held(_) => {
                let lock = {
                    let mut locks = guard(&self.locks);
                    if self.session_ended(locks.get(instance, owner)) {
                        return;
                    }
                    locks.remove_if(instance, owner, handle)
                };
                self.close_lock(lock).await;
            }
        }
    }

    /// Removes `owner`'s lock (or wait) on `instance` and closes its handle.
    pub(super) async fn drop_lock(&self, instance: u64, owner: u64) {
        let lock = {
            let mut locks = guard(&self.locks);
            if self.session_ended(locks.get(instance, owner)) {
                return;
            }
            locks.remove(instance, owner)
        };
        self.close_lock(lock).await;
    }

    /// True if `lock`'s session expired: the entry is left for the session's end
    /// (`watch_session`), which fences its holders. (Removed by an unlock in the moment
    /// before, it would take its holder out of the fence: `flock -u` by a process sharing
    /// the description, while another goes on writing.) The lock is gone at the cell
    /// either way.
    pub(super) fn session_ended(&self, lock: Option<&Lock>) -> bool {
        lock.is_some_and(|l| {
            self.sessions.current().is_some_and(|c| {
                c.generation == l.generation
                    && c.client.status() == crate::session::SessionStatus::Expired
            })
        })
    }

    /// Gives up a lock removed from the table at the cell. A held one is released and its
    /// handle kept for the file's next lock or write; a wait (whose grant may be on its way)
    /// or a lock on an ephemeral file closes its handle, which gives up both.
    pub(super) async fn close_lock(&self, lock: Option<Lock>) {
        if let Some(l) = lock {
            if let Ok(client) = self.sessions.of(l.generation).await {
                let kept = match (&l.state, l.keep_as) {
                    (LockState::Held(_), Some((instance, delay))) => {
                        client.release(l.handle).await.is_ok()
                            && client.keep(l.handle, instance, delay, false)
                    }
                    _ => false,
                };
                if !kept {
                    close_surely(&client, l.handle).await;
                }
            }
            debug!(path = %l.path, pid = l.pid, "lock released");
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn setlk(
        &self,
        ino: u64,
        fh: u64,
        owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
    ) -> Result<(), Errno> {
        if typ == libc::F_UNLCK {
            self.unlock(ino, owner, false).await;
            return Ok(());
        }
        if guard(&self.lost).contains(&fh) {
            return Err(Errno::EIO);
        }
        if start != 0 || end != WHOLE_FILE_END {
            return Err(Errno::from_i32(libc::ENOLCK)); // Chubby locks are whole-file
        }
        // Locks are the file's, whichever version's inode they are taken through.
        let instance = self.instance_of(ino)?;
        let mode = if typ == libc::F_RDLCK {
            LockMode::Shared
        } else {
            LockMode::Exclusive
        };
        let waiting = matches!(
            guard(&self.locks).get(instance, owner).map(|l| &l.state),
            Some(LockState::Waiting)
        );
        if waiting && !sleep {
            // Another process of this description waits for the lock: it is held elsewhere.
            return Err(Errno::from_i32(libc::EWOULDBLOCK));
        }
        let gate = self.lock_gate(instance, owner);
        if !sleep {
            // LOCK_NB never waits, not even for another process of this description that
            // is converting or taking the lock (it would wait for a holder elsewhere).
            let result = match gate.try_lock() {
                Ok(_turn) => {
                    self.take_lock(ino, instance, fh, owner, mode, pid, false)
                        .await
                }
                Err(_) => Err(Errno::from_i32(libc::EWOULDBLOCK)),
            };
            self.lock_gate_done(instance, owner, gate);
            return result;
        }
        let result = async {
            // A blocking wait for the gate ends with EINTR on a signal, like the wait
            // for the lock itself.
            let turn = gate.lock();
            tokio::pin!(turn);
            let _turn = loop {
                tokio::select! {
                    g = &mut turn => break g,
                    () = tokio::time::sleep(SIGNAL_POLL) => {
                        if locks::signal_pending(pid) {
                            return Err(Errno::from_i32(libc::EINTR));
                        }
                    }
                }
            };
            self.take_lock(ino, instance, fh, owner, mode, pid, true)
                .await
        }
        .await;
        self.lock_gate_done(instance, owner, gate);
        result
    }

    /// Takes `owner`'s lock on `instance` (through the inode `ino`), its gate held.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn take_lock(
        &self,
        ino: u64,
        instance: u64,
        fh: u64,
        owner: u64,
        mode: LockMode,
        pid: u32,
        sleep: bool,
    ) -> Result<(), Errno> {
        let existing = guard(&self.locks).get(instance, owner).cloned();
        if let Some(l) = existing {
            match l.state {
                // Held by this description (or process) already, maybe through another
                // process sharing it.
                LockState::Held(_) if l.mode == mode => return Ok(()),
                // A conversion: like flock(2), not atomic. (A wait left over cannot be
                // here: its caller held the gate.)
                LockState::Held(_) | LockState::Waiting => self.drop_lock(instance, owner).await,
            }
        }
        let path = self.path(ino)?;
        let cur = self.session().await?;
        let client = &cur.client;
        let delay = guard(&self.lock_delay).get(&instance).copied();
        // A handle kept from the file's last lock or write when `path` still names
        // `instance` (no Open at the cell), else a new one.
        let opened = client
            .open_writer(&path, InstanceNumber(instance), delay)
            .await
            .map_err(|e| ce(&e))?;
        let handle = opened.handle;
        if opened.stat.instance.0 != instance {
            client.close(handle).await;
            return Err(Errno::ENOENT);
        }
        let lock = Lock {
            handle,
            keep_as: (!opened.stat.ephemeral).then_some((InstanceNumber(instance), delay)),
            fh,
            generation: cur.generation,
            mode,
            pid,
            path: path.clone(),
            state: LockState::Waiting,
            lineage: fence::lineage(pid).iter().map(|p| p.pid).collect(),
        };
        if !sleep {
            return match client.try_acquire(handle, mode).await {
                Ok(seq) => {
                    let mut held = lock;
                    held.state = LockState::Held(seq);
                    // Recorded only while the session lives: once it expired (its status
                    // is published before its end is handled), a lock recorded now would
                    // escape the session's end, and its taker the fence.
                    let mut locks = guard(&self.locks);
                    if client.status() == crate::session::SessionStatus::Expired {
                        drop(locks);
                        return Err(Errno::EIO);
                    }
                    locks.insert(instance, owner, held);
                    Ok(())
                }
                Err(e) => {
                    client.close(handle).await;
                    Err(ce(&e))
                }
            };
        }
        guard(&self.locks).insert(instance, owner, lock);
        let acquire = client.acquire(handle, mode);
        tokio::pin!(acquire);
        let outcome = loop {
            tokio::select! {
                r = &mut acquire => break Some(r),
                () = tokio::time::sleep(SIGNAL_POLL) => {
                    if locks::signal_pending(pid) {
                        break None;
                    }
                }
            }
        };
        match outcome {
            Some(Ok(seq)) => {
                if guard(&self.locks).granted(instance, owner, handle, seq) {
                    debug!(path, pid, "lock granted");
                    Ok(())
                } else {
                    // Unlocked while waiting (the owner closed the file).
                    client.close(handle).await;
                    Err(Errno::from_i32(libc::ENOLCK))
                }
            }
            Some(Err(e)) => {
                // A wait that ended with its session: its waiter is a standby, not a
                // holder, whichever of this and the session's end (`watch_session`) runs
                // first. Recorded before the caller is answered, and in the same critical
                // section as the removal, so that the session's end sees one or the other.
                {
                    let mut locks = guard(&self.locks);
                    let lock = locks.remove_if(instance, owner, handle);
                    if client.status() == crate::session::SessionStatus::Expired {
                        if let Some(l) = lock {
                            guard(&self.failed_waits).push((cur.generation, l.path, l.lineage));
                        }
                    }
                }
                client.close(handle).await;
                warn!(path, pid, error = %e, "lock wait failed");
                let n = ce(&e);
                Err(if n == Errno::EIO {
                    Errno::from_i32(libc::ENOLCK)
                } else {
                    n
                })
            }
            None => {
                // A signal: give up the wait (closing the handle also returns a grant
                // that raced it), and let the caller see EINTR.
                guard(&self.locks).remove_if(instance, owner, handle);
                client.close(handle).await;
                debug!(path, pid, "lock wait interrupted by a signal");
                Err(Errno::from_i32(libc::EINTR))
            }
        }
    }
}
