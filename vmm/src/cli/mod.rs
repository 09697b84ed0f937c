//! The command lines: `vmm` with its subcommands (`commands`), and Cloud Hypervisor's, which
//! the same binary takes when started as `cloud-hypervisor` (`cloud_hypervisor`). The binary's
//! edge: errors become `anyhow` here and an exit status in [`main`]. It may call every room.

mod cloud_hypervisor;
mod commands;

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

/// The binary's `main`: parses the command line it was started with and runs it.
pub fn main() -> ExitCode {
    migration::faults::setup();
    let result = if invoked_as_cloud_hypervisor() {
        cloud_hypervisor::main()
    } else {
        let args = commands::Cli::parse();
        args.logging.init().and_then(|()| commands::execute(args))
    };
    // The guest's last console output reaches its reader (unless the reader is stalled).
    crate::console::output::drain_all(std::time::Duration::from_secs(2));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            crate::console::terminal::restore_terminal();
            eprintln!("vmm: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
