//! `ondevice ps [--json]`: the models loaded right now, like `ollama ps`: which runtime holds
//! each (and its adapter kind), the memory it is accounted for, and until when keep-alive keeps
//! it. Reads `GET /api/v1/runtimes` (read scope).

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use ondevice_config::Resolved;
use ondevice_registry::quota::human;
use ondevice_server::routes::runtimes::RuntimesView;
use reqwest::Method;
use serde::Serialize;

use super::client::Client;
use crate::cli::JsonFlag;

/// One loaded model, as `ps --json` prints it.
#[derive(Debug, Serialize)]
struct Running {
    /// `name:tag`.
    model: String,
    /// The runtime instance holding it (`x-ondevice-adapter`).
    runtime: String,
    /// The runtime's adapter kind: `embedded`, `llama-server`, `openai`, `ollama` or `rest`.
    adapter: Option<String>,
    /// Bytes accounted for in the memory budget.
    size: u64,
    /// Unix seconds of the last request.
    last_used: i64,
    /// Unix seconds when keep-alive unloads it; null: kept until stopped.
    expires_at: Option<i64>,
}

pub async fn run(resolved: Resolved, flag: JsonFlag) -> anyhow::Result<ExitCode> {
    let client = Client::new(&resolved)?;
    let view: RuntimesView = client.call(Method::GET, "/api/v1/runtimes", None).await?;
    let running: Vec<Running> = view
        .loaded
        .into_iter()
        .map(|l| Running {
            adapter: view.runtimes.iter().find(|r| r.name == l.runtime).map(|r| r.kind.clone()),
            model: l.model,
            runtime: l.runtime,
            size: l.size,
            last_used: l.last_used,
            expires_at: l.expires_at,
        })
        .collect();
    if flag.json {
        println!("{}", serde_json::to_string_pretty(&running)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    println!("{:<36} {:<20} {:<13} {:>10} UNTIL", "NAME", "RUNTIME", "ADAPTER", "SIZE");
    for r in &running {
        println!(
            "{:<36} {:<20} {:<13} {:>10} {}",
            r.model,
            r.runtime,
            r.adapter.as_deref().unwrap_or("-"),
            if r.size == 0 { "-".to_owned() } else { human(r.size) },
            until(r.expires_at, now)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// When keep-alive unloads a model, relative to `now`: `4 minutes from now`, `forever`.
fn until(expires_at: Option<i64>, now: i64) -> String {
    let Some(at) = expires_at else { return "forever".to_owned() };
    let left = at - now;
    let (n, unit) = match left {
        ..=0 => return "stopping...".to_owned(),
        1..=59 => (left, "second"),
        60..=3599 => (left / 60, "minute"),
        3600..=86_399 => (left / 3600, "hour"),
        _ => (left / 86_400, "day"),
    };
    format!("{n} {unit}{} from now", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::until;

    #[test]
    fn until_reads_like_ollama_ps() {
        assert_eq!(until(None, 100), "forever");
        assert_eq!(until(Some(100), 100), "stopping...");
        assert_eq!(until(Some(101), 100), "1 second from now");
        assert_eq!(until(Some(100 + 299), 100), "4 minutes from now");
        assert_eq!(until(Some(100 + 3600), 100), "1 hour from now");
        assert_eq!(until(Some(100 + 3 * 86_400), 100), "3 days from now");
    }
}
