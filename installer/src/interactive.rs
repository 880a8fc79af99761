//! The interactive text installer: `keel-install` on a terminal (or `keel-install interactive`).
//!
//! ```text
//!  gather facts (disks + what they hold, NICs, image size, a new join secret)
//!    ─▶ Dialogue::run: disk ─▶ typed confirmation (data / Keel install) ─▶ found | join
//!       ─▶ node name ─▶ management NIC, address, gateway, DNS ─▶ summary ─▶ "yes"
//!    ─▶ Plan { target, force, answer } ─▶ install::install_with_answer (the unattended path)
//! ```
//! Plain lines in, plain lines out: it works on a serial console. The dialogue only reads and
//! writes its reader/writer and returns a [`Plan`]; nothing touches a disk until the caller
//! installs the plan, so end of input (Ctrl-D) at any prompt leaves everything as it was.
//! Every answer is checked where it is given (the answer-file rules come from keel-model's
//! [`AnswerFile::validate`]) and asked again with what was wrong and how to fix it.

use std::io::{self, BufRead, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use keel_model::{
    AdminSection, AnswerFile, Cidr, ClusterSection, MacAddr, ManagementNetwork, Name,
    NetworkSection, NodeSection, ANSWER_FILE_VERSION,
};

use crate::disks::{self, Disk};
use crate::probe::{self, Contents};

/// `expected_nodes` of a node that joins an existing cluster: the largest value, so it never
/// founds a cluster of its own while it waits to hear a member of the one it joins.
pub const JOIN_EXPECTED_NODES: u32 = 64;

/// A disk offered for the install, with what the installer found on it.
#[derive(Debug, Clone)]
pub struct DiskChoice {
    /// The disk (from sysfs, or the `--target` given).
    pub disk: Disk,
    /// What it holds, or why it could not be read.
    pub contents: std::result::Result<Contents, String>,
    /// Why it must not be written (mounted, swap, held), if so.
    pub in_use: Option<String>,
    /// A regular file: it grows to the image's size, so it is never too small.
    pub grows: bool,
}

/// A network interface of this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// Kernel name (`eth0`, `enp3s0`).
    pub name: String,
    /// MAC address, lower case.
    pub mac: String,
    /// Its addresses now (e.g. from DHCP on the live system).
    pub addresses: Vec<Cidr>,
    /// The default gateway through it, if any.
    pub gateway: Option<IpAddr>,
}

/// What the dialogue needs to know about the machine; gathered by [`gather`].
#[derive(Debug, Clone)]
pub struct Facts {
    /// The image to write.
    pub image: PathBuf,
    /// Its size.
    pub image_bytes: u64,
    /// The disks to choose from.
    pub disks: Vec<DiskChoice>,
    /// The disk was given on the command line: no choice, only the confirmation.
    pub preselected: bool,
    /// The network interfaces.
    pub nics: Vec<Nic>,
    /// DNS servers the live system uses (offered as the default).
    pub dns: Vec<IpAddr>,
    /// A freshly generated join secret, shown when founding a cluster.
    pub new_secret: String,
}

/// What to install, as answered.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The disk.
    pub target: PathBuf,
    /// The disk holds something and the person typed its name to erase it.
    pub force: bool,
    /// The answer file.
    pub answer: AnswerFile,
    /// The answer file as written to the data partition.
    pub answer_text: String,
}

/// Why the dialogue ended without a plan. Nothing was written in any case.
#[derive(Debug, thiserror::Error)]
pub enum DialogueError {
    /// End of input (Ctrl-D), or Ctrl-C at a password prompt.
    #[error("aborted (end of input or Ctrl-C): nothing was written")]
    Aborted,
    /// The person answered "no" at the final confirmation.
    #[error("not confirmed: nothing was written")]
    Declined,
    /// No disk can take the image.
    #[error("no disk to install on: {0}")]
    NoDisk(String),
    /// Reading the answers or writing the prompts failed.
    #[error("terminal: {0}")]
    Io(#[from] io::Error),
    /// The answers did not make a valid answer file (a bug: every answer is checked).
    #[error("the answers do not make a valid answer file: {0}")]
    Invalid(String),
}

type Result<T> = std::result::Result<T, DialogueError>;

/// Reads a password. Swappable: a terminal with echo off, stdin as is (tests, pipes), or a
/// script.
pub trait Passwords {
    /// Writes `prompt` to `out` and reads one password line from `input` (or elsewhere);
    /// `None` at end of input.
    fn read_password(
        &mut self,
        prompt: &str,
        input: &mut dyn BufRead,
        out: &mut dyn Write,
    ) -> io::Result<Option<String>>;
}

fn prompt_on(out: &mut dyn Write, prompt: &str) -> io::Result<()> {
    write!(out, "{prompt}: ")?;
    out.flush()
}

/// Passwords are plain lines of the input (`--passwords-from-stdin`, tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct Echoed;

impl Passwords for Echoed {
    fn read_password(
        &mut self,
        prompt: &str,
        input: &mut dyn BufRead,
        out: &mut dyn Write,
    ) -> io::Result<Option<String>> {
        prompt_on(out, prompt)?;
        read_line(input)
    }
}

/// Passwords are typed on the terminal on stdin with echo off. Signals are off too while
/// the password is typed, so Ctrl-C cannot leave the terminal without echo: a line with
/// Ctrl-C in it aborts like Ctrl-D. Echo goes off before the prompt is shown, so nothing
/// typed after the prompt is ever echoed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Terminal;

impl Passwords for Terminal {
    fn read_password(
        &mut self,
        prompt: &str,
        input: &mut dyn BufRead,
        out: &mut dyn Write,
    ) -> io::Result<Option<String>> {
        use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
        use std::os::fd::AsFd;
        let stdin = io::stdin();
        let fd = stdin.as_fd();
        let saved = tcgetattr(fd).map_err(io::Error::from)?;
        let mut quiet = saved.clone();
        quiet
            .local_flags
            .remove(LocalFlags::ECHO | LocalFlags::ISIG);
        tcsetattr(fd, SetArg::TCSAFLUSH, &quiet).map_err(io::Error::from)?;
        let line = prompt_on(out, prompt).and_then(|()| read_line(input));
        let restored = tcsetattr(fd, SetArg::TCSANOW, &saved).map_err(io::Error::from);
        let line = line?;
        restored?;
        Ok(line.filter(|l| !l.contains('\u{3}')))
    }
}

fn read_line(input: &mut dyn BufRead) -> io::Result<Option<String>> {
    let mut s = String::new();
    if input.read_line(&mut s)? == 0 {
        return Ok(None);
    }
    while s.ends_with('\n') || s.ends_with('\r') {
        s.pop();
    }
    Ok(Some(s))
}

/// The dialogue: prompts on `out`, answers from `input`, passwords from `passwords`.
pub struct Dialogue<R, W, P> {
    input: R,
    out: W,
    passwords: P,
}

enum Mode {
    Found { expected: u32, secret: String },
    Join { member: IpAddr, secret: String },
}

struct Network {
    interface: Option<String>,
    mac: Option<String>,
    address: Cidr,
    gateway: Option<IpAddr>,
    dns: Vec<IpAddr>,
}

impl<R: BufRead, W: Write, P: Passwords> Dialogue<R, W, P> {
    /// A dialogue over these streams.
    pub fn new(input: R, out: W, passwords: P) -> Self {
        Self {
            input,
            out,
            passwords,
        }
    }

    /// Asks everything and returns what to install. Writes nothing anywhere but `out`.
    pub fn run(&mut self, facts: &Facts) -> Result<Plan> {
        writeln!(
            self.out,
            "Keel installer. Ctrl-D at any prompt stops it; nothing is written before the final \"yes\"."
        )?;
        writeln!(
            self.out,
            "Image: {} ({})",
            facts.image.display(),
            disks::human(facts.image_bytes)
        )?;
        let (disk, force) = self.choose_disk(facts)?;
        let found = self.ask_mode()?;
        let cluster = self.ask_valid(
            if found {
                "\nCluster name (lowercase letters, digits and '-', e.g. lab)"
            } else {
                "\nName of the cluster to join (as its nodes show it)"
            },
            None,
            |s| Name::new(s).map_err(|e| e.message),
        )?;
        let (mode, password) = if found {
            let expected = self.ask_valid(
                "Nodes that form the cluster at first (1 to 64; 3 for a standard box)",
                Some("3"),
                check_expected,
            )?;
            let password = self.ask_password(
                "Admin password for the cluster (at least 8 characters, not shown)",
                &cluster,
            )?;
            writeln!(
                self.out,
                "\nJoin secret (generated; the other nodes need it to join, so note it down):\n    {}",
                facts.new_secret
            )?;
            (
                Mode::Found {
                    expected,
                    secret: facts.new_secret.clone(),
                },
                password,
            )
        } else {
            let member = self.ask_valid(
                "Address of one of its nodes (e.g. 10.0.0.11)",
                None,
                check_member,
            )?;
            let secret = self.ask_valid(
                "Its join secret (shown when the cluster was founded)",
                None,
                |s| {
                    let s = s.to_string();
                    model_check(|a| a.cluster.join_secret = s.clone()).map(|()| s)
                },
            )?;
            let password = self.ask_password(
                "The cluster's admin password (kept in the answer file in case the cluster must be recreated; not shown)",
                &cluster,
            )?;
            (Mode::Join { member, secret }, password)
        };
        let node = self.ask_valid(
            "\nThis node's name (unique in the cluster, e.g. node1)",
            None,
            |s| Name::new(s).map_err(|e| e.message),
        )?;
        let member = match &mode {
            Mode::Join { member, .. } => Some(*member),
            Mode::Found { .. } => None,
        };
        let net = self.ask_network(facts, member)?;
        let (expected, secret) = match &mode {
            Mode::Found { expected, secret } => (*expected, secret.clone()),
            Mode::Join { secret, .. } => (JOIN_EXPECTED_NODES, secret.clone()),
        };
        let answer = AnswerFile {
            version: ANSWER_FILE_VERSION,
            cluster: ClusterSection {
                name: cluster.clone(),
                expected_nodes: expected,
                join_secret: secret.clone(),
            },
            admin: AdminSection { password },
            node: NodeSection { name: node.clone() },
            network: NetworkSection {
                management: ManagementNetwork {
                    interface: net.interface.clone(),
                    mac: net.mac.clone(),
                    address: net.address,
                    gateway: net.gateway,
                    dns: net.dns.clone(),
                },
            },
        };
        answer
            .validate()
            .map_err(|e| DialogueError::Invalid(e.to_string()))?;
        let mut answer_text =
            String::from("# Written by keel-install (interactive). See docs/IMAGE.md.\n");
        if let Some(m) = member {
            answer_text.push_str(&format!(
                "# Joins the cluster {m} is a member of: the node hears its members' beacons on the\n# management network; expected_nodes = {JOIN_EXPECTED_NODES} so it never founds a cluster of its own.\n"
            ));
        }
        answer_text.push('\n');
        answer_text.push_str(
            &answer
                .to_toml()
                .map_err(|e| DialogueError::Invalid(e.to_string()))?,
        );

        let d = &disk.disk;
        writeln!(self.out, "\nSummary")?;
        writeln!(
            self.out,
            "  disk:        {} ({}{}{}){}",
            d.path.display(),
            disks::human(d.size),
            if d.model.is_empty() {
                String::new()
            } else {
                format!(", {}", d.model)
            },
            if d.serial.is_empty() {
                String::new()
            } else {
                format!(", serial {}", d.serial)
            },
            if force {
                format!("; holds {}: IT IS ERASED", describe(&disk.contents))
            } else {
                String::new()
            }
        )?;
        writeln!(
            self.out,
            "  image:       {} ({})",
            facts.image.display(),
            disks::human(facts.image_bytes)
        )?;
        match &mode {
            Mode::Found { expected, .. } => writeln!(
                self.out,
                "  cluster:     found {cluster} with {expected} node(s)"
            )?,
            Mode::Join { member, .. } => writeln!(
                self.out,
                "  cluster:     join {cluster} (a member: {member})"
            )?,
        }
        writeln!(self.out, "  join secret: {secret}")?;
        writeln!(self.out, "  admin:       password set (not shown)")?;
        writeln!(self.out, "  node:        {node}")?;
        writeln!(
            self.out,
            "  management:  {} {}, gateway {}, DNS {}",
            net.mac
                .as_deref()
                .or(net.interface.as_deref())
                .unwrap_or("-"),
            net.address,
            net.gateway
                .map(|g| g.to_string())
                .unwrap_or_else(|| "none".into()),
            if net.dns.is_empty() {
                "none".to_string()
            } else {
                join(&net.dns)
            }
        )?;
        loop {
            let a = self.ask(
                &format!(
                    "\nWrite Keel to {} now? Everything on it is erased. [yes/no]",
                    d.path.display()
                ),
                None,
            )?;
            match a.to_ascii_lowercase().as_str() {
                "yes" => break,
                "no" => return Err(DialogueError::Declined),
                _ => {
                    self.complain("type yes to install, or no to stop without writing anything")?
                }
            }
        }
        Ok(Plan {
            target: d.path.clone(),
            force,
            answer,
            answer_text,
        })
    }

    fn complain(&mut self, msg: &str) -> io::Result<()> {
        writeln!(self.out, "  ! {msg}")
    }

    /// One line; end of input aborts. Surrounding spaces are dropped.
    fn ask(&mut self, prompt: &str, default: Option<&str>) -> Result<String> {
        match default {
            Some(d) if !d.is_empty() => write!(self.out, "{prompt} [{d}]: ")?,
            _ => write!(self.out, "{prompt}: ")?,
        }
        self.out.flush()?;
        let line = read_line(&mut self.input)?.ok_or(DialogueError::Aborted)?;
        let line = line.trim();
        Ok(match (line.is_empty(), default) {
            (true, Some(d)) => d.to_string(),
            _ => line.to_string(),
        })
    }

    /// Asks until `check` accepts the answer; its error says what was wrong and how to fix it.
    fn ask_valid<T>(
        &mut self,
        prompt: &str,
        default: Option<&str>,
        check: impl Fn(&str) -> std::result::Result<T, String>,
    ) -> Result<T> {
        loop {
            let a = self.ask(prompt, default)?;
            match check(&a) {
                Ok(v) => return Ok(v),
                Err(msg) => self.complain(&msg)?,
            }
        }
    }

    fn choose_disk(&mut self, facts: &Facts) -> Result<(DiskChoice, bool)> {
        let usable: Vec<&DiskChoice> = facts
            .disks
            .iter()
            .filter(|d| unusable(d, facts.image_bytes).is_none())
            .collect();
        if usable.is_empty() {
            let why = facts
                .disks
                .iter()
                .filter_map(|d| unusable(d, facts.image_bytes))
                .collect::<Vec<_>>();
            return Err(DialogueError::NoDisk(if why.is_empty() {
                "no disks were found".into()
            } else {
                why.join("; ")
            }));
        }
        loop {
            let choice = if facts.preselected {
                let d = usable[0];
                writeln!(self.out, "\nDisk:")?;
                writeln!(self.out, "{}", disk_line(1, d, facts.image_bytes))?;
                d.clone()
            } else {
                writeln!(self.out, "\nDisks:")?;
                for (i, d) in facts.disks.iter().enumerate() {
                    writeln!(self.out, "{}", disk_line(i + 1, d, facts.image_bytes))?;
                }
                self.ask_valid("Disk to install on (number or name)", None, |s| {
                    let d = pick(&facts.disks, s)?;
                    match unusable(d, facts.image_bytes) {
                        Some(why) => Err(format!("{why}; pick another disk")),
                        None => Ok(d.clone()),
                    }
                })?
            };
            match &choice.contents {
                Ok(Contents::Empty) => return Ok((choice, false)),
                contents => {
                    let name = choice.disk.name.clone();
                    writeln!(
                        self.out,
                        "\n{} holds {}. Installing erases everything on it.",
                        choice.disk.path.display(),
                        describe(contents)
                    )?;
                    if matches!(contents, Ok(Contents::KeelInstall(_))) {
                        writeln!(
                            self.out,
                            "(To keep its OS and only wipe the node's state, stop here and run `keel-install --factory-reset --target {}`.)",
                            choice.disk.path.display()
                        )?;
                    }
                    let back = if facts.preselected {
                        ""
                    } else {
                        ", or back to pick another disk"
                    };
                    let path = choice.disk.path.display().to_string();
                    let confirmed = self.ask_valid(
                        &format!("Type {name} to erase it{back}"),
                        None,
                        |s| {
                            if s == name || s == path {
                                Ok(true)
                            } else if s == "back" && !facts.preselected {
                                Ok(false)
                            } else {
                                Err(format!(
                                    "{s:?} is not {name:?}; type {name} exactly to erase the disk{back} (Ctrl-D stops)"
                                ))
                            }
                        },
                    )?;
                    if confirmed {
                        return Ok((choice, true));
                    }
                }
            }
        }
    }

    /// True: found a new cluster; false: join one.
    fn ask_mode(&mut self) -> Result<bool> {
        writeln!(self.out, "\nHow should this node start?")?;
        writeln!(self.out, "  1) found a new cluster")?;
        writeln!(self.out, "  2) join an existing cluster")?;
        self.ask_valid("Choice", Some("1"), |s| {
            match s.to_ascii_lowercase().as_str() {
                "1" | "found" | "new" => Ok(true),
                "2" | "join" | "existing" => Ok(false),
                _ => Err(format!(
                    "{s:?} is not a choice; type 1 to found a new cluster or 2 to join an existing one"
                )),
            }
        })
    }

    fn ask_password(&mut self, prompt: &str, cluster: &Name) -> Result<String> {
        loop {
            let first = self
                .passwords
                .read_password(prompt, &mut self.input, &mut self.out)?
                .ok_or(DialogueError::Aborted)?;
            writeln!(self.out)?;
            if let Err(msg) = check_password(&first, cluster) {
                self.complain(&msg)?;
                continue;
            }
            let second = self
                .passwords
                .read_password(
                    "The same password again, to check",
                    &mut self.input,
                    &mut self.out,
                )?
                .ok_or(DialogueError::Aborted)?;
            writeln!(self.out)?;
            if first != second {
                self.complain("the two passwords differ; enter the password again, twice")?;
                continue;
            }
            return Ok(first);
        }
    }

    fn ask_network(&mut self, facts: &Facts, member: Option<IpAddr>) -> Result<Network> {
        writeln!(
            self.out,
            "\nManagement network (the nodes and the console talk on it)."
        )?;
        let (interface, mac, nic) = if facts.nics.is_empty() {
            self.ask_valid(
                "No network interfaces were found. Management interface: its MAC (52:54:00:12:34:56) or name (eth0)",
                None,
                |s| pick_nic(&[], s),
            )?
        } else {
            for (i, n) in facts.nics.iter().enumerate() {
                writeln!(
                    self.out,
                    "{:>3}) {:<16} {}  {}",
                    i + 1,
                    n.name,
                    n.mac,
                    if n.addresses.is_empty() {
                        "no address".to_string()
                    } else {
                        join(&n.addresses)
                    }
                )?;
            }
            self.ask_valid(
                "Management interface (number, name or MAC)",
                Some("1"),
                |s| pick_nic(&facts.nics, s),
            )?
        };
        writeln!(
            self.out,
            "Keel nodes keep a fixed address on the management network (it is in their\ncertificates and the cluster's records), so it is set statically here."
        )?;
        let current = nic.as_ref().and_then(|n| {
            n.addresses
                .iter()
                .find(|a| a.addr().is_ipv4())
                .or(n.addresses.first())
                .copied()
        });
        let current_s = current.map(|c| c.to_string());
        let address = self.ask_valid(
            &match &current_s {
                Some(_) => "Address with prefix (Enter keeps the one it has now)".to_string(),
                None => "Address with prefix, e.g. 10.0.0.11/24".to_string(),
            },
            current_s.as_deref(),
            |s| check_address(s, current, member),
        )?;
        let gw_default = nic
            .as_ref()
            .and_then(|n| n.gateway)
            .filter(|g| in_subnet(&address, *g) && *g != address.addr())
            .map(|g| g.to_string());
        let gateway = self.ask_valid(
            if gw_default.is_some() {
                "Default gateway (none for no gateway)"
            } else {
                "Default gateway (Enter for none)"
            },
            gw_default.as_deref(),
            |s| check_gateway(s, &address),
        )?;
        let dns_default = join(&facts.dns);
        let dns = self.ask_valid(
            if facts.dns.is_empty() {
                "DNS servers, separated by spaces (Enter for none)"
            } else {
                "DNS servers, separated by spaces (none for no DNS)"
            },
            Some(&dns_default),
            check_dns,
        )?;
        Ok(Network {
            interface,
            mac,
            address,
            gateway,
            dns,
        })
    }
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn describe(contents: &std::result::Result<Contents, String>) -> String {
    match contents {
        Ok(c) => c.to_string(),
        Err(e) => format!("something that could not be read ({e})"),
    }
}

/// Why this disk cannot take the image, if it cannot.
fn unusable(d: &DiskChoice, image_bytes: u64) -> Option<String> {
    let name = &d.disk.name;
    if let Some(why) = &d.in_use {
        return Some(format!(
            "{name} is in use ({why}); the installer never writes a disk that is mounted or in use"
        ));
    }
    if d.disk.read_only {
        return Some(format!("{name} is read-only"));
    }
    if let Err(e) = &d.contents {
        return Some(format!("{name} cannot be read ({e})"));
    }
    if !d.grows && d.disk.size < image_bytes {
        return Some(format!(
            "{name} is {} but the image needs {}; use a disk of at least {}",
            disks::human(d.disk.size),
            disks::human(image_bytes),
            disks::human(image_bytes)
        ));
    }
    None
}

fn disk_line(n: usize, d: &DiskChoice, image_bytes: u64) -> String {
    let mut note = describe(&d.contents);
    if d.disk.removable {
        note.push_str(", removable");
    }
    if let Some(why) = unusable(d, image_bytes) {
        note = match &d.contents {
            Ok(_) if d.in_use.is_some() => "in use: cannot be chosen".to_string(),
            _ if d.disk.read_only => "read-only: cannot be chosen".to_string(),
            Err(_) => why,
            Ok(_) => format!("{note}; too small for the image"),
        };
    }
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    format!(
        "{n:>3}) {:<10} {:>10}  {:<24} {:<20} {note}",
        d.disk.name,
        disks::human(d.disk.size),
        dash(&d.disk.model),
        dash(&d.disk.serial)
    )
}

fn pick<'a>(list: &'a [DiskChoice], s: &str) -> std::result::Result<&'a DiskChoice, String> {
    if let Ok(n) = s.parse::<usize>() {
        return match n.checked_sub(1).and_then(|i| list.get(i)) {
            Some(d) => Ok(d),
            None => Err(format!(
                "there is no disk {n}; type a number from 1 to {}",
                list.len()
            )),
        };
    }
    list.iter()
        .find(|d| d.disk.name == s || d.disk.path.as_os_str() == s)
        .ok_or_else(|| {
            format!(
                "there is no disk {s:?}; type a number from 1 to {} or a name from the list",
                list.len()
            )
        })
}

type NicChoice = (Option<String>, Option<String>, Option<Nic>);

fn pick_nic(nics: &[Nic], s: &str) -> std::result::Result<NicChoice, String> {
    let found = if let Ok(n) = s.parse::<usize>() {
        match n.checked_sub(1).and_then(|i| nics.get(i)) {
            Some(nic) => Some(nic),
            None if nics.is_empty() => None,
            None => {
                return Err(format!(
                "there is no interface {n}; type a number from 1 to {}, a name or a MAC address",
                nics.len()
            ))
            }
        }
    } else {
        nics.iter()
            .find(|n| n.name == s || n.mac.eq_ignore_ascii_case(s))
    };
    if let Some(nic) = found {
        // The MAC: interface names on the installed system can differ from the live one's.
        return Ok((None, Some(nic.mac.clone()), Some(nic.clone())));
    }
    if s.contains(':') {
        return match s.parse::<MacAddr>() {
            Ok(mac) => Ok((None, Some(mac.to_string()), None)),
            Err(e) => Err(e.message),
        };
    }
    if nics.is_empty() {
        let name = s.to_string();
        return model_check(|a| {
            a.network.management.interface = Some(name.clone());
            a.network.management.mac = None;
        })
        .map(|()| (Some(name), None, None));
    }
    Err(format!(
        "{s:?} is not one of the interfaces listed; type its number, its name or a MAC address (52:54:00:12:34:56)"
    ))
}

/// The answer-file rules are keel-model's: a known-good answer file with one value changed
/// is validated, and the model's message is shown.
fn model_check(edit: impl FnOnce(&mut AnswerFile)) -> std::result::Result<(), String> {
    const TEMPLATE: &str = r#"
[cluster]
name = "keel"
expected_nodes = 3
join_secret = "0123456789abcdefghij"
[admin]
password = "a-template-password"
[node]
name = "node1"
[network.management]
mac = "52:54:00:00:00:01"
address = "192.0.2.10/24"
"#;
    let mut a = AnswerFile::from_toml(TEMPLATE).map_err(|e| e.to_string())?;
    edit(&mut a);
    a.validate().map_err(|e| e.message)
}

fn check_expected(s: &str) -> std::result::Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| {
        format!("{s:?} is not a number; type how many nodes form the cluster (1 to 64; 3 for a standard box)")
    })?;
    model_check(|a| a.cluster.expected_nodes = n)?;
    Ok(n)
}

const COMMON_PASSWORDS: &[&str] = &[
    "password",
    "password1",
    "passw0rd",
    "12345678",
    "123456789",
    "1234567890",
    "87654321",
    "qwertyuiop",
    "qwerty123",
    "iloveyou",
    "admin123",
    "administrator",
    "letmein1",
    "welcome1",
    "changeme",
    "trustno1",
    "abcdefgh",
    "abcd1234",
    "keeladmin",
    "keel1234",
];

/// A password the cluster can be trusted with: the model's rule (at least 8 characters),
/// and not guessable at a glance.
pub fn check_password(pw: &str, cluster: &Name) -> std::result::Result<(), String> {
    let p = pw.to_string();
    model_check(|a| a.admin.password = p).map_err(|m| format!("{m}; choose a longer one"))?;
    let lower = pw.to_lowercase();
    let mut chars = pw.chars();
    let first = chars.next();
    if chars.all(|c| Some(c) == first) {
        return Err(
            "the password is one character repeated; choose one that is hard to guess".into(),
        );
    }
    if COMMON_PASSWORDS.contains(&lower.as_str()) {
        return Err(
            "the password is one of the most common ones; choose one that is hard to guess".into(),
        );
    }
    if lower == cluster.as_str() || lower == "admin" || lower.trim() != lower {
        return Err(
            "the password is the cluster's name or starts or ends with a space; choose another"
                .into(),
        );
    }
    Ok(())
}

fn check_member(s: &str) -> std::result::Result<IpAddr, String> {
    let ip = s
        .parse::<IpAddr>()
        .or_else(|_| s.parse::<SocketAddr>().map(|a| a.ip()))
        .map_err(|_| {
            format!("{s:?} is not an IP address; type the address of a node of the cluster, like 10.0.0.11")
        })?;
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
        return Err(format!(
            "{ip} cannot be a node's address; type the management address of a node of the cluster"
        ));
    }
    Ok(ip)
}

fn in_subnet(net: &Cidr, ip: IpAddr) -> bool {
    match (net.addr(), ip) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(net.prefix()))
                .unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(net.prefix()))
                .unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

fn check_address(
    s: &str,
    current: Option<Cidr>,
    member: Option<IpAddr>,
) -> std::result::Result<Cidr, String> {
    if s.eq_ignore_ascii_case("dhcp") {
        return Err(match current {
            Some(c) => format!(
                "the answer file needs a fixed address; type the address this node keeps (press Enter to keep {c}, its address from DHCP now)"
            ),
            None => "the answer file needs a fixed address; type the address this node keeps, like 10.0.0.11/24".into(),
        });
    }
    let c: Cidr = s
        .parse()
        .map_err(|e: keel_model::ValidationError| e.message)?;
    let ip = c.addr();
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
        return Err(format!(
            "{ip} cannot be a node's address; type this node's address on the management network"
        ));
    }
    if c.prefix() == 0 {
        return Err(format!(
            "/0 is not a network; type the network's prefix length, like {ip}/24"
        ));
    }
    if let IpAddr::V4(v4) = ip {
        if c.prefix() <= 30 {
            let host_bits = 32 - u32::from(c.prefix());
            let host = u32::from(v4) & (u32::MAX >> (32 - host_bits));
            if host == 0 || host == u32::MAX >> (32 - host_bits) {
                return Err(format!(
                    "{c} is the network's {} address, not a host's; type an address inside the network",
                    if host == 0 { "own" } else { "broadcast" }
                ));
            }
        }
    }
    if let Some(m) = member {
        if m == ip {
            return Err(format!(
                "{ip} is the address of the member you named; this node needs an address of its own"
            ));
        }
        if !in_subnet(&c, m) {
            return Err(format!(
                "{m} (the member you named) is not in {c}'s network; nodes find each other on the management network, so type an address on the member's network"
            ));
        }
    }
    Ok(c)
}

fn check_gateway(s: &str, address: &Cidr) -> std::result::Result<Option<IpAddr>, String> {
    if s.is_empty() || s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let gw: IpAddr = s.parse().map_err(|_| {
        format!("{s:?} is not an IP address; type the gateway's address, like 10.0.0.1 (or none)")
    })?;
    if gw.is_ipv4() != address.addr().is_ipv4() {
        return Err(format!(
            "{gw} and {address} are of different IP families; type a gateway of the same family (or none)"
        ));
    }
    if gw == address.addr() {
        return Err(format!(
            "{gw} is this node's own address; type the router's address (or none)"
        ));
    }
    if !in_subnet(address, gw) {
        return Err(format!(
            "{gw} is not in {address}'s network; the gateway must be reachable directly (or type none)"
        ));
    }
    Ok(Some(gw))
}

fn check_dns(s: &str) -> std::result::Result<Vec<IpAddr>, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    s.split([' ', ','])
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<IpAddr>().map_err(|_| {
                format!("{p:?} is not an IP address; type the DNS servers' addresses, like 10.0.0.1 9.9.9.9 (or none)")
            })
        })
        .collect()
}

/// A new join secret: 25 random characters of Crockford's base32 in groups of five
/// (125 bits), easy to read out and type on the other nodes.
pub fn new_join_secret() -> io::Result<String> {
    use std::io::Read;
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut bytes = [0u8; 25];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let mut s = String::new();
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 && i % 5 == 0 {
            s.push('-');
        }
        s.push(char::from(ALPHABET[usize::from(*b) % 32]));
    }
    Ok(s)
}

/// The network interfaces under `sys_net` (normally `/sys/class/net`) that are hardware
/// (they have a `device`), with their addresses and default gateway now (`ip`).
pub fn nics(sys_net: &Path) -> Vec<Nic> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(sys_net) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let dir = e.path();
        if name == "lo" || !dir.join("device").exists() {
            continue;
        }
        let mac = std::fs::read_to_string(dir.join("address"))
            .map(|s| s.trim().to_lowercase())
            .unwrap_or_default();
        if mac.parse::<MacAddr>().is_err() {
            continue;
        }
        out.push(Nic {
            addresses: ip_addresses(&name),
            gateway: default_gateway(&name),
            name,
            mac,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn ip_output(args: &[&str]) -> String {
    std::process::Command::new("ip")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default()
}

fn ip_addresses(dev: &str) -> Vec<Cidr> {
    ip_output(&["-o", "addr", "show", "dev", dev])
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet" || *w == "inet6")?;
            let c: Cidr = words.next()?.parse().ok()?;
            match c.addr() {
                IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => None,
                _ => Some(c),
            }
        })
        .collect()
}

fn default_gateway(dev: &str) -> Option<IpAddr> {
    ip_output(&["-o", "route", "show", "default", "dev", dev])
        .lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "via")?;
            words.next()?.parse().ok()
        })
}

/// DNS servers from a resolv.conf (the local stub resolvers 127.x and ::1 left out).
pub fn resolv_dns(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "nameserver").then_some(())?;
            w.next()?.parse::<IpAddr>().ok()
        })
        .filter(|ip| !ip.is_loopback())
        .collect()
}

/// Where [`gather`] looks.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The image.
    pub image: PathBuf,
    /// A disk given on the command line (skips the list).
    pub target: Option<PathBuf>,
    /// `/sys/block`.
    pub sys_block: PathBuf,
    /// `/sys/class/net`.
    pub sys_net: PathBuf,
}

/// The facts of this machine for the dialogue.
pub fn gather(src: &Sources) -> anyhow::Result<Facts> {
    use anyhow::Context;
    if !src.image.exists() {
        anyhow::bail!(
            "the image {} is missing (the live system carries it there); give its path with --image",
            src.image.display()
        );
    }
    let image_bytes = crate::install::check_image(&src.image)?;
    let choice = |disk: Disk, grows: bool| DiskChoice {
        contents: probe::probe(&disk.path).map_err(|e| e.to_string()),
        in_use: disks::in_use(&disk.path),
        disk,
        grows,
    };
    let (disks, preselected) = match &src.target {
        Some(t) => {
            let meta = std::fs::metadata(t).with_context(|| format!("{}", t.display()))?;
            let grows = meta.is_file();
            let listed = disks::list(&src.sys_block)
                .unwrap_or_default()
                .into_iter()
                .find(|d| std::fs::canonicalize(&d.path).ok() == std::fs::canonicalize(t).ok());
            let disk = match listed {
                Some(d) => Disk {
                    path: t.clone(),
                    ..d
                },
                None => Disk {
                    name: t
                        .file_name()
                        .map(|n| n.to_string_lossy().to_string())
                        .unwrap_or_else(|| t.display().to_string()),
                    path: t.clone(),
                    size: probe::size_of(t).with_context(|| format!("{}", t.display()))?,
                    model: String::new(),
                    serial: String::new(),
                    removable: false,
                    read_only: false,
                },
            };
            (vec![choice(disk, grows)], true)
        }
        None => (
            disks::list(&src.sys_block)
                .with_context(|| format!("listing disks in {}", src.sys_block.display()))?
                .into_iter()
                .map(|d| choice(d, false))
                .collect(),
            false,
        ),
    };
    Ok(Facts {
        image: src.image.clone(),
        image_bytes,
        disks,
        preselected,
        nics: nics(&src.sys_net),
        dns: resolv_dns(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()),
        new_secret: new_join_secret().context("generating a join secret (/dev/urandom)")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const GIB: u64 = 1024 * 1024 * 1024;
    const SECRET: &str = "abcde-fghjk-mnpqr-stvwx-yz012";

    fn disk(name: &str, size: u64, contents: Contents, in_use: Option<&str>) -> DiskChoice {
        DiskChoice {
            disk: Disk {
                name: name.into(),
                path: PathBuf::from("/dev").join(name),
                size,
                model: format!("Model {name}"),
                serial: format!("SN-{name}"),
                removable: false,
                read_only: false,
            },
            contents: Ok(contents),
            in_use: in_use.map(String::from),
            grows: false,
        }
    }

    fn facts() -> Facts {
        Facts {
            image: PathBuf::from("/usr/share/keel/keel.raw"),
            image_bytes: 5 * GIB / 2,
            disks: vec![
                disk("sda", 100 * GIB, Contents::Empty, None),
                disk("sdb", 200 * GIB, Contents::KeelInstall(Vec::new()), None),
                disk("sdc", GIB, Contents::Empty, None),
                disk(
                    "sdd",
                    16 * GIB,
                    Contents::Filesystem("vfat"),
                    Some("/dev/sdd1 is mounted on /run/live"),
                ),
            ],
            preselected: false,
            nics: vec![Nic {
                name: "eth0".into(),
                mac: "52:54:00:aa:bb:01".into(),
                addresses: vec!["10.0.0.5/24".parse().unwrap()],
                gateway: Some("10.0.0.1".parse().unwrap()),
            }],
            dns: vec!["10.0.0.1".parse().unwrap()],
            new_secret: SECRET.into(),
        }
    }

    fn run_with<P: Passwords>(f: &Facts, lines: &[&str], passwords: P) -> (Result<Plan>, String) {
        let mut text = lines.join("\n");
        if !lines.is_empty() {
            text.push('\n');
        }
        let mut out = Vec::new();
        let r = Dialogue::new(Cursor::new(text), &mut out, passwords).run(f);
        (r, String::from_utf8(out).unwrap())
    }

    fn run(f: &Facts, lines: &[&str]) -> (Result<Plan>, String) {
        run_with(f, lines, Echoed)
    }

    const FOUND: &[&str] = &[
        "1",
        "1",
        "lab",
        "3",
        "correct horse",
        "correct horse",
        "node1",
        "",
        "",
        "",
        "",
        "yes",
    ];

    #[test]
    fn founds_a_cluster_with_defaults() {
        let (r, out) = run(&facts(), FOUND);
        let plan = r.unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert_eq!(plan.target, PathBuf::from("/dev/sda"));
        assert!(!plan.force);
        let a = &plan.answer;
        assert_eq!(a.cluster.name.as_str(), "lab");
        assert_eq!(a.cluster.expected_nodes, 3);
        assert_eq!(a.cluster.join_secret, SECRET);
        assert_eq!(a.admin.password, "correct horse");
        assert_eq!(a.node.name.as_str(), "node1");
        let m = &a.network.management;
        assert_eq!(m.mac.as_deref(), Some("52:54:00:aa:bb:01"));
        assert_eq!(m.interface, None);
        assert_eq!(m.address.to_string(), "10.0.0.5/24");
        assert_eq!(m.gateway, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(m.dns, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(&AnswerFile::from_toml(&plan.answer_text).unwrap(), a);
        // The list shows size, model, serial and what each disk holds; the secret is shown.
        for s in [
            "sda",
            "100.0 GiB",
            "Model sda",
            "SN-sda",
            "empty",
            "an existing Keel install",
            "too small",
            "in use",
            SECRET,
            "found lab with 3 node(s)",
        ] {
            assert!(out.contains(s), "{s:?} missing from:\n{out}");
        }
        // Passwords never reach the output.
        assert!(!out.contains("correct horse"), "{out}");
    }

    #[test]
    fn every_bad_answer_is_explained_and_asked_again() {
        let lines = [
            "9",    // no such disk
            "sdx",  // no such disk
            "sdc",  // too small
            "sdd",  // in use
            "sdb",  // an existing Keel install: must type its name
            "yes",  // not the name
            "back", // back to the list
            "/dev/sdb",
            "sdb", // confirmed
            "3",   // not a mode
            "found",
            "Lab_1", // bad name
            "lab",
            "three", // not a number
            "0",     // out of range
            "5",
            "short", // too short (no second ask)
            "password",
            "aaaaaaaaaa",
            "correct horse",
            "correct house", // mismatch
            "correct horse",
            "correct horse",
            "-node", // bad name
            "node1",
            "7",    // no such NIC
            "eth9", // no such NIC
            "52:54:00:zz:00:01",
            "eth0",
            "dhcp",
            "10.0.0.300/24",
            "10.0.0.11",
            "10.0.0.0/24",
            "10.0.0.255/24",
            "10.0.0.11/24",
            "10.1.0.1",  // not on the network
            "fe80::1",   // other family
            "10.0.0.11", // own address
            "10.0.0.254",
            "10.0.0.1 nine",
            "10.0.0.1, 9.9.9.9",
            "maybe",
            "yes",
        ];
        let (r, out) = run(&facts(), &lines);
        let plan = r.unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert_eq!(plan.target, PathBuf::from("/dev/sdb"));
        assert!(plan.force);
        let a = &plan.answer;
        assert_eq!(a.cluster.name.as_str(), "lab");
        assert_eq!(a.cluster.expected_nodes, 5);
        assert_eq!(a.admin.password, "correct horse");
        assert_eq!(a.node.name.as_str(), "node1");
        let m = &a.network.management;
        assert_eq!(m.address.to_string(), "10.0.0.11/24");
        assert_eq!(m.gateway, Some("10.0.0.254".parse().unwrap()));
        assert_eq!(m.dns.len(), 2);
        for msg in [
            "there is no disk 9; type a number from 1 to 4",
            "there is no disk \"sdx\"",
            "sdc is 1.0 GiB but the image needs 2.5 GiB; use a disk of at least 2.5 GiB",
            "sdd is in use (/dev/sdd1 is mounted on /run/live)",
            "/dev/sdb holds an existing Keel install",
            "keel-install --factory-reset --target /dev/sdb",
            "\"yes\" is not \"sdb\"; type sdb exactly to erase the disk",
            "\"3\" is not a choice; type 1 to found a new cluster or 2",
            "\"Lab_1\" is not a valid name",
            "\"three\" is not a number",
            "0 nodes is out of range; use 1 to 64",
            "shorter than 8 characters; choose a longer one",
            "one of the most common ones",
            "one character repeated",
            "the two passwords differ",
            "\"-node\" is not a valid name",
            "there is no interface 7",
            "\"eth9\" is not one of the interfaces listed",
            "is not a valid MAC address",
            "the answer file needs a fixed address; type the address this node keeps (press Enter to keep 10.0.0.5/24",
            "the address does not parse",
            "the /prefix is missing",
            "10.0.0.0/24 is the network's own address",
            "10.0.0.255/24 is the network's broadcast address",
            "10.1.0.1 is not in 10.0.0.11/24's network",
            "different IP families",
            "10.0.0.11 is this node's own address",
            "\"nine\" is not an IP address",
            "type yes to install, or no to stop",
            "IT IS ERASED",
        ] {
            assert!(out.contains(msg), "{msg:?} missing from:\n{out}");
        }
        // The list was shown again after "back".
        assert_eq!(out.matches("\nDisks:").count(), 2, "{out}");
    }

    #[test]
    fn joins_a_cluster() {
        let lines = [
            "sda",
            "2",
            "lab",
            "10.0.0.300",
            "127.0.0.1",
            "10.0.0.11",
            "short secret",
            "a-secret-from-the-founding-node",
            "correct horse",
            "correct horse",
            "node4",
            "52:54:00:77:20:14",
            "",             // no current address: there is no default
            "10.1.0.14/24", // the member is not on this network
            "10.0.0.11/24", // the member's own address
            "10.0.0.14/24",
            "",
            "none",
            "yes",
        ];
        let (r, out) = run(&facts(), &lines);
        let plan = r.unwrap_or_else(|e| panic!("{e}\n{out}"));
        let a = &plan.answer;
        assert_eq!(a.cluster.expected_nodes, JOIN_EXPECTED_NODES);
        assert_eq!(a.cluster.join_secret, "a-secret-from-the-founding-node");
        assert_eq!(a.node.name.as_str(), "node4");
        let m = &a.network.management;
        assert_eq!(m.mac.as_deref(), Some("52:54:00:77:20:14"));
        assert_eq!(m.address.to_string(), "10.0.0.14/24");
        assert_eq!(m.gateway, None);
        assert!(m.dns.is_empty());
        assert!(plan.answer_text.contains("# Joins the cluster 10.0.0.11"));
        assert_eq!(&AnswerFile::from_toml(&plan.answer_text).unwrap(), a);
        for msg in [
            "\"10.0.0.300\" is not an IP address",
            "127.0.0.1 cannot be a node's address",
            "the join secret is shorter than 16 characters",
            "\"\" is not an address with prefix",
            "10.0.0.11 (the member you named) is not in 10.1.0.14/24's network",
            "10.0.0.11 is the address of the member you named",
            "join lab (a member: 10.0.0.11)",
        ] {
            assert!(out.contains(msg), "{msg:?} missing from:\n{out}");
        }
        assert!(!out.contains(SECRET), "a joining node shows no new secret");
    }

    #[test]
    fn end_of_input_at_any_prompt_aborts() {
        let f = facts();
        for n in 0..FOUND.len() {
            let (r, out) = run(&f, &FOUND[..n]);
            assert!(
                matches!(r, Err(DialogueError::Aborted)),
                "after {n} answers: {r:?}\n{out}"
            );
        }
        let mut no = FOUND.to_vec();
        *no.last_mut().unwrap() = "no";
        assert!(matches!(run(&f, &no).0, Err(DialogueError::Declined)));
        // Without the "yes" nothing is planned: the confirmation is the last prompt.
        assert!(matches!(
            run(&f, &FOUND[..FOUND.len() - 1]).0,
            Err(DialogueError::Aborted)
        ));
    }

    /// A password reader that does not read the input: the passwords come from a script.
    struct Scripted(Vec<&'static str>);
    impl Passwords for Scripted {
        fn read_password(
            &mut self,
            prompt: &str,
            _: &mut dyn BufRead,
            out: &mut dyn Write,
        ) -> io::Result<Option<String>> {
            prompt_on(out, prompt)?;
            Ok((!self.0.is_empty()).then(|| self.0.remove(0).to_string()))
        }
    }

    #[test]
    fn passwords_come_from_the_password_reader() {
        let lines: Vec<&str> = FOUND
            .iter()
            .copied()
            .filter(|l| *l != "correct horse")
            .collect();
        let pw = Scripted(vec![
            "tr0ub4dor&3",
            "tr0ub4dor&4",
            "tr0ub4dor&3",
            "tr0ub4dor&3",
        ]);
        let (r, out) = run_with(&facts(), &lines, pw);
        let plan = r.unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert_eq!(plan.answer.admin.password, "tr0ub4dor&3");
        assert!(out.contains("the two passwords differ"));
        // Out of passwords: aborted like end of input.
        let (r, _) = run_with(&facts(), &lines, Scripted(vec!["tr0ub4dor&3"]));
        assert!(matches!(r, Err(DialogueError::Aborted)));
    }

    #[test]
    fn a_preselected_file_is_confirmed_without_a_list() {
        let mut f = facts();
        let mut d = disk("disk.img", 0, Contents::Filesystem("ext2/3/4"), None);
        d.disk.path = PathBuf::from("/tmp/disk.img");
        d.grows = true;
        f.disks = vec![d];
        f.preselected = true;
        let mut lines = FOUND.to_vec();
        lines[0] = "back"; // no list to go back to
        lines.insert(1, "disk.img");
        let (r, out) = run(&f, &lines);
        let plan = r.unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert!(plan.force);
        assert_eq!(plan.target, PathBuf::from("/tmp/disk.img"));
        assert!(out.contains("\"back\" is not \"disk.img\""), "{out}");
        assert!(!out.contains("Disks:"), "{out}");
    }

    #[test]
    fn no_usable_disk_is_an_error_before_any_question() {
        let mut f = facts();
        f.disks
            .retain(|d| d.disk.name == "sdc" || d.disk.name == "sdd");
        let (r, out) = run(&f, FOUND);
        match r {
            Err(DialogueError::NoDisk(why)) => {
                assert!(
                    why.contains("sdc is 1.0 GiB") && why.contains("sdd is in use"),
                    "{why}"
                )
            }
            other => panic!("{other:?}\n{out}"),
        }
        f.disks.clear();
        assert!(matches!(run(&f, FOUND).0, Err(DialogueError::NoDisk(_))));
    }

    #[test]
    fn secrets_and_resolv_conf() {
        let s = new_join_secret().unwrap();
        assert_eq!(s.len(), 29);
        assert!(model_check(|a| a.cluster.join_secret = s.clone()).is_ok());
        assert_ne!(s, new_join_secret().unwrap());
        assert_eq!(
            resolv_dns("# x\nnameserver 127.0.0.53\nnameserver 10.0.0.1\nsearch lan\nnameserver ::1\nnameserver 2001:db8::1\n"),
            vec!["10.0.0.1".parse::<IpAddr>().unwrap(), "2001:db8::1".parse().unwrap()]
        );
    }

    #[test]
    fn subnets() {
        let c: Cidr = "10.0.0.11/24".parse().unwrap();
        assert!(in_subnet(&c, "10.0.0.200".parse().unwrap()));
        assert!(!in_subnet(&c, "10.0.1.1".parse().unwrap()));
        let c: Cidr = "2001:db8::5/64".parse().unwrap();
        assert!(in_subnet(&c, "2001:db8::1".parse().unwrap()));
        assert!(!in_subnet(&c, "10.0.0.1".parse().unwrap()));
        let c: Cidr = "10.0.0.1/32".parse().unwrap();
        assert!(check_address("10.0.0.1/32", None, None).is_ok());
        assert!(!in_subnet(&c, "10.0.0.2".parse().unwrap()));
    }
}
