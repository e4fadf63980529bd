//! The requests the tests send again and again, named by what they do. Each sends one request
//! as the caller with `key` and returns the reply for the test to check, except the few whose
//! name says they complete a step (`enable_2fa`, `backup_codes`, ...): those check the usual
//! success themselves and return what the test goes on with.
use crate::{code_mailed_to, create_user, pyotp_code, step_margin, unique_email, Api, Reply};
use crate::{Call, TestUser, UserId};
use serde_json::{json, Value};
use shared::Context;

pub const ME: &str = "/api/users/@me/";
pub const VERIFY_EMAIL: &str = "/api/users/verify_email/";
pub const CANCEL_EMAIL_CHANGE: &str = "/api/users/cancel_email_change_request/";
pub const SCENE: &str = "/api/users/@me/scene_personalisation/";
pub const PUSH_TOKENS: &str = "/api/users/@me/push_tokens/";
pub const UNREGISTER_PUSH_TOKEN: &str = "/api/users/@me/push_tokens/unregister/";
pub const START_2FA_SETUP: &str = "/api/users/@me/two_factor_start_setup/";
pub const VALIDATE_2FA: &str = "/api/users/@me/two_factor_validate/";
pub const VERIFY_2FA: &str = "/api/users/@me/two_factor_verify/";
pub const BACKUP_CODES: &str = "/api/users/@me/two_factor_backup_codes/";
pub const TWO_FACTOR_STATUS: &str = "/api/users/@me/two_factor_status/";
pub const DISABLE_2FA: &str = "/api/users/@me/two_factor_disable/";

impl<'a> Call<'a> {
    /// Sends the request with this key and JSON body.
    pub async fn send_json(self, key: &str, body: &Value) -> Reply {
        self.bearer(key).json(body).send().await
    }

    /// Sends the request with this key and a body of this content type, as it is.
    pub async fn send_raw(self, key: &str, content_type: &str, body: impl Into<Vec<u8>>) -> Reply {
        self.bearer(key).raw(content_type, body).send().await
    }
}

impl Api {
    /// `PATCH /api/users/@me/` with this body.
    pub async fn patch_me(&self, key: &str, body: &Value) -> Reply {
        self.patch(ME).send_json(key, body).await
    }

    /// `PATCH /api/users/@me/` with `{"email": new_email}`: opens an email-change request.
    pub async fn request_email_change(&self, key: &str, new_email: &str) -> Reply {
        self.patch_me(key, &json!({"email": new_email})).await
    }

    /// `POST /api/users/verify_email/` with this uuid and code.
    pub async fn verify_email(&self, key: &str, uuid: &str, code: &str) -> Reply {
        self.post(VERIFY_EMAIL)
            .send_json(key, &json!({"uuid": uuid, "code": code}))
            .await
    }

    /// `PATCH /api/users/cancel_email_change_request/` without a body.
    pub async fn cancel_email_change(&self, key: &str) -> Reply {
        self.patch(CANCEL_EMAIL_CHANGE).bearer(key).send().await
    }

    /// `POST /api/users/@me/scene_personalisation/` with this body.
    pub async fn set_scene(&self, key: &str, body: &Value) -> Reply {
        self.post(SCENE).send_json(key, body).await
    }

    /// `POST /api/users/@me/push_tokens/` with this token and platform.
    pub async fn register_push_token(&self, key: &str, token: &str, platform: &str) -> Reply {
        self.post(PUSH_TOKENS)
            .send_json(key, &json!({"token": token, "platform": platform}))
            .await
    }

    /// `POST /api/users/@me/push_tokens/unregister/` with this body.
    pub async fn unregister_push_token(&self, key: &str, body: &Value) -> Reply {
        self.post(UNREGISTER_PUSH_TOKEN).send_json(key, body).await
    }

    /// `GET /api/users/@me/two_factor_start_setup/`, answered 200: its body.
    pub async fn start_2fa_setup(&self, key: &str) -> Value {
        self.get(START_2FA_SETUP).bearer(key).send().await.ok_json()
    }

    /// A new pending setup's secret (base32).
    pub async fn new_2fa_secret(&self, key: &str) -> String {
        self.start_2fa_setup(key).await["secret"]
            .as_str()
            .expect("the setup's secret")
            .to_string()
    }

    /// `POST /api/users/@me/two_factor_validate/` with this token.
    pub async fn validate_2fa(&self, key: &str, token: impl Into<Value>) -> Reply {
        self.post(VALIDATE_2FA)
            .send_json(key, &json!({"token": token.into()}))
            .await
    }

    /// `POST /api/users/@me/two_factor_verify/` with this token.
    pub async fn verify_2fa(&self, key: &str, token: impl Into<Value>) -> Reply {
        self.post(VERIFY_2FA)
            .send_json(key, &json!({"token": token.into()}))
            .await
    }

    /// Starts a TOTP setup and confirms it with pyotp's code; returns the secret (base32).
    pub async fn enable_2fa(&self, key: &str) -> String {
        let secret = self.new_2fa_secret(key).await;
        let code = pyotp_code(&secret, step_margin().await).await;
        self.validate_2fa(key, code).await.assert_success();
        secret
    }

    /// `POST /api/users/@me/two_factor_backup_codes/`, answered 200: the new codes.
    pub async fn backup_codes(&self, key: &str) -> Vec<String> {
        self.post(BACKUP_CODES).bearer(key).send().await.ok_json()["backup_codes"]
            .as_array()
            .expect("a list of backup codes")
            .iter()
            .map(|c| c.as_str().expect("a backup code").to_string())
            .collect()
    }

    /// `GET /api/users/@me/two_factor_status/`, answered 200: its body.
    pub async fn two_factor_status(&self, key: &str) -> Value {
        self.get(TWO_FACTOR_STATUS)
            .bearer(key)
            .send()
            .await
            .ok_json()
    }

    /// `POST /api/users/@me/two_factor_disable/`.
    pub async fn disable_2fa(&self, key: &str) -> Reply {
        self.post(DISABLE_2FA).bearer(key).send().await
    }
}

/// A new user with an open email-change request: the user, the new address and its code.
pub async fn pending_change(api: &Api, ctx: &Context, tag: &str) -> (TestUser, String, String) {
    let user = create_user(ctx, &["*"]).await;
    let new_email = unique_email(tag);
    api.request_email_change(&user.key, &new_email)
        .await
        .user_object();
    let code = code_mailed_to(&new_email).await;
    (user, new_email, code)
}

/// The user's push tokens as stored, sorted.
pub async fn push_tokens_of(ctx: &Context, uuid: UserId) -> Vec<String> {
    let mut tokens: Vec<String> = ctx
        .store
        .push_tokens_of(uuid)
        .await
        .expect("read the push tokens")
        .into_iter()
        .map(|t| t.token)
        .collect();
    tokens.sort();
    tokens
}
