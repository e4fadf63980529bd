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

/// JSON logs, one object a line, at the level `RUST_LOG` sets (default `info`): a level, or
/// `target=level` directives separated by commas (`info,aws_smithy_runtime=debug`). This is
/// tracing-subscriber's `Targets` filter rather than `EnvFilter`, whose regex engine made up
/// about half a megabyte of every function's binary; a value it cannot read means `info`.
pub fn init_tracing() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(false)
                .with_target(false)
                .with_filter(filter),
        )
        .init();
}
pub mod totp;
