//! Open email-change requests: the new address and a hash of its verification code.
use super::{from_item, n, s, Commit, Store, Tx};
use crate::email_change::EmailChangeRecord;
use crate::error::ApiError;
use crate::throttle::{CodeCheck, FailureState};
use crate::users::UserId;
use crate::users::UserRecord;
use aws_sdk_dynamodb::types::{Delete, TransactWriteItem, Update};

impl Store {
    /// Deletes the request if one is open (not expired), with `event` in the same
    /// transaction; false when none was open (an expired one is left to the table's TTL).
    pub async fn cancel_email_change(
        &self,
        uuid: UserId,
        event: &crate::security_events::SecurityEvent,
    ) -> Result<bool, ApiError> {
        let delete = Delete::builder()
            .table_name(&self.tables.email_changes)
            .key("user_uuid", s(uuid))
            .condition_expression("attribute_exists(user_uuid) AND expires_at > :now")
            .expression_attribute_values(":now", n(crate::clock::now_secs()))
            .build()
            .map_err(|e| super::builder_failed("email_changes.cancel", e))?;
        let items = vec![
            TransactWriteItem::builder().delete(delete).build(),
            self.event_put(event)?,
        ];
        Ok(self
            .transact("email_changes.cancel", items)
            .await?
            .is_done())
    }

    /// The change a wrong code makes to the request it was tried against, in the same
    /// write as the failure charge: one more wrong code counted, or, at the last one allowed,
    /// the request removed (a new code must be requested). Conditioned on the request still
    /// being the one read, so racing guesses are each counted.
    pub fn charge_with_wrong_code(
        &self,
        seen: FailureState,
        request: &EmailChangeRecord,
    ) -> Result<Box<crate::throttle::FailureCharge>, ApiError> {
        Ok(Box::new(crate::throttle::FailureCharge {
            seen,
            also: vec![super::PendingWrite(self.count_wrong_code(request)?)],
        }))
    }

    fn count_wrong_code(&self, request: &EmailChangeRecord) -> Result<TransactWriteItem, ApiError> {
        let wrong = request.wrong_codes.saturating_add(1);
        if wrong >= crate::email_change::MAX_WRONG_CODES_PER_REQUEST {
            let delete = Delete::builder()
                .table_name(&self.tables.email_changes)
                .key("user_uuid", s(request.user_uuid))
                .condition_expression("request_id = :rid")
                .expression_attribute_values(":rid", s(&request.request_id))
                .build()
                .map_err(|e| super::builder_failed("email_changes.void", e))?;
            return Ok(TransactWriteItem::builder().delete(delete).build());
        }
        let update = Update::builder()
            .table_name(&self.tables.email_changes)
            .key("user_uuid", s(request.user_uuid))
            .update_expression("SET wrong_codes = :wrong")
            .condition_expression(
                "request_id = :rid AND (attribute_not_exists(wrong_codes) OR wrong_codes = :seen)",
            )
            .expression_attribute_values(":rid", s(&request.request_id))
            .expression_attribute_values(":seen", n(request.wrong_codes))
            .expression_attribute_values(":wrong", n(wrong))
            .build()
            .map_err(|e| super::builder_failed("email_changes.count_wrong", e))?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// Completes a verified request in one transaction: the user's address changes (if it is
    /// still the one read), the new address is claimed, the old released, the request (if it
    /// is still the one checked) and the email-change check's failure count removed.
    pub async fn complete_email_change(
        &self,
        user: &UserRecord,
        request: &EmailChangeRecord,
        failures: &FailureState,
        events: &[crate::security_events::SecurityEvent],
    ) -> Result<Commit, ApiError> {
        let verified = crate::users::ProfilePatch {
            is_email_verified: Some(true),
            ..Default::default()
        };
        let delete_request = Delete::builder()
            .table_name(&self.tables.email_changes)
            .key("user_uuid", s(user.uuid))
            .condition_expression("code_hash = :h AND request_id = :rid")
            .expression_attribute_values(":h", s(&request.code_hash))
            .expression_attribute_values(":rid", s(&request.request_id))
            .build()
            .map_err(|e| super::builder_failed("email_changes.complete", e))?;
        let mut items = vec![
            self.user_update(
                user.uuid,
                &verified,
                Some((&user.email, &request.new_email)),
                None,
            )?,
            self.claim_email(&request.new_email, user.uuid)?,
            TransactWriteItem::builder().delete(delete_request).build(),
            self.reset_failures(user.uuid, CodeCheck::EmailChange, failures)?,
        ];
        if crate::users::email_key(&user.email) != crate::users::email_key(&request.new_email) {
            items.push(self.release_email(&user.email, user.uuid)?);
        }
        items.extend(self.event_puts(events)?);
        match self.transact("email_changes.complete", items).await? {
            Tx::Done => Ok(Commit::Done),
            Tx::Refused(failed) if failed.get(1).copied().unwrap_or(false) => {
                Err(super::users::email_taken())
            }
            Tx::Refused(_) => Ok(Commit::Conflict),
        }
    }

    /// The user, their open email-change request and the email-change check's failure
    /// state, in one BatchGetItem.
    pub async fn email_change_state(
        &self,
        uuid: UserId,
    ) -> Result<(Option<UserRecord>, Option<EmailChangeRecord>, FailureState), ApiError> {
        use std::collections::HashMap;
        let keys = [
            (
                self.tables.users.as_str(),
                HashMap::from([("uuid".to_string(), s(uuid))]),
            ),
            (
                self.tables.email_changes.as_str(),
                HashMap::from([("user_uuid".to_string(), s(uuid))]),
            ),
            (
                self.tables.limits.as_str(),
                super::limits::failures_key(uuid, CodeCheck::EmailChange),
            ),
        ];
        let mut items = self.get_many(&keys).await?.into_iter();
        let user = items.next().flatten().map(from_item).transpose()?;
        let request = items
            .next()
            .flatten()
            .map(from_item::<EmailChangeRecord>)
            .transpose()?
            .and_then(EmailChangeRecord::open);
        let failures = FailureState::from_item(items.next().flatten())?;
        Ok((user, request, failures))
    }
}
