//! The pages codec: a payload that parses re-encodes (through the writer the source uses) to
//! the same pages.
#![no_main]
use libfuzzer_sys::fuzz_target;
use migration::record::{Opener, Sealer};
use migration::wire::{parse_pages, FrameReader, FrameWriter, PagesWriter, Run, PAGE_SIZE};

/// Every page a payload sets: its number and its bytes (None: zero).
fn pages(runs: &[Run]) -> Vec<(u64, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    for run in runs {
        match run {
            Run::Data(first, data) => {
                for (i, p) in data.chunks(PAGE_SIZE).enumerate() {
                    out.push((first.wrapping_add(i as u64), Some(p.to_vec())));
                }
            }
            Run::Zero(first, n) => {
                for i in 0..(*n).min(4096) {
                    out.push((first.wrapping_add(i as u64), None));
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(runs) = parse_pages(data) else { return };
    let want = pages(&runs);
    if want.len() > 2048 {
        return;
    }
    vmm_fuzz::block_on(async {
        let (a, b) = tokio::io::duplex(16 << 20);
        let mut w = FrameWriter::new(a, Sealer::new(None));
        let mut p = PagesWriter::begin(&mut w);
        let mut sent = Vec::new();
        for (page, bytes) in &want {
            if !p.has_room() {
                break;
            }
            let zero = p
                .push_page(&mut w, *page, true, |slot| {
                    match bytes {
                        Some(b) => slot.copy_from_slice(b),
                        None => slot.fill(0),
                    }
                    Ok::<_, ()>(())
                })
                .unwrap();
            // A data page of zeros becomes a zero marker: the same page either way.
            sent.push((*page, if zero { None } else { bytes.clone() }));
        }
        p.end(&mut w);
        w.finish().await.unwrap();
        let mut r = FrameReader::new(b, Opener::new(None));
        let f = r.recv().await.unwrap();
        let got = pages(&parse_pages(f.payload).unwrap());
        assert_eq!(got, sent);
    });
});
