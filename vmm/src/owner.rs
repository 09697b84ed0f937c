//! The thread that owns a running VM: it answers API requests, runs at most one migration at a
//! time (through the migration worker, which it can cancel), and decides when the VM ends.
//! Concurrency: one plain thread draining the VMM's event channel; everything that must not
//! block it (the migration, the API socket's I/O) runs on other threads and reports back as
//! events.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

use migration::cancel::Canceller;

use crate::api::request::{ApiRequest, ApiResponse};
use crate::api::types::{
    ApiVmConfig, ApiVmInfo, ApiVmState, MigrationInfo, MigrationOutcome, MigrationRole, SerialSink,
};
use crate::console::{spawn_stdin_forwarder, RawTerminal};
use crate::event_loop::EventLoop;
use crate::event_monitor::EventMonitor;
use crate::events::{respond, Responder, VmEvent};
use crate::machine::Machine;
use crate::migrate::status::MigrationStatus;
use crate::migrate::worker::Reporting;
use crate::run::RunEnd;
use crate::vcpu::VcpuOutcome;

/// What ends the VM once a migration that is being cancelled has given the guest back.
enum AfterCancel {
    /// `vmm.shutdown` or `vm.shutdown`: answered once the guest is back, then the VM ends so.
    Request(Responder, RunEnd),
    Signal(&'static str),
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
}

/// What the owner needs besides the VM: where events go and where a migration reports.
pub(crate) struct OwnerContext {
    pub events: Sender<VmEvent>,
    pub status: Arc<MigrationStatus>,
    pub monitor: EventMonitor,
    pub serial: SerialSink,
}

struct Owner {
    machine: Arc<Machine>,
    paused: bool,
    started: Instant,
    ctx: OwnerContext,
    migration: Option<Active>,
}

/// Owns the running VM until it ends.
pub(crate) fn own(
    machine: Arc<Machine>,
    event_loop: EventLoop,
    ctx: OwnerContext,
    rx: &Receiver<VmEvent>,
) -> RunEnd {
    let raw_terminal = (ctx.serial == SerialSink::Stdout).then(RawTerminal::enable);
    if ctx.serial == SerialSink::Stdout {
        spawn_stdin_forwarder(machine.serial.clone(), ctx.events.clone());
    }
    let mut owner = Owner {
        machine: machine.clone(),
        paused: false,
        started: Instant::now(),
        ctx,
        migration: None,
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
    if let Err(e) = machine.vcpus.stop() {
        log::error!("{e}");
    }
    drop(event_loop);
    // A vCPU stuck in the kernel may still touch guest memory: keep it mapped until exit.
    std::mem::forget(machine);
    end
}

impl Owner {
    fn handle(&mut self, event: VmEvent) -> Option<RunEnd> {
        match event {
            VmEvent::Api(request, reply) => self.request(request, reply),
            VmEvent::MigrationFinished(result) => self.migration_finished(result),
            VmEvent::GuestReset => Some(RunEnd::Rebooted),
            VmEvent::VcpuExited { outcome, .. } => Some(match outcome {
                VcpuOutcome::Reset => RunEnd::Rebooted,
                VcpuOutcome::PowerOff => RunEnd::PoweredOff,
                VcpuOutcome::Failed(msg) => RunEnd::Failed(msg),
            }),
            VmEvent::Signal(name) => match &mut self.migration {
                None => Some(RunEnd::Signal(name)),
                Some(m) => {
                    match m.canceller.cancel() {
                        Ok(()) => {
                            log::warn!(
                                "{name}: cancelling the migration to {}, then stopping",
                                m.to
                            );
                            m.then = Some(AfterCancel::Signal(name));
                        }
                        Err(e) => log::warn!("{name} ignored: {e}"),
                    }
                    None
                }
            },
            VmEvent::ConsoleQuit => Some(RunEnd::ConsoleQuit),
            // Events of a receive that is over are not for a running VM.
            VmEvent::IncomingFinished(_)
            | VmEvent::IncomingListening(_)
            | VmEvent::IncomingStarted(_) => None,
        }
    }

    fn state(&self) -> ApiVmState {
        if self.paused {
            ApiVmState::Paused
        } else {
            ApiVmState::Running
        }
    }

    fn request(&mut self, request: ApiRequest, reply: Responder) -> Option<RunEnd> {
        let m = &self.machine;
        let migrating = self.migration.is_some();
        match request {
            ApiRequest::VmInfo => respond(reply, ApiResponse::json(&self.info())),
            ApiRequest::VmPause if migrating => respond(
                reply,
                ApiResponse::not_now("cannot pause a VM that is migrating"),
            ),
            ApiRequest::VmResume if migrating => respond(
                reply,
                ApiResponse::not_now("cannot resume a VM that is migrating"),
            ),
            ApiRequest::VmPause if self.paused => respond(reply, ApiResponse::no_content()),
            ApiRequest::VmPause => match m.vcpus.pause() {
                Ok(()) => {
                    self.paused = true;
                    self.ctx.monitor.emit("vm", "paused", None);
                    respond(reply, ApiResponse::no_content());
                }
                Err(e) => respond(reply, ApiResponse::error(500, format!("pause failed: {e}"))),
            },
            ApiRequest::VmResume if !self.paused => respond(reply, ApiResponse::no_content()),
            ApiRequest::VmResume => {
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
            ApiRequest::VmReboot | ApiRequest::VmDelete if migrating => respond(
                reply,
                ApiResponse::not_now("a migration is running (vm.cancel-migration first)"),
            ),
            ApiRequest::VmReboot => {
                respond(reply, ApiResponse::no_content());
                return Some(RunEnd::RebootRequested);
            }
            ApiRequest::VmDelete => {
                respond(reply, ApiResponse::no_content());
                return Some(RunEnd::DeleteRequested);
            }
            ApiRequest::VmCreate(_) => respond(
                reply,
                ApiResponse::not_now("a VM exists in this VMM already (vm.delete first)"),
            ),
            ApiRequest::VmBoot => respond(reply, ApiResponse::not_now("the VM is running already")),
            ApiRequest::ReceiveMigration(_) => respond(
                reply,
                ApiResponse::not_now("a VM runs in this VMM: it cannot receive another"),
            ),
            ApiRequest::SendMigration(req) => {
                if migrating {
                    respond(
                        reply,
                        ApiResponse::not_now("a migration is already running"),
                    );
                    return None;
                }
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
                        });
                        respond(reply, ApiResponse::no_content());
                    }
                    Err(e) => respond(reply, ApiResponse::bad_request(e)),
                }
            }
            ApiRequest::CancelMigration => match &mut self.migration {
                None => respond(reply, ApiResponse::not_now("no migration is running")),
                Some(active) => match active.canceller.cancel() {
                    Ok(()) => active.cancel_waiters.push(reply),
                    Err(e) => respond(reply, ApiResponse::not_now(e.to_string())),
                },
            },
            // Answered by the server itself; here for completeness.
            ApiRequest::VmmPing | ApiRequest::MigrationProgress => {
                respond(reply, ApiResponse::error(500, "answered by the API server"))
            }
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
                let cancelled = matches!(e, migration::MigrationError::Cancelled);
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
                status.finish(outcome, None, Some(message));
                if matches!(e, migration::MigrationError::AfterCommit(_)) {
                    return Some(RunEnd::Failed(e.to_string()));
                }
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
                    Some(AfterCancel::Signal(name)) => Some(RunEnd::Signal(name)),
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
            migration: self.migration.as_ref().map(|m| MigrationInfo {
                role: MigrationRole::Sending,
                address: m.to.clone(),
            }),
        }
    }
}
