//! The one place where failures become HTTP statuses and gRPC `Status` codes, always with the
//! JSON body `{"error": {"code": "...", "message": "..."}}` on HTTP.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ondevice_auth::AuthError;
use ondevice_runtime::RuntimeError;
use serde::Serialize;
use utoipa::ToSchema;

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No or invalid credential (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credential without the scope (403).
    #[error("{0}")]
    PermissionDenied(String),
    /// Unknown resource or route (404).
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed (400).
    #[error("{0}")]
    InvalidRequest(String),
    /// The body exceeds `server.body_limit` (413).
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// Too much work at once (503 with `Retry-After`).
    #[error("the daemon is overloaded: retry after {retry_after_s} s")]
    Overloaded {
        /// Seconds to wait.
        retry_after_s: u64,
    },
    /// The `Host` header is not one this daemon answers to (421 Misdirected Request).
    #[error("host {0:?} is not allowed: add it to server.allowed_hosts if you trust it")]
    HostNotAllowed(String),
    /// A bug or an I/O failure on our side (500).
    #[error("{0}")]
    Internal(String),
    /// This daemon was started without runtimes, so it cannot generate (503).
    #[error("inference is not available: this daemon has no runtimes wired")]
    NoInference,
    /// A runtime or the orchestrator could not serve the request; the status depends on why.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// The JSON error envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and message of an error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, such as `unauthenticated` or `payload_too_large`.
    pub code: String,
    /// Human-readable explanation saying what to do.
    pub message: String,
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::PermissionDenied(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::HostNotAllowed(_) => StatusCode::MISDIRECTED_REQUEST,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::NoInference => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Runtime(e) => match e {
                RuntimeError::ModelNotFound { .. } => StatusCode::NOT_FOUND,
                RuntimeError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
                RuntimeError::Unsupported { .. } => StatusCode::NOT_IMPLEMENTED,
                RuntimeError::Unavailable { .. } | RuntimeError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
                RuntimeError::OverBudget { .. } => StatusCode::INSUFFICIENT_STORAGE,
                RuntimeError::Upstream { .. } => StatusCode::BAD_GATEWAY,
                RuntimeError::Engine { .. } => StatusCode::INTERNAL_SERVER_ERROR,
                RuntimeError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            },
        }
    }

    /// Seconds a client should wait before retrying, for overload answers.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::Overloaded { retry_after_s } => Some(*retry_after_s),
            ApiError::Runtime(RuntimeError::Overloaded { retry_after, .. }) => {
                Some(retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)).map(|s| s.max(1))
            }
            _ => None,
        }
    }

    /// The stable code in the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::PermissionDenied(_) => "permission_denied",
            ApiError::NotFound(_) => "not_found",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::HostNotAllowed(_) => "host_not_allowed",
            ApiError::Internal(_) => "internal",
            ApiError::NoInference => "runtime_unavailable",
            ApiError::Runtime(e) => e.code(),
        }
    }

    /// The gRPC status for the same failure.
    pub fn to_status(&self) -> tonic::Status {
        let msg = self.to_string();
        match self {
            ApiError::Unauthenticated(_) => tonic::Status::unauthenticated(msg),
            ApiError::PermissionDenied(_) => tonic::Status::permission_denied(msg),
            ApiError::NotFound(_) => tonic::Status::not_found(msg),
            ApiError::InvalidRequest(_) => tonic::Status::invalid_argument(msg),
            ApiError::PayloadTooLarge { .. } => tonic::Status::resource_exhausted(msg),
            ApiError::Overloaded { .. } => tonic::Status::unavailable(msg),
            ApiError::HostNotAllowed(_) => tonic::Status::permission_denied(msg),
            ApiError::Internal(_) => tonic::Status::internal(msg),
            ApiError::NoInference => tonic::Status::unavailable(msg),
            ApiError::Runtime(e) => {
                let mut status = match e {
                    RuntimeError::ModelNotFound { .. } => tonic::Status::not_found(msg),
                    RuntimeError::InvalidRequest { .. } => tonic::Status::invalid_argument(msg),
                    RuntimeError::Unsupported { .. } => tonic::Status::unimplemented(msg),
                    RuntimeError::Unavailable { .. } | RuntimeError::Upstream { .. } => tonic::Status::unavailable(msg),
                    RuntimeError::Overloaded { .. } | RuntimeError::OverBudget { .. } => {
                        tonic::Status::resource_exhausted(msg)
                    }
                    RuntimeError::Engine { .. } => tonic::Status::internal(msg),
                    RuntimeError::Timeout { .. } => tonic::Status::deadline_exceeded(msg),
                };
                if let Some(s) = self.retry_after() {
                    status.metadata_mut().insert("retry-after", s.into());
                }
                status
            }
        }
    }

    /// The JSON error envelope of this error.
    pub fn body(&self) -> ErrorBody {
        ErrorBody { error: ErrorDetail { code: self.code().to_owned(), message: self.to_string() } }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Forbidden { .. } => ApiError::PermissionDenied(e.to_string()),
            AuthError::Missing | AuthError::Malformed(_) | AuthError::Invalid | AuthError::Revoked(_) => {
                ApiError::Unauthenticated(e.to_string())
            }
            AuthError::NotFound(_) => ApiError::NotFound(e.to_string()),
            AuthError::BadName(_) | AuthError::NoScope => ApiError::InvalidRequest(e.to_string()),
            AuthError::Store(_) | AuthError::TokenFile { .. } => ApiError::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = (status, Json(self.body())).into_response();
        if let ApiError::Unauthenticated(_) = &self {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"ondevice\""));
        }
        if let Some(s) = self.retry_after() {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

/// A JSON body extractor whose rejections use the error envelope (413 for oversized bodies).
pub struct ApiJson<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::PayloadTooLarge { limit }),
            Err(rej) => Err(ApiError::InvalidRequest(rej.body_text())),
        }
    }
}

/// A JSON body read whatever its `Content-Type`, as Ollama and OpenAI-compatible servers do
/// (`curl -d '{...}'` sends a form content type); rejections use the error envelope.
pub struct AnyJson<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for AnyJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
        let bytes = match <axum::body::Bytes as axum::extract::FromRequest<S>>::from_request(req, state).await {
            Ok(b) => b,
            Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            Err(rej) => return Err(ApiError::InvalidRequest(rej.body_text())),
        };
        serde_json::from_slice(&bytes)
            .map(AnyJson)
            .map_err(|e| ApiError::InvalidRequest(format!("invalid JSON body: {e}")))
    }
}

/// The body limit in force, put in request extensions by the limit middleware.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub u64);
