//! quinn endpoints for the receiver (server) and the agent (client), both
//! requiring the peer's pinned certificate.

use crate::pinned::PinnedVerifier;
use crate::{Identity, NetError, parse_fingerprint};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, Endpoint, TransportConfig, VarInt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The TLS server name both sides use; identity comes from the pinned fingerprint, not the name.
pub const SERVER_NAME: &str = "sluice";
const ALPN: &[u8] = b"sluice/1";

/// TLS alerts a peer sees when its certificate is refused (or missing).
const CERT_ALERTS: [u8; 5] = [42, 46, 48, 49, 116];

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Flow-control windows sized for bulk file data over a fast link: the defaults
/// would cap a 1 Gbit/s, 10 ms path at a fraction of its capacity.
/// How long a silent peer is given before its connection is declared dead. The
/// agent keeps everything the standby has not made durable and resends it on the
/// next connection, so a short timeout costs nothing but a reconnect, and a
/// receiver that was killed is noticed within seconds.
pub const IDLE_TIMEOUT_MS: u32 = 5_000;
/// Keep-alives make an idle but healthy link send something well within the timeout.
const KEEP_ALIVE: Duration = Duration::from_secs(1);

/// The transport both sides use. Replication is one bidirectional stream the
/// agent opens: the receiver accepts one such stream and no unidirectional
/// ones, the agent accepts none, and neither takes datagrams, so a peer cannot
/// make the other hold buffers for streams nobody reads.
fn transport(accept_bidi: u32) -> Arc<TransportConfig> {
    let mut transport = TransportConfig::default();
    transport
        .stream_receive_window(VarInt::from_u32(32 << 20))
        .receive_window(VarInt::from_u32(64 << 20))
        .send_window(64 << 20)
        .max_concurrent_bidi_streams(VarInt::from_u32(accept_bidi))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(None)
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(VarInt::from_u32(IDLE_TIMEOUT_MS).into()));
    Arc::new(transport)
}

/// Connections still in their handshake that the server holds state for at
/// once; more are refused before any cryptography is spent on them.
pub const MAX_INCOMING: usize = 64;

/// A server endpoint on `listen` that only completes handshakes with a client
/// presenting the certificate pinned by `peer_fingerprint`.
pub fn server_endpoint(listen: SocketAddr, identity: &Identity, peer_fingerprint: &str) -> Result<Endpoint, NetError> {
    server_endpoint_on(bind_udp(listen)?, identity, peer_fingerprint)
}

/// [`server_endpoint`] on a socket bound earlier with [`bind_udp`] (by a
/// process that drops its privileges in between).
pub fn server_endpoint_on(socket: std::net::UdpSocket, identity: &Identity, peer_fingerprint: &str) -> Result<Endpoint, NetError> {
    let listen = socket.local_addr().map_err(|source| NetError::Bind { addr: "0.0.0.0:0".parse().expect("literal address"), source })?;
    let provider = provider();
    let verifier = PinnedVerifier::new(parse_fingerprint(peer_fingerprint)?, provider.clone());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert_der()?], identity.key_der()?)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| NetError::QuicTls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport(1));
    config.max_incoming(MAX_INCOMING);
    config.incoming_buffer_size(64 << 10);
    config.incoming_buffer_size_total(4 << 20);
    Endpoint::new(quinn::EndpointConfig::default(), Some(config), socket, Arc::new(quinn::TokioRuntime))
        .map_err(|source| NetError::Bind { addr: listen, source })
}

/// A client endpoint that presents `identity` and accepts only the server
/// certificate pinned by `peer_fingerprint`.
pub fn client_endpoint(identity: &Identity, peer_fingerprint: &str) -> Result<Endpoint, NetError> {
    let provider = provider();
    let verifier = PinnedVerifier::new(parse_fingerprint(peer_fingerprint)?, provider.clone());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.cert_der()?], identity.key_der()?)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| NetError::QuicTls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport(0));
    let bind: SocketAddr = "0.0.0.0:0".parse().expect("literal address");
    let socket = bind_udp(bind)?;
    let mut endpoint = Endpoint::new(quinn::EndpointConfig::default(), None, socket, Arc::new(quinn::TokioRuntime))
        .map_err(|source| NetError::Bind { addr: bind, source })?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// Socket buffer size asked for: a burst of file data must not overflow the
/// kernel's default (about 200 KiB), or QUIC resends what the kernel dropped.
const SOCKET_BUFFER_BYTES: libc::c_int = 8 << 20;

/// Binds a UDP socket for QUIC with large kernel buffers.
pub fn bind_udp(addr: SocketAddr) -> Result<std::net::UdpSocket, NetError> {
    let socket = std::net::UdpSocket::bind(addr).map_err(|source| NetError::Bind { addr, source })?;
    for (forced, plain) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
        // The FORCE variants pass net.core.*mem_max when privileged; the plain ones are capped by it.
        if set_socket_option(&socket, forced).is_err()
            && let Err(e) = set_socket_option(&socket, plain)
        {
            tracing::debug!("cannot enlarge UDP socket buffer: {e}");
        }
    }
    Ok(socket)
}

fn set_socket_option(socket: &std::net::UdpSocket, option: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = SOCKET_BUFFER_BYTES;
    // SAFETY: a valid socket fd and a c_int option value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// True when a handshake failed because a certificate was not the pinned one
/// (seen from either side).
pub fn is_unknown_peer(err: &ConnectionError) -> bool {
    let code = match err {
        ConnectionError::TransportError(e) => e.code,
        ConnectionError::ConnectionClosed(close) => close.error_code,
        _ => return false,
    };
    let code = u64::from(code);
    // TLS alerts travel as QUIC CRYPTO_ERROR codes 0x100 + alert.
    (0x100..0x200).contains(&code) && CERT_ALERTS.contains(&((code - 0x100) as u8))
}
