//! The VMM's API: Cloud Hypervisor's REST API (HTTP/1.1, JSON, paths under `/api/v1/`) on the
//! VM's Unix socket, so orchestrators written for Cloud Hypervisor can drive this VMM. The CLI
//! subcommands (`vmm list/info/pause/resume/stop/migrate/migrate-cancel`) are clients of it.
//! `docs/api.yaml` documents exactly what is served.

/// The Cloud Hypervisor release whose API this VMM answers as, printed by
/// `cloud-hypervisor --version` (the entry point orchestrators start). libvirt's ch driver
/// reads it to choose what it asks for: from v18 serial and console together (served), below
/// v28 the kernel as top-level `kernel`/`cmdline`/`initramfs` (served, as is `payload`); from
/// v22 it hands NICs over as tap descriptors (SCM_RIGHTS), from v36 a socket serial, from v40
/// restore with new tap descriptors: not served yet, so the level stays below v22 and libvirt
/// refuses those up front instead of failing half way. Raise it with each of those features.
pub const CLOUD_HYPERVISOR_API_LEVEL: &str = "21.0.0";

pub mod client;
pub(crate) mod fd_stream;
pub mod request;
pub mod server;
pub mod types;
