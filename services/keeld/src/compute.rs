//! VMs: the API's operations, the leader's scheduling loop, and each node's reconciler that
//! converges its own libvirt to the VMs bound to it.
//!
//! ```text
//!  POST /vms ─▶ validate, refuse what can never be placed ─▶ record (pending, unbound)
//!  leader, on every VM/group/node change (and every 500 ms): unbound VMs ─▶ scheduler::place ─▶ status.node (binding)
//!  node, on every VM change (and every second), for VMs bound to it:
//!     deletion requested ─▶ destroy + undefine + remove its disks ─▶ delete the record
//!     disks: image copied here if needed ─▶ qcow2 overlay (qemu-img create -b image)
//!     domain defined from the spec (keel-virt, typed XML) ─▶ started / shut down per power_state
//!     status: phase, observed_version, conditions
//! ```
//! Everything is level-triggered: a crash at any point is repaired by the next round, and a
//! keeld restart never touches a running guest.

use std::sync::Arc;
use std::time::Duration;

use keel_model::{
    set_condition, Condition, ConditionStatus, DiskSource, Name, Vm, VmCreate, VmGroup, VmPhase,
};
use keel_store::{Record, Request, Response};
use keel_virt::{CpuMode, DomainSpec, DomainType, Hypervisor, ShutdownMode};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::error::ApiError;
use crate::host::Host;
use crate::member::{decode, encode, kinds, node_of, Member};
use crate::scheduler::{self, CpuOvercommit, Group, NodeCapacity, PlacedVm};

/// Store kind of VMs.
pub const VMS: &str = "vms";
/// Store kind of VM groups.
pub const GROUPS: &str = "vm-groups";

/// The Vm resource of a record.
pub fn vm_of(rec: &Record) -> Result<Vm, ApiError> {
    let mut vm: Vm = decode(rec)?;
    vm.metadata.name = rec.name.clone();
    vm.metadata.uid = rec.uid.clone();
    vm.metadata.version = rec.version;
    vm.metadata.created = rec.created.clone();
    Ok(vm)
}

/// The VmGroup resource of a record.
pub fn group_of(rec: &Record) -> Result<VmGroup, ApiError> {
    let mut g: VmGroup = decode(rec)?;
    g.metadata.name = rec.name.clone();
    g.metadata.uid = rec.uid.clone();
    g.metadata.version = rec.version;
    g.metadata.created = rec.created.clone();
    Ok(g)
}

struct Inputs {
    nodes: Vec<NodeCapacity>,
    placed: Vec<PlacedVm>,
    groups: Vec<Group>,
    ratio: CpuOvercommit,
    vms: Vec<(Record, Vm)>,
}

fn inputs(m: &Member) -> Result<Inputs, ApiError> {
    let free = crate::storage::pool_free(m)?;
    let nodes = m
        .list(kinds::NODES)?
        .iter()
        .filter_map(|r| node_of(r).ok())
        // A node whose pool has not reported yet gets a generous bound; its reconciler checks.
        .map(|n| {
            let disk = free.get(&n.metadata.name).copied().unwrap_or(u64::MAX / 4);
            NodeCapacity::from_node(&n, disk)
        })
        .collect();
    let vms: Vec<(Record, Vm)> = m
        .list(VMS)?
        .into_iter()
        .filter_map(|r| vm_of(&r).ok().map(|v| (r, v)))
        .collect();
    let placed = vms
        .iter()
        .filter_map(|(_, v)| PlacedVm::from_vm(v))
        .collect();
    let groups = m
        .list(GROUPS)?
        .iter()
        .filter_map(|r| group_of(r).ok())
        .map(|g| Group::from(&g))
        .collect();
    let ratio = CpuOvercommit::from_setting(
        m.get(kinds::SETTINGS, scheduler::CPU_OVERCOMMIT_SETTING)?
            .as_ref()
            .and_then(|r| r.value.get("value")),
    )
    .unwrap_or(CpuOvercommit::DEFAULT);
    Ok(Inputs {
        nodes,
        placed,
        groups,
        ratio,
        vms,
    })
}

/// Creates a VM after checking everything it refers to; refuses what can never be placed.
pub async fn create(m: &Member, mut body: VmCreate) -> Result<Vm, ApiError> {
    body.validate()?;
    m.linearizable().await?;
    // The ISO is a ready iso image; a plain cloud-init password is stored hashed.
    crate::cloudinit::check_create(m, &mut body)?;
    for (i, d) in body.spec.disks.iter().enumerate() {
        if let DiskSource::Image { image, .. } = &d.source {
            let field = format!("spec.disks[{i}].source.image");
            let rec = m.get(crate::images::KIND, image.as_str())?.ok_or_else(|| {
                ApiError::bad(
                    format!("image {image} does not exist; import it first (keel image import)"),
                    Some(field.clone()),
                )
            })?;
            let img = crate::images::image_of(&rec)?;
            if img.status.phase != keel_model::ImagePhase::Ready {
                return Err(ApiError::bad(
                    format!("image {image} is not ready yet ({:?})", img.status.phase),
                    Some(field),
                ));
            }
        }
    }
    // Attached volumes, volume names, and disks larger than any pool.
    crate::storage::check_create(m, &body)?;
    if let Some(g) = &body.spec.placement.group {
        if m.get(GROUPS, g.as_str())?.is_none() {
            return Err(ApiError::bad(
                format!("VM group {g} does not exist; create it first"),
                Some("spec.placement.group".into()),
            ));
        }
    }
    let name = body.metadata.name.to_string();
    let vm = Vm {
        metadata: body.metadata.into_metadata(),
        spec: body.spec,
        status: Default::default(),
    };
    let inp = inputs(m)?;
    if let Err(u) = scheduler::place(
        &crate::storage::placement_request(m, &vm)?,
        &inp.nodes,
        &inp.placed,
        &inp.groups,
        inp.ratio,
    ) {
        return Err(ApiError::bad(u.to_string(), Some("spec.placement".into())));
    }
    match m
        .write_ok(Request::Create {
            kind: VMS.into(),
            name,
            value: encode(&vm)?,
            idempotency_key: None,
        })
        .await?
    {
        Response::Written(rec) => vm_of(&rec),
        other => Err(ApiError::Internal(format!(
            "unexpected store answer {other:?}"
        ))),
    }
}

/// Read-modify-write of a VM with compare-and-swap, retried on conflicts; a no-op change
/// writes nothing.
pub async fn update(m: &Member, name: &str, f: impl Fn(&mut Vm)) -> Result<Vm, ApiError> {
    crate::member::update_value(m, VMS, "VM", name, vm_of, f).await
}

/// Leader: binds unbound VMs to nodes.
pub async fn schedule_loop(m: Arc<Member>, shutdown: watch::Receiver<bool>) {
    crate::wake::reconcile_loop(
        m,
        &[VMS, GROUPS, kinds::NODES],
        Duration::from_millis(500),
        crate::wake::Runs::OnLeader,
        "scheduling",
        shutdown,
        |m| async move { schedule_round(&m).await },
    )
    .await
}

async fn schedule_round(m: &Member) -> Result<(), ApiError> {
    let mut inp = inputs(m)?;
    let unbound: Vec<Vm> = inp
        .vms
        .iter()
        .filter(|(_, v)| v.status.node.is_none() && v.metadata.deletion_requested.is_none())
        .map(|(_, v)| v.clone())
        .collect();
    for vm in unbound {
        let now = crate::now_rfc3339();
        let name = vm.metadata.name.clone();
        match scheduler::place(
            &crate::storage::placement_request(m, &vm)?,
            &inp.nodes,
            &inp.placed,
            &inp.groups,
            inp.ratio,
        ) {
            Ok(p) => {
                info!(vm = %name, node = %p.node, "VM scheduled");
                let node = p.node.clone();
                let bound = update(m, &name, |v| {
                    v.status.node = Some(node.clone());
                    v.status.phase = VmPhase::Scheduling;
                    set_condition(
                        &mut v.status.conditions,
                        Condition::new(
                            Condition::SCHEDULED,
                            ConditionStatus::True,
                            "Placed",
                            format!("placed on {node}"),
                            now.clone(),
                        ),
                    );
                })
                .await?;
                if let Some(pv) = PlacedVm::from_vm(&bound) {
                    inp.placed.push(pv);
                }
            }
            Err(u) => {
                let (reason, message) = (u.cause.as_str().to_string(), u.to_string());
                update(m, &name, |v| {
                    set_condition(
                        &mut v.status.conditions,
                        Condition::new(
                            Condition::SCHEDULED,
                            ConditionStatus::False,
                            reason.clone(),
                            message.clone(),
                            now.clone(),
                        ),
                    );
                })
                .await?;
            }
        }
    }
    Ok(())
}

/// The VMs bound to node `node`.
pub fn vms_on(m: &Member, node: &str) -> Result<Vec<Vm>, ApiError> {
    Ok(m.list(VMS)?
        .iter()
        .filter_map(|r| vm_of(r).ok())
        .filter(|v| v.status.node.as_deref() == Some(node))
        .collect())
}

/// Node: converges this node's libvirt to the VMs bound to it.
pub async fn node_loop(m: Arc<Member>, host: Arc<Host>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut wake = crate::wake::Wake::new(m.clone(), &[VMS]);
    let mut usage = crate::usage::Sampler::default();
    let mut booted = false;
    loop {
        tokio::select! { _ = tick.tick() => {} _ = wake.changed() => {} _ = shutdown.changed() => return }
        let Some((hv, _)) = host.hv.get().cloned() else {
            continue;
        };
        // KVM when the probe found it usable and no setting forces TCG (crate::host).
        let kvm = crate::host::report_hypervisor(&m, &host).await;
        // Once per host boot, before anything is started: autostart (crate::cloudinit).
        if !booted {
            match crate::cloudinit::boot_policy(&m, &hv).await {
                Ok(done) => booted = done,
                Err(e) => {
                    warn!(error = %e, "applying autostart after the host booted failed; retrying")
                }
            }
            if !booted {
                continue;
            }
        }
        let vms = match vms_on(&m, &m.identity.name) {
            Ok(vms) => vms,
            Err(e) => {
                debug!(error = %e, "listing VMs failed");
                continue;
            }
        };
        for vm in vms {
            let name = vm.metadata.name.clone();
            let span = tracing::info_span!("reconcile", kind = "vm", name = %name, version = vm.metadata.version);
            let _g = span.enter();
            if let Err(e) = reconcile(&m, &host, &hv, kvm, vm).await {
                warn!(vm = %name, error = %e, "reconcile failed; retrying next round");
            }
        }
        // Domains no VM accounts for are reported in the node's status, never touched.
        crate::lifecycle::report_unmanaged(&m, &hv).await;
        usage.maybe_sample(&m, &hv).await;
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())
}

async fn reconcile(
    m: &Member,
    host: &Host,
    hv: &Arc<dyn Hypervisor>,
    kvm: bool,
    vm: Vm,
) -> Result<(), String> {
    let name = vm.metadata.name.clone();
    if vm.status.migration.is_some() {
        // A migration (or an offline move) owns the VM until it ends: crate::migrate.
        return Ok(());
    }
    let h = hv.clone();
    let n = name.clone();
    let domain = blocking(move || h.domain(&n).ok()).await?;
    if vm.metadata.deletion_requested.is_some() {
        if let Some(d) = &domain {
            let h = hv.clone();
            let n = name.clone();
            let active = d.state.is_active();
            blocking(move || {
                if active {
                    let _ = h.destroy(&n);
                }
                h.undefine(&n)
            })
            .await?
            .map_err(|e| e.to_string())?;
        }
        crate::storage::release_disks(m, host, &vm).await?;
        crate::cloudinit::remove_files(host, &vm.metadata.uid)?;
        m.write_ok(Request::Delete {
            kind: VMS.into(),
            name: name.clone(),
            expected_version: None,
        })
        .await
        .map_err(|e| e.to_string())?;
        info!(vm = %name, "VM deleted: domain and disks removed");
        return Ok(());
    }
    if vm.status.phase == VmPhase::Lost {
        return Ok(());
    }
    if domain.is_none() && matches!(vm.status.phase, VmPhase::Running) {
        warn!(vm = %name, "the VM's domain vanished from libvirt; marking it lost");
        let me = m.identity.name.clone();
        update(m, &name, |v| {
            // Only if it is still ours and not moving: a migration may have ended meanwhile.
            if v.status.node.as_deref() == Some(me.as_str()) && v.status.migration.is_none() {
                v.status.phase = VmPhase::Lost;
            }
        })
        .await
        .map_err(|e| e.to_string())?;
        return Ok(());
    }
    // After a rename, the domain of the old name goes (crate::hotplug).
    crate::hotplug::finish_rename(m, hv, &vm).await?;
    // Disks: Volume records and files (crate::storage).
    let disks = crate::storage::prepare_disks(m, host, &vm).await?;
    // Firmware, ISO, cloud-init seed and boot order (crate::cloudinit).
    let boot = crate::cloudinit::prepare(m, host, &vm).await?;
    // Domain.
    let uid: uuid::Uuid = vm
        .metadata
        .uid
        .parse()
        .map_err(|e| format!("uid {}: {e}", vm.metadata.uid))?;
    let cpu = match &vm.spec.cpu_model {
        keel_model::CpuModel::HostPassthrough if kvm => CpuMode::HostPassthrough,
        _ => CpuMode::Model {
            name: keel_virt::CpuModel::new("qemu64").map_err(|e| e.to_string())?,
        },
    };
    let spec = DomainSpec {
        name: keel_virt::DomainName::new(name.clone()).map_err(|e| e.to_string())?,
        uuid: uid,
        keel_uid: uid,
        memory_mib: vm.spec.memory.get() / (1024 * 1024),
        vcpus: vm.spec.cpus,
        domain_type: if kvm {
            DomainType::Kvm
        } else {
            DomainType::Qemu
        },
        cpu,
        firmware: boot.firmware,
        boot: boot.boot,
        disks,
        cdroms: boot.cdroms,
        nics: crate::network::prepare_nics(&vm).await?,
        vnc: crate::console::domain_vnc(&name),
        guest_agent: true,
        serial_log: Some(crate::lifecycle::serial_log_path(&name)),
        hotplug: Some(crate::hotplug::headroom(&vm)),
    };
    if domain.is_none() || vm.status.observed_version < vm.metadata.version {
        let h = hv.clone();
        let s = spec.clone();
        blocking(move || h.define(&s))
            .await?
            .map_err(|e| e.to_string())?;
    }
    // One-shot actions (force off, reboot) first; crate::lifecycle decides, this executes.
    let actions = crate::lifecycle::run_actions(hv, &vm).await?;
    let h = hv.clone();
    let n = name.clone();
    let state = blocking(move || h.domain(&n).map(|d| d.state))
        .await?
        .map_err(|e| e.to_string())?;
    // A running domain takes spec changes live (crate::hotplug): vCPUs, memory, disks, NICs.
    let hotplug = crate::hotplug::converge_live(m, hv, &vm, &spec, state).await?;
    // A template never runs, whatever its power state says (crate::storage).
    let want = if vm.spec.template {
        keel_model::PowerState::Stopped
    } else {
        vm.spec.power_state
    };
    let step = crate::lifecycle::power_step(want, state);
    let phase = match step {
        crate::lifecycle::PowerStep::Report(phase) => phase,
        crate::lifecycle::PowerStep::Start => {
            let h = hv.clone();
            let n = name.clone();
            blocking(move || h.start(&n))
                .await?
                .map_err(|e| e.to_string())?;
            info!(vm = %name, "VM started");
            VmPhase::Starting
        }
        crate::lifecycle::PowerStep::Pause | crate::lifecycle::PowerStep::Resume => {
            let pause = step == crate::lifecycle::PowerStep::Pause;
            let h = hv.clone();
            let n = name.clone();
            blocking(move || if pause { h.suspend(&n) } else { h.resume(&n) })
                .await?
                .map_err(|e| e.to_string())?;
            info!(vm = %name, paused = pause, "VM {}", if pause { "paused" } else { "resumed" });
            VmPhase::Running
        }
        crate::lifecycle::PowerStep::ForceOff => {
            let h = hv.clone();
            let n = name.clone();
            blocking(move || h.destroy(&n))
                .await?
                .map_err(|e| e.to_string())?;
            info!(vm = %name, "paused VM powered off");
            VmPhase::Stopped
        }
        crate::lifecycle::PowerStep::Stop => {
            // ACPI first; a guest that ignores it is forced off after a grace period.
            let stopping_long = vm.status.phase == VmPhase::Stopping
                && vm
                    .status
                    .conditions
                    .iter()
                    .any(|c| c.kind == "StopRequested" && older_than(&c.last_transition, 30));
            let h = hv.clone();
            let n = name.clone();
            if stopping_long {
                blocking(move || h.destroy(&n))
                    .await?
                    .map_err(|e| e.to_string())?;
                warn!(vm = %name, "the guest did not power off within 30 s; forced off");
                let now = crate::now_rfc3339();
                update(m, &name, |v| {
                    set_condition(
                        &mut v.status.conditions,
                        Condition::new(
                            "ForcedOff",
                            ConditionStatus::True,
                            "GracePeriodExpired",
                            "the guest did not power off within 30 s of the stop request",
                            now.clone(),
                        ),
                    );
                })
                .await
                .map_err(|e| e.to_string())?;
            } else {
                // When its agent answers (crate::agent), ask it too, once: a guest that
                // ignores the power button still stops.
                let agent = vm.status.phase != VmPhase::Stopping && crate::agent::connected(&vm);
                let acpi = blocking(move || {
                    let acpi = h.shutdown(&n, ShutdownMode::Acpi);
                    if agent {
                        if let Err(e) = h.shutdown(&n, ShutdownMode::GuestAgent) {
                            debug!(vm = %n, error = %e, "guest agent shutdown failed");
                        }
                    }
                    acpi
                })
                .await?;
                if agent {
                    info!(vm = %name, acpi_ok = acpi.is_ok(), "graceful stop: ACPI power button and guest agent shutdown");
                }
            }
            VmPhase::Stopping
        }
    };
    let paused = crate::lifecycle::is_paused(vm.spec.power_state, state, step);
    let was_paused = keel_model::find_condition(&vm.status.conditions, Condition::PAUSED)
        .is_some_and(|c| c.status == ConditionStatus::True);
    if phase != vm.status.phase
        || vm.status.observed_version < vm.metadata.version
        || actions != vm.status.actions
        || paused != was_paused
        || hotplug != vm.status.hotplug
    {
        let version = vm.metadata.version;
        let spec = vm.spec.clone();
        let now = crate::now_rfc3339();
        update(m, &name, |v| {
            if v.status.migration.is_some() {
                // A migration started meanwhile; it owns the status now.
                return;
            }
            v.status.phase = phase;
            // This very write bumps the version by one: when the spec is still the one this
            // round converged, the status reflects that next version too (else every status
            // write would look like an unobserved change and start another round).
            v.status.observed_version = if v.spec == spec {
                v.metadata.version + 1
            } else {
                version
            };
            v.status.actions = actions;
            v.status.hotplug = hotplug;
            crate::lifecycle::set_paused(&mut v.status.conditions, paused, &now);
            if phase == VmPhase::Stopping {
                set_condition(
                    &mut v.status.conditions,
                    Condition::new(
                        "StopRequested",
                        ConditionStatus::True,
                        "PowerStateStopped",
                        "graceful shutdown requested",
                        now.clone(),
                    ),
                );
            }
        })
        .await
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn older_than(rfc3339: &str, secs: i64) -> bool {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map(|t| (time::OffsetDateTime::now_utc() - t).whole_seconds() > secs)
        .unwrap_or(false)
}

/// Validates a VM name from a path.
pub fn vm_name(raw: &str) -> Result<Name, ApiError> {
    Name::new(raw)
        .map_err(|e| ApiError::Invalid(keel_model::ValidationError::new("name", e.message)))
}
