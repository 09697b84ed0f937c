//! A VM on this host: its assembly from a config (`assembly`, the one linear place where a VM
//! is put together), the shareable running machine, vCPU threads, guest memory and KVM's
//! dirty log, the device event loop, the guest-visible CPU, and the saved vCPU and VM-wide
//! KVM state. It may call `events` (a vCPU's exit, the guest's reset line), `console`,
//! `config` and the `arch` and `devices` crates; nothing of the API, migration or lifecycle.

pub(crate) mod assembly;
pub mod cpu;
pub(crate) mod dirty_log;
pub(crate) mod event_loop;
pub(crate) mod host;
pub(crate) mod machine;
pub(crate) mod memory;
pub(crate) mod state_error;
pub(crate) mod vcpu;
pub mod vcpu_state;
pub mod vm_state;
