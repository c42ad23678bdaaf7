//! Shared HTTP plumbing of the TCP adapters: one `reqwest` client per adapter, bearer auth, and the
//! mapping of transport failures and HTTP statuses to [`RuntimeError`]. The API key is only ever put in
//! the `Authorization` header; error texts are scrubbed of it and never include URLs.

use std::time::Duration;

use futures_util::StreamExt;
use ondevice_config::Secret;
use ondevice_runtime::RuntimeError;
use reqwest::{Method, RequestBuilder, Response, StatusCode};

use crate::stream::Body;
use crate::{AdapterError, HttpOptions};

/// The longest upstream message kept in an error.
const MAX_MESSAGE: usize = 400;

/// A remote server: name, base URL, client, key.
#[derive(Debug, Clone)]
pub(crate) struct Remote {
    pub(crate) name: String,
    base: String,
    client: reqwest::Client,
    key: Option<Secret>,
    pub(crate) timeout: Duration,
    /// Host and port every request goes to (the egress gate's key).
    peer: (String, u16),
}

impl Remote {
    /// Validates the base URL (trailing `/` removed, and `strip` removed from its end, e.g. `/v1`).
    pub(crate) fn new(name: &str, options: &HttpOptions, strip: &str) -> Result<Self, AdapterError> {
        let bad = |reason: &str| AdapterError::BadUrl {
            runtime: name.to_owned(),
            url: without_userinfo(&options.base_url),
            reason: reason.to_owned(),
        };
        let url = reqwest::Url::parse(&options.base_url).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(bad("use http://host:port or https://host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("remove the query and fragment"));
        }
        let mut base = options.base_url.trim_end_matches('/').to_owned();
        if !strip.is_empty() && base.ends_with(strip) {
            base.truncate(base.len() - strip.len());
        }
        let client = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.timeout)
            .user_agent(concat!("ondevice/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AdapterError::Client { runtime: name.to_owned(), reason: e.to_string() })?;
        let peer = (url.host_str().unwrap_or_default().to_owned(), url.port_or_known_default().unwrap_or(0));
        Ok(Remote { name: name.to_owned(), base, client, key: options.api_key.clone(), timeout: options.timeout, peer })
    }

    /// A request to `path` (starting with `/`) with the bearer key, if any.
    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let rb = self.client.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(k) => rb.bearer_auth(k.expose()),
            None => rb,
        }
    }

    /// A request without the bearer key (REST runtimes set their own headers).
    pub(crate) fn bare(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    /// The API key, for REST header templates.
    pub(crate) fn key(&self) -> Option<&Secret> {
        self.key.as_ref()
    }

    /// Sends a request whose whole answer is read within the timeout; non-2xx become errors.
    pub(crate) async fn send(&self, rb: RequestBuilder) -> Result<Response, RuntimeError> {
        self.send_stream(rb.timeout(self.timeout)).await
    }

    /// Sends a request whose body is streamed (only the read timeout between chunks applies).
    ///
    /// A server may close an idle keep-alive connection just as a request goes out on it (llama.cpp's
    /// server does); the request then fails before any answer. It is sent once more on a fresh
    /// connection: an inference request has no side effect a second copy could repeat.
    pub(crate) async fn send_stream(&self, rb: RequestBuilder) -> Result<Response, RuntimeError> {
        let flow = self.gate()?;
        let sent = rb
            .try_clone()
            .and_then(|r| r.build().ok())
            .and_then(|r| r.body().and_then(|b| b.as_bytes()).map(|b| b.len() as u64))
            .unwrap_or(0);
        flow.sent(sent);
        let again = rb.try_clone();
        let sent_again = |e: reqwest::Error| {
            let err = self.transport(e);
            flow.failed(&err);
            err
        };
        let mut resp = match (rb.send().await, again) {
            (Ok(resp), _) => resp,
            (Err(e), Some(again)) if closed_before_answer(&e) => {
                tracing::debug!(runtime = %self.name, error = %chain(&e), "connection closed under the request; sending it again");
                flow.sent(sent);
                again.send().await.map_err(sent_again)?
            }
            (Err(e), _) => return Err(sent_again(e)),
        };
        if resp.status().is_success() {
            // The body's bytes are counted by whoever reads it (`body`, `json`).
            resp.extensions_mut().insert(flow);
            return Ok(resp);
        }
        flow.failed(format!("answered {}", resp.status()));
        Err(self.status_error(resp).await)
    }

    /// The egress gate: offline mode refuses a non-loopback runtime before connecting (503).
    pub(crate) fn gate(&self) -> Result<ondevice_egress::Flow, RuntimeError> {
        ondevice_egress::begin(ondevice_egress::Purpose::Runtime, &self.peer.0, self.peer.1)
            .map_err(|e| RuntimeError::Unavailable { adapter: self.name.clone(), reason: e.to_string() })
    }

    /// Sends and parses a JSON answer.
    pub(crate) async fn json(&self, rb: RequestBuilder) -> Result<serde_json::Value, RuntimeError> {
        let resp = self.send(rb).await?;
        let flow = resp.extensions().get::<ondevice_egress::Flow>().cloned();
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        if let Some(f) = flow {
            f.received(bytes.len() as u64);
        }
        serde_json::from_slice(&bytes).map_err(|e| RuntimeError::Upstream {
            adapter: self.name.clone(),
            status: 200,
            message: format!("answer is not the expected JSON: {e}"),
        })
    }

    /// A transport failure (no status): connection refused, reset, timeout, broken body.
    pub(crate) fn transport(&self, e: reqwest::Error) -> RuntimeError {
        if e.is_timeout() {
            return RuntimeError::Timeout { adapter: self.name.clone(), after: self.timeout };
        }
        let what = if e.is_connect() { "cannot connect" } else { "connection failed" };
        let mut reason = format!("{what}: {}", chain(&e.without_url()));
        self.scrub(&mut reason);
        RuntimeError::Unavailable { adapter: self.name.clone(), reason }
    }

    /// The body of a streamed answer as chunks, transport errors mapped.
    pub(crate) fn body(&self, resp: Response) -> Body {
        let this = self.clone();
        let flow = resp.extensions().get::<ondevice_egress::Flow>().cloned();
        Box::pin(resp.bytes_stream().map(move |r| {
            if let (Some(f), Ok(b)) = (&flow, &r) {
                f.received(b.len() as u64);
            }
            r.map_err(|e| match this.transport(e) {
                RuntimeError::Unavailable { adapter, reason } => {
                    RuntimeError::Unavailable { adapter, reason: format!("stream broken: {reason}") }
                }
                other => other,
            })
        }))
    }

    /// Maps a non-2xx answer (its JSON `error` message when there is one).
    pub(crate) async fn status_error(&self, resp: Response) -> RuntimeError {
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let text = resp.text().await.unwrap_or_default();
        let mut message = upstream_message(&text);
        self.scrub(&mut message);
        status_to_error(&self.name, status, retry_after, message)
    }

    fn scrub(&self, text: &mut String) {
        if let Some(k) = &self.key {
            if !k.expose().is_empty() && text.contains(k.expose()) {
                *text = text.replace(k.expose(), "<redacted>");
            }
        }
    }
}

/// The error for an HTTP status. 429/503 → `Overloaded` (retry after the server's delay, default 1 s),
/// 400/422 → `InvalidRequest`, 501 → `Unsupported`, everything else → `Upstream`.
pub(crate) fn status_to_error(
    adapter: &str,
    status: StatusCode,
    retry_after: Option<u64>,
    message: String,
) -> RuntimeError {
    let code = status.as_u16();
    match code {
        429 | 503 => RuntimeError::Overloaded {
            what: format!(
                "runtime {adapter:?} answered {code}{}",
                if message.is_empty() { String::new() } else { format!(": {message}") }
            ),
            retry_after: Duration::from_secs(retry_after.unwrap_or(1).clamp(1, 3600)),
        },
        400 | 422 => {
            RuntimeError::InvalidRequest { message: format!("runtime {adapter:?} refused the request: {message}") }
        }
        501 => RuntimeError::Unsupported { adapter: adapter.to_owned(), what: format!("this request ({message})") },
        _ => RuntimeError::Upstream { adapter: adapter.to_owned(), status: code, message },
    }
}

/// The human part of an error body: `{"error": {"message": ...}}`, `{"error": "..."}`, `{"message": ...}`,
/// `{"detail": ...}`, or the text itself, shortened.
pub(crate) fn upstream_message(text: &str) -> String {
    let from_json = serde_json::from_str::<serde_json::Value>(text).ok().and_then(|v| {
        let e = v.get("error").unwrap_or(&v);
        e.get("message")
            .or_else(|| e.get("detail"))
            .and_then(|m| m.as_str().map(str::to_owned))
            .or_else(|| e.as_str().map(str::to_owned))
    });
    let msg = from_json.unwrap_or_else(|| text.trim().to_owned());
    let mut out: String = msg.chars().take(MAX_MESSAGE).collect();
    if out.len() < msg.len() {
        out.push('…');
    }
    out
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        src = s.source();
    }
    out
}

/// The URL without `user:password@`, for messages.
pub(crate) fn without_userinfo(url: &str) -> String {
    match (url.split_once("://"), url.find('@')) {
        (Some((scheme, rest)), Some(_)) => {
            let end = rest.find('/').unwrap_or(rest.len());
            match rest[..end].rfind('@') {
                Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Whether `e` is a connection the server closed before sending any answer (a stale pooled
/// connection), as opposed to a refused connection, a timeout or a broken answer.
fn closed_before_answer(e: &reqwest::Error) -> bool {
    if e.is_timeout() || e.is_connect() || e.is_status() || e.is_body() || e.is_decode() {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            return h.is_incomplete_message() || h.is_canceled();
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_contract_errors() {
        let e = status_to_error("x", StatusCode::TOO_MANY_REQUESTS, Some(7), "slow down".into());
        assert_eq!(
            e,
            RuntimeError::Overloaded {
                what: "runtime \"x\" answered 429: slow down".into(),
                retry_after: Duration::from_secs(7)
            }
        );
        assert!(matches!(
            status_to_error("x", StatusCode::BAD_REQUEST, None, "m".into()),
            RuntimeError::InvalidRequest { .. }
        ));
        let e = status_to_error("x", StatusCode::BAD_GATEWAY, None, "m".into());
        assert!(e.is_fallback(), "5xx must be fallback-worthy: {e:?}");
        let e = status_to_error("x", StatusCode::NOT_FOUND, None, "m".into());
        assert!(matches!(e, RuntimeError::Upstream { status: 404, .. }) && !e.is_fallback());
    }

    #[test]
    fn messages_are_extracted_and_shortened() {
        assert_eq!(upstream_message(r#"{"error":{"message":"bad model","code":400}}"#), "bad model");
        assert_eq!(upstream_message(r#"{"error":"model not found"}"#), "model not found");
        assert_eq!(upstream_message("plain"), "plain");
        assert!(upstream_message(&"x".repeat(1000)).chars().count() <= MAX_MESSAGE + 1);
        assert_eq!(without_userinfo("http://u:p@h:1/x"), "http://h:1/x");
    }
}
