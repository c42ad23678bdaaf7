//! Embeddings for collections, through the daemon's [`Inference`] (the orchestrator routes a model
//! to the embedded engine or any configured runtime: OpenAI-compatible, Ollama, REST), so a new
//! provider is configuration, not code. Texts go in batches; vectors are normalized for cosine and
//! dot collections; each collection's `max_input_tokens` policy truncates or refuses long texts;
//! a cache keyed by (model digest, SHA-256 of the text) skips texts embedded before.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ondevice_runtime::{EmbedRequest, Inference, RuntimeError};
use sha2::{Digest, Sha256};

use crate::chunk::TokenEstimate;
use crate::{CollectionSpec, Distance, TokenPolicy, VectorError};

/// Texts per embedding request.
pub const BATCH: usize = 32;

/// Characters of text per embedding request at most (about 2,000 tokens): one request holds the
/// engine worker for its whole batch, and a generation on the same worker waits for it, so
/// requests are kept short (a single longer text still goes alone).
pub const BATCH_CHARS: usize = 8192;

/// Splits `indices` of `texts` into request batches of at most [`BATCH`] texts and
/// [`BATCH_CHARS`] characters (a text longer than that alone).
pub fn batches(texts: &[String], indices: &[usize]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut chars = 0;
    for &i in indices {
        let n = texts[i].chars().count();
        match out.last_mut() {
            Some(b) if b.len() < BATCH && chars + n <= BATCH_CHARS => {
                b.push(i);
                chars += n;
            }
            _ => {
                out.push(vec![i]);
                chars = n;
            }
        }
    }
    out
}

/// Cached vectors kept at most.
pub const CACHE_ENTRIES: usize = 20_000;

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct EmbedStats {
    /// Texts embedded by a model (cache misses).
    pub embedded: AtomicU64,
    /// Texts answered from the cache.
    pub cache_hits: AtomicU64,
    /// Time spent in embedding requests, microseconds.
    pub micros: AtomicU64,
    /// Input tokens of embedding requests, as the runtimes report them.
    pub tokens: AtomicU64,
}

struct Cache {
    map: HashMap<[u8; 32], (Arc<[f32]>, u64)>,
    tick: u64,
}

impl Cache {
    fn get(&mut self, key: &[u8; 32]) -> Option<Arc<[f32]>> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(key).map(|(v, t)| {
            *t = tick;
            v.clone()
        })
    }

    fn put(&mut self, key: [u8; 32], v: Arc<[f32]>) {
        self.tick += 1;
        self.map.insert(key, (v, self.tick));
        if self.map.len() > CACHE_ENTRIES {
            // Drop the least recently used half in one pass.
            let mut ticks: Vec<u64> = self.map.values().map(|(_, t)| *t).collect();
            let mid = ticks.len() / 2;
            let cut = *ticks.select_nth_unstable(mid).1;
            self.map.retain(|_, (_, t)| *t > cut);
        }
    }
}

/// A resolved embedding model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    /// `sha256:…` from the registry, or `runtime:RUNTIME/NAME` for a runtime's own model.
    pub digest: String,
}

/// Embeds texts for collections.
pub struct Embedder {
    inference: Arc<dyn Inference>,
    cache: Mutex<Cache>,
    digests: Mutex<HashMap<String, (String, Instant)>>,
    /// Counters.
    pub stats: EmbedStats,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn emb_err(model: &str, source: RuntimeError) -> VectorError {
    VectorError::Embedding { model: model.to_owned(), source }
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

impl Embedder {
    /// An embedder over the daemon's inference facade.
    pub fn new(inference: Arc<dyn Inference>) -> Embedder {
        Embedder {
            inference,
            cache: Mutex::new(Cache { map: HashMap::new(), tick: 0 }),
            digests: Mutex::new(HashMap::new()),
            stats: EmbedStats::default(),
        }
    }

    /// The digest `model` names now (registry digest, or `runtime:…` for a runtime's own model).
    pub async fn resolve(&self, model: &str) -> Result<ResolvedModel, VectorError> {
        if let Some((d, at)) = lock(&self.digests).get(model)
            && at.elapsed() < Duration::from_secs(30)
        {
            return Ok(ResolvedModel { digest: d.clone() });
        }
        let entries = self.inference.models().await.map_err(|e| emb_err(model, e))?;
        let tagged = if model.contains(':') { model.to_owned() } else { format!("{model}:latest") };
        let entry = entries
            .iter()
            .find(|e| e.name == model || e.name == tagged || e.digest.as_deref() == Some(model))
            .ok_or_else(|| emb_err(model, RuntimeError::ModelNotFound { model: model.to_owned() }))?;
        let digest = match &entry.digest {
            Some(d) => d.clone(),
            None => {
                format!("runtime:{}/{}", entry.runtimes.first().map(String::as_str).unwrap_or("default"), entry.name)
            }
        };
        lock(&self.digests).insert(model.to_owned(), (digest.clone(), Instant::now()));
        Ok(ResolvedModel { digest })
    }

    /// Fails when the collection's model name now resolves to other weights than it pinned.
    pub async fn check_pinned(&self, spec: &CollectionSpec) -> Result<(), VectorError> {
        let now = self.resolve(&spec.model).await?;
        if now.digest != spec.model_digest {
            return Err(VectorError::ModelChanged {
                collection: spec.name.clone(),
                model: spec.model.clone(),
                pinned: spec.model_digest.clone(),
                current: now.digest,
            });
        }
        Ok(())
    }

    /// The model name an embedding request for `spec` carries: the pinned `sha256:` digest for a
    /// registry model, so a re-pull that moves the name to other weights between the pin check
    /// and the request cannot change the weights used; the name for a runtime's own model
    /// (`runtime:…` pins have no digest to ask for).
    pub fn request_model(spec: &CollectionSpec) -> String {
        if spec.model_digest.starts_with("sha256:") { spec.model_digest.clone() } else { spec.model.clone() }
    }

    /// Maps a "model not found" for a pinned digest to [`VectorError::ModelChanged`] when the
    /// name now resolves elsewhere (the pinned weights are gone from the registry).
    async fn pinned_error(&self, spec: &CollectionSpec, e: RuntimeError) -> VectorError {
        if matches!(e, RuntimeError::ModelNotFound { .. }) && spec.model_digest.starts_with("sha256:") {
            lock(&self.digests).remove(&spec.model);
            if let Ok(now) = self.resolve(&spec.model).await
                && now.digest != spec.model_digest
            {
                return VectorError::ModelChanged {
                    collection: spec.name.clone(),
                    model: spec.model.clone(),
                    pinned: spec.model_digest.clone(),
                    current: now.digest,
                };
            }
        }
        emb_err(&spec.model, e)
    }

    /// Characters per token of `sample` under `model` (the default estimate when the runtime
    /// cannot tokenize).
    pub async fn estimate(&self, model: &str, sample: &str) -> TokenEstimate {
        let sample: String = sample.chars().take(16_384).collect();
        if sample.is_empty() {
            return TokenEstimate::default();
        }
        match self.inference.tokenize(model, &sample).await {
            Ok(tokens) => TokenEstimate::measured(sample.chars().count(), tokens.len()),
            Err(e) => {
                tracing::debug!(model, error = %e, "tokenize failed; estimating 4 characters per token");
                TokenEstimate::default()
            }
        }
    }

    /// Applies the collection's max-input-tokens policy to `text`.
    pub fn apply_policy<'a>(
        &self,
        spec: &CollectionSpec,
        text: &'a str,
        estimate: TokenEstimate,
    ) -> Result<&'a str, VectorError> {
        let tokens = estimate.tokens(text);
        let max = spec.max_input_tokens as usize;
        if tokens <= max {
            return Ok(text);
        }
        match spec.token_policy {
            TokenPolicy::Truncate => Ok(estimate.truncate(text, max)),
            TokenPolicy::Error => Err(VectorError::InputTooLong { tokens, max }),
        }
    }

    /// Embeds texts with a collection's model, in batches, through the cache; normalized for
    /// cosine and dot collections. Texts must already be within the token policy.
    pub async fn embed(&self, spec: &CollectionSpec, texts: &[String]) -> Result<Vec<Vec<f32>>, VectorError> {
        let normalized = matches!(spec.distance, Distance::Cosine | Distance::Dot);
        let keys: Vec<[u8; 32]> = texts
            .iter()
            .map(|t| {
                let mut h = Sha256::new();
                h.update(spec.model_digest.as_bytes());
                h.update([0, normalized as u8]);
                h.update(t.as_bytes());
                h.finalize().into()
            })
            .collect();
        let mut out: Vec<Option<Vec<f32>>> = {
            let mut cache = lock(&self.cache);
            keys.iter().map(|k| cache.get(k).map(|v| v.to_vec())).collect()
        };
        let hits = out.iter().filter(|o| o.is_some()).count() as u64;
        self.stats.cache_hits.fetch_add(hits, Ordering::Relaxed);
        // A text given twice (the same chunk in two documents of one request) is embedded once.
        let mut first: HashMap<[u8; 32], usize> = HashMap::new();
        let mut repeats = Vec::new();
        let mut missing = Vec::new();
        for i in (0..texts.len()).filter(|i| out[*i].is_none()) {
            match first.entry(keys[i]) {
                std::collections::hash_map::Entry::Occupied(o) => repeats.push((i, *o.get())),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(i);
                    missing.push(i);
                }
            }
        }
        for batch in batches(texts, &missing) {
            let batch = batch.as_slice();
            let input: Vec<String> = batch.iter().map(|i| texts[*i].clone()).collect();
            let started = Instant::now();
            let request = EmbedRequest { model: Self::request_model(spec), input, normalize: normalized };
            let result = match self.inference.embed(request).await {
                Ok(r) => r,
                Err(e) => return Err(self.pinned_error(spec, e).await),
            };
            self.stats.micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            self.stats.embedded.fetch_add(batch.len() as u64, Ordering::Relaxed);
            self.stats.tokens.fetch_add(u64::from(result.usage.prompt_tokens), Ordering::Relaxed);
            if result.vectors.len() != batch.len() {
                return Err(emb_err(
                    &spec.model,
                    RuntimeError::Engine {
                        message: format!(
                            "{} returned {} vectors for {} inputs",
                            result.adapter,
                            result.vectors.len(),
                            batch.len()
                        ),
                    },
                ));
            }
            let mut cache = lock(&self.cache);
            for (i, mut v) in batch.iter().zip(result.vectors) {
                if v.len() != spec.dimension as usize {
                    return Err(VectorError::DimensionMismatch {
                        collection: spec.name.clone(),
                        expected: spec.dimension as usize,
                        got: v.len(),
                    });
                }
                if normalized {
                    normalize(&mut v);
                }
                cache.put(keys[*i], v.clone().into());
                out[*i] = Some(v);
            }
        }
        for (i, of) in repeats {
            out[i] = out[of].clone();
        }
        Ok(out.into_iter().map(|v| v.unwrap_or_default()).collect())
    }

    /// The vector length `model` produces (one probe embedding), asking for the resolved
    /// weights: `resolved.digest` when it is a registry digest, else `model` by name.
    pub async fn probe_dimension(&self, model: &str, resolved: &ResolvedModel) -> Result<u32, VectorError> {
        let name = if resolved.digest.starts_with("sha256:") { resolved.digest.clone() } else { model.to_owned() };
        let r = self
            .inference
            .embed(EmbedRequest { model: name, input: vec!["dimension probe".into()], normalize: false })
            .await
            .map_err(|e| emb_err(model, e))?;
        match r.vectors.first() {
            Some(v) if !v.is_empty() => Ok(v.len() as u32),
            _ => Err(emb_err(model, RuntimeError::Engine { message: format!("{} returned no embedding", r.adapter) })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cap_texts_and_characters() {
        let texts: Vec<String> = (0..100).map(|i| "x".repeat(if i == 50 { 20_000 } else { 300 })).collect();
        let all: Vec<usize> = (0..100).collect();
        let b = batches(&texts, &all);
        assert_eq!(b.concat(), all, "every text once, in order");
        for batch in &b {
            let chars: usize = batch.iter().map(|i| texts[*i].len()).sum();
            assert!(batch.len() <= BATCH, "{batch:?}");
            assert!(chars <= BATCH_CHARS || batch.len() == 1, "{chars} chars in {batch:?}");
        }
        assert!(b.iter().any(|x| x == &vec![50]), "the long text goes alone");
        let short: Vec<String> = (0..40).map(|_| "word".into()).collect();
        let idx: Vec<usize> = (0..40).collect();
        assert_eq!(batches(&short, &idx).iter().map(Vec::len).collect::<Vec<_>>(), vec![32, 8]);
    }
}
