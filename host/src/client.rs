//! The CLI's side of the control socket: HTTP/1.1 requests over a Unix stream, one connection per
//! request, and the event stream read line by line.

use std::path::{Path, PathBuf};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

use crate::api::Envelope;
use crate::api::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach modelhost at {socket}: {source} (is `modelhost serve` running? --socket or $MODELHOST_SOCKET choose another socket)")]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to modelhost: {0}")]
    Http(#[from] hyper::Error),
    /// The host answered with an error.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("modelhost sent something unexpected: {0}")]
    Decode(#[from] serde_json::Error),
}

/// A client for one control socket.
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client {
            socket: socket.to_owned(),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "modelhost");
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Api {
                status: 0,
                code: "bad_request".into(),
                message: e.to_string(),
            })?;
        let response = sender.send_request(request).await?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        Err(api_error(status, &bytes))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let response = self.send(method, path, body).await?;
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok(serde_json::from_slice(&bytes)?)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(Method::GET, path, None).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.json(Method::POST, path, Some(serde_json::to_vec(body)?))
            .await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(Method::DELETE, path, None).await
    }

    /// POSTs a streaming request (`"stream": true`) and returns its server-sent events.
    pub async fn sse<B: Serialize>(&self, path: &str, body: &B) -> Result<SseStream, ClientError> {
        let response = self
            .send(Method::POST, path, Some(serde_json::to_vec(body)?))
            .await?;
        Ok(SseStream {
            body: response.into_body(),
            buffer: BytesMut::new(),
        })
    }

    /// Opens the event stream.
    pub async fn events(&self) -> Result<EventStream, ClientError> {
        let response = self.send(Method::GET, "/v1/events", None).await?;
        Ok(EventStream {
            body: response.into_body(),
            buffer: BytesMut::new(),
        })
    }
}

fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => ClientError::Api {
            status: status.as_u16(),
            code: e.error.code,
            message: e.error.message,
        },
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            code: "unknown".into(),
            message: String::from_utf8_lossy(body).trim().to_owned(),
        },
    }
}

/// The NDJSON event stream, one event at a time.
pub struct EventStream {
    body: Incoming,
    buffer: BytesMut,
}

impl EventStream {
    /// The next event; `None` when the host closed the stream.
    pub async fn next(&mut self) -> Result<Option<Envelope>, ClientError> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line = self.buffer.split_to(end + 1);
                return Ok(Some(serde_json::from_slice(&line[..end])?));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(frame) => {
                    if let Ok(mut data) = frame?.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.buffer.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
            }
        }
    }
}

/// A server-sent event stream: the `data:` payload of each event, in order.
pub struct SseStream {
    body: Incoming,
    buffer: BytesMut,
}

impl SseStream {
    /// The next payload (`[DONE]` included, as text); `None` at the end of the body.
    pub async fn next(&mut self) -> Result<Option<String>, ClientError> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let event = self.buffer.split_to(end + 2);
                let text = String::from_utf8_lossy(&event);
                if let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) {
                    return Ok(Some(data.to_owned()));
                }
                // A comment (keepalive): read on.
                continue;
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(frame) => {
                    if let Ok(mut data) = frame?.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.buffer.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
            }
        }
    }
}
