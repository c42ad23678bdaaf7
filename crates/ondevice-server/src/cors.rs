//! CORS for the configured browser origins (`server.cors_origins`).
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered here,
//! without a key, only when the origin is listed and the path and requested method are a route the
//! daemon serves (taken from the OpenAPI document, so the table cannot drift from the router).
//! Every other `OPTIONS` request goes on like any request: it needs a key, then gets 404 or 405.
//! Answers to requests from a listed origin carry `Access-Control-Allow-Origin` with that origin.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Seconds a browser may cache a preflight answer.
const MAX_AGE_S: u32 = 600;
/// Response headers a page may read besides the CORS-safelisted ones.
const EXPOSE: &str = "x-ondevice-adapter, retry-after, www-authenticate";

/// One route: its path split in segments (`None` for a `{param}`) and its methods.
#[derive(Debug)]
struct Route {
    segments: Vec<Option<String>>,
    methods: Vec<Method>,
}

impl Route {
    fn matches(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        parts.len() == self.segments.len()
            && self.segments.iter().zip(&parts).all(|(s, p)| s.as_deref().is_none_or(|s| s == *p) && !p.is_empty())
    }
}

/// The origins and routes CORS answers for.
#[derive(Debug)]
pub(crate) struct Cors {
    origins: Vec<HeaderValue>,
    routes: Vec<Route>,
}

impl Cors {
    /// CORS for `origins` over the routes of `doc`.
    pub(crate) fn new(origins: &[String], doc: &utoipa::openapi::OpenApi) -> Cors {
        let routes = doc
            .paths
            .paths
            .iter()
            .map(|(path, item)| {
                let segments = path
                    .trim_start_matches('/')
                    .split('/')
                    .map(|s| if s.starts_with('{') && s.ends_with('}') { None } else { Some(s.to_owned()) })
                    .collect();
                let methods = [
                    (Method::GET, item.get.is_some()),
                    (Method::POST, item.post.is_some()),
                    (Method::PUT, item.put.is_some()),
                    (Method::DELETE, item.delete.is_some()),
                    (Method::PATCH, item.patch.is_some()),
                    (Method::HEAD, item.head.is_some() || item.get.is_some()),
                ]
                .into_iter()
                .filter_map(|(m, served)| served.then_some(m))
                .collect();
                Route { segments, methods }
            })
            .collect();
        Cors { origins: origins.iter().filter_map(|o| o.parse().ok()).collect(), routes }
    }

    /// The request's `Origin` when it is a listed one.
    fn allowed_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        self.origins.iter().any(|o| o.as_bytes().eq_ignore_ascii_case(origin.as_bytes())).then(|| origin.clone())
    }

    /// Whether `method path` is a route the daemon serves.
    fn serves(&self, method: &Method, path: &str) -> bool {
        self.routes.iter().any(|r| r.matches(path) && r.methods.contains(method))
    }
}

/// The CORS layer: answers valid preflights, marks answers to listed origins.
pub(crate) async fn cors(State(cors): State<Arc<Cors>>, req: Request, next: Next) -> Response {
    let origin = cors.allowed_origin(req.headers());
    let requested =
        req.headers().get(header::ACCESS_CONTROL_REQUEST_METHOD).and_then(|m| Method::from_bytes(m.as_bytes()).ok());
    if req.method() == Method::OPTIONS {
        if let (Some(origin), Some(method)) = (&origin, &requested) {
            if cors.serves(method, req.uri().path()) {
                return preflight(origin.clone(), method, req.headers());
            }
        }
    }
    let mut resp = next.run(req).await;
    if let Some(origin) = origin {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE));
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    resp
}

fn preflight(origin: HeaderValue, method: &Method, headers: &HeaderMap) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if let Ok(m) = HeaderValue::from_str(method.as_str()) {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, m);
    }
    // The origin is trusted by configuration: any request header it asks for may be sent.
    if let Some(asked) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(MAX_AGE_S));
    h.append(
        header::VARY,
        HeaderValue::from_static("origin, access-control-request-method, access-control-request-headers"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors() -> Cors {
        let mut doc = utoipa::openapi::OpenApi::default();
        let op = || Some(utoipa::openapi::path::Operation::default());
        let item = |get: bool, post: bool, delete: bool| {
            let mut i = utoipa::openapi::PathItem::default();
            i.get = if get { op() } else { None };
            i.post = if post { op() } else { None };
            i.delete = if delete { op() } else { None };
            i
        };
        doc.paths.paths.insert("/v1/chat/completions".into(), item(false, true, false));
        doc.paths.paths.insert("/api/v1/keys/{id}".into(), item(false, false, true));
        Cors::new(&["http://localhost:3000".to_owned()], &doc)
    }

    #[test]
    fn routes_match_by_segment() {
        let c = cors();
        assert!(c.serves(&Method::POST, "/v1/chat/completions"));
        assert!(!c.serves(&Method::GET, "/v1/chat/completions"));
        assert!(!c.serves(&Method::POST, "/v1/chat/completions/x"));
        assert!(!c.serves(&Method::POST, "/v1/chat"));
        assert!(c.serves(&Method::DELETE, "/api/v1/keys/abc"));
        assert!(!c.serves(&Method::DELETE, "/api/v1/keys/"));
        assert!(!c.serves(&Method::DELETE, "/api/v1/keys/a/b"));
    }

    #[test]
    fn only_listed_origins() {
        let c = cors();
        let mut h = HeaderMap::new();
        assert!(c.allowed_origin(&h).is_none());
        h.insert(header::ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(c.allowed_origin(&h).is_none());
        h.insert(header::ORIGIN, HeaderValue::from_static("http://localhost:3000"));
        assert!(c.allowed_origin(&h).is_some());
    }
}
