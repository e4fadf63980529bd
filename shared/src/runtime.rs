//! The Lambda runtime loop every function with a [`Context`] runs: `lambda_http::run`, plus
//! the work no response waits for ([`Context::after_response`]: queued mail, the note of a
//! key's use), done after the response is posted and before the next event is asked for.
//! Lambda returns a posted response to the caller at once and freezes the environment only
//! when the runtime asks for the next event, so that work still runs in the same invocation,
//! and the caller no longer waits for it.
use crate::Context;
use lambda_http::lambda_runtime::Diagnostic;
use lambda_http::lambda_runtime::{layers::TracingLayer, LambdaInvocation, Runtime};
use lambda_http::tower::{layer::layer_fn, Service};
use lambda_http::{Adapter, Error, IntoResponse, Request};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

/// What every function's `main` does ([`crate::main!`]): JSON logs, then `body` on a
/// single-threaded runtime (an execution environment handles one event at a time).
pub fn start<Fut>(body: impl FnOnce() -> Fut) -> Result<(), Error>
where
    Fut: Future<Output = Result<(), Error>>,
{
    crate::init_tracing();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(body())
}

/// A function crate's whole `main.rs`: `shared::main!(get_user);` serves `get_user::handle`
/// with a [`Context`] built once per cold start; `shared::main!(fallback, without_context);`
/// serves a handler that needs no AWS client.
#[macro_export]
macro_rules! main {
    ($function:ident) => {
        fn main() -> ::std::result::Result<(), $crate::lambda_http::Error> {
            $crate::runtime::start(|| async {
                let ctx = $crate::Context::from_env().await?;
                let handler = |req| $function::handle(&ctx, req);
                $crate::run(&ctx, $crate::lambda_http::service_fn(handler)).await
            })
        }
    };
    ($function:ident, without_context) => {
        fn main() -> ::std::result::Result<(), $crate::lambda_http::Error> {
            $crate::runtime::start(|| {
                $crate::lambda_http::run($crate::lambda_http::service_fn($function::handle))
            })
        }
    };
}

/// The public face of an endpoint's crate, in its `lib.rs`: `shared::endpoint!(get);` gives
/// it `FUNCTION` (its crate's name, which the route table and template.yaml use) and the
/// Lambda handler `handle`, which answers with `get(ctx, req)` or its error's envelope.
#[macro_export]
macro_rules! endpoint {
    ($serve:ident) => {
        /// This function's name: its crate's, as the route table and template.yaml name it.
        pub const FUNCTION: &str = env!("CARGO_PKG_NAME");

        /// The Lambda handler: the request's answer, or its error in the envelope.
        pub async fn handle(
            ctx: &$crate::Context,
            req: $crate::lambda_http::Request,
        ) -> ::std::result::Result<
            $crate::lambda_http::Response<$crate::lambda_http::Body>,
            ::std::convert::Infallible,
        > {
            Ok($crate::http::serve(&req, |req| $serve(ctx, req)).await)
        }
    };
}

/// Runs `handler` for every event, and [`Context::after_response`] after each response.
pub async fn run<'a, S, R, E>(ctx: &Context, handler: S) -> Result<(), Error>
where
    S: Service<Request, Response = R, Error = E>,
    S::Future: Send + 'a,
    R: IntoResponse,
    E: std::fmt::Debug + Into<Diagnostic>,
{
    Runtime::new(Adapter::from(handler))
        .layer(layer_fn(|posting| AfterResponse::new(posting, ctx)))
        .layer(TracingLayer::new())
        .run()
        .await
}

/// What is left of an invocation's time when the work after its response is cut short.
const DEADLINE_MARGIN: Duration = Duration::from_millis(500);

/// Wraps the runtime's service that handles an invocation and posts its response.
pub struct AfterResponse<'c, S> {
    posting: S,
    ctx: &'c Context,
}

impl<'c, S> AfterResponse<'c, S> {
    /// Around `posting`, the service that answers an invocation and posts the response.
    pub fn new(posting: S, ctx: &'c Context) -> Self {
        AfterResponse { posting, ctx }
    }
}

impl<'c, S> Service<LambdaInvocation> for AfterResponse<'c, S>
where
    S: Service<LambdaInvocation, Response = (), Error = Error>,
    S::Future: 'c,
{
    type Response = ();
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<(), Error>> + 'c>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        self.posting.poll_ready(cx)
    }

    fn call(&mut self, invocation: LambdaInvocation) -> Self::Future {
        let deadline = invocation.context.deadline();
        let posted = self.posting.call(invocation);
        let ctx = self.ctx;
        Box::pin(async move {
            let result = posted.await;
            // Whether or not the response could be posted: the work belongs to this event. It
            // ends before the invocation's deadline, so that a stalled SES or DynamoDB cannot
            // turn an answered request into a timed-out one (and the next into a cold start).
            // A deadline already past is an emulator's that sets none (Lambda always does):
            // the SDK's own timeouts bound the work then.
            match deadline.duration_since(SystemTime::now()) {
                Ok(left) => {
                    let left = left.saturating_sub(DEADLINE_MARGIN);
                    if tokio::time::timeout(left, ctx.after_response())
                        .await
                        .is_err()
                    {
                        tracing::warn!("the work after the response was cut short by the deadline");
                    }
                }
                Err(_) => ctx.after_response().await,
            }
            result
        })
    }
}

/// What a request keeps for after its response: pushed while it runs, taken whole by
/// [`Context::after_response`]. Clones share the list.
#[derive(Debug)]
pub struct Queue<T>(Arc<Mutex<Vec<T>>>);

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue(Arc::default())
    }
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue(self.0.clone())
    }
}

impl<T> Queue<T> {
    pub fn push(&self, item: T) {
        self.lock().push(item);
    }

    /// Everything queued, leaving the queue empty.
    pub fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.lock())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Vec<T>> {
        // Only a panic while holding it poisons it (in tests; release builds abort), and the
        // list is whole then.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
