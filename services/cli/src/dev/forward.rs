//! `keel dev forward`: a TCP forwarder in the host network namespace. Each connection is
//! spliced to the first node whose API port accepts, so TLS stays end to end and a stopped
//! node is skipped. The node list is re-read from `dev.json` per connection, so nodes added
//! with `keel dev add` are served too.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::plan::API_PORT;
use super::state::{self, DevPaths};

/// How long to wait for one node to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Runs the forwarder until the process is killed.
pub async fn serve(listen: SocketAddr, paths: DevPaths) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    tracing::info!(%listen, "forwarding to the dev cluster's nodes");
    let mut last_known: Vec<SocketAddr> = Vec::new();
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: say so and keep serving.
                tracing::warn!(%e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match state::load(&paths) {
            Ok(Some(s)) => {
                last_known = s
                    .nodes
                    .iter()
                    .map(|n| SocketAddr::from((n.address, API_PORT)))
                    .collect()
            }
            Ok(None) => tracing::warn!("dev.json is gone; using the last known nodes"),
            Err(e) => tracing::warn!(error = %e, "reading dev.json; using the last known nodes"),
        }
        let targets = last_known.clone();
        tokio::spawn(async move {
            if let Err(e) = splice(client, &targets).await {
                tracing::warn!(%peer, error = format!("{e:#}"), "connection not forwarded");
            }
        });
    }
}

async fn splice(mut client: TcpStream, targets: &[SocketAddr]) -> anyhow::Result<()> {
    for target in targets {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
            Ok(Ok(mut upstream)) => {
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                // Errors here are connection resets mid-stream: nothing to report.
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                return Ok(());
            }
            Ok(Err(e)) => tracing::debug!(%target, %e, "node refused"),
            Err(_) => tracing::debug!(%target, "node did not answer in time"),
        }
    }
    anyhow::bail!("no node accepts on port {API_PORT}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A port nothing listens on. Taken after the test's listeners are bound, so that none of
    /// them can be handed the same port.
    async fn closed_port() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }

    #[tokio::test]
    async fn splices_to_the_first_target_that_accepts() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        let closed = closed_port().await;
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        tokio::spawn(async move {
            let (c, _) = front.accept().await.unwrap();
            splice(c, &[closed, echo_addr]).await.unwrap();
        });
        let mut c = TcpStream::connect(front_addr).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hello");
    }

    #[tokio::test]
    async fn no_target_is_an_error() {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        let closed = closed_port().await;
        let _c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = front.accept().await.unwrap();
        assert!(splice(s, &[closed]).await.is_err());
    }
}
