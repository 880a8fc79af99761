//! Resource use of the VMs running on this node: libvirt's counters, sampled every
//! [`INTERVAL`] by the node loop and written to each VM's `status.usage` (CPU as a percentage
//! of the VM's vCPUs over the last interval; disk and network as cumulative bytes).
//!
//! Sampling is infrequent on purpose: every write is a Raft commit and wakes the loops that
//! watch VMs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_model::{Vm, VmPhase, VmUsage};
use keel_virt::{DomainStats, Hypervisor};
use tracing::debug;

use crate::compute::{update, vm_of, VMS};
use crate::member::Member;

/// How often usage is sampled and written.
pub const INTERVAL: Duration = Duration::from_secs(15);

/// CPU percent (of all vCPUs) between two CPU-time readings `wall` apart.
pub fn cpu_percent(before_ns: u64, after_ns: u64, wall: Duration, vcpus: u32) -> f64 {
    let wall_ns = wall.as_nanos() as f64 * f64::from(vcpus.max(1));
    if wall_ns <= 0.0 || after_ns < before_ns {
        return 0.0;
    }
    let pct = (after_ns - before_ns) as f64 / wall_ns * 100.0;
    (pct.clamp(0.0, 100.0) * 10.0).round() / 10.0
}

/// The usage to report from a fresh reading and the previous one of the same VM.
pub fn usage_of(now: &DomainStats, before: Option<(Instant, u64)>, at: Instant) -> VmUsage {
    VmUsage {
        cpu_percent: before
            .map(|(t, cpu)| cpu_percent(cpu, now.cpu_time_ns, at.duration_since(t), now.vcpus))
            .unwrap_or(0.0),
        memory_bytes: now.memory_bytes,
        disk_read_bytes: now.disk_read_bytes,
        disk_write_bytes: now.disk_write_bytes,
        net_rx_bytes: now.net_rx_bytes,
        net_tx_bytes: now.net_tx_bytes,
    }
}

/// Remembers the last CPU reading of each VM between samples.
#[derive(Default)]
pub struct Sampler {
    last_round: Option<Instant>,
    agent: crate::agent::AgentSampler,
    cpu: HashMap<String, (Instant, u64)>,
}

impl Sampler {
    /// Samples the running VMs bound to this node, if [`INTERVAL`] has passed since the last
    /// round. Failures are logged and retried next round; they never stop the node loop.
    /// Also starts the guest agent sampler ([`crate::agent`]) when it is due; that runs in
    /// the background.
    pub async fn maybe_sample(&mut self, m: &Arc<Member>, hv: &Arc<dyn Hypervisor>) {
        self.agent.tick(m, hv);
        let now = Instant::now();
        if self
            .last_round
            .is_some_and(|t| now.duration_since(t) < INTERVAL)
        {
            return;
        }
        self.last_round = Some(now);
        let me = m.identity.name.clone();
        let running: Vec<Vm> = match m.list(VMS) {
            Ok(recs) => recs
                .iter()
                .filter_map(|r| vm_of(r).ok())
                .filter(|v| {
                    v.status.node.as_deref() == Some(me.as_str())
                        && v.status.phase == VmPhase::Running
                })
                .collect(),
            Err(e) => {
                debug!(error = %e, "listing VMs for usage failed");
                return;
            }
        };
        self.cpu
            .retain(|name, _| running.iter().any(|v| v.metadata.name.as_str() == name));
        for vm in running {
            let name = vm.metadata.name.to_string();
            let h = hv.clone();
            let n = name.clone();
            let stats = match tokio::task::spawn_blocking(move || h.stats(&n)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(vm = %name, error = %e, "no usage counters");
                    continue;
                }
                Err(e) => {
                    debug!(vm = %name, error = %e, "usage sampling task failed");
                    continue;
                }
            };
            let at = Instant::now();
            let usage = usage_of(&stats, self.cpu.get(&name).copied(), at);
            self.cpu.insert(name.clone(), (at, stats.cpu_time_ns));
            let me = me.clone();
            if let Err(e) = update(m, &name, |v| {
                // Only while it is still ours and running (it may have moved meanwhile).
                if v.status.node.as_deref() == Some(me.as_str())
                    && v.status.phase == VmPhase::Running
                {
                    v.status.usage = usage.clone();
                }
            })
            .await
            {
                debug!(vm = %name, error = %e, "writing usage failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_percent_is_of_all_vcpus_and_bounded() {
        let s = Duration::from_secs(1);
        assert_eq!(cpu_percent(0, 500_000_000, s, 1), 50.0);
        assert_eq!(cpu_percent(0, 500_000_000, s, 2), 25.0);
        assert_eq!(cpu_percent(0, 5_000_000_000, s, 1), 100.0);
        // A restarted QEMU resets its counter: no negative use.
        assert_eq!(cpu_percent(900, 100, s, 1), 0.0);
        assert_eq!(cpu_percent(0, 100, Duration::ZERO, 1), 0.0);
    }

    #[test]
    fn first_sample_has_no_cpu_percent_but_all_counters() {
        let st = DomainStats {
            vcpus: 1,
            cpu_time_ns: 7,
            memory_bytes: 64 << 20,
            disk_read_bytes: 10,
            disk_write_bytes: 20,
            net_rx_bytes: 30,
            net_tx_bytes: 40,
        };
        let t = Instant::now();
        let u = usage_of(&st, None, t);
        assert_eq!(u.cpu_percent, 0.0);
        assert_eq!(
            (
                u.memory_bytes,
                u.disk_read_bytes,
                u.disk_write_bytes,
                u.net_rx_bytes,
                u.net_tx_bytes
            ),
            (64 << 20, 10, 20, 30, 40)
        );
        let later = t + Duration::from_secs(2);
        let st2 = DomainStats {
            cpu_time_ns: 7 + 1_000_000_000,
            ..st
        };
        assert_eq!(usage_of(&st2, Some((t, 7)), later).cpu_percent, 50.0);
    }
}
