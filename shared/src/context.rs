//! What a function builds once per cold start and shares, by reference, with every request.
use crate::auth::{self, Caller, TargetUser};
use crate::config::Config;
use crate::crypto::Keyring;
use crate::email::Mailer;
use crate::error::ApiError;
use crate::http;
use crate::routes::{self, Matched};
use crate::store::Store;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use lambda_http::Request;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

pub struct Context {
    pub config: Config,
    pub store: Store,
    pub mailer: Mailer,
    secrets: aws_sdk_secretsmanager::Client,
    /// Loaded on first use and kept; a failed load is retried by the next request, so an
    /// outage at cold start is a 503, not a crash loop.
    keyring: Arc<OnceCell<Keyring>>,
}

/// The SDK configuration every client of a function is built from (the standard AWS
/// environment chooses region, credentials and endpoints): explicit connect, per-attempt and
/// per-operation timeouts and at most 3 attempts with exponential backoff, so that an
/// unreachable, silent or throttling dependency becomes a 503 well inside the function's
/// 10 s timeout.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(https::client())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_millis(1000))
                .operation_attempt_timeout(Duration::from_millis(2000))
                .operation_timeout(Duration::from_millis(6000))
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .load()
        .await
}

/// The HTTPS client all the AWS clients of a function share: the SDK's own (hyper 1, rustls on
/// aws-lc), with two changes that take most of the SDK's cost out of a cold start
/// (`scripts/dev bench` measures it):
/// - it trusts Mozilla's root certificates compiled in (webpki-root-certs, the set rustls
///   projects ship) instead of reading the system's certificate store, which on Debian means
///   opening and parsing some 300 files;
/// - it builds its connector (and so its TLS configuration) once, when the first request needs
///   it, where the SDK's default builds one per client at start-up to load that store early.
mod https {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
    use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
    use aws_smithy_runtime_api::client::http::{
        HttpClient, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
    };
    use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;

    /// Connectors are built on demand and cached per connector settings by the inner client;
    /// `validate_base_client_config` keeps the trait's default (nothing), so constructing a
    /// client no longer builds and throws away a connector.
    #[derive(Debug)]
    struct OnFirstRequest(SharedHttpClient);

    impl HttpClient for OnFirstRequest {
        fn http_connector(
            &self,
            settings: &HttpConnectorSettings,
            components: &RuntimeComponents,
        ) -> SharedHttpConnector {
            self.0.http_connector(settings, components)
        }

        fn connector_metadata(&self) -> Option<ConnectorMetadata> {
            self.0.connector_metadata()
        }
    }

    pub fn client() -> SharedHttpClient {
        let mut roots = TrustStore::empty();
        for cert in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
            roots.add_pem_certificate(pem(cert));
        }
        let context = TlsContext::builder()
            .with_trust_store(roots)
            .build()
            .expect("a TLS context with only a trust store");
        let inner = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
            .tls_context(context)
            .build_https();
        SharedHttpClient::new(OnFirstRequest(inner))
    }

    /// A DER certificate as PEM, the form the SDK's trust store takes.
    fn pem(der: &[u8]) -> Vec<u8> {
        let body = aws_smithy_types::base64::encode(der);
        let mut out = b"-----BEGIN CERTIFICATE-----\n".to_vec();
        for (i, line) in body.as_bytes().chunks(64).enumerate() {
            if i > 0 {
                out.push(b'\n');
            }
            out.extend_from_slice(line);
        }
        out.extend_from_slice(b"\n-----END CERTIFICATE-----\n");
        out
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn pem_encodes_base64_in_64_character_lines() {
            let pem = String::from_utf8(super::pem(b"Man is distinguished")).unwrap();
            assert_eq!(
                pem,
                "-----BEGIN CERTIFICATE-----\nTWFuIGlzIGRpc3Rpbmd1aXNoZWQ=\n-----END CERTIFICATE-----\n"
            );
            let long = String::from_utf8(super::pem(&[0u8; 100])).unwrap();
            let body: Vec<&str> = long
                .lines()
                .skip(1)
                .take_while(|l| !l.starts_with("-----"))
                .collect();
            assert_eq!(
                body.iter().map(|l| l.len()).collect::<Vec<_>>(),
                vec![64, 64, 8]
            );
        }
    }
}

/// A request that passed routing, the size limit, authentication and its scope.
#[derive(Debug, Clone)]
pub struct Call {
    pub matched: Matched,
    pub caller: Caller,
    pub target: TargetUser,
}

impl Context {
    /// Builds the clients from the environment, with explicit timeouts and bounded retries
    /// so an unreachable dependency becomes a 503 well inside the function's timeout.
    pub async fn from_env() -> Result<Self, crate::config::MissingVar> {
        let config = Config::from_env()?;
        Ok(Self::new(config, &sdk_config().await))
    }

    pub fn new(config: Config, sdk: &aws_config::SdkConfig) -> Self {
        let store = Store::new(aws_sdk_dynamodb::Client::new(sdk), config.tables.clone());
        let mailer = Mailer::new(aws_sdk_sesv2::Client::new(sdk), config.email_sender.clone());
        Context {
            store,
            mailer,
            secrets: aws_sdk_secretsmanager::Client::new(sdk),
            keyring: Arc::new(OnceCell::new()),
            config,
        }
    }

    /// The same context over another store (an instrumented client, in tests and benchmarks),
    /// sharing the other clients and the loaded keys.
    pub fn with_store(&self, store: Store) -> Self {
        Context {
            config: self.config.clone(),
            store,
            mailer: self.mailer.clone(),
            secrets: self.secrets.clone(),
            keyring: self.keyring.clone(),
        }
    }

    /// The same context reading its keys through another Secrets Manager client (one that
    /// goes through a fault proxy, in tests), with no keys loaded yet: a cold start.
    pub fn with_secrets(mut self, secrets: aws_sdk_secretsmanager::Client) -> Self {
        self.secrets = secrets;
        self.keyring = Arc::new(OnceCell::new());
        self
    }

    /// Routes, size-checks, authenticates and authorises a request for `function`, and
    /// works out whose account it acts on.
    pub async fn authorize(&self, req: &Request, function: &str) -> Result<Call, ApiError> {
        let matched = routes::resolve(req.method().as_str(), req.uri().path())?;
        if matched.route.function != function {
            return Err(ApiError::NotFound);
        }
        http::check_body_size(req)?;
        let caller = auth::authenticate(&self.store, req).await?;
        caller.require(matched.route.scope)?;
        let target = auth::target(&caller, &matched)?;
        Ok(Call {
            matched,
            caller,
            target,
        })
    }

    /// The encryption keys, read from Secrets Manager once per cold start.
    pub async fn keyring(&self) -> Result<&Keyring, ApiError> {
        self.keyring
            .get_or_try_init(|| async {
                let id = self.config.encryption_secret_id.as_deref().ok_or_else(|| {
                    tracing::error!("ENCRYPTION_SECRET_ID is not set for a function that needs it");
                    ApiError::Internal
                })?;
                let out = self
                    .secrets
                    .get_secret_value()
                    .secret_id(id)
                    .send()
                    .await
                    .map_err(|e| ApiError::from_sdk("secrets.get", &e))?;
                Keyring::from_secret(out.secret_string().unwrap_or_default())
            })
            .await
    }
}
