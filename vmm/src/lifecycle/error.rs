//! Why a VMM process could not do what it was started or asked for: start up, boot its VM,
//! take a `vm.receive-migration` request, or receive the VM. The binary prints the chain.

use std::path::PathBuf;

use crate::api::config_error::ConfigRequestError;
use crate::config::ConfigError;
use crate::migrate::security::SecurityError;
use crate::migrate::transport::EndpointError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error(transparent)]
    Lock(#[from] crate::paths::PathsError),
    #[error("cannot create the API socket {}", .0.display())]
    ApiSocket(PathBuf, #[source] std::io::Error),
    #[error(transparent)]
    InheritedSocket(#[from] crate::unix_socket::ApiSocketError),
    #[error("cannot start the API server")]
    ApiServer(#[source] std::io::Error),
    #[error("no VM is created")]
    NoVm,
    #[error("cannot open kernel {}", .0.display())]
    KernelOpen(PathBuf, #[source] std::io::Error),
    #[error("cannot read kernel {}", .0.display())]
    KernelRead(PathBuf, #[source] arch::loader::LoaderError),
    #[error("{} is a Linux kernel, but {}", .0.display(), crate::vm::host::PVM_LINUX_REFUSAL)]
    EmulatedLinux(PathBuf),
    #[error("cannot open the serial output {0}")]
    Serial(String, #[source] std::io::Error),
    #[error("cannot build VM '{0}'")]
    Build(String, #[source] crate::vm::assembly::BuildError),
    #[error("cannot start the device event loop")]
    EventLoop(#[source] std::io::Error),
    #[error(transparent)]
    Vcpus(#[from] crate::vm::vcpu::VcpuError),
    #[error("cannot start the incoming-migration thread")]
    ReceiveThread(#[source] std::io::Error),
    #[error(transparent)]
    Receive(#[from] ReceiveError),
}

/// A `vm.receive-migration` request (or `vmm run --incoming`'s options) that cannot be served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReceiveSpecError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error(transparent)]
    Security(#[from] SecurityError),
    #[error(transparent)]
    Devices(#[from] ConfigRequestError),
    #[error("memory_size")]
    Memory(#[source] ConfigError),
    #[error(
        "payload: a granted payload needs its kernel (the initramfs and cmdline are optional)"
    )]
    PayloadKernel,
}

/// Receiving the VM failed; nothing of it was started here.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReceiveError {
    #[error("incoming migration of {0} failed; nothing was started here")]
    Failed(String, #[source] Box<ReceiveError>),
    #[error("cannot map the guest memory")]
    Memory(#[source] crate::vm::memory::MemoryError),
    #[error("cannot start the migration runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot listen on {0}")]
    Listen(String, #[source] std::io::Error),
    #[error("cannot accept a source")]
    Accept(#[source] std::io::Error),
    #[error("stopped while waiting")]
    Stopped,
    #[error(transparent)]
    Migration(#[from] migration::MigrationError),
    #[error("the migration ended without a VM")]
    NoVm,
    #[error("the incoming-migration thread failed")]
    Thread,
}
