//! The image library on a real dev cluster: `keel image import` uploads in chunks and the
//! image becomes ready; a wrong checksum and an out-of-order chunk are refused with clear
//! errors; an interrupted upload resumes from what the node received.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use keel_tests::{wait_until, DevCluster};
use serde_json::{json, Value};

fn sha256_of(path: &std::path::Path) -> Result<String> {
    let out = Command::new("sha256sum").arg(path).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_upload_in_chunks_verify_and_resume() -> Result<()> {
    let dev = DevCluster::up("images", 2, "10.77.5.0/24", 18447)?;
    let api = dev.client(&dev.info.endpoint).await?;

    // The test guest's bootable disk, built from Debian packages.
    let disk = dev.guest_disk()?;

    // keel image import: create + chunked upload + wait.
    let disk_s = disk.to_string_lossy().to_string();
    let out = dev.cli(&["image", "import", &disk_s, "--name", "tiny", "--wait"])?;
    assert!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = api.call("GET", "/api/v1/images/tiny", None).await?;
    assert_eq!(image.status, 200, "{}", image.body);
    assert_eq!(image.body["status"]["phase"], "ready", "{}", image.body);
    assert_eq!(image.body["status"]["format"], "raw", "{}", image.body);
    assert_eq!(image.body["status"]["sha256"], sha256_of(&disk)?.as_str());
    let holder = image.body["status"]["node"]
        .as_str()
        .context("node")?
        .to_string();
    assert!(
        dev.state
            .join(format!("{holder}/state/pool/images/tiny"))
            .exists(),
        "stored on {holder}"
    );

    // A wrong checksum is refused and the bytes are discarded.
    let bytes = std::fs::read(&disk)?;
    let wrong = format!("sha256:{}", "0".repeat(64));
    let a = api
        .call(
            "POST",
            "/api/v1/images",
            Some(json!({"metadata": {"name": "bad"}, "spec": {"source": {"type": "upload"}, "checksum": wrong}})),
        )
        .await?;
    assert_eq!(a.status, 201, "{}", a.body);
    let up = api
        .octets("/api/v1/images/bad/content", bytes.clone(), None)
        .await?;
    assert_eq!(
        (up.status, up.body["error"]["code"].clone()),
        (400, json!("checksum_mismatch")),
        "{}",
        up.body
    );
    let bad = api.call("GET", "/api/v1/images/bad", None).await?;
    assert_ne!(bad.body["status"]["phase"], "ready");

    // A chunked upload interrupted halfway resumes from what the node received.
    let sum = sha256_of(&disk)?;
    let a = api
        .call(
            "POST",
            "/api/v1/images",
            Some(json!({"metadata": {"name": "resumed"}, "spec": {"source": {"type": "upload"}, "checksum": format!("sha256:{sum}")}})),
        )
        .await?;
    assert_eq!(a.status, 201, "{}", a.body);
    let total = bytes.len();
    let half = total / 2;
    let first = api
        .octets(
            "/api/v1/images/resumed/content",
            bytes[..half].to_vec(),
            Some(format!("bytes 0-{}/{total}", half - 1)),
        )
        .await?;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["complete"], false);
    // Out of order: refused, and nothing is appended.
    let skip = api
        .octets(
            "/api/v1/images/resumed/content",
            bytes[half + 1..].to_vec(),
            Some(format!("bytes {}-{}/{total}", half + 1, total - 1)),
        )
        .await?;
    assert_eq!(
        (skip.status, skip.body["error"]["code"].clone()),
        (409, json!("range_mismatch")),
        "{}",
        skip.body
    );
    let progress = api
        .call("GET", "/api/v1/images/resumed/content", None)
        .await?;
    assert_eq!(progress.body["received"], json!(half), "{}", progress.body);
    let rest = api
        .octets(
            "/api/v1/images/resumed/content",
            bytes[half..].to_vec(),
            Some(format!("bytes {half}-{}/{total}", total - 1)),
        )
        .await?;
    assert_eq!(rest.status, 200, "{}", rest.body);
    assert_eq!(rest.body["complete"], true, "{}", rest.body);
    wait_until(
        "the resumed image to be ready",
        Duration::from_secs(10),
        || {
            let api = api.clone();
            async move {
                let a = api.call("GET", "/api/v1/images/resumed", None).await?;
                Ok((a.body["status"]["phase"] == "ready").then_some(()))
            }
        },
    )
    .await?;

    // Listing and deleting.
    let list = api.call("GET", "/api/v1/images", None).await?;
    let names: Vec<Value> = list.body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|i| i["metadata"]["name"].clone())
        .collect();
    assert!(
        names.contains(&json!("tiny")) && names.contains(&json!("resumed")),
        "{names:?}"
    );
    let del = api.call("DELETE", "/api/v1/images/resumed", None).await?;
    assert_eq!(del.status, 204);
    let gone = api.call("GET", "/api/v1/images/resumed", None).await?;
    assert_eq!(gone.status, 404);
    let missing = api
        .octets("/api/v1/images/nosuch/content", vec![1, 2, 3], None)
        .await?;
    assert_eq!(missing.status, 404);
    Ok(())
}
