//! Rolling upgrades on a real 3-node dev cluster (keeld told its trusted update keys through
//! KEEL_UPDATE_KEYS): bad bundles and bad requests get a 4xx with a code (and field) and leave
//! nothing behind; a well-signed bundle is accepted, the upgrade drains node1 (maintenance on)
//! and then ends `failed` with the "cannot be upgraded in place" message, since dev nodes do
//! not boot from A/B slots, and node1 is out of maintenance afterwards; `keel upgrade apply
//! --wait` exits non-zero with that message. The real A/B path is the appliance e2e test's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use ed25519_dalek::{Signer, SigningKey};
use keel_tests::{wait_until, Api, DevCluster};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const NOT_IN_PLACE: &str = "cannot be upgraded in place";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes `seed`'s public key into `dir` as a trusted key; returns the key and its id.
fn key(dir: &Path, seed: u8) -> Result<(SigningKey, String)> {
    let sk = SigningKey::from_bytes(&[seed; 32]);
    let pk = sk.verifying_key().to_bytes();
    let id = keel_update::bundle::key_id(&pk);
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(format!("{id}.pub")), hex(&pk))?;
    Ok((sk, id))
}

/// A small bundle (text payload, so it travels as a string body).
fn bundle(sk: &SigningKey, id: &str, version: &str, tamper: bool, signed: bool) -> Result<String> {
    let files: [(&str, &str); 3] = [
        ("root", "a root filesystem, in a test"),
        ("vmlinuz", "a kernel"),
        ("initrd.img", "an initrd"),
    ];
    let entries: Vec<Value> = files
        .iter()
        .map(|(n, d)| json!({"name": n, "size": d.len(), "sha256": hex(&Sha256::digest(d.as_bytes()))}))
        .collect();
    let manifest = serde_json::to_vec(
        &json!({"format": 1, "version": version, "build": "upgrade-test", "files": entries}),
    )?;
    let sig = sk.sign(&manifest).to_bytes();
    let root = if tamper {
        files[0].1.replacen('a', "b", 1)
    } else {
        files[0].1.to_string()
    };
    let mut out = Vec::new();
    keel_update::bundle::write_bundle(
        &mut out,
        &manifest,
        signed.then_some((id, &sig)),
        &[
            root.as_bytes(),
            files[1].1.as_bytes(),
            files[2].1.as_bytes(),
        ],
    )?;
    Ok(String::from_utf8(out)?)
}

/// Files in every node's bundle directory.
fn stored_bundles(dev: &DevCluster) -> Vec<String> {
    let mut all = Vec::new();
    for n in &dev.info.nodes {
        let dir = dev.state.join(&n.name).join("state/upgrade-bundles");
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                all.push(format!("{}/{}", n.name, e.file_name().to_string_lossy()));
            }
        }
    }
    all.sort();
    all
}

async fn upload(api: &Api, body: String) -> Result<keel_tests::Answer> {
    api.raw(
        "POST",
        "/api/v1/upgrade-bundles",
        Some(body),
        &[("content-type", "application/octet-stream")],
    )
    .await
}

/// node `name`'s records from the event stream (settings and nodes), reconnecting from the
/// last revision when the stream breaks, until `node` was in maintenance and is out again or
/// `deadline` passes.
async fn upgrades(api: &Api) -> Result<Vec<Value>> {
    let a = api.call("GET", "/api/v1/upgrades", None).await?;
    anyhow::ensure!(a.status == 200, "list: {} {}", a.status, a.body);
    Ok(a.body["items"].as_array().cloned().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_refuse_bad_bundles_and_fail_cleanly_without_ab_slots() -> Result<()> {
    let keys = PathBuf::from("/tmp/keel-test-upgrade-keys");
    let _ = std::fs::remove_dir_all(&keys);
    let (sk, id) = key(&keys.join("trusted"), 7)?;
    let (other, other_id) = key(&keys.join("untrusted"), 9)?;
    // keel dev up starts keeld with this environment.
    std::env::set_var("KEEL_UPDATE_KEYS", keys.join("trusted"));
    let dev = DevCluster::up("upgrade", 3, "10.77.14.0/24", 18456)?;
    let api = dev.client(&dev.info.endpoint).await?;

    // Bad bundles: each refused with its code, nothing kept on any node.
    let good = bundle(&sk, &id, "0.2.0-1", false, true)?;
    let cases = [
        ("unsigned", bundle(&sk, &id, "0.2.0-1", false, false)?),
        ("hash_mismatch", bundle(&sk, &id, "0.2.0-1", true, true)?),
        (
            "untrusted_key",
            bundle(&other, &other_id, "0.2.0-1", false, true)?,
        ),
        // The manifest changed after signing (same length, so the header still parses).
        ("bad_signature", good.replacen("0.2.0-1", "0.2.0-9", 1)),
        ("not_a_bundle", "this is not an update bundle\n".to_string()),
        ("not_a_bundle", String::new()),
        ("truncated", good[..good.len() - 4].to_string()),
    ];
    for (code, body) in cases {
        let a = upload(&api, body).await?;
        assert_eq!(a.status, 400, "{code}: {}", a.body);
        assert_eq!(a.body["error"]["code"], code, "{}", a.body);
        assert!(
            stored_bundles(&dev).is_empty(),
            "{code} left {:?}",
            stored_bundles(&dev)
        );
    }
    let listed = api.call("GET", "/api/v1/upgrade-bundles", None).await?;
    assert_eq!(listed.body["items"], json!([]), "{}", listed.body);
    let mut anon = Api::new(&dev.info.endpoint, &dev.info.ca_cert)?;
    anon.token = None;
    assert_eq!(upload(&anon, good.clone()).await?.status, 401);
    assert!(stored_bundles(&dev).is_empty());

    // Bad upgrade requests: nothing created.
    let bad_requests = [
        (
            json!({"bundle": "ab".repeat(32)}),
            404,
            "not_found",
            "bundle",
        ),
        (
            json!({"bundle": "not-a-hash"}),
            400,
            "invalid_field",
            "bundle",
        ),
    ];
    for (body, status, code, field) in bad_requests {
        let a = api
            .call("POST", "/api/v1/upgrades", Some(body.clone()))
            .await?;
        assert_eq!(a.status, status, "{body}: {}", a.body);
        assert_eq!(a.body["error"]["code"], code, "{}", a.body);
        assert_eq!(a.body["error"]["field"], field, "{}", a.body);
    }
    let a = api
        .raw("POST", "/api/v1/upgrades", Some("{not json".into()), &[])
        .await?;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(upgrades(&api).await?.is_empty());

    // A good bundle is kept on the node that took it.
    let a = upload(&api, good.clone()).await?;
    assert_eq!(a.status, 201, "{}", a.body);
    let sha = a.body["sha256"].as_str().context("sha256")?.to_string();
    assert_eq!(sha, hex(&Sha256::digest(good.as_bytes())));
    assert_eq!(a.body["version"], "0.2.0-1");
    assert_eq!(a.body["size_bytes"], good.len());
    let holder = a.body["node"].as_str().context("node")?.to_string();
    assert_eq!(stored_bundles(&dev), vec![format!("{holder}/{sha}.bundle")]);

    for (body, field) in [
        (
            json!({"bundle": sha, "nodes": ["node1", "node9"]}),
            "nodes[1]",
        ),
        (json!({"bundle": sha, "tries": 0}), "tries"),
        (json!({"bundle": sha, "nodes": []}), "nodes"),
    ] {
        let a = api
            .call("POST", "/api/v1/upgrades", Some(body.clone()))
            .await?;
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        assert_eq!(a.body["error"]["field"], field, "{}", a.body);
    }
    assert!(upgrades(&api).await?.is_empty());

    // The upgrade: node1 is drained (maintenance on), then the upgrade fails cleanly since a
    // dev node has no A/B slots, and node1 is out of maintenance.
    let watcher = dev.client(&dev.info.endpoint).await?;
    // node1's records, until it has gone into maintenance and come out again.
    let events = tokio::spawn(async move {
        let seen = watcher
            .collect_events(
                Duration::from_secs(180),
                |ev| ev["kind"] == "nodes" && ev["name"] == "node1",
                |seen| {
                    seen.iter()
                        .any(|e| e["object"]["spec"]["maintenance"] == true)
                        && seen
                            .last()
                            .is_some_and(|e| e["object"]["spec"]["maintenance"] != true)
                },
            )
            .await?;
        anyhow::Ok(
            seen.into_iter()
                .map(|e| e["object"].clone())
                .collect::<Vec<Value>>(),
        )
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let a = api
        .call("POST", "/api/v1/upgrades", Some(json!({"bundle": sha})))
        .await?;
    assert_eq!(a.status, 201, "{}", a.body);
    let name = a.body["metadata"]["name"]
        .as_str()
        .context("name")?
        .to_string();
    assert_eq!(a.body["spec"]["nodes"], json!(["node1", "node2", "node3"]));
    assert_eq!(a.body["spec"]["tries"], 3);
    assert_eq!(a.body["spec"]["version"], "0.2.0-1");

    // Only one at a time.
    let a = api
        .call("POST", "/api/v1/upgrades", Some(json!({"bundle": sha})))
        .await?;
    if a.status != 409 {
        // The first may already have ended (it fails within a few rounds here).
        let list = upgrades(&api).await?;
        assert!(
            list[0]["status"]["phase"] == "failed",
            "second upgrade got {} {} while the first was {}",
            a.status,
            a.body,
            list[0]["status"]
        );
    } else {
        assert_eq!(a.body["error"]["code"], "upgrade_running", "{}", a.body);
        assert_eq!(upgrades(&api).await?.len(), 1);
    }

    let done = wait_until("the upgrade to end", Duration::from_secs(180), || async {
        let a = api
            .call("GET", &format!("/api/v1/upgrades/{name}"), None)
            .await?;
        let phase = a.body["status"]["phase"].as_str().unwrap_or("").to_string();
        Ok((phase == "failed" || phase == "succeeded").then_some(a.body))
    })
    .await?;
    let st = &done["status"];
    assert_eq!(st["phase"], "failed", "{st}");
    let msg = st["message"].as_str().unwrap_or("");
    assert!(msg.contains("node1") && msg.contains(NOT_IN_PLACE), "{msg}");
    assert_eq!(st["nodes"][0]["phase"], "failed", "{st}");
    assert!(
        st["nodes"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains(NOT_IN_PLACE),
        "{st}"
    );
    assert_eq!(st["nodes"][1]["phase"], "waiting", "node2 untouched: {st}");
    assert_eq!(st["nodes"][2]["phase"], "waiting", "node3 untouched: {st}");

    let seen = events.await??;
    assert!(
        seen.iter().any(|n| n["spec"]["maintenance"] == true),
        "node1 never went into maintenance: {seen:?}"
    );
    assert!(
        seen.last()
            .is_some_and(|n| n["spec"]["maintenance"] != true),
        "node1's last change left it in maintenance"
    );

    let node1 = wait_until(
        "node1 out of maintenance",
        Duration::from_secs(30),
        || async {
            let n = api.call("GET", "/api/v1/nodes/node1", None).await?;
            let out =
                n.body["spec"]["maintenance"] != true && n.body["status"]["maintenance"].is_null();
            Ok(out.then_some(n.body))
        },
    )
    .await?;
    assert_eq!(node1["spec"]["cordoned"], false, "{node1}");

    // The CLI: apply --wait exits non-zero with the message; -o json prints the record.
    let file = keys.join("good.bundle");
    std::fs::write(&file, &good)?;
    let out = dev.cli(&[
        "upgrade",
        "apply",
        file.to_str().context("path")?,
        "--wait",
        "-o",
        "json",
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "apply --wait succeeded:\n{stderr}");
    assert!(stderr.contains(NOT_IN_PLACE), "{stderr}");
    // --wait prints the changes it sees (it polls, so short phases may pass unseen).
    assert!(stderr.contains("node1: failed:"), "{stderr}");
    let record: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("stdout {:?}", String::from_utf8_lossy(&out.stdout)))?;
    assert_eq!(record["status"]["phase"], "failed");

    let out = dev.cli(&["upgrade", "status", "-o", "json"])?;
    let newest: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(newest["metadata"]["name"], record["metadata"]["name"]);
    let out = dev.cli(&["upgrade", "list"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().filter(|l| l.contains("failed")).count(),
        2,
        "{text}"
    );

    // An unreadable path is the CLI's own error; nothing is uploaded.
    let out = dev.cli(&["upgrade", "apply", "/nonexistent.bundle"])?;
    assert!(!out.status.success());
    Ok(())
}
