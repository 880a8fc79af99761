//! Live migration between nodes as a `Task`, and node maintenance (evacuation).
//!
//! ```text
//!  API / maintenance ─▶ request(): checks + scheduler ─▶ Task{preparing} + vm.status.migration
//!  destination node (node_loop): image copied here (images::ensure_local), empty qcow2
//!      overlays of the VM's disks ─▶ vm.status.migration.destination_pool, task destination-ready
//!  source node (node_loop, source_step decides, pure):
//!      ready ─▶ libvirt peer-to-peer live migration with copy storage (spawn_blocking)
//!      every round: job progress ─▶ task bytes/percent; spec.cancel ─▶ abort the libvirt job
//!      done ─▶ source disks removed, vm.status.node = destination, task succeeded
//!      failed / cancelled ─▶ the VM stays (running) on the source, task failed / cancelled,
//!      and the destination removes what it prepared
//!  leader (maintenance_loop): nodes in maintenance ─▶ scheduler::evacuate ─▶ one migration
//!      at a time ─▶ node status.maintenance (evacuating, blocked, empty)
//! ```
//! While `vm.status.migration` is set the VM's node reconciler leaves it alone, and the
//! destination does not touch it (it is not bound there), so the two never fight; the
//! destination also counts the incoming domain as managed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_model::{
    DiskSource, ImageFormat, MaintenancePhase, MaintenanceStatus, Name, ObjectRef, Percent,
    PowerState, ResourceKind, Task, TaskKind, TaskPhase, TaskSpec, TaskStatus, Vm, VmMigration,
    VmPhase,
};
use keel_store::{Record, Request, Response};
use keel_virt::{DomainState, Hypervisor, MigrateOptions};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::compute::{self, vm_of, VMS};
use crate::error::ApiError;
use crate::host::Host;
use crate::member::{decode, encode, kinds, node_of, Member};
use crate::scheduler::{self, CpuOvercommit, Group, NodeCapacity, PlacedVm, VmPlacementRequest};

/// Store kind of tasks.
pub const TASKS: &str = "tasks";
/// Setting: longest pause of the final switch-over, in milliseconds (default 100).
pub const MAX_DOWNTIME_SETTING: &str = "migration.max_downtime_ms";
/// Setting: how a node's libvirt reaches its peers' (`tls`, the default, or `tcp` where the
/// network itself is private, as in the dev cluster).
pub const TRANSPORT_SETTING: &str = "migration.transport";
/// Setting: cap on a migration's bandwidth in MiB/s (1 to 100000); unlimited when absent.
pub const BANDWIDTH_SETTING: &str = "migration.bandwidth_mib";
/// Default max downtime.
pub const DEFAULT_MAX_DOWNTIME: Duration = Duration::from_millis(100);

/// Steps of a migration task (`status.step`).
pub mod step {
    /// The destination prepares the disks.
    pub const PREPARING: &str = "preparing";
    /// The destination is ready.
    pub const DESTINATION_READY: &str = "destination-ready";
    /// The destination could not prepare; the message says why.
    pub const DESTINATION_FAILED: &str = "destination-failed";
    /// libvirt moves memory and disks.
    pub const TRANSFERRING: &str = "transferring";
    /// Finished.
    pub const DONE: &str = "done";
}

/// The Task resource of a record.
pub fn task_of(rec: &Record) -> Result<Task, ApiError> {
    let mut t: Task = decode(rec)?;
    t.metadata.name = rec.name.clone();
    t.metadata.uid = rec.uid.clone();
    t.metadata.version = rec.version;
    t.metadata.created = rec.created.clone();
    Ok(t)
}

fn invalid_state(message: String) -> ApiError {
    ApiError::Conflict {
        code: "invalid_state",
        message,
    }
}

/// Read-modify-write of a task with compare-and-set, retried on conflicts.
pub async fn update_task(m: &Member, name: &str, f: impl Fn(&mut Task)) -> Result<Task, ApiError> {
    crate::member::update_value(m, TASKS, "task", name, task_of, f).await
}

struct Cluster {
    nodes: Vec<keel_model::Node>,
    capacity: Vec<NodeCapacity>,
    placed: Vec<PlacedVm>,
    groups: Vec<Group>,
    ratio: CpuOvercommit,
}

fn cluster(m: &Member) -> Result<Cluster, ApiError> {
    let nodes: Vec<keel_model::Node> = m
        .list(kinds::NODES)?
        .iter()
        .filter_map(|r| node_of(r).ok())
        .collect();
    let capacity = nodes
        .iter()
        .map(|n| {
            let mut c = NodeCapacity::from_node(n, u64::MAX / 4);
            c.cordoned = n.spec.cordoned || n.spec.maintenance;
            c
        })
        .collect();
    let placed = m
        .list(VMS)?
        .iter()
        .filter_map(|r| vm_of(r).ok())
        .filter_map(|v| PlacedVm::from_vm(&v))
        .collect();
    let groups = m
        .list(compute::GROUPS)?
        .iter()
        .filter_map(|r| compute::group_of(r).ok())
        .map(|g| Group::from(&g))
        .collect();
    let ratio = CpuOvercommit::from_setting(
        m.get(kinds::SETTINGS, scheduler::CPU_OVERCOMMIT_SETTING)?
            .as_ref()
            .and_then(|r| r.value.get("value")),
    )
    .unwrap_or(CpuOvercommit::DEFAULT);
    Ok(Cluster {
        nodes,
        capacity,
        placed,
        groups,
        ratio,
    })
}

/// Checks a migration of VM `name` (to `to`, or where the scheduler puts it) and starts
/// it: creates its task and marks the VM migrating, in one atomic write. Refusals change
/// nothing: 404 for an unknown VM, 400 (field `to`) for a destination that is unknown, the
/// VM's own node, or cannot take the VM (cordoned, in maintenance, not ready, full, against
/// a hard rule), 409 for a VM that cannot move now.
pub async fn request(m: &Member, name: &str, to: Option<&Name>) -> Result<Task, ApiError> {
    // The VM's node and samplers write its status all the time: a compare-and-set that lost
    // to one of them is decided again from the new record, never bounced to the user.
    let mut tries = 0;
    loop {
        match request_once(m, name, to).await {
            Err(ApiError::Conflict {
                code: "version_conflict",
                ..
            }) if tries < 8 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20 * tries)).await;
            }
            other => return other,
        }
    }
}

async fn request_once(m: &Member, name: &str, to: Option<&Name>) -> Result<Task, ApiError> {
    m.linearizable().await?;
    let rec = m
        .get(VMS, name)?
        .ok_or_else(|| ApiError::NotFound(format!("VM {name} does not exist")))?;
    let vm = vm_of(&rec)?;
    let source = vm
        .status
        .node
        .clone()
        .ok_or_else(|| invalid_state(format!("VM {name} is not placed on a node yet")))?;
    if let Some(mg) = &vm.status.migration {
        return Err(invalid_state(format!(
            "VM {name} is already migrating to {} (task {})",
            mg.destination, mg.task
        )));
    }
    if vm.metadata.deletion_requested.is_some() {
        return Err(invalid_state(format!("VM {name} is being deleted")));
    }
    let offline = match (vm.spec.power_state, vm.status.phase) {
        (PowerState::Running | PowerState::Paused, VmPhase::Running) => false,
        (PowerState::Stopped, VmPhase::Stopped) => true,
        (_, phase) => {
            return Err(invalid_state(format!(
                "VM {name} is {phase:?}; only a running or a stopped VM can move"
            )))
        }
    };
    if vm
        .spec
        .disks
        .iter()
        .any(|d| matches!(d.source, DiskSource::Volume { .. }))
    {
        return Err(invalid_state(format!(
            "VM {name} attaches an existing volume; moving those is not supported yet"
        )));
    }
    let c = cluster(m)?;
    let mut req = VmPlacementRequest::from_vm(&vm);
    if let Some(pin) = &req.node {
        if to.map(|t| t.as_str()) != Some(pin.as_str()) {
            return Err(invalid_state(format!(
                "VM {name} is pinned to {pin} (spec.placement.node); change the pin to move it"
            )));
        }
    }
    let destination = match to {
        Some(t) => {
            let field = Some("to".to_string());
            if !c.nodes.iter().any(|n| n.metadata.name == t.as_str()) {
                return Err(ApiError::bad(format!("node {t} does not exist"), field));
            }
            if t.as_str() == source {
                return Err(ApiError::bad(
                    format!("VM {name} already runs on {t}; name another node"),
                    field,
                ));
            }
            req.node = Some(t.to_string());
            scheduler::place(&req, &c.capacity, &c.placed, &c.groups, c.ratio)
                .map_err(|u| ApiError::bad(format!("cannot migrate to {t}: {u}"), field))?;
            t.to_string()
        }
        None => {
            let mut capacity = c.capacity.clone();
            for n in capacity.iter_mut().filter(|n| n.name == source) {
                n.cordoned = true;
            }
            scheduler::place(&req, &capacity, &c.placed, &c.groups, c.ratio)
                .map_err(|u| invalid_state(format!("no node can take VM {name}: {u}")))?
                .node
        }
    };
    let short: String = name.chars().take(40).collect();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let task_name = format!("migrate-{}-{}", short.trim_end_matches('-'), &suffix[..8]);
    let now = crate::now_rfc3339();
    let task = Task {
        metadata: keel_model::Metadata {
            name: task_name.clone(),
            ..Default::default()
        },
        spec: TaskSpec {
            kind: TaskKind::VmMigrate,
            target: ObjectRef {
                kind: ResourceKind::Vm,
                name: Name::new(name)?,
            },
            destination: Some(Name::new(&destination)?),
            cancel: false,
        },
        status: TaskStatus {
            phase: TaskPhase::Pending,
            message: format!("migrating {name} from {source} to {destination}"),
            node: Some(source.clone()),
            started: Some(now),
            step: step::PREPARING.into(),
            ..Default::default()
        },
    };
    let mut moved = vm.clone();
    moved.status.migration = Some(VmMigration {
        task: task_name.clone(),
        destination: destination.clone(),
        offline,
        destination_pool: None,
    });
    if !offline {
        moved.status.phase = VmPhase::Migrating;
    }
    let res = m
        .write(Request::Batch(vec![
            Request::Create {
                kind: TASKS.into(),
                name: task_name.clone(),
                value: encode(&task)?,
                idempotency_key: None,
            },
            Request::Put {
                kind: VMS.into(),
                name: name.into(),
                value: encode(&moved)?,
                expected_version: Some(rec.version),
            },
        ]))
        .await?;
    match res {
        Response::Batch(out) => {
            let t = out
                .into_iter()
                .find_map(|r| match r {
                    Response::Written(rec) if rec.kind == TASKS => Some(task_of(&rec)),
                    _ => None,
                })
                .ok_or_else(|| ApiError::Internal("the task was not written".into()))??;
            info!(vm = %name, from = %source, to = %destination, task = %task_name, offline, "migration requested");
            Ok(t)
        }
        Response::Failed(keel_store::ApplyFailure::VersionConflict { .. }) => {
            Err(ApiError::Conflict {
                code: "version_conflict",
                message: format!("VM {name} changed meanwhile; retry"),
            })
        }
        Response::Failed(f) => Err(crate::member::apply_err(f)),
        other => Err(ApiError::Internal(format!(
            "unexpected store answer {other:?}"
        ))),
    }
}

/// Asks a running task to stop.
pub async fn cancel(m: &Member, id: &str) -> Result<Task, ApiError> {
    m.linearizable().await?;
    let rec = m
        .get(TASKS, id)?
        .ok_or_else(|| ApiError::NotFound(format!("task {id} does not exist")))?;
    let t = task_of(&rec)?;
    if t.status.phase.is_finished() {
        return Err(invalid_state(format!(
            "task {id} has already finished ({:?})",
            t.status.phase
        )));
    }
    let t = update_task(m, id, |t| t.spec.cancel = true).await?;
    info!(task = %id, "task cancel requested");
    Ok(t)
}

/// What the source node does about a migration this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceAction {
    /// Nothing (finished, or not the source's turn).
    Nothing,
    /// Wait for the destination.
    Wait,
    /// Start the libvirt migration.
    Transfer,
    /// Report the running migration's progress.
    Progress,
    /// Abort the running libvirt migration (cancel).
    Abort,
    /// The VM is on the destination: record it there and finish.
    Complete,
    /// Finish the task with this phase and message; the VM stays here.
    Finish(TaskPhase, String),
    /// The domain left and libvirt's answer was lost (keeld restarted): look on the
    /// destination.
    CheckDestination,
}

/// What the source knows about a migration (all from the store, its libvirt and its memory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceView {
    /// The task's phase.
    pub phase: TaskPhase,
    /// The task's step.
    pub step: String,
    /// Cancel asked.
    pub cancel: bool,
    /// A libvirt migration call of this process runs for it.
    pub in_flight: bool,
    /// The VM is already bound to the destination.
    pub bound_to_destination: bool,
    /// The VM still records this task as its migration.
    pub migrating_with_task: bool,
    /// The domain's state here, if it is here.
    pub domain_here: Option<DomainState>,
    /// What the destination said when it failed to prepare.
    pub destination_failed: Option<String>,
    /// The VM is stopped: its domain is started paused for the move.
    pub offline: bool,
}

/// Decides the source's next move (pure; see [`SourceAction`]).
pub fn source_step(v: &SourceView) -> SourceAction {
    use SourceAction::*;
    if v.phase.is_finished() {
        return Nothing;
    }
    if v.bound_to_destination {
        return Complete;
    }
    if v.in_flight {
        return if v.cancel { Abort } else { Progress };
    }
    if !v.migrating_with_task {
        return Finish(
            TaskPhase::Failed,
            "the VM no longer records this migration".into(),
        );
    }
    if v.cancel {
        return Finish(
            TaskPhase::Cancelled,
            "cancelled; the VM stays where it was".into(),
        );
    }
    if let Some(why) = &v.destination_failed {
        return Finish(
            TaskPhase::Failed,
            format!("the destination could not prepare: {why}"),
        );
    }
    match v.domain_here {
        None if v.step == step::TRANSFERRING => CheckDestination,
        None => Finish(
            TaskPhase::Failed,
            "the VM's domain is not on its node".into(),
        ),
        Some(_) if v.step == step::TRANSFERRING => Finish(
            TaskPhase::Failed,
            "the migration was interrupted (keeld restarted); the VM stays where it was".into(),
        ),
        Some(_) if v.step != step::DESTINATION_READY => Wait,
        Some(DomainState::Running | DomainState::Paused) => Transfer,
        Some(DomainState::Shutoff) if v.offline => Transfer,
        Some(state) => Finish(
            TaskPhase::Failed,
            format!("the VM's domain is {state}, not running"),
        ),
    }
}

/// A node's maintenance status from what is left on it (pure).
pub fn maintenance_status(remaining: u32, migrating: usize, stuck: &[String]) -> MaintenanceStatus {
    if remaining == 0 {
        return MaintenanceStatus {
            phase: MaintenancePhase::Empty,
            vms_remaining: 0,
            message: "no VM is bound to the node".into(),
        };
    }
    if migrating == 0 && !stuck.is_empty() && stuck.len() as u32 >= remaining {
        return MaintenanceStatus {
            phase: MaintenancePhase::Blocked,
            vms_remaining: remaining,
            message: stuck.join("; "),
        };
    }
    let mut message = format!("{remaining} VM(s) left, {migrating} moving");
    if !stuck.is_empty() {
        message.push_str(&format!("; {}", stuck.join("; ")));
    }
    MaintenanceStatus {
        phase: MaintenancePhase::Evacuating,
        vms_remaining: remaining,
        message,
    }
}

fn setting(m: &Member, key: &str) -> Option<serde_json::Value> {
    m.get(kinds::SETTINGS, key)
        .ok()
        .flatten()
        .and_then(|r| r.value.get("value").cloned())
}

/// The max downtime setting (milliseconds, 1 to 60000), else the default.
pub fn max_downtime(value: Option<&serde_json::Value>) -> Duration {
    value
        .and_then(|v| v.as_u64())
        .filter(|ms| (1..=60_000).contains(ms))
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_MAX_DOWNTIME)
}

/// The bandwidth setting (MiB/s, 1 to 100000), else none (unlimited).
pub fn bandwidth(value: Option<&serde_json::Value>) -> Option<u64> {
    value
        .and_then(|v| v.as_u64())
        .filter(|b| (1..=100_000).contains(b))
}

/// The libvirt URI a node uses for its peer at `address`, per the transport setting.
pub fn peer_uri(transport: Option<&serde_json::Value>, address: &str) -> String {
    let t = match transport.and_then(|v| v.as_str()) {
        Some("tcp") => "tcp",
        _ => "tls",
    };
    format!("qemu+{t}://{address}/system")
}

/// The file of disk `disk` of VM `vm` on this node: the qcow2 file of the volume the VM
/// owns for it (as `crate::storage` names it).
fn disk_path(host: &Host, vm: &str, disk: &str) -> std::path::PathBuf {
    match (Name::new(vm), Name::new(disk)) {
        (Ok(v), Ok(d)) => host
            .pool
            .volume_file(keel_model::owned_volume_name(&v, &d).as_str(), false),
        _ => host.pool.volume(vm, disk),
    }
}

/// The volumes VM `vm` owns now live in `destination`'s pool.
async fn move_volumes(m: &Member, vm: &str, destination: &str) -> Result<(), ApiError> {
    let pool = keel_model::local_pool_name(&Name::new(destination)?);
    for rec in m.list(crate::storage::VOLUMES)? {
        let Ok(vol) = crate::storage::volume_of(&rec) else {
            continue;
        };
        if vol.status.owner.as_deref() != Some(vm) {
            continue;
        }
        let mut moved = vol.clone();
        moved.spec.pool = pool.clone();
        moved.status.node = Some(destination.to_string());
        if moved == vol {
            continue;
        }
        m.write_ok(Request::Put {
            kind: crate::storage::VOLUMES.into(),
            name: rec.name.clone(),
            value: encode(&moved)?,
            expected_version: Some(rec.version),
        })
        .await?;
    }
    Ok(())
}

/// This node's pool directory (the parent of its images directory).
fn pool_root(host: &Host) -> std::path::PathBuf {
    let images = host.pool.images_dir();
    images
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or(images)
}

struct InFlight {
    handle: tokio::task::JoinHandle<Result<(), String>>,
    started: Instant,
    /// libvirt accepted the abort of this transfer.
    aborted: bool,
    /// When an abort was last asked for.
    last_abort: Option<Instant>,
}

/// How soon an abort libvirt refused (no job yet) is asked for again.
const ABORT_RETRY: Duration = Duration::from_millis(500);

#[derive(Default)]
struct NodeState {
    transfers: BTreeMap<String, InFlight>,
    /// VMs whose destination-side files a task of this node is working on (preparing them
    /// for a migration, or removing what a migration that did not happen left): one at a
    /// time per VM, so a clean-up never deletes what the next preparation made.
    busy: BTreeSet<String>,
    last_progress: BTreeMap<String, Instant>,
}

/// Every node: drives the migrations it is the source of and prepares those it is the
/// destination of.
pub async fn node_loop(m: Arc<Member>, host: Arc<Host>, shutdown: watch::Receiver<bool>) {
    let state = Arc::new(Mutex::new(NodeState::default()));
    crate::wake::reconcile_loop(
        m,
        &[TASKS, VMS],
        Duration::from_millis(500),
        crate::wake::Runs::Everywhere,
        "migration",
        shutdown,
        |m| {
            let (host, state) = (host.clone(), state.clone());
            async move {
                let Some((hv, _)) = host.hv.get().cloned() else {
                    return Ok(());
                };
                node_round(&m, &host, &hv, &state).await
            }
        },
    )
    .await
}

fn lock(state: &Mutex<NodeState>) -> std::sync::MutexGuard<'_, NodeState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

async fn node_round(
    m: &Arc<Member>,
    host: &Arc<Host>,
    hv: &Arc<dyn Hypervisor>,
    state: &Arc<Mutex<NodeState>>,
) -> Result<(), ApiError> {
    let me = m.identity.name.clone();
    let tasks: Vec<Task> = m
        .list(TASKS)?
        .iter()
        .filter_map(|r| task_of(r).ok())
        .filter(|t| t.spec.kind == TaskKind::VmMigrate)
        .collect();
    // Finished transfers first.
    let done: Vec<(String, InFlight)> = {
        let mut st = lock(state);
        let names: Vec<String> = st
            .transfers
            .iter()
            .filter(|(_, f)| f.handle.is_finished())
            .map(|(n, _)| n.clone())
            .collect();
        names
            .into_iter()
            .filter_map(|n| st.transfers.remove(&n).map(|f| (n, f)))
            .collect()
    };
    let mut ended = BTreeSet::new();
    for (name, f) in done {
        ended.insert(name.clone());
        let result = f.handle.await.unwrap_or_else(|e| Err(e.to_string()));
        if let Some(task) = tasks.iter().find(|t| t.metadata.name == name) {
            let span = tracing::info_span!("task", name = %name, kind = "vm-migrate");
            let _g = span.enter();
            match result {
                Ok(()) => {
                    info!(elapsed = ?f.started.elapsed(), "live migration finished");
                    complete(m, host, task).await?;
                }
                Err(e) => {
                    let (phase, msg) = if task.spec.cancel || f.aborted {
                        (
                            TaskPhase::Cancelled,
                            "cancelled; the VM stays where it was".to_string(),
                        )
                    } else {
                        warn!(error = %e, "live migration failed");
                        (TaskPhase::Failed, format!("live migration failed: {e}"))
                    };
                    finish(m, task, phase, msg).await?;
                }
            }
        }
    }
    for task in tasks
        .iter()
        .filter(|t| !t.status.phase.is_finished() && !ended.contains(&t.metadata.name))
    {
        let name = task.metadata.name.clone();
        let vm_name = task.spec.target.name.to_string();
        let vm = m.get(VMS, &vm_name)?.and_then(|r| vm_of(&r).ok());
        let destination = task
            .spec
            .destination
            .as_ref()
            .map(|d| d.to_string())
            .unwrap_or_default();
        if task.status.node.as_deref() == Some(me.as_str()) {
            let span =
                tracing::info_span!("task", name = %name, kind = "vm-migrate", vm = %vm_name);
            let _g = span.enter();
            source_round(m, host, hv, state, task, vm.as_ref(), &destination).await?;
        } else if destination == me
            && task.status.step == step::PREPARING
            && !task.spec.cancel
            // One preparation or clean-up per VM at a time: a cancelled migration's may
            // still run.
            && lock(state).busy.insert(vm_name.clone())
        {
            if let Some(vm) = vm {
                let (m, host, state) = (m.clone(), host.clone(), state.clone());
                let task = task.clone();
                tokio::spawn(async move {
                    let span = tracing::info_span!("task", name = %task.metadata.name, kind = "vm-migrate", role = "destination");
                    let _g = span.enter();
                    let res = prepare(&m, &host, &task, &vm).await;
                    let (st, msg) = match res {
                        Ok(()) => (step::DESTINATION_READY, String::new()),
                        Err(e) => {
                            warn!(error = %e, "preparing the destination failed");
                            (step::DESTINATION_FAILED, e)
                        }
                    };
                    let r = update_task(&m, &task.metadata.name, |t| {
                        if t.status.step == step::PREPARING {
                            t.status.step = st.into();
                            if !msg.is_empty() {
                                t.status.message = msg.clone();
                            }
                        }
                    })
                    .await;
                    if let Err(e) = r {
                        warn!(error = %e, "recording the destination's readiness failed");
                    }
                    lock(&state).busy.remove(task.spec.target.name.as_str());
                });
            } else {
                lock(state).busy.remove(&vm_name);
            }
        }
    }
    // The destination removes what it prepared for migrations that did not happen.
    let mut stale = BTreeSet::new();
    for task in tasks.iter().filter(|t| {
        matches!(t.status.phase, TaskPhase::Failed | TaskPhase::Cancelled)
            && t.spec.destination.as_ref().map(|d| d.as_str()) == Some(me.as_str())
    }) {
        stale.insert(task.spec.target.name.to_string());
    }
    for vm_name in stale {
        let prepared: Vec<std::path::PathBuf> =
            match m.get(VMS, &vm_name)?.and_then(|r| vm_of(&r).ok()) {
                Some(vm) => vm
                    .spec
                    .disks
                    .iter()
                    .map(|d| disk_path(host, &vm_name, d.name.as_str()))
                    .filter(|p| p.exists())
                    .collect(),
                None => Vec::new(),
            };
        if prepared.is_empty() || !lock(state).busy.insert(vm_name.clone()) {
            continue;
        }
        // Decided under the VM's busy mark, from the store as it is now: nothing of this
        // node may prepare for the VM meanwhile, and a newer migration here keeps its files.
        let keep = match m.get(VMS, &vm_name)?.and_then(|r| vm_of(&r).ok()) {
            Some(vm) => {
                vm.status.node.as_deref() == Some(me.as_str())
                    || vm
                        .status
                        .migration
                        .as_ref()
                        .is_some_and(|mg| mg.destination == me)
            }
            None => false,
        };
        if !keep {
            if let Some(vm) = m.get(VMS, &vm_name)?.and_then(|r| vm_of(&r).ok()) {
                if let Err(e) = crate::cloudinit::remove_files(host, &vm.metadata.uid) {
                    warn!(vm = %vm_name, error = %e, "could not remove a seed or NVRAM prepared for a migration that did not happen");
                }
            }
            for p in &prepared {
                match std::fs::remove_file(p) {
                    Ok(()) => {
                        info!(vm = %vm_name, path = %p.display(), "removed a disk prepared for a migration that did not happen")
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        warn!(vm = %vm_name, path = %p.display(), error = %e, "could not remove a disk prepared for a migration that did not happen")
                    }
                }
            }
        }
        lock(state).busy.remove(&vm_name);
    }
    Ok(())
}

async fn source_round(
    m: &Arc<Member>,
    host: &Arc<Host>,
    hv: &Arc<dyn Hypervisor>,
    state: &Arc<Mutex<NodeState>>,
    task: &Task,
    vm: Option<&Vm>,
    destination: &str,
) -> Result<(), ApiError> {
    let name = task.metadata.name.clone();
    let vm_name = task.spec.target.name.to_string();
    let h = hv.clone();
    let n = vm_name.clone();
    let domain_here = tokio::task::spawn_blocking(move || h.domain(&n).ok().map(|d| d.state))
        .await
        .ok()
        .flatten();
    let view = SourceView {
        phase: task.status.phase,
        step: task.status.step.clone(),
        cancel: task.spec.cancel,
        in_flight: lock(state).transfers.contains_key(&name),
        bound_to_destination: vm.is_some_and(|v| v.status.node.as_deref() == Some(destination)),
        migrating_with_task: vm.is_some_and(|v| {
            v.status
                .migration
                .as_ref()
                .is_some_and(|mg| mg.task == name)
        }),
        domain_here,
        destination_failed: (task.status.step == step::DESTINATION_FAILED)
            .then(|| task.status.message.clone()),
        offline: vm.is_some_and(|v| v.status.migration.as_ref().is_some_and(|mg| mg.offline)),
    };
    let action = source_step(&view);
    match action {
        SourceAction::Nothing => {}
        SourceAction::Wait => {
            if task.status.phase == TaskPhase::Pending {
                update_task(m, &name, |t| {
                    t.status.phase = TaskPhase::Running;
                })
                .await?;
            }
        }
        SourceAction::Transfer => {
            let Some(vm) = vm else { return Ok(()) };
            let dest_node = m
                .get(kinds::NODES, destination)?
                .map(|r| node_of(&r))
                .transpose()?
                .ok_or_else(|| ApiError::Internal(format!("node {destination} is gone")))?;
            let address = dest_node.status.address.clone();
            let pool = vm
                .status
                .migration
                .as_ref()
                .and_then(|mg| mg.destination_pool.clone())
                .ok_or_else(|| ApiError::Internal("the destination named no pool".into()))?;
            let mut options =
                MigrateOptions::to(peer_uri(setting(m, TRANSPORT_SETTING).as_ref(), &address));
            options.migrate_uri = Some(format!("tcp://{address}"));
            options.copy_storage = !vm.spec.disks.is_empty();
            options.max_downtime = Some(max_downtime(setting(m, MAX_DOWNTIME_SETTING).as_ref()));
            options.bandwidth_mib = bandwidth(setting(m, BANDWIDTH_SETTING).as_ref());
            if std::path::Path::new(&pool) != pool_root(host) {
                options.path_map = vec![(pool_root(host), pool.into())];
            }
            update_task(m, &name, |t| {
                t.status.phase = TaskPhase::Running;
                t.status.step = step::TRANSFERRING.into();
            })
            .await?;
            info!(dest = %options.dest_uri, max_downtime = ?options.max_downtime, "live migration starting");
            let h = hv.clone();
            let n = vm_name.clone();
            let start_paused = domain_here == Some(DomainState::Shutoff);
            options.paused = start_paused;
            let handle = tokio::task::spawn_blocking(move || {
                if start_paused {
                    // A stopped VM moves started paused: its vCPUs never run.
                    h.start_paused(&n).map_err(|e| chain(&e))?;
                }
                h.migrate(&n, &options).map_err(|e| chain(&e))
            });
            lock(state).transfers.insert(
                name.clone(),
                InFlight {
                    handle,
                    started: Instant::now(),
                    aborted: false,
                    last_abort: None,
                },
            );
        }
        SourceAction::Progress => {
            let due = lock(state)
                .last_progress
                .get(&name)
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(900));
            if !due {
                return Ok(());
            }
            let h = hv.clone();
            let n = vm_name.clone();
            let progress = tokio::task::spawn_blocking(move || h.job_progress(&n))
                .await
                .ok()
                .and_then(|r| r.ok())
                .flatten();
            if let Some(p) = progress {
                lock(state)
                    .last_progress
                    .insert(name.clone(), Instant::now());
                // While libvirt mirrors the disks (copy storage) only the disk counters move;
                // once memory goes too, the data counters cover both.
                let (done, total) = (
                    p.data_processed.max(p.disk_processed),
                    p.data_total.max(p.disk_total),
                );
                let percent = Percent::of(done, total);
                update_task(m, &name, |t| {
                    t.status.bytes_done = done;
                    t.status.bytes_total = total;
                    // Never backwards: the total grows while dirtied memory is re-sent.
                    t.status.progress = t.status.progress.max(percent.min(Percent::of(99, 100)));
                })
                .await?;
            }
        }
        SourceAction::Abort => {
            // Asked until libvirt takes it: right after the transfer step is written the
            // migration job may not exist yet, and an abort then fails with "no job".
            let due = lock(state).transfers.get_mut(&name).is_some_and(|f| {
                !f.aborted && f.last_abort.is_none_or(|t| t.elapsed() >= ABORT_RETRY)
            });
            if due {
                let h = hv.clone();
                let n = vm_name.clone();
                let r = tokio::task::spawn_blocking(move || h.abort_job(&n))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                info!(result = ?r, "live migration abort requested");
                if let Some(f) = lock(state).transfers.get_mut(&name) {
                    f.last_abort = Some(Instant::now());
                    f.aborted = r.is_ok();
                }
            }
        }
        SourceAction::Complete => complete(m, host, task).await?,
        SourceAction::Finish(phase, msg) => finish(m, task, phase, msg).await?,
        SourceAction::CheckDestination => {
            let dest_node = m
                .get(kinds::NODES, destination)?
                .map(|r| node_of(&r))
                .transpose()?;
            let uri = dest_node
                .map(|n| peer_uri(setting(m, TRANSPORT_SETTING).as_ref(), &n.status.address));
            let n = vm_name.clone();
            let there = match uri {
                Some(uri) => tokio::task::spawn_blocking(move || {
                    keel_virt::Libvirt::connect(&uri)
                        .and_then(|lv| lv.domain(&n))
                        .map(|d| d.state == DomainState::Running)
                        .unwrap_or(false)
                })
                .await
                .unwrap_or(false),
                None => false,
            };
            if there {
                complete(m, host, task).await?;
            } else {
                finish(
                    m,
                    task,
                    TaskPhase::Failed,
                    "the domain left this node but does not run on the destination".into(),
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// The destination's part: the image here and empty overlays for the VM's disks (libvirt
/// copies their contents), then the pool's directory recorded on the VM.
async fn prepare(m: &Member, host: &Host, task: &Task, vm: &Vm) -> Result<(), String> {
    let name = vm.metadata.name.clone();
    // The incoming domain's serial log (and QEMU's own) go there.
    crate::lifecycle::serial_log_path(&name);
    for d in &vm.spec.disks {
        let path = disk_path(host, &name, d.name.as_str());
        // Never what an earlier, cancelled attempt left: libvirt copies only what the source
        // has allocated, so a stale overlay could show old blocks. create_overlay replaces it.
        let (backing, size) = match &d.source {
            DiskSource::Image { image, size } => {
                let (p, f) = crate::images::ensure_local(m, host, image.as_str()).await?;
                (Some((p, f)), size.map(|s| s.get()))
            }
            DiskSource::Empty { size } => (None, Some(size.get())),
            DiskSource::Volume { .. } => return Err("volume disks do not move yet".into()),
        };
        create_overlay(&path, backing, size).await?;
    }
    // The ISO and the cloud-init seed are read-only CD-ROMs libvirt does not copy: the
    // destination makes its own (same paths under its pool); UEFI NVRAM starts from the
    // template there.
    crate::cloudinit::prepare(m, host, vm).await?;
    let pool = pool_root(host).to_string_lossy().to_string();
    let task_name = task.metadata.name.clone();
    compute::update(m, &name, |v| {
        if let Some(mg) = v.status.migration.as_mut() {
            if mg.task == task_name {
                mg.destination_pool = Some(pool.clone());
            }
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    info!(vm = %name, "destination ready for the migration");
    Ok(())
}

async fn create_overlay(
    path: &std::path::Path,
    backing: Option<(std::path::PathBuf, ImageFormat)>,
    size: Option<u64>,
) -> Result<(), String> {
    let tmp = path.with_extension("creating");
    let mut cmd = tokio::process::Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2"]);
    if let Some((image, format)) = &backing {
        let fmt = match format {
            ImageFormat::Qcow2 => "qcow2",
            _ => "raw",
        };
        cmd.arg("-F").arg(fmt).arg("-b").arg(image);
    }
    cmd.arg(&tmp);
    if let Some(s) = size {
        cmd.arg(s.to_string());
    }
    let out = cmd
        .output()
        .await
        .map_err(|e| format!("running qemu-img: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "qemu-img create: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}

/// The VM runs on the destination: the source's disks go, the VM is bound there, the task
/// succeeds (in that order, so a crash in between is finished by the next round).
async fn complete(m: &Member, host: &Host, task: &Task) -> Result<(), ApiError> {
    let vm_name = task.spec.target.name.to_string();
    let destination = task
        .spec
        .destination
        .as_ref()
        .map(|d| d.to_string())
        .unwrap_or_default();
    let me = m.identity.name.clone();
    if let Some(vm) = m.get(VMS, &vm_name)?.and_then(|r| vm_of(&r).ok()) {
        if vm.status.node.as_deref() == Some(me.as_str()) {
            for d in &vm.spec.disks {
                let _ = std::fs::remove_file(disk_path(host, &vm_name, d.name.as_str()));
            }
            // The seed and NVRAM went with the VM too (crate::cloudinit).
            if let Err(e) = crate::cloudinit::remove_files(host, &vm.metadata.uid) {
                warn!(vm = %vm_name, error = %e, "removing the moved VM's seed and NVRAM here failed");
            }
        }
    }
    move_volumes(m, &vm_name, &destination).await?;
    let task_name = task.metadata.name.clone();
    let dest = destination.clone();
    compute::update(m, &vm_name, |v| {
        if v.status
            .migration
            .as_ref()
            .is_some_and(|mg| mg.task == task_name)
        {
            let offline = v.status.migration.as_ref().is_some_and(|mg| mg.offline);
            v.status.node = Some(dest.clone());
            v.status.migration = None;
            v.status.phase = if offline {
                VmPhase::Stopped
            } else {
                VmPhase::Running
            };
        }
    })
    .await?;
    let now = crate::now_rfc3339();
    let source = task.status.node.clone().unwrap_or_default();
    update_task(m, &task.metadata.name, |t| {
        t.status.phase = TaskPhase::Succeeded;
        t.status.progress = Percent::DONE;
        t.status.step = step::DONE.into();
        t.status.message = format!("{vm_name} moved from {source} to {destination}");
        t.status.finished = Some(now.clone());
    })
    .await?;
    info!(vm = %vm_name, to = %destination, "VM migrated");
    Ok(())
}

/// The migration did not happen: the VM stays here, the task ends.
async fn finish(
    m: &Member,
    task: &Task,
    phase: TaskPhase,
    message: String,
) -> Result<(), ApiError> {
    let vm_name = task.spec.target.name.to_string();
    let task_name = task.metadata.name.clone();
    let res = compute::update(m, &vm_name, |v| {
        if v.status
            .migration
            .as_ref()
            .is_some_and(|mg| mg.task == task_name)
        {
            let offline = v.status.migration.as_ref().is_some_and(|mg| mg.offline);
            v.status.migration = None;
            if !offline && v.status.phase == VmPhase::Migrating {
                v.status.phase = VmPhase::Running;
            }
        }
    })
    .await;
    match res {
        Ok(_) | Err(ApiError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    let now = crate::now_rfc3339();
    update_task(m, &task.metadata.name, |t| {
        t.status.phase = phase;
        t.status.message = message.clone();
        t.status.finished = Some(now.clone());
    })
    .await?;
    info!(vm = %vm_name, ?phase, %message, "migration ended without moving the VM");
    Ok(())
}

/// Leader: empties nodes in maintenance, one live migration at a time per node.
pub async fn maintenance_loop(m: Arc<Member>, shutdown: watch::Receiver<bool>) {
    crate::wake::reconcile_loop(
        m,
        &[VMS, TASKS, kinds::NODES],
        Duration::from_secs(1),
        crate::wake::Runs::OnLeader,
        "maintenance",
        shutdown,
        |m| async move { maintenance_round(&m).await },
    )
    .await
}

async fn maintenance_round(m: &Member) -> Result<(), ApiError> {
    let c = cluster(m)?;
    let draining: Vec<String> = c
        .nodes
        .iter()
        .filter(|n| n.spec.maintenance)
        .map(|n| n.metadata.name.clone())
        .collect();
    if draining.is_empty() {
        return Ok(());
    }
    let vms: Vec<Vm> = m.list(VMS)?.iter().filter_map(|r| vm_of(r).ok()).collect();
    let tasks: Vec<Task> = m
        .list(TASKS)?
        .iter()
        .filter_map(|r| task_of(r).ok())
        .collect();
    for node in draining {
        let span = tracing::info_span!("maintenance", node = %node);
        let _g = span.enter();
        let on: Vec<&Vm> = vms
            .iter()
            .filter(|v| v.status.node.as_deref() == Some(node.as_str()))
            .collect();
        let migrating = on.iter().filter(|v| v.status.migration.is_some()).count();
        let mut stuck = Vec::new();
        if migrating == 0 {
            // Recently failed moves wait a minute before they are tried again.
            let recently_failed = |vm: &str| {
                tasks.iter().any(|t| {
                    t.spec.target.name.as_str() == vm
                        && t.status.phase == TaskPhase::Failed
                        && t.status
                            .finished
                            .as_deref()
                            .is_some_and(|f| !older_than(f, 60))
                })
            };
            let requests: Vec<VmPlacementRequest> = on
                .iter()
                .filter(|v| v.metadata.deletion_requested.is_none())
                .map(|v| VmPlacementRequest::from_vm(v))
                .collect();
            // Stopped VMs hold no capacity, so the plan sees them as not placed: count
            // every VM on the node as placed there for planning.
            let mut placed = c.placed.clone();
            for v in &on {
                if !placed.iter().any(|p| p.name == v.metadata.name) {
                    placed.push(PlacedVm {
                        name: v.metadata.name.clone(),
                        node: node.clone(),
                        cpus: v.spec.cpus,
                        memory_bytes: v.spec.memory.get(),
                        group: v.spec.placement.group.as_ref().map(|g| g.to_string()),
                    });
                }
            }
            let plan =
                scheduler::evacuate(&node, &requests, &c.capacity, &placed, &c.groups, c.ratio);
            stuck.extend(plan.stuck.iter().map(|u| u.to_string()));
            let next = plan.moves.iter().find(|mv| !recently_failed(&mv.vm));
            if let Some(mv) = next {
                match Name::new(&mv.to) {
                    Ok(to) => match request(m, &mv.vm, Some(&to)).await {
                        Ok(t) => {
                            info!(vm = %mv.vm, to = %mv.to, task = %t.metadata.name, "evacuating")
                        }
                        Err(e) => stuck.push(format!("{}: {e}", mv.vm)),
                    },
                    Err(e) => stuck.push(format!("{}: {e}", mv.vm)),
                }
            }
        }
        let status = maintenance_status(on.len() as u32, migrating, &stuck);
        crate::lifecycle::update_node(m, &node, |n| {
            if n.spec.maintenance && n.status.maintenance.as_ref() != Some(&status) {
                n.status.maintenance = Some(status.clone());
            }
        })
        .await?;
    }
    Ok(())
}

/// An error with its causes, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

fn older_than(rfc3339: &str, secs: i64) -> bool {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map(|t| (time::OffsetDateTime::now_utc() - t).whole_seconds() > secs)
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> SourceView {
        SourceView {
            phase: TaskPhase::Running,
            step: step::PREPARING.into(),
            cancel: false,
            in_flight: false,
            bound_to_destination: false,
            migrating_with_task: true,
            domain_here: Some(DomainState::Running),
            destination_failed: None,
            offline: false,
        }
    }

    #[test]
    fn a_migration_runs_its_course() {
        let mut v = view();
        assert_eq!(
            source_step(&v),
            SourceAction::Wait,
            "waits for the destination"
        );
        v.step = step::DESTINATION_READY.into();
        assert_eq!(source_step(&v), SourceAction::Transfer);
        v.step = step::TRANSFERRING.into();
        v.in_flight = true;
        assert_eq!(source_step(&v), SourceAction::Progress);
        // libvirt returned: the VM is recorded on the destination; a crash before the task
        // was finished is completed by the next round.
        v.in_flight = false;
        v.bound_to_destination = true;
        v.domain_here = None;
        assert_eq!(source_step(&v), SourceAction::Complete);
        v.phase = TaskPhase::Succeeded;
        assert_eq!(source_step(&v), SourceAction::Nothing);
    }

    #[test]
    fn cancel_aborts_or_ends_and_the_vm_stays() {
        let mut v = view();
        v.cancel = true;
        assert!(matches!(
            source_step(&v),
            SourceAction::Finish(TaskPhase::Cancelled, _)
        ));
        v.in_flight = true;
        assert_eq!(source_step(&v), SourceAction::Abort);
    }

    #[test]
    fn restarts_and_failures() {
        let mut v = view();
        v.step = step::TRANSFERRING.into();
        // keeld restarted mid-transfer and the domain is still here: failed, stays here.
        assert!(matches!(
            source_step(&v),
            SourceAction::Finish(TaskPhase::Failed, m) if m.contains("interrupted")
        ));
        // The domain left while nobody watched: ask the destination.
        v.domain_here = None;
        assert_eq!(source_step(&v), SourceAction::CheckDestination);
        let mut v = view();
        v.step = step::DESTINATION_FAILED.into();
        v.destination_failed = Some("disk full".into());
        assert!(matches!(
            source_step(&v),
            SourceAction::Finish(TaskPhase::Failed, m) if m.contains("disk full")
        ));
        let mut v = view();
        v.migrating_with_task = false;
        assert!(matches!(
            source_step(&v),
            SourceAction::Finish(TaskPhase::Failed, _)
        ));
        let mut v = view();
        v.step = step::DESTINATION_READY.into();
        v.domain_here = Some(DomainState::Shutoff);
        assert!(matches!(
            source_step(&v),
            SourceAction::Finish(TaskPhase::Failed, _)
        ));
        v.offline = true;
        assert_eq!(
            source_step(&v),
            SourceAction::Transfer,
            "a stopped VM moves started paused"
        );
    }

    #[test]
    fn maintenance_phases() {
        assert_eq!(maintenance_status(0, 0, &[]).phase, MaintenancePhase::Empty);
        let s = maintenance_status(2, 1, &[]);
        assert_eq!(
            (s.phase, s.vms_remaining),
            (MaintenancePhase::Evacuating, 2)
        );
        let s = maintenance_status(1, 0, &["web: pinned".into()]);
        assert_eq!(s.phase, MaintenancePhase::Blocked);
        assert!(s.message.contains("pinned"));
        let s = maintenance_status(2, 0, &["web: pinned".into()]);
        assert_eq!(
            s.phase,
            MaintenancePhase::Evacuating,
            "one VM can still move"
        );
    }

    #[test]
    fn settings() {
        assert_eq!(max_downtime(None), DEFAULT_MAX_DOWNTIME);
        assert_eq!(
            max_downtime(Some(&serde_json::json!(250))),
            Duration::from_millis(250)
        );
        assert_eq!(
            max_downtime(Some(&serde_json::json!(0))),
            DEFAULT_MAX_DOWNTIME
        );
        assert_eq!(
            max_downtime(Some(&serde_json::json!("x"))),
            DEFAULT_MAX_DOWNTIME
        );
        assert_eq!(bandwidth(None), None);
        assert_eq!(bandwidth(Some(&serde_json::json!(8))), Some(8));
        assert_eq!(bandwidth(Some(&serde_json::json!(0))), None);
        assert_eq!(peer_uri(None, "10.0.0.2"), "qemu+tls://10.0.0.2/system");
        assert_eq!(
            peer_uri(Some(&serde_json::json!("tcp")), "10.0.0.2"),
            "qemu+tcp://10.0.0.2/system"
        );
    }
}
