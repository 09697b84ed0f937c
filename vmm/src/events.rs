//! Events delivered to the thread that owns a VM (or an empty VMM): from its vCPUs, its
//! devices' lines (the guest's reset), the console, the API server and the process's signals.
//! Defined below every room that posts them; they carry only what is defined at or below
//! here (an incoming VM's result travels in its thread's `JoinHandle`, not in an event).

use crate::api::request::{ApiRequest, Responder};
use crate::api::server::RequestSink;

/// What ended a vCPU's run loop.
#[derive(Debug)]
pub(crate) enum VcpuOutcome {
    /// The guest asked for a reset (i8042, KVM system event) or power-off.
    Reset,
    PowerOff,
    /// The guest or KVM failed; the message says how.
    Failed(String),
}

pub(crate) enum VmEvent {
    /// An API request and where to send its answer.
    Api(ApiRequest, Responder),
    /// The destination did not confirm the commit in time: the outcome is unknown.
    MigrationUnconfirmed(String),
    /// The migration worker finished (the VM left, it failed before the commit and the guest
    /// runs here again, or it committed without a confirmation and the guest stays paused).
    MigrationFinished(Box<Result<migration::progress::Summary, migration::MigrationError>>),
    /// The guest wrote the reset command to the i8042 controller.
    GuestReset,
    /// A vCPU thread ended on its own.
    VcpuExited { outcome: VcpuOutcome },
    /// SIGINT, SIGTERM or SIGHUP reached the process.
    Signal(&'static str),
    /// The console user typed the escape sequence (Ctrl-A x).
    ConsoleQuit,
    /// A destination's listener is bound: the address it shows.
    IncomingListening(String),
    /// A source connected and authenticated: the VM is being received.
    IncomingStarted(String),
    /// The incoming VM was committed: it is this host's now, whatever happens.
    IncomingCommitted,
    /// The committed VM waits for a disk another process still holds.
    IncomingWaitingForDisks(String),
    /// A waiting destination's receive ended; its thread's result says with what (the VM it
    /// received, or why nothing was started).
    IncomingFinished,
}

/// An [`devices::Interrupt`] that posts a fixed event to the VM's owner.
pub(crate) struct EventLine {
    tx: std::sync::mpsc::Sender<VmEvent>,
    make: fn() -> VmEvent,
}

impl EventLine {
    pub(crate) fn new(tx: std::sync::mpsc::Sender<VmEvent>, make: fn() -> VmEvent) -> Self {
        EventLine { tx, make }
    }
}

impl devices::Interrupt for EventLine {
    fn trigger(&self) -> std::io::Result<()> {
        self.tx.send((self.make)()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the VM owner has gone")
        })
    }
}

/// The API server hands its requests and the process's signals to the owner as events.
impl RequestSink for std::sync::mpsc::Sender<VmEvent> {
    fn request(&self, request: ApiRequest, reply: Responder) -> bool {
        self.send(VmEvent::Api(request, reply)).is_ok()
    }

    fn signal(&self, name: &'static str) -> bool {
        self.send(VmEvent::Signal(name)).is_ok()
    }
}
