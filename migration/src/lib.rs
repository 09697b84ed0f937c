//! Live migration: the secured channel, the versioned state envelope, the wire framing, dirty-page
//! bookkeeping, and the sender and receiver state machines, written against the [`vm`] traits
//! the VMM implements, so the protocol is testable without /dev/kvm.

pub mod cancel;
pub mod channel;
pub mod deadline;
pub mod dirty;
pub mod envelope;
pub mod faults;
pub mod key;
mod lanes;
pub mod progress;
pub mod protocol;
pub mod receiver;
pub mod record;
pub mod sender;
pub mod vm;
pub mod wire;

pub use protocol::MigrationError;

/// An error and its sources, joined by ": " (what a log line or a peer should read).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests;
