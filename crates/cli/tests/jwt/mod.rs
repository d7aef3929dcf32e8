//! Test identity provider: signing keys made with aws-lc-rs, a hand-built JWKS and tokens whose
//! header and claims the test controls completely (so that forged, unsigned and alg-confused
//! tokens can be built as easily as good ones).
#![allow(dead_code)]

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use sovra_crypto::sign::pem_encode;
use std::path::Path;

pub(crate) const ISSUER: &str = "https://idp.acme.test";
pub(crate) const AUDIENCE: &str = "sovra";

pub(crate) fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A signing key of the test identity provider and its public JWK.
pub(crate) struct Signer {
    pub kid: String,
    pub alg: Algorithm,
    key: EncodingKey,
    /// The public key as a JWK (with `kid` and `alg`).
    pub jwk: Value,
    /// SubjectPublicKeyInfo DER of the public key.
    pub public_der: Vec<u8>,
}

fn alg_name(alg: Algorithm) -> String {
    serde_json::to_value(alg)
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

impl Signer {
    pub(crate) fn es256(kid: &str) -> Signer {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let kp =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = kp.public_key().as_ref().to_vec();
        assert_eq!(point.len(), 65, "uncompressed P-256 point");
        let public_der = AsDer::<PublicKeyX509Der>::as_der(kp.public_key())
            .unwrap()
            .as_ref()
            .to_vec();
        Signer {
            kid: kid.into(),
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                "x": b64url(&point[1..33]), "y": b64url(&point[33..65]),
            }),
            public_der,
        }
    }

    pub(crate) fn ed25519(kid: &str) -> Signer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let public = kp.public_key().as_ref().to_vec();
        Signer {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            key: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk: json!({
                "kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA", "use": "sig",
                "x": b64url(&public),
            }),
            public_der: public,
        }
    }

    /// An RSA-2048 key for RS256/384/512 or PS256/384/512.
    pub(crate) fn rsa(kid: &str, alg: Algorithm) -> Signer {
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let pkcs8: Pkcs8V1Der = kp.as_der().unwrap();
        let key = EncodingKey::from_rsa_pem(pem_encode("PRIVATE KEY", pkcs8.as_ref()).as_bytes())
            .unwrap();
        let public = kp.public_key();
        let public_der = AsDer::<PublicKeyX509Der>::as_der(public)
            .unwrap()
            .as_ref()
            .to_vec();
        Signer {
            kid: kid.into(),
            alg,
            key,
            jwk: json!({
                "kty": "RSA", "kid": kid, "alg": alg_name(alg), "use": "sig",
                "n": b64url(public.modulus().big_endian_without_leading_zero()),
                "e": b64url(public.exponent().big_endian_without_leading_zero()),
            }),
            public_der,
        }
    }

    /// The JWK without its `alg` member (a JWKS that does not pin algorithms).
    pub(crate) fn jwk_without_alg(&self) -> Value {
        let mut j = self.jwk.clone();
        j.as_object_mut().unwrap().remove("alg");
        j
    }

    pub(crate) fn public_pem(&self) -> String {
        pem_encode("PUBLIC KEY", &self.public_der)
    }

    /// The standard header for this key: `{"alg", "typ": "JWT", "kid"}`.
    pub(crate) fn header(&self) -> Value {
        json!({"alg": alg_name(self.alg), "typ": "JWT", "kid": self.kid})
    }

    /// A token signed by this key with its standard header.
    pub(crate) fn token(&self, claims: &Value) -> String {
        self.token_with_header(&self.header(), claims)
    }

    /// A token with any header, signed by this key with its own algorithm (whatever the header
    /// claims).
    pub(crate) fn token_with_header(&self, header: &Value, claims: &Value) -> String {
        let msg = signing_input(header, claims);
        let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &self.key, self.alg).unwrap();
        format!("{msg}.{sig}")
    }
}

/// `base64url(header) "." base64url(claims)`.
pub(crate) fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// An unsigned token (`alg: none` style): header and claims with an empty signature.
pub(crate) fn unsigned(header: &Value, claims: &Value) -> String {
    format!("{}.", signing_input(header, claims))
}

/// A token MACed with HS256 under `secret`.
pub(crate) fn hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let msg = signing_input(header, claims);
    let sig = jsonwebtoken::crypto::sign(
        msg.as_bytes(),
        &EncodingKey::from_secret(secret),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{msg}.{sig}")
}

/// Standard valid claims for `sub` in `org`, valid for five minutes.
pub(crate) fn claims(sub: &str, org: &str) -> Value {
    let t = now();
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "org": org,
        "iat": t, "nbf": t - 5, "exp": t + 300,
    })
}

/// Claims with the given roles.
pub(crate) fn claims_with_roles(sub: &str, org: &str, roles: &[&str]) -> Value {
    let mut c = claims(sub, org);
    c["roles"] = json!(roles);
    c
}

/// A JWKS document from the given JWKs.
pub(crate) fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

pub(crate) fn write_jwks(path: &Path, keys: &[Value]) {
    // Write then rename so that a reload never sees a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, jwks(keys)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A `[[auth.jwt]]` table for the server config. Its subjects are provisioned as identities
/// on first use unless `extra` says otherwise (`provision_identities = false`).
pub(crate) fn issuer_toml(issuer: &str, audience: &str, jwks_path: &Path, extra: &str) -> String {
    let provision = if extra.contains("provision_identities") {
        ""
    } else {
        "provision_identities = true\n"
    };
    format!(
        "[[auth.jwt]]\nissuer = \"{issuer}\"\naudience = \"{audience}\"\njwks = \"{}\"\n{provision}{extra}\n",
        jwks_path.display()
    )
}

/// A dev server (its dev token is the operator; the fixture orgs exist) trusting [`ISSUER`]
/// with a fresh ES256 key and `issuer_extra` in its table. Returns the directory (it outlives
/// the server and is its data directory), the issuer's signing key and the server.
pub(crate) fn dev_server(
    tag: &str,
    issuer_extra: &str,
) -> (crate::common::TempDir, Signer, crate::common::Server) {
    let dir = crate::common::TempDir::new(tag);
    let idp = Signer::es256(&format!("{tag}-key"));
    let jwks = dir.path().join("jwks.json");
    write_jwks(&jwks, std::slice::from_ref(&idp.jwk));
    let s = crate::common::Server::start_dev(
        dir.path(),
        &issuer_toml(ISSUER, AUDIENCE, &jwks, issuer_extra),
    );
    (dir, idp, s)
}

/// The identity id (and key owner) of `sub` authenticated by [`ISSUER`].
pub(crate) fn identity_of(sub: &str) -> String {
    format!("{ISSUER}#{sub}")
}
