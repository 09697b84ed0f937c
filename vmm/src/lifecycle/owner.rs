//! The thread that owns a running VM: it answers API requests, runs at most one migration at a
//! time (through the migration worker, which it can cancel), and decides when the VM ends.
//!
//! An outgoing migration that has committed hands the decision over: the guest stays paused
//! here and nothing but the destination's confirmation (the VM then ends here) or an explicit
//! operator request ends that: `vm.resume` with `force` (the disks re-taken first) or a stop
//! (this copy discarded). Signals and the console escape do not discard it.
//! Concurrency: one plain thread draining the VMM's event channel; everything that must not
//! block it (the migration, the API socket's I/O) runs on other threads and reports back as
//! events.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

use migration::cancel::Canceller;

use crate::api::migration_status::MigrationStatus;
use crate::api::request::{respond, Responder};
use crate::api::request::{ApiRequest, ApiResponse};
use crate::api::types::{
    ApiVmConfig, ApiVmInfo, ApiVmState, MigrationInfo, MigrationOutcome, MigrationRole, SerialSink,
};
use crate::console::terminal::{spawn_stdin_forwarder, RawTerminal};
use crate::event_monitor::EventMonitor;
use crate::events::{EventLine, VcpuOutcome, VmEvent};
use crate::lifecycle::admission::{self, not_admitted, Phase};
use crate::migrate::worker::Reporting;
use crate::vm::event_loop::EventLoop;
use crate::vm::machine::Machine;

/// `vm.resume` with `force` found a disk held elsewhere: the destination most likely runs the
/// guest.
#[derive(Debug, thiserror::Error)]
#[error("not resumed; another process holds the disk, so the destination most likely runs the guest: discard this copy with `vmm stop {name}`")]
pub(crate) struct NotResumed {
    name: String,
    #[source]
    source: devices::virtio::BackendError,
}

/// How the VM ended.
#[derive(Debug)]
pub(crate) enum RunEnd {
    Rebooted,
    PoweredOff,
    /// `vmm stop` or `vmm.shutdown`: the VMM exits.
    StopRequested,
    /// `vm.shutdown`: the VM stops, the VMM stays (unless it was started by `vmm run`).
    ShutdownRequested,
    /// `vm.reboot`.
    RebootRequested,
    /// `vm.delete`.
    DeleteRequested,
    Signal(&'static str),
    ConsoleQuit,
    MigratedAway(String),
    Failed(String),
}

impl RunEnd {
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            RunEnd::Failed(_) => 1,
            _ => 0,
        }
    }

    pub(crate) fn describe(&self, name: &str) -> String {
        match self {
            RunEnd::Rebooted => format!("guest '{name}' rebooted; the VM has stopped"),
            RunEnd::PoweredOff => format!("guest '{name}' powered off"),
            RunEnd::StopRequested | RunEnd::ShutdownRequested => {
                format!("VM '{name}' stopped on request")
            }
            RunEnd::RebootRequested => format!("VM '{name}' rebooted on request"),
            RunEnd::DeleteRequested => format!("VM '{name}' deleted on request"),
            RunEnd::Signal(s) => format!("{s} received; VM '{name}' stopped"),
            RunEnd::ConsoleQuit => format!("console escape (Ctrl-A x); VM '{name}' stopped"),
            RunEnd::MigratedAway(to) => {
                format!("VM '{name}' migrated to {to}; it runs there now and this copy has stopped")
            }
            RunEnd::Failed(m) => format!("VM '{name}' failed: {m}"),
        }
    }
}

/// What ends the VM once a migration that is being cancelled has given the guest back.
enum AfterCancel {
    /// `vmm.shutdown` or `vm.shutdown`: answered once the guest is back, then the VM ends so.
    Request(Responder, RunEnd),
    /// A signal, or the guest itself (reset, power-off, failure, the console escape).
    End(RunEnd),
}

/// A migration in progress.
struct Active {
    to: String,
    canceller: Canceller,
    /// Running or Paused: what the VM goes back to if the migration does not complete.
    paused_before: bool,
    /// `vm.cancel-migration` requests, answered once the guest is back.
    cancel_waiters: Vec<Responder>,
    then: Option<AfterCancel>,
    /// The destination did not confirm the commit in time (the worker still listens).
    unconfirmed: Option<String>,
}

/// A migration that committed without the destination's confirmation: the guest is paused
/// here, intact, its disks released, until the operator decides.
struct Unknown {
    to: String,
    why: String,
}

/// What the owner needs besides the VM: where events go and where a migration reports.
pub(crate) struct OwnerContext {
    pub(crate) events: Sender<VmEvent>,
    pub(crate) status: Arc<MigrationStatus>,
    pub(crate) monitor: EventMonitor,
    pub(crate) serial: SerialSink,
}

struct Owner {
    machine: Arc<Machine>,
    paused: bool,
    started: Instant,
    ctx: OwnerContext,
    migration: Option<Active>,
    unknown: Option<Unknown>,
}

/// Owns the running VM until it ends.
pub(crate) fn own(
    machine: Arc<Machine>,
    event_loop: EventLoop,
    ctx: OwnerContext,
    rx: &Receiver<VmEvent>,
) -> RunEnd {
    let raw_terminal = (ctx.serial == SerialSink::Stdout).then(RawTerminal::enable);
    match &ctx.serial {
        SerialSink::Stdout => spawn_stdin_forwarder(
            machine.serial.clone(),
            EventLine::new(ctx.events.clone(), || VmEvent::ConsoleQuit),
        ),
        SerialSink::Pty(pty) => pty.attach(machine.serial.clone()),
        SerialSink::Socket(socket) => socket.attach(machine.serial.clone()),
        SerialSink::Discard | SerialSink::File(_) => {}
    }
    let mut owner = Owner {
        machine: machine.clone(),
        paused: false,
        started: Instant::now(),
        ctx,
        migration: None,
        unknown: None,
    };
    let end = loop {
        let Ok(event) = rx.recv() else {
            break RunEnd::Failed("event channel closed".into());
        };
        if let Some(end) = owner.handle(event) {
            break end;
        }
    };
    drop(raw_terminal);
    let stopped = machine.vcpus.stop();
    drop(event_loop);
    drop(owner);
    match stopped {
        // Every vCPU thread is joined: the devices (disk locks, taps) are closed and guest
        // memory unmapped as the last reference goes (a migration's stuck flush may hold one
        // a while longer).
        Ok(()) => drop(machine),
        Err(e) => {
            // A vCPU stuck in the kernel may still touch guest memory: keep it mapped, and
            // its devices open, until the process exits.
            log::error!("{e}; the VM's memory and devices stay allocated until this process exits");
            std::mem::forget(machine);
        }
    }
    end
}

impl Owner {
    fn handle(&mut self, event: VmEvent) -> Option<RunEnd> {
        match event {
            VmEvent::Api(request, reply) => self.request(request, reply),
            VmEvent::MigrationUnconfirmed(why) => {
                if let Some(m) = &mut self.migration {
                    eprintln!(
                        "vmm: the migration to {} committed but is not confirmed ({why}): the outcome is unknown; the guest stays paused here until the destination confirms or you decide",
                        m.to
                    );
                    m.unconfirmed = Some(why);
                }
                None
            }
            VmEvent::MigrationFinished(result) => self.migration_finished(*result),
            VmEvent::GuestReset => self.guest_ended(RunEnd::Rebooted),
            VmEvent::VcpuExited { outcome } => self.guest_ended(match outcome {
                VcpuOutcome::Reset => RunEnd::Rebooted,
                VcpuOutcome::PowerOff => RunEnd::PoweredOff,
                VcpuOutcome::Failed(msg) => RunEnd::Failed(msg),
            }),
            VmEvent::Signal(name) => self.guest_ended(RunEnd::Signal(name)),
            VmEvent::ConsoleQuit => self.guest_ended(RunEnd::ConsoleQuit),
            // Events of a receive that is over are not for a running VM.
            VmEvent::IncomingFinished
            | VmEvent::IncomingListening(_)
            | VmEvent::IncomingStarted(_)
            | VmEvent::IncomingCommitted
            | VmEvent::IncomingWaitingForDisks(_) => None,
        }
    }

    /// Where a migration's commit stands, if it has committed: the destination is asked to
    /// confirm (`Some(None)`), or did not in time (`Some(Some(why))`).
    fn commit_pending(&self) -> Option<Option<&str>> {
        if let Some(u) = &self.unknown {
            return Some(Some(&u.why));
        }
        match &self.migration {
            Some(m) if m.canceller.is_committed() => Some(m.unconfirmed.as_deref()),
            _ => None,
        }
    }

    /// Where the migration that committed went (its worker may be gone already).
    fn committed_to(&self) -> String {
        match (&self.unknown, &self.migration) {
            (Some(u), _) => u.to.clone(),
            (None, Some(m)) => m.to.clone(),
            (None, None) => String::new(),
        }
    }

    /// The guest, a signal or the console ends the VM. During a migration before its commit
    /// the migration is cancelled first (with that reason) and the VM ends once the worker has
    /// given the guest back; after the commit nothing but the operator's request ends it.
    fn guest_ended(&mut self, end: RunEnd) -> Option<RunEnd> {
        if self.commit_pending().is_some() {
            let to = self.committed_to();
            eprintln!(
                "vmm: {} ignored: the migration to {to} has committed and the guest is paused here; `vmm stop {}` discards this copy once the destination runs the guest, `vmm resume {} --force` resumes it here if the destination does not",
                end.describe(&self.machine.config.name),
                self.machine.config.name,
                self.machine.config.name
            );
            return None;
        }
        let Some(m) = &mut self.migration else {
            return Some(end);
        };
        let reason = end.describe(&self.machine.config.name);
        match m.canceller.cancel_because(reason.clone()) {
            Ok(()) => {
                log::warn!(
                    "{reason}: cancelling the migration to {}, then stopping",
                    m.to
                );
                if m.then.is_none() {
                    m.then = Some(AfterCancel::End(end));
                }
                None
            }
            Err(e) => {
                log::warn!("{reason}: ignored: {e}");
                None
            }
        }
    }

    fn state(&self) -> ApiVmState {
        if self.paused || self.commit_pending().is_some() {
            ApiVmState::Paused
        } else {
            ApiVmState::Running
        }
    }

    /// Requests while a migration has committed, as far as the admission table lets them
    /// through: only the operator's explicit decision (a forced resume, or a stop once the
    /// outcome is unknown) changes anything.
    fn request_after_commit(&mut self, request: ApiRequest, reply: Responder) -> Option<RunEnd> {
        let name = self.machine.config.name.clone();
        match request {
            ApiRequest::VmInfo => respond(reply, ApiResponse::json(&self.info())),
            ApiRequest::VmResume { force: true } => match self.force_resume() {
                Ok(()) => respond(reply, ApiResponse::no_content()),
                Err(e) => respond(reply, ApiResponse::from_error(405, &e)),
            },
            ApiRequest::VmmShutdown | ApiRequest::VmShutdown => {
                // The operator's decision: the destination has the guest; this copy goes.
                if let Some(m) = self.migration.take() {
                    m.canceller.abandon();
                }
                eprintln!("vmm: the paused copy of '{name}' is discarded on request (its migration committed)");
                self.ctx.status.finish(
                    MigrationOutcome::Completed,
                    None,
                    Some(
                        "the operator discarded the source's copy after an unconfirmed commit"
                            .into(),
                    ),
                );
                respond(reply, ApiResponse::no_content());
                return Some(if request == ApiRequest::VmmShutdown {
                    RunEnd::StopRequested
                } else {
                    RunEnd::ShutdownRequested
                });
            }
            other => respond(reply, not_admitted(&other)),
        }
        None
    }

    /// `vm.resume` with `force` after an unconfirmed commit: takes every disk back (refused,
    /// and the disks let go again, while another process holds one: the destination has the
    /// guest), stops the worker's wait, and runs the guest here again.
    fn force_resume(&mut self) -> Result<(), NotResumed> {
        if let Err(source) = self.machine.acquire_backends() {
            self.machine.release_backends();
            return Err(NotResumed {
                name: self.machine.config.name.clone(),
                source,
            });
        }
        let to = self.committed_to();
        if let Some(m) = self.migration.take() {
            m.canceller.abandon();
        }
        self.unknown = None;
        self.machine.resume_all();
        self.paused = false;
        eprintln!(
            "vmm: guest '{}' resumed here on request after its unconfirmed migration to {to}",
            self.machine.config.name
        );
        self.ctx.status.finish(
            MigrationOutcome::Failed,
            None,
            Some(format!(
                "committed to {to} without a confirmation; the operator resumed the guest on the source"
            )),
        );
        self.ctx.monitor.emit("vm", "resumed", None);
        Ok(())
    }

    fn request(&mut self, request: ApiRequest, reply: Responder) -> Option<RunEnd> {
        let name = self.machine.config.name.clone();
        let committed = self.commit_pending().map(|u| u.is_some());
        let phase = match committed {
            Some(unconfirmed) => Phase::Committed {
                name: &name,
                unconfirmed,
            },
            None => Phase::Running {
                paused: self.paused,
                migrating: self.migration.is_some(),
                bootable: self.machine.config.has_kernel(),
            },
        };
        if let Some(answer) = admission::refusal(&phase, &request) {
            respond(reply, answer);
            return None;
        }
        if committed.is_some() {
            return self.request_after_commit(request, reply);
        }
        let m = &self.machine;
        match request {
            ApiRequest::VmInfo => respond(reply, ApiResponse::json(&self.info())),
            ApiRequest::VmPause => match m.vcpus.pause() {
                Ok(()) => {
                    self.paused = true;
                    self.ctx.monitor.emit("vm", "paused", None);
                    respond(reply, ApiResponse::no_content());
                }
                Err(e) => respond(reply, ApiResponse::error(500, format!("pause failed: {e}"))),
            },
            ApiRequest::VmResume { .. } => {
                let _ = m.vcpus.on_each(|_, fd| fd.kvmclock_ctrl());
                m.vcpus.resume();
                self.paused = false;
                self.ctx.monitor.emit("vm", "resumed", None);
                respond(reply, ApiResponse::no_content());
            }
            ApiRequest::VmmShutdown | ApiRequest::VmShutdown => {
                let end = if request == ApiRequest::VmmShutdown {
                    RunEnd::StopRequested
                } else {
                    RunEnd::ShutdownRequested
                };
                match &mut self.migration {
                    None => {
                        respond(reply, ApiResponse::no_content());
                        return Some(end);
                    }
                    // A migration is cancelled first: the guest must be back before it stops.
                    Some(active) => match active.canceller.cancel() {
                        Ok(()) => active.then = Some(AfterCancel::Request(reply, end)),
                        Err(e) => respond(
                            reply,
                            ApiResponse::not_now(format!("cannot stop the VM now: {e}")),
                        ),
                    },
                }
            }
            ApiRequest::VmReboot => {
                respond(reply, ApiResponse::no_content());
                return Some(RunEnd::RebootRequested);
            }
            ApiRequest::VmDelete => {
                respond(reply, ApiResponse::no_content());
                return Some(RunEnd::DeleteRequested);
            }
            ApiRequest::SendMigration(req) => {
                let to = req.destination_url.clone();
                let reporting = Reporting {
                    status: self.ctx.status.clone(),
                    monitor: self.ctx.monitor.clone(),
                };
                match crate::migrate::worker::start(
                    m.clone(),
                    *req,
                    self.paused,
                    reporting,
                    self.ctx.events.clone(),
                ) {
                    Ok(canceller) => {
                        self.migration = Some(Active {
                            to,
                            canceller,
                            paused_before: self.paused,
                            cancel_waiters: Vec::new(),
                            then: None,
                            unconfirmed: None,
                        });
                        respond(reply, ApiResponse::no_content());
                    }
                    Err(e) => respond(reply, ApiResponse::from_error(400, &e)),
                }
            }
            ApiRequest::CancelMigration => match &mut self.migration {
                Some(active) => match active.canceller.cancel() {
                    Ok(()) => active.cancel_waiters.push(reply),
                    Err(e) => respond(reply, ApiResponse::not_now(e.to_string())),
                },
                None => respond(reply, not_admitted(&ApiRequest::CancelMigration)),
            },
            other => respond(reply, not_admitted(&other)),
        }
        None
    }

    fn migration_finished(
        &mut self,
        result: Result<migration::progress::Summary, migration::MigrationError>,
    ) -> Option<RunEnd> {
        let active = self.migration.take()?;
        let (status, monitor) = (&self.ctx.status, &self.ctx.monitor);
        match result {
            Ok(summary) => {
                monitor.emit(
                    "migration",
                    "finished",
                    Some(serde_json::json!({
                        "destination": active.to,
                        "total_seconds": summary.total_seconds,
                        "downtime_ms": summary.downtime_ms,
                        "bytes_sent": summary.bytes_sent,
                    })),
                );
                status.finish(MigrationOutcome::Completed, Some(summary), None);
                for w in active.cancel_waiters {
                    let _ = w.send(ApiResponse::not_now(
                        "the migration completed before the cancel",
                    ));
                }
                if let Some(AfterCancel::Request(r, _)) = active.then {
                    let _ = r.send(ApiResponse::not_now(
                        "the migration completed: the VM left this host",
                    ));
                }
                Some(RunEnd::MigratedAway(active.to))
            }
            Err(e) => {
                let message = crate::error_chain(&e);
                let cancelled = matches!(
                    e,
                    migration::MigrationError::Cancelled | migration::MigrationError::GuestEnded(_)
                );
                let (outcome, event) = if cancelled {
                    (MigrationOutcome::Cancelled, "cancelled")
                } else {
                    (MigrationOutcome::Failed, "failed")
                };
                monitor.emit(
                    "migration",
                    event,
                    Some(serde_json::json!({ "destination": active.to, "error": message })),
                );
                if let migration::MigrationError::CommitUnknown(why) = &e {
                    // Never discarded: paused and intact until the operator decides.
                    status.finish(MigrationOutcome::Unknown, None, Some(message.clone()));
                    monitor.emit(
                        "migration",
                        "unknown",
                        Some(serde_json::json!({ "destination": active.to, "error": message })),
                    );
                    eprintln!("vmm: {message}");
                    for w in active.cancel_waiters {
                        let _ = w.send(ApiResponse::not_now("the migration has committed"));
                    }
                    self.unknown = Some(Unknown {
                        to: active.to,
                        why: why.clone(),
                    });
                    return None;
                }
                status.finish(outcome, None, Some(message));
                log::warn!("migration failed, the guest stays here: {e}");
                self.paused = active.paused_before;
                for w in active.cancel_waiters {
                    let _ = w.send(ApiResponse::no_content());
                }
                match active.then {
                    None => None,
                    Some(AfterCancel::Request(r, end)) => {
                        let _ = r.send(ApiResponse::no_content());
                        Some(end)
                    }
                    Some(AfterCancel::End(end)) => Some(end),
                }
            }
        }
    }

    fn info(&self) -> ApiVmInfo {
        let c = &self.machine.config;
        ApiVmInfo {
            config: Some(ApiVmConfig::from_config(c, &self.ctx.serial)),
            state: self.state(),
            memory_actual_size: Some(c.memory_bytes),
            name: c.name.clone(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs_f64(),
            migration: match (&self.migration, &self.unknown) {
                (_, Some(u)) => Some(MigrationInfo {
                    role: MigrationRole::Sending,
                    address: u.to.clone(),
                    outcome: Some("unknown".into()),
                    detail: Some(u.why.clone()),
                }),
                (Some(m), None) => Some(MigrationInfo {
                    role: MigrationRole::Sending,
                    address: m.to.clone(),
                    outcome: match (m.canceller.is_committed(), &m.unconfirmed) {
                        (_, Some(_)) => Some("unknown".into()),
                        (true, None) => Some("committed".into()),
                        (false, None) => None,
                    },
                    detail: m.unconfirmed.clone(),
                }),
                (None, None) => None,
            },
        }
    }
}
