//! The record layer under the migration protocol: every frame travels as one record,
//! `[length: u32 le][body][trailer]`, where the trailer is
//! - on a secured channel, the 16-byte AES-256-GCM tag (ring) over the body, with the length as
//!   associated data, under the key of its direction and a nonce that is that direction's
//!   record counter (4 zero bytes, then the counter big-endian, as Noise's AESGCM does): a
//!   record altered, replayed, reordered or dropped fails to open, and the stream ends;
//! - with `--insecure`, a CRC32 of the body: it catches accidents, not attackers.
//!
//! The keys come from the channel's handshake (the Noise split, or the TLS 1.3 exporter); they
//! are never derived here. Sealing and opening work in place on the caller's buffer, so a page
//! is copied once from guest memory into the record and encrypted where it lies.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

/// Bytes before the body.
pub(crate) const HEADER_LEN: usize = 4;
/// Bytes after the body, at most (the AEAD tag; a CRC takes 4).
pub(crate) const MAX_TRAILER_LEN: usize = 16;
/// Length of one direction's key.
pub(crate) const KEY_LEN: usize = 32;

/// The keys of one end: what it seals with, what it opens with.
pub(crate) struct RecordKeys {
    pub send: [u8; KEY_LEN],
    pub recv: [u8; KEY_LEN],
}

/// A record that failed its check: tampered with, or (insecure mode) corrupted.
#[derive(Debug, thiserror::Error)]
#[error("a record failed its integrity check (altered, replayed, reordered or dropped in transit, or sent with another key)")]
pub struct IntegrityError;

enum Protection {
    Crc,
    Aead(Box<LessSafeKey>),
}

impl Protection {
    fn new(key: Option<&[u8; KEY_LEN]>) -> Self {
        match key {
            None => Protection::Crc,
            Some(k) => Protection::Aead(Box::new(LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, k).expect("a 32-byte AES-256-GCM key"),
            ))),
        }
    }

    fn trailer_len(&self) -> usize {
        match self {
            Protection::Crc => 4,
            Protection::Aead(_) => AES_256_GCM.tag_len(),
        }
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Seals records in one direction.
pub struct Sealer {
    protection: Protection,
    counter: u64,
}

impl Sealer {
    /// `key`: None for an insecure channel (CRC trailer).
    pub fn new(key: Option<&[u8; KEY_LEN]>) -> Self {
        Sealer {
            protection: Protection::new(key),
            counter: 0,
        }
    }

    /// Seals `record[HEADER_LEN..body_end]` in place: writes the header, encrypts the body and
    /// puts the trailer right after it. `record` must have room for the trailer. Returns the
    /// record's total length.
    pub fn seal(&mut self, record: &mut [u8], body_end: usize) -> usize {
        let body_len = (body_end - HEADER_LEN) as u32;
        record[..HEADER_LEN].copy_from_slice(&body_len.to_le_bytes());
        let (header, rest) = record.split_at_mut(HEADER_LEN);
        let (body, trailer) = rest.split_at_mut(body_end - HEADER_LEN);
        let n = self.protection.trailer_len();
        match &self.protection {
            Protection::Crc => trailer[..4].copy_from_slice(&crc32fast::hash(body).to_le_bytes()),
            Protection::Aead(key) => {
                let tag = key
                    .seal_in_place_separate_tag(nonce(self.counter), Aad::from(&*header), body)
                    .expect("AES-GCM seals any record under 64 GiB");
                trailer[..n].copy_from_slice(tag.as_ref());
            }
        }
        self.counter += 1;
        body_end + n
    }
}

/// Opens records in one direction.
pub struct Opener {
    protection: Protection,
    counter: u64,
}

impl Opener {
    pub fn new(key: Option<&[u8; KEY_LEN]>) -> Self {
        Opener {
            protection: Protection::new(key),
            counter: 0,
        }
    }

    /// How many bytes follow a header announcing a body of `body_len`.
    pub(crate) fn rest_len(&self, body_len: usize) -> usize {
        body_len + self.protection.trailer_len()
    }

    /// Opens a record whose header is `header` and whose body and trailer are `rest`, in
    /// place; returns the body.
    pub fn open<'a>(
        &mut self,
        header: [u8; HEADER_LEN],
        rest: &'a mut [u8],
    ) -> Result<&'a mut [u8], IntegrityError> {
        let n = self.protection.trailer_len();
        let body_len = rest.len().checked_sub(n).ok_or(IntegrityError)?;
        let counter = self.counter;
        self.counter += 1;
        match &self.protection {
            Protection::Crc => {
                let (body, crc) = rest.split_at_mut(body_len);
                if crc32fast::hash(body).to_le_bytes() != crc[..4] {
                    return Err(IntegrityError);
                }
                Ok(body)
            }
            Protection::Aead(key) => key
                .open_in_place(nonce(counter), Aad::from(header), rest)
                .map_err(|_| IntegrityError),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sealer: &mut Sealer, body: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; HEADER_LEN + body.len() + MAX_TRAILER_LEN];
        buf[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(body);
        let n = sealer.seal(&mut buf, HEADER_LEN + body.len());
        buf.truncate(n);
        buf
    }

    fn open(opener: &mut Opener, rec: &[u8]) -> Result<Vec<u8>, IntegrityError> {
        let header: [u8; 4] = rec[..4].try_into().unwrap();
        let mut rest = rec[4..].to_vec();
        opener.open(header, &mut rest).map(|b| b.to_vec())
    }

    #[test]
    fn sealed_records_open_once_in_order_and_only_untouched() {
        for key in [None, Some([7u8; KEY_LEN])] {
            let mut s = Sealer::new(key.as_ref());
            let recs: Vec<Vec<u8>> = (0..3u8).map(|i| record(&mut s, &[i; 100])).collect();
            let mut o = Opener::new(key.as_ref());
            for (i, r) in recs.iter().enumerate() {
                assert_eq!(open(&mut o, r).unwrap(), vec![i as u8; 100]);
            }
            let mut flipped = recs[0].clone();
            flipped[10] ^= 1;
            assert!(open(&mut Opener::new(key.as_ref()), &flipped).is_err());
        }
        let key = Some([7u8; KEY_LEN]);
        let mut s = Sealer::new(key.as_ref());
        let r0 = record(&mut s, b"first");
        let r1 = record(&mut s, b"second");
        // Replayed, reordered, dropped: the counter no longer matches.
        let mut o = Opener::new(key.as_ref());
        open(&mut o, &r0).unwrap();
        assert!(open(&mut o, &r0).is_err(), "replay");
        assert!(
            open(&mut Opener::new(key.as_ref()), &r1).is_err(),
            "reorder or drop"
        );
        // A body in the clear is not in the record.
        assert!(!r0.windows(5).any(|w| w == b"first"));
        let other = Some([8u8; KEY_LEN]);
        assert!(
            open(&mut Opener::new(other.as_ref()), &r0).is_err(),
            "another key"
        );
    }
}
