//! The JSON lines file sink: appends one export line per event, fsyncs each batch and rotates
//! at `max_bytes`. The only sink that writes local files, hence its own module next to the
//! cursor's private-file helpers it uses.

use super::config::FileSinkConfig;
use super::cursor::sync_dir;
use super::{DeliveryError, export_line};
use crate::private_files;
use sovra_core::audit::ExportLine;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A file sink; writes run on the blocking pool, hence the state behind a mutex.
pub(super) struct FileSink(Arc<Mutex<FileState>>);

impl FileSink {
    /// Opens the file now, so a bad path or a too-open file stops startup instead of retrying.
    pub(super) fn open(c: &FileSinkConfig) -> Result<FileSink, DeliveryError> {
        let mut state = FileState {
            path: c.path.clone(),
            max_bytes: c.max_bytes,
            max_files: c.max_files,
            file: None,
            size: 0,
        };
        state.open()?;
        Ok(FileSink(Arc::new(Mutex::new(state))))
    }

    pub(super) async fn deliver(&self, lines: &[ExportLine]) -> Result<(), DeliveryError> {
        let lines = lines.iter().map(export_line).collect::<Vec<_>>();
        let state = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            s.write(&lines)
        })
        .await
        .map_err(|e| DeliveryError::File {
            path: "audit file".into(),
            source: std::io::Error::other(e.to_string()),
        })?
    }
}

struct FileState {
    path: PathBuf,
    max_bytes: u64,
    max_files: u32,
    file: Option<std::fs::File>,
    size: u64,
}

impl FileState {
    fn err(&self, source: std::io::Error) -> DeliveryError {
        DeliveryError::File {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn open(&mut self) -> Result<(), DeliveryError> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            private_files::create_dir(dir).map_err(|e| self.err(e))?;
        }
        let file = private_files::options()
            .append(true)
            .open(&self.path)
            .map_err(|e| self.err(e))?;
        let meta = file.metadata().map_err(|e| self.err(e))?;
        // A pre-existing file others can read is refused, not silently fixed: someone may
        // already have read it, and the operator should know.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(DeliveryError::FileMode {
                    path: self.path.display().to_string(),
                    mode,
                });
            }
        }
        self.size = meta.len();
        self.file = Some(file);
        Ok(())
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> Result<(), DeliveryError> {
        self.file = None;
        let ignore_missing = |r: std::io::Result<()>| match r {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        ignore_missing(std::fs::remove_file(self.rotated(self.max_files)))
            .map_err(|e| self.err(e))?;
        for i in (1..self.max_files).rev() {
            ignore_missing(std::fs::rename(self.rotated(i), self.rotated(i + 1)))
                .map_err(|e| self.err(e))?;
        }
        std::fs::rename(&self.path, self.rotated(1)).map_err(|e| self.err(e))?;
        if let Some(dir) = self.path.parent() {
            sync_dir(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            });
        }
        self.open()
    }

    /// Appends and fsyncs `buf`; on failure cuts the file back so a retry does not leave a torn
    /// line behind.
    fn append(&mut self, buf: &[u8]) -> Result<(), DeliveryError> {
        if buf.is_empty() {
            return Ok(());
        }
        let Some(f) = self.file.as_mut() else {
            return Err(self.err(std::io::Error::other("not open")));
        };
        let res = f.write_all(buf).and_then(|_| f.sync_data());
        match res {
            Ok(()) => {
                self.size += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = f.set_len(self.size);
                self.file = None;
                Err(self.err(e))
            }
        }
    }

    fn write(&mut self, lines: &[String]) -> Result<(), DeliveryError> {
        if self.file.is_none() {
            self.open()?;
        }
        let mut buf = Vec::new();
        for line in lines {
            let len = (line.len() + 1) as u64;
            let pending = self.size + buf.len() as u64;
            if pending > 0 && pending + len > self.max_bytes {
                self.append(&buf)?;
                buf.clear();
                self.rotate()?;
            }
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
        }
        self.append(&buf)
    }
}
