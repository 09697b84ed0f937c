//! The VMM: CLI-facing operations, VM construction and lifecycle, vCPU threads, the control
//! socket and the console.

pub mod config;
pub mod console;
pub mod control;
pub mod event_loop;
pub mod events;
pub mod host;
pub mod memory;
pub mod paths;
pub mod run;
pub mod vcpu;
pub mod vm;
