//! `ondevice search NAME "QUERY" [--top-k N] [--filter JSON] [--json]`: the closest chunks of a
//! collection to a text, with scores and sources.

use std::process::ExitCode;

use anyhow::Context;
use ondevice_config::Resolved;
use ondevice_server::routes::collections::QueryView;
use reqwest::Method;
use serde_json::json;

use super::client::Client;
use super::models::segment;

/// `ondevice search`.
#[derive(Debug, clap::Args)]
pub struct SearchArgs {
    /// The collection.
    pub collection: String,
    /// What to search for.
    pub query: String,
    /// How many hits.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Metadata filter as JSON, e.g. '{"ext": "md"}' or '{"ext": ["md", "txt"]}'.
    #[arg(long)]
    pub filter: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `ondevice search`.
pub async fn run(resolved: Resolved, args: SearchArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&resolved)?;
    let filter: Option<serde_json::Value> = match &args.filter {
        Some(f) => Some(serde_json::from_str(f).context("--filter must be a JSON object such as '{\"ext\": \"md\"}'")?),
        None => None,
    };
    let body = json!({ "query": args.query, "top_k": args.top_k, "filter": filter });
    let result: QueryView = client
        .call(Method::POST, &format!("/api/v1/collections/{}/query", segment(&args.collection)), Some(&body))
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(ExitCode::SUCCESS);
    }
    if result.hits.is_empty() {
        eprintln!("no matches in {}", args.collection);
    }
    for (i, h) in result.hits.iter().enumerate() {
        let source = h.source.as_deref().unwrap_or(&h.document_id);
        println!("{}. {:.4}  {source} (chunk {})", i + 1, h.score, h.chunk);
        let text: String = h.text.split_whitespace().collect::<Vec<_>>().join(" ");
        let snippet: String = text.chars().take(240).collect();
        let more = if text.chars().count() > 240 { "…" } else { "" };
        println!("   {snippet}{more}");
    }
    Ok(ExitCode::SUCCESS)
}
