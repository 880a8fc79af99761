//! The command line, as clap types. Parsing only: nothing here talks to a server or the host.
//!
//! Values that the model constrains (setting keys, node names, subnets) are parsed into the
//! model's own types here, so a bad key is refused before any request is sent.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use keel_model::{Cidr, Name, SettingKey};

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

fn parse_name(s: &str) -> Result<Name, String> {
    Name::new(s).map_err(|e| e.message)
}

fn parse_setting_key(s: &str) -> Result<SettingKey, String> {
    SettingKey::new(s).map_err(|e| e.message)
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    s.parse::<Cidr>().map_err(|e| e.message)
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
        ] {
            let cli = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let out = match cli.command {
                Command::Cluster(ClusterCommand::Status(o))
                | Command::Node(NodeCommand::List(o)) => o,
                Command::Node(NodeCommand::Show { out, .. }) => out,
                Command::Setting(SettingCommand::List(o)) => o,
                Command::Setting(SettingCommand::Get { out, .. }) => out,
                Command::Bench(BenchCommand::Api(a)) => a.out,
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
    fn login_defaults_to_admin() {
        let cli = parse(&["login", "--password-stdin"]).unwrap();
        let Command::Login(a) = cli.command else {
            panic!("not login")
        };
        assert_eq!(a.username, "admin");
        assert!(a.password_stdin);
    }
}
