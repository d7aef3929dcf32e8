//! A sink's cursor file (the highest sequence it delivered) and the private-file helpers it
//! shares with the file sink. Kept apart because it is the forwarder's only durable state: how it
//! is written decides what a crash re-sends.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The cursor file of a sink.
pub fn cursor_path(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("audit-sinks").join(format!("{name}.cursor"))
}

pub(super) fn read_cursor(path: &Path) -> Result<u64, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map_err(|_| {
            "does not hold a sequence number (delete it to re-send the whole chain)".to_string()
        }),
        // A new sink starts at the beginning of the chain.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e.to_string()),
    }
}

/// Temp file, fsync, rename, fsync the directory: a crash leaves the old or the new cursor.
pub(super) fn write_cursor(path: &Path, seq: u64) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    crate::private_files::create_dir(dir)?;
    let tmp = path.with_extension("cursor.tmp");
    let mut f = crate::private_files::options().truncate(true).open(&tmp)?;
    f.write_all(format!("{seq}\n").as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_dir(dir);
    Ok(())
}

pub(super) fn sync_dir(dir: &Path) {
    // Makes a rename durable; not possible on every platform, hence best effort.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
