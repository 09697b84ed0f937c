//! The VMM's API: Cloud Hypervisor's REST API (HTTP/1.1, JSON, paths under `/api/v1/`) on the
//! VM's Unix socket, so orchestrators written for Cloud Hypervisor can drive this VMM. The CLI
//! subcommands (`vmm list/info/pause/resume/stop/migrate/migrate-cancel`) are clients of it.
//! `docs/api.yaml` documents exactly what is served.

pub mod client;
pub mod request;
pub mod server;
pub mod types;
