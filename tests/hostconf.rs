//! Host configuration from settings on a real 3-node dev cluster: every node generates its
//! `/etc` files (chrony sources, resolv.conf, time zone, hostname, hosts) under its own root
//! (`<state>/<node>/root`: the dev nodes share this machine's real `/etc`, which must stay
//! untouched), a node's own `KEY.<node>` setting wins over the cluster-wide one, the node's
//! status says what is applied, bad values are refused with 400 and the field and change
//! nothing, and deleting a setting brings the default back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use keel_tests::{ok, wait_until, Api, DevCluster};
use serde_json::{json, Value};

const NODES: [&str; 3] = ["node1", "node2", "node3"];
const NTP: &str = "etc/chrony/sources.d/keel.sources";

fn header(label: &str) -> String {
    format!("# Written by keeld from {label}; do not edit (see `keel setting`).\n")
}

/// What `<node>/root` holds: file name → text (the localtime symlink as `-> target`).
fn files(root: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for rel in [
        NTP,
        "etc/resolv.conf",
        "etc/timezone",
        "etc/hostname",
        "etc/hosts",
    ] {
        let text = std::fs::read_to_string(root.join(rel)).with_context(|| rel.to_string())?;
        out.push((rel.to_string(), text));
    }
    let link = std::fs::read_link(root.join("etc/localtime"))?;
    out.push(("etc/localtime".into(), format!("-> {}", link.display())));
    Ok(out)
}

/// What the files of `node` should be.
struct Want {
    ntp: String,
    resolv: String,
    zone: String,
}

fn expected(dev: &DevCluster, node: &str, want: &Want) -> Vec<(String, String)> {
    let mut hosts = header("the cluster's nodes");
    hosts.push_str("127.0.0.1\tlocalhost\n");
    let mut nodes: Vec<_> = dev.info.nodes.iter().collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    for n in nodes {
        hosts.push_str(&format!("{}\t{}\n", n.address, n.name));
    }
    hosts.push_str(
        "::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    vec![
        (NTP.into(), want.ntp.clone()),
        ("etc/resolv.conf".into(), want.resolv.clone()),
        ("etc/timezone".into(), format!("{}\n", want.zone)),
        ("etc/hostname".into(), format!("{node}\n")),
        ("etc/hosts".into(), hosts),
        (
            "etc/localtime".into(),
            format!("-> /usr/share/zoneinfo/{}", want.zone),
        ),
    ]
}

fn root_of(dev: &DevCluster, node: &str) -> PathBuf {
    dev.state.join(node).join("root")
}

/// Waits until `node`'s files are exactly `want` and its status says every part is applied;
/// returns the status items.
async fn converged(api: &Api, dev: &DevCluster, node: &str, want: &Want) -> Result<Vec<Value>> {
    let root = root_of(dev, node);
    let exp = expected(dev, node, want);
    let last_files = std::sync::Mutex::new(String::new());
    let res = wait_until(
        &format!("{node}'s host files and status"),
        Duration::from_secs(60),
        || {
            let root = root.clone();
            let exp = exp.clone();
            let last_files = &last_files;
            async move {
                let got = files(&root)?;
                if got != exp {
                    if let Ok(mut l) = last_files.lock() {
                        *l = format!("{got:#?}");
                    }
                    return Ok(None);
                }
                let n = api
                    .call("GET", &format!("/api/v1/nodes/{node}"), None)
                    .await?;
                let items = n.body["status"]["host_config"]["items"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let applied = items.len() == 5 && items.iter().all(|i| i["applied"] == true);
                // The status must describe these files, not the previous ones.
                let tz = items
                    .iter()
                    .find(|i| i["name"] == "timezone")
                    .map(|i| i["value"].clone());
                Ok((applied && tz == Some(json!(want.zone))).then_some(items))
            }
        },
    )
    .await;
    let seen = last_files.lock().map(|l| l.clone()).unwrap_or_default();
    res.with_context(|| format!("{node}: files last seen {seen}; want {exp:#?}"))
}

fn item<'a>(items: &'a [Value], name: &str) -> &'a Value {
    items
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or(&Value::Null)
}

/// The host's own files the dev nodes must never touch.
fn host_etc() -> Vec<String> {
    [
        "/etc/hostname",
        "/etc/timezone",
        "/etc/resolv.conf",
        "/etc/hosts",
    ]
    .iter()
    .map(|p| std::fs::read_to_string(p).unwrap_or_else(|e| format!("{p}: {e}")))
    .chain(std::iter::once(
        std::fs::read_link("/etc/localtime")
            .map(|l| l.display().to_string())
            .unwrap_or_default(),
    ))
    .chain(std::iter::once(
        std::fs::read_to_string("/etc/chrony/sources.d/keel.sources")
            .unwrap_or_else(|e| format!("{e}")),
    ))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_generate_their_etc_from_settings() -> Result<()> {
    let host_before = host_etc();
    let dev = DevCluster::up("hostconf", 3, "10.77.15.0/24", 18457)?;
    let api = dev.client(&dev.info.endpoint).await?;

    // Defaults: Debian's pool, no resolver (the dev answer files carry no DNS), UTC.
    let default_ntp = format!(
        "{}pool 2.debian.pool.ntp.org iburst\n",
        header("the default (no setting ntp.servers)")
    );
    let default_resolv = header("the default (no setting dns.servers, no DNS in the answer file)");
    let defaults = Want {
        ntp: default_ntp.clone(),
        resolv: default_resolv.clone(),
        zone: "Etc/UTC".into(),
    };
    for node in NODES {
        let items = converged(&api, &dev, node, &defaults).await?;
        assert_eq!(item(&items, "ntp")["source"], "default", "{items:?}");
        assert_eq!(item(&items, "hostname")["value"], node, "{items:?}");
        assert_eq!(
            item(&items, "ntp")["path"],
            "/etc/chrony/sources.d/keel.sources"
        );
    }
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(root_of(&dev, "node1").join(NTP))?
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode, 0o644);

    // Cluster-wide settings through the API, and node2's own NTP server through the CLI.
    for (key, value) in [
        ("ntp.servers", json!(["ntp1.example.com", "10.77.15.1"])),
        ("dns.servers", json!(["10.77.15.1", "fd00::53"])),
        ("dns.search", json!("lab.example corp.example")),
        ("time.zone", json!("Europe/Berlin")),
    ] {
        let a = api.put_setting(key, value).await?;
        assert_eq!(a.status, 200, "{key}: {}", a.body);
    }
    ok(
        dev.cli(&["setting", "set", "ntp.servers.node2", "10.77.15.99"])?,
        "keel setting set ntp.servers.node2",
    )?;
    let got = ok(
        dev.cli(&["setting", "get", "ntp.servers.node2", "-o", "json"])?,
        "keel setting get",
    )?;
    let got: Value = serde_json::from_str(&got)?;
    assert_eq!(got["value"], "10.77.15.99", "{got}");

    let resolv = format!(
        "{}search lab.example corp.example\nnameserver 10.77.15.1\nnameserver fd00::53\n",
        header("setting dns.servers and setting dns.search")
    );
    let cluster_ntp = format!(
        "{}server ntp1.example.com iburst\nserver 10.77.15.1 iburst\n",
        header("setting ntp.servers")
    );
    let set = Want {
        ntp: cluster_ntp.clone(),
        resolv: resolv.clone(),
        zone: "Europe/Berlin".into(),
    };
    let node2 = Want {
        ntp: format!(
            "{}server 10.77.15.99 iburst\n",
            header("setting ntp.servers.node2")
        ),
        resolv: resolv.clone(),
        zone: "Europe/Berlin".into(),
    };
    for node in NODES {
        let want = if node == "node2" { &node2 } else { &set };
        let items = converged(&api, &dev, node, want).await?;
        let ntp = item(&items, "ntp");
        if node == "node2" {
            assert_eq!(ntp["source"], "ntp.servers.node2", "{ntp}");
            assert_eq!(ntp["value"], "10.77.15.99", "{ntp}");
        } else {
            assert_eq!(ntp["source"], "ntp.servers", "{ntp}");
            assert_eq!(ntp["value"], "ntp1.example.com 10.77.15.1", "{ntp}");
        }
        let dns = item(&items, "dns");
        assert_eq!(dns["source"], "dns.servers, dns.search", "{dns}");
        assert_eq!(
            dns["value"], "10.77.15.1 fd00::53; search lab.example corp.example",
            "{dns}"
        );
        assert_eq!(item(&items, "timezone")["source"], "time.zone");
    }

    // Bad values: 400 with the field, the setting keeps its version, no file changes.
    let versions = |items: &Value| -> Vec<(String, u64)> {
        items["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        (
                            s["key"].as_str().unwrap_or("").to_string(),
                            s["version"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let before = versions(&api.call("GET", "/api/v1/settings", None).await?.body);
    let files_before: Vec<_> = NODES
        .iter()
        .map(|n| files(&root_of(&dev, n)))
        .collect::<Result<_>>()?;
    for (key, value, field) in [
        (
            "ntp.servers",
            json!(["ok.example.com", "not a host"]),
            "value[1]",
        ),
        ("ntp.servers.node1", json!(["300.1.1.1"]), "value[0]"),
        ("ntp.servers", json!([]), "value"),
        (
            "dns.servers",
            json!(["10.77.15.1", "dns.example.com"]),
            "value[1]",
        ),
        (
            "dns.servers",
            json!(["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]),
            "value",
        ),
        ("dns.search.node3", json!(["bad_domain!"]), "value[0]"),
        ("time.zone", json!("Mars/Olympus"), "value"),
        ("time.zone.node1", json!("../../etc/passwd"), "value"),
        ("time.zone", json!(42), "value"),
    ] {
        let a = api.put_setting(key, value.clone()).await?;
        assert_eq!(a.status, 400, "{key} = {value}: {}", a.body);
        assert_eq!(a.body["error"]["code"], "invalid_field", "{}", a.body);
        assert_eq!(
            a.body["error"]["field"], field,
            "{key} = {value}: {}",
            a.body
        );
    }
    let out = dev.cli(&["setting", "set", "time.zone", "Mars/Olympus"])?;
    assert!(!out.status.success(), "the CLI must fail on a bad zone");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a time zone"), "{err}");
    let after = versions(&api.call("GET", "/api/v1/settings", None).await?.body);
    assert_eq!(before, after, "a refused value wrote nothing");
    // Give the nodes a moment in which a wrongly written value would have been applied.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let files_after: Vec<_> = NODES
        .iter()
        .map(|n| files(&root_of(&dev, n)))
        .collect::<Result<_>>()?;
    assert_eq!(files_before, files_after, "no node's files changed");

    // node2's own setting deleted: it takes the cluster-wide servers.
    let d = api
        .call("DELETE", "/api/v1/settings/ntp.servers.node2", None)
        .await?;
    assert_eq!(d.status, 204, "{}", d.body);
    converged(&api, &dev, "node2", &set).await?;

    // Every setting deleted: the defaults come back everywhere.
    for key in ["ntp.servers", "dns.servers", "dns.search", "time.zone"] {
        let d = api
            .call("DELETE", &format!("/api/v1/settings/{key}"), None)
            .await?;
        assert_eq!(d.status, 204, "{key}: {}", d.body);
    }
    for node in NODES {
        let items = converged(&api, &dev, node, &defaults).await?;
        assert_eq!(item(&items, "dns")["source"], "default", "{items:?}");
    }

    assert_eq!(host_etc(), host_before, "the host's own /etc was touched");
    Ok(())
}
