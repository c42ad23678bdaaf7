//! `ondevice index PATH... --collection NAME`: files and directories on this machine into a
//! collection, with progress (files, chunks, chunks/s). Unchanged files are skipped.
//!
//! The daemon reads files itself only inside `[vector] index_roots`: when every path lies there,
//! this starts an `index` job (Ctrl-C leaves it running; `ondevice jobs cancel ID` stops it; it
//! resumes after a daemon restart). Otherwise this command walks and reads the files itself, with
//! the same rules (hidden entries and build directories skipped, symlinked directories not
//! followed, text/Markdown/code/HTML only), and sends their content as documents; running it again
//! after an interruption skips what was stored.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use ondevice_config::Resolved;
use ondevice_server::routes::jobs::JobView;
use reqwest::Method;
use serde_json::json;

use super::client::Client;
use super::models::segment;

/// `ondevice index`.
#[derive(Debug, clap::Args)]
pub struct IndexArgs {
    /// Files and directories (walked recursively; hidden and build directories skipped).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// The collection to index into.
    #[arg(long, short)]
    pub collection: String,
    /// Return the job id at once instead of following it.
    #[arg(long)]
    pub detach: bool,
    /// Print the finished job as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `ondevice index`.
pub async fn run(resolved: Resolved, args: IndexArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&resolved)?;
    let mut canonical = Vec::new();
    for p in &args.paths {
        canonical.push(std::fs::canonicalize(p).with_context(|| format!("cannot index {}", p.display()))?);
    }
    let roots: Vec<PathBuf> =
        resolved.settings.vector.index_roots.iter().filter_map(|r| std::fs::canonicalize(r).ok()).collect();
    if !canonical.iter().all(|p| roots.iter().any(|r| p.starts_with(r))) {
        return upload(&client, &resolved, &args, canonical).await;
    }
    let paths: Vec<String> = canonical.iter().map(|p| p.display().to_string()).collect();
    let body = json!({ "paths": paths });
    let job: JobView = client
        .call(Method::POST, &format!("/api/v1/collections/{}/index", segment(&args.collection)), Some(&body))
        .await?;
    if args.detach {
        println!("{}", job.id);
        return Ok(ExitCode::SUCCESS);
    }
    let done = super::jobs::follow(&client, job).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else {
        let message = done.progress.message.clone().unwrap_or_default();
        println!("index {} {}: {message}", done.id, done.state);
    }
    if done.state != "succeeded" {
        if let Some(e) = &done.error {
            eprintln!("error: {e}");
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// What an upload did, printed by `--json`.
#[derive(Debug, Default, serde::Serialize)]
struct Uploaded {
    collection: String,
    files_total: u64,
    files_indexed: u64,
    files_unchanged: u64,
    files_skipped: u64,
    chunks: u64,
    chunks_per_s: f64,
}

/// One file read as a document, as `POST /api/v1/collections/{name}/documents` takes it.
fn read_document(path: &std::path::Path) -> Result<serde_json::Value, ondevice_vector::VectorError> {
    use ondevice_vector::VectorError;
    use ondevice_vector::chunk::{self, Format};
    let id = path.display().to_string();
    let format = Format::from_path(path).ok_or_else(|| Format::unsupported(path))?;
    let meta = std::fs::metadata(path).map_err(|e| VectorError::Io { path: id.clone(), source: e })?;
    let max = ondevice_vector::job::MAX_FILE_BYTES;
    if meta.len() > max {
        return Err(VectorError::UnsupportedFormat {
            path: id,
            detail: format!("file of {} bytes is over the {} MiB limit", meta.len(), max >> 20),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| VectorError::Io { path: id.clone(), source: e })?;
    let text = chunk::decode(&id, &bytes)?;
    let mut metadata = json!({"path": id, "format": format.as_str()});
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        metadata["ext"] = json!(ext.to_ascii_lowercase());
    }
    Ok(json!({"id": id, "text": text, "source": id, "metadata": metadata, "format": format.as_str()}))
}

/// Walks and reads the files here and sends them as documents, in small batches.
async fn upload(
    client: &Client,
    resolved: &Resolved,
    args: &IndexArgs,
    paths: Vec<PathBuf>,
) -> anyhow::Result<ExitCode> {
    use ondevice_server::routes::collections::UpsertView;
    use std::io::Write as _;
    if args.detach {
        anyhow::bail!(
            "--detach needs an index job, which the daemon runs only inside [vector] index_roots: add the \
             directory there, or leave out --detach"
        );
    }
    for p in &paths {
        if p.is_file() && ondevice_vector::chunk::Format::from_path(p).is_none() {
            return Err(ondevice_vector::chunk::Format::unsupported(p).into());
        }
    }
    let (files, skipped) = {
        let paths = paths.clone();
        tokio::task::spawn_blocking(move || ondevice_vector::job::walk(&paths)).await??
    };
    let path = format!("/api/v1/collections/{}/documents", segment(&args.collection));
    // Half the daemon's body limit and at most 256 KiB of text per request, so each request's
    // embedding finishes well within the client's timeout.
    let budget = (resolved.settings.server.body_limit.bytes() / 2).min(256 << 10) as usize;
    let mut n = Uploaded {
        collection: args.collection.clone(),
        files_total: files.len() as u64,
        files_skipped: skipped,
        ..Uploaded::default()
    };
    let started = std::time::Instant::now();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut done = 0u64;
    let mut batch: Vec<serde_json::Value> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut iter = files.iter().peekable();
    while let Some(file) = iter.next() {
        match read_document(file) {
            Ok(doc) => {
                batch_bytes += doc["text"].as_str().map_or(0, str::len);
                batch.push(doc);
            }
            Err(e) => {
                tracing::info!(error = %e, "file skipped");
                n.files_skipped += 1;
            }
        }
        done += 1;
        let last = iter.peek().is_none();
        if !batch.is_empty() && (last || batch.len() >= 16 || batch_bytes >= budget) {
            let count = batch.len() as u64;
            let body = json!({ "documents": std::mem::take(&mut batch) });
            batch_bytes = 0;
            let out: UpsertView = client.call(Method::POST, &path, Some(&body)).await?;
            n.files_indexed += out.documents;
            n.files_unchanged += out.unchanged;
            n.chunks += out.chunks;
            debug_assert_eq!(out.documents + out.unchanged, count);
        }
        n.chunks_per_s = ((n.chunks as f64 / started.elapsed().as_secs_f64().max(1e-3)) * 10.0).round() / 10.0;
        if tty && !args.json {
            eprint!("\r{done}/{} files, {} chunks, {:.1} chunks/s   ", n.files_total, n.chunks, n.chunks_per_s);
            let _ = std::io::stderr().flush();
        }
    }
    if tty && !args.json {
        eprintln!();
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&n)?);
    } else {
        println!(
            "indexed {} files into {} ({} unchanged, {} skipped), {} chunks, {:.1} chunks/s",
            n.files_indexed, n.collection, n.files_unchanged, n.files_skipped, n.chunks, n.chunks_per_s
        );
    }
    Ok(ExitCode::SUCCESS)
}
