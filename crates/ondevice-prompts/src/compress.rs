//! Fitting a rendered pack into a token budget, counted by the target model's tokenizer.
//!
//! Deterministic, in this order:
//! 1. normalization of every compressible variable (declared with `compress = ...`): runs of
//!    blanks become one space, line ends are trimmed, three or more newlines become two, and
//!    repeated sentences and lines are kept once;
//! 2. if the render is still over budget, variables shrink by priority (lowest first, then by
//!    name): `head` keeps the beginning, `tail` the end, `middle` both ends (cut on word
//!    boundaries, the cut point found by bisection with the real tokenizer); `extractive` ranks
//!    the sentences by relevance to the query variable (embedding cosine when an embedding model
//!    is given, plus BM25 term overlap) and keeps the best ones that fit, in their original order;
//! 3. the whole prompt is counted again after every change: the result never exceeds the budget,
//!    or the render fails with [`PromptError::BudgetTooSmall`].
//!
//! With a model, the prompt is counted exactly as a generation sees it: the messages rendered with
//! the model's own chat template and tokenized by its runtime ([`InferenceCounter`], through
//! `Inference::tokenize_prompt`). Remote runtimes that cannot say are asked for the tokens of the
//! ChatML framing ([`chatml`]) instead; without a model, four characters count as a token.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use ondevice_runtime::{BoxFuture, EmbedRequest, Inference};
use serde::Serialize;

use crate::PromptError;
use crate::pack::{Pack, Policy, Role};
use crate::render::{Message, Rendered, render_with};
use crate::sandbox::Sandbox;

/// Counts tokens with a model's tokenizer.
pub trait TokenCounter: Send + Sync {
    /// Tokens in `text`.
    fn count_text<'a>(&'a self, text: &'a str) -> BoxFuture<'a, Result<usize, PromptError>>;
    /// Tokens of the whole prompt `messages` make (default: [`chatml`] counted as text).
    fn count<'a>(&'a self, messages: &'a [Message]) -> BoxFuture<'a, Result<usize, PromptError>> {
        Box::pin(async move {
            let text = chatml(messages);
            self.count_text(&text).await
        })
    }
}

/// Embeds sentences for extractive compression.
pub trait Embedder: Send + Sync {
    /// One vector per text.
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, PromptError>>;
}

/// The messages as a ChatML conversation with the generation prompt.
pub fn chatml(messages: &[Message]) -> String {
    let mut s = String::new();
    for m in messages {
        s.push_str("<|im_start|>");
        s.push_str(m.role.as_str());
        s.push('\n');
        s.push_str(&m.content);
        s.push_str("<|im_end|>\n");
    }
    s.push_str("<|im_start|>assistant\n");
    s
}

/// A deterministic stand-in tokenizer: about four characters a token
/// ([`crate::sandbox::approx_tokens`]). For tests and renders that name no model.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApproxCounter;

impl TokenCounter for ApproxCounter {
    fn count_text<'a>(&'a self, text: &'a str) -> BoxFuture<'a, Result<usize, PromptError>> {
        Box::pin(async move { Ok(crate::sandbox::approx_tokens(text)) })
    }
}

/// Counts with a model's tokenizer through [`Inference::tokenize`].
pub struct InferenceCounter {
    inference: Arc<dyn Inference>,
    model: String,
}

impl InferenceCounter {
    /// Counts with `model`.
    pub fn new(inference: Arc<dyn Inference>, model: impl Into<String>) -> Self {
        InferenceCounter { inference, model: model.into() }
    }
}

impl TokenCounter for InferenceCounter {
    /// The prompt's tokens exactly as a generation with the model sees them: the messages
    /// rendered with the model's own chat template and tokenized by the runtime
    /// ([`Inference::tokenize_prompt`]). A runtime that cannot say (a remote server) is asked
    /// for the [`chatml`] framing's tokens instead.
    fn count<'a>(&'a self, messages: &'a [Message]) -> BoxFuture<'a, Result<usize, PromptError>> {
        Box::pin(async move {
            let chat = messages
                .iter()
                .map(|m| {
                    ondevice_runtime::Role::parse(m.role.as_str())
                        .map(|role| ondevice_runtime::ChatMessage::new(role, m.content.clone()))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| PromptError::Runtime { model: self.model.clone(), source })?;
            match self.inference.tokenize_prompt(&self.model, ondevice_runtime::Prompt::Chat(chat)).await {
                Ok(tokens) => Ok(tokens.len()),
                Err(ondevice_runtime::RuntimeError::Unsupported { .. }) => self.count_text(&chatml(messages)).await,
                Err(source) => Err(PromptError::Runtime { model: self.model.clone(), source }),
            }
        })
    }

    fn count_text<'a>(&'a self, text: &'a str) -> BoxFuture<'a, Result<usize, PromptError>> {
        Box::pin(async move {
            if text.is_empty() {
                return Ok(0);
            }
            self.inference
                .tokenize(&self.model, text)
                .await
                .map(|t| t.len())
                .map_err(|source| PromptError::Runtime { model: self.model.clone(), source })
        })
    }
}

/// Embeds with a model through [`Inference::embed`].
pub struct InferenceEmbedder {
    inference: Arc<dyn Inference>,
    model: String,
}

impl InferenceEmbedder {
    /// Embeds with `model`.
    pub fn new(inference: Arc<dyn Inference>, model: impl Into<String>) -> Self {
        InferenceEmbedder { inference, model: model.into() }
    }
}

impl Embedder for InferenceEmbedder {
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, PromptError>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(texts.len());
            for chunk in texts.chunks(32) {
                let req = EmbedRequest { model: self.model.clone(), input: chunk.to_vec(), normalize: true };
                let e = self
                    .inference
                    .embed(req)
                    .await
                    .map_err(|source| PromptError::Runtime { model: self.model.clone(), source })?;
                out.extend(e.vectors);
            }
            Ok(out)
        })
    }
}

/// A token budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Budget {
    /// Most prompt tokens.
    pub tokens: usize,
}

/// What compression did to one variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SectionReport {
    /// The variable.
    pub variable: String,
    /// Its policy.
    pub policy: Policy,
    /// Tokens of its text before, after normalization and after shrinking.
    pub tokens_before: usize,
    /// Tokens after.
    pub tokens_after: usize,
}

/// What a fit did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CompressReport {
    /// The budget.
    pub budget: usize,
    /// Prompt tokens before any change.
    pub tokens_before: usize,
    /// Prompt tokens of the result (at most `budget`).
    pub tokens_after: usize,
    /// Variables that were normalized or shrunk.
    pub sections: Vec<SectionReport>,
}

/// Collapses blanks, trims line ends, limits blank lines, and keeps repeated lines and sentences
/// once.
pub fn normalize(text: &str) -> String {
    let mut lines_seen = HashSet::new();
    let mut out_lines: Vec<String> = Vec::new();
    let mut blank_run = 0;
    for raw in text.lines() {
        let line: String = raw.split_whitespace().collect::<Vec<_>>().join(" ");
        if line.is_empty() {
            blank_run += 1;
            if blank_run <= 1 && !out_lines.is_empty() {
                out_lines.push(String::new());
            }
            continue;
        }
        blank_run = 0;
        if !lines_seen.insert(line.to_lowercase()) {
            continue;
        }
        out_lines.push(line);
    }
    while out_lines.last().is_some_and(|l| l.is_empty()) {
        out_lines.pop();
    }
    // Repeated sentences across lines.
    let mut sentences_seen = HashSet::new();
    let mut result = Vec::new();
    for line in out_lines {
        if line.is_empty() {
            result.push(line);
            continue;
        }
        let kept: Vec<String> = sentences(&line)
            .into_iter()
            .filter(|s| s.split_whitespace().count() < 4 || sentences_seen.insert(s.to_lowercase()))
            .collect();
        if !kept.is_empty() {
            result.push(kept.join(" "));
        }
    }
    result.join("\n")
}

/// Splits text into sentences: after `.`, `!` or `?` followed by a blank, and at line breaks.
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let chars: Vec<char> = line.chars().collect();
        let mut start = 0;
        for i in 0..chars.len() {
            let end = matches!(chars[i], '.' | '!' | '?') && chars.get(i + 1).is_some_and(|c| c.is_whitespace());
            if end {
                let s: String = chars[start..=i].iter().collect::<String>().trim().to_owned();
                if !s.is_empty() {
                    out.push(s);
                }
                start = i + 1;
            }
        }
        let s: String = chars[start..].iter().collect::<String>().trim().to_owned();
        if !s.is_empty() {
            out.push(s);
        }
    }
    out
}

const STOPWORDS: &[&str] = &[
    "a", "an", "the", "of", "to", "in", "on", "at", "for", "and", "or", "is", "are", "was", "were", "be", "by", "with",
    "what", "which", "who", "whom", "when", "where", "why", "how", "did", "does", "do", "that", "this", "it", "its",
    "as", "from", "has", "have", "had", "their", "there", "they", "he", "she", "his", "her",
];

fn terms(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .collect()
}

/// BM25 scores of `sents` for `query`.
pub fn bm25(query: &str, sents: &[String]) -> Vec<f64> {
    let q: Vec<String> = {
        let mut seen = HashSet::new();
        terms(query).into_iter().filter(|t| seen.insert(t.clone())).collect()
    };
    let docs: Vec<Vec<String>> = sents.iter().map(|s| terms(s)).collect();
    let n = docs.len().max(1) as f64;
    let avg = (docs.iter().map(Vec::len).sum::<usize>() as f64 / n).max(1.0);
    let mut df: HashMap<&str, usize> = HashMap::new();
    for d in &docs {
        let uniq: HashSet<&str> = d.iter().map(String::as_str).collect();
        for t in uniq {
            *df.entry(t).or_default() += 1;
        }
    }
    docs.iter()
        .map(|d| {
            let len = d.len() as f64;
            q.iter()
                .map(|t| {
                    let tf = d.iter().filter(|w| *w == t).count() as f64;
                    if tf == 0.0 {
                        return 0.0;
                    }
                    let dfi = *df.get(t.as_str()).unwrap_or(&0) as f64;
                    let idf = ((n - dfi + 0.5) / (dfi + 0.5) + 1.0).ln();
                    idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len / avg))
                })
                .sum()
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        dot += f64::from(*x) * f64::from(*y);
        na += f64::from(*x) * f64::from(*x);
        nb += f64::from(*y) * f64::from(*y);
    }
    if na == 0.0 || nb == 0.0 { 0.0 } else { dot / (na.sqrt() * nb.sqrt()) }
}

fn min_max(v: &[f64]) -> Vec<f64> {
    let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return vec![0.0; v.len()];
    }
    v.iter().map(|x| (x - lo) / (hi - lo)).collect()
}

/// Relevance of each sentence to `query`: BM25 (scaled to 0..1) plus, with an embedder, the
/// embedding cosine (scaled to 0..1).
pub async fn relevance(
    query: &str,
    sents: &[String],
    embedder: Option<&dyn Embedder>,
) -> Result<Vec<f64>, PromptError> {
    let lexical = min_max(&bm25(query, sents));
    let Some(e) = embedder else { return Ok(lexical) };
    let mut texts = Vec::with_capacity(sents.len() + 1);
    texts.push(query.to_owned());
    texts.extend(sents.iter().cloned());
    let vectors = e.embed(&texts).await?;
    if vectors.len() != texts.len() {
        return Err(PromptError::Unavailable("the embedding model returned a wrong number of vectors".into()));
    }
    let cos: Vec<f64> = vectors[1..].iter().map(|v| cosine(&vectors[0], v)).collect();
    let semantic = min_max(&cos);
    Ok(lexical.iter().zip(&semantic).map(|(l, s)| l + s).collect())
}

/// Keeps the most relevant sentences of `text` within `target` tokens, in their original order.
pub async fn extract(
    text: &str,
    query: &str,
    target: usize,
    counter: &dyn TokenCounter,
    embedder: Option<&dyn Embedder>,
) -> Result<String, PromptError> {
    let sents = sentences(text);
    if sents.is_empty() || target == 0 {
        return Ok(String::new());
    }
    let scores = relevance(query, &sents, embedder).await?;
    let mut order: Vec<usize> = (0..sents.len()).collect();
    order.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
    let mut keep = vec![false; sents.len()];
    let mut used = 0usize;
    for i in order {
        let cost = counter.count_text(&sents[i]).await? + 1;
        if used + cost <= target {
            keep[i] = true;
            used += cost;
        }
    }
    let kept: Vec<&str> = sents.iter().zip(&keep).filter(|(_, k)| **k).map(|(s, _)| s.as_str()).collect();
    Ok(kept.join(" "))
}

/// Cuts `text` to at most `target` tokens on word boundaries, keeping the head, the tail or both
/// ends.
pub async fn truncate(
    text: &str,
    target: usize,
    policy: Policy,
    counter: &dyn TokenCounter,
) -> Result<String, PromptError> {
    if counter.count_text(text).await? <= target {
        return Ok(text.to_owned());
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    async fn fit(
        words: &[&str],
        target: usize,
        from_end: bool,
        counter: &dyn TokenCounter,
    ) -> Result<String, PromptError> {
        let take = |k: usize| if from_end { words[words.len() - k..].join(" ") } else { words[..k].join(" ") };
        let (mut lo, mut hi) = (0usize, words.len());
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if counter.count_text(&take(mid)).await? <= target { lo = mid } else { hi = mid - 1 }
        }
        Ok(take(lo))
    }
    match policy {
        Policy::Head | Policy::Extractive => fit(&words, target, false, counter).await,
        Policy::Tail => fit(&words, target, true, counter).await,
        Policy::Middle => {
            let marker = " … ";
            let m = counter.count_text(marker.trim()).await?;
            let room = target.saturating_sub(m);
            let head = fit(&words, room.div_ceil(2), false, counter).await?;
            let n_head = head.split_whitespace().count();
            let rest = &words[n_head..];
            let tail = fit(rest, room / 2, true, counter).await?;
            Ok(match (head.is_empty(), tail.is_empty()) {
                (true, true) => String::new(),
                (false, true) => head,
                (true, false) => tail,
                (false, false) => format!("{head}{marker}{tail}"),
            })
        }
    }
}

/// Renders `pack` with resolved variables `ctx` so that the prompt fits `budget`.
pub async fn fit(
    sandbox: &Sandbox,
    pack: &Pack,
    mut ctx: serde_json::Map<String, serde_json::Value>,
    budget: Budget,
    counter: &dyn TokenCounter,
    embedder: Option<&dyn Embedder>,
) -> Result<(Rendered, CompressReport), PromptError> {
    let m = pack.manifest();
    let first = render_with(sandbox, pack, &ctx)?;
    let tokens_before = counter.count(&first.messages).await?;
    let mut sections = Vec::new();
    // Compressible variables, lowest priority first.
    let mut vars: Vec<(&String, Policy, i32)> =
        m.variables.iter().filter_map(|(n, v)| v.compress.map(|p| (n, p, v.priority))).collect();
    vars.sort_by(|a, b| a.2.cmp(&b.2).then(a.0.cmp(b.0)));
    let mut before_len: BTreeMap<String, usize> = BTreeMap::new();
    for (name, _, _) in &vars {
        if let Some(serde_json::Value::String(s)) = ctx.get(*name) {
            before_len.insert((*name).clone(), counter.count_text(s).await?);
            let n = normalize(s);
            ctx.insert((*name).clone(), serde_json::Value::String(n));
        }
    }
    let mut rendered = render_with(sandbox, pack, &ctx)?;
    let mut total = counter.count(&rendered.messages).await?;
    for (name, policy, _) in &vars {
        if total <= budget.tokens {
            break;
        }
        let query = m.variables[*name]
            .query
            .as_ref()
            .and_then(|q| ctx.get(q))
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        let mut attempts = 0;
        while total > budget.tokens {
            let Some(serde_json::Value::String(text)) = ctx.get(*name) else { break };
            if text.is_empty() {
                break;
            }
            let text = text.clone();
            let have = counter.count_text(&text).await?;
            let excess = total - budget.tokens;
            // Each retry asks for a little more than the plain difference: tokens are not additive.
            let target = have.saturating_sub(excess + attempts * attempts);
            attempts += 1;
            let shrunk = if target == 0 || attempts > 12 {
                String::new()
            } else if *policy == Policy::Extractive {
                extract(&text, &query, target, counter, embedder).await?
            } else {
                truncate(&text, target, *policy, counter).await?
            };
            ctx.insert((*name).clone(), serde_json::Value::String(shrunk));
            rendered = render_with(sandbox, pack, &ctx)?;
            total = counter.count(&rendered.messages).await?;
        }
    }
    for (name, policy, _) in &vars {
        if let (Some(before), Some(serde_json::Value::String(now))) = (before_len.get(*name), ctx.get(*name)) {
            let after = counter.count_text(now).await?;
            if after != *before {
                sections.push(SectionReport {
                    variable: (*name).clone(),
                    policy: *policy,
                    tokens_before: *before,
                    tokens_after: after,
                });
            }
        }
    }
    if total > budget.tokens {
        return Err(PromptError::BudgetTooSmall { budget: budget.tokens, minimum: total });
    }
    Ok((rendered, CompressReport { budget: budget.tokens, tokens_before, tokens_after: total, sections }))
}

/// The role of a message, for callers that build [`Message`]s by hand.
pub fn message(role: Role, content: impl Into<String>) -> Message {
    Message { role, content: content.into() }
}
