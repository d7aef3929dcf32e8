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

/// The authenticated caller, built only from a verified credential and passed to every core
/// call. Later identity kinds (mTLS admins, service accounts) add fields here, not new paths.
#[derive(Clone, PartialEq, Eq)]
pub struct Principal {
    pub org_id: String,
    pub subject: String,
    pub roles: Vec<Role>,
    pub auth_method: AuthMethod,
    /// SHA-256 fingerprint of the client certificate, when mTLS authenticated the caller.
    pub cert_fingerprint: Option<String>,
}

impl Principal {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// The identity that owns keys: the subject namespaced by where it was authenticated, so
    /// the same `sub` from two issuers (or a JWT imitating the dev identity) are two owners.
    /// Issuers cannot contain `#` (checked when the config loads), so the form is unambiguous.
    pub fn owner_id(&self) -> String {
        match &self.auth_method {
            AuthMethod::Jwt { issuer } => format!("{issuer}#{}", self.subject),
            AuthMethod::DevToken => format!("dev-token#{}", self.subject),
        }
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("org_id", &self.org_id)
            .field("subject", &self.subject)
            .field("roles", &self.roles)
            .field("auth_method", &self.auth_method.as_str())
            .finish()
    }
}

/// Organization ids are path-safe identifiers chosen by the identity provider.
pub fn validate_org_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}
