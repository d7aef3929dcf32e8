//! The audit journal: a file that makes a single node's audit events durable with one
//! `fdatasync`, so a request waits for that rather than for a database commit.
//!
//! A SQLite commit with `synchronous = FULL` costs several round trips to SQLite's connection
//! thread, B-tree page writes and a WAL fsync, and the audit chain allows only one at a time:
//! that serialized commit capped audited requests. The journal takes the durable step instead
//! and the events reach the database shortly after, in large batches (see `AuditWriter`).
//! The journal only holds what the database may not have yet; it is emptied once it has.
//!
//! Format (version 2):
//! - A header alone in the first 4 KiB block: `"SOVRAJ02" | generation: u64 BE |
//!   SHA-256(magic ‖ generation)`.
//! - Frames from byte 4096 on, each `len: u32 BE | SHA-256(generation ‖ payload) |
//!   generation: u64 BE | payload`, the payload a JSON array of sealed events that continue the
//!   chain.
//!
//! The file is written full of zeros when it is created, and frames overwrite those blocks in
//! place: the file's size never changes, so an `fdatasync` writes the frame and nothing else
//! (appending to a growing file costs a second write, for the new size). Emptying the journal
//! writes a header with the next generation, which turns every frame already in the file into
//! a stale one; recovery reads only frames of the header's generation.
//!
//! A frame is written whole and synced before its events' requests are answered, so only the
//! last frame of the generation can be torn (the process or machine died before the sync
//! returned; none of its requests was answered). Recovery drops such a frame; a bad frame with
//! an intact frame of the same generation after it is corruption and stops startup.
//!
//! A journal written before version 2 (frames `len | SHA-256(payload) | payload` from byte 0,
//! no header) is still read; emptying it rewrites it in the current format.

use super::{AuditEvent, Checkpoint};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"SOVRAJ02";
const HEADER_LEN: usize = 8 + 8 + 32;
/// Frames start after the header's block, so rewriting the header never touches a frame.
const FIRST_FRAME: u64 = 4096;
const FRAME_HEADER: usize = 4 + 32 + 8;
/// Frame header of a journal written before version 2: no generation.
const V1_FRAME_HEADER: usize = 4 + 32;
/// Bytes of zeros a new journal is given: twice the size at which the writer empties it, so
/// appends stay inside blocks already allocated while the database catches up.
pub const PREALLOCATED_BYTES: u64 = 8 << 20;
/// Largest payload a frame may have (the writer's frames stay under 1 MiB). A header declaring
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

/// Which frames a journal holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Version 2: frames of this generation count, all others are stale.
    Generation(u64),
    /// Before version 2: every frame from byte 0 counts.
    V1,
}

/// An open journal, locked for this process.
#[derive(Debug)]
pub struct AuditJournal {
    path: PathBuf,
    file: File,
    layout: Layout,
    /// Where the next frame goes.
    end: u64,
    /// Bytes the file was given when it was created (see [`PREALLOCATED_BYTES`]).
    preallocated: u64,
    /// False after a header write or sync failed: the disk may name either generation, so no
    /// frame is written until a header naming `layout`'s generation is synced.
    header_synced: bool,
}

impl AuditJournal {
    /// Opens (or creates, mode 0600) the journal, locks it exclusively, and returns it with the
    /// events it holds, in chain order. A torn last frame is dropped.
    pub fn open(path: &Path) -> Result<(AuditJournal, JournalContents), JournalError> {
        Self::open_preallocated(path, PREALLOCATED_BYTES)
    }

    /// [`open`](Self::open), giving a new journal `preallocated` bytes.
    pub fn open_preallocated(
        path: &Path,
        preallocated: u64,
    ) -> Result<(AuditJournal, JournalContents), JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true);
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
        let preallocated = preallocated.max(FIRST_FRAME);
        let mut journal = AuditJournal {
            path: path.to_path_buf(),
            file,
            layout: Layout::Generation(1),
            end: FIRST_FRAME,
            preallocated,
            header_synced: true,
        };
        // Empty, or only zeros: new, or a crash while it was created before its header landed.
        if data.iter().all(|&b| b == 0) {
            journal.file.set_len(0).map_err(io)?;
            journal.format(1).map_err(io)?;
            return Ok((journal, JournalContents::default()));
        }
        let (layout, events, end) = read_journal(path, &data)?;
        journal.layout = layout;
        journal.end = end as u64;
        // The header may never have reached the disk (a process killed after its sync failed):
        // it is synced again before the first frame.
        journal.header_synced = false;
        let torn = torn_frame(&data, end, layout);
        if !torn.is_empty() {
            // Kept beside the journal: a torn frame is expected after a crash, but a damaged
            // last frame looks the same, and its bytes are the only evidence.
            let mut kept = path.as_os_str().to_owned();
            let tag = sovra_crypto::rng::random_vec(4).unwrap_or_default();
            kept.push(format!(
                ".dropped-{}-{}",
                // A file name, not an event time: the system clock is the one that matters.
                crate::clock::Clock::now(&crate::clock::SystemClock).as_millis(),
                ::hex::encode(tag)
            ));
            let kept = PathBuf::from(kept);
            write_synced(&kept, torn).map_err(io)?;
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = torn.len(),
                kept_in = %kept.display(),
                "audit journal ends in a torn frame (a crash during a write whose requests were never answered); dropping it"
            );
        }
        match layout {
            // The next frame overwrites the torn one; a file whose zeros were never all written
            // (a crash while it was created) gets the rest now.
            Layout::Generation(_) => journal.preallocate(data.len() as u64).map_err(io)?,
            // The old format appends, so a torn tail is cut off as it always was.
            Layout::V1 if end < data.len() => {
                journal.file.set_len(end as u64).map_err(io)?;
                journal.file.sync_all().map_err(io)?;
            }
            Layout::V1 => {}
        }
        Ok((journal, events))
    }

    /// Appends one frame of `events` and waits until it is on disk.
    pub fn append(&mut self, events: &[AuditEvent]) -> std::io::Result<()> {
        let mut frame = new_frame();
        serde_json::to_writer(&mut frame, events).map_err(std::io::Error::other)?;
        self.append_frame(&mut frame)
    }

    /// Appends a frame built in place and waits until it is on disk: `frame` is a buffer from
    /// [`new_frame`] with the payload (a JSON array of sealed events continuing the chain)
    /// written behind the header's room; the header is filled in here. The writer's requests
    /// serialize their events straight into such a buffer, so a batch is never copied.
    pub fn append_frame(&mut self, frame: &mut [u8]) -> std::io::Result<()> {
        let Layout::Generation(generation) = self.layout else {
            return Err(std::io::Error::other(
                "an audit journal in the old format is emptied (once its events are stored) before it is appended to",
            ));
        };
        if !self.header_synced {
            self.sync_header(generation)?;
        }
        let Some(payload_len) = frame.len().checked_sub(FRAME_HEADER) else {
            return Err(std::io::Error::other(
                "an audit journal frame must leave room for its header",
            ));
        };
        if payload_len > MAX_PAYLOAD {
            return Err(std::io::Error::other(
                "audit batch too large for one journal frame",
            ));
        }
        let len = u32::try_from(payload_len).map_err(std::io::Error::other)?;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        frame[36..44].copy_from_slice(&generation.to_be_bytes());
        let digest = sovra_crypto::sha256(&frame[36..]);
        frame[4..36].copy_from_slice(&digest);
        // In place: a failed write or sync leaves `end` where it was, and the next frame
        // overwrites whatever part of this one landed.
        self.write_at(self.end, frame)?;
        self.file.sync_data()?;
        self.end += frame.len() as u64;
        Ok(())
    }

    /// Bytes of frames in the journal.
    pub fn len(&self) -> u64 {
        match self.layout {
            Layout::Generation(_) => self.end - FIRST_FRAME,
            Layout::V1 => self.end,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where the next frame will be written.
    pub fn next_frame_offset(&self) -> u64 {
        self.end
    }

    /// Empties the journal, once every event in it is stored durably elsewhere: the header
    /// names the next generation, so every frame in the file is stale from then on.
    pub fn clear(&mut self) -> std::io::Result<()> {
        let next = match self.layout {
            Layout::Generation(generation) => generation + 1,
            Layout::V1 => {
                self.file.set_len(0)?;
                self.file.sync_all()?;
                1
            }
        };
        // From here the journal is empty whatever happens: every frame in it is stored. If the
        // header cannot be synced now, the next append syncs it before writing a frame.
        self.layout = Layout::Generation(next);
        self.end = FIRST_FRAME;
        self.header_synced = false;
        self.sync_header(next)?;
        let len = self.file.metadata()?.len();
        if len > self.preallocated {
            // It grew while the store lagged; what lies past the preallocation is stale now.
            self.file.set_len(self.preallocated)?;
            self.file.sync_all()?;
        }
        // An old-format journal was emptied to its header: it gets its zeros now.
        self.preallocate(len.max(HEADER_LEN as u64))
    }

    /// Writes the header naming `generation` and waits until it is on disk.
    fn sync_header(&mut self, generation: u64) -> std::io::Result<()> {
        self.write_at(0, &header(generation))?;
        self.file.sync_data()?;
        self.header_synced = true;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a new journal into an empty file: the header, then zeros up to the
    /// preallocated size.
    fn format(&mut self, generation: u64) -> std::io::Result<()> {
        self.layout = Layout::Generation(generation);
        self.end = FIRST_FRAME;
        self.header_synced = false;
        self.write_at(0, &header(generation))?;
        self.preallocate(HEADER_LEN as u64)?;
        self.header_synced = true;
        Ok(())
    }

    /// Writes zeros from `from` up to the preallocated size, and syncs the file.
    fn preallocate(&mut self, from: u64) -> std::io::Result<()> {
        if from < self.preallocated {
            let zeros = vec![0u8; 1 << 20];
            let mut at = from;
            while at < self.preallocated {
                let n = (self.preallocated - at).min(zeros.len() as u64) as usize;
                self.write_at(at, &zeros[..n])?;
                at += n as u64;
            }
            self.file.sync_all()?;
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        self.file.seek(SeekFrom::Start(offset))?;
        self.file.write_all(bytes)
    }
}

/// Parses a journal file's bytes as [`AuditJournal::open`] reads them, without touching any
/// file: the events of the intact frames, in chain order, and the offset where those frames
/// end (a torn last frame, stale frames or zeros may follow). Bytes that are all zeros are a
/// new, empty journal. `path` only names the file in errors. The fuzz target `audit_journal`
/// calls this.
pub fn parse_journal(path: &Path, data: &[u8]) -> Result<(JournalContents, usize), JournalError> {
    if data.iter().all(|&b| b == 0) {
        return Ok((JournalContents::default(), FIRST_FRAME as usize));
    }
    let (_, events, end) = read_journal(path, data)?;
    Ok((events, end))
}

/// The layout of a journal that is not all zeros, the events of its intact frames and where
/// they end.
fn read_journal(
    path: &Path,
    data: &[u8],
) -> Result<(Layout, JournalContents, usize), JournalError> {
    let (layout, start) = if data.starts_with(MAGIC) {
        (Layout::Generation(read_header(path, data)?), FIRST_FRAME)
    } else if data.first() == Some(&0) {
        // An old-format frame begins with its length, whose top byte is zero.
        (Layout::V1, 0)
    } else {
        // Neither: a damaged header. Guessing the old format here would drop every frame.
        return Err(JournalError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason: "the header is damaged".into(),
        });
    };
    let (events, end) = parse(path, data, layout, start as usize)?;
    Ok((layout, events, end))
}

/// An empty frame for [`AuditJournal::append_frame`]: room for the frame header, the payload to
/// be written behind it.
pub(crate) fn new_frame() -> Vec<u8> {
    let mut frame = Vec::with_capacity(16 << 10);
    frame.resize(FRAME_HEADER, 0);
    frame
}

/// Where a frame's payload starts in a buffer from [`new_frame`].
pub(crate) const FRAME_PAYLOAD_START: usize = FRAME_HEADER;

fn header(generation: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&generation.to_be_bytes());
    let digest = sovra_crypto::sha256(&h);
    h.extend_from_slice(&digest);
    h
}

/// The generation a version 2 header names.
fn read_header(path: &Path, data: &[u8]) -> Result<u64, JournalError> {
    let generation = data
        .get(8..16)
        .and_then(|g| g.try_into().ok())
        .map(u64::from_be_bytes);
    match generation {
        Some(g) if data.get(..HEADER_LEN) == Some(header(g).as_slice()) => Ok(g),
        _ => Err(JournalError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason: "the header fails its checksum".into(),
        }),
    }
}

/// Reads frames from `start`; returns the events and where the valid frames end.
fn parse(
    path: &Path,
    data: &[u8],
    layout: Layout,
    start: usize,
) -> Result<(JournalContents, usize), JournalError> {
    let corrupt = |offset: usize, reason: &str| JournalError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason: reason.to_string(),
    };
    let mut read = JournalContents::default();
    let mut offset = start;
    while offset < data.len() {
        let Some((items, frame_len)) = read_frame(&data[offset..], layout) else {
            // Only the last frame written can be torn, since a frame is written only after the
            // previous one was synced: a bad frame with an intact one of its generation
            // anywhere after it means synced bytes changed.
            let mut hashed = 0usize;
            for p in offset + 1..data.len() {
                if hashed > MAX_SCAN_HASHED {
                    return Err(corrupt(offset, "a frame fails its checksum"));
                }
                hashed += declared_payload(&data[p..], layout).unwrap_or(0);
                if read_frame(&data[p..], layout).is_some() {
                    return Err(corrupt(offset, "a frame fails its checksum"));
                }
            }
            return Ok((read, offset));
        };
        for item in items {
            let ev = match item {
                FrameItem::Event(ev) => ev,
                FrameItem::SignedHead(cp) => {
                    // It signs the head the events before it leave.
                    if read
                        .events
                        .last()
                        .is_none_or(|last| last.seq != cp.seq || last.hash != cp.head)
                    {
                        return Err(corrupt(
                            offset,
                            "a signed head does not match the events before it",
                        ));
                    }
                    read.checkpoints.push(cp);
                    continue;
                }
            };
            if let Some(prev) = read.events.last()
                && (ev.seq != prev.seq.wrapping_add(1) || ev.prev_hash != prev.hash)
            {
                return Err(corrupt(offset, "events do not continue the chain"));
            }
            if ev.hash != ev.compute_hash() {
                return Err(corrupt(offset, "an event's hash does not match its fields"));
            }
            read.events.push(*ev);
        }
        offset += frame_len;
    }
    Ok((read, offset))
}

/// What a journal's intact frames hold: the events in chain order, and the signed heads the
/// frames carry (each over the head its frame's events leave).
#[derive(Debug, Default)]
pub struct JournalContents {
    pub events: Vec<AuditEvent>,
    pub checkpoints: Vec<Checkpoint>,
}

/// One item of a frame's payload: an event, or (last) the signature over the head the frame's
/// events leave. A checkpoint has none of an event's fields, so they cannot be confused.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum FrameItem {
    Event(Box<AuditEvent>),
    SignedHead(Checkpoint),
}

/// The bytes of a torn frame at `end`, where the valid frames stop: for version 2, a frame
/// header of the current generation whose frame is not intact (zeros and stale frames are not
/// torn frames); before version 2, everything after `end`.
fn torn_frame(data: &[u8], end: usize, layout: Layout) -> &[u8] {
    let rest = data.get(end..).unwrap_or_default();
    match layout {
        Layout::V1 => rest,
        Layout::Generation(g) => {
            let names_generation = rest.get(36..FRAME_HEADER) == Some(g.to_be_bytes().as_slice());
            if !names_generation {
                return &[];
            }
            let declared = rest
                .get(..4)
                .and_then(|l| l.try_into().ok())
                .map_or(0, |l| u32::from_be_bytes(l) as usize)
                .min(MAX_PAYLOAD);
            &rest[..(FRAME_HEADER + declared).min(rest.len())]
        }
    }
}

/// The payload length a frame header at the start of `data` declares, if plausible: within
/// [`MAX_PAYLOAD`] and the bytes present, and (for version 2) of the right generation.
fn declared_payload(data: &[u8], layout: Layout) -> Option<usize> {
    let header = match layout {
        Layout::Generation(g) => {
            if data.get(36..FRAME_HEADER)? != g.to_be_bytes().as_slice() {
                return None;
            }
            FRAME_HEADER
        }
        Layout::V1 => V1_FRAME_HEADER,
    };
    let len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    (len <= MAX_PAYLOAD && header + len <= data.len()).then_some(len)
}

/// One whole, intact frame at the start of `data`: its events and its length.
fn read_frame(data: &[u8], layout: Layout) -> Option<(Vec<FrameItem>, usize)> {
    let len = declared_payload(data, layout)?;
    // What the checksum covers: the payload, after the generation in version 2.
    let (covered, payload) = match layout {
        Layout::Generation(_) => (
            data.get(36..FRAME_HEADER + len)?,
            data.get(FRAME_HEADER..FRAME_HEADER + len)?,
        ),
        Layout::V1 => {
            let p = data.get(V1_FRAME_HEADER..V1_FRAME_HEADER + len)?;
            (p, p)
        }
    };
    if sovra_crypto::sha256(covered).as_slice() != data.get(4..36)? {
        return None;
    }
    let events: Vec<FrameItem> = serde_json::from_slice(payload).ok()?;
    let header = match layout {
        Layout::Generation(_) => FRAME_HEADER,
        Layout::V1 => V1_FRAME_HEADER,
    };
    Some((events, header + len))
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    #[cfg(unix)]
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{GENESIS, seal_chain};
    use crate::test_support::audit_event;

    /// `n` events sealed at `from`, `from + 1`, … after `prev`.
    fn chain(from: u64, prev: &str, n: u64) -> Vec<AuditEvent> {
        seal_chain((from..from + n).map(audit_event).collect(), from - 1, prev)
    }

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    /// A small preallocation keeps the tests' files small.
    const TEST_BYTES: u64 = 64 << 10;

    fn open(path: &Path) -> Result<(AuditJournal, Vec<AuditEvent>), JournalError> {
        AuditJournal::open_preallocated(path, TEST_BYTES).map(|(j, read)| (j, read.events))
    }

    fn kept_evidence(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".dropped-"))
            .collect()
    }

    #[test]
    fn appended_frames_come_back_in_order_after_reopening() {
        let d = dir();
        let path = d.path().join("audit.journal");
        let events = chain(1, GENESIS, 5);
        let end = {
            let (mut j, found) = open(&path).unwrap();
            assert!(found.is_empty());
            j.append(&events[..2]).unwrap();
            j.append(&events[2..]).unwrap();
            j.next_frame_offset()
        };
        let (j, found) = open(&path).unwrap();
        assert_eq!(found, events);
        assert_eq!(j.next_frame_offset(), end);
        assert_eq!(j.len(), end - FIRST_FRAME);
    }

    #[test]
    fn frames_overwrite_the_preallocated_zeros_and_the_size_never_changes() {
        let d = dir();
        let path = d.path().join("audit.journal");
        let (mut j, _) = open(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), TEST_BYTES);
        let events = chain(1, GENESIS, 20);
        for e in events.chunks(3) {
            j.append(e).unwrap();
        }
        j.clear().unwrap();
        j.append(&chain(21, &events[19].hash, 2)).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), TEST_BYTES);
        // A crash while the zeros were written leaves a short file: it gets the rest.
        drop(j);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..5000]).unwrap();
        let (_, found) = open(&path).unwrap();
        assert_eq!(found, chain(21, &events[19].hash, 2));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), TEST_BYTES);
        let (_, found) = open(&path).unwrap();
        assert_eq!(found, chain(21, &events[19].hash, 2), "after the repair");
    }

    #[test]
    fn a_journal_grown_past_its_preallocation_shrinks_back_when_emptied() {
        let d = dir();
        let path = d.path().join("audit.journal");
        let (mut j, _) = open(&path).unwrap();
        let events = chain(1, GENESIS, 400);
        for e in events.chunks(10) {
            j.append(e).unwrap();
        }
        assert!(std::fs::metadata(&path).unwrap().len() > TEST_BYTES);
        let generation =
            |p: &Path| u64::from_be_bytes(std::fs::read(p).unwrap()[8..16].try_into().unwrap());
        let before = generation(&path);
        j.clear().unwrap();
        assert_eq!(generation(&path), before + 1);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), TEST_BYTES);
        let more = chain(401, &events[399].hash, 3);
        j.append(&more).unwrap();
        drop(j);
        let (_, found) = open(&path).unwrap();
        assert_eq!(found, more);
    }

    #[test]
    fn a_file_of_zeros_is_a_new_journal() {
        let d = dir();
        let path = d.path().join("audit.journal");
        // What a crash while the journal was created can leave: its zeros, not its header.
        std::fs::write(&path, vec![0u8; 10_000]).unwrap();
        let (mut j, found) = open(&path).unwrap();
        assert!(found.is_empty());
        let events = chain(1, GENESIS, 2);
        j.append(&events).unwrap();
        drop(j);
        assert_eq!(open(&path).unwrap().1, events);
    }

    #[test]
    fn a_second_opener_is_refused_while_the_first_holds_the_lock() {
        let d = dir();
        let path = d.path().join("audit.journal");
        let (_held, _) = open(&path).unwrap();
        assert!(matches!(open(&path), Err(JournalError::Locked(_))));
    }

    #[test]
    fn a_torn_last_frame_is_dropped_and_the_earlier_ones_kept() {
        let d = dir();
        let path = d.path().join("audit.journal");
        let events = chain(1, GENESIS, 4);
        // Stale frames of an older generation lie where the torn frame's bytes did not land.
        let (first_end, second_end, stale) = {
            let (mut j, _) = open(&path).unwrap();
            for e in chain(1, GENESIS, 12).chunks(1) {
                j.append(e).unwrap();
            }
            let stale = std::fs::read(&path).unwrap();
            j.clear().unwrap();
            j.append(&events[..2]).unwrap();
            let first_end = j.next_frame_offset();
            j.append(&events[2..]).unwrap();
            (first_end as usize, j.next_frame_offset() as usize, stale)
        };
        let full = std::fs::read(&path).unwrap();
        let mut zeroed = full.clone();
        zeroed[first_end..second_end].fill(0);
        // Every cut inside the second frame; where its bytes never landed lie zeros, or a
        // previous generation's frames.
        for cut in first_end..second_end {
            for (what, before) in [("zeros", &zeroed), ("stale frames", &stale)] {
                let mut torn = full.clone();
                torn[cut..second_end].copy_from_slice(&before[cut..second_end]);
                std::fs::write(&path, &torn).unwrap();
                let (j, found) = open(&path).unwrap();
                assert_eq!(found, events[..2], "cut at {cut}, then {what}");
                assert_eq!(j.next_frame_offset() as usize, first_end);
                drop(j);
                // The torn frame's bytes are kept beside the journal, as evidence, once its
                // header (with the generation) landed.
                let kept = kept_evidence(d.path());
                if cut >= first_end + FRAME_HEADER {
                    assert_eq!(kept.len(), 1, "cut at {cut}, then {what}");
                    assert_eq!(
                        std::fs::read(&kept[0]).unwrap(),
                        &torn[first_end..second_end]
                    );
                } else {
                    assert!(kept.is_empty(), "cut at {cut}, then {what}");
                }
                for k in kept {
                    std::fs::remove_file(k).unwrap();
                }
            }
        }
        // The next frame overwrites the torn one.
        let (mut j, _) = open(&path).unwrap();
        let more = chain(3, &events[1].hash, 1);
        j.append(&more).unwrap();
        drop(j);
        let (_, found) = open(&path).unwrap();
        assert_eq!(found, [&events[..2], &more[..]].concat());
    }

    #[test]
    fn a_damaged_frame_followed_by_others_is_corruption_not_a_torn_tail() {
        let d = dir();
        let path = d.path().join("audit.journal");
        let events = chain(1, GENESIS, 6);
        {
            let (mut j, _) = open(&path).unwrap();
            for pair in events.chunks(2) {
                j.append(pair).unwrap();
            }
        }
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[FIRST_FRAME as usize + FRAME_HEADER + 10] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = open(&path).unwrap_err();
        assert!(
            matches!(
                err,
                JournalError::Corrupt {
                    offset: FIRST_FRAME,
                    ..
                }
            ),
            "{err}"
        );
        // Nothing was cut: the evidence stays for the operator.
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn a_damaged_header_is_corruption() {
        let d = dir();
        let path = d.path().join("audit.journal");
        {
            let (mut j, _) = open(&path).unwrap();
            j.append(&chain(1, GENESIS, 2)).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        // Another generation without the checksum to match would hide every frame; a damaged
        // magic must not pass for the old format, which would drop them too.
        for at in [15, 0] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 2;
            std::fs::write(&path, &damaged).unwrap();
            assert!(
                matches!(open(&path), Err(JournalError::Corrupt { offset: 0, .. })),
                "byte {at}"
            );
            assert_eq!(std::fs::read(&path).unwrap(), damaged);
        }
    }

    #[test]
    fn a_journal_in_the_old_format_is_read_and_rewritten_when_emptied() {
        let d = dir();
        let path = d.path().join("audit.journal");
        let events = chain(1, GENESIS, 5);
        let mut old = Vec::new();
        for e in [&events[..2], &events[2..]] {
            let payload = serde_json::to_vec(e).unwrap();
            old.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            old.extend_from_slice(&sovra_crypto::sha256(&payload));
            old.extend_from_slice(&payload);
        }
        // A torn frame at its end is cut off, as the old format always did.
        let torn_at = old.len();
        old.extend_from_slice(&[0, 0, 1, 0, 7, 7, 7]);
        std::fs::write(&path, &old).unwrap();
        let (mut j, found) = open(&path).unwrap();
        assert_eq!(found, events);
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, torn_at);
        assert_eq!(kept_evidence(d.path()).len(), 1);
        // Not appended to in the old format; emptying it writes the new one.
        assert!(j.append(&chain(6, &events[4].hash, 1)).is_err());
        j.clear().unwrap();
        let more = chain(6, &events[4].hash, 2);
        j.append(&more).unwrap();
        drop(j);
        assert!(std::fs::read(&path).unwrap().starts_with(MAGIC));
        let (_, found) = open(&path).unwrap();
        assert_eq!(found, more);
    }

    #[test]
    fn frames_that_do_not_continue_the_chain_are_corruption() {
        let d = dir();
        let path = d.path().join("audit.journal");
        let first = chain(1, GENESIS, 2);
        let unrelated = chain(3, GENESIS, 2);
        {
            let (mut j, _) = open(&path).unwrap();
            j.append(&first).unwrap();
            j.append(&unrelated).unwrap();
        }
        assert!(matches!(open(&path), Err(JournalError::Corrupt { .. })));
        // An event whose fields were changed after sealing.
        let mut altered = chain(1, GENESIS, 1);
        altered[0].actor = "someone-else".into();
        std::fs::remove_file(&path).unwrap();
        {
            let (mut j, _) = open(&path).unwrap();
            j.append(&altered).unwrap();
        }
        assert!(matches!(open(&path), Err(JournalError::Corrupt { .. })));
    }

    #[test]
    fn clear_makes_every_frame_stale_and_appending_starts_over() {
        let d = dir();
        let path = d.path().join("audit.journal");
        let events = chain(1, GENESIS, 6);
        let (mut j, _) = open(&path).unwrap();
        for e in events[..4].chunks(1) {
            j.append(e).unwrap();
        }
        j.clear().unwrap();
        assert!(j.is_empty());
        drop(j);
        let (mut j, found) = open(&path).unwrap();
        assert!(
            found.is_empty(),
            "the previous generation's frames are stale"
        );
        // A frame of the new generation overwrites the first stale one; the stale frames
        // after it are neither events nor corruption.
        j.append(&events[4..]).unwrap();
        drop(j);
        let (_, found) = open(&path).unwrap();
        assert_eq!(found, events[4..]);
    }

    #[cfg(unix)]
    #[test]
    fn the_journal_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir();
        let path = d.path().join("audit.journal");
        let _ = open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
