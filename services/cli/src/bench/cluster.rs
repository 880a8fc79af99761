//! `keel bench cluster`: formation, leader failover and keeld memory on a fresh dev cluster.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use keel_model::{ClusterStatus, Setting, SettingValue};
use reqwest::Method;
use serde::Serialize;

use super::api::{self, ApiReport};
use crate::cli::{BenchClusterArgs, UpArgs};
use crate::client::ApiClient;
use crate::dev::ops::{self, DevInfo};
use crate::output::{self, Table};

/// The targets of issue 2, shown beside the measurements.
const FORMATION_TARGET_S: f64 = 10.0;
const FAILOVER_TARGET_S: f64 = 2.0;
const RSS_TARGET_BYTES: u64 = 64 * 1024 * 1024;

/// How long a survivor may take to accept a write before the benchmark gives up.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(30);

/// keeld's memory on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeMemory {
    /// Node.
    pub node: String,
    /// Resident memory right after formation.
    pub rss_idle_bytes: Option<u64>,
    /// Resident memory after the API pass.
    pub rss_after_api_bytes: Option<u64>,
}

/// The report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterReport {
    /// Nodes.
    pub nodes: u32,
    /// `dev up` start to every node ready, seconds.
    pub formation_s: f64,
    /// The leader that was killed.
    pub killed_leader: String,
    /// The leader after failover.
    pub new_leader: Option<String>,
    /// Kill to the first write accepted through a survivor, seconds.
    pub failover_s: f64,
    /// Which survivor accepted it.
    pub failover_via: String,
    /// keeld memory per node.
    pub memory: Vec<NodeMemory>,
    /// The API pass on the formed cluster.
    pub api: ApiReport,
}

/// `keel bench cluster`.
pub async fn run(args: &BenchClusterArgs) -> anyhow::Result<ClusterReport> {
    let up = UpArgs {
        nodes: args.nodes,
        subnet: args.subnet,
        forward: args.forward,
        keeld: args.keeld.clone(),
        timeout: 60,
    };
    let started = Instant::now();
    let info = ops::up(&args.state, &up)
        .await
        .context("bringing up the benchmark's dev cluster")?;
    let formation = started.elapsed();
    let measured = measure(args, &info, formation).await;
    let down = ops::down(&args.state);
    match (measured, down) {
        (Ok(r), Ok(())) => Ok(r),
        (Err(e), Ok(())) => Err(e),
        (Ok(_), Err(d)) => Err(d.context("tearing down the benchmark's dev cluster")),
        (Err(e), Err(d)) => Err(e.context(format!("and tearing down failed: {d:#}"))),
    }
}

fn rss_by_node(args: &BenchClusterArgs) -> anyhow::Result<Vec<(String, Option<u64>)>> {
    let s = ops::status(&args.state)?;
    Ok(s.nodes
        .into_iter()
        .map(|n| (n.name, n.keeld_rss_bytes))
        .collect())
}

async fn measure(
    args: &BenchClusterArgs,
    info: &DevInfo,
    formation: Duration,
) -> anyhow::Result<ClusterReport> {
    let idle = rss_by_node(args)?;
    let mut client = ApiClient::new(&info.endpoint, Some(&info.ca_cert))?;
    client
        .login(&info.username, &info.password)
        .await
        .context("logging in")?;
    let api = api::run(&client, args.writes, args.reads)
        .await
        .context("the API pass")?;
    let after = rss_by_node(args)?;
    let memory = idle
        .iter()
        .map(|(node, rss)| NodeMemory {
            node: node.clone(),
            rss_idle_bytes: *rss,
            rss_after_api_bytes: after.iter().find(|(n, _)| n == node).and_then(|(_, r)| *r),
        })
        .collect();

    let view: ClusterStatus = client.get("/api/v1/cluster").await?;
    let leader = view
        .leader
        .clone()
        .ok_or_else(|| anyhow!("the cluster reports no leader"))?;
    let mut survivors = Vec::new();
    for n in info.nodes.iter().filter(|n| n.name != leader) {
        let mut c =
            ApiClient::new(&n.api, Some(&info.ca_cert))?.with_timeout(Duration::from_millis(1000));
        c.login(&info.username, &info.password)
            .await
            .with_context(|| format!("logging in to {}", n.name))?;
        survivors.push((n.name.clone(), c));
    }
    if survivors.is_empty() {
        anyhow::bail!("a one-node cluster has no survivor to fail over to; use --nodes 3");
    }

    let killed = Instant::now();
    ops::stop(&args.state, &leader, true)?;
    let body = SettingValue {
        value: serde_json::json!("after-failover"),
        version: None,
    };
    let (failover, via) = 'outer: loop {
        for (name, c) in &survivors {
            let put: Result<Setting, _> = c
                .request(Method::PUT, "/api/v1/settings/bench.failover", Some(&body))
                .await;
            if put.is_ok() {
                break 'outer (killed.elapsed(), name.clone());
            }
        }
        if killed.elapsed() > FAILOVER_DEADLINE {
            anyhow::bail!(
                "no survivor accepted a write within {} s of killing {leader}",
                FAILOVER_DEADLINE.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let new_leader = match survivors.iter().find(|(n, _)| *n == via) {
        Some((_, c)) => c
            .get::<ClusterStatus>("/api/v1/cluster")
            .await
            .ok()
            .and_then(|v| v.leader),
        None => None,
    };
    Ok(ClusterReport {
        nodes: args.nodes,
        formation_s: round3(formation.as_secs_f64()),
        killed_leader: leader,
        new_leader,
        failover_s: round3(failover.as_secs_f64()),
        failover_via: via,
        memory,
        api,
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}

/// The human view.
pub fn render(r: &ClusterReport) -> String {
    let mut out = format!(
        "formation of {} nodes: {:.2} s (target <= {FORMATION_TARGET_S} s: {})\n\
         leader failover: killed {}, first write accepted via {} after {:.3} s (target <= {FAILOVER_TARGET_S} s: {}); new leader {}\n\n",
        r.nodes,
        r.formation_s,
        verdict(r.formation_s <= FORMATION_TARGET_S),
        r.killed_leader,
        r.failover_via,
        r.failover_s,
        verdict(r.failover_s <= FAILOVER_TARGET_S),
        r.new_leader.as_deref().unwrap_or("(unknown)"),
    );
    let mut t = Table::new([
        "NODE",
        "KEELD RSS IDLE",
        "AFTER API PASS",
        "TARGET <= 64 MiB",
    ]);
    for m in &r.memory {
        let cell = |b: Option<u64>| b.map(output::bytes).unwrap_or_else(|| "-".into());
        t.row([
            m.node.clone(),
            cell(m.rss_idle_bytes),
            cell(m.rss_after_api_bytes),
            verdict(m.rss_idle_bytes.is_some_and(|b| b <= RSS_TARGET_BYTES)).to_string(),
        ]);
    }
    out.push_str(&t.render());
    out.push('\n');
    out.push_str(&api::render(&r.api));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::api::Pass;
    use crate::bench::stats::Summary;

    #[test]
    fn renders_targets() {
        let r = ClusterReport {
            nodes: 3,
            formation_s: 4.5,
            killed_leader: "node1".into(),
            new_leader: Some("node2".into()),
            failover_s: 2.5,
            failover_via: "node2".into(),
            memory: vec![NodeMemory {
                node: "node1".into(),
                rss_idle_bytes: Some(30 << 20),
                rss_after_api_bytes: None,
            }],
            api: ApiReport {
                endpoint: "https://127.0.0.1:18443".into(),
                passes: vec![Pass {
                    op: "read",
                    clients: 1,
                    summary: Summary {
                        count: 1,
                        p50_ms: 1.0,
                        p99_ms: 1.0,
                        max_ms: 1.0,
                        ops_per_s: 1.0,
                    },
                }],
            },
        };
        let text = render(&r);
        assert!(
            text.contains("formation of 3 nodes: 4.50 s (target <= 10 s: ok)"),
            "{text}"
        );
        assert!(
            text.contains("after 2.500 s (target <= 2 s: MISSED)"),
            "{text}"
        );
        assert!(
            text.contains("node1  30.0 MiB        -               ok"),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["failover_s"], 2.5);
        assert_eq!(json["api"]["passes"][0]["op"], "read");
    }
}
