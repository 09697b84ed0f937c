//! The VMM's side of live migration: the source adapter over a running [`Machine`], the
//! destination builder, the state that travels, and the worker that runs a migration. It may
//! call `vm`, `events`, `api` (the bodies it is asked with, the progress it reports), `config`
//! and the `migration` crate (the protocol itself); never `lifecycle` or `cli`.

pub(crate) mod refusal;
pub(crate) mod security;
pub(crate) mod source;
pub mod state;
pub mod target;
pub(crate) mod transport;
pub(crate) mod worker;
