//! A VM's boot configuration on its node: firmware (BIOS or UEFI with a per-VM variable
//! store), an attached ISO, the cloud-init NoCloud seed, the boot order, and the `autostart`
//! policy after the node's host restarts.
//!
//! ```text
//!  POST /vms ─▶ check_create: spec.iso names a ready iso Image (else 400 spec.iso);
//!               a plain cloud_init.password is replaced by its SHA-512 crypt hash
//!  node reconcile ─▶ prepare(vm):
//!     firmware: spec.firmware, else that of the image it boots from, else BIOS
//!        uefi ─▶ OVMF code + vars template from the host, NVRAM <pool>/nvram/<uid>.fd
//!     iso      ─▶ images::ensure_local ─▶ CD-ROM sda (read-only, SATA)
//!     seed     ─▶ render meta-data + user-data ─▶ genisoimage (label cidata)
//!                 ─▶ <pool>/cloud-init/<uid>.iso (tmp + rename; rebuilt when the rendered
//!                 content's digest in <uid>.sum differs) ─▶ the next CD-ROM
//!     boot     ─▶ spec.boot_devices() ─▶ per-device <boot order='N'/> (or <boot dev='hd'/>)
//!  VM deleted ─▶ remove_files: seed, digest, NVRAM
//!  keeld start, first since the host booted (no /run/keel/host-booted) ─▶ boot_policy:
//!     VMs bound here that should run but whose domain does not, with autostart false
//!        ─▶ power_state stopped + condition Autostart=false (HostRestarted)
//!     then the marker is written; a keeld restart finds it and changes nothing
//! ```
//!
//! The seed and NVRAM live in the node's pool directory (`<state>/pool`), so a migration's
//! path map already points the destination at its own copy.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_model::{
    set_condition, CloudInit, Condition, ConditionStatus, DiskSource, ImageFormat, PowerState, Vm,
    VmCreate, VmSpec,
};
use keel_virt::{Boot, BootDevice, Cdrom, Firmware, Hypervisor};
use sha2::{Digest, Sha512};
use tracing::{info, warn};

use crate::error::ApiError;
use crate::host::Host;
use crate::member::Member;

/// The marker that keeld has started since the host booted. `/run` is a tmpfs that every
/// boot starts empty (in the dev cluster: the node's private `/run`), so its absence means
/// the host restarted.
pub const HOST_BOOTED_MARKER: &str = "/run/keel/host-booted";

/// The condition a VM gets when its node restarted and `autostart` kept it off.
pub const AUTOSTART_CONDITION: &str = "Autostart";

/// OVMF code and variable-store template pairs, most preferred first (Debian's `ovmf`).
const OVMF: &[(&str, &str)] = &[
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
];

/// Where the cloud-init seed of the VM with uid `uid` lives on this node. Files are named
/// by uid, not name, so that a rename keeps them.
pub fn seed_path(host: &Host, uid: &str) -> PathBuf {
    host.pool
        .root()
        .join("cloud-init")
        .join(format!("{uid}.iso"))
}

/// The digest of the content the seed was built from.
fn seed_sum_path(host: &Host, uid: &str) -> PathBuf {
    host.pool
        .root()
        .join("cloud-init")
        .join(format!("{uid}.sum"))
}

/// Where the UEFI variable store of the VM with uid `uid` lives on this node.
pub fn nvram_path(host: &Host, uid: &str) -> PathBuf {
    host.pool.root().join("nvram").join(format!("{uid}.fd"))
}

// ---------------------------------------------------------------------------------------
// API side
// ---------------------------------------------------------------------------------------

/// `POST /vms` checks beyond the model: the ISO is a ready image in ISO format. Also
/// replaces a plain cloud-init password by its hash, so the clear text is never stored.
pub fn check_create(m: &Member, body: &mut VmCreate) -> Result<(), ApiError> {
    check_iso(m, &body.spec)?;
    if let Some(ci) = body.spec.cloud_init.as_mut() {
        protect_password(ci);
    }
    Ok(())
}

/// The ISO `spec` attaches, if any, is a ready image in ISO format (400 `spec.iso`). For
/// every path that sets `spec.iso` (create, PATCH).
pub fn check_iso(m: &Member, spec: &VmSpec) -> Result<(), ApiError> {
    if let Some(iso) = &spec.iso {
        let field = Some("spec.iso".to_string());
        let rec = m.get(crate::images::KIND, iso.as_str())?.ok_or_else(|| {
            ApiError::bad(
                format!("image {iso} does not exist; import the ISO first (keel image import FILE --format iso)"),
                field.clone(),
            )
        })?;
        let img = crate::images::image_of(&rec)?;
        let format = img.status.format.or(img.spec.format);
        if format != Some(ImageFormat::Iso) {
            return Err(ApiError::bad(
                format!(
                    "image {iso} is not an ISO (its format is {}); attach an image imported with --format iso",
                    format.map_or("unknown", ImageFormat::as_str)
                ),
                field,
            ));
        }
        if img.status.phase != keel_model::ImagePhase::Ready {
            return Err(ApiError::bad(
                format!("image {iso} is not ready yet ({:?})", img.status.phase),
                field,
            ));
        }
    }
    Ok(())
}

/// Replaces a plain password by its SHA-512 crypt hash; a crypt(3) hash is kept as given.
/// For every path that stores a cloud-init spec (create, PATCH).
pub fn protect_password(ci: &mut CloudInit) {
    if let Some(pw) = &ci.password {
        if !is_crypt_hash(pw) {
            let salt: String = (0..16)
                .map(|_| char::from(CRYPT_ALPHABET[usize::from(rand::random::<u8>() % 64)]))
                .collect();
            ci.password = Some(sha512_crypt(pw.as_bytes(), salt.as_bytes()));
        }
    }
}

/// `$id$...` with a known crypt(3) scheme: MD5, SHA-256, SHA-512, bcrypt, yescrypt.
fn is_crypt_hash(s: &str) -> bool {
    ["$1$", "$5$", "$6$", "$2a$", "$2b$", "$2y$", "$y$"]
        .iter()
        .any(|p| s.starts_with(p))
        && s.len() >= 20
        && !s.contains([' ', ':'])
}

const CRYPT_ALPHABET: &[u8; 64] =
    b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// SHA-512 crypt (`$6$`, glibc's scheme; 5000 rounds), which every Linux `chpasswd -e`
/// understands. `salt` is at most 16 bytes (longer is cut, as glibc does).
pub fn sha512_crypt(key: &[u8], salt: &[u8]) -> String {
    let salt = &salt[..salt.len().min(16)];
    let sha = |parts: &[&[u8]]| {
        let mut h = Sha512::new();
        for p in parts {
            h.update(p);
        }
        h.finalize()
    };
    let b = sha(&[key, salt, key]);
    let mut a = Sha512::new();
    a.update(key);
    a.update(salt);
    let mut n = key.len();
    while n > 64 {
        a.update(b);
        n -= 64;
    }
    a.update(&b[..n]);
    let mut n = key.len();
    while n > 0 {
        if n & 1 == 1 {
            a.update(b);
        } else {
            a.update(key);
        }
        n >>= 1;
    }
    let mut c = a.finalize();
    let dp = {
        let mut h = Sha512::new();
        for _ in 0..key.len() {
            h.update(key);
        }
        h.finalize()
    };
    let p: Vec<u8> = dp.iter().cycle().take(key.len()).copied().collect();
    let ds = {
        let mut h = Sha512::new();
        for _ in 0..(16 + usize::from(c[0])) {
            h.update(salt);
        }
        h.finalize()
    };
    let s: Vec<u8> = ds.iter().take(salt.len()).copied().collect();
    for r in 0..5000u32 {
        let mut h = Sha512::new();
        if r & 1 == 1 {
            h.update(&p);
        } else {
            h.update(c);
        }
        if r % 3 != 0 {
            h.update(&s);
        }
        if r % 7 != 0 {
            h.update(&p);
        }
        if r & 1 == 1 {
            h.update(c);
        } else {
            h.update(&p);
        }
        c = h.finalize();
    }
    let mut out = format!("$6${}$", String::from_utf8_lossy(salt));
    let mut put = |b2: u8, b1: u8, b0: u8, chars: usize| {
        let mut w = (u32::from(b2) << 16) | (u32::from(b1) << 8) | u32::from(b0);
        for _ in 0..chars {
            out.push(char::from(CRYPT_ALPHABET[(w & 0x3f) as usize]));
            w >>= 6;
        }
    };
    const ORDER: [(usize, usize, usize); 21] = [
        (0, 21, 42),
        (22, 43, 1),
        (44, 2, 23),
        (3, 24, 45),
        (25, 46, 4),
        (47, 5, 26),
        (6, 27, 48),
        (28, 49, 7),
        (50, 8, 29),
        (9, 30, 51),
        (31, 52, 10),
        (53, 11, 32),
        (12, 33, 54),
        (34, 55, 13),
        (56, 14, 35),
        (15, 36, 57),
        (37, 58, 16),
        (59, 17, 38),
        (18, 39, 60),
        (40, 61, 19),
        (62, 20, 41),
    ];
    for (x, y, z) in ORDER {
        put(c[x], c[y], c[z], 4);
    }
    put(0, 0, c[63], 2);
    out
}

// ---------------------------------------------------------------------------------------
// Seed rendering (pure)
// ---------------------------------------------------------------------------------------

/// The files of a NoCloud seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// `meta-data`: instance-id (the VM's uid) and local-hostname.
    pub meta_data: String,
    /// `user-data`: the given document, or a #cloud-config made from the spec.
    pub user_data: String,
}

impl Seed {
    /// A digest of both files: the seed is rebuilt when it changes.
    pub fn digest(&self) -> String {
        let mut h = sha2::Sha256::new();
        h.update(self.meta_data.as_bytes());
        h.update([0u8]);
        h.update(self.user_data.as_bytes());
        crate::join::hex(&h.finalize())
    }
}

/// A YAML scalar: a JSON string is a valid YAML double-quoted scalar.
fn yaml_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Renders the NoCloud seed of VM `name` (uid `uid`) from its cloud-init spec (pure).
pub fn render_seed(name: &str, uid: &str, ci: &CloudInit) -> Seed {
    let hostname = ci.hostname.as_deref().unwrap_or(name);
    let meta_data = format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        yaml_str(uid),
        yaml_str(hostname)
    );
    let user_data = match &ci.user_data {
        Some(ud) => ud.clone(),
        None => {
            let mut u = String::from("#cloud-config\n");
            u.push_str(&format!("hostname: {}\n", yaml_str(hostname)));
            if !ci.ssh_keys.is_empty() {
                u.push_str("ssh_authorized_keys:\n");
                for k in &ci.ssh_keys {
                    u.push_str(&format!("  - {}\n", yaml_str(k.trim())));
                }
            }
            if let Some(pw) = &ci.password {
                // A crypt(3) hash: cloud-init hands it to `chpasswd -e` for the default user.
                u.push_str(&format!(
                    "password: {}\nchpasswd:\n  expire: false\n",
                    yaml_str(pw)
                ));
            }
            u
        }
    };
    Seed {
        meta_data,
        user_data,
    }
}

// ---------------------------------------------------------------------------------------
// Node side
// ---------------------------------------------------------------------------------------

/// What a VM's domain gets from its boot configuration.
#[derive(Debug, Clone)]
pub struct BootConfig {
    /// BIOS or UEFI.
    pub firmware: Firmware,
    /// What it boots.
    pub boot: Boot,
    /// The ISO (if attached), then the seed (if any).
    pub cdroms: Vec<Cdrom>,
}

/// The firmware VM `vm` gets: its own choice, else that of the image it boots from, else
/// BIOS.
fn wanted_firmware(m: &Member, spec: &VmSpec) -> keel_model::Firmware {
    if let Some(f) = spec.firmware {
        return f;
    }
    let image_firmware = |name: &str| {
        m.get(crate::images::KIND, name)
            .ok()
            .flatten()
            .and_then(|r| crate::images::image_of(&r).ok())
            .map(|i| i.spec.firmware)
    };
    for dev in spec.boot_devices() {
        let found = match dev {
            keel_model::BootDevice::Iso => {
                spec.iso.as_ref().and_then(|i| image_firmware(i.as_str()))
            }
            keel_model::BootDevice::Disk(_, d) => match &d.source {
                DiskSource::Image { image, .. } => image_firmware(image.as_str()),
                _ => None,
            },
            keel_model::BootDevice::Nic(..) => None,
        };
        if let Some(f) = found {
            return f;
        }
    }
    keel_model::Firmware::Bios
}

/// Gets the node ready for VM `vm`'s firmware, ISO and seed, and says how its domain boots.
pub async fn prepare(m: &Member, host: &Host, vm: &Vm) -> Result<BootConfig, String> {
    let name = vm.metadata.name.as_str();
    let uid = vm.metadata.uid.as_str();
    let firmware = match wanted_firmware(m, &vm.spec) {
        keel_model::Firmware::Bios => Firmware::Bios,
        keel_model::Firmware::Uefi => {
            let (code, vars) = OVMF
                .iter()
                .find(|(c, v)| Path::new(c).is_file() && Path::new(v).is_file())
                .ok_or("UEFI firmware is not installed on this node (install the ovmf package)")?;
            let nvram = nvram_path(host, uid);
            if let Some(dir) = nvram.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            }
            // libvirt copies the template into a missing NVRAM file when the domain starts.
            Firmware::Uefi {
                loader: PathBuf::from(code),
                vars_template: PathBuf::from(vars),
                nvram,
            }
        }
    };
    let mut cdroms = Vec::new();
    let mut iso_index = None;
    if let Some(iso) = &vm.spec.iso {
        let (path, _) = crate::images::ensure_local(m, host, iso.as_str()).await?;
        iso_index = Some(cdroms.len());
        cdroms.push(Cdrom { path });
    }
    match &vm.spec.cloud_init {
        Some(ci) if ci.password.as_deref().is_some_and(|p| !is_crypt_hash(p)) => {
            // A path that stored a plain password (every API path should hash it first):
            // hash it in the store now, and build the seed from that next round.
            crate::compute::update(m, name, |v| {
                if let Some(ci) = v.spec.cloud_init.as_mut() {
                    protect_password(ci);
                }
            })
            .await
            .map_err(|e| e.to_string())?;
            warn!(
                vm = name,
                "a plain cloud-init password was stored; replaced by its hash"
            );
            return Err("the cloud-init password was stored in clear; hashed it, retrying".into());
        }
        Some(ci) => {
            let seed = render_seed(name, &vm.metadata.uid, ci);
            let path = ensure_seed(host, uid, &seed).await?;
            cdroms.push(Cdrom { path });
        }
        None => {
            // Detached (or never set): no seed stays behind.
            for p in [seed_path(host, uid), seed_sum_path(host, uid)] {
                remove_if_exists(&p)?;
            }
        }
    }
    let boot = if vm.spec.boot_order.is_empty() && vm.spec.iso.is_none() {
        // The default since before boot orders: the first disk (`<boot dev='hd'/>`).
        Boot::Disk
    } else {
        let devices = vm
            .spec
            .boot_devices()
            .into_iter()
            .filter_map(|d| match d {
                keel_model::BootDevice::Iso => iso_index.map(BootDevice::Cdrom),
                keel_model::BootDevice::Disk(i, _) => Some(BootDevice::Disk(i)),
                keel_model::BootDevice::Nic(i, _) => Some(BootDevice::Nic(i)),
            })
            .collect();
        Boot::Order { devices }
    };
    Ok(BootConfig {
        firmware,
        boot,
        cdroms,
    })
}

fn remove_if_exists(p: &Path) -> Result<(), String> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", p.display())),
    }
}

/// Builds the seed ISO unless the one on disk was built from the same content. The image
/// is written beside its final name and renamed into place, so a crash leaves either the
/// old seed or the new one; the digest is written last.
async fn ensure_seed(host: &Host, uid: &str, seed: &Seed) -> Result<PathBuf, String> {
    let path = seed_path(host, uid);
    let sum = seed_sum_path(host, uid);
    let digest = seed.digest();
    if path.is_file() && std::fs::read_to_string(&sum).ok().as_deref() == Some(digest.as_str()) {
        return Ok(path);
    }
    let dir = path
        .parent()
        .ok_or_else(|| format!("{} has no parent", path.display()))?
        .to_path_buf();
    let work = dir.join(format!(".{uid}.d"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    std::fs::write(work.join("meta-data"), &seed.meta_data)
        .map_err(|e| format!("writing meta-data: {e}"))?;
    std::fs::write(work.join("user-data"), &seed.user_data)
        .map_err(|e| format!("writing user-data: {e}"))?;
    let tmp = dir.join(format!(".{uid}.iso.tmp"));
    build_iso(&work, &tmp).await?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("renaming the seed into place: {e}"))?;
    let _ = std::fs::remove_dir_all(&work);
    let sum_tmp = dir.join(format!(".{uid}.sum.tmp"));
    std::fs::write(&sum_tmp, &digest).map_err(|e| format!("writing the seed digest: {e}"))?;
    std::fs::rename(&sum_tmp, &sum).map_err(|e| format!("writing the seed digest: {e}"))?;
    info!(uid, path = %path.display(), "cloud-init seed built");
    Ok(path)
}

/// An ISO 9660 image labelled `cidata` (Joliet and Rock Ridge) of the files in `dir`:
/// genisoimage, or xorriso's mkisofs emulation where that is what the host has.
async fn build_iso(dir: &Path, out: &Path) -> Result<(), String> {
    let files = [dir.join("user-data"), dir.join("meta-data")];
    let mut last = String::new();
    for (program, prefix) in [
        ("genisoimage", &[][..]),
        ("xorriso", &["-as", "mkisofs"][..]),
    ] {
        let res = tokio::process::Command::new(program)
            .args(prefix)
            .args(["-quiet", "-output"])
            .arg(out)
            .args(["-volid", "cidata", "-joliet", "-rock"])
            .args(&files)
            .output()
            .await;
        match res {
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => {
                return Err(format!(
                    "{program} failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ))
            }
            Err(e) => last = format!("{program}: {e}"),
        }
    }
    Err(format!(
        "cannot build the cloud-init seed: neither genisoimage nor xorriso runs ({last})"
    ))
}

/// Removes the seed and NVRAM of the VM with uid `uid` from this node (its domain is gone).
pub fn remove_files(host: &Host, uid: &str) -> Result<(), String> {
    for p in [
        seed_path(host, uid),
        seed_sum_path(host, uid),
        nvram_path(host, uid),
    ] {
        remove_if_exists(&p)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// autostart
// ---------------------------------------------------------------------------------------

/// What happens to a VM bound to a node whose host just booted (pure): `true` when it is to
/// be left off (it should run, it was running here before the host went down, its domain
/// does not run now, and autostart is off). A VM that never ran yet (created while this
/// node's keeld was starting: phase pending or scheduling) is not "left" by a restart.
pub fn stays_off_after_boot(
    spec: &VmSpec,
    phase: keel_model::VmPhase,
    domain_active: bool,
) -> bool {
    use keel_model::VmPhase;
    let was_running = matches!(
        phase,
        VmPhase::Starting | VmPhase::Running | VmPhase::Stopping
    );
    !spec.autostart
        && spec.power_state != PowerState::Stopped
        && !spec.template
        && was_running
        && !domain_active
}

/// Once per host boot, before this node's reconciler first acts: VMs bound here that should
/// run but whose domain does not (the host restarted under them) and whose `autostart` is
/// off are set to `stopped`, with a condition saying why; the others are started by the
/// reconciler as usual. Then the marker is written, so a keeld restart does nothing here.
/// `Ok(false)` when the store could not be read consistently yet (try again).
pub async fn boot_policy(m: &Member, hv: &Arc<dyn Hypervisor>) -> Result<bool, String> {
    let marker = Path::new(HOST_BOOTED_MARKER);
    if marker.exists() {
        return Ok(true);
    }
    // Every VM bound here, as the cluster knows it (not a replica that is catching up).
    if m.linearizable().await.is_err() {
        return Ok(false);
    }
    let me = m.identity.name.clone();
    let vms: Vec<Vm> = m
        .list(crate::compute::VMS)
        .map_err(|e| e.to_string())?
        .iter()
        .filter_map(|r| crate::compute::vm_of(r).ok())
        .filter(|v| {
            v.status.node.as_deref() == Some(me.as_str())
                && v.status.migration.is_none()
                && v.metadata.deletion_requested.is_none()
        })
        .collect();
    for vm in vms {
        let name = vm.metadata.name.clone();
        let h = hv.clone();
        let n = name.clone();
        let active = tokio::task::spawn_blocking(move || {
            h.domain(&n).map(|d| d.state.is_active()).unwrap_or(false)
        })
        .await
        .map_err(|e| e.to_string())?;
        if !stays_off_after_boot(&vm.spec, vm.status.phase, active) {
            continue;
        }
        let now = crate::now_rfc3339();
        crate::compute::update(m, &name, |v| {
            if !stays_off_after_boot(&v.spec, v.status.phase, false) {
                return;
            }
            v.spec.power_state = PowerState::Stopped;
            set_condition(
                &mut v.status.conditions,
                Condition::new(
                    AUTOSTART_CONDITION,
                    ConditionStatus::False,
                    "HostRestarted",
                    "the node's host restarted and autostart is off: the VM was left stopped (start it to run it again)",
                    now.clone(),
                ),
            );
        })
        .await
        .map_err(|e| e.to_string())?;
        info!(vm = %name, "host restarted: VM left stopped (autostart off)");
    }
    if let Some(dir) = marker.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    if let Err(e) = std::fs::write(marker, crate::now_rfc3339()) {
        warn!(error = %e, "cannot write the host-booted marker");
        return Err(format!("writing {HOST_BOOTED_MARKER}: {e}"));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha512_crypt_matches_glibc() {
        // The reference vector of the SHA-crypt specification (and `openssl passwd -6`).
        assert_eq!(
            sha512_crypt(b"Hello world!", b"saltstring"),
            "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
        );
        // A key longer than one SHA-512 block.
        let long = [b'k'; 130];
        let h = sha512_crypt(&long, b"abc");
        assert!(h.starts_with("$6$abc$") && h.len() == 7 + 86, "{h}");
    }

    #[test]
    fn passwords_are_hashed_once() {
        let mut ci = CloudInit {
            password: Some("s3cret pass".into()),
            ..CloudInit::default()
        };
        protect_password(&mut ci);
        let hashed = ci.password.clone().unwrap();
        assert!(hashed.starts_with("$6$"), "{hashed}");
        assert!(!hashed.contains("s3cret"));
        protect_password(&mut ci);
        assert_eq!(ci.password.as_deref(), Some(hashed.as_str()), "kept as is");
        let mut two = CloudInit {
            password: Some("s3cret pass".into()),
            ..CloudInit::default()
        };
        protect_password(&mut two);
        assert_ne!(two.password.as_deref(), Some(hashed.as_str()), "salted");
    }

    #[test]
    fn seed_from_the_spec() {
        let ci = CloudInit {
            hostname: Some("web-1.example".into()),
            ssh_keys: vec!["ssh-ed25519 AAAAC3Nza me@host".into()],
            password: Some("$6$abc$xyz".into()),
            user_data: None,
        };
        let s = render_seed("vm1", "0000-uid", &ci);
        assert_eq!(
            s.meta_data,
            "instance-id: \"0000-uid\"\nlocal-hostname: \"web-1.example\"\n"
        );
        assert_eq!(
            s.user_data,
            "#cloud-config\nhostname: \"web-1.example\"\nssh_authorized_keys:\n  - \"ssh-ed25519 AAAAC3Nza me@host\"\npassword: \"$6$abc$xyz\"\nchpasswd:\n  expire: false\n"
        );
    }

    #[test]
    fn seed_defaults_and_raw_user_data() {
        let s = render_seed("vm1", "u", &CloudInit::default());
        assert_eq!(s.meta_data, "instance-id: \"u\"\nlocal-hostname: \"vm1\"\n");
        assert_eq!(s.user_data, "#cloud-config\nhostname: \"vm1\"\n");
        let raw = CloudInit {
            user_data: Some("#!/bin/sh\necho hi\n".into()),
            ..CloudInit::default()
        };
        let r = render_seed("vm1", "u", &raw);
        assert_eq!(r.user_data, "#!/bin/sh\necho hi\n");
        assert_ne!(r.digest(), s.digest());
        assert_eq!(r.digest(), render_seed("vm1", "u", &raw).digest());
    }

    #[test]
    fn only_autostart_off_vms_that_should_run_stay_off() {
        use keel_model::VmPhase::{Running, Scheduling, Starting};
        let mut spec = VmSpec::new(1, keel_model::Bytes::from_mib(128));
        assert!(
            !stays_off_after_boot(&spec, Running, false),
            "autostart defaults on"
        );
        spec.autostart = false;
        assert!(stays_off_after_boot(&spec, Running, false));
        assert!(stays_off_after_boot(&spec, Starting, false));
        assert!(
            !stays_off_after_boot(&spec, Scheduling, false),
            "a VM that never ran is not left off by a restart"
        );
        assert!(
            !stays_off_after_boot(&spec, Running, true),
            "a running guest is never touched"
        );
        spec.power_state = PowerState::Stopped;
        assert!(!stays_off_after_boot(&spec, Running, false));
        spec.power_state = PowerState::Paused;
        assert!(stays_off_after_boot(&spec, Running, false));
    }

    #[tokio::test]
    async fn seed_iso_is_labelled_cidata_and_rebuilt_on_change() {
        if std::process::Command::new("genisoimage")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipped: genisoimage is not installed");
            return;
        }
        let dir = std::env::temp_dir().join(format!("keel-seed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let host = Host::open(&dir).unwrap();
        let seed = render_seed("vm1", "uid-1", &CloudInit::default());
        let path = ensure_seed(&host, "vm1", &seed).await.unwrap();
        let info = std::process::Command::new("isoinfo")
            .args(["-d", "-i"])
            .arg(&path)
            .output()
            .unwrap();
        let info = String::from_utf8_lossy(&info.stdout);
        assert!(info.contains("Volume id: cidata"), "{info}");
        let read = |f: &str| {
            let o = std::process::Command::new("isoinfo")
                .args(["-R", "-i"])
                .arg(&path)
                .args(["-x", f])
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).to_string()
        };
        assert_eq!(read("/meta-data"), seed.meta_data);
        assert_eq!(read("/user-data"), seed.user_data);
        let inode = std::fs::metadata(&path).unwrap();
        ensure_seed(&host, "vm1", &seed).await.unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().ino(),
            inode.ino(),
            "same content: not rebuilt"
        );
        let other = render_seed(
            "vm1",
            "uid-1",
            &CloudInit {
                hostname: Some("other".into()),
                ..CloudInit::default()
            },
        );
        ensure_seed(&host, "vm1", &other).await.unwrap();
        assert_eq!(read("/user-data"), other.user_data);
        remove_files(&host, "vm1").unwrap();
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
