//! `ondevice models list | show | pull | import | export | rm | pin | unpin | verify | gc`: the registry through
//! the daemon's API. `pull` follows the job's Server-Sent Events and draws a progress bar on a
//! terminal (plain progress lines otherwise).

use std::process::ExitCode;

use anyhow::Context;
use ondevice_config::Resolved;
use ondevice_server::routes::jobs::{CatalogResponse, JobDetail, JobView};

use super::jobs::{follow, subject};
use ondevice_server::routes::models::{GcView, ModelView, VerifyView};
use reqwest::Method;

use super::client::Client;
use crate::cli::ModelsCommand;

/// A model name as one URL path segment (`/` and `:` and `%` escaped).
pub(crate) fn segment(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(crate) fn human_size(bytes: u64) -> String {
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
    println!("pinned:         {}", if m.pinned { "yes" } else { "no" });
    println!("last used:      {}", m.last_used_at.map_or("never".to_owned(), |t| format!("{t} (unix seconds)")));
    if let Some(p) = &m.provenance {
        print_provenance(p);
    }
}

/// The provenance block of `models show`: the parent, the receipt's digests, versions, parameters.
fn print_provenance(p: &ondevice_server::routes::models::ProvenanceView) {
    let r = &p.receipt;
    let text = |k: &str| r.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    println!("provenance:");
    if let Some(parent) = &p.parent {
        println!("  parent:       {parent} ({})", p.parent_digest.as_deref().unwrap_or("-"));
    }
    if let Some(s) = text("source_sha256") {
        let n = r.get("inputs").and_then(|v| v.as_array()).map_or(0, Vec::len);
        println!("  source:       sha256:{s} ({n} file(s))");
    }
    if let Some(inputs) = r.get("inputs").and_then(|v| v.as_array()) {
        for i in inputs {
            let field = |k: &str| i.get(k).and_then(|v| v.as_str()).unwrap_or("-");
            println!("    {}  sha256:{}", field("name"), field("sha256"));
        }
    }
    println!("  tool:         {}", text("tool").unwrap_or_else(|| "-".into()));
    if let Some(v) = text("llama_cpp") {
        println!("  llama.cpp:    {v}");
    }
    if let Some(params) = r.get("params").and_then(|v| v.as_object()) {
        let shown: Vec<String> = params
            .iter()
            .filter(|(_, v)| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
            .map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
            .collect();
        println!("  parameters:   {}", shown.join(" "));
    }
    if let Some(m) = text("imatrix_sha256") {
        println!("  imatrix:      sha256:{m}");
    }
    if let Some(o) = text("output_sha256") {
        println!("  output:       sha256:{o}");
    }
    if let Some(q) = r.get("quality").filter(|q| !q.is_null()) {
        println!("  quality:      {q}");
    }
}

pub async fn run(resolved: Resolved, cmd: ModelsCommand) -> anyhow::Result<ExitCode> {
    let client = Client::new(&resolved)?;
    match cmd {
        ModelsCommand::List(args) if args.available => {
            let catalog: CatalogResponse = client.call(Method::GET, "/api/v1/catalog", None).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&catalog)?);
            } else {
                println!("{:<36} {:>10} {:<14} {:<8} DESCRIPTION", "NAME", "SIZE", "LICENSE", "PRESENT");
                for m in &catalog.models {
                    println!(
                        "{:<36} {:>10} {:<14} {:<8} {}",
                        m.model,
                        human_size(m.size),
                        m.license.as_deref().unwrap_or("-"),
                        if m.present { "yes" } else { "no" },
                        m.description.as_deref().unwrap_or("")
                    );
                }
            }
            for p in &catalog.problems {
                eprintln!("warning: {p}");
            }
        }
        ModelsCommand::List(args) => {
            let models: Vec<ModelView> = client.call(Method::GET, "/api/v1/models", None).await?;
            if args.json {
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
        ModelsCommand::Pull { model, name, json, detach } => {
            let body = serde_json::json!({"model": model, "name": name});
            let job: JobView = client.call(Method::POST, "/api/v1/models/pull", Some(&body)).await?;
            if detach {
                if json {
                    println!("{}", serde_json::to_string_pretty(&job)?);
                } else {
                    println!(
                        "pulling {} as job {} (follow it with `ondevice jobs watch {}`)",
                        subject(&job),
                        job.id,
                        job.id
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            let done = follow(&client, job).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&done)?);
            }
            match done.state.as_str() {
                "succeeded" => {
                    if let (false, JobDetail::Pull(p)) = (json, &done.detail) {
                        let size = p.total_bytes.map(human_size).unwrap_or_default();
                        println!("pulled {} ({}, {size})", p.model, p.digest.as_deref().unwrap_or("-"));
                    }
                }
                state => {
                    eprintln!("pull of {} {state}: {}", subject(&done), done.error.as_deref().unwrap_or("no detail"));
                    return Ok(ExitCode::FAILURE);
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
        ModelsCommand::Import { path, name, link, json } => {
            let path = std::path::absolute(&path).with_context(|| format!("invalid path {}", path.display()))?;
            let body = serde_json::json!({"path": path, "name": name, "link": link});
            let m: ModelView = client.call(Method::POST, "/api/v1/models/import", Some(&body)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                println!("imported {} ({}, {})", m.model, m.digest, human_size(m.size));
            }
        }
        ModelsCommand::Export { name, output } => {
            let mut resp = client.get_stream(&format!("/api/v1/models/{}/export", segment(&name))).await?;
            let tmp = output.with_extension("partial");
            let mut file = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
            let mut written = 0u64;
            let copied: anyhow::Result<()> = async {
                while let Some(chunk) = resp.chunk().await.context("export interrupted")? {
                    std::io::Write::write_all(&mut file, &chunk)
                        .with_context(|| format!("cannot write {}", tmp.display()))?;
                    written += chunk.len() as u64;
                }
                file.sync_all()?;
                Ok(())
            }
            .await;
            if let Err(e) = copied {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            std::fs::rename(&tmp, &output).with_context(|| format!("cannot write {}", output.display()))?;
            println!("exported {name} to {} ({})", output.display(), human_size(written));
        }
        ModelsCommand::Pin { name, json } => set_pinned(&client, &name, true, json).await?,
        ModelsCommand::Unpin { name, json } => set_pinned(&client, &name, false, json).await?,
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
                    let file = r.file.as_deref().map(|f| format!(" {f}")).unwrap_or_default();
                    println!("{:<36} {}{file}{detail}", r.model, r.status);
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

/// `models pin|unpin NAME`.
async fn set_pinned(client: &Client, name: &str, pinned: bool, json: bool) -> anyhow::Result<()> {
    let body = serde_json::json!({"pinned": pinned});
    let changed: Vec<ModelView> =
        client.call(Method::PUT, &format!("/api/v1/models/{}/pin", segment(name)), Some(&body)).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&changed)?);
    } else {
        for m in changed {
            println!("{} {}", if pinned { "pinned" } else { "unpinned" }, m.model);
        }
    }
    Ok(())
}

/// The daemon's job queue (`[jobs]`) with its kinds, and the pulls that run in it (`[registry]`:
/// the host policy, credentials resolved from their secret references — a missing secret is an
/// error at start, naming the host — the catalogs, quota and tuning). Unfinished jobs resume now.
pub(crate) async fn start_jobs(
    settings: &ondevice_config::Settings,
    registry: std::sync::Arc<ondevice_registry::Registry>,
    shutdown: tokio_util::sync::CancellationToken,
    more_kinds: impl FnOnce(ondevice_jobs::JobsBuilder) -> ondevice_jobs::JobsBuilder,
) -> anyhow::Result<(ondevice_jobs::Jobs, ondevice_registry::jobs::Pulls)> {
    use ondevice_registry::catalog::CatalogSource;
    use ondevice_registry::download::Tuning;
    use ondevice_registry::fetch::{Credential, Fetcher};
    use ondevice_registry::jobs::{PullConfig, PullKind, Pulls};
    use ondevice_registry::quota::QuotaPolicy;
    use ondevice_registry::safety::HostPolicy;

    let r = &settings.registry;
    let mut credentials = Vec::new();
    for (host, c) in &r.credentials {
        let secret = c.token.resolve().with_context(|| format!("[registry.credentials.{host:?}] token"))?;
        let cred = Credential::bearer(host, secret.expose())
            .with_context(|| format!("[registry.credentials.{host:?}] token is not a valid header value"))?;
        credentials.push(cred);
    }
    let fetcher = Fetcher::new(HostPolicy::new(&r.allow_hosts), credentials)?;
    let catalogs = r.catalogs.iter().map(|c| CatalogSource::parse(c)).collect::<Result<Vec<_>, _>>()?;
    let config = PullConfig {
        tuning: Tuning {
            connections: r.connections as usize,
            chunk_size: r.chunk_size.bytes(),
            retries: r.retries,
            max_size: r.max_download_size.bytes(),
            ..Tuning::default()
        },
        quota: QuotaPolicy { quota: r.quota.map(|q| q.bytes()), evict: r.evict, min_free: r.min_free.bytes() },
        catalogs,
    };
    let j = &settings.jobs;
    let jobs_config = ondevice_jobs::JobsConfig {
        downloads: r.max_concurrent_jobs as usize,
        cpu_heavy: j.cpu_heavy as usize,
        io: j.io as usize,
        keep_finished_for: std::time::Duration::from_secs(u64::from(j.keep_finished_days) * 86400),
        keep_finished: j.keep_finished as usize,
    };
    let store = registry.store().clone();
    let pull = PullKind::new(registry, fetcher, config);
    let jobs = more_kinds(ondevice_jobs::Jobs::builder(store, jobs_config).kind(pull.clone())).start(shutdown).await?;
    Ok((jobs.clone(), Pulls::new(pull, jobs)))
}
