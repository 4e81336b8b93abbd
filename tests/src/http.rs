//! A tiny HTTP/1.1 client and receiver over std sockets, for the hook tests: the client posts
//! to `baton dev`'s HTTP listener (and to Alertmanager's API); the receiver stands in for a
//! chat's `response_url` or incoming webhook and hands every JSON post it gets to the test.
//! Everything is bounded in time.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long one request may take.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body as text.
    pub body: String,
}

impl HttpResponse {
    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends one request to `addr` (`host:port`) and reads the whole answer.
pub fn request(method: &str, addr: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("write request head");
    // A server may answer (413) before it read a large body, and close.
    let _ = stream.write_all(body);
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap_or_else(|e| panic!("reading the answer from {addr}{path}: {e}"));
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line from {addr}{path}: {status_line:?}"));
    let (length, chunked) = read_headers(&mut reader);
    let mut raw = Vec::new();
    match length {
        Some(n) => {
            raw.resize(n, 0);
            reader.read_exact(&mut raw).expect("read body");
        }
        None => {
            let _ = reader.read_to_end(&mut raw);
        }
    }
    if chunked {
        raw = dechunk(&raw);
    }
    HttpResponse { status, body: String::from_utf8_lossy(&raw).into_owned() }
}

/// POSTs `body` with `headers`.
pub fn post(addr: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    request("POST", addr, path, headers, body)
}

/// GETs `path`.
pub fn get(addr: &str, path: &str) -> HttpResponse {
    request("GET", addr, path, &[], b"")
}

/// Reads header lines up to the blank one: (Content-Length, chunked).
fn read_headers(reader: &mut impl BufRead) -> (Option<usize>, bool) {
    let (mut length, mut chunked) = (None, false);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" || line == "\n" {
            return (length, chunked);
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().ok();
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else { return out };
        let size = std::str::from_utf8(&raw[..eol]).ok().and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let Some(size) = size.filter(|s| *s > 0) else { return out };
        let start = eol + 2;
        out.extend_from_slice(&raw[start..(start + size).min(raw.len())]);
        raw = &raw[(start + size + 2).min(raw.len())..];
    }
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request path.
    pub path: String,
    /// The body, parsed as JSON (`null` if it was not JSON).
    pub body: serde_json::Value,
}

/// An HTTP server on loopback that answers every request `200 ok` and keeps its bodies.
pub struct Receiver {
    /// `http://127.0.0.1:PORT`: append a path.
    pub url: String,
    rx: mpsc::Receiver<Received>,
    seen: std::cell::RefCell<VecDeque<Received>>,
}

impl Receiver {
    /// Starts listening on a free port.
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let tx = tx.clone();
                std::thread::spawn(move || serve(stream, tx));
            }
        });
        Receiver { url, rx, seen: Default::default() }
    }

    /// Waits (at most `timeout`) for a request that `pred` accepts and returns it; requests
    /// it does not accept are kept for later calls.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Received) -> bool) -> Received {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut seen = self.seen.borrow_mut();
                if let Some(i) = seen.iter().position(&pred) {
                    return seen.remove(i).expect("index");
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(r) => self.seen.borrow_mut().push_back(r),
                Err(_) => panic!("no request {what} within {timeout:?}; got: {:#?}", self.seen.borrow()),
            }
        }
    }

    /// Every request received so far and not yet taken.
    pub fn drain(&self) -> Vec<Received> {
        while let Ok(r) = self.rx.try_recv() {
            self.seen.borrow_mut().push_back(r);
        }
        self.seen.borrow_mut().drain(..).collect()
    }
}

fn serve(stream: TcpStream, tx: mpsc::Sender<Received>) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (length, _) = read_headers(&mut reader);
    let mut body = vec![0; length.unwrap_or(0)];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let _ = writer
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let _ = tx.send(Received { path, body });
}
