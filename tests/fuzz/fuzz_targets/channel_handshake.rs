//! A destination's channel handshake fed by an unauthenticated peer: preface and Noise
//! messages from the fuzzer end in an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use migration::channel::{secure_destination, DestinationSecurity};
use migration::key::Key;
use tokio::io::AsyncWriteExt;

fuzz_target!(|data: &[u8]| {
    let data = data.to_vec();
    vmm_fuzz::block_on(async move {
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        peer.write_all(&data).await.unwrap();
        peer.shutdown().await.unwrap();
        let key = Key::new(b"fuzzing-key-0123456789-of-32-bytes".to_vec()).unwrap();
        let secured = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            secure_destination(Box::new(ours), &DestinationSecurity::Psk(key)),
        )
        .await;
        if let Ok(Ok(mut ch)) = secured {
            let _ = ch.reader.recv().await;
        }
        drop(peer);
    });
});
