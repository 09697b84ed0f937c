//! The migration worker: a thread that owns the VM while a migration runs, connects to the
//! destination, runs the sender, streams progress to the requesting client, and reports back to
//! the VM's owner thread.

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use migration::sender::{OnTimeout, SendOptions};

use migration::channel::SourceSecurity;

use super::security::{self, SecurityOptions};
use super::source::MachineSource;
use super::transport::{connect_secured, Endpoint};
use crate::control::protocol::{MigrateRequest, Response};
use crate::events::{Responder, VmEvent};
use crate::machine::Machine;

/// Checks the request and starts the worker; errors are about the request itself.
pub fn start(
    machine: Arc<Machine>,
    req: MigrateRequest,
    reply: Responder,
    events: Sender<VmEvent>,
) -> Result<(), String> {
    let endpoint = Endpoint::parse(&req.to)?;
    let mut opts = SendOptions {
        offline: req.offline,
        ..Default::default()
    };
    if let Some(ms) = req.downtime_ms {
        opts.downtime_budget = Duration::from_millis(ms);
    }
    if let Some(mib) = req.max_bandwidth_mib {
        opts.max_bandwidth = mib << 20;
    }
    if let Some(s) = req.timeout_secs {
        opts.timeout = Duration::from_secs(s);
    }
    if let Some(r) = req.max_rounds {
        opts.max_rounds = r.max(1);
    }
    opts.on_timeout = match req.on_timeout.as_deref() {
        None | Some("force") => OnTimeout::Force,
        Some("cancel") => OnTimeout::Cancel,
        Some(other) => return Err(format!("--on-timeout takes cancel or force, not '{other}'")),
    };
    let security = security::for_source(
        &SecurityOptions {
            auth_key_file: req.auth_key_file.as_ref().map(Into::into),
            tls_dir: req.tls_dir.as_ref().map(Into::into),
            tls_hostname: req.tls_hostname.clone(),
            insecure: req.insecure,
        },
        &endpoint,
    )
    .map_err(|e| crate::error_chain(&e))?;
    if req.insecure {
        if let Some(w) = security::insecure_warning(&endpoint) {
            log::warn!("{w}");
        }
    }
    std::thread::Builder::new()
        .name("migration".into())
        .spawn(move || {
            let result = run(machine, &endpoint, &security, &opts, &reply);
            let _ = events.send(VmEvent::MigrationFinished { result, reply });
        })
        .map_err(|e| format!("cannot start the migration thread: {e}"))?;
    Ok(())
}

fn run(
    machine: Arc<Machine>,
    endpoint: &Endpoint,
    security: &SourceSecurity,
    opts: &SendOptions,
    reply: &Responder,
) -> Result<migration::progress::Summary, migration::MigrationError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            migration::MigrationError::Source(format!("cannot start the I/O runtime: {e}"))
        })?;
    let source = MachineSource { machine };
    runtime.block_on(async {
        let mut stream = connect_secured(endpoint, security).await?;
        migration::sender::send(&mut stream, &source, opts, |p| {
            let _ = reply.send(Response::progress(p.clone()));
        })
        .await
    })
}
