//! The audit trail of a user's account security: one record per security-relevant change
//! (2FA on or off, backup codes, a failure lock, email changes, passkeys, sign-in identities,
//! an operator's revocation or deactivation), written in the same DynamoDB transaction as the
//! change it records, kept for a configured time (TTL), and read by the user
//! (`GET /api/users/{uuid}/security_events/`) and by the operator (`users-admin events`).
//!
//! A record says who (the acting user, or the operator), with what (the credential's kind and
//! a prefix of its id: never the credential), when, and in which request; never a secret, a
//! code or a body.
use crate::auth::{Caller, Credential};
use crate::error::ApiError;
use crate::users::UserId;
use serde::{Deserialize, Serialize};

/// What happened. The names are the records' `event` values, which clients read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    TwoFactorEnabled,
    TwoFactorDisabled,
    BackupCodesRegenerated,
    BackupCodeUsed,
    /// A failed code check locked further checks of its kind.
    LockStarted,
    EmailChangeRequested,
    /// The address changed (by a verified code, or at once where no mail is sent).
    EmailChangeCompleted,
    EmailChangeCancelled,
    PasskeyAdded,
    PasskeyRemoved,
    /// A sign-in identity (token issuer and subject) was linked to the user.
    IdentityLinked,
    /// An operator created a key for the user.
    KeyCreated,
    /// An operator revoked one of the user's keys.
    KeyRevoked,
    /// An operator removed a sign-in identity's link to the user.
    IdentityUnlinked,
    /// An operator deactivated the user.
    UserDeactivated,
}

/// Who made a change: the caller of a request, or the operator tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The acting user (a staff caller acting on another user is that staff user); none for
    /// the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<UserId>,
    /// `api_key`, `access_token` or `operator`.
    pub credential: String,
    /// A prefix of the credential's id: the first 8 hex digits of a key's SHA-256, or the first
    /// 8 letters and digits of an access token's `jti`; never enough to authenticate with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<String>,
    /// An access token's app client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The Lambda request id ("-" when there is none, e.g. the operator tool).
    pub request_id: String,
}

impl Actor {
    /// The caller of a request.
    pub fn caller(caller: &Caller, request_id: &str) -> Self {
        let (credential, client) = match &caller.credential {
            Credential::ApiKey => ("api_key", None),
            Credential::AccessToken { client } => ("access_token", Some(client.clone())),
        };
        Actor {
            uuid: Some(caller.uuid),
            credential: credential.into(),
            credential_id: caller.credential_id.clone(),
            client,
            request_id: request_id.to_string(),
        }
    }

    /// The operator tool (`users-admin`), which has no request.
    pub fn operator() -> Self {
        Actor {
            uuid: None,
            credential: "operator".into(),
            credential_id: None,
            client: None,
            request_id: "-".into(),
        }
    }
}

/// How long records are kept when the deployment does not say (`SECURITY_EVENTS_RETENTION_DAYS`).
pub const DEFAULT_RETENTION_DAYS: u64 = 365;

/// One record as stored: partition `user_uuid`, sort key `sk` (the time to the microsecond
/// and a random suffix, so a user's records sort by time and never collide), removed by
/// DynamoDB's TTL at `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityEvent {
    pub user_uuid: UserId,
    pub sk: String,
    pub event: EventKind,
    /// ISO 8601, UTC.
    pub at: String,
    pub actor: Actor,
    /// A short, non-secret qualifier: the 2FA method (`totp`, `passkey`), the check that
    /// locked (`sign_in`, `totp_setup`, `email_change`), a passkey's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub expires_at: u64,
}

impl SecurityEvent {
    /// A record of `event` on `user`'s account by `actor`, now, kept `retention_days`.
    pub fn new(user: UserId, event: EventKind, actor: &Actor, retention_days: u64) -> Self {
        let micros = crate::clock::now_micros();
        let suffix: u32 = rand::random();
        SecurityEvent {
            user_uuid: user,
            sk: format!("{micros:020}#{suffix:08x}"),
            event,
            at: crate::clock::iso_at_micros(micros),
            actor: actor.clone(),
            detail: None,
            expires_at: micros / 1_000_000 + retention_days.saturating_mul(86_400),
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The record as the API shows it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.sk,
            "event": self.event,
            "created_at": self.at,
            "detail": self.detail,
            "actor": {
                "uuid": self.actor.uuid,
                "credential": self.actor.credential,
                "credential_id": self.actor.credential_id,
                "client": self.actor.client,
            },
            "request_id": self.actor.request_id,
        })
    }
}

/// A page of records is at most this long.
pub const MAX_PAGE: usize = 100;
/// A page is this long unless `limit` says otherwise.
pub const DEFAULT_PAGE: usize = 20;

/// Where the next page starts: the sort key of the last record of this one, hex-encoded
/// (clients pass it back as they got it). It is only ever read within the user the path names,
/// so a forged cursor can only move within that user's own records; one that is not a sort
/// key is a 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(pub String);

impl Cursor {
    pub fn encode(&self) -> String {
        crate::auth::hex(self.0.as_bytes())
    }

    pub fn decode(text: &str) -> Result<Self, ApiError> {
        let invalid = || ApiError::invalid_input("Invalid cursor.", Some("cursor"));
        if text.len() != 58 || !text.is_ascii() {
            return Err(invalid());
        }
        let bytes = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| invalid())?;
        let sk = String::from_utf8(bytes).map_err(|_| invalid())?;
        let valid = sk.len() == 29
            && sk.as_bytes()[20] == b'#'
            && sk[..20].bytes().all(|b| b.is_ascii_digit())
            && sk[21..].bytes().all(|b| b.is_ascii_hexdigit());
        if valid {
            Ok(Cursor(sk))
        } else {
            Err(invalid())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_sort_by_time_and_cursors_round_trip() {
        let actor = Actor::operator();
        let user = UserId::parse("00000000-0000-0000-0000-000000000001").expect("uuid");
        let a = SecurityEvent::new(user, EventKind::KeyRevoked, &actor, 1);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = SecurityEvent::new(user, EventKind::UserDeactivated, &actor, 1);
        assert!(a.sk < b.sk, "{} < {}", a.sk, b.sk);
        assert!(b.expires_at >= crate::clock::now_secs() + 86_399);
        let cursor = Cursor(b.sk.clone());
        assert_eq!(Cursor::decode(&cursor.encode()).expect("decodes"), cursor);
        for bad in ["", "!!", "616263", &"A".repeat(58), &"zz".repeat(29)] {
            assert!(Cursor::decode(bad).is_err(), "{bad}");
        }
        let json = a.to_json();
        assert_eq!(json["event"], "key_revoked");
        assert_eq!(json["actor"]["credential"], "operator");
    }
}
