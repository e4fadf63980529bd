//! Sign-in tokens: JWT access tokens from the deployment's issuer (a Cognito user pool, or any
//! OpenID provider), verified in the function against the issuer's published keys (JWKS), so
//! that the same code runs deployed, locally and behind a Function URL. Who the token's
//! subject is in this API is `identities`' business; this module only says whether a token is
//! genuine, current, meant for this API, and what it allows.
use crate::config::{optional, required, MissingVar};
use crate::error::ApiError;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

/// Tokens longer than this are refused before any parsing (Cognito's are 1–2 KB).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Clock skew allowed on `exp`, `nbf` and `iat`.
pub const LEEWAY_SECS: u64 = 60;
/// A token naming a key the cached JWKS lacks makes the function fetch the JWKS again at most
/// this often, so that forged key ids cannot make it hammer the provider.
pub const UNKNOWN_KID_REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);
/// Keys fetched this long ago are fetched again at the next token (the issuer may have
/// withdrawn one); the keys in hand stay in use if that fetch fails.
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(60 * 60);
/// After a failed fetch with no keys in hand, requests answer 503 for this long before the
/// next one tries again (an outage is not met with a fetch per request).
pub const FAILED_FETCH_RETRY_AFTER: Duration = Duration::from_secs(1);
/// The JWKS document is refused beyond this size.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Connect and read limits of the JWKS fetch, well inside the function's timeout.
const JWKS_CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_millis(3000);

/// What a deployment does on a token's first use, when no identity link names its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewIdentity {
    /// 401: only links made by `users-admin link-identity` count.
    Refuse,
    /// Link to the active user whose address is the token's verified email; else 401.
    LinkByEmail,
    /// As `LinkByEmail`, and when no user has that address, create one.
    CreateUser,
}

impl NewIdentity {
    fn parse(value: &str) -> Option<Self> {
        match value {
            "refuse" => Some(NewIdentity::Refuse),
            "link-by-email" => Some(NewIdentity::LinkByEmail),
            "create-user" => Some(NewIdentity::CreateUser),
            _ => None,
        }
    }
}

/// The deployment's token settings (`TOKEN_*` variables; template parameters).
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// The exact `iss` accepted.
    pub issuer: String,
    /// Where the issuer's keys are (`<issuer>/.well-known/jwks.json` unless set).
    pub jwks_url: String,
    /// Accepted `aud` values, or app client ids (`client_id`, Cognito's access tokens).
    pub audiences: Vec<String>,
    /// App clients whose tokens may read and write the user's account without naming a scope
    /// (the team's own apps).
    pub first_party_clients: Vec<String>,
    /// Scopes count also under this prefix (Cognito's `<resource server>/user:write`).
    pub scope_prefix: String,
    pub new_identity: NewIdentity,
    /// PEM roots trusted for the JWKS fetch instead of the public web's (a private issuer).
    pub ca_bundle: Option<PathBuf>,
}

fn list(value: Option<String>) -> Vec<String> {
    value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

impl TokenSettings {
    /// `None` when `TOKEN_ISSUER` is empty: the deployment takes personal API keys only.
    pub fn from_env() -> Result<Option<Self>, MissingVar> {
        let Some(issuer) = optional("TOKEN_ISSUER") else {
            return Ok(None);
        };
        let audiences = list(Some(required("TOKEN_AUDIENCES")?));
        if audiences.is_empty() {
            return Err(MissingVar("TOKEN_AUDIENCES"));
        }
        let new_identity = match optional("TOKEN_NEW_IDENTITY") {
            None => NewIdentity::Refuse,
            Some(v) => NewIdentity::parse(&v).ok_or(MissingVar("TOKEN_NEW_IDENTITY"))?,
        };
        Ok(Some(TokenSettings {
            jwks_url: optional("TOKEN_JWKS_URL").unwrap_or_else(|| default_jwks_url(&issuer)),
            issuer,
            audiences,
            first_party_clients: list(optional("TOKEN_FIRST_PARTY_CLIENTS")),
            scope_prefix: optional("TOKEN_SCOPE_PREFIX").unwrap_or_default(),
            new_identity,
            ca_bundle: optional("TOKEN_CA_BUNDLE").map(PathBuf::from),
        }))
    }

    /// The region of a Cognito user pool issuer (`https://cognito-idp.<region>.amazonaws.com/<pool>`):
    /// its access tokens carry no email, which Cognito's `GetUser` then tells.
    pub fn cognito_region(&self) -> Option<&str> {
        let host = self.issuer.strip_prefix("https://")?.split('/').next()?;
        let region = host
            .strip_prefix("cognito-idp.")?
            .strip_suffix(".amazonaws.com")?;
        (!region.is_empty() && !region.contains('.')).then_some(region)
    }
}

pub fn default_jwks_url(issuer: &str) -> String {
    format!("{}/.well-known/jwks.json", issuer.trim_end_matches('/'))
}

/// A refusal: logged by its reason, answered 401 with `WWW-Authenticate: Bearer
/// error="invalid_token"`.
pub fn refused(reason: &'static str) -> ApiError {
    let detail = match reason {
        "expired" => "The access token has expired.",
        "not_linked" | "staff_account" | "account_address_not_verified" => {
            "No account is linked to this sign-in."
        }
        "email_not_verified" => {
            "No account is linked to this sign-in, and its email address is not verified."
        }
        _ => "The access token is invalid.",
    };
    tracing::info!(reason, "sign-in refused");
    ApiError::InvalidToken { reason, detail }
}

/// Whether a credential has the shape of a JWT (three base64url segments), so it is checked
/// as a token, not looked up as a key. Cheap, no decoding.
pub fn looks_like_jwt(credential: &str) -> bool {
    let segments = credential.split('.').count();
    segments == 3
        && credential
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// A genuine, current access token for this API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub issuer: String,
    pub subject: String,
    /// The app client (`client_id`, else the matching `aud`).
    pub client: String,
    /// `user:read`, `user:write` or `*`, as granted (the prefix taken off).
    pub scopes: Vec<String>,
    /// The `email` claim, and whether `email_verified` says it was verified.
    pub email: Option<String>,
    pub email_verified: bool,
    /// The first 8 letters and digits of the token's `jti`, for the audit trail.
    pub token_id: Option<String>,
}

/// `aud` and `scp` come as a string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn values(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(v) => v.split(' ').filter(|s| !s.is_empty()).collect(),
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// `email_verified` is a boolean in most providers' tokens, the string "true" in some.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Flag {
    Bool(bool),
    Text(String),
}

#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    #[serde(default)]
    aud: Option<OneOrMany>,
    #[serde(default)]
    client_id: Option<String>,
    /// The app client, where `aud` names the API (OpenID's `azp`; Okta's `cid`).
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    cid: Option<String>,
    /// Claims only ID tokens carry: such a token is refused even without `token_use`.
    #[serde(default)]
    nonce: Option<serde_json::Value>,
    #[serde(default)]
    at_hash: Option<serde_json::Value>,
    #[serde(default)]
    c_hash: Option<serde_json::Value>,
    #[serde(default)]
    token_use: Option<String>,
    #[serde(default)]
    iat: Option<f64>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<OneOrMany>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<Flag>,
    #[serde(default)]
    jti: Option<String>,
}

/// The scopes this API knows, as a token grants them.
const SCOPES: [&str; 3] = ["*", "user:read", "user:write"];

impl TokenSettings {
    /// Checks the claims signature verification left: audience, kind of token, issue time,
    /// and reads the scopes and email.
    fn accept(&self, claims: Claims, now_secs: u64) -> Result<VerifiedToken, ApiError> {
        if claims.token_use.as_deref().is_some_and(|u| u != "access")
            || claims.nonce.is_some()
            || claims.at_hash.is_some()
            || claims.c_hash.is_some()
        {
            return Err(refused("not_an_access_token"));
        }
        if claims
            .iat
            .is_some_and(|iat| iat > (now_secs + LEEWAY_SECS) as f64)
        {
            return Err(refused("issued_in_the_future"));
        }
        if claims.sub.is_empty() {
            return Err(refused("no_subject"));
        }
        let accepted = |v: &str| self.audiences.iter().any(|a| a == v);
        // A Cognito access token names its app client in `client_id` (and has no `aud`): that
        // client must be accepted. Other issuers' tokens name the API in `aud`, and the app
        // client, if at all, in `azp` (or `cid`): only that may make a client first-party.
        let (client, app) = match claims.client_id.as_deref() {
            Some(client) if accepted(client) => (client.to_string(), Some(client.to_string())),
            Some(_) => return Err(refused("audience")),
            None => {
                let audience = claims
                    .aud
                    .as_ref()
                    .map(OneOrMany::values)
                    .unwrap_or_default();
                let matched = audience
                    .into_iter()
                    .find(|a| accepted(a))
                    .ok_or_else(|| refused("audience"))?;
                (
                    matched.to_string(),
                    claims.azp.clone().or(claims.cid.clone()),
                )
            }
        };
        let mut granted: Vec<&str> = claims.scope.as_deref().unwrap_or("").split(' ').collect();
        if let Some(scp) = &claims.scp {
            granted.extend(scp.values());
        }
        let mut scopes: Vec<String> = Vec::new();
        for scope in granted {
            let bare = match self.scope_prefix.as_str() {
                "" => scope,
                prefix => scope.strip_prefix(prefix).unwrap_or(scope),
            };
            if SCOPES.contains(&bare) && !scopes.iter().any(|s| s == bare) {
                scopes.push(bare.to_string());
            }
        }
        if app.is_some_and(|app| self.first_party_clients.contains(&app)) {
            for scope in ["user:read", "user:write"] {
                if !scopes.iter().any(|s| s == scope) {
                    scopes.push(scope.to_string());
                }
            }
        }
        let email_verified = matches!(claims.email_verified, Some(Flag::Bool(true)))
            || matches!(&claims.email_verified, Some(Flag::Text(t)) if t == "true");
        Ok(VerifiedToken {
            issuer: claims.iss,
            subject: claims.sub,
            client,
            scopes,
            email: claims.email.filter(|e| !e.is_empty()),
            email_verified,
            token_id: claims
                .jti
                .map(|jti| {
                    jti.chars()
                        .filter(char::is_ascii_alphanumeric)
                        .take(8)
                        .collect::<String>()
                })
                .filter(|id| !id.is_empty()),
        })
    }
}

/// Whether a published key may verify a token signed with `alg`: the algorithm this API
/// takes for the key's type (RSA: RS256; EC P-256: ES256), and the key's own `alg` and `use`,
/// when it states them, agreeing. An HMAC (`oct`) key never verifies anything: the issuer's
/// keys are public, and a public key used as an HMAC secret is the classic forgery.
fn key_fits(jwk: &Jwk, alg: Algorithm) -> bool {
    let type_fits = match (&jwk.algorithm, alg) {
        (AlgorithmParameters::RSA(_), Algorithm::RS256) => true,
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) => {
            ec.curve == EllipticCurve::P256
        }
        _ => false,
    };
    let alg_fits = match jwk.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
        Some(_) => false,
    };
    let use_fits = matches!(
        jwk.common.public_key_use,
        None | Some(PublicKeyUse::Signature)
    );
    type_fits && alg_fits && use_fits
}

/// How long a subject whose first use was refused is refused again without looking further
/// (no Cognito `GetUser`, no address lookup), so that one unlinked account cannot make each
/// request cost those calls.
pub const FIRST_USE_REFUSAL_KEPT: Duration = Duration::from_secs(30);
/// Refusals kept at most (past that, the expired go, then all).
const FIRST_USE_REFUSALS_KEPT: usize = 1024;

/// Verifies tokens of one issuer, with its keys fetched on the first token and cached.
pub struct TokenVerifier {
    pub settings: TokenSettings,
    jwks: Jwks,
    /// Subjects (identity keys) whose first use was refused lately, and why.
    refused_first_uses:
        std::sync::Mutex<std::collections::HashMap<String, (Instant, &'static str)>>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("issuer", &self.settings.issuer)
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    pub fn new(settings: TokenSettings) -> Self {
        let jwks = Jwks::new(settings.jwks_url.clone(), settings.ca_bundle.clone());
        TokenVerifier {
            settings,
            jwks,
            refused_first_uses: Default::default(),
        }
    }

    /// A first use of this identity refused within [`FIRST_USE_REFUSAL_KEPT`], as its refusal.
    pub fn refused_lately(&self, identity: &str) -> Option<ApiError> {
        let refusals = self.refused_first_uses.lock().ok()?;
        let (at, reason) = refusals.get(identity)?;
        (at.elapsed() < FIRST_USE_REFUSAL_KEPT).then(|| refused(reason))
    }

    /// Notes a refused first use (see [`TokenVerifier::refused_lately`]).
    pub fn note_refusal(&self, identity: &str, error: &ApiError) {
        let ApiError::InvalidToken { reason, .. } = error else {
            return; // a 503 is tried again at once
        };
        if let Ok(mut refusals) = self.refused_first_uses.lock() {
            if refusals.len() >= FIRST_USE_REFUSALS_KEPT {
                refusals.retain(|_, (at, _)| at.elapsed() < FIRST_USE_REFUSAL_KEPT);
                if refusals.len() >= FIRST_USE_REFUSALS_KEPT {
                    refusals.clear();
                }
            }
            refusals.insert(identity.to_string(), (Instant::now(), reason));
        }
    }

    /// Checks a token to the letter: size, shape, `alg` (RS256 or ES256 only, and the one its
    /// key is for), signature against the issuer's key named by `kid`, `iss` exactly, `exp`,
    /// `nbf` and `iat` within [`LEEWAY_SECS`], the audience (`aud` or `client_id`), and
    /// `token_use` (an ID token is refused). A provider that cannot be reached is a 503.
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, ApiError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(refused("too_large"));
        }
        if !looks_like_jwt(token) {
            return Err(refused("malformed"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| refused("malformed"))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(refused("algorithm"));
        }
        let kid = header.kid.as_deref().ok_or_else(|| refused("no_key_id"))?;
        let jwk = self.jwks.key(kid).await?;
        if !key_fits(&jwk, header.alg) {
            return Err(refused("algorithm_does_not_fit_the_key"));
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| refused("unusable_key"))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.validate_aud = false; // `aud` or `client_id`: checked in `accept`
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            refused(match e.kind() {
                ErrorKind::ExpiredSignature => "expired",
                ErrorKind::ImmatureSignature => "not_yet_valid",
                ErrorKind::InvalidIssuer => "issuer",
                ErrorKind::InvalidSignature => "signature",
                ErrorKind::InvalidAlgorithm => "algorithm",
                ErrorKind::MissingRequiredClaim(_) => "missing_claim",
                _ => "malformed",
            })
        })?;
        self.settings.accept(data.claims, crate::clock::now_secs())
    }
}

/// The issuer's keys as last fetched, and when.
#[derive(Default)]
struct JwksFetches {
    last_fetch: Option<Instant>,
    last_failure: Option<Instant>,
}

/// The issuer's published keys: fetched when the first token arrives (never at start-up, so
/// a function that only ever sees API keys never calls the provider), kept for the life of the
/// process, and fetched again only for a key id it does not know, at most once per
/// [`UNKNOWN_KID_REFRESH_EVERY`].
struct Jwks {
    url: String,
    ca_bundle: Option<PathBuf>,
    keys: RwLock<Option<Arc<Vec<Jwk>>>>,
    /// When the keys in hand were fetched.
    fetched_at: RwLock<Option<Instant>>,
    fetches: tokio::sync::Mutex<JwksFetches>,
    connector: OnceLock<Option<aws_smithy_http_client::Connector>>,
}

impl Jwks {
    fn new(url: String, ca_bundle: Option<PathBuf>) -> Self {
        Jwks {
            url,
            ca_bundle,
            keys: RwLock::default(),
            fetched_at: RwLock::default(),
            fetches: tokio::sync::Mutex::default(),
            connector: OnceLock::new(),
        }
    }

    fn cached(&self, kid: &str) -> (bool, Option<Jwk>) {
        let keys = self.keys.read().ok().and_then(|k| k.clone());
        match keys {
            None => (false, None),
            Some(keys) => (
                true,
                keys.iter()
                    .find(|k| k.common.key_id.as_deref() == Some(kid))
                    .cloned(),
            ),
        }
    }

    /// Keeps a fetch's keys and notes when they were fetched.
    fn fetched(&self, fetches: &mut JwksFetches, keys: Vec<Jwk>) {
        fetches.last_fetch = Some(Instant::now());
        fetches.last_failure = None;
        self.keep(keys);
        if let Ok(mut at) = self.fetched_at.write() {
            *at = Some(Instant::now());
        }
    }

    async fn key(&self, kid: &str) -> Result<Jwk, ApiError> {
        if let (_, Some(jwk)) = self.cached(kid) {
            if !self.stale() {
                return Ok(jwk);
            }
        }
        let mut fetches = self.fetches.lock().await;
        let (loaded, found) = self.cached(kid);
        let stale = fetches
            .last_fetch
            .is_some_and(|at| at.elapsed() >= JWKS_MAX_AGE);
        if let Some(jwk) = found {
            if !stale {
                return Ok(jwk); // fetched by another request meanwhile
            }
            // Old keys: fetch them again; if that fails, the keys in hand go on serving.
            match self.fetch().await {
                Ok(keys) => self.keep(keys),
                Err(_) => tracing::warn!(
                    "the issuer's keys could not be fetched again: the old ones stay in use"
                ),
            }
            fetches.last_fetch = Some(Instant::now());
            if let Ok(mut at) = self.fetched_at.write() {
                *at = Some(Instant::now());
            }
            return self.cached(kid).1.ok_or_else(|| refused("unknown_key_id"));
        }
        if loaded
            && fetches
                .last_fetch
                .is_some_and(|at| at.elapsed() < UNKNOWN_KID_REFRESH_EVERY)
        {
            return Err(refused("unknown_key_id"));
        }
        if !loaded
            && fetches
                .last_failure
                .is_some_and(|at| at.elapsed() < FAILED_FETCH_RETRY_AFTER)
        {
            return Err(ApiError::Unavailable);
        }
        match self.fetch().await {
            Ok(keys) => {
                self.fetched(&mut fetches, keys);
                self.cached(kid).1.ok_or_else(|| refused("unknown_key_id"))
            }
            Err(err) => {
                // A refresh for an unknown key id counts as one too, or forged ids would
                // make every request of an outage a fetch.
                fetches.last_failure = Some(Instant::now());
                if loaded {
                    fetches.last_fetch = Some(Instant::now());
                }
                Err(err)
            }
        }
    }

    /// The whole set is replaced: a key the issuer no longer publishes is no longer trusted.
    fn keep(&self, keys: Vec<Jwk>) {
        if let Ok(mut cached) = self.keys.write() {
            *cached = Some(Arc::new(keys));
        }
    }

    /// Whether the keys in hand are older than [`JWKS_MAX_AGE`] (read without the lock).
    fn stale(&self) -> bool {
        self.fetched_at
            .read()
            .ok()
            .and_then(|at| *at)
            .is_some_and(|at| at.elapsed() >= JWKS_MAX_AGE)
    }

    fn connector(&self) -> Result<&aws_smithy_http_client::Connector, ApiError> {
        self.connector
            .get_or_init(|| {
                crate::context::https::web_connector(
                    self.ca_bundle.as_deref(),
                    JWKS_CONNECT_TIMEOUT,
                )
            })
            .as_ref()
            .ok_or_else(|| ApiError::internal("jwks.connector", "the CA bundle cannot be used"))
    }

    /// One GET of the JWKS document. Keys of types this API does not use are skipped, not
    /// fatal; a document with none it can use is a failure like an unreachable one.
    async fn fetch(&self) -> Result<Vec<Jwk>, ApiError> {
        use aws_smithy_runtime_api::client::http::HttpConnector;
        use aws_smithy_runtime_api::http::Request;
        let connector = self.connector()?;
        let request = Request::get(self.url.as_str())
            .map_err(|_| ApiError::internal("jwks.fetch", "TOKEN_JWKS_URL is not a URL"))?;
        let fetched = tokio::time::timeout(JWKS_FETCH_TIMEOUT, async {
            let response = connector.call(request).await.map_err(|e| {
                tracing::warn!(
                    error_kind = jwks_error_kind(&e),
                    "the issuer's keys could not be fetched"
                );
            })?;
            let status = response.status().as_u16();
            if status != 200 {
                tracing::warn!(status, "the issuer's keys could not be fetched");
                return Err(());
            }
            let body = aws_smithy_types::byte_stream::ByteStream::new(response.into_body())
                .collect()
                .await
                .map_err(|_| tracing::warn!("the issuer's keys could not be read"))?
                .into_bytes();
            Ok(body)
        })
        .await;
        let body = match fetched {
            Ok(Ok(body)) => body,
            Ok(Err(())) => return Err(ApiError::Unavailable),
            Err(_) => {
                tracing::warn!("fetching the issuer's keys timed out");
                return Err(ApiError::Unavailable);
            }
        };
        let size = body.len();
        if size > MAX_JWKS_BYTES {
            tracing::warn!(
                document_bytes = size,
                "the issuer's JWKS document is too large"
            );
            return Err(ApiError::Unavailable);
        }
        #[derive(Deserialize)]
        struct KeySet {
            keys: Vec<serde_json::Value>,
        }
        let set: KeySet = serde_json::from_slice(&body).map_err(|e| {
            tracing::warn!(error_kind = ?e.classify(), "the issuer's key set is not a JWKS");
            ApiError::Unavailable
        })?;
        let keys: Vec<Jwk> = set
            .keys
            .into_iter()
            .filter_map(|k| serde_json::from_value(k).ok())
            .collect();
        if keys.is_empty() {
            tracing::warn!("the issuer's key set has no key this API can use");
            return Err(ApiError::Unavailable);
        }
        tracing::info!(keys = keys.len(), "the issuer's keys fetched");
        Ok(keys)
    }
}

/// The user's address and whether it is verified, as Cognito's `GetUser` tells them to the
/// access token itself (no IAM permission: the token authorizes the call; it needs the
/// `aws.cognito.signin.user.admin` scope, which sign-in with the user pool's own flows grants).
/// `None` when Cognito refuses the token or the user has no address.
pub async fn cognito_email(
    cognito: &aws_sdk_cognitoidentityprovider::Client,
    access_token: &str,
) -> Result<Option<(String, bool)>, ApiError> {
    use aws_sdk_cognitoidentityprovider::error::SdkError;
    let out = match cognito.get_user().access_token(access_token).send().await {
        Ok(out) => out,
        // Cognito throttling or failing is the provider's outage, as for the JWKS: a 503.
        Err(SdkError::ServiceError(e))
            if e.err().is_too_many_requests_exception()
                || e.err().is_internal_error_exception() =>
        {
            tracing::warn!("Cognito could not tell the signed-in address (throttled or failing)");
            return Err(ApiError::Unavailable);
        }
        Err(SdkError::ServiceError(e)) => {
            // Cognito's error name (NotAuthorizedException, ...): AWS's, never the user's.
            let aws_error =
                aws_sdk_cognitoidentityprovider::error::ProvideErrorMetadata::code(e.err());
            tracing::info!(?aws_error, "Cognito did not tell the signed-in address");
            return Ok(None);
        }
        Err(e) => return Err(ApiError::from_sdk("cognito.get_user", &e)),
    };
    let attribute = |name: &str| {
        out.user_attributes()
            .iter()
            .find(|a| a.name() == name)
            .and_then(|a| a.value())
            .map(str::to_string)
    };
    Ok(attribute("email").filter(|e| !e.is_empty()).map(|email| {
        (
            email,
            attribute("email_verified").as_deref() == Some("true"),
        )
    }))
}

fn jwks_error_kind(err: &aws_smithy_runtime_api::client::result::ConnectorError) -> &'static str {
    if err.is_timeout() {
        "timeout"
    } else if err.is_io() {
        "io"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> TokenSettings {
        TokenSettings {
            issuer: "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_abc".into(),
            jwks_url: String::new(),
            audiences: vec!["app".into(), "api://users".into()],
            first_party_clients: vec![],
            scope_prefix: "posthog-users/".into(),
            new_identity: NewIdentity::Refuse,
            ca_bundle: None,
        }
    }

    fn claims(json: serde_json::Value) -> Claims {
        serde_json::from_value(json).expect("claims")
    }

    #[test]
    fn the_cognito_region_is_read_from_the_issuer_only_for_cognito() {
        assert_eq!(settings().cognito_region(), Some("eu-west-1"));
        let mut other = settings();
        other.issuer = "https://example.eu.auth0.com/".into();
        assert_eq!(other.cognito_region(), None);
        other.issuer = "https://cognito-idp.evil.example.com.amazonaws.com/x".into();
        assert_eq!(other.cognito_region(), None);
    }

    #[test]
    fn the_default_jwks_url_is_the_well_known_one() {
        assert_eq!(
            default_jwks_url("https://issuer.example/"),
            "https://issuer.example/.well-known/jwks.json"
        );
    }

    #[test]
    fn audience_is_client_id_or_aud() {
        let s = settings();
        let base = serde_json::json!({"iss": "i", "sub": "s"});
        let with = |extra: serde_json::Value| {
            let mut c = base.clone();
            c.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            s.accept(claims(c), 1_000)
        };
        assert_eq!(
            with(serde_json::json!({"client_id": "app"}))
                .unwrap()
                .client,
            "app"
        );
        assert_eq!(
            with(serde_json::json!({"aud": ["x", "api://users"]}))
                .unwrap()
                .client,
            "api://users"
        );
        assert_eq!(
            with(serde_json::json!({"aud": "api://users"}))
                .unwrap()
                .client,
            "api://users"
        );
        assert!(matches!(
            with(serde_json::json!({"aud": "other"})),
            Err(ApiError::InvalidToken {
                reason: "audience",
                ..
            })
        ));
        assert!(matches!(
            with(serde_json::json!({"client_id": "other"})),
            Err(ApiError::InvalidToken {
                reason: "audience",
                ..
            })
        ));
        assert!(matches!(
            with(serde_json::json!({})),
            Err(ApiError::InvalidToken {
                reason: "audience",
                ..
            })
        ));
        assert!(matches!(
            with(serde_json::json!({"client_id": "app", "token_use": "id"})),
            Err(ApiError::InvalidToken {
                reason: "not_an_access_token",
                ..
            })
        ));
        assert!(matches!(
            with(serde_json::json!({"client_id": "app", "iat": 1_061})),
            Err(ApiError::InvalidToken {
                reason: "issued_in_the_future",
                ..
            })
        ));
        assert!(with(serde_json::json!({"client_id": "app", "iat": 1_060})).is_ok());
    }

    #[test]
    fn scopes_count_bare_or_behind_the_prefix_and_first_party_clients_get_read_write() {
        let mut s = settings();
        let token = |s: &TokenSettings, scope: &str| {
            s.accept(
                claims(
                    serde_json::json!({"iss": "i", "sub": "s", "client_id": "app", "scope": scope}),
                ),
                0,
            )
            .unwrap()
            .scopes
        };
        assert_eq!(
            token(&s, "posthog-users/user:write openid other/user:read"),
            ["user:write"]
        );
        assert_eq!(token(&s, "user:read *"), ["user:read", "*"]);
        assert!(token(&s, "aws.cognito.signin.user.admin").is_empty());
        s.first_party_clients = vec!["app".into()];
        assert_eq!(token(&s, ""), ["user:read", "user:write"]);
        let scp = s
            .accept(
                claims(serde_json::json!({"iss": "i", "sub": "s", "aud": "api://users", "scp": ["user:read"]})),
                0,
            )
            .unwrap();
        assert_eq!(scp.scopes, ["user:read"]);
    }

    #[test]
    fn email_verified_is_a_boolean_or_the_string_true() {
        let s = settings();
        let verified = |v: serde_json::Value| {
            s.accept(
                claims(serde_json::json!({"iss": "i", "sub": "s", "client_id": "app", "email": "a@b.c", "email_verified": v})),
                0,
            )
            .unwrap()
            .email_verified
        };
        assert!(verified(serde_json::json!(true)));
        assert!(verified(serde_json::json!("true")));
        assert!(!verified(serde_json::json!(false)));
        assert!(!verified(serde_json::json!("false")));
        assert!(!verified(serde_json::json!(null)));
    }

    #[test]
    fn only_jwt_shaped_credentials_are_checked_as_tokens() {
        assert!(looks_like_jwt("a.b.c"));
        assert!(looks_like_jwt("eyJ-_.eyJ.sig-_"));
        assert!(!looks_like_jwt("phx_abc"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt("a.b=.c"));
        assert!(!looks_like_jwt("a.b.c "));
    }

    #[test]
    fn keys_fit_only_their_own_algorithm() {
        let rsa: Jwk = serde_json::from_value(
            serde_json::json!({"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB"}),
        )
        .unwrap();
        let rsa_es: Jwk = serde_json::from_value(
            serde_json::json!({"kty": "RSA", "kid": "r", "alg": "ES256", "n": "AQAB", "e": "AQAB"}),
        )
        .unwrap();
        let rsa_enc: Jwk = serde_json::from_value(
            serde_json::json!({"kty": "RSA", "kid": "r", "use": "enc", "n": "AQAB", "e": "AQAB"}),
        )
        .unwrap();
        let ec: Jwk = serde_json::from_value(
            serde_json::json!({"kty": "EC", "kid": "e", "crv": "P-256", "x": "AQAB", "y": "AQAB"}),
        )
        .unwrap();
        let oct: Jwk =
            serde_json::from_value(serde_json::json!({"kty": "oct", "kid": "o", "k": "c2VjcmV0"}))
                .unwrap();
        assert!(key_fits(&rsa, Algorithm::RS256));
        assert!(!key_fits(&rsa, Algorithm::ES256));
        assert!(!key_fits(&rsa, Algorithm::HS256));
        assert!(!key_fits(&rsa_es, Algorithm::RS256));
        assert!(!key_fits(&rsa_enc, Algorithm::RS256));
        assert!(key_fits(&ec, Algorithm::ES256));
        assert!(!key_fits(&ec, Algorithm::RS256));
        assert!(!key_fits(&oct, Algorithm::HS256));
    }
}
