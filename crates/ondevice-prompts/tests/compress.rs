//! Compression to a token budget with a deterministic stand-in tokenizer (about four characters a
//! token): budgets are never exceeded, head/tail/middle cut where they should, normalization
//! removes repeats, and extractive compression of the prepared long contexts
//! (`tests/data/contexts.json`) to a quarter of their tokens keeps the answering sentence in at
//! least 90% of cases (lexical ranking here; the e2e test in `crates/ondevice` repeats it with
//! SmolLM2's tokenizer and embeddings).

use std::collections::BTreeMap;

use ondevice_prompts::compress::{ApproxCounter, Budget, TokenCounter, fit, normalize};
use ondevice_prompts::pack::Pack;
use ondevice_prompts::render::resolve_variables;
use ondevice_prompts::sandbox::Sandbox;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Case {
    question: String,
    answer: String,
    context: String,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/contexts.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn qa_pack(policy: &str) -> Pack {
    let mut files = BTreeMap::new();
    files.insert(
        "pack.toml".to_owned(),
        format!(
            "name = \"qa\"\nversion = \"1.0.0\"\n\
             [variables.context]\nrequired = true\ncompress = \"{policy}\"\nquery = \"question\"\n\
             [variables.notes]\ndefault = \"\"\ncompress = \"head\"\npriority = -1\n\
             [variables.question]\nrequired = true\n\
             [[messages]]\nrole = \"system\"\ntemplate = \"Answer from the context. {{{{ notes }}}}\"\n\
             [[messages]]\nrole = \"user\"\ntemplate = \"Context:\\n{{{{ context }}}}\\n\\nQuestion: {{{{ question }}}}\"\n"
        ),
    );
    Pack::from_files(files).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().build().unwrap()
}

#[test]
fn budgets_are_never_exceeded() {
    let rt = rt();
    let sb = Sandbox::default();
    let c = &cases()[0];
    for policy in ["head", "tail", "middle", "extractive"] {
        let pack = qa_pack(policy);
        let vars: BTreeMap<String, serde_json::Value> = serde_json::from_value(json!({
            "context": c.context, "question": c.question, "notes": "Be short. ".repeat(40)
        }))
        .unwrap();
        let ctx = resolve_variables(&pack, &vars).unwrap();
        let mut previous = None;
        for budget in (40..1200).step_by(37) {
            let result = rt.block_on(fit(&sb, &pack, ctx.clone(), Budget { tokens: budget }, &ApproxCounter, None));
            match result {
                Ok((r, report)) => {
                    let counted = rt.block_on(ApproxCounter.count(&r.messages)).unwrap();
                    assert_eq!(counted, report.tokens_after, "the report tells the truth");
                    assert!(counted <= budget, "{policy}: {counted} tokens for a budget of {budget}");
                    if report.tokens_before > budget {
                        // Compression uses the room it has: within a few words (cuts) or about
                        // a tenth (whole sentences, each counted on its own) of it.
                        let slack = if policy == "extractive" { budget / 10 + 10 } else { 12 };
                        assert!(counted + slack >= budget, "{policy}: only {counted} of {budget} used");
                    }
                    previous = Some(budget);
                }
                Err(ondevice_prompts::PromptError::BudgetTooSmall { budget: b, minimum }) => {
                    assert_eq!(b, budget);
                    assert!(minimum > budget);
                    assert!(previous.is_none(), "{policy}: a larger budget {budget} failed after a smaller one fit");
                }
                Err(e) => panic!("{policy} {budget}: {e}"),
            }
        }
        assert!(previous.is_some(), "{policy}: some budget fits");
    }
}

#[test]
fn truncation_sides() {
    let rt = rt();
    let sb = Sandbox::default();
    let words: Vec<String> = (0..400).map(|i| format!("w{i:03}")).collect();
    let text = words.join(" ");
    for (policy, first, last) in [("head", true, false), ("tail", false, true), ("middle", true, true)] {
        let pack = qa_pack(policy);
        let vars: BTreeMap<String, serde_json::Value> =
            serde_json::from_value(json!({"context": text, "question": "q"})).unwrap();
        let ctx = resolve_variables(&pack, &vars).unwrap();
        let (r, report) = rt.block_on(fit(&sb, &pack, ctx, Budget { tokens: 200 }, &ApproxCounter, None)).unwrap();
        let user = &r.messages[1].content;
        assert_eq!(user.contains("w000"), first, "{policy}: {user}");
        assert_eq!(user.contains("w399"), last, "{policy}: {user}");
        assert!(report.tokens_after <= 200);
        assert_eq!(report.sections.len(), 1);
        assert_eq!(report.sections[0].variable, "context");
    }
}

#[test]
fn normalization_collapses_blanks_and_repeats() {
    let text = "Alpha  beta\t gamma.   \n\n\n\nThe same sentence here. Other words follow.\nThe same sentence here.\nAlpha  beta\t gamma.   \n";
    assert_eq!(normalize(text), "Alpha beta gamma.\n\nThe same sentence here. Other words follow.");
}

#[test]
fn extractive_compression_keeps_the_answer_in_90_percent() {
    let rt = rt();
    let sb = Sandbox::default();
    let pack = qa_pack("extractive");
    let cases = cases();
    let mut kept = 0;
    for c in &cases {
        let vars: BTreeMap<String, serde_json::Value> =
            serde_json::from_value(json!({"context": c.context, "question": c.question})).unwrap();
        let ctx = resolve_variables(&pack, &vars).unwrap();
        let full =
            rt.block_on(fit(&sb, &pack, ctx.clone(), Budget { tokens: usize::MAX }, &ApproxCounter, None)).unwrap().1;
        let budget = full.tokens_before / 4;
        let (r, report) =
            rt.block_on(fit(&sb, &pack, ctx.clone(), Budget { tokens: budget }, &ApproxCounter, None)).unwrap();
        assert!(report.tokens_after <= budget);
        // Deterministic: the same input gives the same output.
        let (again, _) = rt.block_on(fit(&sb, &pack, ctx, Budget { tokens: budget }, &ApproxCounter, None)).unwrap();
        assert_eq!(again, r);
        if r.messages[1].content.contains(&c.answer) {
            kept += 1;
        }
    }
    println!("answer kept in {kept} of {} contexts at a quarter of the tokens", cases.len());
    assert!(kept * 10 >= cases.len() * 9, "kept {kept} of {}", cases.len());
}
