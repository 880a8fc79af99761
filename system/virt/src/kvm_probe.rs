//! [`KvmProbe`]: does KVM actually run guests here?
//!
//! `/dev/kvm` can exist, open, and still hang every guest (nested virtualisation gone wrong,
//! a broken host kernel). libvirt only checks that the device opens, so it offers `kvm`
//! domains that would never boot. The probe runs a real guest instead: QEMU with a 64 KiB
//! firmware of three instructions at the reset vector that write to an `isa-debug-exit` port,
//! which makes QEMU exit at once with a known status. Anything else (an error, another
//! status, or no exit within the timeout) means KVM is not usable, and Keel uses TCG.
//!
//! ```text
//!  reset vector 0xFFFF0: mov al, 0x2a ; out 0xf4, al ; hlt
//!  isa-debug-exit at 0xf4 ──▶ QEMU exits with (0x2a << 1) | 1 = 85
//! ```
//!
//! Rejected: `qemu -accel kvm -machine none` only opens the device and creates no vCPU, so it
//! passes on exactly the hosts this is for; an in-process `KVM_RUN` ioctl probe cannot be
//! timed out safely without a child process anyway, and QEMU is already on every node.

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

/// 64 KiB of firmware (QEMU wants a multiple of 64 KiB), mapped so that its last 16 bytes hold
/// the x86 reset vector F000:FFF0.
fn firmware_image() -> Vec<u8> {
    let mut image = vec![0xf4u8; 64 * 1024]; // hlt everywhere
    let code = [
        0xb0, 0x2a, // mov al, 0x2a
        0xe6, 0xf4, // out 0xf4, al
        0xf4, // hlt
        0xeb, 0xfd, // jmp back to hlt
    ];
    let start = image.len() - 16;
    image[start..start + code.len()].copy_from_slice(&code);
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
    fn firmware_puts_the_program_at_the_reset_vector() {
        let image = firmware_image();
        assert_eq!(image.len(), 65536);
        assert_eq!(&image[0xfff0..0xfff4], &[0xb0, 0x2a, 0xe6, 0xf4]);
    }
}
