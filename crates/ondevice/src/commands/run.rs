//! `ondevice run MODEL [PROMPT]`: streams a model's answer to stdout token by token through the
//! daemon's OpenAI-compatible SSE endpoint. Without PROMPT it reads the prompt from stdin when
//! stdin is not a terminal, and otherwise opens an interactive chat (history kept; `/bye` or
//! Ctrl-D exits; Ctrl-C cancels the answer being written).
//!
//! `--collection C [--top-k N]` asks the daemon to retrieve context for each question (the
//! `collection` extension of `/v1/chat/completions`) and prints the retrieved sources after the
//! answer, marking the ones it cites. `--prompt NAME[@REQ] --var k=v` renders a published prompt
//! pack server-side (the `prompt_pack` extension): its messages come before the conversation;
//! without PROMPT the pack alone is sent once (`--interactive` chats instead).

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ondevice_config::Resolved;
use serde_json::{Value, json};

use super::client::Client;
use crate::cli::RunArgs;

/// One finished answer.
struct Answer {
    text: String,
    finish_reason: String,
    adapter: String,
    model: String,
    usage: Option<Value>,
    first_token: Option<Duration>,
    total: Duration,
    /// Retrieved sources (with --collection).
    sources: Option<Vec<Value>>,
}

impl Answer {
    fn completion_tokens(&self) -> Option<u64> {
        self.usage.as_ref().and_then(|u| u["completion_tokens"].as_u64())
    }

    /// Generated tokens per second after the first token.
    fn tokens_per_second(&self) -> Option<f64> {
        let n = self.completion_tokens()?;
        let span = self.total.checked_sub(self.first_token?)?.as_secs_f64();
        (n > 1 && span > 0.0).then(|| (n - 1) as f64 / span)
    }

    fn json(&self) -> Value {
        json!({
            "model": self.model,
            "adapter": self.adapter,
            "response": self.text,
            "finish_reason": self.finish_reason,
            "usage": self.usage,
            "timings": {
                "time_to_first_token_ms": self.first_token.map(|d| d.as_millis() as u64),
                "total_ms": self.total.as_millis() as u64,
                "tokens_per_second": self.tokens_per_second(),
            },
            "sources": self.sources,
        })
    }

    /// Prints the retrieved sources, marking those the answer cites as `[n]`.
    fn print_sources(&self) {
        let Some(sources) = &self.sources else { return };
        if sources.is_empty() {
            println!("\n(no sources found in the collection)");
            return;
        }
        println!("\nSources:");
        for s in sources {
            let id = s["id"].as_u64().unwrap_or_default();
            let cited = if self.text.contains(&format!("[{id}]")) { " (cited)" } else { "" };
            let place = s["source"].as_str().or_else(|| s["document"].as_str()).unwrap_or("?");
            let score = s["score"].as_f64().unwrap_or_default();
            println!("  [{id}] {place} #{} (score {score:.3}){cited}", s["chunk"].as_u64().unwrap_or_default());
        }
    }

    fn print_stats(&self) {
        let ms = |d: Option<Duration>| d.map_or_else(|| "-".to_owned(), |d| format!("{} ms", d.as_millis()));
        let usage = |k: &str| self.usage.as_ref().and_then(|u| u[k].as_u64()).map_or("-".to_owned(), |n| n.to_string());
        eprintln!("model:               {} (runtime {})", self.model, self.adapter);
        eprintln!("time to first token: {}", ms(self.first_token));
        eprintln!("prompt tokens:       {}", usage("prompt_tokens"));
        eprintln!("generated tokens:    {}", usage("completion_tokens"));
        match self.tokens_per_second() {
            Some(r) => eprintln!("generation rate:     {r:.1} tokens/s"),
            None => eprintln!("generation rate:     -"),
        }
        eprintln!("total time:          {} ms", self.total.as_millis());
        eprintln!("finish reason:       {}", self.finish_reason);
    }
}

/// Runs `ondevice run`.
pub async fn run(resolved: Resolved, args: RunArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&resolved)?;
    let mut system = Vec::new();
    if let Some(s) = &args.system {
        system.push(json!({"role": "system", "content": s}));
    }
    let prompt = match &args.prompt {
        Some(p) => p.clone(),
        // A prompt pack alone is the whole request.
        None if args.pack.is_some() && !args.interactive => String::new(),
        None if std::io::stdin().is_terminal() || args.interactive => {
            if args.json {
                bail!("--json needs a PROMPT argument or a prompt on stdin");
            }
            return interactive(&client, &args, system).await;
        }
        None => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("cannot read the prompt from stdin")?;
            s
        }
    };
    if prompt.trim().is_empty() && args.pack.is_none() {
        bail!("the prompt is empty: pass PROMPT or pipe it on stdin");
    }
    let mut messages = system;
    if !prompt.trim().is_empty() {
        messages.push(json!({"role": "user", "content": prompt}));
    }
    let echo = !args.json;
    let answer = stream(&client, &args, &messages, echo, None).await?.context("the answer was cancelled")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer.json())?);
    } else {
        if !answer.text.ends_with('\n') {
            println!();
        }
        answer.print_sources();
    }
    if args.verbose {
        answer.print_stats();
    }
    Ok(ExitCode::SUCCESS)
}

/// The interactive chat on a terminal.
async fn interactive(client: &Client, args: &RunArgs, mut history: Vec<Value>) -> anyhow::Result<ExitCode> {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    eprintln!(
        "Chatting with {} (/bye or Ctrl-D to exit, /clear to forget the conversation, Ctrl-C stops an answer)",
        args.model
    );
    let keep = history.len();
    loop {
        print!(">>> ");
        std::io::stdout().flush()?;
        let line = tokio::select! {
            line = lines.next_line() => line.context("cannot read stdin")?,
            _ = tokio::signal::ctrl_c() => {
                println!();
                eprintln!("(use /bye or Ctrl-D to exit)");
                continue;
            }
        };
        let Some(line) = line else {
            println!();
            return Ok(ExitCode::SUCCESS);
        };
        let input = line.trim();
        match input {
            "" => continue,
            "/bye" | "/exit" | "/quit" => return Ok(ExitCode::SUCCESS),
            "/clear" => {
                history.truncate(keep);
                eprintln!("(conversation cleared)");
                continue;
            }
            "/?" | "/help" => {
                eprintln!("/bye exits, /clear forgets the conversation; Ctrl-C stops an answer");
                continue;
            }
            _ => {}
        }
        history.push(json!({"role": "user", "content": input}));
        let cancel = tokio::signal::ctrl_c();
        match stream(client, args, &history, true, Some(Box::pin(cancel))).await {
            Ok(Some(answer)) => {
                if !answer.text.ends_with('\n') {
                    println!();
                }
                answer.print_sources();
                if args.verbose {
                    answer.print_stats();
                }
                history.push(json!({"role": "assistant", "content": answer.text}));
            }
            Ok(None) => {
                println!();
                eprintln!("(answer cancelled)");
                history.pop();
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                history.pop();
            }
        }
    }
}

type Cancel = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>>;

/// Streams one answer, printing tokens when `echo`; `Ok(None)` when `cancel` fired first.
async fn stream(
    client: &Client,
    args: &RunArgs,
    messages: &[Value],
    echo: bool,
    cancel: Option<Cancel>,
) -> anyhow::Result<Option<Answer>> {
    let mut body = json!({
        "model": args.model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(t) = args.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(s) = args.seed {
        body["seed"] = json!(s);
    }
    if let Some(n) = args.max_tokens {
        body["max_tokens"] = json!(n);
    }
    if let Some(c) = &args.collection {
        body["collection"] = json!({"name": c});
        if let Some(k) = args.top_k {
            body["collection"]["top_k"] = json!(k);
        }
    }
    if let Some(p) = &args.pack {
        body["prompt_pack"] = json!({"name": p, "variables": super::prompts::parse_vars(&args.vars)?});
    }
    let start = Instant::now();
    let mut cancel = cancel.unwrap_or_else(|| Box::pin(std::future::pending()));
    let resp = tokio::select! {
        r = client.post_stream("/v1/chat/completions", &body) => r?,
        _ = &mut cancel => return Ok(None),
    };
    let adapter = resp
        .headers()
        .get(ondevice_server::ADAPTER_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut answer = Answer {
        text: String::new(),
        finish_reason: String::new(),
        adapter,
        model: args.model.clone(),
        usage: None,
        first_token: None,
        total: Duration::ZERO,
        sources: None,
    };
    let mut resp = resp;
    let mut buf: Vec<u8> = Vec::new();
    let mut stdout = std::io::stdout();
    loop {
        let chunk = tokio::select! {
            c = resp.chunk() => c.context("the daemon closed the stream")?,
            _ = &mut cancel => return Ok(None),
        };
        let Some(chunk) = chunk else { bail!("the stream ended before the answer was complete") };
        buf.extend_from_slice(&chunk);
        while let Some(end) = find(&buf, b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let event = String::from_utf8_lossy(&event);
            for data in event.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim) {
                if data == "[DONE]" {
                    answer.total = start.elapsed();
                    return Ok(Some(answer));
                }
                let v: Value = serde_json::from_str(data).context("unexpected event from the daemon")?;
                if let Some(msg) = v.pointer("/error/message").and_then(Value::as_str) {
                    bail!("{msg}");
                }
                if let Some(m) = v["model"].as_str() {
                    answer.model = m.to_owned();
                }
                if !v["usage"].is_null() {
                    answer.usage = Some(v["usage"].clone());
                }
                if let Some(sources) = v["sources"].as_array() {
                    answer.sources = Some(sources.clone());
                }
                let choice = &v["choices"][0];
                if let Some(text) = choice["delta"]["content"].as_str().filter(|t| !t.is_empty()) {
                    answer.first_token.get_or_insert_with(|| start.elapsed());
                    answer.text.push_str(text);
                    if echo {
                        stdout.write_all(text.as_bytes())?;
                        stdout.flush()?;
                    }
                }
                if let Some(f) = choice["finish_reason"].as_str() {
                    answer.finish_reason = f.to_owned();
                }
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
