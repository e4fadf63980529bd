//! The two_factor_devices table: one item per user and kind — the confirmed TOTP device, a
//! pending setup, the backup codes. (The failure states of code checks live in the limits
//! table, which no 2FA route but the checks themselves touches.)
use super::{from_item, n, s, sdk, Item, Store, Tx};
use crate::error::ApiError;
use crate::throttle::{CodeCheck, FailureState};
use crate::two_factor::{
    BackupCodes, PendingSetup, StepUse, TotpDevice, TwoFactorState, BACKUP_CODES, PENDING, TOTP,
};
use crate::users::UserId;
use aws_sdk_dynamodb::types::{Delete, TransactWriteItem};
use std::collections::HashMap;

pub fn key(uuid: UserId, kind: &str) -> Item {
    HashMap::from([
        ("user_uuid".to_string(), s(uuid)),
        ("kind".to_string(), s(kind)),
    ])
}

impl Store {
    /// The user and all of its 2FA items (pending setups already expired read as none).
    pub async fn two_factor_state(&self, uuid: UserId) -> Result<TwoFactorState, ApiError> {
        self.read_two_factor_state(uuid, None).await
    }

    /// [`Store::two_factor_state`] with the failure state of one kind of code check, in the
    /// same BatchGetItem.
    pub async fn two_factor_state_for(
        &self,
        uuid: UserId,
        check: CodeCheck,
    ) -> Result<TwoFactorState, ApiError> {
        self.read_two_factor_state(uuid, Some(check)).await
    }

    async fn read_two_factor_state(
        &self,
        uuid: UserId,
        check: Option<CodeCheck>,
    ) -> Result<TwoFactorState, ApiError> {
        let table = self.tables.two_factor.as_str();
        let mut keys = vec![
            (
                self.tables.users.as_str(),
                HashMap::from([("uuid".to_string(), s(uuid))]),
            ),
            (table, key(uuid, TOTP)),
            (table, key(uuid, PENDING)),
            (table, key(uuid, BACKUP_CODES)),
        ];
        if let Some(check) = check {
            keys.push((
                self.tables.limits.as_str(),
                super::limits::failures_key(uuid, check),
            ));
        }
        let mut items = self.get_many(&keys).await?.into_iter();
        let mut next = || items.next().flatten();
        Ok(TwoFactorState {
            user: next().map(from_item).transpose()?,
            device: next().map(from_item).transpose()?,
            pending: next()
                .map(from_item::<PendingSetup>)
                .transpose()?
                .and_then(PendingSetup::open),
            backup_codes: next().map(from_item).transpose()?,
            failures: FailureState::from_item(next())?,
        })
    }

    /// Removes every 2FA item of a user: device, pending setup, backup codes. The failure
    /// states of the code checks stay: disabling 2FA must not lift a lock.
    ///
    /// The device's delete is conditioned on the device being as read: there, with `event`
    /// (the `two_factor_disabled` record), or absent without one. So of racing disables only
    /// the one that removed the device records it, and a device confirmed after the read is
    /// not removed unrecorded: both are a `Conflict`, for the caller to read again.
    pub async fn disable_two_factor(
        &self,
        uuid: UserId,
        event: Option<&crate::security_events::SecurityEvent>,
    ) -> Result<super::Commit, ApiError> {
        let mut items = [TOTP, PENDING, BACKUP_CODES]
            .into_iter()
            .map(|kind| {
                let mut delete = Delete::builder()
                    .table_name(&self.tables.two_factor)
                    .set_key(Some(key(uuid, kind)));
                if kind == TOTP {
                    delete = delete.condition_expression(if event.is_some() {
                        "attribute_exists(kind)"
                    } else {
                        "attribute_not_exists(kind)"
                    });
                }
                delete
                    .build()
                    .map(|d| TransactWriteItem::builder().delete(d).build())
                    .map_err(|e| super::builder_failed("two_factor.disable", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        items.extend(event.map(|e| self.event_put(e)).transpose()?);
        Ok(match self.transact("two_factor.disable", items).await? {
            Tx::Done => super::Commit::Done,
            Tx::Refused(_) => super::Commit::Conflict,
        })
    }
}

impl Store {
    /// Starts (or restarts) a setup, replacing any pending one.
    pub async fn put_pending_setup(&self, pending: &PendingSetup) -> Result<(), ApiError> {
        self.db
            .put_item()
            .table_name(&self.tables.two_factor)
            .set_item(Some(super::to_item(pending)?))
            .send()
            .await
            .map_err(sdk("two_factor.put_pending"))?;
        Ok(())
    }

    /// Confirms a setup in one transaction: the device is written (replacing any earlier
    /// one), the pending setup removed if it is still the one checked, the setup check's
    /// failures reset.
    pub async fn confirm_setup(
        &self,
        device: &TotpDevice,
        pending: &PendingSetup,
        failures: &FailureState,
        events: &[crate::security_events::SecurityEvent],
    ) -> Result<super::Commit, ApiError> {
        use aws_sdk_dynamodb::types::Put;
        let put = Put::builder()
            .table_name(&self.tables.two_factor)
            .set_item(Some(super::to_item(device)?))
            .build()
            .map_err(|e| super::builder_failed("two_factor.confirm", e))?;
        let delete = Delete::builder()
            .table_name(&self.tables.two_factor)
            .set_key(Some(key(device.user_uuid, PENDING)))
            .condition_expression("secret_enc = :seen")
            .expression_attribute_values(
                ":seen",
                aws_sdk_dynamodb::types::AttributeValue::B(pending.secret_enc.clone().into()),
            )
            .build()
            .map_err(|e| super::builder_failed("two_factor.confirm", e))?;
        let mut items = vec![
            TransactWriteItem::builder().put(put).build(),
            TransactWriteItem::builder().delete(delete).build(),
            self.reset_failures(device.user_uuid, CodeCheck::TotpSetup, failures)?,
        ];
        items.extend(self.event_puts(events)?);
        Ok(match self.transact("two_factor.confirm", items).await? {
            Tx::Done => super::Commit::Done,
            Tx::Refused(_) => super::Commit::Conflict,
        })
    }

    /// Records the use of a TOTP step, only if it is later than every step used before
    /// (a condition on the stored step, so racing requests cannot both use it).
    pub async fn use_totp_step(
        &self,
        uuid: UserId,
        step: u64,
        drift: i64,
        failures: &FailureState,
    ) -> Result<StepUse, ApiError> {
        use aws_sdk_dynamodb::types::Update;
        let update = Update::builder()
            .table_name(&self.tables.two_factor)
            .set_key(Some(key(uuid, TOTP)))
            .update_expression("SET last_step = :step, drift = :drift")
            .condition_expression("attribute_exists(kind) AND last_step < :step")
            .expression_attribute_values(":step", n(step))
            .expression_attribute_values(":drift", n(drift))
            .build()
            .map_err(|e| super::builder_failed("two_factor", e))?;
        let items = vec![
            TransactWriteItem::builder().update(update).build(),
            self.reset_failures(uuid, CodeCheck::SignIn, failures)?,
        ];
        Ok(match self.transact("two_factor.use_step", items).await? {
            Tx::Done => StepUse::Done,
            Tx::Refused(failed) if failed.first().copied().unwrap_or(false) => StepUse::Replayed,
            Tx::Refused(_) => StepUse::Conflict,
        })
    }

    /// Writes a user's backup codes, replacing every earlier one, provided a confirmed device
    /// exists and (with `seen_version`) the codes are still those read, and (with `failures`,
    /// for a backup code's use at sign-in) the sign-in failure state is still the one read; a
    /// backup code does not reset it. Returns false when a condition failed.
    pub async fn put_backup_codes(
        &self,
        codes: &BackupCodes,
        seen_version: Option<&str>,
        failures: Option<&FailureState>,
        events: &[crate::security_events::SecurityEvent],
    ) -> Result<bool, ApiError> {
        use aws_sdk_dynamodb::types::{ConditionCheck, Put};
        let mut put = Put::builder()
            .table_name(&self.tables.two_factor)
            .set_item(Some(super::to_item(codes)?));
        if let Some(version) = seen_version {
            put = put
                .condition_expression("version = :seen")
                .expression_attribute_values(":seen", s(version));
        }
        let device = ConditionCheck::builder()
            .table_name(&self.tables.two_factor)
            .set_key(Some(key(codes.user_uuid, TOTP)))
            .condition_expression("attribute_exists(kind)")
            .build()
            .map_err(|e| super::builder_failed("two_factor", e))?;
        let mut items = vec![
            TransactWriteItem::builder()
                .put(
                    put.build()
                        .map_err(|e| super::builder_failed("two_factor", e))?,
                )
                .build(),
            TransactWriteItem::builder().condition_check(device).build(),
        ];
        if let Some(failures) = failures {
            items.push(self.failures_still(codes.user_uuid, CodeCheck::SignIn, failures)?);
        }
        items.extend(self.event_puts(events)?);
        Ok(self.transact("two_factor.put_backup_codes", items).await? == Tx::Done)
    }
}
