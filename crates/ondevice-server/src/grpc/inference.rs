//! `ondevice.v1.InferenceService`: Chat and Generate as server streams of `GenerateResponse`
//! (one message per chunk of text, the last with `finish_reason`, `usage`, `adapter` and `model`),
//! and Embed. The runtime that answers is also named in the initial metadata
//! `x-ondevice-adapter`. A failure after the stream started ends it with the mapped `Status`; a
//! client that cancels drops the stream, which cancels the generation. A Chat may name a
//! `prompt_pack` and a `collection` ([`crate::augment`]); with a collection the first message
//! carries the retrieved `sources` and no text.

use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use ondevice_proto::v1 as pb;
use ondevice_proto::v1::inference_service_server::InferenceService;
use ondevice_runtime::{ChatMessage, Constraint, EmbedRequest, GenerateRequest, Prompt, Role, Sampling};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::augment::{Augment, CollectionIn, PromptPackIn, Source};
use crate::error::ApiError;
use crate::generation::{self, ADAPTER_HEADER, Step, check_sampling};
use crate::state::AppState;

pub(super) struct InferenceImpl {
    pub state: AppState,
}

type GenerateStream = Pin<Box<dyn Stream<Item = Result<pb::GenerateResponse, Status>> + Send>>;

fn invalid(msg: impl Into<String>) -> Status {
    ApiError::InvalidRequest(msg.into()).to_status()
}

fn sampling(options: Option<pb::SamplingOptions>) -> Result<Sampling, Status> {
    let o = options.unwrap_or_default();
    let constraint = match (o.grammar, o.json_schema, o.json) {
        (None, None, false) => None,
        (Some(g), None, false) => Some(Constraint::Grammar(g)),
        (None, Some(s), false) => {
            let schema: serde_json::Value =
                serde_json::from_str(&s).map_err(|e| invalid(format!("json_schema is not JSON: {e}")))?;
            Some(Constraint::JsonSchema(schema))
        }
        (None, None, true) => Some(Constraint::Json),
        _ => return Err(invalid("set at most one of grammar, json_schema and json")),
    };
    let s = Sampling {
        temperature: o.temperature,
        top_k: o.top_k,
        top_p: o.top_p,
        min_p: o.min_p,
        repeat_penalty: o.repeat_penalty,
        seed: o.seed,
        max_tokens: o.max_tokens,
        stop: o.stop,
        constraint,
    };
    check_sampling(&s).map_err(|e| e.to_status())?;
    Ok(s)
}

fn augment(pack: Option<pb::ChatPromptPack>, retrieval: Option<pb::ChatRetrieval>) -> Result<Augment, Status> {
    let json_object = |what: &str, text: &str| -> Result<Option<serde_json::Value>, Status> {
        if text.trim().is_empty() {
            return Ok(None);
        }
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| invalid(format!("{what} is not JSON: {e}")))?;
        if !v.is_object() {
            return Err(invalid(format!("{what} must be a JSON object")));
        }
        Ok(Some(v))
    };
    let prompt_pack = match pack {
        Some(p) => {
            let variables = match json_object("prompt_pack.variables_json", &p.variables_json)? {
                Some(serde_json::Value::Object(m)) => m,
                _ => serde_json::Map::new(),
            };
            Some(PromptPackIn { name: p.name, variables, budget: p.budget })
        }
        None => None,
    };
    let collection = match retrieval {
        Some(r) => Some(CollectionIn {
            name: r.name,
            top_k: r.top_k,
            filter: json_object("collection.filter_json", &r.filter_json)?,
            query: Some(r.query).filter(|q| !q.is_empty()),
        }),
        None => None,
    };
    Ok(Augment { prompt_pack, collection })
}

fn source(s: Source) -> pb::ChatSource {
    pb::ChatSource {
        id: s.id,
        document: s.document,
        chunk: s.chunk,
        source: s.source,
        metadata_json: serde_json::Value::Object(s.metadata).to_string(),
        score: s.score,
        text: s.text,
    }
}

impl InferenceImpl {
    async fn stream(&self, mut request: GenerateRequest, augment: Augment) -> Result<Response<GenerateStream>, Status> {
        let sources = crate::augment::apply(&self.state, &mut request, augment).await.map_err(|e| e.to_status())?;
        let started = generation::start(&self.state, request).await.map_err(|e| e.to_status())?;
        let adapter = started.adapter.clone();
        let model = started.model.clone();
        let steps = generation::steps(started, self.state.shutdown_token().clone());
        let adapter_field = adapter.clone();
        let messages = steps.map(move |step| match step {
            Step::Token(text) => Ok(pb::GenerateResponse { text, ..Default::default() }),
            Step::Done(f) => Ok(pb::GenerateResponse {
                text: String::new(),
                finish_reason: f.finish.as_str().to_owned(),
                usage: Some(pb::Usage {
                    prompt_tokens: f.usage.prompt_tokens,
                    completion_tokens: f.usage.completion_tokens,
                }),
                adapter: adapter_field.clone(),
                model: model.clone(),
                sources: Vec::new(),
            }),
            Step::Failed(e) => Err(ApiError::from(e).to_status()),
        });
        let first = sources
            .map(|s| Ok(pb::GenerateResponse { sources: s.into_iter().map(source).collect(), ..Default::default() }));
        let messages = futures_util::stream::iter(first).chain(messages);
        let mut resp = Response::new(Box::pin(messages) as GenerateStream);
        if let Ok(v) = MetadataValue::try_from(adapter.as_str()) {
            resp.metadata_mut().insert(ADAPTER_HEADER, v);
        }
        Ok(resp)
    }
}

#[tonic::async_trait]
impl InferenceService for InferenceImpl {
    type ChatStream = GenerateStream;
    type GenerateStream = GenerateStream;

    async fn chat(&self, req: Request<pb::ChatRequest>) -> Result<Response<GenerateStream>, Status> {
        let req = req.into_inner();
        if req.messages.is_empty() && req.prompt_pack.is_none() {
            return Err(invalid("messages must hold at least one message (or name a prompt_pack)"));
        }
        let augment = augment(req.prompt_pack, req.collection)?;
        let messages = req
            .messages
            .into_iter()
            .map(|m| Ok(ChatMessage::new(Role::parse(&m.role).map_err(|e| ApiError::from(e).to_status())?, m.content)))
            .collect::<Result<Vec<_>, Status>>()?;
        self.stream(
            GenerateRequest {
                model: req.model,
                prompt: Prompt::Chat(messages),
                sampling: sampling(req.options)?,
                keep_alive: req.keep_alive_seconds.map(Duration::from_secs),
            },
            augment,
        )
        .await
    }

    async fn generate(&self, req: Request<pb::GenerateRequest>) -> Result<Response<GenerateStream>, Status> {
        let req = req.into_inner();
        self.stream(
            GenerateRequest {
                model: req.model,
                prompt: Prompt::Text { prompt: req.prompt, raw: req.raw },
                sampling: sampling(req.options)?,
                keep_alive: req.keep_alive_seconds.map(Duration::from_secs),
            },
            Augment::default(),
        )
        .await
    }

    async fn embed(&self, req: Request<pb::EmbedRequest>) -> Result<Response<pb::EmbedResponse>, Status> {
        let req = req.into_inner();
        if req.input.is_empty() {
            return Err(invalid("input must hold at least one text"));
        }
        let inference = self.state.require_inference().map_err(|e| e.to_status())?;
        let out = inference
            .embed(EmbedRequest { model: req.model, input: req.input, normalize: req.normalize })
            .await
            .map_err(|e| ApiError::from(e).to_status())?;
        let mut resp = Response::new(pb::EmbedResponse {
            embeddings: out.vectors.into_iter().map(|values| pb::Embedding { values }).collect(),
            usage: Some(pb::Usage { prompt_tokens: out.usage.prompt_tokens, completion_tokens: 0 }),
            adapter: out.adapter.clone(),
        });
        if let Ok(v) = MetadataValue::try_from(out.adapter.as_str()) {
            resp.metadata_mut().insert(ADAPTER_HEADER, v);
        }
        Ok(resp)
    }
}
