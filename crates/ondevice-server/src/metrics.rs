//! Prometheus metrics of the edge: requests by route and status, latency, auth failures.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

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
    uptime: Gauge,
    started: Instant,
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
        let uptime = Gauge::default();
        registry.register("uptime_seconds", "Seconds since the daemon started", uptime.clone());
        let build = Family::<Vec<(String, String)>, Gauge>::default();
        registry.register("build_info", "Version of the running daemon", build.clone());
        build.get_or_create(&vec![("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned())]).set(1);
        Metrics {
            inner: Arc::new(Inner { registry, requests, latency, auth_failures, uptime, started: Instant::now() }),
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
    }

    /// Records a refused credential (`surface`: http, websocket, grpc).
    pub fn auth_failure(&self, surface: &'static str, reason: &'static str) {
        self.inner.auth_failures.get_or_create(&AuthLabels { surface, reason }).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.inner.uptime.set(self.inner.started.elapsed().as_secs() as i64);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.inner.registry).is_err() {
            out.clear();
        }
        out
    }
}
