//! End-to-end tests of the real `ondevice` binary: each test starts its own daemon on
//! `127.0.0.1:0` with a temporary `ONDEVICE_HOME` and config, and talks to it over HTTP,
//! WebSocket, gRPC and the CLI like a user would. This file holds the CLI, config and lifecycle
//! tests; the surfaces are in `e2e/`.
// The harness stops daemons with SIGTERM and checks Unix file modes and sockets; on Windows
// (no signals, named pipes) only the portable unit and worker tests run.
#![cfg(unix)]

mod common;
#[path = "e2e/diag.rs"]
mod diag;
#[path = "e2e/edges.rs"]
mod edges;
#[path = "e2e/egress.rs"]
mod egress;
#[path = "e2e/fallback.rs"]
mod fallback;
#[path = "e2e/grpc.rs"]
mod grpc;
#[path = "e2e/http.rs"]
mod http;
#[path = "e2e/inference.rs"]
mod inference;
#[path = "e2e/inference_compat.rs"]
mod inference_compat;
#[path = "e2e/inference_limits.rs"]
mod inference_limits;
#[path = "e2e/models.rs"]
mod models;
#[path = "e2e/prompts.rs"]
mod prompts;
#[path = "e2e/pull.rs"]
mod pull;
#[path = "e2e/quantize.rs"]
mod quantize;
#[path = "e2e/rag.rs"]
mod rag;
#[path = "e2e/schema.rs"]
mod schema;
#[path = "e2e/ui.rs"]
mod ui;
#[path = "e2e/ui_auth.rs"]
mod ui_auth;
#[path = "e2e/ui_pages.rs"]
mod ui_pages;
#[path = "e2e/vector.rs"]
mod vector;
#[path = "e2e/workers.rs"]
mod workers;
#[path = "e2e/ws.rs"]
mod ws;

use std::os::unix::fs::PermissionsExt;

use reqwest::StatusCode;
use serde_json::Value;

use common::{Daemon, Home, alive, describe, terminate};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// `odk_<12 lowercase hex>_<64 lowercase hex>`.
fn well_formed_key(key: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    key.strip_prefix("odk_")
        .and_then(|rest| rest.split_once('_'))
        .is_some_and(|(id, secret)| hex(id, 12) && hex(secret, 64))
}

#[tokio::test]
async fn bootstrap_token_is_private_reused_and_rotated_by_deleting_it() {
    let daemon = Daemon::start(Home::new());
    let token_file = daemon.home().file("bootstrap.token");
    assert_eq!(mode(&token_file), 0o600, "bootstrap.token");
    assert_eq!(mode(&daemon.home().file("ondevice.sock")), 0o600, "control socket");
    assert_eq!(mode(&daemon.home().dir()), 0o700, "home directory");
    let first = std::fs::read_to_string(&token_file).expect("token");
    assert!(well_formed_key(first.trim()), "token file holds {first:?}");
    assert_eq!(daemon.admin_key(), first.trim());
    assert_eq!(
        daemon.get("/api/v1/keys", Some(daemon.admin_key())).await.0,
        StatusCode::OK,
        "the token is an admin key"
    );

    // A restart reuses the token.
    let (status, home) = daemon.stop();
    assert!(status.success(), "clean stop: {status}");
    let daemon = Daemon::start(home);
    assert_eq!(daemon.admin_key(), first.trim(), "restart reuses the token");
    assert_eq!(daemon.get("/api/v1/keys", Some(first.trim())).await.0, StatusCode::OK);

    // Deleting it and restarting rotates it: a new key, the old one refused.
    std::fs::remove_file(&token_file).expect("delete token");
    let (status, home) = daemon.stop();
    assert!(status.success(), "clean stop: {status}");
    // (NO_COLOR empty counts as unset: colour would be allowed, but stderr is not a terminal.)
    let daemon = Daemon::start_with_env(home, &[("NO_COLOR", "")]);
    let second = std::fs::read_to_string(&token_file).expect("new token");
    assert!(well_formed_key(second.trim()));
    assert_ne!(second, first, "deleting the token rotates it");
    assert_eq!(mode(&token_file), 0o600, "rotated bootstrap.token");
    assert_eq!(
        daemon.get("/api/v1/keys", Some(first.trim())).await.0,
        StatusCode::UNAUTHORIZED,
        "old token after rotation"
    );
    let (status, keys) = daemon.get("/api/v1/keys", Some(second.trim())).await;
    assert_eq!(status, StatusCode::OK);
    let bootstrap: Vec<&Value> = keys.as_array().expect("list").iter().filter(|k| k["name"] == "bootstrap").collect();
    assert_eq!(bootstrap.len(), 2, "{keys}");
    assert_eq!(bootstrap.iter().filter(|k| k["revoked_at"].is_null()).count(), 1, "one live bootstrap key: {keys}");

    // Logs written to a file (not a terminal) carry no colour escapes.
    let log = daemon.stderr();
    assert!(log.contains("ondevice ready"), "{log}");
    assert!(!log.contains('\x1b'), "ANSI escapes in a non-terminal log:\n{log}");
}

#[tokio::test]
async fn cli_keys_revoke_takes_effect_immediately() {
    let daemon = Daemon::start(Home::new());
    let home = daemon.home();
    // The CLI finds the daemon through listen.addr and uses the bootstrap token.
    let created: Value =
        serde_json::from_str(&home.run_ok(&["keys", "create", "--scope", "read", "--name", "reader", "--json"]))
            .expect("keys create --json");
    let (id, key) = (created["id"].as_str().expect("id"), created["key"].as_str().expect("key"));
    assert_eq!(created["scopes"], serde_json::json!(["read"]));
    let bare = home.run_ok(&["keys", "create", "--scope", "models", "--scope", "infer"]);
    assert!(well_formed_key(bare.trim()), "keys create prints the bare key: {bare:?}");

    assert_eq!(daemon.get("/metrics", Some(key)).await.0, StatusCode::OK, "a read key reads /metrics");
    // ...and is refused on writes, also through the CLI.
    let out = home.run_with(&["keys", "create", "--scope", "read"], &[("ONDEVICE_API_KEY", key)]);
    assert!(!out.status.success(), "a read key created a key: {}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("scope"), "{}", describe(&out));

    home.run_ok(&["keys", "revoke", id]);
    let (status, body) = daemon.get("/api/v1/status", Some(key)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "revoked key: {body}");
    assert_eq!(body["error"]["code"], "unauthenticated");

    let listed: Value = serde_json::from_str(&home.run_ok(&["keys", "list", "--json"])).expect("keys list --json");
    let entry = listed.as_array().expect("array").iter().find(|k| k["id"] == id).expect("revoked key listed");
    assert!(entry["revoked_at"].is_string(), "{entry}");
    assert_eq!(entry["name"], "reader");
    let admin = listed.as_array().expect("array").iter().find(|k| k["name"] == "bootstrap").expect("bootstrap listed");
    assert!(admin["revoked_at"].is_null(), "{admin}");
    assert!(!listed.to_string().contains(key), "keys list never shows secrets");

    // Revoking an unknown id fails with a message.
    let out = home.run(&["keys", "revoke", "000000000000"]);
    assert!(!out.status.success(), "{}", describe(&out));
}

/// A clients' shell that exported `ONDEVICE_LISTEN=127.0.0.1:0` to start the daemon still
/// reaches it: port 0 is never connectable, so the address the daemon recorded is used.
#[tokio::test]
async fn cli_finds_a_daemon_started_on_port_zero() {
    let daemon = Daemon::start(Home::new());
    let out = daemon.home().run_with(&["keys", "list", "--json"], &[("ONDEVICE_LISTEN", "127.0.0.1:0")]);
    assert!(out.status.success(), "{}", describe(&out));
}

/// Without a running daemon, client commands say how to start one: on a home no daemon ever used,
/// and on one whose daemon has stopped.
#[tokio::test]
async fn cli_without_a_daemon_says_how_to_start_one() {
    let home = Home::new();
    let out = home.run(&["models", "list"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("`ondevice daemon start`"), "{}", describe(&out));
    assert!(stderr.contains("no ondevice daemon has run with home"), "{}", describe(&out));

    let (status, home) = Daemon::start(home).stop();
    assert!(status.success());
    let out = home.run(&["models", "list"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("is it running?"), "{}", describe(&out));
}

/// Config files that must be refused, with the line the error must name.
const BAD_CONFIGS: [(&str, &str, usize, &str); 4] = [
    ("unknown key", "[server]\nlisten = \"127.0.0.1:0\"\nbogus = 1\n", 3, "bogus"),
    ("bad value", "# sizes need a unit\n[server]\nbody_limit = \"lots\"\n", 3, "lots"),
    ("wrong type", "[server]\nmax_concurrent_requests = \"many\"\n", 2, "many"),
    ("auth off on all interfaces", "[server]\nlisten = \"0.0.0.0:7733\"\n\n[auth]\nenabled = false\n", 5, "auth"),
];

#[test]
fn config_errors_name_the_file_and_line() {
    for (what, text, line, fragment) in BAD_CONFIGS {
        let home = Home::with_config(text);
        let location = format!("config.toml:{line}");
        let config = home.config();
        let config = config.to_str().expect("utf-8 path");

        let out = home.run(&["config", "check", config]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "config check, {what}: {}", describe(&out));
        assert!(stderr.contains(&location) && stderr.contains(fragment), "config check, {what}: {stderr}");

        // `serve` refuses the same file before listening. The listen variable keeps a port of
        // 0 on all interfaces, so the auth case stays non-loopback without a fixed port.
        let out = home.run_with(&["serve"], &[("ONDEVICE_LISTEN", "0.0.0.0:0")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "serve, {what}: {}", describe(&out));
        assert!(stderr.contains(&location), "serve, {what}: {stderr}");
        assert!(!home.file("listen.addr").exists(), "serve, {what}: it listened");
    }

    let home =
        Home::with_config("[server]\nlisten = \"127.0.0.1:7733\"\nbody_limit = \"2KiB\"\n\n[auth]\nenabled = false\n");
    let config = home.config();
    let out = home.run(&["config", "check", config.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "a valid file passes: {}", describe(&out));
}

#[test]
fn a_second_daemon_on_the_same_home_is_refused() {
    let daemon = Daemon::start(Home::new());
    let out = daemon.home().run_with(&["serve"], &[("ONDEVICE_LISTEN", "127.0.0.1:0")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(stderr.contains("another ondevice daemon"), "{stderr}");
    assert!(stderr.contains(&daemon.pid().to_string()), "names the running pid: {stderr}");
    let pid: u32 =
        std::fs::read_to_string(daemon.home().file("ondevice.pid")).expect("pid file").trim().parse().expect("pid");
    assert_eq!(pid, daemon.pid(), "the first daemon keeps its pid file");
}

/// Stops a daemon started with `ondevice daemon start` if the test fails before `daemon stop`.
struct Detached<'a> {
    home: Option<&'a Home>,
}

impl Drop for Detached<'_> {
    fn drop(&mut self) {
        let Some(home) = self.home else { return };
        let pid = std::fs::read_to_string(home.file("ondevice.pid")).ok().and_then(|p| p.trim().parse::<u32>().ok());
        if let Some(pid) = pid.filter(|p| alive(*p)) {
            terminate(pid);
        }
    }
}

#[tokio::test]
async fn daemon_start_status_stop() {
    let home = Home::new();
    let mut guard = Detached { home: Some(&home) };
    home.run_ok(&["daemon", "start", "--listen", "127.0.0.1:0"]);

    let out = home.run(&["daemon", "status", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let status: Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let pid: u64 = std::fs::read_to_string(home.file("ondevice.pid")).expect("pid file").trim().parse().expect("pid");
    assert_eq!(status["running"], true, "{status}");
    assert_eq!(status["pid"], pid, "{status}");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["uptime_seconds"].is_u64() && status["workers"].is_array(), "{status}");
    let listen = status["listen_address"].as_str().expect("listen_address");
    assert_eq!(std::fs::read_to_string(home.file("listen.addr")).expect("listen.addr").trim(), listen);
    let healthz = common::client().get(format!("http://{listen}/healthz")).send().await.expect("healthz");
    assert_eq!(healthz.status(), StatusCode::OK, "the background daemon serves");
    assert!(home.run_ok(&["daemon", "status"]).contains(&format!("pid {pid}")));

    home.run_ok(&["daemon", "stop"]);
    guard.home = None;
    assert!(!alive(u32::try_from(pid).expect("pid")), "daemon stop waits for the exit");
    let out = home.run(&["daemon", "status"]);
    assert_eq!(out.status.code(), Some(3), "status of a stopped daemon: {}", describe(&out));
    let out = home.run(&["daemon", "status", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let status: Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(status["running"], false);
}
