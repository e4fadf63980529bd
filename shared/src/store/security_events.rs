//! The security events table: a user's audit records, newest last in the sort key.
use super::{from_item, s, sdk, PendingWrite, Store};
use crate::error::ApiError;
use crate::security_events::{Cursor, SecurityEvent};
use crate::users::UserId;
use aws_sdk_dynamodb::types::{Put, TransactWriteItem};

impl Store {
    /// The transaction item that writes `event` (never over another record).
    pub(crate) fn event_put(&self, event: &SecurityEvent) -> Result<TransactWriteItem, ApiError> {
        let put = Put::builder()
            .table_name(&self.tables.security_events)
            .set_item(Some(super::to_item(event)?))
            .condition_expression("attribute_not_exists(sk)")
            .build()
            .map_err(|e| super::builder_failed("security_events.put", e))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// The transaction items that write `events`, to append to a change's own items (after
    /// them, so the change's item indices in a cancellation stay as they were).
    pub(crate) fn event_puts(
        &self,
        events: &[SecurityEvent],
    ) -> Result<Vec<TransactWriteItem>, ApiError> {
        events.iter().map(|e| self.event_put(e)).collect()
    }

    /// `event` as a write for the domain to carry into a later transaction.
    pub fn security_event_write(&self, event: &SecurityEvent) -> Result<PendingWrite, ApiError> {
        self.event_put(event).map(PendingWrite)
    }

    /// Writes one record on its own: for a change that is not itself a transaction (an
    /// operator's single delete).
    pub async fn put_security_event(&self, event: &SecurityEvent) -> Result<(), ApiError> {
        self.db
            .put_item()
            .table_name(&self.tables.security_events)
            .set_item(Some(super::to_item(event)?))
            .condition_expression("attribute_not_exists(sk)")
            .send()
            .await
            .map_err(sdk("security_events.put"))?;
        Ok(())
    }

    /// Up to `limit` of a user's records, newest first, after `after` (the last record of the
    /// page before); and the cursor of the next page when there may be one. Records past
    /// their TTL that DynamoDB has not removed yet are left out.
    pub async fn security_events_page(
        &self,
        uuid: UserId,
        limit: usize,
        after: Option<&Cursor>,
    ) -> Result<(Vec<SecurityEvent>, Option<Cursor>), ApiError> {
        let mut query = self
            .db
            .query()
            .table_name(&self.tables.security_events)
            .key_condition_expression("user_uuid = :u")
            .filter_expression("expires_at > :now")
            .expression_attribute_values(":u", s(uuid))
            .expression_attribute_values(":now", super::n(crate::clock::now_secs()))
            .scan_index_forward(false)
            .limit(limit as i32);
        if let Some(cursor) = after {
            query = query
                .exclusive_start_key("user_uuid", s(uuid))
                .exclusive_start_key("sk", s(&cursor.0));
        }
        let out = query.send().await.map_err(sdk("security_events.query"))?;
        let events = out
            .items
            .unwrap_or_default()
            .into_iter()
            .map(from_item::<SecurityEvent>)
            .collect::<Result<Vec<_>, _>>()?;
        let next = out
            .last_evaluated_key
            .and_then(|key| key.get("sk").and_then(|v| v.as_s().ok()).cloned())
            .map(Cursor);
        Ok((events, next))
    }
}
