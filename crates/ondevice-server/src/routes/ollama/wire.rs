//! Ollama wire types (`/api/chat`, `/api/generate`, `/api/embed`, `/api/embeddings`,
//! `/api/tags`, `/api/ps`) and their conversions to the runtime's domain types. Unknown fields and
//! unknown `options` are ignored, as Ollama does.

use std::time::Duration;

use ondevice_runtime::{ChatMessage, Constraint, GenerateRequest, Prompt, Role, Sampling};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::generation::{OneOrMany, check_sampling};

/// Body of `POST /api/chat`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatRequest {
    /// Model name.
    #[schema(min_length = 1)]
    pub model: String,
    /// The conversation (an empty list just loads the model).
    #[serde(default)]
    pub messages: Vec<Message>,
    /// Stream NDJSON (default true).
    pub stream: Option<bool>,
    /// `"json"` or a JSON schema.
    #[schema(schema_with = format_schema)]
    pub format: Option<serde_json::Value>,
    /// Sampling options.
    pub options: Option<Options>,
    /// How long to keep the model loaded: a duration (`"5m"`), seconds, or negative for ever.
    #[schema(schema_with = keep_alive_schema)]
    pub keep_alive: Option<serde_json::Value>,
    /// Extension (ondevice): a prompt pack rendered server-side; its messages come before
    /// `messages` (which may then be empty).
    pub prompt_pack: Option<crate::augment::PromptPackIn>,
    /// Extension (ondevice): retrieve context from a collection (queried with the last user
    /// message); the chunks go into a system message and come back as `sources`.
    pub collection: Option<crate::augment::CollectionIn>,
}

/// Body of `POST /api/generate`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct GenerateRequestIn {
    /// Model name.
    #[schema(min_length = 1)]
    pub model: String,
    /// The prompt (empty: just load, or unload with `keep_alive: 0`).
    #[serde(default)]
    pub prompt: String,
    /// A system message (ignored with `raw`).
    pub system: Option<String>,
    /// Send the prompt without the chat template.
    #[serde(default)]
    pub raw: bool,
    /// Stream NDJSON (default true).
    pub stream: Option<bool>,
    /// `"json"` or a JSON schema.
    #[schema(schema_with = format_schema)]
    pub format: Option<serde_json::Value>,
    /// Sampling options.
    pub options: Option<Options>,
    /// How long to keep the model loaded.
    #[schema(schema_with = keep_alive_schema)]
    pub keep_alive: Option<serde_json::Value>,
    /// Images are not supported.
    #[schema(max_items = 0)]
    pub images: Option<Vec<String>>,
}

/// A chat message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    #[schema(pattern = "^(system|developer|user|assistant|tool)$")]
    pub role: String,
    /// Text.
    #[serde(default)]
    pub content: String,
    /// Images are not supported.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(max_items = 0)]
    pub images: Option<Vec<String>>,
}

/// Ollama's `options` (model options that need a reload, such as `num_ctx`, are ignored).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct Options {
    /// Tokens to generate; negative: until the model stops.
    #[serde(default, deserialize_with = "crate::routes::lenient::opt_int")]
    pub num_predict: Option<i64>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Keep the k most likely tokens.
    #[serde(default, deserialize_with = "crate::routes::lenient::opt_int")]
    pub top_k: Option<u32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Minimum relative probability.
    pub min_p: Option<f32>,
    /// Repetition penalty.
    pub repeat_penalty: Option<f32>,
    /// Seed; negative: random.
    #[serde(default, deserialize_with = "crate::routes::lenient::opt_int")]
    pub seed: Option<i64>,
    /// Stop strings.
    pub stop: Option<OneOrMany>,
}

/// One streamed object of `/api/chat`, and the whole answer without streaming.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChatResponse {
    /// The model.
    #[schema(min_length = 1)]
    pub model: String,
    /// RFC 3339 time.
    pub created_at: String,
    /// New content.
    pub message: Message,
    /// Whether this is the last object.
    pub done: bool,
    /// Final-object fields.
    #[serde(flatten)]
    pub stats: Option<Stats>,
    /// Extension (ondevice): the chunks retrieved from `collection`, in the first object of a
    /// stream (the only one without streaming); only when the request named a collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<crate::augment::Source>>,
}

/// One streamed object of `/api/generate`, and the whole answer without streaming.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GenerateResponse {
    /// The model.
    #[schema(min_length = 1)]
    pub model: String,
    /// RFC 3339 time.
    pub created_at: String,
    /// New text.
    pub response: String,
    /// Whether this is the last object.
    pub done: bool,
    /// Final-object fields.
    #[serde(flatten)]
    pub stats: Option<Stats>,
}

/// Fields of the last object: why it ended, counts and durations in nanoseconds.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    /// `stop`, `length`, `load` or `unload`.
    pub done_reason: String,
    /// From the request to the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_duration: Option<u64>,
    /// Routing and loading the model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_duration: Option<u64>,
    /// Prompt tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_eval_count: Option<u32>,
    /// Prompt processing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_eval_duration: Option<u64>,
    /// Generated tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_count: Option<u32>,
    /// Generation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_duration: Option<u64>,
}

/// Body of `POST /api/embed`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EmbedRequestIn {
    /// Model name.
    #[schema(min_length = 1)]
    pub model: String,
    /// One text or several.
    #[schema(schema_with = crate::generation::inputs_schema)]
    pub input: OneOrMany,
    /// How long to keep the model loaded (accepted; the runtime's default applies).
    #[schema(schema_with = keep_alive_schema)]
    pub keep_alive: Option<serde_json::Value>,
}

/// Answer of `POST /api/embed` (unit-length vectors).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EmbedResponse {
    /// The model.
    #[schema(min_length = 1)]
    pub model: String,
    /// One vector per input.
    pub embeddings: Vec<Vec<f32>>,
    /// Nanoseconds.
    pub total_duration: u64,
    /// Nanoseconds (always 0: loading is not measured separately).
    pub load_duration: u64,
    /// Input tokens.
    pub prompt_eval_count: u32,
}

/// Body of the legacy `POST /api/embeddings`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LegacyEmbedRequest {
    /// Model name.
    #[schema(min_length = 1)]
    pub model: String,
    /// The text.
    pub prompt: String,
}

/// Answer of the legacy `POST /api/embeddings` (not normalized, as Ollama's).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LegacyEmbedResponse {
    /// The vector.
    pub embedding: Vec<f32>,
}

/// `GET /api/tags`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Tags {
    /// Every model.
    pub models: Vec<TagModel>,
}

/// A model in `/api/tags`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TagModel {
    /// `name:tag`.
    pub name: String,
    /// `name:tag`.
    #[schema(min_length = 1)]
    pub model: String,
    /// RFC 3339 time it was added.
    pub modified_at: String,
    /// Bytes.
    pub size: u64,
    /// Hex digest without the `sha256:` prefix (empty when not in the registry).
    pub digest: String,
    /// Details.
    pub details: Details,
}

/// Model details.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct Details {
    /// Always empty.
    pub parent_model: String,
    /// `gguf` for registry models.
    pub format: String,
    /// Architecture.
    pub family: String,
    /// `[family]`.
    pub families: Vec<String>,
    /// Such as `135M`.
    pub parameter_size: String,
    /// Such as `Q4_1`.
    pub quantization_level: String,
}

/// `GET /api/ps`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Running {
    /// Loaded models, most recently used first.
    pub models: Vec<RunningModel>,
}

/// A loaded model.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunningModel {
    /// `name:tag`.
    pub name: String,
    /// `name:tag`.
    #[schema(min_length = 1)]
    pub model: String,
    /// Bytes accounted for it.
    pub size: u64,
    /// Hex digest, when known.
    pub digest: String,
    /// Details, when known.
    pub details: Details,
    /// RFC 3339 time it will be unloaded (far future: never).
    pub expires_at: String,
    /// Always 0: the engine runs on the CPU.
    pub size_vram: u64,
    /// The runtime holding it (ondevice extension).
    pub runtime: String,
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest(msg.into())
}

/// `format`: `"json"`, a schema object, or empty.
fn constraint(format: Option<serde_json::Value>) -> Result<Option<Constraint>, ApiError> {
    match format {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
        Some(serde_json::Value::String(s)) if s == "json" => Ok(Some(Constraint::Json)),
        Some(v @ serde_json::Value::Object(_)) => Ok(Some(Constraint::JsonSchema(v))),
        Some(other) => Err(invalid(format!("format must be \"json\" or a JSON schema object, got {other}"))),
    }
}

/// The schema of `keep_alive` as [`keep_alive`] reads it: a number of seconds (negative: keep
/// loaded), or a duration such as `"5m"`, `"1h30m"`, `"0"` or `"-1"`.
pub(crate) fn keep_alive_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    Schema::OneOf(
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Number)
                    .description(Some("Seconds; negative keeps the model loaded")),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(r"^(-?[0-9]+(\.[0-9]+)?|([0-9]+(ns|us|ms|s|m|h|d))+)$"))
                    .description(Some("A duration such as 5m or 1h30m, or seconds as text")),
            )
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .description(Some("How long to keep the model loaded after this request"))
            .build(),
    )
}

/// The schema of `format` as [`constraint`] reads it: `"json"`, a JSON schema object, or nothing.
pub(crate) fn format_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    Schema::OneOf(
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::String).enum_values(Some(["json", ""])))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Object)
                    .description(Some("A JSON schema the output must follow")),
            )
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .description(Some("Constrain the output: \"json\" or a JSON schema"))
            .build(),
    )
}

/// `keep_alive`: a duration string (`"5m"`, `"1h30m"`, `"0"`), a number of seconds, or negative
/// for "keep loaded".
pub fn keep_alive(v: Option<&serde_json::Value>) -> Result<Option<Duration>, ApiError> {
    let forever = Duration::from_secs(u64::from(u32::MAX));
    let from_secs = |s: f64| if s < 0.0 { forever } else { Duration::from_secs_f64(s.min(forever.as_secs_f64())) };
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => Ok(n.as_f64().map(from_secs)),
        Some(serde_json::Value::String(s)) => {
            let s = s.trim();
            if let Ok(secs) = s.parse::<f64>() {
                return Ok(Some(from_secs(secs)));
            }
            if s.starts_with('-') {
                return Ok(Some(forever));
            }
            humantime::parse_duration(s)
                .map(Some)
                .map_err(|e| invalid(format!("keep_alive {s:?} is not a duration such as \"5m\": {e}")))
        }
        Some(other) => Err(invalid(format!("keep_alive must be a duration or seconds, got {other}"))),
    }
}

impl Options {
    fn into_sampling(self, format: Option<serde_json::Value>) -> Result<Sampling, ApiError> {
        let sampling = Sampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed.filter(|s| *s >= 0).map(|s| s as u64),
            max_tokens: self.num_predict.filter(|n| *n > 0).map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            stop: self.stop.map(OneOrMany::into_vec).unwrap_or_default(),
            constraint: constraint(format)?,
        };
        check_sampling(&sampling)?;
        Ok(sampling)
    }
}

fn no_images(images: Option<&Vec<String>>) -> Result<(), ApiError> {
    if images.is_some_and(|i| !i.is_empty()) {
        return Err(invalid("images are not supported: ondevice serves text models"));
    }
    Ok(())
}

impl ChatRequest {
    /// The domain request and the prompt pack and collection to apply to it
    /// ([`crate::augment`]); `None` when there are no messages and no prompt pack (a load
    /// request).
    pub fn into_domain(self) -> Result<Option<(GenerateRequest, crate::augment::Augment)>, ApiError> {
        let keep_alive = keep_alive(self.keep_alive.as_ref())?;
        let sampling = self.options.unwrap_or_default().into_sampling(self.format)?;
        if self.messages.is_empty() && self.prompt_pack.is_none() {
            return Ok(None);
        }
        let augment = crate::augment::Augment { prompt_pack: self.prompt_pack, collection: self.collection };
        let messages = self
            .messages
            .into_iter()
            .map(|m| {
                no_images(m.images.as_ref())?;
                Ok(ChatMessage::new(Role::parse(&m.role)?, m.content))
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        Ok(Some((GenerateRequest { model: self.model, prompt: Prompt::Chat(messages), sampling, keep_alive }, augment)))
    }
}

impl GenerateRequestIn {
    /// The domain request; `None` when the prompt is empty (a load or unload request).
    pub fn into_domain(self) -> Result<Option<GenerateRequest>, ApiError> {
        no_images(self.images.as_ref())?;
        let keep_alive = keep_alive(self.keep_alive.as_ref())?;
        let sampling = self.options.unwrap_or_default().into_sampling(self.format)?;
        if self.prompt.is_empty() {
            return Ok(None);
        }
        let prompt = match (self.raw, self.system) {
            (false, Some(system)) if !system.is_empty() => {
                Prompt::Chat(vec![ChatMessage::new(Role::System, system), ChatMessage::new(Role::User, self.prompt)])
            }
            (raw, _) => Prompt::Text { prompt: self.prompt, raw },
        };
        Ok(Some(GenerateRequest { model: self.model, prompt, sampling, keep_alive }))
    }
}

/// `135M`, `1.7B`: Ollama's parameter size spelling.
pub fn parameter_size(n: Option<u64>) -> String {
    match n {
        None => String::new(),
        Some(n) if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
        Some(n) if n >= 1_000_000 => format!("{}M", (n as f64 / 1e6).round()),
        Some(n) => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keep_alive_forms() {
        assert_eq!(keep_alive(Some(&json!("5m"))).unwrap(), Some(Duration::from_secs(300)));
        assert_eq!(keep_alive(Some(&json!("1h30m"))).unwrap(), Some(Duration::from_secs(5400)));
        assert_eq!(keep_alive(Some(&json!(0))).unwrap(), Some(Duration::ZERO));
        assert_eq!(keep_alive(Some(&json!("0"))).unwrap(), Some(Duration::ZERO));
        assert!(keep_alive(Some(&json!(-1))).unwrap().unwrap() > Duration::from_secs(1 << 30));
        assert!(keep_alive(Some(&json!("-1m"))).unwrap().unwrap() > Duration::from_secs(1 << 30));
        assert!(keep_alive(Some(&json!("soon"))).is_err());
        assert_eq!(keep_alive(None).unwrap(), None);
    }

    #[test]
    fn generate_requests_map_system_raw_and_options() {
        let req: GenerateRequestIn = serde_json::from_value(json!({
            "model": "m", "prompt": "hi", "system": "be brief", "format": "json",
            "options": {"num_predict": -1, "seed": 42, "stop": ["\n"], "temperature": 0, "num_ctx": 4096}
        }))
        .unwrap();
        let d = req.into_domain().unwrap().unwrap();
        assert!(matches!(&d.prompt, Prompt::Chat(m) if m.len() == 2 && m[0].role == Role::System));
        assert_eq!(d.sampling.max_tokens, None);
        assert_eq!(d.sampling.seed, Some(42));
        assert_eq!(d.sampling.stop, vec!["\n"]);
        assert_eq!(d.sampling.constraint, Some(Constraint::Json));

        let raw: GenerateRequestIn =
            serde_json::from_value(json!({"model": "m", "prompt": "x", "system": "s", "raw": true})).unwrap();
        assert_eq!(raw.into_domain().unwrap().unwrap().prompt, Prompt::Text { prompt: "x".into(), raw: true });
        let load: GenerateRequestIn = serde_json::from_value(json!({"model": "m"})).unwrap();
        assert!(load.into_domain().unwrap().is_none());
        let bad: GenerateRequestIn = serde_json::from_value(json!({"model": "m", "prompt": "x", "format": 3})).unwrap();
        assert!(bad.into_domain().is_err());
    }

    #[test]
    fn parameter_sizes() {
        assert_eq!(parameter_size(Some(134_515_008)), "135M");
        assert_eq!(parameter_size(Some(1_710_000_000)), "1.7B");
        assert_eq!(parameter_size(None), "");
    }
}
