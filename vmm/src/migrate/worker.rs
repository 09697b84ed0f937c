//! The migration worker: a thread that runs one outgoing migration of the VM, connects to the
//! destination, runs the sender, records each round in the shared [`MigrationStatus`] (read by
//! `vm.migration-progress`) and the event monitor, and reports back to the VM's owner thread
//! (the commit, an unconfirmed commit, the end). Concurrency: the worker thread drives a
//! multi-thread tokio runtime of its own (one worker per core, for the lanes, and its
//! blocking pool for the pause and the disk flush); the owner thread cancels it, or after
//! the commit abandons it, through a [`Canceller`].

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use migration::cancel::{cancel_pair, Canceller};
use migration::sender::{OnTimeout, SendEvent, SendOptions};

use super::security::{self, SecurityOptions};
use super::source::MachineSource;
use super::transport::{Endpoint, EndpointConnector, EndpointError, DEFAULT_IO_TIMEOUT};
use crate::api::migration_status::{MigrationPlan, MigrationStatus};
use crate::api::types::{ChTransportationMode, SendMigration};
use crate::event_monitor::EventMonitor;
use crate::events::VmEvent;
use crate::vm::machine::Machine;
use migration::protocol::Connector;

/// Why a `vm.send-migration` request was refused before anything started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendRequestError {
    #[error("this VM shows hardware virtualization to its guest (--nested): the state of its nested guests does not migrate")]
    Nested,
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("max_bandwidth {0} MiB/s is out of range")]
    Bandwidth(u64),
    #[error("the {0} must be at least 1 second")]
    Timeout(&'static str),
    #[error("timeout_strategy takes cancel or ignore (force), not '{0}'")]
    TimeoutStrategy(String),
    #[error(transparent)]
    Security(#[from] security::SecurityError),
    #[error("--connections takes 1 to {max}, not {0}", max = migration::protocol::MAX_CONNECTIONS)]
    Connections(u32),
    #[error("--compress takes zstd or zstd:LEVEL (1 to 19), not '{0}'")]
    Compress(String),
    #[error("cannot start the migration thread")]
    Thread(#[source] std::io::Error),
}

/// Checks the request and starts the worker; errors are about the request itself. The VM was
/// paused by its user when `user_paused`: a failed migration leaves it paused.
pub(crate) fn start(
    machine: Arc<Machine>,
    req: SendMigration,
    user_paused: bool,
    reporting: Reporting,
    events: Sender<VmEvent>,
) -> Result<Canceller, SendRequestError> {
    if machine.config.nested {
        return Err(SendRequestError::Nested);
    }
    let endpoint = Endpoint::parse(&req.destination_url)?;
    let mut opts = SendOptions {
        offline: req.offline,
        ..Default::default()
    };
    if let Some(ms) = req.downtime_ms {
        opts.downtime_budget = Duration::from_millis(ms);
    }
    if let Some(mib) = req.max_bandwidth {
        opts.max_bandwidth = mib
            .checked_mul(1 << 20)
            .ok_or(SendRequestError::Bandwidth(mib))?;
    }
    if let Some(s) = req.timeout_s {
        if s == 0 {
            return Err(SendRequestError::Timeout("timeout"));
        }
        opts.timeout = Duration::from_secs(s);
    }
    if let Some(r) = req.max_rounds {
        opts.max_rounds = r.max(1);
    }
    // Cloud Hypervisor's timeout_strategy: Cancel or Ignore (go on to the switchover, which is
    // what our "force" does); our CLI says cancel or force.
    opts.on_timeout = match req
        .timeout_strategy
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("force") | Some("ignore") => OnTimeout::Force,
        Some("cancel") => OnTimeout::Cancel,
        Some(other) => return Err(SendRequestError::TimeoutStrategy(other.to_string())),
    };
    let io_timeout = match req.io_timeout_s {
        None => DEFAULT_IO_TIMEOUT,
        Some(0) => return Err(SendRequestError::Timeout("I/O timeout")),
        Some(s) => Duration::from_secs(s),
    };
    opts.confirm_timeout = io_timeout;
    let security = security::for_source(
        &SecurityOptions {
            auth_key_file: req.auth_key_file.as_ref().map(Into::into),
            tls_dir: req.tls_dir.as_ref().map(Into::into),
            tls_hostname: req.tls_hostname.clone(),
            insecure: req.insecure,
        },
        &endpoint,
    )?;
    if req.insecure {
        if let Some(w) = security::insecure_warning(&endpoint) {
            log::warn!("{w}");
        }
    }
    opts.connections = match req.connections {
        None => 1,
        Some(n) if (1..=migration::protocol::MAX_CONNECTIONS).contains(&n) => n,
        Some(n) => return Err(SendRequestError::Connections(n)),
    };
    opts.compress = match req.compress.as_deref() {
        None | Some("none") => None,
        Some(c) => Some(parse_compress(c)?),
    };
    let (canceller, token) = cancel_pair();
    let machine_memory_bytes = machine.config.memory_bytes;
    let source = Arc::new(MachineSource::new(machine, user_paused));
    let connector = EndpointConnector {
        endpoint,
        security,
        io_timeout,
    };
    reporting.status.start(
        &req.destination_url,
        MigrationPlan {
            downtime_ms: opts.downtime_budget.as_millis() as u64,
            transport: match &connector.endpoint {
                Endpoint::Unix(_) => ChTransportationMode::Local,
                Endpoint::Tcp(_) => ChTransportationMode::Tcp {
                    connections: opts.connections,
                    tls: req.tls_dir.is_some(),
                },
            },
            memory_bytes: machine_memory_bytes,
        },
    );
    reporting.monitor.emit(
        "migration",
        "started",
        Some(serde_json::json!({ "destination": req.destination_url })),
    );
    std::thread::Builder::new()
        .name("migration".into())
        .spawn(move || {
            crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Migration);
            let result = run(source, &connector, &opts, token, &reporting, &events);
            let _ = events.send(VmEvent::MigrationFinished(Box::new(result)));
        })
        .map_err(SendRequestError::Thread)?;
    Ok(canceller)
}

/// Where a migration's progress goes.
#[derive(Clone)]
pub(crate) struct Reporting {
    pub(crate) status: Arc<MigrationStatus>,
    pub(crate) monitor: EventMonitor,
}

/// `zstd` or `zstd:LEVEL` (1 to 19; 1 when not given: fast, for links slower than the
/// compressor).
pub(crate) fn parse_compress(s: &str) -> Result<i32, SendRequestError> {
    let bad = || SendRequestError::Compress(s.to_string());
    match s.split_once(':') {
        None if s == "zstd" => Ok(1),
        Some(("zstd", level)) => level
            .parse::<i32>()
            .ok()
            .filter(|l| (1..=19).contains(l))
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// Threads for the data path of a migration, either side: one per core (the lanes of several
/// connections then encrypt and copy in parallel).
fn data_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// The runtime a migration runs on, at either end: multi-thread, one worker per core, so the
/// extra connections' lanes (encryption, copies) spread over the cores.
pub(crate) fn migration_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(data_threads())
        .thread_name("migration-lane")
        .on_thread_start(|| crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Migration))
        .enable_all()
        .build()
}

fn run(
    source: Arc<MachineSource>,
    connector: &EndpointConnector,
    opts: &SendOptions,
    token: migration::cancel::CancelToken,
    reporting: &Reporting,
    owner: &Sender<VmEvent>,
) -> Result<migration::progress::Summary, migration::MigrationError> {
    let runtime = migration_runtime().map_err(migration::MigrationError::Runtime)?;
    let result = runtime.block_on(async {
        // Connecting and the handshake count against the same limit as the rest.
        let connect = tokio::time::timeout(opts.hard_limit(), connector.connect());
        let primary = match connect.await {
            Ok(r) => r?,
            Err(_) => {
                return Err(migration::MigrationError::TimedOut(
                    opts.hard_limit().as_secs(),
                ))
            }
        };
        migration::sender::send(
            primary,
            connector,
            source,
            opts,
            |event| match event {
                SendEvent::Round(p) => {
                    reporting.status.round(p);
                    reporting
                        .monitor
                        .emit("migration", "round", serde_json::to_value(p).ok());
                }
                SendEvent::Committed => {
                    reporting.status.committed();
                    reporting.monitor.emit("migration", "committed", None);
                }
                SendEvent::Unconfirmed(why) => {
                    reporting.status.unconfirmed(why);
                    reporting.monitor.emit(
                        "migration",
                        "unconfirmed",
                        Some(serde_json::json!({ "error": why })),
                    );
                    let _ = owner.send(VmEvent::MigrationUnconfirmed(why.to_string()));
                }
            },
            token,
        )
        .await
    });
    // A flush stuck in the storage (the migration gave up on it) must not keep this thread:
    // its blocking task is left to finish on its own.
    runtime.shutdown_background();
    result
}
