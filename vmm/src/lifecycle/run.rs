//! One VMM process, from its start to its exit: it publishes the API socket, then goes through
//! the VM's life as a small state machine:
//!
//! ```text
//!   Empty --vm.create--> Created --vm.boot--> Running/Paused --(ends)--> Shutdown --vm.boot--> ...
//!   Empty --vm.receive-migration--> Waiting --(source arrives)--> Running
//! ```
//!
//! `vmm run` starts it at Created and boots at once, `vmm run --incoming` starts it waiting;
//! both exit when their VM ends. `vmm --api-socket PATH` starts it empty and stays until
//! `vmm.shutdown` (or a signal), as Cloud Hypervisor does. While a VM runs, [`crate::lifecycle::owner`]
//! owns it. Concurrency: this thread drains the event channel in every state; the API server,
//! the receive and the migration run on their own threads and post events.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::migration_status::MigrationStatus;
use crate::api::request::{respond, Responder};
use crate::api::request::{ApiRequest, ApiResponse};
use crate::api::server::ApiServer;
use crate::api::types::{
    ApiVmConfig, ApiVmInfo, ApiVmState, MigrationInfo, MigrationRole, ReceiveMigration, SerialSink,
};
use crate::config::{self, VmConfig};
use crate::event_monitor::EventMonitor;
use crate::events::VmEvent;
use crate::lifecycle::admission::{self, not_admitted, Phase};
use crate::lifecycle::error::{ReceiveError, ReceiveSpecError, RunError};
use crate::lifecycle::owner::{OwnerContext, RunEnd};
use crate::migrate::target::{Grants, Incoming};
use crate::migrate::transport::Endpoint;
use crate::paths::{socket_path, NameLock};
use crate::unix_socket::ApiSocketAddr;
use crate::vm::event_loop::EventLoop;
use crate::vm::host::{self, HostKvm};
use crate::vm::machine::Machine;
use crate::vm::vcpu::VcpuSet;

/// How long an exiting VMM keeps answering while the outcome of its last migration has not
/// been read, so the client that started the migration (`vmm migrate` polls every 200 ms) can
/// read it.
const OUTCOME_LINGER: Duration = Duration::from_secs(5);

pub(crate) struct VmmOptions {
    /// The VM's name. With `vmm run` it names the API socket and lock in `runtime_dir`; an
    /// empty VMM gives it to a VM created through the API.
    pub(crate) name: String,
    pub(crate) runtime_dir: PathBuf,
    /// The API socket, when not `<runtime_dir>/<name>.sock`.
    pub(crate) api_socket: Option<ApiSocketAddr>,
    pub(crate) monitor: EventMonitor,
    /// Start a Linux kernel even on a PVM host, where it is emulated.
    pub(crate) allow_emulated_kernel: bool,
    /// The serial port of a VM booted or received by this process (`vm.create` gives its own).
    pub(crate) serial: SerialSink,
}

/// Where a VMM process starts.
pub(crate) enum Start {
    /// `vmm --api-socket PATH`: nothing until the API says.
    Empty,
    /// `vmm run`: boot this VM now; the process exits when it ends.
    Boot(Box<VmConfig>),
    /// `vmm run --incoming`: wait for this VM; the process exits when it ends.
    Receive(Box<ReceiveSpec>),
}

/// How to wait for an incoming VM.
pub(crate) struct ReceiveSpec {
    pub(crate) listen: Endpoint,
    pub(crate) security: migration::channel::DestinationSecurity,
    /// How long a read or write on the migration connection may make no progress.
    pub(crate) io_timeout: Duration,
    /// The disks and NICs this destination's operator lets the incoming VM have.
    pub(crate) grants: Grants,
}

impl ReceiveSpec {
    /// The spec of a `vm.receive-migration` request (its fields are the grants).
    pub(crate) fn from_api(
        req: &ReceiveMigration,
        vm_name: &str,
    ) -> Result<Self, ReceiveSpecError> {
        use crate::migrate::security::{self, SecurityOptions};
        let listen = Endpoint::parse(&req.receiver_url)?;
        let security = security::for_destination(
            &SecurityOptions {
                auth_key_file: req.auth_key_file.as_ref().map(Into::into),
                tls_dir: req.tls_dir.as_ref().map(Into::into),
                tls_hostname: None,
                insecure: req.insecure,
            },
            &listen,
        )?;
        if req.insecure {
            if let Some(w) = security::insecure_warning(&listen) {
                eprintln!("vmm: {w}");
            }
        }
        // The grants take the same checks as the devices of a VM created here.
        let (disks, nets) =
            crate::api::types::devices_from_api(req.disks.as_deref(), req.net.as_deref(), vm_name)?;
        if let Some(size) = req.memory_size {
            config::validate_memory(size).map_err(ReceiveSpecError::Memory)?;
        }
        let payload = match &req.payload {
            None => None,
            Some(p) => {
                let kernel = p.kernel.clone().ok_or(ReceiveSpecError::PayloadKernel)?;
                Some(crate::migrate::target::Payload {
                    kernel,
                    initrd: p.initramfs.clone(),
                    cmdline: p
                        .cmdline
                        .clone()
                        .unwrap_or_else(|| config::DEFAULT_CMDLINE.to_string()),
                })
            }
        };
        Ok(ReceiveSpec {
            listen,
            security,
            io_timeout: match req.io_timeout_s {
                None => crate::migrate::transport::DEFAULT_IO_TIMEOUT,
                Some(s) => Duration::from_secs(s.max(1)),
            },
            grants: Grants {
                disks,
                nets,
                memory: req.memory_size,
                payload,
            },
        })
    }
}

fn refuse_emulated_linux(config: &VmConfig, allowed: bool) -> Result<(), RunError> {
    if allowed || host::detect() != HostKvm::Pvm {
        return Ok(());
    }
    let path = &config.kernel;
    let mut f = std::fs::File::open(path).map_err(|e| RunError::KernelOpen(path.clone(), e))?;
    if arch::loader::is_linux_kernel(&mut f).map_err(|e| RunError::KernelRead(path.clone(), e))? {
        return Err(RunError::EmulatedLinux(path.clone()));
    }
    Ok(())
}

/// The VMM's API socket, answering from now on; its file is removed when this is dropped.
struct ApiSocket {
    _server: ApiServer,
    /// The socket file we bound, removed when we end; None for an inherited socket (its
    /// creator owns its path).
    path: Option<PathBuf>,
}

impl ApiSocket {
    fn publish(
        addr: ApiSocketAddr,
        tx: Sender<VmEvent>,
        status: Arc<MigrationStatus>,
    ) -> Result<Self, RunError> {
        let (listener, path) = match addr {
            ApiSocketAddr::Path(path) => {
                // A socket file left here belongs to a VMM that died (the name lock, when
                // there is one, is ours): replaced.
                let listener = crate::unix_socket::bind_private(&path)
                    .map_err(|e| RunError::ApiSocket(path.clone(), e))?;
                (listener, Some(path))
            }
            ApiSocketAddr::Fd(fd) => (crate::unix_socket::inherited_listener(fd)?, None),
        };
        let server = ApiServer::start(listener, tx, status).map_err(RunError::ApiServer)?;
        Ok(ApiSocket {
            _server: server,
            path,
        })
    }
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// What the state machine does next.
enum Next {
    /// Answer requests until one starts something.
    Idle,
    /// Boot the created VM; the request that asked for it, if any, is answered once it runs.
    Boot(Option<Responder>),
    Receive(Box<ReceiveSpec>, Option<Responder>),
    Exit(RunEnd),
}

struct Vmm {
    opts: VmmOptions,
    /// `vmm run`: the process ends with its VM.
    exit_with_vm: bool,
    tx: Sender<VmEvent>,
    rx: Receiver<VmEvent>,
    status: Arc<MigrationStatus>,
    /// The created VM and where its serial output goes.
    created: Option<(VmConfig, SerialSink)>,
    /// The created VM ran and ended.
    shut_down: bool,
}

/// Runs one VMM process until it exits; returns how its (last) VM ended.
pub(crate) fn run(opts: VmmOptions, start: Start) -> Result<RunEnd, RunError> {
    let exit_with_vm = !matches!(start, Start::Empty);
    let _lock = match opts.api_socket {
        None => Some(NameLock::acquire(&opts.runtime_dir, &opts.name)?),
        Some(_) => None,
    };
    let (tx, rx) = mpsc::channel();
    let status = Arc::new(MigrationStatus::default());
    let addr = opts
        .api_socket
        .clone()
        .unwrap_or_else(|| ApiSocketAddr::Path(socket_path(&opts.runtime_dir, &opts.name)));
    let _api = ApiSocket::publish(addr, tx.clone(), status.clone())?;
    opts.monitor.emit("vmm", "starting", None);
    let mut vmm = Vmm {
        opts,
        exit_with_vm,
        tx,
        rx,
        status,
        created: None,
        shut_down: false,
    };
    let mut next = match start {
        Start::Empty => Next::Idle,
        Start::Boot(config) => {
            refuse_emulated_linux(&config, vmm.opts.allow_emulated_kernel)?;
            vmm.created = Some((*config, vmm.opts.serial.clone()));
            Next::Boot(None)
        }
        Start::Receive(spec) => Next::Receive(spec, None),
    };
    loop {
        next = match next {
            Next::Idle => vmm.idle(),
            Next::Boot(reply) => vmm.boot(reply)?,
            Next::Receive(spec, reply) => vmm.receive(*spec, reply)?,
            Next::Exit(end) => {
                vmm.linger();
                vmm.opts.monitor.emit("vmm", "shutdown", None);
                return Ok(end);
            }
        };
    }
}

impl Vmm {
    fn api_state(&self) -> ApiVmState {
        if self.shut_down {
            ApiVmState::Shutdown
        } else {
            ApiVmState::Created
        }
    }

    /// No VM runs: answer until a request (or a signal) starts or ends something.
    fn idle(&mut self) -> Next {
        loop {
            let Ok(event) = self.rx.recv() else {
                return Next::Exit(RunEnd::Failed("event channel closed".into()));
            };
            let (request, reply) = match event {
                VmEvent::Api(request, reply) => (request, reply),
                VmEvent::Signal(s) => return Next::Exit(RunEnd::Signal(s)),
                // Events of a VM that is gone.
                _ => continue,
            };
            let phase = match &self.created {
                None => Phase::Empty,
                Some((config, _)) => Phase::Created {
                    state: self.api_state(),
                    bootable: config.has_kernel(),
                },
            };
            if let Some(answer) = admission::refusal(&phase, &request) {
                respond(reply, answer);
                continue;
            }
            match request {
                ApiRequest::VmmShutdown => {
                    respond(reply, ApiResponse::no_content());
                    return Next::Exit(RunEnd::StopRequested);
                }
                ApiRequest::VmCreate(cfg) => match cfg.to_config(&self.opts.name) {
                    Ok(created) => {
                        self.created = Some(created);
                        self.shut_down = false;
                        self.opts.monitor.emit("vm", "created", None);
                        respond(reply, ApiResponse::no_content());
                    }
                    Err(e) => respond(reply, ApiResponse::from_error(400, &e)),
                },
                ApiRequest::VmBoot => {
                    let config = &self.created.as_ref().expect("checked").0;
                    match refuse_emulated_linux(config, self.opts.allow_emulated_kernel) {
                        Ok(()) => return Next::Boot(Some(reply)),
                        Err(e) => respond(reply, ApiResponse::from_error(400, &e)),
                    }
                }
                ApiRequest::VmInfo => {
                    let (config, serial) = self.created.as_ref().expect("checked");
                    respond(
                        reply,
                        ApiResponse::json(&ApiVmInfo {
                            config: Some(ApiVmConfig::from_config(config, serial)),
                            state: self.api_state(),
                            memory_actual_size: None,
                            name: config.name.clone(),
                            pid: std::process::id(),
                            uptime_secs: 0.0,
                            migration: None,
                        }),
                    )
                }
                ApiRequest::VmAddNet(net) => {
                    let config = &mut self.created.as_mut().expect("checked").0;
                    match crate::api::types::add_net(config, &net) {
                        Ok(added) => respond(reply, ApiResponse::json(&added)),
                        Err(e) => respond(reply, ApiResponse::from_error(400, &e)),
                    }
                }
                ApiRequest::VmAddDisk(disk) => {
                    let config = &mut self.created.as_mut().expect("checked").0;
                    match crate::api::types::add_disk(config, &disk) {
                        Ok(added) => respond(reply, ApiResponse::json(&added)),
                        Err(e) => respond(reply, ApiResponse::from_error(400, &e)),
                    }
                }
                ApiRequest::VmDelete => {
                    self.created = None;
                    self.shut_down = false;
                    self.opts.monitor.emit("vm", "deleted", None);
                    respond(reply, ApiResponse::no_content());
                }
                ApiRequest::ReceiveMigration(req) => {
                    match ReceiveSpec::from_api(&req, &self.opts.name) {
                        Ok(spec) => return Next::Receive(Box::new(spec), Some(reply)),
                        Err(e) => respond(reply, ApiResponse::from_error(400, &e)),
                    }
                }
                other => respond(reply, not_admitted(&other)),
            }
        }
    }

    /// Builds and boots the created VM, then owns it until it ends.
    fn boot(&mut self, reply: Option<Responder>) -> Result<Next, RunError> {
        let (config, serial) = self.created.clone().ok_or(RunError::NoVm)?;
        self.opts.monitor.emit("vm", "booting", None);
        let booted = (|| {
            let console = serial
                .open()
                .map_err(|e| RunError::Serial(format!("{serial:?}"), e))?;
            let built = crate::vm::assembly::build(
                &config,
                crate::vm::assembly::BuildMode::Boot,
                None,
                None,
                console,
                self.tx.clone(),
            )
            .map_err(|e| RunError::Build(config.name.clone(), e))?;
            let (parts, vcpu_contexts, subscribers) = built.split();
            let event_loop = EventLoop::start(subscribers).map_err(RunError::EventLoop)?;
            let vcpus = VcpuSet::start(vcpu_contexts, false)?;
            Ok::<_, RunError>((
                Arc::new(Machine::new(config.clone(), parts, vcpus)),
                event_loop,
            ))
        })();
        let (machine, event_loop) = match booted {
            Ok(b) => b,
            Err(e) => {
                self.opts.monitor.emit(
                    "vm",
                    "boot-failed",
                    Some(serde_json::json!({ "error": crate::error_chain(&e) })),
                );
                match reply {
                    Some(r) => {
                        let _ = r.send(ApiResponse::from_error(500, &e));
                        return Ok(Next::Idle);
                    }
                    None => return Err(e),
                }
            }
        };
        log::info!("VM '{}' running", config.name);
        self.opts.monitor.emit("vm", "booted", None);
        if let Some(r) = reply {
            let _ = r.send(ApiResponse::no_content());
        }
        Ok(self.own(machine, event_loop, serial))
    }

    /// Owns a running VM until it ends, and decides what comes next.
    fn own(&mut self, machine: Arc<Machine>, event_loop: EventLoop, serial: SerialSink) -> Next {
        let ctx = OwnerContext {
            events: self.tx.clone(),
            status: self.status.clone(),
            monitor: self.opts.monitor.clone(),
            serial,
        };
        let bootable = machine.config.has_kernel();
        let end = crate::lifecycle::owner::own(machine, event_loop, ctx, &self.rx);
        let monitor = &self.opts.monitor;
        if !bootable && matches!(end, RunEnd::Rebooted) && !self.exit_with_vm {
            // A received VM boots only what this host's operator granted (nothing was).
            eprintln!("vmm: {}", config::NO_KERNEL_GRANTED);
            monitor.emit(
                "vm",
                "boot-failed",
                Some(serde_json::json!({ "error": config::NO_KERNEL_GRANTED })),
            );
        }
        match &end {
            RunEnd::RebootRequested => {
                monitor.emit("vm", "rebooting", None);
                return Next::Boot(None);
            }
            RunEnd::Rebooted if !self.exit_with_vm && bootable => {
                monitor.emit("vm", "rebooting", None);
                return Next::Boot(None);
            }
            RunEnd::DeleteRequested => {
                monitor.emit("vm", "shutdown", None);
                monitor.emit("vm", "deleted", None);
                self.created = None;
            }
            RunEnd::MigratedAway(_) => {
                monitor.emit("vm", "shutdown", None);
                // The VM runs elsewhere now: booting it here again would run it twice.
                self.created = None;
            }
            _ => monitor.emit("vm", "shutdown", None),
        }
        self.shut_down = true;
        match end {
            RunEnd::StopRequested | RunEnd::Signal(_) => Next::Exit(end),
            end if self.exit_with_vm => Next::Exit(end),
            _ => Next::Idle,
        }
    }

    /// Waits for the VM to arrive, answering requests meanwhile, then owns it.
    fn receive(&mut self, spec: ReceiveSpec, reply: Option<Responder>) -> Result<Next, RunError> {
        let (canceller, token) = migration::cancel::cancel_pair();
        let address = spec.listen.to_string();
        let started = Instant::now();
        let name = self.opts.name.clone();
        // An empty VMM takes the source's name; `vmm run --name N --incoming` wants N.
        let expected_name = self.exit_with_vm.then(|| name.clone());
        let receiver = std::thread::Builder::new()
            .name("incoming".into())
            .spawn({
                let tx = self.tx.clone();
                move || {
                    crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Migration);
                    let result = receive(spec, expected_name, token, tx.clone());
                    let _ = tx.send(VmEvent::IncomingFinished);
                    result
                }
            })
            .map_err(RunError::ReceiveThread)?;
        let mut receiver = Some(receiver);
        let waited = self.wait_for_incoming(&address, &canceller, reply, &mut receiver);
        if let Some(receiver) = receiver {
            let _ = receiver.join();
        }
        let monitor = self.opts.monitor.clone();
        match waited {
            Waited::Received(incoming, stop) => {
                // A stop that came after the commit is an ordinary stop of the running VM:
                // posted again, for the owner to carry out first thing.
                if let Some(stop) = stop {
                    let _ = self.tx.send(match stop {
                        LateStop::Request(r) => VmEvent::Api(ApiRequest::VmmShutdown, r),
                        LateStop::Signal(s) => VmEvent::Signal(s),
                    });
                }
                monitor.emit(
                    "receive",
                    "finished",
                    Some(serde_json::json!({ "seconds": started.elapsed().as_secs_f64() })),
                );
                eprintln!(
                    "vmm: VM '{}' received in {:.2} s and running here",
                    incoming.machine.config.name,
                    started.elapsed().as_secs_f64()
                );
                self.created = Some((incoming.machine.config.clone(), self.opts.serial.clone()));
                self.shut_down = false;
                Ok(self.own(
                    incoming.machine,
                    incoming.event_loop,
                    self.opts.serial.clone(),
                ))
            }
            Waited::Ended(end) => Ok(Next::Exit(end)),
            Waited::Failed(e) => {
                monitor.emit(
                    "receive",
                    "failed",
                    Some(serde_json::json!({ "error": crate::error_chain(&e) })),
                );
                if self.exit_with_vm {
                    return Err(e.into());
                }
                log::error!("{}", crate::error_chain(&e));
                Ok(Next::Idle)
            }
        }
    }

    /// The loop while nothing runs yet: answers requests until the receive ends.
    fn wait_for_incoming(
        &mut self,
        address: &str,
        canceller: &migration::cancel::Canceller,
        mut reply: Option<Responder>,
        receiver: &mut Option<std::thread::JoinHandle<Result<Incoming, ReceiveError>>>,
    ) -> Waited {
        let mut ending: Option<RunEnd> = None;
        // A stop that came after the commit: carried out once the guest runs here.
        let mut stop_when_running: Option<LateStop> = None;
        let mut role = MigrationRole::Waiting;
        let mut committed = false;
        let mut detail: Option<String> = None;
        let mut address = address.to_string();
        loop {
            let Ok(event) = self.rx.recv() else {
                return Waited::Failed(ReceiveError::Thread);
            };
            match event {
                VmEvent::IncomingListening(shown) => {
                    // The address as bound (a port 0 resolved), with the endpoint's scheme.
                    if let Some((scheme, _)) = address.split_once(':') {
                        address = format!("{scheme}:{shown}");
                    }
                    self.opts.monitor.emit(
                        "receive",
                        "ready",
                        Some(serde_json::json!({ "address": address })),
                    );
                    if let Some(r) = reply.take() {
                        let _ = r.send(ApiResponse::no_content());
                    }
                }
                VmEvent::IncomingStarted(peer) => {
                    role = MigrationRole::Receiving;
                    self.opts.monitor.emit(
                        "receive",
                        "started",
                        Some(serde_json::json!({ "source": peer })),
                    );
                }
                VmEvent::IncomingCommitted => committed = true,
                VmEvent::IncomingWaitingForDisks(why) => {
                    eprintln!("vmm: the committed VM waits for its disks: {why}");
                    detail = Some(why);
                }
                VmEvent::IncomingFinished => {
                    // The receiving thread's result: it posts this event as its last act.
                    let result = match receiver.take().map(|r| r.join()) {
                        Some(Ok(result)) => result,
                        _ => Err(ReceiveError::Thread),
                    };
                    return match (result, ending) {
                        (_, Some(end)) => Waited::Ended(end),
                        (Ok(incoming), None) => Waited::Received(incoming, stop_when_running),
                        (Err(e), None) => {
                            if let Some(r) = reply.take() {
                                let _ = r.send(ApiResponse::from_error(400, &e));
                            }
                            Waited::Failed(e)
                        }
                    };
                }
                VmEvent::Api(request, r) => {
                    let phase = Phase::Waiting {
                        name: &self.opts.name,
                        address: &address,
                    };
                    if let Some(answer) = admission::refusal(&phase, &request) {
                        let _ = r.send(answer);
                        continue;
                    }
                    match request {
                        ApiRequest::VmInfo => {
                            let _ = r.send(ApiResponse::json(&ApiVmInfo {
                                config: None,
                                state: ApiVmState::Created,
                                memory_actual_size: None,
                                name: self.opts.name.clone(),
                                pid: std::process::id(),
                                uptime_secs: 0.0,
                                migration: Some(MigrationInfo {
                                    role,
                                    address: address.clone(),
                                    outcome: committed.then(|| "committed".into()),
                                    detail: detail.clone(),
                                }),
                            }));
                        }
                        ApiRequest::VmmShutdown => match canceller.cancel() {
                            Ok(()) => {
                                let _ = r.send(ApiResponse::no_content());
                                ending.get_or_insert(RunEnd::StopRequested);
                            }
                            Err(_) => {
                                eprintln!("vmm: stop requested after the commit: the VM is this host's now; it stops once it runs");
                                stop_when_running = Some(LateStop::Request(r));
                            }
                        },
                        other => {
                            let _ = r.send(not_admitted(&other));
                        }
                    }
                }
                VmEvent::Signal(s) => match canceller.cancel() {
                    Ok(()) => {
                        ending.get_or_insert(RunEnd::Signal(s));
                    }
                    Err(_) => {
                        eprintln!("vmm: {s} after the commit: the VM is this host's now; it stops once it runs");
                        stop_when_running.get_or_insert(LateStop::Signal(s));
                    }
                },
                // Events of a VM being received (it is not running yet) are not for us.
                _ => {}
            }
        }
    }

    /// Before exiting: answer until the last migration's outcome has been read (or for a few
    /// seconds), so `vmm migrate` can print it.
    fn linger(&mut self) {
        let until = Instant::now() + OUTCOME_LINGER;
        while !self.status.outcome_read() && Instant::now() < until {
            match self.rx.recv_timeout(Duration::from_millis(20)) {
                Ok(VmEvent::Api(request, r)) => {
                    match admission::refusal(&Phase::Exiting, &request) {
                        Some(answer) => {
                            let _ = r.send(answer);
                        }
                        // vmm.shutdown: exit now.
                        None => {
                            let _ = r.send(ApiResponse::no_content());
                            return;
                        }
                    }
                }
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

/// A stop that reached a destination after its commit, carried out once the guest runs.
enum LateStop {
    /// `vmm.shutdown`, answered when it is done.
    Request(Responder),
    Signal(&'static str),
}

enum Waited {
    /// The VM runs here; with a stop to carry out at once, if one came after the commit.
    Received(Incoming, Option<LateStop>),
    Ended(RunEnd),
    Failed(ReceiveError),
}

/// Accepts the first authenticated source and receives the VM from it; a stop or a signal
/// (through `token`) discards whatever was received so far.
fn receive(
    spec: ReceiveSpec,
    name: Option<String>,
    mut token: migration::cancel::CancelToken,
    events: Sender<VmEvent>,
) -> Result<Incoming, ReceiveError> {
    let shown_name = name
        .as_ref()
        .map_or_else(|| "a VM".to_string(), |n| format!("VM '{n}'"));
    // With the memory size granted, map and fault the guest's memory in now, while nobody
    // is connected: the migration then writes into memory that is already there.
    let prepared = match spec.grants.memory {
        Some(size) => {
            let mem = crate::vm::memory::create(&arch::MemoryLayout::new(size))
                .map_err(ReceiveError::Memory)?;
            crate::vm::memory::prefault_in_background(&mem, move || {
                eprintln!("vmm: guest memory of {} MiB prepared", size >> 20)
            });
            Some(mem)
        }
        None => None,
    };
    let mut builder = crate::migrate::target::IncomingBuilder {
        name,
        grants: spec.grants,
        prepared,
        events: events.clone(),
        result: None,
    };
    // The extra connections of a migration are read on the runtime's threads, one core each.
    let runtime = crate::migrate::worker::migration_runtime().map_err(ReceiveError::Runtime)?;
    let outcome = runtime.block_on(async {
        let mut listener = crate::migrate::transport::MigrationListener::bind(
            &spec.listen,
            spec.security.clone(),
            spec.io_timeout,
            |addr| {
                eprintln!("vmm: waiting for {shown_name} on {addr}");
                let _ = events.send(VmEvent::IncomingListening(addr.to_string()));
            },
        )
        .await
        .map_err(|e| ReceiveError::Listen(spec.listen.to_string(), e))?;
        let (channel, peer) = tokio::select! {
            next = listener.next() => next.map_err(ReceiveError::Accept)?,
            _ = token.cancelled() => return Err(ReceiveError::Stopped),
        };
        eprintln!("vmm: migration source {peer} connected");
        let _ = events.send(VmEvent::IncomingStarted(peer.to_string()));
        let mut told = |e: migration::receiver::ReceiveEvent<'_>| {
            let _ = events.send(match e {
                migration::receiver::ReceiveEvent::Committed => VmEvent::IncomingCommitted,
                migration::receiver::ReceiveEvent::WaitingForDisks(why) => {
                    VmEvent::IncomingWaitingForDisks(why.to_string())
                }
            });
        };
        // From here the receiver watches the token itself: before the commit a stop
        // discards the VM, after it a stop waits for the guest to run.
        migration::receiver::receive(channel, &mut listener, &mut builder, token, &mut told)
            .await
            .map_err(ReceiveError::from)
    });
    // A flush or lock attempt stuck in the storage must not hold the VM up.
    runtime.shutdown_background();
    if let Err(e) = outcome {
        // The half-built VM (if any) is dropped here: nothing of it survives.
        if let Some(incoming) = builder.result.take() {
            let _ = incoming.machine.vcpus.stop();
        }
        return Err(ReceiveError::Failed(shown_name, Box::new(e)));
    }
    builder.result.take().ok_or(ReceiveError::NoVm)
}
