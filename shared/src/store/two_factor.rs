//! The two_factor_devices table: one item per user and kind — the confirmed TOTP device, a
//! pending setup, the backup codes, and the failed-code-check state.
use super::{from_item, is_condition_failed, n, s, sdk, Item, Store};
use crate::error::ApiError;
use aws_sdk_dynamodb::types::{Delete, TransactWriteItem};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

pub const TOTP: &str = "totp";
pub const PENDING: &str = "pending";
pub const BACKUP_CODES: &str = "backup_codes";
pub const FAILURES: &str = "failures";

pub fn key(uuid: &str, kind: &str) -> Item {
    HashMap::from([
        ("user_uuid".to_string(), s(uuid)),
        ("kind".to_string(), s(kind)),
    ])
}

/// Consecutive failed code checks of a user, and until when further checks are refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureState {
    #[serde(default)]
    pub count: u32,
    #[serde(default)]
    pub locked_until: u64,
}

impl FailureState {
    pub fn from_item(item: Option<Item>) -> Result<Self, ApiError> {
        item.map(from_item)
            .transpose()
            .map(Option::unwrap_or_default)
    }
}

impl Store {
    /// Records one more failure, if the state is still `seen` (compare-and-set, so every
    /// revealed result of a check is counted exactly once). `None` on a race: read again.
    pub async fn charge_failure(
        &self,
        uuid: &str,
        seen: &FailureState,
        next: &FailureState,
    ) -> Result<Option<FailureState>, ApiError> {
        let mut request = self
            .db
            .put_item()
            .table_name(&self.tables.two_factor)
            .item("user_uuid", s(uuid))
            .item("kind", s(FAILURES))
            .item("count", n(next.count))
            .item("locked_until", n(next.locked_until));
        request = if seen.count == 0 && seen.locked_until == 0 {
            request
                .condition_expression(
                    "attribute_not_exists(kind) OR (#c = :zero AND locked_until = :zero)",
                )
                .expression_attribute_names("#c", "count")
                .expression_attribute_values(":zero", n(0))
        } else {
            request
                .condition_expression("#c = :c AND locked_until = :l")
                .expression_attribute_names("#c", "count")
                .expression_attribute_values(":c", n(seen.count))
                .expression_attribute_values(":l", n(seen.locked_until))
        };
        match request.send().await {
            Ok(_) => Ok(Some(*next)),
            Err(e) if is_condition_failed(&e) => Ok(None),
            Err(e) => Err(ApiError::from_sdk("failures.charge", &e)),
        }
    }

    /// The transaction item that resets the failure state, provided it is still `seen`.
    pub fn reset_failures(
        &self,
        uuid: &str,
        seen: &FailureState,
    ) -> Result<TransactWriteItem, ApiError> {
        let delete = Delete::builder()
            .table_name(&self.tables.two_factor)
            .set_key(Some(key(uuid, FAILURES)));
        let delete = if seen.count == 0 && seen.locked_until == 0 {
            delete
                .condition_expression(
                    "attribute_not_exists(kind) OR (#c = :zero AND locked_until = :zero)",
                )
                .expression_attribute_names("#c", "count")
                .expression_attribute_values(":zero", n(0))
        } else {
            delete
                .condition_expression("#c = :c AND locked_until = :l")
                .expression_attribute_names("#c", "count")
                .expression_attribute_values(":c", n(seen.count))
                .expression_attribute_values(":l", n(seen.locked_until))
        };
        Ok(TransactWriteItem::builder()
            .delete(delete.build().map_err(|_| ApiError::Internal)?)
            .build())
    }

    /// Removes every 2FA item of a user: device, pending setup, backup codes, failures.
    pub async fn disable_two_factor(&self, uuid: &str) -> Result<(), ApiError> {
        let items = [TOTP, PENDING, BACKUP_CODES, FAILURES]
            .into_iter()
            .map(|kind| {
                Delete::builder()
                    .table_name(&self.tables.two_factor)
                    .set_key(Some(key(uuid, kind)))
                    .build()
                    .map(|d| TransactWriteItem::builder().delete(d).build())
                    .map_err(|_| ApiError::Internal)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.db
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
            .map_err(sdk("two_factor.disable"))?;
        Ok(())
    }
}
