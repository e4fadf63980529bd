//! Dependency faults, at handler level: the functions' own clients (same timeouts, same
//! retries) reach DynamoDB Local or moto's Secrets Manager through a small TCP fault proxy
//! that can refuse connections (the service is down), hold them without answering (a black
//! hole), cut requests, or answer DynamoDB's throttling error itself. Every answer must be
//! the 503 envelope, inside the function's 10 s timeout, and the same context (no restart)
//! must serve again once the dependency is back.
use api_tests::*;
use serde_json::{json, Value};
use shared::store::Store;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The function's timeout in template.yaml: every answer must come well before it.
const FUNCTION_TIMEOUT: Duration = Duration::from_secs(10);
const UNAVAILABLE: &str = "The service is temporarily unavailable, please try again later.";

// ---------------------------------------------------------------------------------------------
// The fault proxy
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Forward every request (after any pending throttling answers).
    Forward,
    /// Accept connections and read requests, never answer.
    BlackHole,
    /// Close the connection on every request the filter does not let through.
    Cut,
}

type Filter = Arc<dyn Fn(&Message) -> bool + Send + Sync>;

struct ProxyState {
    upstream: SocketAddr,
    mode: Mutex<Mode>,
    pass: Mutex<Option<Filter>>,
    /// How many of the next requests to answer with a throttling error.
    throttle: AtomicUsize,
    /// Every complete request read from a client, whatever happened to it.
    requests: AtomicUsize,
    forwarded: AtomicUsize,
    throttled: AtomicUsize,
    arrivals: Mutex<Vec<Instant>>,
    /// Bumped to cut every open connection.
    cut: watch::Sender<u64>,
}

/// A TCP proxy in front of one HTTP/1.1 service, on a fixed loopback port.
struct FaultProxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

/// One HTTP/1.1 message as read off the wire.
struct Message {
    raw: Vec<u8>,
    head: String,
    body_start: usize,
    close: bool,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.raw[self.body_start..]).unwrap_or(Value::Null)
    }
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// Reads one message: the head, then a body framed by Content-Length or chunked encoding
/// (or, for a response with neither, up to the end of the stream). `None` at a clean end.
async fn read_message<R: AsyncBufRead + Unpin>(
    r: &mut R,
    is_request: bool,
) -> std::io::Result<Option<Message>> {
    let mut raw = Vec::new();
    loop {
        let before = raw.len();
        if r.read_until(b'\n', &mut raw).await? == 0 {
            return if raw.is_empty() {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        let line = &raw[before..];
        if line == b"\r\n" || line == b"\n" {
            if before == 0 {
                raw.clear();
                continue;
            }
            break;
        }
        if raw.len() > 64 * 1024 {
            return Err(invalid("head too large"));
        }
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let first = head.lines().next().unwrap_or("").to_string();
    let mut close = first.contains("HTTP/1.0");
    let mut length = None;
    let mut chunked = false;
    for line in head.split("\r\n").skip(1) {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
        match k.as_str() {
            "content-length" => length = Some(v.parse::<usize>().map_err(|_| invalid("length"))?),
            "transfer-encoding" => chunked = v.contains("chunked"),
            "connection" if v.contains("close") => close = true,
            "connection" if v.contains("keep-alive") => close = false,
            _ => {}
        }
    }
    let body_start = raw.len();
    let status: Option<u16> = (!is_request)
        .then(|| first.split_whitespace().nth(1).and_then(|s| s.parse().ok()))
        .flatten();
    if chunked {
        loop {
            let before = raw.len();
            if r.read_until(b'\n', &mut raw).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let line = String::from_utf8_lossy(&raw[before..]).into_owned();
            let size_text = line
                .trim()
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            let size = usize::from_str_radix(&size_text, 16).map_err(|_| invalid("chunk size"))?;
            if size == 0 {
                loop {
                    let before = raw.len();
                    if r.read_until(b'\n', &mut raw).await? == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    if &raw[before..] == b"\r\n" || &raw[before..] == b"\n" {
                        break;
                    }
                }
                break;
            }
            let start = raw.len();
            raw.resize(start + size + 2, 0);
            r.read_exact(&mut raw[start..]).await?;
        }
    } else if let Some(n) = length {
        let start = raw.len();
        raw.resize(start + n, 0);
        r.read_exact(&mut raw[start..]).await?;
    } else if !is_request && !matches!(status, Some(100..=199 | 204 | 304)) {
        r.read_to_end(&mut raw).await?;
        close = true;
    }
    Ok(Some(Message {
        raw,
        head,
        body_start,
        close,
    }))
}

/// DynamoDB's answer when a table's throughput is exceeded.
fn throttling_response() -> Vec<u8> {
    let body = r#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"The level of configured provisioned throughput for the table was exceeded. Consider increasing your provisioning level with the UpdateTable API."}"#;
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.0\r\nContent-Length: {}\r\nx-amzn-RequestId: FAULTPROXY0000000000000000000000000000000000000000000\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn take_one(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

type Upstream = (BufReader<OwnedReadHalf>, OwnedWriteHalf);

/// Forwards one request over the connection's upstream connection (reconnecting once when a
/// reused one turns out to be closed) and returns the response.
async fn forward(
    upstream: &mut Option<Upstream>,
    to: SocketAddr,
    request: &Message,
) -> std::io::Result<Option<Message>> {
    for attempt in 0..2 {
        let reused = upstream.is_some();
        if upstream.is_none() {
            let (r, w) = TcpStream::connect(to).await?.into_split();
            *upstream = Some((BufReader::new(r), w));
        }
        let (r, w) = upstream.as_mut().expect("connected");
        let result = async {
            w.write_all(&request.raw).await?;
            read_message(r, false).await
        }
        .await;
        match result {
            Ok(Some(response)) => return Ok(Some(response)),
            Ok(None) | Err(_) if reused && attempt == 0 => *upstream = None,
            other => return other,
        }
    }
    Ok(None)
}

async fn session(client: TcpStream, state: &ProxyState) -> std::io::Result<()> {
    let (r, mut w) = client.into_split();
    let mut reader = BufReader::new(r);
    let mut upstream: Option<Upstream> = None;
    loop {
        let Some(request) = read_message(&mut reader, true).await? else {
            return Ok(());
        };
        state.requests.fetch_add(1, SeqCst);
        state.arrivals.lock().unwrap().push(Instant::now());
        let mode = *state.mode.lock().unwrap();
        match mode {
            Mode::BlackHole => std::future::pending::<()>().await,
            Mode::Cut => {
                let pass = state.pass.lock().unwrap().clone();
                if !pass.is_some_and(|p| p(&request)) {
                    return Ok(());
                }
            }
            Mode::Forward => {}
        }
        if take_one(&state.throttle) {
            state.throttled.fetch_add(1, SeqCst);
            w.write_all(&throttling_response()).await?;
            continue;
        }
        let Some(response) = forward(&mut upstream, state.upstream, &request).await? else {
            return Ok(());
        };
        state.forwarded.fetch_add(1, SeqCst);
        w.write_all(&response.raw).await?;
        if response.close || request.close {
            return Ok(());
        }
    }
}

impl FaultProxy {
    /// A proxy on a free loopback port, forwarding to the service at `upstream_url`.
    async fn start(upstream_url: &str) -> FaultProxy {
        let authority = upstream_url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let upstream = tokio::net::lookup_host(&authority)
            .await
            .unwrap_or_else(|e| panic!("{upstream_url}: {e}"))
            .next()
            .expect("an address");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let addr = listener.local_addr().expect("bound");
        let proxy = FaultProxy {
            addr,
            state: Arc::new(ProxyState {
                upstream,
                mode: Mutex::new(Mode::Forward),
                pass: Mutex::new(None),
                throttle: AtomicUsize::new(0),
                requests: AtomicUsize::new(0),
                forwarded: AtomicUsize::new(0),
                throttled: AtomicUsize::new(0),
                arrivals: Mutex::new(Vec::new()),
                cut: watch::channel(0).0,
            }),
            acceptor: Mutex::new(None),
        };
        proxy.accept_on(listener);
        proxy
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn accept_on(&self, listener: TcpListener) {
        let state = self.state.clone();
        let handle = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                // Subscribed before the task starts, so a cut that follows is never missed.
                let mut cut = state.cut.subscribe();
                let state = state.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = cut.changed() => {}
                        _ = session(stream, &state) => {}
                    }
                });
            }
        });
        *self.acceptor.lock().unwrap() = Some(handle);
    }

    /// Cuts every open connection (the client sees them closed).
    fn cut_connections(&self) {
        self.state.cut.send_modify(|n| *n += 1);
    }

    /// The service is down: the port refuses connections and open ones are cut.
    async fn down(&self) {
        let acceptor = self.acceptor.lock().unwrap().take();
        if let Some(handle) = acceptor {
            handle.abort();
            let _ = handle.await; // the listener is dropped with the task
        }
        self.cut_connections();
    }

    /// Listening again on the same port, if it is not.
    async fn listen(&self) {
        if self.acceptor.lock().unwrap().is_some() {
            return;
        }
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot listen on {} again: {e}", self.addr),
            }
        };
        self.accept_on(listener);
    }

    fn set_mode(&self, mode: Mode, pass: Option<Filter>) {
        *self.state.pass.lock().unwrap() = pass;
        *self.state.mode.lock().unwrap() = mode;
    }

    /// The service is back: listening and forwarding; connections held by a black hole are cut.
    async fn up(&self) {
        let was = *self.state.mode.lock().unwrap();
        self.set_mode(Mode::Forward, None);
        if was == Mode::BlackHole {
            self.cut_connections();
        }
        self.listen().await;
    }

    /// Connections are accepted and requests read, but nothing ever answers.
    async fn black_hole(&self) {
        self.set_mode(Mode::BlackHole, None);
        self.listen().await;
    }

    /// Every request is answered by closing the connection, except those `pass` lets through.
    async fn cut_requests(&self, pass: Option<Filter>) {
        self.set_mode(Mode::Cut, pass);
        self.listen().await;
    }

    /// The next `n` requests get DynamoDB's throttling error (0 stops throttling).
    fn throttle(&self, n: usize) {
        self.state.throttle.store(n, SeqCst);
    }

    fn requests(&self) -> usize {
        self.state.requests.load(SeqCst)
    }
    fn forwarded(&self) -> usize {
        self.state.forwarded.load(SeqCst)
    }
    fn throttled(&self) -> usize {
        self.state.throttled.load(SeqCst)
    }
    fn take_arrivals(&self) -> Vec<Instant> {
        std::mem::take(&mut *self.state.arrivals.lock().unwrap())
    }
}

// ---------------------------------------------------------------------------------------------
// Contexts whose clients go through a proxy
// ---------------------------------------------------------------------------------------------

/// A cold context like a function's (`Context::from_env`: same SDK configuration, timeouts and
/// retries), with DynamoDB and/or Secrets Manager reached at other endpoints.
async fn context_via(dynamodb: Option<&str>, secrets: Option<&str>) -> shared::Context {
    let _ = env("AWS_ENDPOINT_URL_DYNAMODB");
    let config = shared::config::Config::from_env().expect("function environment");
    let sdk = shared::context::sdk_config().await;
    let mut ctx = shared::Context::new(config.clone(), &sdk);
    if let Some(url) = dynamodb {
        let conf = aws_sdk_dynamodb::config::Builder::from(&sdk)
            .endpoint_url(url)
            .build();
        ctx = ctx.with_store(Store::new(
            aws_sdk_dynamodb::Client::from_conf(conf),
            config.tables.clone(),
        ));
    }
    if let Some(url) = secrets {
        let conf = aws_sdk_secretsmanager::config::Builder::from(&sdk)
            .endpoint_url(url)
            .build();
        ctx = ctx.with_secrets(aws_sdk_secretsmanager::Client::from_conf(conf));
    }
    ctx
}

// ---------------------------------------------------------------------------------------------
// Every route, with a valid key and a valid body
// ---------------------------------------------------------------------------------------------

/// A valid body for each function's route (`None`: a GET). A route added to the table without
/// one here fails the test, so every route stays covered.
fn valid_body(function: &str) -> Option<Value> {
    match function {
        "push-tokens-unregister" => Some(json!({"token": "fault-token"})),
        "push-tokens-register" => Some(json!({"token": "fault-token", "platform": "ios"})),
        "scene-personalisation" => Some(json!({"scene": "faults", "dashboard": 7})),
        "two-factor-validate" | "two-factor-verify" => Some(json!({"token": "123456"})),
        "verify-email" => Some(json!({"uuid": "@me", "code": "123456"})),
        "update-user" => Some(json!({"first_name": "Fault"})),
        "two-factor-backup-codes" | "two-factor-disable" | "cancel-email-change-request" => {
            Some(json!({}))
        }
        "two-factor-start-setup"
        | "two-factor-status"
        | "get-user"
        | "webauthn-credentials"
        | "security-events" => None,
        // Each reads its passkey, or the user and its passkeys, after authenticating.
        "webauthn-register-begin"
        | "webauthn-credential-delete"
        | "webauthn-verify-begin"
        | "two-factor-passkey-begin" => Some(json!({})),
        "webauthn-credential-update" => Some(json!({"label": "Fault"})),
        // A well-formed credential answering challenge "AAAA": its ceremony is looked up
        // (and absent: a 400).
        "webauthn-register-complete" => Some(json!({
            "id": "AAAA", "rawId": "AAAA", "type": "public-key",
            "response": {
                "clientDataJSON": "eyJ0eXBlIjoid2ViYXV0aG4uY3JlYXRlIiwiY2hhbGxlbmdlIjoiQUFBQSJ9",
                "attestationObject": "oA"
            }
        })),
        "webauthn-verify-complete" => Some(json!({
            "id": "AAAA", "rawId": "AAAA", "type": "public-key",
            "response": {
                "clientDataJSON": "eyJ0eXBlIjoid2ViYXV0aG4uZ2V0IiwiY2hhbGxlbmdlIjoiQUFBQSJ9",
                "authenticatorData": "AA", "signature": "AA"
            }
        })),
        other => panic!("the fault tests know no valid body for {other}: add one to valid_body"),
    }
}

struct Answer {
    label: String,
    reply: Reply,
    elapsed: Duration,
}

async fn call_route(api: &Api, route: &shared::routes::Route, key: &str) -> Answer {
    let path = route_path(route.path);
    let label = format!("{} {path}", route.method);
    let mut call = api.call(route.method, &path).bearer(key);
    if let Some(body) = valid_body(route.function) {
        call = call.json(&body);
    }
    timed(&label, call).await
}

/// Sends a request and times it. One still unanswered long after the function's timeout is a
/// hang: the test fails instead of stalling.
async fn timed(label: &str, call: Call<'_>) -> Answer {
    let started = Instant::now();
    let reply = tokio::time::timeout(3 * FUNCTION_TIMEOUT, call.send())
        .await
        .unwrap_or_else(|_| panic!("{label}: no answer after {:?}", 3 * FUNCTION_TIMEOUT));
    Answer {
        label: label.to_string(),
        reply,
        elapsed: started.elapsed(),
    }
}

/// Every route of the table, one after another (their answers depend on each other's writes).
async fn every_route_in_turn(api: &Api, key: &str) -> Vec<Answer> {
    let mut answers = Vec::new();
    for route in shared::routes::ROUTES {
        answers.push(call_route(api, route, key).await);
    }
    answers
}

/// Every route of the table at once (for outages, where each waits on its timeouts).
async fn every_route_at_once(api: &Api, key: &str) -> Vec<Answer> {
    let tasks: Vec<_> = shared::routes::ROUTES
        .iter()
        .map(|route| {
            let (api, key) = (api.clone(), key.to_string());
            tokio::spawn(async move { call_route(&api, route, &key).await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("the request task finishes"));
    }
    answers
}

#[track_caller]
fn assert_unavailable(answer: &Answer) {
    assert_eq!(
        answer.reply.status, 503,
        "{}: {} {}",
        answer.label, answer.reply.status, answer.reply.body
    );
    answer.reply.assert_error(
        503,
        "server_error",
        "service_unavailable",
        UNAVAILABLE,
        None,
    );
    assert!(
        answer.elapsed < FUNCTION_TIMEOUT,
        "{} took {:?}, beyond the function's timeout",
        answer.label,
        answer.elapsed
    );
}

fn slowest(answers: &[Answer]) -> Duration {
    answers.iter().map(|a| a.elapsed).max().unwrap_or_default()
}

fn statuses(answers: &[Answer]) -> Vec<(String, u16)> {
    answers
        .iter()
        .map(|a| (a.label.clone(), a.reply.status))
        .collect()
}

fn in_process(ctx: shared::Context) -> Api {
    Api::InProcess(Arc::new(ctx))
}

/// A context straight to DynamoDB, a fault proxy in front of DynamoDB, and the API in
/// process with a context whose DynamoDB calls go through that proxy.
async fn behind_a_dynamodb_proxy() -> (shared::Context, FaultProxy, Api) {
    let direct = context().await;
    let proxy = FaultProxy::start(&env("AWS_ENDPOINT_URL_DYNAMODB")).await;
    let api = in_process(context_via(Some(&proxy.url()), None).await);
    (direct, proxy, api)
}

// ---------------------------------------------------------------------------------------------
// DynamoDB
// ---------------------------------------------------------------------------------------------

/// DynamoDB goes away mid-run: refused connections, then connections cut after the key
/// lookup (so each route meets the outage in its own calls). Every route answers the 503
/// envelope in time; once DynamoDB is back the same context answers as it did before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_outage_is_503_on_every_route_then_recovers() {
    let (direct, proxy, api) = behind_a_dynamodb_proxy().await;
    let before_user = create_user(&direct, &["*"]).await;
    let after_user = create_user(&direct, &["*"]).await;

    let before = every_route_in_turn(&api, &before_user.key).await;
    for a in &before {
        assert!(
            a.reply.status < 500,
            "{} before the outage: {} {}",
            a.label,
            a.reply.status,
            a.reply.body
        );
    }

    // Down: connections refused, open ones cut.
    proxy.down().await;
    let down = every_route_at_once(&api, &before_user.key).await;
    down.iter().for_each(assert_unavailable);
    // The fallback needs no dependency and still answers.
    api.get("/api/users/@me/nope/")
        .bearer(&before_user.key)
        .send()
        .await
        .assert_not_found();

    // Half up: the key lookup gets through, every other call has its connection cut.
    let api_keys_table = direct.config.tables.api_keys.clone();
    let key_lookup: Filter = Arc::new(move |m: &Message| {
        m.header("x-amz-target")
            .is_some_and(|t| t.ends_with(".GetItem"))
            && m.json()["TableName"] == api_keys_table.as_str()
    });
    proxy.cut_requests(Some(key_lookup)).await;
    let cut = every_route_at_once(&api, &before_user.key).await;
    cut.iter().for_each(assert_unavailable);
    assert!(proxy.forwarded() > 0, "the key lookups went through");

    // Back: the same context, never rebuilt, answers every route as it did before.
    proxy.up().await;
    let after = every_route_in_turn(&api, &after_user.key).await;
    assert_eq!(
        statuses(&after),
        statuses(&before),
        "answers after the outage"
    );
    // And the writes of the recovered context landed.
    let me = api.me(&after_user.key).await;
    assert_eq!(me["first_name"], "Fault");
    assert_eq!(
        me["scene_personalisation"],
        json!([{"scene": "faults", "dashboard": 7}])
    );
    println!(
        "dynamodb outage: {} routes; slowest 503 when refused {:?}, when cut mid-request {:?}",
        down.len(),
        slowest(&down),
        slowest(&cut)
    );
}

/// DynamoDB accepts connections and never answers: the operation timeouts turn that into a
/// 503 on every route, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_black_hole_is_503_within_the_timeout() {
    let (direct, proxy, api) = behind_a_dynamodb_proxy().await;
    let user = create_user(&direct, &["*"]).await;
    api.me(&user.key).await;

    proxy.black_hole().await;
    let started = Instant::now();
    let answers = every_route_at_once(&api, &user.key).await;
    answers.iter().for_each(assert_unavailable);
    assert!(
        proxy.requests() > answers.len(),
        "the requests reached the black hole"
    );

    proxy.up().await;
    api.me(&user.key).await;
    println!(
        "dynamodb black hole: {} routes answered 503 in {:?} (slowest {:?})",
        answers.len(),
        started.elapsed(),
        slowest(&answers)
    );
}

/// A throttled DynamoDB is retried with backoff inside the request; throttling that outlasts
/// the retry budget is a 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_dynamodb_is_retried_with_backoff() {
    let (direct, proxy, api) = behind_a_dynamodb_proxy().await;
    let user = create_user(&direct, &["*"]).await;

    // How many DynamoDB requests GET @me makes unthrottled (once the key's first use, which
    // adds a write after the response, is noted).
    api.me(&user.key).await;
    let n = proxy.requests();
    api.me(&user.key).await;
    let plain = proxy.requests() - n;
    assert!(plain >= 1);

    // Two throttling answers: the first call is retried twice and the request succeeds.
    proxy.throttle(2);
    proxy.take_arrivals();
    let n = proxy.requests();
    let started = Instant::now();
    api.me(&user.key).await;
    let elapsed = started.elapsed();
    assert_eq!(proxy.throttled(), 2);
    assert_eq!(
        proxy.requests() - n,
        plain + 2,
        "each throttled request was retried once"
    );
    let arrivals = proxy.take_arrivals();
    let waited = arrivals[2] - arrivals[0];
    // The SDK's backoff is random (full jitter, 1 s doubling for throttling): it is not zero.
    assert!(
        waited > Duration::from_millis(2),
        "retries came after {waited:?}: no backoff"
    );
    assert!(elapsed < FUNCTION_TIMEOUT);

    // A write is retried the same way and lands once.
    proxy.throttle(2);
    let object = api
        .set_scene(&user.key, &json!({"scene": "throttled", "dashboard": 3}))
        .await
        .user_object();
    assert_eq!(
        object["scene_personalisation"],
        json!([{"scene": "throttled", "dashboard": 3}])
    );
    assert_eq!(proxy.throttled(), 4);

    // Throttling beyond the retry budget: 3 attempts, then the 503 envelope, in time.
    proxy.throttle(1000);
    let n = proxy.requests();
    let answer = timed(
        "GET /api/users/@me/, throttled",
        api.get(ME).bearer(&user.key),
    )
    .await;
    assert_unavailable(&answer);
    assert_eq!(
        proxy.requests() - n,
        3,
        "bounded retries: 3 attempts of the first call"
    );

    proxy.throttle(0);
    api.me(&user.key).await;
    println!(
        "throttling: 2 throttled answers retried in {elapsed:?} (backoff {waited:?}); beyond the budget 503 in {:?}",
        answer.elapsed
    );
}

// ---------------------------------------------------------------------------------------------
// Secrets Manager
// ---------------------------------------------------------------------------------------------

const START_SETUP: &str = "/api/users/@me/two_factor_start_setup/";

/// Secrets Manager unreachable when a function starts: the routes that need the keys answer
/// 503 (the others are unaffected), each invocation tries again, and once it is reachable the
/// keys load and are kept for the life of the context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_manager_unreachable_at_cold_start() {
    let direct = context().await;
    let proxy = FaultProxy::start(&env("AWS_ENDPOINT_URL_SECRETS_MANAGER")).await;
    proxy.down().await;
    let api = in_process(context_via(None, Some(&proxy.url())).await);
    let user = create_user(&direct, &["*"]).await;

    let setup = || api.get(START_SETUP).bearer(&user.key);
    // Refused: 503 for the setup, which must encrypt the new secret.
    assert_unavailable(&timed("start setup, refused", setup()).await);
    // Routes that need no key still answer.
    api.me(&user.key).await;
    api.get(TWO_FACTOR_STATUS)
        .bearer(&user.key)
        .send()
        .await
        .ok_json();

    // The next invocation tries again (a failure is not kept): its request reaches the proxy.
    proxy.cut_requests(None).await;
    assert_unavailable(&timed("start setup, cut", setup()).await);
    assert!(
        proxy.requests() >= 1,
        "the second invocation asked Secrets Manager again"
    );

    // A black hole is bounded by the timeouts too.
    proxy.black_hole().await;
    let black_hole = timed("start setup, black hole", setup()).await;
    assert_unavailable(&black_hole);

    // Reachable: the same context loads the keys and serves.
    proxy.up().await;
    let setup = api
        .get(START_SETUP)
        .bearer(&user.key)
        .send()
        .await
        .ok_json();
    assert_eq!(setup["success"], true);
    assert_eq!(proxy.forwarded(), 1, "the keys were read once");

    // Kept: Secrets Manager going away again does not matter to a warm context.
    proxy.down().await;
    let secret = setup["secret"].as_str().expect("secret").to_string();
    let code = pyotp_code(&secret, shared::clock::now_secs()).await;
    api.validate_2fa(&user.key, code).await.ok_json();
    let status = api
        .get(TWO_FACTOR_STATUS)
        .bearer(&user.key)
        .send()
        .await
        .ok_json();
    assert_eq!(status["is_enabled"], true);
    api.get(START_SETUP)
        .bearer(&user.key)
        .send()
        .await
        .ok_json();
    assert_eq!(proxy.forwarded(), 1, "no further reads of the secret");
    println!(
        "secrets manager: 503 when refused, cut and silent (black hole answered in {:?}); keys loaded once on recovery",
        black_hole.elapsed
    );
}

/// SES accepts the connection and never answers, after a response was posted: the work after
/// the response stops before the invocation's deadline (less a margin), so an answered request
/// does not turn into a timed-out invocation, well before the SDK's own 6 s would end it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_mail_after_the_response_stops_before_the_deadline() {
    use shared::lambda_http::lambda_runtime::{self, LambdaInvocation};
    use shared::lambda_http::tower::{service_fn, Service};
    let proxy = FaultProxy::start(&env("AWS_ENDPOINT_URL_SESV2")).await;
    proxy.black_hole().await;
    let mut ctx = context_via(None, None).await;
    let ses = aws_sdk_sesv2::config::Builder::from(&shared::context::sdk_config().await)
        .endpoint_url(proxy.url())
        .build();
    ctx.mailer = shared::email::Mailer::new(
        aws_sdk_sesv2::Client::from_conf(ses),
        ctx.config.email_sender.clone(),
    );
    ctx.mailer
        .send_after_response("someone@example.com", "subject", "text".into());

    let posted =
        service_fn(|_: LambdaInvocation| async { Ok::<(), shared::lambda_http::Error>(()) });
    let mut service = shared::runtime::AfterResponse::new(posted, &ctx);
    let mut context = lambda_runtime::Context::default();
    let now_ms = shared::clock::now_micros() / 1000;
    context.deadline = now_ms + 1_500;
    let invocation = LambdaInvocation {
        parts: shared::lambda_http::http::Response::new(()).into_parts().0,
        body: Default::default(),
        context,
    };
    let started = Instant::now();
    service.call(invocation).await.expect("posted");
    let took = started.elapsed();
    assert!(proxy.requests() >= 1, "the mail reached the black hole");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(1_500),
        "stopped after {took:?}: the deadline is 1.5 s away, less a 0.5 s margin"
    );
    assert_eq!(ctx.mailer.queued(), 0, "nothing is left for the next event");
}
