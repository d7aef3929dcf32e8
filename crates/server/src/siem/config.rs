//! The `[[audit.sinks]]` configuration: one entry per sink kind, its defaults and its
//! validation. Separate from the forwarders so that the config loader can check sinks without
//! starting anything.

use super::FIRST_BACKOFF;
use serde::Deserialize;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

const DEFAULT_POLL_MS: u64 = 500;
const DEFAULT_BATCH: u32 = 500;
const DEFAULT_MAX_BACKOFF_MS: u64 = 30_000;
const DEFAULT_MAX_BYTES: u64 = 100 * 1024 * 1024;
const DEFAULT_MAX_FILES: u32 = 10;

/// One `[[audit.sinks]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SinkConfig {
    File(FileSinkConfig),
    Syslog(SyslogSinkConfig),
    Webhook(WebhookSinkConfig),
}

/// JSON lines (one `{"type":"event",…}` per line), rotated at `max_bytes`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    pub name: String,
    pub path: PathBuf,
    /// Rotate when the next line would make the file larger than this.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` newest … `path.<max_files>` oldest).
    #[serde(default = "default_max_files")]
    pub max_files: u32,
    pub poll_interval_ms: Option<u64>,
    pub batch_size: Option<u32>,
    pub max_backoff_ms: Option<u64>,
}

/// RFC 5424 over TCP with octet-counting framing (RFC 6587), optionally TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogSinkConfig {
    pub name: String,
    /// `host:port`.
    pub address: String,
    #[serde(default)]
    pub tls: bool,
    /// PEM CA the server's certificate must chain to (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    pub poll_interval_ms: Option<u64>,
    pub batch_size: Option<u32>,
    pub max_backoff_ms: Option<u64>,
}

/// POSTs a JSON array of `{"type":"event",…}` objects per batch; any non-2xx is retried.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSinkConfig {
    pub name: String,
    /// An `https://` URL.
    pub url: String,
    /// PEM CA the server's certificate must chain to (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Name of the environment variable holding the `Authorization` header value (the secret
    /// itself never goes into the config file).
    pub auth_header_env: Option<String>,
    pub poll_interval_ms: Option<u64>,
    pub batch_size: Option<u32>,
    pub max_backoff_ms: Option<u64>,
}

fn default_max_bytes() -> u64 {
    DEFAULT_MAX_BYTES
}
fn default_max_files() -> u32 {
    DEFAULT_MAX_FILES
}

/// How a forwarder polls, batches and backs off, with the defaults filled in.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tuning {
    pub(super) poll: Duration,
    pub(super) batch: u32,
    pub(super) max_backoff: Duration,
}

impl SinkConfig {
    pub fn name(&self) -> &str {
        match self {
            SinkConfig::File(c) => &c.name,
            SinkConfig::Syslog(c) => &c.name,
            SinkConfig::Webhook(c) => &c.name,
        }
    }

    pub(super) fn tuning(&self) -> Tuning {
        let (poll, batch, backoff) = match self {
            SinkConfig::File(c) => (c.poll_interval_ms, c.batch_size, c.max_backoff_ms),
            SinkConfig::Syslog(c) => (c.poll_interval_ms, c.batch_size, c.max_backoff_ms),
            SinkConfig::Webhook(c) => (c.poll_interval_ms, c.batch_size, c.max_backoff_ms),
        };
        Tuning {
            poll: Duration::from_millis(poll.unwrap_or(DEFAULT_POLL_MS)),
            batch: batch.unwrap_or(DEFAULT_BATCH),
            max_backoff: Duration::from_millis(backoff.unwrap_or(DEFAULT_MAX_BACKOFF_MS)),
        }
    }

    /// Checks one entry on its own (names are checked together by [`validate_sinks`]).
    pub fn validate(&self) -> Result<(), SinkConfigError> {
        let name = self.name();
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_name {
            return Err(SinkConfigError::BadName(name.to_string()));
        }
        let bad = |problem: String| {
            Err(SinkConfigError::Invalid {
                name: name.to_string(),
                problem,
            })
        };
        let t = self.tuning();
        if t.batch == 0 || t.batch > 10_000 {
            return bad("batch_size must be between 1 and 10000".into());
        }
        if t.poll < Duration::from_millis(10) {
            return bad("poll_interval_ms must be at least 10".into());
        }
        if t.max_backoff < FIRST_BACKOFF {
            return bad(format!(
                "max_backoff_ms must be at least {}",
                FIRST_BACKOFF.as_millis()
            ));
        }
        match self {
            SinkConfig::File(c) => {
                if c.path.as_os_str().is_empty() {
                    return bad("path must not be empty".into());
                }
                if c.max_bytes < 4096 {
                    return bad("max_bytes must be at least 4096".into());
                }
                if c.max_files == 0 {
                    return bad("max_files must be at least 1".into());
                }
            }
            SinkConfig::Syslog(c) => {
                if let Err(problem) = split_address(&c.address) {
                    return bad(problem);
                }
                if c.ca_file.is_some() && !c.tls {
                    return bad("ca_file needs tls = true".into());
                }
            }
            SinkConfig::Webhook(c) => {
                let url = match reqwest::Url::parse(&c.url) {
                    Ok(u) => u,
                    Err(e) => return bad(format!("url is not a valid URL: {e}")),
                };
                if url.scheme() != "https" {
                    return bad(format!(
                        "url must be https:// (got {}://); audit events must not travel in clear text",
                        url.scheme()
                    ));
                }
                if !url.username().is_empty() || url.password().is_some() {
                    return bad(
                        "url must not carry credentials; put the Authorization value in the environment variable named by auth_header_env".into(),
                    );
                }
                if let Some(env) = &c.auth_header_env
                    && (env.is_empty() || env.contains('='))
                {
                    return bad("auth_header_env must be the name of an environment variable (not its value)".into());
                }
            }
        }
        Ok(())
    }
}

/// Checks every sink and that names are unique (each name owns a cursor file).
pub fn validate_sinks(sinks: &[SinkConfig]) -> Result<(), SinkConfigError> {
    let mut seen = HashSet::new();
    for s in sinks {
        s.validate()?;
        if !seen.insert(s.name()) {
            return Err(SinkConfigError::DuplicateName(s.name().to_string()));
        }
    }
    Ok(())
}

/// `host:port` or `[v6]:port` → (host, port).
pub(super) fn split_address(address: &str) -> Result<(String, u16), String> {
    let msg = || format!("address {address:?} must be host:port");
    let (host, port) = address.rsplit_once(':').ok_or_else(msg)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| msg())?;
    if host.is_empty() || port == 0 {
        return Err(msg());
    }
    Ok((host.to_string(), port))
}

#[derive(Debug, thiserror::Error)]
pub enum SinkConfigError {
    #[error(
        "audit sink name {0:?} must be 1 to 64 characters of letters, digits, '-' and '_' (it names the cursor file)"
    )]
    BadName(String),
    #[error("two audit sinks are named {0:?}; names must be unique")]
    DuplicateName(String),
    #[error("audit sink {name}: {problem}")]
    Invalid { name: String, problem: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_need_a_host_and_a_port() {
        assert_eq!(
            split_address("siem.example:6514").unwrap(),
            ("siem.example".into(), 6514)
        );
        assert_eq!(split_address("[::1]:514").unwrap(), ("::1".into(), 514));
        for bad in ["", "host", ":514", "host:", "host:0", "host:99999"] {
            assert!(split_address(bad).is_err(), "{bad:?} accepted");
        }
    }
}
