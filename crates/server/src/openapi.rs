//! The router and its OpenAPI document come from the same route list, so they cannot drift.

use crate::routes::{audit, crypto, keys, meta, sys};
use crate::serve::AppState;
use axum::Router;
use std::sync::Arc;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
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

pub fn router() -> (Router<Arc<AppState>>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
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
        .split_for_parts()
}
