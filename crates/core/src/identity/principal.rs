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
    /// Manages every key of its organization (read, rotate, disable, schedule deletion,
    /// grants) without using any: separation of duties as AWS KMS draws it.
    KeyAdmin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::User => "user",
            Role::Auditor => "auditor",
            Role::KeyAdmin => "key_admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "user" => Some(Role::User),
            "auditor" => Some(Role::Auditor),
            "key_admin" => Some(Role::KeyAdmin),
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
    /// Set by [`crate::kms::Kms::admit`] once the org is an active record and the identity
    /// an active stored one: until then only server-wide (operator) actions are authorized.
    admitted: bool,
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
            admitted: false,
        }
    }

    /// This principal admitted as its stored identity, with the roles the identity record
    /// adds to those of the credential.
    pub(crate) fn admitted(&self, extra_roles: &[Role]) -> Principal {
        let mut p = self.clone();
        for r in extra_roles {
            if !p.roles.contains(r) {
                p.roles.push(*r);
            }
        }
        p.admitted = true;
        p
    }

    /// Whether the org and identity were found active ([`crate::kms::Kms::admit`]).
    pub fn is_admitted(&self) -> bool {
        self.admitted
    }

    /// A principal for tests of the core and the store, which have no credentials to verify;
    /// taken as admitted (its org must still exist for keys to be created in it).
    #[cfg(any(test, feature = "test-support"))]
    pub fn for_tests(org: &str, subject: &str, roles: Vec<Role>, auth_method: AuthMethod) -> Self {
        let org = OrgId::parse(org).unwrap_or_else(|e| panic!("test org {org:?}: {e}"));
        let mut p = Principal::new(org, subject, roles, auth_method);
        p.admitted = true;
        p
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
            .field("admitted", &self.admitted)
            .finish()
    }
}
