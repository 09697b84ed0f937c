//! Subcommands and their options.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use vmm::config::{self, VmConfig, DEFAULT_CMDLINE};
use vmm::control::client::{self, ClientError};
use vmm::control::protocol::{Request, VmInfo};
use vmm::paths;
use vmm::run::{self, RunOptions};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

/// A KVM virtual machine monitor for x86-64 microVMs.
///
/// `vmm run` boots a microVM in the foreground, its serial console on this terminal (Ctrl-A x
/// quits). The other subcommands talk to running VMs through their control sockets, found in
/// the runtime directory: --runtime-dir, else $VMM_RUNTIME_DIR, else $XDG_RUNTIME_DIR/vmm,
/// else /run/vmm.
#[derive(Parser, Debug)]
#[command(name = "vmm", version, propagate_version = true)]
pub struct Cli {
    /// Directory holding the VMs' control sockets.
    #[arg(long, global = true, value_name = "DIR")]
    runtime_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Boot a microVM and run it in the foreground until it reboots, powers off or is stopped.
    Run(RunArgs),
    /// List running VMs: name, pid, state, memory, vCPUs.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one VM's details.
    Info {
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop a VM's vCPUs (returns once none is executing guest code).
    Pause { name: String },
    /// Let a paused VM's vCPUs run again.
    Resume { name: String },
    /// Stop a VM: its `vmm run` process exits.
    Stop { name: String },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Name of the VM, unique in the runtime directory; names its control socket.
    #[arg(long)]
    name: String,
    /// Kernel image: a bzImage or an ELF vmlinux (entered in 64-bit mode).
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,
    /// Initial ramdisk (e.g. a gzip'd cpio archive).
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Guest memory, e.g. 512M or 2G (MiB when no suffix).
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    memory: String,
    /// Number of vCPUs (1-32).
    #[arg(long, value_name = "N", default_value_t = 1)]
    vcpus: u64,
    /// A virtio-blk disk: a raw image file or block device (a shared LUN), repeatable.
    /// The VMM holds an exclusive lock on each writable disk while it runs.
    #[arg(long, value_name = "PATH[,readonly=on][,direct=on][,serial=ID]")]
    disk: Vec<String>,
    /// A virtio-net NIC on a tap device (created if it does not exist), repeatable. Without
    /// mac=, a stable MAC is derived from the VM name.
    #[arg(long, value_name = "tap=NAME[,mac=MAC]")]
    net: Vec<String>,
    /// On a PVM host, start a stock Linux kernel even though it will be emulated (very slow).
    #[arg(long)]
    allow_emulated_kernel: bool,
}

pub fn execute(cli: Cli) -> anyhow::Result<u8> {
    let dir = cli.runtime_dir.unwrap_or_else(paths::runtime_dir);
    match cli.command {
        Command::Run(args) => run_vm(args, dir),
        Command::List { json } => list(&dir, json),
        Command::Info { name, json } => {
            let info = query_info(&dir, &name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print_info(&info);
            }
            Ok(0)
        }
        Command::Pause { name } => simple(&dir, &name, Request::Pause, "paused"),
        Command::Resume { name } => simple(&dir, &name, Request::Resume, "resumed"),
        Command::Stop { name } => simple(&dir, &name, Request::Stop, "stopped"),
    }
}

fn run_vm(args: RunArgs, runtime_dir: PathBuf) -> anyhow::Result<u8> {
    config::validate_name(&args.name)?;
    let memory_bytes = config::parse_size(&args.memory)?;
    config::validate_memory(memory_bytes)?;
    let vcpus = config::validate_vcpus(args.vcpus)?;
    let config = VmConfig {
        name: args.name.clone(),
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        memory_bytes,
        vcpus,
        disks: args.disk.iter().map(|d| config::DiskConfig::parse(d)).collect::<Result<_, _>>()?,
        nets: args.net.iter().enumerate().map(|(i, n)| config::NetConfig::parse(n, &args.name, i)).collect::<Result<_, _>>()?,
    };
    let end = run::run(RunOptions { config, runtime_dir, allow_emulated_kernel: args.allow_emulated_kernel })?;
    eprintln!("vmm: {}", end.describe(&args.name));
    Ok(end.exit_code())
}

fn send(dir: &std::path::Path, name: &str, req: Request) -> Result<vmm::control::protocol::Response, ClientError> {
    config::validate_name(name).map_err(|e| ClientError::Refused(e.to_string()))?;
    client::request(&paths::socket_path(dir, name), name, &req, CLIENT_TIMEOUT)
}

fn query_info(dir: &std::path::Path, name: &str) -> anyhow::Result<VmInfo> {
    let resp = send(dir, name, Request::Info)?;
    resp.info.context("the VM answered without its info")
}

fn simple(dir: &std::path::Path, name: &str, req: Request, done: &str) -> anyhow::Result<u8> {
    send(dir, name, req)?;
    println!("{name}: {done}");
    Ok(0)
}

fn list(dir: &std::path::Path, json: bool) -> anyhow::Result<u8> {
    let infos: Vec<VmInfo> = paths::list_sockets(dir)
        .into_iter()
        .filter_map(|name| query_info(dir, &name).ok())
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&infos)?);
        return Ok(0);
    }
    println!("{:<20} {:>8} {:<10} {:>10} {:>5}", "NAME", "PID", "STATE", "MEMORY", "VCPUS");
    for i in infos {
        println!("{:<20} {:>8} {:<10} {:>6} MiB {:>5}", i.name, i.pid, i.state.to_string(), i.memory_mib, i.vcpus);
    }
    Ok(0)
}

fn print_info(i: &VmInfo) {
    println!("name:    {}", i.name);
    println!("pid:     {}", i.pid);
    println!("state:   {}", i.state);
    println!("memory:  {} MiB", i.memory_mib);
    println!("vcpus:   {}", i.vcpus);
    println!("kernel:  {}", i.kernel);
    println!("cmdline: {}", i.cmdline);
    println!("uptime:  {:.1} s", i.uptime_secs);
}
