//! Records the AWS calls a request makes, with an SDK interceptor on each of its clients
//! (DynamoDB, Secrets Manager, SES): which operation, which actions on which resources (IAM's
//! view, so a transaction counts each of its items), and when, so the calls that ran one after
//! another can be told from those that overlapped. The test command compares what each
//! function was seen to call with its IAM policies.
use aws_sdk_dynamodb::config::interceptors::{
    BeforeSerializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
    FinalizerInterceptorContextRef,
};
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The services the functions call, as IAM names them.
pub const DYNAMODB: &str = "dynamodb";
pub const SECRETS_MANAGER: &str = "secretsmanager";
pub const SES: &str = "ses";
/// Cognito's `GetUser`, which a sign-in token's first use may make (authorized by the token).
pub const COGNITO: &str = "cognito-idp";

/// One AWS call.
#[derive(Debug, Clone)]
pub struct SdkCall {
    /// IAM's name of the service: [`DYNAMODB`], [`SECRETS_MANAGER`] or [`SES`].
    pub service: &'static str,
    pub operation: String,
    /// `(IAM action, resource)` for every item of the call: a table name, a secret id, or
    /// `*` for SES.
    pub actions: Vec<(String, String)>,
    pub start: Instant,
    pub end: Instant,
}

impl SdkCall {
    pub fn is_dynamodb(&self) -> bool {
        self.service == DYNAMODB
    }
}

#[derive(Debug, Clone)]
struct Started(Instant, &'static str, String, Vec<(String, String)>);

impl Storable for Started {
    type Storer = StoreReplace<Self>;
}

/// The interceptor; clones share one log.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    calls: Arc<Mutex<Vec<SdkCall>>>,
}

impl Recorder {
    /// The calls recorded since the last `take`.
    pub fn take(&self) -> Vec<SdkCall> {
        std::mem::take(&mut *self.calls.lock().expect("recorder lock"))
    }

    /// The DynamoDB calls recorded since the last `take` (the others are dropped).
    pub fn take_dynamodb(&self) -> Vec<SdkCall> {
        self.take()
            .into_iter()
            .filter(SdkCall::is_dynamodb)
            .collect()
    }

    /// A context like `ctx` whose clients all record into this recorder.
    pub fn instrument(&self, ctx: &shared::Context) -> shared::Context {
        ctx.instrumented(self.clone())
    }

    /// A DynamoDB client like `client` that records into this recorder.
    pub fn instrument_client(&self, client: &aws_sdk_dynamodb::Client) -> aws_sdk_dynamodb::Client {
        let config = client
            .config()
            .to_builder()
            .interceptor(self.clone())
            .build();
        aws_sdk_dynamodb::Client::from_conf(config)
    }
}

/// How many calls ran one after another: the longest chain of calls each starting after
/// the previous one ended.
pub fn sequential_depth(calls: &[SdkCall]) -> usize {
    let mut sorted: Vec<&SdkCall> = calls.iter().collect();
    sorted.sort_by_key(|c| c.start);
    let mut depth = vec![1usize; sorted.len()];
    for i in 0..sorted.len() {
        for j in 0..i {
            if sorted[j].end <= sorted[i].start {
                depth[i] = depth[i].max(depth[j] + 1);
            }
        }
    }
    depth.into_iter().max().unwrap_or(0)
}

fn dynamodb_actions(operation: &str, body: &Value) -> Vec<(String, String)> {
    let table = |v: &Value| v["TableName"].as_str().unwrap_or("?").to_string();
    match operation {
        "BatchGetItem" | "BatchWriteItem" => body["RequestItems"]
            .as_object()
            .map(|m| {
                m.keys()
                    .map(|t| (operation.to_string(), t.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        "TransactWriteItems" | "TransactGetItems" => body["TransactItems"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .flat_map(|item| item.as_object().into_iter().flatten())
                    .map(|(kind, spec)| {
                        let action = match kind.as_str() {
                            "Put" => "PutItem",
                            "Update" => "UpdateItem",
                            "Delete" => "DeleteItem",
                            "ConditionCheck" => "ConditionCheckItem",
                            "Get" => "GetItem",
                            other => other,
                        };
                        (action.to_string(), table(spec))
                    })
                    .collect()
            })
            .unwrap_or_default(),
        _ => vec![(operation.to_string(), table(body))],
    }
}

/// IAM's name of a service, from the SDK's own name for it.
fn iam_service(sdk_name: &str) -> &'static str {
    match sdk_name {
        "DynamoDB" => DYNAMODB,
        "SESv2" => SES,
        _ if sdk_name
            .replace([' ', '-'], "")
            .eq_ignore_ascii_case("CognitoIdentityProvider") =>
        {
            COGNITO
        }
        _ if sdk_name
            .replace(' ', "")
            .eq_ignore_ascii_case("SecretsManager") =>
        {
            SECRETS_MANAGER
        }
        other => panic!("a call to a service the functions are not meant to use: {other}"),
    }
}

impl Intercept for Recorder {
    fn name(&self) -> &'static str {
        "SdkCallRecorder"
    }

    /// The call starts when the operation is issued (not when its bytes leave), so two calls
    /// issued together count as concurrent however the scheduler orders their sending.
    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(Started(Instant::now(), "?", "?".into(), vec![]));
        Ok(())
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let (service, operation) = cfg
            .load::<Metadata>()
            .map(|m| (iam_service(m.service()), m.name().to_string()))
            .ok_or("no operation metadata")?;
        let body: Value = context
            .request()
            .body()
            .bytes()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or(Value::Null);
        let start = cfg
            .load::<Started>()
            .map(|s| s.0)
            .unwrap_or_else(Instant::now);
        let actions = match service {
            DYNAMODB => dynamodb_actions(&operation, &body),
            SECRETS_MANAGER => vec![(
                operation.clone(),
                body["SecretId"].as_str().unwrap_or("?").to_string(),
            )],
            _ => vec![(operation.clone(), "*".to_string())],
        };
        cfg.interceptor_state()
            .store_put(Started(start, service, operation, actions));
        Ok(())
    }

    fn read_after_execution(
        &self,
        _context: &FinalizerInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(Started(start, service, operation, actions)) = cfg.load::<Started>().cloned() {
            self.calls.lock().expect("recorder lock").push(SdkCall {
                service,
                operation,
                actions,
                start,
                end: Instant::now(),
            });
        }
        Ok(())
    }
}

/// Appends what a function did to `$OBSERVED_DIR/<pid>.jsonl` (one line per service, action
/// and resource), where the test command compares it with the function's IAM policies.
pub fn observe(function: &str, calls: &[SdkCall]) {
    let Ok(dir) = std::env::var("OBSERVED_DIR") else {
        return;
    };
    use std::io::Write;
    let path = std::path::Path::new(&dir).join(format!("{}.jsonl", std::process::id()));
    let mut lines = String::new();
    for call in calls {
        for (action, resource) in &call.actions {
            let line = serde_json::json!({
                "function": function,
                "service": call.service,
                "action": action,
                "resource": resource,
            });
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
    }
    if lines.is_empty() {
        return;
    }
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = file.write_all(lines.as_bytes());
    }
}
