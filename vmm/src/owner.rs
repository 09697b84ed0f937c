//! The thread that owns a running VM: it answers control requests, runs at most one migration
//! at a time (through the migration worker, which it can cancel), and decides when the VM ends.
//! Concurrency: one plain thread draining the VM's event channel; everything that must not
//! block it (the migration, the control socket's I/O) runs on other threads and reports back
//! as events.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

use migration::cancel::Canceller;

use crate::console::{spawn_stdin_forwarder, RawTerminal};
use crate::control::protocol::{Request, Response, VmInfo, VmState};
use crate::event_loop::EventLoop;
use crate::events::{Responder, VmEvent};
use crate::machine::Machine;
use crate::run::{ControlSocket, RunEnd};
use crate::vcpu::VcpuOutcome;

/// What ends the VM once a migration that is being cancelled has given the guest back.
enum AfterCancel {
    Stop(Responder),
    Signal(&'static str),
}

/// A migration in progress.
struct Active {
    to: String,
    canceller: Canceller,
    /// Running or Paused: what the VM goes back to if the migration does not complete.
    state_before: VmState,
    /// `migrate-cancel` requests, answered once the guest is back.
    cancel_waiters: Vec<Responder>,
    then: Option<AfterCancel>,
}

struct Owner {
    machine: Arc<Machine>,
    state: VmState,
    started: Instant,
    events: Sender<VmEvent>,
    migration: Option<Active>,
}

/// Owns the running VM until it ends. `control` is its control socket, already answering.
pub(crate) fn own(
    machine: Arc<Machine>,
    event_loop: EventLoop,
    control: ControlSocket,
    tx: Sender<VmEvent>,
    rx: Receiver<VmEvent>,
) -> RunEnd {
    let raw_terminal = RawTerminal::enable();
    spawn_stdin_forwarder(machine.serial.clone(), tx.clone());
    let mut owner = Owner {
        machine: machine.clone(),
        state: VmState::Running,
        started: Instant::now(),
        events: tx,
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
    drop(control);
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
            VmEvent::Control(request, reply) => self.request(request, reply),
            VmEvent::MigrationFinished { result, reply } => self.migration_finished(result, reply),
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
            VmEvent::IncomingFinished(_) => None,
        }
    }

    fn request(&mut self, request: Request, reply: Responder) -> Option<RunEnd> {
        let answer = |r: Response| {
            let _ = reply.send(r);
        };
        let m = &self.machine;
        match request {
            Request::Info => answer(Response::info(self.info())),
            Request::Pause => match self.state {
                VmState::Paused => answer(Response::ok()),
                VmState::Running => match m.vcpus.pause() {
                    Ok(()) => {
                        self.state = VmState::Paused;
                        answer(Response::ok());
                    }
                    Err(e) => answer(Response::error(format!("pause failed: {e}"))),
                },
                other => answer(Response::error(format!(
                    "cannot pause a VM that is {other}"
                ))),
            },
            Request::Resume => match self.state {
                VmState::Running => answer(Response::ok()),
                VmState::Paused => {
                    let _ = m.vcpus.on_each(|_, fd| fd.kvmclock_ctrl());
                    m.vcpus.resume();
                    self.state = VmState::Running;
                    answer(Response::ok());
                }
                other => answer(Response::error(format!(
                    "cannot resume a VM that is {other}"
                ))),
            },
            Request::Stop => match &mut self.migration {
                None => {
                    answer(Response::ok());
                    return Some(RunEnd::StopRequested);
                }
                Some(active) => match active.canceller.cancel() {
                    Ok(()) => active.then = Some(AfterCancel::Stop(reply)),
                    Err(e) => answer(Response::error(format!("cannot stop the VM now: {e}"))),
                },
            },
            Request::Migrate(req) => {
                if self.migration.is_some() {
                    answer(Response::error("a migration is already running"));
                    return None;
                }
                if self.state != VmState::Running && self.state != VmState::Paused {
                    answer(Response::error(format!(
                        "cannot migrate a VM that is {}",
                        self.state
                    )));
                    return None;
                }
                let to = req.to.clone();
                let user_paused = self.state == VmState::Paused;
                match crate::migrate::worker::start(
                    m.clone(),
                    *req,
                    user_paused,
                    reply.clone(),
                    self.events.clone(),
                ) {
                    Ok(canceller) => {
                        self.migration = Some(Active {
                            to,
                            canceller,
                            state_before: self.state,
                            cancel_waiters: Vec::new(),
                            then: None,
                        });
                        self.state = VmState::Migrating;
                    }
                    Err(e) => answer(Response::error(e)),
                }
            }
            Request::MigrateCancel => match &mut self.migration {
                None => answer(Response::error("no migration is running")),
                Some(active) => match active.canceller.cancel() {
                    Ok(()) => active.cancel_waiters.push(reply),
                    Err(e) => answer(Response::error(e.to_string())),
                },
            },
        }
        None
    }

    fn migration_finished(
        &mut self,
        result: Result<migration::progress::Summary, migration::MigrationError>,
        reply: Responder,
    ) -> Option<RunEnd> {
        let active = self.migration.take()?;
        match result {
            Ok(summary) => {
                let _ = reply.send(Response::summary(summary));
                for w in active.cancel_waiters {
                    let _ = w.send(Response::error("the migration completed before the cancel"));
                }
                if let Some(AfterCancel::Stop(r)) = active.then {
                    let _ = r.send(Response::error(
                        "the migration completed: the VM left this host",
                    ));
                }
                Some(RunEnd::MigratedAway(active.to))
            }
            Err(e) => {
                let after_commit = matches!(e, migration::MigrationError::AfterCommit(_));
                let _ = reply.send(Response::error(crate::error_chain(&e)));
                if after_commit {
                    return Some(RunEnd::Failed(e.to_string()));
                }
                log::warn!("migration failed, the guest stays here: {e}");
                self.state = active.state_before;
                for w in active.cancel_waiters {
                    let _ = w.send(Response::ok());
                }
                match active.then {
                    None => None,
                    Some(AfterCancel::Stop(r)) => {
                        let _ = r.send(Response::ok());
                        Some(RunEnd::StopRequested)
                    }
                    Some(AfterCancel::Signal(name)) => Some(RunEnd::Signal(name)),
                }
            }
        }
    }

    fn info(&self) -> VmInfo {
        let c = &self.machine.config;
        VmInfo {
            name: c.name.clone(),
            pid: std::process::id(),
            state: self.state,
            memory_mib: c.memory_bytes >> 20,
            vcpus: c.vcpus,
            kernel: c.kernel.display().to_string(),
            cmdline: c.cmdline.clone(),
            uptime_secs: self.started.elapsed().as_secs_f64(),
            address: self.migration.as_ref().map(|m| m.to.clone()),
        }
    }
}
