//! The only code that speaks DynamoDB. Items are (de)serialised with serde_dynamo; every
//! check-then-write that can race is a condition expression or a transaction.
pub mod api_keys;
pub mod email_changes;
pub mod identities;
pub mod limits;
pub mod passkeys;
pub mod push_tokens;
pub mod security_events;
pub mod two_factor;
pub mod users;

use crate::config::Tables;
use crate::error::ApiError;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;

pub type Item = HashMap<String, AttributeValue>;
pub use aws_sdk_dynamodb::Client as DynamoClient;

/// DynamoDB access for every table of the service.
#[derive(Debug, Clone)]
pub struct Store {
    pub db: Client,
    pub tables: Tables,
}

impl Store {
    pub fn new(db: Client, tables: Tables) -> Self {
        Store { db, tables }
    }
}

/// A record as the item the store writes it (tests that plant records use this, not raw maps).
pub fn to_item<T: Serialize>(value: &T) -> Result<Item, ApiError> {
    serde_dynamo::to_item(value).map_err(|e| {
        tracing::error!(error = %e, "item serialisation failed");
        ApiError::Internal
    })
}

/// A stored item as its record.
pub fn from_item<T: DeserializeOwned>(item: Item) -> Result<T, ApiError> {
    serde_dynamo::from_item(item).map_err(|e| {
        tracing::error!(error = %e, "stored item does not match its type");
        ApiError::Internal
    })
}

pub(crate) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(crate) fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// Maps an SDK failure to the API error, for operations with no expected failure.
pub(crate) fn sdk<E, R>(operation: &'static str) -> impl FnOnce(SdkError<E, R>) -> ApiError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    move |err| ApiError::from_sdk(operation, &err)
}

/// True when the failure is the item's condition expression saying no.
pub(crate) fn is_condition_failed<E, R>(err: &SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    matches!(err, SdkError::ServiceError(e) if e.err().code() == Some("ConditionalCheckFailedException"))
}

/// Logs a request builder's failure (a required field left out: a bug of ours) and maps it
/// to a 500.
pub(crate) fn builder_failed(operation: &'static str, err: impl std::fmt::Display) -> ApiError {
    tracing::error!(operation, error = %err, "request could not be built");
    ApiError::Internal
}

/// What became of a commit that raced with another request.
#[derive(Debug, PartialEq, Eq)]
pub enum Commit {
    Done,
    /// A condition saw state that changed since it was read: read again and retry.
    Conflict,
}

/// A write the store prepared for a domain decision to carry into a later transaction
/// (the domain holds it without knowing its items).
#[derive(Debug, Clone)]
pub struct PendingWrite(pub(crate) aws_sdk_dynamodb::types::TransactWriteItem);

/// How a transaction ended when it did not fail outright.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Tx {
    Done,
    /// Cancelled because conditions failed: for each item, whether its condition failed.
    Refused(Vec<bool>),
}

impl Tx {
    pub(crate) fn is_done(&self) -> bool {
        *self == Tx::Done
    }
}

/// Waits before round `round` (from 1) of a read-then-conditional-write that lost a race: a
/// few milliseconds, doubling, with jitter so that the racers spread out.
pub async fn race_backoff(round: u32) {
    let jitter = rand::random::<u64>() % (4u64 << round.min(5));
    tokio::time::sleep(std::time::Duration::from_millis(2 + jitter)).await;
}

/// Rounds a transaction is retried while it only conflicts with another one in flight.
const TX_CONFLICT_ROUNDS: u32 = 5;

impl Store {
    /// Runs a transaction. A cancellation by failed conditions is `Refused` (with which
    /// items failed), for the caller to read as a race or a rule; one that only conflicted
    /// with a concurrent transaction on the same items is retried a few times with jitter
    /// and then a 503 (retryable), never mistaken for a failed condition. An item that would
    /// exceed DynamoDB's size limit is a 400.
    pub(crate) async fn transact(
        &self,
        operation: &'static str,
        items: Vec<aws_sdk_dynamodb::types::TransactWriteItem>,
    ) -> Result<Tx, ApiError> {
        use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
        for round in 0..TX_CONFLICT_ROUNDS {
            if round > 0 {
                let jitter = rand::random::<u64>() % (10u64 << round);
                tokio::time::sleep(std::time::Duration::from_millis(5 + jitter)).await;
            }
            let result = self
                .db
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await;
            let err = match result {
                Ok(_) => return Ok(Tx::Done),
                Err(err) => err,
            };
            let reasons = match &err {
                SdkError::ServiceError(e) => match e.err() {
                    TransactWriteItemsError::TransactionCanceledException(c) => {
                        Some(c.cancellation_reasons().to_vec())
                    }
                    _ => None,
                },
                _ => None,
            };
            let Some(reasons) = reasons else {
                return Err(ApiError::from_sdk(operation, &err));
            };
            let code = |r: &aws_sdk_dynamodb::types::CancellationReason| {
                r.code().unwrap_or("None").to_string()
            };
            let too_large = |r: &aws_sdk_dynamodb::types::CancellationReason| {
                code(r) == "ValidationError"
                    && r.message()
                        .is_some_and(|m| m.to_ascii_lowercase().contains("size"))
            };
            if reasons.iter().any(too_large) {
                tracing::warn!(operation, "transaction refused: an item would be too large");
                return Err(ApiError::item_too_large());
            }
            if reasons.iter().any(|r| code(r) == "ConditionalCheckFailed") {
                return Ok(Tx::Refused(
                    reasons
                        .iter()
                        .map(|r| code(r) == "ConditionalCheckFailed")
                        .collect(),
                ));
            }
            if !reasons.iter().any(|r| code(r) == "TransactionConflict") {
                return Err(ApiError::from_sdk(operation, &err));
            }
        }
        tracing::warn!(
            operation,
            "transaction kept conflicting with concurrent ones"
        );
        Err(ApiError::Unavailable)
    }
}

impl Store {
    /// Reads several items, of any tables, in one consistent BatchGetItem (retrying what
    /// DynamoDB leaves unprocessed); the answer is in the order of `keys`.
    pub async fn get_many(&self, keys: &[(&str, Item)]) -> Result<Vec<Option<Item>>, ApiError> {
        use aws_sdk_dynamodb::types::KeysAndAttributes;
        let mut request: HashMap<String, KeysAndAttributes> = HashMap::new();
        for (table, key) in keys {
            let entry = request.remove(*table);
            let builder = KeysAndAttributes::builder()
                .consistent_read(true)
                .keys(key.clone());
            let builder = match entry {
                Some(existing) => existing.keys.into_iter().fold(builder, |b, k| b.keys(k)),
                None => builder,
            };
            request.insert(
                table.to_string(),
                builder
                    .build()
                    .map_err(|e| builder_failed("batch_get", e))?,
            );
        }
        let mut found: HashMap<String, Vec<Item>> = HashMap::new();
        let mut pending = Some(request);
        for attempt in 0..6u32 {
            let Some(req) = pending.take().filter(|r| !r.is_empty()) else {
                break;
            };
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(10 << attempt)).await;
            }
            let out = self
                .db
                .batch_get_item()
                .set_request_items(Some(req))
                .send()
                .await
                .map_err(sdk("batch_get"))?;
            for (table, items) in out.responses.unwrap_or_default() {
                found.entry(table).or_default().extend(items);
            }
            pending = out.unprocessed_keys;
        }
        if pending.is_some_and(|p| !p.is_empty()) {
            return Err(ApiError::Unavailable);
        }
        Ok(keys
            .iter()
            .map(|(table, key)| {
                found.get(*table).and_then(|items| {
                    items
                        .iter()
                        .find(|item| key.iter().all(|(k, v)| item.get(k) == Some(v)))
                        .cloned()
                })
            })
            .collect())
    }
}
