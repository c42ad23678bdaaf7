//! Embeddings: a second llama.cpp context with mean pooling, created on the first request and kept
//! for the next ones. It runs on the engine thread between generation steps, one input at a time
//! (the scheduler in `batch.rs` interleaves inputs with generation steps and drops requests whose
//! client went away or whose deadline passed).

use std::num::NonZeroU32;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use ondevice_runtime::RuntimeError;

/// Longest input embedded in one piece.
const MAX_EMBED_CTX: u32 = 2048;

pub(crate) struct Embedder<'m> {
    backend: &'static LlamaBackend,
    threads: i32,
    n_ctx: u32,
    ctx: Option<LlamaContext<'m>>,
    batch: Option<LlamaBatch<'static>>,
}

fn engine(message: String) -> RuntimeError {
    RuntimeError::Engine { message }
}

impl<'m> Embedder<'m> {
    pub(crate) fn new(backend: &'static LlamaBackend, threads: i32, n_ctx_train: u32) -> Self {
        Self { backend, threads, n_ctx: MAX_EMBED_CTX.min(n_ctx_train.max(64)), ctx: None, batch: None }
    }

    /// The longest input (in tokens) one decode can embed.
    pub(crate) fn max_tokens(&self) -> u32 {
        self.n_ctx
    }

    /// The mean of the token states of one tokenized input, optionally scaled to unit length.
    /// The caller checked that `tokens` is not empty and fits [`Embedder::max_tokens`].
    pub(crate) fn embed_one(
        &mut self,
        model: &'m LlamaModel,
        tokens: &[LlamaToken],
        normalize: bool,
    ) -> Result<Vec<f32>, RuntimeError> {
        if self.ctx.is_none() {
            let params = LlamaContextParams::default()
                .with_n_ctx(NonZeroU32::new(self.n_ctx))
                .with_n_batch(self.n_ctx)
                .with_n_ubatch(self.n_ctx)
                .with_n_seq_max(1)
                .with_embeddings(true)
                .with_pooling_type(LlamaPoolingType::Mean)
                .with_n_threads(self.threads)
                .with_n_threads_batch(self.threads);
            let ctx = model
                .new_context(self.backend, params)
                .map_err(|e| engine(format!("cannot create the embeddings context: {e}")))?;
            self.ctx = Some(ctx);
            self.batch = Some(LlamaBatch::new(self.n_ctx as usize, 1));
        }
        let (Some(ctx), Some(batch)) = (self.ctx.as_mut(), self.batch.as_mut()) else { unreachable!("created above") };
        ctx.clear_kv_cache();
        batch.clear();
        for (pos, token) in tokens.iter().enumerate() {
            batch.add(*token, pos as i32, &[0], true).map_err(|e| engine(format!("embedding batch: {e}")))?;
        }
        ctx.decode(batch).map_err(|e| engine(format!("llama.cpp could not embed an input: {e}")))?;
        let pooled = ctx.embeddings_seq_ith(0).map_err(|_| RuntimeError::Unsupported {
            adapter: "embedded".into(),
            what: "pooled embeddings for this model".into(),
        })?;
        let mut v = pooled.to_vec();
        if normalize {
            let norm = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
            if norm > 0.0 {
                v.iter_mut().for_each(|x| *x = (f64::from(*x) / norm) as f32);
            }
        }
        Ok(v)
    }

    /// The embeddings context, once created (for thread-count changes).
    pub(crate) fn context(&mut self) -> Option<&mut LlamaContext<'m>> {
        self.ctx.as_mut()
    }
}
