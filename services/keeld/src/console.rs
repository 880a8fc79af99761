//! Consoles: serial and VNC over authenticated WebSockets, with short-lived tickets.
//!
//! ```text
//!  client ──POST /api/v1/vms/{vm}/console (Bearer)──▶ any node: {ticket, serial_url, vnc_url}
//!  client ──GET …/console/{serial|vnc}?ticket= (WebSocket)──▶ API node
//!        API node: ticket (HMAC, VM, kind, expiry) ─▶ VM running? ─▶ on this node?
//!          yes ─▶ local backend
//!          no  ─▶ wss://{node}:7443/internal/console/{vm}/{kind} (mutual TLS) ─▶ hosting node
//!        hosting node: ticket nonce unused? ─▶ libvirt console stream | /run/keel/vnc/{vm}.sock
//!  binary frames relayed both ways; the client is upgraded only once the backend is open,
//!  so every refusal is an HTTP status with the error body.
//! ```
//!
//! Browsers cannot set headers on a WebSocket, hence tickets: HMAC-SHA256 with a key derived
//! from the cluster's token key (so a ticket never validates as a bearer token nor the other
//! way round), bound to one VM and optionally one kind, valid [`TICKET_TTL`]. A ticket opens
//! one console once: its nonce is redeemed on the node that hosts the VM, which every
//! connection to that VM reaches, so reuse is refused cluster-wide. Non-browser clients may
//! send `Authorization: Bearer TOKEN` instead.
//!
//! No console listens on the network: QEMU's VNC server is bound to a unix socket per domain
//! and the serial console is libvirt's stream; both reach clients only through this proxy.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use keel_model::{ConsoleKind, ConsoleTicket, ConsoleTicketRequest, ErrorBody, VmPhase};
use keel_virt::{Console, HypervisorError};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as PeerMessage;
use tokio_tungstenite::WebSocketStream;
use tracing::{info, warn};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response as HttpResponse;
use warp::ws::{Message, WebSocket, Ws};
use warp::{Filter, Reply};

use crate::api::{self, now_unix, Ctx};
use crate::compute;
use crate::error::ApiError;
use crate::host::Host;
use crate::member::{kinds, node_of, Member};

/// How long a console ticket stays valid.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// Where QEMU's VNC servers listen, one unix socket per domain (on the node's own `/run`).
pub const VNC_DIR: &str = "/run/keel/vnc";
/// Header carrying the ticket nonce from the API node to the hosting node.
const NONCE_HEADER: &str = "x-keel-console-nonce";
/// Header carrying the ticket expiry (unix seconds) along with the nonce.
const EXPIRY_HEADER: &str = "x-keel-console-expires";
/// The WebSocket subprotocol noVNC asks for.
const BINARY_PROTOCOL: &str = "binary";
/// Longest wait for the hosting node to answer the console handshake.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a serial read waits before the relay checks for input and hang-ups.
const SERIAL_POLL: Duration = Duration::from_millis(50);

/// The console named by a path segment.
fn parse_kind(raw: &str) -> Result<ConsoleKind, ApiError> {
    match raw {
        "serial" => Ok(ConsoleKind::Serial),
        "vnc" => Ok(ConsoleKind::Vnc),
        other => Err(ApiError::NotFound(format!(
            "console {other:?} is not known; use serial or vnc"
        ))),
    }
}

/// Query of the console WebSocket routes.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct ConsoleQuery {
    /// A ticket from `POST /api/v1/vms/{name}/console` (browsers); other clients may send a
    /// bearer token instead.
    pub ticket: Option<String>,
}

/// What a ticket says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketClaims {
    /// The VM whose console it opens.
    pub vm: String,
    /// The console it opens; `None`: either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ConsoleKind>,
    /// Who asked for it.
    pub sub: String,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Random; redeemed once on the hosting node.
    pub nonce: String,
}

/// Why a ticket was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// Not a ticket at all.
    #[error("the console ticket is malformed")]
    Malformed,
    /// Forged, or signed by another cluster.
    #[error("the console ticket signature is not valid")]
    BadSignature,
    /// Too old.
    #[error("the console ticket has expired; ask for a new one")]
    Expired,
    /// Issued for another VM.
    #[error("the console ticket is for VM {ticket}, not {vm}")]
    WrongVm {
        /// The ticket's VM.
        ticket: String,
        /// The VM asked for.
        vm: String,
    },
    /// Issued for the other console.
    #[error("the console ticket opens the {ticket} console, not the {asked} console")]
    WrongKind {
        /// The ticket's console.
        ticket: &'static str,
        /// The console asked for.
        asked: &'static str,
    },
    /// The signing key is unusable.
    #[error("the console ticket key is unusable")]
    Key,
}

type HmacSha256 = Hmac<Sha256>;

/// The ticket key: derived from the cluster's token key, so tickets and bearer tokens never
/// validate as each other.
pub fn ticket_key(token_key: &[u8]) -> Result<Vec<u8>, TicketError> {
    let mut m = HmacSha256::new_from_slice(token_key).map_err(|_| TicketError::Key)?;
    m.update(b"keel console ticket v1");
    Ok(m.finalize().into_bytes().to_vec())
}

/// Signs `claims` with `key` (from [`ticket_key`]).
pub fn issue_ticket(key: &[u8], claims: &TicketClaims) -> Result<String, TicketError> {
    let payload = serde_json::to_vec(claims).map_err(|_| TicketError::Malformed)?;
    let mut m = HmacSha256::new_from_slice(key).map_err(|_| TicketError::Key)?;
    m.update(&payload);
    let sig = m.finalize().into_bytes();
    Ok(format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(sig)
    ))
}

/// Checks a ticket for the `kind` console of `vm` at unix time `now`.
pub fn check_ticket(
    key: &[u8],
    ticket: &str,
    vm: &str,
    kind: ConsoleKind,
    now: u64,
) -> Result<TicketClaims, TicketError> {
    let (p, s) = ticket.split_once('.').ok_or(TicketError::Malformed)?;
    let payload = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| TicketError::Malformed)?;
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| TicketError::Malformed)?;
    let mut m = HmacSha256::new_from_slice(key).map_err(|_| TicketError::Key)?;
    m.update(&payload);
    m.verify_slice(&sig)
        .map_err(|_| TicketError::BadSignature)?;
    let claims: TicketClaims =
        serde_json::from_slice(&payload).map_err(|_| TicketError::Malformed)?;
    if claims.exp <= now {
        return Err(TicketError::Expired);
    }
    if claims.vm != vm {
        return Err(TicketError::WrongVm {
            ticket: claims.vm,
            vm: vm.to_string(),
        });
    }
    if let Some(k) = claims.kind {
        if k != kind {
            return Err(TicketError::WrongKind {
                ticket: k.as_str(),
                asked: kind.as_str(),
            });
        }
    }
    Ok(claims)
}

/// Ticket nonces already used on this node, kept until their ticket expires.
#[derive(Debug, Default)]
pub struct Redeemed {
    seen: Mutex<HashMap<String, u64>>,
}

impl Redeemed {
    /// Marks `nonce` (of a ticket expiring at `exp`) used; false if it already was, or if the
    /// ticket has expired (so a forgotten nonce can never be replayed).
    pub fn redeem(&self, nonce: &str, exp: u64, now: u64) -> bool {
        if exp <= now {
            return false;
        }
        let mut seen = match self.seen.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        seen.retain(|_, e| *e > now);
        if seen.contains_key(nonce) {
            return false;
        }
        seen.insert(nonce.to_string(), exp);
        true
    }
}

/// This node's used nonces (every connection to a VM's console is redeemed on its node).
static REDEEMED: LazyLock<Redeemed> = LazyLock::new(Redeemed::default);

/// A ticket to redeem on the hosting node.
#[derive(Debug, Clone)]
struct Once {
    nonce: String,
    exp: u64,
}

fn redeem_here(once: Option<&Once>) -> Result<(), ApiError> {
    match once {
        Some(o) if !REDEEMED.redeem(&o.nonce, o.exp, now_unix()) => Err(ApiError::Unauthenticated(
            "this console ticket was already used (or has expired); ask for a new one".into(),
        )),
        _ => Ok(()),
    }
}

/// The unix socket of the VNC server of VM `vm`'s domain.
pub fn vnc_socket(vm: &str) -> PathBuf {
    Path::new(VNC_DIR).join(format!("{vm}.sock"))
}

fn ensure_vnc_dir() -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(VNC_DIR)
}

/// The VNC display for the domain of VM `vm` (the node reconciler's hook): a unix socket
/// under [`VNC_DIR`], never a TCP port. `None` (no display) if the directory cannot be made.
pub fn domain_vnc(vm: &str) -> Option<keel_virt::Vnc> {
    match ensure_vnc_dir() {
        Ok(()) => Some(keel_virt::Vnc::Socket {
            path: vnc_socket(vm),
        }),
        Err(e) => {
            warn!(vm, dir = VNC_DIR, error = %e, "no VNC display for this VM: cannot create the socket directory");
            None
        }
    }
}

/// This module's part of the OpenAPI document (merged by [`crate::api::openapi`]).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(console_ticket, console_serial, console_vnc),
    components(schemas(ConsoleKind, ConsoleTicketRequest, ConsoleTicket))
)]
pub struct ApiDoc;

/// Issues a console ticket for a VM: open `serial_url` or `vnc_url` as a WebSocket within
/// 30 seconds (browsers cannot send a bearer token on a WebSocket).
#[utoipa::path(post, path = "/api/v1/vms/{name}/console", security(("bearer" = [])),
    params(("name" = String, Path)),
    request_body(content = ConsoleTicketRequest, description = "Optional: bind the ticket to one console."),
    responses((status = 200, body = ConsoleTicket), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn console_ticket(
    name: String,
    ctx: Ctx,
    authz: Option<String>,
    body: Bytes,
) -> api::ApiResult {
    let (m, claims) = api::authenticate(&ctx, authz).await?;
    compute::vm_name(&name)?;
    let req: ConsoleTicketRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ConsoleTicketRequest::default()
    } else {
        api::parse(&body)?
    };
    m.linearizable().await?;
    m.get(compute::VMS, &name)?
        .ok_or_else(|| ApiError::NotFound(format!("VM {name} does not exist")))?;
    let exp = now_unix() + TICKET_TTL.as_secs();
    let key = ticket_key(&m.token_key()?).map_err(|e| ApiError::Internal(e.to_string()))?;
    let ticket = issue_ticket(
        &key,
        &TicketClaims {
            vm: name.clone(),
            kind: req.kind,
            sub: claims.sub.clone(),
            exp,
            nonce: uuid::Uuid::new_v4().simple().to_string(),
        },
    )
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let url = |k: ConsoleKind| {
        (req.kind.is_none() || req.kind == Some(k))
            .then(|| format!("/api/v1/vms/{name}/console/{}?ticket={ticket}", k.as_str()))
    };
    info!(vm = %name, user = %claims.sub, kind = ?req.kind, "console ticket issued");
    api::ok(&ConsoleTicket {
        serial_url: url(ConsoleKind::Serial),
        vnc_url: url(ConsoleKind::Vnc),
        kind: req.kind,
        expires_at: crate::rfc3339(exp),
        ticket,
    })
}

/// The VM's serial console as a WebSocket (binary frames both ways). Authenticate with
/// `?ticket=` or a bearer token; the VM must be running.
#[utoipa::path(get, path = "/api/v1/vms/{name}/console/serial", security(("bearer" = [])),
    params(("name" = String, Path), ConsoleQuery),
    responses((status = 101, description = "Switching to the WebSocket protocol"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
#[allow(dead_code)]
async fn console_serial() {}

/// The VM's display as RFB (VNC) over a WebSocket (subprotocol `binary`, as noVNC asks).
/// Authenticate with `?ticket=` or a bearer token; the VM must be running.
#[utoipa::path(get, path = "/api/v1/vms/{name}/console/vnc", security(("bearer" = [])),
    params(("name" = String, Path), ConsoleQuery),
    responses((status = 101, description = "Switching to the WebSocket protocol"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
#[allow(dead_code)]
async fn console_vnc() {}

/// Who may open the console, and the ticket to redeem (none for a bearer token).
struct Access {
    user: String,
    once: Option<Once>,
}

async fn authorize(
    ctx: &Ctx,
    m: &Member,
    vm: &str,
    kind: ConsoleKind,
    ticket: Option<String>,
    authz: Option<String>,
) -> Result<Access, ApiError> {
    if let Some(t) = ticket {
        let key = ticket_key(&m.token_key()?).map_err(|e| ApiError::Internal(e.to_string()))?;
        let c = check_ticket(&key, t.trim(), vm, kind, now_unix())
            .map_err(|e| ApiError::Unauthenticated(e.to_string()))?;
        return Ok(Access {
            user: c.sub,
            once: Some(Once {
                nonce: c.nonce,
                exp: c.exp,
            }),
        });
    }
    if authz.is_none() {
        return Err(ApiError::Unauthenticated(format!(
            "open the console with ?ticket= from POST /api/v1/vms/{vm}/console, or send 'Authorization: Bearer TOKEN'"
        )));
    }
    let (_, claims) = api::authenticate(ctx, authz).await?;
    Ok(Access {
        user: claims.sub,
        once: None,
    })
}

/// Where the console's bytes come from.
enum Backend {
    /// libvirt's console stream (blocking; pumped on a blocking thread).
    Serial(Box<dyn Console>),
    /// QEMU's VNC unix socket.
    Vnc(tokio::net::UnixStream),
    /// The hosting node's console WebSocket.
    Peer(Box<PeerSocket>),
}

type PeerSocket = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

fn hv_refusal(vm: &str, e: HypervisorError) -> ApiError {
    match e {
        HypervisorError::NotFound { .. } => ApiError::Conflict {
            code: "not_running",
            message: format!("VM {vm} has no domain on this node; it is not running here"),
        },
        HypervisorError::InvalidState { .. } => ApiError::Conflict {
            code: "not_running",
            message: format!("VM {vm} is not running; start it to open its console"),
        },
        other => {
            // The libvirt message is in the chain: say it, once.
            let mut message = other.to_string();
            let mut source = std::error::Error::source(&other);
            while let Some(s) = source {
                message.push_str(": ");
                message.push_str(&s.to_string());
                source = s.source();
            }
            ApiError::Internal(format!("opening the console of VM {vm}: {message}"))
        }
    }
}

/// Opens the console of a VM whose domain runs on this node.
async fn open_local(host: &Host, vm: &str, kind: ConsoleKind) -> Result<Backend, ApiError> {
    let (hv, _) = host.hv.get().ok_or_else(|| {
        ApiError::NotReady("this node's hypervisor is not connected yet; retry shortly".into())
    })?;
    let hv = hv.clone();
    let n = vm.to_string();
    let join = |e: tokio::task::JoinError| ApiError::Internal(format!("console task: {e}"));
    match kind {
        ConsoleKind::Serial => tokio::task::spawn_blocking(move || hv.open_console(&n))
            .await
            .map_err(join)?
            .map(Backend::Serial)
            .map_err(|e| hv_refusal(vm, e)),
        ConsoleKind::Vnc => {
            let info = tokio::task::spawn_blocking(move || hv.domain(&n))
                .await
                .map_err(join)?
                .map_err(|e| hv_refusal(vm, e))?;
            if !info.state.is_active() {
                return Err(ApiError::Conflict {
                    code: "not_running",
                    message: format!("VM {vm} is not running; start it to open its console"),
                });
            }
            let path = vnc_socket(vm);
            tokio::net::UnixStream::connect(&path)
                .await
                .map(Backend::Vnc)
                .map_err(|e| ApiError::Conflict {
                    code: "no_display",
                    message: format!(
                        "VM {vm} has no VNC display ({e}); it gets one at its next start"
                    ),
                })
        }
    }
}

/// A response from the hosting node, passed on as it is (status and error body).
fn proxied(status: u16, body: Option<Vec<u8>>) -> HttpResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    match body {
        Some(b) if !b.is_empty() => warp::reply::with_status(
            warp::reply::with_header(b, "content-type", "application/json"),
            status,
        )
        .into_response(),
        _ => ApiError::Internal(format!(
            "the node running the VM refused the console ({status})"
        ))
        .into_response(),
    }
}

/// Opens the console of a VM on node `node` through its peer port (mutual TLS).
async fn open_remote(
    m: &Member,
    node: &str,
    vm: &str,
    kind: ConsoleKind,
    once: Option<&Once>,
) -> Result<PeerSocket, HttpResponse> {
    let refuse = |e: ApiError| api::reply(Err(e));
    let unreachable = |e: String| {
        refuse(ApiError::NotReady(format!(
            "node {node}, which runs VM {vm}, is unreachable: {e}"
        )))
    };
    let rec = m.get(kinds::NODES, node).map_err(refuse)?.ok_or_else(|| {
        refuse(ApiError::Conflict {
            code: "not_running",
            message: format!("VM {vm} is on node {node}, which is not a member"),
        })
    })?;
    let n = node_of(&rec).map_err(refuse)?;
    let ip: IpAddr = n
        .status
        .address
        .parse()
        .map_err(|e| unreachable(format!("address {:?}: {e}", n.status.address)))?;
    let peer = SocketAddr::new(ip, crate::PEER_PORT);
    let mut cfg = (*m.peers.tls_config()).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let mut req = format!("wss://{peer}/internal/console/{vm}/{}", kind.as_str())
        .into_client_request()
        .map_err(|e| refuse(ApiError::Internal(format!("console request: {e}"))))?;
    if let Some(o) = once {
        for (h, v) in [
            (NONCE_HEADER, o.nonce.clone()),
            (EXPIRY_HEADER, o.exp.to_string()),
        ] {
            let v = v
                .parse()
                .map_err(|_| refuse(ApiError::Internal("console ticket header".into())))?;
            req.headers_mut().insert(h, v);
        }
    }
    let handshake = async {
        let tcp = TcpStream::connect(peer).await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let tls = connector
            .connect(rustls::pki_types::ServerName::IpAddress(ip.into()), tcp)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(tokio_tungstenite::client_async(req, tls).await)
    };
    match tokio::time::timeout(PEER_TIMEOUT, handshake).await {
        Err(_) => Err(unreachable(format!("no answer within {PEER_TIMEOUT:?}"))),
        Ok(Err(e)) => Err(unreachable(e)),
        Ok(Ok(Ok((ws, _)))) => Ok(ws),
        Ok(Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp)))) => {
            let status = resp.status().as_u16();
            Err(proxied(status, resp.into_body()))
        }
        Ok(Ok(Err(e))) => Err(unreachable(e.to_string())),
    }
}

/// Upgrades to a WebSocket relaying `backend`, echoing the `binary` subprotocol if asked.
fn upgrade(ws: Ws, protocols: Option<String>, backend: Backend, what: String) -> HttpResponse {
    let wants_binary = protocols
        .as_deref()
        .is_some_and(|p| p.split(',').any(|x| x.trim() == BINARY_PROTOCOL));
    let reply = ws
        .on_upgrade(move |socket| async move {
            relay(socket, backend).await;
            info!(console = %what, "console detached");
        })
        .into_response();
    if wants_binary {
        warp::reply::with_header(reply, "sec-websocket-protocol", BINARY_PROTOCOL).into_response()
    } else {
        reply
    }
}

#[allow(clippy::too_many_arguments)]
async fn connect(
    name: String,
    kind: String,
    q: ConsoleQuery,
    ws: Option<Ws>,
    protocols: Option<String>,
    ctx: Ctx,
    authz: Option<String>,
) -> HttpResponse {
    match connect_inner(name, kind, q, ws, protocols, ctx, authz).await {
        Ok(r) | Err(r) => r,
    }
}

#[allow(clippy::too_many_arguments)]
async fn connect_inner(
    name: String,
    kind: String,
    q: ConsoleQuery,
    ws: Option<Ws>,
    protocols: Option<String>,
    ctx: Ctx,
    authz: Option<String>,
) -> Result<HttpResponse, HttpResponse> {
    let refuse = |e: ApiError| api::reply(Err(e));
    let kind = parse_kind(&kind).map_err(refuse)?;
    let m = api::member(&ctx).map_err(refuse)?;
    let access = authorize(&ctx, &m, &name, kind, q.ticket, authz)
        .await
        .map_err(refuse)?;
    let ws = ws.ok_or_else(|| {
        refuse(ApiError::bad(
            "this is a WebSocket endpoint: send an Upgrade: websocket request",
            None,
        ))
    })?;
    compute::vm_name(&name).map_err(refuse)?;
    m.linearizable().await.map_err(refuse)?;
    let rec = m
        .get(compute::VMS, &name)
        .map_err(refuse)?
        .ok_or_else(|| refuse(ApiError::NotFound(format!("VM {name} does not exist"))))?;
    let vm = compute::vm_of(&rec).map_err(refuse)?;
    let node = match (vm.status.phase, vm.status.node.clone()) {
        (VmPhase::Running | VmPhase::Migrating, Some(node)) => node,
        (phase, _) => {
            return Err(refuse(ApiError::Conflict {
                code: "not_running",
                message: format!(
                    "VM {name} is not running (it is {}); start it to open its console",
                    serde_json::to_value(phase)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_else(|| format!("{phase:?}"))
                ),
            }))
        }
    };
    let what = format!("{name}/{}", kind.as_str());
    let backend = if node == m.identity.name {
        let host = api::host(&ctx).map_err(refuse)?;
        redeem_here(access.once.as_ref()).map_err(refuse)?;
        open_local(&host, &name, kind).await.map_err(refuse)?
    } else {
        Backend::Peer(Box::new(
            open_remote(&m, &node, &name, kind, access.once.as_ref()).await?,
        ))
    };
    info!(console = %what, user = %access.user, %node, "console attached");
    Ok(upgrade(ws, protocols, backend, what))
}

/// The hosting node's side: a console of a domain on this node, for another node's API
/// (mutual TLS on the peer port). The ticket was checked there; its nonce is redeemed here.
async fn serve_peer(
    vm: String,
    kind: String,
    ws: Ws,
    nonce: Option<String>,
    exp: Option<u64>,
    protocols: Option<String>,
    host: Arc<Host>,
) -> HttpResponse {
    let refuse = |e: ApiError| api::reply(Err(e));
    let kind = match parse_kind(&kind) {
        Ok(k) => k,
        Err(e) => return refuse(e),
    };
    let once = nonce.map(|nonce| Once {
        nonce,
        exp: exp.unwrap_or(0),
    });
    if let Err(e) = redeem_here(once.as_ref()) {
        return refuse(e);
    }
    match open_local(&host, &vm, kind).await {
        Ok(backend) => {
            let what = format!("{vm}/{}", kind.as_str());
            info!(console = %what, "console attached for a peer");
            upgrade(ws, protocols, backend, what)
        }
        Err(e) => refuse(e),
    }
}

/// This module's routes (tried before the generic `vms/{name}/{action}` route).
pub fn routes(ctx: Ctx) -> BoxedFilter<(HttpResponse,)> {
    let ticket = warp::path!("api" / "v1" / "vms" / String / "console")
        .and(warp::post())
        .and(api::with_ctx(ctx.clone()))
        .and(api::authz())
        .and(optional_body())
        .then(console_ticket)
        .map(api::reply);
    let socket = warp::path!("api" / "v1" / "vms" / String / "console" / String)
        .and(warp::get())
        .and(warp::query::<ConsoleQuery>())
        .and(warp::ws().map(Some).or(warp::any().map(|| None)).unify())
        .and(warp::header::optional::<String>("sec-websocket-protocol"))
        .and(api::with_ctx(ctx))
        .and(api::authz())
        .then(connect);
    ticket.or(socket).unify().boxed()
}

/// A JSON body within the API's limit, or none at all (no Content-Length).
fn optional_body() -> impl Filter<Extract = (Bytes,), Error = warp::Rejection> + Clone {
    api::body()
        .or(warp::header::optional::<String>("content-length").and_then(
            |len: Option<String>| async move {
                match len {
                    None => Ok(Bytes::new()),
                    Some(_) => Err(warp::reject::not_found()),
                }
            },
        ))
        .unify()
}

/// The peer-port route of the hosting node; also prepares [`VNC_DIR`], so that a VM migrated
/// here finds it.
pub fn peer_routes(host: Arc<Host>) -> BoxedFilter<(HttpResponse,)> {
    if let Err(e) = ensure_vnc_dir() {
        warn!(dir = VNC_DIR, error = %e, "cannot create the VNC socket directory");
    }
    warp::path!("internal" / "console" / String / String)
        .and(warp::get())
        .and(warp::ws())
        .and(warp::header::optional::<String>(NONCE_HEADER))
        .and(warp::header::optional::<u64>(EXPIRY_HEADER))
        .and(warp::header::optional::<String>("sec-websocket-protocol"))
        .and(warp::any().map(move || host.clone()))
        .then(serve_peer)
        .boxed()
}

/// Relays bytes between the client's WebSocket and `backend` until either side ends.
async fn relay(client: WebSocket, backend: Backend) {
    let (up_tx, up_rx) = mpsc::channel::<Bytes>(64);
    let (down_tx, mut down_rx) = mpsc::channel::<Bytes>(64);
    let pump = match backend {
        Backend::Serial(c) => tokio::task::spawn_blocking(move || serial_pump(c, up_rx, down_tx)),
        Backend::Vnc(s) => tokio::spawn(stream_pump(s, up_rx, down_tx)),
        Backend::Peer(ws) => tokio::spawn(peer_pump(*ws, up_rx, down_tx)),
    };
    let (mut tx, mut rx) = client.split();
    loop {
        tokio::select! {
            m = rx.next() => match m {
                Some(Ok(m)) if m.is_binary() || m.is_text() => {
                    if up_tx.send(m.into_bytes()).await.is_err() {
                        break;
                    }
                }
                Some(Ok(m)) if m.is_close() => break,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            d = down_rx.recv() => match d {
                Some(d) => {
                    if tx.send(Message::binary(d)).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
        }
    }
    drop(up_tx);
    drop(down_rx);
    let _ = tx
        .send(Message::close_with(1000u16, "console closed"))
        .await;
    let _ = tx.close().await;
    let _ = pump.await;
}

/// Serial: libvirt's stream is blocking, so one thread reads (with a short timeout) and
/// writes what the client typed in between.
fn serial_pump(mut c: Box<dyn Console>, mut up: mpsc::Receiver<Bytes>, down: mpsc::Sender<Bytes>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        loop {
            match up.try_recv() {
                Ok(d) => {
                    if c.write(&d).is_err() {
                        return;
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
        match c.read(&mut buf, SERIAL_POLL) {
            Ok(0) => {
                if down.is_closed() {
                    return;
                }
            }
            Ok(n) => {
                if down
                    .blocking_send(Bytes::copy_from_slice(&buf[..n]))
                    .is_err()
                {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// VNC: bytes of the unix socket both ways.
async fn stream_pump(
    s: tokio::net::UnixStream,
    mut up: mpsc::Receiver<Bytes>,
    down: mpsc::Sender<Bytes>,
) {
    let (mut r, mut w) = s.into_split();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            n = r.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if down.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        break;
                    }
                }
            },
            d = up.recv() => match d {
                Some(d) => {
                    if w.write_all(&d).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
        }
    }
    let _ = w.shutdown().await;
}

/// Another node's console: its WebSocket's frames both ways.
async fn peer_pump(ws: PeerSocket, mut up: mpsc::Receiver<Bytes>, down: mpsc::Sender<Bytes>) {
    let (mut tx, mut rx) = ws.split();
    loop {
        tokio::select! {
            m = rx.next() => match m {
                Some(Ok(PeerMessage::Binary(b))) => {
                    if down.send(b).await.is_err() {
                        break;
                    }
                }
                Some(Ok(PeerMessage::Text(t))) => {
                    if down.send(Bytes::copy_from_slice(t.as_bytes())).await.is_err() {
                        break;
                    }
                }
                Some(Ok(PeerMessage::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            d = up.recv() => match d {
                Some(d) => {
                    if tx.send(PeerMessage::Binary(d)).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
        }
    }
    let _ = tx.send(PeerMessage::Close(None)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn claims(kind: Option<ConsoleKind>) -> TicketClaims {
        TicketClaims {
            vm: "web1".into(),
            kind,
            sub: "admin".into(),
            exp: 1030,
            nonce: "n1".into(),
        }
    }

    #[test]
    fn a_ticket_opens_its_vm_until_it_expires() {
        let key = ticket_key(KEY).unwrap();
        let t = issue_ticket(&key, &claims(None)).unwrap();
        for kind in [ConsoleKind::Serial, ConsoleKind::Vnc] {
            assert_eq!(
                check_ticket(&key, &t, "web1", kind, 1000).unwrap(),
                claims(None)
            );
        }
        assert_eq!(
            check_ticket(&key, &t, "web1", ConsoleKind::Serial, 1030),
            Err(TicketError::Expired)
        );
        assert!(matches!(
            check_ticket(&key, &t, "web2", ConsoleKind::Serial, 1000),
            Err(TicketError::WrongVm { .. })
        ));
    }

    #[test]
    fn a_ticket_for_one_console_does_not_open_the_other() {
        let key = ticket_key(KEY).unwrap();
        let t = issue_ticket(&key, &claims(Some(ConsoleKind::Serial))).unwrap();
        assert!(check_ticket(&key, &t, "web1", ConsoleKind::Serial, 1000).is_ok());
        let e = check_ticket(&key, &t, "web1", ConsoleKind::Vnc, 1000).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the console ticket opens the serial console, not the vnc console"
        );
    }

    #[test]
    fn forged_and_foreign_tickets_are_refused() {
        let key = ticket_key(KEY).unwrap();
        let t = issue_ticket(&key, &claims(None)).unwrap();
        let other = ticket_key(b"another cluster's token key.....").unwrap();
        assert_eq!(
            check_ticket(&other, &t, "web1", ConsoleKind::Serial, 1000),
            Err(TicketError::BadSignature)
        );
        // Another payload under the old signature.
        let (_, sig) = t.split_once('.').unwrap();
        let mut c = claims(None);
        c.vm = "web2".into();
        let forged = format!(
            "{}.{sig}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap())
        );
        assert_eq!(
            check_ticket(&key, &forged, "web2", ConsoleKind::Serial, 1000),
            Err(TicketError::BadSignature)
        );
        for junk in ["", "garbage", "a.b", "!!.??"] {
            assert!(matches!(
                check_ticket(&key, junk, "web1", ConsoleKind::Serial, 1000),
                Err(TicketError::Malformed | TicketError::BadSignature)
            ));
        }
    }

    #[test]
    fn tickets_and_bearer_tokens_never_validate_as_each_other() {
        // A bearer token signed with the token key is not a ticket...
        let token = crate::auth::issue(
            KEY,
            &crate::auth::Claims {
                sub: "admin".into(),
                role: "admin".into(),
                exp: 5000,
            },
        )
        .unwrap();
        let key = ticket_key(KEY).unwrap();
        assert!(check_ticket(&key, &token, "web1", ConsoleKind::Serial, 1000).is_err());
        // ...and a ticket is not a bearer token.
        let t = issue_ticket(&key, &claims(None)).unwrap();
        assert!(crate::auth::validate(KEY, &t, 1000).is_err());
    }

    #[test]
    fn a_nonce_is_redeemed_once_and_forgotten_after_expiry() {
        let r = Redeemed::default();
        assert!(r.redeem("n1", 1030, 1000));
        assert!(!r.redeem("n1", 1030, 1001), "second use refused");
        assert!(r.redeem("n2", 1030, 1001), "other tickets unaffected");
        // Expired tickets are refused outright, and their nonces are pruned.
        assert!(!r.redeem("n3", 1000, 1000));
        assert!(r.redeem("n4", 2000, 1500));
        assert_eq!(r.seen.lock().unwrap().len(), 1);
    }

    #[test]
    fn vnc_sockets_fit_a_unix_socket_path() {
        let longest = "a".repeat(63);
        let spec_max = keel_virt::DomainSpec::MAX_SOCKET_PATH;
        assert!(vnc_socket(&longest).to_string_lossy().len() <= spec_max);
    }

    #[test]
    fn console_kinds_parse_from_the_path() {
        assert_eq!(parse_kind("serial").unwrap(), ConsoleKind::Serial);
        assert_eq!(parse_kind("vnc").unwrap(), ConsoleKind::Vnc);
        assert!(matches!(parse_kind("spice"), Err(ApiError::NotFound(_))));
    }
}
