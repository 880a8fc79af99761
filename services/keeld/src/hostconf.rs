//! Host configuration: the node's `/etc` files, generated from the cluster's settings.
//!
//! ```text
//!  settings (store) ─▶ desired(): per part, the node's own KEY.<node>, else KEY, else the
//!     + nodes          default (pure) ─▶ ROOT/etc/… differs? ─yes─▶ temp file + rename
//!                      ─▶ HostActions (chronyc reload sources, sethostname)
//!                      ─▶ node status.host_config (applied, or what failed)
//! ```
//!
//! | part       | settings (node first)                         | file(s) under ROOT                    | then |
//! |------------|-----------------------------------------------|----------------------------------------|------|
//! | `ntp`      | `ntp.servers[.<node>]`                        | `etc/chrony/sources.d/keel.sources`    | `chronyc reload sources` |
//! | `dns`      | `dns.servers[.<node>]`, `dns.search[.<node>]` | `etc/resolv.conf`                      | (read per lookup) |
//! | `timezone` | `time.zone[.<node>]`                          | `etc/localtime` (symlink), `etc/timezone` | (read per call) |
//! | `hostname` | the node's name                               | `etc/hostname`                         | `sethostname` |
//! | `hosts`    | the cluster's nodes and addresses             | `etc/hosts`                            | (read per lookup) |
//!
//! Level-triggered and idempotent: every round computes every file, writes only what differs
//! (atomically: temp file, fsync, rename) and runs a part's host action when its file changed or
//! when this keeld has not applied it yet (so a crash between write and action is healed by the
//! next start). A value keeld cannot use (stored before it was validated, or a time zone this
//! node lacks) leaves the file as it is and is reported in the node's status.
//!
//! ROOT is `/` on the appliance (`--seed`) and the node's own directory in `keel dev`, whose
//! nodes share this machine's `/etc` (there the host actions are off: `--host-actions none`).

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_model::{HostConfigItem, HostConfigStatus, ValidationError};
use serde_json::Value;
use tracing::{info, warn, Instrument};

use crate::error::ApiError;
use crate::member::{kinds, node_of, Member};

/// NTP servers (host names or addresses): a JSON array, or one string of names separated by
/// commas or spaces.
pub const NTP_SERVERS: &str = "ntp.servers";
/// DNS servers (1 to 3 addresses), same forms.
pub const DNS_SERVERS: &str = "dns.servers";
/// DNS search domains (1 to 6), same forms.
pub const DNS_SEARCH: &str = "dns.search";
/// The time zone, e.g. `Europe/Berlin` (a zone of the tz database).
pub const TIMEZONE: &str = "time.zone";
/// Every key this module owns; each also exists per node as `KEY.<node>`.
pub const KEYS: [&str; 4] = [NTP_SERVERS, DNS_SERVERS, DNS_SEARCH, TIMEZONE];
/// Where the tz database is.
pub const ZONEINFO: &str = "/usr/share/zoneinfo";
/// The time zone without a setting.
pub const DEFAULT_TIMEZONE: &str = "Etc/UTC";
/// chrony's sources without a setting (Debian's own pool).
pub const DEFAULT_NTP_POOL: &str = "2.debian.pool.ntp.org";
const MAX_NTP: usize = 16;
const MAX_DNS: usize = 3;
const MAX_SEARCH: usize = 6;

// ---- validation ---------------------------------------------------------------------------

/// Which of [`KEYS`] `key` is (the key itself or its per-node form `KEY.<node>`).
pub fn owned_key(key: &str) -> Option<&'static str> {
    KEYS.iter().copied().find(|k| {
        key == *k
            || key
                .strip_prefix(k)
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|node| !node.is_empty())
    })
}

/// Checks a setting's value before it is stored: the keys of this module (and their
/// `KEY.<node>` forms) must hold values the node can use; other keys pass.
pub fn validate_setting(key: &str, value: &Value) -> Result<(), ValidationError> {
    match owned_key(key) {
        Some(NTP_SERVERS) => ntp_servers(value).map(drop),
        Some(DNS_SERVERS) => dns_servers(value).map(drop),
        Some(DNS_SEARCH) => dns_search(value).map(drop),
        Some(TIMEZONE) => timezone(value, Path::new(ZONEINFO)).map(drop),
        _ => Ok(()),
    }
}

/// The entries of a list setting: a JSON array of strings, or one string separated by commas
/// or white space.
fn entries(value: &Value, what: &str, max: usize) -> Result<Vec<String>, ValidationError> {
    let list: Vec<String> = match value {
        Value::String(s) => s
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.trim().to_string()),
                other => Err(ValidationError::new(
                    format!("value[{i}]"),
                    format!("{other} is not a string; give {what} as strings"),
                )),
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(ValidationError::new(
                "value",
                format!("{other} is not a list of {what}; use e.g. [\"a\", \"b\"] or \"a, b\""),
            ))
        }
    };
    if list.is_empty() {
        return Err(ValidationError::new(
            "value",
            format!("no {what} given; DELETE the setting to go back to the default"),
        ));
    }
    if list.len() > max {
        return Err(ValidationError::new(
            "value",
            format!("{} {what} given; at most {max} are used", list.len()),
        ));
    }
    Ok(list)
}

/// Field of entry `i` (a string value has no index).
fn entry_field(value: &Value, i: usize) -> String {
    if value.is_array() {
        format!("value[{i}]")
    } else {
        "value".into()
    }
}

/// A DNS name (RFC 1123 labels; the last label is not all digits, so `300.1.1.1` is neither
/// an address nor a name).
pub fn is_hostname(s: &str) -> bool {
    let labels: Vec<&str> = s.split('.').collect();
    s.len() <= 253
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
        && labels
            .last()
            .is_some_and(|l| !l.chars().all(|c| c.is_ascii_digit()))
}

/// NTP servers: host names or IP addresses.
pub fn ntp_servers(value: &Value) -> Result<Vec<String>, ValidationError> {
    let list = entries(value, "NTP servers", MAX_NTP)?;
    for (i, s) in list.iter().enumerate() {
        if s.parse::<IpAddr>().is_err() && !is_hostname(s) {
            return Err(ValidationError::new(
                entry_field(value, i),
                format!("{s:?} is not a host name or an IP address"),
            ));
        }
    }
    Ok(list)
}

/// DNS servers: IP addresses (resolv.conf takes no names), at most 3 (what the resolver uses).
pub fn dns_servers(value: &Value) -> Result<Vec<IpAddr>, ValidationError> {
    let list = entries(value, "DNS servers", MAX_DNS)?;
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<IpAddr>().map_err(|_| {
                ValidationError::new(
                    entry_field(value, i),
                    format!("{s:?} is not an IP address (DNS servers are given by address)"),
                )
            })
        })
        .collect()
}

/// DNS search domains.
pub fn dns_search(value: &Value) -> Result<Vec<String>, ValidationError> {
    let list = entries(value, "search domains", MAX_SEARCH)?;
    for (i, s) in list.iter().enumerate() {
        if !is_hostname(s) {
            return Err(ValidationError::new(
                entry_field(value, i),
                format!("{s:?} is not a domain name"),
            ));
        }
    }
    Ok(list)
}

/// A time zone of the tz database under `zoneinfo` (a TZif file, e.g. `Europe/Berlin`).
pub fn timezone(value: &Value, zoneinfo: &Path) -> Result<String, ValidationError> {
    let Some(zone) = value.as_str().map(str::trim) else {
        return Err(ValidationError::new(
            "value",
            format!(
                "{value} is not a time zone; use a name such as \"Europe/Berlin\" or \"Etc/UTC\""
            ),
        ));
    };
    let syntax = !zone.is_empty()
        && zone.len() <= 128
        && zone.split('/').all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '.'))
        });
    let is_zone = syntax
        && std::fs::File::open(zoneinfo.join(zone))
            .and_then(|mut f| {
                let mut magic = [0u8; 4];
                std::io::Read::read_exact(&mut f, &mut magic).map(|()| magic)
            })
            .is_ok_and(|magic| &magic == b"TZif");
    if !is_zone {
        return Err(ValidationError::new(
            "value",
            format!(
                "{zone:?} is not a time zone of the tz database ({}); use e.g. \"Europe/Berlin\" or \"Etc/UTC\"",
                zoneinfo.display()
            ),
        ));
    }
    Ok(zone.to_string())
}

// ---- desired state (pure) -----------------------------------------------------------------

/// What a file should be.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Content {
    /// A regular file with this text and mode.
    File {
        /// The text.
        text: String,
        /// Permission bits.
        mode: u32,
    },
    /// A symbolic link to this target.
    Symlink(String),
}

/// What the host does once a part's files are in place.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// Nothing (the file is read where it is used).
    None,
    /// chrony re-reads its sources directory.
    ReloadNtp,
    /// The kernel's host name.
    SetHostname(String),
}

/// One managed part of the host configuration, as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// `ntp`, `dns`, `timezone`, `hostname`, `hosts`.
    pub name: &'static str,
    /// Files, relative to the root (`etc/…`).
    pub files: Vec<(&'static str, Content)>,
    /// The setting(s) the value came from, or `default`.
    pub source: String,
    /// The value, for the status.
    pub value: String,
    /// What follows a change.
    pub action: Action,
    /// Why the value cannot be used (the files stay as they are).
    pub error: Option<String>,
}

impl Desired {
    fn fingerprint(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.files.hash(&mut h);
        self.action.hash(&mut h);
        h.finish()
    }

    fn unusable(name: &'static str, key: &str, value: &Value, e: ValidationError) -> Self {
        Self {
            name,
            files: Vec::new(),
            source: key.to_string(),
            value: value.to_string(),
            action: Action::None,
            error: Some(format!(
                "setting {key} = {value} cannot be used: {}",
                e.message
            )),
        }
    }
}

/// What the node's host configuration is made from.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// This node's name.
    pub node: String,
    /// Every setting (key → value).
    pub settings: BTreeMap<String, Value>,
    /// DNS servers of the answer file (used without `dns.servers`).
    pub answer_dns: Vec<IpAddr>,
    /// The cluster's nodes and their management addresses (empty when not known yet).
    pub nodes: Vec<(String, String)>,
}

impl Inputs {
    /// The setting `key` for this node: `key.<node>` first, then `key`; with the key it came from.
    pub fn setting(&self, key: &str) -> Option<(String, &Value)> {
        let own = format!("{key}.{}", self.node);
        if let Some(v) = self.settings.get(&own) {
            return Some((own, v));
        }
        self.settings.get(key).map(|v| (key.to_string(), v))
    }
}

fn header(source: &str) -> String {
    format!("# Written by keeld from {source}; do not edit (see `keel setting`).\n")
}

/// Every part of the host configuration, as it should be (pure).
pub fn desired(inp: &Inputs, zoneinfo: &Path) -> Vec<Desired> {
    vec![
        ntp(inp),
        dns(inp),
        tz(inp, zoneinfo),
        hostname(inp),
        hosts(inp),
    ]
}

const NTP_FILE: &str = "etc/chrony/sources.d/keel.sources";

fn ntp(inp: &Inputs) -> Desired {
    let (source, servers, lines) = match inp.setting(NTP_SERVERS) {
        Some((key, v)) => match ntp_servers(v) {
            Ok(list) => {
                let lines: String = list
                    .iter()
                    .map(|s| format!("server {s} iburst\n"))
                    .collect();
                (key, list.join(" "), lines)
            }
            Err(e) => return Desired::unusable("ntp", &key, v, e),
        },
        None => (
            "default".to_string(),
            format!("{DEFAULT_NTP_POOL} (pool)"),
            format!("pool {DEFAULT_NTP_POOL} iburst\n"),
        ),
    };
    let label = if source == "default" {
        "the default (no setting ntp.servers)".to_string()
    } else {
        format!("setting {source}")
    };
    Desired {
        name: "ntp",
        files: vec![(
            NTP_FILE,
            Content::File {
                text: format!("{}{lines}", header(&label)),
                mode: 0o644,
            },
        )],
        source,
        value: servers,
        action: Action::ReloadNtp,
        error: None,
    }
}

fn dns(inp: &Inputs) -> Desired {
    let mut sources = Vec::new();
    let servers: Vec<IpAddr> = match inp.setting(DNS_SERVERS) {
        Some((key, v)) => match dns_servers(v) {
            Ok(list) => {
                sources.push(format!("setting {key}"));
                list
            }
            Err(e) => return Desired::unusable("dns", &key, v, e),
        },
        None if !inp.answer_dns.is_empty() => {
            sources.push("the answer file".to_string());
            inp.answer_dns.iter().take(MAX_DNS).copied().collect()
        }
        None => Vec::new(),
    };
    let search: Vec<String> = match inp.setting(DNS_SEARCH) {
        Some((key, v)) => match dns_search(v) {
            Ok(list) => {
                sources.push(format!("setting {key}"));
                list
            }
            Err(e) => return Desired::unusable("dns", &key, v, e),
        },
        None => Vec::new(),
    };
    let label = if sources.is_empty() {
        "the default (no setting dns.servers, no DNS in the answer file)".to_string()
    } else {
        sources.join(" and ")
    };
    let mut text = header(&label);
    if !search.is_empty() {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    for s in &servers {
        text.push_str(&format!("nameserver {s}\n"));
    }
    let mut value = servers
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    if !search.is_empty() {
        value.push_str(&format!("; search {}", search.join(" ")));
    }
    Desired {
        name: "dns",
        files: vec![("etc/resolv.conf", Content::File { text, mode: 0o644 })],
        source: if sources.is_empty() {
            "default".into()
        } else {
            sources
                .iter()
                .map(|s| s.trim_start_matches("setting ").to_string())
                .collect::<Vec<_>>()
                .join(", ")
        },
        value,
        action: Action::None,
        error: None,
    }
}

fn tz(inp: &Inputs, zoneinfo: &Path) -> Desired {
    let (source, zone) = match inp.setting(TIMEZONE) {
        Some((key, v)) => match timezone(v, zoneinfo) {
            Ok(zone) => (key, zone),
            Err(e) => return Desired::unusable("timezone", &key, v, e),
        },
        None => ("default".to_string(), DEFAULT_TIMEZONE.to_string()),
    };
    Desired {
        name: "timezone",
        files: vec![
            (
                "etc/localtime",
                Content::Symlink(format!("{ZONEINFO}/{zone}")),
            ),
            (
                "etc/timezone",
                Content::File {
                    text: format!("{zone}\n"),
                    mode: 0o644,
                },
            ),
        ],
        source,
        value: zone,
        action: Action::None,
        error: None,
    }
}

fn hostname(inp: &Inputs) -> Desired {
    Desired {
        name: "hostname",
        files: vec![(
            "etc/hostname",
            Content::File {
                text: format!("{}\n", inp.node),
                mode: 0o644,
            },
        )],
        source: "node name".into(),
        value: inp.node.clone(),
        action: Action::SetHostname(inp.node.clone()),
        error: None,
    }
}

fn hosts(inp: &Inputs) -> Desired {
    let mut nodes: Vec<&(String, String)> = inp
        .nodes
        .iter()
        .filter(|(_, a)| a.parse::<IpAddr>().is_ok())
        .collect();
    nodes.sort();
    let mut text = header("the cluster's nodes");
    text.push_str("127.0.0.1\tlocalhost\n");
    if !nodes.iter().any(|(n, _)| *n == inp.node) {
        text.push_str(&format!("127.0.1.1\t{}\n", inp.node));
    }
    for (name, addr) in &nodes {
        text.push_str(&format!("{addr}\t{name}\n"));
    }
    text.push_str("::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n");
    Desired {
        name: "hosts",
        files: vec![("etc/hosts", Content::File { text, mode: 0o644 })],
        source: "nodes".into(),
        value: nodes
            .iter()
            .map(|(n, a)| format!("{n}={a}"))
            .collect::<Vec<_>>()
            .join(" "),
        action: Action::None,
        error: None,
    }
}

// ---- files and host actions ---------------------------------------------------------------

/// What the host does after a part changed; behind a trait so the step is testable and so the
/// dev cluster (whose nodes share this machine) can turn it off.
pub trait HostActions: Send + Sync {
    /// Runs `action`; the error says what failed.
    fn apply(&self, action: &Action) -> Result<(), String>;
}

/// The real host: `chronyc reload sources`, `sethostname(2)`.
#[derive(Debug, Default)]
pub struct SystemActions;

impl HostActions for SystemActions {
    fn apply(&self, action: &Action) -> Result<(), String> {
        match action {
            Action::None => Ok(()),
            Action::ReloadNtp => {
                let out = std::process::Command::new("chronyc")
                    .args(["reload", "sources"])
                    .output()
                    .map_err(|e| format!("running chronyc reload sources: {e}"))?;
                if out.status.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "chronyc reload sources failed ({}): {}{}",
                        out.status,
                        String::from_utf8_lossy(&out.stdout).trim(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ))
                }
            }
            Action::SetHostname(name) => nix::unistd::sethostname(name)
                .map_err(|e| format!("setting the host name to {name}: {e}")),
        }
    }
}

/// No host actions (the dev cluster: files only).
#[derive(Debug, Default)]
pub struct NoActions;

impl HostActions for NoActions {
    fn apply(&self, _action: &Action) -> Result<(), String> {
        Ok(())
    }
}

/// Makes `root/rel` be `content`; true when it changed it. Regular files are written to a
/// temporary file, synced and renamed over the old one; symlinks are made beside and renamed.
pub fn ensure(root: &Path, rel: &str, content: &Content) -> std::io::Result<bool> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = root.join(rel);
    let tmp = {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".keel-tmp");
        path.with_file_name(name)
    };
    let meta = std::fs::symlink_metadata(&path).ok();
    match content {
        Content::File { text, mode } => {
            let same = meta.as_ref().is_some_and(|m| {
                m.file_type().is_file() && m.permissions().mode() & 0o7777 == *mode
            }) && std::fs::read(&path).is_ok_and(|old| old == text.as_bytes());
            if same {
                return Ok(false);
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(*mode)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.set_permissions(std::fs::Permissions::from_mode(*mode))?;
            f.sync_all()?;
        }
        Content::Symlink(target) => {
            let same = meta.as_ref().is_some_and(|m| m.file_type().is_symlink())
                && std::fs::read_link(&path).is_ok_and(|t| t == Path::new(target));
            if same {
                return Ok(false);
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(target, &tmp)?;
        }
    }
    std::fs::rename(&tmp, &path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(true)
}

/// The host configuration reconciler of one node.
pub struct HostConf {
    root: PathBuf,
    zoneinfo: PathBuf,
    actions: Arc<dyn HostActions>,
    answer_dns: Vec<IpAddr>,
    /// Part → fingerprint of what this process applied (files written and action done).
    applied: Mutex<HashMap<&'static str, u64>>,
    /// The last status, to log changes once.
    last: Mutex<Option<HostConfigStatus>>,
}

impl HostConf {
    /// A reconciler writing under `root` (`/` on the appliance).
    pub fn new(root: PathBuf, actions: Arc<dyn HostActions>, answer_dns: Vec<IpAddr>) -> Self {
        Self {
            root,
            zoneinfo: PathBuf::from(ZONEINFO),
            actions,
            answer_dns,
            applied: Mutex::new(HashMap::new()),
            last: Mutex::new(None),
        }
    }

    /// The root the `etc/…` files are written under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The same with another tz database (tests).
    pub fn with_zoneinfo(mut self, zoneinfo: PathBuf) -> Self {
        self.zoneinfo = zoneinfo;
        self
    }

    /// Converges every part once (blocking: files and host commands) and returns the status.
    pub fn converge(&self, inputs: &Inputs) -> HostConfigStatus {
        let mut applied = match self.applied.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let items = desired(inputs, &self.zoneinfo)
            .into_iter()
            .map(|d| self.converge_one(&d, &mut applied))
            .collect();
        HostConfigStatus { items }
    }

    fn converge_one(
        &self,
        d: &Desired,
        applied: &mut HashMap<&'static str, u64>,
    ) -> HostConfigItem {
        let mut item = HostConfigItem {
            name: d.name.to_string(),
            path: d
                .files
                .iter()
                .map(|(p, _)| format!("/{p}"))
                .collect::<Vec<_>>()
                .join(" "),
            source: d.source.clone(),
            value: d.value.clone(),
            applied: false,
            message: String::new(),
        };
        if let Some(e) = &d.error {
            item.message = e.clone();
            return item;
        }
        let mut changed = false;
        for (rel, content) in &d.files {
            match ensure(&self.root, rel, content) {
                Ok(c) => {
                    if c {
                        info!(part = d.name, file = %self.root.join(rel).display(), source = %d.source, "host file written");
                    }
                    changed |= c;
                }
                Err(e) => {
                    item.message = format!("writing {}: {e}", self.root.join(rel).display());
                    return item;
                }
            }
        }
        let fp = d.fingerprint();
        if changed || applied.get(d.name) != Some(&fp) {
            if let Err(e) = self.actions.apply(&d.action) {
                applied.remove(d.name);
                item.message = e;
                return item;
            }
            applied.insert(d.name, fp);
        }
        item.applied = true;
        item
    }

    /// One round against the store: inputs from the settings and nodes, converge, record the
    /// node's status when it changed.
    pub async fn round(self: &Arc<Self>, m: &Member) -> Result<(), ApiError> {
        let me = m.identity.name.clone();
        let settings = m
            .list(kinds::SETTINGS)?
            .into_iter()
            .filter_map(|r| r.value.get("value").cloned().map(|v| (r.name, v)))
            .collect();
        let nodes = m
            .list(kinds::NODES)?
            .iter()
            .filter_map(|r| node_of(r).ok())
            .filter(|n| !n.status.address.is_empty())
            .map(|n| (n.metadata.name, n.status.address))
            .collect();
        let inputs = Inputs {
            node: me.clone(),
            settings,
            answer_dns: self.answer_dns.clone(),
            nodes,
        };
        let this = self.clone();
        let status = tokio::task::spawn_blocking(move || this.converge(&inputs))
            .await
            .map_err(|e| ApiError::Internal(format!("host configuration round: {e}")))?;
        self.log_changes(&status);
        let recorded = m
            .get(kinds::NODES, &me)?
            .and_then(|r| node_of(&r).ok())
            .and_then(|n| n.status.host_config);
        if recorded.as_ref() != Some(&status) {
            crate::lifecycle::update_node(m, &me, |n| {
                n.status.host_config = Some(status.clone());
            })
            .await?;
        }
        Ok(())
    }

    fn log_changes(&self, status: &HostConfigStatus) {
        let mut last = match self.last.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if last.as_ref() == Some(status) {
            return;
        }
        for item in &status.items {
            let before = last
                .as_ref()
                .and_then(|l| l.items.iter().find(|i| i.name == item.name));
            if before == Some(item) {
                continue;
            }
            if item.applied {
                info!(part = %item.name, source = %item.source, value = %item.value, "host configuration applied");
            } else {
                warn!(part = %item.name, source = %item.source, error = %item.message, "host configuration not applied");
            }
        }
        *last = Some(status.clone());
    }
}

/// Every member converges its own host: a round every 10 s (new nodes reach `/etc/hosts`)
/// and whenever a setting changes.
pub async fn run(m: Arc<Member>, hc: Arc<HostConf>, shutdown: tokio::sync::watch::Receiver<bool>) {
    info!(root = %hc.root.display(), "host configuration from settings");
    crate::wake::reconcile_loop(
        m,
        &[kinds::SETTINGS],
        Duration::from_secs(10),
        crate::wake::Runs::Everywhere,
        "host configuration",
        shutdown,
        move |m| {
            let hc = hc.clone();
            async move {
                let span =
                    tracing::info_span!("reconcile", kind = "hostconf", node = %m.identity.name);
                hc.round(&m).instrument(span).await
            }
        },
    )
    .await;
}

#[cfg(test)]
mod tests;
