//! Changing existing VMs: resize (vCPUs, memory), attach and detach disks and NICs, rename,
//! and `PATCH /api/v1/vms/{name}` for everything else in [`VmUpdate`].
//!
//! ```text
//!  PATCH /vms/{n} {VmUpdate, version?}      ─┐
//!  POST /vms/{n}/disks {VmDisk}              │  merged spec validated (400, field paths)
//!  DELETE /vms/{n}/disks/{d}?delete=         ├▶ running VM: live_refusal (pure) ─▶ 409 + how to fix
//!  POST /vms/{n}/nics {VmNic}                │  compare-and-set on the VM (version ─▶ 409)
//!  DELETE /vms/{n}/nics/{nic}               ─┘
//!  node reconciler (compute.rs): define (the next start keeps it) ─▶ converge_live:
//!     more vCPUs ─▶ set_vcpus · more memory ─▶ one DIMM · new disk/NIC ─▶ attach · gone ─▶ detach
//!     detached volumes released (kept standalone, or deleted when asked) · status.hotplug
//!  POST /vms/{n}/rename {new_name} (stopped only) ─▶ one batch: old record out, new record in
//!     (its disks become volume sources, MACs pinned), volumes re-owned ─▶ node undefines the
//!     old domain (status.renamed_from) and defines the new one
//! ```
//!
//! A running VM takes only what can be applied live: more vCPUs and memory up to the headroom
//! its domain started with ([`headroom`]), added and removed disks (not the boot disk) and
//! NICs. Everything else is refused with 409 and nothing is written, rather than recorded as
//! a change "pending restart": the spec always says what the VM runs with, so an HA restart
//! or a migration never brings up a VM different from the one that was running.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes as Body;
use keel_model::{
    derived_mac, owned_volume_name, Bytes, DiskSource, ErrorBody, Name, PowerState, Vm, VmDisk,
    VmHotplug, VmNic, VmRename, VmSpec, VmUpdate, Volume,
};
use keel_store::Request;
use keel_virt::{DomainSpec, DomainState, Hypervisor};
use serde::Deserialize;
use tracing::{info, warn};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response as HttpResponse;
use warp::{Filter, Reply};

use crate::api::{authenticate, authz, body, ok, parse, reply, with_ctx, ApiResult, Ctx};
use crate::compute::{self, vm_of, VMS};
use crate::error::ApiError;
use crate::member::{encode, Member};
use crate::storage::{self, VOLUMES};

/// The hot-add headroom a VM's domain is defined with: up to twice its vCPUs (not beyond
/// this host's CPUs) and twice its memory (at least 1 GiB more). Unplugged vCPUs and empty
/// DIMM slots cost the host nothing, under TCG as under KVM.
pub fn headroom(vm: &Vm) -> keel_virt::Hotplug {
    let host_cpus = std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1);
    keel_virt::Hotplug::headroom(
        vm.spec.cpus,
        vm.spec.memory.get() / (1024 * 1024),
        host_cpus,
        DomainSpec::MAX_MEMORY_MIB,
    )
}

fn invalid_state(message: String) -> ApiError {
    ApiError::Conflict {
        code: "invalid_state",
        message,
    }
}

/// Whether the VM's domain may be running: then only live-applicable changes are taken.
fn runs(vm: &Vm) -> bool {
    vm.status.phase.is_active()
}

/// Why the running VM `name` cannot take the change from `old` to `new` live, with what to do
/// instead; `None` when it can (pure). `hotplug` is how far its domain can grow.
pub fn live_refusal(
    name: &str,
    old: &VmSpec,
    new: &VmSpec,
    hotplug: Option<&VmHotplug>,
) -> Option<String> {
    let stop_first =
        format!("stop it first (keel vm stop {name} --wait), change it, then start it");
    if new.power_state == PowerState::Stopped {
        // Stopping in the same request: everything applies at the next start.
        return None;
    }
    if new.cpus < old.cpus {
        return Some(format!(
            "removing vCPUs of a running VM is not supported ({} → {}): {stop_first}",
            old.cpus, new.cpus
        ));
    }
    if new.memory < old.memory {
        return Some(format!(
            "shrinking memory of a running VM is not supported ({old_m} → {new_m}): {stop_first}",
            old_m = old.memory,
            new_m = new.memory
        ));
    }
    let grows = new.cpus > old.cpus || new.memory > old.memory;
    match hotplug {
        None if grows => {
            return Some(format!(
                "VM {name} is {}; its hot-add limits are known once it runs: retry shortly, or {stop_first}",
                "starting"
            ))
        }
        Some(h) if new.cpus > h.max_cpus => {
            return Some(format!(
                "VM {name} can grow to at most {} vCPUs while running (fixed when it started): {stop_first}",
                h.max_cpus
            ))
        }
        Some(h) if new.memory > h.max_memory => {
            return Some(format!(
                "VM {name} can grow to at most {} of memory while running (fixed when it started): {stop_first}",
                h.max_memory
            ))
        }
        _ => {}
    }
    // Disks: added and removed ones are hot-plugged; the boot disk stays; none changes.
    let boot_disk = old.boot_devices().into_iter().find_map(|b| match b {
        keel_model::BootDevice::Disk(_, d) => Some(d.name.clone()),
        _ => None,
    });
    for d in &old.disks {
        match new.disks.iter().find(|n| n.name == d.name) {
            None if Some(&d.name) == boot_disk.as_ref() => {
                return Some(format!(
                    "disk {} is the boot disk of running VM {name} and cannot be detached: {stop_first}",
                    d.name
                ))
            }
            Some(n) if n != d => {
                return Some(format!(
                    "disk {} of a running VM cannot be changed in place (only attached or detached): {stop_first}",
                    d.name
                ))
            }
            _ => {}
        }
    }
    for n in &old.nics {
        if let Some(x) = new.nics.iter().find(|x| x.name == n.name) {
            if x != n {
                return Some(format!(
                    "NIC {} of a running VM cannot be changed in place (detach it and attach a new one): {stop_first}",
                    n.name
                ));
            }
        }
    }
    let fixed = [
        ("firmware", old.firmware != new.firmware),
        ("cpu_model", old.cpu_model != new.cpu_model),
        ("cloud_init", old.cloud_init != new.cloud_init),
        ("boot_order", old.boot_order != new.boot_order),
        ("iso", old.iso != new.iso),
        ("template", old.template != new.template),
    ];
    if let Some((field, _)) = fixed.iter().find(|(_, changed)| *changed) {
        return Some(format!(
            "{field} of a running VM cannot be changed live: {stop_first}"
        ));
    }
    None
}

/// The volume each disk of `vm` uses (as storage names them).
fn disk_volumes(vm_name: &Name, spec: &VmSpec) -> Vec<(Name, Name)> {
    spec.disks
        .iter()
        .map(|d| {
            let v = match &d.source {
                DiskSource::Volume { volume } => volume.clone(),
                _ => owned_volume_name(vm_name, &d.name),
            };
            (d.name.clone(), v)
        })
        .collect()
}

/// Checks the disks `new` adds to `vm`: images ready, volumes free and on the VM's node, new
/// volumes fitting its pool (400 naming the disk).
fn check_added_disks(m: &Member, vm: &Vm, new: &VmSpec) -> Result<(), ApiError> {
    let added: Vec<VmDisk> = new
        .disks
        .iter()
        .filter(|d| !vm.spec.disks.iter().any(|o| o.name == d.name))
        .cloned()
        .collect();
    if added.is_empty() {
        return Ok(());
    }
    for d in &added {
        if let DiskSource::Image { image, .. } = &d.source {
            let rec = m.get(crate::images::KIND, image.as_str())?.ok_or_else(|| {
                ApiError::bad(
                    format!("image {image} does not exist; import it first (keel image import)"),
                    Some("source.image".into()),
                )
            })?;
            if crate::images::image_of(&rec)?.status.phase != keel_model::ImagePhase::Ready {
                return Err(ApiError::bad(
                    format!("image {image} is not ready yet"),
                    Some("source.image".into()),
                ));
            }
        }
    }
    let mut spec = new.clone();
    spec.disks = added;
    if let Some(node) = &vm.status.node {
        spec.placement.node = Some(Name::new(node.clone())?);
    }
    let name = Name::new(vm.metadata.name.clone())?;
    storage::check_create(
        m,
        &keel_model::VmCreate {
            metadata: keel_model::NewMetadata::named(name),
            spec,
        },
    )
}

/// Reads VM `name` for an edit, refusing VMs that a migration or a deletion owns.
async fn current(m: &Member, name: &str) -> Result<Vm, ApiError> {
    compute::vm_name(name)?;
    m.linearizable().await?;
    let rec = m
        .get(VMS, name)?
        .ok_or_else(|| ApiError::NotFound(format!("VM {name} does not exist")))?;
    let vm = vm_of(&rec)?;
    refuse_busy(&vm)?;
    Ok(vm)
}

fn refuse_busy(vm: &Vm) -> Result<(), ApiError> {
    let name = &vm.metadata.name;
    if let Some(mg) = &vm.status.migration {
        return Err(invalid_state(format!(
            "VM {name} is migrating to {} (task {}); wait for it or cancel the task",
            mg.destination, mg.task
        )));
    }
    if vm.metadata.deletion_requested.is_some() {
        return Err(invalid_state(format!("VM {name} is being deleted")));
    }
    Ok(())
}

/// Applies `change` to VM `name` with compare-and-set: the merged spec is validated (400),
/// a running VM takes only live-applicable changes (409), `version` must match (409).
async fn edit(
    m: &Member,
    name: &str,
    version: Option<u64>,
    change: impl Fn(&Vm) -> Result<Vm, ApiError>,
) -> Result<Vm, ApiError> {
    let vm = current(m, name).await?;
    let new = change(&vm)?;
    check(&vm, &new, version)?;
    check_added_disks(m, &vm, &new.spec)?;
    if new.spec.power_state != PowerState::Stopped && new.spec.power_state != vm.spec.power_state {
        storage::check_startable(&new)?;
    }
    let updated = crate::member::update_record(m, VMS, "VM", name, vm_of, |v: &mut Vm| {
        refuse_busy(v)?;
        let new = change(v)?;
        check(v, &new, version)?;
        let changed = new.spec != v.spec || new.metadata.labels != v.metadata.labels;
        v.spec = new.spec;
        v.metadata.labels = new.metadata.labels;
        Ok(changed)
    })
    .await?;
    info!(vm = %name, version = updated.metadata.version, "VM changed");
    Ok(updated)
}

fn check(vm: &Vm, new: &Vm, version: Option<u64>) -> Result<(), ApiError> {
    if let Some(want) = version {
        if want != vm.metadata.version {
            return Err(ApiError::Conflict {
                code: "version_conflict",
                message: format!(
                    "VM {} is at version {}, not {want}; read it again and retry",
                    vm.metadata.name, vm.metadata.version
                ),
            });
        }
    }
    if runs(vm) {
        if let Some(why) = live_refusal(
            &vm.metadata.name,
            &vm.spec,
            &new.spec,
            vm.status.hotplug.as_ref(),
        ) {
            return Err(invalid_state(why));
        }
    }
    Ok(())
}

/// Changes a VM (resize, devices, labels, power state, placement, …); see [`VmUpdate`]. A
/// running VM takes more vCPUs and memory (up to `status.hotplug`), added and removed disks
/// (not its boot disk) and NICs live; other changes to it are refused with 409.
#[utoipa::path(patch, path = "/api/v1/vms/{name}", security(("bearer" = [])),
    params(("name" = String, Path)), request_body = VmUpdate,
    responses((status = 200, body = Vm), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn patch_vm(name: String, ctx: Ctx, authz: Option<String>, body: Body) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    let mut upd: VmUpdate = parse(&body)?;
    // A plain cloud-init password is stored only as a hash (crate::cloudinit).
    if let Some(ci) = upd.cloud_init.as_mut() {
        crate::cloudinit::protect_password(ci);
    }
    // Detached disks stay as standalone volumes (use DELETE …/disks/{disk}?delete=true to
    // delete one with the detach).
    let before = current(&m, &name).await?;
    // Owned volumes of disks the update removes become standalone first, so that no node
    // ever sees them owned by the VM and gone from its spec (which means: delete them).
    // Refusals come first: a refused request changes nothing.
    let planned = upd.apply(&before)?;
    check(&before, &planned, upd.version)?;
    if upd.iso.is_some() {
        crate::cloudinit::check_iso(&m, &planned.spec)?;
    }
    keep_removed(&m, &before, &planned.spec).await?;
    let vm = edit(&m, &name, upd.version, |v| Ok(upd.apply(v)?)).await?;
    ok(&vm)
}

/// Owned volumes of disks `before` had and `spec` has not become standalone.
async fn keep_removed(m: &Member, before: &Vm, spec: &VmSpec) -> Result<(), ApiError> {
    let vm_name = Name::new(before.metadata.name.clone())?;
    let now: BTreeSet<Name> = disk_volumes(&vm_name, spec)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    for (_, vol) in disk_volumes(&vm_name, &before.spec) {
        if !now.contains(&vol) && m.get(VOLUMES, vol.as_str())?.is_some() {
            let owner = vm_name.to_string();
            storage::cas(m, vol.as_str(), |v: &mut Volume| {
                if v.status.owner.as_deref() == Some(owner.as_str()) {
                    v.status.owner = None;
                    return Ok(true);
                }
                Ok(false)
            })
            .await?;
        }
    }
    Ok(())
}

/// Attaches a disk (a new empty disk, a copy of an image, or an existing volume); a running
/// VM gets it live.
#[utoipa::path(post, path = "/api/v1/vms/{name}/disks", security(("bearer" = [])),
    params(("name" = String, Path)), request_body = VmDisk,
    responses((status = 202, body = Vm), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn attach_disk(name: String, ctx: Ctx, authz: Option<String>, body: Body) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    let disk: VmDisk = parse(&body)?;
    let vm = edit(&m, &name, None, |v| {
        if v.spec.disks.iter().any(|d| d.name == disk.name)
            || v.spec.nics.iter().any(|n| n.name == disk.name)
        {
            return Err(ApiError::Conflict {
                code: "already_exists",
                message: format!(
                    "VM {name} already has a disk or NIC named {}; pick another name",
                    disk.name
                ),
            });
        }
        let upd = VmUpdate {
            disks: Some(v.spec.disks.iter().cloned().chain([disk.clone()]).collect()),
            ..VmUpdate::default()
        };
        Ok(upd.apply(v)?)
    })
    .await?;
    accepted(&vm)
}

/// Query of `DELETE /api/v1/vms/{name}/disks/{disk}`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DetachDiskQuery {
    /// Delete the disk's volume too; by default it stays as a standalone volume.
    #[serde(default)]
    pub delete: bool,
}

/// Detaches a disk; its volume stays as a standalone volume unless `delete=true`. The boot
/// disk of a running VM is refused (409).
#[utoipa::path(delete, path = "/api/v1/vms/{name}/disks/{disk}", security(("bearer" = [])),
    params(("name" = String, Path), ("disk" = String, Path), DetachDiskQuery),
    responses((status = 202, body = Vm), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn detach_disk(
    name: String,
    disk: String,
    q: DetachDiskQuery,
    ctx: Ctx,
    authz: Option<String>,
) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    let vm = current(&m, &name).await?;
    let vm_name = Name::new(vm.metadata.name.clone())?;
    let Some((_, vol)) = disk_volumes(&vm_name, &vm.spec)
        .into_iter()
        .find(|(d, _)| d.as_str() == disk)
    else {
        return Err(ApiError::NotFound(format!("VM {name} has no disk {disk}")));
    };
    let without = |v: &Vm| {
        let upd = VmUpdate {
            disks: Some(
                v.spec
                    .disks
                    .iter()
                    .filter(|d| d.name.as_str() != disk)
                    .cloned()
                    .collect(),
            ),
            ..VmUpdate::default()
        };
        Ok::<_, ApiError>(upd.apply(v)?)
    };
    // Refuse before touching the volume.
    check(&vm, &without(&vm)?, None)?;
    // The volume's fate is recorded first: its node releases it once the disk is out of
    // the domain (owner kept or claimed: deleted; owner cleared: standalone).
    if m.get(VOLUMES, vol.as_str())?.is_some() {
        let (owner, delete) = (vm_name.to_string(), q.delete);
        storage::cas(&m, vol.as_str(), |v: &mut Volume| {
            let want = delete.then(|| owner.clone());
            let mine = v.status.owner.as_deref() == Some(owner.as_str())
                || v.status.attached_to.as_deref() == Some(owner.as_str());
            if !mine && v.status.owner.is_some() {
                return Ok(false);
            }
            if v.status.owner == want {
                return Ok(false);
            }
            v.status.owner = want.clone();
            Ok(true)
        })
        .await?;
    }
    let vm = edit(&m, &name, None, without).await?;
    accepted(&vm)
}

/// Attaches a NIC on an Open vSwitch bridge; a running VM gets it live.
#[utoipa::path(post, path = "/api/v1/vms/{name}/nics", security(("bearer" = [])),
    params(("name" = String, Path)), request_body = VmNic,
    responses((status = 202, body = Vm), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn attach_nic(name: String, ctx: Ctx, authz: Option<String>, body: Body) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    let nic: VmNic = parse(&body)?;
    let vm = edit(&m, &name, None, |v| {
        if v.spec.disks.iter().any(|d| d.name == nic.name)
            || v.spec.nics.iter().any(|n| n.name == nic.name)
        {
            return Err(ApiError::Conflict {
                code: "already_exists",
                message: format!(
                    "VM {name} already has a disk or NIC named {}; pick another name",
                    nic.name
                ),
            });
        }
        let upd = VmUpdate {
            nics: Some(v.spec.nics.iter().cloned().chain([nic.clone()]).collect()),
            ..VmUpdate::default()
        };
        Ok(upd.apply(v)?)
    })
    .await?;
    accepted(&vm)
}

/// Detaches a NIC; a running VM loses it live (its tap and OVS port go).
#[utoipa::path(delete, path = "/api/v1/vms/{name}/nics/{nic}", security(("bearer" = [])),
    params(("name" = String, Path), ("nic" = String, Path)),
    responses((status = 202, body = Vm), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn detach_nic(name: String, nic: String, ctx: Ctx, authz: Option<String>) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    let vm = current(&m, &name).await?;
    if !vm.spec.nics.iter().any(|n| n.name.as_str() == nic) {
        return Err(ApiError::NotFound(format!("VM {name} has no NIC {nic}")));
    }
    let vm = edit(&m, &name, None, |v| {
        let upd = VmUpdate {
            nics: Some(
                v.spec
                    .nics
                    .iter()
                    .filter(|n| n.name.as_str() != nic)
                    .cloned()
                    .collect(),
            ),
            ..VmUpdate::default()
        };
        Ok(upd.apply(v)?)
    })
    .await?;
    accepted(&vm)
}

fn accepted(vm: &Vm) -> ApiResult {
    Ok(warp::reply::with_status(warp::reply::json(vm), StatusCode::ACCEPTED).into_response())
}

/// The record a rename writes (pure): same spec and status under the new name, with disks
/// from images or empty turned into their volumes (whose names keep the old VM name) and
/// NIC addresses pinned (they derive from the uid, which the new record does not keep).
pub fn renamed(vm: &Vm, new_name: &Name) -> Result<Vm, ApiError> {
    let old = Name::new(vm.metadata.name.clone())?;
    let mut out = vm.clone();
    out.metadata.name = new_name.to_string();
    for d in &mut out.spec.disks {
        if !matches!(d.source, DiskSource::Volume { .. }) {
            d.source = DiskSource::Volume {
                volume: owned_volume_name(&old, &d.name),
            };
            // A volume disk's limits live on the volume (prepare_disks set them there).
            d.qos = None;
        }
    }
    for n in &mut out.spec.nics {
        if n.mac.is_none() {
            n.mac = Some(derived_mac(&vm.metadata.uid, &n.name));
        }
    }
    out.status.renamed_from = Some(vm.metadata.name.clone());
    out.status.observed_version = 0;
    out.status.hotplug = None;
    Ok(out)
}

/// Renames a stopped VM: its store key and its libvirt domain change; its disks keep their
/// volumes. Refused while it runs (409), when the name is taken (409) or not DNS-safe (400).
#[utoipa::path(post, path = "/api/v1/vms/{name}/rename", security(("bearer" = [])),
    params(("name" = String, Path)), request_body = VmRename,
    responses((status = 200, body = Vm), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn rename_vm(name: String, ctx: Ctx, authz: Option<String>, body: Body) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    let req: VmRename = parse(&body)?;
    let vm = rename(&m, &name, &req.new_name).await?;
    ok(&vm)
}

/// See [`rename_vm`].
pub async fn rename(m: &Member, name: &str, new_name: &Name) -> Result<Vm, ApiError> {
    let vm = current(m, name).await?;
    if new_name.as_str() == name {
        return Err(ApiError::bad(
            format!("VM {name} already has that name"),
            Some("new_name".into()),
        ));
    }
    if runs(&vm) || vm.spec.power_state != PowerState::Stopped {
        return Err(invalid_state(format!(
            "VM {name} must be stopped to be renamed (it is {:?}): stop it first (keel vm stop {name} --wait), then rename it",
            vm.status.phase
        )));
    }
    if m.get(VMS, new_name.as_str())?.is_some() {
        return Err(ApiError::Conflict {
            code: "already_exists",
            message: format!("a VM named {new_name} already exists; pick another name"),
        });
    }
    let snaps = m
        .list(storage::SNAPSHOTS)?
        .iter()
        .filter_map(|r| storage::snapshot_of(r).ok())
        .filter(|s| s.spec.vm.as_str() == name)
        .count();
    if snaps > 0 {
        return Err(invalid_state(format!(
            "VM {name} has {snaps} snapshot(s), which are named after it; delete them first (keel vm snapshot list {name})"
        )));
    }
    let rec = m
        .get(VMS, name)?
        .ok_or_else(|| ApiError::NotFound(format!("VM {name} does not exist")))?;
    let new = renamed(&vm, new_name)?;
    let mut batch = vec![
        Request::Delete {
            kind: VMS.into(),
            name: name.into(),
            expected_version: Some(rec.version),
        },
        Request::Create {
            kind: VMS.into(),
            name: new_name.to_string(),
            value: encode(&new)?,
            idempotency_key: None,
        },
    ];
    for r in m.list(VOLUMES)? {
        let mut v = storage::volume_of(&r)?;
        let mut touched = false;
        if v.status.owner.as_deref() == Some(name) {
            v.status.owner = Some(new_name.to_string());
            touched = true;
        }
        if v.status.attached_to.as_deref() == Some(name) {
            v.status.attached_to = Some(new_name.to_string());
            touched = true;
        }
        if touched {
            batch.push(Request::Put {
                kind: VOLUMES.into(),
                name: r.name.clone(),
                value: encode(&v)?,
                expected_version: Some(r.version),
            });
        }
    }
    m.write_ok(Request::Batch(batch)).await?;
    info!(vm = %name, new_name = %new_name, "VM renamed");
    let rec = m
        .get(VMS, new_name.as_str())?
        .ok_or_else(|| ApiError::Internal(format!("VM {new_name} vanished after its rename")))?;
    vm_of(&rec)
}

/// Node, each round for a VM bound here: after a rename, the domain of the old name goes
/// (never a running one, never one of another VM).
pub async fn finish_rename(m: &Member, hv: &Arc<dyn Hypervisor>, vm: &Vm) -> Result<(), String> {
    let Some(old) = vm.status.renamed_from.clone() else {
        return Ok(());
    };
    let h = hv.clone();
    let o = old.clone();
    let taken = m.get(VMS, &old).map_err(|e| e.to_string())?.is_some();
    let done = tokio::task::spawn_blocking(move || match h.domain(&o) {
        Err(keel_virt::HypervisorError::NotFound { .. }) => Ok(true),
        Ok(d) if taken || d.state.is_active() => Ok(false),
        Ok(_) => h.undefine(&o).map(|()| true),
        Err(e) => Err(e),
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    if !done {
        warn!(vm = %vm.metadata.name, old = %old, "the domain of the old name is in use; left alone");
    }
    compute::update(m, &vm.metadata.name, |v| v.status.renamed_from = None)
        .await
        .map_err(|e| e.to_string())?;
    info!(vm = %vm.metadata.name, old = %old, "renamed VM: old domain removed");
    Ok(())
}

/// Node, each round after the domain is defined: a running domain takes the spec's added
/// vCPUs, memory, disks and NICs and loses its removed disks and NICs; volumes no longer
/// in the spec are released once out of the domain. Returns the running domain's hot-add
/// limits for `status.hotplug` (`None` while it does not run).
pub async fn converge_live(
    m: &Member,
    hv: &Arc<dyn Hypervisor>,
    vm: &Vm,
    spec: &DomainSpec,
    state: DomainState,
) -> Result<Option<VmHotplug>, String> {
    let vm_name = Name::new(vm.metadata.name.clone()).map_err(|e| e.to_string())?;
    let wanted: BTreeSet<Name> = disk_volumes(&vm_name, &vm.spec)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let loose: Vec<Volume> = storage::volumes(m)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|v| {
            (v.status.attached_to.as_deref() == Some(vm_name.as_str())
                || v.status.owner.as_deref() == Some(vm_name.as_str()))
                && !wanted.contains(
                    &Name::new(v.metadata.name.clone()).unwrap_or_else(|_| vm_name.clone()),
                )
        })
        .collect();
    let active = matches!(state, DomainState::Running | DomainState::Paused);
    let changed = vm.status.observed_version < vm.metadata.version;
    if !active {
        release(m, &vm_name, &loose, &[]).await?;
        return Ok(None);
    }
    if !changed && vm.status.hotplug.is_some() && loose.is_empty() {
        return Ok(vm.status.hotplug);
    }
    let h = hv.clone();
    let s = spec.clone();
    let n = vm_name.to_string();
    let live = tokio::task::spawn_blocking(move || -> Result<keel_virt::LiveDomain, String> {
        let e = |e: keel_virt::HypervisorError| e.to_string();
        let live = h.live(&n).map_err(e)?;
        if s.vcpus > live.vcpus {
            h.set_vcpus(&n, s.vcpus.min(live.max_vcpus)).map_err(e)?;
        }
        if s.memory_mib > live.memory_mib && live.max_memory_mib > live.memory_mib {
            h.grow_memory(&n, s.memory_mib.min(live.max_memory_mib))
                .map_err(e)?;
        }
        for d in &s.disks {
            if !live.disks.iter().any(|l| l.path == d.path) {
                h.attach_disk(&n, d).map_err(e)?;
            }
        }
        for l in &live.disks {
            if !s.disks.iter().any(|d| d.path == l.path) {
                // Repeated each round until the guest has let go (a request made before
                // its ACPI driver was up is lost); a refusal meanwhile is not an error.
                if let Err(err) = h.detach_disk(&n, &l.path) {
                    tracing::debug!(vm = %n, disk = %l.path.display(), error = %err, "disk detach not done yet");
                }
            }
        }
        for nic in &s.nics {
            if !live.nics.iter().any(|l| l.mac == nic.mac) {
                h.attach_nic(&n, nic).map_err(e)?;
            }
        }
        for l in &live.nics {
            if !s.nics.iter().any(|x| x.mac == l.mac) {
                if let Err(err) = h.detach_nic(&n, l.mac) {
                    tracing::debug!(vm = %n, mac = %l.mac, error = %err, "NIC detach not done yet");
                }
            }
        }
        h.live(&n).map_err(e)
    })
    .await
    .map_err(|e| e.to_string())??;
    if live.vcpus < spec.vcpus || live.memory_mib < spec.memory_mib {
        warn!(vm = %vm_name, vcpus = live.vcpus, memory_mib = live.memory_mib,
            "the running domain is smaller than its spec beyond its hot-add limits; it gets the rest at its next start");
    }
    let plugged: Vec<std::path::PathBuf> = live.disks.iter().map(|d| d.path.clone()).collect();
    release(m, &vm_name, &loose, &plugged).await?;
    if !devices_match(spec, &live) {
        // A detach the guest has not carried out yet: no limits until it has, so the next
        // round looks again (and the API asks callers to retry growth meanwhile).
        return Ok(None);
    }
    Ok(Some(VmHotplug {
        max_cpus: live.max_vcpus,
        max_memory: Bytes::from_mib(live.max_memory_mib),
    }))
}

/// Whether the running domain has exactly the spec's disks and NICs (pure).
pub fn devices_match(spec: &DomainSpec, live: &keel_virt::LiveDomain) -> bool {
    spec.disks.len() == live.disks.len()
        && spec
            .disks
            .iter()
            .all(|d| live.disks.iter().any(|l| l.path == d.path))
        && spec.nics.len() == live.nics.len()
        && spec
            .nics
            .iter()
            .all(|n| live.nics.iter().any(|l| l.mac == n.mac))
}

/// Lets go of volumes the VM's spec no longer has, unless still `plugged` into its domain:
/// those it still owns are deleted (detached with `delete=true`), the others stay standalone.
async fn release(
    m: &Member,
    vm: &Name,
    loose: &[Volume],
    plugged: &[std::path::PathBuf],
) -> Result<(), String> {
    for vol in loose {
        let vname = vol.metadata.name.clone();
        let in_use = plugged.iter().any(|p| {
            p.file_stem().and_then(|s| s.to_str()) == Some(vname.as_str())
                || vol.status.path.as_deref() == p.to_str()
        });
        if in_use {
            continue;
        }
        let owned = vol.status.owner.as_deref() == Some(vm.as_str());
        let now = crate::now_rfc3339();
        let me = vm.to_string();
        storage::cas(m, &vname, |v: &mut Volume| {
            if v.status.attached_to.as_deref() != Some(me.as_str())
                && v.status.owner.as_deref() != Some(me.as_str())
            {
                return Ok(false);
            }
            v.status.attached_to = None;
            if owned {
                v.status.owner = None;
                v.metadata.deletion_requested = Some(now.clone());
            }
            Ok(true)
        })
        .await
        .map_err(|e| e.to_string())?;
        info!(vm = %vm, volume = %vname, deleted = owned, "detached volume released");
    }
    Ok(())
}

/// This module's part of the OpenAPI document (merged by [`crate::api::openapi`]).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(patch_vm, attach_disk, detach_disk, attach_nic, detach_nic, rename_vm),
    components(schemas(VmUpdate, keel_model::VmPlacementUpdate, VmRename, VmHotplug))
)]
pub struct ApiDoc;

/// This module's routes (tried before the generic `vms/{name}/{action}` route).
pub fn routes(ctx: Ctx) -> BoxedFilter<(HttpResponse,)> {
    let v1 = warp::path("api").and(warp::path("v1"));
    let patch_r = v1
        .and(warp::path!("vms" / String))
        .and(warp::patch())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .and(body())
        .then(patch_vm)
        .map(reply)
        .boxed();
    let disk_post = v1
        .and(warp::path!("vms" / String / "disks"))
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .and(body())
        .then(attach_disk)
        .map(reply)
        .boxed();
    let disk_delete = v1
        .and(warp::path!("vms" / String / "disks" / String))
        .and(warp::delete())
        .and(warp::query::<DetachDiskQuery>())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .then(detach_disk)
        .map(reply)
        .boxed();
    let nic_post = v1
        .and(warp::path!("vms" / String / "nics"))
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .and(body())
        .then(attach_nic)
        .map(reply)
        .boxed();
    let nic_delete = v1
        .and(warp::path!("vms" / String / "nics" / String))
        .and(warp::delete())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .then(detach_nic)
        .map(reply)
        .boxed();
    let rename_r = v1
        .and(warp::path!("vms" / String / "rename"))
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(authz())
        .and(body())
        .then(rename_vm)
        .map(reply)
        .boxed();
    patch_r
        .or(disk_post)
        .unify()
        .or(disk_delete)
        .unify()
        .or(nic_post)
        .unify()
        .or(nic_delete)
        .unify()
        .or(rename_r)
        .unify()
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_model::VmCreate;

    fn spec() -> VmSpec {
        let c: VmCreate = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"cpus": 1, "memory": "256MiB",
                     "disks": [{"name": "root", "source": {"type": "empty", "size": "1GiB"}},
                               {"name": "data", "source": {"type": "empty", "size": "1GiB"}}],
                     "nics": [{"name": "eth0", "network": "br-vms"}]}
        }))
        .unwrap();
        c.spec
    }

    fn limits(cpus: u32, mib: u64) -> VmHotplug {
        VmHotplug {
            max_cpus: cpus,
            max_memory: Bytes::from_mib(mib),
        }
    }

    #[test]
    fn growth_within_the_headroom_is_live() {
        let old = spec();
        let mut new = old.clone();
        new.cpus = 2;
        new.memory = Bytes::from_mib(512);
        assert_eq!(
            live_refusal("web", &old, &new, Some(&limits(2, 1280))),
            None
        );
        let why = live_refusal("web", &old, &new, Some(&limits(1, 1280))).unwrap();
        assert!(why.contains("at most 1 vCPUs"), "{why}");
        let why = live_refusal("web", &old, &new, Some(&limits(2, 300))).unwrap();
        assert!(why.contains("at most"), "{why}");
        let why = live_refusal("web", &old, &new, None).unwrap();
        assert!(why.contains("retry shortly"), "{why}");
    }

    #[test]
    fn shrinking_a_running_vm_is_refused_unless_it_stops() {
        let old = spec();
        let mut new = old.clone();
        new.memory = Bytes::from_mib(128);
        let why = live_refusal("web", &old, &new, Some(&limits(2, 1280))).unwrap();
        assert!(
            why.starts_with("shrinking memory of a running VM is not supported"),
            "{why}"
        );
        assert!(why.contains("keel vm stop web"), "{why}");
        new.memory = old.memory;
        new.cpus = 0;
        assert!(live_refusal("web", &old, &new, Some(&limits(2, 1280))).is_some());
        new.cpus = 1;
        new.memory = Bytes::from_mib(128);
        new.power_state = PowerState::Stopped;
        assert_eq!(
            live_refusal("web", &old, &new, Some(&limits(2, 1280))),
            None
        );
    }

    #[test]
    fn devices_come_and_go_but_the_boot_disk_stays() {
        let old = spec();
        let mut new = old.clone();
        new.disks.remove(1);
        new.nics.clear();
        assert_eq!(
            live_refusal("web", &old, &new, Some(&limits(2, 1280))),
            None
        );
        let mut new = old.clone();
        new.disks.remove(0);
        let why = live_refusal("web", &old, &new, Some(&limits(2, 1280))).unwrap();
        assert!(why.contains("disk root is the boot disk"), "{why}");
        let mut new = old.clone();
        new.nics[0].network = "br-other".into();
        assert!(live_refusal("web", &old, &new, Some(&limits(2, 1280))).is_some());
        let mut new = old.clone();
        new.cpu_model = keel_model::CpuModel::HostPassthrough;
        let why = live_refusal("web", &old, &new, Some(&limits(2, 1280))).unwrap();
        assert!(why.starts_with("cpu_model"), "{why}");
    }

    #[test]
    fn a_rename_keeps_volumes_and_addresses() {
        let c = VmCreate {
            metadata: keel_model::NewMetadata::named(Name::new("web").unwrap()),
            spec: spec(),
        };
        let mut vm = Vm {
            metadata: c.metadata.into_metadata(),
            spec: c.spec,
            status: Default::default(),
        };
        vm.metadata.uid = "u-1".into();
        vm.status.observed_version = 7;
        let r = renamed(&vm, &Name::new("app").unwrap()).unwrap();
        assert_eq!(r.metadata.name, "app");
        assert_eq!(
            r.spec.disks[0].source,
            DiskSource::Volume {
                volume: Name::new("web-root").unwrap()
            }
        );
        assert_eq!(
            r.spec.nics[0].mac,
            Some(derived_mac("u-1", &Name::new("eth0").unwrap()))
        );
        assert_eq!(r.status.renamed_from.as_deref(), Some("web"));
        assert_eq!(r.status.observed_version, 0);
    }

    #[test]
    fn headroom_never_below_the_spec() {
        let c = VmCreate {
            metadata: keel_model::NewMetadata::named(Name::new("web").unwrap()),
            spec: spec(),
        };
        let vm = Vm {
            metadata: c.metadata.into_metadata(),
            spec: c.spec,
            status: Default::default(),
        };
        let h = headroom(&vm);
        assert!(h.max_vcpus >= 1);
        assert_eq!(h.max_memory_mib, 256 + 1024);
    }
}
