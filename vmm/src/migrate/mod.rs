//! The VMM's side of live migration: the source adapter over a running [`Machine`], the
//! destination builder, the state that travels, and the worker that runs a migration.

pub mod security;
pub mod source;
pub mod state;
pub mod status;
pub mod target;
pub mod transport;
pub mod worker;
