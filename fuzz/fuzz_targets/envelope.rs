//! The ciphertext envelope: header parse and a decrypt attempt under a fixed key with the
//! fuzzer's context; and sealed ciphertexts with one byte changed, which must never open.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use sovra_crypto::aead::{AeadAlg, AeadKey};
use sovra_crypto::envelope::{EncryptionContext, HEADER_LEN, Header, open, seal};

#[derive(Arbitrary, Debug)]
enum Input {
    /// Hostile bytes as sent to /decrypt.
    Raw {
        ciphertext: Vec<u8>,
        context: EncryptionContext,
    },
    /// A real ciphertext, then one byte changed or the context swapped.
    Tampered {
        chacha: bool,
        plaintext: Vec<u8>,
        context: EncryptionContext,
        other_context: EncryptionContext,
        flip_at: u16,
        flip_bits: u8,
        truncate_to: Option<u16>,
    },
}

fn key(alg: AeadAlg) -> AeadKey {
    let bytes = match alg {
        AeadAlg::Aes256Gcm => [7u8; 32],
        AeadAlg::ChaCha20Poly1305 => [9u8; 32],
    };
    AeadKey::new(alg, &bytes).expect("fixed key")
}

fuzz_target!(|input: Input| match input {
    Input::Raw {
        ciphertext,
        context,
    } => {
        if let Ok(h) = Header::parse(&ciphertext) {
            // The header is canonical: it re-encodes to the bytes it came from.
            assert_eq!(h.to_bytes()[..], ciphertext[..HEADER_LEN]);
            let _ = open(&key(h.alg), &ciphertext, &context);
        }
    }
    Input::Tampered {
        chacha,
        plaintext,
        context,
        other_context,
        flip_at,
        flip_bits,
        truncate_to,
    } => {
        let alg = if chacha {
            AeadAlg::ChaCha20Poly1305
        } else {
            AeadAlg::Aes256Gcm
        };
        let k = key(alg);
        let ct = seal(&k, uuid::Uuid::nil(), 1, &plaintext, &context).expect("seal");
        assert_eq!(open(&k, &ct, &context).expect("open"), plaintext);
        if other_context != context {
            assert!(open(&k, &ct, &other_context).is_err());
        }
        let mut bad = ct.clone();
        if flip_bits != 0 {
            bad[usize::from(flip_at) % ct.len()] ^= flip_bits;
        }
        if let Some(n) = truncate_to {
            bad.truncate(usize::from(n) % ct.len());
        }
        if bad != ct {
            assert!(open(&k, &bad, &context).is_err());
        }
    }
});
