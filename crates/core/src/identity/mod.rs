//! Who is calling: credentials, their verification, and the [`Principal`] that every core call
//! is made on behalf of. Only [`Authenticator`] turns a credential into a principal.

mod authn;
mod principal;

pub use authn::{
    ALLOWED_ALGS, AuthError, Authenticated, Authenticator, CLOCK_SKEW_SECONDS, Credential,
    DEFAULT_JWKS_REFRESH_SECONDS, DEFAULT_MAX_KEY_SET_AGE_SECONDS,
    DEFAULT_MAX_TOKEN_LIFETIME_SECONDS, DEV_ORG, DEV_SUBJECT, IssuerPolicy, JwksError,
    KeySetSource, MAX_TOKEN_LEN, TrustedIssuer, parse_algorithms, parse_jwks, select_key,
};
pub use principal::{AuthMethod, Principal, Role};
