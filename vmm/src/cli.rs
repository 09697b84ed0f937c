//! Subcommands and their options.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use vmm::config::{self, VmConfig, DEFAULT_CMDLINE};
use vmm::control::client::{self, ClientError};
use vmm::control::protocol::{MigrateRequest, Request, VmInfo};
use vmm::migrate::transport::Endpoint;
use vmm::paths;
use vmm::run::{self, RunOptions};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// A cancel is answered once the guest is back: within the migration's own deadlines.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(120);
/// A migration reports progress every round; this long without a line means it is stuck.
const MIGRATE_LINE_TIMEOUT: Duration = Duration::from_secs(900);

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
    /// Move a running VM to another host (live pre-copy; --offline for stop-and-copy). The
    /// destination waits with `vmm run --name NAME --incoming tcp:ADDR:PORT`; the disk must be
    /// on shared storage at the same path there. On success the VM runs there and the local
    /// `vmm run` exits; on failure before the switchover it keeps running here.
    Migrate(MigrateArgs),
    /// Cancel the migration a VM is running (as Ctrl-C on `vmm migrate` does): returns once the
    /// guest is back as it was here. Refused once the migration has committed.
    MigrateCancel { name: String },
}

#[derive(Args, Debug)]
struct MigrateArgs {
    name: String,
    /// Destination: tcp:HOST:PORT or unix:PATH.
    #[arg(long, value_name = "ENDPOINT")]
    to: String,
    /// Stop-and-copy: pause first, move, resume on the destination.
    #[arg(long)]
    offline: bool,
    /// Longest acceptable pause of the guest at the switchover, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 300)]
    downtime_ms: u64,
    /// Bandwidth cap in MiB/s (0: none).
    #[arg(long, value_name = "MIB_S", default_value_t = 0)]
    max_bandwidth: u64,
    /// Give up converging after this many seconds (see --on-timeout). With cancel, the whole
    /// migration ends by then whatever it is doing (a stalled connection included) and the
    /// guest runs on here; with force, the switchover is forced then and the whole migration
    /// is bounded by twice this.
    #[arg(long, value_name = "S", default_value_t = 600)]
    timeout: u64,
    /// Give up converging after this many rounds (see --on-timeout).
    #[arg(long, value_name = "N", default_value_t = 30)]
    max_rounds: u32,
    /// When the guest does not converge in time: cancel (it keeps running here) or force a stop-and-copy.
    #[arg(long, value_name = "cancel|force", default_value = "force")]
    on_timeout: String,
    /// Pre-shared key file (at least 16 bytes, at most 4 KiB): the destination needs the same.
    /// The whole stream is then encrypted and authenticated (Noise NNpsk0, AES-GCM).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["tls_dir", "insecure"])]
    auth_key_file: Option<PathBuf>,
    /// Mutual TLS 1.3 with the certificates in DIR: ca-cert.pem, client-cert.pem,
    /// client-key.pem (Cloud Hypervisor's names). The destination's certificate must name the
    /// host in --to (or --tls-hostname).
    #[arg(long, value_name = "DIR", conflicts_with = "insecure")]
    tls_dir: Option<PathBuf>,
    /// The name the destination's certificate must carry, if not the host in --to.
    #[arg(long, value_name = "NAME", requires = "tls_dir")]
    tls_hostname: Option<String>,
    /// Send over TCP without encryption or authentication (the destination must say
    /// --insecure too): anyone on the path can read and alter the guest's memory.
    #[arg(long)]
    insecure: bool,
    /// A read or write on the migration connection that makes no progress for this many
    /// seconds ends the migration (TCP keepalive and TCP_USER_TIMEOUT are set to match).
    #[arg(long, value_name = "S", default_value_t = 30)]
    io_timeout: u64,
    /// Connections that carry the guest's memory (1 to 128), each its own authenticated,
    /// encrypted channel bound to this migration; state and control go on the first.
    /// More connections spread the encryption and the kernel's copies over more cores.
    #[arg(long, value_name = "N", default_value_t = 1)]
    connections: u32,
    /// Compress page data with zstd (zstd or zstd:LEVEL, 1-19; zero pages are never sent).
    /// Pays on links slower than the compressor, about 0.5 GB/s per core at level 1.
    #[arg(long, value_name = "zstd[:LEVEL]")]
    compress: Option<String>,
    /// Print the final summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Name of the VM, unique in the runtime directory; names its control socket.
    #[arg(long)]
    name: String,
    /// Kernel image: a bzImage or an ELF vmlinux (entered in 64-bit mode).
    #[arg(long, value_name = "PATH", required_unless_present = "incoming")]
    kernel: Option<PathBuf>,
    /// Start empty and wait for this VM to arrive by migration on tcp:ADDR:PORT or unix:PATH.
    /// The VM may have only the disks and NICs given here with --disk and --net (its
    /// config must match them); a Unix socket accepts only this user or root.
    #[arg(long, value_name = "ENDPOINT", conflicts_with_all = ["kernel", "initrd"])]
    incoming: Option<String>,
    /// With --incoming: accept only a source holding this pre-shared key file (at least 16
    /// bytes, at most 4 KiB); the whole stream is encrypted and authenticated.
    #[arg(long, value_name = "FILE", requires = "incoming", conflicts_with_all = ["tls_dir", "insecure"])]
    auth_key_file: Option<PathBuf>,
    /// With --incoming: mutual TLS 1.3 with the certificates in DIR: ca-cert.pem,
    /// server-cert.pem, server-key.pem (Cloud Hypervisor's names); only a source whose client
    /// certificate chains to ca-cert.pem is accepted.
    #[arg(
        long,
        value_name = "DIR",
        requires = "incoming",
        conflicts_with = "insecure"
    )]
    tls_dir: Option<PathBuf>,
    /// With --incoming on TCP: accept a source without encryption or authentication (the
    /// source must say --insecure too). Anyone who can reach the port can then hand this
    /// host a VM, and anyone on the path can read and alter its memory.
    #[arg(long, requires = "incoming")]
    insecure: bool,
    /// With --incoming: a read or write on the migration connection that makes no progress
    /// for this many seconds ends the migration (nothing is started here).
    #[arg(long, value_name = "S", default_value_t = 30, requires = "incoming")]
    io_timeout: u64,
    /// Initial ramdisk (e.g. a gzip'd cpio archive).
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Guest memory, e.g. 512M or 2G (MiB when no suffix); 256M when not given. With
    /// --incoming: the size the incoming VM must have; the memory is then mapped and faulted
    /// in while the destination waits, so the migration does not pay for it.
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// Number of vCPUs (1-32).
    #[arg(long, value_name = "N", default_value_t = 1)]
    vcpus: u64,
    /// A virtio-blk disk: a raw image file or block device (a shared LUN), repeatable.
    /// The VMM holds an exclusive lock on each writable disk while it runs. With --incoming:
    /// a disk the incoming VM may use (its config must name the same path, size and flags).
    #[arg(long, value_name = "PATH[,readonly=on][,direct=on][,serial=ID]")]
    disk: Vec<String>,
    /// A virtio-net NIC on a tap device (created if it does not exist), repeatable. Without
    /// mac=, a stable MAC is derived from the VM name. With --incoming: a tap the incoming
    /// VM's NIC of the same position may use (the MACs must match).
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
        Command::Migrate(args) => migrate(&dir, args),
        Command::MigrateCancel { name } => {
            config::validate_name(&name)?;
            client::request(
                &paths::socket_path(&dir, &name),
                &name,
                &Request::MigrateCancel,
                CANCEL_TIMEOUT,
            )?;
            println!("{name}: migration cancelled; the guest runs on here");
            Ok(0)
        }
    }
}

fn migrate(dir: &std::path::Path, args: MigrateArgs) -> anyhow::Result<u8> {
    let req = MigrateRequest {
        to: args.to.clone(),
        offline: args.offline,
        downtime_ms: Some(args.downtime_ms),
        max_bandwidth_mib: Some(args.max_bandwidth),
        timeout_secs: Some(args.timeout),
        on_timeout: Some(args.on_timeout.clone()),
        max_rounds: Some(args.max_rounds),
        // The VM process reads these files: give it paths that do not depend on our cwd.
        auth_key_file: args.auth_key_file.as_deref().map(absolute),
        tls_dir: args.tls_dir.as_deref().map(absolute),
        tls_hostname: args.tls_hostname.clone(),
        insecure: args.insecure,
        io_timeout_secs: Some(args.io_timeout),
        connections: Some(args.connections),
        compress: args.compress.clone(),
    };
    let endpoint = Endpoint::parse(&args.to).map_err(anyhow::Error::msg)?;
    if args.insecure {
        if let Some(w) = vmm::migrate::security::insecure_warning(&endpoint) {
            eprintln!("vmm: {w}");
        }
    }
    config::validate_name(&args.name)?;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let socket = paths::socket_path(dir, &args.name);
    cancel_on_signal(socket.clone(), args.name.clone())?;
    let result = client::request_streaming(
        &socket,
        &args.name,
        &Request::Migrate(Box::new(req)),
        MIGRATE_LINE_TIMEOUT,
        |r| {
            if let Some(p) = &r.progress {
                let line = format!(
                "round {:>2}  {:>8.1} MiB left  {:>7.1} MiB/s  dirtying {:>7.1} MiB/s  expected downtime {:>6.0} ms{}",
                p.round,
                p.remaining_bytes as f64 / 1048576.0,
                p.rate_bytes_per_sec / 1048576.0,
                p.dirty_rate_bytes_per_sec / 1048576.0,
                p.expected_downtime_ms,
                if p.throttle_percent > 0 { format!("  throttle {}%", p.throttle_percent) } else { String::new() }
            );
                if tty {
                    eprint!("\r{line}\x1b[K");
                } else {
                    eprintln!("{line}");
                }
            }
        },
    );
    if tty {
        eprintln!();
    }
    let response =
        result.with_context(|| format!("migration of '{}' to {} failed", args.name, args.to))?;
    let s = response
        .summary
        .context("the VM answered without a migration summary")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!(
            "{}: migrated to {} in {:.2} s; downtime {:.1} ms; {:.1} MiB sent in {} rounds over {} connection(s) ({:.1} MiB/s while sending memory, {} zero pages not sent, switchover: {})",
            args.name,
            args.to,
            s.total_seconds,
            s.downtime_ms,
            s.bytes_sent as f64 / 1048576.0,
            s.rounds,
            s.connections,
            s.throughput_bytes_per_sec / 1048576.0,
            s.zero_pages_skipped,
            s.switchover
        );
        if let Some(level) = s.compress {
            println!(
                "{}: zstd level {level}: {:.1} MiB of pages sent as {:.1} MiB",
                args.name,
                s.page_bytes_uncompressed as f64 / 1048576.0,
                s.page_bytes_sent as f64 / 1048576.0
            );
        }
    }
    Ok(0)
}

/// Ctrl-C (SIGINT) or SIGTERM while `vmm migrate` waits cancels the migration, as `virsh
/// migrate` does: the VM answers the migration request with "cancelled" once the guest is back,
/// and `vmm migrate` exits non-zero with that. Returns once the handlers are in place.
fn cancel_on_signal(socket: PathBuf, name: String) -> anyhow::Result<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("cancel-on-signal".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    return;
                };
                let _ = ready_tx.send(());
                let which = tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                };
                eprintln!("\nvmm: {which}: cancelling the migration of '{name}'...");
                let cancel = tokio::task::spawn_blocking(move || {
                    client::request(&socket, &name, &Request::MigrateCancel, CANCEL_TIMEOUT)
                });
                if let Ok(Err(e)) = cancel.await {
                    eprintln!("vmm: cannot cancel: {e}");
                }
                // Further signals wait for the migration's own answer.
                loop {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
            });
        })
        .context("cannot start the signal thread")?;
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("cannot install the signal handlers")?;
    Ok(())
}

fn memory_size(s: &str) -> anyhow::Result<u64> {
    let bytes = config::parse_size(s)?;
    config::validate_memory(bytes)?;
    Ok(bytes)
}

fn absolute(p: &std::path::Path) -> String {
    std::fs::canonicalize(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

fn disks_and_nets(
    args: &RunArgs,
) -> anyhow::Result<(Vec<config::DiskConfig>, Vec<config::NetConfig>)> {
    let disks = args
        .disk
        .iter()
        .map(|d| config::DiskConfig::parse(d))
        .collect::<Result<_, _>>()?;
    let nets = args
        .net
        .iter()
        .enumerate()
        .map(|(i, n)| config::NetConfig::parse(n, &args.name, i))
        .collect::<Result<_, _>>()?;
    Ok((disks, nets))
}

fn run_vm(args: RunArgs, runtime_dir: PathBuf) -> anyhow::Result<u8> {
    config::validate_name(&args.name)?;
    let (disks, nets) = disks_and_nets(&args)?;
    if let Some(listen) = &args.incoming {
        let listen = Endpoint::parse(listen).map_err(anyhow::Error::msg)?;
        let security = vmm::migrate::security::for_destination(
            &vmm::migrate::security::SecurityOptions {
                auth_key_file: args.auth_key_file.clone(),
                tls_dir: args.tls_dir.clone(),
                tls_hostname: None,
                insecure: args.insecure,
            },
            &listen,
        )
        .map_err(|e| anyhow::anyhow!(vmm::error_chain(&e)))?;
        if args.insecure {
            if let Some(w) = vmm::migrate::security::insecure_warning(&listen) {
                eprintln!("vmm: {w}");
            }
        }
        let end = run::run_incoming(run::IncomingOptions {
            name: args.name.clone(),
            runtime_dir,
            listen,
            security,
            io_timeout: Duration::from_secs(args.io_timeout.max(1)),
            grants: vmm::migrate::target::Grants {
                disks,
                nets,
                memory: args.memory.as_deref().map(memory_size).transpose()?,
            },
        })?;
        eprintln!("vmm: {}", end.describe(&args.name));
        return Ok(end.exit_code());
    }
    let memory_bytes = memory_size(args.memory.as_deref().unwrap_or("256M"))?;
    let vcpus = config::validate_vcpus(args.vcpus)?;
    let config = VmConfig {
        name: args.name.clone(),
        kernel: args.kernel.context("--kernel is required")?,
        initrd: args.initrd,
        cmdline: args.cmdline,
        memory_bytes,
        vcpus,
        disks,
        nets,
    };
    let end = run::run(RunOptions {
        config,
        runtime_dir,
        allow_emulated_kernel: args.allow_emulated_kernel,
    })?;
    eprintln!("vmm: {}", end.describe(&args.name));
    Ok(end.exit_code())
}

fn send(
    dir: &std::path::Path,
    name: &str,
    req: Request,
) -> Result<vmm::control::protocol::Response, ClientError> {
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
    println!(
        "{:<20} {:>8} {:<10} {:>10} {:>5}",
        "NAME", "PID", "STATE", "MEMORY", "VCPUS"
    );
    for i in infos {
        println!(
            "{:<20} {:>8} {:<10} {:>6} MiB {:>5}",
            i.name,
            i.pid,
            i.state.to_string(),
            i.memory_mib,
            i.vcpus
        );
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
