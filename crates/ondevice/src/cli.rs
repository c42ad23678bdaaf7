//! The command-line definition (clap). Man pages and shell completions are generated from it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use ondevice_config::{ListenAddr, LogFormat};

/// `ondevice --version`: the version and the CPU level of the embedded engine's kernels
/// (`ondevice -V`: the version only).
const LONG_VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (llama.cpp kernels: ", env!("ONDEVICE_ENGINE_CPU"), ")");

/// Run AI models privately on your own machine.
#[derive(Debug, Parser)]
#[command(name = "ondevice", version, long_version = LONG_VERSION, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Config file (default: $ONDEVICE_CONFIG, else <platform config dir>/ondevice/config.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format: text or json (default: config log.format, or $ONDEVICE_LOG_FORMAT).
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter such as info or debug (default: config log.level, or $ONDEVICE_LOG).
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (logs to stderr; SIGTERM/SIGINT stop it gracefully).
    Serve(ServeArgs),
    /// Control the background daemon.
    #[command(subcommand)]
    Daemon(DaemonCommand),
    /// Manage API keys (needs an admin key: $ONDEVICE_API_KEY or the bootstrap token).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage the local model registry (needs a key with the models scope for changes).
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Follow and cancel background jobs: pulls and, later, quantizations, indexing, bundles.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Vector collections: create (the embedding model pinned by digest), list, show, remove,
    /// move to another model.
    #[command(subcommand)]
    Collections(crate::commands::collections::CollectionsCommand),
    /// Index files and directories into a collection (a background job; unchanged files skipped).
    Index(crate::commands::index::IndexArgs),
    /// Search a collection: the closest chunks to a text, with scores and sources.
    Search(crate::commands::search::SearchArgs),
    /// Versioned prompt packs: scaffold, publish, render to a token budget, diff, roll back,
    /// export and import signed archives, test.
    #[command(subcommand)]
    Prompts(crate::commands::prompts::PromptsCommand),
    /// Run a model: stream its answer to PROMPT, or chat interactively without PROMPT.
    Run(RunArgs),
    /// List the models loaded now: runtime, memory, and until when keep-alive keeps them.
    Ps(JsonFlag),
    /// Unload a model now (needs a key with the models scope); an error if it is not loaded.
    Stop {
        /// `name[:tag]` or `sha256:<hex>` (see `ondevice ps`).
        model: String,
    },
    /// Print a one-time login link to the web console (`/ui/`) of the running daemon: it signs a
    /// browser in with this CLI's key ($ONDEVICE_API_KEY or the bootstrap token), once, within
    /// two minutes.
    Ui(JsonFlag),
    /// Inspect and validate configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Diagnostics: a redacted support bundle, checks with fixes, crash reports.
    #[command(subcommand)]
    Diag(DiagCommand),
    /// Opt-in anonymous usage report: status, enable, disable, preview (exactly what is sent).
    #[command(subcommand)]
    Telemetry(TelemetryCommand),
    /// Quantize a model: a GGUF file or a Hugging Face safetensors directory to any GGUF type
    /// (F16, Q8_0, Q4_K_M, ...), written to --output with its provenance.
    Quantize(QuantizeArgs),
    /// Run one quantization (started by the daemon's supervisor, not by people).
    #[command(hide = true)]
    QuantizeTask {
        /// The request, as JSON.
        #[arg(long)]
        request: String,
    },
    /// Serve one model file on a local socket (started by the daemon's supervisor, not by people).
    #[command(hide = true)]
    Worker(WorkerArgs),
    /// Write man pages and shell completions (used when building installers).
    #[command(hide = true)]
    GenerateAssets {
        /// Output directory; gets `man/` and `completions/`.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// `ondevice worker` (hidden): needs no config file and no home directory.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The GGUF model file (opened read-only).
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// The Unix socket to create (mode 0600) and serve the worker protocol on; on Windows a named
    /// pipe path (`\\.\pipe\NAME`).
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Decoding threads (default: $ONDEVICE_ENGINE_THREADS, else the number of physical cores).
    #[arg(long, value_name = "N", env = "ONDEVICE_ENGINE_THREADS")]
    pub threads: Option<usize>,
    /// Context length per slot (default: 2048, or the model's training context if smaller).
    #[arg(long, value_name = "N")]
    pub ctx: Option<u32>,
    /// Sequences decoded together.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub parallel: u32,
}

/// `ondevice run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// `name[:tag]` or `sha256:<hex>` (see `ondevice models list`).
    pub model: String,
    /// The prompt. Without it: read stdin when it is not a terminal, else chat interactively.
    pub prompt: Option<String>,
    /// A system message sent before the conversation.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Sampling temperature (0: greedy, reproducible).
    #[arg(long, value_name = "T")]
    pub temperature: Option<f32>,
    /// Seed for reproducible sampling.
    #[arg(long, value_name = "N")]
    pub seed: Option<i64>,
    /// Maximum tokens to generate.
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<u32>,
    /// Print one JSON object (answer, usage, timings) at the end instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Print timing statistics (time to first token, tokens/s) on stderr.
    #[arg(long, short)]
    pub verbose: bool,
    /// Retrieve context from this collection for each question; the sources follow the answer.
    #[arg(long, value_name = "NAME")]
    pub collection: Option<String>,
    /// Chunks to retrieve with --collection (1-32, default 4).
    #[arg(long, value_name = "N", requires = "collection")]
    pub top_k: Option<u32>,
    /// Render a published prompt pack server-side (`NAME`, `NAME@1.2.0`, `NAME@^1`, `NAME@label`);
    /// its messages come before the conversation. Without PROMPT, the pack alone is sent once.
    #[arg(long = "prompt", value_name = "NAME[@REQ]")]
    pub pack: Option<String>,
    /// A pack variable: `k=v`, `k=@FILE` (the file's text) or `k:=JSON` (repeatable).
    #[arg(long = "var", value_name = "K=V", requires = "pack")]
    pub vars: Vec<String>,
    /// Chat interactively even with --prompt and no PROMPT (the pack's messages open every turn).
    #[arg(long, short)]
    pub interactive: bool,
}

/// `ondevice serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, IP:PORT (default: config server.listen, or $ONDEVICE_LISTEN).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<ListenAddr>,
}

/// `ondevice daemon ...`.
#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Start the daemon in the background and wait until it is ready.
    Start(DaemonStartArgs),
    /// Stop the background daemon gracefully.
    Stop(DaemonStopArgs),
    /// Show version, uptime, listen address, workers and sandbox protection.
    Status(JsonFlag),
    /// Restart a supervised worker now, also after it was given up (circuit open).
    RestartWorker {
        /// The worker's name (`[workers.NAME]`).
        name: String,
    },
}

/// `ondevice daemon start`.
#[derive(Debug, Args)]
pub struct DaemonStartArgs {
    /// Address to listen on, IP:PORT.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<ListenAddr>,
    /// Seconds to wait for the daemon to become ready.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub wait: u64,
}

/// `ondevice daemon stop`.
#[derive(Debug, Args)]
pub struct DaemonStopArgs {
    /// Seconds to wait for the daemon to exit.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub wait: u64,
}

/// A `--json` flag for read commands.
#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `ondevice keys ...`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it once.
    Create(KeysCreateArgs),
    /// List keys (never their secrets).
    List(JsonFlag),
    /// Revoke a key by id; effective immediately.
    Revoke {
        /// The key id (the 12 hex digits after `odk_`).
        id: String,
    },
}

/// `ondevice keys create`.
#[derive(Debug, Args)]
pub struct KeysCreateArgs {
    /// A name for people (default: key-<id>).
    #[arg(long)]
    pub name: Option<String>,
    /// Scope to grant: admin, models, infer or read. Repeat for several.
    #[arg(long = "scope", required = true, value_name = "SCOPE")]
    pub scopes: Vec<ondevice_auth::Scope>,
    /// Print JSON (with the key) instead of the bare key.
    #[arg(long)]
    pub json: bool,
}

/// `ondevice config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the resolved configuration (file + environment + flags), secrets redacted.
    Show(JsonFlag),
    /// Validate a config file; errors name the line.
    Check {
        /// The TOML file.
        file: PathBuf,
    },
    /// Print the JSON schema of the config file.
    Schema,
    /// Print the Markdown reference of every config key.
    Reference,
}

/// `ondevice models list`.
#[derive(Debug, Args)]
pub struct ModelsListArgs {
    /// List the models the bundled and configured catalogs offer instead.
    #[arg(long)]
    pub available: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `ondevice jobs ...`.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, oldest first (finished ones are kept for `[jobs] keep_finished_days`).
    List {
        /// Only jobs of this kind: pull, quantize, index, ...
        #[arg(long)]
        kind: Option<String>,
        /// Only jobs in this state: queued, running, succeeded, failed or cancelled.
        #[arg(long)]
        state: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one job: state, progress, error and its kind's detail.
    Show {
        /// Job id (see `ondevice jobs list`).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Follow a job until it finishes: a progress bar on a terminal, plain lines otherwise.
    /// Exits non-zero unless the job succeeded.
    Watch {
        /// Job id.
        id: String,
        /// Print the finished job as JSON (progress still goes to stderr).
        #[arg(long)]
        json: bool,
    },
    /// Cancel a queued or running job (needs a key with the models scope).
    Cancel {
        /// Job id.
        id: String,
        /// Print the cancelled job as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `ondevice models ...`.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List registered models, or with --available the models the catalogs offer.
    List(ModelsListArgs),
    /// Download a model from the catalog (`name[:tag]`) or an http(s) URL of a GGUF file; resumes
    /// after interruptions and verifies the SHA-256. Progress bars on a terminal.
    Pull {
        /// `name[:tag]` from `ondevice models list --available`, or a URL.
        model: String,
        /// Register it as `name[:tag]` (default: the catalog name, or the URL's file name).
        #[arg(long)]
        name: Option<String>,
        /// Print the finished job as JSON (progress lines still go to stderr).
        #[arg(long)]
        json: bool,
        /// Start the pull and return at once with its job id.
        #[arg(long)]
        detach: bool,
    },
    /// Show one model's metadata.
    Show {
        /// `name[:tag]` or `sha256:<hex>`.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Import a GGUF file, a Hugging Face safetensors directory (`config.json` plus
    /// `*.safetensors`, sharded or not) or a bundle written by `ondevice models export`. Validated
    /// first (nothing is written for an invalid one); files are cloned into the blob store
    /// (copy-on-write, no extra space) where the filesystem allows it, else copied, so changing
    /// the original later never changes the stored model. Content already stored needs no space.
    Import {
        /// The GGUF file, safetensors directory or bundle.
        path: PathBuf,
        /// Register it as `name[:tag]` (default: from the file's metadata or name).
        #[arg(long)]
        name: Option<String>,
        /// Hard-link the files into the blob store instead of copying them (no extra space, same
        /// filesystem only). Risk: the store then shares the files with you, and writing to an
        /// original in place (re-downloading over it, editing it) silently changes the stored
        /// model, which `ondevice models verify` then reports as corrupt. Use only for files you
        /// will not modify.
        #[arg(long)]
        link: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a model as a bundle (tar with a manifest and sha256s) to import on another home.
    Export {
        /// `name[:tag]` or `sha256:<hex>`.
        name: String,
        /// The bundle file to write.
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Remove a model (free its blob with `ondevice models gc`).
    Rm {
        /// `name[:tag]` or `sha256:<hex>`.
        name: String,
    },
    /// Pin a model: never evicted to make room for a download (`[registry] evict = true`).
    Pin {
        /// `name[:tag]` or `sha256:<hex>`.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Unpin a model: least-recently-used eviction may remove it again.
    Unpin {
        /// `name[:tag]` or `sha256:<hex>`.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-hash model blobs and report corruption (exit 1 if any is bad).
    Verify {
        /// Only this model.
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete blobs no model references and stale partial files.
    Gc(JsonFlag),
}

/// `ondevice diag ...`.
#[derive(Debug, Subcommand)]
pub enum DiagCommand {
    /// Write a redacted support bundle (.tar.gz with manifest.json): build, system, config,
    /// environment, daemon status, metrics, logs, crash reports, registry and jobs. Never keys,
    /// tokens, passwords, URL credentials, your home path, prompts or outputs.
    Bundle {
        /// Where to write it (default: ./ondevice-diagnostics-<time>.tar.gz).
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check this installation; each problem comes with its fix (exit 1 when a check fails).
    Doctor(JsonFlag),
    /// List the crash reports of the daemon and its workers, newest first.
    Crashes(JsonFlag),
    /// List the outbound connections the daemon made or refused (offline mode), newest first:
    /// purpose, host, port, time, bytes.
    Egress {
        /// Rows shown at most.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `ondevice telemetry ...`.
#[derive(Debug, Subcommand)]
pub enum TelemetryCommand {
    /// Whether a report is sent, and why not (off by default; DO_NOT_TRACK=1 and
    /// ONDEVICE_TELEMETRY=0 always win; consent to an older report is stale).
    Status(JsonFlag),
    /// Consent to the current report (see `preview`).
    Enable,
    /// Withdraw consent; queued events are dropped.
    Disable,
    /// Print byte for byte what would be sent: queued events and the next report.
    Preview(JsonFlag),
    /// Replace the random install id; queued events are dropped.
    RotateId,
}

/// `ondevice quantize SOURCE --type TYPE`.
#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// A registry model (name[:tag] or sha256: digest), a GGUF file or a Hugging Face safetensors
    /// directory (BERT, Llama, Mistral, Qwen 2).
    pub source: String,
    /// The GGUF type: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K_S/M/L, Q4_K_S/M,
    /// Q5_K_S/M, Q6_K, IQ1_S ... IQ4_XS, TQ1_0, TQ2_0.
    /// Required for GGUF output; not used with `--format mlx`.
    #[arg(long = "type", value_name = "TYPE", default_value = "", hide_default_value = true)]
    pub quant_type: String,
    /// Register the result as NAME[:TAG] (default: the source's name with the type appended, e.g.
    /// smollm2-q8_0:latest, keeping a registry model's tag); with --output, `general.name` of a
    /// converted model.
    #[arg(long)]
    pub name: Option<String>,
    /// Importance matrix (llama-imatrix output, GGUF or .dat); recorded by its SHA-256.
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// Compute an importance matrix from the source with the engine, over the text the quality
    /// gate reads, and quantize with it (in the daemon's job, or here with --output; recorded by
    /// its SHA-256). Satisfies the types that need a matrix (IQ2_XS, ...).
    #[arg(long, conflicts_with = "imatrix")]
    pub make_imatrix: bool,
    /// Quantize tensors that are already quantized (a quantized source; quality suffers).
    #[arg(long)]
    pub allow_requantize: bool,
    /// Per-tensor type, PATTERN=TYPE with a regular expression over tensor names (repeatable).
    #[arg(long, value_name = "PATTERN=TYPE")]
    pub tensor_type: Vec<String>,
    /// Type of the output tensor (output.weight).
    #[arg(long, value_name = "TYPE")]
    pub output_tensor_type: Option<String>,
    /// Type of the token embeddings (token_embd.weight).
    #[arg(long, value_name = "TYPE")]
    pub token_embedding_type: Option<String>,
    /// Output format: `gguf`, or `mlx` for an MLX-LM directory (affine group quantization; needs
    /// --bits and --output DIR; SOURCE a safetensors directory or an F16/F32 GGUF).
    #[arg(long, value_name = "FORMAT", default_value = "gguf", value_parser = ["gguf", "mlx"])]
    pub format: String,
    /// MLX: bits per weight (2, 3, 4, 5, 6 or 8).
    #[arg(long, value_name = "B")]
    pub bits: Option<u32>,
    /// MLX: weights per group sharing a scale and a bias (32, 64 or 128; default 64).
    #[arg(long, value_name = "G")]
    pub group_size: Option<usize>,
    /// Write the result to FILE here, in this process, without a daemon (nothing is registered).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Skip the quality gate (perplexity on a fixed text, KL-divergence against the source).
    #[arg(long)]
    pub no_quality: bool,
    /// Print the provenance receipt (or the finished job) as JSON.
    #[arg(long)]
    pub json: bool,
}
