//! Personal API keys, stored only as their `sha256$` hash.
use super::{from_item, s, sdk, to_item, Store};
use crate::auth::{ApiKeyHash, ApiKeyRecord};
use crate::error::ApiError;
use crate::users::UserId;
use aws_sdk_dynamodb::types::AttributeValue;

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

    /// Stores a new key, provided its user exists and is active, and adds it to the user's
    /// own list of key hashes, in one transaction: once a deactivation has made the user
    /// inactive no key can be added, and every key added before is in that list, which a
    /// deactivation reads consistently (the `by_user` index is only eventually consistent).
    pub async fn put_api_key(&self, record: &ApiKeyRecord) -> Result<(), ApiError> {
        use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};
        let put = Put::builder()
            .table_name(&self.tables.api_keys)
            .set_item(Some(to_item(record)?))
            .condition_expression("attribute_not_exists(secure_value)")
            .build()
            .map_err(|e| super::builder_failed("api_keys.put", e))?;
        let user = Update::builder()
            .table_name(&self.tables.users)
            .key("uuid", s(record.user_uuid))
            .update_expression("ADD api_key_hashes :hash, keys_added :one")
            .condition_expression("is_active = :yes")
            .expression_attribute_values(
                ":hash",
                AttributeValue::Ss(vec![record.secure_value.clone()]),
            )
            .expression_attribute_values(":one", super::n(1))
            .expression_attribute_values(":yes", AttributeValue::Bool(true))
            .build()
            .map_err(|e| super::builder_failed("api_keys.put", e))?;
        let items = vec![
            TransactWriteItem::builder().put(put).build(),
            TransactWriteItem::builder().update(user).build(),
        ];
        match self.transact("api_keys.put", items).await? {
            super::Tx::Done => Ok(()),
            super::Tx::Refused(_) => Err(ApiError::NotFound),
        }
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

    /// Removes a key (and its hash from its user's list); true when it existed.
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
        let Some(old) = out.attributes else {
            return Ok(false);
        };
        let record: ApiKeyRecord = from_item(old)?;
        // Only tidies the list: a deactivation skips hashes whose key is gone.
        let result = self
            .db
            .update_item()
            .table_name(&self.tables.users)
            .key("uuid", s(record.user_uuid))
            .update_expression("DELETE api_key_hashes :hash")
            .condition_expression("attribute_exists(#uuid)")
            .expression_attribute_names("#uuid", "uuid")
            .expression_attribute_values(":hash", AttributeValue::Ss(vec![hash.0.clone()]))
            .send()
            .await;
        match result {
            Err(e) if !super::is_condition_failed(&e) => {
                Err(ApiError::from_sdk("users.forget_key", &e))
            }
            _ => Ok(true),
        }
    }

    /// Every key of a user, through the `by_user` index.
    pub async fn api_keys_of(&self, user_uuid: UserId) -> Result<Vec<ApiKeyRecord>, ApiError> {
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
    /// The keys are those of the user's own list of key hashes, read consistently (and, for
    /// keys made before that list existed, the `by_user` index). The user and their keys
    /// change in one transaction (up to 99 keys; any beyond follow once the user is
    /// inactive), conditioned on no key having been added since the list was read: a key
    /// added meanwhile makes it read again, and once the user is inactive no key can be
    /// added (`put_api_key`). So no key can stay live, whatever the index shows.
    pub async fn deactivate_user(&self, uuid: UserId) -> Result<bool, ApiError> {
        use aws_sdk_dynamodb::types::{TransactWriteItem, Update};
        const KEYS_WITH_THE_USER: usize = 99;
        let mut gone: std::collections::BTreeSet<String> = Default::default();
        for _attempt in 0..5 {
            let Some((listed, keys_added)) = self.user_key_list(uuid).await? else {
                return Ok(false);
            };
            let mut keys: std::collections::BTreeSet<String> = listed.into_iter().collect();
            keys.extend(
                self.api_keys_of(uuid)
                    .await?
                    .into_iter()
                    .map(|k| k.secure_value),
            );
            let keys: Vec<String> = keys.into_iter().filter(|k| !gone.contains(k)).collect();
            let (with_user, rest) = keys.split_at(keys.len().min(KEYS_WITH_THE_USER));
            let mut user = Update::builder()
                .table_name(&self.tables.users)
                .key("uuid", s(uuid))
                .update_expression("SET is_active = :no")
                .expression_attribute_names("#uuid", "uuid")
                .expression_attribute_values(":no", AttributeValue::Bool(false));
            user = match keys_added {
                0 => user.condition_expression(
                    "attribute_exists(#uuid) AND attribute_not_exists(keys_added)",
                ),
                added => user
                    .condition_expression("attribute_exists(#uuid) AND keys_added = :added")
                    .expression_attribute_values(":added", super::n(added)),
            };
            let mut items = vec![TransactWriteItem::builder()
                .update(
                    user.build()
                        .map_err(|e| super::builder_failed("users.deactivate", e))?,
                )
                .build()];
            for key in with_user {
                items.push(
                    TransactWriteItem::builder()
                        .update(self.key_inactive(key)?)
                        .build(),
                );
            }
            match self.transact("users.deactivate", items).await? {
                super::Tx::Done => {
                    self.mark_keys_inactive(rest).await?;
                    return Ok(true);
                }
                // A key was added (or the user removed) since the list was read: read again.
                super::Tx::Refused(failed) if failed.first() == Some(&true) => continue,
                // Keys revoked meanwhile: nothing to deactivate there.
                super::Tx::Refused(failed) => {
                    for (key, refused) in with_user.iter().zip(failed.iter().skip(1)) {
                        if *refused {
                            gone.insert(key.clone());
                        }
                    }
                }
            }
        }
        Err(ApiError::Unavailable)
    }

    /// The user's own list of key hashes and how many keys were ever added to it, read
    /// consistently; `None` when there is no such user.
    async fn user_key_list(&self, uuid: UserId) -> Result<Option<(Vec<String>, u64)>, ApiError> {
        let out = self
            .db
            .get_item()
            .table_name(&self.tables.users)
            .key("uuid", s(uuid))
            .projection_expression("api_key_hashes, keys_added, #uuid")
            .expression_attribute_names("#uuid", "uuid")
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk("users.key_list"))?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        let hashes = match item.get("api_key_hashes") {
            Some(AttributeValue::Ss(set)) => set.clone(),
            _ => Vec::new(),
        };
        let added = item
            .get("keys_added")
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        Ok(Some((hashes, added)))
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
            .map_err(|e| super::builder_failed("api_keys", e))
    }

    /// Marks keys inactive one by one (a key revoked meanwhile is skipped).
    async fn mark_keys_inactive(&self, keys: &[String]) -> Result<(), ApiError> {
        for key in keys {
            let result = self
                .db
                .update_item()
                .table_name(&self.tables.api_keys)
                .key("secure_value", s(key))
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
