//! Embeddings: a second llama.cpp context, created on the first request and kept for the next
//! ones. It runs on the engine thread between generation steps (the scheduler in `batch.rs`
//! interleaves them and drops requests whose client went away or whose deadline passed).
//!
//! How much of an input one decode takes is what bounds the stall of a generation on the same
//! engine: measured with SmolLM2-135M on 2 cores, one 340-token input took 2.3–8.7 s in one
//! `llama_decode` (about 100 tokens/s), and every streamed token of a chat waited for it.
//! So inputs of a causal model (every generative model) are embedded in chunks: each decode takes
//! at most the tokens the caller allows (the scheduler allows what takes about its time slice
//! while a generation runs, the whole input otherwise), the KV cells of the input's earlier chunks stay
//! in the context, and the mean is taken here over the per-token states (the context has no
//! pooling), which is what llama.cpp's mean pooling computes in one piece. A non-causal model
//! (BERT-like encoders such as MiniLM) sees every token of the input at once, so its inputs are
//! decoded whole with llama.cpp's mean pooling; such models do not generate, so no chat waits
//! behind them in the same engine.

use std::num::NonZeroU32;
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use ondevice_runtime::RuntimeError;

/// Longest input embedded in one piece.
const MAX_EMBED_CTX: u32 = 2048;
/// Fewest tokens a chunk takes (below this the per-decode overhead dominates).
const MIN_CHUNK: usize = 8;
/// Chunk size before any decode has been timed.
const FIRST_CHUNK: usize = 32;
/// Weight of the newest decode in the tokens/s average.
const RATE_ALPHA: f64 = 0.3;

/// Which input of which request: `(request number, input index)`.
pub(crate) type InputKey = (u64, usize);

/// An input part-way through its chunks.
struct Partial {
    key: InputKey,
    /// Tokens decoded so far.
    done: usize,
    /// Sum of the token states so far.
    sum: Vec<f64>,
}

pub(crate) struct Embedder<'m> {
    backend: &'static LlamaBackend,
    threads: i32,
    n_ctx: u32,
    /// Whether the model attends causally: its inputs can then be split into chunks.
    causal: bool,
    ctx: Option<LlamaContext<'m>>,
    batch: Option<LlamaBatch<'static>>,
    partial: Option<Partial>,
    /// Tokens per second of recent embedding decodes (moving average).
    rate: Option<f64>,
    /// Tokens the last decode took.
    last: usize,
}

fn engine(message: String) -> RuntimeError {
    RuntimeError::Engine { message }
}

impl<'m> Embedder<'m> {
    /// `causal`: the model's attention is causal (its inputs may be embedded in chunks).
    pub(crate) fn new(backend: &'static LlamaBackend, threads: i32, n_ctx_train: u32, causal: bool) -> Self {
        Self {
            backend,
            threads,
            n_ctx: MAX_EMBED_CTX.min(n_ctx_train.max(64)),
            causal,
            ctx: None,
            batch: None,
            partial: None,
            rate: None,
            last: 0,
        }
    }

    /// The longest input (in tokens) one request may hold.
    pub(crate) fn max_tokens(&self) -> u32 {
        self.n_ctx
    }

    /// Tokens the last call of [`Embedder::embed_part`] decoded.
    pub(crate) fn last_decoded(&self) -> usize {
        self.last
    }

    /// Whether an input is part-way through its chunks.
    pub(crate) fn in_progress(&self) -> bool {
        self.partial.is_some()
    }

    /// Tokens one decode may take to last about `slice` at the recent rate (at least
    /// [`MIN_CHUNK`]); for a model whose inputs cannot be split, the whole input regardless.
    pub(crate) fn chunk_for(&self, slice: std::time::Duration) -> usize {
        chunk_tokens(self.rate, slice)
    }

    /// Embeds up to `budget` more tokens of input `key` (`tokens`, not empty, at most
    /// [`Embedder::max_tokens`]): the mean of its token states, optionally scaled to unit length,
    /// once its last token is decoded, `None` before. A different key than the input in progress
    /// starts over (that input's request left). Inputs of a non-causal model are always decoded
    /// whole.
    pub(crate) fn embed_part(
        &mut self,
        model: &'m LlamaModel,
        key: InputKey,
        tokens: &[LlamaToken],
        normalize: bool,
        budget: usize,
    ) -> Result<Option<Vec<f32>>, RuntimeError> {
        self.last = 0;
        self.ensure_context(model)?;
        let (Some(ctx), Some(batch)) = (self.ctx.as_mut(), self.batch.as_mut()) else { unreachable!("created above") };
        let mut partial = match self.partial.take() {
            Some(p) if p.key == key => p,
            _ => {
                ctx.clear_kv_cache();
                Partial { key, done: 0, sum: Vec::new() }
            }
        };
        let from = partial.done;
        let to = if self.causal { tokens.len().min(from.saturating_add(budget.max(1))) } else { tokens.len() };
        batch.clear();
        for (pos, token) in tokens.iter().enumerate().take(to).skip(from) {
            batch.add(*token, pos as i32, &[0], true).map_err(|e| engine(format!("embedding batch: {e}")))?;
        }
        let started = Instant::now();
        ctx.decode(batch).map_err(|e| engine(format!("llama.cpp could not embed an input: {e}")))?;
        self.last = to - from;
        let secs = started.elapsed().as_secs_f64();
        if secs > 0.0 {
            let rate = (to - from) as f64 / secs;
            self.rate = Some(self.rate.map_or(rate, |r| RATE_ALPHA * rate + (1.0 - RATE_ALPHA) * r));
        }
        let mean: Vec<f64> = if self.causal {
            for i in 0..(to - from) {
                let state = ctx.embeddings_ith(i as i32).map_err(|_| unsupported())?;
                if partial.sum.is_empty() {
                    partial.sum = vec![0.0; state.len()];
                }
                for (s, x) in partial.sum.iter_mut().zip(state) {
                    *s += f64::from(*x);
                }
            }
            partial.done = to;
            if to < tokens.len() {
                // The KV cells of this input stay for its next chunk.
                self.partial = Some(partial);
                return Ok(None);
            }
            let n = tokens.len() as f64;
            partial.sum.iter().map(|s| s / n).collect()
        } else {
            let pooled = ctx.embeddings_seq_ith(0).map_err(|_| unsupported())?;
            pooled.iter().map(|x| f64::from(*x)).collect()
        };
        let norm = if normalize { mean.iter().map(|x| x * x).sum::<f64>().sqrt() } else { 0.0 };
        let norm = if norm > 0.0 { norm } else { 1.0 };
        Ok(Some(mean.iter().map(|x| (x / norm) as f32).collect()))
    }

    fn ensure_context(&mut self, model: &'m LlamaModel) -> Result<(), RuntimeError> {
        if self.ctx.is_some() {
            return Ok(());
        }
        // A causal model's states are pooled here, chunk by chunk; an encoder's by llama.cpp.
        let pooling = if self.causal { LlamaPoolingType::None } else { LlamaPoolingType::Mean };
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(self.n_ctx))
            .with_n_batch(self.n_ctx)
            .with_n_ubatch(self.n_ctx)
            .with_n_seq_max(1)
            .with_embeddings(true)
            .with_pooling_type(pooling)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads);
        let ctx = model
            .new_context(self.backend, params)
            .map_err(|e| engine(format!("cannot create the embeddings context: {e}")))?;
        self.ctx = Some(ctx);
        self.batch = Some(LlamaBatch::new(self.n_ctx as usize, 1));
        Ok(())
    }

    /// Uses `threads` threads from now on (the context, once created, is changed at once);
    /// `false` when llama.cpp's context refused it.
    pub(crate) fn set_threads(&mut self, threads: usize) -> bool {
        self.threads = i32::try_from(threads).unwrap_or(i32::MAX);
        self.ctx.as_mut().is_none_or(|c| crate::contention::set_threads(c, threads))
    }
}

fn unsupported() -> RuntimeError {
    RuntimeError::Unsupported { adapter: "embedded".into(), what: "pooled embeddings for this model".into() }
}

/// Tokens that take about `slice` at `rate` tokens/s: at least [`MIN_CHUNK`], [`FIRST_CHUNK`]
/// before any rate is known.
fn chunk_tokens(rate: Option<f64>, slice: std::time::Duration) -> usize {
    rate.map_or(FIRST_CHUNK, |r| (r * slice.as_secs_f64()) as usize).max(MIN_CHUNK)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn chunks_last_about_the_slice() {
        let slice = Duration::from_millis(100);
        assert_eq!(chunk_tokens(None, slice), FIRST_CHUNK);
        assert_eq!(chunk_tokens(Some(100.0), slice), 10);
        assert_eq!(chunk_tokens(Some(2000.0), slice), 200);
        assert_eq!(chunk_tokens(Some(20.0), slice), MIN_CHUNK, "never below the minimum");
    }
}
