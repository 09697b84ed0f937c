//! The destination's receiver past authentication: a real source handshake (Noise with the
//! test key) opens the channel, then the fuzzer's frames go through it, sealed as the source
//! seals them, in any order: Hello, Config, Pages, RoundEnd, State, Commit and the rest. The
//! receiver must end in an error or a received VM, never a panic, and never write outside the
//! guest memory it was given. The VM's config and state are checked by the VMM's own
//! `decode_config` and `decode_state`.
//!
//! Input: frames as `[kind: u8 as on the wire][length: u16 le][payload]`, repeated.
#![no_main]
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use migration::channel::{secure_destination, secure_source, DestinationSecurity, SourceSecurity};
use migration::key::Key;
use migration::protocol::{Acceptor, BoxFuture};
use migration::vm::{RamRegion, TargetBuilder, TargetVm, VmResult};
use migration::wire::FrameKind;
use migration::MigrationError;

/// Guest memory of the fuzzed VM: 512 pages at guest address 0.
const PAGES: usize = 512;

struct Memory(Arc<Mutex<Vec<u8>>>);

impl TargetVm for Memory {
    fn regions(&self) -> Vec<RamRegion> {
        vec![RamRegion { gpa: 0, pages: PAGES }]
    }
    fn write_memory(&self, gpa: u64, data: &[u8]) -> VmResult<()> {
        let mut mem = self.0.lock().unwrap();
        let at = gpa as usize;
        assert!(at + data.len() <= mem.len(), "receiver wrote past guest memory");
        mem[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn zero_memory(&self, gpa: u64, len: usize) -> VmResult<()> {
        let mut mem = self.0.lock().unwrap();
        let at = gpa as usize;
        assert!(at + len <= mem.len(), "receiver zeroed past guest memory");
        mem[at..at + len].fill(0);
        Ok(())
    }
    fn restore_state(&self, state: &[u8]) -> VmResult<()> {
        vmm::migrate::target::decode_state(state).map(|_| ())
    }
    fn acquire(&self) -> VmResult<()> {
        Ok(())
    }
    fn resume(&self) -> VmResult<()> {
        Ok(())
    }
}

struct Builder;

impl TargetBuilder for Builder {
    fn build(&mut self, config: &[u8]) -> VmResult<Box<dyn TargetVm>> {
        vmm::migrate::target::decode_config(config)?;
        Ok(Box::new(Memory(Arc::new(Mutex::new(vec![0; PAGES * 4096])))))
    }
}

/// No extra connections arrive.
struct NoMore;

impl Acceptor for NoMore {
    fn accept(&mut self) -> BoxFuture<'_, Result<migration::channel::Channel, MigrationError>> {
        Box::pin(async { Err(MigrationError::Protocol("no more connections".into())) })
    }
}

const KINDS: [FrameKind; 14] = [
    FrameKind::Hello,
    FrameKind::Join,
    FrameKind::Config,
    FrameKind::Accept,
    FrameKind::Pages,
    FrameKind::RoundEnd,
    FrameKind::State,
    FrameKind::Ready,
    FrameKind::Commit,
    FrameKind::Resumed,
    FrameKind::Error,
    FrameKind::Done,
    FrameKind::PagesZ,
    FrameKind::RoundAck,
];

/// The fuzzer's frames: a kind byte is the wire's kind, or else picks from [`KINDS`] (modulo);
/// a short tail ends the list.
fn frames(mut data: &[u8]) -> Vec<(FrameKind, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 3 {
        let kind = KINDS
            .iter()
            .copied()
            .find(|k| *k as u8 == data[0])
            .unwrap_or(KINDS[data[0] as usize % KINDS.len()]);
        let len = (u16::from_le_bytes([data[1], data[2]]) as usize).min(data.len() - 3);
        out.push((kind, &data[3..3 + len]));
        data = &data[3 + len..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let list: Vec<(FrameKind, Vec<u8>)> = frames(data)
        .into_iter()
        .map(|(k, p)| (k, p.to_vec()))
        .collect();
    vmm_fuzz::block_on(async move {
        let key = Key::new(b"fuzzing-key-0123456789-of-32-bytes".to_vec()).unwrap();
        let (ours, theirs) = tokio::io::duplex(4 << 20);
        let destination = {
            let key = key.clone();
            async move {
                let channel = secure_destination(Box::new(theirs), &DestinationSecurity::Psk(key))
                    .await
                    .expect("the source's own handshake");
                let (_canceller, token) = migration::cancel::cancel_pair();
                let mut builder = Builder;
                let _ = migration::receiver::receive(
                    channel,
                    &mut NoMore,
                    &mut builder,
                    token,
                    &mut |_| {},
                )
                .await;
            }
        };
        let source = async move {
            let mut ch = secure_source(Box::new(ours), &SourceSecurity::Psk(key))
                .await
                .expect("the destination's own handshake");
            for (kind, payload) in &list {
                if ch.writer.send(*kind, payload).await.is_err() {
                    break;
                }
            }
            ch.writer.shutdown().await;
            // Read what the destination says until it closes, so it never waits on us.
            while ch.reader.recv().await.is_ok() {}
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(destination, source)
        })
        .await;
    });
});
