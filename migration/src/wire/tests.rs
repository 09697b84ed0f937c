use super::*;
use crate::record::KEY_LEN;

fn pair(
    key: Option<[u8; KEY_LEN]>,
) -> (
    FrameWriter<tokio::io::DuplexStream>,
    FrameReader<tokio::io::DuplexStream>,
) {
    let (a, b) = tokio::io::duplex(16 << 20);
    (
        FrameWriter::new(a, Sealer::new(key.as_ref())),
        FrameReader::new(b, Opener::new(key.as_ref())),
    )
}

#[tokio::test]
async fn frames_round_trip_and_limits_hold() {
    for key in [None, Some([3u8; KEY_LEN])] {
        let (mut w, mut r) = pair(key);
        w.send(FrameKind::Config, b"hello").await.unwrap();
        let f = r.recv().await.unwrap();
        assert_eq!((f.kind, f.payload), (FrameKind::Config, &b"hello"[..]));
        w.send(FrameKind::Error, b"disk \x1b[2Jmissing")
            .await
            .unwrap();
        match r.recv().await {
            Err(WireError::Remote(m)) => assert_eq!(m, "disk  [2Jmissing"),
            other => panic!("{:?}", other.err()),
        }
        w.send(FrameKind::Accept, &[]).await.unwrap();
        assert!(matches!(
            r.expect(FrameKind::Ready).await,
            Err(WireError::Unexpected { .. })
        ));
    }
    // An oversized length is refused before anything is read into memory.
    let (mut a, b) = tokio::io::duplex(1 << 16);
    let mut r = FrameReader::new(b, Opener::new(None));
    a.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    assert!(matches!(r.recv().await, Err(WireError::TooLarge(_))));
    // A flipped byte: corrupted (insecure) or tampered (secured).
    for key in [None, Some([3u8; KEY_LEN])] {
        let (a, mut mid) = tokio::io::duplex(1 << 16);
        let mut w = FrameWriter::new(a, Sealer::new(key.as_ref()));
        w.send(FrameKind::Config, b"some config").await.unwrap();
        let mut rec = vec![0u8; 4 + 1 + 11 + if key.is_some() { 16 } else { 4 }];
        mid.read_exact(&mut rec).await.unwrap();
        rec[7] ^= 1;
        let (mut c, d) = tokio::io::duplex(1 << 16);
        c.write_all(&rec).await.unwrap();
        let mut r = FrameReader::new(d, Opener::new(key.as_ref()));
        let e = r.recv().await.err().unwrap();
        if key.is_some() {
            assert!(matches!(e, WireError::Integrity(_)), "{e}");
        } else {
            assert!(matches!(e, WireError::Corrupted(_)), "{e}");
        }
    }
}

#[tokio::test]
async fn pages_frames_carry_data_and_zero_runs() {
    let (mut w, mut r) = pair(Some([9u8; KEY_LEN]));
    let mut p = PagesWriter::begin(&mut w);
    let page = |n: u8| vec![n; PAGE_SIZE];
    // 5, 6 data; 7 zero; 8 data; 20, 21 zero; 30 data.
    for (pg, content) in [
        (5u64, 1u8),
        (6, 2),
        (7, 0),
        (8, 3),
        (20, 0),
        (21, 0),
        (30, 4),
    ] {
        let zero = p
            .push_page(&mut w, pg, true, |slot| {
                slot.copy_from_slice(&page(content));
                Ok::<_, ()>(())
            })
            .unwrap();
        assert_eq!(zero, content == 0);
    }
    assert_eq!((p.data_pages(), p.zero_pages()), (4, 3));
    p.end(&mut w);
    w.finish().await.unwrap();
    let f = r.expect(FrameKind::Pages).await.unwrap();
    let runs = parse_pages(f).unwrap();
    assert_eq!(
        runs,
        vec![
            Run::Data(5, &[page(1), page(2)].concat()),
            Run::Zero(7, 1),
            Run::Data(8, &page(3)),
            Run::Zero(20, 2),
            Run::Data(30, &page(4)),
        ]
    );
    // Without markers (round 0), zero pages vanish.
    let mut p = PagesWriter::begin(&mut w);
    for (pg, content) in [(1u64, 0u8), (2, 5), (3, 0)] {
        p.push_page(&mut w, pg, false, |slot| {
            slot.copy_from_slice(&page(content));
            Ok::<_, ()>(())
        })
        .unwrap();
    }
    p.end(&mut w);
    w.finish().await.unwrap();
    let f = r.expect(FrameKind::Pages).await.unwrap();
    assert_eq!(parse_pages(f).unwrap(), vec![Run::Data(2, &page(5))]);
}

#[test]
fn malformed_pages_payloads_are_refused() {
    let mut ok = 1u32.to_le_bytes().to_vec();
    ok.extend_from_slice(&5u64.to_le_bytes());
    ok.extend_from_slice(&1u32.to_le_bytes());
    ok.extend_from_slice(&[1u8; PAGE_SIZE]);
    assert!(parse_pages(&ok).is_ok());
    assert!(parse_pages(&ok[..ok.len() - 1]).is_err());
    let mut extra = ok.clone();
    extra.push(0);
    assert!(parse_pages(&extra).is_err());
    let mut lying = ok.clone();
    lying[0..4].copy_from_slice(&3u32.to_le_bytes());
    assert!(parse_pages(&lying).is_err());
    let mut empty = ok.clone();
    empty[12..16].copy_from_slice(&0u32.to_le_bytes());
    assert!(parse_pages(&empty).is_err());
    let mut huge = ok.clone();
    huge[12..16].copy_from_slice(&(!ZERO_RUN).to_le_bytes());
    assert!(parse_pages(&huge).is_err());
    let mut zeros = 1u32.to_le_bytes().to_vec();
    zeros.extend_from_slice(&5u64.to_le_bytes());
    zeros.extend_from_slice(&(ZERO_RUN | 1000).to_le_bytes());
    assert_eq!(parse_pages(&zeros).unwrap(), vec![Run::Zero(5, 1000)]);
}

#[tokio::test]
async fn a_read_dropped_half_way_loses_nothing() {
    // The record arrives a few bytes at a time; every read is interrupted by a timer, as in a
    // select! with other branches, and the frame still comes out whole.
    let (a, b) = tokio::io::duplex(1 << 16);
    let mut w = FrameWriter::new(Vec::new(), Sealer::new(Some(&[5u8; KEY_LEN])));
    w.send(FrameKind::Config, &[9u8; 5000]).await.unwrap();
    let record = std::mem::take(&mut w.io);
    let feeder = tokio::spawn(async move {
        let mut a = a;
        for chunk in record.chunks(700) {
            a.write_all(chunk).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        }
        a
    });
    let mut r = FrameReader::new(b, Opener::new(Some(&[5u8; KEY_LEN])));
    let mut interrupted = 0;
    loop {
        tokio::select! {
            f = r.recv() => {
                let f = f.unwrap();
                assert!(f.kind == FrameKind::Config && f.payload == [9u8; 5000]);
                break;
            }
            _ = tokio::time::sleep(std::time::Duration::from_millis(1)) => interrupted += 1,
        }
    }
    assert!(interrupted > 0, "the read was interrupted at least once");
    drop(feeder.await.unwrap());
}
