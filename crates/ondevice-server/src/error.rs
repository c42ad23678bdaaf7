//! The one place where failures become HTTP statuses and gRPC `Status` codes, always with the
//! JSON body `{"error": {"code": "...", "message": "..."}}` on HTTP.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ondevice_auth::AuthError;
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
        }
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
        let body = ErrorBody { error: ErrorDetail { code: self.code().to_owned(), message: self.to_string() } };
        let mut resp = (status, Json(body)).into_response();
        match &self {
            ApiError::Unauthenticated(_) => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"ondevice\""));
            }
            ApiError::Overloaded { retry_after_s } => {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
            }
            _ => {}
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

/// The body limit in force, put in request extensions by the limit middleware.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub u64);
