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

/// An error's message and then each of its sources' (what Cloud Hypervisor's error bodies hold).
pub fn error_messages(e: &dyn std::error::Error) -> Vec<String> {
    let mut messages = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        messages.push(c.to_string());
        cur = c.source();
    }
    messages
}

/// An error and its sources, joined by ": " (what a log line or a peer should read).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    error_messages(e).join(": ")
}

#[cfg(test)]
mod tests;
