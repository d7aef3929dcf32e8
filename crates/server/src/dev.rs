//! Dev mode: no config needed. Under the data directory: the embedded SQLite database, a dev
//! seal key file, a self-signed certificate, a dev token, and `dev.env` for the CLI. Refused
//! when `SOVRA_ENV=production`.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sovra_core::Kms;
use sovra_core::model::SealKind;
use sovra_crypto::{SecretBytes, rng};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(
        "dev mode is refused when SOVRA_ENV=production: it keeps its unseal key in a file next to the data"
    )]
    Production,
    #[error("dev mode: {0}")]
    Io(String),
    #[error("dev mode: {0}")]
    Core(#[from] sovra_core::CoreError),
    #[error("dev mode: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

pub struct DevSetup {
    pub token: SecretBytes,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

const SEAL_KEY_FILE: &str = "dev-seal.key";
const TOKEN_FILE: &str = "dev-token";

pub fn refuse_in_production() -> Result<(), DevError> {
    if std::env::var("SOVRA_ENV")
        .map(|v| v.eq_ignore_ascii_case("production"))
        .unwrap_or(false)
    {
        return Err(DevError::Production);
    }
    Ok(())
}

fn io(what: &str, p: &Path, e: std::io::Error) -> DevError {
    DevError::Io(format!("{what} {}: {e}", p.display()))
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), DevError> {
    crate::private_files::write(path, contents).map_err(|e| io("cannot write", path, e))
}

pub fn prepare(data_dir: &Path) -> Result<DevSetup, DevError> {
    refuse_in_production()?;
    std::fs::create_dir_all(data_dir).map_err(|e| io("cannot create", data_dir, e))?;
    // The dev directory is the dev server's own: tightened even when it existed.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700));
    }
    let token_path = data_dir.join(TOKEN_FILE);
    let token = match std::fs::read_to_string(&token_path) {
        Ok(t) if t.trim().starts_with("sovra-dev-") => SecretBytes::from_slice(t.trim().as_bytes()),
        _ => {
            let t = format!(
                "sovra-dev-{}",
                URL_SAFE_NO_PAD
                    .encode(rng::random_vec(32).map_err(|e| DevError::Io(e.to_string()))?)
            );
            write_private(&token_path, t.as_bytes())?;
            SecretBytes::new(t.into_bytes())
        }
    };
    let cert_file = data_dir.join("tls-cert.pem");
    let key_file = data_dir.join("tls-key.pem");
    if !(cert_file.exists() && key_file.exists()) {
        let (cert, key) = crate::tls::self_signed()?;
        write_private(&key_file, key.as_bytes())?;
        write_private(&cert_file, cert.as_bytes())?;
    }
    Ok(DevSetup {
        token,
        cert_file,
        key_file,
    })
}

/// Initializes on first start (dev-file seal) and unseals from the key file.
pub async fn unseal(kms: &Kms, data_dir: &Path) -> Result<(), DevError> {
    let path = data_dir.join(SEAL_KEY_FILE);
    if !kms.seal_status().initialized {
        let (unseal_key, _shares) = kms.initialize(SealKind::DevFile, 1, 1, false).await?;
        write_private(&path, STANDARD.encode(unseal_key.expose()).as_bytes())?;
    }
    let text = std::fs::read_to_string(&path).map_err(|e| io("cannot read", &path, e))?;
    let key = STANDARD
        .decode(text.trim())
        .map_err(|_| DevError::Io(format!("{} is not base64", path.display())))?;
    kms.unseal_with_key(&SecretBytes::new(key)).await?;
    Ok(())
}

pub fn write_env(data_dir: &Path, addr: SocketAddr, d: &DevSetup) -> Result<(), DevError> {
    let token = String::from_utf8_lossy(d.token.expose()).into_owned();
    let body = format!(
        "SOVRA_ADDR=https://{addr}\nSOVRA_TOKEN={token}\nSOVRA_CACERT={}\n",
        absolute(&d.cert_file).display()
    );
    write_private(&data_dir.join("dev.env"), body.as_bytes())
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

pub fn print_banner(data_dir: &Path, addr: SocketAddr) {
    let env = absolute(&data_dir.join("dev.env"));
    println!(
        "\nSovra dev server: https://{addr}  (organization `dev`, data in {dir})\n\
         NOT FOR PRODUCTION: the unseal key sits in {dir}/{SEAL_KEY_FILE}.\n\n\
         In another shell:\n    set -a; . {env}; set +a\n    sovra key create --name demo --type aes-256-gcm\n",
        dir = absolute(data_dir).display(),
        env = env.display()
    );
}
