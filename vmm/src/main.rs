//! The `vmm` binary: everything is in the library's `cli` room.

fn main() -> std::process::ExitCode {
    vmm::cli::main()
}
