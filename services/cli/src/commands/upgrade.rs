//! `keel upgrade apply|status|list`: rolling A/B upgrades of the cluster's nodes.
//!
//! ```text
//!  upgrade apply BUNDLE ─▶ POST /upgrade-bundles (the file, streamed; verified by the node)
//!                       ─▶ POST /upgrades {bundle, nodes?, allow_downgrade?, tries?} ─▶ Upgrade
//!                       ─(--wait)─▶ GET /upgrades/{name} every second: each node's phase/message
//!                                   change on stderr; exit 0 only when it succeeded
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use keel_model::{Upgrade, UpgradeBundle, UpgradeCreate, UpgradePhase};
use reqwest::Method;

use super::{wire_name, Items};
use crate::cli::{OutputArg, OutputFormat};
use crate::client::ApiClient;
use crate::output::{self, Table};

const POLL: Duration = Duration::from_secs(1);
/// How long the upload of a bundle may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// `keel upgrade …`.
#[derive(Debug, Subcommand)]
pub enum UpgradeCommand {
    /// Uploads a signed update bundle and upgrades the cluster to it, one node at a time
    /// (drain, write the inactive slot, reboot, bless once healthy; a node that does not come
    /// up on the new version falls back by itself and stops the upgrade).
    Apply(ApplyArgs),
    /// One upgrade (default: the newest): every node's phase and what it waits for.
    Status {
        /// Upgrade name [default: the newest].
        name: Option<String>,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Every upgrade.
    List(OutputArg),
}

/// `keel upgrade apply BUNDLE`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The update bundle (keel-update.bundle of an image build).
    pub path: PathBuf,
    /// Nodes to upgrade, in this order [default: every node, in name order].
    #[arg(long, value_delimiter = ',')]
    pub nodes: Option<Vec<String>>,
    /// Install even when the bundle is older than what a node runs.
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Boot tries of the new slot before a node falls back to its old one [default: 3].
    #[arg(long)]
    pub tries: Option<u32>,
    /// Follow the upgrade until it ends; exit non-zero unless it succeeded.
    #[arg(long)]
    pub wait: bool,
    /// Seconds to wait with `--wait`.
    #[arg(long, default_value_t = 4 * 3600, value_name = "SECS")]
    pub timeout: u64,
    /// Output format (json: the final Upgrade record).
    #[command(flatten)]
    pub out: OutputArg,
}

/// Runs `keel upgrade …`.
pub async fn run(client: &ApiClient, command: UpgradeCommand) -> anyhow::Result<()> {
    match command {
        UpgradeCommand::Apply(a) => apply(client, &a).await,
        UpgradeCommand::Status { name, out } => {
            let u = match name {
                Some(n) => {
                    client
                        .get::<Upgrade>(&format!("/api/v1/upgrades/{n}"))
                        .await?
                }
                None => newest(client).await?,
            };
            output::print(out.output, &u, render)
        }
        UpgradeCommand::List(o) => {
            let list: Items<Upgrade> = client.get("/api/v1/upgrades").await?;
            output::print(o.output, &list, |l| render_list(&l.items))
        }
    }
}

async fn newest(client: &ApiClient) -> anyhow::Result<Upgrade> {
    let list: Items<Upgrade> = client.get("/api/v1/upgrades").await?;
    list.items
        .into_iter()
        .max_by(|a, b| a.metadata.name.cmp(&b.metadata.name))
        .context("there is no upgrade yet; start one with `keel upgrade apply BUNDLE`")
}

async fn apply(client: &ApiClient, a: &ApplyArgs) -> anyhow::Result<()> {
    let file = tokio::fs::File::open(&a.path)
        .await
        .with_context(|| format!("opening {}", a.path.display()))?;
    let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "uploading {} ({}); the node verifies it",
        a.path.display(),
        output::bytes(size)
    );
    let b: UpgradeBundle = client
        .post_file("/api/v1/upgrade-bundles", file, UPLOAD_TIMEOUT)
        .await?;
    eprintln!(
        "bundle {} verified on {}: version {}, signed by {}",
        b.sha256, b.node, b.version, b.key_id
    );
    let req = UpgradeCreate {
        bundle: b.sha256.clone(),
        nodes: a.nodes.clone(),
        allow_downgrade: a.allow_downgrade,
        tries: a.tries,
    };
    let u: Upgrade = client
        .request(Method::POST, "/api/v1/upgrades", Some(&req))
        .await?;
    eprintln!("upgrade {} started: {}", u.metadata.name, u.status.message);
    if !a.wait {
        return output::print(a.out.output, &u, render);
    }
    let u = follow(client, &u.metadata.name, Duration::from_secs(a.timeout)).await?;
    if a.out.output == OutputFormat::Json {
        output::print(a.out.output, &u, render)?;
    } else {
        output::text(&render(&u))?;
    }
    match u.status.phase {
        UpgradePhase::Succeeded => Ok(()),
        _ => bail!("upgrade {} failed: {}", u.metadata.name, u.status.message),
    }
}

/// The lines `--wait` prints for what changed between two reads of an upgrade.
pub fn changes(seen: &mut BTreeMap<String, (String, String)>, u: &Upgrade) -> Vec<String> {
    let mut out = Vec::new();
    let overall = (wire_name(&u.status.phase), u.status.message.clone());
    if seen.get("").is_none_or(|s| s.0 != overall.0) {
        out.push(format!("upgrade {}: {}", overall.0, overall.1));
    }
    seen.insert(String::new(), overall);
    for n in &u.status.nodes {
        let now = (wire_name(&n.phase), n.message.clone());
        if seen.get(&n.node) != Some(&now) {
            out.push(format!("{}: {}: {}", n.node, now.0, now.1));
            seen.insert(n.node.clone(), now);
        }
    }
    out
}

/// Follows an upgrade until it ends, printing changes to stderr. The node the client talks
/// to may itself be rebooting into its new slot: unanswered reads are retried until `timeout`.
async fn follow(client: &ApiClient, name: &str, timeout: Duration) -> anyhow::Result<Upgrade> {
    let end = Instant::now() + timeout;
    let mut seen = BTreeMap::new();
    let mut unreachable = false;
    loop {
        match client
            .get::<Upgrade>(&format!("/api/v1/upgrades/{name}"))
            .await
        {
            Ok(u) => {
                if unreachable {
                    eprintln!("the API answers again");
                    unreachable = false;
                }
                for line in changes(&mut seen, &u) {
                    eprintln!("{line}");
                }
                if u.status.phase.is_final() {
                    return Ok(u);
                }
            }
            Err(e) if e.status().is_none_or(|s| s.is_server_error()) => {
                if !unreachable {
                    eprintln!("the API does not answer ({e}); a node may be rebooting, retrying");
                    unreachable = true;
                }
            }
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= end {
            bail!(
                "upgrade {name} has not finished after {} s; follow it with `keel upgrade status {name}`",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

fn render(u: &Upgrade) -> String {
    let mut s = output::fields(&[
        ("name", u.metadata.name.clone()),
        ("version", u.spec.version.clone()),
        ("bundle", u.spec.sha256.clone()),
        ("phase", wire_name(&u.status.phase)),
        ("message", u.status.message.clone()),
    ]);
    let mut t = Table::new(["NODE", "PHASE", "FROM", "RUNNING", "MESSAGE"]);
    for n in &u.status.nodes {
        t.row([
            n.node.clone(),
            wire_name(&n.phase),
            n.from_version.clone(),
            n.running_version.clone(),
            n.message.clone(),
        ]);
    }
    s.push('\n');
    s.push_str(&t.render());
    s
}

fn render_list(items: &[Upgrade]) -> String {
    let mut t = Table::new(["NAME", "VERSION", "PHASE", "NODES", "MESSAGE"]);
    for u in items {
        t.row([
            u.metadata.name.clone(),
            u.spec.version.clone(),
            wire_name(&u.status.phase),
            u.spec.nodes.join(","),
            u.status.message.clone(),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_model::{NodeUpgrade, NodeUpgradePhase, UpgradeSpec, UpgradeStatus};

    fn upgrade(phase: NodeUpgradePhase, msg: &str) -> Upgrade {
        Upgrade {
            metadata: keel_model::Metadata {
                name: "upgrade-1".into(),
                ..Default::default()
            },
            spec: UpgradeSpec {
                version: "0.1.0-2".into(),
                nodes: vec!["node1".into()],
                ..Default::default()
            },
            status: UpgradeStatus {
                phase: UpgradePhase::Running,
                message: "node 1 of 1".into(),
                nodes: vec![NodeUpgrade {
                    node: "node1".into(),
                    phase,
                    message: msg.into(),
                    ..Default::default()
                }],
            },
        }
    }

    #[test]
    fn apply_parses_the_fixed_interface() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "keel",
            "upgrade",
            "apply",
            "b.bundle",
            "--nodes",
            "node2,node1",
            "--allow-downgrade",
            "--tries",
            "2",
            "--wait",
            "-o",
            "json",
        ])
        .unwrap();
        let crate::cli::Command::Upgrade(UpgradeCommand::Apply(a)) = cli.command else {
            panic!("not apply");
        };
        assert_eq!(a.path, PathBuf::from("b.bundle"));
        assert_eq!(a.nodes, Some(vec!["node2".into(), "node1".into()]));
        assert!(a.allow_downgrade && a.wait);
        assert_eq!((a.tries, a.out.output), (Some(2), OutputFormat::Json));
        let cli = crate::cli::Cli::try_parse_from(["keel", "upgrade", "status"]).unwrap();
        assert!(matches!(
            cli.command,
            crate::cli::Command::Upgrade(UpgradeCommand::Status { name: None, .. })
        ));
        assert!(crate::cli::Cli::try_parse_from(["keel", "upgrade", "list", "-o", "json"]).is_ok());
    }

    #[test]
    fn wait_prints_only_changes() {
        let mut seen = BTreeMap::new();
        let first = changes(
            &mut seen,
            &upgrade(NodeUpgradePhase::Draining, "moving VMs"),
        );
        assert_eq!(
            first,
            vec![
                "upgrade running: node 1 of 1",
                "node1: draining: moving VMs"
            ]
        );
        assert!(changes(
            &mut seen,
            &upgrade(NodeUpgradePhase::Draining, "moving VMs")
        )
        .is_empty());
        assert_eq!(
            changes(&mut seen, &upgrade(NodeUpgradePhase::Installing, "writing")),
            vec!["node1: installing: writing"]
        );
        let text = render(&upgrade(NodeUpgradePhase::Installing, "writing"));
        assert!(
            text.contains("node1") && text.contains("installing"),
            "{text}"
        );
    }
}
