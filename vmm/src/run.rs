//! `vmm run`: builds the VM (or waits for it to arrive by migration), publishes its control
//! socket, and hands it to its owner thread ([`crate::owner`]) until it ends (guest reboot or
//! power-off, a failure, a stop request, a signal, or a completed migration away).

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::config::VmConfig;
use crate::control::protocol::{Request, Response, VmInfo, VmState};
use crate::control::server::ControlServer;
use crate::event_loop::EventLoop;
use crate::events::VmEvent;
use crate::host::{self, HostKvm};
use crate::machine::Machine;
use crate::migrate::transport::Endpoint;
use crate::paths::{socket_path, NameLock};
use crate::vcpu::VcpuSet;

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
    /// How long a read or write on the migration connection may make no progress.
    pub io_timeout: Duration,
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

/// The VM's control socket, answering from now on; its file is removed when this is dropped.
pub(crate) struct ControlSocket {
    _server: ControlServer,
    path: PathBuf,
}

impl ControlSocket {
    fn publish(
        runtime_dir: &std::path::Path,
        name: &str,
        tx: Sender<VmEvent>,
    ) -> anyhow::Result<Self> {
        let path = socket_path(runtime_dir, name);
        // We hold the name lock, so a socket file left here belongs to a VM that died: replaced.
        let listener = crate::unix_socket::bind_private(&path)
            .with_context(|| format!("cannot create control socket {}", path.display()))?;
        let server =
            ControlServer::start(listener, tx).context("cannot start the control socket server")?;
        Ok(ControlSocket {
            _server: server,
            path,
        })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
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
        None,
        Box::new(std::io::stdout()),
        tx.clone(),
    )
    .with_context(|| format!("cannot build VM '{}'", config.name))?;
    let (parts, vcpu_contexts, subscribers) = built.split();
    let event_loop = EventLoop::start(subscribers).context("cannot start the device event loop")?;
    let vcpus = VcpuSet::start(vcpu_contexts, false)?;
    let machine = Arc::new(Machine::new(config, parts, vcpus));
    log::info!("VM '{}' running", machine.config.name);
    let control = ControlSocket::publish(&opts.runtime_dir, &machine.config.name, tx.clone())?;
    Ok(crate::owner::own(machine, event_loop, control, tx, rx))
}

/// Waits for one incoming migration, then runs the received VM. While it waits, its control
/// socket answers `info` (state "waiting for migration", with the address) and `stop`.
pub fn run_incoming(opts: IncomingOptions) -> anyhow::Result<RunEnd> {
    let _lock = NameLock::acquire(&opts.runtime_dir, &opts.name)?;
    let (tx, rx) = mpsc::channel();
    let control = ControlSocket::publish(&opts.runtime_dir, &opts.name, tx.clone())?;
    let (canceller, token) = migration::cancel::cancel_pair();
    let address = opts.listen.to_string();
    let started = Instant::now();
    let name = opts.name.clone();
    let receiver = std::thread::Builder::new()
        .name("incoming".into())
        .spawn({
            let tx = tx.clone();
            move || {
                let result = receive(opts, token, tx.clone());
                let _ = tx.send(VmEvent::IncomingFinished(Box::new(result)));
            }
        })
        .context("cannot start the incoming-migration thread")?;
    let end = wait_for_incoming(&name, &address, started, &canceller, &rx);
    let _ = receiver.join();
    match end? {
        Waited::Received(incoming) => {
            eprintln!(
                "vmm: VM '{name}' received in {:.2} s and running here",
                started.elapsed().as_secs_f64()
            );
            Ok(crate::owner::own(
                incoming.machine,
                incoming.event_loop,
                control,
                tx,
                rx,
            ))
        }
        Waited::Ended(end) => Ok(end),
    }
}

enum Waited {
    Received(crate::migrate::target::Incoming),
    Ended(RunEnd),
}

/// The owner's loop while nothing runs yet: answers requests until the receive ends.
fn wait_for_incoming(
    name: &str,
    address: &str,
    started: Instant,
    canceller: &migration::cancel::Canceller,
    rx: &Receiver<VmEvent>,
) -> anyhow::Result<Waited> {
    let mut ending: Option<RunEnd> = None;
    loop {
        let Ok(event) = rx.recv() else {
            bail!("event channel closed");
        };
        match event {
            VmEvent::IncomingFinished(result) => {
                return match (*result, ending) {
                    (_, Some(end)) => Ok(Waited::Ended(end)),
                    (Ok(incoming), None) => Ok(Waited::Received(incoming)),
                    (Err(e), None) => Err(e),
                };
            }
            VmEvent::Control(Request::Info, reply) => {
                let _ = reply.send(Response::info(VmInfo {
                    name: name.to_string(),
                    pid: std::process::id(),
                    state: VmState::Waiting,
                    memory_mib: 0,
                    vcpus: 0,
                    kernel: String::new(),
                    cmdline: String::new(),
                    uptime_secs: started.elapsed().as_secs_f64(),
                    address: Some(address.to_string()),
                }));
            }
            VmEvent::Control(Request::Stop, reply) => {
                let _ = canceller.cancel();
                let _ = reply.send(Response::ok());
                ending.get_or_insert(RunEnd::StopRequested);
            }
            VmEvent::Control(_, reply) => {
                let _ = reply.send(Response::error(format!(
                    "VM '{name}' has not arrived yet: this VMM waits for it on {address}"
                )));
            }
            VmEvent::Signal(s) => {
                let _ = canceller.cancel();
                ending.get_or_insert(RunEnd::Signal(s));
            }
            // Events of a VM being received (it is not running yet) are not for us.
            _ => {}
        }
    }
}

/// Accepts the first authenticated source and receives the VM from it; a stop or a signal
/// (through `token`) discards whatever was received so far.
fn receive(
    opts: IncomingOptions,
    mut token: migration::cancel::CancelToken,
    events: Sender<VmEvent>,
) -> anyhow::Result<crate::migrate::target::Incoming> {
    // With the memory size granted, map and fault the guest's memory in now, while nobody
    // is connected: the migration then writes into memory that is already there.
    let prepared = match opts.grants.memory {
        Some(size) => {
            let mem = crate::memory::create(&arch::MemoryLayout::new(size))
                .context("cannot map the guest memory")?;
            crate::memory::prefault_in_background(&mem, move || {
                eprintln!("vmm: guest memory of {} MiB prepared", size >> 20)
            });
            Some(mem)
        }
        None => None,
    };
    let mut builder = crate::migrate::target::IncomingBuilder {
        name: opts.name.clone(),
        grants: opts.grants,
        prepared,
        events,
        result: None,
    };
    // The extra connections of a migration are read on the runtime's threads, one core each.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(crate::migrate::worker::data_threads())
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(async {
        let work = async {
            let mut listener = crate::migrate::transport::MigrationListener::bind(
                &opts.listen,
                opts.security.clone(),
                opts.io_timeout,
                |addr| eprintln!("vmm: waiting for VM '{}' on {addr}", opts.name),
            )
            .await
            .with_context(|| format!("cannot listen on {}", opts.listen))?;
            let (channel, peer) = listener.next().await?;
            eprintln!("vmm: migration source {peer} connected");
            migration::receiver::receive(channel, &mut listener, &mut builder)
                .await
                .map_err(anyhow::Error::from)
        };
        tokio::select! {
            r = work => r,
            _ = token.cancelled() => Err(anyhow::anyhow!("stopped while waiting")),
        }
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
    builder
        .result
        .take()
        .context("the migration ended without a VM")
}
