//! The domain crate every function uses: configuration, routing, authentication, errors,
//! the DynamoDB store, encryption, TOTP and email.
pub mod auth;
pub mod clock;
pub mod config;
pub mod context;
pub mod crypto;
pub mod email;
pub mod email_change;
pub mod error;
pub mod fields;
pub mod http;
pub mod identities;
pub mod metrics;
pub mod passkeys;
pub mod push_tokens;
pub mod routes;
pub mod runtime;
pub mod security_events;
pub mod store;
pub mod throttle;
pub mod tokens;
pub mod two_factor;
pub mod users;

pub use context::{Call, Context};
pub use error::ApiError;
pub use lambda_http;
pub use runtime::run;

/// JSON logs, one object a line, at the level `RUST_LOG` sets (default `info`): a level, or
/// `target=level` directives separated by commas (`info,aws_smithy_runtime=debug`). This is
/// tracing-subscriber's `Targets` filter rather than `EnvFilter`, whose regex engine made up
/// about half a megabyte of every function's binary; a value it cannot read means `info`.
pub fn init_tracing() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let directives = std::env::var("RUST_LOG").unwrap_or_default();
    let mut filter = directives
        .parse::<Targets>()
        .ok()
        .filter(|_| !directives.is_empty())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    // The runtime's span per invocation only repeats the request and trace ids the request's
    // own line carries, at a cost on every request; RUST_LOG naming lambda_runtime keeps it.
    if !directives.contains("lambda_runtime") {
        filter = filter.with_target("lambda_runtime", tracing::Level::WARN);
    }
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(false)
                .with_span_list(false)
                .with_target(false)
                .with_filter(filter),
        )
        .init();
}
pub mod totp;
