//! OpenAI wire types (requests and responses of `/v1/*`) and their conversions to the runtime's
//! domain types. Unknown request fields are ignored, as OpenAI-compatible servers do, so that
//! clients sending newer fields keep working; fields we cannot honour are refused with 400.

use ondevice_runtime::{ChatMessage, Constraint, GenerateRequest, Prompt, Role, Sampling};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::generation::{OneOrMany, check_sampling};

/// `max_tokens` of a `/v1/completions` request that sets none: OpenAI's documented default.
pub const COMPLETIONS_DEFAULT_MAX_TOKENS: u32 = 16;

/// Body of `POST /v1/chat/completions`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// Model name (`name[:tag]`).
    #[schema(min_length = 1)]
    pub model: String,
    /// The conversation: at least one message, unless `prompt_pack` is given (its messages come
    /// first, then these).
    #[serde(default)]
    pub messages: Vec<ChatMessageIn>,
    /// Stream server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Extension (ondevice): a prompt pack rendered server-side; its messages come before
    /// `messages`.
    pub prompt_pack: Option<crate::augment::PromptPackIn>,
    /// Extension (ondevice): retrieve context from a collection (queried with the last user
    /// message); the chunks go into a system message and come back as `sources`.
    pub collection: Option<crate::augment::CollectionIn>,
    /// Sampling temperature (0: greedy).
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Maximum tokens to generate (deprecated by OpenAI in favour of `max_completion_tokens`).
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::routes::lenient::opt_int")]
    pub max_tokens: Option<u32>,
    /// Maximum tokens to generate.
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::routes::lenient::opt_int")]
    pub max_completion_tokens: Option<u32>,
    /// Stop strings.
    pub stop: Option<OneOrMany>,
    /// Seed for reproducible sampling.
    #[serde(default, deserialize_with = "crate::routes::lenient::opt_int")]
    pub seed: Option<i64>,
    /// Accepted and ignored.
    pub frequency_penalty: Option<f32>,
    /// Accepted and ignored.
    pub presence_penalty: Option<f32>,
    /// `text`, `json_object` or `json_schema`.
    pub response_format: Option<ResponseFormat>,
    /// Number of choices; only 1 is supported.
    #[schema(minimum = 1, maximum = 1)]
    #[serde(default, deserialize_with = "crate::routes::lenient::opt_int")]
    pub n: Option<u32>,
    /// Extension (llama.cpp server): keep the k most likely tokens.
    #[serde(default, deserialize_with = "crate::routes::lenient::opt_int")]
    pub top_k: Option<u32>,
    /// Extension (llama.cpp server): minimum relative probability.
    pub min_p: Option<f32>,
    /// Extension (llama.cpp server): repetition penalty.
    pub repeat_penalty: Option<f32>,
}

/// Body of `POST /v1/completions`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CompletionRequest {
    /// Model name.
    #[schema(min_length = 1)]
    pub model: String,
    /// The raw prompt (sent without a chat template); a list must hold exactly one prompt.
    #[schema(schema_with = crate::generation::prompt_schema)]
    pub prompt: OneOrMany,
    /// Stream server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Maximum tokens to generate; without it 16, OpenAI's documented default for completions
    /// (the daemon's `[inference] max_tokens` caps it).
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::routes::lenient::opt_int")]
    pub max_tokens: Option<u32>,
    /// Stop strings.
    pub stop: Option<OneOrMany>,
    /// Seed.
    #[serde(default, deserialize_with = "crate::routes::lenient::opt_int")]
    pub seed: Option<i64>,
    /// Accepted and ignored.
    pub frequency_penalty: Option<f32>,
    /// Accepted and ignored.
    pub presence_penalty: Option<f32>,
    /// Number of choices; only 1 is supported.
    #[schema(minimum = 1, maximum = 1)]
    #[serde(default, deserialize_with = "crate::routes::lenient::opt_int")]
    pub n: Option<u32>,
    /// Echoing the prompt is not supported: `echo: true` is refused (400), so the field is left
    /// out of the schema.
    #[schema(ignore)]
    pub echo: Option<bool>,
    /// Extension: keep the k most likely tokens.
    #[serde(default, deserialize_with = "crate::routes::lenient::opt_int")]
    pub top_k: Option<u32>,
    /// Extension: minimum relative probability.
    pub min_p: Option<f32>,
    /// Extension: repetition penalty.
    pub repeat_penalty: Option<f32>,
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` and no choices.
    #[serde(default)]
    pub include_usage: bool,
}

/// One message of the conversation.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatMessageIn {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    #[schema(pattern = "^(system|developer|user|assistant|tool)$")]
    pub role: String,
    /// Text, or a list of content parts of which only `text` parts are supported.
    pub content: Option<MessageContent>,
}

/// Message content: a string or content parts.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content parts.
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ContentPart {
    /// `text` (other kinds are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    pub text: Option<String>,
}

/// `response_format`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Free text.
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching a schema.
    JsonSchema {
        /// The schema and its name.
        json_schema: JsonSchemaFormat,
    },
}

/// The `json_schema` of a `response_format`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct JsonSchemaFormat {
    /// Name of the schema.
    pub name: Option<String>,
    /// The JSON schema.
    pub schema: Option<serde_json::Value>,
    /// Accepted; output always follows the schema.
    pub strict: Option<bool>,
}

/// Token counts of an answer.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
pub struct UsageOut {
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// The sum.
    pub total_tokens: u32,
}

impl From<ondevice_runtime::Usage> for UsageOut {
    fn from(u: ondevice_runtime::Usage) -> Self {
        UsageOut {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens.saturating_add(u.completion_tokens),
        }
    }
}

/// A chat completion (non-streaming answer).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletion {
    /// `chatcmpl-…`.
    pub id: String,
    /// `chat.completion`.
    pub object: String,
    /// Unix seconds.
    pub created: i64,
    /// The model as resolved (`name:tag`).
    pub model: String,
    /// The runtime instance that answered.
    pub system_fingerprint: Option<String>,
    /// Exactly one choice.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: UsageOut,
    /// Extension (ondevice): the chunks retrieved from `collection`, numbered as the answer cites
    /// them; only when the request named a collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<crate::augment::Source>>,
}

/// A choice of a chat completion.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChatChoice {
    /// Always 0.
    pub index: u32,
    /// The assistant's message.
    pub message: AssistantMessage,
    /// Always null.
    pub logprobs: Option<serde_json::Value>,
    /// `stop` or `length`.
    pub finish_reason: String,
}

/// The assistant's message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AssistantMessage {
    /// `assistant`.
    pub role: String,
    /// The answer.
    pub content: String,
}

/// One server-sent event of a streamed chat completion.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletionChunk {
    /// Same for every chunk of an answer.
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: String,
    /// Unix seconds.
    pub created: i64,
    /// The model.
    pub model: String,
    /// The runtime instance that answers.
    pub system_fingerprint: Option<String>,
    /// One choice; empty in the final usage chunk.
    pub choices: Vec<ChunkChoice>,
    /// Only in the final chunk, with `stream_options.include_usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageOut>,
    /// Extension (ondevice): the retrieved chunks, in the first chunk only, when the request named
    /// a collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<crate::augment::Source>>,
}

/// A choice of a chunk.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChunkChoice {
    /// Always 0.
    pub index: u32,
    /// What is new.
    pub delta: Delta,
    /// Always null.
    pub logprobs: Option<serde_json::Value>,
    /// Set on the last content chunk.
    pub finish_reason: Option<String>,
}

/// New content of a chunk.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct Delta {
    /// `assistant`, in the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// A text completion (also the shape of each streamed event, with `object` `text_completion`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Completion {
    /// `cmpl-…`.
    pub id: String,
    /// `text_completion`.
    pub object: String,
    /// Unix seconds.
    pub created: i64,
    /// The model.
    pub model: String,
    /// The runtime instance that answered.
    pub system_fingerprint: Option<String>,
    /// One choice (none in the final usage event of a stream).
    pub choices: Vec<CompletionChoice>,
    /// Token counts (streams: only in the final usage event).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageOut>,
}

/// A choice of a text completion.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CompletionChoice {
    /// The text.
    pub text: String,
    /// Always 0.
    pub index: u32,
    /// Always null.
    pub logprobs: Option<serde_json::Value>,
    /// `stop` or `length`; null until the last event of a stream.
    pub finish_reason: Option<String>,
}

/// Body of `POST /v1/embeddings`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EmbeddingRequest {
    /// Model name.
    #[schema(min_length = 1)]
    pub model: String,
    /// One text or several (token arrays are not supported).
    #[schema(schema_with = crate::generation::inputs_schema)]
    pub input: OneOrMany,
    /// `float` (default) or `base64` (little-endian f32).
    #[schema(pattern = "^(float|base64)$")]
    pub encoding_format: Option<String>,
    /// Not supported: a request that sets it is refused (400), so it is left out of the schema.
    #[schema(ignore)]
    #[serde(default, deserialize_with = "crate::routes::lenient::opt_int")]
    pub dimensions: Option<u32>,
}

/// The embeddings.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EmbeddingList {
    /// `list`.
    pub object: String,
    /// One per input, in order.
    pub data: Vec<EmbeddingOut>,
    /// The model.
    pub model: String,
    /// Token counts.
    pub usage: EmbeddingUsage,
}

/// One embedding.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EmbeddingOut {
    /// `embedding`.
    pub object: String,
    /// Position of the input.
    pub index: usize,
    /// Floats, or a base64 string of little-endian f32 (`encoding_format: "base64"`).
    pub embedding: EmbeddingVector,
}

/// An embedding as `encoding_format` asked for it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingVector {
    /// `float` (the default): the numbers.
    Float(Vec<f32>),
    /// `base64`: the little-endian f32 bytes, base64-encoded.
    Base64(String),
}

/// Token counts of an embedding request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EmbeddingUsage {
    /// Tokens in the inputs.
    pub prompt_tokens: u32,
    /// Same as `prompt_tokens`.
    pub total_tokens: u32,
}

/// `GET /v1/models`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    /// `list`.
    pub object: String,
    /// The models.
    pub data: Vec<ModelOut>,
}

/// One model.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelOut {
    /// `name:tag`.
    pub id: String,
    /// `model`.
    pub object: String,
    /// Unix seconds it was added (0 when unknown).
    pub created: i64,
    /// `ondevice`.
    pub owned_by: String,
}

impl ModelOut {
    /// The OpenAI view of a model entry.
    pub fn of(m: &ondevice_runtime::ModelEntry) -> ModelOut {
        ModelOut {
            id: m.name.clone(),
            object: "model".to_owned(),
            created: m.created.unwrap_or(0),
            owned_by: "ondevice".to_owned(),
        }
    }
}

/// Answer of `DELETE /v1/models/{model}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelDeleted {
    /// The model's `name:tag`.
    pub id: String,
    /// `model`.
    pub object: String,
    /// Always true (a failure is an error answer).
    pub deleted: bool,
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest(msg.into())
}

fn only_one_choice(n: Option<u32>) -> Result<(), ApiError> {
    match n {
        None | Some(1) => Ok(()),
        Some(n) => Err(invalid(format!("n = {n} is not supported: ondevice returns exactly one choice (n = 1)"))),
    }
}

/// Common sampling fields of chat and text completions.
struct SamplingIn {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    seed: Option<i64>,
    max_tokens: Option<u32>,
    stop: Option<OneOrMany>,
}

impl SamplingIn {
    fn into_domain(self, constraint: Option<Constraint>) -> Result<Sampling, ApiError> {
        let sampling = Sampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            // OpenAI seeds are signed; the bits are what makes sampling reproducible.
            seed: self.seed.map(|s| s as u64),
            max_tokens: self.max_tokens,
            stop: self.stop.map(OneOrMany::into_vec).unwrap_or_default(),
            constraint,
        };
        if sampling.stop.len() > 16 {
            return Err(invalid("at most 16 stop strings are supported"));
        }
        check_sampling(&sampling)?;
        Ok(sampling)
    }
}

impl ResponseFormat {
    fn into_constraint(self) -> Result<Option<Constraint>, ApiError> {
        Ok(match self {
            ResponseFormat::Text => None,
            ResponseFormat::JsonObject => Some(Constraint::Json),
            ResponseFormat::JsonSchema { json_schema } => match json_schema.schema {
                Some(schema) if schema.is_object() => Some(Constraint::JsonSchema(schema)),
                Some(_) => return Err(invalid("response_format.json_schema.schema must be a JSON object")),
                None => Some(Constraint::Json),
            },
        })
    }
}

impl MessageContent {
    fn into_text(self) -> Result<String, ApiError> {
        match self {
            MessageContent::Text(t) => Ok(t),
            MessageContent::Parts(parts) => {
                let mut text = String::new();
                for p in parts {
                    match (p.kind.as_str(), p.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(invalid(format!(
                                "content parts of type {kind:?} are not supported: send text parts only"
                            )));
                        }
                    }
                }
                Ok(text)
            }
        }
    }
}

impl ChatCompletionRequest {
    /// Whether to stream, and whether to end the stream with a usage chunk.
    pub fn streaming(&self) -> (bool, bool) {
        (self.stream.unwrap_or(false), self.stream_options.as_ref().is_some_and(|o| o.include_usage))
    }

    /// The domain request, and the prompt pack and collection to apply to it
    /// ([`crate::augment`]).
    pub fn into_domain(self) -> Result<(GenerateRequest, crate::augment::Augment), ApiError> {
        only_one_choice(self.n)?;
        if self.messages.is_empty() && self.prompt_pack.is_none() {
            return Err(invalid("messages must hold at least one message (or name a prompt_pack)"));
        }
        let augment = crate::augment::Augment { prompt_pack: self.prompt_pack, collection: self.collection };
        let messages = self
            .messages
            .into_iter()
            .map(|m| {
                let role = Role::parse(&m.role)?;
                let content = m.content.map(MessageContent::into_text).transpose()?.unwrap_or_default();
                Ok(ChatMessage::new(role, content))
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let constraint = self.response_format.map(ResponseFormat::into_constraint).transpose()?.flatten();
        let sampling = SamplingIn {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed,
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            stop: self.stop,
        }
        .into_domain(constraint)?;
        Ok((GenerateRequest { model: self.model, prompt: Prompt::Chat(messages), sampling, keep_alive: None }, augment))
    }
}

impl CompletionRequest {
    /// Whether to stream, and whether to end the stream with a usage event.
    pub fn streaming(&self) -> (bool, bool) {
        (self.stream.unwrap_or(false), self.stream_options.as_ref().is_some_and(|o| o.include_usage))
    }

    /// The domain request: the prompt is sent raw, without a chat template (special-token texts
    /// in it are special tokens: the caller writes the whole prompt, markup included).
    pub fn into_domain(self) -> Result<GenerateRequest, ApiError> {
        only_one_choice(self.n)?;
        if self.echo == Some(true) {
            return Err(invalid("echo is not supported"));
        }
        let mut prompts = self.prompt.into_vec();
        if prompts.len() != 1 {
            return Err(invalid(format!("prompt must be one string, got a list of {}", prompts.len())));
        }
        let prompt = prompts.remove(0);
        let sampling = SamplingIn {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed,
            max_tokens: Some(self.max_tokens.unwrap_or(COMPLETIONS_DEFAULT_MAX_TOKENS)),
            stop: self.stop,
        }
        .into_domain(None)?;
        Ok(GenerateRequest {
            model: self.model,
            prompt: Prompt::Text { prompt, raw: true },
            sampling,
            keep_alive: None,
        })
    }
}

/// Encodes bytes as standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (raw, enc) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(base64(raw.as_bytes()), enc, "{raw:?}");
        }
    }

    #[test]
    fn chat_requests_convert_with_their_options() {
        let req: ChatCompletionRequest = serde_json::from_value(serde_json::json!({
            "model": "m", "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "!"}]},
                {"role": "assistant", "content": null}
            ],
            "max_tokens": 5, "max_completion_tokens": 7, "stop": "x", "seed": -1, "frequency_penalty": 1.0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}},
            "tools": [], "user": "someone"
        }))
        .unwrap();
        let (d, augment) = req.into_domain().unwrap();
        assert!(augment.is_empty());
        let Prompt::Chat(m) = &d.prompt else { panic!("{d:?}") };
        assert_eq!(m[0], ChatMessage::new(Role::System, "be brief"));
        assert_eq!(m[1].content, "hi!");
        assert_eq!(m[2], ChatMessage::new(Role::Assistant, ""));
        assert_eq!(d.sampling.max_tokens, Some(7));
        assert_eq!(d.sampling.stop, vec!["x"]);
        assert_eq!(d.sampling.seed, Some(u64::MAX));
        assert_eq!(d.sampling.constraint, Some(Constraint::JsonSchema(serde_json::json!({"type": "object"}))));
    }

    #[test]
    fn impossible_requests_are_refused() {
        for bad in [
            serde_json::json!({"model": "m", "messages": []}),
            serde_json::json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}),
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}),
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": -1}),
        ] {
            let req: ChatCompletionRequest = serde_json::from_value(bad.clone()).unwrap();
            assert!(req.into_domain().is_err(), "{bad}");
        }
        // Without messages a prompt pack is the conversation; unknown extension keys are refused.
        let req: ChatCompletionRequest = serde_json::from_value(serde_json::json!({
            "model": "m", "prompt_pack": {"name": "summarize@^1", "variables": {"text": "t"}},
            "collection": {"name": "docs", "top_k": 2, "filter": {"ext": "md"}}
        }))
        .unwrap();
        let (d, augment) = req.into_domain().unwrap();
        assert_eq!(d.prompt, Prompt::Chat(Vec::new()));
        assert_eq!(augment.prompt_pack.unwrap().variables["text"], "t");
        assert_eq!(augment.collection.unwrap().top_k, Some(2));
        for bad in [
            serde_json::json!({"model": "m", "messages": [], "collection": {"name": "docs"}}),
            serde_json::json!({"model": "m", "prompt_pack": {"name": "p", "vars": {}}}),
        ] {
            let parsed = serde_json::from_value::<ChatCompletionRequest>(bad.clone());
            assert!(parsed.map_err(|_| ()).and_then(|r| r.into_domain().map_err(|_| ())).is_err(), "{bad}");
        }
        let req: CompletionRequest =
            serde_json::from_value(serde_json::json!({"model": "m", "prompt": ["a", "b"]})).unwrap();
        assert!(req.into_domain().is_err());
    }

    #[test]
    fn completions_default_to_16_tokens_as_openai_documents() {
        let req: CompletionRequest = serde_json::from_value(serde_json::json!({"model": "m", "prompt": "a"})).unwrap();
        assert_eq!(req.into_domain().unwrap().sampling.max_tokens, Some(16));
        let req: CompletionRequest =
            serde_json::from_value(serde_json::json!({"model": "m", "prompt": "a", "max_tokens": 300})).unwrap();
        assert_eq!(req.into_domain().unwrap().sampling.max_tokens, Some(300));
    }
}
