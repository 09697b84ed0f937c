//! The state envelope (docs/design.md section 6): magic, format version (major.minor), payload
//! length, a self-describing CBOR payload, and a CRC32 over all of it. A reader accepts any
//! minor version of its major: newer fields carry `#[serde(default)]`, unknown ones are ignored.

use serde::de::DeserializeOwned;
use serde::Serialize;

pub(crate) const MAGIC: &[u8; 4] = b"VMMS";
pub(crate) const FORMAT_MAJOR: u16 = 1;
pub(crate) const FORMAT_MINOR: u16 = 1;
const HEADER_LEN: usize = 4 + 2 + 2 + 4;
/// Largest payload accepted: VM state is kilobytes; memory never travels in an envelope.
pub(crate) const MAX_PAYLOAD: usize = 64 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("state envelope too short ({0} bytes)")]
    Truncated(usize),
    #[error("not a VM state envelope (bad magic)")]
    BadMagic,
    #[error("state format {major}.{minor} is not readable by this vmm (format {FORMAT_MAJOR}.x)")]
    Version { major: u16, minor: u16 },
    #[error("state payload of {0} bytes is larger than the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
    #[error("state envelope length field says {declared} bytes, {actual} present")]
    Length { declared: usize, actual: usize },
    #[error("state envelope checksum mismatch (corrupted in transit?)")]
    Checksum,
    #[error("cannot encode state: {0}")]
    Encode(String),
    #[error("cannot decode state: {0}")]
    Decode(String),
}

/// Serialises `value` into an envelope.
pub fn seal<T: Serialize>(value: &T) -> Result<Vec<u8>, EnvelopeError> {
    let mut payload = Vec::new();
    ciborium::into_writer(value, &mut payload).map_err(|e| EnvelopeError::Encode(e.to_string()))?;
    if payload.len() > MAX_PAYLOAD {
        return Err(EnvelopeError::TooLarge(payload.len()));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_MAJOR.to_le_bytes());
    out.extend_from_slice(&FORMAT_MINOR.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Checks and decodes an envelope.
pub fn open<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, EnvelopeError> {
    if bytes.len() < HEADER_LEN + 4 {
        return Err(EnvelopeError::Truncated(bytes.len()));
    }
    if &bytes[0..4] != MAGIC {
        return Err(EnvelopeError::BadMagic);
    }
    let major = u16::from_le_bytes([bytes[4], bytes[5]]);
    let minor = u16::from_le_bytes([bytes[6], bytes[7]]);
    if major != FORMAT_MAJOR {
        return Err(EnvelopeError::Version { major, minor });
    }
    let declared = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    if declared > MAX_PAYLOAD {
        return Err(EnvelopeError::TooLarge(declared));
    }
    let actual = bytes.len() - HEADER_LEN - 4;
    if declared != actual {
        return Err(EnvelopeError::Length { declared, actual });
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().unwrap()) {
        return Err(EnvelopeError::Checksum);
    }
    ciborium::from_reader(&body[HEADER_LEN..]).map_err(|e| EnvelopeError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct V1 {
        a: u32,
        b: Vec<u8>,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct V2 {
        a: u32,
        b: Vec<u8>,
        #[serde(default)]
        c: Option<String>,
    }

    #[test]
    fn round_trip() {
        let v = V1 {
            a: 7,
            b: vec![1, 2, 3],
        };
        assert_eq!(open::<V1>(&seal(&v).unwrap()).unwrap(), v);
    }

    #[test]
    fn newer_fields_default_and_unknown_fields_are_ignored() {
        let old = seal(&V1 { a: 1, b: vec![] }).unwrap();
        assert_eq!(
            open::<V2>(&old).unwrap(),
            V2 {
                a: 1,
                b: vec![],
                c: None
            }
        );
        let new = seal(&V2 {
            a: 2,
            b: vec![9],
            c: Some("x".into()),
        })
        .unwrap();
        assert_eq!(open::<V1>(&new).unwrap(), V1 { a: 2, b: vec![9] });
    }

    #[test]
    fn damage_is_detected() {
        let good = seal(&V1 {
            a: 1,
            b: vec![5; 100],
        })
        .unwrap();
        for i in [0, 5, 9, 20, good.len() - 1] {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(open::<V1>(&bad).is_err(), "flip at {i}");
        }
        assert_eq!(
            open::<V1>(&good[..good.len() - 1]).unwrap_err(),
            EnvelopeError::Length {
                declared: good.len() - 16,
                actual: good.len() - 17
            }
        );
        assert_eq!(
            open::<V1>(&good[..5]).unwrap_err(),
            EnvelopeError::Truncated(5)
        );
        let mut future = good.clone();
        future[4] = 2;
        assert!(matches!(
            open::<V1>(&future),
            Err(EnvelopeError::Version { major: 2, .. })
        ));
        let mut huge = good.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(open::<V1>(&huge), Err(EnvelopeError::TooLarge(_))));
    }
}
