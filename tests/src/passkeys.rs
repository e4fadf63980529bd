//! A software authenticator for the passkey tests: webauthn-authenticator-rs's `SoftPasskey`
//! (its own keys and signatures, nothing from the code under test), answering the options
//! the API sends as a browser at a given origin would, and able to answer as a browser
//! never should (another origin, another RP id, no user verification).
use crate::{Api, Reply};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::AuthenticatorBackendHashedClientData;
use webauthn_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse};

pub const REGISTER_BEGIN: &str = "/api/webauthn/register/begin/";
pub const REGISTER_COMPLETE: &str = "/api/webauthn/register/complete/";
pub const CREDENTIALS: &str = "/api/webauthn/credentials/";
pub const SIGN_IN_BEGIN: &str = "/api/users/@me/two_factor_passkey_begin/";
pub const SIGN_IN: &str = "/api/users/@me/two_factor_verify/";

/// The origins the stack's functions accept (`WEBAUTHN_ORIGINS`).
pub fn allowed_origins() -> Vec<String> {
    crate::env("WEBAUTHN_ORIGINS")
        .split(',')
        .map(|o| o.trim().to_string())
        .filter(|o| !o.is_empty())
        .collect()
}

/// The web origin of the local page, where a browser's ceremonies come from.
pub fn web_origin() -> String {
    allowed_origins()
        .into_iter()
        .find(|o| o.starts_with("http"))
        .expect("WEBAUTHN_ORIGINS names a web origin")
}

/// The Android app origin the local stack accepts.
pub fn android_origin() -> String {
    allowed_origins()
        .into_iter()
        .find(|o| o.starts_with("android:apk-key-hash:"))
        .expect("WEBAUTHN_ORIGINS names an Android origin")
}

/// How the authenticator answers: from where, for which RP id, with or without user
/// verification.
#[derive(Debug, Clone)]
pub struct As {
    pub origin: String,
    pub rp_id: Option<String>,
    pub user_verified: bool,
    /// Answered inside a frame of another origin (the client data says so).
    pub cross_origin: bool,
}

impl Default for As {
    fn default() -> Self {
        As {
            origin: web_origin(),
            rp_id: None,
            user_verified: true,
            cross_origin: false,
        }
    }
}

impl As {
    pub fn origin(origin: &str) -> Self {
        As {
            origin: origin.to_string(),
            ..As::default()
        }
    }
}

/// One software authenticator, holding the keys of the passkeys it made.
pub struct Authenticator {
    soft: SoftPasskey,
}

impl Default for Authenticator {
    fn default() -> Self {
        Self::new()
    }
}

fn client_data(kind: &str, challenge: &str, how: &As) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": kind, "challenge": challenge, "origin": how.origin, "crossOrigin": how.cross_origin
    }))
    .unwrap()
}

impl Authenticator {
    pub fn new() -> Self {
        // `true`: it sets the user-verification flag whenever the options require it (a
        // software key has no PIN or biometric to check).
        Authenticator {
            soft: SoftPasskey::new(true),
        }
    }

    /// The credential a browser at the local page would send for these creation options.
    pub fn register(&mut self, options: &Value) -> Value {
        self.register_as(options, &As::default())
    }

    pub fn register_as(&mut self, options: &Value, how: &As) -> Value {
        let mut options = options.clone();
        // SoftPasskey refuses the CTAP 2.0 flag (it keeps every key anyway); `residentKey`
        // stays "required".
        options["authenticatorSelection"]["requireResidentKey"] = json!(false);
        if !how.user_verified {
            options["authenticatorSelection"]["userVerification"] = json!("discouraged");
        }
        if let Some(rp_id) = &how.rp_id {
            options["rp"]["id"] = json!(rp_id);
        }
        let challenge = options["challenge"]
            .as_str()
            .expect("a challenge")
            .to_string();
        let ccr: CreationChallengeResponse =
            serde_json::from_value(json!({ "publicKey": options })).expect("creation options");
        let data = client_data("webauthn.create", &challenge, how);
        let mut credential = AuthenticatorBackendHashedClientData::perform_register(
            &mut self.soft,
            Sha256::digest(&data).to_vec(),
            ccr.public_key,
            60_000,
        )
        .expect("the software authenticator registers");
        credential.response.client_data_json = data;
        serde_json::to_value(&credential).unwrap()
    }

    /// The assertion a browser at the local page would send for these request options.
    pub fn assert(&mut self, options: &Value) -> Value {
        self.assert_as(options, &As::default())
    }

    pub fn assert_as(&mut self, options: &Value, how: &As) -> Value {
        let mut options = options.clone();
        if !how.user_verified {
            options["userVerification"] = json!("discouraged");
        }
        if let Some(rp_id) = &how.rp_id {
            options["rpId"] = json!(rp_id);
        }
        let challenge = options["challenge"]
            .as_str()
            .expect("a challenge")
            .to_string();
        let rcr: RequestChallengeResponse =
            serde_json::from_value(json!({ "publicKey": options })).expect("request options");
        let data = client_data("webauthn.get", &challenge, how);
        let mut assertion = AuthenticatorBackendHashedClientData::perform_auth(
            &mut self.soft,
            Sha256::digest(&data).to_vec(),
            rcr.public_key,
            60_000,
        )
        .expect("the software authenticator asserts");
        assertion.response.client_data_json = data;
        serde_json::to_value(&assertion).unwrap()
    }
}

/// The sign-in check's body for an assertion, as PostHog's login-token endpoint takes it.
pub fn sign_in_body(assertion: &Value) -> Value {
    json!({"credential_id": assertion["id"], "response": assertion["response"]})
}

impl Api {
    /// The creation options of a registration begun now.
    pub async fn registration_options(&self, key: &str) -> Value {
        self.post(REGISTER_BEGIN).bearer(key).send().await.ok_json()
    }

    /// Completes a registration with `credential`.
    pub async fn complete_registration(&self, key: &str, credential: &Value) -> Reply {
        self.post(REGISTER_COMPLETE)
            .bearer(key)
            .json(credential)
            .send()
            .await
    }

    /// The request options of passkey `id`'s verification, begun now.
    pub async fn verification_options(&self, key: &str, id: &str) -> Value {
        self.post(&format!("{CREDENTIALS}{id}/verify/"))
            .bearer(key)
            .send()
            .await
            .ok_json()
    }

    /// Completes passkey `id`'s verification with `assertion`.
    pub async fn complete_verification(&self, key: &str, id: &str, assertion: &Value) -> Reply {
        self.post(&format!("{CREDENTIALS}{id}/verify_complete/"))
            .bearer(key)
            .json(assertion)
            .send()
            .await
    }

    /// The sign-in check with `assertion` (of a challenge begun before).
    pub async fn sign_in(&self, key: &str, assertion: &Value) -> Reply {
        self.post(SIGN_IN)
            .bearer(key)
            .json(&sign_in_body(assertion))
            .send()
            .await
    }

    pub async fn delete_passkey(&self, key: &str, id: &str) -> Reply {
        self.delete(&format!("{CREDENTIALS}{id}/"))
            .bearer(key)
            .send()
            .await
    }

    /// Registers and verifies a passkey on `authenticator`: its id.
    pub async fn add_verified_passkey(
        &self,
        key: &str,
        authenticator: &mut Authenticator,
    ) -> String {
        let id = self.add_passkey(key, authenticator).await;
        self.verify_passkey(key, &id, authenticator)
            .await
            .assert_status(200);
        id
    }

    /// Registers a passkey on `authenticator` (unverified): its id.
    pub async fn add_passkey(&self, key: &str, authenticator: &mut Authenticator) -> String {
        let options = self.registration_options(key).await;
        let credential = authenticator.register(&options);
        let done = self.complete_registration(key, &credential).await.ok_json();
        done["credential_id"].as_str().unwrap().to_string()
    }

    /// Proves passkey `id` with an assertion of `authenticator`.
    pub async fn verify_passkey(
        &self,
        key: &str,
        id: &str,
        authenticator: &mut Authenticator,
    ) -> Reply {
        let options = self.verification_options(key, id).await;
        let assertion = authenticator.assert(&options);
        self.complete_verification(key, id, &assertion).await
    }

    /// The caller's passkeys as the list route shows them.
    pub async fn passkeys(&self, key: &str) -> Vec<Value> {
        let list = self.get(CREDENTIALS).bearer(key).send().await.ok_json();
        list.as_array().unwrap().clone()
    }

    /// Begins the sign-in check by passkey: the request options.
    pub async fn begin_passkey_sign_in(&self, key: &str) -> Value {
        self.post(SIGN_IN_BEGIN).bearer(key).send().await.ok_json()
    }

    /// The whole sign-in check by passkey.
    pub async fn sign_in_with_passkey(
        &self,
        key: &str,
        authenticator: &mut Authenticator,
    ) -> Reply {
        let options = self.begin_passkey_sign_in(key).await;
        let assertion = authenticator.assert(&options);
        self.sign_in(key, &assertion).await
    }

    /// Turns passkey 2FA on or off.
    pub async fn set_passkey_2fa(&self, key: &str, on: bool) -> Reply {
        self.patch("/api/users/@me/")
            .bearer(key)
            .json(&json!({"passkeys_enabled_for_2fa": on}))
            .send()
            .await
    }
}
