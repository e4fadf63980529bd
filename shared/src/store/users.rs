//! Users and the uniqueness markers of their email addresses.
use super::{from_item, is_condition_failed, n, s, sdk, to_item, Store, Tx};
use crate::error::ApiError;
use crate::users::UserId;
use crate::users::{email_key, ProfilePatch, UserRecord, UserView, ViewExtras};
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, Put, ReturnValue, TransactWriteItem, Update,
};
use std::collections::HashMap;

/// Scenes a user can personalise: PostHog has far fewer; the cap keeps the item small.
pub const MAX_SCENES: usize = 200;

/// The error for an address another account already has.
pub fn email_taken() -> ApiError {
    ApiError::validation(
        "unique",
        "There is already an account with this email address.",
        Some("email"),
    )
}

/// How a profile update touches the email address.
pub enum EmailUpdate<'a> {
    Unchanged,
    /// Open (or replace) a verification request; `email` stays as it is. The mail log read
    /// as `mail_log` becomes `sent_ms` in the same transaction (a compare-and-set), so no
    /// more than the hourly allowance of codes is ever mailed.
    Request {
        record: &'a crate::email_change::EmailChangeRecord,
        mail_log: &'a crate::email_change::MailLog,
        sent_ms: &'a [u64],
    },
    /// Change it at once (no sender configured), moving the uniqueness marker.
    Immediate {
        old: &'a str,
        new: &'a str,
    },
}

/// What a view's BatchGetItem reads besides the 2FA device and the pending email change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ViewRead {
    /// The user record is in hand already.
    OnlyTheRest,
    User,
    UserAndMailLog,
}

impl Store {
    pub async fn user(&self, uuid: UserId) -> Result<Option<UserRecord>, ApiError> {
        let out = self
            .db
            .get_item()
            .table_name(&self.tables.users)
            .key("uuid", s(uuid))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk("users.get"))?;
        out.item.map(from_item).transpose()
    }

    /// An active user with its 2FA flag and pending email, in one BatchGetItem.
    pub async fn user_view(&self, uuid: UserId) -> Result<Option<UserView>, ApiError> {
        let (user, has_totp, pending_email, _) = self.batch_view(uuid, ViewRead::User).await?;
        Ok(user.filter(|u| u.is_active).map(|user| UserView {
            has_totp,
            user,
            pending_email,
        }))
    }

    /// [`Store::user_view`] and the user's email-change mail log, in the same BatchGetItem
    /// (for a request that may mail a code).
    pub async fn user_view_and_mail_log(
        &self,
        uuid: UserId,
    ) -> Result<(Option<UserView>, crate::email_change::MailLog), ApiError> {
        let (user, has_totp, pending_email, log) =
            self.batch_view(uuid, ViewRead::UserAndMailLog).await?;
        let view = user.filter(|u| u.is_active).map(|user| UserView {
            has_totp,
            user,
            pending_email,
        });
        Ok((view, super::limits::mail_log_from_item(log)))
    }

    /// The user object's parts that live outside the users table (2FA on, the pending
    /// email), without the user's own item: a request that writes that item reads them beside
    /// the write, which they do not depend on, instead of after it.
    pub async fn view_extras(&self, uuid: UserId) -> Result<ViewExtras, ApiError> {
        let (_, has_totp, pending_email, _) = self.batch_view(uuid, ViewRead::OnlyTheRest).await?;
        Ok(ViewExtras {
            has_totp,
            pending_email,
        })
    }

    async fn batch_view(
        &self,
        uuid: UserId,
        read: ViewRead,
    ) -> Result<
        (
            Option<UserRecord>,
            bool,
            Option<String>,
            Option<super::Item>,
        ),
        ApiError,
    > {
        let mut keys = vec![
            (
                self.tables.two_factor.as_str(),
                super::two_factor::key(uuid, crate::two_factor::TOTP),
            ),
            (
                self.tables.email_changes.as_str(),
                HashMap::from([("user_uuid".to_string(), s(uuid))]),
            ),
        ];
        let with_user = read != ViewRead::OnlyTheRest;
        let with_mail_log = read == ViewRead::UserAndMailLog;
        if with_user {
            keys.push((
                self.tables.users.as_str(),
                HashMap::from([("uuid".to_string(), s(uuid))]),
            ));
        }
        if with_mail_log {
            keys.push((self.tables.limits.as_str(), self.mail_log_key(uuid)));
        }
        let mut found = self.get_many(&keys).await?.into_iter();
        let has_totp = found.next().flatten().is_some();
        let pending_email = match found.next().flatten() {
            Some(item) => from_item::<crate::email_change::EmailChangeRecord>(item)?
                .open()
                .map(|r| r.new_email),
            None => None,
        };
        let user = match with_user.then(|| found.next().flatten()).flatten() {
            Some(item) => Some(from_item::<UserRecord>(item)?),
            None => None,
        };
        let mail_log = with_mail_log.then(|| found.next().flatten()).flatten();
        Ok((user, has_totp, pending_email, mail_log))
    }

    /// Sets the dashboard of a scene, keeping when the scene was first set, in one atomic
    /// update. `None` when the user does not exist or is inactive.
    pub async fn set_scene_dashboard(
        &self,
        uuid: UserId,
        scene: &str,
        dashboard: u64,
    ) -> Result<Option<UserRecord>, ApiError> {
        let result = self
            .db
            .update_item()
            .table_name(&self.tables.users)
            .key("uuid", s(uuid))
            .update_expression("SET scene_dashboards.#scene = :d, scene_first_set.#scene = if_not_exists(scene_first_set.#scene, :now)")
            .condition_expression(
                "attribute_exists(#uuid) AND is_active = :yes \
                 AND (attribute_exists(scene_dashboards.#scene) OR size(scene_dashboards) < :max)",
            )
            .expression_attribute_names("#scene", scene)
            .expression_attribute_names("#uuid", "uuid")
            .expression_attribute_values(":d", n(dashboard))
            .expression_attribute_values(":now", n(crate::clock::now_micros()))
            .expression_attribute_values(":yes", AttributeValue::Bool(true))
            .expression_attribute_values(":max", n(MAX_SCENES))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(
                aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure::AllOld,
            )
            .send()
            .await;
        match result {
            Ok(out) => out.attributes.map(from_item).transpose(),
            Err(e) if is_condition_failed(&e) => {
                // The user is there and active: the only other way to fail is the cap.
                let old = match &e {
                    aws_sdk_dynamodb::error::SdkError::ServiceError(service) => match service.err() {
                        aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c) => {
                            c.item().cloned()
                        }
                        _ => None,
                    },
                    _ => None,
                };
                match old.map(from_item::<UserRecord>).transpose()? {
                    Some(user) if user.is_active => Err(ApiError::invalid_input(
                        format!("A user can personalise at most {MAX_SCENES} scenes."),
                        Some("scene"),
                    )),
                    _ => Ok(None),
                }
            }
            Err(e) => Err(ApiError::from_sdk("users.set_scene", &e)),
        }
    }

    /// Creates a user and claims its address, atomically; a taken address fails.
    pub async fn create_user(&self, user: &UserRecord) -> Result<(), ApiError> {
        let put_user = Put::builder()
            .table_name(&self.tables.users)
            .set_item(Some(to_item(user)?))
            .condition_expression("attribute_not_exists(#uuid)")
            .expression_attribute_names("#uuid", "uuid")
            .build()
            .map_err(|e| super::builder_failed("users", e))?;
        let items = vec![
            TransactWriteItem::builder().put(put_user).build(),
            self.claim_email(&user.email, user.uuid)?,
        ];
        match self.transact("users.create", items).await? {
            Tx::Done => Ok(()),
            Tx::Refused(_) => Err(email_taken()),
        }
    }

    /// Who owns an address, if anyone.
    /// The user whose address `email` is (compared as [`email_key`] does), if any. A marker
    /// whose owner is not a user id is refused (logged), never read as a free address.
    pub async fn email_owner(&self, email: &str) -> Result<Option<UserId>, ApiError> {
        let out = self
            .db
            .get_item()
            .table_name(&self.tables.user_emails)
            .key("email", s(email_key(email)))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk("user_emails.get"))?;
        let Some(mut item) = out.item else {
            return Ok(None);
        };
        item.remove("user_uuid")
            .as_ref()
            .and_then(|owner| owner.as_s().ok())
            .and_then(|owner| UserId::parse(owner))
            .map(Some)
            .ok_or_else(|| ApiError::internal("user_emails.get", "the owner is not a user id"))
    }

    pub(crate) fn claim_email(
        &self,
        email: &str,
        uuid: UserId,
    ) -> Result<TransactWriteItem, ApiError> {
        let put = Put::builder()
            .table_name(&self.tables.user_emails)
            .item("email", s(email_key(email)))
            .item("user_uuid", s(uuid))
            .condition_expression("attribute_not_exists(email) OR user_uuid = :me")
            .expression_attribute_values(":me", s(uuid))
            .build()
            .map_err(|e| super::builder_failed("users", e))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    pub(crate) fn release_email(
        &self,
        email: &str,
        uuid: UserId,
    ) -> Result<TransactWriteItem, ApiError> {
        let delete = Delete::builder()
            .table_name(&self.tables.user_emails)
            .key("email", s(email_key(email)))
            .condition_expression("attribute_not_exists(email) OR user_uuid = :me")
            .expression_attribute_values(":me", s(uuid))
            .build()
            .map_err(|e| super::builder_failed("users", e))?;
        Ok(TransactWriteItem::builder().delete(delete).build())
    }

    /// The update of a user's own fields (and, with `new_email`, of its address), guarded by
    /// the user being active (and still having `old_email`; with `as_read`, still having the
    /// passkey 2FA flag and a verified passkey or none, as read there).
    pub(crate) fn user_update(
        &self,
        uuid: UserId,
        patch: &ProfilePatch,
        email: Option<(&str, &str)>,
        as_read: Option<&UserRecord>,
    ) -> Result<TransactWriteItem, ApiError> {
        let mut sets = Vec::new();
        let mut update = Update::builder()
            .table_name(&self.tables.users)
            .key("uuid", s(uuid))
            .expression_attribute_names("#uuid", "uuid")
            .expression_attribute_values(":yes", AttributeValue::Bool(true));
        // The patch's fields are the record's, so their names are the attributes'.
        for (i, (field, value)) in to_item(patch)?.into_iter().enumerate() {
            sets.push(format!("#f{i} = :v{i}"));
            update = update
                .expression_attribute_names(format!("#f{i}"), field)
                .expression_attribute_values(format!(":v{i}"), value);
        }
        let mut condition = "attribute_exists(#uuid) AND is_active = :yes".to_string();
        if patch.passkeys_enabled_for_2fa == Some(true) {
            condition.push_str(" AND verified_passkeys > :no_passkeys");
            update = update.expression_attribute_values(":no_passkeys", n(0));
        }
        if let Some(seen) = as_read {
            condition.push_str(" AND ");
            condition.push_str(super::passkeys::flag_as_read(seen.passkeys_enabled_for_2fa));
            condition.push_str(if seen.verified_passkeys > 0 {
                " AND verified_passkeys > :none_verified"
            } else {
                " AND (attribute_not_exists(verified_passkeys) OR verified_passkeys <= :none_verified)"
            });
            update = update
                .expression_attribute_values(":on", AttributeValue::Bool(true))
                .expression_attribute_values(":none_verified", n(0));
        }
        if let Some((old, new)) = email {
            sets.push("email = :new_email".into());
            condition.push_str(" AND email = :old_email");
            update = update
                .expression_attribute_values(":new_email", s(new))
                .expression_attribute_values(":old_email", s(old));
        }
        if sets.is_empty() {
            // Nothing to set: still assert the user is there and active.
            let check = aws_sdk_dynamodb::types::ConditionCheck::builder()
                .table_name(&self.tables.users)
                .key("uuid", s(uuid))
                .condition_expression(condition)
                .expression_attribute_names("#uuid", "uuid")
                .expression_attribute_values(":yes", AttributeValue::Bool(true));
            let check = match as_read {
                Some(_) => check
                    .expression_attribute_values(":on", AttributeValue::Bool(true))
                    .expression_attribute_values(":none_verified", n(0)),
                None => check,
            }
            .build()
            .map_err(|e| super::builder_failed("users", e))?;
            return Ok(TransactWriteItem::builder().condition_check(check).build());
        }
        let update = update
            .update_expression(format!("SET {}", sets.join(", ")))
            .condition_expression(condition)
            .build()
            .map_err(|e| super::builder_failed("users", e))?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// Applies a profile update in one transaction: the fields, and the email change as
    /// `email` says. A concurrent claim of the new address fails with `unique`.
    pub async fn update_profile(
        &self,
        uuid: UserId,
        patch: &ProfilePatch,
        email: EmailUpdate<'_>,
        as_read: Option<&UserRecord>,
        events: &[crate::security_events::SecurityEvent],
    ) -> Result<super::Commit, ApiError> {
        let mut items = Vec::new();
        let mut email_claim_at = None;
        let mut mail_log_at = None;
        match email {
            EmailUpdate::Unchanged => items.push(self.user_update(uuid, patch, None, as_read)?),
            EmailUpdate::Request {
                record,
                mail_log,
                sent_ms,
            } => {
                items.push(self.user_update(uuid, patch, None, as_read)?);
                let put = Put::builder()
                    .table_name(&self.tables.email_changes)
                    .set_item(Some(to_item(record)?))
                    .build()
                    .map_err(|e| super::builder_failed("users.update_profile", e))?;
                items.push(TransactWriteItem::builder().put(put).build());
                mail_log_at = Some(items.len());
                items.push(self.put_mail_log(
                    uuid,
                    mail_log,
                    sent_ms,
                    crate::email_change::MAIL_LOG_KEPT_SECS,
                )?);
            }
            EmailUpdate::Immediate { old, new } => {
                items.push(self.user_update(uuid, patch, Some((old, new)), as_read)?);
                email_claim_at = Some(items.len());
                items.push(self.claim_email(new, uuid)?);
                if email_key(old) != email_key(new) {
                    items.push(self.release_email(old, uuid)?);
                }
            }
        }
        items.extend(self.event_puts(events)?);
        let failed_at = |failed: &[bool], at: Option<usize>| {
            at.and_then(|i| failed.get(i).copied()).unwrap_or(false)
        };
        match self.transact("users.update_profile", items).await? {
            Tx::Done => Ok(super::Commit::Done),
            Tx::Refused(failed) if failed_at(&failed, email_claim_at) => Err(email_taken()),
            // Another request of the same user took the mail log first: this one would have
            // been counted against the same hour; the client may simply retry.
            Tx::Refused(failed) if failed_at(&failed, mail_log_at) => Err(ApiError::Throttled {
                retry_after_secs: 1,
            }),
            // The user changed since it was read (what the records depend on): read again.
            Tx::Refused(failed) if as_read.is_some() && failed.first() == Some(&true) => {
                Ok(super::Commit::Conflict)
            }
            // The user's passkeys went meanwhile (the handler saw a verified one).
            Tx::Refused(_) if patch.passkeys_enabled_for_2fa == Some(true) => {
                Err(crate::passkeys::no_passkeys())
            }
            Tx::Refused(_) => Err(ApiError::NotFound),
        }
    }
}
