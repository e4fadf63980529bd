//! The passkeys table (one item per user and passkey) and the passkey_ceremonies table (one
//! slot per user and purpose, holding the state of a ceremony begun and not yet completed).
//! The user item counts the user's passkeys and its verified ones, so that the routes that
//! only need to know whether passkey 2FA is in effect read nothing more than the user.
use super::{from_item, n, s, sdk, to_item, Item, PendingWrite, Store, Tx};
use crate::error::ApiError;
use crate::passkeys::{Ceremony, CeremonyPurpose, PasskeyId, PasskeyRecord, MAX_PASSKEYS};
use crate::security_events::{EventKind, SecurityEvent};
use crate::throttle::{CodeCheck, FailureState};
use crate::users::UserId;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, Put, ReturnValue, TransactWriteItem, Update,
};
use std::collections::HashMap;

fn passkey_key(uuid: UserId, id: &PasskeyId) -> Item {
    HashMap::from([
        ("user_uuid".to_string(), s(uuid)),
        ("id".to_string(), s(id.as_str())),
    ])
}

fn ceremony_key(uuid: UserId, purpose: CeremonyPurpose) -> Item {
    HashMap::from([
        ("user_uuid".to_string(), s(uuid)),
        ("purpose".to_string(), s(purpose.as_str())),
    ])
}

/// The item that claims a credential id for the passkey registered with it (its partition
/// key can never be a user's uuid).
fn claim_key(credential_id: &str) -> Item {
    HashMap::from([
        (
            "user_uuid".to_string(),
            s(format!("credential#{credential_id}")),
        ),
        ("id".to_string(), s("claim")),
    ])
}

/// How the storing of a new passkey ended.
#[derive(Debug, PartialEq, Eq)]
pub enum AddPasskey {
    Done,
    /// The user is gone, or has [`MAX_PASSKEYS`] already.
    LimitReached,
    /// The credential id is registered already (to this user or another).
    AlreadyRegistered,
}

/// How marking a passkey verified ended.
#[derive(Debug, PartialEq, Eq)]
pub enum PasskeyVerify {
    Done,
    /// The passkey went, or was verified meanwhile.
    Gone,
    /// The user's count of verified passkeys or passkey 2FA flag changed since they were read
    /// (what the records depend on), or the user is gone or inactive: read again.
    UserChanged,
}

/// How the use of a passkey at sign-in ended.
#[derive(Debug, PartialEq, Eq)]
pub enum PasskeyUse {
    Done,
    /// The passkey is gone, no longer verified, or its counter did not move forward.
    Refused,
    /// The ceremony was used up meanwhile (by a racing answer).
    CeremonyGone,
    /// The failure state changed since it was read: read again.
    Conflict,
}

impl Store {
    /// Starts a ceremony, replacing any earlier one of the same purpose (a user has at most
    /// one of each in flight, so begun ceremonies cannot pile up).
    pub async fn put_ceremony(&self, ceremony: &Ceremony) -> Result<(), ApiError> {
        self.db
            .put_item()
            .table_name(&self.tables.passkey_ceremonies)
            .set_item(Some(to_item(ceremony)?))
            .send()
            .await
            .map_err(sdk("passkey_ceremonies.put"))?;
        Ok(())
    }

    /// Takes a ceremony out of its slot, if it is the one `challenge` answers: a conditional
    /// delete that only one of any number of racing requests wins, none once it has expired,
    /// and none with an answer to an older or another ceremony (which leaves it in place).
    /// `None`: no such ceremony to complete.
    pub async fn take_ceremony(
        &self,
        uuid: UserId,
        purpose: CeremonyPurpose,
        challenge: &str,
    ) -> Result<Option<Ceremony>, ApiError> {
        let result = self
            .db
            .delete_item()
            .table_name(&self.tables.passkey_ceremonies)
            .set_key(Some(ceremony_key(uuid, purpose)))
            .condition_expression(
                "attribute_exists(purpose) AND expires_at > :now AND challenge = :challenge",
            )
            .expression_attribute_values(":now", n(crate::clock::now_secs()))
            .expression_attribute_values(":challenge", s(challenge))
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => out.attributes.map(from_item).transpose(),
            Err(err) if super::is_condition_failed(&err) => Ok(None),
            Err(err) => Err(ApiError::from_sdk("passkey_ceremonies.take", &err)),
        }
    }

    /// The ceremony in a user's slot, unless it has expired (read, not taken: the sign-in
    /// check takes it in the same transaction as the answer's outcome, [`Store::ceremony_use`]).
    pub async fn ceremony(
        &self,
        uuid: UserId,
        purpose: CeremonyPurpose,
    ) -> Result<Option<Ceremony>, ApiError> {
        let out = self
            .db
            .get_item()
            .table_name(&self.tables.passkey_ceremonies)
            .set_key(Some(ceremony_key(uuid, purpose)))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk("passkey_ceremonies.get"))?;
        let ceremony: Option<Ceremony> = out.item.map(from_item).transpose()?;
        Ok(ceremony.filter(|c| c.expires_at > crate::clock::now_secs()))
    }

    /// The write that uses a ceremony up, provided it is still in its slot: for a transaction
    /// that also records what its answer came to, so that of racing answers one is recorded.
    pub fn ceremony_use(&self, ceremony: &Ceremony) -> Result<PendingWrite, ApiError> {
        let delete = Delete::builder()
            .table_name(&self.tables.passkey_ceremonies)
            .set_key(Some(ceremony_key(ceremony.user_uuid, ceremony.purpose()?)))
            .condition_expression("challenge = :challenge")
            .expression_attribute_values(":challenge", s(&ceremony.challenge))
            .build()
            .map_err(|e| super::builder_failed("passkey_ceremonies.use", e))?;
        Ok(PendingWrite(
            TransactWriteItem::builder().delete(delete).build(),
        ))
    }

    /// Every passkey of a user, oldest first (a user has at most [`MAX_PASSKEYS`], which one
    /// page holds; a further page is read all the same).
    pub async fn passkeys_of(&self, uuid: UserId) -> Result<Vec<PasskeyRecord>, ApiError> {
        let mut passkeys = Vec::new();
        let mut from = None;
        loop {
            let out = self
                .db
                .query()
                .table_name(&self.tables.passkeys)
                .key_condition_expression("user_uuid = :user")
                .expression_attribute_values(":user", s(uuid))
                .consistent_read(true)
                .set_exclusive_start_key(from)
                .send()
                .await
                .map_err(sdk("passkeys.query"))?;
            for item in out.items.unwrap_or_default() {
                passkeys.push(from_item::<PasskeyRecord>(item)?);
            }
            from = out.last_evaluated_key;
            if from.is_none() {
                break;
            }
        }
        passkeys.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        Ok(passkeys)
    }

    /// One passkey of a user; another user's is as absent as one that never was.
    pub async fn passkey(
        &self,
        uuid: UserId,
        id: &PasskeyId,
    ) -> Result<Option<PasskeyRecord>, ApiError> {
        let out = self
            .db
            .get_item()
            .table_name(&self.tables.passkeys)
            .set_key(Some(passkey_key(uuid, id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk("passkeys.get"))?;
        out.item.map(from_item).transpose()
    }

    /// Stores a newly registered (not yet verified) passkey, counted on the active user's
    /// item and refused beyond [`MAX_PASSKEYS`], with the claim of its credential id (a
    /// credential registered once, to anyone, is not registered again), in one transaction.
    pub async fn add_passkey(
        &self,
        passkey: &PasskeyRecord,
        events: &[SecurityEvent],
    ) -> Result<AddPasskey, ApiError> {
        let put = Put::builder()
            .table_name(&self.tables.passkeys)
            .set_item(Some(to_item(passkey)?))
            .condition_expression("attribute_not_exists(id)")
            .build()
            .map_err(|e| super::builder_failed("passkeys.add", e))?;
        let count = Update::builder()
            .table_name(&self.tables.users)
            .key("uuid", s(passkey.user_uuid))
            .update_expression("ADD passkey_count :one")
            .condition_expression(
                "attribute_exists(#uuid) AND is_active = :yes \
                 AND (attribute_not_exists(passkey_count) OR passkey_count < :max)",
            )
            .expression_attribute_names("#uuid", "uuid")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":yes", AttributeValue::Bool(true))
            .expression_attribute_values(":max", n(MAX_PASSKEYS))
            .build()
            .map_err(|e| super::builder_failed("passkeys.add", e))?;
        let claim = Put::builder()
            .table_name(&self.tables.passkeys)
            .set_item(Some(claim_key(&passkey.credential_id)))
            .item("owner", s(passkey.user_uuid))
            .condition_expression("attribute_not_exists(id)")
            .build()
            .map_err(|e| super::builder_failed("passkeys.add", e))?;
        let mut items = vec![
            TransactWriteItem::builder().put(put).build(),
            TransactWriteItem::builder().update(count).build(),
            TransactWriteItem::builder().put(claim).build(),
        ];
        items.extend(self.event_puts(events)?);
        Ok(match self.transact("passkeys.add", items).await? {
            Tx::Done => AddPasskey::Done,
            Tx::Refused(failed) if failed.get(2).copied().unwrap_or(false) => {
                AddPasskey::AlreadyRegistered
            }
            Tx::Refused(_) => AddPasskey::LimitReached,
        })
    }

    /// Renames a passkey; false when the user has no such passkey.
    pub async fn rename_passkey(
        &self,
        uuid: UserId,
        id: &PasskeyId,
        label: &str,
    ) -> Result<bool, ApiError> {
        let result = self
            .db
            .update_item()
            .table_name(&self.tables.passkeys)
            .set_key(Some(passkey_key(uuid, id)))
            .update_expression("SET label = :label")
            .condition_expression("attribute_exists(id)")
            .expression_attribute_values(":label", s(label))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(err) if super::is_condition_failed(&err) => Ok(false),
            Err(err) => Err(ApiError::from_sdk("passkeys.rename", &err)),
        }
    }

    /// Marks a passkey verified after an assertion proved it, with its credential as that
    /// assertion left it; counted on the user in the same transaction. False when the passkey
    /// is gone or was verified meanwhile.
    pub async fn mark_passkey_verified(
        &self,
        passkey: &PasskeyRecord,
        used_at: &str,
        seen: &crate::users::UserRecord,
        events: &[SecurityEvent],
    ) -> Result<PasskeyVerify, ApiError> {
        let update = Update::builder()
            .table_name(&self.tables.passkeys)
            .set_key(Some(passkey_key(passkey.user_uuid, &passkey.id)))
            .update_expression(
                "SET verified = :yes, sign_count = :count, credential = :credential, \
                 last_used_at = :used",
            )
            .condition_expression("attribute_exists(id) AND verified = :no")
            .expression_attribute_values(":yes", AttributeValue::Bool(true))
            .expression_attribute_values(":no", AttributeValue::Bool(false))
            .expression_attribute_values(":count", n(passkey.sign_count))
            .expression_attribute_values(":credential", s(&passkey.credential))
            .expression_attribute_values(":used", s(used_at))
            .build()
            .map_err(|e| super::builder_failed("passkeys.verify", e))?;
        let mut items = vec![
            TransactWriteItem::builder().update(update).build(),
            self.count_verified_as_read(passkey.user_uuid, 1, seen)?,
        ];
        items.extend(self.event_puts(events)?);
        Ok(match self.transact("passkeys.verify", items).await? {
            Tx::Done => PasskeyVerify::Done,
            Tx::Refused(failed) if failed.first().copied().unwrap_or(false) => PasskeyVerify::Gone,
            Tx::Refused(_) => PasskeyVerify::UserChanged,
        })
    }

    /// Deletes a passkey, provided it is still as read (verified or not, which decides what
    /// is taken off the user's counts) and the user's count of verified passkeys is still
    /// `verified_seen` (what the notices are decided on). False when either changed, or the
    /// passkey went, meanwhile.
    pub async fn delete_passkey(
        &self,
        passkey: &PasskeyRecord,
        seen: &crate::users::UserRecord,
        events: &[SecurityEvent],
    ) -> Result<bool, ApiError> {
        let verified_seen = seen.verified_passkeys;
        let delete = Delete::builder()
            .table_name(&self.tables.passkeys)
            .set_key(Some(passkey_key(passkey.user_uuid, &passkey.id)))
            .condition_expression("attribute_exists(id) AND verified = :seen")
            .expression_attribute_values(":seen", AttributeValue::Bool(passkey.verified))
            .build()
            .map_err(|e| super::builder_failed("passkeys.delete", e))?;
        let verified = if passkey.verified { 1 } else { 0 };
        let counts = Update::builder()
            .table_name(&self.tables.users)
            .key("uuid", s(passkey.user_uuid))
            .update_expression("ADD passkey_count :all, verified_passkeys :verified")
            // The count and the passkey 2FA flag as read, on which the records depend.
            .condition_expression(format!(
                "attribute_exists(#uuid) AND (verified_passkeys = :seen \
                 OR (attribute_not_exists(verified_passkeys) AND :seen = :zero)) AND {}",
                flag_as_read(seen.passkeys_enabled_for_2fa)
            ))
            .expression_attribute_names("#uuid", "uuid")
            .expression_attribute_values(":on", AttributeValue::Bool(true))
            .expression_attribute_values(":all", n(-1))
            .expression_attribute_values(":verified", n(-verified))
            .expression_attribute_values(":seen", n(verified_seen))
            .expression_attribute_values(":zero", n(0))
            .build()
            .map_err(|e| super::builder_failed("passkeys.delete", e))?;
        let claim = Delete::builder()
            .table_name(&self.tables.passkeys)
            .set_key(Some(claim_key(&passkey.credential_id)))
            .condition_expression("#owner = :me")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":me", s(passkey.user_uuid))
            .build()
            .map_err(|e| super::builder_failed("passkeys.delete", e))?;
        let mut items = vec![
            TransactWriteItem::builder().delete(delete).build(),
            TransactWriteItem::builder().update(counts).build(),
            TransactWriteItem::builder().delete(claim).build(),
        ];
        items.extend(self.event_puts(events)?);
        Ok(self.transact("passkeys.delete", items).await?.is_done())
    }

    /// Records a passkey's use at sign-in, with the use of its ceremony (`ceremony_use`): its
    /// new signature counter, which must be above the stored one unless both are 0 (a synced
    /// passkey always reports 0), on a passkey still there and verified; provided the sign-in
    /// failure state is still the one read.
    /// It does not reset that state: whoever holds the account's key can enrol a passkey (as
    /// they can mint backup codes), so its use must not lift a lock on the other factors.
    pub async fn use_passkey(
        &self,
        passkey: &PasskeyRecord,
        used_at: &str,
        failures: &FailureState,
        ceremony_use: PendingWrite,
    ) -> Result<PasskeyUse, ApiError> {
        let update = Update::builder()
            .table_name(&self.tables.passkeys)
            .set_key(Some(passkey_key(passkey.user_uuid, &passkey.id)))
            .update_expression(
                "SET sign_count = :count, credential = :credential, last_used_at = :used",
            )
            .condition_expression(
                "attribute_exists(id) AND verified = :yes \
                 AND (sign_count < :count OR (sign_count = :zero AND :count = :zero))",
            )
            .expression_attribute_values(":yes", AttributeValue::Bool(true))
            .expression_attribute_values(":count", n(passkey.sign_count))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":credential", s(&passkey.credential))
            .expression_attribute_values(":used", s(used_at))
            .build()
            .map_err(|e| super::builder_failed("passkeys.use", e))?;
        let items = vec![
            TransactWriteItem::builder().update(update).build(),
            self.failures_still(passkey.user_uuid, CodeCheck::SignIn, failures)?,
            ceremony_use.0,
        ];
        let failed = |failed: &[bool], i: usize| failed.get(i).copied().unwrap_or(false);
        Ok(match self.transact("passkeys.use", items).await? {
            Tx::Done => PasskeyUse::Done,
            // Another answer to the same challenge was recorded first.
            Tx::Refused(f) if failed(&f, 2) => PasskeyUse::CeremonyGone,
            Tx::Refused(f) if failed(&f, 0) => PasskeyUse::Refused,
            Tx::Refused(_) => PasskeyUse::Conflict,
        })
    }

    /// Removes every passkey of a user and turns passkey 2FA off (the operator's recovery of
    /// an account whose passkeys are lost or were enrolled by someone else): each passkey by
    /// [`Store::delete_passkey`], read again after a race, each with its `passkey_removed`
    /// record by `actor`, kept `retention_days`. The passkeys removed.
    pub async fn remove_all_passkeys(
        &self,
        uuid: UserId,
        actor: &crate::security_events::Actor,
        retention_days: u64,
    ) -> Result<usize, ApiError> {
        let (mut removed, mut lost) = (0, 0);
        for _ in 0..(3 * MAX_PASSKEYS) {
            if lost > 0 {
                super::race_backoff(lost).await;
            }
            let (user, passkeys) = tokio::join!(self.user(uuid), self.passkeys_of(uuid));
            let user = user?.ok_or(ApiError::NotFound)?;
            let Some(passkey) = passkeys?.into_iter().next() else {
                self.db
                    .update_item()
                    .table_name(&self.tables.users)
                    .key("uuid", s(uuid))
                    .update_expression("SET passkeys_enabled_for_2fa = :no")
                    .condition_expression("attribute_exists(#uuid)")
                    .expression_attribute_names("#uuid", "uuid")
                    .expression_attribute_values(":no", AttributeValue::Bool(false))
                    .send()
                    .await
                    .map_err(sdk("users.passkeys_off"))?;
                return Ok(removed);
            };
            let mut events =
                vec![
                    SecurityEvent::new(uuid, EventKind::PasskeyRemoved, actor, retention_days)
                        .with_detail(passkey.id.as_str()),
                ];
            // The last verified passkey takes passkey 2FA with it, as a user's own delete does.
            if passkey.verified && user.verified_passkeys == 1 && user.passkeys_enabled_for_2fa {
                events.push(
                    SecurityEvent::new(uuid, EventKind::TwoFactorDisabled, actor, retention_days)
                        .with_detail("passkey"),
                );
            }
            if self.delete_passkey(&passkey, &user, &events).await? {
                (removed, lost) = (removed + 1, 0);
            } else {
                lost += 1;
            }
        }
        Err(ApiError::Unavailable)
    }

    /// The transaction item that adds `by` to the user's count of verified passkeys; with
    /// `seen`, provided the count and the passkey 2FA flag are still as read there.
    fn count_verified_as_read(
        &self,
        uuid: UserId,
        by: i64,
        seen: &crate::users::UserRecord,
    ) -> Result<TransactWriteItem, ApiError> {
        let update = Update::builder()
            .table_name(&self.tables.users)
            .key("uuid", s(uuid))
            .update_expression("ADD verified_passkeys :by")
            .condition_expression(format!(
                "attribute_exists(#uuid) AND is_active = :on AND (verified_passkeys = :seen \
                 OR (attribute_not_exists(verified_passkeys) AND :seen = :zero)) AND {}",
                flag_as_read(seen.passkeys_enabled_for_2fa)
            ))
            .expression_attribute_names("#uuid", "uuid")
            .expression_attribute_values(":by", n(by))
            .expression_attribute_values(":on", AttributeValue::Bool(true))
            .expression_attribute_values(":seen", n(seen.verified_passkeys))
            .expression_attribute_values(":zero", n(0))
            .build()
            .map_err(|e| super::builder_failed("users.count_verified", e))?;
        Ok(TransactWriteItem::builder().update(update).build())
    }
}

/// The condition that the user's `passkeys_enabled_for_2fa` is still `seen` (absent reads as
/// off); it names the value `:on` (true).
pub(crate) fn flag_as_read(seen: bool) -> &'static str {
    if seen {
        "passkeys_enabled_for_2fa = :on"
    } else {
        "(attribute_not_exists(passkeys_enabled_for_2fa) OR passkeys_enabled_for_2fa <> :on)"
    }
}
