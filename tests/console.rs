//! Consoles end to end on a real 3-node dev cluster under TCG: the VM runs on one node and
//! its serial console and VNC display are opened through the API of another node (relayed
//! over the nodes' mutual-TLS peer channel), with tickets; bad, reused, wrong-VM, wrong-kind
//! and expired tickets and missing credentials get a 401 with the error body and no upgrade;
//! a stopped VM's console gets a 409; `keel vm console NAME` prints the guest's lines.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use keel_tests::{ok, Api, DevCluster};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Socket = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// What opening a console WebSocket gave.
enum Opened {
    /// Upgraded; with the subprotocol the server chose.
    Socket(Box<Socket>, Option<String>),
    /// Refused before the upgrade: status and JSON body.
    Refused(u16, Value),
}

fn tls(ca_path: &str) -> Result<rustls::ClientConfig> {
    let pem = std::fs::read(ca_path)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c?)?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Opens `path` of the API at `base` (`https://ip:port`) as a WebSocket.
async fn open(
    dev: &DevCluster,
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Opened> {
    let rest = base.strip_prefix("https://").context("https base")?;
    let mut req = format!("wss://{rest}{path}").into_client_request()?;
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())?,
            v.parse()?,
        );
    }
    let host = req.uri().host().context("host")?.to_string();
    let port = req.uri().port_u16().unwrap_or(443);
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    let name = rustls::pki_types::ServerName::try_from(host.clone())?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls(&dev.info.ca_cert)?))
        .connect(name, tcp)
        .await?;
    match tokio_tungstenite::client_async(req, stream).await {
        Ok((ws, resp)) => {
            let proto = resp
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            Ok(Opened::Socket(Box::new(ws), proto))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Ok(Opened::Refused(resp.status().as_u16(), body))
        }
        Err(e) => Err(e.into()),
    }
}

fn socket(o: Opened, what: &str) -> Result<(Socket, Option<String>)> {
    match o {
        Opened::Socket(ws, proto) => Ok((*ws, proto)),
        Opened::Refused(status, body) => bail!("{what}: refused with {status}: {body}"),
    }
}

/// Asserts a refusal with `status`, the error body, and a message containing `needle`.
fn refused(o: Opened, status: u16, needle: &str, what: &str) -> Result<()> {
    match o {
        Opened::Socket(..) => bail!("{what}: upgraded, want {status}"),
        Opened::Refused(s, body) => {
            assert_eq!(s, status, "{what}: {body}");
            let message = body["error"]["message"].as_str().unwrap_or("");
            assert!(
                body["error"]["code"].is_string() && message.contains(needle),
                "{what}: want the error body mentioning {needle:?}, got {body}"
            );
            Ok(())
        }
    }
}

/// Reads binary frames until their text matches `done`, within `deadline`.
async fn read_until(
    ws: &mut Socket,
    deadline: Duration,
    done: impl Fn(&str) -> bool,
) -> Result<String> {
    let mut text = String::new();
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        match tokio::time::timeout(end - Instant::now(), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => text.push_str(&String::from_utf8_lossy(&b)),
            Ok(Some(Ok(Message::Text(t)))) => text.push_str(t.as_str()),
            Ok(Some(Ok(Message::Close(c)))) => bail!("closed ({c:?}) after {text:?}"),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => bail!("broke after {text:?}: {e}"),
            Ok(None) => bail!("ended after {text:?}"),
            Err(_) => break,
        }
        if done(&text) {
            return Ok(text);
        }
    }
    bail!("not seen within {deadline:?}; got {text:?}")
}

/// Counter values in the guest's output.
fn counters(text: &str) -> Vec<u64> {
    text.split("keel-guest counter ")
        .skip(1)
        .filter_map(|s| {
            let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
            // Only whole lines: the number is followed by the end of its line.
            s[digits.len()..]
                .starts_with(['\r', '\n'])
                .then(|| digits.parse().ok())
                .flatten()
        })
        .collect()
}

async fn ticket(api: &Api, vm: &str, body: Option<Value>) -> Result<Value> {
    let a = api
        .call("POST", &format!("/api/v1/vms/{vm}/console"), body)
        .await?;
    anyhow::ensure!(a.status == 200, "console ticket: {} {}", a.status, a.body);
    Ok(a.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consoles_reach_the_guest_through_another_node() -> Result<()> {
    let dev = DevCluster::up("console", 3, "10.77.7.0/24", 18449)?;
    dev.import_guest_image("tiny")?;
    ok(
        dev.cli(&[
            "vm", "create", "con1", "--image", "tiny", "--cpus", "1", "--memory", "128MiB",
            "--node", "node2", "--wait",
        ])?,
        "vm create",
    )?;
    let show: Value = serde_json::from_str(&ok(
        dev.cli(&["vm", "show", "con1", "-o", "json"])?,
        "vm show",
    )?)?;
    assert_eq!(show["status"]["node"], "node2", "{show}");
    // Everything below goes through node3's API; the guest runs on node2.
    let base = dev.api_of("node3")?;
    let api = dev.client(&base).await?;
    let token = api.token.clone().context("token")?;

    // A ticket taken now is checked again once it has expired.
    let early = ticket(&api, "con1", None).await?;
    let early_taken = Instant::now();

    // Serial through node3: the guest's counter lines arrive.
    let t = ticket(&api, "con1", None).await?;
    assert!(t["expires_at"].is_string(), "{t}");
    let serial_url = t["serial_url"].as_str().context("serial_url")?.to_string();
    let vnc_url = t["vnc_url"].as_str().context("vnc_url")?.to_string();
    let started = Instant::now();
    let (mut ws, _) = socket(open(&dev, &base, &serial_url, &[]).await?, "serial")?;
    let upgraded = started.elapsed();
    let text = read_until(&mut ws, Duration::from_secs(60), |t| counters(t).len() >= 2).await?;
    eprintln!(
        "console: serial through another node upgraded in {upgraded:?}, two counter lines in {:?}",
        started.elapsed()
    );
    let seen = counters(&text);
    assert!(seen[1] > seen[0], "the counter advances: {text:?}");
    // Keys reach the guest (its shell ignores them; the console must stay up).
    ws.send(Message::binary(b"\n".to_vec())).await?;
    read_until(&mut ws, Duration::from_secs(10), |t| {
        !counters(t).is_empty()
    })
    .await?;
    ws.close(None).await?;

    // A ticket opens one console once, wherever it is presented.
    refused(
        open(&dev, &base, &vnc_url, &[]).await?,
        401,
        "already used",
        "reused ticket",
    )?;
    refused(
        open(&dev, &dev.api_of("node1")?, &serial_url, &[]).await?,
        401,
        "already used",
        "reused ticket on another node",
    )?;

    // VNC through node3: noVNC's subprotocol, and the RFB greeting from QEMU.
    let t = ticket(&api, "con1", Some(json!({"kind": "vnc"}))).await?;
    assert!(
        t["serial_url"].is_null(),
        "a VNC ticket offers no serial URL: {t}"
    );
    let url = t["vnc_url"].as_str().context("vnc_url")?.to_string();
    let (mut vnc, proto) = socket(
        open(&dev, &base, &url, &[("sec-websocket-protocol", "binary")]).await?,
        "vnc",
    )?;
    assert_eq!(proto.as_deref(), Some("binary"));
    let greeting = read_until(&mut vnc, Duration::from_secs(20), |t| t.len() >= 12).await?;
    assert_eq!(&greeting[..12], "RFB 003.008\n", "{greeting:?}");
    vnc.close(None).await?;

    // Measured, not asserted: ticket → upgraded → RFB greeting through node3 and the peer
    // channel to node2, a few times over.
    let mut opens = Vec::new();
    for _ in 0..5 {
        let t = ticket(&api, "con1", Some(json!({"kind": "vnc"}))).await?;
        let url = t["vnc_url"].as_str().context("vnc_url")?.to_string();
        let started = Instant::now();
        let (mut vnc, _) = socket(open(&dev, &base, &url, &[]).await?, "vnc")?;
        let upgraded = started.elapsed();
        read_until(&mut vnc, Duration::from_secs(20), |t| t.len() >= 12).await?;
        opens.push((upgraded, started.elapsed()));
        vnc.close(None).await?;
    }
    opens.sort();
    eprintln!("console: VNC through another node, (upgraded, greeting) per open: {opens:?}");

    // A ticket for one console does not open the other; one for another VM opens nothing.
    let serial_only = ticket(&api, "con1", Some(json!({"kind": "serial"}))).await?;
    let st = serial_only["ticket"]
        .as_str()
        .context("ticket")?
        .to_string();
    refused(
        open(
            &dev,
            &base,
            &format!("/api/v1/vms/con1/console/vnc?ticket={st}"),
            &[],
        )
        .await?,
        401,
        "not the vnc console",
        "serial ticket on vnc",
    )?;
    refused(
        open(
            &dev,
            &base,
            &format!("/api/v1/vms/other/console/serial?ticket={st}"),
            &[],
        )
        .await?,
        401,
        "not other",
        "ticket of another VM",
    )?;
    // Bad tickets and no credentials: 401 with the error body, no upgrade.
    refused(
        open(
            &dev,
            &base,
            "/api/v1/vms/con1/console/serial?ticket=garbage",
            &[],
        )
        .await?,
        401,
        "malformed",
        "malformed ticket",
    )?;
    let forged = format!("{}x", st);
    refused(
        open(
            &dev,
            &base,
            &format!("/api/v1/vms/con1/console/serial?ticket={forged}"),
            &[],
        )
        .await?,
        401,
        "not valid",
        "forged ticket",
    )?;
    refused(
        open(&dev, &base, "/api/v1/vms/con1/console/serial", &[]).await?,
        401,
        "ticket",
        "no credentials",
    )?;
    refused(
        open(
            &dev,
            &base,
            "/api/v1/vms/con1/console/serial",
            &[("authorization", "Bearer nope")],
        )
        .await?,
        401,
        "malformed",
        "bad bearer token",
    )?;
    // A bearer token will do for clients that can send headers.
    let bearer = format!("Bearer {token}");
    let (mut ws, _) = socket(
        open(
            &dev,
            &base,
            "/api/v1/vms/con1/console/serial",
            &[("authorization", &bearer)],
        )
        .await?,
        "serial with a bearer token",
    )?;
    read_until(&mut ws, Duration::from_secs(30), |t| {
        !counters(t).is_empty()
    })
    .await?;
    ws.close(None).await?;
    // The ticket route needs a token, and an existing VM.
    let anon = Api::new(&base, &dev.info.ca_cert)?;
    let a = anon.call("POST", "/api/v1/vms/con1/console", None).await?;
    assert_eq!(a.status, 401, "{}", a.body);
    let a = api.call("POST", "/api/v1/vms/nosuch/console", None).await?;
    assert_eq!(a.status, 404, "{}", a.body);
    let a = api
        .call(
            "POST",
            "/api/v1/vms/con1/console",
            Some(json!({"kind": "spice"})),
        )
        .await?;
    assert_eq!(a.status, 400, "{}", a.body);

    // `keel vm console NAME`, stdin not a terminal: it prints the guest's lines.
    let mut child = Command::new(keel_tests::keel_bin())
        .args(["vm", "console", "con1"])
        .env("KEEL_ENDPOINT", &base)
        .env("KEEL_CA_CERT", &dev.info.ca_cert)
        .env("KEEL_USERNAME", &dev.info.username)
        .env("KEEL_PASSWORD", &dev.info.password)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let lines = tokio::task::spawn_blocking(move || {
        let mut got = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("keel-guest counter") {
                got.push(line);
                if got.len() >= 2 {
                    break;
                }
            }
        }
        got
    });
    let lines = match tokio::time::timeout(Duration::from_secs(60), lines).await {
        Ok(l) => l?,
        Err(_) => Vec::new(),
    };
    let _ = child.kill();
    let out = child.wait_with_output()?;
    assert!(
        lines.len() >= 2,
        "keel vm console printed {lines:?}; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The early ticket has expired by now (30 s).
    let left = Duration::from_secs(31).saturating_sub(early_taken.elapsed());
    tokio::time::sleep(left).await;
    let et = early["serial_url"].as_str().context("serial_url")?;
    refused(
        open(&dev, &base, et, &[]).await?,
        401,
        "expired",
        "expired ticket",
    )?;

    // A stopped VM has no console: 409, through either node.
    ok(dev.cli(&["vm", "stop", "con1", "--wait"])?, "vm stop")?;
    let t = ticket(&api, "con1", None).await?;
    let url = t["serial_url"].as_str().context("serial_url")?;
    refused(
        open(&dev, &base, url, &[]).await?,
        409,
        "not running",
        "stopped VM",
    )?;
    let out = dev.cli(&["vm", "console", "con1"])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(dev.cli(&["vm", "delete", "con1", "--wait"])?, "vm delete")?;
    Ok(())
}

#[test]
fn counter_lines_are_parsed_whole() {
    assert_eq!(
        counters("boot\r\nkeel-guest counter 7\r\nkeel-guest counter 8\nkeel-guest counter 9"),
        vec![7, 8]
    );
}
