//! Every request body, query string and path key id, parsed and checked exactly as its handler
//! does before the core sees it. One entry point, so the fuzz targets reach the handlers'
//! own parsing without a server.

use super::{audit, crypto, keys, sys};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, b64, key_id};
use sovra_crypto::KeyType;
use sovra_crypto::envelope::{EncryptionContext, Header, encode_context};
use sovra_crypto::sign::SignatureAlgorithm;

/// What part of which route the input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestInput {
    Init,
    Unseal,
    CreateKey,
    UpdateKey,
    ScheduleDeletion,
    Encrypt,
    EncryptBatch,
    Decrypt,
    DecryptBatch,
    Reencrypt,
    DataKey,
    Sign,
    Verify,
    Mac,
    VerifyMac,
    AuditHash,
    /// The query string of `GET /api/v1/audit`.
    AuditListQuery,
    /// The query string of `GET /api/v1/audit/export`.
    AuditExportQuery,
    /// The `{id}` of `/api/v1/keys/{id}/...`.
    KeyIdPath,
}

impl RequestInput {
    pub const ALL: [RequestInput; 19] = [
        RequestInput::Init,
        RequestInput::Unseal,
        RequestInput::CreateKey,
        RequestInput::UpdateKey,
        RequestInput::ScheduleDeletion,
        RequestInput::Encrypt,
        RequestInput::EncryptBatch,
        RequestInput::Decrypt,
        RequestInput::DecryptBatch,
        RequestInput::Reencrypt,
        RequestInput::DataKey,
        RequestInput::Sign,
        RequestInput::Verify,
        RequestInput::Mac,
        RequestInput::VerifyMac,
        RequestInput::AuditHash,
        RequestInput::AuditListQuery,
        RequestInput::AuditExportQuery,
        RequestInput::KeyIdPath,
    ];
}

fn json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    ApiJson::<T>::from_bytes(bytes).map(|ApiJson(v)| v)
}

fn query<T: serde::de::DeserializeOwned>(path: &str, raw: &[u8]) -> Result<T, ApiError> {
    // A query that cannot be part of a URI never reaches the handler.
    let uri = format!("{path}?{}", String::from_utf8_lossy(raw));
    let uri = axum::http::Uri::try_from(uri)
        .map_err(|_| ApiError::bad_request("invalid_query", "not a URI"))?;
    ApiQuery::<T>::from_uri(&uri).map(|ApiQuery(v)| v)
}

fn context(c: &Option<EncryptionContext>) {
    if let Some(c) = c {
        encode_context(c);
    }
}

fn ciphertext(field: &str, value: &str) -> Result<(), ApiError> {
    // Decrypt reads the key id from the header before anything else.
    let _ = Header::parse(&b64(field, value)?);
    Ok(())
}

/// The signature algorithm a request names, parsed as the handler does and checked against
/// every key type that signs.
fn algorithm(requested: Option<&str>) -> Result<(), ApiError> {
    let requested = crypto::signature_algorithm(requested)?;
    for kt in [
        KeyType::Ed25519,
        KeyType::EcdsaP256,
        KeyType::Rsa3072,
        KeyType::Rsa4096,
    ] {
        let _ = SignatureAlgorithm::resolve(kt, requested);
    }
    Ok(())
}

/// Parses `input` as the given part of a request and runs the handler's checks on it; the
/// server's batch limit is `max_batch_items`.
pub fn parse_request(
    what: RequestInput,
    input: &[u8],
    max_batch_items: usize,
) -> Result<(), ApiError> {
    match what {
        RequestInput::Init => {
            json::<sys::InitRequest>(input)?;
        }
        RequestInput::Unseal => {
            sys::decode_share(&json::<sys::UnsealRequest>(input)?.share)?;
        }
        RequestInput::CreateKey => {
            let r = json::<keys::CreateKeyRequest>(input)?;
            keys::key_type(&r.key_type)?;
        }
        RequestInput::UpdateKey => {
            json::<keys::UpdateKeyRequest>(input)?;
        }
        RequestInput::ScheduleDeletion => {
            json::<keys::ScheduleDeletionRequest>(input)?;
        }
        RequestInput::Encrypt => {
            let r = json::<crypto::EncryptRequest>(input)?;
            b64("plaintext", &r.plaintext)?;
            context(&r.context);
        }
        RequestInput::EncryptBatch => {
            let r = json::<crypto::BatchEncryptRequest>(input)?;
            crypto::check_batch_len(r.items.len(), max_batch_items)?;
            for (i, item) in r.items.iter().enumerate() {
                b64(&format!("items[{i}].plaintext"), &item.plaintext)?;
                context(&item.context);
            }
        }
        RequestInput::Decrypt | RequestInput::Reencrypt => {
            let r = json::<crypto::DecryptRequest>(input)?;
            ciphertext("ciphertext", &r.ciphertext)?;
            context(&r.context);
        }
        RequestInput::DecryptBatch => {
            let r = json::<crypto::BatchDecryptRequest>(input)?;
            crypto::check_batch_len(r.items.len(), max_batch_items)?;
            // Each item fails on its own, as in the handler.
            for (i, item) in r.items.iter().enumerate() {
                let _ = ciphertext(&format!("items[{i}].ciphertext"), &item.ciphertext);
                context(&item.context);
            }
        }
        RequestInput::DataKey => {
            let r = json::<crypto::DataKeyRequest>(input)?;
            crypto::data_key_len(r.bits)?;
            context(&r.context);
        }
        RequestInput::Sign => {
            let r = json::<crypto::SignRequest>(input)?;
            crypto::sign_input(&r.message, &r.digest)?;
            algorithm(r.algorithm.as_deref())?;
        }
        RequestInput::Verify => {
            let r = json::<crypto::VerifyRequest>(input)?;
            crypto::sign_input(&r.message, &r.digest)?;
            b64("signature", &r.signature)?;
            algorithm(r.algorithm.as_deref())?;
        }
        RequestInput::Mac => {
            b64("message", &json::<crypto::MacRequest>(input)?.message)?;
        }
        RequestInput::VerifyMac => {
            let r = json::<crypto::VerifyMacRequest>(input)?;
            b64("message", &r.message)?;
            b64("mac", &r.mac)?;
        }
        RequestInput::AuditHash => {
            audit::hash_input(json::<audit::HashRequest>(input)?)?;
        }
        RequestInput::AuditListQuery => {
            audit::list_range(&query::<audit::ListParams>("/api/v1/audit", input)?)?;
        }
        RequestInput::AuditExportQuery => {
            let q = query::<audit::ExportParams>("/api/v1/audit/export", input)?;
            // The head is read from the store; the range check must hold for any head.
            for head in [0, 1, u64::MAX] {
                audit::export_range(&q, head)?;
            }
        }
        RequestInput::KeyIdPath => {
            key_id(&String::from_utf8_lossy(input))?;
        }
    }
    Ok(())
}
