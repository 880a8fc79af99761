//! keeld's lifecycle: setup mode, forming (discovery, found or join), member.
//!
//! ```text
//!  start ─▶ node.json present? ──yes──────────────────────────────▶ member
//!             │ no
//!             ▼
//!        answer file? ──no──▶ setup mode (wizard; API answers health only)
//!             │ yes
//!             ▼
//!        forming: beacons ─▶ Formation::step ─▶ Found ─▶ CA, identity, initialize ─▶ member
//!                                            └▶ Join{via} ─▶ join::send ─▶ identity ─▶ member
//! ```
//! Every step writes its result to disk before the next begins, so a crash at any point
//! restarts into the right phase.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keel_model::{AnswerFile, NodePhase};
use keel_store::{NodeAddr, Store, StoreConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::auth::LoginLimiter;
use crate::discovery::Discovery;
use crate::formation::{Beacon, Decision, Formation, BEACON_VERSION};
use crate::identity::{Identity, IdentityDir, TlsFiles, IDENTITY_FORMAT};
use crate::member::Member;
use crate::peer::{PeerClient, PeerNetwork};
use crate::pki::{self, CaMaterial};
use crate::tls::{self, CertSlot};
use crate::{api, bootstrap, leader, rpc, API_PORT, PEER_PORT};

/// keeld's command line.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "keeld", version, about = "Keel's node daemon")]
pub struct Args {
    /// Where the node keeps its identity and its replica of the store.
    #[arg(long, default_value = "/var/lib/keel")]
    pub state_dir: PathBuf,
    /// Answer file for unattended formation (TOML).
    #[arg(long)]
    pub answer_file: Option<PathBuf>,
    /// HTTPS API listen address.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], API_PORT)))]
    pub api_listen: SocketAddr,
    /// Node-to-node (mutual TLS) listen address.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], PEER_PORT)))]
    pub peer_listen: SocketAddr,
    /// Multicast group and port for discovery beacons.
    #[arg(long, default_value_t = crate::discovery::DEFAULT_GROUP)]
    pub discovery_group: SocketAddrV4,
    /// libvirt connection URI of this node's hypervisor.
    #[arg(long, default_value = "qemu:///system")]
    pub libvirt_uri: String,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
    /// Appliance: without --answer-file, use STATE_DIR/answer.toml if present (see seed.rs).
    #[arg(long)]
    pub seed: bool,
    /// Appliance first boot step: copy answer.toml from a KEEL-SEED filesystem to the state
    /// directory, configure the management network and hostname, then exit.
    #[arg(long)]
    pub seed_only: bool,
    /// Multiplies the Raft heartbeat, election and write timeouts (slow or emulated
    /// machines, e.g. TCG test VMs); 1 is the LAN default.
    #[arg(long, env = "KEEL_RAFT_TIMING_SCALE", default_value_t = 1)]
    pub raft_timing_scale: u32,
    /// Root under which keeld writes the host files it generates from settings
    /// (`etc/chrony/sources.d/keel.sources`, `etc/resolv.conf`, `etc/localtime`, … see
    /// hostconf.rs). Default: `/` with --seed (the appliance); otherwise keeld leaves the
    /// host's files alone.
    #[arg(long, env = "KEEL_ETC_ROOT")]
    pub etc_root: Option<PathBuf>,
    /// What follows a changed host file: `system` (chronyc reload sources, sethostname; the
    /// default when the root is `/`) or `none` (files only; the default elsewhere).
    #[arg(long, env = "KEEL_HOST_ACTIONS", value_enum)]
    pub host_actions: Option<HostActionsKind>,
    /// Directory of the ed25519 keys (`*.pub`) update bundles must be signed with.
    #[arg(long, env = "KEEL_UPDATE_KEYS", default_value = crate::upgrade::bundles::DEFAULT_KEYS)]
    pub update_keys: PathBuf,
}

/// `--host-actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HostActionsKind {
    /// Reload chrony, set the kernel's host name.
    System,
    /// Nothing (a dev cluster's nodes share this machine).
    None,
}

impl Args {
    /// The host configuration reconciler these arguments ask for, if any.
    pub fn host_conf(&self, answer: Option<&AnswerFile>) -> Option<crate::hostconf::HostConf> {
        let root = match (&self.etc_root, self.seed) {
            (Some(root), _) => root.clone(),
            (None, true) => PathBuf::from("/"),
            (None, false) => return None,
        };
        let kind = self
            .host_actions
            .unwrap_or(if root == std::path::Path::new("/") {
                HostActionsKind::System
            } else {
                HostActionsKind::None
            });
        let actions: Arc<dyn crate::hostconf::HostActions> = match kind {
            HostActionsKind::System => Arc::new(crate::hostconf::SystemActions),
            HostActionsKind::None => Arc::new(crate::hostconf::NoActions),
        };
        let dns = answer
            .map(|a| a.network.management.dns.clone())
            .unwrap_or_default();
        Some(crate::hostconf::HostConf::new(root, actions, dns))
    }
}

/// What `GET /api/v1/health` reports.
#[derive(Debug, Clone)]
pub struct PhaseInfo {
    /// The phase.
    pub phase: NodePhase,
    /// Why the node is where it is (forming: what it waits for, or the last join error).
    pub reason: String,
}

/// The daemon's shared state, handed to every handler.
#[derive(Debug)]
pub struct Daemon {
    /// This node's name (empty in setup mode).
    pub name: String,
    /// Cluster name, once known.
    pub cluster: Option<String>,
    /// Phase for the health endpoint.
    pub phase: RwLock<PhaseInfo>,
    /// Set once the node is a member.
    pub member: OnceLock<Arc<Member>>,
    /// The node's pool and hypervisor, set once the node is a member.
    pub host: OnceLock<Arc<crate::host::Host>>,
    /// Failed-login limiter.
    pub limiter: LoginLimiter,
    /// Bounds concurrent password hashing (memory-hard by design).
    pub hash_slots: tokio::sync::Semaphore,
    /// The API certificate.
    pub cert_slot: Arc<CertSlot>,
    /// Fires on shutdown.
    pub shutdown: watch::Receiver<bool>,
}

impl Daemon {
    fn set_phase(&self, phase: NodePhase, reason: impl Into<String>) {
        let info = PhaseInfo {
            phase,
            reason: reason.into(),
        };
        match self.phase.write() {
            Ok(mut g) => *g = info,
            Err(p) => *p.into_inner() = info,
        }
    }
}

/// Runs keeld until SIGTERM/SIGINT.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let args = if args.seed || args.seed_only {
        crate::seed::apply(args.clone(), args.seed_only)?
    } else {
        args
    };
    if args.seed_only {
        return Ok(());
    }
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating state directory {}", args.state_dir.display()))?;
    let answer = match &args.answer_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Some(AnswerFile::from_toml(&text).with_context(|| format!("in {}", path.display()))?)
        }
        None => None,
    };
    let ids = IdentityDir::new(&args.state_dir);
    let existing = ids.load().context("loading the node identity")?;

    let (name, cluster, address) = match (&existing, &answer) {
        (Some((id, _)), _) => (
            id.name.clone(),
            Some(id.cluster.clone()),
            Some(id.address.clone()),
        ),
        (None, Some(a)) => (
            a.node.name.to_string(),
            Some(a.cluster.name.to_string()),
            Some(a.network.management.address.addr().to_string()),
        ),
        (None, None) => (String::new(), None, None),
    };
    let cert = match &existing {
        Some((_, tls)) => pki::NodeMaterial {
            cert_pem: tls.cert.clone(),
            key_pem: tls.key.clone(),
        },
        None => pki::self_signed(
            if name.is_empty() { "keel" } else { &name },
            address.as_deref(),
        )?,
    };
    let cert_slot = CertSlot::new(&cert.cert_pem, &cert.key_pem)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let daemon = Arc::new(Daemon {
        name: name.clone(),
        cluster,
        phase: RwLock::new(PhaseInfo {
            phase: NodePhase::Setup,
            reason: "starting".into(),
        }),
        member: OnceLock::new(),
        host: OnceLock::new(),
        limiter: LoginLimiter::new(5, Duration::from_secs(60)),
        hash_slots: tokio::sync::Semaphore::new(1),
        cert_slot: cert_slot.clone(),
        shutdown: shutdown_rx.clone(),
    });

    let api_listener = TcpListener::bind(args.api_listen)
        .await
        .with_context(|| format!("binding the API to {}", args.api_listen))?;
    let api_cfg = tls::api_server_config(cert_slot)?;
    tokio::spawn(tls::serve(
        api_listener,
        api_cfg,
        api::routes(daemon.clone()),
        shutdown_rx.clone(),
    ));
    info!(listen = %args.api_listen, node = %name, "API listening");
    crate::notify::ready(shutdown_rx.clone());

    let work = {
        let daemon = daemon.clone();
        let args = args.clone();
        async move {
            match (existing, answer) {
                (Some((identity, tls)), answer) => {
                    let discovery = start_discovery(&args, &identity.address).ok();
                    become_member(&daemon, &args, identity, tls, answer, discovery).await
                }
                (None, Some(answer)) => form(&daemon, &args, &ids, answer).await,
                (None, None) => {
                    daemon.set_phase(
                        NodePhase::Setup,
                        "no answer file: waiting for the first-boot wizard",
                    );
                    info!("no answer file and no identity: setup mode");
                    Ok(())
                }
            }
        }
    };
    let work = tokio::spawn(work);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => info!("interrupt: shutting down"),
        r = work => match r {
            Ok(Ok(())) => {
                let mut term2 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    _ = term2.recv() => info!("SIGTERM: shutting down"),
                    _ = tokio::signal::ctrl_c() => info!("interrupt: shutting down"),
                }
            }
            Ok(Err(e)) => {
                error!(error = format!("{e:#}"), "keeld failed");
                return Err(e);
            }
            Err(e) => bail!("the main task panicked: {e}"),
        },
    }
    let _ = shutdown_tx.send(true);
    if let Some(m) = daemon.member.get() {
        if let Err(e) = m.store.shutdown().await {
            warn!(error = %e, "store shutdown");
        }
    }
    Ok(())
}

fn start_discovery(args: &Args, address: &str) -> anyhow::Result<Discovery> {
    let ip: Ipv4Addr = match address.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4,
        _ => bail!("discovery needs an IPv4 management address, not {address:?}"),
    };
    Ok(Discovery::start(args.discovery_group, ip)?)
}

async fn form(
    daemon: &Arc<Daemon>,
    args: &Args,
    ids: &IdentityDir,
    answer: AnswerFile,
) -> anyhow::Result<()> {
    let name = answer.node.name.clone();
    let cluster = answer.cluster.name.to_string();
    let address = answer.network.management.address.addr().to_string();
    let discovery = start_discovery(args, &address)?;
    discovery.announce(Some(Beacon {
        v: BEACON_VERSION,
        cluster: cluster.clone(),
        name: name.to_string(),
        address: address.clone(),
        expected: answer.cluster.expected_nodes,
        member: false,
    }));
    daemon.set_phase(NodePhase::Forming, "discovering peers");
    info!(node = %name, %cluster, expected = answer.cluster.expected_nodes, "forming: discovering peers");
    let mut formation =
        Formation::new(name.as_str(), &cluster, answer.cluster.expected_nodes, 1000);
    let started = Instant::now();
    let (key, csr) = pki::new_csr(name.as_str())?;
    let mut heard = discovery.heard();
    let mut last_reason = String::new();
    loop {
        let beacons = heard.borrow_and_update().clone();
        let now = started.elapsed().as_millis() as u64;
        match formation.step(now, &beacons) {
            Decision::Wait { reason } => {
                if reason != last_reason {
                    info!(%reason, "forming");
                    daemon.set_phase(NodePhase::Forming, reason.clone());
                    last_reason = reason;
                }
            }
            Decision::Found => {
                info!(node = %name, %cluster, "founding the cluster");
                let ca = CaMaterial::generate(&cluster)?;
                let mine = ca.issue_node(name.as_str(), &address)?;
                let tls_dir = ids.tls_dir();
                std::fs::create_dir_all(&tls_dir)?;
                crate::identity::write_atomic(
                    &tls_dir.join(bootstrap::CA_KEY_FILE),
                    ca.key_pem.as_bytes(),
                    0o600,
                )?;
                let identity = Identity {
                    format: IDENTITY_FORMAT,
                    id: 1,
                    name: name.to_string(),
                    cluster: cluster.clone(),
                    address: address.clone(),
                    founder: true,
                };
                let tls = TlsFiles {
                    ca: ca.cert_pem.clone(),
                    cert: mine.cert_pem,
                    key: mine.key_pem,
                };
                ids.save(&identity, &tls)?;
                return become_member(daemon, args, identity, tls, Some(answer), Some(discovery))
                    .await;
            }
            Decision::Join { via } => {
                let req = crate::join::request(
                    &answer.cluster.join_secret,
                    &cluster,
                    &name,
                    &address,
                    &csr,
                );
                for member in &via {
                    match crate::join::send(member, &answer.cluster.join_secret, &req).await {
                        Ok(resp) => {
                            info!(node = %name, id = resp.id, via = %member, "joined the cluster");
                            let identity = Identity {
                                format: IDENTITY_FORMAT,
                                id: resp.id,
                                name: name.to_string(),
                                cluster: cluster.clone(),
                                address: address.clone(),
                                founder: false,
                            };
                            let tls = TlsFiles {
                                ca: resp.ca_cert,
                                cert: resp.cert,
                                key: key.serialize_pem(),
                            };
                            ids.save(&identity, &tls)?;
                            return become_member(
                                daemon,
                                args,
                                identity,
                                tls,
                                Some(answer),
                                Some(discovery),
                            )
                            .await;
                        }
                        Err(e) => {
                            warn!(via = %member, error = %e, "join failed");
                            daemon.set_phase(NodePhase::Forming, e.to_string());
                            last_reason = e.to_string();
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        tokio::select! {
            _ = heard.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

async fn become_member(
    daemon: &Arc<Daemon>,
    args: &Args,
    identity: Identity,
    tls_files: TlsFiles,
    answer: Option<AnswerFile>,
    discovery: Option<Discovery>,
) -> anyhow::Result<()> {
    let client_cfg = tls::peer_client_config(&tls_files.ca, &tls_files.cert, &tls_files.key)?;
    let peers = PeerClient::new(client_cfg)?;
    let ids = IdentityDir::new(&args.state_dir);
    let mut store_cfg = StoreConfig::new(ids.store_dir(), identity.id, identity.cluster.clone());
    crate::seed::scale_timings(&mut store_cfg, args.raft_timing_scale);
    crate::leader::set_timing_scale(args.raft_timing_scale);
    let store = Store::open(store_cfg, PeerNetwork::new(peers.clone()))
        .await
        .context("opening the store")?;
    let me = NodeAddr {
        name: identity.name.clone(),
        peer: SocketAddr::new(identity.address.parse()?, args.peer_listen.port()).to_string(),
        api: format!("https://{}:{}", identity.address, args.api_listen.port()),
    };
    let member = Arc::new(Member::new(store.clone(), peers, identity.clone()));
    let host =
        Arc::new(crate::host::Host::open(&args.state_dir).context("opening the local pool")?);
    tokio::spawn(host.clone().connect(args.libvirt_uri.clone()));
    let _ = daemon.host.set(host.clone());
    crate::upgrade::bundles::configure(&args.state_dir, &args.update_keys)
        .context("creating the update bundle directory")?;
    let peer_listener = TcpListener::bind(args.peer_listen)
        .await
        .with_context(|| format!("binding the peer port {}", args.peer_listen))?;
    let peer_cfg = tls::peer_server_config(&tls_files.ca, &tls_files.cert, &tls_files.key)?;
    tokio::spawn(tls::serve(
        peer_listener,
        peer_cfg,
        rpc::routes(member.clone(), host.clone()),
        daemon.shutdown.clone(),
    ));
    daemon.cert_slot.set(&tls_files.cert, &tls_files.key)?;
    if identity.founder && !store.is_initialized().await? {
        store
            .initialize(me.clone())
            .await
            .context("initialising the store")?;
        info!("store initialised with this node as its only voter");
    }
    let _ = daemon.member.set(member.clone());
    daemon.set_phase(NodePhase::Member, "member");
    if let Some(d) = &discovery {
        d.announce(Some(Beacon {
            v: BEACON_VERSION,
            cluster: identity.cluster.clone(),
            name: identity.name.clone(),
            address: identity.address.clone(),
            expected: answer
                .as_ref()
                .map(|a| a.cluster.expected_nodes)
                .unwrap_or(0),
            member: true,
        }));
    }
    let host_conf = args.host_conf(answer.as_ref());
    if identity.founder {
        tokio::spawn(bootstrap::run(member.clone(), ids.tls_dir(), answer, me));
    }
    tokio::spawn(leader::heartbeat_loop(
        member.clone(),
        daemon.shutdown.clone(),
    ));
    tokio::spawn(leader::leader_loop(member.clone(), daemon.shutdown.clone()));
    tokio::spawn(crate::compute::schedule_loop(
        member.clone(),
        daemon.shutdown.clone(),
    ));
    tokio::spawn(crate::compute::node_loop(
        member.clone(),
        host.clone(),
        daemon.shutdown.clone(),
    ));
    tokio::spawn(crate::migrate::node_loop(
        member.clone(),
        host.clone(),
        daemon.shutdown.clone(),
    ));
    tokio::spawn(crate::migrate::maintenance_loop(
        member.clone(),
        daemon.shutdown.clone(),
    ));
    tokio::spawn(crate::storage::node_loop(
        member.clone(),
        host.clone(),
        daemon.shutdown.clone(),
    ));
    tokio::spawn(crate::images::node_loop(
        member.clone(),
        host.clone(),
        daemon.shutdown.clone(),
    ));
    tokio::spawn(crate::upgrade::run::leader_loop(
        member.clone(),
        daemon.shutdown.clone(),
    ));
    tokio::spawn(crate::upgrade::run::node_loop(
        member.clone(),
        Arc::new(crate::upgrade::host::SlotHost::new(&args.update_keys)),
        daemon.shutdown.clone(),
    ));
    if let Some(hc) = host_conf {
        tokio::spawn(crate::hostconf::run(
            member.clone(),
            Arc::new(hc),
            daemon.shutdown.clone(),
        ));
    }
    drop(discovery);
    info!(node = %identity.name, id = identity.id, "member");
    Ok(())
}
