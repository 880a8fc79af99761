//! `keel vm migrate`, `keel node maintenance|maintenance-exit` and `keel task list|show|cancel`.
//!
//! ```text
//!  vm migrate NAME [--to NODE] ─▶ POST /vms/{n}/migrate ─▶ 202 Task ─(--wait)─▶ GET /tasks/{t}
//!                                  progress lines (step, percent, bytes) until it finishes
//!  node maintenance NODE ─▶ POST /nodes/{n}/maintenance ─(--wait)─▶ status.maintenance = empty
//! ```

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, Subcommand};
use keel_model::{MaintenancePhase, Name, Node, Task, TaskPhase};
use reqwest::Method;
use serde::Serialize;

use super::{or_dash, wire_name, Items};
use crate::cli::{parse_name, OutputArg, WaitArgs};
use crate::client::ApiClient;
use crate::output::{self, Table};

const POLL: Duration = Duration::from_millis(500);

/// `keel vm migrate NAME [--to NODE] [--wait]`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// VM name.
    #[arg(value_parser = parse_name)]
    pub name: Name,
    /// Destination node [default: the scheduler picks one].
    #[arg(long, value_parser = parse_name)]
    pub to: Option<Name>,
    /// Waiting.
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Output format.
    #[command(flatten)]
    pub out: OutputArg,
}

/// `keel node maintenance|maintenance-exit NODE [--wait]`.
#[derive(Debug, Args)]
pub struct MaintenanceArgs {
    /// Node name.
    #[arg(value_parser = parse_name)]
    pub name: Name,
    /// Waiting (maintenance: until the node is empty).
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Output format.
    #[command(flatten)]
    pub out: OutputArg,
}

/// `keel task …`.
#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Every task with its phase and progress.
    List(OutputArg),
    /// One task.
    Show {
        /// Task name.
        name: String,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Asks a running task to stop (a migration aborts; the VM stays where it was).
    Cancel {
        /// Task name.
        name: String,
    },
}

#[derive(Serialize)]
struct MigrateBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a Name>,
}

/// One line about a task's progress, e.g. `transferring 45% (72.0 MiB of 160.0 MiB)`.
pub fn progress_line(t: &Task) -> String {
    let mut s = format!("{} {}", wire_name(&t.status.phase), t.status.progress);
    if !t.status.step.is_empty() {
        s = format!("{} {s}", t.status.step);
    }
    if t.status.bytes_total > 0 {
        s.push_str(&format!(
            " ({:.1} MiB of {:.1} MiB)",
            t.status.bytes_done as f64 / 1048576.0,
            t.status.bytes_total as f64 / 1048576.0
        ));
    }
    s
}

/// Polls task `name` until it finishes, printing each new progress line.
pub async fn wait_task(client: &ApiClient, name: &str, timeout: u64) -> anyhow::Result<Task> {
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let mut last = String::new();
    loop {
        let t: Task = client.get(&format!("/api/v1/tasks/{name}")).await?;
        let line = progress_line(&t);
        if line != last {
            eprintln!("task {name}: {line}");
            last = line;
        }
        match t.status.phase {
            TaskPhase::Succeeded => return Ok(t),
            TaskPhase::Failed | TaskPhase::Cancelled => {
                bail!(
                    "task {name} {}: {}",
                    wire_name(&t.status.phase),
                    t.status.message
                )
            }
            TaskPhase::Pending | TaskPhase::Running => {}
        }
        if Instant::now() >= deadline {
            bail!("task {name} is still {last} after {timeout} s");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `keel vm migrate`.
pub async fn migrate(client: &ApiClient, args: &MigrateArgs) -> anyhow::Result<()> {
    let name = &args.name;
    let task: Task = client
        .request(
            Method::POST,
            &format!("/api/v1/vms/{name}/migrate"),
            Some(&MigrateBody {
                to: args.to.as_ref(),
            }),
        )
        .await?;
    eprintln!(
        "migration of vm {name} to {} requested (task {})",
        or_dash(task.spec.destination.as_ref()),
        task.metadata.name
    );
    let task = if args.wait.wait {
        wait_task(client, &task.metadata.name, args.wait.timeout).await?
    } else {
        task
    };
    output::print(args.out.output, &task, |t| {
        render_tasks(std::slice::from_ref(t))
    })
}

/// `keel node maintenance` (`enter`) and `keel node maintenance-exit`.
pub async fn maintenance(
    client: &ApiClient,
    args: &MaintenanceArgs,
    enter: bool,
) -> anyhow::Result<()> {
    let name = &args.name;
    let action = if enter {
        "maintenance"
    } else {
        "maintenance-exit"
    };
    let mut node: Node = client
        .request::<Node, ()>(
            Method::POST,
            &format!("/api/v1/nodes/{name}/{action}"),
            None,
        )
        .await?;
    if !enter {
        eprintln!("node {name} is out of maintenance: it takes VMs again");
    } else {
        eprintln!("node {name} is in maintenance: cordoned, its VMs move away");
        if args.wait.wait {
            let deadline = Instant::now() + Duration::from_secs(args.wait.timeout);
            let mut last = String::new();
            loop {
                node = client.get(&format!("/api/v1/nodes/{name}")).await?;
                let m = node.status.maintenance.clone().unwrap_or_default();
                let line = format!(
                    "{}, {} VM(s) left{}",
                    wire_name(&m.phase),
                    m.vms_remaining,
                    if m.message.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", m.message)
                    }
                );
                if line != last {
                    eprintln!("node {name}: {line}");
                    last = line;
                }
                if node.status.maintenance.is_some() && m.phase == MaintenancePhase::Empty {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "node {name} is not empty after {} s: {last}",
                        args.wait.timeout
                    );
                }
                tokio::time::sleep(POLL).await;
            }
        }
    }
    let now = time::OffsetDateTime::now_utc();
    output::print(args.out.output, &node, |n| {
        super::node::render_list(std::slice::from_ref(n), now)
    })
}

/// The task table.
pub fn render_tasks(tasks: &[Task]) -> String {
    let mut t = Table::new([
        "NAME", "KIND", "TARGET", "TO", "PHASE", "PROGRESS", "MESSAGE",
    ]);
    for task in tasks {
        t.row([
            task.metadata.name.clone(),
            wire_name(&task.spec.kind),
            task.spec.target.name.to_string(),
            or_dash(task.spec.destination.as_ref()),
            wire_name(&task.status.phase),
            progress_line(task),
            task.status.message.clone(),
        ]);
    }
    t.render()
}

/// `keel task …`.
pub async fn task(client: &ApiClient, command: TaskCommand) -> anyhow::Result<()> {
    match command {
        TaskCommand::List(o) => {
            let list: Items<Task> = client.get("/api/v1/tasks").await?;
            output::print(o.output, &list, |l| render_tasks(&l.items))
        }
        TaskCommand::Show { name, out } => {
            let t: Task = client.get(&format!("/api/v1/tasks/{name}")).await?;
            output::print(out.output, &t, |t| render_tasks(std::slice::from_ref(t)))
        }
        TaskCommand::Cancel { name } => {
            let _: Task = client
                .request::<Task, ()>(Method::POST, &format!("/api/v1/tasks/{name}/cancel"), None)
                .await?;
            eprintln!("cancel of task {name} requested");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_model::{ObjectRef, Percent, ResourceKind, TaskKind, TaskSpec, TaskStatus};

    fn task() -> Task {
        Task {
            metadata: keel_model::Metadata {
                name: "migrate-web-1a2b3c4d".into(),
                ..Default::default()
            },
            spec: TaskSpec {
                kind: TaskKind::VmMigrate,
                target: ObjectRef {
                    kind: ResourceKind::Vm,
                    name: Name::new("web").unwrap(),
                },
                destination: Some(Name::new("node2").unwrap()),
                cancel: false,
            },
            status: TaskStatus {
                phase: TaskPhase::Running,
                progress: Percent::new(45).unwrap(),
                step: "transferring".into(),
                bytes_done: 72 * 1048576,
                bytes_total: 160 * 1048576,
                ..Default::default()
            },
        }
    }

    #[test]
    fn progress_lines() {
        assert_eq!(
            progress_line(&task()),
            "transferring running 45% (72.0 MiB of 160.0 MiB)"
        );
        let mut t = task();
        t.status.bytes_total = 0;
        t.status.step.clear();
        assert_eq!(progress_line(&t), "running 45%");
        let table = render_tasks(&[task()]);
        assert!(table.contains("migrate-web-1a2b3c4d"), "{table}");
        assert!(table.contains("vm-migrate"), "{table}");
        assert!(table.contains("node2"), "{table}");
    }

    #[test]
    fn commands_parse() {
        use crate::cli::{Cli, Command, NodeCommand, VmCommand};
        use clap::Parser;
        let cli = Cli::try_parse_from(["keel", "vm", "migrate", "web", "--to", "node2", "--wait"])
            .unwrap();
        assert!(matches!(
            cli.command,
            Command::Vm(VmCommand::Migrate(ref a))
                if a.to.as_ref().map(|n| n.as_str()) == Some("node2") && a.wait.wait
        ));
        let cli = Cli::try_parse_from(["keel", "vm", "migrate", "web"]).unwrap();
        assert!(matches!(cli.command, Command::Vm(VmCommand::Migrate(ref a)) if a.to.is_none()));
        assert!(Cli::try_parse_from(["keel", "vm", "migrate", "web", "--to", "Bad_Node"]).is_err());
        for verb in ["pause", "resume", "force-stop", "reboot"] {
            Cli::try_parse_from(["keel", "vm", verb, "web", "--wait"]).unwrap();
        }
        let cli = Cli::try_parse_from(["keel", "node", "maintenance", "node1", "--wait"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Node(NodeCommand::Maintenance(ref a)) if a.name.as_str() == "node1" && a.wait.wait
        ));
        let cli = Cli::try_parse_from(["keel", "node", "maintenance-exit", "node1"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Node(NodeCommand::MaintenanceExit(_))
        ));
        let cli = Cli::try_parse_from(["keel", "task", "cancel", "migrate-web-1"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Task(TaskCommand::Cancel { .. })
        ));
    }

    #[test]
    fn migrate_body_leaves_out_an_absent_target() {
        assert_eq!(
            serde_json::to_string(&MigrateBody { to: None }).unwrap(),
            "{}"
        );
        let n = Name::new("node2").unwrap();
        assert_eq!(
            serde_json::to_string(&MigrateBody { to: Some(&n) }).unwrap(),
            r#"{"to":"node2"}"#
        );
    }
}
