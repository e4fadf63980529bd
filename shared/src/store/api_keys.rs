//! Personal API keys, stored only as their `sha256$` hash.
use super::{from_item, s, sdk, to_item, Store};
use crate::auth::ApiKeyHash;
use crate::error::ApiError;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize};

/// One key. It carries its user's staff and active flags so that authentication is a
/// single read; the operator tool keeps them in step when a user is deactivated.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub secure_value: String,
    pub user_uuid: String,
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

/// A key's update when its user is deactivated, and its condition (the key still exists).
const KEY_INACTIVE: &str = "SET user_is_active = :no";
const KEY_EXISTS: &str = "attribute_exists(secure_value)";

impl Store {
    pub async fn api_key(&self, hash: &ApiKeyHash) -> Result<Option<ApiKeyRecord>, ApiError> {
        let out = self
            .db
            .get_item()
            .table_name(&self.tables.api_keys)
            .key("secure_value", s(&hash.0))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk("api_keys.get"))?;
        out.item.map(from_item).transpose()
    }

    /// Stores a new key, provided its user exists and is active (one transaction, so a
    /// concurrent deactivation cannot be missed by the check).
    pub async fn put_api_key(&self, record: &ApiKeyRecord) -> Result<(), ApiError> {
        use aws_sdk_dynamodb::types::{ConditionCheck, Put, TransactWriteItem};
        let put = Put::builder()
            .table_name(&self.tables.api_keys)
            .set_item(Some(to_item(record)?))
            .condition_expression("attribute_not_exists(secure_value)")
            .build()
            .map_err(|_| ApiError::Internal)?;
        let check = ConditionCheck::builder()
            .table_name(&self.tables.users)
            .key("uuid", s(&record.user_uuid))
            .condition_expression("is_active = :yes")
            .expression_attribute_values(
                ":yes",
                aws_sdk_dynamodb::types::AttributeValue::Bool(true),
            )
            .build()
            .map_err(|_| ApiError::Internal)?;
        self.db
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put).build())
            .transact_items(TransactWriteItem::builder().condition_check(check).build())
            .send()
            .await
            .map_err(|e| {
                if super::cancelled_conditions(&e).is_some() {
                    ApiError::NotFound
                } else {
                    ApiError::from_sdk("api_keys.put", &e)
                }
            })?;
        Ok(())
    }

    /// Notes that a key was used at `now`, unless that was already noted after `since`
    /// (PostHog writes it at most once an hour per key). The condition also keeps a key that
    /// was removed in the meantime from coming back. True when it wrote.
    pub async fn note_api_key_used(
        &self,
        hash: &ApiKeyHash,
        now: &str,
        since: &str,
    ) -> Result<bool, ApiError> {
        let result = self
            .db
            .update_item()
            .table_name(&self.tables.api_keys)
            .key("secure_value", s(&hash.0))
            .update_expression("SET last_used_at = :now")
            // A key never used holds a NULL (serde's None), or nothing in older items.
            .condition_expression(
                "attribute_exists(secure_value) AND (attribute_not_exists(last_used_at) \
                 OR attribute_type(last_used_at, :null) OR last_used_at < :since)",
            )
            .expression_attribute_values(":now", s(now))
            .expression_attribute_values(":since", s(since))
            .expression_attribute_values(":null", s("NULL"))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(err) if super::is_condition_failed(&err) => Ok(false),
            Err(err) => Err(ApiError::from_sdk("api_keys.note_used", &err)),
        }
    }

    /// Removes a key; true when it existed.
    pub async fn delete_api_key(&self, hash: &ApiKeyHash) -> Result<bool, ApiError> {
        let out = self
            .db
            .delete_item()
            .table_name(&self.tables.api_keys)
            .key("secure_value", s(&hash.0))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(sdk("api_keys.delete"))?;
        Ok(out.attributes.is_some())
    }

    /// Every key of a user, through the `by_user` index.
    pub async fn api_keys_of(&self, user_uuid: &str) -> Result<Vec<ApiKeyRecord>, ApiError> {
        let mut keys = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .db
                .query()
                .table_name(&self.tables.api_keys)
                .index_name("by_user")
                .key_condition_expression("user_uuid = :u")
                .expression_attribute_values(":u", s(user_uuid))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(sdk("api_keys.query"))?;
            for item in out.items.unwrap_or_default() {
                keys.push(from_item(item)?);
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(keys);
            }
        }
    }

    /// Deactivates a user and every key of theirs, so that none of the keys authenticates
    /// again; false when there is no such user. Rerunning it is harmless.
    ///
    /// The user and their keys change in one transaction (up to 99 keys; any beyond follow
    /// once the user is inactive), so a failure never leaves an inactive user with live keys.
    /// Once the user is inactive no key can be added (`put_api_key` checks in its own
    /// transaction), and a second look at the `by_user` index, which is eventually
    /// consistent, marks a key added just before that it did not show yet.
    pub async fn deactivate_user(&self, uuid: &str) -> Result<bool, ApiError> {
        use aws_sdk_dynamodb::types::{TransactWriteItem, Update};
        const KEYS_WITH_THE_USER: usize = 99;
        let user = Update::builder()
            .table_name(&self.tables.users)
            .key("uuid", s(uuid))
            .update_expression("SET is_active = :no")
            .condition_expression("attribute_exists(#uuid)")
            .expression_attribute_names("#uuid", "uuid")
            .expression_attribute_values(":no", AttributeValue::Bool(false))
            .build()
            .map_err(|_| ApiError::Internal)?;
        // A key revoked between the read of the index and the transaction cancels it; the
        // next attempt reads the index again.
        for _attempt in 0..3 {
            let keys = self.api_keys_of(uuid).await?;
            let (with_user, rest) = keys.split_at(keys.len().min(KEYS_WITH_THE_USER));
            let mut items = vec![TransactWriteItem::builder().update(user.clone()).build()];
            for key in with_user {
                items.push(
                    TransactWriteItem::builder()
                        .update(self.key_inactive(&key.secure_value)?)
                        .build(),
                );
            }
            let result = self
                .db
                .transact_write_items()
                .set_transact_items(Some(items))
                .send()
                .await;
            match result {
                Ok(_) => {
                    self.mark_keys_inactive(rest).await?;
                    let late: Vec<ApiKeyRecord> = self
                        .api_keys_of(uuid)
                        .await?
                        .into_iter()
                        .filter(|key| key.user_is_active)
                        .collect();
                    self.mark_keys_inactive(&late).await?;
                    return Ok(true);
                }
                Err(e) => match super::cancelled_conditions(&e) {
                    Some(failed) if failed.first() == Some(&true) => return Ok(false),
                    Some(_) => continue,
                    None => return Err(ApiError::from_sdk("users.deactivate", &e)),
                },
            }
        }
        Err(ApiError::Unavailable)
    }

    /// The update that marks a key inactive, if it still exists, in a transaction.
    fn key_inactive(
        &self,
        secure_value: &str,
    ) -> Result<aws_sdk_dynamodb::types::Update, ApiError> {
        aws_sdk_dynamodb::types::Update::builder()
            .table_name(&self.tables.api_keys)
            .key("secure_value", s(secure_value))
            .update_expression(KEY_INACTIVE)
            .condition_expression(KEY_EXISTS)
            .expression_attribute_values(":no", AttributeValue::Bool(false))
            .build()
            .map_err(|_| ApiError::Internal)
    }

    /// Marks keys inactive one by one (a key revoked meanwhile is skipped).
    async fn mark_keys_inactive(&self, keys: &[ApiKeyRecord]) -> Result<(), ApiError> {
        for key in keys {
            let result = self
                .db
                .update_item()
                .table_name(&self.tables.api_keys)
                .key("secure_value", s(&key.secure_value))
                .update_expression(KEY_INACTIVE)
                .condition_expression(KEY_EXISTS)
                .expression_attribute_values(":no", AttributeValue::Bool(false))
                .send()
                .await;
            match result {
                Err(e) if !super::is_condition_failed(&e) => {
                    return Err(ApiError::from_sdk("api_keys.deactivate", &e))
                }
                _ => {}
            }
        }
        Ok(())
    }
}
