/// Needs no AWS client: it only answers with the envelope.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), shared::lambda_http::Error> {
    shared::init_tracing();
    shared::lambda_http::run(shared::lambda_http::service_fn(fallback::handle)).await
}
