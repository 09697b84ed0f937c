//! vCPU threads: each owns its KVM vCPU fd and runs KVM_RUN in a loop, dispatching port I/O
//! and MMIO exits through the bus maps. Pausing: the request is set in the shared gate and
//! every thread is kicked with a signal whose handler sets `immediate_exit`, so a thread in
//! the guest leaves KVM_RUN with EINTR and one about to enter returns at once. A thread whose
//! last exit was port I/O or MMIO first re-enters KVM_RUN with `immediate_exit` set, which
//! completes that instruction in KVM (the API's rule before state is read), then parks; it
//! counts as paused only once parked. A parked thread runs work on its own fd (state save
//! and restore) until resumed or stopped.

use std::cell::Cell;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::Bus;
use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::events::{VcpuOutcome, VmEvent};

/// KVM_SYSTEM_EVENT_* types.
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;
const SYSTEM_EVENT_CRASH: u32 = 3;

fn kick_signal() -> i32 {
    SIGRTMIN()
}

thread_local! {
    /// The kvm_run area of the vCPU this thread runs, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: `run` points at this thread's vCPU kvm_run mapping, set before the first
            // KVM_RUN and cleared before the fd is dropped; a byte store is async-signal-safe.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// Installs the kick handler once per process.
pub(crate) fn install_kick_handler() -> std::io::Result<()> {
    static ONCE: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| register_signal_handler(kick_signal(), kick_handler).map_err(|e| e.errno()))
        .map_err(std::io::Error::from_raw_os_error)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    Run,
    Pause,
    Stop,
}

/// Work a paused vCPU thread runs on its own fd (state save and restore: the fd is the thread's).
type Work = Box<dyn FnOnce(&mut VcpuFd) + Send>;

struct Gate {
    request: Request,
    paused: usize,
    exited: usize,
    work: Vec<Option<Work>>,
}

/// Shared run/pause/stop control of all vCPUs of a VM.
pub(crate) struct VcpuControl {
    gate: Mutex<Gate>,
    changed: Condvar,
    /// Share of each 10 ms slice the vCPUs sleep (auto-converge), in percent.
    throttle: std::sync::atomic::AtomicU8,
}

/// Length of the throttling time slice.
const THROTTLE_SLICE: Duration = Duration::from_millis(10);

impl VcpuControl {
    fn new(count: usize, start_paused: bool) -> Arc<Self> {
        let request = if start_paused {
            Request::Pause
        } else {
            Request::Run
        };
        Arc::new(VcpuControl {
            gate: Mutex::new(Gate {
                request,
                paused: 0,
                exited: 0,
                work: (0..count).map(|_| None).collect(),
            }),
            changed: Condvar::new(),
            throttle: std::sync::atomic::AtomicU8::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Everything one vCPU thread needs.
pub(crate) struct VcpuContext {
    pub(crate) index: u8,
    pub(crate) fd: VcpuFd,
    pub(crate) pio: Arc<Bus>,
    pub(crate) mmio: Arc<Bus>,
    pub(crate) events: Sender<VmEvent>,
}

/// The running vCPU threads of a VM.
pub(crate) struct VcpuSet {
    control: Arc<VcpuControl>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    count: usize,
    throttler: Mutex<Option<(Arc<std::sync::atomic::AtomicBool>, JoinHandle<()>)>>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum VcpuError {
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] std::io::Error),
    #[error("cannot start the thread of vCPU {0}")]
    Spawn(u8, #[source] std::io::Error),
    #[error("vCPUs did not stop within {0:?}")]
    Timeout(Duration),
    #[error("vCPU {0} ended before it could run the request")]
    Gone(u8),
}

impl VcpuSet {
    /// Starts one thread per vCPU; they begin running the guest at once, or park paused
    /// (a migration destination restores their state first).
    pub(crate) fn start(contexts: Vec<VcpuContext>, start_paused: bool) -> Result<Self, VcpuError> {
        install_kick_handler().map_err(VcpuError::Signal)?;
        let count = contexts.len();
        let control = VcpuControl::new(count, start_paused);
        let mut threads = Vec::new();
        for ctx in contexts {
            let index = ctx.index;
            let control = control.clone();
            let t = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Vcpu);
                    vcpu_thread(ctx, control)
                })
                .map_err(|e| VcpuError::Spawn(index, e))?;
            threads.push(t);
        }
        let set = VcpuSet {
            control,
            threads: Mutex::new(threads),
            count,
            throttler: Mutex::new(None),
        };
        if start_paused {
            set.wait_parked(Duration::from_secs(10))?;
        }
        Ok(set)
    }

    fn kick_all(&self) {
        for t in self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            // A thread that already exited cannot be signalled; that is fine.
            let _ = t.kill(kick_signal());
        }
    }

    /// Waits until every vCPU that is still alive is parked in the paused state.
    fn wait_parked(&self, timeout: Duration) -> Result<(), VcpuError> {
        let deadline = Instant::now() + timeout;
        let mut gate = self.control.lock();
        while gate.paused + gate.exited < self.count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(VcpuError::Timeout(timeout));
            }
            // Re-kick periodically: a kick that landed between the gate check and KVM_RUN is
            // covered by immediate_exit, but a thread blocked elsewhere may need another one.
            let (g, _) = self
                .control
                .changed
                .wait_timeout(gate, left.min(Duration::from_millis(50)))
                .unwrap_or_else(|e| e.into_inner());
            gate = g;
            if gate.paused + gate.exited < self.count {
                drop(gate);
                self.kick_all();
                gate = self.control.lock();
            }
        }
        Ok(())
    }

    /// Stops all vCPUs in guest mode; returns once each has left KVM_RUN.
    pub(crate) fn pause(&self) -> Result<(), VcpuError> {
        self.control.lock().request = Request::Pause;
        self.kick_all();
        self.wait_parked(Duration::from_secs(10))
    }

    pub(crate) fn resume(&self) {
        self.control.lock().request = Request::Run;
        self.control.changed.notify_all();
    }

    /// Ends every vCPU thread and joins them.
    pub(crate) fn stop(&self) -> Result<(), VcpuError> {
        self.throttle(0);
        self.control.lock().request = Request::Stop;
        self.control.changed.notify_all();
        self.kick_all();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.control.lock().exited == self.count {
                break;
            }
            if Instant::now() > deadline {
                return Err(VcpuError::Timeout(Duration::from_secs(10)));
            }
            self.kick_all();
            std::thread::sleep(Duration::from_millis(5));
        }
        for t in self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = t.join();
        }
        Ok(())
    }

    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Runs `f` on every vCPU's own thread, with its fd, and returns the results in vCPU
    /// order. The vCPUs must be paused.
    pub(crate) fn on_each<T, F>(&self, f: F) -> Result<Vec<T>, VcpuError>
    where
        T: Send + 'static,
        F: Fn(u8, &mut VcpuFd) -> T + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let mut gate = self.control.lock();
            for i in 0..self.count {
                let f = f.clone();
                let tx = tx.clone();
                gate.work[i] = Some(Box::new(move |fd: &mut VcpuFd| {
                    let _ = tx.send((i, f(i as u8, fd)));
                }));
            }
        }
        self.control.changed.notify_all();
        drop(tx);
        let mut out: Vec<Option<T>> = (0..self.count).map(|_| None).collect();
        for _ in 0..self.count {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok((i, v)) => out[i] = Some(v),
                Err(_) => break,
            }
        }
        out.into_iter()
            .enumerate()
            .map(|(i, v)| v.ok_or(VcpuError::Gone(i as u8)))
            .collect()
    }

    /// Makes the vCPUs sleep `percent` of every 10 ms slice (0 stops throttling): a kicker
    /// thread interrupts them each slice, and each sleeps its share before re-entering the guest.
    pub(crate) fn throttle(&self, percent: u8) {
        let percent = percent.min(99);
        self.control
            .throttle
            .store(percent, std::sync::atomic::Ordering::SeqCst);
        let mut throttler = self.throttler.lock().unwrap_or_else(|e| e.into_inner());
        if percent == 0 {
            if let Some((stop, t)) = throttler.take() {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
                let _ = t.join();
            }
            return;
        }
        if throttler.is_some() {
            return;
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pthreads: Vec<libc::pthread_t> = {
            use std::os::unix::thread::JoinHandleExt;
            self.threads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|t| t.as_pthread_t())
                .collect()
        };
        let flag = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("throttle".into())
            .spawn(move || {
                crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Helper);
                while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                    for t in &pthreads {
                        // SAFETY: signalling our own vCPU threads, which outlive this thread
                        // (stop() ends throttling before joining them).
                        unsafe { libc::pthread_kill(*t, kick_signal()) };
                    }
                    std::thread::sleep(THROTTLE_SLICE);
                }
            });
        if let Ok(t) = spawned {
            *throttler = Some((stop, t));
        }
    }
}

fn vcpu_thread(mut ctx: VcpuContext, control: Arc<VcpuControl>) {
    KVM_RUN.with(|p| p.set(ctx.fd.get_kvm_run() as *mut kvm_run));
    let outcome = run_loop(&mut ctx, &control);
    KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
    {
        let mut gate = control.lock();
        gate.exited += 1;
        control.changed.notify_all();
    }
    if let Some(outcome) = outcome {
        let _ = ctx.events.send(VmEvent::VcpuExited { outcome });
    }
}

/// Runs the guest until a stop request (None) or a guest/KVM event that ends the VM.
fn run_loop(ctx: &mut VcpuContext, control: &VcpuControl) -> Option<VcpuOutcome> {
    // The last exit was port I/O or MMIO, handled here but not yet completed in KVM: the
    // instruction finishes (an IN's data lands in its register, RIP moves past it) only in
    // the next KVM_RUN.
    let mut io_pending = false;
    loop {
        // This pass only completes the pending I/O of a vCPU asked to pause: the KVM API's
        // rule before a vCPU's state is read is a KVM_RUN that returns at once
        // (immediate_exit), so a saved RIP never points at an I/O instruction the destination
        // would run again.
        let completing;
        {
            let mut gate = control.lock();
            completing = gate.request == Request::Pause && io_pending;
            if completing {
                ctx.fd.set_kvm_immediate_exit(1);
            } else if gate.request == Request::Pause {
                gate.paused += 1;
                control.changed.notify_all();
                while gate.request == Request::Pause {
                    if let Some(work) = gate.work[ctx.index as usize].take() {
                        drop(gate);
                        work(&mut ctx.fd);
                        gate = control.lock();
                        continue;
                    }
                    gate = control
                        .changed
                        .wait(gate)
                        .unwrap_or_else(|e| e.into_inner());
                }
                gate.paused -= 1;
            }
            if gate.request == Request::Stop {
                return None;
            }
        }
        match ctx.fd.run() {
            Ok(exit) => {
                io_pending = is_io(&exit);
                if let Some(outcome) = handle_exit(exit, &ctx.pio, &ctx.mmio) {
                    return Some(failed_with_rip(ctx, outcome));
                }
                if completing {
                    ctx.fd.set_kvm_immediate_exit(0);
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // KVM finished the last exit's instruction before it returned.
                io_pending = false;
                ctx.fd.set_kvm_immediate_exit(0);
                let throttle = control.throttle.load(std::sync::atomic::Ordering::Relaxed);
                if throttle > 0 && !completing {
                    std::thread::sleep(THROTTLE_SLICE * u32::from(throttle) / 100);
                }
            }
            Err(e) => {
                let step = if completing {
                    " (completing I/O before a pause)"
                } else {
                    ""
                };
                return Some(VcpuOutcome::Failed(format!(
                    "vCPU {}: KVM_RUN{step} failed: {e}",
                    ctx.index
                )));
            }
        }
    }
}

/// Whether KVM completes this exit's instruction only in the next KVM_RUN.
fn is_io(exit: &VcpuExit<'_>) -> bool {
    matches!(
        exit,
        VcpuExit::IoIn(..) | VcpuExit::IoOut(..) | VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..)
    )
}

/// A failure, with where the vCPU was.
fn failed_with_rip(ctx: &VcpuContext, outcome: VcpuOutcome) -> VcpuOutcome {
    match outcome {
        VcpuOutcome::Failed(msg) => VcpuOutcome::Failed(describe_failure(&ctx.fd, ctx.index, &msg)),
        other => other,
    }
}

fn handle_exit(exit: VcpuExit<'_>, pio: &Bus, mmio: &Bus) -> Option<VcpuOutcome> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !pio.read(u64::from(port), data) {
                // An empty ISA port floats high.
                data.fill(0xff);
            }
        }
        VcpuExit::IoOut(port, data) => {
            pio.write(u64::from(port), data);
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio.read(addr, data) {
                data.fill(0xff);
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            mmio.write(addr, data);
        }
        // With the in-kernel irqchip KVM handles HLT itself; if it returns anyway, re-enter.
        VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => {}
        VcpuExit::Shutdown => {
            return Some(VcpuOutcome::Failed(
                "the guest triple-faulted (KVM_EXIT_SHUTDOWN)".into(),
            ));
        }
        VcpuExit::SystemEvent(kind, _) => {
            return Some(match kind {
                SYSTEM_EVENT_RESET => VcpuOutcome::Reset,
                SYSTEM_EVENT_SHUTDOWN => VcpuOutcome::PowerOff,
                SYSTEM_EVENT_CRASH => VcpuOutcome::Failed(
                    "the guest reported a crash (KVM_SYSTEM_EVENT_CRASH)".into(),
                ),
                other => VcpuOutcome::Failed(format!("unknown KVM system event {other}")),
            });
        }
        VcpuExit::FailEntry(reason, cpu) => {
            return Some(VcpuOutcome::Failed(format!(
                "KVM could not enter the guest (KVM_EXIT_FAIL_ENTRY, hardware reason {reason:#x}, cpu {cpu})"
            )));
        }
        VcpuExit::InternalError => {
            return Some(VcpuOutcome::Failed("KVM internal error (KVM_EXIT_INTERNAL_ERROR), often an instruction KVM cannot emulate".into()));
        }
        other => {
            return Some(VcpuOutcome::Failed(format!(
                "unexpected vCPU exit {other:?}"
            )));
        }
    }
    None
}

/// Adds where the vCPU was to a failure message.
fn describe_failure(fd: &VcpuFd, index: u8, msg: &str) -> String {
    match fd.get_regs() {
        Ok(r) => format!("vCPU {index}: {msg} at rip {:#x} (rsp {:#x})", r.rip, r.rsp),
        Err(_) => format!("vCPU {index}: {msg}"),
    }
}
