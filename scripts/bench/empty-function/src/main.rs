//! An empty `lambda_runtime` function: the cold-start baseline of `scripts/dev bench`. It
//! answers every event with a fixed API Gateway response and builds no client, on the same
//! single-threaded tokio runtime and release profile as the real functions.
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(|_event: LambdaEvent<Value>| async {
        Ok::<Value, Error>(json!({
            "statusCode": 200,
            "headers": {"content-type": "application/json"},
            "body": "{}",
            "isBase64Encoded": false,
        }))
    }))
    .await
}
