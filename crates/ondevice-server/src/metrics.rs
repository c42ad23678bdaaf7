//! Prometheus metrics of the edge: requests by route and status, latency, auth failures.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::state::WorkerView;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    route: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuntimeLabels {
    runtime: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuntimeOnly {
    runtime: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    surface: &'static str,
    reason: &'static str,
}

/// The daemon's metric registry and the handles the middleware updates.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    auth_failures: Family<AuthLabels, Counter>,
    runtime_requests: Family<RuntimeLabels, Counter>,
    runtime_latency: Family<RuntimeOnly, Histogram>,
    uptime: Gauge,
    started: Instant,
    /// All requests, 4xx answers, 5xx answers (read by the telemetry report).
    totals: [std::sync::atomic::AtomicU64; 3],
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ondevice");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "HTTP and gRPC requests by route, method and status", requests.clone());
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        });
        registry.register("http_request_duration_seconds", "Time to the response head", latency.clone());
        let auth_failures = Family::<AuthLabels, Counter>::default();
        registry.register("auth_failures", "Refused credentials by surface and reason", auth_failures.clone());
        let runtime_requests = Family::<RuntimeLabels, Counter>::default();
        registry.register(
            "runtime_requests",
            "Generations by the runtime that answered (or `none` when no runtime could) and outcome (ok, error)",
            runtime_requests.clone(),
        );
        let runtime_latency = Family::<RuntimeOnly, Histogram>::new_with_constructor(|| {
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])
        });
        registry.register(
            "runtime_start_seconds",
            "Time until a runtime accepted a generation (routing, loading, admission)",
            runtime_latency.clone(),
        );
        let uptime = Gauge::default();
        registry.register("uptime_seconds", "Seconds since the daemon started", uptime.clone());
        let build = Family::<Vec<(String, String)>, Gauge>::default();
        registry.register("build_info", "Version of the running daemon", build.clone());
        build.get_or_create(&vec![("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned())]).set(1);
        Metrics {
            inner: Arc::new(Inner {
                registry,
                requests,
                latency,
                auth_failures,
                runtime_requests,
                runtime_latency,
                uptime,
                started: Instant::now(),
                totals: Default::default(),
            }),
        }
    }

    /// Records one finished request.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.inner
            .requests
            .get_or_create(&RequestLabels { route: route.to_owned(), method: method.to_owned(), status })
            .inc();
        self.inner
            .latency
            .get_or_create(&LatencyLabels { route: route.to_owned(), method: method.to_owned() })
            .observe(seconds);
        use std::sync::atomic::Ordering::Relaxed;
        self.inner.totals[0].fetch_add(1, Relaxed);
        match status {
            400..=499 => self.inner.totals[1].fetch_add(1, Relaxed),
            500..=599 => self.inner.totals[2].fetch_add(1, Relaxed),
            _ => 0,
        };
    }

    /// Requests since start: (all, 4xx, 5xx).
    pub fn request_totals(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let t = &self.inner.totals;
        (t[0].load(Relaxed), t[1].load(Relaxed), t[2].load(Relaxed))
    }

    /// Records one generation start: the runtime that answered (`none` if none could), whether
    /// it started, and how long that took.
    pub fn observe_runtime(&self, runtime: &str, ok: bool, seconds: f64) {
        let outcome = if ok { "ok" } else { "error" };
        self.inner.runtime_requests.get_or_create(&RuntimeLabels { runtime: runtime.to_owned(), outcome }).inc();
        if ok {
            self.inner.runtime_latency.get_or_create(&RuntimeOnly { runtime: runtime.to_owned() }).observe(seconds);
        }
    }

    /// Records a refused credential (`surface`: http, websocket, grpc).
    pub fn auth_failure(&self, surface: &'static str, reason: &'static str) {
        self.inner.auth_failures.get_or_create(&AuthLabels { surface, reason }).inc();
    }

    /// The OpenMetrics text exposition, with the supervised workers' metrics read at scrape time.
    pub fn render(&self, workers: &[WorkerView]) -> String {
        self.inner.uptime.set(self.inner.started.elapsed().as_secs() as i64);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.inner.registry).is_err() {
            out.clear();
        }
        let body_end = out.rfind("# EOF").unwrap_or(out.len());
        let tail = out.split_off(body_end);
        render_workers(&mut out, workers);
        out.push_str(&tail);
        out
    }
}

/// Worker states exported as a one-hot `ondevice_worker_state` gauge.
const WORKER_STATES: [&str; 8] = ["starting", "running", "ready", "stopping", "backoff", "exited", "stopped", "failed"];

fn render_workers(out: &mut String, workers: &[WorkerView]) {
    use std::fmt::Write as _;
    if workers.is_empty() {
        return;
    }
    let label = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    out.push_str(
        "# HELP ondevice_worker_restarts Restarts of a supervised worker.\n# TYPE ondevice_worker_restarts counter\n",
    );
    for w in workers {
        let _ = writeln!(out, "ondevice_worker_restarts_total{{worker=\"{}\"}} {}", label(&w.name), w.restarts);
    }
    out.push_str("# HELP ondevice_worker_state Current state of a supervised worker (1 for the state it is in).\n# TYPE ondevice_worker_state gauge\n");
    for w in workers {
        for st in WORKER_STATES {
            let v = u8::from(w.state == st);
            let _ = writeln!(out, "ondevice_worker_state{{worker=\"{}\",state=\"{st}\"}} {v}", label(&w.name));
        }
    }
    out.push_str("# HELP ondevice_worker_ready Whether a supervised worker passes its readiness probe.\n# TYPE ondevice_worker_ready gauge\n");
    for w in workers {
        let _ = writeln!(out, "ondevice_worker_ready{{worker=\"{}\"}} {}", label(&w.name), u8::from(w.ready));
    }
    out.push_str("# HELP ondevice_worker_probe_failures Failed probe checks of a supervised worker.\n# TYPE ondevice_worker_probe_failures counter\n");
    for w in workers {
        let p = &w.probe_failures;
        for (probe, n) in [("startup", p.startup), ("liveness", p.liveness), ("readiness", p.readiness)] {
            let _ = writeln!(
                out,
                "ondevice_worker_probe_failures_total{{worker=\"{}\",probe=\"{probe}\"}} {n}",
                label(&w.name)
            );
        }
    }
    out.push_str("# HELP ondevice_worker_circuit_open Whether a supervised worker was given up after too many restarts (its circuit is open).\n# TYPE ondevice_worker_circuit_open gauge\n");
    for w in workers {
        let _ = writeln!(
            out,
            "ondevice_worker_circuit_open{{worker=\"{}\"}} {}",
            label(&w.name),
            u8::from(w.state == "failed")
        );
    }
    out.push_str("# HELP ondevice_worker_oom_kills Exits of a supervised worker that were kills for memory.\n# TYPE ondevice_worker_oom_kills counter\n");
    for w in workers {
        let _ = writeln!(out, "ondevice_worker_oom_kills_total{{worker=\"{}\"}} {}", label(&w.name), w.oom_kills);
    }
    out.push_str("# HELP ondevice_worker_last_exit_oom Whether the last exit of a supervised worker was a kill for memory.\n# TYPE ondevice_worker_last_exit_oom gauge\n");
    for w in workers {
        let oom = w.last_exit.as_ref().is_some_and(|e| e.oom);
        let _ = writeln!(out, "ondevice_worker_last_exit_oom{{worker=\"{}\"}} {}", label(&w.name), u8::from(oom));
    }
}

/// Metrics read at scrape time from the services: jobs by kind and state, runtimes' circuit and
/// health, and the egress gate's connections by purpose and outcome.
pub(crate) fn render_services(
    out: &mut String,
    jobs: &[(String, String, u64)],
    runtimes: &[ondevice_runtime::RuntimeStatus],
) {
    use std::fmt::Write as _;
    let label = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    out.push_str("# HELP ondevice_jobs Jobs known to the queue by kind and state.\n# TYPE ondevice_jobs gauge\n");
    for (kind, state, n) in jobs {
        let _ = writeln!(out, "ondevice_jobs{{kind=\"{}\",state=\"{}\"}} {n}", label(kind), label(state));
    }
    if !runtimes.is_empty() {
        out.push_str("# HELP ondevice_runtime_circuit_open Whether a runtime's circuit breaker is open.\n# TYPE ondevice_runtime_circuit_open gauge\n");
        for r in runtimes {
            let _ = writeln!(
                out,
                "ondevice_runtime_circuit_open{{runtime=\"{}\"}} {}",
                label(&r.name),
                u8::from(r.circuit == "open")
            );
        }
        out.push_str("# HELP ondevice_runtime_healthy Whether a runtime's last health check passed.\n# TYPE ondevice_runtime_healthy gauge\n");
        for r in runtimes {
            let ok = matches!(r.health, ondevice_runtime::Health::Ready);
            let _ = writeln!(out, "ondevice_runtime_healthy{{runtime=\"{}\"}} {}", label(&r.name), u8::from(ok));
        }
    }
    out.push_str("# HELP ondevice_egress_connections Outbound connections by purpose and outcome (blocked: refused by offline mode).\n# TYPE ondevice_egress_connections counter\n");
    for (p, o, n) in ondevice_egress::counts() {
        let _ = writeln!(out, "ondevice_egress_connections_total{{purpose=\"{p}\",outcome=\"{}\"}} {n}", o.as_str());
    }
    out.push_str("# HELP ondevice_egress_bytes Bytes of outbound connections by purpose and direction.\n# TYPE ondevice_egress_bytes counter\n");
    for (p, sent, received) in ondevice_egress::bytes() {
        let _ = writeln!(out, "ondevice_egress_bytes_total{{purpose=\"{p}\",direction=\"sent\"}} {sent}");
        let _ = writeln!(out, "ondevice_egress_bytes_total{{purpose=\"{p}\",direction=\"received\"}} {received}");
    }
    render_registry(out, &ondevice_registry::metrics::snapshot());
    out.push_str(&format!(
        "# HELP ondevice_offline Whether offline mode is on.\n# TYPE ondevice_offline gauge\nondevice_offline {}\n",
        u8::from(ondevice_egress::offline())
    ));
}

/// Registry operations by operation and outcome, and the time they took (a summary: sum and
/// count), from the registry's process-wide counters.
fn render_registry(out: &mut String, ops: &[ondevice_registry::metrics::OpCounts]) {
    use std::fmt::Write as _;
    out.push_str("# HELP ondevice_registry_operations Registry operations (import, copy, remove, pin, verify, gc, export, pull submissions) by outcome.\n# TYPE ondevice_registry_operations counter\n");
    for c in ops {
        let op = c.op.as_str();
        let _ = writeln!(out, "ondevice_registry_operations_total{{op=\"{op}\",outcome=\"ok\"}} {}", c.ok);
        let _ = writeln!(out, "ondevice_registry_operations_total{{op=\"{op}\",outcome=\"error\"}} {}", c.error);
    }
    out.push_str("# HELP ondevice_registry_operation_seconds Time registry operations took.\n# TYPE ondevice_registry_operation_seconds summary\n");
    for c in ops {
        let op = c.op.as_str();
        let _ = writeln!(out, "ondevice_registry_operation_seconds_sum{{op=\"{op}\"}} {}", c.seconds);
        let _ = writeln!(out, "ondevice_registry_operation_seconds_count{{op=\"{op}\"}} {}", c.ok + c.error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ProbeFailuresView;

    fn worker(name: &str, oom_kills: u64) -> WorkerView {
        WorkerView {
            name: name.to_owned(),
            state: "backoff".to_owned(),
            restarts: 3,
            oom_kills,
            last_exit: None,
            next_restart_at: None,
            protection: serde_json::Value::Null,
            required: true,
            ready: false,
            probe_failures: ProbeFailuresView::default(),
        }
    }

    #[test]
    fn workers_oom_kills_are_rendered_per_worker() {
        let text = Metrics::new().render(&[worker("llama", 2), worker("embed", 0)]);
        assert!(text.contains("# TYPE ondevice_worker_oom_kills counter\n"), "{text}");
        assert!(text.contains("ondevice_worker_oom_kills_total{worker=\"llama\"} 2\n"), "{text}");
        assert!(text.contains("ondevice_worker_oom_kills_total{worker=\"embed\"} 0\n"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }

    #[test]
    fn registry_operations_are_rendered_by_op_and_outcome() {
        use ondevice_registry::metrics::{Op, OpCounts};
        let ops = [
            OpCounts { op: Op::Import, ok: 3, error: 1, seconds: 1.5 },
            OpCounts { op: Op::Gc, ok: 0, error: 0, seconds: 0.0 },
        ];
        let mut text = String::new();
        render_registry(&mut text, &ops);
        for line in [
            "# TYPE ondevice_registry_operations counter",
            "ondevice_registry_operations_total{op=\"import\",outcome=\"ok\"} 3",
            "ondevice_registry_operations_total{op=\"import\",outcome=\"error\"} 1",
            "ondevice_registry_operations_total{op=\"gc\",outcome=\"ok\"} 0",
            "# TYPE ondevice_registry_operation_seconds summary",
            "ondevice_registry_operation_seconds_sum{op=\"import\"} 1.5",
            "ondevice_registry_operation_seconds_count{op=\"import\"} 4",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        // The process-wide counters reach the scrape: every operation is listed.
        let mut all = String::new();
        render_services(&mut all, &[], &[]);
        for op in Op::ALL {
            let line = format!("ondevice_registry_operations_total{{op=\"{}\",outcome=\"ok\"}}", op.as_str());
            assert!(all.contains(&line), "missing {line} in:\n{all}");
        }
    }
}
