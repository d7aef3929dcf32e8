//! The route table: one declaration per route — method, path pattern, handler, the operation
//! it performs, who may call it and how it is rate-limited, whether it works while sealed and
//! whether it is audited. The router and its OpenAPI document are built from it
//! ([`crate::openapi::router`]), and every layer reads the matched route's declaration from the
//! request's extensions ([`declare`], [`spec`]) instead of keeping a list of paths of its own:
//! the seal gate ([`crate::middleware::seal_gate`]), the rate limits ([`crate::ratelimit`]),
//! the audit layer ([`crate::audit`]) and the OpenAPI document's shared errors. A request that
//! matches no route is declared too ([`UNMATCHED`], [`METHOD_NOT_ALLOWED`]), so a path outside
//! the table is never mistaken for one of its routes.

use super::{audit, crypto, grants, identities, keys, meta, orgs, sys};
use crate::ratelimit::Class;
use crate::state::AppState;
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
    OrgCreate,
    OrgList,
    OrgRead,
    OrgSuspend,
    OrgResume,
    IdentityList,
    IdentityRead,
    IdentityRegister,
    IdentityUpdate,
    KeyCreate,
    KeyList,
    KeyRead,
    KeyUpdate,
    KeyRotate,
    KeyDisable,
    KeyEnable,
    KeyScheduleDeletion,
    KeyCancelDeletion,
    KeyGrantCreate,
    KeyGrantList,
    KeyGrantRevoke,
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
            OrgCreate => "org.create",
            OrgList => "org.list",
            OrgRead => "org.read",
            OrgSuspend => "org.suspend",
            OrgResume => "org.resume",
            IdentityList => "identity.list",
            IdentityRead => "identity.read",
            IdentityRegister => "identity.register",
            IdentityUpdate => "identity.update",
            KeyCreate => "key.create",
            KeyList => "key.list",
            KeyRead => "key.read",
            KeyUpdate => "key.update",
            KeyRotate => "key.rotate",
            KeyDisable => "key.disable",
            KeyEnable => "key.enable",
            KeyScheduleDeletion => "key.schedule_deletion",
            KeyCancelDeletion => "key.cancel_deletion",
            KeyGrantCreate => "key.grant",
            KeyGrantList => "key.list_grants",
            KeyGrantRevoke => "key.revoke_grant",
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
            OrgCreate | OrgList | OrgRead | OrgSuspend | OrgResume => Some(A::OrgManage),
            IdentityList | IdentityRead => Some(A::IdentityRead),
            IdentityRegister | IdentityUpdate => Some(A::IdentityManage),
            KeyCreate => Some(A::KeyCreate),
            KeyList => Some(A::KeyList),
            KeyRead | KeyPublicKey => Some(A::KeyRead),
            KeyUpdate | KeyRotate | KeyDisable | KeyEnable | KeyScheduleDeletion
            | KeyCancelDeletion => Some(A::KeyManage),
            KeyEncrypt
            | KeyEncryptBatch
            | KeyDecrypt
            | KeyDecryptBatch
            | KeyReencrypt
            | KeyDatakey
            | KeyDatakeyWithoutPlaintext
            | KeySign
            | KeyVerify
            | KeyMac
            | KeyVerifyMac => Some(A::KeyUse),
            AuditList | AuditExport | AuditHash => Some(A::AuditRead),
            KeyGrantCreate | KeyGrantList | KeyGrantRevoke => Some(A::KeyGrant),
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
const DELETE: Method = Method::DELETE;

/// Every route of the API.
pub static ROUTES: &[RouteSpec] = &[
    RouteSpec::new(
        GET,
        "/health",
        || routes!(meta::health),
        Op::MetaHealth,
        Unlimited,
    )
    .while_sealed()
    .unaudited(),
    RouteSpec::new(
        GET,
        "/ready",
        || routes!(meta::ready),
        Op::MetaReady,
        Unlimited,
    )
    .while_sealed()
    .unaudited(),
    RouteSpec::new(
        GET,
        "/metrics",
        || routes!(meta::metrics),
        Op::MetaMetrics,
        Unlimited,
    )
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
    // A probe like /health: unlimited, so not audited either (it would let anyone write
    // events at any rate).
    .unaudited()
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
        "/api/v1/orgs",
        || routes!(orgs::create_org),
        Op::OrgCreate,
        Authenticated(Sys),
    ),
    RouteSpec::new(
        GET,
        "/api/v1/orgs",
        || routes!(orgs::list_orgs),
        Op::OrgList,
        Authenticated(Read),
    ),
    RouteSpec::new(
        GET,
        "/api/v1/orgs/{id}",
        || routes!(orgs::get_org),
        Op::OrgRead,
        Authenticated(Read),
    ),
    RouteSpec::new(
        POST,
        "/api/v1/orgs/{id}/suspend",
        || routes!(orgs::suspend_org),
        Op::OrgSuspend,
        Authenticated(Sys),
    ),
    RouteSpec::new(
        POST,
        "/api/v1/orgs/{id}/resume",
        || routes!(orgs::resume_org),
        Op::OrgResume,
        Authenticated(Sys),
    ),
    RouteSpec::new(
        GET,
        "/api/v1/identities",
        || routes!(identities::list_identities),
        Op::IdentityList,
        Authenticated(Read),
    ),
    RouteSpec::new(
        POST,
        "/api/v1/identities",
        || routes!(identities::register_identity),
        Op::IdentityRegister,
        Authenticated(Sys),
    ),
    RouteSpec::new(
        GET,
        "/api/v1/identities/{id}",
        || routes!(identities::get_identity),
        Op::IdentityRead,
        Authenticated(Read),
    ),
    RouteSpec::new(
        PATCH,
        "/api/v1/identities/{id}",
        || routes!(identities::update_identity),
        Op::IdentityUpdate,
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
        "/api/v1/keys/{id}/grants",
        || routes!(grants::create_grant),
        Op::KeyGrantCreate,
        Authenticated(KeyAdmin),
    ),
    RouteSpec::new(
        GET,
        "/api/v1/keys/{id}/grants",
        || routes!(grants::list_grants),
        Op::KeyGrantList,
        Authenticated(Read),
    ),
    RouteSpec::new(
        DELETE,
        "/api/v1/keys/{id}/grants/{grant_id}",
        || routes!(grants::revoke_grant),
        Op::KeyGrantRevoke,
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
    .unaudited()
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
        None => lookup(
            method,
            extensions.get::<MatchedPath>().map(MatchedPath::as_str),
        ),
    }
}

/// The layer, outside every layer that reads it, that puts the matched route's declaration
/// into the request's extensions.
pub async fn declare(mut req: Request, next: Next) -> Response {
    let spec = lookup(
        req.method(),
        req.extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    req.extensions_mut().insert(spec);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashSet};

    fn documented_operations(
        doc: &utoipa::openapi::OpenApi,
    ) -> Vec<(Method, String, &utoipa::openapi::path::Operation)> {
        let mut out = Vec::new();
        for (path, item) in doc.paths.paths.iter() {
            for (method, op) in [
                (Method::GET, &item.get),
                (Method::POST, &item.post),
                (Method::PUT, &item.put),
                (Method::PATCH, &item.patch),
                (Method::DELETE, &item.delete),
                (Method::HEAD, &item.head),
                (Method::OPTIONS, &item.options),
                (Method::TRACE, &item.trace),
            ] {
                if let Some(op) = op {
                    out.push((method, path.clone(), op));
                }
            }
        }
        out
    }

    /// A handler whose annotation names another method or path than its declaration, or a
    /// route served without a declaration, fails here.
    #[test]
    fn the_router_serves_exactly_the_declared_routes() {
        for spec in ROUTES {
            let handler = spec.handler.expect("a route has a handler");
            let (_, paths, _) = handler();
            let doc = utoipa::openapi::OpenApiBuilder::new().paths(paths).build();
            let ops: Vec<_> = documented_operations(&doc)
                .into_iter()
                .map(|(m, p, _)| (m, p))
                .collect();
            assert_eq!(
                ops,
                vec![(spec.method.clone(), spec.path.to_string())],
                "the handler of {} {} is annotated otherwise",
                spec.method,
                spec.path
            );
        }
        let (_, doc) = crate::openapi::router();
        let served: BTreeSet<(String, String)> = documented_operations(&doc)
            .into_iter()
            .map(|(m, p, _)| (m.to_string(), p))
            .collect();
        let declared: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|s| (s.method.to_string(), s.path.to_string()))
            .collect();
        assert_eq!(declared.len(), ROUTES.len(), "a route is declared twice");
        assert_eq!(served, declared);
        for (method, path) in &declared {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let spec = lookup(&method, Some(path));
            assert_eq!((&spec.method, spec.path), (&method, path.as_str()));
        }
    }

    #[test]
    fn requests_outside_the_table_get_the_fallback_declarations() {
        assert_eq!(lookup(&Method::GET, None).operation, Operation::Unmatched);
        assert_eq!(
            lookup(&Method::DELETE, Some("/api/v1/keys")).operation,
            Operation::MethodNotAllowed
        );
        assert_eq!(
            lookup(&Method::HEAD, Some("/health")).operation,
            Operation::MetaHealth
        );
        for fallback in [&UNMATCHED, &METHOD_NOT_ALLOWED] {
            assert!(fallback.handler.is_none());
            assert_eq!(fallback.access, Access::Unauthenticated);
            assert!(fallback.audited && !fallback.allowed_while_sealed);
        }
        // Read from the extensions the layer fills, else looked up.
        let mut ext = Extensions::new();
        assert_eq!(spec(&Method::GET, &ext).operation, Operation::Unmatched);
        ext.insert(&ROUTES[0]);
        assert_eq!(spec(&Method::POST, &ext).operation, ROUTES[0].operation);
    }

    #[test]
    fn every_route_gets_a_distinct_action_name() {
        let mut seen = HashSet::new();
        for spec in ROUTES.iter().chain([&UNMATCHED, &METHOD_NOT_ALLOWED]) {
            let action = spec.action();
            assert!(
                seen.insert(action),
                "{action} names two routes (one is {} {})",
                spec.method,
                spec.path
            );
            assert!(
                action.split('.').all(
                    |s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                ),
                "{action}"
            );
        }
        for (method, path, action) in [
            (POST, "/api/v1/keys/{id}/encrypt", "key.encrypt"),
            (POST, "/api/v1/keys", "key.create"),
            (GET, "/api/v1/keys/{id}", "key.read"),
            (POST, "/api/v1/decrypt", "key.decrypt"),
            (POST, "/api/v1/sys/seal", "sys.seal"),
            (POST, "/api/v1/sys/kek/rotate", "org.kek.rotate"),
            (GET, "/api/v1/audit", "audit.list"),
        ] {
            assert_eq!(lookup(&method, Some(path)).action(), action);
        }
    }

    /// The operation's name lines up with the authorization action the core checks: the same
    /// area, and the same name where the route is the action itself.
    #[test]
    fn operations_name_the_authorization_actions_they_require() {
        let mut required = Vec::new();
        for spec in ROUTES {
            let op = spec.operation;
            let authenticated = matches!(spec.access, Access::Authenticated(_));
            assert_eq!(
                op.requires().is_some(),
                authenticated,
                "{}: only authenticated routes reach an authorization check",
                op.as_str()
            );
            let Some(action) = op.requires() else {
                continue;
            };
            required.push(action);
            let area = |name: &'static str| name.split('.').next();
            assert_eq!(area(op.as_str()), area(action.as_str()), "{}", op.as_str());
        }
        for (op, action) in [
            (Operation::KeyCreate, authz::Action::KeyCreate),
            (Operation::KeyList, authz::Action::KeyList),
            (Operation::KeyRead, authz::Action::KeyRead),
            (Operation::KeyPublicKey, authz::Action::KeyRead),
            (Operation::KeyRotate, authz::Action::KeyManage),
            (Operation::KeyUpdate, authz::Action::KeyManage),
            (Operation::KeyEncrypt, authz::Action::KeyUse),
            (Operation::KeyDecrypt, authz::Action::KeyUse),
            (Operation::OrgKekRotate, authz::Action::OrgKekRotate),
            (Operation::SysSeal, authz::Action::SysSeal),
            (Operation::AuditExport, authz::Action::AuditRead),
        ] {
            assert_eq!(op.requires(), Some(action), "{}", op.as_str());
        }
        assert_eq!(
            Operation::KeyCreate.as_str(),
            authz::Action::KeyCreate.as_str()
        );
        assert_eq!(Operation::SysSeal.as_str(), authz::Action::SysSeal.as_str());
        assert_eq!(
            Operation::OrgKekRotate.as_str(),
            authz::Action::OrgKekRotate.as_str()
        );
        // Every authorization action is reachable through some route (the match fails to
        // compile when an action is added).
        for action in [
            authz::Action::KeyCreate,
            authz::Action::KeyList,
            authz::Action::KeyRead,
            authz::Action::KeyManage,
            authz::Action::KeyUse,
            authz::Action::KeyGrant,
            authz::Action::OrgKekRotate,
            authz::Action::OrgManage,
            authz::Action::IdentityRead,
            authz::Action::IdentityManage,
            authz::Action::SysSeal,
            authz::Action::AuditRead,
        ] {
            match action {
                authz::Action::KeyCreate
                | authz::Action::KeyList
                | authz::Action::KeyRead
                | authz::Action::KeyManage
                | authz::Action::KeyUse
                | authz::Action::KeyGrant
                | authz::Action::OrgKekRotate
                | authz::Action::OrgManage
                | authz::Action::IdentityRead
                | authz::Action::IdentityManage
                | authz::Action::SysSeal
                | authz::Action::AuditRead => {}
            }
            assert!(
                required.contains(&action),
                "no route requires {}",
                action.as_str()
            );
        }
    }

    /// The OpenAPI document states what the table declares: a bearer token, admission's 403
    /// and the row check's 500 exactly on the authenticated routes, 429 wherever a request can
    /// be limited, 503 wherever it is gated.
    #[test]
    fn the_openapi_document_follows_the_table() {
        let (_, doc) = crate::openapi::router();
        for (method, path, op) in documented_operations(&doc) {
            let spec = declared(&method, &path).expect("declared");
            let what = format!("{method} {path}");
            let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
            assert_eq!(
                secured,
                matches!(spec.access, Access::Authenticated(_)),
                "{what}: security"
            );
            let r = &op.responses.responses;
            assert_eq!(r.contains_key("401"), secured, "{what}: 401");
            assert_eq!(
                r.contains_key("429"),
                spec.access.class().is_some(),
                "{what}: 429"
            );
            if !spec.allowed_while_sealed {
                assert!(r.contains_key("503"), "{what}: 503");
            }
            if secured {
                assert!(r.contains_key("403"), "{what}: 403 admission");
            }
            assert_eq!(
                r.contains_key("500"),
                secured,
                "{what}: 500 integrity_violation (identity and key rows)"
            );
        }
    }

    /// `sovra db verify` counts a key's changes by their audit action names: exactly the
    /// operations that write a key row (create and the management actions) are in its list,
    /// and every name in it is one of them.
    #[test]
    fn key_row_changes_are_the_key_writing_operations() {
        use sovra_core::integrity::KEY_ROW_CHANGES;
        let listed: BTreeSet<&str> = KEY_ROW_CHANGES.iter().map(|(a, _)| *a).collect();
        assert_eq!(
            listed.len(),
            KEY_ROW_CHANGES.len(),
            "an action listed twice"
        );
        let writing: BTreeSet<&str> = ROUTES
            .iter()
            .map(|r| r.operation)
            .filter(|op| {
                matches!(
                    op.requires(),
                    Some(authz::Action::KeyCreate | authz::Action::KeyManage)
                )
            })
            .map(Operation::as_str)
            .collect();
        assert_eq!(listed, writing);
    }
}
