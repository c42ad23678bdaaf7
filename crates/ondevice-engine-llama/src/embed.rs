//! Embeddings: a second llama.cpp context with mean pooling, created on the first request and kept
//! for the next ones. It runs on the engine thread between generation steps.

use std::num::NonZeroU32;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use ondevice_runtime::RuntimeError;

/// Longest input embedded in one piece.
const MAX_EMBED_CTX: u32 = 2048;

pub(crate) struct Embedder<'m> {
    backend: &'static LlamaBackend,
    threads: i32,
    n_ctx: u32,
    ctx: Option<LlamaContext<'m>>,
}

fn engine(message: String) -> RuntimeError {
    RuntimeError::Engine { message }
}

impl<'m> Embedder<'m> {
    pub(crate) fn new(backend: &'static LlamaBackend, threads: i32, n_ctx_train: u32) -> Self {
        Self { backend, threads, n_ctx: MAX_EMBED_CTX.min(n_ctx_train.max(64)), ctx: None }
    }

    /// One vector per input (mean of the token states), optionally scaled to unit length; and the
    /// number of tokens processed.
    pub(crate) fn embed(
        &mut self,
        model: &'m LlamaModel,
        input: &[String],
        normalize: bool,
    ) -> Result<(Vec<Vec<f32>>, u32), RuntimeError> {
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
        }
        let Some(ctx) = self.ctx.as_mut() else { unreachable!("created above") };
        let vocab = model.vocab();
        let mut vectors = Vec::with_capacity(input.len());
        let mut tokens_total = 0u32;
        let mut batch = LlamaBatch::new(self.n_ctx as usize, 1);
        for (i, text) in input.iter().enumerate() {
            let tokens = vocab.tokenize(text.as_bytes(), true, false);
            if tokens.is_empty() {
                return Err(RuntimeError::InvalidRequest { message: format!("input {i} is empty") });
            }
            if tokens.len() > self.n_ctx as usize {
                return Err(RuntimeError::InvalidRequest {
                    message: format!(
                        "input {i} has {} tokens; at most {} can be embedded at once: split it",
                        tokens.len(),
                        self.n_ctx
                    ),
                });
            }
            tokens_total += tokens.len() as u32;
            ctx.clear_kv_cache();
            batch.clear();
            for (pos, token) in tokens.iter().enumerate() {
                batch.add(*token, pos as i32, &[0], true).map_err(|e| engine(format!("embedding batch: {e}")))?;
            }
            ctx.decode(&mut batch).map_err(|e| engine(format!("llama.cpp could not embed input {i}: {e}")))?;
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
            vectors.push(v);
        }
        Ok((vectors, tokens_total))
    }
}
