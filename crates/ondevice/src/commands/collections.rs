//! `ondevice collections create|list|show|rm|set-model`: vector collections through the daemon's
//! API (`/api/v1/collections`).

use std::process::ExitCode;

use ondevice_config::Resolved;
use ondevice_server::routes::collections::{CollectionList, CollectionView};
use ondevice_server::routes::jobs::JobView;
use reqwest::Method;
use serde_json::json;

use super::client::Client;
use super::models::{human_size, segment};

/// `ondevice collections ...`.
#[derive(Debug, clap::Subcommand)]
pub enum CollectionsCommand {
    /// Create a collection: the embedding model is pinned by digest and its dimension measured.
    Create {
        /// 1-64 letters, digits, `_`, `.` or `-`.
        name: String,
        /// The embedding model (a registry model, or one a configured runtime serves).
        #[arg(long)]
        model: String,
        /// Where it lives: `embedded` (in ONDEVICE_HOME) or `pgvector` (needs `[vector] url`).
        #[arg(long, value_parser = ["embedded", "pgvector"])]
        backend: Option<String>,
        /// `cosine`, `dot` or `l2`.
        #[arg(long, default_value = "cosine", value_parser = ["cosine", "dot", "l2"])]
        distance: String,
        /// Chunk size in the model's tokens.
        #[arg(long, default_value_t = 256)]
        chunk_tokens: u32,
        /// Tokens shared by neighbouring chunks.
        #[arg(long, default_value_t = 32)]
        chunk_overlap: u32,
        /// Longest text sent to the model, in tokens.
        #[arg(long, default_value_t = 512)]
        max_input_tokens: u32,
        /// Longer texts are cut (`truncate`) or refused (`error`).
        #[arg(long, default_value = "truncate", value_parser = ["truncate", "error"])]
        token_policy: String,
        /// Print the collection as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List collections.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one collection: model, digest, settings, counts, index size.
    Show {
        /// Collection name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a collection with its documents and index.
    Rm {
        /// Collection name.
        name: String,
    },
    /// Move a collection to another embedding model (a background `reembed` job; queries use the
    /// current index until it finishes).
    SetModel {
        /// Collection name.
        name: String,
        /// The new embedding model.
        model: String,
        /// Return at once instead of following the job.
        #[arg(long)]
        detach: bool,
    },
}

fn print_collection(c: &CollectionView) {
    println!("name:          {}", c.name);
    println!("backend:       {}", c.backend);
    println!("model:         {}", c.model);
    println!("model digest:  {}", c.model_digest);
    println!("dimension:     {}", c.dimension);
    println!("distance:      {}", c.distance);
    println!("chunking:      {} tokens, {} overlap", c.chunk_tokens, c.chunk_overlap);
    println!("max input:     {} tokens ({})", c.max_input_tokens, c.token_policy);
    println!("hnsw:          M={} efConstruction={} ef={}", c.hnsw_m, c.hnsw_ef_construction, c.hnsw_ef_search);
    println!("documents:     {}", c.documents);
    println!("chunks:        {}", c.chunks);
    if let Some(b) = c.index_bytes {
        println!("index:         {}", human_size(b));
    }
}

/// Runs a `collections` subcommand.
pub async fn run(resolved: Resolved, cmd: CollectionsCommand) -> anyhow::Result<ExitCode> {
    let client = Client::new(&resolved)?;
    match cmd {
        CollectionsCommand::Create {
            name,
            model,
            backend,
            distance,
            chunk_tokens,
            chunk_overlap,
            max_input_tokens,
            token_policy,
            json,
        } => {
            let body = json!({
                "name": name, "model": model, "backend": backend, "distance": distance,
                "chunk_tokens": chunk_tokens, "chunk_overlap": chunk_overlap,
                "max_input_tokens": max_input_tokens, "token_policy": token_policy,
            });
            let c: CollectionView = client.call(Method::POST, "/api/v1/collections", Some(&body)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                println!(
                    "created collection {} ({} dimensions, {} at {})",
                    c.name, c.dimension, c.model, c.model_digest
                );
            }
        }
        CollectionsCommand::List { json } => {
            let list: CollectionList = client.call(Method::GET, "/api/v1/collections", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.collections.is_empty() {
                eprintln!("no collections: create one with `ondevice collections create NAME --model MODEL`");
            } else {
                println!(
                    "{:<24} {:<9} {:<28} {:>5} {:>9} {:>9} {:>10}",
                    "NAME", "BACKEND", "MODEL", "DIM", "DOCS", "CHUNKS", "INDEX"
                );
                for c in &list.collections {
                    println!(
                        "{:<24} {:<9} {:<28} {:>5} {:>9} {:>9} {:>10}",
                        c.name,
                        c.backend,
                        c.model,
                        c.dimension,
                        c.documents,
                        c.chunks,
                        c.index_bytes.map(human_size).unwrap_or_else(|| "-".into())
                    );
                }
            }
        }
        CollectionsCommand::Show { name, json } => {
            let c: CollectionView =
                client.call(Method::GET, &format!("/api/v1/collections/{}", segment(&name)), None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                print_collection(&c);
            }
        }
        CollectionsCommand::Rm { name } => {
            let c: CollectionView =
                client.call(Method::DELETE, &format!("/api/v1/collections/{}", segment(&name)), None).await?;
            println!("removed collection {} ({} documents, {} chunks)", c.name, c.documents, c.chunks);
        }
        CollectionsCommand::SetModel { name, model, detach } => {
            let body = json!({ "model": model });
            let job: JobView = client
                .call(Method::POST, &format!("/api/v1/collections/{}/model", segment(&name)), Some(&body))
                .await?;
            if detach {
                println!("{}", job.id);
                return Ok(ExitCode::SUCCESS);
            }
            let done = super::jobs::follow(&client, job).await?;
            if done.state != "succeeded" {
                eprintln!("re-embedding {}: {}", done.state, done.error.unwrap_or_default());
                return Ok(ExitCode::FAILURE);
            }
            println!("collection {name} now uses {model}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
