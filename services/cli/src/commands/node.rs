//! `keel node list|show|cordon|uncordon`.

use keel_model::{Name, Node};
use reqwest::Method;

use super::{wire_name, Items};
use crate::cli::OutputFormat;
use crate::client::ApiClient;
use crate::output::{self, Table};

/// `keel node list`.
pub async fn list(client: &ApiClient, format: OutputFormat) -> anyhow::Result<()> {
    let nodes: Items<Node> = client.get("/api/v1/nodes").await?;
    let now = time::OffsetDateTime::now_utc();
    output::print(format, &nodes, |n| render_list(&n.items, now))
}

/// `keel node show NAME`.
pub async fn show(client: &ApiClient, name: &Name, format: OutputFormat) -> anyhow::Result<()> {
    let node: Node = client.get(&format!("/api/v1/nodes/{name}")).await?;
    let now = time::OffsetDateTime::now_utc();
    output::print(format, &node, |n| render_show(n, now))
}

/// `keel node cordon NAME` (`cordon = true`) and `keel node uncordon NAME`.
pub async fn cordon(
    client: &ApiClient,
    name: &Name,
    cordon: bool,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let node: Node = client
        .request::<Node, ()>(Method::POST, &cordon_path(name, cordon), None)
        .await?;
    eprintln!(
        "node {name} {}",
        if cordon {
            "cordoned: no new VMs are placed on it"
        } else {
            "uncordoned: it takes new VMs again"
        }
    );
    let now = time::OffsetDateTime::now_utc();
    output::print(format, &node, |n| render_list(std::slice::from_ref(n), now))
}

/// The path of a cordon or uncordon request.
pub fn cordon_path(name: &Name, cordon: bool) -> String {
    let action = if cordon { "cordon" } else { "uncordon" };
    format!("/api/v1/nodes/{name}/{action}")
}

/// The node table.
pub fn render_list(nodes: &[Node], now: time::OffsetDateTime) -> String {
    let mut t = Table::new([
        "NAME",
        "STATE",
        "ROLE",
        "ADDRESS",
        "CPUS",
        "MEMORY",
        "HEARTBEAT",
        "KEEL",
    ]);
    for n in nodes {
        let s = &n.status;
        t.row([
            n.metadata.name.clone(),
            state_cell(n),
            s.role.as_ref().map(wire_name).unwrap_or_else(|| "-".into()),
            s.address.clone(),
            s.cpu.count.to_string(),
            output::bytes(s.memory.total_bytes),
            output::age(s.last_heartbeat.as_deref(), now),
            s.versions.keel.clone(),
        ]);
    }
    t.render()
}

fn state_cell(n: &Node) -> String {
    let state = wire_name(&n.status.state);
    if n.spec.cordoned {
        format!("{state},cordoned")
    } else {
        state
    }
}

/// How guests run: `kvm`, or `tcg` with the reason.
fn hypervisor_cell(h: Option<&keel_model::HypervisorStatus>) -> String {
    match h {
        None => "- (no hypervisor yet)".into(),
        Some(h) if h.message.is_empty() => wire_name(&h.accel),
        Some(h) => format!("{} ({})", wire_name(&h.accel), h.message),
    }
}

/// One node in detail.
pub fn render_show(n: &Node, now: time::OffsetDateTime) -> String {
    let s = &n.status;
    let mut out = output::fields(&[
        ("name", n.metadata.name.clone()),
        ("id", s.id.to_string()),
        ("state", state_cell(n)),
        (
            "role",
            s.role.as_ref().map(wire_name).unwrap_or_else(|| "-".into()),
        ),
        ("address", s.address.clone()),
        ("api", s.api.clone()),
        ("heartbeat", output::age(s.last_heartbeat.as_deref(), now)),
        ("hostname", s.hostname.clone()),
        ("cpu", format!("{} x {}", s.cpu.count, s.cpu.model)),
        (
            "memory",
            format!(
                "{} total, {} available",
                output::bytes(s.memory.total_bytes),
                output::bytes(s.memory.available_bytes)
            ),
        ),
        ("keel", s.versions.keel.clone()),
        ("kernel", s.versions.kernel.clone()),
        ("os", s.versions.os.clone()),
        ("guests", hypervisor_cell(s.hypervisor.as_ref())),
    ]);
    let mut disks = Table::new(["DISK", "SIZE", "TYPE", "MODEL"]);
    for d in &s.disks {
        let kind = if d.rotational { "hdd" } else { "ssd" };
        disks.row([
            d.name.clone(),
            output::bytes(d.size_bytes),
            kind.into(),
            d.model.clone(),
        ]);
    }
    let mut nics = Table::new(["NIC", "STATE", "MAC", "MTU", "SPEED", "ADDRESSES"]);
    for nic in &s.nics {
        nics.row([
            nic.name.clone(),
            nic.state.clone(),
            nic.mac.clone(),
            nic.mtu.to_string(),
            nic.speed_mbps
                .map(|m| format!("{m} Mb/s"))
                .unwrap_or_else(|| "-".into()),
            nic.addresses.join(","),
        ]);
    }
    for table in [disks, nics] {
        if !table.is_empty() {
            out.push('\n');
            out.push_str(&table.render());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_model::{
        CpuInfo, DiskInfo, MemberRole, MemoryInfo, Metadata, NicInfo, NodeState, NodeStatus,
    };

    fn node() -> Node {
        Node {
            metadata: Metadata {
                name: "node1".into(),
                ..Default::default()
            },
            spec: Default::default(),
            status: NodeStatus {
                id: 1,
                state: NodeState::Ready,
                role: Some(MemberRole::Voter),
                address: "10.77.0.11".into(),
                api: "https://10.77.0.11:8443".into(),
                last_heartbeat: Some("2025-01-01T11:59:58Z".into()),
                hostname: "box".into(),
                cpu: CpuInfo {
                    count: 2,
                    model: "Xeon".into(),
                },
                memory: MemoryInfo {
                    total_bytes: 2 << 30,
                    available_bytes: 1 << 30,
                },
                disks: vec![DiskInfo {
                    name: "vda".into(),
                    size_bytes: 10 << 30,
                    model: String::new(),
                    rotational: false,
                }],
                nics: vec![NicInfo {
                    name: "eth0".into(),
                    mac: "52:54:00:00:00:01".into(),
                    state: "up".into(),
                    mtu: 1500,
                    speed_mbps: None,
                    addresses: vec!["10.77.0.11/24".into()],
                }],
                versions: Default::default(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn cordon_paths() {
        let n = Name::new("node2").unwrap();
        assert_eq!(cordon_path(&n, true), "/api/v1/nodes/node2/cordon");
        assert_eq!(cordon_path(&n, false), "/api/v1/nodes/node2/uncordon");
    }

    #[test]
    fn list_and_show() {
        let now = time::macros::datetime!(2025-01-01 12:00:00 UTC);
        let mut cordoned = node();
        cordoned.metadata.name = "node2".into();
        cordoned.spec.cordoned = true;
        cordoned.status.role = None;
        let list = render_list(&[node(), cordoned], now);
        let lines: Vec<&str> = list.lines().collect();
        assert_eq!(
            lines[0],
            "NAME   STATE           ROLE   ADDRESS     CPUS  MEMORY   HEARTBEAT  KEEL"
        );
        assert_eq!(
            lines[1],
            "node1  ready           voter  10.77.0.11  2     2.0 GiB  2s ago"
        );
        assert_eq!(
            lines[2],
            "node2  ready,cordoned  -      10.77.0.11  2     2.0 GiB  2s ago"
        );

        let show = render_show(&node(), now);
        assert!(
            show.contains("memory:     2.0 GiB total, 1.0 GiB available\n"),
            "{show}"
        );
        assert!(show.contains("vda   10.0 GiB  ssd"), "{show}");
        assert!(
            show.contains("eth0  up     52:54:00:00:00:01  1500  -      10.77.0.11/24"),
            "{show}"
        );
        assert!(show.contains("(no hypervisor yet)"), "{show}");
        let mut n = node();
        n.status.hypervisor = Some(keel_model::HypervisorStatus {
            accel: keel_model::Accel::Tcg,
            kvm: keel_model::KvmState::Missing,
            message: "guests run emulated (TCG), much slower: there is no KVM device".into(),
        });
        let show = render_show(&n, now);
        assert!(
            show.contains("tcg (guests run emulated (TCG), much slower: there is no KVM device)"),
            "{show}"
        );
    }
}
