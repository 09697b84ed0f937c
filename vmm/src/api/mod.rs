//! The VMM's API: Cloud Hypervisor's REST API (HTTP/1.1, JSON, paths under `/api/v1/`) on the
//! VM's Unix socket, so orchestrators written for Cloud Hypervisor can drive this VMM. The CLI
//! subcommands (`vmm list/info/pause/resume/stop/migrate/migrate-cancel`) are clients of it.
//! `docs/api.yaml` documents exactly what is served. It may call `console` (a PTY console is
//! part of a VM's config), `config` and the plumbing beside it; the server hands what it
//! receives to a [`server::RequestSink`] its caller provides, so the API knows nothing of the
//! VM or of who answers.

/// The Cloud Hypervisor release whose API this VMM answers as, printed by
/// `cloud-hypervisor --version` (the entry point orchestrators start). libvirt's ch driver
/// reads it to choose what it asks for: from v18 serial and console together (served), below
/// v28 the kernel as top-level `kernel`/`cmdline`/`initramfs` (served, as is `payload`); from
/// v22 it hands NICs over as tap descriptors (SCM_RIGHTS: served, `vm.add-net` with `fds`, but
/// not yet tried with a libvirt that sends them, since Debian's 9.0 does not), from v36 a
/// socket serial and from v40 restore with new tap descriptors (not served). The level stays
/// below v22 until a libvirt that passes descriptors is tested against us, so libvirt refuses
/// what we do not serve up front instead of failing half way.
pub(crate) const CLOUD_HYPERVISOR_API_LEVEL: &str = "21.0.0";

pub(crate) mod client;
pub mod config_error;
pub(crate) mod fd_stream;
pub(crate) mod migration_status;
pub mod request;
pub(crate) mod server;
pub mod types;
