//! Structured logs: one JSON line per request (request id, method, route, status, latency),
//! and nothing secret. A full flow runs over HTTP through `cargo lambda watch`, then the
//! functions' log (`WATCH_LOG`, written by the test command) is searched for every key,
//! secret, code, token and body value the flow used.
use api_tests::*;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_have_one_line_per_request_and_no_secret() {
    let ctx = context().await;
    let api = Api::http();
    let user = create_user(&ctx, &["*"]).await;
    let k = user.key.clone();
    let marker = format!("BodyMarker{}", uuid::Uuid::new_v4().simple());
    let push_token = format!("push-{}", uuid::Uuid::new_v4().simple());
    let new_email = unique_email("logs");

    api.patch_me(&k, &json!({"first_name": marker}))
        .await
        .assert_status(200);
    api.register_push_token(&k, &push_token, "ios")
        .await
        .assert_status(200);
    api.unregister_push_token(&k, &json!({"token": push_token}))
        .await
        .assert_status(204);
    api.request_email_change(&k, &new_email)
        .await
        .assert_status(200);
    let email_code = code_mailed_to(&new_email).await;
    api.verify_email(&k, "@me", &other_code(&email_code))
        .await
        .assert_status(400);
    api.verify_email(&k, "@me", &email_code)
        .await
        .assert_status(200);
    let secret = api.new_2fa_secret(&k).await;
    let now = step_margin().await;
    let code = pyotp_code(&secret, now).await;
    api.validate_2fa(&k, code.as_str()).await.assert_status(200);
    let backup = api.backup_codes(&k).await;
    api.two_factor_status(&k).await;
    let next = pyotp_code(&secret, now + 30).await;
    api.verify_2fa(&k, next.as_str()).await.assert_status(200);
    api.verify_2fa(&k, backup[0].as_str())
        .await
        .assert_status(200);
    api.verify_2fa(&k, "zzzzzzzz").await.assert_status(400);
    // A malformed body and a bad key must not be echoed into the logs either.
    api.post(PUSH_TOKENS)
        .bearer(&k)
        .raw("application/json", format!("{{\"token\": \"{marker}"))
        .send()
        .await
        .assert_status(400);
    let bad_key = format!("phx_{}", "Z".repeat(48));
    api.get(ME).bearer(&bad_key).send().await.assert_status(401);

    let path = env("WATCH_LOG");
    let mut log = String::new();
    for _ in 0..50 {
        log = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
        if log.contains("two_factor_verify") && log.matches("\"status\":401").count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut secrets: Vec<(&str, String)> = vec![
        ("API key", k.clone()),
        ("API key body", k[4..].to_string()),
        ("bad API key", bad_key[4..].to_string()),
        ("TOTP secret", secret.clone()),
        ("TOTP secret (lowercase)", secret.to_lowercase()),
        ("TOTP code", code.clone()),
        ("TOTP code", next.clone()),
        ("email code", email_code.clone()),
        ("push token", push_token.clone()),
        ("body value", marker.clone()),
        ("new email", new_email.clone()),
    ];
    for b in &backup {
        secrets.push(("backup code", b.clone()));
    }
    for (what, value) in &secrets {
        assert!(
            !contains_token(&log, value),
            "the {what} appears in the functions' log"
        );
    }

    // Every request line is JSON with the request's id, method, route, status and latency.
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(|v| v["fields"]["message"] == "request")
        .collect();
    let verify: Vec<&Value> = lines
        .iter()
        .filter(|v| v["fields"]["route"] == "/api/users/{uuid}/two_factor_verify")
        .collect();
    assert!(
        !verify.is_empty(),
        "no request line for two_factor_verify in {path}"
    );
    for line in lines.iter().chain(verify.iter().copied()) {
        let f = &line["fields"];
        assert!(
            f["request_id"]
                .as_str()
                .is_some_and(|id| id.len() >= 8 && id != "-"),
            "{line}"
        );
        assert!(f["method"].is_string() && f["route"].is_string(), "{line}");
        assert!(
            f["status"]
                .as_u64()
                .is_some_and(|s| (100..600).contains(&s)),
            "{line}"
        );
        assert!(
            f["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
            "{line}"
        );
    }
}

/// Whether `value` occurs in `log` as a value of its own: for a run of digits (a 6-digit
/// code), not as part of a longer number such as a timestamp's microseconds, which a random
/// code matches by chance in a log of a few thousand lines.
fn contains_token(log: &str, value: &str) -> bool {
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return log.contains(value);
    }
    log.match_indices(value).any(|(at, _)| {
        let before = log[..at].bytes().next_back();
        let after = log[at + value.len()..].bytes().next();
        let part_of_number = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_digit() || b == b'.');
        !part_of_number(before) && !part_of_number(after)
    })
}
