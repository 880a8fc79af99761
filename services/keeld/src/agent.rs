//! qemu-guest-agent: each node samples the guest addresses of the VMs it runs into
//! `status.ips` and whether their agent answers into the `GuestAgentConnected` condition; a
//! graceful stop also asks the agent ([`crate::compute`]), and a live snapshot freezes the
//! guest's file systems around itself ([`snapshot_quiesced`]).
//!
//! ```text
//!  node loop, every round ─▶ AgentSampler::tick (returns at once)
//!     due? (3 s while a VM has no agent answer or no address yet, else 15 s)
//!        ─▶ one background task: per running VM, agent_ping + interface_addresses
//!           (agent, then DHCP lease, then ARP) ─▶ status.ips, GuestAgentConnected
//!           stopped VMs: addresses cleared, condition False
//! ```
//!
//! Sampling never blocks the reconciler: it runs in its own task, one at a time, and libvirt
//! gives up on a silent agent after a few seconds (an agent that is not connected fails at
//! once). Only changes are written (every write is a Raft commit).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_model::{find_condition, set_condition, Condition, ConditionStatus, Vm, VmPhase};
use keel_virt::{GuestAddress, Hypervisor, HypervisorError};
use tracing::{debug, info, warn};

use crate::compute::update;
use crate::member::Member;

/// How often every running VM is sampled.
pub const INTERVAL: Duration = Duration::from_secs(15);
/// How often VMs whose agent has not answered yet (or that have no address yet) are sampled:
/// a new VM shows its address soon after its agent starts.
pub const FAST_INTERVAL: Duration = Duration::from_secs(3);

/// Whether the VM's last sample found its agent answering.
pub fn connected(vm: &Vm) -> bool {
    find_condition(&vm.status.conditions, Condition::GUEST_AGENT)
        .is_some_and(|c| c.status == ConditionStatus::True)
}

/// The addresses to report: no loopback or link-local, each once, in the guest's order.
pub fn ips_of(addrs: &[GuestAddress]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for a in addrs.iter().filter(|a| !a.is_local()) {
        let ip = a.ip.to_string();
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// What one sample found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The agent answered.
    pub agent: bool,
    /// The guest's addresses.
    pub ips: Vec<String>,
}

/// Writes `sample` into a VM's status; returns whether anything changed.
pub fn apply(vm: &mut Vm, sample: &Sample, now: &str) -> bool {
    let before = (vm.status.ips.clone(), vm.status.conditions.clone());
    vm.status.ips = sample.ips.clone();
    let (status, reason, message) = if sample.agent {
        (
            ConditionStatus::True,
            "AgentAnswered",
            "qemu-guest-agent answers",
        )
    } else {
        (
            ConditionStatus::False,
            "NoAgent",
            "qemu-guest-agent does not answer (not installed, not started yet, or busy)",
        )
    };
    set_condition(
        &mut vm.status.conditions,
        Condition::new(Condition::GUEST_AGENT, status, reason, message, now),
    );
    (vm.status.ips.clone(), vm.status.conditions.clone()) != before
}

/// Clears what a stopped VM no longer has: addresses and a connected agent.
pub fn clear(vm: &mut Vm, now: &str) -> bool {
    let had = !vm.status.ips.is_empty() || connected(vm);
    if had {
        apply(
            vm,
            &Sample {
                agent: false,
                ips: Vec::new(),
            },
            now,
        );
    }
    had
}

/// Samples one running domain (blocking: call from a blocking thread). `None` when the
/// domain cannot be asked (gone, paused, shut off meanwhile).
pub fn sample(hv: &dyn Hypervisor, name: &str) -> Option<Sample> {
    let agent = match hv.agent_ping(name) {
        Ok(a) => a,
        Err(e) => {
            debug!(vm = name, error = %e, "cannot ask the guest agent");
            return None;
        }
    };
    let ips = match hv.interface_addresses(name) {
        Ok(addrs) => ips_of(&addrs),
        Err(e) => {
            debug!(vm = name, error = %e, "cannot read the guest's addresses");
            return None;
        }
    };
    Some(Sample { agent, ips })
}

/// Schedules agent samples from the node loop; see the module docs.
#[derive(Default)]
pub struct AgentSampler {
    busy: Arc<AtomicBool>,
    last_full: Option<Instant>,
    last_fast: Option<Instant>,
}

impl AgentSampler {
    /// Starts a round in the background when one is due and none is running; returns at once.
    pub fn tick(&mut self, m: &Arc<Member>, hv: &Arc<dyn Hypervisor>) {
        let now = Instant::now();
        let due = |t: Option<Instant>, every: Duration| t.is_none_or(|t| now - t >= every);
        let full = due(self.last_full, INTERVAL);
        if !full && !due(self.last_fast, FAST_INTERVAL) {
            return;
        }
        if self.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        self.last_fast = Some(now);
        if full {
            self.last_full = Some(now);
        }
        let (m, hv, busy) = (m.clone(), hv.clone(), self.busy.clone());
        tokio::spawn(async move {
            round(&m, &hv, full).await;
            busy.store(false, Ordering::Release);
        });
    }
}

/// One round: every running VM of this node (`full`), or only those not settled yet.
async fn round(m: &Member, hv: &Arc<dyn Hypervisor>, full: bool) {
    let me = m.identity.name.clone();
    let mine = match crate::compute::vms_on(m, &me) {
        Ok(vms) => vms,
        Err(e) => {
            debug!(error = %e, "listing VMs for the agent sampler failed");
            return;
        }
    };
    for vm in mine {
        let name = vm.metadata.name.to_string();
        if vm.status.phase == VmPhase::Stopped || vm.status.phase == VmPhase::Failed {
            if !vm.status.ips.is_empty() || connected(&vm) {
                let now = crate::now_rfc3339();
                let me = me.clone();
                let r = update(m, &name, |v| {
                    if v.status.node.as_deref() == Some(me.as_str())
                        && matches!(v.status.phase, VmPhase::Stopped | VmPhase::Failed)
                    {
                        clear(v, &now);
                    }
                })
                .await;
                if let Err(e) = r {
                    debug!(vm = %name, error = %e, "clearing guest addresses failed");
                }
            }
            continue;
        }
        if vm.status.phase != VmPhase::Running || vm.status.migration.is_some() {
            continue;
        }
        if !full && connected(&vm) && !vm.status.ips.is_empty() {
            continue;
        }
        let (h, n) = (hv.clone(), name.clone());
        let found = match tokio::task::spawn_blocking(move || sample(h.as_ref(), &n)).await {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                debug!(vm = %name, error = %e, "agent sampling task failed");
                continue;
            }
        };
        if found.agent != connected(&vm) || found.ips != vm.status.ips {
            info!(vm = %name, agent = found.agent, ips = ?found.ips, "guest agent and addresses changed");
        }
        let now = crate::now_rfc3339();
        let me = me.clone();
        let r = update(m, &name, |v| {
            // Only while it is still ours and running (it may have stopped or moved).
            if v.status.node.as_deref() == Some(me.as_str())
                && v.status.phase == VmPhase::Running
                && v.status.migration.is_none()
            {
                apply(v, &found, &now);
            }
        })
        .await;
        if let Err(e) = r {
            debug!(vm = %name, error = %e, "writing guest addresses failed");
        }
    }
}

/// Takes a live snapshot with the guest's file systems frozen through its agent when one
/// answers, thawing them afterwards whatever happened (blocking: call from a blocking
/// thread). Returns whether the guest was frozen; without an agent the snapshot is
/// crash-consistent, like pulling the plug.
pub fn snapshot_quiesced(hv: &dyn Hypervisor, name: &str, snapshot: &str) -> Result<bool, String> {
    let frozen = match hv.fs_freeze(name) {
        Ok(n) => {
            info!(
                vm = name,
                snapshot,
                file_systems = n,
                "guest file systems frozen"
            );
            true
        }
        Err(HypervisorError::NoGuestAgent { .. }) => {
            debug!(vm = name, "no guest agent: crash-consistent snapshot");
            false
        }
        Err(e) => {
            warn!(vm = name, error = %e, "freezing the guest failed; crash-consistent snapshot");
            // A freeze that failed half-way may have frozen some file systems.
            let _ = hv.fs_thaw(name);
            false
        }
    };
    let taken = hv.snapshot_live(name, snapshot).map_err(|e| e.to_string());
    if frozen {
        thaw(hv, name);
    }
    taken.map(|()| frozen)
}

/// Thaws, retrying a few times: a guest left frozen cannot write to its disks.
fn thaw(hv: &dyn Hypervisor, name: &str) {
    for attempt in 1..=5 {
        match hv.fs_thaw(name) {
            Ok(n) => {
                info!(vm = name, file_systems = n, "guest file systems thawed");
                return;
            }
            Err(e) => {
                warn!(vm = name, attempt, error = %e, "thawing the guest failed");
                std::thread::sleep(Duration::from_millis(500 * attempt));
            }
        }
    }
    warn!(
        vm = name,
        "the guest's file systems may still be frozen: thaw them with `virsh domfsthaw`"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_model::{Metadata, VmSpec, VmStatus};
    use keel_virt::AddressSource;

    fn addr(ip: &str) -> GuestAddress {
        GuestAddress {
            interface: "eth0".into(),
            mac: "52:54:00:00:00:07".into(),
            ip: ip.parse().unwrap(),
            prefix: 24,
            source: AddressSource::Agent,
        }
    }

    #[test]
    fn ips_skip_local_and_repeats() {
        let a = [
            addr("127.0.0.1"),
            addr("192.0.2.8"),
            addr("fe80::1"),
            addr("10.0.0.5"),
            addr("192.0.2.8"),
        ];
        assert_eq!(ips_of(&a), vec!["192.0.2.8", "10.0.0.5"]);
    }

    fn vm() -> Vm {
        let spec: VmSpec = serde_json::from_value(serde_json::json!({
            "cpus": 1, "memory": "128MiB", "disks": []
        }))
        .unwrap();
        Vm {
            metadata: Metadata {
                name: "web1".into(),
                ..Default::default()
            },
            spec,
            status: VmStatus::default(),
        }
    }

    #[test]
    fn apply_writes_only_changes_and_clear_forgets() {
        let mut v = vm();
        let s = Sample {
            agent: true,
            ips: vec!["192.0.2.8".into()],
        };
        assert!(apply(&mut v, &s, "2026-01-01T00:00:00Z"));
        assert!(connected(&v));
        assert_eq!(v.status.ips, vec!["192.0.2.8"]);
        assert!(!apply(&mut v, &s, "2026-01-01T00:00:15Z"), "no change");
        assert!(clear(&mut v, "2026-01-01T00:01:00Z"));
        assert!(!connected(&v));
        assert!(v.status.ips.is_empty());
        assert!(!clear(&mut v, "2026-01-01T00:01:15Z"));
    }
}
