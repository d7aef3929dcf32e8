//! Sovra's HTTP layer: it parses, authenticates and maps errors; every decision is made in
//! `sovra-core`.

pub mod audit;
pub mod auth;
pub mod client_addr;
pub mod config;
pub mod connections;
pub mod dev;
pub mod error;
pub mod extract;
pub mod hardening;
pub mod init_token;
pub mod middleware;
pub mod openapi;
pub mod private_files;
pub mod ratelimit;
pub mod router;
pub mod routes;
pub mod serve;
pub mod siem;
pub mod state;
pub mod tls;

pub use config::Config;
pub use serve::run;
pub use state::AppState;
