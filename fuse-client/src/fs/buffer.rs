//! The write buffer of an open file description (pure).
//!
//! Chubby writes whole files atomically (DESIGN §6): `write(2)` edits a per-description
//! buffer that starts from the file's contents (or empty under `O_TRUNC`), and the whole
//! buffer is sent as one SetContents. A buffer that ever grew past the file size limit is
//! refused whole at commit, so the old contents stay intact.
//!
//! # Which close commits
//! Every `close(2)` of a descriptor sends the daemon a FLUSH, including closes that do
//! not end the write: a shell redirect (`cmd > f`) dups the descriptor and closes the
//! original before `cmd` writes a byte, and a writer that forks and execs closes its
//! close-on-exec copy in the child. Committing at each would publish the truncation, or
//! half the bytes, as versions of their own. So a FLUSH commits only what the closing
//! process (its lock owner, the kernel's name for its file table) wrote itself since the
//! last commit ([`WriteBuffer::commits_at_flush`]); what is left (a truncation nobody
//! wrote after, bytes written by a process that is still running) is committed by that
//! process's own close, or at the release of the description, after its last close.

use chubby_protocol::db::FILE_BYTES_MAX;

/// Why a buffer operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferError {
    /// The file would exceed [`FILE_BYTES_MAX`] (`EFBIG`).
    TooLarge,
    /// The buffer needs the file's current contents first (see [`WriteBuffer::set_base`]).
    NeedsBase,
}

/// The buffer (see the module docs).
#[derive(Debug, Default)]
pub struct WriteBuffer {
    /// `None` until the current contents are known (fetched lazily: `echo x > f` truncates
    /// first, so it never needs them).
    data: Option<Vec<u8>>,
    dirty: bool,
    too_large: bool,
    append: bool,
    /// Lock owners (processes' file tables) that wrote since the last commit.
    writers: Vec<u64>,
    /// Something was changed by a caller the kernel did not name (`ftruncate`).
    any_writer: bool,
}

impl WriteBuffer {
    /// A buffer for a description opened with or without `O_APPEND`; `truncated` starts it
    /// empty and dirty (`O_TRUNC`), `created` empty and clean (a new file).
    #[must_use]
    pub fn new(append: bool, truncated: bool, created: bool) -> WriteBuffer {
        WriteBuffer {
            data: (truncated || created).then(Vec::new),
            dirty: truncated,
            too_large: false,
            append,
            writers: Vec::new(),
            any_writer: false,
        }
    }

    /// True if the current contents must be fetched before reading or editing.
    #[must_use]
    pub fn needs_base(&self) -> bool {
        self.data.is_none()
    }

    /// Supplies the current contents (ignored if already known).
    pub fn set_base(&mut self, contents: Vec<u8>) {
        if self.data.is_none() {
            self.data = Some(contents);
        }
    }

    /// The buffer's contents, if known.
    #[must_use]
    pub fn contents(&self) -> Option<&[u8]> {
        self.data.as_deref()
    }

    /// True if there is something to commit.
    #[must_use]
    pub fn is_dirty(&self) -> bool {
        self.dirty || self.too_large
    }

    /// Writes `bytes` at `offset` (at the end under `O_APPEND`) for the lock owner `owner`
    /// (`None`: unnamed); returns the count written.
    ///
    /// # Errors
    /// [`BufferError::TooLarge`] (and the buffer is refused at commit), or
    /// [`BufferError::NeedsBase`].
    pub fn write(
        &mut self,
        offset: u64,
        bytes: &[u8],
        owner: Option<u64>,
    ) -> Result<usize, BufferError> {
        let data = self.data.as_mut().ok_or(BufferError::NeedsBase)?;
        let start = if self.append {
            data.len()
        } else {
            usize::try_from(offset).map_err(|_| BufferError::TooLarge)?
        };
        let end = start
            .checked_add(bytes.len())
            .ok_or(BufferError::TooLarge)?;
        if end > FILE_BYTES_MAX {
            self.too_large = true;
            return Err(BufferError::TooLarge);
        }
        if data.len() < end {
            data.resize(end, 0);
        }
        data[start..end].copy_from_slice(bytes);
        self.dirty = true;
        self.wrote(owner);
        Ok(bytes.len())
    }

    fn wrote(&mut self, owner: Option<u64>) {
        match owner {
            Some(o) if !self.writers.contains(&o) => self.writers.push(o),
            Some(_) => {}
            None => self.any_writer = true,
        }
    }

    /// True if a FLUSH by `owner` (a `close(2)` in that process) should commit: something is
    /// to be sent (or refused) and `owner` wrote it (see the module docs).
    #[must_use]
    pub fn commits_at_flush(&self, owner: u64) -> bool {
        self.is_dirty() && (self.any_writer || self.writers.contains(&owner))
    }

    /// Sets the length to `size` (zero-filling when growing), for a caller the kernel does
    /// not name (`ftruncate`): the next FLUSH commits it.
    ///
    /// # Errors
    /// As [`WriteBuffer::write`]; truncating to zero never needs the base.
    pub fn truncate(&mut self, size: u64) -> Result<(), BufferError> {
        if size == 0 {
            self.data = Some(Vec::new());
            self.dirty = true;
            self.wrote(None);
            return Ok(());
        }
        let size = usize::try_from(size).map_err(|_| BufferError::TooLarge)?;
        if size > FILE_BYTES_MAX {
            self.too_large = true;
            return Err(BufferError::TooLarge);
        }
        let data = self.data.as_mut().ok_or(BufferError::NeedsBase)?;
        data.resize(size, 0);
        self.dirty = true;
        self.wrote(None);
        Ok(())
    }

    /// The contents to send as one SetContents, if dirty.
    ///
    /// # Errors
    /// [`BufferError::TooLarge`] if a write ever went past the limit: nothing is sent.
    pub fn to_commit(&self) -> Result<Option<Vec<u8>>, BufferError> {
        if self.too_large {
            return Err(BufferError::TooLarge);
        }
        if !self.dirty {
            return Ok(None);
        }
        Ok(Some(self.data.clone().unwrap_or_default()))
    }

    /// The commit failed and the caller was told: what is buffered is not sent again unless
    /// written again (an oversized buffer still refuses every commit).
    pub fn abandon(&mut self) {
        self.dirty = false;
        self.writers.clear();
        self.any_writer = false;
    }

    /// The commit succeeded: nothing is dirty any more.
    pub fn committed(&mut self) {
        self.dirty = false;
        self.writers.clear();
        self.any_writer = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_edit_the_base_and_commit_whole() {
        let mut b = WriteBuffer::new(false, false, false);
        assert!(b.needs_base());
        assert_eq!(b.write(0, b"x", Some(1)), Err(BufferError::NeedsBase));
        b.set_base(b"hello world".to_vec());
        assert_eq!(b.to_commit(), Ok(None), "clean until written");
        assert_eq!(b.write(6, b"chubby", Some(1)), Ok(6));
        assert_eq!(b.to_commit(), Ok(Some(b"hello chubby".to_vec())));
        b.committed();
        assert_eq!(b.to_commit(), Ok(None));
    }

    #[test]
    fn append_ignores_the_offset_and_gaps_are_zero_filled() {
        let mut b = WriteBuffer::new(true, false, false);
        b.set_base(b"ab".to_vec());
        assert_eq!(b.write(0, b"cd", Some(1)), Ok(2));
        assert_eq!(b.contents(), Some(&b"abcd"[..]));
        let mut b = WriteBuffer::new(false, true, false);
        assert_eq!(b.write(2, b"z", Some(1)), Ok(1));
        assert_eq!(b.contents(), Some(&b"\0\0z"[..]));
    }

    #[test]
    fn truncation_starts_empty_and_dirty_and_a_new_file_clean() {
        let b = WriteBuffer::new(false, true, false);
        assert_eq!(b.to_commit(), Ok(Some(Vec::new())));
        let b = WriteBuffer::new(false, false, true);
        assert_eq!(b.to_commit(), Ok(None));
        let mut b = WriteBuffer::new(false, false, false);
        assert_eq!(b.truncate(0), Ok(()), "no base needed");
        assert_eq!(b.to_commit(), Ok(Some(Vec::new())));
        let mut b = WriteBuffer::new(false, false, false);
        assert_eq!(b.truncate(3), Err(BufferError::NeedsBase));
        b.set_base(b"abcdef".to_vec());
        assert_eq!(b.truncate(3), Ok(()));
        assert_eq!(b.contents(), Some(&b"abc"[..]));
    }

    #[test]
    fn a_flush_commits_only_what_its_own_process_wrote() {
        // `cmd > f`: the shell's close of the original descriptor comes before any write.
        let mut b = WriteBuffer::new(false, true, false);
        assert!(b.is_dirty());
        assert!(!b.commits_at_flush(7), "the truncation alone waits");
        assert_eq!(b.write(0, b"out", Some(9)), Ok(3));
        assert!(
            !b.commits_at_flush(7),
            "a forked child's close (exec) waits"
        );
        assert!(b.commits_at_flush(9), "the writer's own close commits");
        b.committed();
        assert!(!b.commits_at_flush(9), "nothing new");
        // ftruncate names no owner: any close commits it.
        assert_eq!(b.truncate(0), Ok(()));
        assert!(b.commits_at_flush(7));
        b.committed();
        // An oversized write is reported at its writer's close.
        let chunk = vec![1u8; FILE_BYTES_MAX];
        assert_eq!(b.write(0, &chunk, Some(9)), Ok(FILE_BYTES_MAX));
        assert_eq!(
            b.write(FILE_BYTES_MAX as u64, b"x", Some(9)),
            Err(BufferError::TooLarge)
        );
        assert!(b.commits_at_flush(9));
        assert_eq!(b.to_commit(), Err(BufferError::TooLarge));
    }

    #[test]
    fn going_past_the_limit_refuses_the_whole_commit() {
        let mut b = WriteBuffer::new(false, true, false);
        let chunk = vec![7u8; 64 * 1024];
        for i in 0..4 {
            assert_eq!(b.write(i * 65536, &chunk, Some(1)), Ok(chunk.len()));
        }
        assert_eq!(
            b.write(4 * 65536, &chunk, Some(1)),
            Err(BufferError::TooLarge)
        );
        assert!(b.is_dirty());
        assert_eq!(b.to_commit(), Err(BufferError::TooLarge), "nothing is sent");
        let mut b = WriteBuffer::new(false, true, false);
        assert_eq!(
            b.truncate(FILE_BYTES_MAX as u64 + 1),
            Err(BufferError::TooLarge)
        );
        assert_eq!(b.write(u64::MAX, b"x", Some(1)), Err(BufferError::TooLarge));
    }
}
