//! TCP pass-through to the API server, for machines on a provisioning
//! network that cannot reach it. Bytes only: TLS stays end to end between
//! the agent and the API server (girder pxe never sees a token or a
//! request), and the agent verifies the API server's certificate against the
//! API server's own name (`tlsServerName` in its credentials).

use super::metrics::PxeMetrics;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Connections passed through at once; more wait for a place.
const MAX_CONNECTIONS: usize = 1024;
/// How long connecting to the API server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Passes every connection accepted on `listener` through to `upstream`
/// (`host:port` of the API server) until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    upstream: String,
    metrics: Arc<PxeMetrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (client, peer) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %err, "cannot accept a connection for the API server");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let Ok(place) = places.clone().acquire_owned().await else { return Ok(()) };
        let (upstream, metrics, shutdown) = (upstream.clone(), metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _place = place;
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = pass(client, peer, &upstream, &metrics) => {}
            }
        });
    }
}

async fn pass(mut client: TcpStream, peer: SocketAddr, upstream: &str, metrics: &PxeMetrics) {
    let mut server = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream)).await {
        Ok(Ok(server)) => server,
        Ok(Err(err)) => {
            metrics.api_connection("failed");
            tracing::warn!(%peer, %upstream, error = %err, "cannot reach the API server for an agent");
            return;
        }
        Err(_) => {
            metrics.api_connection("failed");
            tracing::warn!(%peer, %upstream, "the API server did not accept a connection within 10 s");
            return;
        }
    };
    metrics.api_connection("opened");
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
        tracing::debug!(%peer, error = %err, "agent connection to the API server ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_pass_both_ways_unchanged() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut conn, _) = upstream.accept().await.unwrap();
            let mut buf = [0u8; 5];
            conn.read_exact(&mut buf).await.unwrap();
            buf.reverse();
            conn.write_all(&buf).await.unwrap();
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(PxeMetrics::default());
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(listener, upstream_addr, metrics.clone(), shutdown.clone()));
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        conn.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"olleh");
        assert!(metrics.render().contains("girder_pxe_api_connections_total{result=\"opened\"} 1"));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn an_unreachable_api_server_closes_the_connection_and_counts_it() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = closed.local_addr().unwrap().to_string();
        drop(closed);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(PxeMetrics::default());
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(listener, dead, metrics.clone(), shutdown.clone()));
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0))), "the connection is closed: {read:?}");
        assert!(metrics.render().contains("girder_pxe_api_connections_total{result=\"failed\"} 1"));
        shutdown.cancel();
    }
}
