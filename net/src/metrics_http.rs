//! The HTTP `/metrics` endpoint both daemons serve (Prometheus text format).
//!
//! A scrape is one small GET, so a minimal HTTP/1.1 responder is enough and keeps
//! a web framework out of a daemon whose job is replication. Whoever can reach
//! the port can open connections, so their number, the time a request may take
//! and its size are bounded, and a failing `accept` (out of descriptors) backs
//! off instead of spinning. When all slots are taken the oldest connection
//! goes, so clients that connect and say nothing cannot lock a scraper out.

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
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

/// Binds `listen` and serves `registry` at `GET /metrics` until the task is dropped.
/// Returns the bound address (useful with port 0) and the serving task.
pub async fn serve_metrics(
    listen: SocketAddr,
    registry: Arc<Registry>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_metrics_on(std::net::TcpListener::bind(listen)?, registry)
}

/// [`serve_metrics`] on a listener bound earlier. Call inside a tokio runtime.
pub fn serve_metrics_on(
    listener: std::net::TcpListener,
    registry: Arc<Registry>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let bound = listener.local_addr()?;
    tracing::info!("metrics on http://{bound}/metrics");
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
            active.push_back(tokio::spawn(async move {
                match tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &registry)).await {
                    Ok(Err(e)) => tracing::debug!("metrics request failed: {e}"),
                    Err(_) => tracing::debug!("metrics request timed out"),
                    Ok(Ok(())) => {}
                }
            }));
        }
    });
    Ok((bound, task))
}

async fn answer(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
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
    let (status, content_type, body) = if method == "GET" && (target == "/metrics" || target.starts_with("/metrics?")) {
        let mut body = String::new();
        encode(&mut body, registry).map_err(std::io::Error::other)?;
        ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", body)
    } else {
        ("404 Not Found", "text/plain", "try /metrics\n".to_string())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_connections_are_dropped_and_do_not_starve_scrapes() {
        let (addr, task) = serve_metrics("127.0.0.1:0".parse().unwrap(), Arc::new(Registry::default())).await.unwrap();
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
}
