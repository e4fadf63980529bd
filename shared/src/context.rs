//! What a function builds once per cold start and shares, by reference, with every request.
use crate::auth::{self, ApiKeyHash, Authenticators, Caller, TargetUser};
use crate::config::Config;
use crate::crypto::Keyring;
use crate::email::Mailer;
use crate::error::ApiError;
use crate::http;
use crate::routes::{self, Matched};
use crate::runtime::Queue;
use crate::store::Store;
use crate::tokens::TokenVerifier;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use lambda_http::Request;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// A record naming a key the loaded keyring lacks makes the function read the secret again
/// (a key was added by a rotation since): at once for the first few key ids it has not met,
/// and otherwise not more often than this. Records are written only by these functions, yet
/// a forged key id must not make each request a Secrets Manager call.
pub const KEY_RELOAD_MIN_INTERVAL: Duration = Duration::from_secs(2);
/// How long the keys read are used before a request reads them again (a rotation's new
/// active key reaches a warm function's writes within this).
pub const KEYS_FRESH_FOR: Duration = Duration::from_secs(10 * 60);
/// DynamoDB connections a cold start opens while it starts ([`Context::warm_up`]): as many as
/// a request makes DynamoDB calls side by side (3: webauthn-verify-complete, the sign-in
/// check by passkey), so that calls made together at a cold start do not each open a
/// connection of their own, two round trips (TCP and TLS) before their own.
pub const DYNAMODB_CONNECTIONS_AT_INIT: u64 = 3;
/// Distinct unknown key ids that may each trigger a read of the secret at once.
const NEW_KEY_IDS_READ_AT_ONCE: usize = 4;

/// The keyring as last read, and when it was read. Loaded on first use (or in the
/// background at cold start) and kept; a failed load is retried by the next request, so an
/// outage at cold start is a 503, not a crash loop.
#[derive(Default)]
struct LoadedKeys {
    current: RwLock<Option<Arc<Keyring>>>,
    /// Serialises reads of the secret, and holds when the last one was made.
    load: tokio::sync::Mutex<Option<Instant>>,
    /// Unknown key ids that have already made the function read the secret again.
    reloaded_for: std::sync::Mutex<Vec<String>>,
}

impl LoadedKeys {
    fn get(&self) -> Option<Arc<Keyring>> {
        self.current.read().ok().and_then(|k| k.clone())
    }

    fn set(&self, keyring: Keyring) -> Arc<Keyring> {
        let keyring = Arc::new(keyring);
        if let Ok(mut current) = self.current.write() {
            *current = Some(keyring.clone());
        }
        keyring
    }
}

pub struct Context {
    pub config: Config,
    pub store: Store,
    pub mailer: Mailer,
    /// Only the functions that hold the encryption keys' secret id build this client.
    secrets: Option<aws_sdk_secretsmanager::Client>,
    /// The encryption keys as last read; shared with the contexts made from this one.
    keys: Arc<LoadedKeys>,
    /// Keys whose use is noted once the response is out ([`Context::after_response`]).
    used_keys: Queue<ApiKeyHash>,
    /// Sign-in token verification, where the deployment takes tokens; its cache of the
    /// issuer's keys is shared with the contexts made from this one.
    tokens: Option<Arc<TokenVerifier>>,
    /// The user pool that tells a Cognito access token's email at its first use.
    cognito: Option<aws_sdk_cognitoidentityprovider::Client>,
    /// Passkey ceremonies for the deployment's relying party, where it has one.
    webauthn: Option<Arc<webauthn_rs::Webauthn>>,
}

/// The SDK configuration every client of a function is built from (the standard AWS
/// environment chooses region, credentials and endpoints): explicit connect, per-attempt and
/// per-operation timeouts and at most 3 attempts with exponential backoff, so that an
/// unreachable, silent or throttling dependency becomes a 503 well inside the function's
/// 10 s timeout.
pub async fn sdk_config() -> aws_config::SdkConfig {
    loader().load().await
}

/// [`sdk_config`] as a Lambda function needs it: Lambda always hands the function its
/// credentials and region in the environment, so the rest of the default chains (profiles,
/// SSO, web identity with its STS client, container and instance metadata) is not built.
pub async fn lambda_sdk_config() -> aws_config::SdkConfig {
    let mut loader = loader().credentials_provider(
        aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
    );
    // Lambda sets AWS_REGION too; the region chain (profiles, instance metadata) is only built
    // without it.
    if let Some(region) = std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()) {
        loader = loader.region(aws_config::Region::new(region));
    }
    loader.load().await
}

fn loader() -> aws_config::ConfigLoader {
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
}

/// The HTTPS client all the AWS clients of a function share: the SDK's own (hyper 1, rustls on
/// aws-lc), with changes that take most of the SDK's cost out of a cold start (`scripts/dev
/// bench` measures it):
/// - it trusts the roots of Amazon Trust Services, the authority behind every AWS endpoint
///   these functions call (DynamoDB, Secrets Manager, SES, their FIPS and VPC endpoints),
///   taken from Mozilla's set compiled in (webpki-root-certs), instead of reading and parsing
///   the system's store of some 300 files at start-up; `AWS_CA_BUNDLE` (the SDKs' standard
///   setting) adds more, for an endpoint behind another authority;
/// - it builds its connector (and so its TLS configuration) once, when the first request needs
///   it, where the SDK's default builds one per client at start-up to load that store early.
pub mod https {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
    use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
    use aws_smithy_runtime_api::client::http::{
        HttpClient, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
    };
    use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;

    /// The Amazon Trust Services roots (Amazon Root CA 1 to 4, and the Starfield Services
    /// root that cross-signs them) as PEM, taken from webpki-root-certs: a unit test checks
    /// this file against that crate (and rewrites it with `UPDATE_AMAZON_ROOTS=1`), so
    /// start-up neither searches nor encodes the whole set.
    const AMAZON_ROOTS_PEM: &[u8] = include_bytes!("amazon-roots.pem");

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

    /// The certificates of a PEM bundle, if every one of them is one the TLS stack accepts as
    /// a root (the SDK would panic at the first request on one it cannot parse).
    pub fn parse_ca_bundle(pem: &[u8]) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        let mut check = rustls::RootCertStore::empty();
        for cert in &certs {
            check.add(cert.clone()).ok()?;
        }
        (!certs.is_empty()).then_some(certs)
    }

    /// The roots `AWS_CA_BUNDLE` names, if it is set; one that cannot be read or parsed is
    /// logged and left out, so requests to an endpoint that needs it fail (503), not the
    /// process.
    fn ca_bundle() -> Option<Vec<u8>> {
        let path = std::env::var_os("AWS_CA_BUNDLE").filter(|p| !p.is_empty())?;
        let pem = std::fs::read(&path)
            .ok()
            .filter(|pem| parse_ca_bundle(pem).is_some());
        if pem.is_none() {
            tracing::error!("AWS_CA_BUNDLE is not a readable PEM file of certificates: not used");
        }
        pem
    }

    pub fn client() -> SharedHttpClient {
        let mut roots = TrustStore::empty();
        roots.add_pem_certificate(AMAZON_ROOTS_PEM);
        if let Some(pem) = ca_bundle() {
            roots.add_pem_certificate(pem);
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

    /// The connector for calls beyond AWS (the token issuer's JWKS, at Auth0, Okta or a
    /// provider of the team's own): it trusts the public web's roots (Mozilla's set, compiled
    /// in), or, when `ca_bundle` names a PEM file, only the roots in it (a private issuer).
    /// Built on the first such call, never at start-up. `None` (logged) when the bundle
    /// cannot be read.
    pub fn web_connector(
        ca_bundle: Option<&std::path::Path>,
        connect_timeout: std::time::Duration,
    ) -> Option<aws_smithy_http_client::Connector> {
        let mut roots = TrustStore::empty();
        match ca_bundle {
            Some(path) => {
                let pem = std::fs::read(path)
                    .ok()
                    .filter(|pem| parse_ca_bundle(pem).is_some());
                let Some(pem) = pem else {
                    tracing::error!("TOKEN_CA_BUNDLE is not a readable PEM file of certificates");
                    return None;
                };
                roots.add_pem_certificate(pem);
            }
            None => {
                for cert in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
                    roots.add_pem_certificate(pem(cert.as_ref()));
                }
            }
        }
        let Ok(context) = TlsContext::builder().with_trust_store(roots).build() else {
            tracing::error!("no TLS context for the web's roots");
            return None;
        };
        let settings = HttpConnectorSettings::builder()
            .connect_timeout(connect_timeout)
            .read_timeout(connect_timeout * 2)
            .build();
        Some(
            aws_smithy_http_client::Connector::builder()
                .connector_settings(settings)
                .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
                .tls_context(context)
                .build(),
        )
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
        /// The roots in Mozilla's set (webpki-root-certs) whose subject is one of Amazon Trust
        /// Services'.
        fn amazon_roots() -> Vec<&'static [u8]> {
            let names: [&[u8]; 2] = [
                b"Amazon Root CA ",
                b"Starfield Services Root Certificate Authority - G2",
            ];
            webpki_root_certs::TLS_SERVER_ROOT_CERTS
                .iter()
                .map(|cert| cert.as_ref())
                .filter(|der| names.iter().any(|n| der.windows(n.len()).any(|w| w == *n)))
                .collect()
        }

        #[test]
        fn the_compiled_in_roots_are_webpki_root_certs_amazon_ones() {
            let expected: Vec<u8> = amazon_roots().into_iter().flat_map(super::pem).collect();
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/amazon-roots.pem");
            if std::env::var_os("UPDATE_AMAZON_ROOTS").is_some() {
                std::fs::write(path, &expected).unwrap();
            }
            assert_eq!(
                String::from_utf8_lossy(super::AMAZON_ROOTS_PEM),
                String::from_utf8_lossy(&expected),
                "shared/src/amazon-roots.pem differs from webpki-root-certs: rerun this test with UPDATE_AMAZON_ROOTS=1"
            );
            let certs = super::parse_ca_bundle(super::AMAZON_ROOTS_PEM).expect("parses");
            assert_eq!(certs.len(), 5);
        }

        #[test]
        fn trusts_the_five_amazon_trust_services_roots_only() {
            let names: Vec<String> = amazon_roots()
                .into_iter()
                .map(|der| {
                    let names = [
                        "Amazon Root CA 1",
                        "Amazon Root CA 2",
                        "Amazon Root CA 3",
                        "Amazon Root CA 4",
                        "Starfield Services Root Certificate Authority - G2",
                    ];
                    let found: Vec<&str> = names
                        .into_iter()
                        .filter(|n| der.windows(n.len()).any(|w| w == n.as_bytes()))
                        .collect();
                    assert_eq!(found.len(), 1, "one name per root");
                    found[0].to_string()
                })
                .collect();
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(
                sorted,
                [
                    "Amazon Root CA 1",
                    "Amazon Root CA 2",
                    "Amazon Root CA 3",
                    "Amazon Root CA 4",
                    "Starfield Services Root Certificate Authority - G2"
                ]
            );
            // Each one parses as a trust anchor.
            for der in amazon_roots() {
                assert!(super::parse_ca_bundle(&super::pem(der)).is_some());
            }
        }

        /// .cargo/config.toml's `[env]` reaches every build of the workspace (cargo, cargo
        /// lambda, sam build), aws-lc-sys's build script included: without it each process
        /// spends about 30 ms of CPU on CPU-jitter entropy before its first TLS handshake.
        #[test]
        fn aws_lc_is_built_without_cpu_jitter_entropy() {
            assert_eq!(
                option_env!("AWS_LC_SYS_NO_JITTER_ENTROPY"),
                Some("1"),
                "build from the workspace, whose .cargo/config.toml sets it"
            );
        }

        #[test]
        fn a_ca_bundle_that_is_not_pem_certificates_is_refused() {
            assert!(super::parse_ca_bundle(b"").is_none());
            assert!(super::parse_ca_bundle(b"not a certificate").is_none());
            let junk = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
            assert!(super::parse_ca_bundle(junk.as_bytes()).is_none());
        }

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
    /// The Lambda request id ("-" outside Lambda), for the audit trail.
    pub request_id: String,
}

impl Call {
    /// The caller as the audit trail records it.
    pub fn actor(&self) -> crate::security_events::Actor {
        crate::security_events::Actor::caller(&self.caller, &self.request_id)
    }
}

impl Context {
    /// Builds the clients from the environment, with explicit timeouts and bounded retries
    /// so an unreachable dependency becomes a 503 well inside the function's timeout.
    ///
    /// A function that holds the encryption keys starts reading them here, in the
    /// background, so the read overlaps the wait for the first event and the first request's
    /// own calls instead of following them.
    pub async fn from_env() -> Result<Self, crate::config::MissingVar> {
        let config = Config::from_env()?;
        let ctx = Self::new(config, &lambda_sdk_config().await);
        ctx.warm_up();
        Ok(ctx)
    }

    pub fn new(config: Config, sdk: &aws_config::SdkConfig) -> Self {
        let store = Store::new(aws_sdk_dynamodb::Client::new(sdk), config.tables.clone());
        let mailer = Mailer::lazy(sdk, config.email_sender.clone());
        let secrets = config
            .encryption_secret_id
            .as_ref()
            .map(|_| aws_sdk_secretsmanager::Client::new(sdk));
        let tokens = config.tokens.clone().map(TokenVerifier::new);
        // The pool's own region, which the issuer names (it may differ from the function's).
        let cognito = tokens
            .as_ref()
            .and_then(|t| t.settings.cognito_region())
            .map(|region| {
                let conf = aws_sdk_cognitoidentityprovider::config::Builder::from(sdk)
                    .region(aws_config::Region::new(region.to_string()))
                    .build();
                aws_sdk_cognitoidentityprovider::Client::from_conf(conf)
            });
        // Checked by Config::from_env, so this only fails for a hand-made Config.
        let webauthn = config
            .relying_party
            .as_ref()
            .and_then(|party| party.webauthn().ok())
            .map(Arc::new);
        Context {
            store,
            mailer,
            secrets,
            keys: Arc::default(),
            used_keys: Queue::default(),
            tokens: tokens.map(Arc::new),
            cognito,
            webauthn,
            config,
        }
    }

    /// Where this function reads its keys from, if it has them.
    fn key_source(&self) -> Option<(&aws_sdk_secretsmanager::Client, &str)> {
        Some((
            self.secrets.as_ref()?,
            self.config.encryption_secret_id.as_deref()?,
        ))
    }

    /// Starts, in the background on the current runtime, what a cold start's first request
    /// would otherwise wait for, so that it overlaps the wait for the event and that request's
    /// own first calls (`scripts/dev bench --network` measures each):
    /// - the read of the encryption keys, if this function has them. A request that needs them
    ///   waits for this read rather than starting its own; if it fails, the request reads them
    ///   again. A request that fails authentication never waits for it;
    /// - unless `CONNECT_DURING_INIT` is false, [`DYNAMODB_CONNECTIONS_AT_INIT`] connections to
    ///   DynamoDB, each opened by reading an API key that cannot exist and kept for the
    ///   requests: an event that comes after
    ///   Lambda's init finds it open, and a sign-in token's first request finds it open once
    ///   the issuer's keys are fetched (lazily, at the first token: a function that only sees
    ///   API keys never calls the issuer); an event already waiting races it with its own.
    pub fn warm_up(&self) {
        if let Some((secrets, id)) = self.key_source() {
            let (keys, secrets, id) = (self.keys.clone(), secrets.clone(), id.to_string());
            tokio::spawn(async move {
                // Let the runtime ask for the first event first: this task's own work
                // (building and signing the request) then overlaps that wait instead of
                // delaying it.
                tokio::task::yield_now().await;
                let mut last_load = keys.load.lock().await;
                if keys.get().is_none() {
                    if let Ok(keyring) = read_keyring(&secrets, &id).await {
                        keys.set(keyring);
                        *last_load = Some(Instant::now());
                    }
                }
            });
        }
        if !self.config.connect_during_init {
            return;
        }
        for _ in 0..DYNAMODB_CONNECTIONS_AT_INIT {
            let store = self.store.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                store.connect().await;
            });
        }
    }

    /// The same context over another store (an instrumented client, in tests and benchmarks),
    /// sharing the other clients and the loaded keys; what it queues for after the response is
    /// its own, so that concurrent requests through such contexts keep theirs apart.
    pub fn with_store(&self, store: Store) -> Self {
        Context {
            config: self.config.clone(),
            store,
            mailer: self.mailer.with_own_outbox(),
            secrets: self.secrets.clone(),
            keys: self.keys.clone(),
            used_keys: Queue::default(),
            tokens: self.tokens.clone(),
            cognito: self.cognito.clone(),
            webauthn: self.webauthn.clone(),
        }
    }

    /// The relying party's passkey ceremonies, or the 400 of a deployment without one.
    pub fn webauthn(&self) -> Result<&webauthn_rs::Webauthn, ApiError> {
        self.webauthn
            .as_deref()
            .ok_or_else(crate::passkeys::passkeys_off)
    }

    /// The same context verifying tokens with other settings (a test's own issuer), with its
    /// own, empty cache of the issuer's keys.
    pub fn with_token_settings(mut self, settings: crate::tokens::TokenSettings) -> Self {
        self.config.tokens = Some(settings.clone());
        self.tokens = Some(Arc::new(TokenVerifier::new(settings)));
        self
    }

    /// The same context with every client's calls also going through `interceptor` (tests
    /// and benchmarks count what a request calls, and on which resource), sharing the loaded
    /// keys; what it queues for after the response is its own, as with [`Context::with_store`].
    pub fn instrumented<I>(&self, interceptor: I) -> Self
    where
        I: Intercept + Clone + 'static,
    {
        let db = &self.store.db;
        let db = db
            .config()
            .to_builder()
            .interceptor(interceptor.clone())
            .build();
        let mut ctx = self.with_store(Store::new(
            aws_sdk_dynamodb::Client::from_conf(db),
            self.store.tables.clone(),
        ));
        ctx.mailer = self.mailer.instrumented(interceptor.clone());
        ctx.cognito = self.cognito.as_ref().map(|cognito| {
            let conf = cognito
                .config()
                .to_builder()
                .interceptor(interceptor.clone())
                .build();
            aws_sdk_cognitoidentityprovider::Client::from_conf(conf)
        });
        ctx.secrets = self.secrets.as_ref().map(|secrets| {
            let conf = secrets
                .config()
                .to_builder()
                .interceptor(interceptor)
                .build();
            aws_sdk_secretsmanager::Client::from_conf(conf)
        });
        ctx
    }

    /// The same context with no keys loaded yet, as at a cold start: its first request that
    /// needs them reads the secret.
    pub fn with_keys_unloaded(mut self) -> Self {
        self.keys = Arc::default();
        self
    }

    /// The same context reading its keys through another Secrets Manager client (one that
    /// goes through a fault proxy, in tests), with no keys loaded yet: a cold start.
    pub fn with_secrets(mut self, secrets: aws_sdk_secretsmanager::Client) -> Self {
        self.secrets = Some(secrets);
        self.keys = Arc::default();
        self
    }

    /// Routes, size-checks, authenticates and authorises a request for `function`, and
    /// works out whose account it acts on. A key due a note of its use is queued for
    /// [`Context::after_response`].
    pub async fn authorize(&self, req: &Request, function: &str) -> Result<Call, ApiError> {
        let matched = routes::resolve(req.method().as_str(), req.uri().path())?;
        if matched.route.function != function {
            return Err(ApiError::NotFound);
        }
        http::check_body_size(req)?;
        let authenticators = Authenticators {
            store: &self.store,
            tokens: self.tokens.as_deref(),
            cognito: self.cognito.as_ref(),
            events_retention_days: self.config.security_events_retention_days,
        };
        let caller = auth::authenticate(authenticators, req, matched.route.scope).await?;
        if let Some(key) = &caller.key_to_note {
            self.used_keys.push(key.clone());
        }
        caller.require(matched.route.scope)?;
        let target = auth::target(&caller, &matched)?;
        Ok(Call {
            matched,
            caller,
            target,
            request_id: http::request_id(req).to_string(),
        })
    }

    /// A record of `event` on `user`'s account by `actor`, kept as long as the deployment says.
    pub fn security_event(
        &self,
        user: crate::users::UserId,
        event: crate::security_events::EventKind,
        actor: &crate::security_events::Actor,
    ) -> crate::security_events::SecurityEvent {
        crate::security_events::SecurityEvent::new(
            user,
            event,
            actor,
            self.config.security_events_retention_days,
        )
    }

    /// [`Context::security_event`] by the caller of `call`.
    pub fn event_by(
        &self,
        call: &Call,
        user: crate::users::UserId,
        event: crate::security_events::EventKind,
    ) -> crate::security_events::SecurityEvent {
        self.security_event(user, event, &call.actor())
    }

    /// The work no response waits for, done after it is posted ([`crate::run`]): the mail the
    /// request queued, and the note of its key's use (PostHog's `last_used_at`, at most hourly).
    /// A failure is logged and changes nothing else.
    pub async fn after_response(&self) {
        tokio::join!(self.mailer.send_queued(), self.note_used_keys());
    }

    async fn note_used_keys(&self) {
        let keys = self.used_keys.take();
        if keys.is_empty() {
            return;
        }
        let micros = crate::clock::now_micros();
        let now = crate::clock::iso_at_micros(micros);
        let since = crate::clock::iso_at_micros(
            micros.saturating_sub(auth::KEY_USE_NOTED_EVERY_SECS * 1_000_000),
        );
        for key in keys {
            if let Err(err) = self.store.note_api_key_used(&key, &now, &since).await {
                tracing::warn!(error = %err, "the key's use could not be noted");
            }
        }
    }

    /// The encryption keys, read from Secrets Manager once per cold start, and again once
    /// they are [`KEYS_FRESH_FOR`] old, so that after a rotation a warm function also writes
    /// with the new active key (the request that finds them stale reads them; the others go
    /// on with the keys in hand, and a failed read keeps them).
    pub async fn keyring(&self) -> Result<Arc<Keyring>, ApiError> {
        if let Some(keyring) = self.keys.get() {
            if let Ok(mut last_load) = self.keys.load.try_lock() {
                if last_load.is_some_and(|at| at.elapsed() >= KEYS_FRESH_FOR) {
                    match self.read_keys().await {
                        Ok(fresh) => {
                            *last_load = Some(Instant::now());
                            return Ok(self.keys.set(fresh));
                        }
                        Err(_) => {
                            // Keep the keys in hand; try again after another period, not on
                            // every request of an outage.
                            *last_load = Some(Instant::now());
                            tracing::warn!("the encryption keys could not be read again");
                        }
                    }
                }
            }
            return Ok(keyring);
        }
        let mut last_load = self.keys.load.lock().await;
        if let Some(keyring) = self.keys.get() {
            return Ok(keyring);
        }
        let keyring = self.read_keys().await?;
        *last_load = Some(Instant::now());
        Ok(self.keys.set(keyring))
    }

    /// The encryption keys, with every key that `key_ids` name: a record written with a key
    /// added since this function read the secret (a rotation while it was warm) makes it read
    /// the secret again: at once for a key id it has not met (up to a few), else at most once
    /// per [`KEY_RELOAD_MIN_INTERVAL`]. A key the secret does not have is a 500 (logged),
    /// never a reload per request.
    pub async fn keyring_for(&self, key_ids: &[&str]) -> Result<Arc<Keyring>, ApiError> {
        let knows_all = |k: &Keyring| key_ids.iter().all(|id| k.knows(id));
        let keyring = self.keyring().await?;
        if knows_all(&keyring) {
            return Ok(keyring);
        }
        let mut last_load = self.keys.load.lock().await;
        if let Some(keyring) = self.keys.get().filter(|k| knows_all(k)) {
            return Ok(keyring); // another request read it meanwhile
        }
        let first_sight = {
            let mut seen = self
                .keys
                .reloaded_for
                .lock()
                .map_err(|_| ApiError::internal("keys.reloaded_for", "lock poisoned"))?;
            let new: Vec<&str> = key_ids
                .iter()
                .copied()
                .filter(|id| !seen.iter().any(|s| s == id))
                .collect();
            let fresh = !new.is_empty() && seen.len() + new.len() <= NEW_KEY_IDS_READ_AT_ONCE;
            if fresh {
                seen.extend(new.into_iter().map(str::to_string));
            }
            fresh
        };
        if !first_sight && last_load.is_some_and(|at| at.elapsed() < KEY_RELOAD_MIN_INTERVAL) {
            tracing::error!(
                "a record names an encryption key id not in the key store when last read"
            );
            return Err(ApiError::Internal);
        }
        let keyring = self.read_keys().await?;
        *last_load = Some(Instant::now());
        let keyring = self.keys.set(keyring);
        if !knows_all(&keyring) {
            tracing::error!("a record names an encryption key id the key store does not have");
            return Err(ApiError::Internal);
        }
        tracing::info!("encryption keys read again: a record named a newer key");
        Ok(keyring)
    }

    /// [`Context::keyring_for`] the keys that these ciphertexts name.
    pub async fn keyring_opening(&self, sealed: &[&[u8]]) -> Result<Arc<Keyring>, ApiError> {
        let ids: Vec<&str> = sealed
            .iter()
            .filter_map(|s| crate::crypto::key_id_of(s))
            .collect();
        self.keyring_for(&ids).await
    }

    async fn read_keys(&self) -> Result<Keyring, ApiError> {
        let Some((secrets, id)) = self.key_source() else {
            tracing::error!("ENCRYPTION_SECRET_ID is not set for a function that needs it");
            return Err(ApiError::Internal);
        };
        read_keyring(secrets, id).await
    }
}

async fn read_keyring(
    secrets: &aws_sdk_secretsmanager::Client,
    id: &str,
) -> Result<Keyring, ApiError> {
    let out = secrets
        .get_secret_value()
        .secret_id(id)
        .send()
        .await
        .map_err(|e| ApiError::from_sdk("secrets.get", &e))?;
    Keyring::from_secret(out.secret_string().unwrap_or_default())
}
