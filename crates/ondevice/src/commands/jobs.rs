//! `ondevice jobs list|show|watch|cancel`: background jobs of every kind through the daemon's
//! API, and the progress display every long-running command (pull, quantize, index) shares.

use std::process::ExitCode;

use ondevice_config::Resolved;
use ondevice_server::routes::jobs::{JobDetail, JobView};
use reqwest::Method;

use super::client::Client;
use super::models::{human_size, segment};
use crate::cli::JobsCommand;

/// Runs a `jobs` subcommand.
pub async fn run(resolved: Resolved, cmd: JobsCommand) -> anyhow::Result<ExitCode> {
    let client = Client::new(&resolved)?;
    match cmd {
        JobsCommand::List { kind, state, json } => {
            let mut query = Vec::new();
            if let Some(k) = &kind {
                query.push(format!("kind={}", segment(k)));
            }
            if let Some(s) = &state {
                query.push(format!("state={}", segment(s)));
            }
            let path =
                if query.is_empty() { "/api/v1/jobs".to_owned() } else { format!("/api/v1/jobs?{}", query.join("&")) };
            let jobs: Vec<JobView> = client.call(Method::GET, &path, None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else if jobs.is_empty() {
                eprintln!("no jobs");
            } else {
                println!("{:<16} {:<9} {:<9} {:>20} SUBJECT", "ID", "KIND", "STATE", "PROGRESS");
                for j in &jobs {
                    println!("{:<16} {:<9} {:<9} {:>20} {}", j.id, j.kind, j.state, progress_text(j), subject(j));
                }
            }
        }
        JobsCommand::Show { id, json } => {
            let j: JobView = client.call(Method::GET, &format!("/api/v1/jobs/{}", segment(&id)), None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&j)?);
            } else {
                print_job(&j);
            }
        }
        JobsCommand::Watch { id, json } => {
            let j: JobView = client.call(Method::GET, &format!("/api/v1/jobs/{}", segment(&id)), None).await?;
            let done = follow(&client, j).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&done)?);
            } else {
                print_job(&done);
            }
            if done.state != "succeeded" {
                return Ok(ExitCode::FAILURE);
            }
        }
        JobsCommand::Cancel { id, json } => {
            let j: JobView = client.call(Method::DELETE, &format!("/api/v1/jobs/{}", segment(&id)), None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&j)?);
            } else {
                println!("job {} {}", j.id, j.state);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_job(j: &JobView) {
    println!("id:        {}", j.id);
    println!("kind:      {}", j.kind);
    println!("state:     {}", j.state);
    println!("progress:  {}", progress_text(j));
    if let Some(m) = &j.progress.message {
        println!("message:   {m}");
    }
    if let Some(e) = &j.error {
        println!("error:     {e}");
    }
    match &j.detail {
        JobDetail::Pull(p) => {
            println!("model:     {}", p.model);
            println!("source:    {}", p.source);
            if let Some(d) = &p.digest {
                println!("digest:    {d}");
            }
        }
        JobDetail::Other(map) => {
            for (k, v) in map {
                println!("{:<10} {}", format!("{k}:"), v);
            }
        }
    }
    println!("created:   {}", j.created_at);
    if let Some(f) = j.finished_at {
        println!("finished:  {f}");
    }
}

/// What the job is about, in one word or name.
pub(crate) fn subject(j: &JobView) -> String {
    match &j.detail {
        JobDetail::Pull(p) => p.model.clone(),
        JobDetail::Other(map) => ["model", "name", "collection", "output"]
            .iter()
            .find_map(|k| map.get(*k)?.as_str().map(str::to_owned))
            .unwrap_or_default(),
    }
}

fn amount(n: u64, unit: &str) -> String {
    if unit == "bytes" { human_size(n) } else { n.to_string() }
}

/// `12.5 MiB/98.0 MiB` or `3/30 tensors`.
fn progress_text(j: &JobView) -> String {
    let p = &j.progress;
    let total = p.total.map_or_else(|| "?".to_owned(), |t| amount(t, &p.unit));
    let unit = if p.unit == "bytes" || p.unit.is_empty() { String::new() } else { format!(" {}", p.unit) };
    format!("{}/{total}{unit}", amount(p.done, &p.unit))
}

/// Follows a job's events until it finishes, drawing progress on stderr (a bar on a terminal,
/// plain lines otherwise); reconnects if the stream breaks (a restarting daemon resumes the job).
pub(crate) async fn follow(client: &Client, mut job: JobView) -> anyhow::Result<JobView> {
    let mut bar = Bar::new();
    let mut failures = 0;
    bar.draw(&job);
    while !matches!(job.state.as_str(), "succeeded" | "failed" | "cancelled") {
        let resp = match client.get_stream(&format!("/api/v1/jobs/{}/events", segment(&job.id))).await {
            Ok(r) => r,
            Err(e) if failures < 30 => {
                failures += 1;
                tracing::debug!(error = %e, "event stream unavailable, retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut resp = resp;
        let mut buf = String::new();
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) | Err(_) => break,
            };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                for line in event.lines() {
                    if let Some(data) = line.strip_prefix("data:") {
                        if let Ok(j) = serde_json::from_str::<JobView>(data.trim()) {
                            failures = 0;
                            bar.draw(&j);
                            job = j;
                        }
                    }
                }
            }
        }
    }
    bar.finish();
    Ok(job)
}

/// A progress bar on a terminal, plain lines otherwise (at most one every two seconds).
struct Bar {
    tty: bool,
    last_line: Option<std::time::Instant>,
    drawn: bool,
}

impl Bar {
    fn new() -> Bar {
        use std::io::IsTerminal;
        Bar { tty: std::io::stderr().is_terminal(), last_line: None, drawn: false }
    }

    fn draw(&mut self, j: &JobView) {
        use std::io::Write;
        let p = &j.progress;
        let total = p.total.unwrap_or(0);
        let pct = if total > 0 { (p.done as f64 / total as f64 * 100.0).min(100.0) } else { 0.0 };
        let rate = match &j.detail {
            JobDetail::Pull(d) => Some(d.bytes_per_second),
            JobDetail::Other(_) => None,
        };
        let speed = rate.map(|s| format!(" {}/s", human_size(s))).unwrap_or_default();
        let eta = match (total, rate) {
            (t, Some(s)) if t > p.done && s > 0 => format!(" eta {}s", (t - p.done) / s),
            _ => String::new(),
        };
        let sizes = progress_text(j);
        let what = subject(j);
        let what = if what.is_empty() { j.kind.clone() } else { what };
        let message = p.message.as_deref().map(|m| format!(" {m}")).unwrap_or_default();
        let mut err = std::io::stderr().lock();
        if self.tty {
            let width = 30;
            let filled = (pct / 100.0 * width as f64) as usize;
            let bar = format!("{}{}", "#".repeat(filled), "-".repeat(width - filled));
            let _ = write!(err, "\r\x1b[2K{what} {} [{bar}] {pct:5.1}% {sizes}{speed}{eta}{message}", j.state);
            let _ = err.flush();
            self.drawn = true;
        } else {
            let terminal = matches!(j.state.as_str(), "succeeded" | "failed" | "cancelled");
            if terminal || self.last_line.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(2)) {
                let _ = writeln!(err, "{what} {} {pct:.1}% {sizes}{speed}{message}", j.state);
                self.last_line = Some(std::time::Instant::now());
            }
        }
    }

    fn finish(&self) {
        if self.drawn {
            eprintln!();
        }
    }
}
