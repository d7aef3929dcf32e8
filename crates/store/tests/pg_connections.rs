//! The PostgreSQL store's connections run with TCP_NODELAY: without it (sqlx 0.9.0 leaves
//! Nagle's algorithm on), a statement longer than one TCP segment, such as a batch of audit
//! rows, waits about 40 ms for the server's delayed ACK.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(unused_macros)]
mod common;

use common::{Backend, TestDb};
use sovra_core::audit::AuditEvent;
use sovra_core::test_support::audit_event;
use std::str::FromStr;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_to_postgres_has_nagle_disabled() {
    common::run(Backend::Postgres, |db: TestDb| async move {
        let options = sqlx::postgres::PgConnectOptions::from_str(&db.url).expect("test URL");
        if options.get_socket().is_some() {
            eprintln!("the test database is reached over a Unix socket: no TCP to check");
            return;
        }
        let peers: Vec<std::net::SocketAddr> =
            std::net::ToSocketAddrs::to_socket_addrs(&(options.get_host(), options.get_port()))
                .expect("database host resolves")
                .collect();
        // Statements far longer than one segment, and several connections open at once.
        for n in 0..4 {
            let events: Vec<AuditEvent> = (0..200).map(|i| big_event(n * 1000 + i)).collect();
            db.store
                .append_audit(events)
                .await
                .expect("audit batch appended");
        }
        let reads: Vec<_> = (0..4)
            .map(|_| {
                let store = db.store.clone();
                tokio::spawn(async move { store.audit_events(1, 500).await })
            })
            .collect();
        for read in reads {
            assert_eq!(read.await.expect("task").expect("audit read").len(), 500);
        }
        let sockets = sovra_store::nodelay::tcp_sockets_to(&peers).expect("this process's sockets");
        assert!(
            !sockets.is_empty(),
            "the store holds connections to {peers:?}"
        );
        for fd in &sockets {
            assert!(
                rustix::net::sockopt::tcp_nodelay(fd).expect("TCP_NODELAY readable"),
                "a connection to the database still runs Nagle's algorithm"
            );
        }
    })
    .await;
}

/// An event with a 200-byte actor, so that a batch of them makes a long statement.
fn big_event(i: u64) -> AuditEvent {
    AuditEvent {
        actor: format!("user-{i}-{}", "x".repeat(200)),
        ..audit_event(i)
    }
}
