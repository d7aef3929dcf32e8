//! The application: routes, OpenAPI document and the middleware layers around them, in the
//! order a request passes them. Separate from the listener (`serve`) so that tests can build the
//! router without serving it, and so that the layer order reads in one place.

use crate::config::Config;
use crate::serve::InFlightGuard;
use crate::state::AppState;
use crate::{middleware, openapi};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sovra_core::Kms;
use sovra_core::audit::AuditWriter;
use sovra_core::identity::Authenticator;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The process's Prometheus recorder, installed on first use (before any metric is registered).
pub(crate) fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ])
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // A second server in the same process keeps the first recorder.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Builds the application: routes, OpenAPI document and layers, outermost last.
pub fn app(
    kms: Arc<Kms>,
    auth: Authenticator,
    config: Config,
    audit: Option<AuditWriter>,
) -> (Router, Arc<AppState>) {
    let (routes, doc) = openapi::router();
    let openapi_json = doc.to_json().unwrap_or_else(|_| "{}".into());
    let limits = config.limits.clone();
    // Validated when the config was parsed.
    let trusted_proxies =
        Arc::new(crate::client_addr::parse_proxies(&config.trusted_proxies).unwrap_or_default());
    let in_flight = Arc::new(AtomicUsize::new(0));
    let rate_limits = Arc::new(crate::ratelimit::RateLimits::new(&config.rate_limits));
    rate_limits.start_cleanup();
    kms.set_heavy_op_admission(rate_limits.clone());
    let state = Arc::new(AppState {
        kms,
        auth,
        config,
        metrics: metrics_handle(),
        openapi_json,
        in_flight: in_flight.clone(),
        audit,
        rate_limits,
        init_gate: Default::default(),
    });
    let router = routes
        .fallback(middleware::not_found)
        .method_not_allowed_fallback(middleware::method_not_allowed)
        // Authentication, then the caller's rate limit, for the routes the table declares
        // authenticated; inside the seal gate, so a sealed server verifies no token.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::seal_gate,
        ))
        // Per source IP; inside the metrics layer so that 429s are counted.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::ratelimit::layer,
        ))
        // Outside the seal gate so that 503s while sealed are counted too.
        .layer(axum::middleware::from_fn(middleware::record_metrics))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            Duration::from_secs(limits.request_timeout_seconds),
            middleware::request_timeout,
        ))
        // Outside the timeout, so a request that times out is audited too.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::audit::audit_requests,
        ))
        // Outside every layer that reads the matched route's declaration.
        .layer(axum::middleware::from_fn(crate::routes::table::declare))
        .layer(axum::middleware::from_fn(middleware::request_id_and_log))
        // First of all: who the request is from (behind a trusted proxy, the forwarded client).
        .layer(axum::middleware::from_fn_with_state(
            trusted_proxies,
            crate::client_addr::layer,
        ))
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let guard = InFlightGuard::new(in_flight.clone());
                async move {
                    let resp = next.run(req).await;
                    drop(guard);
                    resp
                }
            },
        ))
        .with_state(state.clone());
    (router, state)
}
