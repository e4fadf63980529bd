//! Identity links (sign-in token subject → user), and the user's own list of them.
use super::{from_item, n, s, sdk, to_item, Store, Tx};
use crate::error::ApiError;
use crate::identities::{IdentityKey, IdentityLink, LinkWrite};
use crate::security_events::SecurityEvent;
use crate::users::{UserId, UserRecord};
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};

/// A link's update when its user is deactivated, and its condition (the link still exists;
/// `#identity` names the key attribute: IDENTITY is one of DynamoDB's reserved words).
pub(super) const LINK_INACTIVE: &str = "SET user_is_active = :no";
pub(super) const LINK_EXISTS: &str = "attribute_exists(#identity)";

impl Store {
    /// The link of a token's (issuer, subject), read consistently.
    pub async fn identity_link(&self, key: &IdentityKey) -> Result<Option<IdentityLink>, ApiError> {
        let out = self
            .db
            .get_item()
            .table_name(&self.tables.identities)
            .key("identity", s(&key.0))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk("identities.get"))?;
        out.item.map(from_item).transpose()
    }

    fn put_link(&self, link: &IdentityLink) -> Result<TransactWriteItem, ApiError> {
        let put = Put::builder()
            .table_name(&self.tables.identities)
            .set_item(Some(to_item(link)?))
            .condition_expression("attribute_not_exists(#identity)")
            .expression_attribute_names("#identity", "identity")
            .build()
            .map_err(|e| super::builder_failed("identities.put", e))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// Links an identity to an existing user, provided the user is active and the identity
    /// is not linked yet, and adds it to the user's own list (which a deactivation reads), in
    /// one transaction: as with keys, no link can be added once the user is inactive. For an
    /// operator's link (no address involved).
    pub async fn link_identity(
        &self,
        link: &IdentityLink,
        event: &SecurityEvent,
    ) -> Result<LinkWrite, ApiError> {
        self.link(link, None, event).await
    }

    /// [`Store::link_identity`] at a token's first use, by the verified address `email`:
    /// the same transaction also checks that the address is still the user's, so a link is
    /// never made to someone the address left between its read and the write.
    pub async fn link_identity_by_address(
        &self,
        link: &IdentityLink,
        email: &str,
        event: &SecurityEvent,
    ) -> Result<LinkWrite, ApiError> {
        self.link(link, Some(email), event).await
    }

    /// The link (with its `identity_linked` record), and with `email` the check that the
    /// address is still the user's. The record comes last, so the items' indices below hold.
    async fn link(
        &self,
        link: &IdentityLink,
        email: Option<&str>,
        event: &SecurityEvent,
    ) -> Result<LinkWrite, ApiError> {
        use aws_sdk_dynamodb::types::ConditionCheck;
        let user = Update::builder()
            .table_name(&self.tables.users)
            .key("uuid", s(link.user_uuid))
            .update_expression("ADD identity_keys :key, keys_added :one")
            .condition_expression("is_active = :yes")
            .expression_attribute_values(":key", AttributeValue::Ss(vec![link.identity.clone()]))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":yes", AttributeValue::Bool(true))
            .build()
            .map_err(|e| super::builder_failed("identities.link", e))?;
        let mut items = vec![
            self.put_link(link)?,
            TransactWriteItem::builder().update(user).build(),
        ];
        if let Some(email) = email {
            let still_theirs = ConditionCheck::builder()
                .table_name(&self.tables.user_emails)
                .key("email", s(crate::users::email_key(email)))
                .condition_expression("user_uuid = :u")
                .expression_attribute_values(":u", s(link.user_uuid))
                .build()
                .map_err(|e| super::builder_failed("identities.link", e))?;
            items.push(
                TransactWriteItem::builder()
                    .condition_check(still_theirs)
                    .build(),
            );
        }
        items.push(self.event_put(event)?);
        Ok(match self.transact("identities.link", items).await? {
            Tx::Done => LinkWrite::Linked,
            Tx::Refused(failed) if failed.first() == Some(&true) => LinkWrite::AlreadyLinked,
            Tx::Refused(failed) if failed.get(2) == Some(&true) => LinkWrite::EmailTaken,
            Tx::Refused(_) => LinkWrite::UserInactive,
        })
    }

    /// Creates a user, claims its address and links the identity to it, in one transaction:
    /// of two first requests racing, exactly one creates the user and the link.
    pub async fn create_user_with_identity(
        &self,
        user: &UserRecord,
        link: &IdentityLink,
        event: &SecurityEvent,
    ) -> Result<LinkWrite, ApiError> {
        let mut item = to_item(user)?;
        item.insert(
            "identity_keys".into(),
            AttributeValue::Ss(vec![link.identity.clone()]),
        );
        item.insert("keys_added".into(), n(1));
        let put_user = Put::builder()
            .table_name(&self.tables.users)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#uuid)")
            .expression_attribute_names("#uuid", "uuid")
            .build()
            .map_err(|e| super::builder_failed("identities.create_user", e))?;
        let items = vec![
            self.put_link(link)?,
            TransactWriteItem::builder().put(put_user).build(),
            self.claim_email(&user.email, user.uuid)?,
            self.event_put(event)?,
        ];
        Ok(
            match self.transact("identities.create_user", items).await? {
                Tx::Done => LinkWrite::Linked,
                Tx::Refused(failed) if failed.first() == Some(&true) => LinkWrite::AlreadyLinked,
                Tx::Refused(_) => LinkWrite::EmailTaken,
            },
        )
    }

    /// Removes a link and takes it off its user's list, in one transaction (so that a first
    /// use linking the identity again cannot fall between the two and leave a link the list
    /// lacks), with the `identity_unlinked` record `event_for` makes for the link's user; the
    /// link removed, if there was one.
    pub async fn unlink_identity(
        &self,
        key: &IdentityKey,
        event_for: impl Fn(UserId) -> SecurityEvent,
    ) -> Result<Option<IdentityLink>, ApiError> {
        use aws_sdk_dynamodb::types::Delete;
        for _round in 0..3 {
            let Some(link) = self.identity_link(key).await? else {
                return Ok(None);
            };
            let delete = Delete::builder()
                .table_name(&self.tables.identities)
                .key("identity", s(&key.0))
                .condition_expression("user_uuid = :u")
                .expression_attribute_values(":u", s(link.user_uuid))
                .build()
                .map_err(|e| super::builder_failed("identities.unlink", e))?;
            let user = Update::builder()
                .table_name(&self.tables.users)
                .key("uuid", s(link.user_uuid))
                .update_expression("DELETE identity_keys :key")
                .condition_expression("attribute_exists(#uuid)")
                .expression_attribute_names("#uuid", "uuid")
                .expression_attribute_values(":key", AttributeValue::Ss(vec![key.0.clone()]))
                .build()
                .map_err(|e| super::builder_failed("identities.unlink", e))?;
            let items = vec![
                TransactWriteItem::builder().delete(delete).build(),
                TransactWriteItem::builder().update(user).build(),
                self.event_put(&event_for(link.user_uuid))?,
            ];
            match self.transact("identities.unlink", items).await? {
                Tx::Done => return Ok(Some(link)),
                // Unlinked (or linked anew) meanwhile: read it again.
                Tx::Refused(_) => continue,
            }
        }
        Err(ApiError::Unavailable)
    }

    /// Every link of a user, through the `by_user` index.
    pub async fn identities_of(&self, user: UserId) -> Result<Vec<IdentityLink>, ApiError> {
        let mut links = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .db
                .query()
                .table_name(&self.tables.identities)
                .index_name("by_user")
                .key_condition_expression("user_uuid = :u")
                .expression_attribute_values(":u", s(user))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(sdk("identities.query"))?;
            for item in out.items.unwrap_or_default() {
                links.push(from_item(item)?);
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(links);
            }
        }
    }

    /// The update that marks a link inactive, if it still exists, in a transaction.
    pub(super) fn link_inactive(&self, identity: &str) -> Result<Update, ApiError> {
        Update::builder()
            .table_name(&self.tables.identities)
            .key("identity", s(identity))
            .update_expression(LINK_INACTIVE)
            .condition_expression(LINK_EXISTS)
            .expression_attribute_names("#identity", "identity")
            .expression_attribute_values(":no", AttributeValue::Bool(false))
            .build()
            .map_err(|e| super::builder_failed("identities", e))
    }
}
