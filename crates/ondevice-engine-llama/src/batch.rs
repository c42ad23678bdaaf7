//! The engine thread: loads the model, then runs the continuous-batching loop. Each step builds one
//! `llama_batch` holding the next token of every running sequence and prompt chunks of newly
//! admitted ones, decodes it, and samples every sequence whose logits it produced. Between two
//! steps the loop embeds one chunk of the oldest embedding request: while a generation runs, a
//! chunk is what decodes in about [`EMBED_SLICE`], so a streamed token never waits behind a whole
//! input (see `embed.rs`); with no generation running an input is decoded whole.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;
use ondevice_runtime::{Event, FinishReason, RuntimeError, Timings, Usage};
use tokio::sync::{mpsc, oneshot};

use crate::EngineError;
use crate::contention::{CpuLoad, ThreadController};
use crate::embed::Embedder;
use crate::engine::{Command, EmbedLimits, EmbedResult, EngineConfig, Loaded, ModelInfo, Pending, Shared, Ticket};
use crate::sampling::{Sampler, TextOut};
use crate::template::{Rendered, Segment};

/// Default context per slot when neither the caller nor a smaller training context says otherwise.
const DEFAULT_CTX: u32 = 2048;
/// About how long one embedding decode may hold the engine while a generation runs: a streamed
/// token waits at most one generation step and one such chunk.
pub(crate) const EMBED_SLICE: Duration = Duration::from_millis(100);
/// A loop turn (generation step and embedding chunk) longer than this is logged with its parts.
const SLOW_TURN: Duration = Duration::from_millis(400);

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
    let mut ctx = match model.new_context(backend, ctx_params) {
        Ok(c) => c,
        Err(e) => {
            let _ = loaded.send(Err(EngineError::Context { what: "generation", reason: e.to_string() }));
            return;
        }
    };
    // The controller needs `llama_set_n_threads`; check once that this context accepts it.
    let adaptive = config.adapt_threads && threads > 1 && crate::contention::set_threads(&mut ctx, threads);
    if config.adapt_threads && threads > 1 && !adaptive {
        tracing::warn!("cannot change the decode thread count of this llama.cpp build; it stays at {threads}");
    }
    shared.adaptive.store(adaptive, Ordering::Release);
    shared.threads.store(threads as u32, Ordering::Release);
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
    // Inputs of a causal model can be embedded in chunks; when that cannot be read, whole.
    let causal = crate::contention::causal_attention(&ctx).unwrap_or(false);
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
        embedder: Embedder::new(backend, threads_i32, n_ctx_train, causal),
        embeds: VecDeque::new(),
        next_embed: 0,
        threads: adaptive.then(|| ThreadController::new(threads, Instant::now())),
        cpu: CpuLoad::default(),
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
    /// Embedding requests, served one chunk per loop turn between generation steps.
    embeds: VecDeque<EmbedJob>,
    /// Number of the next embedding request.
    next_embed: u64,
    /// Fewer decode threads while the CPU is contended; `None`: a fixed thread count.
    threads: Option<ThreadController>,
    /// Other processes' CPU use, fed to `threads`.
    cpu: CpuLoad,
    shared: Arc<Shared>,
}

/// What a step decodes, for the thread controller.
#[derive(Debug, Clone, Copy)]
enum StepKind {
    /// One token of each running sequence (timed).
    Decode(u32),
    /// Prompt tokens (untimed; interrupts a probe).
    Prompt,
    /// An embedding chunk between steps (untimed; a probe goes on). `alone`: no generation is
    /// running or waiting in this engine.
    Embed { alone: bool },
}

/// An embedding request in progress.
struct EmbedJob {
    /// Its number (with an input index, the key of the input in progress in the embedder).
    id: u64,
    inputs: Vec<Vec<LlamaToken>>,
    normalize: bool,
    deadline: Option<Instant>,
    /// When the engine took the request (the deadline's timeout is counted from about then).
    received: Instant,
    reply: oneshot::Sender<EmbedResult>,
    vectors: Vec<Vec<f32>>,
    tokens: u32,
}

impl<'m> Scheduler<'m> {
    fn serve(&mut self, commands: &std_mpsc::Receiver<Command>) {
        loop {
            let idle = self.slots.iter().all(Option::is_none) && self.waiting.is_empty() && self.embeds.is_empty();
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
            let turn = Instant::now();
            let stepped = self.step();
            if stepped && self.embedder.in_progress() {
                // A generation step ran between two chunks of one embedding input.
                self.shared.embed_interleaved.fetch_add(1, Ordering::Relaxed);
            }
            let stepped_in = turn.elapsed();
            let embedded = self.embed_step();
            if stepped && turn.elapsed() > SLOW_TURN {
                // What made a streamed token wait: the diagnosis of a stall, logged only then.
                tracing::info!(
                    step_ms = stepped_in.as_secs_f64() * 1e3,
                    embed_ms = (turn.elapsed() - stepped_in).as_secs_f64() * 1e3,
                    embed_tokens = embedded,
                    threads = self.shared.threads.load(Ordering::Relaxed),
                    "slow engine turn: a generation waited"
                );
            }
            self.shared.busy.store(self.slots.iter().filter(|s| s.is_some()).count() as u32, Ordering::Release);
        }
        for seq in self.slots.iter_mut().filter_map(Option::take) {
            let _ = seq.events.send(Err(RuntimeError::Engine { message: "the engine is shutting down".into() }));
        }
        for pending in self.waiting.drain(..) {
            let _ = pending.events.send(Err(RuntimeError::Engine { message: "the engine is shutting down".into() }));
        }
        while let Some(job) = self.drop_embed(0) {
            let _ = job.reply.send(Err(RuntimeError::Engine { message: "the engine is shutting down".into() }));
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
            Command::TokenizePrompt { prompt, reply } => {
                let tokens = tokenize_rendered(self.model, &prompt);
                let _ = reply.send(Ok(tokens.into_iter().map(|t| t.0 as u32).collect()));
            }
            Command::Embed { input, normalize, limits, reply } => match self.tokenize_inputs(&input, limits) {
                Ok(inputs) => {
                    let n = inputs.len() as u32;
                    let backlog = self.shared.embed_backlog.fetch_add(n, Ordering::AcqRel) + n;
                    tracing::info!(inputs = n, backlog, "embedding queued");
                    self.next_embed += 1;
                    self.embeds.push_back(EmbedJob {
                        id: self.next_embed,
                        vectors: Vec::with_capacity(inputs.len()),
                        inputs,
                        normalize,
                        deadline: limits.deadline,
                        received: Instant::now(),
                        reply,
                        tokens: 0,
                    })
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Shutdown => return false,
        }
        true
    }

    /// Tokenizes embedding inputs (as text: special-token texts are not parsed) and checks them
    /// against the limits before any work is done.
    fn tokenize_inputs(&self, input: &[String], limits: EmbedLimits) -> Result<Vec<Vec<LlamaToken>>, RuntimeError> {
        let vocab = self.model.vocab();
        let cap = self.embedder.max_tokens();
        let limit = limits.max_input_tokens.map_or(cap, |l| l.min(cap));
        let mut out = Vec::with_capacity(input.len());
        for (i, text) in input.iter().enumerate() {
            let tokens = vocab.tokenize(text.as_bytes(), true, false);
            if tokens.is_empty() {
                return Err(RuntimeError::InvalidRequest { message: format!("input {i} is empty") });
            }
            if tokens.len() > limit as usize {
                let which = if limit < cap {
                    "the limit of tokens per input ([inference] max_embed_input_tokens)"
                } else {
                    "what this model can embed at once"
                };
                return Err(RuntimeError::TooLarge {
                    message: format!(
                        "input {i} has {} tokens but {which} is {limit}: split it into shorter texts",
                        tokens.len()
                    ),
                });
            }
            out.push(tokens);
        }
        Ok(out)
    }

    /// Embeds the next chunk of the oldest embedding request (one decode: while a generation runs,
    /// what takes about [`EMBED_SLICE`], so generations keep their pace; otherwise a whole
    /// input), after dropping requests whose caller went away or whose deadline passed. Returns
    /// the tokens decoded.
    fn embed_step(&mut self) -> usize {
        // Every request whose caller went away or whose deadline passed leaves now, queued or not.
        let now = Instant::now();
        let mut i = 0;
        while i < self.embeds.len() {
            let job = &self.embeds[i];
            let (done, inputs) = (job.vectors.len(), job.inputs.len());
            if job.reply.is_closed() {
                // No one waits for an answer: the request just leaves.
                tracing::info!(done, inputs, "embedding stopped: the client went away");
                let _ = self.drop_embed(i);
            } else if let Some(deadline) = job.deadline.filter(|d| now >= *d) {
                tracing::info!(done, inputs, "embedding stopped: its deadline passed");
                let after = deadline.saturating_duration_since(job.received);
                if let Some(job) = self.drop_embed(i) {
                    let _ = job.reply.send(Err(RuntimeError::Timeout { adapter: "embedded".into(), after }));
                }
            } else {
                i += 1;
            }
        }
        if self.embeds.is_empty() {
            return 0;
        }
        let generating = self.slots.iter().any(Option::is_some) || !self.waiting.is_empty();
        let budget = if generating { self.embedder.chunk_for(EMBED_SLICE) } else { usize::MAX };
        self.choose_threads(StepKind::Embed { alone: !generating });
        let Some(job) = self.embeds.front_mut() else { return 0 };
        let next = job.vectors.len();
        let result = self.embedder.embed_part(self.model, (job.id, next), &job.inputs[next], job.normalize, budget);
        self.shared.embed_decodes.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(None) => {}
            Ok(Some(v)) => {
                job.tokens += job.inputs[next].len() as u32;
                job.vectors.push(v);
                self.shared.embed_backlog.fetch_sub(1, Ordering::AcqRel);
                if job.vectors.len() == job.inputs.len() {
                    if let Some(job) = self.embeds.pop_front() {
                        let _ = job.reply.send(Ok((job.vectors, job.tokens)));
                    }
                }
            }
            Err(e) => {
                if let Some(job) = self.drop_embed(0) {
                    let _ = job.reply.send(Err(e));
                }
            }
        }
        self.embedder.last_decoded()
    }

    /// Removes embedding request `index` (0: the oldest), taking its inputs not yet embedded off
    /// the backlog.
    fn drop_embed(&mut self, index: usize) -> Option<EmbedJob> {
        let job = self.embeds.remove(index)?;
        let left = (job.inputs.len() - job.vectors.len()) as u32;
        self.shared.embed_backlog.fetch_sub(left, Ordering::AcqRel);
        Some(job)
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
        let prompt = tokenize_rendered(self.model, &p.prompt);
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

    /// One decode step over every running sequence; `true` when it decoded anything.
    fn step(&mut self) -> bool {
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
        // A decode-only step (one token per running sequence) is timed for the thread controller.
        // Decided before prompt chunks are added: a step that carries a prompt's last chunk
        // advances `fed` to the end but is prompt processing, not decoding.
        let decode_only = self.slots.iter().flatten().all(|s| s.fed == s.prompt.len());
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
            return false;
        }
        let tokens = u32::try_from(self.batch.n_tokens()).unwrap_or(u32::MAX);
        let threads = self.choose_threads(if decode_only { StepKind::Decode(tokens) } else { StepKind::Prompt });
        let started = Instant::now();
        let decoded = self.ctx.decode(&mut self.batch);
        if let (Some(controller), Some(threads), true, Ok(())) = (self.threads.as_mut(), threads, decode_only, &decoded)
        {
            controller.observe(Instant::now(), threads, tokens, started.elapsed());
        }
        if let Err(e) = decoded {
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
            return true;
        }
        for id in 0..self.slots.len() {
            let Some(at) = self.slots[id].as_ref().and_then(|s| s.logits_at) else { continue };
            if let Some(finish) = self.sample(id, at) {
                self.finish(id, finish);
            }
        }
        true
    }

    /// The controller's thread count for the next step, applied to both contexts when it changed;
    /// `None` without a controller. A context whose thread count cannot be set turns it off.
    fn choose_threads(&mut self, kind: StepKind) -> Option<usize> {
        let controller = self.threads.as_mut()?;
        let now = Instant::now();
        let load = self.cpu.sample(now);
        if let Some((other, cpus)) = load {
            controller.note_load(now, other, cpus);
        }
        let choice = match kind {
            StepKind::Decode(tokens) => controller.choose(now, Some(tokens)),
            StepKind::Prompt => controller.choose(now, None),
            // The controller goes back up only through probes of timed decode steps, and a worker
            // that only embeds (an encoder model, or a chat model between chats) has none: one
            // burst of other load kept MiniLM on 1 of 2 threads for the worker's life (half its
            // speed). While nothing generates here, the load figure alone brings the threads back.
            StepKind::Embed { alone } if restores_threads(alone, controller.contended(), load, controller.max()) => {
                let (from, max) = (controller.current(), controller.max());
                tracing::info!(from, to = max, "decode threads changed: the cores are free again (embedding)");
                *controller = ThreadController::new(max, now);
                if let Some((other, cpus)) = load {
                    controller.note_load(now, other, cpus);
                }
                crate::contention::Choice { threads: max, changed: true }
            }
            StepKind::Embed { .. } => controller.between(now),
        };
        if choice.changed {
            self.shared.threads.store(choice.threads as u32, Ordering::Release);
            let applied = crate::contention::set_threads(&mut self.ctx, choice.threads)
                && self.embedder.set_threads(choice.threads);
            if !applied {
                tracing::warn!("cannot change the decode thread count of this llama.cpp context; keeping it fixed");
                if let Some(c) = self.threads.take() {
                    let _ = crate::contention::set_threads(&mut self.ctx, c.max());
                    let _ = self.embedder.set_threads(c.max());
                }
                return None;
            }
        }
        Some(choice.threads)
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

/// Tokens of a rendered prompt: markup with special-token parsing, untrusted text without it (so
/// `<|im_end|>` written in a message is text, never the control token). The model's BOS token is
/// added in front unless the template already wrote the BOS text.
pub(crate) fn tokenize_rendered(model: &LlamaModel, prompt: &Rendered) -> Vec<LlamaToken> {
    let vocab = model.vocab();
    let bos = String::from_utf8_lossy(&vocab.token_to_piece(vocab.bos(), true, None)).into_owned();
    let wrote_bos =
        matches!(prompt.segments.first(), Some(Segment::Markup(m)) if !bos.is_empty() && m.starts_with(&bos));
    let mut tokens = Vec::new();
    if vocab.should_add_bos() && !wrote_bos {
        tokens.push(vocab.bos());
    }
    for segment in &prompt.segments {
        let parse_special = matches!(segment, Segment::Markup(_));
        vocab.tokenize_into(segment.as_str().as_bytes(), &mut tokens, false, parse_special);
    }
    tokens
}

/// Whether an embedding turn goes back to all `max` threads: nothing generates in this engine
/// (`alone`), the controller runs below `max` (`contended`), and the latest load figure (`other`
/// processes' busy cores of `cpus`) leaves room for `max` threads, each needing at least half a
/// free core as the controller counts them.
fn restores_threads(alone: bool, contended: bool, load: Option<(f64, usize)>, max: usize) -> bool {
    alone
        && contended
        && load.is_some_and(|(other, cpus)| crate::contention::room_for(cpus as f64 - other.max(0.0), max))
}

/// Length of the common prefix of two token lists.
fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_embedding_turn_restores_the_threads_only_when_the_cores_are_free() {
        // 2 cores, the other processes quiet: back to 2 threads.
        assert!(restores_threads(true, true, Some((0.2, 2)), 2));
        assert!(restores_threads(true, true, Some((0.5, 2)), 2), "half a free core is enough for a thread");
        // Another process still holds a core: stay.
        assert!(!restores_threads(true, true, Some((0.9, 2)), 2));
        // No fresh load figure: nothing to go on.
        assert!(!restores_threads(true, true, None, 2));
        // A generation runs or waits here: the controller's probes decide.
        assert!(!restores_threads(false, true, Some((0.0, 2)), 2));
        // Already at the most threads.
        assert!(!restores_threads(true, false, Some((0.0, 2)), 2));
        // 8 cores, 4 busy elsewhere: 4.5 free cannot hold 8 threads.
        assert!(!restores_threads(true, true, Some((4.0, 8)), 8));
    }
}
