//! What a member node drives on its own host: the local `dir` pool (images, uploads, VM
//! disks) and its hypervisor.
//!
//! ```text
//!  <state>/pool/images/<image>        verified image files (the library's copy on this node)
//!  <state>/pool/uploads/<image>.part  an upload in progress (its length is what was received)
//!  <state>/pool/volumes/<volume>.qcow2   volumes (a VM's disk `<vm>-<disk>`), thin copies
//!                                        backed by an image, or blank
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_virt::{Hypervisor, KvmStatus};
use tracing::{info, warn};

/// The node's local `dir` pool.
#[derive(Debug, Clone)]
pub struct Pool {
    root: PathBuf,
}

impl Pool {
    /// The pool under `root`, with its directories created.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        for d in ["images", "uploads", "volumes"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Directory of verified images.
    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    /// Where image `name` lives on this node.
    pub fn image(&self, name: &str) -> PathBuf {
        self.images_dir().join(name)
    }

    /// Where an upload of image `name` accumulates.
    pub fn upload(&self, name: &str) -> PathBuf {
        self.root.join("uploads").join(format!("{name}.part"))
    }

    /// The disk `disk` of VM `vm`.
    pub fn volume(&self, vm: &str, disk: &str) -> PathBuf {
        self.root.join("volumes").join(format!("{vm}-{disk}.qcow2"))
    }

    /// The pool's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of volume `name` (`raw` for a raw volume, else qcow2).
    pub fn volume_file(&self, name: &str, raw: bool) -> PathBuf {
        let ext = if raw { "raw" } else { "qcow2" };
        self.root.join("volumes").join(format!("{name}.{ext}"))
    }

    /// Every VM disk file on this node.
    pub fn volumes(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.root.join("volumes"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// Free bytes on the pool's file system.
    pub fn available_bytes(&self) -> u64 {
        nix::sys::statvfs::statvfs(&self.root)
            .map(|s| s.blocks_available() * s.fragment_size())
            .unwrap_or(0)
    }
}

/// The node's host: pool and hypervisor.
pub struct Host {
    /// Local storage.
    pub pool: Pool,
    /// The node's libvirt once it answered, and whether KVM works there.
    pub hv: std::sync::OnceLock<(Arc<dyn Hypervisor>, bool)>,
    /// What the KVM probe found (set with `hv`).
    pub kvm: std::sync::OnceLock<KvmStatus>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("pool", &self.pool)
            .field("hypervisor", &self.hv.get().map(|(_, kvm)| *kvm))
            .finish()
    }
}

impl Host {
    /// Opens the pool under `state_dir`; the hypervisor is connected by [`Host::connect`].
    pub fn open(state_dir: &Path) -> std::io::Result<Self> {
        Ok(Self {
            pool: Pool::open(&state_dir.join("pool"))?,
            hv: std::sync::OnceLock::new(),
            kvm: std::sync::OnceLock::new(),
        })
    }

    /// Connects to libvirt at `uri`, retrying until it answers (in the dev cluster libvirt
    /// starts alongside keeld), then probes whether KVM really works.
    pub async fn connect(self: Arc<Self>, uri: String) {
        let mut warned = false;
        loop {
            let u = uri.clone();
            let res = tokio::task::spawn_blocking(move || {
                keel_virt::Libvirt::connect(&u).map(|lv| {
                    let status = lv.kvm_status();
                    (lv, status)
                })
            })
            .await;
            match res {
                Ok(Ok((lv, status))) => {
                    let kvm = matches!(status, KvmStatus::Usable);
                    if !kvm {
                        warn!(kvm = %status, "KVM does not work on this node: guests run emulated (TCG)");
                    }
                    info!(%uri, kvm, "hypervisor connected");
                    let _ = self.kvm.set(status);
                    let _ = self.hv.set((Arc::new(lv), kvm));
                    return;
                }
                Ok(Err(e)) if !warned => {
                    warn!(%uri, error = %e, "no hypervisor yet: this node runs no VMs until libvirt answers");
                    warned = true;
                }
                _ => {}
            }
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
    }
}

/// Cluster setting that forces emulation on every node (`"tcg"`; `"auto"` or absent: KVM
/// when the probe found it usable).
pub const ACCEL_SETTING: &str = "virt.accel";

/// The same for one node: `virt.accel.<node>` (it wins over the cluster-wide one).
pub fn node_accel_setting(node: &str) -> String {
    format!("{ACCEL_SETTING}.{node}")
}

/// Whether a setting value forces TCG; `None` when the value is not one Keel knows (the caller
/// says so in the node's status rather than guessing).
pub fn forces_tcg(value: &serde_json::Value) -> Option<bool> {
    match value.as_str() {
        Some("tcg") => Some(true),
        Some("auto") | Some("kvm") => Some(false),
        _ => None,
    }
}

/// How guests run on this node (pure): the probe's verdict and the settings, node first.
pub fn hypervisor_status(
    probe: &KvmStatus,
    node_setting: Option<&serde_json::Value>,
    cluster_setting: Option<&serde_json::Value>,
    node: &str,
) -> keel_model::HypervisorStatus {
    use keel_model::{Accel, HypervisorStatus, KvmState};
    let kvm = match probe {
        KvmStatus::Usable => KvmState::Usable,
        KvmStatus::Missing => KvmState::Missing,
        KvmStatus::Broken { .. } => KvmState::Broken,
    };
    let (key, setting) = match (node_setting, cluster_setting) {
        (Some(v), _) => (node_accel_setting(node), Some(v)),
        (None, Some(v)) => (ACCEL_SETTING.to_string(), Some(v)),
        (None, None) => (String::new(), None),
    };
    let mut notes = Vec::new();
    let forced = match setting.map(|v| (v, forces_tcg(v))) {
        Some((_, Some(f))) => f,
        Some((v, None)) => {
            notes.push(format!(
                "setting {key} = {v} is not known (use \"tcg\" or \"auto\"); it is ignored"
            ));
            false
        }
        None => false,
    };
    let accel = if kvm == KvmState::Usable && !forced {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    if accel == Accel::Tcg {
        let why = if forced {
            format!("setting {key} = \"tcg\" forces emulation")
        } else {
            match probe {
                KvmStatus::Missing => "there is no KVM device (/dev/kvm)".to_string(),
                KvmStatus::Broken { reason } => {
                    format!("KVM is present but a test guest did not run: {reason}")
                }
                KvmStatus::Usable => String::new(),
            }
        };
        notes.insert(0, format!("guests run emulated (TCG), much slower: {why}"));
    }
    HypervisorStatus {
        accel,
        kvm,
        message: notes.join("; "),
    }
}

/// Records how guests run on this node in its status (no write when nothing changed); true
/// when KVM may be used.
pub async fn report_hypervisor(m: &crate::member::Member, host: &Host) -> bool {
    let Some(probe) = host.kvm.get() else {
        return false;
    };
    let me = m.identity.name.clone();
    let setting = |key: &str| {
        m.get(crate::member::kinds::SETTINGS, key)
            .ok()
            .flatten()
            .and_then(|r| r.value.get("value").cloned())
    };
    let status = hypervisor_status(
        probe,
        setting(&node_accel_setting(&me)).as_ref(),
        setting(ACCEL_SETTING).as_ref(),
        &me,
    );
    let kvm = status.accel == keel_model::Accel::Kvm;
    let res = crate::lifecycle::update_node(m, &me, |n| {
        if n.status.hypervisor.as_ref() != Some(&status) {
            n.status.hypervisor = Some(status.clone());
        }
    })
    .await;
    if let Err(e) = res {
        tracing::debug!(error = %e, "recording the hypervisor status failed");
    }
    kvm
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_model::{Accel, KvmState};
    use serde_json::json;

    #[test]
    fn kvm_when_usable_and_not_forced() {
        let s = hypervisor_status(&KvmStatus::Usable, None, None, "n1");
        assert_eq!(
            (s.accel, s.kvm, s.message.as_str()),
            (Accel::Kvm, KvmState::Usable, "")
        );
        let s = hypervisor_status(&KvmStatus::Usable, None, Some(&json!("auto")), "n1");
        assert_eq!(s.accel, Accel::Kvm);
    }

    #[test]
    fn broken_kvm_falls_back_with_the_reason() {
        let probe = KvmStatus::Broken {
            reason: "no exit within 3s".into(),
        };
        let s = hypervisor_status(&probe, None, None, "n1");
        assert_eq!((s.accel, s.kvm), (Accel::Tcg, KvmState::Broken));
        assert!(s.message.contains("no exit within 3s"), "{}", s.message);
        let s = hypervisor_status(&KvmStatus::Missing, None, None, "n1");
        assert!(s.message.contains("/dev/kvm"), "{}", s.message);
    }

    #[test]
    fn settings_force_tcg_node_first() {
        let s = hypervisor_status(&KvmStatus::Usable, None, Some(&json!("tcg")), "n1");
        assert_eq!(s.accel, Accel::Tcg);
        assert!(s.message.contains("virt.accel = \"tcg\""), "{}", s.message);
        // The node's own setting wins over the cluster's.
        let s = hypervisor_status(
            &KvmStatus::Usable,
            Some(&json!("auto")),
            Some(&json!("tcg")),
            "n1",
        );
        assert_eq!(s.accel, Accel::Kvm);
        let s = hypervisor_status(&KvmStatus::Usable, Some(&json!("tcg")), None, "n1");
        assert!(s.message.contains("virt.accel.n1"), "{}", s.message);
        // An unknown value is ignored, and said so.
        let s = hypervisor_status(&KvmStatus::Usable, Some(&json!("fast")), None, "n1");
        assert_eq!(s.accel, Accel::Kvm);
        assert!(s.message.contains("not known"), "{}", s.message);
    }
}
