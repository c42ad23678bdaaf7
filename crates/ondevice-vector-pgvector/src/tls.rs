//! TLS for the PostgreSQL connection, chosen by libpq's `sslmode` in the connection string (both
//! forms: `host=db.example sslmode=verify-full` and `postgresql://db.example/x?sslmode=require`).
//!
//! - absent, `disable`, `allow`, `prefer`: no TLS (as before; over a Unix socket TLS adds nothing).
//! - `require`, `verify-ca`, `verify-full`: TLS or no connection, with the server's certificate
//!   verified against `sslrootcert` (a PEM file) when given, else the Mozilla roots
//!   (`webpki-roots`), **and** its host name checked: stricter than libpq's `require` and
//!   `verify-ca`, which skip those checks; a server with a private CA needs `sslrootcert`.
//!
//! `sslmode` and `sslrootcert` are taken out of the string before `tokio-postgres` parses the rest
//! (it knows neither `verify-full` nor `sslrootcert`). Client certificates (`sslcert`, `sslkey`)
//! are refused with a clear error rather than ignored.

use std::path::PathBuf;
use std::sync::Arc;

use ondevice_vector::VectorError;

use crate::BACKEND;

/// What TLS the connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS (`disable`, `allow`, `prefer`, or no `sslmode`).
    Disable,
    /// TLS required, certificate and host name verified (`require`, `verify-ca`, `verify-full`).
    Verify,
}

/// A connection string with its TLS settings taken out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnSettings {
    /// The rest, for `tokio-postgres`.
    pub conninfo: String,
    /// TLS or not.
    pub mode: SslMode,
    /// `sslrootcert`: PEM file of the certificates to trust instead of the Mozilla roots.
    pub root_cert: Option<PathBuf>,
}

fn bad(detail: String) -> VectorError {
    VectorError::backend(BACKEND, std::io::Error::new(std::io::ErrorKind::InvalidInput, detail))
}

fn percent_decode(s: &str) -> Result<String, VectorError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or_else(|| bad(format!("bad percent escape in {s:?}")))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad(format!("bad percent escape in {s:?}")))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(format!("{s:?} is not UTF-8 once decoded")))
}

/// `key=value` pairs of libpq's keyword form: values bare or in single quotes with `\'` and `\\`.
fn keyword_pairs(s: &str) -> Result<Vec<(String, String)>, VectorError> {
    let mut pairs = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = it.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.next() != Some('=') {
            return Err(bad(format!("expected key=value in the connection string after {key:?}")));
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if it.next_if_eq(&'\'').is_some() {
            loop {
                match it.next() {
                    Some('\\') => value.push(it.next().ok_or_else(|| bad("unfinished escape".into()))?),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(bad(format!("unterminated quoted value for {key:?}"))),
                }
            }
        } else {
            while let Some(c) = it.next_if(|c| !c.is_whitespace()) {
                value.push(c);
            }
        }
        pairs.push((key, value));
    }
}

fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Takes `sslmode` and `sslrootcert` out of a connection string (keyword or URL form).
pub fn parse(url: &str) -> Result<ConnSettings, VectorError> {
    let mut mode = None::<String>;
    let mut root = None::<String>;
    let mut take = |k: &str, v: String| -> Result<bool, VectorError> {
        match k {
            "sslmode" => mode = Some(v),
            "sslrootcert" => root = Some(v),
            "sslcert" | "sslkey" | "sslpassword" => {
                return Err(bad(format!("{k} (client certificates) is not supported: leave it out of [vector] url")));
            }
            _ => return Ok(false),
        }
        Ok(true)
    };
    let conninfo = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for part in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = part.split_once('=').unwrap_or((part, ""));
                    if !take(&percent_decode(k)?, percent_decode(v)?)? {
                        kept.push(part);
                    }
                }
                if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) }
            }
        }
    } else {
        let mut kept = Vec::new();
        for (k, v) in keyword_pairs(url)? {
            if !take(&k, v.clone())? {
                kept.push(format!("{k}={}", quote(&v)));
            }
        }
        kept.join(" ")
    };
    let mode = match mode.as_deref() {
        None | Some("disable" | "allow" | "prefer") => SslMode::Disable,
        Some("require" | "verify-ca" | "verify-full") => SslMode::Verify,
        Some(other) => {
            return Err(bad(format!(
                "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            )));
        }
    };
    if root.is_some() && mode == SslMode::Disable {
        return Err(bad("sslrootcert is set but sslmode is not require or verify-full: TLS would not be used".into()));
    }
    Ok(ConnSettings { conninfo, mode, root_cert: root.map(PathBuf::from) })
}

/// The rustls connector for [`SslMode::Verify`]: `root_cert`'s certificates, else the Mozilla roots.
pub fn connector(root_cert: Option<&std::path::Path>) -> Result<tokio_postgres_rustls::MakeRustlsConnect, VectorError> {
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|e| VectorError::Io { path: path.display().to_string(), source: e })?;
            let mut n = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| bad(format!("sslrootcert {}: {e}", path.display())))?;
                roots.add(cert).map_err(|e| bad(format!("sslrootcert {}: {e}", path.display())))?;
                n += 1;
            }
            if n == 0 {
                return Err(bad(format!("sslrootcert {} holds no PEM certificate", path.display())));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_form() {
        let s = parse("host=db.example  dbname=x sslmode=verify-full sslrootcert='/etc/my ca.pem' password='a\\'b'")
            .unwrap();
        assert_eq!(s.mode, SslMode::Verify);
        assert_eq!(s.root_cert.as_deref(), Some(std::path::Path::new("/etc/my ca.pem")));
        assert_eq!(s.conninfo, "host='db.example' dbname='x' password='a\\'b'");
        let c: tokio_postgres::Config = s.conninfo.parse().unwrap();
        assert_eq!(c.get_password(), Some(&b"a'b"[..]));
        assert_eq!(parse("host=/run/postgresql").unwrap().mode, SslMode::Disable);
        assert_eq!(parse("host = h sslmode = require").unwrap().mode, SslMode::Verify);
        assert_eq!(parse("host=h sslmode=prefer").unwrap().mode, SslMode::Disable);
    }

    #[test]
    fn url_form() {
        let s = parse("postgresql://me:pw@db.example:5432/x?application_name=od&sslmode=require&sslrootcert=%2Fca.pem")
            .unwrap();
        assert_eq!(s.mode, SslMode::Verify);
        assert_eq!(s.root_cert.as_deref(), Some(std::path::Path::new("/ca.pem")));
        assert_eq!(s.conninfo, "postgresql://me:pw@db.example:5432/x?application_name=od");
        s.conninfo.parse::<tokio_postgres::Config>().unwrap();
        let s = parse("postgres://h/x?sslmode=verify-ca").unwrap();
        assert_eq!((s.mode, s.conninfo.as_str()), (SslMode::Verify, "postgres://h/x"));
        assert_eq!(parse("postgres://h/x").unwrap().mode, SslMode::Disable);
    }

    #[test]
    fn refusals() {
        for (url, says) in [
            ("host=h sslmode=verify", "not one of"),
            ("postgres://h/x?sslmode=on", "not one of"),
            ("host=h sslcert=/c.pem", "client certificates"),
            ("host=h sslrootcert=/ca.pem", "TLS would not be used"),
            ("host=h sslmode='require", "unterminated"),
            ("host", "expected key=value"),
            ("postgres://h/x?sslmode=%zz", "percent escape"),
        ] {
            let e = parse(url).unwrap_err().to_string();
            assert!(e.contains(says), "{url}: {e}");
        }
        let e = connector(Some(std::path::Path::new("/nonexistent/ca.pem"))).err();
        assert!(matches!(e, Some(VectorError::Io { .. })), "{e:?}");
        let empty = tempfile::NamedTempFile::new().unwrap();
        let e = connector(Some(empty.path())).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
