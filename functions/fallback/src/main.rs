//! Needs no AWS client: it only answers with the envelope.
shared::main!(fallback, without_context);
