//! The engine handle: loads a model on a dedicated OS thread and talks to that thread through a
//! channel of commands. Nothing here blocks the async runtime except [`Engine::load`], which the
//! caller runs before serving (or in `spawn_blocking`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc as std_mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use llama_cpp_2::llama_backend::LlamaBackend;
use ondevice_runtime::{Event, Prompt, RuntimeError, Sampling};
use tokio::sync::{mpsc, oneshot};

use crate::EngineError;
use crate::sampling::Plan;
use crate::template::{CHATML, ChatTemplate, Rendered};

/// The events of one generation: tokens, then exactly one `Done`, or an `Err`. Dropping the
/// receiver cancels the generation at the next step and frees its slot.
pub type GenerationEvents = mpsc::UnboundedReceiver<Result<Event, RuntimeError>>;

/// How to run a model.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// The GGUF file.
    pub model: PathBuf,
    /// CPU threads for decoding; `None`: [`crate::threads::physical_cores`].
    pub threads: Option<usize>,
    /// Sequences decoded together (slots).
    pub parallel: u32,
    /// Context length of each slot; `None`: 2048, or the model's training context if smaller.
    pub ctx_per_slot: Option<u32>,
    /// Requests that may wait for a free slot; more get `Overloaded`.
    pub queue: usize,
    /// Tokens per decode step (prompt chunks of all sequences share it).
    pub batch: u32,
    /// Use fewer threads while other processes compete for the CPU (see [`crate::contention`]).
    pub adapt_threads: bool,
}

impl EngineConfig {
    /// Defaults for `model`: 4 slots, 16 waiting requests, 512-token steps, adaptive threads.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            threads: None,
            parallel: 4,
            ctx_per_slot: None,
            queue: 16,
            batch: 512,
            adapt_threads: true,
        }
    }
}

/// What the loaded model looks like.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// The file name of the model.
    pub name: String,
    /// Context length per slot.
    pub n_ctx: u32,
    /// The context length the model was trained with.
    pub n_ctx_train: u32,
    /// Slots.
    pub slots: u32,
    /// Embedding width.
    pub n_embd: u32,
    /// Decoding threads.
    pub threads: usize,
    /// Whether the file has its own chat template (otherwise ChatML is used).
    pub has_template: bool,
}

/// How embeddings shared the engine with generations so far (diagnostics and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbedStats {
    /// Embedding decodes: one per input decoded whole, several for an input embedded in chunks
    /// while a generation ran.
    pub decodes: u64,
    /// Generation steps that ran between two chunks of the same input.
    pub interleaved_steps: u64,
}

/// Vectors and the number of tokens processed.
pub(crate) type EmbedResult = Result<(Vec<Vec<f32>>, u32), RuntimeError>;

/// Limits of one embedding request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbedLimits {
    /// Tokens one input may have (the engine's own cap, 2048 or the training context, applies too).
    pub max_input_tokens: Option<u32>,
    /// When the caller stops waiting: the engine stops computing the request then and answers
    /// `Timeout`. (When the caller drops the future, the engine stops too, at the next input.)
    pub deadline: Option<std::time::Instant>,
}

/// Work for the engine thread.
pub(crate) enum Command {
    Generate(Pending),
    Embed { input: Vec<String>, normalize: bool, limits: EmbedLimits, reply: oneshot::Sender<EmbedResult> },
    Tokenize { text: String, reply: oneshot::Sender<Result<Vec<u32>, RuntimeError>> },
    TokenizePrompt { prompt: Rendered, reply: oneshot::Sender<Result<Vec<u32>, RuntimeError>> },
    Shutdown,
}

/// A generation waiting for a slot.
pub(crate) struct Pending {
    pub(crate) prompt: Rendered,
    pub(crate) plan: Plan,
    pub(crate) events: mpsc::UnboundedSender<Result<Event, RuntimeError>>,
    pub(crate) ticket: Ticket,
}

/// One admitted generation (queued or running); dropping it gives the place back.
pub(crate) struct Ticket(Arc<AtomicUsize>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counters shared by the handle and the thread.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) busy: AtomicU32,
    /// Embedding inputs accepted and not yet embedded (or dropped).
    pub(crate) embed_backlog: AtomicU32,
    /// Threads the last decode step used.
    pub(crate) threads: AtomicU32,
    /// Whether the thread count follows CPU contention.
    pub(crate) adaptive: std::sync::atomic::AtomicBool,
    /// Embedding decodes (chunks) so far.
    pub(crate) embed_decodes: AtomicU64,
    /// Generation steps that ran between two chunks of one embedding input.
    pub(crate) embed_interleaved: AtomicU64,
}

/// What the thread reports once the model is loaded.
pub(crate) struct Loaded {
    pub(crate) info: ModelInfo,
    pub(crate) template: Option<String>,
    pub(crate) bos: String,
    pub(crate) eos: String,
}

/// One loaded model served by a dedicated thread. See the crate docs.
pub struct Engine {
    commands: std_mpsc::Sender<Command>,
    info: ModelInfo,
    template: ChatTemplate,
    admitted: Arc<AtomicUsize>,
    capacity: usize,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("info", &self.info).finish_non_exhaustive()
    }
}

/// llama.cpp's global backend, initialised once per process (it refuses a second init). Other
/// crates that call llama.cpp through `llama-cpp-2` in the same process (the quantizer's quality
/// gate) take it from here.
pub fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::Config(format!("cannot initialise llama.cpp: {e}")))
}

impl Engine {
    /// Loads the model and starts the engine thread. Blocks until the model is loaded or failed;
    /// a missing, truncated or corrupt file is an [`EngineError::Load`].
    pub fn load(config: EngineConfig) -> Result<Self, EngineError> {
        if config.parallel == 0 || config.parallel > 64 {
            return Err(EngineError::Config(format!("parallel must be 1 to 64, got {}", config.parallel)));
        }
        if config.ctx_per_slot.is_some_and(|c| c < 64) {
            return Err(EngineError::Config("the context per slot must be at least 64 tokens".into()));
        }
        if config.batch < 32 {
            return Err(EngineError::Config("the batch must be at least 32 tokens".into()));
        }
        check_file(&config.model)?;
        let backend = backend()?;
        let (commands, receiver) = std_mpsc::channel();
        let (loaded_tx, loaded_rx) = std_mpsc::sync_channel(1);
        let shared = Arc::new(Shared::default());
        let thread_shared = shared.clone();
        let thread_config = config.clone();
        let thread = std::thread::Builder::new()
            .name("llama-engine".into())
            .spawn(move || crate::batch::run(backend, thread_config, receiver, loaded_tx, thread_shared))
            .map_err(|e| EngineError::Config(format!("cannot start the engine thread: {e}")))?;
        let loaded = match loaded_rx.recv() {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(EngineError::Stopped);
            }
        };
        let template = match loaded.template {
            Some(source) => ChatTemplate::new(source, loaded.bos, loaded.eos),
            None => {
                tracing::warn!(model = %loaded.info.name, "the model has no chat template; using ChatML");
                ChatTemplate::new(CHATML, loaded.bos, loaded.eos)
            }
        };
        tracing::info!(model = %loaded.info.name, n_ctx = loaded.info.n_ctx, slots = loaded.info.slots,
            threads = loaded.info.threads, "model loaded");
        Ok(Self {
            commands,
            info: loaded.info,
            template,
            admitted: Arc::new(AtomicUsize::new(0)),
            capacity: config.parallel as usize + config.queue,
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The loaded model.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The chat template in use (the model's, or ChatML).
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// Sequences decoding now.
    pub fn busy(&self) -> u32 {
        self.shared.busy.load(Ordering::Acquire)
    }

    /// Embedding inputs accepted and still to be computed. Requests whose caller went away or
    /// whose deadline passed leave it at the engine's next loop turn.
    pub fn embed_backlog(&self) -> u32 {
        self.shared.embed_backlog.load(Ordering::Acquire)
    }

    /// How embeddings shared the engine with generations so far.
    pub fn embed_stats(&self) -> EmbedStats {
        EmbedStats {
            decodes: self.shared.embed_decodes.load(Ordering::Relaxed),
            interleaved_steps: self.shared.embed_interleaved.load(Ordering::Relaxed),
        }
    }

    /// Threads the last decode step used (fewer than [`ModelInfo::threads`] while the CPU is
    /// contended).
    pub fn decode_threads(&self) -> u32 {
        self.shared.threads.load(Ordering::Acquire)
    }

    /// Whether the decode thread count follows CPU contention (on with more than one thread,
    /// unless [`EngineConfig::adapt_threads`] is off or llama.cpp's context refused the change).
    pub fn adaptive_threads(&self) -> bool {
        self.shared.adaptive.load(Ordering::Acquire)
    }

    /// The text the model will continue: chats and non-raw text go through the chat template.
    pub fn render_prompt(&self, prompt: &Prompt) -> Result<String, RuntimeError> {
        Ok(self.render_segments(prompt)?.text())
    }

    /// The prompt as the engine tokenizes it: the template's markup (special-token texts are
    /// special tokens) and message content (always plain text, so a message cannot forge a turn).
    /// A raw prompt (`/v1/completions`, Ollama `raw: true`) is markup as a whole: its author
    /// writes the template, special tokens included.
    pub fn render_segments(&self, prompt: &Prompt) -> Result<Rendered, RuntimeError> {
        match prompt {
            Prompt::Chat(messages) => self.template.render_segments(messages),
            Prompt::Text { prompt, raw: true } => Ok(Rendered::markup(prompt.clone())),
            Prompt::Text { prompt, raw: false } => self
                .template
                .render_segments(&[ondevice_runtime::ChatMessage::new(ondevice_runtime::Role::User, prompt.clone())]),
        }
    }

    /// Token ids of `prompt` exactly as a generation would see them (BOS included when the model
    /// adds one; special tokens only from markup).
    pub async fn tokenize_prompt(&self, prompt: &Prompt) -> Result<Vec<u32>, RuntimeError> {
        let prompt = self.render_segments(prompt)?;
        let (reply, answer) = oneshot::channel();
        self.send(Command::TokenizePrompt { prompt, reply })?;
        answer.await.map_err(|_| EngineError::Stopped)?
    }

    /// Starts a generation. It joins the running batch at the next step, or waits for a slot;
    /// when the wait queue is full too the answer is `Overloaded`.
    pub fn generate(&self, prompt: &Prompt, sampling: &Sampling) -> Result<GenerationEvents, RuntimeError> {
        let plan = Plan::new(sampling)?;
        let prompt = self.render_segments(prompt)?;
        let ticket = self.admit()?;
        let (events, receiver) = mpsc::unbounded_channel();
        self.send(Command::Generate(Pending { prompt, plan, events, ticket }))?;
        Ok(receiver)
    }

    /// Mean-pooled embeddings of each input (a separate embeddings context, created on first use).
    /// Returns the vectors and the number of tokens processed.
    pub async fn embed(&self, input: Vec<String>, normalize: bool) -> Result<(Vec<Vec<f32>>, u32), RuntimeError> {
        self.embed_with(input, normalize, EmbedLimits::default()).await
    }

    /// [`Engine::embed`] with limits. The engine thread embeds one chunk at a time between
    /// generation steps (a generative model's input in pieces of about 100 ms of work while a
    /// generation runs), so a large request never holds up running generations; dropping the
    /// returned future (the client went away) or passing the deadline stops the work at the next
    /// input. An input longer than the limit is refused with `TooLarge` before any work is done.
    pub async fn embed_with(
        &self,
        input: Vec<String>,
        normalize: bool,
        limits: EmbedLimits,
    ) -> Result<(Vec<Vec<f32>>, u32), RuntimeError> {
        if input.is_empty() {
            return Err(RuntimeError::InvalidRequest { message: "input must hold at least one text".into() });
        }
        let (reply, answer) = oneshot::channel();
        self.send(Command::Embed { input, normalize, limits, reply })?;
        answer.await.map_err(|_| EngineError::Stopped)?
    }

    /// Token ids of `text` (with the model's BOS when it adds one; special tokens are parsed).
    pub async fn tokenize(&self, text: &str) -> Result<Vec<u32>, RuntimeError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Tokenize { text: text.to_owned(), reply })?;
        answer.await.map_err(|_| EngineError::Stopped)?
    }

    fn admit(&self) -> Result<Ticket, RuntimeError> {
        let taken =
            self.admitted.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.capacity).then_some(n + 1));
        match taken {
            Ok(_) => Ok(Ticket(self.admitted.clone())),
            Err(_) => Err(RuntimeError::Overloaded {
                what: format!(
                    "all {} slots are busy and {} requests wait",
                    self.info.slots,
                    self.capacity - self.info.slots as usize
                ),
                retry_after: Duration::from_secs(1),
            }),
        }
    }

    fn send(&self, command: Command) -> Result<(), RuntimeError> {
        self.commands.send(command).map_err(|_| EngineError::Stopped.into())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
    }
}

/// Fails early, with a clear message, on files llama.cpp would reject less helpfully.
fn check_file(path: &Path) -> Result<(), EngineError> {
    use std::io::Read;
    let load = |reason: String| EngineError::Load { path: path.to_owned(), reason };
    let mut file = std::fs::File::open(path).map_err(|e| load(e.to_string()))?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic).map_err(|_| load("the file is shorter than a GGUF header".into()))?;
    if &magic != b"GGUF" {
        return Err(load("the file does not start with the GGUF magic".into()));
    }
    if path.to_str().is_none() {
        return Err(load("the path is not valid UTF-8".into()));
    }
    Ok(())
}
