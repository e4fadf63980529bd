//! The in-process half of `scripts/dev bench` (scripts/bench.py drives it over stdin/stdout,
//! one JSON object a line each way).
//!
//! - `{"op":"user"}` creates a user and a `*` key the way the tests do (`api_tests::create_user`).
//! - `{"op":"invoke", "method", "path", "headers", "body"}` runs one request straight into the
//!   handler that API Gateway would invoke (the tests' in-process dispatch), with DynamoDB and
//!   SES clients that record every call: the tests' `Recorder` gives the DynamoDB call count
//!   and how many ran one after another; a second interceptor keeps each AWS call's start and
//!   end (and the mail sent, so the harness can read an emailed code). `aws_us` is the time
//!   the request spent in its AWS calls, stage by stage (calls that overlapped count once):
//!   the same calls, with the same inputs, against the same services, made directly with the
//!   SDK, which is the baseline of the warm-latency ratio. A call's time is its SDK operation
//!   span's (`DynamoDB.GetItem`, …: the whole operation, as a direct caller waits for it), or
//!   the interceptors' window when the spans cannot be matched (`direct_source` says which). `replay` holds every call's request
//!   body, stage by stage, for the Python peers (scripts/bench/python-function/replay.py).
//!   Calls made after the response (what `shared::run` does then: queued mail, the note of the
//!   key's use) are left out of `aws_us`
//!   and the stages and listed in `after_response_calls`; the replay marks them.
//! - `{"op":"passkey_register", "options"}` answers a passkey's creation options (the body of
//!   `POST /api/webauthn/register/begin/`, as the API returned it: an object, or its JSON
//!   text) as a browser at the stack's account page would: `{"credential": ...}`, the body for
//!   `register/complete/`. `{"op":"passkey_assert", "options"}` does the same for request
//!   options (`credentials/{id}/verify/`, `two_factor_passkey_begin/`): `{"assertion": ...}`.
//!   Both use the tests' software authenticator (`api_tests::passkeys::Authenticator`), one
//!   for the driver's whole life: it holds the keys of every passkey it made (and one
//!   signature counter for them all, so every assertion's counter is above the last one's).
//!   They make no AWS call and are never measured.
//! - A request the driver cannot answer gets `{"error": "..."}` (an unknown op, passkey options
//!   missing); a line that is not JSON ends the driver, and so does a failure of the set-up
//!   itself (a user that cannot be made, options the authenticator refuses: it panics, with the
//!   reason in the driver's log).
use api_tests::calls::{sequential_depth, Recorder};
use api_tests::passkeys::Authenticator;
use aws_sdk_dynamodb::config::interceptors::{
    BeforeSerializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
    FinalizerInterceptorContextRef,
};
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use aws_sdk_dynamodb::operation::{
    batch_get_item::BatchGetItemInput, batch_write_item::BatchWriteItemInput,
    delete_item::DeleteItemInput, get_item::GetItemInput, put_item::PutItemInput,
    query::QueryInput, scan::ScanInput, transact_get_items::TransactGetItemsInput,
    transact_write_items::TransactWriteItemsInput, update_item::UpdateItemInput,
};
use aws_sdk_sesv2::operation::send_email::SendEmailInput;
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use serde_json::{json, Map, Value};
use shared::email::Mailer;
use shared::store::Store;
use shared::Context;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tracing_subscriber::layer::{Context as LayerContext, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// One AWS call a request made.
#[derive(Debug, Clone)]
struct Captured {
    /// `GetItem`, ..., or `sesv2.SendEmail`.
    operation: &'static str,
    dynamodb: bool,
    mail: Option<SendEmailInput>,
    /// The request body as sent (the Python peer replays it).
    body: Option<String>,
    start: Instant,
    end: Option<Instant>,
    /// The SDK operation's own span (see `SdkSpans`), when it was seen.
    op_start: Option<Instant>,
    op_end: Option<Instant>,
}

/// Keeps every call's operation and timing (one log for the DynamoDB and the SES client).
#[derive(Debug, Clone, Default)]
struct Capture {
    calls: Arc<Mutex<Vec<Captured>>>,
}

#[derive(Debug, Clone)]
struct Slot(usize);

impl Storable for Slot {
    type Storer = StoreReplace<Self>;
}

impl Capture {
    fn take(&self) -> Vec<Captured> {
        std::mem::take(&mut *self.calls.lock().expect("capture lock"))
    }

    /// Changes the call this operation recorded in `read_before_execution`.
    fn update(&self, cfg: &ConfigBag, change: impl FnOnce(&mut Captured)) {
        if let Some(Slot(index)) = cfg.load::<Slot>() {
            if let Some(call) = self.calls.lock().expect("capture lock").get_mut(*index) {
                change(call);
            }
        }
    }
}

/// The DynamoDB operation of an SDK input, by its type.
macro_rules! dynamodb_operation {
    ($input:expr, $($ty:ty => $name:literal),* $(,)?) => {
        if false { None } $(else if $input.downcast_ref::<$ty>().is_some() { Some($name) })* else { None }
    };
}

impl Intercept for Capture {
    fn name(&self) -> &'static str {
        "BenchCapture"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let input = context.input();
        let mail = input.downcast_ref::<SendEmailInput>().cloned();
        let operation = dynamodb_operation!(input,
            GetItemInput => "GetItem", BatchGetItemInput => "BatchGetItem", PutItemInput => "PutItem",
            UpdateItemInput => "UpdateItem", DeleteItemInput => "DeleteItem", QueryInput => "Query",
            ScanInput => "Scan", TransactWriteItemsInput => "TransactWriteItems",
            TransactGetItemsInput => "TransactGetItems", BatchWriteItemInput => "BatchWriteItem");
        let (operation, dynamodb) = match (operation, &mail) {
            (Some(op), _) => (op, true),
            (None, Some(_)) => ("sesv2.SendEmail", false),
            (None, None) => ("unknown", false),
        };
        let mut calls = self.calls.lock().expect("capture lock");
        calls.push(Captured {
            operation,
            dynamodb,
            mail,
            body: None,
            start: Instant::now(),
            end: None,
            op_start: None,
            op_end: None,
        });
        cfg.interceptor_state().store_put(Slot(calls.len() - 1));
        Ok(())
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let body = context.request().body().bytes();
        self.update(cfg, |call| {
            call.body = body.map(|b| String::from_utf8_lossy(b).into_owned())
        });
        Ok(())
    }

    fn read_after_execution(
        &self,
        _context: &FinalizerInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.update(cfg, |call| call.end = Some(Instant::now()));
        Ok(())
    }
}

/// The SDK's own span around each operation (`DynamoDB.GetItem`, `SESv2.SendEmail`, …): from
/// the operation's start, before its runtime plugins, to its output. That is what a call made
/// directly with the SDK takes, a little more than the interceptors' window (which opens only
/// after the plugins).
#[derive(Debug, Clone, Default)]
struct SdkSpans {
    done: Arc<Mutex<Vec<(Instant, Instant)>>>,
}

struct SpanStart(Instant);

impl SdkSpans {
    fn take(&self) -> Vec<(Instant, Instant)> {
        let mut spans = std::mem::take(&mut *self.done.lock().expect("span lock"));
        spans.sort_by_key(|(start, _)| *start);
        spans
    }
}

impl<S> Layer<S> for SdkSpans
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: LayerContext<'_, S>,
    ) {
        if attrs.metadata().fields().field("rpc.method").is_some() {
            if let Some(span) = ctx.span(id) {
                span.extensions_mut().insert(SpanStart(Instant::now()));
            }
        }
    }

    fn on_close(&self, id: tracing::span::Id, ctx: LayerContext<'_, S>) {
        let end = Instant::now();
        if let Some(span) = ctx.span(&id) {
            if let Some(SpanStart(start)) = span.extensions().get::<SpanStart>() {
                self.done.lock().expect("span lock").push((*start, end));
            }
        }
    }
}

/// The calls grouped as they ran: stage n holds the calls whose longest chain of earlier,
/// finished calls has length n (so the number of stages is the sequential depth).
fn stages(calls: &[Captured]) -> Vec<Vec<&Captured>> {
    let mut order: Vec<usize> = (0..calls.len()).collect();
    order.sort_by_key(|&i| calls[i].start);
    let mut level = vec![0usize; calls.len()];
    for (n, &i) in order.iter().enumerate() {
        for &j in &order[..n] {
            if calls[j].end.is_some_and(|end| end <= calls[i].start) {
                level[i] = level[i].max(level[j] + 1);
            }
        }
    }
    let depth = level.iter().max().map(|m| m + 1).unwrap_or(0);
    let mut out = vec![Vec::new(); depth];
    for &i in &order {
        out[level[i]].push(&calls[i]);
    }
    out
}

/// Time spent in the calls, stage by stage: from the first start to the last end of each
/// stage, so overlapping calls count once and the handler's own work between them not at all.
fn aws_time_us(stages: &[Vec<&Captured>]) -> u64 {
    stages
        .iter()
        .filter_map(|stage| {
            let start = stage.iter().map(|c| c.op_start.unwrap_or(c.start)).min()?;
            let end = stage.iter().filter_map(|c| c.op_end.or(c.end)).max()?;
            Some(micros(start, end))
        })
        .sum()
}

/// A call as the Python peer replays it.
fn replayed(c: &Captured, stage: usize, after_response: bool) -> Value {
    json!({
        "stage": stage,
        "after_response": after_response,
        "service": if c.dynamodb { "dynamodb" } else { "sesv2" },
        "operation": c.operation.trim_start_matches("sesv2."),
        "input": c.body.as_deref().and_then(|b| serde_json::from_str::<Value>(b).ok()).unwrap_or(Value::Null),
    })
}

fn micros(from: Instant, to: Instant) -> u64 {
    to.saturating_duration_since(from).as_micros() as u64
}

struct Driver {
    /// For the requests that set the scene up (users, setups, codes).
    prep: Arc<Context>,
    /// For the measured requests: the same clients' configuration, but its own HTTP client,
    /// so its connection to DynamoDB Local sits idle during the set-up, as a function's does.
    measured: Arc<Context>,
    recorder: Recorder,
    capture: Capture,
    spans: SdkSpans,
    /// The browser's passkeys (`passkey_register`, `passkey_assert`): one authenticator for
    /// the driver's whole life, which holds every passkey it made.
    authenticator: Authenticator,
}

impl Driver {
    async fn new(spans: SdkSpans) -> Driver {
        let capture = Capture::default();
        let recorder = Recorder::default();
        let prep = Self::context(&capture, &recorder).await;
        let measured = Self::context(&capture, &recorder).await;
        Driver {
            prep: Arc::new(prep),
            measured: Arc::new(measured),
            recorder,
            capture,
            spans,
            authenticator: Authenticator::new(),
        }
    }

    /// A context as a function builds it (`Context::from_env`: same SDK configuration), its
    /// DynamoDB and SES clients with the two interceptors.
    async fn context(capture: &Capture, recorder: &Recorder) -> Context {
        let base = Context::from_env()
            .await
            .expect("the function environment (scripts/bench.py sets it)");
        // The keys are read once per cold start; read them now, outside any measured request.
        base.keyring()
            .await
            .expect("the encryption secret is readable");
        let db = &base.store.db;
        let db = aws_sdk_dynamodb::Client::from_conf(
            db.config()
                .to_builder()
                .interceptor(capture.clone())
                .build(),
        );
        let db = recorder.instrument_client(&db);
        let ses = aws_sdk_sesv2::config::Builder::from(&shared::context::sdk_config().await)
            .interceptor(capture.clone())
            .build();
        let mut ctx = base.with_store(Store::new(db, base.store.tables.clone()));
        ctx.mailer = Mailer::new(
            aws_sdk_sesv2::Client::from_conf(ses),
            base.config.email_sender.clone(),
        );
        ctx
    }

    async fn user(&self, req: &Value) -> Value {
        let staff = req["staff"].as_bool().unwrap_or(false);
        let scopes: Vec<String> = req["scopes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_else(|| vec!["*".into()]);
        let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
        let kind = if staff {
            shared::users::UserKind::Staff
        } else {
            shared::users::UserKind::Regular
        };
        let user = api_tests::create_user_of_kind(&self.prep, kind, &scopes).await;
        json!({"uuid": user.user.uuid, "email": user.user.email, "key": user.key})
    }

    /// `passkey_register`: the credential for these creation options.
    fn passkey_register(&mut self, req: &Value) -> Value {
        self.passkey_ceremony(req, "credential", Authenticator::register)
    }

    /// `passkey_assert`: the assertion for these request options.
    fn passkey_assert(&mut self, req: &Value) -> Value {
        self.passkey_ceremony(req, "assertion", Authenticator::assert)
    }

    /// Runs one of the authenticator's ceremonies on `req["options"]` (an object, or its JSON
    /// text): `{answer: ...}`, or `{"error": ...}` when the options are missing or have no
    /// challenge. Options the authenticator refuses make it panic, as in the tests, which ends
    /// the driver (the release profile aborts on a panic) with the reason in its log, like a
    /// failed `user`.
    fn passkey_ceremony(
        &mut self,
        req: &Value,
        answer: &str,
        ceremony: fn(&mut Authenticator, &Value) -> Value,
    ) -> Value {
        let op = req["op"].as_str().unwrap_or_default();
        let options = match &req["options"] {
            Value::String(text) => serde_json::from_str::<Value>(text).unwrap_or(Value::Null),
            other => other.clone(),
        };
        if !options["challenge"].is_string() {
            return json!({"error": format!(
                "{op}: \"options\" must be the options the API returned (an object with a challenge)"
            )});
        }
        json!({ answer: ceremony(&mut self.authenticator, &options) })
    }

    async fn invoke(&mut self, req: &Value) -> Value {
        self.recorder.take();
        self.capture.take();
        self.spans.take();
        let ctx = if req["measured"].as_bool().unwrap_or(false) {
            &self.measured
        } else {
            &self.prep
        };
        let api = api_tests::Api::InProcess(ctx.clone());
        let mut call = api.call(
            req["method"].as_str().unwrap_or("GET"),
            req["path"].as_str().unwrap_or("/"),
        );
        if let Some(headers) = req["headers"].as_object() {
            for (k, v) in headers {
                call = call.header(k, v.as_str().unwrap_or(""));
            }
        }
        if let Some(body) = req["body"].as_str() {
            let content_type = req["content_type"].as_str().unwrap_or("application/json");
            call = call.raw(content_type, body.as_bytes().to_vec());
        }
        let started = Instant::now();
        let reply = call.send().await;
        let handler_us = micros(started, reply.responded_at);
        // The request's own calls; what runs after the response is listed on its own below.
        let recorded: Vec<_> = self
            .recorder
            .take()
            .into_iter()
            .filter(|c| c.start < reply.responded_at)
            .collect();
        let mut captured = self.capture.take();
        // Each call's operation span, matched by order of start (a call's span opens just
        // before its interceptors run, with no await between them).
        let spans = self.spans.take();
        let direct_source = if spans.len() == captured.len() {
            for (call, (start, end)) in captured.iter_mut().zip(spans) {
                call.op_start = Some(start);
                call.op_end = Some(end);
            }
            "sdk_operation_span"
        } else {
            "interceptors"
        };
        // What the function sends after its response (shared::run) is no part of the request's
        // time; the Python peer replays it after its response too.
        let (answered, after): (Vec<Captured>, Vec<Captured>) = captured
            .iter()
            .cloned()
            .partition(|c| c.start < reply.responded_at);
        let stages = stages(&answered);
        let mail: Vec<Value> = captured
            .iter()
            .filter_map(|c| c.mail.as_ref())
            .map(|i| {
                let message = i.content.as_ref().and_then(|c| c.simple());
                json!({
                    "to": i.destination.as_ref().map(|d| d.to_addresses().to_vec()).unwrap_or_default(),
                    "subject": message.and_then(|m| m.subject()).map(|s| s.data()).unwrap_or(""),
                    "text": message.and_then(|m| m.body()).and_then(|b| b.text()).map(|t| t.data()).unwrap_or(""),
                })
            })
            .collect();
        let headers: Map<String, Value> = reply
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        json!({
            "status": reply.status,
            "body": reply.body,
            "headers": headers,
            // The tests' Recorder: every DynamoDB call and how many ran one after another.
            "dynamodb_calls": recorded.len(),
            "sequential": sequential_depth(&recorded),
            "recorded": recorded.iter().map(|c| json!({"operation": c.operation, "actions": c.actions})).collect::<Vec<_>>(),
            // The capture agrees on the DynamoDB calls and adds the other AWS calls (SES).
            "captured_dynamodb_calls": answered.iter().filter(|c| c.dynamodb).count(),
            "other_calls": answered.iter().filter(|c| !c.dynamodb).map(|c| c.operation).collect::<Vec<_>>(),
            "after_response_calls": after.iter().map(|c| c.operation).collect::<Vec<_>>(),
            "stages": stages.iter().map(|s| s.iter().map(|c| c.operation).collect::<Vec<_>>()).collect::<Vec<_>>(),
            // Every call's request body, stage by stage: what the Python peer replays.
            "replay": stages.iter().enumerate().flat_map(|(n, stage)| stage.iter().map(move |c| replayed(c, n, false)))
                .chain(after.iter().map(|c| replayed(c, stages.len(), true)))
                .collect::<Vec<_>>(),
            "aws_us": aws_time_us(&stages),
            "direct_source": direct_source,
            "handler_us": handler_us,
            "mail": mail,
        })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // Only the SDK's operation spans are enabled, for the direct time; nothing is printed.
    let spans = SdkSpans::default();
    let targets = tracing_subscriber::filter::Targets::new()
        .with_target("aws_sdk_dynamodb", tracing::Level::DEBUG)
        .with_target("aws_sdk_sesv2", tracing::Level::DEBUG);
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(spans.clone().with_filter(targets)),
    )
    .expect("the only subscriber");
    let mut driver = Driver::new(spans).await;
    let mut stdout = tokio::io::stdout();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    stdout
        .write_all(b"{\"ready\":true}\n")
        .await
        .expect("stdout");
    stdout.flush().await.expect("stdout");
    while let Ok(Some(line)) = lines.next_line().await {
        let req: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("bench-calls: bad request line: {e}");
                std::process::exit(2);
            }
        };
        let answer = match req["op"].as_str() {
            Some("user") => driver.user(&req).await,
            Some("invoke") => driver.invoke(&req).await,
            Some("passkey_register") => driver.passkey_register(&req),
            Some("passkey_assert") => driver.passkey_assert(&req),
            Some("quit") | None => break,
            Some(other) => json!({"error": format!("unknown op {other}")}),
        };
        let mut out = answer.to_string();
        out.push('\n');
        stdout.write_all(out.as_bytes()).await.expect("stdout");
        stdout.flush().await.expect("stdout");
    }
}
