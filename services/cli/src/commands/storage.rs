//! `keel pool list|show`, `keel volume list|show|create|resize|delete`,
//! `keel vm snapshot create|list|revert|delete` and `keel vm clone`.
//!
//! ```text
//!  pool list|show       ─▶ GET /pools[/{n}]
//!  volume create        ─▶ POST /volumes ─▶ (--wait: GET until ready)
//!  volume resize        ─▶ POST /volumes/{n}/resize   (grow only)
//!  vm snapshot create   ─▶ POST /vms/{vm}/snapshots   (the server waits for the node)
//!  vm snapshot revert   ─▶ POST /vms/{vm}/snapshots/{s}/revert (VM stopped)
//!  vm clone SRC NEW     ─▶ POST /vms/{SRC}/clone ─▶ (--wait: until the clone runs or is stopped)
//! ```

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, Subcommand};
use keel_model::{
    Bytes, Name, NewMetadata, Pool, Snapshot, SnapshotPhase, Vm, VmClone, VmPhase, Volume,
    VolumeCreate, VolumeFormat, VolumePhase, VolumeSpec,
};
use reqwest::Method;

use super::{or_dash, wire_name, Items};
use crate::cli::{OutputArg, WaitArgs};
use crate::client::ApiClient;
use crate::output::{self, Table};

fn parse_name(s: &str) -> Result<Name, String> {
    Name::new(s).map_err(|e| e.message)
}

fn parse_bytes(s: &str) -> Result<Bytes, String> {
    s.parse::<Bytes>().map_err(|e| e.message)
}

/// `keel pool …`.
#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Every pool with its node and space.
    List(OutputArg),
    /// One pool.
    Show {
        /// Pool name (`<node>-local`).
        #[arg(value_parser = parse_name)]
        name: Name,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
}

/// `keel volume …`.
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Every volume: VM disks and standalone volumes.
    List(OutputArg),
    /// One volume.
    Show {
        /// Volume name.
        #[arg(value_parser = parse_name)]
        name: Name,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Creates a standalone volume in a pool.
    Create(VolumeCreateArgs),
    /// Grows a volume (live when its VM runs); volumes never shrink.
    Resize {
        /// Volume name.
        #[arg(value_parser = parse_name)]
        name: Name,
        /// The new size, e.g. 4GiB.
        #[arg(long, value_parser = parse_bytes, value_name = "SIZE")]
        size: Bytes,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Deletes a standalone volume.
    Delete {
        /// Volume name.
        #[arg(value_parser = parse_name)]
        name: Name,
    },
}

/// `keel volume create NAME --pool POOL --size SIZE [--image IMG]`.
#[derive(Debug, Args)]
pub struct VolumeCreateArgs {
    /// Volume name.
    #[arg(value_parser = parse_name)]
    pub name: Name,
    /// The pool (and so the node) it lives in.
    #[arg(long, value_parser = parse_name)]
    pub pool: Name,
    /// Size the guest sees, e.g. 10GiB.
    #[arg(long, value_parser = parse_bytes, value_name = "SIZE")]
    pub size: Bytes,
    /// Start as a thin copy of this image.
    #[arg(long, value_parser = parse_name)]
    pub image: Option<Name>,
    /// Waiting.
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Output format.
    #[command(flatten)]
    pub out: OutputArg,
}

/// `keel vm snapshot …`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Takes a snapshot of a VM's disks (running: memory too).
    Create {
        /// VM name.
        #[arg(value_parser = parse_name)]
        vm: Name,
        /// Snapshot name.
        #[arg(value_parser = parse_name)]
        name: Name,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// A VM's snapshots.
    List {
        /// VM name.
        #[arg(value_parser = parse_name)]
        vm: Name,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Reverts a stopped VM's disks to a snapshot.
    Revert {
        /// VM name.
        #[arg(value_parser = parse_name)]
        vm: Name,
        /// Snapshot name.
        #[arg(value_parser = parse_name)]
        name: Name,
    },
    /// Deletes a snapshot (the VM must be stopped).
    Delete {
        /// VM name.
        #[arg(value_parser = parse_name)]
        vm: Name,
        /// Snapshot name.
        #[arg(value_parser = parse_name)]
        name: Name,
    },
}

/// `keel vm clone SOURCE NEW [--start] [--wait]`.
#[derive(Debug, Args)]
pub struct VmCloneArgs {
    /// The VM (stopped) or template to copy.
    #[arg(value_parser = parse_name)]
    pub source: Name,
    /// The new VM's name.
    #[arg(value_parser = parse_name)]
    pub name: Name,
    /// Start the clone once its disks are copied.
    #[arg(long)]
    pub start: bool,
    /// Waiting.
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Output format.
    #[command(flatten)]
    pub out: OutputArg,
}

/// Runs a `keel pool` command.
pub async fn pool(client: &ApiClient, command: PoolCommand) -> anyhow::Result<()> {
    match command {
        PoolCommand::List(o) => {
            let list: Items<Pool> = client.get("/api/v1/pools").await?;
            output::print(o.output, &list, |l| render_pools(&l.items))
        }
        PoolCommand::Show { name, out } => {
            let p: Pool = client.get(&format!("/api/v1/pools/{name}")).await?;
            output::print(out.output, &p, |p| render_pools(std::slice::from_ref(p)))
        }
    }
}

/// The pools as a table.
pub fn render_pools(pools: &[Pool]) -> String {
    let mut t = Table::new([
        "NAME",
        "NODE",
        "PHASE",
        "CAPACITY",
        "ALLOCATED",
        "AVAILABLE",
    ]);
    for p in pools {
        t.row([
            p.metadata.name.clone(),
            p.spec.node.to_string(),
            wire_name(&p.status.phase),
            output::bytes(p.status.capacity_bytes),
            output::bytes(p.status.allocation_bytes),
            output::bytes(p.status.available_bytes),
        ]);
    }
    t.render()
}

/// Runs a `keel volume` command.
pub async fn volume(client: &ApiClient, command: VolumeCommand) -> anyhow::Result<()> {
    match command {
        VolumeCommand::List(o) => {
            let list: Items<Volume> = client.get("/api/v1/volumes").await?;
            output::print(o.output, &list, |l| render_volumes(&l.items))
        }
        VolumeCommand::Show { name, out } => {
            let v: Volume = client.get(&format!("/api/v1/volumes/{name}")).await?;
            output::print(out.output, &v, |v| render_volumes(std::slice::from_ref(v)))
        }
        VolumeCommand::Create(a) => volume_create(client, a).await,
        VolumeCommand::Resize { name, size, out } => {
            let v: Volume = client
                .request(
                    Method::POST,
                    &format!("/api/v1/volumes/{name}/resize"),
                    Some(&serde_json::json!({ "size": size })),
                )
                .await?;
            output::print(out.output, &v, |v| render_volumes(std::slice::from_ref(v)))
        }
        VolumeCommand::Delete { name } => {
            client
                .request_empty::<()>(Method::DELETE, &format!("/api/v1/volumes/{name}"), None)
                .await?;
            eprintln!("deleted volume {name}");
            Ok(())
        }
    }
}

async fn volume_create(client: &ApiClient, a: VolumeCreateArgs) -> anyhow::Result<()> {
    let body = VolumeCreate {
        metadata: NewMetadata::named(a.name.clone()),
        spec: VolumeSpec {
            pool: a.pool.clone(),
            size: a.size,
            format: VolumeFormat::Qcow2,
            backing_image: a.image.clone(),
            qos: None,
            clone_of: None,
        },
    };
    body.validate()
        .map_err(|e| anyhow::anyhow!("{} ({})", e.message, e.field))?;
    let mut v: Volume = client
        .request(Method::POST, "/api/v1/volumes", Some(&body))
        .await?;
    eprintln!("created volume {}", a.name);
    if a.wait.wait {
        let deadline = Instant::now() + Duration::from_secs(a.wait.timeout);
        while v.status.phase != VolumePhase::Ready {
            if v.status.phase == VolumePhase::Failed {
                bail!("volume {} failed: {}", a.name, v.status.message);
            }
            if Instant::now() >= deadline {
                bail!("volume {} is not ready after {} s", a.name, a.wait.timeout);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            v = client.get(&format!("/api/v1/volumes/{}", a.name)).await?;
        }
    }
    output::print(a.out.output, &v, |v| {
        render_volumes(std::slice::from_ref(v))
    })
}

/// The volumes as a table.
pub fn render_volumes(vols: &[Volume]) -> String {
    let mut t = Table::new([
        "NAME",
        "POOL",
        "PHASE",
        "SIZE",
        "ALLOCATED",
        "VM",
        "BACKING",
    ]);
    for v in vols {
        t.row([
            v.metadata.name.clone(),
            v.spec.pool.to_string(),
            wire_name(&v.status.phase),
            v.spec.size.to_string(),
            output::bytes(v.status.allocation_bytes),
            or_dash(v.status.attached_to.clone()),
            or_dash(v.spec.backing_image.clone()),
        ]);
    }
    t.render()
}

/// Runs a `keel vm snapshot` command.
pub async fn snapshot(client: &ApiClient, command: SnapshotCommand) -> anyhow::Result<()> {
    match command {
        SnapshotCommand::Create { vm, name, out } => {
            let s: Snapshot = client
                .request(
                    Method::POST,
                    &format!("/api/v1/vms/{vm}/snapshots"),
                    Some(&serde_json::json!({ "name": name })),
                )
                .await?;
            if s.status.phase == SnapshotPhase::Failed {
                bail!("snapshot {name} of vm {vm} failed: {}", s.status.message);
            }
            eprintln!("snapshot {name} of vm {vm}: {}", wire_name(&s.status.phase));
            output::print(out.output, &s, |s| {
                render_snapshots(std::slice::from_ref(s))
            })
        }
        SnapshotCommand::List { vm, out } => {
            let list: Items<Snapshot> = client.get(&format!("/api/v1/vms/{vm}/snapshots")).await?;
            output::print(out.output, &list, |l| render_snapshots(&l.items))
        }
        SnapshotCommand::Revert { vm, name } => {
            let s: Snapshot = client
                .request::<Snapshot, ()>(
                    Method::POST,
                    &format!("/api/v1/vms/{vm}/snapshots/{name}/revert"),
                    None,
                )
                .await?;
            if s.status.reverted < s.spec.revert_generation {
                eprintln!("revert of vm {vm} to {name} requested; its node is still at it");
            } else {
                eprintln!("reverted vm {vm} to snapshot {name}");
            }
            Ok(())
        }
        SnapshotCommand::Delete { vm, name } => {
            client
                .request_empty::<()>(
                    Method::DELETE,
                    &format!("/api/v1/vms/{vm}/snapshots/{name}"),
                    None,
                )
                .await?;
            eprintln!("deleted snapshot {name} of vm {vm}");
            Ok(())
        }
    }
}

/// The snapshots as a table.
pub fn render_snapshots(snaps: &[Snapshot]) -> String {
    let mut t = Table::new(["NAME", "VM", "PHASE", "LIVE", "TAKEN", "MESSAGE"]);
    for s in snaps {
        t.row([
            s.metadata.name.clone(),
            s.spec.vm.to_string(),
            wire_name(&s.status.phase),
            s.status.live.to_string(),
            if s.status.taken.is_empty() {
                "-".to_string()
            } else {
                s.status.taken.clone()
            },
            if s.status.message.is_empty() {
                "-".to_string()
            } else {
                s.status.message.clone()
            },
        ]);
    }
    t.render()
}

/// `keel vm clone SOURCE NEW` (also `keel vm create NEW --from-template SOURCE`).
pub async fn clone(client: &ApiClient, a: &VmCloneArgs) -> anyhow::Result<()> {
    let body = VmClone {
        name: a.name.clone(),
        start: a.start,
    };
    let vm: Vm = client
        .request(
            Method::POST,
            &format!("/api/v1/vms/{}/clone", a.source),
            Some(&body),
        )
        .await?;
    eprintln!("created vm {} from {}", a.name, a.source);
    let want = if a.start {
        VmPhase::Running
    } else {
        VmPhase::Stopped
    };
    let path = format!("/api/v1/vms/{}", a.name);
    let deadline = Instant::now() + Duration::from_secs(a.wait.timeout);
    let mut vm = vm;
    while a.wait.wait && vm.status.phase != want {
        if matches!(vm.status.phase, VmPhase::Failed | VmPhase::Lost) {
            bail!(
                "vm {} is {}: {}",
                a.name,
                wire_name(&vm.status.phase),
                super::vm::reasons(&vm)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "vm {} is {} after {} s, not {}",
                a.name,
                wire_name(&vm.status.phase),
                a.wait.timeout,
                wire_name(&want)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        vm = client.get(&path).await?;
    }
    output::print(a.out.output, &vm, |v| {
        format!(
            "{}: {} on {}\n",
            v.metadata.name,
            wire_name(&v.status.phase),
            or_dash(v.status.node.clone())
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::OutputFormat;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        c: Top,
    }

    #[derive(Debug, Subcommand)]
    enum Top {
        #[command(subcommand)]
        Pool(PoolCommand),
        #[command(subcommand)]
        Volume(VolumeCommand),
        #[command(subcommand)]
        Snapshot(SnapshotCommand),
        Clone(VmCloneArgs),
    }

    fn parse(args: &[&str]) -> Result<Top, clap::Error> {
        let mut all = vec!["t"];
        all.extend_from_slice(args);
        T::try_parse_from(all).map(|t| t.c)
    }

    #[test]
    fn parses_the_storage_commands() {
        assert!(
            matches!(parse(&["pool", "list", "-o", "json"]).unwrap(), Top::Pool(PoolCommand::List(o)) if o.output == OutputFormat::Json)
        );
        let Top::Volume(VolumeCommand::Resize { name, size, .. }) =
            parse(&["volume", "resize", "data", "--size", "4GiB"]).unwrap()
        else {
            panic!("not resize")
        };
        assert_eq!((name.as_str(), size), ("data", Bytes::from_gib(4)));
        assert!(parse(&["volume", "resize", "data", "--size", "-1"]).is_err());
        assert!(parse(&["snapshot", "create", "web", "Not_DNS"]).is_err());
        let Top::Clone(c) = parse(&["clone", "base", "web2", "--start", "--wait"]).unwrap() else {
            panic!("not clone")
        };
        assert!(c.start && c.wait.wait);
    }

    #[test]
    fn tables_show_space_and_owners() {
        let p: Pool = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "node1-local", "uid": "", "version": 1, "labels": {}, "created": ""},
            "spec": {"node": "node1", "kind": {"type": "dir", "path": "/p"}},
            "status": {"phase": "ready", "capacity_bytes": 1u64 << 30, "allocation_bytes": 0, "available_bytes": 512u64 << 20}
        }))
        .unwrap();
        let t = render_pools(&[p]);
        assert!(
            t.contains("node1-local") && t.contains("1.0 GiB") && t.contains("512.0 MiB"),
            "{t}"
        );
    }
}
