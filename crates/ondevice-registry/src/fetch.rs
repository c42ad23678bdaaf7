//! HTTP for downloads: one reqwest client with the checked resolver, no proxy, no automatic
//! redirects; redirects are followed here one hop at a time, each hop checked by the
//! [`HostPolicy`]. Credentials are attached only to requests whose host is exactly the host they
//! were configured for, so a redirect to a CDN never carries them, and they never appear in logs
//! or errors (the header is marked sensitive; URLs in messages are redacted).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderValue, LOCATION, RANGE};
use reqwest::{StatusCode, Url};

use crate::safety::{CheckedResolver, HostPolicy, UrlError, check_url_form, redact_url};

/// Redirect hops followed before giving up.
pub const MAX_REDIRECTS: usize = 10;

/// A resolved credential for one host: sent as `Authorization: Bearer <token>`.
#[derive(Clone)]
pub struct Credential {
    host: String,
    header: HeaderValue,
}

impl Credential {
    /// A bearer token for requests to exactly `host`. `None` if the token cannot be a header.
    pub fn bearer(host: &str, token: &str) -> Option<Credential> {
        let mut header = HeaderValue::from_str(&format!("Bearer {}", token.trim())).ok()?;
        header.set_sensitive(true);
        Some(Credential { host: host.trim().to_ascii_lowercase(), header })
    }

    /// The host it is for.
    pub fn host(&self) -> &str {
        &self.host
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential").field("host", &self.host).field("header", &"<redacted>").finish()
    }
}

/// A failed request, without credentials and with the URL redacted.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL or its destination was refused.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The connection or transfer failed.
    #[error("{url}: {reason}")]
    Network {
        /// The URL (redacted).
        url: String,
        /// What happened (without the URL).
        reason: String,
    },
    /// The server answered with an error status.
    #[error("{url}: server answered {status}")]
    Status {
        /// The URL (redacted).
        url: String,
        /// The status.
        status: StatusCode,
    },
    /// The server refused access (401 or 403): no credential for this host, or a wrong one.
    #[error("{url}: server answered {status}: {}", if *sent_token {
        format!("the token of [registry.credentials.{host:?}] was refused; check the secret it refers to")
    } else {
        format!("if this source needs a token, set [registry.credentials.{host:?}] token = \"env:NAME\"")
    })]
    Refused {
        /// The URL (redacted).
        url: String,
        /// 401 or 403.
        status: StatusCode,
        /// The host asked.
        host: String,
        /// Whether a configured credential was sent.
        sent_token: bool,
    },
    /// Too many redirects, or a redirect without a usable `Location`.
    #[error("{url}: {reason}")]
    Redirect {
        /// The URL (redacted).
        url: String,
        /// What was wrong.
        reason: &'static str,
    },
    /// Offline mode (`[network] offline = true`) refused the connection before it was made.
    #[error(transparent)]
    Offline(#[from] ondevice_egress::EgressError),
}

impl FetchError {
    /// Whether trying again later (same mirror) may help.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Network { .. } => true,
            FetchError::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
            }
            FetchError::Url(UrlError::Resolve { .. }) => true,
            _ => false,
        }
    }
}

/// Describes a reqwest error without its URL (which may hold a signed query).
pub(crate) fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// The download client.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    policy: Arc<HostPolicy>,
    credentials: Arc<Vec<Credential>>,
}

impl Fetcher {
    /// A client enforcing `policy` and sending `credentials` to their hosts.
    pub fn new(policy: HostPolicy, credentials: Vec<Credential>) -> Result<Fetcher, FetchError> {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(CheckedResolver { policy: policy.clone() }))
            .connect_timeout(Duration::from_secs(20))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("ondevice/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Network { url: String::new(), reason: describe(e) })?;
        Ok(Fetcher { client, policy, credentials: Arc::new(credentials) })
    }

    /// The host policy.
    pub fn policy(&self) -> &HostPolicy {
        &self.policy
    }

    /// `GET url` (with `Range: bytes=start-end` when given), following redirects with the checks
    /// on each hop. Returns a successful response (2xx).
    pub async fn get(&self, url: &Url, range: Option<(u64, u64)>) -> Result<reqwest::Response, FetchError> {
        let mut url = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            check_url_form(&url)?;
            // The egress gate first: in offline mode not even a DNS lookup happens.
            let flow = ondevice_egress::begin(
                ondevice_egress::Purpose::Pull,
                url.host_str().unwrap_or_default(),
                url.port_or_known_default().unwrap_or(0),
            )?;
            self.policy.check_url(&url).await?;
            let mut req = self.client.get(url.clone());
            if let Some((start, end)) = range {
                req = req.header(RANGE, format!("bytes={start}-{end}"));
            }
            let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
            let credential = self.credentials.iter().find(|c| c.host == host);
            if let Some(c) = credential {
                req = req.header(AUTHORIZATION, c.header.clone());
            }
            let resp = req.send().await.map_err(|e| {
                let reason = describe(e);
                flow.failed(&reason);
                FetchError::Network { url: redact_url(&url), reason }
            })?;
            // Bytes received: the body the server announced (a ranged chunk, or the whole file).
            flow.received(resp.content_length().unwrap_or(0));
            let status = resp.status();
            if !status.is_success() && !status.is_redirection() {
                flow.failed(format!("server answered {status}"));
            }
            if status.is_redirection() {
                let next =
                    resp.headers().get(LOCATION).and_then(|l| l.to_str().ok()).and_then(|l| url.join(l).ok()).ok_or(
                        FetchError::Redirect { url: redact_url(&url), reason: "redirect without a valid Location" },
                    )?;
                tracing::debug!(from = %redact_url(&url), to = %redact_url(&next), "following redirect");
                url = next;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                let sent_token = credential.is_some();
                return Err(FetchError::Refused { url: redact_url(&url), status, host, sent_token });
            }
            if !status.is_success() {
                return Err(FetchError::Status { url: redact_url(&url), status });
            }
            return Ok(resp);
        }
        Err(FetchError::Redirect { url: redact_url(&url), reason: "too many redirects" })
    }
}
