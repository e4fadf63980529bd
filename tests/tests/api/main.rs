//! The integration tests: one binary (each module a part of the API), so the fourteen functions
//! and the harness link once. Run one part with `scripts/dev test -- -E 'test(/^two_factor::/)'`.
mod admin_cli;
mod auth;
mod bodies;
mod budget;
mod cors;
mod email_change;
mod faults;
mod hardening;
mod load;
mod logs;
mod network;
mod openapi;
mod passkeys;
mod push_tokens;
mod requests;
mod routes;
mod scene;
mod security_events;
mod tls;
mod tokens;
mod two_factor;
mod users;
