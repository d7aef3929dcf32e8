//! Known-answer vectors of the crypto crate's byte formats: the ciphertext envelope, the key
//! wrap format and its context encoding, and unseal shares. The vectors were computed by
//! `tests/vectors/generate.py` (Python's `cryptography`, `hashlib` and a Shamir split written
//! there), not by this code; docs/formats.md describes the formats byte by byte.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sovra_crypto::aead::{AeadAlg, AeadKey};
use sovra_crypto::envelope::{self, EncryptionContext, Header};
use sovra_crypto::wrap::{WrappingKey, context};
use sovra_crypto::{SecretBytes, shamir};
use uuid::Uuid;

fn vectors(name: &str) -> serde_json::Value {
    let path = format!("{}/../../tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn bytes(v: &serde_json::Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("hex")
}

fn array<const N: usize>(v: &serde_json::Value) -> [u8; N] {
    bytes(v).try_into().expect("length")
}

#[test]
fn envelope_vectors() {
    let v = vectors("envelope.json");
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let alg = match case["alg"].as_str().unwrap() {
            "aes-256-gcm" => AeadAlg::Aes256Gcm,
            "chacha20-poly1305" => AeadAlg::ChaCha20Poly1305,
            other => panic!("{other}"),
        };
        let key = AeadKey::new(alg, &bytes(&case["key"])).unwrap();
        let nonce = array::<12>(&case["nonce"]);
        let key_id = Uuid::parse_str(case["key_id"].as_str().unwrap()).unwrap();
        let key_version = u32::try_from(case["key_version"].as_u64().unwrap()).unwrap();
        let plaintext = bytes(&case["plaintext"]);
        let ctx: EncryptionContext = serde_json::from_value(case["context"].clone()).unwrap();
        let expected = bytes(&case["ciphertext"]);

        assert_eq!(
            envelope::encode_context(&ctx),
            bytes(&case["context_encoding"]),
            "{name}: context encoding"
        );
        let header = Header {
            alg,
            key_id,
            key_version,
            nonce,
        };
        assert_eq!(
            header.to_bytes().to_vec(),
            bytes(&case["header"]),
            "{name}: header"
        );
        let sealed =
            envelope::seal_with_nonce(&key, nonce, key_id, key_version, &plaintext, &ctx).unwrap();
        assert_eq!(sealed, expected, "{name}: ciphertext");
        // The Python-made ciphertext parses and opens.
        assert_eq!(Header::parse(&expected).unwrap(), header, "{name}: parse");
        assert_eq!(
            envelope::open(&key, &expected, &ctx).unwrap(),
            plaintext,
            "{name}: open"
        );
    }
}

#[test]
fn wrap_vectors() {
    let v = vectors("wrap.json");
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let parts: Vec<Vec<u8>> = case["parts"]
            .as_array()
            .unwrap()
            .iter()
            .map(bytes)
            .collect();
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let aad = context(case["purpose"].as_str().unwrap(), &parts);
        assert_eq!(aad, bytes(&case["aad"]), "{name}: aad");
        let key = WrappingKey::new(&SecretBytes::new(bytes(&case["wrapping_key"]))).unwrap();
        let secret = SecretBytes::new(bytes(&case["secret"]));
        let expected = bytes(&case["wrapped"]);
        let wrapped = key
            .wrap_with_nonce(array::<12>(&case["nonce"]), &secret, &aad)
            .unwrap();
        assert_eq!(wrapped, expected, "{name}: wrapped");
        assert_eq!(
            key.unwrap(&expected, &aad).unwrap(),
            secret,
            "{name}: unwrap"
        );
    }
    let c = &v["context_collisions"];
    assert_eq!(context("p", &[b"ab", b"c"]), bytes(&c["ab_c"]));
    assert_eq!(context("p", &[b"a", b"bc"]), bytes(&c["a_bc"]));
}

#[test]
fn unseal_share_vectors() {
    use base64::Engine;
    let v = vectors("shamir.json");
    let unseal_key = SecretBytes::new(bytes(&v["unseal_key"]));
    let splits = v["splits"].as_array().unwrap();
    assert_eq!(splits.len(), 2);
    for split in splits {
        let n = split["shares"].as_u64().unwrap() as usize;
        let t = split["threshold"].as_u64().unwrap() as usize;
        let shares: Vec<SecretBytes> = split["share_bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| SecretBytes::new(bytes(s)))
            .collect();
        assert_eq!(shares.len(), n);
        // The wire form is standard base64 of the share bytes.
        for (share, b64) in shares.iter().zip(split["share_base64"].as_array().unwrap()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b64.as_str().unwrap())
                .unwrap();
            assert_eq!(decoded, share.expose());
        }
        for (i, share) in shares.iter().enumerate() {
            assert_eq!(shamir::share_id(share).unwrap() as usize, i + 1);
        }
        // Every threshold-sized window of Python's shares combines to the unseal key.
        for start in 0..n {
            let subset: Vec<SecretBytes> =
                (0..t).map(|k| shares[(start + k) % n].clone()).collect();
            assert_eq!(
                shamir::combine(&subset).unwrap(),
                unseal_key,
                "{t}-of-{n} from share {}",
                start + 1
            );
        }
        if t > 1 {
            let short: Vec<SecretBytes> = shares[..t - 1].to_vec();
            assert_ne!(shamir::combine(&short).unwrap(), unseal_key);
        } else {
            // Threshold 1 needs no randomness: Rust's split must give exactly Python's shares.
            assert_eq!(shamir::split(&unseal_key, n, 1).unwrap(), shares);
        }
        // Rust's own split has the same shape: ids 1..=n, one y byte per secret byte.
        let own = shamir::split(&unseal_key, n, t).unwrap();
        for (i, s) in own.iter().enumerate() {
            assert_eq!(s.len(), 1 + unseal_key.len());
            assert_eq!(s.expose()[0] as usize, i + 1);
        }
    }
    // The root key, wrapped under the unseal key by Python, unwraps under the combined key.
    let combined = shamir::combine(
        &v["splits"][0]["share_bytes"].as_array().unwrap()[2..5]
            .iter()
            .map(|s| SecretBytes::new(bytes(s)))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let root = WrappingKey::new(&combined)
        .unwrap()
        .unwrap(
            &bytes(&v["wrapped_root_key"]),
            &context("sovra/root-key/v1", &[]),
        )
        .unwrap();
    assert_eq!(root.expose(), bytes(&v["root_key"]));
}
