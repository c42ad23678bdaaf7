//! Benchmark (prints figures, asserts nothing): render throughput of the sandbox on the
//! templates of `scripts/bench-prompts.sh` (the same ones Python's jinja2 SandboxedEnvironment
//! renders there), and compression time per 10k tokens of context with the deterministic
//! stand-in tokenizer (the daemon's tokenizer adds its own per-call cost).
//! Run: `cargo run --release -p ondevice-prompts --example bench`.

use std::collections::BTreeMap;
use std::time::Instant;

use ondevice_prompts::compress::{ApproxCounter, Budget, fit};
use ondevice_prompts::pack::Pack;
use ondevice_prompts::render::resolve_variables;
use ondevice_prompts::sandbox::Sandbox;
use serde_json::json;

/// The templates, shared with the Python side through `scripts/bench-prompts.sh`.
pub const TEMPLATES: &[(&str, &str)] = &[
    ("simple", "You summarize in a {{ style }} style.\n\n{{ text }}"),
    ("loop", "{% for d in docs %}[{{ loop.index }}] {{ d.title }}: {{ d.text }}\n{% endfor %}Question: {{ q }}"),
    (
        "conditional",
        "{% if style == 'brief' %}Be brief.{% else %}Be thorough.{% endif %} {{ text | upper }} {{ docs | length }}",
    ),
];

fn main() {
    let ctx = json!({
        "style": "brief",
        "text": "The quick brown fox jumps over the lazy dog. ".repeat(20),
        "q": "What does the fox do?",
        "docs": (0..10).map(|i| json!({"title": format!("Doc {i}"), "text": "Some text of a document."})).collect::<Vec<_>>(),
    });
    let sandbox = Sandbox::default();
    let n = 20_000;
    for (name, t) in TEMPLATES {
        sandbox.render(t, &ctx).expect("renders");
        let start = Instant::now();
        for _ in 0..n {
            std::hint::black_box(sandbox.render(t, &ctx).expect("renders"));
        }
        let secs = start.elapsed().as_secs_f64();
        println!("render {name:<12} ondevice {:>10.0} renders/s", n as f64 / secs);
    }

    // Compression: the prepared contexts, joined to about 10k estimated tokens, to a quarter.
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/contexts.json")).expect("data");
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).expect("json");
    let mut long = String::new();
    for c in cases.iter().cycle() {
        if long.len() >= 40_000 {
            break;
        }
        long.push_str(c["context"].as_str().unwrap_or_default());
        long.push('\n');
    }
    let mut files = BTreeMap::new();
    files.insert(
        "pack.toml".to_owned(),
        "name = \"qa\"\nversion = \"1.0.0\"\n[variables.context]\nrequired = true\ncompress = \"extractive\"\nquery = \"q\"\n\
         [variables.q]\nrequired = true\n[[messages]]\nrole = \"user\"\ntemplate = \"{{ context }}\\n\\n{{ q }}\"\n"
            .to_owned(),
    );
    let pack = Pack::from_files(files).expect("pack");
    let vars: BTreeMap<String, serde_json::Value> =
        serde_json::from_value(json!({"context": long, "q": cases[0]["question"]})).expect("vars");
    let ctx = resolve_variables(&pack, &vars).expect("vars");
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let tokens = ondevice_prompts::sandbox::approx_tokens(&long);
    for (policy, p) in [("extractive", "extractive"), ("head", "head")] {
        let pack = if p == "head" {
            let mut f = pack.files().clone();
            f.insert("pack.toml".into(), f["pack.toml"].replace("extractive", "head"));
            Pack::from_files(f).expect("pack")
        } else {
            pack.clone()
        };
        let start = Instant::now();
        let runs = 5;
        for _ in 0..runs {
            let (_, report) = rt
                .block_on(fit(&sandbox, &pack, ctx.clone(), Budget { tokens: tokens / 4 }, &ApproxCounter, None))
                .expect("fits");
            assert!(report.tokens_after <= tokens / 4);
        }
        let per = start.elapsed().as_secs_f64() / runs as f64;
        println!(
            "compress {policy:<10} {tokens} tokens to a quarter: {:.1} ms, {:.1} ms per 10k tokens",
            per * 1000.0,
            per * 1000.0 * 10_000.0 / tokens as f64
        );
    }
}
