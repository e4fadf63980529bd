#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), shared::lambda_http::Error> {
    shared::init_tracing();
    let ctx = shared::Context::from_env().await?;
    shared::run(
        &ctx,
        shared::lambda_http::service_fn(|req| two_factor_status::handle(&ctx, req)),
    )
    .await
}
