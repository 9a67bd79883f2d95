//! `GET /v1/events`: the event stream as NDJSON, one event per line, until the client leaves or
//! the host shuts down.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE};
use hyper::StatusCode;
use tokio::sync::{broadcast, mpsc};

use super::{AppState, Response};
use crate::api::{Envelope, Event};

/// A response body fed by a channel.
pub(super) struct ChannelBody(pub(super) mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|line| line.map(|l| Ok(Frame::data(l))))
    }
}

fn line(envelope: &Envelope) -> Bytes {
    let mut text = serde_json::to_vec(envelope).unwrap_or_default();
    text.push(b'\n');
    Bytes::from(text)
}

pub fn event_stream(state: &AppState) -> Response {
    let mut events = state.registry.events().subscribe();
    let mut shutdown = state.shutdown.clone();
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        loop {
            let envelope = tokio::select! {
                received = events.recv() => match received {
                    Ok(envelope) => envelope,
                    Err(broadcast::error::RecvError::Lagged(missed)) => Envelope {
                        seq: 0,
                        time_ms: 0,
                        event: Event::Lagged { missed },
                    },
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = shutdown.changed() => break,
            };
            // The client went away: stop forwarding.
            if tx.send(line(&envelope)).await.is_err() {
                break;
            }
        }
    });
    let body: BoxBody<Bytes, std::convert::Infallible> = ChannelBody(rx).boxed();
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        "application/x-ndjson".parse().expect("static header"),
    );
    headers.insert(CACHE_CONTROL, "no-cache".parse().expect("static header"));
    response
}
