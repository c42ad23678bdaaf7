//! `ondevice models list | show | import | rm | verify | gc`: the registry through the daemon's API.

use std::process::ExitCode;

use anyhow::Context;
use ondevice_config::Resolved;
use ondevice_server::routes::models::{GcView, ModelView, VerifyView};
use reqwest::Method;

use super::client::Client;
use crate::cli::ModelsCommand;

/// A model name as one URL path segment (`/` and `:` and `%` escaped).
fn segment(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    if unit == "B" { format!("{bytes} B") } else { format!("{v:.1} {unit}") }
}

fn params(n: Option<u64>) -> String {
    match n {
        Some(n) if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
        Some(n) => format!("{:.0}M", n as f64 / 1e6),
        None => "-".to_owned(),
    }
}

fn print_one(m: &ModelView) {
    println!("model:          {}", m.model);
    println!("digest:         {}", m.digest);
    println!("format:         {}", m.format);
    println!("architecture:   {}", m.architecture.as_deref().unwrap_or("-"));
    println!("parameters:     {}", m.parameter_count.map_or("-".to_owned(), |n| n.to_string()));
    println!("quantization:   {}", m.quantization.as_deref().unwrap_or("-"));
    println!("context length: {}", m.context_length.map_or("-".to_owned(), |n| n.to_string()));
    println!("size:           {} ({} bytes)", human_size(m.size), m.size);
    println!("source:         {}", m.source);
    println!("license:        {}", m.license.as_deref().unwrap_or("-"));
}

pub async fn run(resolved: Resolved, cmd: ModelsCommand) -> anyhow::Result<ExitCode> {
    let client = Client::new(&resolved)?;
    match cmd {
        ModelsCommand::List(flag) => {
            let models: Vec<ModelView> = client.call(Method::GET, "/api/v1/models", None).await?;
            if flag.json {
                println!("{}", serde_json::to_string_pretty(&models)?);
            } else {
                println!("{:<36} {:<20} {:>10} {:<8} {:>7}", "NAME", "DIGEST", "SIZE", "QUANT", "PARAMS");
                for m in models {
                    println!(
                        "{:<36} {:<20} {:>10} {:<8} {:>7}",
                        m.model,
                        m.digest.get(..19).unwrap_or(&m.digest),
                        human_size(m.size),
                        m.quantization.as_deref().unwrap_or("-"),
                        params(m.parameter_count)
                    );
                }
            }
        }
        ModelsCommand::Show { name, json } => {
            let m: ModelView = client.call(Method::GET, &format!("/api/v1/models/{}", segment(&name)), None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                print_one(&m);
            }
        }
        ModelsCommand::Import { path, name, json } => {
            let path = std::path::absolute(&path).with_context(|| format!("invalid path {}", path.display()))?;
            let body = serde_json::json!({"path": path, "name": name});
            let m: ModelView = client.call(Method::POST, "/api/v1/models/import", Some(&body)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                println!("imported {} ({}, {})", m.model, m.digest, human_size(m.size));
            }
        }
        ModelsCommand::Rm { name } => {
            let removed: Vec<ModelView> =
                client.call(Method::DELETE, &format!("/api/v1/models/{}", segment(&name)), None).await?;
            for m in removed {
                println!("removed {}", m.model);
            }
        }
        ModelsCommand::Verify { name, json } => {
            let body = serde_json::json!({"name": name});
            let reports: Vec<VerifyView> = client.call(Method::POST, "/api/v1/models/verify", Some(&body)).await?;
            let bad = reports.iter().filter(|r| r.status != "ok").count();
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                for r in &reports {
                    let detail = r.detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default();
                    println!("{:<36} {}{}", r.model, r.status, detail);
                }
            }
            if bad > 0 {
                eprintln!("{bad} model(s) failed verification: remove and import them again");
                return Ok(ExitCode::FAILURE);
            }
        }
        ModelsCommand::Gc(flag) => {
            let report: GcView = client.call(Method::POST, "/api/v1/models/gc", None).await?;
            if flag.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "removed {} blob(s) and {} partial file(s), freed {}",
                    report.removed_blobs.len(),
                    report.removed_partials.len(),
                    human_size(report.freed_bytes)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
