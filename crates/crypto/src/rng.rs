//! Randomness from aws-lc-rs's system RNG, with an adapter for crates that take a
//! `rand_core` generator (vsss-rs).

use crate::error::CryptoError;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

pub fn fill(buf: &mut [u8]) -> Result<(), CryptoError> {
    SystemRandom::new()
        .fill(buf)
        .map_err(|_| CryptoError::Internal)
}

pub fn random_vec(len: usize) -> Result<Vec<u8>, CryptoError> {
    let mut v = vec![0u8; len];
    fill(&mut v)?;
    Ok(v)
}

/// `rand_core` 0.10 view of the system RNG. Failure of the OS RNG is unrecoverable, so the
/// infallible trait aborts the operation by panicking with a message that carries no secret.
pub(crate) struct SystemRng;

impl rand_core::TryRng for SystemRng {
    type Error = core::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        // Error = Infallible (the trait vsss-rs needs): an OS RNG failure can only abort.
        #[allow(clippy::expect_used)]
        fill(dst).expect("system random number generator failed");
        Ok(())
    }
}

impl rand_core::TryCryptoRng for SystemRng {}
