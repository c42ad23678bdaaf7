//! Egress ledger, offline mode and telemetry through the real daemon.
//!
//! - Offline: a listener on a non-loopback address stands for "the outside"; it lives in the
//!   test's own network namespace, which the test re-runs itself in (see [`outside_ip`]). The
//!   daemon runs with `[network] offline = true` and telemetry enabled towards it, is driven
//!   through a pull of a URL on it, a chat request routed to a runtime on it and several
//!   telemetry ticks: each fails with an error naming the setting, the ledger records each as
//!   `blocked` (and `/metrics` counts them), and the listener accepted no connection at all.
//! - Telemetry off (the default): the same listener as the telemetry endpoint, online, sees no
//!   connection and the ledger no telemetry entry; `ONDEVICE_TELEMETRY=0` wins over consent too.
//! - Exactly once: a loopback collector (a real HTTP server in the test) takes reports without
//!   answering, the daemon is killed with SIGKILL, restarted, and every report (sequence 1..=n)
//!   reaches the collector, duplicates being only resends of the same `event_id`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{Daemon, Home, describe};

/// The address standing for "the outside". Tests that need one run in a private network
/// namespace of their own (`unshare --user --map-root-user --net`), where a non-loopback address
/// added to that namespace's loopback interface is reachable from inside only: nothing binds on
/// the host's interfaces and nothing can leave. Outside the namespace this re-runs the test in one
/// and returns `None` once that run has passed; inside, it returns the address.
fn outside_ip(test: &str) -> Option<IpAddr> {
    const VAR: &str = "ONDEVICE_TEST_NETNS_IP";
    const IP: &str = "192.0.2.77";
    if let Ok(ip) = std::env::var(VAR) {
        return Some(ip.parse().expect("ONDEVICE_TEST_NETNS_IP is an address"));
    }
    let exe = std::env::current_exe().expect("the test binary");
    let script = format!("ip link set lo up && ip addr add {IP}/32 dev lo && exec \"$0\" --exact \"$1\" --nocapture");
    #[allow(clippy::disallowed_methods)] // the test re-run in its namespace, not a daemon spawn
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new("unshare")
            .args(["--user", "--map-root-user", "--net", "--", "sh", "-c", &script])
            .arg(exe)
            .arg(format!("egress::{test}"))
            .env(VAR, IP)
            .env("PATH", format!("{}:/usr/sbin:/sbin", std::env::var("PATH").unwrap_or_default()))
            .stdin(std::process::Stdio::null())
            .output()
    })
    .expect("run unshare (util-linux) and ip (iproute2)");
    assert!(out.status.success(), "the test in its network namespace failed: {}", describe(&out));
    // The re-run must have run the test, not filtered it out.
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"), "{}", describe(&out));
    None
}

/// A TCP listener that counts every connection it accepts, and what the HTTP requests carried.
struct Listener {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Telemetry bodies by `event_id`: how many times each arrived, and its body.
    events: Arc<Mutex<BTreeMap<String, (usize, Value)>>>,
    /// While true, requests are read and recorded but never answered.
    hang: Arc<AtomicBool>,
}

impl Listener {
    async fn start(ip: IpAddr) -> Listener {
        let tcp = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0)).await.expect("bind");
        let l = Listener {
            addr: tcp.local_addr().unwrap(),
            accepted: Arc::default(),
            events: Arc::default(),
            hang: Arc::default(),
        };
        let (accepted, events, hang) = (l.accepted.clone(), l.events.clone(), l.hang.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = tcp.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let (events, hang) = (events.clone(), hang.clone());
                tokio::spawn(async move {
                    while let Some(body) = read_request(&mut sock).await {
                        if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                            if let Some(id) = v["event_id"].as_str() {
                                let mut e = events.lock().unwrap();
                                e.entry(id.to_owned()).or_insert((0, v.clone())).0 += 1;
                            }
                        }
                        if hang.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                        let _ = sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
                    }
                });
            }
        });
        l
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// One HTTP/1.1 request's body (head read up to the blank line, then `content-length` bytes).
async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if sock.read(&mut byte).await.ok()? == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok()))
        .unwrap_or(0);
    let mut body = vec![0u8; len.min(1 << 20)];
    sock.read_exact(&mut body).await.ok()?;
    Some(body)
}

fn egress(home: &Home) -> Value {
    let out = home.run(&["diag", "egress", "--json"]);
    assert!(out.status.success(), "diag egress: {}", describe(&out));
    serde_json::from_slice(&out.stdout).expect("egress JSON")
}

fn rows<'a>(ledger: &'a Value, purpose: &str) -> Vec<&'a Value> {
    ledger["connections"].as_array().unwrap().iter().filter(|r| r["purpose"] == purpose).collect()
}

async fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_mode_makes_no_connection_for_pulls_runtimes_and_telemetry() {
    let Some(ip) = outside_ip("offline_mode_makes_no_connection_for_pulls_runtimes_and_telemetry") else { return };
    let outside = Listener::start(ip).await;
    let home = Home::with_config(&format!(
        r#"
[network]
offline = true

[telemetry]
endpoint = "{telemetry}"
interval_s = 1

[registry]
allow_hosts = ["{ip}"]
retries = 1

[runtimes.remote]
kind = "openai"
base_url = "{runtime}"

[inference.models."remote-model:latest"]
runtimes = ["remote"]
"#,
        telemetry = outside.url("/collect"),
        runtime = outside.url("/v1"),
    ));
    let enabled = home.run_ok(&["telemetry", "enable"]);
    assert!(enabled.contains("telemetry enabled"), "{enabled}");
    let daemon = Daemon::start(home);

    // A pull of a URL: the job fails with the setting named.
    let resp = daemon
        .request(Method::POST, "/api/v1/models/pull", Some(daemon.admin_key()))
        .json(&json!({"model": outside.url("/m.gguf"), "name": "outside:latest"}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let job: Value = resp.json().await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    let failed = loop {
        let (_, j) = daemon.get(&format!("/api/v1/jobs/{id}"), Some(daemon.admin_key())).await;
        if j["state"] == "failed" {
            break j;
        }
        assert_ne!(j["state"], "succeeded", "{j}");
        assert!(Instant::now() < deadline, "pull still {j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("offline mode is on") && error.contains("[network] offline"), "{failed}");

    // A runtime call to the non-loopback runtime: 503 with the setting named.
    let infer = daemon.key(&["infer"]).await;
    let resp = daemon
        .request(Method::POST, "/v1/chat/completions", Some(&infer.secret))
        .json(&json!({"model": "remote-model", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("offline mode is on"), "{body}");

    // Telemetry: consent given, ticks every second; each upload is refused before connecting.
    let home = daemon.home();
    wait_until("a blocked telemetry upload in the ledger", 30, || !rows(&egress(home), "telemetry").is_empty()).await;
    let ledger = egress(home);
    assert_eq!(ledger["offline"], true);
    for purpose in ["pull", "runtime", "telemetry"] {
        let r = rows(&ledger, purpose);
        assert!(!r.is_empty(), "no {purpose} row in {ledger}");
        for row in r {
            assert_eq!(row["outcome"], "blocked", "{row}");
            assert_eq!(row["host"], ip.to_string(), "{row}");
            assert_eq!((row["sent_bytes"].as_u64(), row["received_bytes"].as_u64()), (Some(0), Some(0)));
        }
    }
    let status: Value = serde_json::from_str(&home.run_ok(&["telemetry", "status", "--json"])).unwrap();
    assert!(status["pending"].as_u64().unwrap() >= 1, "the report waits in the outbox: {status}");

    // /metrics: the refusals, the failed pull job, the runtime that could not answer, offline on.
    let metrics =
        daemon.request(Method::GET, "/metrics", Some(daemon.admin_key())).send().await.unwrap().text().await.unwrap();
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{series} missing from /metrics:\n{metrics}"))
    };
    for purpose in ["pull", "runtime", "telemetry"] {
        let blocked = value(&format!("ondevice_egress_connections_total{{purpose=\"{purpose}\",outcome=\"blocked\"}}"));
        assert!(blocked >= 1.0, "{purpose}: {blocked}");
        assert_eq!(value(&format!("ondevice_egress_connections_total{{purpose=\"{purpose}\",outcome=\"ok\"}}")), 0.0);
    }
    assert_eq!(value("ondevice_offline"), 1.0);
    assert_eq!(value("ondevice_jobs{kind=\"pull\",state=\"failed\"}"), 1.0);
    assert!(value("ondevice_runtime_requests_total{runtime=\"none\",outcome=\"error\"}") >= 1.0);
    value("ondevice_runtime_circuit_open{runtime=\"remote\"}");
    value("ondevice_runtime_healthy{runtime=\"remote\"}");
    assert_eq!(outside.accepted(), 0, "a connection left the daemon in offline mode");

    // The bundle carries the ledger.
    let out = home.root().join("b.tar.gz");
    home.run_ok(&["diag", "bundle", "--output", out.to_str().unwrap()]);
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(&out).unwrap()));
    let names: Vec<String> =
        ar.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect();
    assert!(names.iter().any(|n| n == "egress.json"), "{names:?}");
    assert_eq!(outside.accepted(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn telemetry_off_sends_nothing_and_the_environment_wins_over_consent() {
    let Some(ip) = outside_ip("telemetry_off_sends_nothing_and_the_environment_wins_over_consent") else { return };
    let outside = Listener::start(ip).await;
    let config = format!("[telemetry]\nendpoint = \"{}\"\ninterval_s = 1\n", outside.url("/collect"));
    // Off by default: no consent given.
    let daemon = Daemon::start(Home::with_config(&config));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, home) = daemon.stop();
    assert!(rows(&egress(&home), "telemetry").is_empty(), "{}", egress(&home));
    let status: Value = serde_json::from_str(&home.run_ok(&["telemetry", "status", "--json"])).unwrap();
    assert_eq!((status["state"].as_str(), status["pending"].as_u64()), (Some("off"), Some(0)), "{status}");
    // Consent given, but ONDEVICE_TELEMETRY=0 in the daemon's environment wins; DO_NOT_TRACK too.
    home.run_ok(&["telemetry", "enable"]);
    let mut home = home;
    for veto in [("ONDEVICE_TELEMETRY", "0"), ("DO_NOT_TRACK", "1")] {
        let daemon = Daemon::start_with_env(home, &[veto]);
        tokio::time::sleep(Duration::from_secs(4)).await;
        let (_, h) = daemon.stop();
        let out = h.run_with(&["telemetry", "status", "--json"], &[veto]);
        let status: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
        assert_eq!(status["state"], "disabled_by_environment", "{status}");
        assert_eq!(status["pending"], 0, "nothing was even made: {status}");
        assert!(rows(&egress(&h), "telemetry").is_empty());
        assert_eq!(outside.accepted(), 0, "a telemetry connection was made with {veto:?}");
        home = h;
    }
    assert_eq!(outside.accepted(), 0, "telemetry off, yet a connection was made");
}

#[tokio::test(flavor = "multi_thread")]
async fn telemetry_reaches_a_collector_exactly_once_after_dedupe_across_sigkill() {
    let collector = Listener::start(IpAddr::from([127, 0, 0, 1])).await;
    collector.hang.store(true, Ordering::SeqCst);
    let home =
        Home::with_config(&format!("[telemetry]\nendpoint = \"{}\"\ninterval_s = 1\n", collector.url("/collect")));
    home.run_ok(&["telemetry", "enable"]);
    let preview: Value = serde_json::from_str(&home.run_ok(&["telemetry", "preview", "--json"])).unwrap();
    let daemon = Daemon::start(home);
    // The first report arrives and is never answered; the daemon dies with it unacknowledged.
    let events = collector.events.clone();
    wait_until("the first report", 30, || !events.lock().unwrap().is_empty()).await;
    let home = daemon.kill9();
    let first: Vec<String> = events.lock().unwrap().keys().cloned().collect();
    assert_eq!(first.len(), 1, "one report in flight at the kill");
    collector.hang.store(false, Ordering::SeqCst);

    let daemon = Daemon::start(home);
    wait_until("the resend of the first report and two more", 60, || {
        let e = events.lock().unwrap();
        e.get(&first[0]).is_some_and(|(n, _)| *n >= 2) && e.len() >= 3
    })
    .await;
    let (_, home) = daemon.stop();

    let e = events.lock().unwrap().clone();
    let pending: Value = serde_json::from_str(&home.run_ok(&["telemetry", "preview", "--json"])).unwrap();
    let pending_seqs: BTreeSet<u64> =
        pending["queued"].as_array().unwrap().iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    // Dedupe by event_id: one sequence number per id, one id per sequence number, no gap.
    let mut by_seq: BTreeMap<u64, &str> = BTreeMap::new();
    for (id, (_, body)) in &e {
        let seq = body["seq"].as_u64().expect("seq");
        assert!(by_seq.insert(seq, id).is_none(), "two events with sequence {seq}: {e:?}");
        assert_eq!(body["report_version"], 1);
        assert_eq!(body["install_id"], preview["next"]["install_id"], "{body}");
    }
    let max = *by_seq.keys().max().unwrap();
    for seq in 1..=max {
        assert!(by_seq.contains_key(&seq) || pending_seqs.contains(&seq), "report {seq} was lost: {e:?}");
    }
    let resent: usize = e.values().map(|(n, _)| n - 1).sum();
    assert!(resent >= 1, "the report unacknowledged at the kill was sent again");
    println!(
        "telemetry: {} distinct events received ({} resends dropped by dedupe), {} still queued",
        e.len(),
        resent,
        pending_seqs.len()
    );
    // Only what the report schema allows: no path, host name or prompt.
    for (_, body) in e.values() {
        let text = body.to_string();
        assert!(!text.contains(&home.dir().display().to_string()) && !text.contains("127.0.0.1"), "{text}");
    }
    let ledger = egress(&home);
    let tel = rows(&ledger, "telemetry");
    assert!(!tel.is_empty() && tel.iter().all(|r| r["loopback"] == true && r["host"] == "127.0.0.1"), "{ledger}");
}
