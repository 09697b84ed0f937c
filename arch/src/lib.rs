//! x86-64 boot plumbing for microVMs: the guest physical memory layout, the Linux zero page
//! (boot_params with its e820 map), the GDT and identity page tables a 64-bit entry needs,
//! the registers a vCPU starts with, CPUID normalisation per vCPU, MSR lists and the MP table.
//!
//! Nothing here owns threads or devices; everything works on a guest memory object and on
//! KVM file descriptors handed in by the caller.

pub mod bootparams;
pub mod cpu_model;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod loader;
pub mod mptable;
pub mod msr;
pub mod paging;
pub mod regs;

pub use layout::MemoryLayout;
