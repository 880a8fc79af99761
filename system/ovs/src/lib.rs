//! Keel's Open vSwitch adapter.
//!
//! ```text
//!  keeld ──▶ Vsctl ──▶ ovs-vsctl --timeout=N [--db=…] ──▶ ovsdb-server ◀── ovs-vswitchd
//! ```
//! Every change is idempotent (`--may-exist`, `--if-exists`), so a reconciler can repeat it
//! after a crash. Bridges use the kernel datapath where the `openvswitch` module is loaded and
//! the userspace `netdev` datapath elsewhere. libvirt plugs guest taps into a bridge itself
//! (`<virtualport type='openvswitch'/>`) and unplugs them when the domain goes; this adapter
//! makes sure the bridge is there and reports what is plugged in.
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// What can go wrong talking to Open vSwitch.
#[derive(Debug, thiserror::Error)]
pub enum OvsError {
    /// The name cannot be a Linux interface or bridge name.
    #[error("{name:?} is not a valid bridge or port name: use 1 to 15 of a-z A-Z 0-9 - _ .")]
    InvalidName {
        /// The name.
        name: String,
    },
    /// `ovs-vsctl` could not be run at all.
    #[error("cannot run {program}: {source} (install openvswitch-switch)")]
    NotInstalled {
        /// The program.
        program: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `ovs-vsctl` ran and failed (for example ovsdb-server is not running).
    #[error("ovs-vsctl {args} failed: {stderr}")]
    Command {
        /// The arguments.
        args: String,
        /// Its error output.
        stderr: String,
    },
}

/// A datapath type of a bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datapath {
    /// The kernel module's datapath.
    System,
    /// The userspace datapath (no kernel module needed; slower).
    Netdev,
}

impl Datapath {
    /// The kernel datapath when its module is loaded, the userspace one otherwise.
    pub fn detect() -> Self {
        if Path::new("/sys/module/openvswitch").exists() {
            Self::System
        } else {
            Self::Netdev
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::Netdev => "netdev",
        }
    }
}

/// Checks a bridge or port name (a Linux interface name).
pub fn check_name(name: &str) -> Result<(), OvsError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(OvsError::InvalidName { name: name.into() })
    }
}

/// `ovs-vsctl`, pointed at one database.
#[derive(Debug, Clone)]
pub struct Vsctl {
    program: PathBuf,
    db: Option<String>,
    timeout: Duration,
}

impl Default for Vsctl {
    fn default() -> Self {
        Self::new()
    }
}

impl Vsctl {
    /// The system's `ovs-vsctl` and database socket.
    pub fn new() -> Self {
        Self {
            program: PathBuf::from("ovs-vsctl"),
            db: None,
            timeout: Duration::from_secs(5),
        }
    }

    /// Talks to the database at `remote` (e.g. `unix:/run/x/db.sock`).
    pub fn with_db(mut self, remote: impl Into<String>) -> Self {
        self.db = Some(remote.into());
        self
    }

    /// Uses another `ovs-vsctl` binary.
    pub fn with_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = program.into();
        self
    }

    fn run(&self, args: &[&str]) -> Result<String, OvsError> {
        let mut cmd = Command::new(&self.program);
        cmd.arg(format!("--timeout={}", self.timeout.as_secs().max(1)));
        if let Some(db) = &self.db {
            cmd.arg(format!("--db={db}"));
        }
        cmd.args(args);
        let out = cmd.output().map_err(|source| OvsError::NotInstalled {
            program: self.program.clone(),
            source,
        })?;
        if !out.status.success() {
            return Err(OvsError::Command {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether ovsdb-server answers.
    pub fn ping(&self) -> Result<(), OvsError> {
        self.run(&["show"]).map(|_| ())
    }

    /// Creates bridge `name` with `datapath` unless it exists (an existing bridge keeps its
    /// datapath type: changing it would drop every port's traffic).
    pub fn ensure_bridge(&self, name: &str, datapath: Datapath) -> Result<(), OvsError> {
        check_name(name)?;
        if self.bridges()?.iter().any(|b| b == name) {
            return Ok(());
        }
        let dp = format!("datapath_type={}", datapath.as_str());
        self.run(&[
            "--may-exist",
            "add-br",
            name,
            "--",
            "set",
            "bridge",
            name,
            &dp,
        ])
        .map(|_| ())
    }

    /// Every bridge, sorted.
    pub fn bridges(&self) -> Result<Vec<String>, OvsError> {
        Ok(lines(&self.run(&["list-br"])?))
    }

    /// The ports of `bridge` (not its own internal port), sorted.
    pub fn ports(&self, bridge: &str) -> Result<Vec<String>, OvsError> {
        check_name(bridge)?;
        Ok(lines(&self.run(&["list-ports", bridge])?))
    }

    /// Removes bridge `name` and its ports, if it exists.
    pub fn remove_bridge(&self, name: &str) -> Result<(), OvsError> {
        check_name(name)?;
        self.run(&["--if-exists", "del-br", name]).map(|_| ())
    }

    /// Removes port `port` from whichever bridge has it, if any.
    pub fn remove_port(&self, port: &str) -> Result<(), OvsError> {
        check_name(port)?;
        self.run(&["--if-exists", "del-port", port]).map(|_| ())
    }
}

fn lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_interface_names() {
        for ok in ["br-keel", "a", "br0.100", "x_y-z.1234567"] {
            check_name(ok).unwrap();
        }
        for bad in ["", ".", "..", "br keel", "a/b", "sixteen-chars-xx", "br;rm"] {
            let e = check_name(bad).unwrap_err();
            assert!(e.to_string().contains("not a valid bridge"), "{e}");
        }
    }

    #[test]
    fn missing_program_says_what_to_install() {
        let v = Vsctl::new().with_program("/nonexistent/ovs-vsctl");
        let e = v.ping().unwrap_err();
        assert!(matches!(e, OvsError::NotInstalled { .. }));
        assert!(e.to_string().contains("openvswitch-switch"), "{e}");
    }

    #[test]
    fn output_lines_are_sorted_and_trimmed() {
        assert_eq!(lines("b\n a \n\n"), vec!["a".to_string(), "b".into()]);
    }
}
