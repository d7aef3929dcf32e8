//! The route table: one declaration per route — method, path pattern, handler, the operation
//! it performs, who may call it and how it is rate-limited, whether it works while sealed and
//! whether it is audited. The router and its OpenAPI document are built from it
//! ([`crate::openapi::router`]), and every layer reads the matched route's declaration from the
//! request's extensions ([`declare`], [`spec`]) instead of keeping a list of paths of its own:
//! the seal gate ([`crate::middleware::seal_gate`]), the rate limits ([`crate::ratelimit`]),
//! the audit layer ([`crate::audit`]) and the OpenAPI document's shared errors. A request that
//! matches no route is declared too ([`UNMATCHED`], [`METHOD_NOT_ALLOWED`]), so a path outside
//! the table is never mistaken for one of its routes.

use super::{audit, crypto, keys, meta, sys};
use crate::ratelimit::Class;
use crate::serve::AppState;
use axum::extract::{MatchedPath, Request};
use axum::http::{Extensions, Method};
use axum::middleware::Next;
use axum::response::Response;
use sovra_core::authz;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use utoipa_axum::router::UtoipaMethodRouter;
use utoipa_axum::routes;

/// What a request does, named in its audit event. Every route has its own; the name's first
/// segment is the area of the authorization action it requires ([`Operation::requires`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    MetaHealth,
    MetaReady,
    MetaMetrics,
    MetaOpenapi,
    SysSealStatus,
    SysInit,
    SysUnseal,
    SysSeal,
    OrgKekRotate,
    KeyCreate,
    KeyList,
    KeyRead,
    KeyUpdate,
    KeyRotate,
    KeyDisable,
    KeyEnable,
    KeyScheduleDeletion,
    KeyCancelDeletion,
    KeyEncrypt,
    KeyEncryptBatch,
    KeyDecrypt,
    KeyDecryptBatch,
    KeyReencrypt,
    KeyDatakey,
    KeyDatakeyWithoutPlaintext,
    KeySign,
    KeyVerify,
    KeyMac,
    KeyVerifyMac,
    KeyPublicKey,
    AuditPublicKey,
    AuditList,
    AuditExport,
    AuditHash,
    /// No route has the request's path.
    Unmatched,
    /// A route has the path but not the method.
    MethodNotAllowed,
}

impl Operation {
    /// The stable name audit events and `sovra audit list --action` use.
    pub fn as_str(self) -> &'static str {
        use Operation::*;
        match self {
            MetaHealth => "meta.health",
            MetaReady => "meta.ready",
            MetaMetrics => "meta.metrics",
            MetaOpenapi => "meta.openapi",
            SysSealStatus => "sys.seal_status",
            SysInit => "sys.init",
            SysUnseal => "sys.unseal",
            SysSeal => "sys.seal",
            OrgKekRotate => "org.kek.rotate",
            KeyCreate => "key.create",
            KeyList => "key.list",
            KeyRead => "key.read",
            KeyUpdate => "key.update",
            KeyRotate => "key.rotate",
            KeyDisable => "key.disable",
            KeyEnable => "key.enable",
            KeyScheduleDeletion => "key.schedule_deletion",
            KeyCancelDeletion => "key.cancel_deletion",
            KeyEncrypt => "key.encrypt",
            KeyEncryptBatch => "key.encrypt_batch",
            KeyDecrypt => "key.decrypt",
            KeyDecryptBatch => "key.decrypt_batch",
            KeyReencrypt => "key.reencrypt",
            KeyDatakey => "key.datakey",
            KeyDatakeyWithoutPlaintext => "key.datakey_without_plaintext",
            KeySign => "key.sign",
            KeyVerify => "key.verify",
            KeyMac => "key.mac",
            KeyVerifyMac => "key.verify_mac",
            KeyPublicKey => "key.public_key",
            AuditPublicKey => "audit.public_key",
            AuditList => "audit.list",
            AuditExport => "audit.export",
            AuditHash => "audit.hash",
            Unmatched => "unmatched",
            MethodNotAllowed => "method_not_allowed",
        }
    }

    /// The authorization action the core checks for this operation (`None`: it needs no
    /// caller). A reencrypt checks `key.use` on both keys.
    pub fn requires(self) -> Option<authz::Action> {
        use Operation::*;
        use authz::Action as A;
        match self {
            MetaHealth | MetaReady | MetaMetrics | MetaOpenapi | SysSealStatus | SysInit
            | SysUnseal | AuditPublicKey | Unmatched | MethodNotAllowed => None,
            SysSeal => Some(A::SysSeal),
            OrgKekRotate => Some(A::OrgKekRotate),
            KeyCreate => Some(A::KeyCreate),
            KeyList => Some(A::KeyList),
            KeyRead | KeyPublicKey => Some(A::KeyRead),
            KeyUpdate | KeyRotate | KeyDisable | KeyEnable | KeyScheduleDeletion
            | KeyCancelDeletion => Some(A::KeyManage),
            KeyEncrypt | KeyEncryptBatch | KeyDecrypt | KeyDecryptBatch | KeyReencrypt
            | KeyDatakey | KeyDatakeyWithoutPlaintext | KeySign | KeyVerify | KeyMac
            | KeyVerifyMac => Some(A::KeyUse),
            AuditList | AuditExport | AuditHash => Some(A::AuditRead),
        }
    }
}

/// Who may call a route, and how it is rate-limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, never limited: probes and public documents.
    Unlimited,
    /// Anyone; every request is charged to its source IP.
    Unauthenticated,
    /// A bearer token; charged to the caller's identity in this class, and to the source IP
    /// on every 401.
    Authenticated(Class),
}

impl Access {
    /// The class a request of this route is charged to, if any.
    pub fn class(self) -> Option<Class> {
        match self {
            Access::Unlimited => None,
            Access::Unauthenticated => Some(Class::Unauthenticated),
            Access::Authenticated(class) => Some(class),
        }
    }
}

/// Builds a route's handler together with its OpenAPI operation.
pub type Handler = fn() -> UtoipaMethodRouter<Arc<AppState>>;

/// One route's declaration.
#[derive(Debug)]
pub struct RouteSpec {
    /// Any method for the fallbacks (declared as GET).
    pub method: Method,
    /// The pattern as the router matches it (`/api/v1/keys/{id}`); empty for the fallbacks.
    pub path: &'static str,
    /// `None` for the fallbacks, which are not routes of their own.
    pub handler: Option<Handler>,
    pub operation: Operation,
    pub access: Access,
    pub allowed_while_sealed: bool,
    pub audited: bool,
}

impl RouteSpec {
    /// A route that is authenticated or limited as `access`, refused while sealed (503), and
    /// audited: the defaults, so a declaration states only its exceptions.
    const fn new(
        method: Method,
        path: &'static str,
        handler: Handler,
        operation: Operation,
        access: Access,
    ) -> RouteSpec {
        RouteSpec {
            method,
            path,
            handler: Some(handler),
            operation,
            access,
            allowed_while_sealed: false,
            audited: true,
        }
    }

    const fn while_sealed(mut self) -> RouteSpec {
        self.allowed_while_sealed = true;
        self
    }

    /// Probes and the API document are not requests to the service.
    const fn unaudited(mut self) -> RouteSpec {
        self.audited = false;
        self
    }

    pub fn action(&self) -> &'static str {
        self.operation.as_str()
    }
}

use Access::{Authenticated, Unauthenticated, Unlimited};
use Class::{Crypto, KeyAdmin, Read, Sys};
use Operation as Op;

const GET: Method = Method::GET;
const POST: Method = Method::POST;
const PATCH: Method = Method::PATCH;

/// Every route of the API.
pub static ROUTES: &[RouteSpec] = &[
    RouteSpec::new(GET, "/health", || routes!(meta::health), Op::MetaHealth, Unlimited)
        .while_sealed()
        .unaudited(),
    RouteSpec::new(GET, "/ready", || routes!(meta::ready), Op::MetaReady, Unlimited)
        .while_sealed()
        .unaudited(),
    RouteSpec::new(GET, "/metrics", || routes!(meta::metrics), Op::MetaMetrics, Unlimited)
        .while_sealed()
        .unaudited(),
    RouteSpec::new(
        GET,
        "/api/v1/openapi.json",
        || routes!(meta::openapi),
        Op::MetaOpenapi,
        Unlimited,
    )
    .while_sealed()
    .unaudited(),
    RouteSpec::new(
        GET,
        "/api/v1/sys/seal-status",
        || routes!(sys::seal_status),
        Op::SysSealStatus,
        Unlimited,
    )
    .while_sealed(),
    RouteSpec::new(
        POST,
        "/api/v1/sys/init",
        || routes!(sys::init),
        Op::SysInit,
        Unauthenticated,
    )
    .while_sealed(),
    RouteSpec::new(
        POST,
        "/api/v1/sys/unseal",
        || routes!(sys::unseal),
        Op::SysUnseal,
        Unauthenticated,
    )
    .while_sealed(),
    RouteSpec::new(
        POST,
        "/api/v1/sys/seal",
        || routes!(sys::seal),
        Op::SysSeal,
        Authenticated(Sys),
    ),
    RouteSpec::new(
        POST,
        "/api/v1/sys/kek/rotate",
        || routes!(sys::rotate_kek),
        Op::OrgKekRotate,
        Authenticated(Sys),
    ),
    RouteSpec::new(
        POST,
        "/api/v1/keys",
        || routes!(keys::create_key),
        Op::KeyCreate,
        Authenticated(KeyAdmin),
    ),
    RouteSpec::new(
        GET,
        "/api/v1/keys",
        || routes!(keys::list_keys),
        Op::KeyList,
        Authenticated(Read),
    ),
    RouteSpec::new(
        GET,
        "/api/v1/keys/{id}",
        || routes!(keys::get_key),
        Op::KeyRead,
        Authenticated(Read),
    ),
    RouteSpec::new(
        PATCH,
        "/api/v1/keys/{id}",
        || routes!(keys::update_key),
        Op::KeyUpdate,
        Authenticated(KeyAdmin),
    ),
    RouteSpec::new(
        POST,
        "/api/v1/keys/{id}/rotate",
        || routes!(keys::rotate_key),
        Op::KeyRotate,
        Authenticated(KeyAdmin),
    ),
    RouteSpec::new(
        POST,
        "/api/v1/keys/{id}/disable",
        || routes!(keys::disable_key),
        Op::KeyDisable,
        Authenticated(KeyAdmin),
    ),
    RouteSpec::new(
        POST,
        "/api/v1/keys/{id}/enable",
        || routes!(keys::enable_key),
        Op::KeyEnable,
        Authenticated(KeyAdmin),
    ),
    RouteSpec::new(
        POST,
        "/api/v1/keys/{id}/schedule-deletion",
        || routes!(keys::schedule_deletion),
        Op::KeyScheduleDeletion,
        Authenticated(KeyAdmin),
    ),
    RouteSpec::new(
        POST,
        "/api/v1/keys/{id}/cancel-deletion",
        || routes!(keys::cancel_deletion),
        Op::KeyCancelDeletion,
        Authenticated(KeyAdmin),
    ),
    RouteSpec::new(
        POST,
        "/api/v1/keys/{id}/encrypt",
        || routes!(crypto::encrypt),
        Op::KeyEncrypt,
        Authenticated(Crypto),
    ),
    RouteSpec::new(
        POST,
        "/api/v1/keys/{id}/encrypt/batch",
        || routes!(crypto::encrypt_batch),
        Op::KeyEncryptBatch,
        Authenticated(Crypto),
    ),
    RouteSpec::new(
        POST,
        "/api/v1/decrypt",
        || routes!(crypto::decrypt),
        Op::KeyDecrypt,
        Authenticated(Crypto),
    ),
    RouteSpec::new(
        POST,
        "/api/v1/decrypt/batch",
        || routes!(crypto::decrypt_batch),
        Op::KeyDecryptBatch,
        Authenticated(Crypto),
    ),
    RouteSpec::new(
        POST,
        "/api/v1/keys/{id}/reencrypt",
        || routes!(crypto::reencrypt),
        Op::KeyReencrypt,
        Authenticated(Crypto),
    ),
    RouteSpec::new(
        POST,
        "/api/v1/keys/{id}/datakey",
        || routes!(crypto::datakey),
        Op::KeyDatakey,
        Authenticated(Crypto),
    ),
    RouteSpec::new(
        POST,
        "/api/v1/keys/{id}/datakey-without-plaintext",
        || routes!(crypto::datakey_without_plaintext),
        Op::KeyDatakeyWithoutPlaintext,
        Authenticated(Crypto),
    ),
    RouteSpec::new(
        POST,
        "/api/v1/keys/{id}/sign",
        || routes!(crypto::sign),
        Op::KeySign,
        Authenticated(Crypto),
    ),
    RouteSpec::new(
        POST,
        "/api/v1/keys/{id}/verify",
        || routes!(crypto::verify),
        Op::KeyVerify,
        Authenticated(Crypto),
    ),
    RouteSpec::new(
        POST,
        "/api/v1/keys/{id}/mac",
        || routes!(crypto::mac),
        Op::KeyMac,
        Authenticated(Crypto),
    ),
    RouteSpec::new(
        POST,
        "/api/v1/keys/{id}/verify-mac",
        || routes!(crypto::verify_mac),
        Op::KeyVerifyMac,
        Authenticated(Crypto),
    ),
    RouteSpec::new(
        GET,
        "/api/v1/keys/{id}/public-key",
        || routes!(crypto::public_key),
        Op::KeyPublicKey,
        Authenticated(Read),
    ),
    // Verifying an export needs the key before anything else, also while sealed.
    RouteSpec::new(
        GET,
        "/api/v1/audit/public-key",
        || routes!(audit::public_key),
        Op::AuditPublicKey,
        Unlimited,
    )
    .while_sealed(),
    RouteSpec::new(
        GET,
        "/api/v1/audit",
        || routes!(audit::list),
        Op::AuditList,
        Authenticated(Read),
    ),
    RouteSpec::new(
        GET,
        "/api/v1/audit/export",
        || routes!(audit::export),
        Op::AuditExport,
        Authenticated(Read),
    ),
    // A keyed-hash lookup reads the audit log too.
    RouteSpec::new(
        POST,
        "/api/v1/audit/hash",
        || routes!(audit::hash),
        Op::AuditHash,
        Authenticated(Read),
    ),
];

/// A request whose path no route has: answered 404 (503 while sealed), charged to its source
/// IP like any unauthenticated request, and audited.
pub static UNMATCHED: RouteSpec = fallback(Operation::Unmatched);

/// A request whose path a route has but not with its method: answered 405 (503 while
/// sealed), declared like [`UNMATCHED`].
pub static METHOD_NOT_ALLOWED: RouteSpec = fallback(Operation::MethodNotAllowed);

const fn fallback(operation: Operation) -> RouteSpec {
    RouteSpec {
        method: GET,
        path: "",
        handler: None,
        operation,
        access: Unauthenticated,
        allowed_while_sealed: false,
        audited: true,
    }
}

/// The declarations by path, built once.
static BY_PATH: LazyLock<HashMap<&'static str, Vec<&'static RouteSpec>>> = LazyLock::new(|| {
    let mut map: HashMap<&'static str, Vec<&'static RouteSpec>> = HashMap::new();
    for spec in ROUTES {
        map.entry(spec.path).or_default().push(spec);
    }
    map
});

/// The declared route with this method and path pattern, if there is one.
pub fn declared(method: &Method, path: &str) -> Option<&'static RouteSpec> {
    // The router answers HEAD with the GET handler.
    let method = if *method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    BY_PATH
        .get(path)?
        .iter()
        .copied()
        .find(|spec| spec.method == *method)
}

/// The declaration that applies to a request with this method and matched route pattern.
pub fn lookup(method: &Method, matched: Option<&str>) -> &'static RouteSpec {
    match matched {
        None => &UNMATCHED,
        Some(path) => declared(method, path).unwrap_or(&METHOD_NOT_ALLOWED),
    }
}

/// The declaration of the request, as [`declare`] put it into its extensions (looked up again
/// for a request that did not pass that layer).
pub fn spec(method: &Method, extensions: &Extensions) -> &'static RouteSpec {
    match extensions.get::<&'static RouteSpec>() {
        Some(spec) => spec,
        None => lookup(method, extensions.get::<MatchedPath>().map(MatchedPath::as_str)),
    }
}

/// The layer, outside every layer that reads it, that puts the matched route's declaration
/// into the request's extensions.
pub async fn declare(mut req: Request, next: Next) -> Response {
    let spec = lookup(
        req.method(),
        req.extensions().get::<MatchedPath>().map(MatchedPath::as_str),
    );
    req.extensions_mut().insert(spec);
    next.run(req).await
}
