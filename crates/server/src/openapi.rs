//! The router and its OpenAPI document, both built from the route table
//! ([`crate::routes::table`]), so they cannot drift from each other or from the layers.

use crate::routes::table::{self, Access, ROUTES};
use crate::state::AppState;
use axum::Router;
use std::sync::Arc;
use utoipa::openapi::header::Header;
use utoipa::openapi::response::Response;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Object, Ref, RefOr, Type};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

#[derive(OpenApi)]
#[openapi(
    info(title = "Sovra", description = "Sovereign key management service"),
    modifiers(&BearerAuth),
    tags((name = "keys"), (name = "crypto"), (name = "sys"), (name = "orgs"), (name = "identities"), (name = "audit"), (name = "meta"))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Adds the errors that layers and extractors give every operation they wrap, so that the
/// annotations name only an operation's own errors and cannot forget these.
fn add_shared_errors(doc: &mut utoipa::openapi::OpenApi) {
    for (path, item) in doc.paths.paths.iter_mut() {
        let ops = [
            (axum::http::Method::GET, &mut item.get),
            (axum::http::Method::POST, &mut item.post),
            (axum::http::Method::PUT, &mut item.put),
            (axum::http::Method::PATCH, &mut item.patch),
            (axum::http::Method::DELETE, &mut item.delete),
        ];
        for (method, op) in ops {
            let Some(op) = op else { continue };
            // Every documented operation is declared (tested); undeclared ones would be gated.
            let spec = table::declared(&method, path);
            let access = spec.map_or(Access::Unauthenticated, |s| s.access);
            let gated = spec.is_none_or(|s| !s.allowed_while_sealed);
            let json_body = op.request_body.is_some();
            let r = &mut op.responses.responses;
            if let Access::Authenticated(_) = access {
                // The bearer extractor, then the caller's rate limit (crate::ratelimit).
                ensure(r, "401", "Missing, malformed or rejected bearer token");
                // Admission (sovra_core::kms::Kms::admit): unknown or suspended org, unknown
                // or disabled identity, a service account claiming admin.
                ensure(
                    r,
                    "403",
                    "The credential's org or identity is not admitted, or the action is denied",
                );
                // sovra_core::integrity: every authenticated request loads its identity's row
                // (and key routes their key's); one edited outside Sovra is refused.
                ensure(
                    r,
                    "500",
                    "A stored row fails its integrity check (integrity_violation)",
                );
            }
            if access.class().is_some() {
                ensure(r, "429", "Rate limited");
            }
            if json_body {
                // crate::extract::ApiJson.
                ensure(r, "400", "Malformed JSON or invalid input");
                ensure(r, "413", "Request body over the size limit");
                ensure(r, "415", "Content-Type is not application/json");
            }
            if gated {
                // crate::middleware::seal_gate; storage and the RSA pool answer 503 too.
                ensure(
                    r,
                    "503",
                    "Sealed, not initialized, or temporarily unavailable",
                );
            }
            for (code, resp) in r.iter_mut() {
                // OpenAPI requires a description on every response.
                if let RefOr::T(resp) = resp
                    && resp.description.is_empty()
                {
                    resp.description = code
                        .parse()
                        .ok()
                        .and_then(|c| axum::http::StatusCode::from_u16(c).ok())
                        .and_then(|c| c.canonical_reason())
                        .unwrap_or("Response")
                        .into();
                }
                // ApiError sets Retry-After on every 429 and 503.
                if let ("429" | "503", RefOr::T(resp)) = (code.as_str(), resp)
                    && is_error_body(resp)
                {
                    resp.headers.entry("Retry-After".into()).or_insert_with(|| {
                        RefOr::T({
                            let mut h = Header::new(Object::with_type(Type::Integer));
                            h.description = Some("Whole seconds to wait".into());
                            h
                        })
                    });
                }
            }
        }
    }
}

fn error_body() -> Ref {
    Ref::from_schema_name("ErrorBody")
}

fn is_error_body(resp: &Response) -> bool {
    matches!(
        resp.content.get("application/json"),
        Some(RefOr::T(c)) if c.schema == Some(RefOr::Ref(error_body()))
    )
}

/// Documents `code` with the shared error body unless the operation already does.
fn ensure(
    responses: &mut std::collections::BTreeMap<String, RefOr<Response>>,
    code: &str,
    description: &str,
) {
    responses.entry(code.into()).or_insert_with(|| {
        let mut resp = Response::new(description);
        resp.content.insert(
            "application/json".into(),
            RefOr::T(Content::new(Some(error_body()))),
        );
        RefOr::T(resp)
    });
}

/// The routes of [`ROUTES`] and their OpenAPI document.
pub fn router() -> (Router<Arc<AppState>>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = ROUTES
        .iter()
        .filter_map(|spec| spec.handler)
        .fold(
            OpenApiRouter::with_openapi(ApiDoc::openapi()),
            |r, handler| r.routes(handler()),
        )
        .split_for_parts();
    add_shared_errors(&mut doc);
    (router, doc)
}
