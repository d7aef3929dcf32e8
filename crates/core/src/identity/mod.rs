//! Who is calling: credentials, their verification, and the [`Principal`] that every core call
//! is made on behalf of. Only [`Authenticator`] turns a credential into a principal.

mod authn;
mod principal;

pub use authn::{
    ALLOWED_ALGS, AuthError, Authenticated, Authenticator, CLOCK_SKEW_SECONDS, Credential, DEV_ORG,
    DEV_SUBJECT, IssuerPolicy, JwksError, KeySetSource, MAX_TOKEN_LEN, TrustedIssuer, parse_jwks,
    select_key,
};
pub use principal::{AuthMethod, Principal, Role};
