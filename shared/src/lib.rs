//! The domain crate every function uses: configuration, routing, authentication, errors,
//! the DynamoDB store, encryption, TOTP and email.
pub mod auth;
pub mod config;
pub mod context;
pub mod crypto;
pub mod email;
pub mod email_change;
pub mod error;
pub mod fields;
pub mod http;
pub mod routes;
pub mod store;
pub mod throttle;
pub mod two_factor;
pub mod users;

pub use context::{Call, Context};
pub use error::ApiError;
pub use lambda_http;

/// JSON logs, one object a line, at the level `RUST_LOG` sets (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .with_target(false)
        .init();
}
pub mod totp;
