//! Request rate limits: token buckets (GCRA, `governor`) per authenticated identity and per
//! endpoint class, and per source IP for requests that are not authenticated (failed
//! authentication, `sys/init`, `sys/unseal`, paths and methods no route has). A caller over
//! its quota gets 429 with `Retry-After` and the error code `rate_limited`.
//!
//! Each route's class, or that it is unauthenticated or unlimited, is declared in the route
//! table ([`crate::routes::table`]); this module only reads it. Classes:
//! - `read`: GET routes of keys (list, show, public key).
//! - `crypto`: encrypt, decrypt, reencrypt, data keys, sign, verify, MAC; a batch of n items
//!   costs n.
//! - `key_admin`: create, update, rotate, disable, enable, schedule/cancel deletion.
//! - `rsa`: RSA key generation and RSA private-key operations, charged by the core once the
//!   key type is known, in addition to the route's class.
//! - `sys`: seal, KEK rotation and other server- or org-wide operations under `/api/v1/sys/`.
//! - `unauthenticated`: per source IP.
//!
//! Probes (`/health`, `/ready`, `/metrics`, the OpenAPI document, `sys/seal-status`, the audit
//! public key) are not limited.

use crate::AppState;
use crate::connections::{SourceKey, source_key};
use crate::error::ApiError;
use crate::routes::table::{self, Access};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use serde::Deserialize;
use sovra_core::kms::HeavyOpAdmission;
use sovra_core::{CoreError, Principal};
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often buckets that have refilled completely (idle callers) are dropped.
const CLEANUP_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Read,
    Crypto,
    KeyAdmin,
    Rsa,
    Sys,
    Unauthenticated,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Crypto => "crypto",
            Class::KeyAdmin => "key_admin",
            Class::Rsa => "rsa",
            Class::Sys => "sys",
            Class::Unauthenticated => "unauthenticated",
        }
    }
}

/// `[rate_limits]` in `sovra.toml`. A class table, when given, needs both values.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    #[serde(default = "default_read")]
    pub read: ClassLimit,
    #[serde(default = "default_crypto")]
    pub crypto: ClassLimit,
    #[serde(default = "default_key_admin")]
    pub key_admin: ClassLimit,
    #[serde(default = "default_rsa")]
    pub rsa: ClassLimit,
    #[serde(default = "default_sys")]
    pub sys: ClassLimit,
    #[serde(default = "default_unauthenticated")]
    pub unauthenticated: ClassLimit,
}

/// A token bucket: refills at `per_second` (may be fractional), holds at most `burst`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassLimit {
    pub per_second: f64,
    pub burst: u32,
}

// Orders of magnitude from AWS KMS's default request quotas: symmetric cryptography in the
// tens of thousands per second (its largest regions: 50,000), RSA in the hundreds, CreateKey
// 50 per second, key administration a few per second. The bursts let a deployment script or a
// test suite create dozens of keys at once.
fn default_enabled() -> bool {
    true
}
fn default_read() -> ClassLimit {
    ClassLimit {
        per_second: 2_000.0,
        burst: 4_000,
    }
}
fn default_crypto() -> ClassLimit {
    ClassLimit {
        per_second: 50_000.0,
        burst: 100_000,
    }
}
fn default_key_admin() -> ClassLimit {
    ClassLimit {
        per_second: 50.0,
        burst: 500,
    }
}
/// In RSA-3072 private-key operations (a signature 1, an RSA-4096 one 3, generating an RSA
/// key 240 or 580: `sovra_core::kms::heavy_cost`). The burst holds one RSA-4096 generation.
fn default_rsa() -> ClassLimit {
    ClassLimit {
        per_second: 100.0,
        burst: 1000,
    }
}
fn default_sys() -> ClassLimit {
    ClassLimit {
        per_second: 1.0,
        burst: 20,
    }
}
// Per IP: the sustained rate bounds guessing and verification work; the burst lets clients
// behind one NAT whose tokens expire together fail and recover without being locked out.
fn default_unauthenticated() -> ClassLimit {
    ClassLimit {
        per_second: 10.0,
        burst: 500,
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: default_enabled(),
            read: default_read(),
            crypto: default_crypto(),
            key_admin: default_key_admin(),
            rsa: default_rsa(),
            sys: default_sys(),
            unauthenticated: default_unauthenticated(),
        }
    }
}

impl RateLimitConfig {
    fn classes(&self) -> [(Class, ClassLimit); 6] {
        [
            (Class::Read, self.read),
            (Class::Crypto, self.crypto),
            (Class::KeyAdmin, self.key_admin),
            (Class::Rsa, self.rsa),
            (Class::Sys, self.sys),
            (Class::Unauthenticated, self.unauthenticated),
        ]
    }

    /// Every class must admit some requests: a zero rate or burst would lock callers out for
    /// good, so it is refused rather than read as "unlimited" or "off" (use `enabled = false`).
    pub fn validate(&self) -> Result<(), String> {
        for (class, l) in self.classes() {
            if !(l.per_second.is_finite() && l.per_second > 0.0) {
                return Err(format!(
                    "rate_limits.{}.per_second must be a positive number, not {}",
                    class.as_str(),
                    l.per_second
                ));
            }
            if l.per_second > 1e9 {
                return Err(format!(
                    "rate_limits.{}.per_second is too large (at most 1e9)",
                    class.as_str()
                ));
            }
            if l.burst == 0 {
                return Err(format!(
                    "rate_limits.{}.burst must be at least 1",
                    class.as_str()
                ));
            }
        }
        Ok(())
    }
}

impl ClassLimit {
    /// The governor quota; out-of-range values (refused by [`RateLimitConfig::validate`]) are
    /// clamped rather than panicking.
    fn quota(&self) -> Quota {
        let per_second = if self.per_second.is_finite() {
            self.per_second.clamp(1e-6, 1e9)
        } else {
            1.0
        };
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        Quota::with_period(Duration::from_secs_f64(1.0 / per_second))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst)
    }
}

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>;

/// A refused request: its class and whole seconds until it would be admitted.
#[derive(Debug, Clone, Copy)]
pub struct Limited {
    pub class: Class,
    pub retry_after_secs: u64,
}

impl From<Limited> for ApiError {
    fn from(l: Limited) -> Self {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "rate limit for {} requests exceeded; retry in {} s",
                l.class.as_str(),
                l.retry_after_secs
            ),
        );
        e.retry_after = Some(l.retry_after_secs);
        e
    }
}

/// The limiters of one server.
pub struct RateLimits {
    enabled: bool,
    read: Keyed<String>,
    crypto: Keyed<String>,
    key_admin: Keyed<String>,
    rsa: Keyed<String>,
    sys: Keyed<String>,
    /// Per source: an IPv4 address or an IPv6 /64 (a host has 2^64 addresses to rotate).
    unauthenticated: Keyed<SourceKey>,
    /// Source IPs whose failed authentications exhausted their bucket, until when: their
    /// credentials are not even verified before then, so guessing and verification floods
    /// stop at the limit.
    blocked: DashMap<SourceKey, Instant>,
    /// When each caller's last rate-limit refusal was audited: one per caller per
    /// [`REFUSAL_AUDIT_INTERVAL`] is, the rest only counted, so a caller over its bucket cannot
    /// write audit events faster than its bucket allows.
    refusals_audited: DashMap<String, Instant>,
    bursts: [u32; 6],
}

/// How often a caller that keeps being refused leaves an audit event of it.
pub const REFUSAL_AUDIT_INTERVAL: Duration = Duration::from_secs(60);

fn keyed<K: Hash + Eq + Clone>(l: ClassLimit) -> Keyed<K> {
    RateLimiter::dashmap(l.quota())
}

impl RateLimits {
    pub fn new(cfg: &RateLimitConfig) -> RateLimits {
        RateLimits {
            enabled: cfg.enabled,
            read: keyed(cfg.read),
            crypto: keyed(cfg.crypto),
            key_admin: keyed(cfg.key_admin),
            rsa: keyed(cfg.rsa),
            sys: keyed(cfg.sys),
            unauthenticated: keyed(cfg.unauthenticated),
            blocked: DashMap::new(),
            refusals_audited: DashMap::new(),
            bursts: cfg.classes().map(|(_, l)| l.burst.max(1)),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn identity_limiter(&self, class: Class) -> &Keyed<String> {
        match class {
            Class::Read => &self.read,
            Class::Crypto => &self.crypto,
            Class::KeyAdmin => &self.key_admin,
            Class::Rsa => &self.rsa,
            // Unauthenticated requests never reach an identity check; be strict if one does.
            Class::Sys | Class::Unauthenticated => &self.sys,
        }
    }

    fn burst(&self, class: Class) -> u32 {
        self.bursts[class as usize]
    }

    /// Charges `cost` requests of `class` to the identity `owner` (a batch costs its item
    /// count, at most one full bucket).
    pub fn check(&self, class: Class, owner: &str, cost: u32) -> Result<(), Limited> {
        if !self.enabled || cost == 0 {
            return Ok(());
        }
        let n = NonZeroU32::new(cost.min(self.burst(class))).unwrap_or(NonZeroU32::MIN);
        let limiter = self.identity_limiter(class);
        match limiter.check_key_n(&owner.to_string(), n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(refused(
                class,
                not_until.wait_time_from(limiter.clock().now()),
            )),
            // Cannot happen (cost is capped at the burst); refuse for a second if it does.
            Err(_) => Err(refused(class, Duration::from_secs(1))),
        }
    }

    /// Charges one unauthenticated request to the source IP.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Limited> {
        if !self.enabled {
            return Ok(());
        }
        let limiter = &self.unauthenticated;
        match limiter.check_key(&source_key(ip)) {
            Ok(()) => Ok(()),
            Err(not_until) => Err(refused(
                Class::Unauthenticated,
                not_until.wait_time_from(limiter.clock().now()),
            )),
        }
    }

    /// Charges a failed authentication to the source IP; when that exhausts its bucket, the
    /// IP is blocked until the bucket admits a request again.
    pub fn failed_authentication(&self, ip: IpAddr) -> Result<(), Limited> {
        self.check_ip(ip).inspect_err(|l| {
            self.blocked.insert(
                source_key(ip),
                Instant::now() + Duration::from_secs(l.retry_after_secs),
            );
        })
    }

    /// Whether the source IP is blocked for failed authentications (not charged again).
    pub fn ip_blocked(&self, ip: IpAddr) -> Option<Limited> {
        if !self.enabled {
            return None;
        }
        let until = *self.blocked.get(&source_key(ip))?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        Some(refused(Class::Unauthenticated, left))
    }

    /// Drops the state of callers whose buckets are full again, so memory follows the number
    /// of recently active callers, not of all callers ever seen.
    pub fn cleanup(&self) {
        for l in [
            &self.read,
            &self.crypto,
            &self.key_admin,
            &self.rsa,
            &self.sys,
        ] {
            l.retain_recent();
            l.shrink_to_fit();
        }
        self.unauthenticated.retain_recent();
        self.unauthenticated.shrink_to_fit();
        let now = Instant::now();
        self.blocked.retain(|_, until| *until > now);
        self.blocked.shrink_to_fit();
        self.refusals_audited
            .retain(|_, at| now.duration_since(*at) < REFUSAL_AUDIT_INTERVAL);
        self.refusals_audited.shrink_to_fit();
    }

    /// Whether a rate-limit refusal of `caller` (an identity, or a source address) gets an
    /// audit event: the first in each [`REFUSAL_AUDIT_INTERVAL`] does; the others are counted
    /// in `sovra_audit_refusals_unrecorded_total`.
    pub fn audit_refusal(&self, caller: &str) -> bool {
        let now = Instant::now();
        let mut first = false;
        self.refusals_audited
            .entry(caller.to_string())
            .and_modify(|at| {
                if now.duration_since(*at) >= REFUSAL_AUDIT_INTERVAL {
                    *at = now;
                    first = true;
                }
            })
            .or_insert_with(|| {
                first = true;
                now
            });
        if !first {
            metrics::counter!("sovra_audit_refusals_unrecorded_total").increment(1);
        }
        first
    }

    /// Runs [`Self::cleanup`] periodically while the limits are alive (needs a Tokio runtime;
    /// without one nothing is spawned).
    pub fn start_cleanup(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Weak<RateLimits> = Arc::downgrade(self);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(CLEANUP_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(limits) => limits.cleanup(),
                    None => return,
                }
            }
        });
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.read.len()
            + self.crypto.len()
            + self.key_admin.len()
            + self.rsa.len()
            + self.sys.len()
            + self.unauthenticated.len()
            + self.blocked.len()
    }
}

fn refused(class: Class, wait: Duration) -> Limited {
    metrics::counter!("sovra_rate_limited_total", "class" => class.as_str()).increment(1);
    // Whole seconds, rounded up, at least 1: a client that waits that long is admitted.
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Limited {
        class,
        retry_after_secs: secs.max(1),
    }
}

impl HeavyOpAdmission for RateLimits {
    fn admit(&self, p: &Principal, cost: u32) -> Result<(), CoreError> {
        self.check(Class::Rsa, p.identity().as_str(), cost)
            .map_err(|l| CoreError::RateLimited {
                retry_after_secs: l.retry_after_secs,
            })
    }
}

/// The per-identity limit: an authenticated request is charged to its identity's bucket of
/// the route's class before the handler runs (called by the authentication layer, the one
/// place that knows both the route and the caller).
pub fn charge_identity(st: &AppState, class: Class, caller: &Principal) -> Result<(), ApiError> {
    st.rate_limits
        .check(class, caller.identity().as_str(), 1)
        .map_err(ApiError::from)
}

/// The per-source-IP limits, a layer around the routes: unauthenticated routes are charged on
/// every request, authenticated routes on every 401, and a blocked IP's requests are refused
/// before their credentials are verified.
pub async fn layer(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let resp = limit_by_ip(&st, req, next).await;
    if resp.status() == StatusCode::TOO_MANY_REQUESTS {
        // A client that ignores Retry-After and asks again at once would turn cheap refusals
        // into a CPU flood of TLS, HTTP and token checks; holding its refusal briefly costs
        // the server nothing and slows such a client to one request per connection per delay.
        tokio::time::sleep(REFUSAL_DELAY).await;
    }
    resp
}

/// How long a 429 is held before it is sent.
pub const REFUSAL_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

async fn limit_by_ip(st: &AppState, req: Request, next: Next) -> Response {
    let limits = &st.rate_limits;
    let access = table::spec(req.method(), req.extensions()).access;
    // Without a peer address (an in-process router in tests) there is nothing to key on.
    let ip = req
        .extensions()
        .get::<crate::client_addr::ClientAddr>()
        .map(|c| c.client);
    let (Some(ip), true) = (ip, limits.enabled()) else {
        return next.run(req).await;
    };
    match access {
        Access::Unlimited => return next.run(req).await,
        Access::Unauthenticated => {
            if let Err(l) = limits.check_ip(ip) {
                return ApiError::from(l).into_response();
            }
            return next.run(req).await;
        }
        Access::Authenticated(_) => {}
    }
    if let Some(l) = limits.ip_blocked(ip) {
        // A token that already verified and is still cached is not refused for its source's
        // noise (others behind the same NAT or proxy); it costs no verification.
        let cached = crate::auth::bearer_token(&req)
            .ok()
            .is_some_and(|t| st.auth.already_verified(t));
        if !cached {
            return ApiError::from(l).into_response();
        }
    }
    let resp = next.run(req).await;
    if resp.status() == StatusCode::UNAUTHORIZED
        && let Err(l) = limits.failed_authentication(ip)
    {
        return ApiError::from(l).into_response();
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Result<crate::Config, String> {
        crate::Config::parse(extra)
    }

    #[test]
    fn zero_or_invalid_limits_are_refused_with_the_setting_named() {
        for (toml, needle) in [
            (
                "[rate_limits.crypto]\nper_second = 0\nburst = 10",
                "rate_limits.crypto.per_second",
            ),
            (
                "[rate_limits.rsa]\nper_second = -1.5\nburst = 10",
                "rate_limits.rsa.per_second",
            ),
            (
                "[rate_limits.sys]\nper_second = nan\nburst = 10",
                "rate_limits.sys.per_second",
            ),
            (
                "[rate_limits.read]\nper_second = 5\nburst = 0",
                "rate_limits.read.burst",
            ),
        ] {
            let e = cfg(toml).unwrap_err();
            assert!(e.contains(needle), "{toml}: {e}");
        }
        // A class table needs both values, and unknown keys are typos.
        assert!(cfg("[rate_limits.read]\nper_second = 5").is_err());
        assert!(cfg("[rate_limits]\nenabeld = false").is_err());
        assert!(cfg("[rate_limits.rsa]\nper_second = 5\nburst = 1\nbrust = 2").is_err());
    }

    #[test]
    fn defaults_are_enabled_and_fractional_rates_are_accepted() {
        let c = cfg("").unwrap();
        assert!(c.rate_limits.enabled);
        assert_eq!(c.rate_limits.crypto.burst, 100_000);
        let c = cfg("[rate_limits.sys]\nper_second = 0.5\nburst = 3").unwrap();
        assert_eq!(c.rate_limits.sys.per_second, 0.5);
        // The README's inline-table form.
        let c = cfg("[rate_limits]\nrsa = { per_second = 100, burst = 200 }").unwrap();
        assert_eq!(c.rate_limits.rsa.burst, 200);
    }

    fn small() -> RateLimits {
        RateLimits::new(&RateLimitConfig {
            crypto: ClassLimit {
                per_second: 0.001,
                burst: 3,
            },
            unauthenticated: ClassLimit {
                per_second: 0.001,
                burst: 2,
            },
            ..Default::default()
        })
    }

    #[test]
    fn buckets_are_per_identity_and_per_class() {
        let l = small();
        for _ in 0..3 {
            l.check(Class::Crypto, "a", 1).unwrap();
        }
        let e = l.check(Class::Crypto, "a", 1).unwrap_err();
        assert_eq!(e.class, Class::Crypto);
        // 0.001/s: the next token is about 1000 s away, reported in whole seconds.
        assert!(e.retry_after_secs >= 999, "{}", e.retry_after_secs);
        l.check(Class::Crypto, "b", 1).unwrap();
        l.check(Class::Read, "a", 1).unwrap();
        l.check(Class::KeyAdmin, "a", 1).unwrap();
    }

    #[test]
    fn a_batch_costs_its_items_capped_at_one_bucket() {
        let l = small();
        l.check(Class::Crypto, "a", 2).unwrap();
        assert!(l.check(Class::Crypto, "a", 2).is_err());
        // Larger than the bucket: charged as a full bucket, so it passes when the bucket is
        // full and is not refused for ever.
        l.check(Class::Crypto, "b", 1000).unwrap();
        assert!(l.check(Class::Crypto, "b", 1).is_err());
    }

    #[test]
    fn failed_authentications_block_the_ip_once_its_bucket_is_spent() {
        let l = small();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(l.ip_blocked(ip).is_none());
        l.failed_authentication(ip).unwrap();
        l.failed_authentication(ip).unwrap();
        assert!(l.ip_blocked(ip).is_none());
        assert!(l.failed_authentication(ip).is_err());
        let b = l.ip_blocked(ip).expect("blocked");
        assert_eq!(b.class, Class::Unauthenticated);
        assert!(b.retry_after_secs >= 1);
        assert!(l.ip_blocked(other).is_none());
    }

    /// An IPv6 host rotating through its /64 is one source; another /64 is another. IPv4
    /// inside IPv6 (a dual-stack listener) counts as the IPv4 address.
    #[test]
    fn ipv6_sources_are_counted_per_64() {
        let l = small();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        l.failed_authentication(ip("2001:db8::1")).unwrap();
        l.failed_authentication(ip("2001:db8::ffff:1")).unwrap();
        assert!(l.failed_authentication(ip("2001:db8::abcd:2")).is_err());
        assert!(l.ip_blocked(ip("2001:db8::9")).is_some(), "the same /64");
        assert!(l.ip_blocked(ip("2001:db8:0:1::1")).is_none(), "another /64");
        l.failed_authentication(ip("192.0.2.7")).unwrap();
        l.failed_authentication(ip("::ffff:192.0.2.7")).unwrap();
        assert!(l.failed_authentication(ip("192.0.2.7")).is_err());
    }

    #[test]
    fn disabled_limits_admit_everything() {
        let l = RateLimits::new(&RateLimitConfig {
            enabled: false,
            rsa: ClassLimit {
                per_second: 0.001,
                burst: 1,
            },
            ..Default::default()
        });
        for _ in 0..10 {
            l.check(Class::Rsa, "a", 1).unwrap();
            l.failed_authentication("192.0.2.1".parse().unwrap())
                .unwrap();
        }
    }

    #[test]
    fn cleanup_drops_idle_callers_only() {
        let l = RateLimits::new(&RateLimitConfig {
            // Refills in 1 µs: idle at once.
            read: ClassLimit {
                per_second: 1e6,
                burst: 1,
            },
            ..Default::default()
        });
        for i in 0..100 {
            l.check(Class::Read, &format!("user-{i}"), 1).unwrap();
        }
        // A caller that is still paying off its bucket stays.
        l.check(Class::Sys, "busy", 20).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        l.cleanup();
        assert_eq!(l.tracked(), 1);
    }

    /// The table's classes, checked against the rule they follow; the probes and the
    /// unauthenticated routes are named here so that a new route cannot join either by accident.
    #[test]
    fn every_route_has_its_intended_class() {
        use crate::routes::table::{Access, ROUTES};
        use axum::http::Method;
        const UNLIMITED: &[&str] = &[
            "/health",
            "/ready",
            "/metrics",
            "/api/v1/openapi.json",
            "/api/v1/sys/seal-status",
            "/api/v1/audit/public-key",
        ];
        const UNAUTHENTICATED: &[&str] = &["/api/v1/sys/init", "/api/v1/sys/unseal"];
        for spec in ROUTES {
            let path = spec.path;
            let expected = if UNLIMITED.contains(&path) {
                Access::Unlimited
            } else if UNAUTHENTICATED.contains(&path) {
                Access::Unauthenticated
            } else if path.starts_with("/api/v1/sys/")
                || ((path.starts_with("/api/v1/orgs") || path.starts_with("/api/v1/identities"))
                    && spec.method != Method::GET)
            {
                // Seal, KEK, org and identity administration.
                Access::Authenticated(Class::Sys)
            } else if path.starts_with("/api/v1/audit") {
                // Reading the audit log, including keyed-hash lookups, is a read.
                Access::Authenticated(Class::Read)
            } else if path.contains("crypt")
                || path.contains("datakey")
                || path.ends_with("/sign")
                || path.contains("verify")
                || path.ends_with("/mac")
            {
                Access::Authenticated(Class::Crypto)
            } else if spec.method == Method::GET {
                Access::Authenticated(Class::Read)
            } else {
                Access::Authenticated(Class::KeyAdmin)
            };
            assert_eq!(spec.access, expected, "{} {path}", spec.method);
        }
        assert!(ROUTES.len() > 20, "{} routes", ROUTES.len());
        let access = |m: Method, p: &str| crate::routes::table::lookup(&m, Some(p)).access;
        assert_eq!(
            access(Method::POST, "/api/v1/keys/{id}/rotate"),
            Access::Authenticated(Class::KeyAdmin)
        );
        assert_eq!(
            access(Method::GET, "/api/v1/keys/{id}/public-key"),
            Access::Authenticated(Class::Read)
        );
        // What no route has is charged to its source IP.
        assert_eq!(
            crate::routes::table::lookup(&Method::GET, None).access,
            Access::Unauthenticated
        );
        assert_eq!(
            access(Method::DELETE, "/api/v1/keys"),
            Access::Unauthenticated
        );
    }
}
