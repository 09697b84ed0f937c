//! The per-VM control socket: JSON lines over a Unix socket, one request and one response per
//! line. `vmm list/info/pause/resume/stop` are clients of it.

pub mod client;
pub mod protocol;
pub mod server;
