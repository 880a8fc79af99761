//! What each node does for storage on its own host, level-triggered: report its pool, make
//! and remove volume files, grow them, and take, revert and delete snapshots of the VMs bound
//! to it. The VM reconciler calls [`prepare_disks`] and [`release_disks`] for a VM's disks.
//!
//! ```text
//!  every second (and on volume/snapshot changes):
//!     statvfs + allocated blocks of <state>/pool ─▶ Pool <node>-local status (written on change)
//!     Volume in my pool: deletion requested ─▶ remove file, delete record
//!                        pending, no owner  ─▶ qemu-img create | convert (clone) ─▶ ready
//!                        spec.size > size   ─▶ blockResize (domain running) | qemu-img resize
//!     Snapshot of a VM here: pending ─▶ libvirt internal snapshot (running) | qemu-img -c
//!                            revert  ─▶ qemu-img -a (VM stopped)    delete ─▶ qemu-img -d
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keel_model::{
    owned_volume_name, DiskSource, ImageFormat, Name, Pool, PoolKind, PoolPhase, PoolSpec,
    PoolStatus, Qos, Snapshot, SnapshotPhase, Vm, Volume, VolumeFormat, VolumePhase, VolumeSpec,
    VolumeStatus,
};
use keel_store::{Request, Response};
use keel_virt::Hypervisor;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::qemu_img::{self, SnapshotOp};
use super::{cas, pool_of, snapshot_of, volume_of, volumes, POOLS, SNAPSHOTS, VOLUMES};
use crate::compute::VMS;
use crate::error::ApiError;
use crate::host::Host;
use crate::member::{encode, Member};

/// Pool numbers are rewritten only when one moved by at least this much, so a busy file
/// system does not turn into a stream of store writes.
const REPORT_STEP: u64 = 16 * 1024 * 1024;

/// The storage loop of this node.
pub async fn node_loop(m: Arc<Member>, host: Arc<Host>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut wake = crate::wake::Wake::new(m.clone(), &[VOLUMES, SNAPSHOTS]);
    loop {
        tokio::select! { _ = tick.tick() => {} _ = wake.changed() => {} _ = shutdown.changed() => return }
        let span = tracing::debug_span!("reconcile", kind = "storage", node = %m.identity.name);
        let _g = span.enter();
        if let Err(e) = report_pool(&m, &host).await {
            debug!(error = %e, "reporting the pool failed; retrying next round");
        }
        let hv = host.hv.get().map(|(hv, _)| hv.clone());
        if let Err(e) = volumes_round(&m, &host, hv.as_ref()).await {
            debug!(error = %e, "volume round failed; retrying next round");
        }
        if let Some(hv) = &hv {
            if let Err(e) = snapshots_round(&m, &host, hv).await {
                debug!(error = %e, "snapshot round failed; retrying next round");
            }
        }
    }
}

/// This node's pool name.
pub fn my_pool(m: &Member) -> Result<Name, ApiError> {
    let me = Name::new(m.identity.name.clone())?;
    Ok(keel_model::local_pool_name(&me))
}

/// Capacity, allocation and free bytes of the pool directory.
fn measure(root: &std::path::Path) -> Result<PoolStatus, String> {
    let vfs = nix::sys::statvfs::statvfs(root).map_err(|e| format!("statvfs: {e}"))?;
    let frag = vfs.fragment_size();
    let mut allocation = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else {
                use std::os::unix::fs::MetadataExt;
                allocation = allocation.saturating_add(md.blocks().saturating_mul(512));
            }
        }
    }
    Ok(PoolStatus {
        phase: PoolPhase::Ready,
        capacity_bytes: vfs.blocks().saturating_mul(frag),
        allocation_bytes: allocation,
        available_bytes: vfs.blocks_available().saturating_mul(frag),
        message: String::new(),
    })
}

fn moved(a: u64, b: u64) -> bool {
    a.abs_diff(b) >= REPORT_STEP
}

/// Whether the stored status is stale enough to rewrite.
pub fn pool_status_changed(old: &PoolStatus, new: &PoolStatus) -> bool {
    old.phase != new.phase
        || old.message != new.message
        || old.capacity_bytes != new.capacity_bytes
        || moved(old.allocation_bytes, new.allocation_bytes)
        || moved(old.available_bytes, new.available_bytes)
}

async fn report_pool(m: &Member, host: &Host) -> Result<(), ApiError> {
    let name = my_pool(m)?;
    let root = host.pool.root().to_path_buf();
    let status = tokio::task::spawn_blocking(move || measure(&root))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .unwrap_or_else(|message| PoolStatus {
            phase: PoolPhase::Failed,
            message,
            ..PoolStatus::default()
        });
    let spec = PoolSpec {
        node: Name::new(m.identity.name.clone())?,
        kind: PoolKind::Dir {
            path: host.pool.root().to_string_lossy().to_string(),
        },
    };
    match m.get(POOLS, name.as_str())? {
        None => {
            let pool = Pool {
                metadata: keel_model::Metadata {
                    name: name.to_string(),
                    ..Default::default()
                },
                spec,
                status,
            };
            m.write_ok(Request::Create {
                kind: POOLS.into(),
                name: name.to_string(),
                value: encode(&pool)?,
                idempotency_key: None,
            })
            .await?;
            info!(pool = %name, "local pool registered");
        }
        Some(rec) => {
            let old = pool_of(&rec)?;
            if old.spec != spec || pool_status_changed(&old.status, &status) {
                cas(m, name.as_str(), |p: &mut Pool| {
                    p.spec = spec.clone();
                    p.status = status.clone();
                    Ok(true)
                })
                .await?;
            }
        }
    }
    Ok(())
}

fn file_of(host: &Host, vol: &Volume) -> PathBuf {
    host.pool
        .volume_file(&vol.metadata.name, vol.spec.format == VolumeFormat::Raw)
}

fn allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks().saturating_mul(512))
        .unwrap_or(0)
}

async fn volumes_round(
    m: &Member,
    host: &Host,
    hv: Option<&Arc<dyn Hypervisor>>,
) -> Result<(), ApiError> {
    let pool = my_pool(m)?;
    for vol in volumes(m)?.into_iter().filter(|v| v.spec.pool == pool) {
        let name = vol.metadata.name.clone();
        let span = tracing::debug_span!("reconcile", kind = "volume", name = %name, version = vol.metadata.version);
        let _g = span.enter();
        let res = if vol.metadata.deletion_requested.is_some() {
            delete_volume(m, host, &vol).await
        } else if vol.status.owner.is_none()
            && matches!(
                vol.status.phase,
                VolumePhase::Pending | VolumePhase::Creating
            )
        {
            match make_file(m, host, &vol).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    warn!(volume = %name, error = %e, "creating the volume failed");
                    mark_failed(m, &name, e).await
                }
            }
        } else if vol.status.phase == VolumePhase::Ready
            && vol.status.size_bytes < vol.spec.size.get()
        {
            grow(m, host, hv, &vol).await
        } else if vol.status.phase == VolumePhase::Ready {
            let path = file_of(host, &vol);
            let now = allocated(&path);
            if now.abs_diff(vol.status.allocation_bytes) >= 1024 * 1024 {
                cas(m, &name, |v: &mut Volume| {
                    v.status.allocation_bytes = now;
                    Ok(true)
                })
                .await
                .map(|_| ())
            } else {
                Ok(())
            }
        } else {
            Ok(())
        };
        if let Err(e) = res {
            debug!(volume = %name, error = %e, "volume not converged yet");
        }
    }
    Ok(())
}

async fn mark_failed(m: &Member, name: &str, message: String) -> Result<(), ApiError> {
    cas(m, name, |v: &mut Volume| {
        if v.status.phase == VolumePhase::Failed && v.status.message == message {
            return Ok(false);
        }
        v.status.phase = VolumePhase::Failed;
        v.status.message = message.clone();
        Ok(true)
    })
    .await
    .map(|_| ())
}

async fn delete_volume(m: &Member, host: &Host, vol: &Volume) -> Result<(), ApiError> {
    let path = file_of(host, vol);
    if let Err(e) = std::fs::remove_file(&path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(ApiError::Internal(format!(
                "removing {}: {e}",
                path.display()
            )));
        }
    }
    let _ = std::fs::remove_file(path.with_extension("creating"));
    m.write_ok(Request::Delete {
        kind: VOLUMES.into(),
        name: vol.metadata.name.clone(),
        expected_version: None,
    })
    .await?;
    info!(volume = %vol.metadata.name, "volume deleted");
    Ok(())
}

/// The backing file of a volume's image, copied to this node if needed.
async fn backing_of(
    m: &Member,
    host: &Host,
    image: &Name,
) -> Result<(PathBuf, &'static str), String> {
    let (p, f) = crate::images::ensure_local(m, host, image.as_str()).await?;
    let fmt = match f {
        ImageFormat::Qcow2 => "qcow2",
        _ => "raw",
    };
    Ok((p, fmt))
}

/// Creates the file of `vol` (blank, on its backing image, or as a copy of `clone_of`) unless
/// it exists, and marks the volume ready.
async fn make_file(m: &Member, host: &Host, vol: &Volume) -> Result<(), String> {
    let path = file_of(host, vol);
    let size = vol.spec.size.get();
    if !path.exists() {
        if let Some(src_name) = &vol.spec.clone_of {
            let src = m
                .get(VOLUMES, src_name.as_str())
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("volume {src_name} to copy does not exist any more"))?;
            let src = volume_of(&src).map_err(|e| e.to_string())?;
            let src_path = file_of(host, &src);
            let backing = match &src.spec.backing_image {
                Some(img) => Some(backing_of(m, host, img).await?),
                None => None,
            };
            qemu_img::copy(
                &src_path,
                &path,
                backing.as_ref().map(|(p, f)| (p.as_path(), *f)),
            )
            .await?;
        } else {
            let backing = match &vol.spec.backing_image {
                Some(img) => Some(backing_of(m, host, img).await?),
                None => None,
            };
            qemu_img::create(
                &path,
                vol.spec.format,
                backing.as_ref().map(|(p, f)| (p.as_path(), *f)),
                size,
            )
            .await?;
        }
        info!(volume = %vol.metadata.name, path = %path.display(), "volume created");
    }
    let info = qemu_img::info(&path).await?;
    let node = m.identity.name.clone();
    let p = path.to_string_lossy().to_string();
    let alloc = allocated(&path);
    cas(m, &vol.metadata.name, |v: &mut Volume| {
        v.status.phase = VolumePhase::Ready;
        v.status.path = Some(p.clone());
        v.status.node = Some(node.clone());
        v.status.size_bytes = info.virtual_size;
        v.status.allocation_bytes = alloc;
        v.status.message.clear();
        Ok(true)
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// Grows a volume to its spec size: live through libvirt when the VM using it runs, else
/// with qemu-img.
async fn grow(
    m: &Member,
    host: &Host,
    hv: Option<&Arc<dyn Hypervisor>>,
    vol: &Volume,
) -> Result<(), ApiError> {
    let path = file_of(host, vol);
    let size = vol.spec.size.get();
    let running_vm = match (&vol.status.attached_to, hv) {
        (Some(vm), Some(hv)) => {
            let (h, n) = (hv.clone(), vm.clone());
            let active = tokio::task::spawn_blocking(move || {
                h.domain(&n).map(|d| d.state.is_active()).unwrap_or(false)
            })
            .await
            .unwrap_or(false);
            active.then(|| vm.clone())
        }
        (Some(_), None) => {
            return Err(ApiError::NotReady(
                "no hypervisor yet to tell whether the volume's VM runs".into(),
            ))
        }
        _ => None,
    };
    let res = match (&running_vm, hv) {
        (Some(vm), Some(hv)) => {
            let (h, n, p) = (hv.clone(), vm.clone(), path.clone());
            tokio::task::spawn_blocking(move || h.block_resize(&n, &p, size))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
        }
        _ => qemu_img::grow(&path, vol.spec.format, size).await,
    };
    match res {
        Ok(()) => {
            info!(volume = %vol.metadata.name, size, live = running_vm.is_some(), "volume grown");
            cas(m, &vol.metadata.name, |v: &mut Volume| {
                v.status.size_bytes = size;
                v.status.message.clear();
                Ok(true)
            })
            .await
            .map(|_| ())
        }
        Err(e) => {
            warn!(volume = %vol.metadata.name, error = %e, "growing the volume failed; retrying");
            cas(m, &vol.metadata.name, |v: &mut Volume| {
                if v.status.message == e {
                    return Ok(false);
                }
                v.status.message = e.clone();
                Ok(true)
            })
            .await
            .map(|_| ())
        }
    }
}

/// The volume name of each disk of `vm`.
pub fn disk_volumes(vm: &Vm) -> Result<Vec<Name>, ApiError> {
    let vm_name = Name::new(vm.metadata.name.clone())?;
    Ok(vm
        .spec
        .disks
        .iter()
        .map(|d| match &d.source {
            DiskSource::Volume { volume } => volume.clone(),
            _ => owned_volume_name(&vm_name, &d.name),
        })
        .collect())
}

fn iotune_of(q: &Qos) -> keel_virt::IoTune {
    keel_virt::IoTune {
        read_iops_sec: q.read_iops,
        write_iops_sec: q.write_iops,
        read_bytes_sec: q.read_bytes_sec,
        write_bytes_sec: q.write_bytes_sec,
        ..keel_virt::IoTune::default()
    }
}

/// Rounds a byte count up to a size a volume may have (a whole KiB, at least 1 MiB).
fn volume_size(bytes: u64) -> u64 {
    bytes.max(VolumeSpec::MIN_SIZE.get()).div_ceil(1024) * 1024
}

/// Makes sure every disk of `vm` (bound to this node) has its volume record and file, and
/// returns the disks for the domain. Volumes for `image` and `empty` disks are created and
/// owned by the VM; `volume` disks must be in this node's pool and free (or owned by the VM,
/// as a clone's copies are).
pub async fn prepare_disks(
    m: &Member,
    host: &Host,
    vm: &Vm,
) -> Result<Vec<keel_virt::Disk>, String> {
    let pool = my_pool(m).map_err(|e| e.to_string())?;
    let vm_name = vm.metadata.name.clone();
    let names = disk_volumes(vm).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (d, vname) in vm.spec.disks.iter().zip(names) {
        let existing = m
            .get(VOLUMES, vname.as_str())
            .map_err(|e| e.to_string())?
            .map(|r| volume_of(&r))
            .transpose()
            .map_err(|e| e.to_string())?;
        let vol = match (&d.source, existing) {
            (DiskSource::Volume { volume }, None) => {
                return Err(format!("volume {volume} of disk {} does not exist", d.name))
            }
            (_, Some(v)) => {
                let mine = v.status.owner.as_deref() == Some(vm_name.as_str())
                    || v.status.attached_to.as_deref() == Some(vm_name.as_str());
                let free = v.status.owner.is_none() && v.status.attached_to.is_none();
                if !mine && !free {
                    return Err(format!(
                        "volume {vname} of disk {} is in use by VM {}",
                        d.name,
                        v.status
                            .attached_to
                            .as_deref()
                            .or(v.status.owner.as_deref())
                            .unwrap_or("?")
                    ));
                }
                if v.spec.pool != pool {
                    return Err(format!(
                        "volume {vname} is in pool {}, not in this node's pool {pool}",
                        v.spec.pool
                    ));
                }
                v
            }
            (DiskSource::Image { image, size }, None) => {
                let img = m
                    .get(crate::images::KIND, image.as_str())
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("image {image} does not exist"))?;
                let img = crate::images::image_of(&img).map_err(|e| e.to_string())?;
                let bytes = volume_size(
                    size.map_or(0, |s| s.get())
                        .max(img.status.virtual_size_bytes),
                );
                new_owned(
                    m,
                    &vname,
                    &pool,
                    vm,
                    bytes,
                    Some(image.clone()),
                    d.qos.clone(),
                )
                .await?
            }
            (DiskSource::Empty { size }, None) => {
                new_owned(m, &vname, &pool, vm, size.get(), None, d.qos.clone()).await?
            }
        };
        let path = file_of(host, &vol);
        if vol.status.phase != VolumePhase::Ready || !path.exists() {
            let ours = vol.status.owner.as_deref() == Some(vm_name.as_str());
            if !ours {
                return Err(format!(
                    "volume {vname} is not ready yet ({:?})",
                    vol.status.phase
                ));
            }
            make_file(m, host, &vol).await?;
        }
        // The VM's spec holds the limits of the disks it owns; a shared volume its own.
        let owned = !matches!(d.source, DiskSource::Volume { .. });
        let qos = if owned {
            d.qos.clone()
        } else {
            vol.spec.qos.clone()
        };
        let attach = vol.status.attached_to.as_deref() != Some(vm_name.as_str());
        if attach || (owned && vol.spec.qos != qos) {
            let (q, n) = (qos.clone(), vm_name.clone());
            cas(m, vname.as_str(), |v: &mut Volume| {
                v.status.attached_to = Some(n.clone());
                if owned {
                    v.spec.qos = q.clone();
                }
                Ok(true)
            })
            .await
            .map_err(|e| e.to_string())?;
        }
        out.push(keel_virt::Disk {
            path,
            format: match vol.spec.format {
                VolumeFormat::Qcow2 => keel_virt::DiskFormat::Qcow2,
                VolumeFormat::Raw => keel_virt::DiskFormat::Raw,
            },
            iotune: qos.as_ref().map(iotune_of),
        });
    }
    Ok(out)
}

/// Records a volume owned by `vm` before its file is made, so a crash in between leaves a
/// record that says whose it is.
async fn new_owned(
    m: &Member,
    name: &Name,
    pool: &Name,
    vm: &Vm,
    bytes: u64,
    backing_image: Option<Name>,
    qos: Option<Qos>,
) -> Result<Volume, String> {
    let vol = Volume {
        metadata: keel_model::Metadata {
            name: name.to_string(),
            ..Default::default()
        },
        spec: VolumeSpec {
            pool: pool.clone(),
            size: keel_model::Bytes::new(bytes),
            format: VolumeFormat::Qcow2,
            backing_image,
            qos,
            clone_of: None,
        },
        status: VolumeStatus {
            phase: VolumePhase::Creating,
            node: Some(m.identity.name.clone()),
            owner: Some(vm.metadata.name.clone()),
            attached_to: Some(vm.metadata.name.clone()),
            ..VolumeStatus::default()
        },
    };
    match m
        .write(Request::Create {
            kind: VOLUMES.into(),
            name: name.to_string(),
            value: encode(&vol).map_err(|e| e.to_string())?,
            idempotency_key: None,
        })
        .await
        .map_err(|e| e.to_string())?
    {
        Response::Written(rec) => volume_of(&rec).map_err(|e| e.to_string()),
        other => Err(format!("could not record volume {name}: {other:?}")),
    }
}

/// When `vm` is deleted: removes the volumes it owns (files and records), lets go of the
/// volumes it only attached, and forgets its snapshots (they lived in the removed files, or
/// stay inside kept volumes).
pub async fn release_disks(m: &Member, host: &Host, vm: &Vm) -> Result<(), String> {
    let name = vm.metadata.name.as_str();
    for vol in volumes(m).map_err(|e| e.to_string())? {
        if vol.status.owner.as_deref() == Some(name) {
            delete_volume(m, host, &vol)
                .await
                .map_err(|e| e.to_string())?;
        } else if vol.status.attached_to.as_deref() == Some(name) {
            cas(m, &vol.metadata.name, |v: &mut Volume| {
                v.status.attached_to = None;
                Ok(true)
            })
            .await
            .map_err(|e| e.to_string())?;
        }
    }
    for rec in m.list(SNAPSHOTS).map_err(|e| e.to_string())? {
        let Ok(s) = snapshot_of(&rec) else { continue };
        if s.spec.vm.as_str() == name {
            m.write_ok(Request::Delete {
                kind: SNAPSHOTS.into(),
                name: rec.name.clone(),
                expected_version: None,
            })
            .await
            .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

async fn snapshots_round(
    m: &Member,
    host: &Host,
    hv: &Arc<dyn Hypervisor>,
) -> Result<(), ApiError> {
    let me = m.identity.name.clone();
    for rec in m.list(SNAPSHOTS)? {
        let Ok(snap) = snapshot_of(&rec) else {
            continue;
        };
        let vm = match m.get(VMS, snap.spec.vm.as_str())? {
            Some(r) => crate::compute::vm_of(&r)?,
            None => {
                // Its VM is gone (and the snapshot with its disks).
                m.write_ok(Request::Delete {
                    kind: SNAPSHOTS.into(),
                    name: rec.name.clone(),
                    expected_version: None,
                })
                .await?;
                continue;
            }
        };
        if vm.status.node.as_deref() != Some(me.as_str()) {
            continue;
        }
        let span = tracing::info_span!("reconcile", kind = "snapshot", name = %rec.name, version = rec.version);
        let _g = span.enter();
        if let Err(e) = snapshot_step(m, host, hv, &rec.name, &snap, &vm).await {
            debug!(snapshot = %rec.name, error = %e, "snapshot not converged yet");
        }
    }
    Ok(())
}

async fn snapshot_step(
    m: &Member,
    host: &Host,
    hv: &Arc<dyn Hypervisor>,
    key: &str,
    snap: &Snapshot,
    vm: &Vm,
) -> Result<(), ApiError> {
    let wants = snap.metadata.deletion_requested.is_some()
        || snap.status.phase == SnapshotPhase::Pending
        || snap.spec.revert_generation > snap.status.reverted;
    if !wants {
        return Ok(());
    }
    let (h, n) = (hv.clone(), vm.metadata.name.clone());
    let active = tokio::task::spawn_blocking(move || {
        h.domain(&n).map(|d| d.state.is_active()).unwrap_or(false)
    })
    .await
    .unwrap_or(false);
    let mut files = Vec::new();
    for vname in disk_volumes(vm)? {
        let rec = m.get(VOLUMES, vname.as_str())?;
        let Some(vol) = rec.map(|r| volume_of(&r)).transpose()? else {
            continue;
        };
        if vol.spec.format == VolumeFormat::Raw {
            return fail_snapshot(
                m,
                key,
                format!("volume {vname} is raw; only qcow2 volumes hold snapshots"),
            )
            .await;
        }
        files.push((vname.to_string(), file_of(host, &vol)));
    }
    let name = snap.metadata.name.clone();
    if snap.metadata.deletion_requested.is_some() {
        if active {
            return Ok(()); // The API refuses this; a VM started since waits for its stop.
        }
        for (_, f) in &files {
            let has = qemu_img::info(f)
                .await
                .map(|i| i.snapshots.iter().any(|s| s.name == name))
                .unwrap_or(false);
            if has {
                qemu_img::snapshot(f, SnapshotOp::Delete, &name)
                    .await
                    .map_err(ApiError::Internal)?;
            }
        }
        m.write_ok(Request::Delete {
            kind: SNAPSHOTS.into(),
            name: key.into(),
            expected_version: None,
        })
        .await?;
        info!(vm = %vm.metadata.name, snapshot = %name, "snapshot deleted");
        return Ok(());
    }
    if snap.status.phase == SnapshotPhase::Pending {
        let mut frozen = false;
        let res = if active {
            // Frozen through the guest agent when one answers, thawed whatever happens.
            let (h, n, s) = (hv.clone(), vm.metadata.name.to_string(), name.to_string());
            tokio::task::spawn_blocking(move || crate::agent::snapshot_quiesced(h.as_ref(), &n, &s))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r)
                .map(|f| frozen = f)
        } else {
            let mut r = Ok(());
            for (_, f) in &files {
                r = qemu_img::snapshot(f, SnapshotOp::Create, &name).await;
                if r.is_err() {
                    break;
                }
            }
            r
        };
        return match res {
            Ok(()) => {
                info!(vm = %vm.metadata.name, snapshot = %name, live = active, frozen, "snapshot taken");
                let vols: Vec<String> = files.iter().map(|(v, _)| v.clone()).collect();
                let now = crate::now_rfc3339();
                cas(m, key, |s: &mut Snapshot| {
                    s.status.phase = SnapshotPhase::Ready;
                    s.status.volumes = vols.clone();
                    s.status.live = active;
                    s.status.frozen = frozen;
                    s.status.taken = now.clone();
                    s.status.message.clear();
                    Ok(true)
                })
                .await
                .map(|_| ())
            }
            Err(e) => fail_snapshot(m, key, e).await,
        };
    }
    // Revert.
    let generation = snap.spec.revert_generation;
    let res = if active {
        Err(format!(
            "VM {} is running; stop it, then revert",
            vm.metadata.name
        ))
    } else {
        let mut r = Ok(());
        for (_, f) in &files {
            r = qemu_img::snapshot(f, SnapshotOp::Apply, &name).await;
            if r.is_err() {
                break;
            }
        }
        r
    };
    if res.is_ok() {
        info!(vm = %vm.metadata.name, snapshot = %name, "reverted to snapshot");
    }
    cas(m, key, |s: &mut Snapshot| {
        s.status.reverted = generation;
        s.status.message = res.clone().err().unwrap_or_default();
        Ok(true)
    })
    .await
    .map(|_| ())
}

async fn fail_snapshot(m: &Member, key: &str, message: String) -> Result<(), ApiError> {
    warn!(snapshot = key, error = %message, "snapshot failed");
    cas(m, key, |s: &mut Snapshot| {
        s.status.phase = SnapshotPhase::Failed;
        s.status.message = message.clone();
        Ok(true)
    })
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reports_only_real_moves() {
        let a = PoolStatus {
            phase: PoolPhase::Ready,
            capacity_bytes: 100 << 30,
            allocation_bytes: 1 << 30,
            available_bytes: 50 << 30,
            message: String::new(),
        };
        let mut b = a.clone();
        b.available_bytes -= 1 << 20;
        assert!(!pool_status_changed(&a, &b));
        b.available_bytes -= REPORT_STEP;
        assert!(pool_status_changed(&a, &b));
        let mut c = a.clone();
        c.phase = PoolPhase::Failed;
        assert!(pool_status_changed(&a, &c));
    }

    #[test]
    fn volume_sizes_round_up() {
        assert_eq!(volume_size(0), 1 << 20);
        assert_eq!(volume_size((64 << 20) + 1), (64 << 20) + 1024);
        assert_eq!(volume_size(1 << 30), 1 << 30);
    }

    #[test]
    fn measures_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("volumes")).unwrap();
        std::fs::write(dir.path().join("volumes/a"), vec![1u8; 64 * 1024]).unwrap();
        let s = measure(dir.path()).unwrap();
        assert_eq!(s.phase, PoolPhase::Ready);
        assert!(s.capacity_bytes > 0 && s.available_bytes <= s.capacity_bytes);
        assert!(s.allocation_bytes >= 64 * 1024, "{s:?}");
    }
}
