//! Cryptographic operations. Binary travels as standard base64.

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, Auth, b64, key_id, to_b64};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use sovra_crypto::envelope::EncryptionContext;
use sovra_crypto::sign::{SignInput, SignatureAlgorithm};
use std::sync::Arc;
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EncryptRequest {
    /// Base64.
    pub plaintext: String,
    /// Authenticated, not stored; decrypt needs the same.
    pub context: Option<EncryptionContext>,
}

#[derive(Serialize, ToSchema)]
pub struct EncryptResponse {
    /// Base64 self-describing ciphertext.
    pub ciphertext: String,
    pub key_id: String,
    pub key_version: u32,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecryptRequest {
    pub ciphertext: String,
    pub context: Option<EncryptionContext>,
}

#[derive(Serialize, ToSchema)]
pub struct DecryptResponse {
    pub plaintext: String,
    pub key_id: String,
    pub key_version: u32,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchEncryptRequest {
    pub items: Vec<EncryptRequest>,
}

#[derive(Serialize, ToSchema)]
pub struct BatchEncryptResponse {
    pub results: Vec<EncryptResponse>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchDecryptRequest {
    pub items: Vec<DecryptRequest>,
}

/// One result of a batch decrypt: either the plaintext or the item's error.
#[derive(Serialize, ToSchema)]
pub struct BatchDecryptItem {
    pub plaintext: Option<String>,
    pub key_id: Option<String>,
    pub key_version: Option<u32>,
    pub error: Option<BatchItemError>,
}

#[derive(Serialize, ToSchema)]
pub struct BatchItemError {
    pub code: String,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct BatchDecryptResponse {
    pub results: Vec<BatchDecryptItem>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DataKeyRequest {
    /// 128, 256 (default) or 512.
    pub bits: Option<u32>,
    pub context: Option<EncryptionContext>,
}

#[derive(Serialize, ToSchema)]
pub struct DataKeyResponse {
    /// The data key in base64; absent from the without-plaintext variant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plaintext: Option<String>,
    /// The data key encrypted under the key; decrypt it with /decrypt.
    pub ciphertext: String,
    pub key_id: String,
    pub key_version: u32,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    /// Base64 message; or give `digest`.
    pub message: Option<String>,
    /// Base64 digest made with the algorithm's hash.
    pub digest: Option<String>,
    /// ed25519, ecdsa-p256-sha256, rsa-pss-sha256|384|512, rsa-pkcs1-sha256|384|512.
    pub algorithm: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SignResponse {
    pub signature: String,
    pub key_version: u32,
    pub algorithm: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    pub message: Option<String>,
    pub digest: Option<String>,
    pub signature: String,
    pub algorithm: Option<String>,
    /// Key version that signed; default the newest.
    pub key_version: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct VerifyResponse {
    pub valid: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MacRequest {
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct MacResponse {
    pub mac: String,
    pub key_version: u32,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyMacRequest {
    pub message: String,
    pub mac: String,
    pub key_version: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct PublicKeyResponse {
    /// SubjectPublicKeyInfo, PEM.
    pub public_key: String,
    pub key_version: u32,
}

/// The request's encryption context; a non-empty one goes to the audit event as a keyed hash.
fn ctx(c: Option<EncryptionContext>) -> EncryptionContext {
    let c = c.unwrap_or_default();
    if !c.is_empty() {
        crate::audit::note_sensitive("context", &sovra_crypto::envelope::encode_context(&c));
    }
    c
}

/// A ciphertext names its key in its header: that key is the audited resource.
fn note_ciphertext_key(ciphertext: &[u8]) {
    if let Ok(h) = sovra_crypto::envelope::Header::parse(ciphertext) {
        crate::audit::note_resource(format!("key/{}", h.key_id));
    }
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/encrypt", tag = "crypto", params(("id" = String, Path, description = "key id")),
    request_body = EncryptRequest,
    responses((status = 415, body = ErrorBody), (status = 200, body = EncryptResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))),
    security(("bearer" = [])))]
pub async fn encrypt(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<EncryptRequest>,
) -> ApiResult<Json<EncryptResponse>> {
    let plaintext = zeroize::Zeroizing::new(b64("plaintext", &req.plaintext)?);
    let out = st
        .kms
        .encrypt(&p, key_id(&id)?, &plaintext, &ctx(req.context))
        .await?;
    Ok(Json(EncryptResponse {
        ciphertext: to_b64(&out.ciphertext),
        key_id: out.key_id.to_string(),
        key_version: out.key_version,
    }))
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/encrypt/batch", tag = "crypto", params(("id" = String, Path, description = "key id")),
    request_body = BatchEncryptRequest,
    responses((status = 415, body = ErrorBody), (status = 200, body = BatchEncryptResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))),
    security(("bearer" = [])))]
pub async fn encrypt_batch(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<BatchEncryptRequest>,
) -> ApiResult<Json<BatchEncryptResponse>> {
    check_batch(&st, &p, req.items.len())?;
    let mut items = Vec::with_capacity(req.items.len());
    for (i, item) in req.items.into_iter().enumerate() {
        items.push((
            b64(&format!("items[{i}].plaintext"), &item.plaintext)?,
            ctx(item.context),
        ));
    }
    let out = st.kms.encrypt_batch(&p, key_id(&id)?, &items).await;
    for (pt, _) in &mut items {
        zeroize::Zeroize::zeroize(pt);
    }
    let results = out?
        .into_iter()
        .map(|e| EncryptResponse {
            ciphertext: to_b64(&e.ciphertext),
            key_id: e.key_id.to_string(),
            key_version: e.key_version,
        })
        .collect();
    Ok(Json(BatchEncryptResponse { results }))
}

/// A batch must hold 1 to `max` items.
pub(crate) fn check_batch_len(n: usize, max: usize) -> ApiResult<()> {
    if n == 0 || n > max {
        return Err(ApiError::bad_request(
            "invalid_input",
            format!("items must hold 1 to {max} entries"),
        ));
    }
    Ok(())
}

fn check_batch(st: &AppState, p: &sovra_core::Principal, n: usize) -> ApiResult<()> {
    check_batch_len(n, st.config.limits.max_batch_items)?;
    // The request itself paid for one item.
    let extra = u32::try_from(n - 1).unwrap_or(u32::MAX);
    st.rate_limits.check(
        crate::ratelimit::Class::Crypto,
        p.identity().as_str(),
        extra,
    )?;
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/decrypt", tag = "crypto", request_body = DecryptRequest,
    responses((status = 415, body = ErrorBody), (status = 200, body = DecryptResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))),
    security(("bearer" = [])))]
pub async fn decrypt(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<DecryptRequest>,
) -> ApiResult<Json<DecryptResponse>> {
    let ct = b64("ciphertext", &req.ciphertext)?;
    note_ciphertext_key(&ct);
    let out = st.kms.decrypt(&p, &ct, &ctx(req.context)).await?;
    Ok(Json(DecryptResponse {
        plaintext: to_b64(out.plaintext.expose()),
        key_id: out.key_id.to_string(),
        key_version: out.key_version,
    }))
}

#[utoipa::path(post, path = "/api/v1/decrypt/batch", tag = "crypto", request_body = BatchDecryptRequest,
    responses((status = 415, body = ErrorBody), (status = 200, body = BatchDecryptResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))),
    security(("bearer" = [])))]
pub async fn decrypt_batch(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<BatchDecryptRequest>,
) -> ApiResult<Json<BatchDecryptResponse>> {
    check_batch(&st, &p, req.items.len())?;
    let mut results = Vec::with_capacity(req.items.len());
    for (i, item) in req.items.into_iter().enumerate() {
        let r = async {
            let ct = b64(&format!("items[{i}].ciphertext"), &item.ciphertext)?;
            Ok::<_, ApiError>(st.kms.decrypt(&p, &ct, &ctx(item.context)).await?)
        }
        .await;
        results.push(match r {
            Ok(d) => BatchDecryptItem {
                plaintext: Some(to_b64(d.plaintext.expose())),
                key_id: Some(d.key_id.to_string()),
                key_version: Some(d.key_version),
                error: None,
            },
            Err(e) => BatchDecryptItem {
                plaintext: None,
                key_id: None,
                key_version: None,
                error: Some(BatchItemError {
                    code: e.code.into(),
                    message: e.message,
                }),
            },
        });
    }
    Ok(Json(BatchDecryptResponse { results }))
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/reencrypt", tag = "crypto", params(("id" = String, Path, description = "key id")),
    request_body = DecryptRequest,
    responses((status = 415, body = ErrorBody), (status = 413, body = ErrorBody), (status = 200, body = EncryptResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))),
    security(("bearer" = [])))]
pub async fn reencrypt(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<DecryptRequest>,
) -> ApiResult<Json<EncryptResponse>> {
    let ct = b64("ciphertext", &req.ciphertext)?;
    let out = st
        .kms
        .reencrypt(&p, key_id(&id)?, &ct, &ctx(req.context))
        .await?;
    Ok(Json(EncryptResponse {
        ciphertext: to_b64(&out.ciphertext),
        key_id: out.key_id.to_string(),
        key_version: out.key_version,
    }))
}

/// Data key length in bytes for the requested bits.
pub(crate) fn data_key_len(bits: Option<u32>) -> ApiResult<usize> {
    match bits.unwrap_or(256) {
        128 => Ok(16),
        256 => Ok(32),
        512 => Ok(64),
        _ => Err(ApiError::bad_request(
            "invalid_input",
            "bits must be 128, 256 or 512",
        )),
    }
}

async fn data_key(
    st: &AppState,
    p: &sovra_core::Principal,
    id: &str,
    req: DataKeyRequest,
    plaintext: bool,
) -> ApiResult<DataKeyResponse> {
    let bytes = data_key_len(req.bits)?;
    let dk = st
        .kms
        .data_key(p, key_id(id)?, bytes, &ctx(req.context), plaintext)
        .await?;
    Ok(DataKeyResponse {
        plaintext: dk.plaintext.as_ref().map(|k| to_b64(k.expose())),
        ciphertext: to_b64(&dk.ciphertext),
        key_id: dk.key_id.to_string(),
        key_version: dk.key_version,
    })
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/datakey", tag = "crypto", params(("id" = String, Path, description = "key id")),
    request_body = DataKeyRequest,
    responses((status = 415, body = ErrorBody), (status = 413, body = ErrorBody), (status = 200, body = DataKeyResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))),
    security(("bearer" = [])))]
pub async fn datakey(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<DataKeyRequest>,
) -> ApiResult<Json<DataKeyResponse>> {
    Ok(Json(data_key(&st, &p, &id, req, true).await?))
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/datakey-without-plaintext", tag = "crypto",
    params(("id" = String, Path, description = "key id")), request_body = DataKeyRequest,
    responses((status = 415, body = ErrorBody), (status = 413, body = ErrorBody), (status = 200, body = DataKeyResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))),
    security(("bearer" = [])))]
pub async fn datakey_without_plaintext(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<DataKeyRequest>,
) -> ApiResult<Json<DataKeyResponse>> {
    Ok(Json(data_key(&st, &p, &id, req, false).await?))
}

/// Exactly one of `message` and `digest`, decoded.
pub(crate) fn sign_input(
    message: &Option<String>,
    digest: &Option<String>,
) -> ApiResult<(Vec<u8>, bool)> {
    match (message, digest) {
        (Some(m), None) => Ok((b64("message", m)?, false)),
        (None, Some(d)) => Ok((b64("digest", d)?, true)),
        _ => Err(ApiError::bad_request(
            "invalid_input",
            "give exactly one of message and digest",
        )),
    }
}

fn as_input(bytes: &[u8], is_digest: bool) -> SignInput<'_> {
    if is_digest {
        SignInput::Digest(bytes)
    } else {
        SignInput::Message(bytes)
    }
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/sign", tag = "crypto", params(("id" = String, Path, description = "key id")),
    request_body = SignRequest,
    responses((status = 415, body = ErrorBody), (status = 413, body = ErrorBody), (status = 200, body = SignResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))),
    security(("bearer" = [])))]
pub async fn sign(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SignRequest>,
) -> ApiResult<Json<SignResponse>> {
    let (bytes, is_digest) = sign_input(&req.message, &req.digest)?;
    let out = st
        .kms
        .sign(
            &p,
            key_id(&id)?,
            as_input(&bytes, is_digest),
            signature_algorithm(req.algorithm.as_deref())?,
        )
        .await?;
    Ok(Json(SignResponse {
        signature: to_b64(&out.signature),
        key_version: out.key_version,
        algorithm: out.algorithm.as_str().into(),
    }))
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/verify", tag = "crypto", params(("id" = String, Path, description = "key id")),
    request_body = VerifyRequest,
    responses((status = 415, body = ErrorBody), (status = 413, body = ErrorBody), (status = 200, body = VerifyResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))),
    security(("bearer" = [])))]
pub async fn verify(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<VerifyRequest>,
) -> ApiResult<Json<VerifyResponse>> {
    let (bytes, is_digest) = sign_input(&req.message, &req.digest)?;
    let sig = b64("signature", &req.signature)?;
    let valid = st
        .kms
        .verify(
            &p,
            key_id(&id)?,
            as_input(&bytes, is_digest),
            &sig,
            signature_algorithm(req.algorithm.as_deref())?,
            req.key_version,
        )
        .await?;
    Ok(Json(VerifyResponse { valid }))
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/mac", tag = "crypto", params(("id" = String, Path, description = "key id")),
    request_body = MacRequest,
    responses((status = 415, body = ErrorBody), (status = 413, body = ErrorBody), (status = 200, body = MacResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))),
    security(("bearer" = [])))]
pub async fn mac(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<MacRequest>,
) -> ApiResult<Json<MacResponse>> {
    let msg = b64("message", &req.message)?;
    let (tag, key_version) = st.kms.mac(&p, key_id(&id)?, &msg).await?;
    Ok(Json(MacResponse {
        mac: to_b64(&tag),
        key_version,
    }))
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/verify-mac", tag = "crypto", params(("id" = String, Path, description = "key id")),
    request_body = VerifyMacRequest,
    responses((status = 415, body = ErrorBody), (status = 413, body = ErrorBody), (status = 200, body = VerifyResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))),
    security(("bearer" = [])))]
pub async fn verify_mac(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<VerifyMacRequest>,
) -> ApiResult<Json<VerifyResponse>> {
    let msg = b64("message", &req.message)?;
    let tag = b64("mac", &req.mac)?;
    let valid = st
        .kms
        .verify_mac(&p, key_id(&id)?, &msg, &tag, req.key_version)
        .await?;
    Ok(Json(VerifyResponse { valid }))
}

#[utoipa::path(get, path = "/api/v1/keys/{id}/public-key", tag = "crypto", params(("id" = String, Path, description = "key id")),
    responses((status = 200, body = PublicKeyResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))),
    security(("bearer" = [])))]
pub async fn public_key(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<PublicKeyResponse>> {
    let (pem, key_version) = st.kms.public_key_pem(&p, key_id(&id)?, None).await?;
    Ok(Json(PublicKeyResponse {
        public_key: pem,
        key_version,
    }))
}

/// The signature algorithm a request names, if it names one; an unknown name is
/// `invalid_input`, as the core says it.
pub fn signature_algorithm(name: Option<&str>) -> ApiResult<Option<SignatureAlgorithm>> {
    name.map(SignatureAlgorithm::parse)
        .transpose()
        .map_err(|e| sovra_core::CoreError::from(e).into())
}
