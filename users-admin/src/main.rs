//! `users-admin`: accounts and keys are created by the team that runs the service, through
//! the same store code as the functions. The standard AWS environment variables choose
//! between AWS and the local emulators; the table variables are the functions' own.
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use shared::auth::{generate_api_key, ApiKeyHash};
use shared::store::api_keys::ApiKeyRecord;
use shared::store::Store;
use shared::users::UserRecord;
use shared::ApiError;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "users-admin",
    about = "Manage users and personal API keys of the users API"
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
    /// Deactivate a user: from now on every key of the user gets 401.
    DeactivateUser {
        #[arg(long)]
        user: String,
    },
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
        Err(message) => {
            eprintln!("users-admin: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<Value, String> {
    let config = shared::config::Config::from_env().map_err(|e| e.to_string())?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let store = Store::new(shared::store::DynamoClient::new(&sdk), config.tables);
    match command {
        Command::CreateUser {
            email,
            first_name,
            last_name,
            staff,
        } => {
            let email = email.trim().to_string();
            if !shared::email_change::is_valid_email(&email) {
                return Err(format!("{email:?} is not a valid email address"));
            }
            let user = UserRecord::new(&email, first_name.trim(), last_name.trim(), staff);
            store.create_user(&user).await.map_err(|e| match e {
                ApiError::Validation { code: "unique", .. } => {
                    format!("a user with email {email} already exists")
                }
                other => describe(other),
            })?;
            Ok(json!({"uuid": user.uuid, "email": user.email}))
        }
        Command::CreateKey {
            user,
            scopes,
            label,
        } => {
            let uuid = uuid::Uuid::parse_str(user.trim())
                .map_err(|_| format!("{user:?} is not a uuid"))?
                .to_string();
            let scopes: Vec<String> = scopes
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            if let Some(bad) = scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
                return Err(format!(
                    "unknown scope {bad:?}; use one of {}",
                    SCOPES.join(", ")
                ));
            }
            if scopes.is_empty() {
                return Err("at least one scope is needed".into());
            }
            let owner = store.user(&uuid).await.map_err(describe)?;
            let owner = owner
                .filter(|u| u.is_active)
                .ok_or(format!("no active user {uuid}"))?;
            let (key, mask) = generate_api_key();
            let record = ApiKeyRecord {
                secure_value: ApiKeyHash::of(&key).0,
                user_uuid: uuid,
                scopes: scopes.clone(),
                label,
                mask: mask.clone(),
                created_at: shared::store::iso_now(),
                last_used_at: None,
                user_is_staff: owner.is_staff,
                user_is_active: true,
            };
            store.put_api_key(&record).await.map_err(|e| match e {
                ApiError::NotFound => format!("no active user {}", record.user_uuid),
                other => describe(other),
            })?;
            Ok(json!({"api_key": key, "mask": mask, "scopes": scopes}))
        }
        Command::ListKeys { user } => {
            let uuid = uuid::Uuid::parse_str(user.trim())
                .map_err(|_| format!("{user:?} is not a uuid"))?
                .to_string();
            if store.user(&uuid).await.map_err(describe)?.is_none() {
                return Err(format!("no user {uuid}"));
            }
            let mut keys = store.api_keys_of(&uuid).await.map_err(describe)?;
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
        Command::RevokeKey { key } => {
            if !store
                .delete_api_key(&ApiKeyHash::of(key.trim()))
                .await
                .map_err(describe)?
            {
                return Err("no such key".into());
            }
            Ok(json!({"ok": true}))
        }
        Command::DeactivateUser { user } => {
            let uuid = uuid::Uuid::parse_str(user.trim())
                .map_err(|_| format!("{user:?} is not a uuid"))?
                .to_string();
            if !store.deactivate_user(&uuid).await.map_err(describe)? {
                return Err(format!("no user {uuid}"));
            }
            Ok(json!({"ok": true}))
        }
    }
}

fn describe(error: ApiError) -> String {
    match error {
        ApiError::Unavailable => {
            "DynamoDB is unreachable or throttling; check AWS_* settings and try again".into()
        }
        other => format!("the store failed: {}", other.body()["detail"]),
    }
}
