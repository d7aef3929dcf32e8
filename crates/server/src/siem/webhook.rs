//! The webhook sink: POSTs each batch as a JSON array to an HTTPS URL, with an optional
//! `Authorization` header taken from the environment. Separate because it is the only sink
//! speaking HTTP and holding a secret.

use super::config::WebhookSinkConfig;
use super::{DeliveryError, IO_TIMEOUT};
use sovra_core::audit::ExportLine;

pub(super) struct WebhookSink {
    client: reqwest::Client,
    url: reqwest::Url,
    /// The URL without query (it may carry a token), for errors and logs.
    shown: String,
    /// Marked sensitive: never printed by Debug.
    auth: Option<reqwest::header::HeaderValue>,
}

impl WebhookSink {
    pub(super) fn new(c: &WebhookSinkConfig) -> Result<WebhookSink, String> {
        let url = reqwest::Url::parse(&c.url).map_err(|e| format!("url: {e}"))?;
        let mut shown = url.clone();
        shown.set_query(None);
        shown.set_fragment(None);
        let auth = match &c.auth_header_env {
            None => None,
            Some(var) => {
                let value = std::env::var(var).map_err(|_| {
                    format!("environment variable {var} (auth_header_env) is not set")
                })?;
                let mut v = reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
                    format!("environment variable {var} does not hold a valid header value")
                })?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        let mut b = reqwest::Client::builder()
            .timeout(IO_TIMEOUT)
            .https_only(true)
            // A redirect would carry the Authorization header elsewhere; treat it as a failure.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &c.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| format!("cannot read ca_file {}: {e}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
            b = b.tls_certs_only([cert]);
        }
        let client = b.build().map_err(|e| e.to_string())?;
        Ok(WebhookSink {
            client,
            url,
            shown: shown.to_string(),
            auth,
        })
    }

    pub(super) async fn deliver(&mut self, lines: &[ExportLine]) -> Result<(), DeliveryError> {
        let body = serde_json::to_vec(lines).map_err(|e| DeliveryError::Request {
            url: self.shown.clone(),
            message: e.to_string(),
        })?;
        let mut req = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(auth) = &self.auth {
            req = req.header(reqwest::header::AUTHORIZATION, auth.clone());
        }
        let resp = req.send().await.map_err(|e| DeliveryError::Request {
            url: self.shown.clone(),
            message: error_chain(&e.without_url()),
        })?;
        if !resp.status().is_success() {
            return Err(DeliveryError::Status {
                url: self.shown.clone(),
                status: resp.status().as_u16(),
            });
        }
        Ok(())
    }
}

/// An error and its causes ("error sending request: … : Connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
