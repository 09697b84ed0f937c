//! `vmm run`: builds the VM, publishes its control socket, runs the vCPUs and owns the VM until
//! it ends (guest reboot or power-off, a failure, a stop request or a signal).

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::config::VmConfig;
use crate::console::{spawn_stdin_forwarder, RawTerminal};
use crate::control::protocol::{Request, Response, VmInfo, VmState};
use crate::control::server::ControlServer;
use crate::event_loop::EventLoop;
use crate::events::VmEvent;
use crate::host::{self, HostKvm};
use crate::paths::{socket_path, NameLock};
use crate::vcpu::{VcpuOutcome, VcpuSet};

pub struct RunOptions {
    pub config: VmConfig,
    pub runtime_dir: PathBuf,
    /// Start a Linux kernel even on a PVM host, where it is emulated.
    pub allow_emulated_kernel: bool,
}

/// How the VM ended.
#[derive(Debug)]
pub enum RunEnd {
    Rebooted,
    PoweredOff,
    StopRequested,
    Signal(&'static str),
    ConsoleQuit,
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
            RunEnd::Failed(m) => format!("VM '{name}' failed: {m}"),
        }
    }
}

fn refuse_emulated_linux(opts: &RunOptions) -> anyhow::Result<()> {
    if opts.allow_emulated_kernel || host::detect() != HostKvm::Pvm {
        return Ok(());
    }
    let path = &opts.config.kernel;
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open kernel {}", path.display()))?;
    if arch::loader::is_linux_kernel(&mut f)? {
        bail!("{} is a Linux kernel, but {}", path.display(), host::PVM_LINUX_REFUSAL);
    }
    Ok(())
}

pub fn run(opts: RunOptions) -> anyhow::Result<RunEnd> {
    let config = &opts.config;
    refuse_emulated_linux(&opts)?;
    let _lock = NameLock::acquire(&opts.runtime_dir, &config.name)?;
    let socket = socket_path(&opts.runtime_dir, &config.name);
    // We hold the name lock, so a socket file left here belongs to a VM that died.
    let _ = std::fs::remove_file(&socket);

    let (tx, rx) = mpsc::channel();
    let built = crate::vm::build(config, Box::new(std::io::stdout()), tx.clone())
        .with_context(|| format!("cannot build VM '{}'", config.name))?;
    let listener = UnixListener::bind(&socket).with_context(|| format!("cannot create control socket {}", socket.display()))?;
    let _socket_cleanup = RemoveOnDrop(socket.clone());
    let server = ControlServer::start(listener, tx.clone()).context("cannot start the control socket server")?;

    let raw_terminal = RawTerminal::enable();
    spawn_stdin_forwarder(built.serial.clone(), tx.clone());
    let memory = built.memory;
    let event_loop = EventLoop::start(built.virtio).context("cannot start the device event loop")?;
    let vcpus = VcpuSet::start(built.vcpus)?;
    let started = Instant::now();
    let mut state = VmState::Running;
    log::info!("VM '{}' running: {} vCPUs, {} MiB", config.name, config.vcpus, config.memory_bytes >> 20);

    let end = loop {
        let Ok(event) = rx.recv() else { break RunEnd::Failed("event channel closed".into()) };
        match event {
            VmEvent::Control(request, reply) => {
                let (response, end) = handle_request(request, config, &vcpus, &mut state, started);
                let _ = reply.send(response);
                if let Some(end) = end {
                    break end;
                }
            }
            VmEvent::GuestReset => break RunEnd::Rebooted,
            VmEvent::VcpuExited { outcome, .. } => {
                break match outcome {
                    VcpuOutcome::Reset => RunEnd::Rebooted,
                    VcpuOutcome::PowerOff => RunEnd::PoweredOff,
                    VcpuOutcome::Failed(msg) => RunEnd::Failed(msg),
                }
            }
            VmEvent::Signal(name) => break RunEnd::Signal(name),
            VmEvent::ConsoleQuit => break RunEnd::ConsoleQuit,
        }
    };

    drop(server);
    drop(raw_terminal);
    if let Err(e) = vcpus.stop() {
        // A vCPU stuck in the kernel may still touch guest memory: keep it mapped until exit.
        std::mem::forget(memory);
        log::error!("{e}");
    }
    drop(event_loop);
    Ok(end)
}

fn handle_request(
    request: Request,
    config: &VmConfig,
    vcpus: &VcpuSet,
    state: &mut VmState,
    started: Instant,
) -> (Response, Option<RunEnd>) {
    match request {
        Request::Info => (Response::info(info(config, *state, started)), None),
        Request::Pause => match *state {
            VmState::Paused => (Response::ok(), None),
            VmState::Running => match vcpus.pause() {
                Ok(()) => {
                    *state = VmState::Paused;
                    (Response::ok(), None)
                }
                Err(e) => (Response::error(format!("pause failed: {e}")), None),
            },
            other => (Response::error(format!("cannot pause a VM that is {other}")), None),
        },
        Request::Resume => match *state {
            VmState::Running => (Response::ok(), None),
            VmState::Paused => {
                vcpus.resume();
                *state = VmState::Running;
                (Response::ok(), None)
            }
            other => (Response::error(format!("cannot resume a VM that is {other}")), None),
        },
        Request::Stop => (Response::ok(), Some(RunEnd::StopRequested)),
    }
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
