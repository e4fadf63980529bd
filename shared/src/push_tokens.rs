//! Push tokens of mobile and web clients, at most 20 per user.
use crate::auth::hex;
use crate::users::UserId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A user keeps at most this many tokens; registering one more evicts the least recently seen.
pub const MAX_TOKENS_PER_USER: usize = 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PushTokenRecord {
    pub user_uuid: UserId,
    /// Sort key: hex SHA-256 of the token, so a 512-character token of any script fits
    /// DynamoDB's 1 KiB sort-key limit.
    pub token_hash: String,
    pub token: String,
    pub platform: String,
    pub id: String,
    pub created_at: String,
    pub last_seen_at: String,
    /// µs since the epoch, to find the least recently seen token.
    pub last_seen_micros: u64,
}

/// The sort key of a token: its hex SHA-256.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}
