//! Live migration: the secured channel, the versioned state envelope, the wire framing, dirty-page
//! bookkeeping, and the sender and receiver state machines, written against the [`vm`] traits
//! the VMM implements, so the protocol is testable without /dev/kvm.

pub mod cancel;
pub mod channel;
pub mod deadline;
pub mod dirty;
pub mod envelope;
pub mod key;
pub mod progress;
pub mod protocol;
pub mod receiver;
pub mod sender;
pub mod vm;
pub mod wire;

pub use protocol::MigrationError;

#[cfg(test)]
mod tests;
