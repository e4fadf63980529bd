//! Metrics without a metrics call: each request ends with one line in CloudWatch Embedded
//! Metric Format (EMF) on stdout, which CloudWatch Logs turns into metrics as it ingests the
//! function's log. No PutMetricData, so no network call, no latency and no IAM grant.
//!
//! Namespace: `METRICS_NAMESPACE` (the stack's `NamePrefix`; `posthog-users` when unset).
//! Metrics, and their dimension sets:
//! - `Requests` (Count) by `Function`, `StatusClass` (`2xx`, `4xx`, `5xx`);
//! - `Latency` (Milliseconds) by `Function`;
//! - `AuthFailures` (Count) by `Reason`, on a request whose credential was missing or refused
//!   (not also by function: each published combination is a custom metric, billed monthly);
//! - `CodeCheckFailures` and `Locks` (Count), with no dimension and by `Function`, on a request
//!   that charged a failed code check (and whose failure locked the check).
//!
//! Template.yaml's alarms and dashboard read these names; a line carries the request id for
//! finding the request's own log line, and nothing else of the request.
use std::cell::RefCell;
use std::future::Future;

/// What a request counts while it runs, deep in its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// A failed code check was charged against its limit.
    CodeCheckFailures,
    /// ...and that failure locked the check.
    Locks,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    code_check_failures: u32,
    locks: u32,
}

tokio::task_local! {
    static COUNTS: RefCell<Counts>;
    static CAPTURED: RefCell<Vec<String>>;
}

/// Counts one `counter` for the request being served (nothing outside a request).
pub fn count(counter: Counter) {
    let _ = COUNTS.try_with(|counts| {
        let mut counts = counts.borrow_mut();
        match counter {
            Counter::CodeCheckFailures => counts.code_check_failures += 1,
            Counter::Locks => counts.locks += 1,
        }
    });
}

/// What a served request ended as, for its metrics line.
#[derive(Debug, Clone)]
pub struct Outcome<'a> {
    pub function: &'a str,
    pub status: u16,
    pub latency_ms: f64,
    /// Why its credential was refused, if it was.
    pub auth_failure: Option<&'static str>,
    pub request_id: &'a str,
}

/// Runs one request's future with its own counters, then writes its metrics line.
pub async fn measured<'o, Fut, T>(fut: Fut, outcome: impl FnOnce(&T) -> Outcome<'o>) -> T
where
    Fut: Future<Output = T>,
{
    let (value, counts) = COUNTS
        .scope(RefCell::new(Counts::default()), async {
            let value = fut.await;
            (value, COUNTS.with(|c| *c.borrow()))
        })
        .await;
    emit(line(
        namespace(),
        &outcome(&value),
        counts,
        crate::clock::now_millis(),
    ));
    value
}

/// Runs `fut` (requests served in process, in tests and the benchmark) and returns the
/// metrics lines its requests wrote instead of printing them.
pub async fn capture<Fut: Future>(fut: Fut) -> (Fut::Output, Vec<String>) {
    CAPTURED
        .scope(RefCell::new(Vec::new()), async {
            let value = fut.await;
            (value, CAPTURED.with(|lines| lines.take()))
        })
        .await
}

fn emit(line: String) {
    let captured = CAPTURED.try_with(|lines| lines.borrow_mut().push(line.clone()));
    if captured.is_err() {
        use std::io::Write;
        // One write of the whole line, so that it is never interleaved with another.
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(format!("{line}\n").as_bytes());
        let _ = out.flush();
    }
}

fn namespace() -> &'static str {
    static NAMESPACE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAMESPACE.get_or_init(|| {
        crate::config::optional("METRICS_NAMESPACE").unwrap_or_else(|| "posthog-users".into())
    })
}

/// The status's class: `2xx`, `4xx`, `5xx` (anything else by its first digit).
pub fn status_class(status: u16) -> String {
    format!("{}xx", status / 100)
}

/// The EMF line of one request.
fn line(namespace: &str, outcome: &Outcome<'_>, counts: Counts, timestamp_ms: u64) -> String {
    use serde_json::{json, Map, Value};
    let directive = |dimensions: Value, metrics: &[(&str, &str)]| {
        json!({
            "Namespace": namespace,
            "Dimensions": dimensions,
            "Metrics": metrics
                .iter()
                .map(|(name, unit)| json!({"Name": name, "Unit": unit}))
                .collect::<Vec<_>>(),
        })
    };
    let mut directives = vec![
        directive(
            json!([["Function", "StatusClass"]]),
            &[("Requests", "Count")],
        ),
        directive(json!([["Function"]]), &[("Latency", "Milliseconds")]),
    ];
    let mut fields = Map::new();
    fields.insert("Function".into(), json!(outcome.function));
    fields.insert("StatusClass".into(), json!(status_class(outcome.status)));
    fields.insert("Requests".into(), json!(1));
    fields.insert(
        "Latency".into(),
        json!((outcome.latency_ms * 1000.0).round() / 1000.0),
    );
    if let Some(reason) = outcome.auth_failure {
        directives.push(directive(json!([["Reason"]]), &[("AuthFailures", "Count")]));
        fields.insert("Reason".into(), json!(reason));
        fields.insert("AuthFailures".into(), json!(1));
    }
    if counts.code_check_failures > 0 || counts.locks > 0 {
        directives.push(directive(
            json!([[], ["Function"]]),
            &[("CodeCheckFailures", "Count"), ("Locks", "Count")],
        ));
        fields.insert(
            "CodeCheckFailures".into(),
            json!(counts.code_check_failures),
        );
        fields.insert("Locks".into(), json!(counts.locks));
    }
    fields.insert("request_id".into(), json!(outcome.request_id));
    fields.insert(
        "_aws".into(),
        json!({"Timestamp": timestamp_ms, "CloudWatchMetrics": directives}),
    );
    Value::Object(fields).to_string()
}

/// Why a request's credential was refused, from its error: the metric's `Reason`. A token's
/// reasons are a fixed set (`crate::tokens::refused`), so the dimension stays small.
pub fn auth_failure(error: &crate::ApiError) -> Option<&'static str> {
    use crate::ApiError;
    match error {
        ApiError::NotAuthenticated => Some("no_credentials"),
        ApiError::AuthenticationFailed => Some("invalid_credentials"),
        ApiError::InvalidToken { reason, .. } => Some(reason),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[tokio::test]
    async fn a_line_declares_what_it_carries() {
        let outcome = Outcome {
            function: "two-factor-verify",
            status: 429,
            latency_ms: 12.34567,
            auth_failure: None,
            request_id: "r-1",
        };
        let (_, lines) = capture(measured(
            async {
                count(Counter::CodeCheckFailures);
                count(Counter::Locks);
            },
            |_| outcome.clone(),
        ))
        .await;
        assert_eq!(lines.len(), 1);
        let v: Value = serde_json::from_str(&lines[0]).expect("JSON");
        assert_eq!(v["Function"], "two-factor-verify");
        assert_eq!(v["StatusClass"], "4xx");
        assert_eq!(v["Latency"], 12.346);
        assert_eq!(v["CodeCheckFailures"], 1);
        assert_eq!(v["Locks"], 1);
        assert!(v.get("AuthFailures").is_none());
        // Every metric and dimension a directive names is a member of the line.
        for d in v["_aws"]["CloudWatchMetrics"]
            .as_array()
            .expect("directives")
        {
            for m in d["Metrics"].as_array().expect("metrics") {
                assert!(v[m["Name"].as_str().expect("name")].is_number());
            }
            for set in d["Dimensions"].as_array().expect("sets") {
                for dim in set.as_array().expect("set") {
                    assert!(v[dim.as_str().expect("dim")].is_string());
                }
            }
        }
        // Counting outside a request is a no-op, not a panic.
        count(Counter::Locks);
    }
}
