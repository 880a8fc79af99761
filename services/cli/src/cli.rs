//! The command line, as clap types. Parsing only: nothing here talks to a server or the host.
//!
//! Values that the model constrains (setting keys, node names, subnets) are parsed into the
//! model's own types here, so a bad key is refused before any request is sent.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use keel_model::{
    Bytes, Cidr, DiskBus, Firmware, GroupStrength, ImageFormat, Name, OsType, SettingKey,
};
use serde::de::DeserializeOwned;

/// The default API endpoint when neither `--endpoint`, `KEEL_ENDPOINT` nor a saved login names one.
pub const DEFAULT_ENDPOINT: &str = "https://127.0.0.1:8443";

/// Where `keel dev` keeps a dev cluster's state unless `--state` says otherwise.
pub const DEFAULT_DEV_STATE: &str = "/var/lib/keel-dev";

/// `keel`: the command-line client of Keel's API, the dev cluster and the benchmarks.
#[derive(Debug, Parser)]
#[command(name = "keel", version, about)]
pub struct Cli {
    /// API endpoint [default: the saved login's, else https://127.0.0.1:8443].
    #[arg(long, env = "KEEL_ENDPOINT", global = true, value_name = "URL")]
    pub endpoint: Option<String>,
    /// PEM file of the cluster CA to trust (and nothing else).
    #[arg(long, env = "KEEL_CA_CERT", global = true, value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in and save the token (with the endpoint and CA) for later commands.
    Login(LoginArgs),
    /// The cluster as a whole.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// The cluster's nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Cluster-wide settings.
    #[command(subcommand)]
    Setting(SettingCommand),
    /// The image library: disk and ISO images VMs boot from.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Virtual machines and VM groups.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Long operations (migrations): progress and cancel.
    #[command(subcommand)]
    Task(crate::commands::lifecycle::TaskCommand),
    /// Storage pools (each node's local pool) and their space.
    #[command(subcommand)]
    Pool(crate::commands::storage::PoolCommand),
    /// Volumes: VM disks and standalone virtual disks.
    #[command(subcommand)]
    Volume(crate::commands::storage::VolumeCommand),
    /// Rolling A/B upgrades of the nodes to a signed update bundle.
    #[command(subcommand)]
    Upgrade(crate::commands::upgrade::UpgradeCommand),
    /// Streams changes as they happen, one JSON object per line.
    Events(EventsArgs),
    /// Prints the API's OpenAPI document.
    Openapi,
    /// A cluster of namespaced nodes on this machine (needs root).
    Dev(DevArgs),
    /// Measures the API and the dev cluster.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// How a read command prints what it got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// The API's JSON, pretty-printed.
    Json,
}

/// `-o json|table`, shared by every read command.
#[derive(Debug, Clone, Copy, Args)]
pub struct OutputArg {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// `keel login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// User to log in as.
    #[arg(long, default_value = "admin")]
    pub username: String,
    /// Read the password from the first line of standard input (else KEEL_PASSWORD, else a
    /// prompt on the terminal).
    #[arg(long)]
    pub password_stdin: bool,
}

/// `keel cluster …`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Leader, term and members with their roles and liveness.
    Status(OutputArg),
    /// Removes a node from the cluster.
    Remove {
        /// The node to remove.
        #[arg(value_parser = parse_name)]
        node: Name,
    },
}

/// `keel node …`.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Every node with its state, role and size.
    List(OutputArg),
    /// One node's inventory: CPU, memory, disks, NICs, versions.
    Show {
        /// Node name.
        #[arg(value_parser = parse_name)]
        name: Name,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Marks a node unschedulable: no new VMs are placed on it (running ones stay).
    Cordon {
        /// Node name.
        #[arg(value_parser = parse_name)]
        name: Name,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Lets the scheduler place new VMs on a node again (and ends maintenance).
    Uncordon {
        /// Node name.
        #[arg(value_parser = parse_name)]
        name: Name,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Puts a node into maintenance: cordoned, its VMs moved away (`--wait`: until empty).
    Maintenance(crate::commands::lifecycle::MaintenanceArgs),
    /// Ends a node's maintenance: it takes VMs again.
    MaintenanceExit(crate::commands::lifecycle::MaintenanceArgs),
}

/// `--wait` and how long to wait, shared by the commands whose work is asynchronous.
#[derive(Debug, Clone, Copy, Args)]
pub struct WaitArgs {
    /// Wait until the work is done; exit non-zero if it fails or times out.
    #[arg(long)]
    pub wait: bool,
    /// Seconds to wait with `--wait`.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub timeout: u64,
}

/// `keel image …`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Creates an image: uploads a local file (chunked, resumable, checksum verified by the
    /// server), or has a node download a URL (`--url`) or copy a file of its host
    /// (`--host-path`, `--node`) in the background.
    Import(ImageImportArgs),
    /// Uploads PATH into an existing image whose source is `upload`, resuming where the
    /// server left off.
    Upload {
        /// The image.
        #[arg(value_parser = parse_name)]
        name: Name,
        /// The file to upload.
        path: PathBuf,
        /// Waiting.
        #[command(flatten)]
        wait: WaitArgs,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Every image with its phase, format, size and node.
    List(OutputArg),
    /// One image in detail.
    Show {
        /// Image name.
        #[arg(value_parser = parse_name)]
        name: Name,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Deletes an image (refused while a VM uses it).
    Delete {
        /// Image name.
        #[arg(value_parser = parse_name)]
        name: Name,
    },
}

/// `keel image import PATH --name NAME …`, `keel image import --url URL --name NAME …`,
/// `keel image import --node NODE --host-path PATH --name NAME …`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["path", "url", "host_path"])))]
pub struct ImageImportArgs {
    /// A local file to upload (qcow2, raw, ISO, vmdk or vhdx).
    pub path: Option<PathBuf>,
    /// Have a node download this http:// or https:// URL (resumed after dropped
    /// connections; HTTPS certificates checked against the node's system roots).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Have a node copy this file of its own host (an absolute path).
    #[arg(long, value_name = "PATH")]
    pub host_path: Option<String>,
    /// The node that downloads the URL or has the host path [default: the node that answers].
    #[arg(long, value_parser = parse_name, value_name = "NODE")]
    pub node: Option<Name>,
    /// Expected SHA-256 of the bytes (64 hex digits, `sha256:` prefix optional); the import
    /// fails when they differ.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// The image's name.
    #[arg(long, value_parser = parse_name)]
    pub name: Name,
    /// Firmware guests booted from the image need [default: bios].
    #[arg(long, value_parser = wire_enum::<Firmware>(&["bios", "uefi"]))]
    pub firmware: Option<Firmware>,
    /// Bus the guest has drivers for [default: virtio].
    #[arg(long, value_parser = wire_enum::<DiskBus>(&["virtio", "sata", "scsi", "ide"]))]
    pub disk_bus: Option<DiskBus>,
    /// The file's format [default: detected by the server].
    #[arg(long, value_parser = wire_enum::<ImageFormat>(&["raw", "qcow2", "iso", "vmdk", "vhdx"]))]
    pub format: Option<ImageFormat>,
    /// The guest OS family [default: other].
    #[arg(long, value_parser = wire_enum::<OsType>(&["linux", "windows", "other"]))]
    pub os_type: Option<OsType>,
    /// Waiting.
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Output format.
    #[command(flatten)]
    pub out: OutputArg,
}

/// `keel vm …`.
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Creates a VM with one disk `root` made from an image; it starts unless `--stopped`.
    Create(Box<VmCreateArgs>),
    /// Every VM with its phase, node, size and addresses.
    List(OutputArg),
    /// One VM in detail (`-o json`: the VM as the API returns it).
    Show {
        /// VM name.
        #[arg(value_parser = parse_name)]
        name: Name,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Starts a VM (`--wait`: until it runs).
    Start(VmPowerArgs),
    /// Shuts a VM down, gracefully and then by force (`--wait`: until it is stopped).
    Stop(VmPowerArgs),
    /// Reboots a VM (`--wait`: until its node has rebooted it and it runs).
    Reboot(VmPowerArgs),
    /// Powers a VM off at once, without asking the guest (`--wait`: until it is stopped).
    ForceStop(VmPowerArgs),
    /// Pauses a VM's vCPUs (`--wait`: until its node has paused it).
    Pause(VmPowerArgs),
    /// Resumes a paused VM (`--wait`: until it runs again).
    Resume(VmPowerArgs),
    /// Live-migrates a running VM (or moves a stopped one) to another node; `--wait` shows
    /// the task's progress until it is done.
    Migrate(crate::commands::lifecycle::MigrateArgs),
    /// Deletes a VM and the disks made for it (`--wait`: until it is gone).
    Delete {
        /// VM name.
        #[arg(value_parser = parse_name)]
        name: Name,
        /// Keep the VM's disks as standalone volumes.
        #[arg(long)]
        keep_disks: bool,
        /// Waiting.
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Snapshots of a VM's disks.
    #[command(subcommand)]
    Snapshot(crate::commands::storage::SnapshotCommand),
    /// Creates a VM with copies of a stopped VM's (or a template's) disks.
    Clone(crate::commands::storage::VmCloneArgs),
    /// Attaches this terminal to a VM's serial console (detach with Ctrl-]).
    Console {
        /// VM name.
        #[arg(value_parser = parse_name)]
        name: Name,
    },
    /// VM groups: affinity and anti-affinity rules.
    #[command(subcommand)]
    Group(VmGroupCommand),
    /// Changes a VM's vCPUs and memory; a running VM grows live up to its limits
    /// (`--wait`: until its node has applied it).
    Resize(crate::commands::vm_edit::ResizeArgs),
    /// Attaches and detaches disks (live on a running VM).
    #[command(subcommand)]
    Disk(crate::commands::vm_edit::DiskCommand),
    /// Attaches and detaches NICs (live on a running VM).
    #[command(subcommand)]
    Nic(crate::commands::vm_edit::NicCommand),
    /// Renames a stopped VM.
    Rename(crate::commands::vm_edit::RenameArgs),
}

/// `keel vm create NAME --image IMG --cpus N --memory SIZE …`.
#[derive(Debug, Args)]
pub struct VmCreateArgs {
    /// The VM's name.
    #[arg(value_parser = parse_name)]
    pub name: Name,
    /// The image the root disk is made from.
    #[arg(long, value_parser = parse_name, required_unless_present = "from_template")]
    pub image: Option<Name>,
    /// Make the VM from this template (a clone of its disks); --cpus and --memory are taken
    /// from the template.
    #[arg(long, value_parser = parse_name, conflicts_with_all = ["image", "disk"])]
    pub from_template: Option<Name>,
    /// Virtual CPUs.
    #[arg(
        long,
        required_unless_present = "from_template",
        conflicts_with = "from_template"
    )]
    pub cpus: Option<u32>,
    /// Memory: 256MiB, 2GiB, 1G (powers of 1024).
    #[arg(long, value_parser = parse_bytes, value_name = "SIZE", required_unless_present = "from_template", conflicts_with = "from_template")]
    pub memory: Option<Bytes>,
    /// Size of the root disk [default: the image's virtual size].
    #[arg(long, value_parser = parse_bytes, value_name = "SIZE")]
    pub disk: Option<Bytes>,
    /// Run the VM on this node only.
    #[arg(long, value_parser = parse_name)]
    pub node: Option<Name>,
    /// The VM group whose placement rule applies.
    #[arg(long, value_parser = parse_name)]
    pub group: Option<Name>,
    /// Add a NIC `net0` on this network (for now: the node bridge's name).
    #[arg(long, value_name = "NET")]
    pub network: Option<String>,
    /// Firmware [default: the image's, else bios].
    #[arg(long, value_parser = wire_enum::<Firmware>(&["bios", "uefi"]))]
    pub firmware: Option<Firmware>,
    /// Attach this ISO image (format iso) as a read-only CD-ROM.
    #[arg(long, value_parser = parse_name, value_name = "IMAGE")]
    pub iso: Option<Name>,
    /// Boot order: device names separated by commas (`root` for the disk, `iso`, `net0`)
    /// [default: the ISO if attached, then the disk].
    #[arg(long, value_delimiter = ',', value_parser = parse_name, value_name = "DEVICES")]
    pub boot: Vec<Name>,
    /// cloud-init: the guest's hostname [default: the VM's name].
    #[arg(long)]
    pub hostname: Option<String>,
    /// cloud-init: an SSH public key, or a file holding one key per line (repeatable).
    #[arg(long, value_name = "FILE_OR_KEY")]
    pub ssh_key: Vec<String>,
    /// cloud-init: a file with the default user's password (plain or a crypt(3) hash;
    /// Keel stores only a hash).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// cloud-init: a user-data file used as is (#cloud-config or a #! script).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["ssh_key", "password_file"])]
    pub user_data: Option<PathBuf>,
    /// Start the VM again when its node's host restarts (off: it is left stopped).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub autostart: bool,
    /// Create the VM without starting it.
    #[arg(long)]
    pub stopped: bool,
    /// Waiting.
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Output format.
    #[command(flatten)]
    pub out: OutputArg,
}

/// `keel vm start|stop|reboot NAME [--wait]`.
#[derive(Debug, Args)]
pub struct VmPowerArgs {
    /// VM name.
    #[arg(value_parser = parse_name)]
    pub name: Name,
    /// Waiting.
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Output format.
    #[command(flatten)]
    pub out: OutputArg,
}

/// `keel vm group …`.
#[derive(Debug, Subcommand)]
pub enum VmGroupCommand {
    /// Creates a group with an affinity or anti-affinity rule.
    Create(VmGroupCreateArgs),
    /// Every group with its rule and members.
    List(OutputArg),
    /// Deletes a group.
    Delete {
        /// Group name.
        #[arg(value_parser = parse_name)]
        name: Name,
    },
}

/// `keel vm group create GROUP --anti-affinity hard|soft` (or `--affinity hard|soft`).
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("rule").required(true).args(["affinity", "anti_affinity"])))]
pub struct VmGroupCreateArgs {
    /// Group name.
    #[arg(value_parser = parse_name)]
    pub name: Name,
    /// Keep the members on one node: hard (never break the rule) or soft (a preference).
    #[arg(long, value_name = "STRENGTH", value_parser = wire_enum::<GroupStrength>(&["hard", "soft"]))]
    pub affinity: Option<GroupStrength>,
    /// Keep the members on different nodes: hard (refuse a VM that cannot be) or soft.
    #[arg(long, value_name = "STRENGTH", value_parser = wire_enum::<GroupStrength>(&["hard", "soft"]))]
    pub anti_affinity: Option<GroupStrength>,
    /// Output format.
    #[command(flatten)]
    pub out: OutputArg,
}

/// `keel setting …`.
#[derive(Debug, Subcommand)]
pub enum SettingCommand {
    /// Every setting.
    List(OutputArg),
    /// One setting.
    Get {
        /// Setting key.
        #[arg(value_parser = parse_setting_key)]
        key: SettingKey,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Creates or updates a setting. VALUE is JSON if it parses as JSON, else a string.
    Set {
        /// Setting key.
        #[arg(value_parser = parse_setting_key)]
        key: SettingKey,
        /// The value: `42`, `true`, `{"a":1}`, or any other text for a string.
        #[arg(allow_hyphen_values = true)]
        value: String,
        /// Only write if the stored version still equals this (0: only if it does not exist).
        #[arg(long)]
        version: Option<u64>,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Deletes a setting.
    Delete {
        /// Setting key.
        #[arg(value_parser = parse_setting_key)]
        key: SettingKey,
        /// Only delete if the stored version still equals this.
        #[arg(long)]
        version: Option<u64>,
    },
}

/// `keel events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Start after this store revision (default: only changes from now on).
    #[arg(long, value_name = "REV")]
    pub since: Option<u64>,
}

/// `keel dev …`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// The dev cluster's state directory; host object names derive from it.
    #[arg(long, global = true, default_value = DEFAULT_DEV_STATE, value_name = "DIR")]
    pub state: PathBuf,
    /// What to do with the dev cluster.
    #[command(subcommand)]
    pub command: DevCommand,
}

/// `keel dev up`'s options (also used by `keel bench cluster`).
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// How many nodes to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=32))]
    pub nodes: u32,
    /// IPv4 subnet of the bridge; the host takes .1, nodeN takes .(10+N).
    #[arg(long, default_value = "10.77.0.0/24", value_parser = parse_cidr)]
    pub subnet: Cidr,
    /// Host address to forward to the cluster's API.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub forward: SocketAddr,
    /// The keeld binary [default: next to this keel, or KEEL_KEELD].
    #[arg(long, env = "KEEL_KEELD", value_name = "PATH")]
    pub keeld: Option<PathBuf>,
    /// Seconds to wait for the cluster to form.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

/// `keel dev up`'s own options besides [`UpArgs`].
#[derive(Debug, Clone, Args)]
pub struct DevUpArgs {
    /// The cluster.
    #[command(flatten)]
    pub up: UpArgs,
    /// Start no libvirt daemons on the nodes (for hosts without libvirt; the default starts
    /// them when libvirtd is installed).
    #[arg(long)]
    pub no_libvirt: bool,
}

/// The `keel dev` commands.
#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Creates the namespaces, starts keeld and a libvirt of its own in each, waits for the
    /// cluster to form and every libvirt to answer, and prints one JSON object (endpoint,
    /// nodes, credentials, CA) on stdout.
    Up(DevUpArgs),
    /// Removes everything `up` made: processes (keeld, libvirt daemons, guests), namespaces
    /// and their mounts, links, the forwarder.
    Down,
    /// Stops a node's keeld (SIGTERM; its libvirt and guests keep running); `--kill` kills
    /// every process of the node at once, libvirt daemons and guests included.
    Stop {
        /// Node name.
        node: String,
        /// Kill every process in the node's namespaces with SIGKILL, like a power cut.
        #[arg(long)]
        kill: bool,
    },
    /// Starts a stopped node's keeld again in its namespaces.
    Start {
        /// Node name.
        node: String,
    },
    /// Runs a command inside a node's network and mount namespaces.
    Exec {
        /// Node name.
        node: String,
        /// The command and its arguments (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Adds a node to the running dev cluster, at the next address.
    Add {
        /// The new node's name.
        #[arg(value_parser = parse_name)]
        name: Name,
        /// Join secret to put in its answer file instead of the cluster's.
        #[arg(long)]
        join_secret: Option<String>,
        /// Start no libvirt daemons on the node (for hosts without libvirt).
        #[arg(long)]
        no_libvirt: bool,
        /// Wait until the cluster reports the node ready.
        #[arg(long)]
        wait: bool,
        /// Seconds to wait with `--wait`.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// What the dev cluster consists of and what runs in it, as JSON.
    Status,
    /// TCP forwarder from the host to the first node that accepts (started by `up`).
    #[command(hide = true)]
    Forward {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
    },
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Setting write and read latency against the configured endpoint.
    Api(BenchApiArgs),
    /// Formation time, leader failover time and keeld memory on a fresh dev cluster.
    Cluster(BenchClusterArgs),
    /// VM create → running against `virsh create`, many VMs at once, and keeld memory per VM,
    /// on a fresh dev cluster with libvirt.
    Vm(BenchVmArgs),
}

/// `keel bench vm`.
#[derive(Debug, Clone, Args)]
pub struct BenchVmArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=32))]
    pub nodes: u32,
    /// The guest disk every VM boots (`tests/guest/build.sh target/guest` builds it).
    #[arg(long, default_value = "target/guest/disk.raw", value_name = "PATH")]
    pub image: PathBuf,
    /// Side-by-side runs of API create against `virsh create`.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// VMs created at once.
    #[arg(long, default_value_t = 50)]
    pub count: u32,
    /// Memory of each VM.
    #[arg(long, default_value = "64MiB")]
    pub memory: String,
    /// Seconds the concurrent VMs get to reach running.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// State directory of the benchmark's own dev cluster.
    #[arg(long, default_value = "/var/lib/keel-bench-vm", value_name = "DIR")]
    pub state: PathBuf,
    /// Subnet of the benchmark's cluster.
    #[arg(long, default_value = "10.77.251.0/24", value_parser = parse_cidr)]
    pub subnet: Cidr,
    /// Forward address of the benchmark's cluster.
    #[arg(long, default_value = "127.0.0.1:18460")]
    pub forward: SocketAddr,
    /// The keeld binary [default: next to this keel, or KEEL_KEELD].
    #[arg(long, env = "KEEL_KEELD", value_name = "PATH")]
    pub keeld: Option<PathBuf>,
    /// Output format.
    #[command(flatten)]
    pub out: OutputArg,
}

/// `keel bench api`.
#[derive(Debug, Clone, Args)]
pub struct BenchApiArgs {
    /// Setting writes per pass.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub writes: u32,
    /// Setting reads per pass.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    pub reads: u32,
    /// Output format.
    #[command(flatten)]
    pub out: OutputArg,
}

/// `keel bench cluster`.
#[derive(Debug, Clone, Args)]
pub struct BenchClusterArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=32))]
    pub nodes: u32,
    /// State directory of the benchmark's own dev cluster.
    #[arg(long, default_value = "/var/lib/keel-bench", value_name = "DIR")]
    pub state: PathBuf,
    /// Subnet of the benchmark's cluster (apart from a `keel dev up` one).
    #[arg(long, default_value = "10.77.250.0/24", value_parser = parse_cidr)]
    pub subnet: Cidr,
    /// Forward address of the benchmark's cluster.
    #[arg(long, default_value = "127.0.0.1:18450")]
    pub forward: SocketAddr,
    /// The keeld binary [default: next to this keel, or KEEL_KEELD].
    #[arg(long, env = "KEEL_KEELD", value_name = "PATH")]
    pub keeld: Option<PathBuf>,
    /// Setting writes of the API pass run on the formed cluster.
    #[arg(long, default_value_t = 500)]
    pub writes: u32,
    /// Setting reads of the API pass run on the formed cluster.
    #[arg(long, default_value_t = 2000)]
    pub reads: u32,
    /// Output format.
    #[command(flatten)]
    pub out: OutputArg,
}

pub(crate) fn parse_name(s: &str) -> Result<Name, String> {
    Name::new(s).map_err(|e| e.message)
}

fn parse_setting_key(s: &str) -> Result<SettingKey, String> {
    SettingKey::new(s).map_err(|e| e.message)
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    s.parse::<Cidr>().map_err(|e| e.message)
}

/// A size the model's way (`256MiB`, `2G`); "lots" is refused with the accepted forms.
fn parse_bytes(s: &str) -> Result<Bytes, String> {
    s.parse::<Bytes>().map_err(|e| e.message)
}

/// A parser of a model enum that offers `values` (its wire spellings) and decodes the chosen
/// one with serde, so the CLI spells it exactly as the API does.
fn wire_enum<T>(values: &'static [&'static str]) -> impl TypedValueParser<Value = T>
where
    T: DeserializeOwned + Clone + Send + Sync + 'static,
{
    PossibleValuesParser::new(values).try_map(|s: String| {
        serde_json::from_value::<T>(serde_json::Value::String(s)).map_err(|e| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("keel").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_tree_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_before_or_after_the_command() {
        let cli = parse(&[
            "--endpoint",
            "https://h:1",
            "cluster",
            "status",
            "--ca-cert",
            "/c.pem",
        ])
        .unwrap();
        assert_eq!(cli.endpoint.as_deref(), Some("https://h:1"));
        assert_eq!(cli.ca_cert, Some(PathBuf::from("/c.pem")));
        assert!(matches!(
            cli.command,
            Command::Cluster(ClusterCommand::Status(OutputArg {
                output: OutputFormat::Table
            }))
        ));
    }

    #[test]
    fn read_commands_take_output() {
        for args in [
            &["cluster", "status", "-o", "json"][..],
            &["node", "list", "-o", "json"],
            &["node", "show", "node1", "-o", "json"],
            &["setting", "list", "--output", "json"],
            &["setting", "get", "a.b", "-o", "json"],
            &["bench", "api", "-o", "json"],
            &["image", "list", "-o", "json"],
            &["image", "show", "debian", "-o", "json"],
            &["vm", "list", "-o", "json"],
            &["vm", "show", "web", "-o", "json"],
            &["vm", "group", "list", "-o", "json"],
        ] {
            let cli = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let out = match cli.command {
                Command::Cluster(ClusterCommand::Status(o))
                | Command::Node(NodeCommand::List(o)) => o,
                Command::Node(NodeCommand::Show { out, .. }) => out,
                Command::Setting(SettingCommand::List(o)) => o,
                Command::Setting(SettingCommand::Get { out, .. }) => out,
                Command::Bench(BenchCommand::Api(a)) => a.out,
                Command::Image(ImageCommand::List(o))
                | Command::Vm(VmCommand::List(o))
                | Command::Vm(VmCommand::Group(VmGroupCommand::List(o))) => o,
                Command::Image(ImageCommand::Show { out, .. })
                | Command::Vm(VmCommand::Show { out, .. }) => out,
                other => panic!("{other:?}"),
            };
            assert_eq!(out.output, OutputFormat::Json, "{args:?}");
        }
        assert!(parse(&["node", "list", "-o", "yaml"]).is_err());
    }

    #[test]
    fn setting_set_takes_version_and_hyphenated_values() {
        let cli = parse(&["setting", "set", "a.b", "-5", "--version", "3"]).unwrap();
        match cli.command {
            Command::Setting(SettingCommand::Set {
                key,
                value,
                version,
                ..
            }) => {
                assert_eq!(key.as_str(), "a.b");
                assert_eq!(value, "-5");
                assert_eq!(version, Some(3));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_keys_and_names_are_refused_before_any_request() {
        let err = parse(&["setting", "get", "Bad Key"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a valid setting key"), "{err}");
        let err = parse(&["node", "show", "Node_1"]).unwrap_err().to_string();
        assert!(err.contains("not a valid name"), "{err}");
        assert!(parse(&["dev", "up", "--subnet", "10.0.0.0"]).is_err());
    }

    #[test]
    fn dev_state_may_follow_the_subcommand() {
        let cli = parse(&["dev", "stop", "node2", "--kill", "--state", "/tmp/x"]).unwrap();
        let Command::Dev(dev) = cli.command else {
            panic!("not dev")
        };
        assert_eq!(dev.state, PathBuf::from("/tmp/x"));
        assert!(
            matches!(dev.command, DevCommand::Stop { ref node, kill: true } if node == "node2")
        );

        let cli = parse(&["dev", "up"]).unwrap();
        let Command::Dev(dev) = cli.command else {
            panic!("not dev")
        };
        assert_eq!(dev.state, PathBuf::from(DEFAULT_DEV_STATE));
        let DevCommand::Up(DevUpArgs { up, no_libvirt }) = dev.command else {
            panic!("not up")
        };
        assert_eq!(up.nodes, 3);
        assert_eq!(up.subnet.to_string(), "10.77.0.0/24");
        assert_eq!(up.forward, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(up.timeout, 60);
        assert!(!no_libvirt);

        let cli = parse(&["dev", "up", "--no-libvirt", "--nodes", "2"]).unwrap();
        let Command::Dev(dev) = cli.command else {
            panic!("not dev")
        };
        assert!(
            matches!(dev.command, DevCommand::Up(DevUpArgs { ref up, no_libvirt: true }) if up.nodes == 2)
        );
        let cli = parse(&["dev", "add", "node4", "--no-libvirt"]).unwrap();
        let Command::Dev(dev) = cli.command else {
            panic!("not dev")
        };
        assert!(matches!(
            dev.command,
            DevCommand::Add {
                no_libvirt: true,
                ..
            }
        ));
    }

    #[test]
    fn dev_exec_passes_everything_after_the_separator() {
        let cli = parse(&[
            "dev", "exec", "node2", "--", "ip", "-o", "addr", "--state", "x",
        ])
        .unwrap();
        let Command::Dev(dev) = cli.command else {
            panic!("not dev")
        };
        assert_eq!(dev.state, PathBuf::from(DEFAULT_DEV_STATE));
        let DevCommand::Exec { node, command } = dev.command else {
            panic!("not exec")
        };
        assert_eq!(node, "node2");
        assert_eq!(command, ["ip", "-o", "addr", "--state", "x"]);
    }

    #[test]
    fn dev_add_options() {
        let cli = parse(&["dev", "add", "node4", "--join-secret", "s3cr3t", "--wait"]).unwrap();
        let Command::Dev(dev) = cli.command else {
            panic!("not dev")
        };
        let DevCommand::Add {
            name,
            join_secret,
            wait,
            ..
        } = dev.command
        else {
            panic!("not add")
        };
        assert_eq!(name.as_str(), "node4");
        assert_eq!(join_secret.as_deref(), Some("s3cr3t"));
        assert!(wait);
        assert!(parse(&["dev", "up", "--nodes", "0"]).is_err());
    }

    #[test]
    fn image_forms() {
        let cli = parse(&[
            "image",
            "import",
            "/tmp/d.qcow2",
            "--name",
            "debian",
            "--wait",
        ])
        .unwrap();
        let Command::Image(ImageCommand::Import(a)) = cli.command else {
            panic!("not import")
        };
        assert_eq!(a.path, Some(PathBuf::from("/tmp/d.qcow2")));
        assert_eq!(a.name.as_str(), "debian");
        assert_eq!((a.format, a.os_type), (None, None));
        assert!(a.wait.wait);
        assert_eq!(a.wait.timeout, 300);
        assert_eq!(a.out.output, OutputFormat::Table);

        for (text, format) in [
            ("raw", ImageFormat::Raw),
            ("qcow2", ImageFormat::Qcow2),
            ("iso", ImageFormat::Iso),
            ("vmdk", ImageFormat::Vmdk),
            ("vhdx", ImageFormat::Vhdx),
        ] {
            let cli = parse(&["image", "import", "f", "--name", "x", "--format", text]).unwrap();
            let Command::Image(ImageCommand::Import(a)) = cli.command else {
                panic!("not import")
            };
            assert_eq!(a.format, Some(format));
        }
        for (text, os) in [
            ("linux", OsType::Linux),
            ("windows", OsType::Windows),
            ("other", OsType::Other),
        ] {
            let cli = parse(&["image", "import", "f", "--name", "x", "--os-type", text]).unwrap();
            let Command::Image(ImageCommand::Import(a)) = cli.command else {
                panic!("not import")
            };
            assert_eq!(a.os_type, Some(os));
        }
        let err = parse(&["image", "import", "f", "--name", "x", "--format", "vdi"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[possible values: raw, qcow2, iso, vmdk, vhdx]"),
            "{err}"
        );
        assert!(
            parse(&["image", "import", "f"]).is_err(),
            "--name is required"
        );

        let cli = parse(&["image", "upload", "debian", "/tmp/d.qcow2"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Image(ImageCommand::Upload { ref name, ref path, wait, .. })
                if name.as_str() == "debian" && path == &PathBuf::from("/tmp/d.qcow2") && !wait.wait
        ));
        let cli = parse(&["image", "delete", "debian"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Image(ImageCommand::Delete { ref name }) if name.as_str() == "debian"
        ));
        assert!(parse(&["image", "show", "Debian"]).is_err());
    }

    #[test]
    fn vm_create_boot_config_forms() {
        let cli = parse(&[
            "vm",
            "create",
            "inst",
            "--image",
            "debian",
            "--cpus",
            "1",
            "--memory",
            "512MiB",
            "--firmware",
            "uefi",
            "--iso",
            "netinst",
            "--boot",
            "iso,root",
            "--hostname",
            "h1",
            "--ssh-key",
            "ssh-ed25519 AAAA k",
            "--ssh-key",
            "/tmp/keys",
            "--password-file",
            "/tmp/pw",
            "--autostart",
            "false",
        ])
        .unwrap();
        let Command::Vm(VmCommand::Create(a)) = cli.command else {
            panic!("not create")
        };
        assert_eq!(a.firmware, Some(Firmware::Uefi));
        assert_eq!(a.iso.as_ref().map(Name::as_str), Some("netinst"));
        let boot: Vec<&str> = a.boot.iter().map(Name::as_str).collect();
        assert_eq!(boot, ["iso", "root"]);
        assert_eq!(a.hostname.as_deref(), Some("h1"));
        assert_eq!(a.ssh_key, ["ssh-ed25519 AAAA k", "/tmp/keys"]);
        assert!(a.password_file.is_some() && !a.autostart);
        let cli = parse(&[
            "vm", "create", "b", "--image", "d", "--cpus", "1", "--memory", "1G",
        ])
        .unwrap();
        let Command::Vm(VmCommand::Create(a)) = cli.command else {
            panic!("not create")
        };
        assert!(a.autostart && a.firmware.is_none() && a.boot.is_empty());
        assert!(parse(&[
            "vm",
            "create",
            "b",
            "--image",
            "d",
            "--cpus",
            "1",
            "--memory",
            "1G",
            "--firmware",
            "efi",
        ])
        .is_err());
        assert!(parse(&[
            "vm",
            "create",
            "b",
            "--image",
            "d",
            "--cpus",
            "1",
            "--memory",
            "1G",
            "--user-data",
            "/u",
            "--ssh-key",
            "ssh-rsa A",
        ])
        .is_err());
    }

    #[test]
    fn vm_forms() {
        let cli = parse(&[
            "vm", "create", "web", "--image", "debian", "--cpus", "2", "--memory", "256MiB",
            "--disk", "2GiB", "--node", "node2", "--group", "front", "--wait",
        ])
        .unwrap();
        let Command::Vm(VmCommand::Create(a)) = cli.command else {
            panic!("not create")
        };
        assert_eq!(a.name.as_str(), "web");
        assert_eq!(a.image.as_ref().map(|i| i.as_str()), Some("debian"));
        assert_eq!(a.cpus, Some(2));
        assert_eq!(a.memory, Some(Bytes::from_mib(256)));
        assert_eq!(a.disk, Some(Bytes::from_gib(2)));
        assert_eq!(a.node.as_ref().map(Name::as_str), Some("node2"));
        assert_eq!(a.group.as_ref().map(Name::as_str), Some("front"));
        assert_eq!(a.network, None);
        assert!(a.wait.wait && !a.stopped);

        let cli = parse(&[
            "vm",
            "create",
            "web",
            "--image",
            "debian",
            "--cpus",
            "1",
            "--memory",
            "1G",
            "--stopped",
            "--network",
            "br0",
        ])
        .unwrap();
        let Command::Vm(VmCommand::Create(a)) = cli.command else {
            panic!("not create")
        };
        assert!(a.stopped && !a.wait.wait);
        assert_eq!((a.disk, a.node, a.group), (None, None, None));
        assert_eq!(a.network.as_deref(), Some("br0"));

        let err = parse(&[
            "vm", "create", "web", "--image", "d", "--cpus", "1", "--memory", "lots",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("\"lots\" is not a size"), "{err}");

        let cli = parse(&["vm", "show", "web", "-o", "json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Vm(VmCommand::Show { ref name, out: OutputArg { output: OutputFormat::Json } })
                if name.as_str() == "web"
        ));
        for action in ["start", "stop", "reboot"] {
            let cli = parse(&["vm", action, "web", "--wait", "--timeout", "30"]).unwrap();
            let (Command::Vm(VmCommand::Start(a))
            | Command::Vm(VmCommand::Stop(a))
            | Command::Vm(VmCommand::Reboot(a))) = cli.command
            else {
                panic!("{action}: not a power action")
            };
            assert_eq!(a.name.as_str(), "web");
            assert!(a.wait.wait);
            assert_eq!(a.wait.timeout, 30);
        }
        let cli = parse(&["vm", "stop", "web"]).unwrap();
        assert!(matches!(cli.command, Command::Vm(VmCommand::Stop(ref a)) if !a.wait.wait));
        let cli = parse(&["vm", "delete", "web", "--wait"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Vm(VmCommand::Delete { ref name, wait, .. }) if name.as_str() == "web" && wait.wait
        ));
    }

    #[test]
    fn vm_group_and_cordon_forms() {
        for (flag, strength) in [("hard", GroupStrength::Hard), ("soft", GroupStrength::Soft)] {
            let cli = parse(&["vm", "group", "create", "front", "--anti-affinity", flag]).unwrap();
            let Command::Vm(VmCommand::Group(VmGroupCommand::Create(a))) = cli.command else {
                panic!("not group create")
            };
            assert_eq!(a.name.as_str(), "front");
            assert_eq!((a.anti_affinity, a.affinity), (Some(strength), None));
            let cli = parse(&["vm", "group", "create", "db", "--affinity", flag]).unwrap();
            let Command::Vm(VmCommand::Group(VmGroupCommand::Create(a))) = cli.command else {
                panic!("not group create")
            };
            assert_eq!((a.anti_affinity, a.affinity), (None, Some(strength)));
        }
        assert!(parse(&["vm", "group", "create", "front"]).is_err());
        assert!(parse(&[
            "vm",
            "group",
            "create",
            "f",
            "--affinity",
            "hard",
            "--anti-affinity",
            "hard"
        ])
        .is_err());
        let cli = parse(&["vm", "group", "delete", "front"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Vm(VmCommand::Group(VmGroupCommand::Delete { ref name })) if name.as_str() == "front"
        ));

        let cli = parse(&["node", "cordon", "node2"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Node(NodeCommand::Cordon { ref name, .. }) if name.as_str() == "node2"
        ));
        let cli = parse(&["node", "uncordon", "node2", "-o", "json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Node(NodeCommand::Uncordon { ref name, out: OutputArg { output: OutputFormat::Json } })
                if name.as_str() == "node2"
        ));
        assert!(parse(&["node", "cordon", "Node_2"]).is_err());
    }

    #[test]
    fn login_defaults_to_admin() {
        let cli = parse(&["login", "--password-stdin"]).unwrap();
        let Command::Login(a) = cli.command else {
            panic!("not login")
        };
        assert_eq!(a.username, "admin");
        assert!(a.password_stdin);
    }
}
