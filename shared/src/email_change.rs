//! Email-change requests: a 6-digit code mailed to the new address, stored only as a keyed
//! hash (HMAC with a key from the Secrets Manager secret: a table dump alone does not let
//! anyone test the million possible codes). A request takes at most
//! [`MAX_WRONG_CODES_PER_REQUEST`] wrong codes, and a user at most [`MAILS_PER_HOUR`] mails.
use crate::crypto::Keyring;
use crate::email::Mailer;
use crate::error::ApiError;
use crate::users::UserId;
use rand::Rng;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// Requests live this long.
pub const EMAIL_CHANGE_TTL_SECS: u64 = 24 * 3600;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EmailChangeRecord {
    pub user_uuid: UserId,
    pub new_email: String,
    /// HMAC-SHA256 (hex) of the user, request id and code under the MAC key
    /// `code_key_id`; the code itself is never stored.
    pub code_hash: String,
    /// The key of the encryption secret the hash was made with.
    #[serde(default)]
    pub code_key_id: String,
    pub request_id: String,
    pub requested_at: String,
    /// Epoch seconds; also the table's TTL attribute. DynamoDB deletes lazily, so reads check it.
    pub expires_at: u64,
    /// Wrong codes tried against this request; at
    /// [`crate::email_change::MAX_WRONG_CODES_PER_REQUEST`] it is removed.
    #[serde(default)]
    pub wrong_codes: u32,
}

/// Email-change mails sent to a user's new addresses in the last hour (epoch ms), and the
/// version the next write is conditioned on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailLog {
    pub sent_ms: Vec<u64>,
    pub(crate) version: u64,
}

impl EmailChangeRecord {
    /// The request if it has not expired.
    pub fn open(self) -> Option<Self> {
        (self.expires_at > crate::clock::now_secs()).then_some(self)
    }
}

/// Wrong codes after which a request is void: a new code must be requested.
pub const MAX_WRONG_CODES_PER_REQUEST: u32 = 5;
/// Email-change mails a user may cause per hour (SES reputation: each goes to an address
/// the account does not yet own).
pub const MAILS_PER_HOUR: usize = 5;
const HOUR_MS: u64 = 3_600_000;
/// The mail log outlives its last send by the hour it counts over (the table's TTL).
pub const MAIL_LOG_KEPT_SECS: u64 = 3600;

/// A plausible address: one `@`, a local part, a dotted domain, no spaces or controls.
pub fn is_valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.rsplit_once('@') else {
        return false;
    };
    let labels_ok = domain.split('.').count() >= 2
        && domain.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    !local.is_empty()
        && local.len() <= 64
        && !local.contains('@')
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.chars().all(|c| {
            c.is_ascii_graphic() && !"()<>[]:;\\,\"".contains(c)
                || !c.is_ascii() && !c.is_control() && !c.is_whitespace()
        })
        && labels_ok
}

/// What the code's keyed hash covers: the purpose, the request and its user, and the code.
fn code_message(user_uuid: UserId, request_id: &str, code: &str) -> Vec<u8> {
    format!("email_change_code|{user_uuid}|{request_id}|{code}").into_bytes()
}

/// A new request and its code (to be mailed, never stored or logged).
pub fn new_request(
    keyring: &Keyring,
    user_uuid: UserId,
    new_email: &str,
    ttl_secs: u64,
) -> Result<(EmailChangeRecord, String), ApiError> {
    let code = format!("{:06}", rand::rng().random_range(0..1_000_000u32));
    let request_id = uuid::Uuid::new_v4().to_string();
    let key_id = keyring.active_key_id().to_string();
    let code_hash = keyring
        .mac(&key_id, &code_message(user_uuid, &request_id, &code))
        .ok_or(ApiError::Internal)?;
    let record = EmailChangeRecord {
        user_uuid,
        new_email: new_email.to_string(),
        code_hash,
        code_key_id: key_id,
        request_id,
        requested_at: crate::clock::iso_now(),
        expires_at: crate::clock::now_secs() + ttl_secs,
        wrong_codes: 0,
    };
    Ok((record, code))
}

/// Whether `code` is the request's code, compared in constant time. A keyring without the
/// record's key (see [`crate::Context::keyring_for`]) matches nothing.
pub fn code_matches(keyring: &Keyring, record: &EmailChangeRecord, code: &str) -> bool {
    let message = code_message(record.user_uuid, &record.request_id, code);
    keyring
        .mac(&record.code_key_id, &message)
        .is_some_and(|hash| hash.as_bytes().ct_eq(record.code_hash.as_bytes()).into())
}

/// The mail log once one more mail is sent at `now_ms` (the sends of the last hour and
/// this one), or a 429 with the seconds until the oldest of them is an hour old.
pub fn one_more_mail(log: &MailLog, now_ms: u64) -> Result<Vec<u64>, ApiError> {
    let mut recent: Vec<u64> = log
        .sent_ms
        .iter()
        .copied()
        .filter(|&t| t + HOUR_MS > now_ms)
        .collect();
    recent.sort_unstable();
    if recent.len() >= MAILS_PER_HOUR {
        let frees_at = recent[recent.len() - MAILS_PER_HOUR] + HOUR_MS;
        return Err(ApiError::Throttled {
            retry_after_secs: crate::throttle::retry_after_secs(frees_at, now_ms),
        });
    }
    recent.push(now_ms);
    Ok(recent)
}

pub async fn send_code(mailer: &Mailer, to: &str, code: &str) -> bool {
    let text = format!(
        "Someone asked to change the email address of a PostHog account to this address.\n\n\
         Your verification code is {code}. It is valid for 24 hours.\n\n\
         If this was not you, ignore this message and the address will not change."
    );
    mailer
        .send(to, "Confirm your new email address", &text)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        for ok in ["a@b.co", "first.last+tag@example.com", "x@sub.example.org"] {
            assert!(is_valid_email(ok), "{ok}");
        }
        for bad in [
            "", "a", "a@", "@b.co", "a@b", "a b@c.de", "a@b..co", "a@@b.co", ".a@b.co", "a@-b.co",
        ] {
            assert!(!is_valid_email(bad), "{bad}");
        }
    }

    const KEYS: &str = r#"{"active":"k1","k1":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#;
    const OTHER: &str =
        r#"{"active":"k1","k1":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"}"#;

    #[test]
    fn codes_are_keyed_hashes_and_checked() {
        let keyring = Keyring::from_secret(KEYS).unwrap();
        let (record, code) = new_request(&keyring, UserId::random(), "n@example.com", 60).unwrap();
        assert_eq!(code.len(), 6);
        assert_eq!(record.code_key_id, "k1");
        assert!(!record.code_hash.contains(&code));
        assert!(code_matches(&keyring, &record, &code));
        let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
        assert!(!code_matches(&keyring, &record, &wrong));
        let other = Keyring::from_secret(OTHER).unwrap();
        assert!(!code_matches(&other, &record, &code), "another key");
        let mut moved = record.clone();
        moved.user_uuid = UserId::random();
        assert!(!code_matches(&keyring, &moved, &code), "bound to its user");
    }

    #[test]
    fn five_mails_an_hour_then_429_until_the_oldest_is_an_hour_old() {
        let mut log = MailLog::default();
        let start = 10_000_000;
        for i in 0..5 {
            log.sent_ms = one_more_mail(&log, start + i * 1000).unwrap();
        }
        assert_eq!(
            one_more_mail(&log, start + 5000),
            Err(ApiError::Throttled {
                retry_after_secs: 3595
            })
        );
        assert!(one_more_mail(&log, start + HOUR_MS - 1).is_err());
        let later = one_more_mail(&log, start + HOUR_MS).unwrap();
        assert_eq!(later.len(), 5, "the oldest fell out of the hour");
    }
}
