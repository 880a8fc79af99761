//! `keel vm resize|rename` and `keel vm disk|nic attach|detach`: changing existing VMs.
//!
//! ```text
//!  resize ─▶ PATCH /vms/{n} {cpus?, memory?, version?}   (running: hot-add within status.hotplug)
//!  disk attach ─▶ POST /vms/{n}/disks {VmDisk}   disk detach ─▶ DELETE /vms/{n}/disks/{d}[?delete=true]
//!  nic attach  ─▶ POST /vms/{n}/nics {VmNic}     nic detach  ─▶ DELETE /vms/{n}/nics/{nic}
//!  rename ─▶ POST /vms/{n}/rename {new_name}
//!  --wait: GET /vms/{n} until its node has applied the change (status.observed_version ≥ the
//!          version written, and a running VM reports its hot-add limits again)
//! ```

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, Subcommand};
use keel_model::{Bytes, DiskSource, Name, NicModel, Vm, VmDisk, VmNic, VmRename, VmUpdate};
use reqwest::Method;

use super::wire_name;
use crate::cli::{parse_name, OutputArg, WaitArgs};
use crate::client::ApiClient;
use crate::output;

fn parse_bytes(s: &str) -> Result<Bytes, String> {
    s.parse::<Bytes>().map_err(|e| e.message)
}

/// `keel vm resize NAME [--cpus N] [--memory SIZE]`.
#[derive(Debug, Args)]
pub struct ResizeArgs {
    /// VM name.
    #[arg(value_parser = parse_name)]
    pub name: Name,
    /// Virtual CPUs (a running VM: more only, up to its limit).
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Memory, e.g. 512MiB (a running VM: more only, up to its limit).
    #[arg(long, value_parser = parse_bytes, value_name = "SIZE")]
    pub memory: Option<Bytes>,
    /// Apply only if the VM is still at this version (else 409).
    #[arg(long)]
    pub version: Option<u64>,
    /// Waiting.
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Output format.
    #[command(flatten)]
    pub out: OutputArg,
}

/// `keel vm disk …`.
#[derive(Debug, Subcommand)]
pub enum DiskCommand {
    /// Attaches a new empty disk (`--size`) or an existing volume (`--volume`); a running VM
    /// gets it live.
    Attach(DiskAttachArgs),
    /// Detaches a disk; its volume stays as a standalone volume unless `--delete`.
    Detach(DiskDetachArgs),
}

/// `keel vm disk attach NAME --size SIZE|--volume VOL [--name D]`.
#[derive(Debug, Args)]
pub struct DiskAttachArgs {
    /// VM name.
    #[arg(value_parser = parse_name)]
    pub name: Name,
    /// Size of a new empty disk.
    #[arg(long, value_parser = parse_bytes, value_name = "SIZE", required_unless_present = "volume", conflicts_with = "volume")]
    pub size: Option<Bytes>,
    /// An existing standalone volume (on the VM's node).
    #[arg(long, value_parser = parse_name, value_name = "VOL")]
    pub volume: Option<Name>,
    /// The disk's name [default: the first free of data1, data2, …].
    #[arg(long = "name", value_name = "DISK", value_parser = parse_name)]
    pub disk_name: Option<Name>,
    /// Waiting.
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Output format.
    #[command(flatten)]
    pub out: OutputArg,
}

/// `keel vm disk detach NAME DISK [--delete]`.
#[derive(Debug, Args)]
pub struct DiskDetachArgs {
    /// VM name.
    #[arg(value_parser = parse_name)]
    pub name: Name,
    /// The disk.
    #[arg(value_parser = parse_name)]
    pub disk: Name,
    /// Delete the disk's volume too.
    #[arg(long)]
    pub delete: bool,
    /// Waiting.
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Output format.
    #[command(flatten)]
    pub out: OutputArg,
}

/// `keel vm nic …`.
#[derive(Debug, Subcommand)]
pub enum NicCommand {
    /// Attaches a NIC on a network (for now: the node bridge's name); a running VM gets it
    /// live.
    Attach(NicAttachArgs),
    /// Detaches a NIC; a running VM loses it live.
    Detach(NicDetachArgs),
}

/// `keel vm nic attach NAME --network BR [--name NIC]`.
#[derive(Debug, Args)]
pub struct NicAttachArgs {
    /// VM name.
    #[arg(value_parser = parse_name)]
    pub name: Name,
    /// The network (the Open vSwitch bridge on each node).
    #[arg(long, value_name = "NET")]
    pub network: String,
    /// The NIC's name [default: the first free of net0, net1, …].
    #[arg(long = "name", value_name = "NIC", value_parser = parse_name)]
    pub nic_name: Option<Name>,
    /// Waiting.
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Output format.
    #[command(flatten)]
    pub out: OutputArg,
}

/// `keel vm nic detach NAME NIC`.
#[derive(Debug, Args)]
pub struct NicDetachArgs {
    /// VM name.
    #[arg(value_parser = parse_name)]
    pub name: Name,
    /// The NIC.
    #[arg(value_parser = parse_name)]
    pub nic: Name,
    /// Waiting.
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Output format.
    #[command(flatten)]
    pub out: OutputArg,
}

/// `keel vm rename NAME NEW`.
#[derive(Debug, Args)]
pub struct RenameArgs {
    /// VM name (the VM must be stopped).
    #[arg(value_parser = parse_name)]
    pub name: Name,
    /// The new name.
    #[arg(value_parser = parse_name)]
    pub new_name: Name,
    /// Output format.
    #[command(flatten)]
    pub out: OutputArg,
}

/// `keel vm resize`.
pub async fn resize(client: &ApiClient, a: &ResizeArgs) -> anyhow::Result<()> {
    if a.cpus.is_none() && a.memory.is_none() {
        bail!("nothing to change: give --cpus and/or --memory");
    }
    let body = VmUpdate {
        version: a.version,
        cpus: a.cpus,
        memory: a.memory,
        ..VmUpdate::default()
    };
    let name = &a.name;
    let vm: Vm = client
        .request(Method::PATCH, &format!("/api/v1/vms/{name}"), Some(&body))
        .await?;
    eprintln!("vm {name}: resize requested");
    finish(client, name, vm.metadata.version, a.wait, &a.out).await
}

/// The first of `prefix1`, `prefix2`, … (or `prefix0`, … with `from` 0) no disk or NIC of
/// `vm` uses (pure).
pub fn free_name(vm: &Vm, prefix: &str, from: u32) -> anyhow::Result<Name> {
    let taken = |n: &str| {
        vm.spec.disks.iter().any(|d| d.name.as_str() == n)
            || vm.spec.nics.iter().any(|x| x.name.as_str() == n)
    };
    for i in from..from + 64 {
        let n = format!("{prefix}{i}");
        if !taken(&n) {
            return Ok(Name::new(n)?);
        }
    }
    bail!("no free device name {prefix}N; name it explicitly")
}

/// `keel vm disk attach|detach`.
pub async fn disk(client: &ApiClient, command: DiskCommand) -> anyhow::Result<()> {
    match command {
        DiskCommand::Attach(a) => {
            let name = &a.name;
            let name_of_disk = match &a.disk_name {
                Some(n) => n.clone(),
                None => {
                    let vm: Vm = client.get(&format!("/api/v1/vms/{name}")).await?;
                    free_name(&vm, "data", 1)?
                }
            };
            let source = match (&a.volume, a.size) {
                (Some(volume), _) => DiskSource::Volume {
                    volume: volume.clone(),
                },
                (None, Some(size)) => DiskSource::Empty { size },
                (None, None) => bail!("give --size for a new disk or --volume for an existing one"),
            };
            let body = VmDisk {
                name: name_of_disk.clone(),
                source,
                bus: None,
                qos: None,
            };
            let vm: Vm = client
                .request(
                    Method::POST,
                    &format!("/api/v1/vms/{name}/disks"),
                    Some(&body),
                )
                .await?;
            eprintln!("vm {name}: disk {name_of_disk} attach requested");
            finish(client, name, vm.metadata.version, a.wait, &a.out).await
        }
        DiskCommand::Detach(a) => {
            let (name, disk) = (&a.name, &a.disk);
            let query = if a.delete { "?delete=true" } else { "" };
            let vm: Vm = client
                .request::<Vm, ()>(
                    Method::DELETE,
                    &format!("/api/v1/vms/{name}/disks/{disk}{query}"),
                    None,
                )
                .await?;
            eprintln!("vm {name}: disk {disk} detach requested");
            finish(client, name, vm.metadata.version, a.wait, &a.out).await
        }
    }
}

/// `keel vm nic attach|detach`.
pub async fn nic(client: &ApiClient, command: NicCommand) -> anyhow::Result<()> {
    match command {
        NicCommand::Attach(a) => {
            let name = &a.name;
            let nic_name = match &a.nic_name {
                Some(n) => n.clone(),
                None => {
                    let vm: Vm = client.get(&format!("/api/v1/vms/{name}")).await?;
                    free_name(&vm, "net", 0)?
                }
            };
            let body = VmNic {
                name: nic_name.clone(),
                network: a.network.clone(),
                mac: None,
                model: NicModel::default(),
            };
            let vm: Vm = client
                .request(
                    Method::POST,
                    &format!("/api/v1/vms/{name}/nics"),
                    Some(&body),
                )
                .await?;
            eprintln!("vm {name}: NIC {nic_name} attach requested");
            finish(client, name, vm.metadata.version, a.wait, &a.out).await
        }
        NicCommand::Detach(a) => {
            let (name, nic) = (&a.name, &a.nic);
            let vm: Vm = client
                .request::<Vm, ()>(
                    Method::DELETE,
                    &format!("/api/v1/vms/{name}/nics/{nic}"),
                    None,
                )
                .await?;
            eprintln!("vm {name}: NIC {nic} detach requested");
            finish(client, name, vm.metadata.version, a.wait, &a.out).await
        }
    }
}

/// `keel vm rename`.
pub async fn rename(client: &ApiClient, a: &RenameArgs) -> anyhow::Result<()> {
    let body = VmRename {
        new_name: a.new_name.clone(),
    };
    let vm: Vm = client
        .request(
            Method::POST,
            &format!("/api/v1/vms/{}/rename", a.name),
            Some(&body),
        )
        .await?;
    eprintln!("vm {} renamed to {}", a.name, a.new_name);
    output::print(a.out.output, &vm, super::vm::render_show)
}

/// Whether VM `vm`'s node has applied the change written as `version` (pure).
pub fn applied(vm: &Vm, version: u64) -> bool {
    vm.status.observed_version >= version
        && (!vm.status.phase.is_active() || vm.status.hotplug.is_some())
}

async fn finish(
    client: &ApiClient,
    name: &Name,
    version: u64,
    wait: WaitArgs,
    out: &OutputArg,
) -> anyhow::Result<()> {
    let path = format!("/api/v1/vms/{name}");
    let deadline = Instant::now() + Duration::from_secs(wait.timeout);
    loop {
        let vm: Vm = client.get(&path).await?;
        if !wait.wait || applied(&vm, version) {
            return output::print(out.output, &vm, super::vm::render_show);
        }
        if Instant::now() >= deadline {
            bail!(
                "vm {name} ({}) has not applied the change after {} s (observed version {} < {version})",
                wire_name(&vm.status.phase),
                wait.timeout,
                vm.status.observed_version
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command, VmCommand};
    use clap::Parser;

    fn vm_command(args: &[&str]) -> Result<VmCommand, clap::Error> {
        let all: Vec<&str> = ["keel", "vm"].iter().chain(args).copied().collect();
        match Cli::try_parse_from(all)?.command {
            Command::Vm(c) => Ok(c),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_commands_parse_as_documented() {
        let VmCommand::Resize(r) = vm_command(&[
            "resize", "web", "--cpus", "2", "--memory", "512MiB", "--wait",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (r.cpus, r.memory, r.wait.wait),
            (Some(2), Some(Bytes::from_mib(512)), true)
        );
        assert!(vm_command(&["resize", "web", "--memory", "lots"]).is_err());
        let VmCommand::Disk(DiskCommand::Attach(a)) =
            vm_command(&["disk", "attach", "web", "--size", "1GiB", "--name", "d1"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(a.disk_name.unwrap().as_str(), "d1");
        assert!(
            vm_command(&["disk", "attach", "web"]).is_err(),
            "--size or --volume"
        );
        assert!(vm_command(&["disk", "attach", "web", "--size", "1GiB", "--volume", "v"]).is_err());
        let VmCommand::Disk(DiskCommand::Detach(d)) =
            vm_command(&["disk", "detach", "web", "d1", "--delete"]).unwrap()
        else {
            panic!()
        };
        assert!(d.delete);
        assert!(matches!(
            vm_command(&["nic", "attach", "web", "--network", "br-vms"]).unwrap(),
            VmCommand::Nic(NicCommand::Attach(_))
        ));
        assert!(matches!(
            vm_command(&["nic", "detach", "web", "net1"]).unwrap(),
            VmCommand::Nic(NicCommand::Detach(_))
        ));
        assert!(matches!(
            vm_command(&["rename", "web", "app", "-o", "json"]).unwrap(),
            VmCommand::Rename(_)
        ));
        assert!(vm_command(&["rename", "web", "Not_DNS"]).is_err());
    }

    #[test]
    fn device_names_and_waiting() {
        let mut vm: Vm = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "uid": "u", "version": 4, "created": ""},
            "spec": {"cpus": 1, "memory": "128MiB",
                     "disks": [{"name": "root", "source": {"type": "empty", "size": "1GiB"}},
                               {"name": "data1", "source": {"type": "empty", "size": "1GiB"}}],
                     "nics": [{"name": "net0", "network": "br"}]},
            "status": {"phase": "running", "observed_version": 4}
        }))
        .unwrap();
        assert_eq!(free_name(&vm, "data", 1).unwrap().as_str(), "data2");
        assert_eq!(free_name(&vm, "net", 0).unwrap().as_str(), "net1");
        assert!(!applied(&vm, 4), "a running VM reports its limits again");
        vm.status.hotplug = Some(keel_model::VmHotplug {
            max_cpus: 2,
            max_memory: Bytes::from_mib(1152),
        });
        assert!(applied(&vm, 4));
        assert!(!applied(&vm, 5));
    }
}
