//! TLS 1.3 only (rustls with aws-lc-rs). Certificates come from the config; dev mode makes a
//! self-signed one.

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {0}: {1}")]
    Read(String, String),
    #[error("invalid certificate or key: {0}")]
    Invalid(String),
}

pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Invalid(format!("certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Invalid("no certificate in PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|_| TlsError::Invalid("private key PEM".into()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| TlsError::Read(p.display().to_string(), e.to_string()))
    };
    server_config(&read(cert_file)?, &read(key_file)?)
}

/// A self-signed certificate for `localhost`, 127.0.0.1 and ::1: (cert PEM, key PEM).
pub fn self_signed() -> Result<(String, String), TlsError> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let ck =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Invalid(e.to_string()))?;
    Ok((ck.cert.pem(), ck.signing_key.serialize_pem()))
}
