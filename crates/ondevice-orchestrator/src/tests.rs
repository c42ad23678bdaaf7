//! Orchestration logic (routing, fallback, breaker, LRU, keep-alive, admission) driven through the
//! public `Inference` interface. The runtimes here are scripted in-process `Runtime` implementations:
//! what is under test is the orchestrator's bookkeeping, not a peer's protocol. Real runtimes (the
//! engine worker, llama-server, the Ollama protocol) are exercised by the adapter and e2e tests.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use futures_util::StreamExt;
use ondevice_runtime::{Capabilities, EmbedRequest, Event, FinishReason, Prompt, Sampling, Usage};

use super::*;

struct Scripted {
    name: String,
    down: AtomicBool,
    loads: AtomicU32,
    unloads: Mutex<Vec<String>>,
    tokens: Vec<&'static str>,
    /// When set, generations are accepted but their stream fails with this before any token.
    fails_first: Mutex<Option<RuntimeError>>,
    /// The `max_tokens` of every generation it received.
    max_tokens: Mutex<Vec<Option<u32>>>,
}

impl Scripted {
    fn new(name: &str) -> Arc<Self> {
        Arc::new(Scripted {
            name: name.into(),
            down: AtomicBool::new(false),
            loads: AtomicU32::new(0),
            unloads: Mutex::new(Vec::new()),
            tokens: vec!["Par", "is"],
            fails_first: Mutex::new(None),
            max_tokens: Mutex::new(Vec::new()),
        })
    }
    fn check(&self) -> Result<(), RuntimeError> {
        if self.down.load(Ordering::SeqCst) {
            Err(RuntimeError::Unavailable { adapter: self.name.clone(), reason: "connection refused".into() })
        } else {
            Ok(())
        }
    }
}

impl Runtime for Scripted {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "scripted"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities { chat: true, completion: true, embeddings: true, manages_models: true, ..Default::default() }
    }
    fn load(&self, _model: &ModelSpec) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async move {
            self.check()?;
            self.loads.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
    fn unload(&self, model: &str) -> BoxFuture<'_, Result<(), RuntimeError>> {
        let model = model.to_owned();
        Box::pin(async move {
            self.unloads.lock().unwrap().push(model);
            Ok(())
        })
    }
    fn health(&self) -> BoxFuture<'_, Health> {
        Box::pin(async move { if self.check().is_ok() { Health::Ready } else { Health::Unhealthy("down".into()) } })
    }
    fn generate(
        &self,
        _model: &ModelSpec,
        request: GenerateRequest,
    ) -> BoxFuture<'_, Result<ondevice_runtime::EventStream, RuntimeError>> {
        Box::pin(async move {
            self.check()?;
            self.max_tokens.lock().unwrap().push(request.sampling.max_tokens);
            if let Some(e) = self.fails_first.lock().unwrap().clone() {
                let s: ondevice_runtime::EventStream = Box::pin(futures_util::stream::iter([Err(e)]));
                return Ok(s);
            }
            let mut events: Vec<Result<Event, RuntimeError>> =
                self.tokens.iter().map(|t| Ok(Event::Token((*t).to_owned()))).collect();
            events.push(Ok(Event::Done {
                finish: FinishReason::Stop,
                usage: Usage { prompt_tokens: 3, completion_tokens: 2 },
                timings: None,
            }));
            let s: ondevice_runtime::EventStream = Box::pin(futures_util::stream::iter(events));
            Ok(s)
        })
    }
    fn embed(&self, _model: &ModelSpec, request: EmbedRequest) -> BoxFuture<'_, Result<Embeddings, RuntimeError>> {
        Box::pin(async move {
            self.check()?;
            Ok(Embeddings {
                vectors: vec![vec![1.0, 0.0]; request.input.len()],
                usage: Usage::default(),
                adapter: String::new(),
            })
        })
    }
    fn tokenize(&self, _model: &ModelSpec, text: &str) -> BoxFuture<'_, Result<Vec<u32>, RuntimeError>> {
        let n = text.split_whitespace().count() as u32;
        Box::pin(async move { Ok((0..n).collect()) })
    }
    fn list_models(&self) -> BoxFuture<'_, Result<Vec<String>, RuntimeError>> {
        Box::pin(async move { Ok(vec![]) })
    }
}

struct Registry(Vec<LocalModel>);

impl ModelSource for Registry {
    fn resolve(&self, name: &str) -> Result<Option<LocalModel>, RuntimeError> {
        let full = if name.contains(':') { name.to_owned() } else { format!("{name}:latest") };
        Ok(self.0.iter().find(|m| m.name == full).cloned())
    }
    fn list(&self) -> Result<Vec<ModelEntry>, RuntimeError> {
        Ok(self.0.iter().map(|m| bare_entry(&m.name, vec![])).collect())
    }
}

fn local(name: &str, size: u64) -> LocalModel {
    LocalModel {
        name: name.into(),
        path: PathBuf::from(format!("/blobs/{name}")),
        size_bytes: size,
        context_length: None,
    }
}

fn request(model: &str) -> GenerateRequest {
    GenerateRequest {
        model: model.into(),
        prompt: Prompt::Text { prompt: "capital?".into(), raw: true },
        sampling: Sampling::default(),
        keep_alive: None,
    }
}

async fn text_of(g: Generation) -> String {
    let mut out = String::new();
    let mut events = g.events;
    while let Some(e) = events.next().await {
        if let Event::Token(t) = e.unwrap() {
            out.push_str(&t);
        }
    }
    out
}

fn orchestrator(runtimes: &[Arc<Scripted>], models: Vec<LocalModel>, opts: Options) -> Orchestrator {
    let rts: Vec<Arc<dyn Runtime>> = runtimes.iter().map(|r| r.clone() as Arc<dyn Runtime>).collect();
    Orchestrator::new(rts, Arc::new(Registry(models)), opts)
}

#[tokio::test]
async fn falls_back_names_the_answering_runtime_and_opens_the_circuit() {
    let (a, b) = (Scripted::new("embedded-ish"), Scripted::new("remote"));
    let mut routes = BTreeMap::new();
    routes.insert(
        "m:latest".to_owned(),
        Route { runtimes: vec!["embedded-ish".into(), "remote".into()], upstream: None },
    );
    let o = orchestrator(
        &[a.clone(), b.clone()],
        vec![local("m:latest", 10)],
        Options { routes, breaker_failures: 2, ..Options::default() },
    );

    let g = o.generate(request("m")).await.unwrap();
    assert_eq!((g.adapter.as_str(), g.model.as_str()), ("embedded-ish", "m:latest"));
    assert_eq!(text_of(g).await, "Paris");
    assert!(o.degraded().is_none());

    a.down.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        let g = o.generate(request("m")).await.unwrap();
        assert_eq!(g.adapter, "remote");
        assert_eq!(text_of(g).await, "Paris");
    }
    let status = o.runtimes().await;
    let first = status.iter().find(|s| s.name == "embedded-ish").unwrap();
    assert_eq!((first.circuit.as_str(), first.failures), ("open", 2));
    let why = o.degraded().expect("degraded while a circuit is open");
    assert!(why.contains("embedded-ish") && why.contains("open"), "{why}");
    // With the circuit open the first runtime is not even tried.
    let loads_before = a.loads.load(Ordering::SeqCst);
    assert_eq!(o.generate(request("m")).await.unwrap().adapter, "remote");
    assert_eq!(a.loads.load(Ordering::SeqCst), loads_before);
}

#[tokio::test]
async fn a_runtime_failing_its_health_checks_is_skipped_until_it_recovers() {
    let (a, b) = (Scripted::new("a"), Scripted::new("b"));
    let mut routes = BTreeMap::new();
    routes.insert("m:latest".to_owned(), Route { runtimes: vec!["a".into(), "b".into()], upstream: None });
    let policy =
        HealthPolicy { period: Duration::from_millis(10), timeout: Duration::from_secs(1), failure_threshold: 2 };
    let opts = Options {
        routes,
        health: BTreeMap::from([("a".to_owned(), policy)]),
        degraded_window: Duration::ZERO,
        ..Options::default()
    };
    let o = orchestrator(&[a.clone(), b.clone()], vec![local("m:latest", 1)], opts);
    assert_eq!(o.generate(request("m")).await.unwrap().adapter, "a");

    a.down.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while o.degraded().is_none() {
        assert!(Instant::now() < deadline, "the failed checks were never noticed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let why = o.degraded().unwrap();
    assert!(why.contains("\"a\" unhealthy") && why.contains("down"), "{why}");
    let status = o.runtimes().await;
    assert!(matches!(&status.iter().find(|s| s.name == "a").unwrap().health, Health::Unhealthy(_)));
    // Requests go straight to the next runtime: `a` is not even asked to load, and no request
    // failure is counted against it.
    let loads = a.loads.load(Ordering::SeqCst);
    assert_eq!(o.generate(request("m")).await.unwrap().adapter, "b");
    assert_eq!(a.loads.load(Ordering::SeqCst), loads);
    assert_eq!(status.iter().find(|s| s.name == "a").unwrap().failures, 0);

    // A passing check puts it back in front.
    a.down.store(false, Ordering::SeqCst);
    while o.degraded().is_some() {
        assert!(Instant::now() < deadline, "the recovery was never noticed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(o.generate(request("m")).await.unwrap().adapter, "a");
}

#[tokio::test]
async fn a_request_error_does_not_fall_back() {
    let (a, b) = (Scripted::new("a"), Scripted::new("b"));
    let o = orchestrator(&[a, b], vec![], Options::default());
    assert!(matches!(o.generate(request("nope")).await, Err(RuntimeError::ModelNotFound { .. })));
    assert!(matches!(o.generate(request(" ")).await, Err(RuntimeError::InvalidRequest { .. })));
}

#[tokio::test]
async fn a_failure_before_the_first_token_is_the_request_error_or_falls_back() {
    let (a, b) = (Scripted::new("a"), Scripted::new("b"));
    let mut routes = BTreeMap::new();
    routes.insert("m:latest".to_owned(), Route { runtimes: vec!["a".into(), "b".into()], upstream: None });
    let o = orchestrator(&[a.clone(), b.clone()], vec![local("m:latest", 1)], Options { routes, ..Options::default() });

    // A bad request (say, a grammar that does not parse) is the request's error, not a stream line,
    // and it neither falls back nor counts against the runtime.
    *a.fails_first.lock().unwrap() = Some(RuntimeError::InvalidRequest { message: "bad grammar".into() });
    match o.generate(request("m")).await {
        Err(RuntimeError::InvalidRequest { message }) => assert_eq!(message, "bad grammar"),
        other => panic!("expected the request error, got {:?}", other.map(|g| g.adapter)),
    }
    let status = o.runtimes().await;
    assert_eq!(status.iter().find(|s| s.name == "a").unwrap().failures, 0);

    // A runtime that dies before its first token falls back to the next one.
    *a.fails_first.lock().unwrap() =
        Some(RuntimeError::Unavailable { adapter: "a".into(), reason: "worker died".into() });
    let g = o.generate(request("m")).await.unwrap();
    assert_eq!(g.adapter, "b");
    assert_eq!(text_of(g).await, "Paris");
    let status = o.runtimes().await;
    assert_eq!(status.iter().find(|s| s.name == "a").unwrap().failures, 1);

    // Healthy again: the first event is handed on with the rest of the stream.
    *a.fails_first.lock().unwrap() = None;
    let g = o.generate(request("m")).await.unwrap();
    assert_eq!(g.adapter, "a");
    assert_eq!(text_of(g).await, "Paris");
}

#[tokio::test]
async fn the_least_recently_used_idle_model_is_evicted() {
    let a = Scripted::new("embedded");
    let models = vec![local("one:latest", 1), local("two:latest", 1), local("three:latest", 1)];
    let opts = Options { max_loaded: 2, ..Options::default() };
    let o = orchestrator(std::slice::from_ref(&a), models, opts);
    for m in ["one", "two"] {
        text_of(o.generate(request(m)).await.unwrap()).await;
    }
    // "one" is busy: a stream held open keeps it from being evicted.
    let busy = o.generate(request("one")).await.unwrap();
    text_of(o.generate(request("three")).await.unwrap()).await;
    assert_eq!(*a.unloads.lock().unwrap(), vec!["two:latest".to_owned()]);
    let loaded: Vec<String> = o.loaded().await.into_iter().map(|l| l.name).collect();
    assert_eq!(loaded.len(), 2);
    // The registry's view (it must not evict these from disk) agrees.
    let names = o.loaded_names();
    let (mut seen, mut want) = (names(), loaded.clone());
    seen.sort();
    want.sort();
    assert_eq!(seen, want);
    assert!(loaded.contains(&"one:latest".to_owned()) && loaded.contains(&"three:latest".to_owned()));
    // Both loaded models busy: a third cannot be made room for.
    let busy3 = o.generate(request("three")).await.unwrap();
    assert!(matches!(o.generate(request("two")).await, Err(RuntimeError::Overloaded { .. })));
    drop((busy, busy3));
    text_of(o.generate(request("two")).await.unwrap()).await;
}

#[tokio::test]
async fn the_memory_budget_is_enforced() {
    let a = Scripted::new("embedded");
    let opts = Options { memory_budget: Some(100), ..Options::default() };
    let o = orchestrator(
        std::slice::from_ref(&a),
        vec![local("big:latest", 200), local("s:latest", 60), local("t:latest", 60)],
        opts,
    );
    assert!(matches!(o.generate(request("big")).await, Err(RuntimeError::OverBudget { needed: 200, budget: 100, .. })));
    text_of(o.generate(request("s")).await.unwrap()).await;
    text_of(o.generate(request("t")).await.unwrap()).await;
    assert_eq!(*a.unloads.lock().unwrap(), vec!["s:latest".to_owned()], "60 + 60 > 100: s makes room");
}

#[tokio::test]
async fn keep_alive_unloads_idle_models() {
    let a = Scripted::new("embedded");
    let opts = Options {
        keep_alive: Some(Duration::from_millis(50)),
        sweep_every: Duration::from_millis(20),
        ..Options::default()
    };
    let o = orchestrator(std::slice::from_ref(&a), vec![local("m:latest", 1)], opts);
    let mut req = request("m");
    req.keep_alive = Some(Duration::from_secs(3600));
    text_of(o.generate(req).await.unwrap()).await;
    text_of(o.generate(request("m")).await.unwrap()).await; // no override: keeps the longer one
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(o.loaded().await.len(), 1, "a per-request keep_alive overrides the default");
    let mut req = request("m");
    req.keep_alive = Some(Duration::ZERO);
    text_of(o.generate(req).await.unwrap()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(o.loaded().await.is_empty());
    assert_eq!(*a.unloads.lock().unwrap(), vec!["m:latest".to_owned()]);
}

#[tokio::test]
async fn a_full_queue_answers_overloaded() {
    let a = Scripted::new("embedded");
    let opts = Options { max_concurrent: 1, queue_depth: 1, ..Options::default() };
    let o = orchestrator(&[a], vec![local("m:latest", 1)], opts);
    let running = o.generate(request("m")).await.unwrap();
    let o2 = o.clone();
    let queued = tokio::spawn(async move { text_of(o2.generate(request("m")).await.unwrap()).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    match o.generate(request("m")).await {
        Err(RuntimeError::Overloaded { retry_after, .. }) => assert!(retry_after >= Duration::from_secs(1)),
        other => panic!("expected overloaded, got {other:?}"),
    }
    drop(running);
    assert_eq!(queued.await.unwrap(), "Paris", "the queued request runs once the slot frees");
}

#[tokio::test]
async fn hot_load_unload_and_embeddings() {
    let a = Scripted::new("embedded");
    let o = orchestrator(std::slice::from_ref(&a), vec![local("m:latest", 5)], Options::default());
    let l = o.load("m").await.unwrap();
    assert_eq!((l.name.as_str(), l.runtime.as_str(), l.size_bytes), ("m:latest", "embedded", 5));
    assert_eq!(a.loads.load(Ordering::SeqCst), 1);
    o.load("m:latest").await.unwrap();
    assert_eq!(a.loads.load(Ordering::SeqCst), 1, "loading a loaded model is a no-op");
    let e = o
        .embed(EmbedRequest { model: "m".into(), input: vec!["a".into(), "b".into()], normalize: true })
        .await
        .unwrap();
    assert_eq!((e.vectors.len(), e.adapter.as_str()), (2, "embedded"));
    assert_eq!(o.tokenize("m", "a b c").await.unwrap().len(), 3);
    assert!(o.unload("m").await.unwrap());
    assert!(!o.unload("m").await.unwrap());
    assert!(o.loaded().await.is_empty());
}

#[tokio::test]
async fn generated_tokens_are_clamped_and_embedding_inputs_limited() {
    let a = Scripted::new("embedded");
    let opts = Options { max_tokens: Some(100), max_embed_inputs: Some(3), ..Options::default() };
    let o = orchestrator(std::slice::from_ref(&a), vec![local("m:latest", 1)], opts);
    for asked in [None, Some(20), Some(100), Some(5000)] {
        let mut r = request("m");
        r.sampling.max_tokens = asked;
        text_of(o.generate(r).await.unwrap()).await;
    }
    assert_eq!(*a.max_tokens.lock().unwrap(), vec![Some(100), Some(20), Some(100), Some(100)]);

    let embed = |n: usize| EmbedRequest { model: "m".into(), input: vec!["x".into(); n], normalize: true };
    assert_eq!(o.embed(embed(3)).await.unwrap().vectors.len(), 3);
    let err = o.embed(embed(4)).await.unwrap_err();
    assert!(matches!(&err, RuntimeError::TooLarge { message } if message.contains("max_embed_inputs")), "{err:?}");
}
