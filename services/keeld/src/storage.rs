//! Storage: pools, volumes, disk QoS and resize, snapshots, clones and templates.
//!
//! ```text
//!  every node ─▶ Pool <node>-local {capacity, allocation, available}   (node::report_pool)
//!  POST /vms ─▶ check_create: attached volumes free and ready, each new disk fits a pool
//!  scheduler ─▶ placement_request (image sizes, the node holding attached volumes), pool_free
//!  VM reconcile ─▶ prepare_disks: Volume records owned by the VM, files, iotune
//!  POST /volumes, DELETE /volumes/{n}, POST /volumes/{n}/resize ─▶ record; the pool's node acts
//!  POST /vms/{n}/snapshots, …/revert, DELETE …  ─▶ Snapshot record; the VM's node acts
//!  POST /vms/{n}/clone ─▶ new VM + Volume records (clone_of) in one batch; its node copies
//! ```
//!
//! The store holds the desired state and each node converges its own files, so a crash at
//! any step is repaired by the next round. Handlers of actions that finish quickly on the
//! node (snapshots, resize) wait a little for the node's answer so that the caller sees the
//! outcome; when it takes longer they answer 202 and the record tells the rest.

mod fit;
mod node;
mod qemu_img;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes as Body;
use keel_model::{
    owned_volume_name, snapshot_key, Bytes, DiskSource, ErrorBody, Metadata, Name, NodeState, Pool,
    PoolPhase, PowerState, Snapshot, SnapshotCreate, SnapshotPhase, SnapshotSpec, SnapshotStatus,
    ValidationError, Vm, VmClone, VmCreate, VmDisk, VmPhase, Volume, VolumeCreate, VolumePhase,
    VolumeResize, VolumeSpec, VolumeStatus,
};
use keel_store::{Record, Request, Response};
use serde::Serialize;
use tracing::info;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response as HttpResponse;
use warp::{Filter, Reply};

use crate::api::{authenticate, authz, body, ok, parse, reply, with_ctx, ApiResult, Ctx, List};
use crate::compute::{self, VMS};
use crate::error::ApiError;
use crate::member::{decode, encode, kinds, node_of, Member};
use crate::scheduler::VmPlacementRequest;

pub use node::{node_loop, prepare_disks, release_disks};

/// Store kind of pools.
pub const POOLS: &str = "pools";
/// Store kind of volumes.
pub const VOLUMES: &str = "volumes";
/// Store kind of VM snapshots (records named `<vm>.<snapshot>`).
pub const SNAPSHOTS: &str = "vm-snapshots";

/// How long a handler waits for a node to carry out a quick storage action.
const ACTION_WAIT: Duration = Duration::from_secs(60);

fn with_meta(meta: &mut Metadata, rec: &Record) {
    meta.name = rec.name.clone();
    meta.uid = rec.uid.clone();
    meta.version = rec.version;
    meta.created = rec.created.clone();
}

/// The Pool resource of a record.
pub fn pool_of(rec: &Record) -> Result<Pool, ApiError> {
    let mut p: Pool = decode(rec)?;
    with_meta(&mut p.metadata, rec);
    Ok(p)
}

/// The Volume resource of a record.
pub fn volume_of(rec: &Record) -> Result<Volume, ApiError> {
    let mut v: Volume = decode(rec)?;
    with_meta(&mut v.metadata, rec);
    Ok(v)
}

/// The Snapshot resource of a record; its name is the part after `<vm>.`.
pub fn snapshot_of(rec: &Record) -> Result<Snapshot, ApiError> {
    let mut s: Snapshot = decode(rec)?;
    with_meta(&mut s.metadata, rec);
    if let Some((_, snap)) = rec.name.split_once('.') {
        s.metadata.name = snap.to_string();
    }
    Ok(s)
}

/// A resource kept in the store by this module.
pub(crate) trait Stored: Serialize + Sized {
    /// Store kind.
    const KIND: &'static str;
    /// What to call it in messages.
    const WHAT: &'static str;
    /// From its record.
    fn of(rec: &Record) -> Result<Self, ApiError>;
}

impl Stored for Pool {
    const KIND: &'static str = POOLS;
    const WHAT: &'static str = "pool";
    fn of(rec: &Record) -> Result<Self, ApiError> {
        pool_of(rec)
    }
}

impl Stored for Volume {
    const KIND: &'static str = VOLUMES;
    const WHAT: &'static str = "volume";
    fn of(rec: &Record) -> Result<Self, ApiError> {
        volume_of(rec)
    }
}

impl Stored for Snapshot {
    const KIND: &'static str = SNAPSHOTS;
    const WHAT: &'static str = "snapshot";
    fn of(rec: &Record) -> Result<Self, ApiError> {
        snapshot_of(rec)
    }
}

/// Applies `f` to record `name` with compare-and-set, retrying on conflicts; `f` returns
/// whether there is anything to write.
pub(crate) async fn cas<T: Stored>(
    m: &Member,
    name: &str,
    f: impl Fn(&mut T) -> Result<bool, ApiError>,
) -> Result<T, ApiError> {
    crate::member::update_record(m, T::KIND, T::WHAT, name, T::of, f).await
}

/// Polls record `name` until `done` holds (or it is gone: `None`), up to `wait`.
async fn wait_for<T: Stored>(
    m: &Member,
    name: &str,
    wait: Duration,
    done: impl Fn(&T) -> bool,
) -> Result<Option<(T, bool)>, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let Some(rec) = m.get(T::KIND, name)? else {
            return Ok(None);
        };
        let v = T::of(&rec)?;
        if done(&v) {
            return Ok(Some((v, true)));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(Some((v, false)));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every volume.
pub fn volumes(m: &Member) -> Result<Vec<Volume>, ApiError> {
    m.list(VOLUMES)?.iter().map(volume_of).collect()
}

fn pools(m: &Member) -> Result<Vec<Pool>, ApiError> {
    m.list(POOLS)?.iter().map(pool_of).collect()
}

/// Free bytes of each node's pool, by node, for the scheduler. Nodes that have not reported
/// a pool yet are absent (the caller decides what that means).
pub fn pool_free(m: &Member) -> Result<HashMap<String, u64>, ApiError> {
    Ok(pools(m)?
        .into_iter()
        .filter(|p| p.status.phase == PoolPhase::Ready)
        .map(|p| (p.spec.node.to_string(), p.status.available_bytes))
        .collect())
}

fn image_virtual_size(m: &Member, image: &Name) -> Result<u64, ApiError> {
    Ok(match m.get(crate::images::KIND, image.as_str())? {
        Some(rec) => crate::images::image_of(&rec)?.status.virtual_size_bytes,
        None => 0,
    })
}

/// The node whose pool holds volume `v`.
fn node_of_volume(m: &Member, v: &Volume) -> Result<Option<String>, ApiError> {
    if let Some(n) = &v.status.node {
        return Ok(Some(n.clone()));
    }
    Ok(m.get(POOLS, v.spec.pool.as_str())?
        .map(|r| pool_of(&r))
        .transpose()?
        .map(|p| p.spec.node.to_string()))
}

/// The scheduler's view of `vm`: the spec's disk sizes plus the virtual size of images used
/// without a size and of volumes still to be copied, and the node holding the volumes it
/// attaches (local storage ties the VM to it).
pub fn placement_request(m: &Member, vm: &Vm) -> Result<VmPlacementRequest, ApiError> {
    let mut r = VmPlacementRequest::from_vm(vm);
    for d in &vm.spec.disks {
        match &d.source {
            DiskSource::Image { image, size: None } => {
                r.disk_bytes = r.disk_bytes.saturating_add(image_virtual_size(m, image)?);
            }
            DiskSource::Volume { volume } => {
                if let Some(rec) = m.get(VOLUMES, volume.as_str())? {
                    let v = volume_of(&rec)?;
                    if v.status.phase != VolumePhase::Ready {
                        r.disk_bytes = r.disk_bytes.saturating_add(v.spec.size.get());
                    }
                    if r.storage_node.is_none() {
                        r.storage_node = node_of_volume(m, &v)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(r)
}

/// Checks a new VM's disks against the volumes and pools: attached volumes exist, are free
/// and ready and share one node; disk names do not collide with existing volumes; every new
/// disk fits a pool the VM may use. Each refusal names the disk's field.
pub fn check_create(m: &Member, body: &VmCreate) -> Result<(), ApiError> {
    let vm = body.metadata.name.clone();
    let mut storage_node: Option<(String, String)> = None;
    let mut needs = Vec::new();
    for (i, d) in body.spec.disks.iter().enumerate() {
        let path = format!("spec.disks[{i}]");
        match &d.source {
            DiskSource::Volume { volume } => {
                let field = format!("{path}.source.volume");
                let v = m
                    .get(VOLUMES, volume.as_str())?
                    .map(|r| volume_of(&r))
                    .transpose()?
                    .ok_or_else(|| {
                        ApiError::bad(
                            format!("volume {volume} does not exist; create it first (POST /api/v1/volumes) or use an image or empty disk"),
                            Some(field.clone()),
                        )
                    })?;
                if let Some(user) = v.status.attached_to.as_ref().or(v.status.owner.as_ref()) {
                    return Err(ApiError::bad(
                        format!("volume {volume} is already a disk of VM {user}; a volume is attached to one VM at a time"),
                        Some(field),
                    ));
                }
                if v.metadata.deletion_requested.is_some() || v.status.phase != VolumePhase::Ready {
                    return Err(ApiError::bad(
                        format!(
                            "volume {volume} is not ready ({:?}{})",
                            v.status.phase,
                            if v.status.message.is_empty() {
                                String::new()
                            } else {
                                format!(": {}", v.status.message)
                            }
                        ),
                        Some(field),
                    ));
                }
                let node = node_of_volume(m, &v)?.unwrap_or_default();
                match &storage_node {
                    Some((other, n)) if *n != node => {
                        return Err(ApiError::bad(
                            format!("volume {volume} is on {node} but volume {other} is on {n}; a VM's local disks must be on one node"),
                            Some(field),
                        ))
                    }
                    None => storage_node = Some((volume.to_string(), node.clone())),
                    _ => {}
                }
                if let Some(pin) = &body.spec.placement.node {
                    if pin.as_str() != node {
                        return Err(ApiError::bad(
                            format!("the VM is pinned to {pin} but volume {volume} is on {node}; local volumes can only be used on their node"),
                            Some("spec.placement.node".into()),
                        ));
                    }
                }
            }
            DiskSource::Image { image, size } => {
                let owned = owned_volume_name(&vm, &d.name);
                if m.get(VOLUMES, owned.as_str())?.is_some() {
                    return Err(ApiError::bad(
                        format!("disk {} would be volume {owned}, which already exists; name the disk differently, or attach that volume (source type volume)", d.name),
                        Some(format!("{path}.name")),
                    ));
                }
                let (bytes, field) = match size {
                    Some(s) => (s.get(), format!("{path}.source.size")),
                    None => (
                        image_virtual_size(m, image)?,
                        format!("{path}.source.image"),
                    ),
                };
                needs.push(fit::DiskNeed {
                    disk: d.name.to_string(),
                    bytes,
                    field,
                });
            }
            DiskSource::Empty { size } => {
                let owned = owned_volume_name(&vm, &d.name);
                if m.get(VOLUMES, owned.as_str())?.is_some() {
                    return Err(ApiError::bad(
                        format!("disk {} would be volume {owned}, which already exists; name the disk differently, or attach that volume (source type volume)", d.name),
                        Some(format!("{path}.name")),
                    ));
                }
                needs.push(fit::DiskNeed {
                    disk: d.name.to_string(),
                    bytes: size.get(),
                    field: format!("{path}.source.size"),
                });
            }
        }
    }
    let only = storage_node
        .map(|(_, n)| n)
        .or_else(|| body.spec.placement.node.as_ref().map(|n| n.to_string()));
    let ready: Vec<String> = m
        .list(kinds::NODES)?
        .iter()
        .filter_map(|r| node_of(r).ok())
        .filter(|n| n.status.state == NodeState::Ready && !n.spec.cordoned)
        .map(|n| n.metadata.name)
        .collect();
    let candidates: Vec<fit::PoolFree> = pools(m)?
        .into_iter()
        .filter(|p| p.status.phase == PoolPhase::Ready)
        .filter(|p| match &only {
            Some(n) => p.spec.node.as_str() == n,
            None => ready.iter().any(|r| r == p.spec.node.as_str()),
        })
        .map(|p| fit::PoolFree {
            pool: p.metadata.name,
            node: p.spec.node.to_string(),
            available: p.status.available_bytes,
        })
        .collect();
    fit::check(&needs, &candidates)?;
    Ok(())
}

/// `DELETE /vms/{name}?keep_disks=true`: the VM's volumes stop being its own, so deleting
/// the VM leaves them as standalone volumes.
pub async fn keep_disks(m: &Member, vm: &str) -> Result<(), ApiError> {
    for v in volumes(m)? {
        if v.status.owner.as_deref() == Some(vm) {
            cas(m, &v.metadata.name, |x: &mut Volume| {
                x.status.owner = None;
                Ok(true)
            })
            .await?;
            info!(vm, volume = %v.metadata.name, "volume kept as a standalone volume");
        }
    }
    Ok(())
}

/// Refuses to start a template.
pub fn check_startable(vm: &Vm) -> Result<(), ApiError> {
    if vm.spec.template {
        return Err(ApiError::Conflict {
            code: "invalid_state",
            message: format!(
                "VM {} is a template and never runs; clone it (keel vm clone {} NEW, or keel vm create NEW --from-template {}) and start the clone",
                vm.metadata.name, vm.metadata.name, vm.metadata.name
            ),
        });
    }
    Ok(())
}

fn vm_rec(m: &Member, name: &str) -> Result<Vm, ApiError> {
    compute::vm_name(name)?;
    let rec = m
        .get(VMS, name)?
        .ok_or_else(|| ApiError::NotFound(format!("VM {name} does not exist")))?;
    compute::vm_of(&rec)
}

/// Whether a VM is shut off for sure: asked to stop and its node reports it stopped.
fn is_stopped(vm: &Vm) -> bool {
    vm.spec.power_state == PowerState::Stopped && vm.status.phase == VmPhase::Stopped
}

fn must_be_stopped(vm: &Vm, what: &str) -> Result<(), ApiError> {
    if is_stopped(vm) {
        return Ok(());
    }
    let phase = serde_json::to_value(vm.status.phase)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    Err(ApiError::Conflict {
        code: "invalid_state",
        message: format!(
            "VM {name} is not stopped (phase {phase}); {what} needs it stopped: run keel vm stop {name} --wait first",
            name = vm.metadata.name
        ),
    })
}

fn created<T: Serialize>(v: &T) -> ApiResult {
    Ok(warp::reply::with_status(warp::reply::json(v), StatusCode::CREATED).into_response())
}

fn accepted<T: Serialize>(v: &T) -> ApiResult {
    Ok(warp::reply::with_status(warp::reply::json(v), StatusCode::ACCEPTED).into_response())
}

// ---- pools ----

/// Every pool, with capacity as its node last reported it.
#[utoipa::path(get, path = "/api/v1/pools", security(("bearer" = [])),
    responses((status = 200, body = List<Pool>), (status = 401, body = ErrorBody)))]
async fn list_pools(ctx: Ctx, authz: Option<String>) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    m.linearizable().await?;
    ok(&List { items: pools(&m)? })
}

/// One pool.
#[utoipa::path(get, path = "/api/v1/pools/{name}", security(("bearer" = [])), params(("name" = String, Path)),
    responses((status = 200, body = Pool), (status = 404, body = ErrorBody)))]
async fn get_pool(name: String, ctx: Ctx, authz: Option<String>) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    m.linearizable().await?;
    let rec = m
        .get(POOLS, &name)?
        .ok_or_else(|| ApiError::NotFound(format!("pool {name} does not exist")))?;
    ok(&pool_of(&rec)?)
}

// ---- volumes ----

/// Every volume: VM disks (with `status.owner`) and standalone volumes.
#[utoipa::path(get, path = "/api/v1/volumes", security(("bearer" = [])),
    responses((status = 200, body = List<Volume>), (status = 401, body = ErrorBody)))]
async fn list_volumes(ctx: Ctx, authz: Option<String>) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    m.linearizable().await?;
    ok(&List {
        items: volumes(&m)?,
    })
}

/// One volume.
#[utoipa::path(get, path = "/api/v1/volumes/{name}", security(("bearer" = [])), params(("name" = String, Path)),
    responses((status = 200, body = Volume), (status = 404, body = ErrorBody)))]
async fn get_volume(name: String, ctx: Ctx, authz: Option<String>) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    m.linearizable().await?;
    let rec = m
        .get(VOLUMES, &name)?
        .ok_or_else(|| ApiError::NotFound(format!("volume {name} does not exist")))?;
    ok(&volume_of(&rec)?)
}

/// Creates a standalone volume in a pool (blank, or a thin copy of an image); the pool's
/// node makes the file.
#[utoipa::path(post, path = "/api/v1/volumes", security(("bearer" = [])), request_body = VolumeCreate,
    responses((status = 201, body = Volume), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_volume(ctx: Ctx, authz: Option<String>, body: Body) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    let req: VolumeCreate = parse(&body)?;
    req.validate()?;
    m.linearizable().await?;
    let pool = m
        .get(POOLS, req.spec.pool.as_str())?
        .map(|r| pool_of(&r))
        .transpose()?
        .ok_or_else(|| {
            ApiError::bad(
                format!(
                    "pool {} does not exist; keel pool list shows the pools (each node has <node>-local)",
                    req.spec.pool
                ),
                Some("spec.pool".into()),
            )
        })?;
    if pool.status.phase != PoolPhase::Ready {
        return Err(ApiError::bad(
            format!(
                "pool {} is not ready ({:?})",
                pool.metadata.name, pool.status.phase
            ),
            Some("spec.pool".into()),
        ));
    }
    if req.spec.size.get() > pool.status.available_bytes {
        return Err(ApiError::bad(
            format!(
                "a volume of {} does not fit pool {}: {} free",
                req.spec.size,
                pool.metadata.name,
                Bytes::new(pool.status.available_bytes)
            ),
            Some("spec.size".into()),
        ));
    }
    if let Some(image) = &req.spec.backing_image {
        let rec = m.get(crate::images::KIND, image.as_str())?.ok_or_else(|| {
            ApiError::bad(
                format!("image {image} does not exist; import it first (keel image import)"),
                Some("spec.backing_image".into()),
            )
        })?;
        let img = crate::images::image_of(&rec)?;
        if img.status.phase != keel_model::ImagePhase::Ready {
            return Err(ApiError::bad(
                format!("image {image} is not ready yet ({:?})", img.status.phase),
                Some("spec.backing_image".into()),
            ));
        }
        if req.spec.size.get() < img.status.virtual_size_bytes {
            return Err(ApiError::bad(
                format!(
                    "{} is smaller than image {image} ({}); volumes never shrink an image",
                    req.spec.size,
                    Bytes::new(img.status.virtual_size_bytes)
                ),
                Some("spec.size".into()),
            ));
        }
    }
    let name = req.metadata.name.to_string();
    let vol = Volume {
        metadata: req.metadata.into_metadata(),
        spec: req.spec,
        status: VolumeStatus {
            node: Some(pool.spec.node.to_string()),
            ..VolumeStatus::default()
        },
    };
    match m
        .write_ok(Request::Create {
            kind: VOLUMES.into(),
            name: name.clone(),
            value: encode(&vol)?,
            idempotency_key: None,
        })
        .await?
    {
        Response::Written(rec) => {
            info!(volume = %name, pool = %vol.spec.pool, "volume created");
            created(&volume_of(&rec)?)
        }
        other => Err(ApiError::Internal(format!(
            "unexpected store answer {other:?}"
        ))),
    }
}

/// Deletes a standalone volume (its node removes the file). A volume that is a VM's disk is
/// refused with 409: delete the VM (or detach the disk) first.
#[utoipa::path(delete, path = "/api/v1/volumes/{name}", security(("bearer" = [])), params(("name" = String, Path)),
    responses((status = 202, body = Volume), (status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_volume(name: String, ctx: Ctx, authz: Option<String>) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    m.linearizable().await?;
    let rec = m
        .get(VOLUMES, &name)?
        .ok_or_else(|| ApiError::NotFound(format!("volume {name} does not exist")))?;
    let v = volume_of(&rec)?;
    let user = v.status.attached_to.clone().or(v.status.owner.clone()).or_else(|| {
        m.list(VMS).ok().and_then(|vms| {
            vms.iter().filter_map(|r| compute::vm_of(r).ok()).find_map(|vm| {
                vm.spec
                    .disks
                    .iter()
                    .any(|d| matches!(&d.source, DiskSource::Volume { volume } if volume.as_str() == name))
                    .then(|| vm.metadata.name.clone())
            })
        })
    });
    if let Some(vm) = user {
        return Err(ApiError::Conflict {
            code: "invalid_state",
            message: format!("volume {name} is a disk of VM {vm}; delete the VM (keel vm delete {vm}, which deletes the disks it owns) or remove the disk from it first"),
        });
    }
    let now = crate::now_rfc3339();
    let v = cas(&m, &name, |x: &mut Volume| {
        if x.metadata.deletion_requested.is_some() {
            return Ok(false);
        }
        x.metadata.deletion_requested = Some(now.clone());
        Ok(true)
    })
    .await?;
    match wait_for::<Volume>(&m, &name, Duration::from_secs(10), |_| false).await? {
        None => Ok(StatusCode::NO_CONTENT.into_response()),
        Some(_) => accepted(&v),
    }
}

/// Grows a volume (never shrinks it): live through libvirt when its VM runs, else with
/// qemu-img. Answers once the node has grown it (200), or 202 while it is still at it.
#[utoipa::path(post, path = "/api/v1/volumes/{name}/resize", security(("bearer" = [])), params(("name" = String, Path)),
    request_body = VolumeResize,
    responses((status = 200, body = Volume), (status = 202, body = Volume), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn resize_volume(name: String, ctx: Ctx, authz: Option<String>, body: Body) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    let req: VolumeResize = parse(&body)?;
    m.linearizable().await?;
    let rec = m
        .get(VOLUMES, &name)?
        .ok_or_else(|| ApiError::NotFound(format!("volume {name} does not exist")))?;
    let v = volume_of(&rec)?;
    req.check(v.spec.size)?;
    let grow = req.size.get() - v.spec.size.get();
    if let Some(p) = m
        .get(POOLS, v.spec.pool.as_str())?
        .map(|r| pool_of(&r))
        .transpose()?
    {
        if grow > p.status.available_bytes {
            return Err(ApiError::bad(
                format!(
                    "growing {name} by {} does not fit pool {}: {} free",
                    Bytes::new(grow),
                    p.metadata.name,
                    Bytes::new(p.status.available_bytes)
                ),
                Some("size".into()),
            ));
        }
    }
    let size = req.size;
    cas(&m, &name, |x: &mut Volume| {
        if x.spec.size >= size {
            return Ok(false);
        }
        x.spec.size = size;
        Ok(true)
    })
    .await?;
    match wait_for::<Volume>(&m, &name, ACTION_WAIT, |x| {
        x.status.size_bytes >= size.get() || !x.status.message.is_empty()
    })
    .await?
    {
        Some((v, true)) if v.status.size_bytes >= size.get() => ok(&v),
        Some((v, true)) => Err(ApiError::Conflict {
            code: "invalid_state",
            message: format!("volume {name} could not grow yet: {}", v.status.message),
        }),
        Some((v, false)) => accepted(&v),
        None => Err(ApiError::NotFound(format!("volume {name} was deleted"))),
    }
}

// ---- snapshots ----

fn vm_snapshots(m: &Member, vm: &str) -> Result<Vec<Snapshot>, ApiError> {
    let prefix = format!("{vm}.");
    m.list(SNAPSHOTS)?
        .iter()
        .filter(|r| r.name.starts_with(&prefix))
        .map(snapshot_of)
        .collect()
}

/// A VM's snapshots.
#[utoipa::path(get, path = "/api/v1/vms/{name}/snapshots", security(("bearer" = [])), params(("name" = String, Path)),
    responses((status = 200, body = List<Snapshot>), (status = 404, body = ErrorBody)))]
async fn list_snapshots(name: String, ctx: Ctx, authz: Option<String>) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    m.linearizable().await?;
    vm_rec(&m, &name)?;
    ok(&List {
        items: vm_snapshots(&m, &name)?,
    })
}

/// Takes a snapshot of a VM's disks: a running VM's through libvirt (memory included), a
/// stopped VM's with qemu-img. Answers once its node has taken it (201) or still pending
/// (202); a snapshot that failed has phase `failed` and a message.
#[utoipa::path(post, path = "/api/v1/vms/{name}/snapshots", security(("bearer" = [])), params(("name" = String, Path)),
    request_body = SnapshotCreate,
    responses((status = 201, body = Snapshot), (status = 202, body = Snapshot), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_snapshot(name: String, ctx: Ctx, authz: Option<String>, body: Body) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    let req: SnapshotCreate = parse(&body)?;
    m.linearizable().await?;
    let vm = vm_rec(&m, &name)?;
    if vm.status.node.is_none() {
        return Err(ApiError::Conflict {
            code: "invalid_state",
            message: format!("VM {name} has no node yet; it can be snapshotted once it is placed"),
        });
    }
    if vm.spec.disks.is_empty() {
        return Err(ApiError::bad(
            format!("VM {name} has no disks to snapshot"),
            Some("name".into()),
        ));
    }
    let key = snapshot_key(&name, req.name.as_str());
    let snap = Snapshot {
        metadata: Metadata {
            name: req.name.to_string(),
            ..Metadata::default()
        },
        spec: SnapshotSpec {
            vm: Name::new(name.clone())?,
            revert_generation: 0,
        },
        status: SnapshotStatus::default(),
    };
    let res = m
        .write(Request::Create {
            kind: SNAPSHOTS.into(),
            name: key.clone(),
            value: encode(&snap)?,
            idempotency_key: None,
        })
        .await?;
    match res {
        Response::Written(_) => {}
        Response::Failed(keel_store::ApplyFailure::AlreadyExists { .. }) => {
            return Err(ApiError::Conflict {
                code: "already_exists",
                message: format!(
                    "VM {name} already has a snapshot {}; pick another name",
                    req.name
                ),
            })
        }
        Response::Failed(f) => return Err(crate::member::apply_err(f)),
        other => {
            return Err(ApiError::Internal(format!(
                "unexpected store answer {other:?}"
            )))
        }
    }
    info!(vm = %name, snapshot = %req.name, "snapshot requested");
    match wait_for::<Snapshot>(&m, &key, ACTION_WAIT, |s| {
        s.status.phase != SnapshotPhase::Pending
    })
    .await?
    {
        Some((s, true)) => created(&s),
        Some((s, false)) => accepted(&s),
        None => Err(ApiError::NotFound(format!(
            "snapshot {} was deleted",
            req.name
        ))),
    }
}

fn snapshot_rec(m: &Member, vm: &str, snap: &str) -> Result<(String, Snapshot), ApiError> {
    let key = snapshot_key(vm, snap);
    let rec = m.get(SNAPSHOTS, &key)?.ok_or_else(|| {
        ApiError::NotFound(format!(
            "VM {vm} has no snapshot {snap}; keel vm snapshot list {vm} shows them"
        ))
    })?;
    Ok((key, snapshot_of(&rec)?))
}

/// Reverts a stopped VM's disks to a snapshot (409 while the VM runs).
#[utoipa::path(post, path = "/api/v1/vms/{name}/snapshots/{snapshot}/revert", security(("bearer" = [])),
    params(("name" = String, Path), ("snapshot" = String, Path)),
    responses((status = 200, body = Snapshot), (status = 202, body = Snapshot), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn revert_snapshot(
    name: String,
    snapshot: String,
    ctx: Ctx,
    authz: Option<String>,
) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    m.linearizable().await?;
    let vm = vm_rec(&m, &name)?;
    let (key, snap) = snapshot_rec(&m, &name, &snapshot)?;
    must_be_stopped(&vm, "reverting to a snapshot")?;
    if snap.status.phase != SnapshotPhase::Ready {
        return Err(ApiError::Conflict {
            code: "invalid_state",
            message: format!(
                "snapshot {snapshot} is {:?}, not ready; only a ready snapshot can be reverted to",
                snap.status.phase
            ),
        });
    }
    let s = cas(&m, &key, |s: &mut Snapshot| {
        s.spec.revert_generation = s.spec.revert_generation.max(s.status.reverted) + 1;
        Ok(true)
    })
    .await?;
    let generation = s.spec.revert_generation;
    match wait_for::<Snapshot>(&m, &key, ACTION_WAIT, |s| s.status.reverted >= generation).await? {
        Some((s, true)) if s.status.message.is_empty() => ok(&s),
        Some((s, true)) => Err(ApiError::Conflict {
            code: "invalid_state",
            message: format!("reverting to {snapshot} failed: {}", s.status.message),
        }),
        Some((s, false)) => accepted(&s),
        None => Err(ApiError::NotFound(format!(
            "snapshot {snapshot} was deleted"
        ))),
    }
}

/// Deletes a snapshot (the VM must be stopped unless the snapshot never got taken).
#[utoipa::path(delete, path = "/api/v1/vms/{name}/snapshots/{snapshot}", security(("bearer" = [])),
    params(("name" = String, Path), ("snapshot" = String, Path)),
    responses((status = 204), (status = 202, body = Snapshot), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn delete_snapshot(
    name: String,
    snapshot: String,
    ctx: Ctx,
    authz: Option<String>,
) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    m.linearizable().await?;
    let vm = vm_rec(&m, &name)?;
    let (key, snap) = snapshot_rec(&m, &name, &snapshot)?;
    if snap.status.phase == SnapshotPhase::Ready {
        must_be_stopped(&vm, "deleting a snapshot (internal qcow2 snapshots are removed while no QEMU has the disks open)")?;
    }
    let now = crate::now_rfc3339();
    let s = cas(&m, &key, |s: &mut Snapshot| {
        if s.metadata.deletion_requested.is_some() {
            return Ok(false);
        }
        s.metadata.deletion_requested = Some(now.clone());
        Ok(true)
    })
    .await?;
    match wait_for::<Snapshot>(&m, &key, ACTION_WAIT, |_| false).await? {
        None => Ok(StatusCode::NO_CONTENT.into_response()),
        Some(_) => accepted(&s),
    }
}

// ---- clone and templates ----

/// The VM and volume records a clone of `src` named `new` consists of.
pub fn clone_plan(
    src: &Vm,
    src_volumes: &[Volume],
    new: &Name,
    start: bool,
) -> Result<(Vm, Vec<Volume>), ValidationError> {
    let mut spec = src.spec.clone();
    spec.template = false;
    spec.power_state = if start {
        PowerState::Running
    } else {
        PowerState::Stopped
    };
    for nic in &mut spec.nics {
        nic.mac = None; // derived from the clone's own uid
    }
    let mut disks = Vec::new();
    let mut vols = Vec::new();
    for (d, sv) in src.spec.disks.iter().zip(src_volumes) {
        let vname = owned_volume_name(new, &d.name);
        vols.push(Volume {
            metadata: Metadata {
                name: vname.to_string(),
                ..Metadata::default()
            },
            spec: VolumeSpec {
                pool: sv.spec.pool.clone(),
                size: sv.spec.size,
                format: keel_model::VolumeFormat::Qcow2,
                backing_image: None,
                qos: sv.spec.qos.clone(),
                clone_of: Some(Name::new(sv.metadata.name.clone())?),
            },
            status: VolumeStatus {
                node: sv.status.node.clone(),
                owner: Some(new.to_string()),
                attached_to: Some(new.to_string()),
                ..VolumeStatus::default()
            },
        });
        disks.push(VmDisk {
            name: d.name.clone(),
            source: DiskSource::Volume { volume: vname },
            bus: d.bus,
            qos: None,
        });
    }
    spec.disks = disks;
    spec.validate()?;
    let vm = Vm {
        metadata: Metadata {
            name: new.to_string(),
            labels: src.metadata.labels.clone(),
            ..Metadata::default()
        },
        spec,
        status: Default::default(),
    };
    Ok((vm, vols))
}

/// Clones a stopped VM or a template: a new VM (new uid, MACs derived from it) whose disks
/// are copies of the source's, made on the source's node.
#[utoipa::path(post, path = "/api/v1/vms/{name}/clone", security(("bearer" = [])), params(("name" = String, Path)),
    request_body = VmClone,
    responses((status = 201, body = Vm), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn clone_vm(name: String, ctx: Ctx, authz: Option<String>, body: Body) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    let req: VmClone = parse(&body)?;
    m.linearizable().await?;
    let src = vm_rec(&m, &name)?;
    let vm = clone_from(&m, &src, &req.name, req.start, "name").await?;
    created(&vm)
}

/// Makes VM `new` from `src` (stopped, or a template); `field` names the new name's field.
pub async fn clone_from(
    m: &Member,
    src: &Vm,
    new: &Name,
    start: bool,
    field: &str,
) -> Result<Vm, ApiError> {
    let name = &src.metadata.name;
    if !src.spec.template {
        must_be_stopped(src, "cloning")?;
    }
    if src.status.node.is_none() {
        return Err(ApiError::Conflict {
            code: "invalid_state",
            message: format!(
                "VM {name} has no node yet, so no disks to copy; wait until it is placed"
            ),
        });
    }
    if m.get(VMS, new.as_str())?.is_some() {
        return Err(ApiError::Conflict {
            code: "already_exists",
            message: format!("VM {new} already exists; pick another name"),
        });
    }
    let mut src_vols = Vec::new();
    for vname in node::disk_volumes(src)? {
        let v = m
            .get(VOLUMES, vname.as_str())?
            .map(|r| volume_of(&r))
            .transpose()?
            .filter(|v| v.status.phase == VolumePhase::Ready)
            .ok_or_else(|| ApiError::Conflict {
                code: "invalid_state",
                message: format!("volume {vname} of VM {name} is not ready; wait until the VM's disks exist (start it once)"),
            })?;
        src_vols.push(v);
    }
    let (vm, vols) = clone_plan(src, &src_vols, new, start).map_err(|e| e.within("spec"))?;
    for v in &vols {
        if m.get(VOLUMES, &v.metadata.name)?.is_some() {
            return Err(ApiError::bad(
                format!("volume {} already exists, so the clone's disk cannot take that name; pick another VM name", v.metadata.name),
                Some(field.into()),
            ));
        }
    }
    let mut batch = vec![Request::Create {
        kind: VMS.into(),
        name: new.to_string(),
        value: encode(&vm)?,
        idempotency_key: None,
    }];
    for v in &vols {
        batch.push(Request::Create {
            kind: VOLUMES.into(),
            name: v.metadata.name.clone(),
            value: encode(v)?,
            idempotency_key: None,
        });
    }
    match m.write(Request::Batch(batch)).await? {
        Response::Batch(_) | Response::Written(_) => {}
        Response::Failed(f) => return Err(crate::member::apply_err(f)),
        other => {
            return Err(ApiError::Internal(format!(
                "unexpected store answer {other:?}"
            )))
        }
    }
    info!(vm = %new, from = %name, "VM cloned");
    let rec = m
        .get(VMS, new.as_str())?
        .ok_or_else(|| ApiError::Internal(format!("VM {new} vanished right after its creation")))?;
    compute::vm_of(&rec)
}

// ---- routes ----

/// This module's part of the OpenAPI document (merged by [`crate::api::openapi`]).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        list_pools, get_pool, list_volumes, get_volume, create_volume, delete_volume, resize_volume,
        list_snapshots, create_snapshot, revert_snapshot, delete_snapshot, clone_vm
    ),
    components(schemas(List<Pool>, List<Volume>, List<Snapshot>))
)]
pub struct ApiDoc;

/// This module's routes (tried before the generic `vms/{name}/{action}` route).
pub fn routes(ctx: Ctx) -> BoxedFilter<(HttpResponse,)> {
    let v1 = || warp::path("api").and(warp::path("v1"));
    let c = move || with_ctx(ctx.clone());
    let pools_get = v1()
        .and(warp::path!("pools"))
        .and(warp::get())
        .and(c())
        .and(authz())
        .then(list_pools)
        .map(reply)
        .boxed();
    let pool_get = v1()
        .and(warp::path!("pools" / String))
        .and(warp::get())
        .and(c())
        .and(authz())
        .then(get_pool)
        .map(reply)
        .boxed();
    let volumes_get = v1()
        .and(warp::path!("volumes"))
        .and(warp::get())
        .and(c())
        .and(authz())
        .then(list_volumes)
        .map(reply)
        .boxed();
    let volumes_post = v1()
        .and(warp::path!("volumes"))
        .and(warp::post())
        .and(c())
        .and(authz())
        .and(body())
        .then(create_volume)
        .map(reply)
        .boxed();
    let volume_get = v1()
        .and(warp::path!("volumes" / String))
        .and(warp::get())
        .and(c())
        .and(authz())
        .then(get_volume)
        .map(reply)
        .boxed();
    let volume_delete = v1()
        .and(warp::path!("volumes" / String))
        .and(warp::delete())
        .and(c())
        .and(authz())
        .then(delete_volume)
        .map(reply)
        .boxed();
    let volume_resize = v1()
        .and(warp::path!("volumes" / String / "resize"))
        .and(warp::post())
        .and(c())
        .and(authz())
        .and(body())
        .then(resize_volume)
        .map(reply)
        .boxed();
    let snaps_get = v1()
        .and(warp::path!("vms" / String / "snapshots"))
        .and(warp::get())
        .and(c())
        .and(authz())
        .then(list_snapshots)
        .map(reply)
        .boxed();
    let snaps_post = v1()
        .and(warp::path!("vms" / String / "snapshots"))
        .and(warp::post())
        .and(c())
        .and(authz())
        .and(body())
        .then(create_snapshot)
        .map(reply)
        .boxed();
    let snap_revert = v1()
        .and(warp::path!(
            "vms" / String / "snapshots" / String / "revert"
        ))
        .and(warp::post())
        .and(c())
        .and(authz())
        .then(revert_snapshot)
        .map(reply)
        .boxed();
    let snap_delete = v1()
        .and(warp::path!("vms" / String / "snapshots" / String))
        .and(warp::delete())
        .and(c())
        .and(authz())
        .then(delete_snapshot)
        .map(reply)
        .boxed();
    let clone_r = v1()
        .and(warp::path!("vms" / String / "clone"))
        .and(warp::post())
        .and(c())
        .and(authz())
        .and(body())
        .then(clone_vm)
        .map(reply)
        .boxed();
    pools_get
        .or(pool_get)
        .unify()
        .or(volumes_get)
        .unify()
        .or(volumes_post)
        .unify()
        .or(volume_get)
        .unify()
        .or(volume_delete)
        .unify()
        .or(volume_resize)
        .unify()
        .or(snaps_get)
        .unify()
        .or(snaps_post)
        .unify()
        .or(snap_revert)
        .unify()
        .or(snap_delete)
        .unify()
        .or(clone_r)
        .unify()
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> Vm {
        let mut spec: keel_model::VmSpec = serde_json::from_value(serde_json::json!({
            "cpus": 1, "memory": "128MiB", "power_state": "stopped",
            "disks": [{"name": "root", "source": {"type": "image", "image": "tiny"}, "qos": {"read_iops": 100}},
                      {"name": "data", "source": {"type": "empty", "size": "1GiB"}}],
            "nics": [{"name": "eth0", "network": "br0", "mac": "52:54:00:00:00:01"}]
        }))
        .unwrap();
        spec.template = true;
        Vm {
            metadata: Metadata {
                name: "base".into(),
                ..Metadata::default()
            },
            spec,
            status: Default::default(),
        }
    }

    fn vol(name: &str) -> Volume {
        Volume {
            metadata: Metadata {
                name: name.into(),
                ..Metadata::default()
            },
            spec: serde_json::from_value(serde_json::json!({"pool": "node1-local", "size": "1GiB", "qos": {"read_iops": 100}})).unwrap(),
            status: VolumeStatus {
                phase: VolumePhase::Ready,
                node: Some("node1".into()),
                owner: Some("base".into()),
                ..VolumeStatus::default()
            },
        }
    }

    #[test]
    fn a_clone_copies_every_disk_and_owns_the_copies() {
        let new = Name::new("web2").unwrap();
        let (cloned, vols) =
            clone_plan(&vm(), &[vol("base-root"), vol("base-data")], &new, true).unwrap();
        assert_eq!(cloned.metadata.name, "web2");
        assert!(!cloned.spec.template);
        assert_eq!(cloned.spec.power_state, PowerState::Running);
        assert_eq!(cloned.spec.nics[0].mac, None, "a clone gets its own MAC");
        assert_eq!(
            cloned.spec.disks[0].source,
            DiskSource::Volume {
                volume: Name::new("web2-root").unwrap()
            }
        );
        assert_eq!(
            cloned.spec.disks[1].qos, None,
            "limits travel with the volume"
        );
        assert_eq!(vols.len(), 2);
        assert_eq!(vols[1].metadata.name, "web2-data");
        assert_eq!(
            vols[1].spec.clone_of.as_ref().unwrap().as_str(),
            "base-data"
        );
        assert_eq!(vols[0].spec.qos.as_ref().unwrap().read_iops, Some(100));
        assert_eq!(vols[0].status.owner.as_deref(), Some("web2"));
        assert_eq!(vols[0].status.node.as_deref(), Some("node1"));
        let (stopped, _) = clone_plan(&vm(), &[vol("a"), vol("b")], &new, false).unwrap();
        assert_eq!(stopped.spec.power_state, PowerState::Stopped);
    }

    #[test]
    fn templates_never_start() {
        let err = check_startable(&vm()).unwrap_err();
        assert!(err.to_string().contains("template"), "{err}");
        let mut plain = vm();
        plain.spec.template = false;
        check_startable(&plain).unwrap();
    }

    #[test]
    fn only_a_stopped_vm_counts_as_stopped() {
        let mut v = vm();
        v.status.phase = VmPhase::Stopped;
        must_be_stopped(&v, "x").unwrap();
        v.spec.power_state = PowerState::Running;
        let err = must_be_stopped(&v, "reverting").unwrap_err();
        assert!(
            err.to_string().contains("keel vm stop base --wait"),
            "{err}"
        );
        v.spec.power_state = PowerState::Stopped;
        v.status.phase = VmPhase::Stopping;
        assert!(must_be_stopped(&v, "x").is_err());
    }

    #[test]
    fn routes_are_documented() {
        use utoipa::OpenApi;
        let doc = ApiDoc::openapi();
        for p in [
            "/api/v1/pools",
            "/api/v1/volumes/{name}/resize",
            "/api/v1/vms/{name}/snapshots/{snapshot}/revert",
            "/api/v1/vms/{name}/clone",
        ] {
            assert!(doc.paths.paths.contains_key(p), "{p}");
        }
    }
}
