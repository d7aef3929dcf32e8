//! Unseal share input as `sovra operator unseal` and `POST /api/v1/sys/unseal` take it: each
//! line is one submitted share string (decoded as the route does, then given to the seal of a
//! real SQLite store initialized 3-of-5). A line `#N` stands for real share N, `#N` followed by
//! more text for that share's base64 with the text appended. Every decoded share also goes
//! through Shamir recombination directly, whatever its length.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use sovra_core::Store;
use sovra_core::model::SealKind;
use sovra_core::seal::Seal;
use sovra_crypto::{SecretBytes, shamir};
use sovra_server::routes::sys::decode_share;
use std::sync::{Arc, OnceLock};

const SHARES: u32 = 5;
const THRESHOLD: u32 = 3;
/// Shares submitted per input at most (more adds nothing past the threshold).
const MAX_LINES: usize = 8;

struct Fixture {
    rt: tokio::runtime::Runtime,
    store: Arc<dyn Store>,
    shares: Vec<String>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let dir = std::env::temp_dir().join(format!("sovra-fuzz-unseal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (store, shares) = rt.block_on(async {
            let store = sovra_store::open(&format!("sqlite://{}", dir.join("sovra.db").display()))
                .await
                .expect("store");
            let seal = Seal::load(store.as_ref()).await.expect("load");
            let (_key, shares) = seal
                .initialize(
                    store.as_ref(),
                    SealKind::Shamir,
                    SHARES,
                    THRESHOLD,
                    false,
                    sovra_core::clock::Clock::now(&sovra_core::clock::SystemClock),
                )
                .await
                .expect("initialize");
            (store, shares)
        });
        let shares = shares.iter().map(|s| STANDARD.encode(s.expose())).collect();
        Fixture { rt, store, shares }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let text = String::from_utf8_lossy(data);
    let lines: Vec<String> = text
        .split('\n')
        .take(MAX_LINES)
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.as_bytes().first().is_some_and(u8::is_ascii_digit) => {
                let n = usize::from(rest.as_bytes()[0] - b'0') % f.shares.len();
                format!("{}{}", f.shares[n], &rest[1..])
            }
            _ => l.to_string(),
        })
        .collect();
    let decoded: Vec<SecretBytes> = lines.iter().filter_map(|l| decode_share(l).ok()).collect();
    let _ = shamir::combine(&decoded);

    let real: Vec<Vec<u8>> = f
        .shares
        .iter()
        .map(|s| STANDARD.decode(s).expect("own share"))
        .collect();
    f.rt.block_on(async {
        // A fresh seal each time: progress never leaks from one input to the next.
        let seal = Seal::load(f.store.as_ref()).await.expect("load");
        let mut accepted: Vec<Vec<u8>> = Vec::new();
        for share in &decoded {
            let before = seal.status();
            if seal
                .submit_share(f.store.as_ref(), share.clone())
                .await
                .is_ok()
                && before.sealed
            {
                // Each share is checked against its commitment: only issued ones count.
                assert!(
                    real.iter().any(|r| r == share.expose()),
                    "a share this initialization did not issue was accepted"
                );
                accepted.push(share.expose().to_vec());
            }
        }
        if !seal.status().sealed {
            // Only the threshold of genuine shares unseals.
            let genuine = real.iter().filter(|r| accepted.contains(r)).count();
            assert!(
                genuine >= THRESHOLD as usize,
                "unsealed with {genuine} real shares"
            );
        }
    });
});
