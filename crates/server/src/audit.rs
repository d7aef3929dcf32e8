//! One audit event per request: the layer that builds it from what the request revealed
//! (route, principal, resource, outcome, source) and answers only once the event is durable;
//! and the checkpoint task that signs the chain head. Which routes are audited, and the action
//! an event names, come from the route table ([`crate::routes::table`]).
//!
//! Who the caller was comes back on the response, where the authentication layer put its
//! result ([`sovra_core::identity::Authenticated`]); handlers add what only they learn (the
//! resource a ciphertext names, sensitive fields) through a task-local slot
//! ([`note_resource`], [`note_sensitive`]), so no handler signature changes for auditing.
//! Sensitive values (the bearer token, encryption contexts) are stored only as keyed hashes.

use crate::AppState;
use crate::error::{ApiError, ErrorCode, REQUEST_ID, current_request_id};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sovra_core::audit::AuditEvent;
use sovra_core::identity::Authenticated;
use sovra_crypto::SecretBytes;
use std::sync::{Arc, Mutex};

/// What the handler revealed while it ran.
#[derive(Default)]
struct Facts {
    resource: Option<String>,
    sensitive: Vec<(&'static str, SecretBytes)>,
}

tokio::task_local! {
    static FACTS: Arc<Mutex<Facts>>;
}

fn with_facts(f: impl FnOnce(&mut Facts)) {
    let _ = FACTS.try_with(|slot| {
        if let Ok(mut facts) = slot.lock() {
            f(&mut facts);
        }
    });
}

/// The resource acted on, when the path does not name it (a decrypt names its key in the
/// ciphertext).
pub fn note_resource(resource: String) {
    with_facts(|f| f.resource = Some(resource));
}

/// A sensitive value the request carried; the event keeps only its keyed hash.
pub fn note_sensitive(field: &'static str, value: &[u8]) {
    with_facts(|f| {
        if !f.sensitive.iter().any(|(name, _)| *name == field) {
            f.sensitive.push((field, SecretBytes::from_slice(value)));
        }
    });
}

/// `key/<id>` when the route names a key; otherwise the route's area (`sys`, `audit`); `none`
/// for the fallbacks, which have no pattern.
fn resource_from_path(route: &str, path: &str) -> String {
    if route.is_empty() {
        return "none".into();
    }
    for (pattern, actual) in route.split('/').zip(path.split('/')) {
        if pattern == "{id}" {
            // The id is caller-chosen text: bounded, whatever was sent.
            let end = actual
                .char_indices()
                .nth(MAX_RESOURCE_ID_CHARS)
                .map_or(actual.len(), |(at, _)| at);
            return ["key/", &actual[..end]].concat();
        }
    }
    route
        .trim_start_matches("/api/v1/")
        .split('/')
        .next()
        .unwrap_or("none")
        .to_string()
}

/// Most characters of a caller-chosen key id an event keeps.
const MAX_RESOURCE_ID_CHARS: usize = 64;

fn outcome(status: StatusCode) -> &'static str {
    match status.as_u16() {
        s if s < 400 => "success",
        401 | 403 | 429 => "denied",
        _ => "failure",
    }
}

/// The bearer token, parsed as the authentication layer parses it (scheme, one space, the token,
/// trimmed), so that the token hashed here is the one that authenticated the request; here on
/// raw bytes, since a header that is not text is audited too.
fn bearer_token(req: &Request) -> Option<SecretBytes> {
    let value = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)?
        .as_bytes();
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, token) = (&value[..space], &value[space + 1..]);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| SecretBytes::from_slice(token.trim_ascii()))
}

/// The audit layer. A client that disconnects cannot cancel the event of an operation that
/// already happened (`FinishedEvenIfDropped`); the response is returned only after the event
/// is durable, and a failed audit write fails the request (503).
pub async fn audit_requests(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(writer) = st.audit.clone() else {
        return next.run(req).await;
    };
    let spec = crate::routes::table::spec(req.method(), req.extensions());
    if !spec.audited {
        return next.run(req).await;
    }
    let path_resource = resource_from_path(spec.path, req.uri().path());
    let source = req
        .extensions()
        .get::<crate::client_addr::ClientAddr>()
        .map_or_else(|| "unknown".to_string(), |c| c.describe());
    let token = bearer_token(&req);
    let request_id = current_request_id();
    let facts = Arc::new(Mutex::new(Facts::default()));
    let guard = crate::serve::InFlightGuard::new(st.in_flight.clone());
    let work = async move {
        // A handler that panics may have done its work already: it is answered 500 and audited
        // like any other failure.
        let resp = answered_even_if_it_panics(FACTS.scope(facts.clone(), next.run(req))).await;
        let facts = std::mem::take(&mut *facts.lock().unwrap_or_else(|e| e.into_inner()));
        let caller = resp.extensions().get::<Arc<Authenticated>>().cloned();
        let mut hashed = std::collections::BTreeMap::new();
        // The HMAC key exists only while unsealed; a sealed server has nothing to hash with.
        if st.kms.is_unsealed()
            && let Ok(keys) = st.kms.audit_keys().await
        {
            if let Some(token) = &token {
                let hash = || keys.keyed_hash("token", token.expose());
                let hash = match &caller {
                    Some(caller) => caller.token_hash.get_or_init(hash).clone(),
                    None => hash(),
                };
                hashed.insert("token".to_string(), hash);
            }
            for (field, value) in &facts.sensitive {
                hashed.insert(field.to_string(), keys.keyed_hash(field, value.expose()));
            }
        }
        let status = resp.status();
        // A caller over its bucket is answered 429 without an event beyond the first of each
        // interval: otherwise refusals would write to disk and the SIEM at any rate.
        if resp.extensions().get::<ErrorCode>().map(|c| c.0) == Some("rate_limited") {
            let who = caller
                .as_ref()
                .map_or_else(|| source.clone(), |c| c.principal.identity().to_string());
            if !st.rate_limits.audit_refusal(&who) {
                drop(guard);
                return resp;
            }
        }
        let error_code = if status.is_success() {
            None
        } else {
            Some(
                resp.extensions()
                    .get::<ErrorCode>()
                    .map_or_else(|| format!("http_{}", status.as_u16()), |c| c.0.to_string()),
            )
        };
        let event = AuditEvent {
            seq: 0,
            time_ms: st.kms.clock().now().as_millis(),
            org: caller.as_ref().map(|c| c.principal.org().to_string()),
            actor: caller.as_ref().map_or_else(
                || "anonymous".into(),
                |c| c.principal.identity().to_string(),
            ),
            auth_method: caller
                .as_ref()
                .map_or("none", |c| c.principal.auth_method().as_str())
                .into(),
            cert_fingerprint: caller
                .as_ref()
                .and_then(|c| c.principal.cert_fingerprint().map(str::to_string)),
            action: spec.action().into(),
            resource: facts.resource.unwrap_or(path_resource),
            outcome: outcome(status).into(),
            error_code,
            request_id: current_request_id(),
            source,
            hashed,
            prev_hash: String::new(),
            hash: String::new(),
        };
        let recorded = writer.record(event).await;
        drop(guard);
        match recorded {
            Ok(_) => resp,
            Err(e) => {
                tracing::error!(error = %e, "audit event not durable; failing the request");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "audit_unavailable",
                    "the audit log cannot be written; the outcome of this request is unknown",
                )
                .into_response()
            }
        }
    };
    FinishedEvenIfDropped::new(tracing::Instrument::in_current_span(
        REQUEST_ID.scope(request_id, work),
    ))
    .await
}

/// A request's work (the operation and its audit event), run inside the connection's task; if
/// that task drops it unfinished (the client went away, the server is shutting the connection
/// down), it moves to a task of its own and finishes there. So a client that disconnects
/// cannot cancel the event of an operation that already happened, without a task per request:
/// spawning every request cost its own scheduling, and its wake-up after the audit write came
/// on whichever worker, cold, and then woke the connection's task in turn.
struct FinishedEvenIfDropped<F: Future<Output = Response> + Send + 'static> {
    /// Boxed so that it can move, mid-flight, to a task of its own.
    work: Option<std::pin::Pin<Box<F>>>,
}

impl<F: Future<Output = Response> + Send + 'static> FinishedEvenIfDropped<F> {
    fn new(work: F) -> Self {
        FinishedEvenIfDropped {
            work: Some(Box::pin(work)),
        }
    }
}

impl<F: Future<Output = Response> + Send + 'static> Future for FinishedEvenIfDropped<F> {
    type Output = Response;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Response> {
        let Some(work) = self.work.as_mut() else {
            return std::task::Poll::Ready(internal_error());
        };
        // A panic in a handler answers 500, as a panicking task's join would, rather than
        // unwinding through the connection's task.
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work.as_mut().poll(cx)));
        match polled {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(resp)) => {
                self.work = None;
                std::task::Poll::Ready(resp)
            }
            Err(_) => {
                // Dropping what panicked may panic again; that must not unwind either.
                let work = self.work.take();
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(work)));
                tracing::error!("a request panicked outside its handler; answered 500");
                std::task::Poll::Ready(internal_error())
            }
        }
    }
}

impl<F: Future<Output = Response> + Send + 'static> Drop for FinishedEvenIfDropped<F> {
    fn drop(&mut self) {
        let Some(work) = self.work.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(work);
            }
            Err(_) => tracing::error!(
                "a request was dropped unfinished outside the runtime; its audit event may be missing"
            ),
        }
    }
}

/// The response of `handler`, or a 500 if it panics.
async fn answered_even_if_it_panics(handler: impl Future<Output = Response>) -> Response {
    match futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(handler)).await {
        Ok(resp) => resp,
        Err(_) => {
            tracing::error!("a request handler panicked; answered 500");
            internal_error()
        }
    }
}

fn internal_error() -> Response {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error",
    )
    .into_response()
}

/// Checks the chain this node found at start against its last signed checkpoint
/// (`Kms::audit_start_check`), once unsealed; returns whether the check ran. An alarm is logged,
/// raised on `sovra_audit_chain_alarm` and appended to the chain as an
/// `audit.chain_unverified` event, so that no later checkpoint signs the chain as if it were
/// whole.
pub async fn check_chain_at_start(st: &AppState, head: Option<&(u64, String)>) -> bool {
    let Some(writer) = &st.audit else { return true };
    if !st.kms.is_unsealed() {
        return false;
    }
    let interval = std::time::Duration::from_secs(st.config.audit.checkpoint_interval_seconds);
    let alarm = match st.kms.audit_start_check(head, interval).await {
        Ok(alarm) => alarm,
        Err(e) => {
            tracing::warn!(error = %e, "audit chain check at start failed; will retry");
            return false;
        }
    };
    metrics::gauge!("sovra_audit_chain_alarm").set(if alarm.is_some() { 1.0 } else { 0.0 });
    let Some(alarm) = alarm else { return true };
    tracing::error!(alarm = %alarm, "AUDIT CHAIN NOT VERIFIED at start");
    let event = AuditEvent::node_alarm(
        "audit.chain_unverified",
        alarm,
        st.kms.clock().now().as_millis(),
    );
    if let Err(e) = writer.record(event).await {
        tracing::error!(error = %e, "the audit chain alarm could not be appended");
        return false;
    }
    true
}

/// Once the chain found at start has been checked: while unsealed, the audit keys are in
/// memory and every group commit's head is signed with them (the writer asks the key service,
/// which has no key while sealed).
pub async fn sign_group_commits(st: &AppState) {
    let Some(writer) = &st.audit else { return };
    if !st.kms.is_unsealed() {
        // Sealed, the key service has no key: commits go unsigned until the next unseal.
        metrics::gauge!("sovra_audit_group_commits_signed").set(0.0);
        return;
    }
    // Unwraps the keys after an unseal; a cache hit otherwise.
    if let Err(e) = st.kms.audit_keys().await {
        tracing::warn!(error = %e, "audit keys unavailable; group commits stay unsigned for now");
        return;
    }
    if !writer.signs_heads() {
        writer.sign_heads_with(st.kms.clone());
        tracing::info!("audit group commits are signed from now on");
    }
    metrics::gauge!("sovra_audit_group_commits_signed").set(1.0);
}

/// Signs the newest head this node appended, if it is newer than the last one signed; only
/// once the chain found at start has been checked ([`sign_group_commits`] has run), so that a
/// rewritten chain is never signed as whole.
pub async fn checkpoint(st: &AppState, last_signed: &mut u64) {
    let Some(writer) = &st.audit else { return };
    if !st.kms.is_unsealed() || !writer.signs_heads() {
        return;
    }
    let Some((seq, head)) = writer.last_appended() else {
        return;
    };
    if seq <= *last_signed {
        return;
    }
    match st.kms.audit_checkpoint(seq, &head).await {
        Ok(_) => *last_signed = seq,
        Err(e) => tracing::warn!(error = %e, "audit checkpoint failed; will retry"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guarantee the audit layer rests on: work its connection drops unfinished still runs
    /// to its end (there, the audit event), in a task of its own; and a panic in it answers
    /// 500 instead of unwinding through the connection.
    #[tokio::test]
    async fn dropped_work_finishes_in_a_task_of_its_own_and_a_panic_answers_500() {
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (finished, finish) = tokio::sync::oneshot::channel::<&str>();
        let work = async move {
            let _ = released.await;
            let _ = finished.send("the event was recorded");
            StatusCode::OK.into_response()
        };
        let mut request = Box::pin(FinishedEvenIfDropped::new(work));
        let waker = std::task::Waker::noop();
        assert!(
            request
                .as_mut()
                .poll(&mut std::task::Context::from_waker(waker))
                .is_pending()
        );
        drop(request);
        release.send(()).unwrap();
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), finish)
            .await
            .expect("the dropped work went on");
        assert_eq!(outcome.unwrap(), "the event was recorded");

        let panics = FinishedEvenIfDropped::new(async {
            if std::hint::black_box(true) {
                panic!("a handler bug");
            }
            StatusCode::OK.into_response()
        });
        assert_eq!(panics.await.status(), StatusCode::INTERNAL_SERVER_ERROR);

        // Inside the work, a handler's panic becomes a 500 response that the event records.
        let handler = answered_even_if_it_panics(async {
            if std::hint::black_box(true) {
                panic!("a handler bug");
            }
            StatusCode::OK.into_response()
        });
        let resp = handler.await;
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            resp.extensions().get::<ErrorCode>().map(|c| c.0),
            Some("internal")
        );
    }

    #[test]
    fn resources_come_from_the_path() {
        assert_eq!(
            resource_from_path("/api/v1/keys/{id}/encrypt", "/api/v1/keys/abc/encrypt"),
            "key/abc"
        );
        assert_eq!(
            resource_from_path("/api/v1/sys/seal", "/api/v1/sys/seal"),
            "sys"
        );
        let long = format!("/api/v1/keys/{}", "x".repeat(5000));
        assert_eq!(resource_from_path("/api/v1/keys/{id}", &long).len(), 4 + 64);
        // Bounded by characters, never cut inside one.
        let wide = format!("/api/v1/keys/{}", "é".repeat(100));
        assert_eq!(
            resource_from_path("/api/v1/keys/{id}", &wide),
            format!("key/{}", "é".repeat(64))
        );
    }
}
