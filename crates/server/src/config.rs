//! `sovra.toml`. Unknown keys and wrong types are errors, so a typo never silently disables a
//! setting.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (HTTPS).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// `sqlite://path` or `postgres://…`; default: `sqlite://<data_dir>/sovra.db`.
    pub database_url: Option<String>,
    /// Directory for the embedded database and dev-mode files.
    pub data_dir: Option<PathBuf>,
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub rate_limits: crate::ratelimit::RateLimitConfig,
    /// Reverse proxies (addresses or CIDR prefixes) whose `X-Forwarded-For` names the client:
    /// only from these is the header believed; empty (the default): never.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

/// `[audit]`: the request audit log and its forwarding to SIEM sinks (docs/audit-sinks.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// One durable event per request. Turning it off is for benchmarks only.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How often the chain head is signed (also on shutdown).
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval_seconds: u64,
    #[serde(default)]
    pub sinks: Vec<crate::siem::SinkConfig>,
    /// When the database's chain no longer holds the last event this node appended (rows
    /// deleted, a database gone back in time): `true` continues from the database's head after
    /// the alarm (set it only when a failover is known to have lost data); `false`, the default,
    /// stops appending, so audited requests fail until an operator has looked.
    #[serde(default)]
    pub continue_after_rollback: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            checkpoint_interval_seconds: default_checkpoint_interval(),
            sinks: Vec::new(),
            continue_after_rollback: false,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_checkpoint_interval() -> u64 {
    60
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub jwt: Vec<JwtIssuerConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuerConfig {
    pub issuer: String,
    pub audience: String,
    /// A JWKS file path or an https URL.
    pub jwks: String,
    /// The claim that names the user's organization.
    #[serde(default = "default_org_claim")]
    pub org_claim: String,
    /// The claim (array of strings) that lists roles: `user`, `admin` (of the org), `operator`
    /// (may seal the server).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// PEM CA that the https JWKS URL's certificate must chain to (default: system roots).
    pub jwks_ca_file: Option<PathBuf>,
    /// Organizations this issuer may speak for (its tokens' org claim must be one of them);
    /// empty: any.
    #[serde(default)]
    pub allowed_orgs: Vec<String>,
    /// Whether this issuer's `operator` role is honoured (sealing is server-wide).
    #[serde(default)]
    pub allow_operator: bool,
    /// Whether a subject of this issuer with no identity record becomes one on first use
    /// (its kind from its roles). Off by default: a subject is refused until an org admin
    /// registers it (or, upgraded from before identities were records, until it shows that it
    /// owns keys).
    #[serde(default)]
    pub provision_identities: bool,
    /// How often the JWKS is fetched again.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_seconds: u64,
    /// How long the last fetched JWKS is trusted while fetching it fails; past it, this
    /// issuer's tokens are refused and `/ready` reports the issuer (fail closed).
    #[serde(default = "default_jwks_max_age")]
    pub jwks_max_age_seconds: u64,
    /// The longest token lifetime accepted (`exp` − `iat`, and `exp` − now).
    #[serde(default = "default_max_token_lifetime")]
    pub max_token_lifetime_seconds: u64,
    /// The signature algorithms accepted from this issuer (default: every asymmetric one
    /// Sovra supports).
    #[serde(default = "default_jwt_algorithms")]
    pub algorithms: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted request body.
    #[serde(default = "default_body_bytes")]
    pub max_body_bytes: usize,
    /// Most items in one batch request.
    #[serde(default = "default_batch_items")]
    pub max_batch_items: usize,
    /// Concurrent RSA generations and private-key operations.
    #[serde(default = "default_heavy")]
    pub heavy_ops_concurrency: usize,
    /// CPU-heavy operations one identity may have running or queued; past it, 429.
    #[serde(default = "default_heavy_per_identity")]
    pub heavy_ops_per_identity: usize,
    /// CPU-heavy operations that may wait for a slot, server-wide; past it, 503.
    #[serde(default = "default_heavy_queue")]
    pub heavy_ops_queue: usize,
    /// Unwrapped key versions cached in memory.
    #[serde(default = "default_key_cache")]
    pub key_cache_capacity: usize,
    /// Seconds a client may take to send its request headers, and to start its first request
    /// after the TLS handshake; an idle HTTP/1.1 keep-alive connection is closed after as long.
    #[serde(default = "default_header_timeout")]
    pub header_read_timeout_seconds: u64,
    /// Seconds a connection may stay open without a request in progress (HTTP/2 with no
    /// stream, HTTP/1.1 keep-alive, a response the client does not read).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_seconds: u64,
    /// Seconds a request may take end to end.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_seconds: u64,
    /// Open client connections; further clients wait in the listen backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open connections per source (IPv4 address, IPv6 /64); more are closed at once. Below
    /// `max_connections`, so that one source cannot hold them all.
    #[serde(default = "default_max_connections_per_source")]
    pub max_connections_per_source: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: default_body_bytes(),
            max_batch_items: default_batch_items(),
            heavy_ops_concurrency: default_heavy(),
            heavy_ops_per_identity: default_heavy_per_identity(),
            heavy_ops_queue: default_heavy_queue(),
            key_cache_capacity: default_key_cache(),
            header_read_timeout_seconds: default_header_timeout(),
            idle_timeout_seconds: default_idle_timeout(),
            request_timeout_seconds: default_request_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_source: default_max_connections_per_source(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8200))
}
fn default_org_claim() -> String {
    "org".into()
}
fn default_roles_claim() -> String {
    "roles".into()
}
fn default_jwks_refresh() -> u64 {
    sovra_core::identity::DEFAULT_JWKS_REFRESH_SECONDS
}
fn default_jwks_max_age() -> u64 {
    sovra_core::identity::DEFAULT_MAX_KEY_SET_AGE_SECONDS
}
fn default_max_token_lifetime() -> u64 {
    sovra_core::identity::DEFAULT_MAX_TOKEN_LIFETIME_SECONDS
}
fn default_jwt_algorithms() -> Vec<String> {
    sovra_core::identity::ALLOWED_ALGS
        .map(|a| format!("{a:?}"))
        .to_vec()
}
fn default_body_bytes() -> usize {
    1024 * 1024
}
fn default_batch_items() -> usize {
    1000
}
fn default_heavy() -> usize {
    2
}
fn default_heavy_per_identity() -> usize {
    2
}
fn default_heavy_queue() -> usize {
    64
}
fn default_key_cache() -> usize {
    10_000
}
fn default_header_timeout() -> u64 {
    10
}
fn default_idle_timeout() -> u64 {
    60
}
fn default_max_connections() -> usize {
    4096
}
fn default_max_connections_per_source() -> usize {
    256
}
fn default_request_timeout() -> u64 {
    30
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: String, message: String },
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: default_listen(),
            database_url: None,
            data_dir: None,
            tls: None,
            auth: AuthConfig::default(),
            limits: Limits::default(),
            audit: AuditConfig::default(),
            rate_limits: Default::default(),
            trusted_proxies: Vec::new(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.display().to_string(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let cfg: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        for j in &cfg.auth.jwt {
            if j.issuer.is_empty() || j.issuer.contains('#') || j.issuer == "dev-token" {
                return Err(format!(
                    "issuer {:?} must be non-empty and must not contain '#'",
                    j.issuer
                ));
            }
            sovra_core::identity::parse_algorithms(&j.algorithms)
                .map_err(|e| format!("algorithms for issuer {}: {e}", j.issuer))?;
            if j.max_token_lifetime_seconds == 0 || j.jwks_refresh_seconds == 0 {
                return Err(format!(
                    "max_token_lifetime_seconds and jwks_refresh_seconds of issuer {} must be at least 1",
                    j.issuer
                ));
            }
            // The keys must survive at least one refresh that fails.
            if j.jwks_max_age_seconds <= j.jwks_refresh_seconds {
                return Err(format!(
                    "jwks_max_age_seconds of issuer {} must be longer than its jwks_refresh_seconds",
                    j.issuer
                ));
            }
            if !j.jwks.starts_with("https://") && j.jwks.contains("://") {
                return Err(format!(
                    "jwks for issuer {} must be a file path or an https URL",
                    j.issuer
                ));
            }
        }
        crate::client_addr::parse_proxies(&cfg.trusted_proxies)?;
        if cfg.audit.checkpoint_interval_seconds == 0 {
            return Err("audit.checkpoint_interval_seconds must be at least 1".into());
        }
        if cfg.limits.max_batch_items == 0 || cfg.limits.max_body_bytes < 1024 {
            return Err("limits are too small to serve any request".into());
        }
        // Each bound sizes a semaphore, a cache, a buffer or a timer at start: an absurd value
        // must be a config error, not a panic or an allocation failure; a zero timeout would
        // close every connection.
        let seconds = |s: u64| usize::try_from(s).unwrap_or(usize::MAX);
        let bounded = [
            (
                "heavy_ops_concurrency",
                cfg.limits.heavy_ops_concurrency,
                1,
                1024,
            ),
            (
                "heavy_ops_per_identity",
                cfg.limits.heavy_ops_per_identity,
                1,
                1024,
            ),
            ("heavy_ops_queue", cfg.limits.heavy_ops_queue, 1, 100_000),
            ("max_connections", cfg.limits.max_connections, 1, 1_000_000),
            (
                "max_connections_per_source",
                cfg.limits.max_connections_per_source,
                1,
                1_000_000,
            ),
            (
                "header_read_timeout_seconds",
                seconds(cfg.limits.header_read_timeout_seconds),
                1,
                3600,
            ),
            (
                "idle_timeout_seconds",
                seconds(cfg.limits.idle_timeout_seconds),
                1,
                86_400,
            ),
            (
                "key_cache_capacity",
                cfg.limits.key_cache_capacity,
                1,
                10_000_000,
            ),
            ("max_batch_items", cfg.limits.max_batch_items, 1, 100_000),
            ("max_body_bytes", cfg.limits.max_body_bytes, 1024, 1 << 30),
        ];
        for (name, value, min, max) in bounded {
            if !(min..=max).contains(&value) {
                return Err(format!(
                    "limits.{name} must be between {min} and {max}, not {value}"
                ));
            }
        }
        if cfg.limits.max_connections_per_source >= cfg.limits.max_connections {
            return Err(format!(
                "limits.max_connections_per_source ({}) must be less than limits.max_connections ({}): one source must not hold every connection",
                cfg.limits.max_connections_per_source, cfg.limits.max_connections
            ));
        }
        crate::siem::validate_sinks(&cfg.audit.sinks).map_err(|e| e.to_string())?;
        cfg.rate_limits.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_limits_are_config_errors() {
        for (line, name) in [
            (
                "heavy_ops_concurrency = 18446744073709551615",
                "heavy_ops_concurrency",
            ),
            ("heavy_ops_concurrency = 0", "heavy_ops_concurrency"),
            ("max_connections = 0", "max_connections"),
            ("key_cache_capacity = 0", "key_cache_capacity"),
            ("max_body_bytes = 9223372036854775807", "max_body_bytes"),
            (
                "max_connections_per_source = 0",
                "max_connections_per_source",
            ),
            (
                "header_read_timeout_seconds = 0",
                "header_read_timeout_seconds",
            ),
            ("idle_timeout_seconds = 0", "idle_timeout_seconds"),
            (
                "idle_timeout_seconds = 18446744073709551615",
                "idle_timeout_seconds",
            ),
            // At or above the global cap, one source could take every connection.
            (
                "max_connections = 100\nmax_connections_per_source = 100",
                "max_connections_per_source",
            ),
            (
                "max_connections_per_source = 4096",
                "max_connections_per_source",
            ),
            ("max_connections = 200", "max_connections_per_source"),
        ] {
            let err = Config::parse(&format!("[limits]\n{line}\n")).unwrap_err();
            assert!(err.contains(name), "{line}: {err}");
        }
        assert!(Config::parse("[limits]\nheavy_ops_concurrency = 8\n").is_ok());
        let c =
            Config::parse("[limits]\nmax_connections = 200\nmax_connections_per_source = 199\n")
                .unwrap();
        assert_eq!(c.limits.max_connections_per_source, 199);
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_rejected() {
        assert!(
            Config::parse("listne = \"127.0.0.1:1\"")
                .unwrap_err()
                .contains("unknown field")
        );
        assert!(Config::parse("listen = 5").is_err());
        assert!(Config::parse("[limits]\nmax_body_bytes = \"big\"").is_err());
        assert!(
            Config::parse("[[auth.jwt]]\nissuer=\"i\"\naudience=\"a\"\njwks=\"http://x\"").is_err()
        );
    }

    #[test]
    fn defaults_apply() {
        let c = Config::parse("[[auth.jwt]]\nissuer=\"i\"\naudience=\"a\"\njwks=\"keys.json\"")
            .unwrap();
        assert_eq!(c.auth.jwt[0].org_claim, "org");
        assert_eq!(c.limits.max_body_bytes, 1024 * 1024);
        assert_eq!(c.limits.max_connections_per_source, 256);
        assert_eq!(c.limits.idle_timeout_seconds, 60);
        assert!(c.limits.max_connections_per_source < c.limits.max_connections);
    }
}
