//! `ondevice quantize SOURCE --type TYPE [--name NAME[:TAG]]`: submits a `quantize` job to the
//! daemon (`POST /api/v1/quantize`), follows it with a progress bar and prints the registered
//! model; SOURCE is a registry model, or a GGUF file or safetensors directory (sent as an
//! absolute path: the daemon reads it). With `--output FILE` the work runs here in this process
//! instead, without a daemon: FILE is written atomically and the provenance receipt printed.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use ondevice_config::Resolved;
use ondevice_quantize::digest_cache::DigestCache;
use ondevice_quantize::pipeline::{self, QuantizeRequest, Receipt, StageProgress};

use crate::cli::QuantizeArgs;

mod mlx;

/// Runs `ondevice quantize`.
pub async fn run(resolved: Resolved, args: QuantizeArgs) -> anyhow::Result<ExitCode> {
    if args.format == "mlx" {
        return mlx::run(&args).await;
    }
    if args.quant_type.is_empty() {
        anyhow::bail!(
            "--type TYPE is required (for example --type Q4_K_M), or --format mlx --bits 4 --output DIR for an MLX-LM directory"
        );
    }
    if let Some(output) = &args.output {
        let mut request = local_request(&args, output)?;
        let json = args.json;
        // Source files hashed by an earlier run and unchanged since are not hashed again.
        let cache = DigestCache::under(&resolved.paths.home);
        let receipt = tokio::task::spawn_blocking(move || {
            let lookup = cache.lookup(&request.source);
            request.known_digests = lookup.known.clone();
            let bar = TermBar::new();
            let r = pipeline::run(&request, &bar);
            bar.finish();
            let receipt = r?;
            // Remembered digests were not read again: a file rewritten during the run would
            // leave its old digest in the receipt.
            if !lookup.unchanged() {
                let _ = std::fs::remove_file(&request.output);
                anyhow::bail!(
                    "{} changed while it was quantized: its digest would not describe what was read; run the command again",
                    request.source.display()
                );
            }
            cache.record(&lookup, &receipt.inputs);
            Ok(receipt)
        })
        .await
        .context("the quantization thread failed")??;
        print_receipt(&receipt, output, json)?;
        return Ok(ExitCode::SUCCESS);
    }
    submit(&resolved, &args).await
}

/// The job runner's settings: this binary's hidden `quantize-task`, the engine's sandbox, its
/// threads and the registry's space rules.
pub(crate) fn task_config(settings: &ondevice_config::Settings) -> anyhow::Result<ondevice_quantize::job::TaskConfig> {
    let program = std::env::current_exe().context("cannot locate the ondevice binary to run quantize tasks")?;
    let r = &settings.registry;
    Ok(ondevice_quantize::job::TaskConfig {
        program,
        sandbox: ondevice_supervisor::sandbox_policy(&settings.engine.sandbox),
        threads: (settings.engine.threads > 0).then_some(settings.engine.threads as usize),
        quota: ondevice_registry::quota::QuotaPolicy {
            quota: r.quota.map(|q| q.bytes()),
            evict: r.evict,
            min_free: r.min_free.bytes(),
        },
    })
}

/// Submits the job to the daemon and follows it.
async fn submit(resolved: &Resolved, args: &QuantizeArgs) -> anyhow::Result<ExitCode> {
    use ondevice_server::routes::jobs::JobView;
    let client = super::client::Client::new(resolved)?;
    // A local file or directory goes to the daemon as an absolute path; anything else is a
    // registry model.
    let local = Path::new(&args.source);
    let source = if local.exists() { absolute(local)?.display().to_string() } else { args.source.clone() };
    let body = serde_json::json!({
        "source": source,
        "type": args.quant_type,
        "name": args.name,
        "imatrix": args.imatrix.as_deref().map(absolute).transpose()?,
        "make_imatrix": args.make_imatrix,
        "allow_requantize": args.allow_requantize,
        "tensor_types": args.tensor_type,
        "output_tensor_type": args.output_tensor_type,
        "token_embedding_type": args.token_embedding_type,
        "no_quality": args.no_quality,
    });
    let job: JobView = client.call(reqwest::Method::POST, "/api/v1/quantize", Some(&body)).await?;
    if !args.json {
        eprintln!(
            "quantizing {source} to {} as job {} (cancel: `ondevice jobs cancel {}`)",
            args.quant_type, job.id, job.id
        );
    }
    let done = super::jobs::follow(&client, job).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    }
    let detail = match &done.detail {
        ondevice_server::routes::jobs::JobDetail::Other(m) => m.clone(),
        ondevice_server::routes::jobs::JobDetail::Pull(_) => serde_json::Map::new(),
    };
    let text = |k: &str| detail.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_owned();
    match done.state.as_str() {
        "succeeded" => {
            if !args.json {
                let size = detail.get("size").and_then(serde_json::Value::as_u64).unwrap_or(0);
                println!(
                    "registered {} ({}, {}); provenance: `ondevice models show {}`",
                    text("model"),
                    text("digest"),
                    super::models::human_size(size),
                    text("model")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        state => {
            eprintln!("quantize of {source} {state}: {}", done.error.as_deref().unwrap_or("no detail"));
            Ok(ExitCode::FAILURE)
        }
    }
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("cannot resolve {}", p.display()))
}

fn local_request(args: &QuantizeArgs, output: &Path) -> anyhow::Result<QuantizeRequest> {
    let source = PathBuf::from(&args.source);
    if !source.exists() {
        anyhow::bail!(
            "{} is not a file or directory: with --output, SOURCE must be a GGUF file or a safetensors directory \
             (registry models are quantized by the daemon: leave out --output)",
            source.display()
        );
    }
    if output.exists() {
        anyhow::bail!("{} already exists: choose another --output or remove it", output.display());
    }
    Ok(QuantizeRequest {
        source: absolute(&source)?,
        output: absolute(output)?,
        quant_type: args.quant_type.clone(),
        imatrix: args.imatrix.as_deref().map(absolute).transpose()?,
        allow_requantize: args.allow_requantize,
        overrides: args.tensor_type.clone(),
        output_tensor_type: args.output_tensor_type.clone(),
        token_embedding_type: args.token_embedding_type.clone(),
        name: args.name.clone(),
        threads: None,
        scratch: None,
        no_quality: args.no_quality,
        make_imatrix: args.make_imatrix,
        known_digests: Vec::new(),
        checkpoints: false,
        resume: None,
    })
}

fn print_receipt(receipt: &Receipt, output: &Path, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(receipt)?);
        return Ok(());
    }
    println!("wrote {} ({} bytes, {})", output.display(), receipt.output_size, receipt.params.quant_type);
    println!("sha256:{}", receipt.output_sha256);
    println!("source sha256:{} ({} files)", receipt.source_sha256, receipt.inputs.len());
    if let Some(v) = &receipt.llama_cpp {
        println!("llama.cpp {v}");
    }
    if let Some(m) = &receipt.imatrix_sha256 {
        println!("imatrix sha256:{m}");
    }
    if let Some(q) = &receipt.quality {
        println!("{}", q.summary());
    }
    Ok(())
}

/// A progress bar on stderr (plain lines when stderr is not a terminal), for both GGUF and MLX.
pub(super) struct TermBar {
    tty: bool,
    state: std::sync::Mutex<(String, u64, bool)>,
}

impl TermBar {
    pub(super) fn new() -> TermBar {
        TermBar { tty: std::io::stderr().is_terminal(), state: std::sync::Mutex::new((String::new(), u64::MAX, false)) }
    }

    pub(super) fn finish(&self) {
        if self.state.lock().map(|s| s.2).unwrap_or(false) {
            eprintln!();
        }
    }
}

impl StageProgress for TermBar {
    fn stage(&self, name: &str) {
        if let Ok(mut s) = self.state.lock() {
            if s.2 {
                eprintln!();
            }
            *s = (name.to_owned(), u64::MAX, false);
        }
        if !self.tty {
            eprintln!("{name}");
        }
    }

    fn report(&self, done: u64, total: u64) {
        let Ok(mut s) = self.state.lock() else { return };
        let pct = (done * 100).checked_div(total).unwrap_or(0).min(100);
        if pct == s.1 {
            return;
        }
        s.1 = pct;
        if self.tty {
            let filled = (pct * 30 / 100) as usize;
            eprint!("\r\x1b[2K{} [{}{}] {pct:3}%", s.0, "#".repeat(filled), "-".repeat(30 - filled));
            s.2 = true;
        } else if pct % 10 == 0 {
            eprintln!("{} {pct}%", s.0);
        }
    }
}
