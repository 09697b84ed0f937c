//! Events delivered to the thread that owns a running VM.

use tokio::sync::oneshot;

use crate::api::request::{ApiRequest, ApiResponse};
use crate::vcpu::VcpuOutcome;

/// Where the answer to an API request goes.
pub type Responder = oneshot::Sender<ApiResponse>;

/// Sends an answer; a client that went away does not matter.
pub fn respond(reply: Responder, answer: ApiResponse) {
    let _ = reply.send(answer);
}

pub enum VmEvent {
    /// An API request and where to send its answer.
    Api(ApiRequest, Responder),
    /// The destination did not confirm the commit in time: the outcome is unknown.
    MigrationUnconfirmed(String),
    /// The migration worker finished (the VM left, it failed before the commit and the guest
    /// runs here again, or it committed without a confirmation and the guest stays paused).
    MigrationFinished(Result<migration::progress::Summary, migration::MigrationError>),
    /// The guest wrote the reset command to the i8042 controller.
    GuestReset,
    /// A vCPU thread ended on its own.
    VcpuExited { index: u8, outcome: VcpuOutcome },
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
    /// A waiting destination's receive ended: the VM it received, or why nothing was started.
    IncomingFinished(Box<Result<crate::migrate::target::Incoming, anyhow::Error>>),
}

/// An [`devices::Interrupt`] that posts a fixed event to the VM's owner.
pub struct EventLine {
    tx: std::sync::mpsc::Sender<VmEvent>,
    make: fn() -> VmEvent,
}

impl EventLine {
    pub fn new(tx: std::sync::mpsc::Sender<VmEvent>, make: fn() -> VmEvent) -> Self {
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
