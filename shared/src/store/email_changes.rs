//! Open email-change requests: the new address and a hash of its verification code.
use super::{cancelled_conditions, from_item, s, sdk, Store};
use crate::error::ApiError;
use crate::store::two_factor::FailureState;
use crate::users::UserRecord;
use aws_sdk_dynamodb::types::{Delete, ReturnValue, TransactWriteItem};
use serde::{Deserialize, Serialize};

/// Requests live this long.
pub const EMAIL_CHANGE_TTL_SECS: u64 = 24 * 3600;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EmailChangeRecord {
    pub user_uuid: String,
    pub new_email: String,
    /// SHA-256 of request id and code; the code itself is never stored.
    pub code_hash: String,
    pub request_id: String,
    pub requested_at: String,
    /// Epoch seconds; also the table's TTL attribute. DynamoDB deletes lazily, so reads check it.
    pub expires_at: u64,
}

impl EmailChangeRecord {
    /// The request if it has not expired.
    pub fn open(self) -> Option<Self> {
        (self.expires_at > super::now_secs()).then_some(self)
    }
}

/// What became of a commit that raced with another request.
#[derive(Debug, PartialEq, Eq)]
pub enum Commit {
    Done,
    /// A condition saw state that changed since it was read: read again and retry.
    Conflict,
}

impl Store {
    /// Deletes the request and returns it, if one was open.
    pub async fn cancel_email_change(
        &self,
        uuid: &str,
    ) -> Result<Option<EmailChangeRecord>, ApiError> {
        let out = self
            .db
            .delete_item()
            .table_name(&self.tables.email_changes)
            .key("user_uuid", s(uuid))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(sdk("email_changes.delete"))?;
        Ok(out
            .attributes
            .map(from_item::<EmailChangeRecord>)
            .transpose()?
            .and_then(EmailChangeRecord::open))
    }

    /// Completes a verified request in one transaction: the user's address changes (if it is
    /// still the one read), the new address is claimed, the old released, the request (if it
    /// is still the one checked) and the failure count removed.
    pub async fn complete_email_change(
        &self,
        user: &UserRecord,
        request: &EmailChangeRecord,
        failures: &FailureState,
    ) -> Result<Commit, ApiError> {
        let mut changes = serde_json::Map::new();
        changes.insert("is_email_verified".into(), serde_json::Value::Bool(true));
        let delete_request = Delete::builder()
            .table_name(&self.tables.email_changes)
            .key("user_uuid", s(&user.uuid))
            .condition_expression("code_hash = :h")
            .expression_attribute_values(":h", s(&request.code_hash))
            .build()
            .map_err(|_| ApiError::Internal)?;
        let mut items = vec![
            self.user_update(
                &user.uuid,
                &changes,
                Some((&user.email, &request.new_email)),
            )?,
            self.claim_email(&request.new_email, &user.uuid)?,
            TransactWriteItem::builder().delete(delete_request).build(),
            self.reset_failures(&user.uuid, failures)?,
        ];
        if crate::users::email_key(&user.email) != crate::users::email_key(&request.new_email) {
            items.push(self.release_email(&user.email, &user.uuid)?);
        }
        let result = self
            .db
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        match result {
            Ok(_) => Ok(Commit::Done),
            Err(e) => match cancelled_conditions(&e) {
                Some(failed) if failed.get(1).copied().unwrap_or(false) => {
                    Err(super::users::email_taken())
                }
                Some(_) => Ok(Commit::Conflict),
                None => Err(ApiError::from_sdk("email_changes.complete", &e)),
            },
        }
    }
}
