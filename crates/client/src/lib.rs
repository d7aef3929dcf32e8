//! A typed HTTPS client for the Sovra API, used by the CLI and the end-to-end tests.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{message} ({code}, HTTP {status}, request {request_id})")]
    Api {
        status: u16,
        code: String,
        message: String,
        request_id: String,
    },
    #[error("cannot reach Sovra: {0}")]
    Transport(String),
    #[error("{0}")]
    Config(String),
    #[error("unexpected response: {0}")]
    Decode(String),
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

pub type Context = BTreeMap<String, String>;

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub key_type: String,
    pub description: Option<String>,
    pub state: String,
    pub owner: String,
    pub latest_version: u32,
    pub min_decryption_version: u32,
    pub created: String,
    pub rotated: Option<String>,
    pub deletion_date: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct OrgInfo {
    pub id: String,
    pub display_name: String,
    pub status: String,
    pub created: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct IdentityInfo {
    pub id: String,
    pub kind: String,
    pub roles: Vec<String>,
    pub status: String,
    pub auth_source: String,
    pub issuer: String,
    pub subject: String,
    pub created: String,
    pub last_seen: Option<String>,
}

/// A path segment percent-encoded (identity ids hold `/`, `:` and `#`).
pub fn path_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SealStatus {
    pub initialized: bool,
    pub sealed: bool,
    pub seal_type: Option<String>,
    pub shares: u32,
    pub threshold: u32,
    pub progress: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Encrypted {
    pub ciphertext: String,
    pub key_id: String,
    pub key_version: u32,
}

#[derive(Clone, Deserialize, Serialize)]
pub struct Decrypted {
    pub plaintext: String,
    pub key_id: String,
    pub key_version: u32,
}

#[derive(Clone, Deserialize, Serialize)]
pub struct DataKey {
    pub plaintext: Option<String>,
    pub ciphertext: String,
    pub key_id: String,
    pub key_version: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Signed {
    pub signature: String,
    pub key_version: u32,
    pub algorithm: String,
}

#[derive(Clone, Deserialize, Serialize)]
pub struct InitResult {
    pub shares: Vec<String>,
    pub threshold: u32,
}

/// One audit event as `GET /api/v1/audit` shows it.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AuditEvent {
    pub seq: u64,
    /// RFC 3339.
    pub time: String,
    pub org: Option<String>,
    pub actor: String,
    pub auth_method: String,
    pub cert_fingerprint: Option<String>,
    pub action: String,
    pub resource: String,
    pub outcome: String,
    pub error_code: Option<String>,
    pub request_id: String,
    pub source: String,
    /// Keyed hashes of sensitive values, by field.
    #[serde(default)]
    pub hashed: BTreeMap<String, String>,
    pub hash: String,
}

/// A page of audit events, newest first.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    /// `before_seq` for the next page; absent on the last page.
    pub next_before_seq: Option<u64>,
}

/// Filters of `GET /api/v1/audit`; `None` leaves a filter out.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// RFC 3339.
    pub from: Option<String>,
    /// RFC 3339.
    pub to: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
    pub before_seq: Option<u64>,
    pub limit: Option<u32>,
}

/// A keyed hash as it appears under `field` in events' `hashed`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AuditHash {
    pub field: String,
    pub hash: String,
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
fn query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `?k=v&...` from the present pairs (empty when none).
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", query_value(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// A transport error with its whole cause chain (e.g. the TLS reason), not just the top line.
fn transport(e: reqwest::Error) -> ClientError {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    ClientError::Transport(msg)
}

/// Plaintexts, data keys and unseal shares never appear in `Debug` output.
macro_rules! redacted_debug {
    ($($t:ty),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($t), " {{ [REDACTED] }}"))
            }
        }
    )*};
}
redacted_debug!(Decrypted, DataKey, InitResult);

pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

pub fn unb64(s: &str) -> Result<Vec<u8>> {
    STANDARD
        .decode(s)
        .map_err(|_| ClientError::Decode("invalid base64 from server".into()))
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    addr: String,
    token: Option<String>,
}

impl Client {
    /// `addr` like `https://127.0.0.1:8200`; `ca_pem` trusts a private CA (dev mode's
    /// self-signed certificate) in addition to the system roots.
    pub fn new(addr: &str, token: Option<String>, ca_pem: Option<&[u8]>) -> Result<Client> {
        if !addr.starts_with("https://") {
            return Err(ClientError::Config(
                "SOVRA_ADDR must be an https:// URL".into(),
            ));
        }
        let mut b = reqwest::Client::builder()
            .https_only(true)
            .timeout(std::time::Duration::from_secs(60));
        if let Some(pem) = ca_pem {
            let cert = reqwest::Certificate::from_pem(pem).map_err(|e| {
                ClientError::Config(format!("SOVRA_CACERT is not a PEM certificate: {e}"))
            })?;
            b = b.tls_certs_only([cert]);
        }
        let http = b.build().map_err(|e| ClientError::Config(e.to_string()))?;
        Ok(Client {
            http,
            addr: addr.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// Sends a request and decodes a JSON response, or the API's JSON error.
    pub async fn call<R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<R> {
        let resp = self.send(method, path, body).await?;
        let bytes = resp.bytes().await.map_err(transport)?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Sends a request; a successful response is returned unread (for streams and non-JSON
    /// bodies), any other becomes the API's JSON error.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<reqwest::Response> {
        let mut req = self.http.request(method, format!("{}{}", self.addr, path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let bytes = resp.bytes().await.map_err(transport)?;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let e = &v["error"];
        Err(ClientError::Api {
            status: status.as_u16(),
            code: e["code"].as_str().unwrap_or("unknown").to_string(),
            message: e["message"]
                .as_str()
                .unwrap_or("request failed")
                .to_string(),
            request_id: e["request_id"].as_str().unwrap_or("").to_string(),
        })
    }

    // ---- sys ----
    pub async fn seal_status(&self) -> Result<SealStatus> {
        self.call(Method::GET, "/api/v1/sys/seal-status", None)
            .await
    }
    /// Initializes the seal with the server's one-time `init_token` (from its data directory);
    /// a threshold of 1 needs `allow_single_share`.
    pub async fn init(
        &self,
        shares: u32,
        threshold: u32,
        init_token: &str,
        allow_single_share: bool,
    ) -> Result<InitResult> {
        self.call(
            Method::POST,
            "/api/v1/sys/init",
            Some(&json!({
                "shares": shares,
                "threshold": threshold,
                "init_token": init_token,
                "allow_single_share": allow_single_share,
            })),
        )
        .await
    }
    pub async fn unseal(&self, share: &str) -> Result<SealStatus> {
        self.call(
            Method::POST,
            "/api/v1/sys/unseal",
            Some(&json!({"share": share})),
        )
        .await
    }
    pub async fn seal(&self) -> Result<SealStatus> {
        self.call(Method::POST, "/api/v1/sys/seal", None).await
    }

    // ---- orgs (server operators) ----
    pub async fn create_org(&self, id: &str, display_name: Option<&str>) -> Result<OrgInfo> {
        let mut body = json!({"id": id});
        if let Some(d) = display_name {
            body["display_name"] = json!(d);
        }
        self.call(Method::POST, "/api/v1/orgs", Some(&body)).await
    }
    pub async fn list_orgs(&self) -> Result<Vec<OrgInfo>> {
        let v: Value = self.call(Method::GET, "/api/v1/orgs", None).await?;
        serde_json::from_value(v["orgs"].clone()).map_err(|e| ClientError::Decode(e.to_string()))
    }
    pub async fn get_org(&self, id: &str) -> Result<OrgInfo> {
        let path = format!("/api/v1/orgs/{}", path_segment(id));
        self.call(Method::GET, &path, None).await
    }
    /// `suspend` or `resume`.
    pub async fn org_action(&self, id: &str, action: &str) -> Result<OrgInfo> {
        let path = format!("/api/v1/orgs/{}/{action}", path_segment(id));
        self.call(Method::POST, &path, None).await
    }

    // ---- identities (org admins) ----
    pub async fn list_identities(&self) -> Result<Vec<IdentityInfo>> {
        let v: Value = self.call(Method::GET, "/api/v1/identities", None).await?;
        serde_json::from_value(v["identities"].clone())
            .map_err(|e| ClientError::Decode(e.to_string()))
    }
    pub async fn get_identity(&self, id: &str) -> Result<IdentityInfo> {
        let path = format!("/api/v1/identities/{}", path_segment(id));
        self.call(Method::GET, &path, None).await
    }
    pub async fn register_identity(
        &self,
        issuer: &str,
        subject: &str,
        kind: &str,
        roles: &[String],
    ) -> Result<IdentityInfo> {
        let body = json!({"issuer": issuer, "subject": subject, "kind": kind, "roles": roles});
        self.call(Method::POST, "/api/v1/identities", Some(&body))
            .await
    }
    /// Changes kind, roles or status (fields left out stay as they are).
    pub async fn update_identity(&self, id: &str, change: &Value) -> Result<IdentityInfo> {
        let path = format!("/api/v1/identities/{}", path_segment(id));
        self.call(Method::PATCH, &path, Some(change)).await
    }

    // ---- grants ----
    /// Grants on a key; `grant` as the API takes it (grantee, operations, constraints,
    /// expires_in_seconds). Returns the grant as JSON.
    pub async fn create_grant(&self, key: &str, grant: &Value) -> Result<Value> {
        let path = format!("/api/v1/keys/{}/grants", path_segment(key));
        self.call(Method::POST, &path, Some(grant)).await
    }
    pub async fn list_grants(&self, key: &str) -> Result<Value> {
        let path = format!("/api/v1/keys/{}/grants", path_segment(key));
        self.call(Method::GET, &path, None).await
    }
    pub async fn revoke_grant(&self, key: &str, grant: &str) -> Result<()> {
        let path = format!(
            "/api/v1/keys/{}/grants/{}",
            path_segment(key),
            path_segment(grant)
        );
        self.send(Method::DELETE, &path, None).await.map(|_| ())
    }

    // ---- keys ----
    pub async fn create_key(
        &self,
        name: &str,
        key_type: &str,
        description: Option<&str>,
    ) -> Result<KeyInfo> {
        let mut body = json!({"name": name, "type": key_type});
        if let Some(d) = description {
            body["description"] = json!(d);
        }
        self.call(Method::POST, "/api/v1/keys", Some(&body)).await
    }
    pub async fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        let v: Value = self.call(Method::GET, "/api/v1/keys", None).await?;
        serde_json::from_value(v["keys"].clone()).map_err(|e| ClientError::Decode(e.to_string()))
    }
    pub async fn get_key(&self, id: &str) -> Result<KeyInfo> {
        self.call(Method::GET, &format!("/api/v1/keys/{id}"), None)
            .await
    }
    /// POST to a key action without a body: rotate, disable, enable, cancel-deletion.
    pub async fn key_action(&self, id: &str, action: &str) -> Result<KeyInfo> {
        self.call(Method::POST, &format!("/api/v1/keys/{id}/{action}"), None)
            .await
    }
    pub async fn schedule_deletion(&self, id: &str, pending_days: u32) -> Result<KeyInfo> {
        self.call(
            Method::POST,
            &format!("/api/v1/keys/{id}/schedule-deletion"),
            Some(&json!({"pending_days": pending_days})),
        )
        .await
    }
    pub async fn update_key(
        &self,
        id: &str,
        min_decryption_version: Option<u32>,
        description: Option<&str>,
    ) -> Result<KeyInfo> {
        let mut body = json!({});
        if let Some(m) = min_decryption_version {
            body["min_decryption_version"] = json!(m);
        }
        if let Some(d) = description {
            body["description"] = json!(d);
        }
        self.call(Method::PATCH, &format!("/api/v1/keys/{id}"), Some(&body))
            .await
    }

    // ---- crypto ----
    pub async fn encrypt(&self, id: &str, plaintext: &[u8], ctx: &Context) -> Result<Encrypted> {
        self.call(
            Method::POST,
            &format!("/api/v1/keys/{id}/encrypt"),
            Some(&json!({"plaintext": b64(plaintext), "context": ctx})),
        )
        .await
    }
    pub async fn decrypt(&self, ciphertext: &[u8], ctx: &Context) -> Result<Decrypted> {
        self.call(
            Method::POST,
            "/api/v1/decrypt",
            Some(&json!({"ciphertext": b64(ciphertext), "context": ctx})),
        )
        .await
    }
    pub async fn data_key(
        &self,
        id: &str,
        bits: u32,
        with_plaintext: bool,
        ctx: &Context,
    ) -> Result<DataKey> {
        let route = if with_plaintext {
            "datakey"
        } else {
            "datakey-without-plaintext"
        };
        self.call(
            Method::POST,
            &format!("/api/v1/keys/{id}/{route}"),
            Some(&json!({"bits": bits, "context": ctx})),
        )
        .await
    }
    pub async fn sign(
        &self,
        id: &str,
        data: &[u8],
        is_digest: bool,
        algorithm: Option<&str>,
    ) -> Result<Signed> {
        let field = if is_digest { "digest" } else { "message" };
        let mut body = json!({ field: b64(data) });
        if let Some(a) = algorithm {
            body["algorithm"] = json!(a);
        }
        self.call(
            Method::POST,
            &format!("/api/v1/keys/{id}/sign"),
            Some(&body),
        )
        .await
    }
    pub async fn verify(
        &self,
        id: &str,
        data: &[u8],
        is_digest: bool,
        signature: &[u8],
        algorithm: Option<&str>,
    ) -> Result<bool> {
        let field = if is_digest { "digest" } else { "message" };
        let mut body = json!({ field: b64(data), "signature": b64(signature) });
        if let Some(a) = algorithm {
            body["algorithm"] = json!(a);
        }
        let v: Value = self
            .call(
                Method::POST,
                &format!("/api/v1/keys/{id}/verify"),
                Some(&body),
            )
            .await?;
        v["valid"]
            .as_bool()
            .ok_or_else(|| ClientError::Decode("missing valid".into()))
    }
    pub async fn public_key(&self, id: &str) -> Result<String> {
        let v: Value = self
            .call(Method::GET, &format!("/api/v1/keys/{id}/public-key"), None)
            .await?;
        v["public_key"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| ClientError::Decode("missing public_key".into()))
    }

    // ---- audit ----
    /// The audit public key (SPKI PEM); needs no token.
    pub async fn audit_public_key(&self) -> Result<String> {
        self.send(Method::GET, "/api/v1/audit/public-key", None)
            .await?
            .text()
            .await
            .map_err(transport)
    }
    /// One page of the caller org's events, newest first.
    pub async fn audit_list(&self, f: &AuditFilter) -> Result<AuditPage> {
        let q = query(&[
            ("from", f.from.clone()),
            ("to", f.to.clone()),
            ("actor", f.actor.clone()),
            ("action", f.action.clone()),
            ("outcome", f.outcome.clone()),
            ("before_seq", f.before_seq.map(|v| v.to_string())),
            ("limit", f.limit.map(|v| v.to_string())),
        ]);
        self.call(Method::GET, &format!("/api/v1/audit{q}"), None)
            .await
    }
    /// Streams the export (JSON lines) into `out` chunk by chunk; returns the bytes written.
    /// A stream the server cuts short is an error, never a silently short export.
    pub async fn audit_export_to(
        &self,
        from_seq: Option<u64>,
        to_seq: Option<u64>,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<u64> {
        let q = query(&[
            ("from_seq", from_seq.map(|v| v.to_string())),
            ("to_seq", to_seq.map(|v| v.to_string())),
        ]);
        let mut resp = self
            .send(Method::GET, &format!("/api/v1/audit/export{q}"), None)
            .await?;
        let mut written = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            out.write_all(&chunk)
                .map_err(|e| ClientError::Config(format!("cannot write the export: {e}")))?;
            written += chunk.len() as u64;
        }
        out.flush()
            .map_err(|e| ClientError::Config(format!("cannot write the export: {e}")))?;
        Ok(written)
    }
    /// The keyed hash of a bearer token, to find its events.
    pub async fn audit_hash_token(&self, token: &str) -> Result<AuditHash> {
        self.call(
            Method::POST,
            "/api/v1/audit/hash",
            Some(&json!({ "token": token })),
        )
        .await
    }
    /// The keyed hash of an encryption context, to find its events.
    pub async fn audit_hash_context(&self, ctx: &Context) -> Result<AuditHash> {
        self.call(
            Method::POST,
            "/api/v1/audit/hash",
            Some(&json!({ "context": ctx })),
        )
        .await
    }
}
