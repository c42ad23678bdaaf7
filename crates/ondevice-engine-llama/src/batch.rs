//! The engine thread: loads the model, then runs the continuous-batching loop. Each step builds one
//! `llama_batch` holding the next token of every running sequence and prompt chunks of newly
//! admitted ones, decodes it, and samples every sequence whose logits it produced.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;
use ondevice_runtime::{Event, FinishReason, RuntimeError, Timings, Usage};
use tokio::sync::mpsc;

use crate::EngineError;
use crate::embed::Embedder;
use crate::engine::{Command, EngineConfig, Loaded, ModelInfo, Pending, Shared, Ticket};
use crate::sampling::{Sampler, TextOut};

/// Default context per slot when neither the caller nor a smaller training context says otherwise.
const DEFAULT_CTX: u32 = 2048;

/// The thread's entry point.
pub(crate) fn run(
    backend: &'static LlamaBackend,
    config: EngineConfig,
    commands: std_mpsc::Receiver<Command>,
    loaded: std_mpsc::SyncSender<Result<Loaded, EngineError>>,
    shared: Arc<Shared>,
) {
    let load_error = |reason: String| EngineError::Load { path: config.model.clone(), reason };
    // use_mmap is llama.cpp's default: the file is mapped read-only and never written.
    let params = LlamaModelParams::default().with_use_mmap(true).with_use_mlock(false);
    let model = match LlamaModel::load_from_file(backend, &config.model, &params) {
        Ok(m) => m,
        Err(e) => {
            let _ = loaded.send(Err(load_error(format!("llama.cpp rejected it ({e}; its log above says why)"))));
            return;
        }
    };
    let threads = config.threads.unwrap_or_else(crate::threads::physical_cores).max(1);
    let n_ctx_train = model.n_ctx_train();
    let ctx_per_slot = config.ctx_per_slot.unwrap_or(DEFAULT_CTX.min(n_ctx_train.max(64)));
    let total = ctx_per_slot.checked_mul(config.parallel).and_then(NonZeroU32::new);
    let threads_i32 = i32::try_from(threads).unwrap_or(i32::MAX);
    let ctx_params = LlamaContextParams::default()
        .with_n_ctx(total)
        .with_n_batch(config.batch)
        .with_n_ubatch(config.batch)
        .with_n_seq_max(config.parallel)
        .with_kv_unified(false)
        .with_n_threads(threads_i32)
        .with_n_threads_batch(threads_i32);
    let ctx = match model.new_context(backend, ctx_params) {
        Ok(c) => c,
        Err(e) => {
            let _ = loaded.send(Err(EngineError::Context { what: "generation", reason: e.to_string() }));
            return;
        }
    };
    let vocab = model.vocab();
    let special = |t: LlamaToken| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
    let name = config.model.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let info = ModelInfo {
        name,
        n_ctx: ctx_per_slot,
        n_ctx_train,
        slots: config.parallel,
        n_embd: u32::try_from(model.n_embd()).unwrap_or(0),
        threads,
        has_template: model.chat_template(None).is_ok(),
    };
    let template = model.chat_template(None).ok().and_then(|t| t.to_string().ok());
    let reply = Loaded { info, template, bos: special(vocab.bos()), eos: special(vocab.eos()) };
    if loaded.send(Ok(reply)).is_err() {
        return;
    }
    let mut scheduler = Scheduler {
        model: &model,
        ctx,
        batch: LlamaBatch::new(config.batch as usize, 1),
        n_batch: config.batch as usize,
        ctx_per_slot,
        slots: (0..config.parallel).map(|_| None).collect(),
        cached: (0..config.parallel).map(|_| Vec::new()).collect(),
        waiting: VecDeque::new(),
        embedder: Embedder::new(backend, threads_i32, n_ctx_train),
        shared,
    };
    scheduler.serve(&commands);
}

/// One running generation.
struct Sequence {
    events: mpsc::UnboundedSender<Result<Event, RuntimeError>>,
    _ticket: Ticket,
    prompt: Vec<LlamaToken>,
    /// Prompt tokens already decoded.
    fed: usize,
    /// Position of the next token in this sequence.
    pos: i32,
    /// The sampled token to decode next.
    next: Option<LlamaToken>,
    /// Tokens decoded into this sequence's KV cells, in position order.
    history: Vec<LlamaToken>,
    /// Prompt tokens whose KV cells came from the slot's cache instead of being evaluated.
    reused: u32,
    /// Index in the current batch whose logits are this sequence's.
    logits_at: Option<i32>,
    sampler: Sampler,
    text: TextOut,
    max_tokens: u32,
    generated: u32,
    admitted: Instant,
    first_token: Option<Instant>,
}

struct Scheduler<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    n_batch: usize,
    ctx_per_slot: u32,
    slots: Vec<Option<Sequence>>,
    /// Per slot, the tokens whose KV cells the slot's sequence still holds from its last
    /// generation (prompt caching: a new prompt sharing a prefix skips re-evaluating it, as
    /// llama.cpp's server does).
    cached: Vec<Vec<LlamaToken>>,
    waiting: VecDeque<Pending>,
    embedder: Embedder<'m>,
    shared: Arc<Shared>,
}

impl<'m> Scheduler<'m> {
    fn serve(&mut self, commands: &std_mpsc::Receiver<Command>) {
        loop {
            let idle = self.slots.iter().all(Option::is_none) && self.waiting.is_empty();
            if idle {
                // Nothing to decode: sleep until a command arrives.
                match commands.recv() {
                    Ok(c) => {
                        if !self.handle(c) {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            let mut open = true;
            loop {
                match commands.try_recv() {
                    Ok(c) => {
                        if !self.handle(c) {
                            open = false;
                            break;
                        }
                    }
                    Err(std_mpsc::TryRecvError::Empty) => break,
                    Err(std_mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            if !open {
                break;
            }
            self.drop_cancelled();
            self.admit();
            self.shared.busy.store(self.slots.iter().filter(|s| s.is_some()).count() as u32, Ordering::Release);
            self.step();
            self.shared.busy.store(self.slots.iter().filter(|s| s.is_some()).count() as u32, Ordering::Release);
        }
        for seq in self.slots.iter_mut().filter_map(Option::take) {
            let _ = seq.events.send(Err(RuntimeError::Engine { message: "the engine is shutting down".into() }));
        }
        for pending in self.waiting.drain(..) {
            let _ = pending.events.send(Err(RuntimeError::Engine { message: "the engine is shutting down".into() }));
        }
    }

    /// Handles one command; `false` means shut down.
    fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Generate(pending) => self.waiting.push_back(pending),
            Command::Tokenize { text, reply } => {
                let tokens = self.model.vocab().tokenize(text.as_bytes(), true, true);
                let _ = reply.send(Ok(tokens.into_iter().map(|t| t.0 as u32).collect()));
            }
            Command::Embed { input, normalize, reply } => {
                let _ = reply.send(self.embedder.embed(self.model, &input, normalize));
            }
            Command::Shutdown => return false,
        }
        true
    }

    /// Frees the slots of generations whose receiver was dropped (the client went away).
    fn drop_cancelled(&mut self) {
        for id in 0..self.slots.len() {
            if self.slots[id].as_ref().is_some_and(|s| s.events.is_closed()) {
                tracing::debug!(slot = id, "generation cancelled: the receiver went away");
                self.free(id);
            }
        }
        self.waiting.retain(|p| !p.events.is_closed());
    }

    /// Moves waiting requests into free slots: the free slot whose cached tokens share the longest
    /// prefix with the prompt, whose KV cells for that prefix are reused.
    fn admit(&mut self) {
        while self.slots.iter().any(Option::is_none) {
            let Some(pending) = self.waiting.pop_front() else { break };
            let mut seq = match self.prepare(pending) {
                Ok(seq) => seq,
                Err((events, e)) => {
                    let _ = events.send(Err(e));
                    continue;
                }
            };
            let (id, shared) = (0..self.slots.len())
                .filter(|&id| self.slots[id].is_none())
                .map(|id| (id, common_prefix(&self.cached[id], &seq.prompt)))
                .max_by_key(|&(id, n)| (n, std::cmp::Reverse(id)))
                .expect("a free slot exists");
            // At least the last prompt token is decoded again: its logits start the generation.
            let keep = shared.min(seq.prompt.len() - 1);
            let trimmed = self.ctx.clear_kv_cache_seq(Some(id as u32), Some(keep as u32), None).unwrap_or(false);
            let keep = if trimmed {
                keep
            } else {
                let _ = self.ctx.clear_kv_cache_seq(Some(id as u32), None, None);
                0
            };
            self.cached[id].clear();
            seq.fed = keep;
            seq.pos = keep as i32;
            seq.history = seq.prompt[..keep].to_vec();
            seq.reused = keep as u32;
            tracing::debug!(slot = id, prompt = seq.prompt.len(), reused = keep, "generation admitted");
            self.slots[id] = Some(seq);
        }
    }

    #[allow(clippy::result_large_err)]
    fn prepare(
        &self,
        p: Pending,
    ) -> Result<Sequence, (mpsc::UnboundedSender<Result<Event, RuntimeError>>, RuntimeError)> {
        let vocab = self.model.vocab();
        let bos = String::from_utf8_lossy(&vocab.token_to_piece(vocab.bos(), true, None)).into_owned();
        // A template that already wrote the BOS text must not get a second BOS token.
        let add_special = bos.is_empty() || !p.prompt.starts_with(&bos);
        let prompt = vocab.tokenize(p.prompt.as_bytes(), add_special, true);
        let fail = |e: RuntimeError| (p.events.clone(), e);
        if prompt.is_empty() {
            return Err(fail(RuntimeError::InvalidRequest { message: "the prompt is empty".into() }));
        }
        if prompt.len() >= self.ctx_per_slot as usize {
            return Err(fail(RuntimeError::InvalidRequest {
                message: format!(
                    "the prompt has {} tokens but the context holds {}: shorten it or start the worker with a larger --ctx",
                    prompt.len(),
                    self.ctx_per_slot
                ),
            }));
        }
        let sampler = p.plan.sampler(self.model).map_err(fail)?;
        Ok(Sequence {
            text: TextOut::new(p.plan.stop.clone()),
            max_tokens: p.plan.max_tokens.unwrap_or(u32::MAX),
            events: p.events,
            _ticket: p.ticket,
            prompt,
            fed: 0,
            pos: 0,
            next: None,
            history: Vec::new(),
            reused: 0,
            logits_at: None,
            sampler,
            generated: 0,
            admitted: Instant::now(),
            first_token: None,
        })
    }

    /// Frees a slot (its ticket goes with it). Its KV cells stay, remembered in `cached`, for a
    /// later prompt with the same prefix.
    fn free(&mut self, id: usize) {
        if let Some(seq) = self.slots[id].take() {
            self.cached[id] = seq.history;
        }
    }

    /// Frees a slot and drops its KV cells (after a failed decode their state is unknown).
    fn discard(&mut self, id: usize) {
        self.slots[id] = None;
        self.cached[id].clear();
        if let Err(e) = self.ctx.clear_kv_cache_seq(Some(id as u32), None, None) {
            tracing::warn!(slot = id, error = %e, "cannot clear the slot's KV cells");
        }
    }

    /// One decode step over every running sequence.
    fn step(&mut self) {
        self.batch.clear();
        let mut used = 0;
        // Tokens of running sequences first: they must advance every step.
        for (id, slot) in self.slots.iter_mut().enumerate() {
            let Some(seq) = slot else { continue };
            seq.logits_at = None;
            if let Some(token) = seq.next.take() {
                if self.batch.add(token, seq.pos, &[id as i32], true).is_err() {
                    seq.next = Some(token);
                    continue;
                }
                seq.history.push(token);
                seq.logits_at = Some(self.batch.n_tokens() - 1);
                seq.pos += 1;
                used += 1;
            }
        }
        // Then prompt chunks of admitted sequences, as far as the batch has room.
        for (id, slot) in self.slots.iter_mut().enumerate() {
            let Some(seq) = slot else { continue };
            while seq.fed < seq.prompt.len() && used < self.n_batch {
                let last = seq.fed + 1 == seq.prompt.len();
                if self.batch.add(seq.prompt[seq.fed], seq.pos, &[id as i32], last).is_err() {
                    break;
                }
                seq.history.push(seq.prompt[seq.fed]);
                if last {
                    seq.logits_at = Some(self.batch.n_tokens() - 1);
                }
                seq.fed += 1;
                seq.pos += 1;
                used += 1;
            }
        }
        if self.batch.n_tokens() == 0 {
            return;
        }
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            tracing::error!(error = %e, "decode failed");
            let in_batch: Vec<usize> = (0..self.slots.len())
                .filter(|&id| self.slots[id].as_ref().is_some_and(|s| s.logits_at.is_some() || s.fed > 0))
                .collect();
            for id in in_batch {
                if let Some(seq) = &self.slots[id] {
                    let _ =
                        seq.events.send(Err(RuntimeError::Engine { message: format!("llama.cpp decode failed: {e}") }));
                }
                self.discard(id);
            }
            return;
        }
        for id in 0..self.slots.len() {
            let Some(at) = self.slots[id].as_ref().and_then(|s| s.logits_at) else { continue };
            if let Some(finish) = self.sample(id, at) {
                self.finish(id, finish);
            }
        }
    }

    /// Samples sequence `id` from batch output `at`; `Some` when the generation is over.
    fn sample(&mut self, id: usize, at: i32) -> Option<FinishReason> {
        let vocab = self.model.vocab();
        let ctx_per_slot = self.ctx_per_slot as i32;
        let seq = self.slots[id].as_mut()?;
        let token = seq.sampler.sample(&self.ctx, at, vocab.eos());
        seq.first_token.get_or_insert_with(Instant::now);
        seq.generated += 1;
        if vocab.is_eog(token) {
            return Some(FinishReason::Stop);
        }
        let chunk = seq.text.push(&vocab.token_to_piece(token, false, None));
        if !chunk.text.is_empty() && seq.events.send(Ok(Event::Token(chunk.text))).is_err() {
            return Some(FinishReason::Cancelled);
        }
        if chunk.stopped {
            // Whatever follows the stop string is not part of the output.
            seq.text = TextOut::default();
            return Some(FinishReason::Stop);
        }
        if seq.generated >= seq.max_tokens || seq.pos >= ctx_per_slot {
            return Some(FinishReason::Length);
        }
        seq.next = Some(token);
        None
    }

    /// Sends the final events and frees the slot.
    fn finish(&mut self, id: usize, finish: FinishReason) {
        if let Some(seq) = self.slots[id].as_mut() {
            let rest = seq.text.finish();
            if !rest.is_empty() && finish != FinishReason::Cancelled {
                let _ = seq.events.send(Ok(Event::Token(rest)));
            }
            let now = Instant::now();
            let first = seq.first_token.unwrap_or(now);
            let done = Event::Done {
                finish,
                usage: Usage { prompt_tokens: seq.prompt.len() as u32, completion_tokens: seq.generated },
                timings: Some(Timings { prompt: first - seq.admitted, generation: now - first }),
            };
            let _ = seq.events.send(Ok(done));
        }
        self.free(id);
    }
}

/// Length of the common prefix of two token lists.
fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
