//! One VMM process's life: `run` takes it through its states (empty, created, waiting for an
//! incoming VM, running one, shut down) and answers the API in each; `owner` is the thread
//! that owns a running VM and decides when it ends; `admission` is the one table of which
//! requests each phase takes, asked by both before they serve one. It calls every room below
//! it (migrate, vm, api, events, console); only `cli` calls it.

pub(crate) mod admission;
pub(crate) mod error;
pub(crate) mod owner;
pub(crate) mod run;
