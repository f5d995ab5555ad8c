//! QUIC transport for sluice: identities, mutual TLS pinned by certificate
//! fingerprint, and framed message I/O over QUIC streams.
//!
//! There is no certificate authority: each side generates a self-signed
//! certificate with `init`, prints its fingerprint (sha256 of the DER), and the
//! other side's config pins it. A peer presenting any other certificate fails the
//! TLS handshake, before a single frame is read.
//!
//! # Layout
//! - [`identity`]: key and certificate generation, storage, fingerprints.
//! - [`pinned`]: rustls verifiers that accept exactly one fingerprint.
//! - [`endpoint`]: quinn client and server endpoints built from the above.
//! - [`daemon`]: `init`, logging and signal handling shared by both daemons.
//! - [`docs`]: man pages and shell completions from a daemon's command line.
//! - [`framed`]: [`FrameReader`] / [`FrameWriter`] over quinn streams.
//! - [`metrics_http`]: the `/metrics` endpoint and the status page.
//! - [`history`]: the last hour of lag the status page charts.

pub mod daemon;
pub mod docs;
pub mod endpoint;
pub mod framed;
pub mod history;
pub mod identity;
pub mod metrics_http;
pub mod notify;
pub mod origin;
pub mod pinned;

pub use endpoint::{SERVER_NAME, bind_udp, client_endpoint, is_unknown_peer, server_endpoint, server_endpoint_on};
pub use framed::{FrameReader, FrameWriter};
pub use identity::{Identity, parse_fingerprint};
pub use metrics_http::{StatusSource, serve_metrics, serve_metrics_on};

use std::path::PathBuf;

/// Errors of the transport layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Reading or writing identity files failed.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// `init` would overwrite an existing key.
    #[error("{path} already exists (use --force to replace it)")]
    KeyExists { path: PathBuf },
    /// A PEM file holds no usable certificate or key.
    #[error("{what} is not valid PEM: {detail}")]
    Pem { what: &'static str, detail: String },
    /// Certificate generation failed.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A fingerprint in the config is not 64 hex digits.
    #[error("fingerprint {value:?} is not 64 hexadecimal digits (sha256)")]
    BadFingerprint { value: String },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// quinn refused the TLS configuration.
    #[error("QUIC TLS configuration: {0}")]
    QuicTls(String),
    /// Binding the UDP socket failed.
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    /// A connection could not be started.
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing to a stream failed.
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
    /// Finishing a stream failed.
    #[error("stream finish: {0}")]
    Closed(#[from] quinn::ClosedStream),
    /// Reading from a stream failed.
    #[error("stream read: {0}")]
    Read(#[from] quinn::ReadError),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    TruncatedFrame,
    /// The frame is malformed.
    #[error(transparent)]
    Frame(#[from] sluice_proto::FrameError),
}
