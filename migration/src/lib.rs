//! Live migration: the versioned state envelope, the wire framing, authentication, dirty-page
//! bookkeeping and (in later modules) the sender and receiver state machines, written against
//! traits the VMM implements so the protocol is testable without /dev/kvm.

pub mod auth;
pub mod dirty;
pub mod envelope;
pub mod wire;
