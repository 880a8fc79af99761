//! `keel vm console NAME`: the VM's serial console on this terminal.
//!
//! Asks for a console ticket (`POST /api/v1/vms/{name}/console`), opens the serial WebSocket
//! with it, and relays: keys to the guest, the guest's output to stdout. On a terminal, stdin
//! is put in raw mode (every key goes to the guest) and Ctrl-] detaches; otherwise stdin is
//! relayed as it is, and its end does not end the session (output keeps coming until the
//! console closes), so scripts and tests can read the guest's lines.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use keel_model::{ConsoleKind, ConsoleTicket, ConsoleTicketRequest, Name};
use reqwest::{Method, StatusCode};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::client::{error_from_body, tls_config_from_pem, ApiClient};

/// The byte Ctrl-] sends: detaches from the console.
pub const ESCAPE: u8 = 0x1d;

/// Where the system's CA bundle lives (used without `--ca-cert`).
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A console WebSocket over TLS.
pub type ConsoleSocket = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// `keel vm console NAME`.
pub async fn run(client: &ApiClient, name: &Name) -> anyhow::Result<()> {
    let ticket: ConsoleTicket = client
        .request(
            Method::POST,
            &format!("/api/v1/vms/{name}/console"),
            Some(&ConsoleTicketRequest {
                kind: Some(ConsoleKind::Serial),
            }),
        )
        .await?;
    let path = ticket
        .serial_url
        .with_context(|| format!("the server gave no serial console URL for VM {name}"))?;
    let ws = open(client.endpoint(), &path, tls_config()?).await?;
    attach(ws, name).await
}

/// The TLS configuration of this invocation: the same CA the API client trusts
/// (`--ca-cert`, `KEEL_CA_CERT`, the saved login's, or the system's).
fn tls_config() -> anyhow::Result<rustls::ClientConfig> {
    let cli = crate::cli::Cli::try_parse().context("re-reading the command line")?;
    let target = crate::session::target(cli.endpoint.as_deref(), cli.ca_cert.as_ref())?;
    let path = target
        .ca_cert
        .unwrap_or_else(|| Path::new(SYSTEM_BUNDLE).to_path_buf());
    let pem = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(tls_config_from_pem(&pem, &path)?)
}

/// Opens the WebSocket at `path` of `endpoint` (`https://host:port`); a refusal (401, 404,
/// 409…) becomes the API's error.
pub async fn open(
    endpoint: &str,
    path: &str,
    mut tls: rustls::ClientConfig,
) -> anyhow::Result<ConsoleSocket> {
    let base = endpoint.trim_end_matches('/');
    let Some(rest) = base.strip_prefix("https://") else {
        bail!("the endpoint {endpoint} is not https://");
    };
    let url = format!("wss://{rest}{path}");
    let req = url
        .as_str()
        .into_client_request()
        .with_context(|| format!("console URL {url}"))?;
    let host = req
        .uri()
        .host()
        .context("the endpoint names no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = req.uri().port_u16().unwrap_or(443);
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .with_context(|| format!("connecting to {host}:{port}"))?;
    let _ = tcp.set_nodelay(true);
    // WebSockets upgrade HTTP/1.1 connections.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server = rustls::pki_types::ServerName::try_from(host.clone())
        .with_context(|| format!("{host} is not a valid server name"))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(server, tcp)
        .await
        .with_context(|| format!("TLS with {host}:{port}"))?;
    match tokio_tungstenite::client_async(req, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let status =
                StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let text = resp
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .to_string();
            Err(error_from_body(Method::GET, format!("{base}{path}"), status, &text, None).into())
        }
        Err(e) => Err(e).with_context(|| format!("opening the console at {base}{path}")),
    }
}

/// The terminal in raw mode until dropped.
struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    fn enter() -> anyhow::Result<Self> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).context("reading the terminal settings")?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).context("putting the terminal in raw mode")?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

/// What typing `bytes` means: the bytes to send, and whether the user asked to detach.
pub fn keys(bytes: &[u8], tty: bool) -> (&[u8], bool) {
    match bytes.iter().position(|b| *b == ESCAPE) {
        Some(i) if tty => (&bytes[..i], true),
        _ => (bytes, false),
    }
}

/// Reads stdin on a plain thread (it never holds up exit), chunk by chunk; the channel closes
/// at end of input.
fn stdin_chunks() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Relays between this terminal and the console until either ends.
async fn attach(ws: ConsoleSocket, name: &Name) -> anyhow::Result<()> {
    let tty = std::io::stdin().is_terminal();
    let raw = if tty { Some(RawMode::enter()?) } else { None };
    if tty {
        eprint!("Connected to the serial console of {name}; detach with Ctrl-]\r\n");
    }
    let (mut tx, mut rx) = ws.split();
    let mut input = stdin_chunks();
    let mut input_open = true;
    let mut stdout = std::io::stdout();
    let result = loop {
        tokio::select! {
            chunk = input.recv(), if input_open => match chunk {
                Some(bytes) => {
                    let (send, detach) = keys(&bytes, tty);
                    if !send.is_empty() {
                        if let Err(e) = tx.send(Message::binary(send.to_vec())).await {
                            break Err(anyhow::Error::new(e).context("sending to the console"));
                        }
                    }
                    if detach {
                        break Ok(());
                    }
                }
                None => input_open = false,
            },
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    if let Err(e) = stdout.write_all(&b).and_then(|()| stdout.flush()) {
                        break Err(e.into());
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    if let Err(e) = stdout.write_all(t.as_bytes()).and_then(|()| stdout.flush()) {
                        break Err(e.into());
                    }
                }
                Some(Ok(Message::Close(_))) | None => break Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(anyhow::Error::new(e).context("reading the console")),
            },
        }
    };
    let _ = tx.send(Message::Close(None)).await;
    drop(raw);
    if tty {
        eprint!("\r\nDetached from {name}.\r\n");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_close_bracket_detaches_only_on_a_terminal() {
        assert_eq!(keys(b"ls\r", true), (&b"ls\r"[..], false));
        assert_eq!(keys(b"ab\x1dcd", true), (&b"ab"[..], true));
        assert_eq!(keys(b"\x1d", true), (&b""[..], true));
        // Piped input is relayed as it is.
        assert_eq!(keys(b"ab\x1dcd", false), (&b"ab\x1dcd"[..], false));
    }

    #[test]
    fn a_ticket_answer_decodes() {
        let t: ConsoleTicket = serde_json::from_str(
            r#"{"ticket":"a.b","kind":"serial","expires_at":"2026-01-01T00:00:00Z",
                "serial_url":"/api/v1/vms/web/console/serial?ticket=a.b"}"#,
        )
        .unwrap();
        assert_eq!(
            t.serial_url.as_deref(),
            Some("/api/v1/vms/web/console/serial?ticket=a.b")
        );
    }
}
