//! The worker protocol: JSON over HTTP/1.1 on a Unix socket between the daemon and one
//! `ondevice worker` process (which serves exactly one model file).
//!
//! | method and path   | body              | answer                                              |
//! |-------------------|-------------------|-----------------------------------------------------|
//! | `GET /health`     | —                 | [`HealthReply`] (200 once the model is loaded)      |
//! | `POST /generate`  | [`GenerateBody`]  | NDJSON, one [`WireEvent`] per line, ends with `done` or `error` |
//! | `POST /embed`     | [`EmbedBody`]     | [`EmbedReply`]                                      |
//! | `POST /tokenize`  | [`TokenizeBody`]  | [`TokenizeReply`]                                   |
//!
//! Errors are a non-2xx status with a [`WireError`] body. Closing the connection while a generation
//! streams cancels it and frees its slot. These are wire types: the daemon and the worker convert them
//! to and from the domain types with the `From` impls below.

use serde::{Deserialize, Serialize};

/// The largest request body a worker accepts, in bytes. The daemon's public limit
/// (`server.body_limit`) is at most [`MAX_PUBLIC_BODY`], and a request re-encoded for the worker
/// is never much larger than the body it came in, so whatever the daemon accepted the worker accepts
/// too: a too-long prompt is refused by the engine with a status saying why, not by the socket.
pub const MAX_BODY: usize = MAX_PUBLIC_BODY + (64 << 20);

/// The largest public body limit the daemon can be configured with (`server.body_limit`), 1 GiB.
pub const MAX_PUBLIC_BODY: usize = 1 << 30;

use crate::{ChatMessage, Constraint, Event, FinishReason, Prompt, Role, RuntimeError, Sampling, Timings, Usage};

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReply {
    /// `ready` once the model is loaded.
    pub status: String,
    /// The model file's name as loaded.
    pub model: String,
    /// Context length per sequence.
    pub n_ctx: u32,
    /// Concurrent sequences the worker runs.
    pub slots: u32,
    /// Sequences running now.
    pub busy: u32,
    /// Whether the worker can pool embeddings.
    pub embeddings: bool,
}

/// A chat message on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Text.
    pub content: String,
}

/// The input of a generation on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WirePrompt {
    /// Rendered with the model's chat template by the worker.
    Chat {
        /// The conversation.
        messages: Vec<WireMessage>,
    },
    /// Plain text; `raw` skips the template.
    Text {
        /// The text.
        prompt: String,
        /// Skip the chat template.
        #[serde(default)]
        raw: bool,
    },
}

/// Sampling on the wire; absent fields use the worker's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WireSampling {
    /// See [`Sampling::temperature`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// See [`Sampling::top_k`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// See [`Sampling::top_p`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// See [`Sampling::min_p`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    /// See [`Sampling::repeat_penalty`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeat_penalty: Option<f32>,
    /// See [`Sampling::seed`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// See [`Sampling::max_tokens`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// See [`Sampling::stop`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// A GBNF grammar.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grammar: Option<String>,
    /// Any JSON value.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub json: bool,
    /// JSON matching this schema.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<serde_json::Value>,
}

/// `POST /generate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateBody {
    /// What to continue.
    pub prompt: WirePrompt,
    /// How to sample.
    #[serde(default)]
    pub sampling: WireSampling,
}

/// One NDJSON line of a generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WireEvent {
    /// Generated text.
    Token {
        /// The text.
        text: String,
    },
    /// The last line of a successful generation.
    Done {
        /// `stop`, `length` or `cancelled`.
        finish_reason: String,
        /// Prompt token count.
        prompt_tokens: u32,
        /// Generated token count.
        completion_tokens: u32,
        /// Prompt processing time in milliseconds.
        #[serde(default)]
        prompt_ms: f64,
        /// Generation time after the first token in milliseconds.
        #[serde(default)]
        generation_ms: f64,
    },
    /// The last line of a failed generation.
    Error {
        /// Machine-readable code.
        code: String,
        /// What happened.
        message: String,
    },
}

/// `POST /embed`. The worker embeds one input at a time between generation steps and stops when
/// the connection closes or `timeout_ms` has passed (answering `timeout`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedBody {
    /// Texts.
    pub input: Vec<String>,
    /// Unit-length vectors.
    #[serde(default)]
    pub normalize: bool,
    /// Tokens one input may have; more is refused (`too_large`) before any work is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_tokens: Option<u32>,
    /// Milliseconds the daemon waits for the answer; the worker stops computing after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// Answer to `POST /embed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedReply {
    /// One vector per input.
    pub embeddings: Vec<Vec<f32>>,
    /// Tokens processed.
    pub prompt_tokens: u32,
}

/// `POST /tokenize`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizeBody {
    /// Text (special-token texts are parsed; ignored when `prompt` is given).
    #[serde(default)]
    pub text: String,
    /// A prompt to tokenize exactly as a generation would (chat template applied, message
    /// content as plain text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<WirePrompt>,
}

/// Answer to `POST /tokenize`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizeReply {
    /// Token ids.
    pub tokens: Vec<u32>,
}

/// A failed request's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireError {
    /// Machine-readable code (see [`RuntimeError::code`]).
    pub code: String,
    /// What happened.
    pub message: String,
}

impl From<&Prompt> for WirePrompt {
    fn from(p: &Prompt) -> Self {
        match p {
            Prompt::Chat(messages) => WirePrompt::Chat {
                messages: messages
                    .iter()
                    .map(|m| WireMessage { role: m.role.as_str().to_owned(), content: m.content.clone() })
                    .collect(),
            },
            Prompt::Text { prompt, raw } => WirePrompt::Text { prompt: prompt.clone(), raw: *raw },
        }
    }
}

impl TryFrom<WirePrompt> for Prompt {
    type Error = RuntimeError;
    fn try_from(p: WirePrompt) -> Result<Self, RuntimeError> {
        Ok(match p {
            WirePrompt::Chat { messages } => Prompt::Chat(
                messages
                    .into_iter()
                    .map(|m| Ok(ChatMessage { role: Role::parse(&m.role)?, content: m.content }))
                    .collect::<Result<_, RuntimeError>>()?,
            ),
            WirePrompt::Text { prompt, raw } => Prompt::Text { prompt, raw },
        })
    }
}

impl From<&Sampling> for WireSampling {
    fn from(s: &Sampling) -> Self {
        let (grammar, json, json_schema) = match &s.constraint {
            None => (None, false, None),
            Some(Constraint::Grammar(g)) => (Some(g.clone()), false, None),
            Some(Constraint::Json) => (None, true, None),
            Some(Constraint::JsonSchema(v)) => (None, true, Some(v.clone())),
        };
        WireSampling {
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            min_p: s.min_p,
            repeat_penalty: s.repeat_penalty,
            seed: s.seed,
            max_tokens: s.max_tokens,
            stop: s.stop.clone(),
            grammar,
            json,
            json_schema,
        }
    }
}

impl From<WireSampling> for Sampling {
    fn from(s: WireSampling) -> Self {
        let constraint = match (s.grammar, s.json, s.json_schema) {
            (Some(g), _, _) => Some(Constraint::Grammar(g)),
            (None, _, Some(schema)) => Some(Constraint::JsonSchema(schema)),
            (None, true, None) => Some(Constraint::Json),
            (None, false, None) => None,
        };
        Sampling {
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            min_p: s.min_p,
            repeat_penalty: s.repeat_penalty,
            seed: s.seed,
            max_tokens: s.max_tokens,
            stop: s.stop,
            constraint,
        }
    }
}

impl From<&Event> for WireEvent {
    fn from(e: &Event) -> Self {
        match e {
            Event::Token(text) => WireEvent::Token { text: text.clone() },
            Event::Done { finish, usage, timings } => WireEvent::Done {
                finish_reason: finish.as_str().to_owned(),
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                prompt_ms: timings.map_or(0.0, |t| t.prompt.as_secs_f64() * 1000.0),
                generation_ms: timings.map_or(0.0, |t| t.generation.as_secs_f64() * 1000.0),
            },
        }
    }
}

impl WireEvent {
    /// The domain event; a wire `error` line becomes the error its code stands for
    /// ([`RuntimeError::from_code`], given the calling `adapter` and the limit `after` it set).
    pub fn into_event(self, adapter: &str, after: std::time::Duration) -> Result<Event, RuntimeError> {
        match self {
            WireEvent::Token { text } => Ok(Event::Token(text)),
            WireEvent::Done { finish_reason, prompt_tokens, completion_tokens, prompt_ms, generation_ms } => {
                let finish = match finish_reason.as_str() {
                    "stop" => FinishReason::Stop,
                    "length" => FinishReason::Length,
                    "cancelled" => FinishReason::Cancelled,
                    other => {
                        return Err(RuntimeError::Engine { message: format!("unknown finish reason {other:?}") });
                    }
                };
                let ms = |v: f64| std::time::Duration::from_secs_f64((v.max(0.0)) / 1000.0);
                Ok(Event::Done {
                    finish,
                    usage: Usage { prompt_tokens, completion_tokens },
                    timings: Some(Timings { prompt: ms(prompt_ms), generation: ms(generation_ms) }),
                })
            }
            WireEvent::Error { code, message } => Err(RuntimeError::from_code(&code, message, adapter, after)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_round_trips_through_the_wire() {
        let s = Sampling {
            temperature: Some(0.0),
            top_k: Some(40),
            seed: Some(7),
            stop: vec!["\n".into()],
            constraint: Some(Constraint::JsonSchema(serde_json::json!({"type": "object"}))),
            ..Default::default()
        };
        let json = serde_json::to_string(&WireSampling::from(&s)).unwrap();
        let back: WireSampling = serde_json::from_str(&json).unwrap();
        assert_eq!(Sampling::from(back), s);
        assert!(!json.contains("top_p"), "absent fields stay absent: {json}");
    }

    #[test]
    fn events_round_trip_and_errors_become_errors() {
        let line = serde_json::to_string(&WireEvent::from(&Event::Token("Par".into()))).unwrap();
        assert_eq!(line, r#"{"type":"token","text":"Par"}"#);
        let back: WireEvent = serde_json::from_str(&line).unwrap();
        assert_eq!(back.into_event("embedded", std::time::Duration::ZERO).unwrap(), Event::Token("Par".into()));
        let err: WireEvent =
            serde_json::from_str(r#"{"type":"error","code":"engine_error","message":"boom"}"#).unwrap();
        assert_eq!(
            err.into_event("embedded", std::time::Duration::ZERO).unwrap_err(),
            RuntimeError::Engine { message: "boom".into() }
        );
        let bad: WireEvent =
            serde_json::from_str(r#"{"type":"done","finish_reason":"nope","prompt_tokens":1,"completion_tokens":2}"#)
                .unwrap();
        assert!(bad.into_event("embedded", std::time::Duration::ZERO).is_err());
    }

    #[test]
    fn unknown_roles_are_refused() {
        let p = WirePrompt::Chat { messages: vec![WireMessage { role: "root".into(), content: "x".into() }] };
        assert!(matches!(Prompt::try_from(p), Err(RuntimeError::InvalidRequest { .. })));
    }
}
