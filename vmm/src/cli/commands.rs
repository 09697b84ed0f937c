//! The `vmm` command line: its subcommands, their options, and what each does.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::api::client::ApiClient;
use crate::api::types::{
    ApiDisk, ApiNet, ApiVmInfo, ApiVmState, ConsoleConfig, ConsoleMode, MigrationOutcome,
    MigrationProgress, MigrationRole, ReceiveMigration, SendMigration, SerialSink,
};
use crate::config::{self, VmConfig, DEFAULT_CMDLINE};
use crate::event_monitor::EventMonitor;
use crate::lifecycle::run::{self, ReceiveSpec, Start, VmmOptions};
use crate::migrate::transport::Endpoint;
use crate::paths;
use crate::seccomp::SeccompMode;
use crate::unix_socket::ApiSocketAddr;
use serde::Serialize;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// A cancel is answered once the guest is back: within the migration's own deadlines.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(120);
/// How often `vmm migrate` asks for the migration's progress.
const PROGRESS_POLL: Duration = Duration::from_millis(200);

/// A KVM virtual machine monitor for x86-64 microVMs.
///
/// `vmm run` boots a microVM in the foreground, its serial console on this terminal (Ctrl-A x
/// quits). The other subcommands talk to running VMs through their API sockets (Cloud
/// Hypervisor's REST API, HTTP over a Unix socket), found in the runtime directory:
/// --runtime-dir, else $VMM_RUNTIME_DIR, else $XDG_RUNTIME_DIR/vmm, else /run/vmm.
///
/// `vmm --api-socket PATH` (no subcommand) starts an empty VMM that waits for an orchestrator
/// to create and boot a VM (vm.create, vm.boot) or to receive one (vm.receive-migration), as
/// Cloud Hypervisor does; it exits on vmm.shutdown. See docs/api.yaml.
#[derive(Parser, Debug)]
#[command(name = "vmm", version, propagate_version = true)]
pub(crate) struct Cli {
    /// Directory holding the VMs' API sockets.
    #[arg(long, global = true, value_name = "DIR")]
    runtime_dir: Option<PathBuf>,
    /// Start an empty VMM serving the API on this socket (no subcommand then): path=PATH (or
    /// PATH) binds it; fd=N serves a Unix socket the caller bound and listens on, inherited
    /// as descriptor N (as libvirt starts Cloud Hypervisor).
    #[arg(long, value_name = "path=PATH|fd=N|PATH")]
    api_socket: Option<ApiSocketAddr>,
    /// With --api-socket: write one JSON object per lifecycle and migration event to
    /// path=FILE or fd=N.
    #[arg(long, value_name = "path=FILE|fd=N")]
    event_monitor: Option<String>,
    /// With --api-socket alone: the name a VM created through the API gets (the socket's
    /// file name when not given). An empty VMM receives a VM under the source's name.
    #[arg(long, value_name = "NAME")]
    vm_name: Option<String>,
    #[command(flatten)]
    pub(crate) logging: Logging,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Logging and sandbox options, the same under both names (`vmm` and `cloud-hypervisor`).
#[derive(Args, Debug)]
pub(crate) struct Logging {
    /// More log output: -v info, -vv debug, -vvv trace (warnings and errors otherwise;
    /// RUST_LOG, when set and no -v is given, chooses instead).
    #[arg(short = 'v', action = clap::ArgAction::Count, global = true)]
    pub(crate) verbose: u8,
    /// Write the log to this file (appended) instead of stderr.
    #[arg(long, value_name = "FILE", global = true)]
    pub(crate) log_file: Option<PathBuf>,
    /// seccomp filters, one per kind of thread (README, Sandbox), as Cloud Hypervisor spells
    /// the switch: true (the default: a forbidden system call ends the VMM, naming the thread
    /// kind and the call), log (such calls go through and the kernel logs them: dmesg), or
    /// false (no filter). Applies to a VMM (`vmm run`, the empty VMM); client commands run
    /// unfiltered.
    #[arg(long, value_name = "true|false|log", global = true)]
    pub(crate) seccomp: Option<SeccompMode>,
    /// Started as root: become this user (a name or a UID; its primary group, or :GROUP)
    /// before opening anything of the VM's. Only /dev/kvm is opened as root and kept; disks, taps, sockets and
    /// the runtime directory are opened as the user, supplementary groups dropped, no
    /// capability kept (README, Sandbox).
    #[arg(long, value_name = "USER[:GROUP]", global = true)]
    pub(crate) user: Option<crate::privileges::User>,
}

impl Logging {
    /// Starts the logger as the options ask.
    pub(crate) fn init(&self) -> anyhow::Result<()> {
        let mut builder = if self.verbose == 0 {
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        } else {
            let mut b = env_logger::Builder::new();
            b.filter_level(match self.verbose {
                1 => log::LevelFilter::Info,
                2 => log::LevelFilter::Debug,
                _ => log::LevelFilter::Trace,
            });
            b
        };
        builder.format_timestamp_millis();
        if let Some(path) = &self.log_file {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("--log-file: cannot open {}", path.display()))?;
            builder.target(env_logger::Target::Pipe(Box::new(file)));
        }
        builder.init();
        Ok(())
    }

    /// Confines this VMM process as `--user` and `--seccomp` say (seccomp on when not given);
    /// call it before the VMM starts any thread.
    pub(crate) fn confine_vmm(&self) -> anyhow::Result<()> {
        if let Some(user) = self.user {
            crate::privileges::become_user(user)?;
        }
        crate::seccomp::confine_process(self.seccomp.unwrap_or(SeccompMode::Enforce))?;
        crate::jail::test_open_probe();
        Ok(())
    }
}

/// `vmm jail`'s options (README, Sandbox).
#[derive(Args, Debug)]
struct JailArgs {
    /// The jail's name: its directory is <chroot-base>/<id>, its cgroup vmm/<id>.
    #[arg(long)]
    id: String,
    /// Where jails are made.
    #[arg(long, value_name = "DIR", default_value = "/srv/vmm-jail")]
    chroot_base: PathBuf,
    /// Join this network namespace (e.g. /var/run/netns/NAME) before starting the VMM.
    #[arg(long, value_name = "PATH")]
    netns: Option<PathBuf>,
    /// The cgroup's memory limit (e.g. 512M, 2G): memory.max, or memory.limit_in_bytes on v1.
    #[arg(long, value_name = "SIZE")]
    memory_limit: Option<String>,
    /// The cgroup's CPU limit in percent of one CPU (150: one and a half): cpu.max, or
    /// cpu.cfs_quota_us over a 100 ms period on v1.
    #[arg(long, value_name = "PERCENT")]
    cpu_quota: Option<u32>,
    /// The VMM's limit of open files (RLIMIT_NOFILE). Core dumps are always off.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    open_files: u64,
    /// A file or directory the VMM may reach, bound into the jail at its own path: the
    /// kernel, initrd, disks, key files, certificate directories. Repeat for each.
    #[arg(long = "grant", value_name = "PATH")]
    grants: Vec<PathBuf>,
    /// The VMM's own arguments, after `--`: `run ...`, or `--api-socket ...` for an empty
    /// VMM. Its runtime directory is /run/vmm inside the jail.
    #[arg(last = true, required = true, value_name = "VMM ARGS")]
    vmm_args: Vec<String>,
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
    /// Let a paused VM's vCPUs run again. With --force: resume a guest whose migration
    /// committed without the destination's confirmation (its outcome is unknown): only when
    /// the destination does not run it. The disks are taken back first, and the resume is
    /// refused while another process (the destination) holds one.
    Resume {
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// Run a VMM (`vmm run ...` or an empty VMM) jailed, as root: a PID namespace, a mount
    /// namespace holding only /dev/kvm, /dev/net/tun, /dev/null, /dev/urandom, the PTYs, /proc
    /// and the granted paths, a cgroup with memory and CPU limits, rlimits, then --user's
    /// switch and seccomp. Its API socket: <chroot-base>/<id>/root/run/vmm/<name>.sock.
    Jail(JailArgs),
    /// Stop a VM: its `vmm run` process exits.
    Stop { name: String },
    /// Attach this terminal to a VM's serial console, when it is a PTY or a socket (`vmm run
    /// --serial pty|socket=PATH`, or serial mode Pty or Socket through the API). Ctrl-]
    /// detaches; the VM runs on.
    Console { name: String },
    /// Move a running VM to another host (live pre-copy; --offline for stop-and-copy). The
    /// destination waits with `vmm run --name NAME --incoming tcp:ADDR:PORT`; the disk must be
    /// on shared storage at the same path there. On success the VM runs there and the local
    /// `vmm run` exits; on failure before the switchover it keeps running here.
    Migrate(MigrateArgs),
    /// Cancel the migration a VM is running (as Ctrl-C on `vmm migrate` does): returns once the
    /// guest is back as it was here. Refused once the migration has committed.
    MigrateCancel { name: String },
    /// Send one API request and print the JSON answer, e.g.
    /// `vmm api web PUT vm.receive-migration '{"receiver_url":"tcp:0.0.0.0:4444", ...}'`
    /// (docs/api.yaml lists the endpoints). Exits 1 with the VMM's message on an error status.
    Api {
        /// A VM name (its socket in the runtime directory) or a socket path (containing '/').
        target: String,
        /// GET or PUT.
        method: String,
        /// The endpoint, e.g. vm.info (the /api/v1/ prefix may be left out).
        endpoint: String,
        /// The JSON body, if the endpoint takes one.
        body: Option<String>,
    },
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
    /// Pre-shared key file (at least 32 bytes, at most 4 KiB): the destination needs the same.
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
    /// Name of the VM, unique in the runtime directory; names its API socket.
    #[arg(long)]
    name: String,
    /// Kernel image: a bzImage or an ELF vmlinux (entered in 64-bit mode).
    #[arg(long, value_name = "PATH", required_unless_present = "incoming")]
    kernel: Option<PathBuf>,
    /// Start empty and wait for this VM to arrive by migration on tcp:ADDR:PORT or unix:PATH.
    /// The VM may have only the disks and NICs given here with --disk and --net (its
    /// config must match them); a Unix socket accepts only this user or root.
    /// With --incoming, --kernel (and --initrd, --cmdline) grant what the received VM boots
    /// when it reboots; without them it cannot reboot here (the source's paths are never used).
    #[arg(long, value_name = "ENDPOINT")]
    incoming: Option<String>,
    /// With --incoming: accept only a source holding this pre-shared key file (at least 32
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
    /// The CPU features the guest sees: host (everything this host's KVM offers: for a VM
    /// that stays, or moves only between identical hosts), x86-64-v2 or x86-64-v3 (that
    /// micro-architecture level only: a fleet of different CPUs can all run and receive it).
    /// The guest's CPUID travels with it; a destination that lacks a feature is refused.
    #[arg(long, value_name = "MODEL", default_value = "host")]
    cpu_model: String,
    /// Show hardware virtualization (VMX/SVM) to the guest, for a hypervisor inside it. Such
    /// a VM cannot be migrated (its nested guests' state does not travel).
    #[arg(long)]
    nested: bool,
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
    /// Serve the VM's API on this socket instead of <runtime-dir>/<name>.sock: path=PATH (or
    /// PATH), or fd=N, a listening Unix socket inherited as descriptor N.
    #[arg(long, value_name = "path=PATH|fd=N|PATH")]
    api_socket: Option<ApiSocketAddr>,
    /// Write one JSON object per lifecycle and migration event to path=FILE or fd=N.
    #[arg(long, value_name = "path=FILE|fd=N")]
    event_monitor: Option<String>,
    /// Where the serial console (ttyS0) goes: tty (this terminal: Ctrl-A x ends the VM), pty
    /// (a pseudo-terminal the VMM keeps; `vmm console NAME` attaches to it, `vmm info` shows
    /// its path, and the VM no longer needs this terminal), socket=PATH (a Unix socket,
    /// owner-only, serving one client at a time: `vmm console NAME` or `socat`), file=PATH
    /// (output appended), or null.
    #[arg(
        long,
        value_name = "tty|pty|socket=PATH|file=PATH|null",
        default_value = "tty"
    )]
    serial: String,
}

/// The event monitor `--event-monitor` asks for, or none.
pub(crate) fn event_monitor(arg: &Option<String>) -> anyhow::Result<EventMonitor> {
    Ok(match arg {
        Some(arg) => EventMonitor::open(arg)?,
        None => EventMonitor::none(),
    })
}

pub(crate) fn execute(cli: Cli) -> anyhow::Result<u8> {
    let dir = cli.runtime_dir.unwrap_or_else(paths::runtime_dir);
    let Some(command) = cli.command else {
        let socket = cli.api_socket.context(
            "give a subcommand (vmm --help), or --api-socket path=PATH|fd=N to start an empty VMM",
        )?;
        let monitor = event_monitor(&cli.event_monitor)?;
        cli.logging.confine_vmm()?;
        return empty_vmm(socket, cli.vm_name, dir, monitor);
    };
    if cli.api_socket.is_some() || cli.event_monitor.is_some() || cli.vm_name.is_some() {
        anyhow::bail!(
            "--api-socket, --event-monitor and --vm-name before a subcommand start an empty VMM; \
             `vmm run` takes its own --api-socket and --event-monitor"
        );
    }
    match command {
        Command::Run(args) => {
            let monitor = event_monitor(&args.event_monitor)?;
            cli.logging.confine_vmm()?;
            let socket = args.api_socket.clone();
            run_vm(args, dir, socket, monitor)
        }
        Command::Jail(args) => jail(args, cli.logging.user),
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
        Command::Pause { name } => simple(&dir, &name, "vm.pause", "paused"),
        Command::Resume { name, force: false } => simple(&dir, &name, "vm.resume", "resumed"),
        Command::Resume { name, force: true } => {
            client(&dir, &name)?.put(
                "vm.resume",
                Some(&serde_json::json!({ "force": true })),
                CLIENT_TIMEOUT,
            )?;
            println!("{name}: resumed here (forced)");
            Ok(0)
        }
        Command::Stop { name } => simple(&dir, &name, "vmm.shutdown", "stopped"),
        Command::Console { name } => console(&dir, &name),
        Command::Migrate(args) => migrate(&dir, args),
        Command::Api {
            target,
            method,
            endpoint,
            body,
        } => raw_request(&dir, &target, &method, &endpoint, body),
        Command::MigrateCancel { name } => {
            client(&dir, &name)?.put("vm.cancel-migration", None::<&()>, CANCEL_TIMEOUT)?;
            println!("{name}: migration cancelled; the guest runs on here");
            Ok(0)
        }
    }
}

/// `vmm api`: one request, its answer printed as JSON.
fn raw_request(
    dir: &std::path::Path,
    target: &str,
    method: &str,
    endpoint: &str,
    body: Option<String>,
) -> anyhow::Result<u8> {
    let api = if target.contains('/') {
        ApiClient::new(std::path::Path::new(target), target)
    } else {
        client(dir, target)?
    };
    let method = match method.to_ascii_uppercase().as_str() {
        "GET" => crate::api::request::Method::Get,
        "PUT" => crate::api::request::Method::Put,
        other => anyhow::bail!("the API uses GET and PUT, not {other}"),
    };
    let endpoint = endpoint
        .trim_start_matches('/')
        .trim_start_matches("api/v1/");
    let answer = api.call(
        method,
        endpoint,
        body.map(String::into_bytes),
        CANCEL_TIMEOUT,
    )?;
    if let Some(v) = answer {
        // A reader that stops early (`| grep -q`) is not an error.
        let _ = writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(0)
}

/// `vmm --api-socket PATH`: an empty VMM until the API gives it a VM.
pub(crate) fn empty_vmm(
    socket: ApiSocketAddr,
    vm_name: Option<String>,
    runtime_dir: PathBuf,
    monitor: EventMonitor,
) -> anyhow::Result<u8> {
    let name = match (vm_name, &socket) {
        (Some(n), _) => n,
        (None, ApiSocketAddr::Path(path)) => path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| config::validate_name(s).is_ok())
            .unwrap_or("vm")
            .to_string(),
        (None, ApiSocketAddr::Fd(_)) => "vm".to_string(),
    };
    config::validate_name(&name)?;
    eprintln!("vmm: empty VMM on {socket}: waiting for vm.create or vm.receive-migration");
    let end = run::run(
        VmmOptions {
            name: name.clone(),
            runtime_dir,
            api_socket: Some(socket),
            monitor,
            allow_emulated_kernel: false,
            serial: SerialSink::Stdout,
        },
        Start::Empty,
    )?;
    eprintln!("vmm: {}", end.describe(&name));
    Ok(end.exit_code())
}

fn client(dir: &std::path::Path, name: &str) -> anyhow::Result<ApiClient> {
    config::validate_name(name)?;
    Ok(ApiClient::new(&paths::socket_path(dir, name), name))
}

fn migrate(dir: &std::path::Path, args: MigrateArgs) -> anyhow::Result<u8> {
    let req = SendMigration {
        destination_url: args.to.clone(),
        offline: args.offline,
        downtime_ms: Some(args.downtime_ms),
        max_bandwidth: Some(args.max_bandwidth),
        timeout_s: Some(args.timeout),
        timeout_strategy: Some(args.on_timeout.clone()),
        max_rounds: Some(args.max_rounds),
        // The VM process reads these files: give it paths that do not depend on our cwd.
        auth_key_file: args.auth_key_file.as_deref().map(absolute),
        tls_dir: args.tls_dir.as_deref().map(absolute),
        tls_hostname: args.tls_hostname.clone(),
        insecure: args.insecure,
        io_timeout_s: Some(args.io_timeout),
        connections: Some(args.connections),
        compress: args.compress.clone(),
    };
    let endpoint = Endpoint::parse(&args.to)?;
    if args.insecure {
        if let Some(w) = crate::migrate::security::insecure_warning(&endpoint) {
            eprintln!("vmm: {w}");
        }
    }
    let api = client(dir, &args.name)?;
    let failed = || format!("migration of '{}' to {} failed", args.name, args.to);
    api.put("vm.send-migration", Some(&req), CLIENT_TIMEOUT)
        .with_context(failed)?;
    cancel_on_signal(ApiClient::new(&api.socket, &api.name))?;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last_round = None;
    let outcome = loop {
        let p: MigrationProgress = api
            .get("vm.migration-progress", CLIENT_TIMEOUT)
            .map_err(|e| match e {
                crate::api::client::ClientError::NotRunning { .. } => anyhow::anyhow!(
                    "the VMM of '{}' exited before reporting the migration's outcome",
                    args.name
                ),
                e => anyhow::Error::from(e),
            })
            .with_context(failed)?;
        if p.outcome != MigrationOutcome::Active {
            break p;
        }
        if let Some(r) = p.progress.as_ref().filter(|r| Some(r.round) != last_round) {
            last_round = Some(r.round);
            let line = format!(
                "round {:>2}  {:>8.1} MiB left  {:>7.1} MiB/s  dirtying {:>7.1} MiB/s  expected downtime {:>6.0} ms{}",
                r.round,
                r.remaining_bytes as f64 / 1048576.0,
                r.rate_bytes_per_sec / 1048576.0,
                r.dirty_rate_bytes_per_sec / 1048576.0,
                r.expected_downtime_ms,
                if r.throttle_percent > 0 { format!("  throttle {}%", r.throttle_percent) } else { String::new() }
            );
            if tty {
                eprint!("\r{line}\x1b[K");
            } else {
                eprintln!("{line}");
            }
        }
        std::thread::sleep(PROGRESS_POLL);
    };
    if tty && last_round.is_some() {
        eprintln!();
    }
    if outcome.outcome == MigrationOutcome::Unknown {
        let why = outcome.error.unwrap_or_default();
        eprintln!(
            "vmm: the migration of '{0}' committed but the destination did not confirm it ({why}).\n\
             vmm: the outcome is unknown: the guest is paused here, intact, and its disks are released.\n\
             vmm: check the destination: if it runs '{0}', discard this copy with `vmm stop {0}`;\n\
             vmm: if it does not, resume it here with `vmm resume {0} --force`.",
            args.name
        );
        return Ok(3);
    }
    if outcome.outcome != MigrationOutcome::Completed {
        let why = outcome
            .error
            .unwrap_or_else(|| format!("{:?}", outcome.outcome));
        return Err(anyhow::anyhow!(why).context(failed()));
    }
    let s = outcome
        .summary
        .context("the VM reported the migration without a summary")?;
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
/// migrate` does: `vm.cancel-migration` returns once the guest is back, the progress then
/// reads "cancelled", and `vmm migrate` exits non-zero with that. Returns once the handlers
/// are in place.
fn cancel_on_signal(api: ApiClient) -> anyhow::Result<()> {
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
                eprintln!(
                    "\nvmm: {which}: cancelling the migration of '{}'...",
                    api.name
                );
                let cancel = tokio::task::spawn_blocking(move || {
                    api.put("vm.cancel-migration", None::<&()>, CANCEL_TIMEOUT)
                });
                if let Ok(Err(e)) = cancel.await {
                    eprintln!("vmm: cannot cancel: {e}");
                }
                // Further signals wait for the migration's own outcome.
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

/// `vmm jail`: builds the jail (this process waits outside it), then runs the VMM inside.
fn jail(args: JailArgs, user: Option<crate::privileges::User>) -> anyhow::Result<u8> {
    let spec = crate::jail::JailSpec {
        id: args.id,
        chroot_base: args.chroot_base,
        user,
        netns: args.netns,
        memory_limit: args.memory_limit.as_deref().map(memory_size).transpose()?,
        cpu_percent: args.cpu_quota,
        open_files: args.open_files,
        grants: args.grants,
    };
    let inner = Cli::try_parse_from(
        ["vmm", "--runtime-dir", crate::jail::RUNTIME_DIR]
            .into_iter()
            .map(String::from)
            .chain(args.vmm_args),
    )?;
    if matches!(inner.command, Some(Command::Jail(_))) || inner.logging.user.is_some() {
        anyhow::bail!("vmm jail: give --user to the jail, and no jail inside a jail");
    }
    crate::jail::enter(&spec)?;
    execute(inner)
}

fn run_vm(
    args: RunArgs,
    runtime_dir: PathBuf,
    api_socket: Option<ApiSocketAddr>,
    monitor: EventMonitor,
) -> anyhow::Result<u8> {
    config::validate_name(&args.name)?;
    let (disks, nets) = disks_and_nets(&args)?;
    let opts = VmmOptions {
        name: args.name.clone(),
        runtime_dir,
        api_socket,
        monitor,
        allow_emulated_kernel: args.allow_emulated_kernel,
        serial: SerialSink::parse(&args.serial)?,
    };
    let start = if let Some(listen) = &args.incoming {
        // The same request an orchestrator sends as vm.receive-migration.
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let receive = ReceiveMigration {
            receiver_url: listen.clone(),
            tls_dir: path(&args.tls_dir),
            auth_key_file: path(&args.auth_key_file),
            insecure: args.insecure,
            io_timeout_s: Some(args.io_timeout),
            disks: Some(disks.iter().map(ApiDisk::from).collect()),
            net: Some(nets.iter().map(ApiNet::from).collect()),
            memory_size: args.memory.as_deref().map(memory_size).transpose()?,
            payload: args
                .kernel
                .as_ref()
                .map(|k| crate::api::types::PayloadConfig {
                    kernel: Some(k.clone()),
                    initramfs: args.initrd.clone(),
                    cmdline: Some(args.cmdline.clone()),
                }),
            net_fds: None,
        };
        Start::Receive(Box::new(ReceiveSpec::from_api(&receive, &args.name)?))
    } else {
        let memory_bytes = memory_size(args.memory.as_deref().unwrap_or("256M"))?;
        let vcpus = config::validate_vcpus(args.vcpus)?;
        Start::Boot(Box::new(VmConfig {
            name: args.name.clone(),
            kernel: args.kernel.context("--kernel is required")?,
            initrd: args.initrd,
            cmdline: args.cmdline,
            memory_bytes,
            vcpus,
            disks,
            nets,
            cpu_model: config::validate_cpu_model(&args.cpu_model)?,
            nested: args.nested,
        }))
    };
    let end = run::run(opts, start)?;
    eprintln!("vmm: {}", end.describe(&args.name));
    Ok(end.exit_code())
}

/// What `vmm info` and `vmm list` show of a VM.
#[derive(Serialize)]
struct VmSummary {
    name: String,
    pid: u32,
    /// running, paused, migrating, waiting (a destination), receiving, created, shutdown,
    /// or "paused (migration outcome unknown)" on a source whose commit was not confirmed.
    state: &'static str,
    memory_mib: u64,
    vcpus: u8,
    kernel: String,
    cmdline: String,
    uptime_secs: f64,
    /// Where a waiting destination listens, or where a migrating VM is going.
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    /// The serial console: tty, null, off, file PATH, pty PATH or socket PATH (`vmm console`
    /// attaches to the last two).
    #[serde(skip_serializing_if = "Option::is_none")]
    console: Option<String>,
}

impl VmSummary {
    fn from_api(i: ApiVmInfo) -> Self {
        let state = match (&i.migration, i.state) {
            (Some(m), _) if m.outcome.as_deref() == Some("unknown") => {
                "paused (migration outcome unknown)"
            }
            (Some(m), _) if m.role == MigrationRole::Sending => "migrating",
            (Some(m), _) if m.role == MigrationRole::Receiving => "receiving",
            (Some(_), _) => "waiting",
            (None, ApiVmState::Running) => "running",
            (None, ApiVmState::Paused) => "paused",
            (None, ApiVmState::Created) => "created",
            (None, ApiVmState::Shutdown) => "shutdown",
        };
        let config = i.config.unwrap_or_default();
        VmSummary {
            name: i.name,
            pid: i.pid,
            state,
            memory_mib: if config.payload.kernel.is_some() {
                config.memory.size >> 20
            } else {
                0
            },
            vcpus: if config.payload.kernel.is_some() {
                config.cpus.boot_vcpus
            } else {
                0
            },
            kernel: config
                .payload
                .kernel
                .map(|k| k.display().to_string())
                .unwrap_or_default(),
            cmdline: config.payload.cmdline.unwrap_or_default(),
            uptime_secs: i.uptime_secs,
            address: i.migration.map(|m| m.address),
            console: config.serial.map(|c| match c.file.or(c.socket) {
                Some(f) => format!("{} {}", format!("{:?}", c.mode).to_lowercase(), f.display()),
                None => format!("{:?}", c.mode).to_lowercase(),
            }),
        }
    }
}

fn query_info(dir: &std::path::Path, name: &str) -> anyhow::Result<VmSummary> {
    let info: ApiVmInfo = client(dir, name)?.get("vm.info", CLIENT_TIMEOUT)?;
    Ok(VmSummary::from_api(info))
}

fn console(dir: &std::path::Path, name: &str) -> anyhow::Result<u8> {
    let info: ApiVmInfo = client(dir, name)?.get("vm.info", CLIENT_TIMEOUT)?;
    let serial = info.config.and_then(|c| c.serial);
    let (path, kind) = match serial {
        Some(ConsoleConfig {
            mode: ConsoleMode::Pty,
            file: Some(path),
            ..
        }) => (path, crate::console::client::Kind::Pty),
        Some(ConsoleConfig {
            mode: ConsoleMode::Socket,
            socket: Some(path),
            ..
        }) => (path, crate::console::client::Kind::Socket),
        other => anyhow::bail!(
            "{name}'s serial console is neither a PTY nor a socket ({}): start it with `vmm run \
             --serial pty` or `--serial socket=PATH`, or serial mode Pty or Socket through the API",
            other.map_or("none".to_string(), |c| format!("mode {:?}", c.mode))
        ),
    };
    eprintln!(
        "vmm: attached to {name}'s console ({}); Ctrl-] detaches",
        path.display()
    );
    let ended = crate::console::client::attach(&path, kind)
        .with_context(|| format!("cannot open the console {}", path.display()))?;
    match ended {
        crate::console::client::Detached::ByUser => eprintln!("\r\nvmm: detached from {name}"),
        crate::console::client::Detached::ConsoleClosed => {
            eprintln!("\r\nvmm: {name}'s console closed (its VMM exited)")
        }
    }
    Ok(0)
}

fn simple(dir: &std::path::Path, name: &str, endpoint: &str, done: &str) -> anyhow::Result<u8> {
    client(dir, name)?.put(endpoint, None::<&()>, CLIENT_TIMEOUT)?;
    println!("{name}: {done}");
    Ok(0)
}

fn list(dir: &std::path::Path, json: bool) -> anyhow::Result<u8> {
    let infos: Vec<VmSummary> = paths::list_sockets(dir)
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
            i.name, i.pid, i.state, i.memory_mib, i.vcpus
        );
    }
    Ok(0)
}

fn print_info(i: &VmSummary) {
    let state = match i.state {
        "waiting" => "waiting for migration",
        s => s,
    };
    println!("name:    {}", i.name);
    println!("pid:     {}", i.pid);
    println!("state:   {state}");
    if let Some(a) = &i.address {
        println!("address: {a}");
    }
    println!("memory:  {} MiB", i.memory_mib);
    println!("vcpus:   {}", i.vcpus);
    println!("kernel:  {}", i.kernel);
    println!("cmdline: {}", i.cmdline);
    if let Some(c) = &i.console {
        println!("console: {c}");
    }
    println!("uptime:  {:.1} s", i.uptime_secs);
}
