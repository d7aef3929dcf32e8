//! End to end: rate limits per identity and endpoint class, and per source IP for
//! unauthenticated requests, against a real server with small limits and JWTs for several
//! users of a test identity provider.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod jwt;

use common::{DevApi, Resp, Server, TempDir, assert_message_has, send};
use jwt::{AUDIENCE, ISSUER, Signer, claims};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

/// Small buckets refilling at one request per second, so a test can spend one quickly and
/// wait for a refill.
const LIMITS: &str = "
[rate_limits.read]
per_second = 1
burst = 20
[rate_limits.crypto]
per_second = 1
burst = 5
[rate_limits.key_admin]
per_second = 1
burst = 10
[rate_limits.rsa]
per_second = 1
burst = 2
[rate_limits.unauthenticated]
per_second = 1
burst = 5
";

/// Small buckets that take minutes to refill, so that "refused right after" does not depend
/// on how fast the machine is.
const SLOW: &str = "
[rate_limits.crypto]
per_second = 0.01
burst = 5
[rate_limits.rsa]
per_second = 0.01
burst = 241
[rate_limits.unauthenticated]
per_second = 0.01
burst = 5
";

/// The `Retry-After` of an answer, which when present must be whole seconds.
fn retry_after(r: &Resp) -> Option<u64> {
    r.headers.get("retry-after").map(|v| {
        v.to_str()
            .unwrap()
            .parse()
            .expect("Retry-After in whole seconds")
    })
}

struct Env {
    api: DevApi,
    signer: Signer,
}

impl Env {
    fn start(tag: &str, limits: &str) -> Env {
        let signer = Signer::es256("rl-1");
        let api = DevApi::start_with(tag, |dir| {
            let jwks = dir.join("jwks.json");
            jwt::write_jwks(&jwks, std::slice::from_ref(&signer.jwk));
            // The limits first: they may start with top-level keys.
            format!(
                "{limits}\n{}",
                jwt::issuer_toml(ISSUER, AUDIENCE, &jwks, "")
            )
        });
        Env { api, signer }
    }

    fn token(&self, user: &str) -> String {
        self.signer.token(&claims(user, "acme"))
    }

    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Value) -> Resp {
        let body = (method != Method::GET).then(|| body.to_string());
        let r = send(
            &self.api.server,
            &self.api.http,
            method,
            path,
            token,
            body.as_deref(),
        )
        .await;
        // Every answer's Retry-After, when it has one, is whole seconds.
        retry_after(&r);
        r
    }

    async fn create_key(&self, token: &str, name: &str, key_type: &str) -> String {
        let r = self
            .call(
                Method::POST,
                "/api/v1/keys",
                Some(token),
                json!({"name": name, "type": key_type}),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        r.json["id"].as_str().unwrap().to_string()
    }

    async fn encrypt(&self, token: &str, key: &str) -> Resp {
        self.call(
            Method::POST,
            &format!("/api/v1/keys/{key}/encrypt"),
            Some(token),
            json!({"plaintext": "aGk="}),
        )
        .await
    }

    /// Repeats `f` until it answers 429 (at most `max` times); returns the successes before it
    /// and the 429.
    async fn exhaust<F, Fut>(max: usize, mut f: F) -> (usize, Resp)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Resp>,
    {
        for ok in 0..max {
            let r = f().await;
            if r.status == 429 {
                return (ok, r);
            }
            assert!((200..300).contains(&r.status), "{r:?}");
        }
        panic!("no 429 after {max} requests");
    }

    async fn metrics(&self) -> String {
        self.api.server.get_ok("/metrics").await.text
    }
}

/// The 429 contract: status, `Retry-After` of at least one whole second, the JSON error body
/// with code `rate_limited` and a request id.
fn assert_rate_limited(r: &Resp) -> u64 {
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.json["error"]["code"], "rate_limited", "{r:?}");
    assert!(
        !r.json["error"]["request_id"].as_str().unwrap().is_empty(),
        "{r:?}"
    );
    let secs = retry_after(r).expect("Retry-After");
    assert!(secs >= 1, "{r:?}");
    secs
}

fn counter(metrics: &str, class: &str) -> f64 {
    let prefix = format!("sovra_rate_limited_total{{class=\"{class}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_user_is_limited_without_touching_other_users_or_its_other_classes() {
    let env = Env::start("rl-users", LIMITS);
    let alice = env.token("alice");
    let bob = env.token("bob");
    let ka = env.create_key(&alice, "a", "aes-256-gcm").await;
    let kb = env.create_key(&bob, "b", "aes-256-gcm").await;

    // Alice spends her crypto bucket (burst 5; it refills at 1/s meanwhile).
    let (ok, refused) = Env::exhaust(50, || env.encrypt(&alice, &ka)).await;
    assert!(ok >= 5, "{ok} encrypts before the first 429");
    let wait = assert_rate_limited(&refused);
    assert_message_has(&refused, "crypto");

    // At the same moment Bob's crypto requests are served: his bucket is his own.
    let r = env.encrypt(&bob, &kb).await;
    assert_eq!(r.status, 200, "bob after alice's 429: {r:?}");
    // Alice's other classes are untouched.
    let r = env
        .call(
            Method::GET,
            &format!("/api/v1/keys/{ka}"),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "alice read after her crypto 429: {r:?}");
    let r = env
        .call(
            Method::POST,
            &format!("/api/v1/keys/{ka}/rotate"),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "alice key_admin after her crypto 429: {r:?}");

    // After waiting what Retry-After said, Alice is served again.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let r = env.encrypt(&alice, &ka).await;
    assert_eq!(r.status, 200, "alice after Retry-After: {r:?}");

    let m = env.metrics().await;
    assert!(counter(&m, "crypto") >= 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_private_key_operations_have_their_own_stricter_bucket() {
    let env = Env::start("rl-rsa", SLOW);
    let carol = env.token("carol");
    let dave = env.token("dave");
    // Generating an RSA-3072 key costs 240 of the 241 RSA tokens, a signature 1.
    let rsa = env.create_key(&carol, "r", "rsa-3072").await;
    let aes = env.create_key(&carol, "s", "aes-256-gcm").await;
    let ed = env.create_key(&carol, "e", "ed25519").await;
    let sign = |key: String| {
        let env = &env;
        let carol = carol.clone();
        async move {
            env.call(
                Method::POST,
                &format!("/api/v1/keys/{key}/sign"),
                Some(&carol),
                json!({"message": "aGk="}),
            )
            .await
        }
    };
    let (ok, refused) = Env::exhaust(20, || sign(rsa.clone())).await;
    // Generation left one token; the crypto bucket (5) still has some.
    assert_eq!(ok, 1, "RSA signatures before the first 429");
    assert_rate_limited(&refused);
    assert_message_has(&refused, "RSA");

    // Carol's cheap crypto still works: an Ed25519 signature and an AES encryption.
    let r = sign(ed.clone()).await;
    assert_eq!(r.status, 200, "ed25519 sign after the RSA 429: {r:?}");
    let r = env.encrypt(&carol, &aes).await;
    assert_eq!(r.status, 200, "encrypt after the RSA 429: {r:?}");
    // Another user's RSA work is not affected.
    env.create_key(&dave, "r", "rsa-3072").await;

    // A batch costs its item count: a batch as large as the bucket (5) spends it.
    let erin = env.token("erin");
    let ke = env.create_key(&erin, "b", "aes-256-gcm").await;
    let items: Vec<Value> = (0..5).map(|_| json!({"plaintext": "aGk="})).collect();
    let r = env
        .call(
            Method::POST,
            &format!("/api/v1/keys/{ke}/encrypt/batch"),
            Some(&erin),
            json!({ "items": items }),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_rate_limited(&env.encrypt(&erin, &ke).await);

    let m = env.metrics().await;
    assert!(counter(&m, "rsa") >= 1.0, "{m}");
}

/// Forty concurrent RSA-4096 key creations from one identity: at most its bound
/// (`heavy_ops_per_identity`, 2) is accepted, and the generation's cost (580 of the 1,000-token
/// RSA burst) admits only one; every other one is refused with 429 instead of queueing, and
/// another identity's RSA signature during the flood is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rsa_flood_from_one_identity_is_refused_not_queued() {
    let env = Env::start("rl-rsa-flood", "");
    let mallory = env.token("mallory");
    let dave = env.token("dave");
    let daves = env.create_key(&dave, "d", "rsa-3072").await;
    let create = |i: usize| {
        let env = &env;
        let mallory = mallory.clone();
        async move {
            env.call(
                Method::POST,
                "/api/v1/keys",
                Some(&mallory),
                json!({"name": format!("flood-{i}"), "type": "rsa-4096"}),
            )
            .await
        }
    };
    let sign = async {
        env.call(
            Method::POST,
            &format!("/api/v1/keys/{daves}/sign"),
            Some(&dave),
            json!({"message": "aGk="}),
        )
        .await
    };
    let (flood, signed) = tokio::join!(futures_util::future::join_all((0..40).map(create)), sign);
    assert_eq!(
        signed.status, 200,
        "another identity's RSA work: {signed:?}"
    );
    let created = flood.iter().filter(|r| r.status == 201).count();
    assert!(
        (1..=2).contains(&created),
        "{created} RSA-4096 keys created by the flood"
    );
    for r in flood.iter().filter(|r| r.status != 201) {
        assert_rate_limited(r);
    }
    let mut names: Vec<_> = env
        .call(Method::GET, "/api/v1/keys", Some(&mallory), json!({}))
        .await
        .json["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names.len(),
        created,
        "refused creations stored nothing: {names:?}"
    );
}

/// The server-wide queue for heavy work is bounded: with one slot and room for two waiting,
/// eight identities generating RSA-4096 keys at once get 503 `busy` (with Retry-After) for
/// what does not fit, never an unbounded wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_wide_heavy_queue_is_bounded() {
    let env = Env::start(
        "rl-heavy-queue",
        "[limits]\nheavy_ops_concurrency = 1\nheavy_ops_queue = 2\n",
    );
    let tokens: Vec<String> = (0..8).map(|i| env.token(&format!("user{i}"))).collect();
    let answers = futures_util::future::join_all(tokens.iter().map(|t| {
        env.call(
            Method::POST,
            "/api/v1/keys",
            Some(t),
            json!({"name": "big", "type": "rsa-4096"}),
        )
    }))
    .await;
    let busy: Vec<_> = answers.iter().filter(|r| r.status == 503).collect();
    assert!(!busy.is_empty(), "no 503 among {answers:?}");
    for r in &busy {
        assert_eq!(r.json["error"]["code"], "busy", "{r:?}");
        assert!(retry_after(r).is_some(), "{r:?}");
    }
    assert!(
        answers.iter().all(|r| r.status == 201 || r.status == 503),
        "{answers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_floods_from_one_ip_are_limited_before_verification() {
    let env = Env::start("rl-unauth", SLOW);
    let alice = env.token("alice");
    let mut forged = env.token("mallory");
    forged.push('x');
    let (failed, refused) = Env::exhaust(50, || async {
        let r = env
            .call(Method::GET, "/api/v1/keys", Some(&forged), json!({}))
            .await;
        if r.status == 401 {
            // Count a 401 as "served" for exhaust's bookkeeping.
            return Resp { status: 204, ..r };
        }
        r
    })
    .await;
    assert!(
        failed >= 5,
        "{failed} failed authentications before the first 429"
    );
    assert_rate_limited(&refused);
    // While the address is blocked, credentials from it are not verified at all, so a
    // guessed-right token is refused too.
    let r = env
        .call(Method::GET, "/api/v1/keys", Some(&alice), json!({}))
        .await;
    assert_rate_limited(&r);
    // Probes stay open.
    let r = env.call(Method::GET, "/health", None, json!({})).await;
    assert_eq!(r.status, 200);
    let m = env.metrics().await;
    assert!(counter(&m, "unauthenticated") >= 1.0, "{m}");
}

/// Behind a reverse proxy every user shares its address (threat: one noisy user locks out the
/// rest). A token that already verified and is cached keeps working while its source is
/// locked out; `trusted_proxies` makes the forwarded client the source, and only a trusted
/// proxy's `X-Forwarded-For` is believed, so a locked-out client cannot forge its way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockouts_follow_the_forwarded_client_and_spare_verified_tokens() {
    let env = Env::start(
        "rl-proxy",
        &format!("trusted_proxies = [\"127.0.0.1\"]\n{SLOW}"),
    );
    let s = &env.api.server;
    let proxy = s.http_from("127.0.0.1".parse().unwrap());
    let stranger = s.http_from("127.0.0.2".parse().unwrap());
    let get = |http: &reqwest::Client, token: &str, forwarded: Option<&str>| {
        let mut req = http.get(s.url("/api/v1/keys")).bearer_auth(token);
        if let Some(f) = forwarded {
            req = req.header("x-forwarded-for", f);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let mut forged = env.token("mallory");
    forged.push('x');
    let alice = env.token("alice");
    assert_eq!(
        get(&proxy, &alice, None).await,
        200,
        "alice's token is verified and cached"
    );

    // Requests the proxy sends without a forwarded address are its own: lock it out.
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(get(&proxy, &forged, None).await);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(
        get(&proxy, &alice, None).await,
        200,
        "a cached token is not refused for its source"
    );
    let bob = env.token("bob");
    assert_eq!(
        get(&proxy, &bob, None).await,
        429,
        "an unverified token is not verified"
    );
    // The forwarded clients behind the proxy are counted each on their own.
    assert_eq!(get(&proxy, &bob, Some("198.51.100.20")).await, 200);
    for _ in 0..20 {
        get(&proxy, &forged, Some("198.51.100.21")).await;
    }
    let carol = env.token("carol");
    assert_eq!(get(&proxy, &carol, Some("198.51.100.21")).await, 429);
    assert_eq!(get(&proxy, &carol, Some("198.51.100.22")).await, 200);

    // Not a trusted proxy: its header is ignored, it stays locked out under its own address.
    for _ in 0..20 {
        get(&stranger, &forged, None).await;
    }
    let dave = env.token("dave");
    assert_eq!(get(&stranger, &dave, Some("198.51.100.23")).await, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unseal_and_init_floods_from_one_ip_are_limited() {
    let env = Env::start("rl-unseal", SLOW);
    let (_, refused) = Env::exhaust(50, || async {
        let r = env
            .call(
                Method::POST,
                "/api/v1/sys/unseal",
                None,
                json!({"share": "AQI="}),
            )
            .await;
        // The dev server is unsealed: each guess is answered (not 2xx) until the limit.
        if r.status != 429 {
            return Resp { status: 204, ..r };
        }
        r
    })
    .await;
    assert_rate_limited(&refused);
    let r = env
        .call(
            Method::POST,
            "/api/v1/sys/init",
            None,
            json!({"shares": 1, "threshold": 1}),
        )
        .await;
    assert_rate_limited(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_429_where_it_can_occur() {
    let env = Env::start("rl-doc", "");
    let doc = env
        .call(Method::GET, "/api/v1/openapi.json", None, json!({}))
        .await
        .json;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let limited = path.starts_with("/api/")
                && path != "/api/v1/openapi.json"
                && path != "/api/v1/sys/seal-status"
                && path != "/api/v1/audit/public-key";
            let has = op["responses"].get("429").is_some();
            assert_eq!(has, limited, "{method} {path} documents 429: {has}");
            if has {
                assert!(
                    op["responses"]["429"]["headers"]
                        .get("Retry-After")
                        .is_some(),
                    "{method} {path}"
                );
            }
        }
    }
}

#[test]
fn a_config_with_zero_or_invalid_limits_is_refused() {
    for (limits, setting) in [
        (
            "[rate_limits.crypto]\nper_second = 0\nburst = 10\n",
            "rate_limits.crypto.per_second",
        ),
        (
            "[rate_limits.rsa]\nper_second = 5\nburst = 0\n",
            "rate_limits.rsa.burst",
        ),
    ] {
        let dir = TempDir::new("rl-config");
        let err = Server::run_dev_expecting_failure(dir.path(), limits);
        assert!(err.contains(setting), "{limits:?}: {err}");
    }
}
