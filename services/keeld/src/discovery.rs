//! Discovery: every node multicasts a [`Beacon`] on the management network a few times a
//! second and keeps the beacons it hears, each for a few seconds.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::formation::Beacon;

/// Default multicast group and port.
pub const DEFAULT_GROUP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 77, 77), 7445);
const INTERVAL: Duration = Duration::from_millis(250);
const EXPIRY: Duration = Duration::from_secs(3);

/// Why discovery could not start.
#[derive(Debug, thiserror::Error)]
#[error("discovery socket: {step}")]
pub struct DiscoveryError {
    step: &'static str,
    #[source]
    source: std::io::Error,
}

/// A running discovery: set what to announce, read what is heard.
#[derive(Debug, Clone)]
pub struct Discovery {
    announce: watch::Sender<Option<Beacon>>,
    heard: watch::Receiver<Vec<Beacon>>,
}

impl Discovery {
    /// Starts announcing and listening on `group` through the interface with address `local`.
    pub fn start(group: SocketAddrV4, local: Ipv4Addr) -> Result<Self, DiscoveryError> {
        let err = |step| move |source| DiscoveryError { step, source };
        let sock =
            Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err("create"))?;
        sock.set_reuse_address(true).map_err(err("reuse address"))?;
        sock.set_reuse_port(true).map_err(err("reuse port"))?;
        sock.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, group.port())).into())
            .map_err(err("bind"))?;
        sock.join_multicast_v4(group.ip(), &local)
            .map_err(err("join group"))?;
        sock.set_multicast_if_v4(&local)
            .map_err(err("set interface"))?;
        sock.set_multicast_ttl_v4(1).map_err(err("set ttl"))?;
        sock.set_multicast_loop_v4(true).map_err(err("set loop"))?;
        sock.set_nonblocking(true).map_err(err("nonblocking"))?;
        let udp = UdpSocket::from_std(sock.into()).map_err(err("register"))?;
        let (announce, mut announce_rx) = watch::channel::<Option<Beacon>>(None);
        let (heard_tx, heard) = watch::channel(Vec::new());
        tokio::spawn(async move {
            let mut seen: HashMap<String, (Beacon, Instant)> = HashMap::new();
            let mut buf = vec![0u8; 2048];
            let mut tick = tokio::time::interval(INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let me = announce_rx.borrow_and_update().clone();
                        if let Some(me) = me {
                            if let Ok(bytes) = serde_json::to_vec(&me) {
                                if let Err(e) = udp.send_to(&bytes, SocketAddr::V4(group)).await {
                                    debug!(error = %e, "beacon send failed");
                                }
                            }
                        }
                        let before = seen.len();
                        seen.retain(|_, (_, at)| at.elapsed() < EXPIRY);
                        if seen.len() != before {
                            let _ = heard_tx.send(seen.values().map(|(b, _)| b.clone()).collect());
                        }
                    }
                    r = udp.recv_from(&mut buf) => {
                        let Ok((n, from)) = r else { continue };
                        match serde_json::from_slice::<Beacon>(&buf[..n]) {
                            Ok(b) => {
                                let changed = seen.get(&b.name).map(|(old, _)| old != &b).unwrap_or(true);
                                seen.insert(b.name.clone(), (b, Instant::now()));
                                if changed {
                                    let _ = heard_tx.send(seen.values().map(|(b, _)| b.clone()).collect());
                                }
                            }
                            Err(e) => warn!(%from, error = %e, "ignoring a malformed beacon"),
                        }
                    }
                }
            }
        });
        Ok(Self { announce, heard })
    }

    /// Sets (or clears) what this node announces.
    pub fn announce(&self, beacon: Option<Beacon>) {
        let _ = self.announce.send(beacon);
    }

    /// The beacons currently heard (including this node's own, looped back).
    pub fn heard(&self) -> watch::Receiver<Vec<Beacon>> {
        self.heard.clone()
    }
}
