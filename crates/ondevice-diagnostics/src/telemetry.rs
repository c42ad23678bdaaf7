//! Opt-in telemetry: consent, the anonymous usage report, the outbox and the uploader.
//!
//! - **Off by default.** Nothing is made or sent until a user runs `ondevice telemetry enable`,
//!   which records consent for [`REPORT_VERSION`] in the store. When the report gains a field the
//!   version goes up and the old consent is *stale*: nothing is sent until it is given again.
//! - **The environment always wins:** `DO_NOT_TRACK` (any value but empty or `0`) and
//!   `ONDEVICE_TELEMETRY=0` turn it off whatever was consented ([`env_veto`]).
//! - **Anonymous:** a random install id (rotated by `ondevice telemetry rotate-id`), the ondevice
//!   version, OS, architecture, CPU class, bucketed cores and memory, a bucketed model count, and
//!   request counts by class since the last report. Never prompts, outputs, paths, host names, IP
//!   addresses or model names ([`Report`] is the whole schema).
//! - **Durable:** each report is written to the outbox (with its sequence number, in one
//!   transaction) with the exact bytes to send, and deleted only after the endpoint acknowledged
//!   it: a `kill -9` at any point leads to a resend, never a loss; the receiver drops duplicates
//!   by `event_id`.
//! - **The uploader** ([`run_uploader`]) sends due events with exponential backoff and jitter, to
//!   a local file by default (`$ONDEVICE_HOME/telemetry/sent.jsonl`) or as a JSON `POST` to an
//!   http(s) endpoint, through the egress gate (offline mode blocks it; the ledger records it).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ondevice_store::{OutboxRow, Store, StoreError};
use serde::Serialize;

/// The version of the report's schema; consent is given for one version.
pub const REPORT_VERSION: u32 = 1;

/// Why telemetry is off, or that it is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Consent given for the current report: reports are made and sent.
    On,
    /// No consent (the default) or consent withdrawn.
    Off,
    /// Consent was given for an older report; run `ondevice telemetry enable` after reviewing
    /// `ondevice telemetry preview`.
    Stale,
    /// `DO_NOT_TRACK` or `ONDEVICE_TELEMETRY=0` is set.
    DisabledByEnvironment,
}

/// `DO_NOT_TRACK` or `ONDEVICE_TELEMETRY=0`: the variable that turns telemetry off, if any.
pub fn env_veto(get: impl Fn(&str) -> Option<String>) -> Option<&'static str> {
    if get("DO_NOT_TRACK").is_some_and(|v| !v.trim().is_empty() && v.trim() != "0") {
        return Some("DO_NOT_TRACK");
    }
    if get("ONDEVICE_TELEMETRY")
        .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "0" | "false" | "off" | "no"))
    {
        return Some("ONDEVICE_TELEMETRY");
    }
    None
}

/// The veto of this process's environment.
pub fn process_env_veto() -> Option<&'static str> {
    env_veto(|k| std::env::var(k).ok())
}

/// Consent and identity as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Consent {
    /// Whether the user enabled telemetry.
    pub enabled: bool,
    /// The report version consented to (0: never).
    pub version: u32,
    /// The random install id (created on first enable).
    pub install_id: Option<String>,
}

/// Reads the consent record.
pub fn consent(store: &Store) -> Result<Consent, StoreError> {
    Ok(Consent {
        enabled: store.telemetry_get("enabled")?.as_deref() == Some("true"),
        version: store.telemetry_get("consent_version")?.and_then(|v| v.parse().ok()).unwrap_or(0),
        install_id: store.telemetry_get("install_id")?,
    })
}

/// The effective state given the consent and the environment's veto.
pub fn state(consent: &Consent, veto: Option<&str>) -> State {
    if veto.is_some() {
        State::DisabledByEnvironment
    } else if !consent.enabled {
        State::Off
    } else if consent.version != REPORT_VERSION {
        State::Stale
    } else {
        State::On
    }
}

/// 16 random bytes as hex.
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // No OS randomness: time and address are still unique enough for an id that only needs
        // to differ between installs; it carries nothing about the machine.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        b[..16].copy_from_slice(&t.as_nanos().to_le_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Records consent for the current report (creating an install id if there is none).
pub fn enable(store: &Store) -> Result<Consent, StoreError> {
    let id = consent(store)?.install_id.unwrap_or_else(random_id);
    store.telemetry_set(&[
        ("enabled", "true"),
        ("consent_version", &REPORT_VERSION.to_string()),
        ("install_id", &id),
        ("consented_at", &crate::now_unix().to_string()),
    ])?;
    consent(store)
}

/// Withdraws consent and drops every queued event (nothing made before is sent later).
pub fn disable(store: &Store) -> Result<usize, StoreError> {
    store.telemetry_set(&[("enabled", "false")])?;
    store.outbox_clear()
}

/// A new random install id; queued events are dropped (they carry the old one).
pub fn rotate_id(store: &Store) -> Result<String, StoreError> {
    let id = random_id();
    store.telemetry_set(&[("install_id", &id)])?;
    store.outbox_clear()?;
    Ok(id)
}

/// Facts about this install that do not change while the daemon runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Machine {
    /// ondevice version.
    pub version: String,
    /// `linux`, `macos`, `windows`.
    pub os: String,
    /// `x86_64`, `aarch64`.
    pub arch: String,
    /// The engine's CPU class (`x86-64-v3`, ...).
    pub cpu_class: String,
    /// Logical cores.
    pub cores: usize,
    /// Total memory in bytes.
    pub memory_bytes: u64,
}

impl Machine {
    /// This machine, with the CPU class the binary chose.
    pub fn detect(version: &str, cpu_class: &str) -> Machine {
        let mut sys = sysinfo::System::new();
        sys.refresh_memory();
        Machine {
            version: version.to_owned(),
            os: std::env::consts::OS.to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
            cpu_class: cpu_class.to_owned(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes: sys.total_memory(),
        }
    }
}

/// Counts since the previous report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Requests answered.
    pub requests: u64,
    /// Of which 4xx.
    pub client_errors: u64,
    /// Of which 5xx.
    pub server_errors: u64,
    /// Models in the registry (reported as a bucket).
    pub models: u64,
}

/// The whole report: every field that can ever be sent (version [`REPORT_VERSION`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Dedupe id of this event.
    pub event_id: String,
    /// The schema version.
    pub report_version: u32,
    /// Random, rotatable install id.
    pub install_id: String,
    /// Reports made by this install so far (1, 2, ...): lets the receiver see a gap.
    pub seq: u64,
    /// The UTC day (`YYYY-MM-DD`), no time of day.
    pub day: String,
    /// ondevice version.
    pub ondevice: String,
    /// OS family.
    pub os: String,
    /// CPU architecture.
    pub arch: String,
    /// The engine's CPU class.
    pub cpu_class: String,
    /// Logical cores: `1`, `2-3`, `4-7`, `8-15`, `16-31`, `32+`.
    pub cores: &'static str,
    /// Memory: `<4GiB`, `4-8GiB`, `8-16GiB`, `16-32GiB`, `32-64GiB`, `64GiB+`.
    pub memory: &'static str,
    /// Registry models: `0`, `1`, `2-4`, `5-9`, `10-49`, `50+`.
    pub models: &'static str,
    /// Requests since the previous report, by class.
    pub requests: Requests,
}

/// Request counts by class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Requests {
    /// All requests.
    pub total: u64,
    /// 4xx answers.
    pub client_errors: u64,
    /// 5xx answers.
    pub server_errors: u64,
}

fn cores_bucket(n: usize) -> &'static str {
    match n {
        0 | 1 => "1",
        2..=3 => "2-3",
        4..=7 => "4-7",
        8..=15 => "8-15",
        16..=31 => "16-31",
        _ => "32+",
    }
}

fn memory_bucket(b: u64) -> &'static str {
    const G: u64 = 1 << 30;
    match b {
        x if x < 4 * G => "<4GiB",
        x if x < 8 * G => "4-8GiB",
        x if x < 16 * G => "8-16GiB",
        x if x < 32 * G => "16-32GiB",
        x if x < 64 * G => "32-64GiB",
        _ => "64GiB+",
    }
}

fn models_bucket(n: u64) -> &'static str {
    match n {
        0 => "0",
        1 => "1",
        2..=4 => "2-4",
        5..=9 => "5-9",
        10..=49 => "10-49",
        _ => "50+",
    }
}

/// The UTC day of a unix time, `YYYY-MM-DD` (civil-from-days, proleptic Gregorian).
pub fn utc_day(unix: i64) -> String {
    let z = unix.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Builds a report.
pub fn report(install_id: &str, seq: u64, now: i64, machine: &Machine, usage: Usage) -> Report {
    Report {
        event_id: random_id(),
        report_version: REPORT_VERSION,
        install_id: install_id.to_owned(),
        seq,
        day: utc_day(now),
        ondevice: machine.version.clone(),
        os: machine.os.clone(),
        arch: machine.arch.clone(),
        cpu_class: machine.cpu_class.clone(),
        cores: cores_bucket(machine.cores),
        memory: memory_bucket(machine.memory_bytes),
        models: models_bucket(usage.models),
        requests: Requests {
            total: usage.requests,
            client_errors: usage.client_errors,
            server_errors: usage.server_errors,
        },
    }
}

/// The exact bytes sent for a report.
pub fn encode(r: &Report) -> String {
    serde_json::to_string(r).unwrap_or_default()
}

/// Makes the next report and queues it (with its sequence number, atomically). Returns its body.
pub fn enqueue(store: &Store, machine: &Machine, usage: Usage, now: i64) -> Result<Option<String>, StoreError> {
    let c = consent(store)?;
    let Some(id) = c.install_id else { return Ok(None) };
    let seq = store.telemetry_get("seq")?.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + 1;
    let r = report(&id, seq, now, machine, usage);
    let body = encode(&r);
    store.outbox_push_with(
        &r.event_id,
        now,
        &body,
        &[("seq", &seq.to_string()), ("last_report_at", &now.to_string())],
    )?;
    Ok(Some(body))
}

/// Where reports go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// Appended to this file, one JSON line per event (nothing leaves the machine).
    File(PathBuf),
    /// `POST`ed as JSON to this URL.
    Http(String),
}

impl Sink {
    /// From `[telemetry] endpoint` (`"file"` or a URL) and the home.
    pub fn from_endpoint(endpoint: &str, home: &Path) -> Sink {
        if endpoint.trim() == "file" {
            Sink::File(home.join("telemetry").join("sent.jsonl"))
        } else {
            Sink::Http(endpoint.trim().to_owned())
        }
    }

    /// The endpoint as shown to a user (a URL without credentials, query or path).
    pub fn describe(&self) -> String {
        match self {
            Sink::File(p) => format!("file {}", p.display()),
            Sink::Http(u) => match ondevice_egress::host_port(u) {
                Some((h, p)) => format!("{}://{h}:{p}", u.split("://").next().unwrap_or("http")),
                None => "an invalid URL".to_owned(),
            },
        }
    }
}

/// What `ondevice telemetry status --json` and `GET /api/v1/telemetry` show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// On, off, stale consent, or vetoed by the environment.
    pub state: State,
    /// Whether reports are made and sent.
    pub sending: bool,
    /// The environment variable that turns telemetry off, if one is set.
    pub disabled_by: Option<&'static str>,
    /// The report version of this build.
    pub report_version: u32,
    /// The report version consented to (0: never).
    pub consented_version: u32,
    /// The random install id (created on first enable).
    pub install_id: Option<String>,
    /// Where reports go (see [`Sink::describe`]).
    pub endpoint: String,
    /// Seconds between reports.
    pub interval_s: u64,
    /// Whether offline mode blocks sending.
    pub offline: bool,
    /// Events queued and not yet acknowledged.
    pub pending: usize,
}

/// Telemetry's status as this process sees it (its environment decides the veto).
pub fn status(store: &Store, sink: &Sink, interval_s: u64, offline: bool) -> Result<(Status, Consent), StoreError> {
    let c = consent(store)?;
    let veto = process_env_veto();
    let st = state(&c, veto);
    let pending = store.outbox_all()?.len();
    let s = Status {
        sending: st == State::On,
        state: st,
        disabled_by: veto,
        report_version: REPORT_VERSION,
        consented_version: c.version,
        install_id: c.install_id.clone(),
        endpoint: sink.describe(),
        interval_s,
        offline,
        pending,
    };
    Ok((s, c))
}

/// What `ondevice telemetry preview --json` and `GET /api/v1/telemetry/preview` show: the queued
/// events and the next report, each exactly as it would be sent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Preview {
    /// Queued events, parsed from the bytes that will be sent.
    pub queued: Vec<serde_json::Value>,
    /// The next report, parsed from [`Preview::next_bytes`].
    pub next: serde_json::Value,
    /// The queued events' exact bytes.
    #[serde(skip)]
    pub queued_bytes: Vec<String>,
    /// The next report's exact bytes (its event id is drawn when it is made).
    #[serde(skip)]
    pub next_bytes: String,
}

/// The preview: queued events and the report that would be made now (request counts are shown as
/// zero: they are the daemon's since its previous report).
pub fn preview(store: &Store, machine: &Machine) -> Result<Preview, StoreError> {
    let queued_bytes: Vec<String> = store.outbox_all()?.into_iter().map(|r| r.body).collect();
    let c = consent(store)?;
    let models = store.list_models().map(|m| m.len() as u64).unwrap_or(0);
    let seq = store.telemetry_get("seq")?.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + 1;
    let id = c.install_id.unwrap_or_else(|| "<created when you enable telemetry>".to_owned());
    let next_bytes = encode(&report(&id, seq, crate::now_unix(), machine, Usage { models, ..Usage::default() }));
    let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap_or_default();
    Ok(Preview {
        queued: queued_bytes.iter().map(|q| parse(q)).collect(),
        next: parse(&next_bytes),
        queued_bytes,
        next_bytes,
    })
}

/// Delay before attempt `attempts + 1`: 2 s doubled per failure, at most an hour, plus up to 50%
/// random jitter.
pub fn backoff(attempts: i64) -> Duration {
    let base = 2u64.saturating_mul(1u64 << attempts.clamp(0, 20)).min(3600);
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let jitter = base * u64::from(u16::from_le_bytes(b)) / u64::from(u16::MAX) / 2;
    Duration::from_secs(base + jitter)
}

/// Sends one event; `Ok` means acknowledged.
async fn send(sink: &Sink, http: &reqwest::Client, ev: &OutboxRow) -> Result<(), String> {
    match sink {
        Sink::File(path) => {
            use std::io::Write as _;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            writeln!(f, "{}", ev.body).map_err(|e| format!("{}: {e}", path.display()))
        }
        Sink::Http(url) => {
            let flow =
                ondevice_egress::begin_url(ondevice_egress::Purpose::Telemetry, url).map_err(|e| e.to_string())?;
            flow.sent(ev.body.len() as u64);
            let resp = http
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("x-ondevice-event-id", &ev.id)
                .body(ev.body.clone())
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .map_err(|e| {
                    let e = e.without_url().to_string();
                    flow.failed(&e);
                    e
                })?;
            flow.received(resp.content_length().unwrap_or(0));
            if resp.status().is_success() {
                Ok(())
            } else {
                flow.failed(format!("answered {}", resp.status()));
                Err(format!("the endpoint answered {}", resp.status()))
            }
        }
    }
}

/// What the uploader needs from the daemon.
pub struct Uploader {
    /// The store (consent, outbox).
    pub store: Arc<Store>,
    /// Where events go.
    pub sink: Sink,
    /// Seconds between reports.
    pub interval_s: u64,
    /// This machine.
    pub machine: Machine,
    /// Cumulative counts since the daemon started (the uploader reports differences).
    pub usage: Arc<dyn Fn() -> Usage + Send + Sync>,
    /// The environment's veto, read once at start.
    pub veto: Option<&'static str>,
}

/// Runs until `stop` resolves: every second (at most the interval) it makes a report when one
/// is due and telemetry is on, and sends due events. Nothing is made or sent unless the state is
/// [`State::On`].
pub async fn run_uploader(u: Uploader, stop: impl std::future::Future<Output = ()>) {
    let http = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("ondevice/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default();
    let tick = Duration::from_secs(u.interval_s.clamp(1, 5));
    let mut last = Usage::default();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(tick) => {}
        }
        let store = u.store.clone();
        let c = match tokio::task::spawn_blocking(move || consent(&store)).await {
            Ok(Ok(c)) => c,
            _ => continue,
        };
        if state(&c, u.veto) != State::On {
            continue;
        }
        let now = crate::now_unix();
        let store = u.store.clone();
        let last_at = tokio::task::spawn_blocking(move || store.telemetry_get("last_report_at"))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .and_then(|v| v.parse::<i64>().ok());
        if last_at.is_none_or(|t| now - t >= u.interval_s as i64) {
            let total = (u.usage)();
            let delta = Usage {
                requests: total.requests.saturating_sub(last.requests),
                client_errors: total.client_errors.saturating_sub(last.client_errors),
                server_errors: total.server_errors.saturating_sub(last.server_errors),
                models: total.models,
            };
            let (store, machine) = (u.store.clone(), u.machine.clone());
            match tokio::task::spawn_blocking(move || enqueue(&store, &machine, delta, now)).await {
                Ok(Ok(_)) => last = total,
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot queue a telemetry report"),
                Err(_) => {}
            }
        }
        let store = u.store.clone();
        let due = match tokio::task::spawn_blocking(move || store.outbox_due(now, 20)).await {
            Ok(Ok(d)) => d,
            _ => continue,
        };
        for ev in due {
            let result = send(&u.sink, &http, &ev).await;
            let store = u.store.clone();
            let id = ev.id.clone();
            let written = tokio::task::spawn_blocking(move || match result {
                Ok(()) => store.outbox_ack(&[id]).map(|()| None),
                Err(e) => {
                    let next = crate::now_unix() + backoff(ev.attempts).as_secs() as i64;
                    store.outbox_failed(&[id], next, &e).map(|()| Some(e))
                }
            })
            .await;
            if let Ok(Ok(Some(e))) = written {
                tracing::debug!(error = %e, "telemetry upload failed; it is retried later");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consent_state_env_veto_and_versioning() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let c = consent(&s).unwrap();
        assert_eq!(state(&c, None), State::Off, "off by default");
        let c = enable(&s).unwrap();
        assert_eq!(state(&c, None), State::On);
        assert_eq!(state(&c, Some("DO_NOT_TRACK")), State::DisabledByEnvironment);
        s.telemetry_set(&[("consent_version", "0")]).unwrap();
        assert_eq!(state(&consent(&s).unwrap(), None), State::Stale, "an older consent asks again");
        let id = c.install_id.unwrap();
        assert_eq!(id.len(), 32);
        assert_ne!(rotate_id(&s).unwrap(), id);

        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
        };
        assert_eq!(env_veto(env(&[("DO_NOT_TRACK", "1")])), Some("DO_NOT_TRACK"));
        assert_eq!(env_veto(env(&[("DO_NOT_TRACK", "0")])), None);
        assert_eq!(env_veto(env(&[("ONDEVICE_TELEMETRY", "0")])), Some("ONDEVICE_TELEMETRY"));
        assert_eq!(env_veto(env(&[("ONDEVICE_TELEMETRY", "1")])), None);
    }

    #[test]
    fn reports_are_coarse_and_queued_with_their_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        enable(&s).unwrap();
        let m = Machine {
            version: "0.1.0".into(),
            os: "linux".into(),
            arch: "x86_64".into(),
            cpu_class: "x86-64-v3".into(),
            cores: 6,
            memory_bytes: 12 << 30,
        };
        let usage = Usage { requests: 10, client_errors: 2, server_errors: 1, models: 3 };
        let body = enqueue(&s, &m, usage, 1_796_000_000).unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["seq"], 1);
        assert_eq!(v["day"], "2026-11-30");
        assert_eq!(
            (v["cores"].as_str(), v["memory"].as_str(), v["models"].as_str()),
            (Some("4-7"), Some("8-16GiB"), Some("2-4"))
        );
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "event_id",
                "report_version",
                "install_id",
                "seq",
                "day",
                "ondevice",
                "os",
                "arch",
                "cpu_class",
                "cores",
                "memory",
                "models",
                "requests"
            ]
        );
        enqueue(&s, &m, usage, 1_796_000_100).unwrap();
        let q = s.outbox_all().unwrap();
        assert_eq!(q.len(), 2);
        assert_eq!(q[0].body, body, "the outbox holds the exact bytes");
        assert!(q[1].body.contains("\"seq\":2"));
        assert_eq!(disable(&s).unwrap(), 2);
        assert!(backoff(0) >= Duration::from_secs(2) && backoff(0) <= Duration::from_secs(3));
        assert!(backoff(40) <= Duration::from_secs(5400));
        assert_eq!(utc_day(0), "1970-01-01");
    }
}
