use crate::ids::{IdentityId, OrgId};
use std::fmt;

/// How a principal proved its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod {
    /// A JWT from a configured issuer.
    Jwt { issuer: String },
    /// The dev-mode token (only in `sovra server --dev`).
    DevToken,
}

impl AuthMethod {
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthMethod::Jwt { .. } => "jwt",
            AuthMethod::DevToken => "dev-token",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Administers its organization (KEK rotation).
    Admin,
    /// Operates the server itself (seal); server-wide, so distinct from an org admin.
    Operator,
    /// Uses and manages its own keys.
    User,
    /// Reads its organization's audit log.
    Auditor,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "user" => Some(Role::User),
            "auditor" => Some(Role::Auditor),
            _ => None,
        }
    }
}

/// The authenticated caller, passed to every core call. Its fields are private and only the
/// authentication layer ([`super::Authenticator`]) builds one, from a verified credential: no
/// other crate can make up a principal, or change the org or roles of one it was given. Later
/// identity kinds (mTLS admins, service accounts) add fields here, not new paths.
#[derive(Clone, PartialEq, Eq)]
pub struct Principal {
    org: OrgId,
    identity: IdentityId,
    subject: String,
    roles: Vec<Role>,
    auth_method: AuthMethod,
    /// SHA-256 fingerprint of the client certificate, when mTLS authenticated the caller.
    cert_fingerprint: Option<String>,
}

impl Principal {
    pub(crate) fn new(
        org: OrgId,
        subject: &str,
        roles: Vec<Role>,
        auth_method: AuthMethod,
    ) -> Principal {
        let identity = match &auth_method {
            AuthMethod::Jwt { issuer } => IdentityId::jwt(issuer, subject),
            AuthMethod::DevToken => IdentityId::dev(subject),
        };
        Principal {
            org,
            identity,
            subject: subject.to_string(),
            roles,
            auth_method,
            cert_fingerprint: None,
        }
    }

    /// A principal for tests of the core and the store, which have no credentials to verify.
    #[cfg(any(test, feature = "test-support"))]
    pub fn for_tests(org: &str, subject: &str, roles: Vec<Role>, auth_method: AuthMethod) -> Self {
        let org = OrgId::parse(org).unwrap_or_else(|e| panic!("test org {org:?}: {e}"));
        Principal::new(org, subject, roles, auth_method)
    }

    pub fn org(&self) -> &OrgId {
        &self.org
    }

    /// The identity that owns keys: the subject namespaced by where it was authenticated, so
    /// the same `sub` from two issuers (or a JWT imitating the dev identity) are two owners.
    pub fn identity(&self) -> &IdentityId {
        &self.identity
    }

    /// The subject as the credential named it (for logs; ownership uses [`Self::identity`]).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub fn roles(&self) -> &[Role] {
        &self.roles
    }

    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    pub fn auth_method(&self) -> &AuthMethod {
        &self.auth_method
    }

    pub fn cert_fingerprint(&self) -> Option<&str> {
        self.cert_fingerprint.as_deref()
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("org", &self.org.as_str())
            .field("identity", &self.identity.as_str())
            .field("roles", &self.roles)
            .field("auth_method", &self.auth_method.as_str())
            .finish()
    }
}
