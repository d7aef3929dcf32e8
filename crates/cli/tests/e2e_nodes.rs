//! Two `sovra server` processes on one PostgreSQL serve the same keys. A change made through
//! one node (disable, enable, rotate, schedule or cancel deletion, raising the minimum
//! decryption version) takes effect on the other within one second, while both are under
//! load; and concurrent rotations of one key through both nodes never give two versions the
//! same number.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::DevNodes;
use sovra_client::{Client, ClientError};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a change may take to reach the other node.
const PROPAGATION: Duration = Duration::from_secs(1);

fn code(e: &ClientError) -> &str {
    match e {
        ClientError::Api { code, .. } => code,
        other => panic!("not an API error: {other}"),
    }
}

/// Polls `check` on the other node until it holds; fails if that takes longer than
/// [`PROPAGATION`]. Returns how long it took.
async fn within_propagation<F, Fut>(what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < PROPAGATION,
            "{what}: not seen on the other node after {PROPAGATION:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Background encrypt load on both nodes with another key (the hot cache path), counting
/// answers, until stopped.
fn load(
    nodes: &DevNodes,
    key: String,
) -> (
    Arc<AtomicBool>,
    Arc<AtomicU64>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, client) in [
        nodes.a.client(),
        nodes.b.client(),
        nodes.a.client(),
        nodes.b.client(),
    ]
    .into_iter()
    .enumerate()
    {
        let (stop, done, key) = (stop.clone(), done.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                client
                    .encrypt(&key, format!("load {i}").as_bytes(), &Default::default())
                    .await
                    .expect("load encrypt");
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    (stop, done, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_through_one_node_reaches_the_other_within_a_second() {
    let nodes = DevNodes::start("nodes-cache", "");
    let (a, b): (Client, Client) = (nodes.a.client(), nodes.b.client());
    let busy = a.create_key("busy", "aes-256-gcm", None).await.unwrap();
    let key = a
        .create_key("shared", "aes-256-gcm", None)
        .await
        .unwrap()
        .id;
    let ctx = Default::default();
    let (stop, done, tasks) = load(&nodes, busy.id.clone());

    // Node B uses the key (so any cache it keeps is warm) before each change through node A.
    let old = b.encrypt(&key, b"v1", &ctx).await.unwrap();
    assert_eq!(old.key_version, 1);

    a.key_action(&key, "disable").await.unwrap();
    within_propagation("disable", || async {
        b.encrypt(&key, b"x", &ctx)
            .await
            .is_err_and(|e| code(&e) == "key_disabled")
    })
    .await;

    a.key_action(&key, "enable").await.unwrap();
    within_propagation("enable", || async {
        b.encrypt(&key, b"x", &ctx).await.is_ok()
    })
    .await;

    a.key_action(&key, "rotate").await.unwrap();
    within_propagation("rotation", || async {
        b.encrypt(&key, b"x", &ctx)
            .await
            .is_ok_and(|e| e.key_version == 2)
    })
    .await;

    // Raising the minimum decryption version revokes the old version's ciphertexts.
    use base64::Engine;
    let old_ct = base64::engine::general_purpose::STANDARD
        .decode(&old.ciphertext)
        .unwrap();
    b.decrypt(&old_ct, &ctx).await.expect("v1 still decrypts");
    a.update_key(&key, Some(2), None).await.unwrap();
    within_propagation("min_decryption_version", || async {
        b.decrypt(&old_ct, &ctx).await.is_err_and(|e| {
            code(&e) == "invalid_input" && e.to_string().contains("min_decryption_version")
        })
    })
    .await;

    a.schedule_deletion(&key, 7).await.unwrap();
    within_propagation("scheduled deletion", || async {
        b.encrypt(&key, b"x", &ctx)
            .await
            .is_err_and(|e| code(&e) == "key_pending_deletion")
    })
    .await;

    a.key_action(&key, "cancel-deletion").await.unwrap();
    within_propagation(
        "cancelled deletion (the key comes back disabled)",
        || async {
            b.encrypt(&key, b"x", &ctx)
                .await
                .is_err_and(|e| code(&e) == "key_disabled")
        },
    )
    .await;

    // And the other way round.
    b.key_action(&key, "enable").await.unwrap();
    within_propagation("enable through node B", || async {
        a.encrypt(&key, b"x", &ctx).await.is_ok()
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        done.load(Ordering::Relaxed) > 50,
        "both nodes were under load"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_rotations_through_both_nodes_number_versions_uniquely() {
    let nodes = DevNodes::start("nodes-rotate", "");
    let key = nodes
        .a
        .client()
        .create_key("rotated", "aes-256-gcm", None)
        .await
        .unwrap()
        .id;
    let (stop, _done, load_tasks) = load(&nodes, key.clone());
    let mut tasks = Vec::new();
    for i in 0..16 {
        let client = if i % 2 == 0 {
            nodes.a.client()
        } else {
            nodes.b.client()
        };
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for _ in 0..4 {
                match client.key_action(&key, "rotate").await {
                    Ok(k) => versions.push(k.latest_version),
                    // Optimistic concurrency gave up after its retries: a clear 409.
                    Err(e) => assert_eq!(code(&e), "conflict", "{e}"),
                }
            }
            versions
        }));
    }
    let mut seen = BTreeSet::new();
    let mut answered = 0;
    for t in tasks {
        for v in t.await.unwrap() {
            answered += 1;
            assert!(seen.insert(v), "version {v} answered to two rotations");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in load_tasks {
        t.await.unwrap();
    }
    assert!(answered >= 16, "most rotations succeed ({answered})");
    let info = nodes.a.client().get_key(&key).await.unwrap();
    assert_eq!(
        info.latest_version as usize,
        answered + 1,
        "every version is one acknowledged rotation, none lost, none doubled"
    );
    assert_eq!(seen, (2..=info.latest_version).collect::<BTreeSet<_>>());
    // Every version decrypts what it encrypted, on both nodes.
    let ctx = Default::default();
    for node in [&nodes.a, &nodes.b] {
        let c = node.client();
        let e = c.encrypt(&key, b"after", &ctx).await.unwrap();
        assert_eq!(e.key_version, info.latest_version);
    }
}
