//! Load without loss: 32 concurrent clients for a bounded time (60 s; `LOAD_SECONDS` changes
//! it) against the local API over HTTP (`cargo lambda watch`, several processes per
//! function), mixing push-token registrations and unregistrations, scene updates, 2FA status
//! and `GET @me`. No answer may be a 5xx or fail to arrive, and afterwards every table must
//! hold exactly the rows the successful answers imply.
//!
//! Each client owns a private user (its token set goes beyond the 20-token cap, so evictions
//! happen, and its scenes are written by it alone, so the expected state is exact) and shares
//! one of four users with seven other clients (their scene updates race; their tokens live in
//! one token set, under the cap, so registrations contend on its version).
use api_tests::*;
use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{json, Value};
use shared::push_tokens::MAX_TOKENS_PER_USER;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WORKERS: usize = 32;
const SHARED_USERS: usize = 4;
/// More names than the cap, so registering them evicts the least recently seen.
const PRIVATE_TOKENS: usize = 30;
/// Per client on a shared user: 8 clients × 2 stays under the cap (no eviction to predict).
const SHARED_TOKENS: usize = 2;
/// Tokens each private user has before the load starts.
const PRELOADED_TOKENS: usize = 18;
const PRIVATE_SCENES: &[&str] = &[
    "insights",
    "dashboards",
    "persons",
    "cohorts",
    "flags",
    "replay",
];
const SHARED_SCENES: &[&str] = &["home", "surveys", "experiments", "notebooks", "web"];
const PLATFORMS: &[&str] = &["ios", "android", "web"];
/// Bounds on each client besides the duration.
const MAX_REQUESTS_PER_WORKER: usize = 50_000;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

fn load_duration() -> Duration {
    let seconds = std::env::var("LOAD_SECONDS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(60);
    Duration::from_secs(seconds.clamp(1, 600))
}

/// A small deterministic generator (xorshift64*), one per client.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    RegisterPrivate,
    UnregisterPrivate,
    ScenePrivate,
    SceneShared,
    RegisterShared,
    UnregisterShared,
    TwoFactorStatus,
    GetMe,
}

fn pick(rng: &mut Rng) -> Op {
    match rng.below(100) {
        0..22 => Op::RegisterPrivate,
        22..34 => Op::UnregisterPrivate,
        34..44 => Op::ScenePrivate,
        44..62 => Op::SceneShared,
        62..70 => Op::RegisterShared,
        70..75 => Op::UnregisterShared,
        75..88 => Op::TwoFactorStatus,
        _ => Op::GetMe,
    }
}

/// Tokens of one user as one client's successful answers leave them, least recently seen
/// first: `(token, platform)`.
#[derive(Default)]
struct Tokens {
    live: Vec<(String, String)>,
    /// Whether a new token was ever registered (which creates the set's version item).
    versioned: bool,
    /// Tokens that registrations pushed out over the cap.
    evicted: usize,
}

impl Tokens {
    /// What a 200 to a registration implies: a refresh moves the token to the most recently
    /// seen end; a new token is added and, beyond the cap, the least recently seen go.
    fn registered(&mut self, token: &str, platform: &str, cap: Option<usize>) {
        let existed = self.live.iter().position(|(t, _)| t == token);
        if let Some(i) = existed {
            self.live.remove(i);
        } else {
            self.versioned = true;
        }
        self.live.push((token.to_string(), platform.to_string()));
        if existed.is_none() {
            if let Some(cap) = cap {
                while self.live.len() > cap {
                    self.live.remove(0);
                    self.evicted += 1;
                }
            }
        }
    }

    fn unregistered(&mut self, token: &str) {
        self.live.retain(|(t, _)| t != token);
    }
}

/// One successful scene update on a shared user, with when it was sent and answered.
struct SceneWrite {
    scene: String,
    dashboard: u64,
    sent: Instant,
    answered: Instant,
}

#[derive(Default)]
struct Outcome {
    requests: usize,
    statuses: BTreeMap<(Op, u16), usize>,
    /// Transport failures, unexpected statuses and bodies: each one fails the test.
    problems: Vec<String>,
    private_tokens: Tokens,
    /// Scene → dashboard, in the order scenes were first set.
    private_scenes: Vec<(String, u64)>,
    shared_tokens: Tokens,
    shared_writes: Vec<SceneWrite>,
    latencies_ms: Vec<u32>,
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> Result<(u16, String), String> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {key}"));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.map_err(|e| format!("{path}: {e}"))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| format!("{path}: body: {e}"))?;
        Ok((status, text))
    }
}

struct Worker {
    id: usize,
    private: TestUser,
    shared_key: String,
}

async fn run_worker(
    worker: Worker,
    tokens: Tokens,
    client: Arc<Client>,
    until: Instant,
) -> Outcome {
    let mut out = Outcome {
        private_tokens: tokens,
        ..Outcome::default()
    };
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((worker.id as u64 + 1) << 17));
    let mut sequence = 0u64;
    let key = worker.private.key.clone();
    while Instant::now() < until && out.requests < MAX_REQUESTS_PER_WORKER {
        let op = pick(&mut rng);
        sequence += 1;
        let platform = PLATFORMS[rng.below(PLATFORMS.len())];
        // A token of the client's private user, or of the user it shares, and that user's key.
        let mut token = |private: bool| {
            if private {
                (
                    format!("p{}-{}", worker.id, rng.below(PRIVATE_TOKENS)),
                    &key,
                )
            } else {
                let name = format!("s{}-{}", worker.id, rng.below(SHARED_TOKENS));
                (name, &worker.shared_key)
            }
        };
        let (method, path, key, body) = match op {
            Op::RegisterPrivate | Op::RegisterShared => {
                let (name, k) = token(op == Op::RegisterPrivate);
                let body = json!({"token": name, "platform": platform});
                (
                    reqwest::Method::POST,
                    "/api/users/@me/push_tokens/",
                    k,
                    Some(body),
                )
            }
            Op::UnregisterPrivate | Op::UnregisterShared => {
                let (name, k) = token(op == Op::UnregisterPrivate);
                let body = json!({"token": name});
                (
                    reqwest::Method::POST,
                    "/api/users/@me/push_tokens/unregister/",
                    k,
                    Some(body),
                )
            }
            Op::ScenePrivate | Op::SceneShared => {
                let (scene, k) = if op == Op::ScenePrivate {
                    (PRIVATE_SCENES[rng.below(PRIVATE_SCENES.len())], &key)
                } else {
                    (
                        SHARED_SCENES[rng.below(SHARED_SCENES.len())],
                        &worker.shared_key,
                    )
                };
                // Unique per write, so the stored value names the write that won.
                let dashboard = (worker.id as u64 + 1) * 1_000_000 + sequence;
                let body = json!({"scene": scene, "dashboard": dashboard});
                (
                    reqwest::Method::POST,
                    "/api/users/@me/scene_personalisation/",
                    k,
                    Some(body),
                )
            }
            Op::TwoFactorStatus => (
                reqwest::Method::GET,
                "/api/users/@me/two_factor_status/",
                &key,
                None,
            ),
            Op::GetMe => (reqwest::Method::GET, "/api/users/@me/", &key, None),
        };
        out.requests += 1;
        let sent = Instant::now();
        let result = client.send(method, path, key, body.clone()).await;
        let answered = Instant::now();
        out.latencies_ms.push((answered - sent).as_millis() as u32);
        let (status, text) = match result {
            Ok(answer) => answer,
            Err(e) => {
                out.problems.push(format!("transport: {e}"));
                continue;
            }
        };
        *out.statuses.entry((op, status)).or_default() += 1;
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let body = body.unwrap_or(Value::Null);
        let expected = match op {
            Op::UnregisterPrivate | Op::UnregisterShared => status == 204,
            // Only registrations that contend on one token set may be asked to retry.
            Op::RegisterShared => status == 200 || status == 429,
            _ => status == 200,
        };
        if !expected {
            out.problems
                .push(format!("{op:?} {path} {body}: {status} {text}"));
            continue;
        }
        match (op, status) {
            (Op::RegisterPrivate | Op::RegisterShared, 200) => {
                let token = body["token"].as_str().unwrap_or_default();
                if json["platform"] != platform || json.get("token").is_some() {
                    out.problems
                        .push(format!("{op:?}: unexpected answer {text}"));
                }
                if op == Op::RegisterPrivate {
                    out.private_tokens
                        .registered(token, platform, Some(MAX_TOKENS_PER_USER));
                } else {
                    out.shared_tokens.registered(token, platform, None);
                }
            }
            (Op::UnregisterPrivate, _) => out
                .private_tokens
                .unregistered(body["token"].as_str().unwrap_or_default()),
            (Op::UnregisterShared, _) => out
                .shared_tokens
                .unregistered(body["token"].as_str().unwrap_or_default()),
            (Op::ScenePrivate, _) => {
                let scene = body["scene"].as_str().unwrap_or_default().to_string();
                let dashboard = body["dashboard"].as_u64().unwrap_or_default();
                match out.private_scenes.iter_mut().find(|(s, _)| *s == scene) {
                    Some(entry) => entry.1 = dashboard,
                    None => out.private_scenes.push((scene, dashboard)),
                }
                // The answer is the user object after this write: exactly the model.
                if json["scene_personalisation"] != scenes_json(&out.private_scenes) {
                    out.problems.push(format!(
                        "{op:?}: scenes {} after writing {body}",
                        json["scene_personalisation"]
                    ));
                }
            }
            (Op::SceneShared, _) => {
                let entry = json["scene_personalisation"]
                    .as_array()
                    .and_then(|list| list.iter().find(|e| e["scene"] == body["scene"]));
                // Read-your-write: the answer shows this write (nothing was written between
                // the update and the read of the item, which are one operation).
                if entry.map(|e| &e["dashboard"]) != Some(&body["dashboard"]) {
                    out.problems.push(format!(
                        "{op:?}: answer {} does not show {body}",
                        json["scene_personalisation"]
                    ));
                }
                out.shared_writes.push(SceneWrite {
                    scene: body["scene"].as_str().unwrap_or_default().to_string(),
                    dashboard: body["dashboard"].as_u64().unwrap_or_default(),
                    sent,
                    answered,
                });
            }
            (Op::TwoFactorStatus, _) if json != two_factor_off() => {
                out.problems.push(format!("{op:?}: {text}"));
            }
            (Op::GetMe, _)
                if json["uuid"] != worker.private.uuid().to_string()
                    || json["scene_personalisation"] != scenes_json(&out.private_scenes) =>
            {
                out.problems.push(format!(
                    "{op:?}: {text} (expected scenes {})",
                    scenes_json(&out.private_scenes)
                ));
            }
            _ => {}
        }
    }
    out
}

/// The 2FA status of a user who never set it up.
fn two_factor_off() -> Value {
    json!({"is_enabled": false, "backup_codes": [], "method": null, "has_passkeys": false, "has_totp": false, "passkeys_enabled_for_2fa": false})
}

fn scenes_json(scenes: &[(String, u64)]) -> Value {
    Value::Array(
        scenes
            .iter()
            .map(|(scene, dashboard)| json!({"scene": scene, "dashboard": dashboard}))
            .collect(),
    )
}

/// Every item of a table under one partition key.
async fn items_of(
    ctx: &shared::Context,
    table: &str,
    key: &str,
    uuid: UserId,
) -> Vec<shared::store::Item> {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let out = ctx
            .store
            .db
            .query()
            .table_name(table)
            .key_condition_expression("#k = :u")
            .expression_attribute_names("#k", key)
            .expression_attribute_values(":u", AttributeValue::S(uuid.to_string()))
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("query");
        items.extend(out.items.unwrap_or_default());
        start = out.last_evaluated_key;
        if start.is_none() {
            return items;
        }
    }
}

/// The rows of every table that belong to a user, checked against what the answers imply.
async fn check_user_rows(
    ctx: &shared::Context,
    created: &shared::users::UserRecord,
    keys: &[String],
    tokens: &BTreeMap<String, String>,
    versioned: bool,
    problems: &mut Vec<String>,
) -> shared::users::UserRecord {
    let uuid = created.uuid;
    let tables = &ctx.config.tables;
    // push_tokens: exactly the live tokens, with the last platform registered, plus the
    // version item of the set once a token was added.
    let stored: BTreeMap<String, String> = ctx
        .store
        .push_tokens_of(uuid)
        .await
        .expect("tokens")
        .into_iter()
        .map(|t| (t.token, t.platform))
        .collect();
    if &stored != tokens {
        problems.push(format!(
            "{uuid}: push tokens {stored:?}, the answers imply {tokens:?}"
        ));
    }
    let rows = items_of(ctx, &tables.push_tokens, "user_uuid", uuid)
        .await
        .len();
    if rows != tokens.len() + usize::from(versioned) {
        problems.push(format!(
            "{uuid}: {rows} push_tokens rows for {} tokens",
            tokens.len()
        ));
    }
    // two_factor and pending_email_changes: nothing (status only reads).
    let two_factor = items_of(ctx, &tables.two_factor, "user_uuid", uuid)
        .await
        .len();
    let email_changes = items_of(ctx, &tables.email_changes, "user_uuid", uuid)
        .await
        .len();
    if two_factor != 0 || email_changes != 0 {
        problems.push(format!(
            "{uuid}: {two_factor} two_factor rows, {email_changes} email change rows"
        ));
    }
    // api_keys: exactly the keys made for it; user_emails: its address, once.
    let stored_keys: BTreeSet<String> = ctx
        .store
        .api_keys_of(uuid)
        .await
        .expect("keys")
        .into_iter()
        .map(|k| k.secure_value)
        .collect();
    let made: BTreeSet<String> = keys
        .iter()
        .map(|k| shared::auth::ApiKeyHash::of(k).0)
        .collect();
    if stored_keys != made {
        problems.push(format!(
            "{uuid}: {} api keys stored, {} made",
            stored_keys.len(),
            made.len()
        ));
    }
    if ctx
        .store
        .email_owner(&created.email)
        .await
        .expect("email owner")
        != Some(uuid)
    {
        problems.push(format!("{uuid}: its address is not claimed by it"));
    }
    // users: the record as created, apart from the scenes.
    let record = ctx
        .store
        .user(uuid)
        .await
        .expect("user")
        .expect("the user exists");
    let without_scenes = |u: &shared::users::UserRecord| {
        let mut v = serde_json::to_value(u).expect("record");
        if let Some(o) = v.as_object_mut() {
            o.remove("scene_dashboards");
            o.remove("scene_first_set");
        }
        v
    };
    if without_scenes(&record) != without_scenes(created) {
        problems.push(format!("{uuid}: the user record changed beyond its scenes"));
    }
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_load_without_loss() {
    let ctx = context().await;
    let duration = load_duration();
    let client = Arc::new(Client {
        http: reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("http client"),
        base: env("TEST_API_URL"),
    });

    let mut shared_users = Vec::new();
    let mut shared_keys: Vec<Vec<String>> = Vec::new();
    for _ in 0..SHARED_USERS {
        let user = create_user(&ctx, &["user:read", "user:write"]).await;
        shared_keys.push(vec![user.key]);
        shared_users.push(user.user);
    }
    let mut workers = Vec::new();
    for id in 0..WORKERS {
        let private = create_user(&ctx, &["*"]).await;
        let shared_key = create_key(&ctx, &shared_users[id % SHARED_USERS], &["*"]).await;
        shared_keys[id % SHARED_USERS].push(shared_key.clone());
        workers.push(Worker {
            id,
            private,
            shared_key,
        });
    }
    // Each private user starts near the cap (through the same store code as the function), so
    // registrations under load evict.
    let preloads: Vec<_> = workers
        .iter()
        .map(|w| {
            let (store, uuid, id) = (ctx.store.clone(), w.private.uuid().to_string(), w.id);
            tokio::spawn(async move {
                let mut tokens = Tokens::default();
                for i in 0..PRELOADED_TOKENS {
                    let (token, platform) = (format!("p{id}-{i}"), PLATFORMS[i % PLATFORMS.len()]);
                    store
                        .register_push_token(
                            UserId::parse(&uuid).expect("a uuid"),
                            &token,
                            platform,
                        )
                        .await
                        .expect("preload a token");
                    tokens.registered(&token, platform, Some(MAX_TOKENS_PER_USER));
                }
                tokens
            })
        })
        .collect();
    let mut preloaded = Vec::new();
    for task in preloads {
        preloaded.push(task.await.expect("preloaded"));
    }
    let privates: Vec<(shared::users::UserRecord, String)> = workers
        .iter()
        .map(|w| (w.private.user.clone(), w.private.key.clone()))
        .collect();

    let started = Instant::now();
    let until = started + duration;
    let tasks: Vec<_> = workers
        .into_iter()
        .zip(preloaded)
        .map(|(w, tokens)| tokio::spawn(run_worker(w, tokens, client.clone(), until)))
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("a client task finished"));
    }
    let elapsed = started.elapsed();

    // What was answered.
    let mut problems: Vec<String> = outcomes.iter().flat_map(|o| o.problems.clone()).collect();
    let mut statuses: BTreeMap<(Op, u16), usize> = BTreeMap::new();
    for o in &outcomes {
        for (k, n) in &o.statuses {
            *statuses.entry(*k).or_default() += n;
        }
    }
    let requests: usize = outcomes.iter().map(|o| o.requests).sum();
    let server_errors: usize = statuses
        .iter()
        .filter(|((_, s), _)| *s >= 500)
        .map(|(_, n)| n)
        .sum();
    let mut latencies: Vec<u32> = outcomes
        .iter()
        .flat_map(|o| o.latencies_ms.iter().copied())
        .collect();
    latencies.sort_unstable();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "load: {WORKERS} clients for {elapsed:.1?}: {requests} requests ({:.0}/s), {server_errors} 5xx, latency p50 {} ms p99 {} ms max {} ms",
        requests as f64 / elapsed.as_secs_f64(),
        percentile(0.5),
        percentile(0.99),
        latencies.last().copied().unwrap_or(0),
    );
    for ((op, status), n) in &statuses {
        println!("  {op:?} {status}: {n}");
    }
    let evicted: usize = outcomes.iter().map(|o| o.private_tokens.evicted).sum();
    let shared_writes: usize = outcomes.iter().map(|o| o.shared_writes.len()).sum();
    println!("  tokens evicted over the cap: {evicted}; racing scene writes on shared users: {shared_writes}");

    // What the tables hold: private users, exactly their client's model.
    for ((created, key), outcome) in privates.iter().zip(&outcomes) {
        let tokens: BTreeMap<String, String> =
            outcome.private_tokens.live.iter().cloned().collect();
        let record = check_user_rows(
            &ctx,
            created,
            std::slice::from_ref(key),
            &tokens,
            outcome.private_tokens.versioned,
            &mut problems,
        )
        .await;
        if scenes_json(&outcome.private_scenes) != Value::Array(record.scene_personalisation()) {
            problems.push(format!(
                "{}: scenes {:?}, the answers imply {:?}",
                created.uuid,
                record.scene_personalisation(),
                outcome.private_scenes
            ));
        }
    }
    // Shared users: the union of their clients' tokens; for each scene, a write that no other
    // write followed (one sent after it was answered), with scenes ordered as first set.
    for (i, created) in shared_users.iter().enumerate() {
        let mine: Vec<&Outcome> = outcomes
            .iter()
            .enumerate()
            .filter(|(id, _)| id % SHARED_USERS == i)
            .map(|(_, o)| o)
            .collect();
        let tokens: BTreeMap<String, String> = mine
            .iter()
            .flat_map(|o| o.shared_tokens.live.iter().cloned())
            .collect();
        let versioned = mine.iter().any(|o| o.shared_tokens.versioned);
        let record = check_user_rows(
            &ctx,
            created,
            &shared_keys[i],
            &tokens,
            versioned,
            &mut problems,
        )
        .await;
        let mut writes: HashMap<&str, Vec<&SceneWrite>> = HashMap::new();
        for w in mine.iter().flat_map(|o| o.shared_writes.iter()) {
            writes.entry(w.scene.as_str()).or_default().push(w);
        }
        let stored_scenes: BTreeSet<&str> =
            record.scene_dashboards.keys().map(String::as_str).collect();
        let written: BTreeSet<&str> = writes.keys().copied().collect();
        if stored_scenes != written {
            problems.push(format!(
                "{}: scenes {stored_scenes:?}, written {written:?}",
                created.uuid
            ));
        }
        for (scene, list) in &writes {
            let Some(stored) = record.scene_dashboards.get(*scene) else {
                continue;
            };
            match list.iter().find(|w| w.dashboard == *stored) {
                None => problems.push(format!(
                    "{}: {scene} holds {stored}, which no successful write sent",
                    created.uuid
                )),
                Some(winner) => {
                    if let Some(later) = list.iter().find(|w| w.sent > winner.answered) {
                        problems.push(format!(
                            "{}: {scene} holds {stored}, but {} was sent after it was answered",
                            created.uuid, later.dashboard
                        ));
                    }
                }
            }
        }
        let order: Vec<String> = record
            .scene_personalisation()
            .iter()
            .map(|e| e["scene"].as_str().unwrap_or_default().to_string())
            .collect();
        let first_sent = |scene: &str| writes[scene].iter().map(|w| w.sent).min().expect("a write");
        let first_answered = |scene: &str| {
            writes[scene]
                .iter()
                .map(|w| w.answered)
                .min()
                .expect("a write")
        };
        for (a, earlier) in order.iter().enumerate() {
            for later in &order[a + 1..] {
                if writes.contains_key(later.as_str())
                    && writes.contains_key(earlier.as_str())
                    && first_answered(later) < first_sent(earlier)
                {
                    problems.push(format!("{}: {later} was first set before {earlier} was first sent, yet comes after it", created.uuid));
                }
            }
        }
    }

    // And the API shows the same.
    for (created, key) in &privates {
        let reply = Api::http().get(ME).bearer(key).send().await;
        let me = reply.user_object();
        let record = ctx
            .store
            .user(created.uuid)
            .await
            .expect("user")
            .expect("exists");
        assert_eq!(
            me["scene_personalisation"],
            Value::Array(record.scene_personalisation())
        );
    }

    assert_eq!(server_errors, 0, "5xx answers under load: {statuses:?}");
    assert!(
        problems.is_empty(),
        "{} problems, the first: {:#?}",
        problems.len(),
        &problems[..problems.len().min(20)]
    );
    assert!(requests > WORKERS, "the clients made requests");
}
