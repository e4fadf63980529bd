//! Two-factor authentication: TOTP devices, backup codes and the emails about them.
use crate::crypto::Keyring;
use crate::error::ApiError;
use crate::throttle::FailureState;
use crate::totp::TotpSecret;
use crate::users::UserId;
use rand::Rng;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// Everything 2FA knows about a user, read in one BatchGetItem.
#[derive(Debug, Default)]
pub struct TwoFactorState {
    pub user: Option<crate::users::UserRecord>,
    pub device: Option<TotpDevice>,
    pub pending: Option<PendingSetup>,
    pub backup_codes: Option<BackupCodes>,
    /// The failure state of the check the state was read for (default when none was named).
    pub failures: FailureState,
}

impl TwoFactorState {
    /// The user, if it exists and is active; else the 404 a staff caller gets for a bad uuid.
    pub fn active_user(&self) -> Result<&crate::users::UserRecord, ApiError> {
        self.user
            .as_ref()
            .filter(|u| u.is_active)
            .ok_or(ApiError::NotFound)
    }
}

/// A setup that was started but not yet confirmed with a code; it expires.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingSetup {
    pub user_uuid: UserId,
    pub kind: String,
    /// The secret, encrypted with the user and `pending` as associated data.
    #[serde(with = "serde_bytes")]
    pub secret_enc: Vec<u8>,
    pub created_at: String,
    /// Epoch seconds; also the table's TTL attribute. Checked on read: DynamoDB deletes lazily.
    pub expires_at: u64,
}

impl PendingSetup {
    pub fn open(self) -> Option<Self> {
        (self.expires_at > crate::clock::now_secs()).then_some(self)
    }
}

/// A confirmed TOTP device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TotpDevice {
    pub user_uuid: UserId,
    pub kind: String,
    /// The secret, encrypted with the user and `totp` as associated data.
    #[serde(with = "serde_bytes")]
    pub secret_enc: Vec<u8>,
    /// The last time step accepted: no code of this step or an earlier one is accepted again.
    pub last_step: u64,
    /// Steps between the client's clock and ours at the last accepted code (-1, 0 or 1).
    #[serde(default)]
    pub drift: i64,
    pub confirmed_at: String,
}

/// The unused backup codes, one encrypted list, replaced as a whole.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackupCodes {
    pub user_uuid: UserId,
    pub kind: String,
    /// JSON list of codes, encrypted with the user and `backup_codes` as associated data.
    #[serde(with = "serde_bytes")]
    pub codes_enc: Vec<u8>,
    /// Changes with every write, so a use of a code is a compare-and-set.
    pub version: String,
    pub created_at: String,
}

/// How the use of a TOTP step ended.
#[derive(Debug, PartialEq, Eq)]
pub enum StepUse {
    Done,
    /// The step (or a later one) was already used: the code is a replay.
    Replayed,
    /// The failure state changed meanwhile: read again and retry.
    Conflict,
}

/// The kinds of a user's 2FA items; each is also the associated data its secret is sealed
/// with, so one kind's ciphertext cannot be passed off as another's.
pub const TOTP: &str = "totp";
pub const PENDING: &str = "pending";
pub const BACKUP_CODES: &str = "backup_codes";

pub const SETUP_TTL_SECS: u64 = 10 * 60;
pub const BACKUP_CODE_COUNT: usize = 10;
pub const BACKUP_CODE_LEN: usize = 8;
const BACKUP_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";

pub fn setup_expired() -> ApiError {
    ApiError::validation(
        "setup_expired",
        "2FA setup session expired. Please start setup again.",
        None,
    )
}

pub fn token_invalid() -> ApiError {
    ApiError::validation("token_invalid", "Token is not valid", None)
}

pub fn not_enabled() -> ApiError {
    ApiError::validation("2fa_not_enabled", "2FA must be enabled first", None)
}

pub fn new_pending_setup(
    keyring: &Keyring,
    user_uuid: UserId,
    secret: &TotpSecret,
) -> Result<PendingSetup, ApiError> {
    Ok(PendingSetup {
        user_uuid,
        kind: PENDING.to_string(),
        secret_enc: keyring.encrypt(user_uuid, PENDING, secret.as_bytes())?,
        created_at: crate::clock::iso_now(),
        expires_at: crate::clock::now_secs() + SETUP_TTL_SECS,
    })
}

pub fn pending_secret(keyring: &Keyring, pending: &PendingSetup) -> Result<TotpSecret, ApiError> {
    keyring
        .decrypt(pending.user_uuid, PENDING, &pending.secret_enc)
        .map(TotpSecret::from_bytes)
}

pub fn new_device(
    keyring: &Keyring,
    user_uuid: UserId,
    secret: &TotpSecret,
    step: u64,
    now: u64,
) -> Result<TotpDevice, ApiError> {
    Ok(TotpDevice {
        user_uuid,
        kind: TOTP.to_string(),
        secret_enc: keyring.encrypt(user_uuid, TOTP, secret.as_bytes())?,
        last_step: step,
        drift: step as i64 - crate::totp::step_at(now) as i64,
        confirmed_at: crate::clock::iso_now(),
    })
}

pub fn device_secret(keyring: &Keyring, device: &TotpDevice) -> Result<TotpSecret, ApiError> {
    keyring
        .decrypt(device.user_uuid, TOTP, &device.secret_enc)
        .map(TotpSecret::from_bytes)
}

/// Ten new codes of eight characters from `[a-z2-7]`.
pub fn generate_backup_codes() -> Vec<String> {
    let mut rng = rand::rng();
    (0..BACKUP_CODE_COUNT)
        .map(|_| {
            (0..BACKUP_CODE_LEN)
                .map(|_| BACKUP_ALPHABET[rng.random_range(0..BACKUP_ALPHABET.len())] as char)
                .collect()
        })
        .collect()
}

pub fn seal_backup_codes(
    keyring: &Keyring,
    user_uuid: UserId,
    codes: &[String],
) -> Result<BackupCodes, ApiError> {
    let plain =
        serde_json::to_vec(codes).map_err(|e| ApiError::serialisation("backup codes", &e))?;
    Ok(BackupCodes {
        user_uuid,
        kind: BACKUP_CODES.to_string(),
        codes_enc: keyring.encrypt(user_uuid, BACKUP_CODES, &plain)?,
        version: uuid::Uuid::new_v4().to_string(),
        created_at: crate::clock::iso_now(),
    })
}

pub fn open_backup_codes(keyring: &Keyring, codes: &BackupCodes) -> Result<Vec<String>, ApiError> {
    let plain = keyring.decrypt(codes.user_uuid, BACKUP_CODES, &codes.codes_enc)?;
    serde_json::from_slice(&plain).map_err(|e| ApiError::serialisation("backup codes", &e))
}

/// A backup code as typed: case and spaces ignored. `None` if it cannot be one.
pub fn normalize_backup_code(input: &str) -> Option<String> {
    let code: String = input
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect::<String>()
        .to_lowercase();
    (code.len() == BACKUP_CODE_LEN && code.bytes().all(|b| BACKUP_ALPHABET.contains(&b)))
        .then_some(code)
}

/// The index of `code` among `codes`, comparing every one in constant time.
pub fn find_backup_code(codes: &[String], code: &str) -> Option<usize> {
    let mut found = None;
    for (i, candidate) in codes.iter().enumerate() {
        if bool::from(candidate.as_bytes().ct_eq(code.as_bytes())) && found.is_none() {
            found = Some(i);
        }
    }
    found
}

/// The notification texts (no code or secret ever goes into them).
pub enum Notice {
    Enabled,
    Disabled,
    BackupCodeUsed { remaining: usize },
    PasskeyAdded,
    PasskeyRemoved,
    PasskeyTwoFactorEnabled,
    PasskeyTwoFactorDisabled,
}

impl Notice {
    pub fn subject_and_text(&self) -> (&'static str, String) {
        match self {
            Notice::Enabled => (
                "Two-factor authentication enabled",
                "Two-factor authentication was turned on for your PostHog account. If this was not you, contact your administrator at once.".into(),
            ),
            Notice::Disabled => (
                "Two-factor authentication disabled",
                "Two-factor authentication was turned off for your PostHog account. If this was not you, contact your administrator at once.".into(),
            ),
            Notice::BackupCodeUsed { remaining } => (
                "A backup code was used",
                format!("A backup code was used to sign in to your PostHog account. You have {remaining} unused backup codes left. If this was not you, contact your administrator at once."),
            ),
            Notice::PasskeyAdded => (
                "A passkey was added to your account",
                "A new passkey was added to your PostHog account and verified. If this was not you, remove it and contact your administrator at once.".into(),
            ),
            Notice::PasskeyRemoved => (
                "A passkey was removed from your account",
                "A passkey was removed from your PostHog account. If this was not you, contact your administrator at once.".into(),
            ),
            Notice::PasskeyTwoFactorEnabled => (
                "Passkeys now count as your second factor",
                "Passkeys were turned on as a second factor for your PostHog account. If this was not you, contact your administrator at once.".into(),
            ),
            Notice::PasskeyTwoFactorDisabled => (
                "Passkeys no longer count as your second factor",
                "Passkeys were turned off as a second factor for your PostHog account. If this was not you, contact your administrator at once.".into(),
            ),
        }
    }
}

/// Queues a notice, sent once the response has gone out; a failure is logged by the mailer
/// and never fails the request.
pub fn notify(mailer: &crate::email::Mailer, to: &str, notice: Notice) {
    let (subject, text) = notice.subject_and_text();
    mailer.send_after_response(to, subject, text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_codes_have_the_documented_shape() {
        let codes = generate_backup_codes();
        assert_eq!(codes.len(), 10);
        for code in &codes {
            assert_eq!(code.len(), 8);
            assert!(
                code.bytes()
                    .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)),
                "{code}"
            );
        }
        assert_eq!(
            normalize_backup_code(" ABCD efgh "),
            Some("abcdefgh".into())
        );
        assert_eq!(normalize_backup_code("abcdefg1"), None);
        assert_eq!(find_backup_code(&codes, &codes[3]), Some(3));
    }
}
