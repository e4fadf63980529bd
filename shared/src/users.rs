//! The user: the stored record and the user object of API.md §3.
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;

/// A user as stored in the users table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserRecord {
    pub uuid: String,
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

impl UserRecord {
    /// A new active user with PostHog's defaults.
    pub fn new(email: &str, first_name: &str, last_name: &str, is_staff: bool) -> Self {
        let uuid = uuid::Uuid::new_v4();
        UserRecord {
            uuid: uuid.to_string(),
            distinct_id: uuid::Uuid::new_v4().simple().to_string(),
            first_name: first_name.to_string(),
            last_name: last_name.to_string(),
            email: email.to_string(),
            is_email_verified: None,
            date_joined: crate::clock::iso_now(),
            is_staff,
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

    /// The user object of API.md §3. Secrets and write-only fields are never part of it.
    pub fn to_user_object(&self, is_2fa_enabled: bool, pending_email: Option<&str>) -> Value {
        json!({
            "uuid": self.uuid,
            "distinct_id": self.distinct_id,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "email": self.email,
            "pending_email": pending_email,
            "is_email_verified": self.is_email_verified,
            "date_joined": self.date_joined,
            "is_staff": self.is_staff,
            "notification_settings": self.notification_settings,
            "anonymize_data": self.anonymize_data,
            "allow_impersonation": self.allow_impersonation,
            "toolbar_mode": self.toolbar_mode,
            "events_column_config": self.events_column_config,
            "has_seen_product_intro_for": self.has_seen_product_intro_for,
            "theme_mode": self.theme_mode,
            "hedgehog_config": self.hedgehog_config,
            "allow_sidebar_suggestions": self.allow_sidebar_suggestions,
            "shortcut_position": self.shortcut_position,
            "role_at_organization": self.role_at_organization,
            "passkeys_enabled_for_2fa": self.passkeys_enabled_for_2fa,
            "hide_mcp_hints": self.hide_mcp_hints,
            "is_2fa_enabled": is_2fa_enabled,
            "scene_personalisation": self.scene_personalisation(),
        })
    }
}

/// A user with what the user object needs from the other tables.
#[derive(Debug, Clone)]
pub struct UserView {
    pub user: UserRecord,
    pub is_2fa_enabled: bool,
    pub pending_email: Option<String>,
}

impl UserView {
    pub fn to_json(&self) -> Value {
        self.user
            .to_user_object(self.is_2fa_enabled, self.pending_email.as_deref())
    }
}

/// The key that makes an address unique: case-insensitive, surrounding space ignored.
pub fn email_key(email: &str) -> String {
    email.trim().to_lowercase()
}
