//! The router and its OpenAPI document come from the same route list, so they cannot drift.

use crate::routes::{audit, crypto, keys, meta, sys};
use crate::serve::AppState;
use axum::Router;
use std::sync::Arc;
use utoipa::openapi::header::Header;
use utoipa::openapi::response::Response;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Object, Ref, RefOr, Type};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(OpenApi)]
#[openapi(
    info(title = "Sovra", description = "Sovereign key management service"),
    modifiers(&BearerAuth),
    tags((name = "keys"), (name = "crypto"), (name = "sys"), (name = "audit"), (name = "meta"))
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
        let gated = !crate::middleware::allowed_while_sealed(path);
        let ops = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ];
        for op in ops.into_iter().flatten() {
            let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
            let json_body = op.request_body.is_some();
            let r = &mut op.responses.responses;
            if secured {
                // The bearer extractor, then the caller's rate limit (crate::ratelimit).
                ensure(r, "401", "Missing, malformed or rejected bearer token");
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

pub fn router() -> (Router<Arc<AppState>>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(meta::health))
        .routes(routes!(meta::ready))
        .routes(routes!(meta::metrics))
        .routes(routes!(meta::openapi))
        .routes(routes!(sys::seal_status))
        .routes(routes!(sys::init))
        .routes(routes!(sys::unseal))
        .routes(routes!(sys::seal))
        .routes(routes!(sys::rotate_kek))
        .routes(routes!(keys::create_key, keys::list_keys))
        .routes(routes!(keys::get_key, keys::update_key))
        .routes(routes!(keys::rotate_key))
        .routes(routes!(keys::disable_key))
        .routes(routes!(keys::enable_key))
        .routes(routes!(keys::schedule_deletion))
        .routes(routes!(keys::cancel_deletion))
        .routes(routes!(crypto::encrypt))
        .routes(routes!(crypto::encrypt_batch))
        .routes(routes!(crypto::decrypt))
        .routes(routes!(crypto::decrypt_batch))
        .routes(routes!(crypto::reencrypt))
        .routes(routes!(crypto::datakey))
        .routes(routes!(crypto::datakey_without_plaintext))
        .routes(routes!(crypto::sign))
        .routes(routes!(crypto::verify))
        .routes(routes!(crypto::mac))
        .routes(routes!(crypto::verify_mac))
        .routes(routes!(crypto::public_key))
        .routes(routes!(audit::public_key))
        .routes(routes!(audit::list))
        .routes(routes!(audit::export))
        .routes(routes!(audit::hash))
        .split_for_parts();
    add_shared_errors(&mut doc);
    (router, doc)
}
