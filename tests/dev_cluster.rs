//! A real 3-node dev cluster (network + mount namespaces, real keeld, real TLS, real SQLite):
//! formation from answer files, leader killed like a power cut, 2 of 3 nodes keep full
//! read-write service with no acknowledged write lost, and the killed node comes back and
//! catches up.

use std::time::Duration;

use anyhow::{Context, Result};
use keel_tests::{wait_until, Api, DevCluster};
use serde_json::{json, Value};

async fn cluster_view(api: &Api) -> Result<Value> {
    let a = api.call("GET", "/api/v1/cluster", None).await?;
    anyhow::ensure!(a.status == 200, "GET /cluster: {} {}", a.status, a.body);
    Ok(a.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_survive_a_leader_power_cut_and_catch_up() -> Result<()> {
    let dev = DevCluster::up("formation", 3, "10.77.1.0/24", 18443)?;
    eprintln!("formed in {:?}", dev.formed_in);

    // Formation: three members, three voters, all ready, one leader; names as the API reports.
    let api = dev.client(&dev.info.endpoint).await?;
    let view = cluster_view(&api).await?;
    let members = view["members"].as_array().context("members")?;
    assert_eq!(members.len(), 3, "{view}");
    for m in members {
        assert_eq!(m["role"], "voter", "{view}");
        assert_eq!(m["state"], "ready", "{view}");
    }
    let mut names: Vec<String> = members
        .iter()
        .map(|m| m["name"].as_str().unwrap_or("").to_string())
        .collect();
    names.sort();
    let mut reported: Vec<String> = dev.info.nodes.iter().map(|n| n.name.clone()).collect();
    reported.sort();
    assert_eq!(names, reported);
    let leader = view["leader"].as_str().context("a leader")?.to_string();

    // Node inventory is reported.
    let node = api
        .call("GET", &format!("/api/v1/nodes/{leader}"), None)
        .await?;
    assert_eq!(node.status, 200, "{}", node.body);
    assert!(
        node.body["status"]["cpu"]["count"].as_u64().unwrap_or(0) >= 1,
        "{}",
        node.body
    );
    assert!(
        node.body["status"]["memory"]["total_bytes"]
            .as_u64()
            .unwrap_or(0)
            > 0
    );
    assert!(!node.body["status"]["versions"]["keel"]
        .as_str()
        .unwrap_or("")
        .is_empty());

    // Writes through every node (followers forward to the leader), all acknowledged.
    let mut per_node = Vec::new();
    for n in &dev.info.nodes {
        per_node.push((n.name.clone(), dev.client(&n.api).await?));
    }
    let mut acked = Vec::new();
    for i in 0..30 {
        let (_, c) = &per_node[i % per_node.len()];
        let key = format!("test.before.k{i}");
        let a = c.put_setting(&key, json!(i)).await?;
        assert_eq!(a.status, 200, "{}", a.body);
        acked.push((key, i));
    }

    // Power cut of the leader.
    dev.dev(&["stop", &leader, "--kill"])?;
    let survivor = per_node
        .iter()
        .find(|(n, _)| *n != leader)
        .map(|(_, c)| c.clone())
        .context("survivor")?;
    let (new_leader, first_write) = wait_until(
        "a survivor to accept a write",
        Duration::from_secs(15),
        || {
            let s = survivor.clone();
            async move {
                let a = s.put_setting("test.after.first", json!("ok")).await?;
                if a.status != 200 {
                    return Ok(None);
                }
                let view = cluster_view(&s).await?;
                Ok(Some((view["leader"].as_str().unwrap_or("").to_string(), a)))
            }
        },
    )
    .await?;
    assert_eq!(first_write.body["value"], "ok");
    assert_ne!(new_leader, leader, "a new leader was elected");

    // Two of three nodes keep full read-write service, through both survivors.
    for (name, c) in per_node.iter().filter(|(n, _)| *n != leader) {
        let key = format!("test.after.{name}");
        let put = c.put_setting(&key, json!({"via": name})).await?;
        assert_eq!(put.status, 200, "{}", put.body);
        let v = put.body["version"].as_u64().context("version")?;
        let cas = c
            .call(
                "PUT",
                &format!("/api/v1/settings/{key}"),
                Some(json!({"value": 2, "version": v})),
            )
            .await?;
        assert_eq!(cas.status, 200, "{}", cas.body);
        let del = c
            .call("DELETE", &format!("/api/v1/settings/{key}"), None)
            .await?;
        assert_eq!(del.status, 204);
        let list = c.call("GET", "/api/v1/settings", None).await?;
        assert_eq!(list.status, 200);
    }

    // No acknowledged write was lost.
    for (key, i) in &acked {
        let a = survivor
            .call("GET", &format!("/api/v1/settings/{key}"), None)
            .await?;
        assert_eq!(a.status, 200, "{key} lost: {}", a.body);
        assert_eq!(a.body["value"], json!(i));
    }

    // The leader shows the killed node as not-ready.
    wait_until(
        "the killed node to be not-ready",
        Duration::from_secs(15),
        || {
            let s = survivor.clone();
            let leader = leader.clone();
            async move {
                let view = cluster_view(&s).await?;
                let state = view["members"]
                    .as_array()
                    .and_then(|ms| ms.iter().find(|m| m["name"] == leader.as_str()))
                    .map(|m| m["state"].clone());
                Ok((state == Some(json!("not-ready"))).then_some(()))
            }
        },
    )
    .await?;

    // More writes while it is down, then it comes back and catches up.
    for i in 0..10 {
        let a = survivor
            .put_setting(&format!("test.while-down.k{i}"), json!(i))
            .await?;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    dev.dev(&["start", &leader])?;
    let back_api = dev.api_of(&leader)?;
    let back = wait_until(
        "the restarted node to serve reads",
        Duration::from_secs(30),
        || {
            let dev = &dev;
            let back_api = back_api.clone();
            async move {
                match dev.client(&back_api).await {
                    Ok(c) => {
                        let a = c
                            .call("GET", "/api/v1/settings/test.while-down.k9", None)
                            .await?;
                        Ok((a.status == 200).then_some(c))
                    }
                    Err(_) => Ok(None),
                }
            }
        },
    )
    .await?;
    let a = back
        .call("GET", "/api/v1/settings/test.while-down.k9", None)
        .await?;
    assert_eq!(a.body["value"], json!(9));
    wait_until(
        "the restarted node to be ready again",
        Duration::from_secs(15),
        || {
            let s = survivor.clone();
            let leader = leader.clone();
            async move {
                let view = cluster_view(&s).await?;
                let ok = view["members"]
                    .as_array()
                    .map(|ms| {
                        ms.iter().all(|m| m["state"] == "ready")
                            && ms.iter().any(|m| m["name"] == leader.as_str())
                    })
                    .unwrap_or(false);
                Ok(ok.then_some(()))
            }
        },
    )
    .await?;

    // With two of three nodes down there is no quorum: a clear 503 with Retry-After, not a hang.
    let others: Vec<String> = dev
        .info
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .filter(|n| *n != leader)
        .collect();
    for n in &others {
        dev.dev(&["stop", n, "--kill"])?;
    }
    let lonely = back.put_setting("test.no-quorum", json!(1)).await?;
    assert_eq!(lonely.status, 503, "{}", lonely.body);
    assert_eq!(lonely.body["error"]["code"], "no_quorum", "{}", lonely.body);
    assert!(lonely.retry_after.is_some(), "503 carries Retry-After");
    Ok(())
}
