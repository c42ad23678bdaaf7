//! Where downloads may go: the URL scheme allowlist and the refusal of loopback, private and
//! link-local destinations (SSRF protection).
//!
//! The address check runs after DNS resolution, inside the HTTP client's resolver, so the address
//! checked is the address connected to (no DNS-rebinding gap). IP-literal hosts never reach a
//! resolver and are checked before each request. Redirects are followed by the fetcher one hop at
//! a time, and every hop passes both checks again. Hosts in `allow_hosts` (config
//! `[registry] allow_hosts`, env `ONDEVICE_REGISTRY_ALLOW_HOSTS`) skip the address check.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;

/// URL schemes a pull may use.
pub const ALLOWED_SCHEMES: [&str; 2] = ["https", "http"];

/// A URL or destination refused before any byte was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// The text is not a URL.
    #[error("invalid url {url:?}: {reason}")]
    Invalid {
        /// What was given (capped).
        url: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The scheme is not `https` or `http`.
    #[error("url {url}: scheme {scheme:?} is not allowed: use https:// or http://")]
    Scheme {
        /// The URL, without query.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// User and password in the URL.
    #[error("url {url}: credentials in the url are refused: configure [registry.credentials] with a secret reference")]
    Userinfo {
        /// The URL, without credentials or query.
        url: String,
    },
    /// The destination is loopback, private or link-local and the host is not allowed.
    #[error(
        "refusing to download from {host} ({addr}): it is a loopback, private or link-local address; add {host:?} to [registry] allow_hosts (or ONDEVICE_REGISTRY_ALLOW_HOSTS) if you trust it"
    )]
    PrivateAddress {
        /// The host name or literal.
        host: String,
        /// The address it resolved to.
        addr: IpAddr,
    },
    /// The host did not resolve.
    #[error("cannot resolve {host}: {reason}")]
    Resolve {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },
}

/// A URL for logs and errors: scheme, host, port and path, never credentials or the query
/// (signed download URLs carry tokens there).
pub fn redact_url(url: &Url) -> String {
    let mut s = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        s.push_str(&format!(":{port}"));
    }
    s.push_str(url.path());
    if url.query().is_some() {
        s.push_str("?…");
    }
    s
}

/// Parses and checks a URL's form: scheme allowlist, a host, no userinfo.
pub fn parse_url(text: &str) -> Result<Url, UrlError> {
    let url = Url::parse(text)
        .map_err(|e| UrlError::Invalid { url: text.chars().take(200).collect(), reason: e.to_string() })?;
    check_url_form(&url)?;
    Ok(url)
}

/// Checks a parsed URL's form (also used on every redirect target).
pub fn check_url_form(url: &Url) -> Result<(), UrlError> {
    if !ALLOWED_SCHEMES.contains(&url.scheme()) {
        return Err(UrlError::Scheme { url: redact_url(url), scheme: url.scheme().to_owned() });
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Userinfo { url: redact_url(url) });
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(UrlError::Invalid { url: redact_url(url), reason: "no host".to_owned() });
    }
    Ok(())
}

/// Whether an address is publicly routable enough to download from without being allowed.
/// Refused: loopback, unspecified, private (RFC 1918, IPv6 unique local), link-local, carrier-grade
/// NAT, multicast, broadcast, the `0.0.0.0/8` "this network" range, and IPv4-mapped or -compatible
/// forms of any of these.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let seg = v6.segments();
            // ::a.b.c.d (deprecated IPv4-compatible) and NAT64 64:ff9b::/96 embed an IPv4 address.
            if seg[..6] == [0, 0, 0, 0, 0, 0] || seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let v4 = Ipv4Addr::new((seg[6] >> 8) as u8, seg[6] as u8, (seg[7] >> 8) as u8, seg[7] as u8);
                return is_public_v4(v4);
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (seg[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (seg[0] & 0xffc0) == 0xfec0) // site-local fec0::/10 (deprecated)
        }
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let o = v4.octets();
    !(v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64)) // 100.64.0.0/10
}

/// Which hosts may resolve to non-public addresses.
#[derive(Debug, Clone, Default)]
pub struct HostPolicy {
    allowed: BTreeSet<String>,
}

impl HostPolicy {
    /// A policy allowing these hosts (names or IP literals, case-insensitive).
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(allow_hosts: I) -> Self {
        HostPolicy { allowed: allow_hosts.into_iter().map(|h| normalize(h.as_ref())).collect() }
    }

    /// Whether the host is allowed to be non-public.
    pub fn allows(&self, host: &str) -> bool {
        self.allowed.contains(&normalize(host))
    }

    /// Checks one resolved address for `host`.
    pub fn check(&self, host: &str, addr: IpAddr) -> Result<(), UrlError> {
        if is_public(addr) || self.allows(host) {
            Ok(())
        } else {
            Err(UrlError::PrivateAddress { host: host.to_owned(), addr })
        }
    }

    /// Checks a URL's host before a request: IP literals directly, names by resolving them (the
    /// resolver checks again at connect time).
    pub async fn check_url(&self, url: &Url) -> Result<(), UrlError> {
        check_url_form(url)?;
        let host = url.host_str().unwrap_or_default();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self.check(bare, ip);
        }
        if self.allows(host) {
            return Ok(());
        }
        let addrs = resolve(host).await?;
        match addrs.iter().find(|a| !is_public(a.ip())) {
            Some(bad) => Err(UrlError::PrivateAddress { host: host.to_owned(), addr: bad.ip() }),
            None => Ok(()),
        }
    }
}

fn normalize(host: &str) -> String {
    host.trim().trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase()
}

async fn resolve(host: &str) -> Result<Vec<SocketAddr>, UrlError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| UrlError::Resolve { host: host.to_owned(), reason: e.to_string() })?
        .collect();
    if addrs.is_empty() {
        return Err(UrlError::Resolve { host: host.to_owned(), reason: "no addresses".to_owned() });
    }
    Ok(addrs)
}

/// The HTTP client's resolver: resolves with the system resolver, then refuses non-public
/// addresses of hosts that are not allowed. A name with any non-public address is refused whole,
/// so a mixed answer cannot be used to reach an internal service.
#[derive(Debug, Clone)]
pub(crate) struct CheckedResolver {
    pub policy: Arc<HostPolicy>,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs = resolve(&host).await?;
            if !policy.allows(&host) {
                for a in &addrs {
                    policy.check(&host, a.ip())?;
                }
            }
            let iter: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(iter)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_classes() {
        for bad in [
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!is_public(bad.parse().unwrap()), "{bad} must be refused");
        }
        for good in ["1.1.1.1", "8.8.8.8", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(good.parse().unwrap()), "{good} is public");
        }
    }

    #[test]
    fn url_forms() {
        parse_url("https://huggingface.co/a/b.gguf").unwrap();
        parse_url("http://127.0.0.1:8080/x").unwrap();
        for (bad, what) in [
            ("file:///etc/passwd", "scheme"),
            ("ftp://example.com/x", "scheme"),
            ("gopher://example.com/", "scheme"),
            ("https://user:pass@example.com/x", "credentials"),
            ("https://tok@example.com/x", "credentials"),
            ("not a url", "invalid url"),
        ] {
            let err = parse_url(bad).unwrap_err().to_string();
            assert!(err.contains(what), "{bad}: {err}");
            assert!(!err.contains("pass@"), "{err}");
        }
        let u = parse_url("https://cdn.example/x.gguf?X-Amz-Signature=secret").unwrap();
        assert_eq!(redact_url(&u), "https://cdn.example/x.gguf?…");
    }

    #[tokio::test]
    async fn literals_and_names_are_checked_unless_allowed() {
        let none = HostPolicy::default();
        for url in ["http://127.0.0.1:1/x", "http://[::1]:1/x", "http://169.254.169.254/latest", "http://localhost:1/"]
        {
            let err = none.check_url(&parse_url(url).unwrap()).await.unwrap_err();
            assert!(matches!(err, UrlError::PrivateAddress { .. }), "{url}: {err}");
            assert!(err.to_string().contains("allow_hosts"), "{err}");
        }
        let some = HostPolicy::new(["127.0.0.1", "LOCALHOST", "[::1]"]);
        for url in ["http://127.0.0.1:1/x", "http://localhost:1/", "http://[::1]:1/"] {
            some.check_url(&parse_url(url).unwrap()).await.unwrap();
        }
        assert!(some.check_url(&parse_url("http://127.0.0.2/").unwrap()).await.is_err(), "only the listed host");
    }
}
