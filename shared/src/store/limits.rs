//! The limits table: per user, the failure state of each kind of code check and the record
//! of email-change mails sent. Nothing but the check itself (or the mail it counts) writes
//! an item here, so no other route can reset a limit.
use super::{n, s, Item, Store};
use crate::email_change::MailLog;
use crate::error::ApiError;
use crate::throttle::{CodeCheck, FailureCharge, FailureState};
use crate::users::UserId;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem};
use std::collections::HashMap;

/// A failure state lives a day past its last change (the table's TTL), so an idle account's
/// count does not linger forever; a live lock is always shorter than that.
const FAILURES_KEPT_SECS: u64 = 24 * 3600;
/// The kind of the item that records email-change mails.
const EMAIL_CHANGE_MAIL: &str = "mail#email_change";

fn key(uuid: UserId, kind: &str) -> Item {
    HashMap::from([
        ("user_uuid".to_string(), s(uuid)),
        ("kind".to_string(), s(kind)),
    ])
}

/// The key of a user's failure state for one kind of check (for a BatchGetItem).
pub fn failures_key(uuid: UserId, check: CodeCheck) -> Item {
    key(uuid, check.name())
}

impl FailureState {
    pub fn from_item(item: Option<Item>) -> Result<Self, ApiError> {
        item.map(super::from_item)
            .transpose()
            .map(Option::unwrap_or_default)
    }
}

/// The condition that the failure state is still `seen` (no item counts as zero).
fn failures_unchanged(
    seen: &FailureState,
) -> (
    &'static str,
    HashMap<String, String>,
    HashMap<String, AttributeValue>,
) {
    let names = HashMap::from([("#c".to_string(), "count".to_string())]);
    if *seen == FailureState::default() {
        let values = HashMap::from([(":zero".to_string(), n(0))]);
        (
            "attribute_not_exists(kind) OR (#c = :zero AND locked_until_ms = :zero)",
            names,
            values,
        )
    } else {
        let values = HashMap::from([
            (":c".to_string(), n(seen.count)),
            (":l".to_string(), n(seen.locked_until_ms)),
        ]);
        ("#c = :c AND locked_until_ms = :l", names, values)
    }
}

/// The mail log as read (none read is an empty log).
pub(crate) fn mail_log_from_item(item: Option<Item>) -> MailLog {
    let Some(item) = item else {
        return MailLog::default();
    };
    let number = |v: &AttributeValue| v.as_n().ok().and_then(|n| n.parse::<u64>().ok());
    let sent_ms = match item.get("sent_ms") {
        Some(AttributeValue::L(list)) => list.iter().filter_map(number).collect(),
        _ => Vec::new(),
    };
    let version = item.get("version").and_then(number).unwrap_or(0);
    MailLog { sent_ms, version }
}

impl Store {
    /// Records one more failure, if the state is still `charge.seen` (compare-and-set, so
    /// every revealed result of a check is counted exactly once), together with whatever
    /// else the charge carries. False on a race: read again.
    pub async fn charge_failure(
        &self,
        uuid: UserId,
        check: CodeCheck,
        next: &FailureState,
        charge: FailureCharge,
    ) -> Result<bool, ApiError> {
        let (expression, names, values) = failures_unchanged(&charge.seen);
        let put = Put::builder()
            .table_name(&self.tables.limits)
            .item("user_uuid", s(uuid))
            .item("kind", s(check.name()))
            .item("count", n(next.count))
            .item("locked_until_ms", n(next.locked_until_ms))
            .item(
                "expires_at",
                n(crate::clock::now_secs() + FAILURES_KEPT_SECS),
            )
            .condition_expression(expression)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(|e| super::builder_failed("limits.charge", e))?;
        let mut items = vec![TransactWriteItem::builder().put(put).build()];
        items.extend(charge.also.into_iter().map(|write| write.0));
        Ok(self.transact("limits.charge", items).await?.is_done())
    }

    /// The transaction item that resets a failure state, provided it is still `seen`.
    pub fn reset_failures(
        &self,
        uuid: UserId,
        check: CodeCheck,
        seen: &FailureState,
    ) -> Result<TransactWriteItem, ApiError> {
        let (expression, names, values) = failures_unchanged(seen);
        let delete = Delete::builder()
            .table_name(&self.tables.limits)
            .set_key(Some(failures_key(uuid, check)))
            .condition_expression(expression)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(|e| super::builder_failed("limits.reset", e))?;
        Ok(TransactWriteItem::builder().delete(delete).build())
    }

    /// The transaction item that only checks a failure state is still `seen`: a success that
    /// must be counted against the state read, without resetting it (a backup code: anyone
    /// holding the account's key can mint new ones, so their use must not lift the lock).
    pub fn failures_still(
        &self,
        uuid: UserId,
        check: CodeCheck,
        seen: &FailureState,
    ) -> Result<TransactWriteItem, ApiError> {
        let (expression, names, values) = failures_unchanged(seen);
        let condition = aws_sdk_dynamodb::types::ConditionCheck::builder()
            .table_name(&self.tables.limits)
            .set_key(Some(failures_key(uuid, check)))
            .condition_expression(expression)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(|e| super::builder_failed("limits.check", e))?;
        Ok(TransactWriteItem::builder()
            .condition_check(condition)
            .build())
    }

    /// The key of a user's email-change mail log (for a BatchGetItem).
    pub(crate) fn mail_log_key(&self, uuid: UserId) -> Item {
        key(uuid, EMAIL_CHANGE_MAIL)
    }

    /// The transaction item that replaces the mail log read as `seen` with `sent_ms`
    /// (a compare-and-set on its version, so two racing requests cannot both take the last
    /// mail of the hour).
    pub(crate) fn put_mail_log(
        &self,
        uuid: UserId,
        seen: &MailLog,
        sent_ms: &[u64],
        keep_secs: u64,
    ) -> Result<TransactWriteItem, ApiError> {
        let mut put = Put::builder()
            .table_name(&self.tables.limits)
            .item("user_uuid", s(uuid))
            .item("kind", s(EMAIL_CHANGE_MAIL))
            .item(
                "sent_ms",
                AttributeValue::L(sent_ms.iter().map(n).collect()),
            )
            // A fresh version each write (not a counter: once the TTL removes the item, a
            // counter would start again at a value a stale reader may have seen).
            .item(
                "version",
                n(crate::clock::now_micros().max(seen.version + 1)),
            )
            .item("expires_at", n(crate::clock::now_secs() + keep_secs));
        put = if seen.version == 0 {
            put.condition_expression("attribute_not_exists(kind)")
        } else {
            put.condition_expression("version = :v")
                .expression_attribute_values(":v", n(seen.version))
        };
        Ok(TransactWriteItem::builder()
            .put(
                put.build()
                    .map_err(|e| super::builder_failed("limits.mail_log", e))?,
            )
            .build())
    }
}
