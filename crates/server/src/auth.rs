//! Authentication at the HTTP edge: the credential a request carries goes to the core's
//! [`Authenticator`]; this module supplies where issuers' keys come from (a JWKS file, or an
//! https URL fetched with limits) and the layer that authenticates every route the route table
//! declares authenticated. The layer puts the [`Authenticated`] result in the request (for the
//! `Auth` extractor, the per-identity rate limit) and in the response (for the audit event).

use crate::AppState;
use crate::config::JwtIssuerConfig;
use crate::error::ApiError;
use crate::routes::table::{self, Access};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sovra_core::clock::Clock;
use sovra_core::identity::{
    AuthError, Authenticated, Authenticator, Credential, IssuerPolicy, JwksError, KeySetSource,
    TrustedIssuer,
};
use std::sync::Arc;
use std::time::Duration;

/// Largest JWKS document accepted from an issuer.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// An issuer's JWKS: a file, read again on each refresh, or an https URL.
enum JwksSource {
    File(String),
    Https { url: String, http: reqwest::Client },
}

#[async_trait::async_trait]
impl KeySetSource for JwksSource {
    async fn fetch(&self) -> Result<String, String> {
        match self {
            JwksSource::File(path) => tokio::fs::read_to_string(path)
                .await
                .map_err(|e| e.to_string()),
            JwksSource::Https { url, http } => {
                let resp = http.get(url).send().await.map_err(|e| e.to_string())?;
                if !resp.status().is_success() {
                    return Err(format!("HTTP {}", resp.status()));
                }
                if resp
                    .content_length()
                    .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
                {
                    return Err("JWKS document is too large".into());
                }
                let body = resp.bytes().await.map_err(|e| e.to_string())?;
                if body.len() > MAX_JWKS_BYTES {
                    return Err("JWKS document is too large".into());
                }
                String::from_utf8(body.to_vec()).map_err(|_| "JWKS is not UTF-8".into())
            }
        }
    }

    fn name(&self) -> &str {
        match self {
            JwksSource::File(path) => path,
            JwksSource::Https { url, .. } => url,
        }
    }
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

/// The authenticator the configuration describes: its JWT issuers, and the dev token in dev
/// mode. Fetches every issuer's keys once; an issuer that cannot be reached stops startup.
pub async fn authenticator(
    issuers: &[JwtIssuerConfig],
    dev_token: Option<sovra_crypto::SecretBytes>,
    clock: Arc<dyn Clock>,
) -> Result<Authenticator, JwksError> {
    let mut trusted = Vec::with_capacity(issuers.len());
    for config in issuers {
        let keys = if config.jwks.starts_with("https://") {
            JwksSource::Https {
                url: config.jwks.clone(),
                http: jwks_client(config)?,
            }
        } else {
            JwksSource::File(config.jwks.clone())
        };
        trusted.push(TrustedIssuer {
            policy: IssuerPolicy {
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
                org_claim: config.org_claim.clone(),
                roles_claim: config.roles_claim.clone(),
                allowed_orgs: config.allowed_orgs.clone(),
                allow_operator: config.allow_operator,
                provision_identities: config.provision_identities,
                refresh: Duration::from_secs(config.jwks_refresh_seconds),
                algorithms: sovra_core::identity::parse_algorithms(&config.algorithms).map_err(
                    |message| JwksError::Load {
                        source_name: config.jwks.clone(),
                        message,
                    },
                )?,
                max_token_lifetime: Duration::from_secs(config.max_token_lifetime_seconds),
                max_key_set_age: Duration::from_secs(config.jwks_max_age_seconds),
            },
            keys: Box::new(keys),
        });
    }
    Authenticator::new(trusted, dev_token, clock).await
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        ApiError::unauthenticated(e.to_string())
    }
}

/// The bearer token of `Authorization: Bearer <token>`; the scheme name is case-insensitive
/// (RFC 9110 section 11.1) and the token is trimmed.
pub(crate) fn bearer_token(req: &Request) -> Result<&str, ApiError> {
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthenticated("missing bearer token"))?;
    let value = header
        .to_str()
        .map_err(|_| ApiError::unauthenticated("malformed Authorization header"))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(token.trim()),
        _ => Err(ApiError::unauthenticated(
            "expected Authorization: Bearer <token>",
        )),
    }
}

/// The authentication layer: routes the table declares authenticated get their caller
/// verified here, before any handler runs, and charged to the caller's rate limit for the
/// route's class; a request without a valid credential is answered 401, one over its limit
/// 429. The result goes into the request's extensions (read by the `Auth` extractor) and into
/// the response's (read by the audit layer, so a refused request names its caller too).
pub async fn authenticate(
    State(st): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Access::Authenticated(class) = table::spec(req.method(), req.extensions()).access else {
        return next.run(req).await;
    };
    let authenticated = match bearer_token(&req) {
        Ok(token) => st.auth.authenticate(Credential::Bearer(token)).await,
        Err(e) => return e.into_response(),
    };
    let verified: Arc<Authenticated> = match authenticated {
        Ok(a) => a,
        Err(e) => return ApiError::from(e).into_response(),
    };
    // Charged before admission, which reads the store: a valid token of an unknown org or
    // identity is refused at its identity's rate, not at the database's.
    if let Err(limited) = crate::ratelimit::charge_identity(&st, class, &verified.principal) {
        let mut resp = limited.into_response();
        resp.extensions_mut().insert(verified);
        return resp;
    }
    // The credential is valid; it is let in only as a stored identity of an active org (an
    // operator whose org is not a record yet keeps server-wide actions only: the core
    // authorizes nothing else for a principal that was not admitted).
    let authenticated = match st.kms.admit(&verified).await {
        Ok(admitted) => admitted,
        Err(e) => {
            let mut resp = ApiError::from(e).into_response();
            resp.extensions_mut().insert(verified);
            return resp;
        }
    };
    req.extensions_mut().insert(authenticated.clone());
    let mut resp = next.run(req).await;
    resp.extensions_mut().insert(authenticated);
    resp
}
