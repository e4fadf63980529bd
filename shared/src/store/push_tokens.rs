//! Push tokens of mobile and web clients, at most 20 per user.
use super::{from_item, is_condition_failed, n, s, sdk, to_item, Store};
use crate::error::ApiError;
use crate::push_tokens::{token_hash, PushTokenRecord, MAX_TOKENS_PER_USER};
use crate::users::UserId;
use aws_sdk_dynamodb::types::{Delete, Put, TransactWriteItem, Update};

/// Sort key of the item holding the version of a user's token set; no token hash (64 hex
/// digits) can equal it, and it sorts before all of them.
const VERSION_KEY: &str = "#version";

impl Store {
    /// Deletes the user's row for exactly this token, if there is one.
    pub async fn delete_push_token(&self, uuid: UserId, token: &str) -> Result<(), ApiError> {
        self.db
            .delete_item()
            .table_name(&self.tables.push_tokens)
            .key("user_uuid", s(uuid))
            .key("token_hash", s(token_hash(token)))
            .send()
            .await
            .map_err(sdk("push_tokens.delete"))?;
        Ok(())
    }

    /// Every token of a user.
    pub async fn push_tokens_of(&self, uuid: UserId) -> Result<Vec<PushTokenRecord>, ApiError> {
        Ok(self.push_token_set(uuid).await?.0)
    }

    /// The user's tokens and the version of the set, from one consistent Query. The version
    /// item sorts first (`#` before any hex digit), so if a registration commits while the
    /// Query runs, either the version read is already the new one and so is every token
    /// after it, or the version is stale and the commit conditioned on it fails.
    async fn push_token_set(&self, uuid: UserId) -> Result<(Vec<PushTokenRecord>, u64), ApiError> {
        let mut tokens = Vec::new();
        let mut version = 0;
        let mut start = None;
        loop {
            let out = self
                .db
                .query()
                .table_name(&self.tables.push_tokens)
                .key_condition_expression("user_uuid = :u")
                .expression_attribute_values(":u", s(uuid))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(sdk("push_tokens.query"))?;
            for item in out.items.unwrap_or_default() {
                if item
                    .get("token_hash")
                    .and_then(|v| v.as_s().ok())
                    .map(String::as_str)
                    == Some(VERSION_KEY)
                {
                    version = item
                        .get("version")
                        .and_then(|v| v.as_n().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                } else {
                    tokens.push(from_item(item)?);
                }
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok((tokens, version));
            }
        }
    }

    /// Registers a token (or refreshes its platform and last-seen time), evicting the least
    /// recently seen tokens beyond the cap. New tokens are written in one transaction with a
    /// bump of the token set's version, so concurrent registrations cannot overfill.
    pub async fn register_push_token(
        &self,
        uuid: UserId,
        token: &str,
        platform: &str,
    ) -> Result<PushTokenRecord, ApiError> {
        let hash = token_hash(token);
        for attempt in 0..8u32 {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(
                    5 + (rand::random::<u64>() % (10 << attempt.min(4))),
                ))
                .await;
            }
            let (tokens, version) = self.push_token_set(uuid).await?;
            let now = crate::clock::iso_now();
            let now_micros = crate::clock::now_micros();
            if let Some(existing) = tokens.iter().find(|t| t.token_hash == hash) {
                let result = self
                    .db
                    .update_item()
                    .table_name(&self.tables.push_tokens)
                    .key("user_uuid", s(uuid))
                    .key("token_hash", s(&hash))
                    .update_expression(
                        "SET platform = :p, last_seen_at = :t, last_seen_micros = :m",
                    )
                    .condition_expression("attribute_exists(token_hash)")
                    .expression_attribute_values(":p", s(platform))
                    .expression_attribute_values(":t", s(&now))
                    .expression_attribute_values(":m", n(now_micros))
                    .send()
                    .await;
                match result {
                    Ok(_) => {
                        return Ok(PushTokenRecord {
                            platform: platform.to_string(),
                            last_seen_at: now,
                            last_seen_micros: now_micros,
                            ..existing.clone()
                        })
                    }
                    Err(e) if is_condition_failed(&e) => continue,
                    Err(e) => return Err(ApiError::from_sdk("push_tokens.touch", &e)),
                }
            }
            let record = PushTokenRecord {
                user_uuid: uuid,
                token_hash: hash.clone(),
                token: token.to_string(),
                platform: platform.to_string(),
                id: uuid::Uuid::new_v4().to_string(),
                created_at: now.clone(),
                last_seen_at: now,
                last_seen_micros: now_micros,
            };
            let mut by_age: Vec<&PushTokenRecord> = tokens.iter().collect();
            by_age.sort_by_key(|t| t.last_seen_micros);
            let excess = (tokens.len() + 1).saturating_sub(MAX_TOKENS_PER_USER);
            let mut items = vec![
                TransactWriteItem::builder()
                    .put(
                        Put::builder()
                            .table_name(&self.tables.push_tokens)
                            .set_item(Some(to_item(&record)?))
                            .condition_expression("attribute_not_exists(token_hash)")
                            .build()
                            .map_err(|e| super::builder_failed("push_tokens", e))?,
                    )
                    .build(),
                self.bump_push_tokens_version(uuid, version)?,
            ];
            for evicted in by_age.into_iter().take(excess) {
                items.push(
                    TransactWriteItem::builder()
                        .delete(
                            Delete::builder()
                                .table_name(&self.tables.push_tokens)
                                .key("user_uuid", s(uuid))
                                .key("token_hash", s(&evicted.token_hash))
                                .build()
                                .map_err(|e| super::builder_failed("push_tokens", e))?,
                        )
                        .build(),
                );
            }
            match self.transact("push_tokens.register", items).await? {
                super::Tx::Done => return Ok(record),
                super::Tx::Refused(_) => continue,
            }
        }
        // Persistent contention on one user's tokens: ask the client to retry.
        Err(ApiError::Throttled {
            retry_after_secs: 1,
        })
    }

    fn bump_push_tokens_version(
        &self,
        uuid: UserId,
        seen: u64,
    ) -> Result<TransactWriteItem, ApiError> {
        let update = Update::builder()
            .table_name(&self.tables.push_tokens)
            .key("user_uuid", s(uuid))
            .key("token_hash", s(VERSION_KEY))
            .update_expression("SET version = :next")
            .expression_attribute_values(":next", n(seen + 1))
            .expression_attribute_values(":seen", n(seen));
        let update = if seen == 0 {
            update.condition_expression("attribute_not_exists(version) OR version = :seen")
        } else {
            update.condition_expression("version = :seen")
        };
        Ok(TransactWriteItem::builder()
            .update(
                update
                    .build()
                    .map_err(|e| super::builder_failed("push_tokens", e))?,
            )
            .build())
    }
}
