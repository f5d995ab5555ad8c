//! The HTTP listener both daemons serve: `/metrics` (Prometheus text format),
//! and the read-only status page at `/` with the JSON behind it at `/status.json`.
//!
//! A scrape or a page refresh is one small GET, so a minimal HTTP/1.1 responder
//! is enough and keeps a web framework out of a daemon whose job is replication.
//! Only `GET` and `HEAD` are answered: the page is a window, not a control panel.
//! Whoever can reach the port can open connections, so their number, the time a
//! request may take and its size are bounded, and a failing `accept` (out of
//! descriptors) backs off instead of spinning. When all slots are taken the
//! oldest connection goes, so clients that connect and say nothing cannot lock a
//! scraper out.

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Connections served at once; a new one beyond it replaces the oldest.
const MAX_CONNECTIONS: usize = 16;
/// Time a client gets to send its request and read the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (typically no descriptor left).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The status page: one self-contained file (styles and script inline, nothing
/// fetched from elsewhere) that polls `status.json`.
pub const STATUS_PAGE: &str = include_str!("status_page.html");

/// The page may run its own inline script and fetch from its own origin, nothing else.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                           connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

type StatusFuture = Pin<Box<dyn Future<Output = Option<String>> + Send>>;

/// Where `/status.json` comes from: the daemon's status as JSON, the same a
/// `status --json` prints, or `None` when the daemon cannot tell now.
#[derive(Clone)]
pub struct StatusSource(Arc<dyn Fn() -> StatusFuture + Send + Sync>);

impl StatusSource {
    pub fn new<F, Fut>(status: F) -> StatusSource
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<String>> + Send + 'static,
    {
        StatusSource(Arc::new(move || Box::pin(status())))
    }
}

/// Binds `listen` and serves `registry` at `GET /metrics`, and the status page
/// when `status` is given, until the task is dropped. Returns the bound address
/// (useful with port 0) and the serving task.
pub async fn serve_metrics(
    listen: SocketAddr,
    registry: Arc<Registry>,
    status: Option<StatusSource>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_metrics_on(std::net::TcpListener::bind(listen)?, registry, status)
}

/// [`serve_metrics`] on a listener bound earlier. Call inside a tokio runtime.
pub fn serve_metrics_on(
    listener: std::net::TcpListener,
    registry: Arc<Registry>,
    status: Option<StatusSource>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let bound = listener.local_addr()?;
    tracing::info!("metrics on http://{bound}/metrics");
    if status.is_some() {
        tracing::info!("status page on http://{bound}/");
    }
    let task = tokio::spawn(async move {
        let mut active: std::collections::VecDeque<tokio::task::JoinHandle<()>> = std::collections::VecDeque::new();
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!("metrics listener: accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            active.retain(|request| !request.is_finished());
            if active.len() >= MAX_CONNECTIONS
                && let Some(oldest) = active.pop_front()
            {
                oldest.abort();
            }
            let registry = registry.clone();
            let status = status.clone();
            active.push_back(tokio::spawn(async move {
                match tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &registry, status.as_ref())).await {
                    Ok(Err(e)) => tracing::debug!("metrics request failed: {e}"),
                    Err(_) => tracing::debug!("metrics request timed out"),
                    Ok(Ok(())) => {}
                }
            }));
        }
    });
    Ok((bound, task))
}

/// One answer: status line, content type, extra headers, body.
struct Reply {
    status: &'static str,
    content_type: &'static str,
    headers: String,
    body: String,
}

impl Reply {
    fn text(status: &'static str, body: &str) -> Reply {
        Reply { status, content_type: "text/plain; charset=utf-8", headers: String::new(), body: body.to_string() }
    }
}

async fn answer(mut stream: TcpStream, registry: &Registry, status: Option<&StatusSource>) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let reply = match (method, path, status) {
        ("GET" | "HEAD", "/metrics", _) => {
            let mut body = String::new();
            encode(&mut body, registry).map_err(std::io::Error::other)?;
            Reply { status: "200 OK", content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8", headers: String::new(), body }
        }
        ("GET" | "HEAD", "/" | "/index.html", Some(_)) => Reply {
            status: "200 OK",
            content_type: "text/html; charset=utf-8",
            headers: format!(
                "Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\nContent-Security-Policy: {PAGE_POLICY}\r\n"
            ),
            body: STATUS_PAGE.to_string(),
        },
        ("GET" | "HEAD", "/status.json", Some(source)) => match (source.0)().await {
            Some(body) => Reply {
                status: "200 OK",
                content_type: "application/json",
                headers: "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n".to_string(),
                body,
            },
            None => Reply::text("503 Service Unavailable", "the daemon did not answer; try again\n"),
        },
        ("GET" | "HEAD", _, Some(_)) => Reply::text("404 Not Found", "try / or /metrics\n"),
        ("GET" | "HEAD", _, None) => Reply::text("404 Not Found", "try /metrics\n"),
        _ => Reply { headers: "Allow: GET, HEAD\r\n".to_string(), ..Reply::text("405 Method Not Allowed", "this endpoint only reads\n") },
    };
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
        reply.status,
        reply.content_type,
        reply.body.len(),
        reply.headers
    );
    stream.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        stream.write_all(reply.body.as_bytes()).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_connections_are_dropped_and_do_not_starve_scrapes() {
        let (addr, task) = serve_metrics("127.0.0.1:0".parse().unwrap(), Arc::new(Registry::default()), None).await.unwrap();
        // More silent clients than the server answers at once.
        let mut idle = Vec::new();
        for _ in 0..(MAX_CONNECTIONS * 2) {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let scrape = async {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            answer
        };
        let answer = tokio::time::timeout(REQUEST_TIMEOUT / 2, scrape).await.expect("a scrape was starved");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // A silent client is hung up on once its time is up.
        let mut buf = [0u8; 16];
        let last = idle.last_mut().unwrap();
        let read = tokio::time::timeout(REQUEST_TIMEOUT * 2, last.read(&mut buf)).await.expect("idle connection kept open");
        assert!(matches!(read, Ok(0) | Err(_)));
        task.abort();
    }

    async fn ask(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn the_page_and_its_json_are_served_read_only() {
        let status = StatusSource::new(|| async { Some(r#"{"healthy":true}"#.to_string()) });
        let (addr, task) = serve_metrics("127.0.0.1:0".parse().unwrap(), Arc::new(Registry::default()), Some(status)).await.unwrap();
        let page = ask(addr, "GET / HTTP/1.1\r\n\r\n").await;
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(page.contains("Content-Security-Policy: default-src 'none'"), "{page}");
        assert!(page.contains("status.json"), "the page polls its JSON");
        let elsewhere = page.replace("http://www.w3.org/2000/svg", "");
        assert!(!elsewhere.contains("http://") && !elsewhere.contains("https://"), "the page fetches nothing from elsewhere");
        let json = ask(addr, "GET /status.json?t=1 HTTP/1.1\r\n\r\n").await;
        assert!(json.starts_with("HTTP/1.1 200") && json.ends_with(r#"{"healthy":true}"#), "{json}");
        let head = ask(addr, "HEAD /status.json HTTP/1.1\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
        for method in ["POST", "PUT", "DELETE"] {
            let refused = ask(addr, &format!("{method} /status.json HTTP/1.1\r\nContent-Length: 0\r\n\r\n")).await;
            assert!(refused.starts_with("HTTP/1.1 405") && refused.contains("Allow: GET, HEAD"), "{refused}");
        }
        task.abort();

        let silent = StatusSource::new(|| async { None });
        let (addr, task) = serve_metrics("127.0.0.1:0".parse().unwrap(), Arc::new(Registry::default()), Some(silent)).await.unwrap();
        assert!(ask(addr, "GET /status.json HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 503"));
        task.abort();

        let (addr, task) = serve_metrics("127.0.0.1:0".parse().unwrap(), Arc::new(Registry::default()), None).await.unwrap();
        assert!(ask(addr, "GET / HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404"), "no page unless asked for");
        assert!(ask(addr, "GET /metrics HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 200"));
        task.abort();
    }
}
