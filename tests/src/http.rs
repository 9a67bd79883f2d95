//! A deliberately small HTTP/1.1 client over a Unix socket, written against the wire so the tests
//! see exactly what any client sees.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// A response: status code, headers (lower-cased names) and body.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The stable error code of an error response.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Sends raw bytes and reads the whole response (the request should say `Connection: close`).
pub fn raw(socket: &Path, request: &[u8]) -> Response {
    let mut stream = UnixStream::connect(socket).expect("connect to the control socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request).expect("send request");
    let mut reader = BufReader::new(stream);
    read_response(&mut reader)
}

fn read_head(reader: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header line");
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((k, v)) = trimmed.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    (status, headers)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn read_response(reader: &mut impl BufRead) -> Response {
    let (status, headers) = read_head(reader);
    let mut body = Vec::new();
    if let Some(len) = header(&headers, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        reader.read_exact(&mut body).expect("body");
    } else if header(&headers, "transfer-encoding") == Some("chunked") {
        while let Some(chunk) = read_chunk(reader) {
            body.extend(chunk);
        }
    } else {
        reader.read_to_end(&mut body).expect("body");
    }
    Response {
        status,
        headers,
        body,
    }
}

fn read_chunk(reader: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let size = usize::from_str_radix(line.trim(), 16).ok()?;
    if size == 0 {
        return None;
    }
    let mut chunk = vec![0; size + 2];
    reader.read_exact(&mut chunk).ok()?;
    chunk.truncate(size);
    Some(chunk)
}

/// Sends a request with an optional JSON body.
pub fn request(socket: &Path, method: &str, path: &str, body: Option<&Value>) -> Response {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: modelhost\r\nConnection: close\r\n");
    if !body.is_empty() {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    raw(socket, &[head.as_bytes(), body.as_bytes()].concat())
}

pub fn get(socket: &Path, path: &str) -> Response {
    request(socket, "GET", path, None)
}

/// A GET that returns `None` instead of failing when nobody answers (a host restarting).
pub fn try_get_json(socket: &Path, path: &str) -> Option<Value> {
    let mut stream = UnixStream::connect(socket).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: modelhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .ok()?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stream, &mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| serde_json::from_str(body).ok())
        .flatten()
}

/// Subscribes to `/v1/events`; every event arrives on the returned channel, in order.
pub fn subscribe(socket: &Path) -> mpsc::Receiver<Value> {
    let mut stream = UnixStream::connect(socket).expect("connect to the control socket");
    stream
        .write_all(b"GET /v1/events HTTP/1.1\r\nHost: modelhost\r\n\r\n")
        .expect("send request");
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader);
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/x-ndjson")
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut pending = Vec::new();
        while let Some(chunk) = read_chunk(&mut reader) {
            pending.extend(chunk);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let event: Value = serde_json::from_slice(&line).expect("each line is JSON");
                if tx.send(event).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Sends a request on any connected stream and reads the whole response.
pub fn over<S: std::io::Read + Write>(
    mut stream: S,
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Response {
    stream
        .write_all(&request_bytes(method, path, body, headers))
        .expect("send request");
    read_response(&mut BufReader::new(stream))
}

fn request_bytes(
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Vec<u8> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: modelhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    [head.as_bytes(), body.as_bytes()].concat()
}

/// A request over TCP (the generation API's listener).
pub fn tcp(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Response {
    let stream = std::net::TcpStream::connect(addr).expect("connect to the TCP listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    over(stream, method, path, body, headers)
}

/// A server-sent event stream being read: each `data:` payload in order, and comments counted.
pub struct SseStream {
    reader: BufReader<Box<dyn std::io::Read + Send>>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pending: Vec<u8>,
    pub comments: usize,
    done: bool,
}

impl SseStream {
    /// POSTs `body` to `path` on a connected stream and reads the head.
    pub fn open<S: std::io::Read + Write + Send + 'static>(
        mut stream: S,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> SseStream {
        stream
            .write_all(&request_bytes("POST", path, Some(body), headers))
            .expect("send request");
        let mut reader: BufReader<Box<dyn std::io::Read + Send>> = BufReader::new(Box::new(stream));
        let (status, headers) = read_head(&mut reader);
        SseStream {
            reader,
            status,
            headers,
            pending: Vec::new(),
            comments: 0,
            done: false,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The next `data:` payload (`[DONE]` included, as text), or None at the end of the body.
    pub fn next_data(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.pending.drain(..end + 2).collect();
                let text = String::from_utf8(event).expect("events are UTF-8");
                let mut data = None;
                for line in text.lines() {
                    if let Some(d) = line.strip_prefix("data: ") {
                        data = Some(d.to_owned());
                    } else if line.starts_with(':') {
                        self.comments += 1;
                    }
                }
                match data {
                    Some(d) => return Some(d),
                    None => continue,
                }
            }
            if self.done {
                return None;
            }
            match read_chunk(&mut self.reader) {
                Some(chunk) => self.pending.extend(chunk),
                None => self.done = true,
            }
        }
    }

    /// Every remaining payload.
    pub fn rest(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.next_data()).collect()
    }

    /// Every remaining payload as JSON, checking that the stream ends with OpenAI's `[DONE]`.
    pub fn json_chunks(&mut self) -> Vec<Value> {
        let payloads = self.rest();
        assert_eq!(
            payloads.last().map(String::as_str),
            Some("[DONE]"),
            "{payloads:?}"
        );
        payloads[..payloads.len() - 1]
            .iter()
            .map(|p| serde_json::from_str(p).expect("a JSON event"))
            .collect()
    }
}
