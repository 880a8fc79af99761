//! VM NICs on the node's Open vSwitch bridges (for now a plain per-node bridge named by the
//! NIC's `network`; the network issue moves NICs to OVN logical switches).
//!
//! ```text
//!  reconcile ─▶ prepare_nics: ensure each bridge (ovs-vsctl --may-exist add-br, netdev
//!              datapath without the kernel module) ─▶ keel_virt::Nic { bridge, mac }
//!  libvirt plugs the guest's tap into the bridge on start and unplugs it when the domain goes
//! ```

use keel_model::{derived_mac, Vm};
use keel_ovs::{Datapath, Vsctl};

/// The NICs of `vm` for its domain, after making sure their bridges exist on this node.
pub async fn prepare_nics(vm: &Vm) -> Result<Vec<keel_virt::Nic>, String> {
    if vm.spec.nics.is_empty() {
        return Ok(Vec::new());
    }
    let mut bridges: Vec<String> = vm.spec.nics.iter().map(|n| n.network.clone()).collect();
    bridges.sort();
    bridges.dedup();
    tokio::task::spawn_blocking(move || {
        let ovs = Vsctl::new();
        let dp = Datapath::detect();
        for b in &bridges {
            ovs.ensure_bridge(b, dp)
                .map_err(|e| format!("bridge {b}: {e}"))?;
        }
        Ok::<(), String>(())
    })
    .await
    .map_err(|e| e.to_string())??;
    vm.spec
        .nics
        .iter()
        .map(|n| {
            let mac = n
                .mac
                .unwrap_or_else(|| derived_mac(&vm.metadata.uid, &n.name));
            Ok(keel_virt::Nic {
                bridge: keel_virt::BridgeName::new(n.network.clone())
                    .map_err(|e| format!("NIC {}: {e}", n.name))?,
                mac: keel_virt::MacAddr::from_octets(mac.octets())
                    .map_err(|e| format!("NIC {}: {e}", n.name))?,
                interface_id: None,
            })
        })
        .collect()
}
