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
                    let kvm = matches!(lv.kvm_status(), KvmStatus::Usable);
                    (lv, kvm)
                })
            })
            .await;
            match res {
                Ok(Ok((lv, kvm))) => {
                    if !kvm {
                        warn!("KVM does not work on this node: guests run emulated (TCG)");
                    }
                    info!(%uri, kvm, "hypervisor connected");
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
