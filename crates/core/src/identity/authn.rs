//! Authentication: a [`Credential`] in, an [`Authenticated`] principal out, or a refusal.
//! Bearer tokens are the dev token (only in `sovra server --dev`) or JWTs from configured
//! issuers: asymmetric algorithms only (each issuer may narrow them); `exp`, `iss` and `aud`
//! required; no lifetime beyond the issuer's maximum; no `crit` header (no JWS extension is
//! understood, RFC 7515 §4.1.11); 30 seconds of clock skew. An issuer whose keys could not be
//! fetched for longer than its bound authenticates nothing (fail closed). Where an issuer's keys come from (a file, an https URL) is the caller's concern,
//! behind [`KeySetSource`]. Nothing here writes to the audit log or charges a rate limit: the
//! result carries what those layers need.

use super::principal::{AuthMethod, Principal, Role};
use crate::cache::BoundedCache;
use crate::clock::{Clock, Timestamp};
use crate::ids::OrgId;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sovra_crypto::SecretBytes;
use sovra_crypto::secret::ct_eq;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

pub const CLOCK_SKEW_SECONDS: u64 = 30;
/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// An unknown `kid` triggers at most one JWKS reload per this interval.
const MIN_RELOAD_INTERVAL: Duration = Duration::from_secs(10);
/// Why a token of an issuer whose keys are too old is refused.
const KEYS_TOO_OLD: &str = "the issuer's keys could not be refreshed";
/// Most bytes of a subject.
const MAX_SUBJECT_LEN: usize = 256;

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

/// The dev token's organization and subject.
pub const DEV_ORG: &str = "dev";
pub const DEV_SUBJECT: &str = "dev-admin";

/// Verified tokens remembered (by SHA-256 of the token) so that a client reusing its token
/// does not pay a signature verification per request.
const VERIFIED_TOKEN_CACHE_CAPACITY: usize = 10_000;

/// What a caller presents.
pub enum Credential<'a> {
    /// `Authorization: Bearer …`: the dev token or a JWT.
    Bearer(&'a str),
    /// A TLS client certificate (DER). Accepted once an organization's CA issues them; until
    /// then every certificate is refused.
    ClientCertificate(&'a [u8]),
}

/// A verified credential: the principal, and the facts the audit event of each request it
/// authenticates needs.
pub struct Authenticated {
    pub principal: Principal,
    /// The keyed hash of the bearer token for audit events, computed by the first request
    /// that needs it and kept with the verified token: the token is hundreds of bytes, and
    /// each request would otherwise hash it again. Valid because the audit HMAC key never
    /// changes; a rotation of it must clear the verified-token cache.
    pub token_hash: Arc<OnceLock<String>>,
    /// Whether a subject with no identity record yet becomes one on first use (the issuer's
    /// `provision_identities`; always for the dev token).
    pub provision_identity: bool,
}

/// Why a credential was refused. The message is safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("invalid token")]
    InvalidToken,
    #[error("invalid token: {0}")]
    Rejected(&'static str),
    #[error("client certificates are not accepted by this server")]
    CertificateNotAccepted,
}

/// How one issuer's tokens are checked and mapped to a principal.
#[derive(Debug, Clone)]
pub struct IssuerPolicy {
    pub issuer: String,
    pub audience: String,
    /// The claim that names the user's organization.
    pub org_claim: String,
    /// The claim (array of strings) that lists roles.
    pub roles_claim: String,
    /// Organizations this issuer may speak for; empty: any.
    pub allowed_orgs: Vec<String>,
    /// Whether this issuer's `operator` role is honoured (sealing is server-wide).
    pub allow_operator: bool,
    /// Subjects without an identity record become one (kind from their roles) on first use;
    /// otherwise they are refused until an admin registers them.
    pub provision_identities: bool,
    /// How often the key set is fetched again.
    pub refresh: Duration,
    /// The algorithms accepted from this issuer: a subset of [`ALLOWED_ALGS`].
    pub algorithms: Vec<Algorithm>,
    /// The longest token lifetime accepted: `exp` − `iat`, and `exp` − now (less the clock
    /// skew), may not exceed it.
    pub max_token_lifetime: Duration,
    /// How long the last successfully fetched key set stays usable while fetching fails; past
    /// it, this issuer's tokens are refused, cached ones included, until a fetch succeeds.
    pub max_key_set_age: Duration,
}

pub const DEFAULT_JWKS_REFRESH_SECONDS: u64 = 300;
/// One hour: a stolen token is useful for at most that long (threat row 12).
pub const DEFAULT_MAX_TOKEN_LIFETIME_SECONDS: u64 = 3600;
/// One hour without a successful JWKS fetch, twelve refresh intervals at the default.
pub const DEFAULT_MAX_KEY_SET_AGE_SECONDS: u64 = 3600;

/// Where an issuer's JWKS document comes from.
#[async_trait::async_trait]
pub trait KeySetSource: Send + Sync {
    /// The JWKS document's text.
    async fn fetch(&self) -> Result<String, String>;
    /// Names the source in errors (a path or URL; never a secret).
    fn name(&self) -> &str;
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot load JWKS {source_name}: {message}")]
    Load {
        source_name: String,
        message: String,
    },
}

/// A trusted issuer: its policy and where its keys come from.
pub struct TrustedIssuer {
    pub policy: IssuerPolicy,
    pub keys: Box<dyn KeySetSource>,
}

struct Issuer {
    policy: IssuerPolicy,
    source: Box<dyn KeySetSource>,
    jwks: RwLock<KeySet>,
}

/// An issuer's current keys: when a fetch was last tried (paces reloads) and when one last
/// succeeded (bounds how long the keys are trusted without a successful fetch).
struct KeySet {
    keys: JwkSet,
    attempted: Instant,
    fetched: Timestamp,
}

/// A verified token's result and the window in which the token is valid (seconds since the
/// epoch, clock skew included): a cache hit outside it is treated as a miss.
struct VerifiedToken {
    authenticated: Arc<Authenticated>,
    /// Which of the authenticator's issuers signed it, so that a hit is refused while that
    /// issuer's keys are too old.
    issuer: usize,
    valid_from: u64,
    expires_at: u64,
}

pub struct Authenticator {
    issuers: Vec<Issuer>,
    /// The dev token and the one principal it authenticates.
    dev: Option<(SecretBytes, Arc<Authenticated>)>,
    /// Cleared whenever an issuer's keys change, so a key removed from a JWKS stops
    /// authenticating at once.
    verified: BoundedCache<[u8; 32], VerifiedToken>,
    clock: Arc<dyn Clock>,
}

impl Issuer {
    async fn fetch(source: &dyn KeySetSource) -> Result<JwkSet, JwksError> {
        let err = |message: String| JwksError::Load {
            source_name: source.name().to_string(),
            message,
        };
        let text = source.fetch().await.map_err(err)?;
        parse_jwks(&text).map_err(err)
    }

    fn due_for_refresh(&self) -> bool {
        let state = self.jwks.read().unwrap_or_else(|e| e.into_inner());
        state.attempted.elapsed() >= self.policy.refresh
    }

    /// Whether the last successful fetch is older than the policy allows.
    fn keys_too_old(&self, now: Timestamp) -> bool {
        let state = self.jwks.read().unwrap_or_else(|e| e.into_inner());
        let age_ms = now.as_millis().saturating_sub(state.fetched.as_millis());
        age_ms >= 0 && age_ms as u128 > self.policy.max_key_set_age.as_millis()
    }

    /// Reloads the JWKS; on failure keeps the last good set (and logs). A forced reload (an
    /// unknown kid) claims the reload slot before fetching, so a burst of forged tokens causes
    /// at most one fetch per interval. Returns whether the set of keys changed.
    async fn reload(&self, force: bool, clock: &dyn Clock) -> bool {
        if force {
            let mut guard = self.jwks.write().unwrap_or_else(|e| e.into_inner());
            if guard.attempted.elapsed() < MIN_RELOAD_INTERVAL {
                return false;
            }
            guard.attempted = Instant::now();
        }
        match Self::fetch(self.source.as_ref()).await {
            Ok(keys) => {
                let mut guard = self.jwks.write().unwrap_or_else(|e| e.into_inner());
                let changed = guard.keys != keys;
                *guard = KeySet {
                    keys,
                    attempted: Instant::now(),
                    fetched: clock.now(),
                };
                changed
            }
            Err(e) => {
                tracing::warn!(issuer = %self.policy.issuer, error = %e, "JWKS reload failed; keeping the previous keys until they are too old");
                self.jwks
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .attempted = Instant::now();
                false
            }
        }
    }

    fn find_key(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let state = self.jwks.read().unwrap_or_else(|e| e.into_inner());
        select_key(&state.keys, kid, alg)
    }
}

/// The algorithms a configuration names (`"ES256"`, ...), each one of [`ALLOWED_ALGS`]; an
/// empty list, an unknown name or a symmetric algorithm is an error.
pub fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, String> {
    if names.is_empty() {
        return Err("at least one algorithm is needed".into());
    }
    names
        .iter()
        .map(|name| {
            name.parse::<Algorithm>()
                .ok()
                .filter(|alg| ALLOWED_ALGS.contains(alg))
                .ok_or_else(|| {
                    format!(
                        "algorithm {name:?} is not accepted; choose among {}",
                        ALLOWED_ALGS.map(|a| format!("{a:?}")).join(", ")
                    )
                })
        })
        .collect()
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

impl Authenticator {
    /// Fetches every issuer's keys once; an issuer whose keys cannot be loaded stops startup.
    pub async fn new(
        issuers: Vec<TrustedIssuer>,
        dev_token: Option<SecretBytes>,
        clock: Arc<dyn Clock>,
    ) -> Result<Authenticator, JwksError> {
        let mut out = Vec::new();
        for TrustedIssuer { policy, keys } in issuers {
            let set = Issuer::fetch(keys.as_ref()).await?;
            out.push(Issuer {
                policy,
                source: keys,
                jwks: RwLock::new(KeySet {
                    keys: set,
                    attempted: Instant::now(),
                    fetched: clock.now(),
                }),
            });
        }
        let dev = match dev_token {
            Some(token) => {
                let org = OrgId::parse(DEV_ORG).map_err(|e| JwksError::Load {
                    source_name: "dev".into(),
                    message: e.to_string(),
                })?;
                let principal = Principal::new(
                    org,
                    DEV_SUBJECT,
                    vec![Role::Operator, Role::Admin, Role::User],
                    AuthMethod::DevToken,
                );
                let authenticated = Arc::new(Authenticated {
                    principal,
                    token_hash: Default::default(),
                    provision_identity: true,
                });
                Some((token, authenticated))
            }
            None => None,
        };
        Ok(Authenticator {
            issuers: out,
            dev,
            verified: BoundedCache::new(VERIFIED_TOKEN_CACHE_CAPACITY),
            clock,
        })
    }

    /// Reloads every JWKS whose refresh interval has passed (run periodically).
    pub async fn refresh_stale(&self) {
        for i in &self.issuers {
            if i.due_for_refresh() && i.reload(false, self.clock.as_ref()).await {
                self.verified.clear();
            }
        }
    }

    /// The issuers whose keys are older than their policy allows: their tokens are refused
    /// until a fetch succeeds (readiness reports them).
    pub fn issuers_with_expired_keys(&self) -> Vec<&str> {
        let now = self.clock.now();
        self.issuers
            .iter()
            .filter(|i| i.keys_too_old(now))
            .map(|i| i.policy.issuer.as_str())
            .collect()
    }

    /// Whether `issuer` is one of the configured JWT issuers (identities are registered only
    /// for subjects of those).
    pub fn trusts_issuer(&self, issuer: &str) -> bool {
        self.issuers.iter().any(|i| i.policy.issuer == issuer)
    }

    /// The shortest refresh interval of the issuers: how often [`Self::refresh_stale`] needs
    /// to run.
    pub fn shortest_refresh(&self) -> Option<Duration> {
        self.issuers.iter().map(|i| i.policy.refresh).min()
    }

    pub async fn authenticate(
        &self,
        credential: Credential<'_>,
    ) -> Result<Arc<Authenticated>, AuthError> {
        match credential {
            Credential::Bearer(token) => self.bearer(token).await,
            Credential::ClientCertificate(_) => Err(AuthError::CertificateNotAccepted),
        }
    }

    /// Whether `token` is the dev token, or a JWT verified earlier that is still cached, within
    /// its validity and its issuer's key age: what authenticating it would accept without a
    /// signature verification.
    pub fn already_verified(&self, token: &str) -> bool {
        matches!(self.known(token), Some(Ok(_)))
    }

    /// The dev token's principal, or a verified token's from the cache while it is valid (a
    /// refusal if its issuer's keys are too old); `None` when the token needs verifying.
    fn known(&self, token: &str) -> Option<Result<Arc<Authenticated>, AuthError>> {
        if let Some((dev_token, dev)) = &self.dev
            && ct_eq(dev_token.expose(), token.as_bytes())
        {
            return Some(Ok(dev.clone()));
        }
        let hit = self.verified.get(&sovra_crypto::sha256(token.as_bytes()))?;
        let now = self.clock.now();
        let secs = now.as_secs();
        if !(hit.valid_from <= secs && secs < hit.expires_at) {
            return None;
        }
        if self.issuers[hit.issuer].keys_too_old(now) {
            return Some(Err(AuthError::Rejected(KEYS_TOO_OLD)));
        }
        Some(Ok(hit.authenticated.clone()))
    }

    async fn bearer(&self, token: &str) -> Result<Arc<Authenticated>, AuthError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::InvalidToken);
        }
        if let Some(known) = self.known(token) {
            return known;
        }
        let digest = sovra_crypto::sha256(token.as_bytes());
        let verified = self.verify_jwt(token).await?;
        let authenticated = verified.authenticated.clone();
        self.verified.insert(digest, Arc::new(verified));
        Ok(authenticated)
    }

    async fn verify_jwt(&self, token: &str) -> Result<VerifiedToken, AuthError> {
        let invalid = AuthError::Rejected;
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed"))?;
        if !ALLOWED_ALGS.contains(&header.alg) {
            return Err(invalid("algorithm not accepted"));
        }
        // A critical extension must be understood to be honoured; none is.
        if header.crit.is_some() {
            return Err(invalid("critical header extension not understood"));
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
        let (issuer_index, issuer) = self
            .issuers
            .iter()
            .enumerate()
            .find(|(_, i)| i.policy.issuer == iss)
            .ok_or_else(|| invalid("unknown issuer"))?;
        if !issuer.policy.algorithms.contains(&header.alg) {
            return Err(invalid("algorithm not accepted for this issuer"));
        }
        let key = match issuer.find_key(header.kid.as_deref(), header.alg) {
            Some(k) => k,
            None => {
                if issuer.reload(true, self.clock.as_ref()).await {
                    self.verified.clear();
                }
                issuer
                    .find_key(header.kid.as_deref(), header.alg)
                    .ok_or_else(|| invalid("unknown signing key"))?
            }
        };
        if issuer.keys_too_old(self.clock.now()) {
            return Err(invalid(KEYS_TOO_OLD));
        }
        let policy = &issuer.policy;
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.leeway = CLOCK_SKEW_SECONDS;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.set_issuer(&[policy.issuer.as_str()]);
        v.set_audience(&[policy.audience.as_str()]);
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
            .filter(|s| !s.is_empty() && s.len() <= MAX_SUBJECT_LEN)
            .ok_or_else(|| invalid("missing sub"))?;
        let org = claims
            .get(&policy.org_claim)
            .and_then(|v| v.as_str())
            .and_then(|o| OrgId::parse(o).ok())
            .ok_or_else(|| invalid("missing or invalid organization claim"))?;
        if !policy.allowed_orgs.is_empty() && !policy.allowed_orgs.iter().any(|o| org.as_str() == o)
        {
            return Err(invalid("organization not allowed for this issuer"));
        }
        let mut roles: Vec<Role> = claims
            .get(&policy.roles_claim)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str().and_then(Role::parse))
                    .collect()
            })
            .unwrap_or_default();
        if !policy.allow_operator {
            roles.retain(|r| *r != Role::Operator);
        }
        if !roles.contains(&Role::User) {
            roles.push(Role::User);
        }
        // Validation required `exp` and checked `nbf` with the same leeway used here.
        let claim_secs = |name: &str| claims.get(name).and_then(|v| v.as_f64()).map(|f| f as u64);
        let exp = claim_secs("exp").ok_or_else(|| invalid("missing exp"))?;
        let max_lifetime = policy.max_token_lifetime.as_secs();
        let now = self.clock.now().as_secs();
        if claim_secs("iat").is_some_and(|iat| exp.saturating_sub(iat) > max_lifetime)
            || exp.saturating_sub(now) > max_lifetime.saturating_add(CLOCK_SKEW_SECONDS)
        {
            return Err(invalid("lifetime exceeds this issuer's maximum"));
        }
        let principal = Principal::new(
            org,
            subject,
            roles,
            AuthMethod::Jwt {
                issuer: policy.issuer.clone(),
            },
        );
        Ok(VerifiedToken {
            authenticated: Arc::new(Authenticated {
                principal,
                token_hash: Default::default(),
                provision_identity: policy.provision_identities,
            }),
            issuer: issuer_index,
            valid_from: claim_secs("nbf").map_or(0, |nbf| nbf.saturating_sub(CLOCK_SKEW_SECONDS)),
            expires_at: exp.saturating_add(CLOCK_SKEW_SECONDS),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, Timestamp};

    fn authenticator(dev_token: Option<&str>) -> Authenticator {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(Authenticator::new(
            Vec::new(),
            dev_token.map(|t| SecretBytes::from_slice(t.as_bytes())),
            ManualClock::new(Timestamp::from_millis(0)),
        ))
        .unwrap()
    }

    fn refused(a: &Authenticator, c: Credential<'_>) -> AuthError {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        match rt.block_on(a.authenticate(c)) {
            Ok(ok) => panic!("authenticated {:?}", ok.principal),
            Err(e) => e,
        }
    }

    /// The dev token authenticates the dev identity, one principal shared by its requests; a
    /// token that differs in any way, or no dev token configured, authenticates nothing.
    #[test]
    fn only_the_exact_dev_token_authenticates_the_dev_identity() {
        let a = authenticator(Some("sovra-dev-secret"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let first = rt
            .block_on(a.authenticate(Credential::Bearer("sovra-dev-secret")))
            .unwrap();
        let p = &first.principal;
        assert_eq!(p.org().as_str(), DEV_ORG);
        assert_eq!(p.identity().as_str(), "dev-token#dev-admin");
        assert_eq!(*p.auth_method(), AuthMethod::DevToken);
        assert!(p.has_role(Role::Operator) && p.has_role(Role::Admin) && p.has_role(Role::User));
        let second = rt
            .block_on(a.authenticate(Credential::Bearer("sovra-dev-secret")))
            .unwrap();
        assert!(
            Arc::ptr_eq(&first, &second),
            "one principal, one token-hash slot"
        );
        for wrong in ["sovra-dev-secreT", "sovra-dev-secret ", "sovra-dev", "x"] {
            assert!(matches!(
                refused(&a, Credential::Bearer(wrong)),
                AuthError::Rejected(_)
            ));
        }
        let none = authenticator(None);
        assert!(matches!(
            refused(&none, Credential::Bearer("sovra-dev-secret")),
            AuthError::Rejected(_)
        ));
    }

    #[test]
    fn empty_oversized_and_certificate_credentials_are_refused() {
        let a = authenticator(Some("dev"));
        assert_eq!(refused(&a, Credential::Bearer("")), AuthError::InvalidToken);
        let huge = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(
            refused(&a, Credential::Bearer(&huge)),
            AuthError::InvalidToken
        );
        // No organization CA issues client certificates yet: every certificate is refused.
        assert_eq!(
            refused(&a, Credential::ClientCertificate(b"\x30\x82\x01\x00")),
            AuthError::CertificateNotAccepted
        );
    }
}
