//! The one place where failures become HTTP statuses and gRPC `Status` codes, always with the
//! JSON body `{"error": {"code": "...", "message": "..."}}` on HTTP.
//!
//! Every domain error the edge meets (`AuthError`, `RegistryError`, `PullError`, `JobError`, `QuotaError`,
//! `DownloadError`, `RuntimeError`, `VectorError`) becomes an [`ApiError`] here, through `match`es without a
//! catch-all arm: a new variant does not compile until someone decides how it is answered. Each
//! [`ApiError`] has one [`Answer`] (HTTP status, gRPC code and body code together), so HTTP and
//! gRPC cannot disagree.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ondevice_auth::AuthError;
use ondevice_diagnostics::DiagError;
use ondevice_jobs::JobError;
use ondevice_registry::download::DownloadError;
use ondevice_registry::jobs::PullError;
use ondevice_registry::quota::QuotaError;
use ondevice_registry::{BlobError, RegistryError};
use ondevice_runtime::RuntimeError;
use ondevice_vector::VectorError;
use serde::Serialize;
use tonic::Code;
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
    /// A request authenticated by the console's session cookie without its CSRF token, or from
    /// another site (403 `csrf_failed`).
    #[error("{0}")]
    CsrfFailed(String),
    /// Unknown resource or route (404).
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed (400).
    #[error("{0}")]
    InvalidRequest(String),
    /// The request conflicts with the resource's state, such as cancelling a finished job (409).
    #[error("{0}")]
    Conflict(String),
    /// The body exceeds `server.body_limit` (413).
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// No room left: the registry quota, the disk, or a configured size cap (507).
    #[error("{0}")]
    InsufficientStorage(String),
    /// Too much work at once (503 with `Retry-After`).
    #[error("the daemon is overloaded: retry after {retry_after_s} s")]
    Overloaded {
        /// Seconds to wait.
        retry_after_s: u64,
    },
    /// The `Host` header is not one this daemon answers to (421 Misdirected Request).
    #[error("host {0:?} is not allowed: add it to server.allowed_hosts if you trust it")]
    HostNotAllowed(String),
    /// The path exists but not with this method (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A documented endpoint of a compatible API (OpenAI, Ollama) that ondevice does not offer;
    /// the message says what to use instead (501).
    #[error("{0}")]
    NotImplemented(String),
    /// A remote server the daemon relied on failed, such as every mirror of a download (502).
    #[error("{0}")]
    Upstream(String),
    /// A bug, an I/O failure or damaged data on our side (500).
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

/// How one failure is answered on every surface, decided in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub http: StatusCode,
    /// The gRPC code.
    pub grpc: Code,
    /// The stable code in the JSON body.
    pub code: &'static str,
}

const fn answer(http: StatusCode, grpc: Code, code: &'static str) -> Answer {
    Answer { http, grpc, code }
}

impl ApiError {
    /// The HTTP status, gRPC code and body code of this error.
    pub fn answer(&self) -> Answer {
        match self {
            ApiError::Unauthenticated(_) => answer(StatusCode::UNAUTHORIZED, Code::Unauthenticated, "unauthenticated"),
            ApiError::PermissionDenied(_) => answer(StatusCode::FORBIDDEN, Code::PermissionDenied, "permission_denied"),
            ApiError::CsrfFailed(_) => answer(StatusCode::FORBIDDEN, Code::PermissionDenied, "csrf_failed"),
            ApiError::NotFound(_) => answer(StatusCode::NOT_FOUND, Code::NotFound, "not_found"),
            ApiError::InvalidRequest(_) => answer(StatusCode::BAD_REQUEST, Code::InvalidArgument, "invalid_request"),
            ApiError::Conflict(_) => answer(StatusCode::CONFLICT, Code::FailedPrecondition, "conflict"),
            ApiError::PayloadTooLarge { .. } => {
                answer(StatusCode::PAYLOAD_TOO_LARGE, Code::ResourceExhausted, "payload_too_large")
            }
            ApiError::InsufficientStorage(_) => {
                answer(StatusCode::INSUFFICIENT_STORAGE, Code::ResourceExhausted, "insufficient_storage")
            }
            ApiError::Overloaded { .. } => answer(StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable, "overloaded"),
            ApiError::HostNotAllowed(_) => {
                answer(StatusCode::MISDIRECTED_REQUEST, Code::PermissionDenied, "host_not_allowed")
            }
            ApiError::MethodNotAllowed(_) => {
                answer(StatusCode::METHOD_NOT_ALLOWED, Code::Unimplemented, "method_not_allowed")
            }
            ApiError::NotImplemented(_) => answer(StatusCode::NOT_IMPLEMENTED, Code::Unimplemented, "not_implemented"),
            ApiError::Upstream(_) => answer(StatusCode::BAD_GATEWAY, Code::Unavailable, "upstream_error"),
            ApiError::Internal(_) => answer(StatusCode::INTERNAL_SERVER_ERROR, Code::Internal, "internal"),
            ApiError::NoInference => answer(StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable, "runtime_unavailable"),
            ApiError::Runtime(e) => {
                let (http, grpc) = match e {
                    RuntimeError::ModelNotFound { .. } => (StatusCode::NOT_FOUND, Code::NotFound),
                    RuntimeError::InvalidRequest { .. } => (StatusCode::BAD_REQUEST, Code::InvalidArgument),
                    RuntimeError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, Code::InvalidArgument),
                    RuntimeError::Unsupported { .. } => (StatusCode::NOT_IMPLEMENTED, Code::Unimplemented),
                    RuntimeError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable),
                    RuntimeError::Overloaded { .. } => (StatusCode::SERVICE_UNAVAILABLE, Code::ResourceExhausted),
                    RuntimeError::OverBudget { .. } => (StatusCode::INSUFFICIENT_STORAGE, Code::ResourceExhausted),
                    RuntimeError::Upstream { .. } => (StatusCode::BAD_GATEWAY, Code::Unavailable),
                    RuntimeError::Engine { .. } => (StatusCode::INTERNAL_SERVER_ERROR, Code::Internal),
                    RuntimeError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, Code::DeadlineExceeded),
                };
                answer(http, grpc, e.code())
            }
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.answer().http
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
        self.answer().code
    }

    /// The gRPC status for the same failure (with `retry-after` metadata for overload answers).
    pub fn to_status(&self) -> tonic::Status {
        let mut status = tonic::Status::new(self.answer().grpc, self.to_string());
        if let Some(s) = self.retry_after() {
            status.metadata_mut().insert("retry-after", s.into());
        }
        status
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
            AuthError::LastAdmin(_) => ApiError::Conflict(e.to_string()),
            AuthError::Store(_) | AuthError::TokenFile { .. } => ApiError::Internal(e.to_string()),
        }
    }
}

/// A write that failed because the disk (or the user's quota) is full is the client's 507, not
/// our 500.
fn io_failure(source: &std::io::Error, message: String) -> ApiError {
    if ondevice_registry::blobs::is_disk_full(source) {
        ApiError::InsufficientStorage(message)
    } else {
        ApiError::Internal(message)
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let message = e.to_string();
        match e {
            RegistryError::Ref(_)
            | RegistryError::InvalidModelFile { .. }
            | RegistryError::InvalidModelDir { .. }
            | RegistryError::InvalidLayout { .. }
            | RegistryError::InvalidProvenance { .. }
            | RegistryError::Bundle(_) => ApiError::InvalidRequest(message),
            RegistryError::NotFound { .. } => ApiError::NotFound(message),
            // Damaged data on our side: the message says how to repair it.
            RegistryError::BadStoredDigest { .. } => ApiError::Internal(message),
            RegistryError::Blob(b) => match b {
                BlobError::Io { source, .. } => io_failure(&source, message),
                BlobError::NoSpace { .. } => ApiError::InsufficientStorage(message),
                BlobError::Corrupt { .. } | BlobError::Missing { .. } => ApiError::Internal(message),
            },
            // Every database failure (SQLite, I/O, a newer schema, a corrupt row) is ours. The
            // edge does not depend on the store crate, so its variants are not told apart here.
            RegistryError::Store(_) => ApiError::Internal(message),
        }
    }
}

impl From<QuotaError> for ApiError {
    fn from(e: QuotaError) -> Self {
        match e {
            QuotaError::Exceeded { .. } | QuotaError::DiskFull { .. } => ApiError::InsufficientStorage(e.to_string()),
        }
    }
}

impl From<DownloadError> for ApiError {
    fn from(e: DownloadError) -> Self {
        let message = e.to_string();
        download_failure(e, message)
    }
}

/// How a download failure is answered; `message` is the whole story (for a pull, with the model).
fn download_failure(e: DownloadError, message: String) -> ApiError {
    match e {
        DownloadError::AllMirrorsFailed { .. } => ApiError::Upstream(message),
        DownloadError::TooLarge { .. } | DownloadError::Reserve(_) => ApiError::InsufficientStorage(message),
        DownloadError::Io { source, .. } => io_failure(&source, message),
        DownloadError::Cancelled => ApiError::Conflict(message),
    }
}

impl From<PullError> for ApiError {
    fn from(e: PullError) -> Self {
        let message = e.to_string();
        match e {
            PullError::Ref(_) | PullError::Url(_) => ApiError::InvalidRequest(message),
            PullError::NotInCatalog { .. } => ApiError::NotFound(message),
            PullError::Download { source, .. } => download_failure(source, message),
            PullError::Quota(q) => q.into(),
            PullError::Registry(r) => r.into(),
            PullError::Jobs(j) => j.into(),
        }
    }
}

impl From<ondevice_quantize::job::QuantizeJobError> for ApiError {
    fn from(e: ondevice_quantize::job::QuantizeJobError) -> Self {
        use ondevice_quantize::job::QuantizeJobError as Q;
        match e {
            Q::Invalid(_) => ApiError::InvalidRequest(e.to_string()),
            Q::SourceNotFound(_) => ApiError::NotFound(e.to_string()),
            Q::Registry(r) => r.into(),
            Q::Jobs(j) => j.into(),
        }
    }
}

impl From<ondevice_prompts::PromptError> for ApiError {
    fn from(e: ondevice_prompts::PromptError) -> Self {
        use ondevice_prompts::PromptError as P;
        let message = e.to_string();
        match e {
            P::InvalidPack { .. }
            | P::InvalidReference { .. }
            | P::Template { .. }
            | P::Variable { .. }
            | P::Lint { .. }
            | P::Signature { .. }
            | P::BudgetTooSmall { .. }
            | P::TestFailed { .. } => ApiError::InvalidRequest(message),
            P::NotFound { .. } => ApiError::NotFound(message),
            P::VersionExists { .. } => ApiError::Conflict(message),
            P::Runtime { source, .. } => ApiError::Runtime(source),
            P::Unavailable(_) => ApiError::NoInference,
            P::Registry(r) => r.into(),
            // Database failures are ours (the edge does not tell the store's variants apart).
            P::Store(_) => ApiError::Internal(message),
            P::Io { source, .. } => io_failure(&source, message),
        }
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        let message = e.to_string();
        match e {
            JobError::NotFound(_) => ApiError::NotFound(message),
            JobError::Finished { .. } => ApiError::Conflict(message),
            JobError::ShuttingDown => ApiError::Overloaded { retry_after_s: 5 },
            JobError::UnknownKind(_) | JobError::Spec { .. } | JobError::Store(_) => ApiError::Internal(message),
        }
    }
}

impl From<DiagError> for ApiError {
    fn from(e: DiagError) -> Self {
        let message = e.to_string();
        match e {
            DiagError::NoBundle(_) => ApiError::NotFound(message),
            DiagError::Io { .. } | DiagError::Encode { .. } | DiagError::Store(_) | DiagError::Checks(_) => {
                ApiError::Internal(message)
            }
        }
    }
}

impl From<VectorError> for ApiError {
    fn from(e: VectorError) -> Self {
        let message = e.to_string();
        match e {
            VectorError::InvalidName { .. }
            | VectorError::InvalidRequest(_)
            | VectorError::DimensionMismatch { .. }
            | VectorError::UnsupportedFormat { .. }
            | VectorError::InputTooLong { .. }
            | VectorError::BackendUnavailable(_) => ApiError::InvalidRequest(message),
            VectorError::NotFound(_) => ApiError::NotFound(message),
            VectorError::PathNotAllowed { .. } => ApiError::PermissionDenied(message),
            VectorError::Exists(_) | VectorError::ModelChanged { .. } => ApiError::Conflict(message),
            VectorError::Embedding { source, .. } => ApiError::Runtime(source),
            VectorError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ApiError::NotFound(message)
            }
            VectorError::Io { .. } | VectorError::Backend { .. } => ApiError::Internal(message),
            VectorError::Jobs(j) => j.into(),
        }
    }
}

/// A blocking task that panicked or was cancelled.
impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        ApiError::Internal(e.to_string())
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

/// A request's body as bytes, a body over the limit being 413 naming it and any other failure
/// 400: what the JSON extractors below share.
async fn body_bytes<S: Send + Sync>(req: axum::extract::Request, state: &S) -> Result<axum::body::Bytes, ApiError> {
    let limit = req.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
    match <axum::body::Bytes as axum::extract::FromRequest<S>>::from_request(req, state).await {
        Ok(b) => Ok(b),
        Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::PayloadTooLarge { limit }),
        Err(rej) => Err(ApiError::InvalidRequest(rej.body_text())),
    }
}

/// An optional JSON object body: no body at all (or `null`) is `None` (a `POST` whose fields all
/// have defaults may send nothing); anything else must be a JSON object (serde would otherwise
/// read a struct from an array such as `[null, null]`). Rejections use the error envelope.
pub struct OptionalJson<T>(pub Option<T>);

impl<T, S> axum::extract::FromRequest<S> for OptionalJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        // `null` counts as no body, as it does for an optional request body in the schema.
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if !matches!(first, Some(b'{') | Some(b'n')) {
            return Err(ApiError::InvalidRequest("invalid JSON body: expected a JSON object".to_owned()));
        }
        serde_json::from_slice::<Option<T>>(&bytes)
            .map(OptionalJson)
            .map_err(|e| ApiError::InvalidRequest(format!("invalid JSON body: {e}")))
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
        let bytes = body_bytes(req, state).await?;
        serde_json::from_slice(&bytes)
            .map(AnyJson)
            .map_err(|e| ApiError::InvalidRequest(format!("invalid JSON body: {e}")))
    }
}

/// Error answers that axum makes itself (a query string or path that does not parse, a method
/// the route does not have, an unsupported media type) come as plain text; this layer gives them
/// the JSON error envelope every other error has, keeping their status and headers (`Allow`).
/// Answers that already are JSON, gRPC answers and successful ones pass untouched.
pub(crate) async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let content_type = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.starts_with("application/json") || content_type.starts_with("application/grpc") {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    // Rejection texts are short; anything longer is cut rather than buffered.
    let text = match axum::body::to_bytes(body, 16 * 1024).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        match status {
            StatusCode::METHOD_NOT_ALLOWED => "this route does not accept that method; see /openapi.json".to_owned(),
            _ => status.canonical_reason().unwrap_or("error").to_lowercase(),
        }
    } else {
        text
    };
    let code = match status {
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::FORBIDDEN => "permission_denied",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => "invalid_request",
    };
    let body = ErrorBody { error: ErrorDetail { code: code.to_owned(), message } };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// The body limit in force, put in request extensions by the limit middleware.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub u64);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ondevice_registry::{Digest, ModelRef};

    use super::*;

    #[track_caller]
    fn assert_answer(e: impl Into<ApiError>, http: StatusCode, grpc: Code, code: &str) {
        let e = e.into();
        assert_eq!(e.answer(), Answer { http, grpc, code: e.code() }, "{e}");
        assert_eq!((e.status(), e.to_status().code(), e.code()), (http, grpc, code), "{e}");
    }

    fn digest(byte: char) -> Digest {
        format!("sha256:{}", byte.to_string().repeat(64)).parse().unwrap()
    }

    #[test]
    fn auth_errors() {
        assert_answer(AuthError::Missing, StatusCode::UNAUTHORIZED, Code::Unauthenticated, "unauthenticated");
        assert_answer(
            AuthError::Forbidden { required: ondevice_auth::Scope::Models },
            StatusCode::FORBIDDEN,
            Code::PermissionDenied,
            "permission_denied",
        );
        assert_answer(AuthError::NoScope, StatusCode::BAD_REQUEST, Code::InvalidArgument, "invalid_request");
    }

    #[test]
    fn registry_errors() {
        let not_found = RegistryError::NotFound { reference: "nope:latest".into() };
        assert_answer(not_found, StatusCode::NOT_FOUND, Code::NotFound, "not_found");
        let bad_ref = RegistryError::from("../evil".parse::<ModelRef>().unwrap_err());
        assert_answer(bad_ref, StatusCode::BAD_REQUEST, Code::InvalidArgument, "invalid_request");
        let corrupt = RegistryError::Blob(BlobError::Corrupt { expected: digest('a'), actual: digest('b') });
        assert_answer(corrupt, StatusCode::INTERNAL_SERVER_ERROR, Code::Internal, "internal");
        let full = RegistryError::Blob(BlobError::Io {
            op: "copy",
            path: "/x".into(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        });
        assert_answer(full, StatusCode::INSUFFICIENT_STORAGE, Code::ResourceExhausted, "insufficient_storage");
        let enospc = RegistryError::Blob(BlobError::NoSpace {
            what: "m.gguf".into(),
            dir: "/home/blobs".into(),
            needed: Some(10),
            free: Some(1),
        });
        assert_answer(enospc, StatusCode::INSUFFICIENT_STORAGE, Code::ResourceExhausted, "insufficient_storage");
        let quota =
            DownloadError::Io { path: "/x".into(), source: std::io::Error::from(std::io::ErrorKind::QuotaExceeded) };
        assert_answer(quota, StatusCode::INSUFFICIENT_STORAGE, Code::ResourceExhausted, "insufficient_storage");
    }

    #[test]
    fn quota_and_pull_errors() {
        let exceeded = QuotaError::Exceeded { model: "m:latest".into(), needed: 10, available: 1, quota: 5 };
        assert_answer(exceeded, StatusCode::INSUFFICIENT_STORAGE, Code::ResourceExhausted, "insufficient_storage");
        let disk = PullError::Quota(QuotaError::DiskFull {
            model: "m:latest".into(),
            needed: 10,
            free: 1,
            min_free: 0,
            path: "/home".into(),
        });
        assert_answer(disk, StatusCode::INSUFFICIENT_STORAGE, Code::ResourceExhausted, "insufficient_storage");
        let missing = PullError::Jobs(JobError::NotFound("j1".into()));
        assert_answer(missing, StatusCode::NOT_FOUND, Code::NotFound, "not_found");
        let finished = JobError::Finished { id: "j1".into(), state: ondevice_jobs::JobState::Succeeded };
        assert_answer(finished, StatusCode::CONFLICT, Code::FailedPrecondition, "conflict");
        let mirrors = PullError::Download {
            model: "m:latest".into(),
            source: DownloadError::AllMirrorsFailed { errors: vec!["https://a: 500".into()] },
        };
        let e = ApiError::from(mirrors);
        assert!(e.to_string().starts_with("pull of m:latest failed"), "{e}");
        assert_answer(e, StatusCode::BAD_GATEWAY, Code::Unavailable, "upstream_error");
        let inner = PullError::Registry(RegistryError::NotFound { reference: "x:latest".into() });
        assert_answer(inner, StatusCode::NOT_FOUND, Code::NotFound, "not_found");
    }

    #[test]
    fn runtime_errors() {
        let missing = RuntimeError::ModelNotFound { model: "m".into() };
        assert_answer(missing, StatusCode::NOT_FOUND, Code::NotFound, "model_not_found");
        let budget = RuntimeError::OverBudget { model: "m".into(), needed: 2, budget: 1 };
        assert_answer(budget, StatusCode::INSUFFICIENT_STORAGE, Code::ResourceExhausted, "over_budget");
        let slow = RuntimeError::Timeout { adapter: "a".into(), after: Duration::from_secs(1) };
        assert_answer(slow, StatusCode::GATEWAY_TIMEOUT, Code::DeadlineExceeded, "timeout");
        let busy =
            ApiError::from(RuntimeError::Overloaded { what: "queue".into(), retry_after: Duration::from_millis(1500) });
        assert_eq!(busy.retry_after(), Some(2));
        assert_eq!(busy.to_status().metadata().get("retry-after").unwrap(), "2");
        assert_answer(busy, StatusCode::SERVICE_UNAVAILABLE, Code::ResourceExhausted, "overloaded");
    }

    #[test]
    fn edge_errors_answer_alike_on_http_and_grpc() {
        assert_answer(
            ApiError::PayloadTooLarge { limit: 1 },
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::ResourceExhausted,
            "payload_too_large",
        );
        assert_answer(
            ApiError::Overloaded { retry_after_s: 1 },
            StatusCode::SERVICE_UNAVAILABLE,
            Code::Unavailable,
            "overloaded",
        );
        assert_answer(ApiError::NoInference, StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable, "runtime_unavailable");
        assert_answer(
            ApiError::NotImplemented("use x".into()),
            StatusCode::NOT_IMPLEMENTED,
            Code::Unimplemented,
            "not_implemented",
        );
        let last = AuthError::LastAdmin("0123456789ab".parse().unwrap());
        assert_answer(last, StatusCode::CONFLICT, Code::FailedPrecondition, "conflict");
    }
}
