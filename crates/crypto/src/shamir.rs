//! Shamir secret sharing of the unseal key over GF(256) (vsss-rs, constant-time field
//! arithmetic). A share on the wire is base64 of `identifier || y-bytes`.

use crate::error::CryptoError;
use crate::rng::SystemRng;
use crate::secret::SecretBytes;
use vsss_rs::Gf256;

pub const MAX_SHARES: usize = 255;

/// Splits `secret` into `shares` shares of which any `threshold` recover it.
pub fn split(
    secret: &SecretBytes,
    shares: usize,
    threshold: usize,
) -> Result<Vec<SecretBytes>, CryptoError> {
    if threshold < 1 || threshold > shares || shares > MAX_SHARES {
        return Err(CryptoError::InvalidInput(format!(
            "need 1 <= threshold <= shares <= {MAX_SHARES} (got threshold {threshold}, shares {shares})"
        )));
    }
    if threshold == 1 {
        // Every share is the secret itself, tagged with an identifier so shares stay distinct.
        return Ok((1..=shares as u8)
            .map(|id| {
                let mut v = vec![id];
                v.extend_from_slice(secret.expose());
                SecretBytes::new(v)
            })
            .collect());
    }
    let parts = Gf256::split_array(threshold, shares, secret.expose(), SystemRng)
        .map_err(|e| CryptoError::Shamir(format!("split failed: {e:?}")))?;
    Ok(parts.into_iter().map(SecretBytes::new).collect())
}

/// Identifier of a share (its first byte), used to refuse duplicates.
pub fn share_id(share: &SecretBytes) -> Result<u8, CryptoError> {
    match share.expose() {
        [id, _, ..] if *id != 0 => Ok(*id),
        _ => Err(CryptoError::Shamir("malformed share".into())),
    }
}

/// Recombines shares. Wrong shares give a wrong secret, not an error: the caller checks the
/// result (the seal unwraps the root key with it, which authenticates).
pub fn combine(shares: &[SecretBytes]) -> Result<SecretBytes, CryptoError> {
    let first = shares
        .first()
        .ok_or_else(|| CryptoError::Shamir("no shares".into()))?;
    let mut ids = std::collections::HashSet::new();
    for s in shares {
        if s.len() != first.len() {
            return Err(CryptoError::Shamir("shares have different lengths".into()));
        }
        if !ids.insert(share_id(s)?) {
            return Err(CryptoError::Shamir("duplicate share".into()));
        }
    }
    if shares.len() == 1 {
        return Ok(SecretBytes::from_slice(&first.expose()[1..]));
    }
    let raw: Vec<Vec<u8>> = shares.iter().map(|s| s.expose().to_vec()).collect();
    let result = Gf256::combine_array(&raw)
        .map_err(|e| CryptoError::Shamir(format!("combine failed: {e:?}")));
    for mut r in raw {
        zeroize::Zeroize::zeroize(&mut r);
    }
    Ok(SecretBytes::new(result?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_threshold_subset_recovers_and_fewer_do_not() {
        let secret = SecretBytes::new((0u8..32).collect());
        let shares = split(&secret, 5, 3).unwrap();
        assert_eq!(shares.len(), 5);
        for (a, b, c) in [(0, 1, 2), (0, 2, 4), (4, 3, 1)] {
            let got = combine(&[shares[a].clone(), shares[b].clone(), shares[c].clone()]).unwrap();
            assert_eq!(got, secret);
        }
        let two = combine(&[shares[0].clone(), shares[1].clone()]).unwrap();
        assert_ne!(two, secret);
    }

    #[test]
    fn duplicates_and_bad_parameters_are_refused() {
        let secret = SecretBytes::new(vec![9u8; 32]);
        let shares = split(&secret, 3, 2).unwrap();
        assert!(combine(&[shares[0].clone(), shares[0].clone()]).is_err());
        assert!(split(&secret, 2, 3).is_err());
        assert!(split(&secret, 300, 2).is_err());
        assert!(split(&secret, 3, 0).is_err());
        let one = split(&secret, 3, 1).unwrap();
        assert_eq!(combine(&[one[2].clone()]).unwrap(), secret);
    }
}
