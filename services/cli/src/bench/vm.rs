//! `keel bench vm`: the VM targets of issue 3 on a fresh dev cluster with real libvirt.
//!
//! ```text
//!  side by side on one node, `runs` times:
//!    API:   POST /vms (pinned to the node) ─▶ poll GET /vms/{n} until phase running
//!    virsh: the same domain XML (dumped from the API's VM, renamed, its own overlay disk)
//!           ─▶ `virsh create` inside the node's namespaces, timed there
//!  then `count` VMs created concurrently (spread by the scheduler): all must reach running,
//!  none lost; keeld's RSS on every node before and after gives the growth per VM.
//! ```

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use keel_model::{Name, Vm, VmPhase};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::json;

use super::stats::percentile;
use crate::cli::{BenchVmArgs, UpArgs};
use crate::client::ApiClient;
use crate::commands::image::import_quietly;
use crate::commands::Items;
use crate::dev::ops::{self, DevInfo};
use crate::output::{self, Table};

/// API create → running may take at most this multiple of `virsh create`.
const RATIO_TARGET: f64 = 2.0;
/// keeld may grow at most this much per VM.
const RSS_PER_VM_TARGET: u64 = 1024 * 1024;
/// The image every benchmark VM boots.
const IMAGE: &str = "bench-guest";
/// How often the API is polled while waiting.
const POLL: Duration = Duration::from_millis(20);

/// One side-by-side run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pair {
    /// API create → phase running, seconds.
    pub api_s: f64,
    /// `virsh create` of the same domain XML, seconds.
    pub virsh_s: f64,
}

/// keeld memory of one node around the concurrent pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeGrowth {
    /// Node.
    pub node: String,
    /// VMs it ended up running.
    pub vms: usize,
    /// keeld RSS before the pass.
    pub rss_before_bytes: Option<u64>,
    /// keeld RSS with every VM running.
    pub rss_after_bytes: Option<u64>,
}

/// The report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmReport {
    /// The node of the side-by-side runs.
    pub node: String,
    /// Each run.
    pub pairs: Vec<Pair>,
    /// Median API create → running, seconds.
    pub api_median_s: f64,
    /// Median `virsh create`, seconds.
    pub virsh_median_s: f64,
    /// `api_median_s / virsh_median_s`.
    pub ratio: f64,
    /// VMs created at once.
    pub concurrent: usize,
    /// How many of them reached running.
    pub concurrent_running: usize,
    /// How many ended lost or failed (or vanished).
    pub concurrent_lost: usize,
    /// First create request to the last VM running, seconds.
    pub concurrent_s: f64,
    /// keeld memory per node.
    pub memory: Vec<NodeGrowth>,
    /// Summed keeld growth over all nodes divided by the VMs, bytes.
    pub rss_growth_per_vm_bytes: i64,
}

/// `keel bench vm`.
pub async fn run(args: &BenchVmArgs) -> anyhow::Result<VmReport> {
    if !args.image.is_file() {
        bail!(
            "the guest image {} does not exist; build it with `tests/guest/build.sh target/guest` or pass --image",
            args.image.display()
        );
    }
    let up = UpArgs {
        nodes: args.nodes,
        subnet: args.subnet,
        forward: args.forward,
        keeld: args.keeld.clone(),
        timeout: 90,
    };
    let info = ops::up_with(&args.state, &up, false)
        .await
        .context("bringing up the benchmark's dev cluster")?;
    let measured = measure(args, &info).await;
    let down = ops::down(&args.state);
    match (measured, down) {
        (Ok(r), Ok(())) => Ok(r),
        (Err(e), Ok(())) => Err(e),
        (Ok(_), Err(d)) => Err(d.context("tearing down the benchmark's dev cluster")),
        (Err(e), Err(d)) => Err(e.context(format!("and tearing down failed: {d:#}"))),
    }
}

async fn measure(args: &BenchVmArgs, info: &DevInfo) -> anyhow::Result<VmReport> {
    let mut client = ApiClient::new(&info.endpoint, Some(&info.ca_cert))?;
    client
        .login(&info.username, &info.password)
        .await
        .context("logging in")?;
    let image = Name::new(IMAGE)?;
    import_quietly(&client, &image, &args.image, Duration::from_secs(300))
        .await
        .context("importing the guest image")?;
    let node = info
        .nodes
        .first()
        .map(|n| n.name.clone())
        .ok_or_else(|| anyhow!("the dev cluster has no nodes"))?;
    let work = args.state.join("bench-vm");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let mut pairs = Vec::new();
    for i in 0..args.runs {
        pairs.push(side_by_side(args, &client, &node, &work, i).await?);
    }
    let api: Vec<Duration> = pairs
        .iter()
        .map(|p| Duration::from_secs_f64(p.api_s))
        .collect();
    let virsh: Vec<Duration> = pairs
        .iter()
        .map(|p| Duration::from_secs_f64(p.virsh_s))
        .collect();
    let api_median = median(api);
    let virsh_median = median(virsh);

    let before = rss_by_node(&args.state)?;
    let (concurrent_s, vms) = concurrent(args, &client).await?;
    let after = rss_by_node(&args.state)?;
    let running = vms
        .iter()
        .filter(|v| v.status.phase == VmPhase::Running)
        .count();
    let lost = vms
        .iter()
        .filter(|v| matches!(v.status.phase, VmPhase::Lost | VmPhase::Failed))
        .count()
        + (args.count as usize).saturating_sub(vms.len());
    let memory: Vec<NodeGrowth> = before
        .iter()
        .map(|(n, b)| NodeGrowth {
            node: n.clone(),
            vms: vms
                .iter()
                .filter(|v| v.status.node.as_deref() == Some(n.as_str()))
                .count(),
            rss_before_bytes: *b,
            rss_after_bytes: after.iter().find(|(a, _)| a == n).and_then(|(_, r)| *r),
        })
        .collect();
    let growth: i64 = memory
        .iter()
        .map(|m| m.rss_after_bytes.unwrap_or(0) as i64 - m.rss_before_bytes.unwrap_or(0) as i64)
        .sum();
    cleanup(&client, &vms).await?;
    Ok(VmReport {
        node,
        pairs,
        api_median_s: round3(api_median.as_secs_f64()),
        virsh_median_s: round3(virsh_median.as_secs_f64()),
        ratio: if virsh_median.is_zero() {
            0.0
        } else {
            round3(api_median.as_secs_f64() / virsh_median.as_secs_f64())
        },
        concurrent: args.count as usize,
        concurrent_running: running,
        concurrent_lost: lost,
        concurrent_s: round3(concurrent_s.as_secs_f64()),
        memory,
        rss_growth_per_vm_bytes: if args.count == 0 {
            0
        } else {
            growth / i64::from(args.count)
        },
    })
}

fn create_body(name: &str, memory: &str, node: Option<&str>) -> serde_json::Value {
    let mut spec = json!({
        "cpus": 1,
        "memory": memory,
        "disks": [{"name": "root", "source": {"type": "image", "image": IMAGE}}],
    });
    if let Some(n) = node {
        spec["placement"] = json!({ "node": n });
    }
    json!({ "metadata": { "name": name }, "spec": spec })
}

async fn create(client: &ApiClient, body: &serde_json::Value) -> anyhow::Result<()> {
    let _: Vm = client
        .request(Method::POST, "/api/v1/vms", Some(body))
        .await
        .with_context(|| format!("creating VM {}", body["metadata"]["name"]))?;
    Ok(())
}

async fn phase_of(client: &ApiClient, name: &str) -> anyhow::Result<Option<Vm>> {
    match client.get::<Vm>(&format!("/api/v1/vms/{name}")).await {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn side_by_side(
    args: &BenchVmArgs,
    client: &ApiClient,
    node: &str,
    work: &Path,
    i: u32,
) -> anyhow::Result<Pair> {
    let name = format!("bench-api-{i}");
    let started = Instant::now();
    create(client, &create_body(&name, &args.memory, Some(node))).await?;
    loop {
        let vm = phase_of(client, &name)
            .await?
            .ok_or_else(|| anyhow!("VM {name} vanished"))?;
        match vm.status.phase {
            VmPhase::Running => break,
            VmPhase::Failed | VmPhase::Lost => bail!("VM {name} ended {:?}", vm.status.phase),
            _ if started.elapsed() > Duration::from_secs(120) => {
                bail!("VM {name} is not running after 120 s")
            }
            _ => tokio::time::sleep(POLL).await,
        }
    }
    let api = started.elapsed();

    // The same domain XML for virsh: renamed, no UUID, its own overlay of the same image.
    let xml = in_node(
        &args.state,
        node,
        "virsh",
        &["-c", "qemu:///system", "dumpxml", &name],
    )?;
    let volume =
        disk_source(&xml).ok_or_else(|| anyhow!("the domain XML of {name} has no disk source"))?;
    let backing = backing_of(Path::new(&volume))?;
    let twin = format!("bench-virsh-{i}");
    let overlay = work.join(format!("{twin}.qcow2"));
    let _ = std::fs::remove_file(&overlay);
    run_ok(
        std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F"])
            .arg(&backing.1)
            .arg("-b")
            .arg(&backing.0)
            .arg(&overlay),
        "qemu-img create",
    )?;
    let twin_xml = twin_domain(&xml, &name, &twin, &volume, &overlay.to_string_lossy());
    let xml_path = work.join(format!("{twin}.xml"));
    std::fs::write(&xml_path, twin_xml)
        .with_context(|| format!("writing {}", xml_path.display()))?;
    let script = format!(
        "a=$(date +%s%N); virsh -q -c qemu:///system create {} >/dev/null || exit 1; b=$(date +%s%N); echo $((b-a))",
        xml_path.display()
    );
    let ns = in_node(&args.state, node, "sh", &["-c", &script])?;
    let virsh_ns: u64 = ns
        .trim()
        .parse()
        .with_context(|| format!("timing virsh create printed {ns:?}"))?;
    let _ = in_node(
        &args.state,
        node,
        "virsh",
        &["-c", "qemu:///system", "destroy", &twin],
    );
    let _ = std::fs::remove_file(&overlay);
    delete_and_wait(client, &[name]).await?;
    Ok(Pair {
        api_s: round3(api.as_secs_f64()),
        virsh_s: round3(Duration::from_nanos(virsh_ns).as_secs_f64()),
    })
}

/// The file of the domain's first disk.
fn disk_source(xml: &str) -> Option<String> {
    let disk = xml.find("<disk ")?;
    let rest = &xml[disk..];
    let src = rest.find("<source file=")?;
    let rest = &rest[src + "<source file=".len()..];
    let quote = rest.chars().next()?;
    let rest = &rest[1..];
    let end = rest.find(quote)?;
    Some(rest[..end].to_string())
}

/// The twin of a dumped domain for `virsh create`: another name, no UUID, another disk file.
fn twin_domain(xml: &str, name: &str, twin: &str, volume: &str, overlay: &str) -> String {
    let without_uuid = match (xml.find("<uuid>"), xml.find("</uuid>")) {
        (Some(a), Some(b)) if b > a => format!("{}{}", &xml[..a], &xml[b + "</uuid>".len()..]),
        _ => xml.to_string(),
    };
    without_uuid
        .replace(volume, overlay)
        .replace(
            &format!("<name>{name}</name>"),
            &format!("<name>{twin}</name>"),
        )
        .replace(name, twin)
}

/// The backing file and its format of a qcow2 overlay.
fn backing_of(volume: &Path) -> anyhow::Result<(PathBuf, String)> {
    let out = run_ok(
        std::process::Command::new("qemu-img")
            .args(["info", "--output", "json", "-U"])
            .arg(volume),
        "qemu-img info",
    )?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("qemu-img info output")?;
    let file = v["full-backing-filename"]
        .as_str()
        .or_else(|| v["backing-filename"].as_str())
        .ok_or_else(|| anyhow!("{} has no backing file", volume.display()))?;
    let format = v["backing-filename-format"]
        .as_str()
        .unwrap_or("raw")
        .to_string();
    Ok((PathBuf::from(file), format))
}

fn run_ok(cmd: &mut std::process::Command, what: &str) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

fn in_node(state: &Path, node: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = run_ok(
        ops::node_command(state, node, program)?.args(args),
        &format!("{program} {} on {node}", args.join(" ")),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn concurrent(args: &BenchVmArgs, client: &ApiClient) -> anyhow::Result<(Duration, Vec<Vm>)> {
    // The default CPU overcommit (4 vCPUs per core) would leave most of the VMs unplaced on
    // a small machine; the benchmark is about Keel's overhead, not the scheduler's limits.
    let body = keel_model::SettingValue {
        value: json!(64),
        version: None,
    };
    let _: keel_model::Setting = client
        .request(
            Method::PUT,
            "/api/v1/settings/scheduler.cpu_overcommit",
            Some(&body),
        )
        .await
        .context("raising scheduler.cpu_overcommit for the concurrent pass")?;
    let names: Vec<String> = (0..args.count).map(|i| format!("bench-many-{i}")).collect();
    let started = Instant::now();
    let creates = names.iter().map(|n| {
        let body = create_body(n, &args.memory, None);
        async move { create(client, &body).await }
    });
    for r in futures::future::join_all(creates).await {
        r?;
    }
    let deadline = Duration::from_secs(args.timeout);
    loop {
        let vms: Items<Vm> = client.get("/api/v1/vms").await?;
        let mine: Vec<Vm> = vms
            .items
            .into_iter()
            .filter(|v| names.iter().any(|n| n == v.metadata.name.as_str()))
            .collect();
        let settled = mine.len() == names.len()
            && mine.iter().all(|v| {
                matches!(
                    v.status.phase,
                    VmPhase::Running | VmPhase::Lost | VmPhase::Failed
                )
            });
        if settled || started.elapsed() > deadline {
            return Ok((started.elapsed(), mine));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn delete_and_wait(client: &ApiClient, names: &[String]) -> anyhow::Result<()> {
    for n in names {
        match client
            .request_empty(Method::DELETE, &format!("/api/v1/vms/{n}"), None::<&()>)
            .await
        {
            Ok(()) => {}
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {}
            Err(e) => return Err(anyhow::Error::from(e).context(format!("deleting VM {n}"))),
        }
    }
    let started = Instant::now();
    for n in names {
        while phase_of(client, n).await?.is_some() {
            if started.elapsed() > Duration::from_secs(300) {
                bail!("VM {n} is still there 300 s after its delete");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

async fn cleanup(client: &ApiClient, vms: &[Vm]) -> anyhow::Result<()> {
    let names: Vec<String> = vms.iter().map(|v| v.metadata.name.to_string()).collect();
    delete_and_wait(client, &names).await
}

fn rss_by_node(state: &Path) -> anyhow::Result<Vec<(String, Option<u64>)>> {
    Ok(ops::status(state)?
        .nodes
        .into_iter()
        .map(|n| (n.name, n.keeld_rss_bytes))
        .collect())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    percentile(&v, 50.0)
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
pub fn render(r: &VmReport) -> String {
    let mut t = Table::new(["RUN", "API CREATE → RUNNING", "VIRSH CREATE"]);
    for (i, p) in r.pairs.iter().enumerate() {
        t.row([
            i.to_string(),
            format!("{:.3} s", p.api_s),
            format!("{:.3} s", p.virsh_s),
        ]);
    }
    let mut out = format!("side by side on {}:\n{}\n", r.node, t.render());
    out.push_str(&format!(
        "median: API {:.3} s, virsh {:.3} s, ratio {:.2} (target <= {RATIO_TARGET}: {})\n",
        r.api_median_s,
        r.virsh_median_s,
        r.ratio,
        verdict(r.ratio <= RATIO_TARGET)
    ));
    out.push_str(&format!(
        "{} VMs created at once: {} running, {} lost or failed, after {:.1} s ({})\n",
        r.concurrent,
        r.concurrent_running,
        r.concurrent_lost,
        r.concurrent_s,
        verdict(r.concurrent_running == r.concurrent && r.concurrent_lost == 0)
    ));
    let mut m = Table::new(["NODE", "VMS", "KEELD RSS BEFORE", "WITH VMS RUNNING"]);
    for g in &r.memory {
        let cell = |b: Option<u64>| b.map(output::bytes).unwrap_or_else(|| "-".into());
        m.row([
            g.node.clone(),
            g.vms.to_string(),
            cell(g.rss_before_bytes),
            cell(g.rss_after_bytes),
        ]);
    }
    out.push_str(&m.render());
    out.push_str(&format!(
        "\nkeeld growth per VM: {:.1} KiB (target <= 1 MiB: {})\n",
        r.rss_growth_per_vm_bytes as f64 / 1024.0,
        verdict(r.rss_growth_per_vm_bytes <= RSS_PER_VM_TARGET as i64)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = "<domain type='qemu'>\n  <name>bench-api-0</name>\n  <uuid>1b4e28ba-2fa1-11d2-883f-0016d3cca427</uuid>\n  <devices>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      <source file='/s/pool/volumes/bench-api-0/root.qcow2'/>\n    </disk>\n    <serial type='pty'><log file='/var/log/keel/bench-api-0.log'/></serial>\n  </devices>\n</domain>\n";

    #[test]
    fn finds_the_first_disk_source() {
        assert_eq!(
            disk_source(XML).as_deref(),
            Some("/s/pool/volumes/bench-api-0/root.qcow2")
        );
        assert_eq!(disk_source("<domain/>"), None);
    }

    #[test]
    fn twin_has_its_own_name_disk_and_no_uuid() {
        let t = twin_domain(
            XML,
            "bench-api-0",
            "bench-virsh-0",
            "/s/pool/volumes/bench-api-0/root.qcow2",
            "/w/bench-virsh-0.qcow2",
        );
        assert!(t.contains("<name>bench-virsh-0</name>"), "{t}");
        assert!(!t.contains("<uuid>"), "{t}");
        assert!(t.contains("<source file='/w/bench-virsh-0.qcow2'/>"), "{t}");
        assert!(t.contains("/var/log/keel/bench-virsh-0.log"), "{t}");
        assert!(!t.contains("bench-api-0"), "{t}");
    }

    #[test]
    fn renders_targets() {
        let r = VmReport {
            node: "node1".into(),
            pairs: vec![Pair {
                api_s: 0.5,
                virsh_s: 0.4,
            }],
            api_median_s: 0.5,
            virsh_median_s: 0.4,
            ratio: 1.25,
            concurrent: 50,
            concurrent_running: 50,
            concurrent_lost: 0,
            concurrent_s: 30.0,
            memory: vec![NodeGrowth {
                node: "node1".into(),
                vms: 17,
                rss_before_bytes: Some(20 << 20),
                rss_after_bytes: Some(24 << 20),
            }],
            rss_growth_per_vm_bytes: 80 * 1024,
        };
        let text = render(&r);
        assert!(text.contains("ratio 1.25 (target <= 2: ok)"), "{text}");
        assert!(text.contains("50 running, 0 lost or failed"), "{text}");
        assert!(text.contains("80.0 KiB (target <= 1 MiB: ok)"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["pairs"][0]["virsh_s"], 0.4);
    }
}
