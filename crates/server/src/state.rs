//! The state every handler and middleware shares. Its own module so that routes depend on what
//! a request can reach, not on how the server is built or run.

use crate::config::Config;
use metrics_exporter_prometheus::PrometheusHandle;
use sovra_core::Kms;
use sovra_core::audit::AuditWriter;
use sovra_core::identity::Authenticator;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

pub struct AppState {
    pub kms: Arc<Kms>,
    pub auth: Authenticator,
    pub config: Config,
    pub metrics: PrometheusHandle,
    pub openapi_json: String,
    /// Requests being processed; shutdown waits for these, not for idle connections.
    pub in_flight: Arc<AtomicUsize>,
    /// The request audit log's writer; `None` when auditing is turned off.
    pub audit: Option<AuditWriter>,
    pub rate_limits: Arc<crate::ratelimit::RateLimits>,
    /// The one-time token `sys/init` needs; empty (every init refused) until the server
    /// prepares one at start outside dev mode.
    pub init_gate: crate::init_token::InitGate,
}
