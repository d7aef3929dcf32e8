//! A JWKS document as an issuer serves it: parsed as the server does, every key selected for
//! every accepted algorithm, and a token checked against each selected key.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Validation};
use libfuzzer_sys::fuzz_target;
use sovra_core::identity::{ALLOWED_ALGS, parse_jwks, select_key};
use std::sync::OnceLock;

/// A token per algorithm with a signature of plausible length that no key made.
fn tokens() -> &'static Vec<(Algorithm, String)> {
    static T: OnceLock<Vec<(Algorithm, String)>> = OnceLock::new();
    T.get_or_init(|| {
        ALLOWED_ALGS
            .iter()
            .map(|alg| {
                let header = format!(r#"{{"alg":"{alg:?}","typ":"JWT"}}"#);
                let claims = r#"{"iss":"i","aud":"a","exp":4102444800,"sub":"s"}"#;
                let sig_len = match alg {
                    Algorithm::ES256 | Algorithm::EdDSA => 64,
                    Algorithm::ES384 => 96,
                    _ => 384,
                };
                let token = format!(
                    "{}.{}.{}",
                    URL_SAFE_NO_PAD.encode(header),
                    URL_SAFE_NO_PAD.encode(claims),
                    URL_SAFE_NO_PAD.encode(vec![0x5a; sig_len])
                );
                (*alg, token)
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    // The server refuses a JWKS that is not UTF-8 before parsing it.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(set) = parse_jwks(text) else {
        return;
    };
    let mut kids: Vec<Option<&str>> = vec![None];
    kids.extend(set.keys.iter().take(4).map(|k| k.common.key_id.as_deref()));
    for kid in kids {
        for (alg, token) in tokens() {
            if let Some(key) = select_key(&set, kid, *alg) {
                let v = Validation::new(*alg);
                assert!(
                    jsonwebtoken::decode::<serde_json::Value>(token, &key, &v).is_err(),
                    "a zero signature verified"
                );
            }
        }
    }
});
