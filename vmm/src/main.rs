//! The `vmm` command line; started as `cloud-hypervisor` (a link to this binary), Cloud
//! Hypervisor's (ch_cli.rs).

mod ch_cli;
mod cli;

use std::process::ExitCode;

use clap::Parser;

/// Whether this process was started under the name `cloud-hypervisor`.
fn invoked_as_cloud_hypervisor() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n == "cloud-hypervisor")
        })
        .unwrap_or(false)
}

fn main() -> ExitCode {
    migration::faults::setup();
    let result = if invoked_as_cloud_hypervisor() {
        ch_cli::main()
    } else {
        let args = cli::Cli::parse();
        args.logging.init().and_then(|()| cli::execute(args))
    };
    // The guest's last console output reaches its reader (unless the reader is stalled).
    vmm::console_output::drain_all(std::time::Duration::from_secs(2));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            vmm::console::restore_terminal();
            eprintln!("vmm: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
