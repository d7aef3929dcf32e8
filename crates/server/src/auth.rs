//! Authentication: JWT bearer tokens from configured issuers (keys from a JWKS file or https
//! URL, refreshed), and in dev mode the dev token. Only asymmetric algorithms are accepted;
//! `exp`, `iss` and `aud` are required; 30 seconds of clock skew.

use crate::config::JwtIssuerConfig;
use crate::error::ApiError;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sovra_core::cache::BoundedCache;
use sovra_core::principal::validate_org_id;
use sovra_core::{AuthMethod, Principal, Role};
use sovra_crypto::secret::ct_eq;
use std::sync::RwLock;
use std::time::{Duration, Instant};

pub const CLOCK_SKEW_SECONDS: u64 = 30;
/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// An unknown `kid` triggers at most one JWKS reload per this interval.
const MIN_RELOAD_INTERVAL: Duration = Duration::from_secs(10);
/// Largest JWKS document accepted from an issuer.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// The token algorithms accepted: asymmetric only.
pub const ALLOWED_ALGS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

pub const DEV_ORG: &str = "dev";
pub const DEV_SUBJECT: &str = "dev-admin";

/// Verified tokens remembered (by SHA-256 of the token) so that a client reusing its token
/// does not pay a signature verification per request.
const VERIFIED_TOKEN_CACHE_CAPACITY: usize = 10_000;

struct Issuer {
    config: JwtIssuerConfig,
    jwks: RwLock<(JwkSet, Instant)>,
    http: reqwest::Client,
}

/// A verified token's principal and the window in which the token is valid (seconds since the
/// epoch, clock skew included): a cache hit outside it is treated as a miss.
struct VerifiedToken {
    principal: Principal,
    valid_from: u64,
    expires_at: u64,
    /// The token's keyed hash for audit events, computed by the first request that needs it:
    /// the token is hundreds of bytes, and each request would otherwise hash it again. Valid
    /// because the audit HMAC key never changes; a rotation of it must clear `verified`.
    audit_hash: std::sync::Arc<std::sync::OnceLock<String>>,
}

pub struct Authenticator {
    issuers: Vec<Issuer>,
    dev_token: Option<sovra_crypto::SecretBytes>,
    /// Cleared whenever an issuer's keys change, so a key removed from a JWKS stops
    /// authenticating at once.
    verified: BoundedCache<[u8; 32], VerifiedToken>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot load JWKS {source_name}: {message}")]
    Load {
        source_name: String,
        message: String,
    },
}

impl Issuer {
    async fn fetch(config: &JwtIssuerConfig, http: &reqwest::Client) -> Result<JwkSet, JwksError> {
        let err = |message: String| JwksError::Load {
            source_name: config.jwks.clone(),
            message,
        };
        let text = if config.jwks.starts_with("https://") {
            let resp = http
                .get(&config.jwks)
                .send()
                .await
                .map_err(|e| err(e.to_string()))?;
            if !resp.status().is_success() {
                return Err(err(format!("HTTP {}", resp.status())));
            }
            if resp
                .content_length()
                .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
            {
                return Err(err("JWKS document is too large".into()));
            }
            let body = resp.bytes().await.map_err(|e| err(e.to_string()))?;
            if body.len() > MAX_JWKS_BYTES {
                return Err(err("JWKS document is too large".into()));
            }
            String::from_utf8(body.to_vec()).map_err(|_| err("JWKS is not UTF-8".into()))?
        } else {
            tokio::fs::read_to_string(&config.jwks)
                .await
                .map_err(|e| err(e.to_string()))?
        };
        parse_jwks(&text).map_err(err)
    }

    fn stale(&self) -> bool {
        let (_, at) = &*self.jwks.read().unwrap_or_else(|e| e.into_inner());
        at.elapsed() >= Duration::from_secs(self.config.jwks_refresh_seconds)
    }

    /// Reloads the JWKS; on failure keeps the last good set (and logs). A forced reload (an
    /// unknown kid) claims the reload slot before fetching, so a burst of forged tokens causes
    /// at most one fetch per interval. Returns whether the set of keys changed.
    async fn reload(&self, force: bool) -> bool {
        if force {
            let mut guard = self.jwks.write().unwrap_or_else(|e| e.into_inner());
            if guard.1.elapsed() < MIN_RELOAD_INTERVAL {
                return false;
            }
            guard.1 = Instant::now();
        }
        match Self::fetch(&self.config, &self.http).await {
            Ok(set) => {
                let mut guard = self.jwks.write().unwrap_or_else(|e| e.into_inner());
                let changed = guard.0 != set;
                *guard = (set, Instant::now());
                changed
            }
            Err(e) => {
                tracing::warn!(issuer = %self.config.issuer, error = %e, "JWKS reload failed; keeping the previous keys");
                self.jwks.write().unwrap_or_else(|e| e.into_inner()).1 = Instant::now();
                false
            }
        }
    }

    fn find_key(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let (set, _) = &*self.jwks.read().unwrap_or_else(|e| e.into_inner());
        select_key(set, kid, alg)
    }
}

/// Parses an issuer's JWKS document as fetched (file or https body).
pub fn parse_jwks(text: &str) -> Result<JwkSet, String> {
    serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))
}

/// The key of `set` for a token's `kid` and `alg`: the first with that kid, or without a kid
/// the only key; none when the key declares another algorithm.
pub fn select_key(set: &JwkSet, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
    let candidates: Vec<_> = set
        .keys
        .iter()
        .filter(|k| match kid {
            Some(kid) => k.common.key_id.as_deref() == Some(kid),
            None => true,
        })
        .collect();
    // Without a kid, only an unambiguous single-key set is acceptable.
    let jwk = match (kid, candidates.as_slice()) {
        (_, [one]) => *one,
        (Some(_), [first, ..]) => *first,
        _ => return None,
    };
    if let Some(key_alg) = jwk.common.key_algorithm
        && key_alg.to_string() != format!("{alg:?}")
    {
        return None;
    }
    DecodingKey::from_jwk(jwk).ok()
}

/// The HTTPS client that fetches an issuer's JWKS: system roots, or only the CA the config
/// names (an internal IdP of an air-gapped site).
fn jwks_client(config: &JwtIssuerConfig) -> Result<reqwest::Client, JwksError> {
    let err = |message: String| JwksError::Load {
        source_name: config.jwks.clone(),
        message,
    };
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .https_only(true);
    if let Some(ca) = &config.jwks_ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| err(format!("cannot read jwks_ca_file {}: {e}", ca.display())))?;
        let cert =
            reqwest::Certificate::from_pem(&pem).map_err(|e| err(format!("jwks_ca_file: {e}")))?;
        b = b.tls_certs_only([cert]);
    }
    b.build().map_err(|e| err(e.to_string()))
}

impl Authenticator {
    pub async fn new(
        issuers: &[JwtIssuerConfig],
        dev_token: Option<sovra_crypto::SecretBytes>,
    ) -> Result<Authenticator, JwksError> {
        let mut out = Vec::new();
        for config in issuers {
            let http = jwks_client(config)?;
            let set = Issuer::fetch(config, &http).await?;
            out.push(Issuer {
                config: config.clone(),
                jwks: RwLock::new((set, Instant::now())),
                http,
            });
        }
        Ok(Authenticator {
            issuers: out,
            dev_token,
            verified: BoundedCache::new(VERIFIED_TOKEN_CACHE_CAPACITY),
        })
    }

    /// Reloads every JWKS whose refresh interval has passed (run periodically).
    pub async fn refresh_stale(&self) {
        for i in &self.issuers {
            if i.stale() && i.reload(false).await {
                self.verified.clear();
            }
        }
    }

    pub async fn authenticate(&self, token: &str) -> Result<Principal, ApiError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(ApiError::unauthenticated("invalid token"));
        }
        if let Some(dev) = &self.dev_token
            && ct_eq(dev.expose(), token.as_bytes())
        {
            return Ok(Principal {
                org_id: DEV_ORG.into(),
                subject: DEV_SUBJECT.into(),
                roles: vec![Role::Operator, Role::Admin, Role::User],
                auth_method: AuthMethod::DevToken,
                cert_fingerprint: None,
            });
        }
        let digest = sovra_crypto::sha256(token.as_bytes());
        if let Some(hit) = self.verified.get(&digest) {
            let now = unix_now();
            if hit.valid_from <= now && now < hit.expires_at {
                crate::audit::note_token_hash_slot(hit.audit_hash.clone());
                return Ok(hit.principal.clone());
            }
        }
        let verified = self.verify_jwt(token).await?;
        crate::audit::note_token_hash_slot(verified.audit_hash.clone());
        let principal = verified.principal.clone();
        self.verified.insert(digest, std::sync::Arc::new(verified));
        Ok(principal)
    }

    async fn verify_jwt(&self, token: &str) -> Result<VerifiedToken, ApiError> {
        let invalid = |why: &str| ApiError::unauthenticated(format!("invalid token: {why}"));
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed"))?;
        if !ALLOWED_ALGS.contains(&header.alg) {
            return Err(invalid("algorithm not accepted"));
        }
        // The issuer is read unverified only to choose which keys to verify with; the
        // verification below then requires that same issuer.
        let unverified: serde_json::Map<String, serde_json::Value> =
            jsonwebtoken::dangerous::insecure_decode_claims(token)
                .map_err(|_| invalid("malformed"))?;
        let iss = unverified
            .get("iss")
            .and_then(|v| v.as_str())
            .ok_or_else(|| invalid("missing iss"))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or_else(|| invalid("unknown issuer"))?;
        let key = match issuer.find_key(header.kid.as_deref(), header.alg) {
            Some(k) => k,
            None => {
                if issuer.reload(true).await {
                    self.verified.clear();
                }
                issuer
                    .find_key(header.kid.as_deref(), header.alg)
                    .ok_or_else(|| invalid("unknown signing key"))?
            }
        };
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.leeway = CLOCK_SKEW_SECONDS;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.set_issuer(&[issuer.config.issuer.as_str()]);
        v.set_audience(&[issuer.config.audience.as_str()]);
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &v)
                .map_err(|e| {
                    use jsonwebtoken::errors::ErrorKind::*;
                    invalid(match e.kind() {
                        ExpiredSignature => "expired",
                        ImmatureSignature => "not yet valid",
                        InvalidAudience => "wrong audience",
                        InvalidIssuer => "wrong issuer",
                        InvalidSignature => "bad signature",
                        MissingRequiredClaim(_) => "missing required claim",
                        _ => "verification failed",
                    })
                })?;
        let claims = data.claims;
        let subject = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty() && s.len() <= 256)
            .ok_or_else(|| invalid("missing sub"))?;
        let org = claims
            .get(&issuer.config.org_claim)
            .and_then(|v| v.as_str())
            .filter(|o| validate_org_id(o))
            .ok_or_else(|| invalid("missing or invalid organization claim"))?;
        if !issuer.config.allowed_orgs.is_empty()
            && !issuer.config.allowed_orgs.iter().any(|o| o == org)
        {
            return Err(invalid("organization not allowed for this issuer"));
        }
        let mut roles: Vec<Role> = claims
            .get(&issuer.config.roles_claim)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str().and_then(Role::parse))
                    .collect()
            })
            .unwrap_or_default();
        if !issuer.config.allow_operator {
            roles.retain(|r| *r != Role::Operator);
        }
        if !roles.contains(&Role::User) {
            roles.push(Role::User);
        }
        // Validation required `exp` and checked `nbf` with the same leeway used here.
        let claim_secs = |name: &str| claims.get(name).and_then(|v| v.as_f64()).map(|f| f as u64);
        Ok(VerifiedToken {
            principal: Principal {
                org_id: org.to_string(),
                subject: subject.to_string(),
                roles,
                auth_method: AuthMethod::Jwt {
                    issuer: issuer.config.issuer.clone(),
                },
                cert_fingerprint: None,
            },
            valid_from: claim_secs("nbf").map_or(0, |nbf| nbf.saturating_sub(CLOCK_SKEW_SECONDS)),
            expires_at: claim_secs("exp")
                .ok_or_else(|| invalid("missing exp"))?
                .saturating_add(CLOCK_SKEW_SECONDS),
            audit_hash: Default::default(),
        })
    }
}
