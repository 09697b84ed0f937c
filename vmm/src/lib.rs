//! The VMM, in rooms by plane. Each room's `mod.rs` says what it holds and what it may call;
//! a room calls only the rooms listed below it here, never one above (docs/design.md, "The
//! vmm crate"):
//!
//! ```text
//!   cli          the `vmm` and `cloud-hypervisor` command lines          (calls everything)
//!   lifecycle    one VMM process's states and the owner of a running VM
//!   migrate      the VMM's side of live migration (source, destination, worker)
//!   vm           a VM: assembly, vCPUs, memory, dirty log, device loop, saved state
//!   events       what the owner of a VM is told (by vCPUs, devices, the API, signals)
//!   api          Cloud Hypervisor's REST API: requests, bodies, server, client
//!   console      the serial console's host side: terminal, PTY, output buffer, client
//!   jail         `vmm jail`: namespaces, a root of granted paths, cgroup, rlimits
//!   config, paths, unix_socket, event_monitor, seccomp, privileges   the VM's config and host-side plumbing
//! ```

pub mod api;
pub mod cli;
pub mod config;
pub mod console;
pub(crate) mod event_monitor;
pub(crate) mod events;
pub(crate) mod jail;
pub(crate) mod lifecycle;
pub mod migrate;
pub(crate) mod paths;
pub(crate) mod privileges;
pub(crate) mod seccomp;
pub(crate) mod unix_socket;
pub mod vm;

pub(crate) use migration::error_chain;
