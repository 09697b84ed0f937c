//! The destination side: accept one source, build the empty VM from its config, fill memory,
//! restore state, and resume only after the source commits.

use tokio::io::{AsyncRead, AsyncWrite};

use crate::protocol::{exchange_hello, MigrationError};
use crate::vm::{region_index, TargetBuilder, TargetVm};
use crate::wire::{self, FrameKind, PAGE_SIZE};

/// Receives a VM over `stream`, a channel already secured (see [`crate::channel`]); on success it is running here. On failure the half-built VM is dropped
/// (discarded) and the source is told why, if the connection still works.
pub async fn receive<S>(
    stream: &mut S,
    builder: &mut (dyn TargetBuilder + Send),
) -> Result<Box<dyn TargetVm>, MigrationError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match receive_inner(stream, builder).await {
        Ok(vm) => Ok(vm),
        Err(e) => {
            if !matches!(e, MigrationError::Wire(wire::WireError::Remote(_))) {
                let _ =
                    wire::write_frame(stream, FrameKind::Error, crate::error_chain(&e).as_bytes())
                        .await;
                wire::linger_close(stream).await;
            }
            Err(e)
        }
    }
}

async fn receive_inner<S>(
    stream: &mut S,
    builder: &mut (dyn TargetBuilder + Send),
) -> Result<Box<dyn TargetVm>, MigrationError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The destination speaks first: a source whose TLS certificate it rejected then reads the
    // alert instead of writing into a closed connection.
    exchange_hello(stream, true).await?;
    let config = wire::expect_frame(stream, FrameKind::Config).await?;
    let mut vm = builder.build(&config).map_err(MigrationError::Refused)?;
    wire::write_frame(stream, FrameKind::Accept, &[]).await?;
    let regions = vm.regions();
    loop {
        let frame = wire::read_frame(stream).await?;
        match frame.kind {
            FrameKind::Pages => {
                for (first_page, data) in wire::parse_pages(&frame.payload)? {
                    let pages = data.len() / PAGE_SIZE;
                    let gpa = first_page
                        .checked_mul(PAGE_SIZE as u64)
                        .ok_or_else(|| MigrationError::Protocol("page number overflow".into()))?;
                    if region_index(&regions, gpa, pages).is_none() {
                        return Err(MigrationError::Protocol(format!(
                            "{pages} pages at {gpa:#x} lie outside guest memory"
                        )));
                    }
                    vm.write_memory(gpa, data).map_err(MigrationError::Target)?;
                }
            }
            FrameKind::RoundEnd => {}
            FrameKind::State => {
                vm.restore_state(&frame.payload)
                    .map_err(MigrationError::Target)?;
                break;
            }
            other => {
                return Err(MigrationError::Protocol(format!(
                    "unexpected {other:?} frame during memory transfer"
                )))
            }
        }
    }
    wire::write_frame(stream, FrameKind::Ready, &[]).await?;
    // Nothing runs here until the source commits: it may still resume the guest itself.
    wire::expect_frame(stream, FrameKind::Commit).await?;
    vm.acquire().map_err(MigrationError::Target)?;
    vm.resume().map_err(MigrationError::Target)?;
    // The guest runs here now; a lost acknowledgement does not change that.
    let _ = wire::write_frame(stream, FrameKind::Resumed, &[]).await;
    Ok(vm)
}
