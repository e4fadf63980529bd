//! Identity links: which user a sign-in token's subject is. A link is keyed by the token's
//! (`iss`, `sub`), the only pair an issuer promises never to reuse for someone else (an email
//! address can change hands; a username can be renamed), and carries the user's active and
//! staff flags, so that authenticating a token is one consistent read, as for a key.
use crate::users::UserId;
use serde::{Deserialize, Serialize};

/// A link's key: `["<iss>","<sub>"]`, JSON, so that no issuer and subject can spell another
/// pair's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityKey(pub String);

impl IdentityKey {
    pub fn of(issuer: &str, subject: &str) -> Self {
        IdentityKey(serde_json::Value::from(vec![issuer, subject]).to_string())
    }
}

/// How a link came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkedBy {
    /// At the token's first use, to the user whose address is its verified email.
    VerifiedEmail,
    /// At the token's first use, with a user created for it.
    NewUser,
    /// By an operator (`users-admin link-identity`).
    Operator,
}

/// One link, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentityLink {
    pub identity: String,
    pub issuer: String,
    pub subject: String,
    pub user_uuid: UserId,
    pub user_is_staff: bool,
    pub user_is_active: bool,
    pub linked_at: String,
    pub linked_by: LinkedBy,
}

impl IdentityLink {
    pub fn new(issuer: &str, subject: &str, user: UserId, is_staff: bool, by: LinkedBy) -> Self {
        IdentityLink {
            identity: IdentityKey::of(issuer, subject).0,
            issuer: issuer.to_string(),
            subject: subject.to_string(),
            user_uuid: user,
            user_is_staff: is_staff,
            user_is_active: true,
            linked_at: crate::clock::iso_now(),
            linked_by: by,
        }
    }

    pub fn key(&self) -> IdentityKey {
        IdentityKey(self.identity.clone())
    }
}

/// What became of an attempt to write a new link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkWrite {
    Linked,
    /// Another request linked this identity first: read the link again and use it.
    AlreadyLinked,
    /// The user is not there or not active (a deactivation came first).
    UserInactive,
    /// The address is (now) another user's: claimed meanwhile when creating a user, or left
    /// the user it was read for when linking by address.
    EmailTaken,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_be_spelt_by_another_pair() {
        assert_eq!(IdentityKey::of("https://i", "s").0, r#"["https://i","s"]"#);
        assert_ne!(
            IdentityKey::of("a\",\"b", "c"),
            IdentityKey::of("a", "b\",\"c")
        );
        assert_ne!(IdentityKey::of("a|b", "c"), IdentityKey::of("a", "b|c"));
    }
}
