//! The orchestrator: maps the model a client names to a chain of runtime adapters and serves the
//! request from the first one that can.
//!
//! - **Routing**: `[inference.models."NAME"]` chains from config, else registry models on the default
//!   chain (the embedded engine), else a runtime that declares the model itself.
//! - **Hot load/unload** with keep-alive (a sweeper unloads idle models), a cap on loaded models and
//!   an optional memory budget; the least recently used idle model is evicted to make room.
//! - **Fallback** with a circuit breaker per runtime ([`breaker`]): a runtime that is unavailable is
//!   skipped and the next in the chain answers; answers name their runtime. A generation counts as
//!   answered once its first event arrives, so a runtime failing before any output falls back too
//!   and a bad request fails with its own error rather than inside a stream. While a breaker is open
//!   or a fallback answered recently the daemon reports itself degraded.
//! - **Health**: runtimes with a [`HealthPolicy`] are checked periodically; one that fails
//!   `failure_threshold` checks in a row is skipped (and reported degraded) until a check passes.
//! - **Admission**: at most `max_concurrent` generations run; `queue_depth` more may wait; beyond that
//!   requests get [`RuntimeError::Overloaded`] (503 with `Retry-After`).
//!
//! It implements [`ondevice_runtime::Inference`], the only interface the API surfaces use. It knows
//! runtimes only as `Arc<dyn Runtime>` and models only through [`ModelSource`], so it depends on no
//! adapter, registry or process code.
#![warn(missing_docs)]

mod breaker;
mod stream;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ondevice_runtime::{
    BoxFuture, EmbedRequest, Embeddings, GenerateRequest, Generation, Health, Inference, LoadedModel, ModelEntry,
    ModelSpec, Prompt, Runtime, RuntimeError, RuntimeStatus,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::breaker::Breaker;

/// A model in the local registry, as the orchestrator needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalModel {
    /// Canonical `name:tag`.
    pub name: String,
    /// The GGUF blob.
    pub path: PathBuf,
    /// Bytes on disk.
    pub size_bytes: u64,
    /// Context length from the file's metadata.
    pub context_length: Option<u32>,
}

/// The registry as the orchestrator sees it. Calls may block briefly (SQLite); the orchestrator
/// runs them on the blocking pool.
pub trait ModelSource: Send + Sync + 'static {
    /// The registry model a client-given name (or digest) denotes; `Ok(None)` when there is none.
    fn resolve(&self, name: &str) -> Result<Option<LocalModel>, RuntimeError>;
    /// Every registry model.
    fn list(&self) -> Result<Vec<ModelEntry>, RuntimeError>;
}

/// A model route from config: the runtimes tried in order and the model's upstream name.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Runtime names, first choice first.
    pub runtimes: Vec<String>,
    /// The name remote runtimes know the model by, when it differs.
    pub upstream: Option<String>,
}

/// Orchestrator settings (built from `[inference]`).
#[derive(Debug, Clone)]
pub struct Options {
    /// Idle time before a model is unloaded; `None`: never.
    pub keep_alive: Option<Duration>,
    /// Loaded models at once.
    pub max_loaded: usize,
    /// Bytes the loaded models may take together.
    pub memory_budget: Option<u64>,
    /// Requests served at once.
    pub max_concurrent: usize,
    /// Requests that may wait.
    pub queue_depth: usize,
    /// Most tokens one generation may produce; a request asking for more, or for no limit, is
    /// clamped to it (`None`: no server-side maximum).
    pub max_tokens: Option<u32>,
    /// Most inputs one embeddings request may have; more is refused with `TooLarge`.
    pub max_embed_inputs: Option<usize>,
    /// Chain for registry models without a route.
    pub default_runtimes: Vec<String>,
    /// Consecutive failures that open a runtime's circuit.
    pub breaker_failures: u32,
    /// How long an open circuit stays open.
    pub breaker_open: Duration,
    /// Per-model routes, keyed by model name.
    pub routes: BTreeMap<String, Route>,
    /// How long a fallback answer keeps the daemon marked degraded.
    pub degraded_window: Duration,
    /// How often the keep-alive sweeper runs.
    pub sweep_every: Duration,
    /// Periodic health checks, by runtime name (runtimes without one are checked on demand).
    pub health: BTreeMap<String, HealthPolicy>,
}

/// How a runtime's health is watched: a check every `period`, each allowed `timeout`; after
/// `failure_threshold` failures in a row the runtime is skipped (requests go straight to the next
/// in the chain) until a check succeeds again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Time between checks.
    pub period: Duration,
    /// Time a check may take.
    pub timeout: Duration,
    /// Consecutive failed checks that make the runtime unhealthy.
    pub failure_threshold: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            keep_alive: Some(Duration::from_secs(300)),
            max_loaded: 3,
            memory_budget: None,
            max_concurrent: 16,
            queue_depth: 64,
            max_tokens: None,
            max_embed_inputs: None,
            default_runtimes: vec!["embedded".to_owned()],
            breaker_failures: 3,
            breaker_open: Duration::from_secs(30),
            routes: BTreeMap::new(),
            degraded_window: Duration::from_secs(60),
            sweep_every: Duration::from_secs(1),
            health: BTreeMap::new(),
        }
    }
}

/// Routes requests to runtimes. Cheap to clone.
#[derive(Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

struct Inner {
    runtimes: BTreeMap<String, Arc<dyn Runtime>>,
    models: Arc<dyn ModelSource>,
    opts: Options,
    state: Mutex<State>,
    admission: Arc<Semaphore>,
    waiting: AtomicUsize,
    /// Loads and evictions happen one at a time, so budgets are computed on a stable set.
    load_lock: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    loaded: Vec<Loaded>,
    breakers: HashMap<String, Breaker>,
    /// The last periodic health check of each watched runtime.
    watched: HashMap<String, Watched>,
    /// The last time a fallback runtime answered: (model, runtime that answered, why the first failed).
    last_fallback: Option<(Instant, String, String, String)>,
}

/// A watched runtime's health: its last check and the failures in a row before it.
#[derive(Debug, Clone)]
struct Watched {
    last: Health,
    failures: u32,
    threshold: u32,
}

impl Watched {
    fn unhealthy(&self) -> bool {
        self.failures >= self.threshold.max(1)
    }
}

#[derive(Debug, Clone)]
struct Loaded {
    model: String,
    runtime: String,
    size: u64,
    last_used: SystemTime,
    keep_alive: Option<Duration>,
    active: u32,
}

/// One step of a resolved chain.
struct Step {
    runtime: Arc<dyn Runtime>,
    spec: ModelSpec,
}

impl Orchestrator {
    /// An orchestrator over `runtimes` (keyed by instance name). Spawns the keep-alive sweeper,
    /// which ends when the last clone is dropped. Must be called inside a tokio runtime.
    pub fn new(runtimes: Vec<Arc<dyn Runtime>>, models: Arc<dyn ModelSource>, opts: Options) -> Self {
        let runtimes: BTreeMap<_, _> = runtimes.into_iter().map(|r| (r.name().to_owned(), r)).collect();
        let breakers = runtimes
            .keys()
            .map(|name| (name.clone(), Breaker::new(opts.breaker_failures, opts.breaker_open)))
            .collect();
        let inner = Arc::new(Inner {
            admission: Arc::new(Semaphore::new(opts.max_concurrent.max(1))),
            runtimes,
            models,
            state: Mutex::new(State { breakers, ..State::default() }),
            waiting: AtomicUsize::new(0),
            load_lock: tokio::sync::Mutex::new(()),
            opts,
        });
        tokio::spawn(sweeper(Arc::downgrade(&inner)));
        for (name, policy) in &inner.opts.health {
            if inner.runtimes.contains_key(name) {
                tokio::spawn(watch(Arc::downgrade(&inner), name.clone(), *policy));
            }
        }
        Orchestrator { inner }
    }

    /// A function naming the models loaded right now (for the registry, which must not evict
    /// them). It holds no strong reference: once the orchestrator is gone it reports none.
    pub fn loaded_names(&self) -> impl Fn() -> Vec<String> + Send + Sync + 'static {
        let inner = Arc::downgrade(&self.inner);
        move || inner.upgrade().map_or_else(Vec::new, |i| i.lock().loaded.iter().map(|l| l.model.clone()).collect())
    }

    /// Unloads every loaded model (daemon shutdown).
    pub async fn shutdown(&self) {
        let loaded: Vec<Loaded> = self.inner.lock().loaded.drain(..).collect();
        for l in loaded {
            if let Some(rt) = self.inner.runtimes.get(&l.runtime) {
                let _ = rt.unload(&l.model).await;
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits for an admission slot; refuses when the queue is full.
    async fn admit(&self) -> Result<OwnedSemaphorePermit, RuntimeError> {
        if let Ok(p) = self.admission.clone().try_acquire_owned() {
            return Ok(p);
        }
        let queued = self.waiting.fetch_add(1, Ordering::SeqCst);
        if queued >= self.opts.queue_depth {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(RuntimeError::Overloaded {
                what: format!("{} requests running and {} queued", self.opts.max_concurrent, self.opts.queue_depth),
                retry_after: Duration::from_secs(1),
            });
        }
        let permit = self.admission.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        permit.map_err(|_| RuntimeError::Unavailable { adapter: "orchestrator".into(), reason: "shutting down".into() })
    }

    fn route_for(&self, name: &str) -> Option<(String, &Route)> {
        if let Some(r) = self.opts.routes.get(name) {
            return Some((name.to_owned(), r));
        }
        if !name.contains(':') {
            let full = format!("{name}:latest");
            if let Some(r) = self.opts.routes.get(&full) {
                return Some((full, r));
            }
        }
        None
    }

    /// The chain of runtimes for a model name, each with the spec it needs.
    async fn resolve(&self, name: &str) -> Result<(String, Vec<Step>), RuntimeError> {
        if name.trim().is_empty() {
            return Err(RuntimeError::InvalidRequest { message: "the request names no model".into() });
        }
        let local = {
            let models = self.models.clone();
            let n = name.to_owned();
            tokio::task::spawn_blocking(move || models.resolve(&n))
                .await
                .map_err(|e| RuntimeError::Engine { message: format!("registry lookup failed: {e}") })??
        };
        let (canonical, chain, upstream) = match (self.route_for(name), &local) {
            (Some((key, route)), _) => {
                (local.as_ref().map_or(key, |l| l.name.clone()), route.runtimes.clone(), route.upstream.clone())
            }
            (None, Some(l)) => {
                // A registry model may also have a route under its canonical name.
                match self.opts.routes.get(&l.name) {
                    Some(route) => (l.name.clone(), route.runtimes.clone(), route.upstream.clone()),
                    None => (l.name.clone(), self.opts.default_runtimes.clone(), None),
                }
            }
            (None, None) => match self.declared_by(name).await {
                Some(rt) => (name.to_owned(), vec![rt], None),
                None => return Err(RuntimeError::ModelNotFound { model: name.to_owned() }),
            },
        };
        let mut steps = Vec::new();
        for rt_name in chain {
            let Some(runtime) = self.runtimes.get(&rt_name) else {
                tracing::warn!(runtime = %rt_name, model = %canonical, "route names an unknown runtime; skipped");
                continue;
            };
            let spec = ModelSpec {
                name: canonical.clone(),
                upstream: upstream.clone().unwrap_or_else(|| canonical.clone()),
                path: local.as_ref().map(|l| l.path.clone()),
                context_length: local.as_ref().and_then(|l| l.context_length),
                size_bytes: local.as_ref().map(|l| l.size_bytes),
            };
            if spec.path.is_none() && runtime.kind() == "embedded" {
                continue; // the embedded engine serves registry files only
            }
            steps.push(Step { runtime: runtime.clone(), spec });
        }
        if steps.is_empty() {
            return Err(RuntimeError::ModelNotFound { model: name.to_owned() });
        }
        Ok((canonical, steps))
    }

    /// A runtime whose own model list contains `name` (remote runtimes without a route).
    async fn declared_by(&self, name: &str) -> Option<String> {
        for (rt_name, rt) in &self.runtimes {
            if rt.kind() == "embedded" {
                continue;
            }
            if let Ok(Ok(list)) = tokio::time::timeout(Duration::from_secs(2), rt.list_models()).await {
                if list.iter().any(|m| m == name) {
                    return Some(rt_name.clone());
                }
            }
        }
        None
    }

    /// Whether requests may go to `runtime`: its circuit is not open and its health checks (if
    /// watched) have not failed `failure_threshold` times in a row.
    fn allow(&self, runtime: &str) -> Result<(), String> {
        let mut st = self.lock();
        if let Some(w) = st.watched.get(runtime).filter(|w| w.unhealthy()) {
            return Err(format!("failed its last {} health checks: {}", w.failures, w.last.reason().unwrap_or("")));
        }
        if st.breakers.get_mut(runtime).is_some_and(|b| !b.allow(Instant::now())) {
            return Err("circuit open after repeated failures".into());
        }
        Ok(())
    }

    /// Records the result of a periodic health check; logs when the runtime changes state.
    fn note_health(&self, runtime: &str, health: Health, threshold: u32) {
        let mut st = self.lock();
        let w = st.watched.entry(runtime.to_owned()).or_insert(Watched { last: Health::Ready, failures: 0, threshold });
        let was_unhealthy = w.unhealthy();
        w.failures = if health == Health::Ready { 0 } else { w.failures.saturating_add(1) };
        w.last = health;
        let now_unhealthy = w.unhealthy();
        let reason = w.last.reason().unwrap_or("").to_owned();
        if now_unhealthy && !was_unhealthy {
            tracing::warn!(runtime, reason, "runtime failed its health checks; requests skip it until it recovers");
            // A runtime that went away no longer holds its models.
            st.loaded.retain(|l| !(l.runtime == runtime && l.active == 0));
        } else if was_unhealthy && !now_unhealthy {
            tracing::info!(runtime, "runtime healthy again");
            // Healthy again: traffic resumes now rather than when the breaker would try it.
            if let Some(b) = st.breakers.get_mut(runtime) {
                b.success();
            }
        }
    }

    fn record(&self, runtime: &str, result: Result<(), &RuntimeError>) {
        let mut st = self.lock();
        let Some(b) = st.breakers.get_mut(runtime) else { return };
        match result {
            Ok(()) => b.success(),
            Err(e) if e.is_fallback() => {
                b.failure(Instant::now(), e.to_string());
                // A runtime that went away no longer holds its models.
                if matches!(e, RuntimeError::Unavailable { .. }) {
                    st.loaded.retain(|l| !(l.runtime == runtime && l.active == 0));
                }
            }
            // Request errors say nothing about the runtime's health.
            Err(_) => b.success(),
        }
    }

    /// Makes sure `step`'s model is loaded on its runtime, evicting idle models to make room.
    async fn ensure_loaded(&self, step: &Step, keep_alive: Option<Duration>) -> Result<(), RuntimeError> {
        if !step.runtime.capabilities().manages_models {
            return Ok(());
        }
        let rt_name = step.runtime.name().to_owned();
        let _guard = self.load_lock.lock().await;
        if self.touch_loaded(&step.spec.name, &rt_name, keep_alive, 0) {
            return Ok(());
        }
        let size = step.spec.size_bytes.unwrap_or(0);
        if let Some(budget) = self.opts.memory_budget {
            if size > budget {
                return Err(RuntimeError::OverBudget { model: step.spec.name.clone(), needed: size, budget });
            }
        }
        loop {
            let victim = {
                let st = self.lock();
                let used: u64 = st.loaded.iter().map(|l| l.size).sum();
                let over_count = st.loaded.len() >= self.opts.max_loaded;
                let over_budget = self.opts.memory_budget.is_some_and(|b| used + size > b);
                if !over_count && !over_budget {
                    None
                } else {
                    let lru = st.loaded.iter().filter(|l| l.active == 0).min_by_key(|l| l.last_used).cloned();
                    match lru {
                        Some(l) => Some(l),
                        None if over_budget => {
                            return Err(RuntimeError::OverBudget {
                                model: step.spec.name.clone(),
                                needed: size,
                                budget: self.opts.memory_budget.unwrap_or(0),
                            });
                        }
                        None => {
                            return Err(RuntimeError::Overloaded {
                                what: format!("all {} loaded models are busy", self.opts.max_loaded),
                                retry_after: Duration::from_secs(2),
                            });
                        }
                    }
                }
            };
            let Some(victim) = victim else { break };
            tracing::info!(model = %victim.model, runtime = %victim.runtime, "unloading the least recently used model to make room");
            self.lock().loaded.retain(|l| !(l.model == victim.model && l.runtime == victim.runtime));
            if let Some(rt) = self.runtimes.get(&victim.runtime) {
                if let Err(e) = rt.unload(&victim.model).await {
                    tracing::warn!(model = %victim.model, error = %e, "unload failed");
                }
            }
        }
        let started = Instant::now();
        step.runtime.load(&step.spec).await?;
        tracing::info!(model = %step.spec.name, runtime = %rt_name, elapsed_ms = started.elapsed().as_millis() as u64, "model loaded");
        self.lock().loaded.push(Loaded {
            model: step.spec.name.clone(),
            runtime: rt_name,
            size,
            last_used: SystemTime::now(),
            keep_alive: keep_alive.or(self.opts.keep_alive),
            active: 0,
        });
        Ok(())
    }

    /// Updates a loaded entry (last use, keep-alive, active count); false when it is not loaded.
    fn touch_loaded(&self, model: &str, runtime: &str, keep_alive: Option<Duration>, active_delta: i32) -> bool {
        let mut st = self.lock();
        let Some(l) = st.loaded.iter_mut().find(|l| l.model == model && l.runtime == runtime) else {
            return false;
        };
        l.last_used = SystemTime::now();
        if let Some(k) = keep_alive {
            l.keep_alive = Some(k);
        }
        l.active = l.active.saturating_add_signed(active_delta);
        true
    }

    fn note_fallback(&self, model: &str, answered: &str, first_error: Option<String>) {
        let mut st = self.lock();
        match first_error {
            Some(why) => st.last_fallback = Some((Instant::now(), model.to_owned(), answered.to_owned(), why)),
            None => {
                if st.last_fallback.as_ref().is_some_and(|(_, m, _, _)| m == model) {
                    st.last_fallback = None;
                }
            }
        }
    }

    /// Unloads models idle past their keep-alive.
    async fn sweep(&self) {
        let now = SystemTime::now();
        let expired: Vec<Loaded> = {
            let mut st = self.lock();
            let (gone, keep): (Vec<_>, Vec<_>) = st.loaded.drain(..).partition(|l| {
                l.active == 0 && l.keep_alive.is_some_and(|k| now.duration_since(l.last_used).unwrap_or_default() >= k)
            });
            st.loaded = keep;
            gone
        };
        for l in expired {
            tracing::info!(model = %l.model, runtime = %l.runtime, "keep-alive expired; unloading");
            if let Some(rt) = self.runtimes.get(&l.runtime) {
                if let Err(e) = rt.unload(&l.model).await {
                    tracing::warn!(model = %l.model, error = %e, "unload failed");
                }
            }
        }
    }
}

async fn sweeper(inner: Weak<Inner>) {
    let every = inner.upgrade().map_or(Duration::from_secs(1), |i| i.opts.sweep_every);
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        inner.sweep().await;
    }
}

/// Checks one runtime's health every `policy.period` (the first check right away) until the
/// orchestrator is dropped.
async fn watch(inner: Weak<Inner>, name: String, policy: HealthPolicy) {
    loop {
        let Some(rt) = inner.upgrade().and_then(|i| i.runtimes.get(&name).cloned()) else { return };
        let health = match tokio::time::timeout(policy.timeout, rt.health()).await {
            Ok(h) => h,
            Err(_) => Health::Unhealthy(format!("no answer to the health check within {:?}", policy.timeout)),
        };
        let Some(i) = inner.upgrade() else { return };
        i.note_health(&name, health, policy.failure_threshold);
        drop(i);
        tokio::time::sleep(policy.period).await;
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Applies the server-side maximum of generated tokens: a request without a limit, or above it,
/// gets the maximum.
fn clamp_max_tokens(sampling: &mut ondevice_runtime::Sampling, max: Option<u32>) {
    if let Some(max) = max {
        sampling.max_tokens = Some(sampling.max_tokens.map_or(max, |n| n.min(max)));
    }
}

/// Refuses an embeddings request with more inputs than allowed, before any work.
fn check_embed_inputs(request: &EmbedRequest, max: Option<usize>) -> Result<(), RuntimeError> {
    match max {
        Some(max) if request.input.len() > max => Err(RuntimeError::TooLarge {
            message: format!(
                "the request has {} inputs but at most {max} are allowed per request ([inference] \
                 max_embed_inputs): send them in several requests",
                request.input.len()
            ),
        }),
        _ => Ok(()),
    }
}

/// Runs `attempt` on each step of the chain until one succeeds or fails for a reason that is not
/// the runtime's fault.
async fn with_fallback<T, F>(
    inner: &Arc<Inner>,
    name: &str,
    keep_alive: Option<Duration>,
    mut attempt: F,
) -> Result<(T, String, String), RuntimeError>
where
    F: for<'a> FnMut(&'a Step) -> BoxFuture<'a, Result<T, RuntimeError>>,
{
    let (canonical, steps) = inner.resolve(name).await?;
    let mut first_error: Option<String> = None;
    let mut last: Option<RuntimeError> = None;
    for step in &steps {
        let rt = step.runtime.name().to_owned();
        if let Err(reason) = inner.allow(&rt) {
            first_error.get_or_insert(format!("runtime {rt:?} skipped: {reason}"));
            last = Some(RuntimeError::Unavailable { adapter: rt, reason });
            continue;
        }
        let result = match inner.ensure_loaded(step, keep_alive).await {
            Ok(()) => attempt(step).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(v) => {
                inner.record(&rt, Ok(()));
                inner.note_fallback(&canonical, &rt, first_error);
                return Ok((v, rt, canonical));
            }
            Err(e) => {
                inner.record(&rt, Err(&e));
                if !e.is_fallback() {
                    return Err(e);
                }
                tracing::warn!(model = %canonical, runtime = %rt, error = %e, "runtime failed; trying the next in the chain");
                first_error.get_or_insert(e.to_string());
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or(RuntimeError::ModelNotFound { model: name.to_owned() }))
}

impl Inference for Orchestrator {
    fn generate(&self, mut request: GenerateRequest) -> BoxFuture<'_, Result<Generation, RuntimeError>> {
        Box::pin(async move {
            clamp_max_tokens(&mut request.sampling, self.inner.opts.max_tokens);
            let permit = self.inner.admit().await?;
            let keep = request.keep_alive;
            let name = request.model.clone();
            let (events, adapter, model) = with_fallback(&self.inner, &name, keep, |step| {
                let req = request.clone();
                Box::pin(async move { stream::first_event(step.runtime.generate(&step.spec, req).await?).await })
            })
            .await?;
            self.inner.touch_loaded(&model, &adapter, keep, 1);
            let events = stream::Tracked::new(events, permit, self.inner.clone(), model.clone(), adapter.clone());
            Ok(Generation { adapter, model, events: Box::pin(events) })
        })
    }

    fn embed(&self, request: EmbedRequest) -> BoxFuture<'_, Result<Embeddings, RuntimeError>> {
        Box::pin(async move {
            check_embed_inputs(&request, self.inner.opts.max_embed_inputs)?;
            let _permit = self.inner.admit().await?;
            let name = request.model.clone();
            let (mut out, adapter, model) = with_fallback(&self.inner, &name, None, |step| {
                let req = request.clone();
                Box::pin(async move { step.runtime.embed(&step.spec, req).await })
            })
            .await?;
            self.inner.touch_loaded(&model, &adapter, None, 0);
            out.adapter = adapter;
            Ok(out)
        })
    }

    fn tokenize(&self, model: &str, text: &str) -> BoxFuture<'_, Result<Vec<u32>, RuntimeError>> {
        let (model, text) = (model.to_owned(), text.to_owned());
        Box::pin(async move {
            let (tokens, _, _) = with_fallback(&self.inner, &model, None, |step| {
                let text = text.clone();
                Box::pin(async move { step.runtime.tokenize(&step.spec, &text).await })
            })
            .await?;
            Ok(tokens)
        })
    }

    fn tokenize_prompt(&self, model: &str, prompt: Prompt) -> BoxFuture<'_, Result<Vec<u32>, RuntimeError>> {
        let model = model.to_owned();
        Box::pin(async move {
            let (tokens, _, _) = with_fallback(&self.inner, &model, None, |step| {
                let prompt = prompt.clone();
                Box::pin(async move { step.runtime.tokenize_prompt(&step.spec, &prompt).await })
            })
            .await?;
            Ok(tokens)
        })
    }

    fn models(&self) -> BoxFuture<'_, Result<Vec<ModelEntry>, RuntimeError>> {
        Box::pin(async move {
            let models = self.inner.models.clone();
            let mut out = tokio::task::spawn_blocking(move || models.list())
                .await
                .map_err(|e| RuntimeError::Engine { message: format!("registry listing failed: {e}") })??;
            for m in &mut out {
                m.runtimes = match self.inner.opts.routes.get(&m.name) {
                    Some(r) => r.runtimes.clone(),
                    None => self.inner.opts.default_runtimes.clone(),
                };
            }
            for (name, route) in &self.inner.opts.routes {
                if !out.iter().any(|m| &m.name == name) {
                    out.push(bare_entry(name, route.runtimes.clone()));
                }
            }
            for (rt_name, rt) in &self.inner.runtimes {
                if rt.kind() == "embedded" {
                    continue;
                }
                match tokio::time::timeout(Duration::from_secs(2), rt.list_models()).await {
                    Ok(Ok(list)) => {
                        for name in list {
                            if !out.iter().any(|m| m.name == name) {
                                out.push(bare_entry(&name, vec![rt_name.clone()]));
                            }
                        }
                    }
                    Ok(Err(e)) => tracing::debug!(runtime = %rt_name, error = %e, "model listing failed"),
                    Err(_) => tracing::debug!(runtime = %rt_name, "model listing timed out"),
                }
            }
            Ok(out)
        })
    }

    fn loaded(&self) -> BoxFuture<'_, Vec<LoadedModel>> {
        Box::pin(async move {
            let st = self.inner.lock();
            let mut v: Vec<LoadedModel> = st
                .loaded
                .iter()
                .map(|l| LoadedModel {
                    name: l.model.clone(),
                    runtime: l.runtime.clone(),
                    size_bytes: l.size,
                    last_used: unix(l.last_used),
                    expires_at: if l.active > 0 { None } else { l.keep_alive.map(|k| unix(l.last_used + k)) },
                })
                .collect();
            v.sort_by_key(|l| std::cmp::Reverse(l.last_used));
            v
        })
    }

    fn runtimes(&self) -> BoxFuture<'_, Vec<RuntimeStatus>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for (name, rt) in &self.inner.runtimes {
                let watched = self.inner.lock().watched.get(name).map(|w| w.last.clone());
                let health = match watched {
                    Some(h) => h,
                    None => match tokio::time::timeout(Duration::from_secs(2), rt.health()).await {
                        Ok(h) => h,
                        Err(_) => Health::Unhealthy("health check timed out after 2s".into()),
                    },
                };
                let st = self.inner.lock();
                let now = Instant::now();
                let (circuit, failures) = st.breakers.get(name).map_or(("closed", 0), |b| (b.state(now), b.failures()));
                out.push(RuntimeStatus {
                    name: name.clone(),
                    kind: rt.kind().to_owned(),
                    health,
                    circuit: circuit.to_owned(),
                    failures,
                    loaded: st.loaded.iter().filter(|l| &l.runtime == name).map(|l| l.model.clone()).collect(),
                });
            }
            out
        })
    }

    fn load(&self, model: &str) -> BoxFuture<'_, Result<LoadedModel, RuntimeError>> {
        let model = model.to_owned();
        Box::pin(async move {
            let (_, runtime, canonical) =
                with_fallback(&self.inner, &model, None, |_step| Box::pin(async { Ok(()) })).await?;
            let st = self.inner.lock();
            let l = st.loaded.iter().find(|l| l.model == canonical && l.runtime == runtime);
            Ok(LoadedModel {
                name: canonical.clone(),
                runtime: runtime.clone(),
                size_bytes: l.map_or(0, |l| l.size),
                last_used: l.map_or_else(|| unix(SystemTime::now()), |l| unix(l.last_used)),
                expires_at: l.and_then(|l| l.keep_alive.map(|k| unix(l.last_used + k))),
            })
        })
    }

    fn unload(&self, model: &str) -> BoxFuture<'_, Result<bool, RuntimeError>> {
        let model = model.to_owned();
        Box::pin(async move {
            let canonical = match self.inner.resolve(&model).await {
                Ok((c, _)) => c,
                Err(RuntimeError::ModelNotFound { .. }) => model.clone(),
                Err(e) => return Err(e),
            };
            let _guard = self.inner.load_lock.lock().await;
            let gone: Vec<Loaded> = {
                let mut st = self.inner.lock();
                let (gone, keep): (Vec<_>, Vec<_>) = st.loaded.drain(..).partition(|l| l.model == canonical);
                st.loaded = keep;
                gone
            };
            for l in &gone {
                if let Some(rt) = self.inner.runtimes.get(&l.runtime) {
                    rt.unload(&l.model).await?;
                }
            }
            Ok(!gone.is_empty())
        })
    }

    fn degraded(&self) -> Option<String> {
        let st = self.inner.lock();
        let now = Instant::now();
        let mut reasons: Vec<String> = st
            .breakers
            .iter()
            .filter(|(_, b)| b.state(now) != "closed")
            .map(|(name, b)| {
                format!("runtime {name:?} circuit {}: {}", b.state(now), b.last_error().unwrap_or("repeated failures"))
            })
            .collect();
        for (name, w) in st.watched.iter().filter(|(_, w)| w.unhealthy()) {
            reasons.push(format!(
                "runtime {name:?} unhealthy ({} failed health checks): {}",
                w.failures,
                w.last.reason().unwrap_or("")
            ));
        }
        if let Some((at, model, answered, why)) = &st.last_fallback {
            if at.elapsed() < self.inner.opts.degraded_window {
                reasons.push(format!("model {model:?} served by fallback runtime {answered:?} ({why})"));
            }
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }
}

fn bare_entry(name: &str, runtimes: Vec<String>) -> ModelEntry {
    ModelEntry {
        name: name.to_owned(),
        digest: None,
        size_bytes: None,
        created: None,
        family: None,
        quantization: None,
        parameters: None,
        runtimes,
    }
}

#[cfg(test)]
mod tests;
