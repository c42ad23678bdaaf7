//! The one internal token stream every inference surface is fed from: [`start`] asks the
//! [`Inference`](ondevice_runtime::Inference) facade for a generation, [`steps`] turns its event
//! stream into [`Step`]s that always end with exactly one `Done` or `Failed`, and [`collect`]
//! gathers them for non-streaming answers. OpenAI SSE, Ollama NDJSON, the WebSocket and gRPC
//! only change how a step is framed.
//!
//! No task is spawned here: each surface polls the stream from the response body (or the socket
//! loop), so when a client goes away the stream is dropped and the runtime cancels the generation.

use std::pin::Pin;
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use axum::response::Response;
use futures_util::{Stream, StreamExt};
use ondevice_runtime::{Event, EventStream, FinishReason, GenerateRequest, RuntimeError, Timings, Usage};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::state::AppState;

/// The response header (and gRPC metadata key) naming the runtime that answered.
pub const ADAPTER_HEADER: &str = "x-ondevice-adapter";

/// A generation that has started: the runtime accepted it and tokens will follow.
pub(crate) struct Started {
    /// The runtime instance answering.
    pub adapter: String,
    /// The model as resolved (`name:tag`).
    pub model: String,
    /// The runtime's events.
    pub events: EventStream,
    /// When the request arrived.
    pub requested: Instant,
    /// How long routing and loading took.
    pub load: Duration,
}

/// Routes the request to a runtime through the inference facade.
pub(crate) async fn start(state: &AppState, request: GenerateRequest) -> Result<Started, ApiError> {
    let inference = state.require_inference()?;
    let requested = Instant::now();
    let generation = match inference.generate(request).await {
        Ok(g) => {
            state.metrics().observe_runtime(&g.adapter, true, requested.elapsed().as_secs_f64());
            g
        }
        Err(e) => {
            state.metrics().observe_runtime("none", false, requested.elapsed().as_secs_f64());
            return Err(e.into());
        }
    };
    Ok(Started {
        adapter: generation.adapter,
        model: generation.model,
        events: generation.events,
        requested,
        load: requested.elapsed(),
    })
}

/// How a generation ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Finished {
    pub finish: FinishReason,
    pub usage: Usage,
    pub timings: Option<Timings>,
}

/// One step of a generation as the surfaces see it.
#[derive(Debug)]
pub(crate) enum Step {
    /// Text produced.
    Token(String),
    /// The last step of a successful generation.
    Done(Finished),
    /// The last step of a failed one (the runtime failed, or the daemon is stopping).
    Failed(RuntimeError),
}

/// A stream of steps, boxed so surfaces can store it.
pub(crate) type Steps = Pin<Box<dyn Stream<Item = Step> + Send>>;

/// The steps of a started generation. Ends after one `Done` or `Failed`; a runtime stream that
/// ends without `Done` is reported as an engine failure, and a daemon shutdown as unavailable.
pub(crate) fn steps(started: Started, shutdown: CancellationToken) -> Steps {
    struct State {
        events: Option<EventStream>,
        adapter: String,
        shutdown: CancellationToken,
    }
    let init = State { events: Some(started.events), adapter: started.adapter, shutdown };
    Box::pin(futures_util::stream::unfold(init, |mut st| async move {
        let events = st.events.as_mut()?;
        let last = tokio::select! {
            biased;
            () = st.shutdown.cancelled() => Step::Failed(RuntimeError::Unavailable {
                adapter: st.adapter.clone(),
                reason: "the daemon is stopping".to_owned(),
            }),
            ev = events.next() => match ev {
                Some(Ok(Event::Token(t))) => return Some((Step::Token(t), st)),
                Some(Ok(Event::Done { finish, usage, timings })) => Step::Done(Finished { finish, usage, timings }),
                Some(Err(e)) => Step::Failed(e),
                None => Step::Failed(RuntimeError::Engine {
                    message: "the generation stream ended without a result".to_owned(),
                }),
            },
        };
        // Dropping the runtime's stream now frees its slot even if the client keeps reading.
        st.events = None;
        Some((last, st))
    }))
}

/// A whole generation, for non-streaming answers.
#[derive(Debug)]
pub(crate) struct Collected {
    pub text: String,
    pub finished: Finished,
    /// Time from the request to the first token (the whole time when none came).
    pub first_token: Duration,
}

/// Runs the generation to its end.
pub(crate) async fn collect(started: Started, shutdown: CancellationToken) -> Result<Collected, ApiError> {
    let requested = started.requested;
    let mut first_token = None;
    let mut steps = steps(started, shutdown);
    let mut text = String::new();
    while let Some(step) = steps.next().await {
        match step {
            Step::Token(t) => {
                first_token.get_or_insert_with(|| requested.elapsed());
                text.push_str(&t);
            }
            Step::Done(finished) => {
                let first_token = first_token.unwrap_or_else(|| requested.elapsed());
                return Ok(Collected { text, finished, first_token });
            }
            Step::Failed(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Internal("generation ended without a result".to_owned()))
}

/// Adds the `x-ondevice-adapter` header.
pub(crate) fn with_adapter(mut resp: Response, adapter: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(adapter) {
        resp.headers_mut().insert(ADAPTER_HEADER, v);
    }
    resp
}

/// A streaming response (SSE or NDJSON) whose body polls `frames`: when the client goes away
/// the body, and with it the generation, is dropped.
pub(crate) fn streaming_response<S>(frames: S, content_type: &'static str, adapter: &str) -> Response
where
    S: Stream<Item = String> + Send + 'static,
{
    let body = axum::body::Body::from_stream(frames.map(|f| Ok::<_, std::convert::Infallible>(f.into_bytes())));
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(axum::http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    with_adapter(resp, adapter)
}

/// Unix seconds now.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// A random-looking hex id for completions (not a secret: uniqueness is all that matters).
pub(crate) fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    let a = h.finish();
    h.write_u64(a);
    format!("{a:016x}{:08x}", h.finish() as u32)
}

/// The schema of an embeddings `input`: one non-empty text, or a non-empty list of them (an empty
/// text has no embedding: the server answers 400 naming its index).
pub(crate) fn inputs_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
    Schema::OneOf(
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::String).min_length(Some(1)))
            .item(
                ArrayBuilder::new()
                    .items(ObjectBuilder::new().schema_type(Type::String).min_length(Some(1)))
                    .min_items(Some(1)),
            )
            .description(Some("One non-empty text, or a non-empty list of non-empty texts"))
            .build(),
    )
}

/// The schema of a completions `prompt`: a text, or a list holding exactly one text.
pub(crate) fn prompt_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
    Schema::OneOf(
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::String))
            .item(
                ArrayBuilder::new()
                    .items(ObjectBuilder::new().schema_type(Type::String))
                    .min_items(Some(1))
                    .max_items(Some(1)),
            )
            .description(Some("The prompt: a text, or a list of exactly one text"))
            .build(),
    )
}

/// Parses a string of a list: the shape OpenAI and Ollama use for `stop` and `input`.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The strings.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Rejects sampling values no runtime can honour (negative, not finite).
pub(crate) fn check_sampling(s: &ondevice_runtime::Sampling) -> Result<(), ApiError> {
    let bad = |name: &str, v: Option<f32>, max: f32| {
        v.filter(|v| !v.is_finite() || *v < 0.0 || *v > max)
            .map(|v| ApiError::InvalidRequest(format!("{name} must be between 0 and {max}, got {v}")))
    };
    if let Some(e) = bad("temperature", s.temperature, 100.0)
        .or_else(|| bad("top_p", s.top_p, 1.0))
        .or_else(|| bad("min_p", s.min_p, 1.0))
        .or_else(|| bad("repeat_penalty", s.repeat_penalty, 100.0))
    {
        return Err(e);
    }
    if s.max_tokens == Some(0) {
        return Err(ApiError::InvalidRequest("max_tokens must be at least 1".to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use ondevice_runtime::FinishReason;

    fn started(events: Vec<Result<Event, RuntimeError>>) -> Started {
        Started {
            adapter: "test".to_owned(),
            model: "m:latest".to_owned(),
            events: Box::pin(stream::iter(events)),
            requested: Instant::now(),
            load: Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn steps_end_with_exactly_one_terminal_step() {
        let done = Event::Done { finish: FinishReason::Stop, usage: Usage::default(), timings: None };
        let all: Vec<Step> =
            steps(started(vec![Ok(Event::Token("a".into())), Ok(done)]), CancellationToken::new()).collect().await;
        assert!(matches!(all.as_slice(), [Step::Token(t), Step::Done(_)] if t == "a"), "{all:?}");

        let cut: Vec<Step> =
            steps(started(vec![Ok(Event::Token("a".into()))]), CancellationToken::new()).collect().await;
        assert!(matches!(cut.as_slice(), [Step::Token(_), Step::Failed(RuntimeError::Engine { .. })]), "{cut:?}");

        let stop = CancellationToken::new();
        stop.cancel();
        let stopped: Vec<Step> = steps(started(vec![Ok(Event::Token("a".into()))]), stop).collect().await;
        assert!(matches!(stopped.as_slice(), [Step::Failed(RuntimeError::Unavailable { .. })]), "{stopped:?}");
    }

    #[test]
    fn sampling_values_are_checked() {
        let mut s = ondevice_runtime::Sampling { temperature: Some(0.7), ..Default::default() };
        assert!(check_sampling(&s).is_ok());
        s.top_p = Some(1.5);
        assert!(check_sampling(&s).is_err());
        s.top_p = None;
        s.temperature = Some(f32::NAN);
        assert!(check_sampling(&s).is_err());
    }
}
