//! Email-change requests: a 6-digit code mailed to the new address, stored only as a hash.
use crate::auth::hex;
use crate::email::Mailer;
use crate::store::email_changes::EmailChangeRecord;
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

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

fn code_hash(request_id: &str, code: &str) -> String {
    hex(&Sha256::digest(format!("{request_id}:{code}").as_bytes()))
}

/// A new request and its code (to be mailed, never stored or logged).
pub fn new_request(user_uuid: &str, new_email: &str, ttl_secs: u64) -> (EmailChangeRecord, String) {
    let code = format!("{:06}", rand::rng().random_range(0..1_000_000u32));
    let request_id = uuid::Uuid::new_v4().to_string();
    let record = EmailChangeRecord {
        user_uuid: user_uuid.to_string(),
        new_email: new_email.to_string(),
        code_hash: code_hash(&request_id, &code),
        request_id,
        requested_at: crate::store::iso_now(),
        expires_at: crate::store::now_secs() + ttl_secs,
    };
    (record, code)
}

/// Whether `code` is the request's code, compared in constant time.
pub fn code_matches(record: &EmailChangeRecord, code: &str) -> bool {
    code_hash(&record.request_id, code)
        .as_bytes()
        .ct_eq(record.code_hash.as_bytes())
        .into()
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

    #[test]
    fn codes_are_hashed_and_checked() {
        let (record, code) = new_request("u", "n@example.com", 60);
        assert_eq!(code.len(), 6);
        assert!(!record.code_hash.contains(&code));
        assert!(code_matches(&record, &code));
        let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
        assert!(!code_matches(&record, &wrong));
    }
}
