//! The `vmm` command line.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    migration::faults::setup();
    let args = cli::Cli::parse();
    let result = cli::execute(args);
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
