//! The audit journal: an append-only file that makes a single node's audit events durable
//! with one `fdatasync`, so a request waits for that rather than for a database commit.
//!
//! A SQLite commit with `synchronous = FULL` costs several round trips to SQLite's connection
//! thread, B-tree page writes and a WAL fsync, and the audit chain allows only one at a time:
//! that serialized commit capped audited requests. The journal takes the durable step instead
//! and the events reach the database shortly after, in large batches (see `AuditWriter`).
//! The journal only holds what the database may not have yet; it is emptied once it has.
//!
//! Format: a sequence of frames, each `len: u32 BE | SHA-256(payload) | payload`, the payload a
//! JSON array of sealed events that continue the chain. A frame is written whole and synced
//! before its events' requests are answered, so only the last frame can be torn (the process
//! or machine died before the sync returned; none of its requests was answered). Recovery
//! drops such a tail; a bad frame with an intact frame after it is corruption and stops startup.

use super::AuditEvent;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const FRAME_HEADER: usize = 4 + 32;
/// Largest payload a frame may have (a batch of 512 events is far smaller). A header declaring
/// more is not a frame, which also bounds what recovery hashes per position it tries.
const MAX_PAYLOAD: usize = 16 << 20;
/// Most bytes recovery hashes while looking for intact frames after a bad one; past this, the
/// file is treated as corrupted rather than scanned further.
const MAX_SCAN_HASHED: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("audit journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "audit journal {0} is locked by another process: another sovra server uses this database"
    )]
    Locked(PathBuf),
    #[error(
        "audit journal {path} is corrupted at byte {offset} ({reason}); it holds audit events \
         that may not be in the database yet: keep a copy of the file for investigation"
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error(
        "audit journal {path}: its events do not fit the database's audit chain ({reason}); the \
         journal is kept as it is: was the database restored from an older copy?"
    )]
    Mismatch { path: PathBuf, reason: String },
    #[error("audit journal {path}: the database cannot be read or written: {reason}")]
    Store { path: PathBuf, reason: String },
}

/// An open journal, locked for this process.
#[derive(Debug)]
pub struct AuditJournal {
    path: PathBuf,
    file: File,
    len: u64,
    /// Set when a failed append could not be cut back off the file: nothing more may be
    /// appended behind those bytes, or recovery would take them for corruption.
    poisoned: bool,
}

impl AuditJournal {
    /// Opens (or creates, mode 0600) the journal, locks it exclusively, and returns it with the
    /// events it holds, in chain order. A torn last frame is cut off.
    pub fn open(path: &Path) -> Result<(AuditJournal, Vec<AuditEvent>), JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut options = OpenOptions::new();
        options.read(true).append(true).create(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(io)?;
        // A new file's directory entry must survive power loss like its contents.
        #[cfg(unix)]
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        file.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => JournalError::Locked(path.to_path_buf()),
            std::fs::TryLockError::Error(e) => io(e),
        })?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(io)?;
        let (events, valid_len) = parse(path, &data)?;
        if valid_len < data.len() {
            // Kept beside the journal: a torn tail is expected after a crash, but a damaged last
            // frame looks the same, and its bytes are the only evidence.
            let mut kept = path.as_os_str().to_owned();
            let tag = sovra_crypto::rng::random_vec(4).unwrap_or_default();
            kept.push(format!(
                ".dropped-{}-{}",
                crate::now_ms(),
                ::hex::encode(tag)
            ));
            let kept = PathBuf::from(kept);
            write_synced(&kept, &data[valid_len..]).map_err(io)?;
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = data.len() - valid_len,
                kept_in = %kept.display(),
                "audit journal ends in a torn frame (a crash during a write whose requests were never answered); dropping it"
            );
            file.set_len(valid_len as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let journal = AuditJournal {
            path: path.to_path_buf(),
            file,
            len: valid_len as u64,
            poisoned: false,
        };
        Ok((journal, events))
    }

    /// Appends one frame and waits until it is on disk.
    pub fn append(&mut self, events: &[AuditEvent]) -> std::io::Result<()> {
        if self.poisoned {
            // Try again to cut off the failed write; until then nothing may follow it.
            self.file.set_len(self.len)?;
            self.file.sync_all()?;
            self.poisoned = false;
        }
        let payload = serde_json::to_vec(events).map_err(std::io::Error::other)?;
        if payload.len() > MAX_PAYLOAD {
            return Err(std::io::Error::other(
                "audit batch too large for one journal frame",
            ));
        }
        let len = u32::try_from(payload.len()).map_err(std::io::Error::other)?;
        let mut frame = Vec::with_capacity(FRAME_HEADER + payload.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&sovra_crypto::sha256(&payload));
        frame.extend_from_slice(&payload);
        let written = self
            .file
            .write_all(&frame)
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += frame.len() as u64;
                Ok(())
            }
            Err(e) => {
                // A full disk can leave part of the frame behind; cut it off so the next frame
                // starts where recovery expects one.
                if self
                    .file
                    .set_len(self.len)
                    .and_then(|()| self.file.sync_all())
                    .is_err()
                {
                    self.poisoned = true;
                }
                Err(e)
            }
        }
    }

    /// Bytes in the journal.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Empties the journal, once every event in it is stored durably elsewhere.
    pub fn clear(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        // The file is empty from here on, whether or not the sync below succeeds.
        self.len = 0;
        self.poisoned = false;
        self.file.sync_all()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads frames; returns the events and the length of the valid prefix.
fn parse(path: &Path, data: &[u8]) -> Result<(Vec<AuditEvent>, usize), JournalError> {
    let corrupt = |offset: usize, reason: &str| JournalError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason: reason.to_string(),
    };
    let mut events: Vec<AuditEvent> = Vec::new();
    let mut offset = 0;
    while offset < data.len() {
        let rest = &data[offset..];
        let frame = read_frame(rest);
        let Some((frame_events, frame_len)) = frame else {
            // Only the last frame written can be torn, since a frame is appended only after the
            // previous one was synced: a bad frame with an intact one anywhere after it means
            // synced bytes changed.
            let mut hashed = 0usize;
            for p in offset + 1..data.len() {
                if hashed > MAX_SCAN_HASHED {
                    return Err(corrupt(offset, "a frame fails its checksum"));
                }
                hashed += declared_payload(&data[p..]).unwrap_or(0);
                if read_frame(&data[p..]).is_some() {
                    return Err(corrupt(offset, "a frame fails its checksum"));
                }
            }
            return Ok((events, offset));
        };
        for ev in frame_events {
            if let Some(prev) = events.last()
                && (ev.seq != prev.seq.wrapping_add(1) || ev.prev_hash != prev.hash)
            {
                return Err(corrupt(offset, "events do not continue the chain"));
            }
            if ev.hash != ev.compute_hash() {
                return Err(corrupt(offset, "an event's hash does not match its fields"));
            }
            events.push(ev);
        }
        offset += frame_len;
    }
    Ok((events, offset))
}

/// The payload length a frame header at the start of `data` declares, if plausible: within
/// [`MAX_PAYLOAD`] and the bytes present.
fn declared_payload(data: &[u8]) -> Option<usize> {
    let len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    (len <= MAX_PAYLOAD && FRAME_HEADER + len <= data.len()).then_some(len)
}

/// One whole, intact frame at the start of `data`: its events and its length.
fn read_frame(data: &[u8]) -> Option<(Vec<AuditEvent>, usize)> {
    let len = declared_payload(data)?;
    let digest = data.get(4..FRAME_HEADER)?;
    let payload = data.get(FRAME_HEADER..FRAME_HEADER.checked_add(len)?)?;
    if sovra_crypto::sha256(payload).as_slice() != digest {
        return None;
    }
    let events: Vec<AuditEvent> = serde_json::from_slice(payload).ok()?;
    Some((events, FRAME_HEADER + len))
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::GENESIS;

    fn chain(from: u64, prev: &str, n: u64) -> Vec<AuditEvent> {
        let mut prev = prev.to_string();
        (from..from + n)
            .map(|seq| {
                let ev = AuditEvent {
                    seq: 0,
                    time_ms: 1_700_000_000_000 + seq as i64,
                    org: Some("acme".into()),
                    actor: "user#1".into(),
                    auth_method: "jwt".into(),
                    cert_fingerprint: None,
                    action: "keys.encrypt".into(),
                    resource: format!("key/{seq}"),
                    outcome: "success".into(),
                    error_code: None,
                    request_id: format!("req-{seq}"),
                    source: "127.0.0.1".into(),
                    hashed: Default::default(),
                    prev_hash: String::new(),
                    hash: String::new(),
                }
                .seal_after(seq, &prev);
                prev = ev.hash.clone();
                ev
            })
            .collect()
    }

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn appended_frames_come_back_in_order_after_reopening() {
        let d = dir();
        let path = d.path().join("audit.journal");
        let events = chain(1, GENESIS, 5);
        {
            let (mut j, found) = AuditJournal::open(&path).unwrap();
            assert!(found.is_empty());
            j.append(&events[..2]).unwrap();
            j.append(&events[2..]).unwrap();
        }
        let (j, found) = AuditJournal::open(&path).unwrap();
        assert_eq!(found, events);
        assert_eq!(j.len(), std::fs::metadata(&path).unwrap().len());
    }

    #[test]
    fn a_second_opener_is_refused_while_the_first_holds_the_lock() {
        let d = dir();
        let path = d.path().join("audit.journal");
        let (_held, _) = AuditJournal::open(&path).unwrap();
        assert!(matches!(
            AuditJournal::open(&path),
            Err(JournalError::Locked(_))
        ));
    }

    #[test]
    fn a_torn_last_frame_is_dropped_and_the_earlier_ones_kept() {
        let d = dir();
        let path = d.path().join("audit.journal");
        let events = chain(1, GENESIS, 4);
        {
            let (mut j, _) = AuditJournal::open(&path).unwrap();
            j.append(&events[..2]).unwrap();
            j.append(&events[2..]).unwrap();
        }
        let full = std::fs::read(&path).unwrap();
        let first_frame = {
            let (j, _) = AuditJournal::open(&path).unwrap();
            drop(j);
            let len = u32::from_be_bytes(full[..4].try_into().unwrap()) as usize;
            FRAME_HEADER + len
        };
        // Every cut inside the second frame, and zeros where its bytes never landed.
        for cut in first_frame..full.len() {
            let mut torn = full[..cut].to_vec();
            std::fs::write(&path, &torn).unwrap();
            let (j, found) = AuditJournal::open(&path).unwrap();
            assert_eq!(found, events[..2], "cut at {cut}");
            assert_eq!(j.len() as usize, first_frame);
            drop(j);
            assert_eq!(
                std::fs::metadata(&path).unwrap().len() as usize,
                first_frame
            );
            if cut > first_frame {
                // The dropped bytes are kept beside the journal, as evidence.
                let kept: Vec<_> = std::fs::read_dir(d.path())
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .filter(|p| p.to_string_lossy().contains(".dropped-"))
                    .collect();
                assert_eq!(kept.len(), 1, "cut at {cut}");
                assert_eq!(std::fs::read(&kept[0]).unwrap(), &full[first_frame..cut]);
                std::fs::remove_file(&kept[0]).unwrap();
            }
            torn.resize(full.len(), 0);
            std::fs::write(&path, &torn).unwrap();
            let (_, found) = AuditJournal::open(&path).unwrap();
            assert_eq!(found, events[..2], "zero-filled from {cut}");
            for e in std::fs::read_dir(d.path()).unwrap() {
                let p = e.unwrap().path();
                if p.to_string_lossy().contains(".dropped-") {
                    std::fs::remove_file(p).unwrap();
                }
            }
        }
    }

    #[test]
    fn a_damaged_frame_followed_by_others_is_corruption_not_a_torn_tail() {
        let d = dir();
        let path = d.path().join("audit.journal");
        let events = chain(1, GENESIS, 6);
        {
            let (mut j, _) = AuditJournal::open(&path).unwrap();
            for pair in events.chunks(2) {
                j.append(pair).unwrap();
            }
        }
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[FRAME_HEADER + 10] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = AuditJournal::open(&path).unwrap_err();
        assert!(
            matches!(err, JournalError::Corrupt { offset: 0, .. }),
            "{err}"
        );
        // Nothing was cut: the evidence stays for the operator.
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn frames_that_do_not_continue_the_chain_are_corruption() {
        let d = dir();
        let path = d.path().join("audit.journal");
        let first = chain(1, GENESIS, 2);
        let unrelated = chain(3, GENESIS, 2);
        {
            let (mut j, _) = AuditJournal::open(&path).unwrap();
            j.append(&first).unwrap();
            j.append(&unrelated).unwrap();
        }
        assert!(matches!(
            AuditJournal::open(&path),
            Err(JournalError::Corrupt { .. })
        ));
        // An event whose fields were changed after sealing.
        let mut altered = chain(1, GENESIS, 1);
        altered[0].actor = "someone-else".into();
        std::fs::remove_file(&path).unwrap();
        {
            let (mut j, _) = AuditJournal::open(&path).unwrap();
            j.append(&altered).unwrap();
        }
        assert!(matches!(
            AuditJournal::open(&path),
            Err(JournalError::Corrupt { .. })
        ));
    }

    #[test]
    fn clear_empties_the_file_and_appending_starts_over() {
        let d = dir();
        let path = d.path().join("audit.journal");
        let events = chain(1, GENESIS, 3);
        let (mut j, _) = AuditJournal::open(&path).unwrap();
        j.append(&events[..1]).unwrap();
        j.clear().unwrap();
        assert!(j.is_empty());
        j.append(&events[1..]).unwrap();
        drop(j);
        let (_, found) = AuditJournal::open(&path).unwrap();
        assert_eq!(found, events[1..]);
    }

    #[cfg(unix)]
    #[test]
    fn the_journal_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir();
        let path = d.path().join("audit.journal");
        let _ = AuditJournal::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
