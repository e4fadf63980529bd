//! Passkeys (WebAuthn credentials) and their ceremonies, on webauthn-rs: registration (stored
//! unverified), verification by one assertion, and the assertion of the sign-in check. The
//! state of a begun ceremony is kept server-side (`store::passkeys`), taken out by a
//! conditional delete so that each challenge is answered at most once.
use crate::error::ApiError;
use crate::users::UserId;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use webauthn_rs::prelude::{
    AuthenticationResult, CreationChallengeResponse, Passkey, PasskeyAuthentication,
    PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential,
    RequestChallengeResponse, Url, Webauthn, WebauthnBuilder, WebauthnError,
};

/// A browser's assertion (webauthn-rs's `PublicKeyCredential`).
pub type Assertion = PublicKeyCredential;
/// A browser's new credential (webauthn-rs's `RegisterPublicKeyCredential`).
pub type Registration = RegisterPublicKeyCredential;

/// Passkeys a user may hold, verified or not.
pub const MAX_PASSKEYS: u32 = 10;
/// How long a begun ceremony may be completed (the options' `timeout` too).
pub const CEREMONY_TTL_SECS: u64 = 300;
/// The longest label a passkey may have (PostHog's).
pub const MAX_LABEL_CHARS: usize = 200;
/// The longest credential id, base64url: WebAuthn's 1023 bytes.
pub const MAX_CREDENTIAL_ID_CHARS: usize = 1364;
/// Transports kept of a passkey (there are six kinds).
const MAX_TRANSPORTS: usize = 6;

/// The relying party of a deployment: the domain passkeys are bound to, the name shown by
/// authenticators, and the origins whose ceremonies are accepted (web origins, and the
/// `android:apk-key-hash:` origins of Android apps; iOS apps present the web origin of their
/// associated domain).
#[derive(Debug, Clone)]
pub struct RelyingParty {
    pub id: String,
    pub name: String,
    pub origins: Vec<Url>,
}

impl RelyingParty {
    /// From `WEBAUTHN_RP_ID`, `WEBAUTHN_RP_NAME` and `WEBAUTHN_ORIGINS` (comma-separated); no
    /// RP id: passkeys are off. A set RP id with no valid origin, or origins none of which is
    /// a web origin on the RP id, is a broken deployment and fails start-up.
    pub fn from_env() -> Result<Option<Self>, crate::config::MissingVar> {
        let Some(id) = crate::config::optional("WEBAUTHN_RP_ID") else {
            return Ok(None);
        };
        let name = crate::config::optional("WEBAUTHN_RP_NAME").unwrap_or_else(|| "PostHog".into());
        let origins = crate::config::optional("WEBAUTHN_ORIGINS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(Url::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| crate::config::MissingVar("WEBAUTHN_ORIGINS"))?;
        let party = RelyingParty { id, name, origins };
        party
            .webauthn()
            .map_err(|_| crate::config::MissingVar("WEBAUTHN_ORIGINS"))?;
        Ok(Some(party))
    }

    /// The webauthn-rs instance for this party. A web origin on the RP id anchors it
    /// (webauthn-rs checks that one against the RP id); every origin listed is allowed.
    pub fn webauthn(&self) -> Result<Webauthn, WebauthnError> {
        let on_rp_id = |domain: &str| {
            domain == self.id
                || domain
                    .strip_suffix(self.id.as_str())
                    .is_some_and(|rest| rest.ends_with('.'))
        };
        let anchor = self
            .origins
            .iter()
            .find(|o| matches!(o.scheme(), "https" | "http") && o.domain().is_some_and(on_rp_id))
            .ok_or(WebauthnError::Configuration)?;
        let mut builder = WebauthnBuilder::new(&self.id, anchor)?
            .rp_name(&self.name)
            .timeout(std::time::Duration::from_secs(CEREMONY_TTL_SECS));
        for origin in self.origins.iter().filter(|o| *o != anchor) {
            builder = builder.append_allowed_origin(origin);
        }
        builder.build()
    }
}

/// This API's id of a passkey (the `{id}` of its routes): a UUID, as PostHog's primary key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PasskeyId(String);

impl PasskeyId {
    pub fn random() -> Self {
        PasskeyId(uuid::Uuid::new_v4().to_string())
    }

    /// The id a path names; anything but a UUID names no passkey (404).
    pub fn parse(segment: &str) -> Result<Self, ApiError> {
        uuid::Uuid::try_parse(segment)
            .map(|u| PasskeyId(u.to_string()))
            .map_err(|_| ApiError::NotFound)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A passkey as stored: what the routes show, and the credential webauthn-rs verifies
/// assertions with (its public key; nothing secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PasskeyRecord {
    pub user_uuid: UserId,
    pub id: PasskeyId,
    /// The WebAuthn credential id, base64url.
    pub credential_id: String,
    pub label: String,
    pub created_at: String,
    #[serde(default)]
    pub transports: Vec<String>,
    pub verified: bool,
    /// The signature counter last seen (0 for synced passkeys, which keep none).
    pub sign_count: u32,
    #[serde(default)]
    pub last_used_at: Option<String>,
    /// webauthn-rs's `Passkey`, JSON.
    pub credential: String,
}

impl PasskeyRecord {
    /// The passkey as PostHog's credential serializer shows it.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "label": self.label,
            "created_at": self.created_at,
            "transports": self.transports,
            "verified": self.verified,
            "authenticator_type": authenticator_type(&self.transports),
        })
    }

    pub fn passkey(&self) -> Result<Passkey, ApiError> {
        serde_json::from_str(&self.credential)
            .map_err(|e| ApiError::serialisation("stored passkey", &e))
    }

    /// The record after an assertion by it: its credential and counter as the result left
    /// them.
    pub fn after_use(&self, result: &AuthenticationResult) -> Result<Self, ApiError> {
        let mut passkey = self.passkey()?;
        passkey.update_credential(result);
        let mut next = self.clone();
        next.sign_count = result.counter();
        next.credential =
            serde_json::to_string(&passkey).map_err(|e| ApiError::serialisation("passkey", &e))?;
        Ok(next)
    }
}

/// PostHog's reading of the transports: what kind of authenticator holds the passkey.
pub fn authenticator_type(transports: &[String]) -> &'static str {
    let has = |t: &str| transports.iter().any(|x| x == t);
    if transports.is_empty() {
        "unknown"
    } else if has("hybrid") {
        "hybrid"
    } else if has("internal") {
        "platform"
    } else if has("usb") || has("nfc") || has("ble") {
        "hardware"
    } else {
        "unknown"
    }
}

/// What a begun ceremony is for; a user has at most one of each in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CeremonyPurpose {
    Register,
    Verify,
    SignIn,
}

impl CeremonyPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            CeremonyPurpose::Register => "register",
            CeremonyPurpose::Verify => "verify",
            CeremonyPurpose::SignIn => "sign_in",
        }
    }
}

/// A begun ceremony: webauthn-rs's state of it (the challenge, and for an assertion the
/// credentials allowed), kept until completed or expired.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ceremony {
    pub user_uuid: UserId,
    pub purpose: String,
    /// webauthn-rs's `PasskeyRegistration` or `PasskeyAuthentication`, JSON.
    pub state: String,
    /// The challenge (base64url, as sent): only an answer to it takes the ceremony.
    pub challenge: String,
    /// The passkey a verification is for.
    #[serde(default)]
    pub passkey_id: Option<PasskeyId>,
    /// Epoch seconds; also the table's TTL attribute. Checked when taken: DynamoDB deletes
    /// lazily.
    pub expires_at: u64,
}

impl Ceremony {
    fn new<S: Serialize>(
        user_uuid: UserId,
        purpose: CeremonyPurpose,
        state: &S,
        options: &Value,
        passkey_id: Option<PasskeyId>,
    ) -> Result<Self, ApiError> {
        let challenge = options["challenge"]
            .as_str()
            .ok_or_else(|| ApiError::internal("passkeys.begin", "options without a challenge"))?;
        Ok(Ceremony {
            user_uuid,
            purpose: purpose.as_str().into(),
            challenge: challenge.to_string(),
            state: serde_json::to_string(state)
                .map_err(|e| ApiError::serialisation("ceremony state", &e))?,
            passkey_id,
            expires_at: crate::clock::now_secs() + CEREMONY_TTL_SECS,
        })
    }

    /// The purpose the ceremony was stored under.
    pub fn purpose(&self) -> Result<CeremonyPurpose, ApiError> {
        [
            CeremonyPurpose::Register,
            CeremonyPurpose::Verify,
            CeremonyPurpose::SignIn,
        ]
        .into_iter()
        .find(|p| p.as_str() == self.purpose)
        .ok_or_else(|| ApiError::internal("passkey_ceremonies", "unknown purpose"))
    }

    fn state<S: serde::de::DeserializeOwned>(&self) -> Result<S, ApiError> {
        serde_json::from_str(&self.state).map_err(|e| ApiError::serialisation("ceremony state", &e))
    }
}

/// What a browser said it answered, read from its (signed) client data before anything is
/// taken or checked: the challenge names the ceremony the answer is for (an answer to an
/// older or another ceremony takes nothing), and an answer given inside a frame of another
/// origin is refused (webauthn-rs checks `crossOrigin` at registration only).
#[derive(Debug, Deserialize)]
pub struct ClientData {
    pub challenge: String,
    #[serde(default, rename = "crossOrigin")]
    pub cross_origin: bool,
}

impl ClientData {
    /// `None`: not client data at all (the ceremony cannot be found from it).
    pub fn of(client_data_json: &[u8]) -> Option<Self> {
        serde_json::from_slice(client_data_json).ok()
    }
}

/// Begins a registration: the creation options for the browser, and the ceremony to keep.
/// The options ask for a discoverable credential and user verification; `user.id` is the
/// user's uuid. `exclude` are the user's verified passkeys.
pub fn begin_registration(
    webauthn: &Webauthn,
    user: &crate::users::UserRecord,
    exclude: &[PasskeyRecord],
) -> Result<(Value, Ceremony), ApiError> {
    let exclude = exclude
        .iter()
        .filter(|p| p.verified)
        .map(|p| p.passkey().map(|k| k.cred_id().clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let display_name = match format!("{} {}", user.first_name, user.last_name).trim() {
        "" => user.email.clone(),
        name => name.to_string(),
    };
    let (options, state): (CreationChallengeResponse, PasskeyRegistration) = webauthn
        .start_passkey_registration(
            user.uuid.as_uuid(),
            &user.email,
            &display_name,
            Some(exclude),
        )
        .map_err(|e| ceremony_failed("start_registration", &e))?;
    let mut options = serde_json::to_value(&options.public_key)
        .map_err(|e| ApiError::serialisation("creation options", &e))?;
    // webauthn-rs asks for a discoverable credential only where it can; a passkey here is
    // one, as PostHog asks.
    if let Some(selection) = options
        .get_mut("authenticatorSelection")
        .and_then(Value::as_object_mut)
    {
        selection.insert("residentKey".into(), json!("required"));
        selection.insert("requireResidentKey".into(), json!(true));
        selection.insert("userVerification".into(), json!("required"));
    }
    let ceremony = Ceremony::new(user.uuid, CeremonyPurpose::Register, &state, &options, None)?;
    Ok((options, ceremony))
}

/// A browser's answer to the creation options, checked against the ceremony: the new
/// passkey, unverified.
pub fn complete_registration(
    webauthn: &Webauthn,
    ceremony: &Ceremony,
    response: &RegisterPublicKeyCredential,
    label: String,
) -> Result<PasskeyRecord, ApiError> {
    let state: PasskeyRegistration = ceremony.state()?;
    // The transports a browser reports, each once (webauthn-rs keeps them in the credential,
    // and so in every ceremony state and options that name it).
    let mut response = response.clone();
    if let Some(reported) = response.response.transports.take() {
        let mut kept = Vec::new();
        for transport in reported {
            if !kept.contains(&transport) && kept.len() < MAX_TRANSPORTS {
                kept.push(transport);
            }
        }
        response.response.transports = Some(kept);
    }
    let passkey = webauthn
        .finish_passkey_registration(&response, &state)
        .map_err(|e| refused("registration", &e, registration_failed()))?;
    let transports = response
        .response
        .transports
        .as_ref()
        .map(|ts| {
            ts.iter()
                .filter_map(|t| serde_json::to_value(t).ok())
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    // webauthn-rs shows the credential id (base64url) and counter only in its JSON form.
    let stored =
        serde_json::to_value(&passkey).map_err(|e| ApiError::serialisation("passkey", &e))?;
    let credential_id = stored["cred"]["cred_id"]
        .as_str()
        .ok_or_else(|| ApiError::internal("passkeys.register", "credential id"))?
        .to_string();
    // WebAuthn's limit (1023 bytes); webauthn-rs takes up to 4096, which would not fit the
    // claim's key.
    if credential_id.len() > MAX_CREDENTIAL_ID_CHARS {
        return Err(registration_failed());
    }
    let sign_count = stored["cred"]["counter"].as_u64().unwrap_or(0) as u32;
    Ok(PasskeyRecord {
        user_uuid: ceremony.user_uuid,
        id: PasskeyId::random(),
        credential_id,
        label,
        created_at: crate::clock::iso_now(),
        transports,
        verified: false,
        sign_count,
        last_used_at: None,
        credential: stored.to_string(),
    })
}

/// Begins an assertion by any of `passkeys` (user verification required): the request
/// options for the browser, and the ceremony to keep.
pub fn begin_assertion(
    webauthn: &Webauthn,
    user_uuid: UserId,
    purpose: CeremonyPurpose,
    passkeys: &[PasskeyRecord],
    passkey_id: Option<PasskeyId>,
) -> Result<(Value, Ceremony), ApiError> {
    let keys = passkeys
        .iter()
        .map(PasskeyRecord::passkey)
        .collect::<Result<Vec<_>, _>>()?;
    let (options, state): (RequestChallengeResponse, PasskeyAuthentication) = webauthn
        .start_passkey_authentication(&keys)
        .map_err(|e| ceremony_failed("start_authentication", &e))?;
    let options = serde_json::to_value(&options.public_key)
        .map_err(|e| ApiError::serialisation("request options", &e))?;
    let ceremony = Ceremony::new(user_uuid, purpose, &state, &options, passkey_id)?;
    Ok((options, ceremony))
}

/// A browser's assertion checked against the ceremony (challenge, origin, RP id hash, user
/// verification, signature by one of the allowed passkeys, counter): the result, or `refusal`.
pub fn complete_assertion(
    webauthn: &Webauthn,
    ceremony: &Ceremony,
    response: &PublicKeyCredential,
    refusal: fn() -> ApiError,
) -> Result<AuthenticationResult, ApiError> {
    let state: PasskeyAuthentication = ceremony.state()?;
    if ClientData::of(&response.response.client_data_json).is_none_or(|c| c.cross_origin) {
        tracing::info!(
            ceremony = "assertion",
            "passkey ceremony refused: cross-origin"
        );
        return Err(refusal());
    }
    let result = webauthn
        .finish_passkey_authentication(response, &state)
        .map_err(|e| refused("assertion", &e, refusal()))?;
    if !result.user_verified() {
        return Err(refusal());
    }
    Ok(result)
}

/// Logs why webauthn-rs refused a ceremony (the error's fixed text, never the data the
/// request carried) and answers with `answer`.
fn refused(ceremony: &'static str, err: &WebauthnError, answer: ApiError) -> ApiError {
    tracing::info!(ceremony, reason = %err, "passkey ceremony refused");
    answer
}

fn ceremony_failed(operation: &'static str, err: &WebauthnError) -> ApiError {
    tracing::error!(operation, reason = %err, "passkey ceremony could not begin");
    ApiError::Internal
}

/// The deployment has no relying party configured.
pub fn passkeys_off() -> ApiError {
    ApiError::validation(
        "passkeys_disabled",
        "Passkeys are not set up on this deployment.",
        None,
    )
}

pub fn no_passkeys() -> ApiError {
    ApiError::validation(
        "no_passkeys",
        "You must have at least one passkey set up before enabling passkeys for 2FA.",
        Some("passkeys_enabled_for_2fa"),
    )
}

/// No ceremony to complete: never begun, already completed, or expired.
pub fn no_challenge() -> ApiError {
    ApiError::validation(
        "no_challenge",
        "No pending passkey challenge, or it has expired. Please start again.",
        None,
    )
}

pub fn registration_failed() -> ApiError {
    ApiError::validation(
        "registration_failed",
        "Registration failed: could not complete registration",
        None,
    )
}

pub fn verification_failed() -> ApiError {
    ApiError::validation(
        "verification_failed",
        "Verification failed: could not complete verification",
        None,
    )
}

/// The sign-in check's refusal of an assertion (PostHog's login-token code).
pub fn sign_in_failed() -> ApiError {
    ApiError::validation(
        "2fa_passkey_failed",
        "Passkey verification failed. Please try again.",
        None,
    )
}

/// A browser credential from JSON (a body, or one of its fields), or a 400 naming the field.
pub fn credential_from<T: serde::de::DeserializeOwned>(
    value: &Value,
    attr: Option<&str>,
) -> Result<T, ApiError> {
    serde_json::from_value(value.clone()).map_err(|_| {
        ApiError::validation(
            "invalid_credential",
            "This is not a WebAuthn credential response.",
            attr,
        )
    })
}

pub fn limit_reached() -> ApiError {
    ApiError::validation(
        "passkey_limit",
        format!("You can have at most {MAX_PASSKEYS} passkeys. Delete one to add another."),
        None,
    )
}

pub fn already_registered() -> ApiError {
    ApiError::validation(
        "already_registered",
        "This passkey is already registered.",
        None,
    )
}

pub fn already_verified() -> ApiError {
    ApiError::validation("already_verified", "Credential is already verified.", None)
}

/// The verification completed is not the one begun for this passkey.
pub fn credential_mismatch() -> ApiError {
    ApiError::validation("credential_mismatch", "Credential ID mismatch.", None)
}

pub fn not_found_or_verified() -> ApiError {
    ApiError::validation(
        "credential_not_found",
        "Credential not found or already verified.",
        None,
    )
}

pub fn no_passkeys_for_sign_in() -> ApiError {
    ApiError::validation("2fa_no_passkeys", "No passkeys found for this user.", None)
}

pub fn passkey_2fa_off() -> ApiError {
    ApiError::validation(
        "2fa_passkeys_disabled",
        "Passkeys are not enabled for 2FA. Please enable them in your settings.",
        None,
    )
}

/// The sign-in check's "no challenge" (PostHog's login-token code).
pub fn no_sign_in_challenge() -> ApiError {
    ApiError::validation(
        "2fa_no_challenge",
        "No 2FA challenge found. Please start 2FA again.",
        None,
    )
}

/// The credential named is not one of the user's verified passkeys.
pub fn invalid_passkey() -> ApiError {
    ApiError::validation("2fa_invalid_passkey", "Invalid passkey.", None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn party(id: &str, origins: &[&str]) -> RelyingParty {
        RelyingParty {
            id: id.into(),
            name: "PostHog".into(),
            origins: origins.iter().map(|o| Url::parse(o).unwrap()).collect(),
        }
    }

    #[test]
    fn a_web_origin_on_the_rp_id_anchors_the_party_wherever_it_is_listed() {
        let ok = party(
            "example.com",
            &[
                "android:apk-key-hash:E8wzTa8DgqiU17BM25AH_WJwnhVKVgdDahU0kwMJZdg",
                "https://other.example",
                "https://app.example.com",
            ],
        );
        assert_eq!(ok.webauthn().unwrap().get_allowed_origins().len(), 3);
        for origins in [
            &["https://notexample.com"][..],
            &["android:apk-key-hash:E8wzTa8DgqiU17BM25AH_WJwnhVKVgdDahU0kwMJZdg"][..],
            &[][..],
        ] {
            assert!(
                party("example.com", origins).webauthn().is_err(),
                "{origins:?}"
            );
        }
    }

    #[test]
    fn authenticator_types_follow_posthogs_reading_of_transports() {
        let t =
            |ts: &[&str]| authenticator_type(&ts.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(t(&[]), "unknown");
        assert_eq!(t(&["internal"]), "platform");
        assert_eq!(t(&["internal", "hybrid"]), "hybrid");
        assert_eq!(t(&["usb", "nfc"]), "hardware");
        assert_eq!(t(&["smart-card"]), "unknown");
    }
}
