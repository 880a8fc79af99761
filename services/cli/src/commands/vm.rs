//! `keel vm create|list|show|start|stop|reboot|delete` and `keel vm group create|list|delete`.
//!
//! ```text
//!  create ─▶ POST /vms (VmCreate, checked locally first) ─▶ 201 Vm
//!  start|stop|reboot ─▶ POST /vms/{n}/{action} ─▶ 202 Vm (spec.power_state set; the node converges)
//!  delete ─▶ DELETE /vms/{n} ─▶ 202 (the node cleans up; the VM goes)
//!  --wait: GET /vms/{n} every 0.5 s until the phase is reached (or failed, unschedulable,
//!          or 404 for delete), printing phase changes to stderr
//! ```

use std::time::{Duration, Instant};

use anyhow::bail;
use keel_model::{
    find_condition, CloudInit, Condition, ConditionStatus, DiskSource, GroupPolicy, GroupStrength,
    Name, NewMetadata, NicModel, PowerState, Vm, VmCreate, VmDisk, VmGroup, VmGroupCreate,
    VmGroupSpec, VmNic, VmPhase, VmPlacement, VmSpec,
};
use reqwest::{Method, StatusCode};

use super::{or_dash, wire_name, Items};
use crate::cli::{
    OutputFormat, VmCommand, VmCreateArgs, VmGroupCommand, VmGroupCreateArgs, VmPowerArgs, WaitArgs,
};
use crate::client::ApiClient;
use crate::output::{self, Table};

/// How often a wait polls.
const POLL: Duration = Duration::from_millis(500);

/// The name of the one disk `keel vm create` gives a VM.
pub const ROOT_DISK: &str = "root";
/// The name of the NIC `--network` adds.
pub const NIC_NAME: &str = "net0";

/// Runs a `keel vm` command.
pub async fn run(client: &ApiClient, command: VmCommand) -> anyhow::Result<()> {
    match command {
        VmCommand::Create(args) => create(client, &args).await,
        VmCommand::List(o) => list(client, o.output).await,
        VmCommand::Show { name, out } => show(client, &name, out.output).await,
        VmCommand::Start(args) => power(client, Action::Start, &args).await,
        VmCommand::Stop(args) => power(client, Action::Stop, &args).await,
        VmCommand::Reboot(args) => power(client, Action::Reboot, &args).await,
        VmCommand::ForceStop(args) => power(client, Action::ForceStop, &args).await,
        VmCommand::Pause(args) => power(client, Action::Pause, &args).await,
        VmCommand::Resume(args) => power(client, Action::Resume, &args).await,
        VmCommand::Migrate(args) => super::lifecycle::migrate(client, &args).await,
        VmCommand::Delete {
            name,
            keep_disks,
            wait,
        } => delete(client, &name, keep_disks, wait).await,
        VmCommand::Snapshot(c) => super::storage::snapshot(client, c).await,
        VmCommand::Clone(a) => super::storage::clone(client, &a).await,
        VmCommand::Console { name } => super::console::run(client, &name).await,
        VmCommand::Group(VmGroupCommand::Create(args)) => group_create(client, &args).await,
        VmCommand::Group(VmGroupCommand::List(o)) => group_list(client, o.output).await,
        VmCommand::Group(VmGroupCommand::Delete { name }) => group_delete(client, &name).await,
        VmCommand::Resize(a) => super::vm_edit::resize(client, &a).await,
        VmCommand::Disk(c) => super::vm_edit::disk(client, c).await,
        VmCommand::Nic(c) => super::vm_edit::nic(client, c).await,
        VmCommand::Rename(a) => super::vm_edit::rename(client, &a).await,
    }
}

/// The create body of `keel vm create`: one disk `root` from the image, a NIC only with
/// `--network`.
pub fn create_body(args: &VmCreateArgs) -> anyhow::Result<VmCreate> {
    let (Some(cpus), Some(memory), Some(image)) = (args.cpus, args.memory, args.image.clone())
    else {
        bail!("give --image, --cpus and --memory (or --from-template)");
    };
    let mut spec = VmSpec::new(cpus, memory);
    spec.disks = vec![VmDisk {
        name: Name::new(ROOT_DISK)?,
        source: DiskSource::Image {
            image,
            size: args.disk,
        },
        bus: None,
        qos: None,
    }];
    if let Some(network) = &args.network {
        spec.nics = vec![VmNic {
            name: Name::new(NIC_NAME)?,
            network: network.clone(),
            mac: None,
            model: NicModel::default(),
        }];
    }
    spec.firmware = args.firmware;
    spec.iso = args.iso.clone();
    spec.boot_order = args.boot.clone();
    spec.autostart = args.autostart;
    spec.cloud_init = cloud_init(args)?;
    spec.power_state = if args.stopped {
        PowerState::Stopped
    } else {
        PowerState::Running
    };
    spec.placement = VmPlacement {
        node: args.node.clone(),
        group: args.group.clone(),
        ..VmPlacement::default()
    };
    let body = VmCreate {
        metadata: NewMetadata::named(args.name.clone()),
        spec,
    };
    // The model's own checks, before any request: the same words the API would use.
    body.validate().map_err(|e| {
        let flag = flag_for(&e.field).map_or_else(String::new, |f| format!(" ({f})"));
        anyhow::anyhow!("{}{flag}", e.message)
    })?;
    Ok(body)
}

/// The cloud-init seed of `keel vm create`: none unless one of its options is given.
fn cloud_init(args: &VmCreateArgs) -> anyhow::Result<Option<CloudInit>> {
    if args.hostname.is_none()
        && args.ssh_key.is_empty()
        && args.password_file.is_none()
        && args.user_data.is_none()
    {
        return Ok(None);
    }
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))
    };
    let mut ssh_keys = Vec::new();
    for k in &args.ssh_key {
        // A key as given, else a file of keys (one per line, as authorized_keys).
        if k.starts_with("ssh-") || k.starts_with("ecdsa-") || k.starts_with("sk-") {
            ssh_keys.push(k.trim().to_string());
        } else {
            let text = read(std::path::Path::new(k))?;
            ssh_keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string),
            );
        }
    }
    let password = match &args.password_file {
        Some(p) => Some(read(p)?.trim_end_matches(['\n', '\r']).to_string()),
        None => None,
    };
    let user_data = args.user_data.as_deref().map(read).transpose()?;
    Ok(Some(CloudInit {
        hostname: args.hostname.clone(),
        ssh_keys,
        password,
        user_data,
    }))
}

/// The option of `keel vm create` that sets a field of the body.
pub fn flag_for(field: &str) -> Option<&'static str> {
    match field {
        "spec.iso" => Some("--iso"),
        f if f.starts_with("spec.boot_order") => Some("--boot"),
        "spec.cloud_init.hostname" => Some("--hostname"),
        f if f.starts_with("spec.cloud_init.ssh_keys") => Some("--ssh-key"),
        "spec.cloud_init.password" => Some("--password-file"),
        "spec.cloud_init.user_data" => Some("--user-data"),
        "spec.cpus" => Some("--cpus"),
        "spec.memory" => Some("--memory"),
        f if f.starts_with("spec.disks") => Some("--disk"),
        f if f.starts_with("spec.nics") => Some("--network"),
        f if f.starts_with("spec.placement") => Some("--node/--group"),
        _ => None,
    }
}

/// `keel vm create`.
pub async fn create(client: &ApiClient, args: &VmCreateArgs) -> anyhow::Result<()> {
    if let Some(template) = &args.from_template {
        let clone = super::storage::VmCloneArgs {
            source: template.clone(),
            name: args.name.clone(),
            start: !args.stopped,
            wait: args.wait,
            out: args.out,
        };
        return super::storage::clone(client, &clone).await;
    }
    let body = create_body(args)?;
    let vm: Vm = client
        .request(Method::POST, "/api/v1/vms", Some(&body))
        .await?;
    eprintln!("created vm {}", args.name);
    let want = WaitFor {
        phase: if args.stopped {
            VmPhase::Stopped
        } else {
            VmPhase::Running
        },
        since: vm.metadata.version,
        strict: false,
    };
    finish(client, &args.name, args.wait, want, args.out.output).await
}

/// A power action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `start`.
    Start,
    /// `stop`.
    Stop,
    /// `reboot`.
    Reboot,
    /// `force-stop`.
    ForceStop,
    /// `pause`.
    Pause,
    /// `resume`.
    Resume,
}

impl Action {
    /// The path segment and verb.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Reboot => "reboot",
            Action::ForceStop => "force-stop",
            Action::Pause => "pause",
            Action::Resume => "resume",
        }
    }

    /// What `--wait` waits for after the action was accepted at `version`. A reboot leaves
    /// the phase `running`, so only a status that reflects the request counts.
    pub fn wait_for(self, version: u64) -> WaitFor {
        let (phase, strict) = match self {
            Action::Start => (VmPhase::Running, false),
            Action::Stop => (VmPhase::Stopped, false),
            Action::Reboot | Action::Pause | Action::Resume => (VmPhase::Running, true),
            Action::ForceStop => (VmPhase::Stopped, false),
        };
        WaitFor {
            phase,
            since: version,
            strict,
        }
    }
}

/// `keel vm start|stop|reboot NAME`.
pub async fn power(client: &ApiClient, action: Action, args: &VmPowerArgs) -> anyhow::Result<()> {
    let name = &args.name;
    let vm: Vm = client
        .request::<Vm, ()>(
            Method::POST,
            &format!("/api/v1/vms/{name}/{}", action.as_str()),
            None,
        )
        .await?;
    eprintln!("{} of vm {name} requested", action.as_str());
    let want = action.wait_for(vm.metadata.version);
    finish(client, name, args.wait, want, args.out.output).await
}

/// `keel vm delete NAME`.
pub async fn delete(
    client: &ApiClient,
    name: &Name,
    keep_disks: bool,
    wait: WaitArgs,
) -> anyhow::Result<()> {
    let path = format!("/api/v1/vms/{name}");
    let query = if keep_disks { "?keep_disks=true" } else { "" };
    client
        .request_empty::<()>(Method::DELETE, &format!("{path}{query}"), None)
        .await?;
    if !wait.wait {
        eprintln!("deletion of vm {name} requested");
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(wait.timeout);
    let mut last = None;
    loop {
        match client.get::<Vm>(&path).await {
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => break,
            Err(e) => return Err(e.into()),
            Ok(vm) => {
                let phase = vm.status.phase;
                if last != Some(phase) {
                    eprintln!("vm {name}: {}, deleting", wire_name(&phase));
                    last = Some(phase);
                }
                if Instant::now() >= deadline {
                    bail!(
                        "vm {name} is still there ({}) after {} s{}",
                        wire_name(&phase),
                        wait.timeout,
                        reasons_suffix(&vm)
                    );
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
    eprintln!("deleted vm {name}");
    Ok(())
}

/// What a wait waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitFor {
    /// The phase.
    pub phase: VmPhase,
    /// The `metadata.version` of the request: a status with an older `observed_version`
    /// does not yet reflect it, so its `failed` or `lost` is not the request's outcome.
    pub since: u64,
    /// Also require `observed_version >= since` before `phase` counts (reboot).
    pub strict: bool,
}

/// What one look at a VM says about a wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Not there yet.
    Waiting,
    /// Reached.
    Done,
    /// It will not get there; why.
    Failed(String),
}

/// Judges one poll of a wait.
pub fn judge(vm: &Vm, want: WaitFor) -> Seen {
    let s = &vm.status;
    let name = &vm.metadata.name;
    if want.phase == VmPhase::Running {
        if let Some(c) = find_condition(&s.conditions, Condition::SCHEDULED) {
            if c.status == ConditionStatus::False {
                return Seen::Failed(format!(
                    "vm {name} cannot be scheduled: {}",
                    condition_text(c)
                ));
            }
        }
    }
    let fresh = s.observed_version >= want.since;
    if s.phase == want.phase && (fresh || !want.strict) {
        return Seen::Done;
    }
    if fresh && matches!(s.phase, VmPhase::Failed | VmPhase::Lost) {
        return Seen::Failed(format!(
            "vm {name} is {}: {}",
            wire_name(&s.phase),
            reasons(vm)
        ));
    }
    Seen::Waiting
}

fn condition_text(c: &Condition) -> String {
    match (c.message.is_empty(), c.reason.is_empty()) {
        (false, true) => c.message.clone(),
        (false, false) => format!("{} ({})", c.message, c.reason),
        (true, false) => c.reason.clone(),
        (true, true) => format!("{} is {}", c.kind, wire_name(&c.status)),
    }
}

/// Why a VM is not as wanted, from its conditions that do not hold.
pub fn reasons(vm: &Vm) -> String {
    let texts: Vec<String> = vm
        .status
        .conditions
        .iter()
        .filter(|c| c.status != ConditionStatus::True)
        .map(|c| format!("{}: {}", c.kind, condition_text(c)))
        .collect();
    if texts.is_empty() {
        "no reason given in its conditions".into()
    } else {
        texts.join("; ")
    }
}

fn reasons_suffix(vm: &Vm) -> String {
    if vm
        .status
        .conditions
        .iter()
        .any(|c| c.status != ConditionStatus::True)
    {
        format!(" ({})", reasons(vm))
    } else {
        String::new()
    }
}

/// Waits with `--wait`, then prints the VM.
async fn finish(
    client: &ApiClient,
    name: &Name,
    wait: WaitArgs,
    want: WaitFor,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let path = format!("/api/v1/vms/{name}");
    let deadline = Instant::now() + Duration::from_secs(wait.timeout);
    let mut last: Option<(VmPhase, Option<String>)> = None;
    loop {
        let vm: Vm = client.get(&path).await?;
        if !wait.wait {
            return output::print(format, &vm, |v| render_list(std::slice::from_ref(v)));
        }
        let now = (vm.status.phase, vm.status.node.clone());
        if last.as_ref() != Some(&now) {
            let on = now
                .1
                .as_deref()
                .map_or_else(String::new, |n| format!(" on {n}"));
            eprintln!("vm {name}: {}{on}", wire_name(&now.0));
            last = Some(now);
        }
        match judge(&vm, want) {
            Seen::Done => {
                return output::print(format, &vm, |v| render_list(std::slice::from_ref(v)))
            }
            Seen::Failed(why) => bail!(why),
            Seen::Waiting => {}
        }
        if Instant::now() >= deadline {
            bail!(
                "vm {name} is still {} after {} s (waiting for {}){}",
                wire_name(&vm.status.phase),
                wait.timeout,
                wire_name(&want.phase),
                reasons_suffix(&vm)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `keel vm list`.
pub async fn list(client: &ApiClient, format: OutputFormat) -> anyhow::Result<()> {
    let vms: Items<Vm> = client.get("/api/v1/vms").await?;
    output::print(format, &vms, |v| render_list(&v.items))
}

/// `keel vm show NAME`: `-o json` prints the VM as the API returned it
/// (`{metadata, spec, status}`).
pub async fn show(client: &ApiClient, name: &Name, format: OutputFormat) -> anyhow::Result<()> {
    let vm: Vm = client.get(&format!("/api/v1/vms/{name}")).await?;
    output::print(format, &vm, render_show)
}

fn phase_cell(vm: &Vm) -> String {
    wire_name(&vm.status.phase)
}

fn ips_cell(vm: &Vm) -> String {
    if vm.status.ips.is_empty() {
        "-".into()
    } else {
        vm.status.ips.join(",")
    }
}

/// The VM table: NAME PHASE NODE CPUS MEMORY IPS.
pub fn render_list(vms: &[Vm]) -> String {
    let mut t = Table::new(["NAME", "PHASE", "NODE", "CPUS", "MEMORY", "IPS"]);
    for vm in vms {
        t.row([
            vm.metadata.name.clone(),
            phase_cell(vm),
            or_dash(vm.status.node.as_deref()),
            vm.spec.cpus.to_string(),
            vm.spec.memory.to_string(),
            ips_cell(vm),
        ]);
    }
    t.render()
}

/// One VM in detail: its fields, then disks, NICs and conditions.
pub fn render_show(vm: &Vm) -> String {
    let (spec, s) = (&vm.spec, &vm.status);
    let mut out = output::fields(&[
        ("name", vm.metadata.name.clone()),
        ("phase", phase_cell(vm)),
        ("power", wire_name(&spec.power_state)),
        ("node", or_dash(s.node.as_deref())),
        ("pinned to", or_dash(spec.placement.node.as_ref())),
        ("group", or_dash(spec.placement.group.as_ref())),
        ("cpus", format!("{} ({})", spec.cpus, spec.cpu_model)),
        ("memory", spec.memory.to_string()),
        (
            "firmware",
            spec.firmware
                .as_ref()
                .map_or_else(|| "from the image".into(), wire_name),
        ),
        ("ips", ips_cell(vm)),
        ("created", vm.metadata.created.clone()),
    ]);
    let mut disks = Table::new(["DISK", "SOURCE", "SIZE", "BUS"]);
    for d in &spec.disks {
        let (source, size) = match &d.source {
            DiskSource::Image { image, size } => (format!("image {image}"), *size),
            DiskSource::Empty { size } => ("empty".to_string(), Some(*size)),
            DiskSource::Volume { volume } => (format!("volume {volume}"), None),
        };
        disks.row([
            d.name.to_string(),
            source,
            or_dash(size),
            d.bus.as_ref().map_or_else(|| "-".into(), wire_name),
        ]);
    }
    let mut nics = Table::new(["NIC", "NETWORK", "MAC", "MODEL"]);
    for n in &spec.nics {
        nics.row([
            n.name.to_string(),
            n.network.clone(),
            or_dash(n.mac.as_ref()),
            wire_name(&n.model),
        ]);
    }
    let mut conditions = Table::new(["CONDITION", "STATUS", "REASON", "MESSAGE"]);
    for c in &s.conditions {
        conditions.row([
            c.kind.clone(),
            wire_name(&c.status),
            c.reason.clone(),
            c.message.clone(),
        ]);
    }
    for table in [disks, nics, conditions] {
        if !table.is_empty() {
            out.push('\n');
            out.push_str(&table.render());
        }
    }
    out
}

/// The group spec `--affinity`/`--anti-affinity` ask for (clap makes sure exactly one is
/// given).
pub fn group_spec(args: &VmGroupCreateArgs) -> anyhow::Result<VmGroupSpec> {
    let (policy, strength) = match (args.affinity, args.anti_affinity) {
        (Some(s), None) => (GroupPolicy::Affinity, s),
        (None, Some(s)) => (GroupPolicy::AntiAffinity, s),
        _ => bail!("give exactly one of --affinity and --anti-affinity (hard or soft)"),
    };
    Ok(VmGroupSpec { policy, strength })
}

/// `keel vm group create GROUP --anti-affinity hard|soft`.
pub async fn group_create(client: &ApiClient, args: &VmGroupCreateArgs) -> anyhow::Result<()> {
    let body = VmGroupCreate {
        metadata: NewMetadata::named(args.name.clone()),
        spec: group_spec(args)?,
    };
    let group: VmGroup = client
        .request(Method::POST, "/api/v1/vm-groups", Some(&body))
        .await?;
    output::print(args.out.output, &group, |g| {
        render_groups(std::slice::from_ref(g))
    })
}

/// `keel vm group list`.
pub async fn group_list(client: &ApiClient, format: OutputFormat) -> anyhow::Result<()> {
    let groups: Items<VmGroup> = client.get("/api/v1/vm-groups").await?;
    output::print(format, &groups, |g| render_groups(&g.items))
}

/// `keel vm group delete GROUP`.
pub async fn group_delete(client: &ApiClient, name: &Name) -> anyhow::Result<()> {
    client
        .request_empty::<()>(Method::DELETE, &format!("/api/v1/vm-groups/{name}"), None)
        .await?;
    eprintln!("deleted vm group {name}");
    Ok(())
}

/// The group table: NAME POLICY STRENGTH MEMBERS.
pub fn render_groups(groups: &[VmGroup]) -> String {
    let mut t = Table::new(["NAME", "POLICY", "STRENGTH", "MEMBERS"]);
    for g in groups {
        t.row([
            g.metadata.name.clone(),
            wire_name(&g.spec.policy),
            wire_name::<GroupStrength>(&g.spec.strength),
            if g.status.members.is_empty() {
                "-".into()
            } else {
                g.status.members.join(",")
            },
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;
    use keel_model::{Bytes, Metadata, VmGroupStatus, VmStatus};

    use crate::cli::{Cli, Command};

    fn create_args(args: &[&str]) -> Result<VmCreateArgs, clap::Error> {
        let cli = Cli::try_parse_from(["keel", "vm", "create"].iter().chain(args))?;
        match cli.command {
            Command::Vm(VmCommand::Create(a)) => Ok(*a),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_create_body_carries_firmware_iso_boot_order_and_cloud_init() {
        let dir = std::env::temp_dir().join(format!("keel-cli-ci-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let keys = dir.join("keys");
        std::fs::write(
            &keys,
            "# mine\nssh-ed25519 AAAA one\n\necdsa-sha2-nistp256 BBBB two\n",
        )
        .unwrap();
        let pw = dir.join("pw");
        std::fs::write(&pw, "hunter2\n").unwrap();
        let (keys_s, pw_s) = (keys.to_string_lossy(), pw.to_string_lossy());
        let args = create_args(&[
            "inst",
            "--image",
            "debian",
            "--cpus",
            "1",
            "--memory",
            "256MiB",
            "--firmware",
            "uefi",
            "--iso",
            "netinst",
            "--boot",
            "iso,root",
            "--hostname",
            "box",
            "--ssh-key",
            "ssh-rsa CCCC three",
            "--ssh-key",
            &keys_s,
            "--password-file",
            &pw_s,
            "--autostart",
            "false",
        ])
        .unwrap();
        let json = serde_json::to_value(create_body(&args).unwrap()).unwrap();
        let spec = &json["spec"];
        assert_eq!(spec["firmware"], "uefi");
        assert_eq!(spec["iso"], "netinst");
        assert_eq!(spec["boot_order"], serde_json::json!(["iso", "root"]));
        assert_eq!(spec["autostart"], false);
        assert_eq!(
            spec["cloud_init"],
            serde_json::json!({"hostname": "box", "password": "hunter2", "ssh_keys": [
                "ssh-rsa CCCC three", "ssh-ed25519 AAAA one", "ecdsa-sha2-nistp256 BBBB two"]})
        );
        // Checked before any request, naming the option.
        let args = create_args(&[
            "x",
            "--image",
            "d",
            "--cpus",
            "1",
            "--memory",
            "256MiB",
            "--hostname",
            "not_dns",
        ])
        .unwrap();
        let err = create_body(&args).unwrap_err().to_string();
        assert!(err.contains("--hostname"), "{err}");
        let args = create_args(&[
            "x", "--image", "d", "--cpus", "1", "--memory", "256MiB", "--boot", "cdrom",
        ])
        .unwrap();
        let err = create_body(&args).unwrap_err().to_string();
        assert!(err.contains("--boot"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_create_body_has_one_root_disk_from_the_image() {
        let args = create_args(&[
            "web", "--image", "debian", "--cpus", "2", "--memory", "256MiB",
        ])
        .unwrap();
        let body = create_body(&args).unwrap();
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["metadata"], serde_json::json!({"name": "web"}));
        assert_eq!(json["spec"]["cpus"], 2);
        assert_eq!(json["spec"]["memory"], 256 << 20);
        assert_eq!(
            json["spec"]["disks"],
            serde_json::json!([{"name": "root", "source": {"type": "image", "image": "debian"}}])
        );
        assert_eq!(json["spec"]["nics"], serde_json::json!([]));
        assert_eq!(json["spec"]["power_state"], "running");
        assert_eq!(json["spec"]["placement"], serde_json::json!({}));

        let args = create_args(&[
            "web",
            "--image",
            "debian",
            "--cpus",
            "1",
            "--memory",
            "1G",
            "--disk",
            "2GiB",
            "--node",
            "node2",
            "--group",
            "front",
            "--network",
            "br0",
            "--stopped",
        ])
        .unwrap();
        let json = serde_json::to_value(create_body(&args).unwrap()).unwrap();
        assert_eq!(
            json["spec"]["disks"][0]["source"],
            serde_json::json!({"type": "image", "image": "debian", "size": 2u64 << 30})
        );
        assert_eq!(
            json["spec"]["nics"],
            serde_json::json!([{"name": "net0", "network": "br0", "model": "virtio"}])
        );
        assert_eq!(json["spec"]["power_state"], "stopped");
        assert_eq!(
            json["spec"]["placement"],
            serde_json::json!({"node": "node2", "group": "front"})
        );
    }

    #[test]
    fn the_model_refuses_bad_bodies_before_any_request() {
        for (args, want) in [
            (
                &["--cpus", "0", "--memory", "256MiB"][..],
                "0 CPUs is out of range; use 1 to 255 (--cpus)",
            ),
            (&["--cpus", "1", "--memory", "1MiB"], "(--memory)"),
            (
                &["--cpus", "1", "--memory", "256MiB", "--disk", "0"],
                "(--disk)",
            ),
            (
                &[
                    "--cpus",
                    "1",
                    "--memory",
                    "256MiB",
                    "--network",
                    "no spaces",
                ],
                "(--network)",
            ),
        ] {
            let mut all = vec!["web", "--image", "debian"];
            all.extend_from_slice(args);
            let err = create_body(&create_args(&all).unwrap())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }

    #[test]
    fn sizes_are_parsed_by_the_model() {
        let err = create_args(&["web", "--image", "d", "--cpus", "1", "--memory", "lots"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"lots\" is not a size: it does not start with a number"),
            "{err}"
        );
        assert!(err.contains("512MiB, 2GiB"), "{err}");
        let err = create_args(&["web", "--image", "d", "--cpus", "1", "--memory", "2GB"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ambiguous"), "{err}");
        let err = create_args(&[
            "web",
            "--image",
            "d",
            "--cpus",
            "1",
            "--memory",
            "1G",
            "--disk=-1G",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("cannot be negative"), "{err}");
        let err = create_args(&["Web_1", "--image", "d", "--cpus", "1", "--memory", "1G"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a valid name"), "{err}");
        // --image, --cpus and --memory are required.
        assert!(create_args(&["web", "--cpus", "1", "--memory", "1G"]).is_err());
        assert!(create_args(&["web", "--image", "d", "--memory", "1G"]).is_err());
        assert!(create_args(&["web", "--image", "d", "--cpus", "1"]).is_err());
    }

    fn vm(phase: VmPhase) -> Vm {
        let mut spec = VmSpec::new(2, Bytes::from_mib(256));
        spec.disks = vec![VmDisk {
            name: Name::new("root").unwrap(),
            source: DiskSource::Image {
                image: Name::new("debian").unwrap(),
                size: Some(Bytes::from_gib(2)),
            },
            bus: None,
            qos: None,
        }];
        Vm {
            metadata: Metadata {
                name: "web".into(),
                version: 5,
                ..Default::default()
            },
            spec,
            status: VmStatus {
                phase,
                node: Some("node2".into()),
                observed_version: 5,
                ..Default::default()
            },
        }
    }

    fn condition(kind: &str, status: ConditionStatus, reason: &str, message: &str) -> Condition {
        Condition::new(kind, status, reason, message, "2025-01-01T00:00:00Z")
    }

    #[test]
    fn waits_end_at_the_phase_or_with_the_reason() {
        let running = WaitFor {
            phase: VmPhase::Running,
            since: 5,
            strict: false,
        };
        assert_eq!(judge(&vm(VmPhase::Running), running), Seen::Done);
        assert_eq!(judge(&vm(VmPhase::Starting), running), Seen::Waiting);

        let mut unschedulable = vm(VmPhase::Scheduling);
        unschedulable.status.conditions.push(condition(
            Condition::SCHEDULED,
            ConditionStatus::False,
            "HardAntiAffinity",
            "cannot place web: every node runs a member of group front",
        ));
        assert_eq!(
            judge(&unschedulable, running),
            Seen::Failed(
                "vm web cannot be scheduled: cannot place web: every node runs a member of \
                 group front (HardAntiAffinity)"
                    .into()
            )
        );

        let mut failed = vm(VmPhase::Failed);
        failed.status.conditions = vec![
            condition(Condition::SCHEDULED, ConditionStatus::True, "Scheduled", ""),
            condition(
                Condition::STORAGE_READY,
                ConditionStatus::False,
                "ImageMissing",
                "image debian is not on node2",
            ),
        ];
        assert_eq!(
            judge(&failed, running),
            Seen::Failed(
                "vm web is failed: StorageReady: image debian is not on node2 (ImageMissing)"
                    .into()
            )
        );
        // A failure from before the request is not its outcome.
        let stale = WaitFor {
            since: 6,
            ..running
        };
        assert_eq!(judge(&failed, stale), Seen::Waiting);
        let mut lost = vm(VmPhase::Lost);
        lost.status.conditions.clear();
        assert_eq!(
            judge(&lost, running),
            Seen::Failed("vm web is lost: no reason given in its conditions".into())
        );
    }

    #[test]
    fn power_actions_wait_for_their_phase() {
        let stopped = vm(VmPhase::Stopped);
        assert_eq!(judge(&stopped, Action::Stop.wait_for(6)), Seen::Done);
        assert_eq!(judge(&stopped, Action::Start.wait_for(6)), Seen::Waiting);
        // A stop does not fail on a stale Scheduled condition.
        let mut s = stopped.clone();
        s.status.conditions.push(condition(
            Condition::SCHEDULED,
            ConditionStatus::False,
            "NoEligibleNode",
            "x",
        ));
        assert_eq!(judge(&s, Action::Stop.wait_for(6)), Seen::Done);
        // A reboot leaves the phase running: only a status that saw the request counts.
        let running = vm(VmPhase::Running);
        assert_eq!(judge(&running, Action::Reboot.wait_for(6)), Seen::Waiting);
        assert_eq!(judge(&running, Action::Reboot.wait_for(5)), Seen::Done);
        assert_eq!(Action::Reboot.as_str(), "reboot");
    }

    #[test]
    fn tables() {
        let mut a = vm(VmPhase::Running);
        a.status.ips = vec!["10.0.0.5".into(), "fd00::5".into()];
        let mut b = vm(VmPhase::Scheduling);
        b.metadata.name = "db-1".into();
        b.status.node = None;
        b.spec.cpus = 16;
        b.spec.memory = Bytes::from_mib(1536);
        assert_eq!(
            render_list(&[a.clone(), b]),
            "NAME  PHASE       NODE   CPUS  MEMORY   IPS\n\
             web   running     node2  2     256 MiB  10.0.0.5,fd00::5\n\
             db-1  scheduling  -      16    1.5 GiB  -\n"
        );
        a.status.conditions.push(condition(
            "GuestAgentConnected",
            ConditionStatus::False,
            "NoAgent",
            "",
        ));
        let show = render_show(&a);
        assert!(show.contains("power:      running\n"), "{show}");
        assert!(show.contains("cpus:       2 (baseline)\n"), "{show}");
        assert!(show.contains("firmware:   from the image\n"), "{show}");
        assert!(
            show.contains("DISK  SOURCE        SIZE   BUS\nroot  image debian  2 GiB  -\n"),
            "{show}"
        );
        assert!(
            show.contains("GuestAgentConnected  false   NoAgent"),
            "{show}"
        );
        assert!(!show.contains("NIC"), "{show}");

        let groups = [VmGroup {
            metadata: Metadata {
                name: "front".into(),
                ..Default::default()
            },
            spec: VmGroupSpec {
                policy: GroupPolicy::AntiAffinity,
                strength: GroupStrength::Hard,
            },
            status: VmGroupStatus {
                members: vec!["web-1".into(), "web-2".into()],
            },
        }];
        assert_eq!(
            render_groups(&groups),
            "NAME   POLICY         STRENGTH  MEMBERS\nfront  anti-affinity  hard      web-1,web-2\n"
        );
    }

    #[test]
    fn group_rules() {
        let parse = |args: &[&str]| -> Result<VmGroupCreateArgs, clap::Error> {
            let cli = Cli::try_parse_from(["keel", "vm", "group", "create"].iter().chain(args))?;
            match cli.command {
                Command::Vm(VmCommand::Group(VmGroupCommand::Create(a))) => Ok(a),
                other => panic!("{other:?}"),
            }
        };
        let spec = group_spec(&parse(&["front", "--anti-affinity", "hard"]).unwrap()).unwrap();
        assert_eq!(
            (spec.policy, spec.strength),
            (GroupPolicy::AntiAffinity, GroupStrength::Hard)
        );
        let spec = group_spec(&parse(&["db", "--affinity", "soft"]).unwrap()).unwrap();
        assert_eq!(
            (spec.policy, spec.strength),
            (GroupPolicy::Affinity, GroupStrength::Soft)
        );
        assert!(parse(&["front"]).is_err());
        assert!(parse(&["front", "--affinity", "hard", "--anti-affinity", "soft"]).is_err());
        let err = parse(&["front", "--anti-affinity", "medium"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("[possible values: hard, soft]"), "{err}");
    }
}
