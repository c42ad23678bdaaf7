//! The stream handed to the API surfaces: it holds the admission permit and the model's active
//! count for as long as the client reads, records mid-stream runtime failures with the breaker, and
//! releases everything when dropped (the client went away or the generation ended).
//!
//! [`first_event`] waits for a runtime's first event so that a failure before any output (a
//! grammar that does not parse, a prompt longer than the context, a worker that died) is an error
//! of the request, answered with a fitting status and open to fallback, not a line inside a
//! successful stream.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use ondevice_runtime::{Event, EventStream, RuntimeError};
use tokio::sync::OwnedSemaphorePermit;

use crate::Inner;

pub(crate) struct Tracked {
    inner: EventStream,
    _permit: OwnedSemaphorePermit,
    orchestrator: Arc<Inner>,
    model: String,
    runtime: String,
    finished: bool,
}

impl Tracked {
    pub(crate) fn new(
        inner: EventStream,
        permit: OwnedSemaphorePermit,
        orchestrator: Arc<Inner>,
        model: String,
        runtime: String,
    ) -> Self {
        Tracked { inner, _permit: permit, orchestrator, model, runtime, finished: false }
    }
}

impl Stream for Tracked {
    type Item = Result<Event, RuntimeError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let item = self.inner.as_mut().poll_next(cx);
        match &item {
            Poll::Ready(Some(Err(e))) => {
                self.orchestrator.record(&self.runtime, Err(e));
                self.finished = true;
            }
            Poll::Ready(Some(Ok(Event::Done { .. }))) | Poll::Ready(None) => self.finished = true,
            _ => {}
        }
        item
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.orchestrator.touch_loaded(&self.model, &self.runtime, None, -1);
    }
}

/// Waits for the first event of `events`: an error there fails the generation; anything else is
/// handed on in front of the rest of the stream.
pub(crate) async fn first_event(mut events: EventStream) -> Result<EventStream, RuntimeError> {
    match std::future::poll_fn(|cx| events.as_mut().poll_next(cx)).await {
        Some(Err(e)) => Err(e),
        first => Ok(Box::pin(Prepended { first, rest: events })),
    }
}

/// A stream with one item put back in front.
struct Prepended {
    first: Option<Result<Event, RuntimeError>>,
    rest: EventStream,
}

impl Stream for Prepended {
    type Item = Result<Event, RuntimeError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.first.take() {
            Some(first) => Poll::Ready(Some(first)),
            None => self.rest.as_mut().poll_next(cx),
        }
    }
}
