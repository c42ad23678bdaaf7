//! `ondevice prompts new | list | show | publish | diff | rollback | render | export | import |
//! test | rm | keygen`: versioned prompt packs. `new` and `keygen` work locally; `render` and
//! `test` of a pack directory (not yet published) run locally with the same sandbox; everything
//! else goes through the daemon's `/api/v1/prompts` API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use ondevice_config::Resolved;
use ondevice_prompts::archive::{self, SigningKey, VerifyingKey};
use ondevice_prompts::pack::{Pack, scaffold};
use ondevice_prompts::render::run_tests;
use ondevice_prompts::sandbox::Sandbox;
use ondevice_server::routes::prompts::{
    DiffView, PromptDetailView, PromptPackView, PromptRenderView, PublishView, RollbackView, TestView,
};
use reqwest::Method;

use super::client::Client;
use super::models::segment;

/// `ondevice prompts ...`.
#[derive(Debug, Subcommand)]
pub enum PromptsCommand {
    /// Create a new pack directory DIR named NAME (pack.toml, a template, a test).
    New {
        /// Pack name: lowercase letters, digits, '.', '_', '-'.
        name: String,
        /// Directory to create (must not exist or be empty).
        dir: PathBuf,
    },
    /// List published packs: current version, labels, versions.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one version: manifest, templates, labels and history.
    Show {
        /// `NAME`, `NAME@1.2.0`, `NAME@^1.2` or `NAME@label`.
        reference: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lint, test and publish a pack directory (needs the models scope). The version in pack.toml
    /// must be new; `latest` and the labels (default: pack.toml's, else `production`) move to it.
    Publish {
        /// The pack directory.
        dir: PathBuf,
        /// Move this label to the new version (repeatable; default: `production`).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Unified diff between two versions.
    Diff {
        /// From: `NAME@V1`.
        from: String,
        /// To: `NAME@V2`.
        to: String,
    },
    /// Make VERSION the one served when a request names no version (moves `production`).
    Rollback {
        /// Pack name.
        name: String,
        /// Version to serve.
        version: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Render a pack to messages; with --budget, compress it to fit (counted with --model's
    /// tokenizer, else estimated at four characters a token).
    Render {
        /// `NAME[@VERSION|@^REQ|@label]`, or a pack directory (rendered locally).
        reference: String,
        /// A variable: `k=v` (text), `k=@FILE` (the file's text) or `k:=JSON` (a JSON value).
        #[arg(long = "var", value_name = "K=V")]
        vars: Vec<String>,
        /// Count tokens with this model's tokenizer.
        #[arg(long)]
        model: Option<String>,
        /// Most prompt tokens.
        #[arg(long)]
        budget: Option<usize>,
        /// Embedding model for extractive compression.
        #[arg(long)]
        embedding_model: Option<String>,
        /// Print JSON: {"messages": [{"role", "content"}], "version", "tokens", ...}.
        #[arg(long)]
        json: bool,
    },
    /// Write one version as an archive file, optionally signed with an ed25519 key.
    Export {
        /// `NAME[@VERSION|@label]`.
        reference: String,
        /// The archive file to write.
        #[arg(long, short)]
        output: PathBuf,
        /// Sign with this secret key file (see `ondevice prompts keygen`).
        #[arg(long)]
        sign_key: Option<PathBuf>,
    },
    /// Import an archive (needs the models scope); a signature in it must verify.
    Import {
        /// The archive file.
        file: PathBuf,
        /// Accept only archives signed by this public key (hex, or a file holding it); repeatable.
        #[arg(long = "trust", value_name = "KEY")]
        trusted: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a pack's tests (tests/*.toml): a published version, or a pack directory with its lint.
    Test {
        /// `NAME[@...]` or a pack directory.
        reference: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete one published version (needs the models scope).
    Rm {
        /// `NAME@VERSION`.
        reference: String,
    },
    /// Create an ed25519 key pair for signing archives: the secret goes to FILE (mode 0600), the
    /// public key is printed (give it to importers as `--trust`).
    Keygen {
        /// Secret key file to create.
        file: PathBuf,
    },
}

/// `k=v`, `k=@FILE`, `k:=JSON`.
pub(crate) fn parse_vars(vars: &[String]) -> anyhow::Result<BTreeMap<String, serde_json::Value>> {
    let mut out = BTreeMap::new();
    for v in vars {
        if let Some((k, json)) = v.split_once(":=").filter(|(k, _)| !k.contains('=')) {
            let value = serde_json::from_str(json).with_context(|| format!("--var {k}:=...: not valid JSON"))?;
            out.insert(k.to_owned(), value);
        } else if let Some((k, val)) = v.split_once('=') {
            let text = match val.strip_prefix('@') {
                Some(path) => {
                    std::fs::read_to_string(path).with_context(|| format!("--var {k}=@{path}: cannot read"))?
                }
                None => val.to_owned(),
            };
            out.insert(k.to_owned(), serde_json::Value::String(text));
        } else {
            bail!("--var {v:?}: write it as k=v, k=@FILE or k:=JSON");
        }
    }
    Ok(out)
}

fn is_dir(reference: &str) -> bool {
    reference.contains('/') || reference.starts_with('.') || Path::new(reference).is_dir()
}

fn print_render(r: &PromptRenderView, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    for m in &r.messages {
        println!("[{}]\n{}\n", m.role, m.content);
    }
    let mut line = format!("{}@{}: {} tokens ({})", r.name, r.version, r.tokens, r.tokenizer);
    if let Some(c) = &r.compression {
        line.push_str(&format!("; budget {}, {} before compression", c.budget, c.tokens_before));
    }
    eprintln!("{line}");
    Ok(())
}

fn print_tests(outcomes: &[TestView], json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(outcomes)?);
    } else {
        for t in outcomes {
            match &t.failure {
                None => println!("ok      {}", t.name),
                Some(f) => println!("FAILED  {}: {f}", t.name),
            }
        }
        let failed = outcomes.iter().filter(|t| !t.passed).count();
        println!("{} passed, {failed} failed", outcomes.len() - failed);
    }
    Ok(if outcomes.iter().all(|t| t.passed) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn print_version(p: &ondevice_server::routes::prompts::PromptVersionView) -> String {
    let labels = if p.labels.is_empty() { String::new() } else { format!(" [{}]", p.labels.join(", ")) };
    format!("{}@{}{labels} {}", p.name, p.version, p.digest)
}

/// Runs a prompts command.
pub async fn run(resolved: Resolved, cmd: PromptsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PromptsCommand::New { name, dir } => {
            if dir.exists() && std::fs::read_dir(&dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
                bail!("{} exists and is not empty: choose a new directory", dir.display());
            }
            let pack = scaffold(&name)?;
            pack.write_dir(&dir)?;
            println!(
                "created pack {name} in {} (edit pack.toml, then `ondevice prompts publish {}`)",
                dir.display(),
                dir.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        PromptsCommand::Keygen { file } => {
            let key = SigningKey::generate()?;
            write_private(&file, &format!("{}\n", key.to_hex()))?;
            println!("{}", key.public());
            eprintln!("secret key written to {}; give the public key above to importers (--trust)", file.display());
            return Ok(ExitCode::SUCCESS);
        }
        PromptsCommand::Test { reference, json } if is_dir(&reference) => {
            let pack = Pack::load_dir(Path::new(&reference))?;
            let sandbox = Sandbox::default();
            let findings = ondevice_prompts::lint::lint_pack(&sandbox, &pack);
            for f in &findings {
                eprintln!("{f}");
            }
            let outcomes: Vec<TestView> = run_tests(&sandbox, &pack)
                .into_iter()
                .map(|t| TestView { name: t.name, passed: t.failure.is_none(), failure: t.failure })
                .collect();
            let code = print_tests(&outcomes, json)?;
            if findings.iter().any(|f| f.severity == ondevice_prompts::Severity::Error) {
                return Ok(ExitCode::FAILURE);
            }
            return Ok(code);
        }
        PromptsCommand::Render { reference, vars, model: None, budget, embedding_model: None, json }
            if is_dir(&reference) =>
        {
            let pack = Pack::load_dir(Path::new(&reference))?;
            let request = ondevice_prompts::RenderRequest {
                reference: format!("{}@{}", pack.name(), pack.version()).parse()?,
                variables: parse_vars(&vars)?,
                model: None,
                budget,
                embedding_model: None,
            };
            let r = ondevice_prompts::service::render_pack(&Sandbox::default(), None, &pack, pack.digest(), &request)
                .await?;
            let view = PromptRenderView::from(r);
            print_render(&view, json)?;
            return Ok(ExitCode::SUCCESS);
        }
        PromptsCommand::Render { reference, .. } if is_dir(&reference) => {
            bail!("a pack directory renders locally without a model: publish it to count tokens with --model")
        }
        _ => {}
    }
    let client = Client::new(&resolved)?;
    match cmd {
        PromptsCommand::List { json } => {
            let packs: Vec<PromptPackView> = client.call(Method::GET, "/api/v1/prompts", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&packs)?);
            } else {
                println!("{:<28} {:<12} {:<9} {:<30} DESCRIPTION", "NAME", "CURRENT", "VERSIONS", "LABELS");
                for p in packs {
                    let labels: Vec<String> = p.labels.iter().map(|(l, v)| format!("{l}={v}")).collect();
                    println!(
                        "{:<28} {:<12} {:<9} {:<30} {}",
                        p.name,
                        p.current.as_deref().unwrap_or("-"),
                        p.versions.len(),
                        labels.join(","),
                        p.description
                    );
                }
            }
        }
        PromptsCommand::Show { reference, json } => {
            let d: PromptDetailView =
                client.call(Method::GET, &format!("/api/v1/prompts/{}", segment(&reference)), None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                println!("pack:        {}", d.version.name);
                println!("version:     {}", d.version.version);
                println!("digest:      {}", d.version.digest);
                println!("description: {}", d.version.description);
                println!(
                    "labels:      {}",
                    if d.version.labels.is_empty() { "-".into() } else { d.version.labels.join(", ") }
                );
                if let Some(s) = &d.version.signer {
                    println!("signed by:   {s}");
                }
                println!("published:   {} (unix seconds)", d.version.published_at);
                println!(
                    "versions:    {}",
                    d.versions.iter().map(|v| v.version.as_str()).collect::<Vec<_>>().join(", ")
                );
                for (path, text) in &d.files {
                    println!("\n--- {path}\n{}", text.trim_end());
                }
            }
        }
        PromptsCommand::Publish { dir, labels, json } => {
            let pack = Pack::load_dir(&dir)?;
            let body = serde_json::json!({"files": pack.files(), "labels": labels});
            let p: PublishView = client.call(Method::POST, "/api/v1/prompts", Some(&body)).await?;
            for w in &p.warnings {
                eprintln!("warning[{}] {}: {}", w.code, w.location, w.message);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else if p.created {
                println!("published {}", print_version(&p.version));
            } else {
                println!("already published with the same content: {}", print_version(&p.version));
            }
        }
        PromptsCommand::Diff { from, to } => {
            let d: DiffView = client
                .call(Method::GET, &format!("/api/v1/prompts/{}/diff?to={}", segment(&from), segment(&to)), None)
                .await?;
            if d.diff.is_empty() {
                eprintln!("{from} and {to} are identical");
            }
            print!("{}", d.diff);
        }
        PromptsCommand::Rollback { name, version, json } => {
            let body = serde_json::json!({"version": version});
            let r: RollbackView =
                client.call(Method::POST, &format!("/api/v1/prompts/{}/rollback", segment(&name)), Some(&body)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("{name} now serves {} (was {})", r.version.version, r.previous.as_deref().unwrap_or("unset"));
            }
        }
        PromptsCommand::Render { reference, vars, model, budget, embedding_model, json } => {
            let body = serde_json::json!({
                "variables": parse_vars(&vars)?, "model": model, "budget": budget, "embedding_model": embedding_model
            });
            let r: PromptRenderView = client
                .call(Method::POST, &format!("/api/v1/prompts/{}/render", segment(&reference)), Some(&body))
                .await?;
            print_render(&r, json)?;
        }
        PromptsCommand::Export { reference, output, sign_key } => {
            let v: serde_json::Value =
                client.call(Method::GET, &format!("/api/v1/prompts/{}/export", segment(&reference)), None).await?;
            // Re-check what the daemon sent, then sign locally: the secret key never leaves here.
            let a = archive::import(&serde_json::to_vec(&v)?, &[])?;
            let key = sign_key.as_deref().map(SigningKey::read).transpose()?;
            let bytes = archive::export(&a.pack, key.as_ref());
            let tmp = output.with_extension("partial");
            std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
            std::fs::rename(&tmp, &output).with_context(|| format!("cannot write {}", output.display()))?;
            let signed = key.map(|k| format!(", signed by {}", k.public())).unwrap_or_default();
            println!("exported {}@{} to {}{signed}", a.pack.name(), a.pack.version(), output.display());
        }
        PromptsCommand::Import { file, trusted, json } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let keys = trusted
                .iter()
                .map(|k| {
                    let hex =
                        if Path::new(k).is_file() { std::fs::read_to_string(k)?.trim().to_owned() } else { k.clone() };
                    Ok(VerifyingKey::from_hex(&hex)?.to_string())
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            // Checked here too, so a bad archive fails before it is sent.
            let parsed: Vec<VerifyingKey> = keys.iter().map(|k| VerifyingKey::from_hex(k)).collect::<Result<_, _>>()?;
            archive::import(text.as_bytes(), &parsed)?;
            let body = serde_json::json!({"archive": text, "trusted_keys": keys});
            let p: PublishView = client.call(Method::POST, "/api/v1/prompts", Some(&body)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                let signer = p.version.signer.as_deref().map(|s| format!(" (signed by {s})")).unwrap_or_default();
                println!("imported {}{signer}", print_version(&p.version));
            }
        }
        PromptsCommand::Test { reference, json } => {
            let outcomes: Vec<TestView> =
                client.call(Method::POST, &format!("/api/v1/prompts/{}/test", segment(&reference)), None).await?;
            return print_tests(&outcomes, json);
        }
        PromptsCommand::Rm { reference } => {
            let Some((name, version)) = reference.split_once('@') else {
                bail!("name the version to delete: NAME@VERSION");
            };
            let v: ondevice_server::routes::prompts::PromptVersionView = client
                .call(Method::DELETE, &format!("/api/v1/prompts/{}/versions/{}", segment(name), segment(version)), None)
                .await?;
            println!("deleted {}@{}", v.name, v.version);
        }
        PromptsCommand::New { .. } | PromptsCommand::Keygen { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
