//! VM lifecycle beyond create and delete: start, stop, force off, reboot, pause and resume
//! (desired state in the store, the VM's node converges), live migration with `Task`
//! progress (see [`crate::migrate`]), node maintenance, and the report of domains no VM
//! accounts for.
//!
//! ```text
//!  POST /vms/{n}/start|stop|pause|resume ─▶ spec.power_state
//!  POST /vms/{n}/reboot|force-stop       ─▶ spec.actions.<counter> += 1   (one-shot)
//!  node reconciler (compute.rs): run_actions (counters not yet in status.actions)
//!      ─▶ power_step(want, domain state) ─▶ start | ACPI stop | suspend | resume | report
//!  POST /vms/{n}/migrate {to?} ─▶ migrate::request ─▶ Task + status.migration
//!  GET /tasks, GET /tasks/{id}, POST /tasks/{id}/cancel
//!  POST /nodes/{n}/maintenance | maintenance-exit | cordon | uncordon ─▶ node spec
//! ```
//! Pure decisions ([`power_step`], [`paused_after`]) are unit-tested here; the runtime only
//! executes them.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use keel_model::{
    find_condition, set_condition, Condition, ConditionStatus, ErrorBody, MaintenancePhase,
    MaintenanceStatus, Name, Node, PowerState, Task, VmActions, VmPhase,
};
use keel_virt::{DomainState, Hypervisor};
use serde::{Deserialize, Serialize};
use tracing::{debug, info};
use utoipa::ToSchema;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response as HttpResponse;
use warp::{Filter, Reply};

use crate::api::{authenticate, authz, ok, reply, with_ctx, ApiResult, Ctx, List};
use crate::compute::{self, vm_of, VMS};
use crate::error::ApiError;
use crate::member::{kinds, node_of, Member};
use crate::migrate;

/// Where a VM's serial console output is kept on its node's host (virtlogd appends and
/// rotates it). The same path on every node: after a live migration the destination
/// continues the file on its own host.
/// The directory is created when missing (libvirt makes it for its own logs only once a
/// guest ran).
pub fn serial_log_path(vm: &str) -> PathBuf {
    let dir = PathBuf::from(SERIAL_LOG_DIR);
    if !dir.is_dir() {
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot create the serial log directory");
        }
    }
    dir.join(format!("{vm}-serial.log"))
}

/// Where serial logs go.
pub const SERIAL_LOG_DIR: &str = "/var/log/libvirt/qemu";

/// What a node does about a VM's power state this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerStep {
    /// Nothing to do; the VM's phase is this.
    Report(VmPhase),
    /// Start the shut-off domain.
    Start,
    /// Shut the domain down (ACPI, forced after a grace period).
    Stop,
    /// Power the domain off at once (a paused guest cannot answer ACPI).
    ForceOff,
    /// Pause the vCPUs.
    Pause,
    /// Resume paused vCPUs.
    Resume,
}

/// Decides what to do about a VM whose desired power state is `want` and whose domain is in
/// `state` (pure).
pub fn power_step(want: PowerState, state: DomainState) -> PowerStep {
    use DomainState as D;
    use PowerStep::*;
    match (want, state) {
        (PowerState::Stopped, D::Shutoff | D::Crashed) => Report(VmPhase::Stopped),
        (PowerState::Stopped, D::Paused) => ForceOff,
        (PowerState::Stopped, _) => Stop,
        (_, D::Shutoff) => Start,
        (_, D::Crashed) => Report(VmPhase::Failed),
        (PowerState::Running, D::Paused) => Resume,
        (PowerState::Paused, D::Running) => Pause,
        (_, D::ShuttingDown) => Report(VmPhase::Stopping),
        (_, D::Running | D::Paused | D::PmSuspended | D::Unknown) => Report(VmPhase::Running),
    }
}

/// Whether the VM's vCPUs are paused once `step` is done (pure).
pub fn paused_after(state: DomainState, step: PowerStep) -> bool {
    match step {
        PowerStep::Pause => true,
        PowerStep::Resume | PowerStep::Start | PowerStep::Stop | PowerStep::ForceOff => false,
        PowerStep::Report(_) => state == DomainState::Paused,
    }
}

/// [`paused_after`], for the reconciler.
pub fn is_paused(_want: PowerState, state: DomainState, step: PowerStep) -> bool {
    paused_after(state, step)
}

/// Sets the `Paused` condition (added only once a VM was ever paused).
pub fn set_paused(conditions: &mut Vec<Condition>, paused: bool, now: &str) {
    if !paused && find_condition(conditions, Condition::PAUSED).is_none() {
        return;
    }
    let (status, reason, message) = if paused {
        (
            ConditionStatus::True,
            "PowerStatePaused",
            "the vCPUs are paused",
        )
    } else {
        (ConditionStatus::False, "Running", "the vCPUs run")
    };
    set_condition(
        conditions,
        Condition::new(Condition::PAUSED, status, reason, message, now),
    );
}

/// Which one-shot actions are due (pure): counters in `asked` above those in `done`.
pub fn due_actions(asked: VmActions, done: VmActions) -> (bool, bool) {
    (
        asked.force_stop > done.force_stop,
        asked.reboot > done.reboot,
    )
}

/// Carries out the VM's due one-shot actions on its domain (force off, then reboot) and
/// returns the counters to record in `status.actions`. A reboot of a domain that is not
/// running is dropped (it would have nothing to reboot).
pub async fn run_actions(
    hv: &Arc<dyn Hypervisor>,
    vm: &keel_model::Vm,
) -> Result<VmActions, String> {
    let (force, reboot) = due_actions(vm.spec.actions, vm.status.actions);
    if !force && !reboot {
        return Ok(vm.status.actions);
    }
    let name = vm.metadata.name.clone();
    let h = hv.clone();
    let want_running = vm.spec.power_state != PowerState::Stopped;
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        let state = h
            .domain(&name)
            .map(|d| d.state)
            .map_err(|e| e.to_string())?;
        if force && state.is_active() {
            h.destroy(&name).map_err(|e| e.to_string())?;
            info!(vm = %name, "VM forced off");
            return Ok(());
        }
        if reboot && want_running && matches!(state, DomainState::Running | DomainState::Paused) {
            h.reboot(&name).map_err(|e| e.to_string())?;
            info!(vm = %name, "VM reboot requested");
        }
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())??;
    Ok(vm.spec.actions)
}

/// Records in this node's status the domains of its hypervisor that no VM accounts for (not
/// bound here, not migrating here). They are never touched.
pub async fn report_unmanaged(m: &Member, hv: &Arc<dyn Hypervisor>) {
    let h = hv.clone();
    let domains = match tokio::task::spawn_blocking(move || h.list()).await {
        Ok(Ok(d)) => d,
        _ => return,
    };
    let me = m.identity.name.clone();
    let Ok(recs) = m.list(VMS) else { return };
    let managed: std::collections::BTreeSet<String> = recs
        .iter()
        .filter_map(|r| vm_of(r).ok())
        .filter(|v| {
            v.status.node.as_deref() == Some(me.as_str())
                || v.status
                    .migration
                    .as_ref()
                    .is_some_and(|mg| mg.destination == me)
        })
        .map(|v| v.metadata.name)
        .collect();
    let unmanaged: Vec<String> = domains
        .into_iter()
        .map(|d| d.name)
        .filter(|n| !managed.contains(n))
        .collect();
    let res = update_node(m, &me, |n| {
        if n.status.unmanaged_domains != unmanaged {
            n.status.unmanaged_domains = unmanaged.clone();
        }
    })
    .await;
    if let Err(e) = res {
        debug!(error = %e, "recording unmanaged domains failed");
    }
}

/// Read-modify-write of a Node with compare-and-set, retried on conflicts; no write when
/// nothing changed.
pub async fn update_node(m: &Member, name: &str, f: impl Fn(&mut Node)) -> Result<Node, ApiError> {
    crate::member::update_value(m, kinds::NODES, "node", name, node_of, f).await
}

fn invalid_state(message: String) -> ApiError {
    ApiError::Conflict {
        code: "invalid_state",
        message,
    }
}

/// Sets a VM's desired power state, or asks for a one-shot action; its node converges.
pub async fn power_action(
    m: &Member,
    name: &str,
    action: &str,
) -> Result<keel_model::Vm, ApiError> {
    compute::vm_name(name)?;
    let known = ["start", "stop", "force-stop", "reboot", "pause", "resume"];
    if !known.contains(&action) {
        return Err(ApiError::NotFound(format!(
            "VM action {action:?} is not known; use {} or migrate",
            known.join(", ")
        )));
    }
    m.linearizable().await?;
    let rec = m
        .get(VMS, name)?
        .ok_or_else(|| ApiError::NotFound(format!("VM {name} does not exist")))?;
    let vm = vm_of(&rec)?;
    if let Some(mg) = &vm.status.migration {
        return Err(invalid_state(format!(
            "VM {name} is migrating to {} (task {}); wait for it or cancel the task",
            mg.destination, mg.task
        )));
    }
    if vm.metadata.deletion_requested.is_some() {
        return Err(invalid_state(format!("VM {name} is being deleted")));
    }
    let stopped = vm.spec.power_state == PowerState::Stopped;
    match action {
        "pause" | "resume" | "reboot" if stopped => {
            return Err(invalid_state(format!(
                "VM {name} is stopped; start it first (keel vm start {name})"
            )))
        }
        "reboot" if vm.status.phase != VmPhase::Running => {
            return Err(invalid_state(format!(
                "VM {name} is {:?}, not running; only a running VM reboots",
                vm.status.phase
            )))
        }
        _ => {}
    }
    let action = action.to_string();
    let vm = compute::update(m, name, |v| match action.as_str() {
        "start" => v.spec.power_state = PowerState::Running,
        "stop" => v.spec.power_state = PowerState::Stopped,
        "force-stop" => {
            v.spec.power_state = PowerState::Stopped;
            if v.status.phase.is_active() {
                v.spec.actions.force_stop =
                    v.spec.actions.force_stop.max(v.status.actions.force_stop) + 1;
            }
        }
        "pause" => v.spec.power_state = PowerState::Paused,
        "resume" => v.spec.power_state = PowerState::Running,
        "reboot" => {
            v.spec.actions.reboot = v.spec.actions.reboot.max(v.status.actions.reboot) + 1;
        }
        _ => {}
    })
    .await?;
    info!(vm = %name, action = %action, "VM action requested");
    Ok(vm)
}

/// Body of `POST /api/v1/vms/{name}/migrate`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// The destination node; when absent the scheduler picks one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Name>,
}

/// Live-migrates a running VM (or moves a stopped one) to another node; the work runs as a
/// `Task` (`GET /api/v1/tasks/{id}`).
#[utoipa::path(post, path = "/api/v1/vms/{name}/migrate", security(("bearer" = [])),
    params(("name" = String, Path)), request_body = MigrateRequest,
    responses((status = 202, body = Task), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn migrate_vm(name: String, ctx: Ctx, authz: Option<String>, body: Bytes) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    compute::vm_name(&name)?;
    let req: MigrateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        MigrateRequest::default()
    } else {
        crate::api::parse(&body)?
    };
    let task = migrate::request(&m, &name, req.to.as_ref()).await?;
    Ok(warp::reply::with_status(warp::reply::json(&task), StatusCode::ACCEPTED).into_response())
}

/// Every task, sorted by name.
#[utoipa::path(get, path = "/api/v1/tasks", security(("bearer" = [])),
    responses((status = 200, body = List<Task>), (status = 401, body = ErrorBody)))]
async fn list_tasks(ctx: Ctx, authz: Option<String>) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    m.linearizable().await?;
    let items = m
        .list(migrate::TASKS)?
        .iter()
        .map(migrate::task_of)
        .collect::<Result<Vec<_>, _>>()?;
    ok(&List { items })
}

/// One task.
#[utoipa::path(get, path = "/api/v1/tasks/{id}", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = Task), (status = 404, body = ErrorBody)))]
async fn get_task(id: String, ctx: Ctx, authz: Option<String>) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    m.linearizable().await?;
    let rec = m
        .get(migrate::TASKS, &id)?
        .ok_or_else(|| ApiError::NotFound(format!("task {id} does not exist")))?;
    ok(&migrate::task_of(&rec)?)
}

/// Asks a running task to stop (a migration aborts and the VM stays where it was).
#[utoipa::path(post, path = "/api/v1/tasks/{id}/cancel", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 202, body = Task), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn cancel_task(id: String, ctx: Ctx, authz: Option<String>) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    let task = migrate::cancel(&m, &id).await?;
    Ok(warp::reply::with_status(warp::reply::json(&task), StatusCode::ACCEPTED).into_response())
}

/// Cordons, uncordons, or puts a node into or out of maintenance.
pub async fn node_action(m: &Member, name: &str, action: &str) -> Result<Node, ApiError> {
    let (cordoned, maintenance) = match action {
        "cordon" => (Some(true), None),
        "uncordon" | "maintenance-exit" => (Some(false), Some(false)),
        "maintenance" => (Some(true), Some(true)),
        other => {
            return Err(ApiError::NotFound(format!(
                "node action {other:?} is not known; use cordon, uncordon, maintenance or maintenance-exit"
            )))
        }
    };
    m.linearizable().await?;
    let node = update_node(m, name, |n| {
        if let Some(c) = cordoned {
            n.spec.cordoned = c;
        }
        match maintenance {
            Some(true) if !n.spec.maintenance => {
                n.spec.maintenance = true;
                n.status.maintenance = Some(MaintenanceStatus {
                    phase: MaintenancePhase::Evacuating,
                    vms_remaining: 0,
                    message: "moving VMs away".into(),
                });
            }
            Some(false) => {
                n.spec.maintenance = false;
                n.status.maintenance = None;
            }
            _ => {}
        }
    })
    .await?;
    info!(node = %name, action, "node action");
    Ok(node)
}

/// This module's part of the OpenAPI document (merged by [`crate::api::openapi`]).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(migrate_vm, list_tasks, get_task, cancel_task),
    components(schemas(MigrateRequest, List<Task>))
)]
pub struct ApiDoc;

/// This module's routes (tried before the generic `vms/{name}/{action}` route).
pub fn routes(ctx: Ctx) -> BoxedFilter<(HttpResponse,)> {
    let v1 = warp::path("api").and(warp::path("v1"));
    let migrate_r = v1
        .and(warp::path!("vms" / String / "migrate"))
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .and(crate::api::body())
        .then(migrate_vm)
        .map(reply)
        .boxed();
    let tasks_r = v1
        .and(warp::path!("tasks"))
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .then(list_tasks)
        .map(reply)
        .boxed();
    let task_r = v1
        .and(warp::path!("tasks" / String))
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .then(get_task)
        .map(reply)
        .boxed();
    let cancel_r = v1
        .and(warp::path!("tasks" / String / "cancel"))
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(authz())
        .then(cancel_task)
        .map(reply)
        .boxed();
    migrate_r
        .or(tasks_r)
        .unify()
        .or(task_r)
        .unify()
        .or(cancel_r)
        .unify()
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_steps() {
        use DomainState as D;
        use PowerState as P;
        assert_eq!(power_step(P::Running, D::Shutoff), PowerStep::Start);
        assert_eq!(power_step(P::Paused, D::Shutoff), PowerStep::Start);
        assert_eq!(
            power_step(P::Running, D::Running),
            PowerStep::Report(VmPhase::Running)
        );
        assert_eq!(power_step(P::Running, D::Paused), PowerStep::Resume);
        assert_eq!(power_step(P::Paused, D::Running), PowerStep::Pause);
        assert_eq!(
            power_step(P::Paused, D::Paused),
            PowerStep::Report(VmPhase::Running)
        );
        assert_eq!(power_step(P::Stopped, D::Running), PowerStep::Stop);
        assert_eq!(power_step(P::Stopped, D::Paused), PowerStep::ForceOff);
        assert_eq!(
            power_step(P::Stopped, D::Shutoff),
            PowerStep::Report(VmPhase::Stopped)
        );
        assert_eq!(
            power_step(P::Running, D::ShuttingDown),
            PowerStep::Report(VmPhase::Stopping)
        );
        assert_eq!(
            power_step(P::Running, D::Crashed),
            PowerStep::Report(VmPhase::Failed)
        );
    }

    #[test]
    fn paused_follows_the_step() {
        assert!(paused_after(DomainState::Running, PowerStep::Pause));
        assert!(!paused_after(DomainState::Paused, PowerStep::Resume));
        assert!(paused_after(
            DomainState::Paused,
            PowerStep::Report(VmPhase::Running)
        ));
        assert!(!paused_after(
            DomainState::Running,
            PowerStep::Report(VmPhase::Running)
        ));
        let mut conds = Vec::new();
        set_paused(&mut conds, false, "t0");
        assert!(conds.is_empty(), "no condition for a VM never paused");
        set_paused(&mut conds, true, "t1");
        assert_eq!(conds[0].status, ConditionStatus::True);
        set_paused(&mut conds, false, "t2");
        assert_eq!(conds[0].status, ConditionStatus::False);
    }

    #[test]
    fn actions_are_due_once() {
        let asked = VmActions {
            reboot: 2,
            force_stop: 1,
        };
        assert_eq!(due_actions(asked, VmActions::default()), (true, true));
        assert_eq!(due_actions(asked, asked), (false, false));
        assert_eq!(
            due_actions(
                asked,
                VmActions {
                    reboot: 2,
                    force_stop: 0
                }
            ),
            (true, false)
        );
    }

    #[test]
    fn migrate_body() {
        let r: MigrateRequest = serde_json::from_str(r#"{"to":"node2"}"#).unwrap();
        assert_eq!(r.to.unwrap().as_str(), "node2");
        assert!(serde_json::from_str::<MigrateRequest>(r#"{"to":"Not_DNS"}"#).is_err());
        assert!(serde_json::from_str::<MigrateRequest>(r#"{"dest":"node2"}"#).is_err());
    }
}
