//! Probe checks (HTTP GET, TCP, Unix socket or Windows named pipe, exec, gRPC health) and the Kubernetes-style driver
//! that turns check results into startup/liveness/readiness verdicts.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::spec::{ProbeCheck, ProbeSpec};

/// HTTP clients for probes and webhooks.
#[derive(Debug, Clone)]
pub(crate) struct Clients {
    /// HTTP/1.1 + HTTP/2 client (probes, webhooks).
    pub(crate) http: reqwest::Client,
    /// Plaintext HTTP/2 with prior knowledge (gRPC health).
    pub(crate) grpc: reqwest::Client,
}

impl Clients {
    pub(crate) fn new() -> Clients {
        let build = |b: reqwest::ClientBuilder| b.no_proxy().pool_max_idle_per_host(0).build().unwrap_or_default();
        Clients {
            http: build(reqwest::Client::builder()),
            grpc: build(reqwest::Client::builder().http2_prior_knowledge()),
        }
    }
}

/// Run one check with the probe's timeout. `Err` carries a short reason.
pub(crate) async fn check(clients: &Clients, spec: &ProbeSpec) -> Result<(), String> {
    match tokio::time::timeout(spec.timeout, check_inner(clients, &spec.check, spec.timeout)).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {} ms", spec.timeout.as_millis())),
    }
}

async fn check_inner(clients: &Clients, check: &ProbeCheck, timeout: Duration) -> Result<(), String> {
    let http = &clients.http;
    match check {
        ProbeCheck::Http(url) => {
            let resp = http.get(url).timeout(timeout).send().await.map_err(|e| format!("GET {url}: {e}"))?;
            let s = resp.status();
            if s.is_success() || s.is_redirection() { Ok(()) } else { Err(format!("GET {url}: status {s}")) }
        }
        ProbeCheck::Tcp(addr) => {
            tokio::net::TcpStream::connect(addr.as_str()).await.map(drop).map_err(|e| format!("connect {addr}: {e}"))
        }
        // A Unix socket, or a named pipe (`\\.\pipe\NAME`) on Windows.
        ProbeCheck::Unix(path) => {
            ondevice_ipc::probe(path).await.map_err(|e| format!("connect {}: {e}", path.display()))
        }
        ProbeCheck::Exec(argv) => {
            let mut child = crate::process::spawn_helper(argv, &[]).map_err(|e| format!("exec {argv:?}: {e}"))?;
            let st = child.wait().await.map_err(|e| format!("exec {argv:?}: {e}"))?;
            if st.success() { Ok(()) } else { Err(format!("exec {argv:?}: {st}")) }
        }
        ProbeCheck::Grpc(addr) => grpc_health(&clients.grpc, addr, timeout).await,
    }
}

/// `grpc.health.v1.Health/Check` with an empty service name over plaintext HTTP/2 (prior
/// knowledge). The request is a 5-byte gRPC frame header and an empty `HealthCheckRequest`; the
/// answer's `HealthCheckResponse.status` (field 1, varint) must be SERVING (1).
async fn grpc_health(http: &reqwest::Client, addr: &str, timeout: Duration) -> Result<(), String> {
    let url = format!("http://{addr}/grpc.health.v1.Health/Check");
    let resp = http
        .post(&url)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(vec![0u8, 0, 0, 0, 0])
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| format!("grpc health {addr}: {e}"))?;
    match resp.headers().get("grpc-status") {
        Some(st) if st != "0" => {
            return Err(format!("grpc health {addr}: grpc-status {}", st.to_str().unwrap_or("?")));
        }
        _ => {}
    }
    let body = resp.bytes().await.map_err(|e| format!("grpc health {addr}: {e}"))?;
    match parse_health_status(&body) {
        Some(1) => Ok(()),
        Some(s) => Err(format!("grpc health {addr}: status {s} (not SERVING)")),
        None => Err(format!("grpc health {addr}: no HealthCheckResponse in the answer")),
    }
}

/// The `status` field of the first gRPC message in `body`, if it parses.
pub(crate) fn parse_health_status(body: &[u8]) -> Option<u64> {
    if body.len() < 5 || body[0] != 0 {
        return None;
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let msg = body.get(5..5 + len)?;
    let mut i = 0;
    let mut status = 0; // absent field = UNKNOWN (0)
    while i < msg.len() {
        let (key, n) = varint(&msg[i..])?;
        i += n;
        match key & 7 {
            0 => {
                let (v, n) = varint(&msg[i..])?;
                i += n;
                if key >> 3 == 1 {
                    status = v;
                }
            }
            2 => {
                let (l, n) = varint(&msg[i..])?;
                i += n + l as usize;
            }
            5 => i += 4,
            1 => i += 8,
            _ => return None,
        }
    }
    Some(status)
}

fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// What the probe driver tells the worker task.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Startup probe succeeded (or there was none): liveness/readiness now run.
    Started,
    /// A check failed (counted in metrics).
    CheckFailed { probe: &'static str, reason: String },
    /// Readiness changed.
    Ready(bool),
    /// Startup or liveness exceeded its failure threshold: restart the worker.
    Kill { probe: &'static str },
}

async fn run_one(http: Clients, name: &'static str, spec: ProbeSpec, tx: mpsc::Sender<Verdict>) -> bool {
    // Returns true when a startup probe succeeded.
    tokio::time::sleep(spec.initial_delay).await;
    let (mut fails, mut oks) = (0u32, 0u32);
    let mut ready: Option<bool> = None;
    let mut tick = tokio::time::interval(spec.period.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match check(&http, &spec).await {
            Ok(()) => {
                fails = 0;
                oks = oks.saturating_add(1);
                match name {
                    "startup" => return true,
                    "readiness" if oks >= spec.success_threshold.max(1) && ready != Some(true) => {
                        ready = Some(true);
                        if tx.send(Verdict::Ready(true)).await.is_err() {
                            return false;
                        }
                    }
                    _ => {}
                }
            }
            Err(reason) => {
                oks = 0;
                fails = fails.saturating_add(1);
                if tx.send(Verdict::CheckFailed { probe: name, reason }).await.is_err() {
                    return false;
                }
                if fails >= spec.failure_threshold.max(1) {
                    match name {
                        "readiness" => {
                            if ready != Some(false) {
                                ready = Some(false);
                                if tx.send(Verdict::Ready(false)).await.is_err() {
                                    return false;
                                }
                            }
                        }
                        _ => {
                            let _ = tx.send(Verdict::Kill { probe: name }).await;
                            return false;
                        }
                    }
                }
            }
        }
    }
}

/// Drive the probes of one process: the startup probe first (if any), then liveness and
/// readiness concurrently. Ends when the receiver is dropped or a kill verdict is sent.
pub(crate) async fn drive(
    http: Clients,
    startup: Option<ProbeSpec>,
    liveness: Option<ProbeSpec>,
    readiness: Option<ProbeSpec>,
    tx: mpsc::Sender<Verdict>,
) {
    let started = match startup {
        Some(s) => run_one(http.clone(), "startup", s, tx.clone()).await,
        None => true,
    };
    if !started {
        return;
    }
    if tx.send(Verdict::Started).await.is_err() {
        return;
    }
    let live = async {
        if let Some(l) = liveness {
            run_one(http.clone(), "liveness", l, tx.clone()).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let ready = async {
        if let Some(r) = readiness {
            run_one(http.clone(), "readiness", r, tx.clone()).await;
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = live => {}
        _ = ready => {}
    }
}

#[cfg(test)]
mod tests {
    use super::parse_health_status;

    #[test]
    fn grpc_health_response_is_parsed() {
        assert_eq!(parse_health_status(&[0, 0, 0, 0, 2, 0x08, 0x01]), Some(1));
        assert_eq!(parse_health_status(&[0, 0, 0, 0, 2, 0x08, 0x02]), Some(2));
        // Empty message: status absent = UNKNOWN.
        assert_eq!(parse_health_status(&[0, 0, 0, 0, 0]), Some(0));
        // An unknown length-delimited field before the status is skipped.
        assert_eq!(parse_health_status(&[0, 0, 0, 0, 5, 0x12, 0x01, b'x', 0x08, 0x01]), Some(1));
        // Compressed flag, truncated frame, truncated varint.
        assert_eq!(parse_health_status(&[1, 0, 0, 0, 2, 0x08, 0x01]), None);
        assert_eq!(parse_health_status(&[0, 0, 0, 0, 9, 0x08]), None);
        assert_eq!(parse_health_status(&[0, 0, 0, 0, 1, 0x80]), None);
    }
}
