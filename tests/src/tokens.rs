//! Sign-in tokens for the tests, from implementations other than the code under test:
//! moto's Cognito user pool (the local stack's; `InitiateAuth` with `USER_PASSWORD_AUTH`), and
//! tokens the tests sign themselves with `jsonwebtoken`, with moto's own signing key (to change
//! one claim of a correctly signed token) or with keys made here by Python's `cryptography`.
//! Also a JWKS server the tests control (what it serves, whether it answers, how often it was
//! asked).
use crate::env;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use shared::tokens::{NewIdentity, TokenSettings};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;

/// A user of the local pool, signed in.
pub struct CognitoUser {
    pub email: String,
    pub access_token: String,
    pub id_token: String,
    pub sub: String,
}

const PASSWORD: &str = "Test-password-1";

pub async fn cognito() -> aws_sdk_cognitoidentityprovider::Client {
    let sdk = shared::context::sdk_config().await;
    aws_sdk_cognitoidentityprovider::Client::new(&sdk)
}

/// Creates a user in the local pool with this address (verified or not), sets its password
/// and signs it in.
pub async fn cognito_user(email: &str, email_verified: bool) -> CognitoUser {
    let pool = env("LOCAL_USER_POOL_ID");
    let client_id = env("LOCAL_USER_POOL_CLIENT_ID");
    let cognito = cognito().await;
    use aws_sdk_cognitoidentityprovider::types::{AttributeType, AuthFlowType, MessageActionType};
    let attribute = |name: &str, value: &str| {
        AttributeType::builder()
            .name(name)
            .value(value)
            .build()
            .expect("attribute")
    };
    cognito
        .admin_create_user()
        .user_pool_id(&pool)
        .username(email)
        .message_action(MessageActionType::Suppress)
        .user_attributes(attribute("email", email))
        .user_attributes(attribute(
            "email_verified",
            if email_verified { "true" } else { "false" },
        ))
        .send()
        .await
        .expect("moto creates the pool's user");
    cognito
        .admin_set_user_password()
        .user_pool_id(&pool)
        .username(email)
        .password(PASSWORD)
        .permanent(true)
        .send()
        .await
        .expect("moto sets the password");
    let auth = cognito
        .initiate_auth()
        .client_id(&client_id)
        .auth_flow(AuthFlowType::UserPasswordAuth)
        .auth_parameters("USERNAME", email)
        .auth_parameters("PASSWORD", PASSWORD)
        .send()
        .await
        .expect("moto signs the user in");
    let result = auth.authentication_result().expect("tokens");
    let access_token = result.access_token().expect("access token").to_string();
    let sub = claims_of(&access_token)["sub"]
        .as_str()
        .expect("sub")
        .to_string();
    CognitoUser {
        email: email.to_string(),
        id_token: result.id_token().expect("id token").to_string(),
        access_token,
        sub,
    }
}

/// The claims of a token, read without any check (to make a changed copy).
pub fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64url_decode(payload);
    serde_json::from_slice(&bytes).expect("JSON claims")
}

fn base64url_decode(text: &str) -> Vec<u8> {
    let standard: String = text
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    let padded = format!("{standard}{}", "=".repeat((4 - standard.len() % 4) % 4));
    aws_smithy_types::base64::decode(padded).expect("base64url")
}

pub fn base64url(bytes: &[u8]) -> String {
    aws_smithy_types::base64::encode(bytes)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

/// moto's Cognito signing key (kid `dummy`), which the stack exports as PKCS#1 DER.
pub fn moto_key() -> EncodingKey {
    let der = std::fs::read(env("TEST_MOTO_COGNITO_PRIVATE_KEY_DER")).expect("moto's key");
    EncodingKey::from_rsa_der(&der)
}

/// Signs claims with a key and header values.
pub fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, key).expect("jsonwebtoken signs")
}

/// A copy of a moto access token's claims with changes, signed with moto's key: genuine in
/// every way but the change.
pub fn moto_signed(claims: &Value, changes: Value) -> String {
    let mut claims = claims.clone();
    for (k, v) in changes.as_object().expect("an object of changes") {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    sign(Algorithm::RS256, Some("dummy"), &claims, &moto_key())
}

pub fn now() -> u64 {
    shared::clock::now_secs()
}

/// Keys the tests made themselves (Python's `cryptography`): an RSA and a P-256 key, each as
/// a signing key and as its public JWK.
pub struct OwnKeys {
    pub rsa: EncodingKey,
    pub rsa_jwk: Value,
    pub rsa_public_pem: String,
    pub ec: EncodingKey,
    pub ec_jwk: Value,
}

static OWN_KEYS: OnceCell<Arc<OwnKeys>> = OnceCell::const_new();

const MAKE_KEYS: &str = r#"
import base64, json
from cryptography.hazmat.primitives.asymmetric import rsa, ec
from cryptography.hazmat.primitives import serialization as s
def b64(n, size=None):
    size = size or (n.bit_length() + 7) // 8
    return base64.urlsafe_b64encode(n.to_bytes(size, "big")).rstrip(b"=").decode()
r = rsa.generate_private_key(public_exponent=65537, key_size=2048)
e = ec.generate_private_key(ec.SECP256R1())
rn = r.public_key().public_numbers(); en = e.public_key().public_numbers()
print(json.dumps({
  "rsa_der": base64.b64encode(r.private_bytes(s.Encoding.DER, s.PrivateFormat.TraditionalOpenSSL, s.NoEncryption())).decode(),
  "rsa_public_pem": r.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo).decode(),
  "rsa_jwk": {"kty": "RSA", "n": b64(rn.n), "e": b64(rn.e)},
  "ec_der": base64.b64encode(e.private_bytes(s.Encoding.DER, s.PrivateFormat.PKCS8, s.NoEncryption())).decode(),
  "ec_jwk": {"kty": "EC", "crv": "P-256", "x": b64(en.x, 32), "y": b64(en.y, 32)},
}))
"#;

pub async fn own_keys() -> Arc<OwnKeys> {
    OWN_KEYS
        .get_or_init(|| async {
            let out = tokio::process::Command::new(env("TEST_PYTHON"))
                .args(["-c", MAKE_KEYS])
                .output()
                .await
                .expect("the test Python runs");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let keys: Value = serde_json::from_slice(&out.stdout).expect("keys as JSON");
            let der = |name: &str| {
                aws_smithy_types::base64::decode(keys[name].as_str().expect("der")).expect("base64")
            };
            Arc::new(OwnKeys {
                rsa: EncodingKey::from_rsa_der(&der("rsa_der")),
                rsa_jwk: keys["rsa_jwk"].clone(),
                rsa_public_pem: keys["rsa_public_pem"].as_str().unwrap().to_string(),
                ec: EncodingKey::from_ec_der(&der("ec_der")),
                ec_jwk: keys["ec_jwk"].clone(),
            })
        })
        .await
        .clone()
}

/// A JWK with a key id (and optionally more members).
pub fn jwk(base: &Value, kid: &str, extra: Value) -> Value {
    let mut jwk = base.clone();
    jwk["kid"] = json!(kid);
    for (k, v) in extra.as_object().unwrap() {
        jwk[k] = v.clone();
    }
    jwk
}

/// A JWKS server on loopback: answers every GET with the key set it holds (a 503 while it is
/// told to fail), counting the requests.
pub struct JwksServer {
    pub port: u16,
    pub fetches: Arc<AtomicUsize>,
    pub failing: Arc<std::sync::atomic::AtomicBool>,
    keys: Arc<std::sync::Mutex<Value>>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    pub async fn start(keys: Value) -> JwksServer {
        Self::start_on(0, keys).await
    }

    pub async fn start_on(port: u16, keys: Value) -> JwksServer {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("a loopback port");
        let port = listener.local_addr().unwrap().port();
        let fetches = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let keys = Arc::new(std::sync::Mutex::new(keys));
        let (f, fail, k) = (fetches.clone(), failing.clone(), keys.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let (f, fail, k) = (f.clone(), fail.clone(), k.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    f.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = if fail.load(Ordering::SeqCst) {
                        ("503 Service Unavailable", "{}".to_string())
                    } else {
                        (
                            "200 OK",
                            json!({"keys": k.lock().unwrap().clone()}).to_string(),
                        )
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        JwksServer {
            port,
            fetches,
            failing,
            keys,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/.well-known/jwks.json", self.port)
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    pub fn set_keys(&self, keys: Value) {
        *self.keys.lock().unwrap() = keys;
    }

    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The local stack's token settings (the moto pool's), as the functions read them.
pub fn stack_token_settings() -> TokenSettings {
    shared::config::Config::from_env()
        .expect("function environment")
        .tokens
        .expect("the test command sets TOKEN_ISSUER (the local user pool)")
}

/// Settings for a test's own issuer, whose keys `jwks` serves.
pub fn own_issuer_settings(
    issuer: &str,
    jwks_url: &str,
    new_identity: NewIdentity,
) -> TokenSettings {
    TokenSettings {
        issuer: issuer.to_string(),
        jwks_url: jwks_url.to_string(),
        audiences: vec!["test-app".into()],
        first_party_clients: vec![],
        scope_prefix: "posthog-users/".into(),
        new_identity,
        ca_bundle: None,
    }
}

/// Claims of a good access token of a test's own issuer.
pub fn own_claims(issuer: &str, sub: &str, scope: &str) -> Value {
    json!({
        "iss": issuer, "sub": sub, "client_id": "test-app", "token_use": "access",
        "scope": scope, "iat": now(), "exp": now() + 600,
    })
}
