//! Settings from the environment variables that `template.yaml` sets. Local runs set the
//! same variables; the standard `AWS_ENDPOINT_URL_*` variables point the SDK at emulators.
use std::env;

#[derive(Debug, Clone)]
pub struct Tables {
    pub users: String,
    pub user_emails: String,
    pub api_keys: String,
    pub push_tokens: String,
    pub two_factor: String,
    pub email_changes: String,
    /// Failure states of code checks and the email-change mail log.
    pub limits: String,
    /// Links from a sign-in token's (issuer, subject) to a user.
    pub identities: String,
    /// Users' passkeys (WebAuthn credentials).
    pub passkeys: String,
    /// Passkey ceremonies begun and not yet completed: one slot per user and purpose.
    pub passkey_ceremonies: String,
    /// The audit trail of account-security changes.
    pub security_events: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub tables: Tables,
    /// Secrets Manager id of the encryption keys; only the functions that need it have it.
    pub encryption_secret_id: Option<String>,
    /// Issuer shown by authenticator apps.
    pub totp_issuer: String,
    /// SES sender; `None` turns email off (email changes then apply at once).
    pub email_sender: Option<String>,
    /// Sign-in tokens (JWT access tokens) beside personal API keys; `None`: keys only.
    pub tokens: Option<crate::tokens::TokenSettings>,
    /// The relying party passkeys are made for; `None` where the function has no passkey
    /// ceremony.
    pub relying_party: Option<crate::passkeys::RelyingParty>,
    /// Days a security event is kept (its TTL).
    pub security_events_retention_days: u64,
    /// Whether a cold start opens its DynamoDB connection while it starts, beside the wait for
    /// the first event ([`crate::Context::warm_up`]; `CONNECT_DURING_INIT`, default true;
    /// false is for measuring what it saves).
    pub connect_during_init: bool,
}

/// A required variable was not set (or not to a value it can take): the deployment is
/// broken, so start-up fails loudly.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {0} is not set or not valid")]
pub struct MissingVar(pub &'static str);

pub(crate) fn required(name: &'static str) -> Result<String, MissingVar> {
    env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or(MissingVar(name))
}

pub(crate) fn optional(name: &str) -> Option<String> {
    env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

impl Config {
    pub fn from_env() -> Result<Self, MissingVar> {
        Ok(Config {
            tables: Tables {
                users: required("USERS_TABLE")?,
                user_emails: required("USER_EMAILS_TABLE")?,
                api_keys: required("API_KEYS_TABLE")?,
                push_tokens: required("PUSH_TOKENS_TABLE")?,
                two_factor: required("TWO_FACTOR_TABLE")?,
                email_changes: required("EMAIL_CHANGES_TABLE")?,
                limits: required("LIMITS_TABLE")?,
                identities: required("IDENTITIES_TABLE")?,
                passkeys: required("PASSKEYS_TABLE")?,
                passkey_ceremonies: required("PASSKEY_CEREMONIES_TABLE")?,
                security_events: required("SECURITY_EVENTS_TABLE")?,
            },
            encryption_secret_id: optional("ENCRYPTION_SECRET_ID"),
            totp_issuer: optional("TOTP_ISSUER").unwrap_or_else(|| "PostHog".to_string()),
            email_sender: optional("EMAIL_SENDER"),
            tokens: crate::tokens::TokenSettings::from_env()?,
            relying_party: crate::passkeys::RelyingParty::from_env()?,
            security_events_retention_days: match optional("SECURITY_EVENTS_RETENTION_DAYS") {
                None => crate::security_events::DEFAULT_RETENTION_DAYS,
                Some(days) => days
                    .parse::<u64>()
                    .ok()
                    .filter(|d| (1..=36_500).contains(d))
                    .ok_or(MissingVar("SECURITY_EVENTS_RETENTION_DAYS"))?,
            },
            connect_during_init: match optional("CONNECT_DURING_INIT").as_deref() {
                None | Some("true") => true,
                Some("false") => false,
                Some(_) => return Err(MissingVar("CONNECT_DURING_INIT")),
            },
        })
    }
}
