//! Personal API keys, stored only as their `sha256$` hash.
use super::{from_item, s, sdk, to_item, Store};
use crate::auth::{ApiKeyHash, ApiKeyRecord};
use crate::error::ApiError;
use crate::users::UserId;
use aws_sdk_dynamodb::types::AttributeValue;

/// A key's update when its user is deactivated, and its condition (the key still exists).
const KEY_INACTIVE: &str = "SET user_is_active = :no";
const KEY_EXISTS: &str = "attribute_exists(secure_value)";

/// Something that authenticates as a user: a key (by its hash) or an identity link (by its key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Credential {
    Key(String),
    Link(String),
}

struct CredentialLists {
    credentials: Vec<Credential>,
    added: u64,
    /// Whether the user was active when read.
    active: bool,
}

impl Store {
    /// Opens a connection to DynamoDB for the requests to come, by reading a key no one has
    /// (no hash is this string; an eventually consistent read, half a read unit). A failure
    /// is only logged: the request that needs DynamoDB meets it itself.
    pub async fn connect(&self) {
        let read = self
            .db
            .get_item()
            .table_name(&self.tables.api_keys)
            .key("secure_value", s("connect"))
            .send()
            .await;
        if let Err(err) = read {
            // Logged (operation and error code) as any failed call is; nothing waits for it.
            let _ = ApiError::from_sdk("api_keys.connect", &err);
        }
    }

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
    ///
    /// `event` (the `key_created` record) is written in the same transaction.
    pub async fn put_api_key(
        &self,
        record: &ApiKeyRecord,
        event: &crate::security_events::SecurityEvent,
    ) -> Result<(), ApiError> {
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
            self.event_put(event)?,
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

    /// Removes a key (and its hash from its user's list); its owner when it existed.
    pub async fn delete_api_key(&self, hash: &ApiKeyHash) -> Result<Option<UserId>, ApiError> {
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
            return Ok(None);
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
            _ => Ok(Some(record.user_uuid)),
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

    /// Deactivates a user, every key of theirs and every sign-in identity linked to them, so
    /// that none of them authenticates again; false when there is no such user. Rerunning it
    /// is harmless.
    ///
    /// The keys and links are those of the user's own lists, read consistently (and, for
    /// keys made before that list existed, the `by_user` index). The user and their keys and
    /// links change in one transaction (up to 98; any beyond follow once the user is
    /// inactive), conditioned on none having been added since the lists were read: one added
    /// meanwhile makes it read again, and once the user is inactive none can be added
    /// (`put_api_key`, `link_identity`). So none can stay live, whatever the index shows.
    ///
    /// `event` (the `user_deactivated` record) is written in the transaction that makes an
    /// active user inactive (conditioned on the user being active still); a rerun on an
    /// inactive user records nothing.
    pub async fn deactivate_user(
        &self,
        uuid: UserId,
        event: &crate::security_events::SecurityEvent,
    ) -> Result<bool, ApiError> {
        use aws_sdk_dynamodb::types::{TransactWriteItem, Update};
        // DynamoDB's 100 items a transaction: the user, its record, and 98 credentials.
        const WITH_THE_USER: usize = 98;
        let mut gone: std::collections::BTreeSet<Credential> = Default::default();
        for _attempt in 0..5 {
            let Some(lists) = self.user_credential_lists(uuid).await? else {
                return Ok(false);
            };
            let mut all: std::collections::BTreeSet<Credential> =
                lists.credentials.into_iter().collect();
            all.extend(
                self.api_keys_of(uuid)
                    .await?
                    .into_iter()
                    .map(|k| Credential::Key(k.secure_value)),
            );
            // Links are always written with the user's list; the index is a second net.
            all.extend(
                self.identities_of(uuid)
                    .await?
                    .into_iter()
                    .map(|l| Credential::Link(l.identity)),
            );
            let all: Vec<Credential> = all.into_iter().filter(|c| !gone.contains(c)).collect();
            let (with_user, rest) = all.split_at(all.len().min(WITH_THE_USER));
            let mut user = Update::builder()
                .table_name(&self.tables.users)
                .key("uuid", s(uuid))
                .update_expression("SET is_active = :no")
                .expression_attribute_names("#uuid", "uuid")
                .expression_attribute_values(":no", AttributeValue::Bool(false));
            // Still as read: active (and recorded), or not (and not recorded again).
            user = user.expression_attribute_values(":yes", AttributeValue::Bool(true));
            let was = if lists.active {
                "is_active = :yes"
            } else {
                "NOT is_active = :yes"
            };
            user = match lists.added {
                0 => user.condition_expression(format!(
                    "attribute_exists(#uuid) AND attribute_not_exists(keys_added) AND {was}"
                )),
                added => user
                    .condition_expression(format!(
                        "attribute_exists(#uuid) AND keys_added = :added AND {was}"
                    ))
                    .expression_attribute_values(":added", super::n(added)),
            };
            let mut items = vec![TransactWriteItem::builder()
                .update(
                    user.build()
                        .map_err(|e| super::builder_failed("users.deactivate", e))?,
                )
                .build()];
            for credential in with_user {
                items.push(
                    TransactWriteItem::builder()
                        .update(self.credential_inactive(credential)?)
                        .build(),
                );
            }
            if lists.active {
                items.push(self.event_put(event)?);
            }
            match self.transact("users.deactivate", items).await? {
                super::Tx::Done => {
                    self.mark_inactive(rest).await?;
                    return Ok(true);
                }
                // A key or link was added (or the user removed) since the lists were read.
                super::Tx::Refused(failed) if failed.first() == Some(&true) => continue,
                // Keys revoked or links removed meanwhile: nothing to deactivate there.
                super::Tx::Refused(failed) => {
                    for (credential, refused) in with_user.iter().zip(failed.iter().skip(1)) {
                        if *refused {
                            gone.insert(credential.clone());
                        }
                    }
                }
            }
        }
        Err(ApiError::Unavailable)
    }

    /// The user's own lists of key hashes and identity links, and how many were ever added
    /// to them, read consistently; `None` when there is no such user.
    async fn user_credential_lists(
        &self,
        uuid: UserId,
    ) -> Result<Option<CredentialLists>, ApiError> {
        let out = self
            .db
            .get_item()
            .table_name(&self.tables.users)
            .key("uuid", s(uuid))
            .projection_expression("api_key_hashes, identity_keys, keys_added, is_active, #uuid")
            .expression_attribute_names("#uuid", "uuid")
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk("users.key_list"))?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        let set = |name: &str| match item.get(name) {
            Some(AttributeValue::Ss(set)) => set.clone(),
            _ => Vec::new(),
        };
        let mut credentials: Vec<Credential> = set("api_key_hashes")
            .into_iter()
            .map(Credential::Key)
            .collect();
        credentials.extend(set("identity_keys").into_iter().map(Credential::Link));
        let added = item
            .get("keys_added")
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let active = matches!(item.get("is_active"), Some(AttributeValue::Bool(true)));
        Ok(Some(CredentialLists {
            credentials,
            added,
            active,
        }))
    }

    /// The update that marks a key or link inactive, if it still exists, in a transaction.
    fn credential_inactive(
        &self,
        credential: &Credential,
    ) -> Result<aws_sdk_dynamodb::types::Update, ApiError> {
        match credential {
            Credential::Key(hash) => self.key_inactive(hash),
            Credential::Link(identity) => self.link_inactive(identity),
        }
    }

    /// Marks keys and links inactive one by one (one removed meanwhile is skipped).
    async fn mark_inactive(&self, credentials: &[Credential]) -> Result<(), ApiError> {
        for credential in credentials {
            let (table, key, condition, update, name) = match credential {
                Credential::Key(hash) => (
                    &self.tables.api_keys,
                    ("secure_value", hash),
                    KEY_EXISTS,
                    KEY_INACTIVE,
                    None,
                ),
                Credential::Link(id) => (
                    &self.tables.identities,
                    ("identity", id),
                    super::identities::LINK_EXISTS,
                    super::identities::LINK_INACTIVE,
                    Some(("#identity", "identity")),
                ),
            };
            let result = self
                .db
                .update_item()
                .table_name(table)
                .key(key.0, s(key.1.as_str()))
                .update_expression(update)
                .condition_expression(condition)
                .set_expression_attribute_names(
                    name.map(|(k, v)| [(k.to_string(), v.to_string())].into()),
                )
                .expression_attribute_values(":no", AttributeValue::Bool(false))
                .send()
                .await;
            match result {
                Err(e) if !super::is_condition_failed(&e) => {
                    return Err(ApiError::from_sdk("users.deactivate_credential", &e))
                }
                _ => {}
            }
        }
        Ok(())
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
}
