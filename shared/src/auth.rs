//! Personal-API-key authentication, scopes, and whose account a path may name.
use crate::error::ApiError;
pub use crate::routes::Scope;
use crate::routes::{Matched, Target, NON_STAFF};
use crate::store::Store;
use crate::users::UserId;
use lambda_http::Request;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// One key. It carries its user's staff and active flags so that authentication is a
/// single read; the operator tool keeps them in step when a user is deactivated.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub secure_value: String,
    pub user_uuid: UserId,
    pub scopes: Vec<String>,
    #[serde(default)]
    pub label: String,
    pub mask: String,
    pub created_at: String,
    #[serde(default)]
    pub last_used_at: Option<String>,
    pub user_is_staff: bool,
    pub user_is_active: bool,
}

/// The base57 alphabet of PostHog keys: base62 without `0 1 O I l`.
const BASE57: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
const KEY_PREFIX: &str = "phx_";
const KEY_BODY_LEN: usize = 48;

/// A personal API key as stored: `sha256$` + lowercase hex SHA-256 of the whole key, the
/// form PostHog uses, so a table dump reveals no key and PostHog hashes can be imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyHash(pub String);

impl ApiKeyHash {
    pub fn of(key: &str) -> Self {
        ApiKeyHash(format!("sha256${}", hex(&Sha256::digest(key.as_bytes()))))
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// A new personal API key and the mask shown in listings.
pub fn generate_api_key() -> (String, String) {
    let mut rng = rand::rng();
    let body: String = (0..KEY_BODY_LEN)
        .map(|_| BASE57[rng.random_range(0..BASE57.len())] as char)
        .collect();
    let key = format!("{KEY_PREFIX}{body}");
    let mask = format!("{KEY_PREFIX}...{}", &key[key.len() - 4..]);
    (key, mask)
}

fn looks_like_key(key: &str) -> bool {
    key.strip_prefix(KEY_PREFIX)
        .is_some_and(|body| body.len() == KEY_BODY_LEN && body.bytes().all(|b| BASE57.contains(&b)))
}

/// The authenticated caller, from its key's record (which carries the user's staff and
/// active flags, so authentication is one read).
#[derive(Debug, Clone)]
pub struct Caller {
    pub uuid: UserId,
    pub is_staff: bool,
    pub scopes: Vec<String>,
    /// The key, when its last use is to be noted: never noted, or not in the last hour.
    pub key_to_note: Option<ApiKeyHash>,
}

/// How often a key's `last_used_at` is written at most, as PostHog does.
pub const KEY_USE_NOTED_EVERY_SECS: u64 = 3600;

/// Whether a key last noted at `last_used_at` (ISO 8601) is due a new note at `now_secs`.
fn key_use_due(last_used_at: Option<&str>, now_secs: u64) -> bool {
    use aws_smithy_types::date_time::{DateTime, Format};
    let Some(last) = last_used_at else {
        return true;
    };
    match DateTime::from_str(last, Format::DateTime) {
        Ok(t) => now_secs.saturating_sub(t.secs().max(0) as u64) >= KEY_USE_NOTED_EVERY_SECS,
        Err(_) => true,
    }
}

impl Caller {
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        let allowed = self.scopes.iter().any(|s| {
            s == "*" || s == scope.as_str() || (scope == Scope::UserRead && s == "user:write")
        });
        if allowed {
            Ok(())
        } else {
            Err(ApiError::PermissionDenied(format!(
                "API key missing required scope '{}'",
                scope.as_str()
            )))
        }
    }
}

/// The key from `Authorization: Bearer <key>`; any other scheme counts as no credentials.
pub fn bearer_key(req: &Request) -> Result<&str, ApiError> {
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::NotAuthenticated)?;
    let (scheme, rest) = header
        .trim()
        .split_once(char::is_whitespace)
        .ok_or(ApiError::NotAuthenticated)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::NotAuthenticated);
    }
    let key = rest.trim();
    if key.is_empty() {
        return Err(ApiError::NotAuthenticated);
    }
    Ok(key)
}

/// Looks the key's hash up (one consistent read) and checks it is live.
pub async fn authenticate(store: &Store, req: &Request) -> Result<Caller, ApiError> {
    let key = bearer_key(req)?;
    if !looks_like_key(key) {
        return Err(ApiError::AuthenticationFailed);
    }
    let hash = ApiKeyHash::of(key);
    let record: ApiKeyRecord = store
        .api_key(&hash)
        .await?
        .ok_or(ApiError::AuthenticationFailed)?;
    let same: bool = record
        .secure_value
        .as_bytes()
        .ct_eq(hash.0.as_bytes())
        .into();
    if !same || !record.user_is_active {
        return Err(ApiError::AuthenticationFailed);
    }
    let uuid = record.user_uuid;
    let due = key_use_due(record.last_used_at.as_deref(), crate::clock::now_secs());
    Ok(Caller {
        uuid,
        is_staff: record.user_is_staff,
        scopes: record.scopes,
        key_to_note: due.then_some(hash),
    })
}

/// Whose account the request acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetUser {
    pub uuid: UserId,
    /// True when a staff caller named another user (whose existence the caller must check).
    pub is_other: bool,
}

/// Applies API.md §2's rules to the `{uuid}` segment. A staff caller naming another user
/// gets that uuid back with `is_other`; the handler's own read of the user then answers 404
/// for an unknown or inactive one, so this costs no extra call.
pub fn target(caller: &Caller, matched: &Matched) -> Result<TargetUser, ApiError> {
    target_of(caller, matched.uuid.as_deref(), matched.route.target)
}

/// The same rules for a uuid given elsewhere than the path (`verify_email`'s body).
pub fn target_of(
    caller: &Caller,
    segment: Option<&str>,
    rule: Target,
) -> Result<TargetUser, ApiError> {
    let me = TargetUser {
        uuid: caller.uuid,
        is_other: false,
    };
    let Some(segment) = segment else {
        return Ok(me);
    };
    let parsed = UserId::parse(segment);
    if segment == "@me" || parsed == Some(caller.uuid) {
        return Ok(me);
    }
    match rule {
        Target::Caller => Ok(me),
        Target::CallerOnly(message) => Err(ApiError::PermissionDenied(message.into())),
        Target::CallerOnlyStaffMessage(message) => Err(ApiError::PermissionDenied(
            if caller.is_staff { message } else { NON_STAFF }.into(),
        )),
        Target::StaffMayTarget if !caller.is_staff => {
            Err(ApiError::PermissionDenied(NON_STAFF.into()))
        }
        Target::StaffMayTarget => parsed
            .map(|uuid| TargetUser {
                uuid,
                is_other: true,
            })
            .ok_or(ApiError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_posthog_form() {
        // The FIPS 180-2 test vector for "abc".
        assert_eq!(
            ApiKeyHash::of("abc").0,
            "sha256$ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let (key, mask) = generate_api_key();
        assert!(looks_like_key(&key), "{key}");
        assert!(mask.starts_with("phx_...") && key.ends_with(&mask[7..]));
        assert!(!key[4..].contains(['0', '1', 'O', 'I', 'l']));
    }

    #[test]
    fn a_key_use_is_noted_at_most_hourly() {
        let at = |secs: i64| {
            aws_smithy_types::DateTime::from_secs(secs)
                .fmt(aws_smithy_types::date_time::Format::DateTime)
                .unwrap()
        };
        let now = 1_800_000_000u64;
        assert!(key_use_due(None, now));
        assert!(key_use_due(Some("not a date"), now));
        assert!(!key_use_due(Some(&at(now as i64 - 10)), now));
        assert!(!key_use_due(Some(&at(now as i64 - 3599)), now));
        assert!(key_use_due(Some(&at(now as i64 - 3600)), now));
        assert!(key_use_due(Some("2026-11-27T09:29:45.069403Z"), now));
        assert!(
            !key_use_due(Some(&at(now as i64 + 60)), now),
            "a clock ahead"
        );
    }

    #[test]
    fn write_implies_read_but_not_the_reverse() {
        let caller = |s: &str| Caller {
            uuid: UserId::parse("00000000-0000-0000-0000-000000000000").expect("the nil uuid"),
            is_staff: false,
            scopes: vec![s.into()],
            key_to_note: None,
        };
        assert!(caller("user:write").require(Scope::UserRead).is_ok());
        assert!(caller("*").require(Scope::UserWrite).is_ok());
        assert_eq!(
            caller("user:read").require(Scope::UserWrite),
            Err(ApiError::PermissionDenied(
                "API key missing required scope 'user:write'".into()
            ))
        );
    }
}
