//! [`KvmProbe`]: does KVM actually run guests here?
//!
//! `/dev/kvm` can exist, open, and still hang every guest (nested virtualisation gone wrong,
//! a broken host kernel). libvirt only checks that the device opens, so it offers `kvm`
//! domains that would never boot. The probe runs a real guest instead: QEMU with a 64 KiB
//! firmware (`src/kvm_probe.S` in this crate) that goes from the reset vector through
//! protected mode into long mode, as every 64-bit kernel does, and then writes to an
//! `isa-debug-exit` port, which makes QEMU exit at once with a known status. Anything else (an
//! error, another status, or no exit within the timeout) means KVM is not usable, and Keel
//! uses TCG.
//!
//! ```text
//!  F000:FFF0 reset ─▶ real mode: lgdt, CR0.PE ─▶ 32-bit: page tables, PAE, EFER.LME, CR0.PG
//!    ─▶ 64-bit: out 0xf4, 0x2a ─▶ isa-debug-exit ─▶ QEMU exits with (0x2a << 1) | 1 = 85
//! ```
//!
//! Rejected: `qemu -accel kvm -machine none` only opens the device and creates no vCPU, so it
//! passes on exactly the hosts this is for. So does a guest that never leaves real mode: on
//! the broken hosts this was written for, SeaBIOS and a kernel's real-mode setup code run
//! under KVM, and the jump to protected mode hangs. An in-process `KVM_RUN` ioctl probe could
//! not be timed out safely without a child process anyway, and QEMU is on every node.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::DomainType;

/// The verdict of a [`KvmProbe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmStatus {
    /// A test guest ran under KVM.
    Usable,
    /// There is no KVM device (or libvirt offers no `kvm` domains).
    Missing,
    /// KVM is there but a test guest did not run; `reason` says what happened.
    Broken {
        /// What the probe saw.
        reason: String,
    },
}

impl KvmStatus {
    /// The domain type to use: `kvm` when usable, TCG (`qemu`) otherwise.
    pub fn domain_type(&self) -> DomainType {
        match self {
            KvmStatus::Usable => DomainType::Kvm,
            KvmStatus::Missing | KvmStatus::Broken { .. } => DomainType::Qemu,
        }
    }
}

impl fmt::Display for KvmStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvmStatus::Usable => f.write_str("KVM works"),
            KvmStatus::Missing => f.write_str("KVM is not available"),
            KvmStatus::Broken { reason } => write!(f, "KVM is present but broken: {reason}"),
        }
    }
}

/// Runs the three-instruction guest under a given accelerator.
#[derive(Debug, Clone)]
pub struct KvmProbe {
    qemu: PathBuf,
    device: PathBuf,
    timeout: Duration,
}

/// Exit status QEMU reports when the probe firmware ran: `(0x2a << 1) | 1`.
const PROBE_EXIT: i32 = 85;

impl Default for KvmProbe {
    fn default() -> Self {
        Self {
            qemu: PathBuf::from("qemu-system-x86_64"),
            device: PathBuf::from("/dev/kvm"),
            timeout: Duration::from_secs(5),
        }
    }
}

impl KvmProbe {
    /// A probe using this QEMU binary (default `qemu-system-x86_64` from `PATH`).
    pub fn with_qemu(mut self, qemu: impl Into<PathBuf>) -> Self {
        self.qemu = qemu.into();
        self
    }

    /// How long the test guest may take (default 5 s; it needs milliseconds when KVM works).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Probes KVM.
    pub fn run(&self) -> KvmStatus {
        if !self.device.exists() {
            return KvmStatus::Missing;
        }
        let status = self.run_accel("kvm");
        match &status {
            KvmStatus::Usable => tracing::debug!("KVM probe guest ran"),
            other => tracing::warn!(status = %other, "KVM unusable, guests will use TCG"),
        }
        status
    }

    /// Runs the probe guest under `accel` (`kvm` or `tcg`) without looking for the device;
    /// under `tcg` it shows the probe itself works on this host.
    pub fn run_accel(&self, accel: &str) -> KvmStatus {
        match self.try_run(accel) {
            Ok(status) => status,
            Err(e) => KvmStatus::Broken {
                reason: format!("cannot run the probe: {e}"),
            },
        }
    }

    fn try_run(&self, accel: &str) -> std::io::Result<KvmStatus> {
        let dir = tempfile::tempdir()?;
        let firmware = dir.path().join("probe.bin");
        std::fs::write(&firmware, firmware_image())?;
        let mut child = self.command(accel, &firmware).spawn()?;
        let deadline = Instant::now() + self.timeout;
        let exit = loop {
            if let Some(exit) = child.try_wait()? {
                break Some(exit);
            }
            if Instant::now() >= deadline {
                // Our own child, by its handle: nothing else is signalled.
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        let stderr = stderr.trim();
        Ok(match exit {
            None => KvmStatus::Broken {
                reason: format!(
                    "a test guest did not finish within {:?} under {accel}",
                    self.timeout
                ),
            },
            Some(exit) if exit.code() == Some(PROBE_EXIT) => KvmStatus::Usable,
            Some(exit) => KvmStatus::Broken {
                reason: format!(
                    "QEMU exited with {exit} under {accel}{}{}",
                    if stderr.is_empty() { "" } else { ": " },
                    stderr.lines().last().unwrap_or("")
                ),
            },
        })
    }

    fn command(&self, accel: &str, firmware: &Path) -> Command {
        let mut cmd = Command::new(&self.qemu);
        cmd.args(["-accel", accel, "-machine", "pc", "-m", "16"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-bios")
            .arg(firmware)
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x01"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }
}

/// The probe program (`kvm_probe.S`, assembled): real mode -> protected mode -> long mode ->
/// `out 0xf4`. Loaded at 0xF0000.
const PROGRAM: [u8; 0xb6] = [
    0xfa, 0xb8, 0x00, 0xf0, 0x8e, 0xd8, 0x66, 0x0f, 0x01, 0x16, 0xb0, 0x00, 0x0f, 0x20, 0xc0, 0x66,
    0x83, 0xc8, 0x01, 0x0f, 0x22, 0xc0, 0x66, 0xea, 0x1e, 0x00, 0x0f, 0x00, 0x08, 0x00, 0x66, 0xb8,
    0x10, 0x00, 0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0, 0xbf, 0x00, 0x10, 0x00, 0x00, 0x31, 0xc0, 0xb9,
    0x00, 0x0c, 0x00, 0x00, 0xf3, 0xab, 0xc7, 0x05, 0x00, 0x10, 0x00, 0x00, 0x03, 0x20, 0x00, 0x00,
    0xc7, 0x05, 0x00, 0x20, 0x00, 0x00, 0x03, 0x30, 0x00, 0x00, 0xc7, 0x05, 0x00, 0x30, 0x00, 0x00,
    0x83, 0x00, 0x00, 0x00, 0xb8, 0x00, 0x10, 0x00, 0x00, 0x0f, 0x22, 0xd8, 0x0f, 0x20, 0xe0, 0x83,
    0xc8, 0x20, 0x0f, 0x22, 0xe0, 0xb9, 0x80, 0x00, 0x00, 0xc0, 0x0f, 0x32, 0x0d, 0x00, 0x01, 0x00,
    0x00, 0x0f, 0x30, 0x0f, 0x20, 0xc0, 0x0d, 0x00, 0x00, 0x00, 0x80, 0x0f, 0x22, 0xc0, 0xea, 0x85,
    0x00, 0x0f, 0x00, 0x18, 0x00, 0xb0, 0x2a, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd, 0x8d, 0xb4, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x9a, 0xcf, 0x00,
    0xff, 0xff, 0x00, 0x00, 0x00, 0x92, 0xcf, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x9a, 0xaf, 0x00,
    0x1f, 0x00, 0x90, 0x00, 0x0f, 0x00,
];

/// At the reset vector F000:FFF0: `ljmp $0xF000, $0x0000` to the program.
const RESET: [u8; 5] = [0xea, 0x00, 0x00, 0x00, 0xf0];

/// 64 KiB of firmware (QEMU wants a multiple of 64 KiB): the program at the start, the reset
/// jump 16 bytes from the end, `hlt` everywhere else.
fn firmware_image() -> Vec<u8> {
    let mut image = vec![0xf4u8; 64 * 1024];
    image[..PROGRAM.len()].copy_from_slice(&PROGRAM);
    image[0xfff0..0xfff0 + RESET.len()].copy_from_slice(&RESET);
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_is_missing() {
        let probe = KvmProbe {
            device: PathBuf::from("/nonexistent/kvm"),
            ..KvmProbe::default()
        };
        assert_eq!(probe.run(), KvmStatus::Missing);
        assert_eq!(probe.run().domain_type(), DomainType::Qemu);
    }

    #[test]
    fn missing_qemu_is_broken_not_a_panic() {
        let probe = KvmProbe::default().with_qemu("/nonexistent/qemu");
        assert!(matches!(probe.run_accel("tcg"), KvmStatus::Broken { .. }));
    }

    #[test]
    fn firmware_is_the_assembled_source() {
        // binutils is always there where Rust links (gcc depends on it).
        let dir = tempfile::tempdir().unwrap();
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src/kvm_probe.S");
        let obj = dir.path().join("probe.o");
        let bin = dir.path().join("probe.bin");
        let ok = Command::new("as")
            .args(["--64", "-o"])
            .arg(&obj)
            .arg(src)
            .status()
            .unwrap();
        assert!(ok.success());
        let ok = Command::new("ld")
            .args([
                "-m",
                "elf_x86_64",
                "-Ttext=0xF0000",
                "--oformat",
                "binary",
                "-o",
            ])
            .arg(&bin)
            .arg(&obj)
            .status()
            .unwrap();
        assert!(ok.success());
        assert!(
            std::fs::read(&bin).unwrap() == firmware_image(),
            "kvm_probe.S and PROGRAM differ"
        );
    }
}
