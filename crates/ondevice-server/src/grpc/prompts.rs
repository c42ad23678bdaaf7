//! `ondevice.v1.PromptService`: prompt packs over gRPC (list, get, render, publish, rollback,
//! delete). Scopes come from the method table in `grpc.rs`; domain errors map through `ApiError`
//! like HTTP.

use ondevice_prompts::archive::VerifyingKey;
use ondevice_prompts::library::VersionInfo;
use ondevice_prompts::service::RenderRequest;
use ondevice_prompts::{PackRef, PromptError};
use ondevice_proto::v1 as pb;
use ondevice_proto::v1::prompt_service_server::PromptService;
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::state::AppState;

pub(super) struct PromptsImpl {
    pub state: AppState,
}

fn status(e: impl Into<ApiError>) -> Status {
    e.into().to_status()
}

fn parse_ref(s: &str) -> Result<PackRef, Status> {
    s.parse::<PackRef>().map_err(|e: PromptError| status(e))
}

fn version(v: VersionInfo) -> pb::PromptVersion {
    pb::PromptVersion {
        name: v.name,
        version: v.version,
        digest: v.digest,
        description: v.description,
        labels: v.labels,
        signer: v.signer.unwrap_or_default(),
        published_at: v.published_at,
    }
}

#[tonic::async_trait]
impl PromptService for PromptsImpl {
    async fn list_prompts(
        &self,
        _req: Request<pb::ListPromptsRequest>,
    ) -> Result<Response<pb::ListPromptsResponse>, Status> {
        let svc = self.state.require_prompts().map_err(status)?;
        let packs = svc.list().await.map_err(status)?;
        Ok(Response::new(pb::ListPromptsResponse {
            packs: packs
                .into_iter()
                .map(|p| pb::PromptPack {
                    name: p.name,
                    current: p.current.unwrap_or_default(),
                    description: p.description,
                    labels: p.labels.into_iter().collect(),
                    versions: p.versions,
                })
                .collect(),
        }))
    }

    async fn get_prompt(&self, req: Request<pb::GetPromptRequest>) -> Result<Response<pb::PromptDetail>, Status> {
        let svc = self.state.require_prompts().map_err(status)?;
        let d = svc.show(parse_ref(&req.into_inner().reference)?).await.map_err(status)?;
        Ok(Response::new(pb::PromptDetail {
            version: Some(version(d.version)),
            versions: d.versions.into_iter().map(version).collect(),
            files: d.files.into_iter().collect(),
        }))
    }

    async fn render_prompt(
        &self,
        req: Request<pb::RenderPromptRequest>,
    ) -> Result<Response<pb::RenderPromptResponse>, Status> {
        let svc = self.state.require_prompts().map_err(status)?;
        let r = req.into_inner();
        let variables = if r.variables_json.trim().is_empty() {
            Default::default()
        } else {
            serde_json::from_str(&r.variables_json)
                .map_err(|e| status(ApiError::InvalidRequest(format!("variables_json is not a JSON object: {e}"))))?
        };
        let request = RenderRequest {
            reference: parse_ref(&r.reference)?,
            variables,
            model: r.model,
            budget: r.budget.map(|b| usize::try_from(b).unwrap_or(usize::MAX)),
            embedding_model: r.embedding_model,
        };
        let out = svc.render(request).await.map_err(status)?;
        Ok(Response::new(pb::RenderPromptResponse {
            name: out.name,
            version: out.version,
            digest: out.digest,
            messages: out
                .messages
                .into_iter()
                .map(|m| pb::PromptMessage { role: m.role.as_str().to_owned(), content: m.content })
                .collect(),
            tokens: out.tokens as u64,
            tokenizer: out.tokenizer,
            budget: out.compression.as_ref().map(|c| c.budget as u64),
            tokens_before: out.compression.as_ref().map(|c| c.tokens_before as u64),
        }))
    }

    async fn publish_prompt(
        &self,
        req: Request<pb::PublishPromptRequest>,
    ) -> Result<Response<pb::PublishPromptResponse>, Status> {
        let svc = self.state.require_prompts().map_err(status)?;
        let r = req.into_inner();
        let published = match (r.files.is_empty(), r.archive.is_empty()) {
            (false, true) => svc.publish(r.files.into_iter().collect(), r.labels).await.map_err(status)?,
            (true, false) => {
                let trusted = r
                    .trusted_keys
                    .iter()
                    .map(|k| VerifyingKey::from_hex(k))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(status)?;
                svc.import(r.archive.into_bytes(), trusted).await.map_err(status)?
            }
            _ => return Err(status(ApiError::InvalidRequest("give exactly one of files or archive".into()))),
        };
        Ok(Response::new(pb::PublishPromptResponse {
            version: Some(version(published.version)),
            created: published.created,
            warnings: published.warnings.into_iter().map(|w| w.to_string()).collect(),
        }))
    }

    async fn rollback_prompt(
        &self,
        req: Request<pb::RollbackPromptRequest>,
    ) -> Result<Response<pb::RollbackPromptResponse>, Status> {
        let svc = self.state.require_prompts().map_err(status)?;
        let r = req.into_inner();
        let (now, previous) = svc.rollback(r.name, r.version).await.map_err(status)?;
        Ok(Response::new(pb::RollbackPromptResponse {
            version: Some(version(now)),
            previous: previous.unwrap_or_default(),
        }))
    }

    async fn delete_prompt(
        &self,
        req: Request<pb::DeletePromptRequest>,
    ) -> Result<Response<pb::PromptVersion>, Status> {
        let svc = self.state.require_prompts().map_err(status)?;
        let r = req.into_inner();
        Ok(Response::new(version(svc.delete(r.name, r.version).await.map_err(status)?)))
    }
}
