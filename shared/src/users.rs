//! The user: the stored record and the user object of API.md §3.
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fmt;
use uuid::Uuid;

/// A user's id: the uuid that names the user in paths and keys every item of theirs. A type
/// of its own, so that no other string (an email, a key hash, a raw path segment) can be
/// passed where a user is meant. Stored and shown in the uuid's hyphenated form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(Uuid);

impl UserId {
    /// A new, random id (version 4).
    pub fn random() -> Self {
        UserId(Uuid::new_v4())
    }

    /// The uuid itself (a passkey's user handle is its 16 bytes).
    pub fn as_uuid(self) -> Uuid {
        self.0
    }

    /// The id a text names, if it is a uuid.
    pub fn parse(text: &str) -> Option<Self> {
        Uuid::parse_str(text).ok().map(UserId)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl From<UserId> for String {
    fn from(id: UserId) -> String {
        id.to_string()
    }
}

/// A user as stored in the users table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserRecord {
    pub uuid: UserId,
    pub distinct_id: String,
    #[serde(default)]
    pub first_name: String,
    #[serde(default)]
    pub last_name: String,
    pub email: String,
    #[serde(default)]
    pub is_email_verified: Option<bool>,
    pub date_joined: String,
    #[serde(default)]
    pub is_staff: bool,
    #[serde(default = "yes")]
    pub is_active: bool,
    #[serde(default = "default_notification_settings")]
    pub notification_settings: Value,
    #[serde(default)]
    pub anonymize_data: bool,
    #[serde(default = "yes")]
    pub allow_impersonation: bool,
    #[serde(default)]
    pub toolbar_mode: Option<String>,
    #[serde(default = "default_events_column_config")]
    pub events_column_config: Value,
    #[serde(default)]
    pub has_seen_product_intro_for: Option<Value>,
    #[serde(default)]
    pub theme_mode: Option<String>,
    #[serde(default)]
    pub hedgehog_config: Option<Value>,
    #[serde(default)]
    pub allow_sidebar_suggestions: Option<bool>,
    #[serde(default)]
    pub shortcut_position: Option<String>,
    #[serde(default)]
    pub role_at_organization: Option<String>,
    #[serde(default)]
    pub passkeys_enabled_for_2fa: bool,
    #[serde(default)]
    pub hide_mcp_hints: bool,
    /// How many passkeys the user has registered, verified or not (kept by the passkey
    /// routes in the same transactions as the passkeys themselves).
    #[serde(default)]
    pub passkey_count: i64,
    /// How many of them are verified: passkey 2FA is in effect while this is above 0 and
    /// `passkeys_enabled_for_2fa` is set.
    #[serde(default)]
    pub verified_passkeys: i64,
    /// Scene → dashboard id.
    #[serde(default)]
    pub scene_dashboards: HashMap<String, u64>,
    /// Scene → when it was first set (µs), which orders `scene_personalisation`.
    #[serde(default)]
    pub scene_first_set: HashMap<String, u64>,
}

fn yes() -> bool {
    true
}

fn default_notification_settings() -> Value {
    json!({"plugin_disabled": true, "project_weekly_digest_disabled": {}, "all_weekly_digest_disabled": false})
}

fn default_events_column_config() -> Value {
    json!({"active": "DEFAULT"})
}

/// Whether a user is staff (API.md §2: staff may read other users and manage their 2FA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserKind {
    Regular,
    Staff,
}

impl UserRecord {
    /// A new active user with PostHog's defaults.
    pub fn new(email: &str, first_name: &str, last_name: &str, kind: UserKind) -> Self {
        UserRecord {
            uuid: UserId::random(),
            distinct_id: uuid::Uuid::new_v4().simple().to_string(),
            first_name: first_name.to_string(),
            last_name: last_name.to_string(),
            email: email.to_string(),
            is_email_verified: None,
            date_joined: crate::clock::iso_now(),
            is_staff: kind == UserKind::Staff,
            is_active: true,
            notification_settings: default_notification_settings(),
            anonymize_data: false,
            allow_impersonation: true,
            toolbar_mode: Some("toolbar".to_string()),
            events_column_config: default_events_column_config(),
            has_seen_product_intro_for: None,
            theme_mode: None,
            hedgehog_config: None,
            allow_sidebar_suggestions: None,
            shortcut_position: None,
            role_at_organization: None,
            passkeys_enabled_for_2fa: false,
            hide_mcp_hints: false,
            passkey_count: 0,
            verified_passkeys: 0,
            scene_dashboards: HashMap::new(),
            scene_first_set: HashMap::new(),
        }
    }

    /// Scenes in the order they were first set.
    pub fn scene_personalisation(&self) -> Vec<Value> {
        let mut scenes: Vec<(&String, &u64)> = self.scene_dashboards.iter().collect();
        scenes.sort_by_key(|(scene, _)| {
            (
                self.scene_first_set
                    .get(*scene)
                    .copied()
                    .unwrap_or(u64::MAX),
                scene.as_str(),
            )
        });
        scenes
            .into_iter()
            .map(|(scene, dashboard)| json!({"scene": scene, "dashboard": dashboard}))
            .collect()
    }
}

/// The fields one update of a user sets, each validated: `None` leaves a field as it is,
/// and for a nullable field `Some(None)` clears it. What the store writes and what the
/// response shows are both this patch applied, so they cannot disagree.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProfilePatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    /// Set by completing an email change, never by the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_email_verified: Option<bool>,
    /// The whole object as stored: a partial one from the client is merged first
    /// ([`ProfilePatch::merge_notification_settings`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notification_settings: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anonymize_data: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_impersonation: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub toolbar_mode: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_column_config: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_seen_product_intro_for: Option<Option<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub theme_mode: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hedgehog_config: Option<Option<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_sidebar_suggestions: Option<Option<bool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shortcut_position: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_at_organization: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passkeys_enabled_for_2fa: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hide_mcp_hints: Option<bool>,
}

impl ProfilePatch {
    /// Like PostHog, a partial `notification_settings` object updates only the keys it names:
    /// the patch then carries the stored object with those keys replaced.
    pub fn merge_notification_settings(&mut self, user: &UserRecord) {
        if let Some(Value::Object(partial)) = &self.notification_settings {
            let mut merged = user
                .notification_settings
                .as_object()
                .cloned()
                .unwrap_or_default();
            merged.extend(partial.clone());
            self.notification_settings = Some(Value::Object(merged));
        }
    }

    /// The JSON objects the patch sets, by field name (for size bounds).
    pub fn objects(&self) -> impl Iterator<Item = (&'static str, &Value)> {
        [
            ("notification_settings", self.notification_settings.as_ref()),
            ("events_column_config", self.events_column_config.as_ref()),
            (
                "has_seen_product_intro_for",
                self.has_seen_product_intro_for
                    .as_ref()
                    .and_then(Option::as_ref),
            ),
            (
                "hedgehog_config",
                self.hedgehog_config.as_ref().and_then(Option::as_ref),
            ),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
    }
}

impl UserRecord {
    /// Whether passkeys are the user's second factor: the flag, and a verified passkey.
    pub fn passkey_2fa(&self) -> bool {
        self.passkeys_enabled_for_2fa && self.verified_passkeys > 0
    }

    /// The record with `patch` applied.
    pub fn apply(&mut self, patch: &ProfilePatch) {
        fn set<T: Clone>(field: &mut T, value: &Option<T>) {
            if let Some(value) = value {
                *field = value.clone();
            }
        }
        set(&mut self.first_name, &patch.first_name);
        set(&mut self.last_name, &patch.last_name);
        if let Some(verified) = patch.is_email_verified {
            self.is_email_verified = Some(verified);
        }
        set(
            &mut self.notification_settings,
            &patch.notification_settings,
        );
        set(&mut self.anonymize_data, &patch.anonymize_data);
        set(&mut self.allow_impersonation, &patch.allow_impersonation);
        set(&mut self.toolbar_mode, &patch.toolbar_mode);
        set(&mut self.events_column_config, &patch.events_column_config);
        set(
            &mut self.has_seen_product_intro_for,
            &patch.has_seen_product_intro_for,
        );
        set(&mut self.theme_mode, &patch.theme_mode);
        set(&mut self.hedgehog_config, &patch.hedgehog_config);
        set(
            &mut self.allow_sidebar_suggestions,
            &patch.allow_sidebar_suggestions,
        );
        set(&mut self.shortcut_position, &patch.shortcut_position);
        set(&mut self.role_at_organization, &patch.role_at_organization);
        set(
            &mut self.passkeys_enabled_for_2fa,
            &patch.passkeys_enabled_for_2fa,
        );
        set(&mut self.hide_mcp_hints, &patch.hide_mcp_hints);
    }
}

/// What the user object needs from the tables other than the users table.
#[derive(Debug, Clone)]
pub struct ViewExtras {
    pub has_totp: bool,
    pub pending_email: Option<String>,
}

impl ViewExtras {
    /// The user object's parts, with `user`.
    pub fn with(self, user: UserRecord) -> UserView {
        UserView {
            user,
            has_totp: self.has_totp,
            pending_email: self.pending_email,
        }
    }
}

/// A user with what the user object needs from the other tables.
#[derive(Debug, Clone)]
pub struct UserView {
    pub user: UserRecord,
    /// A confirmed TOTP device exists (2FA is on with it, or with passkeys in effect).
    pub has_totp: bool,
    pub pending_email: Option<String>,
}

impl UserView {
    /// The user object of API.md §3. Secrets and write-only fields are never part of it.
    pub fn to_json(&self) -> Value {
        let user = &self.user;
        json!({
            "uuid": user.uuid,
            "distinct_id": user.distinct_id,
            "first_name": user.first_name,
            "last_name": user.last_name,
            "email": user.email,
            "pending_email": self.pending_email,
            "is_email_verified": user.is_email_verified,
            "date_joined": user.date_joined,
            "is_staff": user.is_staff,
            "notification_settings": user.notification_settings,
            "anonymize_data": user.anonymize_data,
            "allow_impersonation": user.allow_impersonation,
            "toolbar_mode": user.toolbar_mode,
            "events_column_config": user.events_column_config,
            "has_seen_product_intro_for": user.has_seen_product_intro_for,
            "theme_mode": user.theme_mode,
            "hedgehog_config": user.hedgehog_config,
            "allow_sidebar_suggestions": user.allow_sidebar_suggestions,
            "shortcut_position": user.shortcut_position,
            "role_at_organization": user.role_at_organization,
            "passkeys_enabled_for_2fa": user.passkeys_enabled_for_2fa,
            "hide_mcp_hints": user.hide_mcp_hints,
            "is_2fa_enabled": self.has_totp || user.passkey_2fa(),
            "scene_personalisation": user.scene_personalisation(),
        })
    }
}

/// The key that makes an address unique: case-insensitive, surrounding space ignored.
pub fn email_key(email: &str) -> String {
    email.trim().to_lowercase()
}
