//! Shared helpers for the integration tests: a dev cluster driven through the `keel` binary,
//! and an HTTPS client of the API that trusts the cluster CA.
//!
//! These tests need root (they create network and mount namespaces) and the `keel` and `keeld`
//! binaries built (`make test` builds them first).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

/// Directory of the built binaries.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("KEEL_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug")
}

/// The `keel` binary.
pub fn keel_bin() -> PathBuf {
    bin_dir().join("keel")
}

/// Runs `keel ARGS`, returns stdout; fails with stderr on a non-zero exit.
pub fn keel(args: &[&str]) -> Result<String> {
    let out = Command::new(keel_bin())
        .args(args)
        .output()
        .with_context(|| {
            format!(
                "running {} (build it with `cargo build --bins`)",
                keel_bin().display()
            )
        })?;
    if !out.status.success() {
        bail!(
            "keel {} failed ({}):\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// One node as `keel dev up` reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct DevNode {
    /// Node name.
    pub name: String,
    /// Management address.
    pub address: String,
    /// API URL.
    pub api: String,
}

/// What `keel dev up` prints.
#[derive(Debug, Clone, Deserialize)]
pub struct DevInfo {
    /// Forwarded endpoint on the host.
    pub endpoint: String,
    /// The nodes.
    pub nodes: Vec<DevNode>,
    /// Admin user.
    pub username: String,
    /// Admin password.
    pub password: String,
    /// CA certificate path.
    pub ca_cert: String,
}

/// A dev cluster that is torn down when dropped.
pub struct DevCluster {
    /// State directory.
    pub state: PathBuf,
    /// What `up` printed.
    pub info: DevInfo,
    /// How long `up` took.
    pub formed_in: Duration,
}

impl DevCluster {
    /// `keel dev up` with its own state dir, subnet and forward port, so tests do not collide.
    pub fn up(tag: &str, nodes: u32, subnet: &str, forward_port: u16) -> Result<Self> {
        if !is_root() {
            bail!("dev-cluster tests need root (network and mount namespaces); run `make test` as root");
        }
        let state = std::env::temp_dir().join(format!("keel-test-{tag}"));
        let state_s = state.to_string_lossy().to_string();
        let _ = keel(&["dev", "down", "--state", &state_s]);
        let _ = std::fs::remove_dir_all(&state);
        let started = Instant::now();
        let out = keel(&[
            "dev",
            "up",
            "--nodes",
            &nodes.to_string(),
            "--state",
            &state_s,
            "--subnet",
            subnet,
            "--forward",
            &format!("127.0.0.1:{forward_port}"),
        ])?;
        let formed_in = started.elapsed();
        let info: DevInfo =
            serde_json::from_str(out.trim()).with_context(|| format!("dev up printed {out:?}"))?;
        Ok(Self {
            state,
            info,
            formed_in,
        })
    }

    /// `keel dev ARGS --state <this cluster>`.
    pub fn dev(&self, args: &[&str]) -> Result<String> {
        let state = self.state.to_string_lossy().to_string();
        let mut all: Vec<&str> = vec!["dev"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--state", &state]);
        keel(&all)
    }

    /// A logged-in API client for `endpoint`.
    pub async fn client(&self, endpoint: &str) -> Result<Api> {
        let api = Api::new(endpoint, &self.info.ca_cert)?;
        api.login(&self.info.username, &self.info.password).await
    }

    /// Runs `keel ARGS` as a client of this cluster (endpoint, CA and admin credentials in
    /// the environment).
    pub fn cli(&self, args: &[&str]) -> Result<std::process::Output> {
        Ok(Command::new(keel_bin())
            .args(args)
            .env("KEEL_ENDPOINT", &self.info.endpoint)
            .env("KEEL_CA_CERT", &self.info.ca_cert)
            .env("KEEL_USERNAME", &self.info.username)
            .env("KEEL_PASSWORD", &self.info.password)
            .output()?)
    }

    /// Builds the tiny test guest (tests/guest/build.sh) under the state dir; returns its
    /// bootable disk image.
    pub fn guest_disk(&self) -> Result<PathBuf> {
        let guest = self.state.join("guest");
        let built = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/guest/build.sh"))
            .arg(&guest)
            .status()?;
        anyhow::ensure!(built.success(), "tests/guest/build.sh failed");
        Ok(guest.join("disk.raw"))
    }

    /// Runs `cmd` inside node `node`'s namespaces (`keel dev exec`); its stdout.
    pub fn exec(&self, node: &str, cmd: &[&str]) -> Result<String> {
        let state = self.state.to_string_lossy().to_string();
        let mut all = vec!["dev", "--state", &state, "exec", node, "--"];
        all.extend_from_slice(cmd);
        keel(&all)
    }

    /// `virsh -c qemu:///system ARGS` against node `node`'s own libvirt.
    pub fn virsh(&self, node: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["virsh", "-c", "qemu:///system"];
        all.extend_from_slice(args);
        self.exec(node, &all)
    }

    /// The names of every domain (running or not) in node `node`'s libvirt.
    pub fn domains(&self, node: &str) -> Result<Vec<String>> {
        Ok(self
            .virsh(node, &["list", "--all", "--name"])?
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// The counters the test guest printed (`keel-guest counter N`), from VM `vm`'s serial
    /// log on node `node`; empty when there is no log (yet).
    pub fn serial_counters(&self, node: &str, vm: &str) -> Vec<u64> {
        let log = self
            .exec(
                node,
                &["cat", &format!("/var/log/libvirt/qemu/{vm}-serial.log")],
            )
            .unwrap_or_default();
        guest_counters(&log)
    }

    /// Builds the test guest and imports its disk as image `name` through the CLI (upload,
    /// `--wait` until ready).
    pub fn import_guest_image(&self, name: &str) -> Result<()> {
        let disk = self.guest_disk()?;
        let disk = disk.to_string_lossy().to_string();
        ok(
            self.cli(&["image", "import", &disk, "--name", name, "--wait"])?,
            &format!("keel image import {name}"),
        )?;
        Ok(())
    }

    /// The API URL of node `name`.
    pub fn api_of(&self, name: &str) -> Result<String> {
        self.info
            .nodes
            .iter()
            .find(|n| n.name == name)
            .map(|n| n.api.clone())
            .with_context(|| format!("no node {name}"))
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        let _ = self.dev(&["down"]);
    }
}

/// The numbers of the test guest's `keel-guest counter N` lines in `text`, in order.
pub fn guest_counters(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.split("keel-guest counter ").nth(1))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// The stdout of a finished command, or an error naming `what` with its stdout and stderr.
pub fn ok(out: std::process::Output, what: &str) -> Result<String> {
    anyhow::ensure!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// True when running as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A small API client.
#[derive(Clone)]
pub struct Api {
    /// Base URL.
    pub base: String,
    http: reqwest::Client,
    /// Bearer token, once logged in.
    pub token: Option<String>,
}

/// Status and JSON body of a response.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body (Null when empty or not JSON).
    pub body: Value,
    /// Retry-After header, if any.
    pub retry_after: Option<String>,
}

impl Api {
    /// A client trusting the CA at `ca_path`.
    pub fn new(base: &str, ca_path: &str) -> Result<Self> {
        let pem = std::fs::read(ca_path).with_context(|| format!("reading {ca_path}"))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(c?)?;
        }
        let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        // HTTP/2 lets the server refuse an oversized body with a 413 on the stream instead of
        // resetting the whole connection under a client that is still sending.
        let mut cfg = cfg;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(cfg)
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            http,
            token: None,
        })
    }

    /// Logs in and returns a client carrying the token.
    pub async fn login(mut self, user: &str, password: &str) -> Result<Self> {
        let a = self
            .call(
                "POST",
                "/api/v1/auth/login",
                Some(serde_json::json!({"username": user, "password": password})),
            )
            .await?;
        if a.status != 200 {
            bail!("login failed: {} {}", a.status, a.body);
        }
        self.token = a.body["token"].as_str().map(str::to_string);
        Ok(self)
    }

    /// Sends a request with an optional JSON body.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Answer> {
        self.raw(method, path, body.map(|b| b.to_string()), &[])
            .await
    }

    /// Sends a request with a raw body and extra headers.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        headers: &[(&str, &str)],
    ) -> Result<Answer> {
        let m = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self.http.request(m, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Answer {
            status,
            body,
            retry_after,
        })
    }

    /// Reads the server-sent event stream at `path` until its text contains `needle`.
    pub async fn events_until(
        &self,
        path: &str,
        needle: &str,
        deadline: Duration,
    ) -> Result<String> {
        let mut req = self
            .http
            .get(format!("{}{}", self.base, path))
            .timeout(deadline);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let mut resp = req.send().await?;
        anyhow::ensure!(resp.status().as_u16() == 200, "events: {}", resp.status());
        let mut text = String::new();
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            match tokio::time::timeout(end - Instant::now(), resp.chunk()).await {
                Ok(Ok(Some(chunk))) => {
                    text.push_str(&String::from_utf8_lossy(&chunk));
                    if text.contains(needle) {
                        return Ok(text);
                    }
                }
                Ok(Ok(None)) => break,
                Ok(Err(e)) => bail!("event stream broke: {e}"),
                Err(_) => break,
            }
        }
        bail!("{needle:?} did not appear in the event stream within {deadline:?}: {text}")
    }

    /// Collects the events of `GET /api/v1/events` that `keep` selects (it gets each event's
    /// JSON: `revision`, `kind`, `name`, `object`) until `done` holds for them or `deadline`
    /// passes; a dropped stream is resumed from the last revision seen.
    pub async fn collect_events(
        &self,
        deadline: Duration,
        keep: impl Fn(&Value) -> bool,
        done: impl Fn(&[Value]) -> bool,
    ) -> Result<Vec<Value>> {
        let end = Instant::now() + deadline;
        let mut since: Option<u64> = None;
        let mut seen: Vec<Value> = Vec::new();
        while Instant::now() < end && !done(&seen) {
            let path = match since {
                Some(r) => format!("/api/v1/events?since={r}"),
                None => "/api/v1/events".to_string(),
            };
            let mut req = self
                .http
                .get(format!("{}{path}", self.base))
                .timeout(end.saturating_duration_since(Instant::now()));
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            let Ok(mut resp) = req.send().await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let mut buf = String::new();
            while let Ok(Ok(Some(chunk))) =
                tokio::time::timeout(end.saturating_duration_since(Instant::now()), resp.chunk())
                    .await
            {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(i) = buf.find("\n\n") {
                    let frame: String = buf.drain(..i + 2).collect();
                    for data in frame.lines().filter_map(|l| l.strip_prefix("data:")) {
                        let Ok(ev) = serde_json::from_str::<Value>(data.trim()) else {
                            continue;
                        };
                        since = ev["revision"].as_u64().or(since);
                        if keep(&ev) {
                            seen.push(ev);
                        }
                    }
                }
                if done(&seen) {
                    break;
                }
            }
        }
        Ok(seen)
    }

    /// PUTs raw bytes (an image chunk) with an optional Content-Range.
    pub async fn octets(&self, path: &str, body: Vec<u8>, range: Option<String>) -> Result<Answer> {
        let mut req = self
            .http
            .put(format!("{}{}", self.base, path))
            .header("content-type", "application/octet-stream")
            .body(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(r) = range {
            req = req.header("content-range", r);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok(Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            retry_after: None,
        })
    }

    /// PUT a setting; returns the answer.
    pub async fn put_setting(&self, key: &str, value: Value) -> Result<Answer> {
        self.call(
            "PUT",
            &format!("/api/v1/settings/{key}"),
            Some(serde_json::json!({ "value": value })),
        )
        .await
    }
}

/// Polls `f` until it returns `Ok(Some(t))` or the deadline passes.
pub async fn wait_until<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let end = Instant::now() + deadline;
    let mut last;
    loop {
        match f().await {
            Ok(Some(t)) => return Ok(t),
            Ok(None) => last = "not yet".into(),
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > end {
            bail!("timed out after {deadline:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Pids of live processes whose command line contains `needle`, this process excluded.
pub fn pids_with_cmdline(needle: &str) -> Vec<i32> {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = dir
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let pid: i32 = name.parse().ok()?;
            if name == me || !pid_alive(pid) {
                return None;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(needle).then_some(pid)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// True when `pid` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// Mount points of this process's mount namespace at or under `dir`.
pub fn mounts_under(dir: &std::path::Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| *p == prefix || p.starts_with(&format!("{prefix}/")))
        .map(str::to_string)
        .collect()
}
