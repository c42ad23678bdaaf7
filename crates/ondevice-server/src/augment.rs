//! Prompt packs and retrieval in generation requests, applied by every chat surface (OpenAI
//! `/v1/chat/completions`, Ollama `/api/chat`, the WebSocket and gRPC `Chat`) right before
//! [`generation::start`](crate::generation::start):
//!
//! 1. **`prompt_pack`** `{name, variables, budget?}`: the pack (`name`, `name@1.2.0`, `name@^1.2`,
//!    `name@label`) is rendered server-side by the prompt service, in the pack sandbox, with the
//!    budget (the request's, else the pack's `[budget] tokens`) counted by the target model's
//!    tokenizer. **Rule:** the pack's messages come first, then the request's messages (none is
//!    fine: the pack is then the whole conversation). Variable content stays message content,
//!    which the engine tokenizes as text, so `<|im_start|>` in a variable never opens a role.
//! 2. **`collection`** `{name, top_k?, filter?, query?}`: the collection is queried with `query`,
//!    else the last user message (after the pack's messages were added); the chunks found go into
//!    one system message of numbered sources (`[1] (source: …)` followed by the chunk text),
//!    appended to the conversation's leading system message when it has one (some chat templates
//!    accept a single system message only), else inserted first. No hit: nothing is injected.
//!    The hits come back to the client as [`Source`]s, numbered as in the context.
//!
//! Errors: an unknown pack or collection 404, a missing or mistyped variable or a bad filter 400,
//! no prompt or vector service in this daemon 503.

use std::collections::BTreeMap;

use ondevice_prompts::{PackRef, RenderRequest};
use ondevice_runtime::{ChatMessage, GenerateRequest, Prompt, Role};
use ondevice_vector::{Filter, Hit, QueryInput, QueryRequest};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::state::AppState;

/// Chunks retrieved when a request names no `top_k`.
pub const DEFAULT_TOP_K: u32 = 4;
/// Most chunks a request may ask for (they all go into the prompt).
pub const MAX_TOP_K: u32 = 32;

/// A prompt pack to render server-side (extension field `prompt_pack`).
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptPackIn {
    /// The pack: `name`, `name@1.2.0`, `name@^1.2` (any semver requirement) or `name@label`.
    #[schema(min_length = 1, max_length = 200, pattern = "^[a-z0-9][a-z0-9._-]*(@.+)?$")]
    pub name: String,
    /// The pack's variables (missing required ones: 400).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub variables: serde_json::Map<String, serde_json::Value>,
    /// Most prompt tokens for the pack's messages, counted by the target model's tokenizer
    /// (default: the pack's `[budget] tokens`, else no limit).
    #[schema(minimum = 1)]
    pub budget: Option<u32>,
}

/// A collection to retrieve context from (extension field `collection`).
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CollectionIn {
    /// The collection (see `GET /api/v1/collections`).
    #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    pub name: String,
    /// Chunks to retrieve, 1-32 (default 4).
    #[schema(minimum = 1, maximum = 32)]
    pub top_k: Option<u32>,
    /// Metadata filter: `{"key": value}` (equal) or `{"key": [v1, v2]}` (any of).
    #[schema(value_type = Option<Object>)]
    pub filter: Option<serde_json::Value>,
    /// The text to search with (default: the last user message).
    pub query: Option<String>,
}

/// A retrieved chunk the answer may cite, numbered as in the context the model saw (`[id]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Source {
    /// The citation number: the model saw this chunk as `[id]`.
    pub id: u32,
    /// The document id (for indexed files, the file's canonical path).
    pub document: String,
    /// The chunk's position in its document.
    pub chunk: u32,
    /// Where the document came from (a path or URL), when known.
    pub source: Option<String>,
    /// The document's metadata.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Higher is closer (cosine similarity for cosine collections).
    pub score: f32,
    /// The chunk's text.
    pub text: String,
}

impl Source {
    fn of(id: u32, h: Hit) -> Source {
        Source {
            id,
            document: h.document_id,
            chunk: h.chunk,
            source: h.source,
            metadata: h.metadata,
            score: h.score,
            text: h.text,
        }
    }
}

/// What a request asks for beyond its messages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Augment {
    /// A pack to render before the messages.
    pub prompt_pack: Option<PromptPackIn>,
    /// A collection to retrieve from.
    pub collection: Option<CollectionIn>,
}

impl Augment {
    /// Whether the request asks for neither.
    pub fn is_empty(&self) -> bool {
        self.prompt_pack.is_none() && self.collection.is_none()
    }
}

/// The instruction that opens the context message.
const CONTEXT_HEAD: &str = "Answer the user's question using the numbered sources below when they are relevant, \
and cite the ones you use as [1], [2]. If the sources do not contain the answer, say so.";

/// The context message's text for `sources`.
pub fn context(sources: &[Source]) -> String {
    let mut out = String::from(CONTEXT_HEAD);
    for s in sources {
        out.push_str(&format!("\n\n[{}] (source: {})\n{}", s.id, s.source.as_deref().unwrap_or(&s.document), s.text));
    }
    out
}

/// Puts the context into the conversation: appended to a leading system message, else a new
/// system message first.
fn inject(messages: &mut Vec<ChatMessage>, context: String) {
    match messages.first_mut() {
        Some(first) if first.role == Role::System => {
            if !first.content.is_empty() {
                first.content.push_str("\n\n");
            }
            first.content.push_str(&context);
        }
        _ => messages.insert(0, ChatMessage::new(Role::System, context)),
    }
}

fn role(r: ondevice_prompts::pack::Role) -> Role {
    match r {
        ondevice_prompts::pack::Role::System => Role::System,
        ondevice_prompts::pack::Role::User => Role::User,
        ondevice_prompts::pack::Role::Assistant => Role::Assistant,
    }
}

/// Applies `augment` to `request` (see the module documentation); returns the sources when a
/// collection was named (possibly none found), `None` otherwise.
pub(crate) async fn apply(
    state: &AppState,
    request: &mut GenerateRequest,
    augment: Augment,
) -> Result<Option<Vec<Source>>, ApiError> {
    if augment.is_empty() {
        return Ok(None);
    }
    // A templated text prompt is one user message; a raw prompt has no messages to add to.
    if let Prompt::Text { prompt, raw } = &mut request.prompt {
        if *raw {
            return Err(ApiError::InvalidRequest(
                "prompt_pack and collection need messages or a templated prompt, not a raw prompt: drop raw".into(),
            ));
        }
        let user = std::mem::take(prompt);
        request.prompt =
            Prompt::Chat(if user.is_empty() { Vec::new() } else { vec![ChatMessage::new(Role::User, user)] });
    }
    let Prompt::Chat(messages) = &mut request.prompt else {
        return Err(ApiError::Internal("a text prompt was not turned into messages".into()));
    };
    if let Some(pack) = augment.prompt_pack {
        let prompts = state.require_prompts()?;
        let reference: PackRef = pack.name.parse()?;
        let rendered = prompts
            .render(RenderRequest {
                reference,
                variables: pack.variables.into_iter().collect::<BTreeMap<_, _>>(),
                model: Some(request.model.clone()),
                budget: pack.budget.map(|b| b as usize),
                embedding_model: None,
            })
            .await?;
        tracing::debug!(pack = %rendered.name, version = %rendered.version, tokens = rendered.tokens, "prompt pack rendered");
        let mut all: Vec<ChatMessage> =
            rendered.messages.into_iter().map(|m| ChatMessage::new(role(m.role), m.content)).collect();
        all.append(messages);
        *messages = all;
    }
    if messages.is_empty() {
        return Err(ApiError::InvalidRequest("messages must hold at least one message (or name a prompt_pack)".into()));
    }
    let Some(c) = augment.collection else { return Ok(None) };
    let vectors = state.require_vectors()?;
    let top_k = c.top_k.unwrap_or(DEFAULT_TOP_K);
    if !(1..=MAX_TOP_K).contains(&top_k) {
        return Err(ApiError::InvalidRequest(format!(
            "collection.top_k must be between 1 and {MAX_TOP_K}, got {top_k}"
        )));
    }
    let query = match c.query.filter(|q| !q.trim().is_empty()) {
        Some(q) => q,
        None => messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User && !m.content.trim().is_empty())
            .map(|m| m.content.clone())
            .ok_or_else(|| {
                ApiError::InvalidRequest(
                    "collection: there is no user message to search with: add one or set collection.query".into(),
                )
            })?,
    };
    let filter = match &c.filter {
        Some(f) => Filter::from_json(f)?,
        None => Filter::default(),
    };
    let hits =
        vectors.query(&c.name, QueryRequest { input: QueryInput::Text(query), k: top_k as usize, filter }).await?;
    let sources: Vec<Source> = hits.into_iter().zip(1..).map(|(h, id)| Source::of(id, h)).collect();
    if !sources.is_empty() {
        inject(messages, context(&sources));
    }
    Ok(Some(sources))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(id: u32, source: Option<&str>, text: &str) -> Source {
        Source {
            id,
            document: format!("doc{id}"),
            chunk: 0,
            source: source.map(str::to_owned),
            metadata: serde_json::Map::new(),
            score: 0.5,
            text: text.to_owned(),
        }
    }

    #[test]
    fn context_numbers_sources_and_names_where_they_come_from() {
        let c = context(&[source(1, Some("/notes/otters.md"), "Otters hold hands."), source(2, None, "Bread.")]);
        assert!(c.starts_with(CONTEXT_HEAD), "{c}");
        assert!(c.contains("\n\n[1] (source: /notes/otters.md)\nOtters hold hands."), "{c}");
        assert!(c.ends_with("\n\n[2] (source: doc2)\nBread."), "{c}");
    }

    #[test]
    fn context_joins_a_leading_system_message_or_comes_first() {
        let mut with_system =
            vec![ChatMessage::new(Role::System, "Be brief."), ChatMessage::new(Role::User, "Where do otters sleep?")];
        inject(&mut with_system, "CTX".into());
        assert_eq!(with_system.len(), 2);
        assert_eq!(with_system[0].content, "Be brief.\n\nCTX");

        let mut without = vec![ChatMessage::new(Role::User, "q")];
        inject(&mut without, "CTX".into());
        assert_eq!(without, vec![ChatMessage::new(Role::System, "CTX"), ChatMessage::new(Role::User, "q")]);
    }

    #[test]
    fn extension_fields_refuse_unknown_keys() {
        let ok: PromptPackIn = serde_json::from_value(serde_json::json!({"name": "summarize@^1"})).unwrap();
        assert!(ok.variables.is_empty() && ok.budget.is_none());
        assert!(serde_json::from_value::<PromptPackIn>(serde_json::json!({"name": "x", "vars": {}})).is_err());
        assert!(serde_json::from_value::<CollectionIn>(serde_json::json!({"name": "x", "k": 3})).is_err());
    }
}
