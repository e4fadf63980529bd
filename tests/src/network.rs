//! A network in front of the local services, for the tests that check what crosses it: a
//! certificate authority made here with openssl, and scripts/latency-proxy.py (TLS and a
//! round-trip delay per endpoint, with counts of connections, handshakes and requests).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Runs openssl in `dir`: `command` split on spaces, then `more` as they are (values with
/// spaces).
fn openssl(dir: &Path, command: &str, more: &[&str]) {
    let out = Command::new("openssl")
        .args(command.split_whitespace())
        .args(more)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("openssl is on the PATH (the test command checks it)");
    assert!(
        out.status.success(),
        "openssl {command} {more:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new P-256 key, unencrypted.
const NEW_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";

/// A new folder of the system's temporary one, for `tag`.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("api-tests-{tag}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    dir
}

/// A certificate authority (`ca.pem`) and a server certificate for localhost signed by it
/// (`server.pem`, `server.key`), in `dir`.
pub fn make_certificates(dir: &Path) {
    openssl(
        dir,
        &format!("req -x509 {NEW_KEY} -keyout ca.key -out ca.pem -days 2"),
        &[
            "-subj",
            "/CN=api-tests CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    openssl(
        dir,
        &format!("req {NEW_KEY} -keyout server.key -out server.csr -subj /CN=localhost"),
        &[],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("server.ext");
    openssl(
        dir,
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile server.ext",
        &[],
    );
}

/// The loopback port of a local service's URL (`http://127.0.0.1:8000`, with or without a
/// path).
pub fn port_of(url: &str) -> u16 {
    let authority = url.split("://").nth(1).unwrap_or(url);
    authority
        .split('/')
        .next()
        .and_then(|host_port| host_port.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// What the proxy counted for one endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub connections: u64,
    pub handshakes: u64,
    pub requests: u64,
    /// Answers sent back (status lines).
    pub answers: u64,
}

/// A running scripts/latency-proxy.py, stopped when dropped.
pub struct LatencyProxy {
    _child: tokio::process::Child,
    control: u16,
    ports: HashMap<String, u16>,
    /// The authority that signed the proxy's certificate (for `AWS_CA_BUNDLE`).
    pub ca: PathBuf,
}

impl LatencyProxy {
    /// The proxy in front of `upstreams` (name, loopback port), with the certificates in
    /// `dir` (made there if they are not yet), delaying by `rtt_ms`.
    pub async fn start(dir: &Path, upstreams: &[(&str, u16)], rtt_ms: u32) -> Self {
        if !dir.join("server.pem").exists() {
            make_certificates(dir);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/latency-proxy.py");
        let mut child = tokio::process::Command::new("python3")
            .arg(script)
            .arg("--cert")
            .arg(dir.join("server.pem"))
            .arg("--key")
            .arg(dir.join("server.key"))
            .arg("--rtt-ms")
            .arg(rtt_ms.to_string())
            .args(upstreams.iter().map(|(n, p)| format!("{n}={p}")))
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the latency proxy");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the latency proxy starts")
            .expect("its output")
            .expect("the latency proxy prints its ports");
        let mut ports: HashMap<String, u16> =
            serde_json::from_str(&line).expect("the proxy's ports as JSON");
        let control = ports.remove("control").expect("the control port");
        LatencyProxy {
            _child: child,
            control,
            ports,
            ca: dir.join("ca.pem"),
        }
    }

    /// The HTTPS URL of an endpoint through the proxy.
    pub fn url(&self, name: &str) -> String {
        format!("https://localhost:{}", self.port(name))
    }

    /// The proxy's port for an endpoint.
    pub fn port(&self, name: &str) -> u16 {
        self.ports[name]
    }

    async fn control(&self, method: &str, path: &str) -> serde_json::Value {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.control))
            .await
            .expect("the proxy's control port");
        stream
            .write_all(format!("{method} {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await
            .expect("a control request");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .await
            .expect("a control answer");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str(body).unwrap_or_else(|_| panic!("the proxy answered {answer}"))
    }

    /// The counts since the start or the last reset, per endpoint.
    pub async fn counts(&self) -> HashMap<String, Counts> {
        let doc = self.control("GET", "/stats").await;
        let count = |v: &serde_json::Value, k: &str| v[k].as_u64().expect("a count");
        doc.as_object()
            .expect("counts per endpoint")
            .iter()
            .filter(|(_, v)| v.is_object())
            .map(|(name, v)| {
                let counts = Counts {
                    connections: count(v, "connections"),
                    handshakes: count(v, "handshakes"),
                    requests: count(v, "requests"),
                    answers: count(v, "answers"),
                };
                (name.clone(), counts)
            })
            .collect()
    }

    pub async fn reset(&self) {
        self.control("POST", "/reset").await;
    }
}
