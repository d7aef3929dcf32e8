//! Connections that hold the server without using it: silent after the TLS handshake, idle
//! keep-alive, HTTP/2 with no stream (answering pings), an unfinished request body, and one
//! source opening many connections. Each is closed (or refused) while other clients are served.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Server, TempDir, sample};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Far longer than any timeout under test: only "closed before this" is asserted.
const CLOSE_DEADLINE: Duration = Duration::from_secs(30);

const H1: &[u8] = b"http/1.1";
const H2: &[u8] = b"h2";

/// Both idle timeouts short.
const SHORT_TIMEOUTS: &str =
    "[limits]\nheader_read_timeout_seconds = 2\nidle_timeout_seconds = 2\n";

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Reads (and discards) until the server closes the connection; false if it is still open
/// after `within`.
async fn closed_by_server(stream: &mut (impl AsyncRead + Unpin), within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// One `GET path` on an HTTP/1.1 connection that stays open; returns the status line and
/// headers. Only for bodies with a content-length.
async fn http1_get(
    stream: &mut (impl AsyncRead + tokio::io::AsyncWrite + Unpin),
    path: &str,
) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed mid-response: {}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .expect("content-length");
            if body.len() >= length {
                return head.to_string();
            }
        }
    }
}

async fn metrics(s: &Server) -> String {
    s.get_ok("/metrics").await.text
}

/// A client that completes the TLS handshake and then sends nothing — whichever protocol it
/// negotiated — is disconnected after the first-request timeout. So is one that never starts
/// the handshake (the handshake timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_silent_after_the_handshake_is_disconnected() {
    let dir = TempDir::new("conn-silent");
    let s = Server::start_dev(dir.path(), SHORT_TIMEOUTS);
    let mut silent = Vec::new();
    for protocols in [&[][..], &[H1][..], &[H2][..], &[H2, H1][..]] {
        let stream = s.tls_from(loopback(1), protocols).await.unwrap();
        let negotiated = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        silent.push((protocols, negotiated, stream));
    }
    let mut no_handshake = s.tcp_from(loopback(1)).await.unwrap();
    for (offered, negotiated, stream) in &mut silent {
        assert!(
            closed_by_server(stream, CLOSE_DEADLINE).await,
            "ALPN {offered:?} (negotiated {negotiated:?}): still open after {CLOSE_DEADLINE:?}"
        );
    }
    assert!(
        closed_by_server(&mut no_handshake, CLOSE_DEADLINE).await,
        "a TCP connection without a handshake is still open"
    );
    // The server still serves.
    s.get_ok("/health").await;
}

/// An HTTP/1.1 keep-alive connection left idle after one complete request is closed — by
/// hyper's header read timeout (which also covers the wait for the next request) and, on its
/// own, by the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http1_keepalive_connection_is_closed() {
    for (tag, limits) in [
        (
            "header timeout",
            "header_read_timeout_seconds = 2\nidle_timeout_seconds = 3600",
        ),
        (
            "idle timeout",
            "header_read_timeout_seconds = 3600\nidle_timeout_seconds = 2",
        ),
    ] {
        let dir = TempDir::new("conn-h1-idle");
        let s = Server::start_dev(dir.path(), &format!("[limits]\n{limits}\n"));
        let mut stream = s.tls_from(loopback(1), &[H1]).await.unwrap();
        let head = http1_get(&mut stream, "/health").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{tag}: {head}");
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{tag}: {head}"
        );
        assert!(
            closed_by_server(&mut stream, CLOSE_DEADLINE).await,
            "{tag}: the idle keep-alive connection is still open"
        );
    }
}

/// A connection that keeps making requests, each well within the timeouts, stays open for
/// longer than the idle timeout: the timeout counts idleness, not the connection's age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_connection_is_not_closed_as_idle() {
    let dir = TempDir::new("conn-busy");
    let s = Server::start_dev(
        dir.path(),
        "[limits]\nheader_read_timeout_seconds = 5\nidle_timeout_seconds = 5\n",
    );
    let mut stream = s.tls_from(loopback(1), &[H1]).await.unwrap();
    // 8 s in all, 0.4 s apart.
    for _ in 0..20 {
        let head = http1_get(&mut stream, "/health").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

/// An HTTP/2 connection over which the client answers and sends pings but opens no stream is
/// sent GOAWAY and closed after the idle timeout — whether it served a request first or never
/// opened one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_without_streams_is_closed_though_it_answers_pings() {
    let dir = TempDir::new("conn-h2-idle");
    let s = Server::start_dev(dir.path(), SHORT_TIMEOUTS);
    let idle_closed_before = sample(
        &metrics(&s).await,
        "sovra_connections_idle_closed_total",
        &[],
    )
    .unwrap_or(0.0);
    for served_a_request in [true, false] {
        let stream = s.tls_from(loopback(1), &[H2]).await.unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(H2));
        let (send, mut connection) = h2::client::handshake(stream).await.unwrap();
        let mut send = send.ready().await.unwrap();
        let mut ping_pong = connection.ping_pong().unwrap();
        let mut connection = tokio::spawn(connection);
        if served_a_request {
            let request = http::Request::get(format!("https://{}/health", s.host_port()))
                .body(())
                .unwrap();
            let (response, _) = send.send_request(request, true).unwrap();
            let response = response.await.unwrap();
            assert_eq!(response.status(), 200);
            let mut body = response.into_body();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                body.flow_control().release_capacity(chunk.len()).unwrap();
            }
        }
        // `send` stays alive: the client keeps the connection and keeps pinging.
        let mut pongs = 0;
        let ended = tokio::time::timeout(CLOSE_DEADLINE, async {
            loop {
                tokio::select! {
                    ended = &mut connection => return ended,
                    pong = ping_pong.ping(h2::Ping::opaque()) => {
                        if pong.is_ok() {
                            pongs += 1;
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }
        })
        .await;
        assert!(
            ended.is_ok(),
            "request first: {served_a_request}; the connection is still open after {pongs} pongs"
        );
        assert!(pongs > 0, "the server never answered a ping");
        drop(send);
    }
    let idle_closed = sample(
        &metrics(&s).await,
        "sovra_connections_idle_closed_total",
        &[],
    )
    .unwrap_or(0.0);
    assert!(
        idle_closed >= idle_closed_before + 2.0,
        "{idle_closed_before} -> {idle_closed}"
    );
}

/// An HTTP/2 stream whose body never ends is answered by the request timeout (the handler's
/// body read is inside it), and the connection is closed as idle afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_request_body_that_never_ends_times_out() {
    let dir = TempDir::new("conn-h2-body");
    let s = Server::start_dev(
        dir.path(),
        "[limits]\nheader_read_timeout_seconds = 2\nidle_timeout_seconds = 2\nrequest_timeout_seconds = 2\n",
    );
    let stream = s.tls_from(loopback(1), &[H2]).await.unwrap();
    let (send, connection) = h2::client::handshake(stream).await.unwrap();
    let mut connection = tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    let request = http::Request::post(format!("https://{}/api/v1/keys", s.host_port()))
        .header(
            "authorization",
            format!("Bearer {}", s.token.as_deref().unwrap()),
        )
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let (response, mut body) = send.send_request(request, false).unwrap();
    body.send_data(bytes::Bytes::from_static(b"{\"name\": "), false)
        .unwrap();
    let response = tokio::time::timeout(CLOSE_DEADLINE, response)
        .await
        .expect("no answer to the unfinished request")
        .unwrap();
    assert_eq!(response.status(), 503);
    let mut answer = Vec::new();
    let mut response_body = response.into_body();
    while let Some(chunk) = response_body.data().await {
        answer.extend_from_slice(&chunk.unwrap());
    }
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["error"]["code"], "request_timeout", "{answer}");
    assert!(
        tokio::time::timeout(CLOSE_DEADLINE, &mut connection)
            .await
            .is_ok(),
        "the connection is still open after its only request ended"
    );
    drop((send, body));
}

/// One source (127.0.0.2) opens 1,000 connections: it keeps its cap of 100, every other one
/// is closed before the TLS handshake and counted, and another source (127.0.0.3) is served
/// while they are held — the global cap (150) would otherwise be exhausted. Closing them
/// frees the source's slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_hold_every_connection() {
    const CAP: usize = 100;
    const ATTEMPTS: usize = 1000;
    let dir = TempDir::new("conn-per-source");
    // Long timeouts: the held connections stay open for the whole test.
    let s = Server::start_dev(
        dir.path(),
        &format!(
            "[limits]\nmax_connections = 150\nmax_connections_per_source = {CAP}\n\
             header_read_timeout_seconds = 600\nidle_timeout_seconds = 600\n"
        ),
    );
    let (attacker, other) = (loopback(2), loopback(3));
    let s = std::sync::Arc::new(s);
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..ATTEMPTS {
        let s = s.clone();
        attempts.spawn(async move {
            // Bounded: without the cap, the connections over the global cap wait unaccepted.
            let attempt = async {
                let tcp = s.tcp_from(attacker).await.ok()?;
                let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                s.tls_connector(&[H1]).connect(name, tcp).await.ok()
            };
            tokio::time::timeout(Duration::from_secs(20), attempt)
                .await
                .ok()
                .flatten()
        });
    }
    let mut held = Vec::new();
    while let Some(attempt) = attempts.join_next().await {
        held.extend(attempt.unwrap());
    }
    assert_eq!(held.len(), CAP, "connections the attacker holds");

    // Another source is served while they are held.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&s.cacert).unwrap()).unwrap();
    let from_other = reqwest::Client::builder()
        .tls_certs_only([ca])
        .local_address(other)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for _ in 0..5 {
        let r = from_other.get(s.url("/health")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let m = from_other
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused = sample(
        &m,
        "sovra_connections_refused_total",
        &[("reason", "per_source_limit")],
    );
    assert_eq!(refused, Some((ATTEMPTS - CAP) as f64), "refusals counted");

    // The held ones still work; the attacker gets a slot back once it closes one.
    let mut first = held.pop().unwrap();
    assert!(
        http1_get(&mut first, "/health")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(s.tls_from(attacker, &[H1]).await.is_err(), "over the cap");
    drop(first);
    let deadline = tokio::time::Instant::now() + CLOSE_DEADLINE;
    loop {
        if let Ok(mut again) = s.tls_from(attacker, &[H1]).await {
            assert!(
                http1_get(&mut again, "/health")
                    .await
                    .starts_with("HTTP/1.1 200")
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was never released"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);
}

/// Over IPv6 the source is the /64: ::1 is capped like any other address (two addresses of
/// one /64 sharing a bucket is shown by the server's unit tests; loopback has only ::1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_sources_are_capped() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no ::1 on this machine; skipped");
        return;
    }
    let dir = TempDir::new("conn-v6");
    let s = Server::start_dev_listening(
        dir.path(),
        "[::1]:0",
        "[limits]\nmax_connections = 50\nmax_connections_per_source = 5\n\
         header_read_timeout_seconds = 600\nidle_timeout_seconds = 600\n",
        &[],
    );
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..20 {
        match s.tls_from(v6, &[H1]).await {
            Ok(stream) => held.push(stream),
            Err(_) => refused += 1,
        }
    }
    assert_eq!((held.len(), refused), (5, 15));
    let head = http1_get(&mut held[0], "/health").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}
