//! The `cloud-hypervisor` entry point: the same binary, started under that name (a link), takes
//! Cloud Hypervisor's command line as orchestrators use it (libvirt's ch driver, Kata's clh,
//! scripts around ch-remote): `--api-socket path=P|fd=N|P` starts an empty VMM they then drive
//! through the API; `--event-monitor`, `-v`, `--log-file` and `--seccomp` are understood;
//! `--version` prints `cloud-hypervisor vX.Y.Z`, the API level served
//! (crate::api::CLOUD_HYPERVISOR_API_LEVEL). Booting a VM from command-line options
//! (`--kernel`, `--cpus`, ...) is not offered under this name: `vmm run` does that.

use anyhow::Context;
use clap::Parser;

use crate::paths;
use crate::unix_socket::ApiSocketAddr;

use super::commands::{empty_vmm, event_monitor, Logging};

/// A KVM VMM for x86-64 microVMs that serves Cloud Hypervisor's REST API. Under this name it
/// starts empty on its API socket and waits for vm.create / vm.boot or vm.receive-migration.
#[derive(Parser, Debug)]
#[command(
    name = "cloud-hypervisor",
    disable_version_flag = true,
    after_help = "Under the name cloud-hypervisor this VMM is driven through its API only; \
                  `vmm run --help` boots a VM from the command line."
)]
struct ChCli {
    /// The API socket: path=PATH (or PATH) is bound here; fd=N is a listening Unix socket the
    /// caller created, inherited as descriptor N.
    #[arg(long, value_name = "path=PATH|fd=N|PATH")]
    api_socket: Option<ApiSocketAddr>,
    /// One JSON object per lifecycle and migration event, to path=FILE or fd=N.
    #[arg(long, value_name = "path=FILE|fd=N")]
    event_monitor: Option<String>,
    /// Print `cloud-hypervisor vX.Y.Z` (the Cloud Hypervisor API level served) and this VMM's
    /// own version.
    #[arg(short = 'V', long)]
    version: bool,
    #[command(flatten)]
    logging: Logging,
}

/// Parses the command line given under the name `cloud-hypervisor` and runs it.
pub(crate) fn main() -> anyhow::Result<u8> {
    let cli = ChCli::parse();
    if cli.version {
        println!(
            "cloud-hypervisor v{}\nvmm {}: this VMM, serving Cloud Hypervisor's API at that level",
            crate::api::CLOUD_HYPERVISOR_API_LEVEL,
            env!("CARGO_PKG_VERSION")
        );
        return Ok(0);
    }
    cli.logging.init()?;
    let socket = cli.api_socket.context(
        "cloud-hypervisor: give --api-socket path=PATH or fd=N (this VMM is driven through its API)",
    )?;
    let monitor = event_monitor(&cli.event_monitor)?;
    cli.logging.confine_vmm()?;
    empty_vmm(socket, None, paths::runtime_dir(), monitor)
}
