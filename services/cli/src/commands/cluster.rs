//! `keel cluster status` and `keel cluster remove`.

use keel_model::{ClusterStatus, Name, RemoveNodeRequest};
use reqwest::Method;

use super::wire_name;
use crate::cli::OutputFormat;
use crate::client::ApiClient;
use crate::output::{self, Table};

/// `keel cluster status`.
pub async fn status(client: &ApiClient, format: OutputFormat) -> anyhow::Result<()> {
    let status: ClusterStatus = client.get("/api/v1/cluster").await?;
    output::print(format, &status, render_status)
}

/// The human view of the cluster.
pub fn render_status(s: &ClusterStatus) -> String {
    let mut out = format!(
        "cluster {}, leader {}, term {}, committed {}\n\n",
        s.name,
        s.leader.as_deref().unwrap_or("(none)"),
        s.term,
        s.committed
    );
    let mut t = Table::new(["NAME", "ID", "ADDRESS", "ROLE", "STATE", "LEADER"]);
    for m in &s.members {
        let leader = if s.leader.as_deref() == Some(m.name.as_str()) {
            "*"
        } else {
            ""
        };
        t.row([
            m.name.clone(),
            m.id.to_string(),
            m.address.clone(),
            wire_name(&m.role),
            wire_name(&m.state),
            leader.to_string(),
        ]);
    }
    out.push_str(&t.render());
    out
}

/// `keel cluster remove NODE`.
pub async fn remove(client: &ApiClient, node: &Name) -> anyhow::Result<()> {
    let body = RemoveNodeRequest { name: node.clone() };
    let resp = client
        .send(
            Method::POST,
            "/api/v1/cluster/remove",
            Some(&body),
            Some(crate::client::REQUEST_TIMEOUT),
        )
        .await?;
    drop(resp);
    eprintln!("removed {node} from the cluster");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_model::{Member, MemberRole, NodeState};

    #[test]
    fn status_table() {
        let s = ClusterStatus {
            name: "dev".into(),
            leader: Some("node2".into()),
            term: 4,
            committed: 120,
            members: vec![
                Member {
                    name: "node1".into(),
                    id: 1,
                    address: "10.77.0.11".into(),
                    role: MemberRole::Voter,
                    state: NodeState::NotReady,
                },
                Member {
                    name: "node2".into(),
                    id: 2,
                    address: "10.77.0.12".into(),
                    role: MemberRole::Voter,
                    state: NodeState::Ready,
                },
                Member {
                    name: "node4".into(),
                    id: 4,
                    address: "10.77.0.14".into(),
                    role: MemberRole::Learner,
                    state: NodeState::Joining,
                },
            ],
        };
        assert_eq!(
            render_status(&s),
            "cluster dev, leader node2, term 4, committed 120\n\n\
             NAME   ID  ADDRESS     ROLE     STATE      LEADER\n\
             node1  1   10.77.0.11  voter    not-ready\n\
             node2  2   10.77.0.12  voter    ready      *\n\
             node4  4   10.77.0.14  learner  joining\n"
        );
    }
}
