//! The HTTP client CLI commands use to talk to the daemon: where it listens and which key to send.

use std::time::Duration;

use anyhow::{Context, bail};
use ondevice_config::{ENV_API_KEY, ENV_LISTEN, Environment, Resolved};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

/// A client bound to one daemon and one key.
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    /// Resolves the daemon's address and the key: `$ONDEVICE_API_KEY`, else the bootstrap token
    /// file (readable only by the daemon's own user).
    pub fn new(resolved: &Resolved) -> anyhow::Result<Client> {
        let env = Environment::from_process();
        let key = match env.get(ENV_API_KEY) {
            Some(k) => k.trim().to_owned(),
            None => {
                let path = resolved.paths.bootstrap_token();
                match std::fs::read_to_string(&path) {
                    Ok(s) => s.trim().to_owned(),
                    // No token file at all: no daemon has ever started on this home.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                        "no ondevice daemon has run with home {} (no {}): start one with `ondevice serve` or \
                         `ondevice daemon start`, or set {ENV_API_KEY} to reach another",
                        resolved.paths.home.display(),
                        path.display()
                    ),
                    Err(e) => bail!(
                        "no api key: set {ENV_API_KEY}, or run as the daemon's user so {} is readable ({e})",
                        path.display()
                    ),
                }
            }
        };
        let base = base_url(resolved, &env);
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(60)).no_proxy();
        if let Some(tls) = &resolved.settings.server.tls {
            let pem = std::fs::read(&tls.cert).with_context(|| format!("cannot read {}", tls.cert.display()))?;
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        Ok(Client { http: builder.build()?, base, key })
    }

    /// Sends a request with a JSON body and decodes the JSON answer, turning API errors into
    /// their message.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<T> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url).bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = self.send(req, &url).await?;
        let bytes = resp.bytes().await?;
        serde_json::from_slice(&bytes).with_context(|| format!("unexpected answer from {url}"))
    }

    /// POSTs a JSON body and returns the successful response for the caller to stream (no
    /// overall timeout: generations may run long; dropping the response cancels them).
    pub async fn post_stream(&self, path: &str, body: &serde_json::Value) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{}", self.base, path);
        let req = self.http.post(&url).bearer_auth(&self.key).json(body).timeout(Duration::from_secs(24 * 3600));
        self.send(req, &url).await
    }

    /// GETs a long-lived response (Server-Sent Events) for the caller to stream.
    pub async fn get_stream(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{}", self.base, path);
        let req = self.http.get(&url).bearer_auth(&self.key).timeout(Duration::from_secs(7 * 24 * 3600));
        self.send(req, &url).await
    }

    /// Sends a request; API errors become their message.
    async fn send(&self, req: reqwest::RequestBuilder, url: &str) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow::anyhow!("cannot reach the daemon at {}: is it running? start it with `ondevice serve` or `ondevice daemon start`", self.base)
            } else {
                anyhow::Error::new(e).context(format!("request to {url} failed"))
            }
        })?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await?;
            let msg = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.pointer("/error/message").and_then(|m| m.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            if status == StatusCode::UNAUTHORIZED {
                bail!("{msg} (check {ENV_API_KEY})");
            }
            bail!("{msg} ({status})");
        }
        Ok(resp)
    }
}

/// `http(s)://addr`: `$ONDEVICE_LISTEN` if set, else the address the running daemon recorded,
/// else the configured one. An all-interfaces address is reached on loopback.
fn base_url(resolved: &Resolved, env: &Environment) -> String {
    let recorded = || {
        std::fs::read_to_string(resolved.paths.listen_file())
            .ok()
            .and_then(|s| s.trim().parse::<std::net::SocketAddr>().ok())
    };
    let configured = resolved.settings.server.listen.0;
    // Port 0 means "any": only the running daemon knows which one it got.
    let mut addr = match env.get(ENV_LISTEN) {
        Some(_) if configured.port() != 0 => configured,
        _ => recorded().unwrap_or(configured),
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    let scheme = if resolved.settings.server.tls.is_some() { "https" } else { "http" };
    format!("{scheme}://{addr}")
}
