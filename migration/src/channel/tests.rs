//! The channel over an in-memory pipe: frames get through both ways; a wrong key, a mode
//! mismatch, a foreign peer, and every kind of record tampering end the connection.

use std::time::Duration;

use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;
use crate::wire::{FrameKind, WireError};

fn key(s: &str) -> Key {
    Key::new(s.as_bytes().to_vec()).unwrap()
}

fn boxed(s: DuplexStream) -> Box<dyn Transport> {
    Box::new(s)
}

async fn pair(
    src: SourceSecurity,
    dst: DestinationSecurity,
) -> (Result<Channel, ChannelError>, Result<Channel, ChannelError>) {
    let (a, b) = duplex(1 << 20);
    let d = tokio::spawn(async move { secure_destination(boxed(b), &dst).await });
    let s = secure_source(boxed(a), &src).await;
    (s, d.await.unwrap())
}

#[tokio::test]
async fn a_psk_channel_carries_frames_both_ways() {
    let k = key("0123456789abcdef0123456789abcdef");
    let (s, d) = pair(SourceSecurity::Psk(k.clone()), DestinationSecurity::Psk(k)).await;
    let (mut s, mut d) = (s.unwrap(), d.unwrap());
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
    s.writer.send(FrameKind::Config, &big).await.unwrap();
    let f = d.reader.recv().await.unwrap();
    assert!(
        f.kind == FrameKind::Config && f.payload == big.as_slice(),
        "intact"
    );
    d.writer.send(FrameKind::Accept, b"hello").await.unwrap();
    assert_eq!(s.reader.expect(FrameKind::Accept).await.unwrap(), b"hello");
}

#[tokio::test]
async fn a_wrong_key_fails_on_both_ends() {
    let (s, d) = pair(
        SourceSecurity::Psk(key("0123456789abcdef0123456789abcdef")),
        DestinationSecurity::Psk(key("0123456789abcdef0123456789abcdeF")),
    )
    .await;
    assert!(matches!(s, Err(ChannelError::KeyMismatch)), "{:?}", s.err());
    assert!(matches!(d, Err(ChannelError::KeyMismatch)), "{:?}", d.err());
}

#[tokio::test]
async fn different_modes_are_refused_with_a_message_on_both_ends() {
    let k = key("0123456789abcdef0123456789abcdef");
    let (s, d) = pair(
        SourceSecurity::Insecure,
        DestinationSecurity::Psk(k.clone()),
    )
    .await;
    let (s, d) = (s.err().unwrap().to_string(), d.err().unwrap().to_string());
    assert!(s.contains("destination requires a pre-shared key"), "{s}");
    assert!(d.contains("source requires an unencrypted"), "{d}");
    let (s, d) = pair(SourceSecurity::Psk(k), DestinationSecurity::Insecure).await;
    let (s, d) = (s.err().unwrap().to_string(), d.err().unwrap().to_string());
    assert!(s.contains("destination requires an unencrypted"), "{s}");
    assert!(d.contains("source requires a pre-shared key"), "{d}");
}

#[tokio::test]
async fn a_foreign_peer_gets_nothing_but_a_preface() {
    let (mut a, b) = duplex(1 << 16);
    let k = key("0123456789abcdef0123456789abcdef");
    let d =
        tokio::spawn(
            async move { secure_destination(boxed(b), &DestinationSecurity::Psk(k)).await },
        );
    a.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert!(matches!(
        d.await.unwrap(),
        Err(ChannelError::NotMigrationPeer)
    ));
    let mut rest = Vec::new();
    a.read_to_end(&mut rest).await.unwrap();
    assert!(
        rest.is_empty(),
        "nothing is sent to a peer with a wrong preface"
    );
}

/// Reads one handshake message (u16 length) or one record (u32 length, body, 16-byte tag).
async fn read_unit(s: &mut DuplexStream, record: bool) -> std::io::Result<Vec<u8>> {
    let (len_bytes, len) = if record {
        let mut l = [0u8; 4];
        s.read_exact(&mut l).await?;
        (l.to_vec(), u32::from_le_bytes(l) as usize + 16)
    } else {
        let mut l = [0u8; 2];
        s.read_exact(&mut l).await?;
        (l.to_vec(), u16::from_be_bytes(l) as usize)
    };
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    Ok([len_bytes, body].concat())
}

/// What the relay does to the records it carries.
type RecordTamper = fn(Vec<Vec<u8>>) -> Vec<Vec<u8>>;

/// A pipe through a relay that hands the source's records to `tamper` (after the prefaces
/// and the handshake, which pass untouched); returns what the destination read.
async fn tampered(tamper: RecordTamper) -> Result<Vec<Vec<u8>>, WireError> {
    let k = key("0123456789abcdef0123456789abcdef");
    let (a, mut a_far) = duplex(1 << 20);
    let (mut b_far, b) = duplex(1 << 20);
    let relay = tokio::spawn(async move {
        let mut pre = [0u8; PREFACE_LEN];
        a_far.read_exact(&mut pre).await.unwrap();
        b_far.write_all(&pre).await.unwrap();
        b_far.read_exact(&mut pre).await.unwrap();
        a_far.write_all(&pre).await.unwrap();
        let msg1 = read_unit(&mut a_far, false).await.unwrap();
        b_far.write_all(&msg1).await.unwrap();
        let msg2 = read_unit(&mut b_far, false).await.unwrap();
        a_far.write_all(&msg2).await.unwrap();
        let mut records = Vec::new();
        for _ in 0..4 {
            records.push(read_unit(&mut a_far, true).await.unwrap());
        }
        for r in tamper(records) {
            b_far.write_all(&r).await.unwrap();
        }
        b_far.shutdown().await.unwrap();
    });
    let d = tokio::spawn(async move {
        let mut ch = secure_destination(boxed(b), &DestinationSecurity::Psk(k))
            .await
            .unwrap();
        let mut got = Vec::new();
        loop {
            match ch.reader.recv().await {
                Ok(f) => got.push(f.payload.to_vec()),
                Err(WireError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ok(got)
                }
                Err(e) => return Err(e),
            }
        }
    });
    let mut s = secure_source(
        boxed(a),
        &SourceSecurity::Psk(key("0123456789abcdef0123456789abcdef")),
    )
    .await
    .unwrap();
    for i in 0..4u8 {
        s.writer.send(FrameKind::Config, &[i; 100]).await.unwrap();
    }
    relay.await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), d)
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn altered_replayed_reordered_or_dropped_records_are_detected() {
    let intact = tampered(|r| r).await.unwrap();
    assert_eq!(intact.len(), 4, "the untouched relay delivers everything");
    let cases: [(&str, RecordTamper); 4] = [
        ("altered", |mut r| {
            r[1][10] ^= 1;
            r
        }),
        ("replayed", |mut r| {
            let again = r[1].clone();
            r.insert(2, again);
            r
        }),
        ("reordered", |mut r| {
            r.swap(1, 2);
            r
        }),
        ("dropped", |mut r| {
            r.remove(1);
            r
        }),
    ];
    for (what, tamper) in cases {
        let e = tampered(tamper).await.expect_err(what);
        assert!(matches!(e, WireError::Integrity(_)), "{what}: {e}");
    }
}
