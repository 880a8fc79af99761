//! Joining and leaving: a node with the wrong join secret is refused; a 4th node joins as a
//! learner (voters stay odd) and a 5th makes five voters; a node can be removed.

use std::time::Duration;

use anyhow::Result;
use keel_tests::{wait_until, Api, DevCluster};
use serde_json::Value;

async fn members(api: &Api) -> Result<Vec<Value>> {
    let a = api.call("GET", "/api/v1/cluster", None).await?;
    anyhow::ensure!(a.status == 200, "{} {}", a.status, a.body);
    Ok(a.body["members"].as_array().cloned().unwrap_or_default())
}

fn role_of(ms: &[Value], name: &str) -> Option<String> {
    ms.iter()
        .find(|m| m["name"] == name)
        .and_then(|m| m["role"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_refused_and_nodes_four_and_five_join() -> Result<()> {
    let dev = DevCluster::up("membership", 3, "10.77.2.0/24", 18444)?;
    let api = dev.client(&dev.info.endpoint).await?;

    // A node with the wrong join secret is refused and never becomes a member.
    dev.dev(&[
        "add",
        "intruder",
        "--join-secret",
        "this-is-not-the-secret-at-all",
    ])?;
    let log_path = dev.state.join("intruder/keeld.log");
    let health = wait_until(
        "the intruder to be refused",
        Duration::from_secs(20),
        || {
            let log_path = log_path.clone();
            async move {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                Ok(log.contains("join secret does not match").then_some(log))
            }
        },
    )
    .await?;
    assert!(health.contains("refused"), "{health}");
    let ms = members(&api).await?;
    assert_eq!(ms.len(), 3, "{ms:?}");
    assert!(role_of(&ms, "intruder").is_none());
    dev.dev(&["stop", "intruder", "--kill"])?;

    // A 4th node joins as a learner: voters stay odd.
    let added = dev.dev(&["add", "node4", "--wait"])?;
    let node4: Value = serde_json::from_str(added.trim())?;
    let node4_api = node4["api"].as_str().unwrap_or_default().to_string();
    let ms = wait_until(
        "node4 to be a ready learner",
        Duration::from_secs(30),
        || {
            let api = api.clone();
            async move {
                let ms = members(&api).await?;
                let ok = ms
                    .iter()
                    .any(|m| m["name"] == "node4" && m["state"] == "ready");
                Ok(ok.then_some(ms))
            }
        },
    )
    .await?;
    assert_eq!(role_of(&ms, "node4").as_deref(), Some("learner"), "{ms:?}");
    assert_eq!(ms.iter().filter(|m| m["role"] == "voter").count(), 3);

    // The new node serves the API with a CA-signed certificate and sees the data.
    let put = api
        .put_setting("test.member.k", serde_json::json!("v"))
        .await?;
    assert_eq!(put.status, 200);
    let n4 = dev.client(&node4_api).await?;
    let got = n4
        .call("GET", "/api/v1/settings/test.member.k", None)
        .await?;
    assert_eq!(got.status, 200, "{}", got.body);

    // A 5th node makes five voters.
    dev.dev(&["add", "node5", "--wait"])?;
    wait_until("five voters", Duration::from_secs(30), || {
        let api = api.clone();
        async move {
            let ms = members(&api).await?;
            Ok((ms.iter().filter(|m| m["role"] == "voter").count() == 5).then_some(()))
        }
    })
    .await?;

    // Remove node5: four members remain.
    let rm = api
        .call(
            "POST",
            "/api/v1/cluster/remove",
            Some(serde_json::json!({"name": "node5"})),
        )
        .await?;
    assert_eq!(rm.status, 204, "{}", rm.body);
    let ms = members(&api).await?;
    assert!(role_of(&ms, "node5").is_none(), "{ms:?}");
    assert_eq!(ms.len(), 4);
    // Voters stay odd after the removal: one of the four is demoted to learner.
    let odd = wait_until("voters to be odd again", Duration::from_secs(15), || {
        let api = api.clone();
        async move {
            let ms = members(&api).await?;
            let voters = ms.iter().filter(|m| m["role"] == "voter").count();
            Ok((voters == 3).then_some(ms))
        }
    })
    .await?;
    assert_eq!(odd.len(), 4);
    let nodes = api.call("GET", "/api/v1/nodes/node5", None).await?;
    assert_eq!(nodes.status, 404);
    Ok(())
}
