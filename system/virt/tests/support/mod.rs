//! Host-test support: a private libvirt daemon per test, and the tiny test guest.
//!
//! Each [`PrivateLibvirtd`] is a real `libvirtd` in its own mount namespace, with private
//! `/etc/libvirt`, `/run/libvirt`, `/var/lib/libvirt`, `/var/cache/libvirt` and
//! `/var/log/libvirt` bind-mounted from a temporary directory, and its own host UUID. So tests
//! need no running system daemon, never touch the host's libvirt state, and two daemons on one
//! machine can live-migrate between each other (libvirt refuses to migrate to "the same host",
//! which it decides by host UUID). Clients reach it at
//! `qemu+unix:///system?socket=<dir>/run/libvirt-sock`.
//!
//! Needs root (mount namespaces, QEMU as root) and the packages in `system/virt/APT_PACKAGES`.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use keel_virt::{Hypervisor, Libvirt};

/// A libvirtd of our own; stopped (with every domain it runs destroyed) on drop.
pub struct PrivateLibvirtd {
    dir: tempfile::TempDir,
    child: Child,
    uri: String,
}

const QEMU_CONF: &str = r#"# Written by keel-virt's tests for a private daemon.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
"#;

impl PrivateLibvirtd {
    /// Starts a daemon and waits until it accepts connections.
    pub fn start(tag: &str) -> Result<Self> {
        if !is_root() {
            bail!("libvirt host tests need root (mount namespaces, QEMU as root): run `make test` as root");
        }
        let libvirtd = Path::new("/usr/sbin/libvirtd");
        if !libvirtd.exists() {
            bail!(
                "{} is missing: install the packages in system/virt/APT_PACKAGES",
                libvirtd.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("keel-virt-{tag}-"))
            .tempdir_in("/tmp")?;
        let d = dir.path();
        for sub in ["etc", "run", "lib/images", "cache", "log"] {
            fs::create_dir_all(d.join(sub))?;
        }
        let host_uuid = uuid::Uuid::new_v4();
        fs::write(
            d.join("etc/libvirtd.conf"),
            format!(
                "# Written by keel-virt's tests for a private daemon.\nhost_uuid = \"{host_uuid}\"\nlog_outputs = \"3:file:{}\"\n",
                d.join("libvirtd.log").display()
            ),
        )?;
        fs::write(d.join("etc/qemu.conf"), QEMU_CONF)?;
        let binds = [
            ("etc", "/etc/libvirt"),
            ("run", "/run/libvirt"),
            ("lib", "/var/lib/libvirt"),
            ("cache", "/var/cache/libvirt"),
            ("log", "/var/log/libvirt"),
        ];
        let mut script = String::from("set -e\n");
        for (src, dst) in binds {
            script.push_str(&format!(
                "mkdir -p {dst}\nmount --bind {} {dst}\n",
                d.join(src).display()
            ));
        }
        script.push_str(&format!(
            "exec /usr/sbin/libvirtd -f {} -p {}\n",
            d.join("etc/libvirtd.conf").display(),
            d.join("libvirtd.pid").display()
        ));
        let stderr = fs::File::create(d.join("libvirtd.stderr"))?;
        // `unshare` execs the shell, which execs libvirtd: the child's pid is the daemon's.
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .env("LIBVIRT_AUTOSTART", "0")
            .spawn()
            .context("starting libvirtd in a mount namespace")?;
        let uri = format!(
            "qemu+unix:///system?socket={}",
            d.join("run/libvirt-sock").display()
        );
        let mut daemon = Self { dir, child, uri };
        daemon.wait_ready()?;
        Ok(daemon)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("libvirtd exited with {status}: {}", self.logs());
            }
            if self.dir.path().join("run/libvirt-sock").exists() {
                if let Ok(lv) = Libvirt::connect(&self.uri) {
                    if lv.capabilities().is_ok() {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!("libvirtd did not come up within 60 s: {}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Where a path under one of the daemon's private directories (`/var/lib/libvirt/...`
    /// and the like, as the daemon and its QEMUs see them) is on the host.
    pub fn host_path(&self, inside: &str) -> PathBuf {
        let map = [
            ("/etc/libvirt", "etc"),
            ("/run/libvirt", "run"),
            ("/var/lib/libvirt", "lib"),
            ("/var/cache/libvirt", "cache"),
            ("/var/log/libvirt", "log"),
        ];
        for (prefix, sub) in map {
            if let Some(rest) = inside.strip_prefix(prefix) {
                return self.dir.path().join(sub).join(rest.trim_start_matches('/'));
            }
        }
        PathBuf::from(inside)
    }

    /// The URI to connect to.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// A new connection.
    pub fn connect(&self) -> Result<Libvirt> {
        Ok(Libvirt::connect(&self.uri)?)
    }

    /// The daemon's stderr and log, for failure messages.
    pub fn logs(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        let tail = |s: String| {
            s.lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        };
        format!(
            "stderr:\n{}\nlog:\n{}",
            tail(read("libvirtd.stderr")),
            tail(read("libvirtd.log"))
        )
    }

    /// Where libvirt keeps a domain's QEMU log.
    pub fn qemu_log(&self, domain: &str) -> String {
        fs::read_to_string(self.dir.path().join(format!("log/qemu/{domain}.log")))
            .unwrap_or_default()
    }

    /// Pids of guest QEMU processes this daemon started that still run (by its pid files,
    /// confirmed by the process's command line naming a guest).
    pub fn qemu_pids(&self) -> Vec<u32> {
        let Ok(entries) = fs::read_dir(self.dir.path().join("run/qemu")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
            .filter_map(|e| fs::read_to_string(e.path()).ok())
            .filter_map(|s| s.trim().parse().ok())
            .filter(|pid: &u32| {
                fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains("guest="))
                    .unwrap_or(false)
            })
            .collect()
    }
}

impl Drop for PrivateLibvirtd {
    fn drop(&mut self) {
        if let Ok(lv) = Libvirt::connect(&self.uri) {
            for d in lv.list().unwrap_or_default() {
                let _ = lv.destroy(&d.name);
            }
        }
        let qemus = self.qemu_pids();
        // SIGTERM by pid, to our own child only; then SIGKILL if it lingers.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // QEMU processes outlive a dead daemon; these are ours by the daemon's own records.
        for pid in qemus {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// True when running as root.
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// The tiny test guest (`tests/guest/build.sh`), built once per test process.
pub struct Guest {
    /// Kernel image.
    pub kernel: PathBuf,
    /// Busybox initramfs.
    pub initrd: PathBuf,
    /// Kernel command line.
    pub cmdline: String,
    /// Bootable raw disk image holding both.
    pub disk: PathBuf,
}

/// Builds (or reuses) the test guest.
pub fn guest() -> Result<&'static Guest> {
    static GUEST: OnceLock<std::result::Result<Guest, String>> = OnceLock::new();
    GUEST
        .get_or_init(|| build_guest().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("building the test guest: {e}"))
}

fn build_guest() -> Result<Guest> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/guest/build.sh");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("keel-test-guest");
    let started = Instant::now();
    let status = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("{} failed with {status}", script.display());
    }
    eprintln!("test guest ready in {:?}", started.elapsed());
    Ok(Guest {
        kernel: out.join("vmlinuz"),
        initrd: out.join("initrd.img"),
        cmdline: fs::read_to_string(out.join("cmdline"))?.trim().to_string(),
        disk: out.join("disk.raw"),
    })
}

/// Reads `console` until `want` lines of `keel-guest counter N` with increasing N arrived, or
/// `timeout` passed. Returns the counters seen.
pub fn read_counters(
    console: &mut dyn keel_virt::Console,
    want: usize,
    timeout: Duration,
) -> Result<Vec<u64>> {
    let deadline = Instant::now() + timeout;
    let mut text = String::new();
    let mut counters = Vec::new();
    let mut buf = [0u8; 4096];
    while counters.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "saw {counters:?} within {timeout:?}, wanted {want} increasing counters; console said:\n{text}"
            );
        }
        let n = console.read(&mut buf, left.min(Duration::from_millis(500)))?;
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        counters = complete
            .lines()
            .filter_map(|l| l.trim().strip_prefix("keel-guest counter "))
            .filter_map(|n| n.trim().parse().ok())
            .collect();
        if counters.windows(2).any(|w| w[1] <= w[0]) {
            bail!("counter did not increase: {counters:?}");
        }
    }
    Ok(counters)
}
