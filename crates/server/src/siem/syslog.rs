//! The syslog sink: RFC 5424 messages over TCP with octet-counting framing (RFC 6587),
//! optionally TLS. Separate because it owns a connection and resends what a closed connection
//! may have lost, which the other sinks do not need.

use super::config::{SyslogSinkConfig, split_address};
use super::{DeliveryError, IO_TIMEOUT, export_line};
use sovra_core::audit::ExportLine;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

trait Conn: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Conn for T {}

pub(super) struct SyslogSink {
    addr: String,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    conn: Option<Box<dyn Conn>>,
    hostname: String,
    procid: String,
    /// The frames of the last batch written: TCP syslog has no acknowledgements, so when the
    /// connection turns out closed they are sent again on the next one.
    last_batch: Vec<u8>,
    /// Frames to send before the next batch.
    resend: Vec<u8>,
}

fn syslog_tls(ca_file: Option<&Path>) -> Result<tokio_rustls::TlsConnector, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match ca_file {
        Some(path) => {
            use rustls_pki_types::CertificateDer;
            use rustls_pki_types::pem::PemObject;
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("ca_file {} holds no certificate", path.display()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => {
            use rustls_platform_verifier::BuilderVerifierExt;
            builder
                .with_platform_verifier()
                .map_err(|e| format!("system trust store: {e}"))?
                .with_no_client_auth()
        }
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// The system's host name as RFC 5424 allows it (printable ASCII, no spaces), or `-`.
fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    if clean.is_empty() { "-".into() } else { clean }
}

/// RFC 3339 UTC with milliseconds, as RFC 5424's TIMESTAMP.
fn rfc5424_time(time_ms: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(time_ms as i128 * 1_000_000) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        Err(_) => "-".into(),
    }
}

/// JSON with every non-ASCII character escaped: RFC 5424 requires a BOM before a UTF-8 MSG,
/// which many collectors mishandle; pure ASCII needs none and is the same JSON value.
fn ascii_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

/// `<110>`: facility log audit (13) × 8 + severity informational (6).
const SYSLOG_PRI: u32 = 13 * 8 + 6;

impl SyslogSink {
    pub(super) fn new(c: &SyslogSinkConfig) -> Result<SyslogSink, String> {
        let (host, _) = split_address(&c.address)?;
        let tls = if c.tls {
            let server_name = rustls_pki_types::ServerName::try_from(host)
                .map_err(|e| format!("address host: {e}"))?;
            Some((syslog_tls(c.ca_file.as_deref())?, server_name))
        } else {
            None
        };
        Ok(SyslogSink {
            addr: c.address.clone(),
            tls,
            conn: None,
            hostname: hostname(),
            procid: std::process::id().to_string(),
            last_batch: Vec::new(),
            resend: Vec::new(),
        })
    }

    fn frame(&self, line: &ExportLine, out: &mut Vec<u8>) {
        let time_ms = match line {
            ExportLine::Event(e) => e.time_ms,
            ExportLine::Checkpoint(cp) => cp.time_ms,
            ExportLine::Redacted(_) => 0,
        };
        let msg = format!(
            "<{SYSLOG_PRI}>1 {} {} sovra {} audit - {}",
            rfc5424_time(time_ms),
            self.hostname,
            self.procid,
            ascii_json(&export_line(line))
        );
        // RFC 6587 octet counting: "<length> <message>".
        out.extend_from_slice(format!("{} ", msg.len()).as_bytes());
        out.extend_from_slice(msg.as_bytes());
    }

    async fn connect(&self) -> Result<Box<dyn Conn>, DeliveryError> {
        let addr = self.addr.clone();
        let tcp = tokio::time::timeout(IO_TIMEOUT, tokio::net::TcpStream::connect(&self.addr))
            .await
            .map_err(|_| DeliveryError::Timeout {
                addr: addr.clone(),
                stage: "connect",
            })?
            .map_err(|source| DeliveryError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some((connector, server_name)) => {
                let tls =
                    tokio::time::timeout(IO_TIMEOUT, connector.connect(server_name.clone(), tcp))
                        .await
                        .map_err(|_| DeliveryError::Timeout {
                            addr: addr.clone(),
                            stage: "TLS handshake",
                        })?
                        .map_err(|source| DeliveryError::Tls { addr, source })?;
                Ok(Box::new(tls))
            }
        }
    }

    pub(super) async fn deliver(&mut self, lines: &[ExportLine]) -> Result<(), DeliveryError> {
        let mut batch = Vec::new();
        for line in lines {
            self.frame(line, &mut batch);
        }
        if let Some(conn) = self.conn.as_mut()
            && !still_open(conn.as_mut()).await
        {
            // The receiver went away since the last batch; it may not have read all of it.
            self.conn = None;
            self.resend = std::mem::take(&mut self.last_batch);
        }
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.connect().await?,
        };
        let mut payload = self.resend.clone();
        payload.extend_from_slice(&batch);
        let addr = self.addr.clone();
        let conn = self.conn.insert(conn);
        let sent = tokio::time::timeout(IO_TIMEOUT, async {
            conn.write_all(&payload).await?;
            conn.flush().await
        })
        .await;
        let result = match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(DeliveryError::Send { addr, source }),
            Err(_) => Err(DeliveryError::Timeout {
                addr,
                stage: "write",
            }),
        };
        match result {
            Ok(()) => {
                self.resend.clear();
                self.last_batch = batch;
                Ok(())
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}

/// Whether the receiver has not closed the connection: a read that would block means open; end
/// of stream or an error means closed. Anything the receiver sent is discarded.
async fn still_open(conn: &mut dyn Conn) -> bool {
    let mut buf = [0u8; 512];
    loop {
        // A zero timeout polls the read exactly once.
        match tokio::time::timeout(Duration::ZERO, conn.read(&mut buf)).await {
            Err(_) => return true,
            Ok(Ok(0)) | Ok(Err(_)) => return false,
            Ok(Ok(_)) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5424_timestamps_have_milliseconds_in_utc() {
        assert_eq!(rfc5424_time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn non_ascii_is_escaped_to_the_same_json_value() {
        let v = serde_json::json!({"actor": "zoë 🔑"});
        let escaped = ascii_json(&v.to_string());
        assert!(escaped.is_ascii(), "{escaped}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&escaped).unwrap(),
            v
        );
    }
}
