//! `vmm run`: builds the VM (or receives it from a migration source), publishes its control
//! socket, runs the vCPUs and owns the VM until it ends (guest reboot or power-off, a failure,
//! a stop request, a signal, or a completed migration away).

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::config::VmConfig;
use crate::console::{spawn_stdin_forwarder, RawTerminal};
use crate::control::protocol::{Request, Response, VmInfo, VmState};
use crate::control::server::ControlServer;
use crate::event_loop::EventLoop;
use crate::events::VmEvent;
use crate::host::{self, HostKvm};
use crate::machine::Machine;
use crate::migrate::transport::Endpoint;
use crate::paths::{socket_path, NameLock};
use crate::vcpu::{VcpuOutcome, VcpuSet};

pub struct RunOptions {
    pub config: VmConfig,
    pub runtime_dir: PathBuf,
    /// Start a Linux kernel even on a PVM host, where it is emulated.
    pub allow_emulated_kernel: bool,
}

pub struct IncomingOptions {
    pub name: String,
    pub runtime_dir: PathBuf,
    pub listen: Endpoint,
    pub security: migration::channel::DestinationSecurity,
    /// The disks and NICs this destination's operator lets the incoming VM have.
    pub grants: crate::migrate::target::Grants,
}

/// How the VM ended.
#[derive(Debug)]
pub enum RunEnd {
    Rebooted,
    PoweredOff,
    StopRequested,
    Signal(&'static str),
    ConsoleQuit,
    MigratedAway(String),
    Failed(String),
}

impl RunEnd {
    pub fn exit_code(&self) -> u8 {
        match self {
            RunEnd::Failed(_) => 1,
            _ => 0,
        }
    }

    pub fn describe(&self, name: &str) -> String {
        match self {
            RunEnd::Rebooted => format!("guest '{name}' rebooted; the VM has stopped"),
            RunEnd::PoweredOff => format!("guest '{name}' powered off"),
            RunEnd::StopRequested => format!("VM '{name}' stopped on request"),
            RunEnd::Signal(s) => format!("{s} received; VM '{name}' stopped"),
            RunEnd::ConsoleQuit => format!("console escape (Ctrl-A x); VM '{name}' stopped"),
            RunEnd::MigratedAway(to) => {
                format!("VM '{name}' migrated to {to}; it runs there now and this copy has stopped")
            }
            RunEnd::Failed(m) => format!("VM '{name}' failed: {m}"),
        }
    }
}

fn refuse_emulated_linux(opts: &RunOptions) -> anyhow::Result<()> {
    if opts.allow_emulated_kernel || host::detect() != HostKvm::Pvm {
        return Ok(());
    }
    let path = &opts.config.kernel;
    let mut f = std::fs::File::open(path)
        .with_context(|| format!("cannot open kernel {}", path.display()))?;
    if arch::loader::is_linux_kernel(&mut f)? {
        bail!(
            "{} is a Linux kernel, but {}",
            path.display(),
            host::PVM_LINUX_REFUSAL
        );
    }
    Ok(())
}

/// Boots a VM from its kernel and runs it.
pub fn run(opts: RunOptions) -> anyhow::Result<RunEnd> {
    refuse_emulated_linux(&opts)?;
    let config = opts.config.clone();
    let _lock = NameLock::acquire(&opts.runtime_dir, &config.name)?;
    let (tx, rx) = mpsc::channel();
    let built = crate::vm::build(
        &config,
        crate::vm::BuildMode::Boot,
        Box::new(std::io::stdout()),
        tx.clone(),
    )
    .with_context(|| format!("cannot build VM '{}'", config.name))?;
    let (parts, vcpu_contexts, subscribers) = built.split();
    let event_loop = EventLoop::start(subscribers).context("cannot start the device event loop")?;
    let vcpus = VcpuSet::start(vcpu_contexts, false)?;
    let machine = Arc::new(Machine::new(config, parts, vcpus));
    log::info!("VM '{}' running", machine.config.name);
    own(machine, event_loop, &opts.runtime_dir, tx, rx)
}

/// Waits for one incoming migration, then runs the received VM.
pub fn run_incoming(opts: IncomingOptions) -> anyhow::Result<RunEnd> {
    let _lock = NameLock::acquire(&opts.runtime_dir, &opts.name)?;
    let (tx, rx) = mpsc::channel();
    let mut builder = crate::migrate::target::IncomingBuilder {
        name: opts.name.clone(),
        grants: opts.grants,
        events: tx.clone(),
        result: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let outcome = runtime.block_on(async {
        let (mut stream, peer) =
            crate::migrate::transport::accept_secured(&opts.listen, &opts.security, |addr| {
                eprintln!("vmm: waiting for VM '{}' on {addr}", opts.name);
            })
            .await
            .with_context(|| format!("cannot listen on {}", opts.listen))?;
        eprintln!("vmm: migration source {peer} connected");
        migration::receiver::receive(&mut stream, &mut builder)
            .await
            .map_err(anyhow::Error::from)
    });
    if let Err(e) = outcome {
        // The half-built VM (if any) is dropped here: nothing of it survives.
        if let Some(incoming) = builder.result.take() {
            let _ = incoming.machine.vcpus.stop();
        }
        return Err(e.context(format!(
            "incoming migration of '{}' failed; nothing was started here",
            opts.name
        )));
    }
    let incoming = builder.result.take().expect("a received VM");
    eprintln!(
        "vmm: VM '{}' received in {:.2} s and running here",
        opts.name,
        started.elapsed().as_secs_f64()
    );
    own(
        incoming.machine,
        incoming.event_loop,
        &opts.runtime_dir,
        tx,
        rx,
    )
}

/// Publishes the control socket and owns the running VM until it ends.
fn own(
    machine: Arc<Machine>,
    event_loop: EventLoop,
    runtime_dir: &std::path::Path,
    tx: Sender<VmEvent>,
    rx: Receiver<VmEvent>,
) -> anyhow::Result<RunEnd> {
    let name = machine.config.name.clone();
    let socket = socket_path(runtime_dir, &name);
    // We hold the name lock, so a socket file left here belongs to a VM that died: replaced.
    let listener = crate::unix_socket::bind_private(&socket)
        .with_context(|| format!("cannot create control socket {}", socket.display()))?;
    let _socket_cleanup = RemoveOnDrop(socket.clone());
    let server = ControlServer::start(listener, tx.clone())
        .context("cannot start the control socket server")?;
    let raw_terminal = RawTerminal::enable();
    spawn_stdin_forwarder(machine.serial.clone(), tx.clone());
    let started = Instant::now();
    let mut state = VmState::Running;
    let mut migrating_to = String::new();

    let end = loop {
        let Ok(event) = rx.recv() else {
            break RunEnd::Failed("event channel closed".into());
        };
        match event {
            VmEvent::Control(request, reply) => {
                if let Request::Migrate(m) = &request {
                    migrating_to = m.to.clone();
                }
                if let Some(end) =
                    handle_request(request, reply, &machine, &mut state, started, &tx)
                {
                    break end;
                }
            }
            VmEvent::MigrationFinished { result, reply } => match result {
                Ok(summary) => {
                    let _ = reply.send(Response::summary(summary));
                    break RunEnd::MigratedAway(migrating_to);
                }
                Err(e) => {
                    let after_commit = matches!(e, migration::MigrationError::AfterCommit(_));
                    let _ = reply.send(Response::error(crate::error_chain(&e)));
                    if after_commit {
                        break RunEnd::Failed(e.to_string());
                    }
                    log::warn!("migration failed, the guest runs on here: {e}");
                    state = VmState::Running;
                }
            },
            VmEvent::GuestReset => break RunEnd::Rebooted,
            VmEvent::VcpuExited { outcome, .. } => {
                break match outcome {
                    VcpuOutcome::Reset => RunEnd::Rebooted,
                    VcpuOutcome::PowerOff => RunEnd::PoweredOff,
                    VcpuOutcome::Failed(msg) => RunEnd::Failed(msg),
                }
            }
            VmEvent::Signal(name) if state != VmState::Migrating => break RunEnd::Signal(name),
            VmEvent::Signal(name) => {
                log::warn!("{name} ignored: a migration is running (it ends or fails on its own)")
            }
            VmEvent::ConsoleQuit => break RunEnd::ConsoleQuit,
        }
    };

    drop(server);
    drop(raw_terminal);
    if let Err(e) = machine.vcpus.stop() {
        log::error!("{e}");
    }
    drop(event_loop);
    // A vCPU stuck in the kernel may still touch guest memory: keep it mapped until exit.
    std::mem::forget(machine);
    Ok(end)
}

fn handle_request(
    request: Request,
    reply: crate::events::Responder,
    machine: &Arc<Machine>,
    state: &mut VmState,
    started: Instant,
    events: &Sender<VmEvent>,
) -> Option<RunEnd> {
    let answer = |r: Response| {
        let _ = reply.send(r);
    };
    match request {
        Request::Info => answer(Response::info(info(&machine.config, *state, started))),
        Request::Pause => match *state {
            VmState::Paused => answer(Response::ok()),
            VmState::Running => match machine.vcpus.pause() {
                Ok(()) => {
                    *state = VmState::Paused;
                    answer(Response::ok());
                }
                Err(e) => answer(Response::error(format!("pause failed: {e}"))),
            },
            other => answer(Response::error(format!(
                "cannot pause a VM that is {other}"
            ))),
        },
        Request::Resume => match *state {
            VmState::Running => answer(Response::ok()),
            VmState::Paused => {
                let _ = machine.vcpus.on_each(|_, fd| fd.kvmclock_ctrl());
                machine.vcpus.resume();
                *state = VmState::Running;
                answer(Response::ok());
            }
            other => answer(Response::error(format!(
                "cannot resume a VM that is {other}"
            ))),
        },
        Request::Stop if *state == VmState::Migrating => {
            answer(Response::error(
                "a migration is running; it must finish or fail first",
            ));
        }
        Request::Stop => {
            answer(Response::ok());
            return Some(RunEnd::StopRequested);
        }
        Request::Migrate(req) => {
            if *state != VmState::Running && *state != VmState::Paused {
                answer(Response::error(format!(
                    "cannot migrate a VM that is {state}"
                )));
                return None;
            }
            match crate::migrate::worker::start(machine.clone(), req, reply.clone(), events.clone())
            {
                Ok(()) => *state = VmState::Migrating,
                Err(e) => answer(Response::error(e)),
            }
        }
    }
    None
}

fn info(config: &VmConfig, state: VmState, started: Instant) -> VmInfo {
    VmInfo {
        name: config.name.clone(),
        pid: std::process::id(),
        state,
        memory_mib: config.memory_bytes >> 20,
        vcpus: config.vcpus,
        kernel: config.kernel.display().to_string(),
        cmdline: config.cmdline.clone(),
        uptime_secs: started.elapsed().as_secs_f64(),
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
