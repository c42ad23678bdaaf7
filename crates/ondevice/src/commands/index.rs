//! `ondevice index PATH... --collection NAME`: an `index` job in the daemon over files and
//! directories on this machine, with progress (files, chunks, chunks/s) until it finishes.
//! Unchanged files are skipped; Ctrl-C leaves the job running (`ondevice jobs cancel ID` stops it).

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
    let mut paths = Vec::new();
    for p in &args.paths {
        // The daemon reads the files: send absolute paths.
        let abs = std::fs::canonicalize(p).with_context(|| format!("cannot index {}", p.display()))?;
        paths.push(abs.display().to_string());
    }
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
