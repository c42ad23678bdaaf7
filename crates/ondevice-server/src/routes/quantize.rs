//! `POST /api/v1/quantize` (models scope): starts (or joins) a `quantize` job that quantizes a
//! registry model, a GGUF file or a safetensors directory and registers the result with its
//! provenance. Follow the job at `/api/v1/jobs/{id}/events`; cancel it with
//! `DELETE /api/v1/jobs/{id}`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use ondevice_quantize::job::QuantizeParams;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiJson};
use crate::routes::jobs::JobView;
use crate::state::AppState;

/// Body of `POST /api/v1/quantize`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuantizeRequest {
    /// A registry model (`name[:tag]` or `sha256:` digest), or the absolute path of a GGUF file or
    /// a Hugging Face safetensors directory on the daemon's machine.
    #[schema(min_length = 1)]
    pub source: String,
    /// The GGUF type: `F32`, `F16`, `BF16`, `Q8_0`, `Q4_0` ... `Q6_K`, `IQ1_S` ... `IQ4_XS`,
    /// `TQ1_0`, `TQ2_0`.
    #[serde(rename = "type")]
    #[schema(min_length = 1)]
    pub quant_type: String,
    /// Register the result as `name[:tag]` (default: the source's name with the type appended,
    /// e.g. `smollm2-q8_0:latest`, keeping a registry source's tag).
    #[schema(value_type = Option<crate::routes::models::ModelRefSchema>)]
    pub name: Option<String>,
    /// Absolute path of an importance matrix (llama-imatrix output) on the daemon's machine;
    /// recorded by its SHA-256. Not with `make_imatrix`.
    pub imatrix: Option<String>,
    /// Compute the importance matrix from the source with the engine, inside the job (over the
    /// text the quality gate reads), and quantize with it; its SHA-256 and the text's go in the
    /// receipt. Satisfies the types that need a matrix (`IQ2_XS`, ...); not with `imatrix`, nor
    /// for `F32`, `F16`, `BF16` and `Q8_0`.
    #[serde(default)]
    pub make_imatrix: bool,
    /// Quantize tensors that are already quantized (a quantized source; quality suffers).
    #[serde(default)]
    pub allow_requantize: bool,
    /// Per-tensor types, `PATTERN=TYPE` (a regular expression over tensor names).
    #[serde(default)]
    pub tensor_types: Vec<String>,
    /// Type of `output.weight`.
    pub output_tensor_type: Option<String>,
    /// Type of `token_embd.weight`.
    pub token_embedding_type: Option<String>,
    /// Skip the quality gate (perplexity on a fixed text, KL-divergence against the source).
    #[serde(default)]
    pub no_quality: bool,
}

impl From<QuantizeRequest> for QuantizeParams {
    fn from(r: QuantizeRequest) -> Self {
        QuantizeParams {
            source: r.source,
            quant_type: r.quant_type,
            name: r.name,
            imatrix: r.imatrix.map(Into::into),
            make_imatrix: r.make_imatrix,
            allow_requantize: r.allow_requantize,
            tensor_types: r.tensor_types,
            output_tensor_type: r.output_tensor_type,
            token_embedding_type: r.token_embedding_type,
            no_quality: r.no_quality,
        }
    }
}

/// Starts a quantization (or joins the one in progress with the same source, parameters and
/// name) and returns its job; the result is registered when the job succeeds.
#[utoipa::path(post, path = "/api/v1/quantize", tag = "models",
    security(("bearer" = ["models"])),
    request_body = QuantizeRequest,
    responses(
        (status = 202, description = "The quantize job; follow it at /api/v1/jobs/{id}/events", body = JobView),
        (status = 400, description = "Unknown type, invalid name, relative path, missing importance matrix, or make_imatrix together with imatrix", body = crate::error::ErrorBody),
        (status = 404, description = "The source is neither a registered model nor a file on the daemon's machine", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn quantize(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<QuantizeRequest>,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    let service = state.require_quantize()?;
    let job = service.quantize(req.into()).await?;
    Ok((StatusCode::ACCEPTED, Json(job.into())))
}
