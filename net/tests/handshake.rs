//! Real QUIC handshakes over loopback: the pinned peer gets through, others do not.

use sluice_net::{FrameReader, FrameWriter, Identity, SERVER_NAME, client_endpoint, is_unknown_peer, server_endpoint};
use sluice_proto::{AgentMessage, PROTOCOL_VERSION};

async fn exchange(client_identity: &Identity, server_identity: &Identity, server_pins: &str, client_pins: &str) -> Result<AgentMessage, String> {
    let server = server_endpoint("127.0.0.1:0".parse().unwrap(), server_identity, server_pins).unwrap();
    let addr = server.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        let incoming = server.accept().await.unwrap();
        match incoming.await {
            Ok(connection) => {
                let (_send, recv) = connection.accept_bi().await.map_err(|e| e.to_string())?;
                let mut reader = FrameReader::new(recv);
                reader.read::<AgentMessage>().await.map_err(|e| e.to_string())?.ok_or("eof".to_string())
            }
            Err(e) => Err(format!("server refused: unknown={} {e}", is_unknown_peer(&e))),
        }
    });
    let client = client_endpoint(client_identity, client_pins).unwrap();
    let client_side = async {
        let connection = client.connect(addr, SERVER_NAME).unwrap().await.map_err(|e| e.to_string())?;
        let (send, _recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        let mut writer = FrameWriter::new(send, true);
        writer
            .write(&AgentMessage::Hello { version: PROTOCOL_VERSION, agent: "t".into(), lineage: sluice_proto::Lineage { current: sluice_proto::GenerationId(1), forks: Vec::new() }, activity: sluice_proto::lineage::Activity::default() })
            .await
            .map_err(|e| e.to_string())?;
        writer.finish().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    };
    let client_result = tokio::time::timeout(std::time::Duration::from_secs(5), client_side).await;
    let server_result = tokio::time::timeout(std::time::Duration::from_secs(5), accept).await.map_err(|_| "timeout".to_string())?.unwrap();
    match client_result {
        Ok(Ok(())) => server_result,
        Ok(Err(e)) => Err(format!("client: {e}; server: {server_result:?}")),
        Err(_) => Err("client timeout".into()),
    }
}

#[tokio::test]
async fn pinned_peers_talk() {
    let agent = Identity::generate().unwrap();
    let receiver = Identity::generate().unwrap();
    let message = exchange(&agent, &receiver, &agent.fingerprint().unwrap(), &receiver.fingerprint().unwrap()).await.unwrap();
    assert!(matches!(message, AgentMessage::Hello { version: PROTOCOL_VERSION, .. }));
}

#[tokio::test]
async fn unpinned_client_is_refused() {
    let agent = Identity::generate().unwrap();
    let intruder = Identity::generate().unwrap();
    let receiver = Identity::generate().unwrap();
    let err = exchange(&intruder, &receiver, &agent.fingerprint().unwrap(), &receiver.fingerprint().unwrap()).await.unwrap_err();
    assert!(err.contains("server refused: unknown=true"), "{err}");
}

#[tokio::test]
async fn unpinned_server_is_refused() {
    let agent = Identity::generate().unwrap();
    let receiver = Identity::generate().unwrap();
    let impostor = Identity::generate().unwrap();
    let err = exchange(&agent, &impostor, &agent.fingerprint().unwrap(), &receiver.fingerprint().unwrap()).await.unwrap_err();
    assert!(err.starts_with("client:"), "{err}");
}
