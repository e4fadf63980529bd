//! The test harness. Every test talks to the real local services that `scripts/dev test`
//! starts (DynamoDB Local, moto for Secrets Manager and SES) and fails loudly without them.
//! Each scenario runs twice: in process, straight into the handlers, and over HTTP through
//! `cargo lambda watch` with the template's routes.
use serde_json::Value;
use shared::auth::ApiKeyRecord;
use shared::auth::{generate_api_key, ApiKeyHash};
use shared::lambda_http::{Body, Request, RequestExt};
pub use shared::users::UserId;
use shared::users::UserRecord;
use shared::Context;
use std::sync::Arc;

pub mod assertions;
pub mod calls;
pub mod flows;
pub mod network;
pub mod passkeys;
pub mod tokens;
pub use assertions::*;
pub use flows::*;

/// A variable the test command sets; without it the test cannot run and says why.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `scripts/dev test`, which starts DynamoDB Local and moto")
    })
}

pub async fn context() -> Context {
    let _ = env("AWS_ENDPOINT_URL_DYNAMODB");
    Context::from_env()
        .await
        .expect("the function environment is set by scripts/dev test")
}

/// A context like the deployed one but with no email sender (email changes apply at once).
pub async fn context_without_email() -> Context {
    let mut config = shared::config::Config::from_env().expect("function environment");
    config.email_sender = None;
    Context::new(config, &shared::context::sdk_config().await)
}

/// A context like the deployed one but with no relying party (passkeys off).
pub async fn context_without_passkeys() -> Context {
    let mut config = shared::config::Config::from_env().expect("function environment");
    config.relying_party = None;
    Context::new(config, &shared::context::sdk_config().await)
}

/// A passkey id no passkey has (tests that call every route name it for `{id}`).
pub const NO_SUCH_PASSKEY: &str = "00000000-0000-4000-8000-000000000000";

/// A route table path with `{uuid}` as `@me` and `{id}` as [`NO_SUCH_PASSKEY`], and the
/// trailing slash.
pub fn route_path(pattern: &str) -> String {
    format!(
        "{}/",
        pattern
            .replace("{uuid}", "@me")
            .replace("{id}", NO_SUCH_PASSKEY)
    )
}

/// How a scenario reaches the API.
#[derive(Clone)]
pub enum Api {
    /// Straight into the handler the route table names (what API Gateway would invoke).
    InProcess(Arc<Context>),
    /// Like `InProcess`, but each request finds no encryption keys loaded, as the first one
    /// of a cold start does, and reads them itself: its Secrets Manager call is observed.
    InProcessColdKeys(Arc<Context>),
    /// Over HTTP to the local API (`cargo lambda watch`).
    Http(reqwest::Client, String),
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// When the response was complete: in process, before what the function does after its
    /// response (`shared::run`: queued mail, the note of the key's use).
    pub responded_at: std::time::Instant,
    /// In process: the Lambda request id the request carried, and the metrics lines (EMF,
    /// `shared::metrics`) it wrote; over HTTP neither is known here (the function's log has
    /// the lines).
    pub request_id: Option<String>,
    pub metrics: Vec<Value>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the status and the whole error envelope.
    #[track_caller]
    pub fn assert_error(
        &self,
        status: u16,
        kind: &str,
        code: &str,
        detail: &str,
        attr: Option<&str>,
    ) {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(
            self.json(),
            serde_json::json!({"type": kind, "code": code, "detail": detail, "attr": attr}),
        );
        assert_eq!(self.header("content-type"), Some("application/json"));
    }
}

/// A request under construction.
pub struct Call<'a> {
    api: &'a Api,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl<'a> Call<'a> {
    pub fn bearer(self, key: &str) -> Self {
        self.header("authorization", &format!("Bearer {key}"))
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn json(mut self, value: &Value) -> Self {
        self.body = value.to_string().into_bytes();
        self.header("content-type", "application/json")
    }

    pub fn raw(mut self, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self.header("content-type", content_type)
    }

    pub async fn send(self) -> Reply {
        match self.api {
            Api::InProcess(ctx) => {
                dispatch(ctx, self.method, self.path, self.headers, self.body).await
            }
            Api::InProcessColdKeys(ctx) => {
                let cold = ctx.with_store(ctx.store.clone()).with_keys_unloaded();
                dispatch(&cold, self.method, self.path, self.headers, self.body).await
            }
            Api::Http(client, base) => {
                let method = reqwest::Method::from_bytes(self.method.as_bytes()).expect("method");
                let mut request = client.request(method, format!("{base}{}", self.path));
                for (k, v) in &self.headers {
                    request = request.header(k, v);
                }
                let response = request
                    .body(self.body)
                    .send()
                    .await
                    .expect("the local API answers");
                let status = response.status().as_u16();
                let headers = response
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect();
                let body = response.text().await.expect("body");
                Reply {
                    status,
                    headers,
                    body,
                    responded_at: std::time::Instant::now(),
                    request_id: None,
                    metrics: Vec::new(),
                }
            }
        }
    }
}

impl Api {
    pub async fn in_process() -> Api {
        Api::InProcess(Arc::new(context().await))
    }

    pub fn http() -> Api {
        Api::Http(reqwest::Client::new(), env("TEST_API_URL"))
    }

    pub fn call(&self, method: &str, path: &str) -> Call<'_> {
        Call {
            api: self,
            method: method.into(),
            path: path.into(),
            headers: vec![],
            body: vec![],
        }
    }

    pub fn get(&self, path: &str) -> Call<'_> {
        self.call("GET", path)
    }
    pub fn post(&self, path: &str) -> Call<'_> {
        self.call("POST", path)
    }
    pub fn patch(&self, path: &str) -> Call<'_> {
        self.call("PATCH", path)
    }
}

/// The request a handler gets from API Gateway for this method, path, headers and body.
pub fn lambda_request(
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> Request {
    let mut builder = shared::lambda_http::http::Request::builder()
        .method(method)
        .uri(path);
    for (k, v) in headers {
        builder = builder.header(k, v);
    }
    let mut lambda = shared::lambda_http::lambda_runtime::Context::default();
    lambda.request_id = format!("test-{}", uuid::Uuid::new_v4());
    // API Gateway hands the function the query string parsed; lambda_http reads it from there.
    let query: shared::lambda_http::aws_lambda_events::query_map::QueryMap = path
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .parse()
        .expect("a query string");
    builder
        .body(if body.is_empty() {
            Body::Empty
        } else {
            Body::Binary(body)
        })
        .expect("request")
        .with_lambda_context(lambda)
        .with_query_string_parameters(query)
}

/// The function crates, by name: what [`invoke`] can call. The test command checks this list
/// against the route table (tests/tests/api/routes.rs).
macro_rules! functions {
    ($($function:ident),* $(,)?) => {
        /// The name of every function the harness can invoke.
        pub const FUNCTIONS: &[&str] = &[$($function::FUNCTION,)* fallback::FUNCTION];

        /// Calls the named function's handler.
        async fn invoke(
            function: &str,
            ctx: &Context,
            request: Request,
        ) -> Result<shared::lambda_http::Response<Body>, std::convert::Infallible> {
            // Each handler's future on the heap: one of them inline would make this future
            // (and the test's stack) as large as the largest handler's.
            $(if function == $function::FUNCTION {
                return Box::pin($function::handle(ctx, request)).await;
            })*
            if function == fallback::FUNCTION {
                return fallback::handle(request).await;
            }
            panic!("the route table names a function the harness does not know: {function}")
        }
    };
}

functions!(
    push_tokens_unregister,
    push_tokens_register,
    scene_personalisation,
    two_factor_start_setup,
    two_factor_validate,
    two_factor_verify,
    two_factor_status,
    two_factor_backup_codes,
    two_factor_disable,
    cancel_email_change_request,
    verify_email,
    get_user,
    update_user,
    webauthn_register_begin,
    webauthn_register_complete,
    webauthn_credentials,
    security_events,
    webauthn_credential_update,
    webauthn_credential_delete,
    webauthn_verify_begin,
    webauthn_verify_complete,
    two_factor_passkey_begin,
);

/// Invokes the function that API Gateway would for this method and path.
async fn dispatch(
    ctx: &Context,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
) -> Reply {
    let request = lambda_request(&method, &path, &headers, body);
    let route_path = path.split_once('?').map_or(path.as_str(), |(p, _)| p);
    let function = shared::routes::resolve(&method, route_path)
        .map(|m| m.route.function)
        .unwrap_or(shared::routes::FALLBACK_FUNCTION);
    // Each invocation gets its own recorder, so the AWS calls it made are known even when a
    // test runs requests concurrently.
    let recorder = calls::Recorder::default();
    let scoped = recorder.instrument(ctx);
    let ctx = &scoped;
    let request_id = shared::http::request_id(&request).to_string();
    let (Ok(response), metrics) =
        shared::metrics::capture(Box::pin(invoke(function, ctx, request))).await;
    let metrics = metrics
        .iter()
        .map(|line| serde_json::from_str(line).expect("a metrics line is JSON"))
        .collect();
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = match response.into_body() {
        Body::Empty => String::new(),
        Body::Text(t) => t,
        Body::Binary(b) => String::from_utf8(b).expect("utf-8 body"),
        _ => String::new(),
    };
    let responded_at = std::time::Instant::now();
    // As the runtime does (shared::run): what no response waits for runs after it.
    ctx.after_response().await;
    calls::observe(function, &recorder.take());
    Reply {
        status,
        headers,
        body,
        responded_at,
        request_id: Some(request_id),
        metrics,
    }
}

/// A user made the way the operator tool makes one, with a key of the given scopes.
pub struct TestUser {
    pub user: UserRecord,
    pub key: String,
}

impl TestUser {
    pub fn uuid(&self) -> UserId {
        self.user.uuid
    }
}

pub fn unique_email(tag: &str) -> String {
    format!("{tag}-{}@example.com", uuid::Uuid::new_v4().simple())
}

/// A regular (non-staff) user, made as `users-admin create-user` makes one, with a key of the
/// given scopes.
pub async fn create_user(ctx: &Context, scopes: &[&str]) -> TestUser {
    create_user_of_kind(ctx, shared::users::UserKind::Regular, scopes).await
}

/// [`create_user`] for a staff user.
pub async fn create_staff(ctx: &Context, scopes: &[&str]) -> TestUser {
    create_user_of_kind(ctx, shared::users::UserKind::Staff, scopes).await
}

/// A user of either kind (for callers that choose it at run time).
pub async fn create_user_of_kind(
    ctx: &Context,
    kind: shared::users::UserKind,
    scopes: &[&str],
) -> TestUser {
    let user = UserRecord::new(&unique_email("user"), "Test", "User", kind);
    ctx.store.create_user(&user).await.expect("create user");
    let key = create_key(ctx, &user, scopes).await;
    TestUser { user, key }
}

pub async fn create_key(ctx: &Context, user: &UserRecord, scopes: &[&str]) -> String {
    let (key, mask) = generate_api_key();
    let record = ApiKeyRecord {
        secure_value: ApiKeyHash::of(&key).0,
        user_uuid: user.uuid,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        label: "test".into(),
        mask,
        created_at: shared::clock::iso_now(),
        last_used_at: None,
        user_is_staff: user.is_staff,
        user_is_active: true,
    };
    // As users-admin records it.
    let event = admin_event(
        record.user_uuid,
        shared::security_events::EventKind::KeyCreated,
    )
    .with_detail(ApiKeyHash::of(&key).id_prefix());
    ctx.store
        .put_api_key(&record, &event)
        .await
        .expect("create key");
    key
}

/// Runs a scenario both in process and over HTTP: `both!(name, |api, ctx| async move { ... })`.
#[macro_export]
macro_rules! both {
    ($name:ident, |$api:ident, $ctx:ident| $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn scenario($api: $crate::Api, $ctx: std::sync::Arc<shared::Context>) {
                $body.await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn in_process() {
                let ctx = std::sync::Arc::new($crate::context().await);
                // On the heap: a scenario's future can outgrow the test thread's stack.
                Box::pin(scenario($crate::Api::InProcess(ctx.clone()), ctx)).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn over_http() {
                let ctx = std::sync::Arc::new($crate::context().await);
                Box::pin(scenario($crate::Api::http(), ctx)).await
            }
        }
    };
}

/// Mail moto's SES accepted, newest last: (destination, subject, body).
pub async fn sent_mail() -> Vec<(Vec<String>, String, String)> {
    let data: Value = reqwest::get(format!("{}/moto-api/data.json", env("MOTO_URL")))
        .await
        .expect("moto answers")
        .json()
        .await
        .expect("moto data is JSON");
    let mut out = Vec::new();
    // moto keeps the messages as a list (older versions: an object keyed by id).
    let messages: Vec<&Value> = match &data["ses"]["Message"] {
        Value::Array(list) => list.iter().collect(),
        Value::Object(map) => map.values().collect(),
        _ => Vec::new(),
    };
    for message in messages {
        let to = message["destinations"]["ToAddresses"]
            .as_array()
            .or_else(|| message["destinations"].as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        out.push((
            to,
            message["subject"].as_str().unwrap_or("").to_string(),
            message["body"].as_str().unwrap_or("").to_string(),
        ));
    }
    out
}

/// The TOTP code pyotp (an independent implementation) gives for a base32 secret at a time.
pub async fn pyotp_code(secret: &str, at: u64) -> String {
    let out = tokio::process::Command::new(env("TEST_PYTHON"))
        .args([
            "-c",
            "import pyotp, sys; print(pyotp.TOTP(sys.argv[1]).at(int(sys.argv[2])))",
            secret,
            &at.to_string(),
        ])
        .output()
        .await
        .expect("pyotp runs");
    assert!(
        out.status.success(),
        "pyotp failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the test files
// ---------------------------------------------------------------------------------------------

/// The fields of the user object (API.md §3), exactly.
pub const USER_OBJECT_FIELDS: &[&str] = &[
    "uuid",
    "distinct_id",
    "first_name",
    "last_name",
    "email",
    "pending_email",
    "is_email_verified",
    "date_joined",
    "is_staff",
    "notification_settings",
    "anonymize_data",
    "allow_impersonation",
    "toolbar_mode",
    "events_column_config",
    "has_seen_product_intro_for",
    "theme_mode",
    "hedgehog_config",
    "allow_sidebar_suggestions",
    "shortcut_position",
    "role_at_organization",
    "passkeys_enabled_for_2fa",
    "hide_mcp_hints",
    "is_2fa_enabled",
    "scene_personalisation",
];

/// Asserts that a value is a user object: a JSON object with exactly the fields of §3.
#[track_caller]
pub fn assert_user_object(value: &Value) {
    let keys: std::collections::BTreeSet<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    let expected: std::collections::BTreeSet<&str> = USER_OBJECT_FIELDS.iter().copied().collect();
    assert_eq!(keys, expected, "the user object's fields");
}

impl Reply {
    /// Asserts the status, with the body in the message.
    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "body: {}", self.body);
        self
    }

    /// A 200 JSON answer: its body.
    #[track_caller]
    pub fn ok_json(&self) -> Value {
        self.assert_status(200);
        assert_eq!(self.header("content-type"), Some("application/json"));
        self.json()
    }

    /// A 200 user object: its body, after checking the field set.
    #[track_caller]
    pub fn user_object(&self) -> Value {
        let value = self.ok_json();
        assert_user_object(&value);
        value
    }

    /// A 204 with an empty body.
    #[track_caller]
    pub fn assert_no_content(&self) {
        assert_eq!(self.status, 204, "body: {}", self.body);
        assert_eq!(self.body, "", "a 204 has no body");
    }

    /// Like `assert_error`, for details whose tail is the parser's own words: the detail must
    /// start with `detail_prefix`; everything else is checked exactly.
    #[track_caller]
    pub fn assert_error_prefix(
        &self,
        status: u16,
        kind: &str,
        code: &str,
        detail_prefix: &str,
        attr: Option<&str>,
    ) {
        assert_eq!(self.status, status, "body: {}", self.body);
        let body = self.json();
        let object = body
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {body}"));
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            vec!["attr", "code", "detail", "type"],
            "envelope fields: {body}"
        );
        assert_eq!(body["type"], kind, "{body}");
        assert_eq!(body["code"], code, "{body}");
        assert_eq!(body["attr"], serde_json::json!(attr), "{body}");
        let detail = body["detail"]
            .as_str()
            .unwrap_or_else(|| panic!("detail is not a string: {body}"));
        assert!(
            detail.starts_with(detail_prefix),
            "detail {detail:?} should start with {detail_prefix:?}"
        );
        assert_eq!(self.header("content-type"), Some("application/json"));
    }

    /// A 401 of the given code, with `WWW-Authenticate: Bearer`.
    #[track_caller]
    pub fn assert_unauthorized(&self, code: &str) {
        let detail = match code {
            "not_authenticated" => "Authentication credentials were not provided.",
            "authentication_failed" => {
                "Personal API key found in request Authorization header is invalid."
            }
            other => panic!("no 401 has code {other}"),
        };
        self.assert_error(401, "authentication_error", code, detail, None);
        assert_eq!(
            self.header("www-authenticate"),
            Some("Bearer"),
            "every 401 carries WWW-Authenticate"
        );
    }

    /// A 403 `permission_denied` with this detail.
    #[track_caller]
    pub fn assert_forbidden(&self, detail: &str) {
        self.assert_error(
            403,
            "authentication_error",
            "permission_denied",
            detail,
            None,
        );
    }

    /// A 404 `not_found`.
    #[track_caller]
    pub fn assert_not_found(&self) {
        self.assert_error(404, "invalid_request", "not_found", "Not found.", None);
    }
}

pub const NON_STAFF_DETAIL: &str =
    "As a non-staff user you're only allowed to access the `@me` user instance.";
pub const PUSH_TOKENS_ONLY_ME: &str = "Push tokens can only be managed via the `@me` path.";
pub const MISSING_WRITE_SCOPE: &str = "API key missing required scope 'user:write'";

impl Api {
    pub fn put(&self, path: &str) -> Call<'_> {
        self.call("PUT", path)
    }
    pub fn delete(&self, path: &str) -> Call<'_> {
        self.call("DELETE", path)
    }

    /// `GET /api/users/@me/` with this key: the user object.
    pub async fn me(&self, key: &str) -> Value {
        self.get("/api/users/@me/")
            .bearer(key)
            .send()
            .await
            .user_object()
    }

    pub fn is_http(&self) -> bool {
        matches!(self, Api::Http(..))
    }
}

/// A record of an operator's change, for store calls made directly by a test.
pub fn admin_event(
    uuid: UserId,
    kind: shared::security_events::EventKind,
) -> shared::security_events::SecurityEvent {
    shared::security_events::SecurityEvent::new(
        uuid,
        kind,
        &shared::security_events::Actor::operator(),
        1,
    )
}

/// Deactivates a user the way `users-admin deactivate-user` does (user and every key).
pub async fn deactivate(ctx: &Context, uuid: UserId) {
    assert!(
        ctx.store
            .deactivate_user(
                uuid,
                &ctx.security_event(
                    uuid,
                    shared::security_events::EventKind::UserDeactivated,
                    &shared::security_events::Actor::operator(),
                ),
            )
            .await
            .expect("deactivate user"),
        "the user exists"
    );
}

/// Reads with `read` until `done` holds for what it read, or 10 s have passed; returns the
/// last reading either way, for the caller's assertion to check and show. For what a function
/// does after its response (`shared::run`), which over HTTP lands a moment after it.
pub async fn eventually<T, F, Fut>(mut read: F, done: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let value = read().await;
        if done(&value) || std::time::Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// [`sent_mail`] once `arrived` holds for it (a notice goes out after the response).
pub async fn sent_mail_when(
    arrived: impl Fn(&[(Vec<String>, String, String)]) -> bool,
) -> Vec<(Vec<String>, String, String)> {
    eventually(sent_mail, |mail| arrived(mail)).await
}

/// Mail moto's SES accepted for this address: (subject, body).
pub async fn mail_to(address: &str) -> Vec<(String, String)> {
    sent_mail()
        .await
        .into_iter()
        .filter(|(to, _, _)| to.iter().any(|t| t.eq_ignore_ascii_case(address)))
        .map(|(_, subject, body)| (subject, body))
        .collect()
}

/// Every run of exactly six digits in a text.
pub fn six_digit_runs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut run = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() {
            run.push(c);
        } else {
            if run.len() == 6 {
                out.push(run.clone());
            }
            run.clear();
        }
    }
    out
}

/// The verification code of the one message sent to this address.
pub async fn code_mailed_to(address: &str) -> String {
    let mail = mail_to(address).await;
    assert_eq!(mail.len(), 1, "exactly one message to {address}: {mail:?}");
    let codes = six_digit_runs(&mail[0].1);
    assert_eq!(
        codes.len(),
        1,
        "one 6-digit code in the message: {:?}",
        mail[0].1
    );
    codes[0].clone()
}

/// A code that differs from `code` (for a wrong-code check).
pub fn other_code(code: &str) -> String {
    let n: u32 = code.parse().expect("six digits");
    format!("{:06}", (n + 1) % 1_000_000)
}

/// The workspace's root folder.
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace")
        .to_path_buf()
}

/// `scripts/stack <command>`'s JSON list (the local stack's package, run as a directory).
pub async fn stack_json(command: &str) -> Vec<serde_json::Value> {
    stack_json_with(&[command]).await
}

/// [`stack_json`] with arguments after the command.
pub async fn stack_json_with(args: &[&str]) -> Vec<serde_json::Value> {
    let command = args.join(" ");
    let root = workspace_root();
    let out = tokio::process::Command::new(env("TEST_PYTHON"))
        .arg(root.join("scripts").join("stack"))
        .args(args)
        .current_dir(&root)
        .output()
        .await
        .expect("scripts/stack runs");
    assert!(
        out.status.success(),
        "scripts/stack {command} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("scripts/stack prints JSON");
    value.as_array().expect("a JSON list").clone()
}

/// The folder of the built binaries (`target/debug`): the test binary lives in its `deps/`.
pub fn binaries_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps folder");
    deps.parent().expect("profile folder").to_path_buf()
}

/// Waits, if needed, so that at least 4 seconds remain in the current 30-second step: the
/// codes a test computes stay in the step they were computed for. Returns the time then.
pub async fn step_margin() -> u64 {
    loop {
        let now = shared::clock::now_secs();
        if now % 30 <= 25 {
            return now;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// A user's failure state for one kind of code check, as stored.
pub async fn failures_of(
    ctx: &Context,
    uuid: UserId,
    check: shared::throttle::CodeCheck,
) -> shared::throttle::FailureState {
    let found = ctx
        .store
        .get_many(&[(
            ctx.store.tables.limits.as_str(),
            shared::store::limits::failures_key(uuid, check),
        )])
        .await
        .expect("read the failure state");
    shared::throttle::FailureState::from_item(found.into_iter().next().flatten())
        .expect("a failure state")
}

/// What a run of the built `users-admin` printed, and its exit code.
pub struct AdminOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl AdminOutput {
    /// A success: one JSON object on stdout.
    #[track_caller]
    pub fn json(&self) -> Value {
        assert_eq!(self.code, 0, "users-admin failed: {}", self.stderr);
        let value: Value = serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {:?}", self.stdout));
        assert!(value.is_object(), "{value}");
        value
    }

    /// A failure: non-zero, a message on stderr, nothing on stdout.
    #[track_caller]
    pub fn failed(&self) -> &str {
        assert_ne!(
            self.code, 0,
            "users-admin should fail; stdout: {}",
            self.stdout
        );
        assert!(!self.stderr.trim().is_empty(), "a message on stderr");
        assert!(
            self.stdout.trim().is_empty(),
            "nothing on stdout: {:?}",
            self.stdout
        );
        &self.stderr
    }
}

/// Runs the built `users-admin` (the operator tool) with the test environment.
pub async fn users_admin(args: &[&str]) -> AdminOutput {
    let _ = env("AWS_ENDPOINT_URL_DYNAMODB");
    let exe = binaries_dir().join("users-admin");
    assert!(
        exe.exists(),
        "{} is not built (scripts/dev test builds the workspace)",
        exe.display()
    );
    let out = tokio::process::Command::new(&exe)
        .args(args)
        .current_dir(workspace_root())
        .output()
        .await
        .expect("users-admin runs");
    AdminOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
