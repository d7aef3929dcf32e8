//! Proof of being the installer: outside dev mode, a server whose seal is not initialized
//! writes a one-time init token into its data directory (mode 0600), and `sys/init` is refused
//! without it. Whoever can read the server's data directory installed it; anyone else who
//! reaches the port first cannot seize the ceremony. The file is removed once init succeeds.

use sovra_crypto::SecretBytes;
use sovra_crypto::secret::ct_eq;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file's name in the data directory.
pub const INIT_TOKEN_FILE: &str = "init-token";

const PREFIX: &str = "sovra-init-";

/// The token this server accepts for `sys/init`, if it accepts one at all.
#[derive(Default)]
pub struct InitGate(Mutex<Option<InitToken>>);

struct InitToken {
    token: SecretBytes,
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot prepare the init token {path}: {source}")]
pub struct InitTokenError {
    path: String,
    source: std::io::Error,
}

impl InitGate {
    /// Reads the data directory's init token, or writes a new one; the path is logged, the
    /// token never.
    pub fn prepare(&self, data_dir: &Path) -> Result<(), InitTokenError> {
        let path = data_dir.join(INIT_TOKEN_FILE);
        let err = |source| InitTokenError {
            path: path.display().to_string(),
            source,
        };
        let existing = std::fs::read_to_string(&path)
            .ok()
            .map(zeroize::Zeroizing::new);
        let token = match existing {
            Some(t) if t.trim().starts_with(PREFIX) => SecretBytes::from_slice(t.trim().as_bytes()),
            _ => {
                use base64::Engine;
                let random = SecretBytes::new(
                    sovra_crypto::rng::random_vec(32)
                        .map_err(|e| err(std::io::Error::other(e.to_string())))?,
                );
                let t = format!(
                    "{PREFIX}{}",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random.expose())
                );
                crate::private_files::write(&path, t.as_bytes()).map_err(err)?;
                SecretBytes::new(t.into_bytes())
            }
        };
        tracing::warn!(
            file = %path.display(),
            "not initialized: `sovra operator init --init-token-file {}` (the file is readable by this server's user only)",
            path.display()
        );
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(InitToken { token, path });
        Ok(())
    }

    /// Whether `presented` is this server's init token (constant time). A server that has no
    /// token (dev mode, or already initialized at start) accepts none.
    pub fn admits(&self, presented: Option<&str>) -> bool {
        let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match (&*guard, presented) {
            (Some(t), Some(p)) => ct_eq(t.token.expose(), p.trim().as_bytes()),
            _ => false,
        }
    }

    /// Takes over `other`'s token (the gate prepared before the listener opened).
    pub fn adopt(&self, other: InitGate) {
        let token = other.0.into_inner().unwrap_or_else(|e| e.into_inner());
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = token;
    }

    /// After a successful init: the token is spent and its file removed.
    pub fn spend(&self) {
        if let Some(t) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
            && let Err(e) = std::fs::remove_file(&t.path)
        {
            tracing::warn!(file = %t.path.display(), error = %e, "cannot remove the spent init token");
        }
    }
}
