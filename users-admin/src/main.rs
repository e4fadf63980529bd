//! `users-admin`: accounts and keys are created by the team that runs the service, through
//! the same store code as the functions. The standard AWS environment variables choose
//! between AWS and the local emulators; the table variables are the functions' own.
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use shared::auth::ApiKeyRecord;
use shared::auth::{generate_api_key, ApiKeyHash};
use shared::identities::{IdentityLink, LinkWrite, LinkedBy};
use shared::security_events::{Actor, EventKind, SecurityEvent};
use shared::store::Store;
use shared::users::{UserId, UserKind, UserRecord};
use shared::ApiError;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "users-admin",
    about = "Manage users, personal API keys and sign-in identities of the users API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create an active user; prints {"uuid", "email"}.
    CreateUser {
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "")]
        first_name: String,
        #[arg(long, default_value = "")]
        last_name: String,
        #[arg(long)]
        staff: bool,
    },
    /// Create a personal API key; the key is shown only here.
    CreateKey {
        #[arg(long)]
        user: String,
        /// Comma-separated: `*`, `user:read`, `user:write`.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List a user's keys by mask (never the keys): label, scopes, created and last used
    /// (noted at most once an hour).
    ListKeys {
        #[arg(long)]
        user: String,
    },
    /// Revoke a key: from now on it gets 401.
    RevokeKey {
        #[arg(long)]
        key: String,
    },
    /// Link a sign-in identity (a token issuer's subject, its `sub` claim) to a user: from now
    /// on that subject's access tokens act as the user.
    LinkIdentity {
        #[arg(long)]
        user: String,
        /// The token issuer (its `iss`); defaults to TOKEN_ISSUER, the deployment's.
        #[arg(long)]
        issuer: Option<String>,
        #[arg(long)]
        subject: String,
    },
    /// Remove a sign-in identity's link: its tokens then get 401 (or, where the deployment
    /// links on first use, link again by their verified email).
    UnlinkIdentity {
        #[arg(long)]
        issuer: Option<String>,
        #[arg(long)]
        subject: String,
    },
    /// List the sign-in identities linked to a user.
    ListIdentities {
        #[arg(long)]
        user: String,
    },
    /// Remove every passkey of a user and turn passkey 2FA off (a user who lost them, or
    /// whose account got passkeys it should not have); prints {"uuid", "removed"}.
    RemovePasskeys {
        #[arg(long)]
        user: String,
    },
    /// Print a user's security events, newest first (all of them, or the newest --limit).
    Events {
        #[arg(long)]
        user: String,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Deactivate a user: from now on every key and sign-in token of the user gets 401.
    DeactivateUser {
        #[arg(long)]
        user: String,
    },
    /// Add a new encryption key to the Secrets Manager secret (ENCRYPTION_SECRET_ID) and make
    /// it the active one; every earlier key stays, so every record still reads. Warm
    /// functions read the secret again when they meet a record made with the new key. Run
    /// one rotation at a time: Secrets Manager has no conditional write.
    RotateEncryptionKey,
}

const SCOPES: &[&str] = &["*", "user:read", "user:write"];

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("users-admin: {failure}");
            ExitCode::FAILURE
        }
    }
}

/// Why a command failed, as the operator reads it on stderr.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Config(#[from] shared::config::MissingVar),
    #[error("{0:?} is not a uuid")]
    NotAUuid(String),
    #[error("{0:?} is not a valid email address")]
    InvalidEmail(String),
    #[error("a user with email {0} already exists")]
    EmailTaken(String),
    #[error("unknown scope {0:?}; use one of {scopes}", scopes = SCOPES.join(", "))]
    UnknownScope(String),
    #[error("at least one scope is needed")]
    NoScope,
    #[error("no active user {0}")]
    NoActiveUser(UserId),
    #[error("no user {0}")]
    NoUser(UserId),
    #[error("no such key")]
    NoSuchKey,
    #[error("no such identity link")]
    NoSuchLink,
    #[error("that identity is already linked to user {0}")]
    AlreadyLinked(UserId),
    #[error("no --issuer given and TOKEN_ISSUER is not set")]
    NoIssuer,
    #[error("--subject is empty")]
    NoSubject,
    #[error("ENCRYPTION_SECRET_ID is not set: it names the Secrets Manager secret of the keys")]
    NoSecretId,
    #[error("Secrets Manager call failed: {0}")]
    Secrets(String),
    #[error("{}", describe(.0))]
    Store(#[from] ApiError),
}

fn describe(error: &ApiError) -> String {
    match error {
        ApiError::Unavailable => {
            "DynamoDB is unreachable or throttling; check AWS_* settings and try again".into()
        }
        other => format!("the store failed: {}", other.body()["detail"]),
    }
}

/// A Secrets Manager call's failure, with the SDK's whole cause chain (no secret is in it).
fn secrets_failed(err: impl std::error::Error) -> Failure {
    Failure::Secrets(aws_sdk_secretsmanager::error::DisplayErrorContext(err).to_string())
}

/// A record of what the operator did to `user`'s account.
fn operator_event(
    config: &shared::config::Config,
    user: UserId,
    event: EventKind,
) -> SecurityEvent {
    SecurityEvent::new(
        user,
        event,
        &Actor::operator(),
        config.security_events_retention_days,
    )
}

/// The user a uuid as typed names.
fn user_uuid(user: &str) -> Result<UserId, Failure> {
    UserId::parse(user.trim()).ok_or_else(|| Failure::NotAUuid(user.to_string()))
}

/// The issuer (given, or the deployment's) and subject an identity command names.
fn identity(
    config: &shared::config::Config,
    issuer: Option<String>,
    subject: &str,
) -> Result<(String, String), Failure> {
    let issuer = issuer
        .map(|i| i.trim().to_string())
        .filter(|i| !i.is_empty())
        .or_else(|| config.tokens.as_ref().map(|t| t.issuer.clone()))
        .ok_or(Failure::NoIssuer)?;
    let subject = subject.trim();
    if subject.is_empty() {
        return Err(Failure::NoSubject);
    }
    Ok((issuer, subject.to_string()))
}

async fn run(command: Command) -> Result<Value, Failure> {
    let config = shared::config::Config::from_env()?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let store = Store::new(
        shared::store::DynamoClient::new(&sdk),
        config.tables.clone(),
    );
    match command {
        Command::CreateUser {
            email,
            first_name,
            last_name,
            staff,
        } => {
            let email = email.trim().to_string();
            if !shared::email_change::is_valid_email(&email) {
                return Err(Failure::InvalidEmail(email));
            }
            let kind = if staff {
                UserKind::Staff
            } else {
                UserKind::Regular
            };
            let user = UserRecord::new(&email, first_name.trim(), last_name.trim(), kind);
            store.create_user(&user).await.map_err(|e| match e {
                ApiError::Validation { code: "unique", .. } => Failure::EmailTaken(email),
                other => Failure::Store(other),
            })?;
            Ok(json!({"uuid": user.uuid, "email": user.email}))
        }
        Command::CreateKey {
            user,
            scopes,
            label,
        } => {
            let uuid = user_uuid(&user)?;
            let scopes: Vec<String> = scopes
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            if let Some(bad) = scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
                return Err(Failure::UnknownScope(bad.clone()));
            }
            if scopes.is_empty() {
                return Err(Failure::NoScope);
            }
            let owner = store
                .user(uuid)
                .await?
                .filter(|u| u.is_active)
                .ok_or(Failure::NoActiveUser(uuid))?;
            let (key, mask) = generate_api_key();
            let record = ApiKeyRecord {
                secure_value: ApiKeyHash::of(&key).0,
                user_uuid: uuid,
                scopes: scopes.clone(),
                label,
                mask: mask.clone(),
                created_at: shared::clock::iso_now(),
                last_used_at: None,
                user_is_staff: owner.is_staff,
                user_is_active: true,
            };
            let event = operator_event(&config, uuid, EventKind::KeyCreated)
                .with_detail(ApiKeyHash::of(&key).id_prefix());
            store
                .put_api_key(&record, &event)
                .await
                .map_err(|e| match e {
                    ApiError::NotFound => Failure::NoActiveUser(record.user_uuid),
                    other => Failure::Store(other),
                })?;
            Ok(json!({"api_key": key, "mask": mask, "scopes": scopes}))
        }
        Command::ListKeys { user } => {
            let uuid = user_uuid(&user)?;
            if store.user(uuid).await?.is_none() {
                return Err(Failure::NoUser(uuid));
            }
            let mut keys = store.api_keys_of(uuid).await?;
            keys.sort_by(|a, b| a.created_at.cmp(&b.created_at));
            Ok(Value::Array(
                keys.into_iter()
                    .map(|k| {
                        json!({"mask": k.mask, "label": k.label, "scopes": k.scopes,
                               "created_at": k.created_at, "last_used_at": k.last_used_at,
                               "active": k.user_is_active})
                    })
                    .collect(),
            ))
        }
        Command::RemovePasskeys { user } => {
            let uuid = user_uuid(&user)?;
            let removed = store
                .remove_all_passkeys(
                    uuid,
                    &Actor::operator(),
                    config.security_events_retention_days,
                )
                .await
                .map_err(|e| match e {
                    ApiError::NotFound => Failure::NoUser(uuid),
                    other => Failure::Store(other),
                })?;
            Ok(json!({"uuid": uuid, "removed": removed}))
        }
        Command::RevokeKey { key } => {
            let hash = ApiKeyHash::of(key.trim());
            let owner = store
                .delete_api_key(&hash)
                .await?
                .ok_or(Failure::NoSuchKey)?;
            // A single delete, not a transaction: its record follows it.
            let event =
                operator_event(&config, owner, EventKind::KeyRevoked).with_detail(hash.id_prefix());
            store.put_security_event(&event).await?;
            Ok(json!({"ok": true}))
        }
        Command::RotateEncryptionKey => {
            let id = config.encryption_secret_id.ok_or(Failure::NoSecretId)?;
            let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
            let current = secrets
                .get_secret_value()
                .secret_id(&id)
                .send()
                .await
                .map_err(secrets_failed)?;
            let (rotated, key_id) = shared::crypto::secret_with_new_active_key(
                current.secret_string().unwrap_or_default(),
            )?;
            secrets
                .put_secret_value()
                .secret_id(&id)
                .secret_string(rotated)
                .send()
                .await
                .map_err(secrets_failed)?;
            Ok(json!({"ok": true, "active_key_id": key_id}))
        }
        Command::LinkIdentity {
            user,
            issuer,
            subject,
        } => {
            let uuid = user_uuid(&user)?;
            let (issuer, subject) = identity(&config, issuer, &subject)?;
            let owner = store
                .user(uuid)
                .await?
                .filter(|u| u.is_active)
                .ok_or(Failure::NoActiveUser(uuid))?;
            let link =
                IdentityLink::new(&issuer, &subject, uuid, owner.is_staff, LinkedBy::Operator);
            let event =
                operator_event(&config, uuid, EventKind::IdentityLinked).with_detail("operator");
            match store.link_identity(&link, &event).await? {
                LinkWrite::Linked => {
                    Ok(json!({"ok": true, "issuer": issuer, "subject": subject, "user": uuid}))
                }
                LinkWrite::AlreadyLinked => {
                    let other = store.identity_link(&link.key()).await?.map(|l| l.user_uuid);
                    Err(Failure::AlreadyLinked(other.unwrap_or(uuid)))
                }
                LinkWrite::UserInactive | LinkWrite::EmailTaken => Err(Failure::NoActiveUser(uuid)),
            }
        }
        Command::UnlinkIdentity { issuer, subject } => {
            let (issuer, subject) = identity(&config, issuer, &subject)?;
            let key = shared::identities::IdentityKey::of(&issuer, &subject);
            let link = store
                .unlink_identity(&key, |user| {
                    operator_event(&config, user, EventKind::IdentityUnlinked)
                })
                .await?
                .ok_or(Failure::NoSuchLink)?;
            Ok(json!({"ok": true, "user": link.user_uuid}))
        }
        Command::ListIdentities { user } => {
            let uuid = user_uuid(&user)?;
            if store.user(uuid).await?.is_none() {
                return Err(Failure::NoUser(uuid));
            }
            let mut links = store.identities_of(uuid).await?;
            links.sort_by(|a, b| a.linked_at.cmp(&b.linked_at));
            Ok(Value::Array(
                links
                    .into_iter()
                    .map(|l| {
                        json!({"issuer": l.issuer, "subject": l.subject, "linked_at": l.linked_at,
                               "linked_by": l.linked_by, "active": l.user_is_active})
                    })
                    .collect(),
            ))
        }
        Command::DeactivateUser { user } => {
            let uuid = user_uuid(&user)?;
            let event = operator_event(&config, uuid, EventKind::UserDeactivated);
            if !store.deactivate_user(uuid, &event).await? {
                return Err(Failure::NoUser(uuid));
            }
            Ok(json!({"ok": true}))
        }
        Command::Events { user, limit } => {
            let uuid = user_uuid(&user)?;
            if store.user(uuid).await?.is_none() {
                return Err(Failure::NoUser(uuid));
            }
            let wanted = limit.unwrap_or(usize::MAX);
            let mut out = Vec::new();
            let mut cursor = None;
            while out.len() < wanted {
                let page = (wanted - out.len()).min(shared::security_events::MAX_PAGE);
                let (events, next) = store
                    .security_events_page(uuid, page, cursor.as_ref())
                    .await?;
                out.extend(events.iter().map(|e| e.to_json()));
                match next {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            Ok(Value::Array(out))
        }
    }
}
