//! End to end: JWT authentication against a real dev server with a configured issuer, per-user
//! key ownership (another user's key is indistinguishable from a key that does not exist),
//! admin-only system operations and JWKS refresh.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod jwt;

use common::{Resp, Server, TempDir, assert_error, with_key_id};
use jsonwebtoken::Algorithm;
use jwt::{AUDIENCE, ISSUER, Signer, claims, claims_with_roles, now};
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A second issuer whose JWKS does not pin algorithms (no `alg` in its JWKs) and which names
/// the organization and roles with other claims.
const ISSUER2: &str = "https://idp2.partner.test";

// ---- raw HTTP -----------------------------------------------------------------------------

struct Api {
    http: reqwest::Client,
    http1: reqwest::Client,
    base: String,
}

impl Api {
    fn new(s: &Server) -> Api {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&s.cacert).unwrap()).unwrap();
        Api {
            http: s.http(),
            http1: reqwest::Client::builder()
                .tls_certs_only([ca])
                .http1_only()
                .build()
                .unwrap(),
            base: s.addr.clone(),
        }
    }

    /// Sends a request with a raw Authorization header value (or none).
    async fn raw(
        &self,
        client: &reqwest::Client,
        method: Method,
        path: &str,
        authorization: Option<HeaderValue>,
        body: Option<&Value>,
    ) -> Result<Resp, reqwest::Error> {
        let mut req = client.request(method, format!("{}{}", self.base, path));
        if let Some(a) = authorization {
            req = req.header(AUTHORIZATION, a);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        Resp::read(req.send().await?).await
    }

    async fn with_auth(
        &self,
        method: Method,
        path: &str,
        authorization: Option<HeaderValue>,
        body: Option<&Value>,
    ) -> Resp {
        self.raw(&self.http, method, path, authorization, body)
            .await
            .unwrap()
    }

    /// A request as the holder of `token`.
    async fn call(&self, token: &str, method: Method, path: &str, body: Option<&Value>) -> Resp {
        let auth = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        self.with_auth(method, path, Some(auth), body).await
    }

    async fn create_key(&self, token: &str, name: &str, key_type: &str) -> Resp {
        self.call(
            token,
            Method::POST,
            "/api/v1/keys",
            Some(&json!({"name": name, "type": key_type})),
        )
        .await
    }

    async fn list_keys(&self, token: &str) -> Vec<Value> {
        let r = self.call(token, Method::GET, "/api/v1/keys", None).await;
        assert_eq!(r.status, 200, "{r:?}");
        r.json["keys"].as_array().unwrap().clone()
    }

    async fn encrypt(&self, token: &str, key_id: &str, plaintext: &[u8]) -> Resp {
        self.call(
            token,
            Method::POST,
            &format!("/api/v1/keys/{key_id}/encrypt"),
            Some(&json!({"plaintext": b64(plaintext)})),
        )
        .await
    }

    async fn decrypt(&self, token: &str, ciphertext: &str) -> Resp {
        self.call(
            token,
            Method::POST,
            "/api/v1/decrypt",
            Some(&json!({"ciphertext": ciphertext})),
        )
        .await
    }
}

fn b64(bytes: &[u8]) -> String {
    sovra_client::b64(bytes)
}

#[track_caller]
fn assert_unauthenticated(r: &Resp) {
    assert_error(r, 401, "unauthenticated");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{r:?}");
}

/// The error body without its request id (the only part that may differ between two answers
/// to the same question).
fn without_request_id(r: &Resp) -> Value {
    let mut v = r.json.clone();
    if let Some(e) = v.get_mut("error").and_then(|e| e.as_object_mut()) {
        e.remove("request_id");
    }
    v
}

fn random_uuid() -> String {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

// ---- the test identity providers ----------------------------------------------------------

struct Env {
    _dir: TempDir,
    server: Server,
    api: Api,
    es: Signer,
    ed: Signer,
    rs: Signer,
    ps: Signer,
    /// Issuer 2's key (its JWK has no `alg`).
    es2: Signer,
}

impl Env {
    fn start(tag: &str) -> Env {
        let dir = TempDir::new(tag);
        let es = Signer::es256("es-1");
        let ed = Signer::ed25519("ed-1");
        let rs = Signer::rsa("rs-1", Algorithm::RS256);
        let ps = Signer::rsa("ps-1", Algorithm::PS256);
        let es2 = Signer::es256("es2-1");
        let jwks1 = dir.path().join("jwks.json");
        let jwks2 = dir.path().join("jwks2.json");
        jwt::write_jwks(
            &jwks1,
            &[
                es.jwk.clone(),
                ed.jwk.clone(),
                rs.jwk.clone(),
                ps.jwk.clone(),
            ],
        );
        jwt::write_jwks(&jwks2, &[es2.jwk_without_alg()]);
        let cfg = format!(
            "{}{}",
            jwt::issuer_toml(ISSUER, AUDIENCE, &jwks1, "allow_operator = true"),
            jwt::issuer_toml(
                ISSUER2,
                "sovra-partner",
                &jwks2,
                "org_claim = \"tenant\"\nroles_claim = \"groups\""
            )
        );
        let server = Server::start_dev(dir.path(), &cfg);
        let api = Api::new(&server);
        Env {
            _dir: dir,
            server,
            api,
            es,
            ed,
            rs,
            ps,
            es2,
        }
    }

    /// A valid ES256 token for `sub` in `org`.
    fn user(&self, sub: &str, org: &str) -> String {
        self.es.token(&claims(sub, org))
    }

    fn admin(&self, sub: &str, org: &str) -> String {
        self.es.token(&claims_with_roles(sub, org, &["admin"]))
    }

    /// Claims for issuer 2 (organization in `tenant`).
    fn claims2(&self, sub: &str, tenant: &str) -> Value {
        let t = now();
        json!({"iss": ISSUER2, "aud": "sovra-partner", "sub": sub, "tenant": tenant,
               "iat": t, "exp": t + 300})
    }
}

// ---- accepted tokens ------------------------------------------------------------------------

#[tokio::test]
async fn tokens_of_each_accepted_algorithm_work_and_identity_comes_from_the_claims() {
    let env = Env::start("auth-algs");
    let api = &env.api;
    for signer in [&env.es, &env.ed, &env.rs, &env.ps] {
        let sub = format!("user-{}", signer.kid);
        let token = signer.token(&claims(&sub, "acme"));
        let r = api.create_key(&token, "k", "aes-256-gcm").await;
        assert_eq!(r.status, 201, "{:?}: {r:?}", signer.alg);
        assert_eq!(
            r.json["owner"],
            format!("{}#{sub}", jwt::ISSUER).as_str(),
            "owner is the token's sub, namespaced by its issuer"
        );
        let id = r.json["id"].as_str().unwrap().to_string();
        let enc = api.encrypt(&token, &id, b"hello").await;
        assert_eq!(enc.status, 200, "{enc:?}");
        let dec = api
            .decrypt(&token, enc.json["ciphertext"].as_str().unwrap())
            .await;
        assert_eq!(dec.status, 200, "{dec:?}");
        assert_eq!(dec.json["plaintext"], b64(b"hello"));
        // The key belongs to (org from the `org` claim, sub): the same subject in another
        // organization does not see it.
        let same_sub_other_org = signer.token(&claims(&sub, "other"));
        assert!(api.list_keys(&same_sub_other_org).await.is_empty());
        let r = api
            .call(
                &same_sub_other_org,
                Method::GET,
                &format!("/api/v1/keys/{id}"),
                None,
            )
            .await;
        assert_error(&r, 404, "not_found");
        assert_eq!(api.list_keys(&token).await.len(), 1);
    }

    // Within the 30 s clock skew: expired 10 s ago, or not valid for another 10 s.
    let mut c = claims("skew", "acme");
    c["exp"] = json!(now() - 10);
    c["nbf"] = json!(now() - 60);
    c["iat"] = json!(now() - 60);
    let r = api
        .create_key(&env.es.token(&c), "expired-10s", "aes-256-gcm")
        .await;
    assert_eq!(r.status, 201, "exp 10 s ago is within the skew: {r:?}");
    let mut c = claims("skew", "acme");
    c["nbf"] = json!(now() + 10);
    let r = api
        .create_key(&env.es.token(&c), "nbf-10s", "aes-256-gcm")
        .await;
    assert_eq!(r.status, 201, "nbf 10 s ahead is within the skew: {r:?}");

    // `aud` may be an array that contains the audience (RFC 7519 4.1.3).
    let mut c = claims("aud-array", "acme");
    c["aud"] = json!(["another-api", AUDIENCE]);
    let r = api.create_key(&env.es.token(&c), "k", "aes-256-gcm").await;
    assert_eq!(r.status, 201, "{r:?}");

    // Issuer 2 names the organization in `tenant`; its `org` claim means nothing.
    let mut c = env.claims2("partner-user", "partner");
    c["org"] = json!("acme");
    let t2 = env.es2.token(&c);
    let r = api.create_key(&t2, "p", "aes-256-gcm").await;
    assert_eq!(r.status, 201, "{r:?}");
    let pid = r.json["id"].as_str().unwrap().to_string();
    let acme_same_sub = env.user("partner-user", "acme");
    let r = api
        .call(
            &acme_same_sub,
            Method::GET,
            &format!("/api/v1/keys/{pid}"),
            None,
        )
        .await;
    assert_error(&r, 404, "not_found");
}

/// OIDC Core 2: `sub` is unique only within its issuer. Two configured issuers that both name
/// a subject "alice" in org "acme" are two different people, but ownership compares only
/// (org, sub), so issuer 2's "alice" sees and uses issuer 1's alice's keys.
#[tokio::test]
async fn the_same_subject_from_another_issuer_is_another_user() {
    let env = Env::start("auth-iss-sub");
    let api = &env.api;
    let alice1 = env.user("alice", "acme");
    let r = api.create_key(&alice1, "k", "aes-256-gcm").await;
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.json["id"].as_str().unwrap().to_string();
    let alice2 = env.es2.token(&env.claims2("alice", "acme"));
    assert!(
        api.list_keys(&alice2).await.is_empty(),
        "issuer 2's alice lists issuer 1's alice's keys"
    );
    let r = api.encrypt(&alice2, &id, b"x").await;
    assert_error(&r, 404, "not_found");
}

/// In dev mode the dev token is the principal (org `dev`, sub `dev-admin`). A configured
/// issuer that mints a token with those claims becomes that principal and gets its keys.
#[tokio::test]
async fn a_jwt_cannot_become_the_dev_token_principal() {
    let env = Env::start("auth-dev-sub");
    let api = &env.api;
    let dev = env.server.token.clone().unwrap();
    let r = api.create_key(&dev, "dev-key", "aes-256-gcm").await;
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.json["id"].as_str().unwrap().to_string();
    let forged = env.user("dev-admin", "dev");
    assert!(
        api.list_keys(&forged).await.is_empty(),
        "a JWT lists the dev token's keys"
    );
    let r = api.encrypt(&forged, &id, b"x").await;
    assert_error(&r, 404, "not_found");
}

// ---- rejected tokens ------------------------------------------------------------------------

/// Every way a bearer credential can be wrong; each case presents the identity of the valid
/// user (sub "alice", org "acme") so that an accepted forgery would show up in her key list.
fn bad_credentials(env: &Env) -> Vec<(&'static str, HeaderValue)> {
    let sub = "alice";
    let org = "acme";
    let good = || claims(sub, org);
    let bearer = |t: &str| HeaderValue::from_str(&format!("Bearer {t}")).unwrap();
    let mut cases: Vec<(&'static str, String)> = Vec::new();
    let es = &env.es;

    let mut c = good();
    c["exp"] = json!(now() - 300);
    c["iat"] = json!(now() - 900);
    c["nbf"] = json!(now() - 900);
    cases.push(("expired 5 min ago", es.token(&c)));
    let mut c = good();
    c["nbf"] = json!(now() + 300);
    cases.push(("nbf 5 min ahead", es.token(&c)));
    let mut c = good();
    c["aud"] = json!("another-api");
    cases.push(("wrong audience", es.token(&c)));
    let mut c = good();
    c["aud"] = json!(["another-api", "third-api"]);
    cases.push(("audience array without ours", es.token(&c)));
    let mut c = good();
    c["aud"] = json!("sovra-partner");
    cases.push(("issuer 2's audience on issuer 1", es.token(&c)));
    let mut c = good();
    c["iss"] = json!("https://evil.test");
    cases.push(("unknown issuer", es.token(&c)));
    let mut c = good();
    c["iss"] = json!(ISSUER2);
    c["aud"] = json!("sovra-partner");
    c["tenant"] = json!(org);
    cases.push(("issuer 2's claims signed by issuer 1's key", es.token(&c)));
    for claim in ["exp", "aud", "iss", "sub", "org"] {
        let mut c = good();
        c.as_object_mut().unwrap().remove(claim);
        cases.push((
            match claim {
                "exp" => "missing exp",
                "aud" => "missing aud",
                "iss" => "missing iss",
                "sub" => "missing sub",
                _ => "missing org",
            },
            es.token(&c),
        ));
    }
    let mut c = good();
    c["exp"] = json!((now() + 300).to_string());
    cases.push(("exp as a string", es.token(&c)));
    let mut c = good();
    c["sub"] = json!("");
    cases.push(("empty sub", es.token(&c)));
    let mut c = good();
    c["sub"] = json!(42);
    cases.push(("numeric sub", es.token(&c)));
    let mut c = good();
    c["org"] = json!("ACME");
    cases.push(("org not a valid org id", es.token(&c)));
    let mut c = good();
    c["org"] = json!("../acme");
    cases.push(("org with a path", es.token(&c)));
    let mut c = good();
    c["org"] = json!(["acme"]);
    cases.push(("org as an array", es.token(&c)));

    // Lifetimes past the default maximum of one hour (threat row 12: short-lived tokens).
    let mut c = good();
    c["iat"] = json!(now());
    c["exp"] = json!(now() + 3601);
    cases.push(("lifetime one second past the maximum", es.token(&c)));
    let mut c = good();
    c["iat"] = json!(now() - 7200);
    c["nbf"] = json!(now() - 7200);
    c["exp"] = json!(now() + 60);
    cases.push(("issued two hours before it expires", es.token(&c)));
    let mut c = good();
    c.as_object_mut().unwrap().remove("iat");
    c["exp"] = json!(now() + 3600 + 31 + 5);
    cases.push(("no iat, expiring past the maximum", es.token(&c)));
    let mut c = good();
    c["iat"] = json!(now() + 20);
    c["exp"] = json!(now() + 86_400);
    cases.push((
        "iat in the future to hide a day-long lifetime",
        es.token(&c),
    ));
    // A critical header extension Sovra does not understand (RFC 7515 section 4.1.11).
    for crit in [
        json!(["exp"]),
        json!(["b64"]),
        json!(["urn:example:x"]),
        json!([]),
    ] {
        let mut h = es.header();
        h["crit"] = crit.clone();
        if crit[0] == "b64" {
            h["b64"] = json!(false);
        }
        if crit[0] == "urn:example:x" {
            h["urn:example:x"] = json!(1);
        }
        cases.push(("a crit header", es.token_with_header(&h, &good())));
    }

    // Unsigned tokens.
    for alg in ["none", "None", "NONE", "nOnE"] {
        cases.push((
            "alg none",
            jwt::unsigned(&json!({"alg": alg, "typ": "JWT"}), &good()),
        ));
    }
    cases.push((
        "alg none with a kid",
        jwt::unsigned(&json!({"alg": "none", "kid": es.kid}), &good()),
    ));
    let valid = es.token(&good());
    let valid_sig = valid.rsplit('.').next().unwrap().to_string();
    cases.push((
        "alg none with a real signature",
        format!(
            "{}.{valid_sig}",
            jwt::signing_input(&json!({"alg": "none"}), &good())
        ),
    ));
    cases.push((
        "valid token with its signature removed",
        format!("{}.", valid.rsplit_once('.').unwrap().0),
    ));
    cases.push((
        "valid token without its signature part",
        valid.rsplit_once('.').unwrap().0.to_string(),
    ));
    cases.push((
        "valid token with a truncated signature",
        valid[..valid.len() - 4].to_string(),
    ));

    // HMAC: with a guessable secret, and the classic confusion attack that uses the issuer's
    // public key as the HMAC secret.
    cases.push((
        "HS256 with a secret",
        jwt::hs256(&json!({"alg": "HS256", "typ": "JWT"}), &good(), b"secret"),
    ));
    let rs = &env.rs;
    for (what, secret) in [
        (
            "HS256 keyed with the RSA public key PEM",
            rs.public_pem().into_bytes(),
        ),
        (
            "HS256 keyed with the RSA public key DER",
            rs.public_der.clone(),
        ),
        (
            "HS256 keyed with the EC public key PEM",
            es.public_pem().into_bytes(),
        ),
        (
            "HS256 keyed with the EC public key DER",
            es.public_der.clone(),
        ),
    ] {
        let kid = if what.contains("RSA") {
            &rs.kid
        } else {
            &es.kid
        };
        cases.push((
            what,
            jwt::hs256(&json!({"alg": "HS256", "kid": kid}), &good(), &secret),
        ));
    }
    cases.push(("HS512 keyed with the RSA public key PEM", {
        let msg = jwt::signing_input(&json!({"alg": "HS512", "kid": rs.kid}), &good());
        let sig = jsonwebtoken::crypto::sign(
            msg.as_bytes(),
            &jsonwebtoken::EncodingKey::from_secret(rs.public_pem().as_bytes()),
            Algorithm::HS512,
        )
        .unwrap();
        format!("{msg}.{sig}")
    }));

    // Algorithm swaps and foreign keys.
    let attacker_rsa = Signer::rsa("rs-evil", Algorithm::RS256);
    let attacker_ec = Signer::es256(&es.kid);
    let attacker_ed = Signer::ed25519("ed-evil");
    cases.push((
        "header RS256 naming the EC key, signed by another RSA key",
        attacker_rsa.token_with_header(&json!({"alg": "RS256", "kid": es.kid}), &good()),
    ));
    cases.push((
        "header ES256 naming the EC key, signed by another EC key",
        attacker_ec.token(&good()),
    ));
    cases.push((
        "header EdDSA naming the EC key, signed by another Ed25519 key",
        attacker_ed.token_with_header(&json!({"alg": "EdDSA", "kid": es.kid}), &good()),
    ));
    cases.push((
        "header PS256 naming the RS256-only key, signed by that key with RS256",
        rs.token_with_header(&json!({"alg": "PS256", "kid": rs.kid}), &good()),
    ));
    cases.push((
        "header RS256 naming the PS256-only key, signed by that key with PS256",
        env.ps
            .token_with_header(&json!({"alg": "RS256", "kid": env.ps.kid}), &good()),
    ));
    cases.push((
        "header ES384 naming the ES256 key",
        es.token_with_header(&json!({"alg": "ES384", "kid": es.kid}), &good()),
    ));
    cases.push((
        "header ES256 naming the Ed25519 key, signed by the EC key",
        es.token_with_header(&json!({"alg": "ES256", "kid": env.ed.kid}), &good()),
    ));
    // Issuer 2 does not pin algorithms in its JWKS: the key type must still decide.
    let c2 = env.claims2(sub, org);
    cases.push((
        "issuer 2: header RS256 naming its EC key, signed by an RSA key",
        attacker_rsa.token_with_header(&json!({"alg": "RS256", "kid": env.es2.kid}), &c2),
    ));
    cases.push((
        "issuer 2: header EdDSA naming its EC key, signed by an Ed25519 key",
        attacker_ed.token_with_header(&json!({"alg": "EdDSA", "kid": env.es2.kid}), &c2),
    ));
    cases.push((
        "issuer 2: HS256 keyed with its EC public key",
        jwt::hs256(
            &json!({"alg": "HS256", "kid": env.es2.kid}),
            &c2,
            env.es2.public_pem().as_bytes(),
        ),
    ));
    cases.push((
        "issuer 2: org in `org` instead of its `tenant` claim",
        env.es2.token(&{
            let mut c = c2.clone();
            c.as_object_mut().unwrap().remove("tenant");
            c["org"] = json!(org);
            c
        }),
    ));
    let unknown = Signer::es256("es-unknown");
    cases.push(("signed by a key not in the JWKS", unknown.token(&good())));
    cases.push((
        "kid with a path",
        unknown.token_with_header(&json!({"alg": "ES256", "kid": "../../jwks.json"}), &good()),
    ));
    cases.push((
        "attacker key embedded in the header (jwk)",
        unknown.token_with_header(
            &json!({"alg": "ES256", "kid": "es-unknown", "jwk": unknown.jwk}),
            &good(),
        ),
    ));
    cases.push((
        "attacker JWKS URL in the header (jku)",
        unknown.token_with_header(
            &json!({"alg": "ES256", "kid": "es-unknown", "jku": "https://evil.test/jwks.json"}),
            &good(),
        ),
    ));
    cases.push((
        "no kid while the JWKS holds several keys",
        es.token_with_header(&json!({"alg": "ES256", "typ": "JWT"}), &good()),
    ));
    // A valid token of another user with alice's claims pasted in.
    let mallory = es.token(&claims("mallory", org));
    let parts: Vec<&str> = mallory.split('.').collect();
    cases.push((
        "payload swapped under another token's signature",
        format!(
            "{}.{}.{}",
            parts[0],
            jwt::b64url(good().to_string().as_bytes()),
            parts[2]
        ),
    ));

    // Garbage.
    for g in [
        "garbage",
        "a.b.c",
        "...",
        "e30.e30.e30",
        "eyJhbGciOiJFUzI1NiJ9.eyJ9.",
        "eyJhbGciOiJFUzI1NiJ9",
        "a.b.c.d.e",
        "Bearer",
        "null",
        "{}",
        "%00%00",
    ] {
        cases.push(("garbage", g.to_string()));
    }
    cases.push(("two tokens", format!("{valid} {valid}")));
    cases.push(("valid token with a dot appended", format!("{valid}.")));

    let mut out: Vec<(&'static str, HeaderValue)> =
        cases.into_iter().map(|(w, t)| (w, bearer(&t))).collect();
    let valid = es.token(&good());
    out.push((
        "Basic credentials",
        HeaderValue::from_static("Basic YWxpY2U6cGFzc3dvcmQ="),
    ));
    out.push((
        "a valid token under another scheme",
        HeaderValue::from_str(&format!("Token {valid}")).unwrap(),
    ));
    out.push((
        "a valid token without a scheme",
        HeaderValue::from_str(&valid).unwrap(),
    ));
    out.push(("Bearer with nothing", HeaderValue::from_static("Bearer ")));
    out.push((
        "non-ASCII bytes",
        HeaderValue::from_bytes(b"Bearer \xff\xfe\xfd.\x80.\x81").unwrap(),
    ));
    out
}

#[tokio::test]
async fn bad_credentials_are_401_and_change_nothing() {
    let env = Env::start("auth-bad");
    let api = &env.api;
    let alice = env.user("alice", "acme");
    let r = api.create_key(&alice, "baseline", "aes-256-gcm").await;
    assert_eq!(r.status, 201, "{r:?}");
    let key_id = r.json["id"].as_str().unwrap().to_string();
    let ct = api.encrypt(&alice, &key_id, b"secret").await.json["ciphertext"]
        .as_str()
        .unwrap()
        .to_string();

    let cases = bad_credentials(&env);
    assert!(cases.len() > 60, "{} cases", cases.len());
    for (i, (what, auth)) in cases.into_iter().enumerate() {
        let name = format!("forged-{i}");
        let body = json!({"name": name, "type": "aes-256-gcm"});
        let r = api
            .with_auth(
                Method::POST,
                "/api/v1/keys",
                Some(auth.clone()),
                Some(&body),
            )
            .await;
        assert_eq!(r.status, 401, "{what}: {r:?}");
        assert_unauthenticated(&r);
        let r = api
            .with_auth(Method::GET, "/api/v1/keys", Some(auth.clone()), None)
            .await;
        assert_eq!(r.status, 401, "{what}: {r:?}");
        assert_unauthenticated(&r);
        let r = api
            .with_auth(
                Method::POST,
                "/api/v1/decrypt",
                Some(auth),
                Some(&json!({"ciphertext": ct})),
            )
            .await;
        assert_eq!(r.status, 401, "{what}: {r:?}");
        assert_unauthenticated(&r);
        assert!(!r.text.contains(&b64(b"secret")), "{what}");
    }
    // No Authorization header at all.
    for (m, p) in [
        (Method::POST, "/api/v1/keys"),
        (Method::GET, "/api/v1/keys"),
        (Method::GET, &*format!("/api/v1/keys/{key_id}")),
        (Method::POST, "/api/v1/sys/seal"),
        (Method::POST, "/api/v1/sys/kek/rotate"),
    ] {
        let body = json!({"name": "no-auth", "type": "aes-256-gcm"});
        let r = api.with_auth(m, p, None, Some(&body)).await;
        assert_unauthenticated(&r);
    }

    let keys = api.list_keys(&alice).await;
    assert_eq!(keys.len(), 1, "nothing was created: {keys:?}");
    assert_eq!(keys[0]["name"], "baseline");
    assert_eq!(keys[0]["latest_version"], 1);
    let r = api.decrypt(&alice, &ct).await;
    assert_eq!(r.status, 200, "{r:?}");
    // The dev token (org `dev`) never saw alice's key either.
    let dev = env.server.token.clone().unwrap();
    assert!(api.list_keys(&dev).await.is_empty());
}

/// A validly signed token for alice, padded with a claim to more than `size` bytes.
fn padded_token(env: &Env, size: usize) -> HeaderValue {
    let mut c = claims("alice", "acme");
    c["pad"] = json!("x".repeat(size));
    let token = env.es.token(&c);
    assert!(token.len() > size);
    HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
}

/// Tokens beyond what any identity provider issues are refused before any parsing: over the
/// 16 KiB token limit of the API (reachable over HTTP/1.1) and far over the header limits of
/// the HTTP layer. Nothing is created and the server carries on.
#[tokio::test]
async fn oversized_tokens_are_refused() {
    let env = Env::start("auth-big");
    let api = &env.api;
    let alice = env.user("alice", "acme");
    assert_eq!(api.create_key(&alice, "k", "aes-256-gcm").await.status, 201);
    let body = json!({"name": "big", "type": "aes-256-gcm"});

    // ~20 KiB over HTTP/1.1 reaches the API, which answers with its JSON 401.
    let r = api
        .raw(
            &api.http1,
            Method::POST,
            "/api/v1/keys",
            Some(padded_token(&env, 20 * 1024)),
            Some(&body),
        )
        .await
        .unwrap();
    assert_unauthenticated(&r);

    // Over HTTP/2 the same token, and a 1 MiB one over either protocol, exceed the HTTP
    // layer's header limits (16 KiB header list for h2, ~400 KiB buffer for h1): refused
    // with 431 or a reset stream, never accepted.
    for (size, proto, client) in [
        (20 * 1024, "h2", &api.http),
        (1024 * 1024, "h2", &api.http),
        (1024 * 1024, "http/1.1", &api.http1),
    ] {
        let auth = padded_token(&env, size);
        match api
            .raw(
                client,
                Method::POST,
                "/api/v1/keys",
                Some(auth),
                Some(&body),
            )
            .await
        {
            Ok(r) if r.status == 401 => assert_unauthenticated(&r),
            Ok(r) => assert_eq!(r.status, 431, "{size} bytes over {proto}: {r:?}"),
            Err(e) => assert!(!e.is_timeout(), "{size} bytes over {proto}: {e}"),
        }
    }
    // The server is fine and nothing was created.
    let keys = api.list_keys(&alice).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
}

/// The API promises a JSON error for every failure: a 1 MiB bearer token must reach the
/// authenticator (over HTTP/1.1 and HTTP/2) and get `unauthenticated`, not hyper's bare 431
/// or a reset stream.
#[tokio::test]
async fn a_one_mib_token_gets_the_json_401() {
    let env = Env::start("auth-1mib");
    let api = &env.api;
    for client in [&api.http, &api.http1] {
        let r = api
            .raw(
                client,
                Method::GET,
                "/api/v1/keys",
                Some(padded_token(&env, 1024 * 1024)),
                None,
            )
            .await
            .expect("an HTTP answer");
        assert_unauthenticated(&r);
    }
}

// ---- ownership ------------------------------------------------------------------------------

#[tokio::test]
async fn another_users_key_is_indistinguishable_from_a_missing_one() {
    let env = Env::start("auth-owner");
    let api = &env.api;
    let a = env.user("alice", "acme");
    let b = env.user("bob", "acme");
    let c = env.user("carol", "other");
    let a_in_other_org = env.user("alice", "other");
    let acme_admin = env.admin("root", "acme");
    let dev = env.server.token.clone().unwrap();

    let mk = |r: Resp| -> String {
        assert_eq!(r.status, 201, "{r:?}");
        r.json["id"].as_str().unwrap().to_string()
    };
    let aes = mk(api.create_key(&a, "k", "aes-256-gcm").await);
    let sig = mk(api.create_key(&a, "sig", "ed25519").await);
    let mac = mk(api.create_key(&a, "mac", "hmac-sha256").await);
    let enc = api.encrypt(&a, &aes, b"alice's secret").await;
    assert_eq!(enc.status, 200, "{enc:?}");
    let ct = enc.json["ciphertext"].as_str().unwrap().to_string();
    let signed = api
        .call(
            &a,
            Method::POST,
            &format!("/api/v1/keys/{sig}/sign"),
            Some(&json!({"message": b64(b"m")})),
        )
        .await;
    assert_eq!(signed.status, 200, "{signed:?}");
    let signature = signed.json["signature"].as_str().unwrap().to_string();

    // (method, path template with {id}, body template with {ct} standing for a ciphertext of
    // that key id)
    let ops: Vec<(Method, &str, &str, Option<Value>)> = vec![
        (Method::GET, "/api/v1/keys/{id}", "aes", None),
        (
            Method::PATCH,
            "/api/v1/keys/{id}",
            "aes",
            Some(json!({"description": "mine now"})),
        ),
        (
            Method::POST,
            "/api/v1/keys/{id}/encrypt",
            "aes",
            Some(json!({"plaintext": b64(b"x")})),
        ),
        (
            Method::POST,
            "/api/v1/keys/{id}/encrypt/batch",
            "aes",
            Some(json!({"items": [{"plaintext": b64(b"x")}]})),
        ),
        (Method::POST, "/api/v1/keys/{id}/rotate", "aes", None),
        (Method::POST, "/api/v1/keys/{id}/disable", "aes", None),
        (Method::POST, "/api/v1/keys/{id}/enable", "aes", None),
        (
            Method::POST,
            "/api/v1/keys/{id}/schedule-deletion",
            "aes",
            Some(json!({"pending_days": 7})),
        ),
        (
            Method::POST,
            "/api/v1/keys/{id}/cancel-deletion",
            "aes",
            None,
        ),
        (
            Method::POST,
            "/api/v1/keys/{id}/datakey",
            "aes",
            Some(json!({})),
        ),
        (
            Method::POST,
            "/api/v1/keys/{id}/datakey-without-plaintext",
            "aes",
            Some(json!({})),
        ),
        (
            Method::POST,
            "/api/v1/keys/{id}/reencrypt",
            "aes",
            Some(json!({"ciphertext": "{ct}"})),
        ),
        (
            Method::POST,
            "/api/v1/decrypt",
            "aes",
            Some(json!({"ciphertext": "{ct}"})),
        ),
        (
            Method::POST,
            "/api/v1/keys/{id}/sign",
            "sig",
            Some(json!({"message": b64(b"m")})),
        ),
        (
            Method::POST,
            "/api/v1/keys/{id}/verify",
            "sig",
            Some(json!({"message": b64(b"m"), "signature": signature})),
        ),
        (Method::GET, "/api/v1/keys/{id}/public-key", "sig", None),
        (
            Method::POST,
            "/api/v1/keys/{id}/mac",
            "mac",
            Some(json!({"message": b64(b"m")})),
        ),
        (
            Method::POST,
            "/api/v1/keys/{id}/verify-mac",
            "mac",
            Some(json!({"message": b64(b"m"), "mac": b64(&[0u8; 32])})),
        ),
        (Method::GET, "/api/v1/keys/{id}", "sig", None),
        (Method::GET, "/api/v1/keys/{id}", "mac", None),
    ];
    let fill = |body: &Option<Value>, ct: &str| -> Option<Value> {
        body.as_ref()
            .map(|b| serde_json::from_str(&b.to_string().replace("{ct}", ct)).unwrap())
    };
    for (who, token) in [
        ("bob (same org)", &b),
        ("carol (other org)", &c),
        ("alice's sub in another org", &a_in_other_org),
        ("an admin of alice's org", &acme_admin),
        ("the dev admin", &dev),
    ] {
        for (method, path, which, body) in &ops {
            let id = match *which {
                "aes" => &aes,
                "sig" => &sig,
                _ => &mac,
            };
            let theirs = api
                .call(
                    token,
                    method.clone(),
                    &path.replace("{id}", id),
                    fill(body, &ct).as_ref(),
                )
                .await;
            assert_error(&theirs, 404, "not_found");
            // The same question about a key id that does not exist at all.
            let missing = random_uuid();
            let nothing = api
                .call(
                    token,
                    method.clone(),
                    &path.replace("{id}", &missing),
                    fill(body, &with_key_id(&ct, &missing)).as_ref(),
                )
                .await;
            assert_error(&nothing, 404, "not_found");
            assert_eq!(
                without_request_id(&theirs),
                without_request_id(&nothing),
                "{who} {method} {path}"
            );
            assert_eq!(
                theirs.text.len(),
                nothing.text.len(),
                "{who} {method} {path}"
            );
            assert!(!theirs.text.contains(&b64(b"alice's secret")));
        }
        // Batch decrypt: the item's error is the same as for a missing key.
        let r = api
            .call(
                token,
                Method::POST,
                "/api/v1/decrypt/batch",
                Some(&json!({"items": [
                    {"ciphertext": ct},
                    {"ciphertext": with_key_id(&ct, &random_uuid())},
                ]})),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let res = r.json["results"].as_array().unwrap();
        assert!(res[0]["plaintext"].is_null(), "{who}: {r:?}");
        assert_eq!(res[0]["error"]["code"], "not_found", "{who}: {r:?}");
        assert_eq!(res[0]["error"], res[1]["error"], "{who}: {r:?}");
        // And their key lists do not show alice's keys.
        let listed = api.list_keys(token).await;
        assert!(
            listed
                .iter()
                .all(|k| k["id"] != aes.as_str() && k["id"] != sig.as_str()),
            "{who}: {listed:?}"
        );
    }

    // Alice's keys are untouched: enabled, version 1, no description, no deletion date.
    for id in [&aes, &sig, &mac] {
        let r = api
            .call(&a, Method::GET, &format!("/api/v1/keys/{id}"), None)
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json["state"], "enabled", "{r:?}");
        assert_eq!(r.json["latest_version"], 1, "{r:?}");
        assert!(r.json["description"].is_null(), "{r:?}");
        assert!(r.json["deletion_date"].is_null(), "{r:?}");
    }
    let r = api.decrypt(&a, &ct).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["plaintext"], b64(b"alice's secret"));

    // Names are unique per owner, not per org.
    let r = api.create_key(&a, "k", "aes-256-gcm").await;
    assert_error(&r, 409, "conflict");
    let r = api.create_key(&a, "k", "ed25519").await;
    assert_error(&r, 409, "conflict");
    let bk = mk(api.create_key(&b, "k", "aes-256-gcm").await);
    let ck = mk(api.create_key(&c, "k", "aes-256-gcm").await);
    let a_list: Vec<String> = api
        .list_keys(&a)
        .await
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(a_list.len(), 3, "{a_list:?}");
    assert!(!a_list.contains(&bk) && !a_list.contains(&ck));
    let b_list = api.list_keys(&b).await;
    assert_eq!(b_list.len(), 1);
    assert_eq!(b_list[0]["id"], bk.as_str());
    assert_eq!(b_list[0]["owner"], format!("{}#bob", jwt::ISSUER).as_str());
    // Alice cannot reach bob's key either.
    let r = api.encrypt(&a, &bk, b"x").await;
    assert_error(&r, 404, "not_found");
}

// ---- roles ----------------------------------------------------------------------------------

#[tokio::test]
async fn system_operations_need_the_admin_role() {
    let env = Env::start("auth-admin");
    let api = &env.api;
    let user = env.user("alice", "acme");
    let r = api.create_key(&user, "k", "aes-256-gcm").await;
    assert_eq!(r.status, 201, "{r:?}");
    let key = r.json["id"].as_str().unwrap().to_string();
    let ct1 = api.encrypt(&user, &key, b"before rotation").await.json["ciphertext"]
        .as_str()
        .unwrap()
        .to_string();
    let other = env.user("carol", "other");
    let r = api.create_key(&other, "k", "aes-256-gcm").await;
    let other_key = r.json["id"].as_str().unwrap().to_string();
    let other_ct = api.encrypt(&other, &other_key, b"other org").await.json["ciphertext"]
        .as_str()
        .unwrap()
        .to_string();

    let mut role_string = claims("eve", "acme");
    role_string["roles"] = json!("admin");
    let mut admin_in_wrong_claim = env.claims2("eve", "acme");
    admin_in_wrong_claim["roles"] = json!(["admin"]);
    let non_admins = [
        ("no roles", user.clone()),
        (
            "role user",
            env.es.token(&claims_with_roles("eve", "acme", &["user"])),
        ),
        (
            "role Admin (case)",
            env.es.token(&claims_with_roles("eve", "acme", &["Admin"])),
        ),
        ("roles as a string", env.es.token(&role_string)),
        (
            "issuer 2 with admin in `roles` (its claim is `groups`)",
            env.es2.token(&admin_in_wrong_claim),
        ),
    ];
    for (what, token) in &non_admins {
        for path in ["/api/v1/sys/kek/rotate", "/api/v1/sys/seal"] {
            let r = api.call(token, Method::POST, path, None).await;
            assert_eq!(r.status, 403, "{what} {path}: {r:?}");
            assert_error(&r, 403, "forbidden");
        }
    }
    let status: Value = api
        .with_auth(Method::GET, "/api/v1/sys/seal-status", None, None)
        .await
        .json;
    assert_eq!(status["sealed"], false, "still unsealed");

    let admin = env.admin("root", "acme");
    let r = api
        .call(&admin, Method::POST, "/api/v1/sys/kek/rotate", None)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let v1 = r.json["kek_version"].as_u64().unwrap();
    assert!(v1 >= 2, "{r:?}");
    // Old ciphertexts decrypt, new ones work, and the other org is unaffected.
    let r = api.decrypt(&user, &ct1).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["plaintext"], b64(b"before rotation"));
    let ct2 = api.encrypt(&user, &key, b"after rotation").await.json["ciphertext"]
        .as_str()
        .unwrap()
        .to_string();
    let r = api.create_key(&user, "k2", "aes-256-gcm").await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = api.decrypt(&other, &other_ct).await;
    assert_eq!(r.status, 200, "{r:?}");

    // Issuer 2's admin role comes from `groups`.
    let mut g = env.claims2("root2", "acme");
    g["groups"] = json!(["admin"]);
    let r = api
        .call(
            &env.es2.token(&g),
            Method::POST,
            "/api/v1/sys/kek/rotate",
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["kek_version"].as_u64().unwrap(), v1 + 1);

    // After the background rewrap, everything still decrypts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (ct, pt) in [
        (&ct1, &b"before rotation"[..]),
        (&ct2, &b"after rotation"[..]),
    ] {
        let r = api.decrypt(&user, ct).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json["plaintext"], b64(pt));
    }

    // Sealing is server-wide: an org admin may not; an operator may, and then key operations
    // are refused with 503 until unsealed.
    let r = api
        .call(&admin, Method::POST, "/api/v1/sys/seal", None)
        .await;
    assert_error(&r, 403, "forbidden");
    let operator = env
        .es
        .token(&claims_with_roles("ops", "acme", &["operator"]));
    let r = api
        .call(&operator, Method::POST, "/api/v1/sys/seal", None)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["sealed"], true);
    let r = api.call(&user, Method::GET, "/api/v1/keys", None).await;
    assert_error(&r, 503, "sealed");
}

// ---- JWKS refresh ---------------------------------------------------------------------------

#[tokio::test]
async fn jwks_reloads_on_an_unknown_kid_at_most_every_ten_seconds() {
    let dir = TempDir::new("auth-jwks");
    let k1 = Signer::es256("k1");
    let k2 = Signer::ed25519("k2");
    let k3 = Signer::rsa("k3", Algorithm::PS256);
    let path: PathBuf = dir.path().join("jwks.json");
    jwt::write_jwks(&path, std::slice::from_ref(&k1.jwk));
    let s = Server::start_dev(dir.path(), &jwt::issuer_toml(ISSUER, AUDIENCE, &path, ""));
    let loaded_at = Instant::now();
    let api = &Api::new(&s);
    let tok = |k: &Signer| k.token(&claims("alice", "acme"));
    let list = |t: String| async move { api.call(&t, Method::GET, "/api/v1/keys", None).await };

    assert_eq!(list(tok(&k1)).await.status, 200);
    assert_unauthenticated(&list(tok(&k2)).await);

    // The IdP publishes k2. Within 10 s of the last load a new kid does not trigger a reload.
    jwt::write_jwks(&path, &[k1.jwk.clone(), k2.jwk.clone()]);
    if loaded_at.elapsed() < Duration::from_secs(8) {
        assert_unauthenticated(&list(tok(&k2)).await);
    }
    sleep_until(loaded_at + Duration::from_secs(11)).await;
    let r = list(tok(&k2)).await;
    assert_eq!(r.status, 200, "k2 accepted after the reload: {r:?}");
    let reloaded_at = Instant::now();
    assert_eq!(list(tok(&k1)).await.status, 200);

    // A broken JWKS document keeps the last good keys.
    std::fs::write(&path, "{ this is not a JWKS").unwrap();
    sleep_until(reloaded_at + Duration::from_secs(11)).await;
    assert_unauthenticated(&list(tok(&k3)).await); // triggers a failed reload
    let failed_at = Instant::now();
    // This very token is now in the verified-token cache.
    let k1_cached = tok(&k1);
    assert_eq!(list(k1_cached.clone()).await.status, 200);
    assert_eq!(list(tok(&k2)).await.status, 200);

    // The IdP rotates: k1 is withdrawn, k3 added. After the next reload k1 no longer works.
    jwt::write_jwks(&path, &[k2.jwk.clone(), k3.jwk.clone()]);
    sleep_until(failed_at + Duration::from_secs(11)).await;
    let r = list(tok(&k3)).await;
    assert_eq!(r.status, 200, "k3 accepted after the reload: {r:?}");
    assert_unauthenticated(&list(tok(&k1)).await);
    assert_unauthenticated(&list(k1_cached).await);
    assert_eq!(list(tok(&k2)).await.status, 200);
    assert!(s.log_text().contains("JWKS reload failed"));
}

/// Verified tokens are cached by hash, but never past their expiry (plus the clock skew the
/// verification itself allows), and never before `nbf`.
#[tokio::test]
async fn a_cached_token_stops_working_when_it_expires() {
    let env = Env::start("auth-cache-expiry");
    let api = &env.api;
    // Expired 25 s ago: still inside the 30 s skew for about 5 more seconds.
    let mut c = claims("alice", "acme");
    c["exp"] = json!(jwt::now() - 25);
    c["nbf"] = json!(jwt::now() - 60);
    let token = env.es.token(&c);
    let issued = Instant::now();
    let first = api.call(&token, Method::GET, "/api/v1/keys", None).await;
    assert_eq!(first.status, 200, "within the skew: {first:?}");
    let again = api.call(&token, Method::GET, "/api/v1/keys", None).await;
    assert_eq!(again.status, 200, "served from the cache: {again:?}");
    sleep_until(issued + Duration::from_secs(7)).await;
    assert_unauthenticated(&api.call(&token, Method::GET, "/api/v1/keys", None).await);
}

async fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        tokio::time::sleep(t - now).await;
    }
}

/// Another owner's key takes the path of a missing id: both read the database before they are
/// refused, so neither answers faster (threat row 17: another user's key id reveals nothing).
/// Shown deterministically by taking the database away: the owner's cached key still works,
/// while another user's id and a missing id both fail alike for want of the database, where a
/// cached refusal would have answered 404 at once.
#[tokio::test]
async fn another_users_key_costs_a_database_read_like_a_missing_one() {
    let k = Signer::es256("foreign");
    let url = common::fresh_pg_database();
    let db = url.rsplit('/').next().unwrap().to_string();
    let admin = common::pg_admin_url();
    // Without durable audit events, so that requests need the database only to find keys.
    let (_dir, _, s) = server_with_issuer(
        "auth-foreign-path",
        std::slice::from_ref(&k.jwk),
        &format!("database_url = \"{url}\"\n[audit]\nenabled = false"),
        "",
    );
    let api = &Api::new(&s);
    let alice = k.token(&claims("alice", "acme"));
    let bob = k.token(&claims("bob", "acme"));
    let r = api.create_key(&alice, "alices", "aes-256-gcm").await;
    assert_eq!(r.status, 201, "{r:?}");
    let key = r.json["id"].as_str().unwrap().to_string();
    let missing = random_uuid();
    assert_eq!(api.encrypt(&alice, &key, b"x").await.status, 200);
    for id in [&key, &missing] {
        let r = api.encrypt(&bob, id, b"x").await;
        assert_error(&r, 404, "not_found");
    }

    common::take_pg_database_away(&db);
    let owner = api.encrypt(&alice, &key, b"x").await;
    assert_eq!(
        owner.status, 200,
        "the owner's key is served from the cache: {owner:?}"
    );
    let foreign = api.encrypt(&bob, &key, b"x").await;
    let absent = api.encrypt(&bob, &missing, b"x").await;
    assert_eq!(
        absent.status, 503,
        "a missing id reads the database: {absent:?}"
    );
    assert_eq!(
        (foreign.status, &foreign.json["error"]["code"]),
        (absent.status, &absent.json["error"]["code"]),
        "another user's key must take the missing id's path: {foreign:?}"
    );

    common::give_pg_database_back(&db);
    drop(s);
    common::psql(
        &admin,
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    );
}

// ---- what an issuer may assert -------------------------------------------------------------

/// A dev server trusting one issuer (`ISSUER`, `AUDIENCE`) whose JWKS file holds `keys`:
/// `config` goes before the issuer's table, `issuer_extra` into it. Returns the directory (it
/// must outlive the server), the JWKS path and the server.
fn server_with_issuer(
    tag: &str,
    keys: &[Value],
    config: &str,
    issuer_extra: &str,
) -> (TempDir, PathBuf, Server) {
    let dir = TempDir::new(tag);
    let path: PathBuf = dir.path().join("jwks.json");
    jwt::write_jwks(&path, keys);
    let s = Server::start_dev(
        dir.path(),
        &format!(
            "{config}\n{}",
            jwt::issuer_toml(ISSUER, AUDIENCE, &path, issuer_extra)
        ),
    );
    (dir, path, s)
}

/// The lifetime cap is configurable per issuer and exact: `exp` − `iat` at the cap is accepted,
/// one second more is refused, before and after a token is cached.
#[tokio::test]
async fn token_lifetime_is_capped_per_issuer() {
    let k = Signer::es256("life");
    let (_dir, _, s) = server_with_issuer(
        "auth-lifetime",
        std::slice::from_ref(&k.jwk),
        "",
        "max_token_lifetime_seconds = 600",
    );
    let api = &Api::new(&s);
    let token = |lifetime: i64| {
        let mut c = claims("alice", "acme");
        let t = now();
        c["iat"] = json!(t);
        c["exp"] = json!(t + lifetime);
        k.token(&c)
    };
    let at_cap = token(600);
    for _ in 0..2 {
        let r = api.call(&at_cap, Method::GET, "/api/v1/keys", None).await;
        assert_eq!(r.status, 200, "a token of exactly the cap: {r:?}");
    }
    let past_cap = token(601);
    for _ in 0..2 {
        let r = api.call(&past_cap, Method::GET, "/api/v1/keys", None).await;
        assert_unauthenticated(&r);
        assert!(r.text.contains("lifetime"), "{r:?}");
    }
}

/// An issuer's `algorithms` narrows what its tokens may use: a correctly signed RS256 token
/// from a key in its JWKS is refused when only ES256 is configured.
#[tokio::test]
async fn an_issuer_accepts_only_its_configured_algorithms() {
    let es = Signer::es256("es");
    let rs = Signer::rsa("rs", Algorithm::RS256);
    let (_dir, _, s) = server_with_issuer(
        "auth-algs",
        &[es.jwk.clone(), rs.jwk.clone()],
        "",
        "algorithms = [\"ES256\"]",
    );
    let api = &Api::new(&s);
    let r = api
        .call(
            &es.token(&claims("alice", "acme")),
            Method::GET,
            "/api/v1/keys",
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = api
        .call(
            &rs.token(&claims("alice", "acme")),
            Method::GET,
            "/api/v1/keys",
            None,
        )
        .await;
    assert_unauthenticated(&r);
    assert!(r.text.contains("algorithm not accepted"), "{r:?}");
}

/// A symmetric or unknown algorithm in an issuer's `algorithms` stops the server at startup.
#[test]
fn symmetric_or_unknown_issuer_algorithms_are_refused_at_startup() {
    for algs in ["[\"HS256\"]", "[\"none\"]", "[]", "[\"ES257\"]"] {
        let dir = TempDir::new("auth-algs-config");
        let path: PathBuf = dir.path().join("jwks.json");
        jwt::write_jwks(&path, &[Signer::es256("es").jwk]);
        let cfg = jwt::issuer_toml(ISSUER, AUDIENCE, &path, &format!("algorithms = {algs}"));
        let out = Server::run_dev_expecting_failure(dir.path(), &cfg);
        assert!(out.contains("algorithm"), "{algs}: {out}");
    }
}

/// Fail closed (threat row S-3): when an issuer's JWKS cannot be fetched for longer than
/// `jwks_max_age_seconds`, its tokens are refused, one already verified and cached too, and
/// `/ready` names the issuer; once a fetch succeeds again both recover.
#[tokio::test]
async fn an_issuer_whose_keys_cannot_be_refreshed_is_refused_and_not_ready() {
    let k = Signer::es256("age");
    let (_dir, path, s) = server_with_issuer(
        "auth-jwks-age",
        std::slice::from_ref(&k.jwk),
        "",
        "jwks_refresh_seconds = 1\njwks_max_age_seconds = 3",
    );
    let api = &Api::new(&s);
    let http = s.http();
    let ready = || {
        let req = http.get(s.url("/ready"));
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let cached = k.token(&claims("alice", "acme"));
    assert_eq!(
        api.call(&cached, Method::GET, "/api/v1/keys", None)
            .await
            .status,
        200
    );
    assert_eq!(ready().await.0, 200);

    // The IdP's JWKS becomes unreadable: the last good keys serve until they are too old.
    std::fs::write(&path, "{ not a JWKS").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = api.call(&cached, Method::GET, "/api/v1/keys", None).await;
        if r.status == 401 {
            assert!(r.text.contains("could not be refreshed"), "{r:?}");
            break;
        }
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            Instant::now() < deadline,
            "the stale keys were trusted for 30 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let fresh = k.token(&claims("bob", "acme"));
    assert_unauthenticated(&api.call(&fresh, Method::GET, "/api/v1/keys", None).await);
    let (status, body) = ready().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "issuer_keys_expired", "{body}");
    assert!(body["detail"].as_str().unwrap().contains(ISSUER), "{body}");

    // The IdP is back: the next refresh restores both.
    jwt::write_jwks(&path, std::slice::from_ref(&k.jwk));
    let deadline = Instant::now() + Duration::from_secs(30);
    while api
        .call(&fresh, Method::GET, "/api/v1/keys", None)
        .await
        .status
        != 200
    {
        assert!(Instant::now() < deadline, "the recovered JWKS was not used");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(ready().await.0, 200);
    assert_eq!(
        api.call(&cached, Method::GET, "/api/v1/keys", None)
            .await
            .status,
        200
    );
}

/// An issuer speaks only for its `allowed_orgs`, and its `operator` role counts only with
/// `allow_operator = true` (sealing is server-wide; an org's IdP must not be able to seal).
#[tokio::test]
async fn issuers_are_limited_to_their_orgs_and_operator_needs_allowing() {
    let dir = TempDir::new("auth-issuer-limits");
    let k = Signer::es256("limits");
    let path: PathBuf = dir.path().join("jwks.json");
    jwt::write_jwks(&path, std::slice::from_ref(&k.jwk));
    let s = Server::start_dev(
        dir.path(),
        &jwt::issuer_toml(ISSUER, AUDIENCE, &path, "allowed_orgs = [\"acme\"]"),
    );
    let http = s.http();
    let call = |token: String, method: Method, path: &str| {
        let req = http.request(method, s.url(path)).bearer_auth(token);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let (st, _) = call(
        k.token(&claims("alice", "acme")),
        Method::GET,
        "/api/v1/keys",
    )
    .await;
    assert_eq!(st, 200);
    let (st, body) = call(
        k.token(&claims("alice", "globex")),
        Method::GET,
        "/api/v1/keys",
    )
    .await;
    assert_eq!(st, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthenticated");
    let operator = k.token(&claims_with_roles("ops", "acme", &["operator", "admin"]));
    let (st, body) = call(operator, Method::POST, "/api/v1/sys/seal").await;
    assert_eq!(st, 403, "{body}");
    let (_, status) = call(
        k.token(&claims("alice", "acme")),
        Method::GET,
        "/api/v1/sys/seal-status",
    )
    .await;
    assert_eq!(status["sealed"], false, "still unsealed");
}
