//! Typed identifiers. An org id, an identity id and a key id are three different things; as
//! bare strings and UUIDs they could be passed for one another, and an unvalidated org name
//! could reach a store query. Each is built only by parsing (validated) or from a stored record.

use serde::Serialize;
use std::fmt;
use uuid::Uuid;

/// Most bytes of an org id.
pub const MAX_ORG_ID_LEN: usize = 64;

/// An organization id: 1–64 of `[a-z0-9_-]`, path-safe and log-safe.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct OrgId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an organization id is 1 to 64 characters of a-z, 0-9, '-' and '_'")]
pub struct InvalidOrgId;

impl OrgId {
    pub fn parse(s: &str) -> Result<OrgId, InvalidOrgId> {
        let valid = !s.is_empty()
            && s.len() <= MAX_ORG_ID_LEN
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if valid {
            Ok(OrgId(s.to_string()))
        } else {
            Err(InvalidOrgId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The identity a principal acts as, and the owner of the keys it creates. Today it is the
/// subject namespaced by where it authenticated (`ISSUER#SUB`, `dev-token#SUB`), the form key
/// owners are stored in; stored identity records will give it an id of their own, and these
/// forms keep naming the keys they own.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct IdentityId(String);

impl IdentityId {
    /// The identity of a JWT subject. Issuers cannot contain `#` (checked when the config
    /// loads), so the form is unambiguous.
    pub(crate) fn jwt(issuer: &str, subject: &str) -> IdentityId {
        IdentityId(format!("{issuer}#{subject}"))
    }

    /// The identity of the dev token's subject: never equal to a JWT identity, so a JWT whose
    /// `sub` imitates the dev subject owns nothing of the dev identity's.
    pub(crate) fn dev(subject: &str) -> IdentityId {
        IdentityId(format!("dev-token#{subject}"))
    }

    /// An identity id as a record stored it (a key's owner).
    pub fn from_stored(s: &str) -> IdentityId {
        IdentityId(s.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdentityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<String> for IdentityId {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

/// A key's id: a random UUID, chosen by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct KeyId(Uuid);

impl KeyId {
    pub(crate) fn random() -> KeyId {
        KeyId(Uuid::new_v4())
    }

    /// Parses a key id as a client sends it; `None` for anything that is not a UUID (which
    /// callers answer exactly like a key that does not exist).
    pub fn parse(s: &str) -> Option<KeyId> {
        Uuid::parse_str(s).ok().map(KeyId)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for KeyId {
    fn from(u: Uuid) -> KeyId {
        KeyId(u)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A key as a request names it: by id (the native API, AWS key ids) or by name within the
/// caller's view (Vault transit paths, AWS aliases).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    Id(KeyId),
    Name(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_ids_are_validated_when_parsed() {
        for good in ["dev", "acme-corp", "a_1", &"a".repeat(64)] {
            assert_eq!(
                OrgId::parse(good).map(|o| o.to_string()),
                Ok(good.to_string())
            );
        }
        for bad in [
            "",
            "Acme",
            "a/b",
            "a b",
            "../x",
            "é",
            &"a".repeat(65),
            "a#b",
        ] {
            assert_eq!(OrgId::parse(bad), Err(InvalidOrgId), "{bad:?}");
        }
    }

    /// The dev identity and a JWT subject of the same name are two owners; this is what keeps a
    /// JWT that imitates the dev subject away from the dev identity's keys.
    #[test]
    fn identity_forms_keep_issuers_apart() {
        assert_eq!(
            IdentityId::jwt("https://idp", "alice").as_str(),
            "https://idp#alice"
        );
        assert_eq!(IdentityId::dev("dev-admin").as_str(), "dev-token#dev-admin");
        assert_ne!(IdentityId::jwt("a", "x"), IdentityId::jwt("b", "x"));
    }

    #[test]
    fn key_ids_parse_only_uuids() {
        let id = KeyId::random();
        assert_eq!(KeyId::parse(&id.to_string()), Some(id));
        assert_eq!(KeyId::parse("not-a-uuid"), None);
        assert_eq!(KeyId::parse(""), None);
    }
}
