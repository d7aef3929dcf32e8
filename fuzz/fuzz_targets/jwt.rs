//! Bearer tokens against a fixed issuer and JWKS, through the core's Authenticator: hostile
//! token strings, and tokens signed with the issuer's key whose header or claims are hostile
//! (so the claim checks after the signature are reached too).
#![no_main]

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use sovra_core::{AuthMethod, Role};
use sovra_crypto::SecretBytes;
use sovra_core::identity::{Authenticator, Credential};
use std::sync::OnceLock;

const ISSUER: &str = "https://issuer.fuzz";
const DEV_TOKEN: &str = "sovra-dev-fuzz";
/// x and y of the P-256 base point: a valid EC key of the set that signs nothing here.
const EC_X: &str = "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY";
const EC_Y: &str = "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU";

const HEADERS: [&str; 6] = [
    r#"{"alg":"EdDSA","kid":"ed"}"#,
    r#"{"alg":"EdDSA","typ":"JWT"}"#,
    r#"{"alg":"ES256","kid":"ec"}"#,
    r#"{"alg":"EdDSA","kid":"ec"}"#,
    r#"{"alg":"HS256","kid":"ed"}"#,
    r#"{"alg":"EdDSA","kid":"unknown"}"#,
];
const CLAIMS: &str = r#"{"iss":"https://issuer.fuzz","aud":"sovra","exp":4102444800,"sub":"alice","org":"acme","roles":["admin","operator"]}"#;

struct Fixture {
    rt: tokio::runtime::Runtime,
    auth: Authenticator,
    key: Ed25519KeyPair,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let key = Ed25519KeyPair::from_seed_unchecked(&[42u8; 32]).expect("seed");
        let jwks = format!(
            r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","kid":"ed","alg":"EdDSA","x":"{}"}},{{"kty":"EC","crv":"P-256","kid":"ec","alg":"ES256","x":"{EC_X}","y":"{EC_Y}"}}]}}"#,
            URL_SAFE_NO_PAD.encode(key.public_key().as_ref())
        );
        let path = std::env::temp_dir().join(format!("sovra-fuzz-jwks-{}.json", std::process::id()));
        std::fs::write(&path, jwks).expect("write JWKS");
        let config = sovra_server::Config::parse(&format!(
            "[[auth.jwt]]\nissuer = {ISSUER:?}\naudience = \"sovra\"\njwks = {:?}\nallow_operator = true\n",
            path.display().to_string()
        ))
        .expect("config");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let auth = rt
            .block_on(sovra_server::auth::authenticator(
                &config.auth.jwt,
                Some(SecretBytes::from_slice(DEV_TOKEN.as_bytes())),
                sovra_core::clock::system(),
            ))
            .expect("authenticator");
        Fixture { rt, auth, key }
    })
}

fn signed(key: &Ed25519KeyPair, header: &[u8], claims: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = match mode % 3 {
        0 => String::from_utf8_lossy(rest).into_owned(),
        1 => {
            let Some((&h, claims)) = rest.split_first() else {
                return;
            };
            signed(
                &f.key,
                HEADERS[usize::from(h) % HEADERS.len()].as_bytes(),
                claims,
            )
        }
        _ => signed(&f.key, rest, CLAIMS.as_bytes()),
    };
    if let Ok(a) = f.rt.block_on(f.auth.authenticate(Credential::Bearer(&token))) {
        let p = &a.principal;
        if *p.auth_method() == AuthMethod::DevToken {
            assert_eq!(token, DEV_TOKEN);
        } else {
            assert!(sovra_core::OrgId::parse(p.org().as_str()).is_ok(), "org {:?}", p.org());
            assert!(!p.subject().is_empty() && p.subject().len() <= 256);
            assert!(p.has_role(Role::User));
            assert_eq!(
                *p.auth_method(),
                AuthMethod::Jwt {
                    issuer: ISSUER.into()
                }
            );
        }
    }
});
