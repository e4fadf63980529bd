//! Authentication (a personal API key or a sign-in token, one `Authorization: Bearer` header
//! for both), scopes, and whose account a path may name.
use crate::error::ApiError;
use crate::identities::{IdentityKey, IdentityLink, LinkWrite, LinkedBy};
pub use crate::routes::Scope;
use crate::routes::{Matched, Target, NON_STAFF};
use crate::store::Store;
use crate::tokens::{self, NewIdentity, TokenVerifier, VerifiedToken};
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

    /// The first 8 hex digits of the hash: enough to tell a user's keys apart in the audit
    /// trail and `users-admin`, nothing to authenticate with.
    pub fn id_prefix(&self) -> &str {
        let digits = self.0.strip_prefix("sha256$").unwrap_or(&self.0);
        digits.get(..8).unwrap_or(digits)
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

/// What the caller signed in with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    ApiKey,
    /// A sign-in token of this app client.
    AccessToken {
        client: String,
    },
}

/// The authenticated caller, from its key's record or its token's identity link (each
/// carries the user's staff and active flags, so authentication is one read).
#[derive(Debug, Clone)]
pub struct Caller {
    pub uuid: UserId,
    pub is_staff: bool,
    pub scopes: Vec<String>,
    /// The key, when its last use is to be noted: never noted, or not in the last hour.
    pub key_to_note: Option<ApiKeyHash>,
    pub credential: Credential,
    /// A prefix of the credential's id for the audit trail (a key's hash, a token's `jti`):
    /// never enough to authenticate with.
    pub credential_id: Option<String>,
}

/// How often a key's `last_used_at` is written at most, as PostHog does.
pub const KEY_USE_NOTED_EVERY_SECS: u64 = 3600;

impl Caller {
    /// What authentication answers this caller now that its own account is found inactive or
    /// gone after its credential was checked (a deactivation racing the request): the 401 its
    /// credential gets from then on, not a 404 for its own account.
    pub fn refused_since(&self) -> ApiError {
        match self.credential {
            Credential::ApiKey => ApiError::AuthenticationFailed,
            Credential::AccessToken { .. } => tokens::refused("user_inactive"),
        }
    }
}

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
        require_scope(&self.scopes, scope)
    }
}

/// Whether granted scopes allow a route's (`user:write` implies `user:read`); PostHog's
/// message for keys and OAuth tokens alike when not.
fn require_scope(granted: &[String], scope: Scope) -> Result<(), ApiError> {
    let allowed = granted.iter().any(|s| {
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

/// What a request's credential is checked against: the store (keys, identity links) and,
/// when the deployment takes sign-in tokens, their verifier and the user pool that tells a
/// Cognito token's email.
#[derive(Clone, Copy)]
pub struct Authenticators<'a> {
    pub store: &'a Store,
    pub tokens: Option<&'a TokenVerifier>,
    pub cognito: Option<&'a aws_sdk_cognitoidentityprovider::Client>,
    /// Days the record of a link made at a token's first use is kept.
    pub events_retention_days: u64,
}

/// The caller of `Authorization: Bearer <credential>`: a personal API key (by its shape), or,
/// where the deployment takes them, a sign-in token. Anything else costs no call.
///
/// `scope` is the route's: a token that does not grant it is refused (403) before its
/// identity is looked up, so such a token never links or creates anything.
pub async fn authenticate(
    auth: Authenticators<'_>,
    req: &Request,
    scope: Scope,
) -> Result<Caller, ApiError> {
    let credential = bearer_key(req)?;
    if looks_like_key(credential) {
        return authenticate_key(auth.store, credential).await;
    }
    match auth.tokens {
        Some(tokens) if credential.contains('.') => {
            authenticate_token(
                auth,
                tokens,
                credential,
                scope,
                crate::http::request_id(req),
            )
            .await
        }
        _ => Err(ApiError::AuthenticationFailed),
    }
}

/// Looks the key's hash up (one consistent read) and checks it is live.
async fn authenticate_key(store: &Store, key: &str) -> Result<Caller, ApiError> {
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
        credential_id: Some(hash.id_prefix().to_string()),
        key_to_note: due.then_some(hash),
        credential: Credential::ApiKey,
    })
}

/// Verifies the token, then finds its identity link (one consistent read), or makes one on
/// the token's first use as the deployment chooses. The token's scopes are the caller's.
async fn authenticate_token(
    auth: Authenticators<'_>,
    tokens: &TokenVerifier,
    raw: &str,
    scope: Scope,
    request_id: &str,
) -> Result<Caller, ApiError> {
    let token = tokens.verify(raw).await?;
    require_scope(&token.scopes, scope)?;
    let key = IdentityKey::of(&token.issuer, &token.subject);
    let link = match auth.store.identity_link(&key).await? {
        Some(link) => link,
        None => {
            if let Some(refusal) = tokens.refused_lately(&key.0) {
                return Err(refusal);
            }
            let linked = link_on_first_use(
                auth,
                tokens.settings.new_identity,
                &token,
                raw,
                &key,
                request_id,
            )
            .await;
            if let Err(error) = &linked {
                tokens.note_refusal(&key.0, error);
            }
            linked?
        }
    };
    if !link.user_is_active {
        return Err(tokens::refused("user_inactive"));
    }
    Ok(Caller {
        uuid: link.user_uuid,
        is_staff: link.user_is_staff,
        scopes: token.scopes,
        key_to_note: None,
        credential_id: token.token_id,
        credential: Credential::AccessToken {
            client: token.client,
        },
    })
}

/// The address a token vouches for: its `email` claim if verified, or, for a Cognito access
/// token (which carries none), the user's attributes as Cognito's `GetUser` tells them to
/// the token itself.
async fn verified_email(
    auth: Authenticators<'_>,
    token: &VerifiedToken,
    raw: &str,
) -> Result<String, ApiError> {
    let (email, verified) = match (&token.email, auth.cognito) {
        (Some(email), _) => (email.clone(), token.email_verified),
        (None, Some(cognito)) => tokens::cognito_email(cognito, raw)
            .await?
            .ok_or_else(|| tokens::refused("no_email"))?,
        (None, None) => return Err(tokens::refused("no_email")),
    };
    if !verified {
        return Err(tokens::refused("email_not_verified"));
    }
    if !crate::email_change::is_valid_email(&email) {
        return Err(tokens::refused("email_not_an_address"));
    }
    Ok(email)
}

/// A token's first use: with `LinkByEmail`, a link to the active user whose address is the
/// token's verified email; with `CreateUser`, also a new user when nobody has that address.
/// Racing first uses make one link (and one user): the writes are conditional, and the loser
/// reads the winner's link. Never linked by email: staff (their links are an operator's to
/// make) and a user whose address was set without being proved here (`is_email_verified`
/// false: changed without a code), whose owner may not be the address's.
async fn link_on_first_use(
    auth: Authenticators<'_>,
    policy: NewIdentity,
    token: &VerifiedToken,
    raw: &str,
    key: &IdentityKey,
    request_id: &str,
) -> Result<IdentityLink, ApiError> {
    if policy == NewIdentity::Refuse {
        return Err(tokens::refused("not_linked"));
    }
    // The record of the link, by the token that made it.
    let linked = |user: UserId, how: LinkedBy| {
        let actor = crate::security_events::Actor {
            uuid: Some(user),
            credential: "access_token".into(),
            credential_id: token.token_id.clone(),
            client: Some(token.client.clone()),
            request_id: request_id.to_string(),
        };
        crate::security_events::SecurityEvent::new(
            user,
            crate::security_events::EventKind::IdentityLinked,
            &actor,
            auth.events_retention_days,
        )
        .with_detail(match how {
            LinkedBy::NewUser => "new_user",
            _ => "verified_email",
        })
    };
    let email = verified_email(auth, token, raw).await?;
    let store = auth.store;
    for _round in 0..3 {
        let (write, link) = match store.email_owner(&email).await? {
            Some(owner) => {
                let user = store
                    .user(owner)
                    .await?
                    .filter(|u| u.is_active)
                    .ok_or_else(|| tokens::refused("user_inactive"))?;
                if user.is_staff {
                    return Err(tokens::refused("staff_account"));
                }
                if user.is_email_verified == Some(false) {
                    return Err(tokens::refused("account_address_not_verified"));
                }
                let link = IdentityLink::new(
                    &token.issuer,
                    &token.subject,
                    user.uuid,
                    user.is_staff,
                    LinkedBy::VerifiedEmail,
                );
                let event = linked(user.uuid, LinkedBy::VerifiedEmail);
                (
                    store
                        .link_identity_by_address(&link, &email, &event)
                        .await?,
                    link,
                )
            }
            None if policy == NewIdentity::CreateUser => {
                let mut user =
                    crate::users::UserRecord::new(&email, "", "", crate::users::UserKind::Regular);
                user.is_email_verified = Some(true);
                let link = IdentityLink::new(
                    &token.issuer,
                    &token.subject,
                    user.uuid,
                    false,
                    LinkedBy::NewUser,
                );
                let event = linked(user.uuid, LinkedBy::NewUser);
                (
                    store
                        .create_user_with_identity(&user, &link, &event)
                        .await?,
                    link,
                )
            }
            None => return Err(tokens::refused("not_linked")),
        };
        match write {
            LinkWrite::Linked => {
                tracing::info!(linked_by = ?link.linked_by, "sign-in identity linked");
                return Ok(link);
            }
            LinkWrite::AlreadyLinked => {
                if let Some(link) = store.identity_link(key).await? {
                    return Ok(link);
                }
            }
            LinkWrite::UserInactive => return Err(tokens::refused("user_inactive")),
            // The address changed hands meanwhile: the next round reads its owner again.
            LinkWrite::EmailTaken => {}
        }
    }
    Err(ApiError::Unavailable)
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
            credential: Credential::ApiKey,
            credential_id: None,
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
