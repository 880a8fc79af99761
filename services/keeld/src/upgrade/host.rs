//! What a node's upgrade does to its own host, behind a small trait: the appliance's
//! implementation ([`SlotHost`]: keel-update's slot writer and blessing, `systemctl reboot`)
//! and whatever a test needs.

use std::path::{Path, PathBuf};

use keel_update::{slot, InstallOptions, Layout};

/// The host actions of an upgrade. Blocking: call from `spawn_blocking`.
pub trait UpgradeHost: Send + Sync + 'static {
    /// `/proc/sys/kernel/random/boot_id`.
    fn boot_id(&self) -> String;
    /// The running image version (`IMAGE_VERSION` of os-release; empty when not a Keel image).
    fn running_version(&self) -> String;
    /// Whether this node can be upgraded in place; the reason when not.
    fn check(&self) -> Result<(), String>;
    /// Verifies `bundle` and writes it to the inactive slot with a boot counter of `tries`;
    /// returns what was written, for the record.
    fn install(&self, bundle: &Path, tries: u32, allow_downgrade: bool) -> Result<String, String>;
    /// Marks the running boot good.
    fn bless(&self) -> Result<String, String>;
    /// Reboots the machine.
    fn reboot(&self) -> Result<(), String>;
}

/// The message of a node that does not boot from Keel's slots.
pub fn not_upgradable(detail: &str) -> String {
    format!(
        "this node does not boot from Keel's A/B root slots (dev cluster or foreign OS); it cannot be upgraded in place ({detail})"
    )
}

/// The appliance: keel-update on the real slots and ESP.
#[derive(Debug, Clone)]
pub struct SlotHost {
    /// Where the slots, the ESP and the trusted keys are.
    pub layout: Layout,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id_path: PathBuf,
}

impl SlotHost {
    /// The appliance's layout with the trusted keys from `keys`.
    pub fn new(keys: &Path) -> Self {
        let mut layout = Layout::system();
        layout.keys = keys.to_path_buf();
        Self {
            layout,
            boot_id_path: "/proc/sys/kernel/random/boot_id".into(),
        }
    }
}

impl UpgradeHost for SlotHost {
    fn boot_id(&self) -> String {
        std::fs::read_to_string(&self.boot_id_path)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    fn running_version(&self) -> String {
        slot::running_version(&self.layout).unwrap_or_default()
    }

    fn check(&self) -> Result<(), String> {
        let running =
            slot::running_slot(&self.layout).map_err(|e| not_upgradable(&e.to_string()))?;
        for s in [running, running.other()] {
            let p = self.layout.by_partlabel.join(s.partlabel());
            if !p.exists() {
                return Err(not_upgradable(&format!(
                    "booted from slot {running}, but {} does not exist",
                    p.display()
                )));
            }
        }
        Ok(())
    }

    fn install(&self, bundle: &Path, tries: u32, allow_downgrade: bool) -> Result<String, String> {
        self.check()?;
        self.layout
            .ensure_esp_mounted()
            .map_err(|e| e.to_string())?;
        let opts = InstallOptions {
            tries,
            allow_downgrade,
        };
        let i = slot::install(&self.layout, bundle, &opts).map_err(|e| e.to_string())?;
        Ok(format!(
            "slot {} holds {} (boot entry {})",
            i.slot, i.version, i.entry
        ))
    }

    fn bless(&self) -> Result<String, String> {
        self.layout
            .ensure_esp_mounted()
            .map_err(|e| e.to_string())?;
        match slot::bless(&self.layout).map_err(|e| e.to_string())? {
            Some(entry) => Ok(format!("boot blessed ({entry})")),
            None => Ok("boot already blessed".into()),
        }
    }

    fn reboot(&self) -> Result<(), String> {
        let out = std::process::Command::new("systemctl")
            .arg("reboot")
            .output()
            .map_err(|e| format!("running systemctl reboot: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "systemctl reboot failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_without_slots_says_it_cannot_be_upgraded() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("cmdline"), "root=/dev/sda1 quiet\n").unwrap();
        let mut h = SlotHost::new(tmp.path());
        h.layout.cmdline = tmp.path().join("cmdline");
        h.layout.by_partlabel = tmp.path().join("by-partlabel");
        let e = h.check().unwrap_err();
        assert!(e.contains("cannot be upgraded in place"), "{e}");
        let e = h.install(tmp.path(), 3, false).unwrap_err();
        assert!(e.contains("cannot be upgraded in place"), "{e}");

        // keel.slot= but no partitions: still refused, naming the missing slot.
        std::fs::write(tmp.path().join("cmdline"), "keel.slot=a\n").unwrap();
        let e = h.check().unwrap_err();
        assert!(e.contains("root-a"), "{e}");
    }
}
