//! An HTTP proxy in front of a loopback server (a registry): it records
//! every request and, while told to, answers 429 with a `Retry-After`
//! instead of forwarding. One request per connection (`Connection: close`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::http::http_request;

/// A request the proxy saw: when, `METHOD /path`, and what it answered.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When the request arrived (its head read).
    pub received: Instant,
    /// When it was answered.
    pub at: Instant,
    pub request: String,
    pub status: u16,
}

#[derive(Default)]
struct Shared {
    log: Mutex<Vec<Seen>>,
    /// Until then, answer 429 with `Retry-After: <secs>`.
    limit: Mutex<Option<(Instant, u64)>>,
    stop: AtomicBool,
}

/// Listening on a free loopback port, forwarding to `upstream`
/// (`host:port`); stopped on drop.
pub struct CountingProxy {
    addr: String,
    shared: Arc<Shared>,
}

impl CountingProxy {
    pub fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let shared = Arc::new(Shared::default());
        let upstream = upstream.to_string();
        let state = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if state.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let state = state.clone();
                let upstream = upstream.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &upstream, &state);
                });
            }
        });
        CountingProxy { addr, shared }
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// Every request so far, in order of answer.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.log.lock().unwrap().clone()
    }

    /// For `window` from now, answer every request 429 with
    /// `Retry-After: <retry_after>` (whole seconds).
    pub fn rate_limit(&self, window: Duration, retry_after: Duration) {
        *self.shared.limit.lock().unwrap() = Some((Instant::now() + window, retry_after.as_secs()));
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
    }
}

fn serve(stream: TcpStream, upstream: &str, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line)? == 0 {
        return Ok(());
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("GET").to_string();
    let path = parts.next().unwrap_or("/").to_string();
    let mut headers: Vec<(String, String)> = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let received = Instant::now();
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let mut out = stream;

    let limited = {
        let limit = shared.limit.lock().unwrap();
        match *limit {
            Some((until, secs)) if Instant::now() < until => Some(secs),
            _ => None,
        }
    };
    let (status, reply) = match limited {
        Some(secs) => (
            429,
            format!(
                "HTTP/1.1 429 Too Many Requests\r\nRetry-After: {secs}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .into_bytes(),
        ),
        None => {
            let forwarded: Vec<(&str, &str)> = headers
                .iter()
                .filter(|(n, _)| {
                    !["host", "connection", "content-length"]
                        .contains(&n.to_ascii_lowercase().as_str())
                })
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let answer = http_request(&method, &format!("http://{upstream}{path}"), &forwarded, &body)?;
            let mut head = format!("HTTP/1.1 {} Proxied\r\n", answer.status);
            let mut original_length = None;
            for (name, value) in &answer.headers {
                match name.as_str() {
                    "content-length" => original_length = Some(value.clone()),
                    "transfer-encoding" | "connection" => {}
                    _ => head.push_str(&format!("{name}: {value}\r\n")),
                }
            }
            let length = if method == "HEAD" {
                original_length.unwrap_or_else(|| "0".into())
            } else {
                answer.body.len().to_string()
            };
            head.push_str(&format!("content-length: {length}\r\nconnection: close\r\n\r\n"));
            let mut reply = head.into_bytes();
            if method != "HEAD" {
                reply.extend_from_slice(&answer.body);
            }
            (answer.status, reply)
        }
    };
    shared.log.lock().unwrap().push(Seen {
        received,
        at: Instant::now(),
        request: format!("{method} {path}"),
        status,
    });
    out.write_all(&reply)?;
    out.flush()
}
