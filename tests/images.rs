//! The image library on a real dev cluster: `keel image import` uploads in chunks and the
//! image becomes ready; a wrong checksum and an out-of-order chunk are refused with clear
//! errors; an interrupted upload resumes from what the node received. Then imports by the
//! nodes themselves: from a URL served by a small HTTP server on the host's bridge address
//! (a dropped connection resumes with a Range request; a wrong checksum fails and stores
//! nothing), from a file on a node's host (a vmdk, converted to qcow2), an image with a
//! backing file is refused, bad sources get a 400 naming the field, and a VM boots from a
//! URL-imported image.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use keel_tests::{wait_until, Api, DevCluster};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

    imports_by_nodes(&dev, &api, &disk).await
}

/// What the test HTTP server serves and saw.
#[derive(Default)]
struct Served {
    /// Path → bytes.
    files: HashMap<String, Vec<u8>>,
    /// Paths whose first full GET sends half the body and closes the connection.
    drop_once: Vec<String>,
    /// (path, Range header) of every request.
    seen: Vec<(String, Option<String>)>,
    /// Paths sent slowly (64 KiB every 50 ms), so a node can be stopped mid-download.
    slow: Vec<String>,
}

/// A tiny HTTP/1.1 server (one request per connection) that honours `Range: bytes=N-`.
async fn serve(listener: tokio::net::TcpListener, state: Arc<Mutex<Served>>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            return;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&head).to_string();
            let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
            let range = text.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("range")
                    .then(|| v.trim().to_string())
            });
            let (body, drop_now, slow) = {
                let mut st = state.lock().unwrap();
                st.seen.push((path.clone(), range.clone()));
                let slow = st.slow.contains(&path);
                let body = st.files.get(&path).cloned();
                let drop_now = range.is_none() && st.drop_once.contains(&path);
                if drop_now {
                    st.drop_once.retain(|p| p != &path);
                }
                (body, drop_now, slow)
            };
            let Some(body) = body else {
                let _ = conn
                    .write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .await;
                return;
            };
            let len = body.len();
            let start = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse::<usize>().ok());
            let (head, from) = match start {
                Some(s) if s < len => (
                    format!("HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {s}-{}/{len}\r\nConnection: close\r\n\r\n", len - s, len - 1),
                    s,
                ),
                Some(_) => (
                    format!("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
                    len,
                ),
                None => (
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"),
                    0,
                ),
            };
            if conn.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let until = if drop_now { len / 2 } else { len };
            if slow {
                for piece in body[from..until.max(from)].chunks(64 << 10) {
                    if conn.write_all(piece).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            } else {
                let _ = conn.write_all(&body[from..until.max(from)]).await;
            }
            let _ = conn.shutdown().await;
        });
    }
}

fn qemu_img(args: &[&str]) -> Result<()> {
    let out = Command::new("qemu-img").args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

async fn image_when(api: &Api, name: &str, phases: &[&str]) -> Result<Value> {
    wait_until(
        &format!("image {name} to be {phases:?}"),
        Duration::from_secs(180),
        || {
            let api = api.clone();
            async move {
                let a = api
                    .call("GET", &format!("/api/v1/images/{name}"), None)
                    .await?;
                let phase = a.body["status"]["phase"].as_str().unwrap_or("");
                Ok(phases.contains(&phase).then_some(a.body))
            }
        },
    )
    .await
}

fn node_exec(dev: &DevCluster, node: &str, args: &[&str]) -> Result<String> {
    let state = dev.state.to_string_lossy().to_string();
    let mut all = vec!["dev", "--state", &state, "exec", node, "--"];
    all.extend_from_slice(args);
    keel_tests::keel(&all)
}

/// URL and host-file imports, conversion, guards, bad input, and a VM from a URL image.
async fn imports_by_nodes(dev: &DevCluster, api: &Api, disk: &Path) -> Result<()> {
    // Images to serve, made with qemu-img.
    let work = dev.state.join("import");
    std::fs::create_dir_all(&work)?;
    let qcow2 = work.join("tiny.qcow2");
    let (disk_s, qcow2_s) = (
        disk.to_string_lossy().to_string(),
        qcow2.to_string_lossy().to_string(),
    );
    qemu_img(&["convert", "-O", "qcow2", &disk_s, &qcow2_s])?;
    let vmdk = work.join("tiny.vmdk");
    let vmdk_s = vmdk.to_string_lossy().to_string();
    qemu_img(&["convert", "-O", "vmdk", &qcow2_s, &vmdk_s])?;
    // A qcow2 overlay whose backing file is a host path (created without opening it).
    let backed = work.join("backed.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-F",
        "raw",
        "-b",
        "/etc/shadow",
        &backed.to_string_lossy(),
        "1M",
    ])?;
    let qcow2_bytes = std::fs::read(&qcow2)?;
    let qcow2_sum = sha256_of(&qcow2)?;

    // The server listens on the host's address on the dev bridge (the nodes' gateway, .1).
    let listener = tokio::net::TcpListener::bind("10.77.5.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let served = Arc::new(Mutex::new(Served::default()));
    {
        let mut st = served.lock().unwrap();
        st.files.insert("/tiny.qcow2".into(), qcow2_bytes.clone());
        st.files.insert("/flaky.qcow2".into(), qcow2_bytes.clone());
        st.files
            .insert("/backed.qcow2".into(), std::fs::read(&backed)?);
        st.drop_once.push("/flaky.qcow2".into());
        st.files.insert("/slow.qcow2".into(), qcow2_bytes.clone());
        st.slow.push("/slow.qcow2".into());
    }
    tokio::spawn(serve(listener, served.clone()));

    // keel image import --url … --sha256 … --wait: ready, right checksum and format.
    let url = format!("{base}/tiny.qcow2");
    let out = dev.cli(&[
        "image", "import", "--url", &url, "--name", "fromurl", "--sha256", &qcow2_sum, "--wait",
        "-o", "json",
    ])?;
    assert!(
        out.status.success(),
        "url import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stdout).to_string())?;
    assert_eq!(shown["status"]["phase"], "ready", "{shown}");
    assert_eq!(shown["status"]["format"], "qcow2", "{shown}");
    assert_eq!(shown["status"]["sha256"], qcow2_sum.as_str(), "{shown}");
    assert_eq!(
        shown["status"]["size_bytes"],
        json!(qcow2_bytes.len()),
        "{shown}"
    );
    let holder = shown["status"]["node"]
        .as_str()
        .context("node")?
        .to_string();
    let stored = dev
        .state
        .join(format!("{holder}/state/pool/images/fromurl"));
    assert_eq!(sha256_of(&stored)?, qcow2_sum, "the stored file");
    // The source files go right after the store says ready.
    let uploads = dev.state.join(format!("{holder}/state/pool/uploads"));
    wait_until("nothing left in uploads/", Duration::from_secs(10), || {
        let uploads = uploads.clone();
        async move {
            let left: Vec<String> = std::fs::read_dir(&uploads)?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with("fromurl"))
                .collect();
            Ok(left.is_empty().then_some(()))
        }
    })
    .await?;

    // A connection dropped halfway resumes with a Range request, and the result is right.
    let a = api
        .call(
            "POST",
            "/api/v1/images",
            Some(
                json!({"metadata": {"name": "flaky"}, "spec": {"source": {"type": "url",
                "url": format!("{base}/flaky.qcow2"), "node": "node2"},
                "checksum": format!("sha256:{qcow2_sum}")}}),
            ),
        )
        .await?;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["status"]["node"], "node2", "{}", a.body);
    let flaky = image_when(api, "flaky", &["ready", "failed"]).await?;
    assert_eq!(flaky["status"]["phase"], "ready", "{flaky}");
    assert_eq!(flaky["status"]["sha256"], qcow2_sum.as_str(), "{flaky}");
    let seen: Vec<(String, Option<String>)> = served
        .lock()
        .unwrap()
        .seen
        .iter()
        .filter(|(p, _)| p == "/flaky.qcow2")
        .cloned()
        .collect();
    let half = qcow2_bytes.len() / 2;
    assert!(
        seen.iter()
            .any(|(_, r)| r.as_deref() == Some(&format!("bytes={half}-"))),
        "the resume asked for the rest from byte {half}: {seen:?}"
    );
    eprintln!("images: dropped download resumed: {seen:?}");
    assert_eq!(
        sha256_of(&dev.state.join("node2/state/pool/images/flaky"))?,
        qcow2_sum
    );

    // A wrong checksum: failed with a clear message, and nothing stored.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let a = api
        .call(
            "POST",
            "/api/v1/images",
            Some(
                json!({"metadata": {"name": "wrongsum"}, "spec": {"source": {"type": "url",
                "url": url}, "checksum": wrong}}),
            ),
        )
        .await?;
    assert_eq!(a.status, 201, "{}", a.body);
    let w = image_when(api, "wrongsum", &["ready", "failed"]).await?;
    assert_eq!(w["status"]["phase"], "failed", "{w}");
    let msg = w["status"]["message"].as_str().unwrap_or("");
    assert!(
        msg.contains(&qcow2_sum) && msg.contains("nothing was stored"),
        "{msg}"
    );
    let wnode = w["status"]["node"].as_str().context("node")?.to_string();
    assert!(!dev
        .state
        .join(format!("{wnode}/state/pool/images/wrongsum"))
        .exists());
    assert!(!dev
        .state
        .join(format!("{wnode}/state/pool/uploads/wrongsum.part"))
        .exists());
    let out = dev.cli(&[
        "image",
        "import",
        "--url",
        &url,
        "--name",
        "wrongsum2",
        "--sha256",
        &"1".repeat(64),
        "--wait",
    ])?;
    assert!(!out.status.success(), "a wrong --sha256 must fail --wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("failed") && err.contains("sha256"), "{err}");

    // A vmdk in a file on node2's host: copied, converted to qcow2, the original removed.
    let out = dev.cli(&[
        "image",
        "import",
        "--node",
        "node2",
        "--host-path",
        &vmdk_s,
        "--name",
        "fromvmdk",
        "--wait",
        "-o",
        "json",
    ])?;
    assert!(
        out.status.success(),
        "file import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["status"]["phase"], "ready", "{v}");
    assert_eq!(v["status"]["format"], "qcow2", "{v}");
    assert_eq!(v["status"]["node"], "node2", "{v}");
    assert_eq!(v["status"]["sha256"], sha256_of(&vmdk)?.as_str(), "{v}");
    let stored = dev.state.join("node2/state/pool/images/fromvmdk");
    let info = Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(&stored)
        .output()?;
    let info: Value = serde_json::from_slice(&info.stdout)?;
    assert_eq!(info["format"], "qcow2", "{info}");
    assert_eq!(v["status"]["file_sha256"], sha256_of(&stored)?.as_str());
    let uploads = dev.state.join("node2/state/pool/uploads");
    wait_until(
        "the original to be removed",
        Duration::from_secs(10),
        || {
            let uploads = uploads.clone();
            async move {
                let left: Vec<String> = std::fs::read_dir(&uploads)?
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.starts_with("fromvmdk"))
                    .collect();
                Ok(left.is_empty().then_some(()))
            }
        },
    )
    .await?;
    assert!(vmdk.exists(), "the source file on the host is left alone");

    // A file that is not there fails with a message naming it.
    let a = api
        .call(
            "POST",
            "/api/v1/images",
            Some(
                json!({"metadata": {"name": "nofile"}, "spec": {"source": {"type": "file",
                "path": "/nonexistent/x.qcow2", "node": "node1"}}}),
            ),
        )
        .await?;
    assert_eq!(a.status, 201, "{}", a.body);
    let nf = image_when(api, "nofile", &["ready", "failed"]).await?;
    assert_eq!(nf["status"]["phase"], "failed", "{nf}");
    assert!(
        nf["status"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("/nonexistent/x.qcow2 does not exist on node node1"),
        "{nf}"
    );

    // A qcow2 whose backing file is a host path is refused, even when declared raw.
    let a = api
        .call(
            "POST",
            "/api/v1/images",
            Some(
                json!({"metadata": {"name": "backed"}, "spec": {"source": {"type": "url",
                "url": format!("{base}/backed.qcow2")}, "format": "raw"}}),
            ),
        )
        .await?;
    assert_eq!(a.status, 201, "{}", a.body);
    let b = image_when(api, "backed", &["ready", "failed"]).await?;
    assert_eq!(b["status"]["phase"], "failed", "{b}");
    let msg = b["status"]["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("backing file") && msg.contains("/etc/shadow"),
        "{msg}"
    );
    let bnode = b["status"]["node"].as_str().context("node")?.to_string();
    assert!(!dev
        .state
        .join(format!("{bnode}/state/pool/images/backed"))
        .exists());

    // A missing URL: 404 from the server, failed with the status.
    let a = api
        .call(
            "POST",
            "/api/v1/images",
            Some(
                json!({"metadata": {"name": "nourl"}, "spec": {"source": {"type": "url",
                "url": format!("{base}/nosuch.qcow2")}}}),
            ),
        )
        .await?;
    assert_eq!(a.status, 201, "{}", a.body);
    let n = image_when(api, "nourl", &["ready", "failed"]).await?;
    assert!(
        n["status"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("404"),
        "{n}"
    );

    // Bad sources: 400 naming the field, and nothing is created.
    for (source, field) in [
        (json!({"type": "ftp", "url": "ftp://h/x"}), "spec.source"),
        (
            json!({"type": "file", "path": "relative.img"}),
            "spec.source.path",
        ),
        (
            json!({"type": "file", "path": "/a/../etc/shadow"}),
            "spec.source.path",
        ),
        (
            json!({"type": "url", "url": "ftp://h/x.qcow2"}),
            "spec.source.url",
        ),
        (
            json!({"type": "file", "path": "/x.img", "node": "node9"}),
            "spec.source.node",
        ),
    ] {
        let a = api
            .call(
                "POST",
                "/api/v1/images",
                Some(json!({"metadata": {"name": "badsrc"}, "spec": {"source": source}})),
            )
            .await?;
        assert_eq!(a.status, 400, "{source}: {}", a.body);
        let f = a.body["error"]["field"].as_str().unwrap_or("");
        assert!(f.starts_with(field), "{source}: field {f:?}, want {field}");
    }
    let gone = api.call("GET", "/api/v1/images/badsrc", None).await?;
    assert_eq!(gone.status, 404, "{}", gone.body);
    let out = dev.cli(&[
        "image",
        "import",
        "--host-path",
        "rel.img",
        "--name",
        "badsrc",
    ])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("absolute"));

    // A VM boots from the URL-imported image (its disk is a thin copy of it).
    let out = dev.cli(&[
        "vm", "create", "urlvm", "--image", "fromurl", "--cpus", "1", "--memory", "128MiB",
        "--wait",
    ])?;
    assert!(
        out.status.success(),
        "vm create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vm = api.call("GET", "/api/v1/vms/urlvm", None).await?;
    let node = vm.body["status"]["node"]
        .as_str()
        .context("vm node")?
        .to_string();
    wait_until("the guest counts", Duration::from_secs(120), || {
        let node = node.clone();
        async move {
            let log = node_exec(
                dev,
                &node,
                &["cat", "/var/log/libvirt/qemu/urlvm-serial.log"],
            )
            .unwrap_or_default();
            Ok(log.contains("keel-guest counter 2").then_some(()))
        }
    })
    .await?;
    let del = dev.cli(&["vm", "delete", "urlvm", "--wait"])?;
    assert!(
        del.status.success(),
        "{}",
        String::from_utf8_lossy(&del.stderr)
    );

    // keeld stopped mid-download: once it is back, the download resumes where the part
    // file ends (a Range request), and the image is right.
    let a = api
        .call(
            "POST",
            "/api/v1/images",
            Some(
                json!({"metadata": {"name": "slow"}, "spec": {"source": {"type": "url",
                "url": format!("{base}/slow.qcow2"), "node": "node2"},
                "checksum": format!("sha256:{qcow2_sum}")}}),
            ),
        )
        .await?;
    assert_eq!(a.status, 201, "{}", a.body);
    let part = dev.state.join("node2/state/pool/uploads/slow.part");
    wait_until("part of the slow download", Duration::from_secs(60), || {
        let part = part.clone();
        async move {
            let n = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
            Ok((n > 1 << 20).then_some(()))
        }
    })
    .await?;
    dev.dev(&["stop", "node2"])?;
    let kept = std::fs::metadata(&part)?.len();
    assert!(kept > 0 && kept < qcow2_bytes.len() as u64, "{kept}");
    dev.dev(&["start", "node2"])?;
    let slow = image_when(api, "slow", &["ready", "failed"]).await?;
    assert_eq!(slow["status"]["phase"], "ready", "{slow}");
    assert_eq!(slow["status"]["sha256"], qcow2_sum.as_str(), "{slow}");
    let seen: Vec<Option<String>> = served
        .lock()
        .unwrap()
        .seen
        .iter()
        .filter(|(p, _)| p == "/slow.qcow2")
        .map(|(_, r)| r.clone())
        .collect();
    let resumed_at: Vec<u64> = seen
        .iter()
        .flatten()
        .filter_map(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .collect();
    assert!(
        resumed_at.iter().any(|&n| n >= kept),
        "after the restart the download resumed at or after byte {kept}: {seen:?}"
    );
    eprintln!(
        "images: download resumed after a keeld restart: kept {kept} bytes, requests {seen:?}"
    );
    assert_eq!(
        sha256_of(&dev.state.join("node2/state/pool/images/slow"))?,
        qcow2_sum
    );
    Ok(())
}
