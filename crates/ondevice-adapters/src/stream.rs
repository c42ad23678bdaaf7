//! Shared streaming helper: splits a body into lines (NDJSON lines, SSE `data:` lines) and drives a
//! per-protocol [`Decoder`] that turns lines into [`Event`]s. The resulting [`EventStream`] ends after
//! exactly one `Done` or one `Err`; a body that breaks or ends early yields an error item, never a hang.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use hyper::body::Bytes;
use ondevice_runtime::{Event, EventStream, RuntimeError};

/// What one line meant.
pub(crate) enum Step {
    /// Nothing to emit (keep-alive, metadata, empty text).
    Skip,
    /// Generated text.
    Token(String),
    /// The generation ended; this is the last event.
    Done(Event),
    /// Final text and the end, from one line.
    TokenThenDone(String, Event),
    /// The generation failed; this is the last item.
    Fail(RuntimeError),
}

/// Turns the lines of one protocol into events.
pub(crate) trait Decoder: Send + 'static {
    /// One complete line, without its line break.
    fn line(&mut self, line: &str) -> Step;
    /// The body ended cleanly before a `Done`: the final item.
    fn eof(&mut self) -> Result<Event, RuntimeError>;
}

/// A body chunk source: raw bytes or a transport error already mapped to a [`RuntimeError`].
pub(crate) type Body = Pin<Box<dyn Stream<Item = Result<Bytes, RuntimeError>> + Send>>;

/// Something kept alive as long as the stream (for example a connection task aborted on drop).
pub(crate) type Guard = Box<dyn Send + Sync>;

struct State<D> {
    body: Body,
    decoder: D,
    buf: Vec<u8>,
    pending: VecDeque<Result<Event, RuntimeError>>,
    finished: bool,
    idle: Option<(Duration, String)>,
    _guard: Option<Guard>,
}

impl<D: Decoder> State<D> {
    fn feed(&mut self, line: &[u8]) {
        if self.finished {
            return;
        }
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        match self.decoder.line(text) {
            Step::Skip => {}
            Step::Token(t) => self.pending.push_back(Ok(Event::Token(t))),
            Step::Done(e) => {
                self.pending.push_back(Ok(e));
                self.finished = true;
            }
            Step::TokenThenDone(t, e) => {
                self.pending.push_back(Ok(Event::Token(t)));
                self.pending.push_back(Ok(e));
                self.finished = true;
            }
            Step::Fail(e) => {
                self.pending.push_back(Err(e));
                self.finished = true;
            }
        }
    }

    fn finish_with(&mut self, item: Result<Event, RuntimeError>) {
        if !self.finished {
            self.pending.push_back(item);
            self.finished = true;
        }
    }
}

/// Decodes `body` line by line. `idle` = (limit, adapter name): a silence longer than the limit ends the
/// stream with `Timeout`. `guard` lives as long as the stream.
pub(crate) fn decode<D: Decoder>(
    body: Body,
    decoder: D,
    idle: Option<(Duration, String)>,
    guard: Option<Guard>,
) -> EventStream {
    let state =
        State { body, decoder, buf: Vec::new(), pending: VecDeque::new(), finished: false, idle, _guard: guard };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(item) = st.pending.pop_front() {
                return Some((item, st));
            }
            if st.finished {
                return None;
            }
            let next = match &st.idle {
                Some((limit, adapter)) => match tokio::time::timeout(*limit, st.body.next()).await {
                    Ok(n) => n,
                    Err(_) => {
                        let e = RuntimeError::Timeout { adapter: adapter.clone(), after: *limit };
                        st.finish_with(Err(e));
                        continue;
                    }
                },
                None => st.body.next().await,
            };
            match next {
                Some(Ok(bytes)) => {
                    st.buf.extend_from_slice(&bytes);
                    while let Some(pos) = st.buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = st.buf.drain(..=pos).collect();
                        st.feed(&line[..line.len() - 1]);
                    }
                }
                Some(Err(e)) => st.finish_with(Err(e)),
                None => {
                    let rest = std::mem::take(&mut st.buf);
                    if !rest.is_empty() {
                        st.feed(&rest);
                    }
                    if !st.finished {
                        let item = st.decoder.eof();
                        st.finish_with(item);
                    }
                }
            }
        }
    }))
}

/// Parses SSE: returns the payload of a `data:` line, `None` for every other line.
pub(crate) fn sse_data(line: &str) -> Option<&str> {
    let data = line.strip_prefix("data:")?;
    Some(data.strip_prefix(' ').unwrap_or(data))
}

/// A JSON pointer lookup that treats `""` as the root.
pub(crate) fn pointer<'a>(v: &'a serde_json::Value, ptr: &str) -> Option<&'a serde_json::Value> {
    if ptr.is_empty() { Some(v) } else { v.pointer(ptr) }
}

/// Reads a token count at `ptr` (a number, or a numeric string).
pub(crate) fn count_at(v: &serde_json::Value, ptr: Option<&str>) -> Option<u32> {
    let found = pointer(v, ptr?)?;
    found.as_u64().or_else(|| found.as_str().and_then(|s| s.parse().ok())).map(|n| n.min(u32::MAX as u64) as u32)
}

/// Scales each vector to unit length (zero vectors stay zero).
pub(crate) fn normalize(vectors: &mut [Vec<f32>]) {
    for v in vectors {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
    }
}

/// Runs `fut` with a deadline, mapping expiry to [`RuntimeError::Timeout`].
pub(crate) async fn with_timeout<T>(
    adapter: &str,
    after: Duration,
    fut: impl Future<Output = Result<T, RuntimeError>>,
) -> Result<T, RuntimeError> {
    tokio::time::timeout(after, fut)
        .await
        .unwrap_or_else(|_| Err(RuntimeError::Timeout { adapter: adapter.to_owned(), after }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ondevice_runtime::{FinishReason, Usage};

    struct Lines;
    impl Decoder for Lines {
        fn line(&mut self, line: &str) -> Step {
            match line {
                "" => Step::Skip,
                "end" => Step::Done(Event::Done { finish: FinishReason::Stop, usage: Usage::default(), timings: None }),
                t => Step::Token(t.to_owned()),
            }
        }
        fn eof(&mut self) -> Result<Event, RuntimeError> {
            Err(RuntimeError::Engine { message: "eof".into() })
        }
    }

    fn body(chunks: &'static [&'static str]) -> Body {
        Box::pin(futures_util::stream::iter(chunks.iter().map(|c| Ok(Bytes::from_static(c.as_bytes())))))
    }

    #[tokio::test]
    async fn lines_split_across_chunks_and_stop_after_done() {
        let items: Vec<_> = decode(body(&["ab", "c\r\n\nd", "e\nend\nignored\n"]), Lines, None, None).collect().await;
        assert_eq!(items.len(), 3, "{items:?}");
        assert_eq!(items[0], Ok(Event::Token("abc".into())));
        assert_eq!(items[1], Ok(Event::Token("de".into())));
        assert!(matches!(items[2], Ok(Event::Done { .. })));
    }

    #[tokio::test]
    async fn early_end_yields_the_decoders_error_and_last_line_without_newline_counts() {
        let items: Vec<_> = decode(body(&["x\ny"]), Lines, None, None).collect().await;
        assert_eq!(
            items,
            vec![
                Ok(Event::Token("x".into())),
                Ok(Event::Token("y".into())),
                Err(RuntimeError::Engine { message: "eof".into() })
            ]
        );
    }

    #[tokio::test]
    async fn silence_beyond_the_idle_limit_is_a_timeout() {
        let silent: Body = Box::pin(futures_util::stream::pending());
        let idle = Some((Duration::from_millis(50), "t".to_owned()));
        let items: Vec<_> = decode(silent, Lines, idle, None).collect().await;
        assert!(matches!(items.as_slice(), [Err(RuntimeError::Timeout { .. })]), "{items:?}");
    }

    #[test]
    fn sse_and_pointers() {
        assert_eq!(sse_data("data: {}"), Some("{}"));
        assert_eq!(sse_data("data:[DONE]"), Some("[DONE]"));
        assert_eq!(sse_data(": ping"), None);
        let v = serde_json::json!({"u": {"n": 3, "s": "4"}});
        assert_eq!(count_at(&v, Some("/u/n")), Some(3));
        assert_eq!(count_at(&v, Some("/u/s")), Some(4));
        assert_eq!(count_at(&v, None), None);
        assert_eq!(pointer(&v, ""), Some(&v));
    }
}
