//! The VMM: CLI-facing operations, VM construction and lifecycle, vCPU threads, the API
//! socket and the console.

pub mod api;
pub mod config;
pub mod console;
pub mod console_client;
pub mod console_output;
pub mod console_pty;
pub mod cpu;
pub mod dirty_log;
pub mod event_loop;
pub mod event_monitor;
pub mod events;
pub mod host;
pub mod machine;
pub mod memory;
pub mod migrate;
pub mod owner;
pub mod paths;
pub mod run;
pub mod unix_socket;
pub mod vcpu;
pub mod vcpu_state;
pub mod vm;
pub mod vm_state;

pub use migration::error_chain;
