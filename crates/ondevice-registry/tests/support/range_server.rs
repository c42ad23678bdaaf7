//! A real HTTP/1.1 file server for download tests (and the pull benchmark), bound to
//! `127.0.0.1:0`: serves files from memory or disk with single `Range` requests (206 +
//! `Content-Range`), and per-file behaviours a test needs: ignore ranges, corrupt the content,
//! throttle, redirect, require a bearer token. It counts the body bytes it sent, and records each
//! request's range and bytes sent, so tests can bound re-downloads.
//! Shared by the registry tests, the e2e tests and `examples/range_server.rs` via `#[path]`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{Full, StreamBody, combinators::BoxBody};
use hyper::body::{Bytes, Frame};
use hyper::{Request, Response, StatusCode};

/// What a path serves.
#[derive(Clone)]
pub enum Content {
    /// Bytes in memory.
    Memory(Arc<Vec<u8>>),
    /// A file read on demand.
    File(PathBuf),
}

/// One served file and how it behaves.
#[derive(Clone)]
pub struct Served {
    /// The bytes.
    pub content: Content,
    /// Answer 200 with the whole file even when a range is asked.
    pub ignore_ranges: bool,
    /// Flip one byte in the middle of what is sent.
    pub corrupt: bool,
    /// Bytes per second per connection (0: unlimited).
    pub throttle: u64,
    /// Answer 302 to this path instead.
    pub redirect_to: Option<String>,
    /// Answer this status (for example 500) instead.
    pub fail_with: Option<u16>,
    /// Answer 401 unless the request carries `Authorization: Bearer <this>`.
    pub bearer: Option<String>,
    /// End every response body after this many bytes (short of its `Content-Length`), as a
    /// connection that keeps dropping.
    pub cut_after: Option<u64>,
}

impl Served {
    /// A plain file from memory.
    pub fn bytes(data: Vec<u8>) -> Served {
        Served {
            content: Content::Memory(Arc::new(data)),
            ignore_ranges: false,
            corrupt: false,
            throttle: 0,
            redirect_to: None,
            fail_with: None,
            bearer: None,
            cut_after: None,
        }
    }

    /// A plain file from disk.
    pub fn file(path: PathBuf) -> Served {
        Served { content: Content::File(path), ..Served::bytes(Vec::new()) }
    }

    fn len(&self) -> u64 {
        match &self.content {
            Content::Memory(d) => d.len() as u64,
            Content::File(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
        }
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The path asked for.
    pub path: String,
    /// The status answered.
    pub status: u16,
    /// First byte of the body sent (the range start, or 0).
    pub start: u64,
    /// End (exclusive) of the range or file sent.
    pub end: u64,
    /// Body bytes sent so far, from `start` on.
    pub sent: u64,
}

/// The running server.
#[derive(Clone)]
pub struct RangeServer {
    /// Where it listens.
    pub addr: SocketAddr,
    files: Arc<Mutex<HashMap<String, Served>>>,
    sent: Arc<AtomicU64>,
    transfers: Arc<Mutex<Vec<Transfer>>>,
}

type Body = BoxBody<Bytes, Infallible>;

impl RangeServer {
    /// Starts serving on `127.0.0.1:0` in the current tokio runtime.
    pub async fn start() -> RangeServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        RangeServer::serve(listener)
    }

    /// Serves on a bound listener.
    pub fn serve(listener: tokio::net::TcpListener) -> RangeServer {
        let server = RangeServer {
            addr: listener.local_addr().expect("addr"),
            files: Arc::default(),
            sent: Arc::default(),
            transfers: Arc::default(),
        };
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let _ = stream.set_nodelay(true);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(s.handle(req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        server
    }

    /// Serves `served` at `path` (such as `/m.gguf`).
    pub fn put(&self, path: &str, served: Served) {
        self.files.lock().unwrap().insert(path.to_owned(), served);
    }

    /// `http://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Body bytes sent so far.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.transfers.lock().unwrap().len() as u64
    }

    /// Every request so far, in the order they arrived.
    pub fn transfers(&self) -> Vec<Transfer> {
        self.transfers.lock().unwrap().clone()
    }

    fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let record = |status: StatusCode, start: u64, end: u64| {
            let mut t = self.transfers.lock().unwrap();
            t.push(Transfer { path: path.clone(), status: status.as_u16(), start, end, sent: 0 });
            t.len() - 1
        };
        let served = self.files.lock().unwrap().get(&path).cloned();
        let Some(served) = served else {
            record(StatusCode::NOT_FOUND, 0, 0);
            return simple(StatusCode::NOT_FOUND);
        };
        if let Some(token) = &served.bearer {
            let expected = format!("Bearer {token}");
            if req.headers().get(hyper::header::AUTHORIZATION).is_none_or(|v| v.as_bytes() != expected.as_bytes()) {
                record(StatusCode::UNAUTHORIZED, 0, 0);
                return simple(StatusCode::UNAUTHORIZED);
            }
        }
        if let Some(code) = served.fail_with {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            record(status, 0, 0);
            return simple(status);
        }
        if let Some(to) = &served.redirect_to {
            record(StatusCode::FOUND, 0, 0);
            let mut r = simple(StatusCode::FOUND);
            r.headers_mut().insert(hyper::header::LOCATION, to.parse().unwrap());
            return r;
        }
        let len = served.len();
        let range = req
            .headers()
            .get(hyper::header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_range(v, len))
            .filter(|_| !served.ignore_ranges);
        let (start, end, status) = match range {
            Some((a, b)) => (a, b, StatusCode::PARTIAL_CONTENT),
            None => (0, len, StatusCode::OK),
        };
        let id = record(status, start, end);
        let mut builder = Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_LENGTH, end - start)
            .header(hyper::header::ACCEPT_RANGES, if served.ignore_ranges { "none" } else { "bytes" });
        if status == StatusCode::PARTIAL_CONTENT {
            builder = builder.header(hyper::header::CONTENT_RANGE, format!("bytes {start}-{}/{len}", end.max(1) - 1));
        }
        let (sent, transfers) = (self.sent.clone(), self.transfers.clone());
        let stream = futures_util::stream::unfold((served, start), move |(served, pos)| {
            let (sent, transfers) = (sent.clone(), transfers.clone());
            async move {
                let stop = served.cut_after.map_or(end, |c| end.min(start + c));
                if pos >= stop {
                    if stop < end {
                        // Let hyper flush what was sent, then end the body early: it closes the
                        // connection, and the client sees the body cut short.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    return None;
                }
                let step = if served.throttle > 0 { (served.throttle / 20).max(1024) } else { 1 << 20 };
                let n = (stop - pos).min(step);
                let mut bytes = match &served.content {
                    Content::Memory(d) => d[pos as usize..(pos + n) as usize].to_vec(),
                    Content::File(p) => {
                        let p = p.clone();
                        tokio::task::spawn_blocking(move || {
                            use std::io::{Read, Seek};
                            let mut f = std::fs::File::open(p).expect("open served file");
                            let mut buf = vec![0u8; n as usize];
                            f.seek(std::io::SeekFrom::Start(pos)).expect("seek served file");
                            f.read_exact(&mut buf).expect("read served file");
                            buf
                        })
                        .await
                        .expect("read task")
                    }
                };
                let total = served.len();
                if served.corrupt && (pos..pos + n).contains(&(total / 2)) {
                    bytes[(total / 2 - pos) as usize] ^= 0xff;
                }
                if served.throttle > 0 {
                    tokio::time::sleep(Duration::from_secs_f64(n as f64 / served.throttle as f64)).await;
                }
                sent.fetch_add(n, Ordering::Relaxed);
                transfers.lock().unwrap()[id].sent += n;
                Some((Ok::<_, Infallible>(Frame::data(Bytes::from(bytes))), (served, pos + n)))
            }
        });
        builder.body(BoxBody::new(StreamBody::new(stream))).unwrap()
    }
}

fn simple(status: StatusCode) -> Response<Body> {
    Response::builder().status(status).body(BoxBody::new(Full::new(Bytes::new()))).unwrap()
}

/// `bytes=a-b` or `bytes=a-` → `[a, b+1)`, clamped; `None` when unsatisfiable or multiple.
fn parse_range(v: &str, len: u64) -> Option<(u64, u64)> {
    let spec = v.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let a: u64 = a.trim().parse().ok()?;
    let b: u64 =
        if b.trim().is_empty() { len.checked_sub(1)? } else { b.trim().parse::<u64>().ok()?.min(len.checked_sub(1)?) };
    (a <= b).then_some((a, b + 1))
}
