//! Helpers of the end-to-end tests: a temporary home ([`Home`]), the real `ondevice` binary run
//! as a foreground daemon ([`Daemon`]) or as one CLI command ([`Home::run`]), and clients for the
//! daemon's HTTP, WebSocket and gRPC surfaces. Every test gets its own home and its own daemon on
//! `127.0.0.1:0`, so tests run in parallel and never touch the user's config or data.

pub mod models;

pub use models::{models_entry, test_model};

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Longest wait for a daemon to print its ready lines (generous: two cores, tests in parallel).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a CLI command or for a daemon to exit after SIGTERM.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// A well-formed key (`odk_<12 hex>_<64 hex>`) that no daemon has issued.
pub const UNKNOWN_KEY: &str = "odk_000000000000_0000000000000000000000000000000000000000000000000000000000000000";
/// A credential that is not a key at all.
pub const GARBAGE_KEY: &str = "not-a-key";

/// A temporary directory holding `config.toml` and the daemon's home (`home/`, which the daemon
/// creates itself). Removed when dropped.
pub struct Home {
    root: tempfile::TempDir,
    /// The `ondevice` binary its commands run (the one cargo built, unless replaced).
    program: PathBuf,
}

impl Home {
    /// A home with an empty config file (defaults).
    pub fn new() -> Home {
        Home::with_config("")
    }

    /// A home whose config file holds `toml`.
    pub fn with_config(toml: &str) -> Home {
        let root = tempfile::Builder::new().prefix("ondevice-e2e-").tempdir().expect("create temp dir");
        let home = Home { root, program: PathBuf::from(env!("CARGO_BIN_EXE_ondevice")) };
        std::fs::write(home.config(), toml).expect("write config.toml");
        home
    }

    /// `ONDEVICE_HOME`.
    pub fn dir(&self) -> PathBuf {
        self.root.path().join("home")
    }

    /// `ONDEVICE_CONFIG`.
    pub fn config(&self) -> PathBuf {
        self.root.path().join("config.toml")
    }

    /// The temporary directory around the home, for test files.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// A file of the daemon's home.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    /// Runs `program` (a copy of the binary in another layout) instead of the one cargo built.
    pub fn use_program(&mut self, program: PathBuf) {
        self.program = program;
    }

    /// `ondevice ARGS` with this home and config and no other `ONDEVICE_*` variable from the
    /// test's environment (`ONDEVICE_API_KEY` in particular). The only place the tests spawn.
    #[allow(clippy::disallowed_methods)]
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.program);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ONDEVICE_") {
                cmd.env_remove(name);
            }
        }
        cmd.args(args)
            .env("ONDEVICE_HOME", self.dir())
            .env("ONDEVICE_CONFIG", self.config())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `ondevice ARGS` to completion (bounded by [`EXIT_TIMEOUT`]) with extra variables.
    pub fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(args);
        cmd.envs(env.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().expect("spawn ondevice");
        wait_output(child, EXIT_TIMEOUT, &format!("ondevice {}", args.join(" ")))
    }

    /// Runs `ondevice ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, &[])
    }

    /// Runs `ondevice ARGS`, asserts success and returns stdout.
    pub fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "ondevice {} failed: {}", args.join(" "), describe(&out));
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }
}

/// Status, stdout and stderr of a finished command, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits for `child` (stdout and stderr piped) and collects its output; kills it and fails the
/// test if it runs longer than `timeout`.
fn wait_output(mut child: Child, timeout: Duration, what: &str) -> Output {
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let status = match wait_bounded(&mut child, timeout) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().unwrap_or_default();
            panic!("{what} did not finish within {timeout:?}; stderr:\n{}", String::from_utf8_lossy(&stderr));
        }
    };
    Output { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() }
}

/// Polls `child` until it exits or `timeout` passes.
fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a process with this id exists.
pub fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

/// Sends SIGTERM to a process the test started.
pub fn terminate(pid: u32) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
}

/// An API key made through the API: its public id and the full key.
#[derive(Debug, Clone)]
pub struct Key {
    /// The 12 hex digits after `odk_`.
    pub id: String,
    /// The key to send.
    pub secret: String,
}

/// `ondevice serve` running in the foreground on `127.0.0.1:0` with its own home. Stopped with
/// SIGTERM (then SIGKILL if it hangs) when dropped.
pub struct Daemon {
    home: Option<Home>,
    child: Child,
    addr: SocketAddr,
    admin: String,
    stderr: PathBuf,
    http: reqwest::Client,
}

impl Daemon {
    /// Starts `ondevice serve` and waits until it prints its listen address and token path.
    pub fn start(home: Home) -> Daemon {
        Daemon::start_with_env(home, &[])
    }

    /// [`Daemon::start`] with extra environment variables (such as secrets referenced by the
    /// config as `env:NAME`).
    pub fn start_with_env(home: Home, env: &[(&str, &str)]) -> Daemon {
        let n = std::fs::read_dir(home.root()).map_or(0, |d| d.count());
        let stderr = home.root().join(format!("serve-{n}.stderr"));
        let mut cmd = home.command(&["serve"]);
        cmd.envs(env.iter().copied())
            .env("ONDEVICE_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("create stderr file"));
        let mut child = cmd.spawn().expect("spawn ondevice serve");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let mut addr = None;
        let mut token = None;
        while addr.is_none() || token.is_none() {
            let line = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => line,
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "ondevice serve did not become ready ({e}); stderr:\n{}",
                        std::fs::read_to_string(&stderr).unwrap_or_default()
                    );
                }
            };
            if let Some(a) = line.strip_prefix("ondevice listening on http://") {
                addr = Some(a.trim().parse::<SocketAddr>().expect("listen address"));
            } else if let Some(t) = line.strip_prefix("bootstrap token: ") {
                token = Some(PathBuf::from(t.trim()));
            }
        }
        let token = token.expect("token line");
        assert_eq!(token, home.file("bootstrap.token"), "the announced token path is in the home");
        let admin = std::fs::read_to_string(&token).expect("read bootstrap token").trim().to_owned();
        Daemon { home: Some(home), child, addr: addr.expect("address line"), admin, stderr, http: client() }
    }

    /// Starts a daemon in a fresh home with this config.
    pub fn with_config(toml: &str) -> Daemon {
        Daemon::start(Home::with_config(toml))
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The bootstrap (admin) key.
    pub fn admin_key(&self) -> &str {
        &self.admin
    }

    /// Its home.
    pub fn home(&self) -> &Home {
        self.home.as_ref().expect("home")
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// An HTTP client without proxies.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A request to `path`, with `Authorization: Bearer KEY` when a key is given.
    pub fn request(&self, method: Method, path: &str, key: Option<&str>) -> reqwest::RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match key {
            Some(k) => req.bearer_auth(k),
            None => req,
        }
    }

    /// Status and JSON body (`Null` when the body is not JSON) of a GET.
    pub async fn get(&self, path: &str, key: Option<&str>) -> (StatusCode, Value) {
        let resp = self.request(Method::GET, path, key).send().await.expect("GET");
        let status = resp.status();
        let body = resp.bytes().await.expect("body");
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// Creates a key with these scopes through `POST /api/v1/keys` (as admin).
    pub async fn key(&self, scopes: &[&str]) -> Key {
        let resp = self
            .request(Method::POST, "/api/v1/keys", Some(&self.admin))
            .json(&json!({ "scopes": scopes }))
            .send()
            .await
            .expect("POST /api/v1/keys");
        assert_eq!(resp.status(), StatusCode::CREATED, "create key {scopes:?}");
        let v: Value = resp.json().await.expect("created key JSON");
        Key { id: v["id"].as_str().expect("id").to_owned(), secret: v["key"].as_str().expect("key").to_owned() }
    }

    /// Revokes a key through `DELETE /api/v1/keys/{id}` (as admin).
    pub async fn revoke(&self, id: &str) {
        let path = format!("/api/v1/keys/{id}");
        let resp = self.request(Method::DELETE, &path, Some(&self.admin)).send().await.expect("DELETE");
        assert_eq!(resp.status(), StatusCode::OK, "revoke {id}");
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        terminate(self.pid());
    }

    /// Waits for the process to exit (after [`Daemon::terminate`]); fails the test on timeout.
    pub fn wait_exit(&mut self) -> ExitStatus {
        match wait_bounded(&mut self.child, EXIT_TIMEOUT) {
            Some(s) => s,
            None => panic!("the daemon did not exit within {EXIT_TIMEOUT:?}; stderr:\n{}", self.stderr()),
        }
    }

    /// Kills it with SIGKILL (no cleanup at all) and returns its home (for a restart).
    pub fn kill9(mut self) -> Home {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.home.take().expect("home")
    }

    /// Stops it with SIGTERM and returns its exit status and its home (for a restart).
    pub fn stop(mut self) -> (ExitStatus, Home) {
        self.terminate();
        let status = self.wait_exit();
        (status, self.home.take().expect("home"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
            if wait_bounded(&mut self.child, EXIT_TIMEOUT).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// The HTTP client of the tests: no proxy, bounded.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().expect("http client")
}

/// A WebSocket client stream.
pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `ws://ADDR/api/v1/ws` with extra handshake headers. `Err` holds the HTTP status of a
/// refused handshake.
pub async fn ws_connect(
    daemon: &Daemon,
    headers: &[(&str, String)],
) -> Result<(Ws, tungstenite::handshake::client::Response), StatusCode> {
    let mut req = format!("ws://{}/api/v1/ws", daemon.addr()).into_client_request().expect("ws request");
    for (name, value) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("header name");
        req.headers_mut().insert(name, value.parse().expect("header value"));
    }
    match tokio::time::timeout(Duration::from_secs(30), tokio_tungstenite::connect_async(req)).await {
        Ok(Ok(pair)) => Ok(pair),
        Ok(Err(tungstenite::Error::Http(resp))) => Err(StatusCode::from_u16(resp.status().as_u16()).expect("status")),
        Ok(Err(e)) => panic!("websocket handshake failed: {e}"),
        Err(_) => panic!("websocket handshake timed out"),
    }
}

/// The next JSON text message (skipping pings), or the close frame's code; fails the test when
/// nothing arrives within `timeout`.
pub async fn ws_next(ws: &mut Ws, timeout: Duration) -> WsEvent {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no websocket message within {timeout:?}"));
        match msg {
            Some(Ok(tungstenite::Message::Text(t))) => {
                return WsEvent::Json(serde_json::from_str(t.as_str()).expect("JSON message"));
            }
            Some(Ok(tungstenite::Message::Close(frame))) => {
                return WsEvent::Closed(frame.map(|f| u16::from(f.code)));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return WsEvent::Failed(e.to_string()),
            None => return WsEvent::Failed("stream ended without a close frame".to_owned()),
        }
    }
}

/// What [`ws_next`] saw.
#[derive(Debug)]
pub enum WsEvent {
    /// A JSON text message.
    Json(Value),
    /// A close frame with its code.
    Closed(Option<u16>),
    /// The connection broke (no close frame).
    Failed(String),
}

impl WsEvent {
    /// The JSON message, failing the test otherwise.
    pub fn json(self) -> Value {
        match self {
            WsEvent::Json(v) => v,
            other => panic!("expected a JSON message, got {other:?}"),
        }
    }
}

/// Sends a text message.
pub async fn ws_send(ws: &mut Ws, msg: Value) {
    use futures_util::SinkExt;
    ws.send(tungstenite::Message::text(msg.to_string())).await.expect("send websocket message");
}

/// A small valid GGUF file (llama metadata, two F32 tensors) written to `path`; `seed` varies
/// the tensor bytes so different seeds give different digests.
pub fn write_small_gguf(path: &Path, seed: u8) {
    use ondevice_gguf::writer::GgufWriter;
    use ondevice_gguf::{GgmlType, Value};
    let bytes = GgufWriter::new()
        .metadata("general.architecture", Value::String("llama".into()))
        .metadata("general.name", Value::String("tiny".into()))
        .metadata("general.file_type", Value::U32(0))
        .metadata("llama.context_length", Value::U32(2048))
        .tensor("token_embd.weight", &[4, 2], GgmlType::F32, vec![seed; 32])
        .tensor("out", &[3], GgmlType::F32, vec![seed.wrapping_add(1); 12])
        .to_bytes();
    std::fs::write(path, bytes).expect("write gguf");
}

/// Imports `file` as `name` through `POST /api/v1/models/import` unless it is already there;
/// returns the name.
pub async fn import_model_api(daemon: &Daemon, file: &Path, name: &str) -> String {
    let path = format!("/api/v1/models/{}", name.replace(':', "%3A"));
    if daemon.get(&path, Some(daemon.admin_key())).await.0 == StatusCode::OK {
        return name.to_owned();
    }
    let resp = daemon
        .request(Method::POST, "/api/v1/models/import", Some(daemon.admin_key()))
        .json(&json!({"path": file, "name": name}))
        .send()
        .await
        .expect("import");
    assert_eq!(resp.status(), StatusCode::CREATED, "import of {}", file.display());
    name.to_owned()
}

/// Runs a Python client script against the daemon: `BASE` (the daemon's URL), `ONDEVICE_TEST_KEY`
/// and `extra` in its environment, no proxy. The script prints one JSON value as its last line,
/// which is returned; a failing script fails the test with its output.
pub fn python(daemon: &Daemon, key: &str, extra: &[(&str, &str)], script: &str) -> Value {
    #[allow(clippy::disallowed_methods)] // the test's own client process, not a daemon spawn
    let out = Command::new("python3")
        .args(["-c", script])
        .env("BASE", daemon.url(""))
        .env("ONDEVICE_TEST_KEY", key)
        .envs(extra.iter().copied())
        .env("NO_PROXY", "*")
        .env("no_proxy", "*")
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    assert!(out.status.success(), "python client failed: {}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}
