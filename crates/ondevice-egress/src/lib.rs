//! The one gate every outbound network connection of the daemon passes: model pulls, remote
//! runtimes (OpenAI-compatible, Ollama, REST), telemetry uploads and webhook hooks each call
//! [`begin`] (or [`Egress::begin`]) with their [`Purpose`] and the peer's host and port before
//! they connect.
//!
//! - **Offline mode** (`[network] offline = true`): [`begin`] refuses every non-loopback peer with
//!   [`EgressError::Offline`], before any socket is opened. Loopback peers (`localhost`,
//!   `127.0.0.0/8`, `::1`) are not egress: a local llama-server or collector stays reachable, and
//!   its connections are still recorded, flagged `loopback`.
//! - **The ledger**: each [`Flow`] counts the bytes its caller sent and received and, when
//!   dropped, hands one [`Record`] (purpose, host, port, time, bytes, outcome) to the installed
//!   [`Ledger`] (the daemon writes them to the store's `egress` table). Refusals are recorded too
//!   (outcome `blocked`).
//!
//! The daemon installs one [`Egress`] at start ([`install`]); until then (unit tests of other
//! crates, one-shot CLI commands) [`begin`] allows everything and records nothing. This crate
//! depends on no other ondevice crate so that every crate that connects out can use it.

#![warn(missing_docs)]

use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Why a connection is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// A model download (`ondevice models pull`).
    Pull,
    /// A remote runtime (`[runtimes.NAME]` of kind openai, ollama or rest).
    Runtime,
    /// A telemetry upload.
    Telemetry,
    /// A supervisor webhook hook.
    Webhook,
    /// The vector store's PostgreSQL server (`[vector] backend = "pgvector"` over TCP).
    VectorStore,
}

impl Purpose {
    /// Every purpose.
    pub const ALL: [Purpose; 5] =
        [Purpose::Pull, Purpose::Runtime, Purpose::Telemetry, Purpose::Webhook, Purpose::VectorStore];

    /// The name used in the ledger and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Pull => "pull",
            Purpose::Runtime => "runtime",
            Purpose::Telemetry => "telemetry",
            Purpose::Webhook => "webhook",
            Purpose::VectorStore => "vector-store",
        }
    }
}

impl std::fmt::Display for Purpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It was made and its caller did not report a failure.
    Ok,
    /// It was attempted and failed (see [`Record::error`]).
    Error,
    /// Offline mode refused it: no socket was opened.
    Blocked,
}

impl Outcome {
    /// `ok`, `error` or `blocked`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Blocked => "blocked",
        }
    }
}

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Unix seconds when it began.
    pub at: i64,
    /// Why.
    pub purpose: Purpose,
    /// The host (name or address), never a path, query or user.
    pub host: String,
    /// The TCP port.
    pub port: u16,
    /// Whether the peer is a loopback name or address.
    pub loopback: bool,
    /// How it ended.
    pub outcome: Outcome,
    /// Bytes sent by the caller (request bodies).
    pub sent: u64,
    /// Bytes received by the caller (response bodies).
    pub received: u64,
    /// Milliseconds from [`begin`] to the end of the flow.
    pub duration_ms: u64,
    /// The failure or refusal, if any.
    pub error: Option<String>,
}

/// Where records go (the daemon: the store's `egress` table). Must not block for long.
pub trait Ledger: Send + Sync {
    /// Keeps one record.
    fn record(&self, record: Record);
}

/// A connection refused before it was made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    /// Offline mode is on and the peer is not a loopback address.
    #[error(
        "offline mode is on ([network] offline = true or ONDEVICE_OFFLINE=1): no {purpose} connection to {host}:{port} was made; set [network] offline = false to allow it"
    )]
    Offline {
        /// Why the connection was wanted.
        purpose: Purpose,
        /// The peer.
        host: String,
        /// Its port.
        port: u16,
    },
    /// The URL has no host to connect to.
    #[error("cannot tell the host of the {purpose} URL: use scheme://host[:port]/...")]
    NoHost {
        /// Why the connection was wanted.
        purpose: Purpose,
    },
}

/// The gate: offline mode and the ledger.
pub struct Egress {
    offline: bool,
    ledger: Option<Arc<dyn Ledger>>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress").field("offline", &self.offline).field("ledger", &self.ledger.is_some()).finish()
    }
}

impl Egress {
    /// A gate; `offline` refuses every non-loopback peer.
    pub fn new(offline: bool, ledger: Option<Arc<dyn Ledger>>) -> Egress {
        Egress { offline, ledger }
    }

    /// Whether offline mode is on.
    pub fn offline(&self) -> bool {
        self.offline
    }

    /// Asks to connect to `host:port` for `purpose`. Offline mode refuses a non-loopback peer
    /// (and records the refusal); otherwise the returned [`Flow`] records the connection when
    /// dropped.
    pub fn begin(&self, purpose: Purpose, host: &str, port: u16) -> Result<Flow, EgressError> {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let loopback = is_loopback(&host);
        if self.offline && !loopback {
            let err = EgressError::Offline { purpose, host: host.clone(), port };
            count(purpose, Outcome::Blocked, 0, 0);
            if let Some(l) = &self.ledger {
                l.record(Record {
                    at: now_unix(),
                    purpose,
                    host,
                    port,
                    loopback,
                    outcome: Outcome::Blocked,
                    sent: 0,
                    received: 0,
                    duration_ms: 0,
                    error: Some(err.to_string()),
                });
            }
            return Err(err);
        }
        Ok(Flow {
            inner: Arc::new(FlowInner {
                at: now_unix(),
                started: Instant::now(),
                purpose,
                host,
                port,
                loopback,
                sent: AtomicU64::new(0),
                received: AtomicU64::new(0),
                error: Mutex::new(None),
                ledger: self.ledger.clone(),
            }),
        })
    }

    /// [`Egress::begin`] for a URL (`scheme://[user@]host[:port]/...`; the port defaults by
    /// scheme: 443 for https/wss/grpcs, 80 otherwise).
    pub fn begin_url(&self, purpose: Purpose, url: &str) -> Result<Flow, EgressError> {
        let (host, port) = host_port(url).ok_or(EgressError::NoHost { purpose })?;
        self.begin(purpose, &host, port)
    }
}

static GLOBAL: OnceLock<Egress> = OnceLock::new();

/// Process-wide counts by purpose and outcome, and bytes by purpose (for `/metrics`).
static COUNTS: [[AtomicU64; 3]; Purpose::ALL.len()] = [const { [const { AtomicU64::new(0) }; 3] }; Purpose::ALL.len()];
static BYTES: [[AtomicU64; 2]; Purpose::ALL.len()] = [const { [const { AtomicU64::new(0) }; 2] }; Purpose::ALL.len()];

fn purpose_index(p: Purpose) -> usize {
    match p {
        Purpose::Pull => 0,
        Purpose::Runtime => 1,
        Purpose::Telemetry => 2,
        Purpose::Webhook => 3,
        Purpose::VectorStore => 4,
    }
}

fn count(p: Purpose, o: Outcome, sent: u64, received: u64) {
    let i = purpose_index(p);
    let j = match o {
        Outcome::Ok => 0,
        Outcome::Error => 1,
        Outcome::Blocked => 2,
    };
    COUNTS[i][j].fetch_add(1, Ordering::Relaxed);
    BYTES[i][0].fetch_add(sent, Ordering::Relaxed);
    BYTES[i][1].fetch_add(received, Ordering::Relaxed);
}

/// Connections of this process so far: (purpose, outcome, count), every combination.
pub fn counts() -> Vec<(Purpose, Outcome, u64)> {
    let mut v = Vec::new();
    for p in Purpose::ALL {
        for (j, o) in [Outcome::Ok, Outcome::Error, Outcome::Blocked].into_iter().enumerate() {
            v.push((p, o, COUNTS[purpose_index(p)][j].load(Ordering::Relaxed)));
        }
    }
    v
}

/// Bytes of this process's connections so far: (purpose, sent, received).
pub fn bytes() -> Vec<(Purpose, u64, u64)> {
    Purpose::ALL
        .into_iter()
        .map(|p| {
            let b = &BYTES[purpose_index(p)];
            (p, b[0].load(Ordering::Relaxed), b[1].load(Ordering::Relaxed))
        })
        .collect()
}

/// Installs the process's gate (the daemon, once at start). Returns false if one was installed
/// already (the first stays).
pub fn install(egress: Egress) -> bool {
    GLOBAL.set(egress).is_ok()
}

/// The installed gate, if any.
pub fn installed() -> Option<&'static Egress> {
    GLOBAL.get()
}

/// Whether the installed gate is in offline mode (false when none is installed).
pub fn offline() -> bool {
    GLOBAL.get().is_some_and(Egress::offline)
}

/// [`Egress::begin`] on the installed gate; without one, an unrecorded flow.
pub fn begin(purpose: Purpose, host: &str, port: u16) -> Result<Flow, EgressError> {
    match GLOBAL.get() {
        Some(e) => e.begin(purpose, host, port),
        None => Egress::new(false, None).begin(purpose, host, port),
    }
}

/// [`Egress::begin_url`] on the installed gate.
pub fn begin_url(purpose: Purpose, url: &str) -> Result<Flow, EgressError> {
    match GLOBAL.get() {
        Some(e) => e.begin_url(purpose, url),
        None => Egress::new(false, None).begin_url(purpose, url),
    }
}

struct FlowInner {
    at: i64,
    started: Instant,
    purpose: Purpose,
    host: String,
    port: u16,
    loopback: bool,
    sent: AtomicU64,
    received: AtomicU64,
    error: Mutex<Option<String>>,
    ledger: Option<Arc<dyn Ledger>>,
}

impl Drop for FlowInner {
    fn drop(&mut self) {
        let failed = self.error.get_mut().unwrap_or_else(|e| e.into_inner()).is_some();
        count(
            self.purpose,
            if failed { Outcome::Error } else { Outcome::Ok },
            *self.sent.get_mut(),
            *self.received.get_mut(),
        );
        let Some(l) = &self.ledger else { return };
        let error = self.error.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        l.record(Record {
            at: self.at,
            purpose: self.purpose,
            host: std::mem::take(&mut self.host),
            port: self.port,
            loopback: self.loopback,
            outcome: if error.is_some() { Outcome::Error } else { Outcome::Ok },
            sent: *self.sent.get_mut(),
            received: *self.received.get_mut(),
            duration_ms: self.started.elapsed().as_millis().min(u128::from(u64::MAX)) as u64,
            error,
        });
    }
}

/// One permitted connection (or a series of requests to one peer): count its bytes, report a
/// failure; the record is written when the last clone is dropped.
#[derive(Clone)]
pub struct Flow {
    inner: Arc<FlowInner>,
}

impl std::fmt::Debug for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flow")
            .field("purpose", &self.inner.purpose)
            .field("host", &self.inner.host)
            .field("port", &self.inner.port)
            .finish_non_exhaustive()
    }
}

impl Flow {
    /// Adds `n` bytes sent.
    pub fn sent(&self, n: u64) {
        self.inner.sent.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds `n` bytes received.
    pub fn received(&self, n: u64) {
        self.inner.received.fetch_add(n, Ordering::Relaxed);
    }

    /// Marks the flow failed (the last failure is kept).
    pub fn failed(&self, error: impl std::fmt::Display) {
        *self.inner.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
    }

    /// Marks the flow as having succeeded after all (a retry worked).
    pub fn succeeded(&self) {
        *self.inner.error.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Whether the peer is a loopback address.
    pub fn loopback(&self) -> bool {
        self.inner.loopback
    }
}

/// Whether `host` is a loopback name or address: `localhost`, `*.localhost`, `127.0.0.0/8`,
/// `::1`, or an IPv4-mapped loopback address.
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase();
    if h == "localhost" || h.ends_with(".localhost") {
        return true;
    }
    match h.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.is_loopback(),
        Ok(IpAddr::V6(v6)) => v6 == Ipv6Addr::LOCALHOST || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        Err(_) => false,
    }
}

/// The host and port of `scheme://[user[:pass]@]host[:port][/...]` (IPv6 hosts in brackets).
pub fn host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let default = match scheme.to_ascii_lowercase().as_str() {
        "https" | "wss" | "grpcs" => 443,
        _ => 80,
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default,
    };
    Some((host.to_ascii_lowercase(), port))
}

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs().min(i64::MAX as u64) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Mem(Mutex<Vec<Record>>);
    impl Ledger for Mem {
        fn record(&self, r: Record) {
            self.0.lock().unwrap().push(r);
        }
    }

    #[test]
    fn offline_refuses_non_loopback_and_records_everything() {
        let mem = Arc::new(Mem::default());
        let e = Egress::new(true, Some(mem.clone()));
        let err = e.begin_url(Purpose::Pull, "https://user:pw@models.example/x.gguf?sig=1").unwrap_err();
        assert_eq!(err, EgressError::Offline { purpose: Purpose::Pull, host: "models.example".into(), port: 443 });
        assert!(err.to_string().contains("[network] offline = true"), "{err}");
        let flow = e.begin_url(Purpose::Runtime, "http://127.0.0.1:8080/v1").unwrap();
        flow.sent(10);
        flow.received(25);
        drop(flow);
        let flow = e.begin(Purpose::Telemetry, "[::1]", 9).unwrap();
        flow.failed("connection refused");
        drop(flow);
        let recs = mem.0.lock().unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(
            (recs[0].outcome, recs[0].loopback, recs[0].host.as_str()),
            (Outcome::Blocked, false, "models.example")
        );
        assert_eq!((recs[1].outcome, recs[1].sent, recs[1].received, recs[1].port), (Outcome::Ok, 10, 25, 8080));
        assert!(recs[1].loopback);
        assert_eq!((recs[2].outcome, recs[2].host.as_str()), (Outcome::Error, "::1"));
    }

    #[test]
    fn online_allows_all_and_parses_hosts() {
        let e = Egress::new(false, None);
        assert!(e.begin_url(Purpose::Webhook, "https://hooks.example/x").is_ok());
        assert_eq!(host_port("http://[::1]:8080/x"), Some(("::1".into(), 8080)));
        assert_eq!(host_port("https://a:b@H.example"), Some(("h.example".into(), 443)));
        assert_eq!(host_port("http://h:notaport/"), None);
        assert_eq!(host_port("nourl"), None);
        for h in ["localhost", "a.localhost", "127.0.0.2", "::1", "::ffff:127.0.0.1", "[::1]"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["10.0.0.1", "example.com", "localhost.example.com", "::2"] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
